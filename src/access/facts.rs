//! Access facts kept beside the resources, derived at write time inside the writing transaction
//! (so they can never disagree with what was committed): care relationships between an
//! organisation and a patient, and patients' consent restrictions. Every write door (REST,
//! bundles, messaging, NATS, import) goes through the write engine, which calls `record`.

use serde_json::Value;
use time::OffsetDateTime;

use crate::store::{Author, NewVersion, StoreError, WriteTx};

pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// Types whose versions change access facts.
const FACT_TYPES: [&str; 5] = [
    "Encounter",
    "EpisodeOfCare",
    "ServiceRequest",
    "Patient",
    "Consent",
];

/// Whether versions of this type can change access facts.
pub fn changes_facts(resource_type: &str) -> bool {
    FACT_TYPES.contains(&resource_type)
}

/// `Patient/{id}` (relative, or absolute on any base) → id.
pub fn patient_id(reference: &Value) -> Option<String> {
    let r = reference.get("reference")?.as_str()?;
    let mut parts = r.rsplit('/');
    let id = parts.next()?;
    (parts.next()? == "Patient" && !id.is_empty()).then(|| id.to_string())
}

/// ODS codes named directly (identifier) and local Organization ids a reference names.
fn org_ref(reference: &Value, ods: &mut Vec<String>, local: &mut Vec<String>) {
    if let Some(identifier) = reference.get("identifier")
        && identifier.get("system").and_then(Value::as_str) == Some(ODS_SYSTEM)
        && let Some(v) = identifier.get("value").and_then(Value::as_str)
    {
        ods.push(v.to_ascii_uppercase());
    }
    if let Some(r) = reference.get("reference").and_then(Value::as_str) {
        let mut parts = r.rsplit('/');
        if let (Some(id), Some("Organization")) = (parts.next(), parts.next()) {
            local.push(id.to_string());
        }
    }
}

fn refs(value: Option<&Value>) -> Vec<&Value> {
    match value {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    }
}

/// A FHIR date or dateTime; partial dates take their first instant.
pub fn parse_date_time(s: &str) -> Option<OffsetDateTime> {
    if let Some(t) = crate::fhir::instant::parse_instant(s) {
        return Some(t);
    }
    let padded = match s.len() {
        4 => format!("{s}-01-01T00:00:00Z"),
        7 => format!("{s}-01T00:00:00Z"),
        10 => format!("{s}T00:00:00Z"),
        _ => return None,
    };
    crate::fhir::instant::parse_instant(&padded)
}

fn period(value: Option<&Value>) -> (Option<OffsetDateTime>, Option<OffsetDateTime>) {
    let get = |k: &str| {
        value
            .and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .and_then(parse_date_time)
    };
    (get("start"), get("end"))
}

struct Relationship {
    kind: &'static str,
    patient: String,
    ods: Vec<String>,
    local_orgs: Vec<String>,
    start: Option<OffsetDateTime>,
    end: Option<OffsetDateTime>,
}

fn relationship(
    resource_type: &str,
    id: &str,
    r: &Value,
    author_org: Option<&str>,
    at: OffsetDateTime,
) -> Option<Relationship> {
    let mut ods: Vec<String> = author_org.map(str::to_string).into_iter().collect();
    let mut local = Vec::new();
    let (kind, patient, start, end) = match resource_type {
        "Encounter" => {
            org_ref(&r["serviceProvider"], &mut ods, &mut local);
            let (s, e) = period(r.get("period"));
            let (s, e) = if s.is_none() && e.is_none() {
                (Some(at), Some(at))
            } else {
                (s, e)
            };
            ("encounter", patient_id(&r["subject"])?, s, e)
        }
        "EpisodeOfCare" => {
            org_ref(&r["managingOrganization"], &mut ods, &mut local);
            let (s, e) = period(r.get("period"));
            ("episode-of-care", patient_id(&r["patient"])?, s, e)
        }
        "ServiceRequest" => {
            for p in refs(r.get("performer")) {
                org_ref(p, &mut ods, &mut local);
            }
            org_ref(&r["requester"], &mut ods, &mut local);
            let authored = r
                .get("authoredOn")
                .and_then(Value::as_str)
                .and_then(parse_date_time)
                .unwrap_or(at);
            // An open referral keeps the receiving organisation's relationship open.
            let end = match r.get("status").and_then(Value::as_str) {
                Some("active" | "on-hold" | "draft") => None,
                _ => Some(authored),
            };
            ("referral", patient_id(&r["subject"])?, Some(authored), end)
        }
        "Patient" => {
            for gp in refs(r.get("generalPractitioner")) {
                org_ref(gp, &mut ods, &mut local);
            }
            org_ref(&r["managingOrganization"], &mut ods, &mut local);
            ("registration", id.to_string(), None, None)
        }
        _ => return None,
    };
    ods.sort();
    ods.dedup();
    Some(Relationship {
        kind,
        patient,
        ods,
        local_orgs: local,
        start,
        end,
    })
}

