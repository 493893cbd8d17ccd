//! Population and lifecycle: who the users are (segment, time zone, tenure, spend, friction)
//! and how they move between active, fading, churned and reactivated (see the module docs of
//! [`crate::sim`]).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::behaviour::{exp1, is_weekend, lognormal, poisson, time_of_day, Tables};
use super::output::{user_id_string, Rec};
use super::{EventKind, TruthRow, Window, MAX_PRIOR_TENURE_DAYS};
use crate::time::{DAY_MS, HOUR_MS, MINUTE_MS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Segment {
    Casual,
    Regular,
    Power,
    Subscriber,
}

/// Per-segment behaviour. Rates are per day or per session; see the module docs.
pub(super) struct Profile {
    pub(super) name: &'static str,
    pub(super) share: f64,
    pub(super) sessions_per_day: f64,
    pub(super) weekend: f64,
    pub(super) page_views: f64,
    pub(super) purchase: f64,
    pub(super) share_content: f64,
    pub(super) ticket: f64,
    pub(super) spend: f64,
    pub(super) hazard: f64,
    pub(super) abrupt: f64,
    pub(super) reactivate: f64,
    /// Daily probability of subscribing while not subscribed, on an active day.
    pub(super) convert: f64,
}

pub(super) const PROFILES: [(Segment, Profile); 4] = [
    (
        Segment::Casual,
        Profile {
            name: "casual",
            share: 0.45,
            sessions_per_day: 0.045,
            weekend: 1.40,
            page_views: 1.3,
            purchase: 0.03,
            share_content: 0.02,
            ticket: 0.006,
            spend: 15.0,
            hazard: 1.0 / 160.0,
            abrupt: 0.15,
            reactivate: 0.20,
            convert: 1.0 / 3000.0,
        },
    ),
    (
        Segment::Regular,
        Profile {
            name: "regular",
            share: 0.30,
            sessions_per_day: 0.13,
            weekend: 0.85,
            page_views: 1.8,
            purchase: 0.07,
            share_content: 0.05,
            ticket: 0.008,
            spend: 25.0,
            hazard: 1.0 / 300.0,
            abrupt: 0.2,
            reactivate: 0.30,
            convert: 1.0 / 1500.0,
        },
    ),
    (
        Segment::Power,
        Profile {
            name: "power",
            share: 0.08,
            sessions_per_day: 0.38,
            weekend: 0.75,
            page_views: 2.5,
            purchase: 0.12,
            share_content: 0.12,
            ticket: 0.01,
            spend: 35.0,
            hazard: 1.0 / 650.0,
            abrupt: 0.25,
            reactivate: 0.40,
            convert: 1.0 / 1000.0,
        },
    ),
    (
        Segment::Subscriber,
        Profile {
            name: "subscriber",
            share: 0.17,
            sessions_per_day: 0.14,
            weekend: 1.15,
            page_views: 2.0,
            purchase: 0.04,
            share_content: 0.04,
            ticket: 0.012,
            spend: 20.0,
            hazard: 1.0 / 360.0,
            abrupt: 0.35,
            reactivate: 0.35,
            convert: 0.06,
        },
    ),
];

pub(super) const EXISTING_SHARE: f64 = 0.35;

pub(super) const PLAN_PRICES_CENTS: [u32; 3] = [999, 1_499, 2_999];

/// (hours east of UTC, weight): a rough EU/US/Asia mix.
pub(super) const TIMEZONES: [(i64, f64); 8] =
    [(0, 0.25), (1, 0.25), (2, 0.05), (-5, 0.20), (-6, 0.07), (-8, 0.08), (5, 0.05), (8, 0.05)];

#[derive(Debug, Clone, Copy)]
pub(super) enum Phase {
    Active,
    Fading { start: u32, len: u32, recover: bool },
    Churned { back: Option<u32> },
}

/// Per-day intensity and stress, derived from the phase.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mood {
    /// Multiplier on activity, 1 when healthy.
    pub(super) level: f64,
    /// 0 when healthy, towards 1 late in a fade: drives tickets and payment failures.
    pub(super) stress: f64,
}

