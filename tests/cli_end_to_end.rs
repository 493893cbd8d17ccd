//! The real `churnguard` binary, end to end: simulate -> train (with report) -> evaluate ->
//! replay, plus bad input and bad configuration.
//!
//! The simulated log and the trained model are built once per test binary and shared.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use churnguard::intervention::{Intervention, Trigger};
use churnguard::model::ModelArtifact;
use churnguard::sim::DEFAULT_START_MS;
use churnguard::time::{format_rfc3339_ms, DAY_MS};

/// `YYYY-MM-DD` of simulator day `n` (the simulator starts 2026-01-01).
fn day(n: i64) -> String {
    format_rfc3339_ms(DEFAULT_START_MS + n * DAY_MS)[..10].to_string()
}

fn churnguard(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_churnguard")).args(args).current_dir(dir).output().expect("run churnguard")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run and require success, returning the output.
fn ok(dir: &Path, args: &[&str]) -> Output {
    let o = churnguard(dir, args);
    assert!(
        o.status.success(),
        "churnguard {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    o
}

/// Run and require failure, returning stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let o = churnguard(dir, args);
    assert!(!o.status.success(), "churnguard {} should have failed:\nstderr: {}", args.join(" "), stderr(&o));
    stderr(&o)
}

struct Pipeline {
    dir: tempfile::TempDir,
    model: ModelArtifact,
}

impl Pipeline {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// simulate + train, once.
fn pipeline() -> &'static Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        ok(
            d,
            &[
                "simulate",
                "--users",
                "3000",
                "--days",
                "150",
                "--seed",
                "11",
                "--out",
                "ev.jsonl",
                "--truth",
                "truth.csv",
            ],
        );
        let cutoff = day(100);
        ok(
            d,
            &[
                "train",
                "--events",
                "ev.jsonl",
                "--cutoff",
                &cutoff,
                "--horizon",
                "30d",
                "--cutoffs",
                "2",
                "--every",
                "14d",
                "--out",
                "model.json",
                "--report",
                "rep/",
            ],
        );
        let model = ModelArtifact::load(&d.join("model.json")).expect("train wrote a loadable model");
        Pipeline { dir, model }
    })
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::to_string)
        .collect()
}

fn parse_interventions(path: &Path) -> Vec<Intervention> {
    read_lines(path)
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("{} line {}: {e}: {l}", path.display(), i + 1)))
        .collect()
}

#[test]
fn simulate_writes_events_and_truth() {
    let p = pipeline();
    let events = read_lines(&p.path("ev.jsonl"));
    assert!(events.len() > 50_000, "{} events", events.len());
    let truth = read_lines(&p.path("truth.csv"));
    assert_eq!(truth[0], "user_id,signup_ts,churn_ts,reactivated_ts,segment");
    assert_eq!(truth.len(), 3001, "header + one row per user");
}

#[test]
fn train_writes_a_valid_model_and_an_html_report() {
    let p = pipeline();
    assert!(p.model.model_version.starts_with("cg-"), "{}", p.model.model_version);
    assert_eq!(p.model.training.cutoffs.len(), 2);
    assert!(!p.model.thresholds.tiers.is_empty());
    let html = std::fs::read_to_string(p.path("rep/index.html")).expect("rep/index.html");
    assert!(html.contains("<svg"), "the report has inline SVG plots");
    assert!(html.contains(&p.model.model_version));
}

#[test]
fn evaluate_prints_metrics_as_json() {
    let p = pipeline();
    let cutoff = day(115);
    let o = ok(
        p.dir.path(),
        &[
            "evaluate",
            "--model",
            "model.json",
            "--events",
            "ev.jsonl",
            "--cutoff",
            &cutoff,
            "--horizon",
            "30d",
            "--json",
        ],
    );
    let stdout = String::from_utf8(o.stdout).expect("utf-8");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let obj = v.as_object().expect("a JSON object");
    for key in ["roc_auc", "pr_auc", "log_loss", "brier", "n_users", "churn_rate"] {
        assert!(obj.contains_key(key), "missing {key} in {stdout}");
    }
    let auc = obj["roc_auc"].as_f64().expect("roc_auc is a number");
    assert!(auc > 0.7 && auc < 0.99, "ROC AUC {auc}: learnable but not trivial");
    assert!(obj["n_users"].as_u64().unwrap() > 1000);
    let rate = obj["churn_rate"].as_f64().unwrap();
    assert!(rate > 0.05 && rate < 0.6, "churn rate {rate}");
    for key in ["pr_auc", "log_loss", "brier"] {
        assert!(obj[key].as_f64().is_some_and(f64::is_finite), "{key} in {stdout}");
    }
}

