//! Prometheus metrics: one registry for the process, served at `/metrics` (bearer token
//! required, like every endpoint but `/fhir/metadata` and the health checks). Modules register
//! their own metrics here through `registry()`.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
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
        _ => "other",
    }
}
