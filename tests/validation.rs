//! Structural validation against the base R4 definitions: the project's fixtures are valid, and
//! each kind of defect is reported at the element where it is.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use shcr::fhir::outcome::{Issue, IssueType};
use shcr::validation::{is_resource_type, resource_types, validate_resource};

fn fixture_files(folder: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(folder);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn describe(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| {
            format!(
                "  {} [{}] {}",
                i.location.as_deref().unwrap_or("-"),
                i.code.code(),
                i.diagnostics
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// UK Core examples whose JSON (converted from the published XML) writes a 0..1 element of R4 as
/// an array. In XML the two look the same; the converter evidently used R5, where these elements
/// repeat (Composition.identifier/subject, Device.type, List.subject and
/// QuestionnaireResponse.identifier are 0..1 in R4, 0..* in R5). As R4 JSON they are invalid.
const UKCORE_R5_ARRAYS: &[(&str, &[&str])] = &[
    ("Extension-UKCore-CuffSize-Example.json", &["Device.type"]),
    (
        "Extension-UKCore-ListWarningCode-Example.json",
        &["List.subject"],
    ),
    (
        "UKCore-Composition-Discharge-Example.json",
        &["Composition.identifier", "Composition.subject"],
    ),
    (
        "UKCore-Device-BloodPressure-Sphygmomanometer-Example.json",
        &["Device.type"],
    ),
    (
        "UKCore-Device-BloodSpotContainer-Example.json",
        &["Device.type"],
    ),
    ("UKCore-Device-ColostomyBag-Example.json", &["Device.type"]),
    (
        "UKCore-Device-SoftwareAsAMedicalDevice-Example.json",
        &["Device.type"],
    ),
    ("UKCore-List-EmptyList-Example.json", &["List.subject"]),
    (
        "UKCore-List-Sn-NoAllergyData-Example.json",
        &["List.subject"],
    ),
    (
        "UKCore-QuestionnaireResponse-InpatientSurvey-Example.json",
        &["QuestionnaireResponse.identifier"],
    ),
];

/// Checks a fixture folder. Issues are expected only for two artefacts of the XML-to-JSON
/// conversion of the UK Core examples, and then exactly:
/// - every `fhir_comments` property (the converter's rendering of XML comments, a DSTU2 JSON
///   convention that STU3 dropped; R4 JSON has no such property, and the HL7 validator reports it
///   as unrecognised) is reported as an unknown element, once per occurrence in the file;
/// - the R5-style arrays in [`UKCORE_R5_ARRAYS`], at exactly those locations.
fn assert_fixtures(folder: &str, expected_files: usize) {
    let files = fixture_files(folder);
    assert_eq!(files.len(), expected_files, "fixture count in {folder}");
    let mut failures = String::new();
    let mut with_comments = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).expect("fixture");
        let comments = text.matches("\"fhir_comments\"").count();
        with_comments += usize::from(comments > 0);
        let name = path.file_name().unwrap().to_str().unwrap();
        let arrays: &[&str] = UKCORE_R5_ARRAYS
            .iter()
            .find(|(f, _)| *f == name)
            .map_or(&[], |(_, locs)| *locs);

        let issues = validate_resource(&load(path));
        let (comment_issues, other): (Vec<&Issue>, Vec<&Issue>) = issues.iter().partition(|i| {
            i.code == IssueType::Structure
                && i.location
                    .as_deref()
                    .is_some_and(|l| l.ends_with(".fhir_comments"))
                && i.diagnostics.starts_with("unknown element 'fhir_comments'")
        });
        let other_ok = other.len() == arrays.len()
            && other.iter().zip(arrays).all(|(i, want)| {
                i.code == IssueType::Structure
                    && i.location.as_deref() == Some(*want)
                    && i.diagnostics.contains("does not repeat (max 1)")
            });
        if comment_issues.len() != comments || !other_ok {
            failures.push_str(&format!(
                "{name}: expected {comments} fhir_comments issues and arrays at {arrays:?}, got:\n{}\n",
                describe(&issues)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures with unexpected issues:\n{failures}"
    );
    if folder == "ukcore" {
        assert_eq!(with_comments, 66, "UK Core examples carrying fhir_comments");
    } else {
        assert_eq!(with_comments, 0);
    }
}

#[test]
fn uk_core_examples_are_valid_r4_apart_from_conversion_artefacts() {
    assert_fixtures("ukcore", 134);
}

#[test]
fn every_synthea_bundle_is_valid_r4() {
    assert_fixtures("synthea", 4);
}

/// Validates and returns (location, code) pairs, for compact assertions.
fn findings(resource: Value) -> Vec<(String, IssueType)> {
    validate_resource(&resource)
        .into_iter()
        .map(|i| (i.location.unwrap_or_default(), i.code))
        .collect()
}

fn one_finding(resource: Value) -> (String, IssueType) {
    let issues = validate_resource(&resource);
    assert_eq!(
        issues.len(),
        1,
        "expected one issue, got:\n{}",
        describe(&issues)
    );
    let i = issues.into_iter().next().unwrap();
    (i.location.unwrap_or_default(), i.code)
}

fn loc(s: &str, code: IssueType) -> (String, IssueType) {
    (s.to_string(), code)
}

#[test]
fn resource_types_are_the_r4_list() {
    let all: Vec<&str> = resource_types().collect();
    assert_eq!(all.len(), 146);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert!(is_resource_type("Patient"));
    assert!(is_resource_type("Bundle"));
    assert!(!is_resource_type("DomainResource"));
    assert!(!is_resource_type("patient"));
    assert!(!is_resource_type("SubscriptionStatus"), "R4B, not R4");
}

#[test]
fn top_level_must_be_an_object_with_a_known_resource_type() {
    assert_eq!(one_finding(json!([1])), loc("", IssueType::Structure));
    assert_eq!(
        one_finding(json!({"id": "x"})),
        loc("", IssueType::Required)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patients"})),
        loc("", IssueType::Invalid)
    );
    assert_eq!(
        one_finding(json!({"resourceType": 1})),
        loc("", IssueType::Structure)
    );
    assert!(findings(json!({"resourceType": "Patient"})).is_empty());
}

#[test]
fn unknown_element_is_reported_where_it_is() {
    let issues = validate_resource(&json!({
        "resourceType": "Patient",
        "birthdate": "1970-01-01",
        "name": [{"family": "Smith"}, {"given": ["Ann"], "familly": "Jones"}]
    }));
    let locs: Vec<&str> = issues
        .iter()
        .map(|i| i.location.as_deref().unwrap())
        .collect();
    assert_eq!(locs, ["Patient.birthdate", "Patient.name[1].familly"]);
    assert!(
        issues[0].diagnostics.contains("did you mean 'birthDate'"),
        "{}",
        issues[0].diagnostics
    );
    assert!(issues.iter().all(|i| i.code == IssueType::Structure));
}

#[test]
fn companion_without_a_primitive_is_unknown() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "_name": {"id": "a"}})),
        loc("Patient._name", IssueType::Structure)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "_birthdate": {"id": "a"}})),
        loc("Patient._birthdate", IssueType::Structure)
    );
    // Extension.url is an XML attribute: it cannot carry extensions.
    assert_eq!(
        one_finding(json!({"resourceType": "Patient",
            "extension": [{"url": "http://x", "_url": {"id": "a"}, "valueString": "v"}]})),
        loc("Patient.extension[0]._url", IssueType::Structure)
    );
}

