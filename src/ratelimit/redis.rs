//! The Redis store: every replica of the gateway shares one limit per key.
//!
//! One round trip per request: a Lua script (sent as `EVALSHA`, loaded on `NOSCRIPT`) runs the
//! same GCRA arithmetic as [`Window::check`](super::Window) for every window of the key and the
//! user's bucket, on Redis's own clock (`TIME`, microseconds), and stores the new state only if
//! every window admits the request. Redis runs a script atomically, so concurrent replicas
//! cannot both take the last request.
//!
//! Keys: `qbgate:{<key id>}:v2:<quota>` (each key window's arrival time) and
//! `qbgate:{<key id>}:v2:<quota>:u:<user>` (one user's bucket), plain strings of packed doubles
//! read with one `MGET` and written with `SET ... PX`. The `{<key id>}` hash tag puts all keys of
//! one API key in one Redis Cluster slot, as a multi-key script requires. The quota is part of
//! the name, so a changed quota starts fresh and an unchanged one keeps its state across reloads
//! and replicas. Every write expires the value at the moment the bucket is full again, so idle
//! state vanishes by itself and exactly when it no longer matters. `v2` is the format's version:
//! the hashes of earlier releases (`v1`) are never read, and expire by themselves.
//!
//! Servers (`connect.rs`): one server by `url`, the primary that Sentinel names, or a Redis
//! Cluster; over TLS (`rediss://`, with `ca_file` trusted besides the built-in roots), with an
//! ACL user from the url and a password from the policy's secret reference. Concurrent requests
//! share one multiplexed connection (per Cluster node), so their script calls travel pipelined.
//!
//! Failures: the connection is made in the background (a gateway starts while Redis is down)
//! and remade whenever a request fails on it (for Sentinel, by asking the sentinels again for
//! the primary, which is how a failover is followed). Each command is bounded by
//! [`COMMAND_TIMEOUT`], so a stalled Redis delays a request by at most that. While Redis is
//! unreachable or failing, requests get `on_error` (`allow`: [`Decision::Unlimited`], `deny`:
//! [`Decision::Limited`] with a one-second wait), each such request counts in
//! [`Limiters::redis_errors`](super::Limiters::redis_errors), a warning is logged at most once
//! every [`WARN_EVERY`], and for [`REDIS_RETRY_PAUSE`] after a failure requests do not wait on
//! Redis at all (so an unreachable Redis costs neither latency nor a connection attempt per
//! request). Recovery is logged once.
//!
//! Precision: the script's numbers are Lua doubles. Arrival times (about 1.8e15 µs today) and
//! the admit comparison stay integers far below 2^53, so decisions are exact; only the reported
//! `remaining` of very large day quotas (`per_day × 8.64e10` over 2^53) may be off by one.
//! Stored times are doubles too, so they are kept exactly. Needs Redis 5 or later (scripts that
//! write after `TIME`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ::redis::{Cmd, ErrorKind, RedisResult, RedisWrite, Script, Value};
use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

use self::connect::{Conn, Connector};
use super::{decide, Decision, Error, Info, KeyMeta, OnError, Quota, Report, MAX_WINDOWS};
use crate::policy::RedisStore;

mod connect;

/// Longest a request waits on Redis (connect or reply). Above a healthy Redis's latency (well
/// under a millisecond nearby) by two orders of magnitude, and short enough that a stalled
/// Redis is noticed before clients time out.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(250);

/// After a failure, requests skip Redis (and get `on_error`) for this long before trying again.
pub const REDIS_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// At most one warning per this interval while Redis fails.
const WARN_EVERY: Duration = Duration::from_secs(5);

const MICROS_PER_SEC: u64 = 1_000_000;

/// Bytes of one window's parameters in the script's arguments: six little-endian doubles.
const PARAMS_LEN: usize = 48;

