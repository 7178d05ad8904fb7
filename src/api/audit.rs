//! The audit layer: after the handler has answered and before the answer leaves, one audit row
//! is made durable for the request (denials, errors and unauthenticated calls included): in the
//! database's chain or, with `[audit] durability = "journal"`, in the local journal. If the row
//! cannot be written, the answer is replaced by a 503: no data leaves unaudited.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};

use super::access::AuditNote;
use super::error::ApiError;
use super::middleware::RequestId;
use crate::access::{Caller, Principal};
use crate::audit::AuditRecord;
use crate::fhir::outcome::IssueType;

fn action(method: &str, interaction: &str) -> &'static str {
    match method {
        "POST" if interaction.starts_with("search") => "E",
        "POST" => "C",
        "PUT" | "PATCH" => "U",
        "DELETE" => "D",
        _ if interaction.starts_with("search") || interaction.starts_with("ig-") => "E",
        _ => "R",
    }
}

pub async fn audit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let state = super::middleware::app_state(&req);
    req.extensions_mut().insert(AuditNote::default());
    let method = req.method().to_string();
    let path = req.path().to_string();
    let query = req.query_string().to_string();
    let client_ip = req.peer_addr().map(|a| a.ip().to_string());
    let response = next.call(req).await?.map_into_boxed_body();
    let Some(audit) = &state.audit else {
        return Ok(response);
    };
    let request = response.request();
    let note = request
        .extensions()
        .get::<AuditNote>()
        .cloned()
        .unwrap_or_default();
    let caller = request.extensions().get::<Caller>().cloned();
    let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone());
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let interaction = note
        .interaction
        .unwrap_or_else(|| crate::metrics::interaction(&method, &route));
    let status = response.status().as_u16();
    let mut resource_type = note.resource_type.clone().or_else(|| {
        request
            .match_info()
            .get("type")
            .filter(|t| crate::validation::is_resource_type(t))
            .map(str::to_string)
    });
    let mut resource_id = note
        .resource_id
        .clone()
        .or_else(|| request.match_info().get("id").map(str::to_string));
    // A create names its new resource only in Location.
    if let Some(location) = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
    {
        let parts: Vec<&str> = location.rsplit('/').collect();
        if parts.len() >= 4 && parts[1] == "_history" {
            resource_id = Some(parts[2].to_string());
            resource_type = resource_type.or_else(|| Some(parts[3].to_string()));
        }
    }
    let (caller_kind, caller_id, caller_name, role_code, org) = match &caller {
        None => ("anonymous".to_string(), None, None, None, None),
        Some(c) => match &c.principal {
            Principal::System(s) => (
                "system".to_string(),
                Some(s.client_id.clone()),
                None,
                None,
                Some(s.ods_code.to_string()),
            ),
            Principal::User(u) => (
                "user".to_string(),
                Some(u.user_id.clone()),
                u.name.clone(),
                Some(u.role_code.clone()),
                Some(u.org.to_string()),
            ),
        },
    };
    let purpose = note.purpose.clone().unwrap_or_else(|| {
        if caller_kind == "system" {
            "HOPERAT".into()
        } else {
            "TREAT".into()
        }
    });
    let record = AuditRecord {
        recorded_at: None,
        request_id,
        interaction: interaction.to_string(),
        action: action(&method, interaction).to_string(),
        outcome: match status {
            200..=399 => 0,
            400..=499 => 4,
            _ => 8,
        },
        outcome_desc: note.denied.clone().map(|d| format!("denied: {d}")),
        http_status: status as i32,
        caller_kind,
        caller_id,
        caller_name,
        role_code,
        org,
        purpose,
        break_glass_id: note.break_glass,
        method,
        path,
        query: note
            .query
            .clone()
            .or_else(|| (!query.is_empty()).then_some(query)),
        resource_type,
        resource_id,
        patients: note.patients.iter().cloned().collect(),
        returned: note.returned,
        denied: note.denied.is_some(),
        relationship: note.relationship.unwrap_or(note.patients.is_empty()),
        client_ip,
    };
    match crate::metrics::time_audit_write(audit.record(record)).await {
        Ok(_) => Ok(response),
        Err(e) => {
            tracing::error!(error = %e, "audit write failed; withholding the response");
            let error = ApiError::http(
                StatusCode::SERVICE_UNAVAILABLE,
                IssueType::Transient,
                "the access could not be audited, so nothing was released; try again",
            );
            let (request, _) = response.into_parts();
            Ok(ServiceResponse::new(
                request,
                actix_web::ResponseError::error_response(&error),
            ))
        }
    }
}
