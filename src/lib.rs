//! shcr: a regional shared care record (FHIR R4, UK Core).

pub mod fhir;
pub mod config;
pub mod interactions;
pub mod store;
pub mod validation;
pub mod access;
pub mod api;
pub mod startup;
pub mod telemetry;
pub mod commands;
pub mod import;
