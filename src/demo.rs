//! `churnguard demo`: the whole service in one process with nothing installed: an in-process
//! Kafka-protocol broker (librdkafka's mock cluster), the simulator producing events on an
//! accelerated clock, the service, and a consumer printing the interventions it publishes.
//! Then the uplift measurement on a closed-loop simulation whose effects are known
//! ([`crate::uplift::recovery`]), so the demo shows the control group answering "does it work?".

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::config::Config;
use crate::intervention::Intervention;
use crate::model::ModelArtifact;
use crate::policy::PolicyConfig;
use crate::sim::treatment::{Effects, Treatment};
use crate::sim::{self, SimConfig};
use crate::telemetry::Metrics;
use crate::time::DAY_MS;
use crate::uplift::recovery::{self, Recovery, RecoveryConfig};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub duration: Option<Duration>,
    pub users: u64,
    pub days: u32,
    pub seed: u64,
    /// Wall-clock seconds per simulated day.
    pub day_seconds: f64,
    pub partitions: i32,
    pub model: PathBuf,
    pub http: String,
    /// Print at most this many interventions per second (the rest are counted).
    pub print_per_second: u32,
    /// Where the uplift step writes its files and report.
    pub out: PathBuf,
    /// Users of the uplift step's closed-loop simulation; 0 skips the step.
    pub uplift_users: u64,
}

/// Days of the uplift step: the default warm-up (the model's longest window, 90 days for the
/// shipped model) plus decisions whose 30-day horizon ends inside the log.
pub const UPLIFT_DAYS: u32 = 180;

/// Half the users held out: a measurement run wants power, the service's default (10%) wants
/// reach.
pub const UPLIFT_CONTROL_FRACTION: f64 = 0.5;

/// The uplift step's simulated effects (`*`: every other action), those of the example in
/// docs/INTERVENTIONS.md: calls and offers work, emails a little.
pub const UPLIFT_EFFECTS: [(&str, f64); 6] = [
    ("care_call", 0.4),
    ("onboarding_call", 0.4),
    ("vip_outreach", 0.4),
    ("coupon", 0.3),
    ("winback_offer", 0.3),
    ("*", 0.1),
];

const EVENTS_TOPIC: &str = "activity";

/// Check what the user typed before starting anything (no broker, no banner, no librdkafka
/// noise), naming the flag in each error. Returns the loaded model.
pub fn check_options(opts: &DemoOptions) -> Result<ModelArtifact> {
    anyhow::ensure!(opts.users > 0, "--users must be at least 1");
    anyhow::ensure!(opts.days > 0, "--days must be at least 1");
    anyhow::ensure!(opts.partitions > 0, "--partitions must be at least 1");
    anyhow::ensure!(
        opts.day_seconds.is_finite() && opts.day_seconds > 0.0,
        "--day-seconds must be a positive number of seconds, got {}",
        opts.day_seconds
    );
    let model = ModelArtifact::load(&opts.model).context("--model")?;
    let addr: SocketAddr = opts
        .http
        .parse()
        .map_err(|_| anyhow::anyhow!("--http {}: not an address; expected IP:PORT, e.g. 127.0.0.1:9464", opts.http))?;
    // Bind and release: a busy port fails here, before the broker and the simulator start.
    std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow::anyhow!("--http {addr}: cannot listen there ({e}); pick a free port, e.g. --http 127.0.0.1:0")
    })?;
    if opts.uplift_users > 0 {
        SimConfig { users: opts.uplift_users, days: UPLIFT_DAYS, seed: opts.seed, ..SimConfig::default() }
            .validate()
            .map_err(|e| anyhow::anyhow!("--uplift-users {}: {e}", opts.uplift_users))?;
        // The uplift step comes last: a directory it cannot write must not cost a whole run.
        std::fs::create_dir_all(&opts.out).map_err(|e| {
            anyhow::anyhow!("--out {}: cannot create the directory ({e}); pick another, or --uplift-users 0 to skip the uplift step", opts.out.display())
        })?;
    }
    Ok(model)
}

