use reqwest::Method;
use serde_json::{Value, json};

use crate::common::{TestApp, outcome, patient};

#[tokio::test]
async fn create_assigns_id_version_and_headers() {
    let app = TestApp::spawn().await;
    let response = app.post("Patient", &patient("9434765919")).await;
    assert_eq!(response.status(), 201);
    let headers = response.headers().clone();
    let body: Value = response.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(headers["etag"], "W/\"1\"");
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("{}/Patient/{id}/_history/1", app.base)
    );
    assert!(headers["last-modified"].to_str().unwrap().ends_with("GMT"));
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json")
    );
}

#[tokio::test]
async fn create_ignores_a_client_supplied_id() {
    let app = TestApp::spawn().await;
    let mut p = patient("9434765919");
    p["id"] = json!("chosen-by-client");
    let body = app.create(&p).await;
    assert_ne!(body["id"], "chosen-by-client");
}

#[tokio::test]
async fn read_returns_the_current_version_and_vread_any_version() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("9434765919")).await;
    let id = created["id"].as_str().unwrap();
    let mut updated = created.clone();
    updated["gender"] = json!("male");
    let r = app.put(&format!("Patient/{id}"), &updated).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"2\"");

    let r = app.get(&format!("Patient/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
    let current: Value = r.json().await.unwrap();
    assert_eq!(current["gender"], "male");
    assert_eq!(current["meta"]["versionId"], "2");

    let r = app.get(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(r.status(), 200);
    let v1: Value = r.json().await.unwrap();
    assert_eq!(v1["gender"], "female");
    assert_eq!(v1["meta"]["versionId"], "1");

    outcome(app.get(&format!("Patient/{id}/_history/3")).await, 404).await;
    outcome(app.get(&format!("Patient/{id}/_history/x")).await, 400).await;
}

#[tokio::test]
async fn update_as_create_uses_the_client_id() {
    let app = TestApp::spawn().await;
    let mut p = patient("9434765919");
    p["id"] = json!("trust-rx1-123");
    let r = app.put("Patient/trust-rx1-123", &p).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    let r = app.get("Patient/trust-rx1-123").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn update_refuses_missing_or_mismatched_ids_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let before = app.write_footprint().await;
    let p = patient("9434765919");
    let body = outcome(app.put("Patient/abc", &p).await, 400).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("no id")
    );
    let mut p2 = p.clone();
    p2["id"] = json!("other");
    let body = outcome(app.put("Patient/abc", &p2).await, 400).await;
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("does not match")
    );
    assert_eq!(app.write_footprint().await, before);
}

#[tokio::test]
async fn if_match_guards_updates() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("9434765919")).await;
    let id = created["id"].as_str().unwrap();
    let stale = app
        .request(Method::PUT, &format!("Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"7\"")
        .body(created.to_string())
        .send()
        .await
        .unwrap();
    let before = app.write_footprint().await;
    outcome(stale, 412).await;
    assert_eq!(app.write_footprint().await, before);
    let mut changed = created.clone();
    changed["gender"] = json!("male");
    let fresh = app
        .request(Method::PUT, &format!("Patient/{id}"))
        .header("content-type", "application/fhir+json")
        .header("if-match", "W/\"1\"")
        .body(changed.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.headers()["etag"], "W/\"2\"");
}

#[tokio::test]
async fn delete_makes_reads_gone_and_keeps_history() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("9434765919")).await;
    let id = created["id"].as_str().unwrap();
    let r = app.delete(&format!("Patient/{id}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
    outcome(app.get(&format!("Patient/{id}")).await, 410).await;
    outcome(app.get(&format!("Patient/{id}/_history/2")).await, 410).await;
    assert_eq!(
        app.get(&format!("Patient/{id}/_history/1")).await.status(),
        200
    );
    // Deleting again changes nothing.
    let versions = app.count("resource_version").await;
    assert_eq!(app.delete(&format!("Patient/{id}")).await.status(), 204);
    assert_eq!(app.count("resource_version").await, versions);
    // The deleted resource's identifiers no longer match conditional criteria.
    let r = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header(
            "if-none-exist",
            "identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919",
        )
        .body(patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // An update after deletion brings the resource back as the next version.
    let mut again = created.clone();
    again["gender"] = json!("other");
    let r = app.put(&format!("Patient/{id}"), &again).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["etag"], "W/\"3\"");
}

#[tokio::test]
async fn reading_what_never_existed_is_not_found() {
    let app = TestApp::spawn().await;
    outcome(app.get("Patient/never-was").await, 404).await;
    assert_eq!(app.delete("Patient/never-was").await.status(), 204);
    assert_eq!(app.count("resource_version").await, 0);
}

#[tokio::test]
async fn conditional_create_returns_the_existing_match() {
    let app = TestApp::spawn().await;
    let first = app.create(&patient("9434765919")).await;
    let r = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header(
            "if-none-exist",
            "identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919",
        )
        .body(patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], first["id"]);
    assert_eq!(app.count("resource_version").await, 1);

    // Two matches: the criteria are not selective enough.
    app.create(&patient("9434765919")).await;
    let r = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=9434765919")
        .body(patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    outcome(r, 412).await;
}

#[tokio::test]
async fn conditional_update_creates_updates_or_refuses() {
    let app = TestApp::spawn().await;
    let url = "Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919";
    let r = app.put(url, &patient("9434765919")).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let mut changed = patient("9434765919");
    changed["gender"] = json!("unknown");
    let r = app.put(url, &changed).await;
    assert_eq!(r.status(), 200);
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["id"], created["id"]);
    assert_eq!(updated["meta"]["versionId"], "2");

    app.create(&patient("9434765919")).await;
    let before = app.write_footprint().await;
    outcome(app.put(url, &changed).await, 412).await;
    assert_eq!(app.write_footprint().await, before);
    let body = outcome(app.put("Patient?name=smith", &changed).await, 400).await;
    assert_eq!(body["issue"][0]["code"], "not-supported");
}

