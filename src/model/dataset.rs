//! Labelled training rows: the event log replayed through the feature engine up to each cutoff.
//!
//! The feature vector of a row comes from [`crate::features`] exactly as the service computes it;
//! only the label is looked up in the future of the cutoff.

use std::collections::HashMap;
use std::path::Path;

use crate::event::DEFAULT_MAX_EVENT_BYTES;
use crate::features::store::UserIdx;
use crate::features::{FeatureSpec, FeatureStore, Layout};
use crate::source::{self, RejectTally, SourceError};
use crate::time::{format_rfc3339_ms, Millis, Span, DAY_MS};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Every line was rejected (the breakdown by reason and the first examples follow), or the
    /// file has no lines at all.
    #[error("no valid events in {path}: {why}")]
    Empty { path: String, why: String },
    #[error("cutoff {cutoff} + horizon {horizon} ends at {ends}, after the end of the data {data_end} ({how}); labels would be censored. Use an earlier --cutoff or a shorter --horizon, or --data-end if the data covers more")]
    Censored { cutoff: String, horizon: String, ends: String, data_end: String, how: String },
    #[error("--churn-event {name:?}: no event of this type in {path} (its event types: {known})")]
    UnknownChurnEvent { name: String, path: String, known: String },
    #[error("--labels {path}: only {labelled} of {population} population members ({share:.1}%) have a label, below --min-label-match {min} ({unlabelled} without a label, {unmatched} label row(s) matched no one). Check that the user ids (and cutoffs) in the labels file are those of the events")]
    LabelsMismatch {
        path: String,
        labelled: usize,
        population: usize,
        share: f64,
        min: f64,
        unlabelled: usize,
        unmatched: usize,
    },
    #[error("cutoff {cutoff} is before the first event ({first})")]
    BeforeData { cutoff: String, first: String },
    #[error("labels file {path}: {msg}")]
    Labels { path: String, msg: String },
    #[error("no rows: the population at the cutoff(s) is empty (check --cutoff and --active-within)")]
    NoRows,
}

/// One event, compacted: user and type interned.
#[derive(Debug, Clone, Copy)]
struct Rec {
    ts: Millis,
    user: u32,
    ty: u16,
    amount: f64,
}

/// A whole event log in memory, sorted by event time (stable: file order breaks ties).
pub struct EventLog {
    recs: Vec<Rec>,
    users: Vec<String>,
    types: Vec<String>,
    type_counts: Vec<u64>,
    pub rejected: RejectTally,
    pub path: String,
}

impl EventLog {
    pub fn load(path: &Path) -> Result<EventLog, DatasetError> {
        // Looked up once per event: ahash, not std's SipHash (the ids come from the user's own
        // file, and only indices in first-seen order leave this function, never a hash order).
        let mut user_ix: HashMap<String, u32, ahash::RandomState> = HashMap::default();
        let mut type_ix: HashMap<String, u16, ahash::RandomState> = HashMap::default();
        let (mut users, mut types, mut type_counts) = (Vec::new(), Vec::new(), Vec::new());
        let mut recs = Vec::new();
        let mut rejected = RejectTally::default();
        source::for_each_event(path, DEFAULT_MAX_EVENT_BYTES, &mut rejected, |ev| {
            let user = match user_ix.get(ev.user_id.as_ref()) {
                Some(&u) => u,
                None => {
                    let u = users.len() as u32;
                    users.push(ev.user_id.to_string());
                    user_ix.insert(ev.user_id.to_string(), u);
                    u
                }
            };
            let ty = match type_ix.get(ev.event_type.as_ref()) {
                Some(&t) => t,
                None => {
                    let t = types.len() as u16;
                    types.push(ev.event_type.to_string());
                    type_counts.push(0);
                    type_ix.insert(ev.event_type.to_string(), t);
                    t
                }
            };
            type_counts[ty as usize] += 1;
            recs.push(Rec { ts: ev.ts, user, ty, amount: ev.amount.unwrap_or(0.0) });
        })?;
        if recs.is_empty() {
            return Err(DatasetError::Empty { path: path.display().to_string(), why: no_events_why(&rejected) });
        }
        recs.sort_by_key(|r| r.ts);
        Ok(EventLog { recs, users, types, type_counts, rejected, path: path.display().to_string() })
    }

