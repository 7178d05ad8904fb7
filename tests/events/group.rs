//! Group commit: several messages in one transaction, each applied or refused on its own.

use std::sync::Arc;

use serde_json::{Value, json};
use shcr::access::{Caller, OdsCode, Principal, SystemCaller};
use shcr::events::{Catalogue, Disposition, Envelope, Ingest, MessageError, Processed};
use shcr::interactions::Repository;

use crate::common::TestApp;
use crate::support::*;

fn trust(ods: &str) -> Caller {
    Caller {
        principal: Principal::System(SystemCaller {
            client_id: format!("{ods}-pas"),
            ods_code: OdsCode::parse(ods).unwrap(),
            scopes: Vec::new(),
        }),
        token_id: None,
        issuer: "test".into(),
    }
}

/// An admission whose Encounter names a Practitioner by a conditional reference: refused
/// inside the transaction (after the message id was claimed) until that Practitioner exists.
fn needs_practitioner(message_id: &str, n: u64) -> Value {
    let mut m = admission("RX1", message_id, &at(n), "P2", "E2", "Eleven");
    m["entry"][2]["resource"]["participant"] = json!([{"individual": {
        "reference": "Practitioner?identifier=https://fhir.rx1.example.nhs.uk/Id/staff|S1"}}]);
    m
}

async fn group(
    ingest: &Ingest,
    caller: &Caller,
    bundles: &[Value],
) -> Vec<Result<Processed, MessageError>> {
    let envelope = Envelope::default();
    let items: Vec<(&Value, &Caller, &Envelope)> =
        bundles.iter().map(|b| (b, caller, &envelope)).collect();
    ingest.process_group(&items).await
}

/// The family names the stored Patients hold now, sorted.
async fn held_families(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT v.content->'name'->0->>'family' FROM resource_head h
         JOIN resource_version v USING (resource_type, id, version_id)
         WHERE h.resource_type = 'Patient' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_group_commits_its_good_messages_together_and_rolls_back_only_the_poison_ones() {
    let app = TestApp::spawn().await;
    let ingest = Ingest::new(
        Repository::new(app.store.clone()),
        Arc::new(Catalogue::load(None).unwrap()),
        app.base.clone(),
    );
    let rx1 = trust("RX1");
    let g1 = admission("RX1", "g1", &at(10), "P1", "E1", "Ten");
    let bundles = vec![
        g1.clone(),
        // Poison inside the database: rolled back to its savepoint, claim included.
        needs_practitioner("p1", 11),
        admission("RX1", "g2", &at(12), "P2", "E3", "Twelve"),
        // Poison before the database: RX1 may not send RX2's messages.
        admission("RX2", "w1", &at(13), "P3", "E4", "Other"),
        // The same message again in the same group: answered from the first's claim.
        g1,
        // Older than g1 for P1: P1 is held back as stale (g1 is visible in the transaction);
        // its new Encounter is written.
        admission("RX1", "g3", &at(5), "P1", "E5", "Five"),
    ];
    let results = group(&ingest, &rx1, &bundles).await;
    let dispositions: Vec<Result<Disposition, &'static str>> = results
        .iter()
        .map(|r| r.as_ref().map(|p| p.disposition).map_err(|e| e.reason_code))
        .collect();
    assert_eq!(
        dispositions,
        vec![
            Ok(Disposition::Applied),
            Err("invalid"),
            Ok(Disposition::Applied),
            Err("forbidden"),
            Ok(Disposition::Duplicate),
            Ok(Disposition::Applied),
        ]
    );
    assert!(results[1].as_ref().is_err_and(|e| !e.transient));
    assert_eq!(results[5].as_ref().unwrap().stale, 1);

    // One transaction for every message written.
    assert_eq!(
        scalar(&app, "SELECT count(DISTINCT txid) FROM change_feed").await,
        1
    );
    let claimed: Vec<String> = sqlx::query_scalar("SELECT key FROM event_idempotency ORDER BY key")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(claimed, vec!["g1", "g2", "g3"]);
    assert_eq!(held_families(&app).await, vec!["Ten", "Twelve"]);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM resource_head WHERE resource_type = 'Encounter'"
        )
        .await,
        3
    );
    // Every write still carries its Provenance, access facts and identity links.
    let unprovenanced = scalar(
        &app,
        "SELECT count(*) FROM resource_version v
         WHERE v.resource_type IN ('Patient', 'Encounter')
           AND NOT EXISTS (SELECT 1 FROM resource_version p
               WHERE p.resource_type = 'Provenance'
                 AND p.content->'target' @> jsonb_build_array(jsonb_build_object('reference',
                     v.resource_type || '/' || v.id || '/_history/' || v.version_id)))",
    )
    .await;
    assert_eq!(unprovenanced, 0);
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM identity_patient WHERE active").await,
        2
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM access_relationship WHERE kind = 'encounter'"
        )
        .await,
        3
    );

    // Fixed (the Practitioner exists): the poison message applies on replay.
    app.create(&json!({"resourceType": "Practitioner",
        "identifier": [{"system": "https://fhir.rx1.example.nhs.uk/Id/staff", "value": "S1"}]}))
        .await;
    let results = group(&ingest, &rx1, &[needs_practitioner("p1", 11)]).await;
    assert_eq!(
        results[0].as_ref().map(|p| p.disposition).ok(),
        Some(Disposition::Applied)
    );
}

