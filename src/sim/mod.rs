//! Deterministic synthetic activity logs with known churn ground truth.
//!
//! The simulator produces the kind of event stream churnguard consumes in production (logins,
//! page views, purchases, support tickets, payment failures, subscriptions, cancellations,
//! shares) together with a per-user ground-truth table, so that models can be trained and
//! evaluated, and the pipeline tested and benchmarked, without real customer data.
//!
//! # Generative model
//!
//! Time runs over `days` whole UTC days from `start_ms`; every emitted event lies in
//! `[start_ms, start_ms + days * DAY_MS)`. Each user is simulated independently, one day at a
//! time, from a ChaCha8 stream keyed by `(seed, user index)`, so output is a pure function of
//! the config. User ids are `u0000001 ..= u{users}` (zero-padded to at least seven digits).
//!
//! **Population.** About 35% of users form an existing base: they signed up 30 days to about
//! four years before `start_ms` (tenure 30 + exponential with mean 400 days; their earlier
//! history is not emitted) and are active from day 0. The rest sign up uniformly over the
//! period, so daily volume grows through the window (the last 30 days carry about twice the
//! events of the first 30); a new user's first event is a `login` at `signup_ts`. Each user
//! lives in a time zone between UTC-8 and UTC+8 that shifts their intra-day profile.
//!
//! **Segments** are fixed per user and set activity, event mix, weekend behaviour and churn
//! propensity (rates per session unless stated):
//!
//! | segment      | share | median sessions/day | page views | purchase | share | weekend | baseline hazard/day |
//! |--------------|-------|---------------------|------------|----------|-------|---------|---------------------|
//! | `casual`     | 45%   | 0.045               | 1.3        | 3%       | 2%    | x1.40   | 1/160               |
//! | `regular`    | 30%   | 0.13                | 1.8        | 7%       | 5%    | x0.85   | 1/300               |
//! | `power`      | 8%    | 0.38                | 2.5        | 12%      | 12%   | x0.75   | 1/650               |
//! | `subscriber` | 17%   | 0.14                | 2.0        | 4%       | 4%    | x1.15   | 1/360               |
//!
//! A user's own session rate is the segment median times a lognormal factor (sigma 0.9), so
//! activity is heavy-tailed. Sessions per day are Poisson with a gamma daily multiplier (shape 2,
//! mean 1) for over-dispersion, times the weekend factor, times a new-user "honeymoon" boost
//! `1 + 1.5 exp(-tenure_days / 5)`. A session starts at a local hour drawn from a weekday or
//! weekend profile (morning ramp, lunch bump, evening peak; weekends start later), opens with a
//! `login` (85%, always for a user's first session), continues with a geometric number of
//! `page_view`s seconds to minutes apart, and may add a `purchase` (lognormal amount around a
//! per-user spend level), a `share_content` and, rarely, a `support_ticket`. A user emits at most
//! 200 events per day.
//!
//! **Subscriptions.** Existing subscriber-segment users are subscribed; new ones `subscribe`
//! (amount = plan price 9.99, 14.99 or 29.99) in their first session with probability 70% or
//! later at about 6% per session; other segments convert rarely. Every 30 days a renewal is
//! charged, silently unless it bounces (`payment_failed`). Healthy subscribers occasionally
//! `cancel` and stay on as free users, and may re-subscribe (noise).
//!
//! **Friction.** A latent per-user unhappiness `z ~ N(0, 1)` scales baseline support-ticket and
//! payment-failure rates by `exp(0.7 z)` and the churn hazard by `exp(0.6 z)`, so a history of
//! friction is a weak, noisy prior on churn.
//!
//! **Lifecycle.** The daily hazard of starting to churn is the segment baseline, times a
//! per-user lognormal factor (sigma 0.5), times `exp(0.6 z)`, times `(rate / segment median)^-0.7`
//! (engaged users stay longer), times the early-tenure multiplier `1 + 6 exp(-tenure_days / 12)`
//! (new-user drop-off). When it fires:
//!
//! * a subscribed user churns *abruptly* with probability 15% / 20% / 25% / 35% (casual /
//!   regular / power / subscriber): an ordinary-looking session ends in `cancel`, then silence;
//! * otherwise the user starts *fading* for `14 + Exp(mean 18) + min(1.5 / sessions_per_day, 45)`
//!   days (at most 89; sparse users drift away over more calendar time). Activity decays as
//!   `exp(-3 t / len)` (to 5%); sessions get shorter; purchases and shares drop faster than
//!   sessions; and stress `1 - level` raises support tickets (per session and on days without a
//!   session) and payment failures (on purchases and renewals). 35% of fades open with a support
//!   ticket. 15% of fades recover (activity dips and comes back, with the same stress signals);
//!   the rest end in silence, and half of the still-subscribed users log in once more to `cancel`.
//!
//! Independently, healthy users have temporary *quiet spells* (0.5% chance per day, lasting
//! 3 + Exp(mean 7) days at 5-35% of normal activity) without stress signals, so low recent
//! activity alone is not proof of churn.
//!
//! **Ground truth.** `churn_ts` is the timestamp of the user's last event before the silence
//! (the `cancel` for abrupt churners), or, if the user emitted nothing in the window before
//! leaving, the latent moment of leaving. Users whose fade is unfinished at the end of the
//! window are not churned (right-censoring). So at a snapshot `T`, users with `churn_ts < T` are
//! already gone and "churns within H" means `churn_ts` in `[T, T + H)`. Churners come back with
//! probability 20% / 30% / 40% / 35% by segment after 14 + Exp(mean 35) days; `reactivated_ts` is
//! their first event back, after which they run at 40-100% of their old rate and subscriber-
//! segment users usually re-subscribe. A user churns at most once per run (later fades always
//! recover). No user has events in `(churn_ts, reactivated_ts)`, or after `churn_ts` if never
//! reactivated.
//!
//! **What to expect.** 100,000 users over 180 days give about 5.4 million events; about 31% of
//! users churn in the window and about 17% of churners come back. Churners' activity declines
//! over the weeks before `churn_ts` (support tickets and payment failures rise), but the final
//! visit itself sits at `churn_ts` by definition. A plain logistic model on windowed counts,
//! recency, tickets, payment failures, purchases and tenure predicts churn within 28 days with a
//! ROC AUC of about 0.76-0.80 (see the ignored `realism_report` test): learnable, but noisy,
//! because abrupt cancels give little warning, quiet spells and recovering fades look like churn,
//! and casual users are sparse to begin with.

