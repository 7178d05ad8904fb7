//! The audit trail: one row per interaction (IHE BALP style), written and committed before the
//! response leaves, append-only (a trigger refuses UPDATE, DELETE and TRUNCATE) and hash-chained
//! so that even a superuser's edits are evident: `hash = sha256(prev_hash ‖ seq ‖ row)`.
//! Writers lock the single `audit_chain_head` row, so concurrent requests join the chain one at
//! a time and the chain stays linear. Only this module writes the audit tables.

pub mod event;
pub mod reports;
pub mod verify;

use sha2::{Digest, Sha256};
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::{Store, StoreError};

/// One audited interaction.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    pub recorded_at: Option<OffsetDateTime>,
    pub request_id: Option<String>,
    pub interaction: String,
    /// BALP action: C R U D E.
    pub action: String,
    /// 0 success, 4 minor failure (denials, not found, bad requests), 8 serious, 12 major.
    pub outcome: i32,
    pub outcome_desc: Option<String>,
    pub http_status: i32,
    pub caller_kind: String,
    pub caller_id: Option<String>,
    pub caller_name: Option<String>,
    pub role_code: Option<String>,
    pub org: Option<String>,
    /// v3-ActReason purpose of use: TREAT, or BTG/ETREAT under break-glass.
    pub purpose: String,
    pub break_glass_id: Option<Uuid>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub patients: Vec<String>,
    pub returned: i32,
    pub denied: bool,
    pub relationship: bool,
    pub client_ip: Option<String>,
}

/// Microseconds since the epoch: what PostgreSQL keeps of a timestamp, so the hash computed at
/// write time is the hash recomputed from the stored row.
fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

fn from_micros(m: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(m as i128 * 1000).expect("timestamp in range")
}

impl AuditRecord {
    /// The bytes the hash covers: every column but the hashes, in a fixed order.
    fn canonical(&self, recorded_micros: i64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!([
            recorded_micros,
            self.request_id,
            self.interaction,
            self.action,
            self.outcome,
            self.outcome_desc,
            self.http_status,
            self.caller_kind,
            self.caller_id,
            self.caller_name,
            self.role_code,
            self.org,
            self.purpose,
            self.break_glass_id.map(|u| u.to_string()),
            self.method,
            self.path,
            self.query,
            self.resource_type,
            self.resource_id,
            self.patients,
            self.returned,
            self.denied,
            self.relationship,
            self.client_ip,
        ]))
        .expect("serialisable")
    }

    pub(crate) fn from_row(row: &sqlx::postgres::PgRow) -> Result<AuditRecord, sqlx::Error> {
        let recorded: OffsetDateTime = row.try_get("recorded_at")?;
        Ok(AuditRecord {
            recorded_at: Some(recorded),
            request_id: row.try_get("request_id")?,
            interaction: row.try_get("interaction")?,
            action: row.try_get("action")?,
            outcome: row.try_get("outcome")?,
            outcome_desc: row.try_get("outcome_desc")?,
            http_status: row.try_get("http_status")?,
            caller_kind: row.try_get("caller_kind")?,
            caller_id: row.try_get("caller_id")?,
            caller_name: row.try_get("caller_name")?,
            role_code: row.try_get("role_code")?,
            org: row.try_get("org")?,
            purpose: row.try_get("purpose")?,
            break_glass_id: row.try_get("break_glass_id")?,
            method: row.try_get("method")?,
            path: row.try_get("path")?,
            query: row.try_get("query")?,
            resource_type: row.try_get("resource_type")?,
            resource_id: row.try_get("resource_id")?,
            patients: row.try_get("patients")?,
            returned: row.try_get("returned")?,
            denied: row.try_get("denied")?,
            relationship: row.try_get("relationship")?,
            client_ip: row.try_get("client_ip")?,
        })
    }
}

/// Columns of `AuditRecord::from_row`, with `seq`, `prev_hash` and `hash`.
macro_rules! audit_columns {
    () => {
        "seq, recorded_at, request_id, interaction, action, outcome, outcome_desc, http_status,
         caller_kind, caller_id, caller_name, role_code, org, purpose, break_glass_id, method,
         path, query, resource_type, resource_id, patients, returned, denied, relationship,
         client_ip, prev_hash, hash"
    };
}
pub(crate) use audit_columns;

/// `sha256(prev ‖ seq ‖ canonical row)`.
pub fn chain_hash(prev: &[u8], seq: i64, record: &AuditRecord, recorded_micros: i64) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(record.canonical(recorded_micros));
    h.finalize().to_vec()
}

/// The audit trail over the system-of-record database.
#[derive(Clone)]
pub struct Audit {
    store: Store,
}

impl Audit {
    pub fn new(store: Store) -> Audit {
        Audit { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends the record to the chain and commits; returns its sequence number. The caller
    /// must not release data before this returns `Ok`.
    pub async fn record(&self, record: &AuditRecord) -> Result<i64, StoreError> {
        Ok(self
            .record_many(std::slice::from_ref(record))
            .await?
            .unwrap_or(0))
    }

    /// Appends records in one transaction (one lock of the chain head); returns the last
    /// sequence number. Bulk loads and benchmarks use it; requests use `record`.
    pub async fn record_many(&self, records: &[AuditRecord]) -> Result<Option<i64>, StoreError> {
        if records.is_empty() {
            return Ok(None);
        }
        let mut tx = self.store.pool().begin().await?;
        let (mut seq, mut prev): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, hash FROM audit_chain_head WHERE id = 1 FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        for record in records {
            seq += 1;
            prev = Self::insert(&mut tx, seq, &prev, record).await?;
        }
        sqlx::query("UPDATE audit_chain_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(&prev)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        crate::metrics::AUDIT_WRITES.inc_by(records.len() as u64);
        Ok(Some(seq))
    }

    /// Inserts one chained row; returns its hash.
    async fn insert(
        tx: &mut sqlx::PgConnection,
        seq: i64,
        head_hash: &[u8],
        record: &AuditRecord,
    ) -> Result<Vec<u8>, StoreError> {
        let recorded = micros(record.recorded_at.unwrap_or_else(OffsetDateTime::now_utc));
        let hash = chain_hash(head_hash, seq, record, recorded);
        sqlx::query(
            "INSERT INTO audit_event (seq, recorded_at, request_id, interaction, action, outcome,
                 outcome_desc, http_status, caller_kind, caller_id, caller_name, role_code, org,
                 purpose, break_glass_id, method, path, query, resource_type, resource_id,
                 patients, returned, denied, relationship, client_ip, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                 $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)",
        )
        .bind(seq)
        .bind(from_micros(recorded))
        .bind(&record.request_id)
        .bind(&record.interaction)
        .bind(&record.action)
        .bind(record.outcome)
        .bind(&record.outcome_desc)
        .bind(record.http_status)
        .bind(&record.caller_kind)
        .bind(&record.caller_id)
        .bind(&record.caller_name)
        .bind(&record.role_code)
        .bind(&record.org)
        .bind(&record.purpose)
        .bind(record.break_glass_id)
        .bind(&record.method)
        .bind(&record.path)
        .bind(&record.query)
        .bind(&record.resource_type)
        .bind(&record.resource_id)
        .bind(&record.patients)
        .bind(record.returned)
        .bind(record.denied)
        .bind(record.relationship)
        .bind(&record.client_ip)
        .bind(head_hash)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        Ok(hash)
    }
}
