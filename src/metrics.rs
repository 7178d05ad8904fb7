//! Prometheus metrics: one registry for the process, served at `/metrics` (bearer token
//! required, like every endpoint but `/fhir/metadata` and the health checks). Modules register
//! their own metrics here through `registry()`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::new_custom(Some("shcr".into()), None).expect("registry");
    // Process CPU, memory and file descriptors, for the operator's dashboards.
    let _ = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    registry
});

pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Registers a metric, tolerating a second registration of the same one (tests build the app
/// many times in one process).
pub fn register<M: prometheus::core::Collector + Clone + 'static>(metric: M) -> M {
    match REGISTRY.register(Box::new(metric.clone())) {
        Ok(()) | Err(prometheus::Error::AlreadyReg) => metric,
        Err(e) => panic!("metric registration: {e}"),
    }
}

/// HTTP request latency by FHIR interaction, resource type and status class.
pub static HTTP_REQUESTS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            &["interaction", "resource_type", "status_class"],
        )
        .expect("histogram"),
    )
});

/// Errors by class (the OperationOutcome issue code), for alerting on spikes of one kind.
pub static HTTP_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("http_errors_total", "Refused or failed requests by status"),
            &["status"],
        )
        .expect("counter"),
    )
});

/// Seconds between the commit of the newest change the search index applied and applying it.
pub static INDEX_LAG: LazyLock<Gauge> = LazyLock::new(|| {
    register(
        Gauge::new(
            "search_index_lag_seconds",
            "Time from commit to searchable for the last indexed change",
        )
        .expect("gauge"),
    )
});

/// How long searches waited for the index to hold every write committed before they began
/// (`SearchIndex::wait_fresh`): most of a search's time while writes stream in.
pub static SEARCH_FRESHNESS_WAIT: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    register(
        prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "search_freshness_wait_seconds",
                "Time a search waits for the index to catch up with the writes before it",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 10.0,
            ]),
        )
        .expect("histogram"),
    )
});

/// How long each commit of the search index took: the indexing thread finishing its queue and
/// writing the segment, the commit, and the reader's reload. A waiting search pays for the
/// commit under way and the one that covers it.
pub static SEARCH_INDEX_COMMIT: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    register(
        prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "search_index_commit_seconds",
                "Time of a search index commit, reader reload included",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("histogram"),
    )
});

/// The text exposition of every registered metric.
pub fn render() -> String {
    let mut buffer = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut buffer)
        .expect("text encoding");
    String::from_utf8(buffer).expect("utf-8 metrics")
}

/// The FHIR interaction a route pattern and method stand for, for metric labels.
pub fn interaction(method: &str, route: &str) -> &'static str {
    match (method, route) {
        (_, "/fhir/metadata") => "capabilities",
        ("POST", "/fhir") | ("POST", "/fhir/") => "transaction",
        ("POST", "/fhir/$process-message") => "process-message",
        ("POST", "/fhir/$validate") | ("POST", "/fhir/{type}/$validate") => "validate",
        // Patient/$everything (src/identity), whichever way it is routed.
        (_, "/fhir/Patient/{id}/$everything") | (_, "/fhir/{type}/{id}/$everything") => {
            "everything"
        }
        ("GET", "/fhir/{compartment}/{id}/{type}") => "search-compartment",
        ("GET", "/fhir") | ("GET", "/fhir/") => "search-system",
        ("GET", "/fhir/Subscription/{id}/$status") => "subscription-status",
        ("GET", "/fhir/Subscription/{id}/$events") => "subscription-events",
        ("GET", "/fhir/_history") => "history-system",
        ("GET", "/fhir/{type}/_history") => "history-type",
        ("GET", "/fhir/{type}/{id}/_history") => "history-instance",
        ("GET", "/fhir/{type}/{id}/_history/{vid}") => "vread",
        ("GET", "/fhir/{type}/{id}") => "read",
        ("PUT", "/fhir/{type}/{id}") => "update",
        ("DELETE", "/fhir/{type}/{id}") => "delete",
        ("POST", "/fhir/{type}") => "create",
        ("PUT", "/fhir/{type}") => "conditional-update",
        ("DELETE", "/fhir/{type}") => "conditional-delete",
        ("GET", "/fhir/{type}") | ("POST", "/fhir/{type}/_search") => "search-type",
        (_, "/healthz") | (_, "/readyz") => "health",
        (_, "/metrics") => "metrics",
        (_, r) if r.starts_with("/admin") => "admin",
        (_, "/") | (_, "/docs") | (_, "/docs/openapi.json") => "docs",
        (_, r) if r.starts_with("/profiles") => "docs",
        _ => "other",
    }
}

