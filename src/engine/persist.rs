//! An engine's state as records, for a changelog and for snapshots: one per user, and one for
//! the engine's clock. Restoring every record of an engine into a fresh one (same model and
//! config) gives an engine that decides exactly as the original does from there on.
//!
//! Changes are tracked per user while tracking is on: a user is listed once per drain however
//! many events they had, so a changelog writes one record per changed user per flush.

use super::{Engine, OutcomeCell, PendingOutcome, FRESH_META, NO_DUE, NO_OUTCOME};
use crate::decision::Decision;
use crate::policy::Memory;
use crate::time::Millis;

/// One user's whole state, borrowed from the engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserView<'a> {
    pub user_id: &'a str,
    /// The feature state's cells, as laid out by [`crate::features::Layout`].
    pub narrow: &'a [u32],
    pub wide: &'a [u64],
    /// The next rescore or eviction time ([`NO_DUE`]: none).
    pub next_due: Millis,
    pub memory: Memory,
    pub outcome: PendingOutcome,
}

/// A user's state, owned: what a decoder fills (and reuses across records).
#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub user_id: String,
    pub narrow: Vec<u32>,
    pub wide: Vec<u64>,
    pub next_due: Millis,
    pub memory: Memory,
    pub outcome: PendingOutcome,
}

impl Default for UserRecord {
    fn default() -> Self {
        UserRecord {
            user_id: String::new(),
            narrow: Vec::new(),
            wide: Vec::new(),
            next_due: NO_DUE,
            memory: Memory::NONE,
            outcome: NO_OUTCOME,
        }
    }
}

impl UserRecord {
    /// Equal field by field, the spend by its bits (NaN is a value a decoded record may hold):
    /// what a round trip through the codec must keep.
    pub fn identical(&self, other: &UserRecord) -> bool {
        let (a, b) = (self, other);
        a.user_id == b.user_id
            && a.narrow == b.narrow
            && a.wide == b.wide
            && a.next_due == b.next_due
            && a.memory == b.memory
            && a.outcome.due == b.outcome.due
            && a.outcome.decided == b.outcome.decided
            && a.outcome.cell == b.outcome.cell
            && a.outcome.retained == b.outcome.retained
            && a.outcome.spend.to_bits() == b.outcome.spend.to_bits()
    }

    pub fn view(&self) -> UserView<'_> {
        UserView {
            user_id: &self.user_id,
            narrow: &self.narrow,
            wide: &self.wide,
            next_due: self.next_due,
            memory: self.memory,
            outcome: self.outcome,
        }
    }
}

/// A change to write: a user's new state, or a user forgotten (evicted).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change<'a> {
    Put(UserView<'a>),
    Delete(&'a str),
}

/// The engine's own clock and interned outcome keys: everything that is not per user.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockState {
    pub max_ts: Millis,
    pub watermark: Millis,
    pub warm_until: Millis,
    /// The rescore and outcome timer wheels' first undrained buckets (`Millis::MIN`: unset).
    pub timer_base: i64,
    pub outcome_base: i64,
    /// `(control, tier, action)` in index order: users' open outcomes refer to them by index.
    pub outcome_keys: Vec<(bool, String, String)>,
}

