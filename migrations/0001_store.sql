-- The system of record: every version of every resource, the current head of each resource,
-- and the change feed later components (search index, subscriptions, audit) follow.

-- Every version ever written, including deletions (a deletion is a version with deleted = true).
CREATE TABLE resource_version (
    resource_type  text        NOT NULL,
    id             text        NOT NULL,
    version_id     bigint      NOT NULL,
    last_updated   timestamptz NOT NULL,
    deleted        boolean     NOT NULL DEFAULT false,
    -- The method that produced the version, as FHIR history reports it (POST, PUT, DELETE).
    method         text        NOT NULL,
    -- Null for deletions.
    content        jsonb,
    -- Who wrote it and in which request: the write provenance the audit and IG reports rely on.
    author_kind    text        NOT NULL,
    author_id      text        NOT NULL,
    author_org     text,
    request_id     text,
    PRIMARY KEY (resource_type, id, version_id)
);

CREATE INDEX resource_version_last_updated ON resource_version (last_updated, resource_type, id, version_id);
CREATE INDEX resource_version_type_last_updated ON resource_version (resource_type, last_updated, id, version_id);

-- The current version of each resource; rows are locked (FOR UPDATE) to serialise writers of one resource.
CREATE TABLE resource_head (
    resource_type  text        NOT NULL,
    id             text        NOT NULL,
    version_id     bigint      NOT NULL,
    last_updated   timestamptz NOT NULL,
    deleted        boolean     NOT NULL,
    PRIMARY KEY (resource_type, id)
);

-- Business identifiers of current, non-deleted versions: conditional create/update/delete and
-- conditional references (`Practitioner?identifier=sys|val`) must be answered inside the writing
-- transaction, not by an index that lags behind it.
CREATE TABLE resource_identifier (
    resource_type  text NOT NULL,
    id             text NOT NULL,
    system         text NOT NULL DEFAULT '',
    value          text NOT NULL,
    PRIMARY KEY (resource_type, id, system, value)
);
CREATE INDEX resource_identifier_by_value ON resource_identifier (resource_type, value, system);
CREATE INDEX resource_identifier_by_system ON resource_identifier (resource_type, system);

-- The change feed. `seq` orders rows inside a transaction; `txid` is the writing transaction.
-- Readers consume rows in (txid, seq) order and only rows whose transaction is older than the
-- oldest transaction still running (pg_snapshot_xmin), so a transaction that commits late can
-- never be skipped: any row still invisible has txid >= xmin, above every position handed out.
CREATE TABLE change_feed (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    resource_type  text        NOT NULL,
    id             text        NOT NULL,
    version_id     bigint      NOT NULL,
    -- create | update | delete
    operation      text        NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX change_feed_position ON change_feed (txid, seq);
