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

/// One sliding window stored as `k` slots at `offset` in a user's narrow cells. A slot holds a
/// count per event type, then the amount in cents (i32 bits). In a slot of at most
/// [`PACKED_SLOT_MS`] the counts are 16 bits, two to a u32 word, saturating at
/// [`SLOT_COUNT_MAX`]: half-width counts keep a user's state in fewer cache lines, and 65,535
/// events of one type in 16 days is one every 21 s for the whole span, beyond any person. Longer
/// slots keep a word per count.
#[derive(Debug, Clone)]
pub struct Ring {
    slot_ms: Millis,
    k: i64,
    n_types: usize,
    packed: bool,
    cells: usize,
    offset: usize,
    // Slot arithmetic runs several times per event; a hardware divide by a runtime value costs
    // tens of cycles, a strength-reduced one a multiply.
    div_slot: StrengthReducedU64,
    div_k: StrengthReducedU64,
}

/// Largest count a packed slot holds for one type.
pub const SLOT_COUNT_MAX: u32 = 0xffff;

/// The longest slot whose counts are packed 16 bits each.
pub const PACKED_SLOT_MS: Millis = 16 * crate::time::DAY_MS;

/// The count words of a slot `slot_ms` long, for `n_types` types; and whether they are packed.
pub fn count_words(slot_ms: Millis, n_types: usize) -> (usize, bool) {
    if slot_ms <= PACKED_SLOT_MS {
        (n_types.div_ceil(2), true)
    } else {
        (n_types, false)
    }
}

impl Ring {
    pub fn new(window_ms: Millis, k: u32, n_types: usize, offset: usize) -> Ring {
        debug_assert!(window_ms > 0 && window_ms % i64::from(k) == 0);
        let slot_ms = window_ms / i64::from(k);
        let (words, packed) = count_words(slot_ms, n_types);
        Ring {
            slot_ms,
            k: i64::from(k),
            n_types,
            packed,
            cells: words + 1,
            offset,
            div_slot: StrengthReducedU64::new(slot_ms.max(1) as u64),
            div_k: StrengthReducedU64::new(u64::from(k.max(1))),
        }
    }

    /// u32 cells per slot.
    pub fn slot_cells(&self) -> usize {
        self.cells
    }

    /// Whether the counts are 16 bits, two to a word.
    pub fn packed(&self) -> bool {
        self.packed
    }

    /// Add a slot's counts (from [`Ring::for_each_in_window`]) into `acc`, a word per count word.
    /// The two 16-bit halves of a packed word are summed apart in the halves of a u64, which
    /// cannot carry from one into the other within the at most 64 slots of a window;
    /// [`Ring::split_counts`] separates them.
    #[inline]
    pub fn add_counts(&self, acc: &mut [u64], cells: &[u32]) {
        let words = &cells[..self.cells - 1];
        if self.packed {
            for (a, &w) in acc.iter_mut().zip(words) {
                *a += u64::from(w & 0xffff) | (u64::from(w >> 16) << 32);
            }
        } else {
            for (a, &w) in acc.iter_mut().zip(words) {
                *a += u64::from(w);
            }
        }
    }

    /// The per-type totals of slots summed by [`Ring::add_counts`], into `out` (one per type).
    /// An unpacked total beyond u32 saturates, as a slot's own count does.
    #[inline]
    pub fn split_counts(&self, acc: &[u64], out: &mut [u32]) {
        if self.packed {
            for (t, o) in out[..self.n_types].iter_mut().enumerate() {
                *o = (acc[t / 2] >> (32 * (t % 2))) as u32;
            }
        } else {
            for (o, a) in out[..self.n_types].iter_mut().zip(acc) {
                *o = (*a).min(u64::from(u32::MAX)) as u32;
            }
        }
    }

    /// A slot's amount in cents.
    #[inline]
    pub fn amount(&self, cells: &[u32]) -> i64 {
        i64::from(cells[self.cells - 1] as i32)
    }

