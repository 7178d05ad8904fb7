//! Identity operations over HTTP: `Patient/$match`, the longitudinal view
//! (`Patient/{id}/$everything`, `Patient/{id}/$summary`), the review queue
//! (`$identity-review`) and corrections (`Person/$merge`, `Person/$unmerge`).
//!
//! Every longitudinal read gathers resources through [`gather`]: the one place where access
//! control adds its index filter (the `policy` argument of `Engine::search`) and any
//! per-resource check.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::AppState;
use super::body::read_body;
use super::error::ApiError;
use super::response::{BundleEntry, BundleLink, BundleOut, raw};
use super::rest::{author, caller};
use crate::access::{Caller, Decider, Principal};
use crate::fhir::outcome::IssueType;
use crate::identity::demographics::Demographics;
use crate::identity::review::{self, ReviewError};
use crate::identity::scoring::{self, Grade};
use crate::identity::{link, view};
use crate::interactions::Repository;
use crate::search::compartments::patient_compartment_types;
use crate::search::engine::{Engine, SearchResult};
use crate::search::query::{Clause, SearchQuery, parse};
use crate::store::Author;

pub const MATCH_GRADE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";
/// On a `$summary` section entry: a trust that reported the fact (repeated when several did).
pub const SOURCE_EXT: &str =
    "https://fhir.shcr.example.nhs.uk/StructureDefinition/source-organization";
/// National RBAC activity "Amend Patient Demographics": who may decide links.
pub const REVIEWER_ACTIVITY: &str = "B0825";

impl From<ReviewError> for ApiError {
    fn from(e: ReviewError) -> ApiError {
        match e {
            ReviewError::NotFound(m) => {
                ApiError::http(StatusCode::NOT_FOUND, IssueType::NotFound, m)
            }
            ReviewError::Conflict(m) => {
                ApiError::http(StatusCode::CONFLICT, IssueType::Conflict, m)
            }
            ReviewError::Invalid(m) => ApiError::bad_request(m),
            ReviewError::Store(s) => ApiError::Interaction(s.into()),
        }
    }
}

fn db_error(e: sqlx::Error) -> ApiError {
    ApiError::Interaction(crate::store::StoreError::Database(e).into())
}

fn pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("the query string is malformed: {e}")))
}

/// Link decisions are for people holding the demographics-amending activity.
fn require_reviewer(req: &HttpRequest) -> Result<Author, ApiError> {
    let c: Caller = caller(req)?;
    let allowed = matches!(&c.principal, Principal::User(u) if u.activities.iter().any(|a| a == REVIEWER_ACTIVITY));
    if !allowed {
        return Err(ApiError::http(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            format!(
                "identity link decisions need a user role with activity {REVIEWER_ACTIVITY} (Amend Patient Demographics)"
            ),
        ));
    }
    author(req)
}

/// The access decision for a longitudinal request over `patient_ids` (the records of one
/// person): the caller's grants loaded for those records, then widened to the person. A care
/// relationship with, or a break-glass grant for, any trust's record of the person covers every
/// record of that person (that is what a shared care record is for), and an opt-out or a
/// denial of the caller's organisation on any record covers them all (the stricter reading).
pub(crate) async fn person_decider(
    state: &AppState,
    req: &HttpRequest,
    patient_ids: &[String],
) -> Result<Decider, ApiError> {
    let mut d = super::access::decider(state, req)?;
    super::access::load_grants(
        state,
        req,
        &mut d,
        crate::access::Scope::Patients(patient_ids),
        patient_ids.first().map(String::as_str),
    )
    .await?;
    widen_to_persons(&mut d, &[patient_ids.to_vec()]);
    Ok(d)
}

/// Every resource of the given patients' compartments matching `params` (`_type`, `_count`,
/// `_cursor`, `_lastUpdated` …), through the search index, filtered by the caller's access
/// decision before paging (types the role may not search are left out).
pub(crate) async fn gather(
    state: &AppState,
    req: &HttpRequest,
    d: &Decider,
    patient_ids: &[String],
    types: Vec<String>,
    params: &[(String, String)],
) -> Result<(SearchQuery, SearchResult), ApiError> {
    let types: Vec<String> = types
        .into_iter()
        .filter(|t| d.permits(t, "search"))
        .collect();
    let mut q =
        parse(&state.search.registry, types, params, false).map_err(|e| ApiError::Http {
            status: StatusCode::BAD_REQUEST,
            issue: e.issue(),
        })?;
    q.clauses.push(Clause::AnyCompartment(
        patient_ids.iter().map(|p| format!("Patient/{p}")).collect(),
    ));
    let engine = Engine {
        index: &state.search,
        store: state.repository.store(),
    };
    let result = engine
        .search(&q, d.search_filter(&state.search.fields))
        .await?;
    super::access::note_released(req, d, patient_ids, None);
    super::access::note(req, |n| {
        n.interaction = Some("operation");
        n.returned += result.matches.len() as i32;
    });
    Ok((q, result))
}

