//! Evaluation of a binary churn classifier: ranking metrics (ROC AUC, average
//! precision), probabilistic metrics (log loss, Brier score), calibration and
//! threshold selection.
//!
//! Conventions shared by every function here:
//!
//! * `scores[i]` is the predicted probability that user `i` is positive
//!   (churned) and `labels[i]` is `true` if they did churn. If the slices differ
//!   in length the extra elements of the longer one are ignored.
//! * Nothing panics. Empty input gives `NaN` for every mean-based metric, and
//!   empty input or input with a single class gives `NaN` for both AUCs and for
//!   the threshold finders, because they are undefined there.
//! * Rank-based functions sort once (`O(n log n)`) and then sweep groups of
//!   tied scores, so tied scores are always treated as one threshold. `NaN`
//!   scores are ordered by [`f64::total_cmp`], i.e. above `+inf`; they make the
//!   probabilistic metrics `NaN`, which is the intended signal that the scores
//!   are broken.

use std::fmt::Write as _;

/// Clipping bound for [`log_loss`], the same one scikit-learn used, so a
/// single confidently wrong prediction costs about 34.5 nats rather than `inf`.
const LOG_LOSS_EPS: f64 = 1e-15;

/// Headline evaluation numbers for one scored data set.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Metrics {
    /// Area under the ROC curve; `NaN` when empty or single-class.
    pub roc_auc: f64,
    /// Average precision; `NaN` when empty or single-class.
    pub pr_auc: f64,
    pub log_loss: f64,
    pub brier: f64,
    /// Distinct users among the rows (a user has one row per cutoff).
    pub n_users: usize,
    /// Rows scored: one per user and cutoff. Absent in models written before it was added.
    #[serde(default)]
    pub n_rows: usize,
    /// Fraction of positive labels; `NaN` when empty.
    pub churn_rate: f64,
}

/// One non-empty bin of a reliability diagram.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct CalibrationBin {
    pub lower: f64,
    pub upper: f64,
    pub count: usize,
    pub mean_predicted: f64,
    pub observed_rate: f64,
}

/// Users sharing one distinct score.
#[derive(Debug, Clone, Copy)]
struct TieGroup {
    score: f64,
    pos: u64,
    neg: u64,
}

/// Scores collapsed into tie groups, highest score first. Every rank-based
/// metric is a single sweep over this, which is what keeps them `O(n log n)`.
#[derive(Debug)]
struct Ranked {
    groups: Vec<TieGroup>,
    pos: u64,
    neg: u64,
}

impl Ranked {
    fn new(scores: &[f64], labels: &[bool]) -> Self {
        // `+ 0.0` turns -0.0 into 0.0: `total_cmp` would otherwise split two
        // numerically equal scores into separate thresholds.
        let mut pairs: Vec<(f64, bool)> = scores.iter().zip(labels).map(|(&s, &l)| (s + 0.0, l)).collect();
        pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));

        let mut groups: Vec<TieGroup> = Vec::new();
        let (mut pos, mut neg) = (0u64, 0u64);
        for (score, label) in pairs {
            let (p, n) = if label { (1, 0) } else { (0, 1) };
            pos += p;
            neg += n;
            match groups.last_mut() {
                Some(g) if g.score.total_cmp(&score).is_eq() => {
                    g.pos += p;
                    g.neg += n;
                }
                _ => groups.push(TieGroup { score, pos: p, neg: n }),
            }
        }
        Ranked { groups, pos, neg }
    }

    fn both_classes(&self) -> bool {
        self.pos > 0 && self.neg > 0
    }

    /// Cumulative (true positives, false positives) after each group, i.e.
    /// the confusion counts when predicting positive for `score >= group.score`.
    fn sweep(&self) -> impl Iterator<Item = (&TieGroup, u64, u64)> + '_ {
        self.groups.iter().scan((0u64, 0u64), |(tp, fp), g| {
            *tp += g.pos;
            *fp += g.neg;
            Some((g, *tp, *fp))
        })
    }

    fn roc_auc(&self) -> f64 {
        if !self.both_classes() {
            return f64::NAN;
        }
        // Mann-Whitney U: each negative scores 1 per positive ranked above it
        // and 1/2 per tied positive. Summing twice that keeps the count an
        // exact integer; u128 because pos*neg*2 can exceed u64 for huge inputs.
        let mut pos_above: u128 = 0;
        let mut twice_u: u128 = 0;
        for g in &self.groups {
            twice_u += u128::from(g.neg) * (2 * pos_above + u128::from(g.pos));
            pos_above += u128::from(g.pos);
        }
        twice_u as f64 / (2.0 * self.pos as f64 * self.neg as f64)
    }

    fn average_precision(&self) -> f64 {
        if !self.both_classes() {
            return f64::NAN;
        }
        let total_pos = self.pos as f64;
        self.sweep()
            .filter(|(g, _, _)| g.pos > 0)
            .map(|(g, tp, fp)| (g.pos as f64 / total_pos) * (tp as f64 / (tp + fp) as f64))
            .sum()
    }
}

