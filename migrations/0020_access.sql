-- Read-time access control (src/access) and the audit trail (src/audit).

-- Care relationships between an organisation (ODS code) and a patient, derived at write time
-- from Encounter, EpisodeOfCare, ServiceRequest (referral) and Patient (registration). Rows are
-- replaced whenever their source resource is written, so they follow updates and deletions.
CREATE TABLE access_relationship (
    source_type   text NOT NULL,
    source_id     text NOT NULL,
    org           text NOT NULL,
    patient_id    text NOT NULL,
    -- encounter | episode-of-care | referral | registration
    kind          text NOT NULL,
    period_start  timestamptz,
    -- Null: still open.
    period_end    timestamptz
);
CREATE INDEX access_relationship_by_org ON access_relationship (org, patient_id);
CREATE INDEX access_relationship_by_source ON access_relationship (source_type, source_id);

-- Patient consent directives (FHIR Consent, provision.type = deny), one row per restriction.
CREATE TABLE access_consent (
    consent_id    text NOT NULL,
    patient_id    text NOT NULL,
    -- opt-out | deny-label | deny-org
    kind          text NOT NULL,
    -- The label code or ODS code; '' for opt-out.
    value         text NOT NULL,
    period_start  timestamptz,
    period_end    timestamptz
);
CREATE INDEX access_consent_by_consent ON access_consent (consent_id);
CREATE INDEX access_consent_by_patient ON access_consent (patient_id);

-- Break-glass grants: time-limited access of one user to one patient, with the stated reason,
-- reviewed afterwards by a privacy officer.
CREATE TABLE access_break_glass (
    id             uuid        PRIMARY KEY,
    user_id        text        NOT NULL,
    user_name      text,
    role_code      text        NOT NULL,
    org            text        NOT NULL,
    patient_id     text        NOT NULL,
    reason_code    text        NOT NULL,
    reason_text    text        NOT NULL,
    request_id     text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    reviewed_at    timestamptz,
    reviewed_by    text,
    review_outcome text,
    review_note    text
);
CREATE INDEX access_break_glass_active ON access_break_glass (user_id, org, expires_at);
CREATE INDEX access_break_glass_unreviewed ON access_break_glass (started_at) WHERE reviewed_at IS NULL;

-- One row per interaction (IHE BALP style), hash-chained: hash = sha256(prev_hash || row).
CREATE TABLE audit_event (
    seq             bigint      PRIMARY KEY,
    recorded_at     timestamptz NOT NULL,
    request_id      text,
    -- read | vread | history | search | create | update | delete | transaction | operation | ...
    interaction     text        NOT NULL,
    -- C R U D E (BALP action)
    action          text        NOT NULL,
    -- 0 success, 4 minor failure (incl. denials), 8 serious, 12 major
    outcome         integer     NOT NULL,
    outcome_desc    text,
    http_status     integer     NOT NULL,
    caller_kind     text        NOT NULL,
    caller_id       text,
    caller_name     text,
    role_code       text,
    org             text,
    -- v3-ActReason: TREAT, ETREAT, BTG, HOPERAT
    purpose         text        NOT NULL,
    break_glass_id  uuid,
    method          text        NOT NULL,
    path            text        NOT NULL,
    query           text,
    resource_type   text,
    resource_id     text,
    patients        text[]      NOT NULL,
    -- Number of resources returned.
    returned        integer     NOT NULL,
    -- Whether the policy withheld something (denied read, filtered results).
    denied          boolean     NOT NULL,
    -- Whether the caller's organisation had a care relationship with every patient touched.
    relationship    boolean     NOT NULL,
    client_ip       text,
    prev_hash       bytea       NOT NULL,
    hash            bytea       NOT NULL
);
CREATE INDEX audit_event_by_time ON audit_event (recorded_at);
CREATE INDEX audit_event_by_user ON audit_event (caller_id, recorded_at);
CREATE INDEX audit_event_by_patient ON audit_event USING gin (patients);

-- The chain's head: locked by every writer, so rows join the chain one at a time.
CREATE TABLE audit_chain_head (
    id    integer PRIMARY KEY CHECK (id = 1),
    seq   bigint  NOT NULL,
    hash  bytea   NOT NULL
);
INSERT INTO audit_chain_head (id, seq, hash) VALUES (1, 0, '\x'::bytea);

-- Append-only: the application never changes or removes audit rows. (A superuser can still
-- disable this; the hash chain is what makes such tampering evident.)
CREATE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_event is append-only';
END;
$$;
CREATE TRIGGER audit_event_no_update BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only();
