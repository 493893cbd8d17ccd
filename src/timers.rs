//! A calendar queue of rescore timers keyed by due event time.
//!
//! Pushing is O(1); due times are bucketed by `granularity` and a bucket is drained once the
//! watermark has passed its end. Entries are hints: the owner keeps each user's real due time
//! and ignores an entry whose bucket no longer matches it, so rescheduling never searches.

use std::collections::VecDeque;

use crate::time::Millis;

pub struct TimerWheel {
    granularity: Millis,
    /// Bucket number of `buckets[0]`.
    base: i64,
    buckets: VecDeque<Vec<u32>>,
    spare: Vec<Vec<u32>>,
    len: usize,
    /// Whether any bucket has been drained: until then an earlier due time can still get its
    /// own bucket in front of the first one.
    drained: bool,
}

/// How far in front of its first bucket a wheel that never drained grows for an earlier due
/// time; beyond that, the entry waits in the first bucket.
const MAX_FRONT_GROWTH: i64 = 1 << 16;

impl TimerWheel {
    pub fn new(granularity: Millis) -> TimerWheel {
        TimerWheel {
            granularity: granularity.max(1),
            base: i64::MIN,
            buckets: VecDeque::new(),
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
        // A due time already in a drained bucket goes to the front bucket: it is due now.
        let pos = (b - self.base).max(0) as usize;
        while self.buckets.len() <= pos {
            let v = self.spare.pop().unwrap_or_default();
            self.buckets.push_back(v);
        }
        self.buckets[pos].push(id);
        self.len += 1;
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
                }
                None => {
                    self.base = last_complete + 1;
                    self.drained = true;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
