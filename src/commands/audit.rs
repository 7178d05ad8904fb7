//! `shcr audit verify`: checks the audit trail's hash chain end to end.

use std::time::Instant;

use crate::config::Settings;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain; exit 1 naming the first altered, deleted or inserted row.
    Verify,
}

pub async fn run(settings: Settings, args: AuditArgs) -> anyhow::Result<()> {
    match args.command {
        AuditCommand::Verify => verify(settings).await,
    }
}

async fn verify(settings: Settings) -> anyhow::Result<()> {
    let store = Store::connect(settings.require_database_url()?, 2).await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
        .fetch_one(store.pool())
        .await?;
    let bar = super::import::progress_bar(total as u64, "verifying audit rows");
    let started = Instant::now();
    let v = crate::audit::verify::verify(&store, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let hex: String = v.head_hash.iter().map(|b| format!("{b:02x}")).collect();
    match v.first_bad {
        None => {
            println!(
                "audit chain intact: {} rows verified in {secs:.2} s ({:.0} rows/s); head hash {hex}",
                v.rows,
                v.rows as f64 / secs.max(1e-9)
            );
            Ok(())
        }
        Some((seq, why)) => {
            println!("audit chain BROKEN at row {seq}: {why}");
            println!("{} rows before it verified", v.rows);
            std::process::exit(1);
        }
    }
}
