//! `$validate` (FHIR R4 `Resource/$validate`): checks a resource against R4 and a profile and
//! answers with an OperationOutcome listing every issue and its FHIRPath location. Nothing is
//! stored. `POST [base]/[type]/$validate` and `POST [base]/$validate` take either the resource
//! itself or a `Parameters` with `resource`, `mode` and `profile`; `profile` and `mode` may
//! also be query parameters.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::AppState;
use super::body::{parse_json, read_body};
use super::error::ApiError;
use super::governance::query_pairs;
use crate::fhir::outcome::{Issue, IssueType, operation_outcome};
use crate::validation::profiles::Profiles;

/// What was asked: the resource, the mode and the profiles named.
struct Request {
    resource: Value,
    mode: Option<String>,
    profiles: Vec<String>,
}

fn parameter<'a>(parameters: &'a Value, name: &str) -> impl Iterator<Item = &'a Value> {
    parameters["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |p| p["name"] == name)
}

fn unpack(body: Value, query: &[(String, String)]) -> Result<Request, ApiError> {
    let mut profiles: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "profile")
        .map(|(_, v)| v.clone())
        .collect();
    let mut mode = query
        .iter()
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.clone());
    let resource =
        if body["resourceType"] == "Parameters" && parameter(&body, "resource").next().is_some() {
            profiles.extend(
                parameter(&body, "profile")
                    .filter_map(|p| p["valueUri"].as_str().or(p["valueCanonical"].as_str()))
                    .map(str::to_string),
            );
            if let Some(m) = parameter(&body, "mode").find_map(|p| p["valueCode"].as_str()) {
                mode = Some(m.to_string());
            }
            parameter(&body, "resource")
                .next()
                .and_then(|p| p.get("resource").cloned())
                .ok_or_else(|| {
                    ApiError::bad_request("Parameters.parameter 'resource' has no resource")
                })?
        } else {
            body
        };
    Ok(Request {
        resource,
        mode,
        profiles,
    })
}

/// Runs every check and returns the issues in the order found.
fn check(
    profiles: &Profiles,
    resource: &Value,
    expected_type: Option<&str>,
    req: &Request,
) -> Result<Vec<Issue>, ApiError> {
    let mut issues = crate::validation::validate_resource(resource);
    let actual = resource["resourceType"].as_str().unwrap_or("");
    if let Some(t) = expected_type
        && !actual.is_empty()
        && actual != t
    {
        issues.push(
            Issue::error(
                IssueType::Invalid,
                format!("the resource is a {actual}, but was sent to {t}/$validate"),
            )
            .at(format!("{actual}.resourceType")),
        );
    }
    match req.mode.as_deref() {
        None | Some("create") | Some("profile") => {}
        Some("update") => {
            if resource.get("id").is_none() {
                issues.push(
                    Issue::error(
                        IssueType::Required,
                        "an update must carry the resource's id",
                    )
                    .at(format!("{actual}.id")),
                );
            }
        }
        Some("delete") => {
            return Err(ApiError::http(
                StatusCode::BAD_REQUEST,
                IssueType::NotSupported,
                "mode=delete is not supported: shcr has no delete-time rules beyond If-Match",
            ));
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "mode '{other}' is not create, update, delete or profile"
            )));
        }
    }
    // Named profiles must be known; profiles the resource claims are checked when known.
    let mut checked = Vec::new();
    for url in &req.profiles {
        let p = profiles.get(url).ok_or_else(|| {
            ApiError::http(
                StatusCode::BAD_REQUEST,
                IssueType::NotSupported,
                format!(
                    "profile '{url}' is not known to shcr; GET /profiles lists the profiles it validates"
                ),
            )
        })?;
        checked.push(p);
    }
    let claimed: Vec<&str> = resource["meta"]["profile"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (i, url) in claimed.iter().enumerate() {
        match profiles.get(url) {
            Some(p) if !checked.iter().any(|c| c.url == p.url) => checked.push(p),
            Some(_) => {}
            None => issues.push(
                Issue::warning(
                    IssueType::NotSupported,
                    format!("profile '{url}' is not known to shcr; checked against R4 only"),
                )
                .at(format!("{actual}.meta.profile[{i}]")),
            ),
        }
    }
    if !actual.is_empty() && crate::validation::is_resource_type(actual) {
        for p in &checked {
            issues.extend(profiles.validate(p, resource));
        }
    }
    if !issues.iter().any(Issue::is_error) {
        let against: Vec<&str> = checked.iter().map(|p| p.url.as_str()).collect();
        issues.push(Issue::information(
            IssueType::Informational,
            if against.is_empty() {
                "valid FHIR R4".to_string()
            } else {
                format!("valid FHIR R4 and {}", against.join(", "))
            },
        ));
    }
    Ok(issues)
}

async fn respond(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    expected_type: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    if let Some(t) = expected_type {
        crate::interactions::Repository::check_type(t)?;
    }
    let body = read_body(req, payload, state.max_body_bytes).await?;
    let request = unpack(parse_json(&body)?, &query_pairs(req.query_string()))?;
    let issues = check(
        &state.governance.profiles,
        &request.resource,
        expected_type,
        &request,
    )?;
    // 200 whatever the verdict: the operation worked, the outcome is the answer.
    Ok(super::response::json_response(
        StatusCode::OK,
        operation_outcome(&issues).to_string(),
    ))
}

pub async fn validate_type(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let resource_type = path.into_inner();
    respond(&state, &req, payload, Some(&resource_type)).await
}

pub async fn validate_system(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    respond(&state, &req, payload, None).await
}