/// Computes every headline metric, sorting the scores only once.
///
/// AUCs are `NaN` for empty or single-class input; log loss, Brier and churn
/// rate are `NaN` for empty input.
pub fn evaluate(scores: &[f64], labels: &[bool]) -> Metrics {
    let ranked = Ranked::new(scores, labels);
    let n = scores.len().min(labels.len());
    Metrics {
        roc_auc: ranked.roc_auc(),
        pr_auc: ranked.average_precision(),
        log_loss: log_loss(scores, labels),
        brier: brier(scores, labels),
        // One row per user unless the caller knows better (see `with_users`).
        n_users: n,
        n_rows: n,
        churn_rate: ranked.pos as f64 / n as f64,
    }
}

impl Metrics {
    /// The same figures with the number of distinct users among the rows.
    pub fn with_users(mut self, users: usize) -> Metrics {
        self.n_users = users;
        self
    }
}

/// Exact ROC AUC (the Mann-Whitney statistic, ties counted as 1/2).
/// `NaN` for empty or single-class input.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> f64 {
    Ranked::new(scores, labels).roc_auc()
}

/// Average precision as scikit-learn's `average_precision_score`: the
/// step-wise sum of precision weighted by recall gained at each distinct
/// threshold (no interpolation). `NaN` for empty or single-class input.
pub fn pr_auc(scores: &[f64], labels: &[bool]) -> f64 {
    Ranked::new(scores, labels).average_precision()
}

/// Mean negative log-likelihood with probabilities clipped to
/// `[1e-15, 1 - 1e-15]`. `NaN` for empty input.
pub fn log_loss(scores: &[f64], labels: &[bool]) -> f64 {
    mean(scores, labels, |s, l| {
        let p = s.clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
        if l {
            -p.ln()
        } else {
            -(1.0 - p).ln()
        }
    })
}

/// Mean squared error between the predicted probability and the 0/1 outcome.
/// `NaN` for empty input.
pub fn brier(scores: &[f64], labels: &[bool]) -> f64 {
    mean(scores, labels, |s, l| {
        let d = s - if l { 1.0 } else { 0.0 };
        d * d
    })
}

fn mean(scores: &[f64], labels: &[bool], f: impl Fn(f64, bool) -> f64) -> f64 {
    let n = scores.len().min(labels.len());
    let total: f64 = scores.iter().zip(labels).map(|(&s, &l)| f(s, l)).sum();
    total / n as f64
}

/// Reliability table with `bins` equal-width bins on `[0, 1]`; empty bins are
/// omitted. The last bin is closed so a score of exactly 1 is counted. Scores
/// outside `[0, 1]` are clamped into it (and contribute their clamped value to
/// `mean_predicted`); `NaN` scores are skipped. `bins == 0` gives no bins.
pub fn calibration_table(scores: &[f64], labels: &[bool], bins: usize) -> Vec<CalibrationBin> {
    if bins == 0 {
        return Vec::new();
    }
    // (count, sum of predictions, positives) per bin.
    let mut acc = vec![(0usize, 0.0f64, 0usize); bins];
    for (&s, &l) in scores.iter().zip(labels) {
        if s.is_nan() {
            continue;
        }
        let p = s.clamp(0.0, 1.0);
        // The float-to-int cast saturates, and `min` folds p == 1.0 into the
        // last bin.
        let idx = ((p * bins as f64) as usize).min(bins - 1);
        let slot = &mut acc[idx];
        slot.0 += 1;
        slot.1 += p;
        slot.2 += usize::from(l);
    }
    let width = bins as f64;
    acc.into_iter()
        .enumerate()
        .filter(|(_, (count, _, _))| *count > 0)
        .map(|(i, (count, sum, pos))| CalibrationBin {
            lower: i as f64 / width,
            upper: (i + 1) as f64 / width,
            count,
            mean_predicted: sum / count as f64,
            observed_rate: pos as f64 / count as f64,
        })
        .collect()
}

