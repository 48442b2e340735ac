//! The rate limiter's unit tests: the GCRA arithmetic against an exact token-bucket model, and
//! the memory store's decisions, reloads and eviction.

use std::num::NonZeroU32;

use proptest::prelude::*;

use super::gcra::Tat;
use super::memory::{lock, NANOS_PER_SEC, USER_SHARDS};
use super::*;
use crate::error::retry_after_secs;

const SEC: u64 = NANOS_PER_SEC;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("nonzero")
}

fn window(rate: u32, burst: u32, period: u64) -> Window {
    Window::new("w", nz(rate), nz(burst), period)
}

/// Offers `count` requests at `now` to one window, committing the allowed ones.
fn offer(w: &Window, tat: &mut Tat, now: u64, count: usize) -> usize {
    let mut allowed = 0;
    for _ in 0..count {
        let o = w.check(*tat, now);
        if o.allowed {
            *tat = o.next;
            allowed += 1;
        }
    }
    allowed
}

fn keys(list: &[(&str, Option<Quota>)]) -> Vec<(Arc<str>, Option<Quota>)> {
    list.iter()
        .map(|(id, q)| (Arc::from(*id), q.clone()))
        .collect()
}

fn memory(limiters: &Limiters) -> &Memory {
    match &limiters.store {
        Store::Memory(m) => m,
        Store::Redis(_) => panic!("memory store expected"),
    }
}

fn allowed(d: &Decision) -> bool {
    matches!(d, Decision::Allowed(_))
}

/// Counts allowed requests of `key` offered at `times` (ns).
fn run(m: &Memory, key: u32, user: Option<u64>, times: impl Iterator<Item = u64>) -> usize {
    times.filter(|&t| allowed(&m.check(key, user, t))).count()
}

#[test]
fn fresh_window_admits_burst_then_one_per_interval() {
    let w = window(10, 3, SEC);
    let mut tat = Tat::default();
    assert_eq!(offer(&w, &mut tat, 0, 10), 3);
    // 100 ms later exactly one more; 99.999999 ms later none.
    assert_eq!(offer(&w, &mut tat.clone(), 100_000_000 - 1, 5), 0);
    assert_eq!(offer(&w, &mut tat, 100_000_000, 5), 1);
}

#[test]
fn issue_scenario_100_per_second_burst_10_offered_1000_per_second_for_10s() {
    // One request per millisecond over [0 s, 10 s]: 10 + 100 × 10 = 1010, exactly.
    let q = Quota {
        per_second: Some(nz(100)),
        burst: Some(nz(10)),
        ..Quota::default()
    };
    let l = Limiters::memory(&keys(&[("k", Some(q))]));
    let m = memory(&l);
    let got = run(m, 0, None, (0..=10_000).map(|ms| 1_000 + ms * 1_000_000));
    assert_eq!(got, 1010);
}

#[test]
fn fractional_intervals_do_not_drift() {
    // 700,000 per second: the interval 1428.57 ns must not round to 1428 (which would admit
    // 700,280 in a second). Asking every 1428 ns with room for 2 wastes nothing: exactly
    // 2 + 700,000 in a second.
    let w = window(700_000, 2, SEC);
    let mut tat = Tat::default();
    let mut n = 0;
    let mut t = 0;
    while t < SEC {
        n += offer(&w, &mut tat, t, 2);
        t += 1_428;
    }
    n += offer(&w, &mut tat, SEC, 2);
    assert_eq!(n, 2 + 700_000);
}

#[test]
fn retry_after_is_exact() {
    let w = window(3, 2, SEC);
    let mut tat = Tat::default();
    assert_eq!(offer(&w, &mut tat, 5, 2), 2);
    let o = w.check(tat, 5);
    assert!(!o.allowed);
    assert_eq!(o.wait, 333_333_334); // ceil(1e9 / 3)
    assert!(!w.check(tat, 5 + o.wait - 1).allowed);
    assert!(w.check(tat, 5 + o.wait).allowed);
}

