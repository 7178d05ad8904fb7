//! Prometheus metrics of the events module (registered in the one registry, served at
//! `/metrics`).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};

use crate::metrics::register;

use super::error::MessageError;
use super::ingest::{Disposition, Processed};

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Inbound messages by channel and outcome (applied, duplicate, stale, rejected, transient).
pub static INBOUND: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "events_inbound_messages_total",
                "Inbound messages by outcome",
            ),
            &["outcome"],
        )
        .expect("counter"),
    )
});

pub static PROCESSING: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "events_message_processing_seconds",
                "Time to apply one inbound message (parse, write, commit)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("histogram"),
    )
});

/// From the broker accepting a message to its commit in PostgreSQL.
pub static INGEST_LAG: LazyLock<Histogram> = LazyLock::new(|| {
    register(
        Histogram::with_opts(
            HistogramOpts::new(
                "events_ingest_lag_seconds",
                "NATS publish to PostgreSQL commit, per applied message",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("histogram"),
    )
});

pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "events_dead_letters_total",
                "Messages dead-lettered, by reason",
            ),
            &["reason"],
        )
        .expect("counter"),
    )
});

/// Dead letters not yet replayed (refreshed by the consumer and the CLI).
pub static DEAD_LETTERS_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "events_dead_letters_pending",
            "Dead letters waiting for a fix and replay",
        )
        .expect("gauge"),
    )
});

pub static NOTIFICATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "subscription_notifications_total",
                "Notification deliveries by channel, type and outcome",
            ),
            &["channel", "type", "outcome"],
        )
        .expect("counter"),
    )
});

/// From the change's commit to the notification's acceptance by the receiver.
pub static DELIVERY_LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "subscription_delivery_lag_seconds",
                "Change committed to notification delivered",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["channel"],
        )
        .expect("histogram"),
    )
});

pub static SUBSCRIPTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("subscriptions", "Subscriptions by status"),
            &["status"],
        )
        .expect("gauge"),
    )
});

pub static SUBSCRIPTION_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "subscription_errors_total",
                "Subscriptions that went into error after repeated failures",
            ),
            &["channel"],
        )
        .expect("counter"),
    )
});

pub fn observe_processing(elapsed: Duration, result: &Result<Processed, MessageError>) {
    PROCESSING.observe(elapsed.as_secs_f64());
    let outcome = match result {
        Ok(p) if p.disposition == Disposition::Duplicate => "duplicate",
        Ok(p) if p.stale > 0 && p.written == 0 => "stale",
        Ok(_) => "applied",
        Err(e) if e.transient => "transient",
        Err(_) => "rejected",
    };
    INBOUND.with_label_values(&[outcome]).inc();
}
