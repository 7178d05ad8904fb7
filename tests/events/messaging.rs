//! `POST /fhir/$process-message` and `Idempotency-Key` on REST writes.

use serde_json::json;

use crate::common::{TestApp, patient};
use crate::support::*;

async fn held_family(app: &TestApp) -> String {
    sqlx::query_scalar(
        "SELECT v.content->'name'->0->>'family' FROM resource_head h
         JOIN resource_version v USING (resource_type, id, version_id)
         WHERE h.resource_type = 'Patient'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("one Patient")
}

#[tokio::test]
async fn a_message_upserts_its_resources_and_answers_ok() {
    let app = TestApp::spawn().await;
    let token = app.trust_token("RX1");
    let (status, response) = post_message(
        &app,
        &token,
        &admission("RX1", "m-1", &at(0), "P1", "E1", "Smith"),
    )
    .await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response_code(&response), "ok");
    assert_eq!(response["type"], "message");
    let header = &response["entry"][0]["resource"];
    assert_eq!(header["response"]["identifier"], "h-m-1");
    let focus = header["focus"][0]["reference"].as_str().unwrap();
    assert!(focus.contains("/Encounter/"), "{focus}");
    assert_eq!(app.count("resource_head").await, 2);
    // The Encounter refers to the stored Patient, not to the message's urn:uuid.
    let subject: String = sqlx::query_scalar(
        "SELECT v.content->'subject'->>'reference' FROM resource_version v
         WHERE v.resource_type = 'Encounter'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(subject.starts_with("Patient/"), "{subject}");
    // Provenance: the version was written by the sending trust, from this message's event.
    let event: String = sqlx::query_scalar(
        "SELECT event_code FROM event_version WHERE resource_type = 'Encounter'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(event, "encounter-admitted-1");
}

#[tokio::test]
async fn the_same_message_twice_is_applied_once() {
    let app = TestApp::spawn().await;
    let token = app.trust_token("RX1");
    let message = admission("RX1", "m-dup", &at(0), "P1", "E1", "Smith");
    let (_, first) = post_message(&app, &token, &message).await;
    let footprint = app.write_footprint().await;
    let (status, second) = post_message(&app, &token, &message).await;
    assert_eq!(status, 200);
    assert_eq!(first, second, "a repeat gets the stored response");
    assert_eq!(
        app.write_footprint().await,
        footprint,
        "nothing written again"
    );

    // The same id with different content is not a repeat: it is refused.
    let other = admission("RX1", "m-dup", &at(0), "P1", "E1", "Jones");
    let (status, response) = post_message(&app, &token, &other).await;
    assert_eq!(status, 409, "{response}");
    assert_eq!(response_code(&response), "fatal-error");
}

#[tokio::test]
async fn an_older_event_is_recorded_as_stale_and_never_overwrites() {
    let app = TestApp::spawn().await;
    let token = app.trust_token("RX1");
    let (_, r) = post_message(
        &app,
        &token,
        &admission("RX1", "m-new", &at(10), "P1", "E1", "Newer"),
    )
    .await;
    assert_eq!(response_code(&r), "ok");
    let versions = app.count("resource_version").await;

    let (status, r) = post_message(
        &app,
        &token,
        &admission("RX1", "m-old", &at(5), "P1", "E1", "Older"),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(response_code(&r), "ok", "a stale event is not an error");
    let outcome = &r["entry"][1]["resource"];
    assert!(
        outcome.to_string().contains("stale"),
        "the response says what was held back: {outcome}"
    );
    assert_eq!(held_family(&app).await, "Newer");
    assert_eq!(
        app.count("resource_version").await,
        versions,
        "nothing written"
    );
    assert_eq!(scalar(&app, "SELECT count(*) FROM event_stale").await, 2);

    let (_, r) = post_message(
        &app,
        &token,
        &admission("RX1", "m-later", &at(20), "P1", "E1", "Latest"),
    )
    .await;
    assert_eq!(response_code(&r), "ok");
    assert_eq!(held_family(&app).await, "Latest");
}

#[tokio::test]
async fn a_patient_sent_again_unchanged_keeps_its_version_and_its_source_time() {
    let app = TestApp::spawn().await;
    let token = app.trust_token("RX1");
    let (_, r) = post_message(
        &app,
        &token,
        &admission("RX1", "m-1", &at(0), "P1", "E1", "Smith"),
    )
    .await;
    assert_eq!(response_code(&r), "ok");
    let patient_versions = || async {
        scalar(
            &app,
            "SELECT count(*) FROM resource_version WHERE resource_type = 'Patient'",
        )
        .await
    };
    let provenances = || async {
        scalar(
            &app,
            "SELECT count(*) FROM resource_head WHERE resource_type = 'Provenance'",
        )
        .await
    };
    assert_eq!(patient_versions().await, 1);
    let before = provenances().await;

    // The next event re-sends the patient as it is (as every ADT message does).
    let (status, r) = post_message(
        &app,
        &token,
        &admission("RX1", "m-2", &at(10), "P1", "E2", "Smith"),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(response_code(&r), "ok");
    assert!(
        r["entry"][1]["resource"].to_string().contains("unchanged"),
        "the response says the patient was unchanged: {}",
        r["entry"][1]["resource"]
    );
    assert_eq!(patient_versions().await, 1, "no new Patient version");
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM resource_head WHERE resource_type = 'Encounter'"
        )
        .await,
        2,
        "the new encounter is written"
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM event_version WHERE resource_type = 'Patient'"
        )
        .await,
        1,
        "no event for the unchanged patient"
    );
    assert!(
        provenances().await > before,
        "the encounter has its Provenance"
    );

    // The unchanged patient still carries the later source time: an event older than it is
    // stale, not applied.
    let (_, r) = post_message(
        &app,
        &token,
        &admission("RX1", "m-3", &at(5), "P1", "E3", "Older"),
    )
    .await;
    assert_eq!(response_code(&r), "ok");
    assert!(
        r["entry"][1]["resource"].to_string().contains("stale"),
        "{r}"
    );
    assert_eq!(held_family(&app).await, "Smith");
}

#[tokio::test]
async fn a_sender_other_than_the_caller_is_refused() {
    let app = TestApp::spawn().await;
    let footprint = app.write_footprint().await;
    let (status, r) = post_message(
        &app,
        &app.trust_token("RX2"),
        &admission("RX1", "m-1", &at(0), "P1", "E1", "Smith"),
    )
    .await;
    assert_eq!(status, 403, "{r}");
    assert_eq!(response_code(&r), "fatal-error");
    let issue = &r["entry"][1]["resource"]["issue"][0];
    assert_eq!(issue["code"], "forbidden");
    assert_eq!(app.write_footprint().await, footprint);

    let (status, _) = post_message(
        &app,
        &app.clinician_token("RX1"),
        &admission("RX1", "m-2", &at(0), "P1", "E1", "Smith"),
    )
    .await;
    assert_eq!(status, 403, "a person does not send trust messages");
}

#[tokio::test]
async fn a_trust_cannot_overwrite_another_trusts_resource() {
    let app = TestApp::spawn().await;
    let first = admission("RX1", "m-1", &at(0), "P1", "E1", "Smith");
    let (_, r) = post_message(&app, &app.trust_token("RX1"), &first).await;
    assert_eq!(response_code(&r), "ok");
    // RX2 claims RX1's identifier system for its own message.
    let mut hijack = admission("RX2", "m-2", &at(5), "P1", "E1", "Mallory");
    hijack["entry"][1]["resource"]["identifier"][1]["system"] =
        json!(local_system("RX1", "local-patient-identifier"));
    let (status, r) = post_message(&app, &app.trust_token("RX2"), &hijack).await;
    assert_eq!(status, 403, "{r}");
    assert_eq!(held_family(&app).await, "Smith");
}

#[tokio::test]
async fn malformed_and_unknown_messages_are_fatal_errors_with_locations() {
    let app = TestApp::spawn().await;
    let token = app.trust_token("RX1");
    let mut unknown = admission("RX1", "m-1", &at(0), "P1", "E1", "Smith");
    unknown["entry"][0]["resource"]["eventCoding"]["code"] = json!("made-up-1");
    let (status, r) = post_message(&app, &token, &unknown).await;
    assert_eq!(status, 400);
    assert_eq!(response_code(&r), "fatal-error");
    assert_eq!(
        r["entry"][1]["resource"]["issue"][0]["code"],
        "code-invalid"
    );

    let mut keyless = admission("RX1", "m-2", &at(0), "P1", "E1", "Smith");
    keyless["entry"][2]["resource"]["identifier"] = json!([]);
    let (status, r) = post_message(&app, &token, &keyless).await;
    assert_eq!(status, 400, "{r}");
    let issue = &r["entry"][1]["resource"]["issue"][0];
    assert_eq!(
        issue["expression"][0],
        "Bundle.entry[2].resource.identifier"
    );

    let mut invalid = admission("RX1", "m-3", &at(0), "P1", "E1", "Smith");
    invalid["entry"][2]["resource"]["status"] = json!("bogus");
    let (status, r) = post_message(&app, &token, &invalid).await;
    assert_eq!(status, 400, "{r}");
    let location = r["entry"][1]["resource"]["issue"][0]["expression"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        location.starts_with("Bundle.entry[2].resource"),
        "{location}"
    );
    assert_eq!(app.count("resource_head").await, 0);

    // Not a message at all: a plain OperationOutcome.
    let r = app.post("$process-message", &patient("9434765919")).await;
    crate::common::outcome(r, 400).await;
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retried_create_return_the_first_response() {
    let app = TestApp::spawn().await;
    let send = |body: serde_json::Value, key: &'static str| {
        app.request(reqwest::Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .header("idempotency-key", key)
            .body(body.to_string())
            .send()
    };
    let first = send(patient("9434765919"), "k-1").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = send(patient("9434765919"), "k-1").await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(first, again);
    assert_eq!(app.count("resource_version").await, 1);

    let mut different = patient("9434765919");
    different["gender"] = json!("male");
    let r = send(different, "k-1").await.unwrap();
    crate::common::outcome(r, 422).await;
    // Another trust's key space is its own.
    let r = app
        .client
        .post(app.url("Patient"))
        .bearer_auth(app.trust_token("RX2"))
        .header("content-type", "application/fhir+json")
        .header("idempotency-key", "k-1")
        .body(patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(app.count("resource_version").await, 2);
}
