//! `churnguard_risk_score` and its shadow twin: histograms filled a bucket at a time.
//!
//! The engine counts its scores in fixed buckets on the hot path, and the pipeline hands the
//! counts over once per tick. A `prometheus::Histogram` takes one observation per call, so
//! handing over meant one call per score (7 % of a worker's CPU in `bench kafka`); this one takes
//! a bucket's count in one addition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto;

use crate::engine::SCORE_BUCKETS;

/// A histogram of scores in `[0, 1]` with the engine's buckets (`SCORE_BUCKETS` wide bins); each
/// score counts at its bin's midpoint, so the bucket counts are exact and `_sum` is within half a
/// bin per score.
#[derive(Clone)]
pub struct ScoreHistogram {
    desc: Arc<Desc>,
    /// Upper bounds of the exposed buckets: each bin's upper edge but the last (`+Inf`).
    bounds: Arc<[f64]>,
    state: Arc<Mutex<Counts>>,
}

struct Counts {
    bins: [u64; SCORE_BUCKETS],
    sum: f64,
}

impl ScoreHistogram {
    pub fn new(name: &str, help: &str) -> prometheus::Result<ScoreHistogram> {
        let desc = Desc::new(name.into(), help.into(), Vec::new(), HashMap::new())?;
        let width = 1.0 / SCORE_BUCKETS as f64;
        let bounds = prometheus::linear_buckets(width, width, SCORE_BUCKETS - 1)?;
        Ok(ScoreHistogram {
            desc: Arc::new(desc),
            bounds: bounds.into(),
            state: Arc::new(Mutex::new(Counts { bins: [0; SCORE_BUCKETS], sum: 0.0 })),
        })
    }

    /// Add the scores counted between two readings of the engine's bins.
    pub fn add_delta(&self, before: &[u64; SCORE_BUCKETS], after: &[u64; SCORE_BUCKETS]) {
        let Ok(mut c) = self.state.lock() else { return };
        for (i, (b, a)) in before.iter().zip(after).enumerate() {
            let n = a.saturating_sub(*b);
            if n > 0 {
                c.bins[i] += n;
                c.sum += n as f64 * (i as f64 + 0.5) / SCORE_BUCKETS as f64;
            }
        }
    }

    /// Scores counted so far.
    pub fn sample_count(&self) -> u64 {
        self.state.lock().map_or(0, |c| c.bins.iter().sum())
    }
}

impl Collector for ScoreHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let (bins, sum) = match self.state.lock() {
            Ok(c) => (c.bins, c.sum),
            Err(_) => return Vec::new(),
        };
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(bins)
            .map(|(&bound, n)| {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(bound);
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(bins.iter().sum());
        h.set_sample_sum(sum);
        let mut m = proto::Metric::default();
        m.set_histogram(h);
        let mut family = proto::MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.set_metric(vec![m]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same exposition as a `prometheus::Histogram` fed one midpoint per score.
    #[test]
    fn bucket_counts_expose_as_one_observation_per_score() {
        let ours = ScoreHistogram::new("s", "h").expect("valid");
        let width = 1.0 / SCORE_BUCKETS as f64;
        let theirs = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("s", "h")
                .buckets(prometheus::linear_buckets(width, width, SCORE_BUCKETS - 1).expect("buckets")),
        )
        .expect("valid");
        let mut before = [0u64; SCORE_BUCKETS];
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5 {
            let mut after = before;
            for bin in after.iter_mut() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                *bin += rng % 4;
            }
            ours.add_delta(&before, &after);
            for (i, (b, a)) in before.iter().zip(&after).enumerate() {
                for _ in 0..a - b {
                    theirs.observe((i as f64 + 0.5) / SCORE_BUCKETS as f64);
                }
            }
            before = after;
        }
        let text = |c: &dyn Collector| {
            let mut out = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &c.collect(), &mut out).expect("encodes");
            String::from_utf8(out).expect("utf-8")
        };
        let (a, b) = (text(&ours), text(&theirs));
        // `_sum` is added in another order: equal to rounding.
        let sum = |t: &str| -> f64 {
            t.lines().find_map(|l| l.strip_prefix("s_sum ")).and_then(|v| v.parse().ok()).expect("a _sum line")
        };
        assert!((sum(&a) - sum(&b)).abs() < 1e-9, "{a}\n{b}");
        let without_sum = |t: &str| t.lines().filter(|l| !l.starts_with("s_sum")).collect::<Vec<_>>().join("\n");
        assert_eq!(without_sum(&a), without_sum(&b));
        assert_eq!(ours.sample_count(), before.iter().sum::<u64>());
    }
}
