//! Treatment effects in a closed loop: the simulator runs the engine and policy on the events it
//! generates, and a user who receives an intervention (not a control record) changes course.
//!
//! The loop goes day by day over all users (the plain simulator goes user by user; each user's
//! random stream is their own, so the order changes nothing). After simulating day `d` for
//! everyone, the events of day `d - 1` are final (a later day can still emit into the day before
//! it through the time-zone shift, never earlier): they are sorted exactly as the output file
//! will be and fed to a [`crate::engine::Engine`]. The engine therefore sees the same stream that
//! `replay` of the written file sees, and makes the same decisions. Each treated record then acts
//! from day `d + 1`, so a treatment takes effect one to two days after its event time.
//!
//! An effect `e` (0..=1) of the record's action works by the user's phase (docs/INTERVENTIONS.md):
//! - active: the daily hazard of starting to churn is multiplied by `1 - e` for `duration`;
//! - fading towards churn: the fade turns into one that recovers, with probability `e`;
//! - churned (silent and gone): the user comes back the next day, with probability `e`.
//!
//! Those draws use a hash of the seed and the intervention id, not the user's random stream,
//! so an untreated user (every control user) generates exactly the events of a run without
//! effects. Control users get nothing.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::behaviour::Tables;
use super::population::{Phase, UserSim};
use super::{finish, sort_bucket, write_run, Run, SimConfig, SimError, SimSummary, Window};
use crate::engine::{Engine, EngineConfig};
use crate::event::ActivityEvent;
use crate::intervention::Intervention;
use crate::model::ModelArtifact;
use crate::policy::PolicyConfig;
use crate::time::Span;

/// Effect per action name; `*` applies to actions not listed.
#[derive(Debug, Clone, PartialEq)]
pub struct Effects {
    pub per_action: BTreeMap<String, f64>,
    /// How long an active user's hazard stays reduced after a treatment.
    pub duration: Span,
}

impl Default for Effects {
    fn default() -> Self {
        Effects { per_action: BTreeMap::new(), duration: Span::days(30) }
    }
}

impl Effects {
    pub fn of(&self, action: &str) -> f64 {
        self.per_action.get(action).or_else(|| self.per_action.get("*")).copied().unwrap_or(0.0)
    }

    /// Parses `ACTION=EFFECT` (e.g. `coupon=0.3`, `*=0.2`).
    pub fn parse_pair(s: &str) -> Result<(String, f64), String> {
        let (a, e) = s.split_once('=').ok_or_else(|| format!("expected ACTION=EFFECT, e.g. coupon=0.3 (got {s:?})"))?;
        let e: f64 = e.trim().parse().map_err(|_| format!("effect in {s:?} is not a number"))?;
        if !(0.0..=1.0).contains(&e) {
            return Err(format!("effect in {s:?} must be in 0..=1"));
        }
        if a.trim().is_empty() {
            return Err(format!("no action in {s:?}"));
        }
        Ok((a.trim().to_string(), e))
    }
}

/// What the closed loop runs.
pub struct Treatment<'m> {
    pub model: &'m ModelArtifact,
    pub policy: PolicyConfig,
    pub engine: EngineConfig,
    pub effects: Effects,
}

/// What the loop did, besides the events.
#[derive(Debug, Default)]
pub struct TreatmentSummary {
    /// Every record the loop's engine emitted (treated and control), in emission order.
    pub records: Vec<Intervention>,
    /// Treated records whose action has a non-zero effect.
    pub treated_with_effect: u64,
    /// Of those, how many changed the user's course at once (a fade turned, a churned user back).
    pub turned: u64,
}

/// A uniform in [0, 1) from the seed and a key, independent of any user's random stream.
fn unit(seed: u64, key: &str) -> f64 {
    crate::hash::stable_unit(&format!("sim-treatment-{seed}"), key)
}

