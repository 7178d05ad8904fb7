//! Search parameter registry and index-value extraction, over hand-written resources and the
//! project's real UK Core and Synthea fixtures.

use std::path::Path;
use std::sync::LazyLock;

use serde_json::{Value, json};
use shcr::search::extract::{IndexValue, extract, text_content};
use shcr::search::fhirpath::compile;
use shcr::search::params::{ParamType, Registry, RegistryError};

static REGISTRY: LazyLock<Registry> =
    LazyLock::new(|| Registry::load(None).expect("shipped search parameters load"));

fn fixture(path: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
}

/// The values of parameter `code` on `resource` (empty when it has none).
fn values(resource: &Value, code: &str) -> Vec<IndexValue> {
    values_in(&REGISTRY, resource, code)
}

fn values_in(registry: &Registry, resource: &Value, code: &str) -> Vec<IndexValue> {
    extract(registry, resource)
        .into_iter()
        .find(|e| e.param.code == code)
        .map(|e| e.values)
        .unwrap_or_default()
}

fn token(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
    IndexValue::Token {
        system: system.map(str::to_string),
        code: code.map(str::to_string),
        text: text.map(str::to_string),
        of_type: None,
    }
}

fn string(normalised: &str, exact: &str) -> IndexValue {
    IndexValue::String {
        normalised: normalised.into(),
        exact: exact.into(),
    }
}

fn reference(resource_type: Option<&str>, id: Option<&str>, url: &str) -> IndexValue {
    IndexValue::Reference {
        resource_type: resource_type.map(str::to_string),
        id: id.map(str::to_string),
        url: url.into(),
        identifier: None,
        version: None,
    }
}

/// UTC epoch microseconds of an RFC 3339 instant.
fn micros(s: &str) -> i64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .expect("rfc3339");
    (t.unix_timestamp_nanos() / 1000) as i64
}

