//! The scoring engine shared by `replay` (file) and `run` (Kafka): event-time clock, feature
//! updates, rescoring of silent users by timer, TTL eviction, and the policy.
//!
//! One engine owns one ordered stream (a file, or one Kafka partition). Every decision is a
//! function of the user's own events and of event time, never of arrival interleaving with other
//! users, so the same events give the same decisions in both modes:
//! - an event is scored at the user's newest event time;
//! - a silent user is scored at exact due times `last decision + rescore_interval`, except that
//!   due times a bound on their frozen score proves unable to decide anything are skipped: the
//!   timer waits where the proof ends (`crossing`, docs/ARCHITECTURE.md rule 5a);
//! - before a user's event is applied, any of their timers due at or before it fire first.
//!
//! With `engine.score_at` set (a UTC time of day, e.g. `"00:00"`), the cadence is daily instead:
//! events only update features, and every user (active or silent) is scored by the timer at the
//! daily instants alone. The same timer machinery is used, with due times on that daily grid.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::decision::{Decision, ReasonRef};
use crate::event::ActivityEvent;
use crate::features::{FeatureStore, Layout};
use crate::intervention::{Intervention, Trigger};
use crate::model::score::sigmoid;
use crate::model::{ModelArtifact, Scorer};
use crate::policy::{Memory, Policy, PolicyConfig, Stage, Verdict};
use crate::population::PopulationIndex;
use crate::time::{Millis, Span, DAY_MS};
use crate::timers::TimerWheel;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Events up to this much older than the newest seen are applied exactly; older ones are late.
    pub allowed_lateness: Span,
    /// Every tracked user is rescored at least this often in event time.
    pub rescore_interval: Span,
    /// Users silent this long are forgotten (and counted as churned).
    pub state_ttl: Span,
    /// Hold back outputs until event time has covered this much since the first event the engine
    /// saw, so decisions are made on full feature windows rather than on the tail of a history
    /// (a replay or a service started partway through a topic sees everyone as `new`). State still
    /// updates; held decisions are counted in [`EngineCounters::held_warm_up`].
    pub warm_up: WarmUp,
    /// How long after a decision its outcome is judged (`[uplift] horizon`, copied here by
    /// [`crate::config::Config`] and by `replay`; not an `[engine]` key).
    #[serde(skip)]
    pub outcome_horizon: Span,
    /// Daily cadence: score every user once a day at this UTC time of day (`"HH:MM"`), and not
    /// on events or on the `rescore_interval` timer. Unset (the default): per-event scoring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score_at: Option<TimeOfDay>,
    /// Rescore silent users at every due time, as before issue 9, instead of only where the
    /// score bound says a decision could change: the reference the skipping engine is tested
    /// and measured against. Not a config key.
    #[serde(skip)]
    pub exhaustive_polling: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            allowed_lateness: Span::hours(1),
            rescore_interval: Span::days(1),
            state_ttl: Span::days(120),
            warm_up: WarmUp::Auto,
            outcome_horizon: Span::days(30),
            score_at: None,
            exhaustive_polling: false,
        }
    }
}

/// `engine.score_at`: a UTC time of day `"HH:MM"`, held as milliseconds after 00:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeOfDay(pub Millis);

impl TimeOfDay {
    /// The first instant at this time of day that is at or after `t`.
    pub fn at_or_after(self, t: Millis) -> Millis {
        let same_day = t.div_euclid(DAY_MS) * DAY_MS + self.0;
        if same_day >= t {
            same_day
        } else {
            same_day.saturating_add(DAY_MS)
        }
    }
}

impl std::fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0 / 60_000;
        write!(f, "{:02}:{:02}", m / 60, m % 60)
    }
}

impl std::str::FromStr for TimeOfDay {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid score_at {s:?}: expected a UTC time of day \"HH:MM\" such as \"00:00\"");
        let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if !(0..24).contains(&h) || !(0..60).contains(&m) {
            return Err(bad());
        }
        Ok(TimeOfDay((h * 60 + m) * 60_000))
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `engine.warm_up`: `"auto"` (the longest feature window of the model's spec), `"off"`, or a
/// duration such as `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WarmUp {
    #[default]
    Auto,
    Off,
    For(Span),
}

impl WarmUp {
    /// The warm-up span for a model with this feature spec (zero when off).
    pub fn resolve(self, spec: &crate::features::FeatureSpec) -> Span {
        match self {
            WarmUp::Auto => spec.windows.iter().copied().max().unwrap_or(Span(0)),
            WarmUp::Off => Span(0),
            WarmUp::For(s) => s,
        }
    }
}

impl std::fmt::Display for WarmUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WarmUp::Auto => f.write_str("auto"),
            WarmUp::Off => f.write_str("off"),
            WarmUp::For(s) => write!(f, "{s}"),
        }
    }
}

impl std::str::FromStr for WarmUp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(WarmUp::Auto),
            "off" => Ok(WarmUp::Off),
            d => d.parse::<Span>().map(WarmUp::For).map_err(|_| {
                format!("invalid warm_up {s:?}: expected \"auto\", \"off\" or a duration such as \"30d\"")
            }),
        }
    }
}

impl Serialize for WarmUp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WarmUp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("engine.{key}: {msg}")]
pub struct EngineConfigError {
    pub key: &'static str,
    pub msg: String,
}

impl EngineConfig {
    pub fn validate(&self, policy: &PolicyConfig) -> Result<(), EngineConfigError> {
        if self.allowed_lateness.ms() < 0 {
            return Err(EngineConfigError { key: "allowed_lateness", msg: "must not be negative".into() });
        }
        if self.rescore_interval.ms() < 60_000 {
            return Err(EngineConfigError { key: "rescore_interval", msg: "must be at least 1m".into() });
        }
        if let WarmUp::For(w) = self.warm_up {
            if w > Span::days(366) {
                return Err(EngineConfigError {
                    key: "warm_up",
                    msg: format!("{w} is longer than a year; use \"auto\" (the longest feature window) or \"off\""),
                });
            }
        }
        if self.state_ttl <= policy.lifecycle.churned_after {
            return Err(EngineConfigError {
                key: "state_ttl",
                msg: format!(
                    "{} must be longer than policy.lifecycle.churned_after ({}) or no user is ever seen as churned",
                    self.state_ttl, policy.lifecycle.churned_after
                ),
            });
        }
        Ok(())
    }
}

