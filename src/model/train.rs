//! Training: transform and standardise the rows in place, fit L2-regularised logistic regression
//! (linfa-logistic) by maximum likelihood with the L2 strength chosen on a by-user validation
//! split, pick thresholds.
//!
//! Memory: the raw rows are consumed while they are transformed into the column-major matrix the
//! fitter reads, and every later step (L2 search sample, validation rows, final fit) is a view of
//! that one matrix, so training never holds a second copy of the rows.

use std::time::Instant;

use linfa::prelude::*;
use linfa_logistic::LogisticRegression;
use ndarray::{s, Array2, ArrayView1, ArrayView2, ShapeBuilder};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::artifact::{ModelArtifact, Scaler, Thresholds, TierThreshold, TrainingInfo, FORMAT_VERSION};
use super::dataset::Dataset;
use super::metrics::{self, Metrics};
// Coefficients on standardised features and the intercept, oriented to give P(churned): the
// point a Newton step moves.
use super::newton::Point as Fitted;
use super::score::{transform, Scorer};
use crate::features::FeatureSpec;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training needs both churned and retained users; the {0} split has only one class")]
    OneClass(&'static str),
    #[error("the rows have {rows} features but the spec has {spec}")]
    FeatureCount { rows: usize, spec: usize },
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
    /// Seed of the train/validation split and of the L2 search's row sample.
    pub seed: u64,
    pub max_iterations: u64,
    /// The L2 search fits on at most this many training rows (a seeded sample); the final fit
    /// uses every row. The penalty is per row, so a strength means the same on the sample as on
    /// all rows.
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

/// Where training spent its time, for the person training and for docs/PERFORMANCE.md.
#[derive(Debug, Clone, Default)]
pub struct TrainTimings {
    /// Split, transform, standardise.
    pub prepare_seconds: f64,
    pub search_seconds: f64,
    pub search_fits: usize,
    pub search_rows: usize,
    pub final_fit_seconds: f64,
    /// Norm of the mean loss's gradient at the final fit: below `final_fit_tolerance` the fit
    /// converged, above it L-BFGS stopped at its iteration cap.
    pub final_fit_gradient: f64,
    pub final_fit_tolerance: f64,
}

/// What training produced besides the artifact: the validation rows' scores, for reports.
pub struct TrainOutcome {
    pub artifact: ModelArtifact,
    pub validation_scores: Vec<f64>,
    pub validation_labels: Vec<bool>,
    /// Things the person training should know (few validation positives, the L2 search at its
    /// limit).
    pub warnings: Vec<String>,
    pub timings: TrainTimings,
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

/// Train on `data`, which is consumed: its rows are transformed where they lie rather than copied.
pub fn train(
    spec: &FeatureSpec,
    data: Dataset,
    ctx: TrainContext,
    opt: &TrainOptions,
) -> Result<TrainOutcome, TrainError> {
    let started = Instant::now();
    let defs = spec.features();
    let p = defs.len();
    let n = data.rows();
    if data.n_features != p || data.x.len() != n * p {
        return Err(TrainError::FeatureCount { rows: data.n_features, spec: p });
    }
    let transforms: Vec<_> = defs.iter().map(|d| d.transform).collect();
    let users = data.distinct_users();
    let churn_rate = data.churn_rate();

    let salt = format!("churnguard-split-{}", opt.seed);
    let is_valid: Vec<bool> =
        data.user.iter().map(|&u| crate::hash::stable_unit(&salt, &u.to_string()) < opt.validation_share).collect();
    let train_rows: Vec<usize> = (0..n).filter(|&i| !is_valid[i]).collect();
    let valid_rows: Vec<usize> = (0..n).filter(|&i| is_valid[i]).collect();
    for (name, rows) in [("training", &train_rows), ("validation", &valid_rows)] {
        let churned = rows.iter().filter(|&&i| data.y[i]).count();
        if churned == 0 || churned == rows.len() {
            return Err(TrainError::OneClass(name));
        }
    }
    let mut search = train_rows.clone();
    if search.len() > opt.search_rows {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opt.seed ^ 0x5eed);
        search.shuffle(&mut rng);
        search.truncate(opt.search_rows);
        search.sort_unstable();
    }
    // The matrix holds the search sample first, then the other training rows, then validation:
    // each of the three uses (search, scaler and validation, final fit) is then one contiguous
    // block of rows, a view rather than a copy.
    let mut in_search = vec![false; n];
    for &i in &search {
        in_search[i] = true;
    }
    let order: Vec<usize> = search
        .iter()
        .copied()
        .chain(train_rows.iter().copied().filter(|&i| !in_search[i]))
        .chain(valid_rows.iter().copied())
        .collect();
    drop(in_search);
    let (n_search, n_train) = (search.len(), train_rows.len());
    let mut dest = vec![0usize; n];
    for (at, &i) in order.iter().enumerate() {
        dest[i] = at;
    }
    let y: Vec<bool> = order.iter().map(|&i| data.y[i]).collect();
    drop(order);
    let validation_users = {
        let mut u: Vec<u32> = valid_rows.iter().map(|&i| data.user[i]).collect();
        u.sort_unstable();
        u.dedup();
        u.len()
    };
    // The hold-out scores for the report go through the serving scorer from raw vectors, so
    // those rows (a fifth) are kept raw.
    let valid_raw: Vec<f64> = valid_rows.iter().flat_map(|&i| data.row(i).iter().copied()).collect();
    let n_valid = valid_rows.len();
    drop((train_rows, valid_rows, search, is_valid));

    let Dataset { x, .. } = data;
    let mut z = transform_column_major(x, &dest, &transforms)?;
    drop(dest);
    let scaler = fit_scaler(&z, n_train, transforms);
    standardise(&mut z, &scaler);
    let mut timings = TrainTimings {
        prepare_seconds: started.elapsed().as_secs_f64(),
        search_rows: n_search,
        ..TrainTimings::default()
    };

    let z_search = z.slice(s![..n_search, ..]);
    let y_search = ArrayView1::from(&y[..n_search]);
    let z_valid = z.slice(s![n_train.., ..]);
    let y_valid = &y[n_train..];

    let mut warnings = Vec::new();
    let valid_pos = y_valid.iter().filter(|y| **y).count();
    if valid_pos < FEW_VALIDATION_POSITIVES {
        warnings.push(format!(
            "the validation split has only {valid_pos} churned row(s) of {n_valid}: the L2 strength, the tier thresholds and the validation metrics rest on them and are unreliable (use more data, more --cutoffs or a longer --horizon)"
        ));
    }
    // Choose L2 by validation log loss: it rewards calibrated probabilities, which the tiers use.
    // The grid grows past an edge that holds the best, so the choice is never an edge by default.
    let search_started = Instant::now();
    // (l2, validation log loss, fit), in the order tried.
    let mut tried: Vec<(f64, f64, Fitted)> = Vec::new();
    // The first fit starts from the base rate alone (zero weights, intercept at its log odds).
    let search_churned = y_search.iter().filter(|v| **v).count() as f64 / n_search.max(1) as f64;
    let log_odds = (search_churned / (1.0 - search_churned)).ln();
    let base = Fitted { w: vec![0.0; p], b: if log_odds.is_finite() { log_odds } else { 0.0 } };
    let try_l2 = |l2: f64, tried: &mut Vec<(f64, f64, Fitted)>| -> Result<(), TrainError> {
        // Start from the fit at the nearest strength already tried: the optimum moves little
        // between neighbouring strengths, so L-BFGS needs far fewer steps than from zero.
        let start = tried
            .iter()
            .min_by(|a, b| (a.0.ln() - l2.ln()).abs().total_cmp(&(b.0.ln() - l2.ln()).abs()))
            .map_or(&base, |t| &t.2);
        let f = fit(z_search, y_search, l2, opt, Some(start))?;
        let ll = metrics::log_loss(&predict(z_valid, &f), y_valid);
        tried.push((l2, ll, f));
        Ok(())
    };
    // Strongest first, a regularisation path: a strongly penalised fit is well conditioned and
    // quick, and each weaker one starts from its neighbour's optimum.
    let mut first = opt.l2_grid.clone();
    first.sort_by(|a, b| b.total_cmp(a));
    for l2 in first {
        try_l2(l2, &mut tried)?;
    }
    if tried.len() >= 2 {
        loop {
            let mut grid: Vec<(f64, f64)> = tried.iter().map(|t| (t.0, t.1)).collect();
            grid.sort_by(|a, b| a.0.total_cmp(&b.0));
            let Some((at, next)) = extend_grid(&grid) else {
                break;
            };
            let best_ll = grid[at].1;
            if !(L2_LIMITS.0..=L2_LIMITS.1).contains(&next) || !best_ll.is_finite() {
                warnings.push(format!(
                    "the L2 search stopped at its limit, {:e}, with the validation log loss still falling: the features may carry little signal here",
                    grid[at].0
                ));
                break;
            }
            try_l2(next, &mut tried)?;
        }
    }
    timings.search_fits = tried.len();
    timings.search_seconds = search_started.elapsed().as_secs_f64();
    let mut grid: Vec<(f64, f64)> = tried.iter().map(|t| (t.0, t.1)).collect();
    let Some((l2, _, held_out)) = chosen(&grid).map(|i| tried.swap_remove(i)) else {
        return Err(TrainError::Fit("empty l2 grid".into()));
    };
    grid.sort_by(|a, b| a.0.total_cmp(&b.0));
    drop(tried);
    let valid_scores = predict(z_valid, &held_out);
    let validation = metrics::evaluate(&valid_scores, y_valid).with_users(validation_users);
    let thresholds = choose_thresholds(&valid_scores, y_valid);
    let validation_labels = y_valid.to_vec();

    // Final fit on all rows with the chosen strength, from the search's optimum.
    let final_started = Instant::now();
    let last = fit(z.view(), ArrayView1::from(&y[..]), l2, opt, Some(&held_out))?;
    timings.final_fit_seconds = final_started.elapsed().as_secs_f64();
    timings.final_fit_gradient = gradient_norm(z.view(), &y, l2, &last);
    timings.final_fit_tolerance = gradient_tolerance(n, p);
    let Fitted { w: coefficients, b: intercept } = last;
    drop(z);

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
            users,
            churn_rate,
            l2,
            l2_grid: grid,
            validation,
            validation_rows: n_valid,
            seed: opt.seed,
            train_seconds: started.elapsed().as_secs_f64(),
            engine_version: env!("CARGO_PKG_VERSION").to_string(),
        },
    };
    artifact.model_version = model_version(&artifact, &created);
    // Validation scores through the serving scorer from the raw vectors, by the model fitted
    // without those rows: the report is an honest hold-out view of what serving will see.
    let mut holdout = artifact.clone();
    holdout.coefficients = held_out.w;
    holdout.intercept = held_out.b;
    let scorer = Scorer::new(&holdout);
    let validation_scores = valid_raw.chunks_exact(p.max(1)).map(|row| scorer.score(row)).collect();
    Ok(TrainOutcome { artifact, validation_scores, validation_labels, warnings, timings })
}