#[test]
fn denial_by_one_window_spends_nothing_elsewhere() {
    let q = Quota {
        per_second: Some(nz(10)),
        per_minute: Some(nz(2)),
        per_user_per_second: Some(nz(5)),
        ..Quota::default()
    };
    let l = Limiters::memory(&keys(&[("k", Some(q))]));
    let m = memory(&l);
    assert_eq!(run(m, 0, Some(1), std::iter::repeat_n(0, 20)), 2);
    let before = *lock(&m.keys[0].as_ref().expect("key").windows);
    // 18 refusals by "1m" left "1s" and the user's bucket untouched.
    assert_eq!(before[0].a, 2 * SEC / 10);
    let user = lock(
        m.keys[0]
            .as_ref()
            .expect("key")
            .users
            .as_ref()
            .expect("users")
            .shard(1),
    )
    .get(&1)
    .copied();
    assert_eq!(user.map(|t| t.a), Some(2 * SEC / 5));
    // And a user bucket's refusal leaves the key windows alone.
    let q = Quota {
        per_minute: Some(nz(100)),
        per_user_per_second: Some(nz(1)),
        ..Quota::default()
    };
    let l = Limiters::memory(&keys(&[("k", Some(q))]));
    let m = memory(&l);
    assert_eq!(run(m, 0, Some(7), std::iter::repeat_n(0, 50)), 1);
    assert_eq!(run(m, 0, Some(8), std::iter::repeat_n(0, 1)), 1);
    assert_eq!(run(m, 0, None, std::iter::repeat_n(0, 200)), 98);
}

#[test]
fn limited_reports_longest_wait_and_headers() {
    let q = Quota {
        per_second: Some(nz(50)),
        burst: Some(nz(2)),
        per_minute: Some(nz(2000)),
        ..Quota::default()
    };
    let l = Limiters::memory(&keys(&[("k", Some(q))]));
    let m = memory(&l);
    let Decision::Allowed(info) = m.check(0, None, SEC) else {
        panic!("allowed expected")
    };
    assert_eq!(info.policy_header(), "\"1s\";q=50;w=1, \"1m\";q=2000;w=60");
    assert_eq!(info.ratelimit_header(), "\"1s\";r=1;t=1");
    assert!(allowed(&m.check(0, None, SEC)));
    match m.check(0, None, SEC) {
        Decision::Limited { info, retry_after } => {
            assert_eq!(retry_after, Duration::from_millis(20));
            assert_eq!(retry_after_secs(retry_after), 1);
            assert_eq!(info.ratelimit_header(), "\"1s\";r=0;t=1");
        }
        other => panic!("limited expected, got {other:?}"),
    }
}

#[test]
fn ratelimit_names_the_window_closest_to_exhaustion() {
    let q = Quota {
        per_second: Some(nz(100)),
        per_hour: Some(nz(3)),
        per_user_per_second: Some(nz(5)),
        ..Quota::default()
    };
    let l = Limiters::memory(&keys(&[("k", Some(q))]));
    let m = memory(&l);
    let Decision::Allowed(info) = m.check(0, Some(9), 0) else {
        panic!("allowed expected")
    };
    // 1h has 2 left (the user 4, 1s 99); it refills in 1200 s.
    assert_eq!(info.ratelimit_header(), "\"1h\";r=2;t=1200");
    assert_eq!(
        info.policy_header(),
        "\"1s\";q=100;w=1, \"1h\";q=3;w=3600, \"user-1s\";q=5;w=1"
    );
}

#[test]
fn remaining_is_capped_at_the_rate() {
    let q = Quota {
        per_second: Some(nz(5)),
        burst: Some(nz(100)),
        ..Quota::default()
    };
    let l = Limiters::memory(&keys(&[("k", Some(q))]));
    let Decision::Allowed(info) = memory(&l).check(0, None, 0) else {
        panic!("allowed expected")
    };
    assert_eq!(info.remaining(), 5);
}

#[test]
fn no_quota_is_unlimited() {
    let l = Limiters::memory(&keys(&[("a", None), ("b", Some(Quota::default()))]));
    let m = memory(&l);
    assert!(matches!(m.check(0, Some(1), 0), Decision::Unlimited));
    assert!(matches!(m.check(1, Some(1), 0), Decision::Unlimited));
    // A key with only a per-user limit is unlimited for requests without a user.
    let q = Quota {
        per_user_per_second: Some(nz(1)),
        ..Quota::default()
    };
    let l = Limiters::memory(&keys(&[("a", Some(q))]));
    let m = memory(&l);
    assert!(matches!(m.check(0, None, 0), Decision::Unlimited));
    assert!(allowed(&m.check(0, Some(1), 0)));
    assert!(!allowed(&m.check(0, Some(1), 0)));
}

