//! Keeps the local index in step with PostgreSQL: follows the change feed, indexes each changed
//! resource's current state, and lets a search wait until every write committed before it began
//! is searchable. Owns the index writer; searches only ever read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Term};
use tokio::sync::{Notify, watch};

use super::index::{Fields, IndexRow, SCHEMA_VERSION, document, in_memory, open_or_create};
use super::params::Registry;
use crate::store::{CONSUMER_LAG_EVERY, Change, FeedPosition, HELD_TAIL_RESCAN, HeadState, Store};

const BATCH: i64 = 2000;

/// The feed is polled this often when no search asks for freshness.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// While changes stream in, the feed is read again this soon after a batch under `BATCH`
/// (at once after a full one): the index keeps up with the writers instead of gathering a
/// second of changes for tantivy's indexing thread while it idles, and a trickle costs
/// PostgreSQL at most 20 reads a second.
const STREAM_POLL: Duration = Duration::from_millis(50);
const WRITER_MEMORY: usize = 64 * 1024 * 1024;

/// Threads for building documents and for tantivy's indexing: one per core, at most four.
fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}
/// Merges while changes stream in: segments of up to this many documents count as one level.
///
/// Every commit (each second, or per waiting search) makes a segment of hundreds to thousands of
/// documents. Tantivy's default puts every segment below 10,000 documents in one level, so the
/// growing merged segment was merged again with each next eight small ones until it passed
/// ~17,000 documents: every document was rewritten ~10 times, and merging took more of shcr's
/// CPU than ingest itself (events bench: 7.3 of 16 ms per message). With levels from 100
/// documents up, eight segments of one size make one of the next: a document is rewritten once
/// per level, a handful of times in all; the segments left small are merged once the index
/// is quiet (`consolidate`).
const MIN_LAYER_DOCS: u32 = 100;
/// Once no change has been applied for this long, small segments are merged into one.
const QUIET: Duration = Duration::from_secs(2);
/// Segments below this size are merged when the index is quiet, so a quiet index has few
/// segments (each costs every search a term lookup per clause) whatever the bursts before.
const SMALL_SEGMENT_DOCS: u32 = 10_000;
/// A quiet merge takes a segment only if it is at most this many times the size of the
/// smaller ones taken before it, so each document is rewritten a bounded number of times.
const QUIET_MERGE_RATIO: u64 = 4;
/// Below this many documents in all, a quiet merge takes segments whatever their ratio:
/// rewriting them costs a few milliseconds, and a trickle with pauses (a write every few
/// seconds) otherwise left one stray segment beside the merged one for good.
const QUIET_MERGE_ALWAYS_DOCS: u64 = 1_000;

/// Memory of a `shcr reindex` writer, shared by its indexing threads. A thread's segment is
/// flushed when its share fills: with the live writer's 64 MB, 1M resources made ~125 segments
/// that the merge policy rewrote two or three times during the rebuild.
pub const REBUILD_MEMORY: usize = 1024 * 1024 * 1024;

/// Indexing threads of the server's writer, which follows the change feed. Tantivy gives each
/// indexing thread a segment of its own, so every commit (each second, or per waiting search)
/// made one segment per thread: twice the segments to write and merge, for documents that
/// arrive a few hundred at a time (events bench: tantivy's indexing and merging ~1.5 against
/// ~0.85 ms of CPU per message with one thread). `shcr reindex` keeps a thread per core; the
/// server's own rebuild of a missing index builds documents on every core but indexes them on
/// this one thread.
const FOLLOWER_THREADS: usize = 1;

/// Merge threads of a writer (tantivy's default); they run at low priority (`merge_priority`).
const MERGE_THREADS: usize = 4;

fn new_writer(index: &Index, threads: usize, memory: usize) -> Result<IndexWriter, IndexError> {
    let options = tantivy::indexer::IndexWriterOptions::builder()
        .num_worker_threads(threads)
        .memory_budget_per_thread(memory / threads)
        .num_merge_threads(MERGE_THREADS)
        .build();
    let writer = super::merge_priority::with_lowered_merge_threads(MERGE_THREADS, || {
        index.writer_with_options(options)
    });
    let writer: IndexWriter = writer?;
    writer.set_merge_policy(live_merge_policy());
    Ok(writer)
}

fn live_merge_policy() -> Box<dyn tantivy::indexer::MergePolicy> {
    let mut policy = tantivy::indexer::LogMergePolicy::default();
    policy.set_min_layer_size(MIN_LAYER_DOCS);
    Box::new(policy)
}

