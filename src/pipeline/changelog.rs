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
    /// When the next flush is due (`None`: at once), and the interval between flushes.
    next_due: Option<std::time::Instant>,
    interval: std::time::Duration,
}

/// Milliseconds from `now_ms` (Unix time) to partition `partition`'s next flush, at least half an
/// interval away. Each partition flushes at its own phase of the interval, the same in every
/// process, so the partitions of a worker (and of an instance) do not all flush at once: a flush
/// is a burst of records for the producer and the broker, and bursts that coincide add up to a
/// stall of the input on a busy machine. The phases are the multiples of the golden ratio:
/// however many consecutive partitions there are, no two phases fall close together.
pub fn next_flush_in(now_ms: u64, interval_ms: u64, partition: i32) -> u64 {
    let interval = interval_ms.max(1);
    let phase = ((f64::from(partition.max(0)) * 0.618_033_988_749_895).fract() * interval as f64) as u64;
    let earliest = now_ms + interval / 2;
    // The first time at `phase` modulo the interval, not before `earliest`.
    let behind = (earliest + interval - phase) % interval;
    let at = if behind == 0 { earliest } else { earliest + interval - behind };
    at - now_ms
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
            next_due: None,
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
            let due = now || self.next_due.is_none_or(|t| std::time::Instant::now() >= t);
            if !due || !self.has_news(engine, next) {
                return;
            }
            let unix_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let wait = next_flush_in(unix_ms, self.interval.as_millis() as u64, self.partition);
            self.next_due = Some(std::time::Instant::now() + std::time::Duration::from_millis(wait));
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_next_flush_is_half_to_one_and_a_half_intervals_away_at_the_partitions_phase(
            now in 0u64..4_000_000_000_000,
            interval in 1u64..600_000,
            partition in 0i32..10_000,
        ) {
            let wait = next_flush_in(now, interval, partition);
            prop_assert!(wait >= interval / 2 && wait < interval / 2 + interval, "{wait}");
            // Every flush of the partition lands on the same phase of the interval.
            let later = now + wait + 1 + (now % 7);
            let again = next_flush_in(later, interval, partition);
            prop_assert_eq!((now + wait) % interval, (later + again) % interval);
        }
    }

    #[test]
    fn consecutive_partitions_flush_at_well_spread_phases() {
        let interval = 5_000;
        let mut phases: Vec<u64> =
            (0..4).map(|p| (1_000_000 + next_flush_in(1_000_000, interval, p)) % interval).collect();
        phases.sort_unstable();
        let gaps: Vec<u64> = phases.windows(2).map(|w| w[1] - w[0]).chain([phases[0] + interval - phases[3]]).collect();
        // An even spread would be 1,250 ms apart; the golden ratio's is never under 700.
        assert!(gaps.iter().all(|&g| g >= 700), "{phases:?} {gaps:?}");
    }
}
