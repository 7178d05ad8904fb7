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
    let mut bundles = bundles.to_vec();
    let items: Vec<(&mut Value, &Caller, &Envelope)> =
        bundles.iter_mut().map(|b| (b, caller, &envelope)).collect();
    ingest.process_group(items).await
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
    // Stored with the group's other rows after its last message (`Batch::write`).
    let a1_response = results[0].as_ref().expect("applied").response.clone();
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
        results[1].as_ref().unwrap().response,
        a1_response,
        "a repeat gets the response the first group stored"
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

/// A Patient of an admission message with other demographics (`nhs`: its NHS number, or
/// none), keeping the trust's local identifier, the message's upsert key.
fn with_patient(
    mut m: Value,
    nhs: Option<&str>,
    (given, family, birth, gender): (&str, &str, &str, &str),
    (line, postcode): (&str, &str),
) -> Value {
    let p = &mut m["entry"][1]["resource"];
    let identifiers = p["identifier"].as_array_mut().unwrap();
    match nhs {
        Some(n) => identifiers[0]["value"] = json!(n),
        None => {
            identifiers.remove(0);
        }
    }
    p["name"] = json!([{"family": family, "given": [given]}]);
    p["birthDate"] = json!(birth);
    p["gender"] = json!(gender);
    p["address"] = json!([{"use": "home", "line": [line], "postalCode": postcode}]);
    m
}

/// Everything identity matching left, with ids replaced by what a second database shares:
/// Patients by their local identifier, Persons by their members' (ids are random). Timestamps
/// and Provenance ids are left out.
async fn identity_state(app: &TestApp) -> Value {
    let keys: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, value FROM resource_identifier
         WHERE resource_type = 'Patient' AND system LIKE '%/local-patient-identifier'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let persons: Vec<(String, String)> = sqlx::query_as(
        "SELECT person_id, string_agg(patient_id, '+' ORDER BY patient_id)
         FROM identity_patient GROUP BY person_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // Patient ids first: a Person's name is made of them.
    let mut names: Vec<(String, String)> = keys.clone();
    for (person, members) in &persons {
        let mut name = members.clone();
        for (id, key) in &keys {
            name = name.replace(id, key);
        }
        let mut parts: Vec<&str> = name.split('+').collect();
        parts.sort_unstable();
        names.push((person.clone(), format!("person[{}]", parts.join("+"))));
    }
    let rename = |text: String| {
        names
            .iter()
            .fold(text, |t, (id, name)| t.replace(id.as_str(), name))
    };
    let rows = |sql: &'static str| async move {
        let rows: Vec<Value> = sqlx::query_scalar(sql).fetch_all(&app.pool).await.unwrap();
        rows
    };
    let mut links: Vec<String> = rows(
        "SELECT jsonb_build_array(patient_id, person_id, org, score, grade, method, active,
                                  nhs_number, demographics)
         FROM identity_patient",
    )
    .await
    .into_iter()
    .map(|v| rename(v.to_string()))
    .collect();
    links.sort();
    let events: Vec<String> = rows(
        "SELECT jsonb_build_array(patient_id, from_person, to_person, score, grade, method, actor)
         FROM identity_link_event ORDER BY id",
    )
    .await
    .into_iter()
    .map(|v| rename(v.to_string()))
    .collect();
    let mut reviews: Vec<String> = rows(
        "SELECT jsonb_build_array(patient_id, candidate_id, score, reason, status)
         FROM identity_review",
    )
    .await
    .into_iter()
    .map(|v| rename(v.to_string()))
    .collect();
    reviews.sort();
    let strip = |mut v: Value| {
        for field in ["lastUpdated"] {
            if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
                meta.remove(field);
            }
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("recorded");
            if o.get("resourceType") == Some(&json!("Provenance")) {
                o.remove("id");
            }
        }
        v
    };
    // Links and targets are in id order, and ids differ between databases: in name order.
    let sorted = |text: String, at: usize| {
        let mut v: Value = serde_json::from_str(&text).unwrap();
        for field in ["link", "target"] {
            if let Some(items) = v[at].get_mut(field).and_then(Value::as_array_mut) {
                items.sort_by_key(|i| i.to_string());
            }
        }
        v.to_string()
    };
    let mut person_versions: Vec<String> = rows(
        "SELECT jsonb_build_array(id, version_id, deleted, method, author_kind, author_id,
                                  author_org, request_id, content)
         FROM resource_version WHERE resource_type = 'Person'",
    )
    .await
    .into_iter()
    .map(|mut v| {
        v[8] = strip(v[8].take());
        sorted(rename(v.to_string()), 8)
    })
    .collect();
    person_versions.sort();
    let mut provenance: Vec<String> = rows(
        "SELECT jsonb_build_array(author_id, request_id, content) FROM resource_version
         WHERE resource_type = 'Provenance'
           AND content->'target'->0->>'reference' LIKE 'Person/%'",
    )
    .await
    .into_iter()
    .map(|mut v| {
        v[2] = strip(v[2].take());
        sorted(rename(v.to_string()), 2)
    })
    .collect();
    provenance.sort();
    json!({
        "links": links,
        "events": events,
        "reviews": reviews,
        "persons": person_versions,
        "provenance": provenance,
    })
}