/// `KEYS[1]`: the key's windows; `KEYS[2]`, if given: the user's bucket. Each is a string of
/// little-endian doubles, two per window: the arrival time `a` and its fraction `b` (see `Tat`).
/// `ARGV[1]`: the key windows' parameters, six doubles each (rate, period, step_whole, step_frac,
/// limit_whole, limit_frac: see `Window`), none if the key only limits users; `ARGV[2]`, with
/// `KEYS[2]`: the user window's. Returns one string of decimals separated by spaces: allowed
/// (1/0), then per window: remaining, reset µs, wait µs.
///
/// Kept lean because redis-server runs it for every request: packed doubles (`struct`, one C call
/// per window) rather than decimal strings and hash fields, one `MGET` and at most two
/// `SET ... PX`, nothing written on a refusal.
const SCRIPT: &str = r"
local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]
local kp, up = ARGV[1], ARGV[2]
local n = #kp / 48
local sk, su
if up == nil then
  sk = redis.call('GET', KEYS[1])
elseif n == 0 then
  su = redis.call('GET', KEYS[2])
else
  local v = redis.call('MGET', KEYS[1], KEYS[2])
  sk, su = v[1], v[2]
end
-- Anything this script did not write counts as a full bucket.
if sk and #sk ~= 16 * n then sk = false end
if su and #su ~= 16 then su = false end

local unpack_, floor = struct.unpack, math.floor
local total = n
if up then total = n + 1 end
local ok = 1
local out = { 0 }
local nxt = {}
local tk, tu = 0, 0
for w = 1, total do
  local p, pp, s, sp = kp, 48 * w - 47, sk, 16 * w - 15
  if w > n then p, pp, s, sp = up, 1, su, 1 end
  local rate, period, sw, sf, lw, lf = unpack_('<dddddd', p, pp)
  local a, b = now, 0
  if s then
    a, b = unpack_('<dd', s, sp)
    if a < now then a = now; b = 0 end
  end
  local na, nb = a + sw, b + sf
  if nb >= rate then na = na + 1; nb = nb - rate end
  local d = na - now
  local o = 3 * w - 1
  if d < lw or (d == lw and nb <= lf) then
    local reset = d
    if nb > 0 then reset = reset + 1 end
    out[o] = floor(((lw - d) * rate + lf - nb) / period)
    out[o + 1] = reset
    out[o + 2] = 0
    nxt[2 * w - 1] = na
    nxt[2 * w] = nb
    if w > n then tu = reset elseif reset > tk then tk = reset end
  else
    ok = 0
    local reset = a - now
    if b > 0 then reset = reset + 1 end
    out[o] = 0
    out[o + 1] = reset
    out[o + 2] = floor(((d - lw) * rate + nb - lf + rate - 1) / rate)
  end
end
out[1] = ok
-- One string of decimals, not an array: one reply value to build here and to parse there.
local fmt = string.format
for i = 1, #out do out[i] = fmt('%d', out[i]) end

if ok == 1 then
  if n > 0 then
    local v
    if n == 1 then
      v = struct.pack('<dd', nxt[1], nxt[2])
    else
      v = struct.pack('<' .. string.rep('d', 2 * n), unpack(nxt, 1, 2 * n))
    end
    redis.call('SET', KEYS[1], v, 'PX', string.format('%d', floor(tk / 1000) + 1))
  end
  if up then
    redis.call('SET', KEYS[2], struct.pack('<dd', nxt[2 * total - 1], nxt[2 * total]),
      'PX', string.format('%d', floor(tu / 1000) + 1))
  end
end
return table.concat(out, ' ')
";

pub(super) struct RedisLimiters {
    shared: Arc<Shared>,
    keys: Box<[Option<Arc<RedisKey>>]>,
}

/// What all generations built from one `rate_limit.redis` share: the connection, the script,
/// the counters.
struct Shared {
    connector: Connector,
    /// The current connection; replaced by the reconnect task, never emptied once set.
    conn: ArcSwapOption<Conn>,
    /// Set by a request that failed in a way a new connection may cure; read by the task.
    broken: AtomicBool,
    /// Wakes the reconnect task.
    wake: Arc<Notify>,
    script: Script,
    on_error: OnError,
    epoch: Instant,
    errors: AtomicU64,
    /// Milliseconds since `epoch` before which requests skip Redis.
    paused_until: AtomicU64,
    /// Milliseconds since `epoch` before which no further warning is logged.
    quiet_until: AtomicU64,
    failing: AtomicBool,
}

