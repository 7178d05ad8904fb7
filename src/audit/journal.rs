//! The local audit journal (`[audit] durability = "journal"`): a request's audit row is durable
//! once it is in an append-only file of this process's own and `fdatasync`ed, before the answer
//! leaves; a background task ships the journal into the PostgreSQL chain (`audit_event`), so
//! the chain, `shcr audit verify` and the IG views stay as they are, behind by the shipping
//! delay.
//!
//! - **Lanes.** `journal_dir` holds `lane-0`, `lane-1`, … (`audit.journal_lanes`), each a
//!   journal as below with its own writer thread and shipper; a request goes to the least busy
//!   lane (`Journals`, `Writer::record`), and the chain takes each lane's rows as it takes
//!   another replica's.
//! - **Layout.** Each lane holds `LOCK` (an exclusive `flock` for the process's lifetime: a
//!   second process on the same directory is refused), `journal-id` (a random id created once;
//!   the database keeps each journal's shipped position under it, so replicas sharing a
//!   database never mix theirs) and segments `<first sequence number, 20 digits>.journal`.
//! - **Entries.** `u32` payload length, `u64` journal sequence number, the first 8 bytes of
//!   `sha256(length ‖ sequence ‖ payload)`, then the payload (the row as JSON, its time fixed
//!   when it was journalled). A crash in the middle of a group's write leaves a torn tail: found
//!   at start-up by its length or checksum and cut off; nothing in it had been acknowledged,
//!   since acknowledgement waits for the `fdatasync` after the whole group's write.
//! - **Group fsync.** One writer thread takes whatever requests queued meanwhile, writes them in
//!   one `write` and one `fdatasync`, then answers each. A write that fails is cut off again
//!   and its group fails (503); an `fdatasync` that fails leaves the file's state unknown (the
//!   kernel may have dropped the dirty pages), so the journal refuses every later row until the
//!   process restarts and re-reads the file, as PostgreSQL does.
//! - **Shipping, exactly once.** The shipper reads entries after its position and appends them
//!   to the chain in the statement that moves its position in `audit_journal_shipped` (one
//!   commit for both), so a crash anywhere neither loses nor duplicates a row. Segments entirely
//!   before the position are deleted; segments are rotated by size. Shipments do not wait for
//!   PostgreSQL's WAL flush, except the one after which segments are deleted
//!   (`set_synchronous_commit`).
//! - **Start-up.** The directory is scanned and its tail repaired before the server listens;
//!   the backlog is shipped in the background while the server already serves (new rows queue
//!   behind it, in journal order).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{AuditRecord, Shipping, append};
use crate::store::{Store, StoreError};

const HEADER: usize = 4 + 8 + 8;
/// Larger "entries" are damage, not rows (a row is well under a kilobyte).
const MAX_ENTRY: usize = 4 * 1024 * 1024;
/// Most rows one group fsync or one shipping statement takes.
const GROUP_MAX: usize = 512;
const SHIP_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long the shipper lets rows gather before a statement that would take fewer than
/// `GROUP_MAX`: a statement costs PostgreSQL about as much for 20 rows as for 1 (its commit and
/// WAL flush dominate), and nobody waits for shipping but the IG views. At 1,000 audited
/// requests/s, 25 ms rather than 5 ms took PostgreSQL's share of a request from 0.39 to 0.33 ms
/// (BENCHMARKS.md, twelfth session).
const SHIP_GATHER: Duration = Duration::from_millis(25);
const SUFFIX: &str = ".journal";
/// How far ahead of its entries a segment is filled with zeros. An `fdatasync` after writing
/// into space the file already had flushes the data alone; after an append it must also commit
/// the file's new size through the file system's journal, which made each group's flush ~1.5×
/// slower on average and its tail an order of magnitude slower (as PostgreSQL does with its WAL
/// segments). Zeros, not `fallocate`: space allocated but never written needs the same metadata
/// commit on its first write.
const PREALLOCATE: u64 = 1024 * 1024;
/// How much the writer thread fills at a time, between groups. Filling flushes too, and rows
/// arriving meanwhile wait for it: a mebibyte in one flush held them for up to 39 ms on a busy
/// disk (BENCHMARKS.md, thirteenth session); 64 KiB flushes about as fast as a 4 KiB append
/// (0.55 against 1.34 ms for the mebibyte, on a quiet disk).
const FILL_STEP: u64 = 64 * 1024;

/// A row as the journal keeps it: the record with its time fixed (microseconds, what the chain
/// keeps of it).
#[derive(Serialize, Deserialize)]
struct Entry {
    t: i64,
    request_id: Option<String>,
    interaction: String,
    action: String,
    outcome: i32,
    outcome_desc: Option<String>,
    http_status: i32,
    caller_kind: String,
    caller_id: Option<String>,
    caller_name: Option<String>,
    role_code: Option<String>,
    org: Option<String>,
    purpose: String,
    break_glass_id: Option<String>,
    method: String,
    path: String,
    query: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    patients: Vec<String>,
    returned: i32,
    denied: bool,
    relationship: bool,
    client_ip: Option<String>,
}

impl Entry {
    fn new(r: AuditRecord) -> Entry {
        Entry {
            t: super::micros(r.recorded_at.unwrap_or_else(OffsetDateTime::now_utc)),
            request_id: r.request_id,
            interaction: r.interaction,
            action: r.action,
            outcome: r.outcome,
            outcome_desc: r.outcome_desc,
            http_status: r.http_status,
            caller_kind: r.caller_kind,
            caller_id: r.caller_id,
            caller_name: r.caller_name,
            role_code: r.role_code,
            org: r.org,
            purpose: r.purpose,
            break_glass_id: r.break_glass_id.map(|u| u.to_string()),
            method: r.method,
            path: r.path,
            query: r.query,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            patients: r.patients,
            returned: r.returned,
            denied: r.denied,
            relationship: r.relationship,
            client_ip: r.client_ip,
        }
    }

