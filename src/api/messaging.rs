//! `POST /fhir/$process-message` and the Subscription operations `$status` and `$events`.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use super::AppState;
use super::body::{parse_json, read_body};
use super::error::ApiError;
use super::middleware::RequestId;
use super::response::json_response;
use super::rest::caller;
use crate::events::subscriptions::Payload;
use crate::events::subscriptions::notification::{self, SubscriptionRow};
use crate::events::{EventsState, ingest};
use crate::fhir::outcome::IssueType;

/// FHIR messaging, synchronous: the response is a message Bundle whose MessageHeader carries
/// `response.code` ok, transient-error or fatal-error (with the HTTP status to match).
pub async fn process_message(
    state: web::Data<AppState>,
    events: web::Data<EventsState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if req.query_string().contains("async=true") {
        return Err(ApiError::http(
            StatusCode::BAD_REQUEST,
            IssueType::NotSupported,
            "asynchronous messaging is not supported here; send messages on NATS for queued delivery",
        ));
    }
    let caller = caller(&req)?;
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let mut bundle = parse_json(&body)?;
    let envelope = ingest::Envelope {
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
        ..Default::default()
    };
    // Sandbox: the same message path over a repository that rolls back (nothing stored,
    // no idempotency key kept, no freshness recorded).
    let sandbox = super::rest::sandbox_requested(&req);
    let sandboxed;
    let ingest = if sandbox {
        sandboxed = ingest::Ingest::new(
            state.repository.sandboxed(),
            events.catalogue.clone(),
            events.base_url.clone(),
        );
        &sandboxed
    } else {
        &events.ingest
    };
    match ingest.process(&mut bundle, &caller, &envelope).await {
        Ok(processed) => {
            let mut response = json_response(StatusCode::OK, processed.response.to_string());
            if sandbox {
                response.headers_mut().insert(
                    actix_web::http::header::HeaderName::from_static(super::rest::SANDBOX_HEADER),
                    actix_web::http::header::HeaderValue::from_static("true"),
                );
            }
            Ok(response)
        }
        Err(error) => {
            let status =
                StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match ingest::error_response(&events.base_url, &bundle, &error) {
                Some(message) => Ok(json_response(status, message.to_string())),
                None => Err(ApiError::Interaction(crate::interactions::Error::Located {
                    status: error.status,
                    issues: error.issues,
                })),
            }
        }
    }
}

/// The subscription, if the caller's organisation owns it. Others get 404: whether a
/// subscription exists is itself not theirs to know.
async fn owned_subscription(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
) -> Result<SubscriptionRow, ApiError> {
    let caller = caller(req)?;
    let row = SubscriptionRow::load(state.repository.store().pool(), id)
        .await
        .map_err(|e| ApiError::Interaction(crate::store::StoreError::from(e).into()))?;
    match row {
        Some(row) if row.owner.org.as_deref() == Some(caller.org().as_str()) => Ok(row),
        _ => Err(ApiError::Interaction(crate::interactions::Error::NotFound(
            format!("Subscription/{id}"),
        ))),
    }
}

/// `GET /fhir/Subscription/{id}/$status`
pub async fn subscription_status(
    state: web::Data<AppState>,
    events: web::Data<EventsState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let sub = owned_subscription(&state, &req, &path.into_inner()).await?;
    let status =
        notification::status_parameters(&events.base_url, &sub, "query-status", &[], sub.payload);
    let bundle = serde_json::json!({
        "resourceType": "Bundle",
        "id": crate::fhir::id::new_id(),
        "type": "searchset",
        "total": 1,
        "entry": [{"resource": status, "search": {"mode": "match"}}],
    });
    Ok(json_response(StatusCode::OK, bundle.to_string()))
}

/// `GET /fhir/Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=`:
/// catch-up after a gap. At most 1,000 events per call.
pub async fn subscription_events(
    state: web::Data<AppState>,
    events: web::Data<EventsState>,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, ApiError> {
    let sub = owned_subscription(&state, &req, &path.into_inner()).await?;
    let number = |name: &str, default: i64| -> Result<i64, ApiError> {
        match query.get(name) {
            None => Ok(default),
            Some(v) => v.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("{name} must be an integer, got '{v}'"))
            }),
        }
    };
    let since = number("eventsSinceNumber", 1)?.max(1);
    let until = number("eventsUntilNumber", sub.events_since_start)?;
    let content = match query.get("content") {
        None => sub.payload,
        Some(c) => Payload::parse(c).ok_or_else(|| {
            ApiError::bad_request(format!(
                "content must be empty, id-only or full-resource, got '{c}'"
            ))
        })?,
    };
    // Asking for more than the subscription allows does not widen it.
    let content = match (content, sub.payload) {
        (Payload::FullResource, p) if p != Payload::FullResource => {
            if events.policy.may_subscribe_full_resource(&sub.owner) {
                Payload::FullResource
            } else {
                Payload::IdOnly
            }
        }
        (c, _) => c,
    };
    let pool = state.repository.store().pool();
    let rows = notification::events(pool, &sub.id, since, until, 1000)
        .await
        .map_err(|e| ApiError::Interaction(crate::store::StoreError::from(e).into()))?;
    let contents = if content == Payload::FullResource {
        let keys: Vec<_> = rows
            .iter()
            .map(|e| (e.resource_type.clone(), e.resource_id.clone(), e.version_id))
            .collect();
        state
            .repository
            .store()
            .vread_many(&keys)
            .await
            .map_err(|e| ApiError::Interaction(e.into()))?
            .into_iter()
            .filter_map(|v| {
                Some((
                    (v.resource_type, v.id, v.version_id),
                    (v.content?, v.author_org),
                ))
            })
            .collect()
    } else {
        HashMap::new()
    };
    let bundle = notification::bundle(
        &events.base_url,
        &sub,
        "query-event",
        &rows,
        content,
        &contents,
        events.policy.as_ref(),
    );
    Ok(json_response(StatusCode::OK, bundle.to_string()))
}
