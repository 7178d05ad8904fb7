//! People's decisions on links: the review queue (confirm or reject a possible match), merging
//! two persons and unmerging (restoring exactly the assignment a merge replaced). Each decision
//! is a row in `identity_decision` (who, when, why, before and after), a link event per moved
//! record, new Person versions and a Provenance whose agent is the reviewer — all in one
//! transaction.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sqlx::Row;

use super::link::{Assignment, record_event, write_persons};
use crate::fhir::instant::{format_instant, now_millis};
use crate::store::{Author, Store, StoreError, WriteTx};

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ReviewError {
    fn from(e: sqlx::Error) -> Self {
        ReviewError::Store(StoreError::Database(e))
    }
}

/// An open item of the review queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReviewItem {
    pub id: i64,
    pub patient: String,
    pub candidate: String,
    pub score: f64,
    pub reason: String,
    pub created: String,
}

/// Open items whose two records are still in different persons, oldest first.
pub async fn open_items(store: &Store, limit: i64) -> Result<Vec<ReviewItem>, ReviewError> {
    let rows = sqlx::query(
        "SELECT r.id, r.patient_id, r.candidate_id, r.score, r.reason, r.created_at
         FROM identity_review r
         JOIN identity_patient a ON a.patient_id = r.patient_id AND a.active
         JOIN identity_patient b ON b.patient_id = r.candidate_id AND b.active
         WHERE r.status = 'open' AND a.person_id <> b.person_id
         ORDER BY r.id
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(store.pool())
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(ReviewItem {
                id: r.try_get("id")?,
                patient: r.try_get("patient_id")?,
                candidate: r.try_get("candidate_id")?,
                score: r.try_get("score")?,
                reason: r.try_get("reason")?,
                created: format_instant(r.try_get("created_at")?),
            })
        })
        .collect()
}

/// The outcome of a decision, for the response.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecisionOutcome {
    pub decision: i64,
    /// Persons whose membership changed.
    pub persons: Vec<String>,
}

async fn person_of(tx: &mut WriteTx, patient_id: &str) -> Result<String, ReviewError> {
    sqlx::query_scalar("SELECT person_id FROM identity_patient WHERE patient_id = $1 AND active")
        .bind(patient_id)
        .fetch_optional(tx.connection().await?)
        .await?
        .ok_or_else(|| ReviewError::NotFound(format!("Patient/{patient_id} has no identity link")))
}

/// Serialises decisions touching the same persons (advisory locks in a fixed order).
async fn lock_persons(tx: &mut WriteTx, persons: &[&str]) -> Result<(), ReviewError> {
    let mut keys: Vec<String> = persons
        .iter()
        .map(|p| format!("identity-person:{p}"))
        .collect();
    keys.sort();
    keys.dedup();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::text[]) AS k ORDER BY k")
        .bind(&keys)
        .execute(tx.connection().await?)
        .await?;
    Ok(())
}

async fn members(tx: &mut WriteTx, person: &str) -> Result<Vec<Assignment>, ReviewError> {
    let rows = sqlx::query(
        "SELECT patient_id, person_id, score, grade, method FROM identity_patient
         WHERE person_id = $1 AND active ORDER BY patient_id FOR UPDATE",
    )
    .bind(person)
    .fetch_all(tx.connection().await?)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Assignment {
                patient_id: r.try_get("patient_id")?,
                person_id: r.try_get("person_id")?,
                score: r.try_get("score")?,
                grade: r.try_get("grade")?,
                method: r.try_get("method")?,
            })
        })
        .collect()
}

