//! `churnguard bench`: the figures in docs/PERFORMANCE.md, reproducible with one command.
//!
//! `bench replay` measures file replay (parse, feature update, scoring per event, silent
//! rescoring, policy) on simulator data, peak memory and state bytes per user, and training time
//! on about a million labelled rows. `bench kafka` measures the service through a real broker
//! against a bare librdkafka consumer, and event-to-intervention latency at a fixed rate.
//! `bench baseline` (module [`baseline`]) compares the engine with a hand-written loop in one
//! run. `bench state` (module [`state`]) measures changelog restore speed, and memory and changelog
//! volume with TTL eviction under way.

pub mod baseline;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::engine::{Engine, EngineConfig, WarmUp};
use crate::event::DEFAULT_MAX_EVENT_BYTES;
use crate::features::{FeatureSpec, Layout};
use crate::model::dataset::{self, EventLog, LabelSource, Labelling};
use crate::model::train::{self, TrainContext, TrainOptions};
use crate::model::ModelArtifact;
use crate::pipeline::replay::{self, ReplaySink, ReplaySummary};
use crate::policy::PolicyConfig;
use crate::sim::{self, SimConfig};
use crate::time::{Span, DAY_MS};

/// Peak resident memory since the last reset, in bytes (Linux; 0 elsewhere).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Reset the peak-RSS mark, so a phase's peak excludes what came before (Linux >= 4.0).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub struct ReplayBenchOptions {
    pub users: u64,
    pub days: u32,
    pub seed: u64,
    pub model: PathBuf,
    pub workdir: PathBuf,
    /// Target rows for the training-time measurement (0: no training measurement).
    pub train_rows: usize,
    /// Rounds of the replay measurements, each mode once per round; events/s are reported as
    /// min and median.
    pub repeat: usize,
    /// Engines of the multi-threaded row (`replay --threads`); 1 or less: no such row.
    pub threads: usize,
}

fn run_replay(path: &Path, art: &ModelArtifact, engine_cfg: EngineConfig) -> Result<(ReplaySummary, u64, usize)> {
    run_replay_on(path, art, engine_cfg, 1)
}

/// Replay on `threads` engines (`replay --threads`); returns the summary, the peak RSS and the
/// store's heap bytes per tracked user.
fn run_replay_on(
    path: &Path,
    art: &ModelArtifact,
    engine_cfg: EngineConfig,
    threads: usize,
) -> Result<(ReplaySummary, u64, usize)> {
    reset_peak_rss();
    let mut engines: Vec<Engine> =
        (0..threads.max(1)).map(|_| Engine::new(art, PolicyConfig::default(), engine_cfg.clone())).collect();
    let mut sink = std::io::sink();
    let s = replay::replay_sharded(
        path,
        DEFAULT_MAX_EVENT_BYTES,
        &mut engines,
        ReplaySink { interventions: &mut sink, control: None },
    )?;
    let peak = peak_rss_bytes();
    Ok((s.clone(), peak, s.state_bytes / s.users_tracked.max(1)))
}

