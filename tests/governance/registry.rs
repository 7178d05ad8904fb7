//! The consumer registry: register, refuse unknown and suspended clients, reinstate, history.

use reqwest::Method;
use serde_json::json;

use crate::common::outcome;
use crate::{admin_token, client, register, send, strict_app, system_token};

#[tokio::test]
async fn a_client_is_refused_until_registered_refused_while_suspended_and_back_when_reinstated() {
    let app = strict_app().await;
    let admin = admin_token(&app).await;
    let trust = system_token(&app, "rx1-pas", "RX1", &["system/*.cruds"]);
    let read = app.url("Patient/not-there");
    let admin_url = |p: &str| format!("{}/admin/clients{p}", app.origin);

    // Unknown: 401 with an OperationOutcome that says what to do.
    let body = outcome(send(&app, Method::GET, &read, &trust, None).await, 401).await;
    let text = body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(
        text.contains("rx1-pas") && text.contains("not registered"),
        "{text}"
    );

    // Registered through the admin API: the same token now reaches the FHIR API (404: absent).
    let registration = json!({
        "clientId": "rx1-pas", "odsCode": "RX1", "name": "RX1 PAS", "owner": "RX1 integration",
        "contact": "integration@rx1.example.nhs.uk", "accessMode": "application",
        "interactions": ["*"], "topics": ["https://fhir.shcr.example.nhs.uk/SubscriptionTopic/admitted"],
        "ratePerSecond": 50, "burst": 100, "maxConcurrent": 4
    });
    let r = send(
        &app,
        Method::POST,
        &admin_url(""),
        &admin,
        Some(&registration),
    )
    .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    outcome(send(&app, Method::GET, &read, &trust, None).await, 404).await;
    // Registering twice is a conflict, not a silent overwrite.
    let r = send(
        &app,
        Method::POST,
        &admin_url(""),
        &admin,
        Some(&registration),
    )
    .await;
    assert_eq!(r.status(), 409);

    // Suspended: 403 naming the reason; nothing is written.
    let r = send(
        &app,
        Method::POST,
        &admin_url("/rx1-pas/$suspend"),
        &admin,
        Some(&json!({"reason": "sending malformed NHS numbers"})),
    )
    .await;
    assert_eq!(r.status(), 200);
    let before = app.write_footprint().await;
    let r = send(
        &app,
        Method::POST,
        &app.url("Patient"),
        &trust,
        Some(&crate::common::patient("9434765919")),
    )
    .await;
    let body = outcome(r, 403).await;
    assert_eq!(body["issue"][0]["code"], "suspended");
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("malformed NHS numbers")
    );
    assert_eq!(app.write_footprint().await, before);

    // Reinstated: accepted again.
    let r = send(
        &app,
        Method::POST,
        &admin_url("/rx1-pas/$reinstate"),
        &admin,
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = send(
        &app,
        Method::POST,
        &app.url("Patient"),
        &trust,
        Some(&crate::common::patient("9434765919")),
    )
    .await;
    assert_eq!(r.status(), 201);

    // The history says who did what, in order.
    let shown: serde_json::Value = send(&app, Method::GET, &admin_url("/rx1-pas"), &admin, None)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["register", "suspend", "reinstate"]);
    assert!(
        shown["history"][1]["actor"]
            .as_str()
            .unwrap()
            .contains("shcr-product-team")
    );
    assert_eq!(shown["status"], "active");
    // The change log cannot be rewritten.
    let tamper = sqlx::query("DELETE FROM api_client_change")
        .execute(&app.pool)
        .await;
    assert!(tamper.is_err(), "api_client_change must be append-only");
}

