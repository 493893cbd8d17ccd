//! Lead-time evaluation (`evaluate --truth`): how early, and how precisely, a model's tiers flag
//! the users who really churn.
//!
//! Input is a stream of flags (a user reached a tier at a time: from daily scores, or from the
//! engine's decisions) and a ground truth (user, churn time). Per tier, with `h` the model's
//! horizon and a scored period `[from, until]`:
//! - **churners**: truth users whose churn time is in `[from + h, until]`, so that the whole
//!   `h` before their churn was scored;
//! - a churner's **lead** is `churn - t` for the earliest flag `t` in `[churn - h, churn)`: a flag
//!   earlier than the horizon is not counted as a warning of this churn;
//! - **flagged >= 7d**: the share of churners whose lead is at least `min_lead` (7 days);
//! - **median lead** (days) over churners with a lead;
//! - **first flags**: each user's first flag in the period; one is judged when `t + h <= until`
//!   (its outcome is known) and is precise when the user churns in `(t, t + h]`.

use std::collections::HashMap;

use serde::Serialize;

use crate::time::{Millis, DAY_MS};

/// Ground truth: churn time per user (`None`: never churned).
pub type Truth = HashMap<String, Option<Millis>>;

/// Parse a truth CSV with a header: `user_id` and a churn-time column (`churn_ts`, `churn_time`,
/// `churned_at` or `churn`; else the second column). The simulator's `--truth` file qualifies.
/// An empty churn time means the user did not churn.
pub fn parse_truth(text: &str) -> Result<Truth, String> {
    let mut lines = text.lines();
    let header = lines.next().ok_or("the truth file is empty")?;
    let cols: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    let uid = cols.iter().position(|c| c == "user_id").ok_or("the truth file's header has no user_id column")?;
    let churn = ["churn_ts", "churn_time", "churn time", "churned_at", "churn"]
        .iter()
        .find_map(|n| cols.iter().position(|c| c == n))
        .or((cols.len() == 2).then(|| 1 - uid))
        .ok_or("the truth file's header has no churn time column (churn_ts)")?;
    let mut out = Truth::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let (Some(u), Some(c)) = (f.get(uid), f.get(churn)) else {
            return Err(format!("truth line {}: fewer columns than the header", i + 2));
        };
        let c = c.trim();
        let ts = if c.is_empty() {
            None
        } else {
            Some(crate::time::parse_timestamp(c).map_err(|e| format!("truth line {}: churn time {c:?}: {e}", i + 2))?)
        };
        out.insert(u.trim().to_string(), ts);
    }
    Ok(out)
}

/// The figures of one tier (users at or above its threshold).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierLead {
    pub tier: String,
    pub min_score: f64,
    /// Churners whose churn time is in `[from + horizon, until]`.
    pub churners: usize,
    /// Churners flagged in `[churn - horizon, churn)`.
    pub flagged_before: usize,
    /// Churners flagged in `[churn - horizon, churn - min_lead]`.
    pub flagged_min_lead: usize,
    /// `flagged_min_lead / churners`.
    pub share_min_lead: f64,
    /// Median of the leads in days (NaN with no lead: serialised as null).
    pub median_lead_days: Option<f64>,
    /// Users with a first flag in `[from, until - horizon]`.
    pub first_flags: usize,
    /// Of those, users who churned in `(t, t + horizon]`.
    pub precise_first_flags: usize,
    pub first_flag_precision: Option<f64>,
}

/// The whole result, for `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeadTimes {
    pub from: String,
    pub until: String,
    pub horizon_days: f64,
    pub min_lead_days: f64,
    pub tiers: Vec<TierLead>,
}

/// Tiers sorted from the highest threshold down; a flag of rank `k` reached tier `k` and every
/// lower one.
pub struct LeadTimeCounter<'a> {
    truth: &'a Truth,
    tiers: Vec<(String, f64)>,
    from: Millis,
    until: Millis,
    horizon: Millis,
    min_lead: Millis,
    users: HashMap<String, u32>,
    /// Per tier, per user: (first flag in the period, earliest flag in the window before churn).
    state: Vec<Vec<(Option<Millis>, Option<Millis>)>>,
}

