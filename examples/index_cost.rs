//! The indexing cost of the events bench's resources, away from the server: what each document
//! holds, and the CPU of building and indexing the documents of many messages.
//!
//! `cargo run --release --example index_cost -- dump` prints each field's values (terms) for
//! one message's stored resources (Patient, Encounter, 3 Observations, Provenance);
//! `cargo run --release --example index_cost -- run MESSAGES COMMIT_DOCS [merge]` parses,
//! builds and indexes MESSAGES messages' documents into a folder index on one indexing thread,
//! committing every COMMIT_DOCS documents (the live indexer commits when the feed's head is
//! reached), without merges unless `merge`, and prints the process's CPU time for each part.
//! Under `valgrind --tool=callgrind` it gives repeatable instruction counts.

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use serde_json::{Value, json};
use shcr::search::index::{IndexRow, document, open_or_create};
use shcr::search::params::Registry;
use tantivy::schema::Value as _;

const BASE: &str = "https://shcr.example/fhir";

fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// A random-looking UUID (the server assigns v4 ids), fixed by `(k, n)`.
fn uuid(k: usize, n: usize) -> String {
    let mut x = (k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (n as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    let mut next = || {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    };
    let (a, b) = (next(), next());
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52 & 0xfff,
        b & 0xffff_ffff_ffff
    )
}

/// One message's resources as stored (stamped, references resolved), as (type, id, text).
fn message(k: usize) -> Vec<(String, String, String)> {
    let patients = 1000;
    let patient = k % patients;
    let sys = |what: &str| format!("https://fhir.rx1.example.nhs.uk/Id/{what}");
    let meta =
        |v: usize| json!({"versionId": v.to_string(), "lastUpdated": "2026-01-01T00:00:00.000Z"});
    let pid = uuid(patient, 1);
    let eid = uuid(k, 2);
    let given = ["Alex", "Sam", "Jo", "Chris", "Pat", "Robin", "Kim", "Lee"][patient % 8];
    let family = format!(
        "{}{}",
        ["Ash", "Brad", "Carl", "Dun", "Ever"][patient % 5],
        ["by", "ford", "ton", "well", "wood"][(patient / 5) % 5]
    );
    let when = format!(
        "2026-01-01T{:02}:{:02}:{:02}Z",
        (k / 3600) % 24,
        (k / 60) % 60,
        k % 60
    );
    let mut out = vec![
        (
            "Patient".to_string(),
            pid.clone(),
            json!({"resourceType": "Patient", "id": pid, "meta": meta(k / patients + 1),
                "identifier": [{"system": sys("local-patient-identifier"), "value": format!("P{patient}")}],
                "name": [{"family": family, "given": [given]}],
                "gender": (["female", "male"][patient % 2]), "birthDate": "1961-03-04"}),
        ),
        (
            "Encounter".to_string(),
            eid.clone(),
            json!({"resourceType": "Encounter", "id": eid, "meta": meta(1),
                "identifier": [{"system": sys("encounter"), "value": format!("E{k}")}],
                "status": "in-progress",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": format!("Patient/{pid}")},
                "period": {"start": when}}),
        ),
    ];
    for (n, (code, display, value, unit)) in [
        ("8867-4", "Heart rate", 72.0 + (k % 20) as f64, "/min"),
        ("9279-1", "Respiratory rate", 16.0, "/min"),
        ("8310-5", "Body temperature", 36.8, "Cel"),
    ]
    .into_iter()
    .enumerate()
    {
        let oid = uuid(k, 10 + n);
        out.push((
            "Observation".to_string(),
            oid.clone(),
            json!({"resourceType": "Observation", "id": oid, "meta": meta(1),
                "identifier": [{"system": sys("observation"), "value": format!("O{k}-{n}")}],
                "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                "subject": {"reference": format!("Patient/{pid}")},
                "encounter": {"reference": format!("Encounter/{eid}")},
                "effectiveDateTime": when,
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}),
        ));
    }
    let targets: Vec<Value> = out
        .iter()
        .map(|(t, id, _)| json!({"reference": format!("{t}/{id}/_history/1")}))
        .collect();
    let prov = uuid(k, 20);
    out.push((
        "Provenance".to_string(),
        prov.clone(),
        json!({"resourceType": "Provenance", "id": prov, "meta": meta(1), "target": targets,
            "recorded": when,
            "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE"}]},
            "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
                       "who": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RX1"}}},
                      {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "performer"}]},
                       "who": {"identifier": {"system": "https://shcr.example/client", "value": "rx1-tie"}, "display": "rx1-tie"},
                       "onBehalfOf": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RX1"}}}]}),
    ));
    out.into_iter()
        .map(|(t, id, v)| (t, id, v.to_string()))
        .collect()
}

