//! Command-line conventions (issue 11): every argument is described, value names are the
//! conventional ones, exit statuses are 0/1/2, closed pipes never panic, logs in files carry no
//! colour and `--log-format json` writes JSON lines.

use clap::{CommandFactory, Parser};

use churnguard::cli::Cli;

/// The value names `--help` may show: what kind of value, never the field's name.
const VALUE_NAMES: [&str; 11] =
    ["FILE", "DIR", "DUR", "N", "TIME", "ADDR", "ADDRS", "TYPE", "FORMAT", "SECS", "FRACTION"];

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
        assert_eq!(a.label.cutoff, 1_777_593_600_000, "{ok}");
    }
}
