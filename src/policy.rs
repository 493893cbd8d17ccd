//! The intervention policy: risk tiers, per-user cooldown with escalation, lifecycle stage,
//! the tier x stage action table, and the deterministic control group.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::features::UserRef;
use crate::model::artifact::TierThreshold;
use crate::time::{Millis, Span};

/// Lifecycle stage of a user at a point in event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    New,
    Active,
    Dormant,
    Churned,
    Reactivated,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::New, Stage::Active, Stage::Dormant, Stage::Churned, Stage::Reactivated];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::New => "new",
            Stage::Active => "active",
            Stage::Dormant => "dormant",
            Stage::Churned => "churned",
            Stage::Reactivated => "reactivated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// A user is `new` for this long after their first event.
    pub new_for: Span,
    /// Silent this long: `dormant`.
    pub dormant_after: Span,
    /// Silent this long: `churned`. A user who comes back after such a silence is `reactivated`.
    pub churned_after: Span,
    /// How long a returned user stays `reactivated`.
    pub reactivated_for: Span,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            new_for: Span::days(14),
            dormant_after: Span::days(7),
            churned_after: Span::days(30),
            reactivated_for: Span::days(30),
        }
    }
}

impl LifecycleConfig {
    pub fn stage(&self, u: UserRef<'_>, at: Millis) -> Stage {
        self.stage_of(u.first_ts(), u.last_ts(), u.returned_at(), at)
    }

    /// The stage from a user's first, last and return times.
    pub fn stage_of(&self, first: Millis, last: Millis, returned: Option<Millis>, at: Millis) -> Stage {
        let silent = at - last;
        if silent >= self.churned_after.ms() {
            Stage::Churned
        } else if silent >= self.dormant_after.ms() {
            Stage::Dormant
        } else if returned.is_some_and(|r| at - r < self.reactivated_for.ms()) {
            Stage::Reactivated
        } else if at - first < self.new_for.ms() {
            Stage::New
        } else {
            Stage::Active
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Risk tiers, highest first. Empty: use the thresholds stored in the model.
    pub tiers: Vec<TierThreshold>,
    /// The same or a lower tier is not sent again to a user within this much event time.
    pub cooldown: Span,
    /// Share of would-be interventions held back as the control group.
    pub control_fraction: f64,
    /// Salt of the control-group hash. Changing it reshuffles the groups.
    pub control_salt: String,
    /// Features listed as reasons in an intervention.
    pub top_reasons: usize,
    pub lifecycle: LifecycleConfig,
    /// tier -> stage -> action, overriding the built-in table pair by pair
    /// (see [`default_actions`]).
    pub actions: BTreeMap<String, BTreeMap<Stage, String>>,
    /// Action for a tier/stage pair in neither `actions` nor the built-in table.
    pub default_action: String,
    /// Send the same tier again after the cooldown even if the user has not been active since
    /// the last intervention. Off: a user who has gone silent gets each tier once per silence
    /// (escalation still goes through), instead of a win-back every cooldown until eviction.
    pub resend_while_silent: bool,
}

/// The built-in tier x stage action table.
pub fn default_actions() -> BTreeMap<String, BTreeMap<Stage, String>> {
    let table = |pairs: [(Stage, &str); 5]| pairs.into_iter().map(|(s, a)| (s, a.to_string())).collect();
    let mut actions = BTreeMap::new();
    actions.insert(
        "high".to_string(),
        table([
            (Stage::New, "onboarding_call"),
            (Stage::Active, "care_call"),
            (Stage::Dormant, "coupon"),
            (Stage::Churned, "winback_offer"),
            (Stage::Reactivated, "vip_outreach"),
        ]),
    );
    actions.insert(
        "medium".to_string(),
        table([
            (Stage::New, "onboarding_email"),
            (Stage::Active, "engagement_email"),
            (Stage::Dormant, "reminder_email"),
            (Stage::Churned, "winback_email"),
            (Stage::Reactivated, "welcome_back_email"),
        ]),
    );
    actions
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            tiers: Vec::new(),
            cooldown: Span::days(7),
            control_fraction: 0.1,
            control_salt: "churnguard-control-v1".to_string(),
            top_reasons: 3,
            lifecycle: LifecycleConfig::default(),
            actions: BTreeMap::new(),
            default_action: "review".to_string(),
            resend_while_silent: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("policy.{key}: {msg}")]
pub struct PolicyError {
    pub key: String,
    pub msg: String,
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let err = |key: &str, msg: String| Err(PolicyError { key: key.into(), msg });
        if !(0.0..1.0).contains(&self.control_fraction) {
            return err("control_fraction", format!("{} must be in [0, 1)", self.control_fraction));
        }
        if self.cooldown.ms() < 0 {
            return err("cooldown", "must not be negative".into());
        }
        for (i, t) in self.tiers.iter().enumerate() {
            if !(0.0..=1.0).contains(&t.min_score) || t.name.is_empty() {
                return err(&format!("tiers[{i}]"), "needs a name and min_score in [0, 1]".into());
            }
        }
        if self.tiers.windows(2).any(|w| w[0].min_score <= w[1].min_score) {
            return err("tiers", "list tiers highest min_score first, strictly decreasing".into());
        }
        let l = &self.lifecycle;
        if l.dormant_after >= l.churned_after {
            return err("lifecycle.dormant_after", "must be shorter than lifecycle.churned_after".into());
        }
        Ok(())
    }
}

/// The policy's verdict on one score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Below every tier.
    NoTier,
    /// Same or lower tier already sent within the cooldown.
    Cooldown,
    /// Same or lower tier already sent, and the user has not been active since.
    AlreadySent,
    /// Send tier `rank` (0 = highest).
    Send(u8),
}

