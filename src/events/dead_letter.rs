//! The dead-letter store: messages that could not be applied, with the reason (an
//! OperationOutcome) and the payload as received, for review and replay after a fix.

use serde_json::Value;
use sqlx::{PgPool, Row};
use time::OffsetDateTime;

#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    /// Unique source position, e.g. `nats:SHCR_INBOUND:1234`.
    pub origin: String,
    pub channel: String,
    pub subject: Option<String>,
    pub org: Option<String>,
    pub message_id: Option<String>,
    pub event_code: Option<String>,
    pub reason_code: String,
    pub reason: Value,
    /// Transport headers, without credentials, plus `authenticatedAs` when the sender was
    /// verified at receipt.
    pub headers: Value,
    pub payload: Vec<u8>,
    pub published_at: Option<OffsetDateTime>,
    pub attempts: i32,
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub id: i64,
    pub origin: String,
    pub channel: String,
    pub subject: Option<String>,
    pub org: Option<String>,
    pub message_id: Option<String>,
    pub event_code: Option<String>,
    pub reason_code: String,
    pub reason: Value,
    pub headers: Value,
    pub payload: Vec<u8>,
    pub published_at: Option<OffsetDateTime>,
    pub attempts: i32,
    pub status: String,
    pub received_at: OffsetDateTime,
    pub replay_count: i32,
    pub replayed_at: Option<OffsetDateTime>,
    pub replay_outcome: Option<Value>,
}

impl DeadLetter {
    fn from_row(r: &sqlx::postgres::PgRow) -> Result<DeadLetter, sqlx::Error> {
        Ok(DeadLetter {
            id: r.try_get("id")?,
            origin: r.try_get("origin")?,
            channel: r.try_get("channel")?,
            subject: r.try_get("subject")?,
            org: r.try_get("org")?,
            message_id: r.try_get("message_id")?,
            event_code: r.try_get("event_code")?,
            reason_code: r.try_get("reason_code")?,
            reason: r.try_get("reason")?,
            headers: r.try_get("headers")?,
            payload: r.try_get("payload")?,
            published_at: r.try_get("published_at")?,
            attempts: r.try_get("attempts")?,
            status: r.try_get("status")?,
            received_at: r.try_get("received_at")?,
            replay_count: r.try_get("replay_count")?,
            replayed_at: r.try_get("replayed_at")?,
            replay_outcome: r.try_get("replay_outcome")?,
        })
    }
}

/// Stores a dead letter; `None` when this origin was dead-lettered already (a redelivery after
/// a crash between storing and acknowledging).
pub async fn record(pool: &PgPool, d: &NewDeadLetter) -> Result<Option<i64>, sqlx::Error> {
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO dead_letter (origin, channel, subject, org, message_id, event_code,
             reason_code, reason, headers, payload, published_at, attempts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (origin) DO NOTHING
         RETURNING id",
    )
    .bind(&d.origin)
    .bind(&d.channel)
    .bind(&d.subject)
    .bind(&d.org)
    .bind(&d.message_id)
    .bind(&d.event_code)
    .bind(&d.reason_code)
    .bind(&d.reason)
    .bind(&d.headers)
    .bind(&d.payload)
    .bind(d.published_at)
    .bind(d.attempts)
    .fetch_optional(pool)
    .await?;
    super::metrics::DEAD_LETTERS
        .with_label_values(&[&d.reason_code])
        .inc();
    refresh_pending_gauge(pool).await;
    Ok(id)
}

pub async fn refresh_pending_gauge(pool: &PgPool) {
    if let Ok(n) =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM dead_letter WHERE status = 'dead'")
            .fetch_one(pool)
            .await
    {
        super::metrics::DEAD_LETTERS_PENDING.set(n);
    }
}

const COLUMNS: &str = "id, origin, channel, subject, org, message_id, event_code, reason_code,
    reason, headers, payload, published_at, attempts, status, received_at, replay_count,
    replayed_at, replay_outcome";

/// Dead letters, newest first; `all` includes those already replayed.
pub async fn list(pool: &PgPool, all: bool, limit: i64) -> Result<Vec<DeadLetter>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letter WHERE $1 OR status = 'dead' ORDER BY id DESC LIMIT $2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(all)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(DeadLetter::from_row).collect()
}

pub async fn get(pool: &PgPool, id: i64) -> Result<Option<DeadLetter>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letter WHERE id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(DeadLetter::from_row).transpose()
}

/// Ids of dead letters still waiting for replay, oldest first.
pub async fn pending(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM dead_letter WHERE status = 'dead' ORDER BY id")
        .fetch_all(pool)
        .await
}

/// Records a replay attempt: `replayed` on success, still `dead` (with the new reason) if not.
pub async fn record_replay(
    pool: &PgPool,
    id: i64,
    succeeded: bool,
    outcome: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE dead_letter
         SET status = CASE WHEN $2 THEN 'replayed' ELSE status END,
             replay_count = replay_count + 1, replayed_at = now(), replay_outcome = $3
         WHERE id = $1",
    )
    .bind(id)
    .bind(succeeded)
    .bind(outcome)
    .execute(pool)
    .await?;
    refresh_pending_gauge(pool).await;
    Ok(())
}
