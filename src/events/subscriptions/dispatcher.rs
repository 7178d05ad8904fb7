//! Follows the change feed from a persisted cursor and turns changes into numbered
//! subscription events. One dispatcher works at a time across replicas (the cursor row is
//! locked with SKIP LOCKED); the cursor, the new events and the counters move in one
//! transaction, so a crash repeats a batch but never loses or doubles an event. Changes
//! committed above the feed's horizon while an older transaction holds it somewhere in the
//! cluster are numbered once it has stood still for `HELD_HORIZON`, and remembered until the
//! cursor passes them. Delivery workers are woken with NOTIFY once per batch.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{PgConnection, Row};
use tokio::sync::watch;

use crate::config::SubscriptionSettings;
use crate::events::catalogue::Catalogue;
use crate::store::{CONSUMER_LAG_EVERY, Change, FeedPosition, HELD_TAIL_RESCAN, Store};

use super::{Filter, PayloadPolicy, SERVER_AUTHOR_ID, parse_spec};

pub const EVENTS_CHANNEL: &str = "shcr_subscription_events";
const BATCH: i64 = 500;

struct Active {
    id: String,
    topic: String,
    filters: Vec<Filter>,
    start: FeedPosition,
    next_number: i64,
}

/// Rows above the feed's horizon are dispatched early only once the horizon has stood still this
/// long: under a steady load it moves as each group commits (tens to hundreds of milliseconds),
/// and waiting for it costs nothing, where remembering each early row costs a write and a delete.
const HELD_HORIZON: Duration = Duration::from_millis(500);

