//! FHIR version negotiation and the deprecation of shcr's own features.

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

use crate::common::{TestApp, outcome};

#[tokio::test]
async fn fhir_version_4_is_served_and_other_versions_are_refused_clearly() {
    let app = TestApp::spawn().await;
    let patient = app.create(&crate::common::patient("9434765919")).await;
    let path = format!("Patient/{}", patient["id"].as_str().unwrap());
    let get = |accept: &'static str| {
        app.client
            .get(app.url(&path))
            .header(AUTHORIZATION, format!("Bearer {}", app.trust_token("RX1")))
            .header(ACCEPT, accept)
            .send()
    };
    for version in ["4.0", "4.0.1"] {
        let accept: &'static str =
            Box::leak(format!("application/fhir+json; fhirVersion={version}").into_boxed_str());
        let r = get(accept).await.unwrap();
        assert_eq!(r.status(), 200);
        let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
        assert!(ct.contains(&format!("fhirVersion={version}")), "{ct}");
    }
    let body = outcome(
        get("application/fhir+json; fhirVersion=3.0").await.unwrap(),
        406,
    )
    .await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("3.0")
    );
    // Any acceptable range will do.
    let r = get("application/fhir+json; fhirVersion=5.0, application/fhir+json; fhirVersion=4.0")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A body in another version is refused before anything is written.
    let r = app
        .client
        .post(app.url("Patient"))
        .header(AUTHORIZATION, format!("Bearer {}", app.trust_token("RX1")))
        .header(CONTENT_TYPE, "application/fhir+json; fhirVersion=5.0")
        .body(crate::common::patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    outcome(r, 415).await;
    assert_eq!(app.count("resource_version").await, 1);
    // /metadata negotiates too, without a token.
    let r = app
        .client
        .get(app.url("metadata"))
        .header(ACCEPT, "application/fhir+json; fhirVersion=1.0")
        .send()
        .await
        .unwrap();
    outcome(r, 406).await;
}

#[tokio::test]
async fn a_deprecated_media_type_gets_deprecation_and_sunset_headers_and_a_warning() {
    let app = TestApp::spawn().await;
    let token = app.trust_token("RX1");
    let old = |path: &str| {
        app.client
            .get(app.url(path))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header(ACCEPT, "application/json+fhir")
            .send()
    };
    // An error outcome carries the warning beside the error.
    let r = old("Patient/absent").await.unwrap();
    assert_eq!(r.headers()["deprecation"], "@1795651200");
    assert_eq!(r.headers()["sunset"], "Wed, 30 Jun 2027 00:00:00 GMT");
    assert!(
        r.headers()["link"]
            .to_str()
            .unwrap()
            .contains("rel=\"deprecation\"")
    );
    assert!(
        r.headers()["warning"]
            .to_str()
            .unwrap()
            .contains("application/fhir+json")
    );
    let body = outcome(r, 404).await;
    let severities: Vec<&str> = body["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["severity"].as_str().unwrap())
        .collect();
    assert_eq!(severities, ["error", "warning"]);
    // A search Bundle carries it as an outcome entry.
    let r = old("Patient?name=smith").await.unwrap();
    assert!(r.headers().contains_key("sunset"));
    let bundle: Value = r.json().await.unwrap();
    let outcome_entry = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("outcome entry");
    assert_eq!(outcome_entry["resource"]["issue"][0]["severity"], "warning");
    // The current media type gets none of it.
    let r = app.get("Patient/absent").await;
    assert!(!r.headers().contains_key("deprecation"));
    // The CapabilityStatement publishes the lifecycle.
    let cs: Value = app
        .client
        .get(app.url("metadata"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deprecated = cs["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["extension"][0]["valueString"] == "application/json+fhir")
        .expect("lifecycle entry");
    assert_eq!(deprecated["extension"][1]["valueCode"], "deprecated");
    assert!(cs["description"].as_str().unwrap().contains("deprecated"));
}
