//! Rate limiting: per API key and per (key, On-Behalf-Of user), in memory or shared through Redis.
//!
//! The proxy asks [`Limiters::check`] once per authenticated request, after the route allowlist
//! and before the rules, and gets a [`Decision`]: allowed (with the numbers for the
//! `RateLimit-Policy` / `RateLimit` response fields), limited (429 with `Retry-After`), or
//! unlimited (the key has no quota). One [`Limiters`] belongs to one policy generation; a reload
//! calls [`Limiters::rebuild`], which carries the state of unchanged keys over.
//!
//! # Semantics
//!
//! Each limit of a key is a *window* enforced with GCRA (the generic cell rate algorithm, the
//! "virtual scheduling" form of a token bucket):
//!
//! | policy field | window | rate | burst (bucket size) |
//! |---|---|---|---|
//! | `per_second` | `"1s"` | `per_second` per second | `burst`, default `per_second` |
//! | `per_minute` | `"1m"` | `per_minute` per minute | `per_minute` |
//! | `per_hour` | `"1h"` | `per_hour` per hour | `per_hour` |
//! | `per_day` | `"1d"` | `per_day` per day | `per_day` |
//! | `per_user_per_second` | `"user-1s"` | that many per second, for each On-Behalf-Of user of the key | the same number |
//!
//! A window admits `burst` requests at once from idle and then one request every
//! `period / rate`; over any span `S` starting from a full bucket a client that keeps asking is
//! allowed exactly `burst + floor(S × rate / period)` requests. The longer windows take their own
//! amount as burst (as governor's `Quota::per_minute` does): a key with `per_minute: 2000` may
//! spend its 2000 in the first second, and then gets one request every 30 ms. Bounding every
//! sliding minute to 2000 would need a request log, not a bucket; pair `per_minute` with
//! `per_second` to cap the burst rate. `burst` without `per_second` has no effect.
//!
//! A request must pass every window of its key and, when it carries an On-Behalf-Of user and the
//! key has `per_user_per_second`, that user's bucket. The decision is all or nothing: a request
//! refused by any window spends nothing from the others (a request refused by a user's bucket
//! does not eat the key's allowance, and one refused by `per_day` does not eat `per_second`'s).
//! `Retry-After` is the wait until every window would admit the request, in whole seconds
//! rounded up, at least 1. Requests without a user, and keys without `per_user_per_second`,
//! have no user bucket.
//!
//! Response fields (draft-ietf-httpapi-ratelimit-headers-09): `RateLimit-Policy` lists every
//! window of the key, e.g. `"1s";q=50;w=1, "1m";q=2000;w=60, "user-1s";q=5;w=1`, where `q` is the
//! rate and `w` the period in seconds (the burst is not advertised). `RateLimit` names one window:
//! the one closest to exhaustion (fewest requests left; on a tie the one that takes longest to
//! refill), or on a 429 the window that demands the longest wait: `"1s";r=12;t=1`, where `r` is
//! how many more requests that window would admit right now (capped at `q`, so a client that
//! trusts `r` is never refused by that window) and `t` the seconds, rounded up, until the window
//! is full again. A key without quota gets [`Decision::Unlimited`] and no fields.
//!
//! Reloads ([`Limiters::rebuild`]): a key whose id and whole quota are unchanged keeps its
//! state, user buckets included, so a reload hands nobody a fresh burst; a key whose quota
//! changed in any field starts with full buckets under the new quota; removed keys are dropped.
//!
//! Stores: `memory` (the default) keeps the state in this process, so each replica enforces the
//! limit on its own. `redis` keeps it in Redis, so all replicas share one limit; see
//! `ratelimit/redis.rs` for its keys and failure behaviour (`on_error`).
//!
//! Idle user buckets: [`Limiters::evict_idle`] drops the buckets that are full again (they are
//! then indistinguishable from a bucket never used, so eviction changes no decision). Call it on
//! a timer; the buckets left in between are those of users seen during the last interval plus
//! one second. A bucket is a 24-byte hash-table entry (user id, arrival time) plus a control
//! byte; with the table's load factor that is 33 to 53 bytes per bucket (measured: 32.8 bytes at
//! 100,000 users, 52.4 at 1,000,000). [`Limiters::user_buckets`] counts them.
//!
//! # Why not governor
//!
//! governor's limiters cannot be checked without spending: there is no peek and no undo. Checking
//! several governor limiters in a row spends the allowance of every window that passed before
//! the one that refused, which is exactly what the all-or-nothing rule above forbids. So the
//! GCRA arithmetic lives here, in `Window`: a few lines of integer arithmetic, tested against
//! an independent token-bucket model by property tests. The Redis script runs the same
//! arithmetic, so both stores answer alike.
//!
//! Times are integers: each theoretical arrival time is `a + b / rate` time units (nanoseconds
//! in memory, microseconds in Redis) with `0 <= b < rate`, so emission intervals such as
//! `1 s / 3` accumulate no rounding error and the counts above hold exactly.
//!
//! The memory store reads [`std::time::Instant`], the OS monotonic clock (`CLOCK_MONOTONIC`,
//! the same source as `governor::clock::MonotonicClock`). governor's default `quanta` clock is
//! avoided on purpose: it calibrates the TSC and misbehaves on some virtual machines (governor
//! issue #299).