/// Applied changes are committed at least this often even when no search is waiting.
///
/// Every search waits for freshness (`wait_fresh`), which commits at once, so this bound only
/// decides how many segments a stream nobody searches makes. Each commit builds a segment's
/// term dictionaries from scratch (a fresh FST builder and its ~1 MB node registry per field)
/// and adds a segment to merge later; dictionary building and merging were ~40 % of shcr's
/// CPU in the events bench.
const MAX_COMMIT_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("search index: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("search index: {0}")]
    Io(#[from] std::io::Error),
    #[error("the search index did not catch up within {0:?}")]
    Timeout(Duration),
}

/// The shared, read side of the index plus the handle searches use to wait for freshness.
pub struct SearchIndex {
    pub index: Index,
    pub fields: Fields,
    pub reader: IndexReader,
    /// Fast-field columns of the searchable segments, opened once each.
    pub columns: Arc<super::columns::ColumnCache>,
    pub registry: Arc<Registry>,
    /// FHIR base URL: absolute references under it are local.
    pub base: String,
    next_generation: AtomicU64,
    completed: watch::Sender<u64>,
    wake: Notify,
    /// Searches waiting for freshness: while any wait, every poll commits at once.
    waiters: std::sync::atomic::AtomicUsize,
    ready: AtomicBool,
    /// When the last applied change was committed, for the index-lag metric.
    lag_seconds: Mutex<f64>,
    /// Bumped whenever an applied change may have changed access facts (care relationships,
    /// consent): organisation-wide facts cached for searches are valid only while it stays.
    facts_generation: AtomicU64,
    /// Set to stop the indexer; it then commits, releases the writer (and the folder's lock)
    /// and reports `stopped`.
    stop: watch::Sender<bool>,
    stopped: watch::Sender<bool>,
    /// Set while indexing is held back (`pause`): changes wait in the feed.
    paused: AtomicBool,
    /// Commits made, for tests of how many a waiting search pays for.
    commits: AtomicU64,
}

fn payload(position: FeedPosition) -> String {
    serde_json::json!({"schema": SCHEMA_VERSION, "txid": position.txid, "seq": position.seq})
        .to_string()
}

/// The feed position the index reflects, if the index was written by this schema version.
fn read_position(index: &Index) -> tantivy::Result<Option<FeedPosition>> {
    let metas = index.load_metas()?;
    let Some(p) = metas.payload else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&p).unwrap_or(Value::Null);
    if v["schema"].as_u64() != Some(u64::from(SCHEMA_VERSION)) {
        return Ok(None);
    }
    Ok(Some(FeedPosition {
        txid: v["txid"].as_i64().unwrap_or(0),
        seq: v["seq"].as_i64().unwrap_or(0),
    }))
}

impl SearchIndex {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn lag_seconds(&self) -> f64 {
        *self.lag_seconds.lock().expect("lag lock")
    }

    /// Waits until a feed poll that started after this call has been applied: every write
    /// committed before the call is then searchable.
    pub async fn wait_fresh(&self, timeout: Duration) -> Result<(), IndexError> {
        let started = Instant::now();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let result = self.wait_for_generation(timeout, true).await;
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        crate::metrics::SEARCH_FRESHNESS_WAIT.observe(started.elapsed().as_secs_f64());
        result
    }

    /// How many times the index has been committed since it was opened.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    /// As `wait_fresh`, without hurrying the indexer: it returns once the indexer's own
    /// schedule (`MAX_COMMIT_DELAY`) or some search has made every write committed before the
    /// call searchable. For observers such as the data-freshness tracker, which waited after
    /// every applied message: as a search, each of its waits committed at once, and during a
    /// stream of messages the index committed back to back, a tiny segment each time.
    pub async fn wait_committed(&self, timeout: Duration) -> Result<(), IndexError> {
        self.wait_for_generation(timeout, false).await
    }

    /// `hurry` wakes the indexer, after the ticket is taken: woken first, it could complete
    /// the generation the ticket would have named, and the wait would need one more.
    async fn wait_for_generation(&self, timeout: Duration, hurry: bool) -> Result<(), IndexError> {
        let ticket = self.next_generation.load(Ordering::SeqCst);
        let mut completed = self.completed.subscribe();
        if hurry {
            self.wake.notify_one();
        }
        let wait = completed.wait_for(|done| *done >= ticket);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(IndexError::Timeout(timeout)),
        }
    }

    /// The access-facts generation. Read after `wait_fresh`, it has counted every fact change
    /// committed before the wait began.
    pub fn facts_generation(&self) -> u64 {
        self.facts_generation.load(Ordering::SeqCst)
    }

    pub fn searcher(&self) -> tantivy::Searcher {
        self.reader.searcher()
    }

    /// Holds indexing back (`true`) or lets it catch up (`false`). Benchmarks use it to tell
    /// the cost of writing from the cost of indexing what was written; a search waiting for
    /// freshness meanwhile waits until indexing resumes (or times out).
    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Asks the indexer to stop without waiting (for `Drop`).
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
        self.wake.notify_one();
    }

    /// Stops the indexer: pending changes are committed and the index folder released.
    pub async fn shutdown(&self) {
        let mut stopped = self.stopped.subscribe();
        self.request_stop();
        let _ = tokio::time::timeout(Duration::from_secs(10), stopped.wait_for(|s| *s)).await;
    }
}

