//! The GCRA arithmetic of one window: its parameters in integer form, the theoretical arrival
//! time it keeps, and the check that admits or refuses one request, exactly (see the module docs
//! of [`super`] for the semantics). Shared by both stores; the Redis script mirrors
//! [`Window::check`] line by line.

use std::num::NonZeroU32;
use std::time::Duration;

/// A theoretical arrival time `a + b / rate` in the window's time unit (`0 <= b < rate`).
/// The zero value is a full bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Tat {
    pub(super) a: u64,
    pub(super) b: u32,
}

/// One GCRA window with its parameters precomputed in integer form for one time unit.
///
/// The emission interval `period / rate` is `step_whole + step_frac / rate`; the bucket depth
/// `burst × period / rate` is `limit_whole + limit_frac / rate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Window {
    pub(super) name: &'static str,
    pub(super) rate: u64,
    pub(super) period: u64,
    pub(super) step_whole: u64,
    pub(super) step_frac: u64,
    pub(super) limit_whole: u64,
    pub(super) limit_frac: u64,
}

/// The result of trying one request against one window (times in the window's unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Outcome {
    pub(super) allowed: bool,
    /// The state to store if every window allows.
    pub(super) next: Tat,
    /// Requests this window would still admit right now, after this one if allowed; uncapped.
    pub(super) remaining: u64,
    /// Time until the window is full again (after this request if allowed).
    pub(super) reset: u64,
    /// Time until this window would admit the request; 0 if allowed.
    pub(super) wait: u64,
}

/// One window's outcome, in real time, for choosing what to report.
#[derive(Clone, Copy, Debug)]
pub(super) struct Report {
    pub(super) name: &'static str,
    pub(super) rate: u64,
    pub(super) allowed: bool,
    pub(super) remaining: u64,
    pub(super) reset: Duration,
    pub(super) wait: Duration,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            name: "",
            rate: 0,
            allowed: true,
            remaining: 0,
            reset: Duration::ZERO,
            wait: Duration::ZERO,
        }
    }
}

impl Tat {
    /// A bucket whose arrival time has passed is full: the same as a bucket never used.
    pub(super) fn is_full_at(&self, now: u64) -> bool {
        self.a < now || (self.a == now && self.b == 0)
    }
}

impl Window {
    /// `rate` requests per `period` time units, at most `burst` at once.
    pub(super) fn new(
        name: &'static str,
        rate: NonZeroU32,
        burst: NonZeroU32,
        period: u64,
    ) -> Window {
        let rate = u64::from(rate.get());
        let depth = u128::from(burst.get()) * u128::from(period);
        Window {
            name,
            rate,
            period,
            step_whole: period / rate,
            step_frac: period % rate,
            // burst ≤ 2^32 and period ≤ 2^47 ns (a day), so depth / rate fits in u64.
            limit_whole: u64::try_from(depth / u128::from(rate)).unwrap_or(u64::MAX),
            limit_frac: u64::try_from(depth % u128::from(rate)).unwrap_or(0),
        }
    }

    /// GCRA: the request is admitted if its arrival time, pushed one emission interval later,
    /// stays within the bucket depth of `now`. Mirrored line by line in the Redis script.
    pub(super) fn check(&self, tat: Tat, now: u64) -> Outcome {
        let (a, b) = if tat.a < now {
            (now, 0)
        } else {
            (tat.a, u64::from(tat.b))
        };
        let mut next_a = a.saturating_add(self.step_whole);
        let mut next_b = b + self.step_frac;
        if next_b >= self.rate {
            next_b -= self.rate;
            next_a = next_a.saturating_add(1);
        }
        let d = next_a - now;
        let rate = u128::from(self.rate);
        if d < self.limit_whole || (d == self.limit_whole && next_b <= self.limit_frac) {
            // Room left, scaled by rate: (limit - (next - now)) × rate.
            let room = u128::from(self.limit_whole - d) * rate + u128::from(self.limit_frac)
                - u128::from(next_b);
            Outcome {
                allowed: true,
                // next_b < rate ≤ u32::MAX.
                next: Tat {
                    a: next_a,
                    b: next_b as u32,
                },
                remaining: u64::try_from(room / u128::from(self.period)).unwrap_or(u64::MAX),
                reset: d + u64::from(next_b > 0),
                wait: 0,
            }
        } else {
            // Excess, scaled by rate: ((next - now) - limit) × rate > 0; round the wait up.
            let excess = u128::from(d - self.limit_whole) * rate + u128::from(next_b)
                - u128::from(self.limit_frac);
            Outcome {
                allowed: false,
                next: tat,
                remaining: 0,
                reset: (a - now) + u64::from(b > 0),
                wait: u64::try_from(excess.div_ceil(rate)).unwrap_or(u64::MAX),
            }
        }
    }

    pub(super) fn report(&self, outcome: &Outcome, to_duration: fn(u64) -> Duration) -> Report {
        Report {
            name: self.name,
            rate: self.rate,
            allowed: outcome.allowed,
            remaining: outcome.remaining,
            reset: to_duration(outcome.reset),
            wait: to_duration(outcome.wait),
        }
    }
}
