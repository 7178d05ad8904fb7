//! Instance and type level interactions: read, vread, create, update, delete and their
//! conditional forms.

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use super::AppState;
use super::body::{if_match, if_none_exist, parse_json, read_body, return_preference};
use super::error::ApiError;
use super::middleware::RequestId;
use super::response::{version_response, write_response};
use crate::access::Caller;
use crate::events::idempotency;
use crate::fhir::outcome::IssueType;
use crate::interactions::bundle::ReturnPreference;
use crate::interactions::{EntryAction, EntryRequest, Repository, Target};
use crate::store::Author;

pub fn caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or(ApiError::Auth(crate::access::AuthError::Missing))
}

pub fn author(req: &HttpRequest) -> Result<Author, ApiError> {
    let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
    Ok(caller(req)?.author(request_id.as_deref()))
}

/// `X-Shcr-Sandbox: true`: a trust's trial run of a write; nothing is stored.
pub const SANDBOX_HEADER: &str = "x-shcr-sandbox";

pub fn sandbox_requested(req: &HttpRequest) -> bool {
    req.headers()
        .get(SANDBOX_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Marks a sandbox response, so no one mistakes it for a stored write.
fn mark_sandbox(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static(SANDBOX_HEADER),
        actix_web::http::header::HeaderValue::from_static("true"),
    );
    response
}

/// Runs one interaction through the write engine and renders its response.
async fn write_one(
    state: &AppState,
    req: &HttpRequest,
    entry: EntryRequest,
) -> Result<HttpResponse, ApiError> {
    check_write(state, req, &entry).await?;
    if sandbox_requested(req) {
        // No Idempotency-Key bookkeeping: a rolled-back write has nothing to replay.
        let mut outcomes = state
            .repository
            .sandboxed()
            .execute_atomic(std::slice::from_ref(&entry), &author(req)?)
            .await
            .map_err(|f| ApiError::Interaction(f.error))?;
        let prefer = return_preference(req, ReturnPreference::Representation);
        return Ok(mark_sandbox(write_response(
            &state.base_url,
            outcomes.remove(0),
            prefer,
        )));
    }
    if let Some(key) = idempotency_key(req)? {
        return write_once(state, req, entry, &key).await;
    }
    let author = author(req)?;
    let mut outcomes = state
        .repository
        .execute_atomic(std::slice::from_ref(&entry), &author)
        .await
        .map_err(|f| ApiError::Interaction(f.error))?;
    let prefer = return_preference(req, ReturnPreference::Representation);
    let outcome = guard_outcome(state, req, outcomes.remove(0)).await?;
    Ok(write_response(&state.base_url, outcome, prefer))
}

/// Writes need the role's `write` permission on the type. (That a trust's system changes only
/// what its own organisation wrote is the write engine's rule, for every door.)
async fn check_write(
    state: &AppState,
    req: &HttpRequest,
    entry: &EntryRequest,
) -> Result<(), ApiError> {
    let d = super::access::decider(state, req)?;
    super::access::require(&d, req, &entry.resource_type, "write")
}

/// A conditional create that matched returns the existing resource, which another trust may
/// have written: it goes through the read decision, and a withheld one is not echoed.
async fn guard_outcome(
    state: &AppState,
    req: &HttpRequest,
    mut outcome: crate::interactions::EntryOutcome,
) -> Result<crate::interactions::EntryOutcome, ApiError> {
    if outcome.written || outcome.content.is_none() {
        // The audit records whose record a write touched.
        if let (Some(id), Some(content)) = (&outcome.id, &outcome.content) {
            let mut patients = std::collections::BTreeSet::new();
            super::access::referenced_patients(&outcome.resource_type, id, content, &mut patients);
            // Writing is the caller's own organisation's record, not a look at another's.
            super::access::note(req, |n| {
                n.patients.extend(patients);
                n.relationship.get_or_insert(true);
            });
        }
        return Ok(outcome);
    }
    let (Some(id), Some(version_id)) = (outcome.id.clone(), outcome.version_id) else {
        return Ok(outcome);
    };
    let row = state
        .repository
        .store()
        .vread(&outcome.resource_type, &id, version_id)
        .await
        .map_err(|e| ApiError::Interaction(e.into()))?;
    let mut d = super::access::decider(state, req)?;
    if let Some(row) = row {
        let what = format!("{}/{id}", outcome.resource_type);
        if super::access::guard_row(state, req, &mut d, &row, &what)
            .await
            .is_err()
        {
            outcome.content = None;
        }
    }
    Ok(outcome)
}

/// `Idempotency-Key`: a client's retry of a write returns the first response instead of
/// writing again (keys are per caller organisation; see `events::idempotency`).
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("").trim();
    if key.is_empty()
        || key.len() > idempotency::MAX_KEY_LEN
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {} printable characters",
            idempotency::MAX_KEY_LEN
        )));
    }
    Ok(Some(key.to_string()))
}

