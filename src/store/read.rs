//! Reads of current and past versions. Content comes back as JSON text so a read can be served
//! without parsing it.

use sqlx::Row;
use time::OffsetDateTime;

use super::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct VersionRow {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated: OffsetDateTime,
    pub deleted: bool,
    pub method: String,
    /// The resource JSON (with `meta.versionId`/`meta.lastUpdated`); `None` for deletions.
    pub content: Option<String>,
    /// ODS code of the organisation that wrote the version, when the query selected it
    /// (access decisions treat `None` as "not the caller's own data").
    pub author_org: Option<String>,
}

impl VersionRow {
    pub(crate) fn from_row(row: &sqlx::postgres::PgRow) -> Result<VersionRow, sqlx::Error> {
        Ok(VersionRow {
            resource_type: row.try_get("resource_type")?,
            id: row.try_get("id")?,
            version_id: row.try_get("version_id")?,
            last_updated: row.try_get("last_updated")?,
            deleted: row.try_get("deleted")?,
            method: row.try_get("method")?,
            content: row.try_get("content")?,
            author_org: row
                .try_get::<Option<String>, _>("author_org")
                .ok()
                .flatten(),
        })
    }
}

pub enum Current {
    Found(VersionRow),
    /// The latest version is a deletion.
    Deleted(VersionRow),
    NotFound,
}

/// Columns of a `VersionRow`, as a macro so queries stay `&'static str` (sqlx refuses built
/// strings, which keeps SQL injection out by construction).
macro_rules! version_columns {
    () => {
        "resource_type, id, version_id, last_updated, deleted, method, content::text AS content, author_org"
    };
}
pub(crate) use version_columns;

