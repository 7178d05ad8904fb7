//! `$validate` with UK Core and shcr profiles, published profiles, and the sandbox.

use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestApp, outcome};
use crate::{fixture, issues, send};

const UKCORE: &str = "https://fhir.hl7.org.uk/StructureDefinition/UKCore-";
const SHCR_PATIENT: &str = "https://fhir.shcr.example.nhs.uk/StructureDefinition/ShCR-Patient";

/// Undoes the two artefacts of the XML-to-JSON conversion of the UK Core examples that
/// `tests/validation.rs` documents: `fhir_comments` properties, and 0..1 elements written as
/// R5-style one-item arrays. What is left is the example as published.
fn as_published(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("fhir_comments");
                map.values_mut().for_each(strip);
                // `_status: {fhir_comments: …}` leaves an empty companion behind, and
                // `_line: [{fhir_comments: …}]` an empty item (null in aligned arrays).
                for (k, v) in map.iter_mut() {
                    if let (true, Some(items)) = (k.starts_with('_'), v.as_array_mut()) {
                        for item in items.iter_mut() {
                            if item.as_object().is_some_and(|o| o.is_empty()) {
                                *item = Value::Null;
                            }
                        }
                    }
                }
                map.retain(|k, v| {
                    let empty = match v {
                        Value::Object(o) => o.is_empty(),
                        Value::Array(a) => a.iter().all(Value::is_null),
                        _ => false,
                    };
                    !(k.starts_with('_') && empty)
                });
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    let r5_arrays: &[(&str, &str)] = &[
        ("Device", "type"),
        ("List", "subject"),
        ("Composition", "identifier"),
        ("Composition", "subject"),
        ("QuestionnaireResponse", "identifier"),
    ];
    let t = v["resourceType"].as_str().unwrap_or("").to_string();
    for (rt, element) in r5_arrays {
        if t == *rt
            && let Some(first) = v[*element].as_array().and_then(|a| a.first()).cloned()
        {
            v[*element] = first;
        }
    }
    v
}

async fn validate(app: &TestApp, path: &str, body: &Value) -> Value {
    let token = app.trust_token("RX1");
    let r = send(app, Method::POST, &app.url(path), &token, Some(body)).await;
    outcome(r, 200).await
}

fn errors(outcome: &Value) -> Vec<(String, String, String)> {
    issues(outcome)
        .into_iter()
        .filter(|(s, _, _)| s == "error" || s == "fatal")
        .collect()
}

