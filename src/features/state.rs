//! Per-user feature state in a compact, fixed-size layout, and the feature vector read from it.
//!
//! A user's state is two fixed-length slices: `narrow` u32 cells (window slots, lifetime counts,
//! the activity-day bitmap) and `wide` u64 cells (timestamps and the lifetime amount). The
//! [`Layout`] is derived once from a [`FeatureSpec`]; the store keeps all users' slices in two
//! arenas, so an update touches no allocator and the bytes per user are exact.

use super::spec::FeatureSpec;
use super::window::{DayBitmap, Ring};
use crate::time::{Millis, DAY_MS};

/// A `last_by_type` value meaning "never seen".
pub(super) const NEVER: u64 = i64::MIN as u64;

const W_FIRST_TS: usize = 0;
const W_LAST_TS: usize = 1;
pub(super) const W_LIFETIME_AMOUNT: usize = 2;
const W_RETURNED_AT: usize = 3;
pub(super) const W_LAST_BY_TYPE: usize = 4;

/// What applying an event did to a user's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event is the user's newest (or ties it).
    Newest,
    /// The event is older than the user's newest; it was applied wherever it still falls inside
    /// a window.
    OutOfOrder,
}

/// Offsets of everything inside one user's state, derived from a spec.
#[derive(Debug, Clone)]
pub struct Layout {
    pub(super) spec: FeatureSpec,
    pub(super) rings: Vec<Ring>,
    pub(super) days: DayBitmap,
    pub(super) n_types: usize,
    pub(super) lifetime_off: usize,
    narrow_len: usize,
    wide_len: usize,
    n_features: usize,
    pub(super) window_days: Vec<Option<i64>>,
    pub(super) recency_cap_days: f64,
    /// A silence at least this long before an event marks the user as returned (reactivated).
    return_gap_ms: Millis,
}

/// Read-only view of one user's state.
#[derive(Clone, Copy)]
pub struct UserRef<'a> {
    pub narrow: &'a [u32],
    pub wide: &'a [u64],
}

/// Mutable view of one user's state.
pub struct UserMut<'a> {
    pub narrow: &'a mut [u32],
    pub wide: &'a mut [u64],
}

