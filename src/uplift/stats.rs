//! Pure statistics for comparing two proportions: Wilson and Newcombe intervals, the
//! two-proportion z-test, Fisher's exact test, the sample size for 80% power, and percentile
//! intervals for bootstrap replicates.

/// z for a two-sided 95% interval (and alpha = 0.05).
pub const Z_95: f64 = 1.959_963_984_540_054;
/// z for 80% power (one-sided 0.2 tail).
pub const Z_POWER_80: f64 = 0.841_621_233_572_914;

/// Wilson score interval for `x` successes in `n` trials (95%). `(0, 1)` when `n` is 0.
pub fn wilson(x: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (x, n, z) = (x as f64, n as f64, Z_95);
    let p = x / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let den = 1.0 + z2 / n;
    (((centre - half) / den).max(0.0), ((centre + half) / den).min(1.0))
}

/// A difference of proportions `p1 - p2` with its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Difference {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
}

/// Newcombe's hybrid score interval for `x1/n1 - x2/n2` (Newcombe 1998, method 10: square-and-add
/// of the two Wilson intervals, no continuity correction). `None` when either arm is empty.
pub fn newcombe_diff(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<Difference> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (p1, p2) = (x1 as f64 / n1 as f64, x2 as f64 / n2 as f64);
    let (l1, u1) = wilson(x1, n1);
    let (l2, u2) = wilson(x2, n2);
    let d = p1 - p2;
    let lower = d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt();
    let upper = d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt();
    Some(Difference { estimate: d, lower, upper })
}

/// Which test produced a p-value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// Pooled two-proportion z-test (no continuity correction).
    ZTest,
    /// Fisher's exact test, two-sided (sum of tables no more likely than the observed one).
    Fisher,
}

/// Two-sided p-value for `x1/n1` against `x2/n2`: Fisher's exact test when a cell's expected
/// count is under 5, the pooled z-test otherwise. `None` when either arm is empty.
pub fn p_value(x1: u64, n1: u64, x2: u64, n2: u64) -> Option<(f64, Test)> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let n = (n1 + n2) as f64;
    let succ = (x1 + x2) as f64;
    let fail = n - succ;
    let min_expected = [n1 as f64 * succ / n, n1 as f64 * fail / n, n2 as f64 * succ / n, n2 as f64 * fail / n]
        .into_iter()
        .fold(f64::INFINITY, f64::min);
    if min_expected < 5.0 {
        Some((fisher_two_sided(x1, n1 - x1, x2, n2 - x2), Test::Fisher))
    } else {
        Some((z_test(x1, n1, x2, n2), Test::ZTest))
    }
}

/// Pooled two-proportion z-test, two-sided p-value. 1 when the pooled rate is 0 or 1.
pub fn z_test(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let pooled = (x1 + x2) as f64 / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 {
        return 1.0;
    }
    let z = (x1 as f64 / n1f - x2 as f64 / n2f) / se;
    erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0)
}