// --- database ----------------------------------------------------------------------------------

/// Connections of the PostgreSQL pool by state (`in_use`, `idle`) and its maximum (`max`); read
/// at scrape time. In-use near max means requests queue for a connection (see docs/scaling.md).
pub static DB_POOL_CONNECTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "PostgreSQL pool connections by state (in_use, idle, max)",
            ),
            &["state"],
        )
        .expect("gauge"),
    )
});

/// Records the pool's current use; called when metrics are scraped.
pub fn record_pool(pool: &sqlx::PgPool) {
    let size = i64::from(pool.size());
    let idle = pool.num_idle() as i64;
    let max = i64::from(pool.options().get_max_connections());
    DB_POOL_CONNECTIONS
        .with_label_values(&["in_use"])
        .set((size - idle).max(0));
    DB_POOL_CONNECTIONS.with_label_values(&["idle"]).set(idle);
    DB_POOL_CONNECTIONS.with_label_values(&["max"]).set(max);
}

// --- change feed consumers: ingest and index lag -------------------------------------------------

/// Seconds since the oldest change a consumer has not yet processed was written (0 when it has
/// caught up), per consumer: `search-index` (index lag), `subscriptions`, and so on.
pub static CHANGE_FEED_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(
        GaugeVec::new(
            Opts::new(
                "change_feed_lag_seconds",
                "Age of the oldest change feed row a consumer's position has not passed (0 = caught up)",
            ),
            &["consumer"],
        )
        .expect("gauge"),
    )
});

/// The feed position each consumer has reached (its transaction id), to spot a stuck consumer
/// whose lag is hidden by a quiet feed.
pub static CHANGE_FEED_POSITION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "change_feed_position_txid",
                "Transaction id of the last change feed row a consumer processed",
            ),
            &["consumer"],
        )
        .expect("gauge"),
    )
});

/// Sets a consumer's lag from `Store::feed_lag` (the age of the oldest change its position has
/// not passed). The search indexer reports as `search-index`, the subscription dispatcher as
/// `subscriptions`, about once a second (`Store::record_consumer_lag`). Changes applied early,
/// above a horizon an older transaction holds, count until the position passes them: a lag
/// that grows while `search_index_lag_seconds` stays low means such a transaction runs.
pub fn record_feed_lag(consumer: &str, lag: std::time::Duration, position: i64) {
    CHANGE_FEED_LAG
        .with_label_values(&[consumer])
        .set(lag.as_secs_f64());
    CHANGE_FEED_POSITION
        .with_label_values(&[consumer])
        .set(position);
}

// --- audit ---------------------------------------------------------------------------------------

/// Latency of writing one audit record (the AuditEvent is written before data leaves, so this
/// is on every request's path), by outcome (`ok`, `error`).
pub static AUDIT_WRITE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new("audit_write_duration_seconds", "Audit record write latency")
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            &["outcome"],
        )
        .expect("histogram"),
    )
});

/// Rows per audit group commit: how much batching the chain head gets under load.
pub static AUDIT_GROUP_SIZE: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    register(
        prometheus::Histogram::with_opts(
            HistogramOpts::new("audit_group_rows", "Audit rows per group commit").buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        )
        .expect("histogram"),
    )
});

/// Time one audit group commit takes (the statement and its commit), apart from the time its
/// rows waited for the group ahead: what the chain costs on its own.
pub static AUDIT_GROUP_SECONDS: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    register(
        prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "audit_group_commit_seconds",
                "Time to append and commit one audit group",
            )
            .buckets(vec![
                0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("histogram"),
    )
});

/// Time one audit journal group takes to write and `fdatasync` (`[audit] durability =
/// "journal"`): what each request's row waits for besides the group ahead.
pub static AUDIT_JOURNAL_SYNC_SECONDS: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    register(
        prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "audit_journal_sync_seconds",
                "Time to write and fdatasync one audit journal group",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("histogram"),
    )
});

/// Time one shipping statement takes (journal rows appended to the chain with the journal's
/// shipped position).
pub static AUDIT_JOURNAL_SHIP_SECONDS: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    register(
        prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "audit_journal_ship_seconds",
                "Time to append one batch of audit journal rows to the chain",
            )
            .buckets(vec![
                0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("histogram"),
    )
});