/// The indexer task's own state.
struct Indexer {
    shared: Arc<SearchIndex>,
    writer: Arc<RwLock<IndexWriter>>,
    store: Store,
    position: FeedPosition,
    /// Rows applied early (above the ordered prefix), so a later poll does not redo them.
    applied_above: HashSet<FeedPosition>,
    /// When the tail above `position` was last read whole (see `fetch`).
    whole_read: Option<Instant>,
}

pub struct IndexOptions {
    /// `None`: an in-memory index (tests that do not care about restarts).
    pub dir: Option<PathBuf>,
    pub base: String,
}

/// Opens (or rebuilds) the index and starts following the feed.
pub async fn start(
    store: Store,
    registry: Arc<Registry>,
    options: IndexOptions,
) -> Result<Arc<SearchIndex>, IndexError> {
    let (index, fields, position) = match &options.dir {
        None => {
            let (index, fields) = in_memory();
            (index, fields, None)
        }
        Some(dir) => open_checked(dir)?,
    };
    let writer: IndexWriter = new_writer(&index, FOLLOWER_THREADS, WRITER_MEMORY)?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    let (completed, _) = watch::channel(0);
    let shared = Arc::new(SearchIndex {
        index,
        fields,
        reader,
        columns: Default::default(),
        registry,
        base: options.base,
        next_generation: AtomicU64::new(1),
        completed,
        wake: Notify::new(),
        waiters: std::sync::atomic::AtomicUsize::new(0),
        ready: AtomicBool::new(false),
        lag_seconds: Mutex::new(0.0),
        facts_generation: AtomicU64::new(0),
        stop: watch::channel(false).0,
        stopped: watch::channel(false).0,
        paused: AtomicBool::new(false),
        commits: AtomicU64::new(0),
    });
    let mut indexer = Indexer {
        shared: shared.clone(),
        writer: Arc::new(RwLock::new(writer)),
        store: store.clone(),
        position: position.unwrap_or(FeedPosition::START),
        applied_above: HashSet::new(),
        whole_read: None,
    };
    tokio::spawn(async move {
        if position.is_none() {
            let started = Instant::now();
            match indexer.rebuild(|_| {}).await {
                Ok(n) => tracing::info!(
                    resources = n,
                    seconds = started.elapsed().as_secs_f64(),
                    "search index built"
                ),
                Err(e) => tracing::error!(error = %e, "building the search index failed"),
            }
        }
        indexer.follow().await;
    });
    Ok(shared)
}

/// Opens the index in `dir`; a missing, corrupt or outdated one is wiped (the caller rebuilds).
fn open_checked(dir: &Path) -> Result<(Index, Fields, Option<FeedPosition>), IndexError> {
    match open_or_create(dir).and_then(|(index, fields)| {
        let position = read_position(&index)?;
        Ok((index, fields, position))
    }) {
        Ok((index, fields, Some(position))) => Ok((index, fields, Some(position))),
        Ok((_, _, None)) | Err(_) => {
            tracing::warn!(dir = %dir.display(), "search index missing, outdated or unreadable: rebuilding");
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            let (index, fields) = open_or_create(dir)?;
            Ok((index, fields, None))
        }
    }
}

impl Indexer {
    /// Re-indexes every current resource from PostgreSQL; returns how many.
    ///
    /// Segments are not merged while the rebuild runs (each merge would rewrite documents that
    /// the next flushes join anyway); the live policy takes over afterwards.
    async fn rebuild(&mut self, progress: impl FnMut(usize)) -> Result<usize, IndexError> {
        let result = self.rebuild_unmerged(progress).await;
        // Also after a failure: the server goes on following the feed with this writer.
        self.writer
            .read()
            .expect("writer")
            .set_merge_policy(live_merge_policy());
        result
    }

