//! The streaming service: a Kafka consumer group in, interventions, control records and
//! dead letters out, at least once.
//!
//! One task owns every assigned partition's [`Engine`]; a partition's messages are processed in
//! order. Every output derived from a message at offset `o` is tracked until the broker
//! acknowledges it, and `o + 1` is committed only when nothing at or below `o` is outstanding.
//! A newly assigned partition rebuilds its state by re-reading the partition from the beginning
//! up to the first message it is handed, with outputs suppressed: decisions are deterministic, so
//! the rebuilt state (and cooldown memory) is the one the previous owner had.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::engine::Engine;
use crate::event::{parse_event, Rejection};
use crate::intervention::Intervention;
use crate::model::ModelArtifact;
use crate::telemetry::Metrics;
use crate::time::Millis;

/// Header names on dead-letter records.
pub mod dlq_headers {
    pub const REASON: &str = "churnguard.reason";
    pub const MESSAGE: &str = "churnguard.message";
    pub const SOURCE_TOPIC: &str = "churnguard.source.topic";
    pub const SOURCE_PARTITION: &str = "churnguard.source.partition";
    pub const SOURCE_OFFSET: &str = "churnguard.source.offset";
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("restoring {topic}/{partition}: {msg}")]
    Restore { topic: String, partition: i32, msg: String },
}

type Tp = (String, i32);

/// Messages taken per wake-up of the main loop when they are already fetched.
const BATCH: usize = 512;

/// Offsets whose outputs the broker has acknowledged, shared with the rebalance callback.
type Committable = Arc<Mutex<HashMap<Tp, i64>>>;

/// Rebalances and statistics arrive on librdkafka's callbacks; they are forwarded here.
struct ServiceContext {
    rebalances: mpsc::UnboundedSender<RebalanceEvent>,
    committable: Committable,
    producer: FutureProducer,
    metrics: Arc<Metrics>,
    flush_timeout: Duration,
}

enum RebalanceEvent {
    Assigned(Vec<Tp>),
    Revoked(Vec<Tp>),
}

