//! Uplift: what the interventions changed, measured against the control group.
//!
//! `churnguard uplift` joins the records `replay` writes (treated and control) with the event log:
//! [`outcome`] decides each record's outcome after the horizon, [`stats`] compares treated with
//! control retention per tier, action and lifecycle stage, [`cost`] weighs the incremental users
//! against what the actions cost, and [`report`] draws it as a self-contained HTML page.
//! How to read the result: docs/INTERVENTIONS.md#reading-an-uplift-result.

pub mod cost;
pub mod outcome;
pub mod recovery;
pub mod report;
pub mod stats;
pub mod table;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::time::Span;
use outcome::{Outcome, Outcomes};
use stats::{Difference, Test};

/// Retention of one arm.
#[derive(Debug, Clone, Serialize)]
pub struct Arm {
    pub n: u64,
    pub retained: u64,
    pub retention: Option<f64>,
    /// 95% Wilson interval of the retention.
    pub retention_ci: (f64, f64),
    /// Mean spend in the horizon per record.
    pub mean_spend: Option<f64>,
}

impl Arm {
    fn of<'a>(records: impl Iterator<Item = &'a Outcome>) -> Arm {
        let (mut n, mut retained, mut spend) = (0u64, 0u64, 0.0);
        for r in records {
            n += 1;
            retained += u64::from(r.retained);
            spend += r.spend;
        }
        Arm {
            n,
            retained,
            retention: (n > 0).then(|| retained as f64 / n as f64),
            retention_ci: stats::wilson(retained, n),
            mean_spend: (n > 0).then(|| spend / n as f64),
        }
    }
}

/// Treated against control in one group (a tier, an action, a stage, or everyone).
#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    /// `overall`, `overall_first_per_user`, `tier`, `action` or `stage`.
    pub dimension: String,
    pub group: String,
    pub treated: Arm,
    pub control: Arm,
    /// Treated retention minus control retention, with its 95% Newcombe hybrid score interval.
    pub uplift: Option<Difference>,
    pub p_value: Option<f64>,
    pub test: Option<Test>,
    /// The interval excludes zero and p < 0.05 (near the boundary, with Fisher's test on small
    /// cells, the two can disagree; then the result is not called significant).
    pub significant: bool,
    /// Records per arm for 80% power at alpha 0.05 at the observed rates and the current
    /// treated:control allocation; `None` when the rates are equal (no effect to detect).
    pub required: Option<(u64, u64)>,
    /// How many more records each arm needs to reach `required` (0 when it has enough).
    pub extra_needed: Option<(u64, u64)>,
}

pub fn compare(dimension: &str, group: &str, records: &[&Outcome]) -> GroupResult {
    let treated = Arm::of(records.iter().copied().filter(|r| !r.control));
    let control = Arm::of(records.iter().copied().filter(|r| r.control));
    let uplift = stats::newcombe_diff(treated.retained, treated.n, control.retained, control.n);
    let pv = stats::p_value(treated.retained, treated.n, control.retained, control.n);
    let required = match (treated.retention, control.retention) {
        (Some(pt), Some(pc)) => stats::required_n(pt, pc, treated.n as f64 / control.n as f64),
        _ => None,
    };
    let extra_needed = required.map(|(a, b)| (a.saturating_sub(treated.n), b.saturating_sub(control.n)));
    GroupResult {
        dimension: dimension.into(),
        group: group.into(),
        significant: uplift.is_some_and(|d| d.lower > 0.0 || d.upper < 0.0) && pv.is_some_and(|p| p.0 < 0.05),
        uplift,
        p_value: pv.map(|p| p.0),
        test: pv.map(|p| p.1),
        required,
        extra_needed,
        treated,
        control,
    }
}

/// Everything `uplift` reports.
#[derive(Debug, Serialize)]
pub struct UpliftResult {
    pub horizon: String,
    pub data_from: String,
    pub data_to: String,
    pub events: u64,
    pub records_treated: u64,
    pub records_control: u64,
    pub censored_treated: u64,
    pub censored_control: u64,
    /// Records whose trailing value window starts before the first event (their value is low).
    pub trailing_truncated: u64,
    pub interval_method: &'static str,
    pub test_method: &'static str,
    pub groups: Vec<GroupResult>,
    pub cost_benefit: Option<cost::CostBenefit>,
}

pub const INTERVAL_METHOD: &str =
    "95% Newcombe hybrid score interval (method 10, Wilson intervals of each arm, no continuity correction)";
pub const TEST_METHOD: &str =
    "two-sided pooled two-proportion z-test; Fisher's exact test when an expected cell count is under 5";

/// Per-group comparisons: overall (every record, and each user's first record), then per tier,
/// action and stage, each sorted by name.
pub fn analyse(outcomes: &Outcomes) -> Vec<GroupResult> {
    let all: Vec<&Outcome> = outcomes.records.iter().collect();
    let mut out = vec![compare("overall", "all records", &all)];
    let mut seen = std::collections::HashSet::new();
    let mut by_time = all.clone();
    by_time.sort_by_key(|r| r.event_time);
    let first: Vec<&Outcome> = by_time.into_iter().filter(|r| seen.insert(r.user_id.as_str())).collect();
    out.push(compare("overall_first_per_user", "first record per user", &first));
    type Key = fn(&Outcome) -> String;
    let dims: [(&str, Key); 3] =
        [("tier", |r| r.tier.clone()), ("action", |r| r.action.clone()), ("stage", |r| r.stage.as_str().to_string())];
    for (dim, key) in dims {
        let mut groups: BTreeMap<String, Vec<&Outcome>> = BTreeMap::new();
        for r in &all {
            groups.entry(key(r)).or_default().push(r);
        }
        for (g, recs) in groups {
            out.push(compare(dim, &g, &recs));
        }
    }
    out
}

