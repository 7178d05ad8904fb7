//! `[audit] durability = "journal"`: each answer waits for its row's fsync into a local journal;
//! a shipper appends the journal to the chain exactly once — across kill -9, with a torn tail,
//! and while another writer (a database-mode process) moves the chain head. A second process on
//! the same journal is refused.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::AUTHORIZATION;

use crate::common::{TestApp, TestDatabase};
use crate::*;

fn verify(url: &str) -> (bool, String) {
    crate::audit::verify_chain(url)
}

/// Holds the chain head: nothing can be appended to the chain until the transaction ends.
async fn hold_chain_head(pool: &sqlx::PgPool) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM audit_chain_head WHERE id = 1 FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    holder
}

/// Polls `check` until it holds or `seconds` pass.
async fn eventually<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn count_ids(pool: &sqlx::PgPool, prefix: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT request_id, count(*) FROM audit_event WHERE request_id LIKE $1 || '%'
         GROUP BY request_id ORDER BY request_id",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

async fn readyz(client: &reqwest::Client, origin: &str) -> (u16, serde_json::Value) {
    let r = client.get(format!("{origin}/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test]
async fn journal_mode_audits_every_request_into_one_unbroken_chain() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let app = TestApp::spawn_with(|s| {
        s.audit.journal_dir = Some(journal.clone());
        // Two lanes, each shipped as another replica's rows would be.
        s.audit.journal_lanes = 2;
        // Small segments: the run rotates and deletes shipped ones.
        s.audit.segment_bytes = 8 * 1024;
    })
    .await;
    let p = create_as(&app, "RX1", patient("Journalled", None)).await;
    let pid = p["id"].as_str().unwrap();
    let token = app.trust_token("RX1");
    // A database-mode writer (as another replica would be) moves the chain head meanwhile.
    let other = shcr::audit::Audit::new(app.store.clone());
    let other_rows = tokio::spawn(async move {
        for i in 0..100 {
            other
                .record(shcr::audit::AuditRecord {
                    request_id: Some(format!("other-{i:03}")),
                    interaction: "read".into(),
                    action: "R".into(),
                    http_status: 200,
                    caller_kind: "system".into(),
                    purpose: "HOPERAT".into(),
                    method: "GET".into(),
                    path: "/fhir/Patient/x".into(),
                    ..Default::default()
                })
                .await
                .expect("database-mode row");
        }
    });
    let ids: Vec<String> = (0..200).map(|i| format!("jr-{i:03}")).collect();
    let path = format!("Patient/{pid}");
    read_together(&app, &token, &path, &ids).await;
    other_rows.await.unwrap();
    eventually("every journalled row in the chain", 30, || async {
        count_ids(&app.pool, "jr-").await.len() == ids.len()
    })
    .await;
    let counted = count_ids(&app.pool, "jr-").await;
    assert!(counted.iter().all(|(_, n)| *n == 1), "{counted:?}");
    assert_eq!(count_ids(&app.pool, "other-").await.len(), 100);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT seq FROM audit_event ORDER BY seq")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(seqs, (1..=total).collect::<Vec<i64>>());
    let (ok, text) = verify(&app.db.url);
    assert!(ok, "{text}");
    // The journals' positions: every row but the other writer's came through one of the two
    // lanes, and requests arriving together used both.
    let shipped: Vec<i64> = sqlx::query_scalar("SELECT shipped_seq FROM audit_journal_shipped")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(shipped.iter().sum::<i64>(), total - 100);
    assert_eq!(shipped.len(), 2, "{shipped:?}");
    assert!(
        shipped.iter().all(|n| *n > 0),
        "both lanes used: {shipped:?}"
    );
    // Shipped segments were deleted: what is left in each lane is the writer's segment and at
    // most the one the shipper's position is in.
    for lane in ["lane-0", "lane-1"] {
        let segments = std::fs::read_dir(journal.join(lane))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".journal")
            })
            .count();
        assert!(
            (1..=2).contains(&segments),
            "{lane}: {segments} segments left"
        );
    }
    let metrics = app
        .client
        .get(format!("{}/metrics", app.origin))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "shcr_audit_journal_unshipped_rows",
        "shcr_audit_journal_unshipped_bytes",
        "shcr_audit_journal_ship_lag_seconds",
        "shcr_audit_journal_sync_seconds",
    ] {
        assert!(metrics.contains(name), "{name} in /metrics");
    }
}

