//! The access policy at the HTTP edge: building a request's `Decider` (with break-glass asks),
//! guarding loaded resources, and the `AuditNote` handlers fill for the audit layer.
//!
//! The 403-versus-404 rule: a caller whose role may not use an interaction on a resource type
//! at all gets 403 (that says nothing about any one resource). A caller who may, but is denied
//! one existing resource (no relationship, consent, a label, another trust's data), gets exactly
//! the 404 a missing resource gets — same status, same OperationOutcome — and the denial is
//! recorded only in the audit trail. Searches never 404: denied resources are simply not
//! matched (the filter is inside the index query), and `_include`d ones are left out.

use std::collections::{BTreeSet, HashSet};

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest};
use serde_json::Value;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::middleware::RequestId;
use crate::access::break_glass::{self, BreakGlassAsk};
use crate::access::org_grants;
use crate::access::{Caller, Decider, Facts, Grants, Principal, Scope, Verdict, Who};
use crate::fhir::outcome::IssueType;
use crate::store::VersionRow;

/// What the audit layer records about a request beyond what it sees itself; handlers fill it.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    pub interaction: Option<&'static str>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub patients: BTreeSet<String>,
    pub returned: i32,
    /// Why the policy withheld something (the request's answer does not say).
    pub denied: Option<String>,
    /// Purpose of use when not TREAT (ETREAT/BTG under break-glass).
    pub purpose: Option<String>,
    pub break_glass: Option<Uuid>,
    /// Whether a care relationship covered every patient touched.
    pub relationship: Option<bool>,
    /// Search parameters sent in a form body.
    pub query: Option<String>,
}

/// Updates the request's audit note.
pub fn note(req: &HttpRequest, f: impl FnOnce(&mut AuditNote)) {
    let mut ext = req.extensions_mut();
    if ext.get::<AuditNote>().is_none() {
        ext.insert(AuditNote::default());
    }
    f(ext.get_mut::<AuditNote>().expect("inserted above"));
}

pub fn caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    super::rest::caller(req)
}

/// A 404 indistinguishable from a missing resource.
pub fn hidden(what: &str) -> ApiError {
    ApiError::Interaction(crate::interactions::Error::NotFound(what.to_string()))
}

pub fn forbidden(req: &HttpRequest, why: &str) -> ApiError {
    crate::metrics::ACCESS_DENIALS
        .with_label_values(&["role"])
        .inc();
    note(req, |n| n.denied = Some(why.to_string()));
    ApiError::http(StatusCode::FORBIDDEN, IssueType::Forbidden, why.to_string())
}

/// The request's decider without patient facts yet (enough for role-level checks).
pub fn decider(state: &AppState, req: &HttpRequest) -> Result<Decider, ApiError> {
    let caller = caller(req)?;
    Ok(Decider::new(
        state.access.current(),
        Who::of(&caller, state.access.enforce),
        Grants::default(),
    ))
}

/// Role-level permission; 403 when the role may not `act` on `obj` at all.
pub fn require(d: &Decider, req: &HttpRequest, obj: &str, act: &str) -> Result<(), ApiError> {
    if d.permits(obj, act) {
        Ok(())
    } else {
        Err(forbidden(
            req,
            &format!("your role does not permit {act} of {obj}"),
        ))
    }
}

