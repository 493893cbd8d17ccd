//! Where a silent user's next rescoring has to happen: the first of their due times at which the
//! decision could be anything but "nothing happens".
//!
//! After a rescoring with no event since, a user's due times form a chain `first + k * step`
//! (k = 0, 1, ...) up to their eviction at `end`: the policy's memory, and so the cadence, can
//! only change on a send. The engine proves spans of that chain quiet with an interval bound on
//! the score (crate::features::bound) and computes the next score only where the span ends.
//! Polling the skipped due times would have changed nothing but counters.

use crate::time::Millis;

/// The first due time of the chain `first + k * step` (k = 0, 1, ...) after `clock`.
pub fn first_after(first: Millis, step: Millis, clock: Millis) -> Millis {
    if first > clock {
        first
    } else {
        first.saturating_add(((clock - first) / step + 1).saturating_mul(step))
    }
}

/// Where a polling engine's timer would be now for a user whose due times from `first` on all
/// decide nothing, with the wheel's first undrained bucket at `base` (`granularity`: its bucket
/// width): a due time fires in the pass that completes its bucket, so the timer is at the first
/// due time from `first` on in a bucket not drained yet.
pub fn polled_due(first: Millis, step: Millis, granularity: Millis, base: i64) -> Millis {
    let from = base.saturating_mul(granularity);
    if first >= from {
        first
    } else {
        first_after(first, step, from - 1)
    }
}