    fn record(self) -> anyhow::Result<AuditRecord> {
        Ok(AuditRecord {
            recorded_at: Some(super::from_micros(self.t)),
            request_id: self.request_id,
            interaction: self.interaction,
            action: self.action,
            outcome: self.outcome,
            outcome_desc: self.outcome_desc,
            http_status: self.http_status,
            caller_kind: self.caller_kind,
            caller_id: self.caller_id,
            caller_name: self.caller_name,
            role_code: self.role_code,
            org: self.org,
            purpose: self.purpose,
            break_glass_id: self
                .break_glass_id
                .map(|u| u.parse())
                .transpose()
                .context("break-glass id")?,
            method: self.method,
            path: self.path,
            query: self.query,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            patients: self.patients,
            returned: self.returned,
            denied: self.denied,
            relationship: self.relationship,
            client_ip: self.client_ip,
        })
    }
}

fn checksum(len: u32, seq: i64, payload: &[u8]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(len.to_le_bytes());
    h.update(seq.to_le_bytes());
    h.update(payload);
    h.finalize()[..8].try_into().expect("8 bytes")
}

/// Appends one framed entry to `buf`.
fn encode(buf: &mut Vec<u8>, seq: i64, payload: &[u8]) {
    let len = payload.len() as u32;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&checksum(len, seq, payload));
    buf.extend_from_slice(payload);
}

/// The entry at the start of `bytes`, if whole and intact: (sequence, payload, its size).
fn decode(bytes: &[u8]) -> Option<(i64, &[u8], usize)> {
    if bytes.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(bytes[0..4].try_into().ok()?);
    let seq = i64::from_le_bytes(bytes[4..12].try_into().ok()?);
    let size = HEADER + len as usize;
    if len == 0 || len as usize > MAX_ENTRY || bytes.len() < size {
        return None;
    }
    let payload = &bytes[HEADER..size];
    (bytes[12..20] == checksum(len, seq, payload)).then_some((seq, payload, size))
}

fn segment_path(dir: &Path, start: i64) -> PathBuf {
    dir.join(format!("{start:020}{SUFFIX}"))
}

/// Segments of the directory by first sequence number.
fn list_segments(dir: &Path) -> anyhow::Result<Vec<i64>> {
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(start) = name.strip_suffix(SUFFIX) {
            starts.push(
                start
                    .parse()
                    .with_context(|| format!("unexpected file {name} in the audit journal"))?,
            );
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes the directory's lock for as long as the returned file stays open.
fn lock(dir: &Path) -> anyhow::Result<File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            anyhow::bail!(
                "the audit journal {} is in use by another process (lock file {}): each \
                 process needs a journal directory of its own",
                dir.display(),
                path.display()
            );
        }
        return Err(e).with_context(|| format!("locking {}", path.display()));
    }
    Ok(file)
}

/// The journal's id, created on first use.
fn journal_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("journal-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = uuid::Uuid::new_v4().to_string();
    let temp = dir.join("journal-id.new");
    let mut f = File::create(&temp)?;
    f.write_all(id.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&temp, &path)?;
    sync_dir(dir)?;
    Ok(id)
}

/// What start-up found in the directory.
struct Recovered {
    /// Segment starts and lengths (bytes).
    segments: BTreeMap<i64, u64>,
    /// The sequence number the next entry gets.
    next_seq: i64,
}

/// Checks every segment's entries and cuts off a torn tail of the last one.
fn recover(dir: &Path) -> anyhow::Result<Recovered> {
    let starts = list_segments(dir)?;
    let mut segments = BTreeMap::new();
    let mut next_seq: Option<i64> = None;
    for (i, &start) in starts.iter().enumerate() {
        let last = i + 1 == starts.len();
        if let Some(expected) = next_seq
            && start != expected
        {
            anyhow::bail!(
                "audit journal {}: segment {start} follows a segment ending before {expected}; \
                 refusing to start rather than lose or reorder rows",
                dir.display()
            );
        }
        let path = segment_path(dir, start);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let (mut offset, mut seq) = (0usize, start);
        while offset < bytes.len() {
            match decode(&bytes[offset..]) {
                Some((s, _, size)) if s == seq => {
                    offset += size;
                    seq += 1;
                }
                _ => break,
            }
        }
        // Zeros after the entries are space filled ahead of them (`PREALLOCATE`), not damage.
        if bytes[offset..].iter().any(|&b| b != 0) {
            if !last {
                anyhow::bail!(
                    "audit journal segment {} is damaged at byte {offset} (not at the journal's \
                     end): refusing to start rather than lose the rows after it",
                    path.display()
                );
            }
            // Written but never acknowledged: the crash came before the group's fdatasync.
            tracing::warn!(
                segment = %path.display(),
                offset,
                dropped_bytes = bytes.len() - offset,
                "audit journal: dropping a torn last entry (never acknowledged)"
            );
            let f = OpenOptions::new().write(true).open(&path)?;
            f.set_len(offset as u64)?;
            f.sync_all()?;
        }
        segments.insert(start, offset as u64);
        next_seq = Some(seq);
    }
    Ok(Recovered {
        segments,
        next_seq: next_seq.unwrap_or(1),
    })
}

/// What the writer and the shipper share.
struct Shared {
    dir: PathBuf,
    id: String,
    segment_bytes: u64,
    progress: Mutex<Progress>,
    /// The writer made more entries durable, or a stop was asked for.
    wake: Notify,
    /// Held for the journal's lifetime: the directory's lock.
    _lock: File,
}

struct Progress {
    /// The lane's name (its directory's), for the metrics.
    lane: String,
    /// The last durable (fsynced) sequence number, and where it ends.
    durable_seq: i64,
    durable_segment: i64,
    durable_len: u64,
    /// Lengths of the segments not yet deleted.
    segments: BTreeMap<i64, u64>,
    /// The last sequence number in the chain, and where the next entry starts.
    shipped_seq: i64,
    shipped_segment: i64,
    shipped_offset: u64,
    /// Since when there are durable rows not yet shipped.
    backlog_since: Option<Instant>,
    last_shipped_at: Instant,
    last_error: Option<String>,
    /// The writer's fatal error, if any: every later row is refused.
    poisoned: Option<String>,
    stopping: bool,
}

impl Progress {
    fn unshipped_bytes(&self) -> u64 {
        self.segments
            .range(self.shipped_segment..)
            .map(|(_, len)| len)
            .sum::<u64>()
            .saturating_sub(self.shipped_offset)
    }