/// Audit journal rows durable but not yet in the chain (IG reports and AuditEvent searches do
/// not see them yet).
pub static AUDIT_JOURNAL_UNSHIPPED_ROWS: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            Opts::new(
                "audit_journal_unshipped_rows",
                "Audit journal rows not yet shipped to the database, by lane",
            ),
            &["lane"],
        )
        .expect("gauge"),
    )
});

/// Bytes of the audit journal not yet shipped.
pub static AUDIT_JOURNAL_UNSHIPPED_BYTES: LazyLock<prometheus::IntGaugeVec> = LazyLock::new(|| {
    register(
        prometheus::IntGaugeVec::new(
            Opts::new(
                "audit_journal_unshipped_bytes",
                "Audit journal bytes not yet shipped to the database, by lane",
            ),
            &["lane"],
        )
        .expect("gauge"),
    )
});

/// Seconds since the audit journal and the chain were last level (0 while they are).
pub static AUDIT_JOURNAL_SHIP_LAG: LazyLock<prometheus::GaugeVec> = LazyLock::new(|| {
    register(
        prometheus::GaugeVec::new(
            Opts::new(
                "audit_journal_ship_lag_seconds",
                "Seconds since every durable audit journal row was last in the database, by lane",
            ),
            &["lane"],
        )
        .expect("gauge"),
    )
});

/// Times an audit write: `metrics::time_audit_write(audit::write(...)).await`.
pub async fn time_audit_write<T, E>(
    write: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    let result = write.await;
    AUDIT_WRITE
        .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Audit rows written (one per interaction).
pub static AUDIT_WRITES: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    register(
        prometheus::IntCounter::new("audit_writes_total", "Audit rows written").expect("counter"),
    )
});

/// Organisation-wide access facts for searches: served from the cache or loaded.
pub static ORG_GRANTS_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "access_org_facts_cache_total",
                "Searches whose organisation-wide access facts came from the cache (hit) or the database (miss)",
            ),
            &["outcome"],
        )
        .expect("counter"),
    )
});

/// Per-segment access filter bitsets: reused or computed.
pub static FILTER_CACHE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "search_access_filter_cache_total",
                "Index segments whose access filter came from the cache (hit) or was computed (miss)",
            ),
            &["outcome"],
        )
        .expect("counter"),
    )
});

/// Access decisions that withheld data, by reason.
pub static ACCESS_DENIALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "access_denials_total",
                "Requests or resources withheld by the access policy",
            ),
            &["reason"],
        )
        .expect("counter"),
    )
});

// --- identity ------------------------------------------------------------------------------------

/// Buckets for the linking timings: a unit links in milliseconds on a quiet machine, and waits
/// for seconds behind other linkers when its blocks are busy.
fn link_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
}

/// Time a write unit waits for its blocking-key locks (other linkers hold a shared key).
pub static IDENTITY_LOCK_WAIT: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    register(
        prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "identity_lock_wait_seconds",
                "Time a write unit waits for its identity blocking-key locks",
            )
            .buckets(link_buckets()),
        )
        .expect("histogram"),
    )
});

/// Time a write unit spends linking while it holds its blocking-key locks (the commit follows):
/// linkers sharing a key run one after another, so this bounds the linking rate.
pub static IDENTITY_LINK_LOCKED: LazyLock<prometheus::Histogram> = LazyLock::new(|| {
    register(
        prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "identity_link_locked_seconds",
                "Time a write unit links while holding its identity blocking-key locks",
            )
            .buckets(link_buckets()),
        )
        .expect("histogram"),
    )
});

/// Time of each step of linking a write unit, by `step`: `prefetch` (candidates read and scored
/// before the locks), `lock-wait` (waiting for the blocking-key locks), and under the locks
/// `settle` (current links, non-matches and rows written since the prefetch), `decide`
/// (decisions in memory), `links` (one statement: links, history and review items written,
/// Person heads locked, their members read), `members-again` (members read again when another
/// unit rewrote one of the Persons while this one waited for its head) and `persons` (Person
/// versions and their Provenance built and written). Where a unit's locked time goes, and so
/// what bounds the rate of linkers that share blocking keys.
pub static IDENTITY_LINK_STEP: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "identity_link_step_seconds",
                "Time of each step of linking a write unit",
            )
            .buckets(link_buckets()),
            &["step"],
        )
        .expect("histogram"),
    )
});

/// Records how long a step of linking took since `since`, and returns now (the next step's
/// start).
pub fn link_step(step: &str, since: std::time::Instant) -> std::time::Instant {
    let now = std::time::Instant::now();
    IDENTITY_LINK_STEP
        .with_label_values(&[step])
        .observe((now - since).as_secs_f64());
    now
}