pub async fn run(opts: DemoOptions) -> Result<()> {
    let model = check_options(&opts)?;
    let mut cfg = Config::default();
    cfg.engine.validate(&cfg.policy)?;
    cfg.model.path = opts.model.clone();
    cfg.http.listen = opts.http.clone();
    cfg.source.idle_timeout = crate::time::Span(2_000);
    // librdkafka's mock cluster has no log compaction and no topic creation through the admin
    // API, and the demo starts from an empty topic anyway: no changelog here.
    cfg.state.changelog = false;

    let sim_cfg = SimConfig { users: opts.users, days: opts.days, seed: opts.seed, ..SimConfig::default() };
    let mut events = Vec::new();
    let (sim_summary, _) = sim::generate(&sim_cfg, |e| {
        let mut line = Vec::with_capacity(112);
        sim::write_event_json(&mut line, e);
        line.pop();
        events.push((e.ts, sim::user_id_string(e.user_id), line));
    })?;
    let per_partition = events.len() as f64 / f64::from(opts.partitions.max(1));
    anyhow::ensure!(
        per_partition < 60_000.0,
        "{} events over {} partitions exceeds what the mock broker keeps; lower --users/--days or raise --partitions",
        events.len(),
        opts.partitions
    );

    // The mock cluster keeps about 100k messages or 5 MiB per partition: stay well inside it.
    let mock = MockCluster::new(1).context("starting the in-process Kafka mock cluster")?;
    let brokers = mock.bootstrap_servers();
    cfg.kafka.insert("bootstrap.servers".into(), brokers.clone());
    cfg.validate()?;
    mock.create_topic(EVENTS_TOPIC, opts.partitions, 1)?;
    for t in [&cfg.sink.interventions_topic, &cfg.sink.control_topic, &cfg.sink.dead_letter_topic] {
        mock.create_topic(t, 2, 1)?;
    }

    let metrics = Arc::new(Metrics::new());
    crate::outln!(
        "churnguard demo: in-process broker at {brokers}; simulating {} users over {} days ({} events) at {:.2}s per day",
        opts.users, opts.days, sim_summary.events, opts.day_seconds
    );
    // The service holds its decisions until its features cover the longest window (engine
    // warm-up): that much history is played at full speed, then the accelerated clock starts.
    let warm_up = cfg.engine.warm_up.resolve(&model.spec);
    if warm_up.ms() > 0 {
        crate::outln!(
            "warm-up: the first {} (the model's longest window) play at full speed while the service builds state and holds its decisions (engine.warm_up); live decisions follow at {:.2}s per day",
            warm_up, opts.day_seconds
        );
    }
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "5").create()?;
    let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let feeder = {
        let producer = producer.clone();
        let produced = produced.clone();
        let day_seconds = opts.day_seconds;
        tokio::spawn(async move {
            let t0 = events.first().map_or(0, |e| e.0).saturating_add(warm_up.ms());
            let start = Instant::now();
            let mut pending = Vec::new();
            for (i, (ts, user, line)) in events.into_iter().enumerate() {
                let due = Duration::from_secs_f64((ts - t0).max(0) as f64 / DAY_MS as f64 * day_seconds);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    for d in pending.drain(..) {
                        let _ = d.await;
                    }
                    tokio::time::sleep(wait).await;
                }
                // A malformed event now and then shows the dead-letter path.
                let payload =
                    if i % 5000 == 4999 { b"{\"user_id\": \"broken\", \"ts\": \"not a time\"".to_vec() } else { line };
                match producer.send_result(FutureRecord::to(EVENTS_TOPIC).key(&user).payload(&payload)) {
                    Ok(d) => pending.push(d),
                    Err((e, _)) => tracing::warn!(error = %e, "demo producer"),
                }
                produced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            for d in pending {
                let _ = d.await;
            }
        })
    };

    let printer = {
        let brokers = brokers.clone();
        let topic = cfg.sink.interventions_topic.clone();
        let per_second = opts.print_per_second;
        tokio::spawn(async move { print_interventions(&brokers, &topic, per_second).await })
    };

    let reporter = {
        let m = metrics.clone();
        let produced = produced.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                crate::outln!("-- {}", live_summary(&m, produced.load(std::sync::atomic::Ordering::Relaxed)));
            }
        })
    };

    let shutdown = async {
        match opts.duration {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = crate::service::shutdown_signal() => {}
            },
            None => crate::service::shutdown_signal().await,
        }
    };
    let result = crate::service::run(cfg, metrics.clone(), shutdown, |addr| {
        crate::outln!("metrics: http://{addr}/metrics   health: http://{addr}/healthz   ready: http://{addr}/readyz");
    })
    .await;
    feeder.abort();
    printer.abort();
    reporter.abort();
    // Let the aborted tasks drop their clients before the broker goes away, on success and on
    // error alike, so no client reports the broker's disappearance.
    let _ = tokio::join!(feeder, printer, reporter);
    drop(producer);
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            drop(mock);
            return Err(e);
        }
    };
    crate::outln!();
    crate::outln!("== demo summary ==");
    crate::outln!("events produced      {}", produced.load(std::sync::atomic::Ordering::Relaxed));
    crate::outln!("events consumed      {}", summary.consumed);
    crate::outln!("dead-lettered        {}", summary.dead_lettered);
    crate::outln!("users tracked        {}", metrics.users_tracked.get());
    crate::outln!("interventions        {}  {}", summary.interventions, by_label(&metrics.interventions, "tier"));
    crate::outln!("control group        {}  {}", summary.control, by_label(&metrics.control, "tier"));
    drop(mock);
    if opts.uplift_users > 0 {
        uplift_step(&opts, model).await?;
    }
    Ok(())
}

