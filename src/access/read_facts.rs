//! A clinician's read and the access facts it needs, in one round trip.
//!
//! A read must be decided against the facts of the resource's patients, which are only known
//! once the resource is: naively two statements. This one statement reads the current version
//! and, for every patient its JSON references (`Patient/{id}`, relative or absolute, possibly
//! versioned — a superset of the patient compartment), the caller organisation's care
//! relationships, the user's break-glass grants and the consent restrictions. The caller then
//! computes the exact compartment and uses these facts only if the superset covers it; any
//! patient it does not cover sends the caller back to loading the facts for the exact set.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::Grants;
use crate::store::{Current, Store, StoreError, VersionRow};

/// The current version, the facts of the patients its content references, and which patients
/// those are.
pub struct ReadFacts {
    pub current: Current,
    pub grants: Grants,
    pub covered: HashSet<String>,
}

pub async fn read(
    store: &Store,
    resource_type: &str,
    id: &str,
    org: &str,
    user_id: &str,
    window_days: u32,
) -> Result<ReadFacts, StoreError> {
    let row = sqlx::query(
        r#"WITH v AS (
             SELECT v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.method,
                    v.content, v.author_org
             FROM resource_head h
             JOIN resource_version v
               ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
             WHERE h.resource_type = $1 AND h.id = $2
         ), p AS (
             SELECT m[1] AS pid
             FROM v, regexp_matches(v.content::text,
                 'Patient/([A-Za-z0-9.-]{1,64})(?:/_history/[A-Za-z0-9.-]{1,64})?"', 'g') AS m
             UNION
             SELECT v.id FROM v WHERE v.resource_type = 'Patient'
         )
         SELECT v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.method,
                v.content::text AS content, v.author_org,
                ARRAY(SELECT pid FROM p) AS covered,
                ARRAY(SELECT DISTINCT patient_id FROM access_relationship
                      WHERE org = $3 AND patient_id IN (SELECT pid FROM p)
                        AND (period_end IS NULL OR period_end >= now() - make_interval(days => $5))
                        AND (period_start IS NULL OR period_start <= now())) AS related,
                (SELECT coalesce(json_agg(json_build_array(patient_id, id::text)), '[]')
                 FROM access_break_glass
                 WHERE user_id = $4 AND org = $3 AND expires_at > now()
                   AND patient_id IN (SELECT pid FROM p))::text AS break_glass,
                (SELECT coalesce(json_agg(json_build_array(patient_id, kind, value)), '[]')
                 FROM access_consent
                 WHERE patient_id IN (SELECT pid FROM p)
                   AND (period_start IS NULL OR period_start <= now())
                   AND (period_end IS NULL OR period_end >= now())
                   AND (kind <> 'deny-org' OR value = $3))::text AS consents
         FROM v"#,
    )
    .bind(resource_type)
    .bind(id)
    .bind(org)
    .bind(user_id)
    .bind(window_days as i32)
    .fetch_optional(store.lookups_pool())
    .await?;
    let Some(row) = row else {
        return Ok(ReadFacts {
            current: Current::NotFound,
            grants: Grants::default(),
            covered: HashSet::new(),
        });
    };
    use sqlx::Row;
    let version = VersionRow::from_row(&row)?;
    let covered: Vec<String> = row.try_get("covered")?;
    let related: Vec<String> = row.try_get("related")?;
    let break_glass: String = row.try_get("break_glass")?;
    let consents: String = row.try_get("consents")?;
    let strings = |v: &Value, i: usize| v[i].as_str().unwrap_or_default().to_string();
    let consents: Vec<Value> = serde_json::from_str(&consents).unwrap_or_default();
    let mut grants = Grants::from_rows(
        related,
        consents
            .iter()
            .map(|c| (strings(c, 0), strings(c, 1), strings(c, 2))),
    );
    let break_glass: Vec<Value> = serde_json::from_str(&break_glass).unwrap_or_default();
    grants.break_glass = break_glass
        .iter()
        .filter_map(|g| Some((strings(g, 0), strings(g, 1).parse().ok()?)))
        .collect::<HashMap<_, _>>();
    Ok(ReadFacts {
        current: if version.deleted {
            Current::Deleted(version)
        } else {
            Current::Found(version)
        },
        grants,
        covered: covered.into_iter().collect(),
    })
}
