//! One input partition's worker: restore, then read its queue, run the engine, send the outputs,
//! and track which offset may be committed.
//!
//! Each assigned partition runs as its own task on the runtime's worker threads, so partitions
//! are processed in parallel and a slow one (a restore, a burst, a broker refusing its outputs)
//! holds up no other. Its outputs in flight are bounded (`sink.max_in_flight`): at the bound it
//! stops reading until the broker acknowledges some.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tokio::sync::watch;

use crate::config::Config;
use crate::config::Guarantee;
use crate::engine::{Engine, EngineCounters, Population};
use crate::event::{parse_event, FutureGuard};
use crate::model::ModelArtifact;
use crate::pipeline::changelog::ChangelogWriter;
use crate::pipeline::events::{
    Backpressured, ChangelogFlushed, ChangelogRestored, DeadLetterTruncated, EngineProgress, EventRejected,
    InFlightChanged, KeysMismatched, MessageTimed, MessagesConsumed, OutputAcked, OutputFailed, OutputKind,
    OutputRetried, PartitionClock, RestoreFinished, RestoreProgress, RestoreStarted, TransactionFinished,
};
use crate::pipeline::health::Health;
use crate::pipeline::offsets::OffsetTracker;
use crate::pipeline::restore;
use crate::pipeline::transaction::{transactional_id, Transactions, TxnError};
use crate::sink::kafka::{KafkaSink, Settled, Staging};
use crate::source::batch::Msg;
use crate::source::kafka::{GroupConsumer, PartitionId, PartitionQueue};
use crate::state::changelog::Flush;
use crate::state::changelog::{Restored, Skip};
use crate::state::codec::Shape;
use crate::telemetry::Metrics;
use crate::time::Millis;

/// Messages taken per wake-up when they are already fetched.
const BATCH: usize = 512;
/// How often a worker hands its population figures to the coordinator, which refreshes the
/// gauges from them every second.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Users of a changelog flush encoded per step: about a batch of messages' worth of work at
/// most, so events wait behind a flush for a fraction of a millisecond, not for all of it.
const FLUSH_STEP: usize = 256;

/// What every worker shares: configuration, telemetry and the cross-partition clock.
pub struct Shared {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub clocks: Mutex<Clocks>,
    /// Offsets ready to commit, by partition; the coordinator commits and clears them.
    pub committable: Mutex<HashMap<PartitionId, i64>>,
    /// Per-partition population figures, summed by the coordinator for the gauges.
    pub populations: Mutex<HashMap<PartitionId, PartitionStats>>,
    pub restore_settings: rdkafka::config::ClientConfig,
    /// The producer's settings, for a partition's transactional producer (exactly once).
    pub producer_settings: rdkafka::config::ClientConfig,
    pub message_max_bytes: usize,
    pub shadow: Option<Arc<ModelArtifact>>,
}

#[derive(Debug, Default, Clone)]
pub struct PartitionStats {
    pub users: usize,
    pub state_bytes: usize,
    pub population: Population,
    pub evicted: u64,
}

/// Event time across partitions. An idle partition must not hold event time back: it follows
/// the slowest active partition, and when every partition is idle, wall-clock time moves them.
#[derive(Debug, Default)]
pub struct Clocks {
    parts: HashMap<PartitionId, (Millis, Instant)>,
    /// When every partition went idle: the highest watermark then, and the wall time then.
    all_idle_since: Option<(Millis, Instant)>,
}

/// Whether a partition is read to its end: `read` is the highest offset known to be read (one
/// past the last processed message, the restored state's offset, librdkafka's position), and the
/// end is the later of the one asked of the broker when the partition was resumed and the one of
/// the latest fetch response. Neither alone will do: librdkafka keeps a partition's cached end
/// across a revoke and a new assignment within the same client, so after one it is stale until
/// the first fetch response; and the end asked at resume misses what arrives afterwards. With no
/// end known, never.
fn read_to(read: i64, end_at_resume: Option<i64>, cached_end: Option<i64>) -> bool {
    end_at_resume.max(cached_end).is_some_and(|end| read >= end)
}

impl Clocks {
    fn report(&mut self, p: &PartitionId, watermark: Millis, last_message: Instant, active: bool) {
        match self.parts.get_mut(p) {
            Some(e) => *e = (watermark, last_message),
            None => {
                self.parts.insert(p.clone(), (watermark, last_message));
            }
        }
        if active {
            self.all_idle_since = None;
        }
    }

    fn remove(&mut self, p: &PartitionId) {
        self.parts.remove(p);
    }

    /// Where an idle partition's clock should move to now.
    fn idle_target(&mut self, now: Instant, idle_after: Duration) -> Option<Millis> {
        let active_min =
            self.parts.values().filter(|(_, last)| now.duration_since(*last) < idle_after).map(|(wm, _)| *wm).min();
        match active_min {
            Some(wm) => Some(wm),
            None => {
                let max_wm = self.parts.values().map(|(wm, _)| *wm).max()?;
                let (base, since) = *self.all_idle_since.get_or_insert((max_wm, now));
                Some(base.saturating_add(now.duration_since(since).as_millis() as i64))
            }
        }
    }
}