    pub fn len(&self) -> usize {
        self.recs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    pub fn first_ts(&self) -> Millis {
        self.recs.first().map_or(0, |r| r.ts)
    }

    pub fn last_ts(&self) -> Millis {
        self.recs.last().map_or(0, |r| r.ts)
    }

    /// Distinct users in the log.
    pub fn users(&self) -> usize {
        self.users.len()
    }

    pub fn user_id(&self, u: u32) -> &str {
        &self.users[u as usize]
    }

    /// Every event in event-time order (file order breaks ties): user index, event type,
    /// timestamp and amount (0 when absent).
    pub fn events(&self) -> impl Iterator<Item = (u32, &str, Millis, f64)> + '_ {
        self.recs.iter().map(|r| (r.user, self.types[r.ty as usize].as_str(), r.ts, r.amount))
    }

    /// Event types with their counts, for deriving a spec from the data.
    pub fn type_counts(&self) -> Vec<(String, u64)> {
        self.types.iter().cloned().zip(self.type_counts.iter().copied()).collect()
    }
}

/// The feature store's index of each of a log's users, for replaying the log through a store
/// that evicts no one. The log has already interned its users as dense indices; the store's own
/// lookup would hash the id string and compare it on every event instead.
pub struct StoreIndex(Vec<UserIdx>);

impl StoreIndex {
    const NONE: UserIdx = UserIdx::MAX;

    pub fn new(log: &EventLog) -> StoreIndex {
        StoreIndex(vec![Self::NONE; log.users()])
    }

    /// The store index of log user `user`, created at `ts` on first sight (then `true`).
    #[inline]
    pub fn get_or_insert(
        &mut self,
        store: &mut FeatureStore,
        log: &EventLog,
        user: u32,
        ts: Millis,
    ) -> (UserIdx, bool) {
        match self.0[user as usize] {
            Self::NONE => {
                let (idx, created) = store.get_or_insert(log.user_id(user), ts);
                self.0[user as usize] = idx;
                (idx, created)
            }
            idx => (idx, false),
        }
    }
}

/// Why a file gave no valid events: its rejections (by reason, with the first examples by line
/// number and reason, never the content), or that it has no lines.
pub fn no_events_why(rejected: &RejectTally) -> String {
    if rejected.total() == 0 {
        "the file has no event lines".to_string()
    } else {
        rejected.report()
    }
}

/// Where labels come from.
#[derive(Debug, Clone)]
pub enum LabelSource {
    /// Churned = no event at all in (cutoff, cutoff + horizon].
    Silence,
    /// Churned = an event of this type in (cutoff, cutoff + horizon] (subscription cancel).
    ChurnEvent(String),
    /// Explicit labels: (user, cutoff or None for any cutoff) -> churned.
    Explicit(ExplicitLabels),
}

