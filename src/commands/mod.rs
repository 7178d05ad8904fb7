//! The `shcr` subcommands. `main.rs` parses the command line and calls these.

pub mod audit;
pub mod bench;
pub mod bench_access;
pub mod bench_events;
pub mod bench_identity;
pub mod clients;
pub mod cpu_meter;
pub mod dead_letter;
pub mod demo;
pub mod generate;
pub mod identity_estimate;
pub mod import;
pub mod reindex;
pub mod serve;
pub mod token;