fn date(low: &str, high_exclusive: &str) -> IndexValue {
    IndexValue::Date {
        low: micros(low),
        high: micros(high_exclusive) - 1,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 || (a.is_infinite() && a == b)
}

// --- the registry -------------------------------------------------------------------------

#[test]
fn every_r4_definition_compiles_and_fits_the_model() {
    let bundle = fixture("../../search-params/r4-core.json");
    let entries = bundle["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 1375);
    let mut failures = Vec::new();
    for e in entries {
        let sp = &e["resource"];
        let url = sp["url"].as_str().expect("url");
        let mut expressions: Vec<&str> = sp["expression"].as_str().into_iter().collect();
        if let Some(components) = sp["component"].as_array() {
            expressions.extend(components.iter().filter_map(|c| c["expression"].as_str()));
        }
        for x in expressions {
            if let Err(err) = compile(x) {
                failures.push(format!("{url}: {x}: {err}"));
            }
        }
        assert!(REGISTRY.by_url(url).is_some(), "{url} not loaded");
    }
    assert_eq!(failures, Vec::<String>::new());
    assert_eq!(REGISTRY.params().count(), 1375);
    // Loading also checks every expression, per base type, against the R4 model.
    assert_eq!(REGISTRY.unsupported(), &[] as &[(String, String)]);
}

#[test]
fn common_parameters_apply_to_every_resource_type() {
    let id = REGISTRY.get("Patient", "_id").expect("_id");
    assert_eq!(id.url, "http://hl7.org/fhir/SearchParameter/Resource-id");
    assert_eq!(id.param_type, ParamType::Token);
    for code in [
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
        "_text",
        "_content",
    ] {
        assert!(REGISTRY.get("Observation", code).is_some(), "{code}");
    }
    // Bundle is a Resource but not a DomainResource, so it has no narrative to search.
    assert!(REGISTRY.get("Bundle", "_id").is_some());
    assert!(REGISTRY.get("Bundle", "_text").is_none());
    assert!(REGISTRY.get("Patient", "no-such-code").is_none());
    assert!(REGISTRY.get("NoSuchType", "_id").is_none());
    assert_eq!(REGISTRY.params_for("NoSuchType").count(), 0);

    let codes: Vec<&str> = REGISTRY
        .params_for("Patient")
        .map(|p| p.code.as_str())
        .collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(codes, sorted);
    for code in [
        "identifier",
        "family",
        "given",
        "birthdate",
        "gender",
        "_id",
        "name",
    ] {
        assert!(codes.contains(&code), "{code}");
    }

    let combo = REGISTRY
        .get("Observation", "code-value-quantity")
        .expect("composite");
    assert_eq!(combo.param_type, ParamType::Composite);
    assert_eq!(combo.components.len(), 2);
    assert_eq!(combo.component_type(0), Some(ParamType::Token));
    assert_eq!(combo.component_type(1), Some(ParamType::Quantity));
    let patient = REGISTRY.get("Observation", "patient").expect("patient");
    assert!(patient.targets.contains(&"Patient".to_string()));
}

fn write(dir: &Path, name: &str, json: Value) {
    std::fs::write(dir.join(name), serde_json::to_string_pretty(&json).unwrap()).unwrap();
}

fn search_parameter(url: &str, code: &str, base: &[&str], ty: &str, expression: &str) -> Value {
    json!({
        "resourceType": "SearchParameter",
        "url": url,
        "name": code,
        "status": "active",
        "code": code,
        "base": base,
        "type": ty,
        "expression": expression,
        "description": "test"
    })
}

#[test]
fn an_operator_folder_adds_and_replaces_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let ethnic = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory";
    // A single SearchParameter: a UK Core extension made searchable.
    write(
        dir.path(),
        "10-ethnic-category.json",
        search_parameter(
            "https://example.nhs.uk/SearchParameter/ethnic-category",
            "ethnic-category",
            &["Patient"],
            "token",
            &format!("Patient.extension('{ethnic}').value"),
        ),
    );
    // A Bundle: one definition replacing R4's Patient `family` by (base, code), one replacing
    // R4's `Observation-status` by url, and one that cannot be supported.
    write(
        dir.path(),
        "20-overrides.json",
        json!({
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"resource": search_parameter(
                    "https://example.nhs.uk/SearchParameter/official-family",
                    "family", &["Patient"], "string",
                    "Patient.name.where(use = 'official').family")},
                {"resource": search_parameter(
                    "http://hl7.org/fhir/SearchParameter/Observation-status",
                    "state", &["Observation"], "token", "Observation.status")},
                {"resource": search_parameter(
                    "https://example.nhs.uk/SearchParameter/broken",
                    "broken", &["Patient"], "string", "Patient.name.given + 'x'")},
                {"resource": search_parameter(
                    "https://example.nhs.uk/SearchParameter/misspelt",
                    "misspelt", &["Patient"], "string", "Patient.nmae")}
            ]
        }),
    );
    std::fs::write(dir.path().join("notes.txt"), "not json, not read").unwrap();

    let registry = Registry::load(Some(dir.path())).expect("load");

    let richard = fixture("ukcore/UKCore-Patient-RichardSmith-Example.json");
    assert_eq!(
        values_in(&registry, &richard, "ethnic-category"),
        vec![token(
            Some("https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland"),
            Some("G"),
            Some("Mixed - Any other mixed background"),
        )]
    );

    let family = registry.get("Patient", "family").unwrap();
    assert_eq!(
        family.url,
        "https://example.nhs.uk/SearchParameter/official-family"
    );
    // R4's definition still applies to the other types it was declared for.
    assert_eq!(
        registry.get("Practitioner", "family").unwrap().url,
        "http://hl7.org/fhir/SearchParameter/individual-family"
    );
    let p = json!({"resourceType": "Patient", "name": [
        {"use": "official", "family": "Smith"}, {"use": "maiden", "family": "Jones"}]});
    assert_eq!(
        values_in(&registry, &p, "family"),
        vec![string("smith", "Smith")]
    );

    assert!(registry.get("Observation", "status").is_none());
    assert_eq!(registry.get("Observation", "state").unwrap().code, "state");

    let unsupported: Vec<&str> = registry
        .unsupported()
        .iter()
        .map(|(u, _)| u.as_str())
        .collect();
    assert_eq!(
        unsupported,
        vec![
            "https://example.nhs.uk/SearchParameter/broken",
            "https://example.nhs.uk/SearchParameter/misspelt"
        ]
    );
    let why = &registry.unsupported()[1].1;
    assert!(why.contains("no element 'nmae' on Patient"), "{why}");
    assert!(registry.get("Patient", "broken").is_none());
    assert!(
        registry
            .by_url("https://example.nhs.uk/SearchParameter/broken")
            .is_none()
    );
    assert!(registry.params().all(|p| p.code != "misspelt"));
    assert!(registry.get("Patient", "misspelt").is_none());
}

