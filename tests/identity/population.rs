//! A generated population (people at several trusts with demographic variation), imported as
//! `shcr demo` does: every trust's records are linked, and never two people together.

use std::collections::HashMap;

use shcr::import::{collect_files, import_files};
use shcr::interactions::Repository;
use shcr::store::{Author, Store};

use crate::common::TestApp;

#[tokio::test]
async fn generated_population_links_each_person_and_never_two_people() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("population");
    let opts = shcr::generate::GenerateOptions {
        persons: 120,
        trusts: 4,
        seed: 5,
        ..Default::default()
    };
    shcr::generate::write_to_dir(&opts, &out, &indicatif::ProgressBar::hidden()).unwrap();
    let repo = Repository::new(Store::from_pool(app.pool.clone()));
    let author = Author {
        kind: "system",
        id: "shcr-demo".into(),
        org: None,
        request_id: None,
    };
    let files = collect_files(std::slice::from_ref(&out)).unwrap();
    let report = import_files(&repo, &author, files, 2, &indicatif::ProgressBar::hidden()).await;
    assert!(report.errors.is_empty(), "{:#?}", report.errors);

    // truth.csv: trust, local id → person.
    let truth_text = std::fs::read_to_string(out.join("truth.csv")).unwrap();
    let truth: HashMap<(String, String), String> = truth_text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            ((f[0].to_string(), f[1].to_string()), f[2].to_string())
        })
        .collect();
    // Each Patient's person, keyed by (writing trust, local identifier value).
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT ip.org, ri.value, ip.person_id FROM identity_patient ip
         JOIN resource_identifier ri ON ri.resource_type = 'Patient' AND ri.id = ip.patient_id
         WHERE ri.system LIKE '%local-patient-identifier'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        rows.len(),
        truth.len(),
        "every record linked, written as its own trust"
    );
    let mut people_of_person: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
    let mut persons_of_person: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
    for (org, local, person) in &rows {
        let who = truth
            .get(&(org.clone(), local.clone()))
            .unwrap_or_else(|| panic!("{org} {local} not in truth.csv"));
        people_of_person.entry(person).or_default().insert(who);
        persons_of_person.entry(who).or_default().insert(person);
    }
    for (person, people) in &people_of_person {
        assert_eq!(
            people.len(),
            1,
            "Person/{person} joins different people: {people:?}"
        );
    }
    let split = persons_of_person.values().filter(|p| p.len() > 1).count();
    let multi = persons_of_person.len();
    // Almost everyone seen by several trusts ends up as one Person; the rest wait in review.
    assert!(
        split * 20 <= multi,
        "{split} of {multi} people split across persons"
    );
}
