//! Liveness and readiness for the orchestrator; open, and free of data.

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready when the database answers and its schema matches this binary.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let index_ready = state.search.is_ready();
    match state.repository.store().readiness().await {
        Ok(()) if !index_ready => HttpResponse::ServiceUnavailable().json(json!({
            "status": "not ready",
            "reason": "the search index is still catching up with the database"
        })),
        Ok(()) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Err(reason) => {
            tracing::warn!(%reason, "not ready");
            HttpResponse::ServiceUnavailable()
                .json(json!({ "status": "not ready", "reason": reason }))
        }
    }
}