/// Types asked for with `_type` (checked), or every compartment type.
fn requested_types(params: &[(String, String)]) -> Result<Vec<String>, ApiError> {
    let asked: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "_type")
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect();
    if asked.is_empty() {
        // Provenance is in the compartment too (it targets the records), but one per write
        // would double every page: it is returned when asked for (`_type=Provenance`).
        return Ok(patient_compartment_types()
            .into_iter()
            .filter(|t| t != "Provenance")
            .collect());
    }
    for t in &asked {
        Repository::check_type(t)?;
    }
    Ok(asked)
}

/// `GET [base]/Patient/{id}/$everything?_since&_type&_count`: every resource of every Patient
/// linked to this one, across trusts, paged with `next` links.
pub async fn everything(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    state.repository.read("Patient", &id).await?;
    let ids = view::linked_ids(state.repository.store().pool(), &id)
        .await
        .map_err(db_error)?;
    let given = pairs(req.query_string())?;
    let types = requested_types(&given)?;
    let mut params: Vec<(String, String)> = Vec::new();
    for (k, v) in &given {
        match k.as_str() {
            "_since" => {
                crate::fhir::instant::parse_instant(v).ok_or_else(|| {
                    ApiError::bad_request(format!("_since '{v}' is not an instant"))
                })?;
                params.push(("_lastUpdated".into(), format!("ge{v}")));
            }
            "_count" | "_cursor" => params.push((k.clone(), v.clone())),
            "_type" | "_format" | "_pretty" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "$everything takes _since, _type and _count; '{other}' is not supported"
                )));
            }
        }
    }
    let d = person_decider(&state, &req, &ids).await?;
    let (_, result) = gather(&state, &req, &d, &ids, types, &params).await?;
    let path = format!("{}/Patient/{id}/$everything", state.base_url);
    let link = |cursor: Option<&str>| {
        let mut p: Vec<(String, String)> = given
            .iter()
            .filter(|(k, _)| k != "_cursor")
            .cloned()
            .collect();
        if let Some(c) = cursor {
            p.push(("_cursor".into(), c.to_string()));
        }
        let query = serde_urlencoded::to_string(&p).expect("encodable");
        if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        }
    };
    let mut bundle = BundleOut::new("searchset");
    bundle.total = result.total.map(|t| t as i64);
    let current = given
        .iter()
        .find(|(k, _)| k == "_cursor")
        .map(|(_, v)| v.as_str());
    bundle.link.push(BundleLink {
        relation: "self",
        url: link(current),
    });
    if let Some(next) = &result.next {
        bundle.link.push(BundleLink {
            relation: "next",
            url: link(Some(next)),
        });
    }
    for row in &result.matches {
        bundle.entry.push(BundleEntry {
            full_url: Some(format!(
                "{}/{}/{}",
                state.base_url, row.resource_type, row.id
            )),
            resource: row.content.clone().and_then(raw),
            search: Some(json!({"mode": "match"})),
            ..Default::default()
        });
    }
    Ok(bundle.into_response())
}

