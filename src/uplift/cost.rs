//! Cost-benefit: incremental users retained, their value, what the actions cost, net value and
//! ROI, with percentile intervals from a bootstrap over users.
//!
//! The value of a retained user is a fixed `value_per_retained` if the costs file sets one, and
//! otherwise the user's own spend in the `value_window` before the decision (the default).
//! Incremental value of a group = n_treated x (mean over treated records of value x retained,
//! minus the same mean over control records): the value the treated records kept beyond what
//! the control group says they would have kept anyway.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::outcome::Outcome;
use super::stats;
use crate::time::Span;

/// `--costs costs.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// Cost of one record of an action that is not listed in `actions`.
    pub default_cost: f64,
    /// Cost per action name.
    pub actions: BTreeMap<String, f64>,
    /// A fixed value per retained user; unset: the user's own trailing spend.
    pub value_per_retained: Option<f64>,
    /// The trailing window of spend that values a user (when `value_per_retained` is unset).
    pub value_window: Span,
    /// Bootstrap replicates.
    pub bootstrap: usize,
    /// Bootstrap seed.
    pub seed: u64,
}

impl Default for CostConfig {
    fn default() -> Self {
        CostConfig {
            default_cost: 0.0,
            actions: BTreeMap::new(),
            value_per_retained: None,
            value_window: Span::days(90),
            bootstrap: 1000,
            seed: 42,
        }
    }
}

impl CostConfig {
    pub fn load(path: &Path) -> Result<CostConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let c: CostConfig = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        c.validate().with_context(|| path.display().to_string())?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |x: f64| !x.is_finite() || x < 0.0;
        if bad(self.default_cost) || self.actions.values().any(|&c| bad(c)) {
            anyhow::bail!("costs must be finite and non-negative");
        }
        if self.value_per_retained.is_some_and(bad) {
            anyhow::bail!("value_per_retained must be finite and non-negative");
        }
        if self.bootstrap < 100 {
            anyhow::bail!("bootstrap must be at least 100 replicates");
        }
        Ok(())
    }

    pub fn cost_of(&self, action: &str) -> f64 {
        self.actions.get(action).copied().unwrap_or(self.default_cost)
    }

    fn value_of(&self, r: &Outcome) -> f64 {
        self.value_per_retained.unwrap_or(r.trailing_spend)
    }

    pub fn value_basis(&self) -> String {
        match self.value_per_retained {
            Some(v) => format!("fixed {v} per retained user"),
            None => format!("each user's own spend in the {} before the decision", self.value_window),
        }
    }
}

/// An estimate with its bootstrap 95% percentile interval.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Estimate {
    pub estimate: f64,
    pub lower: f64,
    pub upper: f64,
}

/// The figures of one group (an action, or all).
#[derive(Debug, Clone, Serialize)]
pub struct CostLine {
    pub group: String,
    pub n_treated: u64,
    pub n_control: u64,
    pub incremental_retained: Estimate,
    pub incremental_value: Estimate,
    pub cost: Estimate,
    pub net_value: Estimate,
    /// net value / cost; `None` when the cost is 0.
    pub roi: Option<Estimate>,
    /// Fewer than [`MIN_CONTROL_USERS`] users in the control arm: the bootstrap cannot show how
    /// uncertain so small an arm is, and its intervals come out too narrow.
    pub few_control_users: bool,
}

pub const MIN_CONTROL_USERS: usize = 30;

#[derive(Debug, Clone, Serialize)]
pub struct CostBenefit {
    pub value_basis: String,
    pub interval_method: String,
    pub lines: Vec<CostLine>,
}

/// One user's records of one arm, summed: the unit the bootstrap resamples.
#[derive(Debug, Clone, Copy, Default)]
struct Cluster {
    n: f64,
    retained: f64,
    value_kept: f64,
    cost: f64,
}

