//! The windows spend is counted in: UTC minutes, days and calendar months.
//!
//! No date crate is used; calendar months come from Howard Hinnant's `days_from_civil` and
//! `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>), which are exact
//! for the proleptic Gregorian calendar.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MINUTE: i64 = 60;
const DAY: i64 = 86_400;

/// A window that spend is counted in, by UTC calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Minute,
    Day,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Minute, Period::Day, Period::Month];

    /// The name used in the database, in metrics and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The position of `self` in [`Period::ALL`], for per-period arrays.
    pub(crate) fn slot(self) -> usize {
        match self {
            Period::Minute => 0,
            Period::Day => 1,
            Period::Month => 2,
        }
    }

    /// The period containing `time`, as a number that changes when the period does: minutes
    /// since the epoch, days since the epoch, or `year * 12 + month - 1`.
    pub fn index(self, time: SystemTime) -> i64 {
        let secs = unix_secs(time);
        match self {
            Period::Minute => secs.div_euclid(MINUTE),
            Period::Day => secs.div_euclid(DAY),
            Period::Month => {
                let (year, month, _) = civil_from_days(secs.div_euclid(DAY));
                year * 12 + month - 1
            }
        }
    }

    /// When the period containing `time` ends (the start of the next one), for `Retry-After`.
    pub fn end(self, time: SystemTime) -> SystemTime {
        let index = self.index(time);
        let end_secs = match self {
            Period::Minute => (index + 1) * MINUTE,
            Period::Day => (index + 1) * DAY,
            Period::Month => {
                let next = index + 1;
                days_from_civil(next.div_euclid(12), next.rem_euclid(12) + 1, 1) * DAY
            }
        };
        from_unix_secs(end_secs)
    }
}

/// Whole seconds since the epoch, rounded down (so times before 1970 are negative).
fn unix_secs(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            -whole - i64::from(before.subsec_nanos() > 0)
        }
    }
}

fn from_unix_secs(secs: i64) -> SystemTime {
    let offset = Duration::from_secs(secs.unsigned_abs());
    let time = if secs >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    // Only out of range for times no clock will show; the far future is a safe answer.
    time.unwrap_or(UNIX_EPOCH + Duration::from_secs(u32::MAX.into()))
}

/// Days since 1970-01-01 of the civil date `year-month-day` (month 1..=12).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date `(year, month 1..=12, day)` of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> SystemTime {
        from_unix_secs(secs)
    }

    // Known instants (from Python's calendar.timegm).
    const LEAP_DAY_2024: i64 = 1_709_164_800; // 2024-02-29T00:00:00Z
    const MARCH_2024: i64 = 1_709_251_200; // 2024-03-01T00:00:00Z
    const LAST_SECOND_2026: i64 = 1_798_761_599; // 2026-12-31T23:59:59Z
    const LEAP_NOON_2000: i64 = 951_825_600; // 2000-02-29T12:00:00Z
    const MARCH_2100: i64 = 4_107_542_400; // 2100-03-01T00:00:00Z (2100 is not a leap year)

    #[test]
    fn calendar_round_trips_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 2, 29) * DAY, LEAP_DAY_2024);
        assert_eq!(days_from_civil(2024, 3, 1) * DAY, MARCH_2024);
        assert_eq!(days_from_civil(2100, 3, 1) * DAY, MARCH_2100);
        assert_eq!(civil_from_days(LEAP_DAY_2024 / DAY), (2024, 2, 29));
        assert_eq!(civil_from_days(LAST_SECOND_2026 / DAY), (2026, 12, 31));
        assert_eq!(civil_from_days(MARCH_2100 / DAY - 1), (2100, 2, 28));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in -800_000..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn minute_changes_on_the_minute() {
        let start = LAST_SECOND_2026 - 59;
        assert_eq!(Period::Minute.index(at(start)), start / 60);
        assert_eq!(Period::Minute.index(at(LAST_SECOND_2026)), start / 60);
        assert_eq!(
            Period::Minute.index(at(LAST_SECOND_2026 + 1)),
            start / 60 + 1
        );
        assert_eq!(Period::Minute.end(at(start)), at(LAST_SECOND_2026 + 1));
        assert_eq!(
            Period::Minute.end(at(LAST_SECOND_2026)),
            at(LAST_SECOND_2026 + 1)
        );
    }

    #[test]
    fn day_changes_at_midnight_utc() {
        let leap = at(LEAP_DAY_2024);
        assert_eq!(Period::Day.index(leap), LEAP_DAY_2024 / DAY);
        assert_eq!(Period::Day.index(at(MARCH_2024 - 1)), LEAP_DAY_2024 / DAY);
        assert_eq!(Period::Day.index(at(MARCH_2024)), LEAP_DAY_2024 / DAY + 1);
        assert_eq!(Period::Day.end(leap), at(MARCH_2024));
        assert_eq!(Period::Day.end(at(MARCH_2024 - 1)), at(MARCH_2024));
    }

    #[test]
    fn month_follows_the_calendar() {
        // February of a leap year has 29 days; the month changes on March 1st.
        assert_eq!(Period::Month.index(at(LEAP_DAY_2024)), 2024 * 12 + 1);
        assert_eq!(Period::Month.index(at(MARCH_2024 - 1)), 2024 * 12 + 1);
        assert_eq!(Period::Month.index(at(MARCH_2024)), 2024 * 12 + 2);
        assert_eq!(Period::Month.end(at(LEAP_DAY_2024)), at(MARCH_2024));
        assert_eq!(
            Period::Month.end(at(LEAP_NOON_2000)),
            at(days_from_civil(2000, 3, 1) * DAY)
        );
        // December to January: the year changes too.
        let new_year = LAST_SECOND_2026 + 1;
        assert_eq!(Period::Month.index(at(LAST_SECOND_2026)), 2026 * 12 + 11);
        assert_eq!(Period::Month.index(at(new_year)), 2027 * 12);
        assert_eq!(Period::Month.end(at(LAST_SECOND_2026)), at(new_year));
        assert_eq!(Period::Month.end(at(new_year)), at(new_year + 31 * DAY));
        // Before the epoch.
        assert_eq!(Period::Month.index(at(-1)), 1969 * 12 + 11);
        assert_eq!(Period::Month.end(at(-1)), at(0));
    }

    #[test]
    fn sub_second_times_round_down() {
        let just_before_epoch = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(Period::Minute.index(just_before_epoch), -1);
        let just_after = at(LAST_SECOND_2026) + Duration::from_millis(999);
        assert_eq!(Period::Day.index(just_after), LAST_SECOND_2026 / DAY);
        assert_eq!(Period::Day.end(just_after), at(LAST_SECOND_2026 + 1));
    }

    #[test]
    fn names() {
        let names: Vec<_> = Period::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names, ["minute", "day", "month"]);
        for (slot, period) in Period::ALL.iter().enumerate() {
            assert_eq!(period.slot(), slot);
        }
    }
}
