//! Command-line conventions (issue 11): every argument is described, value names are the
//! conventional ones, exit statuses are 0/1/2, closed pipes never panic, logs in files carry no
//! colour and `--log-format json` writes JSON lines.

use clap::{CommandFactory, Parser};

use churnguard::cli::Cli;

/// The value names `--help` may show: what kind of value, never the field's name.
const VALUE_NAMES: [&str; 13] = [
    "FILE",
    "DIR",
    "DUR",
    "N",
    "TIME",
    "ADDR",
    "ADDRS",
    "TYPE",
    "FORMAT",
    "SECS",
    "FRACTION",
    "KEY=VALUE",
    "ACTION=EFFECT",
];

fn walk(cmd: &clap::Command, path: &str, problems: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        if arg.is_hide_set() {
            continue;
        }
        let name = format!("{path} --{}", arg.get_long().unwrap_or(arg.get_id().as_str()));
        let help = arg.get_help().or(arg.get_long_help()).map(|h| h.to_string()).unwrap_or_default();
        if help.trim().is_empty() {
            problems.push(format!("{name}: no description"));
        }
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values()) || arg.is_positional();
        if takes_value {
            let id_upper = arg.get_id().as_str().to_uppercase();
            for v in arg.get_value_names().map(|v| v.to_vec()).unwrap_or_default() {
                let v = v.as_str();
                if !VALUE_NAMES.contains(&v) {
                    let why = if v == id_upper { " (the field's name)" } else { "" };
                    problems.push(format!("{name}: value name <{v}>{why}; use one of {VALUE_NAMES:?}"));
                }
            }
            if arg.get_value_names().is_none() && !VALUE_NAMES.contains(&id_upper.as_str()) {
                problems.push(format!("{name}: value name defaults to <{id_upper}> (the field's name)"));
            }
        }
    }
    for sub in cmd.get_subcommands() {
        let sub_path = format!("{path} {}", sub.get_name());
        if sub.get_name() != "help" && sub.get_about().is_none_or(|a| a.to_string().trim().is_empty()) {
            problems.push(format!("{sub_path}: no description"));
        }
        walk(sub, &sub_path, problems);
    }
}

#[test]
fn every_argument_has_a_description_and_a_conventional_value_name() {
    let mut cmd = Cli::command();
    cmd.build();
    let mut problems = Vec::new();
    walk(&cmd, "churnguard", &mut problems);
    assert!(problems.is_empty(), "--help problems:\n{}", problems.join("\n"));
}

#[test]
fn the_walk_catches_a_field_name_value_name_and_a_missing_description() {
    // The check itself must fail on what issue 11 reported.
    let cmd = clap::Command::new("x").arg(clap::Arg::new("out").long("out").num_args(1));
    let mut problems = Vec::new();
    walk(&cmd, "x", &mut problems);
    assert!(problems.iter().any(|p| p.contains("no description")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("<OUT>")), "{problems:?}");
}

#[test]
fn cutoff_error_lists_every_accepted_form() {
    let err = Cli::try_parse_from([
        "churnguard",
        "evaluate",
        "--model",
        "m.json",
        "--events",
        "e.jsonl",
        "--cutoff",
        "2026/05/01",
        "--horizon",
        "30d",
    ])
    .expect_err("a bad cutoff is a usage error");
    assert_eq!(err.exit_code(), 2);
    let msg = err.to_string();
    for form in ["--cutoff", "RFC3339", "YYYY-MM-DD", "epoch milliseconds"] {
        assert!(msg.contains(form), "{form} missing from: {msg}");
    }
    for ok in ["2026-05-01", "2026-05-01T00:00:00Z", "1777593600000"] {
        let cli = Cli::try_parse_from([
            "churnguard",
            "evaluate",
            "--model",
            "m.json",
            "--events",
            "e.jsonl",
            "--cutoff",
            ok,
            "--horizon",
            "30d",
        ])
        .unwrap_or_else(|e| panic!("{ok}: {e}"));
        let churnguard::cli::Command::Evaluate(a) = cli.command else { panic!("not evaluate") };
        assert_eq!(a.label.expect("labelling given").cutoff, 1_777_593_600_000, "{ok}");
    }
}

// ---- the binary: exit statuses, closed pipes, colour, JSON logs ----

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_churnguard");

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json").display().to_string()
}

/// A small simulated log, once per test binary.
fn events() -> &'static (tempfile::TempDir, String) {
    static E: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    E.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl").display().to_string();
        let o = Command::new(BIN)
            .args(["simulate", "--users", "300", "--days", "60", "--seed", "3", "--out", &path])
            .output()
            .expect("run simulate");
        assert!(o.status.success(), "simulate: {}", String::from_utf8_lossy(&o.stderr));
        (dir, path)
    })
}

/// Run with stdout and stderr on pipes whose reading ends are closed before the command writes.
fn status_with_closed_pipes(args: &[&str]) -> i32 {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn churnguard");
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().expect("wait");
    status.code().unwrap_or_else(|| panic!("{args:?} killed by a signal: {status:?}"))
}

