//! The audit trail: one row per interaction (IHE BALP style), written and committed before the
//! response leaves, append-only (a trigger refuses UPDATE, DELETE and TRUNCATE) and hash-chained
//! so that even a superuser's edits are evident: `hash = sha256(prev_hash ‖ seq ‖ row)`.
//! Each append moves the single `audit_chain_head` row in the statement that inserts, so the
//! chain stays linear whatever the number of writers (processes); within a process one writer
//! task appends for every request (group commit). Only this module writes the audit tables.

pub mod event;
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

/// Groups in flight at once. The next group is chained on the previous group's last hash and
/// sent before that group has committed: its move of the chain head waits in PostgreSQL for the
/// previous group's lock, so it commits right after it, instead of a round trip, a statement and
/// a flush later. Two keep the chain head busy; more would only wait on the same lock.
const PIPELINE: usize = 2;

/// How often one group re-reads the chain head and re-chains its rows before giving up: the
/// head moves under a writer only when another process appends, or when the group sent before
/// it failed.
const RECHAIN_TRIES: usize = 16;

/// How long the writer keeps its own connections: the lookups pool's connection lifetime
/// (`store::LOOKUP_PLAN_LIFETIME` on main), so their plans follow the table's growth too.
const OWN_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// The SQLSTATE `audit_chain_moved()` raises (migration 0041).
const CHAIN_MOVED: &str = "SH001";

/// A request's row waiting for the next group commit.
struct Pending {
    record: AuditRecord,
    done: oneshot::Sender<Result<i64, String>>,
}

/// The audit trail over the system-of-record database.
///
/// Requests hand their row to one writer task per process, which appends whatever has queued
/// meanwhile in one statement (group commit): one chain-head lock and one WAL flush serve a
/// whole batch, instead of every request queueing for the chain head in turn. Each request
/// still waits for the commit of its own row before its answer leaves.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    queue: mpsc::UnboundedSender<Pending>,
}

impl Audit {
    /// Starts the writer task on the current tokio runtime.
    pub fn new(store: Store) -> Audit {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(store.clone(), pending));
        Audit { store, queue }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends the record to the chain and commits; returns its sequence number. The caller
    /// must not release data before this returns `Ok`.
    pub async fn record(&self, record: AuditRecord) -> Result<i64, StoreError> {
        let (done, committed) = oneshot::channel();
        self.queue
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
        if records.is_empty() {
            return Ok(None);
        }
        let mut conn = self.store.lookups_pool().acquire().await?;
        let refs: Vec<&AuditRecord> = records.iter().collect();
        let appended = append(&mut conn, None, &refs, None, None).await?;
        Ok(Some(appended.last))
    }
}

/// A connection of the writer's own, with the time it was opened.
type OwnConnection = (sqlx::PgConnection, std::time::Instant);

/// How far a group in flight has got, for the group sent after it.
#[derive(Clone, PartialEq)]
enum Flight {
    /// Not yet sent to PostgreSQL.
    Waiting,
    /// Its statement is on its way: the next group may follow.
    Sent,
    /// Committed, leaving the head here; or failed (`None`).
    Landed(Option<(i64, Vec<u8>)>),
}

/// What a group's task hands back to the writer.
struct Landed {
    /// The connection, unless it failed (its state is then unknown).
    conn: Option<OwnConnection>,
    /// The chain head the group left, if it was appended without re-chaining: the writer may
    /// chain its next group on it.
    head: Option<(i64, Vec<u8>)>,
}

