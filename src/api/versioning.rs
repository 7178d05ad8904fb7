//! FHIR version negotiation and the lifecycle of shcr's own features at the HTTP edge.
//!
//! - `fhirVersion` media-type parameter (FHIR R4 §3.1.0.1.6): on `Accept`, `Content-Type` and
//!   `_format`, shcr accepts `4.0` and `4.0.1` (and no parameter); anything else is refused —
//!   `406` for what the client wants back, `415` for what it sent — rather than answered in a
//!   version the client did not ask for. A client that named a version gets it echoed in the
//!   response `Content-Type`.
//! - Deprecated features (`governance/api.toml`): `Deprecation`, `Sunset`, `Link` and
//!   `Warning` headers, and a warning issue in an OperationOutcome or searchset Bundle body.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::governance::{ClientContext, query_pairs};
use crate::fhir::outcome::{Issue, IssueType};
use crate::governance::product::{Feature, RequestFacts};
use crate::governance::usage;

/// FHIR versions shcr serves, as `fhirVersion` values (R4 and its technical correction).
pub const SUPPORTED_FHIR_VERSIONS: &[&str] = &["4.0", "4.0.1"];

/// The `fhirVersion` parameter of one media range, if present.
fn fhir_version(media: &str) -> Option<String> {
    media.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("fhirVersion")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

fn supported(version: &str) -> bool {
    SUPPORTED_FHIR_VERSIONS.contains(&version)
}

fn media_type(media: &str) -> String {
    media
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn header_str(req: &ServiceRequest, name: HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn unsupported(status: StatusCode, what: &str, version: &str) -> ApiError {
    ApiError::http(
        status,
        IssueType::NotSupported,
        format!(
            "{what} asks for FHIR version {version}; shcr serves FHIR R4 only (fhirVersion {})",
            SUPPORTED_FHIR_VERSIONS.join(" or ")
        ),
    )
}

/// Refuses requests for FHIR versions shcr does not serve; echoes the version asked for.
pub async fn negotiate_version(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let query = query_pairs(req.query_string());
    let format = query
        .iter()
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.clone());
    let mut asked: Option<String> = None;
    // What the client wants back: Accept (any acceptable range will do) and _format.
    if let Some(accept) = header_str(&req, header::ACCEPT) {
        let versions: Vec<Option<String>> = accept.split(',').map(fhir_version).collect();
        let acceptable = versions.iter().any(|v| v.as_deref().is_none_or(supported));
        if !acceptable {
            let v = versions.into_iter().flatten().next().unwrap_or_default();
            let e = unsupported(StatusCode::NOT_ACCEPTABLE, "Accept", &v);
            return Ok(req.error_response(e).map_into_boxed_body());
        }
        asked = versions.into_iter().flatten().find(|v| supported(v));
    }
    if let Some(v) = format.as_deref().and_then(fhir_version) {
        if !supported(&v) {
            let e = unsupported(StatusCode::NOT_ACCEPTABLE, "_format", &v);
            return Ok(req.error_response(e).map_into_boxed_body());
        }
        asked = Some(v);
    }
    // What the client sent.
    if let Some(v) = header_str(&req, header::CONTENT_TYPE).and_then(fhir_version)
        && !supported(&v)
    {
        let e = unsupported(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type", &v);
        return Ok(req.error_response(e).map_into_boxed_body());
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    if let Some(version) = asked {
        let ct = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Some(ct) = ct.filter(|ct| ct.starts_with("application/fhir+json"))
            && fhir_version(&ct).is_none()
            && let Ok(value) = HeaderValue::from_str(&format!(
                "application/fhir+json; fhirVersion={version}; charset=utf-8"
            ))
        {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
    }
    Ok(response)
}

/// The deprecated features a request uses (see `governance/api.toml`).
fn deprecated_features<'a>(state: &'a AppState, req: &ServiceRequest) -> Vec<&'a Feature> {
    let query = query_pairs(req.query_string());
    let mut media_types: Vec<String> = Vec::new();
    for name in [header::ACCEPT, header::CONTENT_TYPE] {
        if let Some(v) = header_str(req, name) {
            media_types.extend(v.split(',').map(media_type));
        }
    }
    media_types.extend(
        query
            .iter()
            .filter(|(k, _)| k == "_format")
            .map(|(_, v)| media_type(v)),
    );
    let facts = RequestFacts {
        method: req.method().as_str(),
        interaction: "",
        path: req.path(),
        header_names: req
            .headers()
            .keys()
            .map(|k| k.as_str().to_string())
            .collect(),
        media_types,
        query,
        body_bytes: 0,
    };
    state.governance.product.used_deprecated(&facts)
}

/// Tells a consumer, on the response, that it used something deprecated.
pub async fn lifecycle(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let state = super::middleware::app_state(&req);
    let used: Vec<Feature> = deprecated_features(&state, &req)
        .into_iter()
        .cloned()
        .collect();
    if used.is_empty() {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    // Past its sunset a feature is refused, not served with a warning: the consumer was told.
    if let Some(f) = used
        .iter()
        .find(|f| f.is_retired(time::OffsetDateTime::now_utc()))
    {
        let e = ApiError::http(StatusCode::GONE, IssueType::NotSupported, f.refusal());
        return Ok(req.error_response(e).map_into_boxed_body());
    }
    let client = req
        .extensions()
        .get::<ClientContext>()
        .map(|c| c.client_id.clone())
        .unwrap_or_else(|| "unregistered".into());
    for f in &used {
        usage::record_deprecated(&client, &f.name);
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    let headers = response.headers_mut();
    // One feature's dates per response: the earliest sunset is the one that matters.
    if let Some(f) = used.iter().min_by_key(|f| f.sunset.clone()) {
        if let Some(v) = f
            .deprecation_header()
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(HeaderName::from_static("deprecation"), v);
        }
        if let Some(v) = f
            .sunset_header()
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(HeaderName::from_static("sunset"), v);
        }
        headers.insert(
            header::LINK,
            HeaderValue::from_static("</docs#lifecycle>; rel=\"deprecation\"; type=\"text/html\""),
        );
    }
    for f in &used {
        let text = f.warning().replace('"', "'");
        if let Ok(v) = HeaderValue::from_str(&format!("299 shcr \"{text}\"")) {
            headers.append(header::WARNING, v);
        }
    }
    add_warning_issues(response, &used).await
}

/// Adds a warning issue per deprecated feature to an OperationOutcome body, or to a searchset
/// Bundle's outcome entry. Other bodies (a resource) have no place for it: the headers say it.
async fn add_warning_issues(
    response: ServiceResponse<BoxBody>,
    used: &[Feature],
) -> Result<ServiceResponse<BoxBody>, Error> {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("json"));
    if !is_json {
        return Ok(response);
    }
    let (request, response) = response.into_parts();
    let (head, body) = response.into_parts();
    let bytes = actix_web::body::to_bytes(body).await.map_err(|e| {
        actix_web::error::ErrorInternalServerError(format!("reading response body: {e}"))
    })?;
    let issues: Vec<Value> = used
        .iter()
        .map(|f| Issue::warning(IssueType::BusinessRule, f.warning()).to_json())
        .collect();
    let changed = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut v) if v["resourceType"] == "OperationOutcome" => {
            if let Some(list) = v["issue"].as_array_mut() {
                list.extend(issues);
            }
            Some(v)
        }
        Ok(mut v) if v["resourceType"] == "Bundle" && v["type"] == "searchset" => {
            let entry = json!({
                "resource": {"resourceType": "OperationOutcome", "issue": issues},
                "search": {"mode": "outcome"}
            });
            match v["entry"].as_array_mut() {
                Some(entries) => entries.push(entry),
                None => v["entry"] = json!([entry]),
            }
            Some(v)
        }
        _ => None,
    };
    let body = changed
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|| bytes.to_vec());
    Ok(ServiceResponse::new(
        request,
        head.set_body(BoxBody::new(body)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fhir_version_parameter_is_read_from_a_media_range() {
        assert_eq!(
            fhir_version("application/fhir+json; fhirVersion=4.0").as_deref(),
            Some("4.0")
        );
        assert_eq!(
            fhir_version("application/fhir+json;charset=utf-8; fhirversion=\"3.0\"").as_deref(),
            Some("3.0")
        );
        assert_eq!(fhir_version("application/fhir+json"), None);
        assert!(supported("4.0.1") && !supported("5.0"));
    }
}
