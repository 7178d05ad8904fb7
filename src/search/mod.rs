//! FHIR search: SearchParameter definitions as data, and the values each resource is indexed
//! under.

pub mod extract;
pub mod fhirpath;
pub mod normalise;
pub mod params;
