use serde_json::Value;

use crate::common::{TestApp, match_ids};
use crate::support::*;

/// One person at three trusts (RX1 and RX2 by verified NHS number, RX3 by demographics).
async fn person_at_three_trusts(app: &TestApp) -> (String, String, String) {
    let n = nhs(943_476_591);
    let a = create_as(app, "RX1", &patient("RX1", Some((&n, "01")), &ROBERT)).await;
    let b = create_as(
        app,
        "RX2",
        &patient(
            "RX2",
            Some((&n, "01")),
            &Demo {
                given: "Bob",
                ..ROBERT
            },
        ),
    )
    .await;
    let c = create_as(app, "RX3", &patient("RX3", None, &ROBERT)).await;
    assert_eq!(person_of(app, &a).await, person_of(app, &c).await);
    (a, b, c)
}

#[tokio::test]
async fn everything_spans_every_linked_trust_with_paging() {
    let app = TestApp::spawn().await;
    let (a, b, c) = person_at_three_trusts(&app).await;
    let o1 = create_as(&app, "RX1", &observation(&a, "2345-7", "2024-01-01")).await;
    let o2 = create_as(&app, "RX2", &observation(&b, "2345-7", "2024-02-01")).await;
    let o3 = create_as(&app, "RX3", &observation(&c, "718-7", "2024-03-01")).await;
    // Someone else's record never appears.
    let other = Demo {
        family: "Ng",
        given: "Alice",
        birth: "1990-01-01",
        gender: "female",
        postcode: "HX1 1AA",
        line: "1 Low Road",
    };
    let d = create_as(&app, "RX1", &patient("RX1", None, &other)).await;
    create_as(&app, "RX1", &observation(&d, "2345-7", "2024-01-01")).await;

    let token = app.clinician_token("RX1");
    let all = get_as(&app, &token, &format!("Patient/{a}/$everything")).await;
    let ids = match_ids(&all);
    for want in [
        format!("Patient/{a}"),
        format!("Patient/{b}"),
        format!("Patient/{c}"),
        format!("Observation/{o1}"),
        format!("Observation/{o2}"),
        format!("Observation/{o3}"),
    ] {
        assert!(ids.contains(&want), "{want} missing from {ids:?}");
    }
    assert!(!ids.contains(&format!("Patient/{d}")));
    // The three Patients, three Observations and the Person linking them.
    assert!(ids.contains(&format!("Person/{}", person_of(&app, &a).await)));
    assert_eq!(all["total"], 7, "{ids:?}");

    // _type and _count with next links.
    let mut seen = Vec::new();
    let mut page = get_as(
        &app,
        &token,
        &format!("Patient/{b}/$everything?_type=Observation&_count=2"),
    )
    .await;
    loop {
        seen.extend(match_ids(&page));
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .cloned();
        let Some(next) = next else { break };
        let url = next["url"].as_str().unwrap();
        let path = url.strip_prefix(&format!("{}/", app.base)).unwrap();
        page = get_as(&app, &token, path).await;
    }
    seen.sort();
    let mut want = vec![
        format!("Observation/{o1}"),
        format!("Observation/{o2}"),
        format!("Observation/{o3}"),
    ];
    want.sort();
    assert_eq!(seen, want);

    // _since: only what changed after the instant.
    let since = get_as(
        &app,
        &token,
        &format!("Patient/{a}/$everything?_since=2999-01-01T00:00:00Z"),
    )
    .await;
    assert_eq!(since["total"], 0);

    // A search can expand a patient reference to every linked record.
    let obs = get_as(
        &app,
        &token,
        &format!("Observation?subject:mdm=Patient/{c}"),
    )
    .await;
    assert_eq!(obs["total"], 3, "{obs}");
}

#[tokio::test]
async fn summary_shows_each_fact_once_with_every_source() {
    let app = TestApp::spawn().await;
    let (a, b, _c) = person_at_three_trusts(&app).await;
    // Hypertension reported by two trusts on the same day; asthma by one.
    create_as(&app, "RX1", &condition(&a, "38341003", "2019-03-01")).await;
    create_as(
        &app,
        "RX2",
        &condition(&b, "38341003", "2019-03-01T10:00:00Z"),
    )
    .await;
    create_as(&app, "RX2", &condition(&b, "195967001", "2015-06-01")).await;
    create_as(&app, "RX1", &observation(&a, "2345-7", "2024-01-01")).await;

    let doc = get_as(
        &app,
        &app.clinician_token("RX1"),
        &format!("Patient/{a}/$summary"),
    )
    .await;
    assert_eq!(doc["type"], "document");
    let composition = &doc["entry"][0]["resource"];
    assert_eq!(composition["resourceType"], "Composition");
    let sections = composition["section"].as_array().unwrap();
    let problems = sections
        .iter()
        .find(|s| s["code"]["coding"][0]["code"] == "11450-4")
        .unwrap();
    let entries = problems["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{problems}");
    let sources = |e: &Value| -> Vec<String> {
        e["extension"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                x["valueReference"]["identifier"]["value"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let hypertension = entries
        .iter()
        .find(|e| e["display"] == "condition 38341003")
        .unwrap();
    assert_eq!(sources(hypertension), ["RX1", "RX2"]);
    let asthma = entries
        .iter()
        .find(|e| e["display"] == "condition 195967001")
        .unwrap();
    assert_eq!(sources(asthma), ["RX2"]);
    let results = sections
        .iter()
        .find(|s| s["code"]["coding"][0]["code"] == "30954-2")
        .unwrap();
    assert_eq!(results["entry"].as_array().unwrap().len(), 1);
    // Every referenced resource is in the document.
    let full: Vec<&str> = doc["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap())
        .collect();
    for e in entries {
        let r = e["reference"].as_str().unwrap();
        assert!(full.iter().any(|u| u.ends_with(r)), "{r}");
    }
}

#[tokio::test]
async fn everything_of_an_unknown_patient_is_not_found() {
    let app = TestApp::spawn().await;
    let (status, body) = send(
        &app,
        &app.clinician_token("RX1"),
        reqwest::Method::GET,
        "Patient/nope/$everything",
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["resourceType"], "OperationOutcome");
    let (status, _) = send(
        &app,
        &app.clinician_token("RX1"),
        reqwest::Method::GET,
        "Patient/nope/$summary",
        None,
    )
    .await;
    assert_eq!(status, 404);
}
