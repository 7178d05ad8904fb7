//! FHIR search over HTTP: `GET [base]/{type}?…`, `POST [base]/{type}/_search`, compartment
//! search `GET [base]/Patient/{id}/{type}?…`, and system search `GET [base]?_type=…`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

use super::AppState;
use super::body::read_body;
use super::error::ApiError;
use super::response::{BundleEntry, BundleLink, BundleOut, raw};
use crate::fhir::outcome::{IssueType, operation_outcome};
use crate::interactions::Repository;
use crate::search::engine::{Engine, SearchError, compartment_clause};
use crate::search::query::{SearchQuery, Summary, parse};
use crate::store::VersionRow;

fn lenient(req: &HttpRequest) -> bool {
    req.headers()
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.split([',', ';']).any(|x| x.trim() == "handling=lenient"))
}

fn pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("the query string is malformed: {e}")))
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> ApiError {
        match e {
            SearchError::Index(i) => ApiError::http(
                StatusCode::SERVICE_UNAVAILABLE,
                IssueType::Transient,
                i.to_string(),
            ),
            SearchError::Plan(crate::search::plan::PlanError::TooCostly(m)) => {
                ApiError::http(StatusCode::BAD_REQUEST, IssueType::TooCostly, m)
            }
            SearchError::BadCursor => ApiError::bad_request(e.to_string()),
            SearchError::Store(s) => ApiError::Interaction(s.into()),
            other => {
                tracing::error!(error = %other, "search failed");
                ApiError::http(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    IssueType::Exception,
                    "the search failed on the server",
                )
            }
        }
    }
}

/// `_summary` / `_elements` applied to one resource; SUBSETTED-tags what was cut.
fn shape(row: &VersionRow, q: &SearchQuery) -> Option<String> {
    let content = row.content.clone()?;
    if q.summary == Summary::False && q.elements.is_empty() {
        return Some(content);
    }
    let Ok(Value::Object(resource)) = serde_json::from_str::<Value>(&content) else {
        return Some(content);
    };
    let keep = |name: &str| -> bool {
        if matches!(name, "resourceType" | "id" | "meta") {
            return true;
        }
        if !q.elements.is_empty() {
            return q
                .elements
                .iter()
                .any(|e| e == name || is_choice_of(name, e));
        }
        match q.summary {
            Summary::Text => matches!(name, "text" | "id" | "meta"),
            Summary::Data => name != "text",
            Summary::True => crate::validation::summary_elements(&row.resource_type)
                .iter()
                .any(|e| {
                    e == name
                        || e.strip_suffix("[x]")
                            .is_some_and(|stem| is_choice_of(name, stem))
                }),
            _ => true,
        }
    };
    let mut out = Map::new();
    for (k, v) in resource {
        let base = k.strip_prefix('_').unwrap_or(&k);
        if keep(base) {
            out.insert(k, v);
        }
    }
    let meta = out.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
                "display": "Resource encoded in summary mode"
            }));
        }
    }
    Some(Value::Object(out).to_string())
}

/// `valueQuantity` is a form of `value` (`value[x]`).
fn is_choice_of(name: &str, stem: &str) -> bool {
    name.len() > stem.len()
        && name.starts_with(stem)
        && name[stem.len()..].starts_with(|c: char| c.is_ascii_uppercase())
}

/// The one patient a search names through `patient=` or `subject=` (for a break-glass ask).
fn single_patient(params: &[(String, String)]) -> Option<String> {
    let mut named = params
        .iter()
        .filter(|(k, _)| k == "patient" || k == "subject")
        .map(|(_, v)| v.trim_start_matches("Patient/").to_string());
    let first = named.next()?;
    (named.next().is_none() && !first.contains(',')).then_some(first)
}

