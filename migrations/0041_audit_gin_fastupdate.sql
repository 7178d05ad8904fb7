-- Each audit row's patients go into the GIN index as the row is written rather than through the
-- pending list: the list's clean-up falls on whichever insert finds it full, which pauses the
-- audit writer and every request waiting for it (p99.9 of audited reads 52–56 ms with the list,
-- 15–31 ms without, in the ninth session's access bench).
ALTER INDEX audit_event_by_patient SET (fastupdate = off);