async fn write_once(
    state: &AppState,
    req: &HttpRequest,
    entry: EntryRequest,
    key: &str,
) -> Result<HttpResponse, ApiError> {
    let author = author(req)?;
    let org = author.org.clone().unwrap_or_default();
    let body = match &entry.action {
        EntryAction::Create { resource, .. } | EntryAction::Update { resource, .. } => {
            resource.to_string()
        }
        _ => String::new(),
    };
    let fingerprint = idempotency::fingerprint(&[
        req.method().as_str().as_bytes(),
        req.uri().to_string().as_bytes(),
        format!("{:?}", if_match(req)?).as_bytes(),
        body.as_bytes(),
    ]);
    let mut hook = idempotency::RestIdempotency::new(&org, key, fingerprint.clone());
    let prefer = return_preference(req, ReturnPreference::Representation);
    let outcome = state
        .repository
        .execute_with_hook(std::slice::from_ref(&entry), &author, false, &mut hook)
        .await
        .map_err(|f| ApiError::Interaction(f.error))?;
    if let Some(mut outcomes) = outcome {
        let outcome = guard_outcome(state, req, outcomes.remove(0)).await?;
        return Ok(write_response(&state.base_url, outcome, prefer));
    }
    let (stored_fingerprint, stored) = hook.repeat.expect("abort means a repeat");
    if stored_fingerprint != fingerprint {
        return Err(ApiError::http(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::Duplicate,
            "this Idempotency-Key was already used for a different request; use a new key",
        ));
    }
    let first = &stored["outcomes"][0];
    let status = first["status"].as_u64().unwrap_or(200) as u16;
    let resource_type = first["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let id = first["id"].as_str().map(str::to_string);
    let version_id = first["versionId"].as_i64();
    // Versions never change, so the stored version is the response body the first time.
    let row = match (&id, version_id) {
        (Some(id), Some(v)) if status != 204 => state
            .repository
            .vread(&resource_type, id, &v.to_string())
            .await
            .ok(),
        _ => None,
    };
    let outcome = crate::interactions::EntryOutcome {
        status,
        resource_type,
        id,
        version_id,
        last_updated: row.as_ref().map(|r| r.last_updated),
        content: row.and_then(|r| r.content),
        message: first["message"].as_str().unwrap_or_default().to_string(),
        written: false,
    };
    let mut response = write_response(&state.base_url, outcome, prefer);
    response.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static("idempotent-replayed"),
        actix_web::http::header::HeaderValue::from_static("true"),
    );
    Ok(response)
}

/// Query string without the parameters that shape the response, as conditional criteria.
fn criteria_query(req: &HttpRequest) -> Option<String> {
    let kept: Vec<&str> = req
        .query_string()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("_format=") && !p.starts_with("_pretty="))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

pub async fn read(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = path.into_inner();
    let mut d = super::access::decider(&state, &req)?;
    Repository::check_type(&resource_type)?;
    super::access::require(&d, &req, &resource_type, "read")?;
    let what = format!("{resource_type}/{id}");
    // A clinician's read fetches the version and its patients' facts in one statement, unless
    // the request opens a break-glass grant first.
    let preload = match &d.who {
        crate::access::Who::User { org, user_id, .. }
            if !req
                .headers()
                .contains_key(crate::access::break_glass::HEADER_CODE) =>
        {
            Some((org.clone(), user_id.clone()))
        }
        _ => None,
    };
    let (found, preloaded) = match preload {
        Some((org, user)) => {
            Repository::check_id(&id)?;
            let r = crate::access::read_facts::read(
                state.repository.store(),
                &resource_type,
                &id,
                &org,
                &user,
                d.policy.settings.relationship_window_days,
                crate::access::read_facts::Compartments {
                    key: state.repository.compartment_key(),
                    base: &state.search.base,
                },
            )
            .await
            .map_err(|e| ApiError::Interaction(e.into()))?;
            (
                Repository::current_row(r.current, &resource_type, &id),
                Some((r.grants, r.covered, r.facts)),
            )
        }
        None => (state.repository.read(&resource_type, &id).await, None),
    };
    let row = match found {
        Ok(row) => row,
        Err(crate::interactions::Error::Gone(g)) => {
            // 410 says the resource existed: only to callers who could see it.
            gone_or_hidden(&state, &req, &mut d, &resource_type, &id).await?;
            return Err(ApiError::Interaction(crate::interactions::Error::Gone(g)));
        }
        Err(e) => return Err(e.into()),
    };
    super::access::guard_row_with(&state, &req, &mut d, &row, &what, preloaded).await?;
    Ok(version_response(row))
}

