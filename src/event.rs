//! Activity events: the wire format, its parser and the typed reasons an event is rejected.
//!
//! Parsing borrows from the input buffer: known fields need no allocation unless the JSON
//! string contains escapes. Every rejection carries a stable [`RejectReason`] code that is
//! used as a metric label, a dead-letter header and a file-replay report key.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::time::{self, Millis};

/// Upper bound on `user_id` length, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;
/// Upper bound on `event_type` length, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 128;
/// Default upper bound on one serialized event.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024;

// Timestamps outside this range are almost always unit mistakes (seconds or microseconds sent as
// milliseconds), so they are rejected instead of silently creating state decades away.
const MIN_TS: Millis = 946_684_800_000; // 2000-01-01
const MAX_TS: Millis = 7_258_118_400_000; // 2200-01-01

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
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
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
    Float(f64),
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
                Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
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
    fn type_name(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "string",
            Scalar::Int(_) | Scalar::Float(_) => "number",
            Scalar::Null => "null",
            Scalar::Other(t) => t,
        }
    }
}

/// The raw fields of an event object, before validation. Unknown fields are skipped.
#[derive(Default)]
struct RawFields<'a> {
    user_id: Option<Scalar<'a>>,
    event_type: Option<Scalar<'a>>,
    ts: Option<Scalar<'a>>,
    amount: Option<Scalar<'a>>,
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
                        Key::Amount => &mut raw.amount,
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
pub fn parse_event(bytes: &[u8], max_bytes: usize) -> Result<ActivityEvent<'_>, Rejection> {
    if bytes.len() > max_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!("{} bytes exceeds the limit of {max_bytes}", bytes.len()),
        ));
    }
    let raw = match serde_json::from_slice::<Top>(bytes) {
        Ok(Top::Object(raw)) => raw,
        Ok(Top::NotObject(kind)) => {
            return Err(Rejection::new(RejectReason::NotObject, format!("expected a JSON object, got {kind}")))
        }
        Err(e) => return Err(Rejection::new(RejectReason::NotJson, e.to_string())),
    };
    validate(raw)
}

fn required_str<'a>(field: &str, v: Option<Scalar<'a>>) -> Result<Cow<'a, str>, Rejection> {
    match v {
        None | Some(Scalar::Null) => Err(Rejection::new(RejectReason::MissingField, format!("`{field}` is required"))),
        Some(Scalar::Str(s)) => Ok(s),
        Some(other) => {
            Err(Rejection::new(RejectReason::BadType, format!("`{field}` must be a string, got {}", other.type_name())))
        }
    }
}

fn validate(raw: RawFields<'_>) -> Result<ActivityEvent<'_>, Rejection> {
    let user_id = required_str("user_id", raw.user_id)?;
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_BYTES {
        return Err(Rejection::new(
            RejectReason::BadUserId,
            format!("`user_id` must be 1..={MAX_USER_ID_BYTES} bytes, got {}", user_id.len()),
        ));
    }
    let event_type = required_str("event_type", raw.event_type)?;
    if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(Rejection::new(
            RejectReason::BadEventType,
            format!("`event_type` must be 1..={MAX_EVENT_TYPE_BYTES} bytes, got {}", event_type.len()),
        ));
    }
    let ts = match raw.ts {
        None | Some(Scalar::Null) => return Err(Rejection::new(RejectReason::MissingField, "`ts` is required")),
        Some(Scalar::Int(ms)) => ms,
        Some(Scalar::Str(s)) => time::parse_rfc3339(&s)
            .ok_or_else(|| Rejection::new(RejectReason::BadTimestamp, format!("`ts` {s:?} is not RFC3339")))?,
        Some(Scalar::Float(f)) => {
            return Err(Rejection::new(
                RejectReason::BadTimestamp,
                format!("`ts` must be integer epoch milliseconds, got {f}"),
            ))
        }
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::BadType,
                format!("`ts` must be an RFC3339 string or epoch milliseconds, got {}", other.type_name()),
            ))
        }
    };
    if !(MIN_TS..MAX_TS).contains(&ts) {
        return Err(Rejection::new(
            RejectReason::BadTimestamp,
            format!("`ts` {ts} is outside 2000-01-01..2200-01-01 (epoch milliseconds expected)"),
        ));
    }
    let amount = match raw.amount {
        None | Some(Scalar::Null) => None,
        Some(Scalar::Int(i)) => Some(i as f64),
        Some(Scalar::Float(f)) if f.is_finite() => Some(f),
        Some(Scalar::Float(f)) => {
            return Err(Rejection::new(RejectReason::BadAmount, format!("`amount` must be finite, got {f}")))
        }
        Some(other) => {
            return Err(Rejection::new(
                RejectReason::BadType,
                format!("`amount` must be a number, got {}", other.type_name()),
            ))
        }
    };
    Ok(ActivityEvent { user_id, event_type, ts, amount })
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
        assert_eq!(reason("{not json"), Some(RejectReason::NotJson));
        assert_eq!(reason("[1,2]"), Some(RejectReason::NotObject));
        assert_eq!(reason(r#"{"event_type":"login","ts":1767225601500}"#), Some(RejectReason::MissingField));
        assert_eq!(reason(r#"{"user_id":"u","event_type":"login"}"#), Some(RejectReason::MissingField));
        assert_eq!(
            reason(r#"{"user_id":null,"event_type":"login","ts":1767225601500}"#),
            Some(RejectReason::MissingField)
        );
        assert_eq!(reason(r#"{"user_id":7,"event_type":"login","ts":1767225601500}"#), Some(RejectReason::BadType));
        assert_eq!(reason(r#"{"user_id":"u","event_type":"login","ts":true}"#), Some(RejectReason::BadType));
        assert_eq!(
            reason(r#"{"user_id":"u","event_type":"login","ts":"yesterday"}"#),
            Some(RejectReason::BadTimestamp)
        );
        assert_eq!(reason(r#"{"user_id":"u","event_type":"login","ts":1767225601}"#), Some(RejectReason::BadTimestamp));
        assert_eq!(reason(r#"{"user_id":"u","event_type":"login","ts":1.5e12}"#), Some(RejectReason::BadTimestamp));
        assert_eq!(reason(r#"{"user_id":"","event_type":"login","ts":1767225601500}"#), Some(RejectReason::BadUserId));
        let long = "x".repeat(MAX_USER_ID_BYTES + 1);
        assert_eq!(
            reason(&format!(r#"{{"user_id":"{long}","event_type":"login","ts":1767225601500}}"#)),
            Some(RejectReason::BadUserId)
        );
        assert_eq!(reason(r#"{"user_id":"u","event_type":"","ts":1767225601500}"#), Some(RejectReason::BadEventType));
        assert_eq!(
            reason(r#"{"user_id":"u","event_type":"purchase","ts":1767225601500,"amount":"12"}"#),
            Some(RejectReason::BadType)
        );
        let big = format!(r#"{{"user_id":"u","event_type":"login","ts":1767225601500,"pad":"{}"}}"#, "p".repeat(200));
        assert_eq!(parse_event(big.as_bytes(), 100).err().map(|r| r.reason), Some(RejectReason::TooLarge));
        assert_eq!(reason(r#"{"user_id":"u","event_type":"login","ts":1767225601500}"#), None);
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
