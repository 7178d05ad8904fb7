-- Identity: each trust's Patient linked to one Person (src/identity). Only the identity module
-- writes these tables; the Person and Provenance resources it derives live in the store.

-- The matcher's view of the current version of every Patient, and the person it belongs to.
-- Blocking columns are normalised so candidate look-ups are index scans.
CREATE TABLE identity_patient (
    patient_id    text        PRIMARY KEY,
    person_id     text        NOT NULL,
    -- ODS code of the trust that wrote the Patient.
    org           text,
    -- Only numbers that passed the modulus-11 check; an invalid one is never used for matching.
    nhs_number    text,
    nhs_verified  boolean     NOT NULL DEFAULT false,
    nhs_invalid   boolean     NOT NULL DEFAULT false,
    family_code   text,
    -- Phonetic family and given name together: finds records whose birth date and postcode
    -- both changed or were mistyped.
    name_key      text,
    birth_date    date,
    birth_year    integer,
    postcode      text,
    -- The whole normalised record the scorer reads (identity::demographics::Demographics).
    demographics  jsonb       NOT NULL,
    -- The link to person_id: its score (log2 likelihood ratio), grade (certain | probable |
    -- possible | founder) and method (auto | manual).
    score         float8,
    grade         text        NOT NULL,
    method        text        NOT NULL,
    linked_at     timestamptz NOT NULL DEFAULT now(),
    -- False once the Patient is deleted: kept for history, never a candidate.
    active        boolean     NOT NULL DEFAULT true
);
CREATE INDEX identity_patient_person ON identity_patient (person_id);
CREATE INDEX identity_patient_nhs ON identity_patient (nhs_number) WHERE active AND nhs_number IS NOT NULL;
CREATE INDEX identity_patient_birth ON identity_patient (birth_date) WHERE active;
CREATE INDEX identity_patient_phonetic_year ON identity_patient (family_code, birth_year) WHERE active;
CREATE INDEX identity_patient_postcode ON identity_patient (postcode) WHERE active;
CREATE INDEX identity_patient_name_key ON identity_patient (name_key) WHERE active;

-- Decisions taken by people (confirm, reject, merge, unmerge): who, when, why, and the exact
-- assignment of Patients to Persons before and after, so any decision can be reversed.
CREATE TABLE identity_decision (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL,
    actor       text        NOT NULL,
    actor_org   text,
    reason      text        NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    -- [{patient_id, person_id, score, grade, method}] for every Patient the decision moved.
    before      jsonb       NOT NULL,
    after       jsonb       NOT NULL,
    -- Set when a later decision (unmerge) reversed this one.
    reversed_by bigint      REFERENCES identity_decision (id)
);

-- Every change of a Patient's person, automatic or manual: the link history.
CREATE TABLE identity_link_event (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id   text        NOT NULL,
    from_person  text,
    to_person    text,
    score        float8,
    grade        text        NOT NULL,
    method       text        NOT NULL,
    actor        text        NOT NULL,
    decision_id  bigint      REFERENCES identity_decision (id),
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX identity_link_event_patient ON identity_link_event (patient_id, id);

-- Possible matches waiting for a person to decide; never linked automatically.
CREATE TABLE identity_review (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id   text        NOT NULL,
    candidate_id text        NOT NULL,
    score        float8      NOT NULL,
    -- Why it is here: possible-match | conflict (different verified NHS numbers) | ambiguous.
    reason       text        NOT NULL,
    status       text        NOT NULL DEFAULT 'open',
    created_at   timestamptz NOT NULL DEFAULT now(),
    decision_id  bigint      REFERENCES identity_decision (id)
);
CREATE UNIQUE INDEX identity_review_open_pair ON identity_review (patient_id, candidate_id) WHERE status = 'open';

-- Pairs a reviewer said are different people: the matcher never links or queues them again.
CREATE TABLE identity_non_match (
    patient_a    text   NOT NULL,
    patient_b    text   NOT NULL,
    decision_id  bigint NOT NULL REFERENCES identity_decision (id),
    PRIMARY KEY (patient_a, patient_b)
);
