//! The closed loop end to end: simulate with a known treatment effect, replay the events with the
//! control group, run the uplift analysis on what replay wrote, and compare the measured uplift
//! with the true effect. The true effect is known from a counterfactual run: the same seed with
//! zero effect generates exactly the same history up to each user's first treatment, so the same
//! first records exist in both runs, and their outcomes differ only through the treatment.
//!
//! The second check is the honest one: with zero effect, the interval must cover zero.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use churnguard::engine::{Engine, EngineConfig, WarmUp};
use churnguard::event::DEFAULT_MAX_EVENT_BYTES;
use churnguard::intervention::Intervention;
use churnguard::model::ModelArtifact;
use churnguard::pipeline::replay::{self, ReplaySink};
use churnguard::policy::PolicyConfig;
use churnguard::sim::treatment::{simulate_treated, Effects, Treatment, TreatmentSummary};
use churnguard::sim::{self, SimConfig};
use churnguard::time::Span;
use churnguard::uplift::{self, outcome, GroupResult};

const HORIZON: Span = Span::days(30);

fn model() -> ModelArtifact {
    ModelArtifact::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json")).unwrap()
}

/// Half the users in control for power; a 30-day warm-up so most of the window yields decisions.
fn policy() -> PolicyConfig {
    PolicyConfig { control_fraction: 0.5, ..PolicyConfig::default() }
}

fn engine_cfg() -> EngineConfig {
    EngineConfig { warm_up: WarmUp::For(Span::days(30)), ..EngineConfig::default() }
}

fn cfg() -> SimConfig {
    SimConfig { users: 5000, days: 150, seed: 2026, ..SimConfig::default() }
}

struct Run {
    events: Vec<u8>,
    loop_summary: TreatmentSummary,
}

fn closed_loop(model: &ModelArtifact, effect: f64) -> Run {
    let effects = Effects { per_action: [("*".to_string(), effect)].into(), duration: Span::days(30) };
    let t = Treatment { model, policy: policy(), engine: engine_cfg(), effects };
    let mut events = Vec::new();
    let (_, loop_summary) = simulate_treated::<_, std::io::Sink>(&cfg(), &t, &mut events, None).unwrap();
    Run { events, loop_summary }
}

/// `replay --out --control-out` on the events, then `uplift` on the files it wrote.
fn replay_and_measure(
    model: &ModelArtifact,
    dir: &Path,
    name: &str,
    run: &Run,
) -> (Vec<GroupResult>, outcome::Outcomes) {
    let events = dir.join(format!("{name}.jsonl"));
    std::fs::write(&events, &run.events).unwrap();
    let (iv_path, ctl_path) = (dir.join(format!("{name}.iv.jsonl")), dir.join(format!("{name}.ctl.jsonl")));
    let mut engine = Engine::new(model, policy(), engine_cfg());
    let (mut iv, mut ctl) = (std::fs::File::create(&iv_path).unwrap(), std::fs::File::create(&ctl_path).unwrap());
    replay::replay(
        &events,
        DEFAULT_MAX_EVENT_BYTES,
        &mut engine,
        ReplaySink { interventions: &mut iv, control: Some(&mut ctl as &mut dyn Write) },
    )
    .unwrap();
    drop((iv, ctl));
    let mut records = outcome::load_records(&iv_path).unwrap();
    records.extend(outcome::load_records(&ctl_path).unwrap());

    // The loop's engine saw the stream replay saw: the same decisions.
    let ids = |rs: &[Intervention]| {
        let mut v: Vec<(String, bool)> = rs.iter().map(|r| (r.intervention_id.clone(), r.control)).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&records), ids(&run.loop_summary.records), "{name}: loop and replay decided differently");

    let ue = outcome::UserEvents::load(&events).unwrap();
    let outcomes = outcome::decide(&ue, &records, HORIZON, Span::days(90)).unwrap();
    (uplift::analyse(&outcomes), outcomes)
}

fn group<'a>(groups: &'a [GroupResult], dimension: &str) -> &'a GroupResult {
    groups.iter().find(|g| g.dimension == dimension).unwrap()
}

#[test]
fn measured_uplift_recovers_the_simulated_effect_and_covers_zero_without_one() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();

    // Zero effect: the closed loop leaves the simulator's output byte for byte as it was.
    let none = closed_loop(&model, 0.0);
    let mut plain = Vec::new();
    sim::simulate::<_, std::io::Sink>(&cfg(), &mut plain, None).unwrap();
    assert!(none.events == plain, "zero effect changed the events");

    let treated = closed_loop(&model, 0.3);
    assert!(treated.loop_summary.turned > 0);

    let (with, with_outcomes) = replay_and_measure(&model, dir.path(), "effect", &treated);
    let (without, without_outcomes) = replay_and_measure(&model, dir.path(), "none", &none);

    // The true effect on the treated: each treated user's first uncensored record, retained with
    // the treatment (effect run) minus retained without it (same record in the zero-effect run).
    let mut first: HashMap<&str, &outcome::Outcome> = HashMap::new();
    for r in with_outcomes.records.iter().filter(|r| !r.control) {
        let e = first.entry(r.user_id.as_str()).or_insert(r);
        if r.event_time < e.event_time {
            *e = r;
        }
    }
    let counterfactual: HashMap<(&str, i64, &str), bool> = without_outcomes
        .records
        .iter()
        .map(|r| ((r.user_id.as_str(), r.event_time, r.tier.as_str()), r.retained))
        .collect();
    let (mut n, mut with_sum, mut without_sum) = (0u32, 0u32, 0u32);
    for r in first.values() {
        if let Some(&kept) = counterfactual.get(&(r.user_id.as_str(), r.event_time, r.tier.as_str())) {
            n += 1;
            with_sum += u32::from(r.retained);
            without_sum += u32::from(kept);
        }
    }
    // Every first record exists in the counterfactual run: the histories agree up to it.
    assert_eq!(n as usize, first.len());
    let true_effect = f64::from(with_sum) / f64::from(n) - f64::from(without_sum) / f64::from(n);

    let measured = group(&with, "overall_first_per_user");
    let ci = measured.uplift.unwrap();
    eprintln!(
        "effect 0.3: true uplift on the treated {true_effect:.4} ({n} users); measured {:.4} [{:.4}, {:.4}], treated {} control {}",
        ci.estimate, ci.lower, ci.upper, measured.treated.n, measured.control.n
    );
    assert!(true_effect > 0.02, "the simulated effect should be visible: {true_effect}");
    assert!(ci.lower <= true_effect && true_effect <= ci.upper, "true {true_effect} outside {ci:?}");
    assert!(measured.significant, "{measured:?}");

    // The honest test: no effect, and the interval covers zero.
    for dim in ["overall_first_per_user", "overall"] {
        let g = group(&without, dim);
        let ci = g.uplift.unwrap();
        eprintln!(
            "effect 0 ({dim}): measured {:.4} [{:.4}, {:.4}], treated {} control {}",
            ci.estimate, ci.lower, ci.upper, g.treated.n, g.control.n
        );
        assert!(ci.lower <= 0.0 && 0.0 <= ci.upper, "{dim}: {ci:?}");
    }
}
