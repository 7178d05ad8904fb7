use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestApp, patient};

#[tokio::test]
async fn concurrent_if_match_updates_have_exactly_one_winner() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("9434765919")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for n in 0..8 {
        let mut body = created.clone();
        body["name"][0]["given"] = json!([format!("Writer{n}")]);
        let request = app
            .request(Method::PUT, &format!("Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .header("if-match", "W/\"1\"")
            .body(body.to_string());
        tasks.push(tokio::spawn(async move {
            request.send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 412, 412, 412, 412, 412, 412, 412]);
    let current: Value = app
        .get(&format!("Patient/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(current["meta"]["versionId"], "2");
    assert_eq!(app.count("resource_version").await, 2);
}

#[tokio::test]
async fn concurrent_conditional_creates_create_once() {
    let app = TestApp::spawn().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let request = app
            .request(Method::POST, "Patient")
            .header("content-type", "application/fhir+json")
            .header(
                "if-none-exist",
                "identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919",
            )
            .body(patient("9434765919").to_string());
        tasks.push(tokio::spawn(async move {
            request.send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 200, 200, 201]);
    assert_eq!(app.count("resource_head").await, 1);
}

#[tokio::test]
async fn concurrent_update_as_create_of_one_id_converges() {
    let app = TestApp::spawn().await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut p = patient("9434765919");
        p["id"] = json!("same-client-id");
        // Each with its own content: the same content again writes no version.
        p["birthDate"] = json!(format!("1970-01-{:02}", i + 1));
        let request = app
            .request(Method::PUT, "Patient/same-client-id")
            .header("content-type", "application/fhir+json")
            .body(p.to_string());
        tasks.push(tokio::spawn(async move {
            request.send().await.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 201]);
    assert_eq!(app.count("resource_version").await, 6);
}

#[tokio::test]
async fn concurrent_identical_updates_write_one_version() {
    let app = TestApp::spawn().await;
    let mut p = patient("9434765919");
    p["id"] = json!("same-client-id");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let request = app
            .request(Method::PUT, "Patient/same-client-id")
            .header("content-type", "application/fhir+json")
            .body(p.to_string());
        tasks.push(tokio::spawn(async move {
            let r = request.send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers()["etag"].to_str().unwrap().to_string(),
            )
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers.sort();
    let mut expected = vec![(200, "W/\"1\"".to_string()); 5];
    expected.push((201, "W/\"1\"".to_string()));
    assert_eq!(
        answers, expected,
        "one creates, the others find it unchanged"
    );
    // The version and its Provenance.
    let patients: i64 =
        sqlx::query_scalar("SELECT count(*) FROM resource_version WHERE resource_type = 'Patient'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(patients, 1);
}
