//! One Newton step on the L2-penalised logistic loss, to move a warm start to the optimum of the
//! problem at hand before L-BFGS takes over.
//!
//! Training warm-starts each fit from a neighbouring optimum: the next L2 strength of the search,
//! or the search sample's optimum for the fit on all rows. Near an optimum the loss is close to
//! its quadratic model, so one Newton step lands close to the new optimum, where L-BFGS, which
//! starts with no curvature memory and builds it slowly on correlated window features, spent
//! most of training's time crossing the same gap (12 s of 17 at 1M rows; docs/PERFORMANCE.md).
//! The step costs three passes over the rows and one product `Zᵀ D Z`, which runs on every
//! core. linfa-logistic's L-BFGS still fits the model and decides when it has converged; the
//! step only chooses where it starts, and is kept only if it lowers the loss.

use ndarray::{s, Array2, ArrayView1, ArrayView2, ShapeBuilder};

/// Rows per block of the Hessian product: a block of the weighted matrix (`ROWS_PER_BLOCK x
/// (features + 1)` doubles) stays in cache, and the whole matrix is never copied.
const ROWS_PER_BLOCK: usize = 8192;

/// Weights and intercept of P(churned) = sigmoid(b + z·w).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub w: Vec<f64>,
    pub b: f64,
}

/// The Newton step from `start` on `sum_i logloss(y_i, b + z_i·w) + alpha / 2 * |w|^2`, the
/// objective linfa-logistic minimises, if the point it reaches has a lower loss; `None` when the
/// step does not help or the system cannot be solved.
pub fn step(z: ArrayView2<f64>, y: ArrayView1<bool>, alpha: f64, start: &Point) -> Option<Point> {
    let (n, p) = z.dim();
    if n == 0 || start.w.len() != p {
        return None;
    }
    let at_start = margins(z, start);
    let mut residual = Vec::with_capacity(n);
    let mut curvature = Vec::with_capacity(n);
    for (m, y) in at_start.iter().zip(y) {
        let prob = super::score::sigmoid(*m);
        residual.push(prob - if *y { 1.0 } else { 0.0 });
        curvature.push(prob * (1.0 - prob));
    }
    let start_loss = loss(&at_start, y, alpha, &start.w);
    drop(at_start);

    let g = gradient(z, &residual, alpha, start);
    drop(residual);

    let mut h = hessian(z, &curvature);
    for j in 0..p {
        h[[j, j]] += alpha;
    }
    let delta = solve_cholesky(h, &g)?;
    let next = Point { w: start.w.iter().zip(&delta).map(|(w, d)| w - d).collect(), b: start.b - delta[p] };
    let next_loss = loss(&margins(z, &next), y, alpha, &next.w);
    (next_loss < start_loss).then_some(next)
}

/// The penalised loss's gradient (intercept last) from the rows' residuals `P(churned) - y`.
pub fn gradient(z: ArrayView2<f64>, residual: &[f64], alpha: f64, at: &Point) -> Vec<f64> {
    let r = ArrayView1::from(residual);
    let mut g: Vec<f64> = z.columns().into_iter().zip(&at.w).map(|(col, w)| col.dot(&r) + alpha * w).collect();
    g.push(residual.iter().sum());
    g
}

/// `b + Z·w`, column by column: `z` is column-major, so each column is read in memory order.
pub fn margins(z: ArrayView2<f64>, at: &Point) -> ndarray::Array1<f64> {
    let mut m = ndarray::Array1::from_elem(z.nrows(), at.b);
    for (col, w) in z.columns().into_iter().zip(&at.w) {
        m.scaled_add(*w, &col);
    }
    m
}

/// The penalised log loss, summed over rows, from the rows' margins.
fn loss(margins: &ndarray::Array1<f64>, y: ArrayView1<bool>, alpha: f64, w: &[f64]) -> f64 {
    // log(1 + e^m) - y m, without overflow for large |m|.
    let data: f64 =
        margins.iter().zip(y).map(|(m, y)| m.max(0.0) + (-m.abs()).exp().ln_1p() - if *y { *m } else { 0.0 }).sum();
    data + 0.5 * alpha * w.iter().map(|v| v * v).sum::<f64>()
}

/// `[Z 1]ᵀ diag(curvature) [Z 1]`, the loss's Hessian without the penalty (intercept last), by
/// blocks of rows so that only one block of the weighted matrix is held at a time.
fn hessian(z: ArrayView2<f64>, curvature: &[f64]) -> Array2<f64> {
    let (n, p) = z.dim();
    let mut h = Array2::<f64>::zeros((p + 1, p + 1));
    let mut block = Array2::<f64>::zeros((ROWS_PER_BLOCK.min(n), p + 1).f());
    for start in (0..n).step_by(ROWS_PER_BLOCK) {
        let end = (start + ROWS_PER_BLOCK).min(n);
        let rows = end - start;
        let root: Vec<f64> = curvature[start..end].iter().map(|c| c.sqrt()).collect();
        let mut b = block.slice_mut(s![..rows, ..]);
        for (j, col) in z.slice(s![start..end, ..]).columns().into_iter().enumerate() {
            for ((out, v), r) in b.column_mut(j).iter_mut().zip(col).zip(&root) {
                *out = v * r;
            }
        }
        b.column_mut(p).assign(&ArrayView1::from(&root));
        ndarray::linalg::general_mat_mul(1.0, &b.t(), &b, 1.0, &mut h);
    }
    h
}