/// The closed loop with known effects, replay, uplift: runs on its own thread so that Ctrl-C
/// (the live part's way to stop) can skip it too.
async fn uplift_step(opts: &DemoOptions, model: ModelArtifact) -> Result<()> {
    let defaults = Config::default();
    let horizon = defaults.uplift.horizon;
    let mut engine = defaults.engine;
    engine.outcome_horizon = horizon;
    let policy = PolicyConfig { control_fraction: UPLIFT_CONTROL_FRACTION, ..defaults.policy };
    let effects =
        Effects { per_action: UPLIFT_EFFECTS.iter().map(|(a, e)| (a.to_string(), *e)).collect(), ..Effects::default() };
    let sim = SimConfig { users: opts.uplift_users, days: UPLIFT_DAYS, seed: opts.seed, ..SimConfig::default() };
    crate::outln!();
    crate::outln!("== uplift: do the interventions work? ==");
    crate::outln!(
        "closed loop: {} users over {} days (seed {}) in which interventions work: a treated user's churn is cut by the action's effect ({}); control users get nothing; {:.0}% of users held out as control for this measurement (Ctrl-C skips it)",
        sim.users,
        sim.days,
        sim.seed,
        describe_effects(),
        100.0 * UPLIFT_CONTROL_FRACTION
    );
    let dir = opts.out.clone();
    let started = Instant::now();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("churnguard-demo-uplift".into()).spawn(move || {
        let treatment = Treatment { model: &model, policy, engine, effects };
        // A send fails only when the step was skipped and nobody waits for the result.
        let _ = tx.send(recovery::run(&RecoveryConfig { sim, treatment, horizon, dir }));
    })?;
    let rec = tokio::select! {
        r = rx => r.context("the uplift step stopped without a result")??,
        _ = crate::service::shutdown_signal() => {
            crate::outln!("uplift step skipped");
            return Ok(());
        }
    };
    print_recovery(&rec, horizon, started.elapsed());
    Ok(())
}