async fn insert_decision(
    tx: &mut WriteTx,
    kind: &str,
    actor: &Author,
    reason: &str,
    before: &[Assignment],
    after: &[Assignment],
) -> Result<i64, ReviewError> {
    Ok(sqlx::query_scalar(
        "INSERT INTO identity_decision (kind, actor, actor_org, reason, before, after)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(kind)
    .bind(&actor.id)
    .bind(&actor.org)
    .bind(reason)
    .bind(serde_json::to_value(before).unwrap_or(Value::Null))
    .bind(serde_json::to_value(after).unwrap_or(Value::Null))
    .fetch_one(tx.connection().await?)
    .await?)
}

async fn assign(
    tx: &mut WriteTx,
    a: &Assignment,
    from: &str,
    actor: &Author,
    decision: i64,
) -> Result<(), ReviewError> {
    sqlx::query(
        "UPDATE identity_patient SET person_id = $2, score = $3, grade = $4, method = $5,
                linked_at = now()
         WHERE patient_id = $1",
    )
    .bind(&a.patient_id)
    .bind(&a.person_id)
    .bind(a.score)
    .bind(&a.grade)
    .bind(&a.method)
    .execute(tx.connection().await?)
    .await?;
    record_event(
        tx,
        &a.patient_id,
        Some(from),
        Some(&a.person_id),
        a.score,
        &a.grade,
        &a.method,
        &actor.id,
        Some(decision),
    )
    .await?;
    Ok(())
}

/// Verified NHS numbers of a person's records.
async fn verified_numbers(tx: &mut WriteTx, person: &str) -> Result<BTreeSet<String>, ReviewError> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT nhs_number FROM identity_patient
         WHERE person_id = $1 AND active AND nhs_verified AND nhs_number IS NOT NULL",
    )
    .bind(person)
    .fetch_all(tx.connection().await?)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Moves every record of `source` into `target`. Refused when the two persons carry different
/// verified NHS numbers: PDS says they are two people, and that is fixed at PDS, not here.
pub async fn merge(
    store: &Store,
    source: &str,
    target: &str,
    actor: &Author,
    reason: &str,
) -> Result<DecisionOutcome, ReviewError> {
    let mut tx = store.begin_write().await?;
    let outcome = merge_in(&mut tx, source, target, actor, reason, "merge").await?;
    tx.commit().await?;
    Ok(outcome)
}

async fn merge_in(
    tx: &mut WriteTx,
    source: &str,
    target: &str,
    actor: &Author,
    reason: &str,
    kind: &str,
) -> Result<DecisionOutcome, ReviewError> {
    if source == target {
        return Err(ReviewError::Invalid(
            "source and target are the same Person".into(),
        ));
    }
    lock_persons(tx, &[source, target]).await?;
    let moving = members(tx, source).await?;
    if moving.is_empty() {
        return Err(ReviewError::NotFound(format!(
            "Person/{source} has no linked records"
        )));
    }
    if members(tx, target).await?.is_empty() {
        return Err(ReviewError::NotFound(format!(
            "Person/{target} has no linked records"
        )));
    }
    let (a, b) = (
        verified_numbers(tx, source).await?,
        verified_numbers(tx, target).await?,
    );
    if !a.is_empty() && !b.is_empty() && a != b {
        return Err(ReviewError::Conflict(
            "the two persons carry different verified NHS numbers; resolve the numbers at PDS first"
                .into(),
        ));
    }
    let after: Vec<Assignment> = moving
        .iter()
        .map(|m| Assignment {
            person_id: target.to_string(),
            grade: "certain".into(),
            method: "manual".into(),
            ..m.clone()
        })
        .collect();
    let decision = insert_decision(tx, kind, actor, reason, &moving, &after).await?;
    for a in &after {
        assign(tx, a, source, actor, decision).await?;
    }
    let persons: BTreeSet<String> = [source.to_string(), target.to_string()].into();
    write_persons(tx, &persons, actor, now_millis(), Some(reason)).await?;
    Ok(DecisionOutcome {
        decision,
        persons: persons.into_iter().collect(),
    })
}