pub(super) struct UserSim<'a> {
    pub(super) idx: u32,
    pub(super) rng: ChaCha8Rng,
    pub(super) win: &'a Window,
    pub(super) tables: &'a Tables,
    /// Events emitted and not yet collected by the driver ([`UserSim::drain_into`]).
    pub(super) out: Vec<Rec>,
    pub(super) segment: Segment,
    pub(super) prof: &'static Profile,
    pub(super) signup_ms: i64,
    pub(super) rate: f64,
    pub(super) hazard: f64,
    /// Multiplier on the user's baseline support-ticket and payment-failure rates.
    pub(super) friction: f64,
    pub(super) spend: f64,
    pub(super) tz_ms: i64,
    pub(super) plan_cents: u32,
    /// Day of the next subscription renewal charge.
    pub(super) next_bill_day: u32,
    pub(super) subscribed: bool,
    pub(super) phase: Phase,
    pub(super) quiet_until: u32,
    pub(super) quiet_level: f64,
    pub(super) reactivated: bool,
    /// Events emitted on the day being simulated (for the daily cap).
    pub(super) today: u32,
    /// Latest emitted ts: closing sessions start after it so `cancel` really is last.
    pub(super) last_ts: Option<i64>,
    pub(super) churn_ts: Option<i64>,
    /// Set on the day a churned user comes back: that day's earliest event is reactivated_ts.
    pub(super) returning: bool,
    pub(super) reactivated_ts: Option<i64>,
    /// Treatment (closed loop only): the churn-onset hazard is multiplied by `hazard_factor`
    /// on days before `treated_until`. 1 and 0 without treatment, which leaves every draw as is.
    pub(super) hazard_factor: f64,
    pub(super) treated_until: u32,
}

impl<'a> UserSim<'a> {
    pub(super) fn new(idx: u32, mut rng: ChaCha8Rng, win: &'a Window, tables: &'a Tables) -> Self {
        let (segment, prof) = pick_profile(rng.random());
        let existing = rng.random_bool(EXISTING_SHARE);
        let tz_ms = pick_timezone(rng.random()) * HOUR_MS;
        let signup_ms = if existing {
            // Folding the exponential's tail back keeps every prior tenure distinct and in range.
            let span = (MAX_PRIOR_TENURE_DAYS - 31) as f64;
            let prior_days = 30.0 + (400.0 * exp1(&mut rng)) % span;
            win.start - (prior_days * DAY_MS as f64) as i64
        } else {
            let day = rng.random_range(0..win.days);
            let tod = time_of_day(&mut rng, &tables.weekday);
            let mut ts = win.start + i64::from(day) * DAY_MS + tod - tz_ms;
            // The time-zone shift can push a first or last-day signup out of the window; move
            // it by a day rather than clamping, which would pile signups onto one instant.
            if ts < win.start {
                ts += DAY_MS;
            } else if ts >= win.end {
                ts -= DAY_MS;
            }
            ts.clamp(win.start, win.end - 1)
        };
        let rel_rate = lognormal(&mut rng, 0.9);
        let rate = (prof.sessions_per_day * rel_rate).min(30.0);
        // Engaged users churn less, and users who hit more friction (tickets, failed payments)
        // churn more: both make a user's history a weak, noisy prior on their hazard.
        let unhappiness: f64 = StandardNormal.sample(&mut rng);
        let friction = (0.7 * unhappiness).exp();
        let hazard = prof.hazard * lognormal(&mut rng, 0.5) * rel_rate.powf(-0.7) * (0.6 * unhappiness).exp();
        let spend = prof.spend * lognormal(&mut rng, 0.5);
        let plan_cents = PLAN_PRICES_CENTS[rng.random_range(0..PLAN_PRICES_CENTS.len())];
        let next_bill_day = rng.random_range(0..30);
        Self {
            idx,
            rng,
            win,
            tables,
            out: Vec::new(),
            segment,
            prof,
            signup_ms,
            rate,
            hazard,
            friction,
            spend,
            tz_ms,
            plan_cents,
            next_bill_day,
            subscribed: existing && segment == Segment::Subscriber,
            phase: Phase::Active,
            quiet_until: 0,
            quiet_level: 1.0,
            reactivated: false,
            today: 0,
            last_ts: None,
            churn_ts: None,
            returning: false,
            reactivated_ts: None,
            hazard_factor: 1.0,
            treated_until: 0,
        }
    }

