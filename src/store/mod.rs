//! PostgreSQL, the system of record: resource versions, current heads, business identifiers and
//! the change feed. Only this module writes those tables.

mod changes;
mod history;
mod nodelay;
mod read;
mod write;

pub use changes::{Change, FeedPoll, FeedPosition, HELD_TAIL_RESCAN};
pub use history::{HistoryCursor, HistoryPage, HistoryQuery, HistoryScope};
pub use read::{Current, HeadState, Owner, VersionRow};
pub use write::{
    Head, IdentifierQuery, LockedHead, NewVersion, Operation, WriteTx, criteria_lock_keys,
};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

/// How often a feed consumer publishes its lag (`Store::record_consumer_lag`).
pub const CONSUMER_LAG_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Another transaction created or changed the same resource at the same moment.
    #[error("concurrent write to {0}")]
    Conflict(String),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A background writer (the audit group commit) stopped or failed the whole group.
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// Unique violations on version rows mean two writers raced for the same version.
    pub(crate) fn from_write(err: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
        if let sqlx::Error::Database(db) = &err
            && db.code().as_deref() == Some("23505")
        {
            return StoreError::Conflict(what());
        }
        StoreError::Database(err)
    }

    /// A deadlock between two transactions taking locks is a lost race: a conflict, which the
    /// write engine answers by retrying the unit.
    pub(crate) fn from_locking(err: sqlx::Error, what: &str) -> StoreError {
        if let sqlx::Error::Database(db) = &err
            && db.code().as_deref() == Some("40P01")
        {
            return StoreError::Conflict(format!("{what} (deadlock)"));
        }
        StoreError::Database(err)
    }
}

/// Who wrote a version: kept beside every version as its write provenance.
#[derive(Debug, Clone)]
pub struct Author {
    /// `system` (a trust's system) or `user` (a person).
    pub kind: &'static str,
    /// Client id or user id.
    pub id: String,
    /// ODS code of the trust / the user's organisation.
    pub org: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// Connections for key lookups on the request path (`lookups_pool`).
    lookups: PgPool,
}

/// Connections kept for key lookups: a search holds one for one short statement.
fn lookup_connections(max_connections: u32) -> u32 {
    (max_connections / 2).clamp(1, 16)
}

