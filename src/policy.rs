//! The intervention policy: risk tiers, per-user cooldown with escalation, lifecycle stage,
//! the tier x stage action table, and the deterministic control group.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::features::UserRef;
use crate::model::artifact::TierThreshold;
use crate::time::{Millis, Span};
use crate::uplift::table::UpliftTable;

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
    /// Optional value-aware decision rule (`[policy.value]`); unset: the threshold tiers decide
    /// alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<ValueRule>,
}

/// `[policy.value]`: intervene only where the expected net value is positive, with the action
/// that has the highest one. Expected net value of action `a` for a user with risk `p`:
/// `p x uplift(a) x value - cost(a)`, where `value = base_value + value_feature` of the user.
/// The candidates are the actions of the judged tier and of every lower tier at the user's
/// stage; the record keeps the judged tier (see docs/INTERVENTIONS.md#value-aware-decisions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValueRule {
    /// Expected absolute uplift in retention per action (0.06 = 6 points). An action not listed
    /// has no uplift.
    pub uplift: BTreeMap<String, f64>,
    /// A `churnguard uplift --json` output file to fill `uplift` from at start-up, with the point
    /// estimates of its action rows ([`PolicyConfig::load_uplift_from`]). Exclusive with an
    /// inline `uplift`. A relative path starts at the working directory, as `model.path` does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uplift_from: Option<PathBuf>,
    /// Cost of one record per action.
    pub cost: BTreeMap<String, f64>,
    /// Cost of an action not listed in `cost`.
    pub default_cost: f64,
    /// The model feature (raw value) that measures the user's value, e.g. `amount.90d`; empty:
    /// `base_value` only. It must be one of the model's features.
    pub value_feature: String,
    /// Added to every user's value.
    pub base_value: f64,
}

impl Default for ValueRule {
    fn default() -> Self {
        ValueRule {
            uplift: BTreeMap::new(),
            uplift_from: None,
            cost: BTreeMap::new(),
            default_cost: 0.0,
            value_feature: "amount.90d".to_string(),
            base_value: 0.0,
        }
    }
}

impl ValueRule {
    /// Expected net value of `action` for risk `p` and user value `value`.
    pub fn net_value(&self, action: &str, p: f64, value: f64) -> f64 {
        let uplift = self.uplift.get(action).copied().unwrap_or(0.0);
        let cost = self.cost.get(action).copied().unwrap_or(self.default_cost);
        p * uplift * value - cost
    }
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
            value: None,
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
        if let Some(v) = &self.value {
            if !v.uplift.values().all(|x| x.is_finite() && (-1.0..=1.0).contains(x)) {
                return err("value.uplift", "uplifts must be finite, in -1..=1 (absolute retention)".into());
            }
            if !v.cost.values().chain([&v.default_cost, &v.base_value]).all(|x| x.is_finite() && *x >= 0.0) {
                return err("value.cost", "costs and base_value must be finite and non-negative".into());
            }
        }
        Ok(())
    }

    /// Fills `value.uplift` from the file `value.uplift_from` names, and returns what the file
    /// said (for [`PolicyConfig::resolve_uplift_from`]'s messages). Nothing to do without it.
    pub fn load_uplift_from(&mut self) -> Result<Option<UpliftTable>, PolicyError> {
        let Some(rule) = self.value.as_mut() else { return Ok(None) };
        let Some(path) = &rule.uplift_from else { return Ok(None) };
        let err = |msg: String| PolicyError { key: "value.uplift_from".into(), msg };
        if !rule.uplift.is_empty() {
            // Which one wins is a guess either way; the operator decides.
            return Err(err(
                "policy.value.uplift is set too; keep one: uplift_from reads the per-action uplift from a `churnguard uplift --json` file, uplift lists it inline".into(),
            ));
        }
        if path.as_os_str().is_empty() {
            return Err(err(
                "is empty: give the path of a `churnguard uplift --json` output file, or remove the key".into()
            ));
        }
        let table = crate::uplift::table::read(path).map_err(|e| err(e.to_string()))?;
        rule.uplift = table.uplift();
        Ok(Some(table))
    }

    /// [`PolicyConfig::load_uplift_from`], then the start-up messages: what was read, and
    /// warnings for estimates whose interval covers zero.
    pub fn resolve_uplift_from(&mut self) -> Result<(), PolicyError> {
        if let Some(table) = self.load_uplift_from()? {
            let path = self.value.as_ref().and_then(|v| v.uplift_from.as_deref()).unwrap_or(std::path::Path::new(""));
            crate::term::note(&table.summary(path));
            for w in table.warnings(path) {
                crate::term::warn(&w);
            }
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

    /// The value-aware choice among the actions of tier `rank` and every lower tier at `stage`:
    /// the action with the highest expected net value if it is positive, `None` otherwise (or
    /// `Some` of the table's action when no value rule is set).
    pub fn value_choice(&self, rank: usize, stage: Stage, p: f64, value: f64) -> Option<String> {
        let Some(rule) = &self.cfg.value else {
            return Some(self.action(&self.tiers[rank].name, stage).to_string());
        };
        let mut best: Option<(f64, &str)> = None;
        for t in &self.tiers[rank..] {
            let a = self.action(&t.name, stage);
            let v = rule.net_value(a, p, value);
            if best.is_none_or(|(b, _)| v > b) {
                best = Some((v, a));
            }
        }
        best.filter(|(v, _)| *v > 0.0).map(|(_, a)| a.to_string())
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
    fn value_rule_picks_the_best_positive_action_or_none() {
        let mut p = policy();
        assert_eq!(p.value_choice(0, Stage::Dormant, 0.9, 0.0).as_deref(), Some("coupon"), "no rule: the table");
        p.cfg.value = Some(ValueRule {
            uplift: [("coupon".to_string(), 0.10), ("reminder_email".to_string(), 0.02)].into(),
            cost: [("coupon".to_string(), 5.0), ("reminder_email".to_string(), 0.1)].into(),
            ..ValueRule::default()
        });
        // Value 100 at risk 0.9: coupon 0.9 x 0.10 x 100 - 5 = 4; email 0.9 x 0.02 x 100 - 0.1 = 1.7.
        assert_eq!(p.value_choice(0, Stage::Dormant, 0.9, 100.0).as_deref(), Some("coupon"));
        // Value 20: coupon 1.8 - 5 < 0; email 0.36 - 0.1 = 0.26 > 0.
        assert_eq!(p.value_choice(0, Stage::Dormant, 0.9, 20.0).as_deref(), Some("reminder_email"));
        // Value 1: nothing pays.
        assert_eq!(p.value_choice(0, Stage::Dormant, 0.9, 1.0), None);
        // The medium tier cannot pick the high tier's coupon.
        assert_eq!(p.value_choice(1, Stage::Dormant, 0.9, 100.0).as_deref(), Some("reminder_email"));
        // An action without uplift only costs.
        assert_eq!(p.value_choice(0, Stage::Active, 0.9, 1000.0), None);
        let bad = PolicyConfig {
            value: Some(ValueRule { default_cost: -1.0, ..ValueRule::default() }),
            ..PolicyConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "value.cost");
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