/// ROC curve as `(false positive rate, true positive rate)` points, one per
/// distinct score from the highest down, prefixed by `(0, 0)` and so ending at
/// `(1, 1)`. Empty for empty or single-class input, where the rates are
/// undefined.
pub fn roc_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let ranked = Ranked::new(scores, labels);
    if !ranked.both_classes() {
        return Vec::new();
    }
    let (p, n) = (ranked.pos as f64, ranked.neg as f64);
    std::iter::once((0.0, 0.0)).chain(ranked.sweep().map(|(_, tp, fp)| (fp as f64 / n, tp as f64 / p))).collect()
}

/// Precision-recall curve as `(recall, precision)` points, one per distinct
/// score from the highest down, prefixed by `(0, 1)` as scikit-learn does so
/// the curve starts on the precision axis. Recall is non-decreasing along the
/// curve; precision is not monotone. Empty for empty or single-class input.
pub fn pr_curve(scores: &[f64], labels: &[bool]) -> Vec<(f64, f64)> {
    let ranked = Ranked::new(scores, labels);
    if !ranked.both_classes() {
        return Vec::new();
    }
    let p = ranked.pos as f64;
    std::iter::once((0.0, 1.0))
        .chain(ranked.sweep().map(|(_, tp, fp)| (tp as f64 / p, tp as f64 / (tp + fp) as f64)))
        .collect()
}

