//! Which input offset of one partition may be committed.
//!
//! The at-least-once rule: offset `o + 1` is committed only when message `o` and every message
//! before it has been processed and every output derived from them has been acknowledged by the
//! broker. Outputs are acknowledged out of order, so the committable position is the lower of
//! "one past the last processed message" and "the oldest offset with an output still in flight".
//!
//! A pure type with no I/O, so the rule is unit-tested on its own.

use std::collections::BTreeMap;

#[derive(Debug, Default, Clone)]
pub struct OffsetTracker {
    /// Offsets with outputs in flight, and how many.
    outstanding: BTreeMap<i64, u32>,
    /// Highest offset fully processed (its outputs handed to the sink).
    processed: Option<i64>,
    /// Last position handed out by [`OffsetTracker::take_commit`].
    committed: Option<i64>,
}

impl OffsetTracker {
    /// A tracker for a partition whose state already reflects everything before `next`
    /// (e.g. the committed offset the partition was resumed from).
    pub fn starting_at(next: i64) -> OffsetTracker {
        OffsetTracker { processed: Some(next - 1), committed: Some(next), ..Default::default() }
    }

    /// An output derived from message `offset` was handed to the producer.
    pub fn output_sent(&mut self, offset: i64) {
        *self.outstanding.entry(offset).or_default() += 1;
    }

    /// The broker acknowledged one output of message `offset` (or it was settled for good).
    pub fn output_settled(&mut self, offset: i64) {
        if let Some(n) = self.outstanding.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                self.outstanding.remove(&offset);
            }
        }
    }

    /// Message `offset` is processed: every output it causes has been registered.
    pub fn processed(&mut self, offset: i64) {
        self.processed = Some(self.processed.map_or(offset, |p| p.max(offset)));
    }

    /// One past the last processed message: the offset the state reflects.
    pub fn next_to_process(&self) -> Option<i64> {
        self.processed.map(|p| p + 1)
    }

    /// The last processed message, if any.
    pub fn last_processed(&self) -> Option<i64> {
        self.processed
    }

    /// Outputs still awaiting acknowledgement.
    pub fn in_flight(&self) -> u32 {
        self.outstanding.values().sum()
    }

    /// The offset to commit: everything below it is processed and acknowledged.
    pub fn position(&self) -> Option<i64> {
        let next = self.processed? + 1;
        Some(self.outstanding.keys().next().map_or(next, |&o| o.min(next)))
    }

    /// The position, if it moved since it was last taken.
    pub fn take_commit(&mut self) -> Option<i64> {
        let pos = self.position()?;
        if self.committed == Some(pos) {
            return None;
        }
        self.committed = Some(pos);
        Some(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nothing_to_commit_before_the_first_message() {
        let mut t = OffsetTracker::default();
        assert_eq!(t.position(), None);
        assert_eq!(t.take_commit(), None);
    }

    #[test]
    fn an_unacknowledged_output_holds_its_offset_back() {
        let mut t = OffsetTracker::default();
        t.processed(0);
        t.output_sent(1);
        t.processed(1);
        t.processed(2);
        assert_eq!(t.position(), Some(1), "offset 1 has an output in flight");
        t.output_settled(1);
        assert_eq!(t.position(), Some(3));
    }

    #[test]
    fn take_commit_reports_each_position_once() {
        let mut t = OffsetTracker::starting_at(10);
        assert_eq!(t.take_commit(), None, "the starting position is already committed");
        t.processed(10);
        assert_eq!(t.take_commit(), Some(11));
        assert_eq!(t.take_commit(), None);
    }

    #[test]
    fn acknowledgements_in_any_order_release_only_the_covered_prefix() {
        let mut t = OffsetTracker::default();
        for o in 0..5 {
            t.output_sent(o);
            t.output_sent(o);
            t.processed(o);
        }
        t.output_settled(3);
        t.output_settled(3);
        assert_eq!(t.position(), Some(0));
        t.output_settled(0);
        t.output_settled(0);
        assert_eq!(t.position(), Some(1));
        assert_eq!(t.in_flight(), 6);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Message { outputs: u8 },
        Ack { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3).prop_map(|outputs| Op::Message { outputs }),
            any::<usize>().prop_map(|pick| Op::Ack { pick })
        ]
    }

    proptest! {
        /// The committed position never passes an offset with an output in flight, never goes
        /// back, and reaches one past the last message once everything is acknowledged.
        #[test]
        fn position_is_the_acknowledged_prefix(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = OffsetTracker::default();
            let mut in_flight: Vec<i64> = Vec::new();
            let mut next = 0i64;
            let mut last_pos = None;
            for op in ops {
                match op {
                    Op::Message { outputs } => {
                        for _ in 0..outputs {
                            t.output_sent(next);
                            in_flight.push(next);
                        }
                        t.processed(next);
                        next += 1;
                    }
                    Op::Ack { pick } => {
                        if !in_flight.is_empty() {
                            let o = in_flight.swap_remove(pick % in_flight.len());
                            t.output_settled(o);
                        }
                    }
                }
                let pos = t.position();
                if let Some(p) = pos {
                    prop_assert!(in_flight.iter().all(|&o| o >= p), "position {p} passes an in-flight output");
                    prop_assert!(p <= next);
                    prop_assert!(last_pos.is_none_or(|l| l <= p), "position went back");
                    let expected = in_flight.iter().copied().min().unwrap_or(next).min(next);
                    prop_assert_eq!(p, expected);
                }
                last_pos = pos.or(last_pos);
            }
            for o in in_flight.drain(..) {
                t.output_settled(o);
            }
            prop_assert_eq!(t.position(), (next > 0).then_some(next));
        }
    }
}
