//! The committed seed corpus (fuzz/corpus/<target>/seed-*): valid inputs for every target, so
//! a short fuzz run starts past the layout ids and framing instead of having to find them.
//!
//! Written and checked by the `seeds` example (`bash scripts/fuzz.sh --seeds` rewrites them).

use std::path::{Path, PathBuf};

use churnguard::decision::Decision;
use churnguard::engine::{Change, ClockState, Engine, PendingOutcome, UserRecord, NO_DUE};
use churnguard::event::ActivityEvent;
use churnguard::policy::Memory;
use churnguard::state::codec::{decode_clock, decode_user, encode_clock, encode_user, Shape};
use churnguard::time::{DAY_MS, HOUR_MS};

use super::*;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

/// Valid events (the parser's own test inputs) and a few near misses.
const EVENTS: &[&str] = &[
    r#"{"user_id":"u1","event_type":"purchase","ts":"2026-01-01T00:00:01.500Z","amount":9.5,"properties":{"sku":[1,2]},"extra":true}"#,
    r#"{"ts":1767225601500,"event_type":"login","user_id":"u\u00e9"}"#,
    r#"{"user_id":"u","event_type":"purchase","ts":1767225601500,"amount":-12.5}"#,
    r#"{"user_id":"u","event_type":"purchase","ts":1767225601500,"amount":1e400}"#,
    r#"{"user_id":"u","event_type":"purchase","ts":1767225601500,"amount":"NaN"}"#,
    r#"{"user_id":"u","event_type":"login","ts":"1969-12-31T23:59:59Z"}"#,
    r#"{"user_id":"u","event_type":"login","ts":"2026-03-01T10:05:00+05:30"}"#,
    r#"{"user_id":null,"event_type":"login","ts":1.5e12}"#,
    r#"[1,{"user_id":"u"}]"#,
];

/// Events for six users over a month, with a silence long enough to evict some of them: the
/// engine makes decisions, opens and closes outcomes, and writes deletions.
fn events() -> Vec<(String, &'static str, i64, Option<f64>)> {
    let mut out = Vec::new();
    for day in 0..30i64 {
        for u in 0..6i64 {
            if (day + u) % (u + 2) == 0 {
                let purchase = (day * 7 + u) % 5 == 0;
                let ts = T0 + day * DAY_MS + u * HOUR_MS;
                out.push((
                    format!("u{u}"),
                    if purchase { "purchase" } else { "login" },
                    ts,
                    purchase.then_some(10.0 + u as f64),
                ));
            }
        }
    }
    // Users 0 and 1 come back after 50 days; the others are evicted by then (TTL 40 days).
    for u in 0..2 {
        out.push((format!("u{u}"), "login", T0 + 80 * DAY_MS + u * HOUR_MS, None));
    }
    out
}

/// Run the events through an engine of `variant`, recording every change as a restore frame.
fn run(variant: u8) -> (Engine, Vec<Vec<u8>>, Vec<UserRecord>) {
    let mut e = engine(variant);
    e.track_changes(true);
    let shape = Shape::of(e.store().layout());
    let mut frames = Vec::new();
    let mut records = Vec::new();
    let mut sink = |_: &Decision<'_>| {};
    for (i, (user, event_type, ts, amount)) in events().into_iter().enumerate() {
        let ev = ActivityEvent { user_id: user.as_str().into(), event_type: event_type.into(), ts, amount };
        e.ingest_decisions(&ev, &mut sink);
        if i % 25 == 24 {
            e.drain_changes(|c| {
                let mut f = Vec::new();
                match c {
                    Change::Put(u) => {
                        let mut v = Vec::new();
                        encode_user(&mut v, &shape, &u);
                        put_frame(&mut f, &Frame::User { key: u.user_id.as_bytes(), value: &v });
                        records.push(UserRecord {
                            user_id: u.user_id.into(),
                            narrow: u.narrow.into(),
                            wide: u.wide.into(),
                            next_due: u.next_due,
                            memory: u.memory,
                            outcome: u.outcome,
                        });
                    }
                    Change::Delete(id) => put_frame(&mut f, &Frame::Delete { key: id.as_bytes() }),
                }
                frames.push(f);
            });
        }
    }
    (e, frames, records)
}

fn user_input(selector: u8, shape: &Shape, r: &UserRecord) -> Vec<u8> {
    let mut out = vec![selector, r.user_id.len() as u8];
    out.extend_from_slice(r.user_id.as_bytes());
    encode_user(&mut out, shape, &r.view());
    out
}

