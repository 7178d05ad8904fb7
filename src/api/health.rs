//! Liveness and readiness for the orchestrator; open, and free of data.
//!
//! `/readyz` runs every readiness check and answers 200 only when all pass; otherwise 503 with a
//! JSON body naming each failing check and why, so an operator (or `kubectl port-forward` and
//! curl) sees at once whether the database, the migrations or the local search index holds a pod
//! back. Built in: `database`, `migrations` and `search-index` (ready once the local index has
//! caught up with the change feed). Other components add theirs through `Readiness::register`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::{HttpResponse, web};
use futures_util::future::BoxFuture;
use serde_json::json;

use super::AppState;

/// A readiness check: `Ok` when ready, otherwise why not (no patient data).
pub type ReadinessCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A check that has not answered by then counts as failing: the probe itself times out soon after.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The checks `/readyz` runs besides the built-in ones, shared by every worker of one server.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<Vec<(&'static str, ReadinessCheck)>>>,
}

impl Readiness {
    /// Adds a check under `name`; `/readyz` reports it by that name.
    pub fn register(&self, name: &'static str, check: ReadinessCheck) {
        self.checks
            .write()
            .expect("readiness lock")
            .push((name, check));
    }

    fn checks(&self) -> Vec<(&'static str, ReadinessCheck)> {
        self.checks.read().expect("readiness lock").clone()
    }
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn bounded(check: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    tokio::time::timeout(CHECK_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())))
}

/// Ready when the database answers, its schema matches this binary, the index has caught up and
/// every registered check passes.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.repository.store();
    let mut results: Vec<(&str, Result<(), String>)> = Vec::new();
    let database = bounded(async {
        sqlx::query("SELECT 1")
            .execute(store.pool())
            .await
            .map(drop)
            .map_err(|e| format!("database unreachable: {e}"))
    })
    .await;
    let migrations = if database.is_ok() {
        bounded(store.readiness()).await
    } else {
        Err("not checked: the database is unreachable".into())
    };
    results.push(("database", database));
    results.push(("migrations", migrations));
    // The local index must have caught up with the change feed, or searches would miss writes.
    let index = if state.search.is_ready() {
        Ok(())
    } else {
        Err(format!(
            "still catching up with the change feed (the last applied change was {:.1} s old)",
            state.search.lag_seconds()
        ))
    };
    results.push(("search-index", index));
    for (name, check) in state.readiness.checks() {
        results.push((name, bounded(check()).await));
    }

    let reasons: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|why| format!("{name}: {why}")))
        .collect();
    let checks: serde_json::Map<String, serde_json::Value> = results
        .iter()
        .map(|(name, r)| {
            let value = match r {
                Ok(()) => json!({ "ready": true }),
                Err(why) => json!({ "ready": false, "reason": why }),
            };
            (name.to_string(), value)
        })
        .collect();
    if reasons.is_empty() {
        HttpResponse::Ok().json(json!({ "status": "ready", "checks": checks }))
    } else {
        tracing::warn!(reasons = %reasons.join("; "), "not ready");
        HttpResponse::ServiceUnavailable().json(json!({
            "status": "not ready",
            "reason": reasons.join("; "),
            "reasons": reasons,
            "checks": checks,
        }))
    }
}
