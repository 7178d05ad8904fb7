use reqwest::header::AUTHORIZATION;
use shcr::access::dev_issuer::{DevIssuer, Grant};

use crate::common::{TestApp, outcome};

fn system_grant() -> Grant {
    Grant::System {
        client_id: "rx1-pas".into(),
        ods_code: "RX1".into(),
        scopes: vec![],
    }
}

async fn get_with(app: &TestApp, token: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url("Patient/anything"));
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    request.send().await.unwrap()
}

async fn assert_refused(app: &TestApp, token: Option<&str>, expect: &str) {
    let response = get_with(app, token).await;
    let www = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .expect("WWW-Authenticate on 401");
    assert!(www.starts_with("Bearer"), "{www}");
    let body = outcome(response, 401).await;
    assert_eq!(body["issue"][0]["code"], "login");
    let diagnostics = body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        diagnostics.contains(expect),
        "'{diagnostics}' should mention '{expect}'"
    );
}

#[tokio::test]
async fn requests_without_a_token_are_refused() {
    let app = TestApp::spawn().await;
    assert_refused(&app, None, "no bearer token").await;
}

#[tokio::test]
async fn tokens_signed_by_another_key_are_refused() {
    let app = TestApp::spawn().await;
    let impostor = DevIssuer::generate_impostor(app.issuer.kid());
    let token = impostor.mint(&app.claims(&system_grant())).unwrap();
    assert_refused(&app, Some(&token), "signature").await;
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let app = TestApp::spawn().await;
    let mut claims = app.claims(&system_grant());
    claims.exp = claims.iat - 3600;
    assert_refused(&app, Some(&app.mint(&claims)), "expired").await;
}

#[tokio::test]
async fn tokens_for_another_audience_are_refused() {
    let app = TestApp::spawn().await;
    let mut claims = app.claims(&system_grant());
    claims.aud = "some-other-api".into();
    assert_refused(&app, Some(&app.mint(&claims)), "audience").await;
}

#[tokio::test]
async fn tokens_from_another_issuer_are_refused() {
    let app = TestApp::spawn().await;
    let mut claims = app.claims(&system_grant());
    claims.iss = "https://evil.example/".into();
    assert_refused(&app, Some(&app.mint(&claims)), "issuer").await;
}

#[tokio::test]
async fn garbage_and_unnamed_callers_are_refused() {
    let app = TestApp::spawn().await;
    assert_refused(&app, Some("not-a-jwt"), "malformed").await;
    // Valid signature, but the token says neither which trust nor which role.
    let mut claims = app.claims(&system_grant());
    claims.extra.remove("ods_code");
    assert_refused(&app, Some(&app.mint(&claims)), "ods_code").await;
}

#[tokio::test]
async fn metadata_and_health_need_no_token() {
    let app = TestApp::spawn().await;
    let metadata = app.client.get(app.url("metadata")).send().await.unwrap();
    assert_eq!(metadata.status(), 200);
    let statement: serde_json::Value = metadata.json().await.unwrap();
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    let r = app
        .client
        .get(format!("{}/healthz", app.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Ready once the (empty) search index has caught up with the database.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = app
            .client
            .get(format!("{}/readyz", app.origin))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn unknown_paths_need_a_token_before_saying_not_found() {
    let app = TestApp::spawn().await;
    let r = app
        .client
        .get(app.url("Patient/1/nonsense/deeper/still"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app.get("Patient/1/nonsense/deeper/still").await;
    outcome(r, 404).await;
}

#[tokio::test]
async fn writes_record_the_calling_trust_and_request_id() {
    let app = TestApp::spawn().await;
    let response = app
        .request(reqwest::Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("x-request-id", "trace-abc-123")
        .body(crate::common::patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    let (kind, id, org, request_id): (String, String, Option<String>, Option<String>) =
        sqlx::query_as(
            "SELECT author_kind, author_id, author_org, request_id FROM resource_version",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(kind, "system");
    assert_eq!(id, "rx1-pas");
    assert_eq!(org.as_deref(), Some("RX1"));
    assert_eq!(request_id.as_deref(), Some("trace-abc-123"));
}

#[tokio::test]
async fn clinician_tokens_carry_the_selected_role() {
    let app = TestApp::spawn().await;
    let token = app.clinician_token("A81001");
    let response = app
        .client
        .post(app.url("Patient"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header("content-type", "application/fhir+json")
        .body(crate::common::patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let (kind, id, org): (String, String, Option<String>) =
        sqlx::query_as("SELECT author_kind, author_id, author_org FROM resource_version")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (kind.as_str(), id.as_str(), org.as_deref()),
        ("user", "555000000042", Some("A81001"))
    );
}

#[tokio::test]
async fn request_ids_are_generated_when_absent() {
    let app = TestApp::spawn().await;
    let r = app.client.get(app.url("metadata")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
}

#[tokio::test]
async fn metrics_need_a_token_and_count_requests() {
    let app = TestApp::spawn().await;
    let anonymous = app
        .client
        .get(format!("{}/metrics", app.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    app.get("Patient/unknown").await;
    let text = app
        .client
        .get(format!("{}/metrics", app.origin))
        .header(AUTHORIZATION, format!("Bearer {}", app.trust_token("RX1")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("shcr_http_request_duration_seconds_count{interaction=\"read\",resource_type=\"Patient\",status_class=\"4xx\"}"),
        "{text}"
    );
    assert!(text.contains("shcr_http_errors_total{status=\"404\"}"));
}
