-- A process's audit writer sends its next group before the previous one has committed; that
-- group's move of the chain head then waits in PostgreSQL for the previous group's lock and
-- commits right after it. A `WHERE seq = base` condition would be tested against the head as
-- the statement's snapshot saw it (before the previous commit) and skip the row without
-- waiting; an expression in the SET list is evaluated on the row as it is after the wait.
CREATE FUNCTION audit_chain_moved() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'the audit chain head moved under this writer' USING ERRCODE = 'SH001';
END;
$$;

-- Each row's patients go into the GIN index as the row is written rather than through the
-- pending list: the list's clean-up falls on whichever insert finds it full, which pauses the
-- audit writer and every request waiting for it.
ALTER INDEX audit_event_by_patient SET (fastupdate = off);
