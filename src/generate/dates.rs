//! Dates relative to a fixed "today", so output never depends on when it was generated.

use time::{Date, Duration, PrimitiveDateTime, Time, macros::date};

/// The generated world's "today". Every date in the output is on or before it.
pub(crate) const TODAY: Date = date!(2025 - 06 - 30);

pub(crate) fn fhir_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// FHIR dateTime/instant in UTC with seconds.
pub(crate) fn fhir_instant(t: PrimitiveDateTime) -> String {
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        fhir_date(t.date()),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub(crate) fn days_before_today(days: i64) -> Date {
    TODAY - Duration::days(days)
}

pub(crate) fn at(date: Date, hour: u8, minute: u8) -> PrimitiveDateTime {
    PrimitiveDateTime::new(date, Time::from_hms(hour, minute, 0).expect("valid time"))
}

/// Whole years between `birth` and `on`.
pub(crate) fn age_on(birth: Date, on: Date) -> u32 {
    let mut years = on.year() - birth.year();
    if (u8::from(on.month()), on.day()) < (u8::from(birth.month()), birth.day()) {
        years -= 1;
    }
    years.max(0) as u32
}

/// The same date with day and month exchanged, when that is a different real date: the
/// classic US/UK entry error that defeats exact birth-date matching.
pub(crate) fn swap_day_month(d: Date) -> Option<Date> {
    let (month, day) = (u8::from(d.month()), d.day());
    if day > 12 || day == month {
        return None;
    }
    let new_month = time::Month::try_from(day).ok()?;
    Date::from_calendar_date(d.year(), new_month, month).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_fhir_shaped() {
        assert_eq!(fhir_date(date!(2024 - 02 - 09)), "2024-02-09");
        assert_eq!(
            fhir_instant(at(date!(2024 - 02 - 09), 7, 5)),
            "2024-02-09T07:05:00Z"
        );
    }

    #[test]
    fn day_month_swap_only_when_meaningful() {
        assert_eq!(
            swap_day_month(date!(1980 - 03 - 07)),
            Some(date!(1980 - 07 - 03))
        );
        assert_eq!(swap_day_month(date!(1980 - 03 - 03)), None);
        assert_eq!(swap_day_month(date!(1980 - 03 - 13)), None);
    }

    #[test]
    fn age_counts_birthdays() {
        assert_eq!(age_on(date!(2000 - 07 - 01), TODAY), 24);
        assert_eq!(age_on(date!(2000 - 06 - 30), TODAY), 25);
    }
}
