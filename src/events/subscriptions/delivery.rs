//! Delivery workers: a queue over `subscription_state`, read with `FOR UPDATE SKIP LOCKED`
//! (one worker per subscription at a time, many workers and replicas without coordination).
//! A worker holds the row while it sends and records the result in the same transaction: a
//! crash before commit means the notification is sent again (at least once), never lost.
//! Events of one subscription go out in order, batched, each numbered, so a receiver can see
//! a gap and fill it with `$events`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::config::SubscriptionSettings;
use crate::events::metrics;
use crate::events::platform::{self, Platform};
use crate::interactions::{EntryAction, EntryRequest, Repository, Target};
use crate::store::Author;

use super::dispatcher::EVENTS_CHANNEL;
use super::notification::{self, EventRow, ROW_COLUMNS, SubscriptionRow};
use super::{Channel, Payload, PayloadPolicy, SERVER_AUTHOR_ID, backoff};

pub struct Delivery {
    pub repository: Repository,
    pub settings: SubscriptionSettings,
    pub policy: Arc<dyn PayloadPolicy>,
    pub http: reqwest::Client,
    pub nats: Option<async_nats::Client>,
    pub platform: Platform,
    pub base_url: String,
}

enum Kind {
    Handshake,
    Events(Vec<EventRow>),
    Heartbeat,
}

impl Kind {
    fn code(&self) -> &'static str {
        match self {
            Kind::Handshake => "handshake",
            Kind::Events(_) => "event-notification",
            Kind::Heartbeat => "heartbeat",
        }
    }
}

/// A status change to mirror into the Subscription resource once committed.
struct Transition {
    subscription: String,
    version_id: i64,
    status: &'static str,
    error: Option<String>,
}

