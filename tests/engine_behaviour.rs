//! The scoring engine's invariants, one test per invariant: silence rescoring, event-time
//! ordering and lateness, TTL eviction, cooldown and escalation, the control group, and the
//! determinism of intervention ids and of whole replays.
//!
//! Most tests use a hand-made model whose score depends on one or two features only (for
//! instance only `recency` raises risk), so the expected decisions can be worked out exactly.
//! The determinism tests use a model trained through the library on simulator output.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use churnguard::engine::{Engine, EngineConfig, Ingested, WarmUp};
use churnguard::event::{parse_event, ActivityEvent, DEFAULT_MAX_EVENT_BYTES};
use churnguard::features::spec::{Aggregates, FeatureSpec};
use churnguard::intervention::{intervention_id, Intervention, Trigger};
use churnguard::model::artifact::{ModelArtifact, TierThreshold};
use churnguard::model::dataset::{self, EventLog, LabelSource, Labelling};
use churnguard::model::train::{self, TrainContext, TrainOptions};
use churnguard::model::Scorer;
use churnguard::pipeline::replay::{replay, ReplaySink};
use churnguard::policy::{Policy, PolicyConfig};
use churnguard::sim::{self, SimConfig};
use churnguard::time::{format_rfc3339_ms, parse_rfc3339, Millis, Span, DAY_MS, HOUR_MS, MINUTE_MS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// 2026-01-01T00:00:00Z.
const T0: Millis = 1_767_225_600_000;

fn ev(user: &str, event_type: &str, ts: Millis) -> ActivityEvent<'static> {
    ActivityEvent {
        user_id: Cow::Owned(user.to_string()),
        event_type: Cow::Owned(event_type.to_string()),
        ts,
        amount: None,
    }
}

fn ev_amount(user: &str, event_type: &str, ts: Millis, amount: f64) -> ActivityEvent<'static> {
    ActivityEvent { amount: Some(amount), ..ev(user, event_type, ts) }
}

fn tiers(list: &[(&str, f64)]) -> Vec<TierThreshold> {
    list.iter().map(|(name, min_score)| TierThreshold { name: name.to_string(), min_score: *min_score }).collect()
}

/// A model artifact built by hand: the scaler is the identity (mean 0, std 1), so the logit is
/// `intercept + sum(coef * transform(raw))`, with every coefficient not named here zero.
fn hand_model(spec: FeatureSpec, coefs: &[(&str, f64)], intercept: f64, tier_list: &[(&str, f64)]) -> ModelArtifact {
    ModelArtifact::from_weights(spec, "hand-made-1", coefs, intercept, tiers(tier_list))
        .expect("a valid hand-made model")
}

/// Two event types, two windows, recency capped far beyond the tests' silences.
fn small_spec() -> FeatureSpec {
    FeatureSpec {
        event_types: vec!["login".into(), "cancel".into()],
        windows: vec![Span::days(1), Span::days(7)],
        slots_per_window: 6,
        recency_cap: Some(Span::days(365)),
        aggregates: Aggregates::default(),
    }
}

const HIGH: f64 = 0.83;
const MEDIUM: f64 = 0.5;

/// Only `recency` raises risk: `score(d) = sigmoid(-4 + 3 ln(1 + d))` after `d` silent days.
/// d = 0: 0.018, 1: 0.128, 2: 0.331, 3: 0.540 (medium), 4: 0.696, 5: 0.798, 6: 0.863 (high).
fn recency_model() -> ModelArtifact {
    hand_model(small_spec(), &[("recency", 3.0)], -4.0, &[("high", HIGH), ("medium", MEDIUM)])
}

fn recency_score(days: f64) -> f64 {
    1.0 / (1.0 + (-(-4.0 + 3.0 * days.ln_1p())).exp())
}

/// Only a recent `cancel` raises risk: with one cancel in the last 7 days the score is
/// sigmoid(-5 + 10 ln 2) = 0.87, otherwise 0.0067.
fn cancel_model() -> ModelArtifact {
    hand_model(small_spec(), &[("count.cancel.7d", 10.0)], -5.0, &[("high", 0.5)])
}

/// The default engine without the warm-up: these tests check decision rules from the very first
/// event (the warm-up has its own tests below).
fn no_warm_up() -> EngineConfig {
    EngineConfig { warm_up: WarmUp::Off, ..EngineConfig::default() }
}

fn policy_without_control() -> PolicyConfig {
    PolicyConfig { control_fraction: 0.0, ..PolicyConfig::default() }
}

/// Every score is surfaced: one tier at 0, no cooldown, no control group, and a silent user is
/// sent the same tier again (not once per silence).
fn policy_surfacing_every_score() -> PolicyConfig {
    PolicyConfig {
        tiers: tiers(&[("watch", 0.0)]),
        cooldown: Span(0),
        control_fraction: 0.0,
        resend_while_silent: true,
        ..PolicyConfig::default()
    }
}

/// Feed events in order, collecting interventions; then move the watermark to the newest event.
fn run(engine: &mut Engine, events: &[ActivityEvent<'_>]) -> Vec<Intervention> {
    let mut out = Vec::new();
    for e in events {
        engine.ingest(e, &mut |iv| out.push(iv));
    }
    engine.advance_watermark(engine.max_ts(), &mut |iv| out.push(iv));
    out
}

/// `user` sends `n` logins an hour apart from `start`.
fn burst(user: &str, start: Millis, n: i64) -> Vec<ActivityEvent<'static>> {
    (0..n).map(|i| ev(user, "login", start + i * HOUR_MS)).collect()
}

/// `user` sends a login every `every` from `start` (inclusive) to `end` (exclusive): the clock.
fn heartbeat(user: &str, start: Millis, end: Millis, every: Millis) -> Vec<ActivityEvent<'static>> {
    (0..).map(|i| start + i * every).take_while(|t| *t < end).map(|t| ev(user, "login", t)).collect()
}

fn merge(mut a: Vec<ActivityEvent<'static>>, b: Vec<ActivityEvent<'static>>) -> Vec<ActivityEvent<'static>> {
    a.extend(b);
    // Stable: ties keep their listed order.
    a.sort_by_key(|e| e.ts);
    a
}

fn ts_of(iv: &Intervention) -> Millis {
    parse_rfc3339(&iv.event_time).expect("event_time is RFC3339")
}

fn of_user<'a>(ivs: &'a [Intervention], user: &str) -> Vec<&'a Intervention> {
    ivs.iter().filter(|iv| iv.user_id == user).collect()
}

fn vector_of(engine: &Engine, user: &str, at: Millis) -> Vec<f64> {
    let store = engine.store();
    let idx = store.get(user).unwrap_or_else(|| panic!("{user} is not tracked"));
    let mut v = vec![0.0; store.layout().n_features()];
    store.vector_at(idx, at, &mut v);
    v
}