    fn publish(&self) {
        use crate::metrics::{
            AUDIT_JOURNAL_SHIP_LAG, AUDIT_JOURNAL_UNSHIPPED_BYTES, AUDIT_JOURNAL_UNSHIPPED_ROWS,
        };
        let lane = [self.lane.as_str()];
        AUDIT_JOURNAL_UNSHIPPED_ROWS
            .with_label_values(&lane)
            .set(self.durable_seq - self.shipped_seq);
        AUDIT_JOURNAL_UNSHIPPED_BYTES
            .with_label_values(&lane)
            .set(self.unshipped_bytes() as i64);
        AUDIT_JOURNAL_SHIP_LAG.with_label_values(&lane).set(
            self.backlog_since
                .map_or(0.0, |since| since.elapsed().as_secs_f64()),
        );
    }
}

/// An open journal (one lane): its writer thread and its shipper task.
#[derive(Clone)]
pub struct Journal {
    shared: Arc<Shared>,
    queue: mpsc::UnboundedSender<Pending>,
    /// Rows queued or being written: a request goes to the least loaded lane.
    load: Arc<AtomicUsize>,
}

/// A request's row waiting for the next group fsync.
struct Pending {
    payload: Vec<u8>,
    done: oneshot::Sender<Result<i64, String>>,
}

/// The handle requests record through: the lanes' queues.
#[derive(Clone)]
pub struct Writer {
    lanes: Vec<(mpsc::UnboundedSender<Pending>, Arc<AtomicUsize>)>,
}

impl Writer {
    /// Returns once the row is in a lane's journal and fsynced: its sequence number there.
    ///
    /// The row goes to the lane with the fewest rows queued or being written, so a request
    /// arriving while one lane flushes starts its own flush on an idle one instead of waiting
    /// for the flush in flight (this disk runs flushes of different files concurrently).
    pub async fn record(&self, record: AuditRecord) -> Result<i64, StoreError> {
        let payload = serde_json::to_vec(&Entry::new(record)).expect("serialisable");
        let (done, synced) = oneshot::channel();
        let stopped = || StoreError::Unavailable("the audit journal writer has stopped".into());
        let (queue, load) = self
            .lanes
            .iter()
            .min_by_key(|(_, load)| load.load(Ordering::Relaxed))
            .ok_or_else(stopped)?;
        load.fetch_add(1, Ordering::Relaxed);
        queue
            .send(Pending { payload, done })
            .map_err(|_| stopped())?;
        synced
            .await
            .map_err(|_| stopped())?
            .map_err(StoreError::Unavailable)
    }
}

/// The journal's state for `/readyz` and the tests.
#[derive(Debug, Clone)]
pub struct Status {
    pub id: String,
    pub durable_seq: i64,
    pub shipped_seq: i64,
    pub unshipped_bytes: u64,
    pub backlog_seconds: f64,
    pub since_last_ship_seconds: f64,
    pub last_error: Option<String>,
    pub poisoned: Option<String>,
}