#[test]
fn users_are_independent() {
    let q = Quota {
        per_user_per_second: Some(nz(2)),
        ..Quota::default()
    };
    let l = Limiters::memory(&keys(&[("a", Some(q.clone())), ("b", Some(q))]));
    let m = memory(&l);
    for user in 1..=1000u64 {
        assert_eq!(
            run(m, 0, Some(user), std::iter::repeat_n(0, 5)),
            2,
            "user {user}"
        );
    }
    // Same user id under another key: its own bucket.
    assert_eq!(run(m, 1, Some(1), std::iter::repeat_n(0, 5)), 2);
    assert_eq!(l.user_buckets(), 1001);
}

#[test]
fn rebuild_keeps_unchanged_resets_changed_drops_removed() {
    let q = |n| Quota {
        per_hour: Some(nz(n)),
        per_user_per_second: Some(nz(1)),
        ..Quota::default()
    };
    let l1 = Limiters::memory(&keys(&[
        ("same", Some(q(2))),
        ("changed", Some(q(2))),
        ("gone", Some(q(2))),
    ]));
    let m1 = memory(&l1);
    for key in 0..3 {
        assert_eq!(run(m1, key, Some(5), std::iter::repeat_n(0, 3)), 1);
        assert_eq!(run(m1, key, None, std::iter::repeat_n(0, 3)), 1);
    }
    // New order, one new key, one changed quota.
    let l2 = l1.rebuild(&keys(&[
        ("new", Some(q(2))),
        ("changed", Some(q(3))),
        ("same", Some(q(2))),
    ]));
    let m2 = memory(&l2);
    assert_eq!(
        run(m2, 2, None, std::iter::repeat_n(1, 3)),
        0,
        "same: no fresh burst"
    );
    assert_eq!(
        run(m2, 2, Some(5), std::iter::repeat_n(1, 3)),
        0,
        "same user kept"
    );
    assert_eq!(
        run(m2, 1, None, std::iter::repeat_n(1, 5)),
        3,
        "changed: fresh"
    );
    assert_eq!(run(m2, 0, None, std::iter::repeat_n(1, 5)), 2, "new: fresh");
    assert!(m2.keys.iter().flatten().all(|k| &*k.meta.id != "gone"));
    // The old generation still serves in-flight requests and shares the kept state.
    assert_eq!(run(m1, 0, None, std::iter::repeat_n(1, 3)), 0);
    assert_eq!(m2.epoch, m1.epoch);
}

#[test]
fn eviction_drops_idle_buckets_and_their_memory() {
    let q = Quota {
        per_user_per_second: Some(nz(5)),
        ..Quota::default()
    };
    let l = Limiters::memory(&keys(&[("k", Some(q))]));
    let m = memory(&l);
    for user in 0..100_000u64 {
        assert!(allowed(&m.check(0, Some(user), user)));
    }
    assert_eq!(l.user_buckets(), 100_000);
    let users = m.keys[0]
        .as_ref()
        .and_then(|k| k.users.as_ref())
        .expect("users");
    assert!(users.capacity() >= 100_000);
    // Not yet full again (one request of 5/s takes 200 ms to refill): nothing goes.
    m.evict_idle(SEC / 5 - 1);
    assert_eq!(l.user_buckets(), 100_000);
    m.evict_idle(SEC / 5 + 100_000);
    assert_eq!(l.user_buckets(), 0);
    assert!(users.capacity() <= USER_SHARDS * 64, "tables given back");
    // An evicted bucket behaves as a fresh one.
    assert_eq!(run(m, 0, Some(7), std::iter::repeat_n(SEC, 10)), 5);
}

#[test]
fn eviction_keeps_buckets_still_refilling() {
    let q = Quota {
        per_user_per_second: Some(nz(1)),
        ..Quota::default()
    };
    let l = Limiters::memory(&keys(&[("k", Some(q))]));
    let m = memory(&l);
    assert!(allowed(&m.check(0, Some(1), 0)));
    m.evict_idle(SEC / 2);
    assert!(!allowed(&m.check(0, Some(1), SEC / 2)), "evicted too early");
}

