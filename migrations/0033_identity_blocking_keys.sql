-- Two more ways for the linker to find a record (issue 5, accuracy): true pairs whose birth
-- date, postcode and names all changed shared no blocking key and could never be linked.
--
-- line_key: the first address line (house number and street, normalised) when it names a
-- street: records that kept their address but whose other fields were mistyped. A line naming
-- only a flat ("FLAT 3") is shared by thousands and is no key.
ALTER TABLE identity_patient ADD COLUMN line_key text;
UPDATE identity_patient
   SET line_key = demographics->>'address_line'
 WHERE demographics->>'address_line' ~ '[0-9]'
   AND regexp_replace(demographics->>'address_line', '\m(FLAT|APARTMENT|UNIT|APT)\M', '', 'g')
       ~ '\m[A-Z]{3,}\M';
CREATE INDEX identity_patient_line_key ON identity_patient (line_key) WHERE active;

-- name_key: the two phonetic names in byte order (as Rust compares them), so a record whose
-- family and given names were exchanged has the same key (it was family|given).
UPDATE identity_patient
   SET name_key = least(demographics->>'family_code' COLLATE "C",
                        demographics->>'given_code' COLLATE "C") || '|' ||
                  greatest(demographics->>'family_code' COLLATE "C",
                           demographics->>'given_code' COLLATE "C")
 WHERE name_key IS NOT NULL;
