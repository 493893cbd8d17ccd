//! Training: standardise, fit L2-regularised logistic regression (linfa-logistic) with the L2
//! strength chosen on a by-user validation split, correct for class rebalancing, pick thresholds.

use std::time::Instant;

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2, Axis, ShapeBuilder};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::artifact::{ModelArtifact, Scaler, Thresholds, TierThreshold, TrainingInfo, FORMAT_VERSION};
use super::dataset::Dataset;
use super::metrics::{self, Metrics};
use super::score::{transform, Scorer};
use crate::features::FeatureSpec;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training needs both churned and retained users; the {0} split has only one class")]
    OneClass(&'static str),
    #[error("logistic regression failed: {0}")]
    Fit(String),
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Per-row L2 strengths to try first (the penalty is `l2 * rows / 2 * |w|^2`). With two or
    /// more, the search extends the grid tenfold past whichever edge holds the best validation
    /// log loss, until the best is inside the grid or [`L2_LIMITS`] is reached.
    pub l2_grid: Vec<f64>,
    pub validation_share: f64,
    pub seed: u64,
    pub max_iterations: u64,
    /// The L2 search fits on at most this many training rows (a seeded sample); the final fit
    /// uses every row.
    pub search_rows: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            l2_grid: vec![1e-4, 1e-3, 1e-2, 1e-1],
            validation_share: 0.2,
            seed: 42,
            max_iterations: 100,
            search_rows: 200_000,
        }
    }
}

/// The L2 search never goes below or above these per-row strengths.
pub const L2_LIMITS: (f64, f64) = (1e-8, 1e3);

/// Fewer churned rows than this in the validation split make its choices (L2, tiers) and its
/// metrics unreliable; training warns.
pub const FEW_VALIDATION_POSITIVES: usize = 30;

/// What training produced besides the artifact: the validation rows' scores, for reports.
pub struct TrainOutcome {
    pub artifact: ModelArtifact,
    pub validation_scores: Vec<f64>,
    pub validation_labels: Vec<bool>,
    /// Things the person training should know (few validation positives, the L2 search at its
    /// limit).
    pub warnings: Vec<String>,
}

/// Metadata the caller knows (file, cutoffs...) and training fills in the rest.
pub struct TrainContext {
    pub events_file: String,
    pub data_from: String,
    pub data_to: String,
    pub cutoffs: Vec<String>,
    pub horizon: String,
    pub active_within: Option<String>,
    pub label_source: String,
}