/// Reverses merge decision `decision_id`: every record it moved that is still where the merge
/// put it goes back to its earlier person with its earlier score, grade and method. The pairs
/// are then recorded as non-matches so the matcher does not join them again.
pub async fn unmerge(
    store: &Store,
    decision_id: i64,
    actor: &Author,
    reason: &str,
) -> Result<DecisionOutcome, ReviewError> {
    let mut tx = store.begin_write().await?;
    let row = sqlx::query(
        "SELECT kind, before, after, reversed_by FROM identity_decision WHERE id = $1 FOR UPDATE",
    )
    .bind(decision_id)
    .fetch_optional(tx.connection().await?)
    .await?
    .ok_or_else(|| ReviewError::NotFound(format!("identity decision {decision_id}")))?;
    let kind: String = row.try_get("kind")?;
    if kind != "merge" && kind != "confirm" {
        return Err(ReviewError::Invalid(format!(
            "decision {decision_id} is a {kind}; only merges and confirmations can be unmerged"
        )));
    }
    if row.try_get::<Option<i64>, _>("reversed_by")?.is_some() {
        return Err(ReviewError::Conflict(format!(
            "decision {decision_id} has already been reversed"
        )));
    }
    let before: Vec<Assignment> =
        serde_json::from_value(row.try_get("before")?).unwrap_or_default();
    let after: Vec<Assignment> = serde_json::from_value(row.try_get("after")?).unwrap_or_default();
    let Some(target) = after.first().map(|a| a.person_id.clone()) else {
        return Err(ReviewError::Invalid(format!(
            "decision {decision_id} moved nothing"
        )));
    };
    let source = before
        .first()
        .map(|a| a.person_id.clone())
        .unwrap_or_default();
    lock_persons(&mut tx, &[&source, &target]).await?;
    let now_in_target: BTreeSet<String> = members(&mut tx, &target)
        .await?
        .into_iter()
        .map(|m| m.patient_id)
        .collect();
    let restore: Vec<Assignment> = before
        .into_iter()
        .filter(|a| now_in_target.contains(&a.patient_id))
        .collect();
    if restore.is_empty() {
        return Err(ReviewError::Conflict(format!(
            "the records decision {decision_id} moved have since been moved again"
        )));
    }
    let moved_back: Vec<Assignment> = restore
        .iter()
        .map(|a| Assignment {
            person_id: target.clone(),
            ..a.clone()
        })
        .collect();
    let decision =
        insert_decision(&mut tx, "unmerge", actor, reason, &moved_back, &restore).await?;
    for a in &restore {
        assign(&mut tx, a, &target, actor, decision).await?;
    }
    let restored: BTreeSet<&str> = restore.iter().map(|a| a.patient_id.as_str()).collect();
    for stay in now_in_target
        .iter()
        .filter(|p| !restored.contains(p.as_str()))
    {
        for back in &restored {
            add_non_match(&mut tx, stay, back, decision).await?;
        }
    }
    sqlx::query("UPDATE identity_decision SET reversed_by = $2 WHERE id = $1")
        .bind(decision_id)
        .bind(decision)
        .execute(tx.connection().await?)
        .await?;
    let persons: BTreeSet<String> = [source, target].into();
    write_persons(&mut tx, &persons, actor, now_millis(), Some(reason)).await?;
    tx.commit().await?;
    Ok(DecisionOutcome {
        decision,
        persons: persons.into_iter().collect(),
    })
}

async fn add_non_match(
    tx: &mut WriteTx,
    a: &str,
    b: &str,
    decision: i64,
) -> Result<(), ReviewError> {
    let (a, b) = if a < b { (a, b) } else { (b, a) };
    sqlx::query(
        "INSERT INTO identity_non_match (patient_a, patient_b, decision_id) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(a)
    .bind(b)
    .bind(decision)
    .execute(tx.connection().await?)
    .await?;
    Ok(())
}

/// Confirms (the two records are one person: their persons merge) or rejects (they are two
/// people: never linked or queued again) an open review item.
pub async fn decide_item(
    store: &Store,
    item: i64,
    confirm: bool,
    actor: &Author,
    reason: &str,
) -> Result<DecisionOutcome, ReviewError> {
    let mut tx = store.begin_write().await?;
    let row = sqlx::query(
        "SELECT patient_id, candidate_id FROM identity_review
         WHERE id = $1 AND status = 'open' FOR UPDATE",
    )
    .bind(item)
    .fetch_optional(tx.connection().await?)
    .await?
    .ok_or_else(|| ReviewError::NotFound(format!("open review item {item}")))?;
    let patient: String = row.try_get("patient_id")?;
    let candidate: String = row.try_get("candidate_id")?;
    let outcome = if confirm {
        let source = person_of(&mut tx, &patient).await?;
        let target = person_of(&mut tx, &candidate).await?;
        merge_in(&mut tx, &source, &target, actor, reason, "confirm").await?
    } else {
        let none: Vec<Assignment> = Vec::new();
        let decision = insert_decision(&mut tx, "reject", actor, reason, &none, &none).await?;
        add_non_match(&mut tx, &patient, &candidate, decision).await?;
        DecisionOutcome {
            decision,
            persons: Vec::new(),
        }
    };
    sqlx::query("UPDATE identity_review SET status = $2, decision_id = $3 WHERE id = $1")
        .bind(item)
        .bind(if confirm { "confirmed" } else { "rejected" })
        .bind(outcome.decision)
        .execute(tx.connection().await?)
        .await?;
    tx.commit().await?;
    Ok(outcome)
}

/// The decision log entry, for responses.
pub fn decision_json(o: &DecisionOutcome) -> Value {
    json!({"decision": o.decision, "persons": o.persons})
}
