//! What the engine decides, as a typed value that borrows from the engine: no string is built
//! and nothing is allocated to make one. Encoding it as a record is the sink's job:
//! [`Decision::write_json`] writes the `churnguard.intervention.v1` JSON straight into a
//! reusable buffer, byte for byte what serialising [`Intervention`] gives.

use sha2::{Digest, Sha256};

use crate::intervention::{Intervention, ReasonRecord, Trigger, SCHEMA};
use crate::policy::Stage;
use crate::time::{format_rfc3339_ms, write_rfc3339_ms, Millis, DAY_MS};

/// One of a decision's top reasons: a feature by index, its raw value and its contribution to
/// the log-odds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReasonRef {
    pub feature: usize,
    pub value: f64,
    pub contribution: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct Decision<'a> {
    pub user_id: &'a str,
    pub score: f64,
    /// The threshold of the tier the score crossed.
    pub threshold: f64,
    pub tier: &'a str,
    pub stage: Stage,
    pub action: &'a str,
    /// Strongest first.
    pub reasons: &'a [ReasonRef],
    /// Names of the features `reasons` index into.
    pub feature_names: &'a [String],
    pub model_version: &'a str,
    /// The event time the decision describes.
    pub at: Millis,
    /// The engine's watermark when it decided.
    pub watermark: Millis,
    pub trigger: Trigger,
    /// The control record: the user would have been contacted but is held back.
    pub control: bool,
}

impl Decision<'_> {
    /// Deterministic from user, tier and decision day: a consumer deduplicates on it.
    pub fn intervention_id(&self) -> u64 {
        id_hash(self.user_id, self.tier, self.at)
    }

    /// The owned record, for file sinks and tests.
    pub fn to_intervention(&self, emitted_at: Millis) -> Intervention {
        Intervention {
            schema: SCHEMA.to_string(),
            intervention_id: format!("{:016x}", self.intervention_id()),
            user_id: self.user_id.to_string(),
            score: self.score,
            threshold: self.threshold,
            tier: self.tier.to_string(),
            stage: self.stage,
            action: self.action.to_string(),
            reasons: self
                .reasons
                .iter()
                .map(|r| ReasonRecord {
                    feature: self.feature_names.get(r.feature).cloned().unwrap_or_default(),
                    value: r.value,
                    contribution: r.contribution,
                })
                .collect(),
            model_version: self.model_version.to_string(),
            event_time: format_rfc3339_ms(self.at),
            watermark: format_rfc3339_ms(self.watermark.max(0)),
            trigger: self.trigger,
            emitted_at: format_rfc3339_ms(emitted_at),
            control: self.control,
        }
    }

    /// Append the record's JSON (no trailing newline) to `out`.
    pub fn write_json(&self, emitted_at: Millis, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"schema\":");
        write_str(out, SCHEMA);
        out.extend_from_slice(b",\"intervention_id\":\"");
        write_hex16(out, self.intervention_id());
        out.extend_from_slice(b"\",\"user_id\":");
        write_str(out, self.user_id);
        out.extend_from_slice(b",\"score\":");
        write_f64(out, self.score);
        out.extend_from_slice(b",\"threshold\":");
        write_f64(out, self.threshold);
        out.extend_from_slice(b",\"tier\":");
        write_str(out, self.tier);
        out.extend_from_slice(b",\"stage\":\"");
        out.extend_from_slice(self.stage.as_str().as_bytes());
        out.extend_from_slice(b"\",\"action\":");
        write_str(out, self.action);
        out.extend_from_slice(b",\"reasons\":[");
        for (i, r) in self.reasons.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"feature\":");
            write_str(out, self.feature_names.get(r.feature).map_or("", String::as_str));
            out.extend_from_slice(b",\"value\":");
            write_f64(out, r.value);
            out.extend_from_slice(b",\"contribution\":");
            write_f64(out, r.contribution);
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"model_version\":");
        write_str(out, self.model_version);
        out.extend_from_slice(b",\"event_time\":\"");
        write_rfc3339_ms(out, self.at);
        out.extend_from_slice(b"\",\"watermark\":\"");
        write_rfc3339_ms(out, self.watermark.max(0));
        out.extend_from_slice(b"\",\"trigger\":\"");
        out.extend_from_slice(match self.trigger {
            Trigger::Event => b"event",
            Trigger::Silence => b"silence",
        });
        out.extend_from_slice(b"\",\"emitted_at\":\"");
        write_rfc3339_ms(out, emitted_at);
        out.extend_from_slice(b"\",\"control\":");
        out.extend_from_slice(if self.control { b"true" } else { b"false" });
        out.push(b'}');
    }
}

