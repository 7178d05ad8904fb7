//! Building FHIR responses: resource bodies with ETag/Last-Modified/Location, and Bundles that
//! embed stored JSON without re-parsing it.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::error::FHIR_JSON;
use crate::fhir::id::etag;
use crate::fhir::instant::{format_http_date, format_instant};
use crate::fhir::outcome::{Issue, IssueType, operation_outcome};
use crate::interactions::EntryOutcome;
use crate::interactions::bundle::ReturnPreference;
use crate::store::VersionRow;

pub fn json_response(
    status: StatusCode,
    body: impl actix_web::body::MessageBody + 'static,
) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, FHIR_JSON))
        .body(body)
}

/// A stored version as a read/vread response.
pub fn version_response(row: VersionRow) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, FHIR_JSON))
        .insert_header((header::ETAG, etag(row.version_id)))
        .insert_header((header::LAST_MODIFIED, format_http_date(row.last_updated)))
        .body(row.content.unwrap_or_default())
}

/// The response to a create/update/delete.
pub fn write_response(
    base_url: &str,
    outcome: EntryOutcome,
    prefer: ReturnPreference,
) -> HttpResponse {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    if let (Some(id), Some(v)) = (&outcome.id, outcome.version_id) {
        response.insert_header((header::ETAG, etag(v)));
        if outcome.content.is_some() {
            response.insert_header((
                header::LOCATION,
                format!("{base_url}/{}/{id}/_history/{v}", outcome.resource_type),
            ));
        }
    }
    if let Some(t) = outcome.last_updated {
        response.insert_header((header::LAST_MODIFIED, format_http_date(t)));
    }
    if status == StatusCode::NO_CONTENT {
        return response.finish();
    }
    response.insert_header((header::CONTENT_TYPE, FHIR_JSON));
    match (prefer, outcome.content) {
        (ReturnPreference::Representation, Some(content)) => response.body(content),
        (ReturnPreference::Minimal, _) => response.finish(),
        (_, _) => response.body(
            operation_outcome(&[Issue::information(
                IssueType::Informational,
                outcome.message,
            )])
            .to_string(),
        ),
    }
}

#[derive(Serialize)]
pub struct BundleLink {
    pub relation: &'static str,
    pub url: String,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct BundleEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleOut {
    pub resource_type: &'static str,
    pub id: String,
    pub meta: Value,
    #[serde(rename = "type")]
    pub bundle_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    pub link: Vec<BundleLink>,
    pub entry: Vec<BundleEntry>,
}

impl BundleOut {
    pub fn new(bundle_type: &'static str) -> BundleOut {
        BundleOut {
            resource_type: "Bundle",
            id: crate::fhir::id::new_id(),
            meta: json!({ "lastUpdated": format_instant(crate::fhir::instant::now_millis()) }),
            bundle_type,
            total: None,
            link: Vec::new(),
            entry: Vec::new(),
        }
    }

    pub fn into_response(self) -> HttpResponse {
        let body = serde_json::to_string(&self).expect("bundle serialises");
        json_response(StatusCode::OK, body)
    }
}

/// Stored JSON text embedded as-is.
pub fn raw(content: String) -> Option<Box<RawValue>> {
    RawValue::from_string(content).ok()
}
