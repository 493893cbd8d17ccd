//! Activity events: the wire format, its parser and the typed reasons an event is rejected.
//!
//! Parsing borrows from the input buffer: known fields need no allocation unless the JSON
//! string contains escapes. Every rejection carries a stable [`RejectReason`] code that is
//! used as a metric label, a dead-letter header and a file-replay report key.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::time::{self, Millis};

mod future;
mod scan;

pub use future::FutureGuard;

/// Upper bound on `user_id` length, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;
/// Upper bound on `event_type` length, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;
/// Default upper bound on one serialized event.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;

/// The earliest accepted event time, 1970-01-01 (inclusive): historical logs (a retail log from
/// the 1990s) are valid input. A negative epoch is almost always a unit or sign mistake.
pub const MIN_TS: Millis = 0;
/// The first rejected event time, 2200-01-01: beyond it a timestamp is almost always a unit
/// mistake (microseconds or nanoseconds sent as milliseconds).
pub const MAX_TS: Millis = 7_258_118_400_000;

/// How far after the present an event may be stamped (`source.max_future`; fixed for file
/// commands): wider than ordinary clock drift, narrower than a local time sent as UTC. It is
/// also how far one event can push the watermark past the present, so it stays well inside the
/// default `engine.allowed_lateness` (1 h): after an event at the limit, events delayed by up
/// to 45 minutes are still on time.
pub const DEFAULT_MAX_FUTURE: crate::time::Span = crate::time::Span(15 * crate::time::MINUTE_MS);

/// Why an event was not accepted. The `code()` strings are a stable interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    NotJson,
    NotObject,
    MissingField,
    BadType,
    BadTimestamp,
    BadUserId,
    BadEventType,
    BadAmount,
    TooLarge,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::NotJson,
        RejectReason::NotObject,
        RejectReason::MissingField,
        RejectReason::BadType,
        RejectReason::BadTimestamp,
        RejectReason::BadUserId,
        RejectReason::BadEventType,
        RejectReason::BadAmount,
        RejectReason::TooLarge,
    ];

    pub fn code(self) -> &'static str {
        match self {
            RejectReason::NotJson => "not_json",
            RejectReason::NotObject => "not_object",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadType => "bad_type",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::BadUserId => "bad_user_id",
            RejectReason::BadEventType => "bad_event_type",
            RejectReason::BadAmount => "bad_amount",
            RejectReason::TooLarge => "too_large",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// A rejected event: the reason code plus a human-readable detail for logs and DLQ headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    pub(crate) fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into() }
    }
}

/// A validated activity event, borrowing its strings from the input where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityEvent<'a> {
    pub user_id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    pub ts: Millis,
    pub amount: Option<f64>,
}

/// Any JSON value, keeping strings borrowed and skipping compound values without building them.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    /// A number that is not an `i64`: a fraction, an exponent or beyond `i64::MAX`.
    Float,
    Null,
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(Scalar::Float, Scalar::Int))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Other("boolean"))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("object"))
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar<'_> {
    /// The JSON type and size of a value, never its content: `string of 17 bytes`,
    /// `integer of 10 digits`. This is what rejection details say about a field, because they
    /// go to logs and dead-letter headers and a field may hold personal data.
    fn describe(&self) -> String {
        match self {
            Scalar::Str(s) => format!("string of {} bytes", s.len()),
            Scalar::Int(i) => {
                let digits = i.unsigned_abs().checked_ilog10().unwrap_or(0) + 1;
                let sign = if *i < 0 { "negative " } else { "" };
                format!("{sign}integer of {digits} digits")
            }
            Scalar::Float => "number that is not a 64-bit integer".to_string(),
            Scalar::Null => "null".to_string(),
            Scalar::Other(t) => (*t).to_string(),
        }
    }
}

