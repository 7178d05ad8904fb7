//! The API product at the HTTP edge: the consumer check and throttle every FHIR request passes
//! (`govern`), and the admin API over the consumer registry and usage summary.
//!
//! Admin API (scope `shcr.admin`, see `governance::ADMIN_SCOPE`):
//! - `GET /admin/clients` — every registered client;
//! - `POST /admin/clients` — register one (JSON `ClientInput`);
//! - `GET /admin/clients/{id}` — one client with its change history;
//! - `PATCH /admin/clients/{id}` — change the fields given;
//! - `POST /admin/clients/{id}/$suspend` (`{"reason": "…"}`) and `/$reinstate`;
//! - `GET /admin/usage` — the runtime product metrics summary (JSON).

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::middleware::RequestId;
use crate::access::{Caller, Principal};
use crate::fhir::outcome::IssueType;
use crate::governance::product::RequestFacts;
use crate::governance::registry::{self, AccessMode, Actor, ClientInput, RegistryError};
use crate::governance::{ADMIN_SCOPE, usage};

/// The registered client a request runs for, for later layers (lifecycle, metrics).
#[derive(Debug, Clone)]
pub struct ClientContext {
    pub client_id: String,
    pub client: std::sync::Arc<registry::Client>,
}

/// Refuses a Subscription whose topic or payload level the calling client is not registered
/// for (before anything is stored). Other resources pass.
pub fn check_subscription(req: &HttpRequest, resource: &Value) -> Result<(), ApiError> {
    if resource.get("resourceType").and_then(Value::as_str) != Some("Subscription") {
        return Ok(());
    }
    let Some(ctx) = req.extensions().get::<ClientContext>().cloned() else {
        return Ok(());
    };
    ctx.client
        .check_subscription(resource)
        .map_err(|why| ApiError::http(StatusCode::FORBIDDEN, IssueType::Forbidden, why))
}

/// `check_subscription` for every resource of a transaction or batch Bundle.
pub fn check_bundle_subscriptions(req: &HttpRequest, bundle: &Value) -> Result<(), ApiError> {
    for entry in bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(resource) = entry.get("resource") {
            check_subscription(req, resource)?;
        }
    }
    Ok(())
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        match e {
            RegistryError::NotFound(_) => {
                ApiError::http(StatusCode::NOT_FOUND, IssueType::NotFound, e.to_string())
            }
            RegistryError::Exists(_) => {
                ApiError::http(StatusCode::CONFLICT, IssueType::Duplicate, e.to_string())
            }
            RegistryError::Invalid(_) => ApiError::bad_request(e.to_string()),
            RegistryError::Store(err) => {
                tracing::error!(error = %err, "consumer registry storage failure");
                ApiError::http(
                    StatusCode::SERVICE_UNAVAILABLE,
                    IssueType::Transient,
                    "the consumer registry is unavailable; retry shortly",
                )
            }
        }
    }
}

fn refuse(
    req: ServiceRequest,
    status: StatusCode,
    code: IssueType,
    text: String,
) -> ServiceResponse<BoxBody> {
    req.error_response(ApiError::http(status, code, text))
        .map_into_boxed_body()
}

/// Query pairs of a request (lenient: an unparsable query is judged by the handler).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(query).unwrap_or_default()
}