/// SHA-256 over "intervention-v1", 0x1f, user, 0x1f, tier, 0x1f, decision day: the same value as
/// `hash::stable_u64("intervention-v1", "{user}\u{1f}{tier}\u{1f}{day}")`, without building the key.
fn id_hash(user_id: &str, tier: &str, at: Millis) -> u64 {
    let mut h = Sha256::new();
    h.update(b"intervention-v1\x1f");
    h.update(user_id.as_bytes());
    h.update([0x1f]);
    h.update(tier.as_bytes());
    h.update([0x1f]);
    let mut day = itoa::Buffer::new();
    h.update(day.format(at.div_euclid(DAY_MS)).as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

fn write_hex16(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.push(HEX[((v >> (shift * 4)) & 0xf) as usize]);
    }
}

/// Exactly as serde_json writes an f64 (its own float format, `null` when not finite), straight
/// into the buffer.
fn write_f64(out: &mut Vec<u8>, v: f64) {
    if serde_json::to_writer(&mut *out, &v).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// A JSON string with serde_json's escapes.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(esc);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stage() -> impl Strategy<Value = Stage> {
        proptest::sample::select(Stage::ALL.to_vec())
    }

    proptest! {
        /// The hand-written encoder writes exactly what serde_json writes for the owned record.
        #[test]
        fn json_equals_serde_of_the_owned_record(
            user in "\\PC{0,12}|[\\x00-\\x1f\"\\\\a-z]{0,8}",
            tier in "[a-z\"]{1,6}",
            action in "\\PC{0,8}",
            score in proptest::num::f64::ANY,
            threshold in 0.0f64..1.0,
            stage in stage(),
            reasons in proptest::collection::vec((0usize..4, proptest::num::f64::NORMAL, -5.0f64..5.0), 0..4),
            at in -1_000_000_000_000i64..4_000_000_000_000,
            watermark in -1_000_000_000_000i64..4_000_000_000_000,
            silence in any::<bool>(),
            control in any::<bool>(),
            emitted_at in 0i64..4_000_000_000_000,
        ) {
            let names: Vec<String> = vec!["recency".into(), "count.login.7d".into(), "we\"ird\n".into(), "tenure".into()];
            let reasons: Vec<ReasonRef> =
                reasons.into_iter().map(|(feature, value, contribution)| ReasonRef { feature, value, contribution }).collect();
            let d = Decision {
                user_id: &user,
                score,
                threshold,
                tier: &tier,
                stage,
                action: &action,
                reasons: &reasons,
                feature_names: &names,
                model_version: "m-1",
                at,
                watermark,
                trigger: if silence { Trigger::Silence } else { Trigger::Event },
                control,
            };
            let mut ours = Vec::new();
            d.write_json(emitted_at, &mut ours);
            let theirs = serde_json::to_vec(&d.to_intervention(emitted_at)).expect("serialisable");
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        }
    }

    #[test]
    fn the_id_is_the_one_intervention_id_gives() {
        for (u, t, at) in [("u1", "high", 0i64), ("ü\u{1f}x", "medium", 1_767_225_600_123), ("", "t", -5)] {
            assert_eq!(format!("{:016x}", id_hash(u, t, at)), crate::intervention::intervention_id(u, t, at));
        }
    }
}