/// `x` with `a x = b`, `a` symmetric positive definite; `None` if it is not (numerically).
fn solve_cholesky(mut a: Array2<f64>, b: &[f64]) -> Option<Vec<f64>> {
    let n = b.len();
    // In place: the lower triangle becomes L with a = L Lᵀ.
    for j in 0..n {
        let mut d = a[[j, j]];
        for k in 0..j {
            d -= a[[j, k]] * a[[j, k]];
        }
        if !d.is_finite() || d <= 0.0 {
            return None;
        }
        let d = d.sqrt();
        a[[j, j]] = d;
        for i in j + 1..n {
            let mut v = a[[i, j]];
            for k in 0..j {
                v -= a[[i, k]] * a[[j, k]];
            }
            a[[i, j]] = v / d;
        }
    }
    // L y = b, then Lᵀ x = y.
    let mut x = b.to_vec();
    for i in 0..n {
        for k in 0..i {
            x[i] -= a[[i, k]] * x[k];
        }
        x[i] /= a[[i, i]];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            x[i] -= a[[k, i]] * x[k];
        }
        x[i] /= a[[i, i]];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1};
    use rand::{Rng, SeedableRng};

    #[test]
    fn cholesky_solves_a_symmetric_positive_definite_system() {
        let a = array![[4.0, 2.0, 0.6], [2.0, 5.0, 1.0], [0.6, 1.0, 3.0]];
        let x = [1.0, -2.0, 0.5];
        let b: Vec<f64> = a.dot(&Array1::from(x.to_vec())).to_vec();
        let got = solve_cholesky(a, &b).unwrap();
        for (g, w) in got.iter().zip(x) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn cholesky_refuses_a_matrix_that_is_not_positive_definite() {
        assert_eq!(solve_cholesky(array![[1.0, 2.0], [2.0, 1.0]], &[1.0, 1.0]), None);
    }

    fn problem(n: usize, p: usize, seed: u64) -> (Array2<f64>, Vec<bool>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut z = Array2::<f64>::zeros((n, p).f());
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let mut m = -0.5;
            for j in 0..p {
                let v: f64 = rng.random_range(-2.0..2.0);
                z[[i, j]] = v;
                m += v * (j as f64 - 1.0) * 0.7;
            }
            y.push(rng.random::<f64>() < crate::model::score::sigmoid(m));
        }
        (z, y)
    }

    /// The Hessian by blocks equals the one-shot product, including across a block boundary.
    #[test]
    fn hessian_by_blocks_is_the_whole_product() {
        let (z, _) = problem(ROWS_PER_BLOCK + 37, 3, 1);
        let c: Vec<f64> = (0..z.nrows()).map(|i| 0.05 + (i % 11) as f64 * 0.02).collect();
        let mut ones = Array2::<f64>::ones((z.nrows(), 4));
        ones.slice_mut(s![.., ..3]).assign(&z);
        let weighted = &ones * &Array1::from(c.clone()).insert_axis(ndarray::Axis(1));
        let want = ones.t().dot(&weighted);
        let got = hessian(z.view(), &c);
        for (g, w) in got.iter().zip(want.iter()) {
            assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{g} vs {w}");
        }
    }

    /// Repeated steps converge to the point where the penalised gradient vanishes, and each
    /// accepted step lowers the loss.
    #[test]
    fn steps_reach_the_penalised_optimum() {
        let (z, y) = problem(4000, 3, 2);
        let y = ArrayView1::from(&y);
        let alpha = 0.01 * 4000.0;
        let mut at = Point { w: vec![0.0; 3], b: 0.0 };
        let mut last = loss(&margins(z.view(), &at), y, alpha, &at.w);
        for _ in 0..8 {
            let Some(next) = step(z.view(), y, alpha, &at) else { break };
            let l = loss(&margins(z.view(), &next), y, alpha, &next.w);
            assert!(l < last);
            (at, last) = (next, l);
        }
        let m = margins(z.view(), &at);
        let r: Vec<f64> =
            m.iter().zip(y).map(|(m, y)| crate::model::score::sigmoid(*m) - f64::from(u8::from(*y))).collect();
        for (j, col) in z.columns().into_iter().enumerate() {
            let g = col.dot(&ArrayView1::from(&r)) + alpha * at.w[j];
            assert!(g.abs() < 1e-8, "coefficient {j}: gradient {g}");
        }
        assert!(r.iter().sum::<f64>().abs() < 1e-8);
        // The generating weights were -0.7, 0, 0.7: the fit finds their signs.
        assert!(at.w[0] < -0.3 && at.w[1].abs() < 0.2 && at.w[2] > 0.3, "{:?}", at.w);
    }

    /// At the optimum there is nothing to gain: the step is refused rather than taken.
    #[test]
    fn no_step_from_the_optimum() {
        let (z, y) = problem(2000, 2, 3);
        let y = ArrayView1::from(&y);
        let mut at = Point { w: vec![0.0; 2], b: 0.0 };
        let mut steps = 0;
        while let Some(next) = step(z.view(), y, 20.0, &at) {
            at = next;
            steps += 1;
            assert!(steps < 50, "the loss kept falling for {steps} steps");
        }
        assert_eq!(step(z.view(), y, 20.0, &at), None);
    }
}
