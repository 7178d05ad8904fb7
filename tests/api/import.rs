//! `shcr import` over the real sample data in tests/fixtures: Synthea batch and transaction
//! bundles (with conditional references across files) and the UK Core examples.

use std::path::PathBuf;

use serde_json::Value;
use shcr::import::{ImportReport, collect_files, import_files};
use shcr::interactions::Repository;
use shcr::store::{Author, Store};

use crate::common::TestApp;

fn fixtures(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub)
}

async fn import(app: &TestApp, paths: &[PathBuf]) -> ImportReport {
    let repo = Repository::new(Store::from_pool(app.pool.clone()));
    let author = Author {
        kind: "system",
        id: "test-import".into(),
        org: Some("RX1".into()),
        request_id: None,
    };
    let files = collect_files(paths).unwrap();
    import_files(&repo, &author, files, 4, &indicatif::ProgressBar::hidden()).await
}

async fn heads(app: &TestApp, resource_type: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM resource_head WHERE resource_type = $1 AND NOT deleted",
    )
    .bind(resource_type)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// UK Core examples that are not valid R4 JSON even after dropping `fhir_comments`: the
/// published XML was converted with R5 cardinalities (see tests/validation.rs), plus the batch
/// example, whose GETs name another server.
const UKCORE_REFUSED: &[(&str, &str)] = &[
    ("Extension-UKCore-CuffSize-Example.json", "Device.type"),
    (
        "Extension-UKCore-ListWarningCode-Example.json",
        "List.subject",
    ),
    ("UKCore-Bundle-Batch-Example.json", "Bundle.entry[0]"),
    (
        "UKCore-Composition-Discharge-Example.json",
        "Composition.identifier",
    ),
    (
        "UKCore-Device-BloodPressure-Sphygmomanometer-Example.json",
        "Device.type",
    ),
    (
        "UKCore-Device-BloodSpotContainer-Example.json",
        "Device.type",
    ),
    ("UKCore-Device-ColostomyBag-Example.json", "Device.type"),
    (
        "UKCore-Device-SoftwareAsAMedicalDevice-Example.json",
        "Device.type",
    ),
    ("UKCore-List-EmptyList-Example.json", "List.subject"),
    ("UKCore-List-Sn-NoAllergyData-Example.json", "List.subject"),
    (
        "UKCore-QuestionnaireResponse-InpatientSurvey-Example.json",
        "QuestionnaireResponse.identifier",
    ),
];

#[tokio::test]
async fn synthea_bundles_import_with_references_resolved_across_files() {
    let app = TestApp::spawn().await;
    // The patient bundles sort before the hospital and practitioner files and refer to them.
    let report = import(&app, &[fixtures("synthea")]).await;
    assert_eq!(report.files, 4);
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert_eq!(heads(&app, "Location").await, 1191);
    assert_eq!(heads(&app, "Organization").await, 1191);
    assert_eq!(heads(&app, "Practitioner").await, 1191);
    assert_eq!(heads(&app, "Patient").await, 2);
    assert_eq!(heads(&app, "Observation").await, 86 + 192);

    // Edgar's Observations point at Edgar's stored Patient, not at the bundle's urn:uuid.
    let edgar: String = sqlx::query_scalar(
        "SELECT id FROM resource_version WHERE resource_type = 'Patient' AND content->'name'->0->'given'->>0 = 'Edgar153'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let subject_count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM resource_version WHERE resource_type = 'Observation' AND content->'subject'->>'reference' = $1",
    )
    .bind(format!("Patient/{edgar}"))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(subject_count, 86);

    // Conditional references (Practitioner?identifier=…) became literal ids that resolve.
    let encounter: Value = sqlx::query_scalar(
        "SELECT content FROM resource_version WHERE resource_type = 'Encounter' AND content->'subject'->>'reference' = $1 LIMIT 1",
    )
    .bind(format!("Patient/{edgar}"))
    .fetch_one(&app.pool)
    .await
    .unwrap();
    for reference in [
        encounter["participant"][0]["individual"]["reference"]
            .as_str()
            .unwrap(),
        encounter["serviceProvider"]["reference"].as_str().unwrap(),
    ] {
        assert!(!reference.contains('?'), "{reference}");
        assert_eq!(app.get(reference).await.status(), 200, "{reference}");
    }

    // The batch files use If-None-Exist: importing them again changes nothing.
    let versions = app.count("resource_version").await;
    let again = import(
        &app,
        &[
            fixtures("synthea/hospitalInformation1633536936158.json"),
            fixtures("synthea/practitionerInformation1633536936158.json"),
        ],
    )
    .await;
    assert_eq!(
        again.unchanged,
        1191 * 3,
        "Location, Organization and Practitioner entries match"
    );
    assert_eq!(
        again.written, 1191,
        "PractitionerRole entries carry no If-None-Exist"
    );
    assert_eq!(app.count("resource_version").await, versions + 1191);
}

