//! `churnguard bench kafka` end to end against the test broker, at a tiny size: it runs every
//! measurement and reports each row with a number. (The figures themselves come from full-size
//! runs, docs/PERFORMANCE.md; no test asserts a speed.)
//! Run with `bash scripts/test.sh` (see tests/common/mod.rs for the broker rule).

mod common;

use std::process::Command;

/// The value cells of the report row whose label contains `label` (every matching row).
fn cells<'a>(report: &'a str, label: &str) -> Vec<Vec<&'a str>> {
    report
        .lines()
        .filter(|l| l.starts_with('|') && l.contains(label))
        .map(|l| l.trim_matches('|').split('|').skip(1).map(str::trim).filter(|c| !c.is_empty()).collect())
        .collect()
}

fn number(cell: &str) -> f64 {
    let n: String = cell.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    n.parse().unwrap_or_else(|_| panic!("not a number: {cell:?}"))
}

#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[test]
fn bench_kafka_measures_throughput_and_latency_at_each_worker_count() {
    let brokers = common::brokers();
    let before = common::topic_names(&brokers);
    let out = Command::new(env!("CARGO_BIN_EXE_churnguard"))
        .args(["bench", "kafka", "--brokers", &brokers, "--users", "300", "--days", "20", "--partitions", "2"])
        .args(["--repeat", "1", "--workers", "1,2", "--latency-seconds", "600", "--model", "models/default.json"])
        .output()
        .expect("running churnguard bench kafka");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench kafka failed:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    for label in [
        "bare librdkafka consumer",
        "engine alone, one core",
        "1 worker(s), at least once",
        "2 worker(s), at least once",
    ] {
        let rows = cells(&report, label);
        assert_eq!(rows.len(), 1, "one row for {label:?}:\n{report}");
        assert!(number(rows[0][0]) > 0.0, "{label:?} measured a rate:\n{report}");
    }
    // Each worker count gets its own live maximum and its own latency run, timed both ways.
    for w in [1, 2] {
        let max = cells(&report, &format!("produced live (generator, broker and service together), {w} worker(s)"));
        assert_eq!(max.len(), 1, "a live maximum at {w} worker(s):\n{report}");
        let (live_max, run) = (number(max[0][0]), cells(&report, &format!("bare consumer, {w} worker(s)")));
        assert_eq!(run.len(), 1, "a latency run at {w} worker(s):\n{report}");
        // Half the maximum, unless a loaded-topic rate is lower still.
        assert!(
            number(run[0][0]) <= 0.5 * live_max + 1.0,
            "{w} worker(s): the latency run is at most half the live maximum:\n{report}"
        );
    }
    let timed = cells(&report, "event-to-intervention p50 / p99");
    assert_eq!(timed.len(), 4, "CreateTime and LogAppendTime at each worker count:\n{report}");
    for row in &timed {
        let (p50, p99) = (number(row[0]), number(row[1]));
        assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} ms and p99 {p99} ms are ordered latencies:\n{report}");
    }
    // What it produced (about 1.5 GB at full size) and the services' changelogs are deleted.
    // (The broker's metadata may list a deleted topic for a moment.)
    let left = || -> Vec<String> {
        common::topic_names(&brokers).into_iter().filter(|t| t.starts_with("bench-") && !before.contains(t)).collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !left().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(left().is_empty(), "the bench left its topics on the broker: {:?}", left());
}
