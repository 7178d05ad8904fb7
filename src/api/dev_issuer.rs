//! The development issuer's discovery document and JWKS (only routed when enabled).

use actix_web::{HttpResponse, web};

use super::AppState;

pub async fn discovery(state: web::Data<AppState>) -> HttpResponse {
    match &state.dev_issuer {
        Some(issuer) => HttpResponse::Ok().json(issuer.discovery(state.verifier.issuer())),
        None => HttpResponse::NotFound().finish(),
    }
}

pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    match &state.dev_issuer {
        Some(issuer) => HttpResponse::Ok().json(issuer.jwks()),
        None => HttpResponse::NotFound().finish(),
    }
}
