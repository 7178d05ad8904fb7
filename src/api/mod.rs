//! The HTTP surface: FHIR REST under `/fhir`, health under `/healthz` and `/readyz`, and the
//! development issuer under `/dev-issuer` when enabled.

pub mod access;
mod audit;
pub mod body;
pub mod capabilities;
mod dev_issuer;
pub mod error;
pub mod governance;
pub mod health;
mod history;
mod identity;
mod ig;
mod messaging;
pub mod middleware;
pub mod portal;
pub mod response;
pub mod rest;
mod search;
mod summary;
mod validate;
pub mod versioning;

use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};

use crate::access::TokenVerifier;
use crate::access::dev_issuer::DevIssuer;
use crate::interactions::Repository;

pub struct AppState {
    pub repository: Repository,
    /// FHIR base URL, e.g. `https://shcr.example.nhs.uk/fhir`.
    pub base_url: String,
    pub max_body_bytes: usize,
    pub verifier: Arc<TokenVerifier>,
    pub dev_issuer: Option<Arc<DevIssuer>>,
    /// Rendered once at start-up: it only changes with the binary and configuration.
    pub capability_statement: String,
    /// Checks `/readyz` runs besides the database and migrations (e.g. the search index).
    pub readiness: health::Readiness,
    pub search: Arc<crate::search::indexer::SearchIndex>,
    /// The read-time access policy (consent-policies/), reloadable.
    pub access: Arc<crate::access::AccessPolicy>,
    /// The audit trail; `None` only when benchmarking without it (`access.audit = false`).
    pub audit: Option<crate::audit::Audit>,
    /// Consumer registry, throttling and the API product rules (src/governance).
    pub governance: Arc<crate::governance::Governance>,
    /// The CapabilityStatement as JSON, for the portal and the OpenAPI document.
    pub capabilities: Arc<serde_json::Value>,
}

async fn metadata(state: web::Data<AppState>) -> HttpResponse {
    response::json_response(
        actix_web::http::StatusCode::OK,
        state.capability_statement.clone(),
    )
}

async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    // Gauges that are cheaper to read when scraped than to keep current.
    state.repository.store().record_pool_metrics();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(crate::metrics::render())
}

fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(rest::method_not_allowed))
}