#[tokio::test]
async fn the_admin_api_needs_the_admin_scope() {
    let app = strict_app().await;
    register(&app, client("rx1-pas", "RX1", "application")).await;
    let trust = system_token(&app, "rx1-pas", "RX1", &["system/*.cruds"]);
    let r = send(
        &app,
        Method::GET,
        &format!("{}/admin/clients", app.origin),
        &trust,
        None,
    )
    .await;
    let body = outcome(r, 403).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("shcr.admin")
    );
    let r = send(
        &app,
        Method::GET,
        &format!("{}/admin/clients", app.origin),
        "",
        None,
    )
    .await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_registration_limits_organisation_access_mode_and_interactions() {
    let app = strict_app().await;
    let mut reader = client("rx2-viewer", "RX2", "application");
    reader.interactions = Some(vec!["read".into(), "search-type".into()]);
    register(&app, reader).await;

    // A token claiming another trust's ODS code is refused.
    let wrong_org = system_token(&app, "rx2-viewer", "RX1", &[]);
    let body = outcome(
        send(&app, Method::GET, &app.url("Patient/x"), &wrong_org, None).await,
        403,
    )
    .await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("RX2")
    );

    // Only the registered interactions.
    let token = system_token(&app, "rx2-viewer", "RX2", &[]);
    outcome(
        send(&app, Method::GET, &app.url("Patient/x"), &token, None).await,
        404,
    )
    .await;
    let r = send(
        &app,
        Method::POST,
        &app.url("Patient"),
        &token,
        Some(&crate::common::patient("9434765919")),
    )
    .await;
    let body = outcome(r, 403).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("'create'")
    );

    // A user-restricted portal cannot call with a system token, and a person cannot use an
    // application-restricted client.
    register(&app, client("portal", "RX1", "user")).await;
    let system_as_portal = system_token(&app, "portal", "RX1", &[]);
    outcome(
        send(
            &app,
            Method::GET,
            &app.url("Patient/x"),
            &system_as_portal,
            None,
        )
        .await,
        403,
    )
    .await;
    // Dev user tokens name the development portal, which is not registered here.
    let clinician = app.clinician_token("RX1");
    let body = outcome(
        send(&app, Method::GET, &app.url("Patient/x"), &clinician, None).await,
        401,
    )
    .await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("shcr-dev-portal")
    );
    register(&app, client("shcr-dev-portal", "RX1", "user")).await;
    outcome(
        send(&app, Method::GET, &app.url("Patient/x"), &clinician, None).await,
        404,
    )
    .await;
}

#[tokio::test]
async fn the_cli_manages_the_registry() {
    let app = strict_app().await;
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shcr"))
            .args(args)
            .env("DATABASE_URL", &app.db.url)
            .env("SHCR_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run shcr")
    };
    let out = run(&[
        "clients",
        "add",
        "rx3-ehr",
        "--ods",
        "RX3",
        "--name",
        "RX3 EHR",
        "--mode",
        "application",
        "--rate",
        "5",
        "--burst",
        "10",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["clients", "suspend", "rx3-ehr", "--reason", "pen test"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["clients", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("rx3-ehr") && listed.contains("suspended"),
        "{listed}"
    );
    let token = system_token(&app, "rx3-ehr", "RX3", &[]);
    // Another process changed the registry; this server had not cached the client yet.
    outcome(
        send(&app, Method::GET, &app.url("Patient/x"), &token, None).await,
        403,
    )
    .await;
    let out = run(&["clients", "reinstate", "rx3-ehr"]);
    assert!(out.status.success());
    let out = run(&["clients", "update", "rx3-ehr", "--concurrency", "2"]);
    assert!(out.status.success());
    let out = run(&["clients", "show", "rx3-ehr"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("show prints JSON");
    assert_eq!(shown["maxConcurrent"], 2);
    assert_eq!(shown["history"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn subscriptions_are_limited_to_the_registered_topics_and_payloads() {
    let app = strict_app().await;
    let admitted = "https://fhir.shcr.example.nhs.uk/SubscriptionTopic/admitted";
    let mut c = client("rx4-alerts", "RX4", "application");
    c.topics = Some(vec![admitted.into()]);
    register(&app, c).await;
    let token = system_token(&app, "rx4-alerts", "RX4", &[]);
    let subscription = |topic: &str, payload: &str| {
        json!({
            "resourceType": "Subscription", "status": "requested", "reason": "admissions",
            "criteria": topic,
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook",
                "payload": "application/fhir+json",
                "_payload": {"extension": [{
                    "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content",
                    "valueCode": payload}]}}
        })
    };
    let post = |body: serde_json::Value| {
        let token = token.clone();
        let url = app.url("Subscription");
        let app = &app;
        async move { send(app, Method::POST, &url, &token, Some(&body)).await }
    };
    let discharged = "https://fhir.shcr.example.nhs.uk/SubscriptionTopic/discharged";
    let body = outcome(post(subscription(discharged, "id-only")).await, 403).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("discharged")
    );
    outcome(post(subscription(admitted, "full-resource")).await, 403).await;
    assert_eq!(app.count("resource_version").await, 0);
    let r = post(subscription(admitted, "id-only")).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}