/// Simulator output parsed into owned events, in file order.
fn parse_lines(bytes: &[u8]) -> Vec<ActivityEvent<'static>> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let e = parse_event(l, DEFAULT_MAX_EVENT_BYTES).expect("simulator lines are valid events");
            ActivityEvent {
                user_id: Cow::Owned(e.user_id.into_owned()),
                event_type: Cow::Owned(e.event_type.into_owned()),
                ts: e.ts,
                amount: e.amount,
            }
        })
        .collect()
}

/// A simulator log and a model trained on it through the library, shared by the tests that
/// need a realistic model (built once per test binary).
struct Trained {
    _dir: tempfile::TempDir,
    events_path: std::path::PathBuf,
    events: Vec<ActivityEvent<'static>>,
    model: ModelArtifact,
}

fn trained() -> &'static Trained {
    static TRAINED: OnceLock<Trained> = OnceLock::new();
    TRAINED.get_or_init(|| {
        let cfg = SimConfig { users: 1_200, days: 100, seed: 5, start_ms: T0 };
        let mut bytes = Vec::new();
        sim::simulate::<_, std::io::Sink>(&cfg, &mut bytes, None).expect("simulate");
        let dir = tempfile::tempdir().expect("tempdir");
        let events_path = dir.path().join("events.jsonl");
        std::fs::write(&events_path, &bytes).expect("write events");
        let log = EventLog::load(&events_path).expect("load log");
        let spec = FeatureSpec::derive_from_counts(&log.type_counts(), 0.0005, 16);
        let cutoff = T0 + 60 * DAY_MS;
        let lab = Labelling {
            cutoffs: vec![cutoff],
            horizon: Span::days(30),
            active_within: None,
            source: LabelSource::Silence,
        };
        let data = dataset::build(&log, &spec, &lab).expect("dataset");
        let ctx = TrainContext {
            events_file: events_path.display().to_string(),
            data_from: format_rfc3339_ms(log.first_ts()),
            data_to: format_rfc3339_ms(log.last_ts()),
            cutoffs: vec![format_rfc3339_ms(cutoff)],
            horizon: "30d".into(),
            active_within: None,
            label_source: lab.source.describe(),
        };
        let opt = TrainOptions { l2_grid: vec![1e-2], ..TrainOptions::default() };
        let model = train::train(&spec, data, ctx, &opt).expect("train").artifact;
        model.validate().expect("trained artifact validates");
        Trained { events: parse_lines(&bytes), events_path, model, _dir: dir }
    })
}

// ---------------------------------------------------------------------------------------------
// Silence
// ---------------------------------------------------------------------------------------------

#[test]
fn silent_user_is_flagged_without_an_event_of_their_own() {
    let model = recency_model();
    let mut engine = Engine::new(&model, policy_without_control(), no_warm_up());
    let a_events = burst("A", T0 + HOUR_MS, 3);
    let a_last = a_events.iter().map(|e| e.ts).max().unwrap();
    let events = merge(a_events.clone(), heartbeat("B", T0, T0 + 20 * DAY_MS, 4 * HOUR_MS));
    let ivs = run(&mut engine, &events);

    let a = of_user(&ivs, "A");
    let silent: Vec<&&Intervention> = a.iter().filter(|iv| iv.trigger == Trigger::Silence).collect();
    assert!(!silent.is_empty(), "A got no silence-triggered intervention: {a:#?}");
    let first = silent[0];
    assert!(
        ts_of(first) > a_last,
        "flagged at {} but A's last event is {}",
        first.event_time,
        format_rfc3339_ms(a_last)
    );
    assert!(a_events.iter().all(|e| e.ts < ts_of(first)), "no event of A's may exist after the decision");
    // The first tier the recency model reaches is medium, after three silent days, to the ms.
    assert_eq!(first.tier, "medium");
    assert_eq!(ts_of(first), a_last + 3 * DAY_MS);
    assert!((first.score - recency_score(3.0)).abs() < 1e-12, "{}", first.score);
    assert_eq!(first.reasons[0].feature, "recency");
    // Every intervention A receives is about silence: A's own events scored low.
    assert!(a.iter().all(|iv| iv.trigger == Trigger::Silence), "{a:#?}");
    assert!(of_user(&ivs, "B").is_empty(), "B is active every 4h and must never be flagged");
}

#[test]
fn risk_rises_with_silence() {
    let model = recency_model();
    let mut engine = Engine::new(&model, policy_surfacing_every_score(), no_warm_up());
    let a_events = burst("A", T0 + HOUR_MS, 3);
    let a_last = a_events.last().unwrap().ts;
    let end = T0 + 20 * DAY_MS;
    let ivs = run(&mut engine, &merge(a_events, heartbeat("B", T0, end, 4 * HOUR_MS)));

    let silent: Vec<&Intervention> =
        ivs.iter().filter(|iv| iv.user_id == "A" && iv.trigger == Trigger::Silence).collect();
    // Rescored once per rescore_interval (1d) while silent, up to the last watermark.
    let expected_n = ((engine.watermark() - a_last) / DAY_MS) as usize;
    assert!(expected_n >= 18);
    assert_eq!(
        silent.len(),
        expected_n,
        "one silence rescore a day: {:?}",
        silent.iter().map(|i| &i.event_time).collect::<Vec<_>>()
    );
    let scorer = Scorer::new(&model);
    for (k, iv) in silent.iter().enumerate() {
        let at = ts_of(iv);
        assert_eq!(at, a_last + (k as i64 + 1) * DAY_MS, "rescored at exact due times");
        // The emitted score is the model's score of the stored state at that event time.
        assert_eq!(iv.score, scorer.score(&vector_of(&engine, "A", at)));
    }
    for w in silent.windows(2) {
        assert!(
            w[1].score >= w[0].score,
            "risk fell during silence: {} at {} then {} at {}",
            w[0].score,
            w[0].event_time,
            w[1].score,
            w[1].event_time
        );
    }
    assert!(silent.last().unwrap().score > silent[0].score + 0.5);
}

// ---------------------------------------------------------------------------------------------
// Event-time order and lateness
// ---------------------------------------------------------------------------------------------