fn model_version(a: &ModelArtifact, at: &chrono::DateTime<chrono::Utc>) -> String {
    let coef = serde_json::to_string(&(&a.coefficients, a.intercept, &a.spec_fingerprint)).unwrap_or_default();
    let h = crate::hash::stable_u64("model", &coef);
    format!("cg-{}-{:08x}", at.format("%Y%m%d"), h >> 32)
}

/// Validation log losses this close (relative) tie. A hundred-thousandth of the loss is far below
/// what a validation split can tell apart and changes no decision; without a margin, fits that
/// converge tightly lead the search down to its limit on differences in the seventh digit, as
/// the loss flattens towards no penalty at all. On a tie the stronger penalty, the safer model
/// on new data, is kept.
const LOSS_TIE: f64 = 1e-5;

/// Whether validation log loss `a` is lower than `b` by more than a tie.
fn better(a: f64, b: f64) -> bool {
    a < b - LOSS_TIE * b.abs()
}

/// Which of the strengths tried (with their validation log losses) training keeps: the strongest
/// whose loss ties with the lowest.
fn chosen(tried: &[(f64, f64)]) -> Option<usize> {
    let lowest = tried.iter().map(|t| t.1).fold(f64::INFINITY, f64::min);
    let mut best: Option<usize> = None;
    for (i, t) in tried.iter().enumerate() {
        let ties = !better(lowest, t.1) || !lowest.is_finite();
        if ties && best.is_none_or(|b| t.0 > tried[b].0) {
            best = Some(i);
        }
    }
    best
}