/// `POST [base]/Patient/$match`: scored candidates for a Patient in a Parameters resource.
pub async fn patient_match(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller(&req)?;
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let input: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if input["resourceType"] != "Parameters" {
        return Err(ApiError::bad_request("$match takes a Parameters resource"));
    }
    let params = input["parameter"].as_array().cloned().unwrap_or_default();
    let find = |name: &str| params.iter().find(|p| p["name"] == name);
    let patient = find("resource")
        .map(|p| p["resource"].clone())
        .filter(|r| r["resourceType"] == "Patient")
        .ok_or_else(|| {
            ApiError::bad_request("$match needs parameter 'resource' holding a Patient")
        })?;
    let only_certain = find("onlyCertainMatches")
        .and_then(|p| p["valueBoolean"].as_bool())
        .unwrap_or(false);
    let count = match find("count") {
        None => 10,
        Some(p) => p["valueInteger"]
            .as_u64()
            .filter(|c| (1..=100).contains(c))
            .ok_or_else(|| ApiError::bad_request("count must be an integer from 1 to 100"))?
            as usize,
    };
    let d = Demographics::from_patient(&patient);
    let mut tx = state
        .repository
        .store()
        .begin_write()
        .await
        .map_err(|e| ApiError::Interaction(e.into()))?;
    // Read-only: the transaction is dropped (rolled back) after the look-up.
    let found = link::candidates(&mut tx, "", &d)
        .await
        .map_err(|e| ApiError::Interaction(e.into()))?;
    drop(tx);
    let mut scored: Vec<(link::Candidate, scoring::PairScore)> = found
        .into_iter()
        .map(|c| {
            let s = scoring::compare(&d, &c.demographics);
            (c, s)
        })
        .filter(|(_, s)| match s.grade {
            Grade::Certain => true,
            Grade::Probable | Grade::Possible => !only_certain,
            Grade::CertainlyNot => false,
        })
        .collect();
    scored.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
    scored.truncate(count);
    let mut bundle = BundleOut::new("searchset");
    bundle.total = Some(scored.len() as i64);
    let possible = scoring::config().thresholds.possible;
    // Candidates are other trusts' records: each is released only as a read would be.
    let d = super::access::decider(&state, &req)?;
    for (c, s) in scored {
        let row = match state.repository.read("Patient", &c.patient_id).await {
            Ok(row) => row,
            Err(_) => continue,
        };
        let verdict = super::access::verdict(&state, &d, &row, "read");
        if !verdict.allowed() {
            super::access::note_denied(&req, verdict);
            continue;
        }
        // log2 likelihood ratio to 0..1: one half at the review threshold.
        let probability = if s.grade == Grade::Certain {
            1.0
        } else {
            1.0 / (1.0 + (-(s.score - possible) / 2.0).exp2())
        };
        bundle.entry.push(BundleEntry {
            full_url: Some(format!("{}/Patient/{}", state.base_url, row.id)),
            resource: row.content.and_then(raw),
            search: Some(json!({
                "mode": "match",
                "score": (probability * 1000.0).round() / 1000.0,
                "extension": [{"url": MATCH_GRADE_EXT, "valueCode": s.grade.code()}],
            })),
            ..Default::default()
        });
    }
    Ok(bundle.into_response())
}

/// `GET [base]/$identity-review?_count`: open possible matches, oldest first.
pub async fn review_list(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    require_reviewer(&req)?;
    let count = pairs(req.query_string())?
        .into_iter()
        .find(|(k, _)| k == "_count")
        .map(|(_, v)| v.parse::<i64>().ok().filter(|c| (1..=1000).contains(c)))
        .unwrap_or(Some(100))
        .ok_or_else(|| ApiError::bad_request("_count must be from 1 to 1000"))?;
    let items = review::open_items(state.repository.store(), count).await?;
    let parameter: Vec<Value> = items
        .iter()
        .map(|i| {
            json!({"name": "item", "part": [
                {"name": "id", "valueInteger": i.id},
                {"name": "patient", "valueReference": {"reference": format!("Patient/{}", i.patient)}},
                {"name": "candidate", "valueReference": {"reference": format!("Patient/{}", i.candidate)}},
                {"name": "score", "valueDecimal": (i.score * 100.0).round() / 100.0},
                {"name": "reason", "valueCode": i.reason},
                {"name": "created", "valueInstant": i.created},
            ]})
        })
        .collect();
    Ok(parameters_response(
        json!({"resourceType": "Parameters", "parameter": parameter}),
    ))
}

fn parameters_response(v: Value) -> HttpResponse {
    super::response::json_response(StatusCode::OK, v.to_string())
}

async fn read_parameters(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Vec<Value>, ApiError> {
    let body = read_body(req, payload, state.max_body_bytes).await?;
    let input: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if input["resourceType"] != "Parameters" {
        return Err(ApiError::bad_request(
            "the operation takes a Parameters resource",
        ));
    }
    Ok(input["parameter"].as_array().cloned().unwrap_or_default())
}

fn param<'a>(params: &'a [Value], name: &str) -> Option<&'a Value> {
    params.iter().find(|p| p["name"] == name)
}

/// Every decision needs a reason a later reviewer can read.
fn reason(params: &[Value]) -> Result<String, ApiError> {
    param(params, "reason")
        .and_then(|p| p["valueString"].as_str())
        .map(str::trim)
        .filter(|r| !r.is_empty() && r.len() <= 1000)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::bad_request(
                "parameter 'reason' (valueString, 1 to 1000 characters) is required",
            )
        })
}

fn person_ref(params: &[Value], name: &str) -> Result<String, ApiError> {
    param(params, name)
        .and_then(|p| p["valueReference"]["reference"].as_str())
        .and_then(|r| r.strip_prefix("Person/"))
        .filter(|id| crate::fhir::id::is_valid_id(id))
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "parameter '{name}' must be a valueReference to Person/{{id}}"
            ))
        })
}