pub fn replay_bench(o: &ReplayBenchOptions) -> Result<String> {
    std::fs::create_dir_all(&o.workdir)?;
    let events = o.workdir.join(format!("bench-{}u-{}d-{}.jsonl", o.users, o.days, o.seed));
    let cfg = SimConfig { users: o.users, days: o.days, seed: o.seed, ..SimConfig::default() };
    let t = Instant::now();
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&events).with_context(|| events.display().to_string())?,
    );
    let sim_summary = sim::simulate::<_, std::io::Sink>(&cfg, &mut f, None)?;
    std::io::Write::flush(&mut f)?;
    drop(f);
    let sim_secs = t.elapsed().as_secs_f64();
    let art = ModelArtifact::load(&o.model)?;
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        format!(
            "data: simulator seed {}, {} users, {} days, {} events ({:.0} MB JSONL), simulated in {sim_secs:.1}s",
            o.seed,
            o.users,
            o.days,
            sim_summary.events,
            std::fs::metadata(&events)?.len() as f64 / 1e6
        ),
    );
    line(&mut out, format!("model: {} ({} features)", art.model_version, art.feature_names.len()));
    line(&mut out, String::new());
    line(&mut out, format!("{} round(s), each mode once per round; events/s as min / median", o.repeat.max(1)));
    line(&mut out, String::new());
    line(&mut out, "| replay mode | events/s min | events/s median | wall s median | scorings on event | rescorings while silent | rescorings per event | interventions + control | peak RSS MB |".into());
    line(&mut out, "|---|---|---|---|---|---|---|---|---|".into());
    // Without the warm-up, every decision is emitted from the first event: the same output volume
    // as the figures in docs/PERFORMANCE.md were measured with.
    let full = EngineConfig { warm_up: WarmUp::Off, ..EngineConfig::default() };
    let no_silence = EngineConfig { rescore_interval: Span::days(3650), state_ttl: Span::days(3651), ..full.clone() };
    let polling = EngineConfig { exhaustive_polling: true, ..full.clone() };
    let threaded = format!("the same on {} threads (`replay --threads {}`)", o.threads, o.threads);
    let mut modes = vec![
        ("per-event update + score (no timer rescoring)", no_silence, 1),
        ("full engine, every due time rescored (before issue 9)", polling, 1),
        ("full engine, rescored where a tier can be crossed (TTL 120d)", full.clone(), 1),
    ];
    if o.threads > 1 {
        modes.push((threaded.as_str(), full, o.threads));
    }
    let mut runs: Vec<Vec<(ReplaySummary, u64)>> = modes.iter().map(|_| Vec::new()).collect();
    let mut state_per_user = 0;
    // Rounds interleave the modes, so drift on a shared machine hits them alike.
    for _ in 0..o.repeat.max(1) {
        for ((_, ecfg, threads), runs) in modes.iter().zip(&mut runs) {
            let (s, peak, per_user) = run_replay_on(&events, &art, ecfg.clone(), *threads)?;
            if *threads == 1 {
                state_per_user = state_per_user.max(per_user);
            }
            runs.push((s, peak));
        }
    }
    for ((name, _, _), runs) in modes.iter().zip(&runs) {
        let rates: Vec<f64> = runs.iter().map(|(s, _)| s.events_per_second()).collect();
        let walls: Vec<f64> = runs.iter().map(|(s, _)| s.elapsed.as_secs_f64()).collect();
        let ((min, median), (_, wall)) = (min_median(&rates), min_median(&walls));
        let (s, _) = &runs[0];
        let peak = runs.iter().map(|(_, p)| *p).max().unwrap_or(0);
        line(
            &mut out,
            format!(
                "| {name} | {min:.0} | {median:.0} | {wall:.2} | {} | {} | {:.3} | {} | {:.0} |",
                s.counters.scored_on_event,
                s.counters.scored_on_timer,
                s.counters.scored_on_timer as f64 / s.valid.max(1) as f64,
                s.counters.interventions + s.counters.control,
                peak as f64 / 1e6
            ),
        );
    }
    let layout = Layout::new(&art.spec, Span::days(30).ms());
    let default_layout = Layout::new(&FeatureSpec::default(), Span::days(30).ms());
    line(&mut out, String::new());
    line(&mut out, format!("window state per user: {} bytes for this model's spec ({} event types), {} bytes for the default spec; all heap of the store per tracked user (ids, hash table, arenas with growth slack): {state_per_user} bytes", layout.state_bytes(), art.spec.event_types.len(), default_layout.state_bytes()));

    if o.train_rows == 0 {
        return Ok(out);
    }
    // Training time on about `train_rows` labelled rows: as many weekly cutoffs as needed.
    let log = EventLog::load(&events)?;
    let last = log.last_ts();
    let horizon = Span::days(30);
    let first_cut = last - horizon.ms() - DAY_MS;
    let users = log.users();
    // Not every user is in the population at every cutoff (about three in four here).
    let n_cutoffs = ((o.train_rows as f64 / users.max(1) as f64) * 1.35).ceil().clamp(1.0, 20.0) as usize;
    let cutoffs: Vec<i64> = (0..n_cutoffs as i64)
        .map(|i| first_cut - i * 7 * DAY_MS)
        .filter(|c| *c > log.first_ts() + 14 * DAY_MS)
        .collect();
    let lab = Labelling { cutoffs: cutoffs.clone(), horizon, active_within: None, source: LabelSource::Silence };
    let t = Instant::now();
    let data = dataset::build(&log, &art.spec, &lab)?;
    let build_secs = t.elapsed().as_secs_f64();
    let ctx = TrainContext {
        events_file: events.display().to_string(),
        data_from: String::new(),
        data_to: String::new(),
        cutoffs: vec![],
        horizon: horizon.to_string(),
        active_within: None,
        label_source: lab.source.describe(),
    };
    reset_peak_rss();
    let t = Instant::now();
    let (rows, n_features) = (data.rows(), data.n_features);
    let outcome = train::train(&art.spec, data, ctx, &TrainOptions::default())?;
    let train_secs = t.elapsed().as_secs_f64();
    line(&mut out, String::new());
    line(
        &mut out,
        format!(
            "training: {} labelled rows x {} features over {} cutoffs; dataset built (replay to each cutoff) in {build_secs:.1}s; fit (L2 search on <= 200k rows over {} strengths, then the final fit on all rows) in {train_secs:.1}s; peak RSS {:.0} MB; validation ROC AUC {:.4}",
            rows,
            n_features,
            cutoffs.len(),
            TrainOptions::default().l2_grid.len(),
            peak_rss_bytes() as f64 / 1e6,
            outcome.artifact.training.validation.roc_auc
        ),
    );
    Ok(out)
}

