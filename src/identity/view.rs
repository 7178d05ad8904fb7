//! Reading links: which Patients (held by which trusts) make up a person. `$everything`,
//! `$summary` and `:mdm` searches expand a Patient through here.

use sqlx::{PgPool, Row};

/// One trust's record of the person.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Member {
    pub patient_id: String,
    pub org: Option<String>,
    pub grade: String,
    pub method: String,
    pub score: Option<f64>,
}

/// The person of `patient_id` and all its current records (the patient itself included, first).
/// A Patient the matcher has never seen (e.g. written before linking existed) stands alone.
pub async fn linked(
    pool: &PgPool,
    patient_id: &str,
) -> Result<(Option<String>, Vec<Member>), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT m.person_id, m.patient_id, m.org, m.grade, m.method, m.score
         FROM identity_patient p
         JOIN identity_patient m ON m.person_id = p.person_id AND m.active
         WHERE p.patient_id = $1
         ORDER BY m.patient_id <> $1, m.patient_id",
    )
    .bind(patient_id)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok((
            None,
            vec![Member {
                patient_id: patient_id.to_string(),
                org: None,
                grade: "founder".into(),
                method: "auto".into(),
                score: None,
            }],
        ));
    }
    let person = rows[0].try_get("person_id")?;
    let members = rows
        .into_iter()
        .map(|r| {
            Ok(Member {
                patient_id: r.try_get("patient_id")?,
                org: r.try_get("org")?,
                grade: r.try_get("grade")?,
                method: r.try_get("method")?,
                score: r.try_get("score")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok((Some(person), members))
}

/// Ids of every Patient linked with `patient_id` (itself included).
pub async fn linked_ids(pool: &PgPool, patient_id: &str) -> Result<Vec<String>, sqlx::Error> {
    Ok(linked(pool, patient_id)
        .await?
        .1
        .into_iter()
        .map(|m| m.patient_id)
        .collect())
}
