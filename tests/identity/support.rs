use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Value, json};
use shcr::access::dev_issuer::Grant;
use shcr::identity::nhs_number::NhsNumber;

use crate::common::TestApp;

pub const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
pub const VERIFICATION: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus";

/// A valid NHS number from a nine-digit stem (the check digit is computed).
pub fn nhs(stem: u32) -> String {
    (stem..)
        .find_map(|s| NhsNumber::from_stem(s).ok())
        .expect("a valid stem")
        .as_str()
        .to_string()
}

pub struct Demo<'a> {
    pub family: &'a str,
    pub given: &'a str,
    pub birth: &'a str,
    pub gender: &'a str,
    pub postcode: &'a str,
    pub line: &'a str,
}

pub const ROBERT: Demo = Demo {
    family: "Thompson",
    given: "Robert",
    birth: "1970-03-07",
    gender: "male",
    postcode: "LS1 4AB",
    line: "12 Mill Lane",
};

/// A trust's Patient; `nhs` is (number, verification status code).
pub fn patient(ods: &str, nhs: Option<(&str, &str)>, d: &Demo) -> Value {
    let mut p = json!({
        "resourceType": "Patient",
        "identifier": [{"system": format!("https://fhir.{}.example.nhs.uk/Id/mrn", ods.to_lowercase()),
                        "value": uuid::Uuid::new_v4().simple().to_string()}],
        "name": [{"use": "official", "family": d.family, "given": [d.given]}],
        "gender": d.gender,
        "birthDate": d.birth,
        "address": [{"use": "home", "line": [d.line], "postalCode": d.postcode}],
        "managingOrganization": {"identifier": {"system": ODS, "value": ods}},
    });
    if let Some((number, status)) = nhs {
        p["identifier"].as_array_mut().unwrap().push(json!({
            "system": NHS_SYSTEM,
            "value": number,
            "extension": [{"url": VERIFICATION, "valueCodeableConcept": {"coding": [{
                "system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland",
                "code": status}]}}],
        }));
    }
    p
}

pub async fn send(
    app: &TestApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut r = app
        .client
        .request(method, app.url(path))
        .header(AUTHORIZATION, format!("Bearer {token}"));
    if let Some(b) = body {
        r = r
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(b.to_string());
    }
    let response = r.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Creates `resource` as trust `ods`; returns its id.
pub async fn create_as(app: &TestApp, ods: &str, resource: &Value) -> String {
    let t = resource["resourceType"].as_str().unwrap();
    let (status, body) = send(
        app,
        &app.trust_token(ods),
        reqwest::Method::POST,
        t,
        Some(resource),
    )
    .await;
    assert_eq!(status, 201, "create {t} as {ods}: {body}");
    body["id"].as_str().unwrap().to_string()
}

pub async fn get_as(app: &TestApp, token: &str, path: &str) -> Value {
    let (status, body) = send(app, token, reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// The person a Patient is linked to.
pub async fn person_of(app: &TestApp, patient: &str) -> String {
    sqlx::query_scalar("SELECT person_id FROM identity_patient WHERE patient_id = $1")
        .bind(patient)
        .fetch_one(&app.pool)
        .await
        .expect("linked")
}

pub async fn grade_of(app: &TestApp, patient: &str) -> (String, String) {
    sqlx::query_as("SELECT grade, method FROM identity_patient WHERE patient_id = $1")
        .bind(patient)
        .fetch_one(&app.pool)
        .await
        .expect("linked")
}

/// A person holding "Amend Patient Demographics" (B0825): may decide links.
pub fn reviewer_token(app: &TestApp) -> String {
    app.mint(&app.claims(&Grant::User {
        user_id: "555000000077".into(),
        name: Some("Ida Registrar".into()),
        role_code: "S8000:G8000:R8000".into(),
        org: "RX1".into(),
        activities: vec!["B0360".into(), "B0825".into()],
        scopes: vec!["user/*.cruds".into()],
    }))
}

pub fn parameters(params: Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": params})
}

pub fn observation(patient: &str, code: &str, date: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": format!("test {code}")}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": date,
        "valueQuantity": {"value": 5.1, "unit": "mmol/L"},
    })
}

pub fn condition(patient: &str, code: &str, onset: &str) -> Value {
    json!({
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": format!("condition {code}")}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "onsetDateTime": onset,
    })
}