/// Fisher's exact test on the table `[[a, b], [c, d]]`, two-sided: the probability of every
/// table with the same margins that is no more likely than the observed one.
pub fn fisher_two_sided(a: u64, b: u64, c: u64, d: u64) -> f64 {
    let (r1, c1, n) = (a + b, a + c, a + b + c + d);
    let lo = c1.saturating_sub(n - r1);
    let hi = r1.min(c1);
    let ln_p = |k: u64| ln_choose(r1, k) + ln_choose(n - r1, c1 - k) - ln_choose(n, c1);
    let observed = ln_p(a);
    let mut total = 0.0;
    for k in lo..=hi {
        let lp = ln_p(k);
        // Relative tolerance as in R's fisher.test, so ties in probability count.
        if lp <= observed + 1e-7 {
            total += lp.exp();
        }
    }
    total.min(1.0)
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, 9 terms; relative error about 1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Complementary error function (W. J. Cody's rational approximations via the Numerical Recipes
/// Chebyshev fit `erfcc`, fractional error below 1.2e-7).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// Users per arm that a two-sided test at alpha 0.05 needs for 80% power to detect the
/// difference between rates `p1` and `p2`, with arm 1 `ratio` times the size of arm 2 (the
/// current allocation). Returns `(n1, n2)`, rounded up; `None` when the rates are equal or the
/// ratio is not positive.
pub fn required_n(p1: f64, p2: f64, ratio: f64) -> Option<(u64, u64)> {
    let d = (p1 - p2).abs();
    if d < 1e-12 || ratio <= 0.0 || !ratio.is_finite() {
        return None;
    }
    let k = ratio;
    let pbar = (k * p1 + p2) / (k + 1.0);
    let a = Z_95 * (pbar * (1.0 - pbar) * (1.0 + 1.0 / k)).sqrt();
    let b = Z_POWER_80 * (p1 * (1.0 - p1) / k + p2 * (1.0 - p2)).sqrt();
    let n2 = ((a + b) / d).powi(2);
    Some(((k * n2).ceil() as u64, n2.ceil() as u64))
}

/// The `q` quantile (0..1) of sorted data, with linear interpolation (type 7).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let h = (sorted.len() - 1) as f64 * q.clamp(0.0, 1.0);
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// 2.5% and 97.5% percentiles of bootstrap replicates (NaNs dropped).
pub fn percentile_interval(replicates: &[f64]) -> (f64, f64) {
    let mut v: Vec<f64> = replicates.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    (quantile_sorted(&v, 0.025), quantile_sorted(&v, 0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn wilson_matches_newcombe_1998_single_proportion_examples() {
        // Newcombe (1998a), Statistics in Medicine 17:857-872, table II.
        let (l, u) = wilson(81, 263);
        assert!(close(l, 0.2553, 5e-5) && close(u, 0.3662, 5e-5), "{l} {u}");
        let (l, u) = wilson(15, 148);
        assert!(close(l, 0.0624, 5e-5) && close(u, 0.1605, 5e-5), "{l} {u}");
        let (l, u) = wilson(0, 20);
        assert!(close(l, 0.0, 1e-12) && close(u, 0.1611, 5e-5), "{l} {u}");
    }

    #[test]
    fn newcombe_method_10_matches_published_examples() {
        // Newcombe (1998b), Statistics in Medicine 17:873-890, table II, method 10. Example (a)
        // is 56/70 - 48/80: the difference is 0.2000 (not 0.1333), interval 0.0524..0.3339.
        let d = newcombe_diff(56, 70, 48, 80).unwrap();
        assert!(close(d.estimate, 0.2, 1e-12), "{d:?}");
        assert!(close(d.lower, 0.0524, 5e-5) && close(d.upper, 0.3339, 5e-5), "{d:?}");
        let d = newcombe_diff(9, 10, 3, 10).unwrap();
        assert!(close(d.lower, 0.1705, 5e-5) && close(d.upper, 0.8090, 5e-5), "{d:?}");
        // Example (d), a zero cell: 5/56 - 0/29, interval -0.0381..0.1926.
        let d = newcombe_diff(5, 56, 0, 29).unwrap();
        assert!(close(d.lower, -0.0381, 5e-5) && close(d.upper, 0.1926, 5e-5), "{d:?}");
        assert!(newcombe_diff(1, 0, 1, 2).is_none());
    }

    #[test]
    fn z_test_matches_hand_computed_value() {
        // 56/70 vs 48/80: pooled 104/150, z = 0.2 / sqrt(0.69333*0.30667*(1/70+1/80)) = 2.6502,
        // two-sided p = 0.008045.
        let p = z_test(56, 70, 48, 80);
        assert!(close(p, 0.008045, 1e-6), "{p}");
        // Equal rates: p = 1.
        assert!(close(z_test(50, 100, 50, 100), 1.0, 1e-6));
        // z = 1.96 gives p = 0.05.
        assert!(close(erfc(Z_95 / std::f64::consts::SQRT_2), 0.05, 1e-6));
        assert!(close(normal_cdf(0.0), 0.5, 1e-7));
    }

    #[test]
    fn fisher_matches_the_tea_tasting_example() {
        // Fisher's lady tasting tea: [[3, 1], [1, 3]], two-sided p = 0.4857 (R: fisher.test).
        assert!(close(fisher_two_sided(3, 1, 1, 3), 0.485_714, 1e-5));
        // [[1, 9], [11, 3]]: two-sided p = 0.002759 (R: fisher.test).
        assert!(close(fisher_two_sided(1, 9, 11, 3), 0.002_759, 1e-5), "{}", fisher_two_sided(1, 9, 11, 3));
        // Small cells route to Fisher.
        assert_eq!(p_value(3, 4, 1, 4).unwrap().1, Test::Fisher);
        assert_eq!(p_value(56, 70, 48, 80).unwrap().1, Test::ZTest);
    }

    #[test]
    fn ln_gamma_is_accurate() {
        assert!(close(ln_gamma(1.0), 0.0, 1e-12));
        assert!(close(ln_gamma(11.0), (3_628_800f64).ln(), 1e-10));
        assert!(close(ln_gamma(0.5), std::f64::consts::PI.sqrt().ln(), 1e-12));
    }

    #[test]
    fn sample_size_matches_the_textbook_formula() {
        // 60% vs 40%, equal arms, alpha 0.05 two-sided, 80% power: 97 per arm (96.9 rounded up).
        assert_eq!(required_n(0.6, 0.4, 1.0), Some((97, 97)));
        // Unequal allocation 9:1 needs more users in total than 1:1.
        let (a, b) = required_n(0.6, 0.4, 9.0).unwrap();
        assert!(a + b > 194 && a >= 9 * b - 9, "{a} {b}");
        assert_eq!(required_n(0.5, 0.5, 1.0), None);
    }

    #[test]
    fn percentiles_interpolate() {
        let v: Vec<f64> = (0..=100).map(f64::from).collect();
        let (lo, hi) = percentile_interval(&v);
        assert!(close(lo, 2.5, 1e-12) && close(hi, 97.5, 1e-12));
    }
}