/// The writer task: takes what has queued, chains it on the head the previous group will leave,
/// sends it while that group may still be in flight, and hands each group to a task that
/// answers its requests once it has committed.
///
/// Its connections are its own, out of the pool: a pooled one costs a round trip per group on
/// its way back (sqlx pings every connection it takes back), and would hold the request path's
/// lookup connections. A connection that failed is dropped and the next group opens another;
/// so is one older than `OWN_CONNECTION_LIFETIME`, like the lookups pool's own (its generic
/// plans are remade from the tables' current size).
async fn write_groups(store: Store, mut pending: mpsc::UnboundedReceiver<Pending>) {
    let mut group = Vec::with_capacity(GROUP_MAX);
    // The head the last group sent will leave, when known: the next group is chained on it.
    let mut tail: Option<(i64, Vec<u8>)> = None;
    let mut idle: Vec<OwnConnection> = Vec::new();
    let mut in_flight = std::collections::VecDeque::<tokio::task::JoinHandle<Landed>>::new();
    // The last group sent, as the next one sees it.
    let mut ahead: Option<tokio::sync::watch::Receiver<Flight>> = None;
    let mut open = true;
    loop {
        // A group chained on an unknown head must read it first, which only tells the truth
        // once nothing is in flight.
        let may_send =
            open && in_flight.len() < PIPELINE && (in_flight.is_empty() || tail.is_some());
        tokio::select! {
            biased;
            landed = async { in_flight.front_mut().expect("a group in flight").await },
                if !in_flight.is_empty() =>
            {
                in_flight.pop_front();
                match landed {
                    Ok(landed) => {
                        if let Some(conn) = landed.conn {
                            idle.push(conn);
                        }
                        match landed.head {
                            Some(head) if in_flight.is_empty() => tail = Some(head),
                            Some(_) => {}
                            // Re-chained or failed: what the later groups were chained on no
                            // longer holds (they re-chain themselves).
                            None => tail = None,
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "an audit group's task failed");
                        tail = None;
                    }
                }
            }
            received = pending.recv_many(&mut group, GROUP_MAX), if may_send => {
                if received == 0 {
                    open = false;
                    continue;
                }
                let records: Vec<AuditRecord> = group.iter().map(|p| p.record.clone()).collect();
                let chained = tail.take().map(|base| chain(base, records.iter()));
                tail = chained.as_ref().map(|c| (c.last, c.last_hash.clone()));
                idle.retain(|(_, opened)| opened.elapsed() < OWN_CONNECTION_LIFETIME);
                let (state, watch) = tokio::sync::watch::channel(Flight::Waiting);
                let flight = GroupFlight {
                    store: store.clone(),
                    conn: idle.pop(),
                    group: std::mem::replace(&mut group, Vec::with_capacity(GROUP_MAX)),
                    records,
                    chained,
                    ahead: if in_flight.is_empty() { None } else { ahead.take() },
                    state,
                };
                ahead = Some(watch);
                in_flight.push_back(tokio::spawn(flight.fly()));
            }
            else => break,
        }
    }
}

/// One group on its way, with the group sent before it.
struct GroupFlight {
    store: Store,
    conn: Option<OwnConnection>,
    group: Vec<Pending>,
    records: Vec<AuditRecord>,
    chained: Option<Chain>,
    ahead: Option<tokio::sync::watch::Receiver<Flight>>,
    state: tokio::sync::watch::Sender<Flight>,
}

impl GroupFlight {
    /// Appends the group and answers its requests.
    async fn fly(mut self) -> Landed {
        let conn = match self.conn.take() {
            Some(conn) => Ok(conn),
            None => self
                .store
                .lookups_pool()
                .acquire()
                .await
                .map(|c| (c.detach(), std::time::Instant::now()))
                .map_err(StoreError::from),
        };
        // Sent before the group ahead, it would find the head not yet moved and re-chain.
        if let Some(ahead) = &mut self.ahead {
            let _ = ahead.wait_for(|f| *f != Flight::Waiting).await;
        }
        let started = std::time::Instant::now();
        let refs: Vec<&AuditRecord> = self.records.iter().collect();
        let chained = self.chained.take();
        let (result, conn) = match conn {
            Ok((mut conn, opened)) => {
                let appended = append(
                    &mut conn,
                    chained,
                    &refs,
                    Some(&self.state),
                    self.ahead.as_mut(),
                )
                .await;
                // After a failure the commit may or may not have happened: the connection goes.
                let conn = appended.is_ok().then_some((conn, opened));
                (appended, conn)
            }
            Err(e) => (Err(e), None),
        };
        self.state.send_replace(Flight::Landed(
            result.as_ref().ok().map(|a| (a.last, a.last_hash.clone())),
        ));
        crate::metrics::AUDIT_GROUP_SECONDS.observe(started.elapsed().as_secs_f64());
        crate::metrics::AUDIT_GROUP_SIZE.observe(self.group.len() as f64);
        let first = match &result {
            Ok(appended) => Ok(appended.last - self.group.len() as i64 + 1),
            Err(e) => Err(e.to_string()),
        };
        for (i, p) in self.group.into_iter().enumerate() {
            // A requester that went away no longer needs its answer; its row is committed.
            let _ = p.done.send(first.clone().map(|seq| seq + i as i64));
        }
        Landed {
            conn,
            head: result
                .ok()
                .filter(|a| !a.rechained)
                .map(|a| (a.last, a.last_hash)),
        }
    }
}

/// Rows chained after a head, ready to insert.
struct Chain {
    base: i64,
    base_hash: Vec<u8>,
    rows: Columns,
    last: i64,
    last_hash: Vec<u8>,
}

fn chain<'a>(
    (base, base_hash): (i64, Vec<u8>),
    records: impl Iterator<Item = &'a AuditRecord>,
) -> Chain {
    let mut rows = Columns::default();
    let (mut seq, mut prev) = (base, base_hash.clone());
    for record in records {
        seq += 1;
        prev = rows.push(seq, prev, record);
    }
    Chain {
        base,
        base_hash,
        rows,
        last: seq,
        last_hash: prev,
    }
}

