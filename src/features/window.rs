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

use crate::time::{day_of, Millis};

/// One sliding window stored as `k` slots of `cells` u32 each, at `offset` in a user's cells.
#[derive(Debug, Clone)]
pub struct Ring {
    slot_ms: Millis,
    k: i64,
    cells: usize,
    offset: usize,
}

impl Ring {
    pub fn new(window_ms: Millis, k: u32, cells: usize, offset: usize) -> Ring {
        debug_assert!(window_ms > 0 && window_ms % i64::from(k) == 0);
        Ring {
            slot_ms: window_ms / i64::from(k),
            k: i64::from(k),
            cells,
            offset,
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
        ts.div_euclid(self.slot_ms)
    }

    #[inline]
    fn base(&self, slot: i64) -> usize {
        self.offset + slot.rem_euclid(self.k) as usize * self.cells
    }

    /// Move the head from the slot of `old_head` to the slot of `new_head` (`new_head >= old_head`),
    /// zeroing the slots that the ring reuses.
    #[inline]
    pub fn advance(&self, data: &mut [u32], old_head: Millis, new_head: Millis) {
        let (old, new) = (self.slot_of(old_head), self.slot_of(new_head));
        if new - old >= self.k {
            data[self.offset..self.offset + self.len()].fill(0);
            return;
        }
        for s in old + 1..=new {
            let b = self.base(s);
            data[b..b + self.cells].fill(0);
        }
    }

    /// The slot index for an event at `ts`, or `None` if it has left the ring whose head is `head`.
    #[inline]
    pub fn locate(&self, head: Millis, ts: Millis) -> Option<usize> {
        let (h, s) = (self.slot_of(head), self.slot_of(ts));
        (s > h - self.k && s <= h).then(|| self.base(s))
    }

    /// Call `f` with the cells of every slot inside the window at time `at`, for a ring whose head
    /// is `head` (`at >= head`).
    #[inline]
    pub fn for_each_in_window(&self, data: &[u32], head: Millis, at: Millis, mut f: impl FnMut(&[u32])) {
        let (h, q) = (self.slot_of(head), self.slot_of(at));
        let oldest = (q - self.k + 1).max(h - self.k + 1);
        for s in oldest..=h {
            let b = self.base(s);
            f(&data[b..b + self.cells]);
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
        DayBitmap {
            days: days as i64,
            offset,
        }
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
        let r = Ring::new(7 * DAY_MS, 7, 1, 0);
        let mut data = vec![0u32; r.len()];
        let head = 10 * DAY_MS;
        let b = r.locate(head, head).unwrap();
        data[b] += 1;
        assert!(r.locate(head, 3 * DAY_MS + 5).is_none(), "slot 3 left the ring at head 10");
        assert!(r.locate(head, 4 * DAY_MS).is_some());
        r.advance(&mut data, head, 17 * DAY_MS);
        assert_eq!(data.iter().sum::<u32>(), 0, "slot 10 is reused by slot 17");
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
