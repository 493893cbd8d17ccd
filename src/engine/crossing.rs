//! Where a silent user's next rescoring has to happen: the first of their due times at which the
//! decision could be anything but "nothing happens".
//!
//! After a rescoring with no event since, a user's due times form a chain `first + k * step`
//! (k = 0, 1, ...) up to their eviction at `end`: the policy's memory, and so the cadence, can
//! only change on a send. The engine proves spans of that chain quiet with an interval bound on
//! the score (crate::features::bound) and schedules only the first due time it cannot prove.
//! Polling the skipped due times would have changed nothing but counters.

use crate::time::Millis;

/// The first due time of the chain `first + k * step` (`< end`) that `quiet` cannot prove quiet,
/// or `end` when every one of them is proven. `quiet(a, b)` must be true only if every due time
/// in `[a, b]` decides nothing.
///
/// Spans grow by doubling while they are proven, and shrink by halving when not, so a user
/// quiet for `n` due times costs about `2 log2 n` bounds, and a short span stays tight.
pub fn first_unproven(
    first: Millis,
    step: Millis,
    end: Millis,
    mut quiet: impl FnMut(Millis, Millis) -> bool,
) -> Millis {
    if first >= end || step <= 0 {
        return first.min(end);
    }
    // Due times before `end`: indices 0..n.
    let n = (end - first - 1) / step + 1;
    let point = |k: i64| first + k * step;
    let (mut done, mut len) = (0i64, 1i64);
    while done < n {
        let last = (done + len).min(n) - 1;
        if quiet(point(done), point(last)) {
            done = last + 1;
            len = len.saturating_mul(2);
        } else if last > done {
            len = (last - done + 1) / 2;
        } else {
            return point(done);
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against the reference, a walk over every due time: the same answer, and `quiet` is
        /// only asked about spans before the answer, or about spans holding it.
        #[test]
        fn finds_the_first_due_time_not_quiet(
            first in 0i64..1000, step in 1i64..50, len in 0i64..3000, cross in 0i64..4000,
        ) {
            let end = first + len;
            // A due time is quiet iff it is before `first + cross`: a monotone property, as a
            // bound over spans is.
            let loud = first + cross;
            let mut asked = Vec::new();
            let got = first_unproven(first, step, end, |a, b| {
                asked.push((a, b));
                b < loud
            });
            let reference = (0..).map(|k| first + k * step).find(|&t| t >= end || t >= loud).map_or(end, |t| t.min(end));
            let reference = if reference >= end { end } else { reference };
            prop_assert_eq!(got, reference);
            prop_assert!(asked.iter().all(|&(a, b)| a <= b && a >= first && b < end.max(first + 1)));
            prop_assert!(asked.len() <= 4 + 2 * (64 - (len / step + 1).leading_zeros() as usize));
        }
    }

    #[test]
    fn nothing_to_search_past_the_end() {
        assert_eq!(first_unproven(10, 5, 10, |_, _| true), 10);
        assert_eq!(first_unproven(12, 5, 10, |_, _| true), 10);
        assert_eq!(first_unproven(0, 5, 12, |_, _| true), 12, "every due time 0, 5, 10 proven");
        assert_eq!(first_unproven(0, 5, 12, |_, b| b < 10), 10);
        assert_eq!(first_unproven(0, 5, 12, |_, _| false), 0);
    }
}