async fn run(
    state: &AppState,
    req: &HttpRequest,
    types: Vec<String>,
    params: Vec<(String, String)>,
    compartment: Option<&str>,
    path: &str,
) -> Result<HttpResponse, ApiError> {
    // `patient:mdm=Patient/x`: the reference stands for every record linked with x.
    let (params, persons) = super::identity::expand_mdm(state, params).await?;
    let mut q = parse(&state.search.registry, types, &params, lenient(req)).map_err(|e| {
        ApiError::Http {
            status: StatusCode::BAD_REQUEST,
            issue: e.issue(),
        }
    })?;
    if let Some(patient) = compartment {
        q.clauses.push(compartment_clause(patient));
    }
    let mut d = super::access::decider(state, req)?;
    for t in &q.resource_types {
        super::access::require(&d, req, t, "search")?;
    }
    // A compartment search concerns one patient: only that patient's facts count (and that is
    // the patient a break-glass ask opens).
    let one_patient = compartment
        .map(str::to_string)
        .or_else(|| single_patient(&params));
    let scoped: Vec<String> = compartment.map(str::to_string).into_iter().collect();
    let scope = match compartment {
        Some(_) => crate::access::Scope::FreshPatients(&scoped),
        None => crate::access::Scope::All,
    };
    let engine = Engine {
        index: &state.search,
        store: state.repository.store(),
    };
    // Fresh first: organisation-wide facts are valid for the index's state after the wait.
    engine.wait_fresh().await?;
    super::access::load_grants(state, req, &mut d, scope, one_patient.as_deref()).await?;
    // `:mdm`: the person's records are decided together.
    super::identity::widen_to_persons(&mut d, &persons);
    let mut result = engine
        .search_fresh(&q, d.search_filter(&state.search.fields))
        .await?;
    // Included resources are loaded by key, not matched through the filtered query: decide
    // each like a read.
    let before = result.includes.len();
    result.includes.retain(|row| {
        let v = super::access::verdict(state, &d, row, "read");
        if !v.allowed() {
            super::access::note_denied(req, v);
        }
        v.allowed()
    });
    if result.includes.len() < before {
        tracing::debug!(
            withheld = before - result.includes.len(),
            "includes withheld"
        );
    }
    let mut patients = std::collections::BTreeSet::new();
    for row in result.matches.iter().chain(&result.includes) {
        if let Some(c) = &row.content {
            super::access::referenced_patients(&row.resource_type, &row.id, c, &mut patients);
        }
    }
    let patients: Vec<String> = patients.into_iter().collect();
    super::access::note_released(req, &d, &patients, None);
    super::access::note(req, |n| {
        n.interaction = Some("search");
        n.returned = (result.matches.len() + result.includes.len()) as i32;
    });
    let link = |cursor: Option<&str>| {
        let mut params = q.echo.clone();
        if let Some(c) = cursor {
            params.push(("_cursor".into(), c.to_string()));
        }
        let query = serde_urlencoded::to_string(&params).expect("encodable");
        if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        }
    };
    let mut bundle = BundleOut::new("searchset");
    bundle.total = result.total.map(|t| t as i64);
    bundle.link.push(BundleLink {
        relation: "self",
        url: link(q.cursor.as_deref()),
    });
    bundle.link.push(BundleLink {
        relation: "first",
        url: link(None),
    });
    if let Some(next) = &result.next {
        bundle.link.push(BundleLink {
            relation: "next",
            url: link(Some(next)),
        });
    }
    if let Some(previous) = &result.previous {
        bundle.link.push(BundleLink {
            relation: "previous",
            url: link(Some(previous)),
        });
    }
    for (rows, mode) in [(&result.matches, "match"), (&result.includes, "include")] {
        for row in rows {
            bundle.entry.push(BundleEntry {
                full_url: Some(format!(
                    "{}/{}/{}",
                    state.base_url, row.resource_type, row.id
                )),
                resource: shape(row, &q).and_then(raw),
                search: Some(json!({ "mode": mode })),
                request: None,
                response: None,
            });
        }
    }
    if !q.warnings.is_empty() {
        bundle.entry.push(BundleEntry {
            resource: raw(operation_outcome(&q.warnings).to_string()),
            search: Some(json!({ "mode": "outcome" })),
            ..Default::default()
        });
    }
    Ok(bundle.into_response())
}

pub async fn search_type(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let resource_type = path.into_inner();
    Repository::check_type(&resource_type)?;
    let params = pairs(req.query_string())?;
    let url = format!("{}/{resource_type}", state.base_url);
    run(&state, &req, vec![resource_type], params, None, &url).await
}

/// `POST [base]/{type}/_search`: parameters in a form body (and/or the URL).
pub async fn search_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let resource_type = path.into_inner();
    Repository::check_type(&resource_type)?;
    let body = read_body(&req, payload, state.max_body_bytes).await?;
    let mut params = pairs(req.query_string())?;
    let form = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("the form body is not UTF-8"))?;
    params.extend(pairs(form)?);
    super::access::note(&req, |n| n.query = Some(form.to_string()));
    let url = format!("{}/{resource_type}", state.base_url);
    run(&state, &req, vec![resource_type], params, None, &url).await
}

pub async fn search_compartment(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (compartment, id, resource_type) = path.into_inner();
    if compartment != "Patient" {
        return Err(ApiError::http(
            StatusCode::NOT_FOUND,
            IssueType::NotSupported,
            format!("{compartment} compartments are not supported; Patient compartments are"),
        ));
    }
    Repository::check_id(&id)?;
    Repository::check_type(&resource_type)?;
    let params = pairs(req.query_string())?;
    let url = format!("{}/Patient/{id}/{resource_type}", state.base_url);
    run(&state, &req, vec![resource_type], params, Some(&id), &url).await
}

/// `GET [base]?_type=A,B&…`: parameters common to the types.
pub async fn search_system(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = pairs(req.query_string())?;
    let types: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "_type")
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter(|t| !t.is_empty())
        .collect();
    if types.is_empty() {
        return Err(ApiError::bad_request(
            "a whole-system search needs _type (e.g. _type=Patient,Practitioner)",
        ));
    }
    for t in &types {
        Repository::check_type(t)?;
    }
    let url = state.base_url.clone();
    run(&state, &req, types, params, None, &url).await
}
