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

/// `churnguard uplift` on hand-made files: outcomes, censoring, costs, JSON and the report.
#[test]
fn uplift_command_reads_replay_files_and_writes_json_and_a_report() {
    use churnguard::time::{format_rfc3339_ms, DAY_MS};
    let dir = tempfile::tempdir().unwrap();
    let t0 = churnguard::sim::DEFAULT_START_MS;
    let mut events = String::new();
    let mut ev = |u: &str, ts: i64, amount: f64| {
        events.push_str(&format!(
            "{{\"user_id\":\"{u}\",\"event_type\":\"purchase\",\"ts\":\"{}\",\"amount\":{amount}}}\n",
            format_rfc3339_ms(ts)
        ));
    };
    let rec = |u: &str, ts: i64, control: bool| {
        let mut r = serde_json::json!({
            "schema": "churnguard.intervention.v1", "intervention_id": format!("id-{u}"), "user_id": u,
            "score": 0.8, "threshold": 0.7, "tier": "high", "stage": "dormant", "action": "coupon",
            "reasons": [], "model_version": "m", "event_time": format_rfc3339_ms(ts),
            "watermark": format_rfc3339_ms(ts), "trigger": "silence", "emitted_at": format_rfc3339_ms(ts),
            "control": control
        });
        r["control"] = serde_json::Value::Bool(control);
        format!("{r}\n")
    };
    let (mut iv, mut ctl) = (String::new(), String::new());
    // 40 treated users, 30 of them back within the horizon; 40 control users, 10 back.
    for i in 0..80 {
        let u = format!("u{i:07}");
        ev(&u, t0, 20.0);
        let control = i >= 40;
        let back = if control { i < 50 } else { i < 30 };
        if back {
            ev(&u, t0 + 20 * DAY_MS, 5.0);
        }
        let line = rec(&u, t0 + DAY_MS, control);
        if control {
            ctl.push_str(&line)
        } else {
            iv.push_str(&line)
        }
    }
    // Censored: decided 10 days before the data's end.
    iv.push_str(&rec("u9999999", t0 + 50 * DAY_MS, false));
    ev("u9999999", t0 + 60 * DAY_MS, 0.0);
    let p = |n: &str| dir.path().join(n);
    std::fs::write(p("events.jsonl"), events).unwrap();
    std::fs::write(p("iv.jsonl"), iv).unwrap();
    std::fs::write(p("ctl.jsonl"), ctl).unwrap();
    std::fs::write(p("costs.toml"), "[actions]\ncoupon = 2.0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_churnguard"))
        .args(["uplift", "--events"])
        .arg(p("events.jsonl"))
        .arg("--interventions")
        .arg(p("iv.jsonl"))
        .arg("--control")
        .arg(p("ctl.jsonl"))
        .arg("--costs")
        .arg(p("costs.toml"))
        .arg("--report")
        .arg(p("report"))
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["censored_treated"], 1);
    let overall = &v["groups"][0];
    assert_eq!(overall["treated"]["n"], 40);
    assert_eq!(overall["control"]["n"], 40);
    let d = overall["uplift"]["estimate"].as_f64().unwrap();
    assert!((d - 0.5).abs() < 1e-12, "{d}");
    assert_eq!(overall["significant"], true);
    let all = v["cost_benefit"]["lines"].as_array().unwrap().last().unwrap().clone();
    // 0.5 x 40 = 20 users; value 20 each (trailing spend): 400; cost 80; net 320; ROI 4.
    assert!((all["incremental_retained"]["estimate"].as_f64().unwrap() - 20.0).abs() < 1e-9);
    assert!((all["net_value"]["estimate"].as_f64().unwrap() - 320.0).abs() < 1e-9);
    assert!((all["roi"]["estimate"].as_f64().unwrap() - 4.0).abs() < 1e-9);
    assert!(p("report/index.html").exists());
}

/// The numbers inside `[+2.4, +15.4]`.
fn parse_interval(s: &str) -> Option<(f64, f64)> {
    let inner = s.split_once('[')?.1.split_once(']')?.0;
    let (lo, hi) = inner.split_once(',')?;
    Some((lo.trim().parse().ok()?, hi.trim().parse().ok()?))
}

/// `churnguard demo` ends with the uplift step: a closed loop with known effects, replay with the
/// control group, the uplift analysis. Its summary's first-record row must recover the true
/// effect, and the report and the files to rerun `uplift` on must exist.
#[test]
fn demo_prints_the_uplift_summary_writes_the_report_and_recovers_the_effect() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("demo-out");
    // A short live part (its 20 days end inside the warm-up, so it decides nothing) keeps the
    // test on the uplift step.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_churnguard"))
        .args(["demo", "--duration", "1s", "--users", "200", "--days", "20", "--day-seconds", "0.05"])
        .args(["--partitions", "2", "--http", "127.0.0.1:0", "--uplift-users", "3000", "--out"])
        .arg(&out_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "demo failed:\n{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let start = lines.iter().position(|l| *l == "== uplift: do the interventions work? ==").expect("uplift heading");
    let summary = &lines[start..];
    let header = summary.iter().position(|l| l.starts_with("action ")).expect("table header");
    assert!(summary[header].contains("95% CI") && summary[header].contains("true inside CI"), "{}", summary[header]);

    let overall = summary[header + 1];
    assert!(overall.starts_with("all actions "), "{overall}");
    let (lower, upper) = parse_interval(overall).unwrap_or_else(|| panic!("no interval in {overall:?}"));
    let after: Vec<&str> = overall.split_once(']').unwrap().1.split_whitespace().collect();
    let truth: f64 = after[0].parse().unwrap_or_else(|_| panic!("no true uplift in {overall:?}"));
    assert!(truth > 2.0, "the simulated effect should be visible, got {truth} points: {overall}");
    // Printed to 0.1 point: the interval covers the true effect on the treated.
    assert!(lower <= truth && truth <= upper, "true {truth} outside [{lower}, {upper}]: {overall}");
    assert_eq!(after[1], "yes", "{overall}");

    let actions: Vec<&str> = summary[header + 2..].iter().take_while(|l| !l.starts_with("effect:")).copied().collect();
    assert!(actions.len() >= 3, "one row per action expected: {actions:?}");
    assert!(actions.iter().any(|l| l.starts_with("coupon ")), "{actions:?}");

    let report_line = summary.iter().find_map(|l| l.strip_prefix("uplift report: ")).expect("report line");
    let report = std::path::PathBuf::from(report_line.split(" (").next().unwrap());
    assert_eq!(report, out_dir.join("uplift").join("index.html"));
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<svg"), "the report has plots");
    let rerun = summary.iter().find_map(|l| l.strip_prefix("rerun: churnguard uplift ")).expect("rerun line");
    for name in ["events.jsonl", "interventions.jsonl", "control.jsonl"] {
        let p = out_dir.join(name);
        assert!(rerun.contains(&p.display().to_string()), "{rerun}");
        assert!(std::fs::metadata(&p).unwrap().len() > 0, "{} is empty", p.display());
    }
}