/// Threshold maximising F1 on the given data, predicting positive for
/// `score >= threshold`; among equal F1 the higher threshold wins (fewer
/// interventions for the same quality). Returns `(threshold, f1, precision,
/// recall)`, all `NaN` when there are no positives (F1 is then 0 or undefined
/// everywhere, so no threshold is meaningful).
pub fn best_f1_threshold(scores: &[f64], labels: &[bool]) -> (f64, f64, f64, f64) {
    let ranked = Ranked::new(scores, labels);
    let nan = (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    if ranked.pos == 0 {
        return nan;
    }
    let p = ranked.pos as f64;
    let mut best: Option<(f64, f64, f64, f64)> = None;
    for (g, tp, fp) in ranked.sweep() {
        let tp_f = tp as f64;
        // 2TP / (2TP + FP + FN), with TP + FN = all positives.
        let f1 = 2.0 * tp_f / (tp_f + fp as f64 + p);
        // Strict `>` keeps the earliest, i.e. highest, threshold on ties.
        let better = match best {
            None => true,
            Some((_, best_f1, _, _)) => f1 > best_f1,
        };
        if better {
            best = Some((g.score, f1, tp_f / (tp + fp) as f64, tp_f / p));
        }
    }
    best.unwrap_or(nan)
}

/// Highest threshold whose recall (for `score >= threshold`) reaches
/// `recall`, i.e. the most precise operating point meeting a recall target.
/// `NaN` when there are no positives or the target exceeds 1.
pub fn threshold_for_recall(scores: &[f64], labels: &[bool], recall: f64) -> f64 {
    let ranked = Ranked::new(scores, labels);
    if ranked.pos == 0 {
        return f64::NAN;
    }
    let p = ranked.pos as f64;
    let reached = ranked.sweep().find(|&(_, tp, _)| tp as f64 / p >= recall).map(|(g, _, _)| g.score);
    reached.unwrap_or(f64::NAN)
}

/// Smallest threshold whose precision (for `score >= threshold`) is at least
/// `min_precision`, i.e. the highest-recall operating point meeting a
/// precision floor. Precision is not monotone in the threshold, so a higher
/// threshold may still fall below the floor. `NaN` if no threshold qualifies
/// or the input is empty.
pub fn threshold_for_precision(scores: &[f64], labels: &[bool], min_precision: f64) -> f64 {
    Ranked::new(scores, labels)
        .sweep()
        .filter(|&(_, tp, fp)| tp as f64 / (tp + fp) as f64 >= min_precision)
        .last()
        .map_or(f64::NAN, |(g, _, _)| g.score)
}

/// Renders calibration bins as an aligned plain-text table for terminals.
pub fn format_calibration_table(bins: &[CalibrationBin]) -> String {
    let header = ["bin", "count", "predicted", "observed", "gap"];
    // Enough decimals that adjacent bin edges never print identically.
    let decimals = bins
        .iter()
        .map(|b| (-(b.upper - b.lower).log10()).ceil())
        .filter(|d| d.is_finite())
        .fold(2.0f64, f64::max)
        .min(6.0) as usize;
    let rows: Vec<[String; 5]> = bins
        .iter()
        .map(|b| {
            let close = if b.upper >= 1.0 { ']' } else { ')' };
            [
                format!("[{:.*}, {:.*}{close}", decimals, b.lower, decimals, b.upper),
                b.count.to_string(),
                format!("{:.4}", b.mean_predicted),
                format!("{:.4}", b.observed_rate),
                format!("{:+.4}", b.observed_rate - b.mean_predicted),
            ]
        })
        .collect();

    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }

    let mut out = String::new();
    let mut push_row = |cells: [&str; 5]| {
        // The bin label reads left to right; numbers align on the right.
        let _ = write!(out, "{:<w$}", cells[0], w = widths[0]);
        for (cell, w) in cells.iter().zip(widths).skip(1) {
            let _ = write!(out, "  {cell:>w$}");
        }
        out.push('\n');
    };
    push_row(header);
    for row in &rows {
        push_row([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn roc_auc_perfect_reversed_and_tied() {
        let labels = [false, false, true, true];
        // Both positives outscore both negatives: 4 of 4 pairs ordered.
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &labels), 1.0);
        // Both negatives outscore both positives: 0 of 4 pairs ordered.
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &labels), 0.0);
        // Every pair tied: 4 pairs * 1/2 / 4.
        assert_eq!(roc_auc(&[0.5; 4], &labels), 0.5);
    }

    #[test]
    fn roc_auc_partial_ties() {
        // Positives 0.8, 0.5; negatives 0.5, 0.2.
        // Pairs: (0.8,0.5)=1, (0.8,0.2)=1, (0.5,0.5)=1/2, (0.5,0.2)=1 -> 3.5/4.
        let auc = roc_auc(&[0.8, 0.5, 0.5, 0.2], &[true, true, false, false]);
        assert!(close(auc, 0.875), "{auc}");
    }

    #[test]
    fn roc_auc_treats_signed_zeros_as_tied() {
        // 0.0 and -0.0 are the same score, so the single pair counts 1/2.
        assert_eq!(roc_auc(&[0.0, -0.0], &[true, false]), 0.5);
    }

    #[test]
    fn undefined_cases_are_nan_not_panics() {
        assert!(roc_auc(&[], &[]).is_nan());
        assert!(pr_auc(&[], &[]).is_nan());
        assert!(roc_auc(&[0.2, 0.7], &[true, true]).is_nan());
        assert!(pr_auc(&[0.2, 0.7], &[false, false]).is_nan());
        assert!(log_loss(&[], &[]).is_nan());
        assert!(brier(&[], &[]).is_nan());
        assert!(roc_curve(&[0.3], &[true]).is_empty());
        assert!(pr_curve(&[], &[]).is_empty());
        assert!(best_f1_threshold(&[0.3], &[false]).0.is_nan());
        assert!(threshold_for_recall(&[], &[], 0.5).is_nan());
        assert!(threshold_for_precision(&[], &[], 0.5).is_nan());
        let m = evaluate(&[], &[]);
        assert_eq!(m.n_users, 0);
        assert!(m.roc_auc.is_nan() && m.pr_auc.is_nan() && m.churn_rate.is_nan());
    }

    #[test]
    fn mismatched_lengths_use_common_prefix() {
        // Only the first two pairs count: positive 0.9 above negative 0.1.
        let m = evaluate(&[0.9, 0.1, 0.5], &[true, false]);
        assert_eq!(m.n_users, 2);
        assert_eq!(m.roc_auc, 1.0);
        assert_eq!(m.churn_rate, 0.5);
    }

    #[test]
    fn average_precision_four_points() {
        // scikit-learn's docstring example. Sorted descending:
        // 0.8(+) 0.4(-) 0.35(+) 0.1(-), two positives.
        // 0.8: recall 1/2, precision 1/1 -> 1/2 * 1
        // 0.35: recall +1/2, precision 2/3 -> 1/2 * 2/3 = 1/3
        // AP = 1/2 + 1/3 = 5/6.
        let ap = pr_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]);
        assert!(close(ap, 5.0 / 6.0), "{ap}");
    }

    #[test]
    fn average_precision_groups_ties() {
        // One tie group {0.9+, 0.9-} then 0.1+. Two positives.
        // 0.9: recall 1/2 at precision 1/2 -> 1/4 (not 1/2, as an
        //      arbitrary positive-first order would give)
        // 0.1: recall +1/2 at precision 2/3 -> 1/3
        // AP = 1/4 + 1/3 = 7/12.
        let ap = pr_auc(&[0.9, 0.9, 0.1], &[true, false, true]);
        assert!(close(ap, 7.0 / 12.0), "{ap}");
    }

    #[test]
    fn log_loss_and_brier_by_hand() {
        let labels = [true, false, true, false];
        // -ln(0.5) for every row.
        assert!(close(log_loss(&[0.5; 4], &labels), std::f64::consts::LN_2));
        // (0.5)^2 for every row.
        assert!(close(brier(&[0.5; 4], &labels), 0.25));
        let perfect = [1.0, 0.0, 1.0, 0.0];
        assert_eq!(brier(&perfect, &labels), 0.0);
        // Clipping: -ln(1 - 1e-15) is about 1e-15, not 0 or NaN.
        let ll = log_loss(&perfect, &labels);
        assert!(ll > 0.0 && ll < 1e-14, "{ll}");
        // Confidently wrong: -ln(1e-15) = 15 ln 10 ~= 34.539.
        let wrong = log_loss(&[0.0], &[true]);
        assert!((wrong - 15.0 * std::f64::consts::LN_10).abs() < 1e-9, "{wrong}");
        // Mixed: labels (+,-) with scores (0.8, 0.4): (-ln 0.8 - ln 0.6) / 2.
        let mixed = log_loss(&[0.8, 0.4], &[true, false]);
        assert!(close(mixed, -(0.8f64.ln() + 0.6f64.ln()) / 2.0));
        // Brier for the same: ((0.2)^2 + (0.4)^2) / 2 = (0.04 + 0.16) / 2 = 0.1.
        assert!(close(brier(&[0.8, 0.4], &[true, false]), 0.1));
    }

    #[test]
    fn evaluate_combines_metrics() {
        let scores = [0.1, 0.4, 0.35, 0.8];
        let labels = [false, false, true, true];
        let m = evaluate(&scores, &labels);
        // Pairs (pos, neg): (0.35,0.1)=1 (0.35,0.4)=0 (0.8,*)=2 -> 3/4.
        assert!(close(m.roc_auc, 0.75));
        assert!(close(m.pr_auc, 5.0 / 6.0));
        assert_eq!(m.n_users, 4);
        assert_eq!(m.churn_rate, 0.5);
        assert_eq!(m.log_loss, log_loss(&scores, &labels));
        assert_eq!(m.brier, brier(&scores, &labels));
    }

    #[test]
    fn calibration_bins_by_hand() {
        // 4 bins of width 0.25. 0.1, 0.2 -> bin 0; 0.9, 1.0 -> bin 3 (1.0 is
        // folded into the last bin); bins 1 and 2 empty and omitted.
        let table = calibration_table(&[0.1, 0.2, 0.9, 1.0], &[false, true, true, true], 4);
        assert_eq!(table.len(), 2);
        assert_eq!((table[0].lower, table[0].upper, table[0].count), (0.0, 0.25, 2));
        // Mean of 0.1 and 0.2; one of two positive.
        assert!(close(table[0].mean_predicted, 0.15));
        assert_eq!(table[0].observed_rate, 0.5);
        assert_eq!((table[1].lower, table[1].upper, table[1].count), (0.75, 1.0, 2));
        assert!(close(table[1].mean_predicted, 0.95));
        assert_eq!(table[1].observed_rate, 1.0);
        assert!(calibration_table(&[0.5], &[true], 0).is_empty());
    }

    #[test]
    fn calibration_skips_nan_and_clamps() {
        let table = calibration_table(&[f64::NAN, -0.5, 1.5], &[true, false, true], 2);
        assert_eq!(table.len(), 2);
        assert_eq!((table[0].count, table[0].mean_predicted), (1, 0.0));
        assert_eq!((table[1].count, table[1].mean_predicted), (1, 1.0));
    }

    #[test]
    fn roc_curve_points() {
        // Descending: 0.9(+) 0.6(-) 0.6(+) 0.2(-); P = N = 2.
        // After 0.9: tp 1 fp 0 -> (0, 0.5); after the 0.6 tie: tp 2 fp 1 ->
        // (0.5, 1); after 0.2: (1, 1).
        let curve = roc_curve(&[0.6, 0.9, 0.2, 0.6], &[false, true, false, true]);
        assert_eq!(curve, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
    }

    #[test]
    fn pr_curve_points() {
        // Same data: after 0.9 recall 1/2 precision 1; after the 0.6 tie
        // recall 1 precision 2/3; after 0.2 recall 1 precision 2/4.
        let curve = pr_curve(&[0.6, 0.9, 0.2, 0.6], &[false, true, false, true]);
        assert_eq!(curve.len(), 4);
        assert_eq!(curve[0], (0.0, 1.0));
        assert_eq!(curve[1], (0.5, 1.0));
        assert!(curve[2].0 == 1.0 && close(curve[2].1, 2.0 / 3.0));
        assert_eq!(curve[3], (1.0, 0.5));
    }

    #[test]
    fn best_f1_by_hand() {
        // Descending: 0.9(+) 0.8(-) 0.7(+) 0.3(-) 0.2(+); P = 3.
        // F1 = 2TP / (TP + FP + P):
        // t=0.9: 2/(1+0+3) = 0.5      t=0.8: 2/(1+1+3) = 0.4
        // t=0.7: 4/(2+1+3) = 2/3      t=0.3: 4/(2+2+3) = 4/7
        // t=0.2: 6/(3+2+3) = 3/4  <- best, precision 3/5, recall 1.
        let (t, f1, p, r) = best_f1_threshold(&[0.9, 0.8, 0.7, 0.3, 0.2], &[true, false, true, false, true]);
        assert_eq!(t, 0.2);
        assert!(close(f1, 0.75) && close(p, 0.6) && close(r, 1.0));
    }

    #[test]
    fn best_f1_prefers_higher_threshold_on_ties() {
        // Descending 0.9(+) 0.8(-) 0.7(-) 0.6(+); P = 2.
        // t=0.9: 2/(1+0+2) = 2/3    t=0.8: 2/(1+1+2) = 1/2
        // t=0.7: 2/(1+2+2) = 2/5    t=0.6: 4/(2+2+2) = 2/3
        // 0.9 and 0.6 tie on F1 = 2/3; the higher threshold wins.
        let (t, f1, _, _) = best_f1_threshold(&[0.9, 0.8, 0.7, 0.6], &[true, false, false, true]);
        assert_eq!(t, 0.9);
        assert!(close(f1, 2.0 / 3.0));
    }

    #[test]
    fn threshold_for_recall_by_hand() {
        // Descending 0.9(+) 0.8(-) 0.7(+) 0.3(-) 0.2(+); P = 3.
        // Recall after each: 1/3, 1/3, 2/3, 2/3, 1.
        let s = [0.9, 0.8, 0.7, 0.3, 0.2];
        let l = [true, false, true, false, true];
        assert_eq!(threshold_for_recall(&s, &l, 0.3), 0.9);
        assert_eq!(threshold_for_recall(&s, &l, 0.5), 0.7);
        assert_eq!(threshold_for_recall(&s, &l, 1.0), 0.2);
        assert!(threshold_for_recall(&s, &l, 1.01).is_nan());
    }

    #[test]
    fn threshold_for_precision_by_hand() {
        // Same data; precision after each: 1, 1/2, 2/3, 2/4, 3/5.
        let s = [0.9, 0.8, 0.7, 0.3, 0.2];
        let l = [true, false, true, false, true];
        // >= 0.6: qualifying thresholds 0.9, 0.7, 0.2 -> smallest 0.2.
        assert_eq!(threshold_for_precision(&s, &l, 0.6), 0.2);
        // >= 0.65: 0.9 and 0.7 qualify (3/5 does not) -> 0.7.
        assert_eq!(threshold_for_precision(&s, &l, 0.65), 0.7);
        assert_eq!(threshold_for_precision(&s, &l, 1.0), 0.9);
        assert!(threshold_for_precision(&[0.5], &[false], 0.1).is_nan());
    }

    #[test]
    fn calibration_table_formats_aligned() {
        let bins = [
            CalibrationBin { lower: 0.0, upper: 0.1, count: 7, mean_predicted: 0.05, observed_rate: 0.0 },
            CalibrationBin { lower: 0.9, upper: 1.0, count: 12345, mean_predicted: 0.95, observed_rate: 1.0 },
        ];
        let text = format_calibration_table(&bins);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{text}");
        assert!(lines[1].starts_with("[0.00, 0.10)"), "{text}");
        assert!(lines[2].starts_with("[0.90, 1.00]"), "{text}");
        assert!(lines[2].contains("12345") && lines[2].contains("+0.0500"), "{text}");
    }

    #[test]
    fn large_input_is_fast_enough() {
        // A quadratic algorithm would take minutes here; this guards the
        // single-sort design rather than timing it precisely.
        let n: u64 = 1_000_000;
        let scores: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 1000.0).collect();
        let labels: Vec<bool> = (0..n).map(|i| (i * 7919) % 1000 > 600 || i % 7 == 0).collect();
        let start = std::time::Instant::now();
        let m = evaluate(&scores, &labels);
        assert!(m.roc_auc > 0.5 && m.pr_auc > 0.0);
        assert!(start.elapsed() < std::time::Duration::from_secs(20));
    }

    /// The definition: the fraction of (positive, negative) pairs ordered
    /// correctly, ties counting 1/2.
    fn pairwise_auc(scores: &[f64], labels: &[bool]) -> f64 {
        let mut total = 0.0;
        let mut pairs = 0u64;
        for (&sp, _) in scores.iter().zip(labels).filter(|(_, &l)| l) {
            for (&sn, _) in scores.iter().zip(labels).filter(|(_, &l)| !l) {
                pairs += 1;
                total += if sp > sn {
                    1.0
                } else if sp == sn {
                    0.5
                } else {
                    0.0
                };
            }
        }
        total / pairs as f64
    }

    proptest! {
        #[test]
        fn roc_auc_matches_pairwise_definition(
            // Scores from a 6-value grid so ties are common.
            rows in proptest::collection::vec((0u8..6, any::<bool>()), 0..40)
        ) {
            let scores: Vec<f64> = rows.iter().map(|&(s, _)| f64::from(s) / 5.0).collect();
            let labels: Vec<bool> = rows.iter().map(|&(_, l)| l).collect();
            let fast = roc_auc(&scores, &labels);
            let slow = pairwise_auc(&scores, &labels);
            if slow.is_nan() {
                prop_assert!(fast.is_nan());
            } else {
                prop_assert!((fast - slow).abs() < 1e-12, "fast {} slow {}", fast, slow);
            }
        }

        #[test]
        fn roc_curve_area_equals_roc_auc(
            rows in proptest::collection::vec((0u8..6, any::<bool>()), 2..40)
        ) {
            let scores: Vec<f64> = rows.iter().map(|&(s, _)| f64::from(s) / 5.0).collect();
            let labels: Vec<bool> = rows.iter().map(|&(_, l)| l).collect();
            let curve = roc_curve(&scores, &labels);
            let auc = roc_auc(&scores, &labels);
            if auc.is_nan() {
                prop_assert!(curve.is_empty());
            } else {
                // Trapezoids over tie groups are exactly the half-credit rule.
                let area: f64 = curve
                    .windows(2)
                    .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
                    .sum();
                prop_assert!((area - auc).abs() < 1e-12);
                prop_assert_eq!(curve.last().copied(), Some((1.0, 1.0)));
            }
        }
    }
}
