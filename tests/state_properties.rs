//! An engine restored from its changelog records decides exactly what the engine that wrote
//! them would have decided, on any stream: the records written at random flush points
//! (deletions included), decoded into a fresh engine, give the same later decisions and the
//! same final state as an uninterrupted run.

use churnguard::decision::Decision;
use churnguard::engine::{Change, Engine, UserRecord, NO_DUE};
use churnguard::event::parse_event;
use churnguard::state::changelog::{Flush, ReplayError, Replayer};
use churnguard::state::codec::{self, Kind, Shape};
use churnguard::time::HOUR_MS;
use proptest::prelude::*;

#[path = "common/small_engine.rs"]
mod small_engine;
use small_engine::{engine, T0};

#[derive(Debug, Clone)]
enum Step {
    Event { u: u8, purchase: bool, gap_hours: u32, back_hours: u8 },
    Jump { hours: u32 },
    Flush,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..20, any::<bool>(), prop_oneof![3 => 0u32..20, 1 => 0u32..(30 * 24)], 0u8..8)
            .prop_map(|(u, purchase, gap_hours, back_hours)| Step::Event { u, purchase, gap_hours, back_hours }),
        1 => (1u32..(20 * 24)).prop_map(|hours| Step::Jump { hours }),
        1 => Just(Step::Flush),
    ]
}

/// Changelog records in write order: a user's encoded state, or `None` for a deletion.
type Log = Vec<(String, Option<Vec<u8>>)>;

/// A decision as comparable data.
fn key(d: &Decision<'_>) -> String {
    format!("{} {} {} {} {} {:?} {}", d.user_id, d.at, d.tier, d.action, d.control, d.trigger, d.score.to_bits())
}

