//! `shcr dead-letter list | show ID | replay ID | replay --all`: review messages that could not
//! be applied and, after a fix (catalogue, configuration, the sender's data), apply them again.
//! Replays go through the same path as live messages and are idempotent by message id, so
//! replaying twice, or replaying something a trust has since re-sent, changes nothing more.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::access::TokenVerifier;
use crate::config::Settings;
use crate::events::{self, Catalogue, dead_letter};
use crate::fhir::instant::format_instant;
use crate::interactions::Repository;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct DeadLetterArgs {
    #[command(subcommand)]
    pub command: DeadLetterCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// Dead letters waiting for replay (newest first).
    List {
        /// Include those already replayed.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// One dead letter: reason, headers and payload.
    Show { id: i64 },
    /// Apply one dead letter again, or every one still waiting with --all.
    Replay {
        id: Option<i64>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

fn reason_text(reason: &Value) -> String {
    reason["issue"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .map(|i| {
                    let loc = i["expression"][0].as_str().unwrap_or("");
                    let d = i["diagnostics"].as_str().unwrap_or("");
                    if loc.is_empty() {
                        d.to_string()
                    } else {
                        format!("{loc}: {d}")
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default()
}

pub async fn run(settings: Settings, args: DeadLetterArgs) -> anyhow::Result<()> {
    let store = Store::connect(settings.require_database_url()?, 4).await?;
    store.migrate().await?;
    let pool = store.pool().clone();
    match args.command {
        DeadLetterCommand::List { all, limit } => {
            let letters = dead_letter::list(&pool, all, limit).await?;
            if letters.is_empty() {
                println!("no dead letters{}", if all { "" } else { " waiting" });
            }
            for d in letters {
                println!(
                    "{:>6}  {}  {:<8}  {:<16}  {:<40}  {}  {}",
                    d.id,
                    format_instant(d.received_at),
                    d.status,
                    d.reason_code,
                    d.subject.as_deref().unwrap_or("-"),
                    d.message_id.as_deref().unwrap_or("-"),
                    reason_text(&d.reason)
                );
            }
        }
        DeadLetterCommand::Show { id } => {
            let d = dead_letter::get(&pool, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
            let payload = serde_json::from_slice::<Value>(&d.payload).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&d.payload).into_owned())
            });
            let out = json!({
                "id": d.id,
                "origin": d.origin,
                "channel": d.channel,
                "subject": d.subject,
                "org": d.org,
                "messageId": d.message_id,
                "eventCode": d.event_code,
                "status": d.status,
                "reasonCode": d.reason_code,
                "reason": d.reason,
                "attempts": d.attempts,
                "receivedAt": format_instant(d.received_at),
                "publishedAt": d.published_at.map(format_instant),
                "replayCount": d.replay_count,
                "replayedAt": d.replayed_at.map(format_instant),
                "replayOutcome": d.replay_outcome,
                "headers": d.headers,
                "payload": payload,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        DeadLetterCommand::Replay { id, all } => {
            let ids = match (id, all) {
                (Some(id), _) => vec![id],
                (None, true) => dead_letter::pending(&pool).await?,
                (None, false) => anyhow::bail!("name a dead letter id, or --all"),
            };
            // Replays never verify tokens (none are stored): the issuer is not contacted.
            let issuer = settings
                .auth
                .issuer
                .clone()
                .unwrap_or_else(|| "urn:shcr:replay".into());
            let verifier = Arc::new(TokenVerifier::new(issuer, &settings.auth));
            let catalogue = Arc::new(Catalogue::load(settings.events.catalogue.as_deref())?);
            let base_url = format!(
                "{}/fhir",
                settings
                    .public_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}:{}", settings.host, settings.port))
                    .trim_end_matches('/')
            );
            let inbound = events::inbound(
                &settings,
                Repository::new(store.clone()),
                verifier,
                catalogue,
                &base_url,
            );
            let (mut ok, mut failed) = (0, 0);
            for id in ids {
                match replay_one(&pool, &inbound, id).await? {
                    true => ok += 1,
                    false => failed += 1,
                }
            }
            println!("replayed {ok}, still failing {failed}");
            if failed > 0 {
                std::process::exit(2);
            }
        }
    }
    Ok(())
}

/// Replays one dead letter and records the attempt; true if it is now applied.
pub async fn replay_one(
    pool: &sqlx::PgPool,
    inbound: &events::inbound::Inbound,
    id: i64,
) -> anyhow::Result<bool> {
    let d = dead_letter::get(pool, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no dead letter {id}"))?;
    if d.status == "replayed" {
        println!("{id}: already replayed");
        return Ok(true);
    }
    match inbound.replay(&d).await {
        Ok(processed) => {
            dead_letter::record_replay(pool, id, true, &processed.response).await?;
            println!(
                "{id}: applied ({:?}, {} written, {} stale)",
                processed.disposition, processed.written, processed.stale
            );
            Ok(true)
        }
        Err(e) => {
            dead_letter::record_replay(pool, id, false, &e.outcome()).await?;
            println!("{id}: still failing ({}): {}", e.reason_code, e.summary());
            Ok(false)
        }
    }
}
