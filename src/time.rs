//! Event-time primitives: millisecond timestamps, human durations, RFC3339.
//!
//! Everything in the engine is event time in integer epoch milliseconds, so that
//! window arithmetic is exact and replay is bit-for-bit repeatable.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Epoch milliseconds (UTC).
pub type Millis = i64;

pub const SECOND_MS: Millis = 1_000;
pub const MINUTE_MS: Millis = 60 * SECOND_MS;
pub const HOUR_MS: Millis = 60 * MINUTE_MS;
pub const DAY_MS: Millis = 24 * HOUR_MS;
pub const WEEK_MS: Millis = 7 * DAY_MS;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimeError {
    #[error("invalid duration {0:?}: expected a number followed by ms, s, m, h, d or w (e.g. 30d, 12h, 39w)")]
    BadDuration(String),
    #[error(
        "invalid timestamp {0:?}: expected RFC3339 (2026-01-31T12:00:00Z), a date YYYY-MM-DD (2026-01-31, midnight UTC) or epoch milliseconds (1769860800000)"
    )]
    BadTimestamp(String),
}

/// A non-negative span of event time, written like `30d`, `12h`, `39w`, `90s`, `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub Millis);

impl Span {
    pub const fn ms(self) -> Millis {
        self.0
    }
    pub const fn days(d: i64) -> Span {
        Span(d * DAY_MS)
    }
    pub const fn hours(h: i64) -> Span {
        Span(h * HOUR_MS)
    }
    pub fn as_days_f64(self) -> f64 {
        self.0 as f64 / DAY_MS as f64
    }
}

impl FromStr for Span {
    type Err = TimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || TimeError::BadDuration(s.to_string());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let unit_ms = match unit.trim() {
            "ms" => 1,
            "s" => SECOND_MS,
            "m" | "min" => MINUTE_MS,
            "h" => HOUR_MS,
            "d" => DAY_MS,
            "w" => WEEK_MS,
            _ => return Err(bad()),
        };
        n.checked_mul(unit_ms).map(Span).ok_or_else(bad)
    }
}

impl fmt::Display for Span {
    /// The largest unit up to days that divides the span exactly (weeks read as days, so
    /// feature names say `7d` and `91d`), so `Display` round-trips through `FromStr`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        for (unit, len) in [("d", DAY_MS), ("h", HOUR_MS), ("m", MINUTE_MS), ("s", SECOND_MS)] {
            if ms != 0 && ms % len == 0 {
                return write!(f, "{}{}", ms / len, unit);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parse a command-line or config timestamp: RFC3339, a bare date (`2026-03-01`, midnight UTC),
/// or epoch milliseconds.
pub fn parse_timestamp(s: &str) -> Result<Millis, TimeError> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'-') && !t.contains('-') {
        return t.parse().map_err(|_| TimeError::BadTimestamp(s.to_string()));
    }
    if let Some(ms) = parse_rfc3339(t) {
        return Ok(ms);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if let Some(dt) = d.and_hms_opt(0, 0, 0) {
            return Ok(dt.and_utc().timestamp_millis());
        }
    }
    Err(TimeError::BadTimestamp(s.to_string()))
}

/// RFC3339 to epoch ms. The common canonical form (`YYYY-MM-DDTHH:MM:SS[.fff]Z`) is parsed by hand
/// because it is on the per-event hot path; anything else (offsets, odd precision) goes to chrono.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    parse_rfc3339_fast(s.as_bytes())
        .or_else(|| chrono::DateTime::parse_from_rfc3339(s).ok().map(|dt| dt.timestamp_millis()))
}

fn parse_rfc3339_fast(b: &[u8]) -> Option<Millis> {
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || (b[10] != b'T' && b[10] != b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[r] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(c - b'0');
        }
        Some(v)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac_ms = match b.len() {
        20 => 0,
        24 if b[19] == b'.' => num(20..23)?,
        _ => return None,
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + min) * 60_000 + sec * 1000 + frac_ms)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Append `YYYY-MM-DDTHH:MM:SS.fffZ` to `out` without allocating.
pub fn write_rfc3339_ms(out: &mut Vec<u8>, ms: Millis) {
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let (h, rest) = (in_day / HOUR_MS, in_day % HOUR_MS);
    let (mi, rest) = (rest / MINUTE_MS, rest % MINUTE_MS);
    let (s, f) = (rest / SECOND_MS, rest % SECOND_MS);
    // Fixed layout: fill digits into a stack buffer, then one extend.
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut v: i64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, y);
    put(5, 2, m);
    put(8, 2, d);
    put(11, 2, h);
    put(14, 2, mi);
    put(17, 2, s);
    put(20, 3, f);
    out.extend_from_slice(&buf);
}

pub fn format_rfc3339_ms(ms: Millis) -> String {
    let mut v = Vec::with_capacity(24);
    write_rfc3339_ms(&mut v, ms);
    String::from_utf8_lossy(&v).into_owned()
}

/// UTC day number of a timestamp (days since epoch, floor).
pub fn day_of(ms: Millis) -> i64 {
    ms.div_euclid(DAY_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_round_trip() {
        assert_eq!("30d".parse::<Span>(), Ok(Span(30 * DAY_MS)));
        assert_eq!("39w".parse::<Span>(), Ok(Span(39 * WEEK_MS)));
        assert_eq!("12h".parse::<Span>(), Ok(Span(12 * HOUR_MS)));
        assert_eq!("250ms".parse::<Span>(), Ok(Span(250)));
        assert_eq!(Span(2 * WEEK_MS).to_string(), "14d");
        for s in ["30d", "12h", "90s", "250ms", "5m"] {
            assert_eq!(s.parse::<Span>().map(|d| d.to_string()).as_deref(), Ok(s));
        }
        assert!("".parse::<Span>().is_err());
        assert!("d".parse::<Span>().is_err());
        assert!("-3d".parse::<Span>().is_err());
        assert!("3 fortnights".parse::<Span>().is_err());
    }

    #[test]
    fn fast_rfc3339_agrees_with_chrono() {
        for ms in [0i64, 1, 999, 86_399_999, 951_782_400_000, 1_709_251_199_123, 1_798_761_600_000, -86_400_001] {
            let s = format_rfc3339_ms(ms);
            let via_chrono = chrono::DateTime::parse_from_rfc3339(&s).map(|d| d.timestamp_millis());
            assert_eq!(via_chrono, Ok(ms), "{s}");
            assert_eq!(parse_rfc3339_fast(s.as_bytes()), Some(ms), "{s}");
        }
    }

    #[test]
    fn rfc3339_with_offset_and_date_only() {
        assert_eq!(parse_rfc3339("2026-01-01T01:00:00+01:00"), Some(1_767_225_600_000));
        assert_eq!(parse_timestamp("2026-01-01"), Ok(1_767_225_600_000));
        assert_eq!(parse_timestamp("1767225600000"), Ok(1_767_225_600_000));
        assert!(parse_rfc3339("2026-02-30T00:00:00Z").is_none());
        assert!(parse_timestamp("yesterday").is_err());
    }
}
