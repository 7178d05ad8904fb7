-- Wake change-feed followers (the search indexer, subscriptions) as soon as a write commits,
-- instead of waiting for their next poll. NOTIFY is delivered at commit, once per transaction
-- and channel, so a statement-level trigger costs little.
CREATE FUNCTION notify_change_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('shcr_change_feed', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER change_feed_notify
    AFTER INSERT ON change_feed
    FOR EACH STATEMENT EXECUTE FUNCTION notify_change_feed();
