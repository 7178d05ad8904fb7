//! `transaction` and `batch` Bundles: turning entries into requests and results into the
//! response Bundle.

use serde_json::{Value, json};

use crate::fhir::id::{etag, parse_etag_version};
use crate::fhir::instant::format_instant;
use crate::fhir::outcome::{Issue, IssueType, operation_outcome};
use crate::store::Author;

use super::Repository;
use super::error::Error;
use super::transaction::{EntryAction, EntryOutcome, EntryRequest, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Transaction,
    Batch,
}

/// `Prefer: return=…`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Internal Server Error",
    }
}

fn entry_error(index: usize, message: impl Into<String>) -> Error {
    Error::Invalid(vec![
        Issue::error(IssueType::Invalid, message).at(format!("Bundle.entry[{index}]")),
    ])
}

/// Strips this server's base from an absolute request URL; relative URLs pass through.
fn relative_url<'a>(url: &'a str, base_url: &str) -> &'a str {
    url.strip_prefix(base_url)
        .map(|rest| rest.trim_start_matches('/'))
        .unwrap_or(url)
}

/// One entry of a transaction/batch Bundle as a request.
fn parse_entry(index: usize, entry: &Value, base_url: &str) -> Result<EntryRequest, Error> {
    let request = entry
        .get("request")
        .ok_or_else(|| entry_error(index, "entry.request is required in a transaction or batch"))?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| entry_error(index, "entry.request.method is required"))?;
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| entry_error(index, "entry.request.url is required"))?;
    let url = relative_url(url, base_url);
    let full_url = entry
        .get("fullUrl")
        .and_then(Value::as_str)
        .map(str::to_string);
    let resource = entry.get("resource").cloned();
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(v) => Some(parse_etag_version(v).ok_or_else(|| {
            entry_error(
                index,
                format!("entry.request.ifMatch '{v}' is not an ETag like W/\"3\""),
            )
        })?),
        None => None,
    };
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let resource_type = segments
        .first()
        .ok_or_else(|| {
            entry_error(
                index,
                format!("entry.request.url '{url}' names no resource type"),
            )
        })?
        .to_string();
    let need_resource = || {
        resource
            .clone()
            .ok_or_else(|| entry_error(index, format!("a {method} entry needs a resource")))
    };
    let action = match (method, segments.as_slice(), query) {
        ("POST", [_], None) => EntryAction::Create {
            resource: need_resource()?,
            if_none_exist: request
                .get("ifNoneExist")
                .and_then(Value::as_str)
                .map(str::to_string),
        },
        ("PUT", [_, id], None) => EntryAction::Update {
            target: Target::Id(id.to_string()),
            resource: need_resource()?,
            if_match,
        },
        ("PUT", [_], Some(q)) => EntryAction::Update {
            target: Target::Criteria(q.to_string()),
            resource: need_resource()?,
            if_match,
        },
        ("DELETE", [_, id], None) => EntryAction::Delete {
            target: Target::Id(id.to_string()),
            if_match,
        },
        ("DELETE", [_], Some(q)) => EntryAction::Delete {
            target: Target::Criteria(q.to_string()),
            if_match,
        },
        ("GET", [_, id], None) => EntryAction::Read {
            id: id.to_string(),
            version: None,
        },
        ("GET", [_, id, "_history", v], None) => EntryAction::Read {
            id: id.to_string(),
            version: Some(v.to_string()),
        },
        ("GET" | "HEAD" | "PATCH", ..) => {
            return Err(Error::NotSupported(format!(
                "Bundle.entry[{index}]: {method} {url} is not supported in a Bundle (supported: read, vread, create, update, delete and their conditional forms)"
            )));
        }
        _ => {
            return Err(entry_error(
                index,
                format!("entry.request '{method} {url}' is not a valid FHIR interaction"),
            ));
        }
    };
    Ok(EntryRequest {
        resource_type,
        full_url,
        action,
    })
}