impl Store {
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<Current, StoreError> {
        let row = sqlx::query(
            "SELECT v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.method,
                    v.content::text AS content, v.author_org
             FROM resource_head h
             JOIN resource_version v
               ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
             WHERE h.resource_type = $1 AND h.id = $2",
        )
        .bind(resource_type)
        .bind(id)
        .fetch_optional(self.lookups_pool())
        .await?;
        Ok(match row {
            None => Current::NotFound,
            Some(row) => {
                let v = VersionRow::from_row(&row)?;
                if v.deleted {
                    Current::Deleted(v)
                } else {
                    Current::Found(v)
                }
            }
        })
    }

    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> Result<Option<VersionRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            version_columns!(),
            " FROM resource_version WHERE resource_type = $1 AND id = $2 AND version_id = $3"
        ))
        .bind(resource_type)
        .bind(id)
        .bind(version_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => Some(VersionRow::from_row(&row)?),
            None => None,
        })
    }

    /// Whether any version of the resource was ever written (distinguishes 404 from 410).
    pub async fn exists_ever(&self, resource_type: &str, id: &str) -> Result<bool, StoreError> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM resource_head WHERE resource_type = $1 AND id = $2")
                .bind(resource_type)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Counts current (non-deleted) resources per type: used by the demo and import summaries.
    pub async fn count_current(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT resource_type, count(*) AS n FROM resource_head WHERE NOT deleted
             GROUP BY resource_type ORDER BY resource_type",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("resource_type")?, r.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Every current, non-deleted resource of one type with the organisation that wrote its
    /// current version: the subscription manager loads its Subscriptions (and their owners)
    /// this way at start-up. Meant for small, administrative types only.
    pub async fn current_of_type(
        &self,
        resource_type: &str,
    ) -> Result<Vec<(VersionRow, Owner)>, StoreError> {
        let rows = sqlx::query(
            "SELECT v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.method,
                    v.content::text AS content, v.author_kind, v.author_id, v.author_org
             FROM resource_head h
             JOIN resource_version v
               ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
             WHERE h.resource_type = $1 AND NOT h.deleted
             ORDER BY h.id",
        )
        .bind(resource_type)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((VersionRow::from_row(r)?, Owner::from_row(r)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Many versions in one round trip (absent ones are skipped): notification payloads and
    /// topic conditions read the versions a batch of changes produced.
    pub async fn vread_many(
        &self,
        keys: &[(String, String, i64)],
    ) -> Result<Vec<VersionRow>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let types: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        let versions: Vec<i64> = keys.iter().map(|k| k.2).collect();
        let rows = sqlx::query(
            "SELECT v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.method,
                    v.content::text AS content, v.author_org
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(t, i, n)
             JOIN resource_version v
               ON v.resource_type = k.t AND v.id = k.i AND v.version_id = k.n",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&versions)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(VersionRow::from_row)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// One version with the author who wrote it.
    pub async fn vread_with_owner(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> Result<Option<(VersionRow, Owner)>, StoreError> {
        let row = sqlx::query(
            "SELECT resource_type, id, version_id, last_updated, deleted, method,
                    content::text AS content, author_kind, author_id, author_org
             FROM resource_version WHERE resource_type = $1 AND id = $2 AND version_id = $3",
        )
        .bind(resource_type)
        .bind(id)
        .bind(version_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok::<_, sqlx::Error>((VersionRow::from_row(&r)?, Owner::from_row(&r)?)))
            .transpose()
            .map_err(StoreError::from)
    }
}

/// Who wrote a stored version (its write provenance), as policy decisions need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// `system` or `user`.
    pub kind: String,
    pub id: String,
    pub org: Option<String>,
}

impl Owner {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Owner, sqlx::Error> {
        Ok(Owner {
            kind: row.try_get("author_kind")?,
            id: row.try_get("author_id")?,
            org: row.try_get("author_org")?,
        })
    }
}

/// The current state of a resource as the search indexer needs it.
#[derive(Debug, Clone)]
pub struct HeadState {
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
    pub last_updated: OffsetDateTime,
    pub deleted: bool,
    pub author_org: Option<String>,
    pub content: Option<String>,
}

impl HeadState {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<HeadState, sqlx::Error> {
        Ok(HeadState {
            resource_type: row.try_get("resource_type")?,
            id: row.try_get("id")?,
            version_id: row.try_get("version_id")?,
            last_updated: row.try_get("last_updated")?,
            deleted: row.try_get("deleted")?,
            author_org: row.try_get("author_org")?,
            content: row.try_get("content")?,
        })
    }
}

impl Store {
    /// Current state of each `(type, id)`; keys never written are absent.
    pub async fn heads(&self, keys: &[(String, String)]) -> Result<Vec<HeadState>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let types: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        let rows = sqlx::query(
            "SELECT h.resource_type, h.id, h.version_id, h.last_updated, h.deleted,
                    v.author_org, v.content::text AS content
             FROM unnest($1::text[], $2::text[]) AS k(t, i)
             JOIN resource_head h ON h.resource_type = k.t AND h.id = k.i
             JOIN resource_version v
               ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id",
        )
        .bind(&types)
        .bind(&ids)
        .fetch_all(self.lookups_pool())
        .await?;
        rows.iter()
            .map(HeadState::from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    /// Current, non-deleted resources after `after` in `(type, id)` order, for a full reindex.
    pub async fn scan_heads(
        &self,
        after: Option<(&str, &str)>,
        limit: i64,
    ) -> Result<Vec<HeadState>, StoreError> {
        let rows = sqlx::query(
            "SELECT h.resource_type, h.id, h.version_id, h.last_updated, h.deleted,
                    v.author_org, v.content::text AS content
             FROM resource_head h
             JOIN resource_version v
               ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
             WHERE NOT h.deleted
               AND ($1::text IS NULL OR (h.resource_type, h.id) > ($1, $2))
             ORDER BY h.resource_type, h.id
             LIMIT $3",
        )
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(HeadState::from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }

    /// Versions by `(type, id, version)`, for assembling search results exactly as indexed.
    pub async fn versions(
        &self,
        keys: &[(String, String, i64)],
    ) -> Result<Vec<VersionRow>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let types: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        let vids: Vec<i64> = keys.iter().map(|k| k.2).collect();
        let rows = sqlx::query(
            "SELECT v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.method,
                    v.content::text AS content, v.author_org
             FROM unnest($1::text[], $2::text[], $3::bigint[]) AS k(t, i, n)
             JOIN resource_version v ON v.resource_type = k.t AND v.id = k.i AND v.version_id = k.n",
        )
        .bind(&types)
        .bind(&ids)
        .bind(&vids)
        .fetch_all(self.lookups_pool())
        .await?;
        rows.iter()
            .map(VersionRow::from_row)
            .collect::<Result<_, _>>()
            .map_err(StoreError::from)
    }
}

impl Store {
    /// The organisation that wrote the current version of each `(type, id)`: the contributing
    /// trust a longitudinal view names as the source of a fact.
    pub async fn writer_orgs(
        &self,
        keys: &[(String, String)],
    ) -> Result<std::collections::HashMap<(String, String), String>, StoreError> {
        if keys.is_empty() {
            return Ok(Default::default());
        }
        let types: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
        let rows = sqlx::query(
            "SELECT h.resource_type, h.id, v.author_org
             FROM unnest($1::text[], $2::text[]) AS k(t, i)
             JOIN resource_head h ON h.resource_type = k.t AND h.id = k.i
             JOIN resource_version v
               ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
             WHERE v.author_org IS NOT NULL",
        )
        .bind(&types)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut out = std::collections::HashMap::with_capacity(rows.len());
        for r in rows {
            out.insert(
                (r.try_get("resource_type")?, r.try_get("id")?),
                r.try_get("author_org")?,
            );
        }
        Ok(out)
    }

    /// The newest version of a resource that has content (the one before a deletion).
    pub async fn last_content_version(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<VersionRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            version_columns!(),
            " FROM resource_version WHERE resource_type = $1 AND id = $2 AND content IS NOT NULL
              ORDER BY version_id DESC LIMIT 1"
        ))
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| VersionRow::from_row(&r))
            .transpose()
            .map_err(StoreError::from)
    }
}
