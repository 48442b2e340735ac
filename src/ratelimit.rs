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
//! GCRA arithmetic lives here, in `gcra::Window`: a few lines of integer arithmetic, tested
//! against an independent token-bucket model by property tests. The Redis script runs the same
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

mod gcra;
mod memory;
mod redis;
#[cfg(test)]
mod test_server;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use self::gcra::{Report, Window};
use self::memory::Memory;
use crate::error::ceil_secs;
use crate::policy::{Quota, RedisStore};

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
    /// `rate_limit.redis.url` (or a node) is not a Redis URL.
    RedisUrl(::redis::RedisError),
    /// Another `rate_limit.redis` setting cannot be used (an unreadable `ca_file`).
    RedisConfig(String),
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

impl Limiters {
    /// The in-memory store. `keys`: (key id, quota) in policy order; index `i` in this slice is
    /// the key's compact index.
    pub fn memory(keys: &[(Arc<str>, Option<Quota>)]) -> Limiters {
        Limiters {
            store: Store::Memory(Memory::new(keys)),
        }
    }

    /// The Redis store. Does not need Redis to be up: the connection is made in the background
    /// and remade whenever it breaks; until then `on_error` applies. Fails only on a bad URL or
    /// an unreadable `ca_file`.
    pub async fn redis(
        store: &RedisStore,
        keys: &[(Arc<str>, Option<Quota>)],
    ) -> Result<Limiters, Error> {
        let store = self::redis::RedisLimiters::new(store, keys).await?;
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
        self.check_at(key, user, std::time::Instant::now()).await
    }

    /// [`Limiters::check`] at `at`, the request's arrival (the memory store's clock: one clock
    /// read per request fewer; Redis reads its own).
    pub async fn check_at(&self, key: u32, user: Option<u64>, at: std::time::Instant) -> Decision {
        match &self.store {
            Store::Memory(memory) => memory.check(key, user, memory.at(at)),
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
            Error::RedisConfig(e) => write!(f, "rate_limit.redis: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::RedisUrl(e) => Some(e),
            Error::RedisConfig(_) => None,
        }
    }
}

#[cfg(test)]
mod tests;