impl Delivery {
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let mut listener = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if listener.is_none() {
                listener = async {
                    let mut l = PgListener::connect_with(self.repository.store().pool())
                        .await
                        .ok()?;
                    l.listen(EVENTS_CHANNEL).await.ok()?;
                    Some(l)
                }
                .await;
            }
            loop {
                match self.deliver_one().await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "subscription delivery failed");
                        break;
                    }
                }
            }
            let woken = async {
                match listener.as_mut() {
                    Some(l) => l.recv().await.map(|_| ()),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = woken => if r.is_err() { listener = None; },
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    /// Sends one due item (handshake, a batch of events, or a heartbeat); false when nothing
    /// is due.
    pub async fn deliver_one(&self) -> Result<bool, sqlx::Error> {
        let pool = self.repository.store().pool();
        let mut tx = pool.begin().await?;
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM subscription_state s
             WHERE s.status IN ('requested', 'active') AND s.next_attempt_at <= now()
               AND (NOT s.handshake_done
                    OR s.delivered_through < COALESCE((SELECT max(e.event_number)
                           FROM subscription_event e WHERE e.subscription_id = s.subscription_id), 0)
                    OR (s.heartbeat_seconds IS NOT NULL
                        AND COALESCE(s.last_sent_at, s.created_at)
                            + make_interval(secs => s.heartbeat_seconds) <= now()))
             ORDER BY s.next_attempt_at
             LIMIT 1
             FOR UPDATE OF s SKIP LOCKED"
        );
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let mut sub = SubscriptionRow::from_row(&row)?;
        let kind = if !sub.handshake_done {
            Kind::Handshake
        } else if sub.delivered_through < sub.events_since_start {
            Kind::Events(
                notification::events(
                    &mut *tx,
                    &sub.id,
                    sub.delivered_through + 1,
                    sub.events_since_start,
                    self.settings.batch_size,
                )
                .await?,
            )
        } else {
            Kind::Heartbeat
        };
        // The notification reports the state the receiver will be in once it is accepted.
        let before_status = sub.status.clone();
        sub.status = "active".into();
        let events: &[EventRow] = match &kind {
            Kind::Events(e) => e,
            _ => &[],
        };
        let contents = if sub.payload == Payload::FullResource && !events.is_empty() {
            let keys: Vec<_> = events
                .iter()
                .filter(|e| e.operation != "delete")
                .map(|e| (e.resource_type.clone(), e.resource_id.clone(), e.version_id))
                .collect();
            self.repository
                .store()
                .vread_many(&keys)
                .await
                .unwrap_or_default()
                .into_iter()
                .filter_map(|v| {
                    Some((
                        (v.resource_type, v.id, v.version_id),
                        (v.content?, v.author_org),
                    ))
                })
                .collect()
        } else {
            HashMap::new()
        };
        let body = notification::bundle(
            &self.base_url,
            &sub,
            kind.code(),
            events,
            sub.payload,
            &contents,
            self.policy.as_ref(),
        );
        let sent = self.send(&sub, &body).await;
        let channel = sub.channel.as_str();
        let mut transition = None;
        match sent {
            Ok(()) => {
                metrics::NOTIFICATIONS
                    .with_label_values(&[channel, kind.code(), "delivered"])
                    .inc();
                let now = time::OffsetDateTime::now_utc();
                for e in events {
                    metrics::DELIVERY_LAG
                        .with_label_values(&[channel])
                        .observe((now - e.occurred_at).as_seconds_f64().max(0.0));
                }
                let through = events
                    .last()
                    .map(|e| e.number)
                    .unwrap_or(sub.delivered_through);
                sqlx::query(
                    "UPDATE subscription_state SET status = 'active', handshake_done = true,
                         delivered_through = $2, failures = 0, last_error = NULL,
                         last_sent_at = now(), next_attempt_at = now(), updated_at = now()
                     WHERE subscription_id = $1",
                )
                .bind(&sub.id)
                .bind(through)
                .execute(&mut *tx)
                .await?;
                if before_status != "active" {
                    transition = Some(Transition {
                        subscription: sub.id.clone(),
                        version_id: sub.version_id,
                        status: "active",
                        error: None,
                    });
                }
            }
            Err(reason) => {
                metrics::NOTIFICATIONS
                    .with_label_values(&[channel, kind.code(), "failed"])
                    .inc();
                let failures = sub.failures as u32 + 1;
                let give_up = failures >= self.settings.max_failures;
                let delay = backoff(&self.settings, failures);
                tracing::warn!(subscription = %sub.id, failures, reason = %reason, "notification not delivered");
                sqlx::query(
                    "UPDATE subscription_state SET failures = $2, last_error = $3,
                         status = CASE WHEN $4 THEN 'error' ELSE status END,
                         next_attempt_at = now() + make_interval(secs => $5), updated_at = now()
                     WHERE subscription_id = $1",
                )
                .bind(&sub.id)
                .bind(failures as i32)
                .bind(&reason)
                .bind(give_up)
                .bind(delay.as_secs_f64())
                .execute(&mut *tx)
                .await?;
                if give_up {
                    metrics::SUBSCRIPTION_ERRORS
                        .with_label_values(&[channel])
                        .inc();
                    transition = Some(Transition {
                        subscription: sub.id.clone(),
                        version_id: sub.version_id,
                        status: "error",
                        error: Some(reason),
                    });
                }
            }
        }
        tx.commit().await?;
        if let Some(t) = transition {
            if t.status == "error" {
                self.platform
                    .emit(
                        platform::SUBSCRIPTION_ERROR,
                        json!({"subscription": t.subscription, "reason": t.error}),
                    )
                    .await;
            }
            self.write_back(&t).await;
        }
        Ok(true)
    }

    async fn send(&self, sub: &SubscriptionRow, body: &Value) -> Result<(), String> {
        let text = body.to_string();
        match sub.channel {
            Channel::RestHook => {
                let mut request = self
                    .http
                    .post(&sub.endpoint)
                    .timeout(Duration::from_secs(self.settings.request_timeout_seconds))
                    .header("content-type", "application/fhir+json")
                    .body(text);
                for h in &sub.headers {
                    if let Some((name, value)) = h.split_once(':') {
                        request = request.header(name.trim(), value.trim());
                    }
                }
                let response = request.send().await.map_err(|e| {
                    // No URL in the message: it can carry the receiver's credentials.
                    format!("rest-hook request failed: {}", e.without_url())
                })?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("rest-hook answered {}", response.status()))
                }
            }
            Channel::Nats => {
                let Some(client) = &self.nats else {
                    return Err("NATS is not configured on this server".into());
                };
                let subject = sub.endpoint.trim_start_matches("nats:").to_string();
                client
                    .publish(subject, text.into())
                    .await
                    .map_err(|e| format!("NATS publish failed: {e}"))?;
                // Delivered means the broker has it, not only our socket buffer.
                tokio::time::timeout(
                    Duration::from_secs(self.settings.request_timeout_seconds),
                    client.flush(),
                )
                .await
                .map_err(|_| "NATS flush timed out".to_string())?
                .map_err(|e| format!("NATS flush failed: {e}"))
            }
        }
    }

    /// Mirrors active/error into the Subscription resource, as the owner expects to read it.
    /// Only if the client has not changed the resource meanwhile (If-Match).
    async fn write_back(&self, t: &Transition) {
        let Ok(row) = self.repository.read("Subscription", &t.subscription).await else {
            return;
        };
        if row.version_id != t.version_id {
            return;
        }
        // Written by the server on the owner's behalf: the owner's organisation keeps it (read
        // access follows the organisation that holds a resource).
        let owner_org = row.author_org.clone();
        let Some(mut resource) = row
            .content
            .and_then(|c| serde_json::from_str::<Value>(&c).ok())
        else {
            return;
        };
        resource["status"] = json!(t.status);
        match &t.error {
            Some(e) => resource["error"] = json!(e),
            None => {
                if let Some(o) = resource.as_object_mut() {
                    o.remove("error");
                }
            }
        }
        let entry = EntryRequest {
            resource_type: "Subscription".into(),
            full_url: None,
            action: EntryAction::Update {
                target: Target::Id(t.subscription.clone()),
                resource,
                if_match: Some(t.version_id),
            },
        };
        let author = Author {
            kind: "system",
            id: SERVER_AUTHOR_ID.into(),
            org: owner_org,
            request_id: None,
        };
        if let Err(e) = self
            .repository
            .execute_atomic(std::slice::from_ref(&entry), &author)
            .await
        {
            tracing::debug!(subscription = %t.subscription, error = %e.error, "status not written back");
        }
    }
}