/// Restore one partition's state on a blocking thread: from its changelog when on and it holds
/// state of this model's layout, else by re-reading the input up to the committed offset.
fn restore_partition(
    shared: &Shared,
    group: &GroupConsumer,
    id: &PartitionId,
    engine: &mut Engine,
    cancel: &AtomicBool,
    label: &str,
    fresh: &dyn Fn() -> Engine,
) -> Result<RestoredFrom, restore::RestoreError> {
    let timeout = Duration::from_secs(10);
    if shared.cfg.state.changelog {
        let topic = crate::state::changelog::topic_name(&shared.cfg.source.group_id, id.topic());
        let md = group.fetch_metadata(Some(id.topic()), timeout)?;
        let partitions = md.topics().iter().find(|t| t.name() == id.topic()).map_or(0, |t| t.partitions().len() as i32);
        restore::ensure_changelog(
            &shared.restore_settings,
            &topic,
            partitions.max(id.partition() + 1),
            shared.cfg.state.changelog_replication_factor,
            timeout,
        )?;
        RestoreStarted { partition: id, from: 0, until: -1 }.emit(&shared.metrics);
        shared.health.restore_progress(label, 0);
        let mut read = 0u64;
        let r =
            restore::restore_changelog(&shared.restore_settings, &topic, id.partition(), engine, cancel, &mut |n| {
                read += n;
                shared.health.restore_progress(label, read);
            })?;
        if let Some(restored) = r.restored {
            ChangelogRestored {
                partition: id,
                users: restored.users,
                resume: restored.resume,
                ahead: restored.skip.as_ref().map_or(0, |s| s.users.len()),
                corrupt: r.corrupt,
                other_layout: r.other_layout,
            }
            .emit(&shared.metrics);
            return Ok(RestoredFrom::Changelog { restored, events: 0 });
        }
        // No state of this layout: rebuild from the input, and write everyone at the first flush.
        *engine = fresh();
        if !shared.cfg.source.restore_on_assign {
            return Ok(RestoredFrom::Nothing);
        }
    }
    let Some(range) = restore::plan(group, id, timeout)? else { return Ok(RestoredFrom::Nothing) };
    if !shared.cfg.state.changelog {
        // (With a changelog, the restore was announced when it began there.)
        RestoreStarted { partition: id, from: range.from, until: range.until }.emit(&shared.metrics);
    }
    shared.health.restore_progress(label, 0);
    let mut read = 0u64;
    let events = restore::restore(&shared.restore_settings, id, range, engine, &shared.cfg.source, cancel, &mut |n| {
        read += n;
        RestoreProgress { events: n }.emit(&shared.metrics);
        shared.health.restore_progress(label, read);
    })?;
    Ok(RestoredFrom::Input { events, until: range.until })
}

/// The partition's end offset, asked of the broker (a librdkafka error code if it does not
/// answer).
async fn ask_end(id: &PartitionId, consumer: &Arc<GroupConsumer>, timeout: Duration) -> Result<i64, String> {
    let c = consumer.clone();
    let (topic, partition) = (id.topic().to_string(), id.partition());
    match tokio::task::spawn_blocking(move || c.fetch_watermarks(&topic, partition, timeout)).await {
        Ok(Ok((_, high))) => Ok(high),
        Ok(Err(e)) => Err(crate::source::kafka::kafka_error_code(&e)),
        Err(e) => Err(e.to_string()),
    }
}

/// Stop signal: `Some(deadline)` = stop reading, drain outputs until the deadline.
pub type StopRx = watch::Receiver<Option<tokio::time::Instant>>;

pub struct PartitionWorker {
    id: PartitionId,
    shared: Arc<Shared>,
    engine: Engine,
    sink: KafkaSink,
    offsets: OffsetTracker,
    model: watch::Receiver<Arc<ModelArtifact>>,
    consumed: u64,
    consumed_flushed: u64,
    flushed: EngineCounters,
    /// Decisions of the message at hand, encoded for sending (reused).
    staging: Staging,
    last_message: Instant,
    seq: u64,
    ticks: u64,
    /// When the population figures were last handed to the coordinator.
    stats_at: Option<Instant>,
    /// The partition's changelog, when `state.changelog` is on (set after the restore).
    changelog: Option<ChangelogWriter>,
    /// Messages whose effect restored state already holds (a flush was cut short).
    skip: Option<Skip>,
    /// Messages before this offset are already in the restored state.
    resume_from: i64,
    /// The partition's end offset, asked of the broker when it was resumed after its restore.
    end_at_resume: Option<i64>,
    /// The watermark an idle move last checked against a fresh end moved to, and when.
    fresh_move: Option<(Millis, Instant)>,
    /// The commit position last handed to the coordinator.
    reported: Option<i64>,
    /// Exactly once: the partition's transactions and what its next changelog flush needs.
    eos: Option<Eos>,
    /// The restored flush's clock record and offset (the next flush's `PREV`), if any.
    restored_clock: Option<(Vec<u8>, i64)>,
    topics: crate::sink::kafka::Topics,
    consumer: Option<Arc<GroupConsumer>>,
    /// Another owner fenced this one: nothing more may be committed.
    fenced: bool,
    /// Check the first message after a changelog restore against the state's offset.
    check_gap: bool,
    /// Messages whose key is not their event's user id, since the last tick.
    key_mismatches: u64,
    /// `source.keys = "repartition"` and this is an input partition: valid events are only
    /// re-keyed onto this topic (no engine, no state).
    forward: Option<Arc<str>>,
    /// Rejects events stamped after the present (`source.max_future`).
    future: FutureGuard,
    no_headers: rdkafka::message::OwnedHeaders,
}

struct Eos {
    txn: Arc<Transactions>,
    shape: Shape,
    prev: Option<Vec<u8>>,
    full: bool,
    last: Option<(i64, Millis)>,
}

/// How a partition's state came back.
enum RestoredFrom {
    Nothing,
    Input { events: u64, until: i64 },
    Changelog { restored: Restored, events: u64 },
}

enum Stopped {
    /// Revoked or shutting down: drain until the deadline.
    Drain(tokio::time::Instant),
}

