//! The audit trail: one row per interaction (IHE BALP style), written and committed before the
//! response leaves, append-only (a trigger refuses UPDATE, DELETE and TRUNCATE) and hash-chained
//! so that even a superuser's edits are evident: `hash = sha256(prev_hash ‖ seq ‖ row)`.
//! Each append moves the single `audit_chain_head` row in the statement that inserts, so the
//! chain stays linear whatever the number of writers (processes); within a process one writer
//! task appends for every request (group commit). Only this module writes the audit tables.
//!
//! With `[audit] durability = "journal"` a request waits instead for its row's group fsync into
//! a local append-only journal (`journal`), which a background task ships into the same chain,
//! recording how far it shipped in the statement that appends.

pub mod event;
pub mod journal;
pub mod reports;
pub mod verify;

use sha2::{Digest, Sha256};
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use tokio::sync::{mpsc, oneshot};

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

/// Most rows one group commit writes.
const GROUP_MAX: usize = 512;

/// How long the writer keeps its own connection: the lookups pool's connection lifetime
/// (`store::LOOKUP_PLAN_LIFETIME` on main), so its plans follow the table's growth too.
const OWN_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// A request's row waiting for the next group commit.
struct Pending {
    record: AuditRecord,
    done: oneshot::Sender<Result<i64, String>>,
}

/// The audit trail over the system-of-record database.
///
/// Requests hand their row to one writer task per process, which appends whatever has queued
/// meanwhile in one transaction (group commit): one chain-head lock and one WAL flush serve a
/// whole batch, instead of every request queueing for the chain head in turn. Each request
/// still waits for the commit of its own row before its answer leaves.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    sink: Sink,
}

/// Where a request's row is made durable before its answer leaves.
#[derive(Clone)]
enum Sink {
    /// The group commit into the chain (`write_groups`).
    Database(mpsc::UnboundedSender<Pending>),
    /// The group fsync into the local journal, shipped into the chain later.
    Journal(journal::Writer),
}

