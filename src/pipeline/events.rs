//! Typed internal events of the Kafka runtime: one struct per happening, whose `emit` both logs
//! and counts. The runtime's modules describe what happened; only this module touches the
//! metrics registry, so names, labels and log wording live in one place (docs/METRICS.md).
//!
//! Log lines carry partition, offset, reason codes and librdkafka error codes, never a user id,
//! an event's content or a config value.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::EngineCounters;
use crate::event::Rejection;
use crate::source::kafka::PartitionId;
use crate::telemetry::Metrics;

/// The kind of record a sink writes; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Intervention,
    Control,
    DeadLetter,
    /// A state record on a changelog topic.
    Changelog,
    /// A valid event re-keyed by its user id onto the repartition topic.
    Repartitioned,
}

impl OutputKind {
    pub fn label(self) -> &'static str {
        match self {
            OutputKind::Intervention => "intervention",
            OutputKind::Control => "control",
            OutputKind::DeadLetter => "dead_letter",
            OutputKind::Changelog => "changelog",
            OutputKind::Repartitioned => "repartitioned",
        }
    }
}

/// At most `per_second` lines of one kind per second; the metric counts every occurrence.
struct RateLimit {
    window: AtomicU64,
    in_window: AtomicU64,
}

impl RateLimit {
    const fn new() -> RateLimit {
        RateLimit { window: AtomicU64::new(0), in_window: AtomicU64::new(0) }
    }

    fn allow(&self, per_second: u64) -> bool {
        let sec = chrono::Utc::now().timestamp() as u64;
        if self.window.swap(sec, Ordering::Relaxed) != sec {
            self.in_window.store(0, Ordering::Relaxed);
        }
        self.in_window.fetch_add(1, Ordering::Relaxed) < per_second
    }
}

/// Messages read from a partition since the last flush (counted locally, flushed per tick).
pub struct MessagesConsumed<'a> {
    pub partition: &'a PartitionId,
    pub count: u64,
}

impl MessagesConsumed<'_> {
    pub fn emit(&self, m: &Metrics) {
        if self.count > 0 {
            m.events_consumed.with_label_values(&[self.partition.topic()]).inc_by(self.count);
        }
    }
}

/// The engine's local counters moved from `before` to `after`.
pub struct EngineProgress<'a> {
    pub before: &'a EngineCounters,
    pub after: &'a EngineCounters,
}

impl EngineProgress<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.add_engine_delta(self.before, self.after);
    }
}

/// An input message failed validation and goes to the dead-letter topic.
pub struct EventRejected<'a> {
    pub partition: &'a PartitionId,
    pub offset: i64,
    pub rejection: &'a Rejection,
}

impl EventRejected<'_> {
    pub fn emit(&self, m: &Metrics) {
        static LOG: RateLimit = RateLimit::new();
        m.events_invalid.with_label_values(&[self.rejection.reason.code()]).inc();
        if LOG.allow(5) {
            tracing::warn!(partition = %self.partition, offset = self.offset, reason = self.rejection.reason.code(), detail = %self.rejection.detail, "event dead-lettered");
        }
    }
}

/// The broker acknowledged an output. `latency_seconds`: from the triggering message's
/// timestamp, for outputs caused by an event.
pub struct OutputAcked<'a> {
    pub kind: OutputKind,
    /// Tier for interventions and control records, reason code for dead letters.
    pub label: &'a str,
    pub action: &'a str,
    pub latency_seconds: Option<f64>,
}

impl OutputAcked<'_> {
    pub fn emit(&self, m: &Metrics) {
        match self.kind {
            OutputKind::Intervention => m.interventions.with_label_values(&[self.label, self.action]).inc(),
            OutputKind::Control => m.control.with_label_values(&[self.label]).inc(),
            OutputKind::DeadLetter => m.dead_lettered.with_label_values(&[self.label]).inc(),
            OutputKind::Changelog => m.changelog_records.inc(),
            OutputKind::Repartitioned => m.repartitioned.inc(),
        }
        if let Some(s) = self.latency_seconds {
            m.event_to_intervention_seconds.with_label_values(&[self.label]).observe(s);
        }
    }
}

/// A transient producer error; the output is sent again after a pause.
pub struct OutputRetried<'a> {
    pub kind: OutputKind,
    pub error: &'a str,
}