#[tokio::test]
async fn every_uk_core_example_validates_against_r4_and_its_uk_core_profile() {
    let app = TestApp::spawn().await;
    let profiled = shcr::validation::profiles::Profiles::load(None).unwrap();
    let dir = format!("{}/tests/fixtures/ukcore", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    let mut against_profile = 0;
    for name in &names {
        let resource = as_published(fixture(&format!("ukcore/{name}")));
        let t = resource["resourceType"].as_str().unwrap().to_string();
        let profile = format!("{UKCORE}{t}");
        let path = if profiled.get(&profile).is_some() {
            against_profile += 1;
            format!("{t}/$validate?profile={profile}")
        } else {
            format!("{t}/$validate")
        };
        let body = validate(&app, &path, &resource).await;
        assert!(errors(&body).is_empty(), "{name}: {:?}", errors(&body));
    }
    assert_eq!(names.len(), 134);
    assert!(
        against_profile >= 50,
        "{against_profile} examples checked against a UK Core profile"
    );
    // Nothing was stored.
    assert_eq!(app.write_footprint().await, [0, 0, 0, 0]);
}

#[tokio::test]
async fn an_invalid_uk_core_patient_gets_every_issue_with_its_location() {
    let app = TestApp::spawn().await;
    let mut patient = as_published(fixture("ukcore/UKCore-Patient-RichardSmith-Example.json"));
    // A second NHS number, a verification status outside the value set, an impossible date.
    let mut second = patient["identifier"][0].clone();
    second["value"] = json!("9434765919");
    second.as_object_mut().unwrap().remove("extension");
    patient["identifier"].as_array_mut().unwrap().push(second);
    patient["identifier"][0]["extension"][0]["valueCodeableConcept"]["coding"][0]["code"] =
        json!("99");
    patient["birthDate"] = json!("1970-02-30");
    let body = validate(
        &app,
        &format!("Patient/$validate?profile={UKCORE}Patient"),
        &patient,
    )
    .await;
    let found = errors(&body);
    let at = |loc: &str| found.iter().any(|(_, l, _)| l == loc);
    assert!(at("Patient.birthDate"), "{found:?}");
    assert!(at("Patient.identifier[1]"), "{found:?}");
    assert!(
        at("Patient.identifier[0].extension[0].valueCodeableConcept"),
        "{found:?}"
    );
    assert!(found.len() >= 3);
}

#[tokio::test]
async fn shcr_profiles_are_published_and_checked_including_parameters_form() {
    let app = TestApp::spawn().await;
    // The NHS number fails its check digit: UK Core allows it, shcr's profile does not.
    let mut patient = as_published(fixture("ukcore/UKCore-Patient-RichardSmith-Example.json"));
    patient["identifier"][0]["value"] = json!("9434765918");
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": patient},
        {"name": "profile", "valueUri": SHCR_PATIENT},
        {"name": "mode", "valueCode": "create"},
    ]});
    let body = validate(&app, "$validate", &parameters).await;
    let found = errors(&body);
    assert!(
        found
            .iter()
            .any(|(_, l, d)| l == "Patient.identifier[0].value" && d.contains("NHS number")),
        "{found:?}"
    );
    // An unknown profile is said to be unknown, not silently skipped.
    let token = app.trust_token("RX1");
    let r = send(
        &app,
        Method::POST,
        &app.url("Patient/$validate?profile=https://example.org/Nope"),
        &token,
        Some(&patient),
    )
    .await;
    outcome(r, 400).await;
    // The profile as a StructureDefinition, open like /metadata.
    let sd: Value = app
        .client
        .get(format!("{}/profiles/ShCR-Patient", app.origin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sd["resourceType"], "StructureDefinition");
    assert_eq!(sd["url"], SHCR_PATIENT);
    assert_eq!(sd["baseDefinition"], format!("{UKCORE}Patient"));
    assert!(!sd["differential"]["element"].as_array().unwrap().is_empty());
    // The CapabilityStatement names the profiles and the operation.
    let cs: Value = app
        .client
        .get(app.url("metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patient_cs = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    assert!(
        patient_cs["supportedProfile"]
            .as_array()
            .unwrap()
            .contains(&json!(SHCR_PATIENT))
    );
    assert!(
        cs["rest"][0]["operation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["name"] == "validate")
    );
}

#[tokio::test]
async fn a_sandbox_write_answers_like_a_real_one_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let token = app.trust_token("RX1");
    let sandbox = |method: Method, path: &str, body: &Value| {
        app.client
            .request(method, app.url(path))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/fhir+json")
            .header("X-Shcr-Sandbox", "true")
            .body(body.to_string())
            .send()
    };
    let r = sandbox(
        Method::POST,
        "Patient",
        &crate::common::patient("9434765919"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-shcr-sandbox"], "true");
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["meta"]["versionId"], "1");

    let bundle = fixture("ukcore/UKCore-Bundle-BatchPOST-Example.json");
    let r = sandbox(Method::POST, "", &bundle).await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "batch-response");
    // An invalid resource is refused in the sandbox exactly as for real.
    let mut bad = crate::common::patient("9434765919");
    bad["birthDate"] = json!("not a date");
    let r = sandbox(Method::POST, "Patient", &bad).await.unwrap();
    outcome(r, 400).await;
    // A message too: answered as applied, nothing kept (not even its message id).
    let message = crate::support::admission(
        "RX1",
        "sandbox-1",
        &crate::support::at(0),
        "P1",
        "E1",
        "Sandbox",
    );
    let r = sandbox(Method::POST, "$process-message", &message)
        .await
        .unwrap();
    assert_eq!(r.headers()["x-shcr-sandbox"], "true");
    let response: Value = r.json().await.unwrap();
    assert_eq!(crate::support::response_code(&response), "ok", "{response}");
    assert_eq!(
        crate::support::scalar(&app, "SELECT count(*) FROM event_idempotency").await,
        0
    );
    assert_eq!(
        app.write_footprint().await,
        [0, 0, 0, 0],
        "the sandbox stored something"
    );
    // The same write without the header is stored.
    app.create(&crate::common::patient("9434765919")).await;
    assert_eq!(app.count("resource_version").await, 1);
}
