//! Bucketed event-time windows: the only place with window arithmetic.
//!
//! A [`Ring`] keeps one window as `k` slots of equal width. With the user's newest event in
//! slot `h`, the ring holds slots `h-k+1 ..= h`. Queried at time `t` (never before the newest
//! event), the window covers slots `slot(t)-k+1 ..= slot(t)`: the slot holding `t` and the
//! `k-1` full slots before it. An event whose slot has already left the ring is outside the
//! window for every later query too, so skipping it keeps the result exact.
//!
//! A [`DayBitmap`] keeps one bit per UTC day for the last `D` days, for distinct-active-day
//! counts, with the same head/query rule at one-day granularity.

use strength_reduce::StrengthReducedU64;

use crate::time::{day_of, Millis};

/// One sliding window stored as `k` slots of `cells` u32 each, at `offset` in a user's cells.
#[derive(Debug, Clone)]
pub struct Ring {
    slot_ms: Millis,
    k: i64,
    cells: usize,
    offset: usize,
    // Slot arithmetic runs several times per event; a hardware divide by a runtime value costs
    // tens of cycles, a strength-reduced one a multiply.
    div_slot: StrengthReducedU64,
    div_k: StrengthReducedU64,
}

impl Ring {
    pub fn new(window_ms: Millis, k: u32, cells: usize, offset: usize) -> Ring {
        debug_assert!(window_ms > 0 && window_ms % i64::from(k) == 0);
        let slot_ms = window_ms / i64::from(k);
        Ring {
            slot_ms,
            k: i64::from(k),
            cells,
            offset,
            div_slot: StrengthReducedU64::new(slot_ms.max(1) as u64),
            div_k: StrengthReducedU64::new(u64::from(k.max(1))),
        }
    }

    /// Cells this ring occupies.
    pub fn len(&self) -> usize {
        self.k as usize * self.cells
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn slot_of(&self, ts: Millis) -> i64 {
        if ts >= 0 {
            (ts as u64 / self.div_slot) as i64
        } else {
            ts.div_euclid(self.slot_ms)
        }
    }

    #[inline]
    fn base(&self, slot: i64) -> usize {
        let r = if slot >= 0 { (slot as u64 % self.div_k) as usize } else { slot.rem_euclid(self.k) as usize };
        self.offset + r * self.cells
    }

    /// Record an event at `ts` for a user whose newest event was `old_head` before it: move the
    /// head if the event is newer, then add `1` to `cell` and `cents` to the amount cell of the
    /// event's slot, unless that slot has left the ring.
    #[inline]
    pub fn record(&self, data: &mut [u32], old_head: Millis, ts: Millis, cell: usize, amount_cell: usize, cents: i32) {
        let (old, s) = (self.slot_of(old_head), self.slot_of(ts));
        let head = if s > old {
            if s - old >= self.k {
                data[self.offset..self.offset + self.len()].fill(0);
            } else {
                let mut b = self.base(old);
                let end = self.offset + self.len();
                for _ in old..s {
                    b += self.cells;
                    if b == end {
                        b = self.offset;
                    }
                    data[b..b + self.cells].fill(0);
                }
            }
            s
        } else {
            old
        };
        if s > head - self.k {
            let b = self.base(s);
            data[b + cell] = data[b + cell].saturating_add(1);
            if cents != 0 {
                let a = &mut data[b + amount_cell];
                *a = (*a as i32).saturating_add(cents) as u32;
            }
        }
    }

    /// How many slots [`Ring::for_each_in_window`] visits at time `at` (`at >= head`): the
    /// newest ones of the ring, fewer as `at` moves on.
    pub fn slots_in_window(&self, head: Millis, at: Millis) -> i64 {
        let (h, q) = (self.slot_of(head), self.slot_of(at));
        (h - (q - self.k + 1).max(h - self.k + 1) + 1).max(0)
    }

    /// Call `f` with the cells of every slot inside the window at time `at`, for a ring whose head
    /// is `head` (`at >= head`).
    #[inline]
    pub fn for_each_in_window(&self, data: &[u32], head: Millis, at: Millis, mut f: impl FnMut(&[u32])) {
        let (h, q) = if head == at {
            let h = self.slot_of(head);
            (h, h)
        } else {
            (self.slot_of(head), self.slot_of(at))
        };
        let oldest = (q - self.k + 1).max(h - self.k + 1);
        if oldest > h {
            return;
        }
        let end = self.offset + self.len();
        let mut b = self.base(oldest);
        for _ in oldest..=h {
            f(&data[b..b + self.cells]);
            b += self.cells;
            if b == end {
                b = self.offset;
            }
        }
    }
}

/// One bit per UTC day for the last `days` days before the head day.
#[derive(Debug, Clone)]
pub struct DayBitmap {
    days: i64,
    offset: usize,
}

impl DayBitmap {
    pub fn new(days: usize, offset: usize) -> DayBitmap {
        DayBitmap { days: days as i64, offset }
    }

    /// u32 words this bitmap occupies.
    pub fn len(&self) -> usize {
        (self.days as usize).div_ceil(32)
    }

    pub fn is_empty(&self) -> bool {
        self.days == 0
    }