/// Loads the facts a user's request needs (relationships, consents, break-glass grants for
/// `scope`), first opening a break-glass grant if the request asks for one.
/// `break_glass_patient` is the one patient the request concerns, if it concerns one.
pub async fn load_grants(
    state: &AppState,
    req: &HttpRequest,
    d: &mut Decider,
    scope: Scope<'_>,
    break_glass_patient: Option<&str>,
) -> Result<(), ApiError> {
    let ask = BreakGlassAsk::from_headers(req.headers()).map_err(ApiError::bad_request)?;
    let (org, user) = match &d.who {
        Who::User { org, user_id, .. } => (org.clone(), user_id.clone()),
        _ => {
            if ask.is_some() {
                return Err(forbidden(req, "break-glass is for clinicians, not systems"));
            }
            return Ok(());
        }
    };
    if let Some(ask) = ask {
        require(d, req, "break-glass", "use")?;
        let Some(patient) = break_glass_patient else {
            return Err(ApiError::bad_request(
                "break-glass opens one patient's record: ask on a request for one patient \
                 (Patient/{id}, Patient/{id}/{type}, a resource of that patient, or a search \
                 with patient= or subject=)",
            ));
        };
        let Principal::User(u) = caller(req)?.principal else {
            unreachable!("Who::User comes from a user caller");
        };
        let request_id = req.extensions().get::<RequestId>().map(|r| r.0.clone());
        let minutes = d.policy.settings.break_glass_minutes;
        let id = break_glass::open(
            state.repository.store(),
            &u,
            patient,
            &ask,
            minutes,
            request_id.as_deref(),
        )
        .await
        .map_err(|e| ApiError::Interaction(e.into()))?;
        tracing::warn!(grant = %id, minutes, "break-glass grant opened");
        note(req, |n| {
            n.purpose = Some(ask.code.clone());
            n.break_glass = Some(id);
        });
    }
    let store = state.repository.store();
    let window = d.policy.settings.relationship_window_days;
    d.grants = match scope {
        Scope::All => {
            let generation = state.search.facts_generation();
            let (cached, glass) = tokio::try_join!(
                state.access.org_grants.get(store, &org, window, generation),
                org_grants::break_glass_grants(store, &org, &user),
            )
            .map_err(|e| ApiError::Interaction(e.into()))?;
            let mut grants = cached;
            if !glass.is_empty() {
                grants.cache_key = None;
                grants.break_glass = glass;
            }
            grants
        }
        Scope::FreshPatients(patients) => {
            let generation = state.search.facts_generation();
            let cached = state
                .access
                .org_grants
                .get(store, &org, window, generation)
                .await
                .map_err(|e| ApiError::Interaction(e.into()))?;
            let mut grants = cached.restricted_to(patients);
            if patients.iter().any(|p| grants.glass_could_matter(p)) {
                grants.break_glass = org_grants::break_glass_grants(store, &org, &user)
                    .await
                    .map_err(|e| ApiError::Interaction(e.into()))?
                    .into_iter()
                    .filter(|(p, _)| patients.contains(p))
                    .collect();
            }
            grants
        }
        scope => Grants::load(store, &org, Some(&user), window, &scope)
            .await
            .map_err(|e| ApiError::Interaction(e.into()))?,
    };
    Ok(())
}

/// The facts of a stored version.
pub fn facts(state: &AppState, row: &VersionRow) -> Option<Facts> {
    let content: Value = serde_json::from_str(row.content.as_deref()?).ok()?;
    Some(Facts::of(
        &state.search,
        &row.resource_type,
        &row.id,
        &content,
        row.author_org.as_deref(),
    ))
}

/// The decision on one stored version. A deletion carries no content to decide on: only the
/// organisation that deleted it sees the deletion.
pub fn verdict(state: &AppState, d: &Decider, row: &VersionRow, act: &str) -> Verdict {
    if matches!(d.who, Who::Unrestricted) {
        return Verdict::Allow { break_glass: None };
    }
    verdict_on(d, row, facts(state, row).as_ref(), act)
}

/// `verdict` with the version's facts already computed.
pub fn verdict_on(d: &Decider, row: &VersionRow, facts: Option<&Facts>, act: &str) -> Verdict {
    if matches!(d.who, Who::Unrestricted) {
        return Verdict::Allow { break_glass: None };
    }
    match facts {
        Some(f) => d.check(f, act),
        None => {
            let own = match &d.who {
                Who::User { org, .. } | Who::System { org, .. } => {
                    row.author_org.as_deref() == Some(org.as_str())
                }
                Who::Unrestricted => true,
            };
            if own {
                Verdict::Allow { break_glass: None }
            } else {
                Verdict::Deny(crate::access::Denial::OtherOrganisation)
            }
        }
    }
}

