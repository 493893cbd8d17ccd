//! Restoring an engine from untrusted records, then running it: decode a sequence of user
//! records and deletions and a clock record, restore them into a fresh engine, and if the
//! restore is accepted push events and watermark moves through it. Nothing may panic, no
//! allocation may grow without bound (libFuzzer's -rss_limit_mb/-malloc_limit_mb catch that),
//! and every state the engine then holds must encode and decode as itself.
//!
//! Input (see churnguard_fuzz::next_frame and next_op): an engine variant byte, frames (user
//! records, deletions, users given field by field, then a clock record or a clock derived from
//! the users), then 4-byte ops.
#![no_main]

use churnguard::decision::Decision;
use churnguard::engine::{Change, UserRecord};
use churnguard::state::codec::{decode_clock, decode_user, encode_clock, encode_user, Shape};
use churnguard_fuzz::{
    advance_to, clock_from_fields, engine, event, next_frame, next_op, same_record, user_from_fields, Frame, Input, Op,
};
use libfuzzer_sys::fuzz_target;

/// Ops per input: enough for timers to fire and outcomes to close, few enough to keep runs fast.
const MAX_OPS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut e = engine(input.byte());
    let shape = Shape::of(e.store().layout());
    let mut rec = UserRecord::default();
    let mut ids: Vec<String> = Vec::new();
    let mut built = UserRecord::default();
    let mut value = Vec::new();
    let mut clock = None;
    while let Some(frame) = next_frame(&mut input) {
        let (key, value) = match frame {
            Frame::User { key, value } => (key, value),
            Frame::UserFields { key, fields } => {
                // Built field by field, then encoded: the restore still goes through the codec.
                let Ok(id) = std::str::from_utf8(key) else { return };
                user_from_fields(id, fields, &shape, &mut built);
                value.clear();
                encode_user(&mut value, &shape, &built.view());
                (key, &value[..])
            }
            Frame::Delete { key } => {
                if let Ok(id) = std::str::from_utf8(key) {
                    e.restore_delete(id);
                }
                continue;
            }
            Frame::Clock { value } => {
                clock = Some(value.to_vec());
                break;
            }
            Frame::ClockFields { fields } => {
                let mut v = Vec::new();
                encode_clock(&mut v, &shape, &clock_from_fields(fields, &e), 0);
                clock = Some(v);
                break;
            }
        };
        // A record that does not decode or restore stops the restore, as it would in the
        // service: the state is then rebuilt from the input topic instead.
        if decode_user(key, value, &shape, &mut rec).is_err() || e.restore_user(&rec.view()).is_err() {
            return;
        }
        if ids.len() < 128 {
            ids.push(rec.user_id.clone());
        }
    }
    let Some(Ok((c, _))) = clock.map(|v| decode_clock(&v, &shape)) else {
        return;
    };
    if e.restore_clock(&c).is_err() {
        return;
    }

    e.track_changes(true);
    let mut decisions = 0usize;
    let mut sink = |_: &Decision<'_>| decisions += 1;
    let mut user = String::new();
    for _ in 0..MAX_OPS {
        let Some(op) = next_op(&mut input) else { break };
        match op {
            Op::Event { kind, user: u, offset } => {
                user.clear();
                match ids.get(usize::from(u)) {
                    Some(id) if u < 128 => user.push_str(id),
                    _ => user.push_str(&format!("n{}", u % 16)),
                }
                let ev = event(kind, &user, offset, e.max_ts());
                e.ingest_decisions(&ev, &mut sink);
            }
            Op::Advance { hours } => {
                let to = advance_to(e.watermark(), e.max_ts(), hours);
                e.advance_watermark_decisions(to, &mut sink);
            }
        }
    }

    // What the engine holds now is what a changelog would write: it must read back as itself.
    let mut buf = Vec::new();
    let mut back = UserRecord::default();
    let mut check = |u: &churnguard::engine::UserView<'_>| {
        buf.clear();
        encode_user(&mut buf, &shape, u);
        let rec = UserRecord {
            user_id: u.user_id.to_string(),
            narrow: u.narrow.to_vec(),
            wide: u.wide.to_vec(),
            next_due: u.next_due,
            memory: u.memory,
            outcome: u.outcome,
        };
        if let Err(err) = decode_user(u.user_id.as_bytes(), &buf, &shape, &mut back) {
            panic!("the engine's state of a user does not decode: {err}\n{rec:?}");
        }
        assert!(same_record(&rec, &back), "{rec:?} != {back:?}");
    };
    e.drain_changes(|ch| {
        if let Change::Put(u) = ch {
            check(&u)
        }
    });
    e.for_each_user(|u| check(&u));
    let clock = e.clock_state();
    let mut cbuf = Vec::new();
    encode_clock(&mut cbuf, &shape, &clock, 7);
    assert_eq!(decode_clock(&cbuf, &shape), Ok((clock, 7)));
});