/// Where the L2 search goes next, given the strengths tried (sorted, with their validation log
/// losses): tenfold past an edge that holds the best loss and is better than its neighbour by
/// more than a tie ([`LOSS_TIE`]), as `(index of that edge, next strength)`; None when the best
/// is inside. A tie says the strengths are indistinguishable, not that the loss is still falling.
fn extend_grid(grid: &[(f64, f64)]) -> Option<(usize, f64)> {
    let last = grid.len().checked_sub(1).filter(|&l| l >= 1)?;
    let best = grid.iter().map(|g| g.1).fold(f64::INFINITY, f64::min);
    if grid[last].1 == best && better(grid[last].1, grid[last - 1].1) {
        Some((last, grid[last].0 * 10.0))
    } else if grid[0].1 == best && better(grid[0].1, grid[1].1) {
        Some((0, grid[0].0 / 10.0))
    } else if !best.is_finite() {
        // Every loss infinite or NaN: nothing to compare; the caller stops with a warning.
        Some((0, L2_LIMITS.1 * 10.0))
    } else {
        None
    }
}

/// Rows this many at a time are moved out of the raw buffer before it is shrunk: small enough
/// that the raw and transformed copies overlap by only a few MB, large enough that the shrinks
/// (each a `realloc`) cost nothing measurable.
const TRANSFORM_CHUNK_ROWS: usize = 16_384;

