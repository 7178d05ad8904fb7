-- The house as a blocking key (issue 5, accuracy): line_key becomes house number | first three
-- letters of the street | locality (the postcode's outward code, or the first three letters of
-- the town where the postcode is not a UK one), as `Demographics::line_key` computes it. The
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