/// Twelve users over 20 days with every event type (including unknown ones) and amounts.
fn mixed_events(rng: &mut ChaCha8Rng) -> Vec<ActivityEvent<'static>> {
    let types = ["login", "page_view", "purchase", "support_ticket", "payment_failed", "subscribe", "mystery"];
    let mut out = Vec::new();
    for u in 0..12 {
        let user = format!("user-{u}");
        let mut t = T0 + rng.random_range(0..DAY_MS);
        while t < T0 + 20 * DAY_MS {
            let ty = types[rng.random_range(0..types.len())];
            let e = if ty == "purchase" || (ty == "subscribe" && rng.random_bool(0.5)) {
                // Whole cents, like the simulator; some refunds.
                let cents = rng.random_range(-2_000i64..20_000);
                ev_amount(&user, ty, t, cents as f64 / 100.0)
            } else {
                ev(&user, ty, t)
            };
            out.push(e);
            // Bursts of events minutes apart, with gaps of hours to days between sessions.
            t += if rng.random_bool(0.7) {
                rng.random_range(0..20 * MINUTE_MS)
            } else {
                rng.random_range(HOUR_MS..3 * DAY_MS)
            };
        }
    }
    out.sort_by_key(|e| e.ts);
    out
}

/// The events in an arrival order where each is at most `lateness` older than the newest
/// seen before it: each event is delayed by a random amount in [0, lateness].
fn shuffled_within(
    events: &[ActivityEvent<'static>],
    lateness: Millis,
    rng: &mut ChaCha8Rng,
) -> Vec<ActivityEvent<'static>> {
    let mut keyed: Vec<(Millis, usize)> =
        events.iter().enumerate().map(|(i, e)| (e.ts + rng.random_range(0..=lateness), i)).collect();
    keyed.sort_unstable();
    let out: Vec<_> = keyed.into_iter().map(|(_, i)| events[i].clone()).collect();
    let mut max = Millis::MIN;
    for e in &out {
        assert!(max == Millis::MIN || e.ts >= max - lateness, "generator broke the lateness bound");
        max = max.max(e.ts);
    }
    out
}

#[test]
fn events_within_allowed_lateness_give_the_same_state_in_any_order() {
    let model = hand_model(FeatureSpec::default(), &[("recency", 3.0)], -4.0, &[("high", HIGH), ("medium", MEDIUM)]);
    let cfg = no_warm_up();
    let lateness = cfg.allowed_lateness.ms();
    let names = model.spec.feature_names();
    assert!(names.len() > 10, "{names:?}");
    let mut reordered_somewhere = 0;
    for seed in 0..16 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let in_order = mixed_events(&mut rng);
        assert!(in_order.len() > 100, "seed {seed}: {} events", in_order.len());
        let shuffled = shuffled_within(&in_order, lateness, &mut rng);
        if shuffled.iter().zip(&in_order).any(|(a, b)| a != b) {
            reordered_somewhere += 1;
        }
        let mut reference = Engine::new(&model, PolicyConfig::default(), cfg.clone());
        let mut permuted = Engine::new(&model, PolicyConfig::default(), cfg.clone());
        for (engine, events) in [(&mut reference, &in_order), (&mut permuted, &shuffled)] {
            for e in events.iter() {
                assert_eq!(engine.ingest(e, &mut |_| {}), Ingested::Applied, "seed {seed}: {e:?} is within lateness");
            }
            assert_eq!(engine.counters.events_late, 0);
            assert_eq!(engine.counters.events_applied, in_order.len() as u64);
        }
        assert!(permuted.counters.events_out_of_order > 0 || shuffled == in_order);
        let at = reference.max_ts();
        assert_eq!(at, permuted.max_ts());
        assert_eq!(reference.store().len(), permuted.store().len());
        for u in 0..12 {
            let user = format!("user-{u}");
            // At the end of the data and a week later (windows sliding, recency growing).
            for t in [at, at + 7 * DAY_MS] {
                let (a, b) = (vector_of(&reference, &user, t), vector_of(&permuted, &user, t));
                for (i, name) in names.iter().enumerate() {
                    // Bit for bit, amounts included (summed in whole cents).
                    assert!(
                        a[i].to_bits() == b[i].to_bits(),
                        "seed {seed}, {user}, {name} at {}: {} in order vs {} reordered",
                        format_rfc3339_ms(t),
                        a[i],
                        b[i]
                    );
                }
            }
            let (ra, rb) = (reference.store().get(&user).unwrap(), permuted.store().get(&user).unwrap());
            let (ua, ub) = (reference.store().user(ra), permuted.store().user(rb));
            assert_eq!((ua.first_ts(), ua.last_ts()), (ub.first_ts(), ub.last_ts()), "seed {seed}, {user}");
        }
    }
    assert!(reordered_somewhere >= 12, "the permutations must actually reorder events");
}

#[test]
fn late_events_are_counted_and_not_applied() {
    let model = recency_model();
    let mut engine = Engine::new(&model, PolicyConfig::default(), no_warm_up());
    let mut sink = |_: Intervention| {};
    assert_eq!(engine.ingest(&ev("X", "login", T0), &mut sink), Ingested::Applied);
    assert_eq!(engine.ingest(&ev("Y", "login", T0 + 5 * HOUR_MS), &mut sink), Ingested::Applied);
    // Watermark = newest (T0 + 5h) - allowed lateness (1h).
    assert_eq!(engine.watermark(), T0 + 4 * HOUR_MS);
    let at = T0 + 6 * HOUR_MS;
    let (x_before, y_before) = (vector_of(&engine, "X", at), vector_of(&engine, "Y", at));
    let counters_before = engine.counters.clone();

    // One ms before the watermark: late. For a known user and for a brand-new one.
    let late = ev("X", "cancel", T0 + 4 * HOUR_MS - 1);
    assert_eq!(engine.ingest(&late, &mut sink), Ingested::Late);
    assert_eq!(engine.ingest(&ev("Z", "login", T0 + HOUR_MS), &mut sink), Ingested::Late);
    assert_eq!(engine.counters.events_late, counters_before.events_late + 2);
    assert_eq!(engine.counters.events_applied, counters_before.events_applied);
    assert_eq!(engine.counters.users_created, counters_before.users_created);
    assert_eq!(vector_of(&engine, "X", at), x_before, "a late event must not touch the state");
    assert_eq!(vector_of(&engine, "Y", at), y_before);
    assert!(engine.store().get("Z").is_none(), "a late event must not create a user");
    assert_eq!(engine.store().len(), 2);

    // Exactly at the watermark is still on time.
    assert_eq!(engine.ingest(&ev("X", "cancel", T0 + 4 * HOUR_MS), &mut sink), Ingested::Applied);
    assert_ne!(vector_of(&engine, "X", at), x_before);
    assert_eq!(engine.counters.events_late, counters_before.events_late + 2);
}

// ---------------------------------------------------------------------------------------------
// State TTL
// ---------------------------------------------------------------------------------------------

