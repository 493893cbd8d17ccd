//! The streaming service: a Kafka consumer group in; interventions, control records and dead
//! letters out; at least once.
//!
//! The coordinator here owns the clients and the periodic work (commits, the broker probe,
//! gauges, model reload, shutdown). Each assigned partition is processed by its own
//! [`PartitionWorker`] task on the runtime's `runtime.workers` threads; the group's main queue
//! is polled on a thread of its own (crate::source::kafka). An offset is committed only after
//! every output derived from it is acknowledged (crate::pipeline::offsets).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::config::Config;
use crate::model::reload::ModelWatcher;
use crate::model::ModelArtifact;
use crate::pipeline::events::{
    AssignmentChanged, BrokerProbed, ModelReloadRejected, ModelReloaded, OffsetsCommitted, PopulationMeasured,
    ReadinessChanged,
};
use crate::pipeline::health::Health;
use crate::pipeline::partition::{PartitionWorker, Shared};
use crate::sink::kafka::{Topics, DEFAULT_MESSAGE_MAX_BYTES};
use crate::source::kafka::{
    self as source, kafka_error_code, GroupConsumer, PartitionId, PartitionQueue, RebalanceListener,
};
use crate::telemetry::Metrics;

pub use crate::sink::kafka::dlq_headers;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot start the consumer thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Totals for the end-of-run log line and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSummary {
    pub consumed: u64,
    pub valid: u64,
    pub dead_lettered: u64,
    pub interventions: u64,
    pub control: u64,
}

impl RunSummary {
    fn from_metrics(m: &Metrics) -> RunSummary {
        let sum = |v: &prometheus::IntCounterVec| {
            use prometheus::core::Collector;
            v.collect().iter().flat_map(|f| f.get_metric()).map(|m| m.get_counter().get_value() as u64).sum::<u64>()
        };
        let consumed = sum(&m.events_consumed);
        RunSummary {
            consumed,
            valid: consumed.saturating_sub(sum(&m.events_invalid)),
            dead_lettered: sum(&m.dead_lettered),
            interventions: sum(&m.interventions),
            control: sum(&m.control),
        }
    }
}

pub struct Service {
    cfg: Config,
    model: ModelArtifact,
    shadow: Option<ModelArtifact>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// A running partition worker, as seen from the coordinator and the rebalance callback.
struct WorkerHandle {
    stop: watch::Sender<Option<tokio::time::Instant>>,
    done: std::sync::mpsc::Receiver<Option<i64>>,
}

/// Starts and stops partition workers as the group assigns and revokes partitions.
struct Workers {
    shared: Arc<Shared>,
    producer: FutureProducer,
    topics: Topics,
    model: watch::Receiver<Arc<ModelArtifact>>,
    runtime: tokio::runtime::Handle,
    running: Mutex<HashMap<PartitionId, WorkerHandle>>,
    /// Upper bound on a revoke's drain.
    drain_timeout: Duration,
}

impl Workers {
    /// Signal the workers of `partitions` to stop and drain until `deadline`; wait for them and
    /// return their commit positions. Blocking: the poller thread and shutdown use it.
    fn stop(&self, partitions: &[PartitionId], deadline: tokio::time::Instant) -> Vec<(PartitionId, i64)> {
        let handles: Vec<(PartitionId, WorkerHandle)> = match self.running.lock() {
            Ok(mut r) => partitions.iter().filter_map(|p| r.remove_entry(p)).collect(),
            Err(_) => Vec::new(),
        };
        for (_, h) in &handles {
            let _ = h.stop.send(Some(deadline));
        }
        let mut out = Vec::new();
        for (p, h) in handles {
            // A little past the drain deadline: the worker needs a moment to report.
            let wait = deadline.saturating_duration_since(tokio::time::Instant::now()) + Duration::from_secs(1);
            match h.done.recv_timeout(wait) {
                Ok(Some(pos)) => out.push((p, pos)),
                Ok(None) => {}
                Err(_) => {
                    tracing::warn!(partition = %p, "worker did not stop in time; its last offset stays uncommitted")
                }
            }
        }
        if let Ok(mut c) = self.shared.committable.lock() {
            for p in partitions {
                c.remove(p);
            }
        }
        self.assignment_changed();
        out
    }

    fn all(&self) -> Vec<PartitionId> {
        self.running.lock().map(|r| r.keys().cloned().collect()).unwrap_or_default()
    }