pub struct KafkaBenchOptions {
    pub brokers: String,
    pub users: u64,
    pub days: u32,
    pub partitions: i32,
    pub model: PathBuf,
    /// Events per second for the latency run, as a share of the measured service rate.
    pub latency_load: f64,
    pub latency_seconds: u64,
    /// Worker counts to measure the service at.
    pub workers: Vec<usize>,
    /// Rounds; figures are reported as min and median.
    pub repeat: usize,
    /// `[kafka]` overrides for the service and the bare consumer.
    pub kafka: Vec<(String, String)>,
    /// Processing guarantees to measure the service with, side by side in each round.
    pub guarantees: Vec<crate::config::Guarantee>,
    /// `sink.commit_interval` of the service runs (commits, changelog flushes, transactions).
    pub commit_interval: Span,
    /// `[state] changelog` of the service runs.
    pub changelog: bool,
    /// `state.flush_interval` of the service runs.
    pub flush_interval: Span,
}

/// The q-quantile of a Prometheus histogram, interpolated within its bucket.
fn histogram_quantile(h: &prometheus::proto::Histogram, q: f64) -> f64 {
    let total = h.get_sample_count() as f64;
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut prev_bound = 0.0;
    let mut prev_count = 0.0;
    for b in h.get_bucket() {
        let (bound, count) = (b.upper_bound(), b.cumulative_count() as f64);
        if count >= rank {
            let width = count - prev_count;
            return if width <= 0.0 { bound } else { prev_bound + (bound - prev_bound) * (rank - prev_count) / width };
        }
        prev_bound = bound;
        prev_count = count;
    }
    prev_bound
}

fn sim_lines(users: u64, days: u32) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    sim::generate(&SimConfig { users, days, seed: 11, ..SimConfig::default() }, |e| {
        let mut line = Vec::with_capacity(112);
        sim::write_event_json(&mut line, e);
        line.pop();
        out.push((sim::user_id_string(e.user_id), line));
    })?;
    Ok(out)
}

/// Counts the load generator's delivery failures (librdkafka's callback, on its poll thread).
#[derive(Default)]
struct DeliveryFailures(std::sync::atomic::AtomicU64);

impl rdkafka::ClientContext for DeliveryFailures {}

impl rdkafka::producer::ProducerContext for DeliveryFailures {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if r.is_err() {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Produce `items` to `topic`, at `rate` events/s if given, and wait until all are acknowledged.
///
/// It blocks its thread (called through `block_in_place`): a load generator on the same 2 cores
/// as the broker and the service must cost as little as it can, since what it takes the service
/// does not get. A future per record (rust-rdkafka's `FutureProducer`, used before) loaded the
/// bench's topic at 317k events/s; records handed to librdkafka as they are, at 1.16M (one run
/// each, 2026-11-28).
fn produce(
    o: &KafkaBenchOptions,
    linger_ms: u32,
    topic: &str,
    items: &[(String, Vec<u8>)],
    rate: Option<f64>,
) -> Result<()> {
    use rdkafka::error::KafkaError;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    use rdkafka::types::RDKafkaErrorCode;
    let mut pc = rdkafka::config::ClientConfig::new();
    pc.set("bootstrap.servers", &o.brokers)
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000");
    // `--set` applies to every client of the bench, the generator included.
    for (k, v) in &o.kafka {
        pc.set(k, v);
    }
    let producer: ThreadedProducer<DeliveryFailures> = pc.create_with_context(DeliveryFailures::default())?;
    let start = Instant::now();
    // Sleeping for less than this costs more than it paces: the events of a shorter gap go out
    // together, as a producer's batch would take them anyway.
    let min_sleep = std::time::Duration::from_micros(200);
    for (i, (k, v)) in items.iter().enumerate() {
        if let Some(r) = rate {
            let due = std::time::Duration::from_secs_f64(i as f64 / r);
            if let Some(w) = due.checked_sub(start.elapsed()).filter(|w| *w >= min_sleep) {
                std::thread::sleep(w);
            }
        }
        let mut record = BaseRecord::to(topic).key(k.as_bytes()).payload(v.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e).context("producing the bench's events"),
            }
        }
    }
    producer.flush(std::time::Duration::from_secs(120))?;
    let failed = producer.context().0.load(std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} of the bench's events were not delivered");
    Ok(())
}