impl UserSim<'_> {
    /// Applies a treatment of effect `e` decided before `day`; returns the day the user must be
    /// simulated next if the treatment brings a churned user back.
    fn treat(&mut self, day: u32, e: f64, u: f64, duration_days: u32) -> (bool, Option<u32>) {
        match self.phase {
            Phase::Active => {
                self.hazard_factor = self.hazard_factor.min(1.0 - e);
                self.treated_until = self.treated_until.max(day.saturating_add(duration_days));
                (false, None)
            }
            Phase::Fading { start, len, recover: false } if u < e => {
                self.phase = Phase::Fading { start, len, recover: true };
                (true, None)
            }
            Phase::Churned { back } if u < e && day < self.win.days && back.is_none_or(|b| b > day) => {
                self.phase = Phase::Churned { back: Some(day) };
                (true, Some(day))
            }
            _ => (false, None),
        }
    }
}

/// Simulates with the closed loop and writes events (and truth) like [`super::simulate`].
pub fn simulate_treated<W: Write, T: Write>(
    cfg: &SimConfig,
    treatment: &Treatment<'_>,
    events: &mut W,
    truth: Option<&mut T>,
) -> Result<(SimSummary, TreatmentSummary), SimError> {
    let (run, ts) = run_treated(cfg, treatment)?;
    Ok((write_run(run, events, truth)?, ts))
}

