//! The one check on an event that needs a clock: it must not be stamped after the present.
//!
//! Event time drives every clock in the engine (windows, the watermark, silence, eviction). A
//! single event stamped years ahead by a device with a wrong clock, or a local time sent as UTC,
//! would move the watermark there: every later event would count as late and every user would be
//! judged silent at once. The range check in parsing (1970..2200) cannot catch that, so events
//! stamped more than a margin after the present are rejected as `bad_timestamp`, as a Kafka broker
//! does with `log.message.timestamp.after.max.ms`.
//!
//! "The present" is the earlier of the wall clock and the record's own timestamp (a Kafka
//! message's), when there is one. The record timestamp makes the decision the same when the
//! input is read again later (a restore), where the wall clock alone would accept what live
//! processing rejected.

use super::{RejectReason, Rejection};
use crate::time::{Millis, Span};

/// Rejects events stamped more than `margin` after the present; see the module docs.
#[derive(Debug, Clone)]
pub struct FutureGuard {
    margin: Millis,
    /// A wall-clock reading no later than the present: read again only when an event fails
    /// against it, so the clock is read about once per `margin`, not once per event.
    wall_floor: Millis,
}

impl FutureGuard {
    pub fn new(margin: Span) -> Self {
        FutureGuard { margin: margin.ms(), wall_floor: Millis::MIN }
    }

    /// `Ok` when `ts` is no more than the margin after the present. `record_ts` is the record's
    /// own timestamp, if it has one; `wall` reads the wall clock (epoch ms), called only when the
    /// last reading is too old to accept `ts`.
    #[inline]
    pub fn check(
        &mut self,
        ts: Millis,
        record_ts: Option<Millis>,
        wall: impl FnOnce() -> Millis,
    ) -> Result<(), Rejection> {
        if record_ts.is_some_and(|r| ts > self.latest(r)) {
            return Err(self.rejection());
        }
        if ts > self.latest(self.wall_floor) {
            self.wall_floor = self.wall_floor.max(wall());
            if ts > self.latest(self.wall_floor) {
                return Err(self.rejection());
            }
        }
        Ok(())
    }

    /// The latest event time accepted when the present is `now`.
    #[inline]
    pub fn latest(&self, now: Millis) -> Millis {
        now.saturating_add(self.margin)
    }

    /// The rejection of an event stamped too far ahead.
    #[cold]
    pub fn rejection(&self) -> Rejection {
        // Says how far is too far, never the value (it may be anything the client sent).
        Rejection::new(
            RejectReason::BadTimestamp,
            format!(
                "`ts`: a date-time more than {} after the present; an event cannot come from the future",
                Span(self.margin)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::HOUR_MS;

    const NOW: Millis = 1_767_225_600_000;

    fn reads(n: &std::cell::Cell<u32>, at: Millis) -> impl FnOnce() -> Millis + '_ {
        move || {
            n.set(n.get() + 1);
            at
        }
    }

    #[test]
    fn accepts_up_to_the_margin_after_the_wall_clock_and_rejects_past_it() {
        let mut g = FutureGuard::new(Span::hours(1));
        assert!(g.check(NOW - 5 * HOUR_MS, None, || NOW).is_ok(), "the past");
        assert!(g.check(NOW + HOUR_MS, None, || NOW).is_ok(), "the margin itself");
        let r = g.check(NOW + HOUR_MS + 1, None, || NOW).expect_err("one ms past the margin");
        assert_eq!(r.reason, RejectReason::BadTimestamp);
        assert!(r.detail.contains("1h"), "{}", r.detail);
    }

    #[test]
    fn the_present_is_the_earlier_of_the_wall_clock_and_the_record_timestamp() {
        let mut g = FutureGuard::new(Span::hours(1));
        // A record stamped a day ago: its event may be no later than an hour after that.
        assert!(g.check(NOW - 22 * HOUR_MS, Some(NOW - 24 * HOUR_MS), || NOW).is_err());
        assert!(g.check(NOW - 23 * HOUR_MS, Some(NOW - 24 * HOUR_MS), || NOW).is_ok());
        // A record stamped a day ahead (a producer's clock is wrong): the wall clock decides.
        let mut g = FutureGuard::new(Span::hours(1));
        assert!(g.check(NOW + 2 * HOUR_MS, Some(NOW + 24 * HOUR_MS), || NOW).is_err());
        assert!(g.check(NOW + HOUR_MS, Some(NOW + 24 * HOUR_MS), || NOW).is_ok());
    }

    #[test]
    fn the_wall_clock_is_read_only_when_the_last_reading_cannot_accept() {
        let n = std::cell::Cell::new(0);
        let mut g = FutureGuard::new(Span::hours(1));
        assert!(g.check(NOW, None, reads(&n, NOW)).is_ok());
        assert_eq!(n.get(), 1, "the first event reads the clock");
        for k in 0..100 {
            assert!(g.check(NOW - k, None, reads(&n, NOW)).is_ok());
        }
        assert_eq!(n.get(), 1, "events within the margin of the last reading read nothing");
        // Two hours later the same floor cannot accept a fresh event: read again, then accept.
        assert!(g.check(NOW + 2 * HOUR_MS, None, reads(&n, NOW + 2 * HOUR_MS)).is_ok());
        assert_eq!(n.get(), 2);
        // A far-future event reads the clock and is rejected; the floor never moves back.
        assert!(g.check(NOW + 1000 * HOUR_MS, None, reads(&n, NOW)).is_err());
        assert!(g.check(NOW + 2 * HOUR_MS, None, reads(&n, 0)).is_ok());
        assert_eq!(n.get(), 3);
    }

    #[test]
    fn the_detail_never_holds_the_value() {
        let mut g = FutureGuard::new(Span::hours(1));
        let ts = 7_000_000_000_000;
        let r = g.check(ts, None, || NOW).expect_err("far ahead");
        assert!(!r.detail.contains(&ts.to_string()) && !r.detail.contains("2191"), "{}", r.detail);
    }
}
