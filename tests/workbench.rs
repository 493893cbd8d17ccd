//! The data scientist's workbench (issue 10), through the real binary: historical data,
//! censoring against the data's end, labels that never mislead, per-user output.
//!
//! One simulated log starting 1997-03-01 (before the old 2000-01-01 floor) and one model trained
//! on it are built once per test binary and shared.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn churnguard(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_churnguard")).args(args).current_dir(dir).output().expect("run churnguard")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ok(dir: &Path, args: &[&str]) -> Output {
    let o = churnguard(dir, args);
    assert!(
        o.status.success(),
        "churnguard {} failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        o.status,
        stdout(&o),
        stderr(&o)
    );
    o
}

/// Run and require exit status 1 (an error, not a usage error), returning stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let o = churnguard(dir, args);
    assert_eq!(
        o.status.code(),
        Some(1),
        "churnguard {} should have failed with 1:\nstderr: {}",
        args.join(" "),
        stderr(&o)
    );
    stderr(&o)
}

struct Workbench {
    dir: tempfile::TempDir,
}

impl Workbench {
    fn d(&self) -> &Path {
        self.dir.path()
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// 1997 data: simulate 2000 users over 150 days from 1997-03-01 and train on it.
fn bench() -> &'static Workbench {
    static W: OnceLock<Workbench> = OnceLock::new();
    W.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        ok(
            d,
            &[
                "simulate",
                "--users",
                "2000",
                "--days",
                "150",
                "--seed",
                "5",
                "--start",
                "1997-03-01",
                "--out",
                "ev.jsonl",
                "--truth",
                "truth.csv",
            ],
        );
        ok(
            d,
            &[
                "train",
                "--events",
                "ev.jsonl",
                "--cutoff",
                "1997-06-15",
                "--horizon",
                "30d",
                "--cutoffs",
                "2",
                "--every",
                "14d",
                "--out",
                "model.json",
            ],
        );
        Workbench { dir }
    })
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_1997_simulation_is_accepted_by_every_command() {
    let w = bench();
    let first = std::fs::read_to_string(w.path("ev.jsonl")).unwrap();
    assert!(first.lines().next().unwrap().contains("\"ts\":\"1997-03-0"), "{}", first.lines().next().unwrap());
    let o = ok(
        w.d(),
        &[
            "evaluate",
            "--model",
            "model.json",
            "--events",
            "ev.jsonl",
            "--cutoff",
            "1997-06-25",
            "--horizon",
            "30d",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let auc = v["roc_auc"].as_f64().unwrap();
    assert!(auc > 0.6 && auc < 1.0, "{v}");
    let o = ok(w.d(), &["replay", "--model", "model.json", "--events", "ev.jsonl", "--out", "iv.jsonl"]);
    let err = stderr(&o);
    assert!(!err.contains("rejected 1") && err.contains(" 0 rejected"), "{err}");
    let ivs = std::fs::read_to_string(w.path("iv.jsonl")).unwrap();
    assert!(ivs.lines().count() > 10, "{err}");
    assert!(ivs.contains("\"1997-"), "interventions carry 1997 event times");
}

/// Every line rejected: the error gives the breakdown by reason and the first examples (line
/// numbers and reasons), never a line's content.
#[test]
fn a_file_of_only_rejected_lines_says_why_for_every_command() {
    let w = bench();
    let dir = tempfile::tempdir().unwrap();
    let secret = "jane.doe@example.com";
    let text = format!(
        "{{\"user_id\":\"{secret}\",\"event_type\":\"purchase\",\"ts\":\"1969-12-31T00:00:00Z\"}}\n\
         {{\"user_id\":\"{secret}\",\"event_type\":\"purchase\",\"ts\":\"{secret}\"}}\n\
         not json {secret}\n\
         {{\"user_id\":\"{secret}\",\"event_type\":\"purchase\",\"ts\":-5}}\n"
    );
    write(dir.path(), "bad.jsonl", &text);
    let model = w.path("model.json");
    let model = model.to_str().unwrap();
    for args in [
        vec!["train", "--events", "bad.jsonl", "--cutoff", "1997-06-01", "--horizon", "30d", "--out", "m.json"],
        vec!["evaluate", "--model", model, "--events", "bad.jsonl", "--cutoff", "1997-06-01", "--horizon", "30d"],
        vec!["replay", "--model", model, "--events", "bad.jsonl", "--out", "iv.jsonl"],
    ] {
        let err = fails(dir.path(), &args);
        assert!(err.contains("no valid events in bad.jsonl"), "{}: {err}", args[0]);
        assert!(err.contains("rejected 4 line(s): not_json=1 bad_timestamp=3"), "{}: {err}", args[0]);
        assert!(
            err.contains("line 1: bad_timestamp: `ts`: string of 20 bytes, an RFC3339 date-time out of range"),
            "{err}"
        );
        assert!(err.contains("line 2: bad_timestamp: `ts`: string of 20 bytes, not an RFC3339 date-time"), "{err}");
        assert!(err.contains("line 3: not_json"), "{err}");
        assert!(err.contains("from 1970-01-01"), "{err}");
        assert!(!err.contains(secret) && !err.contains("1969"), "{}: {err}", args[0]);
    }
    write(dir.path(), "empty.jsonl", "\n\n");
    let err = fails(dir.path(), &["replay", "--model", model, "--events", "empty.jsonl", "--out", "iv.jsonl"]);
    assert!(err.contains("no valid events in empty.jsonl: the file has no event lines"), "{err}");
}

/// Valid events that flag no one: replay exits 0 but says that the output is empty.
#[test]
fn replay_says_when_it_wrote_nothing() {
    let w = bench();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "one.jsonl",
        "{\"user_id\":\"u1\",\"event_type\":\"login\",\"ts\":\"1997-03-01T10:00:00Z\"}\n\
         {\"user_id\":\"u1\",\"event_type\":\"login\",\"ts\":\"1997-03-01T11:00:00Z\"}\n",
    );
    let model = w.path("model.json");
    let o =
        ok(dir.path(), &["replay", "--model", model.to_str().unwrap(), "--events", "one.jsonl", "--out", "iv.jsonl"]);
    assert_eq!(std::fs::read_to_string(dir.path().join("iv.jsonl")).unwrap(), "");
    assert!(stderr(&o).contains("iv.jsonl is empty: "), "{}", stderr(&o));
}

fn evaluate(w: &Workbench, extra: &[&str]) -> Output {
    let mut args = vec!["evaluate", "--model", "model.json", "--events", "ev.jsonl", "--json"];
    args.extend_from_slice(extra);
    churnguard(w.d(), &args)
}

/// The simulated log's last event is on 1997-07-28, so by default the data covers up to
/// 1997-07-29T00:00Z, however early in that day the last event was.
#[test]
fn censoring_is_judged_against_the_end_of_the_data() {
    let w = bench();
    let o = evaluate(w, &["--cutoff", "1997-06-29", "--horizon", "30d"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "labels complete up to 1997-07-29T00:00:00.000Z (the end of the UTC day of the last event, 1997-07-28T"
        ),
        "{}",
        stderr(&o)
    );
    let o = evaluate(w, &["--cutoff", "1997-06-29", "--horizon", "31d"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("ends at 1997-07-30T00:00:00.000Z, after the end of the data 1997-07-29T00:00:00.000Z (the end of the UTC day of the last event"), "{err}");
    assert!(err.contains("censored") && err.contains("--data-end"), "{err}");
    let o = evaluate(w, &["--cutoff", "1997-06-29", "--horizon", "31d", "--data-end", "1997-08-01"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("labels complete up to 1997-08-01T00:00:00.000Z (set by --data-end)"),
        "{}",
        stderr(&o)
    );
    let o = evaluate(w, &["--cutoff", "1997-06-29", "--horizon", "30d", "--data-end", "1997-07-20"]);
    assert!(
        stderr(&o).contains("after the end of the data 1997-07-20T00:00:00.000Z (set by --data-end)"),
        "{}",
        stderr(&o)
    );
}

fn truth_users(w: &Workbench) -> Vec<String> {
    std::fs::read_to_string(w.path("truth.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect()
}

/// Numbers in the `labels FILE: A of B population members labelled, C without a label (left
/// out); D of E label row(s) matched no one` line.
fn label_counts(err: &str) -> [usize; 5] {
    let line = err.lines().find(|l| l.contains("population members labelled")).unwrap_or_else(|| panic!("{err}"));
    let nums: Vec<usize> =
        line.split(|c: char| !c.is_ascii_digit()).filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
    let n = nums.len();
    [nums[n - 5], nums[n - 4], nums[n - 3], nums[n - 2], nums[n - 1]]
}

#[test]
fn explicit_labels_say_who_was_left_out_and_refuse_a_poor_match() {
    let w = bench();
    let users = truth_users(w);
    let mut partial = String::from("user_id,churned\n");
    for (i, u) in users.iter().take(100).enumerate() {
        partial.push_str(&format!("{u},{}\n", i % 3 == 0));
    }
    for g in 1..=5 {
        partial.push_str(&format!("ghost{g},1\n"));
    }
    let labels = write(w.d(), "partial_labels.csv", &partial);
    let labels = labels.to_str().unwrap();
    // No --horizon: explicit labels need none.
    let o = evaluate(w, &["--cutoff", "1997-06-01", "--labels", labels]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("--labels ") && err.contains("population members") && err.contains("below --min-label-match 0.5"),
        "{err}"
    );
    assert!(err.contains("matched no one"), "{err}");
    assert!(stdout(&o).is_empty(), "no metrics printed for a refused evaluation");

    let o = evaluate(w, &["--cutoff", "1997-06-01", "--labels", labels, "--min-label-match", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let [labelled, population, unlabelled, unmatched, rows] = label_counts(&stderr(&o));
    assert_eq!(rows, 105);
    assert_eq!(labelled + unlabelled, population);
    assert!(unmatched >= 5 && labelled <= 100 && labelled + unmatched == 105, "{}", stderr(&o));
    assert!(unlabelled > 1000, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["n_users"].as_u64(), Some(labelled as u64));

    // Every user labelled: accepted at the default share, nobody left out.
    let mut full = String::from("user_id,churned\n");
    for (i, u) in users.iter().enumerate() {
        full.push_str(&format!("{u},{}\n", i % 4 == 0));
    }
    let full = write(w.d(), "full_labels.csv", &full);
    let o = evaluate(w, &["--cutoff", "1997-06-01", "--labels", full.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let [labelled, population, unlabelled, _, rows] = label_counts(&stderr(&o));
    assert_eq!((labelled, unlabelled, rows), (population, 0, 2000));
}

#[test]
fn zero_durations_and_unknown_churn_events_are_refused_naming_the_flag() {
    let w = bench();
    let err = stderr(&evaluate(w, &["--cutoff", "1997-06-01", "--horizon", "0d"]));
    assert!(err.contains("--horizon must be longer than 0"), "{err}");
    let err = stderr(&evaluate(w, &["--cutoff", "1997-06-01"]));
    assert!(err.contains("--horizon is required"), "{err}");
    let err = stderr(&evaluate(w, &["--cutoff", "1997-06-01", "--horizon", "30d", "--churn-event", "cancle"]));
    assert!(err.contains("--churn-event \"cancle\": no event of this type in ev.jsonl"), "{err}");
    assert!(err.contains("\"login\""), "the message lists the types present: {err}");
    let err = fails(
        w.d(),
        &[
            "train",
            "--events",
            "ev.jsonl",
            "--cutoff",
            "1997-06-01",
            "--horizon",
            "30d",
            "--cutoffs",
            "3",
            "--every",
            "0d",
            "--out",
            "never.json",
        ],
    );
    assert!(err.contains("--every must be longer than 0"), "{err}");
    assert!(!w.path("never.json").exists());
    for args in [
        vec!["evaluate", "--model", "model.json", "--events", "ev.jsonl", "--cutoff", "1997-06-01", "--horizon", "0d"],
        vec![
            "evaluate",
            "--model",
            "model.json",
            "--events",
            "ev.jsonl",
            "--cutoff",
            "1997-06-01",
            "--horizon",
            "9d",
            "--churn-event",
            "cancle",
        ],
    ] {
        fails(w.d(), &args);
    }
}

/// A CSV line split on commas (the simulated ids and feature names need no quoting).
fn csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header = lines.next().unwrap().split(',').map(str::to_string).collect();
    (header, lines.map(|l| l.split(',').map(str::to_string).collect()).collect())
}

/// `dataset` takes train's flags and writes the rows train fits: the same count, users, churn
/// rate and features as the model records, and row by row the vectors of the shared function.
#[test]
fn dataset_writes_the_rows_train_fits() {
    use churnguard::cli::{Cli, Command as Cmd};
    use clap::Parser;
    let w = bench();
    let flags =
        ["--events", "ev.jsonl", "--cutoff", "1997-06-15", "--horizon", "30d", "--cutoffs", "2", "--every", "14d"];
    let mut args = vec!["dataset"];
    args.extend_from_slice(&flags);
    args.extend_from_slice(&["--out", "rows.csv"]);
    ok(w.d(), &args);
    let (header, rows) = csv(&w.path("rows.csv"));
    let model = churnguard::model::ModelArtifact::load(&w.path("model.json")).unwrap();
    assert_eq!(header[0], "user_id");
    assert_eq!(header[1], "cutoff");
    assert_eq!(header.last().unwrap(), "churned");
    assert_eq!(&header[2..header.len() - 1], model.feature_names.as_slice());
    assert_eq!(rows.len(), model.training.rows, "the rows train fitted");
    let mut users: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    users.sort_unstable();
    users.dedup();
    assert_eq!(users.len(), model.training.users);
    let churned = rows.iter().filter(|r| r.last().unwrap() == "1").count();
    assert!((churned as f64 / rows.len() as f64 - model.training.churn_rate).abs() < 1e-12);
    let cutoffs: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(cutoffs.len(), 2);

    // Row by row, exactly the vectors of the function train builds its rows with.
    let mut argv = vec!["churnguard", "train"];
    argv.extend_from_slice(&flags);
    argv.extend_from_slice(&["--out", "unused.json"]);
    let Cmd::Train(t) = Cli::try_parse_from(argv).unwrap().command else { panic!("not train") };
    let mut rows_args = t.rows.clone();
    rows_args.events = w.path("ev.jsonl");
    let set = churnguard::cli::training_set(&rows_args).unwrap();
    assert_eq!(set.data.rows(), rows.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r[0], set.log.user_id(set.data.user[i]));
        let values: Vec<f64> = r[2..r.len() - 1].iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(values.as_slice(), set.data.row(i), "row {i}");
        assert_eq!(r.last().unwrap() == "1", set.data.y[i]);
    }
}

/// `score` gives each user's P(churn) at a time: the same number `evaluate` computes for the
/// user at that cutoff, and the same the engine sent in an intervention at that event time.
#[test]
fn score_matches_evaluate_and_the_engine() {
    use churnguard::model::dataset::{self, EventLog, LabelSource, Labelling};
    let w = bench();
    ok(
        w.d(),
        &[
            "score",
            "--model",
            "model.json",
            "--events",
            "ev.jsonl",
            "--at",
            "1997-06-15",
            "--every",
            "7d",
            "--until",
            "1997-06-29",
            "--out",
            "scores.csv",
        ],
    );
    let (header, rows) = csv(&w.path("scores.csv"));
    assert_eq!(header[..5], ["user_id", "at", "p_churn", "tier", "stage"]);
    assert_eq!(header.len(), 11, "three reasons with their contributions");
    let art = churnguard::model::ModelArtifact::load(&w.path("model.json")).unwrap();
    let log = EventLog::load(&w.path("ev.jsonl")).unwrap();
    let cutoff = churnguard::time::parse_timestamp("1997-06-15").unwrap();
    let lab = Labelling {
        cutoffs: vec![cutoff],
        horizon: churnguard::time::Span::days(30),
        active_within: None,
        source: LabelSource::Silence,
    };
    let data = dataset::build(&log, &art.spec, &lab).unwrap();
    let (_, eval_scores) = churnguard::model::train::evaluate(&art, &data);
    let at_cutoff: std::collections::HashMap<&str, (f64, &str)> = rows
        .iter()
        .filter(|r| r[1] == "1997-06-15T00:00:00.000Z")
        .map(|r| (r[0].as_str(), (r[2].parse::<f64>().unwrap(), r[3].as_str())))
        .collect();
    assert_eq!(at_cutoff.len(), data.rows(), "every member of evaluate's population is scored");
    for i in 0..data.rows() {
        let (score, tier) = at_cutoff[log.user_id(data.user[i])];
        assert_eq!(score, eval_scores[i], "{}", log.user_id(data.user[i]));
        let want = art
            .thresholds
            .tiers
            .iter()
            .filter(|t| score >= t.min_score)
            .max_by(|a, b| a.min_score.total_cmp(&b.min_score));
        assert_eq!(tier, want.map_or("", |t| t.name.as_str()));
    }
    let times: std::collections::BTreeSet<&str> = rows.iter().map(|r| r[1].as_str()).collect();
    assert_eq!(times.len(), 3);

    // Interventions from the engine (replay): the score at the same user and event time.
    ok(w.d(), &["replay", "--model", "model.json", "--events", "ev.jsonl", "--out", "iv_score.jsonl"]);
    let ivs: Vec<churnguard::intervention::Intervention> = std::fs::read_to_string(w.path("iv_score.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let picked: Vec<_> = ivs.iter().step_by((ivs.len() / 25).max(1)).collect();
    assert!(picked.len() >= 10);
    let times: Vec<i64> = picked.iter().map(|iv| churnguard::time::parse_timestamp(&iv.event_time).unwrap()).collect();
    let mut got = std::collections::HashMap::new();
    churnguard::model::export::score_at(&log, &art, &Default::default(), 3, &times, |s| {
        got.insert((s.user_id.clone(), s.at), s);
    });
    for (iv, t) in picked.iter().zip(&times) {
        let s = &got[&(iv.user_id.clone(), *t)];
        assert!((s.score - iv.score).abs() < 1e-12, "{iv:?} vs {s:?}");
        assert_eq!(s.tier.as_deref(), Some(iv.tier.as_str()));
        assert_eq!(s.stage, iv.stage);
        let reasons: Vec<&str> = s.reasons.iter().map(|r| r.feature.as_str()).collect();
        let iv_reasons: Vec<&str> = iv.reasons.iter().map(|r| r.feature.as_str()).collect();
        assert_eq!(reasons, iv_reasons);
    }
}

#[test]
fn per_user_outputs_refuse_an_unknown_format() {
    let w = bench();
    if !cfg!(feature = "parquet") {
        let err = fails(
            w.d(),
            &["score", "--model", "model.json", "--events", "ev.jsonl", "--at", "1997-06-15", "--out", "s.parquet"],
        );
        assert!(err.contains("Parquet output is not available in this build"), "{err}");
    }
    let err = fails(
        w.d(),
        &["dataset", "--events", "ev.jsonl", "--cutoff", "1997-06-15", "--horizon", "30d", "--out", "rows.txt"],
    );
    assert!(err.contains("use .csv"), "{err}");
}

/// The model trained at two cutoffs: validation rows and users are counted apart, and the L2
/// strength chosen lies inside the searched grid.
#[test]
fn the_artifact_counts_validation_rows_and_users_and_the_l2_is_inside_its_grid() {
    let w = bench();
    let model = churnguard::model::ModelArtifact::load(&w.path("model.json")).unwrap();
    let t = &model.training;
    assert_eq!(t.validation.n_rows, t.validation_rows);
    assert!(t.validation.n_users < t.validation.n_rows, "{:?}", t.validation);
    assert!(t.validation.n_users * 2 >= t.validation.n_rows, "{:?}", t.validation);
    let best = t.l2_grid.iter().position(|g| g.0 == t.l2).unwrap();
    assert!(best > 0 && best + 1 < t.l2_grid.len(), "l2 {} at the edge of {:?}", t.l2, t.l2_grid);
}

/// With `--features parquet`: the Parquet outputs hold exactly what the CSVs hold.
#[cfg(feature = "parquet")]
#[test]
fn parquet_outputs_equal_the_csv_ones() {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampMillisecondType};
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let w = bench();
    let read = |name: &str| -> Vec<arrow_array::RecordBatch> {
        let f = std::fs::File::open(w.path(name)).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap().map(|b| b.unwrap()).collect()
    };
    for name in ["pq_rows.csv", "pq_rows.parquet"] {
        ok(
            w.d(),
            &[
                "dataset",
                "--events",
                "ev.jsonl",
                "--cutoff",
                "1997-06-15",
                "--horizon",
                "30d",
                "--cutoffs",
                "2",
                "--out",
                name,
            ],
        );
    }
    let (header, rows) = csv(&w.path("pq_rows.csv"));
    let batches = read("pq_rows.parquet");
    let mut i = 0;
    for b in &batches {
        let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, header);
        let users = b.column(0).as_string::<i32>();
        let cutoffs = b.column(1).as_primitive::<TimestampMillisecondType>();
        let churned = b.column(b.num_columns() - 1).as_boolean();
        for r in 0..b.num_rows() {
            let row = &rows[i];
            assert_eq!(users.value(r), row[0]);
            assert_eq!(churnguard::time::format_rfc3339_ms(cutoffs.value(r)), row[1]);
            for j in 2..b.num_columns() - 1 {
                let v = b.column(j).as_primitive::<Float64Type>().value(r);
                assert_eq!(v, row[j].parse::<f64>().unwrap(), "row {i} column {}", header[j]);
            }
            assert_eq!(churned.value(r), row[row.len() - 1] == "1");
            i += 1;
        }
    }
    assert_eq!(i, rows.len());

    for name in ["pq_scores.csv", "pq_scores.parquet"] {
        ok(w.d(), &["score", "--model", "model.json", "--events", "ev.jsonl", "--at", "1997-06-15", "--out", name]);
    }
    let (_, rows) = csv(&w.path("pq_scores.csv"));
    let batches = read("pq_scores.parquet");
    let mut i = 0;
    for b in &batches {
        let users = b.column(0).as_string::<i32>();
        let scores = b.column(2).as_primitive::<Float64Type>();
        let tiers = b.column(3).as_string::<i32>();
        let reason1 = b.column(5).as_string::<i32>();
        for r in 0..b.num_rows() {
            assert_eq!(users.value(r), rows[i][0]);
            assert_eq!(scores.value(r), rows[i][2].parse::<f64>().unwrap());
            assert_eq!(if tiers.is_null(r) { "" } else { tiers.value(r) }, rows[i][3]);
            assert_eq!(if reason1.is_null(r) { "" } else { reason1.value(r) }, rows[i][5]);
            i += 1;
        }
    }
    assert_eq!(i, rows.len());
}

/// `evaluate --truth`: lead times per tier from daily scores. The figures are recomputed here
/// from `score`'s daily CSV and the simulator's truth file, by the definitions in
/// src/model/leadtime.rs.
#[test]
fn lead_time_evaluation_matches_a_recomputation_from_daily_scores() {
    use std::collections::HashMap;
    let w = bench();
    let o = ok(w.d(), &["evaluate", "--model", "model.json", "--events", "ev.jsonl", "--truth", "truth.csv", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let from = v["from"].as_str().unwrap().to_string();
    let until = v["until"].as_str().unwrap().to_string();
    // Default period: the first midnight after the first event (1997-03-01T00:..) plus the
    // longest window (90d), to the last event's day.
    assert_eq!(from, "1997-05-31T00:00:00.000Z");
    assert_eq!(v["horizon_days"], 30.0);
    let tiers = v["tiers"].as_array().unwrap();
    assert_eq!(tiers.len(), 2);
    ok(
        w.d(),
        &[
            "score",
            "--model",
            "model.json",
            "--events",
            "ev.jsonl",
            "--at",
            &from,
            "--every",
            "1d",
            "--until",
            &until,
            "--top-reasons",
            "0",
            "--out",
            "daily.csv",
        ],
    );
    let (_, rows) = csv(&w.path("daily.csv"));
    let ts = |s: &str| churnguard::time::parse_timestamp(s).unwrap();
    let (from, until, h, day) = (ts(&from), ts(&until), 30 * 86_400_000i64, 86_400_000i64);
    let truth_text = std::fs::read_to_string(w.path("truth.csv")).unwrap();
    let truth: HashMap<String, Option<i64>> = truth_text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), (!f[2].is_empty()).then(|| ts(f[2])))
        })
        .collect();
    let art = churnguard::model::ModelArtifact::load(&w.path("model.json")).unwrap();
    for t in tiers {
        let min: f64 = t["min_score"].as_f64().unwrap();
        assert!(art.thresholds.tiers.iter().any(|x| x.min_score == min && x.name == t["tier"].as_str().unwrap()));
        // Flags: the daily rows at or above this tier's threshold.
        let mut flags: HashMap<&str, Vec<i64>> = HashMap::new();
        for r in &rows {
            if r[2].parse::<f64>().unwrap() >= min {
                flags.entry(r[0].as_str()).or_default().push(ts(&r[1]));
            }
        }
        let churners: Vec<(&String, i64)> =
            truth.iter().filter_map(|(u, c)| c.map(|c| (u, c))).filter(|&(_, c)| c >= from + h && c <= until).collect();
        let mut leads = Vec::new();
        for (u, c) in &churners {
            if let Some(first) =
                flags.get(u.as_str()).and_then(|f| f.iter().copied().filter(|&t| t >= c - h && t < *c).min())
            {
                leads.push(c - first);
            }
        }
        let at_7d = leads.iter().filter(|&&l| l >= 7 * day).count();
        let (mut first_flags, mut precise) = (0, 0);
        for (u, f) in &flags {
            let first = *f.iter().min().unwrap();
            if first + h <= until {
                first_flags += 1;
                if matches!(truth.get(*u), Some(Some(c)) if *c > first && *c <= first + h) {
                    precise += 1;
                }
            }
        }
        assert!(!churners.is_empty() && first_flags > 0, "{t}");
        assert_eq!(t["churners"], churners.len(), "{t}");
        assert_eq!(t["flagged_before"], leads.len(), "{t}");
        assert_eq!(t["flagged_min_lead"], at_7d, "{t}");
        assert_eq!(t["first_flags"], first_flags, "{t}");
        assert_eq!(t["precise_first_flags"], precise, "{t}");
        leads.sort_unstable();
        if !leads.is_empty() {
            let n = leads.len();
            let m = if n % 2 == 1 { leads[n / 2] as f64 } else { (leads[n / 2 - 1] + leads[n / 2]) as f64 / 2.0 };
            assert!((t["median_lead_days"].as_f64().unwrap() - m / day as f64).abs() < 1e-9, "{t}");
        }
    }
    // The text form names every tier; engine decisions are accepted as flags instead.
    let text =
        stdout(&ok(w.d(), &["evaluate", "--model", "model.json", "--events", "ev.jsonl", "--truth", "truth.csv"]));
    assert!(text.contains("first flags") && text.contains("high") && text.contains("medium"), "{text}");
    ok(w.d(), &["replay", "--model", "model.json", "--events", "ev.jsonl", "--out", "iv_lead.jsonl"]);
    let o = ok(
        w.d(),
        &[
            "evaluate",
            "--model",
            "model.json",
            "--events",
            "ev.jsonl",
            "--truth",
            "truth.csv",
            "--decisions",
            "iv_lead.jsonl",
            "--json",
        ],
    );
    let d: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(d["tiers"][0]["churners"], tiers[0]["churners"]);
    assert!(d["tiers"][1]["first_flags"].as_u64().unwrap() > 0);
    // A cutoff evaluation still requires --cutoff.
    let o = churnguard(w.d(), &["evaluate", "--model", "model.json", "--events", "ev.jsonl", "--horizon", "30d"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