pub fn train(
    spec: &FeatureSpec,
    data: &Dataset,
    ctx: TrainContext,
    opt: &TrainOptions,
) -> Result<TrainOutcome, TrainError> {
    let started = Instant::now();
    let defs = spec.features();
    let p = defs.len();
    let n = data.rows();
    let transforms: Vec<_> = defs.iter().map(|d| d.transform).collect();
    let mut z = Array2::<f64>::zeros((n, p));
    for (i, mut row) in z.axis_iter_mut(Axis(0)).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = transform(transforms[j], data.row(i)[j]);
        }
    }
    let salt = format!("churnguard-split-{}", opt.seed);
    let is_valid: Vec<bool> =
        data.user.iter().map(|&u| crate::hash::stable_unit(&salt, &u.to_string()) < opt.validation_share).collect();
    let train_rows: Vec<usize> = (0..n).filter(|&i| !is_valid[i]).collect();
    let valid_rows: Vec<usize> = (0..n).filter(|&i| is_valid[i]).collect();
    let scaler = fit_scaler(&z, &train_rows, transforms);
    standardise(&mut z, &scaler);

    let y_train: Vec<bool> = train_rows.iter().map(|&i| data.y[i]).collect();
    let y_valid: Vec<bool> = valid_rows.iter().map(|&i| data.y[i]).collect();
    for (name, ys) in [("training", &y_train), ("validation", &y_valid)] {
        if ys.iter().all(|y| *y) || ys.iter().all(|y| !*y) {
            return Err(TrainError::OneClass(name));
        }
    }
    let mut search_rows = train_rows.clone();
    if search_rows.len() > opt.search_rows {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opt.seed ^ 0x5eed);
        search_rows.shuffle(&mut rng);
        search_rows.truncate(opt.search_rows);
        search_rows.sort_unstable();
    }
    let y_search: Vec<bool> = search_rows.iter().map(|&i| data.y[i]).collect();
    let z_search = z.select(Axis(0), &search_rows);
    let z_valid = z.select(Axis(0), &valid_rows);

    let mut warnings = Vec::new();
    let valid_pos = y_valid.iter().filter(|y| **y).count();
    if valid_pos < FEW_VALIDATION_POSITIVES {
        warnings.push(format!(
            "the validation split has only {valid_pos} churned row(s) of {}: the L2 strength, the tier thresholds and the validation metrics rest on them and are unreliable (use more data, more --cutoffs or a longer --horizon)",
            valid_rows.len()
        ));
    }
    // Choose L2 by validation log loss: it rewards calibrated probabilities, which the tiers use.
    // The grid grows past an edge that holds the best, so the choice is never an edge by default.
    let mut grid: Vec<(f64, f64)> = Vec::new();
    let mut best: Option<(f64, f64, Vec<f64>, f64)> = None;
    let mut try_l2 = |l2: f64, grid: &mut Vec<(f64, f64)>| -> Result<(), TrainError> {
        let (w, b) = fit_balanced(&z_search, &y_search, l2, opt)?;
        let scores = predict(&z_valid, &w, b);
        let ll = metrics::log_loss(&scores, &y_valid);
        grid.push((l2, ll));
        if best.as_ref().is_none_or(|(_, bl, _, _)| ll < *bl) {
            best = Some((l2, ll, w, b));
        }
        Ok(())
    };
    for &l2 in &opt.l2_grid {
        try_l2(l2, &mut grid)?;
    }
    if grid.len() >= 2 {
        loop {
            grid.sort_by(|a, b| a.0.total_cmp(&b.0));
            // The first of equal losses, as the search above keeps it.
            let best_ll = grid.iter().map(|g| g.1).fold(f64::INFINITY, f64::min);
            let at = grid.iter().position(|g| g.1 == best_ll).unwrap_or(0);
            let next = if at + 1 == grid.len() {
                grid[at].0 * 10.0
            } else if at == 0 {
                grid[0].0 / 10.0
            } else {
                break;
            };
            if !(L2_LIMITS.0..=L2_LIMITS.1).contains(&next) || !best_ll.is_finite() {
                warnings.push(format!(
                    "the L2 search stopped at its limit, {:e}, with the validation log loss still falling: the features may carry little signal here",
                    grid[at].0
                ));
                break;
            }
            try_l2(next, &mut grid)?;
        }
    }
    let Some((l2, _, w_tr, b_tr)) = best else {
        return Err(TrainError::Fit("empty l2 grid".into()));
    };
    let valid_scores = predict(&z_valid, &w_tr, b_tr);
    let validation_users = {
        let mut u: Vec<u32> = valid_rows.iter().map(|&i| data.user[i]).collect();
        u.sort_unstable();
        u.dedup();
        u.len()
    };
    let validation = metrics::evaluate(&valid_scores, &y_valid).with_users(validation_users);
    let thresholds = choose_thresholds(&valid_scores, &y_valid);

    // Final fit on all rows with the chosen strength.
    let all_y = data.y.clone();
    let (coefficients, intercept) = fit_balanced(&z, &all_y, l2, opt)?;

    let created = chrono::Utc::now();
    let mut artifact = ModelArtifact {
        format_version: FORMAT_VERSION,
        model_version: String::new(),
        created_at: created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        spec: spec.clone(),
        spec_fingerprint: spec.fingerprint(),
        feature_names: defs.iter().map(|d| d.name.clone()).collect(),
        scaler,
        coefficients,
        intercept,
        thresholds,
        training: TrainingInfo {
            events_file: ctx.events_file,
            data_from: ctx.data_from,
            data_to: ctx.data_to,
            cutoffs: ctx.cutoffs,
            horizon: ctx.horizon,
            active_within: ctx.active_within,
            label_source: ctx.label_source,
            rows: n,
            users: data.distinct_users(),
            churn_rate: data.churn_rate(),
            l2,
            l2_grid: grid,
            validation,
            validation_rows: valid_rows.len(),
            seed: opt.seed,
            train_seconds: started.elapsed().as_secs_f64(),
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    };
    artifact.model_version = model_version(&artifact, &created);
    // Validation scores through the serving scorer from the raw vectors, by the model fitted
    // without those rows: the report is an honest hold-out view of what serving will see.
    let mut holdout = artifact.clone();
    holdout.coefficients = w_tr;
    holdout.intercept = b_tr;
    let scorer = Scorer::new(&holdout);
    let validation_scores = valid_rows.iter().map(|&i| scorer.score(data.row(i))).collect();
    Ok(TrainOutcome { artifact, validation_scores, validation_labels: y_valid, warnings })
}

fn model_version(a: &ModelArtifact, at: &chrono::DateTime<chrono::Utc>) -> String {
    let coef = serde_json::to_string(&(&a.coefficients, a.intercept, &a.spec_fingerprint)).unwrap_or_default();
    let h = crate::hash::stable_u64("model", &coef);
    format!("cg-{}-{:08x}", at.format("%Y%m%d"), h >> 32)
}

