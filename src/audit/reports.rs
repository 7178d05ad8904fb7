//! What IG officers ask of the audit trail: AuditEvent search, CSV export and the standing
//! reports (break-glass review lives in `access::break_glass`).

use serde_json::{Value, json};
use sqlx::Row;
use time::OffsetDateTime;

use super::{AuditRecord, audit_columns};
use crate::store::{Store, StoreError};

/// AuditEvent search parameters; every one optional, all ANDed.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    /// Patient id (`Patient/{id}` or `{id}`).
    pub patient: Option<String>,
    /// User or client id.
    pub agent: Option<String>,
    pub org: Option<String>,
    pub from: Option<OffsetDateTime>,
    pub to: Option<OffsetDateTime>,
    pub outcome: Option<i32>,
    pub purpose: Option<String>,
    pub count: i64,
}

impl AuditFilter {
    /// Parses `patient`, `agent`, `org`, `date=geX`/`date=leX` (also `gt`/`lt`), `outcome`,
    /// `purpose`, `_count`.
    pub fn parse(pairs: &[(String, String)]) -> Result<AuditFilter, String> {
        let mut f = AuditFilter {
            count: 100,
            ..AuditFilter::default()
        };
        for (k, v) in pairs {
            match k.as_str() {
                "patient" => f.patient = Some(v.trim_start_matches("Patient/").to_string()),
                "agent" | "user" => f.agent = Some(v.clone()),
                "org" => f.org = Some(v.to_ascii_uppercase()),
                "date" => {
                    let (prefix, value) = v.split_at(v.len().min(2));
                    let (prefix, value) = if matches!(prefix, "ge" | "gt" | "le" | "lt") {
                        (prefix, value)
                    } else {
                        ("eq", v.as_str())
                    };
                    let t = crate::access::facts::parse_date_time(value)
                        .ok_or_else(|| format!("date '{v}' is not a FHIR date or dateTime"))?;
                    match prefix {
                        "ge" | "gt" => f.from = Some(t),
                        "le" | "lt" => f.to = Some(t),
                        _ => {
                            f.from = Some(t);
                            f.to = Some(t + time::Duration::days(1));
                        }
                    }
                }
                "outcome" => {
                    f.outcome = Some(
                        v.parse()
                            .map_err(|_| format!("outcome '{v}' is not 0, 4, 8 or 12"))?,
                    )
                }
                "purpose" => f.purpose = Some(v.to_ascii_uppercase()),
                "_count" => {
                    f.count = v
                        .parse::<i64>()
                        .ok()
                        .filter(|c| *c > 0)
                        .ok_or_else(|| format!("_count '{v}' must be a positive integer"))?
                        .min(10_000)
                }
                "_format" | "_pretty" => {}
                other => return Err(format!("unknown AuditEvent search parameter '{other}'")),
            }
        }
        Ok(f)
    }
}

/// Matching rows, newest first.
pub async fn search(store: &Store, f: &AuditFilter) -> Result<Vec<(i64, AuditRecord)>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        audit_columns!(),
        " FROM audit_event
         WHERE ($1::text IS NULL OR $1 = ANY(patients))
           AND ($2::text IS NULL OR caller_id = $2)
           AND ($3::text IS NULL OR org = $3)
           AND ($4::timestamptz IS NULL OR recorded_at >= $4)
           AND ($5::timestamptz IS NULL OR recorded_at < $5)
           AND ($6::int IS NULL OR outcome = $6)
           AND ($7::text IS NULL OR purpose = $7)
         ORDER BY seq DESC
         LIMIT $8"
    ))
    .bind(&f.patient)
    .bind(&f.agent)
    .bind(&f.org)
    .bind(f.from)
    .bind(f.to)
    .bind(f.outcome)
    .bind(&f.purpose)
    .bind(f.count)
    .fetch_all(store.pool())
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("seq")?, AuditRecord::from_row(r)?)))
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