fn clusters(records: &[&Outcome], cfg: &CostConfig, control: bool) -> Vec<Cluster> {
    let mut by_user: BTreeMap<&str, Cluster> = BTreeMap::new();
    for r in records.iter().filter(|r| r.control == control) {
        let c = by_user.entry(r.user_id.as_str()).or_default();
        c.n += 1.0;
        if r.retained {
            c.retained += 1.0;
            c.value_kept += cfg.value_of(r);
        }
        c.cost += cfg.cost_of(&r.action);
    }
    by_user.into_values().collect()
}

/// [incremental retained, incremental value, cost, net, roi] from arm totals.
fn figures(t: Cluster, c: Cluster) -> [f64; 5] {
    let (pt, pc) = (t.retained / t.n, c.retained / c.n);
    let inc_retained = (pt - pc) * t.n;
    let inc_value = t.n * (t.value_kept / t.n - c.value_kept / c.n);
    let net = inc_value - t.cost;
    let roi = if t.cost > 0.0 { net / t.cost } else { f64::NAN };
    [inc_retained, inc_value, t.cost, net, roi]
}

fn sum(cs: impl Iterator<Item = Cluster>) -> Cluster {
    cs.fold(Cluster::default(), |a, b| Cluster {
        n: a.n + b.n,
        retained: a.retained + b.retained,
        value_kept: a.value_kept + b.value_kept,
        cost: a.cost + b.cost,
    })
}

/// `None` when either arm is empty.
fn line(group: &str, records: &[&Outcome], cfg: &CostConfig, rng: &mut ChaCha8Rng) -> Option<CostLine> {
    let t = clusters(records, cfg, false);
    let c = clusters(records, cfg, true);
    if t.is_empty() || c.is_empty() {
        return None;
    }
    let (tt, ct) = (sum(t.iter().copied()), sum(c.iter().copied()));
    let point = figures(tt, ct);
    let mut reps: [Vec<f64>; 5] = Default::default();
    for _ in 0..cfg.bootstrap {
        let bt = sum((0..t.len()).map(|_| t[rng.random_range(0..t.len())]));
        let bc = sum((0..c.len()).map(|_| c[rng.random_range(0..c.len())]));
        for (v, x) in reps.iter_mut().zip(figures(bt, bc)) {
            v.push(x);
        }
    }
    let est = |i: usize| {
        let (lower, upper) = stats::percentile_interval(&reps[i]);
        Estimate { estimate: point[i], lower, upper }
    };
    Some(CostLine {
        group: group.into(),
        n_treated: tt.n as u64,
        n_control: ct.n as u64,
        incremental_retained: est(0),
        incremental_value: est(1),
        cost: est(2),
        net_value: est(3),
        roi: (tt.cost > 0.0).then(|| est(4)),
        few_control_users: c.len() < MIN_CONTROL_USERS,
    })
}

/// Per action (sorted by name), then all actions together.
pub fn cost_benefit(records: &[Outcome], cfg: &CostConfig) -> CostBenefit {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut by_action: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for r in records {
        by_action.entry(r.action.as_str()).or_default().push(r);
    }
    let mut lines: Vec<CostLine> = by_action.iter().filter_map(|(a, recs)| line(a, recs, cfg, &mut rng)).collect();
    let all: Vec<&Outcome> = records.iter().collect();
    lines.extend(line("all actions", &all, cfg, &mut rng));
    CostBenefit {
        value_basis: cfg.value_basis(),
        interval_method: format!(
            "95% percentile bootstrap, {} replicates resampling users within each arm (a user's records stay together), ChaCha8 seed {}",
            cfg.bootstrap, cfg.seed
        ),
        lines,
    }
}

fn money(e: &Estimate) -> String {
    format!("{:.0} [{:.0}, {:.0}]", e.estimate, e.lower, e.upper)
}

