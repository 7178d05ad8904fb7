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
    fn prefix_end_bounds_every_extension() {
        let end = prefix_end("family\u{1f}smi");
        assert!(*"family\u{1f}smith" < *end);
        assert!(*"family\u{1f}smj" > *end);
    }
}
