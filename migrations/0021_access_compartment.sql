-- The patient compartment of each version, computed at write time, so that a clinician's read
-- is decided without parsing the resource or scanning its text for references (src/access).
-- `compartment` holds pairs (patient id, reference URL if absolute else ''), flattened: the
-- server's base decides at read time which absolute references are its own. The candidates
-- are trusted only when `compartment_key` names the search parameters and extraction code the
-- reader uses (`search::index::compartment_key`); versions without them (written before this
-- migration, or by a tool without the registry) are decided as before.
ALTER TABLE resource_version
    ADD COLUMN compartment     text[],
    ADD COLUMN compartment_key bigint;
