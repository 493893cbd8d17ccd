//! The feature specification: which event types and windows a model sees, and the
//! deterministic, readable feature names derived from it.
//!
//! The spec is part of every model artifact, so the engine that serves a model computes exactly
//! the features it was trained on.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::time::{Span, DAY_MS};

/// The name of the catch-all bucket for event types not listed in the spec.
pub const OTHER_TYPE: &str = "other";
/// Longest window the engine supports.
pub const MAX_WINDOW: Span = Span::days(365);
const MAX_EVENT_TYPES: usize = super::MAX_TYPES - 1;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("feature spec: {0}")]
    Invalid(String),
    #[error("feature spec: cannot read {path}")]
    Read { path: String, source: std::io::Error },
    #[error("feature spec: {0}")]
    Parse(String),
}

/// Which aggregates to compute. All are on by default.
///
/// `rhythm` and `recency_to_tenure` were added after models had shipped without them. A model
/// artifact's JSON leaves them out when off and reads a missing key as off, so older artifacts
/// load with the features they were trained on and keep their fingerprints. A TOML spec file is
/// read through [`FeatureSpec::from_toml_str`], where a missing key means the default (on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Aggregates {
    /// `count.<type>.<window>`: events per type per window.
    pub counts: bool,
    /// `amount.<window>`: sum of `amount` per window.
    pub amount_sum: bool,
    /// `active_days.<window>`: distinct UTC days with activity (whole-day windows only).
    pub active_days: bool,
    /// `recency` and `recency.<type>`: days since the last event, against the event-time clock.
    pub recency: bool,
    /// `tenure`: days since the first event.
    pub tenure: bool,
    /// `lifetime.count.<type>` and `lifetime.amount`.
    pub lifetime: bool,
    /// `trend.<short>_<long>`: the short window's event rate over the long window's.
    pub trends: bool,
    /// `rhythm.mean_gap`, `rhythm.last_gap` and `rhythm.overdue`: the user's own rhythm over
    /// the active days within the longest whole-day window up to their last event (see
    /// docs/FEATURES.md). Needs a whole-day window.
    #[serde(default, skip_serializing_if = "is_false")]
    pub rhythm: bool,
    /// Recency features are capped at the user's tenure instead of `recency_cap`: the silence
    /// is never capped, and a type never seen reads as the tenure.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recency_to_tenure: bool,
}

// Options added after models were shipped are left out of the JSON when off, so the spec
// fingerprints of existing models do not change. Their field-level `default` (false) overrides
// the struct-level one (true), so an artifact without the key reads as off, as it was trained.
fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for Aggregates {
    fn default() -> Self {
        Aggregates {
            counts: true,
            amount_sum: true,
            active_days: true,
            recency: true,
            tenure: true,
            lifetime: true,
            trends: true,
            // On since issue 10: the 90-day recency cap hides how long a user has been gone,
            // which real data showed to matter (models/README.md, "Old and new defaults").
            rhythm: true,
            recency_to_tenure: true,
        }
    }
}

/// The feature spec, as written in TOML (see docs/FEATURES.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Event types of interest, in order; every other type counts as `other`.
    pub event_types: Vec<String>,
    /// Sliding windows, shortest first (e.g. 1d, 7d, 30d, 90d).
    pub windows: Vec<Span>,
    /// Each window is kept as this many time slots; a window at time t covers the slot holding t
    /// and the `slots - 1` slots before it, so its span is between (slots-1)/slots and all of the
    /// window length. More slots: sharper windows, more bytes per user.
    #[serde(default = "default_slots")]
    pub slots_per_window: u32,
    /// Recency of a type never seen, and any longer recency, reads as this many days.
    #[serde(default)]
    pub recency_cap: Option<Span>,
    #[serde(default)]
    pub aggregates: Aggregates,
}

fn default_slots() -> u32 {
    6
}

impl Default for FeatureSpec {
    fn default() -> Self {
        FeatureSpec {
            event_types: ["login", "page_view", "purchase", "support_ticket", "payment_failed"]
                .map(String::from)
                .to_vec(),
            windows: vec![Span::days(1), Span::days(7), Span::days(30), Span::days(90)],
            slots_per_window: default_slots(),
            recency_cap: None,
            aggregates: Aggregates::default(),
        }
    }
}

/// How a raw feature value is transformed before standardisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// ln(1 + x) for non-negative heavy-tailed values (counts, days).
    Log1p,
    /// sign(x) * ln(1 + |x|) for amounts, which may be negative (refunds).
    SignedLog1p,
    /// ln(x) for strictly positive ratios.
    Ln,
    /// Used as is.
    Identity,
}