/// The transformed features as an `n x p` column-major matrix, row `i` of `x` going to row
/// `dest[i]`. Column-major because linfa's gradient (`X^T r`) walks the columns: row-major makes
/// every column a strided pass over the whole matrix, several times slower. The raw buffer is
/// consumed from its end and shrunk as it goes, and the matrix's zeroed pages are only mapped as
/// they are written, so the two are never resident in full at once.
fn transform_column_major(
    mut x: Vec<f64>,
    dest: &[usize],
    transforms: &[crate::features::Transform],
) -> Result<Array2<f64>, TrainError> {
    let n = dest.len();
    let p = transforms.len();
    let mut out = vec![0.0; n * p];
    let mut end = n;
    while end > 0 {
        let start = end.saturating_sub(TRANSFORM_CHUNK_ROWS);
        for (row, &d) in x[start * p..end * p].chunks_exact(p).zip(&dest[start..end]) {
            for (j, (&v, &t)) in row.iter().zip(transforms).enumerate() {
                out[j * n + d] = transform(t, v);
            }
        }
        x.truncate(start * p);
        x.shrink_to_fit();
        end = start;
    }
    Array2::from_shape_vec((n, p).f(), out).map_err(|e| TrainError::Fit(e.to_string()))
}

/// Mean and standard deviation of each transformed feature over the first `n_train` rows (the
/// training rows).
fn fit_scaler(z: &Array2<f64>, n_train: usize, transforms: Vec<crate::features::Transform>) -> Scaler {
    let p = z.ncols();
    let (mut mean, mut std) = (vec![0.0; p], vec![1.0; p]);
    let n = n_train.max(1) as f64;
    for j in 0..p {
        let col = z.slice(s![..n_train, j]);
        let m = col.sum() / n;
        let var = col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
        mean[j] = m;
        // A constant feature standardises to 0 everywhere and so gets a zero coefficient.
        std[j] = if var.sqrt() > 1e-9 { var.sqrt() } else { 1.0 };
    }
    Scaler { transforms, mean, std }
}