#[tokio::test]
async fn uk_core_examples_import_and_bad_files_are_named() {
    let app = TestApp::spawn().await;
    let report = import(&app, &[fixtures("ukcore")]).await;
    assert_eq!(report.files, 134);
    assert_eq!(
        report.files_failed,
        UKCORE_REFUSED.len(),
        "{:#?}",
        report.errors
    );
    for (file, location) in UKCORE_REFUSED {
        assert!(
            report
                .errors
                .iter()
                .any(|e| e.contains(file) && e.contains(location)),
            "no error naming {file} at {location}: {:#?}",
            report.errors
        );
    }
    // Examples keep their ids; fhir_comments are gone.
    let r = app.get("Patient/UKCore-Patient-RichardSmith-Example").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains("fhir_comments"));
    let patient: Value = serde_json::from_str(&text).unwrap();
    let nhs = patient["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["system"] == "https://fhir.nhs.uk/Id/nhs-number")
        .expect("NHS number kept");
    assert_eq!(nhs["value"], "9912003888");
    assert_eq!(heads(&app, "Composition").await, 1);
}

#[tokio::test]
async fn unreadable_files_are_reported_and_the_rest_imported() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a-broken.json"),
        "{\"resourceType\": \"Patient\",",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b-good.ndjson"),
        format!(
            "{}\n{}\n{{\"resourceType\": \"Patient\", \"gender\": \"sometimes\"}}\n",
            crate::common::patient("9434765919"),
            serde_json::json!({"resourceType": "Patient", "id": "p2", "gender": "male"})
        ),
    )
    .unwrap();
    let report = import(&app, &[dir.path().to_path_buf()]).await;
    assert_eq!(report.files, 2);
    assert_eq!(report.written, 2);
    assert_eq!(report.errors.len(), 2, "{:#?}", report.errors);
    assert!(
        report.errors[0].contains("a-broken.json:1:"),
        "{}",
        report.errors[0]
    );
    assert!(
        report.errors[1].contains("b-good.ndjson:3:")
            && report.errors[1].contains("Patient.gender"),
        "{}",
        report.errors[1]
    );
    assert_eq!(heads(&app, "Patient").await, 2);
}

#[tokio::test]
async fn a_generated_population_imports_without_errors() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("population");
    let opts = shcr::generate::GenerateOptions {
        persons: 60,
        trusts: 3,
        seed: 11,
        ..Default::default()
    };
    let summary =
        shcr::generate::write_to_dir(&opts, &out, &indicatif::ProgressBar::hidden()).unwrap();
    let report = import(&app, &[out]).await;
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert_eq!(report.written, summary.resources);
    assert_eq!(heads(&app, "Patient").await, summary.patient_records as i64);
    // Re-importing converges: every entry carries If-None-Exist on its business identifier.
    let again = import(&app, &[dir.path().join("population")]).await;
    assert_eq!(again.written, 0, "{:#?}", again.errors);
    assert_eq!(again.unchanged, summary.resources);
}