impl Transform {
    #[inline]
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Transform::Log1p => x.max(0.0).ln_1p(),
            Transform::SignedLog1p => x.signum() * x.abs().ln_1p(),
            Transform::Ln => x.max(f64::MIN_POSITIVE).ln(),
            Transform::Identity => x,
        }
    }
}

/// One feature's name and transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureDef {
    pub name: String,
    pub transform: Transform,
}

impl FeatureSpec {
    /// Parse and validate a spec file. `[aggregates]` keys left out take their default; see
    /// [`Aggregates`] for why the serde defaults alone would read the newer options as off.
    pub fn from_toml_str(s: &str) -> Result<Self, SpecError> {
        let parse_err = |e: toml::de::Error| SpecError::Parse(e.to_string());
        // Typed parse first: its errors point at the offending line.
        let mut spec: FeatureSpec = toml::from_str(s).map_err(parse_err)?;
        let table: toml::Table = toml::from_str(s).map_err(parse_err)?;
        let given = table.get("aggregates").and_then(toml::Value::as_table);
        let has = |key: &str| given.is_some_and(|a| a.contains_key(key));
        let defaults = Aggregates::default();
        if !has("rhythm") {
            spec.aggregates.rhythm = defaults.rhythm;
        }
        if !has("recency_to_tenure") {
            spec.aggregates.recency_to_tenure = defaults.recency_to_tenure;
        }
        spec.validate()?;
        Ok(spec)
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError::Read { path: path.display().to_string(), source: e })?;
        Self::from_toml_str(&text)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Invalid(m));
        if self.event_types.len() > MAX_EVENT_TYPES {
            return bad(format!(
                "event_types has {} entries; at most {MAX_EVENT_TYPES} are supported",
                self.event_types.len()
            ));
        }
        for (i, t) in self.event_types.iter().enumerate() {
            if t.is_empty()
                || t == OTHER_TYPE
                || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return bad(format!(
                    "event_types[{i}] = {t:?}: use letters, digits, '_' or '-', and not {OTHER_TYPE:?}"
                ));
            }
            if self.event_types[..i].contains(t) {
                return bad(format!("event_types lists {t:?} twice"));
            }
        }
        if self.windows.is_empty() {
            return bad("windows is empty; list at least one, e.g. windows = [\"7d\", \"30d\"]".into());
        }
        if self.windows.len() > super::MAX_WINDOWS {
            return bad(format!("windows lists {}; at most {} are supported", self.windows.len(), super::MAX_WINDOWS));
        }
        if !(2..=64).contains(&self.slots_per_window) {
            return bad(format!("slots_per_window = {}: use 2..=64", self.slots_per_window));
        }
        let k = i64::from(self.slots_per_window);
        for (i, w) in self.windows.iter().enumerate() {
            if w.ms() <= 0 || *w > MAX_WINDOW {
                return bad(format!("windows[{i}] = {w}: must be in (0, {MAX_WINDOW}]"));
            }
            if w.ms() % k != 0 {
                return bad(format!(
                    "windows[{i}] = {w} is not a whole number of milliseconds per slot with slots_per_window = {k}"
                ));
            }
            if i > 0 && self.windows[i - 1] >= *w {
                return bad("windows must be strictly increasing (shortest first)".into());
            }
        }
        if self.aggregates.rhythm && self.day_windows().next().is_none() {
            return bad("aggregates.rhythm needs a whole-day window (e.g. \"90d\") to read active days from; add one, or set rhythm = false (it is on by default)".into());
        }
        if let Some(cap) = self.recency_cap {
            if cap.ms() <= 0 {
                return bad("recency_cap must be positive".into());
            }
        }
        Ok(())
    }

    /// Number of type buckets: the listed types plus `other`.
    pub fn n_types(&self) -> usize {
        self.event_types.len() + 1
    }

    pub fn type_name(&self, idx: usize) -> &str {
        self.event_types.get(idx).map_or(OTHER_TYPE, String::as_str)
    }

    /// The type bucket of an event type string; unknown types map to `other`.
    #[inline]
    pub fn type_index(&self, event_type: &str) -> usize {
        let b = event_type.as_bytes();
        self.event_types
            .iter()
            // Length and first byte reject almost every non-match without a memcmp call.
            .position(|t| t.len() == b.len() && t.as_bytes().first() == b.first() && t.as_bytes() == b)
            .unwrap_or(self.event_types.len())
    }

    pub fn recency_cap_days(&self) -> f64 {
        self.recency_cap.or_else(|| self.windows.last().copied()).unwrap_or(Span::days(90)).as_days_f64()
    }

    /// Windows eligible for `active_days`: whole days.
    pub fn day_windows(&self) -> impl Iterator<Item = (usize, Span)> + '_ {
        self.windows.iter().copied().enumerate().filter(|(_, w)| w.ms() % DAY_MS == 0)
    }

    /// Longest whole-day window in days (0 if none), the length of the activity-day bitmap.
    pub fn max_active_days(&self) -> usize {
        if !self.aggregates.active_days && !self.aggregates.rhythm {
            return 0;
        }
        self.day_windows().map(|(_, w)| (w.ms() / DAY_MS) as usize).max().unwrap_or(0)
    }

    /// All features in vector order. The order here is the order of [`crate::features::state`]'s
    /// vector and of a model's coefficients.
    pub fn features(&self) -> Vec<FeatureDef> {
        let mut out = Vec::new();
        let mut push = |name: String, transform| out.push(FeatureDef { name, transform });
        let a = &self.aggregates;
        if a.counts {
            for w in &self.windows {
                for t in 0..self.n_types() {
                    push(format!("count.{}.{w}", self.type_name(t)), Transform::Log1p);
                }
            }
        }
        if a.amount_sum {
            for w in &self.windows {
                push(format!("amount.{w}"), Transform::SignedLog1p);
            }
        }
        if a.active_days {
            for (_, w) in self.day_windows() {
                push(format!("active_days.{w}"), Transform::Log1p);
            }
        }
        if a.recency {
            push("recency".into(), Transform::Log1p);
            for t in &self.event_types {
                push(format!("recency.{t}"), Transform::Log1p);
            }
        }
        if a.tenure {
            push("tenure".into(), Transform::Log1p);
        }
        if a.lifetime {
            for t in 0..self.n_types() {
                push(format!("lifetime.count.{}", self.type_name(t)), Transform::Log1p);
            }
            push("lifetime.amount".into(), Transform::SignedLog1p);
        }
        if a.trends {
            for pair in self.windows.windows(2) {
                push(format!("trend.{}_{}", pair[0], pair[1]), Transform::Ln);
            }
        }
        if a.rhythm {
            push("rhythm.mean_gap".into(), Transform::Log1p);
            push("rhythm.last_gap".into(), Transform::Log1p);
            push("rhythm.overdue".into(), Transform::Log1p);
        }
        out
    }

    pub fn feature_names(&self) -> Vec<String> {
        self.features().into_iter().map(|f| f.name).collect()
    }

    /// A stable fingerprint of the spec: sha256 over its canonical JSON.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// A spec derived from the event types present in data: the most frequent types (by count,
    /// ties by name) that make up at least `min_share` of events, at most `max_types` of them.
    pub fn derive_from_counts(counts: &[(String, u64)], min_share: f64, max_types: usize) -> FeatureSpec {
        let total: u64 = counts.iter().map(|(_, c)| c).sum();
        let mut sorted: Vec<_> = counts
            .iter()
            .filter(|(t, _)| {
                !t.is_empty()
                    && t != OTHER_TYPE
                    && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            .collect();
        sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let event_types = sorted
            .into_iter()
            .filter(|(_, c)| total > 0 && (*c as f64) / (total as f64) >= min_share)
            .take(max_types.min(MAX_EVENT_TYPES))
            .map(|(t, _)| t.clone())
            .collect();
        FeatureSpec { event_types, ..FeatureSpec::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_valid_with_readable_unique_names() {
        let spec = FeatureSpec::default();
        spec.validate().unwrap();
        let names = spec.feature_names();
        assert!(names.contains(&"count.purchase.30d".to_string()));
        assert!(names.contains(&"count.other.1d".to_string()));
        assert!(names.contains(&"active_days.7d".to_string()));
        assert!(names.contains(&"recency.login".to_string()));
        assert!(names.contains(&"trend.7d_30d".to_string()));
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len());
    }

    #[test]
    fn toml_round_trip_and_unknown_keys_fail() {
        let spec = FeatureSpec::from_toml_str(
            "event_types = [\"login\", \"purchase\"]\nwindows = [\"7d\", \"28d\"]\nslots_per_window = 7\n[aggregates]\ntrends = false\n",
        )
        .unwrap();
        assert_eq!(spec.windows, vec![Span::days(7), Span::days(28)]);
        assert!(!spec.aggregates.trends);
        let err = FeatureSpec::from_toml_str("event_types = []\nwindows = [\"7d\"]\nwindow = 3\n").unwrap_err();
        assert!(err.to_string().contains("window"), "{err}");
    }

    /// A spec file that leaves `rhythm` and `recency_to_tenure` out gets the defaults (on); one
    /// that sets them gets what it says, `false` included.
    #[test]
    fn spec_file_options_default_on_and_can_be_turned_off() {
        let head = "event_types = [\"login\"]\nwindows = [\"7d\", \"90d\"]\n";
        let omitted = FeatureSpec::from_toml_str(head).unwrap();
        assert!(omitted.aggregates.rhythm && omitted.aggregates.recency_to_tenure);
        let other_keys = FeatureSpec::from_toml_str(&format!("{head}[aggregates]\ntrends = false\n")).unwrap();
        assert!(other_keys.aggregates.rhythm && other_keys.aggregates.recency_to_tenure);
        assert!(!other_keys.aggregates.trends);
        let on = FeatureSpec::from_toml_str(&format!("{head}[aggregates]\nrhythm = true\nrecency_to_tenure = true\n"))
            .unwrap();
        assert_eq!(on, omitted);
        let off =
            FeatureSpec::from_toml_str(&format!("{head}[aggregates]\nrhythm = false\nrecency_to_tenure = false\n"))
                .unwrap();
        assert!(!off.aggregates.rhythm && !off.aggregates.recency_to_tenure);
        assert!(!off.feature_names().iter().any(|n| n.starts_with("rhythm.")));
        let one_off = FeatureSpec::from_toml_str(&format!("{head}[aggregates]\nrecency_to_tenure = false\n")).unwrap();
        assert!(one_off.aggregates.rhythm && !one_off.aggregates.recency_to_tenure);
        // Without a whole-day window the default rhythm cannot be computed: the error says how to
        // turn it off.
        let err = FeatureSpec::from_toml_str("event_types = []\nwindows = [\"6h\"]\n").unwrap_err().to_string();
        assert!(err.contains("rhythm = false"), "{err}");
        FeatureSpec::from_toml_str("event_types = []\nwindows = [\"6h\"]\n[aggregates]\nrhythm = false\n").unwrap();
    }

    /// In an artifact's JSON the options are written only when on, and a missing key reads as
    /// off: that is how artifacts from before the options were written.
    #[test]
    fn json_round_trips_and_a_missing_option_reads_as_off() {
        let on = FeatureSpec::default();
        let json = serde_json::to_string(&on).unwrap();
        assert!(json.contains("\"rhythm\":true") && json.contains("\"recency_to_tenure\":true"), "{json}");
        assert_eq!(serde_json::from_str::<FeatureSpec>(&json).unwrap(), on);
        let mut off = on.clone();
        off.aggregates.rhythm = false;
        off.aggregates.recency_to_tenure = false;
        let json = serde_json::to_string(&off).unwrap();
        assert!(!json.contains("rhythm") && !json.contains("recency_to_tenure"), "{json}");
        assert_eq!(serde_json::from_str::<FeatureSpec>(&json).unwrap(), off);
        assert_ne!(on.fingerprint(), off.fingerprint());
    }

    #[test]
    fn invalid_specs_are_refused_with_the_key_named() {
        let mut s = FeatureSpec { windows: vec![Span::days(30), Span::days(7)], ..FeatureSpec::default() };
        assert!(s.validate().unwrap_err().to_string().contains("increasing"));
        s.windows = vec![Span::days(400)];
        assert!(s.validate().unwrap_err().to_string().contains("windows[0]"));
        s = FeatureSpec::default();
        s.event_types.push("other".into());
        assert!(s.validate().unwrap_err().to_string().contains("event_types[5]"));
        s = FeatureSpec::default();
        s.windows = vec![Span(1001)];
        assert!(s.validate().unwrap_err().to_string().contains("slot"));
    }

    #[test]
    fn fingerprint_changes_with_the_spec() {
        let a = FeatureSpec::default();
        let mut b = a.clone();
        b.slots_per_window = 8;
        assert_eq!(a.fingerprint(), FeatureSpec::default().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn derived_spec_keeps_frequent_types_in_frequency_order() {
        let counts = vec![
            ("login".to_string(), 500),
            ("purchase".to_string(), 100),
            ("rare".to_string(), 1),
            ("page_view".to_string(), 900),
        ];
        let s = FeatureSpec::derive_from_counts(&counts, 0.01, 16);
        assert_eq!(s.event_types, vec!["page_view", "login", "purchase"]);
    }
}
