//! The optional value-aware decision rule (`[policy.value]`) on a replay of simulated events.

use std::path::Path;

use churnguard::engine::{Engine, EngineConfig, EngineCounters, WarmUp};
use churnguard::event::DEFAULT_MAX_EVENT_BYTES;
use churnguard::intervention::Intervention;
use churnguard::model::ModelArtifact;
use churnguard::pipeline::replay::{self, ReplaySink};
use churnguard::policy::{default_actions, PolicyConfig, ValueRule};
use churnguard::sim::{self, SimConfig};
use churnguard::time::Span;

fn run(events: &Path, policy: PolicyConfig) -> (Vec<Intervention>, EngineCounters) {
    let model = ModelArtifact::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json")).unwrap();
    let cfg = EngineConfig { warm_up: WarmUp::For(Span::days(30)), ..EngineConfig::default() };
    let mut engine = Engine::new(&model, PolicyConfig { control_fraction: 0.0, ..policy }, cfg);
    let mut out = Vec::new();
    let s = replay::replay(
        events,
        DEFAULT_MAX_EVENT_BYTES,
        &mut engine,
        ReplaySink { interventions: &mut out, control: None },
    )
    .unwrap();
    let recs =
        out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    (recs, s.counters)
}

fn key(r: &Intervention) -> (String, String, String) {
    (r.intervention_id.clone(), r.tier.clone(), r.action.clone())
}

#[test]
fn the_value_rule_drops_what_does_not_pay_and_keeps_the_tiers_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let mut f = std::fs::File::create(&events).unwrap();
    sim::simulate::<_, std::io::Sink>(
        &SimConfig { users: 3000, days: 90, seed: 5, ..SimConfig::default() },
        &mut f,
        None,
    )
    .unwrap();
    drop(f);
    let all_actions: Vec<String> = default_actions().values().flat_map(|m| m.values().cloned()).collect();

    let (plain, c) = run(&events, PolicyConfig::default());
    assert!(!plain.is_empty());
    assert_eq!(c.suppressed_value, 0);

    // Every action the same uplift, nothing costs, every user worth 1: every decision pays, and
    // the tie keeps the table's action: exactly the records of the threshold tiers.
    let same = ValueRule {
        uplift: all_actions.iter().map(|a| (a.clone(), 0.1)).collect(),
        value_feature: String::new(),
        base_value: 1.0,
        ..ValueRule::default()
    };
    let (with_rule, c) = run(&events, PolicyConfig { value: Some(same), ..PolicyConfig::default() });
    assert_eq!(with_rule.iter().map(key).collect::<Vec<_>>(), plain.iter().map(key).collect::<Vec<_>>());
    assert_eq!(c.suppressed_value, 0);

    // Nothing has uplift and every action costs: nothing is sent, and every drop is counted.
    let none = ValueRule { default_cost: 1.0, ..ValueRule::default() };
    let (dropped, c) = run(&events, PolicyConfig { value: Some(none), ..PolicyConfig::default() });
    assert!(dropped.is_empty());
    assert!(c.suppressed_value >= plain.len() as u64, "{} < {}", c.suppressed_value, plain.len());

    // Only the cheap email pays for users who spent little; the coupon only for big spenders.
    let mixed = ValueRule {
        uplift: [("coupon".to_string(), 0.10), ("reminder_email".to_string(), 0.02)].into(),
        cost: [("coupon".to_string(), 5.0), ("reminder_email".to_string(), 0.1)].into(),
        default_cost: 1.0,
        value_feature: "amount.90d".into(),
        base_value: 0.0,
    };
    let (chosen, c) = run(&events, PolicyConfig { value: Some(mixed), ..PolicyConfig::default() });
    assert!(c.suppressed_value > 0);
    assert!(!chosen.is_empty());
    for r in &chosen {
        assert!(r.action == "coupon" || r.action == "reminder_email", "{}", r.action);
        assert_eq!(r.stage, churnguard::policy::Stage::Dormant);
    }
}