fn entry_response(outcome: &EntryOutcome, prefer: ReturnPreference) -> Value {
    let mut response = json!({
        "status": format!("{} {}", outcome.status, reason_phrase(outcome.status)),
    });
    if let (Some(id), Some(v)) = (&outcome.id, outcome.version_id) {
        if outcome.status != 204 {
            response["location"] = json!(format!("{}/{id}/_history/{v}", outcome.resource_type));
        }
        response["etag"] = json!(etag(v));
    }
    if let Some(t) = outcome.last_updated {
        response["lastModified"] = json!(format_instant(t));
    }
    let mut entry = json!({});
    if let Some(id) = &outcome.id {
        entry["fullUrl"] = json!(format!("{}/{id}", outcome.resource_type));
    }
    match prefer {
        ReturnPreference::Representation => {
            if let Some(content) = &outcome.content
                && let Ok(resource) = serde_json::from_str::<Value>(content)
            {
                entry["resource"] = resource;
            }
        }
        ReturnPreference::OperationOutcome => {
            response["outcome"] = operation_outcome(&[Issue::information(
                IssueType::Informational,
                outcome.message.clone(),
            )]);
        }
        ReturnPreference::Minimal => {}
    }
    entry["response"] = response;
    entry
}

fn error_entry(error: &Error) -> Value {
    let status = error.status();
    json!({
        "response": {
            "status": format!("{status} {}", reason_phrase(status)),
            "outcome": operation_outcome(&error.issues()),
        }
    })
}

/// Per-entry results of a processed Bundle, in entry order.
pub struct BundleResults {
    pub kind: BundleKind,
    pub entries: Vec<Result<EntryOutcome, Error>>,
}

impl BundleResults {
    /// The `transaction-response` / `batch-response` Bundle.
    pub fn response(&self, prefer: ReturnPreference) -> Value {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .map(|r| match r {
                Ok(o) => entry_response(o, prefer),
                Err(e) => error_entry(e),
            })
            .collect();
        json!({
            "resourceType": "Bundle",
            "id": crate::fhir::id::new_id(),
            "type": match self.kind {
                BundleKind::Transaction => "transaction-response",
                BundleKind::Batch => "batch-response",
            },
            "entry": entries,
        })
    }
}

impl Repository {
    /// Processes a `transaction` or `batch` Bundle. A transaction either applies every entry or
    /// returns the error of the entry that failed; a batch reports each entry's own result.
    pub async fn process_bundle(
        &self,
        bundle: &Value,
        author: &Author,
        base_url: &str,
    ) -> Result<BundleResults, Error> {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(Error::Invalid(vec![
                Issue::error(
                    IssueType::Invalid,
                    "POST to the base URL takes a Bundle of type transaction or batch",
                )
                .at("Bundle.resourceType"),
            ]));
        }
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => BundleKind::Transaction,
            Some("batch") => BundleKind::Batch,
            other => {
                return Err(Error::Invalid(vec![
                    Issue::error(
                        IssueType::Invalid,
                        format!(
                            "Bundle.type must be transaction or batch to be processed, got {}",
                            other.unwrap_or("nothing")
                        ),
                    )
                    .at("Bundle.type"),
                ]));
            }
        };
        let entries: &[Value] = match bundle.get("entry") {
            None => &[],
            Some(Value::Array(entries)) => entries,
            Some(_) => {
                return Err(Error::Invalid(vec![
                    Issue::error(IssueType::Structure, "Bundle.entry must be an array")
                        .at("Bundle.entry"),
                ]));
            }
        };
        let parsed: Vec<Result<EntryRequest, Error>> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| parse_entry(i, e, base_url))
            .collect();
        let entries = match kind {
            BundleKind::Transaction => {
                let requests = parsed.into_iter().collect::<Result<Vec<_>, _>>()?;
                self.execute_bundle_entries(&requests, author)
                    .await
                    .map_err(|f| match f.index {
                        Some(i) => locate(f.error.at_entry(i), i),
                        None => f.error,
                    })?
                    .into_iter()
                    .map(Ok)
                    .collect()
            }
            BundleKind::Batch => {
                let mut out = Vec::with_capacity(parsed.len());
                for (i, p) in parsed.into_iter().enumerate() {
                    out.push(match p {
                        Ok(request) => self
                            .execute_bundle_entries(std::slice::from_ref(&request), author)
                            .await
                            .map(|mut o| o.remove(0))
                            .map_err(|f| f.error.at_entry(i)),
                        Err(e) => Err(e),
                    });
                }
                out
            }
        };
        Ok(BundleResults { kind, entries })
    }
}

/// Errors other than validation carry no location; point them at the failing entry.
fn locate(error: Error, index: usize) -> Error {
    match error {
        Error::Invalid(_) => error,
        other => {
            let status = other.status();
            let issues = other
                .issues()
                .into_iter()
                .map(|i| match i.location {
                    Some(_) => i,
                    None => i.at(format!("Bundle.entry[{index}]")),
                })
                .collect();
            Error::Located { status, issues }
        }
    }
}