pub struct Dispatcher {
    store: Store,
    catalogue: Arc<Catalogue>,
    settings: SubscriptionSettings,
    policy: Arc<dyn PayloadPolicy>,
    /// The horizon (snapshot xmin) when the tail above the cursor was last read whole, and when.
    tail_read: Mutex<Option<(i64, Instant)>>,
    /// The horizon last seen, and since when it has stood there.
    horizon_since: Mutex<Option<(i64, Instant)>>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        catalogue: Arc<Catalogue>,
        settings: SubscriptionSettings,
        policy: Arc<dyn PayloadPolicy>,
    ) -> Dispatcher {
        Dispatcher {
            store,
            catalogue,
            settings,
            policy,
            tail_read: Mutex::new(None),
            horizon_since: Mutex::new(None),
        }
    }

    /// Polls the feed every `poll_interval_ms` (an index probe when idle). Writers do not
    /// NOTIFY: that would serialise their commits (see migration 0010).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let mut lag_recorded: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Drain. Rows above the horizon wait for it a little (`HELD_HORIZON`): look again
            // shortly, bounded so that shutdown is still seen.
            let mut waits = 0;
            loop {
                if lag_recorded.is_none_or(|at| at.elapsed() >= CONSUMER_LAG_EVERY) {
                    lag_recorded = Some(Instant::now());
                    if let Err(e) = self.record_lag().await {
                        tracing::debug!(error = %e, "feed lag not recorded");
                    }
                }
                match self.run_once().await {
                    Ok(Step::Moved) => continue,
                    Ok(Step::Waiting) if waits < 20 => {
                        waits += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Ok(Step::Waiting) | Ok(Step::Idle) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "subscription dispatcher failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = shutdown.changed() => break,
            }
        }
    }

    /// Publishes the lag of the shared cursor (whichever replica dispatches).
    async fn record_lag(&self) -> Result<(), crate::store::StoreError> {
        let cursor: Option<(i64, i64)> = sqlx::query_as(
            "SELECT txid, seq FROM subscription_cursor WHERE name = 'subscriptions'",
        )
        .fetch_optional(self.store.pool())
        .await?;
        if let Some((txid, seq)) = cursor {
            self.store
                .record_consumer_lag("subscriptions", FeedPosition { txid, seq })
                .await?;
        }
        Ok(())
    }

    /// One batch: read changes after the cursor, sync Subscription resources, number the
    /// matching events, advance the cursor.
    pub async fn run_once(&self) -> Result<Step, sqlx::Error> {
        let mut tx = self.store.pool().begin().await?;
        let cursor = sqlx::query(
            "SELECT txid, seq FROM subscription_cursor WHERE name = 'subscriptions'
             FOR UPDATE SKIP LOCKED",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(cursor) = cursor else {
            // Another replica is dispatching.
            return Ok(Step::Idle);
        };
        let cursor = FeedPosition {
            txid: cursor.try_get("txid")?,
            seq: cursor.try_get("seq")?,
        };
        // Rows above the feed's horizon (committed while an older transaction anywhere in the
        // cluster still runs) are dispatched once the horizon has stood still for
        // `HELD_HORIZON`, and remembered until the cursor passes them: waiting for the horizon
        // held every notification, handshakes included, for as long as the oldest writing
        // transaction in the cluster ran.
        let (horizon, newest_early): (i64, Option<FeedPosition>) = {
            let row = sqlx::query(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
                        e.txid, e.seq
                 FROM (SELECT 1) one
                 LEFT JOIN LATERAL (
                     SELECT txid, seq FROM subscription_dispatched_early
                     ORDER BY txid DESC, seq DESC LIMIT 1
                 ) e ON true",
            )
            .fetch_one(&mut *tx)
            .await?;
            let newest = match (
                row.try_get::<Option<i64>, _>("txid")?,
                row.try_get::<Option<i64>, _>("seq")?,
            ) {
                (Some(txid), Some(seq)) => Some(FeedPosition { txid, seq }),
                _ => None,
            };
            (row.try_get("horizon")?, newest)
        };
        // The same transaction still holds the horizon, and the tail was read whole lately:
        // only rows past the newest early one can be new, so read just those. Re-reading the
        // tail on every poll cost the whole tail each time (it grows while the transaction
        // runs); rows of transactions below the newest early one that commit meanwhile wait
        // for the next whole read, at most `HELD_TAIL_RESCAN` later.
        let recent = self
            .tail_read
            .lock()
            .expect("tail read")
            .is_some_and(|(h, at)| h == horizon && at.elapsed() < HELD_TAIL_RESCAN);
        let past_newest = match newest_early {
            Some(newest) if recent => self
                .store
                .poll_held_tail(newest, BATCH)
                .await
                .map_err(store_err)?
                .map(|poll| poll.above),
            _ => None,
        };
        let held = {
            let mut since = self.horizon_since.lock().expect("horizon since");
            match *since {
                Some((h, at)) if h == horizon => at.elapsed() >= HELD_HORIZON,
                _ => {
                    *since = Some((horizon, Instant::now()));
                    false
                }
            }
        };
        if newest_early.is_none() && !held {
            // The horizon moves (or just stopped): dispatch the ordered prefix only, as long
            // as nothing was dispatched early.
            let changes = self
                .store
                .changes_after(cursor, BATCH)
                .await
                .map_err(store_err)?;
            if changes.is_empty() {
                // Not `EXISTS (…)`: its generic plan scans the whole feed (~14 ms at 200k
                // rows, every 100 ms); the first row in index order is one index probe.
                let pending: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM change_feed WHERE (txid, seq) > ($1::text::xid8, $2)
                     ORDER BY txid, seq LIMIT 1",
                )
                .bind(cursor.txid.to_string())
                .bind(cursor.seq)
                .fetch_optional(&mut *tx)
                .await?;
                return Ok(if pending.is_some() {
                    Step::Waiting
                } else {
                    Step::Idle
                });
            }
            let next_cursor = changes.last().expect("not empty").position;
            return self
                .dispatch(tx, cursor, next_cursor, changes, Vec::new(), false)
                .await;
        }
        // The cursor stays where it is on the short read, so no early row is passed.
        let (changes, dispatched_early, next_cursor, delete_early) = match past_newest {
            Some(above) => {
                let positions: Vec<FeedPosition> = above.iter().map(|c| c.position).collect();
                (above, positions, cursor, false)
            }
            None => {
                let early: HashSet<FeedPosition> = sqlx::query_as::<_, (i64, i64)>(
                    "SELECT txid, seq FROM subscription_dispatched_early",
                )
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .map(|(txid, seq)| FeedPosition { txid, seq })
                .collect();
                let poll = self
                    .store
                    .poll_feed_past(cursor, BATCH, &early)
                    .await
                    .map_err(store_err)?;
                *self.tail_read.lock().expect("tail read") = Some((horizon, Instant::now()));
                let next_cursor = poll.ordered.last().map_or(cursor, |c| c.position);
                let dispatched_early: Vec<FeedPosition> = poll
                    .above
                    .iter()
                    .map(|c| c.position)
                    .filter(|p| !early.contains(p))
                    .collect();
                let changes: Vec<Change> = poll
                    .ordered
                    .into_iter()
                    .chain(poll.above)
                    .filter(|c| !early.contains(&c.position))
                    .collect();
                let delete_early = early.iter().any(|p| *p <= next_cursor);
                (changes, dispatched_early, next_cursor, delete_early)
            }
        };
        if changes.is_empty() && next_cursor == cursor {
            return Ok(Step::Idle);
        }
        self.dispatch(
            tx,
            cursor,
            next_cursor,
            changes,
            dispatched_early,
            delete_early,
        )
        .await
    }

    /// Syncs Subscription resources among `changes`, numbers the matching events, remembers
    /// `dispatched_early`, moves the cursor to `next_cursor` (dropping the early rows it
    /// passes when `delete_early`) and commits.
    async fn dispatch(
        &self,
        mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
        cursor: FeedPosition,
        next_cursor: FeedPosition,
        changes: Vec<Change>,
        dispatched_early: Vec<FeedPosition>,
        delete_early: bool,
    ) -> Result<Step, sqlx::Error> {
        for change in changes.iter().filter(|c| c.resource_type == "Subscription") {
            self.sync_subscription(&mut tx, change).await?;
        }
        // Events keep being numbered while a subscription is in error, so `$events` can serve
        // what it missed once the receiver is back.
        let mut active = load_active(&mut tx).await?;
        let mut new_events = 0usize;
        if !active.is_empty() {
            new_events = self.number_events(&mut tx, &changes, &mut active).await?;
        }
        if !dispatched_early.is_empty() {
            let txids: Vec<i64> = dispatched_early.iter().map(|p| p.txid).collect();
            let seqs: Vec<i64> = dispatched_early.iter().map(|p| p.seq).collect();
            sqlx::query(
                "INSERT INTO subscription_dispatched_early (txid, seq)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[])",
            )
            .bind(&txids)
            .bind(&seqs)
            .execute(&mut *tx)
            .await?;
        }
        if next_cursor != cursor {
            if delete_early {
                sqlx::query(
                    "DELETE FROM subscription_dispatched_early WHERE (txid, seq) <= ($1, $2)",
                )
                .bind(next_cursor.txid)
                .bind(next_cursor.seq)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE subscription_cursor SET txid = $1, seq = $2, updated_at = now()
                 WHERE name = 'subscriptions'",
            )
            .bind(next_cursor.txid)
            .bind(next_cursor.seq)
            .execute(&mut *tx)
            .await?;
        }
        if new_events > 0 {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(EVENTS_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Step::Moved)
    }

    async fn number_events(
        &self,
        tx: &mut PgConnection,
        changes: &[Change],
        active: &mut [Active],
    ) -> Result<usize, sqlx::Error> {
        // Which event produced each focus version (messages only).
        let keys: Vec<(String, String, i64)> = changes
            .iter()
            .map(|c| (c.resource_type.clone(), c.id.clone(), c.version_id))
            .collect();
        let types: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        let versions: Vec<i64> = keys.iter().map(|k| k.2).collect();
        let rows = sqlx::query(
            "SELECT e.resource_type, e.id, e.version_id, e.event_code
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(t, i, v)
             JOIN event_version e ON e.resource_type = k.t AND e.id = k.i AND e.version_id = k.v
             WHERE e.focus",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&versions)
        .fetch_all(&mut *tx)
        .await?;
        let mut event_codes: HashMap<(String, String, i64), String> = HashMap::new();
        for r in rows {
            event_codes.insert(
                (
                    r.try_get("resource_type")?,
                    r.try_get("id")?,
                    r.try_get("version_id")?,
                ),
                r.try_get("event_code")?,
            );
        }
        // Content only where a topic condition or a filter needs it.
        let topics: Vec<_> = {
            let mut urls: Vec<&str> = active.iter().map(|a| a.topic.as_str()).collect();
            urls.sort_unstable();
            urls.dedup();
            urls.into_iter()
                .filter_map(|u| self.catalogue.topic_by_url(u))
                .collect()
        };
        let any_filters = active.iter().any(|a| !a.filters.is_empty());
        let need: Vec<(String, String, i64)> = changes
            .iter()
            .filter(|c| c.operation != "delete")
            .filter(|c| any_filters || topics.iter().any(|t| t.needs_content(&c.resource_type)))
            .map(|c| (c.resource_type.clone(), c.id.clone(), c.version_id))
            .collect();
        let contents: HashMap<(String, String, i64), Value> = self
            .store
            .vread_many(&need)
            .await
            .map_err(store_err)?
            .into_iter()
            .filter_map(|v| {
                let content = serde_json::from_str(v.content.as_deref()?).ok()?;
                Some(((v.resource_type, v.id, v.version_id), content))
            })
            .collect();

        let mut sub_ids = Vec::new();
        let mut numbers = Vec::new();
        let mut e_types = Vec::new();
        let mut e_ids = Vec::new();
        let mut e_versions = Vec::new();
        let mut e_ops = Vec::new();
        let mut e_codes: Vec<Option<String>> = Vec::new();
        let mut e_txids = Vec::new();
        let mut e_seqs = Vec::new();
        let mut e_times = Vec::new();
        for change in changes {
            let key = (
                change.resource_type.clone(),
                change.id.clone(),
                change.version_id,
            );
            let code = event_codes.get(&key).map(String::as_str);
            let content = contents.get(&key);
            for sub in active.iter_mut() {
                if change.position <= sub.start {
                    continue;
                }
                let Some(topic) = self.catalogue.topic_by_url(&sub.topic) else {
                    continue;
                };
                if !topic.matches(code, &change.resource_type, &change.operation, content) {
                    continue;
                }
                if !sub
                    .filters
                    .iter()
                    .all(|f| f.matches(&change.resource_type, &change.id, content))
                {
                    continue;
                }
                sub.next_number += 1;
                sub_ids.push(sub.id.clone());
                numbers.push(sub.next_number);
                e_types.push(change.resource_type.clone());
                e_ids.push(change.id.clone());
                e_versions.push(change.version_id);
                e_ops.push(change.operation.clone());
                e_codes.push(code.map(str::to_string));
                e_txids.push(change.position.txid);
                e_seqs.push(change.position.seq);
                e_times.push(change.recorded_at);
            }
        }
        if sub_ids.is_empty() {
            return Ok(0);
        }
        sqlx::query(
            "INSERT INTO subscription_event (subscription_id, event_number, resource_type,
                 resource_id, version_id, operation, event_code, feed_txid, feed_seq, occurred_at)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
                                  $6::text[], $7::text[], $8::bigint[], $9::bigint[],
                                  $10::timestamptz[])",
        )
        .bind(&sub_ids)
        .bind(&numbers)
        .bind(&e_types)
        .bind(&e_ids)
        .bind(&e_versions)
        .bind(&e_ops)
        .bind(&e_codes)
        .bind(&e_txids)
        .bind(&e_seqs)
        .bind(&e_times)
        .execute(&mut *tx)
        .await?;
        Ok(sub_ids.len())
    }

    /// Brings `subscription_state` in line with a changed Subscription resource, unless it
    /// already holds a later version.
    async fn sync_subscription(
        &self,
        tx: &mut PgConnection,
        change: &Change,
    ) -> Result<(), sqlx::Error> {
        // The feed is in txid order, not version order: a transaction that took its xid
        // before another's (by writing another resource first) and then waited for that one's
        // lock on the Subscription commits the later version at the lower position. Applied
        // in feed order, the older version was applied last and its endpoint, filters and
        // status stood for good.
        let held: Option<i64> = sqlx::query_scalar(
            "SELECT version_id FROM subscription_state WHERE subscription_id = $1",
        )
        .bind(&change.id)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_some_and(|v| v >= change.version_id) {
            return Ok(());
        }
        if change.operation == "delete" {
            sqlx::query(
                "UPDATE subscription_state SET status = 'off', version_id = $2, updated_at = now()
                 WHERE subscription_id = $1",
            )
            .bind(&change.id)
            .bind(change.version_id)
            .execute(&mut *tx)
            .await?;
            return Ok(());
        }
        let Some((row, owner)) = self
            .store
            .vread_with_owner("Subscription", &change.id, change.version_id)
            .await
            .map_err(store_err)?
        else {
            return Ok(());
        };
        if owner.kind == "system" && owner.id == SERVER_AUTHOR_ID {
            // Our own status write-back: the client's subscription did not change.
            sqlx::query("UPDATE subscription_state SET version_id = $2 WHERE subscription_id = $1")
                .bind(&change.id)
                .bind(change.version_id)
                .execute(&mut *tx)
                .await?;
            return Ok(());
        }
        let content: Value = row
            .content
            .as_deref()
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or(Value::Null);
        let spec = parse_spec(
            &content,
            &owner,
            &self.catalogue,
            &self.settings,
            self.policy.as_ref(),
        );
        let (status, error, spec) = match spec {
            Ok(s) if s.requested_status == "off" => ("off", None, Some(s)),
            Ok(s) => ("requested", None, Some(s)),
            Err(e) => ("error", Some(e), None),
        };
        let (topic, channel, endpoint, headers, payload, filters, heartbeat) = match &spec {
            Some(s) => (
                s.topic.clone(),
                s.channel.as_str(),
                s.endpoint.clone(),
                serde_json::to_value(&s.headers).expect("json"),
                s.payload.as_str(),
                serde_json::to_value(&s.filters).expect("json"),
                s.heartbeat_seconds,
            ),
            None => (
                content
                    .get("criteria")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                "rest-hook",
                String::new(),
                Value::Array(vec![]),
                "id-only",
                Value::Array(vec![]),
                None,
            ),
        };
        match held {
            None => {
                sqlx::query(
                    "INSERT INTO subscription_state (subscription_id, version_id, topic, status,
                         channel, endpoint, headers, payload, filters, heartbeat_seconds,
                         owner_kind, owner_id, owner_org, start_txid, start_seq, last_error)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
                )
                .bind(&change.id)
                .bind(change.version_id)
                .bind(&topic)
                .bind(status)
                .bind(channel)
                .bind(&endpoint)
                .bind(&headers)
                .bind(payload)
                .bind(&filters)
                .bind(heartbeat)
                .bind(&owner.kind)
                .bind(&owner.id)
                .bind(&owner.org)
                .bind(change.position.txid)
                .bind(change.position.seq)
                .bind(&error)
                .execute(&mut *tx)
                .await?;
            }
            Some(_) => {
                // A client update restarts delivery from a handshake; the event numbering and
                // the undelivered tail carry on, so no notification is lost by editing.
                sqlx::query(
                    "UPDATE subscription_state SET version_id = $2, topic = $3, status = $4,
                         channel = $5, endpoint = $6, headers = $7, payload = $8, filters = $9,
                         heartbeat_seconds = $10, owner_kind = $11, owner_id = $12,
                         owner_org = $13, last_error = $14, failures = 0,
                         handshake_done = false, next_attempt_at = now(), updated_at = now()
                     WHERE subscription_id = $1",
                )
                .bind(&change.id)
                .bind(change.version_id)
                .bind(&topic)
                .bind(status)
                .bind(channel)
                .bind(&endpoint)
                .bind(&headers)
                .bind(payload)
                .bind(&filters)
                .bind(heartbeat)
                .bind(&owner.kind)
                .bind(&owner.id)
                .bind(&owner.org)
                .bind(&error)
                .execute(&mut *tx)
                .await?;
            }
        }
        if let Some(e) = &error {
            tracing::info!(subscription = %change.id, reason = %e, "subscription refused");
        }
        Ok(())
    }
}

pub enum Step {
    /// Changes were consumed or the cursor moved; there may be more.
    Moved,
    /// Committed rows wait above the horizon, not yet dispatched (see `HELD_HORIZON`).
    Waiting,
    Idle,
}

async fn load_active(tx: &mut PgConnection) -> Result<Vec<Active>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT s.subscription_id, s.topic, s.filters, s.start_txid, s.start_seq,
                COALESCE((SELECT max(e.event_number) FROM subscription_event e
                          WHERE e.subscription_id = s.subscription_id), 0) AS events_since_start
         FROM subscription_state s WHERE s.status IN ('requested', 'active', 'error')
         ORDER BY s.subscription_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Active {
                id: r.try_get("subscription_id")?,
                topic: r.try_get("topic")?,
                filters: serde_json::from_value(r.try_get("filters")?).unwrap_or_default(),
                start: FeedPosition {
                    txid: r.try_get("start_txid")?,
                    seq: r.try_get("start_seq")?,
                },
                next_number: r.try_get("events_since_start")?,
            })
        })
        .collect()
}

fn store_err(e: crate::store::StoreError) -> sqlx::Error {
    match e {
        crate::store::StoreError::Database(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}