    async fn rebuild_unmerged(
        &mut self,
        mut progress: impl FnMut(usize),
    ) -> Result<usize, IndexError> {
        let restart = self.store.feed_restart_point().await?;
        {
            let writer = self.writer.clone();
            tokio::task::spawn_blocking(move || {
                let writer = writer.read().expect("writer");
                writer.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
                writer.delete_all_documents()
            })
            .await
            .expect("join")?;
        }
        // Reading the next batch from PostgreSQL overlaps with indexing the current one.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<HeadState>, IndexError>>(2);
        let store = self.store.clone();
        let reader = tokio::spawn(async move {
            let mut after: Option<(String, String)> = None;
            loop {
                let batch = store
                    .scan_heads(after.as_ref().map(|(t, i)| (t.as_str(), i.as_str())), BATCH)
                    .await
                    .map_err(IndexError::from);
                let last = match &batch {
                    Ok(b) => b.last().map(|h| (h.resource_type.clone(), h.id.clone())),
                    Err(_) => None,
                };
                let done = last.is_none();
                if tx.send(batch).await.is_err() || done {
                    break;
                }
                after = last;
            }
        });
        let mut total = 0;
        while let Some(batch) = rx.recv().await {
            let batch = batch?;
            if batch.is_empty() {
                break;
            }
            total += batch.len();
            self.index_heads(batch, Replace::No).await?;
            progress(total);
        }
        reader.abort();
        self.position = restart;
        self.applied_above.clear();
        self.whole_read = None;
        self.commit().await?;
        Ok(total)
    }

    /// Replaces the documents of `heads`, building documents on every core.
    async fn index_heads(&self, heads: Vec<HeadState>, replace: Replace) -> Result<(), IndexError> {
        let threads = worker_threads();
        let chunk = heads.len().div_ceil(threads).max(1);
        let mut chunks = Vec::with_capacity(threads);
        let mut rest = heads;
        while rest.len() > chunk {
            let tail = rest.split_off(chunk);
            chunks.push(rest);
            rest = tail;
        }
        chunks.push(rest);
        let tasks: Vec<_> = chunks
            .into_iter()
            .map(|heads| {
                let shared = self.shared.clone();
                let writer = self.writer.clone();
                tokio::task::spawn_blocking(move || index_chunk(&shared, &writer, heads, replace))
            })
            .collect();
        for t in tasks {
            t.await.expect("join")?;
        }
        Ok(())
    }

