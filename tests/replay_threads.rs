//! `replay --threads N` writes exactly what one thread writes: the same records in the same
//! order (apart from each record's `emitted_at`, the wall clock), on random streams with late,
//! out-of-order and malformed lines, and on the simulator's log through the CLI.

use std::io::Write;
use std::path::Path;

use churnguard::engine::Engine;
use churnguard::pipeline::replay::{replay_sharded, ReplaySink, ReplaySummary};
use churnguard::time::HOUR_MS;
use proptest::prelude::*;

#[path = "common/small_engine.rs"]
mod small_engine;
use small_engine::{engine, T0};

/// The records without their wall-clock field.
fn records(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .map(|l| match (l.find(",\"emitted_at\":\""), l.rfind("\",\"control\"")) {
            (Some(a), Some(b)) if a < b => format!("{}{}", &l[..a], &l[b + 1..]),
            _ => l.to_string(),
        })
        .collect()
}

fn run(path: &Path, threads: usize) -> (Vec<String>, Vec<String>, ReplaySummary) {
    let mut engines: Vec<Engine> = (0..threads).map(|_| engine()).collect();
    let (mut iv, mut ct) = (Vec::new(), Vec::new());
    let s = replay_sharded(path, 4096, &mut engines, ReplaySink { interventions: &mut iv, control: Some(&mut ct) })
        .expect("replay");
    (records(&iv), records(&ct), s)
}

#[derive(Debug, Clone)]
enum Line {
    Event { u: u8, purchase: bool, gap_hours: u32, back_hours: u8 },
    Malformed,
}

fn line() -> impl Strategy<Value = Line> {
    prop_oneof![
        20 => (0u8..30, any::<bool>(), prop_oneof![3 => 0u32..12, 1 => 0u32..(20 * 24)], prop_oneof![4 => Just(0u8), 1 => 0u8..12])
            .prop_map(|(u, purchase, gap_hours, back_hours)| Line::Event { u, purchase, gap_hours, back_hours }),
        1 => Just(Line::Malformed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn any_number_of_threads_writes_what_one_thread_writes(lines in proptest::collection::vec(line(), 1..400)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let mut f = std::fs::File::create(&path).expect("file");
        let mut newest = T0;
        for l in &lines {
            match l {
                Line::Event { u, purchase, gap_hours, back_hours } => {
                    newest += i64::from(*gap_hours) * HOUR_MS;
                    let ts = newest - i64::from(*back_hours) * HOUR_MS;
                    let t = if *purchase { r#""purchase","amount":12.5"# } else { r#""login""# };
                    writeln!(f, r#"{{"user_id":"u{u}","event_type":{t},"ts":{ts}}}"#).expect("write");
                }
                Line::Malformed => writeln!(f, "{{not json").expect("write"),
            }
        }
        drop(f);
        let (iv1, ct1, s1) = run(&path, 1);
        for n in [2, 3] {
            let (iv, ct, s) = run(&path, n);
            prop_assert_eq!(&iv, &iv1);
            prop_assert_eq!(&ct, &ct1);
            prop_assert_eq!((s.lines, s.valid, s.late, s.rejected.total()), (s1.lines, s1.valid, s1.late, s1.rejected.total()));
            prop_assert_eq!(s.users_tracked, s1.users_tracked);
            prop_assert_eq!(&s.interventions_by_tier, &s1.interventions_by_tier);
            prop_assert_eq!(&s.control_by_tier, &s1.control_by_tier);
            prop_assert_eq!(s.counters.scored_on_timer, s1.counters.scored_on_timer);
            prop_assert_eq!(s.counters.held_warm_up, s1.counters.held_warm_up);
            prop_assert_eq!(s.counters.users_evicted, s1.counters.users_evicted);
        }
    }
}

/// Through the CLI, on a simulator log: the files of 2 and 3 threads equal 1 thread's.
#[test]
fn replay_threads_on_the_simulator_log_writes_what_one_thread_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = env!("CARGO_BIN_EXE_churnguard");
    let events = dir.path().join("events.jsonl");
    let sim = std::process::Command::new(bin)
        .args(["simulate", "--users", "1500", "--days", "130", "--seed", "3", "--out"])
        .arg(&events)
        .output()
        .expect("simulate");
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default.json");
    let mut outputs = Vec::new();
    for n in ["1", "2", "3"] {
        let (iv, ct) = (dir.path().join(format!("iv{n}.jsonl")), dir.path().join(format!("ct{n}.jsonl")));
        let o = std::process::Command::new(bin)
            .args(["replay", "--threads", n, "--model"])
            .arg(&model)
            .arg("--events")
            .arg(&events)
            .arg("--out")
            .arg(&iv)
            .arg("--control-out")
            .arg(&ct)
            .output()
            .expect("replay");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let read = |p: &Path| records(&std::fs::read(p).expect("output"));
        outputs.push((read(&iv), read(&ct)));
    }
    assert!(!outputs[0].0.is_empty() && !outputs[0].1.is_empty(), "the log must produce records to compare");
    assert_eq!(outputs[1], outputs[0]);
    assert_eq!(outputs[2], outputs[0]);
}
