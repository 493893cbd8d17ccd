//! The `churnguard run` service under test: its config, process, metrics and topics, and the
//! event streams the Kafka tests push through it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use churnguard::features::spec::FeatureSpec;
use churnguard::intervention::Intervention;
use churnguard::model::artifact::{ModelArtifact, TierThreshold};
use churnguard::time::{format_rfc3339_ms, HOUR_MS};
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message, OwnedMessage};

use super as common;

pub const T0: i64 = 1_767_225_600_000; // 2026-01-01

/// A model whose risk depends only on silence: P = sigmoid(2 ln(1 + days silent) - 4), so
/// medium (>= 0.5) after ~6.4 silent days and high (>= 0.9) after ~21.2.
pub fn silence_model(path: &Path) {
    let spec = FeatureSpec { event_types: vec!["login".into(), "purchase".into()], ..FeatureSpec::default() };
    let tiers = vec![
        TierThreshold { name: "high".into(), min_score: 0.9 },
        TierThreshold { name: "medium".into(), min_score: 0.5 },
    ];
    let art =
        ModelArtifact::from_weights(spec, "test-silence-1", &[("recency", 2.0)], -4.0, tiers).expect("valid model");
    art.save(path).expect("writing the model");
}

pub fn event(user: &str, ty: &str, ts: i64) -> (String, Vec<u8>) {
    (
        user.to_string(),
        format!(r#"{{"user_id":"{user}","event_type":"{ty}","ts":"{}"}}"#, format_rfc3339_ms(ts)).into_bytes(),
    )
}

pub struct Topics {
    pub events: String,
    pub interventions: String,
    pub control: String,
    pub dlq: String,
    pub group: String,
}

impl Topics {
    pub async fn create(brokers: &str, prefix: &str, partitions: i32) -> Topics {
        let t = Topics {
            events: common::unique_topic(&format!("{prefix}-events")),
            interventions: common::unique_topic(&format!("{prefix}-iv")),
            control: common::unique_topic(&format!("{prefix}-ctl")),
            dlq: common::unique_topic(&format!("{prefix}-dlq")),
            group: common::unique_group(prefix),
        };
        common::create_topic(brokers, &t.events, partitions).await;
        for o in [&t.interventions, &t.control, &t.dlq] {
            common::create_topic(brokers, o, 1).await;
        }
        t
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub model: PathBuf,
    pub port: u16,
}

impl Harness {
    /// Config for the service under test; `extra` is appended TOML.
    pub fn new(brokers: &str, t: &Topics, extra: &str) -> Harness {
        Self::with(brokers, t, "", extra)
    }

    /// As `new`, with `source_extra` lines added to `[source]`.
    pub fn with(brokers: &str, t: &Topics, source_extra: &str, extra: &str) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("model.json");
        silence_model(&model);
        let port = free_port();
        let config = dir.path().join("churnguard.toml");
        let text = format!(
            r#"[kafka]
"bootstrap.servers" = "{brokers}"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
"statistics.interval.ms" = "1000"

[source]
topics = ["{ev}"]
group_id = "{group}"
idle_timeout = "1s"
{source_extra}

[sink]
interventions_topic = "{iv}"
control_topic = "{ctl}"
dead_letter_topic = "{dlq}"
commit_interval = "200ms"

[model]
path = "{model}"

[http]
listen = "127.0.0.1:{port}"

[engine]
allowed_lateness = "1s"
warm_up = "off"
{extra}
"#,
            ev = t.events,
            group = t.group,
            iv = t.interventions,
            ctl = t.control,
            dlq = t.dlq,
            model = model.display(),
        );
        std::fs::write(&config, text).expect("writing config");
        Harness { dir, config, model, port }
    }

    pub fn start(&self) -> Running {
        Running(Some(
            Command::new(env!("CARGO_BIN_EXE_churnguard"))
                .args(["run", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "churnguard=info,rdkafka=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(self.dir.path().join("service.log"))
                        .expect("log file"),
                ))
                .spawn()
                .expect("starting churnguard run"),
        ))
    }

    /// Replace the `allowed_lateness` of the harness config (`"1s"`) with `value` (e.g. `"1d"`).
    pub fn lateness(&self, value: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text = text.replacen("allowed_lateness = \"1s\"", &format!("allowed_lateness = \"{value}\""), 1);
        std::fs::write(&self.config, text).expect("config");
    }

    /// Add a `[sink]` setting (TOML value, e.g. `"\"exactly_once\""`) to the config.
    pub fn sink_setting(&self, key: &str, toml_value: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text = text.replacen("[sink]\n", &format!("[sink]\n{key} = {toml_value}\n"), 1);
        std::fs::write(&self.config, text).expect("config");
    }

    /// Add a `[kafka]` setting to the config.
    pub fn kafka_setting(&self, key: &str, value: &str) {
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text = text.replacen("[kafka]\n", &format!("[kafka]\n\"{key}\" = \"{value}\"\n"), 1);
        std::fs::write(&self.config, text).expect("config");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("service.log")).unwrap_or_default()
    }

    /// The service's /metrics page, or "" while it is not listening yet.
    pub fn metrics(&self) -> String {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return String::new() };
        let mut out = String::new();
        if write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").is_ok() {
            let _ = std::io::Read::read_to_string(&mut s, &mut out);
        }
        out
    }

    /// Sum of a metric's samples whose label set contains `filter` (e.g. `reason="not_json"`).
    pub fn metric_sum(&self, name: &str, filter: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
            .filter(|l| l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Wait up to `max` until the service has consumed exactly `n` events
    /// (`churnguard_events_consumed_total`); false if it has not by then.
    pub async fn wait_consumed(&self, n: usize, max: Duration) -> bool {
        wait_for(max, || (self.metric_sum("churnguard_events_consumed_total", "") == n as f64).then_some(()))
            .await
            .is_some()
    }

    pub fn replay(&self, events: &[(String, Vec<u8>)]) -> Vec<Intervention> {
        let file = self.dir.path().join("events.jsonl");
        let mut f = std::fs::File::create(&file).expect("events file");
        for (_, e) in events {
            f.write_all(e).and_then(|_| f.write_all(b"\n")).expect("write event");
        }
        let out = self.dir.path().join("replay.jsonl");
        let ctl = self.dir.path().join("replay-control.jsonl");
        let st = Command::new(env!("CARGO_BIN_EXE_churnguard"))
            .args(["replay", "--model"])
            .arg(&self.model)
            .arg("--events")
            .arg(&file)
            .arg("--out")
            .arg(&out)
            .arg("--control-out")
            .arg(&ctl)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("running replay");
        assert!(st.status.success(), "replay failed: {}", String::from_utf8_lossy(&st.stderr));
        let mut all = read_jsonl(&out);
        all.extend(read_jsonl(&ctl));
        all
    }
}

pub fn read_jsonl(p: &Path) -> Vec<Intervention> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("intervention line"))
        .collect()
}