mod behaviour;
mod output;
mod population;
pub mod treatment;

use std::io::Write;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::time::DAY_MS;
use behaviour::Tables;
use output::Rec;
pub use output::{user_id_string, write_event_json, write_truth_csv, write_user_id};
use population::UserSim;

/// 2026-01-01T00:00:00Z.
pub const DEFAULT_START_MS: i64 = 1_767_225_600_000;

/// Upper bound on one user's events within one simulated day, so a heavy-tail draw cannot
/// dominate the stream.
pub const DAILY_EVENT_CAP: u32 = 200;

/// Three bits of a packed record hold the event kind, so the user index gets the other 29.
const MAX_USERS: u64 = 1 << 29;
/// Keeps `days * DAY_MS` and the per-day bucket table comfortably small.
const MAX_DAYS: u32 = 36_600;
/// 9999-12-31T23:59:59.999Z, the last instant RFC3339 can express with a 4-digit year.
const MAX_RFC3339_MS: i64 = 253_402_300_799_999;
/// Existing users may have signed up this long before the window (signup_ts is in the truth).
const MAX_PRIOR_TENURE_DAYS: i64 = 1_500;

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Number of users, ids `u0000001 ..= u{users}`.
    pub users: u64,
    /// Length of the event window in days.
    pub days: u32,
    /// Same seed, same bytes.
    pub seed: u64,
    /// Epoch milliseconds of the start of day 0 (need not be midnight).
    pub start_ms: i64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self { users: 10_000, days: 180, seed: 42, start_ms: DEFAULT_START_MS }
    }
}

