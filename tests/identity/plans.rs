//! The linker keeps finding candidates through the blocking indexes however much
//! `identity_patient` has grown since its connection first prepared the statements.

use serde_json::json;
use shcr::interactions::{EntryAction, EntryOutcome, EntryRequest, Error, Repository, WriteHook};
use shcr::store::{Author, Store, WriteTx};

use crate::common::TestDatabase;
use crate::support::ODS;

const TRUST: &str = "RBX01";
const GIVEN: [&str; 6] = ["Robert", "Alice", "Mohammed", "Grace", "Oliver", "Priya"];
const FAMILY: [&str; 6] = [
    "Thompson",
    "Okafor",
    "Kowalski",
    "Nguyen",
    "Fitzgerald",
    "Haddad",
];

/// Record `k`: its own birth date; names and postcodes repeat, as in any region.
fn record(k: usize) -> EntryRequest {
    let birth = time::macros::date!(1950 - 01 - 01) + time::Duration::days(k as i64 * 37);
    let resource = json!({
        "resourceType": "Patient",
        "name": [{"family": FAMILY[k % 6], "given": [GIVEN[(k / 6) % 6]]}],
        "gender": if k.is_multiple_of(2) { "male" } else { "female" },
        "birthDate": birth.to_string(),
        "address": [{"line": [format!("{k} High Street")], "postalCode": format!("LS{} {}AB", k % 30 + 1, k % 9 + 1)}],
        "managingOrganization": {"identifier": {"system": ODS, "value": TRUST}},
    });
    EntryRequest {
        resource_type: "Patient".into(),
        full_url: None,
        action: EntryAction::Create {
            resource,
            if_none_exist: None,
        },
    }
}

/// Sequential scans of `identity_patient` made by the write transaction so far.
#[derive(Default)]
struct ScanCount(Option<i64>);

impl WriteHook for ScanCount {
    async fn before_commit(
        &mut self,
        tx: &mut WriteTx,
        _outcomes: &[EntryOutcome],
    ) -> Result<(), Error> {
        let scans: i64 = sqlx::query_scalar(
            "SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relname = 'identity_patient'",
        )
        .fetch_one(tx.connection().await.expect("connection"))
        .await
        .expect("transaction statistics");
        self.0 = Some(scans);
        Ok(())
    }
}

#[tokio::test]
async fn candidates_come_from_the_indexes_after_the_table_has_grown() {
    let db = TestDatabase::create().await;
    // One connection: every unit reuses the statements the first units prepared on it.
    let store = Store::connect(&db.url, 1).await.expect("connect");
    store.migrate().await.expect("migrate");
    // Only new statistics replace a cached plan; autovacuum must not make this test pass by
    // analysing the table at the right moment.
    sqlx::query("ALTER TABLE identity_patient SET (autovacuum_enabled = false)")
        .execute(store.pool())
        .await
        .expect("autovacuum off");
    let repo = Repository::new(store.clone());
    let author = Author {
        kind: "system",
        id: "rbx01-pas".into(),
        org: Some(TRUST.into()),
        request_id: None,
    };
    // Eight units of 20 while the table is small: after five executions PostgreSQL compares
    // a generic plan (which assumes 10 records per unit, so it looks cheaper) with the custom
    // ones, and keeps it.
    for u in 0..8 {
        let unit: Vec<EntryRequest> = (u * 20..u * 20 + 20).map(record).collect();
        repo.execute_atomic(&unit, &author)
            .await
            .expect("unit written");
    }
    // The table as a region's records leave it: 30,000 more, none sharing a blocking key with
    // the next unit.
    sqlx::query(
        "INSERT INTO identity_patient (patient_id, person_id, org, family_code, name_key,
                                       birth_date, birth_year, postcode, demographics, grade,
                                       method)
         SELECT 'other-' || g, 'person-' || g, 'RX1', 'ZZ' || g, 'ZZ' || g || ' ZZ',
                date '1800-01-01' + g, 1800 + g / 366, 'ZZ' || g, '{}', 'founder', 'auto'
         FROM generate_series(1, 30000) AS g",
    )
    .execute(store.pool())
    .await
    .expect("other records");
    // The transaction statistics read below also hold what this backend did in the last
    // second but has not reported yet (PostgreSQL flushes them at most once a second): the
    // small units' scans. Have them reported now, so only the next unit counts.
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(store.pool())
        .await
        .expect("statistics flushed");

    let unit: Vec<EntryRequest> = (160..180).map(record).collect();
    let mut scans = ScanCount::default();
    repo.execute_with_hook(&unit, &author, false, &mut scans)
        .await
        .expect("unit written")
        .expect("not aborted");
    assert_eq!(
        scans.0,
        Some(0),
        "linking 20 records read the whole of identity_patient instead of its indexes"
    );
    let linked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM identity_patient WHERE org = $1 AND active")
            .bind(TRUST)
            .fetch_one(store.pool())
            .await
            .expect("count");
    assert_eq!(linked, 180);
    store.pool().close().await;
    drop(db);
}
