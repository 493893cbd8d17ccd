//! Backfill mode: a file through the full scoring path, interventions to JSONL.
//!
//! Lines are read in file order, exactly as a Kafka partition is: the engine's watermark (newest
//! event minus the allowed lateness) orders time, events older than it are counted as late, and
//! silent users are rescored as the file's clock moves.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::decision::Decision;
use crate::engine::{Engine, EngineCounters, Ingested};
use crate::source::{self, RejectTally, SourceError};

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
/// so silent users are rescored up to the last moment the file describes.
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
    let mut line = Vec::with_capacity(512);
    let mut emit = |d: &Decision<'_>| {
        let tally = if d.control { &mut summary.control_by_tier } else { &mut summary.interventions_by_tier };
        match tally.get_mut(d.tier) {
            Some(n) => *n += 1,
            None => {
                tally.insert(d.tier.to_string(), 1);
            }
        }
        let target: Option<&mut dyn Write> =
            if d.control { control.as_mut().map(|w| &mut **w as &mut dyn Write) } else { Some(&mut *interventions) };
        if let (Some(w), None) = (target, write_err.as_ref()) {
            line.clear();
            d.write_json(chrono::Utc::now().timestamp_millis(), &mut line);
            line.push(b'\n');
            if let Err(e) = w.write_all(&line) {
                write_err = Some(e);
            }
        }
    };
    let mut valid = 0u64;
    let mut late = 0u64;
    let mut rejected = RejectTally::default();
    let lines = source::for_each_event(path, max_event_bytes, &mut rejected, |ev| {
        valid += 1;
        if engine.ingest_decisions(&ev, &mut emit) == Ingested::Late {
            late += 1;
        }
    })?;
    engine.advance_watermark_decisions(engine.max_ts(), &mut emit);
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
    summary.elapsed = started.elapsed();
    Ok(summary)
}
