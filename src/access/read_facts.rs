//! A clinician's read and the access facts it needs, in one round trip.
//!
//! A read must be decided against the facts of the resource's patients, which are only known
//! once the resource is: naively two statements. This one statement reads the current version
//! and, for every patient its JSON references (`Patient/{id}`, relative or absolute, possibly
//! versioned — a superset of the patient compartment), the caller organisation's care
//! relationships, the user's break-glass grants and the consent restrictions. The caller then
//! computes the exact compartment and uses these facts only if the superset covers it; any
//! patient it does not cover sends the caller back to loading the facts for the exact set.
//!
//! A version written by a server keeps its compartment's patient references in
//! `resource_version.compartment` (`search::index::compartment_candidates`): when its
//! `compartment_key` is the reader's, the statement takes the patients from there rather than
//! scanning the JSON text with a regular expression, and the caller gets the exact `Facts`
//! (the compartment on this server's base, and the security labels, selected by the
//! statement) without parsing the resource.
//!
//! Relationships are probed per patient (`LATERAL … LIMIT 1` on `(org, patient_id)`): written
//! as a semi-join, the planner read and filtered every relationship row of the organisation
//! (hundreds) on every read.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{Facts, Grants};
use crate::store::{Current, Store, StoreError, VersionRow};

/// The current version, the facts of the patients its content references, and which patients
/// those are.
pub struct ReadFacts {
    pub current: Current,
    pub grants: Grants,
    pub covered: HashSet<String>,
    /// The version's exact facts, when its stored compartment could be trusted.
    pub facts: Option<Facts>,
}

/// Where the stored compartment comes from: the reader's `compartment_key` and base URL.
pub struct Compartments<'a> {
    pub key: Option<i64>,
    pub base: &'a str,
}

pub async fn read(
    store: &Store,
    resource_type: &str,
    id: &str,
    org: &str,
    user_id: &str,
    window_days: u32,
    compartments: Compartments<'_>,
) -> Result<ReadFacts, StoreError> {
    let row = sqlx::query(
        r#"WITH v AS (
             SELECT v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.method,
                    v.content, v.author_org, v.compartment, v.compartment_key
             FROM resource_head h
             JOIN resource_version v
               ON v.resource_type = h.resource_type AND v.id = h.id AND v.version_id = h.version_id
             WHERE h.resource_type = $1 AND h.id = $2
         ), p AS (
             SELECT v.compartment[i] AS pid
             FROM v, generate_series(1, coalesce(array_length(v.compartment, 1), 0), 2) AS i
             WHERE v.compartment_key = $6
             UNION
             SELECT m[1]
             FROM v, regexp_matches(v.content::text,
                 'Patient/([A-Za-z0-9.-]{1,64})(?:/_history/[A-Za-z0-9.-]{1,64})?"', 'g') AS m
             WHERE v.compartment_key IS DISTINCT FROM $6
             UNION
             SELECT v.id FROM v WHERE v.resource_type = 'Patient'
         )
         SELECT v.resource_type, v.id, v.version_id, v.last_updated, v.deleted, v.method,
                v.content::text AS content, v.author_org, v.compartment, v.compartment_key,
                CASE WHEN jsonb_typeof(v.content #> '{meta,security}') = 'array'
                     THEN ARRAY(SELECT l->>'code'
                                FROM jsonb_array_elements(v.content #> '{meta,security}') AS l
                                WHERE jsonb_typeof(l->'code') = 'string')
                     ELSE '{}' END AS labels,
                ARRAY(SELECT pid FROM p) AS covered,
                ARRAY(SELECT p.pid FROM p, LATERAL (
                          SELECT 1 FROM access_relationship r
                          WHERE r.org = $3 AND r.patient_id = p.pid
                            AND (r.period_end IS NULL
                                 OR r.period_end >= now() - make_interval(days => $5))
                            AND (r.period_start IS NULL OR r.period_start <= now())
                          LIMIT 1) AS r) AS related,
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
    .bind(compartments.key)
    .fetch_optional(store.lookups_pool())
    .await?;
    let Some(row) = row else {
        return Ok(ReadFacts {
            current: Current::NotFound,
            grants: Grants::default(),
            covered: HashSet::new(),
            facts: None,
        });
    };
    use sqlx::Row;
    let version = VersionRow::from_row(&row)?;
    let stored_key: Option<i64> = row.try_get("compartment_key")?;
    let facts = match row.try_get::<Option<Vec<String>>, _>("compartment")? {
        Some(candidates)
            if compartments.key.is_some()
                && stored_key == compartments.key
                && version.content.is_some() =>
        {
            Some(Facts {
                resource_type: version.resource_type.clone(),
                author_org: version.author_org.clone(),
                labels: row.try_get("labels")?,
                patients: crate::search::index::compartment_of_candidates(
                    &candidates,
                    compartments.base,
                ),
            })
        }
        _ => None,
    };
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
        facts,
    })
}