impl SimConfig {
    /// Exclusive end of the event window.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.days) * DAY_MS
    }

    /// Rejects configs that are empty or whose timestamps would not fit RFC3339.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |msg: String| Err(SimError::InvalidConfig(msg));
        if self.users == 0 || self.users > MAX_USERS {
            return bad(format!("users must be in 1..={MAX_USERS}, got {}", self.users));
        }
        if self.days == 0 || self.days > MAX_DAYS {
            return bad(format!("days must be in 1..={MAX_DAYS}, got {}", self.days));
        }
        // Signups (in the truth) may precede the window by up to MAX_PRIOR_TENURE_DAYS; the events
        // themselves must lie where the event parser accepts them, so that every command reads
        // the log back.
        let earliest = crate::event::MIN_TS;
        let latest = crate::event::MAX_TS.min(MAX_RFC3339_MS + 1);
        if self.start_ms < earliest || self.end_ms() > latest {
            return bad(format!(
                "start {} (epoch ms) and {} days put events outside 1970-01-01..2200-01-01, the range event timestamps accept",
                self.start_ms,
                self.days
            ));
        }
        Ok(())
    }
}

/// Totals of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimSummary {
    pub events: u64,
    pub users: u64,
    pub churned_users: u64,
    pub reactivated_users: u64,
    /// First and last emitted event; both `start_ms` when nothing was emitted.
    pub first_ts: i64,
    pub last_ts: i64,
}

