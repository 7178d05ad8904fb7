use serde_json::{Value, json};

use crate::common::{TestApp, outcome, patient};

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn post_entry(full_url: &str, resource: Value) -> Value {
    let t = resource["resourceType"].as_str().unwrap().to_string();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": t}})
}

fn observation_for(subject: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": subject},
        "performer": [{"reference": "Practitioner?identifier=https://fhir.hl7.org.uk/Id/gmc-number|1234567"}],
        "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

fn practitioner() -> Value {
    json!({
        "resourceType": "Practitioner",
        "identifier": [{"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "1234567"}],
        "name": [{"family": "Gose", "given": ["Sandra"], "prefix": ["Dr"]}]
    })
}

#[tokio::test]
async fn transaction_resolves_local_and_conditional_references() {
    let app = TestApp::spawn().await;
    let gp = app.create(&practitioner()).await;
    let bundle = transaction(vec![
        post_entry(
            "urn:uuid:6b9b5c6e-0000-4000-8000-000000000001",
            patient("9434765919"),
        ),
        post_entry(
            "urn:uuid:6b9b5c6e-0000-4000-8000-000000000002",
            observation_for("urn:uuid:6b9b5c6e-0000-4000-8000-000000000001"),
        ),
    ]);
    let r = app.post("", &bundle).await;
    assert_eq!(r.status(), 200);
    let response: Value = r.json().await.unwrap();
    assert_eq!(response["type"], "transaction-response");
    let entries = response["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    let patient_location = entries[0]["response"]["location"].as_str().unwrap();
    let patient_id = patient_location.split('/').nth(1).unwrap();
    let obs_location = entries[1]["response"]["location"]
        .as_str()
        .unwrap()
        .to_string();
    let obs_id = obs_location.split('/').nth(1).unwrap();

    let obs: Value = app
        .get(&format!("Observation/{obs_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(obs["subject"]["reference"], format!("Patient/{patient_id}"));
    assert_eq!(
        obs["performer"][0]["reference"],
        format!("Practitioner/{}", gp["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn a_failing_entry_rolls_back_the_whole_transaction() {
    let app = TestApp::spawn().await;
    app.create(&practitioner()).await;
    let before = app.write_footprint().await;
    let mut bad = observation_for("urn:uuid:6b9b5c6e-0000-4000-8000-000000000001");
    bad["status"] = json!("done-and-dusted");
    let bundle = transaction(vec![
        post_entry(
            "urn:uuid:6b9b5c6e-0000-4000-8000-000000000001",
            patient("9434765919"),
        ),
        post_entry("urn:uuid:6b9b5c6e-0000-4000-8000-000000000002", bad),
    ]);
    let body = outcome(app.post("", &bundle).await, 400).await;
    assert_eq!(
        body["issue"][0]["expression"][0], "Bundle.entry[1].resource.status",
        "{body}"
    );
    assert_eq!(app.write_footprint().await, before);

    // A failure found only in the database phase (an If-Match on a stale version) rolls back too.
    let existing = app.create(&patient("9434765919")).await;
    let before = app.write_footprint().await;
    let id = existing["id"].as_str().unwrap();
    let bundle = transaction(vec![
        post_entry(
            "urn:uuid:6b9b5c6e-0000-4000-8000-000000000003",
            patient("9434765919"),
        ),
        json!({"resource": existing, "request": {"method": "PUT", "url": format!("Patient/{id}"), "ifMatch": "W/\"9\""}}),
    ]);
    let body = outcome(app.post("", &bundle).await, 412).await;
    assert_eq!(body["issue"][0]["expression"][0], "Bundle.entry[1]");
    assert_eq!(app.write_footprint().await, before);
}

#[tokio::test]
async fn unresolvable_references_fail_the_transaction() {
    let app = TestApp::spawn().await;
    let bundle = transaction(vec![post_entry(
        "urn:uuid:6b9b5c6e-0000-4000-8000-000000000002",
        observation_for("urn:uuid:6b9b5c6e-0000-4000-8000-00000000dead"),
    )]);
    // The conditional performer matches nothing: that is reported first.
    let body = outcome(app.post("", &bundle).await, 400).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("matches no resource"),
        "{body}"
    );
    app.create(&practitioner()).await;
    let body = outcome(app.post("", &bundle).await, 400).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("urn:uuid:6b9b5c6e-0000-4000-8000-00000000dead"),
        "{body}"
    );
    assert_eq!(app.count("resource_version").await, 1);
}

#[tokio::test]
async fn if_none_exist_entries_reuse_existing_resources() {
    let app = TestApp::spawn().await;
    let existing = app.create(&practitioner()).await;
    let bundle = transaction(vec![
        json!({
            "fullUrl": "urn:uuid:6b9b5c6e-0000-4000-8000-000000000010",
            "resource": practitioner(),
            "request": {"method": "POST", "url": "Practitioner", "ifNoneExist": "identifier=https://fhir.hl7.org.uk/Id/gmc-number|1234567"}
        }),
        post_entry(
            "urn:uuid:6b9b5c6e-0000-4000-8000-000000000011",
            json!({
                "resourceType": "PractitionerRole",
                "practitioner": {"reference": "urn:uuid:6b9b5c6e-0000-4000-8000-000000000010"}
            }),
        ),
    ]);
    let response: Value = app.post("", &bundle).await.json().await.unwrap();
    assert_eq!(response["entry"][0]["response"]["status"], "200 OK");
    let role_id = response["entry"][1]["response"]["location"]
        .as_str()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .to_string();
    let role: Value = app
        .get(&format!("PractitionerRole/{role_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        role["practitioner"]["reference"],
        format!("Practitioner/{}", existing["id"].as_str().unwrap())
    );
    assert_eq!(app.count("resource_head").await, 2);
}

#[tokio::test]
async fn transactions_can_update_delete_and_read() {
    let app = TestApp::spawn().await;
    let a = app.create(&patient("9434765919")).await;
    let b = app.create(&patient("9434765919")).await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let mut a2 = a.clone();
    a2["gender"] = json!("male");
    let bundle = transaction(vec![
        json!({"resource": a2, "request": {"method": "PUT", "url": format!("Patient/{a_id}")}}),
        json!({"request": {"method": "DELETE", "url": format!("Patient/{b_id}")}}),
        json!({"request": {"method": "GET", "url": format!("Patient/{a_id}")}}),
    ]);
    let r = app
        .request(reqwest::Method::POST, "")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=representation")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let response: Value = r.json().await.unwrap();
    assert_eq!(response["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(response["entry"][0]["resource"]["gender"], "male");
    assert_eq!(response["entry"][1]["response"]["status"], "200 OK");
    assert_eq!(response["entry"][2]["resource"]["meta"]["versionId"], "2");
    outcome(app.get(&format!("Patient/{b_id}")).await, 410).await;
}

#[tokio::test]
async fn the_same_resource_twice_in_one_transaction_is_refused() {
    let app = TestApp::spawn().await;
    let a = app.create(&patient("9434765919")).await;
    let id = a["id"].as_str().unwrap();
    let bundle = transaction(vec![
        json!({"resource": a, "request": {"method": "PUT", "url": format!("Patient/{id}")}}),
        json!({"request": {"method": "DELETE", "url": format!("Patient/{id}")}}),
    ]);
    let before = app.write_footprint().await;
    outcome(app.post("", &bundle).await, 400).await;
    assert_eq!(app.write_footprint().await, before);
}

#[tokio::test]
async fn batch_entries_succeed_or_fail_independently() {
    let app = TestApp::spawn().await;
    let mut bad = patient("9434765919");
    bad["gender"] = json!("unsure");
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("9434765919"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": bad, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "PATCH", "url": "Patient/x"}},
    ]});
    let r = app.post("", &bundle).await;
    assert_eq!(r.status(), 200);
    let response: Value = r.json().await.unwrap();
    assert_eq!(response["type"], "batch-response");
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        vec![
            "201 Created",
            "400 Bad Request",
            "404 Not Found",
            "400 Bad Request"
        ]
    );
    assert_eq!(
        response["entry"][1]["response"]["outcome"]["issue"][0]["expression"][0],
        "Bundle.entry[1].resource.gender"
    );
    assert_eq!(app.count("resource_head").await, 1);
}

#[tokio::test]
async fn only_transaction_and_batch_bundles_are_processed() {
    let app = TestApp::spawn().await;
    let body = outcome(
        app.post("", &json!({"resourceType": "Bundle", "type": "collection"}))
            .await,
        400,
    )
    .await;
    assert_eq!(body["issue"][0]["expression"][0], "Bundle.type");
    outcome(app.post("", &patient("9434765919")).await, 400).await;
    assert_eq!(app.write_footprint().await, [0, 0, 0, 0]);
}
