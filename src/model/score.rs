//! Serving-side scoring: transform, standardise, dot product, sigmoid, and explanations.
//!
//! The scaler is folded into the weights at load time, so a score is one pass of transforms and
//! one dot product. Training evaluates its validation split through this same type.

use serde::Serialize;

use super::artifact::ModelArtifact;
use crate::features::spec::Transform;

/// One feature's part in a score: `coefficient * standardised value`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    pub feature: String,
    pub value: f64,
    pub contribution: f64,
}

#[derive(Debug, Clone)]
pub struct Scorer {
    names: Vec<String>,
    transforms: Vec<Transform>,
    mean: Vec<f64>,
    inv_std: Vec<f64>,
    coef: Vec<f64>,
    /// `coef / std` split by transform, so that `logit = bias + sum(w * transformed)` runs with
    /// no per-feature dispatch.
    log1p_terms: Vec<(usize, f64)>,
    other_terms: Vec<(usize, Transform, f64)>,
    bias: f64,
    version: String,
}

// Counts are small integers almost always; ln(1+n) from a table keeps the hot path free of
// libm calls. Training uses the same function, so the two never disagree.
const LOG1P_TABLE_LEN: usize = 4096;
static LOG1P_TABLE: std::sync::LazyLock<Vec<f64>> =
    std::sync::LazyLock::new(|| (0..LOG1P_TABLE_LEN).map(|n| (n as f64).ln_1p()).collect());

/// 2^52: adding it to a number in `[0, 2^52)` rounds that number to a whole one held in the
/// low bits of the sum's mantissa.
const ROUNDER: f64 = 4_503_599_627_370_496.0;

/// The table's index for `x` when `x` is a whole number the table holds (`-0.0` included),
/// else `None` (negatives, fractions, NaN, too large). A saturating `as usize` cast and its
/// round trip cost about twenty instructions on x86-64 without AVX-512, paid for every log1p
/// term of every score and bound; this costs a few.
#[inline(always)]
fn table_index(x: f64) -> Option<usize> {
    // NaN fails the range test; in range, the sum is exact, so it differs from `x` by the
    // rounding alone, and that is zero exactly when `x` is whole.
    if (0.0..LOG1P_TABLE_LEN as f64).contains(&x) {
        let rounded = x + ROUNDER;
        if rounded - ROUNDER == x {
            // Below LOG1P_TABLE_LEN, as `x` is; the mask only lets the compiler see it.
            return Some((rounded.to_bits() - ROUNDER.to_bits()) as usize & (LOG1P_TABLE_LEN - 1));
        }
    }
    None
}

/// The transform used by training and serving alike.
#[inline]
pub fn transform(t: Transform, x: f64) -> f64 {
    if t == Transform::Log1p {
        if let Some(n) = table_index(x) {
            return LOG1P_TABLE[n];
        }
    }
    t.apply(x)
}

/// The last value a transform was applied to, and its result: the recency of every event type a
/// user never had is their tenure, and amounts often repeat across windows, so the scoring loop
/// meets runs of equal values, each a libm call. The same function of the same bits gives the
/// same result, so reusing it changes nothing.
#[derive(Clone, Copy)]
struct Memo {
    bits: u64,
    transform: Transform,
    value: f64,
}

impl Memo {
    const EMPTY: Memo = Memo { bits: f64::NAN.to_bits(), transform: Transform::Identity, value: f64::NAN };

    #[inline]
    fn apply(&mut self, t: Transform, x: f64) -> f64 {
        if x.to_bits() != self.bits || t != self.transform {
            *self = Memo { bits: x.to_bits(), transform: t, value: t.apply(x) };
        }
        self.value
    }
}

