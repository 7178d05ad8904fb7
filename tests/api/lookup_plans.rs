//! Key lookups keep probing the primary key however much the tables have grown since their
//! connection first planned them on empty tables.

use std::time::{Duration, Instant};

use shcr::store::Store;

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