/// How long a `lookups_pool` connection, and with it the generic plans it made, is kept.
///
/// A generic plan is made from the tables' size at the time: on empty tables (a new database,
/// the first minutes of a region's load) `resource_version`'s `(resource_type, last_updated,
/// id, version_id)` index costs the same as its primary key for a `(type, id, version)` probe,
/// and the planner may keep it. On a large table it reads every version of the type for each
/// key: the indexer's head loads took 15 s per 2,000 keys at 1M resources. PostgreSQL only
/// replans a cached statement after `ANALYZE`, which autovacuum may not run; a new connection
/// plans from the tables' current size.
pub const LOOKUP_PLAN_LIFETIME: Duration = Duration::from_secs(60);

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        Store::connect_with(url, max_connections, LOOKUP_PLAN_LIFETIME).await
    }

    /// `connect`, with the lifetime of the lookups pool's connections (tests shorten it).
    pub async fn connect_with(
        url: &str,
        max_connections: u32,
        plan_lifetime: Duration,
    ) -> Result<Store, StoreError> {
        // Statements are prepared once per connection, and after five executions PostgreSQL
        // may keep a generic plan built from the statistics of that moment. Ours join small
        // parameter arrays (`unnest($1::text[], …)`) to tables; planned while a table was small
        // or its statistics stale, the generic plan is a hash join over a sequential scan, and
        // it stays while the table grows (the events bench spent most of PostgreSQL's CPU
        // hashing whole tables). A custom plan sees the array's length and uses the indexes;
        // planning these short statements costs far less than one such scan.
        let base: sqlx::postgres::PgConnectOptions = url.parse()?;
        // JIT compiles a statement whose estimated cost passes a threshold; ours are index
        // probes and short scans the estimate sometimes overprices (a large unnest, a stale
        // row count), and compiling then took longer than running them.
        let base = base.options([("jit", "off")]);
        let options = base
            .clone()
            .options([("plan_cache_mode", "force_custom_plan")]);
        // sqlx pings a connection when it goes back to the pool (a broken one is closed
        // there) and, by default, again before handing it out: a third round trip for every
        // statement, and a PostgreSQL wake-up. The ping on release is enough; a connection
        // that breaks while idle fails its next statement, which is answered as an error.
        let pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| Box::pin(nodelay::disable_nagle(conn)))
            .connect_with(options)
            .await?;
        // Planning a custom plan cost more than running the statement for search's key
        // lookups (a page's versions: 0.25 ms to plan, 0.17 ms to run; the feed poll 0.2 ms
        // against 0.02 ms), and every search makes them; so do reads (the version and its
        // patients' access facts), break-glass look-ups and the audit append. Their
        // connections plan each statement once, and may not use sequential scans, hash or
        // merge joins: a generic plan made while the tables were small is then still an index
        // probe per key on a large table, never a scan that grows with it; and connections
        // are replaced every `plan_lifetime`, so the index probed is the one that fits the
        // tables' current size (see `LOOKUP_PLAN_LIFETIME`).
        let lookups = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(lookup_connections(max_connections))
            .acquire_timeout(Duration::from_secs(10))
            .max_lifetime(plan_lifetime)
            .after_connect(|conn, _| Box::pin(nodelay::disable_nagle(conn)))
            .connect_lazy_with(base.options([
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_seqscan", "off"),
                ("enable_hashjoin", "off"),
                ("enable_mergejoin", "off"),
            ]));
        Ok(Store { pool, lookups })
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store {
            lookups: pool.clone(),
            pool,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// For statements that look rows up by key through an index whatever the tables' size
    /// (every plan an index probe per key): search's version and head loads, the feed poll,
    /// reads with their access facts, break-glass grants and the audit append. Anything that
    /// may need to scan belongs on `pool`.
    pub fn lookups_pool(&self) -> &PgPool {
        &self.lookups
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Publishes the pool's use to the metrics registry (called at scrape time).
    pub fn record_pool_metrics(&self) {
        crate::metrics::record_pool(&self.pool);
    }

    /// How long the first change after `after` (in feed order) has waited: zero when there is
    /// none. A feed consumer reports this as its lag (`metrics::record_feed_lag`). Measured from
    /// the writing transaction's start (`recorded_at`), so it exceeds the time since commit by
    /// that transaction's duration: milliseconds for a REST write. Rows still hidden behind an
    /// older running transaction count too: the consumer has not seen them.
    pub async fn feed_lag(&self, after: FeedPosition) -> Result<Duration, StoreError> {
        let seconds: Option<f64> = sqlx::query_scalar(
            "SELECT greatest(extract(epoch FROM clock_timestamp() - recorded_at), 0)::float8
             FROM change_feed
             WHERE (txid, seq) > ($1::text::xid8, $2)
             ORDER BY txid, seq
             LIMIT 1",
        )
        .bind(after.txid.to_string())
        .bind(after.seq)
        .fetch_optional(&self.pool)
        .await?;
        Ok(Duration::from_secs_f64(seconds.unwrap_or(0.0)))
    }

    /// Publishes a feed consumer's lag and position (`change_feed_lag_seconds`,
    /// `change_feed_position_txid`); consumers call it every `CONSUMER_LAG_EVERY`, not per batch.
    pub async fn record_consumer_lag(
        &self,
        consumer: &str,
        position: FeedPosition,
    ) -> Result<(), StoreError> {
        let lag = self.feed_lag(position).await?;
        crate::metrics::record_feed_lag(consumer, lag, position.txid);
        Ok(())
    }

    /// Ready when the database answers and every migration this binary knows is applied.
    pub async fn readiness(&self) -> Result<(), String> {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| format!("database unreachable: {e}"))?;
        match applied {
            Some(v) if v >= latest => Ok(()),
            Some(v) => Err(format!(
                "migrations pending: database at {v}, binary expects {latest}"
            )),
            None => Err("migrations not applied".into()),
        }
    }
}
