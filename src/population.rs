//! Lifecycle, activity and retention figures of an engine's users, kept incrementally.
//!
//! A user's contribution (their stage, whether they count as active in each window, whether they
//! are in each retention cohort and retained) is a function of their first, last and return
//! times and of the clock. It changes only when they have an event or when the clock reaches one
//! of a few instants fixed by those times (`last + dormant_after`, `first + 7d`, ...). So each
//! user's contribution is kept with the totals, and scheduled on a timer wheel for the next
//! instant it can change. An event only records the user's new times: their contribution is
//! recomputed when the figures are next read, once however many events they had since, as it
//! depends on nothing else. Reading the figures drains what is due: no scan over the users.

use crate::features::UserRef;
use crate::policy::LifecycleConfig;
use crate::time::{Millis, DAY_MS};
use crate::timers::TimerWheel;

/// Windows of the active-user counts (DAU, WAU, MAU), in days.
pub const ACTIVE_WINDOWS_DAYS: [i64; 3] = [1, 7, 30];
/// Day-N retention horizons, in days.
pub const RETENTION_DAYS: [i64; 3] = [1, 7, 30];

/// Figures over the tracked population at one moment of event time.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Population {
    pub stages: [u64; 5],
    /// Users with an event in the last 1, 7 and 30 days of event time.
    pub active: [u64; 3],
    /// New users first seen within the cohort span whose day 1, 7, 30 has passed...
    pub cohort: [u64; 3],
    /// ...and of those, the ones with an event on or after that day.
    pub retained: [u64; 3],
}

/// What one user adds to the figures at a moment.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Contribution {
    present: bool,
    stage: u8,
    active: [bool; 3],
    cohort: [bool; 3],
    retained: [bool; 3],
}

/// The times that define a user's contribution.
#[derive(Debug, Clone, Copy)]
struct Times {
    first: Millis,
    last: Millis,
    returned: Option<Millis>,
    /// Changed since the contribution was computed (the user is listed in `stale`).
    stale: bool,
}

impl Times {
    fn of(u: UserRef<'_>) -> Times {
        Times { first: u.first_ts(), last: u.last_ts(), returned: u.returned_at(), stale: true }
    }
}

const NONE: Millis = Millis::MAX;

pub struct PopulationIndex {
    lifecycle: LifecycleConfig,
    /// Cohorts reach back no further than this (so every member is still tracked).
    cohort_span: Millis,
    contrib: Vec<Contribution>,
    times: Vec<Times>,
    next: Vec<Millis>,
    wheel: TimerWheel,
    totals: Population,
    scratch: Vec<(Millis, u32)>,
    /// Users whose times changed since the figures were last read; an entry whose `stale` flag
    /// is off (the user was removed, or is listed twice) is skipped.
    stale: Vec<u32>,
}

impl PopulationIndex {
    pub fn new(lifecycle: LifecycleConfig, cohort_span: Millis) -> PopulationIndex {
        PopulationIndex {
            lifecycle,
            cohort_span,
            contrib: Vec::new(),
            times: Vec::new(),
            next: Vec::new(),
            wheel: TimerWheel::new(crate::time::HOUR_MS),
            totals: Population::default(),
            scratch: Vec::new(),
            stale: Vec::new(),
        }
    }

    fn contribution(&self, t: Times, at: Millis) -> Contribution {
        let stage = self.lifecycle.stage_of(t.first, t.last, t.returned, at);
        let mut c = Contribution { present: true, stage: stage as u8, ..Contribution::default() };
        for (i, days) in ACTIVE_WINDOWS_DAYS.iter().enumerate() {
            c.active[i] = at - t.last < days * DAY_MS;
        }
        for (i, days) in RETENTION_DAYS.iter().enumerate() {
            let n = days * DAY_MS;
            c.cohort[i] = t.first <= at - n && t.first > at - self.cohort_span;
            c.retained[i] = c.cohort[i] && t.last >= t.first + n;
        }
        c
    }