/// The raw fields of an event object, before validation. Unknown fields are skipped.
#[derive(Default)]
struct RawFields<'a> {
    user_id: Option<Scalar<'a>>,
    event_type: Option<Scalar<'a>>,
    ts: Option<Scalar<'a>>,
    /// Kept as its JSON text: a number beyond `f64` (`1e400`) would fail the whole parse as
    /// `not_json` if serde_json converted it, and it is a `bad_amount`.
    amount: Option<&'a str>,
}

/// A field name, matched without allocating (serde's `Cow<str>` would always own it).
enum Key {
    UserId,
    EventType,
    Ts,
    Amount,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "user_id" => Key::UserId,
                    "event_type" => Key::EventType,
                    "ts" => Key::Ts,
                    "amount" => Key::Amount,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

enum Top<'a> {
    Object(RawFields<'a>),
    NotObject(&'static str),
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                let mut raw = RawFields::default();
                while let Some(key) = a.next_key::<Key>()? {
                    let slot = match key {
                        Key::UserId => &mut raw.user_id,
                        Key::EventType => &mut raw.event_type,
                        Key::Ts => &mut raw.ts,
                        Key::Amount => {
                            raw.amount = Some(a.next_value::<&RawValue>()?.get());
                            continue;
                        }
                        Key::Other => {
                            a.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(a.next_value()?);
                }
                Ok(Top::Object(raw))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Top::NotObject("array"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Top::NotObject("string"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Top::NotObject("number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Top::NotObject("number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Top::NotObject("number"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Top::NotObject("boolean"))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Top::NotObject("null"))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse and validate one serialized event. `max_bytes` bounds the payload size.
///
/// A fixed-schema scanner ([`scan`]) accepts the common shape of a valid event without going
/// through serde; whenever it is not certain (escapes in a returned field, a value of an
/// unexpected type, any syntax error or any rejection), the event goes to
/// [`parse_event_reference`], so every rejection and every unusual event is decided by the
/// reference parser alone. `tests/parser_properties.rs` checks the two agree.
pub fn parse_event(bytes: &[u8], max_bytes: usize) -> Result<ActivityEvent<'_>, Rejection> {
    if bytes.len() > max_bytes {
        return Err(too_large(bytes.len(), max_bytes));
    }
    match scan::scan(bytes) {
        Some(ev) => Ok(ev),
        None => parse_event_reference(bytes, max_bytes),
    }
}

/// The scanner alone: `Some` only for an event it is certain of, which must then be exactly what
/// [`parse_event_reference`] returns. Public only for the property tests.
#[doc(hidden)]
pub fn parse_event_fast(bytes: &[u8]) -> Option<ActivityEvent<'_>> {
    scan::scan(bytes)
}

fn too_large(len: usize, max_bytes: usize) -> Rejection {
    Rejection::new(RejectReason::TooLarge, format!("{len} bytes exceeds the limit of {max_bytes}"))
}

/// The serde_json parser that defines the accepted events and every rejection (reason and
/// detail). Public only so that the property tests and the benchmark can compare
/// [`parse_event`] with it.
#[doc(hidden)]
pub fn parse_event_reference(bytes: &[u8], max_bytes: usize) -> Result<ActivityEvent<'_>, Rejection> {
    if bytes.len() > max_bytes {
        return Err(too_large(bytes.len(), max_bytes));
    }
    let raw = match serde_json::from_slice::<Top>(bytes) {
        Ok(Top::Object(raw)) => raw,
        Ok(Top::NotObject(kind)) => {
            return Err(Rejection::new(RejectReason::NotObject, format!("expected a JSON object, got {kind}")))
        }
        Err(e) => return Err(Rejection::new(RejectReason::NotJson, json_error_detail(&e))),
    };
    validate(raw)
}

/// serde_json's syntax messages are fixed texts with a position ("EOF while parsing a string at
/// line 1 column 13"); only a `Data` error can carry a custom message, which might quote input,
/// so that one is replaced.
fn json_error_detail(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Data => {
            format!("invalid JSON value at line {} column {}", e.line(), e.column())
        }
        _ => e.to_string(),
    }
}

/// What `ts` accepts (see [`time::parse_rfc3339`]).
const TS_EXPECTED: &str = "expected integer epoch milliseconds or an RFC3339 date-time string with a UTC offset \
     (e.g. 2026-03-01T10:05:00.000Z), from 1970-01-01 up to (not including) 2200-01-01";
const AMOUNT_EXPECTED: &str = "expected a finite JSON number (or null)";

fn required_str<'a>(field: &str, v: Option<Scalar<'a>>, limit: usize) -> Result<Cow<'a, str>, Rejection> {
    match v {
        None | Some(Scalar::Null) => Err(Rejection::new(RejectReason::MissingField, format!("`{field}` is required"))),
        Some(Scalar::Str(s)) => Ok(s),
        Some(other) => Err(Rejection::new(
            RejectReason::BadType,
            format!("`{field}`: {}, expected a string of 1..={limit} bytes", other.describe()),
        )),
    }
}

fn validate(raw: RawFields<'_>) -> Result<ActivityEvent<'_>, Rejection> {
    let user_id = required_str("user_id", raw.user_id, MAX_USER_ID_BYTES)?;
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_BYTES {
        return Err(Rejection::new(
            RejectReason::BadUserId,
            format!("`user_id`: string of {} bytes, expected 1..={MAX_USER_ID_BYTES} bytes", user_id.len()),
        ));
    }
    let event_type = required_str("event_type", raw.event_type, MAX_EVENT_TYPE_BYTES)?;
    if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(Rejection::new(
            RejectReason::BadEventType,
            format!("`event_type`: string of {} bytes, expected 1..={MAX_EVENT_TYPE_BYTES} bytes", event_type.len()),
        ));
    }
    // The detail says what kind of value was given (type, length, and whether it is a date-time
    // out of range) and what is expected, never the value itself.
    let bad_ts = |v: &Scalar<'_>, what: &str| {
        Rejection::new(RejectReason::BadTimestamp, format!("`ts`: {}{what}, {TS_EXPECTED}", v.describe()))
    };
    const OUT_OF_RANGE: &str = " out of range";
    let ts = match raw.ts {
        None | Some(Scalar::Null) => return Err(Rejection::new(RejectReason::MissingField, "`ts` is required")),
        Some(Scalar::Int(ms)) if (MIN_TS..MAX_TS).contains(&ms) => ms,
        Some(Scalar::Str(s)) => match time::parse_rfc3339(&s) {
            Some(ms) if (MIN_TS..MAX_TS).contains(&ms) => ms,
            Some(_) => return Err(bad_ts(&Scalar::Str(s), ", an RFC3339 date-time out of range")),
            None => return Err(bad_ts(&Scalar::Str(s), ", not an RFC3339 date-time")),
        },
        Some(v @ Scalar::Int(_)) => return Err(bad_ts(&v, OUT_OF_RANGE)),
        Some(v @ Scalar::Float) => return Err(bad_ts(&v, "")),
        Some(other) => {
            return Err(Rejection::new(RejectReason::BadType, format!("`ts`: {}, {TS_EXPECTED}", other.describe())))
        }
    };
    let amount = parse_amount(raw.amount)?;
    Ok(ActivityEvent { user_id, event_type, ts, amount })
}