pub fn format_text(cb: &CostBenefit) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "cost-benefit: value of a retained user = {}", cb.value_basis);
    let _ = writeln!(s, "intervals: {}", cb.interval_method);
    let _ = writeln!(
        s,
        "{:<20} {:>7} {:>7} {:>22} {:>24} {:>22} {:>24} {:>22}",
        "action", "treated", "control", "incr. retained", "incr. value", "cost", "net value", "ROI"
    );
    let few = cb.lines.iter().any(|l| l.few_control_users);
    for l in &cb.lines {
        let inc = format!(
            "{:.1} [{:.1}, {:.1}]",
            l.incremental_retained.estimate, l.incremental_retained.lower, l.incremental_retained.upper
        );
        let roi =
            l.roi.map_or("n/a (no cost)".into(), |r| format!("{:.2} [{:.2}, {:.2}]", r.estimate, r.lower, r.upper));
        let _ = writeln!(
            s,
            "{:<20} {:>7} {:>7} {:>22} {:>24} {:>22} {:>24} {:>22}",
            if l.few_control_users { format!("{} *", l.group) } else { l.group.clone() },
            l.n_treated,
            l.n_control,
            inc,
            money(&l.incremental_value),
            money(&l.cost),
            money(&l.net_value),
            roi
        );
    }
    if few {
        let _ = writeln!(
            s,
            "*: fewer than {MIN_CONTROL_USERS} users in the control arm; the bootstrap intervals are too narrow there"
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Stage;

    fn o(user: &str, control: bool, retained: bool, trailing: f64) -> Outcome {
        Outcome {
            user_id: user.into(),
            tier: "high".into(),
            action: "coupon".into(),
            stage: Stage::Dormant,
            control,
            event_time: 0,
            retained,
            spend: 0.0,
            trailing_spend: trailing,
        }
    }

    #[test]
    fn point_estimates_follow_the_definitions() {
        // Treated: 4 records, 3 retained (value 10 each); control: 2 records, 1 retained (value 10).
        let mut recs = vec![
            o("t1", false, true, 10.0),
            o("t2", false, true, 10.0),
            o("t3", false, true, 10.0),
            o("t4", false, false, 10.0),
        ];
        recs.push(o("c1", true, true, 10.0));
        recs.push(o("c2", true, false, 10.0));
        let cfg = CostConfig { actions: [("coupon".to_string(), 2.0)].into(), ..CostConfig::default() };
        let cb = cost_benefit(&recs, &cfg);
        let l = cb.lines.last().unwrap();
        // (0.75 - 0.5) x 4 = 1 user; value 4 x (7.5 - 5) = 10; cost 8; net 2; ROI 0.25.
        assert!((l.incremental_retained.estimate - 1.0).abs() < 1e-12);
        assert!((l.incremental_value.estimate - 10.0).abs() < 1e-12);
        assert!((l.cost.estimate - 8.0).abs() < 1e-12);
        assert!((l.net_value.estimate - 2.0).abs() < 1e-12);
        assert!((l.roi.unwrap().estimate - 0.25).abs() < 1e-12);
        assert!(l.net_value.lower <= 2.0 && l.net_value.upper >= 2.0);
        // Seeded: the same input gives the same intervals.
        let again = cost_benefit(&recs, &cfg);
        assert_eq!(again.lines.last().unwrap().net_value.lower, l.net_value.lower);
        // A fixed value replaces trailing spend.
        let cfg = CostConfig { value_per_retained: Some(100.0), ..cfg };
        let l = cost_benefit(&recs, &cfg).lines.pop().unwrap();
        assert!((l.incremental_value.estimate - 100.0).abs() < 1e-12);
    }

    #[test]
    fn costs_file_parses() {
        let c: CostConfig =
            toml::from_str("default_cost = 1.0\nvalue_window = \"60d\"\n[actions]\ncoupon = 5.0\ncare_call = 12.5\n")
                .unwrap();
        assert_eq!(c.cost_of("coupon"), 5.0);
        assert_eq!(c.cost_of("other"), 1.0);
        assert_eq!(c.value_window, Span::days(60));
        assert!(toml::from_str::<CostConfig>("nope = 1").is_err());
    }
}