    /// The first instant after `at` at which the contribution can change.
    fn next_change(&self, t: Times, at: Millis) -> Millis {
        let l = &self.lifecycle;
        let mut candidates = [NONE; 12];
        candidates[0] = t.first.saturating_add(l.new_for.ms());
        candidates[1] = t.last.saturating_add(l.dormant_after.ms());
        candidates[2] = t.last.saturating_add(l.churned_after.ms());
        candidates[3] = t.returned.map_or(NONE, |r| r.saturating_add(l.reactivated_for.ms()));
        for (i, days) in ACTIVE_WINDOWS_DAYS.iter().enumerate() {
            candidates[4 + i] = t.last.saturating_add(days * DAY_MS);
        }
        for (i, days) in RETENTION_DAYS.iter().enumerate() {
            candidates[7 + i] = t.first.saturating_add(days * DAY_MS);
        }
        candidates[10] = t.first.saturating_add(self.cohort_span);
        candidates.iter().copied().filter(|&c| c > at).min().unwrap_or(NONE)
    }

    fn apply(&mut self, c: Contribution, sign: i64) {
        if !c.present {
            return;
        }
        let add = |v: &mut u64| *v = (*v as i64 + sign) as u64;
        add(&mut self.totals.stages[c.stage as usize]);
        for i in 0..3 {
            if c.active[i] {
                add(&mut self.totals.active[i]);
            }
            if c.cohort[i] {
                add(&mut self.totals.cohort[i]);
            }
            if c.retained[i] {
                add(&mut self.totals.retained[i]);
            }
        }
    }

    fn ensure(&mut self, idx: usize) {
        if self.contrib.len() <= idx {
            self.contrib.resize(idx + 1, Contribution::default());
            self.times.resize(idx + 1, Times { first: 0, last: 0, returned: None, stale: false });
            self.next.resize(idx + 1, NONE);
        }
    }

    /// Ask the CPU for the record [`PopulationIndex::update`] will write ([`crate::features::prefetch`]).
    #[inline]
    pub fn prefetch(&self, idx: u32) {
        if let Some(t) = self.times.get(idx as usize) {
            crate::features::prefetch::one(t);
        }
    }

    /// The user's state changed (an event). Their contribution is recomputed at the next read.
    pub fn update(&mut self, idx: u32, u: UserRef<'_>) {
        let i = idx as usize;
        self.ensure(i);
        if !self.times[i].stale {
            self.stale.push(idx);
        }
        self.times[i] = Times::of(u);
    }

    fn recompute(&mut self, idx: u32, at: Millis) {
        let i = idx as usize;
        self.times[i].stale = false;
        let t = self.times[i];
        let c = self.contribution(t, at);
        self.apply(self.contrib[i], -1);
        self.apply(c, 1);
        self.contrib[i] = c;
        let next = self.next_change(t, at);
        let had = self.next[i];
        self.next[i] = next;
        // One wheel entry per bucket: an entry checks the real time when drained.
        if next != NONE && (had == NONE || self.wheel.bucket_of(had) != self.wheel.bucket_of(next)) {
            self.wheel.push(next, idx);
        }
    }

    /// The user is no longer tracked.
    pub fn remove(&mut self, idx: u32) {
        let i = idx as usize;
        if i < self.contrib.len() {
            self.apply(self.contrib[i], -1);
            self.contrib[i] = Contribution::default();
            self.next[i] = NONE;
            self.times[i].stale = false;
        }
    }

    /// The figures at `at` (which never goes back). Recomputes only the users whose contribution
    /// can have changed since they were last seen: those with an event since, and those due on
    /// the wheel.
    pub fn at(&mut self, at: Millis) -> &Population {
        let mut due = std::mem::take(&mut self.scratch);
        let next = &self.next;
        self.wheel.drain_until(at, |_, ids| {
            for &id in ids {
                let n = next[id as usize];
                if n != NONE && n <= at {
                    due.push((n, id));
                }
            }
        });
        // The bucket the clock is in is not complete: its entries due by now count too.
        for &id in self.wheel.front() {
            let n = next[id as usize];
            if n != NONE && n <= at {
                due.push((n, id));
            }
        }
        for id in self.stale.drain(..) {
            if self.times[id as usize].stale {
                due.push((at, id));
            }
        }
        due.sort_unstable_by_key(|&(_, id)| id);
        due.dedup_by_key(|&mut (_, id)| id);
        for &(_, id) in &due {
            let i = id as usize;
            if self.times[i].stale || self.next[i] <= at {
                self.recompute(id, at);
            }
        }
        due.clear();
        self.scratch = due;
        &self.totals
    }
}