impl OutputRetried<'_> {
    pub fn emit(&self, m: &Metrics) {
        static LOG: RateLimit = RateLimit::new();
        m.output_retries.with_label_values(&[self.kind.label()]).inc();
        if LOG.allow(2) {
            tracing::warn!(output = self.kind.label(), error = self.error, "output not acknowledged; sending again");
        }
    }
}

/// The broker refused an output for good. It is counted and reported, and its offset is released
/// so that the partition goes on.
pub struct OutputFailed<'a> {
    pub partition: &'a PartitionId,
    pub offset: i64,
    pub kind: OutputKind,
    pub error: &'a str,
}

impl OutputFailed<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.outputs_failed.with_label_values(&[self.kind.label(), self.error]).inc();
        tracing::error!(partition = %self.partition, offset = self.offset, output = self.kind.label(), error = self.error, "output refused for good by the broker; counted and skipped");
    }
}

/// A dead letter too large for the producer or broker was sent truncated.
pub struct DeadLetterTruncated<'a> {
    pub partition: &'a PartitionId,
    pub offset: i64,
    pub original_bytes: usize,
    pub sent_bytes: usize,
}

impl DeadLetterTruncated<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.dead_letters_truncated.inc();
        tracing::warn!(partition = %self.partition, offset = self.offset, original_bytes = self.original_bytes, sent_bytes = self.sent_bytes, "dead letter truncated to fit the broker's limit");
    }
}

/// A partition stopped reading because its outputs in flight reached the bound.
pub struct Backpressured;

impl Backpressured {
    pub fn emit(&self, m: &Metrics) {
        m.backpressure_pauses.inc();
    }
}

/// Outputs in flight across all partitions changed by `delta`.
pub struct InFlightChanged {
    pub delta: i64,
}

impl InFlightChanged {
    pub fn emit(&self, m: &Metrics) {
        m.in_flight.add(self.delta);
    }
}

pub struct PartitionAssigned<'a> {
    pub partition: &'a PartitionId,
}

impl PartitionAssigned<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.rebalances.with_label_values(&["assign"]).inc();
        tracing::info!(partition = %self.partition, "partition assigned");
    }
}

/// A partition was taken away: its per-partition series go too, so no stale value lingers.
pub struct PartitionRevoked<'a> {
    pub partition: &'a PartitionId,
}

impl PartitionRevoked<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.rebalances.with_label_values(&["revoke"]).inc();
        let labels = [self.partition.topic(), &self.partition.partition().to_string()];
        let _ = m.watermark.remove_label_values(&labels);
        let _ = m.event_time_lag.remove_label_values(&labels);
        let _ = m.consumer_lag.remove_label_values(&labels);
        tracing::info!(partition = %self.partition, "partition revoked");
    }
}

/// How many partitions this instance holds now.
pub struct AssignmentChanged {
    pub partitions: usize,
}

impl AssignmentChanged {
    pub fn emit(&self, m: &Metrics) {
        m.partitions_assigned.set(self.partitions as i64);
    }
}

pub struct RestoreStarted<'a> {
    pub partition: &'a PartitionId,
    pub from: i64,
    pub until: i64,
}

impl RestoreStarted<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.restoring_partitions.inc();
        tracing::info!(partition = %self.partition, from = self.from, until = self.until, "restoring state in the background; partition paused");
    }
}

/// A partition's state came back from its changelog.
pub struct ChangelogRestored<'a> {
    pub partition: &'a PartitionId,
    pub users: u64,
    pub resume: i64,
    /// Users whose state was ahead of the resume offset (their writer died mid-flush).
    pub ahead: usize,
    pub corrupt: u64,
    pub other_layout: u64,
}

impl ChangelogRestored<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.restored_users.inc_by(self.users);
        if self.corrupt > 0 || self.other_layout > 0 {
            tracing::warn!(partition = %self.partition, corrupt = self.corrupt, other_layout = self.other_layout, "changelog records skipped: unreadable, or written for another model's features (those users start fresh)");
        }
        tracing::info!(partition = %self.partition, users = self.users, resume_offset = self.resume, users_ahead = self.ahead, "state restored from the changelog");
    }
}

/// Messages whose key was not their event's `user_id` (a key-less message is not counted).
pub struct KeysMismatched<'a> {
    pub partition: &'a PartitionId,
    pub count: u64,
}

