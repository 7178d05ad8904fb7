//! Lexical rules of the R4 primitive types (<https://hl7.org/fhir/R4/datatypes.html#primitive>).
//!
//! The rules are hand-written rather than run through the published regexes because they sit on
//! the ingest hot path; the unit tests check them against those regexes (from
//! `definitions/r4/elements.tsv`). Date-like values are also checked against the calendar (the
//! specification requires valid dates, which its regexes cannot express).

use serde_json::Value;

use super::model::Prim;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrimError {
    /// The JSON value has the wrong JSON type (e.g. a number where a string is required).
    JsonType(&'static str),
    /// An empty string, which R4 JSON forbids for every primitive.
    Empty,
    /// The text does not match the type's rule.
    Invalid(&'static str),
}

/// Checks one primitive value (never `null`: the caller deals with placeholders).
pub(crate) fn check(prim: Prim, value: &Value) -> Result<(), PrimError> {
    match prim {
        Prim::Boolean => match value {
            Value::Bool(_) => Ok(()),
            _ => Err(PrimError::JsonType("a JSON boolean")),
        },
        Prim::Integer => int_in(value, i64::from(i32::MIN), "a 32-bit integer"),
        Prim::UnsignedInt => int_in(value, 0, "an integer from 0 to 2147483647"),
        Prim::PositiveInt => int_in(value, 1, "an integer from 1 to 2147483647"),
        Prim::Decimal => match value {
            Value::Number(_) => Ok(()),
            _ => Err(PrimError::JsonType("a JSON number")),
        },
        _ => {
            let Value::String(s) = value else {
                return Err(PrimError::JsonType("a JSON string"));
            };
            if s.is_empty() {
                return Err(PrimError::Empty);
            }
            check_text(prim, s)
        }
    }
}

fn int_in(value: &Value, min: i64, what: &'static str) -> Result<(), PrimError> {
    let Value::Number(n) = value else {
        return Err(PrimError::JsonType("a JSON number"));
    };
    match n.as_i64() {
        Some(i) if i >= min && i <= i64::from(i32::MAX) => Ok(()),
        Some(_) => Err(PrimError::Invalid(what)),
        // `1.0`, `1e3` or beyond i64: R4 JSON integers are written without fraction or exponent.
        None if n.is_u64() => Err(PrimError::Invalid(what)),
        None => Err(PrimError::Invalid(
            "an integer must have no fraction or exponent",
        )),
    }
}

/// Rules for the string-based primitives. `s` is non-empty.
pub(crate) fn check_text(prim: Prim, s: &str) -> Result<(), PrimError> {
    let ok = match prim {
        Prim::String | Prim::Markdown => return check_string_chars(s),
        Prim::Code => {
            check_string_chars(s)?;
            is_code(s)
        }
        Prim::Id => {
            s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        }
        Prim::Uri | Prim::Url | Prim::Canonical => {
            check_string_chars(s)?;
            !s.bytes().any(is_ascii_ws)
        }
        Prim::Oid => is_oid(s),
        Prim::Uuid => is_uuid(s),
        Prim::Base64Binary => is_base64(s),
        Prim::Date => return date(s.as_bytes(), DateForm::Date),
        Prim::DateTime => return date(s.as_bytes(), DateForm::DateTime),
        Prim::Instant => return date(s.as_bytes(), DateForm::Instant),
        Prim::Time => matches!(time(s.as_bytes()), Some([])),
        // Full XHTML checks (no scripts, forms, ...) are invariants we do not run; the value must at
        // least be the `div` element that Narrative.div holds.
        Prim::Xhtml => s.trim_start().starts_with("<div"),
        Prim::Boolean | Prim::Integer | Prim::UnsignedInt | Prim::PositiveInt | Prim::Decimal => {
            unreachable!("JSON-typed primitive")
        }
    };
    if ok {
        Ok(())
    } else {
        Err(PrimError::Invalid(match prim {
            Prim::Code => "a code has no leading, trailing or repeated whitespace",
            Prim::Id => "an id is 1 to 64 of A-Z a-z 0-9 - .",
            Prim::Uri | Prim::Url | Prim::Canonical => "a URI contains no whitespace",
            Prim::Oid => "an oid is urn:oid: followed by a dotted OID",
            Prim::Uuid => "a uuid is urn:uuid: followed by a lower-case UUID",
            Prim::Base64Binary => "not base64",
            Prim::Time => "a time is hh:mm:ss with optional fraction",
            Prim::Xhtml => "narrative must be an XHTML <div> element",
            _ => "invalid",
        }))
    }
}

#[inline]
fn is_ascii_ws(b: u8) -> bool {
    // `\s` as the FHIR regexes mean it (Java, ASCII): space, tab, LF, VT, FF, CR.
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// R4: strings SHALL NOT contain Unicode code points below 32 except tab, CR and LF.
fn check_string_chars(s: &str) -> Result<(), PrimError> {
    if s.bytes()
        .any(|b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
    {
        Err(PrimError::Invalid(
            "control characters other than tab, CR and LF are not allowed",
        ))
    } else {
        Ok(())
    }
}

/// `[^\s]+(\s[^\s]+)*`
fn is_code(s: &str) -> bool {
    let b = s.as_bytes();
    if is_ascii_ws(b[0]) || is_ascii_ws(b[b.len() - 1]) {
        return false;
    }
    !b.windows(2).any(|w| is_ascii_ws(w[0]) && is_ascii_ws(w[1]))
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = rest.split('.');
    if !matches!(parts.next(), Some("0" | "1" | "2")) {
        return false;
    }
    let mut arcs = 0;
    for p in parts {
        let b = p.as_bytes();
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) || (b.len() > 1 && b[0] == b'0') {
            return false;
        }
        arcs += 1;
    }
    arcs > 0
}

/// `urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`
fn is_uuid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:uuid:") else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`: groups of four base64 characters, whitespace only between
/// groups.
fn is_base64(s: &str) -> bool {
    let mut run = 0usize;
    let mut groups = 0usize;
    for b in s.bytes() {
        if is_ascii_ws(b) {
            if !run.is_multiple_of(4) {
                return false;
            }
        } else if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=' {
            run += 1;
            if run.is_multiple_of(4) {
                groups += 1;
            }
        } else {
            return false;
        }
    }
    run.is_multiple_of(4) && groups > 0
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DateForm {
    Date,
    DateTime,
    Instant,
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let d = b.get(at..at + n)?;
    if !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(d.iter().fold(0, |acc, &c| acc * 10 + u32::from(c - b'0')))
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// date: `YYYY(-MM(-DD)?)?`; dateTime adds `(THH:MM:SS(.f+)?TZ)?` after a full date; instant
/// requires all of it. The year is 0001..9999 (the regexes exclude 0000).
fn date(b: &[u8], form: DateForm) -> Result<(), PrimError> {
    const MSG: [&str; 3] = [
        "a date is YYYY, YYYY-MM or YYYY-MM-DD",
        "a dateTime is YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss(.sss)+zz:zz",
        "an instant is YYYY-MM-DDThh:mm:ss(.sss)+zz:zz",
    ];
    let msg = MSG[form as usize];
    let bad = Err(PrimError::Invalid(msg));
    let Some(year) = digits(b, 0, 4) else {
        return bad;
    };
    if year == 0 {
        return bad;
    }
    if b.len() == 4 {
        return if form == DateForm::Instant {
            bad
        } else {
            Ok(())
        };
    }
    if b[4] != b'-' {
        return bad;
    }
    let Some(month) = digits(b, 5, 2) else {
        return bad;
    };
    if !(1..=12).contains(&month) {
        return bad;
    }
    if b.len() == 7 {
        return if form == DateForm::Instant {
            bad
        } else {
            Ok(())
        };
    }
    if b.get(7) != Some(&b'-') {
        return bad;
    }
    let Some(day) = digits(b, 8, 2) else {
        return bad;
    };
    if day == 0 || day > days_in_month(year, month) {
        return Err(PrimError::Invalid("no such day in the calendar"));
    }
    if b.len() == 10 {
        return if form == DateForm::Instant {
            bad
        } else {
            Ok(())
        };
    }
    if form == DateForm::Date || b[10] != b'T' {
        return bad;
    }
    let Some(rest) = time(&b[11..]) else {
        return bad;
    };
    // A time of day needs a zone in dateTime and instant.
    match rest {
        [b'Z'] => Ok(()),
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let (Some(h), Some(m)) = (digits(&[*h1, *h2], 0, 2), digits(&[*m1, *m2], 0, 2)) else {
                return bad;
            };
            if (h <= 13 && m <= 59) || (h == 14 && m == 0) {
                Ok(())
            } else {
                bad
            }
        }
        _ => bad,
    }
}

/// `([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?`; returns what follows it.
fn time(b: &[u8]) -> Option<&[u8]> {
    let h = digits(b, 0, 2)?;
    let m = digits(b, 3, 2)?;
    let s = digits(b, 6, 2)?;
    if b[2] != b':' || b[5] != b':' || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let mut i = 8;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    Some(&b[i..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::model::{Kind, MODEL};
    use serde_json::json;

    fn ok(prim: Prim, s: &str) -> bool {
        check(prim, &json!(s)).is_ok()
    }

    /// The published R4 regex of a primitive, anchored, with Java's ASCII meaning of `\s`/`\S`.
    fn spec_regex(prim: Prim) -> regex::bytes::Regex {
        let ty = MODEL
            .types
            .iter()
            .find(|t| t.kind == Kind::Primitive(prim))
            .expect("primitive in table");
        let re = ty.regex.expect("regex in table");
        regex::bytes::RegexBuilder::new(&format!("^(?:{re})$"))
            .unicode(false)
            .build()
            .expect("spec regex compiles")
    }

    #[test]
    fn hand_written_rules_agree_with_the_spec_regexes() {
        let samples: &[(Prim, &[&str])] = &[
            (
                Prim::Code,
                &[
                    "final",
                    "a b",
                    "a  b",
                    " a",
                    "a ",
                    "a\tb",
                    "entered-in-error",
                    "x",
                ],
            ),
            (
                Prim::Id,
                &[
                    "abc",
                    "a.b-C9",
                    "a_b",
                    "a b",
                    &"x".repeat(64),
                    &"x".repeat(65),
                    "é",
                ],
            ),
            (
                Prim::Uri,
                &["http://x", "urn:uuid:1", "a b", "mailto:x@y", "é"],
            ),
            (
                Prim::Oid,
                &[
                    "urn:oid:1.2.3",
                    "urn:oid:1",
                    "urn:oid:3.1",
                    "urn:oid:1.02",
                    "urn:oid:2.0",
                    "1.2.3",
                ],
            ),
            (
                Prim::Uuid,
                &[
                    "urn:uuid:c757873d-ec9a-4326-a141-556f43239520",
                    "urn:uuid:C757873D-EC9A-4326-A141-556F43239520",
                    "c757873d-ec9a-4326-a141-556f43239520",
                    "urn:uuid:c757873d-ec9a-4326-a141-556f4323952",
                ],
            ),
            (
                Prim::Base64Binary,
                &[
                    "aGVsbG8=",
                    "aGVs bG8=",
                    "aGV sbG8=",
                    "aGVsbG8",
                    "aGVs\nbG8=",
                    "a*==",
                    "  aGVs  ",
                ],
            ),
            (
                Prim::Date,
                &[
                    "2020",
                    "2020-01",
                    "2020-01-31",
                    "0000",
                    "0001",
                    "2020-1",
                    "2020-13",
                    "2020-01-32",
                    "20200101",
                ],
            ),
            (
                Prim::DateTime,
                &[
                    "2020",
                    "2020-01-02T03:04:05Z",
                    "2020-01-02T03:04:05.123+01:00",
                    "2020-01-02T03:04:05",
                    "2020-01-02T03:04Z",
                    "2020-01-02T24:00:00Z",
                    "2020-01-02T23:59:60-14:00",
                    "2020-01-02T23:59:59+14:00",
                    "2020-01-02T23:59:59+14:01",
                    "2020-01-02T23:59:59+13:59",
                    "2020-01-02T23:59:59.Z",
                    "2020-01-02 03:04:05Z",
                ],
            ),
            (
                Prim::Instant,
                &[
                    "2020-01-02T03:04:05Z",
                    "2020-01-02",
                    "2020-01-02T03:04:05.1-05:00",
                    "2020",
                ],
            ),
            (
                Prim::Time,
                &[
                    "00:00:00",
                    "23:59:60",
                    "24:00:00",
                    "12:00",
                    "12:00:00.5",
                    "12:00:00Z",
                ],
            ),
        ];
        for (prim, values) in samples {
            let re = spec_regex(*prim);
            for v in *values {
                assert_eq!(ok(*prim, v), re.is_match(v.as_bytes()), "{prim:?} {v:?}");
            }
        }
    }

    /// Mutates valid seeds at random (deterministically) and compares with the spec regexes; the
    /// only permitted disagreement is a regex-conforming date that is not in the calendar.
    #[test]
    fn mutated_values_agree_with_the_spec_regexes() {
        let cases: &[(Prim, &[&str], &[u8])] = &[
            (Prim::Date, &["2020-02-29", "1999-12"], b"0123456789-T:Z+."),
            (
                Prim::DateTime,
                &[
                    "2020-02-29T23:59:60.123+14:00",
                    "2021-06-30T00:00:00Z",
                    "2021",
                ],
                b"0123456789-T:Z+.",
            ),
            (
                Prim::Instant,
                &["2020-02-29T23:59:59.5-13:59"],
                b"0123456789-T:Z+.",
            ),
            (Prim::Time, &["23:59:60.25", "00:00:00"], b"0123456789:."),
            (Prim::Code, &["entered-in-error", "a b"], b"ab -\t\n"),
            (Prim::Id, &["abc-1.2"], b"aZ9-._ "),
            (Prim::Oid, &["urn:oid:2.16.840.1.113883"], b"0123.:"),
            (
                Prim::Uuid,
                &["urn:uuid:c757873d-ec9a-4326-a141-556f43239520"],
                b"09afAF-:g",
            ),
            (Prim::Base64Binary, &["aGVs bG8g\nd29y bGQ="], b"aZ9+/= \n*"),
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (prim, seeds, alphabet) in cases {
            let re = spec_regex(*prim);
            for _ in 0..20_000 {
                let mut s: Vec<u8> = seeds[(next() % seeds.len() as u64) as usize].into();
                for _ in 0..=(next() % 3) {
                    let at = (next() % (s.len() as u64 + 1)) as usize;
                    let c = alphabet[(next() % alphabet.len() as u64) as usize];
                    match next() % 3 {
                        0 if at < s.len() => s[at] = c,
                        1 if at < s.len() => {
                            s.remove(at);
                        }
                        _ => s.insert(at, c),
                    }
                }
                let text = String::from_utf8(s).expect("ascii");
                if text.is_empty() {
                    continue;
                }
                let ours = check(*prim, &json!(text));
                let spec = re.is_match(text.as_bytes());
                let calendar = ours == Err(PrimError::Invalid("no such day in the calendar"));
                assert!(
                    ours.is_ok() == spec || (spec && calendar),
                    "{prim:?} {text:?}: ours {ours:?}, spec regex {spec}"
                );
            }
        }
    }

    #[test]
    fn dates_must_exist_in_the_calendar() {
        assert!(ok(Prim::Date, "2024-02-29"));
        assert!(!ok(Prim::Date, "2023-02-29"));
        assert!(!ok(Prim::Date, "1900-02-29"));
        assert!(ok(Prim::Date, "2000-02-29"));
        assert!(!ok(Prim::DateTime, "2021-04-31T10:00:00Z"));
    }

    #[test]
    fn json_types_are_enforced() {
        assert_eq!(
            check(Prim::String, &json!(1)),
            Err(PrimError::JsonType("a JSON string"))
        );
        assert_eq!(
            check(Prim::Boolean, &json!("true")),
            Err(PrimError::JsonType("a JSON boolean"))
        );
        assert_eq!(
            check(Prim::Integer, &json!("1")),
            Err(PrimError::JsonType("a JSON number"))
        );
        assert_eq!(
            check(Prim::Decimal, &json!("1.5")),
            Err(PrimError::JsonType("a JSON number"))
        );
        assert!(check(Prim::Decimal, &json!(1.5)).is_ok());
        assert!(check(Prim::Integer, &json!(1.0)).is_err());
        assert!(check(Prim::Integer, &json!(2147483647)).is_ok());
        assert!(check(Prim::Integer, &json!(2147483648i64)).is_err());
        assert!(check(Prim::Integer, &json!(-2147483648i64)).is_ok());
        assert!(check(Prim::UnsignedInt, &json!(0)).is_ok());
        assert!(check(Prim::UnsignedInt, &json!(-1)).is_err());
        assert!(check(Prim::PositiveInt, &json!(0)).is_err());
        assert!(check(Prim::PositiveInt, &json!(u64::MAX)).is_err());
        assert_eq!(check(Prim::String, &json!("")), Err(PrimError::Empty));
    }

    #[test]
    fn strings_reject_control_characters_but_keep_whitespace() {
        assert!(ok(Prim::String, "line one\r\n\tline two"));
        assert!(!ok(Prim::String, "bell\u{7}"));
        assert!(!ok(Prim::Markdown, "nul\u{0}"));
        assert!(ok(Prim::String, "Zoë"));
    }

    #[test]
    fn narrative_must_be_a_div() {
        assert!(ok(
            Prim::Xhtml,
            "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"
        ));
        assert!(!ok(Prim::Xhtml, "plain text"));
    }
}