pub fn build_result(
    events: &outcome::UserEvents,
    outcomes: &Outcomes,
    horizon: Span,
    cost_benefit: Option<cost::CostBenefit>,
) -> UpliftResult {
    UpliftResult {
        horizon: horizon.to_string(),
        data_from: crate::time::format_rfc3339_ms(events.first_ts),
        data_to: crate::time::format_rfc3339_ms(events.last_ts),
        events: events.events,
        records_treated: outcomes.records.iter().filter(|r| !r.control).count() as u64,
        records_control: outcomes.records.iter().filter(|r| r.control).count() as u64,
        censored_treated: outcomes.censored_treated,
        censored_control: outcomes.censored_control,
        trailing_truncated: outcomes.trailing_truncated,
        interval_method: INTERVAL_METHOD,
        test_method: TEST_METHOD,
        groups: analyse(outcomes),
        cost_benefit,
    }
}

pub(crate) fn pct(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{:.1}%", 100.0 * v))
}

pub(crate) fn pp(x: f64) -> String {
    format!("{:+.1}", 100.0 * x)
}

/// The human-readable tables.
pub fn format_text(r: &UpliftResult) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "uplift over {} .. {} ({} events), horizon {}: {} treated and {} control records; censored (horizon past the data's end, excluded): {} treated, {} control",
        r.data_from, r.data_to, r.events, r.horizon, r.records_treated, r.records_control, r.censored_treated, r.censored_control
    );
    let _ = writeln!(s, "interval: {}", r.interval_method);
    let _ = writeln!(s, "p-value:  {}", r.test_method);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<8} {:<22} {:>7} {:>7} {:>8} {:>8} {:>8} {:>17} {:>9} {:>17}",
        "by", "group", "treated", "control", "ret.T", "ret.C", "uplift", "95% CI (pp)", "p", "more needed T/C"
    );
    for g in &r.groups {
        let dim = match g.dimension.as_str() {
            "overall_first_per_user" => "overall",
            d => d,
        };
        let (u, ci) = match g.uplift {
            Some(d) => (pp(d.estimate), format!("[{}, {}]", pp(d.lower), pp(d.upper))),
            None => ("n/a".into(), "n/a".into()),
        };
        let p = match (g.p_value, g.test) {
            (Some(p), Some(Test::Fisher)) => format!("{p:.3}F"),
            (Some(p), _) if p < 0.001 => "<0.001".into(),
            (Some(p), _) => format!("{p:.3}"),
            _ => "n/a".into(),
        };
        let more = if g.significant {
            "significant".to_string()
        } else if g.control.n == 0 || g.treated.n == 0 {
            format!("no {} records", if g.control.n == 0 { "control" } else { "treated" })
        } else {
            match g.extra_needed {
                Some((a, b)) => format!("+{a}/+{b}"),
                None => "no effect seen".into(),
            }
        };
        let _ = writeln!(
            s,
            "{:<8} {:<22} {:>7} {:>7} {:>8} {:>8} {:>8} {:>17} {:>9} {:>17}",
            dim,
            g.group,
            g.treated.n,
            g.control.n,
            pct(g.treated.retention),
            pct(g.control.retention),
            u,
            ci,
            p,
            more
        );
    }
    let _ = writeln!(
        s,
        "\nuplift and CI in percentage points of retention; F: Fisher's exact test; 'more needed': extra records per arm (treated/control) for 80% power at alpha 0.05 at the observed rates"
    );
    if let Some(cb) = &r.cost_benefit {
        s.push('\n');
        s.push_str(&cost::format_text(cb));
        if r.trailing_truncated > 0 {
            let _ = writeln!(
                s,
                "note: {} record(s) have a value window that starts before the first event; their trailing spend is undercounted",
                r.trailing_truncated
            );
        }
    }
    s
}

/// `churnguard uplift`.
pub fn run_cli(a: &crate::cli::UpliftArgs) -> anyhow::Result<()> {
    let costs = a.costs.as_deref().map(cost::CostConfig::load).transpose()?;
    let value_window = costs.as_ref().map_or(cost::CostConfig::default().value_window, |c| c.value_window);
    let events = outcome::UserEvents::load(&a.events)?;
    let report = events.rejected.report();
    if !report.is_empty() {
        crate::errln!("{}: {report}", a.events.display());
    }
    let mut records = outcome::load_records(&a.interventions)?;
    let treated_flagged = records.iter().filter(|r| r.control).count();
    let control = outcome::load_records(&a.control)?;
    let control_unflagged = control.iter().filter(|r| !r.control).count();
    if treated_flagged + control_unflagged > 0 {
        crate::term::warn(&format!(
            "{treated_flagged} record(s) in {} say control: true and {control_unflagged} in {} say control: false; each record is counted by its own `control` field",
            a.interventions.display(),
            a.control.display()
        ));
    }
    if control.is_empty() {
        crate::term::warn(&format!(
            "{} holds no control records: nothing to compare with (write them with `replay --control-out`; policy.control_fraction must be above 0)",
            a.control.display()
        ));
    }
    records.extend(control);
    let outcomes = outcome::decide(&events, &records, a.horizon, value_window)?;
    let cb = costs.as_ref().map(|c| cost::cost_benefit(&outcomes.records, c));
    let result = build_result(&events, &outcomes, a.horizon, cb);
    if a.json {
        crate::outln!("{}", serde_json::to_string(&result)?);
    } else {
        crate::term::stdout_str(&format_text(&result));
    }
    if let Some(dir) = &a.report {
        let path = report::write_report(dir, &result)?;
        crate::errln!("report: {}", path.display());
    }
    Ok(())
}
