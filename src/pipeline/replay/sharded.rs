//! Replay on several cores: users spread over engines by a hash of their id, one thread each.
//!
//! Users are independent except through the clock: the watermark, the warm-up's start and which
//! events are late all follow every event of the file. So every engine sees every event's time:
//! it applies the events of its own users, and only moves its clock on the others
//! ([`Engine::observe_time`], the very clock step an applied event takes). Each user is then
//! decided at the same steps and with the same state as on one engine, and [`Decided`] writes
//! each step's decisions in an order that does not depend on which engine made them. The output
//! equals one thread's, line for line (apart from each record's `emitted_at`, the wall clock).
//!
//! A reader thread parses the file into batches shared by every engine; the calling thread
//! merges the engines' decisions batch by batch and writes them.

use std::borrow::Cow;
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use super::decided::{Decided, END_STEP};
use super::{replay, ReplayError, ReplaySink, ReplaySummary};
use crate::engine::{Engine, EngineCounters, Ingested};
use crate::event::ActivityEvent;
use crate::source::{self, RejectTally, SourceError};

/// Events per batch handed to the engines: large enough that handing over costs nothing per
/// event, small enough that the engines stay busy while the reader fills the next.
const BATCH: usize = 4096;
/// Batches in flight between the reader, each engine and the writer.
const AHEAD: usize = 4;

/// One event of a batch; its strings are in [`Batch::text`].
#[derive(Debug, Clone, Copy)]
struct Ev {
    user_end: u32,
    type_end: u32,
    ts: i64,
    amount: Option<f64>,
    shard: u32,
}

#[derive(Debug, Default)]
struct Batch {
    /// The step (index among valid events) of `evs[0]`.
    first_step: u64,
    text: String,
    evs: Vec<Ev>,
}

impl Batch {
    fn event(&self, i: usize) -> ActivityEvent<'_> {
        let start = if i == 0 { 0 } else { self.evs[i - 1].type_end as usize };
        let e = &self.evs[i];
        ActivityEvent {
            user_id: Cow::Borrowed(&self.text[start..e.user_end as usize]),
            event_type: Cow::Borrowed(&self.text[e.user_end as usize..e.type_end as usize]),
            ts: e.ts,
            amount: e.amount,
        }
    }
}

/// What the reader counted.
struct Read {
    lines: u64,
    valid: u64,
    rejected: RejectTally,
}

/// What an engine's thread returns at the end.
struct Done {
    late: u64,
    users: usize,
    state_bytes: usize,
    counters: EngineCounters,
}

/// Replay `path` with its users spread over `engines` (same model and config), one thread each.
/// The output is exactly [`replay`]'s with one engine. One engine: [`replay`] itself.
pub fn replay_sharded(
    path: &Path,
    max_event_bytes: usize,
    engines: &mut [Engine],
    sink: ReplaySink<'_>,
) -> Result<ReplaySummary, ReplayError> {
    if let [engine] = engines {
        return replay(path, max_event_bytes, engine, sink);
    }
    let started = Instant::now();
    let n = engines.len().max(1);
    let ReplaySink { interventions, mut control } = sink;
    let mut summary = ReplaySummary::default();
    let result = std::thread::scope(|scope| -> Result<(), ReplayError> {
        let mut to_engines = Vec::with_capacity(n);
        let mut from_engines = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for engine in engines.iter_mut() {
            let (tx, rx) = sync_channel::<Arc<Batch>>(AHEAD);
            let (out_tx, out_rx) = sync_channel::<Decided>(AHEAD);
            let shard = handles.len() as u32;
            handles.push(scope.spawn(move || run_engine(engine, shard, rx, out_tx)));
            to_engines.push(tx);
            from_engines.push(out_rx);
        }
        let reader = scope.spawn(move || read(path, max_event_bytes, n as u32, to_engines));
        // Every engine sends one `Decided` per batch and one for the end, in lockstep.
        let mut parts: Vec<Decided> = Vec::with_capacity(n);
        let mut write_err = None;
        'batches: loop {
            parts.clear();
            for rx in &from_engines {
                match rx.recv() {
                    Ok(d) => parts.push(d),
                    // An engine is done (or the reader failed and they all stopped).
                    Err(_) => break 'batches,
                }
            }
            for d in &parts {
                summary_tallies(&mut summary, d);
            }
            if write_err.is_none() {
                let mut refs: Vec<&mut Decided> = parts.iter_mut().collect();
                let control = control.as_mut().map(|w| &mut **w as &mut dyn Write);
                if let Err(e) = Decided::write_merged(&mut refs, &mut *interventions, control) {
                    write_err = Some(e);
                }
            }
        }
        // Closing the receivers stops any engine still sending, then the reader.
        drop(from_engines);
        let read = reader.join().map_err(|_| panicked("reader"))??;
        for h in handles {
            let done = h.join().map_err(|_| panicked("engine"))?;
            summary.late += done.late;
            summary.users_tracked += done.users;
            summary.state_bytes += done.state_bytes;
            add_counters(&mut summary.counters, &done.counters);
        }
        summary.lines = read.lines;
        summary.valid = read.valid;
        summary.rejected = read.rejected;
        match write_err {
            Some(e) => Err(ReplayError::Write(e)),
            None => Ok(()),
        }
    });
    result?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

