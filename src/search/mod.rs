//! FHIR search: SearchParameter definitions as data, and the values each resource is indexed
//! under.

pub mod fhirpath;
pub mod normalise;