/// A Consent's patient, restrictions, organisations named by local reference, and period.
struct ConsentFacts(
    String,
    Vec<Restriction>,
    Vec<String>,
    Option<OffsetDateTime>,
    Option<OffsetDateTime>,
);

/// One consent restriction.
#[derive(Debug, PartialEq)]
struct Restriction {
    kind: &'static str,
    value: String,
}

fn consent(r: &Value) -> Option<ConsentFacts> {
    if r.get("status").and_then(Value::as_str) != Some("active") {
        return None;
    }
    let patient = patient_id(&r["patient"])?;
    let provision = r.get("provision");
    let opt_out_rule = refs(r.get("policyRule").and_then(|p| p.get("coding")))
        .iter()
        .any(|c| c.get("code").and_then(Value::as_str) == Some("OPTOUT"));
    let deny = provision
        .and_then(|p| p.get("type"))
        .and_then(Value::as_str)
        == Some("deny");
    if !(deny || opt_out_rule && provision.is_none()) {
        return None;
    }
    let mut out = Vec::new();
    let mut local = Vec::new();
    if let Some(p) = provision {
        for label in refs(p.get("securityLabel")) {
            if let Some(code) = label.get("code").and_then(Value::as_str) {
                out.push(Restriction {
                    kind: "deny-label",
                    value: code.to_string(),
                });
            }
        }
        for actor in refs(p.get("actor")) {
            let mut ods = Vec::new();
            org_ref(&actor["reference"], &mut ods, &mut local);
            out.extend(ods.into_iter().map(|o| Restriction {
                kind: "deny-org",
                value: o,
            }));
        }
    }
    if out.is_empty() && local.is_empty() {
        out.push(Restriction {
            kind: "opt-out",
            value: String::new(),
        });
    }
    let (start, end) = period(provision.and_then(|p| p.get("period")));
    Some(ConsentFacts(patient, out, local, start, end))
}

/// Replaces the facts derived from each written version (deletions remove them).
/// Relationships of all versions are replaced in one statement (a delete and an insert), as
/// they are written on every message: round trips, not rows, are what a write pays for here.
pub async fn record(
    tx: &mut WriteTx,
    versions: &[NewVersion],
    author: &Author,
) -> Result<(), StoreError> {
    prepare(tx, versions, &[], author).await?.write(tx).await
}

/// The relationship rows of written versions, not yet written: a group of units writes them
/// for every unit at once (`write`), after the last unit.
#[derive(Default)]
pub struct PendingFacts {
    /// `(type, id)` of every version whose earlier rows go.
    replaced: Vec<(String, String)>,
    rows: Vec<OwnedRow>,
}

/// A relationship row: source type and id, organisation, patient, kind, period.
struct OwnedRow {
    source_type: String,
    source_id: String,
    org: String,
    patient: String,
    kind: &'static str,
    start: Option<OffsetDateTime>,
    end: Option<OffsetDateTime>,
}

impl PendingFacts {
    /// Adds what a later unit of the same transaction derived: a resource both replace keeps
    /// only the later unit's rows, as when each unit writes its own.
    pub fn append(&mut self, later: PendingFacts) {
        let replaced: std::collections::HashSet<&(String, String)> =
            later.replaced.iter().collect();
        self.rows
            .retain(|r| !replaced.contains(&(r.source_type.clone(), r.source_id.clone())));
        self.replaced.extend(later.replaced);
        self.rows.extend(later.rows);
    }