#[inline]
pub fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Scorer {
    pub fn new(art: &ModelArtifact) -> Scorer {
        let s = &art.scaler;
        let inv_std: Vec<f64> = s.std.iter().map(|v| 1.0 / v).collect();
        let folded: Vec<f64> = art.coefficients.iter().zip(&inv_std).map(|(c, i)| c * i).collect();
        let bias = art.intercept - folded.iter().zip(&s.mean).map(|(f, m)| f * m).sum::<f64>();
        let mut log1p_terms = Vec::new();
        let mut other_terms = Vec::new();
        for (i, (t, w)) in s.transforms.iter().zip(&folded).enumerate() {
            match t {
                _ if *w == 0.0 => {}
                Transform::Log1p => log1p_terms.push((i, *w)),
                other => other_terms.push((i, *other, *w)),
            }
        }
        Scorer {
            log1p_terms,
            other_terms,
            names: art.feature_names.clone(),
            transforms: s.transforms.clone(),
            mean: s.mean.clone(),
            inv_std,
            coef: art.coefficients.clone(),
            bias,
            version: art.model_version.clone(),
        }
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn n_features(&self) -> usize {
        self.names.len()
    }

    #[inline]
    pub fn logit(&self, raw: &[f64]) -> f64 {
        let table: &[f64] = &LOG1P_TABLE;
        let mut z = self.bias;
        let mut memo = Memo::EMPTY;
        for &(i, w) in &self.log1p_terms {
            let x = raw[i];
            let v = match table_index(x) {
                Some(n) => table[n],
                None => memo.apply(Transform::Log1p, x),
            };
            z += w * v;
        }
        for &(i, t, w) in &self.other_terms {
            z += w * memo.apply(t, raw[i]);
        }
        z
    }

    /// An upper bound of [`Scorer::logit`] over every raw vector with `lo[i] <= x[i] <= hi[i]`
    /// (`+inf` when none can be given, e.g. for NaN). Every transform is non-decreasing, so a
    /// term is largest at the top of its range for a positive weight and at the bottom for a
    /// negative one. The terms are added in `logit`'s order and rounding is monotone, so the
    /// bound holds for the computed logit too; the margin covers a libm that is not exactly
    /// monotone.
    pub fn logit_upper(&self, lo: &[f64], hi: &[f64]) -> f64 {
        self.logit_bound(lo, hi, true)
    }

    /// A lower bound of [`Scorer::logit`] over the same vectors (`-inf` when none can be
    /// given): [`Scorer::logit_upper`] with every term at its other end.
    pub fn logit_lower(&self, lo: &[f64], hi: &[f64]) -> f64 {
        self.logit_bound(lo, hi, false)
    }

    fn logit_bound(&self, lo: &[f64], hi: &[f64], upper: bool) -> f64 {
        let table: &[f64] = &LOG1P_TABLE;
        let mut z = self.bias;
        let mut size = self.bias.abs();
        // A NaN end must poison the bound, not be skipped over when the other end is picked:
        // `l - h` is NaN when either is. It is also NaN for two equal infinities, which no
        // feature has; giving no bound there is sound, as it always is.
        let mut poison = 0.0;
        let mut memo = Memo::EMPTY;
        for &(i, w) in &self.log1p_terms {
            let (l, h) = (lo[i], hi[i]);
            poison += l - h;
            let x = if (w >= 0.0) == upper { h } else { l };
            let v = match table_index(x) {
                Some(n) => table[n],
                None => memo.apply(Transform::Log1p, x),
            };
            let term = w * v;
            z += term;
            size += term.abs();
        }
        for &(i, t, w) in &self.other_terms {
            let (l, h) = (lo[i], hi[i]);
            poison += l - h;
            let term = w * memo.apply(t, if (w >= 0.0) == upper { h } else { l });
            z += term;
            size += term.abs();
        }
        let margin = 1e-9 * (1.0 + size);
        let bound = if upper { z + margin } else { z - margin };
        match (bound.is_nan() || poison.is_nan(), upper) {
            (false, _) => bound,
            (true, true) => f64::INFINITY,
            (true, false) => f64::NEG_INFINITY,
        }
    }

    /// P(churn) for a raw feature vector.
    #[inline]
    pub fn score(&self, raw: &[f64]) -> f64 {
        sigmoid(self.logit(raw))
    }

    /// The `top` features by contribution to the logit, largest first: the ones pushing the
    /// score up the most (when fewer push up, the least negative follow).
    /// Feature names, in vector order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// [`Scorer::explain`] into reused buffers (`ranked` is scratch): the serving path's form,
    /// which allocates nothing once the buffers have grown.
    pub fn explain_into(
        &self,
        raw: &[f64],
        top: usize,
        ranked: &mut Vec<(f64, usize)>,
        out: &mut Vec<crate::decision::ReasonRef>,
    ) {
        ranked.clear();
        ranked.extend(
            raw.iter()
                .enumerate()
                .map(|(i, x)| (self.coef[i] * (transform(self.transforms[i], *x) - self.mean[i]) * self.inv_std[i], i))
                .filter(|(c, _)| *c != 0.0),
        );
        let by_contribution = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if ranked.len() > top && top > 0 {
            ranked.select_nth_unstable_by(top - 1, by_contribution);
            ranked.truncate(top);
        }
        ranked.sort_by(by_contribution);
        ranked.truncate(top);
        out.clear();
        out.extend(ranked.iter().map(|&(contribution, feature)| crate::decision::ReasonRef {
            feature,
            value: raw[feature],
            contribution,
        }));
    }

    pub fn explain(&self, raw: &[f64], top: usize) -> Vec<Reason> {
        let mut reasons = Vec::new();
        self.explain_into(raw, top, &mut Vec::new(), &mut reasons);
        reasons
            .into_iter()
            .map(|r| Reason { feature: self.names[r.feature].clone(), value: r.value, contribution: r.contribution })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `logit` as it was before the memo: every term transformed on its own.
    fn logit_without_memo(s: &Scorer, raw: &[f64]) -> f64 {
        let mut z = s.bias;
        for &(i, w) in &s.log1p_terms {
            z += w * transform(Transform::Log1p, raw[i]);
        }
        for &(i, t, w) in &s.other_terms {
            z += w * t.apply(raw[i]);
        }
        z
    }

    /// The whole-number test as it was: a saturating cast and its round trip.
    fn table_index_by_cast(x: f64) -> Option<usize> {
        let n = x as usize;
        (n < LOG1P_TABLE_LEN && n as f64 == x).then_some(n)
    }

    proptest! {
        /// The fast whole-number test picks the same table entry as the cast, or none when the
        /// cast does: whole numbers in and past the table, values a rounding step either side
        /// of them, fractions, negatives, signed zeros, NaN, infinities and any bit pattern.
        #[test]
        fn the_table_index_matches_the_cast(
            whole in 0u64..5000,
            nudge in -3i64..=3,
            frac in -1.0e6f64..1.0e6,
            bits in any::<u64>(),
        ) {
            let near = f64::from_bits((whole as f64).to_bits().wrapping_add_signed(nudge));
            let specials = [0.0, -0.0, f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 4095.0, 4096.0, 4095.5, -1.0, 1e300, f64::MIN_POSITIVE];
            for x in [whole as f64, near, frac, frac.round(), f64::from_bits(bits)].into_iter().chain(specials) {
                prop_assert_eq!(table_index(x), table_index_by_cast(x), "{}", x);
            }
        }
    }

    fn shipped() -> Scorer {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default.json"));
        Scorer::new(&ModelArtifact::load(path).expect("shipped model"))
    }

    proptest! {
        /// For every vector inside the box, `logit_lower <= logit <= logit_upper`, with the
        /// shipped model's weights of both signs, boxes from a point to wide ones, negative
        /// amounts, and integer ends (the table's path) as well as fractional ones.
        #[test]
        fn the_bounds_hold_the_logit_of_every_vector_in_the_box(
            ends in prop::collection::vec((-20.0f64..500.0, 0.0f64..400.0, 0.0f64..=1.0, any::<bool>()), 80),
        ) {
            let s = shipped();
            let n = s.n_features();
            let (mut lo, mut hi, mut x) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            for (i, &(l, width, at, whole)) in ends.iter().take(n).enumerate() {
                let l = if whole { l.round() } else { l };
                let w = if whole { width.round() } else { width };
                lo[i] = l;
                hi[i] = l + w;
                x[i] = if whole { (l + (w * at).round()).min(l + w) } else { l + w * at };
            }
            let (low, z, up) = (s.logit_lower(&lo, &hi), s.logit(&x), s.logit_upper(&lo, &hi));
            prop_assert!(low <= z && z <= up, "{low} <= {z} <= {up}");
            // At a point the bounds are the logit, up to the margin.
            let (at_low, at_up, at) = (s.logit_lower(&x, &x), s.logit_upper(&x, &x), z);
            prop_assert!(at_low <= at && at <= at_up && at_up - at_low < 1e-4, "{at_low} {at} {at_up}");
        }
    }

    /// A NaN at either end of any weighted feature's range leaves no bound to give: the upper
    /// bound is `+inf` and the lower `-inf`, whichever end the weight's sign would have picked.
    /// (A feature with a zero weight is not in the logit at all.)
    #[test]
    fn a_nan_end_poisons_both_bounds() {
        let s = shipped();
        let n = s.n_features();
        assert!(s.coef.iter().filter(|c| **c != 0.0).count() > n / 2);
        for i in (0..n).filter(|i| s.coef[*i] != 0.0) {
            for nan_high in [false, true] {
                let (mut lo, mut hi) = (vec![1.0; n], vec![2.0; n]);
                if nan_high {
                    hi[i] = f64::NAN;
                } else {
                    lo[i] = f64::NAN;
                }
                assert_eq!(s.logit_upper(&lo, &hi), f64::INFINITY, "feature {i}, NaN high: {nan_high}");
                assert_eq!(s.logit_lower(&lo, &hi), f64::NEG_INFINITY, "feature {i}, NaN high: {nan_high}");
            }
        }
    }

    proptest! {
        /// Bit for bit the logit of independent transforms, on vectors drawn from a few values
        /// (so that runs of equal values, which the memo reuses, are common), signed zeros,
        /// NaN and infinities among them.
        #[test]
        fn the_memo_changes_no_logit(picks in prop::collection::vec(0usize..12, 80), pool in prop::collection::vec(-5.0f64..400.0, 4)) {
            let s = shipped();
            let values = [pool[0], pool[1], pool[2], pool[3], 0.0, -0.0, 1.0, 3.5, f64::NAN, f64::INFINITY, -1.5, 1e-300];
            let raw: Vec<f64> = picks.iter().take(s.n_features()).map(|&k| values[k]).collect();
            prop_assume!(raw.len() == s.n_features());
            let (got, want) = (s.logit(&raw), logit_without_memo(&s, &raw));
            prop_assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{got} != {want}");
        }
    }
}