impl KeysMismatched<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.key_mismatches.with_label_values(&[self.partition.topic()]).inc_by(self.count);
        static LIMIT: RateLimit = RateLimit::new();
        if LIMIT.allow(1) {
            tracing::warn!(partition = %self.partition, count = self.count, "messages keyed by something other than their user_id: a user's events may land on several partitions and split their state; key the topic by user_id");
        }
    }
}

/// A partition's transaction was committed (`error: None`) or not.
pub struct TransactionFinished<'a> {
    pub partition: &'a PartitionId,
    pub error: Option<&'a str>,
}

impl TransactionFinished<'_> {
    pub fn emit(&self, m: &Metrics) {
        match self.error {
            None => m.transactions.with_label_values(&["committed"]).inc(),
            Some(e) => {
                m.transactions.with_label_values(&["failed"]).inc();
                tracing::warn!(partition = %self.partition, error = e, "transaction not committed");
            }
        }
    }
}

/// A flush of state records was handed to the producer.
pub struct ChangelogFlushed {
    pub records: usize,
    pub bytes: usize,
}

impl ChangelogFlushed {
    pub fn emit(&self, m: &Metrics) {
        m.changelog_bytes.inc_by(self.bytes as u64);
        tracing::trace!(records = self.records, bytes = self.bytes, "changelog flush");
    }
}

/// Events re-read by a restore since the last report.
pub struct RestoreProgress {
    pub events: u64,
}

impl RestoreProgress {
    pub fn emit(&self, m: &Metrics) {
        m.restored_events.inc_by(self.events);
    }
}

pub struct RestoreFinished<'a> {
    pub partition: &'a PartitionId,
    pub events: u64,
    pub seconds: f64,
    /// Why it ended early (cancelled by a revoke or shutdown, or a broker error), if it did.
    pub failed: Option<&'a str>,
}

impl RestoreFinished<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.restoring_partitions.dec();
        match self.failed {
            None => {
                m.restore_seconds.observe(self.seconds);
                tracing::info!(partition = %self.partition, events = self.events, seconds = self.seconds, "state restored; partition resumed");
            }
            Some(why) => {
                tracing::warn!(partition = %self.partition, events = self.events, seconds = self.seconds, why, "restore ended early")
            }
        }
    }
}

pub struct OffsetsCommitted<'a> {
    pub partitions: usize,
    pub error: Option<&'a str>,
}

impl OffsetsCommitted<'_> {
    pub fn emit(&self, m: &Metrics) {
        match self.error {
            None => m.commits.with_label_values(&["ok"]).inc(),
            Some(e) => {
                m.commits.with_label_values(&["error"]).inc();
                tracing::warn!(
                    partitions = self.partitions,
                    error = e,
                    "offset commit failed; retried at the next tick"
                );
            }
        }
    }
}

/// The result of a broker probe; logged only when it changes.
pub struct BrokerProbed<'a> {
    pub reachable: bool,
    pub changed: bool,
    pub error: Option<&'a str>,
}

impl BrokerProbed<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.broker_reachable.set(i64::from(self.reachable));
        if self.changed {
            if self.reachable {
                tracing::info!("broker reachable again");
            } else {
                tracing::error!(error = self.error.unwrap_or("unknown"), "no broker answers; not ready");
            }
        }
    }
}

pub struct ReadinessChanged {
    pub ready: bool,
}

impl ReadinessChanged {
    pub fn emit(&self, m: &Metrics) {
        m.ready.set(i64::from(self.ready));
    }
}

/// A partition's event-time clock, reported per tick.
pub struct PartitionClock<'a> {
    pub partition: &'a PartitionId,
    pub watermark_ms: i64,
    pub now_ms: i64,
}

impl PartitionClock<'_> {
    pub fn emit(&self, m: &Metrics) {
        let labels = [self.partition.topic(), &self.partition.partition().to_string()];
        m.watermark.with_label_values(&labels).set(self.watermark_ms as f64 / 1000.0);
        m.event_time_lag.with_label_values(&labels).set((self.now_ms - self.watermark_ms) as f64 / 1000.0);
    }
}

/// Consumer lag of one partition from librdkafka's statistics.
pub struct ConsumerLag<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub messages: i64,
}

impl ConsumerLag<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.consumer_lag.with_label_values(&[self.topic, &self.partition.to_string()]).set(self.messages);
    }
}

/// Sampled durations of the per-message path.
pub struct MessageTimed {
    pub processing_seconds: f64,
    pub scoring_seconds: Option<f64>,
}