fn tps(list: &TopicPartitionList) -> Vec<Tp> {
    list.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

impl ClientContext for ServiceContext {
    fn stats(&self, s: Statistics) {
        for (topic, t) in &s.topics {
            for (p, part) in &t.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&[topic, &p.to_string()]).set(part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for ServiceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // Drain before letting go: every output produced so far is flushed to the broker, and
            // the offsets already known to be acknowledged are committed, so the next owner
            // starts as late as at-least-once allows.
            if let Err(e) = self.producer.flush(self.flush_timeout) {
                tracing::warn!(error = %e, "producer flush on revoke did not complete");
            }
            let revoked = tps(list);
            let mut tpl = TopicPartitionList::new();
            if let Ok(c) = self.committable.lock() {
                for tp in &revoked {
                    if let Some(off) = c.get(tp) {
                        let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(*off));
                    }
                }
            }
            if tpl.count() > 0 {
                let result = consumer.commit(&tpl, CommitMode::Sync);
                self.metrics.commits.with_label_values(&[if result.is_ok() { "ok" } else { "error" }]).inc();
            }
            self.metrics.rebalances.with_label_values(&["revoke"]).inc();
            let _ = self.rebalances.send(RebalanceEvent::Revoked(revoked));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                let _ = self.rebalances.send(RebalanceEvent::Assigned(tps(list)));
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Per-partition processing state.
struct Partition {
    tp: Tp,
    engine: Engine,
    /// Offsets with outputs not yet acknowledged, and how many.
    outstanding: BTreeMap<i64, u32>,
    /// Highest offset processed.
    processed: Option<i64>,
    committed: Option<i64>,
    last_message: Instant,
    restored: bool,
    consumed: u64,
    /// What was last flushed to the metrics registry (counts stay local on the hot path).
    flushed: crate::engine::EngineCounters,
    consumed_flushed: u64,
}

impl Partition {
    /// The offset to commit: everything below it is processed and acknowledged.
    fn commit_position(&self) -> Option<i64> {
        let next = self.processed? + 1;
        Some(self.outstanding.keys().next().map_or(next, |&o| o.min(next)))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum OutputKind {
    Intervention,
    Control,
    DeadLetter,
}

/// Identifies what an acknowledgement settles.
struct Pending {
    tp: Option<Tp>,
    offset: i64,
    kind: OutputKind,
    label: String,
    action: String,
    source_ts_ms: Option<i64>,
}

type DeliveryFuture = Pin<Box<dyn Future<Output = (Pending, Result<(), (KafkaError, OwnedMessage)>)> + Send + Sync>>;

/// Totals for the end-of-run log line and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSummary {
    pub consumed: u64,
    pub valid: u64,
    pub dead_lettered: u64,
    pub interventions: u64,
    pub control: u64,
}

pub struct Service {
    cfg: Config,
    model: ModelArtifact,
    shadow: Option<ModelArtifact>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

struct State<'a> {
    cfg: &'a Config,
    model: ModelArtifact,
    shadow: Option<ModelArtifact>,
    /// Modification time of the model file when it was last loaded (hot reload on change).
    model_mtime: Option<std::time::SystemTime>,
    metrics: &'a Metrics,
    producer: FutureProducer,
    parts: HashMap<Tp, Partition>,
    deliveries: FuturesUnordered<DeliveryFuture>,
    committable: Committable,
    summary: RunSummary,
    /// When every partition went idle: (the highest watermark then, the wall time then).
    all_idle_since: Option<(Millis, Instant)>,
    /// Messages processed, for sampling durations.
    seq: u64,
    /// Partitions this instance owns (readiness).
    assigned: std::collections::HashSet<Tp>,
    outputs: Vec<Intervention>,
}

impl Service {
    pub fn new(cfg: Config, model: ModelArtifact, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> Service {
        Service { cfg, model, shadow: None, metrics, ready }
    }

    /// Score with `shadow` alongside the live model (same feature spec required).
    pub fn with_shadow(mut self, shadow: ModelArtifact) -> Result<Service, String> {
        if shadow.spec != self.model.spec {
            return Err("model.shadow_path: the shadow model's feature spec differs from the live model's".into());
        }
        self.shadow = Some(shadow);
        Ok(self)
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.cfg.kafka {
            c.set(k, v);
        }
        c
    }

    /// Run until `shutdown` resolves, then drain, flush and commit within the shutdown bound.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<RunSummary, ServiceError> {
        let mut pc = self.client_config();
        set_default(&mut pc, "linger.ms", "5");
        set_default(&mut pc, "acks", "all");
        let producer: FutureProducer = pc.create()?;

        let (tx, mut rebalances) = mpsc::unbounded_channel();
        let committable: Committable = Arc::default();
        let ctx = ServiceContext {
            rebalances: tx,
            committable: committable.clone(),
            producer: producer.clone(),
            metrics: self.metrics.clone(),
            flush_timeout: Duration::from_millis(self.cfg.shutdown.timeout.ms().max(1) as u64),
        };
        let mut cc = self.client_config();
        cc.set("group.id", &self.cfg.source.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        set_default(&mut cc, "auto.offset.reset", "earliest");
        set_default(&mut cc, "statistics.interval.ms", "5000");
        // Event-to-intervention latency is bounded below by how long a fetch may wait on a quiet
        // partition; librdkafka's 500 ms default is tuned for batch throughput.
        set_default(&mut cc, "fetch.wait.max.ms", "100");
        let consumer: StreamConsumer<ServiceContext> = cc.create_with_context(ctx)?;
        let topics: Vec<&str> = self.cfg.source.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(topics = ?topics, group = %self.cfg.source.group_id, model = %self.model.model_version, "consuming");

        let mut st = State {
            cfg: &self.cfg,
            model: self.model.clone(),
            shadow: self.shadow.clone(),
            model_mtime: model_mtime(&self.cfg.model.path),
            metrics: &self.metrics,
            producer,
            parts: HashMap::new(),
            deliveries: FuturesUnordered::new(),
            committable,
            summary: RunSummary::default(),
            all_idle_since: None,
            seq: 0,
            assigned: Default::default(),
            outputs: Vec::new(),
        };
        let mut commit_tick = tokio::time::interval(Duration::from_millis(self.cfg.sink.commit_interval.ms() as u64));
        let mut clock_tick = tokio::time::interval(Duration::from_secs(1));
        let mut reload_tick = tokio::time::interval(Duration::from_secs(5));
        let mut hangup = Hangup::new();
        let started = Instant::now();
        let mut paused = false;
        tokio::pin!(shutdown);
        loop {
            let full = st.deliveries.len() >= self.cfg.sink.max_in_flight;
            if full && !paused {
                self.metrics.backpressure_pauses.inc();
            }
            paused = full;
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(ev) = rebalances.recv() => st.on_rebalance(ev, &self.ready),
                Some((p, r)) = st.deliveries.next(), if !st.deliveries.is_empty() => st.on_delivery(p, r),
                _ = commit_tick.tick() => {
                    st.flush_counts();
                    st.commit(&consumer, CommitMode::Async);
                    st.refresh_gauges(started);
                }
                _ = clock_tick.tick() => st.advance_idle_clocks(),
                _ = hangup.recv() => st.reload_model("SIGHUP"),
                _ = reload_tick.tick() => {
                    if model_mtime(&self.cfg.model.path) != st.model_mtime {
                        st.reload_model("model file changed");
                    }
                }
                msg = consumer.recv(), if !full => {
                    let now = Instant::now();
                    match msg {
                        Ok(m) => st.on_message(&m, now).await?,
                        Err(e) => tracing::warn!(error = %e, "consume error"),
                    }
                    // Take what is already fetched without another trip through select!: one
                    // round of timers and channels per batch, not per message.
                    for _ in 0..BATCH {
                        if st.deliveries.len() >= self.cfg.sink.max_in_flight {
                            break;
                        }
                        match consumer.recv().now_or_never() {
                            Some(Ok(m)) => st.on_message(&m, now).await?,
                            Some(Err(e)) => tracing::warn!(error = %e, "consume error"),
                            None => break,
                        }
                    }
                }
            }
        }
        tracing::info!(in_flight = st.deliveries.len(), "shutting down: draining outputs");
        self.ready.store(false, Ordering::SeqCst);
        self.metrics.ready.set(0);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.shutdown.timeout.ms() as u64);
        while !st.deliveries.is_empty() {
            match tokio::time::timeout_at(deadline, st.deliveries.next()).await {
                Ok(Some((p, r))) => st.on_delivery(p, r),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        in_flight = st.deliveries.len(),
                        "shutdown bound reached with outputs unacknowledged; their offsets stay uncommitted"
                    );
                    break;
                }
            }
        }
        st.flush_counts();
        st.commit(&consumer, CommitMode::Sync);
        consumer.unsubscribe();
        st.refresh_gauges(started);
        tracing::info!(summary = ?st.summary, "stopped");
        Ok(st.summary)
    }
}

fn model_mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// SIGHUP as a stream; never fires where signals are unavailable.
struct Hangup(Option<tokio::signal::unix::Signal>);

impl Hangup {
    fn new() -> Hangup {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Hangup(Some(s)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; model reload on file change only");
                Hangup(None)
            }
        }
    }

    async fn recv(&mut self) {
        match self.0.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
}

fn set_default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

impl State<'_> {
    fn on_rebalance(&mut self, ev: RebalanceEvent, ready: &AtomicBool) {
        match ev {
            RebalanceEvent::Assigned(list) => {
                tracing::info!(partitions = ?list, "assigned");
                self.assigned.extend(list);
            }
            RebalanceEvent::Revoked(list) => {
                tracing::info!(partitions = ?list, "revoked");
                self.flush_counts();
                for tp in list {
                    self.assigned.remove(&tp);
                    self.parts.remove(&tp);
                    if let Ok(mut c) = self.committable.lock() {
                        c.remove(&tp);
                    }
                }
            }
        }
        let is_ready = !self.assigned.is_empty();
        ready.store(is_ready, Ordering::SeqCst);
        self.metrics.ready.set(i64::from(is_ready));
    }

    /// Load, validate and swap in the model at `model.path`, between messages. A model that does
    /// not load, fails validation or needs a different feature spec (the running state was built
    /// for this one) is rejected and the current model keeps serving.
    fn reload_model(&mut self, why: &str) {
        let path = &self.cfg.model.path;
        self.model_mtime = model_mtime(path);
        let loaded = ModelArtifact::load(path).map_err(|e| e.to_string()).and_then(|art| {
            if art.spec != self.model.spec {
                Err("its feature spec differs from the running model's; restart the service to change features".into())
            } else {
                Ok(art)
            }
        });
        match loaded {
            Ok(art) => {
                for part in self.parts.values_mut() {
                    if let Err(e) = part.engine.swap_model(&art) {
                        tracing::error!(error = %e, "model swap refused by a partition engine");
                    }
                }
                self.metrics.model_info.reset();
                self.metrics
                    .model_info
                    .with_label_values(&[&art.model_version, &art.created_at, &art.feature_names.len().to_string()])
                    .set(1);
                self.metrics.model_reloads.with_label_values(&["ok"]).inc();
                tracing::info!(reason = why, from = %self.model.model_version, to = %art.model_version, "model reloaded");
                self.model = art;
            }
            Err(e) => {
                self.metrics.model_reloads.with_label_values(&["rejected"]).inc();
                tracing::error!(reason = why, path = %path.display(), error = %e, serving = %self.model.model_version, "model reload rejected; the current model keeps serving");
            }
        }
    }

    fn new_partition(&self, tp: &Tp) -> Partition {
        let mut engine = Engine::new(&self.model, self.cfg.policy.clone(), self.cfg.engine.clone());
        if let Some(shadow) = &self.shadow {
            // Checked against the live spec at start-up and on every reload.
            let _ = engine.set_shadow(shadow);
        }
        Partition {
            tp: tp.clone(),
            engine,
            outstanding: BTreeMap::new(),
            processed: None,
            committed: None,
            last_message: Instant::now(),
            restored: false,
            consumed: 0,
            flushed: Default::default(),
            consumed_flushed: 0,
        }
    }

    /// `now` is read once per batch: the idle clock needs no finer grain.
    async fn on_message(&mut self, m: &BorrowedMessage<'_>, now: Instant) -> Result<(), ServiceError> {
        // Durations are sampled (1 in 16): a distribution needs no census, and the clock reads
        // would otherwise be a noticeable share of the per-message cost.
        self.seq = self.seq.wrapping_add(1);
        let sampled = self.seq % 16 == 0;
        let started = sampled.then(Instant::now);
        let (topic, partition) = (m.topic(), m.partition());
        if !self.parts.keys().any(|(t, p)| *p == partition && t == topic) {
            let tp: Tp = (topic.to_string(), partition);
            let mut part = self.new_partition(&tp);
            if self.cfg.source.restore_on_assign && m.offset() > 0 {
                self.restore(&mut part, m.offset()).await?;
            }
            part.restored = true;
            self.parts.insert(tp, part);
        }
        self.summary.consumed += 1;
        let offset = m.offset();
        let payload = m.payload().unwrap_or(&[]);
        let max = self.cfg.source.max_event_bytes;
        let source_ts = m.timestamp().to_millis();
        let Some(part) = self.parts.values_mut().find(|p| p.tp.1 == partition && p.tp.0 == topic) else {
            return Ok(());
        };
        part.consumed += 1;
        part.last_message = now;
        self.all_idle_since = None;
        let parsed = parse_event(payload, max);
        let mut outputs = std::mem::take(&mut self.outputs);
        let rejection = match parsed {
            Ok(ev) => {
                self.summary.valid += 1;
                let t = sampled.then(Instant::now);
                part.engine.ingest(&ev, &mut |iv| outputs.push(iv));
                if let Some(t) = t {
                    self.metrics.scoring_seconds.observe(t.elapsed().as_secs_f64());
                }
                None
            }
            Err(r) => Some(r),
        };
        part.processed = Some(offset);
        let tp = (rejection.is_some() || !outputs.is_empty()).then(|| part.tp.clone());
        if let (Some(r), Some(tp)) = (rejection, &tp) {
            self.metrics.events_invalid.with_label_values(&[r.reason.code()]).inc();
            rate_limited_reject_log(tp, offset, &r);
            let record = dead_letter_record(&self.cfg.sink.dead_letter_topic, m, &r);
            self.send(
                record,
                Pending {
                    tp: Some(tp.clone()),
                    offset,
                    kind: OutputKind::DeadLetter,
                    label: r.reason.code().to_string(),
                    action: String::new(),
                    source_ts_ms: None,
                },
            )
            .await;
        }
        for iv in outputs.drain(..) {
            self.send_intervention(&iv, tp.clone(), offset, source_ts).await;
        }
        self.outputs = outputs;
        if let Some(s) = started {
            self.metrics.processing_seconds.observe(s.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Move the partitions' local counts into the metrics registry (once per commit tick).
    fn flush_counts(&mut self) {
        for part in self.parts.values_mut() {
            self.metrics.add_engine_delta(&part.flushed, &part.engine.counters);
            part.flushed = part.engine.counters.clone();
            self.metrics.events_consumed.with_label_values(&[&part.tp.0]).inc_by(part.consumed - part.consumed_flushed);
            part.consumed_flushed = part.consumed;
        }
    }

    /// Re-read `tp` from its beginning up to (not including) `until`, outputs suppressed.
    async fn restore(&self, part: &mut Partition, until: i64) -> Result<(), ServiceError> {
        let (topic, partition) = part.tp.clone();
        let err = |msg: String| ServiceError::Restore { topic: topic.clone(), partition, msg };
        let mut cc = ClientConfig::new();
        for (k, v) in &self.cfg.kafka {
            cc.set(k, v);
        }
        cc.set("group.id", format!("{}-restore", self.cfg.source.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let c: StreamConsumer = cc.create()?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Beginning)?;
        c.assign(&tpl)?;
        let started = Instant::now();
        let mut n = 0u64;
        let max = self.cfg.source.max_event_bytes;
        loop {
            let m = match tokio::time::timeout(Duration::from_secs(10), c.recv()).await {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(err(e.to_string())),
                // Nothing more to read (records before `until` may have been deleted by retention).
                Err(_) => break,
            };
            if m.offset() >= until {
                break;
            }
            if let Ok(ev) = parse_event(m.payload().unwrap_or(&[]), max) {
                part.engine.ingest(&ev, &mut |_| {});
            }
            n += 1;
            if m.offset() + 1 >= until {
                break;
            }
        }
        // Restored decisions were made (and acknowledged) by the previous owner.
        part.engine.counters = Default::default();
        self.metrics.restored_events.inc_by(n);
        tracing::info!(topic = %topic, partition, events = n, until, seconds = started.elapsed().as_secs_f64(), "state restored");
        Ok(())
    }

    async fn send_intervention(&mut self, iv: &Intervention, tp: Option<Tp>, offset: i64, source_ts_ms: Option<i64>) {
        let topic = if iv.control { &self.cfg.sink.control_topic } else { &self.cfg.sink.interventions_topic };
        let payload = match serde_json::to_vec(iv) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "serialising an intervention failed");
                return;
            }
        };
        let headers =
            OwnedHeaders::new().insert(Header { key: "churnguard.schema", value: Some(crate::intervention::SCHEMA) });
        let record = OwnedRecord { topic: topic.clone(), key: iv.user_id.clone().into_bytes(), payload, headers };
        self.send(
            record,
            Pending {
                tp,
                offset,
                kind: if iv.control { OutputKind::Control } else { OutputKind::Intervention },
                label: iv.tier.clone(),
                action: iv.action.clone(),
                source_ts_ms: if iv.trigger == crate::intervention::Trigger::Event { source_ts_ms } else { None },
            },
        )
        .await;
    }

    /// Enqueue a record; when librdkafka's queue is full, wait for acknowledgements first.
    async fn send(&mut self, record: OwnedRecord, pending: Pending) {
        if let Some(tp) = &pending.tp {
            if let Some(p) = self.parts.get_mut(tp) {
                *p.outstanding.entry(pending.offset).or_default() += 1;
            }
        }
        let mut backoff = Duration::from_millis(1);
        loop {
            let fr = FutureRecord::to(&record.topic)
                .key(&record.key)
                .payload(&record.payload)
                .headers(record.headers.clone());
            match self.producer.send_result(fr) {
                Ok(delivery) => {
                    let fut = async move {
                        let r = match delivery.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, m))) => Err((e, m)),
                            Err(_cancelled) => Err((
                                KafkaError::Canceled,
                                OwnedMessage::new(
                                    Some(record.payload),
                                    Some(record.key),
                                    record.topic,
                                    rdkafka::Timestamp::NotAvailable,
                                    0,
                                    0,
                                    Some(record.headers),
                                ),
                            )),
                        };
                        (pending, r)
                    };
                    self.deliveries.push(Box::pin(fut));
                    self.metrics.in_flight.set(self.deliveries.len() as i64);
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    self.metrics.backpressure_pauses.inc();
                    // Settle what has been acknowledged meanwhile, then retry.
                    match tokio::time::timeout(backoff, self.deliveries.next()).await {
                        Ok(Some((p, r))) => self.on_delivery(p, r),
                        _ => backoff = (backoff * 2).min(Duration::from_millis(100)),
                    }
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, topic = %record.topic, "cannot enqueue output; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn on_delivery(&mut self, p: Pending, r: Result<(), (KafkaError, OwnedMessage)>) {
        self.metrics.in_flight.set(self.deliveries.len() as i64);
        match r {
            Ok(()) => {
                match p.kind {
                    OutputKind::Intervention => {
                        self.summary.interventions += 1;
                        self.metrics.interventions.with_label_values(&[&p.label, &p.action]).inc();
                    }
                    OutputKind::Control => {
                        self.summary.control += 1;
                        self.metrics.control.with_label_values(&[&p.label]).inc();
                    }
                    OutputKind::DeadLetter => {
                        self.summary.dead_lettered += 1;
                        self.metrics.dead_lettered.with_label_values(&[&p.label]).inc();
                    }
                }
                if let Some(ts) = p.source_ts_ms {
                    let now = chrono::Utc::now().timestamp_millis();
                    self.metrics
                        .event_to_intervention_seconds
                        .with_label_values(&[&p.label])
                        .observe(((now - ts).max(0) as f64) / 1000.0);
                }
                if let Some(tp) = &p.tp {
                    if let Some(part) = self.parts.get_mut(tp) {
                        if let Some(n) = part.outstanding.get_mut(&p.offset) {
                            *n -= 1;
                            if *n == 0 {
                                part.outstanding.remove(&p.offset);
                            }
                        }
                    }
                }
            }
            Err((e, msg)) => {
                // librdkafka has exhausted its own retries. Keep the offset uncommitted and send
                // again: losing an intervention is worse than delaying one.
                tracing::error!(error = %e, topic = msg.topic(), "output not acknowledged; re-sending");
                let record = OwnedRecord {
                    topic: msg.topic().to_string(),
                    key: msg.key().unwrap_or_default().to_vec(),
                    payload: msg.payload().unwrap_or_default().to_vec(),
                    headers: msg.headers().cloned().unwrap_or_default(),
                };
                let producer = self.producer.clone();
                let fut = async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let fr = FutureRecord::to(&record.topic)
                        .key(&record.key)
                        .payload(&record.payload)
                        .headers(record.headers.clone());
                    let r = match producer.send(fr, Duration::from_secs(30)).await {
                        Ok(_) => Ok(()),
                        Err((e, m)) => Err((e, m)),
                    };
                    (p, r)
                };
                self.deliveries.push(Box::pin(fut));
            }
        }
    }

    fn commit(&mut self, consumer: &StreamConsumer<ServiceContext>, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        let mut shared = self.committable.lock().ok();
        for part in self.parts.values_mut() {
            let Some(pos) = part.commit_position() else { continue };
            if let Some(c) = shared.as_mut() {
                c.insert(part.tp.clone(), pos);
            }
            if part.committed == Some(pos) {
                continue;
            }
            if tpl.add_partition_offset(&part.tp.0, part.tp.1, Offset::Offset(pos)).is_ok() {
                part.committed = Some(pos);
            }
        }
        drop(shared);
        if tpl.count() == 0 {
            return;
        }
        match consumer.commit(&tpl, mode) {
            Ok(()) => self.metrics.commits.with_label_values(&["ok"]).inc(),
            Err(e) => {
                self.metrics.commits.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "offset commit failed; will retry");
                for part in self.parts.values_mut() {
                    part.committed = None;
                }
            }
        }
    }

    /// An idle partition must not hold event time back: it follows the slowest active partition,
    /// and when every partition is idle, wall-clock time moves them all.
    fn advance_idle_clocks(&mut self) {
        let idle_after = Duration::from_millis(self.cfg.source.idle_timeout.ms().max(0) as u64);
        let now = Instant::now();
        let active_min = self
            .parts
            .values()
            .filter(|p| now.duration_since(p.last_message) < idle_after)
            .map(|p| p.engine.watermark())
            .min();
        let target = match active_min {
            Some(wm) => wm,
            None => {
                let max_wm = self.parts.values().map(|p| p.engine.watermark()).max();
                let Some(max_wm) = max_wm else { return };
                let (base, since) = *self.all_idle_since.get_or_insert((max_wm, now));
                base.saturating_add(now.duration_since(since).as_millis() as i64)
            }
        };
        let mut outputs = std::mem::take(&mut self.outputs);
        for part in self.parts.values_mut() {
            if now.duration_since(part.last_message) >= idle_after && part.engine.watermark() > Millis::MIN {
                part.engine.advance_watermark(target, &mut |iv| outputs.push(iv));
            }
        }
        // Timer outputs belong to no input offset; they are regenerated after a restart because
        // their due times are deterministic.
        for iv in outputs.drain(..) {
            self.enqueue_now(&iv);
        }
        self.outputs = outputs;
    }

    /// Non-async enqueue for outputs not tied to an offset (idle clock ticks).
    fn enqueue_now(&mut self, iv: &Intervention) {
        let topic = if iv.control { &self.cfg.sink.control_topic } else { &self.cfg.sink.interventions_topic };
        let Ok(payload) = serde_json::to_vec(iv) else { return };
        let headers =
            OwnedHeaders::new().insert(Header { key: "churnguard.schema", value: Some(crate::intervention::SCHEMA) });
        let record = FutureRecord::to(topic).key(iv.user_id.as_bytes()).payload(&payload).headers(headers);
        let pending = Pending {
            tp: None,
            offset: -1,
            kind: if iv.control { OutputKind::Control } else { OutputKind::Intervention },
            label: iv.tier.clone(),
            action: iv.action.clone(),
            source_ts_ms: None,
        };
        match self.producer.send_result(record) {
            Ok(delivery) => {
                self.deliveries.push(Box::pin(async move {
                    let r = match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((e, m))) => Err((e, m)),
                        Err(_) => Ok(()),
                    };
                    (pending, r)
                }));
            }
            Err((e, _)) => {
                tracing::warn!(error = %e, user = %iv.user_id, "timer intervention not enqueued; it is decided again after restart")
            }
        }
    }

    fn refresh_gauges(&self, started: Instant) {
        let mut users = 0;
        let mut bytes = 0;
        let mut stages = [0u64; 5];
        let mut pop = crate::engine::Population::default();
        let now_ms = chrono::Utc::now().timestamp_millis();
        for p in self.parts.values() {
            users += p.engine.store().len();
            bytes += p.engine.store().heap_bytes();
            let part_pop = p.engine.population();
            for (total, n) in stages.iter_mut().zip(part_pop.stages) {
                *total += n;
            }
            for i in 0..3 {
                pop.active[i] += part_pop.active[i];
                pop.cohort[i] += part_pop.cohort[i];
                pop.retained[i] += part_pop.retained[i];
            }
            // Users forgotten after state_ttl of silence are churned users no longer in memory.
            stages[crate::policy::Stage::Churned as usize] += p.engine.counters.users_evicted;
            let wm = p.engine.watermark();
            if wm > Millis::MIN {
                let part = p.tp.1.to_string();
                self.metrics.watermark.with_label_values(&[&p.tp.0, &part]).set(wm as f64 / 1000.0);
                self.metrics.event_time_lag.with_label_values(&[&p.tp.0, &part]).set((now_ms - wm) as f64 / 1000.0);
            }
        }
        self.metrics.users_tracked.set(users as i64);
        for (i, days) in crate::engine::ACTIVE_WINDOWS_DAYS.iter().enumerate() {
            self.metrics.active_users.with_label_values(&[&format!("{days}d")]).set(pop.active[i] as i64);
        }
        for (i, days) in crate::engine::RETENTION_DAYS.iter().enumerate() {
            let d = days.to_string();
            self.metrics.cohort_users.with_label_values(&[&d]).set(pop.cohort[i] as i64);
            if pop.cohort[i] > 0 {
                self.metrics
                    .cohort_retention
                    .with_label_values(&[&d])
                    .set(pop.retained[i] as f64 / pop.cohort[i] as f64);
            }
        }
        self.metrics.state_bytes.set(bytes as i64);
        for s in crate::policy::Stage::ALL {
            self.metrics.users_by_stage.with_label_values(&[s.as_str()]).set(stages[s as usize] as i64);
        }
        self.metrics.producer_queue.set(self.producer.in_flight_count() as i64);
        self.metrics.uptime.set(started.elapsed().as_secs_f64());
    }
}