impl Default for ClockState {
    fn default() -> Self {
        ClockState {
            max_ts: Millis::MIN,
            watermark: Millis::MIN,
            warm_until: Millis::MIN,
            timer_base: Millis::MIN,
            outcome_base: Millis::MIN,
            outcome_keys: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RestoreError {
    #[error("state of {got_narrow}+{got_wide} cells, the model's layout has {want_narrow}+{want_wide}")]
    Layout { got_narrow: usize, got_wide: usize, want_narrow: usize, want_wide: usize },
    #[error("a timer wheel starts before the watermark (bucket {base})")]
    WheelStart { base: i64 },
    #[error("the clock is behind a user's events or its own newest event")]
    Clock,
    #[error("a due time {due} beyond the user's eviction (last event {last})")]
    DueTime { due: Millis, last: Millis },
    #[error("an open outcome refers to key {cell}, the clock record has {keys}")]
    OutcomeKey { cell: u32, keys: usize },
    #[error("a user's state holds a time outside the event-time range")]
    Time,
}

impl Engine {
    /// List changed users from now on (for [`Engine::drain_changes`]).
    pub fn track_changes(&mut self, on: bool) {
        self.track_changes = on;
    }

    pub(super) fn mark_changed(&mut self, idx: u32) {
        if self.track_changes {
            let m = &mut self.meta[idx as usize];
            if !m.dirty {
                m.dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    /// Users changed since the last drain (deletions first, then current states), each once.
    /// A user evicted and seen again since is only a current state.
    pub fn drain_changes(&mut self, mut f: impl FnMut(Change<'_>)) {
        for id in std::mem::take(&mut self.removed) {
            // Evicted and back since: only the new state is written (a reader that saw the
            // deletion but not the state after it would lose the user).
            if self.store.get(&id).is_none() {
                f(Change::Delete(&id));
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        // Index order walks the arenas sequentially.
        dirty.sort_unstable();
        for &idx in &dirty {
            let m = &mut self.meta[idx as usize];
            if !m.dirty {
                continue;
            }
            m.dirty = false;
            f(Change::Put(self.user_view(idx)));
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Changes waiting for [`Engine::drain_changes`] (an upper bound).
    pub fn pending_changes(&self) -> usize {
        self.dirty.len() + self.removed.len()
    }

    pub(super) fn user_view(&self, idx: u32) -> UserView<'_> {
        let u = self.store.user(idx);
        let m = &self.meta[idx as usize];
        UserView {
            user_id: self.store.user_id(idx),
            narrow: u.narrow,
            wide: u.wide,
            next_due: m.next_due,
            memory: m.memory,
            outcome: m.outcome,
        }
    }

    /// Every tracked user's state (for a full snapshot).
    pub fn for_each_user(&self, mut f: impl FnMut(UserView<'_>)) {
        let mut ids: Vec<u32> = self.store.indices().collect();
        ids.sort_unstable();
        for idx in ids {
            f(self.user_view(idx));
        }
    }

    /// The state of one user, if tracked.
    pub fn user_state(&self, user_id: &str) -> Option<UserView<'_>> {
        self.store.get(user_id).map(|i| self.user_view(i))
    }

    pub fn clock_state(&self) -> ClockState {
        ClockState {
            max_ts: self.max_ts,
            watermark: self.watermark,
            warm_until: self.warm_until,
            timer_base: self.timers.base(),
            outcome_base: self.outcome_timers.base(),
            outcome_keys: self
                .outcome_keys
                .iter()
                .map(|c| (c.control, c.tier.to_string(), c.action.to_string()))
                .collect(),
        }
    }

    /// Put a user's state back, replacing what is held for them. Call [`Engine::restore_clock`]
    /// once every user is in: it validates the records against each other.
    pub fn restore_user(&mut self, r: &UserView<'_>) -> Result<(), RestoreError> {
        let layout = self.store.layout();
        let (want_narrow, want_wide) = (layout.narrow_len(), layout.wide_len());
        // A state built from events holds event times only, and a due time after one: the
        // feature, lifecycle and timer arithmetic subtracts them and would overflow on others
        // (found by the restore fuzz target: a last event time near i64::MIN).
        let due_ok = r.next_due == NO_DUE || r.next_due >= crate::event::MIN_TS;
        if r.wide.len() == want_wide && !(layout.times_valid(r.wide) && due_ok) {
            return Err(RestoreError::Time);
        }
        let Some((idx, _)) = self.store.put(r.user_id, r.narrow, r.wide) else {
            return Err(RestoreError::Layout {
                got_narrow: r.narrow.len(),
                got_wide: r.wide.len(),
                want_narrow,
                want_wide,
            });
        };
        let i = idx as usize;
        if self.meta.len() <= i {
            self.meta.resize(i + 1, FRESH_META);
            self.meta_ahead.grew(&self.meta);
        }
        // Timers are pushed by `restore_clock`, in due order, once every user is in.
        self.meta[i] = super::UserMeta { next_due: r.next_due, memory: r.memory, outcome: r.outcome, ..FRESH_META };
        Ok(())
    }

    /// Forget a user whose deletion was recorded after their state.
    pub fn restore_delete(&mut self, user_id: &str) {
        if let Some(idx) = self.store.get(user_id) {
            self.store.evict(idx);
            self.population.remove(idx);
            self.meta[idx as usize] = FRESH_META;
        }
    }

    /// Set the clock and outcome keys after the users are restored, check that every open
    /// outcome names a known key, and rebuild the population figures.
    pub fn restore_clock(&mut self, c: &ClockState) -> Result<(), RestoreError> {
        self.restore_clock_behind(c, c.max_ts)
    }

    /// As [`Engine::restore_clock`], for a clock older than some users' states: their events up
    /// to `newest` are already applied (a flush cut short, see crate::state::changelog).
    pub fn restore_clock_behind(&mut self, c: &ClockState, newest: Millis) -> Result<(), RestoreError> {
        let keys = c.outcome_keys.len();
        let ttl = self.cfg.state_ttl.ms();
        // A due time is never later than the user's eviction (a day later on the daily grid) and
        // an outcome's no later than a horizon after that: a record that says otherwise is
        // corrupt, and would make the timer wheels span years.
        let latest_due = |last: Millis| last.saturating_add(ttl).saturating_add(super::DAY_MS);
        let live = self.live_in_index_order();
        let mut due = Vec::with_capacity(live.len());
        let mut outcome_due = Vec::new();
        for &idx in &live {
            let m = &self.meta[idx as usize];
            let last = self.store.user(idx).last_ts();
            let o = &m.outcome;
            if o.due != NO_DUE && o.cell as usize >= keys {
                return Err(RestoreError::OutcomeKey { cell: o.cell, keys });
            }
            if last > c.max_ts.max(newest) {
                return Err(RestoreError::Clock);
            }
            if m.next_due != NO_DUE {
                if m.next_due > latest_due(last) {
                    return Err(RestoreError::DueTime { due: m.next_due, last });
                }
                due.push((m.next_due, idx));
            }
            if o.due != NO_DUE {
                if o.due > latest_due(last).saturating_add(self.cfg.outcome_horizon.ms()) {
                    return Err(RestoreError::DueTime { due: o.due, last });
                }
                outcome_due.push((o.due, idx));
            }
        }
        due.sort_unstable();
        outcome_due.sort_unstable();
        // A wheel's entries sit in their due time's bucket, or in its first undrained bucket if
        // that is later: the restored wheels start where the original ones were, so they drain
        // on the same clock ticks. A start far before the watermark is legitimate (a catch-up
        // after a clock jump pushes due times long past), but not by more than a bound: beyond
        // it the record is corrupt, and the wheel would span centuries.
        const MAX_BUCKETS_BEHIND: i64 = 1 << 20;
        for (base, wheel, entries) in
            [(c.timer_base, &self.timers, &due), (c.outcome_base, &self.outcome_timers, &outcome_due)]
        {
            let floor = wheel.bucket_of(c.watermark).saturating_sub(MAX_BUCKETS_BEHIND);
            // No bucket is past that of the last representable time: a larger start would
            // overflow `TimerWheel::push`'s offset arithmetic for an early due time.
            if base != Millis::MIN
                && (c.watermark == Millis::MIN || base < floor || base > wheel.bucket_of(Millis::MAX))
            {
                return Err(RestoreError::WheelStart { base });
            }
            // Due times with no start: legitimate when users already at a newer flush come with
            // the clock of the flush before it, which had scheduled nothing yet (a flush cut
            // short). The earliest due time then starts the wheel and the latest ends it, one
            // bucket each between: bounded here, or hostile records would allocate without
            // bound (found by the restore fuzz target).
            if base == Millis::MIN {
                if let (Some(&(first, _)), Some(&(last, _))) = (entries.first(), entries.last()) {
                    // Such users' due times lie within their TTL (plus a horizon) of events no
                    // older than the TTL before the clock and no newer than `newest`.
                    let span = newest
                        .max(c.max_ts)
                        .saturating_sub(c.watermark.max(newest.saturating_sub(ttl)))
                        .saturating_add(2 * ttl)
                        .saturating_add(self.cfg.outcome_horizon.ms())
                        .saturating_add(2 * super::DAY_MS);
                    if last.saturating_sub(first) > span
                        || wheel.bucket_of(last).saturating_sub(wheel.bucket_of(first)) > MAX_BUCKETS_BEHIND
                    {
                        return Err(RestoreError::WheelStart { base });
                    }
                }
            }
        }
        if c.max_ts != Millis::MIN && c.watermark < c.max_ts.saturating_sub(self.cfg.allowed_lateness.ms()) {
            return Err(RestoreError::Clock);
        }
        if c.timer_base != Millis::MIN {
            self.timers.set_base(c.timer_base, c.watermark);
        }
        if c.outcome_base != Millis::MIN {
            self.outcome_timers.set_base(c.outcome_base, c.watermark);
        }
        for (d, idx) in due {
            self.timers.push(d, idx);
        }
        for (d, idx) in outcome_due {
            self.outcome_timers.push(d, idx);
        }
        self.max_ts = c.max_ts;
        self.watermark = c.watermark;
        self.warm_until = c.warm_until;
        self.outcome_keys = c
            .outcome_keys
            .iter()
            .map(|(control, tier, action)| OutcomeCell {
                control: *control,
                tier: tier.as_str().into(),
                action: action.as_str().into(),
                retained: 0,
                churned: 0,
                spend: 0.0,
            })
            .collect();
        // Counters describe this run's work; restored decisions were counted by their owner.
        self.counters = Default::default();
        for idx in live {
            self.population.update(idx, self.store.user(idx));
        }
        Ok(())
    }

    /// Every tracked user's index, ascending: walking the arenas and metadata front to back
    /// instead of in the user table's (hash) order saves a cache miss or two per user. A
    /// restore into a fresh engine has no free slot, and then the indices are simply 0..len.
    fn live_in_index_order(&self) -> Vec<u32> {
        if self.store.len() == self.store.capacity_index() {
            return (0..self.store.len() as u32).collect();
        }
        let mut ids: Vec<u32> = self.store.indices().collect();
        ids.sort_unstable();
        ids
    }

    /// Move the clock as an event at `ts` would, without applying it to anyone: for an event
    /// whose user's restored state already includes it (see crate::state::changelog).
    pub fn observe_time(&mut self, ts: Millis, emit: &mut dyn FnMut(&Decision<'_>)) {
        if ts < self.watermark {
            return;
        }
        self.start_clock(ts, emit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::features::FeatureSpec;
    use crate::model::artifact::{ModelArtifact, TierThreshold};
    use crate::policy::PolicyConfig;
    use crate::time::HOUR_MS;

    const T0: Millis = 1_767_225_600_000;

    fn engine() -> Engine {
        let tiers = vec![TierThreshold { name: "high".into(), min_score: 0.8 }];
        let model = ModelArtifact::from_weights(FeatureSpec::default(), "persist-1", &[("recency", 1.0)], -2.0, tiers)
            .expect("model");
        Engine::new(&model, PolicyConfig::default(), EngineConfig::default())
    }

    /// A user last seen at `last`, due for a rescore at `due`.
    fn try_user(e: &mut Engine, id: &str, last: Millis, due: Millis) -> Result<(), RestoreError> {
        let layout = e.store().layout();
        let mut wide = vec![i64::MIN as u64; layout.wide_len()];
        wide[0] = last.min(T0) as u64;
        wide[1] = last as u64;
        wide[2] = 0;
        let narrow = vec![0; layout.narrow_len()];
        let view = UserView {
            user_id: id,
            narrow: &narrow,
            wide: &wide,
            next_due: due,
            memory: Memory::NONE,
            outcome: NO_OUTCOME,
        };
        e.restore_user(&view)
    }

    fn user(e: &mut Engine, id: &str, last: Millis, due: Millis) {
        try_user(e, id, last, due).expect("user restores");
    }

    #[test]
    fn times_outside_the_event_range_are_refused() {
        // Found by the restore fuzz target: a last event time near i64::MIN overflowed the
        // lifecycle stage's `at - last` once the clock was restored.
        let mut e = engine();
        assert_eq!(try_user(&mut e, "early", i64::MIN + 5, NO_DUE), Err(RestoreError::Time));
        assert_eq!(try_user(&mut e, "late", crate::event::MAX_TS, NO_DUE), Err(RestoreError::Time));
        assert_eq!(try_user(&mut e, "due", T0, i64::MIN + 5), Err(RestoreError::Time));
        assert_eq!(e.store().len(), 0, "a refused record changes nothing");
        assert_eq!(try_user(&mut e, "ok", T0, T0 + HOUR_MS), Ok(()));
    }

    fn clock(timer_base: i64) -> ClockState {
        ClockState { max_ts: T0, watermark: T0 - HOUR_MS, timer_base, ..ClockState::default() }
    }

    #[test]
    fn due_times_without_a_wheel_start_are_refused() {
        // Found by the restore fuzz target: due times centuries apart with no wheel start made
        // the wheel allocate a bucket per hour between them (805 MB). Due times before 1970 are
        // now refused with the user, but 1970 and 2026 would still be 490,000 buckets apart.
        let mut e = engine();
        user(&mut e, "old", T0, crate::event::MIN_TS);
        user(&mut e, "now", T0, T0 + HOUR_MS);
        assert_eq!(e.restore_clock(&clock(Millis::MIN)), Err(RestoreError::WheelStart { base: Millis::MIN }));
    }

    #[test]
    fn a_wheel_start_past_every_time_is_refused() {
        let mut e = engine();
        user(&mut e, "u", T0, T0 + HOUR_MS);
        assert_eq!(e.restore_clock(&clock(i64::MAX)), Err(RestoreError::WheelStart { base: i64::MAX }));
    }

    #[test]
    fn a_start_with_due_times_restores() {
        let mut e = engine();
        user(&mut e, "u", T0, T0 + HOUR_MS);
        let base = e.timers.bucket_of(T0);
        assert_eq!(e.restore_clock(&clock(base)), Ok(()));
        assert_eq!(e.clock_state().timer_base, base);
    }
}
