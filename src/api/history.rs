//! `_history` at system, type and instance level.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::response::{BundleEntry, BundleLink, BundleOut, raw};
use crate::fhir::id::etag;
use crate::fhir::instant::{format_instant, parse_instant};
use crate::store::{HistoryCursor, HistoryQuery, HistoryScope};

pub const DEFAULT_COUNT: i64 = 50;
pub const MAX_COUNT: i64 = 1000;

fn parse_query(req: &HttpRequest) -> Result<HistoryQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_request(format!("the query string is malformed: {e}")))?;
    let mut query = HistoryQuery {
        since: None,
        count: DEFAULT_COUNT,
        cursor: None,
    };
    for (name, value) in pairs {
        match name.as_str() {
            "_count" => {
                query.count = value
                    .parse::<i64>()
                    .ok()
                    .filter(|c| *c >= 1)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "_count '{value}' must be a positive integer"
                        ))
                    })?
                    .min(MAX_COUNT);
            }
            "_since" => {
                query.since = Some(parse_instant(&value).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "_since '{value}' must be an instant such as 2026-11-25T10:00:00Z"
                    ))
                })?);
            }
            "_cursor" => {
                query.cursor = Some(HistoryCursor::decode(&value).ok_or_else(|| {
                    ApiError::bad_request(
                        "_cursor is not one this server issued; follow the Bundle's next link",
                    )
                })?);
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown _history parameter '{other}' (supported: _count, _since)"
                )));
            }
        }
    }
    Ok(query)
}

fn page_url(path: &str, query: &HistoryQuery, cursor: Option<&HistoryCursor>) -> String {
    let mut params = vec![("_count".to_string(), query.count.to_string())];
    if let Some(since) = query.since {
        params.push(("_since".into(), format_instant(since)));
    }
    if let Some(cursor) = cursor {
        params.push(("_cursor".into(), cursor.encode()));
    }
    format!(
        "{path}?{}",
        serde_urlencoded::to_string(&params).expect("encodable")
    )
}

async fn history(
    state: &AppState,
    req: &HttpRequest,
    scope: HistoryScope,
) -> Result<HttpResponse, ApiError> {
    let query = parse_query(req)?;
    let mut d = super::access::decider(state, req)?;
    if let HistoryScope::Type(t) | HistoryScope::Instance(t, _) = &scope {
        crate::interactions::Repository::check_type(t)?;
        super::access::require(&d, req, t, "read")?;
    }
    let mut page = state.repository.history(&scope, &query).await?;
    // History is read from PostgreSQL, not the index: each version is decided as a read.
    let facts: Vec<Option<crate::access::Facts>> = page
        .entries
        .iter()
        .map(|row| super::access::facts(state, row))
        .collect();
    let mut patients: Vec<String> = facts
        .iter()
        .flatten()
        .flat_map(|f| f.patients.iter().cloned())
        .collect();
    patients.sort();
    patients.dedup();
    let single = match &scope {
        HistoryScope::Instance(..) if patients.len() == 1 => Some(patients[0].as_str()),
        _ => None,
    };
    super::access::load_grants(
        state,
        req,
        &mut d,
        crate::access::Scope::Patients(&patients),
        single,
    )
    .await?;
    let before = page.entries.len();
    let mut kept = Vec::with_capacity(before);
    for row in std::mem::take(&mut page.entries) {
        let v = super::access::verdict(state, &d, &row, "read");
        match v {
            crate::access::Verdict::Allow { break_glass } => {
                if let Some(f) = super::access::facts(state, &row) {
                    super::access::note_released(req, &d, &f.patients, break_glass);
                }
                kept.push(row);
            }
            deny => super::access::note_denied(req, deny),
        }
    }
    let filtered = kept.len() < before;
    page.entries = kept;
    if let HistoryScope::Instance(t, id) = &scope
        && page.entries.is_empty()
        && filtered
    {
        // The same answer as for a resource that never existed.
        return Err(super::access::hidden(&format!("{t}/{id}")));
    }
    if filtered || matches!(d.who, crate::access::Who::User { .. }) {
        // A count over versions the caller may not see would tell what it may not see.
        page.total = None;
    }
    super::access::note(req, |n| n.returned = page.entries.len() as i32);
    let path = match &scope {
        HistoryScope::System => format!("{}/_history", state.base_url),
        HistoryScope::Type(t) => format!("{}/{t}/_history", state.base_url),
        HistoryScope::Instance(t, id) => format!("{}/{t}/{id}/_history", state.base_url),
    };
    let mut bundle = BundleOut::new("history");
    bundle.total = page.total;
    bundle.link.push(BundleLink {
        relation: "self",
        url: page_url(&path, &query, query.cursor.as_ref()),
    });
    bundle.link.push(BundleLink {
        relation: "first",
        url: page_url(&path, &query, None),
    });
    if let Some(next) = &page.next {
        bundle.link.push(BundleLink {
            relation: "next",
            url: page_url(&path, &query, Some(next)),
        });
    }
    for row in page.entries {
        let status = match (row.method.as_str(), row.version_id) {
            ("DELETE", _) => "200 OK",
            (_, 1) => "201 Created",
            _ => "200 OK",
        };
        let url = match row.method.as_str() {
            "POST" => row.resource_type.clone(),
            _ => format!("{}/{}", row.resource_type, row.id),
        };
        bundle.entry.push(BundleEntry {
            full_url: Some(format!(
                "{}/{}/{}",
                state.base_url, row.resource_type, row.id
            )),
            request: Some(json!({ "method": row.method, "url": url })),
            response: Some(json!({
                "status": status,
                "etag": etag(row.version_id),
                "lastModified": format_instant(row.last_updated),
            })),
            resource: row.content.and_then(raw),
            search: None,
        });
    }
    Ok(bundle.into_response())
}

pub async fn system(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    history(&state, &req, HistoryScope::System).await
}

pub async fn of_type(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    history(&state, &req, HistoryScope::Type(path.into_inner())).await
}

pub async fn instance(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (t, id) = path.into_inner();
    history(&state, &req, HistoryScope::Instance(t, id)).await
}