    /// The first day worth simulating.
    pub(super) fn signup_day(&self) -> u32 {
        if self.signup_ms < self.win.start {
            0
        } else {
            ((self.signup_ms - self.win.start) / DAY_MS) as u32
        }
    }

    /// Simulates every day of the window, one user at a time.
    pub(super) fn simulate(&mut self) {
        let signup_day = self.signup_day();
        let mut day = signup_day;
        while day < self.win.days {
            day = match self.simulate_day(day, signup_day) {
                Some(next) => next,
                None => break,
            };
        }
    }

    /// Moves the emitted events into the per-day buckets.
    pub(super) fn drain_into(&mut self, buckets: &mut [Vec<Rec>]) {
        for rec in self.out.drain(..) {
            buckets[((rec.ts - self.win.start) / DAY_MS) as usize].push(rec);
        }
    }

    pub(super) fn truth(&self) -> TruthRow {
        TruthRow {
            user_id: user_id_string(u64::from(self.idx) + 1),
            signup_ts: self.signup_ms,
            churn_ts: self.churn_ts,
            reactivated_ts: self.reactivated_ts,
            segment: self.prof.name,
        }
    }

    /// Simulates one day and returns the next day worth simulating, or `None` when the user
    /// will emit nothing more.
    pub(super) fn simulate_day(&mut self, day: u32, signup_day: u32) -> Option<u32> {
        let day_start = self.win.start + i64::from(day) * DAY_MS;
        let tenure = ((day_start - self.signup_ms) as f64 / DAY_MS as f64).max(0.0);
        self.today = 0;
        let is_signup_day = day == signup_day && self.signup_ms >= self.win.start;
        let forced_start = is_signup_day.then_some(self.signup_ms);

        match self.phase {
            Phase::Churned { back: None } => return None,
            Phase::Churned { back: Some(b) } if b > day => return Some(b),
            Phase::Churned { .. } => {
                self.phase = Phase::Active;
                self.reactivated = true;
                self.returning = true;
                self.rate *= self.rng.random_range(0.4..1.0);
                self.quiet_until = 0;
            }
            Phase::Active => {
                if !is_signup_day && self.onset(day, day_start, tenure) {
                    return Some(day + 1);
                }
            }
            Phase::Fading { .. } => {}
        }

        let mood = match self.mood(day) {
            Some(m) => m,
            None => {
                self.finish_fade(day, day_start);
                return Some(day + 1);
            }
        };

        let weekend = is_weekend(day_start);
        self.renewal(day, day_start, mood);
        if mood.stress > 0.0 && self.rng.random_bool(0.035 * mood.stress) {
            // Frustrated users write to support even on days they do not browse.
            let ts = day_start + self.local_time(weekend);
            self.emit(ts, EventKind::SupportTicket, 0);
        }

        let honeymoon = 1.0 + 1.5 * (-tenure / 5.0).exp();
        let season = if weekend { self.prof.weekend } else { 1.0 };
        let noise = 0.5 * (exp1(&mut self.rng) + exp1(&mut self.rng));
        let lambda = self.rate * season * honeymoon * mood.level * noise;
        let mut sessions = poisson(&mut self.rng, lambda);
        if self.returning || forced_start.is_some() {
            sessions = sessions.max(1);
        }
        for i in 0..sessions {
            let start = match (i, forced_start) {
                (0, Some(ts)) => ts,
                (_, Some(ts)) => ts + self.rng.random_range(5 * MINUTE_MS..8 * HOUR_MS),
                _ => day_start + self.local_time(weekend),
            };
            let forced_login = i == 0 && (forced_start.is_some() || self.returning);
            self.session(start, mood, forced_login);
        }
        if self.returning {
            self.returning = false;
            if self.reactivated_ts.is_none() {
                // Nothing fitted in the window: the user stays gone.
                self.phase = Phase::Churned { back: None };
            }
        }
        Some(day + 1)
    }