    fn assignment_changed(&self) {
        let n = self.running.lock().map(|r| r.len()).unwrap_or(0);
        self.shared.health.set_assigned(n);
        AssignmentChanged { partitions: n }.emit(&self.shared.metrics);
    }
}

impl RebalanceListener for Workers {
    fn assigned(&self, partition: PartitionId, queue: PartitionQueue, consumer: Arc<GroupConsumer>) {
        let (stop_tx, stop_rx) = watch::channel(None);
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let worker = PartitionWorker::new(
            partition.clone(),
            self.shared.clone(),
            self.producer.clone(),
            self.topics.clone(),
            self.model.clone(),
        );
        self.runtime.spawn(async move {
            let pos = worker.run(queue, consumer, stop_rx).await;
            let _ = done_tx.send(pos);
        });
        if let Ok(mut r) = self.running.lock() {
            if let Some(old) = r.insert(partition, WorkerHandle { stop: stop_tx, done: done_rx }) {
                let _ = old.stop.send(Some(tokio::time::Instant::now()));
            }
        }
        self.assignment_changed();
    }

    fn revoking(&self, partitions: &[PartitionId]) -> Vec<(PartitionId, i64)> {
        self.stop(partitions, tokio::time::Instant::now() + self.drain_timeout)
    }
}

/// The service's producer settings unless `[kafka]` sets them.
fn producer_defaults(c: &mut ClientConfig) {
    set_default(c, "linger.ms", "5");
    set_default(c, "acks", "all");
    // Without idempotence librdkafka may reorder a partition's batches when it retries one (a
    // leader change, a timeout), and the changelog's protocol rests on the order of a flush's
    // records: an `END` that lands before the users it closes makes a cut-short flush read as
    // whole after a crash.
    set_default(c, "enable.idempotence", "true");
}

fn set_default(c: &mut ClientConfig, key: &str, value: &str) {
    if c.get(key).is_none() {
        c.set(key, value);
    }
}

impl Service {
    pub fn new(cfg: Config, model: ModelArtifact, metrics: Arc<Metrics>, health: Arc<Health>) -> Service {
        Service { cfg, model, shadow: None, metrics, health }
    }

    /// Score with `shadow` alongside the live model (same feature spec required).
    pub fn with_shadow(mut self, shadow: ModelArtifact) -> Result<Service, String> {
        if shadow.spec != self.model.spec {
            return Err("model.shadow_path: the shadow model's feature spec differs from the live model's".into());
        }
        self.shadow = Some(shadow);
        Ok(self)
    }

    /// librdkafka's config errors end with the property's value: never let a secret's through.
    fn redacted(&self, e: KafkaError) -> KafkaError {
        match e {
            KafkaError::ClientConfig(res, desc, key, value) => {
                let value =
                    if crate::config::is_secret(&key) { "<redacted>".into() } else { self.cfg.redact_secrets(&value) };
                KafkaError::ClientConfig(res, self.cfg.redact_secrets(&desc), key, value)
            }
            other => other,
        }
    }

    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.cfg.kafka {
            c.set(k, v);
        }
        // librdkafka's 1 s default stalls a partition for a whole second whenever its local
        // queue is full, which a busy partition worker hits constantly.
        set_default(&mut c, "fetch.queue.backoff.ms", "10");
        c
    }

