//! One write transaction: lock what is being changed, answer conditional look-ups, then write
//! every new version, its head, its identifiers and its change-feed row together.

use std::collections::{HashMap, HashSet};

use sqlx::{Postgres, Row, Transaction};
use time::OffsetDateTime;

use super::{Author, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// The current state of a resource, read under a row lock.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    pub version_id: i64,
    pub deleted: bool,
    pub last_updated: OffsetDateTime,
}

/// A head as `lock_heads` returns it: with the organisation that wrote the current version,
/// so a trust's write can be refused another trust's resource without a second statement.
#[derive(Debug, Clone)]
pub struct LockedHead {
    pub head: Head,
    pub author_org: Option<String>,
    /// `interactions::prepare::content_hash` of the current version (`None`: deleted, or
    /// written before the digest was kept).
    pub content_hash: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct NewVersion {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated: OffsetDateTime,
    pub operation: Operation,
    /// HTTP method recorded in history (POST, PUT, DELETE).
    pub method: &'static str,
    /// Serialised resource; `None` for a deletion. Shared: a unit's versions are handed to the
    /// deferred write, its outcomes and its identity links, and copying each resource's text
    /// for each was a measurable share of the consumer's CPU.
    pub content: Option<std::sync::Arc<str>>,
    /// `(system, value)` business identifiers of the new version (empty for deletions).
    pub identifiers: Vec<(String, String)>,
    /// The version's patient-compartment references and the key of the extraction that found
    /// them (`search::index::compartment_candidates`, `compartment_key`); `None`: not computed.
    pub compartment: Option<(i64, Vec<String>)>,
    /// `interactions::prepare::content_hash` of `content`, kept on the head so that an update
    /// re-sending the current content can be recognised; `None` where no one compares it.
    pub content_hash: Option<Vec<u8>>,
}

/// `identifier` token search as conditional operations use it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentifierQuery {
    pub resource_type: String,
    /// `None`: any system; `Some("")`: identifiers without a system.
    pub system: Option<String>,
    /// `None`: any value in the system (`system|`).
    pub value: Option<String>,
}

pub struct WriteTx {
    tx: Transaction<'static, Postgres>,
    /// Advisory keys this transaction took outside any savepoint (`lock_for_transaction`):
    /// held until it ends, so taking them again needs no round trip.
    held: HashSet<i64>,
    /// Versions `write_deferred` took and no statement has sent yet.
    deferred: Deferred,
    /// Begun by `begin_group_write`: statements run with generic plans.
    generic: bool,
}

/// Versions waiting to be written: sent in one statement before the transaction's next
/// statement, whatever that statement is, so nothing run in the transaction can tell they
/// were held back.
#[derive(Default)]
struct Deferred {
    parts: Vec<(Vec<NewVersion>, Author)>,
    /// `(type, id)` of every version in `parts`: a statement changes a head once.
    resources: HashSet<(String, String)>,
}

/// A group transaction's planner settings (`Store::begin_group_write`): generic plans, the
/// planner restricted to index probes as on the lookups pool (`Store::connect_with`), until the
/// transaction ends. A macro, so that `BEGIN_GROUP_WRITE` carries them in the `BEGIN`'s round
/// trip and `WriteTx::generic_plans` restores them from the same text.
macro_rules! generic_plans {
    () => {
        "SET LOCAL plan_cache_mode = force_generic_plan; \
         SET LOCAL enable_seqscan = off; \
         SET LOCAL enable_hashjoin = off; \
         SET LOCAL enable_mergejoin = off"
    };
}

const BEGIN_GROUP_WRITE: &str = concat!("BEGIN; ", generic_plans!());