impl PartitionWorker {
    pub fn new(
        id: PartitionId,
        shared: Arc<Shared>,
        producer: rdkafka::producer::FutureProducer,
        topics: crate::sink::kafka::Topics,
        model: watch::Receiver<Arc<ModelArtifact>>,
    ) -> PartitionWorker {
        let current = model.borrow().clone();
        let mut engine = Engine::new(&current, shared.cfg.policy.clone(), shared.cfg.engine.clone());
        engine.track_changes(shared.cfg.state.changelog);
        if let Some(shadow) = &shared.shadow {
            // Checked against the live spec at start-up and on every reload.
            let _ = engine.set_shadow(shadow);
        }
        let sink = KafkaSink::new(producer, topics.clone(), shared.message_max_bytes);
        let repartition = shared.cfg.source.repartition_topic();
        let forward = (shared.cfg.source.keys == crate::config::KeyMode::Repartition && id.topic() != repartition)
            .then(|| Arc::from(repartition.as_str()));
        PartitionWorker {
            id,
            future: FutureGuard::new(shared.cfg.source.max_future),
            shared,
            engine,
            sink,
            offsets: OffsetTracker::default(),
            model,
            consumed: 0,
            consumed_flushed: 0,
            flushed: EngineCounters::default(),
            staging: Staging::default(),
            last_message: Instant::now(),
            seq: 0,
            ticks: 0,
            stats_at: None,
            changelog: None,
            skip: None,
            resume_from: 0,
            end_at_resume: None,
            fresh_move: None,
            reported: None,
            eos: None,
            restored_clock: None,
            topics,
            consumer: None,
            fenced: false,
            check_gap: false,
            key_mismatches: 0,
            forward,
            no_headers: rdkafka::message::OwnedHeaders::new(),
        }
    }

    /// Open the partition's transactions (exactly once): outputs go through its own producer
    /// from now on. Fails if another owner holds the transactional id for good.
    async fn start_transactions(&mut self) -> Result<(), TxnError> {
        let id = transactional_id(&self.shared.cfg.source.group_id, self.id.topic(), self.id.partition());
        let settings = self.shared.producer_settings.clone();
        let timeout = Duration::from_secs(30);
        let txn = tokio::task::spawn_blocking(move || Transactions::start(&settings, &id, timeout))
            .await
            .map_err(|e| TxnError::Fatal(e.to_string()))??;
        let txn = Arc::new(txn);
        self.sink = KafkaSink::new(txn.producer(), self.topics.clone(), self.shared.message_max_bytes);
        // What the first flush builds on is set once the state is restored.
        self.eos =
            Some(Eos { txn, shape: Shape::of(self.engine.store().layout()), prev: None, full: true, last: None });
        Ok(())
    }

    /// Commit the partition's transaction: its outputs so far, a changelog flush of what changed,
    /// and the input offset the state reflects. Nothing to do when nothing changed.
    async fn commit_transaction(&mut self, consumer: &GroupConsumer) -> Result<(), TxnError> {
        let Some(next) = self.offsets.next_to_process() else { return Ok(()) };
        let Some(mut eos) = self.eos.take() else { return Ok(()) };
        let watermark = self.engine.watermark();
        if !eos.full && self.engine.pending_changes() == 0 && eos.last == Some((next, watermark)) {
            self.eos = Some(eos);
            return Ok(());
        }
        let result = self.send_flush_and_commit(&mut eos, next, consumer).await;
        if result.is_ok() {
            eos.full = false;
            eos.last = Some((next, watermark));
        } else {
            // Whatever the flush held may be lost: the next one writes everyone.
            eos.full = true;
        }
        self.eos = Some(eos);
        TransactionFinished { partition: &self.id, error: result.as_ref().err().map(|e| e.to_string()).as_deref() }
            .emit(self.metrics());
        result
    }