async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> Result<()> {
    let with: Vec<TopicSpec<'_>> = topics.iter().map(|&(t, p)| (t, p, &[][..])).collect();
    create_topics_with(brokers, &with).await
}

/// A topic to create: name, partitions, topic configs.
type TopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// Create topics, each with its own topic configs.
async fn create_topics_with(brokers: &str, topics: &[TopicSpec<'_>]) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p, configs)| {
            configs.iter().fold(NewTopic::new(t, *p, TopicReplication::Fixed(1)), |n, (k, v)| n.set(k, v))
        })
        .collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    Ok(())
}

/// Delete the topics the bench is done with: a run writes about 1.5 GB to the broker, and left in
/// place every later round and run would measure a broker holding the earlier ones' data (its
/// disk, its page cache, its partitions). Best effort: a failure is reported and the bench goes on.
async fn delete_topics(brokers: &str, which: impl Fn(&str) -> bool) {
    if let Err(e) = try_delete_topics(brokers, which).await {
        tracing::warn!(error = %e, "could not delete the bench's topics");
    }
}

/// `topic`, and the changelog a service made for it or for `group` (`<group>-<input>-changelog`).
fn made_for(name: &str, topic_or_group: &str) -> bool {
    name.strip_prefix(topic_or_group).is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

async fn try_delete_topics(brokers: &str, which: impl Fn(&str) -> bool) -> Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut cc = rdkafka::config::ClientConfig::new();
    cc.set("bootstrap.servers", brokers);
    let metadata = cc.create::<BaseConsumer>()?.fetch_metadata(None, std::time::Duration::from_secs(10))?;
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).filter(|n| which(n)).collect();
    if !names.is_empty() {
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = cc.create()?;
        for r in admin.delete_topics(&names, &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("deleting {t}: {e}"))?;
        }
    }
    Ok(())
}

