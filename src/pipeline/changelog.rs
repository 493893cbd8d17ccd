//! A partition worker's side of the changelog: when to flush, what may be committed.
//!
//! At least once, with state: a flush at input offset `Y` is sent only once every output of the
//! messages before `Y` (and of the idle clock before it) is acknowledged, so a new owner that
//! restores it and reads on from `Y` loses nothing. The group's committed offset never passes
//! the last acknowledged flush. One flush is in flight at a time (see crate::state::changelog).

use std::sync::Arc;

use crate::engine::Engine;
use crate::pipeline::events::{ChangelogFlushed, OutputKind};
use crate::pipeline::offsets::OffsetTracker;
use crate::sink::kafka::{KafkaSink, Pending};
use crate::state::changelog::Flush;
use crate::state::codec::Shape;
use crate::telemetry::Metrics;
use crate::time::Millis;

pub struct ChangelogWriter {
    topic: Arc<str>,
    partition: i32,
    shape: Shape,
    /// The last acknowledged flush's clock record (the next flush's `PREV`).
    prev: Option<Vec<u8>>,
    pending: Option<Flush>,
    sent: usize,
    in_flight: usize,
    failed: bool,
    /// Write every user at the next flush.
    full: bool,
    /// Input offset of the last acknowledged flush: the highest offset that may be committed.
    durable: Option<i64>,
    last: Option<(i64, Millis)>,
    label: Arc<str>,
    /// When the last flush was built, and how long to wait before the next.
    built_at: Option<std::time::Instant>,
    interval: std::time::Duration,
}

impl ChangelogWriter {
    /// `prev`: the restored flush's clock record and offset, when state came from the changelog;
    /// otherwise the first flush writes every user.
    pub fn new(
        topic: &str,
        partition: i32,
        engine: &Engine,
        restored: Option<(Vec<u8>, i64)>,
        interval: std::time::Duration,
    ) -> ChangelogWriter {
        let full = restored.is_none();
        let (prev, durable) = match restored {
            Some((clock, offset)) => (Some(clock), Some(offset)),
            None => (None, None),
        };
        ChangelogWriter {
            topic: topic.into(),
            partition,
            shape: Shape::of(engine.store().layout()),
            prev,
            pending: None,
            sent: 0,
            in_flight: 0,
            failed: false,
            full,
            durable,
            last: durable.map(|d| (d, engine.watermark())),
            label: Arc::from(""),
            built_at: None,
            interval,
        }
    }

    /// The offset the group may commit, given the outputs' position.
    pub fn committable(&self, position: Option<i64>) -> Option<i64> {
        Some(position?.min(self.durable?))
    }

    /// Nothing built or in flight.
    pub fn idle(&self) -> bool {
        self.pending.is_none()
    }

    /// Whether the engine has anything a flush would write.
    fn has_news(&self, engine: &Engine, next: i64) -> bool {
        self.full || engine.pending_changes() > 0 || self.last != Some((next, engine.watermark()))
    }

    /// Whether a flush is still being encoded: [`ChangelogWriter::step`] should be called
    /// again soon, not only at the next tick.
    pub fn building(&self) -> bool {
        self.pending.as_ref().is_some_and(|f| !f.is_complete())
    }

    /// Begin a flush if one is due and there is news, encode up to `users` more of its users
    /// (`usize::MAX` with `now`), and send what may be sent. `now`: flush whatever is new even if
    /// the interval has not passed (revoke, shutdown).
    ///
    /// A flush is encoded a few users per step, between batches of messages, so that a flush
    /// of many users never holds the partition's events back for long; the engine hands each
    /// user out as they were when the flush began (crate::engine's snapshot).
    pub fn step(
        &mut self,
        engine: &mut Engine,
        offsets: &OffsetTracker,
        sink: &mut KafkaSink,
        metrics: &Metrics,
        now: bool,
        users: usize,
    ) {
        if self.pending.is_none() {
            // The state reflects every message before `next`.
            let Some(next) = offsets.next_to_process() else { return };
            let due = now || self.built_at.is_none_or(|t| t.elapsed() >= self.interval);
            if !due || !self.has_news(engine, next) {
                return;
            }
            self.built_at = Some(std::time::Instant::now());
            let f = Flush::begin(engine, &self.shape, next, self.prev.as_deref(), self.full);
            self.full = false;
            self.last = Some((next, engine.watermark()));
            self.pending = Some(f);
            self.sent = 0;
        }
        let Some(f) = &mut self.pending else { return };
        if !f.is_complete() && f.extend(engine, &self.shape, if now { usize::MAX } else { users }) {
            ChangelogFlushed { records: f.len(), bytes: f.bytes() }.emit(metrics);
        }
        // Outputs of everything the flush holds must be acknowledged before it is written.
        if self.sent == 0 && offsets.position().is_none_or(|p| p < f.offset) {
            return;
        }
        while self.sent < f.len() {
            let (key, value) = f.get(self.sent);
            let pending = Pending {
                offset: None,
                kind: OutputKind::Changelog,
                label: self.label.clone(),
                action: self.label.clone(),
                source_ts_ms: None,
                truncated: None,
            };
            if sink.try_send_state(&self.topic, self.partition, key, value, pending).is_err() {
                // The producer queue is full: the rest goes at the next step.
                return;
            }
            self.sent += 1;
            self.in_flight += 1;
        }
    }

    /// Give up the flush being built or sent (its records may be lost): the next flush writes
    /// everyone, and the engine forgets its snapshot.
    pub fn abandon(&mut self, engine: &mut Engine) {
        if self.pending.take().is_some() {
            engine.abandon_snapshot();
            self.full = true;
        }
    }

    /// A changelog record was acknowledged (`ok`) or failed for good.
    pub fn settled(&mut self, ok: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if !ok {
            self.failed = true;
        }
        let Some(f) = &self.pending else { return };
        // `END` is the last record: until it is encoded, the flush is not whole.
        if self.in_flight == 0 && f.is_complete() && self.sent == f.len() {
            if self.failed {
                // Some user's record may be missing: the next flush writes everyone.
                self.full = true;
                self.failed = false;
            } else {
                self.durable = Some(f.offset);
                self.prev = Some(f.clock_record().to_vec());
            }
            self.pending = None;
        }
    }
}
