//! Small typed views over FHIR JSON shared by every module.

pub mod comments;
pub mod id;
pub mod instant;
pub mod outcome;
pub mod reference;
