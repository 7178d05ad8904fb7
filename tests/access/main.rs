//! Read-time access control and audit, end to end: real server, real PostgreSQL, dev-issuer
//! tokens. `matrix` compares every interaction of every caller with an oracle written here,
//! independently of the server's rule.

#[path = "../common/mod.rs"]
mod common;

mod audit;
mod break_glass;
mod ig;
mod journal;
mod labels;
mod matrix;
mod policy;
mod reads;
mod search_facts;
mod writes;

use reqwest::header::AUTHORIZATION;
use serde_json::{Value, json};

use common::TestApp;

pub const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// A caller of the matrix.
#[derive(Debug, Clone)]
pub struct Who {
    pub label: &'static str,
    pub system: bool,
    pub role: &'static str,
    pub org: &'static str,
    pub activities: &'static [&'static str],
}

impl Who {
    pub fn token(&self, app: &TestApp) -> String {
        if self.system {
            app.trust_token(self.org)
        } else {
            app.user_token(
                &format!("user-{}", self.label),
                &format!("Test {}", self.label),
                &format!("S8000:G8000:{}", self.role),
                self.org,
                self.activities,
            )
        }
    }
}

/// `GET path` once per request id, all at once; asserts every answer is 200.
pub async fn read_together(app: &TestApp, token: &str, path: &str, ids: &[String]) {
    let statuses = futures_util::future::join_all(
        ids.iter()
            .map(|id| send(app, token, reqwest::Method::GET, path, None, id)),
    )
    .await;
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
}

pub async fn send(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    request_id: &str,
) -> (u16, Value) {
    let mut r = app
        .client
        .request(method, app.url(path))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header("x-request-id", request_id);
    if let Some(b) = body {
        r = r
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    let response = r.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A doctor (R8000, B0360) at `org`.
pub fn clinician(app: &TestApp, org: &str) -> String {
    app.user_token(
        &format!("u-{org}"),
        "Test Doctor",
        "S8000:G8000:R8000",
        org,
        &["B0360"],
    )
}

pub async fn get(app: &TestApp, token: &str, path: &str) -> (u16, Value) {
    let id = uuid::Uuid::new_v4().to_string();
    send(app, token, reqwest::Method::GET, path, None, &id).await
}

/// Creates as the given trust and returns the stored resource.
pub async fn create_as(app: &TestApp, ods: &str, resource: Value) -> Value {
    let t = resource["resourceType"].as_str().unwrap().to_string();
    let (status, body) = send(
        app,
        &app.trust_token(ods),
        reqwest::Method::POST,
        &t,
        Some(&resource),
        &uuid::Uuid::new_v4().to_string(),
    )
    .await;
    assert_eq!(status, 201, "create {t} as {ods}: {body}");
    body
}

pub fn patient(family: &str, gp: Option<&str>) -> Value {
    let mut p = json!({
        "resourceType": "Patient",
        "name": [{"family": family, "given": ["Alex"]}],
        "gender": "unknown",
        "birthDate": "1980-05-06"
    });
    if let Some(gp) = gp {
        p["generalPractitioner"] = json!([{"identifier": {"system": ODS, "value": gp}}]);
    }
    p
}

pub fn condition_snomed(patient: &str, code: &str) -> Value {
    json!({
        "resourceType": "Condition",
        "subject": {"reference": format!("Patient/{patient}")},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]}
    })
}

pub fn condition_icd10(patient: &str, code: &str) -> Value {
    json!({
        "resourceType": "Condition",
        "subject": {"reference": format!("Patient/{patient}")},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]}
    })
}

pub fn observation(patient: &str, labels: &[(&str, &str)]) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": format!("Patient/{patient}")},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 72, "unit": "/min"}
    });
    if !labels.is_empty() {
        o["meta"] = json!({"security": labels.iter().map(|(s, c)| json!({"system": s, "code": c})).collect::<Vec<_>>()});
    }
    o
}

pub fn encounter(patient: &str, start: &str, end: &str) -> Value {
    json!({
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{patient}")},
        "period": {"start": start, "end": end}
    })
}

pub fn referral(patient: &str, to: &str) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": format!("Patient/{patient}")},
        "performer": [{"identifier": {"system": ODS, "value": to}}],
        "authoredOn": days_ago(5)
    })
}

/// A Consent with a deny provision; `labels`/`orgs` restrict it, `period_end` bounds it.
pub fn consent(patient: &str, labels: &[&str], orgs: &[&str], period_end: Option<&str>) -> Value {
    let mut provision = json!({"type": "deny"});
    if !labels.is_empty() {
        provision["securityLabel"] = json!(labels.iter().map(|l| json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": l})).collect::<Vec<_>>());
    }
    if !orgs.is_empty() {
        provision["actor"] = json!(orgs.iter().map(|o| json!({
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"identifier": {"system": ODS, "value": o}}
        })).collect::<Vec<_>>());
    }
    if let Some(end) = period_end {
        provision["period"] = json!({"start": "2020-01-01", "end": end});
    }
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "INFA"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}]},
        "provision": provision
    })
}

pub fn days_ago(days: i64) -> String {
    let t = time::OffsetDateTime::now_utc() - time::Duration::days(days);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Every audit row's request id.
pub async fn audited_request_ids(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar("SELECT request_id FROM audit_event WHERE request_id IS NOT NULL")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}
