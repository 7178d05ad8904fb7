//! The information-governance view (privacy officers: `ig:audit`, `ig:review`) and policy
//! administration (`admin:policy`). None of it returns clinical data.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::access::{decider, note, require};
use super::error::ApiError;
use super::response::{BundleEntry, BundleOut, json_response, raw};
use crate::audit::reports::{self, AuditFilter};
use crate::fhir::outcome::IssueType;

fn pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("the query string is malformed: {e}")))
}

fn db(e: crate::store::StoreError) -> ApiError {
    ApiError::Interaction(e.into())
}

async fn filtered(
    state: &AppState,
    req: &HttpRequest,
) -> Result<Vec<(i64, crate::audit::AuditRecord)>, ApiError> {
    let d = decider(state, req)?;
    require(&d, req, "ig:audit", "use")?;
    let filter = AuditFilter::parse(&pairs(req)?).map_err(ApiError::bad_request)?;
    note(req, |n| n.interaction = Some("ig-audit-search"));
    reports::search(state.repository.store(), &filter)
        .await
        .map_err(db)
}

/// `GET [base]/AuditEvent?patient=&agent=&org=&date=&outcome=&purpose=&_count=`.
pub async fn audit_search(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let rows = filtered(&state, &req).await?;
    let mut bundle = BundleOut::new("searchset");
    bundle.total = Some(rows.len() as i64);
    for (seq, r) in &rows {
        bundle.entry.push(BundleEntry {
            full_url: Some(format!("{}/AuditEvent/{seq}", state.base_url)),
            resource: raw(crate::audit::event::audit_event(*seq, r).to_string()),
            search: Some(json!({"mode": "match"})),
            ..Default::default()
        });
    }
    note(&req, |n| n.returned = rows.len() as i32);
    Ok(bundle.into_response())
}

/// `GET /ig/audit.csv?…` (the AuditEvent search parameters).
pub async fn audit_csv(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let rows = filtered(&state, &req).await?;
    note(&req, |n| {
        n.interaction = Some("ig-audit-export");
        n.returned = rows.len() as i32;
    });
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(("content-disposition", "attachment; filename=\"audit.csv\""))
        .body(reports::csv(&rows)))
}

/// `GET /ig/break-glass[?pending=true]`.
pub async fn break_glass_list(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let d = decider(&state, &req)?;
    require(&d, &req, "ig:review", "use")?;
    let pending = pairs(&req)?
        .iter()
        .any(|(k, v)| k == "pending" && v == "true");
    note(&req, |n| n.interaction = Some("ig-break-glass-review"));
    let grants = crate::access::break_glass::list(state.repository.store(), pending)
        .await
        .map_err(db)?;
    let grants: Vec<Value> = grants.iter().map(|g| g.to_json()).collect();
    Ok(json_response(
        StatusCode::OK,
        json!({"grants": grants}).to_string(),
    ))
}

#[derive(Deserialize)]
pub struct Review {
    outcome: String,
    note: Option<String>,
}

/// `POST /ig/break-glass/{id}/review` with `{"outcome": "justified"|"follow-up", "note": …}`.
pub async fn break_glass_review(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Review>,
) -> Result<HttpResponse, ApiError> {
    let d = decider(&state, &req)?;
    require(&d, &req, "ig:review", "use")?;
    note(&req, |n| n.interaction = Some("ig-break-glass-reviewed"));
    let id = uuid::Uuid::parse_str(&path.into_inner())
        .map_err(|_| ApiError::bad_request("the grant id is not a UUID"))?;
    if !crate::access::break_glass::OUTCOMES.contains(&body.outcome.as_str()) {
        return Err(ApiError::bad_request(format!(
            "outcome must be one of {}",
            crate::access::break_glass::OUTCOMES.join(", ")
        )));
    }
    let reviewer = super::rest::caller(&req)?.id().to_string();
    let done = crate::access::break_glass::review(
        state.repository.store(),
        id,
        &reviewer,
        &body.outcome,
        body.note.as_deref(),
    )
    .await
    .map_err(db)?;
    if !done {
        return Err(ApiError::http(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            "no unreviewed break-glass grant with that id",
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"id": id.to_string(), "reviewed": true}).to_string(),
    ))
}

/// `GET /ig/reports/{name}?since=<date>` (default: the last 30 days).
pub async fn report(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let d = decider(&state, &req)?;
    require(&d, &req, "ig:audit", "use")?;
    let name = path.into_inner();
    note(&req, |n| n.interaction = Some("ig-report"));
    let since = match pairs(&req)?.iter().find(|(k, _)| k == "since") {
        Some((_, v)) => crate::access::facts::parse_date_time(v)
            .ok_or_else(|| ApiError::bad_request(format!("since '{v}' is not a date")))?,
        None => time::OffsetDateTime::now_utc() - time::Duration::days(30),
    };
    let rows = reports::report(state.repository.store(), &name, since, &d.policy.settings)
        .await
        .map_err(db)?
        .ok_or_else(|| {
            ApiError::http(
                StatusCode::NOT_FOUND,
                IssueType::NotFound,
                format!(
                    "no report '{name}' (reports: {})",
                    reports::REPORTS.join(", ")
                ),
            )
        })?;
    Ok(json_response(
        StatusCode::OK,
        json!({"report": name, "rows": rows}).to_string(),
    ))
}

/// `POST /admin/policy/reload`: re-reads consent-policies; a broken file is refused (422) and
/// the running policy stays.
pub async fn reload_policy(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let d = decider(&state, &req)?;
    require(&d, &req, "admin:policy", "use")?;
    note(&req, |n| n.interaction = Some("admin-policy-reload"));
    match state.access.reload().await {
        Ok(set) => Ok(json_response(
            StatusCode::OK,
            json!({"reloaded": true, "source": set.source}).to_string(),
        )),
        Err(e) => {
            tracing::warn!(error = %e, "policy reload refused; the running policy stays");
            Err(ApiError::http(
                StatusCode::UNPROCESSABLE_ENTITY,
                IssueType::Invalid,
                format!("policy refused, the running policy stays: {e}"),
            ))
        }
    }
}