/// Counters the engine keeps locally; the pipeline flushes them into metrics per batch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct EngineCounters {
    pub events_applied: u64,
    pub events_late: u64,
    pub events_out_of_order: u64,
    pub users_created: u64,
    pub users_evicted: u64,
    pub scored_on_event: u64,
    pub scored_on_timer: u64,
    pub suppressed_cooldown: u64,
    pub suppressed_already_sent: u64,
    pub interventions: u64,
    pub control: u64,
    /// Decisions that would have reached a tier but were held during the warm-up.
    pub held_warm_up: u64,
    /// Decisions the value rule (`[policy.value]`) dropped: no action had a positive expected
    /// net value.
    pub suppressed_value: u64,
    /// Scores computed, in 20 equal-width buckets of P(churn) (flushed into a histogram).
    pub score_buckets: [u64; SCORE_BUCKETS],
    /// Shadow model scores, same buckets.
    pub shadow_buckets: [u64; SCORE_BUCKETS],
    /// Shadow and live model on the same side of the live model's lowest tier threshold.
    pub shadow_agree: u64,
    pub shadow_disagree: u64,
    /// Outcomes of interventions and control records, one cell per (group, tier, action) seen.
    /// Cells are only appended; labels are interned once per cell, never per event.
    pub outcomes: Vec<OutcomeCell>,
}

/// Outcomes decided for one (group, tier, action): how many decisions were followed by an event
/// within the horizon (`retained`) or not (`churned`), and the users' spend in the horizon.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeCell {
    /// true: the control group (held back); false: treated (intervention sent).
    pub control: bool,
    pub tier: Arc<str>,
    pub action: Arc<str>,
    pub retained: u64,
    pub churned: u64,
    /// Sum of event amounts in the horizon, in currency units.
    pub spend: f64,
}

impl OutcomeCell {
    pub fn group(&self) -> &'static str {
        if self.control {
            "control"
        } else {
            "treated"
        }
    }

    pub fn same_key(&self, other: &OutcomeCell) -> bool {
        self.control == other.control && self.tier == other.tier && self.action == other.action
    }
}

/// The index of `(control, tier, action)` in the engine's interned keys, appended when first seen
/// (a scan over a handful of keys: no allocation once the key exists).
fn outcome_key(keys: &mut Vec<OutcomeCell>, control: bool, tier: &str, action: &str) -> u32 {
    if let Some(i) = keys.iter().position(|c| c.control == control && &*c.tier == tier && &*c.action == action) {
        return i as u32;
    }
    keys.push(OutcomeCell { control, tier: tier.into(), action: action.into(), retained: 0, churned: 0, spend: 0.0 });
    (keys.len() - 1) as u32
}

/// Make `cells` (the counters, which a restore resets) cover every key up to `upto`, at zero.
fn cover_keys(cells: &mut Vec<OutcomeCell>, keys: &[OutcomeCell], upto: usize) {
    while cells.len() <= upto {
        cells.push(keys[cells.len()].clone());
    }
}

pub const SCORE_BUCKETS: usize = 20;

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    Applied,
    Late,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct UserMeta {
    next_due: Millis,
    memory: Memory,
    outcome: PendingOutcome,
    /// Changed since the last [`Engine::drain_changes`] or snapshot (listed in `Engine::dirty`).
    dirty: bool,
    /// In the open snapshot and not handed out yet ([`snapshot`]).
    frozen: bool,
    /// What the user's timer knows of their quiet due times ([`crossing`], [`Quiet`]). Not
    /// persisted: a restored user computes a score at their next due time.
    quiet: Quiet,
}

const FRESH_META: UserMeta = UserMeta {
    next_due: NO_DUE,
    memory: Memory::NONE,
    outcome: NO_OUTCOME,
    dirty: false,
    frozen: false,
    quiet: Quiet::NONE,
};

/// What a user's timer at `next_due` knows of their quiet due times: a due time whose score a
/// bound keeps below the cut decides nothing, so a proven span of them holds no timer at all;
/// the timer waits at the span's end ([`crossing`]). So does a span of warm-up due times whose
/// score a bound keeps at or above the lowest tier ([`Quiet::HELD`]): each would only count one
/// held decision, which is counted when the span has passed.
///
/// Bits: [`Quiet::TRY`], [`Quiet::TO_EVICTION`], [`Quiet::HELD`], and how many due times before
/// `next_due` were skipped (from the one after the last fired or scored), which puts the timer
/// back where polling would have it when a model swap voids the proof, and counts the held
/// decisions of a held span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quiet(u32);

impl Quiet {
    const NONE: Quiet = Quiet(0);
    /// The user was below the cut when last seen: the due time tries a bound before computing
    /// a score.
    const TRY: u32 = 1 << 31;
    /// The due time and every later one before the eviction are proven quiet.
    const TO_EVICTION: u32 = 1 << 30;
    /// The skipped due times (and, with [`Quiet::TO_EVICTION`], `next_due` too) are in the
    /// warm-up with a score at or above the lowest tier: held decisions, not quiet ones. The due
    /// time at the end of a span that does not reach the eviction is unproven and scored.
    const HELD: u32 = 1 << 29;
    const MAX_SKIPPED: u32 = Quiet::HELD - 1;

    fn new(flags: u32, skipped: i64) -> Quiet {
        Quiet(flags | u32::try_from(skipped).map_or(Quiet::MAX_SKIPPED, |n| n.min(Quiet::MAX_SKIPPED)))
    }

    fn tries(self) -> bool {
        self.0 & Quiet::TRY != 0
    }