struct OwnedRecord {
    topic: String,
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
}

/// The rejected message byte for byte, with the reason and its origin in headers.
fn dead_letter_record(topic: &str, m: &BorrowedMessage<'_>, r: &Rejection) -> OwnedRecord {
    let partition = m.partition().to_string();
    let offset = m.offset().to_string();
    let detail: String = r.detail.chars().take(512).collect();
    let headers = OwnedHeaders::new()
        .insert(Header { key: dlq_headers::REASON, value: Some(r.reason.code()) })
        .insert(Header { key: dlq_headers::MESSAGE, value: Some(detail.as_str()) })
        .insert(Header { key: dlq_headers::SOURCE_TOPIC, value: Some(m.topic()) })
        .insert(Header { key: dlq_headers::SOURCE_PARTITION, value: Some(partition.as_str()) })
        .insert(Header { key: dlq_headers::SOURCE_OFFSET, value: Some(offset.as_str()) });
    OwnedRecord {
        topic: topic.to_string(),
        key: m.key().unwrap_or_default().to_vec(),
        payload: m.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

/// Bad input is logged at most a few times per second; the metric counts every one.
fn rate_limited_reject_log(tp: &Tp, offset: i64, r: &Rejection) {
    use std::sync::atomic::AtomicU64;
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static IN_WINDOW: AtomicU64 = AtomicU64::new(0);
    let sec = chrono::Utc::now().timestamp() as u64;
    if WINDOW.swap(sec, Ordering::Relaxed) != sec {
        IN_WINDOW.store(0, Ordering::Relaxed);
    }
    if IN_WINDOW.fetch_add(1, Ordering::Relaxed) < 5 {
        tracing::warn!(topic = %tp.0, partition = tp.1, offset, reason = r.reason.code(), detail = %r.detail, "event dead-lettered");
    }
}