#[test]
fn state_ttl_evicts_silent_users() {
    let model = recency_model();
    let cfg = EngineConfig { state_ttl: Span::days(40), ..no_warm_up() };
    cfg.validate(&PolicyConfig::default()).expect("valid config");
    let mut engine = Engine::new(&model, PolicyConfig::default(), cfg);
    let mut sink = |_: Intervention| {};
    let silent: Vec<String> = (0..10).map(|i| format!("quiet-{i}")).collect();
    let mut events = Vec::new();
    for (i, u) in silent.iter().enumerate() {
        events.extend(burst(u, T0 + i as i64 * 10 * MINUTE_MS, 2));
    }
    let last_quiet = events.iter().map(|e| e.ts).max().unwrap();
    let first_quiet = T0 + HOUR_MS; // each quiet user's last event is 1h after their first
                                    // The clock ticks hourly, so each phase below ends within an hour of its bound.
    let events = merge(events, heartbeat("clock", T0, T0 + 60 * DAY_MS, HOUR_MS));
    let mut i = 0;
    // Up to just before the first expiry (first quiet user's last event + 40d), all are tracked.
    while i < events.len() && events[i].ts <= first_quiet + 40 * DAY_MS - 2 * HOUR_MS {
        engine.ingest(&events[i], &mut sink);
        i += 1;
    }
    assert_eq!(engine.store().len(), 11);
    assert_eq!(engine.counters.users_evicted, 0);
    // Past every expiry (plus a timer bucket): only the clock user is left.
    while i < events.len() && events[i].ts <= last_quiet + 40 * DAY_MS + 3 * HOUR_MS {
        engine.ingest(&events[i], &mut sink);
        i += 1;
    }
    assert_eq!(engine.store().len(), 1, "silent users outlived the TTL");
    assert_eq!(engine.counters.users_evicted, 10);
    for u in &silent {
        assert!(engine.store().get(u).is_none(), "{u} still tracked");
    }
    assert!(engine.store().get("clock").is_some());
    // An evicted user who comes back starts from fresh state.
    let back = events[i - 1].ts;
    engine.ingest(&ev("quiet-3", "login", back), &mut sink);
    assert_eq!(engine.counters.users_created, 12);
    let v = vector_of(&engine, "quiet-3", back);
    let names = model.spec.feature_names();
    let lifetime = names.iter().position(|n| n == "lifetime.count.login").unwrap();
    let tenure = names.iter().position(|n| n == "tenure").unwrap();
    assert_eq!((v[lifetime], v[tenure]), (1.0, 0.0));
    // The rest of the stream keeps the clock user alive and nobody else returns.
    for e in &events[i..] {
        engine.ingest(e, &mut sink);
    }
    assert_eq!(engine.store().len(), 2);
    assert_eq!(engine.counters.users_evicted, 10);
}

// ---------------------------------------------------------------------------------------------
// Cooldown
// ---------------------------------------------------------------------------------------------

/// Decisions as (tier, days after the user's anchor time), in order.
fn decisions(ivs: &[Intervention], user: &str, anchor: Millis) -> Vec<(String, f64)> {
    of_user(ivs, user).iter().map(|iv| (iv.tier.clone(), (ts_of(iv) - anchor) as f64 / DAY_MS as f64)).collect()
}

fn expect(list: &[(&str, f64)]) -> Vec<(String, f64)> {
    list.iter().map(|(t, d)| (t.to_string(), *d)).collect()
}

#[test]
fn cooldown_suppresses_repeats_but_escalation_goes_through() {
    let model = recency_model();
    // A goes silent after one event. C is active every 3.5 days, so after each of C's events
    // three silent days reach medium (0.540); C's last event is on day 17.5. B keeps the clock.
    let a_last = T0 + HOUR_MS;
    let c0 = T0 + 2 * HOUR_MS;
    let c_events: Vec<_> = (0..6).map(|i| ev("C", "login", c0 + i * 84 * HOUR_MS)).collect();
    let events =
        merge(merge(vec![ev("A", "login", a_last)], c_events), heartbeat("B", T0, T0 + 24 * DAY_MS, 4 * HOUR_MS));

    let policy = policy_without_control();
    assert_eq!(policy.cooldown, Span::days(7));
    assert!(!policy.resend_while_silent);
    let mut engine = Engine::new(&model, policy, no_warm_up());
    let ivs = run(&mut engine, &events);
    // A: medium on silent day 3; days 4 and 5 are still medium, in its cooldown: suppressed.
    // Day 6 is high: an escalation, sent although medium's cooldown runs to day 10. Then
    // nothing: a silent user gets each tier once per silence.
    assert_eq!(decisions(&ivs, "A", a_last), expect(&[("medium", 3.0), ("high", 6.0)]));
    // C: medium on day 3; again on day 6.5, within the cooldown: suppressed; on day 10 the
    // cooldown is over: sent; 13.5 suppressed; 17 sent. After C's last event (17.5): medium
    // on days 20.5, 21.5 and 22.5, suppressed; high on day 23.5, an escalation: sent.
    assert_eq!(
        decisions(&ivs, "C", c0),
        expect(&[("medium", 3.0), ("medium", 10.0), ("medium", 17.0), ("high", 23.5)])
    );
    // Suppressions are counted where a score is computed. Polling every due time computes all
    // seven; by default, due times the score bound proves cannot escalate are not computed.
    let mut polled =
        Engine::new(&model, policy_without_control(), EngineConfig { exhaustive_polling: true, ..no_warm_up() });
    let polled_ivs = run(&mut polled, &events);
    assert_eq!(polled.counters.suppressed_cooldown, 2 + 5, "A: days 4, 5; C: 6.5, 13.5, 20.5, 21.5, 22.5");
    assert!(engine.counters.suppressed_cooldown <= polled.counters.suppressed_cooldown);
    assert_eq!(decisions(&polled_ivs, "C", c0), decisions(&ivs, "C", c0));
    assert!(of_user(&ivs, "B").is_empty());
    assert_eq!(engine.counters.interventions, ivs.len() as u64);
    for iv in &ivs {
        let threshold = if iv.tier == "high" { HIGH } else { MEDIUM };
        assert!(iv.score >= threshold && iv.threshold == threshold, "{iv:?}");
        assert_eq!(iv.trigger, Trigger::Silence);
    }

    // With resend_while_silent, the silent A is sent high again whenever its cooldown ends.
    let resend = PolicyConfig { resend_while_silent: true, ..policy_without_control() };
    let mut engine = Engine::new(&model, resend, no_warm_up());
    let ivs = run(&mut engine, &events);
    assert_eq!(decisions(&ivs, "A", a_last), expect(&[("medium", 3.0), ("high", 6.0), ("high", 13.0), ("high", 20.0)]));
    assert_eq!(
        decisions(&ivs, "C", c0),
        expect(&[("medium", 3.0), ("medium", 10.0), ("medium", 17.0), ("high", 23.5)])
    );
}

// ---------------------------------------------------------------------------------------------
// Control group
// ---------------------------------------------------------------------------------------------