/// What the policy remembers per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub last_sent: Millis,
    pub last_rank: u8,
}

impl Memory {
    pub const NONE: Memory = Memory { last_sent: Millis::MIN, last_rank: u8::MAX };
}

/// Tiers resolved against a model, ready to decide.
#[derive(Debug, Clone)]
pub struct Policy {
    pub cfg: PolicyConfig,
    pub tiers: Vec<TierThreshold>,
    builtin_actions: BTreeMap<String, BTreeMap<Stage, String>>,
}

impl Policy {
    pub fn new(cfg: PolicyConfig, model_tiers: &[TierThreshold]) -> Policy {
        let tiers = if cfg.tiers.is_empty() { model_tiers.to_vec() } else { cfg.tiers.clone() };
        Policy { cfg, tiers, builtin_actions: default_actions() }
    }

    /// The lowest score that can trigger anything.
    pub fn min_threshold(&self) -> f64 {
        self.tiers.last().map_or(f64::INFINITY, |t| t.min_score)
    }

    /// Decide for a score at event time `at` for a user whose newest event is at `last_active`,
    /// updating the user's memory when sending.
    pub fn judge(&self, score: f64, at: Millis, last_active: Millis, mem: &mut Memory) -> Verdict {
        let Some(rank) = self.tiers.iter().position(|t| score >= t.min_score) else {
            return Verdict::NoTier;
        };
        let rank = rank as u8;
        let in_cooldown = mem.last_sent != Millis::MIN && at < mem.last_sent.saturating_add(self.cfg.cooldown.ms());
        if in_cooldown && rank >= mem.last_rank {
            return Verdict::Cooldown;
        }
        if !self.cfg.resend_while_silent && self.silent_since_sent(mem, last_active) && rank >= mem.last_rank {
            return Verdict::AlreadySent;
        }
        *mem = Memory { last_sent: at, last_rank: rank };
        Verdict::Send(rank)
    }

    /// Whether the user has sent no event since their last intervention.
    pub fn silent_since_sent(&self, mem: &Memory, last_active: Millis) -> bool {
        mem.last_sent != Millis::MIN && last_active <= mem.last_sent
    }

