-- Names and place for records with one name only (issue 5, accuracy), as
-- `Demographics::name_place_key` computes it: the missing name counts as empty, so `- WEBB` of
-- Eastwood keys as `|WEB|EAS`. Such records have no phonetic name key; without this one a
-- record with one name, another birth date and a mistyped postcode had no key in common with
-- its match. Rows with both names keep the key 0034 gave them.
UPDATE identity_patient
   SET name_place_key = least(coalesce(left(family, 3), '') COLLATE "C",
                              coalesce(left(given, 3), '') COLLATE "C") || '|' ||
                        greatest(coalesce(left(family, 3), '') COLLATE "C",
                                 coalesce(left(given, 3), '') COLLATE "C") || '|' ||
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
   AND (family IS NULL) <> (given IS NULL) AND locality IS NOT NULL;