    fn words<'a>(&self, data: &'a mut [u32]) -> &'a mut [u32] {
        &mut data[self.offset..self.offset + self.len()]
    }

    /// Shift so that bit 0 is the day of `new_head`; bit i is i days before it.
    pub fn advance(&self, data: &mut [u32], old_head: Millis, new_head: Millis) {
        if self.days == 0 {
            return;
        }
        let shift = day_of(new_head) - day_of(old_head);
        if shift <= 0 {
            return;
        }
        let words = self.words(data);
        if shift >= self.days {
            words.fill(0);
            return;
        }
        let (word_shift, bit_shift) = ((shift / 32) as usize, (shift % 32) as u32);
        for i in (0..words.len()).rev() {
            let src = i.checked_sub(word_shift);
            let hi = src.map_or(0, |s| words[s] << bit_shift);
            let lo = match (src, bit_shift) {
                (Some(s), b) if s > 0 && b > 0 => words[s - 1] >> (32 - b),
                _ => 0,
            };
            words[i] = hi | lo;
        }
        self.clear_tail(words);
    }

    fn clear_tail(&self, words: &mut [u32]) {
        let used = (self.days % 32) as u32;
        if used != 0 {
            if let Some(last) = words.last_mut() {
                *last &= (1u32 << used) - 1;
            }
        }
    }

    pub fn mark(&self, data: &mut [u32], head: Millis, ts: Millis) {
        let i = day_of(head) - day_of(ts);
        if (0..self.days).contains(&i) {
            let words = self.words(data);
            words[(i / 32) as usize] |= 1 << (i % 32);
        }
    }

    /// The active days held, as days before the head day, most recent first: `(count, nearest
    /// but the head day, farthest)`. The head day itself (offset 0) is counted when set.
    pub fn spread(&self, data: &[u32]) -> (u32, Option<i64>, Option<i64>) {
        let words = &data[self.offset..self.offset + self.len()];
        let (mut n, mut second, mut farthest) = (0u32, None, None);
        for (w, word) in words.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let i = w as i64 * 32 + i64::from(bits.trailing_zeros());
                bits &= bits - 1;
                n += 1;
                if i > 0 && second.is_none() {
                    second = Some(i);
                }
                farthest = Some(i);
            }
        }
        (n, second, farthest)
    }

    /// Days the bitmap holds (the head day and the ones before it).
    pub fn days(&self) -> i64 {
        self.days
    }

    /// Distinct active days among the `window_days` complete UTC days before the day of `at`
    /// (`at`'s own day is excluded, so the value does not depend on the time of day).
    pub fn count(&self, data: &[u32], head: Millis, at: Millis, window_days: i64) -> u32 {
        let o = day_of(at) - day_of(head);
        let lo = (1 - o).max(0);
        let hi = (window_days - o + 1).min(self.days);
        if hi <= lo {
            return 0;
        }
        let words = &data[self.offset..self.offset + self.len()];
        let mut c = 0;
        for (w, word) in words.iter().enumerate() {
            let (start, end) = (w as i64 * 32, w as i64 * 32 + 32);
            let (a, b) = (lo.max(start), hi.min(end));
            if a >= b {
                continue;
            }
            let width = (b - a) as u32;
            let mask = if width == 32 { u32::MAX } else { ((1u32 << width) - 1) << (a - start) };
            c += (word & mask).count_ones();
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY_MS;

    #[test]
    fn ring_skips_events_older_than_its_span_and_reuses_slots() {
        // A 7-day window of 7 one-day slots, one count cell and one amount cell per slot.
        let r = Ring::new(7 * DAY_MS, 7, 2, 0);
        let mut data = vec![0u32; r.len()];
        let sum = |data: &[u32], head: i64, at: i64| {
            let mut n = 0;
            r.for_each_in_window(data, head, at, |c| n += c[0]);
            n
        };
        let head = 10 * DAY_MS;
        r.record(&mut data, head, head, 0, 1, 250);
        r.record(&mut data, head, 3 * DAY_MS + 5, 0, 1, 0);
        assert_eq!(sum(&data, head, head), 1, "slot 3 left the ring at head 10: not recorded");
        r.record(&mut data, head, 4 * DAY_MS, 0, 1, 0);
        assert_eq!(sum(&data, head, head), 2, "slot 4 is the oldest slot in the ring");
        assert_eq!(sum(&data, head, head + 6 * DAY_MS), 1, "queried 6 days later only slot 10 is inside");
        r.record(&mut data, head, 17 * DAY_MS, 0, 1, 0);
        assert_eq!(sum(&data, 17 * DAY_MS, 17 * DAY_MS), 1, "slot 10 was reused by slot 17");
        assert_eq!(data.iter().step_by(2).sum::<u32>(), 1);
        assert_eq!(data[1..].iter().step_by(2).sum::<u32>(), 0, "the amount left with slot 10");
    }

    #[test]
    fn bitmap_shifts_across_word_boundaries() {
        // 91 bits: a 90-day window plus the current day.
        let b = DayBitmap::new(91, 0);
        let mut data = vec![0u32; b.len()];
        let head = 100 * DAY_MS;
        for d in [100, 99, 70, 40, 10] {
            b.mark(&mut data, head, d * DAY_MS);
        }
        // Complete days before day 100: the 90-day window is days 10..=99, so day 100 is out.
        assert_eq!(b.count(&data, head, head, 90), 4);
        assert_eq!(b.count(&data, head, head, 89), 3, "day 10 is 90 days back");
        assert_eq!(b.count(&data, head, head, 1), 1, "yesterday, day 99");
        b.advance(&mut data, head, 133 * DAY_MS);
        let h2 = 133 * DAY_MS;
        // Days 10 and 40 fell off (more than 90 days before day 133).
        assert_eq!(b.count(&data, h2, h2, 90), 3);
        assert_eq!(b.count(&data, h2, h2, 33), 1, "days 100..=132 hold day 100 only");
        assert_eq!(b.count(&data, h2, h2 + 30 * DAY_MS, 34), 0);
        assert_eq!(b.count(&data, h2, h2 + DAY_MS, 1), 0, "the head day, 133, counts from day 134 on");
    }
}