impl Store {
    pub async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        Ok(WriteTx::new(self.pool.begin().await?, false))
    }

    /// As `begin_write`, for a group of units (`Repository::execute_group`): each statement
    /// is planned once per connection instead of at every execution.
    ///
    /// The write pool plans every statement anew with its parameters (`force_custom_plan`),
    /// and a custom plan copies the parameters into the plan: for a group's statements, whose
    /// parameters are arrays of every unit's rows (the versions statement carries every
    /// resource's content), planning cost 0.1–0.5 ms per statement, ~10 % of PostgreSQL's CPU
    /// per inbound message in the events bench. Every statement of a group is a fixed shape
    /// over parameter arrays: inserts from `unnest`, and reads and deletes that probe a key
    /// per array element; its generic plan needs no parameter value. What a custom plan
    /// protected against — a generic plan made while a table was small or without statistics,
    /// a hash join over a sequential scan kept while the table grows — is ruled out as on the
    /// lookups pool: sequential scans, hash and merge joins are off for the transaction, so
    /// each plan is an index probe per key whatever the tables' size when it was made (an
    /// index may still be read whole where a join would probe it: such a statement is
    /// written as a per-key probe, or run under `WriteTx::custom_plans`).
    pub async fn begin_group_write(&self) -> Result<WriteTx, StoreError> {
        Ok(WriteTx::new(
            self.pool.begin_with(BEGIN_GROUP_WRITE).await?,
            true,
        ))
    }
}

/// Stable 64-bit key for advisory locks (FNV-1a; stable across processes and releases, unlike
/// the std hasher).
fn lock_key(parts: &[&str]) -> i64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    hash as i64
}

/// The advisory lock keys `lock_criteria` takes for these queries.
pub fn criteria_lock_keys(criteria: &[IdentifierQuery]) -> Vec<i64> {
    criteria
        .iter()
        .map(|c| {
            lock_key(&[
                &c.resource_type,
                c.system.as_deref().unwrap_or("\u{1}"),
                c.value.as_deref().unwrap_or("\u{1}"),
            ])
        })
        .collect()
}

impl WriteTx {
    fn new(tx: Transaction<'static, Postgres>, generic: bool) -> WriteTx {
        WriteTx {
            tx,
            held: HashSet::new(),
            deferred: Deferred::default(),
            generic,
        }
    }

    /// Serialises conditional operations on the same criteria across concurrent transactions,
    /// so two `If-None-Exist` creates with one identifier cannot both create.
    pub async fn lock_criteria(&mut self, criteria: &[IdentifierQuery]) -> Result<(), StoreError> {
        self.lock_advisory(criteria_lock_keys(criteria)).await
    }

    /// Takes transaction-scoped advisory locks on `keys`, in ascending order: a fixed order
    /// prevents deadlocks between transactions locking overlapping sets in one statement.
    /// Re-taking a key this transaction holds is free, so a caller may lock a superset first.
    pub async fn lock_advisory(&mut self, mut keys: Vec<i64>) -> Result<(), StoreError> {
        keys.retain(|k| !self.held.contains(k));
        if keys.is_empty() {
            return Ok(());
        }
        keys.sort_unstable();
        keys.dedup();
        sqlx::query("SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k")
            .bind(&keys)
            .execute(self.connection().await?)
            .await
            .map_err(|e| StoreError::from_locking(e, "advisory locks"))?;
        Ok(())
    }

    /// As `lock_advisory`, for keys taken before any savepoint (a group of units takes every
    /// unit's keys first): they are held until the transaction ends — rolling back to a later
    /// savepoint does not release them — so later `lock_advisory` calls skip them.
    pub async fn lock_for_transaction(&mut self, keys: Vec<i64>) -> Result<(), StoreError> {
        let taken = keys.clone();
        self.lock_advisory(keys).await?;
        self.held.extend(taken);
        Ok(())
    }

    /// Whether `lock_for_transaction` took `key`.
    pub fn holds(&self, key: i64) -> bool {
        self.held.contains(&key)
    }