    /// One type's count in a slot's cells.
    pub fn count(&self, cells: &[u32], type_idx: usize) -> u32 {
        if self.packed {
            (cells[type_idx / 2] >> (16 * (type_idx % 2))) & 0xffff
        } else {
            cells[type_idx]
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
    /// head if the event is newer, then count the event for its type and add `cents` to the
    /// amount of the event's slot, unless that slot has left the ring.
    #[inline]
    pub fn record(&self, data: &mut [u32], old_head: Millis, ts: Millis, type_idx: usize, cents: i32) {
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
            if self.packed {
                let shift = 16 * (type_idx % 2);
                let word = &mut data[b + type_idx / 2];
                if (*word >> shift) & 0xffff < SLOT_COUNT_MAX {
                    *word += 1 << shift;
                }
            } else {
                data[b + type_idx] = data[b + type_idx].saturating_add(1);
            }
            if cents != 0 {
                let a = &mut data[b + self.cells - 1];
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
        // A 7-day window of 7 one-day slots, one type: a count word and an amount per slot.
        let r = Ring::new(7 * DAY_MS, 7, 1, 0);
        let mut data = vec![0u32; r.len()];
        let sum = |data: &[u32], head: i64, at: i64| {
            let mut n = 0;
            r.for_each_in_window(data, head, at, |c| n += r.count(c, 0));
            n
        };
        let head = 10 * DAY_MS;
        r.record(&mut data, head, head, 0, 250);
        r.record(&mut data, head, 3 * DAY_MS + 5, 0, 0);
        assert_eq!(sum(&data, head, head), 1, "slot 3 left the ring at head 10: not recorded");
        r.record(&mut data, head, 4 * DAY_MS, 0, 0);
        assert_eq!(sum(&data, head, head), 2, "slot 4 is the oldest slot in the ring");
        assert_eq!(sum(&data, head, head + 6 * DAY_MS), 1, "queried 6 days later only slot 10 is inside");
        r.record(&mut data, head, 17 * DAY_MS, 0, 0);
        assert_eq!(sum(&data, 17 * DAY_MS, 17 * DAY_MS), 1, "slot 10 was reused by slot 17");
        assert_eq!(data.iter().step_by(2).sum::<u32>(), 1);
        assert_eq!(data[1..].iter().step_by(2).sum::<u32>(), 0, "the amount left with slot 10");
    }

    #[test]
    fn slot_counts_are_packed_two_to_a_word_and_saturate_alone() {
        // Three types: two count words per slot, the second half-used.
        let r = Ring::new(2 * DAY_MS, 2, 3, 0);
        assert_eq!(r.slot_cells(), 3);
        let mut data = vec![0u32; r.len()];
        let head = 10 * DAY_MS;
        data[0] = SLOT_COUNT_MAX - 1;
        for _ in 0..3 {
            r.record(&mut data, head, head, 0, 0);
        }
        r.record(&mut data, head, head, 1, -7);
        r.record(&mut data, head, head, 2, 0);
        r.record(&mut data, head, head - DAY_MS, 2, 0);
        let (mut acc, mut out) = ([0u64; 2], [0u32; 3]);
        let mut amount = 0;
        r.for_each_in_window(&data, head, head, |c| {
            r.add_counts(&mut acc, c);
            amount += r.amount(c);
        });
        r.split_counts(&acc, &mut out);
        assert_eq!(out, [SLOT_COUNT_MAX, 1, 2], "type 0 stopped at the maximum without touching type 1");
        assert_eq!(amount, -7);
    }

    #[test]
    fn slots_longer_than_16_days_keep_a_word_per_count() {
        // A 34-day window of 2 slots: 17-day slots.
        let r = Ring::new(34 * DAY_MS, 2, 3, 0);
        assert!(!r.packed());
        assert_eq!(r.slot_cells(), 4);
        let mut data = vec![0u32; r.len()];
        let head = 100 * DAY_MS;
        data[0] = u32::from(u16::MAX);
        r.record(&mut data, head, head, 0, 0);
        r.record(&mut data, head, head, 2, 3);
        let (mut acc, mut out) = ([0u64; 3], [0u32; 3]);
        r.for_each_in_window(&data, head, head, |c| r.add_counts(&mut acc, c));
        r.split_counts(&acc, &mut out);
        assert_eq!(out, [SLOT_COUNT_MAX + 1, 0, 1]);
        assert!(Ring::new(32 * DAY_MS, 2, 3, 0).packed(), "16-day slots are packed");
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
