//! Blocking: which records the linker finds as candidates at all. A true pair sharing no
//! blocking key is never scored, so it can be neither linked nor queued for review.

use crate::common::TestApp;
use crate::support::*;

/// Robert's record at a second trust with a slip in almost every field: the family name
/// (`THOMPSOM` sounds different), the birth year, the postcode's inward code and the street
/// name. Only the house is left: its number, the street's first letters and the postcode
/// district.
fn slipped() -> Demo<'static> {
    Demo {
        family: "Thompsom",
        birth: "1971-03-07",
        postcode: "LS1 4AD",
        line: "12 Mill Lnae",
        ..ROBERT
    }
}

#[tokio::test]
async fn a_record_mistyped_everywhere_but_the_house_is_found_and_queued() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let b = create_as(&app, "RX2", &patient("RX2", None, &slipped())).await;
    // Scored (a one-digit birth date and a changed postcode are doubt enough): waits for a
    // person, never linked automatically.
    let queued: Vec<(String, String)> = sqlx::query_as(
        "SELECT patient_id, candidate_id FROM identity_review WHERE status = 'open'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(queued, vec![(b.clone(), a.clone())]);
    assert_ne!(person_of(&app, &a).await, person_of(&app, &b).await);
}

#[tokio::test]
async fn the_house_key_names_the_postcode_district() {
    // `12 MILL LANE` of another district is another house: not a candidate.
    let app = TestApp::spawn().await;
    create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let elsewhere = Demo {
        postcode: "BD7 4AD",
        ..slipped()
    };
    create_as(&app, "RX2", &patient("RX2", None, &elsewhere)).await;
    let keys: Vec<Option<String>> =
        sqlx::query_scalar("SELECT line_key FROM identity_patient ORDER BY linked_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        keys,
        vec![
            Some("12|MIL|LS1".to_string()),
            Some("12|MIL|BD7".to_string())
        ]
    );
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM identity_review")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn the_migration_computes_the_house_key_as_the_linker_does() {
    let app = TestApp::spawn().await;
    let lines = [
        ("12 Mill Lane", "LS1 4AB"),
        ("Flat 3, 12a Mill Lane", "LS1 4AB"),
        ("Flat 3", "LS1 4AB"),
        ("Mill Cottage", "LS1 4AB"),
        ("95 Mill Lane", "4221"),
    ];
    for (i, (line, postcode)) in lines.iter().enumerate() {
        let d = Demo {
            line,
            postcode,
            given: ["Ann", "Bea", "Cal", "Dot", "Eve"][i],
            ..ROBERT
        };
        let mut p = patient("RX1", None, &d);
        p["address"][0]["city"] = serde_json::json!("Wakefield");
        create_as(&app, "RX1", &p).await;
    }
    let written: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT patient_id, line_key FROM identity_patient ORDER BY patient_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        written.iter().filter(|(_, k)| k.is_some()).count(),
        3,
        "{written:?}"
    );
    // Rows as an earlier release left them (the whole first line), then the migration.
    sqlx::query("UPDATE identity_patient SET line_key = demographics->>'address_line'")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::raw_sql(include_str!("../../migrations/0034_identity_house_key.sql"))
        .execute(&app.pool)
        .await
        .unwrap();
    let migrated: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT patient_id, line_key FROM identity_patient ORDER BY patient_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(migrated, written);
}
