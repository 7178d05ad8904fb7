-- The transaction that last wrote each row (src/identity/unit.rs): a linker reads and scores
-- its candidates before taking its blocking-key locks, then, holding them, reads again only the
-- rows written since that read's snapshot — what the linkers it waited for committed.
ALTER TABLE identity_patient ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();

-- Every update stamps the row, whoever writes it (the linker, a reviewer's decision).
CREATE FUNCTION identity_patient_stamp_txid() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.txid := pg_current_xact_id();
    RETURN NEW;
END
$$;
CREATE TRIGGER identity_patient_txid BEFORE UPDATE ON identity_patient
    FOR EACH ROW EXECUTE FUNCTION identity_patient_stamp_txid();

CREATE INDEX identity_patient_txid ON identity_patient (txid);