fn row<'a>(t: &'a str, id: &'a str, resource: &'a Value) -> IndexRow<'a> {
    IndexRow {
        resource_type: t,
        id,
        version_id: 1,
        last_updated_micros: 1_767_225_600_000_000,
        author_org: Some("RX1"),
        resource,
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let registry = Registry::load(None)?;
    let dir = tempfile::tempdir()?;
    let (index, f) = open_or_create(dir.path())?;
    let schema = index.schema();
    match args.first().map(String::as_str) {
        Some("dump") => {
            for (t, id, text) in message(7) {
                let resource: Value = serde_json::from_str(&text)?;
                let doc = document(&f, &registry, BASE, &row(&t, &id, &resource));
                let mut per_field: std::collections::BTreeMap<&str, usize> = Default::default();
                println!("== {t}");
                for (field, value) in doc.field_values() {
                    let name = schema.get_field_name(field);
                    *per_field.entry(name).or_default() += 1;
                    let shown = match (value.as_str(), value.as_bytes(), value.as_i64()) {
                        (Some(s), _, _) => s.replace('\u{1f}', "␟").replace('\u{2}', "*"),
                        (_, Some(b), _) => format!("<{} bytes>", b.len()),
                        (_, _, Some(i)) => i.to_string(),
                        _ => "?".to_string(),
                    };
                    println!("  {name:<10} {shown}");
                }
                println!("  fields: {per_field:?}");
            }
        }
        Some("run") => {
            let messages: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
            let commit_docs: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(600);
            let merge = args.get(3).is_some_and(|a| a == "merge");
            let rows: Vec<(String, String, String)> = (0..messages).flat_map(message).collect();
            let options = tantivy::indexer::IndexWriterOptions::builder()
                .num_worker_threads(1)
                .memory_budget_per_thread(64 * 1024 * 1024)
                .build();
            let mut writer: tantivy::IndexWriter = index.writer_with_options(options)?;
            if merge {
                let mut policy = tantivy::indexer::LogMergePolicy::default();
                policy.set_min_layer_size(100);
                writer.set_merge_policy(Box::new(policy));
            } else {
                writer.set_merge_policy(Box::new(tantivy::indexer::NoMergePolicy));
            }
            let (mut build, mut add, mut commit) = (0.0, 0.0, 0.0);
            let started = Instant::now();
            let cpu0 = cpu_seconds();
            for chunk in rows.chunks(commit_docs) {
                let c = cpu_seconds();
                let docs: Vec<_> = chunk
                    .iter()
                    .map(|(t, id, text)| {
                        let resource: Value = serde_json::from_str(text).expect("json");
                        document(&f, &registry, BASE, &row(t, id, &resource))
                    })
                    .collect();
                let c2 = cpu_seconds();
                build += c2 - c;
                for ((t, id, _), doc) in chunk.iter().zip(docs) {
                    writer.delete_term(tantivy::Term::from_field_text(f.key, &format!("{t}/{id}")));
                    writer.add_document(doc)?;
                }
                let c3 = cpu_seconds();
                add += c3 - c2;
                writer.commit()?;
                commit += cpu_seconds() - c3;
            }
            writer.wait_merging_threads()?;
            let total = cpu_seconds() - cpu0;
            let n = rows.len() as f64;
            println!(
                "{} documents ({messages} messages), commit every {commit_docs}, merges {}: \
                 wall {:.2} s, CPU {:.3} s = {:.1} µs per document ({:.1} µs per message): \
                 parse+build {:.1}, queue {:.1}, commit (waits for indexing) {:.1}, rest {:.1} µs per document",
                rows.len(),
                if merge { "on" } else { "off" },
                started.elapsed().as_secs_f64(),
                total,
                total / n * 1e6,
                total / messages as f64 * 1e6,
                build / n * 1e6,
                add / n * 1e6,
                commit / n * 1e6,
                (total - build - add - commit) / n * 1e6,
            );
            let searcher = index.reader()?.searcher();
            println!(
                "segments {}, documents {}",
                searcher.segment_readers().len(),
                searcher.num_docs()
            );
            // Terms per field and parameter summed over the segments: the FST inserts and
            // postings lists the commits built.
            let mut terms: std::collections::BTreeMap<(String, String), (u64, u64)> =
                Default::default();
            for (field, entry) in schema.fields() {
                if !entry.is_indexed() {
                    continue;
                }
                for segment in searcher.segment_readers() {
                    let inverted = segment.inverted_index(field)?;
                    let mut stream = inverted.terms().stream()?;
                    while stream.advance() {
                        let text = String::from_utf8_lossy(stream.key()).to_string();
                        let code = text.split('\u{1f}').next().unwrap_or("").to_string();
                        let code = if code.len() > 40 || !text.contains('\u{1f}') {
                            "-".to_string()
                        } else {
                            code
                        };
                        let e = terms.entry((entry.name().to_string(), code)).or_default();
                        e.0 += 1;
                        e.1 += stream.key().len() as u64;
                    }
                }
            }
            let mut rows: Vec<_> = terms.into_iter().collect();
            rows.sort_by_key(|(_, (n, _))| std::cmp::Reverse(*n));
            let all: u64 = rows.iter().map(|(_, (n, _))| n).sum();
            println!(
                "terms over all segments: {all} ({:.1} per message)",
                all as f64 / messages as f64
            );
            for ((field, code), (n, bytes)) in rows.iter().take(30) {
                println!(
                    "  {field:<10} {code:<28} {n:>8} ({:.2} per message, {:.0} bytes each)",
                    *n as f64 / messages as f64,
                    *bytes as f64 / *n as f64
                );
            }
        }
        _ => anyhow::bail!("usage: index_cost dump | run MESSAGES COMMIT_DOCS [merge]"),
    }
    Ok(())
}