struct RedisKey {
    meta: KeyMeta,
    state_key: String,
    /// `state_key` + `:u:`; the user id is appended per request.
    user_prefix: String,
    /// `ARGV[1]`: the key windows' parameters, packed once here rather than per request.
    params: Box<[u8]>,
    /// `ARGV[2]`: the user window's parameters, if the key has one.
    user_params: Option<[u8; PARAMS_LEN]>,
}

impl RedisLimiters {
    pub(super) async fn new(
        store: &RedisStore,
        keys: &[(Arc<str>, Option<Quota>)],
    ) -> Result<RedisLimiters, Error> {
        let on_error = if store.on_error_allow {
            OnError::Allow
        } else {
            OnError::Deny
        };
        let shared = Arc::new(Shared {
            connector: Connector::new(store)?,
            conn: ArcSwapOption::empty(),
            broken: AtomicBool::new(false),
            wake: Arc::new(Notify::new()),
            script: Script::new(SCRIPT),
            on_error,
            epoch: Instant::now(),
            errors: AtomicU64::new(0),
            paused_until: AtomicU64::new(0),
            quiet_until: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        });
        // Try once now so a healthy Redis is used from the first request; otherwise the task
        // keeps trying in the background rather than failing start-up.
        match shared.connector.connect().await {
            Ok(conn) => shared.conn.store(Some(Arc::new(conn))),
            Err(e) => {
                shared.failing.store(true, Ordering::Relaxed);
                shared.warn(&e);
            }
        }
        tokio::spawn(keep_connected(
            Arc::downgrade(&shared),
            Arc::clone(&shared.wake),
        ));
        Ok(RedisLimiters {
            keys: build_keys(keys),
            shared,
        })
    }

