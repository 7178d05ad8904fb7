-- The digest of the current version's content without its stamp (id, meta.versionId,
-- meta.lastUpdated), so that an update re-sending the current content is answered with the
-- current version instead of writing a new one. NULL for heads written before (and for
-- deletions and Persons): they are never taken as unchanged, only written again.
ALTER TABLE resource_head ADD COLUMN content_hash bytea;