/// Each user sends one `cancel`, 10 s apart, so each crosses the single tier exactly once.
fn cancels(users: &[String], start: Millis) -> Vec<ActivityEvent<'static>> {
    users.iter().enumerate().map(|(i, u)| ev(u, "cancel", start + i as i64 * 10_000)).collect()
}

fn control_flags(engine: &mut Engine, events: &[ActivityEvent<'static>]) -> BTreeMap<String, bool> {
    let ivs = run(engine, events);
    let mut flags = BTreeMap::new();
    for iv in ivs {
        assert!(flags.insert(iv.user_id.clone(), iv.control).is_none(), "{} crossed twice", iv.user_id);
    }
    flags
}

#[test]
fn control_group_share_is_near_control_fraction() {
    let model = cancel_model();
    let policy = PolicyConfig::default();
    let fraction = policy.control_fraction;
    assert_eq!(fraction, 0.1);
    let judge = Policy::new(policy.clone(), &model.thresholds.tiers);
    let mut engine = Engine::new(&model, policy, no_warm_up());
    let users: Vec<String> = (0..5_000).map(|i| format!("cust-{i:05}")).collect();
    let flags = control_flags(&mut engine, &cancels(&users, T0));
    assert_eq!(flags.len(), users.len(), "every user crosses the threshold once");
    let control = flags.values().filter(|c| **c).count();
    assert_eq!(engine.counters.control, control as u64);
    assert_eq!(engine.counters.interventions, (users.len() - control) as u64);
    let share = control as f64 / users.len() as f64;
    // Binomial sd at n = 5000, p = 0.1 is 0.0042: allow about 4.7 sd.
    assert!((share - fraction).abs() < 0.02, "control share {share} vs fraction {fraction}");
    for (u, c) in &flags {
        assert_eq!(*c, judge.in_control(u), "{u}: the record's flag is the policy's assignment");
    }
}

#[test]
fn control_assignment_is_stable_across_engine_instances() {
    let model = cancel_model();
    let users: Vec<String> = (0..2_000).map(|i| format!("acct-{i}")).collect();
    let mut first = Engine::new(&model, PolicyConfig::default(), no_warm_up());
    let a = control_flags(&mut first, &cancels(&users, T0));
    // A second, fresh engine seeing the same ids in another order, at other times.
    let mut reversed = users.clone();
    reversed.reverse();
    let mut second = Engine::new(&model, PolicyConfig::default(), no_warm_up());
    let b = control_flags(&mut second, &cancels(&reversed, T0 + 40 * DAY_MS));
    assert_eq!(a.len(), users.len());
    assert_eq!(a, b, "the same user ids must get the same control flags");
    assert!(a.values().any(|c| *c) && a.values().any(|c| !*c));
    // The assignment is keyed by the salt: another salt reshuffles it.
    let salted = PolicyConfig { control_salt: "another-salt".into(), ..PolicyConfig::default() };
    let mut third = Engine::new(&model, salted, no_warm_up());
    let c = control_flags(&mut third, &cancels(&users, T0));
    assert_ne!(a, c);
}

// ---------------------------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------------------------

#[test]
fn intervention_ids_are_deterministic() {
    let t = trained();
    let replay_ids = || {
        let mut engine = Engine::new(&t.model, PolicyConfig::default(), no_warm_up());
        let ivs = run(&mut engine, &t.events);
        (ivs.iter().map(|iv| iv.intervention_id.clone()).collect::<Vec<_>>(), ivs)
    };
    let (first, ivs) = replay_ids();
    let (second, _) = replay_ids();
    assert!(first.len() > 100, "the trained model should flag someone: {}", first.len());
    let a: BTreeSet<&String> = first.iter().collect();
    let b: BTreeSet<&String> = second.iter().collect();
    assert_eq!(a, b);
    assert_eq!(a.len(), first.len(), "intervention ids are unique within a run");
    // The id is a function of user, tier and decision day only.
    for iv in &ivs {
        assert_eq!(iv.intervention_id, intervention_id(&iv.user_id, &iv.tier, ts_of(iv)));
    }
}

fn replay_file(model: &ModelArtifact, path: &Path) -> (Vec<Intervention>, Vec<Intervention>) {
    let mut engine = Engine::new(model, PolicyConfig::default(), no_warm_up());
    let (mut out, mut control) = (Vec::new(), Vec::new());
    let summary = replay(
        path,
        DEFAULT_MAX_EVENT_BYTES,
        &mut engine,
        ReplaySink { interventions: &mut out, control: Some(&mut control) },
    )
    .expect("replay");
    assert_eq!(summary.rejected.total(), 0);
    let parse = |bytes: &[u8]| -> Vec<Intervention> {
        bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let mut iv: Intervention = serde_json::from_slice(l).expect("intervention JSON");
                iv.emitted_at.clear();
                iv
            })
            .collect()
    };
    (parse(&out), parse(&control))
}

#[test]
fn replay_is_deterministic_for_the_same_file() {
    let t = trained();
    let (ivs_a, ctl_a) = replay_file(&t.model, &t.events_path);
    let (ivs_b, ctl_b) = replay_file(&t.model, &t.events_path);
    assert!(!ivs_a.is_empty() && !ctl_a.is_empty());
    assert!(ivs_a.iter().any(|iv| iv.trigger == Trigger::Silence));
    assert_eq!(ivs_a.len(), ivs_b.len());
    for (a, b) in ivs_a.iter().zip(&ivs_b) {
        assert_eq!(a, b);
    }
    assert_eq!(ctl_a, ctl_b);
    assert!(ctl_a.iter().all(|iv| iv.control) && ivs_a.iter().all(|iv| !iv.control));
}

// ---------------------------------------------------------------------------------------------
// Regressions: engine defects this suite caught (they fail before commit 20623dc)
// ---------------------------------------------------------------------------------------------

/// Window amounts were summed per slot in f32, in arrival order, so a user's own events
/// reordered within the allowed lateness changed `amount.<window>` in the last bits:
/// (147.29 + 154.75) + 124.40 = 426.43997 but (147.29 + 124.40) + 154.75 = 426.44000 in f32.
#[test]
fn window_amounts_are_bit_identical_in_any_order() {
    let model = recency_model();
    let t = T0 + 3 * HOUR_MS;
    let purchases = [
        ev_amount("A", "purchase", t, 147.29),
        ev_amount("A", "purchase", t + 10 * MINUTE_MS, 154.75),
        ev_amount("A", "purchase", t + 20 * MINUTE_MS, 124.40),
    ];
    let mut in_order = Engine::new(&model, PolicyConfig::default(), no_warm_up());
    let mut reordered = Engine::new(&model, PolicyConfig::default(), no_warm_up());
    for e in &purchases {
        in_order.ingest(e, &mut |_| {});
    }
    for i in [0, 2, 1] {
        assert_eq!(reordered.ingest(&purchases[i], &mut |_| {}), Ingested::Applied);
    }
    let at = t + HOUR_MS;
    let names = model.spec.feature_names();
    let i = names.iter().position(|n| n == "amount.1d").unwrap();
    let (a, b) = (vector_of(&in_order, "A", at)[i], vector_of(&reordered, "A", at)[i]);
    assert_eq!(a, b, "amount.1d: {a} in order vs {b} reordered");
}