/// The decisions on the interventions and control topics, read again until every one of
/// `expected` up to `until` is in, or two minutes pass. A service restoring and catching up on a
/// loaded machine pauses its outputs for longer than any fixed quiet period, and a reader that
/// stopped at the first pause would count the pause as a loss; whatever is still missing after
/// two minutes is lost.
pub async fn read_decisions(brokers: &str, t: &Topics, expected: &[Intervention], until: i64) -> Vec<Intervention> {
    let cut = format_rfc3339_ms(until);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut got =
            interventions(&read_all(brokers, &t.interventions, Duration::from_secs(8), Duration::from_secs(120)).await);
        got.extend(interventions(
            &read_all(brokers, &t.control, Duration::from_secs(2), Duration::from_secs(30)).await,
        ));
        let have: std::collections::HashSet<&str> = got.iter().map(|i| i.intervention_id.as_str()).collect();
        let complete =
            expected.iter().filter(|i| i.event_time <= cut).all(|i| have.contains(i.intervention_id.as_str()));
        if complete || Instant::now() >= deadline {
            return got;
        }
    }
}

/// Everything on `topic` from the beginning, read until nothing new arrives for `quiet`.
pub async fn read_all(brokers: &str, topic: &str, quiet: Duration, max: Duration) -> Vec<OwnedMessage> {
    let c = common::consumer(brokers, &common::unique_group("reader"), &[]);
    c.subscribe(&[topic]).expect("subscribe");
    let start = Instant::now();
    let mut out = Vec::new();
    let mut last = Instant::now();
    while start.elapsed() < max {
        match tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
            Ok(Ok(m)) => {
                out.push(m.detach());
                last = Instant::now();
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) if last.elapsed() >= quiet && (!out.is_empty() || start.elapsed() >= max / 2) => break,
            Err(_) => {}
        }
    }
    out
}