#[tokio::test]
async fn answers_wait_for_the_journal_not_the_database_and_a_stuck_shipper_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let app = TestApp::spawn_with(|s| {
        s.audit.journal_dir = Some(journal.clone());
        s.audit.ship_stuck_seconds = 1;
    })
    .await;
    eventually("ready", 15, || async {
        readyz(&app.client, &app.origin).await.0 == 200
    })
    .await;
    // Hold the chain head: nothing can be appended until this transaction ends.
    let holder = hold_chain_head(&app.pool).await;
    let token = app.trust_token("RX1");
    let ids: Vec<String> = (0..20).map(|i| format!("held-{i:02}")).collect();
    for id in &ids {
        let (status, _) = send(&app, &token, reqwest::Method::GET, "Patient/none", None, id).await;
        assert!(status < 500, "answered while the chain is held: {status}");
    }
    assert!(count_ids(&app.pool, "held-").await.is_empty());
    eventually("/readyz to report the stuck shipper", 20, || async {
        let (status, body) = readyz(&app.client, &app.origin).await;
        status == 503
            && body["checks"]["audit-journal"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("stuck"))
    })
    .await;
    holder.rollback().await.unwrap();
    eventually("the held rows in the chain", 30, || async {
        count_ids(&app.pool, "held-").await.len() == ids.len()
    })
    .await;
    eventually("ready again", 15, || async {
        readyz(&app.client, &app.origin).await.0 == 200
    })
    .await;
    assert!(verify(&app.db.url).0);
}

/// `shcr serve` as a child process on `db` with its journal in `dir`; returns it and its origin.
fn serve(db: &TestDatabase, dir: &Path) -> (Child, String) {
    serve_with(db, dir, "journal")
}