    /// One statement: the delete runs on the statement's snapshot, which does not hold the
    /// rows the insert adds, so only the previous versions' rows go.
    pub async fn write(self, tx: &mut WriteTx) -> Result<(), StoreError> {
        if self.replaced.is_empty() {
            return Ok(());
        }
        let mut rows = RelationshipRows::default();
        for r in &self.rows {
            rows.source_type.push(r.source_type.as_str());
            rows.source_id.push(r.source_id.as_str());
            rows.org.push(r.org.clone());
            rows.patient.push(r.patient.as_str());
            rows.kind.push(r.kind);
            rows.start.push(r.start);
            rows.end.push(r.end);
        }
        let replaced_types: Vec<&str> = self.replaced.iter().map(|k| k.0.as_str()).collect();
        let replaced_ids: Vec<&str> = self.replaced.iter().map(|k| k.1.as_str()).collect();
        sqlx::query(
            "WITH gone AS (
                 DELETE FROM access_relationship r
                 USING unnest($1::text[], $2::text[]) AS k(t, i)
                 WHERE r.source_type = k.t AND r.source_id = k.i
             )
             INSERT INTO access_relationship
                 (source_type, source_id, org, patient_id, kind, period_start, period_end)
             SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::timestamptz[], $9::timestamptz[])",
        )
        .bind(&replaced_types)
        .bind(&replaced_ids)
        .bind(&rows.source_type)
        .bind(&rows.source_id)
        .bind(&rows.org)
        .bind(&rows.patient)
        .bind(&rows.kind)
        .bind(&rows.start)
        .bind(&rows.end)
        .execute(tx.connection().await?)
        .await?;
        Ok(())
    }
}

/// Derives the access facts of written versions: Consents' restrictions are written at once;
/// the care relationships are returned to be written (`PendingFacts::write`). `resources`
/// may hold, by position, a version's resource exactly as its `content` was serialised from
/// (the writer has it at hand); a version without one has its content parsed.
pub async fn prepare(
    tx: &mut WriteTx,
    versions: &[NewVersion],
    resources: &[Option<Value>],
    author: &Author,
) -> Result<PendingFacts, StoreError> {
    let mut replaced_types: Vec<&str> = Vec::new();
    let mut replaced_ids: Vec<&str> = Vec::new();
    let mut relationships: Vec<(&NewVersion, Relationship)> = Vec::new();
    for (k, v) in versions.iter().enumerate() {
        if !FACT_TYPES.contains(&v.resource_type.as_str()) {
            continue;
        }
        let parsed: Option<Value>;
        let resource: Option<&Value> = match resources.get(k) {
            Some(Some(r)) if v.content.is_some() => Some(r),
            _ => {
                parsed = v
                    .content
                    .as_deref()
                    .and_then(|c| serde_json::from_str(c).ok());
                parsed.as_ref()
            }
        };
        if v.resource_type == "Consent" {
            record_consent(tx, v, resource).await?;
            continue;
        }
        replaced_types.push(&v.resource_type);
        replaced_ids.push(&v.id);
        if let Some(rel) = resource.and_then(|r| {
            relationship(
                &v.resource_type,
                &v.id,
                r,
                author.org.as_deref(),
                v.last_updated,
            )
        }) {
            relationships.push((v, rel));
        }
    }
    let mut pending = PendingFacts {
        replaced: replaced_types
            .iter()
            .zip(&replaced_ids)
            .map(|(t, i)| (t.to_string(), i.to_string()))
            .collect(),
        rows: Vec::new(),
    };
    for (v, rel) in &relationships {
        let mut orgs = rel.ods.clone();
        orgs.extend(resolve_orgs(tx, &rel.local_orgs).await?);
        orgs.sort();
        orgs.dedup();
        for org in orgs {
            pending.rows.push(OwnedRow {
                source_type: v.resource_type.clone(),
                source_id: v.id.clone(),
                org,
                patient: rel.patient.clone(),
                kind: rel.kind,
                start: rel.start,
                end: rel.end,
            });
        }
    }
    Ok(pending)
}

