//! Key lookups keep probing the primary key however much the tables have grown since their
//! connection first planned them on empty tables.

use std::time::{Duration, Instant};

use shcr::store::{Author, NewVersion, Operation, Store};

use crate::common::TestDatabase;

/// Scans of `resource_version`'s primary key and of its `(type, last_updated, …)` index.
async fn version_index_scans(pool: &sqlx::PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT sum(idx_scan) FILTER (WHERE indexrelname = 'resource_version_pkey')::bigint,
                sum(idx_scan) FILTER (WHERE indexrelname = 'resource_version_type_last_updated')::bigint
         FROM pg_stat_user_indexes WHERE relname = 'resource_version'",
    )
    .fetch_one(pool)
    .await
    .expect("index statistics")
}

#[tokio::test]
async fn head_loads_probe_the_primary_key_after_the_tables_have_grown() {
    let db = TestDatabase::create().await;
    // Two connections make a lookups pool of one: every load reuses its prepared statement
    // until the connection's lifetime ends.
    let store = Store::connect_with(&db.url, 2, Duration::from_secs(1))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    // Only new statistics replace a cached plan; autovacuum must not make this test pass by
    // analysing the table at the right moment.
    sqlx::query("ALTER TABLE resource_version SET (autovacuum_enabled = false)")
        .execute(store.pool())
        .await
        .expect("autovacuum off");
    let keys = vec![("Observation".to_string(), "obs-7".to_string())];
    // Planned on empty tables, where both indexes cost the same.
    for _ in 0..3 {
        assert!(store.heads(&keys).await.expect("heads").is_empty());
    }
    for sql in [
        "INSERT INTO resource_version (resource_type, id, version_id, last_updated, method, content,
                                       author_kind, author_id)
         SELECT 'Observation', 'obs-' || g, 1, now() - g * interval '1 second', 'POST',
                '{\"resourceType\": \"Observation\"}', 'system', 'test'
         FROM generate_series(1, 20000) AS g",
        "INSERT INTO resource_head (resource_type, id, version_id, last_updated, deleted)
         SELECT resource_type, id, version_id, last_updated, false FROM resource_version",
    ] {
        sqlx::query(sql).execute(store.pool()).await.expect("rows");
    }
    // Each round: one load, then its scans once PostgreSQL has reported them. The load must
    // come to probe the primary key only, once the connection planned on empty tables is gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = Vec::new();
    loop {
        let before = version_index_scans(store.pool()).await;
        sqlx::query("SELECT pg_stat_force_next_flush()")
            .execute(store.lookups_pool())
            .await
            .expect("flush");
        let heads = store.heads(&keys).await.expect("heads");
        assert_eq!(heads.len(), 1, "the stored head is found");
        let after = loop {
            let now = version_index_scans(store.pool()).await;
            if now != before || Instant::now() > deadline {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let scans = (after.0 - before.0, after.1 - before.1);
        rounds.push(scans);
        if scans == (1, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "head loads never came to probe the primary key alone: scans (primary key, type index) per round {rounds:?}"
        );
    }
}

/// A group's identifier criteria (`WriteTx::find_by_identifier`) probe the identifier indexes
/// even where a join would be planned as a hash join over a sequential scan: a new database
/// (no statistics, autovacuum off) whose `resource_identifier` holds some tens of thousands of
/// rows, as in the events bench's first minutes.
#[tokio::test]
async fn identifier_criteria_probe_the_indexes_of_a_table_without_statistics() {
    let db = TestDatabase::create().await;
    let store = Store::connect_with(&db.url, 2, Duration::from_secs(1))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    sqlx::query("ALTER TABLE resource_identifier SET (autovacuum_enabled = false)")
        .execute(store.pool())
        .await
        .expect("autovacuum off");
    let sys = |what: &str| format!("https://fhir.rx1.example.nhs.uk/Id/{what}");
    // 7,000 messages' identifiers: 1,000 patients, an Encounter and three Observations each.
    sqlx::query(
        "INSERT INTO resource_identifier (resource_type, id, system, value)
         SELECT 'Patient', 'p' || p, $1, 'P' || p FROM generate_series(0, 999) p
         UNION ALL
         SELECT 'Encounter', 'e' || k, $2, 'E' || k FROM generate_series(0, 6999) k
         UNION ALL
         SELECT 'Observation', 'o' || k || '-' || j, $3, 'O' || k || '-' || j
         FROM generate_series(0, 6999) k, generate_series(0, 2) j",
    )
    .bind(sys("local-patient-identifier"))
    .bind(sys("encounter"))
    .bind(sys("observation"))
    .execute(store.pool())
    .await
    .expect("rows");
    // A group of 32 messages, the last 10 already stored.
    let query = |t: &str, s: String, v: String| shcr::store::IdentifierQuery {
        resource_type: t.into(),
        system: Some(s),
        value: Some(v),
    };
    let mut queries = Vec::new();
    for k in 6990..7022 {
        queries.push(query(
            "Patient",
            sys("local-patient-identifier"),
            format!("P{}", k % 1000),
        ));
        queries.push(query("Encounter", sys("encounter"), format!("E{k}")));
        for j in 0..3 {
            queries.push(query(
                "Observation",
                sys("observation"),
                format!("O{k}-{j}"),
            ));
        }
    }
    let mut tx = store.begin_write().await.expect("begin");
    let found = tx.find_by_identifier(&queries).await.expect("find");
    let (seq_scans, index_scans): (i64, i64) = sqlx::query_as(
        "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables
         WHERE relname = 'resource_identifier'",
    )
    .fetch_one(tx.connection().await.expect("connection"))
    .await
    .expect("this transaction's scans");
    assert_eq!(
        found.iter().filter(|ids| !ids.is_empty()).count(),
        32 + 10 * 4
    );
    assert_eq!(found[0], vec!["p990".to_string()]);
    assert_eq!(
        (seq_scans, index_scans),
        (0, 160),
        "one index probe per criterion, no sequential scan"
    );
}

/// A group's write transaction (`Store::begin_group_write`) runs each statement with the
/// generic plan its connection made the first time, whatever the tables have become since:
/// the versions statement, first run on empty tables, still finds a replaced resource's
/// identifiers by key once `resource_identifier` holds tens of thousands of rows (a new
/// database: no statistics, autovacuum off) — no sequential scan, and no new plan.
#[tokio::test]
async fn a_group_write_plans_once_and_still_probes_by_key_after_the_tables_have_grown() {
    let db = TestDatabase::create().await;
    // One write connection: every transaction below runs on the same one.
    let store = Store::connect_with(&db.url, 1, Duration::from_secs(60))
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    for table in ["resource_identifier", "resource_head", "resource_version"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} SET (autovacuum_enabled = false)"
        )))
        .execute(store.pool())
        .await
        .expect("autovacuum off");
    }
    let author = Author {
        kind: "system",
        id: "test".into(),
        org: Some("RX1".into()),
        request_id: None,
    };
    let sys = "https://fhir.rx1.example.nhs.uk/Id/observation";
    let version = |v: i64, value: &str| NewVersion {
        resource_type: "Observation".into(),
        id: "obs-0".into(),
        version_id: v,
        last_updated: time::OffsetDateTime::now_utc(),
        operation: if v == 1 {
            Operation::Create
        } else {
            Operation::Update
        },
        method: if v == 1 { "POST" } else { "PUT" },
        content: Some(r#"{"resourceType": "Observation", "id": "obs-0"}"#.into()),
        identifiers: vec![(sys.to_string(), value.to_string())],
        compartment: None,
        content_hash: None,
    };
    // Planned on empty tables.
    let mut tx = store.begin_group_write().await.expect("begin");
    tx.write(&[version(1, "O0")], &author).await.expect("write");
    tx.commit().await.expect("commit");
    sqlx::query(
        "INSERT INTO resource_identifier (resource_type, id, system, value)
         SELECT 'Observation', 'obs-' || k, $1, 'O' || k FROM generate_series(1, 30000) k",
    )
    .bind(sys)
    .execute(store.pool())
    .await
    .expect("rows");

    // A second version with another identifier: the first one's row is deleted by key. The
    // backend's counts not yet reported (earlier transactions' too) before and after it.
    let mut tx = store.begin_group_write().await.expect("begin");
    let scans = "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables
                 WHERE relname = 'resource_identifier'";
    let before: (i64, i64) = sqlx::query_as(scans)
        .fetch_one(tx.connection().await.expect("connection"))
        .await
        .expect("scans before");
    tx.write(&[version(2, "O0b")], &author)
        .await
        .expect("write");
    let after: (i64, i64) = sqlx::query_as(scans)
        .fetch_one(tx.connection().await.expect("connection"))
        .await
        .expect("scans after");
    let (seq_scans, index_scans) = (after.0 - before.0, after.1 - before.1);
    let (generic, custom): (i64, i64) = sqlx::query_as(
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements
         WHERE statement LIKE 'WITH versions AS%'",
    )
    .fetch_one(tx.connection().await.expect("connection"))
    .await
    .expect("the versions statement, prepared on this connection");
    tx.commit().await.expect("commit");
    // One probe deletes the old identifier's row, one checks the new one's for a conflict.
    assert_eq!(
        (seq_scans, index_scans),
        (0, 2),
        "the replaced resource's identifiers found by an index probe, no sequential scan"
    );
    assert_eq!(
        (generic, custom),
        (2, 0),
        "both writes ran the plan made once, on empty tables"
    );
    let identifiers: Vec<String> = sqlx::query_scalar(
        "SELECT value FROM resource_identifier WHERE id = 'obs-0' ORDER BY value",
    )
    .fetch_all(store.pool())
    .await
    .expect("identifiers");
    assert_eq!(identifiers, vec!["O0b".to_string()]);
}
