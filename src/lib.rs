//! shcr: a regional shared care record (FHIR R4, UK Core).

pub mod access;
pub mod api;
pub mod audit;
pub mod commands;
pub mod config;
pub mod demo;
pub mod events;
pub mod fhir;
pub mod generate;
pub mod governance;
pub mod identity;
pub mod import;
pub mod interactions;
pub mod metrics;
pub mod provenance;
pub mod search;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod validation;
