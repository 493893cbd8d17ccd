//! Debian's real Prometheus scrapes a running `churnguard run` fed with simulator events through
//! the real broker; every PromQL expression of the shipped dashboard and alert rules is run
//! through Prometheus's HTTP API. A dashboard panel that would show "No data" fails the test.
//! Run with `bash scripts/test.sh` (it starts the broker and finds prometheus/promtool).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use churnguard::sim::{self, SimConfig};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(env: &str, name: &str) -> PathBuf {
    let p = std::env::var(env).map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(format!("/usr/bin/{name}")));
    assert!(p.exists(), "{name} not found at {} (install Debian's `prometheus` package; .ci/run does)", p.display());
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A child process killed when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path_and_query: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut out = String::new();
    if write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: localhost\r\n\r\n").is_ok() {
        let _ = s.read_to_string(&mut out);
    }
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Grafana's template variables, as Grafana would expand them with "All" selected.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${instance:regex}", ".*")
        .replace("${topic:regex}", ".*")
        .replace("$instance", ".*")
        .replace("$topic", ".*")
}

fn query(port: u16, expr: &str) -> serde_json::Value {
    let body = http_get(port, &format!("/api/v1/query?query={}", urlencode(expr)));
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

fn has_data(v: &serde_json::Value) -> bool {
    v["status"] == "success"
        && match &v["data"]["result"] {
            serde_json::Value::Array(a) => a.iter().any(|s| {
                let val = s["value"][1].as_str().unwrap_or("NaN");
                val != "NaN"
            }),
            serde_json::Value::String(_) => true,
            _ => false,
        }
}

/// Every PromQL expression of the dashboard: panel targets and template-variable queries.
fn dashboard_exprs(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(title).to_string();
                if let Some(serde_json::Value::Array(targets)) = m.get("targets") {
                    for t in targets {
                        if let Some(e) = t.get("expr").and_then(|e| e.as_str()) {
                            out.push((title.clone(), e.to_string()));
                        }
                    }
                }
                for (k, child) in m {
                    if k != "targets" {
                        walk(child, &title, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, title, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], "", &mut out);
    out
}

fn events() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    sim::generate(&SimConfig { users: 1500, days: 75, seed: 5, ..SimConfig::default() }, |e| {
        let mut line = Vec::new();
        sim::write_event_json(&mut line, e);
        line.pop();
        out.push((sim::user_id_string(e.user_id), line));
    })
    .expect("simulate");
    // Some bad input, so the dead-letter panels have data.
    for i in 0..40 {
        out.push((format!("bad{i}"), b"{not json".to_vec()));
    }
    out
}

fn wait_until(max: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < max {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    false
}

fn write_config(dir: &Path, brokers: &str, topics: &[String; 4], group: &str, port: u16) -> PathBuf {
    let p = dir.join("churnguard.toml");
    let text = format!(
        r#"[kafka]
"bootstrap.servers" = "{brokers}"
"session.timeout.ms" = "6000"
"statistics.interval.ms" = "1000"
[source]
topics = ["{}"]
group_id = "{group}"
idle_timeout = "1s"
[sink]
interventions_topic = "{}"
control_topic = "{}"
dead_letter_topic = "{}"
commit_interval = "200ms"
[model]
path = "{}"
[http]
listen = "127.0.0.1:{port}"
[engine]
# The log covers 75 days, less than the default model's 90-day warm-up: decide from the start so
# the intervention panels have data.
warm_up = "off"
[uplift]
# Outcomes are decided a horizon after each record: a shorter one than the default 30 days leaves
# most of the log's records with an outcome for the "Is it working?" row.
horizon = "14d"
"#,
        topics[0],
        topics[1],
        topics[2],
        topics[3],
        repo().join("models/default.json").display()
    );
    std::fs::write(&p, text).expect("config");
    p
}

#[ignore = "needs a Kafka broker: run bash scripts/test.sh"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_queries_return_data_from_a_live_service() {
    let brokers = common::brokers();
    let prometheus = tool("CHURNGUARD_PROMETHEUS_BIN", "prometheus");
    let promtool = tool("CHURNGUARD_PROMTOOL_BIN", "promtool");
    let deploy = repo().join("deploy/prometheus");

    // promtool on the shipped rules and their unit tests.
    for args in [vec!["check", "rules"], vec!["test", "rules"]] {
        let file = if args[0] == "check" { deploy.join("alerts.yml") } else { deploy.join("alerts_test.yml") };
        let out = Command::new(&promtool).args(&args).arg(&file).output().expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let topics = [
        common::unique_topic("prom-events"),
        common::unique_topic("prom-iv"),
        common::unique_topic("prom-ctl"),
        common::unique_topic("prom-dlq"),
    ];
    common::create_topic(&brokers, &topics[0], 2).await;
    for t in &topics[1..] {
        common::create_topic(&brokers, t, 1).await;
    }
    let evs = events();
    // Half now; the rest while Prometheus scrapes, so rate() windows see live traffic.
    let half = evs.len() / 2;
    let producer = common::producer(&brokers);
    common::produce_all(&producer, &topics[0], &evs[..half]).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let svc_port = free_port();
    let config = write_config(dir.path(), &brokers, &topics, &common::unique_group("prom"), svc_port);
    let log = std::fs::File::create(dir.path().join("service.log")).expect("log");
    let _svc = Kill(
        Command::new(env!("CARGO_BIN_EXE_churnguard"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "churnguard=info,rdkafka=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("churnguard run"),
    );
    let service_log = || std::fs::read_to_string(dir.path().join("service.log")).unwrap_or_default();
    let consumed_total = || {
        http_get(svc_port, "/metrics")
            .lines()
            .filter(|l| l.starts_with("churnguard_events_consumed_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let consumed = wait_until(Duration::from_secs(90), || consumed_total() >= half as f64);
    assert!(consumed, "service did not consume the first half; log:\n{}", service_log());

    // The exposition format passes promtool's linter.
    let metrics = http_get(svc_port, "/metrics");
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool check metrics");
    check.stdin.take().expect("stdin").write_all(metrics.as_bytes()).expect("write metrics");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Prometheus scraping the service every second, with the shipped alert rules.
    let prom_port = free_port();
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: churnguard\n    static_configs:\n      - targets: ['127.0.0.1:{svc_port}']\n",
            deploy.join("alerts.yml").display()
        ),
    )
    .expect("prometheus config");
    let _prom = Kill(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus"),
    );
    let scraping = wait_until(Duration::from_secs(60), || has_data(&query(prom_port, "churnguard_users_tracked")));
    assert!(scraping, "prometheus is not scraping the service");
    // The second half in slices over ~15 s of scrapes.
    for chunk in evs[half..].chunks((evs.len() - half) / 15 + 1) {
        common::produce_all(&producer, &topics[0], chunk).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let consumed = wait_until(Duration::from_secs(60), || consumed_total() >= evs.len() as f64);
    assert!(consumed, "service did not consume everything; log:\n{}", service_log());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/dashboards/churnguard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let exprs = dashboard_exprs(&dash);
    assert!(exprs.len() >= 20, "the dashboard has {} queries", exprs.len());
    let mut no_data = Vec::new();
    for (title, expr) in &exprs {
        let e = expand(expr);
        let v = query(prom_port, &e);
        assert_eq!(v["status"], "success", "panel {title:?}: query does not run: {e}\n{v}");
        if !has_data(&v) {
            no_data.push(format!("{title}: {e}"));
        }
    }
    assert!(no_data.is_empty(), "panels that would show No data:\n{}", no_data.join("\n"));

    // Every alert rule parses and evaluates against live data.
    let ok = wait_until(Duration::from_secs(20), || {
        let rules: serde_json::Value = serde_json::from_str(&http_get(prom_port, "/api/v1/rules")).unwrap_or_default();
        let groups = rules["data"]["groups"].as_array().cloned().unwrap_or_default();
        let all: Vec<serde_json::Value> =
            groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
        !all.is_empty() && all.iter().all(|r| r["health"] == "ok")
    });
    assert!(ok, "alert rules not all healthy: {}", http_get(prom_port, "/api/v1/rules"));
    let rules: serde_json::Value = serde_json::from_str(&http_get(prom_port, "/api/v1/rules")).expect("rules");
    for g in rules["data"]["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let q = r["query"].as_str().expect("query");
            assert_eq!(query(prom_port, q)["status"], "success", "alert {}: {q}", r["name"]);
        }
    }
}