/// How far the quiet span starting at `first` reaches: the due time after the first `len` due
/// times of the chain `first + k * step` (or `end`, if they reach it) when `quiet` proves them
/// all, else (with `halve`) after the first `len / 2`, `len / 4`, ... of them; `first` when not
/// even the first one is proven, or, without `halve`, when the first `len` are not. `quiet(a,
/// b)` must be true only if every due time in `[a, b]` decides nothing.
///
/// The caller passes a `len` as long as the user's silence so far: a span that doubles the
/// silence costs one bound, so a silence of `n` due times costs about `log2 n` bounds, however
/// soon the user's next event ends it (a span proven far past that event would be wasted
/// work). Halving keeps a span that ends near a crossing tight; a try made before any score is
/// computed does not halve, as a failure there is better answered by the score.
pub fn quiet_until(
    first: Millis,
    step: Millis,
    end: Millis,
    len: i64,
    halve: bool,
    mut quiet: impl FnMut(Millis, Millis) -> bool,
) -> Millis {
    if first >= end || step <= 0 {
        return first.min(end);
    }
    // Due times before `end`: indices 0..n.
    let n = (end - first - 1) / step + 1;
    let mut len = len.clamp(1, n);
    loop {
        if quiet(first, first + (len - 1) * step) {
            return if len == n { end } else { first + len * step };
        }
        if len == 1 || !halve {
            return first;
        }
        len /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against the reference, a walk over every due time: every due time before the answer
        /// was proven quiet, the answer is a due time or `end`, and a quiet first due time is
        /// always passed.
        #[test]
        fn stops_at_or_before_the_first_due_time_not_quiet(
            first in 0i64..1000, step in 1i64..50, len in 0i64..3000, cross in 0i64..4000, span in 0i64..200,
        ) {
            let end = first + len;
            // A due time is quiet iff it is before `first + cross`: a monotone property, as a
            // bound over spans is.
            let loud = first + cross;
            let mut proven = Vec::new();
            let got = quiet_until(first, step, end, span, true, |a, b| {
                assert!(a == first && a <= b && b < end, "asked about [{a}, {b}]");
                let ok = b < loud;
                if ok {
                    proven.push(b);
                }
                ok
            });
            let reference = (0..).map(|k| first + k * step).find(|&t| t >= end || t >= loud).map_or(end, |t| t.min(end));
            prop_assert!(got <= reference);
            prop_assert!(got == end || (got - first) % step == 0);
            prop_assert!(got == first || proven.iter().any(|&b| b + step >= got || got == end));
            if first < end && first < loud {
                prop_assert!(got > first, "the first due time is quiet and was not passed");
            }
        }
    }

    proptest! {
        /// [`polled_due`] against a simulation of polling: the timer waits in its due time's
        /// bucket, a pass happens whenever the watermark completes a bucket, and it fires every
        /// due time in the buckets it completes.
        #[test]
        fn polled_due_is_where_polling_has_the_timer(
            first in 1_000i64..2_000, step in 1i64..60, granularity in 1i64..40,
            back in 1i64..100, moves in proptest::collection::vec(0i64..80, 0..40),
        ) {
            // Nothing fired from `first` on yet: the clock was before it.
            let mut clock = first - back;
            let mut base = (clock + 1).div_euclid(granularity);
            let mut polled = first;
            for m in moves {
                clock += m;
                let complete = (clock + 1).div_euclid(granularity);
                if base < complete {
                    base = complete;
                    while polled.div_euclid(granularity) < base {
                        polled += step;
                    }
                }
                prop_assert_eq!(polled_due(first, step, granularity, base), polled, "clock {}", clock);
            }
        }
    }

    #[test]
    fn first_after_is_the_next_due_time_past_the_clock() {
        assert_eq!(first_after(10, 5, 3), 10);
        assert_eq!(first_after(10, 5, 10), 15);
        assert_eq!(first_after(10, 5, 14), 15);
        assert_eq!(first_after(10, 5, 15), 20);
    }

    /// The proof is a count that fits the per-user record's padding: tracking it costs no memory.
    #[test]
    fn the_per_user_record_stays_64_bytes() {
        assert_eq!(std::mem::size_of::<super::super::UserMeta>(), 64);
    }

    #[test]
    fn one_try_proves_the_whole_span_or_nothing() {
        let mut asked = Vec::new();
        assert_eq!(
            quiet_until(0, 5, 100, 4, false, |a, b| {
                asked.push((a, b));
                true
            }),
            20
        );
        assert_eq!(quiet_until(0, 5, 12, 9, false, |_, _| true), 12, "every due time 0, 5, 10 proven");
        assert_eq!(
            quiet_until(0, 5, 100, 4, false, |a, b| {
                asked.push((a, b));
                b < 10
            }),
            0,
            "no halving"
        );
        assert_eq!(asked, [(0, 15), (0, 15)]);
        assert_eq!(quiet_until(0, 5, 100, 4, true, |_, b| b < 10), 10, "where halving finds two");
    }

    #[test]
    fn nothing_to_search_past_the_end() {
        assert_eq!(quiet_until(10, 5, 10, 4, true, |_, _| true), 10);
        assert_eq!(quiet_until(12, 5, 10, 4, true, |_, _| true), 10);
        assert_eq!(quiet_until(0, 5, 12, 9, true, |_, _| true), 12, "every due time 0, 5, 10 proven");
        assert_eq!(quiet_until(0, 5, 12, 2, true, |_, _| true), 10, "only the first two asked for");
        assert_eq!(quiet_until(0, 5, 12, 3, true, |_, b| b < 10), 5, "three fail, then one passes");
        assert_eq!(quiet_until(0, 5, 12, 3, true, |_, _| false), 0);
    }

    /// The full intervention and control output of `replay` (default engine and policy, the
    /// shipped model) on the simulator's 5.4M-event log (100k users, 180 days, seed 7), with and
    /// without the skip: byte for byte, but for `emitted_at` (the wall clock). A release-only
    /// measurement, like the simulator's (`--lib` tests are not run with their ignored ones):
    /// `cargo test --release --lib engine::crossing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn replay_output_is_byte_identical_on_the_simulator_log() {
        use crate::engine::{Engine, EngineConfig};
        use crate::event::DEFAULT_MAX_EVENT_BYTES;
        use crate::pipeline::replay::{replay, ReplaySink};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let sim = crate::sim::SimConfig { users: 100_000, days: 180, seed: 7, ..Default::default() };
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("log file"));
        crate::sim::simulate::<_, std::io::Sink>(&sim, &mut f, None).expect("simulate");
        std::io::Write::flush(&mut f).expect("flush");
        drop(f);
        let model = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default.json"));
        let art = crate::model::ModelArtifact::load(model).expect("shipped model");
        let run = |exhaustive: bool| {
            let cfg = EngineConfig { exhaustive_polling: exhaustive, ..EngineConfig::default() };
            let mut engine = Engine::new(&art, crate::policy::PolicyConfig::default(), cfg);
            let (mut out, mut control) = (Vec::new(), Vec::new());
            let s = replay(
                &path,
                DEFAULT_MAX_EVENT_BYTES,
                &mut engine,
                ReplaySink { interventions: &mut out, control: Some(&mut control) },
            )
            .expect("replay");
            (without_emitted_at(&out), without_emitted_at(&control), s)
        };
        let (out_a, control_a, a) = run(true);
        let (out_b, control_b, b) = run(false);
        eprintln!(
            "{} events; polled: {} rescorings, {:.2}s; skipping: {} rescorings, {:.2}s; {} intervention and {} control bytes",
            a.valid,
            a.counters.scored_on_timer,
            a.elapsed.as_secs_f64(),
            b.counters.scored_on_timer,
            b.elapsed.as_secs_f64(),
            out_a.len(),
            control_a.len()
        );
        assert!(a.valid > 5_000_000 && !out_a.is_empty() && !control_a.is_empty());
        assert!(b.counters.scored_on_timer < a.counters.scored_on_timer, "the skip skipped nothing");
        assert!(out_a == out_b, "intervention output differs");
        assert!(control_a == control_b, "control output differs");
        // Held warm-up spans skip their scores but count every held decision.
        assert!(a.counters.held_warm_up > 0);
        assert_eq!(b.counters.held_warm_up, a.counters.held_warm_up, "held decisions differ");
    }

    /// Each record's `"emitted_at":"..."` value blanked: the only field that is the wall clock.
    fn without_emitted_at(jsonl: &[u8]) -> Vec<u8> {
        let key = b"\"emitted_at\":\"";
        let mut out = Vec::with_capacity(jsonl.len());
        let mut rest = jsonl;
        while let Some(i) = rest.windows(key.len()).position(|w| w == key) {
            out.extend_from_slice(&rest[..i + key.len()]);
            rest = &rest[i + key.len()..];
            let end = rest.iter().position(|&c| c == b'"').unwrap_or(rest.len());
            rest = &rest[end..];
        }
        out.extend_from_slice(rest);
        out
    }
}