/// A group without savepoints links every message's Patients after its last message, in one
/// statement each: what it decides — links, link events, review items, each message's Person
/// versions and their Provenance — must be exactly what sending the messages one by one gives,
/// including a second trust's record of a person an earlier message of the group created, a
/// Patient an earlier message of the group wrote, and a possible match.
#[tokio::test]
async fn a_group_links_its_patients_exactly_as_one_by_one() {
    const ROBERT: (&str, &str, &str, &str) = ("Robert", "Thompson", "1970-03-07", "male");
    const HOME: (&str, &str) = ("12 Mill Lane", "LS1 4AB");
    let messages = [
        (
            "RX1",
            with_patient(
                admission("RX1", "i1", &at(10), "P1", "E1", "-"),
                Some("9434765919"),
                ROBERT,
                HOME,
            ),
        ),
        // The same person at another trust: joins the Person i1 created.
        (
            "RX2",
            with_patient(
                admission("RX2", "i2", &at(11), "Q1", "F1", "-"),
                Some("9434765919"),
                ROBERT,
                HOME,
            ),
        ),
        // Someone else altogether.
        (
            "RX1",
            with_patient(
                admission("RX1", "i3", &at(12), "P2", "E2", "-"),
                None,
                ("Alice", "Okafor", "1985-11-30", "female"),
                ("3 High Street", "BD7 4AD"),
            ),
        ),
        // A one-digit slip in the birth date and another address: a possible match.
        (
            "RX2",
            with_patient(
                admission("RX2", "i4", &at(13), "Q2", "F2", "-"),
                None,
                ("Robert", "Thompson", "1970-03-08", "male"),
                ("8 Moor View", "HX7 9ZZ"),
            ),
        ),
        // i1's Patient again, moved next door: an update of a record this group linked.
        (
            "RX1",
            with_patient(
                admission("RX1", "i5", &at(14), "P1", "E3", "-"),
                Some("9434765919"),
                ROBERT,
                ("14 Mill Lane", "LS1 4AB"),
            ),
        ),
    ];
    let (grouped, alone, results) = grouped_and_alone(&messages).await;
    assert!(
        results.iter().all(|r| r.0 == Disposition::Applied),
        "{results:?}"
    );
    // The Persons written after every message's resources: the group linked once, after its
    // last message (not each message in turn).
    assert!(
        scalar(
            &grouped,
            "SELECT count(*) FROM change_feed WHERE resource_type = 'Person'
               AND seq < (SELECT max(seq) FROM change_feed WHERE resource_type = 'Encounter')"
        )
        .await
            == 0
    );

    let expected = identity_state(&alone).await;
    assert_eq!(identity_state(&grouped).await, expected);
    // What the comparison covers.
    let persons = expected["persons"].as_array().unwrap();
    assert!(
        persons
            .iter()
            .any(|p| p.as_str().unwrap().contains("person[P1+Q1]\",3,")),
        "the shared Person has a version per message that changed it: {persons:?}"
    );
    assert!(
        !expected["reviews"].as_array().unwrap().is_empty(),
        "a possible match is queued"
    );
}

