//! Data freshness: the time from a source event's own timestamp (`Bundle.timestamp` of a
//! trust's message) to the moment its data is searchable in shcr. The events module reports
//! each applied message here after its commit; a tracker per server waits for its search index
//! to catch up with the change feed and then records the age, per sending client.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::search::indexer::SearchIndex;

type Sink = mpsc::UnboundedSender<(String, OffsetDateTime)>;

/// Trackers of the servers running in this process (one in production; tests run several).
static SINKS: LazyLock<Mutex<Vec<Sink>>> = LazyLock::new(Mutex::default);

/// Called after a message from `client` with source time `source_time` was committed.
pub fn committed(client: &str, source_time: OffsetDateTime) {
    let mut sinks = SINKS.lock().expect("freshness lock");
    sinks.retain(|s| s.send((client.to_string(), source_time)).is_ok());
}

/// Starts the tracker for one server's search index. It stops when the index stops.
pub fn start(search: Arc<SearchIndex>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, OffsetDateTime)>();
    SINKS.lock().expect("freshness lock").push(tx);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // One index wait covers every commit reported before it started.
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            // A passive wait: hurrying the index for a metric made it commit after every
            // message of a stream (a segment each, to build and merge).
            if search
                .wait_committed(Duration::from_secs(30))
                .await
                .is_err()
            {
                if !search.is_ready() {
                    // The index is rebuilding or stopped: these ages would measure that.
                    continue;
                }
                tracing::warn!(
                    events = batch.len(),
                    "search index did not catch up within 30 s; freshness recorded late"
                );
            }
            let now = OffsetDateTime::now_utc();
            for (client, source_time) in batch {
                super::usage::record_freshness(&client, (now - source_time).as_seconds_f64());
            }
        }
    });
}
