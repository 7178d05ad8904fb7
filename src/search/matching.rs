//! What a search predicate means for one indexed value. The index answers queries with terms as
//! an accelerator; where terms can only narrow the candidates (date ranges, composite pairs),
//! these functions decide, and the differential test holds the index to them.

use super::extract::IndexValue;
use super::normalise::fold_string;
use super::query::{Prefix, ReferenceMatch, StringMode, SystemMatch, UriMode, ValuePredicate};

/// How far `ap` reaches around a value: 10% of its distance from now, at least a day (dates) or
/// 10% of the value (numbers), as the FHIR specification suggests.
fn date_slack(low: i64, now: i64) -> i64 {
    const DAY: i64 = 86_400_000_000;
    ((now - low).abs() / 10).max(DAY)
}

pub fn date_matches(
    prefix: Prefix,
    v_low: i64,
    v_high: i64,
    q_low: i64,
    q_high: i64,
    now: i64,
) -> bool {
    let contained = v_low >= q_low && v_high <= q_high;
    match prefix {
        Prefix::Eq => contained,
        Prefix::Ne => !contained,
        Prefix::Gt => v_high > q_high,
        Prefix::Lt => v_low < q_low,
        Prefix::Ge => v_high > q_high || contained,
        Prefix::Le => v_low < q_low || contained,
        Prefix::Sa => v_low > q_high,
        Prefix::Eb => v_high < q_low,
        Prefix::Ap => {
            let slack = date_slack(q_low, now);
            v_low <= q_high.saturating_add(slack) && v_high >= q_low.saturating_sub(slack)
        }
    }
}

/// Numbers and quantities compare the stored value with the search value's precision range.
pub fn number_matches(prefix: Prefix, v: f64, q_value: f64, q_low: f64, q_high: f64) -> bool {
    match prefix {
        Prefix::Eq => v >= q_low && v < q_high,
        Prefix::Ne => !(v >= q_low && v < q_high),
        Prefix::Gt => v > q_value,
        Prefix::Lt => v < q_value,
        Prefix::Ge => v >= q_value,
        Prefix::Le => v <= q_value,
        Prefix::Sa => v >= q_high,
        Prefix::Eb => v < q_low,
        Prefix::Ap => {
            let slack = (q_value.abs() * 0.1).max(q_high - q_low);
            v >= q_value - slack && v <= q_value + slack
        }
    }
}

pub fn system_matches(system: &SystemMatch, value_system: Option<&str>) -> bool {
    match system {
        SystemMatch::Any => true,
        SystemMatch::None => value_system.is_none_or(str::is_empty),
        SystemMatch::Is(s) => value_system == Some(s.as_str()),
    }
}

pub fn quantity_unit_matches(
    qualifier: &str,
    system: Option<&str>,
    code: Option<&str>,
    unit: Option<&str>,
) -> bool {
    if qualifier == super::terms::any() {
        return true;
    }
    match qualifier.split_once('|') {
        Some(("", c)) => code == Some(c) || unit == Some(c),
        Some((s, c)) => system == Some(s) && code == Some(c),
        None => false,
    }
}

/// Every word of `query` (folded) starts a word of `text` (folded).
pub fn words_match(query: &str, text: &str) -> bool {
    let folded = fold_string(text);
    let words: Vec<&str> = folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .all(|q| words.iter().any(|w| w.starts_with(q)))
}

/// Whether a reference value points at what the predicate names. `base` is this server's FHIR
/// base: absolute references under it are local.
pub fn reference_matches(v: &IndexValue, m: &ReferenceMatch, base: &str) -> bool {
    let IndexValue::Reference {
        resource_type,
        id,
        url,
        identifier,
        ..
    } = v
    else {
        return false;
    };
    match m {
        ReferenceMatch::Local {
            resource_type: t,
            id: want,
        } => {
            let local = !url.contains("://") || url.starts_with(base);
            local
                && id.as_deref() == Some(want.as_str())
                && t.as_ref()
                    .is_none_or(|t| resource_type.as_deref() == Some(t.as_str()))
        }
        ReferenceMatch::Url(u) => url == u,
        ReferenceMatch::Identifier { system, value } => identifier
            .as_ref()
            .is_some_and(|(s, v)| v == value && system_matches(system, s.as_deref())),
    }
}

