//! How index values become tantivy terms, and query values the same terms: one encoding used by
//! both the indexer and the query planner.
//!
//! Every searchable value lives in a few shared string fields, prefixed by its parameter code
//! (`family␟smith`), so a parameter file added by an operator needs no schema change. Numbers,
//! dates and quantities are fixed-width hex of an order-preserving integer, so a range of values
//! is a range of terms.

/// Separates a parameter code from its value, and the parts of a value.
pub const SEP: char = '\u{1f}';
/// Stands for "any" (any system, any unit, any resource type).
pub const ANY: char = '\u{2}';

pub fn join(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        out.push_str(p);
    }
    out
}

/// `code␟` — the start of every term of a parameter.
pub fn prefix(code: &str) -> String {
    let mut s = String::with_capacity(code.len() + 1);
    s.push_str(code);
    s.push(SEP);
    s
}

pub fn any() -> &'static str {
    "\u{2}"
}

/// Stands for the `/` of `Type/id` when the id is written compactly (see `local`); no `Type/id`
/// text holds it.
const COMPACT_ID: char = '\u{3}';

/// The text of the local resource `Type/id` in `key` and `ref` terms: `Type/id`, except that an
/// id in the canonical text form of a UUID (what the server assigns: 36 characters, lowercase
/// hex digits and hyphens) is written as its 128 bits in 22 base64url characters after `Type`
/// and a marker no `Type/id` holds.
///
/// Each such term is one a handful of documents hold (every resource's `key`, each Provenance
/// target, each encounter reference), and building a segment's term dictionary compiles an FST
/// node, with a lookup in the builder's node registry, for each byte after the prefix a term
/// shares with the next one: for random UUIDs, ~33 of 36. With 22 bytes instead, the events
/// bench's dictionary building (~13 % of the server's CPU as it ingests) does a third less
/// work, and merges rewrite shorter terms. Indexing and planning both go through here, so the
/// same `(Type, id)` always gives the same term; ids are case-sensitive, and an uppercase UUID
/// is another id, kept as it is.
pub fn local(resource_type: &str, id: &str) -> String {
    let mut out = String::with_capacity(resource_type.len() + 1 + id.len().min(36));
    out.push_str(resource_type);
    match uuid_bits(id) {
        Some(bits) => {
            const ALPHABET: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            out.push(COMPACT_ID);
            for i in (0..22).rev() {
                out.push(ALPHABET[((bits >> (i * 6)) & 63) as usize] as char);
            }
        }
        None => {
            out.push('/');
            out.push_str(id);
        }
    }
    out
}

/// The value of a UUID in canonical text form (8-4-4-4-12 lowercase hex digits), else `None`.
fn uuid_bits(id: &str) -> Option<u128> {
    let b = id.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut bits = 0u128;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let nibble = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        bits = (bits << 4) | u128::from(nibble);
    }
    Some(bits)
}

/// Order-preserving hex of a signed 64-bit value (dates in microseconds).
pub fn hex_i64(v: i64) -> String {
    format!("{:016x}", (v as u64) ^ (1u64 << 63))
}

/// Order-preserving hex of a float (numbers and quantities); NaN never reaches here.
pub fn hex_f64(v: f64) -> String {
    let bits = v.to_bits();
    let ordered = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1u64 << 63)
    };
    format!("{ordered:016x}")
}

/// The smallest string greater than every string starting with `p` (for prefix ranges).
pub fn prefix_end(p: &str) -> String {
    let mut s = p.to_string();
    s.push('\u{10FFFF}');
    s
}

/// Quantity unit qualifiers a value is indexed under: any unit, `system|code`, `|code`, `|unit`.
pub fn quantity_qualifiers(
    system: Option<&str>,
    code: Option<&str>,
    unit: Option<&str>,
) -> Vec<String> {
    let mut out = vec![any().to_string()];
    if let Some(code) = code {
        out.push(format!("{}|{code}", system.unwrap_or("")));
        if system.is_some() {
            out.push(format!("|{code}"));
        }
    }
    if let Some(unit) = unit
        && Some(unit) != code
    {
        out.push(format!("|{unit}"));
    }
    out
}