/// Consume `n` messages with a bare librdkafka consumer doing nothing else; events/s from the
/// first message to the last (the group join is excluded).
async fn bare_rate(brokers: &str, topic: &str, n: usize, kafka: &[(String, String)], round: usize) -> Result<f64> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let mut cc = rdkafka::config::ClientConfig::new();
    // The same librdkafka settings as the service's, so that only the processing differs.
    cc.set("bootstrap.servers", brokers).set("fetch.queue.backoff.ms", "10").set("fetch.wait.max.ms", "100");
    for (k, v) in kafka {
        cc.set(k, v);
    }
    let c: StreamConsumer = cc
        .set("group.id", format!("bench-bare-{}-{round}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()?;
    c.subscribe(&[topic])?;
    let mut first = None;
    let mut got = 0usize;
    while got < n {
        let _m = tokio::time::timeout(std::time::Duration::from_secs(60), c.recv())
            .await
            .context("bare consumer stalled")??;
        first.get_or_insert_with(Instant::now);
        got += 1;
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    Ok(n as f64 / secs.max(1e-9))
}

fn consumed(m: &crate::telemetry::Metrics) -> f64 {
    use prometheus::core::Collector;
    m.events_consumed.collect().iter().flat_map(|f| f.get_metric().iter().map(|x| x.get_counter().get_value())).sum()
}

/// A service under measurement: its metrics, its stop switch and its thread.
type BenchService = (
    std::sync::Arc<crate::telemetry::Metrics>,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<Result<crate::pipeline::kafka::RunSummary>>,
);

/// Run the service in a runtime of its own with `workers` threads until `stop` fires.
fn spawn_service(cfg: crate::config::Config, workers: usize) -> Result<BenchService> {
    let metrics = std::sync::Arc::new(crate::telemetry::Metrics::new());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let m = metrics.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(BENCH_WORKER)
        .enable_all()
        .build()?;
    let handle = std::thread::spawn(move || {
        rt.block_on(crate::service::run(
            cfg,
            m,
            async {
                let _ = rx.await;
            },
            |_| {},
        ))
    });
    Ok((metrics, tx, handle))
}

fn min_median(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s.first().copied().unwrap_or(f64::NAN), s.get(s.len() / 2).copied().unwrap_or(f64::NAN))
}

/// Name of the measured service's worker threads (at most 15 bytes: Linux truncates).
const BENCH_WORKER: &str = "cg-bench-worker";

/// CPU seconds (user + system) used so far by this process's live threads named `name`, or by
/// the calling thread for `None` (Linux /proc; clock ticks of 10 ms).
fn cpu_seconds(name: Option<&str>) -> f64 {
    fn ticks(stat: &str) -> u64 {
        // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        get(11) + get(12)
    }
    const USER_HZ: f64 = 100.0;
    let Some(name) = name else {
        return std::fs::read_to_string("/proc/thread-self/stat").map_or(f64::NAN, |s| ticks(&s) as f64 / USER_HZ);
    };
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return f64::NAN };
    let mut total = 0u64;
    for task in dir.flatten() {
        let p = task.path();
        let is_worker = std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim_end() == name);
        if is_worker {
            total += std::fs::read_to_string(p.join("stat")).map_or(0, |s| ticks(&s));
        }
    }
    total as f64 / USER_HZ
}

/// The engine alone on the same events, one core: parse, features, score, policy, and the
/// decisions encoded as the service encodes them. Returns (events per wall second, events per
/// CPU second).
fn engine_rate(items: &[(String, Vec<u8>)], model: &ModelArtifact, cfg: &crate::config::Config) -> (f64, f64) {
    let mut engine = Engine::new(model, cfg.policy.clone(), cfg.engine.clone());
    let mut staging = crate::sink::kafka::Staging::default();
    let t = Instant::now();
    let cpu = cpu_seconds(None);
    for (_, line) in items {
        if let Ok(ev) = crate::event::parse_event(line, DEFAULT_MAX_EVENT_BYTES) {
            staging.clear();
            engine.ingest_decisions(&ev, &mut |d| staging.push(d, 0));
        }
    }
    std::hint::black_box(staging.len());
    let n = items.len() as f64;
    (n / t.elapsed().as_secs_f64(), n / (cpu_seconds(None) - cpu))
}