pub fn value_matches(v: &IndexValue, p: &ValuePredicate, base: &str, now: i64) -> bool {
    match (p, v) {
        (ValuePredicate::String { mode, text }, IndexValue::String { normalised, exact }) => {
            match mode {
                StringMode::StartsWith => normalised.starts_with(text.as_str()),
                StringMode::Contains => normalised.contains(text.as_str()),
                StringMode::Exact => exact == text,
            }
        }
        (
            ValuePredicate::Token { system, code },
            IndexValue::Token {
                system: vs,
                code: vc,
                ..
            },
        ) => {
            system_matches(system, vs.as_deref())
                && match code {
                    None => vs.is_some(),
                    Some(c) => vc.as_deref() == Some(c.as_str()),
                }
        }
        (ValuePredicate::TokenText(q), IndexValue::Token { text: Some(t), .. }) => {
            words_match(q, t)
        }
        (
            ValuePredicate::OfType {
                type_system,
                type_code,
                value,
            },
            IndexValue::Token {
                code,
                of_type: Some((ts, tc)),
                ..
            },
        ) => ts == type_system && tc == type_code && code.as_deref() == Some(value.as_str()),
        (ValuePredicate::Reference(m), v @ IndexValue::Reference { .. }) => {
            reference_matches(v, m, base)
        }
        (ValuePredicate::Date { prefix, low, high }, IndexValue::Date { low: vl, high: vh }) => {
            date_matches(*prefix, *vl, *vh, *low, *high, now)
        }
        (
            ValuePredicate::Number {
                prefix,
                value,
                low,
                high,
            },
            IndexValue::Number { value: v, .. },
        ) => number_matches(*prefix, *v, *value, *low, *high),
        (
            ValuePredicate::Quantity {
                prefix,
                value,
                low,
                high,
                qualifier,
            },
            IndexValue::Quantity {
                value: v,
                system,
                code,
                unit,
                ..
            },
        ) => {
            quantity_unit_matches(
                qualifier,
                system.as_deref(),
                code.as_deref(),
                unit.as_deref(),
            ) && number_matches(*prefix, *v, *value, *low, *high)
        }
        (ValuePredicate::Uri { mode, uri }, IndexValue::Uri(v)) => match mode {
            UriMode::Exact => v == uri,
            UriMode::Below => v.starts_with(uri.as_str()),
            UriMode::Above => uri.starts_with(v.as_str()),
        },
        (ValuePredicate::Composite(parts), IndexValue::Composite(components)) => {
            components.len() == parts.len()
                && parts
                    .iter()
                    .zip(components)
                    .all(|(p, values)| values.iter().any(|v| value_matches(v, p, base, now)))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Y2020: (i64, i64) = (1_577_836_800_000_000, 1_609_459_199_999_999);

    #[test]
    fn date_prefixes_follow_the_specification() {
        let (ql, qh) = Y2020;
        let june = (1_590_969_600_000_000, 1_593_561_599_999_999);
        let straddling = (1_575_158_400_000_000, june.1);
        let now = 1_800_000_000_000_000;
        assert!(date_matches(Prefix::Eq, june.0, june.1, ql, qh, now));
        assert!(!date_matches(
            Prefix::Eq,
            straddling.0,
            straddling.1,
            ql,
            qh,
            now
        ));
        assert!(date_matches(
            Prefix::Ne,
            straddling.0,
            straddling.1,
            ql,
            qh,
            now
        ));
        assert!(date_matches(Prefix::Ge, june.0, june.1, ql, qh, now));
        assert!(!date_matches(
            Prefix::Ge,
            straddling.0,
            straddling.1,
            ql,
            qh,
            now
        ));
        assert!(date_matches(
            Prefix::Le,
            straddling.0,
            straddling.1,
            ql,
            qh,
            now
        ));
        assert!(date_matches(
            Prefix::Lt,
            straddling.0,
            straddling.1,
            ql,
            qh,
            now
        ));
        assert!(!date_matches(Prefix::Gt, june.0, june.1, ql, qh, now));
        assert!(date_matches(Prefix::Sa, qh + 1, qh + 2, ql, qh, now));
        assert!(date_matches(Prefix::Eb, ql - 2, ql - 1, ql, qh, now));
        assert!(date_matches(Prefix::Ap, qh + 10, qh + 20, ql, qh, now));
    }

    #[test]
    fn numbers_use_the_search_precision() {
        assert!(number_matches(Prefix::Eq, 100.2, 100.0, 99.5, 100.5));
        assert!(!number_matches(Prefix::Eq, 100.5, 100.0, 99.5, 100.5));
        assert!(number_matches(Prefix::Gt, 100.2, 100.0, 99.5, 100.5));
        assert!(number_matches(Prefix::Ap, 108.0, 100.0, 99.5, 100.5));
        assert!(!number_matches(Prefix::Ap, 111.0, 100.0, 99.5, 100.5));
    }

    #[test]
    fn quantity_units() {
        assert!(quantity_unit_matches(
            "http://unitsofmeasure.org|mg",
            Some("http://unitsofmeasure.org"),
            Some("mg"),
            None
        ));
        assert!(quantity_unit_matches("|mg", None, None, Some("mg")));
        assert!(!quantity_unit_matches(
            "http://unitsofmeasure.org|g",
            Some("http://unitsofmeasure.org"),
            Some("mg"),
            None
        ));
        assert!(quantity_unit_matches(
            super::super::terms::any(),
            None,
            None,
            None
        ));
    }

    #[test]
    fn words_prefix_words() {
        assert!(words_match("heart rat", "Heart rate"));
        assert!(!words_match("heart beat", "Heart rate"));
        assert!(words_match("zoe", "Zoë Smith"));
    }
}