/// Run `steps` from `newest`; returns the decisions, each prefixed by its step, and the newest
/// event time.
fn run(e: &mut Engine, steps: &[Step], mut newest: i64, log: &mut Option<&mut Log>) -> (Vec<String>, i64) {
    let shape = Shape::of(e.store().layout());
    let mut out = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        match s {
            Step::Event { u, purchase, gap_hours, back_hours } => {
                newest += i64::from(*gap_hours) * HOUR_MS;
                let ts = newest - i64::from(*back_hours) * HOUR_MS;
                let t = if *purchase { r#""purchase","amount":12.5"# } else { r#""login""# };
                let line = format!(r#"{{"user_id":"u{u}","event_type":{t},"ts":{ts}}}"#);
                let ev = parse_event(line.as_bytes(), 4096).expect("valid event");
                e.ingest_decisions(&ev, &mut |d| out.push(format!("{i}: {}", key(d))));
            }
            Step::Jump { hours } => {
                let to = e.watermark().max(T0) + i64::from(*hours) * HOUR_MS;
                newest = newest.max(to);
                e.advance_watermark_decisions(to, &mut |d| out.push(format!("{i}: {}", key(d))));
            }
            Step::Flush => {
                if let Some(log) = log.as_deref_mut() {
                    e.drain_changes(|c| match c {
                        Change::Put(u) => {
                            let mut v = Vec::new();
                            codec::encode_user(&mut v, &shape, &u);
                            log.push((u.user_id.to_string(), Some(v)));
                        }
                        Change::Delete(id) => log.push((id.to_string(), None)),
                    });
                }
            }
        }
    }
    (out, newest)
}

fn restore(log: &Log, clock: &[u8]) -> Engine {
    let mut e = engine();
    let shape = Shape::of(e.store().layout());
    let mut rec = UserRecord::default();
    for (k, v) in log {
        match v {
            Some(v) => {
                assert_eq!(codec::kind_of(v), Ok(Kind::User));
                codec::decode_user(k.as_bytes(), v, &shape, &mut rec).expect("decodes");
                e.restore_user(&rec.view()).expect("restores");
            }
            None => e.restore_delete(k),
        }
    }
    let (c, _) = codec::decode_clock(clock, &shape).expect("clock decodes");
    e.restore_clock(&c).expect("clock restores");
    e
}

/// Every user's state, with open outcomes naming their (group, tier, action) rather than the
/// engine's index for it: engines number keys in the order they first decide them. An outcome
/// whose horizon the watermark has passed is final (no later event can change it), and whether
/// it has been counted yet depends only on which timer bucket it waits in: it reads as closed.
fn states(e: &Engine) -> Vec<String> {
    let keys = e.clock_state().outcome_keys;
    let watermark = e.watermark();
    let mut all = Vec::new();
    e.for_each_user(|u| {
        let mut o = u.outcome;
        if o.due != NO_DUE && o.due <= watermark {
            o = churnguard::engine::NO_OUTCOME;
        }
        let key = (o.due != NO_DUE).then(|| keys.get(o.cell as usize).cloned());
        all.push(format!(
            "{} {:?} {:?} {} {:?} {} {} {} {} {:?}",
            u.user_id,
            u.narrow,
            u.wide,
            u.next_due,
            u.memory,
            o.due,
            o.decided,
            o.retained,
            o.spend.to_bits(),
            key
        ));
    });
    all.sort();
    all
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn a_restored_engine_decides_as_the_live_one(
        steps in proptest::collection::vec(step(), 1..300),
        split in any::<prop::sample::Index>(),
    ) {
        let split = split.index(steps.len() + 1);
        let (head, tail) = steps.split_at(split);

        let mut live = engine();
        let (before, newest) = run(&mut live, head, T0, &mut None);
        let (after, _) = run(&mut live, tail, newest, &mut None);

        let mut writer = engine();
        writer.track_changes(true);
        let mut log = Vec::new();
        let (written, newest_w) = run(&mut writer, head, T0, &mut Some(&mut log));
        prop_assert_eq!(&written, &before, "change tracking must not change decisions");
        run(&mut writer, &[Step::Flush], newest_w, &mut Some(&mut log));
        let shape = Shape::of(writer.store().layout());
        let mut clock = Vec::new();
        codec::encode_clock(&mut clock, &shape, &writer.clock_state(), split as i64);

        let mut restored = restore(&log, &clock);
        prop_assert_eq!(states(&restored), states(&writer));
        prop_assert_eq!(restored.clock_state(), writer.clock_state());
        prop_assert_eq!(restored.population(), restored.population_by_scan());
        let (mut after_restore, _) = run(&mut restored, tail, newest, &mut None);
        // Users due at the same watermark are decided in index order, which a restore renumbers:
        // the same decisions at each step, in any order.
        let mut after = after;
        after.sort();
        after_restore.sort();
        prop_assert_eq!(after_restore, after);
        prop_assert_eq!(states(&restored), states(&live));
    }
}

/// Changelog records as sent: key, and value (`None`: a tombstone).
type Records = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A step with its times fixed, so every engine runs the very same input.
#[derive(Debug, Clone)]
enum Action {
    Event { user: String, line: String, ts: i64 },
    Jump { to: i64 },
    Flush,
}

fn actions(steps: &[Step]) -> Vec<Action> {
    let mut newest = T0;
    let mut watermark = i64::MIN;
    steps
        .iter()
        .map(|s| match s {
            Step::Event { u, purchase, gap_hours, back_hours } => {
                newest += i64::from(*gap_hours) * HOUR_MS;
                let ts = newest - i64::from(*back_hours) * HOUR_MS;
                watermark = watermark.max(newest - 6 * HOUR_MS);
                let t = if *purchase { r#""purchase","amount":12.5"# } else { r#""login""# };
                let line = format!(r#"{{"user_id":"u{u}","event_type":{t},"ts":{ts}}}"#);
                Action::Event { user: format!("u{u}"), line, ts }
            }
            Step::Jump { hours } => {
                let to = watermark.max(T0) + i64::from(*hours) * HOUR_MS;
                newest = newest.max(to);
                watermark = watermark.max(to);
                Action::Jump { to }
            }
            Step::Flush => Action::Flush,
        })
        .collect()
}

/// Run actions `from..` (offsets are action indices); returns each decision as
/// `(offset, user, text)`. Flushes are built, as the service does, only when the previous one
/// is complete; `records` receives them in log order.
fn play(
    e: &mut Engine,
    acts: &[Action],
    from: usize,
    skip: Option<&churnguard::state::changelog::Skip>,
    mut records: Option<&mut Records>,
) -> Vec<(usize, String, String)> {
    let shape = Shape::of(e.store().layout());
    let mut prev: Option<Vec<u8>> = None;
    let mut out = Vec::new();
    for (i, a) in acts.iter().enumerate().skip(from) {
        let mut emit = |d: &Decision<'_>| out.push((i, d.user_id.to_string(), key(d)));
        match a {
            Action::Event { user, line, ts } => {
                if skip.is_some_and(|s| s.applies(i as i64, user)) {
                    e.observe_time(*ts, &mut emit);
                } else {
                    let ev = parse_event(line.as_bytes(), 4096).expect("valid event");
                    e.ingest_decisions(&ev, &mut emit);
                }
            }
            Action::Jump { to } => e.advance_watermark_decisions(*to, &mut emit),
            Action::Flush => {
                if let Some(records) = records.as_deref_mut() {
                    let f = Flush::build(e, &shape, i as i64 + 1, prev.as_deref(), false);
                    for r in 0..f.len() {
                        let (k, v) = f.get(r);
                        records.push((k.to_vec(), v.map(<[u8]>::to_vec)));
                    }
                    prev = Some(f.clock_record().to_vec());
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// A writer dies at any record of its changelog, mid-flush included; a new owner restores
    /// what was written and reads the input from where the changelog says. It decides exactly
    /// what an uninterrupted run decides from there, except what the dead writer had already
    /// decided (and, at least once, delivered before its flush), and ends in the same state.
    #[test]
    fn a_changelog_cut_at_any_record_restores_to_the_uninterrupted_run(
        steps in proptest::collection::vec(step(), 1..200),
        cut in any::<prop::sample::Index>(),
    ) {
        let acts = actions(&steps);
        let mut live = engine();
        let all = play(&mut live, &acts, 0, None, None);

        let mut writer = engine();
        writer.track_changes(true);
        let mut records = Vec::new();
        play(&mut writer, &acts, 0, None, Some(&mut records));
        let cut = cut.index(records.len() + 1);

        let mut restored = engine();
        let mut r = Replayer::new(&mut restored);
        for (k, v) in &records[..cut] {
            r.apply(k, v.as_deref());
        }
        prop_assert_eq!(r.corrupt, 0);
        let (resume, skip) = match r.finish() {
            Ok(Some(done)) => (done.resume as usize, done.skip),
            // Nothing whole was written: the new owner rebuilds from the input.
            Ok(None) | Err(ReplayError::NoCompleteFlush) => {
                restored = engine();
                (0, None)
            }
            Err(e) => return Err(TestCaseError::fail(format!("{e}"))),
        };
        let mut got: Vec<(usize, String)> =
            play(&mut restored, &acts, resume, skip.as_ref(), None).into_iter().map(|(i, _, k)| (i, k)).collect();
        let mut want: Vec<(usize, String)> = all
            .into_iter()
            .filter(|(i, u, _)| *i >= resume && !skip.as_ref().is_some_and(|s| (*i as i64) < s.until && s.users.contains(u.as_str())))
            .map(|(i, _, k)| (i, k))
            .collect();
        got.sort();
        want.sort();
        prop_assert_eq!(got, want);
        prop_assert_eq!(states(&restored), states(&live));
    }
}

/// What a replay leaves: its counters, its result, and the engine's state.
fn replayed(
    e: &mut Engine,
    r: (u64, u64, u64),
    done: &Result<Option<churnguard::state::changelog::Restored>, ReplayError>,
) -> String {
    // The skip set's own order is random: compared sorted.
    let done = done.as_ref().map(|d| {
        d.as_ref().map(|d| {
            let mut skip: Option<(Vec<&str>, i64)> =
                d.skip.as_ref().map(|s| (s.users.iter().map(|u| &**u).collect(), s.until));
            if let Some((users, _)) = skip.as_mut() {
                users.sort_unstable();
            }
            format!("{} {:?} {:?} {}", d.resume, skip, d.clock_record, d.users)
        })
    });
    format!("{r:?} {done:?} {:?} {:?} {:?}", states(e), e.clock_state(), e.population())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// The pipelined replay (records decoded on a reader thread, in batches handed over at any
    /// points, applied on this one) restores exactly what applying each record in turn does,
    /// for a changelog cut at any record and with damaged records mixed in.
    #[test]
    fn a_pipelined_replay_restores_as_the_plain_one(
        steps in proptest::collection::vec(step(), 1..200),
        cut in any::<prop::sample::Index>(),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..5, any::<u8>()), 0..6),
        handovers in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let acts = actions(&steps);
        let mut writer = engine();
        writer.track_changes(true);
        let mut records = Vec::new();
        play(&mut writer, &acts, 0, None, Some(&mut records));
        let cut = cut.index(records.len() + 1);
        records.truncate(cut);
        for (at, how, byte) in damage {
            let i = at.index(records.len() + 1);
            let (k, v): (Vec<u8>, Option<Vec<u8>>) = match (how, records.get(i).cloned()) {
                (0, _) => (vec![0xc3, byte], Some(vec![byte; 3])),
                (1, Some((k, Some(mut v)))) if !v.is_empty() => { let j = usize::from(byte) % v.len(); v[j] ^= 0x5a; (k, Some(v)) }
                (2, Some((k, Some(mut v)))) if !v.is_empty() => { v.truncate(usize::from(byte) % v.len()); (k, Some(v)) }
                (3, Some((k, _))) => (k, None),
                _ => (format!("x{byte}").into_bytes(), Some(vec![1, b'U', byte])),
            };
            records.insert(i, (k, v));
        }
        let handovers: Vec<usize> = handovers.iter().map(|h| h.index(records.len() + 1)).collect();

        let mut plain = engine();
        let mut r = Replayer::new(&mut plain);
        for (k, v) in &records {
            r.apply(k, v.as_deref());
        }
        let counts = (r.users, r.corrupt, r.other_layout);
        let done = r.finish();
        let want = replayed(&mut plain, counts, &done);

        let mut piped = engine();
        let mut r = Replayer::new(&mut piped);
        let mut applied = 0;
        let read = churnguard::state::pipelined::replay(
            &mut r,
            |w: &mut churnguard::state::pipelined::BatchWriter| {
                for (i, (k, v)) in records.iter().enumerate() {
                    if handovers.contains(&i) {
                        w.flush()?;
                    }
                    w.push(k, v.as_deref())?;
                }
                Ok::<(), churnguard::state::pipelined::ApplierGone>(())
            },
            |n| applied += n,
        );
        prop_assert!(read.is_ok());
        prop_assert_eq!(applied, records.len() as u64);
        let counts = (r.users, r.corrupt, r.other_layout);
        let done = r.finish();
        prop_assert_eq!(replayed(&mut piped, counts, &done), want);
    }
}

/// A flush's records as a set: key and value, in key order (a flush's order is free).
fn sorted(f: &Flush) -> Records {
    let mut r: Records = (0..f.len()).map(|i| f.get(i)).map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
    r.sort();
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    /// The service encodes a flush a few users at a time while its engine goes on with events,
    /// evictions and outcome closes. Whatever happens in between, the flush holds exactly the
    /// records of one built all at once where it began, and the engine decides as one that never
    /// flushes.
    #[test]
    fn a_flush_encoded_a_few_users_at_a_time_holds_the_state_where_it_began(
        steps in proptest::collection::vec(step(), 1..200),
        chunks in proptest::collection::vec(0usize..4, 1..50),
    ) {
        let acts = actions(&steps);
        let (mut at_once, mut spread, mut plain) = (engine(), engine(), engine());
        at_once.track_changes(true);
        spread.track_changes(true);
        let shape = Shape::of(at_once.store().layout());
        let (mut prev_a, mut prev_s): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
        let mut open: Option<(Flush, Records)> = None;
        let mut chunk = chunks.iter().cycle();
        let (mut out_a, mut out_s, mut out_p) = (Vec::new(), Vec::new(), Vec::new());
        let mut compared = 0;
        for (i, a) in acts.iter().enumerate() {
            if let Some((f, want)) = open.as_mut() {
                if f.extend(&mut spread, &shape, *chunk.next().unwrap_or(&1)) {
                    prop_assert_eq!(&sorted(f), want);
                    prev_s = Some(f.clock_record().to_vec());
                    compared += 1;
                    open = None;
                }
            }
            for (e, out) in [(&mut at_once, &mut out_a), (&mut spread, &mut out_s), (&mut plain, &mut out_p)] {
                let mut emit = |d: &Decision<'_>| out.push(key(d));
                match a {
                    Action::Event { line, .. } => {
                        let ev = parse_event(line.as_bytes(), 4096).expect("valid event");
                        e.ingest_decisions(&ev, &mut emit);
                    }
                    Action::Jump { to } => e.advance_watermark_decisions(*to, &mut emit),
                    Action::Flush => {}
                }
            }
            if matches!(a, Action::Flush) {
                if let Some((mut f, want)) = open.take() {
                    // The service begins a flush only once the previous one is whole.
                    prop_assert!(f.extend(&mut spread, &shape, usize::MAX));
                    prop_assert_eq!(&sorted(&f), &want);
                    prev_s = Some(f.clock_record().to_vec());
                    compared += 1;
                }
                let whole = Flush::build(&mut at_once, &shape, i as i64 + 1, prev_a.as_deref(), false);
                prev_a = Some(whole.clock_record().to_vec());
                let f = Flush::begin(&mut spread, &shape, i as i64 + 1, prev_s.as_deref(), false);
                open = Some((f, sorted(&whole)));
            }
        }
        if let Some((mut f, want)) = open.take() {
            prop_assert!(f.extend(&mut spread, &shape, usize::MAX));
            prop_assert_eq!(&sorted(&f), &want);
            compared += 1;
        }
        prop_assert_eq!(compared, acts.iter().filter(|a| matches!(a, Action::Flush)).count());
        prop_assert_eq!(&out_s, &out_p);
        prop_assert_eq!(&out_a, &out_p);
        prop_assert_eq!(states(&spread), states(&plain));
    }
}