#[test]
fn closed_pipes_never_panic_and_exit_codes_are_0_1_2() {
    let (dir, ev) = events();
    let out = dir.path().join("iv.jsonl").display().to_string();
    let m = model();
    // Work that reports on stderr (replay), or prints on stdout (evaluate, --help): 0, not 101.
    assert_eq!(status_with_closed_pipes(&["replay", "--model", &m, "--events", ev, "--out", &out]), 0, "replay");
    let eval = ["evaluate", "--model", &m, "--events", ev, "--cutoff", "2026-02-01", "--horizon", "14d"];
    assert_eq!(status_with_closed_pipes(&eval), 0, "evaluate");
    assert_eq!(status_with_closed_pipes(&["--help"]), 0, "--help");
    // An error whose message cannot be written still exits 1; a usage error 2.
    assert_eq!(status_with_closed_pipes(&["replay", "--model", "missing.json", "--events", ev, "--out", &out]), 1);
    assert_eq!(status_with_closed_pipes(&["simulate", "--users", "-5", "--out", &out]), 2);
    // A log line (tracing) to a closed stderr is dropped too.
    assert_eq!(status_with_closed_pipes(&["--log-format", "json", "run", "--config", "missing.toml"]), 1);

    // The exact pipeline of the issue: `... 2>&1 | head -3` (here a reader that never reads).
    let script =
        format!("\"$0\" replay --model '{m}' --events '{ev}' --out '{out}' 2>&1 | true; exit ${{PIPESTATUS[0]}}");
    let s = Command::new("bash").args(["-c", &script, BIN]).status().expect("bash");
    assert_eq!(s.code(), Some(0), "replay 2>&1 | true");
}

#[test]
fn logs_in_a_file_carry_no_colour_and_json_logs_are_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = |extra: &[&str], name: &str| -> String {
        let log = dir.path().join(name);
        let file = std::fs::File::create(&log).expect("log file");
        let mut args = vec![
            "demo",
            "--duration",
            "3s",
            "--users",
            "200",
            "--days",
            "20",
            "--day-seconds",
            "0.05",
            "--partitions",
            "2",
            "--http",
            "127.0.0.1:0",
            // The logs of the live part are the point; the uplift step adds nothing to them.
            "--uplift-users",
            "0",
        ];
        args.extend_from_slice(extra);
        let o = Command::new(BIN)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .status()
            .expect("run demo");
        let text = std::fs::read_to_string(&log).expect("read log");
        assert!(o.success(), "demo {extra:?} failed: {text}");
        text
    };
    let text = demo(&[], "text.log");
    assert!(text.contains("INFO"), "expected log lines: {text}");
    assert!(!text.contains("\x1b["), "colour codes in a log file: {text:?}");

    let json = demo(&["--log-format", "json"], "json.log");
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("timestamp").is_some(), "{l}");
    }
    assert!(!json.contains("\x1b["), "colour codes in JSON logs");

    // An error in JSON mode is a JSON line too.
    let o = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config", "missing.toml"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    for l in err.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert_eq!(v["level"], "ERROR", "{l}");
    }
}

#[test]
fn demo_checks_its_flags_before_starting_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let demo = |args: &[&str]| {
        let o = Command::new(BIN).arg("demo").args(args).current_dir(dir.path()).output().expect("run demo");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let quiet = |what: &str, stdout: &str, stderr: &str| {
        assert!(stdout.is_empty(), "{what}: the demo started (banner printed): {stdout}");
        for noise in ["librdkafka", "AllBrokersDown", "http.listen", "model.path"] {
            assert!(!stderr.contains(noise), "{what}: {noise:?} in {stderr}");
        }
        assert_eq!(stderr.lines().count(), 1, "{what}: one error line expected: {stderr}");
    };

    // The default --model path does not exist in this directory.
    let (code, out, err) = demo(&["--duration", "5s", "--http", "127.0.0.1:0"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: --model: ") && err.contains("models/default.json"), "{err}");
    quiet("missing model", &out, &err);

    let m = model();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let (code, out, err) = demo(&["--duration", "5s", "--model", &m, "--http", &addr]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with(&format!("error: --http {addr}: cannot listen")), "{err}");
    quiet("busy port", &out, &err);

    let (code, out, err) = demo(&["--model", &m, "--http", "localhost"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: --http localhost: not an address"), "{err}");
    quiet("bad address", &out, &err);

    let (code, out, err) = demo(&["--model", &m, "--http", "127.0.0.1:0", "--partitions", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--partitions"), "{err}");
    quiet("no partitions", &out, &err);

    // The uplift step runs last, but a directory it cannot create fails at once.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").expect("write");
    let below = file.join("demo").display().to_string();
    let (code, out, err) = demo(&["--model", &m, "--http", "127.0.0.1:0", "--out", &below]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with(&format!("error: --out {below}: cannot create")), "{err}");
    quiet("unwritable --out", &out, &err);

    let (code, out, err) = demo(&["--model", &m, "--http", "127.0.0.1:0", "--uplift-users", "99999999999"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: --uplift-users 99999999999: "), "{err}");
    quiet("too many uplift users", &out, &err);
}

#[test]
fn evaluate_warns_when_the_horizon_differs_from_the_models() {
    let (_dir, ev) = events();
    let m = model();
    let run = |horizon: &str| {
        let o = Command::new(BIN)
            .args(["evaluate", "--model", &m, "--events", ev, "--cutoff", "2026-01-20", "--horizon", horizon, "--json"])
            .output()
            .expect("evaluate");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // The shipped model is trained at 30d.
    let err = run("14d");
    assert!(
        err.contains("warning: evaluating at horizon 14d, but model") && err.contains("trained at horizon 30d"),
        "{err}"
    );
    assert!(!run("30d").contains("warning"), "no warning at the model's own horizon");
}