    fn producer_config(&self) -> ClientConfig {
        let mut pc = self.client_config();
        producer_defaults(&mut pc);
        pc
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut cc = self.client_config();
        cc.set("group.id", &self.cfg.source.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        set_default(&mut cc, "auto.offset.reset", "earliest");
        set_default(&mut cc, "statistics.interval.ms", "5000");
        // Only the partitions that move are revoked, so a rebalance does not restore them all.
        set_default(&mut cc, "partition.assignment.strategy", "cooperative-sticky");
        // Event-to-intervention latency is bounded below by how long a fetch may wait on a quiet
        // partition; librdkafka's 500 ms default is tuned for batch throughput.
        set_default(&mut cc, "fetch.wait.max.ms", "100");
        cc
    }

    /// Run until `shutdown` resolves, then stop the workers, drain, flush and commit within
    /// `shutdown.timeout`.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<RunSummary, ServiceError> {
        let producer_settings = self.producer_config();
        let message_max_bytes = producer_settings
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        let producer: FutureProducer = producer_settings.create().map_err(|e| self.redacted(e))?;
        let (model_tx, model_rx) = watch::channel(Arc::new(self.model.clone()));
        let shared = Arc::new(Shared {
            cfg: self.cfg.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
            clocks: Default::default(),
            committable: Default::default(),
            populations: Default::default(),
            restore_settings: crate::pipeline::restore::consumer_settings(
                &self.client_config(),
                &self.cfg.source.group_id,
            ),
            message_max_bytes,
            producer_settings: producer_settings.clone(),
            shadow: self.shadow.clone().map(Arc::new),
        });
        let workers = Arc::new(Workers {
            shared: shared.clone(),
            producer: producer.clone(),
            topics: Topics {
                interventions: self.cfg.sink.interventions_topic.as_str().into(),
                control: self.cfg.sink.control_topic.as_str().into(),
                dead_letter: self.cfg.sink.dead_letter_topic.as_str().into(),
            },
            model: model_rx,
            runtime: tokio::runtime::Handle::current(),
            running: Mutex::new(HashMap::new()),
            drain_timeout: Duration::from_millis(self.cfg.shutdown.timeout.ms().clamp(1, 10_000) as u64),
        });
        self.health.set_model_loaded(true);
        let mut topics = self.cfg.source.topics.clone();
        if self.cfg.source.keys == crate::config::KeyMode::Repartition {
            let repartition = self.cfg.source.repartition_topic();
            let settings = shared.restore_settings.clone();
            let inputs = self.cfg.source.topics.clone();
            let topic = repartition.clone();
            let created = tokio::task::spawn_blocking(move || {
                let t = Duration::from_secs(10);
                let n = crate::pipeline::restore::partition_count(&settings, &inputs, t)?;
                crate::pipeline::restore::ensure_repartition_topic(&settings, &topic, n.max(1), t)
            })
            .await;
            match created {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(topic = %repartition, error = %e, "cannot create the repartition topic; create it (as many partitions as the input)")
                }
                Err(e) => tracing::error!(error = %e, "repartition topic task failed"),
            }
            topics.push(repartition);
        }
        let consumer = source::subscribe(
            self.consumer_config(),
            &topics,
            workers.clone() as Arc<dyn RebalanceListener>,
            self.metrics.clone(),
        )
        .map_err(|e| self.redacted(e))?;
        let stop_polling = Arc::new(AtomicBool::new(false));
        let poller = source::spawn_poller(consumer.clone(), stop_polling.clone())?;
        let prober = tokio::spawn(probe_loop(
            producer.clone(),
            self.cfg.source.topics[0].clone(),
            self.health.clone(),
            self.metrics.clone(),
        ));
        tracing::info!(topics = ?self.cfg.source.topics, group = %self.cfg.source.group_id, model = %self.model.model_version, "consuming");

        let mut commit_tick = tokio::time::interval(Duration::from_millis(self.cfg.sink.commit_interval.ms() as u64));
        let mut gauge_tick = tokio::time::interval(Duration::from_secs(1));
        let mut reload_tick = tokio::time::interval(Duration::from_secs(5));
        let mut hangup = Hangup::new();
        let mut watcher = ModelWatcher::new(&self.cfg.model.path, Arc::new(self.model.clone()));
        let started = Instant::now();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = commit_tick.tick() => commit(&consumer, &shared, CommitMode::Async),
                _ = gauge_tick.tick() => refresh_gauges(&shared, &producer, started),
                _ = hangup.recv() => reload(&mut watcher, &model_tx, "SIGHUP", &self.metrics),
                _ = reload_tick.tick() => {
                    if watcher.changed_on_disk() {
                        reload(&mut watcher, &model_tx, "model file changed", &self.metrics);
                    }
                }
            }
        }

        tracing::info!("shutting down: stopping partition workers and draining outputs");
        self.health.set_stopping();
        ReadinessChanged { ready: false }.emit(&self.metrics);
        prober.abort();
        // The last figures, before the workers stop and withdraw theirs.
        refresh_gauges(&shared, &producer, started);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.cfg.shutdown.timeout.ms().max(1) as u64);
        let all = workers.all();
        let w = workers.clone();
        let positions = tokio::task::spawn_blocking(move || w.stop(&all, deadline)).await.unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        for (p, offset) in &positions {
            let _ = tpl.add_partition_offset(p.topic(), p.partition(), Offset::Offset(*offset));
        }
        let c = consumer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            if tpl.count() == 0 {
                return None;
            }
            Some((tpl.count(), c.commit(&tpl, CommitMode::Sync).err().map(|e| kafka_error_code(&e))))
        })
        .await
        .ok()
        .flatten();
        if let Some((n, error)) = committed {
            OffsetsCommitted { partitions: n, error: error.as_deref() }.emit(&self.metrics);
        }
        stop_polling.store(true, Ordering::SeqCst);
        let _ = tokio::task::spawn_blocking(move || poller.join()).await;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(100));
        let p = producer.clone();
        let _ = tokio::task::spawn_blocking(move || p.flush(remaining)).await;
        consumer.unsubscribe();
        let summary = RunSummary::from_metrics(&self.metrics);
        tracing::info!(summary = ?summary, "stopped");
        Ok(summary)
    }
}

