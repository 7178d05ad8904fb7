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

/// `(patient, candidate)` of every open review item.
async fn open_reviews(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as("SELECT patient_id, candidate_id FROM identity_review WHERE status = 'open'")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_record_mistyped_everywhere_but_the_house_is_found_and_queued() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let b = create_as(&app, "RX2", &patient("RX2", None, &slipped())).await;
    // Scored (a one-digit birth date and a changed postcode are doubt enough): waits for a
    // person, never linked automatically.
    assert_eq!(open_reviews(&app).await, vec![(b.clone(), a.clone())]);
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
async fn a_record_without_house_number_or_birth_date_is_found_by_names_and_district() {
    let app = TestApp::spawn().await;
    let a = create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    // No birth date, no house number, a postcode slip and a family name that no longer
    // sounds the same: only the names' first letters and the district are left.
    let mut p = patient(
        "RX2",
        None,
        &Demo {
            family: "Thomsbon",
            postcode: "LS1 4AD",
            line: "Mill Lane",
            ..ROBERT
        },
    );
    p.as_object_mut().unwrap().remove("birthDate");
    let b = create_as(&app, "RX2", &p).await;
    // Patient, phonetic names, house, names and place.
    type Keys = (String, Option<String>, Option<String>, Option<String>);
    let keys: Vec<Keys> = sqlx::query_as(
        "SELECT patient_id, name_key, line_key, name_place_key FROM identity_patient",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let of = |id: &str| keys.iter().find(|k| k.0 == id).unwrap().clone();
    let (ka, kb) = (of(&a), of(&b));
    assert_ne!(ka.1, kb.1, "the phonetic names differ");
    assert_eq!(kb.2, None, "no house number, no house key");
    assert_eq!(ka.3.as_deref(), Some("ROB|THO|LS1"));
    assert_eq!(ka.3, kb.3);
    assert_eq!(open_reviews(&app).await, vec![(b, a)]);
}

#[tokio::test]
async fn the_migration_computes_the_place_keys_as_the_linker_does() {
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
    let keys = "SELECT patient_id, line_key, name_place_key FROM identity_patient
                ORDER BY patient_id";
    let written: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as(keys).fetch_all(&app.pool).await.unwrap();
    assert_eq!(
        written.iter().filter(|(_, k, _)| k.is_some()).count(),
        3,
        "{written:?}"
    );
    assert!(written.iter().all(|(_, _, k)| k.is_some()), "{written:?}");
    // Rows as an earlier release left them (the whole first line, no name-place key), then
    // the migration.
    sqlx::raw_sql(
        "UPDATE identity_patient SET line_key = demographics->>'address_line';
         ALTER TABLE identity_patient DROP COLUMN name_place_key;",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::raw_sql(include_str!(
        "../../migrations/0034_identity_place_keys.sql"
    ))
    .execute(&app.pool)
    .await
    .unwrap();
    let migrated: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as(keys).fetch_all(&app.pool).await.unwrap();
    assert_eq!(migrated, written);
}

/// A Patient of `d` with only one of its names: `keep` is "family" or "given".
fn one_name(ods: &str, d: &Demo, keep: &str) -> serde_json::Value {
    let mut p = patient(ods, None, d);
    let drop = if keep == "family" { "given" } else { "family" };
    p["name"][0].as_object_mut().unwrap().remove(drop);
    p
}

#[tokio::test]
async fn a_record_with_one_name_is_found_by_that_name_and_the_district() {
    let app = TestApp::spawn().await;
    // No first name on either side (as FEBRL4's `- WEBB`/`- WEBXB`): no phonetic name key. The
    // family name slipped past its third letter (it no longer sounds the same), the birth date
    // and the postcode by a digit, and there is no house number: only the one name's first
    // letters and the district are left in common.
    let webb = Demo {
        family: "Webb",
        birth: "1917-05-09",
        line: "Mill Lane",
        ..ROBERT
    };
    let a = create_as(&app, "RX1", &one_name("RX1", &webb, "family")).await;
    let slipped = Demo {
        family: "Webxb",
        birth: "1917-05-08",
        postcode: "LS1 4BA",
        ..webb
    };
    let b = create_as(&app, "RX2", &one_name("RX2", &slipped, "family")).await;
    let keys: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT patient_id, name_key, name_place_key FROM identity_patient ORDER BY linked_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        keys,
        vec![
            (a.clone(), None, Some("|WEB|LS1".to_string())),
            (b.clone(), None, Some("|WEB|LS1".to_string())),
        ]
    );
    assert_eq!(open_reviews(&app).await, vec![(b, a)]);
}

#[tokio::test]
async fn the_migration_gives_records_with_one_name_their_place_key() {
    let app = TestApp::spawn().await;
    create_as(&app, "RX1", &one_name("RX1", &ROBERT, "family")).await;
    create_as(&app, "RX1", &one_name("RX1", &ROBERT, "given")).await;
    create_as(&app, "RX1", &patient("RX1", None, &ROBERT)).await;
    let mut nameless = patient("RX1", None, &ROBERT);
    nameless["name"][0] = serde_json::json!({"use": "official", "text": "unknown"});
    create_as(&app, "RX1", &nameless).await;
    let keys = "SELECT patient_id, name_place_key FROM identity_patient ORDER BY patient_id";
    let written: Vec<(String, Option<String>)> =
        sqlx::query_as(keys).fetch_all(&app.pool).await.unwrap();
    let mut found: Vec<Option<&str>> = written.iter().map(|(_, k)| k.as_deref()).collect();
    found.sort();
    assert_eq!(
        found,
        [
            None,
            Some("ROB|THO|LS1"),
            Some("|ROB|LS1"),
            Some("|THO|LS1")
        ]
    );
    // Rows as the previous release left them (no key without both names), then the migration.
    sqlx::raw_sql(
        "UPDATE identity_patient SET name_place_key = NULL
          WHERE demographics->>'family' IS NULL OR demographics->>'given' IS NULL",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::raw_sql(include_str!(
        "../../migrations/0044_identity_one_name_place_key.sql"
    ))
    .execute(&app.pool)
    .await
    .unwrap();
    let migrated: Vec<(String, Option<String>)> =
        sqlx::query_as(keys).fetch_all(&app.pool).await.unwrap();
    assert_eq!(migrated, written);
}
