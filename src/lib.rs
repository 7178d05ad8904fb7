//! shcr: a regional shared care record (FHIR R4, UK Core).

pub mod fhir;
pub mod generate;
pub mod identity;