impl MessageTimed {
    pub fn emit(&self, m: &Metrics) {
        m.processing_seconds.observe(self.processing_seconds);
        if let Some(s) = self.scoring_seconds {
            m.scoring_seconds.observe(s);
        }
    }
}

/// The service loaded its model and is about to start its workers.
pub struct ServiceStarting<'a> {
    pub model_version: &'a str,
    pub trained_at: &'a str,
    pub features: usize,
    pub workers: usize,
}

impl ServiceStarting<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.model_info.with_label_values(&[self.model_version, self.trained_at, &self.features.to_string()]).set(1);
        m.model_loaded.set(1);
        m.workers.set(self.workers as i64);
        tracing::info!(model = self.model_version, workers = self.workers, "model loaded");
    }
}

pub struct ModelReloaded<'a> {
    pub reason: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub trained_at: &'a str,
    pub features: usize,
}

impl ModelReloaded<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.model_info.reset();
        m.model_info.with_label_values(&[self.to, self.trained_at, &self.features.to_string()]).set(1);
        m.model_reloads.with_label_values(&["ok"]).inc();
        tracing::info!(reason = self.reason, from = self.from, to = self.to, "model reloaded");
    }
}

pub struct ModelReloadRejected<'a> {
    pub reason: &'a str,
    pub path: &'a std::path::Path,
    pub error: &'a str,
    pub serving: &'a str,
}

impl ModelReloadRejected<'_> {
    pub fn emit(&self, m: &Metrics) {
        m.model_reloads.with_label_values(&["rejected"]).inc();
        tracing::error!(reason = self.reason, path = %self.path.display(), error = self.error, serving = self.serving, "model reload rejected; the current model keeps serving");
    }
}

/// Population figures over the partitions' users, refreshed per gauge tick.
pub struct PopulationMeasured<'a> {
    pub users: usize,
    pub state_bytes: usize,
    pub population: &'a crate::engine::Population,
    pub evicted: u64,
    pub producer_queue: i64,
    pub uptime_seconds: f64,
}

impl PopulationMeasured<'_> {
    pub fn emit(&self, m: &Metrics) {
        let p = self.population;
        m.users_tracked.set(self.users as i64);
        m.state_bytes.set(self.state_bytes as i64);
        for (i, days) in crate::engine::ACTIVE_WINDOWS_DAYS.iter().enumerate() {
            m.active_users.with_label_values(&[&format!("{days}d")]).set(p.active[i] as i64);
        }
        for (i, days) in crate::engine::RETENTION_DAYS.iter().enumerate() {
            let d = days.to_string();
            m.cohort_users.with_label_values(&[&d]).set(p.cohort[i] as i64);
            if p.cohort[i] > 0 {
                m.cohort_retention.with_label_values(&[&d]).set(p.retained[i] as f64 / p.cohort[i] as f64);
            }
        }
        let mut stages = p.stages;
        // Users forgotten after state_ttl of silence are churned users no longer in memory.
        stages[crate::policy::Stage::Churned as usize] += self.evicted;
        for s in crate::policy::Stage::ALL {
            m.users_by_stage.with_label_values(&[s.as_str()]).set(stages[s as usize] as i64);
        }
        m.producer_queue.set(self.producer_queue);
        m.uptime.set(self.uptime_seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_partition_leaves_no_gauge_behind() {
        let m = Metrics::new();
        let (kept, gone) = (PartitionId::new("events", 0), PartitionId::new("events", 1));
        for p in [&kept, &gone] {
            PartitionClock { partition: p, watermark_ms: 1_000, now_ms: 2_000 }.emit(&m);
            ConsumerLag { topic: p.topic(), partition: p.partition(), messages: 5 }.emit(&m);
        }
        PartitionRevoked { partition: &gone }.emit(&m);
        let text = m.render();
        for name in
            ["churnguard_watermark_seconds", "churnguard_event_time_lag_seconds", "churnguard_consumer_lag_messages"]
        {
            assert!(
                text.contains(&format!("{name}{{partition=\"0\",topic=\"events\"}}")),
                "{name} of the kept partition:\n{text}"
            );
            assert!(
                !text.contains(&format!("{name}{{partition=\"1\",topic=\"events\"}}")),
                "{name} of the revoked partition:\n{text}"
            );
        }
        assert!(text.contains("churnguard_rebalances_total{kind=\"revoke\"} 1"), "{text}");
    }
}
