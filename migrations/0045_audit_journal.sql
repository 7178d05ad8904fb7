-- The local audit journal (`[audit] durability = "journal"`, src/audit/journal.rs): how far each
-- journal has been shipped into the audit chain. The shipper moves its row in the statement
-- that appends the shipped rows to `audit_event`, so a crash between shipping and deleting the
-- journal's segments neither duplicates nor loses a row. One row per journal directory (its id
-- is created once, in the directory); replicas sharing the database each have their own.
CREATE TABLE audit_journal_shipped (
    journal_id text PRIMARY KEY,
    -- The journal's sequence number of the last row appended to the chain (0: none yet).
    shipped_seq bigint NOT NULL CHECK (shipped_seq >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    shipped_at timestamptz NOT NULL DEFAULT now()
);
