//! Cross-cutting request handling: request ids and access logs, authentication, content
//! negotiation, and `_pretty`.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, web};
use tracing::Instrument;

use super::AppState;
use super::error::ApiError;
use crate::access::{AuthError, Caller};
use crate::fhir::outcome::IssueType;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The correlation id of a request, accepted from the client or generated.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Accepts a client's id only if it is short and printable, so it is safe in logs and headers.
fn acceptable_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 200 && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Outermost layer: assigns the request id, runs the request in a span carrying it, echoes it on
/// the response and writes one access-log line (no query strings or bodies: they hold patient data).
pub async fn request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let span = tracing::info_span!("request", request_id = %id, method = %method);
    // Inner layers answer errors as responses (see `reject`), so every response gets the id.
    let mut response = next
        .call(req)
        .instrument(span.clone())
        .await?
        .map_into_boxed_body();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let _entered = span.enter();
    let request = response.request();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = response.status().as_u16();
    let resource_type = request
        .match_info()
        .get("type")
        .filter(|t| crate::validation::is_resource_type(t))
        .unwrap_or("");
    crate::metrics::HTTP_REQUESTS
        .with_label_values(&[
            crate::metrics::interaction(method.as_str(), &route),
            resource_type,
            &format!("{}xx", status / 100),
        ])
        .observe(started.elapsed().as_secs_f64());
    if status >= 400 {
        crate::metrics::HTTP_ERRORS
            .with_label_values(&[&status.to_string()])
            .inc();
    }
    let caller = request
        .extensions()
        .get::<Caller>()
        .map(|c| format!("{}:{}", c.kind(), c.id()));
    tracing::info!(
        status = response.status().as_u16(),
        route = %route,
        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
        caller = caller.as_deref().unwrap_or("anonymous"),
        "request"
    );
    Ok(response)
}

fn bearer_token(req: &ServiceRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The application state every middleware reads (registered once in `startup`).
pub(crate) fn app_state(req: &ServiceRequest) -> web::Data<AppState> {
    req.app_data::<web::Data<AppState>>()
        .expect("app state")
        .clone()
}

/// Every FHIR endpoint but `/metadata` needs a verified bearer token; the caller goes into the
/// request extensions for handlers, policy and audit.
pub async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let state = app_state(&req);
    let Some(token) = bearer_token(&req) else {
        return Ok(reject(req, AuthError::Missing.into()));
    };
    match state.verifier.verify(token).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            Ok(next.call(req).await?.map_into_boxed_body())
        }
        Err(e) => Ok(reject(req, e.into())),
    }
}

/// Answers the request with the error's OperationOutcome, so outer layers still see a response.
fn reject(req: ServiceRequest, error: ApiError) -> ServiceResponse<BoxBody> {
    req.error_response(error).map_into_boxed_body()
}

fn is_json_media(value: &str) -> bool {
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        media.as_str(),
        "application/fhir+json" | "application/json" | "json" | "application/json+fhir"
    )
}

/// `_format` / `Accept` must allow JSON (406 otherwise); bodies must be JSON (415 otherwise).
pub async fn negotiate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let format = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()
        .and_then(|q| {
            q.iter()
                .find(|(k, _)| k == "_format")
                .map(|(_, v)| v.clone())
        });
    if let Some(format) = format
        && !is_json_media(&format)
    {
        let e = ApiError::http(
            StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            format!("_format '{format}' is not supported; shcr speaks application/fhir+json"),
        );
        return Ok(reject(req, e));
    }
    if let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    {
        let acceptable = accept.split(',').any(|part| {
            let media = part.split(';').next().unwrap_or("").trim();
            is_json_media(media) || media == "*/*" || media == "application/*" || media.is_empty()
        });
        if !acceptable {
            let e = ApiError::http(
                StatusCode::NOT_ACCEPTABLE,
                IssueType::NotSupported,
                format!("cannot answer in '{accept}'; shcr speaks application/fhir+json"),
            );
            return Ok(reject(req, e));
        }
    }
    let has_body = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if has_body
        && let Some(ct) = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
    {
        let form_search =
            req.path().ends_with("/_search") && ct.starts_with("application/x-www-form-urlencoded");
        if !is_json_media(ct) && !form_search {
            let e = ApiError::http(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                IssueType::NotSupported,
                format!("Content-Type '{ct}' is not supported; send application/fhir+json"),
            );
            return Ok(reject(req, e));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// `_pretty=true` indents any JSON response, errors included.
pub async fn pretty(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let wanted = req.query_string().split('&').any(|p| p == "_pretty=true");
    let response = next.call(req).await?.map_into_boxed_body();
    if !wanted {
        return Ok(response);
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json_media);
    if !is_json {
        return Ok(response);
    }
    let (request, response) = response.into_parts();
    let (head, body) = response.into_parts();
    let bytes = actix_web::body::to_bytes(body).await.map_err(|e| {
        actix_web::error::ErrorInternalServerError(format!("reading response body: {e}"))
    })?;
    let pretty = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| serde_json::to_vec_pretty(&v).ok())
        .unwrap_or_else(|| bytes.to_vec());
    Ok(ServiceResponse::new(
        request,
        head.set_body(BoxBody::new(pretty)),
    ))
}
