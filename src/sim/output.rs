//! Output: the wire form of events (JSON lines) and user ids, the ground-truth CSV, and the
//! compact record the generator holds millions of.

use std::io::Write;

use super::{EventKind, SimError, SimEvent, TruthRow};
use crate::time::write_rfc3339_ms;

/// Appends `u` followed by `id` zero-padded to at least seven digits.
pub fn write_user_id(out: &mut Vec<u8>, id: u64) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(id).as_bytes();
    out.push(b'u');
    for _ in digits.len()..7 {
        out.push(b'0');
    }
    out.extend_from_slice(digits);
}

/// The wire form of a user id, e.g. `u0000042`.
pub fn user_id_string(id: u64) -> String {
    let mut v = Vec::with_capacity(12);
    write_user_id(&mut v, id);
    String::from_utf8_lossy(&v).into_owned()
}

/// Serialises one event as a JSON line (with trailing '\n') into `out` without allocating:
/// `{"user_id":"u0000042","event_type":"purchase","ts":"2026-01-03T10:11:12.345Z","amount":12.5}`.
/// A non-finite amount is omitted, since JSON cannot carry it.
pub fn write_event_json(out: &mut Vec<u8>, ev: &SimEvent) {
    out.extend_from_slice(b"{\"user_id\":\"");
    write_user_id(out, ev.user_id);
    out.extend_from_slice(b"\",\"event_type\":\"");
    out.extend_from_slice(ev.event_type.as_str().as_bytes());
    out.extend_from_slice(b"\",\"ts\":\"");
    write_rfc3339_ms(out, ev.ts);
    out.push(b'"');
    if let Some(a) = ev.amount.filter(|a| a.is_finite()) {
        out.extend_from_slice(b",\"amount\":");
        out.extend_from_slice(ryu::Buffer::new().format_finite(a).as_bytes());
    }
    out.extend_from_slice(b"}\n");
}

/// Writes the ground truth as CSV with a header row.
pub fn write_truth_csv<T: Write>(out: &mut T, rows: &[TruthRow]) -> Result<(), SimError> {
    let mut buf = Vec::with_capacity(1 << 16);
    buf.extend_from_slice(b"user_id,signup_ts,churn_ts,reactivated_ts,segment\n");
    for row in rows {
        buf.extend_from_slice(row.user_id.as_bytes());
        buf.push(b',');
        write_rfc3339_ms(&mut buf, row.signup_ts);
        for ts in [row.churn_ts, row.reactivated_ts] {
            buf.push(b',');
            if let Some(ts) = ts {
                write_rfc3339_ms(&mut buf, ts);
            }
        }
        buf.push(b',');
        buf.extend_from_slice(row.segment.as_bytes());
        buf.push(b'\n');
        if buf.len() >= 1 << 16 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}

/// Compact event record: millions of these are held and sorted, so 16 bytes each.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rec {
    pub(super) ts: i64,
    /// `user_index << 3 | kind`; sorting on it breaks ts ties deterministically.
    pub(super) user_kind: u32,
    /// Whole cents; 0 means no amount. Cents, not f32 dollars, so `12.34` stays `12.34`.
    pub(super) cents: u32,
}

impl Rec {
    pub(super) fn event(&self) -> SimEvent {
        SimEvent {
            user_id: u64::from(self.user_kind >> 3) + 1,
            event_type: EventKind::from_code(self.user_kind),
            ts: self.ts,
            amount: (self.cents > 0).then(|| f64::from(self.cents) / 100.0),
        }
    }
}
