use serde_json::json;

use crate::common::{TestApp, match_ids};
use crate::support::*;

#[tokio::test]
async fn every_write_records_provenance_of_the_exact_version() {
    let app = TestApp::spawn().await;
    let token = app.trust_token("RX1");
    let p = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let mut obs = observation(&p, "2345-7", "2024-01-01");
    let o = create_as(&app, "RX1", &obs).await;
    obs["id"] = json!(o);
    obs["status"] = json!("amended");
    let (status, _) = send(
        &app,
        &token,
        reqwest::Method::PUT,
        &format!("Observation/{o}"),
        Some(&obs),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        &app,
        &token,
        reqwest::Method::DELETE,
        &format!("Observation/{o}"),
        None,
    )
    .await;
    assert_eq!(status, 200);

    let bundle = get_as(&app, &token, &format!("Provenance?target=Observation/{o}")).await;
    assert_eq!(bundle["total"], 3, "{bundle}");
    let mut activities: Vec<String> = Vec::new();
    for e in bundle["entry"].as_array().unwrap() {
        let r = &e["resource"];
        activities.push(
            r["activity"]["coding"][0]["code"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        let target = r["target"][0]["reference"].as_str().unwrap();
        assert!(
            target.starts_with(&format!("Observation/{o}/_history/")),
            "{target}"
        );
        assert_eq!(r["agent"][0]["who"]["identifier"]["value"], "RX1");
        assert_eq!(r["agent"][1]["who"]["identifier"]["value"], "rx1-pas");
        assert!(r["recorded"].is_string());
    }
    activities.sort();
    assert_eq!(activities, ["CREATE", "DELETE", "UPDATE"]);

    // _revinclude brings a resource's Provenance along.
    let with = get_as(
        &app,
        &token,
        &format!("Patient?_id={p}&_revinclude=Provenance:target"),
    )
    .await;
    let ids = with["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .count();
    assert!(ids >= 1, "{with}");

    // The link decision has Provenance too, with the matcher as agent.
    let person = person_of(&app, &p).await;
    let linked = get_as(
        &app,
        &app.clinician_token("RX1"),
        &format!("Provenance?target=Person/{person}"),
    )
    .await;
    assert_eq!(
        linked["entry"][0]["resource"]["agent"][0]["who"]["identifier"]["value"],
        "shcr-identity-matcher"
    );
}

#[tokio::test]
async fn transaction_bundle_entries_get_provenance_and_link() {
    let app = TestApp::spawn().await;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
             "resource": patient("RX1", None, &ROBERT),
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
             "resource": observation("x", "2345-7", "2024-01-01"),
             "request": {"method": "POST", "url": "Observation"}},
        ]
    });
    let mut bundle = bundle;
    bundle["entry"][1]["resource"]["subject"]["reference"] =
        json!("urn:uuid:11111111-1111-1111-1111-111111111111");
    let (status, body) = send(
        &app,
        &app.trust_token("RX1"),
        reqwest::Method::POST,
        "",
        Some(&bundle),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let patient_loc = body["entry"][0]["response"]["location"].as_str().unwrap();
    let pid = patient_loc.split('/').nth(1).unwrap().to_string();
    person_of(&app, &pid).await;
    let prov = get_as(
        &app,
        &app.trust_token("RX1"),
        &format!("Provenance?target=Patient/{pid}"),
    )
    .await;
    let ids = match_ids(&prov);
    assert_eq!(ids.len(), 1);
    assert_eq!(
        prov["entry"][0]["resource"]["target"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "one Provenance names both versions"
    );
}
