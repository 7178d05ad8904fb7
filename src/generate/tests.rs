//! Behaviour of the generated population as a whole.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use serde_json::Value;

use super::*;

fn small() -> GenerateOptions {
    GenerateOptions {
        persons: 400,
        trusts: 8,
        seed: 7,
        ..GenerateOptions::default()
    }
}

/// One run shared by the read-only checks, so the suite stays fast in debug builds.
static RUN: LazyLock<Vec<Batch>> = LazyLock::new(|| Generator::new(&small()).collect());

fn bundles() -> impl Iterator<Item = &'static GeneratedBundle> {
    RUN.iter().map(|b| &b.bundle)
}

fn resources() -> impl Iterator<Item = &'static Value> {
    bundles().flat_map(|b| {
        b.bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["resource"])
    })
}

fn of_type(rt: &'static str) -> impl Iterator<Item = &'static Value> {
    resources().filter(move |r| r["resourceType"] == rt)
}

fn truth() -> impl Iterator<Item = &'static TruthRow> {
    RUN.iter().flat_map(|b| b.truth.iter())
}

/// Every `{"reference": ...}` string anywhere inside `v`.
fn references<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("reference") {
                out.push(r);
            }
            map.values().for_each(|x| references(x, out));
        }
        Value::Array(items) => items.iter().for_each(|x| references(x, out)),
        _ => {}
    }
}

fn serialised(opts: &GenerateOptions) -> Vec<(String, String)> {
    generate(opts)
        .map(|b| (b.file_name, serde_json::to_string(&b.bundle).unwrap()))
        .collect()
}

#[test]
fn same_seed_gives_identical_bundles_and_other_seeds_differ() {
    let opts = GenerateOptions {
        persons: 60,
        ..small()
    };
    let a = serialised(&opts);
    assert_eq!(a, serialised(&opts));
    let other = serialised(&GenerateOptions { seed: 8, ..opts });
    assert_ne!(a, other);
}

#[test]
fn written_directory_is_byte_identical_across_runs() {
    let opts = GenerateOptions {
        persons: 80,
        trusts: 5,
        seed: 99,
        persons_per_bundle: 7,
    };
    let base = std::env::temp_dir().join(format!("shcr-generate-test-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    let bar = indicatif::ProgressBar::hidden();
    let sa = write_to_dir(&opts, &a, &bar).unwrap();
    let sb = write_to_dir(&opts, &b, &bar).unwrap();
    assert_eq!(sa.resources, sb.resources);
    assert!(
        write_to_dir(&opts, &a, &bar).is_err(),
        "non-empty directory must be refused"
    );

    let files = |root: &Path| -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(
                        p.strip_prefix(root).unwrap().to_owned(),
                        fs::read(&p).unwrap(),
                    );
                }
            }
        }
        out
    };
    let (fa, fb) = (files(&a), files(&b));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    assert!(fa == fb, "file contents differ between runs");
    assert!(fa.contains_key(Path::new("truth.csv")));
    assert!(fa.contains_key(Path::new("README.txt")));
    let truth = String::from_utf8(fa[Path::new("truth.csv")].clone()).unwrap();
    assert_eq!(truth.lines().count(), sa.patient_records + 1);
    for t in &sa.trusts {
        assert!(fa.contains_key(&Path::new(&t.ods).join("0000-organisation.json")));
        assert!(fa.contains_key(&Path::new(&t.ods).join("0001-patients.json")));
    }
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn every_person_is_seen_by_one_to_three_trusts() {
    let mut by_person: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for row in truth() {
        assert!(
            by_person
                .entry(&row.person_key)
                .or_default()
                .insert(&row.trust_ods),
            "a trust holds two records of one person"
        );
    }
    assert_eq!(by_person.len(), small().persons);
    assert!(by_person.values().all(|t| (1..=3).contains(&t.len())));
    assert!(by_person.values().any(|t| t.len() == 3));
    assert!(by_person.values().any(|t| t.len() == 1));
}

