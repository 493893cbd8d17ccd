//! Behaviour: what an active user does on a day (sessions, page views, purchases, shares,
//! support tickets, renewals), when in the day, and the small random distributions behind it.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1, Poisson, StandardNormal};

use super::output::Rec;
use super::population::{Mood, Phase, Segment, UserSim};
use super::{EventKind, DAILY_EVENT_CAP};
use crate::time::{DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS};

/// Relative session starts per local hour.
pub(super) const WEEKDAY_HOURS: [f64; 24] = [
    1.0, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 3.5, 3.8, 3.8, 4.0, 4.6, 4.4, 3.9, 3.8, 4.0, 4.4, 5.0, 5.8, 6.2, 5.6, 4.0,
    2.2,
];

pub(super) const WEEKEND_HOURS: [f64; 24] = [
    1.6, 1.0, 0.7, 0.4, 0.3, 0.3, 0.5, 1.0, 2.0, 3.2, 4.2, 4.8, 5.0, 4.9, 4.7, 4.6, 4.6, 4.8, 5.0, 5.4, 5.6, 5.0, 3.8,
    2.6,
];

/// Cumulative hour-of-day distributions, built once per run.
pub(super) struct Tables {
    pub(super) weekday: [f64; 24],
    pub(super) weekend: [f64; 24],
}

impl Tables {
    pub(super) fn new() -> Self {
        Self { weekday: cumulative(&WEEKDAY_HOURS), weekend: cumulative(&WEEKEND_HOURS) }
    }
}

pub(super) fn cumulative(w: &[f64; 24]) -> [f64; 24] {
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    let mut out = [0.0; 24];
    for (o, x) in out.iter_mut().zip(w) {
        acc += x / total;
        *o = acc;
    }
    out
}

impl UserSim<'_> {
    /// Monthly subscription charge: silent on success, `payment_failed` when it bounces.
    pub(super) fn renewal(&mut self, day: u32, day_start: i64, mood: Mood) {
        if !self.subscribed || day < self.next_bill_day {
            return;
        }
        self.next_bill_day = day + 30;
        if self.rng.random_bool((0.025 * self.friction + 0.45 * mood.stress).min(1.0)) {
            let ts = day_start + self.rng.random_range(2 * HOUR_MS..5 * HOUR_MS);
            self.emit(ts, EventKind::PaymentFailed, 0);
        }
    }

    pub(super) fn session(&mut self, start: i64, mood: Mood, forced_login: bool) {
        let mut ts = start;
        if forced_login || self.rng.random_bool(0.85) {
            self.emit(ts, EventKind::Login, 0);
        }
        let pv_mean = self.prof.page_views * (0.4 + 0.6 * mood.level);
        let page_views = 1 + geometric(&mut self.rng, pv_mean - 1.0);
        for _ in 0..page_views {
            ts += self.gap();
            self.emit(ts, EventKind::PageView, 0);
        }
        if self.rng.random_bool(self.prof.purchase * mood.level.powf(1.5)) {
            ts += self.gap();
            let cents = self.purchase_cents();
            if self.rng.random_bool((0.015 * self.friction + 0.25 * mood.stress).min(1.0)) {
                self.emit(ts, EventKind::PaymentFailed, 0);
                if self.rng.random_bool(0.5) {
                    ts += self.gap();
                    self.emit(ts, EventKind::Purchase, cents);
                }
            } else {
                self.emit(ts, EventKind::Purchase, cents);
            }
        }
        if self.rng.random_bool(self.prof.share_content * mood.level) {
            ts += self.gap();
            self.emit(ts, EventKind::ShareContent, 0);
        }
        if self.rng.random_bool((self.prof.ticket * self.friction + 0.08 * mood.stress).min(1.0)) {
            ts += self.gap();
            self.emit(ts, EventKind::SupportTicket, 0);
        }
        if !self.subscribed {
            // Subscriber-segment users mostly subscribe in their first session (signup or return).
            let p =
                if forced_login && self.segment == Segment::Subscriber { 0.7 } else { self.prof.convert * mood.level };
            if self.rng.random_bool(p) {
                ts += self.gap();
                if self.emit(ts, EventKind::Subscribe, self.plan_cents) {
                    self.subscribed = true;
                    self.next_bill_day = ((ts - self.win.start) / DAY_MS) as u32 + 30;
                }
            }
        } else if mood.stress == 0.0 && self.rng.random_bool(1.0 / 1200.0) {
            // Healthy subscribers sometimes downgrade to free and stay around.
            ts += self.gap();
            if self.emit(ts, EventKind::Cancel, 0) {
                self.subscribed = false;
            }
        }
    }

    /// A session ending in `cancel`, placed after everything the user emitted so far. Abrupt
    /// churners browse as usual first; a faded user just logs in to cancel.
    /// Returns whether the cancel made it into the window.
    pub(super) fn closing_session(&mut self, start: i64, browse: bool) -> bool {
        let mut ts = match self.last_ts {
            Some(last) => start.max(last + MINUTE_MS),
            None => start,
        };
        self.emit(ts, EventKind::Login, 0);
        if browse {
            for _ in 0..1 + geometric(&mut self.rng, self.prof.page_views - 1.0) {
                ts += self.gap();
                self.emit(ts, EventKind::PageView, 0);
            }
        }
        ts += self.gap();
        self.emit(ts, EventKind::Cancel, 0)
    }

    pub(super) fn purchase_cents(&mut self) -> u32 {
        let dollars = (self.spend * lognormal(&mut self.rng, 0.6)).clamp(0.99, 5_000.0);
        (dollars * 100.0).round() as u32
    }

    /// Pause between two events of one session: seconds to a few minutes.
    pub(super) fn gap(&mut self) -> i64 {
        2 * SECOND_MS + (40_000.0 * exp1(&mut self.rng)) as i64
    }

    /// Offset from the UTC day start of a session start drawn from the user's local profile.
    pub(super) fn local_time(&mut self, weekend: bool) -> i64 {
        let table = if weekend { &self.tables.weekend } else { &self.tables.weekday };
        time_of_day(&mut self.rng, table) - self.tz_ms
    }

    pub(super) fn emit(&mut self, ts: i64, kind: EventKind, cents: u32) -> bool {
        if ts < self.win.start
            || ts >= self.win.end
            || ts < self.signup_ms
            || self.today >= DAILY_EVENT_CAP
            || matches!(self.phase, Phase::Churned { .. })
        {
            return false;
        }
        self.out.push(Rec { ts, user_kind: self.idx << 3 | kind.code(), cents });
        self.today += 1;
        self.last_ts = Some(self.last_ts.map_or(ts, |l| l.max(ts)));
        if self.returning {
            self.reactivated_ts = Some(self.reactivated_ts.map_or(ts, |r| r.min(ts)));
        }
        true
    }
}

