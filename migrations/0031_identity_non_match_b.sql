-- The linker leaves out candidates a reviewer rejected, looking the pair up from either side
-- (patient_a = x AND patient_b = y, or the reverse) for every candidate. The primary key serves
-- look-ups by patient_a; this one serves patient_b, so the check stays an index probe however
-- many decisions accumulate.
CREATE INDEX identity_non_match_b ON identity_non_match (patient_b, patient_a);