/// A group of good messages runs without savepoints, its criteria, heads and message claims
/// read once for the group: messages that share a resource with an earlier message of the
/// group must still see what that message wrote (no second Patient, stale held back, the
/// Encounter's second version), and a repeated message id is still a repeat.
#[tokio::test]
async fn messages_of_one_group_see_what_earlier_messages_of_it_wrote() {
    let app = TestApp::spawn().await;
    let ingest = Ingest::new(
        Repository::new(app.store.clone()),
        Arc::new(Catalogue::load(None).unwrap()),
        app.base.clone(),
    );
    let rx1 = trust("RX1");
    let a1 = admission("RX1", "a1", &at(10), "P1", "E1", "Ten");
    let bundles = vec![
        a1.clone(),
        // Newer for P1: updates the Patient a1 created (not a second Patient).
        admission("RX1", "a2", &at(12), "P1", "E2", "Twelve"),
        // Older than a2 for P1: held back as stale against a2's source time.
        admission("RX1", "a3", &at(11), "P1", "E3", "Eleven"),
        // Another Patient, and a1's Encounter again: its second version.
        admission("RX1", "a4", &at(13), "P2", "E1", "Thirteen"),
    ];
    let results = group(&ingest, &rx1, &bundles).await;
    let summary: Vec<(Disposition, usize)> = results
        .iter()
        .map(|r| {
            let p = r.as_ref().expect("applied");
            (p.disposition, p.stale)
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Disposition::Applied, 0),
            (Disposition::Applied, 0),
            (Disposition::Applied, 1),
            (Disposition::Applied, 0),
        ]
    );
    assert_eq!(
        scalar(&app, "SELECT count(DISTINCT txid) FROM change_feed").await,
        1
    );
    assert_eq!(held_families(&app).await, vec!["Thirteen", "Twelve"]);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM resource_head WHERE resource_type = 'Encounter'"
        )
        .await,
        3
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT max(version_id) FROM resource_head WHERE resource_type = 'Encounter'"
        )
        .await,
        2
    );
    assert_eq!(scalar(&app, "SELECT count(*) FROM event_stale").await, 1);

    // A new message, an old one and the new one again, in one group: applied once each.
    let b1 = admission("RX1", "b1", &at(20), "P3", "E9", "Twenty");
    let results = group(&ingest, &rx1, &[b1.clone(), a1, b1]).await;
    let dispositions: Vec<Option<Disposition>> = results
        .iter()
        .map(|r| r.as_ref().ok().map(|p| p.disposition))
        .collect();
    assert_eq!(
        dispositions,
        vec![
            Some(Disposition::Applied),
            Some(Disposition::Duplicate),
            Some(Disposition::Duplicate),
        ]
    );
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM event_idempotency").await,
        5
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM resource_head WHERE resource_type = 'Patient'"
        )
        .await,
        3
    );
}