fn csv_cell(s: &str) -> String {
    // Quote every cell; a leading = + - @ could run as a formula in a spreadsheet.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The rows as CSV (one line per row, header first).
pub fn csv(rows: &[(i64, AuditRecord)]) -> String {
    let mut out = String::from(
        "seq,recorded,request_id,interaction,action,outcome,outcome_desc,http_status,caller_kind,caller_id,caller_name,role_code,org,purpose,break_glass_id,method,path,resource_type,resource_id,patients,returned,denied,relationship\n",
    );
    for (seq, r) in rows {
        let cells = [
            seq.to_string(),
            r.recorded_at
                .map(crate::fhir::instant::format_instant)
                .unwrap_or_default(),
            r.request_id.clone().unwrap_or_default(),
            r.interaction.clone(),
            r.action.clone(),
            r.outcome.to_string(),
            r.outcome_desc.clone().unwrap_or_default(),
            r.http_status.to_string(),
            r.caller_kind.clone(),
            r.caller_id.clone().unwrap_or_default(),
            r.caller_name.clone().unwrap_or_default(),
            r.role_code.clone().unwrap_or_default(),
            r.org.clone().unwrap_or_default(),
            r.purpose.clone(),
            r.break_glass_id.map(|u| u.to_string()).unwrap_or_default(),
            r.method.clone(),
            r.path.clone(),
            r.resource_type.clone().unwrap_or_default(),
            r.resource_id.clone().unwrap_or_default(),
            r.patients.join(" "),
            r.returned.to_string(),
            r.denied.to_string(),
            r.relationship.to_string(),
        ];
        let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// The standing IG reports.
pub const REPORTS: [&str; 4] = [
    "same-surname",
    "out-of-hours",
    "unusual-volume",
    "no-relationship",
];

/// Runs a standing report over accesses since `since`; `None` for an unknown name.
pub async fn report(
    store: &Store,
    name: &str,
    since: OffsetDateTime,
    settings: &crate::access::policy::AccessSettings,
) -> Result<Option<Vec<Value>>, StoreError> {
    let pool = store.pool();
    let rows: Vec<Value> = match name {
        // Users looking at records of people who share their surname (self, family).
        "same-surname" => sqlx::query(
            "SELECT a.seq, a.recorded_at, a.caller_id, a.caller_name, a.org, p.pid
             FROM audit_event a
             CROSS JOIN LATERAL unnest(a.patients) AS p(pid)
             JOIN resource_head h ON h.resource_type = 'Patient' AND h.id = p.pid
             JOIN resource_version v ON v.resource_type = h.resource_type AND v.id = h.id
                                    AND v.version_id = h.version_id
             WHERE a.recorded_at >= $1 AND a.caller_kind = 'user' AND a.caller_name IS NOT NULL
               AND NOT a.denied AND v.content IS NOT NULL
               AND EXISTS (
                   SELECT 1 FROM jsonb_array_elements(coalesce(v.content->'name', '[]'::jsonb)) n
                   WHERE lower(n->>'family') = lower(regexp_replace(a.caller_name, '^.*\\s', '')))
             ORDER BY a.seq LIMIT 1000",
        )
        .bind(since)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            json!({
                "seq": r.get::<i64, _>("seq"),
                "recorded": crate::fhir::instant::format_instant(r.get("recorded_at")),
                "user": r.get::<Option<String>, _>("caller_id"),
                "userName": r.get::<Option<String>, _>("caller_name"),
                "org": r.get::<Option<String>, _>("org"),
                "patient": format!("Patient/{}", r.get::<String, _>("pid")),
            })
        })
        .collect(),
        "out-of-hours" => sqlx::query(
            "SELECT seq, recorded_at, caller_id, caller_name, org, patients, purpose
             FROM audit_event
             WHERE recorded_at >= $1 AND caller_kind = 'user' AND cardinality(patients) > 0
               AND NOT denied
               AND (CASE WHEN $2 > $3
                         THEN extract(hour FROM recorded_at AT TIME ZONE 'UTC') >= $2
                              OR extract(hour FROM recorded_at AT TIME ZONE 'UTC') < $3
                         ELSE extract(hour FROM recorded_at AT TIME ZONE 'UTC') >= $2
                              AND extract(hour FROM recorded_at AT TIME ZONE 'UTC') < $3 END)
             ORDER BY seq LIMIT 1000",
        )
        .bind(since)
        .bind(settings.out_of_hours_start as i32)
        .bind(settings.out_of_hours_end as i32)
        .fetch_all(pool)
        .await?
        .iter()
        .map(access_row)
        .collect(),
        "unusual-volume" => sqlx::query(
            "SELECT caller_id, min(caller_name) AS caller_name, min(org) AS org,
                    date_trunc('day', recorded_at) AS day, count(*) AS accesses,
                    count(DISTINCT p) AS patients
             FROM audit_event LEFT JOIN LATERAL unnest(patients) AS p ON true
             WHERE recorded_at >= $1 AND caller_kind = 'user'
             GROUP BY caller_id, date_trunc('day', recorded_at)
             HAVING count(*) > $2
             ORDER BY accesses DESC LIMIT 1000",
        )
        .bind(since)
        .bind(settings.unusual_volume_per_day as i64)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            json!({
                "user": r.get::<Option<String>, _>("caller_id"),
                "userName": r.get::<Option<String>, _>("caller_name"),
                "org": r.get::<Option<String>, _>("org"),
                "day": crate::fhir::instant::format_instant(r.get("day")),
                "accesses": r.get::<i64, _>("accesses"),
                "patients": r.get::<i64, _>("patients"),
            })
        })
        .collect(),
        // Accesses to patient data that no care relationship covered (break-glass, own-trust
        // data of patients without a current relationship).
        "no-relationship" => sqlx::query(
            "SELECT seq, recorded_at, caller_id, caller_name, org, patients, purpose
             FROM audit_event
             WHERE recorded_at >= $1 AND caller_kind = 'user' AND cardinality(patients) > 0
               AND NOT relationship AND outcome = 0
             ORDER BY seq LIMIT 1000",
        )
        .bind(since)
        .fetch_all(pool)
        .await?
        .iter()
        .map(access_row)
        .collect(),
        _ => return Ok(None),
    };
    Ok(Some(rows))
}

fn access_row(r: &sqlx::postgres::PgRow) -> Value {
    json!({
        "seq": r.get::<i64, _>("seq"),
        "recorded": crate::fhir::instant::format_instant(r.get("recorded_at")),
        "user": r.get::<Option<String>, _>("caller_id"),
        "userName": r.get::<Option<String>, _>("caller_name"),
        "org": r.get::<Option<String>, _>("org"),
        "patients": r.get::<Vec<String>, _>("patients").iter().map(|p| format!("Patient/{p}")).collect::<Vec<_>>(),
        "purpose": r.get::<String, _>("purpose"),
    })
}
