//! Outcomes: what each intervention and control record's user did in the horizon after it.
//!
//! `retained` if the user had any event in `(t, t + horizon]`, where `t` is the record's
//! `event_time`; `churned` otherwise. A record whose horizon ends after the last event of the
//! log is censored: its outcome is not known yet, and it is left out (and counted).

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::event::DEFAULT_MAX_EVENT_BYTES;
use crate::intervention::Intervention;
use crate::policy::Stage;
use crate::source::{self, RejectTally};
use crate::time::{parse_rfc3339, Millis, Span};

/// Every user's events as `(ts, amount)`, sorted by time.
pub struct UserEvents {
    by_user: HashMap<String, Vec<(Millis, f64)>>,
    pub first_ts: Millis,
    pub last_ts: Millis,
    pub events: u64,
    pub rejected: RejectTally,
}

impl UserEvents {
    pub fn load(path: &Path) -> Result<UserEvents> {
        let mut by_user: HashMap<String, Vec<(Millis, f64)>> = HashMap::new();
        let mut rejected = RejectTally::default();
        let (mut first_ts, mut last_ts, mut events) = (Millis::MAX, Millis::MIN, 0u64);
        source::for_each_event(path, DEFAULT_MAX_EVENT_BYTES, &mut rejected, |ev| {
            first_ts = first_ts.min(ev.ts);
            last_ts = last_ts.max(ev.ts);
            events += 1;
            let amount = ev.amount.unwrap_or(0.0);
            match by_user.get_mut(ev.user_id.as_ref()) {
                Some(v) => v.push((ev.ts, amount)),
                None => {
                    by_user.insert(ev.user_id.to_string(), vec![(ev.ts, amount)]);
                }
            }
        })?;
        if events == 0 {
            bail!("no valid events in {}", path.display());
        }
        for v in by_user.values_mut() {
            v.sort_by_key(|e| e.0);
        }
        Ok(UserEvents { by_user, first_ts, last_ts, events, rejected })
    }

    /// Builds from in-memory events (tests, the simulator's closed loop).
    pub fn from_events<'a>(events: impl IntoIterator<Item = (&'a str, Millis, f64)>) -> UserEvents {
        let mut by_user: HashMap<String, Vec<(Millis, f64)>> = HashMap::new();
        let (mut first_ts, mut last_ts, mut n) = (Millis::MAX, Millis::MIN, 0u64);
        for (u, ts, amount) in events {
            first_ts = first_ts.min(ts);
            last_ts = last_ts.max(ts);
            n += 1;
            by_user.entry(u.to_string()).or_default().push((ts, amount));
        }
        for v in by_user.values_mut() {
            v.sort_by_key(|e| e.0);
        }
        UserEvents { by_user, first_ts, last_ts, events: n, rejected: RejectTally::default() }
    }

    /// Number of events and their total amount in `(from, to]`.
    pub fn window(&self, user: &str, from: Millis, to: Millis) -> (usize, f64) {
        let Some(v) = self.by_user.get(user) else { return (0, 0.0) };
        let start = v.partition_point(|e| e.0 <= from);
        let end = v.partition_point(|e| e.0 <= to);
        (end - start, v[start..end].iter().map(|e| e.1).sum())
    }
}

/// One record with its outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub user_id: String,
    pub tier: String,
    pub action: String,
    pub stage: Stage,
    pub control: bool,
    pub event_time: Millis,
    /// Any event in `(t, t + horizon]`.
    pub retained: bool,
    /// Sum of `amount` in `(t, t + horizon]`.
    pub spend: f64,
    /// Sum of `amount` in `(t - value_window, t]`: the default value of keeping the user.
    pub trailing_spend: f64,
}

/// Outcomes of a set of records, with what was left out.
#[derive(Debug, Default)]
pub struct Outcomes {
    pub records: Vec<Outcome>,
    /// Records whose horizon ends after the last event of the log.
    pub censored_treated: u64,
    pub censored_control: u64,
    /// Records whose trailing value window starts before the first event of the log.
    pub trailing_truncated: u64,
}

/// Reads intervention records (JSON lines, as `replay --out` / `--control-out` write them).
pub fn load_records(path: &Path) -> Result<Vec<Intervention>> {
    let reader =
        std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: Intervention = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not an intervention record", path.display(), i + 1))?;
        out.push(rec);
    }
    Ok(out)
}

/// Decides each record's outcome against the event log.
pub fn decide(events: &UserEvents, records: &[Intervention], horizon: Span, value_window: Span) -> Result<Outcomes> {
    let mut o = Outcomes::default();
    for r in records {
        let t = parse_rfc3339(&r.event_time)
            .with_context(|| format!("record {}: bad event_time {:?}", r.intervention_id, r.event_time))?;
        if t + horizon.ms() > events.last_ts {
            if r.control {
                o.censored_control += 1;
            } else {
                o.censored_treated += 1;
            }
            continue;
        }
        if t - value_window.ms() < events.first_ts {
            o.trailing_truncated += 1;
        }
        let (n, spend) = events.window(&r.user_id, t, t + horizon.ms());
        let (_, trailing_spend) = events.window(&r.user_id, t - value_window.ms(), t);
        o.records.push(Outcome {
            user_id: r.user_id.clone(),
            tier: r.tier.clone(),
            action: r.action.clone(),
            stage: r.stage,
            control: r.control,
            event_time: t,
            retained: n > 0,
            spend,
            trailing_spend,
        });
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::DAY_MS;

    fn rec(user: &str, t: Millis, control: bool) -> Intervention {
        Intervention {
            schema: crate::intervention::SCHEMA.into(),
            intervention_id: "x".into(),
            user_id: user.into(),
            score: 0.9,
            threshold: 0.7,
            tier: "high".into(),
            stage: Stage::Dormant,
            action: "coupon".into(),
            reasons: vec![],
            model_version: "m".into(),
            event_time: crate::time::format_rfc3339_ms(t),
            watermark: crate::time::format_rfc3339_ms(t),
            trigger: crate::intervention::Trigger::Silence,
            emitted_at: crate::time::format_rfc3339_ms(t),
            control,
        }
    }

    #[test]
    fn horizon_is_half_open_and_late_records_are_censored() {
        let d = DAY_MS;
        let ev = UserEvents::from_events([
            ("a", 0, 5.0),
            ("a", 10 * d, 2.0),
            ("b", 0, 1.0),
            ("b", 5 * d, 0.0), // exactly at t: not in the horizon
            ("c", 100 * d, 0.0),
        ]);
        let recs = [rec("a", 5 * d, false), rec("b", 5 * d, true), rec("a", 80 * d, false)];
        let o = decide(&ev, &recs, Span::days(30), Span::days(30)).unwrap();
        assert_eq!(o.records.len(), 2);
        assert!(o.records[0].retained && o.records[0].spend == 2.0 && o.records[0].trailing_spend == 5.0);
        assert!(!o.records[1].retained && o.records[1].control);
        assert_eq!((o.censored_treated, o.censored_control), (1, 0));
        assert_eq!(o.trailing_truncated, 2);
    }
}