/// The resources and Provenance a database holds, other than identity's Persons (and their
/// Provenance: `identity_state` compares those): every version, head, identifier and
/// change-feed row, with ids replaced by what a second database shares — a resource by its
/// business identifiers, a Provenance by its targets — and write times left out. Change-feed
/// rows stay in feed order.
async fn store_state(app: &TestApp) -> Value {
    // The resources compared: Person-derived rows are written by identity, after a group's
    // last message.
    macro_rules! own {
        ($sql:literal) => {
            concat!(
                "WITH own AS (
                     SELECT DISTINCT resource_type, id FROM resource_version
                     WHERE resource_type <> 'Person'
                       AND NOT (resource_type = 'Provenance'
                                AND content->'target'->0->>'reference' LIKE 'Person/%')
                 ) ",
                $sql
            )
        };
    }
    let keys: Vec<(String, String, String)> = sqlx::query_as(own!(
        "SELECT resource_type, id, string_agg(system || '|' || value, '+' ORDER BY system, value)
         FROM resource_identifier JOIN own USING (resource_type, id) GROUP BY 1, 2"
    ))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut names: Vec<(String, String)> = keys
        .into_iter()
        .map(|(t, id, k)| (id, format!("{t}[{k}]")))
        .collect();
    let rename = |names: &[(String, String)], text: String| {
        names
            .iter()
            .fold(text, |t, (id, name)| t.replace(id.as_str(), name))
    };
    let provenance: Vec<(String, Value)> = sqlx::query_as(own!(
        "SELECT id, content->'target' FROM resource_version JOIN own USING (resource_type, id)
         WHERE resource_type = 'Provenance'"
    ))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let named: Vec<(String, String)> = provenance
        .into_iter()
        .map(|(id, targets)| {
            let name = format!("Provenance[{}]", rename(&names, targets.to_string()));
            (id, name)
        })
        .collect();
    names.extend(named);
    let rows = |sql: &'static str| async move {
        let rows: Vec<Value> = sqlx::query_scalar(sql).fetch_all(&app.pool).await.unwrap();
        rows
    };
    let strip = |mut v: Value| {
        if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("lastUpdated");
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("recorded");
        }
        v
    };
    let mut versions: Vec<String> = rows(own!(
        "SELECT jsonb_build_array(resource_type, id, version_id, deleted, method, author_kind,
                                  author_id, author_org, request_id, compartment,
                                  compartment_key, content)
         FROM resource_version JOIN own USING (resource_type, id)"
    ))
    .await
    .into_iter()
    .map(|mut v| {
        v[11] = strip(v[11].take());
        rename(&names, v.to_string())
    })
    .collect();
    versions.sort();
    let mut heads: Vec<String> = rows(own!(
        "SELECT jsonb_build_array(h.resource_type, h.id, h.version_id, h.deleted, h.author_org,
                                  h.content_hash IS NOT NULL, h.last_updated = v.last_updated,
                                  h.version_id = (SELECT max(version_id) FROM resource_version m
                                      WHERE m.resource_type = h.resource_type AND m.id = h.id))
         FROM resource_head h JOIN own USING (resource_type, id)
         JOIN resource_version v USING (resource_type, id, version_id)"
    ))
    .await
    .into_iter()
    .map(|v| rename(&names, v.to_string()))
    .collect();
    heads.sort();
    let mut identifiers: Vec<String> = rows(own!(
        "SELECT jsonb_build_array(resource_type, id, system, value)
         FROM resource_identifier JOIN own USING (resource_type, id)"
    ))
    .await
    .into_iter()
    .map(|v| rename(&names, v.to_string()))
    .collect();
    identifiers.sort();
    let feed: Vec<String> = rows(own!(
        "SELECT jsonb_build_array(resource_type, id, version_id, operation)
         FROM change_feed JOIN own USING (resource_type, id) ORDER BY seq"
    ))
    .await
    .into_iter()
    .map(|v| rename(&names, v.to_string()))
    .collect();
    json!({
        "versions": versions,
        "heads": heads,
        "identifiers": identifiers,
        "feed": feed,
    })
}

/// The version-write statements a transaction's messages took: rows one statement inserts
/// share its command id (`cmin`); Persons and their Provenance are identity's own statement.
async fn version_statements(app: &TestApp) -> i64 {
    scalar(
        app,
        "SELECT count(DISTINCT cmin::text) FROM resource_version
         WHERE resource_type <> 'Person'
           AND NOT (resource_type = 'Provenance'
                    AND content->'target'->0->>'reference' LIKE 'Person/%')",
    )
    .await
}