/// A timer rescheduled while the wheel drained was lost when the new due time fell in a bucket
/// the drain had already taken (`TimerWheel::push` put it in the front bucket, and
/// `Engine::advance_watermark` skipped it because its due time's bucket was not the front
/// bucket's). Here the clock jumps 10 days (a gap in the stream, or an idle partition's clock):
/// A was rescored once, at day 1, and never again.
#[test]
fn silent_user_keeps_being_rescored_after_the_clock_jumps() {
    let model = recency_model();
    let mut engine = Engine::new(&model, policy_surfacing_every_score(), no_warm_up());
    let a_last = T0 + HOUR_MS;
    let events = merge(
        vec![ev("B", "login", T0), ev("A", "login", a_last)],
        heartbeat("B", T0 + 10 * DAY_MS, T0 + 20 * DAY_MS, HOUR_MS),
    );
    let ivs = run(&mut engine, &events);
    let silent_days: Vec<i64> = of_user(&ivs, "A")
        .iter()
        .filter(|iv| iv.trigger == Trigger::Silence)
        .map(|iv| (ts_of(iv) - a_last) / DAY_MS)
        .collect();
    let expected: Vec<i64> = (1..=(engine.watermark() - a_last) / DAY_MS).collect();
    assert!(expected.len() >= 18, "the clock must run ~20 days past A's last event: {expected:?}");
    assert_eq!(silent_days, expected, "A must be rescored every day of its silence");
}

/// The same loss without any gap, under the default config: the rescore before expiry and the
/// expiry itself fell in one timer bucket (1h), so `Engine::schedule` pushed no new wheel entry
/// (it assumed the old bucket's entry was still queued, but the drain had just consumed it).
/// A cancels (high, sent), logs in 3d20m later (in cooldown, so its next rescore is deferred to
/// the cooldown's end, 7d after the cancel, off the 1d grid of its last event), then is silent.
/// Rescores run at cancel + 7d + k days; expiry is at last event + 120d = cancel + 123d 20m, in
/// the same hour as the rescore at cancel + 123d. A was never evicted, nor rescored again.
#[test]
fn silent_user_is_evicted_after_the_ttl_off_the_rescore_grid() {
    let model = cancel_model();
    let cfg = no_warm_up();
    assert_eq!((cfg.state_ttl, cfg.rescore_interval), (Span::days(120), Span::days(1)));
    let mut engine = Engine::new(&model, PolicyConfig::default(), cfg);
    let cancel = T0 + 10 * MINUTE_MS;
    let last = cancel + 3 * DAY_MS + 20 * MINUTE_MS;
    let a = vec![ev("A", "cancel", cancel), ev("A", "login", last)];
    let events = merge(a, heartbeat("clock", T0, cancel + 130 * DAY_MS, HOUR_MS));
    let ivs = run(&mut engine, &events);
    assert_eq!(of_user(&ivs, "A").len(), 1, "the cancel is flagged once");
    assert_eq!(engine.counters.suppressed_cooldown, 1, "the login 3d later is in cooldown");
    assert!(engine.watermark() > last + 120 * DAY_MS + 2 * HOUR_MS);
    assert!(engine.store().get("A").is_none(), "A is silent past the TTL but still tracked");
    assert_eq!(engine.counters.users_evicted, 1);
}

#[test]
fn shadow_model_scores_the_same_vectors_without_acting() {
    // A silent user and a busy one. The shadow is more lenient (medium after ~13 silent days
    // instead of 3), so the two agree on the busy user and on A's first silent days, and disagree
    // once the live model flags A.
    let events = merge(vec![ev("A", "login", T0 + HOUR_MS)], heartbeat("B", T0, T0 + 20 * DAY_MS, 4 * HOUR_MS));
    let live = recency_model();
    let opposite = hand_model(small_spec(), &[("recency", 1.5)], -4.0, &[("high", HIGH), ("medium", MEDIUM)]);

    let mut alone = Engine::new(&live, policy_without_control(), no_warm_up());
    let plain = run(&mut alone, &events);
    let mut shadowed = Engine::new(&live, policy_without_control(), no_warm_up());
    shadowed.set_shadow(&opposite).expect("same spec");
    let with_shadow = run(&mut shadowed, &events);

    let ids =
        |v: &[Intervention]| v.iter().map(|i| (i.intervention_id.clone(), i.model_version.clone())).collect::<Vec<_>>();
    assert!(!plain.is_empty(), "the live model flags the silent user");
    assert_eq!(ids(&plain), ids(&with_shadow), "the shadow never changes what is published");
    let c = &shadowed.counters;
    assert_eq!(c.shadow_agree + c.shadow_disagree, c.scored_on_event + c.scored_on_timer, "every score is shadowed");
    assert!(c.shadow_disagree > 0 && c.shadow_agree > 0, "{c:?}");
    assert_ne!(c.shadow_buckets, c.score_buckets);

    let mut same = Engine::new(&live, policy_without_control(), no_warm_up());
    same.set_shadow(&live).expect("same spec");
    run(&mut same, &events);
    assert_eq!(same.counters.shadow_disagree, 0);
    assert_eq!(same.counters.shadow_buckets, same.counters.score_buckets);

    let other_spec = hand_model(FeatureSpec::default(), &[("recency", 1.0)], 0.0, &[("high", 0.9)]);
    assert!(Engine::new(&live, policy_without_control(), no_warm_up()).set_shadow(&other_spec).is_err());
}

// ---------------------------------------------------------------------------------------------
// Warm-up
// ---------------------------------------------------------------------------------------------

/// A goes silent after a burst at the start; B is active every 4 hours for 20 days.
fn warm_up_events() -> Vec<ActivityEvent<'static>> {
    merge(burst("A", T0 + HOUR_MS, 3), heartbeat("B", T0, T0 + 20 * DAY_MS, 4 * HOUR_MS))
}

fn key(iv: &Intervention) -> (String, String, String, u64) {
    (iv.user_id.clone(), iv.event_time.clone(), iv.tier.clone(), iv.score.to_bits())
}

