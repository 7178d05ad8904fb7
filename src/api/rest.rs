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

/// Runs one interaction through the write engine and renders its response.
async fn write_one(
    state: &AppState,
    req: &HttpRequest,
    entry: EntryRequest,
) -> Result<HttpResponse, ApiError> {
    let author = author(req)?;
    let mut outcomes = state
        .repository
        .execute_atomic(std::slice::from_ref(&entry), &author)
        .await
        .map_err(|f| ApiError::Interaction(f.error))?;
    let prefer = return_preference(req, ReturnPreference::Representation);
    Ok(write_response(&state.base_url, outcomes.remove(0), prefer))
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
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = path.into_inner();
    Ok(version_response(
        state.repository.read(&resource_type, &id).await?,
    ))
}

pub async fn vread(
    state: web::Data<AppState>,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id, version) = path.into_inner();
    Ok(version_response(
        state
            .repository
            .vread(&resource_type, &id, &version)
            .await?,
    ))
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
    let author = author(&req)?;
    // Bundles default to minimal responses: echoing hundreds of resources is rarely wanted.
    let prefer = return_preference(&req, ReturnPreference::Minimal);
    let results = state
        .repository
        .process_bundle(&bundle, &author, &state.base_url)
        .await?;
    Ok(super::response::json_response(
        StatusCode::OK,
        results.response(prefer).to_string(),
    ))
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