#[test]
fn missing_required_element_is_reported() {
    assert_eq!(
        one_finding(json!({"resourceType": "Observation", "code": {"text": "BP"}})),
        loc("Observation.status", IssueType::Required)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "link": [{"type": "seealso"}]})),
        loc("Patient.link[0].other", IssueType::Required)
    );
}

#[test]
fn repeating_element_must_be_an_array() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "name": {"family": "Smith"}})),
        loc("Patient.name", IssueType::Structure)
    );
    // And the single value is still checked.
    assert_eq!(
        findings(json!({"resourceType": "Patient", "name": {"family": "Smith", "x": 1}})),
        [
            loc("Patient.name", IssueType::Structure),
            loc("Patient.name.x", IssueType::Structure)
        ]
    );
}

#[test]
fn non_repeating_element_must_not_be_an_array() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "gender": ["male"]})),
        loc("Patient.gender", IssueType::Structure)
    );
}

#[test]
fn more_items_than_allowed_are_reported() {
    // R4 core has no bounded `max` above 1, so "too many" means an array where max is 1 ...
    assert_eq!(
        one_finding(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": [{"reference": "Patient/1"}, {"reference": "Patient/2"}]})
        ),
        loc("Observation.subject", IssueType::Structure)
    );
    // ... or any value where max is 0 (xhtml cannot carry extensions).
    assert_eq!(
        one_finding(
            json!({"resourceType": "Patient", "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann</div>",
            "_div": {"extension": [{"url": "http://x", "valueString": "y"}]}}})
        ),
        loc("Patient.text.div.extension", IssueType::Structure)
    );
}