impl Audit {
    /// Rows committed into the chain before each answer; starts the writer task on the current
    /// tokio runtime.
    pub fn new(store: Store) -> Audit {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(store.clone(), pending));
        Audit {
            store,
            sink: Sink::Database(queue),
        }
    }

    /// Rows fsynced into the journal before each answer (its shippers append them to the
    /// chain).
    pub fn journalled(store: Store, writer: journal::Writer) -> Audit {
        Audit {
            store,
            sink: Sink::Journal(writer),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Makes the record durable: appended to the chain and committed (database), or written
    /// to the journal and fsynced (journal). Returns its sequence number: its place in the
    /// chain, or in the journal (the chain's number comes when it is shipped). The caller must
    /// not release data before this returns `Ok`.
    pub async fn record(&self, record: AuditRecord) -> Result<i64, StoreError> {
        let queue = match &self.sink {
            Sink::Database(queue) => queue,
            Sink::Journal(writer) => return writer.record(record).await,
        };
        let (done, committed) = oneshot::channel();
        queue
            .send(Pending { record, done })
            .map_err(|_| StoreError::Unavailable("the audit writer has stopped".into()))?;
        committed
            .await
            .map_err(|_| StoreError::Unavailable("the audit writer has stopped".into()))?
            .map_err(StoreError::Unavailable)
    }

    /// Appends records in one transaction (one lock of the chain head, one statement); returns
    /// the last sequence number.
    pub async fn record_many(&self, records: &[AuditRecord]) -> Result<Option<i64>, StoreError> {
        let mut conn = self.store.lookups_pool().acquire().await?;
        append(&mut conn, &mut None, records.iter(), None).await
    }
}

/// The writer task: takes everything queued, appends it in one statement, answers each.
///
/// It keeps a connection of its own, out of the pool: a pooled one costs a round trip per
/// group on its way back (sqlx pings every connection it takes back), and would hold one of
/// the request path's lookup connections half of the time. A connection that failed is
/// dropped and the next group opens another; so is one older than `OWN_CONNECTION_LIFETIME`,
/// like the lookups pool's own (its generic plans are remade from the tables' current size).
async fn write_groups(store: Store, mut pending: mpsc::UnboundedReceiver<Pending>) {
    let mut group = Vec::with_capacity(GROUP_MAX);
    // The chain head as this writer last left it; checked by every append.
    let mut head = None;
    let mut own: Option<(sqlx::PgConnection, std::time::Instant)> = None;
    while pending.recv_many(&mut group, GROUP_MAX).await > 0 {
        let kept = own
            .take()
            .filter(|(_, opened)| opened.elapsed() < OWN_CONNECTION_LIFETIME);
        let result = match kept {
            Some(conn) => Ok(conn),
            None => store
                .lookups_pool()
                .acquire()
                .await
                .map(|c| (c.detach(), std::time::Instant::now()))
                .map_err(StoreError::from),
        };
        let result = match result {
            Ok((mut conn, opened)) => {
                let started = std::time::Instant::now();
                let appended =
                    append(&mut conn, &mut head, group.iter().map(|p| &p.record), None).await;
                crate::metrics::AUDIT_GROUP_SECONDS.observe(started.elapsed().as_secs_f64());
                if appended.is_ok() {
                    own = Some((conn, opened));
                } else {
                    // Unknown state (the commit may or may not have happened): start afresh,
                    // from the head as stored.
                    head = None;
                }
                appended
            }
            Err(e) => Err(e),
        };
        crate::metrics::AUDIT_GROUP_SIZE.observe(group.len() as f64);
        let first = match &result {
            Ok(Some(last)) => Ok(last - group.len() as i64 + 1),
            Ok(None) => Err("nothing was appended".to_string()),
            Err(e) => Err(e.to_string()),
        };
        for (i, p) in group.drain(..).enumerate() {
            // A requester that went away no longer needs its answer; its row is committed.
            let _ = p.done.send(first.clone().map(|seq| seq + i as i64));
        }
    }
}

/// A journal's rows being shipped: its shipped position moves from `from` to `to` in the
/// statement that appends them.
pub(crate) struct Shipping<'a> {
    pub journal_id: &'a str,
    pub from: i64,
    pub to: i64,
}

/// Appends `records` to the chain; returns the last sequence number.
///
/// One statement, committed on its own: it moves the chain head only if the head is still
/// where `head` says (another writer, e.g. a second shcr process, may have moved it) and
/// inserts the rows only if it did. A moved head is read again and the rows re-chained.
/// Concurrent writers queue on the head row's lock, and PostgreSQL re-checks the condition
/// after the wait, so the chain stays linear. With `shipping`, the same statement moves the
/// journal's shipped position, and does nothing at all unless that is still at `from`.
async fn append<'a>(
    conn: &mut sqlx::PgConnection,
    head: &mut Option<(i64, Vec<u8>)>,
    records: impl ExactSizeIterator<Item = &'a AuditRecord> + Clone,
    shipping: Option<&Shipping<'_>>,
) -> Result<Option<i64>, StoreError> {
    let n = records.len();
    if n == 0 {
        return Ok(None);
    }
    loop {
        let (base, base_hash) = match head.take() {
            Some(h) => h,
            None => {
                sqlx::query_as("SELECT seq, hash FROM audit_chain_head WHERE id = 1")
                    .fetch_one(&mut *conn)
                    .await?
            }
        };
        let mut rows = Columns::default();
        let (mut seq, mut prev) = (base, base_hash);
        for record in records.clone() {
            seq += 1;
            prev = rows.push(seq, prev, record);
        }
        let inserted = rows.insert(&mut *conn, base, seq, &prev, shipping).await?;
        if inserted == n as u64 {
            *head = Some((seq, prev));
            crate::metrics::AUDIT_WRITES.inc_by(n as u64);
            return Ok(Some(seq));
        }
        if inserted != 0 {
            return Err(StoreError::Unavailable(format!(
                "audit append wrote {inserted} of {n} rows"
            )));
        }
        if let Some(shipping) = shipping {
            let at: Option<i64> = sqlx::query_scalar(
                "SELECT shipped_seq FROM audit_journal_shipped WHERE journal_id = $1",
            )
            .bind(shipping.journal_id)
            .fetch_optional(&mut *conn)
            .await?;
            if at != Some(shipping.from) {
                return Err(StoreError::Unavailable(format!(
                    "audit journal {}: its shipped position is {at:?} in the database, not {} \
                     as this shipper left it (another process with a copy of this journal?)",
                    shipping.journal_id, shipping.from
                )));
            }
        }
        tracing::debug!("the audit chain head moved under this writer; re-chaining");
    }
}