/// Commit the positions the workers reported since the last commit.
fn commit(consumer: &GroupConsumer, shared: &Shared, mode: CommitMode) {
    let positions: Vec<(PartitionId, i64)> = match shared.committable.lock() {
        Ok(mut c) => c.drain().collect(),
        Err(_) => return,
    };
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in &positions {
        let _ = tpl.add_partition_offset(p.topic(), p.partition(), Offset::Offset(*offset));
    }
    let result = consumer.commit(&tpl, mode);
    let error = result.as_ref().err().map(kafka_error_code);
    if error.is_some() {
        // Retried at the next tick, unless a worker has reported a newer position meanwhile.
        if let Ok(mut c) = shared.committable.lock() {
            for (p, offset) in positions {
                c.entry(p).or_insert(offset);
            }
        }
    }
    OffsetsCommitted { partitions: tpl.count(), error: error.as_deref() }.emit(&shared.metrics);
}

/// Sum the workers' population figures into the gauges.
fn refresh_gauges(shared: &Shared, producer: &FutureProducer, started: Instant) {
    let mut users = 0;
    let mut state_bytes = 0;
    let mut evicted = 0;
    let mut population = crate::engine::Population::default();
    if let Ok(parts) = shared.populations.lock() {
        for s in parts.values() {
            users += s.users;
            state_bytes += s.state_bytes;
            evicted += s.evicted;
            for (t, n) in population.stages.iter_mut().zip(s.population.stages) {
                *t += n;
            }
            for i in 0..3 {
                population.active[i] += s.population.active[i];
                population.cohort[i] += s.population.cohort[i];
                population.retained[i] += s.population.retained[i];
            }
        }
    }
    PopulationMeasured {
        users,
        state_bytes,
        population: &population,
        evicted,
        producer_queue: i64::from(producer.in_flight_count()),
        uptime_seconds: started.elapsed().as_secs_f64(),
    }
    .emit(&shared.metrics);
}

fn reload(watcher: &mut ModelWatcher, tx: &watch::Sender<Arc<ModelArtifact>>, why: &str, metrics: &Metrics) {
    let from = watcher.current().model_version.clone();
    match watcher.reload() {
        Ok(art) => {
            ModelReloaded {
                reason: why,
                from: &from,
                to: &art.model_version,
                trained_at: &art.created_at,
                features: art.feature_names.len(),
            }
            .emit(metrics);
            // Workers swap it in between messages.
            let _ = tx.send(art);
        }
        Err(e) => ModelReloadRejected { reason: why, path: watcher.path(), error: &e, serving: &from }.emit(metrics),
    }
}

/// Ask a broker for metadata every two seconds; readiness follows the answer.
async fn probe_loop(producer: FutureProducer, topic: String, health: Arc<Health>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut last: Option<bool> = None;
    loop {
        tick.tick().await;
        let p = producer.clone();
        let t = topic.clone();
        let result = tokio::task::spawn_blocking(move || source::probe(p.client(), &t, Duration::from_secs(2)))
            .await
            .unwrap_or_else(|_| Err("probe task failed".into()));
        let reachable = result.is_ok();
        let error = result.as_ref().err().cloned();
        health.set_broker(result);
        BrokerProbed { reachable, changed: last != Some(reachable), error: error.as_deref() }.emit(&metrics);
        last = Some(reachable);
        ReadinessChanged { ready: health.readiness().ready }.emit(&metrics);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_keeps_order_on_retries_unless_the_config_says_otherwise() {
        let mut c = ClientConfig::new();
        producer_defaults(&mut c);
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        let mut c = ClientConfig::new();
        c.set("enable.idempotence", "false").set("acks", "1");
        producer_defaults(&mut c);
        assert_eq!((c.get("enable.idempotence"), c.get("acks")), (Some("false"), Some("1")));
    }
}