#[test]
fn empty_array_is_an_error() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "name": []})),
        loc("Patient.name", IssueType::Structure)
    );
}

#[test]
fn empty_object_is_an_error() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "name": [{}]})),
        loc("Patient.name[0]", IssueType::Structure)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "maritalStatus": {}})),
        loc("Patient.maritalStatus", IssueType::Structure)
    );
}

#[test]
fn empty_string_is_an_error() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "name": [{"family": ""}]})),
        loc("Patient.name[0].family", IssueType::Value)
    );
}

#[test]
fn null_is_an_error_outside_aligned_arrays() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "birthDate": null})),
        loc("Patient.birthDate", IssueType::Structure)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "name": [{"given": ["Ann", null]}]})),
        loc("Patient.name[0].given[1]", IssueType::Structure)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "name": null})),
        loc("Patient.name", IssueType::Structure)
    );
}

#[test]
fn aligned_primitive_arrays_accept_null_placeholders() {
    let ext = json!([{"url": "http://example.org/initial", "valueBoolean": true}]);
    assert!(
        findings(json!({"resourceType": "Patient",
            "name": [{"given": ["Ann", null], "_given": [null, {"extension": ext}]}]}))
        .is_empty()
    );
    // Both null at one index carries nothing.
    assert_eq!(
        one_finding(json!({"resourceType": "Patient",
            "name": [{"given": ["Ann", null], "_given": [null, null]}]})),
        loc("Patient.name[0].given[1]", IssueType::Structure)
    );
    // The arrays must be the same length.
    assert_eq!(
        one_finding(json!({"resourceType": "Patient",
            "name": [{"given": ["Ann", "Bea"], "_given": [null]}]})),
        loc("Patient.name[0].given", IssueType::Structure)
    );
}

#[test]
fn primitive_companion_holds_only_id_and_extension() {
    let ext = json!([{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
        "valueDateTime": "1970-01-01T10:00:00Z"}]);
    assert!(
        findings(json!({"resourceType": "Patient", "birthDate": "1970-01-01",
            "_birthDate": {"id": "b", "extension": ext}}))
        .is_empty()
    );
    // A primitive with only an extension (no value) is allowed.
    assert!(
        findings(json!({"resourceType": "Patient", "_birthDate": {"extension": ext}})).is_empty()
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "birthDate": "1970-01-01",
            "_birthDate": {"value": "x"}})),
        loc("Patient.birthDate.value", IssueType::Structure)
    );
    assert_eq!(
        one_finding(
            json!({"resourceType": "Patient", "birthDate": "1970-01-01", "_birthDate": "x"})
        ),
        loc("Patient.birthDate", IssueType::Structure)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "birthDate": "1970-01-01",
            "_birthDate": {"extension": [{"valueString": "no url"}]}})),
        loc("Patient.birthDate.extension[0].url", IssueType::Required)
    );
}

#[test]
fn choice_type_allows_one_variant_of_an_allowed_type() {
    let base = |extra: Value| {
        let mut obs =
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
        for (k, v) in extra.as_object().unwrap() {
            obs[k] = v.clone();
        }
        obs
    };
    assert!(findings(base(json!({"valueString": "high"}))).is_empty());
    let two = findings(base(json!({"valueString": "high", "valueBoolean": true})));
    assert_eq!(two.len(), 1, "{two:?}");
    assert!(two[0].0 == "Observation.valueString" || two[0].0 == "Observation.valueBoolean");
    assert_eq!(
        one_finding(base(json!({"valueDate": "2020-01-01"}))),
        loc("Observation.valueDate", IssueType::Structure)
    );
    assert_eq!(
        one_finding(base(json!({"value": "x"}))),
        loc("Observation.value", IssueType::Structure)
    );
    // Errors inside a choice are located with ofType.
    assert_eq!(
        one_finding(base(json!({"valueQuantity": {"value": "1"}}))),
        loc(
            "Observation.value.ofType(Quantity).value",
            IssueType::Structure
        )
    );
}

#[test]
fn bad_date_is_reported() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "birthDate": "1970-02-30"})),
        loc("Patient.birthDate", IssueType::Value)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "birthDate": "01/02/1970"})),
        loc("Patient.birthDate", IssueType::Value)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01T10:00:00"})),
        loc("Patient.deceased.ofType(dateTime)", IssueType::Value)
    );
}

