//! Time as hsmca stores and shows it: Unix seconds in records and the CRL,
//! Unix microseconds where order matters (listing, request_id retention),
//! RFC 3339 in UTC for people. One copy of each conversion, used by every
//! layer, so a record, a log line and a CLI table agree to the second.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix microseconds: the precision records are ordered by.
pub fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Unix seconds (0 for a time before 1970).
pub fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Now, in Unix seconds.
pub fn unix_now() -> i64 {
    unix_secs(SystemTime::now())
}

/// Now, in Unix microseconds.
pub fn now_us() -> i64 {
    unix_us(SystemTime::now())
}

/// The instant `secs` Unix seconds name (a negative value is 1970).
pub fn from_unix(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// A protobuf timestamp of `t`, to the nanosecond.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A protobuf timestamp of whole Unix seconds.
pub fn timestamp_secs(secs: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

/// RFC 3339 of whole Unix seconds, in UTC.
pub fn rfc3339_secs(secs: i64) -> String {
    rfc3339(&timestamp_secs(secs), false)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// RFC 3339 in UTC. With `fraction`, non-zero nanoseconds are shown with 3,
/// 6 or 9 digits (as protobuf's JSON mapping does); without, whole seconds.
pub fn rfc3339(ts: &prost_types::Timestamp, fraction: bool) -> String {
    // Clamp the day count so the arithmetic cannot overflow on nonsense input.
    let days = ts.seconds.div_euclid(86_400).clamp(-1 << 40, 1 << 40);
    let secs = ts.seconds.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if fraction && (1..1_000_000_000).contains(&ts.nanos) {
        let n = ts.nanos;
        if n % 1_000_000 == 0 {
            s.push_str(&format!(".{:03}", n / 1_000_000));
        } else if n % 1000 == 0 {
            s.push_str(&format!(".{:06}", n / 1000));
        } else {
            s.push_str(&format!(".{n:09}"));
        }
    }
    s.push('Z');
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use prost_types::Timestamp;

    use super::*;

    #[test]
    fn times() {
        let t = |s, n| {
            rfc3339(
                &Timestamp {
                    seconds: s,
                    nanos: n,
                },
                true,
            )
        };
        assert_eq!(t(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(t(1_709_208_000, 0), "2024-02-29T12:00:00Z");
        assert_eq!(t(951_825_600, 0), "2000-02-29T12:00:00Z");
        assert_eq!(t(253_402_300_799, 0), "9999-12-31T23:59:59Z");
        assert_eq!(t(-62_135_596_800, 0), "0001-01-01T00:00:00Z");
        assert_eq!(t(-1, 0), "1969-12-31T23:59:59Z");
        assert_eq!(t(1, 500_000_000), "1970-01-01T00:00:01.500Z");
        assert_eq!(t(1, 1_000), "1970-01-01T00:00:01.000001Z");
        assert_eq!(t(1, 7), "1970-01-01T00:00:01.000000007Z");
        assert_eq!(
            rfc3339(
                &Timestamp {
                    seconds: 1,
                    nanos: 500_000_000
                },
                false
            ),
            "1970-01-01T00:00:01Z"
        );
        // Nonsense does not panic.
        let _ = t(i64::MAX, -5);
        let _ = t(i64::MIN, i32::MAX);
    }
}
