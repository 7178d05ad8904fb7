//! `GET [base]/Patient/{id}/$summary`: a point-of-care summary across every linked record — a
//! document Bundle whose Composition has IPS-like sections (problems, allergies, medications,
//! recent results, recent encounters). Every line names the trust(s) that reported it; a fact
//! reported by two trusts (same code, same day) appears once with both sources.

use std::collections::{BTreeSet, HashMap};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::identity::{SOURCE_EXT, gather};
use super::response::{BundleEntry, raw};
use crate::access::Decider;
use crate::fhir::instant::{format_instant, now_millis};
use crate::identity::view;
use crate::provenance::ODS_SYSTEM;
use crate::store::VersionRow;

const LOINC: &str = "http://loinc.org";
/// Most recent results and encounters shown.
const RECENT_RESULTS: usize = 50;
const RECENT_ENCOUNTERS: usize = 20;
/// Pages of 1,000 read at most: a summary is a summary.
const MAX_PAGES: usize = 10;

struct Section {
    title: &'static str,
    loinc: &'static str,
}

const SECTIONS: [Section; 5] = [
    Section {
        title: "Problems",
        loinc: "11450-4",
    },
    Section {
        title: "Allergies and intolerances",
        loinc: "48765-2",
    },
    Section {
        title: "Medications",
        loinc: "10160-0",
    },
    Section {
        title: "Recent results",
        loinc: "30954-2",
    },
    Section {
        title: "Recent encounters",
        loinc: "46240-8",
    },
];

/// One line of the summary: the fact, and everyone who reported it.
struct Line {
    section: usize,
    date: String,
    display: String,
    row: VersionRow,
    sources: BTreeSet<String>,
}

fn first_coding(concept: &Value) -> Option<(String, String, String)> {
    let c = concept["coding"].as_array()?.first()?;
    let display = c["display"]
        .as_str()
        .or(concept["text"].as_str())
        .unwrap_or_default();
    Some((
        format!(
            "{}|{}",
            c["system"].as_str().unwrap_or_default(),
            c["code"].as_str().unwrap_or_default()
        ),
        display.to_string(),
        String::new(),
    ))
}

fn day(v: &Value) -> String {
    v.as_str()
        .map(|s| s.chars().take(10).collect())
        .unwrap_or_default()
}

/// Section, dedup key (code and day) and display of a resource; `None` when it does not belong
/// in a summary (resolved problems, stopped medications, refuted allergies).
fn classify(row: &VersionRow, r: &Value) -> Option<(usize, String, String, String)> {
    let status = |path: &Value| {
        path["coding"]
            .as_array()
            .and_then(|c| c.first())
            .and_then(|c| c["code"].as_str())
            .map(str::to_string)
    };
    let (section, concept, date) = match row.resource_type.as_str() {
        "Condition" => {
            if matches!(
                status(&r["clinicalStatus"]).as_deref(),
                Some("resolved" | "inactive" | "remission")
            ) || status(&r["verificationStatus"]).as_deref() == Some("entered-in-error")
            {
                return None;
            }
            (
                0,
                &r["code"],
                day(r.get("onsetDateTime").unwrap_or(&r["recordedDate"])),
            )
        }
        "AllergyIntolerance" => {
            if matches!(
                status(&r["verificationStatus"]).as_deref(),
                Some("refuted" | "entered-in-error")
            ) {
                return None;
            }
            (
                1,
                &r["code"],
                day(r.get("onsetDateTime").unwrap_or(&r["recordedDate"])),
            )
        }
        "MedicationRequest" | "MedicationStatement" => {
            if !matches!(
                r["status"].as_str(),
                None | Some("active" | "on-hold" | "intended")
            ) {
                return None;
            }
            let date = r
                .get("authoredOn")
                .or(r.get("effectiveDateTime"))
                .or(r.get("dateAsserted"))
                .map(day)
                .unwrap_or_default();
            (2, &r["medicationCodeableConcept"], date)
        }
        "Observation" => {
            if matches!(r["status"].as_str(), Some("entered-in-error" | "cancelled")) {
                return None;
            }
            let date = r
                .get("effectiveDateTime")
                .or(r["effectivePeriod"].get("start"))
                .or(r.get("issued"))
                .map(day)
                .unwrap_or_default();
            (3, &r["code"], date)
        }
        "Encounter" => {
            if r["status"].as_str() == Some("entered-in-error") {
                return None;
            }
            let concept = r["type"]
                .as_array()
                .and_then(|t| t.first())
                .unwrap_or(&Value::Null);
            (4, concept, day(&r["period"]["start"]))
        }
        _ => return None,
    };
    let (code, mut display, _) = first_coding(concept).unwrap_or_default();
    if display.is_empty() {
        display = concept["text"]
            .as_str()
            .unwrap_or(&row.resource_type)
            .to_string();
    }
    if row.resource_type == "Observation"
        && let Some(q) = r["valueQuantity"].as_object()
    {
        display = format!(
            "{display}: {} {}",
            q.get("value").map(|v| v.to_string()).unwrap_or_default(),
            q.get("unit").and_then(Value::as_str).unwrap_or_default()
        );
    }
    let key = if code.is_empty() || code == "|" {
        // Nothing to compare by: never merged with another trust's line.
        format!("{}/{}", row.resource_type, row.id)
    } else {
        format!("{section}|{code}|{date}")
    };
    Some((section, key, date, display))
}

