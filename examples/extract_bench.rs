//! Measures search-value extraction throughput over the project's fixtures.
//!
//! `cargo run --release --example extract_bench [ROUNDS]`
//!
//! Each Bundle entry counts as one resource (what ingest stores and indexes); Bundles themselves
//! are not extracted, as a transaction Bundle is not stored. Figures are for one thread.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;
use shcr::search::extract::{extract, text_content};
use shcr::search::params::Registry;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let t = Instant::now();
    let registry = Registry::load(None).expect("registry");
    println!(
        "registry loaded in {:.1} ms ({} unsupported)",
        t.elapsed().as_secs_f64() * 1e3,
        registry.unsupported().len()
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut docs: Vec<Value> = Vec::new();
    for folder in ["ukcore", "synthea"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(folder))
            .expect("fixtures")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("read");
            docs.push(serde_json::from_str(&text).expect("json"));
        }
    }
    let mut resources: Vec<&Value> = Vec::new();
    for d in &docs {
        if d["resourceType"] == "Bundle" {
            if let Some(entries) = d["entry"].as_array() {
                resources.extend(entries.iter().filter_map(|e| e.get("resource")));
            }
        } else {
            resources.push(d);
        }
    }
    let bytes: usize = resources.iter().map(|v| v.to_string().len()).sum();
    let values: usize = resources
        .iter()
        .map(|r| {
            extract(&registry, r)
                .iter()
                .map(|e| e.values.len())
                .sum::<usize>()
        })
        .sum();
    println!(
        "{} resources ({:.1} KiB average JSON), {:.1} index values each",
        resources.len(),
        bytes as f64 / resources.len() as f64 / 1024.0,
        values as f64 / resources.len() as f64
    );

    let mut sink = 0usize;
    let t = Instant::now();
    for _ in 0..rounds {
        for r in &resources {
            sink += extract(&registry, r).len();
        }
    }
    let per = t.elapsed().as_secs_f64() / (rounds * resources.len()) as f64;
    println!(
        "extract:              {:6.1} µs/resource, {:8.0} resources/s",
        per * 1e6,
        1.0 / per
    );

    let t = Instant::now();
    for _ in 0..rounds {
        for r in &resources {
            let (text, content) = text_content(r);
            sink += text.len() + content.len();
        }
    }
    let per_text = t.elapsed().as_secs_f64() / (rounds * resources.len()) as f64;
    println!(
        "text_content:         {:6.1} µs/resource, {:8.0} resources/s",
        per_text * 1e6,
        1.0 / per_text
    );

    // The slowest types, which bound the worst case on ingest.
    let mut by_type: std::collections::BTreeMap<&str, (usize, f64)> = Default::default();
    for r in &resources {
        let t = Instant::now();
        for _ in 0..rounds {
            sink += extract(&registry, r).len();
        }
        let e = by_type
            .entry(r["resourceType"].as_str().unwrap_or("?"))
            .or_default();
        e.0 += 1;
        e.1 += t.elapsed().as_secs_f64() / rounds as f64;
    }
    let mut types: Vec<_> = by_type.into_iter().collect();
    types.sort_by(|a, b| (b.1.1 / b.1.0 as f64).total_cmp(&(a.1.1 / a.1.0 as f64)));
    for (name, (n, total)) in types.iter().take(8) {
        println!("  {name:<24} {n:4} × {:6.1} µs", total / *n as f64 * 1e6);
    }
    std::hint::black_box(sink);
}