/// Records in the audit note what was released about which patients, and on what basis.
pub fn note_released(req: &HttpRequest, d: &Decider, patients: &[String], grant: Option<Uuid>) {
    let related = patients.iter().all(|p| d.grants.relationship.contains(p))
        || !matches!(d.who, Who::User { .. });
    let glass_used = grant.or_else(|| {
        patients
            .iter()
            .filter(|p| !d.grants.relationship.contains(*p))
            .find_map(|p| d.grants.break_glass.get(p).copied())
    });
    note(req, |n| {
        n.patients.extend(patients.iter().cloned());
        n.relationship = Some(n.relationship.unwrap_or(true) && related);
        if let Some(g) = glass_used {
            n.break_glass.get_or_insert(g);
            n.purpose.get_or_insert_with(|| "BTG".to_string());
        }
    });
}

pub fn note_denied(req: &HttpRequest, verdict: Verdict) {
    if let Verdict::Deny(why) = verdict {
        crate::metrics::ACCESS_DENIALS
            .with_label_values(&[&format!("{why:?}")])
            .inc();
        note(req, |n| {
            n.denied = Some(why.describe().to_string());
        });
    }
}

/// Guards one loaded version for a read-like interaction: loads the facts for its patients
/// (opening break-glass if asked), decides, and hides a denied resource behind a 404.
pub async fn guard_row(
    state: &AppState,
    req: &HttpRequest,
    d: &mut Decider,
    row: &VersionRow,
    what: &str,
) -> Result<(), ApiError> {
    guard_row_with(state, req, d, row, what, None).await
}

/// What the statement that read a row loaded with it: the facts (`Grants`) of the patients in
/// the set, and the row's own `Facts` when its stored compartment could be used.
pub type Preloaded = (Grants, HashSet<String>, Option<Facts>);

/// `guard_row` with facts already loaded for the patients in `covered` (by the statement that
/// read the row); used only when they cover the row's whole patient compartment.
pub async fn guard_row_with(
    state: &AppState,
    req: &HttpRequest,
    d: &mut Decider,
    row: &VersionRow,
    what: &str,
    preloaded: Option<Preloaded>,
) -> Result<(), ApiError> {
    let (preloaded, known) = match preloaded {
        Some((grants, covered, known)) => (Some((grants, covered)), known),
        None => (None, None),
    };
    let facts = known.or_else(|| facts(state, row));
    let patients: Vec<String> = facts
        .as_ref()
        .map(|f| f.patients.clone())
        .unwrap_or_default();
    match preloaded {
        Some((grants, covered)) if patients.iter().all(|p| covered.contains(p)) => {
            d.grants = grants;
        }
        _ => {
            let single = (patients.len() == 1).then(|| patients[0].as_str());
            load_grants(state, req, d, Scope::Patients(&patients), single).await?;
        }
    }
    let v = verdict_on(d, row, facts.as_ref(), "read");
    match v {
        Verdict::Allow { break_glass } => {
            note_released(req, d, &patients, break_glass);
            note(req, |n| n.returned = 1);
            Ok(())
        }
        Verdict::Deny(_) => {
            note(req, |n| n.patients.extend(patients.iter().cloned()));
            note_denied(req, v);
            Err(hidden(what))
        }
    }
}

/// Patient ids a resource's JSON names (`Patient/{id}` references, or itself): a cheap scan
/// for the audit record of search results, which the index filter already decided.
pub fn referenced_patients(
    resource_type: &str,
    id: &str,
    content: &str,
    out: &mut BTreeSet<String>,
) {
    if resource_type == "Patient" {
        out.insert(id.to_string());
    }
    let mut rest = content;
    while let Some(i) = rest.find("\"Patient/") {
        rest = &rest[i + 9..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '.'))
            .unwrap_or(rest.len());
        if end > 0 && rest[end..].starts_with('"') {
            out.insert(rest[..end].to_string());
        }
    }
}
