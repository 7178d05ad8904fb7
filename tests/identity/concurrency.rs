//! Linking under concurrent writers and within one write unit: the unit linker reads every
//! candidate in one statement and decides in memory, so records of the same unit must still see
//! each other, and two trusts sending the same person at the same moment must still end in one
//! person.

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::common::TestApp;
use crate::support::*;

const FAMILIES: [&str; 8] = [
    "Thompson",
    "Okafor",
    "Nowak",
    "Patel",
    "Fraser",
    "Hughes",
    "Lindqvist",
    "Moreau",
];
const GIVEN: [&str; 8] = [
    "Robert", "Chioma", "Marek", "Priya", "Ewan", "Gareth", "Astrid", "Camille",
];

/// Eight clearly different people (names, birth dates, addresses all differ).
fn person(k: usize) -> (String, String, String) {
    (
        format!("19{}-0{}-1{}", 50 + k, 1 + k, k),
        format!("LS{} {}AB", k + 1, k + 2),
        format!("{} Mill Lane", k + 10),
    )
}

#[tokio::test]
async fn the_same_person_sent_by_two_trusts_at_once_ends_in_one_person() {
    let app = TestApp::spawn().await;
    // Each person once from RX1 and once from RX2, all sixteen writes in flight together; half
    // the people carry a verified NHS number (deterministic), half none (probabilistic).
    let mut writes = Vec::new();
    for k in 0..FAMILIES.len() {
        let (birth, postcode, line) = person(k);
        let number = nhs(943_476_000 + k as u32 * 10);
        for ods in ["RX1", "RX2"] {
            let d = Demo {
                family: FAMILIES[k],
                given: GIVEN[k],
                birth: &birth,
                gender: if k % 2 == 0 { "male" } else { "female" },
                postcode: &postcode,
                line: &line,
            };
            let id = (k % 2 == 0).then_some((number.as_str(), "01"));
            writes.push((k, ods, patient(ods, id, &d)));
        }
    }
    let app_ref = &app;
    let ids: Vec<(usize, String)> = join_all(
        writes
            .iter()
            .map(|(k, ods, body)| async move { (*k, create_as(app_ref, ods, body).await) }),
    )
    .await;
    let mut persons = std::collections::HashMap::new();
    for (k, id) in &ids {
        persons
            .entry(*k)
            .or_insert_with(Vec::new)
            .push(person_of(&app, id).await);
    }
    let mut distinct = std::collections::HashSet::new();
    for (k, p) in &persons {
        assert_eq!(p.len(), 2);
        assert_eq!(p[0], p[1], "person {k}'s two records are one person");
        distinct.insert(p[0].clone());
    }
    assert_eq!(
        distinct.len(),
        FAMILIES.len(),
        "different people never share a person"
    );
}

fn entry(resource: Value, method: &str, url: &str) -> Value {
    json!({"resource": resource, "request": {"method": method, "url": url}})
}

async fn transaction(app: &TestApp, ods: &str, entries: Vec<Value>) -> Vec<String> {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let (status, body) = send(
        app,
        &app.trust_token(ods),
        reqwest::Method::POST,
        "",
        Some(&bundle),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let loc = e["response"]["location"].as_str().unwrap();
            loc.split('/').nth(1).unwrap().to_string()
        })
        .collect()
}

#[tokio::test]
async fn records_of_one_write_unit_link_to_each_other() {
    let app = TestApp::spawn().await;
    let spouse = Demo {
        given: "Margaret",
        gender: "female",
        birth: "1972-11-23",
        ..ROBERT
    };
    let stranger = Demo {
        family: "Ng",
        given: "Alice",
        birth: "1990-01-01",
        gender: "female",
        postcode: "HX1 1AA",
        line: "1 Low Road",
    };
    // One trust's Bundle holds Robert twice (a duplicate registration), his wife at the same
    // address and a stranger: none of them is in the table when the unit's candidates are read.
    let ids = transaction(
        &app,
        "RX1",
        vec![
            entry(patient("RX1", None, &ROBERT), "POST", "Patient"),
            entry(patient("RX1", None, &spouse), "POST", "Patient"),
            entry(
                patient(
                    "RX1",
                    None,
                    &Demo {
                        given: "Bob",
                        ..ROBERT
                    },
                ),
                "POST",
                "Patient",
            ),
            entry(patient("RX1", None, &stranger), "POST", "Patient"),
        ],
    )
    .await;
    let robert = person_of(&app, &ids[0]).await;
    assert_eq!(person_of(&app, &ids[2]).await, robert);
    assert_ne!(person_of(&app, &ids[1]).await, robert);
    let stranger_person = person_of(&app, &ids[3]).await;
    assert_ne!(stranger_person, robert);

    // The next unit corrects the stranger's record (it was Robert all along: an update, whose
    // earlier link is read and re-evaluated) and adds RX1's record of a new person.
    let mut corrected = patient("RX1", None, &ROBERT);
    corrected["id"] = json!(ids[3]);
    let ids2 = transaction(
        &app,
        "RX1",
        vec![
            entry(corrected, "PUT", &format!("Patient/{}", ids[3])),
            entry(patient("RX1", None, &stranger), "POST", "Patient"),
        ],
    )
    .await;
    assert_eq!(person_of(&app, &ids[3]).await, robert);
    assert_ne!(person_of(&app, &ids2[1]).await, robert);
    // The stranger's old Person lost its only record and is retired.
    let retired: bool = sqlx::query_scalar(
        "SELECT deleted FROM resource_head WHERE resource_type = 'Person' AND id = $1",
    )
    .bind(&stranger_person)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(retired, "a Person left without records is deleted");
    // The Person lists exactly Robert's three records.
    let members: i64 =
        sqlx::query_scalar("SELECT count(*) FROM identity_patient WHERE person_id = $1 AND active")
            .bind(&robert)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(members, 3);
}
