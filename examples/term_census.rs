//! Counts an index's terms by field and parameter: how many, how many only one document holds
//! (each of those is a term dictionary entry built for one document), and their bytes.
//!
//! `cargo run --release --example term_census INDEX_DIR` (e.g. one `shcr reindex` built).

use std::collections::{BTreeMap, HashMap};

use shcr::search::terms::SEP;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).expect("INDEX_DIR");
    let (index, _) = shcr::search::index::open_or_create(std::path::Path::new(&dir))?;
    let reader = index.reader()?;
    let searcher = reader.searcher();
    let schema = index.schema();
    let docs: u64 = searcher.num_docs();
    // (field, code) -> term -> documents
    let mut terms: BTreeMap<(String, String), HashMap<Vec<u8>, u64>> = BTreeMap::new();
    for (field, entry) in schema.fields() {
        if !entry.is_indexed() {
            continue;
        }
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(field)?;
            let mut stream = inverted.terms().stream()?;
            while stream.advance() {
                let key = stream.key().to_vec();
                let text = String::from_utf8_lossy(&key);
                let code = text.split(SEP).next().unwrap_or("").to_string();
                let code = if code.len() > 40 || !text.contains(SEP) {
                    "-".to_string()
                } else {
                    code
                };
                *terms
                    .entry((entry.name().to_string(), code))
                    .or_default()
                    .entry(key)
                    .or_default() += u64::from(stream.value().doc_freq);
            }
        }
    }
    println!("{docs} documents");
    println!(
        "{:<12} {:<28} {:>9} {:>9} {:>8} {:>10}",
        "field", "code", "terms", "df=1", "per doc", "df=1 bytes"
    );
    let (mut all, mut unique, mut unique_bytes) = (0usize, 0usize, 0usize);
    let mut rows: Vec<_> = terms
        .iter()
        .map(|((field, code), t)| {
            let u: Vec<_> = t.iter().filter(|(_, df)| **df == 1).collect();
            let bytes: usize = u.iter().map(|(k, _)| k.len()).sum();
            (field, code, t.len(), u.len(), bytes)
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.3));
    for (field, code, n, u, bytes) in rows {
        all += n;
        unique += u;
        unique_bytes += bytes;
        if n >= 100 {
            println!(
                "{field:<12} {code:<28} {n:>9} {u:>9} {:>8.2} {bytes:>10}",
                u as f64 / docs.max(1) as f64
            );
        }
    }
    println!(
        "all: {all} terms, {unique} held by one document ({:.1} per document, {unique_bytes} bytes)",
        unique as f64 / docs.max(1) as f64
    );
    Ok(())
}