impl Journal {
    /// Opens (creating it if needed) and locks the directory, repairs a torn tail, registers
    /// the journal in the database and starts its writer thread and shipper task (on the
    /// current tokio runtime). Fails if another process holds the directory.
    pub async fn open(
        dir: &Path,
        segment_bytes: u64,
        store: Store,
        head: SharedHead,
    ) -> anyhow::Result<Journal> {
        let dir = dir.to_path_buf();
        let (lock, id, recovered) = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || -> anyhow::Result<_> {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating the audit journal {}", dir.display()))?;
                let lock = lock(&dir)?;
                let id = journal_id(&dir)?;
                let recovered = recover(&dir)?;
                Ok((lock, id, recovered))
            }
        })
        .await??;
        sqlx::query(
            "INSERT INTO audit_journal_shipped (journal_id, shipped_seq) VALUES ($1, 0)
             ON CONFLICT (journal_id) DO NOTHING",
        )
        .bind(&id)
        .execute(store.pool())
        .await
        .context("registering the audit journal")?;
        let shipped: i64 = sqlx::query_scalar(
            "SELECT shipped_seq FROM audit_journal_shipped WHERE journal_id = $1",
        )
        .bind(&id)
        .fetch_one(store.pool())
        .await?;
        let durable_seq = recovered.next_seq - 1;
        if shipped > durable_seq {
            anyhow::bail!(
                "audit journal {} ({id}): the database has its rows up to {shipped} but the \
                 journal ends at {durable_seq}; was the directory restored from a backup?",
                dir.display()
            );
        }
        let mut segments = recovered.segments;
        // The writer's segment: the last one, or a first one.
        let (current, current_len) = match segments.last_key_value() {
            Some((&start, &len)) => (start, len),
            None => {
                let start = recovered.next_seq;
                File::create(segment_path(&dir, start))?.sync_all()?;
                sync_dir(&dir)?;
                segments.insert(start, 0);
                (start, 0)
            }
        };
        let (shipped_segment, shipped_offset) = tokio::task::spawn_blocking({
            let (dir, segments) = (dir.clone(), segments.clone());
            move || position_of(&dir, &segments, shipped + 1)
        })
        .await??;
        let unshipped = durable_seq - shipped;
        if unshipped > 0 {
            tracing::info!(
                journal = %id,
                rows = unshipped,
                "audit journal: shipping rows left by the previous run while serving"
            );
        }
        let progress = Progress {
            lane: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            durable_seq,
            durable_segment: current,
            durable_len: current_len,
            segments,
            shipped_seq: shipped,
            shipped_segment,
            shipped_offset,
            backlog_since: (unshipped > 0).then(Instant::now),
            last_shipped_at: Instant::now(),
            last_error: None,
            poisoned: None,
            stopping: false,
        };
        progress.publish();
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            id,
            segment_bytes,
            progress: Mutex::new(progress),
            wake: Notify::new(),
            _lock: lock,
        });
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(&dir, current))?;
        let allocated = file.metadata()?.len();
        let (queue, pending) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        let segment = Segment {
            start: current,
            file,
            len: current_len,
            allocated,
        };
        let (writer_shared, writer_load) = (shared.clone(), load.clone());
        std::thread::Builder::new()
            .name("audit-journal".into())
            .spawn(move || {
                write_groups(
                    writer_shared,
                    segment,
                    recovered.next_seq,
                    pending,
                    writer_load,
                )
            })?;
        tokio::spawn(ship(shared.clone(), store, head));
        Ok(Journal {
            shared,
            queue,
            load,
        })
    }

    /// A writer over this lane alone.
    pub fn writer(&self) -> Writer {
        Writer {
            lanes: vec![(self.queue.clone(), self.load.clone())],
        }
    }

    pub fn id(&self) -> &str {
        &self.shared.id
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn status(&self) -> Status {
        let p = self.shared.progress.lock().expect("journal progress");
        Status {
            id: self.shared.id.clone(),
            durable_seq: p.durable_seq,
            shipped_seq: p.shipped_seq,
            unshipped_bytes: p.unshipped_bytes(),
            backlog_seconds: p
                .backlog_since
                .map_or(0.0, |since| since.elapsed().as_secs_f64()),
            since_last_ship_seconds: p.last_shipped_at.elapsed().as_secs_f64(),
            last_error: p.last_error.clone(),
            poisoned: p.poisoned.clone(),
        }
    }

    /// `/readyz`: fails when the journal refuses rows, or when rows have waited longer than
    /// `stuck` with no shipping progress meanwhile.
    pub fn check(&self, stuck: Duration) -> Result<(), String> {
        let s = self.status();
        if let Some(why) = s.poisoned {
            return Err(format!(
                "the audit journal refuses rows after a failed write ({why}); restart the process"
            ));
        }
        let unshipped = s.durable_seq - s.shipped_seq;
        if unshipped > 0
            && s.backlog_seconds > stuck.as_secs_f64()
            && s.since_last_ship_seconds > stuck.as_secs_f64()
        {
            return Err(format!(
                "the audit journal's shipper is stuck: {unshipped} rows ({} bytes) unshipped, \
                 nothing shipped for {:.0} s{}",
                s.unshipped_bytes,
                s.since_last_ship_seconds,
                s.last_error
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Waits until everything durable now is shipped, or `timeout` passes; then stops the
    /// shipper. Returns whether all was shipped. Rows not shipped stay in the journal for the
    /// next start.
    pub async fn drain(&self, timeout: Duration) -> bool {
        let target = self.status().durable_seq;
        let deadline = tokio::time::Instant::now() + timeout;
        let done = loop {
            if self.status().shipped_seq >= target {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        self.shared.progress.lock().expect("progress").stopping = true;
        self.shared.wake.notify_one();
        done
    }
}

/// The chain head as this process's shippers last left it, shared by the lanes' shippers: they
/// append one at a time (PostgreSQL's head row lock would serialise them anyway), each starting
/// from where the other left the head instead of failing on it and re-reading it.
pub type SharedHead = Arc<tokio::sync::Mutex<Option<(i64, Vec<u8>)>>>;

/// A process's journal: `lanes` independent journals (`lane-0`, `lane-1`, … in the
/// directory), each with its own lock, id, writer thread, shipper and shipped position. The
/// chain takes each lane's rows as it would another replica's. Lanes found beyond `lanes` (the
/// setting was lowered) are opened to ship what they hold, but get no new rows.
#[derive(Clone)]
pub struct Journals {
    lanes: Vec<Journal>,
    routed: usize,
}

impl Journals {
    pub async fn open(
        dir: &Path,
        lanes: usize,
        segment_bytes: u64,
        store: Store,
    ) -> anyhow::Result<Journals> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the audit journal {}", dir.display()))?;
        let mut existing = 0;
        for entry in std::fs::read_dir(dir)? {
            if let Some(i) = entry?
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("lane-"))
                .and_then(|i| i.parse::<usize>().ok())
            {
                existing = existing.max(i + 1);
            }
        }
        let mut opened = Vec::new();
        let head = SharedHead::default();
        for i in 0..lanes.max(existing) {
            opened.push(
                Journal::open(
                    &dir.join(format!("lane-{i}")),
                    segment_bytes,
                    store.clone(),
                    head.clone(),
                )
                .await?,
            );
        }
        Ok(Journals {
            lanes: opened,
            routed: lanes,
        })
    }

    pub fn writer(&self) -> Writer {
        Writer {
            lanes: self.lanes[..self.routed]
                .iter()
                .map(|j| (j.queue.clone(), j.load.clone()))
                .collect(),
        }
    }

    pub fn lanes(&self) -> &[Journal] {
        &self.lanes
    }

    /// `/readyz`: every lane's check.
    pub fn check(&self, stuck: Duration) -> Result<(), String> {
        let failed: Vec<String> = self
            .lanes
            .iter()
            .filter_map(|j| j.check(stuck).err())
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    /// Every lane's `Journal::drain`, at the same time.
    pub async fn drain(&self, timeout: Duration) -> bool {
        futures_util::future::join_all(self.lanes.iter().map(|j| j.drain(timeout)))
            .await
            .into_iter()
            .all(|done| done)
    }
}

/// Where the entry `seq` starts: (segment, byte offset); the end of the last segment if it is
/// the next entry to be written.
fn position_of(dir: &Path, segments: &BTreeMap<i64, u64>, seq: i64) -> anyhow::Result<(i64, u64)> {
    let Some((&start, &len)) = segments.range(..=seq).next_back() else {
        anyhow::bail!(
            "audit journal {}: no segment holds row {seq}, the next to ship",
            dir.display()
        );
    };
    let mut file = File::open(segment_path(dir, start))?;
    let (mut offset, mut at) = (0u64, start);
    let mut header = [0u8; HEADER];
    while at < seq && offset < len {
        file.read_exact(&mut header)?;
        let size = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as u64;
        offset += HEADER as u64 + size;
        file.seek(SeekFrom::Start(offset))?;
        at += 1;
    }
    if at != seq {
        anyhow::bail!(
            "audit journal {}: row {seq}, the next to ship, is not in segment {start}",
            dir.display()
        );
    }
    Ok((start, offset))
}

struct Segment {
    start: i64,
    file: File,
    /// Where the entries end (the next group is written here).
    len: u64,
    /// The file's size: from `len` on, zeros (`PREALLOCATE`).
    allocated: u64,
}

impl Segment {
    /// Whether the writer should fill further ahead: less than `PREALLOCATE` left, and the
    /// segment not yet full.
    fn short(&self, segment_bytes: u64) -> bool {
        self.allocated - self.len < PREALLOCATE && self.len < segment_bytes
    }

    /// Makes the file at least `end` bytes long, `FILL_STEP` at a time, with zeros made
    /// durable (size included) before any entry is written into them.
    fn allocate(&mut self, end: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if end <= self.allocated {
            return Ok(());
        }
        let target = end.max(self.allocated + FILL_STEP).next_multiple_of(4096);
        let zeros = vec![0u8; 64 * 1024];
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(zeros.len() as u64);
            self.file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        self.file.sync_data()?;
        self.allocated = target;
        Ok(())
    }
}

/// The writer thread: takes everything queued, writes it in one go, fsyncs, answers each;
/// between groups, fills the segment ahead one `FILL_STEP` at a time.
fn write_groups(
    shared: Arc<Shared>,
    mut segment: Segment,
    mut next_seq: i64,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    load: Arc<AtomicUsize>,
) {
    let mut group: Vec<Pending> = Vec::with_capacity(GROUP_MAX);
    let mut buf = Vec::new();
    let mut filling = false;
    loop {
        // Waiting for rows only once the segment is filled ahead; until then, a step of
        // filling between looks at the queue.
        let first = if filling {
            match pending.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        } else {
            match pending.blocking_recv() {
                Some(p) => Some(p),
                None => return,
            }
        };
        if let Some(first) = first {
            group.push(first);
        }
        while !group.is_empty() && group.len() < GROUP_MAX {
            match pending.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        if !group.is_empty() {
            write_and_answer(
                &shared,
                &mut segment,
                &mut next_seq,
                &mut group,
                &mut buf,
                &load,
            );
        }
        // Fill ahead while nobody waits, rather than in a later group's flush. A failure here
        // is retried by a later group, which then reports it.
        filling = segment.short(shared.segment_bytes);
        if filling && let Err(e) = segment.allocate(segment.allocated + FILL_STEP) {
            tracing::warn!(error = %e, "audit journal: could not fill the segment ahead");
            filling = false;
        }
    }
}

/// Writes and flushes `group`, answers each of its rows and empties it.
fn write_and_answer(
    shared: &Shared,
    segment: &mut Segment,
    next_seq: &mut i64,
    group: &mut Vec<Pending>,
    buf: &mut Vec<u8>,
    load: &AtomicUsize,
) {
    let started = Instant::now();
    let result = write_group(shared, segment, *next_seq, group, buf);
    crate::metrics::AUDIT_JOURNAL_SYNC_SECONDS.observe(started.elapsed().as_secs_f64());
    crate::metrics::AUDIT_GROUP_SIZE.observe(group.len() as f64);
    let first_seq = *next_seq;
    if result.is_ok() {
        *next_seq += group.len() as i64;
    }
    load.fetch_sub(group.len(), Ordering::Relaxed);
    for (i, p) in group.drain(..).enumerate() {
        // A requester that went away no longer needs its answer; its row is durable.
        let _ = p.done.send(result.clone().map(|()| first_seq + i as i64));
    }
}

fn write_group(
    shared: &Shared,
    segment: &mut Segment,
    first_seq: i64,
    group: &[Pending],
    buf: &mut Vec<u8>,
) -> Result<(), String> {
    if let Some(why) = &shared.progress.lock().expect("progress").poisoned {
        return Err(format!("the audit journal refuses rows: {why}"));
    }
    if segment.len >= shared.segment_bytes {
        // The full segment was fsynced with its last group; the new one must exist (its
        // directory entry durable) before anything in it is acknowledged.
        let path = segment_path(&shared.dir, first_seq);
        // Not `create_new`: a rotation whose directory sync failed left the file, empty.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .and_then(|f| {
                if f.metadata()?.len() != 0 {
                    return Err(std::io::Error::other("it exists and is not empty"));
                }
                sync_dir(&shared.dir).map(|()| f)
            })
            .map_err(|e| format!("creating audit journal segment {}: {e}", path.display()))?;
        *segment = Segment {
            start: first_seq,
            file,
            len: 0,
            allocated: 0,
        };
        shared
            .progress
            .lock()
            .expect("progress")
            .segments
            .insert(first_seq, 0);
    }
    buf.clear();
    for (i, p) in group.iter().enumerate() {
        encode(buf, first_seq + i as i64, &p.payload);
    }
    if let Err(e) = segment.allocate(segment.len + buf.len() as u64) {
        return Err(format!(
            "audit journal: filling segment {}: {e}",
            segment.start
        ));
    }
    if let Err(e) = std::os::unix::fs::FileExt::write_all_at(&segment.file, buf, segment.len) {
        // Zero whatever part was written: the next group follows the last good entry, and what
        // lies after its end must read as free space, not as damage.
        let zeros = vec![0u8; buf.len()];
        if let Err(cut) =
            std::os::unix::fs::FileExt::write_all_at(&segment.file, &zeros, segment.len)
        {
            let why = format!("write failed ({e}) and could not be undone ({cut})");
            shared.progress.lock().expect("progress").poisoned = Some(why.clone());
            return Err(why);
        }
        return Err(format!("audit journal write failed: {e}"));
    }
    if let Err(e) = segment.file.sync_data() {
        let why = format!("fdatasync failed: {e}");
        tracing::error!(error = %e, "audit journal fdatasync failed: refusing rows until restart");
        shared.progress.lock().expect("progress").poisoned = Some(why.clone());
        return Err(why);
    }
    segment.len += buf.len() as u64;
    {
        let mut p = shared.progress.lock().expect("progress");
        p.durable_seq = first_seq + group.len() as i64 - 1;
        p.durable_segment = segment.start;
        p.durable_len = segment.len;
        p.segments.insert(segment.start, segment.len);
        if p.backlog_since.is_none() {
            p.backlog_since = Some(Instant::now());
        }
    }
    shared.wake.notify_one();
    Ok(())
}

/// Entries read for one shipping statement.
struct Batch {
    records: Vec<AuditRecord>,
    /// Where the entry after the batch starts.
    segment: i64,
    offset: u64,
}

/// Reads up to `GROUP_MAX` durable entries from (`segment`, `offset`), which holds `seq`.
fn read_batch(
    dir: &Path,
    segments: &BTreeMap<i64, u64>,
    (durable_seq, durable_segment, durable_len): (i64, i64, u64),
    (mut segment, mut offset, mut seq): (i64, u64, i64),
) -> anyhow::Result<Batch> {
    let mut records = Vec::new();
    let mut bytes_read = 0usize;
    while seq <= durable_seq && records.len() < GROUP_MAX && bytes_read < SHIP_BYTES_MAX {
        // A segment before the writer's is complete; the writer's counts up to its fsync.
        let end = if segment == durable_segment {
            durable_len
        } else {
            *segments.get(&segment).context("segment length")?
        };
        if offset >= end {
            // The next segment starts with the next sequence number.
            anyhow::ensure!(
                segments.contains_key(&seq),
                "audit journal {}: no segment starts at row {seq}",
                dir.display()
            );
            segment = seq;
            offset = 0;
            continue;
        }
        let mut file = File::open(segment_path(dir, segment))?;
        file.seek(SeekFrom::Start(offset))?;
        let want = ((end - offset) as usize).min(SHIP_BYTES_MAX);
        let mut bytes = vec![0u8; want];
        file.read_exact(&mut bytes)?;
        let mut at = 0usize;
        while seq <= durable_seq && records.len() < GROUP_MAX {
            let Some((s, payload, size)) = decode(&bytes[at..]) else {
                break;
            };
            anyhow::ensure!(
                s == seq,
                "audit journal {}: found row {s} where {seq} was expected",
                dir.display()
            );
            let entry: Entry = serde_json::from_slice(payload).context("audit journal entry")?;
            records.push(entry.record()?);
            at += size;
            seq += 1;
        }
        anyhow::ensure!(
            at > 0,
            "audit journal {}: unreadable entry at byte {offset} of segment {segment}",
            dir.display()
        );
        offset += at as u64;
        bytes_read += at;
    }
    Ok(Batch {
        records,
        segment,
        offset,
    })
}

/// Whether shipping a batch that starts in `batch_segment` deletes segments afterwards (those
/// wholly before it, once shipped).
fn must_flush_shipment(oldest_segment: Option<i64>, batch_segment: i64) -> bool {
    oldest_segment.is_some_and(|oldest| oldest < batch_segment)
}

/// The shipper's commits do not wait for PostgreSQL's WAL flush: the journal keeps every row
/// until a shipment that made them deletable is on disk (`must_flush_shipment`), and a
/// shipment lost in a PostgreSQL crash loses its position with its rows (one commit), so the
/// journal ships them again. Waiting for the flush made each statement cost PostgreSQL about
/// as much for one row as for twenty, and every flush of the shared disk slows the journal's
/// own `fdatasync`, which requests wait for.
async fn set_synchronous_commit(
    conn: &mut sqlx::PgConnection,
    on: bool,
) -> Result<(), sqlx::Error> {
    let sql = if on {
        "SET synchronous_commit = on"
    } else {
        "SET synchronous_commit = off"
    };
    sqlx::query(sql).execute(conn).await.map(|_| ())
}

/// The shipper task: appends durable entries to the chain, in order, exactly once.
async fn ship(shared: Arc<Shared>, store: Store, head: SharedHead) {
    let mut own: Option<(sqlx::PgConnection, Instant)> = None;
    let mut backoff = Duration::from_millis(50);
    let mut gathered = false;
    loop {
        let (durable, from, segments, stopping) = {
            let p = shared.progress.lock().expect("progress");
            (
                (p.durable_seq, p.durable_segment, p.durable_len),
                (p.shipped_segment, p.shipped_offset, p.shipped_seq + 1),
                p.segments.clone(),
                p.stopping,
            )
        };
        if stopping {
            return;
        }
        if from.2 > durable.0 {
            shared.wake.notified().await;
            continue;
        }
        if !gathered && durable.0 - from.2 + 1 < GROUP_MAX as i64 {
            gathered = true;
            tokio::time::sleep(SHIP_GATHER).await;
            continue;
        }
        gathered = false;
        let oldest_segment = segments.keys().next().copied();
        let dir = shared.dir.clone();
        let batch =
            tokio::task::spawn_blocking(move || read_batch(&dir, &segments, durable, from)).await;
        let batch = match batch {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                fail(&shared, format!("reading the journal: {e:#}"), &mut backoff).await;
                continue;
            }
            Err(e) => {
                fail(&shared, format!("reading the journal: {e}"), &mut backoff).await;
                continue;
            }
        };
        let n = batch.records.len() as i64;
        let shipping = Shipping {
            journal_id: &shared.id,
            from: from.2 - 1,
            to: from.2 - 1 + n,
        };
        let conn = match own
            .take()
            .filter(|(_, opened)| opened.elapsed() < super::OWN_CONNECTION_LIFETIME)
        {
            Some(c) => Ok(c),
            None => match store.lookups_pool().acquire().await {
                Ok(c) => {
                    let mut conn = c.detach();
                    set_synchronous_commit(&mut conn, false)
                        .await
                        .map(|()| (conn, Instant::now()))
                }
                Err(e) => Err(e),
            },
        };
        let (mut conn, opened) = match conn {
            Ok(c) => c,
            Err(e) => {
                fail(&shared, format!("connecting: {e}"), &mut backoff).await;
                continue;
            }
        };
        // Segments wholly before this batch are deleted once it is shipped: its commit must
        // then be on disk, so it waits for the flush (which takes every earlier commit along).
        let durable_commit = must_flush_shipment(oldest_segment, batch.segment);
        let mut head = head.lock().await;
        let started = Instant::now();
        let flushing = if durable_commit {
            set_synchronous_commit(&mut conn, true).await
        } else {
            Ok(())
        };
        let appended = match flushing {
            Ok(()) => append(&mut conn, &mut head, batch.records.iter(), Some(&shipping)).await,
            Err(e) => Err(e.into()),
        };
        // The rows are in either way; a connection left waiting for flushes is not kept.
        let keep_conn = appended.is_ok()
            && (!durable_commit || set_synchronous_commit(&mut conn, false).await.is_ok());
        if appended.is_err() {
            // Unknown outcome: re-read the head.
            *head = None;
        }
        drop(head);
        match appended {
            Ok(_) => {
                crate::metrics::AUDIT_JOURNAL_SHIP_SECONDS.observe(started.elapsed().as_secs_f64());
                if keep_conn {
                    own = Some((conn, opened));
                }
                backoff = Duration::from_millis(50);
                let deletable: Vec<i64> = {
                    let mut p = shared.progress.lock().expect("progress");
                    p.shipped_seq = shipping.to;
                    p.shipped_segment = batch.segment;
                    p.shipped_offset = batch.offset;
                    p.last_shipped_at = Instant::now();
                    p.last_error = None;
                    if p.durable_seq == p.shipped_seq {
                        p.backlog_since = None;
                    }
                    p.publish();
                    // Segments before the one the next row is in hold only shipped rows; they
                    // go once a shipment is known to be on disk (a later one, if not this).
                    if durable_commit {
                        p.segments.range(..batch.segment).map(|(&s, _)| s).collect()
                    } else {
                        Vec::new()
                    }
                };
                for start in deletable {
                    let path = segment_path(&shared.dir, start);
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            shared
                                .progress
                                .lock()
                                .expect("progress")
                                .segments
                                .remove(&start);
                        }
                        Err(e) => tracing::warn!(
                            segment = %path.display(), error = %e,
                            "audit journal: could not delete a shipped segment"
                        ),
                    }
                }
            }
            Err(e) => {
                // Unknown outcome: re-read the position too.
                fail(&shared, e.to_string(), &mut backoff).await;
                if let Err(e) = resync(&shared, &store).await {
                    fail(&shared, format!("{e:#}"), &mut backoff).await;
                }
            }
        }
    }
}

/// After a failed statement: takes the database's shipped position if it is ahead of this
/// shipper's. That happens when a statement of this journal committed although its sender did
/// not learn it — a lost answer, or a previous run killed while its statement waited for the
/// chain head, which then committed after the kill. The position moves only with its rows, so
/// the rows up to it are in the chain exactly once and must not be shipped again.
async fn resync(shared: &Shared, store: &Store) -> anyhow::Result<()> {
    let at: i64 =
        sqlx::query_scalar("SELECT shipped_seq FROM audit_journal_shipped WHERE journal_id = $1")
            .bind(&shared.id)
            .fetch_one(store.pool())
            .await?;
    let (ours, durable, segments) = {
        let p = shared.progress.lock().expect("progress");
        (p.shipped_seq, p.durable_seq, p.segments.clone())
    };
    if at == ours {
        return Ok(());
    }
    anyhow::ensure!(
        at > ours && at <= durable,
        "audit journal {}: the database has it shipped to {at}, this shipper to {ours} \
         (journal ends at {durable}); another process with a copy of this journal?",
        shared.id
    );
    let dir = shared.dir.clone();
    let (segment, offset) =
        tokio::task::spawn_blocking(move || position_of(&dir, &segments, at + 1)).await??;
    tracing::warn!(
        journal = %shared.id, from = ours, to = at,
        "audit journal: rows were shipped by a statement whose answer was lost; skipping them"
    );
    let mut p = shared.progress.lock().expect("progress");
    p.shipped_seq = at;
    p.shipped_segment = segment;
    p.shipped_offset = offset;
    if p.durable_seq == at {
        p.backlog_since = None;
    }
    p.publish();
    Ok(())
}

async fn fail(shared: &Shared, why: String, backoff: &mut Duration) {
    tracing::warn!(error = %why, "audit journal: shipping failed; retrying");
    {
        let mut p = shared.progress.lock().expect("progress");
        p.last_error = Some(why);
        p.publish();
    }
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_shipment_that_empties_segments_waits_for_the_flush() {
        // The batch's next entry is in the oldest segment: nothing is deleted after it.
        assert!(!must_flush_shipment(Some(1), 1));
        // It starts a later segment: the ones before go, so its commit must be on disk.
        assert!(must_flush_shipment(Some(1), 513));
        assert!(!must_flush_shipment(None, 513));
    }

    fn payload(i: usize) -> Vec<u8> {
        format!("{{\"row\":{i}}}").into_bytes()
    }

    fn write_entries(dir: &Path, start: i64, n: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        for i in 0..n {
            encode(&mut buf, start + i as i64, &payload(i));
        }
        std::fs::write(segment_path(dir, start), &buf).unwrap();
        buf
    }

    #[test]
    fn entries_round_trip_and_damage_is_refused() {
        let mut buf = Vec::new();
        encode(&mut buf, 7, b"{\"a\":1}");
        let (seq, payload, size) = decode(&buf).expect("whole entry");
        assert_eq!((seq, payload, size), (7, &b"{\"a\":1}"[..], buf.len()));
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_none(), "a torn entry ({cut} bytes)");
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x20;
            assert!(decode(&bad).is_none(), "a changed byte at {i}");
        }
        assert!(decode(&[0u8; 64]).is_none(), "zeros");
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_earlier_entries_kept() {
        let dir = tempfile::tempdir().unwrap();
        let whole = write_entries(dir.path(), 1, 5);
        let mut torn = Vec::new();
        encode(&mut torn, 6, &payload(5));
        let mut bytes = whole.clone();
        bytes.extend_from_slice(&torn[..torn.len() - 3]);
        std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!(r.next_seq, 6);
        assert_eq!(r.segments[&1], whole.len() as u64);
        assert_eq!(std::fs::read(segment_path(dir.path(), 1)).unwrap(), whole);
        // A checksum failure in the last entry counts as torn too.
        let mut bytes = whole.clone();
        let mut last = Vec::new();
        encode(&mut last, 6, &payload(5));
        let n = last.len();
        last[n - 1] ^= 1;
        bytes.extend_from_slice(&last);
        std::fs::write(segment_path(dir.path(), 1), &bytes).unwrap();
        assert_eq!(recover(dir.path()).unwrap().next_seq, 6);
    }

    #[test]
    fn damage_before_the_last_segment_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = write_entries(dir.path(), 1, 3);
        write_entries(dir.path(), 4, 2);
        let n = first.len();
        first[n - 2] ^= 1;
        std::fs::write(segment_path(dir.path(), 1), &first).unwrap();
        let e = recover(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("damaged"), "{e}");
        // A gap between segments too.
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 1, 3);
        write_entries(dir.path(), 5, 2);
        assert!(recover(dir.path()).is_err());
    }

    #[test]
    fn space_filled_ahead_is_not_damage_and_a_torn_entry_before_it_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = write_entries(dir.path(), 1, 3);
        let first_len = first.len() as u64;
        first.resize(first.len() + 8192, 0);
        std::fs::write(segment_path(dir.path(), 1), &first).unwrap();
        let second = write_entries(dir.path(), 4, 2);
        let mut torn = Vec::new();
        encode(&mut torn, 6, &payload(5));
        let mut bytes = second.clone();
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        bytes.resize(bytes.len() + 4096, 0);
        std::fs::write(segment_path(dir.path(), 4), &bytes).unwrap();
        let r = recover(dir.path()).expect("zeros after the entries are free space");
        assert_eq!(r.next_seq, 6);
        assert_eq!(r.segments[&1], first_len);
        assert_eq!(r.segments[&4], second.len() as u64);
        assert_eq!(std::fs::read(segment_path(dir.path(), 4)).unwrap(), second);
        // Bytes after the zeros of an earlier segment are damage, not free space.
        first.push(1);
        std::fs::write(segment_path(dir.path(), 1), &first).unwrap();
        assert!(recover(dir.path()).is_err());
    }

    #[test]
    fn a_segment_is_filled_ahead_in_steps_and_never_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let mut segment = Segment {
            start: 1,
            file,
            len: 0,
            allocated: 0,
        };
        segment.allocate(100).unwrap();
        assert_eq!(
            segment.allocated, FILL_STEP,
            "one step, not all of PREALLOCATE"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), FILL_STEP);
        segment.allocate(10).unwrap();
        assert_eq!(segment.allocated, FILL_STEP);
        segment.allocate(FILL_STEP + 1).unwrap();
        assert_eq!(segment.allocated, 2 * FILL_STEP);
        segment.allocate(PREALLOCATE * 3 + 1).unwrap();
        assert_eq!(segment.allocated, PREALLOCATE * 3 + 4096);
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 0));
    }

    #[tokio::test]
    async fn the_writer_fills_ahead_a_step_at_a_time_while_idle_and_stops_when_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = segment_path(dir.path(), 1);
        let file = File::create(&path).unwrap();
        let shared = Arc::new(Shared {
            dir: dir.path().to_path_buf(),
            id: "test".into(),
            segment_bytes: 64 * 1024 * 1024,
            progress: Mutex::new(Progress {
                lane: "test".into(),
                durable_seq: 0,
                durable_segment: 1,
                durable_len: 0,
                segments: BTreeMap::from([(1, 0)]),
                shipped_seq: 0,
                shipped_segment: 1,
                shipped_offset: 0,
                backlog_since: None,
                last_shipped_at: Instant::now(),
                last_error: None,
                poisoned: None,
                stopping: false,
            }),
            wake: Notify::new(),
            _lock: lock(dir.path()).unwrap(),
        });
        let segment = Segment {
            start: 1,
            file,
            len: 0,
            allocated: 0,
        };
        let (queue, pending) = mpsc::unbounded_channel();
        let load = Arc::new(AtomicUsize::new(0));
        std::thread::spawn({
            let load = load.clone();
            move || write_groups(shared, segment, 1, pending, load)
        });
        let send = |i: usize| {
            let (done, answered) = oneshot::channel();
            load.fetch_add(1, Ordering::Relaxed);
            queue
                .send(Pending {
                    payload: payload(i),
                    done,
                })
                .unwrap();
            answered
        };
        // Rows sent while the writer fills are answered between its steps, in order.
        for i in 0..20 {
            assert_eq!(send(i).await.unwrap(), Ok(i as i64 + 1));
        }
        let size = || std::fs::metadata(&path).unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while size() < PREALLOCATE {
            assert!(Instant::now() < deadline, "filled ahead to {} only", size());
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        let filled = size();
        assert!(
            filled < PREALLOCATE + 2 * FILL_STEP,
            "kept filling: {filled} bytes"
        );
        assert_eq!(size(), filled, "stopped once far enough ahead");
        assert_eq!(load.load(Ordering::Relaxed), 0);
        assert_eq!(recover(dir.path()).unwrap().next_seq, 21);
    }

    #[test]
    fn a_second_lock_on_the_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let e = lock(dir.path()).expect_err("refused");
        assert!(e.to_string().contains("in use by another process"), "{e}");
        drop(held);
        lock(dir.path()).expect("free again");
        let id = journal_id(dir.path()).unwrap();
        assert_eq!(journal_id(dir.path()).unwrap(), id, "created once");
    }

    #[test]
    fn batches_cross_segments_and_stop_at_the_durable_end() {
        let dir = tempfile::tempdir().unwrap();
        let record = |i: usize| AuditRecord {
            request_id: Some(format!("r{i}")),
            interaction: "read".into(),
            ..Default::default()
        };
        let mut segments = BTreeMap::new();
        let mut seq = 1i64;
        for (start, n) in [(1i64, 3usize), (4, 4)] {
            let mut buf = Vec::new();
            for _ in 0..n {
                let p = serde_json::to_vec(&Entry::new(record(seq as usize))).unwrap();
                encode(&mut buf, seq, &p);
                seq += 1;
            }
            std::fs::write(segment_path(dir.path(), start), &buf).unwrap();
            segments.insert(start, buf.len() as u64);
        }
        let (at_seg, at_off) = position_of(dir.path(), &segments, 2).unwrap();
        assert_eq!(at_seg, 1);
        // Durable up to row 6 (of 7): the batch takes 2..=6 from both segments.
        let end6 = position_of(dir.path(), &segments, 7).unwrap();
        let b = read_batch(dir.path(), &segments, (6, 4, end6.1), (1, at_off, 2)).unwrap();
        let ids: Vec<_> = b
            .records
            .iter()
            .map(|r| r.request_id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["r2", "r3", "r4", "r5", "r6"]);
        assert_eq!((b.segment, b.offset), end6);
    }
}
