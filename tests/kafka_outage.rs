//! The broker frozen (SIGSTOP) under a running service: readiness follows it, and nothing is
//! lost. A test binary of its own, because freezing the shared broker would stall every test
//! running beside it. Needs CHURNGUARD_KAFKA_PID (scripts/test.sh sets it).

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use churnguard::features::spec::FeatureSpec;
use churnguard::model::artifact::{ModelArtifact, TierThreshold};

const T0: i64 = 1_767_225_600_000; // 2026-01-01
const FROZEN_FOR: Duration = Duration::from_secs(60);

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}

fn consumed(port: u16) -> f64 {
    let Some((_, body)) = http_get(port, "/metrics") else { return 0.0 };
    body.lines()
        .filter(|l| l.starts_with("churnguard_events_consumed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait(max: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < max {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

/// Resumes the broker however the test ends.
struct Frozen(String);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn model(path: &Path) {
    let spec = FeatureSpec { event_types: vec!["login".into()], ..FeatureSpec::default() };
    let tiers = vec![TierThreshold { name: "high".into(), min_score: 0.9 }];
    ModelArtifact::from_weights(spec, "outage-1", &[("recency", 2.0)], -4.0, tiers)
        .expect("valid model")
        .save(path)
        .expect("writing the model");
}

fn events(from: i64, n: i64) -> Vec<(String, Vec<u8>)> {
    (from..from + n)
        .map(|i| {
            let user = format!("u{}", i % 50);
            let ts = T0 + i * 60_000;
            (user.clone(), format!(r#"{{"user_id":"{user}","event_type":"login","ts":{ts}}}"#).into_bytes())
        })
        .collect()
}

#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_broker_frozen_for_a_minute_and_nothing_is_lost() {
    let brokers = common::brokers();
    let pid = std::env::var("CHURNGUARD_KAFKA_PID")
        .expect("CHURNGUARD_KAFKA_PID is not set: run the tests with `bash scripts/test.sh`, which sets it");
    let topic = common::unique_topic("outage-events");
    let outputs =
        [common::unique_topic("outage-iv"), common::unique_topic("outage-ctl"), common::unique_topic("outage-dlq")];
    common::create_topic(&brokers, &topic, 2).await;
    for t in &outputs {
        common::create_topic(&brokers, t, 1).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    model(&dir.path().join("model.json"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
    let config = dir.path().join("churnguard.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\n\"bootstrap.servers\" = \"{brokers}\"\n\"session.timeout.ms\" = \"6000\"\n\"socket.timeout.ms\" = \"5000\"\n\n\
             [source]\ntopics = [\"{topic}\"]\ngroup_id = \"{}\"\n\n\
             [sink]\ninterventions_topic = \"{}\"\ncontrol_topic = \"{}\"\ndead_letter_topic = \"{}\"\ncommit_interval = \"200ms\"\n\n\
             [model]\npath = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
            common::unique_group("outage"),
            outputs[0],
            outputs[1],
            outputs[2],
            dir.path().join("model.json").display()
        ),
    )
    .expect("config");
    let producer = common::producer(&brokers);
    let before = events(0, 200);
    common::produce_all(&producer, &topic, &before).await;
    let log = dir.path().join("service.log");
    let mut service = Service(
        Command::new(env!("CARGO_BIN_EXE_churnguard"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
            .spawn()
            .expect("starting churnguard run"),
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait(Duration::from_secs(60), || http_get(port, "/readyz").is_some_and(|(c, _)| c == 200)
            && consumed(port) == 200.0),
        "not ready with the first events consumed:\n{}",
        log_text()
    );

    let frozen = Frozen(pid.clone());
    assert!(Command::new("kill").args(["-STOP", &pid]).status().expect("kill").success());
    let frozen_at = Instant::now();
    let mut body = String::new();
    let went_down = wait(Duration::from_secs(30), || match http_get(port, "/readyz") {
        Some((503, b)) => {
            body = b;
            true
        }
        _ => false,
    });
    assert!(went_down, "/readyz stayed 200 with the broker frozen:\n{}", log_text());
    assert!(body.contains("no broker answers"), "/readyz says why: {body}");
    // The broker stays frozen for a full minute (past the session timeout, the socket timeout
    // and librdkafka's reconnect backoff): readiness must stay down the whole time, never flap
    // back to ready, and the service must wait rather than exit.
    while frozen_at.elapsed() < FROZEN_FOR {
        std::thread::sleep(Duration::from_secs(1));
        assert!(service.0.try_wait().expect("wait").is_none(), "the service must not exit while the broker is down");
        let code = http_get(port, "/readyz").map(|(c, _)| c);
        assert_eq!(code, Some(503), "/readyz after {:?} of a frozen broker:\n{}", frozen_at.elapsed(), log_text());
    }
    drop(frozen);

    assert!(
        wait(Duration::from_secs(60), || http_get(port, "/readyz").is_some_and(|(c, _)| c == 200)),
        "/readyz did not come back after the broker resumed:\n{}",
        log_text()
    );
    let after = events(200, 200);
    common::produce_all(&producer, &topic, &after).await;
    assert!(
        wait(Duration::from_secs(60), || consumed(port) == 400.0),
        "events after the outage were not all consumed ({}):\n{}",
        consumed(port),
        log_text()
    );
    let _ = Command::new("kill").args(["-TERM", &service.0.id().to_string()]).status();
    assert!(wait(Duration::from_secs(35), || service.0.try_wait().ok().flatten().is_some()), "SIGTERM honoured");
    assert!(service.0.try_wait().ok().flatten().is_some_and(|s| s.success()), "clean exit:\n{}", log_text());
}