/// The summary document: written straight to JSON, entries as stored (no JSON tree).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    resource_type: &'static str,
    id: String,
    meta: Value,
    identifier: Value,
    #[serde(rename = "type")]
    bundle_type: &'static str,
    timestamp: String,
    entry: Vec<BundleEntry>,
}

/// Every page (at most `pages` of `count`) of the person's resources of `types`, by `sort`.
#[allow(clippy::too_many_arguments)]
async fn gather_list(
    state: &AppState,
    req: &HttpRequest,
    d: &Decider,
    ids: &[String],
    types: &[&str],
    sort: &str,
    count: usize,
    pages: usize,
) -> Result<Vec<VersionRow>, ApiError> {
    let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    let mut rows = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..pages {
        let mut params = vec![
            ("_count".to_string(), count.to_string()),
            ("_sort".to_string(), sort.to_string()),
            ("_total".to_string(), "none".to_string()),
        ];
        if let Some(c) = &cursor {
            params.push(("_cursor".into(), c.clone()));
        }
        let (_, result) = gather(state, req, d, ids, types.clone(), &params).await?;
        rows.extend(result.matches);
        cursor = result.next;
        if cursor.is_none() {
            break;
        }
    }
    Ok(rows)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub async fn summary(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    // The record and its links are independent reads: one wait, not two.
    let (patient, (person, members)) = futures_util::future::try_join(
        async { Ok(state.repository.read("Patient", &id).await?) },
        async {
            view::linked(state.repository.store().pool(), &id)
                .await
                .map_err(|e| ApiError::Interaction(crate::store::StoreError::Database(e).into()))
        },
    )
    .await?;
    let ids: Vec<String> = members.iter().map(|m| m.patient_id.clone()).collect();
    let d = super::identity::person_decider(&state, &req, &ids).await?;
    // Problems, allergies and medications are read whole; results and encounters only their
    // newest (with room for the same fact reported by several trusts). The three lists are
    // gathered at once: each waits for the index and then for PostgreSQL, and on a busy machine
    // those waits dominate a summary, so they overlap instead of adding up.
    let (whole, results, encounters) = futures_util::future::try_join3(
        gather_list(
            &state,
            &req,
            &d,
            &ids,
            &[
                "Condition",
                "AllergyIntolerance",
                "MedicationRequest",
                "MedicationStatement",
            ],
            "-_lastUpdated",
            1000,
            MAX_PAGES,
        ),
        gather_list(
            &state,
            &req,
            &d,
            &ids,
            &["Observation"],
            "-date",
            RECENT_RESULTS * 3,
            1,
        ),
        gather_list(
            &state,
            &req,
            &d,
            &ids,
            &["Encounter"],
            "-date",
            RECENT_ENCOUNTERS * 3,
            1,
        ),
    )
    .await?;
    let rows = whole.into_iter().chain(results).chain(encounters);

    let mut lines: Vec<Line> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for row in rows {
        let Some(content) = &row.content else {
            continue;
        };
        let Ok(resource) = serde_json::from_str::<Value>(content) else {
            continue;
        };
        let Some((section, key, date, display)) = classify(&row, &resource) else {
            continue;
        };
        // The trust that wrote the version shown (loaded with it: no second look-up).
        let org = row.author_org.clone();
        match by_key.get(&key) {
            Some(&i) => lines[i].sources.extend(org),
            None => {
                by_key.insert(key, lines.len());
                lines.push(Line {
                    section,
                    date,
                    display,
                    row,
                    sources: org.into_iter().collect(),
                });
            }
        }
    }
    // Newest first within each section, then trimmed where the section is "recent".
    lines.sort_by(|a, b| a.section.cmp(&b.section).then(b.date.cmp(&a.date)));
    let mut kept: Vec<Line> = Vec::new();
    let mut per_section = [0usize; 5];
    for line in lines {
        let limit = match line.section {
            3 => RECENT_RESULTS,
            4 => RECENT_ENCOUNTERS,
            _ => usize::MAX,
        };
        if per_section[line.section] < limit {
            per_section[line.section] += 1;
            kept.push(line);
        }
    }

    let now = format_instant(now_millis());
    let sections: Vec<Value> = SECTIONS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mine: Vec<&Line> = kept.iter().filter(|l| l.section == i).collect();
            let rows_html: String = mine
                .iter()
                .map(|l| {
                    format!(
                        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                        escape(&l.display),
                        escape(&l.date),
                        escape(&l.sources.iter().cloned().collect::<Vec<_>>().join(", "))
                    )
                })
                .collect();
            let mut section = json!({
                "title": s.title,
                "code": {"coding": [{"system": LOINC, "code": s.loinc}]},
                "text": {
                    "status": "generated",
                    "div": format!(
                        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><table><thead><tr><th>Item</th><th>Date</th><th>Source</th></tr></thead><tbody>{rows_html}</tbody></table></div>"
                    ),
                },
            });
            if mine.is_empty() {
                section["emptyReason"] = json!({"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                    "code": "unavailable"}]});
            } else {
                section["entry"] = mine
                    .iter()
                    .map(|l| {
                        json!({
                            "reference": format!("{}/{}", l.row.resource_type, l.row.id),
                            "display": l.display,
                            "extension": l.sources.iter().map(|o| json!({
                                "url": SOURCE_EXT,
                                "valueReference": {"identifier": {"system": ODS_SYSTEM, "value": o}},
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
            }
            section
        })
        .collect();
    let mut composition = json!({
        "resourceType": "Composition",
        "id": crate::fhir::id::new_id(),
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}]},
        "subject": {"reference": format!("Patient/{id}")},
        "date": now,
        "author": [{"display": "shcr shared care record"}],
        "title": "Patient summary across linked records",
        "section": sections,
    });
    if let Some(person) = person {
        composition["extension"] = json!([{
            "url": "https://fhir.shcr.example.nhs.uk/StructureDefinition/summary-person",
            "valueReference": {"reference": format!("Person/{person}")},
        }]);
    }
    let base = &state.base_url;
    let entry = |t: &str, i: &str, content: Option<String>| BundleEntry {
        full_url: Some(format!("{base}/{t}/{i}")),
        resource: content.and_then(raw),
        ..Default::default()
    };
    let comp_id = composition["id"].as_str().unwrap_or_default().to_string();
    let mut entries = Vec::with_capacity(kept.len() + 2);
    entries.push(entry(
        "Composition",
        &comp_id,
        Some(composition.to_string()),
    ));
    entries.push(entry("Patient", &patient.id, patient.content.clone()));
    for l in kept {
        entries.push(entry(&l.row.resource_type, &l.row.id, l.row.content));
    }
    let bundle_id = crate::fhir::id::new_id();
    let document = Document {
        resource_type: "Bundle",
        identifier: json!({"system": "urn:ietf:rfc:3986", "value": format!("urn:uuid:{bundle_id}")}),
        meta: json!({"lastUpdated": now}),
        id: bundle_id,
        bundle_type: "document",
        timestamp: now.clone(),
        entry: entries,
    };
    Ok(super::response::json_response(
        actix_web::http::StatusCode::OK,
        serde_json::to_string(&document).unwrap_or_default(),
    ))
}
