//! Backfill mode: a file through the full scoring path, interventions to JSONL.
//!
//! Lines are read in file order, exactly as a Kafka partition is: the engine's watermark (newest
//! event minus the allowed lateness) orders time, events older than it are counted as late, and
//! silent users are rescored as the file's clock moves.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::engine::{Engine, EngineCounters, Ingested};
use crate::source::{self, RejectTally, SourceError};

pub mod decided;
mod sharded;

use decided::Decided;
pub use sharded::replay_sharded;

#[derive(Debug, Default, Clone)]
pub struct ReplaySummary {
    pub lines: u64,
    pub valid: u64,
    pub rejected: RejectTally,
    pub late: u64,
    pub users_tracked: usize,
    pub interventions_by_tier: BTreeMap<String, u64>,
    pub control_by_tier: BTreeMap<String, u64>,
    pub counters: EngineCounters,
    pub elapsed: Duration,
    pub state_bytes: usize,
}

impl ReplaySummary {
    pub fn events_per_second(&self) -> f64 {
        self.lines as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("cannot write interventions: {0}")]
    Write(#[from] std::io::Error),
}

/// Where interventions go. Control records go to `control` when given, else are only counted.
pub struct ReplaySink<'a> {
    pub interventions: &'a mut dyn Write,
    pub control: Option<&'a mut dyn Write>,
}

/// Replay `path` through `engine`. At the end of input the watermark moves to the newest event,
/// so silent users are rescored up to the last moment the file describes. Each step's
/// decisions are written by user id ([`decided`]), as [`replay_sharded`] writes them.
pub fn replay(
    path: &Path,
    max_event_bytes: usize,
    engine: &mut Engine,
    sink: ReplaySink<'_>,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let mut summary = ReplaySummary::default();
    let mut write_err: Option<std::io::Error> = None;
    let ReplaySink { interventions, mut control } = sink;
    let mut decided = Decided::default();
    let mut write = |decided: &mut Decided| {
        if decided.is_empty() || write_err.is_some() {
            return;
        }
        let control = control.as_mut().map(|w| &mut **w as &mut dyn Write);
        if let Err(e) = Decided::write_merged(&mut [decided], &mut *interventions, control) {
            write_err = Some(e);
        }
    };
    let mut valid = 0u64;
    let mut late = 0u64;
    let mut rejected = RejectTally::default();
    let lines = source::for_each_event_ahead(path, max_event_bytes, &mut rejected, |ev, ahead| {
        if let Some(next) = ahead.first() {
            engine.prefetch_user(&next.user_id);
        }
        let step = valid;
        valid += 1;
        if engine.ingest_decisions(&ev, &mut |d| decided.push(step, d)) == Ingested::Late {
            late += 1;
        }
        write(&mut decided);
    })?;
    engine.advance_watermark_decisions(engine.max_ts(), &mut |d| decided.push(decided::END_STEP, d));
    write(&mut decided);
    if let Some(e) = write_err {
        return Err(ReplayError::Write(e));
    }
    summary.lines = lines;
    summary.valid = valid;
    summary.late = late;
    summary.rejected = rejected;
    summary.users_tracked = engine.store().len();
    summary.counters = engine.counters.clone();
    summary.state_bytes = engine.store().heap_bytes();
    summary.interventions_by_tier = std::mem::take(&mut decided.interventions_by_tier);
    summary.control_by_tier = std::mem::take(&mut decided.control_by_tier);
    summary.elapsed = started.elapsed();
    Ok(summary)
}
