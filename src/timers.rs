//! A calendar queue of rescore timers keyed by due event time.
//!
//! Pushing is O(1); due times are bucketed by `granularity` and a bucket is drained once the
//! watermark has passed its end. Entries are hints: the owner keeps each user's real due time
//! and ignores an entry whose bucket no longer matches it, so rescheduling never searches.

use std::collections::{BTreeMap, VecDeque};

use crate::time::Millis;

pub struct TimerWheel {
    granularity: Millis,
    /// Bucket number of `buckets[0]`.
    base: i64,
    buckets: VecDeque<Vec<u32>>,
    /// Buckets `max_span` or more past `base`, which the deque does not reach yet: every key is
    /// at least `base + max_span`, and a bucket moves into the deque as `base` comes within
    /// `max_span` of it.
    far: BTreeMap<i64, Vec<u32>>,
    max_span: i64,
    spare: Vec<Vec<u32>>,
    len: usize,
    /// Whether any bucket has been drained: until then an earlier due time can still get its
    /// own bucket in front of the first one.
    drained: bool,
}

/// How far in front of its first bucket a wheel that never drained grows for an earlier due
/// time; beyond that, the entry waits in the first bucket.
const MAX_FRONT_GROWTH: i64 = 1 << 16;

/// How many buckets past its first the deque holds. A due time further out (an event stamped
/// years ahead by a client's clock, a corrupt restored record) waits in one map entry instead:
/// otherwise the deque would grow a bucket per granularity step up to it, gigabytes for a due
/// time decades ahead at a one-second granularity. At most 1.5 MB of empty buckets; 7.5 years
/// at the rescore timers' default granularity (an hour).
const MAX_SPAN: i64 = 1 << 16;

impl TimerWheel {
    pub fn new(granularity: Millis) -> TimerWheel {
        TimerWheel::with_max_span(granularity, MAX_SPAN)
    }

    fn with_max_span(granularity: Millis, max_span: i64) -> TimerWheel {
        TimerWheel {
            granularity: granularity.max(1),
            base: i64::MIN,
            buckets: VecDeque::new(),
            far: BTreeMap::new(),
            max_span: max_span.max(1),
            spare: Vec::new(),
            len: 0,
            drained: false,
        }
    }

    pub fn granularity(&self) -> Millis {
        self.granularity
    }

    pub fn bucket_of(&self, due: Millis) -> i64 {
        due.div_euclid(self.granularity)
    }

    /// Entries held (including stale ones not yet drained).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first bucket not drained yet (`i64::MIN` before the first push): with the due times,
    /// it decides where each entry sits, so a restored wheel needs it to drain as the original.
    pub fn base(&self) -> i64 {
        self.base
    }

    /// Set an empty wheel's first bucket (see [`TimerWheel::base`]) for the clock `now`: a wheel
    /// whose first bucket is at or before `now`'s next one has been drained.
    pub fn set_base(&mut self, base: i64, now: Millis) {
        if self.len == 0 && self.buckets.is_empty() {
            self.base = base;
            self.drained = base <= self.bucket_of(now.saturating_add(1));
        }
    }

    pub fn push(&mut self, due: Millis, id: u32) {
        let b = self.bucket_of(due);
        if self.base == i64::MIN {
            self.base = b;
        }
        if b < self.base && !self.drained && self.base - b <= MAX_FRONT_GROWTH {
            // Nothing drained yet (the first push was a later due time): give it its bucket.
            for _ in b..self.base {
                let v = self.spare.pop().unwrap_or_default();
                self.buckets.push_front(v);
            }
            self.base = b;
        }
        self.len += 1;
        // A due time already in a drained bucket goes to the front bucket: it is due now.
        let pos = b.saturating_sub(self.base).max(0);
        if pos >= self.max_span {
            self.far.entry(b).or_default().push(id);
            return;
        }
        self.bucket_at(pos as usize).push(id);
    }

    /// The deque's bucket `pos` places after the first, grown up to it.
    fn bucket_at(&mut self, pos: usize) -> &mut Vec<u32> {
        while self.buckets.len() <= pos {
            let v = self.spare.pop().unwrap_or_default();
            self.buckets.push_back(v);
        }
        &mut self.buckets[pos]
    }

    /// Move the far buckets that `base` has come within `max_span` of into the deque, behind
    /// whatever their deque bucket already holds (which was pushed before them).
    fn refill(&mut self) {
        while let Some(entry) = self.far.first_entry() {
            let b = *entry.key();
            if b.saturating_sub(self.base) >= self.max_span {
                break;
            }
            let mut ids = entry.remove();
            let pos = b.saturating_sub(self.base).max(0) as usize;
            let bucket = self.bucket_at(pos);
            if bucket.is_empty() {
                std::mem::swap(bucket, &mut ids);
            } else {
                bucket.append(&mut ids);
            }
        }
    }

    /// Take every bucket that ends at or before `watermark`, in due order, calling `f(bucket, ids)`.
    /// Whether `drain_until(watermark)` would take anything; cheap, for the per-event path.
    #[inline]
    pub fn has_complete(&self, watermark: Millis) -> bool {
        self.base != i64::MIN && self.base < (watermark + 1).div_euclid(self.granularity)
    }

    /// Entries of the first bucket not drained yet (the one the clock is in, once drained up to it).
    pub fn front(&self) -> &[u32] {
        self.buckets.front().map_or(&[], Vec::as_slice)
    }