/// The messages into a fresh database as one group (one transaction), then one by one into
/// another, with the same outcome for each message: (the group's database, the other, the
/// outcomes).
async fn grouped_and_alone(
    messages: &[(&str, Value)],
) -> (TestApp, TestApp, Vec<(Disposition, usize)>) {
    let envelope = Envelope::default();
    let callers: Vec<Caller> = messages.iter().map(|(ods, _)| trust(ods)).collect();
    let grouped = TestApp::spawn().await;
    let ingest = Ingest::new(
        Repository::new(grouped.store.clone()),
        Arc::new(Catalogue::load(None).unwrap()),
        grouped.base.clone(),
    );
    let mut bundles: Vec<Value> = messages.iter().map(|(_, m)| m.clone()).collect();
    let items: Vec<(&mut Value, &Caller, &Envelope)> = bundles
        .iter_mut()
        .zip(&callers)
        .map(|(m, c)| (m, c, &envelope))
        .collect();
    let grouped_results: Vec<(Disposition, usize)> = ingest
        .process_group(items)
        .await
        .into_iter()
        .map(|r| {
            let p = r.expect("applied");
            (p.disposition, p.stale)
        })
        .collect();
    assert_eq!(
        scalar(&grouped, "SELECT count(DISTINCT txid) FROM change_feed").await,
        1
    );

    let alone = TestApp::spawn().await;
    let ingest = Ingest::new(
        Repository::new(alone.store.clone()),
        Arc::new(Catalogue::load(None).unwrap()),
        alone.base.clone(),
    );
    let mut alone_results = Vec::new();
    for ((_, m), c) in messages.iter().zip(&callers) {
        let r = ingest
            .process_group(vec![(&mut m.clone(), c, &envelope)])
            .await;
        let p = r.into_iter().next().unwrap().expect("applied");
        alone_results.push((p.disposition, p.stale));
    }
    assert_eq!(grouped_results, alone_results);
    (grouped, alone, grouped_results)
}

/// As `grouped_and_alone`, with both databases' `store_state`: (the group's database, its
/// state, the other's).
async fn grouped_and_alone_states(messages: &[(&str, Value)]) -> (TestApp, Value, Value) {
    let (grouped, alone, _) = grouped_and_alone(messages).await;
    let state = store_state(&grouped).await;
    let expected = store_state(&alone).await;
    (grouped, state, expected)
}

/// A group going well writes the versions of all its messages — each message's resources
/// and Provenance, of different trusts — in one statement after its last message, and must
/// leave exactly what writing them message by message leaves: versions, heads, identifiers,
/// and the change feed in message order.
#[tokio::test]
async fn a_groups_versions_written_in_one_statement_are_those_of_one_by_one_writes() {
    let messages = [
        ("RX1", admission("RX1", "v1", &at(10), "P1", "E1", "Ten")),
        ("RX1", admission("RX1", "v2", &at(11), "P2", "E2", "Eleven")),
        ("RX2", admission("RX2", "v3", &at(12), "Q1", "F1", "Twelve")),
        (
            "RX1",
            admission("RX1", "v4", &at(13), "P3", "E3", "Thirteen"),
        ),
    ];
    let (grouped, state, expected) = grouped_and_alone_states(&messages).await;
    assert_eq!(state, expected);
    assert_eq!(version_statements(&grouped).await, 1);
    // What the comparison covers: 4 Patients, 4 Encounters and their Provenance, in order.
    let feed = expected["feed"].as_array().unwrap();
    assert_eq!(feed.len(), 12, "{feed:?}");
    assert!(feed[0].as_str().unwrap().contains("|P1]"), "{feed:?}");
    assert!(
        feed[2].as_str().unwrap().starts_with("[\"Provenance\""),
        "{feed:?}"
    );
    assert!(
        feed[11].as_str().unwrap().starts_with("[\"Provenance\""),
        "{feed:?}"
    );
}

/// Two messages of one group writing the same resources: one statement changes a head once,
/// so the second message's versions go out in a later statement than the first's, and the
/// resources get a version per message, in message order, exactly as one by one.
#[tokio::test]
async fn two_messages_of_one_group_writing_one_resource_write_it_in_turn() {
    let mut finished = admission("RX1", "w2", &at(12), "P1", "E1", "Twelve");
    finished["entry"][2]["resource"]["status"] = json!("finished");
    let messages = [
        ("RX1", admission("RX1", "w1", &at(10), "P1", "E1", "Ten")),
        // P1 and E1 again, newer: a second version of each.
        ("RX1", finished),
        // Unrelated: may share a statement with either.
        (
            "RX1",
            admission("RX1", "w3", &at(13), "P2", "E2", "Thirteen"),
        ),
        // Older than w2 for P1: held back as stale; its new Encounter is written.
        ("RX1", admission("RX1", "w4", &at(11), "P1", "E3", "Eleven")),
    ];
    let (grouped, state, expected) = grouped_and_alone_states(&messages).await;
    assert_eq!(state, expected);
    let statements = version_statements(&grouped).await;
    assert!(
        (2..4).contains(&statements),
        "w1's versions before w2's, some messages sharing a statement: {statements}"
    );
    let heads = expected["heads"].to_string();
    for second in [r#"|P1]\",2,"#, r#"|E1]\",2,"#] {
        assert!(heads.contains(second), "{second}: {heads}");
    }
    assert_eq!(
        held_families(&grouped).await,
        vec!["Thirteen", "Twelve"],
        "w4 held back"
    );
}
