//! Bounds on a silent user's feature vector over a span of event time.
//!
//! Between two of a user's events their state is frozen, so each feature is a known function of
//! the query time `t` (see [`Layout::vector_at`]):
//! - window counts (and so the per-window event totals) only fall as slots leave the window;
//! - window amounts are sums over the newest slots, a suffix of the slots held at the start;
//! - recency, tenure and `rhythm.overdue` only grow; lifetime values and the rest of `rhythm`
//!   are constant;
//! - `active_days` may rise once, when `t` leaves the head's own day, and only falls after that;
//! - a trend is a ratio of two falling totals, bounded by their extremes.
//!
//! [`Layout::vector_bounds`] turns that into `lo[i] <= vector_at(t)[i] <= hi[i]` for every `t` in
//! `[a, b]`, computed with the same floating-point operations as `vector_at`, so the bounds hold
//! for the computed values and not only for the real-valued ones. The engine feeds them to
//! [`crate::model::Scorer::logit_upper`] to prove that a silent user stays below every tier.

use super::state::{trend_ratio, Layout, UserRef, NEVER, W_LAST_BY_TYPE};
use crate::time::{day_of, Millis, DAY_MS};

impl Layout {
    /// Per-feature bounds of [`Layout::vector_at`] over every query time in `[a, b]`, for a
    /// user whose state does not change in between (`lo` and `hi` have length
    /// [`Layout::n_features`]). Times before the user's newest event read as that event's time,
    /// as in `vector_at`.
    pub fn vector_bounds(&self, u: UserRef<'_>, a: Millis, b: Millis, lo: &mut [f64], hi: &mut [f64]) {
        let head = u.last_ts();
        let a = a.max(head);
        let b = b.max(a);
        let spec = &self.spec;
        let ag = &spec.aggregates;
        let nw = self.rings.len();
        let nt = self.n_types;
        // Per window: counts per type at both ends (they only fall), and the range of the
        // amount over the suffixes of the slots held at `a` that the window passes through. The
        // counts are the first features, window after window, and are written there directly.
        let mut amount_range = [(0i64, 0i64); super::MAX_WINDOWS];
        let mut total_a = [0f64; super::MAX_WINDOWS];
        let mut total_b = [0f64; super::MAX_WINDOWS];
        for (w, r) in self.rings.iter().enumerate() {
            let (held_a, held_b) = (r.slots_in_window(head, a), r.slots_in_window(head, b));
            let mut slot = 0i64;
            let mut amount_a = 0i64;
            let mut acc_a = [0u64; super::MAX_TYPES.div_ceil(2)];
            let mut acc_b = [0u64; super::MAX_TYPES.div_ceil(2)];
            // The amount at a time in [a, b] is the total less the oldest `d` slots, for some d
            // in 0..=held_a-held_b: its range is the total less the range of those prefix sums.
            let (mut dropped, mut least_dropped, mut most_dropped) = (0i64, 0i64, 0i64);
            r.for_each_in_window(u.narrow, head, a, |cells| {
                let amount = r.amount(cells);
                amount_a += amount;
                r.add_counts(&mut acc_a, cells);
                // The window at `b` keeps the newest `held_b` of these slots.
                if slot >= held_a - held_b {
                    r.add_counts(&mut acc_b, cells);
                } else {
                    dropped += amount;
                    least_dropped = least_dropped.min(dropped);
                    most_dropped = most_dropped.max(dropped);
                }
                slot += 1;
            });
            let (mut counts_a, mut counts_b) = ([0u32; super::MAX_TYPES], [0u32; super::MAX_TYPES]);
            r.split_counts(&acc_a, &mut counts_a);
            r.split_counts(&acc_b, &mut counts_b);
            if ag.counts {
                let (l, h) = (&mut lo[w * nt..(w + 1) * nt], &mut hi[w * nt..(w + 1) * nt]);
                for t in 0..nt {
                    (l[t], h[t]) = (f64::from(counts_b[t]), f64::from(counts_a[t]));
                }
            }
            amount_range[w] = (amount_a - most_dropped, amount_a - least_dropped);
            total_a[w] = counts_a[..nt].iter().map(|c| f64::from(*c)).sum();
            total_b[w] = counts_b[..nt].iter().map(|c| f64::from(*c)).sum();
        }
        let mut i = if ag.counts { nw * nt } else { 0 };
        let mut put = |l: f64, h: f64| {
            lo[i] = l;
            hi[i] = h;
            i += 1;
        };
        if ag.amount_sum {
            for (min, max) in &amount_range[..nw] {
                put(*min as f64 / 100.0, *max as f64 / 100.0);
            }
        }
        if ag.active_days {
            // Falling from the day after the head's on; the head's own day may read lower.
            let next_day = (day_of(head) + 1) * DAY_MS;
            for wd in self.window_days.iter().flatten() {
                let (ca, cb) = (self.days.count(u.narrow, head, a, *wd), self.days.count(u.narrow, head, b, *wd));
                let peak =
                    if a < next_day && next_day <= b { self.days.count(u.narrow, head, next_day, *wd) } else { 0 };
                put(f64::from(ca.min(cb)), f64::from(ca.max(peak)));
            }
        }
        let days_since = |at: Millis, ts: Millis| (at - ts) as f64 / DAY_MS as f64;
        if ag.recency {
            // Every recency is a minimum of non-decreasing functions of the query time.
            let cap =
                |at: Millis| if ag.recency_to_tenure { days_since(at, u.first_ts()) } else { self.recency_cap_days };
            put(days_since(a, head).min(cap(a)), days_since(b, head).min(cap(b)));
            for j in 0..spec.event_types.len() {
                let last = u.wide[W_LAST_BY_TYPE + j];
                let at = |t: Millis| if last == NEVER { cap(t) } else { days_since(t, last as i64).min(cap(t)) };
                put(at(a), at(b));
            }
        }
        if ag.tenure {
            put(days_since(a, u.first_ts()), days_since(b, u.first_ts()));
        }
        if ag.lifetime {
            for c in &u.narrow[self.lifetime_off..self.lifetime_off + nt] {
                put(f64::from(*c), f64::from(*c));
            }
            let amount = u.wide[super::state::W_LIFETIME_AMOUNT] as i64 as f64 / 100.0;
            put(amount, amount);
        }
        if ag.trends {
            // Rising in the short window's total, falling in the long one's.
            for w in 1..nw {
                let scale = spec.windows[w].ms() as f64 / spec.windows[w - 1].ms() as f64;
                put(trend_ratio(total_b[w - 1], total_a[w], scale), trend_ratio(total_a[w - 1], total_b[w], scale));
            }
        }
        if ag.rhythm {
            let (n, second, farthest) = self.days.spread(u.narrow);
            let span = self.days.days() as f64;
            let mean_gap = match farthest {
                Some(f) if n >= 2 => f as f64 / f64::from(n - 1),
                _ => span,
            };
            put(mean_gap, mean_gap);
            let last_gap = second.map_or(span, |s| s as f64);
            put(last_gap, last_gap);
            if mean_gap > 0.0 {
                put(days_since(a, head) / mean_gap, days_since(b, head) / mean_gap);
            } else {
                put(f64::NEG_INFINITY, f64::INFINITY);
            }
        }
        debug_assert_eq!(i, self.n_features());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{FeatureSpec, FeatureStore};
    use crate::time::{Span, HOUR_MS};
    use proptest::prelude::*;

    const T0: Millis = 1_767_225_600_000;

    fn spec(variant: u8) -> FeatureSpec {
        let mut s = FeatureSpec::default();
        match variant % 3 {
            0 => {}
            1 => {
                // Sub-day windows, an odd slot count, and no tenure cap on recency.
                s.windows = vec![Span::hours(6), Span::days(2), Span::days(14)];
                s.slots_per_window = 4;
                s.aggregates.recency_to_tenure = false;
                s.recency_cap = Some(Span::days(20));
            }
            _ => {
                s.windows = vec![Span::days(3), Span::days(45)];
                s.slots_per_window = 9;
            }
        }
        s
    }

    /// The reference: the vector itself at every time a feature can change within `[a, b]`
    /// (both ends, every slot and day boundary, and the millisecond before each), plus a few
    /// times in between.
    fn sample_times(layout: &Layout, a: Millis, b: Millis) -> Vec<Millis> {
        let mut ts = vec![a, b, a + (b - a) / 3, a + (b - a) / 2];
        let mut steps: Vec<Millis> =
            layout.spec().windows.iter().map(|w| w.ms() / i64::from(layout.spec().slots_per_window)).collect();
        steps.push(DAY_MS);
        for step in steps {
            let mut t = (a.div_euclid(step) + 1) * step;
            while t <= b && ts.len() < 20_000 {
                ts.extend([t - 1, t]);
                t += step;
            }
        }
        ts.retain(|t| (a..=b).contains(t));
        ts
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Every feature of the vector at every sampled time in [a, b] lies within the bounds.
        #[test]
        fn bounds_hold_at_every_time_a_feature_can_change(
            variant in 0u8..3,
            events in prop::collection::vec((0i64..60 * 24, 0usize..7, -50i32..200), 1..40),
            start in 0i64..40 * 24,
            len in 0i64..130 * 24,
        ) {
            let layout = Layout::new(&spec(variant), 30 * DAY_MS);
            let mut store = FeatureStore::new(layout.clone());
            let mut sorted = events.clone();
            sorted.sort_by_key(|e| e.0);
            let first = T0 + sorted[0].0 * HOUR_MS;
            let (idx, _) = store.get_or_insert("u", first);
            // Applied in the generated order: out-of-order events shape the state too.
            for (h, ty, cents) in &events {
                let ty = (*ty).min(layout.spec().n_types() - 1);
                store.apply(idx, T0 + h * HOUR_MS + 17, ty, f64::from(*cents) / 100.0);
            }
            let u = store.user(idx);
            let a = u.last_ts() + start * HOUR_MS;
            let b = a + len * HOUR_MS + 3;
            let n = layout.n_features();
            let (mut lo, mut hi, mut v) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            layout.vector_bounds(u, a, b, &mut lo, &mut hi);
            let names = layout.spec().feature_names();
            for t in sample_times(&layout, a, b) {
                layout.vector_at(u, t, &mut v);
                for i in 0..n {
                    prop_assert!(lo[i] <= v[i] && v[i] <= hi[i],
                        "{} at {}h: {} not in [{}, {}]", names[i], (t - a) / HOUR_MS, v[i], lo[i], hi[i]);
                }
            }
        }
    }

    /// At a single time the bounds are the vector itself (nothing is widened needlessly there).
    #[test]
    fn bounds_at_one_time_are_the_vector() {
        let layout = Layout::new(&FeatureSpec::default(), 30 * DAY_MS);
        let mut store = FeatureStore::new(layout.clone());
        let (idx, _) = store.get_or_insert("u", T0);
        for (h, ty, amount) in [(0, 0, 0.0), (30, 2, 12.5), (200, 2, -3.0), (500, 4, 0.0)] {
            store.apply(idx, T0 + h * HOUR_MS, ty, amount);
        }
        let n = layout.n_features();
        let (mut lo, mut hi, mut v) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let at = T0 + 800 * HOUR_MS;
        layout.vector_bounds(store.user(idx), at, at, &mut lo, &mut hi);
        layout.vector_at(store.user(idx), at, &mut v);
        assert_eq!((&lo, &hi), (&v, &v));
    }
}