fn standardise(z: &mut Array2<f64>, s: &Scaler) {
    for (j, mut col) in z.columns_mut().into_iter().enumerate() {
        let (m, sd) = (s.mean[j], s.std[j]);
        col.mapv_inplace(|v| (v - m) / sd);
    }
}

/// P(churned) per row. Column by column, so a column-major matrix is read in memory order.
fn predict(z: ArrayView2<f64>, f: &Fitted) -> Vec<f64> {
    super::newton::margins(z, f).iter().map(|v| super::score::sigmoid(*v)).collect()
}

/// When L-BFGS stops: the norm of the mean loss's gradient, a tenth of its sampling noise.
///
/// At the population optimum the gradient of the mean loss over `rows` rows is not zero but noise
/// of norm about `sqrt(features / (4 rows))` (each standardised feature times a residual of
/// variance at most 1/4). Optimising far below that noise moves the coefficients by less than
/// resampling the rows would, yet on correlated features it costs most of L-BFGS's iterations.
/// Never tighter than the 1e-4 used before, so small data fits as before or looser.
fn gradient_tolerance(rows: usize, features: usize) -> f64 {
    let noise = (features.max(1) as f64 / (4.0 * rows.max(1) as f64)).sqrt();
    (0.1 * noise).max(1e-4)
}

/// Norm of the gradient of the mean penalised log loss at `f`: how far the fit is from the
/// optimum (L-BFGS stops below [`gradient_tolerance`], or at its iteration cap).
fn gradient_norm(z: ArrayView2<f64>, y: &[bool], l2: f64, f: &Fitted) -> f64 {
    let n = z.nrows().max(1) as f64;
    let r: Vec<f64> = predict(z, f).iter().zip(y).map(|(p, &y)| p - if y { 1.0 } else { 0.0 }).collect();
    // The summed loss's gradient with the penalty `l2 * n` is n times the mean's.
    super::newton::gradient(z, &r, l2 * n, f).iter().map(|g| (g / n).powi(2)).sum::<f64>().sqrt()
}