/// Every record `topic` holds, for a topic nothing writes to any more: each partition read from
/// its start up to its end, which a slow moment of the reader cannot cut short (a quiet period,
/// as in [`read_all`], can).
pub async fn read_to_end(brokers: &str, topic: &str) -> Vec<OwnedMessage> {
    use rdkafka::error::KafkaError;
    use rdkafka::{Offset, TopicPartitionList};
    let c = common::consumer(brokers, &common::unique_group("reader"), &[("enable.partition.eof", "true")]);
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let parts: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    assert!(!parts.is_empty(), "{topic} has no partitions");
    let mut tpl = TopicPartitionList::new();
    let mut open = std::collections::HashSet::new();
    for p in parts {
        let (low, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
            open.insert(p);
        }
    }
    let mut out = Vec::new();
    if open.is_empty() {
        return out;
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} to its end took over two minutes");
        match tokio::time::timeout(Duration::from_secs(1), c.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => {}
        }
    }
    out
}

pub fn interventions(msgs: &[OwnedMessage]) -> Vec<Intervention> {
    msgs.iter().map(|m| serde_json::from_slice(m.payload().expect("payload")).expect("intervention JSON")).collect()
}

/// Poll `f` until it returns Some or `max` passes.
pub async fn wait_for<T>(max: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < max {
        if let Some(v) = f() {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// A service process that is killed if the test ends (or panics) without stopping it.
pub struct Running(pub Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Send `signal` (e.g. `"-STOP"`) to a running service without waiting for anything.
pub fn signal(running: &Running, signal: &str) {
    let child = running.0.as_ref().expect("a running service");
    let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
}

pub fn stop(mut running: Running, signal: &str) -> std::process::ExitStatus {
    let mut child = running.0.take().expect("a running service");
    let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
    let start = Instant::now();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st;
        }
        if start.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            panic!("service did not exit within 40s of {signal}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sim-like traffic for many users, some of whom go quiet, for crash and equivalence tests.
/// Cut `evs` (in time order) into `n` slices of about equal size, each ending between two time
/// steps of the stream (a gap of an hour or more). The tests run with one second of allowed
/// lateness: a slice that ended inside a step would leave the rest of the step behind a
/// watermark the idle clock moved on while the service waited for it (late, so dropped, unlike in
/// replay).
pub fn step_slices(evs: &[(String, Vec<u8>)], n: usize) -> Vec<std::ops::Range<usize>> {
    let ts = |e: &(String, Vec<u8>)| churnguard::event::parse_event(&e.1, 4096).expect("valid event").ts;
    let mut cuts: Vec<usize> = (0..=n)
        .map(|r| {
            let mut i = evs.len() * r / n;
            while i > 0 && i < evs.len() && ts(&evs[i]) - ts(&evs[i - 1]) < HOUR_MS {
                i += 1;
            }
            i
        })
        .collect();
    cuts.dedup();
    cuts.windows(2).map(|w| w[0]..w[1]).collect()
}

pub fn mixed_stream(users: usize, days: i64) -> Vec<(String, Vec<u8>)> {
    let mut evs = Vec::new();
    for h in (0..days * 24).step_by(4) {
        let ts = T0 + h * HOUR_MS;
        for u in 0..users {
            // User u goes quiet after day (u % days); a third of users never do.
            let quiet_from = if u % 3 == 0 { days } else { (u as i64 * 7) % days };
            if h / 24 < quiet_from && (h / 4 + u as i64) % 3 == 0 {
                evs.push(event(&format!("m{u:04}"), if u % 5 == 0 { "purchase" } else { "login" }, ts + u as i64));
            }
        }
    }
    evs
}

/// Produce `(partition, key, payload)` to explicit partitions and wait for every delivery.
pub async fn produce_to(brokers: &str, topic: &str, items: &[(i32, String, Vec<u8>)]) {
    use rdkafka::producer::FutureRecord;
    let p = common::producer(brokers);
    let mut pending = Vec::new();
    for (part, k, v) in items {
        let rec = FutureRecord::to(topic).partition(*part).key(k.as_bytes()).payload(v.as_slice());
        pending.push(p.send(rec, Duration::from_secs(30)));
    }
    for d in futures::future::join_all(pending).await {
        d.unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
    }
}

/// [`produce_to`] in one committed transaction: each partition's last record is then followed by
/// a commit marker, an offset that no consumer is ever handed.
pub fn produce_in_transaction(brokers: &str, topic: &str, items: &[(i32, String, Vec<u8>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = common::client_config(brokers)
        .set("transactional.id", common::unique_group("txn-input"))
        .create()
        .expect("creating a transactional producer");
    let t = Duration::from_secs(30);
    p.init_transactions(t).expect("init_transactions");
    p.begin_transaction().expect("begin_transaction");
    for (part, k, v) in items {
        let mut rec = BaseRecord::to(topic).partition(*part).key(k.as_bytes()).payload(v.as_slice());
        while let Err((e, r)) = p.send(rec) {
            assert!(matches!(e.rdkafka_error_code(), Some(rdkafka::types::RDKafkaErrorCode::QueueFull)), "{e}");
            p.poll(Duration::from_millis(10));
            rec = r;
        }
    }
    p.commit_transaction(t).expect("commit_transaction");
}

/// `n` logins of `users` users to partition 0, `step_ms` apart, produced in chunks.
pub async fn produce_backlog(brokers: &str, topic: &str, n: i64, users: i64, step_ms: i64) {
    let items: Vec<(i32, String, Vec<u8>)> = (0..n)
        .map(|i| {
            let (k, v) = event(&format!("b{}", i % users), "login", T0 + i * step_ms);
            (0, k, v)
        })
        .collect();
    for chunk in items.chunks(50_000) {
        produce_to(brokers, topic, chunk).await;
    }
}

pub fn header(m: &OwnedMessage, name: &str) -> Option<String> {
    m.headers()?.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The quiet-partition scenario, before a restart: partition 0 holds 20 users (`q00`..`q19`)
/// active for two days and silent after; partition 1 holds 4 busy users.
pub fn quiet_partition_history() -> Vec<(i32, String, Vec<u8>)> {
    let day = churnguard::time::DAY_MS;
    let mut first = Vec::new();
    for d in 0..3i64 {
        for u in 0..20 {
            if d < 2 {
                let (k, v) = event(&format!("q{u:02}"), "login", T0 + d * day + u);
                first.push((0, k, v));
            }
        }
        for b in 0..4 {
            let (k, v) = event(&format!("busy{b}"), "purchase", T0 + d * day + 100 + b);
            first.push((1, k, v));
        }
    }
    first
}

/// After the restart, only partition 1 gets input: six more weeks of its busy users, which
/// carry the watermark (and so partition 0's idle clock) past the quiet users' silence.
pub fn quiet_partition_later() -> Vec<(i32, String, Vec<u8>)> {
    let day = churnguard::time::DAY_MS;
    let mut later = Vec::new();
    for d in 3..45i64 {
        for b in 0..4 {
            let (k, v) = event(&format!("busy{b}"), "purchase", T0 + d * day + 100 + b);
            later.push((1, k, v));
        }
    }
    later
}

/// The quiet users flagged (interventions or control records) within 90 s; every one of them
/// must have been flagged for silence.
pub async fn quiet_users_flagged(brokers: &str, t: &Topics) -> std::collections::BTreeSet<String> {
    let mut flagged = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while flagged.len() < 20 && Instant::now() < deadline {
        for topic in [&t.interventions, &t.control] {
            for iv in interventions(&read_all(brokers, topic, Duration::from_secs(2), Duration::from_secs(8)).await) {
                if iv.user_id.starts_with('q') {
                    assert_eq!(iv.trigger, churnguard::intervention::Trigger::Silence, "{iv:?}");
                    flagged.insert(iv.user_id);
                }
            }
        }
    }
    flagged
}

/// The kill -9 loop (fault test 2): half of `evs` is produced as a backlog, then `kills` runs of
/// the service each get a slice of the rest and are SIGKILLed at a random point once they hold
/// partitions. Even runs get their slice before the kill (it lands in a restore or a catch-up),
/// odd runs while it arrives (it lands mid-stream). A run lives `min_ms` plus up to `spread_ms`.
/// The seed is printed for reproduction.
pub async fn kill_loop(
    brokers: &str,
    h: &Harness,
    t: &Topics,
    evs: &[(String, Vec<u8>)],
    kills: usize,
    min_ms: u64,
    spread_ms: u64,
) {
    let producer = common::producer(brokers);
    let mut seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
    eprintln!("kill loop seed {seed}");
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n.max(1)
    };
    // Slices end between time steps (see `step_slices`).
    let slices = step_slices(evs, 2 * kills);
    let half = slices[kills].start;
    common::produce_all(&producer, &t.events, &evs[..half]).await;
    for (k, part) in slices[kills..].iter().enumerate() {
        let child = h.start();
        let live = evs[part.clone()].to_vec();
        let joined = wait_for(Duration::from_secs(60), || {
            (h.metric_sum("churnguard_partitions_assigned", "") > 0.0).then_some(())
        })
        .await;
        assert!(joined.is_some(), "run {k} got no partitions; log:\n{}", h.log());
        let lives = Duration::from_millis(min_ms + next(spread_ms));
        if k % 2 == 1 {
            let p = producer.clone();
            let topic = t.events.clone();
            let send = tokio::spawn(async move { common::produce_all(&p, &topic, &live).await });
            tokio::time::sleep(lives).await;
            assert!(!stop(child, "-KILL").success());
            send.await.expect("producing a live slice");
        } else {
            common::produce_all(&producer, &t.events, &live).await;
            tokio::time::sleep(lives).await;
            assert!(!stop(child, "-KILL").success());
        }
    }
}

/// No intervention id was read twice (exactly once, by a `read_committed` reader).
pub fn assert_nothing_doubled(got: &[Intervention]) {
    let mut seen = std::collections::BTreeSet::new();
    let doubled: Vec<&str> = got
        .iter()
        .filter(|iv| !seen.insert(iv.intervention_id.as_str()))
        .map(|iv| iv.intervention_id.as_str())
        .collect();
    assert!(
        doubled.is_empty(),
        "{} decisions seen twice by a read_committed reader, e.g. {:?}",
        doubled.len(),
        doubled.first()
    );
}

/// For a failure message: what the service decided for `users`, and each instance's warnings.
pub fn lost_report(
    got: &[Intervention],
    users: &std::collections::BTreeSet<&str>,
    instances: &[(&str, &Harness)],
) -> String {
    let theirs: Vec<String> = got
        .iter()
        .filter(|i| users.contains(i.user_id.as_str()))
        .map(|i| format!("{} {} {} {:?} control={}", i.user_id, i.event_time, i.tier, i.trigger, i.control))
        .collect();
    let mut out = format!("the service's decisions for those users: {theirs:#?}");
    for (name, h) in instances {
        let log = h.log();
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        out.push_str(&format!("\n{name}'s warnings:\n{}", warnings.join("\n")));
    }
    out
}

/// Every decision replay makes up to `until` was published, and every repeated id repeats the
/// same decision. Returns how many outputs repeated an id.
pub fn assert_same_decisions_at_least_once(expected: &[Intervention], got: &[Intervention], until: i64) -> usize {
    let mut by_id: std::collections::HashMap<&str, &Intervention> = std::collections::HashMap::new();
    for iv in got {
        if let Some(prev) = by_id.insert(&iv.intervention_id, iv) {
            assert_eq!(
                (&prev.user_id, &prev.tier, &prev.event_time, prev.control),
                (&iv.user_id, &iv.tier, &iv.event_time, iv.control),
                "a duplicate id must be the same decision"
            );
        }
    }
    let until = churnguard::time::format_rfc3339_ms(until);
    let ids = |v: &[Intervention]| -> std::collections::BTreeSet<String> {
        v.iter().filter(|i| i.event_time <= until).map(|i| i.intervention_id.clone()).collect()
    };
    let (want, have) = (ids(expected), ids(got));
    let missing: Vec<_> = want.difference(&have).collect();
    eprintln!("{} replay decisions, {} lost, {} duplicates", want.len(), missing.len(), got.len() - by_id.len());
    // What was lost, as replay decided it: when, why and for whom tells a slow reader (the
    // newest decisions) from a restore that lost state (one partition's users).
    let lost: Vec<String> = expected
        .iter()
        .filter(|i| missing.contains(&&i.intervention_id))
        .map(|i| format!("{} {} {} {:?} control={}", i.user_id, i.event_time, i.tier, i.trigger, i.control))
        .collect();
    assert!(missing.is_empty(), "{} of {} replay decisions lost: {lost:#?}", missing.len(), want.len());
    got.len() - by_id.len()
}
