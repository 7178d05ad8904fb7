//! Searches decide against the organisation's facts kept between requests: every change of a
//! care relationship or a consent committed before a search must show in it.

use serde_json::Value;

use crate::common::TestApp;
use crate::*;

fn matched_subjects(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| {
                    e["resource"]["subject"]["reference"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test]
async fn each_search_sees_the_relationships_and_consents_committed_before_it() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", patient("Related", None)).await;
    let b = create_as(&app, "RX1", patient("Unrelated", None)).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    create_as(&app, "RX1", observation(a, &[])).await;
    create_as(&app, "RX1", observation(b, &[])).await;
    let doctor = clinician(&app, "RX2");
    let search = || get(&app, &doctor, "Observation?code=http://loinc.org|8867-4");
    let (status, bundle) = search().await;
    assert_eq!(status, 200, "{bundle}");
    assert!(matched_subjects(&bundle).is_empty(), "{bundle}");

    // Twice more, so a later answer cannot come from a first load.
    for _ in 0..2 {
        assert!(matched_subjects(&search().await.1).is_empty());
    }
    // RX2 sees the patient: a relationship, visible to the very next search.
    create_as(&app, "RX2", encounter(a, &days_ago(3), &days_ago(2))).await;
    let want_a = vec![format!("Patient/{a}")];
    assert_eq!(matched_subjects(&search().await.1), want_a);
    assert_eq!(matched_subjects(&search().await.1), want_a);

    // The patient opts out: gone at once.
    let c = create_as(&app, "RX1", consent(a, &[], &[], None)).await;
    assert!(matched_subjects(&search().await.1).is_empty());

    // Withdrawn: back at once.
    let mut withdrawn = c.clone();
    withdrawn["status"] = serde_json::json!("inactive");
    let (status, _) = send(
        &app,
        &app.trust_token("RX1"),
        reqwest::Method::PUT,
        &format!("Consent/{}", c["id"].as_str().unwrap()),
        Some(&withdrawn),
        "withdraw",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(matched_subjects(&search().await.1), want_a);

    // Another organisation's facts are its own: RX3 still sees nothing.
    let rx3 = clinician(&app, "RX3");
    let (_, bundle) = get(&app, &rx3, "Observation?code=http://loinc.org|8867-4").await;
    assert!(matched_subjects(&bundle).is_empty(), "{bundle}");
}

#[tokio::test]
async fn a_read_is_decided_on_every_patient_the_resource_concerns() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", patient("Subject", None)).await;
    let b = create_as(&app, "RX1", patient("Performer", None)).await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    create_as(&app, "RX2", encounter(a, &days_ago(3), &days_ago(2))).await;
    create_as(&app, "RX2", encounter(b, &days_ago(3), &days_ago(2))).await;
    let mut o = observation(a, &[]);
    o["performer"] = serde_json::json!([{"reference": format!("Patient/{b}")}]);
    let o = create_as(&app, "RX1", o).await;
    let path = format!("Observation/{}", o["id"].as_str().unwrap());
    let doctor = clinician(&app, "RX2");
    assert_eq!(get(&app, &doctor, &path).await.0, 200);
    // The performer, a patient too, opts out: the resource is in their compartment as well.
    create_as(&app, "RX1", consent(b, &[], &[], None)).await;
    assert_eq!(get(&app, &doctor, &path).await.0, 404);
    // A patient the caller has no relationship with, named only by an absolute reference.
    let c = create_as(&app, "RX1", patient("Stranger", None)).await;
    let mut o = observation(c["id"].as_str().unwrap(), &[]);
    o["subject"]["reference"] =
        serde_json::json!(app.url(&format!("Patient/{}", c["id"].as_str().unwrap())));
    let o = create_as(&app, "RX1", o).await;
    let path = format!("Observation/{}", o["id"].as_str().unwrap());
    assert_eq!(get(&app, &doctor, &path).await.0, 404);
    assert_eq!(get(&app, &app.trust_token("RX1"), &path).await.0, 200);
}