/// Routes. The interactions listed in `capabilities` are exactly those routed here.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/healthz").route(web::get().to(health::healthz)))
        .service(resource("/readyz").route(web::get().to(health::readyz)))
        .service(
            resource("/dev-issuer/.well-known/openid-configuration")
                .route(web::get().to(dev_issuer::discovery)),
        )
        .service(resource("/dev-issuer/jwks").route(web::get().to(dev_issuer::jwks)))
        .service(
            resource("/fhir/metadata")
                .wrap(from_fn(versioning::negotiate_version))
                .route(web::get().to(metadata)),
        )
        // The developer portal and what it links to: open, like /metadata.
        .service(resource("/").route(web::get().to(portal::home)))
        .service(resource("/docs").route(web::get().to(portal::docs)))
        .service(resource("/docs/openapi.json").route(web::get().to(portal::openapi)))
        .service(resource("/profiles").route(web::get().to(portal::profiles)))
        .service(resource("/profiles/{id}").route(web::get().to(portal::profile)))
        .service(
            // One scope: actix routes a path to the first scope whose prefix matches.
            web::scope("/admin")
                .wrap(from_fn(governance::govern))
                .wrap(from_fn(middleware::authenticate))
                // Outermost: denials and unauthenticated calls are audited too.
                .wrap(from_fn(audit::audit))
                .service(resource("/policy/reload").route(web::post().to(ig::reload_policy)))
                .service(
                    resource("/clients")
                        .route(web::get().to(governance::list_clients))
                        .route(web::post().to(governance::register_client)),
                )
                .service(
                    resource("/clients/{id}/$suspend")
                        .route(web::post().to(governance::suspend_client)),
                )
                .service(
                    resource("/clients/{id}/$reinstate")
                        .route(web::post().to(governance::reinstate_client)),
                )
                .service(
                    resource("/clients/{id}")
                        .route(web::get().to(governance::show_client))
                        .route(web::patch().to(governance::update_client)),
                )
                .service(resource("/usage").route(web::get().to(governance::usage_summary)))
                .default_service(web::to(rest::not_found)),
        )
        .service(
            resource("/metrics")
                .wrap(from_fn(middleware::authenticate))
                .route(web::get().to(metrics_text)),
        )
        .service(
            web::scope("/ig")
                .wrap(from_fn(middleware::authenticate))
                .wrap(from_fn(audit::audit))
                .service(resource("/audit.csv").route(web::get().to(ig::audit_csv)))
                .service(resource("/break-glass").route(web::get().to(ig::break_glass_list)))
                .service(
                    resource("/break-glass/{grant}/review")
                        .route(web::post().to(ig::break_glass_review)),
                )
                .service(resource("/reports/{name}").route(web::get().to(ig::report))),
        )
        .service(
            web::scope("/fhir")
                .wrap(from_fn(middleware::negotiate))
                .wrap(from_fn(versioning::lifecycle))
                .wrap(from_fn(versioning::negotiate_version))
                // The consumer registry and throttle (src/governance) run right after
                // authentication, before anything reads a body or touches data.
                .wrap(from_fn(governance::govern))
                .wrap(from_fn(middleware::authenticate))
                // Outermost: denials and unauthenticated calls are audited too.
                .wrap(from_fn(audit::audit))
                .service(
                    resource("")
                        .route(web::post().to(rest::bundle))
                        .route(web::get().to(search::search_system)),
                )
                .service(
                    resource("/")
                        .route(web::post().to(rest::bundle))
                        .route(web::get().to(search::search_system)),
                )
                // Conformance (`$validate`): before the generic routes, which would take
                // `$validate` for a resource type or id.
                .service(resource("/$validate").route(web::post().to(validate::validate_system)))
                .service(
                    resource("/{type}/$validate").route(web::post().to(validate::validate_type)),
                )
                // Events (src/events): before the generic `/{type}` routes, which would take
                // `$process-message` for a resource type.
                .service(
                    resource("/$process-message").route(web::post().to(messaging::process_message)),
                )
                .service(
                    resource("/Subscription/{id}/$status")
                        .route(web::get().to(messaging::subscription_status)),
                )
                .service(
                    resource("/Subscription/{id}/$events")
                        .route(web::get().to(messaging::subscription_events)),
                )
                // Identity (src/identity): before `/{type}/{id}` and compartment routes.
                .service(
                    resource("/$identity-review")
                        .route(web::get().to(identity::review_list))
                        .route(web::post().to(identity::review_decide)),
                )
                .service(resource("/Patient/$match").route(web::post().to(identity::patient_match)))
                .service(resource("/Person/$merge").route(web::post().to(identity::person_merge)))
                .service(
                    resource("/Person/$unmerge").route(web::post().to(identity::person_unmerge)),
                )
                .service(
                    resource("/Patient/{id}/$everything")
                        .route(web::get().to(identity::everything)),
                )
                .service(resource("/Patient/{id}/$summary").route(web::get().to(summary::summary)))
                // The IG view of the audit trail (not stored resources).
                .service(resource("/AuditEvent").route(web::get().to(ig::audit_search)))
                .service(resource("/_history").route(web::get().to(history::system)))
                .service(resource("/{type}/_history").route(web::get().to(history::of_type)))
                .service(resource("/{type}/_search").route(web::post().to(search::search_post)))
                .service(resource("/{type}/{id}/_history").route(web::get().to(history::instance)))
                .service(resource("/{type}/{id}/_history/{vid}").route(web::get().to(rest::vread)))
                .service(
                    resource("/{compartment}/{id}/{type}")
                        .route(web::get().to(search::search_compartment)),
                )
                .service(
                    resource("/{type}/{id}")
                        .route(web::get().to(rest::read))
                        .route(web::put().to(rest::update))
                        .route(web::delete().to(rest::delete)),
                )
                .service(
                    resource("/{type}")
                        .route(web::get().to(search::search_type))
                        .route(web::post().to(rest::create))
                        .route(web::put().to(rest::conditional_update))
                        .route(web::delete().to(rest::conditional_delete)),
                )
                .default_service(web::to(rest::not_found)),
        );
}