    /// Draws churn onset and quiet spells for a healthy user. Returns true when the user churned
    /// abruptly today (the day is then complete).
    pub(super) fn onset(&mut self, day: u32, day_start: i64, tenure: f64) -> bool {
        let early = 1.0 + 6.0 * (-tenure / 12.0).exp();
        let treated = if day < self.treated_until { self.hazard_factor } else { 1.0 };
        if self.rng.random_bool((self.hazard * early * treated).min(1.0)) {
            if self.subscribed && !self.reactivated && self.rng.random_bool(self.prof.abrupt) {
                let start = day_start + self.local_time(is_weekend(day_start));
                if self.closing_session(start, true) {
                    self.churn(day, day_start);
                    return true;
                }
            } else {
                // Infrequent users drift away over more calendar time: a fade spans a few of
                // their usual sessions, not a fixed number of days.
                let sparse = (1.5 / self.rate).min(45.0);
                let len = 14 + (18.0 * exp1(&mut self.rng) + sparse).min(75.0) as u32;
                // A user can churn only once per run, so later fades always recover.
                let recover = self.reactivated || self.rng.random_bool(0.15);
                if self.rng.random_bool(0.35) {
                    // Many fades start with a bad experience the user complains about.
                    let ts = day_start + self.local_time(is_weekend(day_start));
                    self.emit(ts, EventKind::SupportTicket, 0);
                }
                self.phase = Phase::Fading { start: day, len, recover };
                return false;
            }
        }
        if day >= self.quiet_until && self.rng.random_bool(0.005) {
            self.quiet_until = day + 3 + (7.0 * exp1(&mut self.rng)) as u32;
            self.quiet_level = self.rng.random_range(0.05..0.35);
        }
        false
    }

    /// Activity level for the day, or `None` when a non-recovering fade ends today.
    pub(super) fn mood(&mut self, day: u32) -> Option<Mood> {
        match self.phase {
            Phase::Fading { start, len, recover } => {
                let t = day - start;
                if t >= len {
                    if recover {
                        self.phase = Phase::Active;
                        return Some(Mood { level: 1.0, stress: 0.0 });
                    }
                    return None;
                }
                let depth = if recover { 2.0 * f64::from(t.min(len - t)) } else { f64::from(t) };
                let level = (-3.0 * depth / f64::from(len)).exp();
                Some(Mood { level, stress: 1.0 - level })
            }
            _ => Some(Mood { level: if day < self.quiet_until { self.quiet_level } else { 1.0 }, stress: 0.0 }),
        }
    }

    pub(super) fn finish_fade(&mut self, day: u32, day_start: i64) {
        if self.subscribed && self.rng.random_bool(0.5) {
            let start = day_start + self.local_time(is_weekend(day_start));
            self.closing_session(start, false);
        }
        self.churn(day, day_start);
    }

    pub(super) fn churn(&mut self, day: u32, day_start: i64) {
        self.churn_ts = Some(self.last_ts.unwrap_or(day_start));
        self.subscribed = false;
        let back = if self.rng.random_bool(self.prof.reactivate) {
            let gap = 14 + (35.0 * exp1(&mut self.rng)) as u32;
            Some(day + gap).filter(|&b| b < self.win.days)
        } else {
            None
        };
        self.phase = Phase::Churned { back };
    }
}

pub(super) fn pick_profile(u: f64) -> (Segment, &'static Profile) {
    let mut acc = 0.0;
    for (seg, prof) in &PROFILES {
        acc += prof.share;
        if u < acc {
            return (*seg, prof);
        }
    }
    let (seg, prof) = &PROFILES[PROFILES.len() - 1];
    (*seg, prof)
}

pub(super) fn pick_timezone(u: f64) -> i64 {
    let mut acc = 0.0;
    for (tz, w) in TIMEZONES {
        acc += w;
        if u < acc {
            return tz;
        }
    }
    0
}