    /// Ids of current, non-deleted resources matching each query (same order as `queries`),
    /// each list sorted and without repeats.
    pub async fn find_by_identifier(
        &mut self,
        queries: &[IdentifierQuery],
    ) -> Result<Vec<Vec<String>>, StoreError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let types: Vec<&str> = queries.iter().map(|q| q.resource_type.as_str()).collect();
        let systems: Vec<Option<&str>> = queries.iter().map(|q| q.system.as_deref()).collect();
        let values: Vec<Option<&str>> = queries.iter().map(|q| q.value.as_deref()).collect();
        // One index probe per query, in one of two shapes: by value (the usual case, on the
        // value index) and by system alone (`system|`, on the system index); the shape not
        // taken is cut off by its one-time filter. A join with the query list was planned,
        // before `resource_identifier` had statistics (a new database, autovacuum off) and
        // while it held some tens of thousands of rows, as a hash join over a sequential scan
        // of the whole table (the events bench's groups of 160 queries: 2.4–7 ms at 17,000–
        // 29,000 rows, against 0.5–0.9 ms probing; also after `ANALYZE` at 29,000 rows); the
        // lateral subquery, kept apart by `OFFSET 0`, is never flattened into a join. No
        // `DISTINCT` or `ORDER BY` here: the planner prices the system shape at thousands of
        // rows per query, and sorting and deduplicating the few rows found is done below.
        let rows = sqlx::query(
            "SELECT q.ord, ri.id
             FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS q(t, s, v, ord)
             CROSS JOIN LATERAL (
                 SELECT ri.id FROM resource_identifier ri
                 WHERE q.v IS NOT NULL AND ri.resource_type = q.t AND ri.value = q.v
                   AND (q.s IS NULL OR ri.system = q.s)
                 UNION ALL
                 SELECT ri.id FROM resource_identifier ri
                 WHERE q.v IS NULL AND ri.resource_type = q.t AND ri.system = q.s
                 OFFSET 0
             ) ri",
        )
        .bind(&types)
        .bind(&systems)
        .bind(&values)
        .fetch_all(self.connection().await?)
        .await?;
        let mut out: Vec<Vec<String>> = vec![Vec::new(); queries.len()];
        for row in rows {
            let ord: i64 = row.try_get("ord")?;
            out[(ord - 1) as usize].push(row.try_get("id")?);
        }
        // A resource matches a query once however many of its identifiers do (one value under
        // two systems for a query without a system; several values in the queried system).
        for ids in &mut out {
            ids.sort_unstable();
            ids.dedup();
        }
        Ok(out)
    }

    /// Locks the heads of resources about to change and returns those that exist.
    pub async fn lock_heads(
        &mut self,
        keys: &[(String, String)],
    ) -> Result<HashMap<(String, String), LockedHead>, StoreError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let mut sorted: Vec<&(String, String)> = keys.iter().collect();
        sorted.sort();
        sorted.dedup();
        let types: Vec<&str> = sorted.iter().map(|k| k.0.as_str()).collect();
        let ids: Vec<&str> = sorted.iter().map(|k| k.1.as_str()).collect();
        // One index probe per key, locked in the order of the sorted keys (the order every
        // head locker uses, so two writers cannot wait on each other's heads). A join with
        // the key list may be planned, before `resource_head` has statistics (a new database,
        // autovacuum behind), as a hash join reading every head of the type (seen for the
        // Person heads of identity's links statement); the locking subquery is never
        // flattened into one. On a 20,000-record bench database the probe form took 0.4 ms
        // for 100 keys, the join 1.6 ms.
        let rows = sqlx::query(
            "SELECT k.t AS resource_type, k.i AS id, h.version_id, h.deleted, h.last_updated,
                    h.author_org, h.content_hash
             FROM unnest($1::text[], $2::text[]) AS k(t, i)
             CROSS JOIN LATERAL (
                 SELECT version_id, deleted, last_updated, author_org, content_hash
                 FROM resource_head
                 WHERE resource_type = k.t AND id = k.i FOR UPDATE
             ) h",
        )
        .bind(&types)
        .bind(&ids)
        .fetch_all(self.connection().await?)
        .await?;
        let mut heads = HashMap::with_capacity(rows.len());
        for row in rows {
            heads.insert(
                (row.try_get("resource_type")?, row.try_get("id")?),
                LockedHead {
                    head: Head {
                        version_id: row.try_get("version_id")?,
                        deleted: row.try_get("deleted")?,
                        last_updated: row.try_get("last_updated")?,
                    },
                    author_org: row.try_get("author_org")?,
                    content_hash: row.try_get("content_hash")?,
                },
            );
        }
        Ok(heads)
    }

    /// Which of the given ids exist (current and not deleted).
    pub async fn existing_ids(
        &mut self,
        resource_type: &str,
        ids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM resource_head WHERE resource_type = $1 AND id = ANY($2) AND NOT deleted
             ORDER BY id",
        )
        .bind(resource_type)
        .bind(ids)
        .fetch_all(self.connection().await?)
        .await?;
        Ok(rows)
    }

    /// Writes every version with its head, identifiers and change-feed row.
    pub async fn write(
        &mut self,
        versions: &[NewVersion],
        author: &Author,
    ) -> Result<(), StoreError> {
        self.write_parts(&[(versions, author)]).await
    }

    /// As `write`, for versions of several authors in one statement (a group's units, each
    /// with its own request id). No resource may appear twice: a head is changed once per
    /// statement.
    pub async fn write_parts(
        &mut self,
        parts: &[(&[NewVersion], &Author)],
    ) -> Result<(), StoreError> {
        self.flush().await?;
        self.send(parts).await
    }

    /// As `write`, but the versions go out with the next statement of the transaction (in
    /// one statement with every other version deferred since the last), or at the commit:
    /// a group of units whose steps between their writes need no statement writes all their
    /// versions in one. Whatever this transaction runs next sees them, as if written now; a
    /// failure to write them is that later statement's (or the commit's) failure. No
    /// resource of `versions` may appear twice in them; one already waiting sends what waits
    /// first (a statement changes a head once).
    pub async fn write_deferred(
        &mut self,
        versions: Vec<NewVersion>,
        author: &Author,
    ) -> Result<(), StoreError> {
        if versions.is_empty() {
            return Ok(());
        }
        if versions.iter().any(|v| {
            self.deferred
                .resources
                .contains(&(v.resource_type.clone(), v.id.clone()))
        }) {
            self.flush().await?;
        }
        self.deferred.resources.extend(
            versions
                .iter()
                .map(|v| (v.resource_type.clone(), v.id.clone())),
        );
        self.deferred.parts.push((versions, author.clone()));
        Ok(())
    }

    /// Sends the deferred versions, if any.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        if self.deferred.parts.is_empty() {
            return Ok(());
        }
        let Deferred { parts, .. } = std::mem::take(&mut self.deferred);
        let parts: Vec<(&[NewVersion], &Author)> =
            parts.iter().map(|(v, a)| (v.as_slice(), a)).collect();
        self.send(&parts).await
    }

    /// The version write statement itself.
    #[tracing::instrument(skip_all, fields(parts = parts.len()))]
    async fn send(&mut self, parts: &[(&[NewVersion], &Author)]) -> Result<(), StoreError> {
        let n: usize = parts.iter().map(|(v, _)| v.len()).sum();
        if n == 0 {
            return Ok(());
        }
        let versions = || parts.iter().flat_map(|(v, _)| v.iter());
        let mut kinds = Vec::with_capacity(n);
        let mut authors = Vec::with_capacity(n);
        let mut orgs = Vec::with_capacity(n);
        let mut requests = Vec::with_capacity(n);
        for (vs, a) in parts {
            for _ in vs.iter() {
                kinds.push(a.kind);
                authors.push(a.id.as_str());
                orgs.push(a.org.as_deref());
                requests.push(a.request_id.as_deref());
            }
        }
        let mut types = Vec::with_capacity(n);
        let mut ids = Vec::with_capacity(n);
        let mut vids = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut deleted = Vec::with_capacity(n);
        let mut methods = Vec::with_capacity(n);
        let mut contents = Vec::with_capacity(n);
        let mut ops = Vec::with_capacity(n);
        let mut compartments: Vec<Option<String>> = Vec::with_capacity(n);
        let mut compartment_keys: Vec<Option<i64>> = Vec::with_capacity(n);
        let mut hashes: Vec<Option<&[u8]>> = Vec::with_capacity(n);
        // Identifiers of replaced resources (some may already be held: `ON CONFLICT`) and of
        // first versions (none can be: see below), each resource's once.
        let (mut it, mut ii, mut is, mut iv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut nt, mut ni, mut ns, mut nv) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut seen: HashSet<(&str, &str)> = HashSet::new();
        for v in versions() {
            types.push(v.resource_type.as_str());
            ids.push(v.id.as_str());
            vids.push(v.version_id);
            times.push(v.last_updated);
            deleted.push(v.operation == Operation::Delete);
            methods.push(v.method);
            contents.push(v.content.as_deref());
            ops.push(v.operation.as_str());
            compartments.push(v.compartment.as_ref().map(|(_, c)| text_array(c)));
            compartment_keys.push(v.compartment.as_ref().map(|(k, _)| *k));
            hashes.push(v.content_hash.as_deref());
            seen.clear();
            for (system, value) in &v.identifiers {
                if !seen.insert((system.as_str(), value.as_str())) {
                    continue;
                }
                let (t, i, s, val) = if v.version_id > 1 {
                    (&mut it, &mut ii, &mut is, &mut iv)
                } else {
                    (&mut nt, &mut ni, &mut ns, &mut nv)
                };
                t.push(v.resource_type.as_str());
                i.push(v.id.as_str());
                s.push(system.as_str());
                val.push(value.as_str());
            }
        }

        // Identifiers follow the current version: of a replaced resource, those its new
        // version no longer carries are dropped and the new ones added (kept ones stay).
        let replaced: Vec<usize> = (0..n).filter(|&k| vids[k] > 1).collect();
        let rt: Vec<&str> = replaced.iter().map(|&k| types[k]).collect();
        let ri: Vec<&str> = replaced.iter().map(|&k| ids[k]).collect();

        // One statement, one round trip: the version, its head, its identifiers and its
        // change-feed row (a write used to be five). The parts touch different tables, except
        // the identifiers: the delete takes only rows the insert does not add, so the order in
        // which PostgreSQL runs them cannot matter.
        //
        // A first version (`version_id` 1) has no head and no identifier rows: both exist
        // only for a resource with a version, and its version 1 would then already exist, so
        // the `resource_version` insert would fail on its primary key whatever the others
        // did. Its head and identifiers are therefore inserted without `ON CONFLICT`, which
        // probes the unique index before every row and logs a confirmation record after it
        // (most of what a message writes is new); a replaced resource's keep it.
        sqlx::query(
            "WITH versions AS (
                 INSERT INTO resource_version
                   (resource_type, id, version_id, last_updated, deleted, method, content,
                    author_kind, author_id, author_org, request_id, compartment, compartment_key)
                 SELECT t, i, v, lu, d, m, c::jsonb, ak, ai, ao, rq, pc::text[], pk
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[],
                             $5::bool[], $6::text[], $7::text[], $8::text[], $9::text[],
                             $10::text[], $11::text[], $19::text[], $20::bigint[])
                      AS x(t, i, v, lu, d, m, c, ak, ai, ao, rq, pc, pk)
             ), first_heads AS (
                 INSERT INTO resource_head
                   (resource_type, id, version_id, last_updated, deleted, author_org,
                    content_hash)
                 SELECT t, i, v, lu, d, ao, h
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bool[],
                             $10::text[], $21::bytea[])
                      AS x(t, i, v, lu, d, ao, h)
                 WHERE v = 1
             ), heads AS (
                 INSERT INTO resource_head
                   (resource_type, id, version_id, last_updated, deleted, author_org,
                    content_hash)
                 SELECT t, i, v, lu, d, ao, h
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::bool[],
                             $10::text[], $21::bytea[])
                      AS x(t, i, v, lu, d, ao, h)
                 WHERE v > 1
                 ON CONFLICT (resource_type, id) DO UPDATE
                   SET version_id = excluded.version_id,
                       last_updated = excluded.last_updated,
                       deleted = excluded.deleted,
                       author_org = excluded.author_org,
                       content_hash = excluded.content_hash
             ), dropped AS (
                 DELETE FROM resource_identifier ri
                 USING unnest($13::text[], $14::text[]) AS k(t, i)
                 WHERE ri.resource_type = k.t AND ri.id = k.i
                   AND NOT EXISTS (
                       SELECT 1 FROM unnest($15::text[], $16::text[], $17::text[], $18::text[])
                           AS n(t, i, s, v)
                       WHERE n.t = ri.resource_type AND n.i = ri.id
                         AND n.s = ri.system AND n.v = ri.value)
             ), added AS (
                 INSERT INTO resource_identifier (resource_type, id, system, value)
                 SELECT * FROM unnest($15::text[], $16::text[], $17::text[], $18::text[])
                 ON CONFLICT DO NOTHING
             ), first_added AS (
                 INSERT INTO resource_identifier (resource_type, id, system, value)
                 SELECT * FROM unnest($22::text[], $23::text[], $24::text[], $25::text[])
             )
             INSERT INTO change_feed (resource_type, id, version_id, operation)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $12::text[])",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&vids)
        .bind(&times)
        .bind(&deleted)
        .bind(&methods)
        .bind(&contents)
        .bind(&kinds)
        .bind(&authors)
        .bind(&orgs)
        .bind(&requests)
        .bind(&ops)
        .bind(&rt)
        .bind(&ri)
        .bind(&it)
        .bind(&ii)
        .bind(&is)
        .bind(&iv)
        .bind(&compartments)
        .bind(&compartment_keys)
        .bind(&hashes)
        .bind(&nt)
        .bind(&ni)
        .bind(&ns)
        .bind(&nv)
        .execute(&mut *self.tx)
        .await
        .map_err(|e| {
            // A unique violation can only be a version row: two writers raced for it.
            StoreError::from_write(e, || {
                versions()
                    .map(|v| format!("{}/{}", v.resource_type, v.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        })?;
        Ok(())
    }

    /// In a group transaction (`Store::begin_group_write`), plans the statements that follow
    /// as the write pool does (a custom plan per execution, every join method), until
    /// `generic_plans`; elsewhere nothing. For a statement whose best plan depends on the
    /// tables' size in a way the index-probe rule does not settle: identity's candidate
    /// look-up, one index OR per record, made on a small `identity_patient` as a scan of
    /// every active record through a partial index for each record.
    pub async fn custom_plans(&mut self) -> Result<(), StoreError> {
        if self.generic {
            sqlx::raw_sql(
                "SET LOCAL plan_cache_mode TO DEFAULT; SET LOCAL enable_seqscan TO DEFAULT; \
                 SET LOCAL enable_hashjoin TO DEFAULT; SET LOCAL enable_mergejoin TO DEFAULT",
            )
            .execute(self.connection().await?)
            .await?;
        }
        Ok(())
    }

    /// Back to the group transaction's generic plans after `custom_plans`.
    pub async fn generic_plans(&mut self) -> Result<(), StoreError> {
        if self.generic {
            sqlx::raw_sql(generic_plans!())
                .execute(self.connection().await?)
                .await?;
        }
        Ok(())
    }

    pub async fn commit(mut self) -> Result<(), StoreError> {
        self.flush().await?;
        self.tx.commit().await?;
        Ok(())
    }

    /// For modules that must write their own rows in the same transaction (e.g. audit). The
    /// deferred versions are sent first: every statement sees every write before it.
    pub async fn connection(&mut self) -> Result<&mut sqlx::PgConnection, StoreError> {
        self.flush().await?;
        Ok(&mut self.tx)
    }
}

/// A PostgreSQL array literal of `items` (each quoted), for arrays that cannot be bound as
/// arrays of arrays (PostgreSQL's must be rectangular).
fn text_array(items: &[String]) -> String {
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::{lock_key, text_array};

    #[test]
    fn text_arrays_quote_every_item() {
        let items = ["a".to_string(), String::new(), "q\"b\\s,{}".to_string()];
        assert_eq!(text_array(&items), r#"{"a","","q\"b\\s,{}"}"#);
        assert_eq!(text_array(&[]), "{}");
    }

    #[test]
    fn lock_keys_are_stable_and_separate_parts() {
        assert_eq!(lock_key(&["a", "b"]), lock_key(&["a", "b"]));
        assert_ne!(lock_key(&["ab", ""]), lock_key(&["a", "b"]));
    }
}
