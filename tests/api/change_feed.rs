use std::collections::HashSet;
use std::time::{Duration, Instant};

use shcr::fhir::instant::now_millis;
use shcr::store::{Author, FeedPosition, NewVersion, Operation, Store, WriteTx};

use crate::common::TestApp;

fn author() -> Author {
    Author {
        kind: "system",
        id: "test".into(),
        org: Some("RX1".into()),
        request_id: None,
    }
}

fn version(id: &str) -> NewVersion {
    NewVersion {
        resource_type: "Basic".into(),
        id: id.into(),
        version_id: 1,
        last_updated: now_millis(),
        operation: Operation::Create,
        method: "POST",
        content: Some(format!(r#"{{"resourceType":"Basic","id":"{id}"}}"#).into()),
        identifiers: vec![],
        compartment: None,
        content_hash: None,
    }
}

async fn drain(store: &Store, from: FeedPosition) -> (Vec<String>, FeedPosition) {
    let mut ids = Vec::new();
    let mut position = from;
    loop {
        let batch = store.changes_after(position, 100).await.unwrap();
        if batch.is_empty() {
            return (ids, position);
        }
        for change in batch {
            assert!(change.position > position, "positions only move forward");
            position = change.position;
            ids.push(change.id);
        }
    }
}

/// A write transaction that has taken its transaction id (and so holds the feed's horizon
/// until it ends).
async fn holding_an_xid(store: &Store) -> WriteTx {
    let mut tx = store.begin_write().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(tx.connection().await.unwrap())
        .await
        .unwrap();
    tx
}

#[tokio::test]
async fn a_transaction_committing_late_is_not_skipped() {
    let app = TestApp::spawn().await;
    let store = Store::from_pool(app.pool.clone());

    // `early` starts (and takes its transaction id) first but commits last.
    let mut early = holding_an_xid(&store).await;
    let mut late = store.begin_write().await.unwrap();
    late.write(&[version("late")], &author()).await.unwrap();
    late.commit().await.unwrap();
    early.write(&[version("early")], &author()).await.unwrap();

    // While `early` is open, nothing after it may be handed out.
    let (seen, position) = drain(&store, FeedPosition::START).await;
    assert!(seen.is_empty(), "{seen:?}");

    early.commit().await.unwrap();
    // Transaction ids are cluster-wide: other databases' open transactions (other tests) can hold
    // the snapshot horizon back for a moment, so poll with a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut position = position;
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "only {seen:?} arrived");
        let (ids, p) = drain(&store, position).await;
        seen.extend(ids);
        position = p;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, vec!["early".to_string(), "late".to_string()]);
}