/// `amount` from its JSON text. Negative amounts are valid (refunds). A number beyond the range
/// of `f64` (`1e400`), or a string that spells a non-finite number (`"NaN"`, `"Infinity"`, as some
/// serializers write them), is a `bad_amount`; any other non-number is a `bad_type`.
fn parse_amount(raw: Option<&str>) -> Result<Option<f64>, Rejection> {
    let Some(text) = raw else { return Ok(None) };
    match text.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => {
            // Already checked as JSON number syntax, which Rust's float syntax includes; a value
            // beyond f64 parses as infinity.
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Some(f)),
                _ => Err(Rejection::new(
                    RejectReason::BadAmount,
                    format!(
                        "`amount`: number of {} bytes, beyond the range of a 64-bit float; {AMOUNT_EXPECTED}",
                        text.len()
                    ),
                )),
            }
        }
        Some(b'n') => Ok(None),
        _ => {
            // Not a number: decode it once more (rare) to name its type.
            let v: Scalar<'_> =
                serde_json::from_str(text).map_err(|e| Rejection::new(RejectReason::NotJson, json_error_detail(&e)))?;
            let spells_non_finite =
                matches!(&v, Scalar::Str(s) if s.trim().parse::<f64>().is_ok_and(|f| !f.is_finite()));
            if spells_non_finite {
                Err(Rejection::new(
                    RejectReason::BadAmount,
                    format!("`amount`: {} spelling a non-finite number; {AMOUNT_EXPECTED}", v.describe()),
                ))
            } else {
                Err(Rejection::new(RejectReason::BadType, format!("`amount`: {}, {AMOUNT_EXPECTED}", v.describe())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> Option<RejectReason> {
        parse_event(s.as_bytes(), DEFAULT_MAX_EVENT_BYTES).err().map(|r| r.reason)
    }

    #[test]
    fn parses_rfc3339_and_epoch_ms_and_ignores_unknown_fields() {
        let a = parse_event(
            br#"{"user_id":"u1","event_type":"purchase","ts":"2026-01-01T00:00:01.500Z","amount":9.5,"properties":{"sku":[1,2]},"extra":true}"#,
            1024,
        )
        .unwrap();
        assert_eq!(a.user_id, "u1");
        assert_eq!(a.event_type, "purchase");
        assert_eq!(a.ts, 1_767_225_601_500);
        assert_eq!(a.amount, Some(9.5));
        assert!(matches!(a.user_id, Cow::Borrowed(_)), "plain strings must not allocate");
        let b = parse_event(br#"{"ts":1767225601500,"event_type":"login","user_id":"u\u00e9"}"#, 1024).unwrap();
        assert_eq!(b.ts, 1_767_225_601_500);
        assert_eq!(b.user_id, "u\u{e9}");
        assert_eq!(b.amount, None);
    }

    #[test]
    fn every_reject_reason_is_reachable() {
        let long = "x".repeat(MAX_USER_ID_BYTES + 1);
        let long_user = format!(r#"{{"user_id":"{long}","event_type":"login","ts":1767225601500}}"#);
        let long_type = format!(r#"{{"user_id":"u","event_type":"{}","ts":1767225601500}}"#, "t".repeat(129));
        let with_amount =
            |a: &str| format!(r#"{{"user_id":"u","event_type":"purchase","ts":1767225601500,"amount":{a}}}"#);
        let cases: Vec<(String, RejectReason)> = vec![
            ("{not json".into(), RejectReason::NotJson),
            ("{\"user_id\":\"u9".into(), RejectReason::NotJson),
            (with_amount("NaN"), RejectReason::NotJson), // not JSON at all
            (with_amount("-Infinity"), RejectReason::NotJson),
            ("[1,2]".into(), RejectReason::NotObject),
            ("\"event\"".into(), RejectReason::NotObject),
            (r#"{"event_type":"login","ts":1767225601500}"#.into(), RejectReason::MissingField),
            (r#"{"user_id":"u","event_type":"login"}"#.into(), RejectReason::MissingField),
            (r#"{"user_id":null,"event_type":"login","ts":1767225601500}"#.into(), RejectReason::MissingField),
            (r#"{"user_id":7,"event_type":"login","ts":1767225601500}"#.into(), RejectReason::BadType),
            (r#"{"user_id":"u","event_type":"login","ts":true}"#.into(), RejectReason::BadType),
            (r#"{"user_id":"u","event_type":"login","ts":{"ms":1}}"#.into(), RejectReason::BadType),
            (with_amount("\"12\""), RejectReason::BadType),
            (with_amount("[1]"), RejectReason::BadType),
            (with_amount("false"), RejectReason::BadType),
            (r#"{"user_id":"u","event_type":"login","ts":"yesterday"}"#.into(), RejectReason::BadTimestamp),
            (r#"{"user_id":"u","event_type":"login","ts":1767225601500000}"#.into(), RejectReason::BadTimestamp),
            (r#"{"user_id":"u","event_type":"login","ts":-1767225601500}"#.into(), RejectReason::BadTimestamp),
            (r#"{"user_id":"u","event_type":"login","ts":1.5e12}"#.into(), RejectReason::BadTimestamp),
            (r#"{"user_id":"u","event_type":"login","ts":"1969-12-31T23:59:59Z"}"#.into(), RejectReason::BadTimestamp),
            (r#"{"user_id":"u","event_type":"login","ts":"2200-01-01T00:00:00Z"}"#.into(), RejectReason::BadTimestamp),
            (r#"{"user_id":"","event_type":"login","ts":1767225601500}"#.into(), RejectReason::BadUserId),
            (long_user, RejectReason::BadUserId),
            (r#"{"user_id":"u","event_type":"","ts":1767225601500}"#.into(), RejectReason::BadEventType),
            (long_type, RejectReason::BadEventType),
            (with_amount("1e400"), RejectReason::BadAmount),
            (with_amount("-1e400"), RejectReason::BadAmount),
            (with_amount("123456789e999"), RejectReason::BadAmount),
            (with_amount("\"NaN\""), RejectReason::BadAmount),
            (with_amount("\"Infinity\""), RejectReason::BadAmount),
            (with_amount("\"-inf\""), RejectReason::BadAmount),
        ];
        let mut produced = std::collections::BTreeSet::new();
        for (input, want) in &cases {
            let r = parse_event(input.as_bytes(), DEFAULT_MAX_EVENT_BYTES).expect_err(input);
            assert_eq!(r.reason, *want, "{input}: {r}");
            produced.insert(r.reason);
        }
        let big = format!(r#"{{"user_id":"u","event_type":"login","ts":1767225601500,"pad":"{}"}}"#, "p".repeat(200));
        let r = parse_event(big.as_bytes(), 100).expect_err("too large");
        assert_eq!(r.reason, RejectReason::TooLarge);
        produced.insert(r.reason);
        let all: std::collections::BTreeSet<_> = RejectReason::ALL.into_iter().collect();
        assert_eq!(produced, all, "every RejectReason must be produced by some input");
        assert_eq!(reason(r#"{"user_id":"u","event_type":"login","ts":1767225601500}"#), None);
    }

    #[test]
    fn amounts_may_be_negative_tiny_null_or_integers() {
        let amount = |a: &str| {
            let text = format!(r#"{{"user_id":"u","event_type":"purchase","ts":1767225601500,"amount":{a}}}"#);
            parse_event(text.as_bytes(), 1024).map(|e| e.amount)
        };
        assert_eq!(amount("-12.5"), Ok(Some(-12.5)), "refunds are negative");
        assert_eq!(amount("19.99"), Ok(Some(19.99)));
        assert_eq!(amount("7"), Ok(Some(7.0)));
        assert_eq!(amount("1e-400"), Ok(Some(0.0)), "underflow is zero, not an error");
        assert_eq!(amount("1.7976931348623157e308"), Ok(Some(f64::MAX)));
        assert_eq!(amount("null"), Ok(None));
        assert_eq!(amount(" 3 "), Ok(Some(3.0)));
        let r = amount("1e400").unwrap_err();
        assert_eq!(
            r.detail,
            "`amount`: number of 5 bytes, beyond the range of a 64-bit float; expected a finite JSON number (or null)"
        );
    }

    #[test]
    fn details_name_the_field_type_and_length_but_not_the_content() {
        let detail = |s: &str| parse_event(s.as_bytes(), DEFAULT_MAX_EVENT_BYTES).unwrap_err().detail;
        let d = detail(r#"{"user_id":"u","event_type":"login","ts":"jane.doe@example.com"}"#);
        assert_eq!(
            d,
            "`ts`: string of 20 bytes, not an RFC3339 date-time, expected integer epoch milliseconds or an RFC3339 \
             date-time string with a UTC offset (e.g. 2026-03-01T10:05:00.000Z), from 1970-01-01 up to (not \
             including) 2200-01-01"
        );
        let d = detail(r#"{"user_id":"u","event_type":"login","ts":"1969-07-20T20:17:40Z"}"#);
        assert!(d.starts_with("`ts`: string of 20 bytes, an RFC3339 date-time out of range, expected "), "{d}");
        assert!(!d.contains("1969-07-20") && d.contains("from 1970-01-01"), "{d}");
        let d = detail(r#"{"user_id":"u","event_type":"login","ts":1767225601500000}"#);
        assert!(d.starts_with("`ts`: integer of 16 digits out of range, expected integer epoch milliseconds"), "{d}");
        assert!(!d.contains("1767225601"), "{d}");
        let d = detail(r#"{"user_id":"u","event_type":"login","ts":-42}"#);
        assert!(d.starts_with("`ts`: negative integer of 2 digits out of range,"), "{d}");
        let d = detail(r#"{"user_id":"u","event_type":"login","ts":1.5e12}"#);
        assert!(d.starts_with("`ts`: number that is not a 64-bit integer,") && !d.contains("1.5"), "{d}");
        let d = detail(r#"{"user_id":12345678,"event_type":"login","ts":1767225601500}"#);
        assert_eq!(d, "`user_id`: integer of 8 digits, expected a string of 1..=256 bytes");
        let d = detail(&format!(r#"{{"user_id":"u","event_type":"{}","ts":1767225601500}}"#, "secretive".repeat(20)));
        assert_eq!(d, "`event_type`: string of 180 bytes, expected 1..=128 bytes");
        let d = detail(r#"{"user_id":"u","event_type":"login","ts":1767225601500,"amount":"jane@example.com"}"#);
        assert_eq!(d, "`amount`: string of 16 bytes, expected a finite JSON number (or null)");
        let d = detail(r#"{"user_id":"u","event_type":"login","ts":1767225601500,"amount":"NaN"}"#);
        assert_eq!(
            d,
            "`amount`: string of 3 bytes spelling a non-finite number; expected a finite JSON number (or null)"
        );
        let d = detail(r#"{"user_id":"jane@example.com"#);
        assert!(d.starts_with("EOF while parsing a string at line 1 column "), "{d}");
    }

    /// Events with `content` in every field (and as a key, and in broken JSON), inside quotes.
    /// For letters-only contents the rejection must be the same as for any other content of the
    /// same length: then it cannot carry the content in any form.
    fn templates(content: &str) -> Vec<String> {
        let c = content;
        vec![
            format!(r#"{{"user_id":"{c}","event_type":"login","ts":1767225601500}}"#),
            format!(r#"{{"user_id":"{c}","event_type":"login"}}"#),
            format!(r#"{{"user_id":"u","event_type":"{c}","ts":1767225601500}}"#),
            format!(r#"{{"user_id":"u","event_type":"{c}","ts":"{c}"}}"#),
            format!(r#"{{"user_id":"u","event_type":"login","ts":"{c}"}}"#),
            format!(r#"{{"user_id":"u","event_type":"login","ts":"2026-01-01T00:00:00Z","amount":"{c}"}}"#),
            format!(r#"{{"user_id":"{c}","event_type":"{c}","ts":"{c}","amount":"{c}"}}"#),
            format!(r#"{{"user_id":"u","event_type":"login","ts":1767225601500,"amount":["{c}"]}}"#),
            format!(r#"{{"user_id":["{c}"],"event_type":"login","ts":1767225601500}}"#),
            format!(r#"{{"user_id":{{"{c}":1}},"event_type":"login","ts":1767225601500}}"#),
            format!(r#"{{"{c}":"{c}","event_type":"login","ts":1767225601500}}"#),
            format!(r#"{{"user_id":"u","event_type":"login","ts":1767225601500,"note":"{c}"}}"#),
            format!(r#"{{"user_id":"{c}"#),
            format!(r#"{{"user_id":"u\x{c}"}}"#),
            format!(r#""{c}""#),
            format!(r#"["{c}"]"#),
        ]
    }

    /// Content outside quotes: serde_json's message depends on the letters (`nul...` starts a
    /// `null`), so only its absence is checked.
    fn bare_templates(content: &str) -> Vec<String> {
        let c = content;
        vec![
            format!(r#"{{"user_id":{c}}}"#),
            format!(r#"{{"user_id":"u","event_type":"login","ts":{c}}}"#),
            format!(r#"{{"user_id":"u","event_type":"login","ts":1767225601500,"amount":{c}}}"#),
            c.to_string(),
        ]
    }

    proptest::proptest! {
        #[test]
        fn rejection_details_never_contain_field_contents(content in "[a-zA-Z]{4,300}") {
            let filler = "Q".repeat(content.len());
            for (input, same_length) in templates(&content).into_iter().zip(templates(&filler)) {
                let got = parse_event(input.as_bytes(), DEFAULT_MAX_EVENT_BYTES);
                let with_filler = parse_event(same_length.as_bytes(), DEFAULT_MAX_EVENT_BYTES);
                match (&got, &with_filler) {
                    (Err(r), Err(f)) => {
                        let shown = r.to_string();
                        proptest::prop_assert!(!shown.contains(&content), "{input}: {shown}");
                        proptest::prop_assert_eq!(r, f, "the detail depends on more than the length: {}", input);
                    }
                    (Ok(_), Ok(_)) => {}
                    _ => proptest::prop_assert!(false, "{input}: {got:?} but {same_length}: {with_filler:?}"),
                }
            }
            for input in bare_templates(&content) {
                let r = parse_event(input.as_bytes(), DEFAULT_MAX_EVENT_BYTES).expect_err(&input);
                proptest::prop_assert!(!r.to_string().contains(&content), "{input}: {r}");
            }
            // The field's own content is always the cause in these, so each is a real rejection.
            for (i, want) in [(4, RejectReason::BadTimestamp), (5, RejectReason::BadType), (12, RejectReason::NotJson)] {
                let input = &templates(&content)[i];
                let r = parse_event(input.as_bytes(), DEFAULT_MAX_EVENT_BYTES).expect_err(input);
                proptest::prop_assert_eq!(r.reason, want);
            }
        }
    }

    /// Historical data: any time since 1970 is valid, in either spelling.
    #[test]
    fn timestamps_from_1970_on_are_valid() {
        let at = |ts: &str| {
            parse_event(format!(r#"{{"user_id":"u","event_type":"purchase","ts":{ts}}}"#).as_bytes(), 1024)
                .map(|e| e.ts)
        };
        assert_eq!(at(r#""1997-03-01T00:00:00Z""#), Ok(857_174_400_000));
        assert_eq!(at("857174400000"), Ok(857_174_400_000));
        assert_eq!(at(r#""1970-01-01T00:00:00Z""#), Ok(0));
        assert_eq!(at("0"), Ok(0));
        assert_eq!(at(r#""1999-12-31T23:59:59.999Z""#), Ok(946_684_799_999));
        assert_eq!(at("-1").unwrap_err().reason, RejectReason::BadTimestamp);
    }

    #[test]
    fn reason_codes_are_unique_and_indexed_in_order() {
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        let mut codes: Vec<_> = RejectReason::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), RejectReason::ALL.len());
    }
}