mod redis;
#[cfg(test)]
mod test_server;

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::error::ceil_secs;
use crate::policy::Quota;

pub use self::redis::{COMMAND_TIMEOUT, REDIS_RETRY_PAUSE};

/// What the Redis store answers while Redis is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnError {
    /// Let requests through ([`Decision::Unlimited`]: no counts are known).
    Allow,
    /// Refuse requests ([`Decision::Limited`] with a one-second `retry_after`).
    Deny,
}

/// The answer for one request.
#[derive(Clone, Debug)]
pub enum Decision {
    Allowed(Info),
    Limited {
        info: Info,
        retry_after: Duration,
    },
    /// The key has no quota (or, with `on_error: allow`, Redis is unreachable): no fields to send.
    Unlimited,
}

/// What the response fields report; see the module docs for their meaning.
#[derive(Clone, Debug)]
pub struct Info {
    policy: HeaderValue,
    window: &'static str,
    remaining: u64,
    reset_secs: u64,
}

/// Failure to set up a store.
#[derive(Debug)]
pub enum Error {
    /// `rate_limit.redis.url` is not a Redis URL.
    RedisUrl(::redis::RedisError),
}

/// All rate limiters of one policy generation.
///
/// Keys are addressed by their compact index in the policy's key list. Cheap to share behind the
/// policy's `Arc`; every method takes `&self`.
pub struct Limiters {
    store: Store,
}

enum Store {
    Memory(Memory),
    Redis(self::redis::RedisLimiters),
}

struct Memory {
    /// Zero of the nanosecond clock; carried over by `rebuild` because kept state refers to it.
    epoch: Instant,
    keys: Box<[Option<Arc<MemKey>>]>,
}

/// One key's limiters in memory: shared by consecutive generations while its quota is unchanged.
struct MemKey {
    meta: KeyMeta,
    /// One theoretical arrival time per key window, in `meta.windows` order. A per-key lock, held
    /// for a few dozen instructions; it makes the multi-window decision atomic.
    windows: Mutex<[Tat; MAX_KEY_WINDOWS]>,
    users: Option<UserBuckets>,
}

/// The immutable description of one key's windows, in the time unit of its store.
struct KeyMeta {
    id: Arc<str>,
    quota: Quota,
    windows: Box<[Window]>,
    user: Option<Window>,
    /// `RateLimit-Policy`, built once per key.
    policy: HeaderValue,
}

const MAX_KEY_WINDOWS: usize = 4;
const MAX_WINDOWS: usize = MAX_KEY_WINDOWS + 1;

/// Per-user buckets of one key: a small fixed set of locked maps, so that requests of different
/// users rarely wait on one another and eviction never stops the whole key. std's SipHash keeps
/// the maps safe from callers who choose user ids to collide; a handful of sharded maps is all
/// that is needed here, so no dashmap dependency.
struct UserBuckets {
    shards: Box<[Mutex<HashMap<u64, Tat>>]>,
}

const USER_SHARDS: usize = 16;

/// A theoretical arrival time `a + b / rate` in the window's time unit (`0 <= b < rate`).
/// The zero value is a full bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tat {
    a: u64,
    b: u32,
}

/// One GCRA window with its parameters precomputed in integer form for one time unit.
///
/// The emission interval `period / rate` is `step_whole + step_frac / rate`; the bucket depth
/// `burst × period / rate` is `limit_whole + limit_frac / rate`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Window {
    name: &'static str,
    rate: u64,
    period: u64,
    step_whole: u64,
    step_frac: u64,
    limit_whole: u64,
    limit_frac: u64,
}