/// Where an append left the chain.
struct Appended {
    last: i64,
    last_hash: Vec<u8>,
    /// Whether the rows had to be chained again on another head than the one expected.
    rechained: bool,
}

/// Appends `records` to the chain in one statement, committed on its own; `chained` holds them
/// already chained on the head the caller expects, else the head is read first.
///
/// The statement moves the chain head only if it is still where the chain starts, and inserts
/// the rows only if it did: a head moved by another writer (a second shcr process, or a group of
/// this one that failed or overtook it) makes it fail with `CHAIN_MOVED`, and the rows are
/// chained again: on the head the group `ahead` left once it has landed, else on the head as
/// read now. Writers queue on the head row's lock, and the condition is tested on the row as it
/// is after the wait, so the chain stays linear. `sent` learns when the statement is on its way.
async fn append(
    conn: &mut sqlx::PgConnection,
    mut chained: Option<Chain>,
    records: &[&AuditRecord],
    sent: Option<&tokio::sync::watch::Sender<Flight>>,
    mut ahead: Option<&mut tokio::sync::watch::Receiver<Flight>>,
) -> Result<Appended, StoreError> {
    let n = records.len() as u64;
    let mut rechained = false;
    for _ in 0..RECHAIN_TRIES {
        let c = match chained.take() {
            Some(c) => c,
            None => {
                let head = sqlx::query_as("SELECT seq, hash FROM audit_chain_head WHERE id = 1")
                    .fetch_one(&mut *conn)
                    .await?;
                chain(head, records.iter().copied())
            }
        };
        let inserted = {
            let insert = c
                .rows
                .insert(&mut *conn, (c.base, &c.base_hash), c.last, &c.last_hash);
            let mut insert = std::pin::pin!(insert);
            let mut first_poll = true;
            // The first poll writes the statement to the socket.
            std::future::poll_fn(|cx| {
                let polled = insert.as_mut().poll(cx);
                if std::mem::take(&mut first_poll)
                    && let Some(sent) = sent
                {
                    sent.send_if_modified(|f| {
                        let waiting = *f == Flight::Waiting;
                        if waiting {
                            *f = Flight::Sent;
                        }
                        waiting
                    });
                }
                polled
            })
            .await
        };
        match inserted {
            Ok(inserted) if inserted == n => {
                crate::metrics::AUDIT_WRITES.inc_by(n);
                return Ok(Appended {
                    last: c.last,
                    last_hash: c.last_hash,
                    rechained,
                });
            }
            Ok(inserted) => {
                return Err(StoreError::Unavailable(format!(
                    "audit append wrote {inserted} of {n} rows (is the chain head row missing?)"
                )));
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(CHAIN_MOVED) => {
                tracing::debug!("the audit chain head moved under this writer; re-chaining");
                rechained = true;
                // Once only: after it the head is whatever the database says.
                if let Some(ahead) = ahead.take()
                    && let Ok(landed) = ahead.wait_for(|f| matches!(f, Flight::Landed(_))).await
                    && let Flight::Landed(Some(head)) = landed.clone()
                    && head != (c.base, c.base_hash.clone())
                {
                    chained = Some(chain(head, records.iter().copied()));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Unavailable(format!(
        "the audit chain head kept moving; {n} rows not appended after {RECHAIN_TRIES} tries"
    )))
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
    patients: Vec<Vec<String>>,
    returned: Vec<i32>,
    denied: Vec<bool>,
    relationship: Vec<bool>,
    client_ip: Vec<Option<String>>,
    prev_hash: Vec<Vec<u8>>,
    hash: Vec<Vec<u8>>,
}

/// Moves the chain head from (`$30`, `$31`) to (`$28`, `$29`), or fails with `CHAIN_MOVED`; the
/// rows are inserted only where it moved. Shared by both insert statements. The hash is compared
/// as well as the number: groups re-chained after overtaking each other can leave the head at
/// the number a later group expects but with other rows, hence another hash.
macro_rules! move_head {
    () => {
        "WITH moved AS (
             UPDATE audit_chain_head
             SET seq = CASE WHEN seq = $30 AND hash = $31 THEN $28 ELSE audit_chain_moved() END,
                 hash = $29
             WHERE id = 1
             RETURNING 1
         )
         INSERT INTO audit_event (seq, recorded_at, request_id, interaction, action, outcome,
             outcome_desc, http_status, caller_kind, caller_id, caller_name, role_code, org,
             purpose, break_glass_id, method, path, query, resource_type, resource_id,
             patients, returned, denied, relationship, client_ip, prev_hash, hash)"
    };
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
        self.patients.push(r.patients.clone());
        self.returned.push(r.returned);
        self.denied.push(r.denied);
        self.relationship.push(r.relationship);
        self.client_ip.push(r.client_ip.clone());
        self.prev_hash.push(prev);
        self.hash.push(hash.clone());
        hash
    }

    /// Inserts the rows if the head is still at `base`, moving it to (`last`, `last_hash`);
    /// returns the number of rows inserted. A single row (the usual group below saturation)
    /// goes as plain parameters: no arrays to decode and unnest.
    async fn insert(
        mut self,
        conn: &mut sqlx::PgConnection,
        (base, base_hash): (i64, &[u8]),
        last: i64,
        last_hash: &[u8],
    ) -> Result<u64, sqlx::Error> {
        if self.seq.len() == 1 {
            return self
                .insert_one(conn, (base, base_hash), last, last_hash)
                .await;
        }
        let patients: Vec<String> = self
            .patients
            .iter()
            .map(|p| serde_json::to_string(p).expect("strings serialise"))
            .collect();
        let done = sqlx::query(concat!(
            move_head!(),
            "
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
        ))
        .bind(std::mem::take(&mut self.seq))
        .bind(std::mem::take(&mut self.recorded_at))
        .bind(std::mem::take(&mut self.request_id))
        .bind(std::mem::take(&mut self.interaction))
        .bind(std::mem::take(&mut self.action))
        .bind(std::mem::take(&mut self.outcome))
        .bind(std::mem::take(&mut self.outcome_desc))
        .bind(std::mem::take(&mut self.http_status))
        .bind(std::mem::take(&mut self.caller_kind))
        .bind(std::mem::take(&mut self.caller_id))
        .bind(std::mem::take(&mut self.caller_name))
        .bind(std::mem::take(&mut self.role_code))
        .bind(std::mem::take(&mut self.org))
        .bind(std::mem::take(&mut self.purpose))
        .bind(std::mem::take(&mut self.break_glass_id))
        .bind(std::mem::take(&mut self.method))
        .bind(std::mem::take(&mut self.path))
        .bind(std::mem::take(&mut self.query))
        .bind(std::mem::take(&mut self.resource_type))
        .bind(std::mem::take(&mut self.resource_id))
        .bind(patients)
        .bind(std::mem::take(&mut self.returned))
        .bind(std::mem::take(&mut self.denied))
        .bind(std::mem::take(&mut self.relationship))
        .bind(std::mem::take(&mut self.client_ip))
        .bind(std::mem::take(&mut self.prev_hash))
        .bind(std::mem::take(&mut self.hash))
        .bind(last)
        .bind(last_hash)
        .bind(base)
        .bind(base_hash)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }

    async fn insert_one(
        mut self,
        conn: &mut sqlx::PgConnection,
        (base, base_hash): (i64, &[u8]),
        last: i64,
        last_hash: &[u8],
    ) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(concat!(
            move_head!(),
            "
             SELECT $1::bigint, $2::timestamptz, $3::text, $4::text, $5::text, $6::int,
                 $7::text, $8::int, $9::text, $10::text, $11::text, $12::text, $13::text,
                 $14::text, $15::uuid, $16::text, $17::text, $18::text, $19::text, $20::text,
                 $21::text[], $22::int, $23::bool, $24::bool, $25::text, $26::bytea, $27::bytea
             WHERE EXISTS (SELECT 1 FROM moved)"
        ))
        .bind(self.seq.pop())
        .bind(self.recorded_at.pop())
        .bind(self.request_id.pop().flatten())
        .bind(self.interaction.pop())
        .bind(self.action.pop())
        .bind(self.outcome.pop())
        .bind(self.outcome_desc.pop().flatten())
        .bind(self.http_status.pop())
        .bind(self.caller_kind.pop())
        .bind(self.caller_id.pop().flatten())
        .bind(self.caller_name.pop().flatten())
        .bind(self.role_code.pop().flatten())
        .bind(self.org.pop().flatten())
        .bind(self.purpose.pop())
        .bind(self.break_glass_id.pop().flatten())
        .bind(self.method.pop())
        .bind(self.path.pop())
        .bind(self.query.pop().flatten())
        .bind(self.resource_type.pop().flatten())
        .bind(self.resource_id.pop().flatten())
        .bind(self.patients.pop())
        .bind(self.returned.pop())
        .bind(self.denied.pop())
        .bind(self.relationship.pop())
        .bind(self.client_ip.pop().flatten())
        .bind(self.prev_hash.pop())
        .bind(self.hash.pop())
        .bind(last)
        .bind(last_hash)
        .bind(base)
        .bind(base_hash)
        .execute(conn)
        .await?;
        Ok(done.rows_affected())
    }
}
