//! The model artifact: everything needed to serve a model, validated against the engine on load.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use crate::features::spec::{FeatureSpec, Transform};

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model {path}")]
    Read { path: String, source: std::io::Error },
    #[error("model {path} is not a churnguard model artifact")]
    Parse { path: String, source: serde_json::Error },
    #[error("model is incompatible with this engine: {0}")]
    Incompatible(String),
    #[error("cannot write model {path}")]
    Write { path: String, source: std::io::Error },
}

/// Per-feature transform and standardisation, fitted on training rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaler {
    pub transforms: Vec<Transform>,
    pub mean: Vec<f64>,
    /// Standard deviation of the transformed feature; 1.0 for a constant feature.
    pub std: Vec<f64>,
}

/// A named risk tier: scores at or above `min_score` belong to it (highest tier wins).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierThreshold {
    pub name: String,
    pub min_score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// The F1-optimal threshold on the validation split.
    pub decision: f64,
    /// Tiers, highest `min_score` first.
    pub tiers: Vec<TierThreshold>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    pub events_file: String,
    pub data_from: String,
    pub data_to: String,
    pub cutoffs: Vec<String>,
    pub horizon: String,
    pub active_within: Option<String>,
    pub label_source: String,
    pub rows: usize,
    pub users: usize,
    pub churn_rate: f64,
    pub l2: f64,
    pub l2_grid: Vec<(f64, f64)>,
    pub validation: Metrics,
    pub validation_rows: usize,
    pub seed: u64,
    pub train_seconds: f64,
    pub engine_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelArtifact {
    pub format_version: u32,
    pub model_version: String,
    pub created_at: String,
    pub spec: FeatureSpec,
    pub spec_fingerprint: String,
    pub feature_names: Vec<String>,
    pub scaler: Scaler,
    /// Coefficients on standardised features; positive raises P(churn).
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    pub thresholds: Thresholds,
    pub training: TrainingInfo,
}

impl ModelArtifact {
    /// A hand-written model: weights on transformed (not standardised) features, by name, the
    /// rest zero. For rules of thumb before there is data to train on, and for tests that need a
    /// model whose every score is known in advance.
    pub fn from_weights(
        spec: FeatureSpec,
        model_version: &str,
        weights: &[(&str, f64)],
        intercept: f64,
        tiers: Vec<TierThreshold>,
    ) -> Result<ModelArtifact, ModelError> {
        let defs = spec.features();
        let p = defs.len();
        let mut coefficients = vec![0.0; p];
        for (name, w) in weights {
            let i = defs
                .iter()
                .position(|d| d.name == *name)
                .ok_or_else(|| ModelError::Incompatible(format!("no feature {name:?} in the spec")))?;
            coefficients[i] = *w;
        }
        let art = ModelArtifact {
            format_version: FORMAT_VERSION,
            model_version: model_version.to_string(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            spec_fingerprint: spec.fingerprint(),
            feature_names: defs.iter().map(|d| d.name.clone()).collect(),
            scaler: Scaler {
                transforms: defs.iter().map(|d| d.transform).collect(),
                mean: vec![0.0; p],
                std: vec![1.0; p],
            },
            coefficients,
            intercept,
            thresholds: Thresholds { decision: tiers.last().map_or(0.5, |t| t.min_score), tiers },
            training: TrainingInfo {
                events_file: "hand-written".into(),
                data_from: String::new(),
                data_to: String::new(),
                cutoffs: vec![],
                horizon: String::new(),
                active_within: None,
                label_source: "none: hand-written weights".into(),
                rows: 0,
                users: 0,
                churn_rate: 0.0,
                l2: 0.0,
                l2_grid: vec![],
                validation: Metrics {
                    roc_auc: 0.0,
                    pr_auc: 0.0,
                    log_loss: 0.0,
                    brier: 0.0,
                    n_users: 0,
                    n_rows: 0,
                    churn_rate: 0.0,
                },
                validation_rows: 0,
                seed: 0,
                train_seconds: 0.0,
                engine_version: env!("CARGO_PKG_VERSION").to_string(),
            },
            spec,
        };
        art.validate()?;
        Ok(art)
    }

    pub fn load(path: &Path) -> Result<ModelArtifact, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ModelError::Read { path: path.display().to_string(), source })?;
        let art: ModelArtifact = serde_json::from_str(&text)
            .map_err(|source| ModelError::Parse { path: path.display().to_string(), source })?;
        art.validate()?;
        Ok(art)
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let write_err = |source| ModelError::Write { path: path.display().to_string(), source };
        let json = serde_json::to_string_pretty(self).map_err(|e| write_err(std::io::Error::other(e)))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        // Write then rename, so a reader (hot reload) never sees half a file.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json + "\n").map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }

    /// Refuse anything this engine would serve differently from how it was trained.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Incompatible(m));
        if self.format_version != FORMAT_VERSION {
            return bad(format!("format_version {} (this engine reads {FORMAT_VERSION})", self.format_version));
        }
        self.spec.validate().map_err(|e| ModelError::Incompatible(e.to_string()))?;
        if self.spec.fingerprint() != self.spec_fingerprint {
            return bad(format!(
                "spec fingerprint {} does not match the embedded spec ({}); the artifact was edited or built by another engine version",
                self.spec_fingerprint,
                self.spec.fingerprint()
            ));
        }
        let defs = self.spec.features();
        let p = defs.len();
        let names: Vec<&str> = defs.iter().map(|d| d.name.as_str()).collect();
        if self.feature_names.iter().map(String::as_str).ne(names.iter().copied()) {
            return bad(format!(
                "feature names differ from what this engine derives from the spec ({} vs {p} features)",
                self.feature_names.len()
            ));
        }
        let s = &self.scaler;
        for (what, len) in [
            ("coefficients", self.coefficients.len()),
            ("scaler.mean", s.mean.len()),
            ("scaler.std", s.std.len()),
            ("scaler.transforms", s.transforms.len()),
        ] {
            if len != p {
                return bad(format!("{what} has {len} entries, the spec has {p} features"));
            }
        }
        if defs.iter().zip(&s.transforms).any(|(d, t)| d.transform != *t) {
            return bad("scaler.transforms differ from the spec's feature transforms".into());
        }
        let finite = self.coefficients.iter().chain(&s.mean).all(|v| v.is_finite()) && self.intercept.is_finite();
        if !finite || s.std.iter().any(|v| !v.is_finite() || *v <= 0.0) {
            return bad("non-finite coefficient, mean or std, or a std <= 0".into());
        }
        let t = &self.thresholds;
        if !(0.0..=1.0).contains(&t.decision) || t.tiers.iter().any(|x| !(0.0..=1.0).contains(&x.min_score)) {
            return bad("thresholds must lie in [0, 1]".into());
        }
        if t.tiers.windows(2).any(|w| w[0].min_score < w[1].min_score) {
            return bad("thresholds.tiers must be ordered highest min_score first".into());
        }
        Ok(())
    }
}