/// The result of trying one request against one window (times in the window's unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Outcome {
    allowed: bool,
    /// The state to store if every window allows.
    next: Tat,
    /// Requests this window would still admit right now, after this one if allowed; uncapped.
    remaining: u64,
    /// Time until the window is full again (after this request if allowed).
    reset: u64,
    /// Time until this window would admit the request; 0 if allowed.
    wait: u64,
}

/// One window's outcome, in real time, for choosing what to report.
#[derive(Clone, Copy, Debug)]
struct Report {
    name: &'static str,
    rate: u64,
    allowed: bool,
    remaining: u64,
    reset: Duration,
    wait: Duration,
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

const NANOS_PER_SEC: u64 = 1_000_000_000;

impl Limiters {
    /// The in-memory store. `keys`: (key id, quota) in policy order; index `i` in this slice is
    /// the key's compact index.
    pub fn memory(keys: &[(Arc<str>, Option<Quota>)]) -> Limiters {
        Limiters {
            store: Store::Memory(Memory {
                epoch: Instant::now(),
                keys: keys
                    .iter()
                    .map(|(id, quota)| MemKey::new(id, quota.as_ref()?).map(Arc::new))
                    .collect(),
            }),
        }
    }

    /// The Redis store. Does not need Redis to be up: the connection is made in the background
    /// and remade whenever it breaks; until then `on_error` applies. Fails only on a bad URL.
    pub async fn redis(
        url: &str,
        on_error: OnError,
        keys: &[(Arc<str>, Option<Quota>)],
    ) -> Result<Limiters, Error> {
        let store = self::redis::RedisLimiters::new(url, on_error, keys).await?;
        Ok(Limiters {
            store: Store::Redis(store),
        })
    }

    /// The limiters of the next policy generation, in the same store. Keys whose id and quota
    /// are unchanged keep their state; changed quotas start with full buckets; removed keys are
    /// dropped. A change of store kind or Redis URL needs [`Limiters::memory`] /
    /// [`Limiters::redis`] instead. Key ids are assumed unique, as the policy compiler ensures.
    pub fn rebuild(&self, keys: &[(Arc<str>, Option<Quota>)]) -> Limiters {
        let store = match &self.store {
            Store::Memory(memory) => Store::Memory(memory.rebuild(keys)),
            Store::Redis(redis) => Store::Redis(redis.rebuild(keys)),
        };
        Limiters { store }
    }

    /// Decides one request of key `key` (its compact index) on behalf of `user`.
    ///
    /// Memory store: no await, no allocation but a user's first bucket, one per-key lock and one
    /// per-shard lock. Redis store: one round trip, at most [`COMMAND_TIMEOUT`].
    pub async fn check(&self, key: u32, user: Option<u64>) -> Decision {
        match &self.store {
            Store::Memory(memory) => memory.check(key, user, memory.now()),
            // Boxed: the Redis round trip's state would otherwise be carried by every
            // request's future, memory store or not.
            Store::Redis(redis) => Box::pin(redis.check(key, user)).await,
        }
    }

    /// Drops the per-user buckets that are full again, and gives their memory back. Cheap
    /// enough to call every few seconds; the lead's timer calls it on the current generation
    /// (kept keys share their buckets with older generations). A no-op for Redis, where the
    /// keys expire by themselves.
    pub fn evict_idle(&self) {
        if let Store::Memory(memory) = &self.store {
            memory.evict_idle(memory.now());
        }
    }

    /// How many per-user buckets the memory store holds (0 for Redis): for a metric.
    pub fn user_buckets(&self) -> usize {
        match &self.store {
            Store::Memory(memory) => memory.user_buckets(),
            Store::Redis(_) => 0,
        }
    }

    /// How many requests met an unreachable or failing Redis since the store was created
    /// (carried over by `rebuild`); 0 for the memory store.
    pub fn redis_errors(&self) -> u64 {
        match &self.store {
            Store::Memory(_) => 0,
            Store::Redis(redis) => redis.errors(),
        }
    }
}

impl fmt::Debug for Limiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, keys) = match &self.store {
            Store::Memory(m) => ("memory", m.keys.len()),
            Store::Redis(r) => ("redis", r.len()),
        };
        f.debug_struct("Limiters")
            .field("store", &kind)
            .field("keys", &keys)
            .finish()
    }
}