    async fn commit(&self) -> Result<(), IndexError> {
        let writer = self.writer.clone();
        let payload = payload(self.position);
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || -> Result<(), IndexError> {
            let started = Instant::now();
            let mut writer = writer.write().expect("writer");
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&payload);
            prepared.commit()?;
            shared.reader.reload()?;
            shared.columns.keep_only(&shared.reader.searcher());
            shared.commits.fetch_add(1, Ordering::SeqCst);
            crate::metrics::SEARCH_INDEX_COMMIT.observe(started.elapsed().as_secs_f64());
            Ok(())
        })
        .await
        .expect("join")
    }

    /// The rows above the xmin applied once `f` is applied, so a later read skips them.
    fn above_after(&self, f: &Fetched) -> HashSet<FeedPosition> {
        let mut above = self.applied_above.clone();
        above.extend(f.above.iter().copied());
        above.retain(|p| *p > f.position);
        above
    }

    /// Applies one read of the feed to the writer (not yet committed); returns whether
    /// anything was applied.
    async fn apply(&mut self, f: Fetched) -> Result<bool, IndexError> {
        if f.heads.is_empty() {
            // Every row may have been applied early (`to_apply`): the position still moves
            // past them, or a full batch of them is read again forever.
            self.applied_above = self.above_after(&f);
            self.position = f.position;
            self.whole_read = f.whole_read;
            return Ok(false);
        }
        // Before the generation completes, so no search can pair new facts with old ones.
        if f.facts {
            self.shared.facts_generation.fetch_add(1, Ordering::SeqCst);
        }
        let above = self.above_after(&f);
        self.index_heads(f.heads, Replace::Yes).await?;
        self.position = f.position;
        self.applied_above = above;
        self.whole_read = f.whole_read;
        if let Some(newest) = f.newest {
            let lag = (time::OffsetDateTime::now_utc() - newest)
                .as_seconds_f64()
                .max(0.0);
            *self.shared.lag_seconds.lock().expect("lag lock") = lag;
            crate::metrics::INDEX_LAG.set(lag);
        }
        Ok(true)
    }

    /// Starts merging the small segments bursts of commits leave behind into one (see
    /// `QUIET`). The merge runs on tantivy's threads, so the indexer keeps serving searches
    /// that wait for freshness; the task reports whether there is nothing left to do.
    fn consolidate(&self) -> tokio::task::JoinHandle<bool> {
        let mut small: Vec<(u32, tantivy::index::SegmentId)> =
            match self.shared.index.searchable_segment_metas() {
                Ok(metas) => metas
                    .into_iter()
                    .filter(|m| m.num_docs() < SMALL_SEGMENT_DOCS)
                    .map(|m| (m.num_docs(), m.id()))
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the search index's segments failed");
                    return tokio::spawn(async { true });
                }
            };
        // Smallest first, stopping at a segment larger than `QUIET_MERGE_RATIO` times all the
        // smaller ones together: a trickle of changes with pauses between them would otherwise
        // rewrite the whole merged segment for every few new documents.
        small.sort_unstable_by_key(|(docs, _)| *docs);
        let mut total = 0u64;
        let small: Vec<tantivy::index::SegmentId> = small
            .into_iter()
            .take_while(|(docs, _)| {
                let take = total == 0
                    || u64::from(*docs) <= QUIET_MERGE_RATIO * total
                    || total + u64::from(*docs) <= QUIET_MERGE_ALWAYS_DOCS;
                total += u64::from(*docs);
                take
            })
            .map(|(_, id)| id)
            .collect();
        if small.len() < 2 {
            // Nothing left to merge; but a merge the policy finished while the index was quiet
            // is only seen by searches once the reader reloads (no commit will come to do it).
            let shared = self.shared.clone();
            return tokio::spawn(async move {
                if let Err(e) = shared.reader.reload() {
                    tracing::warn!(error = %e, "reloading the search index failed");
                }
                shared.columns.keep_only(&shared.reader.searcher());
                true
            });
        }
        let merge = self.writer.write().expect("writer").merge(&small);
        let shared = self.shared.clone();
        tokio::spawn(async move {
            match merge.await {
                Ok(_) => {
                    if let Err(e) = shared.reader.reload() {
                        tracing::warn!(error = %e, "reloading the search index failed");
                    }
                    shared.columns.keep_only(&shared.reader.searcher());
                    // Look again: a merge the policy had in flight may have ended meanwhile
                    // and left another small segment beside this one.
                    false
                }
                // A segment may be in a merge the policy started: try again after it.
                Err(e) => {
                    tracing::debug!(error = %e, "merging small segments deferred");
                    false
                }
            }
        })
    }

    async fn follow(mut self) {
        let mut failures = 0u32;
        let mut uncommitted = false;
        let mut last_commit = Instant::now();
        let mut last_applied = Instant::now();
        let mut lag_recorded = Instant::now();
        // The first generation a read could take once the last commit had ended.
        let mut fresh_from = 0u64;
        let mut consolidated = false;
        // The merge in flight and when it started: changes applied since then are not in it.
        let mut consolidating: Option<(tokio::task::JoinHandle<bool>, Instant)> = None;
        let mut stop = self.shared.stop.subscribe();
        // The next read of the feed, started while the batch before it is indexed.
        let mut prefetched: Option<tokio::task::JoinHandle<Result<Fetched, IndexError>>> = None;
        loop {
            if *stop.borrow_and_update() {
                break;
            }
            if self.shared.paused.load(Ordering::SeqCst) {
                if let Some(task) = prefetched.take() {
                    task.abort();
                }
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = self.shared.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                }
                continue;
            }
            let fetched = match prefetched.take() {
                Some(task) => task.await.expect("join"),
                None => {
                    let from = ReadFrom {
                        position: self.position,
                        applied_above: self.applied_above.clone(),
                        whole_read: self.whole_read,
                    };
                    fetch(
                        self.store.clone(),
                        self.shared.clone(),
                        Duration::ZERO,
                        from,
                    )
                    .await
                }
            };
            let fetched = match fetched {
                Ok(f) => f,
                Err(e) => {
                    failures += 1;
                    tracing::error!(error = %e, failures, "search indexing failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25))))
                        .await;
                    continue;
                }
            };
            let generation = fetched.generation;
            let more = fetched.more;
            let whole = fetched.whole;
            // While changes stream in, the next read runs as this batch is indexed, so
            // tantivy's indexing thread is kept fed rather than left idle until the next commit
            // is due, and a search waiting at the end finds little left to index.
            if !fetched.heads.is_empty() {
                let delay = if more { Duration::ZERO } else { STREAM_POLL };
                let from = ReadFrom {
                    position: fetched.position,
                    applied_above: self.above_after(&fetched),
                    whole_read: fetched.whole_read,
                };
                let read = fetch(self.store.clone(), self.shared.clone(), delay, from);
                prefetched = Some(tokio::spawn(read));
            }
            let applied = match self.apply(fetched).await {
                Ok(applied) => applied,
                Err(e) => {
                    if let Some(task) = prefetched.take() {
                        task.abort();
                    }
                    failures += 1;
                    tracing::error!(error = %e, failures, "search indexing failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(failures.min(25))))
                        .await;
                    continue;
                }
            };
            failures = 0;
            uncommitted |= applied;
            if applied {
                last_applied = Instant::now();
                consolidated = false;
            }
            // Commits are what cost (each makes a segment to merge later), so background
            // changes are gathered; a waiting search gets its commit once the feed's head is
            // reached (before, its generation cannot complete: a backlog of several batches
            // made a segment each).
            let waiting = self.shared.waiters.load(Ordering::SeqCst) > 0 && !more;
            // A batch read before the last commit ended is older than the searches that waited
            // through that commit, and the read ahead of it (started since) is what they wait
            // for: it is applied too before committing, so they are answered by this commit,
            // not by the one after it (events bench: a search paid for two or three commits).
            if uncommitted
                && waiting
                && drain_read_ahead(generation, fresh_from, prefetched.is_some())
            {
                // Cut the read's `STREAM_POLL` wait short.
                self.shared.wake.notify_one();
                continue;
            }
            if uncommitted && (waiting || last_commit.elapsed() >= MAX_COMMIT_DELAY) {
                if let Err(e) = self.commit().await {
                    tracing::error!(error = %e, "committing the search index failed");
                    continue;
                }
                uncommitted = false;
                last_commit = Instant::now();
                fresh_from = self.shared.next_generation.load(Ordering::SeqCst);
            }
            // A generation is complete only when its poll reached the feed's head and read
            // the tail whole: a search that waited for it must see every write committed
            // before it began, even while a backlog larger than one batch is being applied.
            if !uncommitted && !more && whole {
                self.shared.ready.store(true, Ordering::Release);
                self.shared.completed.send_replace(generation);
            }
            if lag_recorded.elapsed() >= CONSUMER_LAG_EVERY {
                lag_recorded = Instant::now();
                let (store, position) = (self.store.clone(), self.position);
                tokio::spawn(async move {
                    if let Err(e) = store.record_consumer_lag("search-index", position).await {
                        tracing::debug!(error = %e, "feed lag not recorded");
                    }
                });
            }
            if more {
                continue;
            }
            if let Some((task, started)) = consolidating.take_if(|(t, _)| t.is_finished()) {
                let done = task.await.unwrap_or(true);
                if last_applied < started {
                    consolidated = done;
                }
            }
            if consolidating.is_none()
                && !uncommitted
                && !consolidated
                && last_applied.elapsed() >= QUIET
            {
                consolidating = Some((self.consolidate(), Instant::now()));
            }
            // The read in flight waits for its turn itself (`fetch`).
            if prefetched.is_some() {
                continue;
            }
            let idle = if uncommitted {
                MAX_COMMIT_DELAY.saturating_sub(last_commit.elapsed())
            } else {
                IDLE_POLL
            };
            // Searches wake the indexer themselves (`wait_fresh`), so a poll is due only for
            // writes nobody searches for yet: a timer suffices, and writers never pay for a
            // NOTIFY, which PostgreSQL serialises across all committing transactions.
            tokio::select! {
                _ = stop.changed() => {}
                _ = self.shared.wake.notified() => {}
                _ = tokio::time::sleep(idle) => {}
            }
        }
        if let Some(task) = prefetched.take() {
            task.abort();
        }
        if uncommitted && let Err(e) = self.commit().await {
            tracing::error!(error = %e, "committing the search index at shutdown failed");
        }
        let stopped = self.shared.stopped.clone();
        // Dropping the writer releases the folder's lock before anyone is told.
        drop(self);
        stopped.send_replace(true);
    }
}

