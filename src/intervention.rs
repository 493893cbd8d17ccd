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
