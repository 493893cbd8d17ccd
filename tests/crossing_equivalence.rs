//! Silent users are rescored only where the score bound says a decision could change (issue 9,
//! "Silent users by computed crossing"). These tests hold that skipping to exactly the same
//! decisions as polling every due time: the same records, in the same order, bit for bit.
//!
//! The reference is the same engine with `EngineConfig::exhaustive_polling` on, which rescores
//! every silent user at every due time as before the change. Event streams are random: users go
//! silent for hours to months, so they cross tiers, get suppressed, are evicted and come back,
//! under several policies (cooldowns, resending while silent, the value rule, control group),
//! both cadences (per event and the daily `score_at`), warm-up, a shadow model, and a model swap.

use std::borrow::Cow;

use churnguard::decision::Decision;
use churnguard::engine::{Engine, EngineConfig, EngineCounters, TimeOfDay, WarmUp};
use churnguard::event::ActivityEvent;
use churnguard::features::spec::FeatureSpec;
use churnguard::model::artifact::{ModelArtifact, TierThreshold};
use churnguard::policy::{PolicyConfig, ValueRule};
use churnguard::time::{Millis, Span, DAY_MS, HOUR_MS, MINUTE_MS};
use proptest::prelude::*;

/// 2026-01-01T00:00:00Z.
const T0: Millis = 1_767_225_600_000;
const TYPES: [&str; 7] = ["login", "page_view", "purchase", "support_ticket", "payment_failed", "refund", "logout"];

/// Everything a decision record says, with floats as bits: equal means byte-identical output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    user: String,
    at: Millis,
    watermark: Millis,
    score: u64,
    threshold: u64,
    tier: String,
    action: String,
    stage: String,
    reasons: Vec<(String, u64, u64)>,
    trigger: String,
    control: bool,
    model: String,
}

fn record(d: &Decision<'_>) -> Record {
    Record {
        user: d.user_id.to_string(),
        at: d.at,
        watermark: d.watermark,
        score: d.score.to_bits(),
        threshold: d.threshold.to_bits(),
        tier: d.tier.to_string(),
        action: d.action.to_string(),
        stage: d.stage.as_str().to_string(),
        reasons: d
            .reasons
            .iter()
            .map(|r| (d.feature_names[r.feature].clone(), r.value.to_bits(), r.contribution.to_bits()))
            .collect(),
        trigger: format!("{:?}", d.trigger),
        control: d.control,
        model: d.model_version.to_string(),
    }
}

#[derive(Debug, Clone)]
struct Ev {
    user: u8,
    /// Time since the previous event of the stream.
    gap: Millis,
    /// How far before the stream's clock the event is stamped (out of order, or late).
    back: Millis,
    kind: usize,
    amount: Option<i32>,
}

fn gap() -> impl Strategy<Value = Millis> {
    prop_oneof![
        3 => (0i64..120).prop_map(|m| m * MINUTE_MS),
        3 => (1i64..48).prop_map(|h| h * HOUR_MS + 7),
        2 => (2i64..20).prop_map(|d| d * DAY_MS + 13 * MINUTE_MS),
        1 => (20i64..150).prop_map(|d| d * DAY_MS + 5 * HOUR_MS),
    ]
}

fn events() -> impl Strategy<Value = Vec<Ev>> {
    let one = (
        0u8..6,
        gap(),
        prop_oneof![4 => Just(0i64), 1 => 0i64..8 * HOUR_MS],
        0usize..TYPES.len(),
        prop::option::weighted(0.3, -3000i32..20000),
    )
        .prop_map(|(user, gap, back, kind, amount)| Ev { user, gap, back, kind, amount });
    prop::collection::vec(one, 1..60)
}

#[derive(Debug, Clone)]
struct Setup {
    coefs: Vec<(usize, f64)>,
    intercept: f64,
    tiers: Vec<f64>,
    cooldown_days: i64,
    resend_while_silent: bool,
    control: bool,
    value_rule: bool,
    interval: Millis,
    ttl_days: i64,
    score_at: Option<Millis>,
    lateness: Millis,
    warm_up_days: Option<i64>,
    shadow: bool,
    /// Swap to a second model after this many events (none if past the end).
    swap_after: usize,
}