/// Whether a search waiting for a commit should first get the read ahead applied: the batch
/// just applied (`generation`) was read before the last commit ended (`fresh_from`), and a
/// read started since is in flight. Each commit a search waits for then covers a read that
/// began after the commit before it ended, so a search waits for at most the commit under way
/// and one more.
fn drain_read_ahead(generation: u64, fresh_from: u64, read_ahead: bool) -> bool {
    read_ahead && generation < fresh_from
}

/// The changes one read applies: every ordered row except those applied early, above the
/// xmin, by an earlier read (their documents already hold the resources' state after them),
/// and the rows above the xmin not applied yet.
fn to_apply<'a>(
    ordered: &'a [Change],
    above: &'a [Change],
    applied_above: &HashSet<FeedPosition>,
) -> Vec<&'a Change> {
    ordered
        .iter()
        .chain(above)
        .filter(|c| !applied_above.contains(&c.position))
        .collect()
}

/// One read of the feed and of the changed resources' current state, not yet applied.
struct Fetched {
    /// Taken just before the feed was read: once this batch is committed, and if it reached
    /// the feed's head, every write committed before the generation was taken is searchable.
    generation: u64,
    /// The position after this batch's ordered rows.
    position: FeedPosition,
    /// Rows above the xmin that this batch applies.
    above: Vec<FeedPosition>,
    /// Whether more ordered rows wait after this batch.
    more: bool,
    /// Whether the tail above the position was read whole (not only past the newest row
    /// applied early): only then does the batch complete its generation.
    whole: bool,
    /// When the tail was last read whole.
    whole_read: Option<Instant>,
    /// The current state of every changed resource (a missing one as deleted).
    heads: Vec<HeadState>,
    newest: Option<time::OffsetDateTime>,
    /// Whether a change may have changed access facts.
    facts: bool,
}

