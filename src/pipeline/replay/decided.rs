//! Decisions held until their input step is over, then written in a canonical order.
//!
//! One step of a replay (an event, or the end of the input) can decide for many users: the
//! event's own user, and every user whose due time the advancing clock passes. An engine decides
//! those in its own order (its state index order), which depends on the history of its store.
//! Written by user id instead, each user's own decisions in the order they were made, the output
//! is the same however users are spread over engines: `replay --threads N` writes exactly what
//! one thread writes.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;

use crate::decision::Decision;

/// A step after every event: the clock moved to the newest event at the end of the input.
pub const END_STEP: u64 = u64::MAX;

#[derive(Debug, Clone)]
struct Rec {
    step: u64,
    control: bool,
    user: Range<usize>,
    line: Range<usize>,
}

/// Decisions as JSON lines, with what orders them.
#[derive(Debug, Default)]
pub struct Decided {
    bytes: Vec<u8>,
    recs: Vec<Rec>,
    /// Decisions per tier, treated and control.
    pub interventions_by_tier: BTreeMap<String, u64>,
    pub control_by_tier: BTreeMap<String, u64>,
}

impl Decided {
    pub fn push(&mut self, step: u64, d: &Decision<'_>) {
        let tally = if d.control { &mut self.control_by_tier } else { &mut self.interventions_by_tier };
        match tally.get_mut(d.tier) {
            Some(n) => *n += 1,
            None => {
                tally.insert(d.tier.to_string(), 1);
            }
        }
        let u = self.bytes.len();
        self.bytes.extend_from_slice(d.user_id.as_bytes());
        let l = self.bytes.len();
        d.write_json(chrono::Utc::now().timestamp_millis(), &mut self.bytes);
        self.bytes.push(b'\n');
        self.recs.push(Rec { step, control: d.control, user: u..l, line: l..self.bytes.len() });
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Write the held decisions of `parts` (each in the order its engine made them) by step,
    /// then user id, then the order made, and empty them. A user's decisions are all in one part.
    pub fn write_merged(
        parts: &mut [&mut Decided],
        interventions: &mut dyn Write,
        mut control: Option<&mut dyn Write>,
    ) -> std::io::Result<()> {
        let mut order: Vec<(usize, usize)> =
            parts.iter().enumerate().flat_map(|(p, d)| (0..d.recs.len()).map(move |i| (p, i))).collect();
        // Stable: equal keys (one user's decisions in one step) keep the order they were made.
        order.sort_by(|&(pa, a), &(pb, b)| {
            let (ra, rb) = (&parts[pa].recs[a], &parts[pb].recs[b]);
            ra.step.cmp(&rb.step).then_with(|| parts[pa].bytes[ra.user.clone()].cmp(&parts[pb].bytes[rb.user.clone()]))
        });
        for (p, i) in order {
            let r = &parts[p].recs[i];
            let line = &parts[p].bytes[r.line.clone()];
            if r.control {
                if let Some(w) = control.as_mut() {
                    w.write_all(line)?;
                }
            } else {
                interventions.write_all(line)?;
            }
        }
        for d in parts.iter_mut() {
            d.bytes.clear();
            d.recs.clear();
        }
        Ok(())
    }
}