/// Milliseconds into a (local) day, hour from the cumulative table, uniform within the hour.
pub(super) fn time_of_day(rng: &mut ChaCha8Rng, cum: &[f64; 24]) -> i64 {
    let u: f64 = rng.random();
    let hour = cum.iter().position(|&c| u < c).unwrap_or(23) as i64;
    hour * HOUR_MS + rng.random_range(0..HOUR_MS)
}

pub(super) fn is_weekend(ms: i64) -> bool {
    // 1970-01-01 was a Thursday, so day 0 has weekday index 3 with Monday = 0.
    let weekday = (ms.div_euclid(DAY_MS) + 3).rem_euclid(7);
    weekday >= 5
}

pub(super) fn exp1(rng: &mut ChaCha8Rng) -> f64 {
    Exp1.sample(rng)
}

/// Lognormal with median 1.
pub(super) fn lognormal(rng: &mut ChaCha8Rng, sigma: f64) -> f64 {
    let z: f64 = StandardNormal.sample(rng);
    (sigma * z).exp()
}

/// Number of failures before a success, with the given mean.
pub(super) fn geometric(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    let p_more = mean / (1.0 + mean);
    let u: f64 = rng.random();
    ((1.0 - u).ln() / p_more.ln()).min(1_000.0) as u32
}

pub(super) fn poisson(rng: &mut ChaCha8Rng, lambda: f64) -> u32 {
    if lambda <= 0.0 || !lambda.is_finite() {
        return 0;
    }
    if lambda < 30.0 {
        // Knuth's product method: cheapest for the tiny rates most user-days have.
        let limit = (-lambda).exp();
        let mut k = 0;
        let mut p: f64 = rng.random();
        while p > limit {
            k += 1;
            p *= rng.random::<f64>();
        }
        return k;
    }
    Poisson::new(lambda).map_or(0, |d| {
        let x: f64 = d.sample(rng);
        x.min(f64::from(DAILY_EVENT_CAP)) as u32
    })
}