#[test]
fn nhs_numbers_are_valid_test_range_numbers_unless_flagged() {
    let flagged: BTreeMap<&str, &TruthRow> = truth().map(|r| (r.local_id.as_str(), r)).collect();
    let mut invalid = 0;
    let mut people_by_number: BTreeMap<&str, &str> = BTreeMap::new();
    for p in of_type("Patient") {
        let ids = p["identifier"].as_array().unwrap();
        let local = ids
            .iter()
            .find(|i| {
                i["system"]
                    .as_str()
                    .unwrap()
                    .ends_with("/Id/local-patient-identifier")
            })
            .unwrap()["value"]
            .as_str()
            .unwrap();
        let row = flagged[local];
        let nhs = ids
            .iter()
            .find(|i| i["system"] == crate::identity::nhs_number::SYSTEM);
        match nhs {
            None => assert_eq!(row.recorded_nhs, None),
            Some(id) => {
                let value = id["value"].as_str().unwrap();
                assert!(value.starts_with("999") && value.len() == 10, "{value}");
                let parsed = NhsNumber::parse(value);
                assert_eq!(parsed.is_ok(), row.nhs_valid == Some(true), "{value}");
                if parsed.is_err() {
                    invalid += 1;
                    assert!(row.variations.contains(&"nhs-number-invalid"));
                } else {
                    assert_eq!(value, row.true_nhs);
                }
                let ext = &id["extension"][0];
                assert_eq!(ext["url"], bundle::NHS_VERIFICATION_EXT);
                let coding = &ext["valueCodeableConcept"]["coding"][0];
                assert_eq!(coding["system"], bundle::NHS_VERIFICATION_CS);
                assert!(["01", "02", "03"].contains(&coding["code"].as_str().unwrap()));
            }
        }
        let prev = people_by_number.insert(flagged[local].true_nhs.as_str(), &row.person_key);
        assert!(
            prev.is_none_or(|k| k == row.person_key),
            "two persons share a number"
        );
    }
    assert!(
        invalid > 0,
        "some deliberately invalid numbers are expected"
    );
}

#[test]
fn verification_status_is_mostly_verified() {
    let statuses: Vec<&str> = truth().filter_map(|r| r.verification).collect();
    let verified = statuses.iter().filter(|s| **s == "01").count();
    assert!(
        verified * 100 / statuses.len() > 75,
        "{verified}/{}",
        statuses.len()
    );
    assert!(statuses.contains(&"02"));
}

#[test]
fn patient_bundles_use_conditional_references_for_organisations_and_practitioners() {
    let mut org = 0;
    let mut practitioner = 0;
    for b in bundles().filter(|b| b.file_name.ends_with("patients.json")) {
        let mut refs = Vec::new();
        references(&b.bundle, &mut refs);
        org += refs
            .iter()
            .filter(|r| {
                r.starts_with(
                    "Organization?identifier=https://fhir.nhs.uk/Id/ods-organization-code|",
                )
            })
            .count();
        practitioner += refs
            .iter()
            .filter(|r| {
                r.starts_with("Practitioner?identifier=https://fhir.hl7.org.uk/Id/gmc-number|")
                    || r.starts_with(
                        "Practitioner?identifier=https://fhir.hl7.org.uk/Id/nmc-number|",
                    )
            })
            .count();
        for e in b.bundle["entry"].as_array().unwrap() {
            let rt = e["resource"]["resourceType"].as_str().unwrap();
            assert!(!["Organization", "Practitioner", "PractitionerRole"].contains(&rt));
        }
    }
    assert!(org > 0 && practitioner > 0);
}