    pub fn drain_until(&mut self, watermark: Millis, mut f: impl FnMut(i64, &[u32])) {
        if self.base == i64::MIN {
            return;
        }
        // Bucket b holds due times in [b*g, (b+1)*g); it is complete once watermark >= (b+1)*g - 1.
        let last_complete = (watermark + 1).div_euclid(self.granularity) - 1;
        while self.base <= last_complete {
            match self.buckets.pop_front() {
                Some(mut ids) => {
                    self.len -= ids.len();
                    f(self.base, &ids);
                    self.drained = true;
                    ids.clear();
                    self.spare.push(ids);
                    self.base += 1;
                    self.refill();
                }
                None => {
                    // Nothing before the far buckets: skip to the first of them, if it is due.
                    self.drained = true;
                    match self.far.first_key_value() {
                        Some((&b, _)) if b <= last_complete => self.base = b,
                        _ => self.base = last_complete + 1,
                    }
                    self.refill();
                    if self.buckets.is_empty() {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(Millis),
        Drain(Millis),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Due times and watermark steps on a scale of a few spans, so that entries land in the
        // deque, in the far map, at its boundary, and in buckets already drained.
        let op = prop_oneof![3 => (-5i64..60).prop_map(Op::Push), 1 => (0i64..25).prop_map(Op::Drain)];
        prop::collection::vec(op, 1..80)
    }

    proptest! {
        /// With a span of 4 buckets, the wheel drains the same entries, in the same buckets and
        /// order, as one whose deque reaches every due time.
        #[test]
        fn a_bounded_span_drains_as_an_unbounded_one(ops in ops(), granularity in 1i64..4) {
            let mut bounded = TimerWheel::with_max_span(granularity, 4);
            let mut unbounded = TimerWheel::with_max_span(granularity, i64::MAX);
            let (mut got, mut want) = (Vec::new(), Vec::new());
            let mut watermark = -10;
            for (id, op) in ops.iter().enumerate() {
                match op {
                    Op::Push(due) => {
                        bounded.push(*due, id as u32);
                        unbounded.push(*due, id as u32);
                    }
                    Op::Drain(step) => {
                        watermark += step;
                        bounded.drain_until(watermark, |b, ids| got.push((b, ids.to_vec())));
                        unbounded.drain_until(watermark, |b, ids| want.push((b, ids.to_vec())));
                    }
                }
                prop_assert_eq!(bounded.len(), unbounded.len());
                prop_assert!(bounded.buckets.len() <= 4 + MAX_FRONT_GROWTH as usize);
            }
            bounded.drain_until(1_000, |b, ids| got.push((b, ids.to_vec())));
            unbounded.drain_until(1_000, |b, ids| want.push((b, ids.to_vec())));
            // The unbounded wheel also reports the empty buckets it walks over.
            want.retain(|(_, ids)| !ids.is_empty());
            got.retain(|(_, ids)| !ids.is_empty());
            prop_assert_eq!(got, want);
            prop_assert!(bounded.is_empty());
        }
    }

    /// A due time centuries ahead at a one-second granularity costs one map entry, and is still
    /// drained when its time comes.
    #[test]
    fn a_due_time_far_ahead_does_not_grow_the_deque() {
        let mut w = TimerWheel::new(1_000);
        w.push(0, 1);
        let far = 300 * 365 * crate::time::DAY_MS;
        w.push(far, 2);
        assert!(w.buckets.len() <= MAX_SPAN as usize, "{} buckets", w.buckets.len());
        let mut seen = Vec::new();
        w.drain_until(far - 1_000, |b, ids| seen.push((b, ids.to_vec())));
        assert_eq!(seen, vec![(0, vec![1])]);
        w.drain_until(far + 999, |b, ids| seen.push((b, ids.to_vec())));
        seen.retain(|(_, ids)| !ids.is_empty());
        assert_eq!(seen[1..], [(far / 1_000, vec![2])]);
        assert!(w.is_empty());
    }

    #[test]
    fn drains_only_complete_buckets_in_order() {
        let mut w = TimerWheel::new(10);
        w.push(5, 2);
        w.push(25, 1);
        w.push(12, 3);
        let mut seen = Vec::new();
        w.drain_until(18, |b, ids| seen.push((b, ids.to_vec())));
        assert_eq!(seen, vec![(0, vec![2])], "bucket 1 ends at 19, not complete at 18");
        w.drain_until(19, |b, ids| seen.push((b, ids.to_vec())));
        assert_eq!(seen.last(), Some(&(1, vec![3])));
        w.push(3, 4); // already past: lands in the front bucket
        w.drain_until(100, |b, ids| seen.push((b, ids.to_vec())));
        assert_eq!(seen[2..], [(2, vec![1, 4])]);
        assert!(w.is_empty());
    }

    #[test]
    fn before_the_first_drain_an_earlier_due_time_gets_its_own_bucket() {
        let mut w = TimerWheel::new(10);
        w.push(95, 1);
        w.push(12, 2);
        let mut seen = Vec::new();
        w.drain_until(19, |b, ids| seen.push((b, ids.to_vec())));
        assert_eq!(seen, vec![(1, vec![2])], "due at 12, not held back to the bucket of 95");
        w.push(3, 3);
        w.drain_until(29, |b, ids| seen.push((b, ids.to_vec())));
        assert_eq!(seen[1..], [(2, vec![3])], "after a drain, a past due time waits in the front bucket");
    }
}