impl Memory {
    fn now(&self) -> u64 {
        // u64 nanoseconds last 584 years of uptime.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn rebuild(&self, keys: &[(Arc<str>, Option<Quota>)]) -> Memory {
        let old: HashMap<&str, &Arc<MemKey>> = self
            .keys
            .iter()
            .flatten()
            .map(|k| (&*k.meta.id, k))
            .collect();
        let keys = keys
            .iter()
            .map(|(id, quota)| {
                let quota = quota.as_ref()?;
                match old.get(&**id) {
                    Some(kept) if kept.meta.quota == *quota => Some(Arc::clone(kept)),
                    _ => MemKey::new(id, quota).map(Arc::new),
                }
            })
            .collect();
        Memory {
            epoch: self.epoch,
            keys,
        }
    }

    fn check(&self, key: u32, user: Option<u64>, now: u64) -> Decision {
        let Some(Some(key)) = self.keys.get(key as usize) else {
            debug_assert!((key as usize) < self.keys.len(), "key index out of range");
            return Decision::Unlimited;
        };
        key.check(user, now)
    }

    fn evict_idle(&self, now: u64) {
        for key in self.keys.iter().flatten() {
            if let Some(users) = &key.users {
                users.evict(now);
            }
        }
    }

    fn user_buckets(&self) -> usize {
        self.keys
            .iter()
            .flatten()
            .filter_map(|k| k.users.as_ref())
            .map(UserBuckets::len)
            .sum()
    }
}

impl MemKey {
    /// `None` when the quota sets no window at all.
    fn new(id: &Arc<str>, quota: &Quota) -> Option<MemKey> {
        let meta = KeyMeta::new(id, quota, NANOS_PER_SEC)?;
        let users = meta.user.as_ref().map(|_| UserBuckets::new());
        Some(MemKey {
            meta,
            windows: Mutex::new([Tat::default(); MAX_KEY_WINDOWS]),
            users,
        })
    }

    fn check(&self, user: Option<u64>, now: u64) -> Decision {
        let meta = &self.meta;
        let mut outcomes = [Outcome::default(); MAX_WINDOWS];
        let mut reports = [Report::default(); MAX_WINDOWS];
        let mut all = true;
        let mut n = 0;

        let mut tats = lock(&self.windows);
        for (window, tat) in meta.windows.iter().zip(tats.iter()) {
            let outcome = window.check(*tat, now);
            all &= outcome.allowed;
            outcomes[n] = outcome;
            reports[n] = window.report(&outcome, Duration::from_nanos);
            n += 1;
        }
        // Lock order: key, then shard. evict() takes shard locks only, so no cycle.
        if let (Some(window), Some(users), Some(user)) = (&meta.user, &self.users, user) {
            let mut shard = lock(users.shard(user));
            let tat = shard.get(&user).copied().unwrap_or_default();
            let outcome = window.check(tat, now);
            all &= outcome.allowed;
            reports[n] = window.report(&outcome, Duration::from_nanos);
            n += 1;
            if all {
                shard.insert(user, outcome.next);
            }
        }
        if all {
            for (tat, outcome) in tats.iter_mut().zip(&outcomes[..meta.windows.len()]) {
                *tat = outcome.next;
            }
        }
        drop(tats);
        decide(&meta.policy, &reports[..n])
    }
}

impl KeyMeta {
    /// Windows in `units_per_sec` time units; `None` when the quota sets no window.
    fn new(id: &Arc<str>, quota: &Quota, units_per_sec: u64) -> Option<KeyMeta> {
        let mut windows = Vec::with_capacity(MAX_KEY_WINDOWS);
        if let Some(rate) = quota.per_second {
            let burst = quota.burst.unwrap_or(rate);
            windows.push(Window::new("1s", rate, burst, units_per_sec));
        }
        for (name, rate, secs) in [
            ("1m", quota.per_minute, 60),
            ("1h", quota.per_hour, 3_600),
            ("1d", quota.per_day, 86_400),
        ] {
            if let Some(rate) = rate {
                windows.push(Window::new(name, rate, rate, secs * units_per_sec));
            }
        }
        let user = quota
            .per_user_per_second
            .map(|rate| Window::new("user-1s", rate, rate, units_per_sec));
        if windows.is_empty() && user.is_none() {
            return None;
        }
        let policy = policy_header(windows.iter().chain(&user), units_per_sec);
        Some(KeyMeta {
            id: Arc::clone(id),
            quota: quota.clone(),
            windows: windows.into_boxed_slice(),
            user,
            policy,
        })
    }
}

