//! The intervention record that marketing and CRM systems consume (docs/INTERVENTIONS.md).

use serde::{Deserialize, Serialize};

use crate::model::score::Reason;
use crate::policy::Stage;
use crate::time::{format_rfc3339_ms, Millis, DAY_MS};

pub const SCHEMA: &str = "churnguard.intervention.v1";

/// What made the engine score the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The user's own event.
    Event,
    /// The rescore timer: the user has been silent.
    Silence,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReasonRecord {
    pub feature: String,
    pub value: f64,
    pub contribution: f64,
}

impl ReasonRecord {
    /// The reason as a reader sees it: what the feature measures, its value, and its push on the
    /// risk in log-odds (`+` raises it), e.g. `7d/30d activity ratio 2.6 (+0.41)`.
    pub fn describe(&self) -> String {
        let v = if self.value.fract() == 0.0 && self.value.abs() < 1e15 {
            format!("{}", self.value as i64)
        } else {
            format!("{:.1}", self.value)
        };
        format!("{} {v} ({:+.2})", describe_feature(&self.feature), self.contribution)
    }
}

/// What a feature name (docs/FEATURES.md) measures, in words.
pub fn describe_feature(name: &str) -> String {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        ["recency"] => "days since last event".into(),
        ["recency", t] => format!("days since last {t}"),
        ["tenure"] => "days since first seen".into(),
        ["count", t, w] => format!("{t} events in {w}"),
        ["amount", w] => format!("amount in {w}"),
        ["active_days", w] => format!("active days in {w}"),
        ["lifetime", "count", t] => format!("{t} events ever"),
        ["lifetime", "amount"] => "amount ever".into(),
        ["trend", pair] => match pair.split_once('_') {
            Some((short, long)) => format!("{short}/{long} activity ratio"),
            None => name.to_string(),
        },
        // On in the default spec since issue 10, so the shipped model's reasons name them.
        ["rhythm", "mean_gap"] => "mean days between active days".into(),
        ["rhythm", "last_gap"] => "days between the last two active days".into(),
        ["rhythm", "overdue"] => "silence over the usual gap".into(),
        _ => name.to_string(),
    }
}

impl From<Reason> for ReasonRecord {
    fn from(r: Reason) -> Self {
        ReasonRecord { feature: r.feature, value: r.value, contribution: r.contribution }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intervention {
    pub schema: String,
    /// Deterministic from user, tier and decision day: a consumer deduplicates on it.
    pub intervention_id: String,
    pub user_id: String,
    pub score: f64,
    /// The tier's threshold that the score crossed.
    pub threshold: f64,
    pub tier: String,
    pub stage: Stage,
    pub action: String,
    pub reasons: Vec<ReasonRecord>,
    pub model_version: String,
    /// The event time the decision describes (RFC3339).
    pub event_time: String,
    /// The engine's watermark when it decided (RFC3339).
    pub watermark: String,
    pub trigger: Trigger,
    /// Wall-clock time of emission (RFC3339).
    pub emitted_at: String,
    /// True on the control record: the user would have been contacted but is held back.
    pub control: bool,
}

pub fn intervention_id(user_id: &str, tier: &str, at: Millis) -> String {
    let day = at.div_euclid(DAY_MS);
    format!("{:016x}", crate::hash::stable_u64("intervention-v1", &format!("{user_id}\u{1f}{tier}\u{1f}{day}")))
}

pub fn now_rfc3339() -> String {
    format_rfc3339_ms(chrono::Utc::now().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_read_on_their_own() {
        let r = |feature: &str, value: f64, contribution: f64| {
            ReasonRecord { feature: feature.into(), value, contribution }.describe()
        };
        assert_eq!(r("trend.7d_30d", 2.6, 0.4123), "7d/30d activity ratio 2.6 (+0.41)");
        assert_eq!(r("recency.cancel", 0.0, 1.2), "days since last cancel 0 (+1.20)");
        assert_eq!(r("count.page_view.7d", 3.0, 0.05), "page_view events in 7d 3 (+0.05)");
        assert_eq!(r("active_days.90d", 2.0, -0.3), "active days in 90d 2 (-0.30)");
        assert_eq!(r("lifetime.count.cancel", 1.0, 0.7), "cancel events ever 1 (+0.70)");
        assert_eq!(r("recency", 4.25, 0.9), "days since last event 4.2 (+0.90)");
        assert_eq!(r("tenure", 12.0, 0.1), "days since first seen 12 (+0.10)");
        assert_eq!(r("amount.30d", 19.5, 0.1), "amount in 30d 19.5 (+0.10)");
        assert_eq!(r("lifetime.amount", 0.0, 0.1), "amount ever 0 (+0.10)");
        assert_eq!(r("rhythm.overdue", 1.4, 0.5), "silence over the usual gap 1.4 (+0.50)");
        assert_eq!(r("rhythm.mean_gap", 5.0, 0.1), "mean days between active days 5 (+0.10)");
        assert_eq!(r("rhythm.last_gap", 7.0, 0.1), "days between the last two active days 7 (+0.10)");
        assert_eq!(r("mystery", 1.0, 0.1), "mystery 1 (+0.10)");
    }
}