    fn to_eviction(self) -> bool {
        self.0 & Quiet::TO_EVICTION != 0
    }

    fn skipped(self) -> i64 {
        i64::from(self.0 & Quiet::MAX_SKIPPED)
    }

    fn held(self) -> bool {
        self.0 & Quiet::HELD != 0
    }
}

/// How far ahead of the user being fired a timer pass prefetches records and cells: about a
/// memory latency of work apart at the cost of scoring a user, and the record first, so that
/// reading it to decide on the cells does not miss.
const META_AHEAD: usize = 4;
const CELLS_AHEAD: usize = 2;

/// The outcome of a user's latest decision, open until event time passes `due`.
///
/// One per user: a newer decision for the same user closes the previous one early, with what it
/// has seen so far (its horizon is cut at the newer decision). Retention is then credited to the
/// newer decision's action, so overlapping interventions are not counted twice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PendingOutcome {
    /// `decided + horizon`; `NO_DUE` when nothing is open.
    pub due: Millis,
    pub decided: Millis,
    /// Index into the engine's outcome keys ([`ClockState::outcome_keys`]).
    pub cell: u32,
    pub retained: bool,
    pub spend: f64,
}

pub const NO_OUTCOME: PendingOutcome =
    PendingOutcome { due: NO_DUE, decided: Millis::MIN, cell: 0, retained: false, spend: 0.0 };

/// A user with no rescore timer (`next_due`), or no open outcome (`PendingOutcome::due`).
pub const NO_DUE: Millis = Millis::MAX;

pub struct Engine {
    store: FeatureStore,
    meta: Vec<UserMeta>,
    /// `meta`'s spare capacity mapped ahead of new users (see `features::prefault`).
    meta_ahead: crate::features::prefault::Ahead,
    timers: TimerWheel,
    scorer: Arc<Scorer>,
    shadow: Option<Arc<Scorer>>,
    policy: Policy,
    cfg: EngineConfig,
    max_ts: Millis,
    watermark: Millis,
    /// Resolved `cfg.warm_up` in ms (0: off).
    warm_up_ms: Millis,
    /// Decisions at event times before this are held (MIN: none, or no event seen yet).
    warm_until: Millis,
    vector: Vec<f64>,
    due_scratch: Vec<(Millis, u32)>,
    /// Scratch for a decision's reasons: reused, so deciding allocates nothing.
    ranked: Vec<(f64, usize)>,
    reasons: Vec<ReasonRef>,
    /// Scratch for the per-feature bounds of a quiet span (see [`crossing`]).
    bound_lo: Vec<f64>,
    bound_hi: Vec<f64>,
    /// Index in the feature vector of `policy.value.value_feature`, when the rule is set.
    value_idx: Option<usize>,
    pub counters: EngineCounters,
    /// Lifecycle and activity figures, kept as users change (no scan).
    population: PopulationIndex,
    /// Due times of open outcomes (`decided + outcome_horizon`), drained as the watermark passes.
    outcome_timers: TimerWheel,
    outcome_scratch: Vec<u32>,
    /// Interned (group, tier, action) keys, at zero counts; `counters.outcomes[i]` counts key `i`.
    /// Kept apart from the counters, which a state restore resets while outcomes stay open.
    outcome_keys: Vec<OutcomeCell>,
    /// Users changed since the last [`Engine::drain_changes`], when change tracking is on (a
    /// changelog); may hold an index twice or a stale one: `UserMeta::dirty` decides.
    dirty: Vec<u32>,
    /// Ids of users evicted since the last drain (tombstones for a changelog).
    removed: Vec<Box<str>>,
    track_changes: bool,
    /// A changelog flush's users, handed out while the engine runs on.
    snapshot: snapshot::Snapshot,
}

mod crossing;
mod persist;
mod snapshot;
pub use persist::{Change, ClockState, RestoreError, UserRecord, UserView};

impl Engine {
    pub fn new(model: &ModelArtifact, policy: PolicyConfig, cfg: EngineConfig) -> Engine {
        let layout = Layout::new(&model.spec, policy.lifecycle.churned_after.ms());
        let n = layout.n_features();
        let value_idx = policy.value.as_ref().and_then(|v| {
            let idx = model.spec.feature_names().iter().position(|n| *n == v.value_feature);
            if idx.is_none() && !v.value_feature.is_empty() {
                tracing::warn!(feature = %v.value_feature, "policy.value.value_feature is not a feature of the model: user value is base_value only");
            }
            idx
        });
        let policy = Policy::new(policy, &model.thresholds.tiers);
        let warm_up_ms = cfg.warm_up.resolve(&model.spec).ms();
        // Cohorts reach back no further than the state TTL, so every member is still in memory.
        let cohort_span = Span::days(90).min(cfg.state_ttl).ms();
        let population = PopulationIndex::new(policy.cfg.lifecycle.clone(), cohort_span);
        let outcome_granularity = (cfg.outcome_horizon.ms() / 24).max(1000);
        Engine {
            store: FeatureStore::new(layout),
            meta: Vec::new(),
            meta_ahead: Default::default(),
            // Due times within a bucket fire together; a 24th of the interval keeps the delay small.
            timers: TimerWheel::new((cfg.rescore_interval.ms() / 24).max(1000)),
            scorer: Arc::new(Scorer::new(model)),
            shadow: None,
            policy,
            cfg,
            max_ts: Millis::MIN,
            watermark: Millis::MIN,
            warm_up_ms,
            warm_until: Millis::MIN,
            vector: vec![0.0; n],
            due_scratch: Vec::new(),
            ranked: Vec::new(),
            reasons: Vec::new(),
            bound_lo: vec![0.0; n],
            bound_hi: vec![0.0; n],
            value_idx,
            counters: EngineCounters::default(),
            population,
            outcome_timers: TimerWheel::new(outcome_granularity),
            outcome_scratch: Vec::new(),
            outcome_keys: Vec::new(),
            dirty: Vec::new(),
            removed: Vec::new(),
            track_changes: false,
            snapshot: snapshot::Snapshot::default(),
        }
    }

