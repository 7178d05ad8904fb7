use reqwest::Method;
use serde_json::json;

use crate::common::{TestApp, outcome, patient};

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_position() {
    let app = TestApp::spawn().await;
    let r = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .body("{\"resourceType\": \"Patient\",\n \"gender\": }")
        .send()
        .await
        .unwrap();
    let body = outcome(r, 400).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );
    assert_eq!(app.write_footprint().await, [0, 0, 0, 0]);
}

#[tokio::test]
async fn empty_and_non_object_bodies_are_refused() {
    let app = TestApp::spawn().await;
    let r = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .send()
        .await
        .unwrap();
    outcome(r, 400).await;
    outcome(app.post("Patient", &json!([1, 2])).await, 400).await;
    outcome(app.post("Patient", &json!({"gender": "male"})).await, 400).await;
    assert_eq!(app.write_footprint().await, [0, 0, 0, 0]);
}

#[tokio::test]
async fn unknown_resource_types_are_404() {
    let app = TestApp::spawn().await;
    let body = outcome(
        app.post("Patientt", &json!({"resourceType": "Patientt"}))
            .await,
        404,
    )
    .await;
    assert_eq!(body["issue"][0]["code"], "not-supported");
    outcome(app.get("Patientt/1").await, 404).await;
    assert_eq!(app.write_footprint().await, [0, 0, 0, 0]);
}

#[tokio::test]
async fn a_body_of_the_wrong_type_is_refused() {
    let app = TestApp::spawn().await;
    let body = outcome(app.post("Observation", &patient("9434765919")).await, 400).await;
    assert_eq!(body["issue"][0]["expression"][0], "Patient.resourceType");
    assert_eq!(app.write_footprint().await, [0, 0, 0, 0]);
}

#[tokio::test]
async fn wrong_methods_are_405() {
    let app = TestApp::spawn().await;
    outcome(
        app.request(Method::POST, "Patient/123")
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    outcome(
        app.request(Method::DELETE, "_history")
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    outcome(
        app.request(Method::PATCH, "Patient/123")
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    outcome(
        app.request(Method::PUT, "Patient")
            .header("content-type", "application/fhir+json")
            .body("{}")
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = TestApp::spawn().await;
    let mut p = patient("9434765919");
    p["text"] = json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "x".repeat(300 * 1024))});
    let body = outcome(app.post("Patient", &p).await, 413).await;
    assert_eq!(body["issue"][0]["code"], "too-long");
    assert_eq!(app.write_footprint().await, [0, 0, 0, 0]);
}

#[tokio::test]
async fn non_json_media_types_are_415_and_406() {
    let app = TestApp::spawn().await;
    let r = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+xml")
        .body("<Patient xmlns=\"http://hl7.org/fhir\"/>")
        .send()
        .await
        .unwrap();
    outcome(r, 415).await;
    let r = app
        .request(Method::GET, "Patient/1")
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    outcome(r, 406).await;
    outcome(app.get("Patient/1?_format=xml").await, 406).await;
    assert_eq!(app.write_footprint().await, [0, 0, 0, 0]);
    // JSON flavours are fine.
    let r = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/json; charset=utf-8")
        .header("accept", "application/fhir+json;fhirVersion=4.0, */*;q=0.1")
        .body(patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn invalid_ids_and_etags_are_400() {
    let app = TestApp::spawn().await;
    outcome(app.get("Patient/bad$id").await, 400).await;
    let r = app
        .request(Method::PUT, "Patient/abc")
        .header("content-type", "application/fhir+json")
        .header("if-match", "yesterday")
        .body(json!({"resourceType": "Patient", "id": "abc"}).to_string())
        .send()
        .await
        .unwrap();
    outcome(r, 400).await;
    assert_eq!(app.write_footprint().await, [0, 0, 0, 0]);
}

#[tokio::test]
async fn invalid_resources_are_refused_with_their_location() {
    let app = TestApp::spawn().await;
    let mut p = patient("9434765919");
    p["gender"] = json!("mail");
    p["birthDate"] = json!("1970-13-45");
    let body = outcome(app.post("Patient", &p).await, 400).await;
    let locations: Vec<&str> = body["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    assert!(locations.contains(&"Patient.gender"), "{body}");
    assert!(locations.contains(&"Patient.birthDate"), "{body}");
    assert_eq!(app.write_footprint().await, [0, 0, 0, 0]);
}
