//! Runtime product metrics: requests, latency and error classes per consumer and interaction,
//! throttled requests, use of deprecated features, and data freshness (source event time to
//! searchable). Exported on `/metrics` and summarised as JSON for the portal (`/admin/usage`).
//!
//! Labels are client ids from the registry and interaction names from the router, never
//! anything from a request's content, so the series stay few and hold no patient data.

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use serde_json::{Value, json};

use crate::metrics::register;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const FRESHNESS_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "api_requests_total",
                "Requests per API consumer and interaction, by outcome (ok or error class)",
            ),
            &["client", "interaction", "outcome"],
        )
        .expect("counter"),
    )
});

pub static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "api_request_duration_seconds",
                "Request latency per API consumer and interaction",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["client", "interaction"],
        )
        .expect("histogram"),
    )
});

pub static THROTTLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "api_throttled_total",
                "Requests refused with 429 per API consumer, by limit (rate, concurrency)",
            ),
            &["client", "limit"],
        )
        .expect("counter"),
    )
});

pub static DEPRECATED_USE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "api_deprecated_use_total",
                "Requests using a deprecated feature, per API consumer: who to contact before a sunset",
            ),
            &["client", "feature"],
        )
        .expect("counter"),
    )
});

pub static FRESHNESS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "data_freshness_seconds",
                "From the source event's timestamp to searchable in shcr, per sending client",
            )
            .buckets(FRESHNESS_BUCKETS.to_vec()),
            &["client"],
        )
        .expect("histogram"),
    )
});

/// The error class of a response status, for labels and the summary.
pub fn outcome_class(status: u16) -> &'static str {
    match status {
        0..=399 => "ok",
        400 | 422 => "invalid",
        401 => "unauthenticated",
        403 => "forbidden",
        404 | 410 => "not-found",
        405 => "not-supported",
        406 | 415 => "media-type",
        409 | 412 => "conflict",
        413 => "too-large",
        429 => "throttled",
        400..=499 => "client-error",
        503 => "unavailable",
        _ => "server-error",
    }
}

#[derive(Default, Clone)]
struct Stat {
    requests: u64,
    outcomes: BTreeMap<&'static str, u64>,
    latency_sum: f64,
    latency_max: f64,
}

#[derive(Default, Clone)]
struct Freshness {
    events: u64,
    sum: f64,
    max: f64,
    last: f64,
}

/// In-process aggregates behind the JSON summary (the Prometheus series are the durable,
/// cross-replica view; this is what this replica saw since it started).
#[derive(Default)]
struct Aggregates {
    requests: HashMap<(String, &'static str), Stat>,
    throttled: HashMap<String, u64>,
    deprecated: HashMap<(String, String), u64>,
    freshness: HashMap<String, Freshness>,
}

static AGGREGATES: LazyLock<Mutex<Aggregates>> = LazyLock::new(Mutex::default);

pub fn record_request(client: &str, interaction: &'static str, status: u16, seconds: f64) {
    let class = outcome_class(status);
    REQUESTS
        .with_label_values(&[client, interaction, class])
        .inc();
    LATENCY
        .with_label_values(&[client, interaction])
        .observe(seconds);
    let mut a = AGGREGATES.lock().expect("usage lock");
    let s = a
        .requests
        .entry((client.to_string(), interaction))
        .or_default();
    s.requests += 1;
    *s.outcomes.entry(class).or_default() += 1;
    s.latency_sum += seconds;
    s.latency_max = s.latency_max.max(seconds);
}

pub fn record_throttled(client: &str, limit: &str) {
    THROTTLED.with_label_values(&[client, limit]).inc();
    *AGGREGATES
        .lock()
        .expect("usage lock")
        .throttled
        .entry(client.to_string())
        .or_default() += 1;
}

pub fn record_deprecated(client: &str, feature: &str) {
    DEPRECATED_USE.with_label_values(&[client, feature]).inc();
    *AGGREGATES
        .lock()
        .expect("usage lock")
        .deprecated
        .entry((client.to_string(), feature.to_string()))
        .or_default() += 1;
}

pub fn record_freshness(client: &str, seconds: f64) {
    let seconds = seconds.max(0.0);
    FRESHNESS.with_label_values(&[client]).observe(seconds);
    let mut a = AGGREGATES.lock().expect("usage lock");
    let f = a.freshness.entry(client.to_string()).or_default();
    f.events += 1;
    f.sum += seconds;
    f.max = f.max.max(seconds);
    f.last = seconds;
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn slot<'a>(clients: &'a mut BTreeMap<String, Value>, client: &str) -> &'a mut Value {
    clients.entry(client.to_string()).or_insert_with(|| {
        json!({"client": client, "requests": 0, "errors": 0, "throttled": 0,
               "interactions": {}, "deprecatedUse": {}, "freshness": null})
    })
}

/// The JSON summary the portal shows: per consumer, per interaction.
pub fn summary() -> Value {
    let a = AGGREGATES.lock().expect("usage lock");
    let mut clients: BTreeMap<String, Value> = BTreeMap::new();
    let mut keys: Vec<_> = a.requests.keys().cloned().collect();
    keys.sort();
    for key in keys {
        let s = &a.requests[&key];
        let c = slot(&mut clients, &key.0);
        let errors: u64 = s
            .outcomes
            .iter()
            .filter(|(k, _)| **k != "ok")
            .map(|(_, v)| v)
            .sum();
        c["requests"] = json!(c["requests"].as_u64().unwrap_or(0) + s.requests);
        c["errors"] = json!(c["errors"].as_u64().unwrap_or(0) + errors);
        c["interactions"][key.1] = json!({
            "requests": s.requests,
            "outcomes": s.outcomes,
            "meanLatencyMs": round(s.latency_sum / s.requests.max(1) as f64 * 1000.0),
            "maxLatencyMs": round(s.latency_max * 1000.0),
        });
    }
    for (client, n) in &a.throttled {
        slot(&mut clients, client)["throttled"] = json!(n);
    }
    for ((client, feature), n) in &a.deprecated {
        slot(&mut clients, client)["deprecatedUse"][feature] = json!(n);
    }
    for (client, f) in &a.freshness {
        slot(&mut clients, client)["freshness"] = json!({
            "events": f.events,
            "meanSeconds": round(f.sum / f.events.max(1) as f64),
            "maxSeconds": round(f.max),
            "lastSeconds": round(f.last),
        });
    }
    json!({
        "note": "since this replica started; /metrics has the same as Prometheus series",
        "clients": clients.into_values().collect::<Vec<_>>(),
    })
}