fn describe_effects() -> String {
    let mut by_effect: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (a, e) in UPLIFT_EFFECTS {
        by_effect.entry((e * 1000.0).round() as u64).or_default().push(a);
    }
    by_effect
        .iter()
        .rev()
        .map(|(e, actions)| {
            let names = actions.iter().map(|a| if *a == "*" { "any other action" } else { a }).collect::<Vec<_>>();
            format!("{} {}", names.join(", "), *e as f64 / 1000.0)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The measured uplift per action next to the true one, then where the files and report are.
fn print_recovery(rec: &Recovery, horizon: crate::time::Span, took: Duration) {
    use crate::uplift::{pct, pp};
    crate::outln!(
        "replay: {} interventions, {} control records; outcomes over a {horizon} horizon ({} treated and {} control records decided in the last {horizon} are censored)",
        rec.replay.counters.interventions,
        rec.replay.counters.control,
        rec.result.censored_treated,
        rec.result.censored_control
    );
    crate::outln!(
        "each user's first record, treated vs control (95% Newcombe interval, points); true: the effect on the treated users, from the same users simulated without effects"
    );
    crate::outln!(
        "{:<20} {:>6} {:>7} {:>7} {:>6} {:>6} {:>7} {:>16} {:>7}  {}",
        "action",
        "effect",
        "treated",
        "control",
        "ret.T",
        "ret.C",
        "uplift",
        "95% CI",
        "true",
        "true inside CI"
    );
    for row in std::iter::once(&rec.overall).chain(&rec.actions) {
        let m = &row.measured;
        let (uplift, ci) = match m.uplift {
            Some(d) => (pp(d.estimate), format!("[{}, {}]", pp(d.lower), pp(d.upper))),
            None => ("n/a".into(), "n/a".into()),
        };
        let inside = match row.covered() {
            Some(true) => "yes",
            Some(false) => "NO",
            None if m.control.n == 0 => "n/a (no control records)",
            None => "n/a",
        };
        crate::outln!(
            "{:<20} {:>6} {:>7} {:>7} {:>6} {:>6} {:>7} {:>16} {:>7}  {}",
            row.action.as_deref().unwrap_or("all actions"),
            row.effect.map_or("-".into(), |e| format!("{e}")),
            m.treated.n,
            m.control.n,
            pct(m.treated.retention),
            pct(m.control.retention),
            uplift,
            ci,
            row.true_uplift.map_or("n/a".into(), pp),
            inside
        );
    }
    let f = &rec.files;
    crate::outln!(
        "effect: the simulated cut in churn (not a retention difference); one interval in twenty misses by chance"
    );
    crate::outln!(
        "uplift report: {} (every record, by tier, action and stage; took {:.1}s)",
        f.report.join("index.html").display(),
        took.as_secs_f64()
    );
    crate::outln!(
        "rerun: churnguard uplift --events {} --interventions {} --control {}",
        f.events.display(),
        f.interventions.display(),
        f.control.display()
    );
}

fn by_label(v: &prometheus::IntCounterVec, label: &str) -> String {
    use prometheus::core::Collector;
    let mut m: BTreeMap<String, u64> = BTreeMap::new();
    for fam in v.collect() {
        for metric in fam.get_metric() {
            if let Some(l) = metric.get_label().iter().find(|l| l.name() == label) {
                *m.entry(l.value().to_string()).or_default() += metric.get_counter().get_value() as u64;
            }
        }
    }
    m.iter().map(|(k, n)| format!("{k}={n}")).collect::<Vec<_>>().join(" ")
}

fn live_summary(m: &Metrics, produced: u64) -> String {
    use prometheus::core::Collector;
    let consumed: f64 = m
        .events_consumed
        .collect()
        .iter()
        .flat_map(|f| f.get_metric().iter().map(|x| x.get_counter().get_value()))
        .sum();
    format!(
        "produced {produced}, consumed {consumed:.0}, users {}, interventions [{}], control [{}], dead-lettered [{}]",
        m.users_tracked.get(),
        by_label(&m.interventions, "tier"),
        by_label(&m.control, "tier"),
        by_label(&m.dead_lettered, "reason")
    )
}

/// Printed once, before the first decision line.
pub const LEGEND: [&str; 11] = [
    "",
    "Each line below is one intervention the service published (the control group is not printed):",
    "  date        event-time day of the decision",
    "  tier        risk tier whose threshold the score crossed (high, medium)",
    "  user        user id",
    "  score       P(churn): the model's probability of no activity within its horizon",
    "  stage       lifecycle stage: new, active, dormant, churned or reactivated",
    "  -> action   what the policy asks for (tier x stage, docs/INTERVENTIONS.md)",
    "  [reasons]   top reasons: what the feature measures, its value, (its push on the risk in log-odds, + raises it)",
    "  (trigger)   event: the user's own event; silence: rescored while the user was silent",
    "date       tier   user     score      stage       -> action             [reasons] (trigger)",
];

async fn print_interventions(brokers: &str, topic: &str, per_second: u32) {
    let consumer: StreamConsumer = match ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "churnguard-demo-printer")
        .set("auto.offset.reset", "earliest")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "demo printer");
            return;
        }
    };
    if let Err(e) = consumer.subscribe(&[topic]) {
        tracing::error!(error = %e, "demo printer");
        return;
    }
    let (mut second, mut printed, mut skipped) = (Instant::now(), 0u32, 0u64);
    let mut legend_shown = false;
    loop {
        let Ok(msg) = consumer.recv().await else { continue };
        let Some(Ok(iv)) = msg.payload().map(serde_json::from_slice::<Intervention>) else { continue };
        if second.elapsed() >= Duration::from_secs(1) {
            if skipped > 0 {
                crate::outln!("   (+{skipped} more)");
            }
            (second, printed, skipped) = (Instant::now(), 0, 0);
        }
        if printed >= per_second {
            skipped += 1;
            continue;
        }
        printed += 1;
        if !legend_shown {
            legend_shown = true;
            for line in LEGEND {
                crate::outln!("{line}");
            }
        }
        let reasons: Vec<String> = iv.reasons.iter().map(|r| r.describe()).collect();
        crate::outln!(
            "{} {:<6} {} score {:.2} {:<11} -> {:<18} [{}] ({})",
            &iv.event_time[..10],
            iv.tier,
            iv.user_id,
            iv.score,
            iv.stage.as_str(),
            iv.action,
            reasons.join("; "),
            format!("{:?}", iv.trigger).to_lowercase()
        );
    }
}