/// Columns of the relationship rows to insert, for one `unnest`.
#[derive(Default)]
struct RelationshipRows<'a> {
    source_type: Vec<&'a str>,
    source_id: Vec<&'a str>,
    org: Vec<String>,
    patient: Vec<&'a str>,
    kind: Vec<&'static str>,
    start: Vec<Option<OffsetDateTime>>,
    end: Vec<Option<OffsetDateTime>>,
}

/// Replaces a Consent's restrictions.
async fn record_consent(
    tx: &mut WriteTx,
    v: &NewVersion,
    resource: Option<&Value>,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM access_consent WHERE consent_id = $1")
        .bind(&v.id)
        .execute(tx.connection().await?)
        .await?;
    let Some(ConsentFacts(patient, mut restrictions, local, start, end)) =
        resource.and_then(consent)
    else {
        return Ok(());
    };
    for ods in resolve_orgs(tx, &local).await? {
        restrictions.push(Restriction {
            kind: "deny-org",
            value: ods,
        });
    }
    for r in restrictions {
        sqlx::query(
            "INSERT INTO access_consent (consent_id, patient_id, kind, value, period_start, period_end)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&v.id)
        .bind(&patient)
        .bind(r.kind)
        .bind(&r.value)
        .bind(start)
        .bind(end)
        .execute(tx.connection().await?)
        .await?;
    }
    Ok(())
}

/// The organisation with care relationships to the most patients (demo and benchmark
/// clinicians work there, so they see a realistic share of the record).
/// `except` leaves out one organisation (a benchmark's loader, which wrote everything).
pub async fn busiest_org(
    store: &crate::store::Store,
    except: Option<&str>,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT org FROM access_relationship WHERE $1::text IS NULL OR org <> $1 GROUP BY org
         ORDER BY count(DISTINCT patient_id) DESC, org LIMIT 1",
    )
    .bind(except)
    .fetch_optional(store.pool())
    .await?)
}

/// ODS codes of local Organization resources (as of this transaction).
async fn resolve_orgs(tx: &mut WriteTx, ids: &[String]) -> Result<Vec<String>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let codes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT upper(value) FROM resource_identifier
         WHERE resource_type = 'Organization' AND system = $1 AND id = ANY($2)",
    )
    .bind(ODS_SYSTEM)
    .bind(ids)
    .fetch_all(tx.connection().await?)
    .await?;
    Ok(codes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encounter_relates_its_author_and_provider() {
        let e = json!({"resourceType": "Encounter", "subject": {"reference": "Patient/p1"},
            "serviceProvider": {"identifier": {"system": ODS_SYSTEM, "value": "rx2"}},
            "period": {"start": "2026-01-01", "end": "2026-01-03T10:00:00Z"}});
        let r = relationship(
            "Encounter",
            "e1",
            &e,
            Some("RX1"),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
        assert_eq!(r.patient, "p1");
        assert_eq!(r.ods, vec!["RX1", "RX2"]);
        assert!(r.start.is_some() && r.end.is_some());
    }

    #[test]
    fn consent_kinds() {
        let opt_out = json!({"status": "active", "patient": {"reference": "Patient/p1"},
            "provision": {"type": "deny"}});
        let ConsentFacts(p, r, _, _, _) = consent(&opt_out).unwrap();
        assert_eq!((p.as_str(), r[0].kind), ("p1", "opt-out"));
        let labels = json!({"status": "active", "patient": {"reference": "Patient/p1"},
            "provision": {"type": "deny", "securityLabel": [{"code": "HIV"}]}});
        assert_eq!(
            consent(&labels).unwrap().1[0],
            Restriction {
                kind: "deny-label",
                value: "HIV".into()
            }
        );
        let inactive = json!({"status": "inactive", "patient": {"reference": "Patient/p1"},
            "provision": {"type": "deny"}});
        assert!(consent(&inactive).is_none());
    }
}
