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

/// `admin` (a PostgreSQL URL) naming the database `name` instead of its own, keeping its
/// parameters: a bench's fresh database must be reached as the admin URL says (e.g.
/// `?sslmode=disable`, without which sqlx encrypts every statement on loopback).
pub(crate) fn database_url_named(admin: &str, name: &str) -> String {
    let (base, params) = match admin.split_once('?') {
        Some((base, params)) => (base, Some(params)),
        None => (admin, None),
    };
    let (server, _) = base.rsplit_once('/').unwrap_or((base, ""));
    match params {
        Some(params) => format!("{server}/{name}?{params}"),
        None => format!("{server}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::database_url_named;

    #[test]
    fn a_named_database_keeps_the_admin_urls_parameters() {
        assert_eq!(
            database_url_named("postgres://pg@127.0.0.1:5432/postgres", "b1"),
            "postgres://pg@127.0.0.1:5432/b1"
        );
        assert_eq!(
            database_url_named(
                "postgres://pg@127.0.0.1:5432/postgres?sslmode=disable&application_name=x",
                "b1"
            ),
            "postgres://pg@127.0.0.1:5432/b1?sslmode=disable&application_name=x"
        );
    }
}