#[test]
fn bad_instant_and_time_are_reported() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "meta": {"lastUpdated": "2020-01-01"}})),
        loc("Patient.meta.lastUpdated", IssueType::Value)
    );
    assert_eq!(
        one_finding(
            json!({"resourceType": "Location", "hoursOfOperation": [{"openingTime": "9:00"}]})
        ),
        loc("Location.hoursOfOperation[0].openingTime", IssueType::Value)
    );
}

#[test]
fn number_where_string_expected_is_reported() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "name": [{"given": ["Ann", 7]}]})),
        loc("Patient.name[0].given[1]", IssueType::Structure)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "active": "true"})),
        loc("Patient.active", IssueType::Structure)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "multipleBirthInteger": 1.5})),
        loc("Patient.multipleBirth.ofType(integer)", IssueType::Value)
    );
    assert_eq!(
        one_finding(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": "12.5"}})
        ),
        loc(
            "Observation.value.ofType(Quantity).value",
            IssueType::Structure
        )
    );
}

#[test]
fn invalid_id_is_reported() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "id": "has space"})),
        loc("Patient.id", IssueType::Value)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "id": "x".repeat(65)})),
        loc("Patient.id", IssueType::Value)
    );
}

#[test]
fn invalid_code_uri_oid_uuid_base64_are_reported() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "identifier": [{"system": "http://a b"}]})),
        loc("Patient.identifier[0].system", IssueType::Value)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "photo": [{"data": "not base64!"}]})),
        loc("Patient.photo[0].data", IssueType::Value)
    );
    assert_eq!(
        one_finding(
            json!({"resourceType": "Observation", "status": "final ", "code": {"text": "x"}})
        ),
        loc("Observation.status", IssueType::Value)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient",
            "extension": [{"url": "http://x", "valueUuid": "urn:uuid:NOT-A-UUID"}]})),
        loc("Patient.extension[0].value.ofType(uuid)", IssueType::Value)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient",
            "extension": [{"url": "http://x", "valueOid": "1.2.3"}]})),
        loc("Patient.extension[0].value.ofType(oid)", IssueType::Value)
    );
}

#[test]
fn string_with_control_characters_is_reported() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "name": [{"text": "Ann\u{0}"}]})),
        loc("Patient.name[0].text", IssueType::Value)
    );
}

#[test]
fn integer_ranges_are_enforced() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "multipleBirthInteger": 3000000000u64})),
        loc("Patient.multipleBirth.ofType(integer)", IssueType::Value)
    );
    assert_eq!(
        one_finding(
            json!({"resourceType": "Immunization", "status": "completed",
            "vaccineCode": {"text": "x"}, "patient": {"reference": "Patient/1"},
            "occurrenceString": "last week", "protocolApplied": [{"doseNumberPositiveInt": 0}]})
        ),
        loc(
            "Immunization.protocolApplied[0].doseNumber.ofType(positiveInt)",
            IssueType::Value
        )
    );
}

#[test]
fn wrong_gender_code_is_reported() {
    let issues = validate_resource(&json!({"resourceType": "Patient", "gender": "M"}));
    assert_eq!(issues.len(), 1, "{}", describe(&issues));
    assert_eq!(issues[0].location.as_deref(), Some("Patient.gender"));
    assert_eq!(issues[0].code, IssueType::CodeInvalid);
    assert!(issues[0].diagnostics.contains("administrative-gender"));
}

#[test]
fn required_bindings_are_checked_on_codes_in_backbones_and_datatypes() {
    assert_eq!(
        one_finding(json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"request": {"method": "FETCH", "url": "Patient"}}]})),
        loc("Bundle.entry[0].request.method", IssueType::CodeInvalid)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Bundle", "type": "bag"})),
        loc("Bundle.type", IssueType::CodeInvalid)
    );
    assert_eq!(
        one_finding(
            json!({"resourceType": "Patient", "telecom": [{"system": "pager2", "value": "1"}]})
        ),
        loc("Patient.telecom[0].system", IssueType::CodeInvalid)
    );
    assert_eq!(
        one_finding(
            json!({"resourceType": "Observation", "status": "done", "code": {"text": "x"}})
        ),
        loc("Observation.status", IssueType::CodeInvalid)
    );
}