#[tokio::test]
async fn conditional_delete_removes_the_single_match() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("9434765919")).await;
    let r = app
        .delete("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919")
        .await;
    assert_eq!(r.status(), 200);
    outcome(
        app.get(&format!("Patient/{}", created["id"].as_str().unwrap()))
            .await,
        410,
    )
    .await;
    let r = app
        .delete("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919")
        .await;
    assert_eq!(r.status(), 204);
    outcome(app.delete("Patient").await, 405).await;
}

#[tokio::test]
async fn prefer_header_shapes_the_response() {
    let app = TestApp::spawn().await;
    let minimal = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(minimal.status(), 201);
    assert!(minimal.headers().contains_key("location"));
    assert!(minimal.text().await.unwrap().is_empty());

    let oo = app
        .request(Method::POST, "Patient")
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .body(patient("9434765919").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(oo.status(), 201);
    let body: Value = oo.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert!(
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("created")
    );
}

#[tokio::test]
async fn pretty_printing_on_request() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("9434765919")).await;
    let id = created["id"].as_str().unwrap();
    let text = app
        .get(&format!("Patient/{id}?_pretty=true"))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("\n  \""), "{text}");
    let compact = app
        .get(&format!("Patient/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!compact.contains('\n'));
    let error = app
        .get("Patient/nope?_pretty=true")
        .await
        .text()
        .await
        .unwrap();
    assert!(error.contains("\n  \""), "{error}");
}

#[tokio::test]
async fn identifiers_follow_the_current_version() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("9434765919")).await;
    let id = created["id"].as_str().unwrap();
    let mut changed = created.clone();
    changed["identifier"] = json!([{"system": "https://example.org/mrn", "value": "M1"}]);
    assert_eq!(
        app.put(&format!("Patient/{id}"), &changed).await.status(),
        200
    );
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT system, value FROM resource_identifier WHERE id = $1")
            .bind(id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![("https://example.org/mrn".to_string(), "M1".to_string())]
    );
}

/// A first version's head and identifiers are inserted without `ON CONFLICT` (none can
/// exist yet); the store writes each identifier of a version once, whoever built the version,
/// so one carried twice is stored once instead of failing the write. A replaced resource's
/// identifiers still merge with those it keeps.
#[tokio::test]
async fn a_first_version_carrying_an_identifier_twice_stores_it_once() {
    let app = TestApp::spawn().await;
    let store = shcr::store::Store::from_pool(app.pool.clone());
    let author = shcr::store::Author {
        kind: "system",
        id: "test".into(),
        org: Some("RX1".into()),
        request_id: None,
    };
    let version = |v: i64, identifiers: &[(&str, &str)]| shcr::store::NewVersion {
        resource_type: "Patient".into(),
        id: "twice".into(),
        version_id: v,
        last_updated: time::OffsetDateTime::now_utc(),
        operation: if v == 1 {
            shcr::store::Operation::Create
        } else {
            shcr::store::Operation::Update
        },
        method: if v == 1 { "POST" } else { "PUT" },
        content: Some(
            json!({"resourceType": "Patient", "id": "twice"})
                .to_string()
                .into(),
        ),
        identifiers: identifiers
            .iter()
            .map(|(s, v)| (s.to_string(), v.to_string()))
            .collect(),
        compartment: None,
        content_hash: None,
    };
    let identifiers = || {
        sqlx::query_as::<_, (String, String)>(
            "SELECT system, value FROM resource_identifier WHERE id = 'twice' ORDER BY 1, 2",
        )
        .fetch_all(&app.pool)
    };
    let pair = |s: &str, v: &str| (s.to_string(), v.to_string());

    let mut tx = store.begin_write().await.unwrap();
    tx.write(&[version(1, &[("s", "1"), ("s", "1"), ("", "2")])], &author)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        identifiers().await.unwrap(),
        vec![pair("", "2"), pair("s", "1")]
    );

    let mut tx = store.begin_write().await.unwrap();
    tx.write(
        &[version(2, &[("s", "1"), ("s", "3"), ("s", "3")])],
        &author,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        identifiers().await.unwrap(),
        vec![pair("s", "1"), pair("s", "3")]
    );
    let head: (i64,) = sqlx::query_as("SELECT version_id FROM resource_head WHERE id = 'twice'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(head.0, 2);

    // A version 1 of a resource that exists fails on its version row, as before.
    let mut tx = store.begin_write().await.unwrap();
    assert!(
        tx.write(&[version(1, &[("s", "9")])], &author)
            .await
            .is_err()
    );
}

