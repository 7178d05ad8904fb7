//! `_history` at instance, type and system level: newest first, keyset-paged so a page boundary
//! does not move when new versions are written.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;

use super::read::{VersionRow, version_columns};
use super::{Store, StoreError};

#[derive(Debug, Clone)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

/// Position after the last entry of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCursor {
    pub last_updated: OffsetDateTime,
    pub resource_type: String,
    pub id: String,
    pub version_id: i64,
}

impl HistoryCursor {
    pub fn encode(&self) -> String {
        let raw = format!(
            "{}|{}|{}|{}",
            self.last_updated.unix_timestamp_nanos() / 1000,
            self.resource_type,
            self.version_id,
            self.id
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(s: &str) -> Option<HistoryCursor> {
        let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(s).ok()?).ok()?;
        let mut parts = raw.splitn(4, '|');
        let micros: i128 = parts.next()?.parse().ok()?;
        let resource_type = parts.next()?.to_string();
        let version_id = parts.next()?.parse().ok()?;
        let id = parts.next()?.to_string();
        Some(HistoryCursor {
            last_updated: OffsetDateTime::from_unix_timestamp_nanos(micros * 1000).ok()?,
            resource_type,
            id,
            version_id,
        })
    }

    fn after(row: &VersionRow) -> HistoryCursor {
        HistoryCursor {
            last_updated: row.last_updated,
            resource_type: row.resource_type.clone(),
            id: row.id.clone(),
            version_id: row.version_id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub since: Option<OffsetDateTime>,
    pub count: i64,
    pub cursor: Option<HistoryCursor>,
}

pub struct HistoryPage {
    pub entries: Vec<VersionRow>,
    pub next: Option<HistoryCursor>,
    /// Only counted for instance history, where it is cheap.
    pub total: Option<i64>,
}

impl Store {
    #[tracing::instrument(skip(self), level = "debug")]
    pub async fn history(
        &self,
        scope: &HistoryScope,
        query: &HistoryQuery,
    ) -> Result<HistoryPage, StoreError> {
        let limit = query.count + 1;
        let c = query.cursor.as_ref();
        let rows = match scope {
            HistoryScope::Instance(t, id) => {
                sqlx::query(concat!(
                    "SELECT ",
                    version_columns!(),
                    " FROM resource_version
                     WHERE resource_type = $1 AND id = $2
                       AND ($3::timestamptz IS NULL OR last_updated >= $3)
                       AND ($4::bigint IS NULL OR version_id < $4)
                     ORDER BY version_id DESC LIMIT $5"
                ))
                .bind(t)
                .bind(id)
                .bind(query.since)
                .bind(c.map(|c| c.version_id))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            HistoryScope::Type(t) => {
                sqlx::query(concat!(
                    "SELECT ",
                    version_columns!(),
                    " FROM resource_version
                     WHERE resource_type = $1
                       AND ($2::timestamptz IS NULL OR last_updated >= $2)
                       AND ($3::timestamptz IS NULL OR (last_updated, id, version_id) < ($3, $4, $5))
                     ORDER BY last_updated DESC, id DESC, version_id DESC LIMIT $6"
                ))
                .bind(t)
                .bind(query.since)
                .bind(c.map(|c| c.last_updated))
                .bind(c.map(|c| c.id.as_str()))
                .bind(c.map(|c| c.version_id))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            HistoryScope::System => {
                sqlx::query(concat!(
                    "SELECT ",
                    version_columns!(),
                    " FROM resource_version
                     WHERE ($1::timestamptz IS NULL OR last_updated >= $1)
                       AND ($2::timestamptz IS NULL
                            OR (last_updated, resource_type, id, version_id) < ($2, $3, $4, $5))
                     ORDER BY last_updated DESC, resource_type DESC, id DESC, version_id DESC
                     LIMIT $6"
                ))
                .bind(query.since)
                .bind(c.map(|c| c.last_updated))
                .bind(c.map(|c| c.resource_type.as_str()))
                .bind(c.map(|c| c.id.as_str()))
                .bind(c.map(|c| c.version_id))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut entries = rows
            .iter()
            .map(VersionRow::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if entries.len() as i64 > query.count {
            entries.truncate(query.count as usize);
            entries.last().map(HistoryCursor::after)
        } else {
            None
        };
        let total = match scope {
            HistoryScope::Instance(t, id) => Some(
                sqlx::query_scalar(
                    "SELECT count(*) FROM resource_version
                     WHERE resource_type = $1 AND id = $2
                       AND ($3::timestamptz IS NULL OR last_updated >= $3)",
                )
                .bind(t)
                .bind(id)
                .bind(query.since)
                .fetch_one(&self.pool)
                .await?,
            ),
            _ => None,
        };
        Ok(HistoryPage {
            entries,
            next,
            total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let c = HistoryCursor {
            last_updated: crate::fhir::instant::now_millis(),
            resource_type: "Patient".into(),
            id: "a|b".into(),
            version_id: 3,
        };
        assert_eq!(HistoryCursor::decode(&c.encode()), Some(c));
        assert_eq!(HistoryCursor::decode("not a cursor"), None);
    }
}