/// Checks the caller's client against the registry (registered, active, access mode, ODS code,
/// scopes, interaction) and its limits, then runs the request holding a concurrency slot.
/// Runs after `authenticate`, before anything that reads a body or touches data.
pub async fn govern(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let started = Instant::now();
    let state = super::middleware::app_state(&req);
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let gov = &state.governance;
    let route = req.match_pattern().unwrap_or_default();
    let interaction = crate::metrics::interaction(req.method().as_str(), &route);

    let client_id = match caller.client_id() {
        Some(id) => id.to_string(),
        // Dev tokens from other tools may name no portal; in production every portal must.
        None if gov.directory.auto_register() => {
            crate::access::dev_issuer::DEV_PORTAL_CLIENT.to_string()
        }
        None => {
            usage::record_request("unregistered", interaction, 401, 0.0);
            return Ok(refuse(
                req,
                StatusCode::UNAUTHORIZED,
                IssueType::Login,
                "the token names no client (azp or client_id claim); sign in through a registered portal".into(),
            ));
        }
    };
    let client = match gov.directory.lookup(&client_id, &caller).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            usage::record_request("unregistered", interaction, 401, 0.0);
            return Ok(refuse(
                req,
                StatusCode::UNAUTHORIZED,
                IssueType::Login,
                format!(
                    "client '{client_id}' is not registered with shcr; ask the shcr API product \
                     team to onboard it (see /docs#onboarding)"
                ),
            ));
        }
        Err(e) => return Ok(req.error_response(ApiError::from(e)).map_into_boxed_body()),
    };
    let forbidden = |text: String| (StatusCode::FORBIDDEN, IssueType::Forbidden, text);
    let refusal = if !client.is_active() {
        Some((
            StatusCode::FORBIDDEN,
            IssueType::Suspended,
            format!(
                "client '{client_id}' is suspended{}; contact the shcr API product team",
                client
                    .status_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        ))
    } else {
        let user = matches!(caller.principal, Principal::User(_));
        match client.mode() {
            AccessMode::Application if user => Some(forbidden(format!(
                "client '{client_id}' is registered for application-restricted access; it cannot act for a user"
            ))),
            AccessMode::User if !user => Some(forbidden(format!(
                "client '{client_id}' is registered for user-restricted access; its tokens must name a user"
            ))),
            AccessMode::Application if caller.org().as_str() != client.ods_code => {
                Some(forbidden(format!(
                    "client '{client_id}' is registered for organisation {}, but its token names {}",
                    client.ods_code,
                    caller.org()
                )))
            }
            _ => None,
        }
        .or_else(|| {
            caller
                .scopes()
                .iter()
                .find(|s| !client.allows_scope(s))
                .map(|s| forbidden(format!("client '{client_id}' may not use scope '{s}'")))
        })
        .or_else(|| {
            (!client.allows_interaction(interaction)).then(|| {
                forbidden(format!(
                    "client '{client_id}' is not registered for the '{interaction}' interaction"
                ))
            })
        })
    };
    if let Some((status, code, text)) = refusal {
        usage::record_request(&client_id, interaction, status.as_u16(), 0.0);
        return Ok(refuse(req, status, code, text));
    }

    let query = query_pairs(req.query_string());
    let body_bytes = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cost = gov.product.cost(&RequestFacts {
        method: req.method().as_str(),
        interaction,
        path: req.path(),
        query,
        body_bytes,
        ..RequestFacts::default()
    });
    // Checked before the handler runs: a refused write has not started, an admitted one runs
    // to its commit whatever happens to the bucket meanwhile.
    let admission = match gov.throttle.admit(&client, cost) {
        Ok(a) => a,
        Err(throttled) => {
            usage::record_throttled(&client_id, throttled.kind());
            usage::record_request(&client_id, interaction, 429, 0.0);
            let seconds = throttled.retry_after_seconds();
            let text = match &throttled {
                crate::governance::throttle::Throttled::Rate { cost, .. } => format!(
                    "client '{client_id}' is over its rate limit ({}/s, burst {}; this request costs {cost}); retry after {seconds} s",
                    client.rate_per_second, client.burst
                ),
                crate::governance::throttle::Throttled::Concurrency { limit } => format!(
                    "client '{client_id}' already has {limit} requests in flight; retry after {seconds} s"
                ),
            };
            let mut response = refuse(
                req,
                StatusCode::TOO_MANY_REQUESTS,
                IssueType::Throttled,
                text,
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
            return Ok(response);
        }
    };
    req.extensions_mut().insert(ClientContext {
        client_id: client_id.clone(),
        client: client.clone(),
    });
    let response = next.call(req).await?.map_into_boxed_body();
    drop(admission);
    usage::record_request(
        &client_id,
        interaction,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    Ok(response)
}

// --- admin API -----------------------------------------------------------------------------

fn admin(req: &HttpRequest) -> Result<Actor, ApiError> {
    let caller = super::rest::caller(req)?;
    if !caller.scopes().iter().any(|s| s == ADMIN_SCOPE) {
        return Err(ApiError::http(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            format!("the admin API needs the '{ADMIN_SCOPE}' scope"),
        ));
    }
    Ok(Actor {
        id: format!(
            "{}:{}@{}",
            caller.kind(),
            caller.id(),
            caller.client_id().unwrap_or("-")
        ),
        request_id: req.extensions().get::<RequestId>().map(|r| r.0.clone()),
    })
}

fn json_ok(status: StatusCode, body: Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(body.to_string())
}

async fn input(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<ClientInput, ApiError> {
    let body = super::body::read_body(req, payload, limit).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("client registration JSON: {e}")))
}

pub async fn list_clients(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin(&req)?;
    let clients = registry::list(state.governance.directory.pool()).await?;
    Ok(json_ok(
        StatusCode::OK,
        json!({"clients": clients.iter().map(registry::Client::to_json).collect::<Vec<_>>()}),
    ))
}

pub async fn register_client(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let actor = admin(&req)?;
    let input = input(&req, payload, state.max_body_bytes).await?;
    let client = registry::register(state.governance.directory.pool(), &input, &actor).await?;
    state.governance.directory.invalidate(&client.client_id);
    Ok(json_ok(StatusCode::CREATED, client.to_json()))
}

pub async fn show_client(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&req)?;
    let id = path.into_inner();
    let pool = state.governance.directory.pool();
    let client = registry::get(pool, &id)
        .await?
        .ok_or(RegistryError::NotFound(id.clone()))?;
    let mut body = client.to_json();
    body["history"] = json!(registry::changes(pool, &id).await?);
    Ok(json_ok(StatusCode::OK, body))
}

pub async fn update_client(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let actor = admin(&req)?;
    let id = path.into_inner();
    let input = input(&req, payload, state.max_body_bytes).await?;
    let client = registry::update(state.governance.directory.pool(), &id, &input, &actor).await?;
    state.governance.directory.invalidate(&id);
    Ok(json_ok(StatusCode::OK, client.to_json()))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Reason {
    reason: Option<String>,
}

async fn reason(req: &HttpRequest, payload: web::Payload) -> Result<Option<String>, ApiError> {
    let body = super::body::read_body(req, payload, 64 * 1024).await?;
    if body.is_empty() {
        return Ok(None);
    }
    let r: Reason = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"reason\": \"…\"}}: {e}")))?;
    Ok(r.reason)
}

pub async fn suspend_client(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let actor = admin(&req)?;
    let id = path.into_inner();
    let why = reason(&req, payload).await?.unwrap_or_default();
    let client = registry::suspend(state.governance.directory.pool(), &id, &why, &actor).await?;
    state.governance.directory.invalidate(&id);
    Ok(json_ok(StatusCode::OK, client.to_json()))
}

pub async fn reinstate_client(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let actor = admin(&req)?;
    let id = path.into_inner();
    let why = reason(&req, payload).await?;
    let client = registry::reinstate(
        state.governance.directory.pool(),
        &id,
        why.as_deref(),
        &actor,
    )
    .await?;
    state.governance.directory.invalidate(&id);
    Ok(json_ok(StatusCode::OK, client.to_json()))
}

pub async fn usage_summary(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    admin(&req)?;
    Ok(json_ok(StatusCode::OK, usage::summary()))
}
