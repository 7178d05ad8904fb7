use std::path::PathBuf;

use clap::{Parser, Subcommand};

// Indexing and JSON handling allocate many small objects; mimalloc is markedly faster at that
// than glibc malloc (measured on reindex and ingest, see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use shcr::commands;
use shcr::config::Settings;

/// shcr: a regional shared care record (FHIR R4, UK Core).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; SHCR_* environment variables override it.
    #[arg(long, global = true, env = "SHCR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server.
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Print a development token signed by the dev issuer's key.
    Token(commands::token::TokenArgs),
    /// Load FHIR Bundles and resources from files or folders.
    Import(commands::import::ImportArgs),
    /// Write a synthetic UK population as transaction Bundles per trust.
    Generate(commands::generate::GenerateArgs),
    /// Everything on one machine: private PostgreSQL, synthetic data, dev tokens.
    Demo(commands::demo::DemoArgs),
    /// Measure ingest throughput and read/vread/update latency.
    Bench(commands::bench::BenchArgs),
    /// Review and replay messages that could not be applied.
    DeadLetter(commands::dead_letter::DeadLetterArgs),
    /// Measure NATS inbound throughput and lag, and notification delivery lag.
    BenchEvents(commands::bench_events::BenchEventsArgs),
    /// Measure identity linking (throughput, accuracy against the truth) and `$everything` /
    /// `$summary` latency.
    BenchIdentity(commands::bench_identity::BenchIdentityArgs),
    /// Estimate the identity matching file's m/u probabilities from records (EM) and report
    /// pair-level accuracy against their truth (FEBRL4 or generated people).
    IdentityEstimate(commands::identity_estimate::IdentityEstimateArgs),
    /// Rebuild the local search index from PostgreSQL.
    Reindex(commands::reindex::ReindexArgs),
    /// Audit trail tools (`shcr audit verify`).
    Audit(commands::audit::AuditArgs),
    /// The API consumer registry: add, list, show, update, suspend, reinstate clients.
    Clients(commands::clients::ClientsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::load(cli.config.as_deref())?;
    // The demo talks to a person at a terminal: readable log lines unless asked otherwise.
    if matches!(cli.command, Command::Demo(_)) && std::env::var_os("SHCR_LOG_FORMAT").is_none() {
        settings.log_format = "pretty".into();
    }
    shcr::telemetry::init(&settings.log_format);
    // Every command that writes Patients links them: the matching file is checked first.
    shcr::identity::scoring::install_from(settings.identity_matching.as_deref())?;
    match cli.command {
        Command::Serve => commands::serve::serve(settings).await,
        Command::Migrate => commands::serve::migrate(settings).await,
        Command::Token(args) => commands::token::run(&settings, &args),
        Command::Import(args) => commands::import::run(settings, args).await,
        Command::Generate(args) => commands::generate::run(args),
        Command::Demo(args) => commands::demo::run(settings, args).await,
        Command::Bench(args) => commands::bench::run(settings, args).await,
        Command::DeadLetter(args) => commands::dead_letter::run(settings, args).await,
        Command::BenchEvents(args) => commands::bench_events::run(settings, args).await,
        Command::BenchIdentity(args) => commands::bench_identity::run(settings, args).await,
        Command::IdentityEstimate(args) => commands::identity_estimate::run(args),
        Command::Reindex(args) => commands::reindex::run(settings, args).await,
        Command::Audit(args) => commands::audit::run(settings, args).await,
        Command::Clients(args) => commands::clients::run(settings, args).await,
    }
}