#[test]
fn warm_up_holds_outputs_until_the_longest_window_is_covered() {
    let model = recency_model();
    let events = warm_up_events();
    let auto_cfg = EngineConfig::default();
    assert_eq!(auto_cfg.warm_up, WarmUp::Auto, "the warm-up is on by default");
    let mut warm = Engine::new(&model, policy_surfacing_every_score(), auto_cfg);
    let held = run(&mut warm, &events);
    let mut cold = Engine::new(&model, policy_surfacing_every_score(), no_warm_up());
    let all = run(&mut cold, &events);

    // auto = the longest window of the model's spec (7d), from the first event (T0).
    let until = T0 + 7 * DAY_MS;
    assert_eq!(warm.warm_until(), until);
    assert!(all.iter().any(|iv| ts_of(iv) < until), "without warm-up there are early outputs");
    assert!(held.iter().all(|iv| ts_of(iv) >= until), "an output inside the warm-up: {:?}", held.first());
    assert!(held.iter().any(|iv| iv.user_id == "A") && held.iter().any(|iv| iv.user_id == "B"));
    // Held decisions are counted, not lost: the cold engine's early outputs are the held ones.
    let early = all.iter().filter(|iv| ts_of(iv) < until).count() as u64;
    assert_eq!(warm.counters.held_warm_up, early);
    assert_eq!(warm.counters.interventions + warm.counters.held_warm_up, cold.counters.interventions);
    // State kept updating during the warm-up, and the policy starts fresh after it: from the end
    // of the warm-up on, the outputs are exactly those of an engine without warm-up.
    let late: Vec<_> = all.iter().filter(|iv| ts_of(iv) >= until).map(key).collect();
    assert_eq!(held.iter().map(key).collect::<Vec<_>>(), late);
    // A's first output after the warm-up scores a silence that began during it.
    let a_first = held.iter().find(|iv| iv.user_id == "A").expect("A is flagged after the warm-up");
    let a_last = T0 + 3 * HOUR_MS;
    assert_eq!(a_first.score, recency_score((ts_of(a_first) - a_last) as f64 / DAY_MS as f64));
}

#[test]
fn warm_up_off_restores_outputs_from_the_first_event_and_a_duration_sets_the_length() {
    let model = recency_model();
    let events = warm_up_events();
    let mut off = Engine::new(&model, policy_surfacing_every_score(), no_warm_up());
    let out = run(&mut off, &events);
    assert_eq!(off.warm_until(), Millis::MIN);
    assert_eq!(off.counters.held_warm_up, 0);
    assert_eq!(ts_of(&out[0]), T0, "the first event is decided on at once");

    let cfg = EngineConfig { warm_up: WarmUp::For(Span::days(3)), ..EngineConfig::default() };
    let mut three = Engine::new(&model, policy_surfacing_every_score(), cfg);
    let out = run(&mut three, &events);
    assert!(out.iter().all(|iv| ts_of(iv) >= T0 + 3 * DAY_MS));
    assert!(out.iter().any(|iv| ts_of(iv) < T0 + 4 * DAY_MS), "outputs resume right after 3d");
    assert!(three.counters.held_warm_up > 0);
}

#[test]
fn warm_up_config_values() {
    let parse = |s: &str| toml::from_str::<EngineConfig>(s);
    assert_eq!(parse("").unwrap().warm_up, WarmUp::Auto);
    assert_eq!(parse("warm_up = \"auto\"").unwrap().warm_up, WarmUp::Auto);
    assert_eq!(parse("warm_up = \"off\"").unwrap().warm_up, WarmUp::Off);
    assert_eq!(parse("warm_up = \"30d\"").unwrap().warm_up, WarmUp::For(Span::days(30)));
    let err = parse("warm_up = \"soon\"").unwrap_err().to_string();
    assert!(err.contains("auto") && err.contains("off"), "{err}");
    for w in [WarmUp::Auto, WarmUp::Off, WarmUp::For(Span::days(30))] {
        let cfg = EngineConfig { warm_up: w, ..EngineConfig::default() };
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(parse(&text).unwrap(), cfg, "{text}");
    }
    let too_long = EngineConfig { warm_up: WarmUp::For(Span::days(400)), ..EngineConfig::default() };
    let e = too_long.validate(&PolicyConfig::default()).unwrap_err();
    assert_eq!(e.key, "warm_up");
    assert_eq!(WarmUp::Auto.resolve(&small_spec()), Span::days(7));
}

// ---------------------------------------------------------------------------------------------
// Outcomes (uplift, live)
// ---------------------------------------------------------------------------------------------

/// R cancels, then comes back twice within the horizon (spend 5 + 2.5) and once after it (100,
/// not counted); C cancels and is never seen again. B's heartbeat moves event time on. With a
/// 10-day horizon both decisions are open until event time passes decision + 10 days, then R
/// is `retained` and C `churned`, in the group the policy put them in.
fn outcomes_after_cancel(control_fraction: f64) -> (Vec<Intervention>, Engine) {
    let model = cancel_model();
    let policy = PolicyConfig { control_fraction, ..PolicyConfig::default() };
    let cfg = EngineConfig { outcome_horizon: Span::days(10), ..no_warm_up() };
    let mut engine = Engine::new(&model, policy, cfg);
    let r = vec![
        ev("R", "cancel", T0 + HOUR_MS),
        ev_amount("R", "login", T0 + 3 * DAY_MS, 5.0),
        ev_amount("R", "login", T0 + 5 * DAY_MS, 2.5),
        ev_amount("R", "login", T0 + 12 * DAY_MS, 100.0),
    ];
    let c = vec![ev("C", "cancel", T0 + 2 * HOUR_MS)];
    let events = merge(merge(r, c), heartbeat("B", T0, T0 + 20 * DAY_MS, 4 * HOUR_MS));
    let (before, after): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| e.ts < T0 + 9 * DAY_MS);
    let mut ivs = run(&mut engine, &before);
    let open: u64 = engine.counters.outcomes.iter().map(|c| c.retained + c.churned).sum();
    assert_eq!(open, 0, "no outcome is final before its horizon ends: {:?}", engine.counters.outcomes);
    ivs.extend(run(&mut engine, &after));
    (ivs, engine)
}

fn check_outcomes(control_fraction: f64, control: bool) {
    let (ivs, engine) = outcomes_after_cancel(control_fraction);
    // One decision each, at their cancel; nothing for B.
    assert_eq!(of_user(&ivs, "R").len(), 1, "{ivs:#?}");
    assert_eq!(of_user(&ivs, "C").len(), 1, "{ivs:#?}");
    assert!(of_user(&ivs, "B").is_empty());
    assert!(ivs.iter().all(|iv| iv.control == control), "{ivs:#?}");
    let cells = &engine.counters.outcomes;
    assert_eq!(cells.len(), 1, "{cells:?}");
    let cell = &cells[0];
    assert_eq!(cell.control, control);
    assert_eq!(cell.group(), if control { "control" } else { "treated" });
    assert_eq!(&*cell.tier, "high");
    assert_eq!(&*cell.action, ivs[0].action.as_str());
    assert_eq!((cell.retained, cell.churned), (1, 1), "R retained, C churned: {cell:?}");
    assert!((cell.spend - 7.5).abs() < 1e-9, "spend in R's horizon only: {}", cell.spend);
}

