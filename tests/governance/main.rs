//! End-to-end tests of shcr's API as a governed product: consumer registry, `$validate` and the
//! sandbox, version negotiation and deprecation, throttling, product metrics and the developer
//! portal (rendered in headless Chromium). Real server, real PostgreSQL.

#[path = "../common/mod.rs"]
mod common;
#[path = "../events/support.rs"]
mod support;

mod lifecycle;
mod messaging;
mod metrics;
mod portal;
mod registry;
mod throttling;
mod validate;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use shcr::access::dev_issuer::Grant;
use shcr::governance::registry::{Actor, ClientInput};

use common::TestApp;

/// A server that refuses unknown clients, as in production (the development issuer still
/// mints the tokens).
pub async fn strict_app() -> TestApp {
    TestApp::spawn_with(|s| s.governance.auto_register = Some(false)).await
}

pub fn system_token(app: &TestApp, client_id: &str, ods: &str, scopes: &[&str]) -> String {
    app.mint(&app.claims(&Grant::System {
        client_id: client_id.into(),
        ods_code: ods.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }))
}

/// The API product team's own client, registered straight in the database (as `shcr clients
/// add` does), and a token for it.
pub async fn admin_token(app: &TestApp) -> String {
    register(
        app,
        ClientInput {
            client_id: Some("shcr-product-team".into()),
            ods_code: Some("X26".into()),
            name: Some("shcr API product team".into()),
            access_mode: Some("application".into()),
            ..ClientInput::default()
        },
    )
    .await;
    system_token(
        app,
        "shcr-product-team",
        "X26",
        &[shcr::governance::ADMIN_SCOPE],
    )
}

pub async fn register(app: &TestApp, input: ClientInput) {
    shcr::governance::registry::ensure(&app.pool, &input, &Actor::named("test"))
        .await
        .expect("register client");
}

pub fn client(id: &str, ods: &str, mode: &str) -> ClientInput {
    ClientInput {
        client_id: Some(id.into()),
        ods_code: Some(ods.into()),
        name: Some(format!("{id} (test)")),
        access_mode: Some(mode.into()),
        ..ClientInput::default()
    }
}

pub async fn send(
    app: &TestApp,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut r = app
        .client
        .request(method, url)
        .header(AUTHORIZATION, format!("Bearer {token}"));
    if let Some(body) = body {
        r = r
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(body.to_string());
    }
    r.send().await.expect("request")
}

pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
}

/// Diagnostics and locations of an OperationOutcome, one line each, for assertion messages.
pub fn issues(outcome: &Value) -> Vec<(String, String, String)> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["severity"].as_str().unwrap_or("").to_string(),
                i["expression"][0].as_str().unwrap_or("").to_string(),
                i["diagnostics"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}
