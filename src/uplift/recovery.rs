//! Does the measurement find an effect that is known to be there? Simulate with treatment effects
//! in a closed loop, `replay` the log with the control group, run the uplift analysis on what
//! replay wrote, and compare the measured uplift with the true effect on the treated.
//!
//! The true effect comes from a second run of the same seed without effects. A user's history is
//! the same in both up to their first treatment (src/sim/treatment.rs), so each treated user's
//! first record describes the same user at the same moment in both worlds, and its outcome
//! without treatment can be read from the second run's events. The measured uplift compares
//! first records per user, treated against control: the comparison the control hash randomises
//! (docs/INTERVENTIONS.md#reading-an-uplift-result). Later records are selected by the treatment
//! itself, so they have no counterfactual to compare with.
//!
//! `churnguard demo` runs this after its live part; tests/uplift_recovery.rs checks it.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::engine::Engine;
use crate::event::DEFAULT_MAX_EVENT_BYTES;
use crate::pipeline::replay::{self, ReplayError, ReplaySink, ReplaySummary};
use crate::sim::treatment::{simulate_treated, Treatment, TreatmentSummary};
use crate::sim::{self, SimConfig, SimError};
use crate::time::Span;

use super::outcome::{self, Outcome, UserEvents};
use super::{compare, GroupResult, UpliftResult};

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("replaying {path}: {source}")]
    Replay { path: PathBuf, source: ReplayError },
    /// The uplift analysis reads the files written above; it reports its own context.
    #[error("uplift analysis: {0:#}")]
    Analysis(anyhow::Error),
}

/// What to simulate and measure.
pub struct RecoveryConfig<'m> {
    pub sim: SimConfig,
    /// Model, policy and engine of both the closed loop and the replay, and the effects.
    pub treatment: Treatment<'m>,
    pub horizon: Span,
    /// Receives `events.jsonl`, `interventions.jsonl`, `control.jsonl` and `uplift/index.html`.
    pub dir: PathBuf,
}

/// The files a run leaves, so that `churnguard uplift` can be rerun on them.
#[derive(Debug, Clone)]
pub struct RecoveryFiles {
    pub events: PathBuf,
    pub interventions: PathBuf,
    pub control: PathBuf,
    pub report: PathBuf,
}

/// Measured against true uplift for one group of first records.
#[derive(Debug, Clone)]
pub struct RecoveryRow {
    /// An action, or `None` for every first record.
    pub action: Option<String>,
    /// The simulated effect parameter of the action (not a retention difference).
    pub effect: Option<f64>,
    pub measured: GroupResult,
    /// Mean over the treated first records of retained with treatment minus retained without it;
    /// `None` without treated records.
    pub true_uplift: Option<f64>,
}

impl RecoveryRow {
    /// Whether the measured 95% interval contains the true uplift; `None` when either is missing.
    pub fn covered(&self) -> Option<bool> {
        let (ci, t) = (self.measured.uplift?, self.true_uplift?);
        Some(ci.lower <= t && t <= ci.upper)
    }
}

pub struct Recovery {
    pub overall: RecoveryRow,
    /// One row per action of a first record, by name.
    pub actions: Vec<RecoveryRow>,
    /// What `churnguard uplift` reports on the files (every record, not only first ones).
    pub result: UpliftResult,
    pub closed_loop: TreatmentSummary,
    pub replay: ReplaySummary,
    pub files: RecoveryFiles,
}

fn create(path: &Path) -> Result<std::io::BufWriter<std::fs::File>, RecoveryError> {
    let f = std::fs::File::create(path).map_err(|source| RecoveryError::Write { path: path.into(), source })?;
    Ok(std::io::BufWriter::with_capacity(1 << 20, f))
}