impl<'a> LeadTimeCounter<'a> {
    /// `tiers`: (name, min_score), any order.
    pub fn new(
        truth: &'a Truth,
        tiers: &[(String, f64)],
        from: Millis,
        until: Millis,
        horizon: Millis,
        min_lead: Millis,
    ) -> Self {
        let mut tiers = tiers.to_vec();
        tiers.sort_by(|a, b| b.1.total_cmp(&a.1));
        let n = tiers.len();
        LeadTimeCounter {
            truth,
            tiers,
            from,
            until,
            horizon,
            min_lead,
            users: HashMap::new(),
            state: vec![Vec::new(); n],
        }
    }

    /// The rank of a score (0 = highest tier), if it reaches a tier.
    pub fn rank_of_score(&self, score: f64) -> Option<usize> {
        self.tiers.iter().position(|t| score >= t.1)
    }

    /// The rank of a tier name.
    pub fn rank_of_tier(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.0 == name)
    }

    /// One flag: `user` reached the tier of rank `rank` at `at`. Flags outside `[from, until]`
    /// are ignored; any order of times is accepted.
    pub fn flag(&mut self, user: &str, at: Millis, rank: usize) {
        if at < self.from || at > self.until {
            return;
        }
        let next = self.users.len() as u32;
        let u = *self.users.entry(user.to_string()).or_insert(next) as usize;
        let churn = self.truth.get(user).copied().flatten();
        for k in rank..self.tiers.len() {
            let st = &mut self.state[k];
            if st.len() <= u {
                st.resize(u + 1, (None, None));
            }
            let s = &mut st[u];
            s.0 = Some(s.0.map_or(at, |f| f.min(at)));
            if let Some(c) = churn {
                if at >= c - self.horizon && at < c {
                    s.1 = Some(s.1.map_or(at, |f| f.min(at)));
                }
            }
        }
    }

    pub fn finish(self) -> LeadTimes {
        let mut names: Vec<&str> = vec![""; self.users.len()];
        for (name, &i) in &self.users {
            names[i as usize] = name;
        }
        let churners: Vec<(&str, Millis)> = self
            .truth
            .iter()
            .filter_map(|(u, c)| c.map(|c| (u.as_str(), c)))
            .filter(|&(_, c)| c >= self.from + self.horizon && c <= self.until)
            .collect();
        let mut out = Vec::new();
        for (k, (tier, min_score)) in self.tiers.iter().enumerate() {
            let st = &self.state[k];
            let mut leads: Vec<f64> = Vec::new();
            let mut flagged_min_lead = 0;
            for &(u, c) in &churners {
                let first = self.users.get(u).and_then(|&i| st.get(i as usize)).and_then(|s| s.1);
                if let Some(t) = first {
                    leads.push((c - t) as f64 / DAY_MS as f64);
                    if c - t >= self.min_lead {
                        flagged_min_lead += 1;
                    }
                }
            }
            let (mut first_flags, mut precise) = (0, 0);
            for (i, s) in st.iter().enumerate() {
                let Some(t) = s.0 else { continue };
                if t + self.horizon > self.until {
                    continue;
                }
                first_flags += 1;
                if let Some(Some(c)) = self.truth.get(names[i]) {
                    if *c > t && *c <= t + self.horizon {
                        precise += 1;
                    }
                }
            }
            out.push(TierLead {
                tier: tier.clone(),
                min_score: *min_score,
                churners: churners.len(),
                flagged_before: leads.len(),
                flagged_min_lead,
                share_min_lead: ratio(flagged_min_lead, churners.len()).unwrap_or(f64::NAN),
                median_lead_days: median(&mut leads),
                first_flags,
                precise_first_flags: precise,
                first_flag_precision: ratio(precise, first_flags),
            });
        }
        LeadTimes {
            from: crate::time::format_rfc3339_ms(self.from),
            until: crate::time::format_rfc3339_ms(self.until),
            horizon_days: self.horizon as f64 / DAY_MS as f64,
            min_lead_days: self.min_lead as f64 / DAY_MS as f64,
            tiers: out,
        }
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// The text table of [`LeadTimes`].
pub fn format_table(l: &LeadTimes) -> String {
    let mut s = format!(
        "lead time     period {} .. {}, horizon {}d, lead >= {}d\n",
        l.from, l.until, l.horizon_days, l.min_lead_days
    );
    s.push_str(
        "tier        min score  churners  flagged >= 7d  share   median lead (d)  first flags  precise  precision\n",
    );
    for t in &l.tiers {
        s.push_str(&format!(
            "{:<11} {:>9.4}  {:>8}  {:>13}  {:>5}  {:>15}  {:>11}  {:>7}  {:>9}\n",
            t.tier,
            t.min_score,
            t.churners,
            t.flagged_min_lead,
            if t.churners > 0 { format!("{:.3}", t.share_min_lead) } else { "-".into() },
            t.median_lead_days.map_or("-".into(), |m| format!("{m:.1}")),
            t.first_flags,
            t.precise_first_flags,
            t.first_flag_precision.map_or("-".into(), |p| format!("{p:.3}")),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Millis = DAY_MS;

    #[test]
    fn parses_the_simulator_truth_and_a_two_column_one() {
        let sim = "user_id,signup_ts,churn_ts,reactivated_ts,segment\nu1,2026-01-01T00:00:00.000Z,2026-02-01T00:00:00.000Z,,casual\nu2,2026-01-01T00:00:00.000Z,,,power\n";
        let t = parse_truth(sim).unwrap();
        assert_eq!(t["u1"], Some(crate::time::parse_timestamp("2026-02-01").unwrap()));
        assert_eq!(t["u2"], None);
        let two = "user_id,churn time\nu1,2026-02-01\nu2,\n";
        let t = parse_truth(two).unwrap();
        assert_eq!(t["u1"], Some(crate::time::parse_timestamp("2026-02-01").unwrap()));
        assert_eq!(t["u2"], None);
        assert!(parse_truth("id,churn\n").is_err());
    }

    /// Period days 0..=100, horizon 30d, min lead 7d, tiers high 0.7 and medium 0.4.
    #[test]
    fn hand_made_case() {
        let truth: Truth = [
            ("a".to_string(), Some(50 * D)), // flagged medium at day 35 and high at 45: leads 15 and 5
            ("b".to_string(), Some(60 * D)), // flagged medium only at day 10, outside its window
            ("c".to_string(), Some(20 * D)), // churns before from + horizon: not a counted churner
            ("d".to_string(), None),         // never churns, flagged high at day 40
            ("e".to_string(), Some(90 * D)), // flagged medium at day 80 (lead 10); first flag not judged
        ]
        .into_iter()
        .collect();
        let tiers = vec![("medium".to_string(), 0.4), ("high".to_string(), 0.7)];
        let mut c = LeadTimeCounter::new(&truth, &tiers, 0, 100 * D, 30 * D, 7 * D);
        let (hi, med) = (c.rank_of_tier("high").unwrap(), c.rank_of_tier("medium").unwrap());
        assert_eq!((hi, med), (0, 1));
        assert_eq!(c.rank_of_score(0.5), Some(1));
        assert_eq!(c.rank_of_score(0.1), None);
        // Unordered, repeated, and outside the period.
        c.flag("a", 45 * D, hi);
        c.flag("a", 35 * D, med);
        c.flag("a", 48 * D, hi);
        c.flag("b", 10 * D, med);
        c.flag("b", 101 * D, hi); // after until: ignored
        c.flag("c", 5 * D, hi);
        c.flag("d", 40 * D, hi);
        c.flag("e", 80 * D, med);
        let l = c.finish();
        let high = &l.tiers[0];
        let medium = &l.tiers[1];
        assert_eq!(high.tier, "high");
        // Churners in [30, 100]: a, b, e.
        assert_eq!((high.churners, medium.churners), (3, 3));
        // High: a's lead 5 (< 7d). First flags judged (t <= 70): a@45 precise, c@5 (churn 20:
        // precise), d@40 not.
        assert_eq!((high.flagged_before, high.flagged_min_lead), (1, 0));
        assert_eq!(high.median_lead_days, Some(5.0));
        assert_eq!((high.first_flags, high.precise_first_flags), (3, 2));
        // Medium (a flag of high counts for medium): a's lead 15, e's lead 10; b's flag at day
        // 10 is before its window. First flags: a@35 precise, b@10 no (churn 60 > 40), c@5
        // precise, d@40 no; e@80 not judged.
        assert_eq!((medium.flagged_before, medium.flagged_min_lead), (2, 2));
        assert_eq!(medium.median_lead_days, Some(12.5));
        assert!((medium.share_min_lead - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!((medium.first_flags, medium.precise_first_flags), (4, 2));
        assert_eq!(medium.first_flag_precision, Some(0.5));
        assert!(format_table(&l).contains("medium"));
    }
}
