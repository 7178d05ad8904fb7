//! Small typed views over FHIR JSON shared by every module.

pub mod outcome;