    pub(super) fn rebuild(&self, keys: &[(Arc<str>, Option<Quota>)]) -> RedisLimiters {
        // The quota is part of every Redis key name: unchanged keys find their state, changed
        // ones start fresh, and removed ones expire.
        RedisLimiters {
            shared: Arc::clone(&self.shared),
            keys: build_keys(keys),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    pub(super) async fn check(&self, key: u32, user: Option<u64>) -> Decision {
        let Some(Some(key)) = self.keys.get(key as usize) else {
            debug_assert!((key as usize) < self.keys.len(), "key index out of range");
            return Decision::Unlimited;
        };
        let user = user.zip(key.user_params.as_ref());
        if key.meta.windows.is_empty() && user.is_none() {
            return Decision::Unlimited;
        }
        let shared = &self.shared;
        let Some(mut conn) = shared.usable() else {
            return shared.on_error(key, None);
        };
        let cmd = shared.evalsha(key, user);
        let reply = match tokio::time::timeout(COMMAND_TIMEOUT, shared.run(&cmd, &mut conn)).await {
            Ok(reply) => reply,
            Err(_) => {
                let reconnect = !matches!(shared.connector, Connector::Cluster(_));
                return shared.on_error(key, Some((&"timed out", reconnect)));
            }
        };
        match reply {
            Ok(reply) => match decode(&key.meta, user.is_some(), &reply) {
                Some(decision) => {
                    shared.recovered();
                    decision
                }
                None => shared.on_error(key, Some((&"unexpected script reply", false))),
            },
            Err(e) => {
                let reconnect = shared.connector.reconnect_after(&e);
                shared.on_error(key, Some((&e, reconnect)))
            }
        }
    }
}

fn build_keys(keys: &[(Arc<str>, Option<Quota>)]) -> Box<[Option<Arc<RedisKey>>]> {
    keys.iter()
        .map(|(id, quota)| RedisKey::new(id, quota.as_ref()?).map(Arc::new))
        .collect()
}

impl RedisKey {
    fn new(id: &Arc<str>, quota: &Quota) -> Option<RedisKey> {
        let meta = KeyMeta::new(id, quota, MICROS_PER_SEC)?;
        let n = |v: Option<std::num::NonZeroU32>| v.map_or(0, |v| v.get());
        let state_key = format!(
            "qbgate:{{{id}}}:v2:{}:{}:{}:{}:{}:{}",
            n(quota.per_second),
            n(quota.burst),
            n(quota.per_minute),
            n(quota.per_hour),
            n(quota.per_day),
            n(quota.per_user_per_second),
        );
        let user_prefix = format!("{state_key}:u:");
        let params = meta.windows.iter().flat_map(window_params).collect();
        let user_params = meta.user.as_ref().map(window_params);
        Some(RedisKey {
            meta,
            state_key,
            user_prefix,
            params,
            user_params,
        })
    }
}

/// One window's parameters as the script reads them. Lua numbers are doubles either way, so
/// packing them here converts exactly as the script's `tonumber` of a decimal string would.
fn window_params(w: &super::Window) -> [u8; PARAMS_LEN] {
    let mut out = [0; PARAMS_LEN];
    let values = [
        w.rate,
        w.period,
        w.step_whole,
        w.step_frac,
        w.limit_whole,
        w.limit_frac,
    ];
    for (chunk, v) in out.chunks_exact_mut(8).zip(values) {
        chunk.copy_from_slice(&(v as f64).to_le_bytes());
    }
    out
}

/// The script's reply as a decision; `None` if it is not the shape the script returns.
fn decode(meta: &KeyMeta, with_user: bool, reply: &Value) -> Option<Decision> {
    let text = match reply {
        Value::BulkString(bytes) => bytes.as_slice(),
        Value::SimpleString(text) => text.as_bytes(),
        _ => return None,
    };
    let mut numbers = [0i64; 1 + 3 * MAX_WINDOWS];
    let mut count = 0;
    for item in text.split(|&b| b == b' ') {
        *numbers.get_mut(count)? = parse_i64(item)?;
        count += 1;
    }
    let reply = &numbers[..count];
    let windows = meta
        .windows
        .iter()
        .chain(meta.user.as_ref().filter(|_| with_user));
    let admitted = match reply.first()? {
        1 => true,
        0 => false,
        _ => return None,
    };
    let mut reports = [Report::default(); MAX_WINDOWS];
    let mut n = 0;
    let mut values = reply.get(1..)?.chunks_exact(3);
    for (window, report) in windows.zip(reports.iter_mut()) {
        let &[remaining, reset, wait] = values.next()? else {
            return None;
        };
        let micros = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        *report = Report {
            name: window.name,
            rate: window.rate,
            allowed: wait == 0,
            remaining: u64::try_from(remaining).unwrap_or(0),
            reset: micros(reset),
            wait: micros(wait),
        };
        n += 1;
    }
    let reports = &reports[..n];
    // Exactly one triple per window, and a refusal names at least one refusing window.
    if values.next().is_some() || n == 0 || admitted != reports.iter().all(|r| r.allowed) {
        return None;
    }
    Some(decide(&meta.policy, reports))
}

/// An optionally negative decimal that fits in an i64, as Lua's `%d` writes it.
fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -n } else { n })
}

impl Shared {
    /// The request's one command: `EVALSHA` over the key's state and, with a user, the user's
    /// bucket, built straight into one buffer (the user's key name included, with no `String`
    /// of its own).
    fn evalsha(&self, key: &RedisKey, user: Option<(u64, &[u8; PARAMS_LEN])>) -> Cmd {
        let len = 80 + key.state_key.len() + key.params.len();
        let len = len + user.map_or(0, |_| key.user_prefix.len() + 20 + PARAMS_LEN);
        let mut cmd = Cmd::with_capacity(7, len);
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(if user.is_some() { 2 } else { 1 })
            .arg(&key.state_key);
        if let Some((user, _)) = user {
            cmd.write_arg_fmt(format_args!("{}{user}", key.user_prefix));
        }
        cmd.arg(&key.params[..]);
        if let Some((_, params)) = user {
            cmd.arg(&params[..]);
        }
        cmd
    }

