//! Identity: NHS numbers, and linking each trust's Patient to one Person.
//!
//! - `nhs_number`: the check-digit-validated NHS number type.
//! - `demographics`: what the matcher compares, normalised from a Patient; the invalid-NHS-number flag.
//! - `scoring`: Fellegi–Sunter weights from `identity/matching.toml`; MATCH / POSSIBLE / NO_MATCH.
//! - `estimate`: m/u probabilities estimated from the records (EM), for `shcr identity-estimate`.
//! - `link`: linking inside the write transaction, the Person resources, the link history.
//! - `unit`: the linker of one write unit, in a fixed number of statements.
//! - `review`: the review queue and people's decisions (confirm, reject, merge, unmerge).
//! - `view`: the linked records of a person, for `$everything`, `$summary` and `:mdm` searches.

pub mod demographics;
pub mod estimate;
pub mod link;
pub mod nhs_number;
pub mod review;
pub mod scoring;
pub mod unit;
pub mod view;
