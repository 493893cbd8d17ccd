//! `churnguard bench`: the figures in docs/PERFORMANCE.md, reproducible with one command.
//!
//! `bench replay` measures file replay (parse, feature update, scoring per event, silent
//! rescoring, policy) on simulator data, peak memory and state bytes per user, and training time
//! on about a million labelled rows. `bench kafka` measures the service through a real broker
//! against a bare librdkafka consumer, and event-to-intervention latency at a fixed rate.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::engine::{Engine, EngineConfig};
use crate::event::DEFAULT_MAX_EVENT_BYTES;
use crate::features::{FeatureSpec, Layout};
use crate::model::dataset::{self, EventLog, LabelSource, Labelling};
use crate::model::train::{self, TrainContext, TrainOptions};
use crate::model::ModelArtifact;
use crate::pipeline::replay::{self, ReplaySink, ReplaySummary};
use crate::policy::PolicyConfig;
use crate::sim::{self, SimConfig};
use crate::time::{Span, DAY_MS};

/// Peak resident memory since the last reset, in bytes (Linux; 0 elsewhere).
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// Reset the peak-RSS mark, so a phase's peak excludes what came before (Linux >= 4.0).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub struct ReplayBenchOptions {
    pub users: u64,
    pub days: u32,
    pub seed: u64,
    pub model: PathBuf,
    pub workdir: PathBuf,
    /// Target rows for the training-time measurement.
    pub train_rows: usize,
}

fn run_replay(path: &Path, art: &ModelArtifact, engine_cfg: EngineConfig) -> Result<(ReplaySummary, u64, usize)> {
    reset_peak_rss();
    let mut engine = Engine::new(art, PolicyConfig::default(), engine_cfg);
    let mut sink = std::io::sink();
    let s = replay::replay(path, DEFAULT_MAX_EVENT_BYTES, &mut engine, ReplaySink { interventions: &mut sink, control: None })?;
    let peak = peak_rss_bytes();
    let users = engine.store().len().max(1);
    Ok((s, peak, engine.store().heap_bytes() / users))
}

pub fn replay_bench(o: &ReplayBenchOptions) -> Result<String> {
    std::fs::create_dir_all(&o.workdir)?;
    let events = o.workdir.join(format!("bench-{}u-{}d-{}.jsonl", o.users, o.days, o.seed));
    let cfg = SimConfig { users: o.users, days: o.days, seed: o.seed, ..SimConfig::default() };
    let t = Instant::now();
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&events).with_context(|| events.display().to_string())?);
    let sim_summary = sim::simulate::<_, std::io::Sink>(&cfg, &mut f, None)?;
    std::io::Write::flush(&mut f)?;
    drop(f);
    let sim_secs = t.elapsed().as_secs_f64();
    let art = ModelArtifact::load(&o.model)?;
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(&mut out, format!("data: simulator seed {}, {} users, {} days, {} events ({:.0} MB JSONL), simulated in {sim_secs:.1}s", o.seed, o.users, o.days, sim_summary.events, std::fs::metadata(&events)?.len() as f64 / 1e6));
    line(&mut out, format!("model: {} ({} features)", art.model_version, art.feature_names.len()));
    line(&mut out, String::new());
    line(&mut out, "| replay mode | events/s | wall s | scorings on event | rescorings while silent | interventions + control | peak RSS MB |".into());
    line(&mut out, "|---|---|---|---|---|---|---|".into());
    let no_silence = EngineConfig { rescore_interval: Span::days(3650), state_ttl: Span::days(3651), ..EngineConfig::default() };
    let mut state_per_user = 0;
    for (name, ecfg) in [("per-event update + score (no timer rescoring)", no_silence), ("full engine (daily rescoring of silent users, TTL 120d)", EngineConfig::default())] {
        let (s, peak, per_user) = run_replay(&events, &art, ecfg)?;
        state_per_user = state_per_user.max(per_user);
        line(
            &mut out,
            format!(
                "| {name} | {:.0} | {:.2} | {} | {} | {} | {:.0} |",
                s.events_per_second(),
                s.elapsed.as_secs_f64(),
                s.counters.scored_on_event,
                s.counters.scored_on_timer,
                s.counters.interventions + s.counters.control,
                peak as f64 / 1e6
            ),
        );
    }
    let layout = Layout::new(&art.spec, Span::days(30).ms());
    let default_layout = Layout::new(&FeatureSpec::default(), Span::days(30).ms());
    line(&mut out, String::new());
    line(&mut out, format!("window state per user: {} bytes for this model's spec ({} event types), {} bytes for the default spec; all heap of the store per tracked user (ids, hash table, arenas with growth slack): {state_per_user} bytes", layout.state_bytes(), art.spec.event_types.len(), default_layout.state_bytes()));

    // Training time on about `train_rows` labelled rows: as many weekly cutoffs as needed.
    let log = EventLog::load(&events)?;
    let last = log.last_ts();
    let horizon = Span::days(30);
    let first_cut = last - horizon.ms() - DAY_MS;
    let users = log.users();
    let n_cutoffs = (o.train_rows / users.max(1)).clamp(1, 20);
    let cutoffs: Vec<i64> = (0..n_cutoffs as i64).map(|i| first_cut - i * 7 * DAY_MS).filter(|c| *c > log.first_ts() + 14 * DAY_MS).collect();
    let lab = Labelling { cutoffs: cutoffs.clone(), horizon, active_within: None, source: LabelSource::Silence };
    let t = Instant::now();
    let data = dataset::build(&log, &art.spec, &lab)?;
    let build_secs = t.elapsed().as_secs_f64();
    let ctx = TrainContext {
        events_file: events.display().to_string(),
        data_from: String::new(),
        data_to: String::new(),
        cutoffs: vec![],
        horizon: horizon.to_string(),
        active_within: None,
        label_source: lab.source.describe(),
    };
    reset_peak_rss();
    let t = Instant::now();
    let outcome = train::train(&art.spec, &data, ctx, &TrainOptions::default())?;
    let train_secs = t.elapsed().as_secs_f64();
    line(&mut out, String::new());
    line(
        &mut out,
        format!(
            "training: {} labelled rows x {} features over {} cutoffs; dataset built (replay to each cutoff) in {build_secs:.1}s; fit (L2 search on <= 200k rows over {} strengths, then the final fit on all rows) in {train_secs:.1}s; peak RSS {:.0} MB; validation ROC AUC {:.4}",
            data.rows(),
            data.n_features,
            cutoffs.len(),
            TrainOptions::default().l2_grid.len(),
            peak_rss_bytes() as f64 / 1e6,
            outcome.artifact.training.validation.roc_auc
        ),
    );
    Ok(out)
}