/// Identifier criteria as conditional operations ask them (`WriteTx::find_by_identifier`):
/// by value with or without a system, `|value` (no system), `system|` (any value), each
/// resource once however many of its identifiers match, and every match.
#[tokio::test]
async fn identifier_queries_find_each_matching_resource_once() {
    let app = TestApp::spawn().await;
    // The statement reads `resource_identifier` alone.
    sqlx::query(
        "INSERT INTO resource_identifier (resource_type, id, system, value) VALUES
             ('Patient', 'a', 'sA', 'X'), ('Patient', 'a', 'sB', 'X'), ('Patient', 'a', 'sA', 'Y'),
             ('Patient', 'a', '', 'Z'), ('Patient', 'b', 'sA', 'X'), ('Patient', 'b', '', 'X'),
             ('Patient', 'c', 'sA', 'W'), ('Practitioner', 'a', 'sA', 'X')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let q = |t: &str, s: Option<&str>, v: Option<&str>| shcr::store::IdentifierQuery {
        resource_type: t.into(),
        system: s.map(Into::into),
        value: v.map(Into::into),
    };
    let cases: Vec<(shcr::store::IdentifierQuery, Vec<&str>)> = vec![
        (q("Patient", None, Some("X")), vec!["a", "b"]),
        (q("Patient", Some("sA"), Some("X")), vec!["a", "b"]),
        (q("Patient", Some("sB"), Some("X")), vec!["a"]),
        (q("Patient", Some(""), Some("X")), vec!["b"]),
        (q("Patient", Some("sA"), None), vec!["a", "b", "c"]),
        (q("Patient", Some(""), None), vec!["a", "b"]),
        (q("Patient", Some("sC"), None), vec![]),
        (q("Patient", None, Some("Z")), vec!["a"]),
        (q("Patient", Some(""), Some("Z")), vec!["a"]),
        (q("Patient", Some("sA"), Some("Z")), vec![]),
        (q("Practitioner", None, Some("X")), vec!["a"]),
        (q("Practitioner", Some("sA"), None), vec!["a"]),
        (q("Patient", None, Some("nope")), vec![]),
        (q("Patient", Some("sA"), Some("X")), vec!["a", "b"]),
    ];
    let store = shcr::store::Store::from_pool(app.pool.clone());
    let mut tx = store.begin_write().await.unwrap();
    let queries: Vec<_> = cases.iter().map(|(q, _)| q.clone()).collect();
    let found = tx.find_by_identifier(&queries).await.unwrap();
    let expected: Vec<Vec<String>> = cases
        .iter()
        .map(|(_, ids)| ids.iter().map(|id| id.to_string()).collect())
        .collect();
    assert_eq!(found, expected);
    assert!(tx.find_by_identifier(&[]).await.unwrap().is_empty());
}

async fn rows_of(app: &TestApp, sql: &'static str, id: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_update_with_the_current_content_writes_no_new_version() {
    let app = TestApp::spawn().await;
    let created = app.create(&patient("9434765919")).await;
    let id = created["id"].as_str().unwrap();
    let url = format!("Patient/{id}");
    let versions = || {
        rows_of(
            &app,
            "SELECT count(*) FROM resource_version WHERE id = $1",
            id,
        )
    };
    let feed = || rows_of(&app, "SELECT count(*) FROM change_feed WHERE id = $1", id);

    // The resource as read back, stamp and all: the current version answers.
    let r = app.put(&url, &created).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"1\"");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["meta"]["versionId"], "1");
    assert_eq!(body["meta"]["lastUpdated"], created["meta"]["lastUpdated"]);
    assert_eq!(body["gender"], created["gender"]);
    // Without its stamp, too.
    let mut bare = created.clone();
    bare.as_object_mut().unwrap().remove("meta");
    assert_eq!(app.put(&url, &bare).await.headers()["etag"], "W/\"1\"");
    assert_eq!(versions().await, 1, "no new version");
    assert_eq!(feed().await, 1, "no change-feed row");

    // A change is a new version; sending it again is not; the old content again is.
    let mut changed = created.clone();
    changed["gender"] = json!("male");
    assert_eq!(app.put(&url, &changed).await.headers()["etag"], "W/\"2\"");
    assert_eq!(app.put(&url, &changed).await.headers()["etag"], "W/\"2\"");
    assert_eq!(app.put(&url, &created).await.headers()["etag"], "W/\"3\"");
    assert_eq!(versions().await, 3);
    assert_eq!(feed().await, 3);

    // A deleted resource sent again is restored as a new version.
    assert_eq!(app.delete(&url).await.status(), 200);
    let r = app.put(&url, &created).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["etag"], "W/\"5\"");
}
