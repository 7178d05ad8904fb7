//! A linker reads and scores its candidates before it takes its blocking-key locks. What the
//! linker it then waits for commits in the meantime must still be among its candidates: it is
//! read again, under the locks, as a row written since the prefetch. Units that share no
//! blocking key but join one Person are ordered by its head: the second reads the members the
//! first added.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shcr::interactions::{EntryAction, EntryOutcome, EntryRequest, Error, Repository, WriteHook};
use shcr::store::{Author, Store, WriteTx};
use tokio::sync::{Notify, oneshot};

use crate::common::TestDatabase;
use crate::support::*;

/// Keeps its unit open after linking, its blocking-key locks held, until released.
struct HoldBeforeCommit {
    linked: Option<oneshot::Sender<()>>,
    release: Arc<Notify>,
}

impl WriteHook for HoldBeforeCommit {
    async fn before_commit(
        &mut self,
        _tx: &mut WriteTx,
        _outcomes: &[EntryOutcome],
    ) -> Result<(), Error> {
        if let Some(linked) = self.linked.take() {
            let _ = linked.send(());
        }
        self.release.notified().await;
        Ok(())
    }
}

fn create(resource: Value) -> EntryRequest {
    EntryRequest {
        resource_type: "Patient".into(),
        full_url: None,
        action: EntryAction::Create {
            resource,
            if_none_exist: None,
        },
    }
}

fn trust(ods: &str) -> Author {
    Author {
        kind: "system",
        id: format!("{}-pas", ods.to_lowercase()),
        org: Some(ods.into()),
        request_id: None,
    }
}

/// Lock requests of this test's database still waiting: on blocking keys (advisory locks) and
/// on rows (a transaction or tuple lock). `pg_locks` is the server's, so other tests' waits
/// running beside this one are left out.
struct Waits {
    keys: i64,
    rows: i64,
}

async fn waits(store: &Store) -> Waits {
    let (keys, rows): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE locktype = 'advisory'),
                count(*) FILTER (WHERE locktype IN ('transactionid', 'tuple'))
         FROM pg_locks WHERE NOT granted
           AND pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())",
    )
    .fetch_one(store.pool())
    .await
    .expect("locks");
    Waits { keys, rows }
}

async fn person(store: &Store, patient_id: &str) -> String {
    sqlx::query_scalar("SELECT person_id FROM identity_patient WHERE patient_id = $1")
        .bind(patient_id)
        .fetch_one(store.pool())
        .await
        .expect("linked")
}

