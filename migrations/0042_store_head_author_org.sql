-- The organisation that wrote each resource's current version, kept on its head: a trust may
-- replace only what it wrote, and the writer reads the owner in the same statement that locks
-- the head instead of a join with the version row. That join cannot run under the lock: a
-- concurrent writer's new version is not in the locking statement's snapshot, so the re-read
-- head would find no version row and drop out.
ALTER TABLE resource_head ADD COLUMN author_org text;

UPDATE resource_head h SET author_org = v.author_org
FROM resource_version v
WHERE v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
  AND v.author_org IS NOT NULL;