    /// The moment the population figures describe: the watermark.
    fn population_clock(&self) -> Millis {
        self.watermark.max(self.max_ts.saturating_sub(self.cfg.allowed_lateness.ms()))
    }

    pub fn store(&self) -> &FeatureStore {
        &self.store
    }

    pub fn watermark(&self) -> Millis {
        self.watermark
    }

    pub fn max_ts(&self) -> Millis {
        self.max_ts
    }

    /// Decisions before this event time are held for the warm-up (`Millis::MIN` when warm-up is
    /// off or no event has been seen yet).
    pub fn warm_until(&self) -> Millis {
        self.warm_until
    }

    pub fn model_version(&self) -> &str {
        self.scorer.version()
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Score every vector with `model` too, without acting on it (see [`EngineCounters`]).
    pub fn set_shadow(&mut self, model: &ModelArtifact) -> Result<(), String> {
        if model.spec != *self.store.layout().spec() {
            return Err("the shadow model's feature spec differs from the live model's".into());
        }
        self.shadow = Some(Arc::new(Scorer::new(model)));
        // Spans proven without the shadow would leave its disagreements there uncounted.
        self.forget_quiet_spans();
        Ok(())
    }

    /// Swap the model between events. The new model must use the same feature spec.
    pub fn swap_model(&mut self, model: &ModelArtifact) -> Result<(), String> {
        if model.spec != *self.store.layout().spec() {
            return Err("the new model's feature spec differs from the running state's".into());
        }
        self.scorer = Arc::new(Scorer::new(model));
        let cfg = self.policy.cfg.clone();
        self.policy = Policy::new(cfg, &model.thresholds.tiers);
        self.forget_quiet_spans();
        Ok(())
    }

    /// Forget every proof of quiet due times: they were made for another model. A user whose
    /// timer skipped a span gets it back where polling would have it (`crossing::polled_due`),
    /// so they are rescored from their next due time, as if no span had been skipped.
    fn forget_quiet_spans(&mut self) {
        let (step, granularity) = (self.interval(), self.timers.granularity());
        for idx in 0..self.meta.len() {
            let m = self.meta[idx];
            if m.quiet == Quiet::NONE {
                continue;
            }
            self.meta[idx].quiet = Quiet::NONE;
            let n = m.quiet.skipped();
            if m.next_due == NO_DUE || n == 0 {
                continue;
            }
            let first = m.next_due - n * step;
            let due = crossing::polled_due(first, step, granularity, self.timers.base());
            if m.quiet.held() {
                // Polling fired (and held) the due times before `due` under the old model.
                self.counters.held_warm_up += ((due - first) / step) as u64;
            }
            if due < m.next_due {
                self.preserve(idx as u32);
                self.schedule(idx as u32, due);
                self.mark_changed(idx as u32);
            }
        }
    }

    /// When a user last active at `last` is evicted: the TTL's end, on the daily grid with the
    /// daily cadence.
    fn evict_at(&self, last: Millis) -> Millis {
        let expires = last.saturating_add(self.cfg.state_ttl.ms());
        self.cfg.score_at.map_or(expires, |daily| daily.at_or_after(expires))
    }

    /// The spacing of a user's due times.
    fn interval(&self) -> Millis {
        if self.cfg.score_at.is_some() {
            DAY_MS
        } else {
            self.cfg.rescore_interval.ms()
        }
    }

    /// Apply one valid event, emitting any interventions it or the advanced clock causes.
    /// Apply one valid event; `emit` receives every decision it or the advanced clock causes, as
    /// owned records (built per decision: for file sinks and tests).
    pub fn ingest(&mut self, ev: &ActivityEvent<'_>, emit: &mut dyn FnMut(Intervention)) -> Ingested {
        let now = chrono::Utc::now().timestamp_millis();
        self.ingest_decisions(ev, &mut |d| emit(d.to_intervention(now)))
    }

    /// Move the clock forward, as [`Engine::advance_watermark_decisions`], with owned records.
    pub fn advance_watermark(&mut self, to: Millis, emit: &mut dyn FnMut(Intervention)) {
        let now = chrono::Utc::now().timestamp_millis();
        self.advance_watermark_decisions(to, &mut |d| emit(d.to_intervention(now)))
    }

    /// Apply one valid event. `emit` receives each decision as a typed value borrowed from the
    /// engine: nothing is allocated to make it.
    pub fn ingest_decisions(&mut self, ev: &ActivityEvent<'_>, emit: &mut dyn FnMut(&Decision<'_>)) -> Ingested {
        if ev.ts < self.watermark {
            self.counters.events_late += 1;
            return Ingested::Late;
        }
        self.start_clock(ev.ts, emit);
        let type_idx = self.store.layout().spec().type_index(&ev.event_type);
        let mut idx = self.lookup_or_create(&ev.user_id, ev.ts);
        self.preserve(idx);
        // Catch-up: the user's own timers due before this event fire first, whatever the clock.
        while self.meta[idx as usize].next_due <= ev.ts {
            let due = self.meta[idx as usize].next_due;
            if !self.fire(idx, due, emit) {
                idx = self.lookup_or_create(&ev.user_id, ev.ts);
                break;
            }
        }
        self.end_held_span(idx, ev.ts);
        if self.store.apply(idx, ev.ts, type_idx, ev.amount.unwrap_or(0.0)) == crate::features::Applied::OutOfOrder {
            self.counters.events_out_of_order += 1;
        }
        self.counters.events_applied += 1;
        self.mark_changed(idx);
        // The user's open outcome: an event in (decided, due] retains them (final at `due`).
        let p = &mut self.meta[idx as usize].outcome;
        if p.due != NO_DUE && ev.ts > p.decided && ev.ts <= p.due {
            p.retained = true;
            p.spend += ev.amount.unwrap_or(0.0);
        }
        self.population.update(idx, self.store.user(idx));
        if let Some(daily) = self.cfg.score_at {
            // Daily cadence: no scoring on the event; the user is due at the next daily instant
            // at the latest (a new user has no due time yet, and one whose rescoring was
            // deferred after a top-tier send has a later one).
            let next = daily.at_or_after(ev.ts.saturating_add(1));
            if self.meta[idx as usize].next_due > next {
                self.schedule(idx, next);
            }
            // The event changed the state the quiet span was proven for.
            self.meta[idx as usize].quiet = Quiet::NONE;
            return Ingested::Applied;
        }
        let at = self.store.user(idx).last_ts();
        self.counters.scored_on_event += 1;
        self.score_and_decide(idx, at, Trigger::Event, emit);
        Ingested::Applied
    }