fn clock_input(selector: u8, shape: &Shape, c: &ClockState, offset: i64) -> Vec<u8> {
    let mut out = vec![selector];
    encode_clock(&mut out, shape, c, offset);
    out
}

/// Every seed, by target: (target, file name, bytes).
fn all_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (i, ev) in EVENTS.iter().enumerate() {
        seeds.push(("parse_event", format!("seed-{i:02}"), ev.as_bytes().to_vec()));
    }

    // Records of the hand-made and empty shapes, like the codec's own tests.
    let t0 = T0 as u64;
    let mut narrow = vec![0u32; 40];
    narrow[3] = 2;
    narrow[4] = 950;
    narrow[20] = 7;
    let hand = UserRecord {
        user_id: "u".into(),
        narrow,
        wide: vec![t0, t0 + DAY_MS as u64, 950, i64::MIN as u64, t0 + 5_000, i64::MIN as u64, t0],
        next_due: T0 + 2 * DAY_MS,
        memory: Memory { last_sent: T0 + DAY_MS, last_rank: 1 },
        outcome: PendingOutcome { due: T0 + 6 * DAY_MS, decided: T0 + DAY_MS, cell: 1, retained: true, spend: 12.5 },
    };
    seeds.push(("decode_user", "seed-hand".into(), user_input(0, &HAND_SHAPE, &hand)));
    let empty = UserRecord { user_id: "e\u{e9}".into(), next_due: NO_DUE, ..Default::default() };
    seeds.push(("decode_user", "seed-empty".into(), user_input(3, &EMPTY_SHAPE, &empty)));
    let clock = ClockState {
        max_ts: T0 + 3 * DAY_MS,
        watermark: T0 + 2 * DAY_MS,
        warm_until: T0,
        timer_base: 980_000,
        outcome_base: 98_000,
        outcome_keys: vec![(false, "high".into(), "discount".into()), (true, "medium".into(), "email".into())],
    };
    seeds.push(("decode_clock", "seed-hand".into(), clock_input(0, &HAND_SHAPE, &clock, 42)));
    seeds.push(("decode_clock", "seed-empty".into(), clock_input(3, &EMPTY_SHAPE, &ClockState::default(), 0)));

    // Engine-written records: the small spec (selector 2) and the default one (selector 1), and
    // whole restores for a few engine variants.
    for variant in [0u8, 1, 2, 5] {
        let (e, frames, records) = run(variant);
        let shape = Shape::of(e.store().layout());
        let selector = if variant & 1 == 0 { 2 } else { 1 };
        let spec = if variant & 1 == 0 { "small" } else { "default" };
        if variant < 2 {
            // A user with an open outcome, one without, and the last one written.
            let open = records.iter().rev().find(|r| r.outcome.due != NO_DUE);
            let closed = records.iter().find(|r| r.outcome.due == NO_DUE);
            for (name, r) in [("open", open), ("closed", closed), ("last", records.last())] {
                if let Some(r) = r {
                    seeds.push(("decode_user", format!("seed-{spec}-{name}"), user_input(selector, &shape, r)));
                }
            }
            seeds.push(("decode_clock", format!("seed-{spec}"), clock_input(selector, &shape, &e.clock_state(), 4321)));
        }
        let mut input = vec![variant];
        // The last 12 frames keep the seed small; a deletion of a user not restored is valid.
        for f in frames.iter().skip(frames.len().saturating_sub(12)) {
            input.extend_from_slice(f);
        }
        let mut clock = Vec::new();
        encode_clock(&mut clock, &shape, &e.clock_state(), 1000);
        put_frame(&mut input, &Frame::Clock { value: &clock });
        for (i, op) in [
            Op::Event { kind: 0, user: 0, offset: 3 },
            Op::Event { kind: 1, user: 1, offset: -2 },
            Op::Event { kind: 2, user: 200, offset: 6 },
            Op::Advance { hours: 30 },
            Op::Event { kind: 0, user: 2, offset: 300 },
            Op::Advance { hours: 24 * 45 },
            Op::Event { kind: 1, user: 0, offset: 1 },
        ]
        .into_iter()
        .enumerate()
        {
            if variant != 5 || i < 4 {
                put_op(&mut input, op);
            }
        }
        seeds.push(("restore", format!("seed-v{variant}"), input));
    }
    // A restore of nothing but an empty clock, then events into the fresh engine.
    let shape = shape(2);
    let mut input = vec![4u8];
    let mut clock = Vec::new();
    encode_clock(&mut clock, &shape, &ClockState::default(), 0);
    put_frame(&mut input, &Frame::Clock { value: &clock });
    for op in [Op::Event { kind: 0, user: 130, offset: 0 }, Op::Advance { hours: 100 }] {
        put_op(&mut input, op);
    }
    seeds.push(("restore", "seed-empty".into(), input));

    // Users given field by field (see user_from_fields) and a clock derived from them.
    let hours = |h: i16| {
        let [lo, hi] = h.to_le_bytes();
        [3, lo, hi]
    };
    let mut input = vec![0u8];
    for (u, back) in [("f1", 2i16), ("f2", 30)] {
        let mut fields = vec![3u8, 5, 2, 0, 0, 0, 10, 1, 0, 0, 0, 200, 7, 0, 0, 0];
        fields.extend_from_slice(&hours(-48 - back)); // first event
        fields.extend_from_slice(&hours(-back)); // last event
        fields.push(2); // lifetime amount: raw, 12.50 in cents
        fields.extend_from_slice(&1250i64.to_le_bytes());
        fields.push(0); // returned_at: never
        fields.extend_from_slice(&hours(-back)); // last login
        fields.push(0); // last purchase: never
        fields.extend_from_slice(&hours(10)); // next due
        fields.extend_from_slice(&[0, 255]); // memory: nothing sent
        fields.push(1); // an open outcome
        fields.extend_from_slice(&hours(50));
        fields.extend_from_slice(&hours(-70));
        fields.extend_from_slice(&[1, 0, 8, 0]);
        put_frame(&mut input, &Frame::UserFields { key: u.as_bytes(), fields: &fields });
    }
    // Watermark 6 h behind, 2 outcome keys, no warm-up, both wheels starting a bucket back.
    put_frame(&mut input, &Frame::ClockFields { fields: &[0, 2, 0, 1, 0xff, 0xff, 1, 0xff, 0xff] });
    for op in [
        Op::Event { kind: 1, user: 0, offset: 1 },
        Op::Advance { hours: 60 },
        Op::Event { kind: 0, user: 1, offset: 3 },
    ] {
        put_op(&mut input, op);
    }
    seeds.push(("restore", "seed-fields".into(), input));
    seeds
}