/// Ok when the caller may learn that a deleted resource existed (it could see its last
/// content); otherwise the 404 of a missing resource.
async fn gone_or_hidden(
    state: &AppState,
    req: &HttpRequest,
    d: &mut crate::access::Decider,
    resource_type: &str,
    id: &str,
) -> Result<(), ApiError> {
    let last = state
        .repository
        .store()
        .last_content_version(resource_type, id)
        .await
        .map_err(|e| ApiError::Interaction(e.into()))?;
    match last {
        Some(row) => {
            super::access::guard_row(state, req, d, &row, &format!("{resource_type}/{id}")).await
        }
        None => Err(super::access::hidden(&format!("{resource_type}/{id}"))),
    }
}

pub async fn vread(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id, version) = path.into_inner();
    let mut d = super::access::decider(&state, &req)?;
    Repository::check_type(&resource_type)?;
    super::access::require(&d, &req, &resource_type, "read")?;
    let what = format!("{resource_type}/{id}/_history/{version}");
    let row = match state.repository.vread(&resource_type, &id, &version).await {
        Ok(row) => row,
        Err(crate::interactions::Error::Gone(g)) => {
            gone_or_hidden(&state, &req, &mut d, &resource_type, &id).await?;
            return Err(ApiError::Interaction(crate::interactions::Error::Gone(g)));
        }
        Err(e) => return Err(e.into()),
    };
    super::access::guard_row(&state, &req, &mut d, &row, &what).await?;
    Ok(version_response(row))
}

pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let resource_type = path.into_inner();
    Repository::check_type(&resource_type)?;
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let resource = parse_json(&body)?;
    super::governance::check_subscription(&req, &resource)?;
    let entry = EntryRequest {
        resource_type,
        full_url: None,
        action: EntryAction::Create {
            resource,
            if_none_exist: if_none_exist(&req),
        },
    };
    write_one(&state, &req, entry).await
}

pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = path.into_inner();
    Repository::check_type(&resource_type)?;
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let resource = parse_json(&body)?;
    super::governance::check_subscription(&req, &resource)?;
    let entry = EntryRequest {
        resource_type,
        full_url: None,
        action: EntryAction::Update {
            target: Target::Id(id),
            resource,
            if_match: if_match(&req)?,
        },
    };
    write_one(&state, &req, entry).await
}

pub async fn conditional_update(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let resource_type = path.into_inner();
    Repository::check_type(&resource_type)?;
    let criteria = criteria_query(&req).ok_or_else(|| {
        ApiError::http(
            StatusCode::METHOD_NOT_ALLOWED,
            IssueType::NotSupported,
            format!("PUT {resource_type} needs an id (PUT {resource_type}/[id]) or search criteria (conditional update)"),
        )
    })?;
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let resource = parse_json(&body)?;
    super::governance::check_subscription(&req, &resource)?;
    let entry = EntryRequest {
        resource_type,
        full_url: None,
        action: EntryAction::Update {
            target: Target::Criteria(criteria),
            resource,
            if_match: if_match(&req)?,
        },
    };
    write_one(&state, &req, entry).await
}

pub async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = path.into_inner();
    let entry = EntryRequest {
        resource_type,
        full_url: None,
        action: EntryAction::Delete {
            target: Target::Id(id),
            if_match: if_match(&req)?,
        },
    };
    write_one(&state, &req, entry).await
}

pub async fn conditional_delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let resource_type = path.into_inner();
    Repository::check_type(&resource_type)?;
    let criteria = criteria_query(&req).ok_or_else(|| {
        ApiError::http(
            StatusCode::METHOD_NOT_ALLOWED,
            IssueType::NotSupported,
            format!("DELETE {resource_type} needs an id or search criteria; deleting a whole type is not supported"),
        )
    })?;
    let entry = EntryRequest {
        resource_type,
        full_url: None,
        action: EntryAction::Delete {
            target: Target::Criteria(criteria),
            if_match: if_match(&req)?,
        },
    };
    write_one(&state, &req, entry).await
}