/// An independent model: a token bucket with exact rational arithmetic (levels scaled by
/// `period`, so one token = `period` units and time adds `rate` units per time unit).
struct Bucket {
    rate: u128,
    period: u128,
    cap: u128,
    level: u128,
    at: u64,
}

impl Bucket {
    fn new(rate: u32, burst: u32, period: u64) -> Bucket {
        let cap = u128::from(burst) * u128::from(period);
        Bucket {
            rate: rate.into(),
            period: period.into(),
            cap,
            level: cap,
            at: 0,
        }
    }

    fn take(&mut self, now: u64) -> bool {
        let elapsed = u128::from(now.saturating_sub(self.at));
        self.level = (self.level + elapsed * self.rate).min(self.cap);
        self.at = self.at.max(now);
        if self.level >= self.period {
            self.level -= self.period;
            true
        } else {
            false
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// GCRA decides exactly as the token bucket for any arrival sequence.
    #[test]
    fn matches_token_bucket_model(
        rate in 1u32..2_000,
        burst in 1u32..50,
        period_idx in 0usize..4,
        gaps in prop::collection::vec(0u64..3_000_000_000, 1..300),
    ) {
        let period = [1, 60, 3_600, 86_400][period_idx] * SEC;
        let w = window(rate, burst, period);
        let mut model = Bucket::new(rate, burst, period);
        let mut tat = Tat::default();
        let mut now = 0u64;
        for gap in gaps {
            now += gap % (period / u64::from(rate) * 3 + 1);
            let o = w.check(tat, now);
            prop_assert_eq!(o.allowed, model.take(now), "at {}", now);
            if o.allowed {
                tat = o.next;
                // remaining == whole tokens left in the model.
                prop_assert_eq!(u128::from(o.remaining), model.level / model.period);
            } else {
                // The wait is the exact first instant the model admits again.
                let need = model.period - model.level;
                prop_assert_eq!(u128::from(o.wait), need.div_ceil(model.rate));
            }
        }
    }

    /// A client that asks again exactly when told (`wait`) gets exactly
    /// burst + floor(span × rate / period) over a span starting from a full bucket.
    #[test]
    fn greedy_count_is_rate_times_span_plus_burst(
        rate in 1u32..100_000,
        burst in 1u32..1_000,
        period_idx in 0usize..4,
        span_steps in 0u64..2_000,
        span_extra in 0u64..1_000_000_000,
        start in 0u64..1_000_000_000_000,
    ) {
        let period = [1, 60, 3_600, 86_400][period_idx] * SEC;
        let w = window(rate, burst, period);
        let span = period / u64::from(rate) * span_steps + span_extra % (period / u64::from(rate) + 1);
        let end = start + span;
        let mut tat = Tat::default();
        let mut now = start;
        let mut n: u128 = 0;
        while now <= end {
            let o = w.check(tat, now);
            if o.allowed {
                tat = o.next;
                n += 1;
            } else {
                prop_assert!(o.wait > 0);
                now += o.wait;
            }
        }
        let expect = u128::from(burst)
            + u128::from(span) * u128::from(rate) / u128::from(period);
        prop_assert_eq!(n, expect);
    }

    /// Through `Limiters`: several windows together admit exactly what the tightest
    /// combination of their greedy counts allows, and never more than any one of them.
    #[test]
    fn multi_window_never_exceeds_any_window(
        ps in 1u32..50,
        burst in 1u32..20,
        pm in 1u32..500,
        offers in prop::collection::vec(0u64..200_000_000, 1..400),
    ) {
        let q = Quota {
            per_second: Some(nz(ps)),
            burst: Some(nz(burst)),
            per_minute: Some(nz(pm)),
            ..Quota::default()
        };
        let l = Limiters::memory(&keys(&[("k", Some(q))]));
        let m = memory(&l);
        let mut now = 0;
        let mut times = Vec::new();
        for gap in offers {
            now += gap;
            times.push(now);
        }
        let n = run(m, 0, None, times.iter().copied()) as u128;
        let span = u128::from(now);
        prop_assert!(n <= u128::from(burst) + span * u128::from(ps) / u128::from(SEC));
        prop_assert!(n <= u128::from(pm) + span * u128::from(pm) / u128::from(60 * SEC));
    }
}