/// The `INSERT` of `Columns::insert`'s statements, after their `WITH moved AS (…)`.
macro_rules! insert_rows {
    () => {
        "
         INSERT INTO audit_event (seq, recorded_at, request_id, interaction, action, outcome,
             outcome_desc, http_status, caller_kind, caller_id, caller_name, role_code, org,
             purpose, break_glass_id, method, path, query, resource_type, resource_id,
             patients, returned, denied, relationship, client_ip, prev_hash, hash)
         SELECT seq, recorded_at, request_id, interaction, action, outcome, outcome_desc,
             http_status, caller_kind, caller_id, caller_name, role_code, org, purpose,
             break_glass_id, method, path, query, resource_type, resource_id,
             ARRAY(SELECT jsonb_array_elements_text(patients::jsonb)), returned, denied,
             relationship, client_ip, prev_hash, hash
         FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
             $6::int[], $7::text[], $8::int[], $9::text[], $10::text[], $11::text[],
             $12::text[], $13::text[], $14::text[], $15::uuid[], $16::text[], $17::text[],
             $18::text[], $19::text[], $20::text[], $21::text[], $22::int[], $23::bool[],
             $24::bool[], $25::text[], $26::bytea[], $27::bytea[])
           AS r(seq, recorded_at, request_id, interaction, action, outcome, outcome_desc,
             http_status, caller_kind, caller_id, caller_name, role_code, org, purpose,
             break_glass_id, method, path, query, resource_type, resource_id, patients,
             returned, denied, relationship, client_ip, prev_hash, hash)
         WHERE EXISTS (SELECT 1 FROM moved)
         ORDER BY seq"
    };
}

/// Chained rows as one array per column, for a single `INSERT … SELECT FROM unnest(…)`.
#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    recorded_at: Vec<OffsetDateTime>,
    request_id: Vec<Option<String>>,
    interaction: Vec<String>,
    action: Vec<String>,
    outcome: Vec<i32>,
    outcome_desc: Vec<Option<String>>,
    http_status: Vec<i32>,
    caller_kind: Vec<String>,
    caller_id: Vec<Option<String>>,
    caller_name: Vec<Option<String>>,
    role_code: Vec<Option<String>>,
    org: Vec<Option<String>>,
    purpose: Vec<String>,
    break_glass_id: Vec<Option<Uuid>>,
    method: Vec<String>,
    path: Vec<String>,
    query: Vec<Option<String>>,
    resource_type: Vec<Option<String>>,
    resource_id: Vec<Option<String>>,
    /// Each row's patient ids as a JSON array: PostgreSQL arrays of arrays must be rectangular.
    patients: Vec<String>,
    returned: Vec<i32>,
    denied: Vec<bool>,
    relationship: Vec<bool>,
    client_ip: Vec<Option<String>>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

