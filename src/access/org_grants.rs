//! Organisation-wide access facts for searches, cached between requests.
//!
//! A search is decided against every patient the caller's organisation has a care
//! relationship with, and every consent restriction that could bind it: thousands of rows.
//! They change only when a fact-bearing resource is written (Encounter, EpisodeOfCare,
//! ServiceRequest, Patient, Consent) or when time crosses a period boundary, so they are loaded
//! once per organisation and kept while both stay put:
//!
//! - writes: the search index counts fact-bearing changes as it applies the change feed
//!   (`SearchIndex::facts_generation`). A search reads the count after `wait_fresh`, which has
//!   applied every write committed before the search began, so an entry loaded under the same
//!   count holds every such write. This also holds across processes sharing one database:
//!   each follows the same feed.
//! - time: the entry knows the next instant at which a loaded row starts or stops counting
//!   (a relationship leaving its window, a consent period starting or ending) and is reloaded
//!   from then on.
//!
//! Break-glass grants are per user and not in the feed: they are read on every request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use time::{Duration, OffsetDateTime};

use super::Grants;
use crate::store::{Store, StoreError};

/// Entries are reloaded at least this often, whatever the feed says (a safety net, not a rule).
const MAX_AGE: Duration = Duration::minutes(5);

/// Organisations kept; beyond this the cache starts again (there are hundreds, not thousands).
const MAX_ORGS: usize = 4096;

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

struct Entry {
    generation: u64,
    window_days: u32,
    valid_until: OffsetDateTime,
    grants: Grants,
}

#[derive(Default)]
pub struct OrgGrantsCache {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

/// A fact row as loaded: when it starts and stops counting.
struct Row {
    tag: String,
    patient: String,
    value: String,
    start: Option<OffsetDateTime>,
    end: Option<OffsetDateTime>,
}

impl Row {
    fn counts_at(&self, t: OffsetDateTime) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| e >= t)
    }

    /// The first instant after `t` at which `counts_at` changes.
    fn next_boundary(&self, t: OffsetDateTime) -> Option<OffsetDateTime> {
        [self.start, self.end.map(|e| e + Duration::microseconds(1))]
            .into_iter()
            .flatten()
            .filter(|b| *b > t)
            .min()
    }
}

impl OrgGrantsCache {
    /// The organisation's relationships and the consent restrictions that concern it (no
    /// break-glass grants), current for `generation` (read after `wait_fresh`).
    pub async fn get(
        &self,
        store: &Store,
        org: &str,
        window_days: u32,
        generation: u64,
    ) -> Result<Grants, StoreError> {
        let now = OffsetDateTime::now_utc();
        if let Some(e) = self.entries.lock().expect("grants cache").get(org)
            && e.generation == generation
            && e.window_days == window_days
            && now < e.valid_until
        {
            crate::metrics::ORG_GRANTS_CACHE
                .with_label_values(&["hit"])
                .inc();
            return Ok(e.grants.clone());
        }
        crate::metrics::ORG_GRANTS_CACHE
            .with_label_values(&["miss"])
            .inc();
        let entry = Arc::new(Self::load(store, org, window_days, generation, now).await?);
        let mut entries = self.entries.lock().expect("grants cache");
        if entries.len() >= MAX_ORGS {
            entries.clear();
        }
        // A concurrent load under a newer generation wins.
        let keep = entries
            .get(org)
            .is_none_or(|old| old.generation <= generation);
        if keep {
            entries.insert(org.to_string(), entry.clone());
        }
        Ok(entry.grants.clone())
    }

    async fn load(
        store: &Store,
        org: &str,
        window_days: u32,
        generation: u64,
        now: OffsetDateTime,
    ) -> Result<Entry, StoreError> {
        // Rows that count now or will count later; a relationship's end is moved by the
        // window, so `end` is simply the last instant it counts.
        let rows: Vec<Row> = sqlx::query(
            "SELECT 'rel', patient_id, '', period_start,
                    period_end + make_interval(days => $2)
             FROM access_relationship
             WHERE org = $1 AND (period_end IS NULL OR period_end >= $3 - make_interval(days => $2))
             UNION ALL
             SELECT kind, patient_id, value, period_start, period_end FROM access_consent
             WHERE (period_end IS NULL OR period_end >= $3) AND (kind <> 'deny-org' OR value = $1)",
        )
        .bind(org)
        .bind(window_days as i32)
        .bind(now)
        .try_map(|r: sqlx::postgres::PgRow| {
            use sqlx::Row as _;
            Ok(Row {
                tag: r.try_get(0)?,
                patient: r.try_get(1)?,
                value: r.try_get(2)?,
                start: r.try_get(3)?,
                end: r.try_get(4)?,
            })
        })
        .fetch_all(store.pool())
        .await?;
        let valid_until = rows
            .iter()
            .filter_map(|r| r.next_boundary(now))
            .fold(now + MAX_AGE, OffsetDateTime::min);
        let mut relationship = Vec::new();
        let mut consents = Vec::new();
        for r in rows.into_iter().filter(|r| r.counts_at(now)) {
            if r.tag == "rel" {
                relationship.push(r.patient);
            } else {
                consents.push((r.patient, r.tag, r.value));
            }
        }
        let mut grants = Grants::from_rows(relationship, consents);
        grants.cache_key = Some(NEXT_KEY.fetch_add(1, Ordering::Relaxed));
        Ok(Entry {
            generation,
            window_days,
            valid_until,
            grants,
        })
    }
}

/// The user's active break-glass grants (patient → grant), read on every request.
pub async fn break_glass_grants(
    store: &Store,
    org: &str,
    user_id: &str,
) -> Result<HashMap<String, uuid::Uuid>, StoreError> {
    let rows: Vec<(String, uuid::Uuid)> = sqlx::query_as(
        "SELECT patient_id, id FROM access_break_glass
         WHERE user_id = $1 AND org = $2 AND expires_at > now()",
    )
    .bind(user_id)
    .bind(org)
    .fetch_all(store.lookups_pool())
    .await?;
    Ok(rows.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(start: Option<i64>, end: Option<i64>) -> Row {
        let at = |d: i64| OffsetDateTime::UNIX_EPOCH + Duration::days(d);
        Row {
            tag: "rel".into(),
            patient: "p".into(),
            value: String::new(),
            start: start.map(at),
            end: end.map(at),
        }
    }

    #[test]
    fn rows_count_within_their_period_and_say_when_that_changes() {
        let t = OffsetDateTime::UNIX_EPOCH + Duration::days(10);
        let open = row(None, None);
        assert!(open.counts_at(t));
        assert_eq!(open.next_boundary(t), None);
        let current = row(Some(5), Some(20));
        assert!(current.counts_at(t));
        assert_eq!(
            current.next_boundary(t),
            Some(OffsetDateTime::UNIX_EPOCH + Duration::days(20) + Duration::microseconds(1))
        );
        let future = row(Some(15), None);
        assert!(!future.counts_at(t));
        assert_eq!(
            future.next_boundary(t),
            Some(OffsetDateTime::UNIX_EPOCH + Duration::days(15))
        );
    }
}