/// Where a read of the feed starts.
struct ReadFrom {
    position: FeedPosition,
    /// Rows above the xmin already applied.
    applied_above: HashSet<FeedPosition>,
    whole_read: Option<Instant>,
}

/// Reads the feed after `from`'s position, leaving out its rows above the xmin already
/// applied, and the changed resources' current state; first waits `delay` unless a search
/// wakes the indexer.
async fn fetch(
    store: Store,
    shared: Arc<SearchIndex>,
    delay: Duration,
    from: ReadFrom,
) -> Result<Fetched, IndexError> {
    let ReadFrom {
        position,
        applied_above,
        mut whole_read,
    } = from;
    if !delay.is_zero() {
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
    // After the wait: a search that woke the indexer took its ticket before, and this read
    // starts after it.
    let generation = shared.next_generation.fetch_add(1, Ordering::SeqCst);
    // While an older transaction holds the horizon, only rows past the newest one applied
    // early are read between whole reads, unless a search waits: its generation needs a whole
    // read. A search that registers after this check takes a later ticket than `generation`.
    let hurried = shared.waiters.load(Ordering::SeqCst) > 0;
    let held_tail = match (applied_above.iter().max(), whole_read) {
        (Some(&newest), Some(at)) if !hurried && at.elapsed() < HELD_TAIL_RESCAN => {
            store.poll_held_tail(newest, BATCH).await?
        }
        _ => None,
    };
    let whole = held_tail.is_none();
    let poll = match held_tail {
        Some(poll) => poll,
        None => {
            let read_at = Instant::now();
            let poll = store
                .poll_feed_past(position, BATCH, &applied_above)
                .await?;
            whole_read = Some(read_at);
            poll
        }
    };
    let changed = to_apply(&poll.ordered, &poll.above, &applied_above);
    let newest = changed.iter().map(|c| c.recorded_at).max();
    let facts = changed
        .iter()
        .any(|c| crate::access::facts::changes_facts(&c.resource_type));
    let mut keys: Vec<(String, String)> = changed
        .iter()
        .map(|c| (c.resource_type.clone(), c.id.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    let mut heads = Vec::new();
    if !keys.is_empty() {
        heads = store.heads(&keys).await?;
        // A key whose head row is gone cannot happen today (deletions are versions), but a
        // missing head must still drop the document.
        let found: HashSet<(&str, &str)> = heads
            .iter()
            .map(|h| (h.resource_type.as_str(), h.id.as_str()))
            .collect();
        let missing: Vec<HeadState> = keys
            .iter()
            .filter(|(t, id)| !found.contains(&(t.as_str(), id.as_str())))
            .map(|(t, id)| HeadState {
                resource_type: t.clone(),
                id: id.clone(),
                version_id: 0,
                last_updated: time::OffsetDateTime::UNIX_EPOCH,
                deleted: true,
                author_org: None,
                content: None,
            })
            .collect();
        heads.extend(missing);
    }
    Ok(Fetched {
        generation,
        position: poll.ordered.last().map_or(position, |c| c.position),
        above: poll.above.iter().map(|c| c.position).collect(),
        more: poll.more,
        whole,
        whole_read,
        heads,
        newest,
        facts,
    })
}

/// Whether documents being indexed may already be in the index.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    /// A rebuild after `delete_all_documents`: a delete per document would only be queued and
    /// checked against every segment at each flush.
    No,
}

fn index_chunk(
    shared: &SearchIndex,
    writer: &RwLock<IndexWriter>,
    heads: Vec<HeadState>,
    replace: Replace,
) -> Result<(), IndexError> {
    // Adding and deleting take `&IndexWriter`: chunks share the read side; commits take the
    // write side.
    let writer = writer.read().expect("writer");
    let f = shared.fields;
    for head in heads {
        if replace == Replace::Yes {
            writer.delete_term(Term::from_field_text(
                f.key,
                &super::terms::local(&head.resource_type, &head.id),
            ));
        }
        if head.deleted {
            continue;
        }
        let Some(content) = head.content.as_deref() else {
            continue;
        };
        let Ok(resource) = serde_json::from_str::<Value>(content) else {
            tracing::error!(resource_type = %head.resource_type, id = %head.id, "stored resource is not JSON; not indexed");
            continue;
        };
        let micros = (head.last_updated.unix_timestamp_nanos() / 1000) as i64;
        let row = IndexRow {
            resource_type: &head.resource_type,
            id: &head.id,
            version_id: head.version_id,
            last_updated_micros: micros,
            author_org: head.author_org.as_deref(),
            resource: &resource,
        };
        writer.add_document(document(&f, &shared.registry, &shared.base, &row))?;
    }
    Ok(())
}

/// `shcr reindex`: rebuilds the index in `dir` from PostgreSQL.
pub async fn reindex(
    store: Store,
    registry: Arc<Registry>,
    dir: &Path,
    base: String,
    memory: usize,
    progress: impl FnMut(usize),
) -> Result<usize, IndexError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let (index, fields) = open_or_create(dir)?;
    let writer: IndexWriter = new_writer(&index, worker_threads(), memory)?;
    let reader = index
        .reader_builder()
        .reload_policy(ReloadPolicy::Manual)
        .try_into()?;
    let (completed, _) = watch::channel(0);
    let shared = Arc::new(SearchIndex {
        index,
        fields,
        reader,
        columns: Default::default(),
        registry,
        base,
        next_generation: AtomicU64::new(1),
        completed,
        wake: Notify::new(),
        waiters: std::sync::atomic::AtomicUsize::new(0),
        ready: AtomicBool::new(false),
        lag_seconds: Mutex::new(0.0),
        facts_generation: AtomicU64::new(0),
        stop: watch::channel(false).0,
        stopped: watch::channel(false).0,
        paused: AtomicBool::new(false),
        commits: AtomicU64::new(0),
    });
    let mut indexer = Indexer {
        shared,
        writer: Arc::new(RwLock::new(writer)),
        store,
        position: FeedPosition::START,
        applied_above: HashSet::new(),
        whole_read: None,
    };
    indexer.rebuild(progress).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::merge_priority::{merge_threads, nice_of_thread};

    fn change(txid: i64, seq: i64) -> Change {
        Change {
            position: FeedPosition { txid, seq },
            resource_type: "Basic".into(),
            id: format!("b{txid}-{seq}"),
            version_id: 1,
            operation: "create".into(),
            recorded_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn ordered_rows_applied_early_are_not_applied_again() {
        // Transaction 11 committed above the xmin (10 still ran) and was applied early; now
        // both are below it.
        let ordered = [change(10, 1), change(11, 1), change(11, 2)];
        let above = [change(13, 1), change(14, 1)];
        let early: HashSet<FeedPosition> =
            [ordered[1].position, ordered[2].position, above[0].position]
                .into_iter()
                .collect();
        let ids: Vec<&str> = to_apply(&ordered, &above, &early)
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(ids, ["b10-1", "b14-1"]);
        let none = HashSet::new();
        assert_eq!(to_apply(&ordered, &above, &none).len(), 5);
    }

    #[test]
    fn a_waiting_search_gets_the_read_ahead_before_the_commit() {
        // The batch was read before the last commit ended (generation 7 < 9) and a read is
        // in flight: apply it first.
        assert!(drain_read_ahead(7, 9, true));
        // Nothing in flight: commit what there is.
        assert!(!drain_read_ahead(7, 9, false));
        // The batch itself was read after the last commit ended.
        assert!(!drain_read_ahead(9, 9, true));
        assert!(!drain_read_ahead(10, 9, true));
        // Before the first commit every read is fresh.
        assert!(!drain_read_ahead(1, 0, true));
    }

    #[test]
    fn a_new_writer_merges_at_low_priority() {
        let before = merge_threads();
        let (index, _) = crate::search::index::in_memory();
        let writer = new_writer(&index, 1, 15_000_000).expect("writer");
        // Other tests may start writers of their own meanwhile (at normal priority), so count
        // the lowered threads among the new ones: this writer's whole pool must be there.
        let lowered = merge_threads()
            .into_iter()
            .filter(|tid| !before.contains(tid))
            .filter(|&tid| nice_of_thread(tid).is_some_and(|nice| nice >= 10))
            .count();
        assert!(
            lowered >= MERGE_THREADS,
            "{lowered} new merge threads at nice 10"
        );
        drop(writer);
    }
}
