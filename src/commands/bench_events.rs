//! `shcr bench-events`: NATS inbound throughput and lag, notification delivery lag.

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct BenchEventsArgs {}

pub async fn run(_settings: Settings, _args: BenchEventsArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