#[tokio::test]
async fn a_reader_racing_writers_sees_every_change_once() {
    let app = TestApp::spawn().await;
    let store = Store::from_pool(app.pool.clone());
    let mut writers = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..25 {
                let mut tx = store.begin_write().await.unwrap();
                tx.write(&[version(&format!("w{w}-{n}"))], &author())
                    .await
                    .unwrap();
                // Vary how long transactions stay open so commits interleave out of order.
                tokio::time::sleep(Duration::from_millis(((w * 7 + n * 3) % 5) as u64)).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    let mut seen = Vec::new();
    let mut position = FeedPosition::START;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 100 {
        assert!(
            Instant::now() < deadline,
            "only {} of 100 changes arrived",
            seen.len()
        );
        let (ids, p) = drain(&store, position).await;
        seen.extend(ids);
        position = p;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let (rest, _) = drain(&store, position).await;
    assert!(rest.is_empty());
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 100, "every change exactly once");
}

/// More changes than the indexer takes in one batch, committed at once: a search that starts
/// after the commit must count all of them, not the first batch.
#[tokio::test]
async fn a_search_after_a_large_commit_sees_all_of_it() {
    let app = TestApp::spawn().await;
    let store = Store::from_pool(app.pool.clone());
    let n = 5_000;
    let versions: Vec<NewVersion> = (0..n).map(|i| version(&format!("bulk-{i}"))).collect();
    let mut tx = store.begin_write().await.unwrap();
    for chunk in versions.chunks(500) {
        tx.write(chunk, &author()).await.unwrap();
    }
    tx.commit().await.unwrap();
    let bundle = app.search("Basic?_summary=count").await;
    assert_eq!(bundle["total"], n, "{bundle}");
}

/// Writes one version and searches at once, so the write gets an index commit (a segment) of
/// its own; the search must count `expected` resources.
async fn write_searched(app: &TestApp, store: &Store, id: &str, expected: usize) {
    let mut tx = store.begin_write().await.unwrap();
    tx.write(&[version(id)], &author()).await.unwrap();
    tx.commit().await.unwrap();
    let bundle = app.search("Basic?_summary=count").await;
    assert_eq!(bundle["total"], expected, "{bundle}");
}

/// Polls until the index has one searchable segment.
async fn wait_for_one_segment(app: &TestApp, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let segments = app.search.searcher().segment_readers().len();
        if segments == 1 {
            return;
        }
        assert!(Instant::now() < deadline, "{segments} segments left {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn small_segments_are_merged_once_the_index_is_quiet() {
    let app = TestApp::spawn().await;
    let store = Store::from_pool(app.pool.clone());
    // Each write gets a segment of its own, as a burst of small commits does.
    let n = 12;
    for i in 0..n {
        write_searched(&app, &store, &format!("quiet-{i}"), i + 1).await;
    }
    // The merge policy alone merges eight and leaves the rest; a quiet index merges them all.
    wait_for_one_segment(&app, "in a quiet index").await;
    let bundle = app.search("Basic?_summary=count").await;
    assert_eq!(bundle["total"], n, "{bundle}");
}

/// A trickle: a quiet index merged, then one more write after a pause. The new segment joins
/// the merged one once the index is quiet again, rather than staying beside it for good.
#[tokio::test]
async fn a_write_after_a_quiet_merge_is_merged_in_once_quiet_again() {
    let app = TestApp::spawn().await;
    let store = Store::from_pool(app.pool.clone());
    for i in 0..11 {
        write_searched(&app, &store, &format!("trickle-{i}"), i + 1).await;
    }
    wait_for_one_segment(&app, "after the burst").await;
    write_searched(&app, &store, "trickle-late", 12).await;
    wait_for_one_segment(&app, "after the late write").await;
    let bundle = app.search("Basic?_summary=count").await;
    assert_eq!(bundle["total"], 12, "{bundle}");
}

/// Observers of index lag (the data-freshness tracker) wait without hurrying the indexer: a
/// stream of writes each followed by such a wait is committed on the indexer's own schedule,
/// in a segment or two, not in a segment per write as when every wait forced a commit.
#[tokio::test]
async fn passive_waits_leave_commits_to_the_indexers_schedule() {
    let app = TestApp::spawn().await;
    let store = Store::from_pool(app.pool.clone());
    // Start from a quiet, committed index.
    app.search("Basic?_summary=count").await;
    let (docs_before, before) = {
        let searcher = app.search.searcher();
        (searcher.num_docs(), searcher.segment_readers().len())
    };
    let mut waits = Vec::new();
    for i in 0..6 {
        let mut tx = store.begin_write().await.unwrap();
        tx.write(&[version(&format!("passive-{i}"))], &author())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let search = app.search.clone();
        waits.push(tokio::spawn(async move {
            search.wait_committed(Duration::from_secs(30)).await
        }));
        // Apart enough that a wait which forced a commit would get one for its write alone
        // (six segments); six of them span one or two `MAX_COMMIT_DELAY`s (1 s), three on a
        // slow machine.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in waits {
        w.await.unwrap().expect("committed within the timeout");
    }
    // Each wait returned only once its write was searchable, without any search asking.
    let searcher = app.search.searcher();
    assert_eq!(searcher.num_docs(), docs_before + 6);
    let new_segments = searcher.segment_readers().len().saturating_sub(before);
    assert!(new_segments <= 3, "{new_segments} segments for 6 writes");
}

/// While writes stream in, the indexer reads the feed's next batch as it indexes the one before
/// (and may hold it when a search starts): a search must still see the write its caller
/// committed just before, never be answered by a read that started earlier.
#[tokio::test]
async fn a_search_while_writes_stream_in_sees_the_write_committed_just_before_it() {
    let app = TestApp::spawn().await;
    let store = Store::from_pool(app.pool.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            // Paced, not flat out: a writer faster than a debug build's indexer grows a backlog
            // without end, and a search then times out waiting for it (20 resources every
            // 20 ms did, on a slow 2-core machine). Every 100 ms still lands between the
            // indexer's 50 ms reads, so it keeps reading ahead.
            let mut pace = tokio::time::interval(std::time::Duration::from_millis(100));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                pace.tick().await;
                let mut tx = store.begin_write().await.unwrap();
                let batch: Vec<NewVersion> = (0..20)
                    .map(|j| version(&format!("stream-{i}-{j}")))
                    .collect();
                tx.write(&batch, &author()).await.unwrap();
                tx.commit().await.unwrap();
                i += 1;
            }
            i
        })
    };
    for k in 0..100 {
        let id = format!("seen-{k}");
        let mut tx = store.begin_write().await.unwrap();
        tx.write(&[version(&id)], &author()).await.unwrap();
        tx.commit().await.unwrap();
        let bundle = app.search(&format!("Basic?_id={id}&_summary=count")).await;
        assert_eq!(bundle["total"], 1, "search {k} missed {id}: {bundle}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let streamed = stream.await.unwrap();
    assert!(
        streamed >= 5,
        "the writes streamed alongside: {streamed} batches"
    );
}

/// While an older transaction holds the horizon, the indexer reads only past the newest row it
/// applied early between whole reads of the tail; a search, or a passive wait, must still see
/// a write that committed below that row just before it.
#[tokio::test]
async fn a_search_sees_a_write_committed_below_rows_applied_above_the_horizon() {
    let app = TestApp::spawn().await;
    let store = Store::from_pool(app.pool.clone());
    let oldest = holding_an_xid(&store).await;
    // `low` takes its transaction id before `high` but commits after it.
    let mut low = holding_an_xid(&store).await;
    for k in 0..3 {
        let mut high = store.begin_write().await.unwrap();
        let id = format!("high-{k}");
        high.write(&[version(&id)], &author()).await.unwrap();
        high.commit().await.unwrap();
        let bundle = app.search(&format!("Basic?_id={id}&_summary=count")).await;
        assert_eq!(bundle["total"], 1, "{id} above the horizon: {bundle}");
    }
    low.write(&[version("low")], &author()).await.unwrap();
    low.commit().await.unwrap();
    // A passive wait (no search hurrying the indexer) must not be completed by a read past
    // the early rows alone either.
    app.search
        .wait_committed(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(app.search.searcher().num_docs(), 4, "after a passive wait");
    let bundle = app.search("Basic?_id=low&_summary=count").await;
    assert_eq!(
        bundle["total"], 1,
        "the write below the early rows: {bundle}"
    );
    let bundle = app.search("Basic?_summary=count").await;
    assert_eq!(bundle["total"], 4, "{bundle}");
    drop(oldest);
}

/// While writes stream in and other searches keep the indexer committing, a search waits for
/// the commit under way and the one after it, never a third: the read the indexer took ahead
/// during a commit is older than the searches that arrived meanwhile, so it is applied together
/// with a read started after that commit, and one commit answers them (issue 7: a search paid
/// for two or three commits, and the events bench's searchable lag for all of them).
#[tokio::test]
async fn a_search_waits_for_at_most_the_commit_under_way_and_one_more() {
    let app = TestApp::spawn().await;
    let store = Store::from_pool(app.pool.clone());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Three writers, so a write commits between any two reads of the feed.
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                // Small and often, so every read of the feed finds something to index (a read
                // that finds nothing completes its generation without a commit), but well below
                // what even a debug build indexes: a backlog of more than a batch is committed on
                // a timer instead.
                let mut pace = tokio::time::interval(Duration::from_millis(2));
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    pace.tick().await;
                    let mut tx = store.begin_write().await.unwrap();
                    let batch: Vec<NewVersion> = (0..3)
                        .map(|j| version(&format!("flow-{w}-{i}-{j}")))
                        .collect();
                    tx.write(&batch, &author()).await.unwrap();
                    tx.commit().await.unwrap();
                    i += 1;
                }
            })
        })
        .collect();
    // Another search always waiting: the indexer commits back to back, as under the bench's
    // probes.
    let busy = {
        let (search, stop) = (app.search.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                search.wait_fresh(Duration::from_secs(30)).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut paid = Vec::new();
    for _ in 0..100 {
        let before = app.search.commits();
        app.search
            .wait_fresh(Duration::from_secs(30))
            .await
            .unwrap();
        paid.push(app.search.commits() - before);
        tokio::time::sleep(Duration::from_millis(7)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    busy.await.unwrap();
    assert!(
        paid.iter().all(|&n| n <= 2),
        "commits each search waited for: {paid:?}"
    );
    assert!(
        paid.iter().filter(|&&n| n == 2).count() >= 10,
        "the indexer kept committing while the searches waited: {paid:?}"
    );
}

/// More rows than one read of the feed takes, applied early while an older transaction held the
/// horizon: once it ends, a read made only of those rows must still move the indexer past them
/// (it re-read the same batch for good, and every search waited until it timed out).
#[tokio::test]
async fn a_full_batch_of_rows_applied_early_is_passed_once_the_horizon_moves() {
    let app = TestApp::spawn().await;
    let store = Store::from_pool(app.pool.clone());
    let oldest = holding_an_xid(&store).await;
    let n = 2_500;
    let versions: Vec<NewVersion> = (0..n).map(|i| version(&format!("early-{i}"))).collect();
    let mut tx = store.begin_write().await.unwrap();
    for chunk in versions.chunks(500) {
        tx.write(chunk, &author()).await.unwrap();
    }
    tx.commit().await.unwrap();
    let bundle = app.search("Basic?_summary=count").await;
    assert_eq!(bundle["total"], n, "applied above the horizon: {bundle}");
    drop(oldest);
    let mut after = store.begin_write().await.unwrap();
    after.write(&[version("after")], &author()).await.unwrap();
    after.commit().await.unwrap();
    let bundle = app.search("Basic?_summary=count").await;
    assert_eq!(bundle["total"], n + 1, "{bundle}");
}