#[test]
fn a_malformed_definition_file_stops_loading() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.json"), "{ not json").unwrap();
    assert!(matches!(
        Registry::load(Some(dir.path())),
        Err(RegistryError::Json { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.json",
        json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient"}}]}),
    );
    let err = Registry::load(Some(dir.path())).unwrap_err();
    assert!(
        err.to_string().contains("entry 0 is not a SearchParameter"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a.json",
        json!({"resourceType": "SearchParameter", "url": "x"}),
    );
    assert!(matches!(
        Registry::load(Some(dir.path())),
        Err(RegistryError::Invalid { .. })
    ));

    assert!(matches!(
        Registry::load(Some(Path::new("/nonexistent/search-params"))),
        Err(RegistryError::Io { .. })
    ));
}

// --- real fixtures ------------------------------------------------------------------------

#[test]
fn uk_core_patient_is_indexed_by_nhs_number_name_birth_date_and_gender() {
    let p = fixture("ukcore/UKCore-Patient-RichardSmith-Example.json");
    assert_eq!(
        values(&p, "identifier"),
        vec![token(
            Some("https://fhir.nhs.uk/Id/nhs-number"),
            Some("9912003888"),
            None
        )]
    );
    assert_eq!(values(&p, "family"), vec![string("smith", "SMITH")]);
    assert_eq!(values(&p, "given"), vec![string("richard", "Richard")]);
    assert_eq!(
        values(&p, "name"),
        vec![string("smith", "SMITH"), string("richard", "Richard")]
    );
    assert_eq!(values(&p, "gender"), vec![token(None, Some("male"), None)]);
    assert_eq!(
        values(&p, "birthdate"),
        vec![date("1970-09-11T00:00:00Z", "1970-09-12T00:00:00Z")]
    );
    assert_eq!(
        values(&p, "deceased"),
        vec![token(None, Some("false"), None)]
    );
    assert_eq!(
        values(&p, "address-postalcode"),
        vec![string("ls17 7df", "LS17 7DF")]
    );
    assert_eq!(
        values(&p, "phone"),
        vec![token(Some("phone"), Some("01131231234"), None)]
    );
    assert_eq!(
        values(&p, "_id"),
        vec![token(
            None,
            Some("UKCore-Patient-RichardSmith-Example"),
            None
        )]
    );
}

fn synthea_resources() -> Vec<Value> {
    let b = fixture("synthea/Edgar153_Mohr916_f6d6d6e5-6e58-41c4-b514-cdcbc4aab58a.json");
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect()
}

#[test]
fn synthea_observation_is_indexed_by_code_subject_date_and_value() {
    let resources = synthea_resources();
    let obs = resources
        .iter()
        .find(|r| r["resourceType"] == "Observation" && r["code"]["text"] == "Body Weight")
        .unwrap_or_else(|| {
            resources
                .iter()
                .find(|r| r["resourceType"] == "Observation" && r.get("valueQuantity").is_some())
                .unwrap()
        });
    let coding = &obs["code"]["coding"][0];
    let code = values(obs, "code");
    assert!(code.contains(&token(
        coding["system"].as_str(),
        coding["code"].as_str(),
        coding["display"].as_str()
    )));

    let subject = obs["subject"]["reference"].as_str().unwrap();
    assert_eq!(values(obs, "subject"), vec![reference(None, None, subject)]);

    let effective = obs["effectiveDateTime"].as_str().unwrap();
    let IndexValue::Date { low, high } = values(obs, "date")[0] else {
        panic!("date");
    };
    assert_eq!(low, micros(effective));
    assert_eq!(
        high,
        low + 999_999,
        "a dateTime to the second covers that second"
    );

    let q = &obs["valueQuantity"];
    let [
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
            ..
        },
    ] = &values(obs, "value-quantity")[..]
    else {
        panic!("value-quantity");
    };
    assert_eq!(*value, q["value"].as_f64().unwrap());
    assert_eq!(system.as_deref(), q["system"].as_str());
    assert_eq!(code.as_deref(), q["code"].as_str());
    assert_eq!(unit.as_deref(), q["unit"].as_str());
}

#[test]
fn synthea_patient_identifiers_carry_their_type_for_of_type() {
    let resources = synthea_resources();
    let patient = resources
        .iter()
        .find(|r| r["resourceType"] == "Patient")
        .unwrap();
    let ids = values(patient, "identifier");
    let mr = patient["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"]["coding"][0]["code"] == "MR")
        .expect("a medical record number");
    assert!(ids.contains(&IndexValue::Token {
        system: mr["system"].as_str().map(str::to_string),
        code: mr["value"].as_str().map(str::to_string),
        text: mr["type"]["text"].as_str().map(str::to_string),
        of_type: Some((
            "http://terminology.hl7.org/CodeSystem/v2-0203".into(),
            "MR".into()
        )),
    }));
}

#[test]
fn blood_pressure_components_index_code_and_value_together() {
    let bp = fixture("ukcore/UKCore-Observation-VitalSigns-BloodPressure-Example.json");
    let composites = values(&bp, "component-code-value-quantity");
    assert_eq!(composites.len(), bp["component"].as_array().unwrap().len());
    for (c, component) in composites.iter().zip(bp["component"].as_array().unwrap()) {
        let IndexValue::Composite(parts) = c else {
            panic!("composite");
        };
        let [codes, quantities] = &parts[..] else {
            panic!("two components");
        };
        let coding = &component["code"]["coding"][0];
        assert!(codes.iter().any(|t| matches!(t,
            IndexValue::Token { system, code, .. }
                if system.as_deref() == coding["system"].as_str()
                    && code.as_deref() == coding["code"].as_str())));
        assert!(
            matches!(&quantities[..], [IndexValue::Quantity { value, .. }]
            if *value == component["valueQuantity"]["value"].as_f64().unwrap())
        );
    }
    // The Observation's own value is absent, so the non-component composite has nothing.
    assert!(values(&bp, "code-value-quantity").is_empty());
}

#[test]
fn every_fixture_resource_extracts() {
    let mut resources = Vec::new();
    for folder in ["ukcore", "synthea"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(folder);
        for f in std::fs::read_dir(dir).unwrap() {
            let doc: Value =
                serde_json::from_str(&std::fs::read_to_string(f.unwrap().path()).unwrap()).unwrap();
            if let Some(entries) = doc["entry"].as_array() {
                resources.extend(entries.iter().map(|e| e["resource"].clone()));
            }
            resources.push(doc);
        }
    }
    assert!(resources.len() > 5000);
    for r in &resources {
        let extracted = extract(&REGISTRY, r);
        if let Some(id) = r["id"].as_str() {
            assert_eq!(values(r, "_id"), vec![token(None, Some(id), None)]);
        }
        for e in &extracted {
            assert!(!e.values.is_empty());
            for v in &e.values {
                if let IndexValue::Date { low, high } = v {
                    assert!(low <= high, "{} {v:?}", e.param.code);
                }
            }
        }
    }
}

// --- value kinds --------------------------------------------------------------------------

#[test]
fn strings_fold_accents_and_keep_the_exact_form() {
    let p = json!({"resourceType": "Patient", "name": [{
        "family": "Brontë", "given": ["Zoë", "Anne  Marie"], "prefix": ["Dr"], "text": "Dr Zoë Brontë"}],
        "address": [{"line": ["1 Rue de l'Église"], "city": "Montréal", "postalCode": "H2X 1Y4",
                     "country": "CA"}]});
    assert_eq!(
        values(&p, "given"),
        vec![string("zoe", "Zoë"), string("anne marie", "Anne  Marie"),]
    );
    assert_eq!(
        values(&p, "name"),
        vec![
            string("bronte", "Brontë"),
            string("zoe", "Zoë"),
            string("anne marie", "Anne  Marie"),
            string("dr", "Dr"),
            string("dr zoe bronte", "Dr Zoë Brontë"),
        ]
    );
    assert_eq!(
        values(&p, "address"),
        vec![
            string("1 rue de l'eglise", "1 Rue de l'Église"),
            string("montreal", "Montréal"),
            string("h2x 1y4", "H2X 1Y4"),
            string("ca", "CA"),
        ]
    );
    assert_eq!(
        values(&p, "address-city"),
        vec![string("montreal", "Montréal")]
    );
}

#[test]
fn tokens_from_codes_concepts_contact_points_and_booleans() {
    let cond = json!({"resourceType": "Condition",
        "code": {"coding": [
            {"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"},
            {"system": "http://read.info/ctv3", "code": "X40J4"}],
            "text": "Type 2 diabetes"},
        "clinicalStatus": {"coding": [{"system":
            "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "subject": {"reference": "Patient/p1"}});
    assert_eq!(
        values(&cond, "code"),
        vec![
            token(
                Some("http://snomed.info/sct"),
                Some("44054006"),
                Some("Diabetes")
            ),
            token(Some("http://read.info/ctv3"), Some("X40J4"), None),
            token(None, None, Some("Type 2 diabetes")),
        ]
    );
    let p = json!({"resourceType": "Patient", "active": true,
        "telecom": [{"system": "email", "value": "a@b.nhs.uk"}, {"system": "phone", "value": "0113"}]});
    assert_eq!(values(&p, "active"), vec![token(None, Some("true"), None)]);
    assert_eq!(
        values(&p, "email"),
        vec![token(Some("email"), Some("a@b.nhs.uk"), None)]
    );
    assert_eq!(values(&p, "telecom").len(), 2);
    let tagged = json!({"resourceType": "Observation", "meta": {
        "tag": [{"system": "http://example.org/tags", "code": "synthetic"}],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
        "profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation"],
        "lastUpdated": "2024-05-01T09:30:00.123+01:00"}});
    assert_eq!(
        values(&tagged, "_tag"),
        vec![token(
            Some("http://example.org/tags"),
            Some("synthetic"),
            None
        )]
    );
    assert_eq!(values(&tagged, "_security").len(), 1);
    assert_eq!(
        values(&tagged, "_profile"),
        vec![IndexValue::Uri(
            "https://fhir.hl7.org.uk/StructureDefinition/UKCore-Observation".into()
        )]
    );
    let t = micros("2024-05-01T08:30:00.123Z");
    assert_eq!(
        values(&tagged, "_lastUpdated"),
        vec![IndexValue::Date { low: t, high: t }],
        "an instant is exact"
    );
}

#[test]
fn references_in_every_form() {
    let obs = json!({"resourceType": "Observation",
        "subject": {"reference": "Patient/p1/_history/3"},
        "performer": [
            {"reference": "https://other.nhs.uk/fhir/Practitioner/d1"},
            {"identifier": {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "123"},
             "type": "Practitioner"},
            {"reference": "#org"},
            {"display": "only a name"}],
        "contained": [{"resourceType": "Organization", "id": "org"}]});
    assert_eq!(
        values(&obs, "subject"),
        vec![IndexValue::Reference {
            resource_type: Some("Patient".into()),
            id: Some("p1".into()),
            url: "Patient/p1".into(),
            identifier: None,
            version: Some("3".into()),
        }]
    );
    assert_eq!(values(&obs, "patient").len(), 1, "subject is a Patient");
    assert_eq!(
        values(&obs, "performer"),
        vec![
            reference(
                Some("Practitioner"),
                Some("d1"),
                "https://other.nhs.uk/fhir/Practitioner/d1"
            ),
            IndexValue::Reference {
                resource_type: Some("Practitioner".into()),
                id: None,
                url: String::new(),
                identifier: Some((
                    Some("https://fhir.nhs.uk/Id/sds-user-id".into()),
                    "123".into()
                )),
                version: None,
            },
            reference(Some("Organization"), None, "#org"),
        ]
    );

    let group = json!({"resourceType": "Observation", "subject": {"reference": "Group/g1"}});
    assert_eq!(values(&group, "subject").len(), 1);
    assert!(
        values(&group, "patient").is_empty(),
        "a Group subject is not a patient"
    );

    let qr = json!({"resourceType": "QuestionnaireResponse",
        "questionnaire": "https://example.nhs.uk/Questionnaire/eol|2.1"});
    assert_eq!(
        values(&qr, "questionnaire"),
        vec![IndexValue::Reference {
            resource_type: Some("Questionnaire".into()),
            id: Some("eol".into()),
            url: "https://example.nhs.uk/Questionnaire/eol".into(),
            identifier: None,
            version: Some("2.1".into()),
        }]
    );

    let document = json!({"resourceType": "Bundle", "type": "document",
        "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}]});
    assert_eq!(
        values(&document, "composition"),
        vec![reference(Some("Composition"), Some("c1"), "Composition/c1")]
    );
}

#[test]
fn dates_cover_their_precision_in_utc() {
    let obs = |effective: Value| {
        let mut o = json!({"resourceType": "Observation"});
        o.as_object_mut()
            .unwrap()
            .extend(effective.as_object().unwrap().clone());
        values(&o, "date")
    };
    assert_eq!(
        obs(json!({"effectiveDateTime": "2021"})),
        vec![date("2021-01-01T00:00:00Z", "2022-01-01T00:00:00Z")]
    );
    assert_eq!(
        obs(json!({"effectiveDateTime": "2021-02"})),
        vec![date("2021-02-01T00:00:00Z", "2021-03-01T00:00:00Z")]
    );
    assert_eq!(
        obs(json!({"effectiveDateTime": "2021-03-28"})),
        vec![date("2021-03-28T00:00:00Z", "2021-03-29T00:00:00Z")]
    );
    // British Summer Time: 01:30 local is 00:30 UTC.
    assert_eq!(
        obs(json!({"effectiveDateTime": "2021-06-01T01:30:00+01:00"})),
        vec![date("2021-06-01T00:30:00Z", "2021-06-01T00:30:01Z")]
    );
    assert_eq!(
        obs(json!({"effectiveDateTime": "2021-06-01T01:30:00.25-05:00"})),
        vec![date("2021-06-01T06:30:00.25Z", "2021-06-01T06:30:00.26Z")]
    );
    assert_eq!(
        obs(json!({"effectiveInstant": "2021-06-01T01:30:00.25Z"})),
        vec![IndexValue::Date {
            low: micros("2021-06-01T01:30:00.25Z"),
            high: micros("2021-06-01T01:30:00.25Z")
        }]
    );
    assert_eq!(
        obs(json!({"effectivePeriod": {"start": "2021-01-01", "end": "2021-01-31"}})),
        vec![date("2021-01-01T00:00:00Z", "2021-02-01T00:00:00Z")]
    );
    assert!(obs(json!({"effectiveDateTime": "not a date"})).is_empty());

    let enc = json!({"resourceType": "Encounter", "period": {"start": "2021-05-04T09:00:00Z"}});
    assert_eq!(
        values(&enc, "date"),
        vec![IndexValue::Date {
            low: micros("2021-05-04T09:00:00Z"),
            high: i64::MAX
        }],
        "an encounter without an end is ongoing"
    );
    let enc = json!({"resourceType": "Encounter", "period": {"end": "2021-05-04"}});
    assert_eq!(
        values(&enc, "date"),
        vec![IndexValue::Date {
            low: i64::MIN,
            high: micros("2021-05-05T00:00:00Z") - 1
        }]
    );

    let sr = json!({"resourceType": "ServiceRequest", "occurrenceTiming": {
        "event": ["2021-07-01T10:00:00Z", "2021-07-08"],
        "repeat": {"boundsPeriod": {"start": "2021-07-01", "end": "2021-07-31"}}}});
    assert_eq!(
        values(&sr, "occurrence"),
        vec![
            date("2021-07-01T10:00:00Z", "2021-07-01T10:00:01Z"),
            date("2021-07-08T00:00:00Z", "2021-07-09T00:00:00Z"),
            date("2021-07-01T00:00:00Z", "2021-08-01T00:00:00Z"),
        ]
    );

    // A `string` onset is not a date even when it reads like one.
    let c = json!({"resourceType": "Condition", "onsetString": "2020"});
    assert!(values(&c, "onset-date").is_empty());
    let c = json!({"resourceType": "Condition", "onsetDateTime": "2020"});
    assert_eq!(values(&c, "onset-date").len(), 1);
}

#[test]
fn numbers_and_quantities_carry_their_precision() {
    let ra = json!({"resourceType": "RiskAssessment", "prediction": [
        {"probabilityDecimal": 0.02}, {"probabilityRange": {"low": {"value": 10}, "high": {"value": 20}}}]});
    let got = values(&ra, "probability");
    let [
        IndexValue::Number { value, low, high },
        IndexValue::Number {
            value: v2,
            low: l2,
            high: h2,
        },
    ] = got[..]
    else {
        panic!("{got:?}");
    };
    assert!(close(value, 0.02) && close(low, 0.015) && close(high, 0.025));
    assert!(close(v2, 15.0) && close(l2, 9.5) && close(h2, 20.5));

    let obs = json!({"resourceType": "Observation", "valueQuantity": {
        "value": 100, "comparator": "<", "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}});
    let [
        IndexValue::Quantity {
            value, low, high, ..
        },
    ] = values(&obs, "value-quantity")[..]
    else {
        panic!("quantity");
    };
    assert_eq!((value, high), (100.0, 100.5));
    assert_eq!(low, f64::NEG_INFINITY, "`<100` covers everything below");

    let invoice =
        json!({"resourceType": "Invoice", "totalNet": {"value": 12.5, "currency": "GBP"}});
    assert_eq!(
        values(&invoice, "totalnet"),
        vec![IndexValue::Quantity {
            value: 12.5,
            low: 12.45,
            high: 12.55,
            system: Some("urn:iso:std:iso:4217".into()),
            code: Some("GBP".into()),
            unit: Some("GBP".into()),
        }]
    );

    let c = json!({"resourceType": "Condition", "onsetAge": {
        "value": 40, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}});
    let [
        IndexValue::Quantity {
            value, ref code, ..
        },
    ] = values(&c, "onset-age")[..]
    else {
        panic!("age");
    };
    assert_eq!((value, code.as_deref()), (40.0, Some("a")));
    let c = json!({"resourceType": "Condition", "onsetRange": {"low": {"value": 40, "unit": "a"}}});
    let [
        IndexValue::Quantity {
            low,
            high,
            ref unit,
            ..
        },
    ] = values(&c, "onset-age")[..]
    else {
        panic!("range");
    };
    assert_eq!(
        (low, high, unit.as_deref()),
        (39.5, f64::INFINITY, Some("a"))
    );
}

#[test]
fn composite_code_value_quantity_pairs_each_code_with_the_value() {
    let obs = json!({"resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"},
                            {"system": "http://snomed.info/sct", "code": "1234"}]},
        "valueQuantity": {"value": 5.4, "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "x"}]},
                       "valueString": "no quantity here"}]});
    let got = values(&obs, "code-value-quantity");
    let [IndexValue::Composite(parts)] = &got[..] else {
        panic!("{got:?}");
    };
    assert_eq!(
        parts[0],
        vec![
            token(Some("http://loinc.org"), Some("2339-0"), None),
            token(Some("http://snomed.info/sct"), Some("1234"), None),
        ]
    );
    assert!(matches!(&parts[1][..], [IndexValue::Quantity { value, .. }] if *value == 5.4));
    // `Observation | Observation.component`: the component has no quantity, so only one.
    assert_eq!(values(&obs, "combo-code-value-quantity").len(), 1);
    assert!(values(&obs, "component-code-value-quantity").is_empty());

    let dated = json!({"resourceType": "Observation", "code": {"text": "x"},
        "valuePeriod": {"start": "2020-01-01"}});
    let [IndexValue::Composite(parts)] = &values(&dated, "code-value-date")[..] else {
        panic!("code-value-date");
    };
    assert_eq!(
        parts[1],
        vec![IndexValue::Date {
            low: micros("2020-01-01T00:00:00Z"),
            high: i64::MAX
        }]
    );
}

#[test]
fn location_position_supports_near() {
    let loc =
        json!({"resourceType": "Location", "position": {"latitude": 53.8, "longitude": -1.55}});
    assert_eq!(
        values(&loc, "near"),
        vec![IndexValue::Position {
            latitude: 53.8,
            longitude: -1.55
        }]
    );
}

#[test]
fn text_and_content_are_plain_text() {
    let p = json!({"resourceType": "Patient",
        "text": {"status": "generated",
                 "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Zoë <b>Smith</b> &amp; family</p><table><tr><td>NHS</td><td>999&#160;123</td></tr></table></div>"},
        "name": [{"family": "Smith", "given": ["Zoë"]}],
        "gender": "female",
        "contained": [{"resourceType": "Organization", "id": "o", "name": "Leeds GP"}]});
    let (text, content) = text_content(&p);
    // A non-breaking space separates words like any other.
    assert_eq!(text, "Zoë Smith & family NHS 999 123");
    assert!(content.starts_with(&text));
    assert!(content.contains("Smith Zoë"));
    assert!(content.contains("Leeds GP"));
    assert!(
        !content.contains("female"),
        "codes are searched through their own parameters"
    );

    let odd = json!({"resourceType": "Patient", "text": {"status": "generated",
        "div": "<div>Fish &chips; Zoë &ééééééééé; &#x1F600; &bogus; a&b <unclosed"}});
    assert_eq!(
        text_content(&odd).0,
        "Fish &chips; Zoë &ééééééééé; \u{1F600} &bogus; a&b"
    );
    let cut = json!({"resourceType": "Patient", "text": {"div": "<div>x</é"}});
    assert_eq!(text_content(&cut).0, "x");
}

/// Ingest must never fail on a resource search cannot make sense of: swap values for others of
/// the wrong kind or awkward content throughout the real fixtures, and extract.
#[test]
fn extraction_survives_malformed_values() {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const STRINGS: [&str; 14] = [
        "",
        " ",
        "é<&",
        "<é",
        "&#xFFFFFF;",
        "2020-13-45T",
        "9999-12-31T23:59:59.9999999+14:00",
        "-0001",
        "#",
        "Patient/",
        "/_history/",
        "a|",
        "urn:uuid:",
        "Zoë\u{0301}\u{200B}",
    ];
    fn mutate(v: &mut Value, rng: &mut ChaCha8Rng) {
        if rng.random_ratio(1, 8) {
            *v = match rng.random_range(0..7) {
                0 => json!(STRINGS[rng.random_range(0..STRINGS.len())]),
                1 => json!(1e308),
                2 => json!(u64::MAX),
                3 => json!(-0.0),
                4 => json!(null),
                5 => json!([]),
                _ => json!({}),
            };
            return;
        }
        match v {
            Value::Array(items) => items.iter_mut().for_each(|i| mutate(i, rng)),
            Value::Object(obj) => {
                for (k, item) in obj.iter_mut() {
                    if k != "resourceType" {
                        mutate(item, rng);
                    }
                }
            }
            _ => {}
        }
    }

    let mut rng = ChaCha8Rng::seed_from_u64(20_240_501);
    let bundle = fixture("synthea/Leonor133_Kassulke119_aa63742a-73b9-7bcd-72fd-418b3422fb91.json");
    let mut resources: Vec<Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    resources.push(fixture("ukcore/UKCore-Patient-RichardSmith-Example.json"));
    resources.push(fixture(
        "ukcore/UKCore-Observation-VitalSigns-BloodPressure-Example.json",
    ));
    for round in 0..4 {
        for r in &resources {
            let mut r = r.clone();
            mutate(&mut r, &mut rng);
            let extracted = extract(&REGISTRY, &r);
            let _ = text_content(&r);
            for e in &extracted {
                for v in &e.values {
                    if let IndexValue::Date { low, high } = v {
                        assert!(low <= high, "round {round}: {} {v:?}", e.param.code);
                    }
                }
            }
        }
    }
}
