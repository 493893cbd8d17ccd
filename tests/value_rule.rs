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
        uplift_from: None,
    };
    let (chosen, c) = run(&events, PolicyConfig { value: Some(mixed), ..PolicyConfig::default() });
    assert!(c.suppressed_value > 0);
    assert!(!chosen.is_empty());
    for r in &chosen {
        assert!(r.action == "coupon" || r.action == "reminder_email", "{}", r.action);
        assert_eq!(r.stage, churnguard::policy::Stage::Dormant);
    }
}

fn churnguard(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_churnguard"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `churnguard uplift --json` on hand-made files where `coupon` keeps 30 of 40 treated users
/// against 10 of 40 in control (+0.5) and `reminder_email` 10 of 40 against 20 of 40 (-0.25).
fn write_uplift_json(dir: &Path) -> std::path::PathBuf {
    use churnguard::time::{format_rfc3339_ms, DAY_MS};
    let t0 = churnguard::sim::DEFAULT_START_MS;
    let (mut events, mut iv, mut ctl) = (String::new(), String::new(), String::new());
    for (a, action, kept_treated, kept_control) in [(0, "coupon", 30, 10), (1, "reminder_email", 10, 20)] {
        for i in 0..80 {
            let user = format!("a{a}u{i:03}");
            let control = i >= 40;
            let kept = if control { i - 40 < kept_control } else { i < kept_treated };
            let mut ev = |ts: i64| {
                events.push_str(&format!(
                    "{{\"user_id\":\"{user}\",\"event_type\":\"login\",\"ts\":\"{}\"}}\n",
                    format_rfc3339_ms(ts)
                ))
            };
            ev(t0);
            if kept {
                ev(t0 + 20 * DAY_MS);
            }
            let at = format_rfc3339_ms(t0 + DAY_MS);
            let rec = serde_json::json!({
                "schema": "churnguard.intervention.v1", "intervention_id": format!("id-{user}"), "user_id": user,
                "score": 0.8, "threshold": 0.7, "tier": "high", "stage": "dormant", "action": action,
                "reasons": [], "model_version": "m", "event_time": at, "watermark": at, "trigger": "silence",
                "emitted_at": at, "control": control
            });
            let file = if control { &mut ctl } else { &mut iv };
            file.push_str(&format!("{rec}\n"));
        }
    }
    // The log runs past every record's 30-day horizon.
    events.push_str(&format!(
        "{{\"user_id\":\"end\",\"event_type\":\"login\",\"ts\":\"{}\"}}\n",
        format_rfc3339_ms(t0 + 60 * DAY_MS)
    ));
    let p = |n: &str| dir.join(n);
    std::fs::write(p("uplift-events.jsonl"), events).unwrap();
    std::fs::write(p("iv.jsonl"), iv).unwrap();
    std::fs::write(p("ctl.jsonl"), ctl).unwrap();
    let (ev, ivp, ctlp) = (p("uplift-events.jsonl"), p("iv.jsonl"), p("ctl.jsonl"));
    let o = churnguard(&[
        "uplift",
        "--events",
        ev.to_str().unwrap(),
        "--interventions",
        ivp.to_str().unwrap(),
        "--control",
        ctlp.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = p("uplift.json");
    std::fs::write(&out, &o.stdout).unwrap();
    out
}

/// A replay config: decisions from day 30, no control group, every user worth 100, nothing
/// costs; `value` completes `[policy.value]`.
fn replay_config(dir: &Path, name: &str, value: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "[engine]\nwarm_up = \"30d\"\n[policy]\ncontrol_fraction = 0.0\n[policy.value]\nvalue_feature = \"\"\nbase_value = 100.0\n{value}"
        ),
    )
    .unwrap();
    p
}

fn replay_with(dir: &Path, events: &Path, config: &Path, out: &str) -> (Vec<Intervention>, String) {
    let out = dir.join(out);
    let o = churnguard(&[
        "replay",
        "--model",
        "models/default.json",
        "--events",
        events.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let recs = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (recs, text(&o.stderr))
}

#[test]
fn replay_takes_the_uplift_from_an_uplift_json_file_and_never_sends_an_action_with_negative_uplift() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let uplift = write_uplift_json(d);
    let events = d.join("events.jsonl");
    let mut f = std::fs::File::create(&events).unwrap();
    sim::simulate::<_, std::io::Sink>(
        &SimConfig { users: 3000, days: 90, seed: 5, ..SimConfig::default() },
        &mut f,
        None,
    )
    .unwrap();
    drop(f);

    let from_file = replay_config(d, "from.toml", &format!("uplift_from = {:?}\n", uplift.display().to_string()));
    let (chosen, stderr) = replay_with(d, &events, &from_file, "from.jsonl");
    assert!(stderr.contains("policy.value.uplift_from: 2 action uplift(s) from"), "{stderr}");
    assert!(stderr.contains("coupon +50.0") && stderr.contains("reminder_email -25.0"), "{stderr}");
    assert!(!chosen.is_empty(), "the coupon pays for some users");
    // Only coupon has a positive uplift; reminder_email's is negative and every other action has
    // none: the rule sends coupons only.
    for r in &chosen {
        assert_eq!(r.action, "coupon", "{} chosen", r.action);
    }

    // The same table inline: the same decisions.
    let inline = replay_config(d, "inline.toml", "[policy.value.uplift]\ncoupon = 0.5\nreminder_email = -0.25\n");
    let (same, _) = replay_with(d, &events, &inline, "inline.jsonl");
    assert_eq!(same.iter().map(key).collect::<Vec<_>>(), chosen.iter().map(key).collect::<Vec<_>>());

    // With a positive uplift the email is sent: the check above could fail.
    let positive = replay_config(d, "positive.toml", "[policy.value.uplift]\ncoupon = 0.5\nreminder_email = 0.25\n");
    let (with_email, _) = replay_with(d, &events, &positive, "positive.jsonl");
    assert!(with_email.iter().any(|r| r.action == "reminder_email"));
}

#[test]
fn every_command_that_loads_config_reads_uplift_from_and_fails_fast_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let uplift = write_uplift_json(d);
    let service = |name: &str, path: &Path| {
        let p = d.join(name);
        std::fs::write(
            &p,
            format!(
                "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:1\"\n[policy.value]\nuplift_from = {:?}\n",
                path.display().to_string()
            ),
        )
        .unwrap();
        p
    };
    let good = service("good.toml", &uplift);
    let o = churnguard(&["config", "check", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("uplift_from = "), "{}", text(&o.stdout));
    assert!(text(&o.stderr).contains("policy.value.uplift_from: 2 action uplift(s)"), "{}", text(&o.stderr));

    let missing = d.join("missing.json");
    let bad = service("bad.toml", &missing);
    let bad_replay =
        replay_config(d, "bad-replay.toml", &format!("uplift_from = {:?}\n", missing.display().to_string()));
    let events = d.join("uplift-events.jsonl");
    let never = d.join("never.jsonl");
    let runs: [Vec<&str>; 3] = [
        vec!["config", "check", bad.to_str().unwrap()],
        vec!["run", "--config", bad.to_str().unwrap()],
        vec![
            "replay",
            "--model",
            "models/default.json",
            "--events",
            events.to_str().unwrap(),
            "--config",
            bad_replay.to_str().unwrap(),
            "--out",
            never.to_str().unwrap(),
        ],
    ];
    for args in runs {
        let started = std::time::Instant::now();
        let o = churnguard(&args);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("policy.value.uplift_from") && err.contains("cannot read"), "{args:?}: {err}");
        assert!(err.contains(&missing.display().to_string()), "{args:?}: {err}");
        // At start-up: before any broker is contacted (`run` would retry 127.0.0.1:1 for long).
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{args:?}");
    }
    assert!(!never.exists(), "replay wrote output despite the bad config");
}
