//! Idempotency keys: message ids and `Idempotency-Key` headers, keyed by the caller's ODS code.
//!
//! The key is inserted inside the transaction that does the work (`ON CONFLICT DO NOTHING`):
//! a concurrent repeat waits on the unique index until the first commits, then finds the row
//! and answers with the stored response; if the first rolled back, the repeat proceeds. The
//! response is stored in the same transaction, so a key never exists without its effects.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};

use crate::interactions::{EntryOutcome, HookDecision, WriteHook};
use crate::store::WriteTx;

pub const SCOPE_MESSAGE: &str = "message";
pub const SCOPE_REST: &str = "rest";

/// Longest accepted `Idempotency-Key`.
pub const MAX_KEY_LEN: usize = 200;

pub enum Claim {
    /// First use: proceed and store the response before commit.
    New,
    /// Seen before (and committed): answer with what was stored.
    Repeat {
        fingerprint: String,
        response: Value,
    },
}

/// sha-256 over the parts, hex.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    format!("{:x}", h.finalize())
}

pub async fn claim(
    conn: &mut PgConnection,
    org: &str,
    scope: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Claim, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO event_idempotency (org, scope, key, fingerprint, response)
         VALUES ($1, $2, $3, $4, 'null'::jsonb)
         ON CONFLICT DO NOTHING",
    )
    .bind(org)
    .bind(scope)
    .bind(key)
    .bind(fingerprint)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let row = sqlx::query(
        "SELECT fingerprint, response FROM event_idempotency
         WHERE org = $1 AND scope = $2 AND key = $3",
    )
    .bind(org)
    .bind(scope)
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Claim::Repeat {
        fingerprint: row.try_get("fingerprint")?,
        response: row.try_get("response")?,
    })
}

pub async fn store_response(
    conn: &mut PgConnection,
    org: &str,
    scope: &str,
    key: &str,
    response: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE event_idempotency SET response = $4, created_at = clock_timestamp()
         WHERE org = $1 AND scope = $2 AND key = $3",
    )
    .bind(org)
    .bind(scope)
    .bind(key)
    .bind(response)
    .execute(conn)
    .await?;
    Ok(())
}

/// Forgets keys older than the retention; returns how many.
pub async fn prune(pool: &PgPool, retention_hours: u64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM event_idempotency WHERE created_at < now() - make_interval(hours => $1)",
    )
    .bind(retention_hours as i32)
    .execute(pool)
    .await?
    .rows_affected())
}

/// `Idempotency-Key` on a REST write: the stored response is the write's outcome (status, id,
/// version); a repeat re-reads that exact version, which never changes.
pub struct RestIdempotency {
    pub org: String,
    pub key: String,
    pub fingerprint: String,
    /// Set when the key was seen before.
    pub repeat: Option<(String, Value)>,
}

impl RestIdempotency {
    pub fn new(org: &str, key: &str, fingerprint: String) -> RestIdempotency {
        RestIdempotency {
            org: org.to_string(),
            key: key.to_string(),
            fingerprint,
            repeat: None,
        }
    }
}

pub fn outcome_summary(o: &EntryOutcome) -> Value {
    json!({
        "status": o.status,
        "resourceType": o.resource_type,
        "id": o.id,
        "versionId": o.version_id,
        "message": o.message,
    })
}

impl WriteHook for RestIdempotency {
    async fn on_locked(
        &mut self,
        tx: &mut WriteTx,
        _matched: &[Option<crate::interactions::Matched>],
    ) -> Result<HookDecision, crate::interactions::Error> {
        self.repeat = None;
        match claim(
            tx.connection().await?,
            &self.org,
            SCOPE_REST,
            &self.key,
            &self.fingerprint,
        )
        .await
        .map_err(crate::store::StoreError::from)?
        {
            Claim::New => Ok(HookDecision::Proceed {
                hold: Default::default(),
            }),
            Claim::Repeat {
                fingerprint,
                response,
            } => {
                self.repeat = Some((fingerprint, response));
                Ok(HookDecision::Abort)
            }
        }
    }

    async fn before_commit(
        &mut self,
        tx: &mut WriteTx,
        outcomes: &[EntryOutcome],
    ) -> Result<(), crate::interactions::Error> {
        let response = json!({
            "outcomes": outcomes.iter().map(outcome_summary).collect::<Vec<_>>()
        });
        store_response(
            tx.connection().await?,
            &self.org,
            SCOPE_REST,
            &self.key,
            &response,
        )
        .await
        .map_err(crate::store::StoreError::from)?;
        Ok(())
    }
}