#[tokio::test]
async fn a_linker_sees_what_committed_while_it_waited_for_its_locks() {
    let db = TestDatabase::create().await;
    let store = Store::connect(&db.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let repo = Repository::new(store.clone());
    let number = nhs(943_476_500);
    let first = patient("RX1", Some((&number, "01")), &ROBERT);
    let second = patient("RX2", Some((&number, "01")), &ROBERT);

    // RX1's record is linked and its unit holds the locks, not yet committed.
    let (linked, is_linked) = oneshot::channel();
    let release = Arc::new(Notify::new());
    let mut hold = HoldBeforeCommit {
        linked: Some(linked),
        release: release.clone(),
    };
    let held = {
        let repo = repo.clone();
        tokio::spawn(async move {
            repo.execute_with_hook(&[create(first)], &trust("RX1"), false, &mut hold)
                .await
                .expect("RX1 written")
                .expect("not aborted")
        })
    };
    is_linked.await.expect("RX1 linked");

    // RX2's record of the same person: its prefetch cannot see RX1's uncommitted record, then
    // it waits for the locks RX1's unit holds.
    let waiting = {
        let repo = repo.clone();
        tokio::spawn(async move {
            repo.execute_atomic(&[create(second)], &trust("RX2"))
                .await
                .expect("RX2 written")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while waits(&store).await.keys == 0 {
        assert!(
            Instant::now() < deadline,
            "RX2's unit never waited for RX1's locks"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.notify_one();

    let a = held.await.expect("RX1 task")[0].id.clone().expect("id");
    let b = waiting.await.expect("RX2 task")[0].id.clone().expect("id");
    assert_eq!(
        person(&store, &a).await,
        person(&store, &b).await,
        "the record committed while RX2 waited is one of its candidates"
    );
    store.pool().close().await;
    drop(db);
}

/// Someone else entirely, sharing no blocking value with `ROBERT` (names, birth date, swapped
/// birth date, postcode, address line all differ).
const CHIOMA: Demo = Demo {
    family: "Okafor",
    given: "Chioma",
    birth: "1985-11-23",
    gender: "female",
    postcode: "M14 2CD",
    line: "40 High Street",
};

/// The Person resource as last written: the patients its links name.
async fn person_links(store: &Store, person_id: &str) -> Vec<String> {
    let content: Value = sqlx::query_scalar(
        "SELECT v.content FROM resource_head h
         JOIN resource_version v USING (resource_type, id, version_id)
         WHERE h.resource_type = 'Person' AND h.id = $1",
    )
    .bind(person_id)
    .fetch_one(store.pool())
    .await
    .expect("Person written");
    let mut links: Vec<String> = content["link"]
        .as_array()
        .expect("links")
        .iter()
        .map(|l| {
            l["target"]["reference"]
                .as_str()
                .expect("reference")
                .trim_start_matches("Patient/")
                .to_string()
        })
        .collect();
    links.sort();
    links
}

#[tokio::test]
async fn a_person_rewritten_while_a_linker_waited_for_it_keeps_both_units_records() {
    let db = TestDatabase::create().await;
    let store = Store::connect(&db.url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let repo = Repository::new(store.clone());
    // One person known to two trusts under one verified NHS number, with demographics that
    // share nothing (a change of name and address the trusts never reconciled).
    let number = nhs(943_476_600);
    let mut members = Vec::new();
    for (ods, d) in [("RX1", &ROBERT), ("RX2", &CHIOMA)] {
        let written = repo
            .execute_atomic(
                &[create(patient(ods, Some((&number, "01")), d))],
                &trust(ods),
            )
            .await
            .expect("member written");
        members.push(written[0].id.clone().expect("id"));
    }
    let p = person(&store, &members[0]).await;
    assert_eq!(person(&store, &members[1]).await, p, "one person");

    // RX3's record matches the first member only, RX4's the second only: the two units share
    // no blocking key, so nothing but the Person's head orders them. RX3's unit holds it.
    let (linked, is_linked) = oneshot::channel();
    let release = Arc::new(Notify::new());
    let mut hold = HoldBeforeCommit {
        linked: Some(linked),
        release: release.clone(),
    };
    let held = {
        let repo = repo.clone();
        let record = patient("RX3", None, &ROBERT);
        tokio::spawn(async move {
            repo.execute_with_hook(&[create(record)], &trust("RX3"), false, &mut hold)
                .await
                .expect("RX3 written")
                .expect("not aborted")
        })
    };
    is_linked.await.expect("RX3 linked");
    let waiting = {
        let repo = repo.clone();
        let record = patient("RX4", None, &CHIOMA);
        tokio::spawn(async move {
            repo.execute_atomic(&[create(record)], &trust("RX4"))
                .await
                .expect("RX4 written")
        })
    };
    // RX4's unit waits for the Person's head (a row lock: its transaction id), not for a
    // blocking key. (`pg_locks` is the server's: only this test's database counts.)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = waits(&store).await;
        assert_eq!(now.keys, 0, "the two units share no blocking key");
        if now.rows > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RX4's unit never waited for the Person RX3's unit holds"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.notify_one();

    let third = held.await.expect("RX3 task")[0].id.clone().expect("id");
    let fourth = waiting.await.expect("RX4 task")[0].id.clone().expect("id");
    assert_eq!(person(&store, &third).await, p);
    assert_eq!(person(&store, &fourth).await, p);
    let mut all = vec![members[0].clone(), members[1].clone(), third, fourth];
    all.sort();
    assert_eq!(
        person_links(&store, &p).await,
        all,
        "the Person written last lists the record the unit before it added"
    );
    store.pool().close().await;
    drop(db);
}