fn serve_with(db: &TestDatabase, dir: &Path, durability: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shcr"))
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("SHCR_PORT", "0")
        .env("SHCR_DEV_ISSUER__ENABLED", "true")
        .env("SHCR_DEV_ISSUER__KEY_FILE", dir.join("key.pem"))
        .env("SHCR_INDEX_DIR", dir.join("index"))
        .env("SHCR_AUDIT__JOURNAL_DIR", dir.join("journal"))
        .env("SHCR_AUDIT__DURABILITY", durability)
        .env("SHCR_EVENTS__SUBSCRIPTIONS__ENABLED", "false")
        .env("SHCR_LOG_FORMAT", "json")
        .env("RUST_LOG", "error,shcr::startup=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shcr serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "listening"
                && let Some(port) = v["port"].as_u64()
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(port);
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server listens");
    (child, format!("http://127.0.0.1:{port}"))
}

/// Unauthenticated reads: answered 401, audited all the same.
async fn requests(client: &reqwest::Client, origin: &str, ids: &[String]) {
    let sent = ids.iter().map(|id| {
        client
            .get(format!("{origin}/fhir/Patient/any"))
            .header("x-request-id", id)
            .send()
    });
    for r in futures_util::future::join_all(sent).await {
        assert_eq!(r.expect("answered").status().as_u16(), 401);
    }
}

#[tokio::test]
async fn a_server_killed_after_answering_has_every_acknowledged_row_in_the_chain_once() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let (mut server, origin) = serve(&db, dir.path());
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();

    // Shipped before the kill: must not be shipped again after it.
    let shipped: Vec<String> = (0..50).map(|i| format!("before-{i:03}")).collect();
    requests(&client, &origin, &shipped).await;
    eventually("the first rows shipped", 30, || async {
        count_ids(&pool, "before-").await.len() == shipped.len()
    })
    .await;

    // Acknowledged while the chain head is held: in the journal only when the server dies.
    let holder = hold_chain_head(&pool).await;
    let held: Vec<String> = (0..150).map(|i| format!("held-{i:03}")).collect();
    requests(&client, &origin, &held).await;
    server.kill().expect("kill -9");
    server.wait().unwrap();
    assert!(count_ids(&pool, "held-").await.is_empty());
    // The killed server's shipping statement may still be waiting in its backend for the
    // head: released now, it may commit after all — the restarted server must then skip
    // those rows rather than ship them twice.
    holder.rollback().await.unwrap();

    // A torn entry after the last acknowledged one, as a crash mid-write leaves it.
    let journal = dir.path().join("journal").join("lane-0");
    let last = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "journal"))
        .max()
        .expect("a segment");
    // Segments are filled with zeros ahead of their entries: the entries end after the last
    // byte that is not zero (an entry ends with its JSON payload's closing brace).
    let bytes = std::fs::read(&last).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut torn = 500u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[7u8; 40]);
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&last).unwrap(),
        &torn,
        end as u64,
    )
    .unwrap();

    let (mut server, origin) = serve(&db, dir.path());
    eventually("every acknowledged row in the chain", 60, || async {
        count_ids(&pool, "held-").await.len() == held.len()
    })
    .await;
    // The torn entry was cut off and the journal goes on after the last good one.
    let bytes = std::fs::read(&last).unwrap_or_default();
    assert!(
        bytes.get(end..end + torn.len()) != Some(&torn[..]),
        "the torn entry is still there"
    );
    let after: Vec<String> = (0..10).map(|i| format!("after-{i:03}")).collect();
    requests(&client, &origin, &after).await;
    eventually("rows after the restart", 30, || async {
        count_ids(&pool, "after-").await.len() == after.len()
    })
    .await;
    // Killed again with rows only in the journal, then started in database mode: the rows
    // left in the journal are shipped all the same, and new rows go straight to the chain.
    let holder = hold_chain_head(&pool).await;
    let left: Vec<String> = (0..20).map(|i| format!("left-{i:03}")).collect();
    requests(&client, &origin, &left).await;
    server.kill().expect("kill -9");
    server.wait().unwrap();
    holder.rollback().await.unwrap();
    let (mut server, origin) = serve_with(&db, dir.path(), "database");
    let direct: Vec<String> = (0..10).map(|i| format!("direct-{i:03}")).collect();
    requests(&client, &origin, &direct).await;
    assert_eq!(
        count_ids(&pool, "direct-").await.len(),
        direct.len(),
        "database mode: in the chain before the answers"
    );
    eventually(
        "the rows a journal run left, shipped in database mode",
        60,
        || async { count_ids(&pool, "left-").await.len() == left.len() },
    )
    .await;
    let _ = server.kill();
    let _ = server.wait();
    for prefix in ["before-", "held-", "after-", "left-", "direct-"] {
        let counted = count_ids(&pool, prefix).await;
        assert!(
            counted.iter().all(|(_, n)| *n == 1),
            "{prefix}: {counted:?}"
        );
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
        .fetch_one(&pool)
        .await
        .unwrap();
    let position: i64 =
        sqlx::query_scalar("SELECT sum(shipped_seq)::bigint FROM audit_journal_shipped")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(total, 240, "every row once, nothing else");
    assert_eq!(
        position,
        total - 10,
        "all but the database-mode rows came through the journal"
    );
    let (ok, text) = verify(&db.url);
    assert!(ok && text.contains("240 rows verified"), "{text}");
    pool.close().await;
}

#[tokio::test]
async fn a_second_process_on_the_same_journal_is_refused() {
    let db = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut first, _) = serve(&db, dir.path());
    let second = Command::new(env!("CARGO_BIN_EXE_shcr"))
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("SHCR_PORT", "0")
        .env("SHCR_DEV_ISSUER__ENABLED", "true")
        .env("SHCR_DEV_ISSUER__KEY_FILE", dir.path().join("key2.pem"))
        .env("SHCR_INDEX_DIR", dir.path().join("index2"))
        .env("SHCR_AUDIT__JOURNAL_DIR", dir.path().join("journal"))
        .env("SHCR_EVENTS__SUBSCRIPTIONS__ENABLED", "false")
        .env("RUST_LOG", "error")
        .output()
        .expect("run a second shcr serve");
    let _ = first.kill();
    let _ = first.wait();
    let text = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second process started");
    assert!(text.contains("in use by another process"), "{text}");
}
