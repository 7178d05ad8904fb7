-- Two blocking keys naming a locality (issue 5, accuracy), as `Demographics::line_key` and
-- `Demographics::name_place_key` compute them. The locality is the postcode's outward code, or
-- the first three letters of the town where the postcode is not a UK one (or is missing).
--
-- The house: line_key becomes house number | first three letters of the street | locality. The
-- whole first line missed records whose street was mistyped (`3 CULLEN STREET`/`3 CULLEB
-- STREET`), and, naming no locality, was shared by every `12 MILL LANE` of an ICS.
--
-- Words are those of the normalised line (upper-case letters and digits, single-spaced): the
-- words holding a digit are the number (in their order), the first word of three letters or
-- more that is not FLAT, APARTMENT, UNIT or APT is the street.
UPDATE identity_patient p
   SET line_key = k.key
  FROM (
      SELECT patient_id,
             CASE WHEN number IS NOT NULL AND street IS NOT NULL AND locality IS NOT NULL
                  THEN number || '|' || left(street, 3) || '|' || locality END AS key
      FROM (
          SELECT patient_id,
                 (SELECT string_agg(w, ' ' ORDER BY n)
                    FROM regexp_split_to_table(line, ' ') WITH ORDINALITY AS t(w, n)
                   WHERE w ~ '[0-9]') AS number,
                 (SELECT w
                    FROM regexp_split_to_table(line, ' ') WITH ORDINALITY AS t(w, n)
                   WHERE w ~ '^[A-Z]{3,}$' AND w NOT IN ('FLAT', 'APARTMENT', 'UNIT', 'APT')
                   ORDER BY n LIMIT 1) AS street,
                 CASE WHEN length(postcode) >= 5 THEN left(postcode, length(postcode) - 3)
                      ELSE nullif(left(town, 3), '') END AS locality
          FROM (
              SELECT patient_id,
                     demographics->>'address_line' AS line,
                     demographics->>'postcode' AS postcode,
                     demographics->>'town' AS town
              FROM identity_patient
          ) d
      ) w
  ) k
 WHERE p.patient_id = k.patient_id
   AND p.line_key IS DISTINCT FROM k.key;

-- Names and place: the first three letters of family and given name in byte order (exchanged
-- names share it) and the locality: records whose names were mistyped past the third letter
-- and whose house number, birth date and postcode were mistyped or left out.
ALTER TABLE identity_patient ADD COLUMN name_place_key text;
UPDATE identity_patient
   SET name_place_key = least(left(family, 3) COLLATE "C", left(given, 3) COLLATE "C") || '|' ||
                        greatest(left(family, 3) COLLATE "C", left(given, 3) COLLATE "C") || '|' ||
                        locality
  FROM (
      SELECT patient_id AS id,
             demographics->>'family' AS family,
             demographics->>'given' AS given,
             CASE WHEN length(demographics->>'postcode') >= 5
                  THEN left(demographics->>'postcode', length(demographics->>'postcode') - 3)
                  ELSE nullif(left(demographics->>'town', 3), '') END AS locality
      FROM identity_patient
  ) d
 WHERE patient_id = d.id
   AND family IS NOT NULL AND given IS NOT NULL AND locality IS NOT NULL;
CREATE INDEX identity_patient_name_place_key ON identity_patient (name_place_key) WHERE active;