/// `POST [base]` with a transaction or batch Bundle.
pub async fn bundle(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let bundle = parse_json(&body)?;
    super::governance::check_bundle_subscriptions(&req, &bundle)?;
    let author = author(&req)?;
    let mut d = super::access::decider(&state, &req)?;
    for entry in bundle["entry"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let method = entry["request"]["method"].as_str().unwrap_or("");
        let url_type = entry["request"]["url"]
            .as_str()
            .and_then(|u| u.split(['/', '?']).next())
            .unwrap_or("");
        let t = entry["resource"]["resourceType"]
            .as_str()
            .unwrap_or(url_type);
        if crate::validation::is_resource_type(t) {
            let act = if method == "GET" { "read" } else { "write" };
            super::access::require(&d, &req, t, act)?;
        }
    }
    // Bundles default to minimal responses: echoing hundreds of resources is rarely wanted.
    let prefer = return_preference(&req, ReturnPreference::Minimal);
    let sandbox = sandbox_requested(&req);
    let repository = if sandbox {
        state.repository.sandboxed()
    } else {
        state.repository.clone()
    };
    let results = repository
        .process_bundle(&bundle, &author, &state.base_url)
        .await?;
    let mut response = results.response(prefer);
    guard_bundle_response(&state, &req, &mut d, &mut response).await?;
    let response = super::response::json_response(StatusCode::OK, response.to_string());
    Ok(if sandbox {
        mark_sandbox(response)
    } else {
        response
    })
}

/// Resources a Bundle response carries (reads inside a batch, representations of writes) go
/// through the same decision as a read; a denied one becomes the entry of a missing resource.
async fn guard_bundle_response(
    state: &AppState,
    req: &HttpRequest,
    d: &mut crate::access::Decider,
    response: &mut serde_json::Value,
) -> Result<(), ApiError> {
    if matches!(d.who, crate::access::Who::Unrestricted) {
        return Ok(());
    }
    let Some(entries) = response.get_mut("entry").and_then(|e| e.as_array_mut()) else {
        return Ok(());
    };
    let keys: Vec<(String, String)> = entries
        .iter()
        .filter_map(|e| {
            let r = e.get("resource")?;
            Some((
                r["resourceType"].as_str()?.to_string(),
                r["id"].as_str()?.to_string(),
            ))
        })
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    let heads = state
        .repository
        .store()
        .heads(&keys)
        .await
        .map_err(|e| ApiError::Interaction(e.into()))?;
    let orgs: std::collections::HashMap<(String, String), Option<String>> = heads
        .into_iter()
        .map(|h| ((h.resource_type, h.id), h.author_org))
        .collect();
    let mut facts = Vec::new();
    for e in entries.iter() {
        facts.push(e.get("resource").and_then(|r| {
            let t = r["resourceType"].as_str()?;
            let id = r["id"].as_str()?;
            let org = orgs
                .get(&(t.to_string(), id.to_string()))
                .cloned()
                .flatten();
            Some(crate::access::Facts::of(
                &state.search,
                t,
                id,
                r,
                org.as_deref(),
            ))
        }));
    }
    let mut patients: Vec<String> = facts
        .iter()
        .flatten()
        .flat_map(|f| f.patients.iter().cloned())
        .collect();
    patients.sort();
    patients.dedup();
    super::access::load_grants(
        state,
        req,
        d,
        crate::access::Scope::Patients(&patients),
        None,
    )
    .await?;
    for (e, f) in entries.iter_mut().zip(facts) {
        let Some(f) = f else { continue };
        let v = d.check(&f, "read");
        if v.allowed() {
            super::access::note_released(req, d, &f.patients, None);
        } else {
            super::access::note_denied(req, v);
            if let Some(obj) = e.as_object_mut() {
                obj.remove("resource");
                obj.insert(
                    "response".into(),
                    serde_json::json!({"status": "404 Not Found"}),
                );
            }
        }
    }
    Ok(())
}

pub async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::http(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueType::NotSupported,
        format!(
            "{} is not allowed on {}",
            req.method(),
            req.match_pattern()
                .unwrap_or_else(|| req.path().to_string())
        ),
    ))
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::http(
        StatusCode::NOT_FOUND,
        IssueType::NotFound,
        format!("no endpoint at {}", req.path()),
    ))
}