/// Sets up to this size are unions of term queries. tantivy's `TermSetQuery` compiles an FST
/// for every weight, and its builder allocates and clears a registry of some 10,000 cells first
/// (about a megabyte), which cost a third of a search's CPU when every access filter, include
/// and chain had one.
const TERM_SET_ABOVE: usize = 64;

/// Documents holding any of `terms`.
pub fn any_of(mut terms: Vec<tantivy::Term>) -> Box<dyn tantivy::query::Query> {
    use tantivy::query::{BooleanQuery, EmptyQuery, Occur, Query, TermQuery, TermSetQuery};
    use tantivy::schema::IndexRecordOption;
    let term = |t| -> Box<dyn Query> { Box::new(TermQuery::new(t, IndexRecordOption::Basic)) };
    match terms.len() {
        0 => Box::new(EmptyQuery),
        1 => term(terms.pop().expect("one term")),
        n if n <= TERM_SET_ABOVE => Box::new(BooleanQuery::new(
            terms
                .into_iter()
                .map(|t| (Occur::Should, term(t)))
                .collect(),
        )),
        _ => Box::new(TermSetQuery::new(terms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_encodings_preserve_order() {
        let ints = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in ints.windows(2) {
            assert!(hex_i64(w[0]) < hex_i64(w[1]), "{w:?}");
        }
        let floats = [
            f64::NEG_INFINITY,
            -1e9,
            -2.5,
            -0.0,
            0.0,
            1e-9,
            2.5,
            1e300,
            f64::INFINITY,
        ];
        for w in floats.windows(2) {
            assert!(hex_f64(w[0]) <= hex_f64(w[1]), "{w:?}");
        }
        assert!(hex_f64(-1.0) < hex_f64(1.0));
    }

    #[test]
    fn local_resources_are_compact_for_canonical_uuids_only() {
        let id = "7d0c4a52-93b1-4e6f-8a2d-1c5e9f3b6a70";
        let compact = local("Observation", id);
        assert_eq!(compact.len(), "Observation".len() + 1 + 22, "{compact:?}");
        assert!(compact.starts_with("Observation\u{3}"));
        assert!(!compact.contains(id));
        // One bit apart, and the same id under another type: other terms.
        assert_ne!(
            compact,
            local("Observation", "7d0c4a52-93b1-4e6f-8a2d-1c5e9f3b6a71")
        );
        assert_ne!(compact, local("Patient", id));
        assert_eq!(
            local("Patient", "00000000-0000-0000-0000-000000000000"),
            format!("Patient\u{3}{}", "A".repeat(22))
        );
        assert_eq!(
            local("Patient", "ffffffff-ffff-ffff-ffff-ffffffffffff"),
            format!("Patient\u{3}D{}", "_".repeat(21))
        );
        // Anything else is kept as `Type/id`: ids are case-sensitive, so an uppercase UUID is
        // another resource than its lowercase form.
        for other in [
            "7D0C4A52-93B1-4E6F-8A2D-1C5E9F3B6A70",
            "7d0c4a5293b14e6f8a2d1c5e9f3b6a70",
            "7d0c4a52-93b1-4e6f-8a2d-1c5e9f3b6a7",
            "7d0c4a52-93b1-4e6f-8a2d-1c5e9f3b6a70x",
            "7d0c4a52x93b1-4e6f-8a2d-1c5e9f3b6a70",
            "example",
            "",
        ] {
            assert_eq!(local("Patient", other), format!("Patient/{other}"));
        }
    }

    #[test]
    fn prefix_end_bounds_every_extension() {
        let end = prefix_end("family\u{1f}smi");
        assert!(*"family\u{1f}smith" < *end);
        assert!(*"family\u{1f}smj" > *end);
    }
}
