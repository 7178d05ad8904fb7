use serde_json::json;

use crate::common::TestApp;
use crate::support::*;

#[tokio::test]
async fn equal_verified_nhs_numbers_link_deterministically_across_trusts() {
    let app = TestApp::spawn().await;
    let n = nhs(943_476_591);
    let a = create_as(&app, "RX1", &patient("RX1", Some((&n, "01")), &ROBERT)).await;
    // The second trust spells the name differently and has an old address: the number decides.
    let other = Demo {
        family: "Tomson",
        given: "Bob",
        postcode: "BD7 1XY",
        line: "3 High St",
        ..ROBERT
    };
    let b = create_as(&app, "RX2", &patient("RX2", Some((&n, "01")), &other)).await;
    let person = person_of(&app, &a).await;
    assert_eq!(person_of(&app, &b).await, person);
    assert_eq!(grade_of(&app, &b).await, ("certain".into(), "auto".into()));

    // A clinician of a trust holding one of the records sees the Person.
    let p = get_as(
        &app,
        &app.clinician_token("RX1"),
        &format!("Person/{person}"),
    )
    .await;
    let targets: Vec<&str> = p["link"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["target"]["reference"].as_str().unwrap())
        .collect();
    assert!(
        targets.contains(&format!("Patient/{a}").as_str())
            && targets.contains(&format!("Patient/{b}").as_str()),
        "{p}"
    );
    let b_link = p["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["target"]["reference"] == format!("Patient/{b}"))
        .unwrap();
    assert_eq!(b_link["assurance"], "level4");
}

#[tokio::test]
async fn matching_demographics_link_probabilistically_without_nhs_numbers() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let b = create_as(
        &app,
        "RX2",
        &patient(
            "RX2",
            None,
            &Demo {
                given: "Bob",
                ..ROBERT
            },
        ),
    )
    .await;
    assert_eq!(person_of(&app, &a).await, person_of(&app, &b).await);
    assert_eq!(grade_of(&app, &b).await, ("probable".into(), "auto".into()));
    // A neighbour: same street and surname, different person.
    let spouse = Demo {
        given: "Margaret",
        gender: "female",
        birth: "1972-11-23",
        ..ROBERT
    };
    let c = create_as(&app, "RX2", &patient("RX2", None, &spouse)).await;
    assert_ne!(person_of(&app, &c).await, person_of(&app, &a).await);
}

#[tokio::test]
async fn conflicting_verified_nhs_numbers_never_link() {
    let app = TestApp::spawn().await;
    let a = create_as(
        &app,
        "RX1",
        &patient("RX1", Some((&nhs(943_476_591), "01")), &ROBERT),
    )
    .await;
    let b = create_as(
        &app,
        "RX2",
        &patient("RX2", Some((&nhs(943_476_600), "01")), &ROBERT),
    )
    .await;
    assert_ne!(person_of(&app, &a).await, person_of(&app, &b).await);
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM identity_review WHERE patient_id = $1")
            .bind(&b)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(reason, "conflict");
}

#[tokio::test]
async fn invalid_nhs_number_is_flagged_and_never_used_for_matching() {
    let app = TestApp::spawn().await;
    let bad = "9434765918";
    let a_body = patient("RX1", Some((bad, "01")), &ROBERT);
    let (status, stored) = send(
        &app,
        &app.trust_token("RX1"),
        reqwest::Method::POST,
        "Patient",
        Some(&a_body),
    )
    .await;
    assert_eq!(status, 201);
    let tags = stored["meta"]["tag"].as_array().expect("flag tag");
    assert!(
        tags.iter().any(|t| t["code"] == "invalid-nhs-number"),
        "{stored}"
    );
    let a = stored["id"].as_str().unwrap().to_string();
    // The same invalid number on someone else links nothing.
    let other = Demo {
        family: "Ng",
        given: "Alice",
        birth: "1990-01-01",
        gender: "female",
        postcode: "HX1 1AA",
        line: "1 Low Road",
    };
    let b = create_as(&app, "RX2", &patient("RX2", Some((bad, "01")), &other)).await;
    assert_ne!(person_of(&app, &a).await, person_of(&app, &b).await);
    let invalid: bool =
        sqlx::query_scalar("SELECT nhs_invalid FROM identity_patient WHERE patient_id = $1")
            .bind(&a)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(invalid);
}

#[tokio::test]
async fn demographic_update_re_evaluates_the_link() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let other = Demo {
        family: "Ng",
        given: "Alice",
        birth: "1990-01-01",
        gender: "female",
        postcode: "HX1 1AA",
        line: "1 Low Road",
    };
    let mut b_body = patient("RX2", None, &other);
    let b = create_as(&app, "RX2", &b_body).await;
    assert_ne!(person_of(&app, &a).await, person_of(&app, &b).await);
    // RX2 corrects its record: it was Robert Thompson all along.
    b_body = patient("RX2", None, &ROBERT);
    b_body["id"] = json!(b);
    let (status, _) = send(
        &app,
        &app.trust_token("RX2"),
        reqwest::Method::PUT,
        &format!("Patient/{b}"),
        Some(&b_body),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(person_of(&app, &a).await, person_of(&app, &b).await);
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM identity_link_event WHERE patient_id = $1")
            .bind(&b)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(events, 2, "created alone, then moved");
}

#[tokio::test]
async fn patient_match_scores_candidates_with_match_grade() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let query = parameters(json!([
        {"name": "resource", "resource": patient("RX2", None, &Demo { given: "Bob", ..ROBERT })},
        {"name": "count", "valueInteger": 5},
    ]));
    let (status, bundle) = send(
        &app,
        &app.clinician_token("RX1"),
        reqwest::Method::POST,
        "Patient/$match",
        Some(&query),
    )
    .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["type"], "searchset");
    let entry = &bundle["entry"][0];
    assert_eq!(entry["resource"]["id"], a.as_str());
    let score = entry["search"]["score"].as_f64().unwrap();
    assert!(score > 0.9 && score <= 1.0, "{score}");
    assert_eq!(
        entry["search"]["extension"][0]["url"],
        "http://hl7.org/fhir/StructureDefinition/match-grade"
    );
    assert_eq!(entry["search"]["extension"][0]["valueCode"], "probable");
    // Nothing was written by a match.
    assert_eq!(app.count("resource_head").await, 1);
    let (status, _) = send(
        &app,
        &app.trust_token("RX2"),
        reqwest::Method::POST,
        "Patient/$match",
        Some(&parameters(json!([]))),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_trust_may_not_write_patients_under_another_ods_code() {
    let app = TestApp::spawn().await;
    let before = app.write_footprint().await;
    let (status, body) = send(
        &app,
        &app.trust_token("RX2"),
        reqwest::Method::POST,
        "Patient",
        Some(&patient("RX1", None, &ROBERT)),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(app.write_footprint().await, before);

    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let mut replacement = patient("RX2", None, &ROBERT);
    replacement["id"] = json!(a);
    let (status, _) = send(
        &app,
        &app.trust_token("RX2"),
        reqwest::Method::PUT,
        &format!("Patient/{a}"),
        Some(&replacement),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        &app,
        &app.trust_token("RX2"),
        reqwest::Method::DELETE,
        &format!("Patient/{a}"),
        None,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn person_resources_are_not_written_directly() {
    let app = TestApp::spawn().await;
    let (status, body) = send(
        &app,
        &app.trust_token("RX1"),
        reqwest::Method::POST,
        "Person",
        Some(&json!({"resourceType": "Person"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
}
