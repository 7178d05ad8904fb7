//! The developer portal routes: `/` and `/docs` (HTML), `/docs/openapi.json`, and shcr's
//! published profiles as StructureDefinitions under `/profiles`. Open like `/fhir/metadata`:
//! they describe the API, never data.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::access::dev_issuer::{DEV_PORTAL_CLIENT, Grant, TokenClaims};
use crate::events::EventsState;
use crate::fhir::outcome::IssueType;
use crate::governance::portal::{DemoTokens, PortalInput, render};

fn origin(state: &AppState) -> &str {
    state.base_url.trim_end_matches("/fhir")
}

/// Demo tokens for the examples: only when this server verifies tokens of its own
/// development issuer (never in production, where the issuer is off).
fn demo_tokens(state: &AppState) -> Option<DemoTokens> {
    let issuer = state.dev_issuer.as_ref()?;
    if !state.verifier.issuer().ends_with("/dev-issuer") {
        return None;
    }
    let mint = |grant: &Grant| {
        issuer
            .mint(&TokenClaims::new(
                state.verifier.issuer(),
                state.verifier.audience(),
                grant,
                3600,
            ))
            .ok()
    };
    Some(DemoTokens {
        trust: mint(&Grant::System {
            client_id: "rx1-pas".into(),
            ods_code: "RX1".into(),
            scopes: vec!["system/*.cruds".into()],
        })?,
        clinician: mint(&Grant::User {
            user_id: "555000000001".into(),
            name: Some("Dr Demo Clinician".into()),
            role_code: "S8000:G8000:R8000".into(),
            org: "RX1".into(),
            activities: vec!["B0360".into(), "B0380".into()],
            scopes: vec!["user/*.rs".into()],
        })?,
        admin: mint(&Grant::System {
            client_id: format!("{DEV_PORTAL_CLIENT}-admin"),
            ods_code: "RX1".into(),
            scopes: vec![crate::governance::ADMIN_SCOPE.into()],
        })?,
    })
}

pub async fn docs(state: web::Data<AppState>, events: web::Data<EventsState>) -> HttpResponse {
    let page = render(&PortalInput {
        origin: origin(&state),
        capabilities: &state.capabilities,
        catalogue: &events.catalogue,
        product: &state.governance.product,
        profiles: &state.governance.profiles,
        demo: demo_tokens(&state),
    });
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page)
}

pub async fn home(state: web::Data<AppState>, events: web::Data<EventsState>) -> HttpResponse {
    docs(state, events).await
}

pub async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    let doc = crate::governance::openapi::document(&state.capabilities, origin(&state));
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.to_string())
}

pub async fn profiles(state: web::Data<AppState>) -> HttpResponse {
    let list: Vec<_> = state
        .governance
        .profiles
        .all()
        .map(|p| {
            json!({"id": p.id, "url": p.url, "type": p.resource_type, "title": p.title,
                   "structureDefinition": format!("{}/profiles/{}", origin(&state), p.id)})
        })
        .collect();
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json!({ "profiles": list }).to_string())
}

pub async fn profile(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let profiles = &state.governance.profiles;
    let p = profiles.by_id(&id).ok_or_else(|| {
        ApiError::http(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            format!("no profile '{id}'; GET /profiles lists them"),
        )
    })?;
    Ok(super::response::json_response(
        StatusCode::OK,
        profiles.structure_definition(p).to_string(),
    ))
}