#[test]
fn every_reference_resolves_inside_its_bundle_or_is_conditional() {
    let conditional =
        regex::Regex::new(r"^(Organization|Practitioner)\?identifier=https://[^|]+\|[A-Za-z0-9]+$")
            .unwrap();
    for b in bundles() {
        let entries = b.bundle["entry"].as_array().unwrap();
        let urls: BTreeSet<&str> = entries
            .iter()
            .map(|e| e["fullUrl"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls.len(),
            entries.len(),
            "duplicate fullUrl in {}",
            b.file_name
        );
        assert!(
            urls.iter()
                .all(|u| u.starts_with("urn:uuid:") && uuid::Uuid::parse_str(&u[9..]).is_ok())
        );
        let mut refs = Vec::new();
        references(&b.bundle, &mut refs);
        for r in refs {
            assert!(
                urls.contains(r) || conditional.is_match(r),
                "{r} in {}",
                b.file_name
            );
        }
    }
}

#[test]
fn every_entry_is_a_conditional_create_on_its_own_identifier() {
    for b in bundles() {
        assert_eq!(b.bundle["resourceType"], "Bundle");
        assert_eq!(b.bundle["type"], "transaction");
        let entries = b.bundle["entry"].as_array().unwrap();
        assert_eq!(entries.len(), b.resource_count);
        let mut keys = BTreeSet::new();
        for e in entries {
            let req = &e["request"];
            assert_eq!(req["method"], "POST");
            assert_eq!(req["url"], e["resource"]["resourceType"]);
            let key = req["ifNoneExist"].as_str().unwrap();
            let (system, value) = key
                .strip_prefix("identifier=")
                .unwrap()
                .split_once('|')
                .unwrap();
            let own = e["resource"]["identifier"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["system"] == system && i["value"] == value);
            assert!(own, "{key} is not the resource's identifier");
            assert!(keys.insert(key), "duplicate business identifier {key}");
        }
    }
}

#[test]
fn bundles_have_the_expected_names_and_sizes() {
    let mut per_trust: BTreeMap<&str, Vec<&GeneratedBundle>> = BTreeMap::new();
    for b in bundles() {
        per_trust.entry(&b.trust_ods).or_default().push(b);
    }
    assert_eq!(per_trust.len(), small().trusts);
    let mut sizes = Vec::new();
    for (ods, list) in per_trust {
        assert_eq!(list[0].file_name, format!("{ods}/0000-organisation.json"));
        for (i, b) in list.iter().enumerate().skip(1) {
            assert_eq!(b.file_name, format!("{ods}/{i:04}-patients.json"));
            assert!(
                b.resource_count <= 300,
                "{} has {}",
                b.file_name,
                b.resource_count
            );
            if i + 1 < list.len() {
                sizes.push(b.resource_count);
            }
        }
    }
    let mean = sizes.iter().sum::<usize>() / sizes.len();
    assert!((100..=300).contains(&mean), "mean full bundle size {mean}");
    let in_range = sizes.iter().filter(|s| (100..=300).contains(*s)).count();
    assert!(in_range * 10 >= sizes.len() * 8, "{sizes:?}");
}

#[test]
fn the_same_person_looks_different_at_different_trusts() {
    let person_of: BTreeMap<&str, &str> = truth()
        .map(|r| (r.local_id.as_str(), r.person_key.as_str()))
        .collect();
    let mut seen: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for p in of_type("Patient") {
        let local = p["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| {
                i["system"]
                    .as_str()
                    .unwrap()
                    .ends_with("/Id/local-patient-identifier")
            })
            .unwrap()["value"]
            .as_str()
            .unwrap();
        seen.entry(person_of[local]).or_default().push(p);
    }
    let differ = |field: &dyn Fn(&Value) -> Value| {
        seen.values()
            .filter(|ps| ps.len() > 1 && ps.iter().any(|p| field(p) != field(ps[0])))
            .count()
    };
    assert!(
        differ(&|p| p["name"][0]["given"][0].clone()) > 0,
        "given names"
    );
    assert!(
        differ(&|p| p["name"][0]["family"].clone()) > 0,
        "family names"
    );
    assert!(differ(&|p| p["birthDate"].clone()) > 0, "birth dates");
    assert!(
        differ(&|p| p["address"][0]["postalCode"].clone()) > 0,
        "addresses"
    );
    let kinds: BTreeSet<&str> = truth().flat_map(|r| r.variations.iter().copied()).collect();
    for v in [
        "nickname",
        "previous-address",
        "nhs-number-missing",
        "nhs-number-invalid",
    ] {
        assert!(kinds.contains(v), "{v} never applied");
    }
}

/// FHIR R4 `date`, `dateTime` and `instant` shapes.
fn check_dates(v: &Value, path: &str) {
    static DATE: LazyLock<regex::Regex> = LazyLock::new(|| {
        regex::Regex::new(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?(Z|[+-]\d\d:\d\d))?$").unwrap()
    });
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let is_date = k.ends_with("DateTime")
                    || k.ends_with("Date")
                    || [
                        "start",
                        "end",
                        "authoredOn",
                        "issued",
                        "date",
                        "creation",
                        "dateAsserted",
                        "timestamp",
                        "recordedDate",
                    ]
                    .contains(&k.as_str());
                if is_date && let Value::String(s) = x {
                    assert!(DATE.is_match(s), "{path}.{k} = {s}");
                }
                check_dates(x, &format!("{path}.{k}"));
            }
        }
        Value::Array(items) => items.iter().for_each(|x| check_dates(x, path)),
        _ => {}
    }
}

fn coding_system(concept: &Value) -> &str {
    concept["coding"][0]["system"].as_str().unwrap_or("")
}