fn run_treated(cfg: &SimConfig, treatment: &Treatment<'_>) -> Result<(Run, TreatmentSummary), SimError> {
    cfg.validate()?;
    treatment.policy.validate().map_err(|e| SimError::InvalidConfig(format!("[policy]: {e}")))?;
    treatment.engine.validate(&treatment.policy).map_err(|e| SimError::InvalidConfig(format!("[engine]: {e}")))?;
    let window = Window { start: cfg.start_ms, end: cfg.end_ms(), days: cfg.days };
    let tables = Tables::new();
    let base_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut users: Vec<(UserSim<'_>, Option<u32>)> = (0..cfg.users)
        .map(|idx| {
            let mut rng = base_rng.clone();
            rng.set_stream(idx);
            let u = UserSim::new(idx as u32, rng, &window, &tables);
            let first = u.signup_day();
            (u, Some(first))
        })
        .collect();
    let mut buckets: Vec<Vec<super::Rec>> = vec![Vec::new(); cfg.days as usize];
    let mut engine = Engine::new(treatment.model, treatment.policy.clone(), treatment.engine.clone());
    let mut summary = TreatmentSummary::default();
    let duration_days = ((treatment.effects.duration.ms() + crate::time::DAY_MS - 1) / crate::time::DAY_MS) as u32;
    let mut pending: Vec<Intervention> = Vec::new();
    let feed = |bucket: &mut Vec<super::Rec>, engine: &mut Engine, pending: &mut Vec<Intervention>| {
        sort_bucket(bucket);
        let mut emit = |iv: Intervention| pending.push(iv);
        for rec in bucket.iter() {
            let ev = rec.event();
            let a = ActivityEvent {
                user_id: Cow::Owned(super::user_id_string(ev.user_id)),
                event_type: Cow::Borrowed(ev.event_type.as_str()),
                ts: ev.ts,
                amount: ev.amount,
            };
            engine.ingest(&a, &mut emit);
        }
    };
    for day in 0..cfg.days {
        for (u, next) in users.iter_mut() {
            if *next == Some(day) {
                *next = u.simulate_day(day, u.signup_day()).filter(|&d| d < cfg.days);
                u.drain_into(&mut buckets);
            }
        }
        if day == 0 {
            continue;
        }
        feed(&mut buckets[day as usize - 1], &mut engine, &mut pending);
        for iv in pending.drain(..) {
            let e = treatment.effects.of(&iv.action);
            if !iv.control && e > 0.0 {
                summary.treated_with_effect += 1;
                if let Some(idx) = iv.user_id.strip_prefix('u').and_then(|d| d.parse::<usize>().ok()) {
                    if let Some((u, next)) = users.get_mut(idx.wrapping_sub(1)) {
                        let draw = unit(cfg.seed, &iv.intervention_id);
                        let (turned, back) = u.treat(day + 1, e, draw, duration_days);
                        summary.turned += u64::from(turned);
                        if let Some(b) = back.filter(|&b| b < cfg.days) {
                            *next = Some(next.map_or(b, |n| n.min(b)));
                        }
                    }
                }
            }
            summary.records.push(iv);
        }
    }
    if let Some(last) = buckets.last_mut() {
        feed(last, &mut engine, &mut pending);
    }
    let mut emit = |iv: Intervention| pending.push(iv);
    engine.advance_watermark(engine.max_ts(), &mut emit);
    summary.records.append(&mut pending);
    let truth = users.iter().map(|(u, _)| u.truth()).collect();
    Ok((finish(cfg, buckets, truth), summary))
}

/// `churnguard simulate --effect ...`.
pub fn simulate_cli(a: &crate::cli::SimulateArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let model = ModelArtifact::load(&a.model)?;
    let (policy, engine) = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            let pick = |k: &str| table.get(k).cloned().unwrap_or(toml::Value::Table(Default::default()));
            let mut policy: PolicyConfig = pick("policy").try_into().context("[policy]")?;
            policy.resolve_uplift_from()?;
            let engine: EngineConfig = pick("engine").try_into().context("[engine]")?;
            (policy, engine)
        }
        None => (PolicyConfig::default(), EngineConfig::default()),
    };
    let effects = Effects { per_action: a.effects.iter().cloned().collect(), duration: a.effect_duration };
    let cfg = SimConfig { users: a.users, days: a.days, seed: a.seed, start_ms: a.start };
    let treatment = Treatment { model: &model, policy, engine, effects };
    let create = |p: &std::path::Path| -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        Ok(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?))
    };
    let mut out = create(&a.out)?;
    let mut truth = a.truth.as_deref().map(create).transpose()?;
    let started = std::time::Instant::now();
    let spin = crate::progress::spinner(&format!(
        "simulating {} users over {} days, closed loop with model {}",
        cfg.users, cfg.days, model.model_version
    ));
    let (s, t) = simulate_treated(&cfg, &treatment, &mut out, truth.as_mut())?;
    spin.finish_and_clear();
    out.flush()?;
    let control = t.records.iter().filter(|r| r.control).count();
    crate::errln!(
        "simulated {} events for {} users ({} churned, {} reactivated) in {:.1}s -> {}; closed loop: {} interventions, {} control records, {} treated with an effect, {} of them turned a fading or churned user",
        s.events,
        s.users,
        s.churned_users,
        s.reactivated_users,
        started.elapsed().as_secs_f64(),
        a.out.display(),
        t.records.len() - control,
        control,
        t.treated_with_effect,
        t.turned
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effects_parse_and_fall_back_to_the_wildcard() {
        assert_eq!(Effects::parse_pair("coupon=0.3"), Ok(("coupon".to_string(), 0.3)));
        assert!(Effects::parse_pair("coupon").is_err());
        assert!(Effects::parse_pair("coupon=1.5").is_err());
        assert!(Effects::parse_pair("=0.2").is_err());
        assert!(Effects::parse_pair("coupon=x").is_err());
        let e =
            Effects { per_action: [("coupon".to_string(), 0.3), ("*".to_string(), 0.1)].into(), ..Effects::default() };
        assert_eq!(e.of("coupon"), 0.3);
        assert_eq!(e.of("care_call"), 0.1);
        assert_eq!(Effects::default().of("coupon"), 0.0);
    }

    #[test]
    fn a_treatment_turns_a_fade_a_churn_or_lowers_the_hazard() {
        let win = Window {
            start: super::super::DEFAULT_START_MS,
            end: super::super::DEFAULT_START_MS + 100 * crate::time::DAY_MS,
            days: 100,
        };
        let tables = Tables::new();
        let mut u = UserSim::new(0, ChaCha8Rng::seed_from_u64(1), &win, &tables);
        assert_eq!(u.treat(10, 0.3, 0.0, 30), (false, None));
        assert_eq!((u.hazard_factor, u.treated_until), (0.7, 40));
        u.phase = Phase::Fading { start: 5, len: 20, recover: false };
        assert_eq!(u.treat(10, 0.3, 0.5, 30), (false, None), "draw above the effect: no change");
        assert_eq!(u.treat(10, 0.3, 0.2, 30), (true, None));
        assert!(matches!(u.phase, Phase::Fading { recover: true, .. }));
        u.phase = Phase::Churned { back: None };
        assert_eq!(u.treat(12, 0.3, 0.1, 30), (true, Some(12)));
        assert!(matches!(u.phase, Phase::Churned { back: Some(12) }));
        u.phase = Phase::Churned { back: Some(11) };
        assert_eq!(u.treat(12, 0.3, 0.1, 30), (false, None), "already coming back sooner");
    }
}
