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
    /// `coef / std`, so `logit = bias + sum(folded * transformed)`.
    folded: Vec<f64>,
    bias: f64,
    version: String,
}

// Counts are small integers almost always; ln(1+n) from a table keeps the hot path free of
// libm calls. Training uses the same function, so the two never disagree.
const LOG1P_TABLE_LEN: usize = 4096;
static LOG1P_TABLE: std::sync::LazyLock<Vec<f64>> =
    std::sync::LazyLock::new(|| (0..LOG1P_TABLE_LEN).map(|n| (n as f64).ln_1p()).collect());

/// The transform used by training and serving alike.
#[inline]
pub fn transform(t: Transform, x: f64) -> f64 {
    if t == Transform::Log1p && x >= 0.0 && x < LOG1P_TABLE_LEN as f64 && x.fract() == 0.0 {
        return LOG1P_TABLE[x as usize];
    }
    t.apply(x)
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
        Scorer {
            names: art.feature_names.clone(),
            transforms: s.transforms.clone(),
            mean: s.mean.clone(),
            inv_std,
            coef: art.coefficients.clone(),
            folded,
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
        let mut z = self.bias;
        for ((x, t), w) in raw.iter().zip(&self.transforms).zip(&self.folded) {
            z += w * transform(*t, *x);
        }
        z
    }

    /// P(churn) for a raw feature vector.
    #[inline]
    pub fn score(&self, raw: &[f64]) -> f64 {
        sigmoid(self.logit(raw))
    }

    /// The `top` features pushing this score up the most (largest positive contributions first),
    /// falling back to the largest magnitudes when fewer push up.
    pub fn explain(&self, raw: &[f64], top: usize) -> Vec<Reason> {
        let mut all: Vec<Reason> = raw
            .iter()
            .enumerate()
            .map(|(i, x)| Reason {
                feature: self.names[i].clone(),
                value: *x,
                contribution: self.coef[i] * (transform(self.transforms[i], *x) - self.mean[i]) * self.inv_std[i],
            })
            .filter(|r| r.contribution != 0.0)
            .collect();
        all.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
        all.truncate(top);
        all
    }
}