fn panicked(what: &str) -> ReplayError {
    ReplayError::Write(std::io::Error::other(format!("a replay {what} thread panicked")))
}

fn summary_tallies(summary: &mut ReplaySummary, d: &Decided) {
    for (mine, theirs) in [
        (&mut summary.interventions_by_tier, &d.interventions_by_tier),
        (&mut summary.control_by_tier, &d.control_by_tier),
    ] {
        for (k, v) in theirs {
            *mine.entry(k.clone()).or_insert(0) += v;
        }
    }
}

/// Parse the file into batches and hand each to every engine.
fn read(
    path: &Path,
    max_event_bytes: usize,
    shards: u32,
    to: Vec<SyncSender<Arc<Batch>>>,
) -> Result<Read, SourceError> {
    let hasher = ahash::RandomState::with_seeds(0x2c, 0x91, 0x5e, 0x07);
    let mut rejected = RejectTally::default();
    let mut batch = Batch::default();
    let mut valid = 0u64;
    let mut closed = false;
    let send = |batch: &mut Batch, closed: &mut bool| {
        let b = Arc::new(std::mem::take(batch));
        batch.first_step = b.first_step + b.evs.len() as u64;
        for tx in &to {
            // A closed engine means the writer stopped: nothing more is wanted.
            if tx.send(b.clone()).is_err() {
                *closed = true;
            }
        }
    };
    let lines = source::for_each_event(path, max_event_bytes, &mut rejected, |ev| {
        if closed {
            return;
        }
        valid += 1;
        batch.text.push_str(&ev.user_id);
        let user_end = batch.text.len() as u32;
        batch.text.push_str(&ev.event_type);
        let shard = (hasher.hash_one(&*ev.user_id) % u64::from(shards)) as u32;
        batch.evs.push(Ev { user_end, type_end: batch.text.len() as u32, ts: ev.ts, amount: ev.amount, shard });
        // Offsets are u32: a batch's text stays far below 4 GiB (events are capped in size).
        if batch.evs.len() == BATCH || batch.text.len() > (1 << 30) {
            send(&mut batch, &mut closed);
        }
    })?;
    if !batch.evs.is_empty() {
        send(&mut batch, &mut closed);
    }
    Ok(Read { lines, valid, rejected })
}

/// One engine's thread: apply its users' events, move its clock on everyone's, and send each
/// batch's decisions; at the end of the input, the final clock step's.
fn run_engine(engine: &mut Engine, shard: u32, rx: Receiver<Arc<Batch>>, out: SyncSender<Decided>) -> Done {
    let mut late = 0;
    let mut decided = Decided::default();
    for batch in rx {
        for (i, e) in batch.evs.iter().enumerate() {
            let step = batch.first_step + i as u64;
            let mut emit = |d: &crate::decision::Decision<'_>| decided.push(step, d);
            if e.shard == shard {
                // The engine's next event, asked for while this one is handled (Engine::prefetch_user).
                if let Some(k) = batch.evs[i + 1..].iter().position(|e| e.shard == shard) {
                    engine.prefetch_user(&batch.event(i + 1 + k).user_id);
                }
                if engine.ingest_decisions(&batch.event(i), &mut emit) == Ingested::Late {
                    late += 1;
                }
            } else {
                engine.observe_time(e.ts, &mut emit);
            }
        }
        let full = std::mem::take(&mut decided);
        if out.send(full).is_err() {
            return done(engine, late);
        }
    }
    engine.advance_watermark_decisions(engine.max_ts(), &mut |d| decided.push(END_STEP, d));
    let _ = out.send(decided);
    done(engine, late)
}

fn done(engine: &Engine, late: u64) -> Done {
    Done {
        late,
        users: engine.store().len(),
        state_bytes: engine.store().heap_bytes(),
        counters: engine.counters.clone(),
    }
}

/// Sum one engine's counters into another's; outcome cells by their key.
fn add_counters(to: &mut EngineCounters, from: &EngineCounters) {
    to.events_applied += from.events_applied;
    to.events_late += from.events_late;
    to.events_out_of_order += from.events_out_of_order;
    to.users_created += from.users_created;
    to.users_evicted += from.users_evicted;
    to.scored_on_event += from.scored_on_event;
    to.scored_on_timer += from.scored_on_timer;
    to.suppressed_cooldown += from.suppressed_cooldown;
    to.suppressed_already_sent += from.suppressed_already_sent;
    to.interventions += from.interventions;
    to.control += from.control;
    to.held_warm_up += from.held_warm_up;
    to.suppressed_value += from.suppressed_value;
    for (a, b) in to.score_buckets.iter_mut().zip(&from.score_buckets) {
        *a += b;
    }
    for (a, b) in to.shadow_buckets.iter_mut().zip(&from.shadow_buckets) {
        *a += b;
    }
    to.shadow_agree += from.shadow_agree;
    to.shadow_disagree += from.shadow_disagree;
    for cell in &from.outcomes {
        match to.outcomes.iter_mut().find(|c| c.same_key(cell)) {
            Some(c) => {
                c.retained += cell.retained;
                c.churned += cell.churned;
                c.spend += cell.spend;
            }
            None => to.outcomes.push(cell.clone()),
        }
    }
}
