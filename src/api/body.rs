//! Reading request bodies within the size limit and parsing FHIR JSON and request headers.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use serde_json::Value;

use super::error::ApiError;
use crate::fhir::id::parse_etag_version;
use crate::fhir::outcome::IssueType;
use crate::interactions::bundle::ReturnPreference;

fn too_large(limit: usize) -> ApiError {
    ApiError::http(
        StatusCode::PAYLOAD_TOO_LARGE,
        IssueType::TooLong,
        format!("the request body exceeds the limit of {limit} bytes"),
    )
}

/// Reads the whole body, refusing (413) as soon as it passes `limit`.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large(limit));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the body failed: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a JSON body, naming the line and column of a syntax error.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::http(
            StatusCode::BAD_REQUEST,
            IssueType::Required,
            "the request body is empty; a FHIR resource in JSON is required",
        ));
    }
    let mut value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::http(
            StatusCode::BAD_REQUEST,
            IssueType::Structure,
            format!(
                "the body is not valid JSON (line {}, column {}): {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    crate::fhir::comments::strip_comments(&mut value);
    Ok(value)
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `Prefer: return=…`; `default` applies when the client states no preference.
pub fn return_preference(req: &HttpRequest, default: ReturnPreference) -> ReturnPreference {
    let Some(prefer) = header(req, "prefer") else {
        return default;
    };
    for part in prefer.split([',', ';']) {
        match part
            .trim()
            .strip_prefix("return=")
            .map(|v| v.trim_matches('"'))
        {
            Some("minimal") => return ReturnPreference::Minimal,
            Some("representation") => return ReturnPreference::Representation,
            Some("OperationOutcome") => return ReturnPreference::OperationOutcome,
            _ => {}
        }
    }
    default
}

/// `If-Match` as a version number; a malformed value is a client error, not "no precondition".
pub fn if_match(req: &HttpRequest) -> Result<Option<i64>, ApiError> {
    match header(req, "if-match") {
        None => Ok(None),
        Some(v) => parse_etag_version(v).map(Some).ok_or_else(|| {
            ApiError::bad_request(format!(
                "If-Match '{v}' is not an ETag of this server (expected W/\"<version>\")"
            ))
        }),
    }
}

pub fn if_none_exist(req: &HttpRequest) -> Option<String> {
    header(req, "if-none-exist").map(str::to_string)
}