impl Columns {
    /// Adds the row chained after `prev`; returns its hash.
    fn push(&mut self, seq: i64, prev: Vec<u8>, r: &AuditRecord) -> Vec<u8> {
        let recorded = micros(r.recorded_at.unwrap_or_else(OffsetDateTime::now_utc));
        let hash = chain_hash(&prev, seq, r, recorded);
        self.seq.push(seq);
        self.recorded_at.push(from_micros(recorded));
        self.request_id.push(r.request_id.clone());
        self.interaction.push(r.interaction.clone());
        self.action.push(r.action.clone());
        self.outcome.push(r.outcome);
        self.outcome_desc.push(r.outcome_desc.clone());
        self.http_status.push(r.http_status);
        self.caller_kind.push(r.caller_kind.clone());
        self.caller_id.push(r.caller_id.clone());
        self.caller_name.push(r.caller_name.clone());
        self.role_code.push(r.role_code.clone());
        self.org.push(r.org.clone());
        self.purpose.push(r.purpose.clone());
        self.break_glass_id.push(r.break_glass_id);
        self.method.push(r.method.clone());
        self.path.push(r.path.clone());
        self.query.push(r.query.clone());
        self.resource_type.push(r.resource_type.clone());
        self.resource_id.push(r.resource_id.clone());
        self.patients
            .push(serde_json::to_string(&r.patients).expect("strings serialise"));
        self.returned.push(r.returned);
        self.denied.push(r.denied);
        self.relationship.push(r.relationship);
        self.client_ip.push(r.client_ip.clone());
        self.prev_hash.push(prev);
        self.hash.push(hash.clone());
        hash
    }

    /// Inserts the rows if the head is still at `base`, moving it to (`last`, `last_hash`);
    /// returns the number of rows inserted (0: the head had moved, or the journal's shipped
    /// position had).
    async fn insert(
        self,
        conn: &mut sqlx::PgConnection,
        base: i64,
        last: i64,
        last_hash: &[u8],
        shipping: Option<&Shipping<'_>>,
    ) -> Result<u64, StoreError> {
        let statement = match shipping {
            None => concat!(
                "WITH moved AS (
                     UPDATE audit_chain_head SET seq = $28, hash = $29 WHERE id = 1 AND seq = $30
                     RETURNING 1
                 )",
                insert_rows!()
            ),
            // The head moves only if the journal's position is where this shipper left it,
            // and the position moves only if the head did: rows and position commit together.
            Some(_) => concat!(
                "WITH moved AS (
                     UPDATE audit_chain_head SET seq = $28, hash = $29 WHERE id = 1 AND seq = $30
                       AND EXISTS (SELECT 1 FROM audit_journal_shipped
                                   WHERE journal_id = $31 AND shipped_seq = $32)
                     RETURNING 1
                 ), shipped AS (
                     UPDATE audit_journal_shipped SET shipped_seq = $33, shipped_at = now()
                     WHERE journal_id = $31 AND EXISTS (SELECT 1 FROM moved)
                     RETURNING 1
                 )",
                insert_rows!()
            ),
        };
        let query = sqlx::query(statement)
            .bind(self.seq)
            .bind(self.recorded_at)
            .bind(self.request_id)
            .bind(self.interaction)
            .bind(self.action)
            .bind(self.outcome)
            .bind(self.outcome_desc)
            .bind(self.http_status)
            .bind(self.caller_kind)
            .bind(self.caller_id)
            .bind(self.caller_name)
            .bind(self.role_code)
            .bind(self.org)
            .bind(self.purpose)
            .bind(self.break_glass_id)
            .bind(self.method)
            .bind(self.path)
            .bind(self.query)
            .bind(self.resource_type)
            .bind(self.resource_id)
            .bind(self.patients)
            .bind(self.returned)
            .bind(self.denied)
            .bind(self.relationship)
            .bind(self.client_ip)
            .bind(self.prev_hash)
            .bind(self.hash)
            .bind(last)
            .bind(last_hash)
            .bind(base);
        let query = match shipping {
            None => query,
            Some(s) => query.bind(s.journal_id).bind(s.from).bind(s.to),
        };
        let done = query.execute(conn).await?;
        Ok(done.rows_affected())
    }
}