#[test]
fn treated_outcomes_are_retained_or_churned_after_the_horizon_with_spend() {
    check_outcomes(0.0, false);
}

#[test]
fn control_outcomes_are_counted_in_the_control_group() {
    check_outcomes(1.0, true);
}

#[test]
fn a_newer_decision_closes_the_previous_outcome_early() {
    // R cancels twice, 8 days apart (past the cooldown): the first outcome closes at the
    // second decision with what it saw (one comeback, spend 1); the second runs its horizon.
    let model = cancel_model();
    let cfg = EngineConfig { outcome_horizon: Span::days(10), ..no_warm_up() };
    let mut engine = Engine::new(&model, policy_without_control(), cfg);
    let r = vec![
        ev("R", "cancel", T0 + HOUR_MS),
        ev_amount("R", "login", T0 + 2 * DAY_MS, 1.0),
        ev("R", "cancel", T0 + 9 * DAY_MS),
    ];
    let ivs = run(&mut engine, &merge(r, heartbeat("B", T0, T0 + 30 * DAY_MS, 4 * HOUR_MS)));
    assert_eq!(of_user(&ivs, "R").len(), 2, "{ivs:#?}");
    let cell = &engine.counters.outcomes[0];
    assert_eq!((cell.retained, cell.churned), (1, 1), "{cell:?}");
    assert!((cell.spend - 1.0).abs() < 1e-9, "{cell:?}");
}

#[test]
fn outcomes_open_across_a_counter_reset_are_counted_once() {
    // A state restore resets the counters (the previous owner counted the restored decisions)
    // while outcomes stay open in the users' state: they are counted when their horizon ends.
    let model = cancel_model();
    let cfg = EngineConfig { outcome_horizon: Span::days(10), ..no_warm_up() };
    let mut engine = Engine::new(&model, policy_without_control(), cfg);
    let events = merge(
        vec![ev("R", "cancel", T0 + HOUR_MS), ev_amount("R", "login", T0 + 12 * DAY_MS, 3.0)],
        heartbeat("B", T0, T0 + 20 * DAY_MS, 4 * HOUR_MS),
    );
    let (before, after): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| e.ts < T0 + 5 * DAY_MS);
    assert_eq!(of_user(&run(&mut engine, &before), "R").len(), 1);
    engine.counters = Default::default();
    run(&mut engine, &after);
    let cells = &engine.counters.outcomes;
    assert_eq!(cells.len(), 1, "{cells:?}");
    assert_eq!(
        (cells[0].retained, cells[0].churned, cells[0].spend),
        (0, 1, 0.0),
        "R's only comeback is after the horizon"
    );
}

// ---------------------------------------------------------------------------------------------
// Daily cadence (engine.score_at)
// ---------------------------------------------------------------------------------------------

fn replay_events(engine: &mut Engine, events: &[ActivityEvent<'_>]) -> Vec<Intervention> {
    let mut out = run(engine, events);
    out.iter_mut().for_each(|iv| iv.emitted_at.clear());
    out
}

/// With `score_at` set, every decision is made at that UTC time of day, for active and silent
/// users alike, never on an event; the scores are those of the feature path at that instant.
#[test]
fn daily_cadence_decides_only_at_the_time_of_day() {
    let t = trained();
    for (text, offset) in [("00:00", 0), ("06:30", 6 * HOUR_MS + 30 * MINUTE_MS)] {
        let cfg: EngineConfig = toml::from_str(&format!("warm_up = \"off\"\nscore_at = \"{text}\"\n")).unwrap();
        assert_eq!(cfg.score_at.map(|s| s.to_string()).as_deref(), Some(text));
        let mut engine = Engine::new(&t.model, policy_without_control(), cfg);
        let ivs = replay_events(&mut engine, &t.events);
        assert!(ivs.len() > 100, "{text}: {} decisions", ivs.len());
        assert_eq!(engine.counters.scored_on_event, 0);
        for iv in &ivs {
            assert_eq!(ts_of(iv).rem_euclid(DAY_MS), offset, "{iv:?}");
        }
        assert!(
            ivs.iter().any(|iv| iv.trigger == Trigger::Event) && ivs.iter().any(|iv| iv.trigger == Trigger::Silence)
        );
        // The same score as `score` computes at that instant (a sample of the decisions).
        let log = EventLog::load(&t.events_path).unwrap();
        let picked: Vec<&Intervention> = ivs.iter().step_by((ivs.len() / 30).max(1)).collect();
        let times: Vec<Millis> = picked.iter().map(|iv| ts_of(iv)).collect();
        let mut got = std::collections::HashMap::new();
        churnguard::model::export::score_at(&log, &t.model, &Default::default(), 0, &times, |s| {
            got.insert((s.user_id.clone(), s.at), s.score);
        });
        for iv in picked {
            assert!((got[&(iv.user_id.clone(), ts_of(iv))] - iv.score).abs() < 1e-12, "{iv:?}");
        }
    }
    // A user active every hour is scored once a day, at 00:00, not on each event.
    let cfg = EngineConfig { score_at: Some("00:00".parse().unwrap()), ..no_warm_up() };
    let mut engine = Engine::new(&recency_model(), policy_surfacing_every_score(), cfg);
    let ivs = run(&mut engine, &heartbeat("a", T0 + HOUR_MS, T0 + 5 * DAY_MS, HOUR_MS));
    let times: Vec<Millis> = ivs.iter().map(ts_of).collect();
    assert_eq!(times, (1..5).map(|d| T0 + d * DAY_MS).collect::<Vec<_>>());
}

/// Unset, `score_at` changes nothing: the config reads as before and the decisions are the
/// per-event ones (the other tests in this file pin those).
#[test]
fn without_score_at_the_cadence_is_per_event() {
    let cfg: EngineConfig = toml::from_str("warm_up = \"off\"\n").unwrap();
    assert_eq!(cfg, no_warm_up());
    assert_eq!(cfg.score_at, None);
    assert!(!toml::to_string(&cfg).unwrap().contains("score_at"));
    for bad in ["24:00", "7", "12:60", "noon"] {
        let err = toml::from_str::<EngineConfig>(&format!("score_at = \"{bad}\"\n")).unwrap_err().to_string();
        assert!(err.contains("HH:MM"), "{bad}: {err}");
    }
    let t = trained();
    let mut engine = Engine::new(&t.model, PolicyConfig::default(), cfg);
    let ivs = replay_events(&mut engine, &t.events);
    assert!(engine.counters.scored_on_event > 0);
    assert!(ivs.iter().any(|iv| ts_of(iv).rem_euclid(DAY_MS) != 0));
}