#[test]
fn required_binding_on_codeable_concept_checks_codings_of_its_systems_only() {
    let ai = |coding: Value| {
        json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/1"},
            "clinicalStatus": {"coding": [coding]}})
    };
    let system = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
    assert!(findings(ai(json!({"system": system, "code": "active"}))).is_empty());
    assert_eq!(
        one_finding(ai(json!({"system": system, "code": "live"}))),
        loc(
            "AllergyIntolerance.clinicalStatus.coding[0].code",
            IssueType::CodeInvalid
        )
    );
    // A translation in another system is not judged against the value set.
    assert!(
        findings(ai(
            json!({"system": "http://snomed.info/sct", "code": "55561003"})
        ))
        .is_empty()
    );
}

#[test]
fn bundle_entries_are_validated_as_their_declared_type() {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "female"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "code": {"text": "x"}, "statuss": "final"},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Nonsense"}, "request": {"method": "POST", "url": "X"}}
    ]});
    assert_eq!(
        findings(bundle),
        [
            loc(
                "Bundle.entry[1].resource.ofType(Observation).statuss",
                IssueType::Structure
            ),
            loc(
                "Bundle.entry[1].resource.ofType(Observation).status",
                IssueType::Required
            ),
            loc("Bundle.entry[2].resource", IssueType::Invalid),
        ]
    );
}

#[test]
fn contained_resources_and_parameters_are_validated() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "contained": [
            {"resourceType": "Organization", "id": "org", "name": 5}]})),
        loc(
            "Patient.contained[0].ofType(Organization).name",
            IssueType::Structure
        )
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "contained": [{"id": "org"}]})),
        loc("Patient.contained[0]", IssueType::Required)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Parameters", "parameter": [
            {"name": "p", "resource": {"resourceType": "Patient", "gender": "x"}}]})),
        loc(
            "Parameters.parameter[0].resource.ofType(Patient).gender",
            IssueType::CodeInvalid
        )
    );
}

#[test]
fn extensions_need_a_url_and_an_allowed_value_type() {
    assert_eq!(
        one_finding(json!({"resourceType": "Patient", "extension": [{"valueString": "x"}]})),
        loc("Patient.extension[0].url", IssueType::Required)
    );
    assert_eq!(
        one_finding(json!({"resourceType": "Patient",
            "extension": [{"url": "http://x", "valueNarrative": {"status": "empty"}}]})),
        loc("Patient.extension[0].valueNarrative", IssueType::Structure)
    );
    assert_eq!(
        one_finding(
            json!({"resourceType": "Patient", "extension": [{"url": "http://x",
            "extension": [{"url": "inner", "valueCoding": {"code": "a b  c"}}]}]})
        ),
        loc(
            "Patient.extension[0].extension[0].value.ofType(Coding).code",
            IssueType::Value
        )
    );
    assert_eq!(
        one_finding(
            json!({"resourceType": "Patient", "modifierExtension": [{"url": 1, "valueBoolean": true}]})
        ),
        loc("Patient.modifierExtension[0].url", IssueType::Structure)
    );
}

#[test]
fn content_reference_elements_are_validated_recursively() {
    let q = json!({"resourceType": "Questionnaire", "status": "active", "item": [
        {"linkId": "1", "type": "group", "item": [
            {"linkId": "1.1", "type": "string", "item": [{"linkId": "1.1.1", "type": "strin"}]},
            {"type": "display"}
        ]}
    ]});
    assert_eq!(
        findings(q),
        [
            loc(
                "Questionnaire.item[0].item[0].item[0].type",
                IssueType::CodeInvalid
            ),
            loc("Questionnaire.item[0].item[1].linkId", IssueType::Required),
        ]
    );
}

#[test]
fn narrative_is_checked() {
    assert!(
        findings(
            json!({"resourceType": "Patient", "text": {"status": "generated",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Ann</div>"}})
        )
        .is_empty()
    );
    assert_eq!(
        findings(json!({"resourceType": "Patient", "text": {"div": "Ann", "status": "made-up"}})),
        [
            loc("Patient.text.div", IssueType::Value),
            loc("Patient.text.status", IssueType::CodeInvalid),
        ]
    );
}

#[test]
fn issues_are_capped() {
    let names: Vec<Value> = (0..2000).map(|_| json!({"x": 1})).collect();
    let issues = validate_resource(&json!({"resourceType": "Patient", "name": names}));
    assert_eq!(issues.len(), shcr::validation::MAX_ISSUES + 1);
    assert_eq!(issues.last().unwrap().code, IssueType::TooCostly);
}