#[test]
fn resources_carry_the_elements_fhir_r4_requires() {
    for b in bundles() {
        check_dates(&b.bundle, &b.file_name);
    }
    let subject = |r: &Value, key: &str| {
        assert!(
            r[key]["reference"]
                .as_str()
                .is_some_and(|s| s.starts_with("urn:uuid:")),
            "{r}"
        );
    };
    let mut seen = BTreeSet::new();
    for r in resources() {
        let rt = r["resourceType"].as_str().unwrap();
        seen.insert(rt);
        assert_eq!(
            r["meta"]["profile"][0],
            format!("https://fhir.hl7.org.uk/StructureDefinition/UKCore-{rt}")
        );
        assert!(!r["identifier"].as_array().unwrap().is_empty());
        match rt {
            "Patient" => {
                assert!(
                    ["male", "female", "other", "unknown"].contains(&r["gender"].as_str().unwrap())
                );
                assert!(r["name"][0]["family"].is_string());
            }
            "Encounter" => {
                assert_eq!(r["status"], "finished");
                assert_eq!(r["class"]["system"], bundle::ACT_CODE);
                assert!(
                    ["AMB", "IMP", "EMER", "HH", "VR"]
                        .contains(&r["class"]["code"].as_str().unwrap())
                );
                assert!(
                    r["period"]["start"].as_str().unwrap() <= r["period"]["end"].as_str().unwrap()
                );
                assert!(
                    r["serviceProvider"]["reference"]
                        .as_str()
                        .unwrap()
                        .starts_with("Organization?")
                );
                subject(r, "subject");
            }
            "Condition" => {
                subject(r, "subject");
                assert_eq!(
                    coding_system(&r["clinicalStatus"]),
                    "http://terminology.hl7.org/CodeSystem/condition-clinical"
                );
                assert_eq!(
                    coding_system(&r["verificationStatus"]),
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status"
                );
                assert_eq!(coding_system(&r["code"]), bundle::SNOMED);
                // con-4: an abated condition is no longer active.
                if r.get("abatementDateTime").is_some() {
                    assert_eq!(r["clinicalStatus"]["coding"][0]["code"], "resolved");
                }
                assert!(
                    r["onsetDateTime"].as_str().unwrap()
                        <= r["abatementDateTime"].as_str().unwrap_or("9999")
                );
            }
            "Observation" => {
                assert_eq!(r["status"], "final");
                assert!(
                    r["code"]["coding"]
                        .as_array()
                        .is_some_and(|c| !c.is_empty())
                );
                assert!(
                    r["category"][0]["coding"][0]["system"]
                        == "http://terminology.hl7.org/CodeSystem/observation-category"
                );
                subject(r, "subject");
                let quantities: Vec<&Value> = match r.get("component") {
                    Some(c) => c
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| &c["valueQuantity"])
                        .collect(),
                    None => vec![&r["valueQuantity"]],
                };
                for q in quantities {
                    assert_eq!(q["system"], bundle::UCUM);
                    assert!(q["value"].is_number() && q["code"].is_string(), "{r}");
                }
            }
            "MedicationRequest" => {
                assert!(["active", "completed"].contains(&r["status"].as_str().unwrap()));
                assert_eq!(r["intent"], "order");
                subject(r, "subject");
                assert_eq!(coding_system(&r["medicationCodeableConcept"]), bundle::DMD);
                assert!(r["dosageInstruction"][0]["text"].is_string());
            }
            "MedicationStatement" => {
                assert_eq!(r["status"], "active");
                subject(r, "subject");
                assert_eq!(coding_system(&r["medicationCodeableConcept"]), bundle::DMD);
            }
            "AllergyIntolerance" => {
                subject(r, "patient");
                assert_eq!(
                    coding_system(&r["clinicalStatus"]),
                    "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
                );
                assert_eq!(
                    coding_system(&r["verificationStatus"]),
                    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
                );
                if let Some(c) = r.get("criticality") {
                    assert!(["low", "high", "unable-to-assess"].contains(&c.as_str().unwrap()));
                }
            }
            "DocumentReference" => {
                assert_eq!(r["status"], "current");
                subject(r, "subject");
                let att = &r["content"][0]["attachment"];
                assert!(att["data"].is_string() || att["url"].is_string());
                if let Some(data) = att["data"].as_str() {
                    use base64::Engine as _;
                    let text = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .unwrap();
                    assert_eq!(att["size"].as_u64().unwrap() as usize, text.len());
                    assert!(att["contentType"].is_string());
                }
            }
            "Organization" | "Practitioner" | "PractitionerRole" => {}
            other => panic!("unexpected resource type {other}"),
        }
    }
    for rt in [
        "Patient",
        "Encounter",
        "Condition",
        "Observation",
        "MedicationRequest",
        "MedicationStatement",
        "AllergyIntolerance",
        "DocumentReference",
        "Organization",
        "Practitioner",
        "PractitionerRole",
    ] {
        assert!(seen.contains(rt), "no {rt} generated");
    }
}

