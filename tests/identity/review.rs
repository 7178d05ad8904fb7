use serde_json::{Value, json};

use crate::common::TestApp;
use crate::support::*;

/// A one-digit slip in the birth date and a different address: neither clearly the same nor
/// clearly different.
fn doubtful() -> Demo<'static> {
    Demo {
        birth: "1970-03-08",
        postcode: "HX7 9ZZ",
        line: "8 Moor View",
        ..ROBERT
    }
}

async fn open_items(app: &TestApp) -> Vec<Value> {
    let list = get_as(app, &reviewer_token(app), "$identity-review").await;
    list["parameter"].as_array().cloned().unwrap_or_default()
}

fn part<'a>(item: &'a Value, name: &str) -> &'a Value {
    item["part"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()
}

#[tokio::test]
async fn possible_match_waits_in_the_queue_and_confirming_links_it() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let b = create_as(&app, "RX2", &patient("RX2", None, &doubtful())).await;
    assert_ne!(
        person_of(&app, &a).await,
        person_of(&app, &b).await,
        "never auto-linked"
    );

    let items = open_items(&app).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(part(item, "reason")["valueCode"], "possible-match");
    let id = part(item, "id")["valueInteger"].as_i64().unwrap();

    // Only a person with the demographics role decides.
    let decide = parameters(json!([
        {"name": "item", "valueInteger": id},
        {"name": "decision", "valueCode": "confirm"},
        {"name": "reason", "valueString": "same person: confirmed with the patient at clinic"},
    ]));
    let (status, _) = send(
        &app,
        &app.clinician_token("RX1"),
        reqwest::Method::POST,
        "$identity-review",
        Some(&decide),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = send(
        &app,
        &app.trust_token("RX1"),
        reqwest::Method::GET,
        "$identity-review",
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = send(
        &app,
        &reviewer_token(&app),
        reqwest::Method::POST,
        "$identity-review",
        Some(&decide),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(person_of(&app, &a).await, person_of(&app, &b).await);
    // The newer record joined the older one's person, by a person's decision.
    assert_eq!(
        grade_of(&app, &b).await,
        ("certain".into(), "manual".into())
    );
    assert!(open_items(&app).await.is_empty());

    let (actor, reason): (String, String) =
        sqlx::query_as("SELECT actor, reason FROM identity_decision WHERE kind = 'confirm'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(actor, "555000000077");
    assert!(reason.contains("clinic"));
}

#[tokio::test]
async fn rejected_pair_is_never_queued_or_linked_again() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let mut b_body = patient("RX2", None, &doubtful());
    let b = create_as(&app, "RX2", &b_body).await;
    let id = part(&open_items(&app).await[0], "id")["valueInteger"]
        .as_i64()
        .unwrap();
    let reject = parameters(json!([
        {"name": "item", "valueInteger": id},
        {"name": "decision", "valueCode": "reject"},
        {"name": "reason", "valueString": "different people: checked with the GP"},
    ]));
    let (status, _) = send(
        &app,
        &reviewer_token(&app),
        reqwest::Method::POST,
        "$identity-review",
        Some(&reject),
    )
    .await;
    assert_eq!(status, 200);
    // RX2 re-sends the record, now identical to RX1's: the reviewer's word stands.
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
    assert_ne!(person_of(&app, &a).await, person_of(&app, &b).await);
    assert!(open_items(&app).await.is_empty());
}

#[tokio::test]
async fn merge_then_unmerge_restores_the_exact_prior_split() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let a2 = create_as(
        &app,
        "RX3",
        &patient(
            "RX3",
            None,
            &Demo {
                given: "Bob",
                ..ROBERT
            },
        ),
    )
    .await;
    let other = Demo {
        family: "Ng",
        given: "Alice",
        birth: "1990-01-01",
        gender: "female",
        postcode: "HX1 1AA",
        line: "1 Low Road",
    };
    let c = create_as(&app, "RX2", &patient("RX2", None, &other)).await;
    let target = person_of(&app, &a).await;
    let source = person_of(&app, &c).await;
    assert_eq!(person_of(&app, &a2).await, target);
    let before: Vec<(String, String, Option<f64>, String, String)> = sqlx::query_as(
        "SELECT patient_id, person_id, score, grade, method FROM identity_patient ORDER BY patient_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();

    let merge = parameters(json!([
        {"name": "source", "valueReference": {"reference": format!("Person/{source}")}},
        {"name": "target", "valueReference": {"reference": format!("Person/{target}")}},
        {"name": "reason", "valueString": "registrar says one person"},
    ]));
    let (status, _) = send(
        &app,
        &app.clinician_token("RX1"),
        reqwest::Method::POST,
        "Person/$merge",
        Some(&merge),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = send(
        &app,
        &reviewer_token(&app),
        reqwest::Method::POST,
        "Person/$merge",
        Some(&merge),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let decision = body["parameter"][0]["valueInteger"].as_i64().unwrap();
    assert_eq!(person_of(&app, &c).await, target);
    // The source Person is retired; the target links all three records.
    let (status, _) = send(
        &app,
        &app.clinician_token("RX1"),
        reqwest::Method::GET,
        &format!("Person/{source}"),
        None,
    )
    .await;
    // Gone (410), or not found (404) where access control will not say what it cannot judge.
    assert!(status == 410 || status == 404, "{status}");
    let deleted: bool = sqlx::query_scalar(
        "SELECT deleted FROM resource_head WHERE resource_type = 'Person' AND id = $1",
    )
    .bind(&source)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(deleted);
    let p = get_as(
        &app,
        &app.clinician_token("RX1"),
        &format!("Person/{target}"),
    )
    .await;
    assert_eq!(p["link"].as_array().unwrap().len(), 3);
    let everything = get_as(
        &app,
        &app.clinician_token("RX1"),
        &format!("Patient/{a}/$everything?_type=Patient"),
    )
    .await;
    assert_eq!(everything["total"], 3);

    let unmerge = parameters(json!([
        {"name": "decision", "valueInteger": decision},
        {"name": "reason", "valueString": "registrar was wrong"},
    ]));
    let (status, body) = send(
        &app,
        &reviewer_token(&app),
        reqwest::Method::POST,
        "Person/$unmerge",
        Some(&unmerge),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let after: Vec<(String, String, Option<f64>, String, String)> = sqlx::query_as(
        "SELECT patient_id, person_id, score, grade, method FROM identity_patient ORDER BY patient_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(after, before, "exactly the split before the merge");
    let p = get_as(
        &app,
        &app.clinician_token("RX2"),
        &format!("Person/{source}"),
    )
    .await;
    assert_eq!(p["link"][0]["target"]["reference"], format!("Patient/{c}"));
    // A reversed decision cannot be reversed twice.
    let (status, _) = send(
        &app,
        &reviewer_token(&app),
        reqwest::Method::POST,
        "Person/$unmerge",
        Some(&unmerge),
    )
    .await;
    assert_eq!(status, 409);
    // Decisions keep who and why; Person versions carry the reviewer's Provenance.
    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM identity_decision ORDER BY id")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(kinds, ["merge", "unmerge"]);
    let prov = get_as(
        &app,
        &app.clinician_token("RX2"),
        &format!("Provenance?target=Person/{source}"),
    )
    .await;
    let reviewed = prov["entry"].as_array().unwrap().iter().any(|e| {
        e["resource"]["agent"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["who"]["identifier"]["value"] == "555000000077")
    });
    assert!(reviewed, "{prov}");
}

#[tokio::test]
async fn merge_of_persons_with_different_verified_numbers_is_refused() {
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
    let merge = parameters(json!([
        {"name": "source", "valueReference": {"reference": format!("Person/{}", person_of(&app, &b).await)}},
        {"name": "target", "valueReference": {"reference": format!("Person/{}", person_of(&app, &a).await)}},
        {"name": "reason", "valueString": "looks the same"},
    ]));
    let (status, body) = send(
        &app,
        &reviewer_token(&app),
        reqwest::Method::POST,
        "Person/$merge",
        Some(&merge),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_ne!(person_of(&app, &a).await, person_of(&app, &b).await);
}

#[tokio::test]
async fn a_twin_whose_names_were_exchanged_waits_for_review() {
    let app = TestApp::spawn().await;
    let robert = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    // His twin Richard: same birthday and home, registered elsewhere with family and given
    // name exchanged. The family name crosses over, the first names differ: the twins'
    // pattern, though everything else agrees.
    let twin = Demo {
        family: "Richard",
        given: "Thompson",
        ..ROBERT
    };
    let richard = create_as(&app, "RX2", &patient("RX2", None, &twin)).await;
    assert_ne!(
        person_of(&app, &robert).await,
        person_of(&app, &richard).await,
        "never auto-linked"
    );
    let items = open_items(&app).await;
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(part(item, "reason")["valueCode"], "possible-match");
    assert_eq!(
        part(item, "patient")["valueReference"]["reference"],
        format!("Patient/{richard}")
    );
    assert_eq!(
        part(item, "candidate")["valueReference"]["reference"],
        format!("Patient/{robert}")
    );
    // Held by the twins rule, not by its score.
    let score = part(item, "score")["valueDecimal"].as_f64().unwrap();
    assert!(
        score >= shcr::identity::scoring::config().thresholds.match_,
        "{score}"
    );
}
