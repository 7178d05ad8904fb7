//! Notification Bundles (Subscriptions Backport, R4): a `history` Bundle whose first entry is
//! the SubscriptionStatus `Parameters`, followed by the focus resources (id-only or full).

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::{PgPool, Row};
use time::OffsetDateTime;

use crate::fhir::id::new_id;
use crate::fhir::instant::{format_instant, now_millis};
use crate::store::Owner;

use super::{Channel, Payload, PayloadPolicy};

const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
const NOTIFICATION_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4";

#[derive(Debug, Clone)]
pub struct SubscriptionRow {
    pub id: String,
    pub topic: String,
    pub status: String,
    pub channel: Channel,
    pub endpoint: String,
    pub headers: Vec<String>,
    pub payload: Payload,
    pub heartbeat_seconds: Option<i32>,
    pub owner: Owner,
    pub events_since_start: i64,
    pub delivered_through: i64,
    pub handshake_done: bool,
    pub failures: i32,
    pub last_error: Option<String>,
    pub version_id: i64,
}

/// Columns `SubscriptionRow::from_row` reads (`s` = subscription_state).
pub const ROW_COLUMNS: &str = "s.subscription_id, s.topic, s.status, s.channel, s.endpoint,
    s.headers, s.payload, s.heartbeat_seconds, s.owner_kind, s.owner_id, s.owner_org,
    s.delivered_through, s.handshake_done, s.failures, s.last_error, s.version_id,
    COALESCE((SELECT max(e.event_number) FROM subscription_event e
              WHERE e.subscription_id = s.subscription_id), 0) AS events_since_start";

impl SubscriptionRow {
    pub fn from_row(r: &sqlx::postgres::PgRow) -> Result<SubscriptionRow, sqlx::Error> {
        let channel: String = r.try_get("channel")?;
        let payload: String = r.try_get("payload")?;
        Ok(SubscriptionRow {
            id: r.try_get("subscription_id")?,
            topic: r.try_get("topic")?,
            status: r.try_get("status")?,
            channel: Channel::parse(&channel).unwrap_or(Channel::RestHook),
            endpoint: r.try_get("endpoint")?,
            headers: serde_json::from_value(r.try_get("headers")?).unwrap_or_default(),
            payload: Payload::parse(&payload).unwrap_or(Payload::IdOnly),
            heartbeat_seconds: r.try_get("heartbeat_seconds")?,
            owner: Owner {
                kind: r.try_get("owner_kind")?,
                id: r.try_get("owner_id")?,
                org: r.try_get("owner_org")?,
            },
            events_since_start: r.try_get("events_since_start")?,
            delivered_through: r.try_get("delivered_through")?,
            handshake_done: r.try_get("handshake_done")?,
            failures: r.try_get("failures")?,
            last_error: r.try_get("last_error")?,
            version_id: r.try_get("version_id")?,
        })
    }

    pub async fn load(pool: &PgPool, id: &str) -> Result<Option<SubscriptionRow>, sqlx::Error> {
        let sql =
            format!("SELECT {ROW_COLUMNS} FROM subscription_state s WHERE s.subscription_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(pool)
            .await?;
        row.as_ref().map(SubscriptionRow::from_row).transpose()
    }
}

#[derive(Debug, Clone)]
pub struct EventRow {
    pub number: i64,
    pub resource_type: String,
    pub resource_id: String,
    pub version_id: i64,
    pub operation: String,
    pub occurred_at: OffsetDateTime,
}

/// Events `from..=to` of a subscription, in order, at most `limit`.
pub async fn events(
    conn: impl sqlx::PgExecutor<'_>,
    subscription: &str,
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Vec<EventRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT event_number, resource_type, resource_id, version_id, operation, occurred_at
         FROM subscription_event
         WHERE subscription_id = $1 AND event_number BETWEEN $2 AND $3
         ORDER BY event_number LIMIT $4",
    )
    .bind(subscription)
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(EventRow {
                number: r.try_get("event_number")?,
                resource_type: r.try_get("resource_type")?,
                resource_id: r.try_get("resource_id")?,
                version_id: r.try_get("version_id")?,
                operation: r.try_get("operation")?,
                occurred_at: r.try_get("occurred_at")?,
            })
        })
        .collect()
}

/// `handshake` | `heartbeat` | `event-notification` | `query-status` | `query-event`.
pub fn status_parameters(
    base_url: &str,
    sub: &SubscriptionRow,
    kind: &str,
    events: &[EventRow],
    payload: Payload,
) -> Value {
    let mut parameters = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{base_url}/Subscription/{}", sub.id)}}),
        json!({"name": "topic", "valueCanonical": sub.topic}),
        json!({"name": "status", "valueCode": sub.status}),
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "events-since-subscription-start", "valueString": sub.events_since_start.to_string()}),
    ];
    for e in events {
        let mut parts = vec![
            json!({"name": "event-number", "valueString": e.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": format_instant(e.occurred_at)}),
        ];
        if payload != Payload::Empty {
            parts.push(json!({"name": "focus", "valueReference": {"reference": format!("{base_url}/{}/{}", e.resource_type, e.resource_id)}}));
        }
        parameters.push(json!({"name": "notification-event", "part": parts}));
    }
    if let Some(error) = &sub.last_error
        && sub.status == "error"
    {
        parameters.push(json!({"name": "error", "valueCodeableConcept": {"text": error}}));
    }
    json!({
        "resourceType": "Parameters",
        "id": new_id(),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    })
}

/// The whole notification Bundle. `contents` holds the versions' JSON for full-resource
/// payloads; the policy decides per resource whether it may travel in full.
pub fn bundle(
    base_url: &str,
    sub: &SubscriptionRow,
    kind: &str,
    events: &[EventRow],
    payload: Payload,
    contents: &HashMap<(String, String, i64), (String, Option<String>)>,
    policy: &dyn PayloadPolicy,
) -> Value {
    let status = status_parameters(base_url, sub, kind, events, payload);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", new_id()),
        "resource": status,
        "request": {"method": "GET", "url": format!("Subscription/{}/$status", sub.id)},
        "response": {"status": "200"},
    })];
    if payload != Payload::Empty {
        for e in events {
            let (method, url, status) = match e.operation.as_str() {
                "create" => ("POST", e.resource_type.clone(), "201"),
                "delete" => (
                    "DELETE",
                    format!("{}/{}", e.resource_type, e.resource_id),
                    "204",
                ),
                _ => (
                    "PUT",
                    format!("{}/{}", e.resource_type, e.resource_id),
                    "200",
                ),
            };
            let mut entry = json!({
                "fullUrl": format!("{base_url}/{}/{}", e.resource_type, e.resource_id),
                "request": {"method": method, "url": url},
                "response": {"status": status, "etag": format!("W/\"{}\"", e.version_id)},
            });
            if payload == Payload::FullResource
                && let Some((text, author_org)) =
                    contents.get(&(e.resource_type.clone(), e.resource_id.clone(), e.version_id))
                && let Ok(resource) = serde_json::from_str::<Value>(text)
                && policy.may_send_resource(
                    &sub.owner,
                    &e.resource_type,
                    &resource,
                    author_org.as_deref(),
                )
            {
                entry["resource"] = resource;
            }
            entries.push(entry);
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": new_id(),
        "meta": {"profile": [NOTIFICATION_PROFILE], "lastUpdated": format_instant(now_millis())},
        "type": "history",
        "timestamp": format_instant(now_millis()),
        "entry": entries,
    })
}
