-- The API consumer registry (src/governance): every system or portal that calls shcr is a
-- registered client with an owner, an access mode, what it may do and how fast. Owned by
-- src/governance; nothing else writes these tables.

CREATE TABLE api_client (
    -- The token's client_id / azp claim.
    client_id       text        PRIMARY KEY,
    -- The organisation that answers for the client (a trust's ODS code).
    ods_code        text        NOT NULL,
    name            text        NOT NULL,
    owner           text        NOT NULL DEFAULT '',
    contact         text        NOT NULL DEFAULT '',
    -- 'application' (a trust's back-end, no user) or 'user' (a portal acting for a person).
    access_mode     text        NOT NULL CHECK (access_mode IN ('application', 'user')),
    -- FHIR interactions the client may use ('read', 'search-type', 'create', ... or '*').
    interactions    text[]      NOT NULL DEFAULT '{*}',
    -- Token scopes the client may present ('*' = any); a token with another scope is refused.
    scopes          text[]      NOT NULL DEFAULT '{*}',
    -- Subscription topics (canonical URLs or '*') and payload levels it may subscribe to.
    topics          text[]      NOT NULL DEFAULT '{}',
    payloads        text[]      NOT NULL DEFAULT '{empty,id-only}',
    -- Token bucket: sustained cost units per second and bucket size; requests at once.
    rate_per_second double precision NOT NULL DEFAULT 20 CHECK (rate_per_second > 0),
    burst           integer     NOT NULL DEFAULT 40 CHECK (burst > 0),
    max_concurrent  integer     NOT NULL DEFAULT 8 CHECK (max_concurrent > 0),
    status          text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    status_reason   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Every change to the registry, append-only: who changed which client, how and why, with the
-- record before and after (an IG reviewer can replay the history of any client).
CREATE TABLE api_client_change (
    seq         bigserial   PRIMARY KEY,
    client_id   text        NOT NULL,
    action      text        NOT NULL,
    actor       text        NOT NULL,
    request_id  text,
    reason      text,
    before      jsonb,
    after       jsonb,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_client_change_client ON api_client_change (client_id, seq);

CREATE FUNCTION api_client_change_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'api_client_change is append-only';
END $$;
CREATE TRIGGER api_client_change_append_only
    BEFORE UPDATE OR DELETE ON api_client_change
    FOR EACH ROW EXECUTE FUNCTION api_client_change_append_only();