/// Write every seed (fuzz/corpus/<target>/seed-*).
pub fn write_all() -> std::io::Result<usize> {
    let seeds = all_seeds();
    for (target, name, bytes) in &seeds {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(seeds.len())
}

/// Does a restore input restore (every record and the clock accepted)?
fn restores(data: &[u8]) -> bool {
    let mut input = Input::new(data);
    let mut e = engine(input.byte());
    let shape = Shape::of(e.store().layout());
    let mut rec = UserRecord::default();
    while let Some(frame) = next_frame(&mut input) {
        match frame {
            Frame::User { key, value } => {
                if decode_user(key, value, &shape, &mut rec).is_err() || e.restore_user(&rec.view()).is_err() {
                    return false;
                }
            }
            Frame::UserFields { key, fields } => {
                let Ok(id) = std::str::from_utf8(key) else { return false };
                user_from_fields(id, fields, &shape, &mut rec);
                if e.restore_user(&rec.view()).is_err() {
                    return false;
                }
            }
            Frame::Delete { key } => {
                if let Ok(id) = std::str::from_utf8(key) {
                    e.restore_delete(id);
                }
            }
            Frame::Clock { value } => {
                return decode_clock(value, &shape).is_ok_and(|(c, _)| e.restore_clock(&c).is_ok());
            }
            Frame::ClockFields { fields } => return e.restore_clock(&clock_from_fields(fields, &e)).is_ok(),
        }
    }
    false
}

/// Check the committed seeds: each is what [`write_all`] writes now, and each decodes or
/// restores (a change of the codec or of the default feature spec makes them stale, and a
/// fuzzer that starts from stale seeds has to find the layout ids again). Returns the problems.
pub fn check_all() -> Vec<String> {
    let mut problems = Vec::new();
    for (target, name, bytes) in all_seeds() {
        let path = corpus(target).join(&name);
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            problems.push(format!("{} is missing or stale", path.display()));
        }
        let mut input = Input::new(&bytes);
        let ok = match target {
            "decode_user" => {
                let shape = shape(input.byte());
                let n = input.byte();
                let key = input.take(n.into());
                decode_user(key, input.rest(), &shape, &mut UserRecord::default()).is_ok()
            }
            "decode_clock" => {
                let shape = shape(input.byte());
                decode_clock(input.rest(), &shape).is_ok()
            }
            "restore" => restores(&bytes),
            _ => true,
        };
        if !ok {
            problems.push(format!("{target}/{name} does not decode or restore"));
        }
    }
    problems
}
