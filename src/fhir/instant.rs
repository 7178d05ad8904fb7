//! Timestamps: FHIR `instant` strings and HTTP dates, both at the millisecond precision the store
//! keeps, so `meta.lastUpdated`, `Last-Modified` and `_since` all agree.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

/// Now, truncated to milliseconds (PostgreSQL keeps microseconds; clients see milliseconds).
pub fn now_millis() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    let nanos = now.nanosecond();
    now.replace_nanosecond(nanos - nanos % 1_000_000)
        .expect("nanosecond in range")
}

/// `2026-11-25T18:24:10.123Z`
pub fn format_instant(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    t.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .expect("formattable instant")
}

/// RFC 7231 HTTP-date: `Wed, 25 Nov 2026 18:24:10 GMT`
pub fn format_http_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    t.format(format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    ))
    .expect("formattable http date")
}

/// Parses a FHIR `instant` or `dateTime` with a time zone (as `_since` takes), or a date
/// (`2026-11-25`, meaning midnight UTC).
pub fn parse_instant(s: &str) -> Option<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    // RFC 3339 requires seconds; FHIR dateTime allows `2026-11-25T10:00Z`? No, but clients send it.
    let date = time::Date::parse(s, format_description!("[year]-[month]-[day]")).ok()?;
    Some(date.midnight().assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip_at_millisecond_precision() {
        let t = now_millis();
        let s = format_instant(t);
        assert_eq!(parse_instant(&s), Some(t));
        assert!(s.ends_with('Z'));
        assert_eq!(s.len(), "2026-11-25T18:24:10.123Z".len());
    }

    #[test]
    fn http_dates_use_gmt() {
        let t = parse_instant("2026-11-25T18:24:10.5+01:00").unwrap();
        assert_eq!(format_http_date(t), "Wed, 25 Nov 2026 17:24:10 GMT");
    }

    #[test]
    fn dates_parse_as_midnight_utc() {
        let t = parse_instant("2026-11-25").unwrap();
        assert_eq!(format_instant(t), "2026-11-25T00:00:00.000Z");
        assert!(parse_instant("yesterday").is_none());
    }
}