fn setup() -> impl Strategy<Value = Setup> {
    let n = FeatureSpec::default().feature_names().len();
    (
        (prop::collection::vec((0..n, -1.5f64..1.5), 1..8), 0.3f64..2.0, -7.0f64..-0.5),
        prop::collection::btree_set(5u32..96, 1..4),
        (
            prop_oneof![Just(0i64), Just(2), Just(7)],
            any::<bool>(),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.25),
        ),
        (
            prop_oneof![Just(6 * HOUR_MS), Just(DAY_MS), Just(3 * DAY_MS + 17 * MINUTE_MS)],
            prop_oneof![Just(45i64), Just(120)],
            prop::option::weighted(0.3, prop_oneof![Just(0i64), Just(6 * HOUR_MS + 30 * MINUTE_MS)]),
            prop_oneof![Just(0i64), Just(HOUR_MS), Just(6 * HOUR_MS)],
        ),
        (prop::option::weighted(0.3, 1i64..10), prop::bool::weighted(0.3), 0usize..90),
    )
        .prop_map(
            |((mut coefs, recency, intercept), tiers, policy, engine, (warm_up_days, shadow, swap_after))| {
                // Recency always raises risk, so silent users cross tiers as they age.
                coefs.push((usize::MAX, recency));
                let mut tiers: Vec<f64> = tiers.into_iter().map(|t| f64::from(t) / 100.0).collect();
                tiers.reverse();
                Setup {
                    coefs,
                    intercept,
                    tiers,
                    cooldown_days: policy.0,
                    resend_while_silent: policy.1,
                    control: policy.2,
                    value_rule: policy.3,
                    interval: engine.0,
                    ttl_days: engine.1,
                    score_at: engine.2,
                    lateness: engine.3,
                    warm_up_days,
                    shadow,
                    swap_after,
                }
            },
        )
}

fn model(s: &Setup, version: &str, scale: f64) -> ModelArtifact {
    let spec = FeatureSpec::default();
    let names = spec.feature_names();
    let mut coefs: Vec<(String, f64)> = Vec::new();
    for &(i, w) in &s.coefs {
        let name = if i == usize::MAX { "recency".to_string() } else { names[i].clone() };
        match coefs.iter_mut().find(|(n, _)| *n == name) {
            Some(c) => c.1 += w * scale,
            None => coefs.push((name, w * scale)),
        }
    }
    let coefs: Vec<(&str, f64)> = coefs.iter().map(|(n, w)| (n.as_str(), *w)).collect();
    let names = ["high", "medium", "low"];
    let tiers = s.tiers.iter().zip(names).map(|(t, n)| TierThreshold { name: n.into(), min_score: *t }).collect();
    ModelArtifact::from_weights(spec, version, &coefs, s.intercept * scale, tiers).expect("model")
}

fn engine(s: &Setup, exhaustive: bool) -> Engine {
    let policy = PolicyConfig {
        cooldown: Span::days(s.cooldown_days),
        resend_while_silent: s.resend_while_silent,
        control_fraction: if s.control { 0.3 } else { 0.0 },
        value: s.value_rule.then(|| ValueRule {
            uplift: [("coupon".to_string(), 0.1), ("reminder_email".to_string(), 0.03)].into(),
            cost: [("coupon".to_string(), 4.0)].into(),
            default_cost: 0.05,
            value_feature: "amount.90d".into(),
            base_value: 10.0,
            ..ValueRule::default()
        }),
        ..PolicyConfig::default()
    };
    let cfg = EngineConfig {
        rescore_interval: Span(s.interval),
        state_ttl: Span::days(s.ttl_days),
        allowed_lateness: Span(s.lateness),
        score_at: s.score_at.map(TimeOfDay),
        warm_up: s.warm_up_days.map_or(WarmUp::Off, |d| WarmUp::For(Span::days(d))),
        exhaustive_polling: exhaustive,
        ..EngineConfig::default()
    };
    let mut e = Engine::new(&model(s, "live-1", 1.0), policy, cfg);
    if s.shadow {
        e.set_shadow(&model(s, "shadow-1", 1.3)).expect("same spec");
    }
    e
}

