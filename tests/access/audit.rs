//! The audit chain: `shcr audit verify` (the real binary) finds altered, deleted and inserted
//! rows and names the first bad one.

use crate::common::TestApp;
use crate::*;

fn verify(app: &TestApp) -> (bool, String) {
    verify_chain(&app.db.url)
}

/// `shcr audit verify` (the real binary) on the database at `url`: (passed, its output).
pub(crate) fn verify_chain(url: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shcr"))
        .args(["audit", "verify"])
        .env("DATABASE_URL", url)
        .env("SHCR_LOG_FORMAT", "json")
        .env("RUST_LOG", "error")
        .output()
        .expect("run shcr audit verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn sql(app: &TestApp, statement: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(&app.pool)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

#[tokio::test]
async fn tampering_with_the_audit_trail_is_detected() {
    let app = TestApp::spawn().await;
    let p = create_as(&app, "RX1", patient("Audited", None)).await;
    let pid = p["id"].as_str().unwrap();
    let token = app.trust_token("RX1");
    for _ in 0..5 {
        assert_eq!(get(&app, &token, &format!("Patient/{pid}")).await.0, 200);
    }
    let (ok, text) = verify(&app);
    assert!(ok, "{text}");
    assert!(text.contains("6 rows verified"), "{text}");

    // The application's own connection cannot change or remove audit rows.
    let refused = sqlx::query("UPDATE audit_event SET outcome = 0 WHERE seq = 2")
        .execute(&app.pool)
        .await;
    assert!(refused.is_err());
    assert!(
        sqlx::query("DELETE FROM audit_event WHERE seq = 2")
            .execute(&app.pool)
            .await
            .is_err()
    );

    // A superuser can switch the trigger off; the chain still tells.
    sql(&app, "ALTER TABLE audit_event DISABLE TRIGGER USER").await;
    sql(
        &app,
        "UPDATE audit_event SET http_status = 404 WHERE seq = 3",
    )
    .await;
    let (ok, text) = verify(&app);
    assert!(!ok);
    assert!(
        text.contains("BROKEN at row 3") && text.contains("altered"),
        "{text}"
    );
    sql(
        &app,
        "UPDATE audit_event SET http_status = 200 WHERE seq = 3",
    )
    .await;
    assert!(verify(&app).0, "restored");

    sql(
        &app,
        "CREATE TABLE saved AS SELECT * FROM audit_event WHERE seq = 4",
    )
    .await;
    sql(&app, "DELETE FROM audit_event WHERE seq = 4").await;
    let (ok, text) = verify(&app);
    assert!(!ok);
    assert!(
        text.contains("BROKEN at row 4") && text.contains("missing"),
        "{text}"
    );
    sql(&app, "INSERT INTO audit_event SELECT * FROM saved").await;
    assert!(verify(&app).0, "restored");

    // Deleting the newest rows is caught by the recorded chain head.
    sql(&app, "DELETE FROM saved").await;
    sql(&app, "INSERT INTO saved SELECT * FROM audit_event WHERE seq = (SELECT max(seq) FROM audit_event)").await;
    let last: i64 = sqlx::query_scalar("SELECT max(seq) FROM audit_event")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    sql(&app, &format!("DELETE FROM audit_event WHERE seq = {last}")).await;
    let (ok, text) = verify(&app);
    assert!(!ok);
    assert!(text.contains(&format!("BROKEN at row {last}")), "{text}");
    sql(&app, "INSERT INTO audit_event SELECT * FROM saved").await;
    assert!(verify(&app).0, "restored");

    // A forged row slipped into the sequence breaks the chain where it sits.
    sql(
        &app,
        "UPDATE audit_event SET seq = seq + 1000 WHERE seq >= 5",
    )
    .await;
    sql(
        &app,
        "UPDATE audit_event SET seq = seq - 999 WHERE seq >= 1005",
    )
    .await;
    sql(&app, "DELETE FROM saved").await;
    sql(
        &app,
        "INSERT INTO saved SELECT * FROM audit_event WHERE seq = 4",
    )
    .await;
    sql(&app, "UPDATE saved SET seq = 5, request_id = 'forged'").await;
    sql(&app, "INSERT INTO audit_event SELECT * FROM saved").await;
    let (ok, text) = verify(&app);
    assert!(!ok);
    assert!(text.contains("BROKEN at row 5"), "{text}");
}

#[tokio::test]
async fn concurrent_requests_are_each_audited_once_in_one_unbroken_chain() {
    let app = TestApp::spawn().await;
    let p = create_as(&app, "RX1", patient("Busy", None)).await;
    let pid = p["id"].as_str().unwrap();
    let token = app.trust_token("RX1");
    let ids: Vec<String> = (0..64).map(|i| format!("busy-{i}")).collect();
    // Requests arriving together share group commits; each still gets its own row.
    let path = format!("Patient/{pid}");
    read_together(&app, &token, &path, &ids).await;
    let audited = audited_request_ids(&app).await;
    for id in &ids {
        assert_eq!(audited.iter().filter(|a| *a == id).count(), 1, "{id}");
    }
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM audit_event ORDER BY seq")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(seqs, (1..=65).collect::<Vec<i64>>());
    let (ok, text) = verify(&app);
    assert!(ok, "{text}");
    assert!(text.contains("65 rows verified"), "{text}");
}

#[tokio::test]
async fn two_writers_as_two_processes_keep_one_unbroken_chain() {
    let app = TestApp::spawn().await;
    // Two writers on one database, as two shcr processes have: each moves the head under the
    // other, which must re-chain its group.
    let writers = [
        shcr::audit::Audit::new(app.store.clone()),
        shcr::audit::Audit::new(app.store.clone()),
    ];
    let record = |i: usize| shcr::audit::AuditRecord {
        request_id: Some(format!("two-writers-{i}")),
        interaction: "read".into(),
        action: "R".into(),
        http_status: 200,
        caller_kind: "system".into(),
        purpose: "HOPERAT".into(),
        method: "GET".into(),
        path: format!("/fhir/Patient/{i}"),
        patients: vec![format!("p{}", i % 7)],
        ..Default::default()
    };
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    // Staggered arrivals make many small groups, interleaved between the two writers.
    let tasks: Vec<_> = (0..600)
        .map(|i| {
            let writer = writers[i % 2].clone();
            let record = record(i);
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_micros(150 * (i as u64 / 2))).await;
                writer.record(record).await
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.push(task.await.unwrap().expect("audited"));
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        600,
        "every record got a sequence number of its own"
    );
    let audited = audited_request_ids(&app).await;
    for i in 0..600 {
        let id = format!("two-writers-{i}");
        assert_eq!(audited.iter().filter(|a| **a == id).count(), 1, "{id}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, before + 600);
    let (ok, text) = verify(&app);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("{} rows verified", before + 600)),
        "{text}"
    );
}
