//! `shcr reindex`: rebuilds the local search index from PostgreSQL.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::config::Settings;
use crate::search::params::Registry;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct ReindexArgs {
    /// Index folder (defaults to `index_dir` from the configuration).
    #[arg(long)]
    pub index_dir: Option<PathBuf>,
    /// Memory for the indexing threads, in MB: more makes fewer, larger segments.
    #[arg(long, default_value_t = crate::search::indexer::REBUILD_MEMORY / (1024 * 1024))]
    pub memory_mb: usize,
}

pub async fn run(settings: Settings, args: ReindexArgs) -> anyhow::Result<()> {
    let dir = args
        .index_dir
        .or(settings.index_dir.clone())
        .context("no index folder: give --index-dir or set index_dir")?;
    let store = Store::connect(settings.require_database_url()?, 4).await?;
    store.migrate().await?;
    let registry = Arc::new(Registry::load(settings.search_params_dir.as_deref())?);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM resource_head WHERE NOT deleted")
        .fetch_one(store.pool())
        .await?;
    let bar = super::import::progress_bar(total as u64, "indexing resources");
    let base = format!(
        "{}/fhir",
        settings
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}", settings.host, settings.port))
    );
    let started = Instant::now();
    let n = crate::search::indexer::reindex(
        store,
        registry,
        &dir,
        base,
        args.memory_mb * 1024 * 1024,
        |done| bar.set_position(done as u64),
    )
    .await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "indexed {n} resources into {} in {secs:.1}s ({:.0}/s)",
        dir.display(),
        n as f64 / secs.max(0.001)
    );
    Ok(())
}