    /// Runs `cmd`; loads the script first if this server does not know it yet (a new or
    /// restarted server, or a failover to one).
    async fn run(&self, cmd: &Cmd, conn: &mut Conn) -> RedisResult<Value> {
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::NoScriptError => {
                self.script.load_async(conn).await?;
                cmd.query_async(conn).await
            }
            reply => reply,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The connection (a clone sharing its socket), unless there is none yet or a recent
    /// failure pauses its use.
    fn usable(&self) -> Option<Conn> {
        if self.now_ms() < self.paused_until.load(Ordering::Relaxed) {
            return None;
        }
        self.conn.load().as_deref().cloned()
    }

    /// Answers per `on_error`. `error` is the failure of an attempt just made, with whether a
    /// new connection may cure it; `None` when the request did not try (no connection yet, or
    /// paused): only attempts restart the pause, or steady traffic would keep Redis paused
    /// forever.
    fn on_error(&self, key: &RedisKey, error: Option<(&dyn std::fmt::Display, bool)>) -> Decision {
        self.errors.fetch_add(1, Ordering::Relaxed);
        crate::metrics::store_error(match self.on_error {
            OnError::Allow => "allow",
            OnError::Deny => "deny",
        });
        if let Some((error, reconnect)) = error {
            if reconnect && !self.broken.swap(true, Ordering::Relaxed) {
                self.wake.notify_one();
            }
            self.failing.store(true, Ordering::Relaxed);
            let now = self.now_ms();
            let pause = u64::try_from(REDIS_RETRY_PAUSE.as_millis()).unwrap_or(u64::MAX);
            self.paused_until
                .fetch_max(now.saturating_add(pause), Ordering::Relaxed);
            self.warn(error);
        }
        match self.on_error {
            OnError::Allow => Decision::Unlimited,
            OnError::Deny => {
                let window = key
                    .meta
                    .windows
                    .first()
                    .or(key.meta.user.as_ref())
                    .map_or("1s", |w| w.name);
                Decision::Limited {
                    info: Info {
                        policy: key.meta.policy.clone(),
                        window,
                        remaining: 0,
                        reset_secs: 1,
                    },
                    retry_after: Duration::from_secs(1),
                }
            }
        }
    }

    /// Logs at most once per `WARN_EVERY`, however many requests fail.
    fn warn(&self, error: &dyn std::fmt::Display) {
        let now = self.now_ms();
        let quiet = self.quiet_until.load(Ordering::Relaxed);
        if now < quiet && quiet != 0 {
            return;
        }
        let next = now.saturating_add(u64::try_from(WARN_EVERY.as_millis()).unwrap_or(0));
        if self
            .quiet_until
            .compare_exchange(quiet, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                error = %error,
                on_error = ?self.on_error,
                failed_requests = self.errors.load(Ordering::Relaxed),
                "rate-limit store: Redis unreachable, applying on_error"
            );
        }
    }

    fn recovered(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("rate-limit store: Redis reachable again");
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the reconnect task see that the store is gone.
        self.wake.notify_one();
    }
}

/// Connects while there is no connection, and again after a request marked it broken or (with
/// Sentinel) the sentinels named another primary; at most one attempt per
/// [`REDIS_RETRY_PAUSE`]. Ends once the store is gone.
async fn keep_connected(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let Some(store) = shared.upgrade() else {
            return;
        };
        let needed = store.conn.load().is_none() || store.broken.swap(false, Ordering::Relaxed);
        if !needed {
            let sentinel = matches!(store.connector, Connector::Sentinel(_));
            drop(store);
            if !sentinel {
                wake.notified().await;
                continue;
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(connect::SENTINEL_CHECK_EVERY) => {
                    let Some(store) = shared.upgrade() else {
                        return;
                    };
                    if store.connector.primary_moved().await {
                        tracing::info!("rate-limit store: the sentinels name a new primary");
                        store.broken.store(true, Ordering::Relaxed);
                    }
                }
            }
            continue;
        }
        match store.connector.connect().await {
            Ok(conn) => store.conn.store(Some(Arc::new(conn))),
            Err(e) => {
                store.broken.store(true, Ordering::Relaxed);
                store.warn(&e);
            }
        }
        drop(store);
        tokio::time::sleep(REDIS_RETRY_PAUSE).await;
    }
}

#[cfg(test)]
mod deployments;
#[cfg(test)]
mod tests;