impl LabelSource {
    pub fn describe(&self) -> String {
        match self {
            LabelSource::Silence => "silence: no event in (cutoff, cutoff + horizon]".into(),
            LabelSource::ChurnEvent(t) => format!("churn event: {t:?} in (cutoff, cutoff + horizon]"),
            LabelSource::Explicit(l) => format!("explicit labels from {}", l.path),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ExplicitLabels {
    pub path: String,
    /// user -> (row number, cutoff or None for any cutoff, churned)
    by_user: HashMap<String, Vec<(usize, Option<Millis>, bool)>>,
    rows: usize,
}

impl ExplicitLabels {
    /// CSV `user_id,churned[,cutoff]`; a header row is allowed; churned is 1/0/true/false.
    pub fn load(path: &Path) -> Result<ExplicitLabels, DatasetError> {
        let p = path.display().to_string();
        let err = |msg: String| DatasetError::Labels { path: p.clone(), msg };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut by_user: HashMap<String, Vec<(usize, Option<Millis>, bool)>> = HashMap::new();
        let mut rows = 0;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || (i == 0 && line.starts_with("user_id")) {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            if cols.len() < 2 || cols.len() > 3 {
                return Err(err(format!("line {}: expected user_id,churned[,cutoff]", i + 1)));
            }
            let churned = match cols[1] {
                "1" | "true" => true,
                "0" | "false" => false,
                other => return Err(err(format!("line {}: churned must be 1/0/true/false, got {other:?}", i + 1))),
            };
            let cutoff = match cols.get(2).filter(|c| !c.is_empty()) {
                Some(c) => Some(crate::time::parse_timestamp(c).map_err(|e| err(format!("line {}: {e}", i + 1)))?),
                None => None,
            };
            by_user.entry(cols[0].to_string()).or_default().push((rows, cutoff, churned));
            rows += 1;
        }
        Ok(ExplicitLabels { path: p, by_user, rows })
    }

    /// Label rows in the file (header and blank lines not counted).
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The label of a user at a cutoff, and the file row it came from.
    fn label(&self, user: &str, cutoff: Millis) -> Option<(usize, bool)> {
        let rows = self.by_user.get(user)?;
        rows.iter()
            .find(|(_, c, _)| *c == Some(cutoff))
            .or_else(|| rows.iter().find(|(_, c, _)| c.is_none()))
            .map(|(row, _, l)| (*row, *l))
    }
}

/// Who is scored at a cutoff, and how they are labelled.
#[derive(Debug, Clone)]
pub struct Labelling {
    pub cutoffs: Vec<Millis>,
    pub horizon: Span,
    pub active_within: Option<Span>,
    pub source: LabelSource,
}

/// Options of [`build_with`] beyond the labelling itself.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// The data covers event time up to this instant. None: the end of the UTC day of the last
    /// event (the following midnight).
    pub data_end: Option<Millis>,
    /// With explicit labels, the least share of population members that must have a label.
    pub min_label_match: f64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions { data_end: None, min_label_match: 0.5 }
    }
}

/// Until when the data is taken to cover event time, and how that was decided.
pub fn data_end(log: &EventLog, given: Option<Millis>) -> (Millis, String) {
    match given {
        Some(t) => (t, "set by --data-end".to_string()),
        None => {
            // Midnight after the last event's day: a label window (cutoff, cutoff + horizon]
            // ending exactly there is covered (the instant itself belongs to the next day).
            let end = (crate::time::day_of(log.last_ts()) + 1) * DAY_MS;
            (
                end,
                format!(
                    "the end of the UTC day of the last event, {}; set it with --data-end",
                    format_rfc3339_ms(log.last_ts())
                ),
            )
        }
    }
}

/// Rows of raw (untransformed) feature vectors with labels.
pub struct Dataset {
    pub n_features: usize,
    /// Row-major, `rows * n_features`.
    pub x: Vec<f64>,
    pub y: Vec<bool>,
    /// The user of each row (index into the log's users), to split by user.
    pub user: Vec<u32>,
    pub cutoff: Vec<Millis>,
    /// Population members left out for lack of an explicit label.
    pub unlabelled: usize,
    /// Explicit label rows that matched no population member at any cutoff.
    pub labels_unmatched: usize,
    /// Population members over all cutoffs (rows before unlabelled ones are left out).
    pub population: usize,
    /// The end of the data the censoring check used, and how it was decided.
    pub data_end: (Millis, String),
}

impl Dataset {
    pub fn rows(&self) -> usize {
        self.y.len()
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.x[i * self.n_features..(i + 1) * self.n_features]
    }

    pub fn churn_rate(&self) -> f64 {
        if self.y.is_empty() {
            return f64::NAN;
        }
        self.y.iter().filter(|y| **y).count() as f64 / self.y.len() as f64
    }

