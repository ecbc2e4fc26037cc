//! RFC 3339 UTC timestamps with nanoseconds, written by hand so core needs no
//! date crate.

use std::time::{SystemTime, UNIX_EPOCH};

const NANOS: u32 = 1_000_000_000;

/// `t` as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` in UTC (Docker's `time` field).
pub fn rfc3339_nanos(t: SystemTime) -> String {
    // Seconds since the epoch, floored, and the nanoseconds after them.
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i128::from(d.as_secs()), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-i128::from(d.as_secs()), 0),
                n => (-i128::from(d.as_secs()) - 1, NANOS - n),
            }
        }
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a count of days since
/// 1970-01-01; Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i128) -> (i128, i128, i128) {
    // Shift to 0000-03-01 so that a leap day ends each 4/100/400-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March is 0
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i128::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: i64, nanos: u32) -> SystemTime {
        let base = if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        };
        base + Duration::from_nanos(u64::from(nanos))
    }

    /// Expected values from GNU `date -u -d @SECS`.
    #[test]
    fn known_timestamps() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400, 0, "2000-02-29T00:00:00.000000000Z"),
            (1_234_567_890, 1, "2009-02-13T23:31:30.000000001Z"),
            (1_796_137_445, 123_456_789, "2026-12-01T15:04:05.123456789Z"),
            (4_102_444_799, 999_999_999, "2099-12-31T23:59:59.999999999Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000000000Z"),
            (-1, 0, "1969-12-31T23:59:59.000000000Z"),
            (-1, 500_000_000, "1969-12-31T23:59:59.500000000Z"),
        ];
        for (secs, nanos, want) in cases {
            assert_eq!(rfc3339_nanos(at(secs, nanos)), want, "{secs}.{nanos}");
        }
    }

    /// Every day of 1970..2370 against a naive day-by-day calendar.
    #[test]
    fn days_match_a_naive_calendar() {
        let leap = |y: i128| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..146_097 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let len = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
            }
            if m > 12 {
                m = 1;
                y += 1;
            }
        }
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(-719_468), (0, 3, 1));
    }
}
