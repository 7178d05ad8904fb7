//! Break-glass: a clinician without a relationship (or held back by a consent restriction)
//! opens one patient's record for a limited time, giving a coded reason and free text. Grants
//! live in PostgreSQL so every replica honours them, and privacy officers review them.

use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use super::UserCaller;
use crate::store::{Store, StoreError};

/// Request headers that ask for break-glass (documented in consent-policies/README.md).
pub const HEADER_CODE: &str = "x-break-glass";
pub const HEADER_REASON: &str = "x-break-glass-reason";

/// `v3-ActReason` codes accepted as the purpose of a break-glass access.
pub const REASON_CODES: [&str; 2] = ["ETREAT", "BTG"];

/// A request's break-glass ask, parsed from its headers.
#[derive(Debug, Clone)]
pub struct BreakGlassAsk {
    pub code: String,
    pub reason: String,
}

impl BreakGlassAsk {
    /// `Ok(None)` when the request does not ask; `Err` says what is wrong with the ask.
    pub fn from_headers(
        headers: &actix_web::http::header::HeaderMap,
    ) -> Result<Option<BreakGlassAsk>, String> {
        let Some(code) = headers.get(HEADER_CODE) else {
            return Ok(None);
        };
        let code = code.to_str().unwrap_or("").trim().to_ascii_uppercase();
        if !REASON_CODES.contains(&code.as_str()) {
            return Err(format!(
                "{HEADER_CODE} must be one of {} (v3-ActReason)",
                REASON_CODES.join(", ")
            ));
        }
        let reason = headers
            .get(HEADER_REASON)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        if reason.chars().count() < 10 || reason.len() > 500 {
            return Err(format!(
                "{HEADER_REASON} must explain the emergency in 10 to 500 characters"
            ));
        }
        Ok(Some(BreakGlassAsk {
            code,
            reason: reason.to_string(),
        }))
    }
}

/// Opens a grant for `patient_id` lasting `minutes`.
pub async fn open(
    store: &Store,
    user: &UserCaller,
    patient_id: &str,
    ask: &BreakGlassAsk,
    minutes: u32,
    request_id: Option<&str>,
) -> Result<Uuid, StoreError> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO access_break_glass
             (id, user_id, user_name, role_code, org, patient_id, reason_code, reason_text,
              request_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(mins => $10))",
    )
    .bind(id)
    .bind(&user.user_id)
    .bind(&user.name)
    .bind(&user.role_code)
    .bind(user.org.as_str())
    .bind(patient_id)
    .bind(&ask.code)
    .bind(&ask.reason)
    .bind(request_id)
    .bind(minutes as i32)
    .execute(store.pool())
    .await?;
    Ok(id)
}

#[derive(Debug, sqlx::FromRow)]
pub struct Grant {
    pub id: Uuid,
    pub user_id: String,
    pub user_name: Option<String>,
    pub role_code: String,
    pub org: String,
    pub patient_id: String,
    pub reason_code: String,
    pub reason_text: String,
    pub request_id: Option<String>,
    pub started_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub reviewed_at: Option<OffsetDateTime>,
    pub reviewed_by: Option<String>,
    pub review_outcome: Option<String>,
    pub review_note: Option<String>,
    /// Audited accesses made under the grant.
    pub accesses: i64,
}

impl Grant {
    pub fn to_json(&self) -> Value {
        let at = crate::fhir::instant::format_instant;
        json!({
            "id": self.id.to_string(),
            "userId": self.user_id,
            "userName": self.user_name,
            "roleCode": self.role_code,
            "org": self.org,
            "patient": format!("Patient/{}", self.patient_id),
            "reasonCode": self.reason_code,
            "reasonText": self.reason_text,
            "requestId": self.request_id,
            "startedAt": at(self.started_at),
            "expiresAt": at(self.expires_at),
            "reviewedAt": self.reviewed_at.map(at),
            "reviewedBy": self.reviewed_by,
            "reviewOutcome": self.review_outcome,
            "reviewNote": self.review_note,
            "accesses": self.accesses,
        })
    }
}

/// Grants, oldest first; `pending` keeps only those not yet reviewed.
pub async fn list(store: &Store, pending: bool) -> Result<Vec<Grant>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT g.id, g.user_id, g.user_name, g.role_code, g.org, g.patient_id, g.reason_code,
                g.reason_text, g.request_id, g.started_at, g.expires_at, g.reviewed_at,
                g.reviewed_by, g.review_outcome, g.review_note,
                (SELECT count(*) FROM audit_event a WHERE a.break_glass_id = g.id) AS accesses
         FROM access_break_glass g
         WHERE NOT $1 OR g.reviewed_at IS NULL
         ORDER BY g.started_at
         LIMIT 1000",
    )
    .bind(pending)
    .fetch_all(store.pool())
    .await?)
}

/// Review outcomes a privacy officer may record.
pub const OUTCOMES: [&str; 2] = ["justified", "follow-up"];

/// Records the review; false when there is no such grant or it was already reviewed.
pub async fn review(
    store: &Store,
    id: Uuid,
    reviewer: &str,
    outcome: &str,
    note: Option<&str>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE access_break_glass
         SET reviewed_at = now(), reviewed_by = $2, review_outcome = $3, review_note = $4
         WHERE id = $1 AND reviewed_at IS NULL",
    )
    .bind(id)
    .bind(reviewer)
    .bind(outcome)
    .bind(note)
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected() == 1)
}