fn policy_header<'a>(windows: impl Iterator<Item = &'a Window>, units_per_sec: u64) -> HeaderValue {
    let mut text = String::new();
    for window in windows {
        if !text.is_empty() {
            text.push_str(", ");
        }
        let secs = window.period / units_per_sec.max(1);
        text.push_str(&format!("\"{}\";q={};w={}", window.name, window.rate, secs));
    }
    // Only ASCII digits, letters and punctuation go in, so this cannot fail.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

impl UserBuckets {
    fn new() -> UserBuckets {
        UserBuckets {
            shards: (0..USER_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, user: u64) -> &Mutex<HashMap<u64, Tat>> {
        // Fibonacci hashing spreads sequential ids; the map inside still uses SipHash.
        let i = (user.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize;
        &self.shards[i % self.shards.len()]
    }

    fn evict(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut map = lock(shard);
            map.retain(|_, tat| !tat.is_full_at(now));
            // retain() keeps the table; give it back once it is mostly empty, or 100,000 users
            // seen once would pin their memory forever.
            if map.capacity() > 64 && map.len() * 4 < map.capacity() {
                map.shrink_to_fit();
            }
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(s).capacity()).sum()
    }
}

/// Nothing panics while these locks are held, but if something ever did, the state inside is
/// still a valid set of arrival times: keep going rather than fail every later request.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Tat {
    /// A bucket whose arrival time has passed is full: the same as a bucket never used.
    fn is_full_at(&self, now: u64) -> bool {
        self.a < now || (self.a == now && self.b == 0)
    }
}

impl Window {
    /// `rate` requests per `period` time units, at most `burst` at once.
    fn new(name: &'static str, rate: NonZeroU32, burst: NonZeroU32, period: u64) -> Window {
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
    fn check(&self, tat: Tat, now: u64) -> Outcome {
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

    fn report(&self, outcome: &Outcome, to_duration: fn(u64) -> Duration) -> Report {
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

/// Turns the outcomes of every window of one request into the answer. `reports` is not empty.
fn decide(policy: &HeaderValue, reports: &[Report]) -> Decision {
    let info = |r: &Report| Info {
        policy: policy.clone(),
        window: r.name,
        remaining: r.remaining.min(r.rate),
        reset_secs: ceil_secs(r.reset),
    };
    // The refusing window with the longest wait, if any.
    if let Some(worst) = reports.iter().filter(|r| !r.allowed).max_by_key(|r| r.wait) {
        return Decision::Limited {
            info: info(worst),
            retry_after: worst.wait,
        };
    }
    match reports
        .iter()
        .min_by_key(|r| (r.remaining.min(r.rate), std::cmp::Reverse(r.reset)))
    {
        Some(closest) => Decision::Allowed(info(closest)),
        None => Decision::Unlimited,
    }
}

impl Info {
    /// `RateLimit-Policy`: every window of the key. A shared, prebuilt value: cloning is a
    /// reference-count increment.
    pub fn policy_header(&self) -> HeaderValue {
        self.policy.clone()
    }

    /// `RateLimit`: the window closest to exhaustion, e.g. `"1s";r=12;t=1`. Formatted on the
    /// stack; one small allocation for the header value.
    pub fn ratelimit_header(&self) -> HeaderValue {
        // Longest case: 9 + 3 + 20 + 3 + 20 = 55 bytes. Digits by itoa: no `fmt` per request.
        let mut buf = [0u8; 64];
        let mut len = 0;
        let (mut remaining, mut reset) = (itoa::Buffer::new(), itoa::Buffer::new());
        for part in [
            "\"",
            self.window,
            "\";r=",
            remaining.format(self.remaining),
            ";t=",
            reset.format(self.reset_secs),
        ] {
            buf[len..len + part.len()].copy_from_slice(part.as_bytes());
            len += part.len();
        }
        HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The reported window's name (`"1s"`, `"1m"`, `"1h"`, `"1d"` or `"user-1s"`).
    pub fn window(&self) -> &'static str {
        self.window
    }

    /// Requests the reported window would still admit (`r`).
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::RedisUrl(e) => write!(f, "rate_limit.redis.url: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::RedisUrl(e) => Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::retry_after_secs;
    use proptest::prelude::*;

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
}