#[test]
fn evaluate_refuses_a_censored_horizon() {
    let p = pipeline();
    // Day 140 + 30d runs past the 150 days of data.
    let cutoff = day(140);
    let err = fails(
        p.dir.path(),
        &[
            "evaluate",
            "--model",
            "model.json",
            "--events",
            "ev.jsonl",
            "--cutoff",
            &cutoff,
            "--horizon",
            "30d",
            "--json",
        ],
    );
    assert!(err.contains("censored"), "{err}");
}

#[test]
fn replay_writes_interventions_of_this_model() {
    let p = pipeline();
    let o = ok(
        p.dir.path(),
        &["replay", "--model", "model.json", "--events", "ev.jsonl", "--out", "iv.jsonl", "--control-out", "ctl.jsonl"],
    );
    assert!(stderr(&o).contains("replayed"), "{}", stderr(&o));
    let ivs = parse_interventions(&p.path("iv.jsonl"));
    let ctl = parse_interventions(&p.path("ctl.jsonl"));
    assert!(ivs.len() > 100, "{} interventions", ivs.len());
    assert!(!ctl.is_empty(), "the default 10% control group holds some back");
    for iv in ivs.iter().chain(&ctl) {
        assert_eq!(iv.model_version, p.model.model_version);
        assert_eq!(iv.schema, "churnguard.intervention.v1");
        assert!(p.model.thresholds.tiers.iter().any(|t| t.name == iv.tier), "{}", iv.tier);
        assert!(iv.score >= iv.threshold, "{iv:?}");
    }
    assert!(ivs.iter().all(|iv| !iv.control) && ctl.iter().all(|iv| iv.control));
    assert!(ivs.iter().any(|iv| iv.trigger == Trigger::Silence), "some interventions come from silence");
    assert!(ivs.iter().any(|iv| iv.trigger == Trigger::Event));
    // The raw JSON spells the trigger in snake_case.
    let raw = std::fs::read_to_string(p.path("iv.jsonl")).unwrap();
    assert!(raw.contains(r#""trigger":"silence""#));
    let share = ctl.len() as f64 / (ctl.len() + ivs.len()) as f64;
    assert!((share - 0.1).abs() < 0.03, "control share {share}");
}

#[test]
fn replay_survives_bad_lines_and_reports_reject_codes() {
    let p = pipeline();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = read_lines(&p.path("ev.jsonl"));
    let bad = [
        "this is not json".to_string(),
        r#"{"event_type":"login","ts":"2026-01-02T00:00:00Z"}"#.to_string(),
        r#"{"user_id":"u9999999","event_type":"login","ts":"yesterday"}"#.to_string(),
        format!(
            r#"{{"user_id":"u9999999","event_type":"login","ts":"2026-01-02T00:00:00Z","pad":"{}"}}"#,
            "x".repeat(70 * 1024)
        ),
        "{\"user_id\":\"u9".to_string(),
        String::new(),
    ];
    let mut text = String::new();
    for (i, line) in good.iter().take(20_000).enumerate() {
        text.push_str(line);
        text.push('\n');
        if i % 2_000 == 7 {
            text.push_str(&bad[(i / 2_000) % bad.len()]);
            text.push('\n');
        }
    }
    let mixed = dir.path().join("mixed.jsonl");
    std::fs::write(&mixed, text).unwrap();
    let model = p.path("model.json");
    let out = dir.path().join("iv.jsonl");
    // The log is shorter than the warm-up: decide from the first event on.
    std::fs::write(dir.path().join("no-warm-up.toml"), "[engine]\nwarm_up = \"off\"\n").unwrap();
    let o = ok(
        dir.path(),
        &[
            "replay",
            "--model",
            model.to_str().unwrap(),
            "--events",
            "mixed.jsonl",
            "--out",
            out.to_str().unwrap(),
            "--config",
            "no-warm-up.toml",
        ],
    );
    let err = stderr(&o);
    for code in ["not_json", "missing_field", "bad_timestamp", "too_large"] {
        assert!(err.contains(code), "stderr does not mention {code}:\n{err}");
    }
    assert!(err.contains("20000 valid"), "{err}");
    let ivs = parse_interventions(&out);
    // 20,000 good lines of the simulated log: the model flags someone, so the loop below checks
    // something.
    assert!(!ivs.is_empty(), "no interventions from 20000 valid lines:\n{err}");
    for iv in &ivs {
        assert_eq!(iv.model_version, p.model.model_version);
    }
}

/// One event stamped far ahead (a device clock set to 2199) must not move the replay's clock:
/// before the guard, every later event counted as late and every user was judged silent at once.
#[test]
fn an_event_from_the_future_is_rejected_and_changes_no_decision() {
    let p = pipeline();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = read_lines(&p.path("ev.jsonl"));
    let mid = good.len() / 2;
    let mut with = good[..mid].join("\n");
    with.push_str("\n{\"user_id\":\"u_clock\",\"event_type\":\"login\",\"ts\":\"2199-01-01T00:00:00Z\"}\n");
    with.push_str(&good[mid..].join("\n"));
    std::fs::write(dir.path().join("with.jsonl"), with + "\n").unwrap();
    let model = p.path("model.json");
    let model = model.to_str().unwrap();
    let run = |events: &str, out: &str| {
        let o = ok(dir.path(), &["replay", "--model", model, "--events", events, "--out", out, "--threads", "1"]);
        (stderr(&o), read_lines(&dir.path().join(out)))
    };
    let (err, with_out) = run("with.jsonl", "with-iv.jsonl");
    let (plain_err, plain_out) = run(p.path("ev.jsonl").to_str().unwrap(), "plain-iv.jsonl");
    assert!(err.contains("bad_timestamp=1") && err.contains(&format!("line {}", mid + 1)), "{err}");
    assert!(err.contains(" 0 late)"), "no event fell behind the clock:\n{err}");
    // Users tracked and evicted, interventions by tier, rescorings: the run's own summary.
    let summary = |e: &str| e.split("events/s); ").nth(1).and_then(|t| t.split(" -> ").next()).map(str::to_string);
    assert_eq!(summary(&err), summary(&plain_err), "with:\n{err}\nwithout:\n{plain_err}");
    assert!(plain_out.len() > 100, "{} interventions: the comparison below checks something", plain_out.len());
    // Records carry the wall-clock time they were written; all else must match.
    let strip = |lines: Vec<String>| -> Vec<String> { lines.iter().map(|l| without_emitted_at(l)).collect() };
    assert_eq!(strip(with_out), strip(plain_out), "the same interventions, in the same order");
}

/// A record's JSON without its `emitted_at` member (the wall-clock time it was written).
fn without_emitted_at(line: &str) -> String {
    const KEY: &str = "\"emitted_at\":\"";
    let Some(at) = line.find(KEY) else { return line.to_string() };
    let value_end = line[at + KEY.len()..].find('"').map_or(line.len(), |e| at + KEY.len() + e + 1);
    format!("{}{}", &line[..at], &line[value_end..])
}

/// Config errors are found before any event is read: the events path does not even exist.
#[test]
fn replay_config_errors_fail_fast() {
    let p = pipeline();
    let dir = tempfile::tempdir().expect("tempdir");
    let model = p.path("model.json");
    let check = |toml: &str, needle: &str| {
        std::fs::write(dir.path().join("bad.toml"), toml).unwrap();
        let err = fails(
            dir.path(),
            &[
                "replay",
                "--model",
                model.to_str().unwrap(),
                "--events",
                "no-such-file.jsonl",
                "--out",
                "iv.jsonl",
                "--config",
                "bad.toml",
            ],
        );
        assert!(err.contains(needle), "stderr for {toml:?} does not name {needle}:\n{err}");
        assert!(!err.contains("no-such-file"), "the config must be refused before the events are opened:\n{err}");
        assert!(!dir.path().join("iv.jsonl").exists(), "no output for a refused config");
    };
    check("[policy]\ncontrol_fraction = 2.0\n", "control_fraction");
    check("[engine]\nrescore_every = \"1d\"\n", "rescore_every");
    check("[engine]\nstate_ttl = \"7d\"\n", "state_ttl");
    check("[engin]\nstate_ttl = \"7d\"\n", "engin");
    check("[state]\nflush_every = \"1s\"\n", "flush_every");
}

/// Replay takes the service's own config file: every section the service knows is accepted,
/// including the ones replay does not use.
#[test]
fn replay_accepts_a_whole_service_config() {
    let p = pipeline();
    let dir = tempfile::tempdir().expect("tempdir");
    let model = p.path("model.json");
    let events = p.path("ev.jsonl");
    std::fs::write(
        dir.path().join("service.toml"),
        "[kafka]\n\"bootstrap.servers\" = \"localhost:9092\"\n[source]\ntopics = [\"events\"]\n\
         [sink]\ncommit_interval = \"1s\"\n[state]\nflush_interval = \"2s\"\n[runtime]\nworkers = 1\n\
         [uplift]\nhorizon = \"30d\"\n[engine]\nallowed_lateness = \"1h\"\n",
    )
    .unwrap();
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_churnguard"))
        .current_dir(dir.path())
        .args(["replay", "--model", model.to_str().unwrap(), "--events", events.to_str().unwrap()])
        .args(["--out", "iv.jsonl", "--config", "service.toml"])
        .output()
        .expect("running replay");
    assert!(st.status.success(), "replay refused a service config: {}", String::from_utf8_lossy(&st.stderr));
    assert!(dir.path().join("iv.jsonl").exists());
}

/// `config check` is what an operator pastes into a ticket: a broken or misspelled credential
/// must not be in its output, whether it came from the file or the environment.
#[test]
fn config_check_never_prints_a_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let brokers = "[kafka]\n\"bootstrap.servers\" = \"localhost:9092\"\n";
    std::fs::write(d.join("broken.toml"), format!("{brokers}\"sasl.password\" = \"hunter2\n")).unwrap();
    let err = fails(d, &["config", "check", "broken.toml"]);
    assert!(err.contains("broken.toml: line 3, column ") && !err.contains("hunter"), "{err}");

    std::fs::write(
        d.join("typo.toml"),
        format!("{brokers}\"sasl.passwd\" = \"hunter2\"\n\"ssl.keystore.pasword\" = \"hunter3\"\n"),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_churnguard"))
        .args(["config", "check", "typo.toml"])
        .env("CHURNGUARD__KAFKA__SASL_JAAS_CONFIG", "PlainLoginModule required password=\"hunter4\";")
        .current_dir(d)
        .output()
        .expect("run churnguard");
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("hunter") && !out.contains("PlainLoginModule"), "{out}");
    assert_eq!(out.matches("<redacted>").count(), 3, "{out}");
    assert!(out.contains("localhost:9092"), "{out}");
}

/// librdkafka's own config errors quote the property's value: `run` must not pass a misspelled
/// secret's value through (no broker is needed: the client fails to be created).
#[test]
fn run_never_prints_the_value_of_a_misspelled_secret_key() {
    let dir = tempfile::tempdir().unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json");
    let config = format!(
        "[kafka]\n\"bootstrap.servers\" = \"127.0.0.1:1\"\n\"sasl.passwd\" = \"hunter2-leak\"\n\n[model]\npath = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n",
        model.display()
    );
    std::fs::write(dir.path().join("c.toml"), config).unwrap();
    let err = fails(dir.path(), &["run", "--config", "c.toml"]);
    assert!(err.contains("sasl.passwd"), "the error names the key: {err}");
    assert!(!err.contains("hunter2-leak"), "the secret's value leaked: {err}");
}