/// One user's ground truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthRow {
    pub user_id: String,
    pub signup_ts: i64,
    pub churn_ts: Option<i64>,
    pub reactivated_ts: Option<i64>,
    pub segment: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator output failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid simulator config: {0}")]
    InvalidConfig(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Login,
    PageView,
    Purchase,
    SupportTicket,
    PaymentFailed,
    Subscribe,
    Cancel,
    ShareContent,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Login,
        EventKind::PageView,
        EventKind::Purchase,
        EventKind::SupportTicket,
        EventKind::PaymentFailed,
        EventKind::Subscribe,
        EventKind::Cancel,
        EventKind::ShareContent,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Login => "login",
            EventKind::PageView => "page_view",
            EventKind::Purchase => "purchase",
            EventKind::SupportTicket => "support_ticket",
            EventKind::PaymentFailed => "payment_failed",
            EventKind::Subscribe => "subscribe",
            EventKind::Cancel => "cancel",
            EventKind::ShareContent => "share_content",
        }
    }

    /// Inverse of [`EventKind::as_str`].
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn code(self) -> u32 {
        self as u32
    }

    fn from_code(code: u32) -> EventKind {
        EventKind::ALL[(code & 7) as usize]
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One generated event. `user_id` is numeric here and rendered as `u{:07}` on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimEvent {
    pub user_id: u64,
    pub event_type: EventKind,
    pub ts: i64,
    pub amount: Option<f64>,
}

/// Writes all events as JSON lines sorted by ts ascending (ties by user, then kind) to
/// `events`, and, if given, a CSV ground truth `user_id,signup_ts,churn_ts,reactivated_ts,segment`
/// (timestamps RFC3339, empty when none) to `truth`.
///
/// When no truth is wanted the writer type still has to be named, e.g.
/// `simulate::<_, std::io::Sink>(&cfg, &mut out, None)`.
pub fn simulate<W: Write, T: Write>(
    cfg: &SimConfig,
    events: &mut W,
    truth: Option<&mut T>,
) -> Result<SimSummary, SimError> {
    write_run(run(cfg)?, events, truth)
}

fn write_run<W: Write, T: Write>(run: Run, events: &mut W, truth: Option<&mut T>) -> Result<SimSummary, SimError> {
    const FLUSH_AT: usize = 1 << 20;
    let mut buf = Vec::with_capacity(FLUSH_AT + 256);
    for rec in run.buckets.iter().flatten() {
        write_event_json(&mut buf, &rec.event());
        if buf.len() >= FLUSH_AT {
            events.write_all(&buf)?;
            buf.clear();
        }
    }
    events.write_all(&buf)?;
    events.flush()?;
    if let Some(t) = truth {
        write_truth_csv(t, &run.truth)?;
    }
    Ok(run.summary)
}

/// Same generation as [`simulate`], but hands each event to a callback in ts order instead of
/// writing JSON (used by the streaming demo to produce to Kafka).
pub fn generate(cfg: &SimConfig, mut on_event: impl FnMut(&SimEvent)) -> Result<(SimSummary, Vec<TruthRow>), SimError> {
    let run = run(cfg)?;
    for rec in run.buckets.iter().flatten() {
        on_event(&rec.event());
    }
    Ok((run.summary, run.truth))
}

struct Run {
    /// One vector per day of the window, each sorted; concatenated they are sorted.
    buckets: Vec<Vec<Rec>>,
    truth: Vec<TruthRow>,
    summary: SimSummary,
}

fn run(cfg: &SimConfig) -> Result<Run, SimError> {
    cfg.validate()?;
    let window = Window { start: cfg.start_ms, end: cfg.end_ms(), days: cfg.days };
    let tables = Tables::new();
    let base_rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut buckets: Vec<Vec<Rec>> = vec![Vec::new(); cfg.days as usize];
    let mut truth = Vec::with_capacity(cfg.users as usize);
    for idx in 0..cfg.users {
        let mut rng = base_rng.clone();
        rng.set_stream(idx);
        let mut user = UserSim::new(idx as u32, rng, &window, &tables);
        user.simulate();
        user.drain_into(&mut buckets);
        truth.push(user.truth());
    }
    Ok(finish(cfg, buckets, truth))
}

/// Sorts the buckets and counts the run.
fn finish(cfg: &SimConfig, mut buckets: Vec<Vec<Rec>>, truth: Vec<TruthRow>) -> Run {
    let mut events = 0u64;
    for b in &mut buckets {
        sort_bucket(b);
        events += b.len() as u64;
    }
    let first_ts = buckets.iter().find_map(|b| b.first()).map_or(cfg.start_ms, |r| r.ts);
    let last_ts = buckets.iter().rev().find_map(|b| b.last()).map_or(cfg.start_ms, |r| r.ts);
    let summary = SimSummary {
        events,
        users: cfg.users,
        churned_users: truth.iter().filter(|t| t.churn_ts.is_some()).count() as u64,
        reactivated_users: truth.iter().filter(|t| t.reactivated_ts.is_some()).count() as u64,
        first_ts,
        last_ts,
    };
    Run { buckets, truth, summary }
}

/// The output order: ts, then user, then kind (and amount, for identical twins).
fn sort_bucket(b: &mut [Rec]) {
    b.sort_unstable_by_key(|r| (r.ts, r.user_kind, r.cents));
}

struct Window {
    start: i64,
    end: i64,
    days: u32,
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    use std::time::Instant;

    use super::*;
    use crate::time::{parse_rfc3339, HOUR_MS};

    fn cfg(users: u64, days: u32, seed: u64) -> SimConfig {
        SimConfig { users, days, seed, ..SimConfig::default() }
    }

    fn run_bytes(cfg: &SimConfig) -> (Vec<u8>, Vec<u8>, SimSummary) {
        let (mut events, mut truth) = (Vec::new(), Vec::new());
        let summary = simulate(cfg, &mut events, Some(&mut truth)).expect("in-memory simulation");
        (events, truth, summary)
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The bytes of a fixed seed's output, as `simulate --users 2000 --days 120 --seed 42` wrote
    /// them before the simulator was split into modules and given treatment effects: without
    /// effects, the output must not change.
    #[test]
    fn fixed_seed_output_is_unchanged() {
        let (events, truth, _) = run_bytes(&cfg(2000, 120, 42));
        assert_eq!(sha256_hex(&events), "612b0a91d9b63be6a0d4b61b49d2857e56f226593533c1763c703150770c74b4");
        assert_eq!(sha256_hex(&truth), "f99b3135d3615b93bc82c4b708baa7613295a6396eeb4351b875670ea5c08076");
    }

    struct Generated {
        cfg: SimConfig,
        summary: SimSummary,
        events: Vec<SimEvent>,
        truth: Vec<TruthRow>,
    }

    /// The 2,000 x 120 run several tests inspect, generated once.
    fn lifecycle_run() -> &'static Generated {
        static RUN: OnceLock<Generated> = OnceLock::new();
        RUN.get_or_init(|| {
            let cfg = cfg(2_000, 120, 7);
            let mut events = Vec::new();
            let (summary, truth) = generate(&cfg, |e| events.push(*e)).expect("generate");
            Generated { cfg, summary, events, truth }
        })
    }

    fn per_user(events: &[SimEvent]) -> HashMap<u64, Vec<&SimEvent>> {
        let mut by_user: HashMap<u64, Vec<&SimEvent>> = HashMap::new();
        for e in events {
            by_user.entry(e.user_id).or_default().push(e);
        }
        by_user
    }

    fn numeric_id(user_id: &str) -> u64 {
        user_id[1..].parse().expect("numeric user id")
    }

    #[test]
    fn same_seed_is_byte_identical_and_seed_matters() {
        let a = run_bytes(&cfg(300, 60, 1));
        let b = run_bytes(&cfg(300, 60, 1));
        let c = run_bytes(&cfg(300, 60, 2));
        assert!(a.2.events > 1_000, "{:?}", a.2);
        assert_eq!(a, b);
        assert_ne!(a.0, c.0);
        assert_ne!(a.1, c.1);
    }

    #[test]
    fn generate_matches_simulate() {
        let c = cfg(200, 40, 3);
        let (bytes, truth_csv, summary) = run_bytes(&c);
        let mut buf = Vec::new();
        let (summary2, truth) = generate(&c, |e| write_event_json(&mut buf, e)).expect("generate");
        assert_eq!(bytes, buf);
        assert_eq!(summary, summary2);
        let mut csv = Vec::new();
        write_truth_csv(&mut csv, &truth).expect("csv");
        assert_eq!(truth_csv, csv);
    }

    #[test]
    fn json_lines_are_valid_sorted_and_in_range() {
        let c = cfg(400, 45, 11);
        let (bytes, _, summary) = run_bytes(&c);
        let text = std::str::from_utf8(&bytes).expect("utf8");
        let mut prev = i64::MIN;
        let mut lines = 0u64;
        let mut kinds = HashMap::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect(line);
            let user = v["user_id"].as_str().expect("user_id");
            assert!(user.len() == 8 && user.starts_with('u'), "{line}");
            let kind = EventKind::parse(v["event_type"].as_str().expect("event_type")).expect(line);
            let ts = parse_rfc3339(v["ts"].as_str().expect("ts")).expect(line);
            assert!(ts >= prev, "not sorted at {line}");
            assert!(ts >= c.start_ms && ts < c.end_ms(), "out of range: {line}");
            prev = ts;
            match (kind, v.get("amount")) {
                (EventKind::Purchase, Some(a)) => {
                    let a = a.as_f64().expect("numeric amount");
                    assert!(a.is_finite() && a > 0.0, "{line}");
                }
                (EventKind::Purchase, None) => panic!("purchase without amount: {line}"),
                (EventKind::Subscribe, _) => {}
                (_, Some(_)) => panic!("unexpected amount: {line}"),
                (_, None) => {}
            }
            *kinds.entry(kind).or_insert(0u64) += 1;
            lines += 1;
        }
        assert_eq!(lines, summary.events);
        assert_eq!(summary.users, 400);
        for k in [EventKind::Login, EventKind::PageView, EventKind::Purchase] {
            assert!(kinds.get(&k).copied().unwrap_or(0) > 0, "no {k} events");
        }
        assert!(kinds[&EventKind::PageView] > kinds[&EventKind::Login]);
        assert!(summary.first_ts >= c.start_ms && summary.last_ts < c.end_ms());
    }

    #[test]
    fn event_json_format() {
        let mut out = Vec::new();
        let ev = SimEvent { user_id: 42, event_type: EventKind::Purchase, ts: 1_767_435_072_345, amount: Some(12.5) };
        write_event_json(&mut out, &ev);
        let login = SimEvent { event_type: EventKind::Login, amount: None, user_id: 123_456_789, ..ev };
        write_event_json(&mut out, &login);
        let nan = SimEvent { amount: Some(f64::NAN), ..ev };
        write_event_json(&mut out, &nan);
        assert_eq!(
            std::str::from_utf8(&out).expect("utf8"),
            concat!(
                r#"{"user_id":"u0000042","event_type":"purchase","ts":"2026-01-03T10:11:12.345Z","amount":12.5}"#,
                "\n",
                r#"{"user_id":"u123456789","event_type":"login","ts":"2026-01-03T10:11:12.345Z"}"#,
                "\n",
                r#"{"user_id":"u0000042","event_type":"purchase","ts":"2026-01-03T10:11:12.345Z"}"#,
                "\n",
            )
        );
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            assert_eq!(EventKind::from_code(k.code()), k);
        }
    }

    #[test]
    fn invalid_configs_are_rejected() {
        for bad in [cfg(0, 10, 1), cfg(10, 0, 1), cfg(MAX_USERS + 1, 10, 1)] {
            let mut sink = Vec::new();
            let err = simulate::<_, Vec<u8>>(&bad, &mut sink, None);
            assert!(matches!(err, Err(SimError::InvalidConfig(_))), "{bad:?}");
            assert!(sink.is_empty());
        }
        let far = SimConfig { start_ms: MAX_RFC3339_MS, ..cfg(10, 10, 1) };
        assert!(matches!(generate(&far, |_| {}), Err(SimError::InvalidConfig(_))));
    }

    #[test]
    fn truth_csv_is_well_formed() {
        let c = cfg(300, 90, 5);
        let (_, csv, summary) = run_bytes(&c);
        let text = std::str::from_utf8(&csv).expect("utf8");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("user_id,signup_ts,churn_ts,reactivated_ts,segment"));
        let mut rows = 0;
        let mut churned = 0;
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 5, "{line}");
            assert!(parse_rfc3339(f[1]).is_some(), "{line}");
            for ts in &f[2..4] {
                assert!(ts.is_empty() || parse_rfc3339(ts).is_some(), "{line}");
            }
            churned += usize::from(!f[2].is_empty());
            assert!(["casual", "regular", "power", "subscriber"].contains(&f[4]), "{line}");
            rows += 1;
        }
        assert_eq!(rows, 300);
        assert_eq!(churned as u64, summary.churned_users);
    }

    #[test]
    fn churned_users_are_silent_until_reactivated() {
        let g = lifecycle_run();
        let by_user = per_user(&g.events);
        let end = g.cfg.end_ms();
        let mut with_events_after_return = 0;
        for t in &g.truth {
            let evs = by_user.get(&numeric_id(&t.user_id)).map_or(&[][..], |v| &v[..]);
            assert!(evs.iter().all(|e| e.ts >= t.signup_ts), "{t:?}");
            let Some(churn) = t.churn_ts else {
                assert!(t.reactivated_ts.is_none(), "{t:?}");
                continue;
            };
            let back = t.reactivated_ts.unwrap_or(end);
            assert!(t.reactivated_ts.is_none() || back >= churn + 13 * DAY_MS, "{t:?}");
            let leak = evs.iter().find(|e| e.ts > churn && e.ts < back);
            assert!(leak.is_none(), "{t:?} has {leak:?}");
            if let Some(r) = t.reactivated_ts {
                assert!(evs.iter().any(|e| e.ts == r), "{t:?}");
                with_events_after_return += 1;
            }
        }
        assert_eq!(with_events_after_return, g.summary.reactivated_users);
        assert!(g.summary.reactivated_users > 0);
    }

    #[test]
    fn churn_rate_is_sane() {
        let g = lifecycle_run();
        let rate = g.summary.churned_users as f64 / g.summary.users as f64;
        assert!((0.10..=0.60).contains(&rate), "churn rate {rate}");
        let react = g.summary.reactivated_users as f64 / g.summary.churned_users as f64;
        assert!((0.05..=0.5).contains(&react), "reactivation share {react}");
        let cancels = g.events.iter().filter(|e| e.event_type == EventKind::Cancel).count();
        assert!(cancels > 0);
    }

    #[test]
    fn churners_fade_before_churn() {
        let g = lifecycle_run();
        let by_user = per_user(&g.events);
        let (mut recent, mut earlier, mut n) = (0usize, 0usize, 0usize);
        let (mut recent_stress, mut earlier_stress) = (0usize, 0usize);
        let stress = |e: &SimEvent| matches!(e.event_type, EventKind::SupportTicket | EventKind::PaymentFailed);
        // churn_ts is the user's last event, so the window ending at it always holds the final
        // visit, whatever the trend. Compare the two fortnights before that final half-day.
        let end_of = |c: i64| c - 12 * HOUR_MS;
        for t in &g.truth {
            let Some(c) = t.churn_ts else { continue };
            if end_of(c) - 28 * DAY_MS < g.cfg.start_ms.max(t.signup_ts) {
                continue;
            }
            let evs = by_user.get(&numeric_id(&t.user_id)).map_or(&[][..], |v| &v[..]);
            let within = |from_days: i64, to_days: i64| -> Vec<&&SimEvent> {
                let (lo, hi) = (end_of(c) - to_days * DAY_MS, end_of(c) - from_days * DAY_MS);
                evs.iter().filter(|e| e.ts >= lo && e.ts < hi).collect()
            };
            let last14 = within(0, 14);
            let prior14 = within(14, 28);
            recent += last14.len();
            earlier += prior14.len();
            recent_stress += last14.iter().filter(|e| stress(e)).count();
            earlier_stress += prior14.iter().filter(|e| stress(e)).count();
            n += 1;
        }
        assert!(n > 50, "only {n} churners with 28 days of history");
        assert!(
            (recent as f64) < 0.8 * earlier as f64,
            "no fading: {recent} events in the last 14 days vs {earlier} in the 14 before ({n} churners)"
        );
        let share = |s: usize, all: usize| s as f64 / all.max(1) as f64;
        assert!(
            share(recent_stress, recent) > share(earlier_stress, earlier),
            "stress events do not rise before churn"
        );
    }

    /// Release-mode measurement: `cargo test --release --lib sim:: -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn full_size_throughput() {
        let c = cfg(100_000, 180, 42);
        let t0 = Instant::now();
        let mut count = 0u64;
        let (summary, _) = generate(&c, |_| count += 1).expect("generate");
        let gen_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut sink = CountingSink(0);
        simulate::<_, std::io::Sink>(&c, &mut sink, None).expect("simulate");
        let write_s = t1.elapsed().as_secs_f64();
        eprintln!(
            "100k x 180d: {} events ({} MB JSON), generate+sort {gen_s:.2}s, \
             generate+sort+write {write_s:.2}s; churned {:.1}%, reactivated {:.1}% of churners",
            summary.events,
            sink.0 >> 20,
            100.0 * summary.churned_users as f64 / summary.users as f64,
            100.0 * summary.reactivated_users as f64 / summary.churned_users.max(1) as f64,
        );
        assert_eq!(count, summary.events);
    }

    /// Data-science sanity report: churn by segment, the fading signal, and how well a plain
    /// logistic model on windowed counts and recency predicts churn in the next 28 days.
    /// `cargo test --release --lib sim::tests::realism_report -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn realism_report() {
        let c = cfg(20_000, 180, 99);
        let mut events = Vec::new();
        let (summary, truth) = generate(&c, |e| events.push(*e)).expect("generate");
        let by_user = per_user(&events);
        let no_events: Vec<&SimEvent> = Vec::new();
        let evs_of = |t: &TruthRow| by_user.get(&numeric_id(&t.user_id)).unwrap_or(&no_events);

        for seg in ["casual", "regular", "power", "subscriber"] {
            let rows: Vec<&TruthRow> = truth.iter().filter(|t| t.segment == seg).collect();
            let churned = rows.iter().filter(|t| t.churn_ts.is_some()).count();
            let back = rows.iter().filter(|t| t.reactivated_ts.is_some()).count();
            let evs: usize = rows.iter().map(|t| evs_of(t).len()).sum();
            let (mut recent, mut earlier) = (0, 0);
            for t in &rows {
                // As in `churners_fade_before_churn`: the fortnights before the final visit.
                let Some(ch) = t.churn_ts.map(|ch| ch - 12 * HOUR_MS) else {
                    continue;
                };
                if ch - 28 * DAY_MS < c.start_ms.max(t.signup_ts) {
                    continue;
                }
                let e = evs_of(t);
                let within = |lo: i64, hi: i64| e.iter().filter(|e| e.ts >= lo && e.ts < hi).count();
                recent += within(ch - 14 * DAY_MS, ch);
                earlier += within(ch - 28 * DAY_MS, ch - 14 * DAY_MS);
            }
            eprintln!(
                "{seg:>10}: {:>5} users, {:>6.1} events/user, churned {:>5.1}%, reactivated {:>4.1}%, \
                 activity last 14d / prior 14d before final visit {:.2}",
                rows.len(),
                evs as f64 / rows.len() as f64,
                100.0 * churned as f64 / rows.len() as f64,
                100.0 * back as f64 / rows.len() as f64,
                recent as f64 / earlier.max(1) as f64
            );
        }
        let mut kinds: HashMap<EventKind, usize> = HashMap::new();
        for e in &events {
            *kinds.entry(e.event_type).or_default() += 1;
        }
        let mut kinds: Vec<_> = kinds.into_iter().collect();
        kinds.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        eprintln!("{summary:?}\nkinds: {kinds:?}");

        for snapshot_day in [90i64, 120, 150] {
            let t_ms = c.start_ms + snapshot_day * DAY_MS;
            let horizon = 28 * DAY_MS;
            let (mut xs, mut ys) = (Vec::new(), Vec::new());
            for t in &truth {
                if t.signup_ts > t_ms - 7 * DAY_MS || t.churn_ts.is_some_and(|ch| ch < t_ms) {
                    continue;
                }
                let evs = evs_of(t);
                let past: Vec<&&SimEvent> = evs.iter().filter(|e| e.ts < t_ms).collect();
                let count = |from: i64, to: i64, kind: Option<EventKind>| {
                    let n = past
                        .iter()
                        .filter(|e| e.ts >= t_ms - to * DAY_MS && e.ts < t_ms - from * DAY_MS)
                        .filter(|e| kind.iter().all(|&k| e.event_type == k))
                        .count();
                    (n as f64).ln_1p()
                };
                let recency = past.last().map_or(60.0, |e| ((t_ms - e.ts) as f64 / DAY_MS as f64).min(60.0));
                xs.push(vec![
                    count(0, 7, None),
                    count(7, 14, None),
                    count(14, 28, None),
                    count(28, 56, None),
                    recency / 60.0,
                    (recency + 1.0).ln(),
                    count(0, 28, Some(EventKind::SupportTicket)),
                    count(0, 28, Some(EventKind::PaymentFailed)),
                    count(0, 28, Some(EventKind::Purchase)),
                    count(0, 28, Some(EventKind::Cancel)),
                    count(0, 14, Some(EventKind::Login)),
                    (((t_ms - t.signup_ts) / DAY_MS) as f64).ln_1p(),
                ]);
                ys.push(t.churn_ts.is_some_and(|ch| ch < t_ms + horizon));
            }
            let auc = logistic_holdout_auc(&xs, &ys);
            let pos = ys.iter().filter(|y| **y).count();
            eprintln!(
                "snapshot day {snapshot_day}: {} at-risk users, {:.1}% churn within 28d, logistic AUC {auc:.3}",
                ys.len(),
                100.0 * pos as f64 / ys.len() as f64
            );
        }
    }

    /// Fits a logistic regression on even rows by gradient descent and returns ROC AUC on odd rows.
    fn logistic_holdout_auc(xs: &[Vec<f64>], ys: &[bool]) -> f64 {
        let d = xs[0].len();
        let n = xs.len() as f64;
        let mean: Vec<f64> = (0..d).map(|j| xs.iter().map(|x| x[j]).sum::<f64>() / n).collect();
        let sd: Vec<f64> = (0..d)
            .map(|j| {
                let v = xs.iter().map(|x| (x[j] - mean[j]).powi(2)).sum::<f64>() / n;
                v.sqrt().max(1e-9)
            })
            .collect();
        let z: Vec<Vec<f64>> = xs.iter().map(|x| (0..d).map(|j| (x[j] - mean[j]) / sd[j]).collect()).collect();
        let score = |w: &[f64], x: &[f64]| w[d] + x.iter().zip(w).map(|(a, b)| a * b).sum::<f64>();
        let mut w = vec![0.0; d + 1];
        let train: Vec<usize> = (0..z.len()).step_by(2).collect();
        for _ in 0..2_000 {
            let mut grad = vec![0.0; d + 1];
            for &i in &train {
                let p = 1.0 / (1.0 + (-score(&w, &z[i])).exp());
                let err = p - f64::from(u8::from(ys[i]));
                for j in 0..d {
                    grad[j] += err * z[i][j];
                }
                grad[d] += err;
            }
            for j in 0..=d {
                w[j] -= 0.5 * grad[j] / train.len() as f64;
            }
        }
        let mut test: Vec<(f64, bool)> = (1..z.len()).step_by(2).map(|i| (score(&w, &z[i]), ys[i])).collect();
        test.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mut rank_sum, mut pos) = (0.0, 0.0);
        for (r, (_, y)) in test.iter().enumerate() {
            if *y {
                rank_sum += (r + 1) as f64;
                pos += 1.0;
            }
        }
        let neg = test.len() as f64 - pos;
        (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
    }

    struct CountingSink(u64);

    impl Write for CountingSink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
