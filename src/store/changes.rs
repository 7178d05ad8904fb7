//! Reading the change feed in commit-safe order.
//!
//! Positions are `(txid, seq)`. A reader only sees rows of transactions older than the oldest
//! transaction still running, so every row that can still appear sorts after every position
//! already handed out: the feed has no gaps even when transactions commit out of order.

use std::collections::HashSet;

use sqlx::Row;
use time::OffsetDateTime;

use super::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FeedPosition {
    pub txid: i64,
    pub seq: i64,
}

impl FeedPosition {
    pub const START: FeedPosition = FeedPosition { txid: 0, seq: 0 };
}

/// While an older transaction holds the feed's horizon, a follower that acts on rows above it
/// reads the whole tail above its position at most this often, and in between only the rows
/// past the newest it acted on (`Store::poll_held_tail`).
pub const HELD_TAIL_RESCAN: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Change {
    pub position: FeedPosition,
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    /// create | update | delete
    pub operation: String,
    pub recorded_at: OffsetDateTime,
}

impl Store {
    /// Up to `limit` changes after `after`, in feed order.
    pub async fn changes_after(
        &self,
        after: FeedPosition,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        let rows = sqlx::query(
            // `c.`: the output column `txid` is a bigint, and ordering by it would sort the
            // whole tail of the feed instead of walking the index.
            "SELECT c.txid::text::bigint AS txid, c.seq, c.resource_type, c.id, c.version_id,
                    c.operation, c.recorded_at
             FROM change_feed c
             WHERE (c.txid, c.seq) > ($1::text::xid8, $2)
               AND c.txid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY c.txid, c.seq
             LIMIT $3",
        )
        .bind(after.txid.to_string())
        .bind(after.seq)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Change {
                    position: FeedPosition {
                        txid: r.try_get("txid")?,
                        seq: r.try_get("seq")?,
                    },
                    resource_type: r.try_get("resource_type")?,
                    id: r.try_get("id")?,
                    version_id: r.try_get("version_id")?,
                    operation: r.try_get("operation")?,
                    recorded_at: r.try_get("recorded_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Every transaction that committed before this call has a txid below the returned bound; a
    /// reader whose snapshot xmin has passed it has seen all of them.
    pub async fn feed_horizon(&self) -> Result<i64, StoreError> {
        let horizon: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                .fetch_one(&self.pool)
                .await?;
        Ok(horizon)
    }
}

/// One poll of the feed for a follower that must also see transactions committed above the
/// ordered prefix (see `Store::poll_feed`).
#[derive(Debug, Clone, Default)]
pub struct FeedPoll {
    /// Rows of transactions older than every running one: safe to advance a cursor over.
    pub ordered: Vec<Change>,
    /// Whether `ordered` stopped at the limit (more ordered rows wait).
    pub more: bool,
    /// Committed rows of transactions newer than the oldest running one. A cursor must not pass
    /// them (an older transaction may still commit below them), but a reader that wants every
    /// committed write now can apply them early.
    pub above: Vec<Change>,
}

fn change_from_row(r: &sqlx::postgres::PgRow) -> Result<Change, sqlx::Error> {
    Ok(Change {
        position: FeedPosition {
            txid: r.try_get("txid")?,
            seq: r.try_get("seq")?,
        },
        resource_type: r.try_get("resource_type")?,
        id: r.try_get("id")?,
        version_id: r.try_get("version_id")?,
        operation: r.try_get("operation")?,
        recorded_at: r.try_get("recorded_at")?,
    })
}

impl Store {
    /// Everything committed after `after`, split at the snapshot's xmin: the ordered prefix and
    /// the committed rows above it. One statement, so one snapshot answers both, and no write
    /// committed before the call is missing from the union. Rows come in `(txid, seq)` order, so
    /// every ordered row precedes every row above the xmin; `limit` bounds the whole answer.
    pub async fn poll_feed(&self, after: FeedPosition, limit: i64) -> Result<FeedPoll, StoreError> {
        let rows = sqlx::query(
            // `c.`: ordering by the bigint output column `txid` made PostgreSQL sort the
            // feed's tail (with a parallel worker, ~5 ms) on every poll; the index order is free.
            "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
             SELECT c.txid::text::bigint AS txid, c.seq, c.resource_type, c.id, c.version_id,
                    c.operation, c.recorded_at, c.txid < s.xmin AS settled
             FROM change_feed c, s
             WHERE (c.txid, c.seq) > ($1::text::xid8, $2)
             ORDER BY c.txid, c.seq
             LIMIT $3",
        )
        .bind(after.txid.to_string())
        .bind(after.seq)
        .bind(limit)
        .fetch_all(self.lookups_pool())
        .await?;
        let more = rows.len() as i64 >= limit;
        let mut poll = FeedPoll {
            more,
            ..FeedPoll::default()
        };
        for r in &rows {
            let settled: bool = r.try_get("settled")?;
            let change = change_from_row(r)?;
            if settled {
                poll.ordered.push(change);
            } else {
                poll.above.push(change);
            }
        }
        Ok(poll)
    }

    /// `poll_feed` for a follower that acts on rows above the xmin early and remembers them in
    /// `seen`: a full batch made only of such rows is read past. Its position cannot move over
    /// them (a transaction below them still runs), and without reading on, rows after the
    /// batch would wait for that transaction while the follower believes it has caught up. A
    /// settled row in a later batch means every row before it is settled too (rows come in
    /// txid order and the xmin only rises), and all of those were seen.
    pub async fn poll_feed_past(
        &self,
        after: FeedPosition,
        limit: i64,
        seen: &HashSet<FeedPosition>,
    ) -> Result<FeedPoll, StoreError> {
        let mut poll = self.poll_feed(after, limit).await?;
        while poll.more
            && poll.ordered.is_empty()
            && poll.above.iter().all(|c| seen.contains(&c.position))
            && let Some(last) = poll.above.last().map(|c| c.position)
        {
            poll = self.poll_feed(last, limit).await?;
        }
        Ok(poll)
    }

    /// The rows past `newest`, the newest row a follower acted on early, while the horizon is
    /// still below it: `None` once a settled row shows the horizon has passed it (read the
    /// tail whole then). Rows of transactions below `newest` that committed since the last
    /// whole read are not in the answer, so a follower reads the whole tail again now and
    /// then (`HELD_TAIL_RESCAN`); re-reading it on every poll cost the whole tail each time,
    /// and it grows for as long as the older transaction runs.
    pub async fn poll_held_tail(
        &self,
        newest: FeedPosition,
        limit: i64,
    ) -> Result<Option<FeedPoll>, StoreError> {
        let poll = self.poll_feed(newest, limit).await?;
        Ok(poll.ordered.is_empty().then_some(poll))
    }

    /// The position just before every transaction not yet older than all running ones: a full
    /// scan taken after this call, followed by the feed from here, misses nothing.
    pub async fn feed_restart_point(&self) -> Result<FeedPosition, StoreError> {
        let xmin: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                .fetch_one(&self.pool)
                .await?;
        Ok(FeedPosition {
            txid: xmin - 1,
            seq: i64::MAX,
        })
    }
}
