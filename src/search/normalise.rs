//! Turning FHIR values into the forms search compares: folded strings, instant ranges, number
//! ranges with their implicit precision, and the parts of a reference.
//!
//! The query side must apply the same functions to what a user types (a name to
//! [`fold_string`], a date to [`date_range`]), so both sides agree on every edge case.

use std::fmt::Write;

use serde_json::Number;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::fhirpath::model::MODEL;

/// The form string search compares: lowercase, accents removed ("Zoë" → "zoe"), and any run
/// of whitespace as a single space with none at either end. A few letters that are not an
/// accent plus a base letter are spelt out the way English-speaking users type them
/// ("Ø" → "o", "ß" → "ss", "Æ" → "ae"), so "Søren" is found by "soren".
pub fn fold_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    let mut push = |out: &mut String, c: char| {
        if c.is_whitespace() {
            space = !out.is_empty();
            return;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    };
    if s.is_ascii() {
        for c in s.chars() {
            push(&mut out, c.to_ascii_lowercase());
        }
        return out;
    }
    for c in s.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        let spelt = match c {
            'ß' | 'ẞ' => "ss",
            'æ' | 'Æ' => "ae",
            'œ' | 'Œ' => "oe",
            'ø' | 'Ø' => "o",
            'ł' | 'Ł' => "l",
            'đ' | 'Đ' | 'ð' | 'Ð' => "d",
            'þ' | 'Þ' => "th",
            'ı' => "i",
            _ => "",
        };
        if spelt.is_empty() {
            for l in c.to_lowercase() {
                push(&mut out, l);
            }
        } else {
            for l in spelt.chars() {
                push(&mut out, l);
            }
        }
    }
    out
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// The instants a FHIR `date`, `dateTime` or `instant` covers, as UTC epoch microseconds
/// `[low, high]` inclusive, from the precision it is written with: `2020` is the whole year,
/// `2020-03` the month, `2020-03-04T10:11:12+01:00` that second (`09:11:12Z` to
/// `09:11:12.999999Z`), `…12.5Z` the tenth of a second.
///
/// A value without a time zone is read as UTC. R4 requires a zone whenever a time is given,
/// so in valid data this only concerns dates (`2020-03-04`), whose day is then the UTC day; a
/// search for a local date in the UK is at most an hour off during summer time, and a search
/// sent without a zone is read the same way, so the two sides agree.
///
/// `None` for text that is not a date (also for `time` values, which name no day).
pub fn date_range(s: &str) -> Option<(i64, i64)> {
    let b = s.as_bytes();
    let mut p = Cursor { b, i: 0 };
    let year = p.digits(4)? as i64;
    let (mut month, mut day) = (1, 1);
    let span;
    let mut micros = 0i64;
    if p.eat(b'-') {
        month = p.digits(2)?;
        if !(1..=12).contains(&month) {
            return None;
        }
        if p.eat(b'-') {
            day = p.digits(2)?;
            if day < 1 || day > days_in_month(year, month) {
                return None;
            }
            if p.eat(b'T') {
                let hour = p.digits(2)? as i64;
                if !p.eat(b':') {
                    return None;
                }
                let minute = p.digits(2)? as i64;
                if hour > 23 || minute > 59 {
                    return None;
                }
                micros = (hour * 3600 + minute * 60) * MICROS_PER_SECOND;
                if p.eat(b':') {
                    // A leap second (60) is read as the last moment of its minute.
                    let second = (p.digits(2)? as i64).min(59);
                    micros += second * MICROS_PER_SECOND;
                    if p.eat(b'.') {
                        let (fraction, digits) = p.fraction()?;
                        micros += fraction;
                        span = 10i64.pow(6u32.saturating_sub(digits)).max(1);
                    } else {
                        span = MICROS_PER_SECOND;
                    }
                } else {
                    span = 60 * MICROS_PER_SECOND;
                }
                micros -= p.zone()? * MICROS_PER_SECOND;
            } else {
                span = MICROS_PER_DAY;
            }
        } else {
            span = days_in_month(year, month) as i64 * MICROS_PER_DAY;
        }
    } else {
        span = if is_leap(year) { 366 } else { 365 } * MICROS_PER_DAY;
    }
    if p.i != b.len() {
        return None;
    }
    let low = days_from_civil(year, month, day) * MICROS_PER_DAY + micros;
    Some((low, low + span - 1))
}

/// An `instant` is a point in time: its range is the single microsecond it names.
pub fn instant(s: &str) -> Option<i64> {
    date_range(s).map(|(low, _)| low)
}