fn decision_response(o: &review::DecisionOutcome) -> HttpResponse {
    let mut parameter = vec![json!({"name": "decision", "valueInteger": o.decision})];
    for p in &o.persons {
        parameter.push(
            json!({"name": "person", "valueReference": {"reference": format!("Person/{p}")}}),
        );
    }
    parameters_response(json!({"resourceType": "Parameters", "parameter": parameter}))
}

/// `POST [base]/$identity-review`: `item` (id), `decision` (`confirm` | `reject`), `reason`.
pub async fn review_decide(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let actor = require_reviewer(&req)?;
    let params = read_parameters(&state, &req, payload).await?;
    let item = param(&params, "item")
        .and_then(|p| p["valueInteger"].as_i64())
        .ok_or_else(|| ApiError::bad_request("parameter 'item' (valueInteger) is required"))?;
    let confirm = match param(&params, "decision").and_then(|p| p["valueCode"].as_str()) {
        Some("confirm") => true,
        Some("reject") => false,
        _ => {
            return Err(ApiError::bad_request(
                "parameter 'decision' must be valueCode confirm or reject",
            ));
        }
    };
    let why = reason(&params)?;
    let outcome =
        review::decide_item(state.repository.store(), item, confirm, &actor, &why).await?;
    Ok(decision_response(&outcome))
}

/// `POST [base]/Person/$merge`: `source` and `target` Person references, `reason`.
pub async fn person_merge(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let actor = require_reviewer(&req)?;
    let params = read_parameters(&state, &req, payload).await?;
    let source = person_ref(&params, "source")?;
    let target = person_ref(&params, "target")?;
    let why = reason(&params)?;
    let outcome = review::merge(state.repository.store(), &source, &target, &actor, &why).await?;
    Ok(decision_response(&outcome))
}

/// `POST [base]/Person/$unmerge`: `decision` (the merge's id from `$merge`), `reason`.
pub async fn person_unmerge(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let actor = require_reviewer(&req)?;
    let params = read_parameters(&state, &req, payload).await?;
    let decision = param(&params, "decision")
        .and_then(|p| p["valueInteger"].as_i64())
        .ok_or_else(|| ApiError::bad_request("parameter 'decision' (valueInteger) is required"))?;
    let why = reason(&params)?;
    let outcome = review::unmerge(state.repository.store(), decision, &actor, &why).await?;
    Ok(decision_response(&outcome))
}

/// Rewrites `name:mdm=Patient/x` (a reference to a patient) into `name=Patient/a,Patient/b…`
/// over every record linked with x, so a search covers the person across trusts. Returns the
/// rewritten parameters and each expanded person's records (for [`widen_to_persons`]).
pub async fn expand_mdm(
    state: &AppState,
    params: Vec<(String, String)>,
) -> Result<(Vec<(String, String)>, Vec<Vec<String>>), ApiError> {
    let mut out = Vec::with_capacity(params.len());
    let mut persons = Vec::new();
    for (name, value) in params {
        let Some(base) = name.strip_suffix(":mdm") else {
            out.push((name, value));
            continue;
        };
        let mut expanded = Vec::new();
        for v in value.split(',') {
            let id = v.strip_prefix("Patient/").unwrap_or(v);
            if !crate::fhir::id::is_valid_id(id) {
                return Err(ApiError::bad_request(format!(
                    "{name}: '{v}' is not a Patient reference"
                )));
            }
            let linked = view::linked_ids(state.repository.store().pool(), id)
                .await
                .map_err(db_error)?;
            expanded.extend(linked.iter().map(|l| format!("Patient/{l}")));
            persons.push(linked);
        }
        expanded.dedup();
        out.push((base.to_string(), expanded.join(",")));
    }
    Ok((out, persons))
}

/// A care relationship with (or break-glass grant for) one record of a person covers every
/// record of that person; an opt-out or organisation denial on one covers them all.
pub fn widen_to_persons(d: &mut Decider, persons: &[Vec<String>]) {
    for ids in persons {
        let g = &mut d.grants;
        let widen = |set: &mut std::collections::HashSet<String>| {
            if ids.iter().any(|p| set.contains(p)) {
                set.extend(ids.iter().cloned());
            }
        };
        // Widened facts are no longer the cached organisation-wide ones.
        g.cache_key = None;
        widen(std::sync::Arc::make_mut(&mut g.relationship));
        widen(std::sync::Arc::make_mut(&mut g.opted_out));
        widen(std::sync::Arc::make_mut(&mut g.org_denied));
        for denied in std::sync::Arc::make_mut(&mut g.label_denied).values_mut() {
            widen(denied);
        }
        if let Some(grant) = ids.iter().find_map(|p| g.break_glass.get(p).copied()) {
            for p in ids {
                g.break_glass.entry(p.clone()).or_insert(grant);
            }
        }
    }
}