fn fit_scaler(z: &Array2<f64>, rows: &[usize], transforms: Vec<crate::features::Transform>) -> Scaler {
    let p = z.ncols();
    let (mut mean, mut std) = (vec![0.0; p], vec![1.0; p]);
    let n = rows.len().max(1) as f64;
    for j in 0..p {
        let col = z.column(j);
        let m = rows.iter().map(|&i| col[i]).sum::<f64>() / n;
        let var = rows.iter().map(|&i| (col[i] - m).powi(2)).sum::<f64>() / n;
        mean[j] = m;
        // A constant feature standardises to 0 everywhere and so gets a zero coefficient.
        std[j] = if var.sqrt() > 1e-9 { var.sqrt() } else { 1.0 };
    }
    Scaler { transforms, mean, std }
}

fn standardise(z: &mut Array2<f64>, s: &Scaler) {
    for mut row in z.axis_iter_mut(Axis(0)) {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (*v - s.mean[j]) / s.std[j];
        }
    }
}

fn predict(z: &Array2<f64>, w: &[f64], b: f64) -> Vec<f64> {
    let w = Array1::from(w.to_vec());
    z.dot(&w).iter().map(|v| super::score::sigmoid(v + b)).collect()
}

/// Fit on a class-balanced resample (the minority class drawn again with replacement until both
/// classes are equal), then shift the intercept back to the true base rate so the output is a
/// calibrated P(churn) (King and Zeng's prior correction).
fn fit_balanced(z: &Array2<f64>, y: &[bool], l2: f64, opt: &TrainOptions) -> Result<(Vec<f64>, f64), TrainError> {
    let pos: Vec<usize> = (0..y.len()).filter(|&i| y[i]).collect();
    let neg: Vec<usize> = (0..y.len()).filter(|&i| !y[i]).collect();
    let (minority, majority) = if pos.len() < neg.len() { (&pos, &neg) } else { (&neg, &pos) };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opt.seed);
    let mut idx: Vec<usize> = majority.iter().chain(minority.iter()).copied().collect();
    for _ in 0..majority.len() - minority.len() {
        idx.push(minority[rng.random_range(0..minority.len())]);
    }
    idx.shuffle(&mut rng);
    // Column-major, so linfa's gradient (X^T r) walks memory in order: about 2x faster.
    let mut xb = Array2::<f64>::zeros((idx.len(), z.ncols()).f());
    xb.assign(&z.select(Axis(0), &idx));
    let yb: Array1<bool> = idx.iter().map(|&i| y[i]).collect();
    let rows = idx.len() as f64;
    let ds = linfa::Dataset::new(xb, yb);
    let model = LogisticRegression::default()
        .alpha(l2 * rows)
        .max_iterations(opt.max_iterations)
        // The loss is a sum over rows, so the gradient scales with them.
        .gradient_tolerance(1e-4 * rows)
        .fit(&ds)
        .map_err(|e| TrainError::Fit(e.to_string()))?;
    // linfa-logistic models P(the class it calls positive): the more frequent one, or the first
    // seen on a tie. Flip so the coefficients always describe P(churned).
    let sign = if model.labels().pos.class { 1.0 } else { -1.0 };
    let w: Vec<f64> = model.params().iter().map(|v| v * sign).collect();
    let b_balanced = model.intercept() * sign;
    let base_rate = pos.len() as f64 / y.len() as f64;
    let b = b_balanced + (base_rate / (1.0 - base_rate)).ln();
    Ok((w, b))
}

/// Tiers from validation scores: `medium` at the F1-optimal threshold, `high` where the top of
/// the ranking holds a third of the churners (so high is precise and medium casts the wider net).
fn choose_thresholds(scores: &[f64], labels: &[bool]) -> Thresholds {
    let (decision, _, _, _) = metrics::best_f1_threshold(scores, labels);
    let high = metrics::threshold_for_recall(scores, labels, 1.0 / 3.0).max(decision);
    let tiers = if high > decision {
        vec![
            TierThreshold { name: "high".into(), min_score: high },
            TierThreshold { name: "medium".into(), min_score: decision },
        ]
    } else {
        vec![TierThreshold { name: "high".into(), min_score: decision }]
    };
    Thresholds { decision, tiers }
}

