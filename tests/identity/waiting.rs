//! A linker reads and scores its candidates before it takes its blocking-key locks. What the
//! linker it then waits for commits in the meantime must still be among its candidates: it is
//! read again, under the locks, as a row written since the prefetch.

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
    loop {
        let waiters: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(store.pool())
        .await
        .expect("locks");
        if waiters > 0 {
            break;
        }
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
