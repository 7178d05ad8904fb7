//! Message builders and NATS helpers shared by the event tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::TestApp;

pub const EVENT_SYSTEM: &str = "https://fhir.shcr.example.nhs.uk/CodeSystem/event-type";
pub const TOPIC_BASE: &str = "https://fhir.shcr.example.nhs.uk/SubscriptionTopic";

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn local_system(ods: &str, what: &str) -> String {
    format!(
        "https://fhir.{}.example.nhs.uk/Id/{what}",
        ods.to_lowercase()
    )
}

/// An admission message: the Encounter (focus) and its Patient, both keyed by the trust's own
/// identifiers. `family` lets a test tell which message's Patient state is held.
pub fn admission(
    ods: &str,
    message_id: &str,
    timestamp: &str,
    patient: &str,
    encounter: &str,
    family: &str,
) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": message_id,
        "type": "message",
        "timestamp": timestamp,
        "entry": [
            {"fullUrl": "urn:uuid:8f1c7a4e-0000-4000-8000-000000000001", "resource": {
                "resourceType": "MessageHeader",
                "id": format!("h-{message_id}"),
                "eventCoding": {"system": EVENT_SYSTEM, "code": "encounter-admitted-1"},
                "sender": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}},
                "source": {"endpoint": format!("urn:nhs:addressing:asid:{ods}0001")},
                "focus": [{"reference": "urn:uuid:8f1c7a4e-0000-4000-8000-000000000003"}]
            }},
            {"fullUrl": "urn:uuid:8f1c7a4e-0000-4000-8000-000000000002", "resource": {
                "resourceType": "Patient",
                "identifier": [
                    {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"},
                    {"system": local_system(ods, "local-patient-identifier"), "value": patient}
                ],
                "name": [{"family": family, "given": ["Jane"]}],
                "gender": "female",
                "birthDate": "1970-01-02"
            }},
            {"fullUrl": "urn:uuid:8f1c7a4e-0000-4000-8000-000000000003", "resource": {
                "resourceType": "Encounter",
                "identifier": [{"system": local_system(ods, "encounter"), "value": encounter}],
                "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": "urn:uuid:8f1c7a4e-0000-4000-8000-000000000002"}
            }}
        ]
    })
}

/// `2026-11-25T10:00:00.000Z` plus `n` seconds.
pub fn at(n: u64) -> String {
    let t = time::macros::datetime!(2026-11-25 10:00:00 UTC) + time::Duration::seconds(n as i64);
    shcr::fhir::instant::format_instant(t)
}

pub async fn post_message(app: &TestApp, token: &str, bundle: &Value) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("$process-message"))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .expect("POST $process-message");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

/// The response code of a response message.
pub fn response_code(response: &Value) -> &str {
    response["entry"][0]["resource"]["response"]["code"]
        .as_str()
        .unwrap_or("none")
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn scalar(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.pool)
        .await
        .expect(sql)
}