pub fn run(cfg: &RecoveryConfig<'_>) -> Result<Recovery, RecoveryError> {
    let dir = &cfg.dir;
    std::fs::create_dir_all(dir).map_err(|source| RecoveryError::Write { path: dir.clone(), source })?;
    let files = RecoveryFiles {
        events: dir.join("events.jsonl"),
        interventions: dir.join("interventions.jsonl"),
        control: dir.join("control.jsonl"),
        report: dir.join("uplift"),
    };
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecoveryError::Write { path, source }
    };

    let mut out = create(&files.events)?;
    let (_, closed_loop) = simulate_treated::<_, std::io::Sink>(&cfg.sim, &cfg.treatment, &mut out, None)?;
    out.flush().map_err(write_err(&files.events))?;
    drop(out);

    // Replay decides again from the file, as a user would on their own log; the loop's engine
    // made the same decisions (tests/uplift_recovery.rs checks it).
    let t = &cfg.treatment;
    let mut engine = Engine::new(t.model, t.policy.clone(), t.engine.clone());
    let (mut iv, mut ctl) = (create(&files.interventions)?, create(&files.control)?);
    let replayed = replay::replay(
        &files.events,
        DEFAULT_MAX_EVENT_BYTES,
        &mut engine,
        ReplaySink { interventions: &mut iv, control: Some(&mut ctl as &mut dyn Write) },
    )
    .map_err(|source| RecoveryError::Replay { path: files.events.clone(), source })?;
    iv.flush().map_err(write_err(&files.interventions))?;
    ctl.flush().map_err(write_err(&files.control))?;
    drop((iv, ctl));

    let analysis = || -> anyhow::Result<(UpliftResult, outcome::Outcomes)> {
        let events = UserEvents::load(&files.events)?;
        let mut records = outcome::load_records(&files.interventions)?;
        records.extend(outcome::load_records(&files.control)?);
        let outcomes =
            outcome::decide(&events, &records, cfg.horizon, super::cost::CostConfig::default().value_window)?;
        let result = super::build_result(&events, &outcomes, cfg.horizon, None);
        super::report::write_report(&files.report, &result)?;
        Ok((result, outcomes))
    };
    let (result, outcomes) = analysis().map_err(RecoveryError::Analysis)?;

    let mut without = Vec::new();
    sim::generate(&cfg.sim, |e| without.push((sim::user_id_string(e.user_id), e.ts, e.amount.unwrap_or(0.0))))?;
    let without = UserEvents::from_events(without.iter().map(|(u, ts, a)| (u.as_str(), *ts, *a)));

    let first = first_per_user(&outcomes.records);
    let row = |action: Option<&str>, recs: &[&Outcome]| RecoveryRow {
        action: action.map(str::to_string),
        effect: action.map(|a| t.effects.of(a)),
        measured: match action {
            Some(a) => compare("action", a, recs),
            None => compare("overall_first_per_user", "first record per user", recs),
        },
        true_uplift: true_uplift(recs, &without, cfg.horizon),
    };
    let overall = row(None, &first);
    let mut by_action: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for r in &first {
        by_action.entry(r.action.as_str()).or_default().push(r);
    }
    let actions = by_action.iter().map(|(a, recs)| row(Some(a), recs)).collect();
    Ok(Recovery { overall, actions, result, closed_loop, replay: replayed, files })
}

/// Each user's earliest record, in time order (as [`super::analyse`] picks them).
fn first_per_user(records: &[Outcome]) -> Vec<&Outcome> {
    let mut by_time: Vec<&Outcome> = records.iter().collect();
    by_time.sort_by_key(|r| r.event_time);
    let mut seen = HashSet::new();
    by_time.into_iter().filter(|r| seen.insert(r.user_id.as_str())).collect()
}

/// Mean of retained (with treatment) minus retained in the run without effects, over the treated
/// records among `recs`, each of which must be its user's first.
fn true_uplift(recs: &[&Outcome], without: &UserEvents, horizon: Span) -> Option<f64> {
    let (mut n, mut diff) = (0u64, 0i64);
    for r in recs.iter().filter(|r| !r.control) {
        let (kept_without, _) = without.window(&r.user_id, r.event_time, r.event_time + horizon.ms());
        n += 1;
        diff += i64::from(r.retained) - i64::from(kept_without > 0);
    }
    (n > 0).then(|| diff as f64 / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Stage;
    use crate::time::DAY_MS;

    fn rec(user: &str, day: i64, control: bool, retained: bool) -> Outcome {
        Outcome {
            user_id: user.into(),
            tier: "high".into(),
            action: "coupon".into(),
            stage: Stage::Dormant,
            control,
            event_time: day * DAY_MS,
            retained,
            spend: 0.0,
            trailing_spend: 0.0,
        }
    }

    #[test]
    fn true_uplift_compares_treated_outcomes_with_the_run_without_effects() {
        // a: kept with the treatment, gone without (+1); b: kept in both (0); c: gone in both (0);
        // d is control and does not count.
        let without = UserEvents::from_events([("b", 20 * DAY_MS, 0.0), ("d", 20 * DAY_MS, 0.0)]);
        let recs = [
            rec("a", 10, false, true),
            rec("b", 10, false, true),
            rec("c", 10, false, false),
            rec("d", 10, true, true),
        ];
        let refs: Vec<&Outcome> = recs.iter().collect();
        let t = true_uplift(&refs, &without, Span::days(30)).unwrap();
        assert!((t - 1.0 / 3.0).abs() < 1e-12, "{t}");
        assert_eq!(true_uplift(&refs[3..], &without, Span::days(30)), None, "no treated records");
    }

    #[test]
    fn first_per_user_keeps_each_users_earliest_record() {
        let recs = [rec("a", 20, false, true), rec("b", 5, true, false), rec("a", 10, false, false)];
        let first = first_per_user(&recs);
        let got: Vec<(&str, i64)> = first.iter().map(|r| (r.user_id.as_str(), r.event_time / DAY_MS)).collect();
        assert_eq!(got, [("b", 5), ("a", 10)]);
    }
}