    pub fn distinct_users(&self) -> usize {
        let mut u = self.user.clone();
        u.sort_unstable();
        u.dedup();
        u.len()
    }
}

/// Replay the log through the feature engine and take a labelled row per population member at
/// each cutoff.
pub fn build(log: &EventLog, spec: &FeatureSpec, lab: &Labelling) -> Result<Dataset, DatasetError> {
    build_with(log, spec, lab, &BuildOptions::default())
}

/// [`build`] with a given end of data and share of labels that must match.
pub fn build_with(
    log: &EventLog,
    spec: &FeatureSpec,
    lab: &Labelling,
    opt: &BuildOptions,
) -> Result<Dataset, DatasetError> {
    let mut cutoffs = lab.cutoffs.clone();
    cutoffs.sort_unstable();
    cutoffs.dedup();
    let h = lab.horizon.ms();
    let (end, how) = data_end(log, opt.data_end);
    let explicit = matches!(lab.source, LabelSource::Explicit(_));
    for &c in &cutoffs {
        // Explicit labels say nothing about the horizon, so they cannot be censored by it.
        if !explicit && c + h > end {
            return Err(DatasetError::Censored {
                cutoff: format_rfc3339_ms(c),
                horizon: lab.horizon.to_string(),
                ends: format_rfc3339_ms(c + h),
                data_end: format_rfc3339_ms(end),
                how,
            });
        }
        if c < log.first_ts() {
            return Err(DatasetError::BeforeData {
                cutoff: format_rfc3339_ms(c),
                first: format_rfc3339_ms(log.first_ts()),
            });
        }
    }
    let churn_type = match &lab.source {
        LabelSource::ChurnEvent(t) => match log.types.iter().position(|x| x == t) {
            Some(i) => Some(Some(i as u16)),
            None => {
                let mut known = log.type_counts();
                known.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                let mut list: Vec<String> = known.iter().take(12).map(|(t, n)| format!("{t:?} ({n})")).collect();
                if known.len() > 12 {
                    list.push(format!("and {} more", known.len() - 12));
                }
                return Err(DatasetError::UnknownChurnEvent {
                    name: t.clone(),
                    path: log.path.clone(),
                    known: list.join(", "),
                });
            }
        },
        _ => None,
    };
    let type_map: Vec<usize> = log.types.iter().map(|t| spec.type_index(t)).collect();
    // The return gap only feeds lifecycle stages, never a feature.
    let mut store = FeatureStore::new(Layout::new(spec, 30 * DAY_MS));
    let p = store.layout().n_features();
    // Per cutoff: the rows taken (row index, log user) and which users showed the label event.
    struct Snap {
        cutoff: Millis,
        first_row: usize,
        seen: Vec<bool>,
    }
    let mut snaps: Vec<Snap> = Vec::new();
    let (mut x, mut row_user, mut row_cutoff) = (Vec::new(), Vec::new(), Vec::new());
    let mut store_to_log: Vec<u32> = Vec::new();
    let mut index = StoreIndex::new(log);
    let mut next = 0;
    let mut buf = vec![0.0; p];
    let mut snapshot = |c: Millis,
                        store: &FeatureStore,
                        store_to_log: &[u32],
                        x: &mut Vec<f64>,
                        ru: &mut Vec<u32>,
                        rc: &mut Vec<Millis>| {
        let first_row = ru.len();
        let mut idxs: Vec<u32> = store.indices().collect();
        idxs.sort_unstable();
        for i in idxs {
            let u = store.user(i);
            if let Some(aw) = lab.active_within {
                if u.last_ts() <= c - aw.ms() {
                    continue;
                }
            }
            store.vector_at(i, c, &mut buf);
            x.extend_from_slice(&buf);
            ru.push(store_to_log[i as usize]);
            rc.push(c);
        }
        Snap { cutoff: c, first_row, seen: vec![false; log.users.len()] }
    };
    for r in &log.recs {
        while next < cutoffs.len() && r.ts > cutoffs[next] {
            snaps.push(snapshot(cutoffs[next], &store, &store_to_log, &mut x, &mut row_user, &mut row_cutoff));
            next += 1;
        }
        for s in &mut snaps {
            let counts = match churn_type {
                None => true,
                Some(ct) => Some(r.ty) == ct,
            };
            if counts && r.ts > s.cutoff && r.ts <= s.cutoff + h {
                s.seen[r.user as usize] = true;
            }
        }
        let (idx, created) = index.get_or_insert(&mut store, log, r.user, r.ts);
        if created {
            if store_to_log.len() <= idx as usize {
                store_to_log.resize(idx as usize + 1, 0);
            }
            store_to_log[idx as usize] = r.user;
        }
        store.apply(idx, r.ts, type_map[r.ty as usize], r.amount);
    }
    // Cutoffs at or after the last event (the data may extend past it, or labels are explicit).
    while next < cutoffs.len() {
        snaps.push(snapshot(cutoffs[next], &store, &store_to_log, &mut x, &mut row_user, &mut row_cutoff));
        next += 1;
    }
    let mut y = Vec::with_capacity(row_user.len());
    let mut keep = Vec::with_capacity(row_user.len());
    let mut unlabelled = 0;
    let mut label_used = match &lab.source {
        LabelSource::Explicit(l) => vec![false; l.len()],
        _ => Vec::new(),
    };
    for (si, s) in snaps.iter().enumerate() {
        let end = snaps.get(si + 1).map_or(row_user.len(), |n| n.first_row);
        for (row, &user) in row_user.iter().enumerate().take(end).skip(s.first_row) {
            let label = match &lab.source {
                LabelSource::Silence => Some(!s.seen[user as usize]),
                LabelSource::ChurnEvent(_) => Some(s.seen[user as usize]),
                LabelSource::Explicit(l) => l.label(log.user_id(user), s.cutoff).map(|(row, label)| {
                    label_used[row] = true;
                    label
                }),
            };
            match label {
                Some(l) => {
                    y.push(l);
                    keep.push(row);
                }
                None => unlabelled += 1,
            }
        }
    }
    let population = row_user.len();
    let labels_unmatched = label_used.iter().filter(|u| !**u).count();
    if population == 0 {
        return Err(DatasetError::NoRows);
    }
    if let LabelSource::Explicit(l) = &lab.source {
        let share = keep.len() as f64 / population as f64;
        if share < opt.min_label_match || keep.is_empty() {
            return Err(DatasetError::LabelsMismatch {
                path: l.path.clone(),
                labelled: keep.len(),
                population,
                share: 100.0 * share,
                min: opt.min_label_match,
                unlabelled,
                unmatched: labels_unmatched,
            });
        }
    }
    let (x, user, cutoff) = if keep.len() == row_user.len() {
        (x, row_user, row_cutoff)
    } else {
        let mut nx = Vec::with_capacity(keep.len() * p);
        for &r in &keep {
            nx.extend_from_slice(&x[r * p..(r + 1) * p]);
        }
        (nx, keep.iter().map(|&r| row_user[r]).collect(), keep.iter().map(|&r| row_cutoff[r]).collect())
    };
    Ok(Dataset { n_features: p, x, y, user, cutoff, unlabelled, labels_unmatched, population, data_end: (end, how) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached index is the one the store's own lookup by id gives, and a user is created
    /// once, at their first event.
    #[test]
    fn store_index_agrees_with_the_stores_lookup_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ev.jsonl");
        let line = |u: &str, day: u32| {
            format!("{{\"user_id\":\"{u}\",\"event_type\":\"login\",\"ts\":\"2026-01-{day:02}T00:00:00Z\"}}\n")
        };
        let text: String =
            [("b", 1), ("a", 2), ("b", 3), ("c", 4), ("a", 5)].iter().map(|(u, d)| line(u, *d)).collect();
        std::fs::write(&path, text).unwrap();
        let log = EventLog::load(&path).unwrap();
        let spec = FeatureSpec::default();
        let (mut cached, mut direct) =
            (FeatureStore::new(Layout::new(&spec, DAY_MS)), FeatureStore::new(Layout::new(&spec, DAY_MS)));
        let mut index = StoreIndex::new(&log);
        let mut created = Vec::new();
        for (user, _, ts, _) in log.events() {
            let got = index.get_or_insert(&mut cached, &log, user, ts);
            assert_eq!(got, direct.get_or_insert(log.user_id(user), ts), "{}", log.user_id(user));
            if got.1 {
                created.push(cached.user_id(got.0).to_string());
            }
        }
        assert_eq!(created, ["b", "a", "c"]);
    }
}
