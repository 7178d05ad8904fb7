//! End-to-end tests of the FHIR REST API against a real PostgreSQL and the real HTTP server.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod change_feed;
mod concurrency;
mod connections;
mod crud;
mod differential;
mod errors;
mod history;
mod import;
mod lookup_plans;
mod observability;
mod search;
mod transactions;