struct Cursor<'b> {
    b: &'b [u8],
    i: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let d = self.b.get(self.i..self.i + n)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += n;
        Some(d.iter().fold(0, |acc, c| acc * 10 + (c - b'0') as u32))
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// Fractional seconds as microseconds (digits past the sixth are dropped) and the number of
    /// digits written.
    fn fraction(&mut self) -> Option<(i64, u32)> {
        let start = self.i;
        let mut micros = 0i64;
        while let Some(c) = self.b.get(self.i).filter(|c| c.is_ascii_digit()) {
            if self.i - start < 6 {
                micros = micros * 10 + (c - b'0') as i64;
            }
            self.i += 1;
        }
        let digits = (self.i - start) as u32;
        if digits == 0 {
            return None;
        }
        Some((micros * 10i64.pow(6u32.saturating_sub(digits)), digits))
    }

    /// The zone offset in seconds east of UTC; none written is UTC.
    fn zone(&mut self) -> Option<i64> {
        if self.eat(b'Z') || self.i == self.b.len() {
            return Some(0);
        }
        let sign = if self.eat(b'+') {
            1
        } else if self.eat(b'-') {
            -1
        } else {
            return None;
        };
        let h = self.digits(2)? as i64;
        if !self.eat(b':') {
            return None;
        }
        let m = self.digits(2)? as i64;
        if h > 14 || m > 59 {
            return None;
        }
        Some(sign * (h * 3600 + m * 60))
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 in the proleptic Gregorian calendar (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A number with the range its written precision implies: `100` → `[99.5, 100.5]`,
/// `5.4` → `[5.35, 5.45]` (FHIR search compares `eq` against that range).
///
/// The precision comes from the shortest form of the parsed number, so trailing zeros the
/// sender wrote are lost (`1.50` is read as `1.5`): the range is then wider than written, which
/// can only add matches, never lose one.
pub fn number_range(n: &Number) -> Option<(f64, f64, f64)> {
    let value = n.as_f64()?;
    if n.is_i64() || n.is_u64() {
        return Some((value, value - 0.5, value + 0.5));
    }
    let mut buf = StackString::default();
    match write!(buf, "{value}") {
        Ok(()) => decimal_range(buf.as_str()),
        // Too long for the buffer: hundreds of digits, so the precision is immaterial.
        Err(_) => Some((value, value, value)),
    }
}

/// A decimal as written (a search value such as `5.40`, or `1e2`) with the range its
/// precision implies: half a unit of its last digit either side, so `5.40` → `[5.395, 5.405]`
/// and `1e2` → `[50, 150]`.
pub fn decimal_range(text: &str) -> Option<(f64, f64, f64)> {
    let value: f64 = text.parse().ok().filter(|v: &f64| v.is_finite())?;
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], text[i + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32);
    let half = 0.5 * 10f64.powi(exponent - decimals);
    Some((value, value - half, value + half))
}

/// Formats short numbers without a heap allocation; longer ones fail and fall back.
#[derive(Default)]
struct StackString {
    buf: [u8; 32],
    len: usize,
}

impl StackString {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for StackString {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// What a `Reference.reference`, `canonical` or `uri` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReferenceTarget<'a> {
    /// `#id`: a resource contained in this one (empty for `#`, the containing resource).
    pub contained: Option<&'a str>,
    /// From `Type/id` at the end of the reference, when `Type` is an R4 resource type; for a
    /// conditional reference (`Patient?identifier=…`), the type it searches.
    pub resource_type: Option<&'a str>,
    pub id: Option<&'a str>,
    /// `_history/{version}` of a reference or `|version` of a canonical.
    pub version: Option<&'a str>,
    /// The reference without its version: `Patient/1`, `https://host/fhir/Patient/1`,
    /// `http://hl7.org/fhir/ValueSet/x`.
    pub url: &'a str,
}

pub fn parse_reference(s: &str) -> ReferenceTarget<'_> {
    if let Some(id) = s.strip_prefix('#') {
        return ReferenceTarget {
            contained: Some(id),
            url: s,
            ..Default::default()
        };
    }
    if let Some((t, _)) = s.split_once('?') {
        return ReferenceTarget {
            resource_type: is_resource_type(t).then_some(t),
            url: s,
            ..Default::default()
        };
    }
    let (mut url, mut version) = match s.split_once('|') {
        Some((u, v)) => (u, Some(v)),
        None => (s, None),
    };
    if let Some(i) = url.rfind("/_history/") {
        version = Some(&url[i + "/_history/".len()..]);
        url = &url[..i];
    }
    let mut target = ReferenceTarget {
        version,
        url,
        ..Default::default()
    };
    if !url.starts_with("urn:") {
        let mut segments = url.rsplit('/');
        if let (Some(id), Some(t)) = (segments.next(), segments.next())
            && !id.is_empty()
            && is_resource_type(t)
        {
            target.resource_type = Some(t);
            target.id = Some(id);
        }
    }
    target
}

fn is_resource_type(t: &str) -> bool {
    MODEL.resource_type(t) != super::fhirpath::FhirType::UNKNOWN
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: i64 = 1_000_000;

    fn epoch(s: &str) -> i64 {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp()
            * US
    }

    #[test]
    fn accents_case_and_spacing_fold_away() {
        assert_eq!(fold_string("Zoë"), "zoe");
        assert_eq!(fold_string("  Mary   Ann\tSMITH "), "mary ann smith");
        assert_eq!(fold_string("Søren Straße"), "soren strasse");
        assert_eq!(fold_string("Ángel Núñez"), "angel nunez");
        assert_eq!(fold_string("O'Brien-Jones"), "o'brien-jones");
    }

    #[test]
    fn a_date_covers_its_whole_period() {
        let (lo, hi) = date_range("2020").unwrap();
        assert_eq!(lo, epoch("2020-01-01T00:00:00Z"));
        assert_eq!(hi, epoch("2021-01-01T00:00:00Z") - 1);
        let (lo, hi) = date_range("2020-02").unwrap();
        assert_eq!(lo, epoch("2020-02-01T00:00:00Z"));
        assert_eq!(hi, epoch("2020-03-01T00:00:00Z") - 1, "leap February");
        let (lo, hi) = date_range("2019-12-31").unwrap();
        assert_eq!(lo, epoch("2019-12-31T00:00:00Z"));
        assert_eq!(hi, epoch("2020-01-01T00:00:00Z") - 1);
    }

    #[test]
    fn a_date_time_is_moved_to_utc_and_covers_its_precision() {
        let (lo, hi) = date_range("2020-03-04T10:11:12+01:00").unwrap();
        assert_eq!(lo, epoch("2020-03-04T09:11:12Z"));
        assert_eq!(hi, lo + US - 1);
        let (lo, hi) = date_range("2020-03-04T23:30:00-05:00").unwrap();
        assert_eq!(lo, epoch("2020-03-05T04:30:00Z"));
        assert_eq!(hi - lo, US - 1);
        let (lo, hi) = date_range("2020-03-04T10:11:12.5Z").unwrap();
        assert_eq!(lo, epoch("2020-03-04T10:11:12Z") + 500_000);
        assert_eq!(hi, lo + 100_000 - 1);
        let (lo, hi) = date_range("2020-03-04T10:11:12.123456789Z").unwrap();
        assert_eq!(lo, epoch("2020-03-04T10:11:12Z") + 123_456);
        assert_eq!(hi, lo);
        assert_eq!(
            instant("2015-02-07T13:28:17.239+02:00"),
            Some(epoch("2015-02-07T11:28:17Z") + 239_000)
        );
    }

    #[test]
    fn dates_before_1970_and_nonsense_are_handled() {
        assert_eq!(date_range("1969-12-31").unwrap().0, -86_400 * US);
        assert_eq!(
            date_range("1900-01-01").unwrap().0,
            epoch("1900-01-01T00:00:00Z")
        );
        for bad in [
            "",
            "20",
            "2020-13",
            "2021-02-29",
            "2020-01-01T25:00:00Z",
            "10:00:00",
        ] {
            assert_eq!(date_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn numbers_carry_their_written_precision() {
        let n = |s: &str| number_range(&serde_json::from_str(s).unwrap()).unwrap();
        assert_eq!(n("100"), (100.0, 99.5, 100.5));
        let (v, lo, hi) = n("5.4");
        assert_eq!(v, 5.4);
        assert!((lo - 5.35).abs() < 1e-12 && (hi - 5.45).abs() < 1e-12);
        let (_, lo, hi) = n("0.001");
        assert!((lo - 0.0005).abs() < 1e-15 && (hi - 0.0015).abs() < 1e-15);
        let (v, lo, hi) = decimal_range("5.40").unwrap();
        assert_eq!(v, 5.4);
        assert!((lo - 5.395).abs() < 1e-12 && (hi - 5.405).abs() < 1e-12);
        assert_eq!(decimal_range("1e2"), Some((100.0, 50.0, 150.0)));
        assert_eq!(decimal_range("-3"), Some((-3.0, -3.5, -2.5)));
        assert_eq!(decimal_range("abc"), None);
    }

    #[test]
    fn references_split_into_type_id_and_version() {
        let r = parse_reference("Patient/123/_history/2");
        assert_eq!(
            (r.resource_type, r.id, r.version, r.url),
            (Some("Patient"), Some("123"), Some("2"), "Patient/123")
        );
        let r = parse_reference("https://example.org/fhir/Observation/o1");
        assert_eq!((r.resource_type, r.id), (Some("Observation"), Some("o1")));
        let r = parse_reference("http://hl7.org/fhir/ValueSet/x|4.0.1");
        assert_eq!(
            (r.url, r.version, r.resource_type),
            (
                "http://hl7.org/fhir/ValueSet/x",
                Some("4.0.1"),
                Some("ValueSet")
            )
        );
        let r = parse_reference("urn:uuid:0f1e2d3c-aaaa-bbbb-cccc-000000000000");
        assert_eq!((r.resource_type, r.id), (None, None));
        assert_eq!(parse_reference("#med1").contained, Some("med1"));
        assert_eq!(
            parse_reference("Practitioner?identifier=x|1").resource_type,
            Some("Practitioner")
        );
    }
}
