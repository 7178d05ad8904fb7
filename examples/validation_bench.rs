//! Measures structural validation throughput over the project's fixtures.
//!
//! `cargo run --release --example validation_bench [ROUNDS]`
//!
//! Each Bundle entry counts as one resource (as at ingest, where a transaction's entries are what
//! gets stored); the Bundle itself is validated as one call, as ingest would do. Reported figures
//! are for one thread; ingest validates on every worker thread in parallel.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;
use shcr::validation::{load_definitions, validate_resource};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let t = Instant::now();
    load_definitions();
    println!(
        "definitions loaded in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut docs: Vec<(String, Value)> = Vec::new();
    for folder in ["ukcore", "synthea"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(folder))
            .expect("fixtures")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read");
            docs.push((
                folder.to_string(),
                serde_json::from_str(&text).expect("json"),
            ));
        }
    }

    // Individual resources: every top-level non-Bundle document and every Bundle entry resource,
    // each validated on its own (the per-resource cost ingest pays).
    let mut singles: Vec<&Value> = Vec::new();
    for (_, d) in &docs {
        if d["resourceType"] == "Bundle" {
            if let Some(entries) = d["entry"].as_array() {
                singles.extend(entries.iter().filter_map(|e| e.get("resource")));
            }
        } else {
            singles.push(d);
        }
    }
    let bytes: usize = singles.iter().map(|v| v.to_string().len()).sum();
    println!(
        "{} resources ({:.1} KiB average JSON)",
        singles.len(),
        bytes as f64 / singles.len() as f64 / 1024.0
    );

    let mut issues = 0usize;
    for v in &singles {
        issues += validate_resource(v).len(); // warm-up
    }
    let t = Instant::now();
    for _ in 0..rounds {
        for v in &singles {
            issues += std::hint::black_box(validate_resource(v)).len();
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let n = (rounds * singles.len()) as f64;
    println!(
        "one resource at a time: {:.0} resources/s on one thread, {:.2} us per resource ({} issues seen)",
        n / secs,
        secs / n * 1e6,
        issues / (rounds + 1)
    );

    // Ingest validates a resource right after parsing it, while its JSON is still in cache; the
    // loop above walks ~7,500 trees that do not fit in cache. Validate each resource a few times
    // in a row to see the in-cache cost.
    let t = Instant::now();
    for v in &singles {
        for _ in 0..rounds.div_ceil(4) {
            std::hint::black_box(validate_resource(v));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let hot = (rounds.div_ceil(4) * singles.len()) as f64;
    println!(
        "in cache: {:.0} resources/s on one thread, {:.2} us per resource",
        hot / secs,
        secs / hot * 1e6
    );

    // Both cores, each thread validating every resource once per round.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let t = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..rounds {
                    for v in &singles {
                        std::hint::black_box(validate_resource(v));
                    }
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{threads} threads: {:.0} resources/s",
        (threads * rounds * singles.len()) as f64 / secs
    );

    // Whole documents, as received (Bundles validated with their entries in one call).
    let t = Instant::now();
    for _ in 0..rounds {
        for (_, d) in &docs {
            std::hint::black_box(validate_resource(d));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "whole documents: {:.0} resources/s on one thread ({} documents per round)",
        n / secs,
        docs.len()
    );

    // Parse + validate, which is what a request actually costs before storage.
    let texts: Vec<String> = singles.iter().map(|v| v.to_string()).collect();
    let t = Instant::now();
    for _ in 0..rounds.div_ceil(4) {
        for text in &texts {
            let v: Value = serde_json::from_str(text).expect("json");
            std::hint::black_box(validate_resource(&v));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let n = (rounds.div_ceil(4) * texts.len()) as f64;
    println!(
        "parse + validate: {:.0} resources/s on one thread, {:.2} us per resource",
        n / secs,
        secs / n * 1e6
    );
}
