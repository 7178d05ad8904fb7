//! The durable JetStream consumer of inbound messages.
//!
//! Subjects are `<prefix>.<ODS code>.<event code>` on one stream. Each message is acknowledged
//! only after its transaction committed (or after it was stored as a dead letter). A transient
//! failure is negatively acknowledged with a growing delay; after `max_deliver` deliveries, or
//! at once for a permanent error, the message goes to the dead-letter store. Messages are
//! processed concurrently: a poison message never holds up the others, and ordering between
//! events for the same resource comes from the source's timestamps, not the delivery order.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures_util::{FutureExt, StreamExt};
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};

use super::inbound::{Handled, Inbound, RawMessage, dead_letter_for};
use super::ingest::Disposition;
use super::platform::{self, Platform};
use super::{dead_letter, metrics};
use crate::config::NatsSettings;

/// Creates the stream (if allowed) and the durable consumer, idempotently.
pub async fn ensure_consumer(
    client: &async_nats::Client,
    settings: &NatsSettings,
) -> anyhow::Result<jetstream::consumer::Consumer<pull::Config>> {
    let js = jetstream::new(client.clone());
    let prefix = settings.subject_prefix.trim_end_matches('.');
    let stream = if settings.create_stream {
        js.get_or_create_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::File,
            // Publishers set Nats-Msg-Id to the message id: the broker drops repeats within
            // this window before shcr ever sees them.
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating stream {}: {e}", settings.stream))?
    } else {
        js.get_stream(&settings.stream)
            .await
            .map_err(|e| anyhow::anyhow!("stream {}: {e}", settings.stream))?
    };
    let consumer = stream
        .get_or_create_consumer(
            &settings.consumer,
            pull::Config {
                durable_name: Some(settings.consumer.clone()),
                filter_subject: format!("{prefix}.>"),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(settings.ack_wait_seconds),
                // shcr counts deliveries itself and dead-letters at `max_deliver`: a broker
                // limit would leave the message unacknowledged and silently parked.
                max_deliver: -1,
                max_ack_pending: (settings.concurrency * settings.batch_size.max(16) * 4) as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("consumer {}: {e}", settings.consumer))?;
    Ok(consumer)
}

fn raw_message(message: &async_nats::Message, published: time::OffsetDateTime) -> RawMessage {
    let headers = message
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .filter_map(|(k, values)| {
                    Some((
                        k.to_string().to_ascii_lowercase(),
                        values.first()?.as_str().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    RawMessage {
        subject: message.subject.to_string(),
        headers,
        payload: message.payload.to_vec(),
        published,
    }
}

/// Where a message stands in the stream.
struct Delivery {
    stream: String,
    sequence: u64,
    /// How many times the broker has delivered it, this time included.
    delivered: i64,
    published: time::OffsetDateTime,
}

pub struct Consumer {
    pub inbound: Arc<Inbound>,
    pub pool: PgPool,
    pub platform: Platform,
    pub settings: NatsSettings,
}

impl Consumer {
    /// Runs until `shutdown` turns true, reconnecting after broker errors. Messages in flight
    /// at shutdown finish (or are redelivered later: nothing is acknowledged early).
    pub async fn run(
        self: Arc<Self>,
        client: async_nats::Client,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        loop {
            if *shutdown.borrow() {
                break;
            }
            let consumer = match ensure_consumer(&client, &self.settings).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "NATS consumer not ready; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                        _ = shutdown.changed() => break,
                    }
                }
            };
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.settings.concurrency * self.settings.batch_size.max(4))
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(10))
                .messages()
                .await;
            let mut messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "NATS pull failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                        _ = shutdown.changed() => break,
                    }
                }
            };
            tracing::info!(stream = %self.settings.stream, consumer = %self.settings.consumer, "consuming inbound messages");
            loop {
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("semaphore open"),
                    _ = shutdown.changed() => break,
                };
                let next = tokio::select! {
                    m = messages.next() => m,
                    _ = shutdown.changed() => break,
                };
                match next {
                    Some(Ok(message)) => {
                        // Group commit: whatever else has already arrived joins this message's
                        // transaction, up to `batch_size`. Nothing waits for a group to fill,
                        // so a quiet stream still applies each message at once.
                        let mut group = vec![message];
                        while group.len() < self.settings.batch_size {
                            match messages.next().now_or_never() {
                                Some(Some(Ok(m))) => group.push(m),
                                Some(Some(Err(e))) => {
                                    tracing::warn!(error = %e, "NATS message stream error");
                                    break;
                                }
                                Some(None) | None => break,
                            }
                        }
                        let this = self.clone();
                        tokio::spawn(async move {
                            this.handle_group(group).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "NATS message stream error");
                        // Heartbeat misses and the like: the stream recovers by itself.
                        continue;
                    }
                    None => break,
                }
            }
            if *shutdown.borrow() {
                break;
            }
        }
        // Let handlers in flight finish before the process exits.
        let _ = permits.acquire_many(self.settings.concurrency as u32).await;
        tracing::info!("NATS consumer stopped");
    }

    /// Applies a group of messages in one transaction, then settles each on its own:
    /// acknowledged (committed, or a duplicate), retried later, or dead-lettered.
    async fn handle_group(&self, messages: Vec<jetstream::Message>) {
        let mut delivered = Vec::with_capacity(messages.len());
        let mut raws = Vec::with_capacity(messages.len());
        for message in messages {
            let info = match message.info() {
                Ok(i) => Delivery {
                    stream: i.stream.to_string(),
                    sequence: i.stream_sequence,
                    delivered: i.delivered,
                    published: i.published,
                },
                Err(e) => {
                    tracing::error!(error = %e, "a JetStream message without delivery info");
                    continue;
                }
            };
            raws.push(raw_message(&message.message, info.published));
            delivered.push((message, info));
        }
        let handled = self.inbound.handle_group(&raws).await;
        for (((message, info), raw), handled) in delivered.into_iter().zip(&raws).zip(handled) {
            self.settle(message, info, raw, handled).await;
        }
    }

    async fn settle(
        &self,
        message: jetstream::Message,
        info: Delivery,
        raw: &RawMessage,
        handled: Handled,
    ) {
        let Delivery {
            stream,
            sequence,
            delivered,
            published,
        } = info;
        let Handled { result, caller } = handled;
        match result {
            Ok(processed) => {
                if processed.disposition == Disposition::Applied {
                    let lag = time::OffsetDateTime::now_utc() - published;
                    metrics::INGEST_LAG.observe(lag.as_seconds_f64().max(0.0));
                }
                // Committed: a lost acknowledgement means a redelivery, answered as a duplicate.
                if let Err(e) = message.ack().await {
                    tracing::warn!(error = %e, sequence, "acknowledgement failed; the message will be redelivered");
                }
            }
            Err(error) if error.transient && delivered < self.settings.max_deliver => {
                let backoff = &self.settings.backoff_seconds;
                let delay = backoff[((delivered - 1).max(0) as usize).min(backoff.len() - 1)];
                tracing::warn!(
                    sequence,
                    delivered,
                    reason = error.reason_code,
                    "message failed; retrying later"
                );
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs_f64(delay))))
                    .await;
            }
            Err(error) => {
                let mut error = error;
                if error.transient {
                    error.issues.insert(
                        0,
                        crate::fhir::outcome::Issue::error(
                            crate::fhir::outcome::IssueType::Transient,
                            format!("gave up after {delivered} deliveries"),
                        ),
                    );
                    error.reason_code = "exhausted";
                }
                let origin = format!("nats:{stream}:{sequence}");
                let letter =
                    dead_letter_for(origin, raw, caller.as_ref(), &error, delivered as i32);
                match dead_letter::record(&self.pool, &letter).await {
                    Ok(id) => {
                        tracing::warn!(sequence, dead_letter = ?id, reason = error.reason_code, detail = %error.summary(), "message dead-lettered");
                        if id.is_some() {
                            self.platform
                                .emit(
                                    platform::DEAD_LETTER,
                                    serde_json::json!({
                                        "deadLetter": id,
                                        "reason": error.reason_code,
                                        "subject": raw.subject,
                                    }),
                                )
                                .await;
                        }
                        // Handled: the broker must not deliver it again.
                        let _ = message.ack_with(AckKind::Term).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, sequence, "dead letter not stored; retrying the message later");
                        let _ = message
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                            .await;
                    }
                }
            }
        }
    }
}