    /// The clock part of an event at `ts` (not late): start the warm-up, move the watermark.
    fn start_clock(&mut self, ts: Millis, emit: &mut dyn FnMut(&Decision<'_>)) {
        if self.max_ts == Millis::MIN && self.warm_up_ms > 0 {
            // The first event starts the warm-up.
            self.warm_until = ts.saturating_add(self.warm_up_ms);
        }
        if ts > self.max_ts {
            // Other users' timers due by the new watermark fire first; this user's are handled
            // by catch-up below, so the order cannot change any decision.
            self.max_ts = ts;
            self.advance_watermark_decisions(ts.saturating_sub(self.cfg.allowed_lateness.ms()), emit);
        }
    }

    /// Move the clock forward (never back) and fire every timer due by then. Used per event, for
    /// idle partitions (wall clock), and at the end of a file.
    pub fn advance_watermark_decisions(&mut self, to: Millis, emit: &mut dyn FnMut(&Decision<'_>)) {
        if to <= self.watermark {
            return;
        }
        self.watermark = to;
        self.close_due_outcomes(to);
        if !self.timers.has_complete(to) {
            return;
        }
        let mut due_now = std::mem::take(&mut self.due_scratch);
        let meta = &self.meta;
        let timers = &mut self.timers;
        let granularity = timers.granularity();
        // Buckets before this one are complete: the pass fires every due time in them.
        let complete = (to + 1).div_euclid(granularity);
        timers.drain_until(to, |bucket, ids| {
            for &id in ids {
                let due = meta[id as usize].next_due;
                // An entry may sit in a later bucket than its due time (pushed after that
                // bucket was drained); one in an earlier bucket is stale (rescheduled later).
                if due != NO_DUE && due.div_euclid(granularity) <= bucket && due <= to {
                    due_now.push((due, id));
                }
            }
        });
        // Users are independent, so any fixed order gives the same decisions; user-index order
        // walks the state arenas sequentially instead of at random (far fewer cache misses).
        due_now.sort_unstable_by_key(|&(due, id)| (id, due));
        due_now.dedup();
        for (k, &(due, id)) in due_now.iter().enumerate() {
            self.prefetch_ahead(&due_now, k);
            // A user may have been handled by catch-up since the entry was read.
            if self.meta[id as usize].next_due != due {
                continue;
            }
            // A jump in event time can leave several of the user's due times in buckets this
            // pass completes; one in the bucket the clock is in waits for the pass that
            // completes it, as every due time does, whatever the user's earlier ones were.
            while self.meta[id as usize].next_due.div_euclid(granularity) < complete {
                let d = self.meta[id as usize].next_due;
                if !self.fire(id, d, emit) {
                    break;
                }
            }
        }
        due_now.clear();
        self.due_scratch = due_now;
    }

    /// While the `k`th due user is handled, ask for the memory of those a few places on: the
    /// record of the one [`META_AHEAD`] on, and the cells of the one [`CELLS_AHEAD`] on unless its
    /// record (fetched two steps before) says it is proven quiet, which reads no cells.
    #[inline]
    fn prefetch_ahead(&self, due: &[(Millis, u32)], k: usize) {
        if let Some(&(_, id)) = due.get(k + META_AHEAD) {
            crate::features::prefetch::one(self.meta.as_ptr().wrapping_add(id as usize));
        }
        if let Some(&(_, id)) = due.get(k + CELLS_AHEAD) {
            if self.meta.get(id as usize).is_some_and(|m| !m.quiet.to_eviction()) {
                self.store.prefetch(id);
            }
        }
    }

    /// Ask the CPU for the memory an event of `user_id` will read (their table entry, id, cells,
    /// record and population figures), while the events before it are handled: the user table
    /// and the arenas are far larger than the caches, and each was a cache miss per event. A
    /// hint only: it changes no result.
    #[inline]
    pub fn prefetch_user(&self, user_id: &str) {
        if let Some(idx) = self.store.prefetch_user(user_id) {
            if let Some(m) = self.meta.get(idx as usize) {
                crate::features::prefetch::one(m);
            }
            self.population.prefetch(idx);
        }
    }

    fn lookup_or_create(&mut self, user_id: &str, ts: Millis) -> u32 {
        let (idx, created) = self.store.get_or_insert(user_id, ts);
        if created {
            self.counters.users_created += 1;
            let i = idx as usize;
            if self.meta.len() <= i {
                self.meta.resize(i + 1, FRESH_META);
                self.meta_ahead.grew(&self.meta);
            }
            self.meta[i] = FRESH_META;
        }
        idx
    }

    /// A rescore timer at `due`: evict the user if silent past the TTL, else score them unless
    /// their quiet span says it decides nothing. Returns false if the user was evicted.
    fn fire(&mut self, idx: u32, due: Millis, emit: &mut dyn FnMut(&Decision<'_>)) -> bool {
        self.preserve(idx);
        // The wheel entry that led here is spent: the next schedule must push a new one.
        self.meta[idx as usize].next_due = NO_DUE;
        self.mark_changed(idx);
        let last = self.store.user(idx).last_ts();
        let quiet = self.meta[idx as usize].quiet;
        if quiet.held() {
            // Every due time the span skipped was a held decision.
            self.counters.held_warm_up += quiet.skipped() as u64;
        }
        if due - last >= self.cfg.state_ttl.ms() {
            // Silent past the TTL: an outcome still open is closed with what it has seen.
            self.close_outcome(idx);
            if self.track_changes {
                self.meta[idx as usize].dirty = false;
                self.removed.push(self.store.user_id(idx).into());
            }
            self.store.evict(idx);
            self.population.remove(idx);
            self.meta[idx as usize].next_due = NO_DUE;
            self.counters.users_evicted += 1;
            return false;
        }
        let step = self.interval();
        let evict_at = self.evict_at(last);
        if quiet.to_eviction() {
            // Proven quiet (or held) up to the eviction, which polling would reach from here too.
            if quiet.held() {
                self.counters.held_warm_up += 1;
            }
            self.meta[idx as usize].quiet = Quiet::NONE;
            self.schedule(idx, evict_at);
            return true;
        }
        if quiet.tries() {
            // Below the cut when last scored, at an event or at the end of a proven span: a
            // bound over this due time and as many more as the silence so far (two at the
            // first) most likely proves them all, and then no score is computed here at all.
            // One try: if it fails, the score computed here searches on from it, halving.
            let len = ((due - last) / step).max(1) + 1;
            let until = self.quiet_span(idx, due, step, evict_at, len, false, false);
            if until > due {
                self.skip_to(idx, due + step, until, evict_at, false);
                return true;
            }
        }
        self.counters.scored_on_timer += 1;
        // On the daily cadence, a user with an event in the day before is reported as scored
        // for an event (the decision record has only the two triggers).
        let trigger = match self.cfg.score_at {
            Some(_) if last > due - DAY_MS => Trigger::Event,
            _ => Trigger::Silence,
        };
        self.score_and_decide(idx, due, trigger, emit);
        true
    }

    /// Close every open outcome whose horizon ended at or before `to`.
    fn close_due_outcomes(&mut self, to: Millis) {
        if !self.outcome_timers.has_complete(to) {
            return;
        }
        let mut due_now = std::mem::take(&mut self.outcome_scratch);
        let meta = &self.meta;
        self.outcome_timers.drain_until(to, |_, ids| {
            // Entries are hints, as for rescore timers: a closed or replaced outcome is skipped.
            due_now.extend(ids.iter().copied().filter(|&id| {
                let due = meta[id as usize].outcome.due;
                due != NO_DUE && due <= to
            }));
        });
        for &id in &due_now {
            if self.meta[id as usize].outcome.due <= to {
                self.preserve(id);
                self.close_outcome(id);
                self.mark_changed(id);
            }
        }
        due_now.clear();
        self.outcome_scratch = due_now;
    }

    /// Count the user's open outcome (if any) and clear it.
    fn close_outcome(&mut self, idx: u32) {
        let p = std::mem::replace(&mut self.meta[idx as usize].outcome, NO_OUTCOME);
        if p.due == NO_DUE {
            return;
        }
        cover_keys(&mut self.counters.outcomes, &self.outcome_keys, p.cell as usize);
        let cell = &mut self.counters.outcomes[p.cell as usize];
        if p.retained {
            cell.retained += 1;
        } else {
            cell.churned += 1;
        }
        cell.spend += p.spend;
    }

    /// Open an outcome for a decision at `at` in `cell`, closing the user's previous one first.
    fn open_outcome(&mut self, idx: u32, at: Millis, cell: u32) {
        self.close_outcome(idx);
        let due = at.saturating_add(self.cfg.outcome_horizon.ms());
        self.meta[idx as usize].outcome = PendingOutcome { due, decided: at, cell, retained: false, spend: 0.0 };
        self.outcome_timers.push(due, idx);
    }

    /// An event at `ts` ends the user's held span ([`Quiet::HELD`]): of the due times it
    /// skipped, those up to `ts` have passed (polling's catch-up fires each one before the
    /// event) and are counted as held; the later ones never come.
    fn end_held_span(&mut self, idx: u32, ts: Millis) {
        let step = self.interval();
        let m = &mut self.meta[idx as usize];
        if !m.quiet.held() || m.next_due == NO_DUE {
            return;
        }
        let n = m.quiet.skipped();
        let first = m.next_due - n * step;
        if ts >= first {
            self.counters.held_warm_up += ((ts - first) / step + 1).min(n) as u64;
        }
        m.quiet = Quiet::NONE;
    }

    fn schedule(&mut self, idx: u32, due: Millis) {
        let m = &mut self.meta[idx as usize];
        let had = m.next_due;
        m.next_due = due;
        // One wheel entry per bucket is enough: the entry checks the real due time when drained.
        if had == NO_DUE || self.timers.bucket_of(had) != self.timers.bucket_of(due) {
            self.timers.push(due, idx);
        }
    }

    /// Set the user's timer past a proven span: every due time of the chain from `first` (the
    /// one after the last fired or scored) up to `until` (the first unproven one, or the
    /// eviction) is quiet (or, with `held`, a held decision), so the timer waits at `until`,
    /// which then tries a bound (a held span's end is scored), or, for a span to the eviction,
    /// at the chain's last due time before it. A span too long to count is cut short (shorter
    /// is sound: its end only tries a bound, or is scored).
    fn skip_to(&mut self, idx: u32, first: Millis, until: Millis, evict_at: Millis, held: bool) {
        let step = self.interval();
        let open = if held { Quiet::HELD } else { Quiet::TRY };
        let (due, flags) = if until >= evict_at && first < evict_at {
            (first + (evict_at - 1 - first) / step * step, Quiet::TO_EVICTION | (open & Quiet::HELD))
        } else {
            (until.min(evict_at), open)
        };
        let longest = first.saturating_add(i64::from(Quiet::MAX_SKIPPED).saturating_mul(step));
        let (due, flags) = if due > longest { (longest, open) } else { (due, flags) };
        self.meta[idx as usize].quiet =
            if due >= evict_at { Quiet::NONE } else { Quiet::new(flags, (due - first).max(0) / step) };
        self.schedule(idx, due);
    }

    /// The score below which a rescoring at any time in `[from, to]` decides nothing, for a user
    /// with policy memory `mem` and no event since `last_active`: the lowest tier's threshold,
    /// or, while only an escalation could be sent (in the cooldown, or silent since a send
    /// without `resend_while_silent`), the threshold of the tier above the last one sent. The
    /// warm-up and a shadow model keep the lowest threshold, so that no score above it goes
    /// uncounted there (`held_warm_up`, shadow disagreements).
    fn quiet_cut(&self, mem: &Memory, last_active: Millis, from: Millis, to: Millis) -> f64 {
        let min = self.policy.min_threshold();
        if self.shadow.is_some() || from < self.warm_until || mem.last_sent == Millis::MIN {
            return min;
        }
        let cooling = to < mem.last_sent.saturating_add(self.policy.cfg.cooldown.ms());
        let sent_this_silence = !self.policy.cfg.resend_while_silent && self.policy.silent_since_sent(mem, last_active);
        if !(cooling || sent_this_silence) {
            return min;
        }
        match mem.last_rank as usize {
            0 => f64::INFINITY,
            r if r <= self.policy.tiers.len() => self.policy.tiers[r - 1].min_score,
            _ => min,
        }
    }

    /// Whether a search for quiet due times is worth its cost: only when the score just computed
    /// (and the shadow's) is below the cut at `next`, as the next ones then likely are too. The
    /// caller also waits until the user has been silent for a whole interval: most users have
    /// another event before that, which would waste the search. Not searching is always sound.
    fn worth_a_search(&self, score: f64, mem: &Memory, last_active: Millis, next: Millis) -> bool {
        let min = self.policy.min_threshold();
        score < self.quiet_cut(mem, last_active, next, next)
            && self.shadow.as_ref().is_none_or(|s| s.score(&self.vector) < min)
    }

    /// Where the quiet span of the chain `next + k * interval` (before `evict_at`) ends: after
    /// up to `len` due times whose scores the bound keeps below the cut (crossing::quiet_until).
    /// Between the user's events their state and policy memory are frozen, and below the cut a
    /// rescoring changes nothing: no decision, no policy memory, no warm-up hold; with a shadow
    /// model, the shadow is kept below too, so no disagreement goes uncounted.
    /// With `halve` false, one try over the whole span ([`crossing::quiet_until`]).
    ///
    /// With `held`, the span is of held decisions instead: due times in the warm-up (so before
    /// the first due time at or past its end, `end`) whose score the bound keeps at or above
    /// the lowest tier. Each would only be counted as held: the warm-up leaves the policy's
    /// memory alone. The caller makes sure no shadow model is set.
    #[allow(clippy::too_many_arguments)]
    fn quiet_span(
        &mut self,
        idx: u32,
        next: Millis,
        interval: Millis,
        end: Millis,
        len: i64,
        halve: bool,
        held: bool,
    ) -> Millis {
        let min = self.policy.min_threshold();
        let (mut lo, mut hi) = (std::mem::take(&mut self.bound_lo), std::mem::take(&mut self.bound_hi));
        let (layout, user) = (self.store.layout(), self.store.user(idx));
        let (scorer, shadow) = (&self.scorer, self.shadow.as_deref());
        let mem = self.meta[idx as usize].memory;
        let due = crossing::quiet_until(next, interval, end, len, halve, |a, b| {
            layout.vector_bounds(user, a, b, &mut lo, &mut hi);
            if held {
                return sigmoid(scorer.logit_lower(&lo, &hi)) >= min;
            }
            let cut = self.quiet_cut(&mem, user.last_ts(), a, b);
            sigmoid(scorer.logit_upper(&lo, &hi)) < cut && shadow.is_none_or(|s| sigmoid(s.logit_upper(&lo, &hi)) < min)
        });
        self.bound_lo = lo;
        self.bound_hi = hi;
        due
    }

    fn score_and_decide(&mut self, idx: u32, at: Millis, trigger: Trigger, emit: &mut dyn FnMut(&Decision<'_>)) {
        self.store.vector_at(idx, at, &mut self.vector);
        let score = self.scorer.score(&self.vector);
        let bucket = |s: f64| ((s * SCORE_BUCKETS as f64) as usize).min(SCORE_BUCKETS - 1);
        self.counters.score_buckets[bucket(score)] += 1;
        if let Some(shadow) = &self.shadow {
            let s = shadow.score(&self.vector);
            self.counters.shadow_buckets[bucket(s)] += 1;
            let cut = self.policy.min_threshold();
            if (s >= cut) == (score >= cut) {
                self.counters.shadow_agree += 1;
            } else {
                self.counters.shadow_disagree += 1;
            }
        }
        let memory_before = self.meta[idx as usize].memory;
        let mut held = false;
        let verdict = if score < self.policy.min_threshold() {
            Verdict::NoTier
        } else if at < self.warm_until {
            // Held: the features do not yet cover a full window. The policy's memory is left
            // alone, so the first decision after the warm-up is judged as on a fresh start.
            self.counters.held_warm_up += 1;
            held = true;
            Verdict::NoTier
        } else {
            let last_active = self.store.user(idx).last_ts();
            self.policy.judge(score, at, last_active, &mut self.meta[idx as usize].memory)
        };
        // The value rule (optional) picks the action, or drops the decision as if no tier had
        // been reached: the policy's memory is restored, so no cooldown starts.
        let mut value_action: Option<String> = None;
        let verdict = match (verdict, &self.policy.cfg.value) {
            (Verdict::Send(rank), Some(rule)) => {
                let stage = self.policy.cfg.lifecycle.stage(self.store.user(idx), at);
                let value = rule.base_value + self.value_idx.map_or(0.0, |i| self.vector[i]);
                match self.policy.value_choice(rank as usize, stage, score, value) {
                    Some(a) => {
                        value_action = Some(a);
                        verdict
                    }
                    None => {
                        self.meta[idx as usize].memory = memory_before;
                        self.counters.suppressed_value += 1;
                        Verdict::NoTier
                    }
                }
            }
            (v, _) => v,
        };
        // Rescores that cannot send anything are skipped: after the top tier was sent there is
        // no escalation left, so a silent user waits for the cooldown to end, or (unless
        // resend_while_silent) for their next event or eviction. Decisions are unchanged.
        let mem = self.meta[idx as usize].memory;
        let last_active = self.store.user(idx).last_ts();
        let expires = last_active.saturating_add(self.cfg.state_ttl.ms());
        let interval = self.interval();
        let mut next = at.saturating_add(interval);
        if mem.last_rank == 0 && mem.last_sent != Millis::MIN {
            next = if !self.policy.cfg.resend_while_silent && self.policy.silent_since_sent(&mem, last_active) {
                expires
            } else {
                next.max(mem.last_sent.saturating_add(self.policy.cfg.cooldown.ms()))
            };
        }
        let mut next = next.min(expires).max(at + 1);
        if let Some(daily) = self.cfg.score_at {
            // Daily cadence: every due time (rescore or eviction) is on the daily grid.
            next = daily.at_or_after(next);
        }
        let evict_at = self.evict_at(last_active);
        let silent_a_while = at - last_active >= interval;
        let quiet_until =
            if self.cfg.exhaustive_polling || !silent_a_while || !self.worth_a_search(score, &mem, last_active, next) {
                next
            } else {
                self.quiet_span(idx, next, interval, evict_at, ((at - last_active) / interval).max(1), true, false)
            };
        // Held in the warm-up, and silent a while: the due times after this one are most likely
        // held too, up to the end of the warm-up or the next crossing of the lowest tier.
        let held_until =
            if held && quiet_until == next && silent_a_while && !self.cfg.exhaustive_polling && self.shadow.is_none() {
                let end = evict_at.min(crossing::first_after(next, interval, self.warm_until.saturating_sub(1)));
                self.quiet_span(idx, next, interval, end, ((at - last_active) / interval).max(1), true, true)
            } else {
                next
            };
        if quiet_until > next {
            self.skip_to(idx, next, quiet_until, evict_at, false);
        } else if held_until > next {
            self.skip_to(idx, next, held_until, evict_at, true);
        } else {
            // Scored on an event (or within an interval of one) below the cut: most users have
            // another event within the interval, so no search now, but one at the next due time
            // if they do not.
            let try_bound = !silent_a_while
                && !self.cfg.exhaustive_polling
                && self.shadow.is_none()
                && score < self.quiet_cut(&mem, last_active, next, next);
            self.meta[idx as usize].quiet = if try_bound { Quiet::new(Quiet::TRY, 0) } else { Quiet::NONE };
            self.schedule(idx, next);
        }
        let rank = match verdict {
            Verdict::NoTier => return,
            Verdict::Cooldown => {
                self.counters.suppressed_cooldown += 1;
                return;
            }
            Verdict::AlreadySent => {
                self.counters.suppressed_already_sent += 1;
                return;
            }
            Verdict::Send(rank) => rank as usize,
        };
        let user = self.store.user(idx);
        let stage: Stage = self.policy.cfg.lifecycle.stage(user, at);
        let user_id = self.store.user_id(idx);
        let tier = &self.policy.tiers[rank];
        let control = self.policy.in_control(user_id);
        if control {
            self.counters.control += 1;
        } else {
            self.counters.interventions += 1;
        }
        self.scorer.explain_into(&self.vector, self.policy.cfg.top_reasons, &mut self.ranked, &mut self.reasons);
        let action = value_action.as_deref().unwrap_or_else(|| self.policy.action(&tier.name, stage));
        let cell = outcome_key(&mut self.outcome_keys, control, &tier.name, action);
        cover_keys(&mut self.counters.outcomes, &self.outcome_keys, cell as usize);
        emit(&Decision {
            user_id,
            score,
            threshold: tier.min_score,
            tier: &tier.name,
            stage,
            action,
            reasons: &self.reasons,
            feature_names: self.scorer.names(),
            model_version: self.scorer.version(),
            at,
            watermark: self.watermark,
            trigger,
            control,
        });
        self.open_outcome(idx, at, cell);
    }

    /// Lifecycle, activity and retention figures over every tracked user at the watermark, kept
    /// incrementally (crate::population): no scan over the users.
    pub fn population(&mut self) -> Population {
        let at = self.population_clock();
        if at == Millis::MIN {
            return Population::default();
        }
        self.population.at(at).clone()
    }

    /// The same figures as [`Engine::population`], by a scan over every user: the reference the
    /// incremental figures are tested against.
    pub fn population_by_scan(&self) -> Population {
        let mut out = Population::default();
        let at = self.watermark.max(self.max_ts.saturating_sub(self.cfg.allowed_lateness.ms()));
        if at == Millis::MIN {
            return out;
        }
        // Cohorts reach back no further than the state TTL, so every member is still in memory.
        let cohort_span = Span::days(90).min(self.cfg.state_ttl).ms();
        for idx in self.store.indices() {
            let u = self.store.user(idx);
            out.stages[self.policy.cfg.lifecycle.stage(u, at) as usize] += 1;
            for (i, days) in ACTIVE_WINDOWS_DAYS.iter().enumerate() {
                if at - u.last_ts() < days * DAY_MS {
                    out.active[i] += 1;
                }
            }
            let first = u.first_ts();
            for (i, days) in RETENTION_DAYS.iter().enumerate() {
                let n = days * DAY_MS;
                // Users whose first event is old enough for day N to have passed, and recent enough
                // to be a cohort of this window; retained if active on or after day N.
                if first <= at - n && first > at - cohort_span {
                    out.cohort[i] += 1;
                    if u.last_ts() >= first + n {
                        out.retained[i] += 1;
                    }
                }
            }
        }
        out
    }
}

pub use crate::population::{Population, ACTIVE_WINDOWS_DAYS, RETENTION_DAYS};
