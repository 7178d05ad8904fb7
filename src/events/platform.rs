//! Platform events: things operators must hear about (a dead letter, a subscription in error,
//! the search index falling behind). Each is logged, kept in `platform_event`, counted in
//! Prometheus and, when NATS is configured, published as `<platform prefix>.<event code>`.

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::fhir::instant::{format_instant, now_millis};

pub const DEAD_LETTER: &str = "dead-letter-1";
pub const SUBSCRIPTION_ERROR: &str = "subscription-error-1";
pub const INDEX_LAG: &str = "index-lag-1";

#[derive(Clone)]
pub struct Platform {
    pool: PgPool,
    nats: Option<async_nats::Client>,
    subject_prefix: String,
}

impl Platform {
    pub fn new(pool: PgPool, nats: Option<async_nats::Client>, subject_prefix: String) -> Platform {
        Platform {
            pool,
            nats,
            subject_prefix,
        }
    }

    /// Best effort: a platform event that cannot be stored or published is logged instead;
    /// it must never fail the work that raised it.
    pub async fn emit(&self, code: &str, detail: Value) {
        tracing::warn!(event = code, detail = %detail, "platform event");
        if let Err(e) = sqlx::query("INSERT INTO platform_event (code, detail) VALUES ($1, $2)")
            .bind(code)
            .bind(&detail)
            .execute(&self.pool)
            .await
        {
            tracing::error!(error = %e, event = code, "platform event not stored");
        }
        if let Some(client) = &self.nats {
            let body = json!({
                "event": code,
                "occurred": format_instant(now_millis()),
                "detail": detail,
            });
            let subject = format!("{}.{code}", self.subject_prefix);
            if let Err(e) = client.publish(subject, body.to_string().into()).await {
                tracing::error!(error = %e, event = code, "platform event not published");
            }
        }
    }

    /// Watches the search index's lag (`lag` reads it) and raises one `index-lag-1` platform
    /// event each time it passes `threshold_seconds` (again only after it has recovered), so an
    /// operator hears that searches are waiting on the index without a flood of events.
    pub async fn watch_index_lag(
        self,
        lag: impl Fn() -> f64 + Send + 'static,
        threshold_seconds: f64,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut raised = false;
        loop {
            let seconds = lag();
            if seconds > threshold_seconds && !raised {
                raised = true;
                self.emit(
                    INDEX_LAG,
                    json!({"lagSeconds": seconds, "thresholdSeconds": threshold_seconds}),
                )
                .await;
            } else if seconds <= threshold_seconds {
                raised = false;
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                _ = shutdown.changed() => break,
            }
        }
    }
}