/// Validation metrics of a model on a dataset, through the serving scorer.
pub fn evaluate(artifact: &ModelArtifact, data: &Dataset) -> (Metrics, Vec<f64>) {
    let scorer = Scorer::new(artifact);
    let scores: Vec<f64> = (0..data.rows()).map(|i| scorer.score(data.row(i))).collect();
    (metrics::evaluate(&scores, &data.y), scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// P(churn) must mean churn whichever class is the majority and whatever order rows come in.
    #[test]
    fn fitted_probability_is_probability_of_churn() {
        for churn_is_majority in [false, true] {
            // One feature; churners have high values. 20% or 80% churners.
            let n = 500;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let mut xs = Vec::new();
            let mut ys = Vec::new();
            for i in 0..n {
                let churned = if churn_is_majority { i % 5 != 0 } else { i % 5 == 0 };
                let x: f64 = if churned { 1.0 } else { -1.0 } + rng.random_range(-1.5..1.5);
                xs.push(x);
                ys.push(churned);
            }
            let z = Array2::from_shape_vec((n, 1), xs).unwrap();
            let (w, b) = fit_balanced(&z, &ys, 1e-4, &TrainOptions::default()).unwrap();
            assert!(w[0] > 0.0, "higher x means churn, so the coefficient must be positive: {w:?}");
            let p = predict(&array![[2.5], [-2.5]], &w, b);
            assert!(p[0] > 0.8 && p[1] < 0.2, "{p:?}");
            // Calibrated to the base rate: mean predicted close to observed churn rate.
            let all = predict(&z, &w, b);
            let mean = all.iter().sum::<f64>() / n as f64;
            let rate = ys.iter().filter(|y| **y).count() as f64 / n as f64;
            assert!((mean - rate).abs() < 0.05, "mean {mean} vs rate {rate}");
        }
    }

    /// Noise features and labels: strong regularisation is best, at the edge of the old fixed grid
    /// (1e-4..1e-1). The search must try past 1e-1 and end with the best inside the grid (or say
    /// it stopped at its limit); few validation positives are warned about; validation rows and
    /// users are counted apart.
    #[test]
    fn l2_search_extends_past_the_edge_and_counts_rows_and_users() {
        let spec = FeatureSpec::default();
        let p = spec.features().len();
        let users = 600u32;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (mut x, mut y, mut user, mut cutoff) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for u in 0..users {
            for c in 0..2 {
                for _ in 0..p {
                    x.push(rng.random_range(0.5..10.0));
                }
                y.push(rng.random_bool(0.06));
                user.push(u);
                cutoff.push(c);
            }
        }
        let rows = y.len();
        let data = Dataset {
            n_features: p,
            x,
            y,
            user,
            cutoff,
            unlabelled: 0,
            labels_unmatched: 0,
            population: rows,
            data_end: (0, String::new()),
        };
        let ctx = TrainContext {
            events_file: String::new(),
            data_from: String::new(),
            data_to: String::new(),
            cutoffs: vec![],
            horizon: "30d".into(),
            active_within: None,
            label_source: String::new(),
        };
        let out = train(&spec, &data, ctx, &TrainOptions::default()).unwrap();
        let t = &out.artifact.training;
        assert!(t.l2 >= 0.1 && t.l2_grid.iter().any(|g| g.0 > 0.1), "chose {} from {:?}", t.l2, t.l2_grid);
        assert!(t.l2_grid.windows(2).all(|w| w[0].0 < w[1].0), "{:?}", t.l2_grid);
        let best = t.l2_grid.iter().position(|g| g.0 == t.l2).unwrap();
        let at_edge = best == 0 || best + 1 == t.l2_grid.len();
        assert_eq!(
            at_edge,
            out.warnings.iter().any(|w| w.contains("the L2 search stopped at its limit")),
            "{:?}",
            out.warnings
        );
        assert!(out.warnings.iter().any(|w| w.contains("churned row(s) of")), "{:?}", out.warnings);
        let v = &t.validation;
        assert_eq!(v.n_rows, t.validation_rows);
        assert_eq!(v.n_rows, 2 * v.n_users, "two rows per user");
    }

    #[test]
    fn constant_feature_gets_zero_weight_and_does_not_break_fit() {
        let n = 200;
        let mut v = Vec::new();
        let mut ys = Vec::new();
        for i in 0..n {
            let churned = i % 3 == 0;
            v.push(if churned { 1.0 } else { 0.0 } + (i % 7) as f64 * 0.1);
            v.push(5.0);
            ys.push(churned);
        }
        let mut z = Array2::from_shape_vec((n, 2), v).unwrap();
        let rows: Vec<usize> = (0..n).collect();
        let s = fit_scaler(&z, &rows, vec![crate::features::Transform::Identity; 2]);
        assert_eq!(s.std[1], 1.0);
        standardise(&mut z, &s);
        let (w, _) = fit_balanced(&z, &ys, 1e-3, &TrainOptions::default()).unwrap();
        assert_eq!(w[1], 0.0);
        assert!(w[0] > 0.0);
    }
}