impl Layout {
    /// `return_gap_ms`: the silence after which a new event counts as a return (see
    /// [`UserRef::returned_at`]); the lifecycle policy reads it.
    pub fn new(spec: &FeatureSpec, return_gap_ms: Millis) -> Layout {
        let n_types = spec.n_types();
        let mut off = 0;
        let rings: Vec<Ring> = spec
            .windows
            .iter()
            .map(|w| {
                let r = Ring::new(w.ms(), spec.slots_per_window, n_types, off);
                off += r.len();
                r
            })
            .collect();
        let lifetime_off = off;
        off += n_types;
        // One more bit than the longest day window: the current (incomplete) day.
        let max_days = spec.max_active_days();
        let days = DayBitmap::new(if max_days > 0 { max_days + 1 } else { 0 }, off);
        off += days.len();
        let window_days = spec.windows.iter().map(|w| (w.ms() % DAY_MS == 0).then_some(w.ms() / DAY_MS)).collect();
        Layout {
            n_features: spec.features().len(),
            spec: spec.clone(),
            rings,
            days,
            n_types,
            lifetime_off,
            narrow_len: off,
            wide_len: W_LAST_BY_TYPE + spec.event_types.len(),
            window_days,
            recency_cap_days: spec.recency_cap_days(),
            return_gap_ms,
        }
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    pub fn narrow_len(&self) -> usize {
        self.narrow_len
    }

    pub fn wide_len(&self) -> usize {
        self.wide_len
    }

    /// Bytes of window state per user (both slices).
    pub fn state_bytes(&self) -> usize {
        self.narrow_len * 4 + self.wide_len * 8
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Whether every time in a user's `wide` cells is an event time [`crate::event::parse_event`]
    /// accepts (`MIN_TS..MAX_TS`), or "never" in the cells that may hold it, as every state
    /// built from events is. For state read from outside (a restore): the feature and lifecycle
    /// arithmetic subtracts these times, which cannot overflow then.
    pub fn times_valid(&self, wide: &[u64]) -> bool {
        use crate::event::{MAX_TS, MIN_TS};
        let event_time = |v: u64| (MIN_TS..MAX_TS).contains(&(v as i64));
        wide.len() == self.wide_len
            && wide.iter().enumerate().all(|(i, &v)| match i {
                W_FIRST_TS | W_LAST_TS => event_time(v),
                W_LIFETIME_AMOUNT => true,
                _ => v == NEVER || event_time(v),
            })
    }

    /// Reset a slot for a user whose first event is at `ts`.
    pub fn init(&self, u: UserMut<'_>, ts: Millis) {
        u.narrow.fill(0);
        u.wide.fill(NEVER);
        u.wide[W_FIRST_TS] = ts as u64;
        u.wide[W_LAST_TS] = ts as u64;
        u.wide[W_LIFETIME_AMOUNT] = 0;
    }

    /// Apply one event. `type_idx` comes from [`FeatureSpec::type_index`].
    #[inline]
    pub fn apply(&self, u: UserMut<'_>, ts: Millis, type_idx: usize, amount: f64) -> Applied {
        let (narrow, wide) = (u.narrow, u.wide);
        let last = wide[W_LAST_TS] as i64;
        let cents = amount_to_cents(amount);
        let cents32 = cents.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        // Amounts are summed as whole cents in integers: exact, so any arrival order gives the
        // same state.
        for r in &self.rings {
            r.record(narrow, last, ts, type_idx, cents32);
        }
        let applied = if ts >= last {
            if ts > last {
                self.days.advance(narrow, last, ts);
                if ts - last >= self.return_gap_ms {
                    wide[W_RETURNED_AT] = ts as u64;
                }
                wide[W_LAST_TS] = ts as u64;
            }
            Applied::Newest
        } else {
            if ts < wide[W_FIRST_TS] as i64 {
                wide[W_FIRST_TS] = ts as u64;
            }
            Applied::OutOfOrder
        };
        let head = wide[W_LAST_TS] as i64;
        let lt = &mut narrow[self.lifetime_off + type_idx];
        *lt = lt.saturating_add(1);
        self.days.mark(narrow, head, ts);
        if cents != 0 {
            wide[W_LIFETIME_AMOUNT] = (wide[W_LIFETIME_AMOUNT] as i64).saturating_add(cents) as u64;
        }
        if let Some(slot) = wide.get_mut(W_LAST_BY_TYPE + type_idx) {
            if *slot == NEVER || (*slot as i64) < ts {
                *slot = ts as u64;
            }
        }
        applied
    }

    /// Write the feature vector at time `at` into `out` (length [`Layout::n_features`]), in the
    /// order of [`FeatureSpec::features`]. `at` earlier than the user's newest event is read as
    /// that event's time: a vector never looks back before data it already holds.
    pub fn vector_at(&self, u: UserRef<'_>, at: Millis, out: &mut [f64]) {
        let head = u.last_ts();
        let at = at.max(head);
        let a = &self.spec.aggregates;
        // Per-window totals, gathered once: counts per type (summed exactly), then amount. The
        // counts are the vector's first features, window after window, and go there directly
        // (a table of every window's counts would be zeroed per call: 1 KB at the limits).
        let nw = self.rings.len();
        let nt = self.n_types;
        let mut amounts = [0i64; super::MAX_WINDOWS];
        let mut all_events = [0f64; super::MAX_WINDOWS];
        for (w, r) in self.rings.iter().enumerate() {
            let mut acc = [0u64; super::MAX_TYPES.div_ceil(2)];
            let mut amount = 0i64;
            r.for_each_in_window(u.narrow, head, at, |cells| {
                r.add_counts(&mut acc, cells);
                amount += r.amount(cells);
            });
            let mut counts = [0u32; super::MAX_TYPES];
            r.split_counts(&acc, &mut counts);
            amounts[w] = amount;
            all_events[w] = counts[..nt].iter().map(|c| f64::from(*c)).sum();
            if a.counts {
                for (o, c) in out[w * nt..(w + 1) * nt].iter_mut().zip(&counts) {
                    *o = f64::from(*c);
                }
            }
        }
        let mut i = if a.counts { nw * nt } else { 0 };
        let mut put = |v: f64| {
            out[i] = v;
            i += 1;
        };
        if a.amount_sum {
            for v in &amounts[..nw] {
                put(*v as f64 / 100.0);
            }
        }
        if a.active_days {
            for wd in self.window_days.iter().flatten() {
                put(f64::from(self.days.count(u.narrow, head, at, *wd)));
            }
        }
        let days_since = |ts: Millis| (at - ts) as f64 / DAY_MS as f64;
        if a.recency {
            // Capped at the tenure, recency is the plain silence (never longer than the tenure).
            let cap = if a.recency_to_tenure { days_since(u.first_ts()) } else { self.recency_cap_days };
            put(days_since(head).min(cap));
            for j in 0..self.spec.event_types.len() {
                let last = u.wide[W_LAST_BY_TYPE + j];
                put(if last == NEVER { cap } else { days_since(last as i64).min(cap) });
            }
        }
        if a.tenure {
            put(days_since(u.first_ts()));
        }
        if a.lifetime {
            for c in &u.narrow[self.lifetime_off..self.lifetime_off + self.n_types] {
                put(f64::from(*c));
            }
            put(u.wide[W_LIFETIME_AMOUNT] as i64 as f64 / 100.0);
        }
        if a.trends {
            for w in 1..nw {
                let (short, long) = (all_events[w - 1], all_events[w]);
                let scale = self.spec.windows[w].ms() as f64 / self.spec.windows[w - 1].ms() as f64;
                put(trend_ratio(short, long, scale));
            }
        }
        if a.rhythm {
            // Active days held in the bitmap: the last active day (the head's) and up to the
            // longest day window before it. With fewer than two, the gaps read as that span.
            let (n, second, farthest) = self.days.spread(u.narrow);
            let span = self.days.days() as f64;
            let mean_gap = match farthest {
                Some(f) if n >= 2 => f as f64 / f64::from(n - 1),
                _ => span,
            };
            put(mean_gap);
            put(second.map_or(span, |s| s as f64));
            put(days_since(head) / mean_gap);
        }
        debug_assert_eq!(i, self.n_features);
    }

    /// Event types counted: the spec's, plus one for every other type.
    pub fn n_types(&self) -> usize {
        self.n_types
    }

    /// The windows' slots, at the start of the narrow cells, ring after ring.
    pub fn rings(&self) -> &[Ring] {
        &self.rings
    }
}

/// An amount in whole cents (saturating; NaN reads as 0).
pub fn amount_to_cents(amount: f64) -> i64 {
    (amount * 100.0).round() as i64
}

/// The short window's rate over the long window's, both add-one smoothed so that silence reads
/// as 1 (no change) rather than 0/0.
pub fn trend_ratio(short_count: f64, long_count: f64, long_over_short: f64) -> f64 {
    (short_count * long_over_short + 1.0) / (long_count + 1.0)
}

impl<'a> UserRef<'a> {
    pub fn last_ts(&self) -> Millis {
        self.wide[W_LAST_TS] as i64
    }
    pub fn first_ts(&self) -> Millis {
        self.wide[W_FIRST_TS] as i64
    }
    /// When the user last came back after a long silence, if ever.
    pub fn returned_at(&self) -> Option<Millis> {
        let v = self.wide[W_RETURNED_AT];
        (v != NEVER).then_some(v as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_slots_sum_exactly_and_odd_times_are_invalid() {
        let spec = FeatureSpec::default();
        let layout = Layout::new(&spec, 30 * DAY_MS);
        let (mut narrow, mut wide) = (vec![0u32; layout.narrow_len()], vec![0u64; layout.wide_len()]);
        let t0 = 1_767_225_600_000;
        layout.init(UserMut { narrow: &mut narrow, wide: &mut wide }, t0);
        // Every slot of the first window full for the first type (and, restored from outside,
        // with every other bit of the word set too): the window sums that type's halves alone.
        let ring = &layout.rings[0];
        let k = ring.len() / ring.slot_cells();
        for slot in 0..k {
            narrow[slot * ring.slot_cells()] = u32::MAX;
        }
        let mut out = vec![0.0; layout.n_features()];
        layout.vector_at(UserRef { narrow: &narrow, wide: &wide }, t0, &mut out);
        assert_eq!(out[0], f64::from(super::super::window::SLOT_COUNT_MAX) * k as f64, "type 0, first window");
        assert_eq!(out[1], out[0], "type 1 shares the words, in the upper halves");
        assert_eq!(out[2], 0.0);
        assert!(layout.times_valid(&wide));
        wide[W_LAST_TS] = (i64::MIN + 5) as u64;
        assert!(!layout.times_valid(&wide));
    }

    #[test]
    fn a_slot_takes_two_counts_per_word() {
        // 9 types (8 named and "other"): 5 count words and an amount per slot, against 10 cells
        // when counts were a word each.
        let spec = FeatureSpec { event_types: (0..8).map(|i| format!("t{i}")).collect(), ..FeatureSpec::default() };
        let layout = Layout::new(&spec, 30 * DAY_MS);
        assert!(layout.rings().iter().all(|r| r.slot_cells() == 6));
        let rings = spec.windows.len() * spec.slots_per_window as usize * 6;
        assert_eq!(layout.narrow_len(), rings + 9 + (spec.max_active_days() + 1).div_ceil(32));
    }
}