pub async fn kafka_bench(o: &KafkaBenchOptions) -> Result<String> {
    let tag = format!("{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis());
    let events = format!("bench-events-{tag}");
    let (iv, ctl, dlq) = (format!("bench-iv-{tag}"), format!("bench-ctl-{tag}"), format!("bench-dlq-{tag}"));
    create_topics(&o.brokers, &[(&events, o.partitions), (&iv, 1), (&ctl, 1), (&dlq, 1)]).await?;
    let items = sim_lines(o.users, o.days)?;
    let n = items.len();
    let model = ModelArtifact::load(&o.model)?;
    let t = Instant::now();
    tokio::task::block_in_place(|| produce(o, 20, &events, &items, None))?;
    let produce_rate = n as f64 / t.elapsed().as_secs_f64();

    let mut cfg = crate::config::Config::default();
    cfg.kafka.insert("bootstrap.servers".into(), o.brokers.clone());
    cfg.kafka.insert("session.timeout.ms".into(), "6000".into());
    for (k, v) in &o.kafka {
        cfg.kafka.insert(k.clone(), v.clone());
    }
    cfg.source.topics = vec![events.clone()];
    cfg.sink.interventions_topic = iv.clone();
    cfg.sink.control_topic = ctl.clone();
    cfg.sink.dead_letter_topic = dlq.clone();
    cfg.model.path = o.model.clone();
    cfg.http.listen = "127.0.0.1:0".into();
    // Latency is measured on interventions: emit them from the first event (no warm-up).
    cfg.engine.warm_up = WarmUp::Off;
    // Counts reach the registry at each worker tick; a short tick keeps the timing resolution fine.
    cfg.sink.commit_interval = o.commit_interval;
    cfg.state.changelog = o.changelog;
    cfg.state.flush_interval = o.flush_interval;
    cfg.validate()?;

    // Side by side, interleaved per round so that machine noise hits every side alike.
    let mut bare = Vec::new();
    let mut engine = Vec::new();
    let mut engine_cpu = Vec::new();
    let guarantees =
        if o.guarantees.is_empty() { vec![crate::config::Guarantee::AtLeastOnce] } else { o.guarantees.clone() };
    let runs: Vec<(usize, crate::config::Guarantee)> =
        o.workers.iter().flat_map(|&w| guarantees.iter().map(move |&g| (w, g))).collect();
    let mut service: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut service_cpu: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut outputs = 0.0;
    for round in 0..o.repeat.max(1) {
        bare.push(bare_rate(&o.brokers, &events, n, &o.kafka, round).await?);
        let (wall, cpu) = engine_rate(&items, &model, &cfg);
        engine.push(wall);
        engine_cpu.push(cpu);
        for (i, &(w, g)) in runs.iter().enumerate() {
            let mut c = cfg.clone();
            c.source.group_id = format!("bench-svc-{tag}-{round}-{w}-{i}");
            let group = c.source.group_id.clone();
            c.runtime.workers = w;
            c.sink.processing_guarantee = g;
            let (metrics, stop, handle) = spawn_service(c, w)?;
            let mut first = None;
            let mut cpu_first = f64::NAN;
            let deadline = Instant::now() + std::time::Duration::from_secs(900);
            loop {
                let got = consumed(&metrics);
                if got > 0.0 && first.is_none() {
                    first = Some(Instant::now());
                    cpu_first = cpu_seconds(Some(BENCH_WORKER));
                }
                if got >= n as f64 || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            service[i].push(n as f64 / first.map_or(f64::NAN, |f| f.elapsed().as_secs_f64()));
            service_cpu[i].push(n as f64 / (cpu_seconds(Some(BENCH_WORKER)) - cpu_first));
            outputs = metrics.interventions.collect_total() + metrics.control.collect_total();
            let _ = stop.send(());
            handle.join().map_err(|_| anyhow::anyhow!("service thread panicked"))??;
            // Its changelog, named after the group.
            delete_topics(&o.brokers, |n| made_for(n, &group)).await;
        }
    }

    // Latency below saturation: a live stream at a fixed share of the maximum rate. On a small
    // machine the load generator and the broker's appends share the cores with the service, so
    // the maximum that a live stream reaches is lower than the rate at which a loaded topic is
    // drained: the latency run's rate is a share of the live maximum (measured first, with the
    // generator producing as fast as it can), and never above a share of the loaded-topic
    // rates. Latency is timed twice: from each event's creation by the load generator
    // (CreateTime), and from its append to the log (LogAppendTime), which leaves out the
    // generator's own batching and queueing on this shared machine: what the service adds.
    // Measured at each worker count: on a machine this small, a worker more also takes a core
    // from the broker and the load generator.
    let (_, bare_median) = min_median(&bare);
    let mut counts: Vec<usize> = o.workers.clone();
    counts.sort_unstable();
    counts.dedup();
    let mut latency = Vec::new();
    for &w in &counts {
        let best = runs
            .iter()
            .zip(&service)
            .filter(|((rw, g), _)| *rw == w && *g == crate::config::Guarantee::AtLeastOnce)
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0, f64::max);
        let (max_topic, live, append) = (
            format!("bench-live-max-{tag}-{w}"),
            format!("bench-live-{tag}-{w}"),
            format!("bench-live-append-{tag}-{w}"),
        );
        create_topics(&o.brokers, &[(&max_topic, o.partitions), (&live, o.partitions)]).await?;
        create_topics_with(&o.brokers, &[(&append, o.partitions, &[("message.timestamp.type", "LogAppendTime")])])
            .await?;
        let live_max = live_run(o, &cfg, &max_topic, &items, None, w).await?.rate;
        delete_topics(&o.brokers, |n| made_for(n, &max_topic)).await;
        let ceiling = if best > 0.0 { live_max.min(best) } else { live_max };
        let rate = (ceiling.min(bare_median) * o.latency_load).max(100.0);
        let live_n = ((rate * o.latency_seconds as f64) as usize).min(n);
        let mut runs_at = Vec::new();
        for (topic, from) in [(&live, "creation (CreateTime)"), (&append, "append to the log (LogAppendTime)")] {
            runs_at.push((from, live_run(o, &cfg, topic, &items[..live_n], Some(rate), w).await?));
            delete_topics(&o.brokers, |n| made_for(n, topic)).await;
        }
        latency.push((w, live_max, rate, live_n, runs_at));
    }
    delete_topics(&o.brokers, |n| n.contains(&tag)).await;
    let (bare_min, bare_med) = min_median(&bare);
    let (eng_min, eng_med) = min_median(&engine);
    let mut out = String::new();
    out.push_str(&format!(
        "broker: {}; topic: {} partitions; {n} simulator events ({} users, {} days); {} rounds, min / median; service changelog {}, commit interval {}\n\n",
        o.brokers,
        o.partitions,
        o.users,
        o.days,
        o.repeat.max(1),
        if o.changelog { format!("on (flush every {})", cfg.state.flush_interval) } else { "off".into() },
        o.commit_interval
    ));
    out.push_str("| measurement | min | median |\n|---|---|---|\n");
    out.push_str(&format!("| produce rate (setup, one run) | {produce_rate:.0} | |\n"));
    out.push_str(&format!("| bare librdkafka consumer, no processing (events/s) | {bare_min:.0} | {bare_med:.0} |\n"));
    out.push_str(&format!("| engine alone, one core, same events (events/s) | {eng_min:.0} | {eng_med:.0} |\n"));
    let (ec_min, ec_med) = min_median(&engine_cpu);
    out.push_str(&format!("| engine alone, events per CPU second | {ec_min:.0} | {ec_med:.0} |\n"));
    for (i, (w, g)) in runs.iter().enumerate() {
        let (mn, md) = min_median(&service[i]);
        let mode = match g {
            crate::config::Guarantee::AtLeastOnce => "at least once",
            crate::config::Guarantee::ExactlyOnce => "exactly once",
        };
        out.push_str(&format!(
            "| churnguard run, {w} worker(s), {mode} (events/s, outputs acked, offsets committed) | {mn:.0} | {md:.0} |\n"
        ));
        if *g == crate::config::Guarantee::ExactlyOnce {
            if let Some(j) = runs.iter().position(|r| *r == (*w, crate::config::Guarantee::AtLeastOnce)) {
                // Per round, so that both sides of each ratio saw the same machine noise.
                let ratios: Vec<f64> = service[i].iter().zip(&service[j]).map(|(e, a)| e / a).collect();
                let (rmn, rmd) = min_median(&ratios);
                out.push_str(&format!(
                    "| ... exactly once / at least once, same round | {:.0}% | {:.0}% |\n",
                    100.0 * rmn,
                    100.0 * rmd
                ));
            }
        }
        out.push_str(&format!(
            "| ... per worker / engine on one core | {:.0}% | {:.0}% |\n",
            100.0 * mn / *w as f64 / eng_med,
            100.0 * md / *w as f64 / eng_med
        ));
        out.push_str(&format!(
            "| ... / bare consumer | {:.0}% | {:.0}% |\n",
            100.0 * mn / bare_med,
            100.0 * md / bare_med
        ));
        let (cmn, cmd) = min_median(&service_cpu[i]);
        out.push_str(&format!("| ... events per worker-thread CPU second | {cmn:.0} | {cmd:.0} |\n"));
        out.push_str(&format!(
            "| ... that CPU rate / the engine's (the runtime's own overhead) | {:.0}% | {:.0}% |\n",
            100.0 * cmn / ec_med,
            100.0 * cmd / ec_med
        ));
    }
    out.push_str(&format!("| outputs published per throughput run | {outputs:.0} | |\n"));
    for (w, live_max, rate, live_n, runs_at) in latency {
        out.push_str(&format!(
            "| maximum rate with the stream produced live (generator, broker and service together), {w} worker(s) (events/s) | {live_max:.0} | |\n"
        ));
        out.push_str(&format!(
            "| latency run: fixed rate, {:.0}% of the lowest of the live maximum, the fastest service run and the bare consumer, {w} worker(s) | {rate:.0} events/s for {live_n} events | |\n",
            100.0 * o.latency_load
        ));
        for (from, r) in runs_at {
            out.push_str(&format!(
                "| ... event-to-intervention p50 / p99, from the event's {from} to the broker's ack ({} interventions; stream consumed at {:.0} events/s) | {:.1} ms | {:.1} ms |\n",
                r.interventions,
                r.rate,
                r.p50 * 1e3,
                r.p99 * 1e3
            ));
        }
    }
    Ok(out)
}

/// What a live run measured: the rate at which the service consumed the stream (from the first
/// event produced to the last consumed), and its event-to-intervention latency.
struct LiveRun {
    rate: f64,
    p50: f64,
    p99: f64,
    interventions: u64,
}

/// A service reading `topic` while `items` are produced to it, at `rate` events/s if given, or
/// as fast as the load generator can (the maximum the machine sustains with the stream produced
/// and appended live, on the same cores as the service).
async fn live_run(
    o: &KafkaBenchOptions,
    cfg: &crate::config::Config,
    topic: &str,
    items: &[(String, Vec<u8>)],
    rate: Option<f64>,
    workers: usize,
) -> Result<LiveRun> {
    let mut c = cfg.clone();
    c.source.topics = vec![topic.to_string()];
    c.source.group_id = format!("{topic}-group");
    c.runtime.workers = workers;
    let (metrics, stop, handle) = spawn_service(c, workers)?;
    // Let the consumer join the group and every partition finish its restore (each is paused
    // until then) before the clock starts: the start-up is not the latency being measured.
    let join_deadline = Instant::now() + std::time::Duration::from_secs(30);
    // (Without the changelog a new group has nothing to restore, and no restore is reported.)
    let ready = |m: &crate::telemetry::Metrics| {
        let held = m.partitions_assigned.get();
        held >= i64::from(o.partitions) && (!o.changelog || m.restore_seconds.get_sample_count() >= held as u64)
    };
    while !ready(&metrics) && Instant::now() < join_deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Then a settling time: librdkafka applies the pause of an assignment up to about a second
    // later, and a partition fetches only from the resume after that (a live stream started
    // 0.5 s after the restores waited 0.3 to 0.4 s for its first fetch; docs/KAFKA.md).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    // The live stream's producer lingers as an upstream app would by default (librdkafka's 5 ms):
    // its messages are timestamped when produced, so the bulk loader's 20 ms of batching would
    // count against the service's latency.
    let start = Instant::now();
    tokio::task::block_in_place(|| produce(o, 5, topic, items, rate))?;
    let drain_deadline = Instant::now() + std::time::Duration::from_secs(60);
    while consumed(&metrics) < items.len() as f64 && Instant::now() < drain_deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let took = start.elapsed().as_secs_f64();
    let all = consumed(&metrics) >= items.len() as f64;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let merged = merged_latency(&metrics);
    let _ = stop.send(());
    handle.join().map_err(|_| anyhow::anyhow!("service thread panicked"))??;
    anyhow::ensure!(all, "the service had not consumed the live stream a minute after it was produced");
    Ok(LiveRun {
        rate: items.len() as f64 / took,
        p50: histogram_quantile(&merged, 0.5),
        p99: histogram_quantile(&merged, 0.99),
        interventions: merged.get_sample_count(),
    })
}

fn merged_latency(metrics: &crate::telemetry::Metrics) -> prometheus::proto::Histogram {
    let mut merged = prometheus::proto::Histogram::default();
    let fams = prometheus::core::Collector::collect(&metrics.event_to_intervention_seconds);
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let mut count = 0u64;
    for f in &fams {
        for m in f.get_metric() {
            let h = m.get_histogram();
            count += h.get_sample_count();
            for (i, b) in h.get_bucket().iter().enumerate() {
                if buckets.len() <= i {
                    buckets.push((b.upper_bound(), 0));
                }
                buckets[i].1 += b.cumulative_count();
            }
        }
    }
    merged.set_sample_count(count);
    merged.set_bucket(
        buckets
            .into_iter()
            .map(|(ub, c)| {
                let mut b = prometheus::proto::Bucket::default();
                b.set_upper_bound(ub);
                b.set_cumulative_count(c);
                b
            })
            .collect(),
    );
    merged
}

trait CollectTotal {
    fn collect_total(&self) -> f64;
}

impl CollectTotal for prometheus::IntCounterVec {
    fn collect_total(&self) -> f64 {
        use prometheus::core::Collector;
        self.collect().iter().flat_map(|f| f.get_metric().iter().map(|x| x.get_counter().get_value())).sum()
    }
}