/// Feed the stream, swap the model where the setup says, then let the clock run past every
/// eviction; returns every decision in emission order, and the counters.
fn run(s: &Setup, evs: &[Ev], exhaustive: bool) -> (Vec<Record>, EngineCounters) {
    let mut e = engine(s, exhaustive);
    let mut out = Vec::new();
    let mut clock = T0;
    for (i, ev) in evs.iter().enumerate() {
        if i == s.swap_after {
            e.swap_model(&model(s, "live-2", 0.8)).expect("same spec");
        }
        clock += ev.gap;
        let user = format!("u{}", ev.user);
        let event = ActivityEvent {
            user_id: Cow::Owned(user),
            event_type: Cow::Borrowed(TYPES[ev.kind]),
            ts: clock - ev.back,
            amount: ev.amount.map(|c| f64::from(c) / 100.0),
        };
        e.ingest_decisions(&event, &mut |d| out.push(record(d)));
    }
    // Halfway to the end, then past every TTL: idle clock moves as a service's wall clock.
    e.advance_watermark_decisions(clock + 20 * DAY_MS, &mut |d| out.push(record(d)));
    e.advance_watermark_decisions(clock + 200 * DAY_MS, &mut |d| out.push(record(d)));
    (out, e.counters.clone())
}

/// Counters that describe decisions, rather than how many scores were computed (rescorings,
/// score buckets, shadow agreements, and cooldown and already-sent suppressions count computed
/// rescorings only).
fn decision_counters(c: &EngineCounters) -> Vec<u64> {
    vec![
        c.events_applied,
        c.events_late,
        c.events_out_of_order,
        c.users_created,
        c.users_evicted,
        c.scored_on_event,
        c.interventions,
        c.control,
        c.held_warm_up,
        c.suppressed_value,
        c.shadow_disagree,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn skipping_quiet_rescorings_gives_exactly_the_polled_decisions(s in setup(), evs in events()) {
        let (polled, pc) = run(&s, &evs, true);
        let (skipped, sc) = run(&s, &evs, false);
        prop_assert_eq!(&skipped, &polled);
        prop_assert_eq!(decision_counters(&sc), decision_counters(&pc));
        prop_assert_eq!(&sc.outcomes, &pc.outcomes);
        prop_assert!(sc.scored_on_timer <= pc.scored_on_timer);
    }
}

/// Risk rises with recency alone, from `intercept`; daily due times, and nothing resent while
/// silent.
fn rising_with_silence(intercept: f64) -> Setup {
    Setup {
        coefs: vec![(usize::MAX, 1.2)],
        intercept,
        tiers: vec![0.8, 0.5],
        cooldown_days: 7,
        resend_while_silent: false,
        control: false,
        value_rule: false,
        interval: DAY_MS,
        ttl_days: 120,
        score_at: None,
        lateness: HOUR_MS,
        warm_up_days: None,
        shadow: false,
        swap_after: usize::MAX,
    }
}

/// Six users who go quiet for weeks at a time, scored by silence alone with `intercept`: the
/// decisions and counters of the polling engine, then of the skipping one.
fn weeks_of_silence(intercept: f64) -> (Vec<Record>, EngineCounters, Vec<Record>, EngineCounters) {
    let s = rising_with_silence(intercept);
    let evs: Vec<Ev> = (0..40)
        .map(|i| Ev { user: (i % 6) as u8, gap: (1 + i % 5) * 3 * DAY_MS, back: 0, kind: 0, amount: None })
        .collect();
    let (polled, pc) = run(&s, &evs, true);
    let (skipped, sc) = run(&s, &evs, false);
    (polled, pc, skipped, sc)
}

/// The skip is not vacuous: on a stream where users go quiet for weeks, most rescorings of the
/// polling engine are not computed, and yet the decisions are the same.
#[test]
fn most_quiet_rescorings_are_skipped() {
    let (polled, pc, skipped, sc) = weeks_of_silence(-5.5);
    assert_eq!(skipped, polled);
    assert!(!polled.is_empty());
    assert!(
        sc.scored_on_timer * 3 < pc.scored_on_timer,
        "{} of {} rescorings computed",
        sc.scored_on_timer,
        pc.scored_on_timer
    );
}

/// A user scored far below every tier on an event tries a bound at their first silent due time,
/// before any score (the engine's `Quiet::TRY`): silences that never come near a tier compute no
/// score at all, from the first due time to the eviction, and decide as polling does.
#[test]
fn silences_far_below_every_tier_compute_no_score() {
    let (polled, pc, skipped, sc) = weeks_of_silence(-30.0);
    assert_eq!(skipped, polled);
    assert!(pc.scored_on_timer > 100, "polling rescored {} times", pc.scored_on_timer);
    assert_eq!(sc.users_evicted, 6, "every silence ran to the eviction");
    assert_eq!(sc.scored_on_timer, 0, "scores computed while silent");
}

/// A silence proven quiet holds a timer only where a proof ends, not one per due time: each
/// bound covers as many due times again as the silence so far (so a user who comes back soon
/// wasted little), and the last one reaches the eviction. A user scored far below every tier
/// and then silent for good fires 8 timers (days 1, 3, 7, ..., 63, 119 and the eviction at
/// 120), where the polling engine fires 120.
#[test]
fn a_quiet_silence_holds_a_timer_only_where_a_proof_ends() {
    let s = rising_with_silence(-30.0);
    let due_times = |exhaustive: bool| {
        let mut e = engine(&s, exhaustive);
        let ev =
            ActivityEvent { user_id: Cow::Borrowed("u0"), event_type: Cow::Borrowed("login"), ts: T0, amount: None };
        e.ingest_decisions(&ev, &mut |_| panic!("no decision far below every tier"));
        let mut days = Vec::new();
        // Each step completes the bucket of that day's due time (a 24th of the interval).
        for day in 1..=121 {
            e.advance_watermark_decisions(T0 + day * DAY_MS + 2 * HOUR_MS, &mut |_| panic!("no decision"));
            e.for_each_user(|u| {
                let d = (u.next_due - T0) / DAY_MS;
                if days.last() != Some(&d) {
                    days.push(d);
                }
            });
        }
        assert_eq!(e.counters.users_evicted, 1);
        days
    };
    assert_eq!(due_times(true), (2..=120).collect::<Vec<_>>());
    assert_eq!(due_times(false), [3, 7, 15, 31, 63, 119, 120]);
}

/// A model swap voids every proof of quiet, and a user whose timer skipped a span gets it back
/// where polling has it: the first of their due times in a bucket not drained yet. Here the
/// swap comes with the clock partway into a bucket and past one of the user's due times, which
/// polling has not fired (a due time fires with its whole bucket): the new model scores it
/// there, at the next event, as polling does, not a whole interval later.
#[test]
fn a_swap_puts_a_skipped_timer_back_where_polling_has_it() {
    let s = Setup {
        coefs: vec![(0, 0.0), (usize::MAX, 0.3)],
        intercept: -2.64,
        tiers: vec![0.13],
        cooldown_days: 0,
        resend_while_silent: false,
        control: false,
        value_rule: false,
        interval: 6 * HOUR_MS,
        ttl_days: 45,
        score_at: None,
        lateness: HOUR_MS,
        warm_up_days: None,
        shadow: false,
        swap_after: 2,
    };
    // u0 goes quiet; u1's event two days on moves the clock (and the pass proves u0's span),
    // the swap follows, and u0's next event fires their due time in the bucket left open.
    let ev = |user: u8, gap: Millis, back: Millis| Ev { user, gap, back, kind: 0, amount: None };
    let evs = [ev(0, 43 * MINUTE_MS, 47 * MINUTE_MS), ev(1, 2 * DAY_MS + 13 * MINUTE_MS, 0), ev(0, 0, 0)];
    let (polled, _) = run(&s, &evs, true);
    let (skipped, _) = run(&s, &evs, false);
    assert!(polled.iter().any(|r| r.model == "live-2" && r.trigger == "Silence"), "{polled:?}");
    assert_eq!(skipped, polled);
}

/// A restored engine has no proofs of quiet spans (they are not persisted): it rescores every
/// due time until its next computed scoring, and decides exactly as the polling engine.
#[test]
fn a_restored_skipping_engine_decides_as_the_polling_one() {
    use churnguard::engine::UserRecord;
    let s = Setup {
        coefs: vec![(usize::MAX, 1.1), (3, -0.4)],
        intercept: -5.0,
        tiers: vec![0.85, 0.6, 0.35],
        cooldown_days: 2,
        resend_while_silent: false,
        control: true,
        value_rule: false,
        interval: DAY_MS,
        ttl_days: 120,
        score_at: None,
        lateness: HOUR_MS,
        warm_up_days: None,
        shadow: false,
        swap_after: usize::MAX,
    };
    let evs: Vec<Ev> = (0..80)
        .map(|i| Ev {
            user: (i * 7 % 6) as u8,
            gap: (i % 4) * 2 * DAY_MS + HOUR_MS,
            back: 0,
            kind: i as usize % 5,
            amount: None,
        })
        .collect();
    let (polled, _) = run(&s, &evs, true);
    // The same run, cut after half the events into a snapshot and a fresh engine.
    let (head, tail) = evs.split_at(evs.len() / 2);
    let mut first = engine(&s, false);
    let mut out = Vec::new();
    let mut clock = T0;
    let feed = |e: &mut Engine, evs: &[Ev], out: &mut Vec<Record>, clock: &mut Millis| {
        for ev in evs {
            *clock += ev.gap;
            let event = ActivityEvent {
                user_id: Cow::Owned(format!("u{}", ev.user)),
                event_type: Cow::Borrowed(TYPES[ev.kind]),
                ts: *clock - ev.back,
                amount: ev.amount.map(|c| f64::from(c) / 100.0),
            };
            e.ingest_decisions(&event, &mut |d| out.push(record(d)));
        }
    };
    feed(&mut first, head, &mut out, &mut clock);
    let mut users = Vec::new();
    first.for_each_user(|u| {
        users.push(UserRecord {
            user_id: u.user_id.to_string(),
            narrow: u.narrow.to_vec(),
            wide: u.wide.to_vec(),
            next_due: u.next_due,
            memory: u.memory,
            outcome: u.outcome,
        })
    });
    let mut second = engine(&s, false);
    for u in &users {
        second.restore_user(&u.view()).expect("restores");
    }
    second.restore_clock(&first.clock_state()).expect("clock restores");
    feed(&mut second, tail, &mut out, &mut clock);
    second.advance_watermark_decisions(clock + 20 * DAY_MS, &mut |d| out.push(record(d)));
    second.advance_watermark_decisions(clock + 200 * DAY_MS, &mut |d| out.push(record(d)));
    assert_eq!(out, polled);
}

/// In the warm-up, a silent user scored at or above the lowest tier is held at every due time,
/// and their timer skips to where a bound stops proving it (the engine's `Quiet::HELD`). The
/// held decisions are still counted, each one, as polling counts them: for a span that runs to
/// the eviction (u0, whose TTL ends inside the warm-up), for spans that an event cuts short
/// (u1, active every 9 days into the decisions after the warm-up), and for a span that a model
/// swap voids (u2, silent since the start when the swap comes).
#[test]
fn held_warm_up_silences_skip_their_scores_and_count_every_held_decision() {
    let s = Setup { intercept: 0.5, ttl_days: 20, warm_up_days: Some(60), swap_after: 4, ..rising_with_silence(0.0) };
    let ev = |user: u8, gap: Millis| Ev { user, gap, back: 0, kind: 0, amount: None };
    let mut evs = vec![ev(0, 0), ev(1, HOUR_MS), ev(2, HOUR_MS)];
    evs.extend((0..11).map(|_| ev(1, 9 * DAY_MS)));
    let (polled, pc) = run(&s, &evs, true);
    let (skipped, sc) = run(&s, &evs, false);
    assert_eq!(skipped, polled);
    assert!(polled.iter().any(|r| r.user == "u1"), "u1 is decided on after the warm-up: {polled:?}");
    assert!(pc.held_warm_up > 50, "held while polling: {}", pc.held_warm_up);
    assert_eq!(sc.held_warm_up, pc.held_warm_up);
    assert_eq!(decision_counters(&sc), decision_counters(&pc));
    assert!(
        sc.scored_on_timer * 2 < pc.scored_on_timer,
        "{} of {} rescorings computed",
        sc.scored_on_timer,
        pc.scored_on_timer
    );
}