    async fn send_flush_and_commit(
        &mut self,
        eos: &mut Eos,
        next: i64,
        consumer: &GroupConsumer,
    ) -> Result<(), TxnError> {
        // An input partition that only re-keys events has no state to flush.
        let flush = if self.forward.is_some() {
            Flush::default()
        } else {
            Flush::build(&mut self.engine, &eos.shape, next, eos.prev.as_deref(), eos.full)
        };
        let topic = crate::state::changelog::topic_name(&self.shared.cfg.source.group_id, self.id.topic());
        ChangelogFlushed { records: flush.len(), bytes: flush.bytes() }.emit(self.metrics());
        for i in 0..flush.len() {
            loop {
                let (key, value) = flush.get(i);
                let pending = crate::sink::kafka::Pending {
                    offset: None,
                    kind: OutputKind::Changelog,
                    label: Arc::from(""),
                    action: Arc::from(""),
                    source_ts_ms: None,
                    truncated: None,
                };
                if self.sink.try_send_state(&topic, self.id.partition(), key, value, pending).is_ok() {
                    InFlightChanged { delta: 1 }.emit(self.metrics());
                    break;
                }
                // The producer queue is full: settle an acknowledgement, then try again.
                if self.sink.in_flight() > 0 {
                    let s = self.sink.next().await;
                    self.settle(s);
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        let group = consumer.group_metadata().ok_or_else(|| TxnError::Fatal("no consumer group metadata".into()))?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(self.id.topic(), self.id.partition(), rdkafka::Offset::Offset(next))
            .map_err(|e| TxnError::Fatal(crate::source::kafka::kafka_error_code(&e)))?;
        let txn = eos.txn.clone();
        tokio::task::spawn_blocking(move || txn.commit(&tpl, &group))
            .await
            .map_err(|e| TxnError::Fatal(e.to_string()))??;
        if !flush.is_empty() {
            eos.prev = Some(flush.clock_record().to_vec());
        }
        Ok(())
    }

    fn step_changelog(&mut self, now: bool) {
        if let Some(w) = self.changelog.as_mut() {
            let before = self.sink.in_flight();
            w.step(&mut self.engine, &self.offsets, &mut self.sink, &self.shared.metrics, now, FLUSH_STEP);
            let sent = self.sink.in_flight() - before;
            if sent > 0 {
                InFlightChanged { delta: sent as i64 }.emit(&self.shared.metrics);
            }
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    fn flush_building(&self) -> bool {
        self.changelog.as_ref().is_some_and(|w| w.building())
    }

    /// Restore (partition paused), resume, then process until stopped. Returns the offset to
    /// commit for this partition, if any.
    pub async fn run(
        mut self,
        mut queue: PartitionQueue,
        consumer: Arc<GroupConsumer>,
        mut stop: StopRx,
    ) -> Option<i64> {
        if self.shared.cfg.sink.processing_guarantee == Guarantee::ExactlyOnce {
            // Fence the previous owner before reading its state: initialising the transactional
            // id completes or aborts whatever transaction it left, so the changelog and the
            // group's offset read next are final, and agree.
            if let Err(e) = self.start_transactions().await {
                tracing::error!(partition = %self.id, error = %e, "cannot start the partition's transactions; leaving it");
                return self.finish(tokio::time::Instant::now()).await;
            }
            self.consumer = Some(consumer.clone());
        }
        if self.forward.is_none() {
            if let Err(deadline) = self.restore(&consumer, &mut stop).await {
                return self.finish(deadline).await;
            }
        }
        if let Some(eos) = self.eos.as_mut() {
            eos.prev = self.restored_clock.take().map(|(c, _)| c);
            eos.full = eos.prev.is_none();
        }
        if self.forward.is_none() {
            self.learn_end(&consumer).await;
        }
        if let Err(e) = consumer.resume(&self.id.list()) {
            tracing::error!(partition = %self.id, error = %crate::source::kafka::kafka_error_code(&e), "cannot resume the partition after restore");
        }
        // Idle time counts from now, not from the assignment: a partition that has just spent
        // seconds restoring has not had the chance to fetch its backlog yet, and were it taken
        // for idle, the idle clock would move its event time past that backlog (making it late).
        self.last_message = Instant::now();
        let period = Duration::from_millis(self.shared.cfg.sink.commit_interval.ms().clamp(10, 1000) as u64);
        let mut tick = tokio::time::interval(period);
        let max_in_flight = self.shared.cfg.sink.max_in_flight;
        let mut was_full = false;
        let deadline = loop {
            let full = self.sink.in_flight() >= max_in_flight;
            // At most the room left under the bound of outputs in flight, so a batch taken whole
            // overshoots it by no more than a message's outputs, as one message did.
            let room = max_in_flight.saturating_sub(self.sink.in_flight()).min(BATCH);
            if full && !was_full {
                Backpressured.emit(self.metrics());
            }
            was_full = full;
            tokio::select! {
                biased;
                r = stop.changed() => {
                    match (r, *stop.borrow()) {
                        (Ok(()), Some(d)) => break d,
                        (Ok(()), None) => continue,
                        // The coordinator is gone: stop at once.
                        (Err(_), _) => break tokio::time::Instant::now(),
                    }
                }
                s = self.sink.next(), if self.sink.in_flight() > 0 => self.settle(s),
                _ = tick.tick() => {
                    if self.consumed == 0 {
                        // librdkafka's resume is a no-op while the pause queued in the rebalance
                        // callback waits to be served by its main thread (librdkafka#5591): the
                        // pause then lands after the resume and holds the partition for good.
                        // Until the first message shows it fetching, resume again on every tick;
                        // on a partition that is not paused, resuming is free.
                        let _ = consumer.resume(&self.id.list());
                    }
                    self.idle_step(&consumer).await;
                    self.on_tick();
                    if self.eos.is_some() {
                        match self.commit_transaction(&consumer).await {
                            Ok(()) => {}
                            Err(TxnError::Aborted(why)) => {
                                // The aborted outputs are gone and the state is ahead of what is
                                // committed: start the partition again from what is committed.
                                tracing::warn!(partition = %self.id, error = %why, "transaction aborted; restoring the partition from its last commit");
                                self.offsets = OffsetTracker::default();
                                self.skip = None;
                                self.resume_from = 0;
                                if let Err(d) = self.restore(&consumer, &mut stop).await {
                                    break d;
                                }
                                self.learn_end(&consumer).await;
                                if let Some(eos) = self.eos.as_mut() {
                                    eos.prev = self.restored_clock.take().map(|(c, _)| c);
                                    eos.full = eos.prev.is_none();
                                    eos.last = None;
                                }
                            }
                            Err(TxnError::Fatal(why)) => {
                                tracing::error!(partition = %self.id, error = %why, "transactions fenced or failed for good; leaving the partition to its new owner");
                                self.eos = None;
                                self.fenced = true;
                                break tokio::time::Instant::now();
                            }
                        }
                    }
                }
                _ = queue.next(room), if !full => {
                    let now = Instant::now();
                    if self.model.has_changed().unwrap_or(false) {
                        self.swap_model();
                    }
                    let mut stopped = None;
                    let mut messages = queue.iter().peekable();
                    while let Some(m) = messages.next() {
                        // The next message's user (by its key, which producers set to the user
                        // id), asked for while this one is handled (Engine::prefetch_user).
                        if let Some(user) = messages.peek().and_then(|n| n.key()).and_then(|k| std::str::from_utf8(k).ok()) {
                            self.engine.prefetch_user(user);
                        }
                        stopped = self.on_received(m, now, &mut stop).await.err();
                        if stopped.is_some() {
                            break;
                        }
                    }
                    self.report_clock();
                    if let Some(Stopped::Drain(d)) = stopped {
                        break d;
                    }
                    if self.flush_building() {
                        self.step_changelog(false);
                    }
                    // A partition queue is no tokio resource, so a partition with a backlog never
                    // waits: yield after each batch, or on a busy worker thread the timers, the
                    // other partitions and the coordinator would starve.
                    tokio::task::yield_now().await;
                }
                // Last, so only when no message waits: a flush being encoded goes on by itself (it
                // also steps after each batch above), a step at a time, yielding to the worker's
                // other partitions.
                _ = std::future::ready(()), if self.flush_building() => {
                    self.step_changelog(false);
                    tokio::task::yield_now().await;
                }
            }
        };
        self.finish(deadline).await
    }

    async fn on_received(&mut self, m: Msg<'_>, now: Instant, stop: &mut StopRx) -> Result<(), Stopped> {
        match m.error() {
            None => self.on_message(&m, now, stop).await,
            Some(code) => {
                tracing::warn!(partition = %self.id, error = ?code, "consume error");
                Ok(())
            }
        }
    }

    async fn restore(&mut self, consumer: &Arc<GroupConsumer>, stop: &mut StopRx) -> Result<(), tokio::time::Instant> {
        let changelog = self.shared.cfg.state.changelog;
        if !self.shared.cfg.source.restore_on_assign && !changelog {
            return Ok(());
        }
        let started = Instant::now();
        let cancel = Arc::new(AtomicBool::new(false));
        let id = self.id.clone();
        let shared = self.shared.clone();
        let group = consumer.clone();
        let model = self.model.borrow().clone();
        let fresh = {
            let (model, shared) = (model.clone(), shared.clone());
            move || Engine::new(&model, shared.cfg.policy.clone(), shared.cfg.engine.clone())
        };
        let mut engine = std::mem::replace(&mut self.engine, fresh());
        let c = cancel.clone();
        let mut job = tokio::task::spawn_blocking(move || {
            let label = id.to_string();
            let mut attempt = 0u32;
            loop {
                let r = restore_partition(&shared, &group, &id, &mut engine, &c, &label, &fresh);
                match r {
                    Ok(done) => {
                        shared.health.restore_done(&label);
                        return (engine, Ok(done));
                    }
                    Err(restore::RestoreError::Cancelled) => {
                        shared.health.restore_done(&label);
                        return (engine, Err("cancelled".to_string()));
                    }
                    Err(e) => {
                        // The broker will come back, or the partition is revoked (cancel).
                        attempt += 1;
                        tracing::warn!(partition = %id, attempt, error = %e, "restore failed; starting again");
                        engine = fresh();
                        let wait = Duration::from_secs(u64::from(attempt.min(5)));
                        let until = Instant::now() + wait;
                        while Instant::now() < until {
                            if c.load(std::sync::atomic::Ordering::Relaxed) {
                                shared.health.restore_done(&label);
                                return (engine, Err("cancelled".to_string()));
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            }
        });
        let result = loop {
            tokio::select! {
                r = &mut job => break r,
                r = stop.changed() => {
                    if r.is_err() || stop.borrow().is_some() {
                        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        };
        let deadline = *stop.borrow();
        match result {
            Ok((mut engine, Ok(from))) => {
                engine.track_changes(changelog);
                let events = match &from {
                    // With a changelog the restore was announced before it was known to be empty.
                    RestoredFrom::Nothing => changelog.then_some(0),
                    RestoredFrom::Input { events, .. } | RestoredFrom::Changelog { events, .. } => Some(*events),
                };
                let mut restored_clock = None;
                match from {
                    RestoredFrom::Nothing => {}
                    RestoredFrom::Input { until, .. } => self.offsets = OffsetTracker::starting_at(until),
                    RestoredFrom::Changelog { restored, .. } => {
                        self.offsets = OffsetTracker::starting_at(restored.resume);
                        self.resume_from = restored.resume;
                        self.skip = restored.skip;
                        // Read on from where the state stands, whatever the group committed.
                        let c = consumer.clone();
                        let (topic, partition, at) =
                            (self.id.topic().to_string(), self.id.partition(), restored.resume);
                        let seek = tokio::task::spawn_blocking(move || {
                            c.seek(&topic, partition, rdkafka::Offset::Offset(at), Duration::from_secs(10))
                        })
                        .await;
                        if let Ok(Err(e)) = seek {
                            // A paused partition that has not fetched yet refuses a seek; it then
                            // starts at the group's committed offset, which never passes the
                            // state's (the changelog flush commits first), and the messages
                            // before the state's offset are skipped as they arrive.
                            tracing::debug!(partition = %self.id, error = %e, "no seek to the changelog's offset");
                        }
                        self.check_gap = true;
                        restored_clock = Some((restored.clock_record, restored.resume));
                    }
                }
                let exactly_once = self.shared.cfg.sink.processing_guarantee == Guarantee::ExactlyOnce;
                if changelog && !exactly_once {
                    let topic = crate::state::changelog::topic_name(&self.shared.cfg.source.group_id, self.id.topic());
                    let every = Duration::from_millis(self.shared.cfg.state.flush_interval.ms().max(1) as u64);
                    self.changelog =
                        Some(ChangelogWriter::new(&topic, self.id.partition(), &engine, restored_clock, every));
                } else {
                    self.restored_clock = restored_clock;
                }
                self.engine = engine;
                if let Some(events) = events {
                    RestoreFinished {
                        partition: &self.id,
                        events,
                        seconds: started.elapsed().as_secs_f64(),
                        failed: None,
                    }
                    .emit(self.metrics());
                }
                Ok(())
            }
            Ok((_, Err(why))) => {
                RestoreFinished {
                    partition: &self.id,
                    events: 0,
                    seconds: started.elapsed().as_secs_f64(),
                    failed: Some(&why),
                }
                .emit(self.metrics());
                Err(deadline.unwrap_or_else(tokio::time::Instant::now))
            }
            Err(join) => {
                tracing::error!(partition = %self.id, error = %join, "restore task failed");
                Err(deadline.unwrap_or_else(tokio::time::Instant::now))
            }
        }
    }

    async fn on_message(&mut self, m: &Msg<'_>, now: Instant, stop: &mut StopRx) -> Result<(), Stopped> {
        // Durations are sampled (1 in 16): a distribution needs no census, and the clock reads
        // would otherwise be a noticeable share of the per-message cost.
        self.seq = self.seq.wrapping_add(1);
        let started = (self.seq % 16 == 0).then(Instant::now);
        self.consumed += 1;
        self.last_message = now;
        let offset = m.offset();
        if std::mem::take(&mut self.check_gap) && offset > self.resume_from {
            // Would mean the group's offset passed the changelog's: those messages are missing
            // from the state. Never expected; said loudly if it happens.
            tracing::error!(partition = %self.id, state_offset = self.resume_from, first_offset = offset, "input resumes after the offset the restored state reflects");
        }
        if offset < self.resume_from {
            // Fetched before the seek to the changelog's offset: already in the state.
            return Ok(());
        }
        let payload = m.payload().unwrap_or(&[]);
        let mut staging = std::mem::take(&mut self.staging);
        staging.clear();
        let mut scoring = None;
        let source_ts = m.timestamp();
        let wall = || chrono::Utc::now().timestamp_millis();
        let parsed = parse_event(payload, self.shared.cfg.source.max_event_bytes)
            .and_then(|ev| self.future.check(ev.ts, source_ts, wall).map(|()| ev));
        match parsed {
            Ok(ev) if self.forward.is_some() => {
                // Re-keyed by user id, the payload as it came: the repartition topic's partition
                // scores it (by the producer's default partitioner, one partition per user).
                let topic = self.forward.clone().unwrap_or_else(|| Arc::from(""));
                let headers = self.no_headers.clone();
                let user = ev.user_id.clone();
                let label: Arc<str> = Arc::from("");
                self.send(Some(offset), stop, |sink| {
                    let pending = crate::sink::kafka::Pending {
                        offset: Some(offset),
                        kind: OutputKind::Repartitioned,
                        label: label.clone(),
                        action: label.clone(),
                        source_ts_ms: None,
                        truncated: None,
                    };
                    let record = crate::sink::kafka::RecordRef {
                        topic: &topic,
                        key: user.as_bytes(),
                        payload,
                        headers: &headers,
                    };
                    sink.try_send(record, pending).map_err(drop)
                })
                .await?;
            }
            Ok(ev) => {
                let t = started.map(|_| Instant::now());
                // Read the wall clock only for a decision (about one event in a hundred): a
                // clock read per message was a few percent of the worker's time.
                let emitted_at = || chrono::Utc::now().timestamp_millis();
                if m.key().is_some_and(|k| k != ev.user_id.as_bytes()) {
                    // The user's state lives with the partition their key hashes to; a key that is
                    // not the user id may split a user across partitions (docs/KAFKA.md).
                    self.key_mismatches += 1;
                }
                if self.skip.as_ref().is_some_and(|s| offset >= s.until) {
                    self.skip = None;
                }
                if self.skip.as_ref().is_some_and(|s| s.applies(offset, &ev.user_id)) {
                    // The user's restored state already holds this message: only the clock moves.
                    self.engine.observe_time(ev.ts, &mut |d| staging.push(d, emitted_at()));
                } else {
                    self.engine.ingest_decisions(&ev, &mut |d| staging.push(d, emitted_at()));
                }
                scoring = t.map(|t| t.elapsed().as_secs_f64());
            }
            Err(r) => {
                EventRejected { partition: &self.id, offset, rejection: &r }.emit(self.metrics());
                let (record, pending) = self.sink.dead_letter(&self.id, offset, m.key(), payload, &r);
                let mut pending = Some(pending);
                self.send(Some(offset), stop, |sink| {
                    let p = pending.take().expect("taken once per attempt");
                    sink.try_send(record.as_ref(), p).map_err(|p| pending = Some(p))
                })
                .await?;
            }
        }
        let mut result = Ok(());
        for i in 0..staging.len() {
            result = self
                .send(Some(offset), stop, |sink| {
                    let (control, key, payload, pending) = staging.get(i, Some(offset), source_ts);
                    sink.try_send_decision(control, key, payload, pending).map_err(drop)
                })
                .await;
            if result.is_err() {
                break;
            }
        }
        self.staging = staging;
        result?;
        self.offsets.processed(offset);
        if let Some(s) = started {
            MessageTimed { processing_seconds: s.elapsed().as_secs_f64(), scoring_seconds: scoring }
                .emit(self.metrics());
        }
        Ok(())
    }

    /// Hand a record to the producer through `attempt`; while its queue is full, settle
    /// acknowledgements first. Stops waiting when the worker is told to stop.
    async fn send(
        &mut self,
        offset: Option<i64>,
        stop: &mut StopRx,
        mut attempt: impl FnMut(&mut KafkaSink) -> Result<(), ()>,
    ) -> Result<(), Stopped> {
        loop {
            if attempt(&mut self.sink).is_ok() {
                if let Some(o) = offset {
                    self.offsets.output_sent(o);
                }
                InFlightChanged { delta: 1 }.emit(self.metrics());
                return Ok(());
            }
            Backpressured.emit(self.metrics());
            tokio::select! {
                biased;
                r = stop.changed() => {
                    if let (Ok(()), Some(d)) = (r, *stop.borrow()) {
                        return Err(Stopped::Drain(d));
                    }
                    if stop.has_changed().is_err() {
                        return Err(Stopped::Drain(tokio::time::Instant::now()));
                    }
                }
                s = self.sink.next(), if self.sink.in_flight() > 0 => self.settle(s),
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
    }

    fn settle(&mut self, s: Settled) {
        match s {
            Settled::Acked(p) if p.kind == OutputKind::Changelog => {
                InFlightChanged { delta: -1 }.emit(self.metrics());
                OutputAcked { kind: p.kind, label: "", action: "", latency_seconds: None }.emit(self.metrics());
                if let Some(w) = self.changelog.as_mut() {
                    w.settled(true);
                }
            }
            Settled::Failed(p, error) if p.kind == OutputKind::Changelog => {
                InFlightChanged { delta: -1 }.emit(self.metrics());
                OutputFailed { partition: &self.id, offset: -1, kind: p.kind, error: &error }.emit(self.metrics());
                self.shared.health.permanent_failure(format!("changelog of {}: {error}", self.id));
                if let Some(w) = self.changelog.as_mut() {
                    w.settled(false);
                }
            }
            Settled::Acked(p) => {
                InFlightChanged { delta: -1 }.emit(self.metrics());
                if let Some((original_bytes, sent_bytes)) = p.truncated {
                    DeadLetterTruncated {
                        partition: &self.id,
                        offset: p.offset.unwrap_or(-1),
                        original_bytes,
                        sent_bytes,
                    }
                    .emit(self.metrics());
                }
                let latency =
                    p.source_ts_ms.map(|ts| (chrono::Utc::now().timestamp_millis() - ts).max(0) as f64 / 1000.0);
                OutputAcked { kind: p.kind, label: &p.label, action: &p.action, latency_seconds: latency }
                    .emit(self.metrics());
                if let Some(o) = p.offset {
                    self.offsets.output_settled(o);
                }
            }
            Settled::Failed(p, error) => {
                InFlightChanged { delta: -1 }.emit(self.metrics());
                OutputFailed { partition: &self.id, offset: p.offset.unwrap_or(-1), kind: p.kind, error: &error }
                    .emit(self.metrics());
                self.shared.health.permanent_failure(format!("{} on {}: {error}", p.kind.label(), self.id));
                if let Some(o) = p.offset {
                    self.offsets.output_settled(o);
                }
            }
            Settled::Retrying(kind, error) => OutputRetried { kind, error: &error }.emit(self.metrics()),
        }
    }

    fn swap_model(&mut self) {
        let art = self.model.borrow_and_update().clone();
        if let Err(e) = self.engine.swap_model(&art) {
            tracing::error!(partition = %self.id, error = %e, "model swap refused by the partition's engine");
        }
    }

    /// After a batch: this partition is active at its new watermark.
    fn report_clock(&mut self) {
        if self.forward.is_some() {
            // No event time of its own: it must not hold back the partitions that score.
            return;
        }
        if let Ok(mut c) = self.shared.clocks.lock() {
            c.report(&self.id, self.engine.watermark(), self.last_message, true);
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        if self.model.has_changed().unwrap_or(false) {
            self.swap_model();
        }
        self.flush_counts();
        self.step_changelog(false);
        // With exactly once, offsets are committed with the partition's transaction instead.
        let pos = match &self.changelog {
            _ if self.eos.is_some() || self.fenced => None,
            Some(w) => w.committable(self.offsets.position()),
            None => self.offsets.position(),
        };
        if let Some(pos) = pos.filter(|&p| Some(p) != self.reported) {
            self.reported = Some(pos);
            if let Ok(mut c) = self.shared.committable.lock() {
                c.insert(self.id.clone(), pos);
            }
        }
        let wm = self.engine.watermark();
        if wm > Millis::MIN {
            PartitionClock { partition: &self.id, watermark_ms: wm, now_ms: chrono::Utc::now().timestamp_millis() }
                .emit(self.metrics());
        }
        // Kept incrementally by the engine: reading them costs what changed since the last read,
        // plus a pass over the population wheel's current bucket. The coordinator sums them into
        // the gauges once a second (`STATS_EVERY`); reading them on every tick (every 20 ms in
        // `bench kafka`) was 12 % of a worker's CPU.
        if self.stats_at.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
            self.stats_at = Some(Instant::now());
            let stats = PartitionStats {
                users: self.engine.store().len(),
                state_bytes: self.engine.store().heap_bytes(),
                population: self.engine.population(),
                evicted: self.engine.counters.users_evicted,
            };
            if let Ok(mut p) = self.shared.populations.lock() {
                p.insert(self.id.clone(), stats);
            }
        }
    }

    /// Ask the broker for the partition's end as it is resumed: what is there now is its backlog.
    /// Idle moves checked before it were checked against another assignment's state.
    async fn learn_end(&mut self, consumer: &Arc<GroupConsumer>) {
        self.fresh_move = None;
        self.end_at_resume = match ask_end(&self.id, consumer, Duration::from_secs(10)).await {
            Ok(end) => Some(end),
            Err(error) => {
                tracing::warn!(partition = %self.id, %error, "cannot ask the partition's end offset; idleness waits for a fetch response");
                None
            }
        };
    }

    /// Move the clock of this partition if it is idle: quiet for `idle_timeout` and read to its
    /// end. A move that takes event time further than the wall clock has gone since the last
    /// checked move is checked against an end asked of the broker first: the end of the last
    /// fetch response lags behind a stream that has just started again, and while this
    /// partition's first new messages are on their way, the partition it follows (the slowest
    /// active one, or with all idle the furthest) can be days ahead of them in a catch-up. A
    /// stale end there made a slice of one partition late (the storm test on a loaded machine).
    /// A live stream, whose event time follows the wall clock, asks nothing.
    async fn idle_step(&mut self, consumer: &Arc<GroupConsumer>) {
        if self.forward.is_some() {
            return;
        }
        let idle_after = Duration::from_millis(self.shared.cfg.source.idle_timeout.ms().max(0) as u64);
        let now = Instant::now();
        let target = match self.shared.clocks.lock() {
            Ok(mut c) => {
                c.report(&self.id, self.engine.watermark(), self.last_message, false);
                c.idle_target(now, idle_after)
            }
            Err(_) => None,
        };
        let Some(target) = target else { return };
        let wm = self.engine.watermark();
        if target <= wm || wm == Millis::MIN || now.duration_since(self.last_message) < idle_after {
            return;
        }
        // Quiet is not idle: a partition whose backlog is not fetched yet (a slow broker, a
        // rebalance) is also quiet, and time alone cannot tell it from one that is done. So it
        // must be read to its end (see [`read_to`]).
        let read = self.read_offset(consumer.as_ref());
        let cached_end =
            crate::source::batch::cached_end_offset(consumer.as_ref(), self.id.topic(), self.id.partition());
        if !read_to(read, self.end_at_resume, cached_end) {
            return;
        }
        let checked = self.fresh_move.is_some_and(|(from, since)| {
            target.saturating_sub(from) <= i64::try_from(now.duration_since(since).as_millis()).unwrap_or(i64::MAX)
        });
        if !checked {
            // Unanswered (the broker is away): not idle this tick; the next one asks again.
            let fresh = ask_end(&self.id, consumer, Duration::from_secs(2)).await;
            if !fresh.is_ok_and(|end| read >= end) {
                return;
            }
            self.fresh_move = Some((target, now));
        }
        self.advance_idle_clock(target);
    }

    /// Timer outputs belong to no input offset; they are decided again after a restart because
    /// their due times are deterministic.
    fn advance_idle_clock(&mut self, target: Millis) {
        let mut staging = std::mem::take(&mut self.staging);
        staging.clear();
        let emitted_at = chrono::Utc::now().timestamp_millis();
        self.engine.advance_watermark_decisions(target, &mut |d| staging.push(d, emitted_at));
        // Held against the last processed message: its offset (and any changelog flush after
        // it) waits for these too, so a restart decides them again rather than losing them.
        let anchor = self.offsets.last_processed();
        for i in 0..staging.len() {
            let (control, key, payload, pending) = staging.get(i, anchor, None);
            match self.sink.try_send_decision(control, key, payload, pending) {
                Ok(()) => {
                    if let Some(o) = anchor {
                        self.offsets.output_sent(o);
                    }
                    InFlightChanged { delta: 1 }.emit(self.metrics())
                }
                Err(_) => {
                    // Only under heavy load, when the partition is not idle. Its state now says
                    // it was decided: keep the state from reaching the changelog.
                    tracing::warn!(partition = %self.id, "producer queue full; an idle-clock decision was not sent");
                    if let Some(mut w) = self.changelog.take() {
                        w.abandon(&mut self.engine);
                        tracing::error!(partition = %self.id, "changelog writes stopped for this assignment: its state holds a decision that was not sent; the next owner restores the last flush");
                    }
                }
            }
        }
        self.staging = staging;
    }

    /// How far the partition is read: the furthest of one past the last processed message, the
    /// restored state's offset, and librdkafka's position (which steps over transaction markers).
    fn read_offset(&self, consumer: &GroupConsumer) -> i64 {
        let position = crate::source::batch::app_position(consumer, self.id.topic(), self.id.partition());
        self.offsets.next_to_process().unwrap_or(0).max(self.resume_from).max(position.unwrap_or(0))
    }

    fn flush_counts(&mut self) {
        if self.key_mismatches > 0 {
            KeysMismatched { partition: &self.id, count: std::mem::take(&mut self.key_mismatches) }
                .emit(self.metrics());
        }
        EngineProgress { before: &self.flushed, after: &self.engine.counters }.emit(self.metrics());
        self.flushed = self.engine.counters.clone();
        MessagesConsumed { partition: &self.id, count: self.consumed - self.consumed_flushed }.emit(self.metrics());
        self.consumed_flushed = self.consumed;
    }

    /// Stop reading; wait for outputs in flight until the deadline; return the commit position.
    async fn finish(mut self, deadline: tokio::time::Instant) -> Option<i64> {
        // Drain the outputs, then write the final state, so the next owner starts from here.
        loop {
            self.step_changelog(true);
            let flushing = self.changelog.as_ref().is_some_and(|w| !w.idle());
            if self.sink.in_flight() == 0 && !flushing {
                break;
            }
            let next = if self.sink.in_flight() > 0 {
                tokio::time::timeout_at(deadline, self.sink.next()).await.ok()
            } else {
                // A flush waiting for producer queue space.
                tokio::time::sleep(Duration::from_millis(5)).await;
                (tokio::time::Instant::now() < deadline)
                    .then_some(Settled::Retrying(OutputKind::Changelog, String::new()))
            };
            match next {
                Some(Settled::Retrying(OutputKind::Changelog, e)) if e.is_empty() => {}
                Some(s) => self.settle(s),
                None => {
                    tracing::warn!(partition = %self.id, in_flight = self.sink.in_flight(), "drain deadline reached with outputs unacknowledged; their offsets stay uncommitted");
                    break;
                }
            }
        }
        InFlightChanged { delta: -(self.sink.in_flight() as i64) }.emit(self.metrics());
        self.flush_counts();
        if let Ok(mut c) = self.shared.clocks.lock() {
            c.remove(&self.id);
        }
        if let Ok(mut p) = self.shared.populations.lock() {
            p.remove(&self.id);
        }
        if self.eos.is_some() {
            // Offsets go with the transaction, never through the group's commit.
            if let Some(consumer) = self.consumer.clone() {
                if let Err(e) = self.commit_transaction(&consumer).await {
                    tracing::warn!(partition = %self.id, error = %e, "last transaction not committed; the next owner resumes from the one before");
                }
            }
            return None;
        }
        if self.fenced {
            return None;
        }
        match &self.changelog {
            Some(w) => w.committable(self.offsets.position()),
            None => self.offsets.position(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read_to;

    #[test]
    fn a_partition_is_read_to_its_end_only_once_an_end_is_known_and_reached() {
        // No end known yet: never caught up, whatever was restored.
        assert!(!read_to(500, None, None));
        // A backlog behind the restored state: not caught up until it is read.
        assert!(!read_to(100, None, Some(500)));
        assert!(!read_to(499, Some(500), None));
        assert!(read_to(500, Some(500), Some(500)));
        // A restored state at the end (a quiet partition after a restart) is caught up at once.
        assert!(read_to(500, Some(500), None));
        // An empty partition.
        assert!(read_to(0, Some(0), Some(0)));
    }

    #[test]
    fn a_stale_cached_end_does_not_hide_the_backlog_found_at_resume() {
        // Reassigned within the same client: librdkafka still holds the end of the last fetch
        // before the revoke (400), but the broker said 900 at resume; the state is at 600.
        assert!(!read_to(600, Some(900), Some(400)));
        // Once fetching, the cached end is the newer one.
        assert!(!read_to(900, Some(900), Some(950)));
        assert!(read_to(950, Some(900), Some(950)));
    }
}
