//! Identity end to end, against a real PostgreSQL and the real HTTP server: linking across
//! trusts, the review queue, merge and unmerge, `$match`, the longitudinal view
//! (`$everything`, `$summary`, `:mdm`), Provenance of every write and write ownership.

#[path = "../common/mod.rs"]
mod common;

mod blocking;
mod concurrency;
mod linking;
mod longitudinal;
mod plans;
mod population;
mod provenance;
mod review;
mod support;
mod waiting;