/// Maximum-likelihood L2 logistic regression on the rows as they are: no resampling and no
/// intercept correction. The unweighted fit of a model with an intercept matches the mean
/// prediction to the base rate, so its output is P(churned) directly; a balanced resample with
/// King and Zeng's prior correction only approximates that, and costs a copy of the rows.
/// `start` warm-starts L-BFGS.
fn fit(
    z: ArrayView2<f64>,
    y: ArrayView1<bool>,
    l2: f64,
    opt: &TrainOptions,
    start: Option<&Fitted>,
) -> Result<Fitted, TrainError> {
    let rows = z.nrows() as f64;
    let churned = y.iter().filter(|v| **v).count();
    // A warm start is another problem's optimum: one Newton step moves it to near this one's.
    let refined = start.and_then(|s| super::newton::step(z, y, l2 * rows, s));
    let start = refined.as_ref().or(start);
    let mut params = LogisticRegression::default()
        .alpha(l2 * rows)
        .max_iterations(opt.max_iterations)
        // linfa's loss is a sum over rows, so its gradient is `rows` times the mean's.
        .gradient_tolerance(gradient_tolerance(z.nrows(), z.ncols()) * rows);
    if let Some(s) = start {
        // linfa's parameters describe the class it calls positive: the more frequent one, or the
        // first seen on a tie. A wrong guess here only costs iterations: the sign below is read
        // from the fitted model.
        let churn_positive = 2 * churned > y.len() || (2 * churned == y.len() && y.first() == Some(&true));
        let sign = if churn_positive { 1.0 } else { -1.0 };
        params = params.initial_params(s.w.iter().chain(std::iter::once(&s.b)).map(|v| v * sign).collect());
    }
    let ds = linfa::DatasetBase::new(z, y);
    let model = params.fit(&ds).map_err(|e| TrainError::Fit(e.to_string()))?;
    let sign = if model.labels().pos.class { 1.0 } else { -1.0 };
    let w: Vec<f64> = model.params().iter().map(|v| v * sign).collect();
    Ok(Fitted { w, b: model.intercept() * sign })
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
    use rand::Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn fit_rows(z: &Array2<f64>, y: &[bool], l2: f64) -> Fitted {
        fit(z.view(), ArrayView1::from(y), l2, &TrainOptions::default(), None).unwrap()
    }

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
            let f = fit_rows(&z, &ys, 1e-4);
            assert!(f.w[0] > 0.0, "higher x means churn, so the coefficient must be positive: {f:?}");
            let p = predict(array![[2.5], [-2.5]].view(), &f);
            assert!(p[0] > 0.8 && p[1] < 0.2, "{p:?}");
            // Calibrated to the base rate: mean predicted close to observed churn rate.
            let all = predict(z.view(), &f);
            let mean = all.iter().sum::<f64>() / n as f64;
            let rate = ys.iter().filter(|y| **y).count() as f64 / n as f64;
            assert!((mean - rate).abs() < 0.01, "mean {mean} vs rate {rate}");
        }
    }

    /// A fit warm-started far from its optimum (another strength's, with churn the majority so
    /// that linfa's class orientation flips the start) converges as a cold one does: both end
    /// below the gradient tolerance, at the same coefficients, whatever the Newton step did to
    /// the start.
    #[test]
    fn warm_started_fits_reach_the_cold_fits_optimum() {
        let (n, p) = (20_000, 4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut z = Array2::<f64>::zeros((n, p).f());
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            // Correlated columns, as window features are.
            let base: f64 = StandardNormal.sample(&mut rng);
            let mut m = 0.8;
            for j in 0..p {
                let e: f64 = StandardNormal.sample(&mut rng);
                z[[i, j]] = base + 0.5 * e;
                m += [0.9, -0.4, 0.3, 0.0][j] * z[[i, j]];
            }
            y.push(rng.random::<f64>() < super::super::score::sigmoid(m));
        }
        assert!(2 * y.iter().filter(|c| **c).count() > n, "churn is the majority");
        let yv = ArrayView1::from(&y);
        let opt = TrainOptions::default();
        let far = fit(z.view(), yv, 1e-1, &opt, None).unwrap();
        let cold = fit(z.view(), yv, 1e-5, &opt, None).unwrap();
        let warm = fit(z.view(), yv, 1e-5, &opt, Some(&far)).unwrap();
        let tol = gradient_tolerance(n, p);
        for f in [&cold, &warm] {
            let g = gradient_norm(z.view(), &y, 1e-5, f);
            assert!(g < tol, "gradient norm {g} above the tolerance {tol}: {f:?}");
        }
        for (c, w) in cold.w.iter().chain([&cold.b]).zip(warm.w.iter().chain([&warm.b])) {
            assert!((c - w).abs() < 0.02, "cold {cold:?} warm {warm:?}");
        }
        assert!(far.w[0] < cold.w[0], "the start was not the optimum already: {far:?} {cold:?}");
    }

    /// The fit that replaced the balanced resample, checked two ways on data drawn from a known
    /// logistic model with a 15% base rate: it recovers the true coefficients and intercept (a
    /// balanced fit without the intercept correction misses the intercept by about ln(0.15/0.85),
    /// so would fail), and it decides as the old procedure did (the minority drawn again with
    /// replacement until the classes are equal, then King and Zeng's prior correction).
    #[test]
    fn unweighted_fit_recovers_known_model_and_agrees_with_balanced_resample() {
        let (n, w_true, b_true) = (40_000, [1.2, -0.7], -2.3);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let x: [f64; 2] = [StandardNormal.sample(&mut rng), StandardNormal.sample(&mut rng)];
            let logit = b_true + w_true[0] * x[0] + w_true[1] * x[1];
            xs.extend_from_slice(&x);
            ys.push(rng.random_bool(super::super::score::sigmoid(logit)));
        }
        let z = Array2::from_shape_vec((n, 2), xs).unwrap();
        let rate = ys.iter().filter(|y| **y).count() as f64 / n as f64;
        assert!((0.12..0.2).contains(&rate), "{rate}");

        let f = fit_rows(&z, &ys, 1e-6);
        for (got, want) in f.w.iter().zip(w_true) {
            assert!((got - want).abs() < 0.06, "coefficients {:?} vs {w_true:?}", f.w);
        }
        assert!((f.b - b_true).abs() < 0.06, "intercept {} vs {b_true}", f.b);
        let p = predict(z.view(), &f);
        let mean = p.iter().sum::<f64>() / n as f64;
        assert!((mean - rate).abs() < 1e-3, "mean prediction {mean} vs churn rate {rate}");

        // The reference: rows duplicated explicitly.
        let pos: Vec<usize> = (0..n).filter(|&i| ys[i]).collect();
        let mut idx: Vec<usize> = (0..n).collect();
        let neg = n - pos.len();
        for _ in 0..neg - pos.len() {
            idx.push(pos[rng.random_range(0..pos.len())]);
        }
        let zb = z.select(ndarray::Axis(0), &idx);
        let yb: Vec<bool> = idx.iter().map(|&i| ys[i]).collect();
        let balanced = fit_rows(&zb, &yb, 1e-6);
        assert!((balanced.b - b_true).abs() > 1.0, "uncorrected balanced intercept {}", balanced.b);
        let reference = Fitted { w: balanced.w.clone(), b: balanced.b + (rate / (1.0 - rate)).ln() };
        let q = predict(z.view(), &reference);
        let max_gap = p.iter().zip(&q).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(max_gap < 0.05, "largest probability gap to the reference {max_gap}");
        let decision = metrics::best_f1_threshold(&q, &ys).0;
        let agree = p.iter().zip(&q).filter(|(a, b)| (**a >= decision) == (**b >= decision)).count();
        assert!(agree as f64 >= 0.99 * n as f64, "{agree} of {n} decisions agree");
    }

    fn noise_dataset(spec: &FeatureSpec, users: u32, seed: u64) -> Dataset {
        let p = spec.features().len();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
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
        Dataset {
            n_features: p,
            x,
            y,
            user,
            cutoff,
            unlabelled: 0,
            labels_unmatched: 0,
            population: rows,
            data_end: (0, String::new()),
        }
    }

    fn context() -> TrainContext {
        TrainContext {
            events_file: String::new(),
            data_from: String::new(),
            data_to: String::new(),
            cutoffs: vec![],
            horizon: "30d".into(),
            active_within: None,
            label_source: String::new(),
        }
    }

    /// Noise features and labels: strong regularisation is best, at the edge of the old fixed grid
    /// (1e-4..1e-1). The search must try past 1e-1 and end with the best inside the grid (or say
    /// it stopped at its limit); few validation positives are warned about; validation rows and
    /// users are counted apart.
    #[test]
    fn l2_search_extends_past_the_edge_and_counts_rows_and_users() {
        let spec = FeatureSpec::default();
        let data = noise_dataset(&spec, 600, 3);
        let out = train(&spec, data, context(), &TrainOptions::default()).unwrap();
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
        assert_eq!(out.validation_scores.len(), v.n_rows);
    }

    /// Same rows and seed, same model, with the search on a sample (so the sampling, the row
    /// order and the warm starts are all exercised).
    #[test]
    fn training_is_deterministic() {
        let spec = FeatureSpec::default();
        let opt = TrainOptions { search_rows: 500, ..TrainOptions::default() };
        let a = train(&spec, noise_dataset(&spec, 900, 5), context(), &opt).unwrap();
        let b = train(&spec, noise_dataset(&spec, 900, 5), context(), &opt).unwrap();
        assert_eq!(a.timings.search_rows, 500);
        assert_eq!(a.artifact.coefficients, b.artifact.coefficients);
        assert_eq!(a.artifact.intercept, b.artifact.intercept);
        assert_eq!(a.artifact.scaler, b.artifact.scaler);
        assert_eq!(a.artifact.training.l2_grid, b.artifact.training.l2_grid);
        assert_eq!(a.validation_scores, b.validation_scores);
    }

    #[test]
    fn the_strongest_penalty_that_ties_with_the_lowest_loss_is_kept() {
        assert_eq!(chosen(&[(1e-1, 0.42), (1e-2, 0.41), (1e-3, 0.40)]), Some(2));
        // 1e-5 is within a hundred-thousandth of 1e-6's loss, 1e-4 is not.
        assert_eq!(chosen(&[(1e-4, 0.4078), (1e-5, 0.407774), (1e-6, 0.407771)]), Some(1));
        assert_eq!(chosen(&[(1e-4, 0.4078), (1e-5, 0.407774), (1e-6, 0.40776)]), Some(2));
        // All non-finite: nothing to compare, the strongest is kept.
        assert_eq!(chosen(&[(1e-2, f64::NAN), (1e-1, f64::INFINITY)]), Some(1));
        assert_eq!(chosen(&[]), None);
    }

    #[test]
    fn grid_extends_past_a_strictly_better_edge_only() {
        assert_eq!(extend_grid(&[(1e-4, 0.40), (1e-3, 0.41), (1e-2, 0.42)]), Some((0, 1e-5)));
        assert_eq!(extend_grid(&[(1e-4, 0.42), (1e-3, 0.41), (1e-2, 0.40)]), Some((2, 1e-1)));
        assert_eq!(extend_grid(&[(1e-4, 0.41), (1e-3, 0.40), (1e-2, 0.42)]), None);
        // A tie at the edge: the strengths are indistinguishable, so the search stops.
        assert_eq!(extend_grid(&[(1e-5, 0.40), (1e-4, 0.40), (1e-3, 0.41)]), None);
        // So is a gain below a hundred-thousandth of the loss, and one just above it is not.
        assert_eq!(extend_grid(&[(1e-6, 0.407773), (1e-5, 0.407774), (1e-4, 0.4078)]), None);
        assert_eq!(extend_grid(&[(1e-6, 0.407760), (1e-5, 0.407774), (1e-4, 0.4078)]), Some((0, 1e-7)));
        assert_eq!(extend_grid(&[(1e-4, 0.40)]), None);
    }

    #[test]
    fn gradient_tolerance_is_a_tenth_of_the_noise_and_never_below_1e_4() {
        assert_eq!(gradient_tolerance(100, 67), 0.1 * (67.0f64 / 400.0).sqrt());
        assert_eq!(gradient_tolerance(1_000_000_000, 67), 1e-4);
        let at_1m = gradient_tolerance(1_000_000, 67);
        assert!((at_1m - 4.09e-4).abs() < 1e-6, "{at_1m}");
    }

    /// Row i lands at row dest[i], transformed, and the result is column-major.
    #[test]
    fn transform_moves_rows_to_their_place() {
        use crate::features::Transform;
        let x = vec![0.0, 1.0, 3.0, 4.0, 7.0, 9.0];
        let z = transform_column_major(x, &[2, 0, 1], &[Transform::Log1p, Transform::Identity]).unwrap();
        assert_eq!(z, array![[3.0f64.ln_1p(), 4.0], [7.0f64.ln_1p(), 9.0], [0.0, 1.0]]);
        assert_eq!(z.strides(), &[1, 3]);
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
        let s = fit_scaler(&z, n, vec![crate::features::Transform::Identity; 2]);
        assert_eq!(s.std[1], 1.0);
        standardise(&mut z, &s);
        let f = fit_rows(&z, &ys, 1e-3);
        assert_eq!(f.w[1], 0.0);
        assert!(f.w[0] > 0.0);
    }
}