    pub fn action(&self, tier: &str, stage: Stage) -> &str {
        fn lookup<'t>(t: &'t BTreeMap<String, BTreeMap<Stage, String>>, tier: &str, stage: Stage) -> Option<&'t str> {
            t.get(tier).and_then(|m| m.get(&stage)).map(String::as_str)
        }
        lookup(&self.cfg.actions, tier, stage)
            .or_else(|| lookup(&self.builtin_actions, tier, stage))
            .unwrap_or(self.cfg.default_action.as_str())
    }

    /// Whether a user's interventions go to the control record. Depends only on the salt and the
    /// user id, so it is stable across restarts and instances.
    pub fn in_control(&self, user_id: &str) -> bool {
        self.cfg.control_fraction > 0.0
            && crate::hash::stable_unit(&self.cfg.control_salt, user_id) < self.cfg.control_fraction
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY_MS;

    fn policy() -> Policy {
        Policy::new(
            PolicyConfig::default(),
            &[
                TierThreshold { name: "high".into(), min_score: 0.8 },
                TierThreshold { name: "medium".into(), min_score: 0.5 },
            ],
        )
    }

    #[test]
    fn cooldown_blocks_same_tier_but_not_escalation() {
        let p = policy();
        let mut m = Memory::NONE;
        // An active user: an event every time we look.
        assert_eq!(p.judge(0.3, 0, 0, &mut m), Verdict::NoTier);
        assert_eq!(p.judge(0.6, 0, 0, &mut m), Verdict::Send(1));
        assert_eq!(p.judge(0.6, DAY_MS, DAY_MS, &mut m), Verdict::Cooldown);
        assert_eq!(p.judge(0.9, 2 * DAY_MS, 2 * DAY_MS, &mut m), Verdict::Send(0), "escalation goes through");
        assert_eq!(p.judge(0.6, 3 * DAY_MS, 3 * DAY_MS, &mut m), Verdict::Cooldown, "a lower tier waits too");
        assert_eq!(p.judge(0.9, 9 * DAY_MS - 1, 9 * DAY_MS - 1, &mut m), Verdict::Cooldown);
        assert_eq!(p.judge(0.9, 9 * DAY_MS, 9 * DAY_MS, &mut m), Verdict::Send(0), "cooldown over");
    }

    #[test]
    fn a_silent_user_gets_each_tier_once_per_silence() {
        let p = policy();
        let mut m = Memory::NONE;
        let last_active = 0;
        assert_eq!(p.judge(0.6, DAY_MS, last_active, &mut m), Verdict::Send(1));
        assert_eq!(p.judge(0.6, 20 * DAY_MS, last_active, &mut m), Verdict::AlreadySent);
        assert_eq!(p.judge(0.95, 21 * DAY_MS, last_active, &mut m), Verdict::Send(0), "escalation still goes through");
        assert_eq!(p.judge(0.95, 40 * DAY_MS, last_active, &mut m), Verdict::AlreadySent);
        assert_eq!(p.judge(0.95, 41 * DAY_MS, 41 * DAY_MS, &mut m), Verdict::Send(0), "back and still at risk");
        let mut resend = policy();
        resend.cfg.resend_while_silent = true;
        let mut m = Memory::NONE;
        assert_eq!(resend.judge(0.6, DAY_MS, 0, &mut m), Verdict::Send(1));
        assert_eq!(resend.judge(0.6, 20 * DAY_MS, 0, &mut m), Verdict::Send(1));
    }

    #[test]
    fn action_overrides_merge_with_the_builtin_table() {
        let mut cfg = PolicyConfig::default();
        cfg.actions.insert("high".into(), [(Stage::Dormant, "sms".to_string())].into_iter().collect());
        let p = Policy::new(cfg, &[]);
        assert_eq!(p.action("high", Stage::Dormant), "sms");
        assert_eq!(p.action("high", Stage::Active), "care_call", "untouched pairs keep the built-in action");
        assert_eq!(p.action("medium", Stage::New), "onboarding_email");
        assert_eq!(p.action("vip", Stage::New), "review");
    }

    #[test]
    fn control_group_is_stable_and_near_its_fraction() {
        let p = policy();
        let n = 20_000;
        let picked: Vec<bool> = (0..n).map(|i| p.in_control(&format!("user-{i}"))).collect();
        let again: Vec<bool> = (0..n).map(|i| policy().in_control(&format!("user-{i}"))).collect();
        assert_eq!(picked, again);
        let share = picked.iter().filter(|c| **c).count() as f64 / n as f64;
        assert!((share - 0.1).abs() < 0.01, "{share}");
    }

    #[test]
    fn config_errors_name_the_key() {
        let c = PolicyConfig { control_fraction: 1.5, ..PolicyConfig::default() };
        assert_eq!(c.validate().unwrap_err().key, "control_fraction");
        let mut c = PolicyConfig::default();
        c.lifecycle.dormant_after = Span::days(40);
        assert_eq!(c.validate().unwrap_err().key, "lifecycle.dormant_after");
    }
}