#[test]
fn trusts_are_of_mixed_kinds_with_plausible_ods_codes() {
    let trusts = trusts::build_trusts(7, 8);
    let kinds: BTreeSet<TrustKind> = trusts.iter().map(|t| t.kind).collect();
    assert_eq!(kinds.len(), 4);
    let trust_code = regex::Regex::new(r"^R[A-Z0-9]{2}$").unwrap();
    let gp_code = regex::Regex::new(r"^[A-Y]\d{5}$").unwrap();
    for t in &trusts {
        let ok = match t.kind {
            TrustKind::GpPractice => gp_code.is_match(&t.ods),
            _ => trust_code.is_match(&t.ods),
        };
        assert!(ok, "{} {:?}", t.ods, t.kind);
    }
    let orgs: Vec<&Value> = of_type("Organization").collect();
    assert_eq!(orgs.len(), small().trusts);
    assert!(
        orgs.iter()
            .all(|o| o["identifier"][0]["system"] == bundle::ODS)
    );
}

#[test]
fn clinical_content_fits_the_trust_and_includes_sensitive_records() {
    let ods_kind: BTreeMap<String, TrustKind> = trusts::build_trusts(small().seed, small().trusts)
        .into_iter()
        .map(|t| (t.ods, t.kind))
        .collect();
    let mut sensitive = BTreeSet::new();
    for b in bundles() {
        let kind = ods_kind[&b.trust_ods];
        for e in b.bundle["entry"].as_array().unwrap() {
            let r = &e["resource"];
            if r["resourceType"] == "Encounter" {
                let class = r["class"]["code"].as_str().unwrap();
                let allowed: &[&str] = match kind {
                    TrustKind::GpPractice => &["AMB", "VR", "HH"],
                    TrustKind::Acute => &["AMB", "EMER", "IMP"],
                    TrustKind::Community => &["AMB", "HH"],
                    TrustKind::MentalHealth => &["AMB", "HH", "IMP"],
                };
                assert!(allowed.contains(&class), "{class} at {kind:?}");
            }
            if r["resourceType"] == "Condition" {
                let code = r["code"]["coding"][0]["code"].as_str().unwrap();
                let def = data::DATA
                    .conditions
                    .iter()
                    .find(|c| c.code == code)
                    .unwrap();
                assert!(def.recorded_by(kind), "{code} at {kind:?}");
                if let Some(s) = def.sensitivity {
                    sensitive.insert(s);
                }
            }
        }
    }
    assert!(sensitive.contains("mental-health"), "{sensitive:?}");
    let batches_sensitive: usize = RUN.iter().map(|b| b.sensitive_conditions).sum();
    assert!(batches_sensitive > 0);
}

#[test]
fn invalid_options_are_refused() {
    let bad = [
        GenerateOptions {
            trusts: 0,
            ..GenerateOptions::default()
        },
        GenerateOptions {
            persons_per_bundle: 0,
            ..GenerateOptions::default()
        },
        GenerateOptions {
            persons: MAX_PERSONS + 1,
            ..GenerateOptions::default()
        },
    ];
    for o in bad {
        assert!(o.validate().is_err());
    }
}

#[test]
fn nhs_numbers_are_unique_across_the_whole_range() {
    let mut numbers = NhsNumbers {
        start: 123_456,
        step: 0,
    };
    let mut seen = BTreeSet::new();
    for _ in 0..50_000 {
        assert!(seen.insert(numbers.next()));
    }
}

/// Timing check for the release build: `cargo test --release --lib ten_thousand -- --ignored
/// --nocapture`. Set `SHCR_GENERATE_KEEP=DIR` to keep the output for inspection.
#[test]
#[ignore = "writes a few hundred MB; run explicitly in release"]
fn ten_thousand_persons_in_seconds() {
    let opts = GenerateOptions {
        persons: 10_000,
        trusts: 12,
        seed: 2025,
        ..GenerateOptions::default()
    };
    let keep = std::env::var_os("SHCR_GENERATE_KEEP").map(PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("shcr-generate-10k-{}", std::process::id()))
    });
    let started = std::time::Instant::now();
    let in_memory = generate(&opts).map(|b| b.resource_count).sum::<usize>();
    let generate_only = started.elapsed();
    let started = std::time::Instant::now();
    let summary = write_to_dir(&opts, &dir, &indicatif::ProgressBar::hidden()).unwrap();
    let with_files = started.elapsed();
    assert_eq!(in_memory, summary.resources);
    println!(
        "10k persons, 12 trusts: {} records, {} bundles, {} resources, {:.1} MB; \
         in memory {:.2?}, to files {:.2?}",
        summary.patient_records,
        summary.bundles,
        summary.resources,
        summary.bytes as f64 / 1e6,
        generate_only,
        with_files
    );
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    if keep.is_none() {
        fs::remove_dir_all(&dir).unwrap();
    }
}
