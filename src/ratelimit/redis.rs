//! The Redis store: every replica of the gateway shares one limit per key.
//!
//! One round trip per request: a Lua script (sent as `EVALSHA`, loaded on `NOSCRIPT`) runs the
//! same GCRA arithmetic as [`Window::check`](super::Window) for every window of the key and the
//! user's bucket, on Redis's own clock (`TIME`, microseconds), and stores the new state only if
//! every window admits the request. Redis runs a script atomically, so concurrent replicas
//! cannot both take the last request.
//!
//! Batches: checks that arrive while an earlier one's call is still to be sent go in the same
//! call (up to [`MAX_BATCH`]; in a Cluster, only checks of the same key, which share a slot). The
//! script decides them in order at one instant, exactly as one call each would, so under load
//! redis-server runs one `TIME`, one `MGET` and one reply per batch instead of per request. Nothing
//! waits to fill a batch; a lone request is a batch of one.
//!
//! Keys: `qbgate:{<key id>}:v2:<quota>` (each key window's arrival time) and
//! `qbgate:{<key id>}:v2:<quota>:u:<user>` (one user's bucket), plain strings of packed doubles
//! read with one `MGET` per call and written with `SET ... PX`. The `{<key id>}` hash tag puts all keys of
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
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use ::redis::{Cmd, ErrorKind, RedisResult, RedisWrite, Script, Value};
use arc_swap::ArcSwapOption;
use tokio::sync::{oneshot, Notify};

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

/// Most checks in one script call; more waiting at once go in further calls, sent beside it.
/// Bounds how long one call holds redis-server (each check is a few microseconds of Lua).
const MAX_BATCH: usize = 64;

/// Checks a batch of requests, in order, as if each ran alone at the same instant. Per check
/// `c`: `ARGV[2c-1]`, the key windows' parameters (six doubles each: rate, period, step_whole,
/// step_frac, limit_whole, limit_frac; see `Window`), empty if the key only limits users;
/// `ARGV[2c]`, the user window's, empty without a user. `KEYS`, per check in order: the key's
/// windows, then the user's bucket if the check has a user. Each state is a string of
/// little-endian doubles, two per window: the arrival time `a` and its fraction `b` (see `Tat`).
/// Returns one string: per check, decimals separated by spaces (allowed 1/0, then per window:
/// remaining, reset µs, wait µs), checks separated by commas.
///
/// Kept lean because redis-server runs it for every request: one `TIME` and one `MGET` per
/// batch, packed doubles (`struct`, one C call per window) rather than decimal strings and hash
/// fields, then one `SET ... PX` per state some check of the batch changed; nothing is written
/// for a refusal. A later check in the batch reads what an earlier one admitted.
const SCRIPT: &str = r"
local clock = redis.call('TIME')
local now = clock[1] * 1000000 + clock[2]
local unpack_, pack, floor, fmt = struct.unpack, struct.pack, math.floor, string.format
local checks = #ARGV / 2
local kname, uname = {}, {}
local reads, seen = {}, {}
local at = 1
for c = 1, checks do
  local name = KEYS[at]
  at = at + 1
  kname[c] = name
  if #ARGV[2 * c - 1] > 0 and not seen[name] then
    seen[name] = true
    reads[#reads + 1] = name
  end
  if #ARGV[2 * c] > 0 then
    name = KEYS[at]
    at = at + 1
    uname[c] = name
    if not seen[name] then
      seen[name] = true
      reads[#reads + 1] = name
    end
  end
end
local state = {}
if #reads == 1 then
  state[reads[1]] = redis.call('GET', reads[1])
elseif #reads > 1 then
  local v = redis.call('MGET', unpack(reads))
  for i = 1, #reads do state[reads[i]] = v[i] end
end

local expire = {}
local replies = {}
for c = 1, checks do
  local kp, up = ARGV[2 * c - 1], ARGV[2 * c]
  local n = #kp / 48
  local user = #up > 0
  local sk, su = false, false
  -- Anything this script did not write counts as a full bucket.
  if n > 0 then
    sk = state[kname[c]]
    if sk and #sk ~= 16 * n then sk = false end
  end
  local total = n
  if user then
    total = n + 1
    su = state[uname[c]]
    if su and #su ~= 16 then su = false end
  end
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
  for i = 1, #out do out[i] = fmt('%d', out[i]) end
  replies[c] = table.concat(out, ' ')

  if ok == 1 then
    if n > 0 then
      local v
      if n == 1 then
        v = pack('<dd', nxt[1], nxt[2])
      else
        v = pack('<' .. string.rep('d', 2 * n), unpack(nxt, 1, 2 * n))
      end
      state[kname[c]] = v
      expire[kname[c]] = floor(tk / 1000) + 1
    end
    if user then
      state[uname[c]] = pack('<dd', nxt[2 * total - 1], nxt[2 * total])
      expire[uname[c]] = floor(tu / 1000) + 1
    end
  end
end
-- Each changed state once, expiring when its bucket is full again.
for i = 1, #reads do
  local name = reads[i]
  if expire[name] then
    redis.call('SET', name, state[name], 'PX', fmt('%d', expire[name]))
  end
end
-- One string, not an array: one reply value to build here and to parse there.
return table.concat(replies, ',')
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
    /// Checks waiting for the next script call. Whoever finds it empty spawns the task that
    /// sends it (`send_queued`), so a task is on its way whenever it is not empty.
    queue: Mutex<Vec<Pending>>,
}

/// One request's check, waiting for its script call.
struct Pending {
    key: Arc<RedisKey>,
    /// Only for a key that limits its users.
    user: Option<u64>,
    reply: oneshot::Sender<Decision>,
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
            queue: Mutex::new(Vec::new()),
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

    /// The request's decision from Redis. Checks made while an earlier one's call is still to
    /// be sent join it: concurrent requests share one script call (one `TIME`, one `MGET`, one
    /// reply), which is most of what a check costs redis-server. Nothing waits to fill a batch:
    /// a call carries the checks that are queued by the time its task runs.
    pub(super) async fn check(&self, key: u32, user: Option<u64>) -> Decision {
        let Some(Some(key)) = self.keys.get(key as usize) else {
            debug_assert!((key as usize) < self.keys.len(), "key index out of range");
            return Decision::Unlimited;
        };
        let user = user.filter(|_| key.user_params.is_some());
        if key.meta.windows.is_empty() && user.is_none() {
            return Decision::Unlimited;
        }
        let shared = &self.shared;
        if !shared.ready() {
            return shared.on_error(key, None);
        }
        let (reply, decision) = oneshot::channel();
        let first = {
            let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.push(Pending {
                key: Arc::clone(key),
                user,
                reply,
            });
            queue.len() == 1
        };
        if first {
            tokio::spawn(Arc::clone(shared).send_queued());
        }
        // The call's task always answers (within `COMMAND_TIMEOUT`) unless it was torn down
        // with the runtime.
        match decision.await {
            Ok(decision) => decision,
            Err(_) => shared.on_error(key, Some((&"the script call was dropped", false))),
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

/// The script's reply: one string, one check's part per request of the batch, in order;
/// `None` if it is not that shape.
fn split_reply(reply: &Value, checks: usize) -> Option<Vec<&[u8]>> {
    let text = match reply {
        Value::BulkString(bytes) => bytes.as_slice(),
        Value::SimpleString(text) => text.as_bytes(),
        _ => return None,
    };
    let parts: Vec<&[u8]> = text.split(|&b| b == b',').collect();
    (parts.len() == checks).then_some(parts)
}

/// One check's part of the script's reply as a decision; `None` if it is not the shape the
/// script writes.
fn decode(meta: &KeyMeta, with_user: bool, text: &[u8]) -> Option<Decision> {
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
    /// Takes every queued check and sends them in script calls of at most [`MAX_BATCH`] (in a
    /// Cluster, one call per key id: a script's keys must share a slot), each answered by its
    /// own task, so they travel pipelined.
    async fn send_queued(self: Arc<Self>) {
        // Let the tasks that are ready run first, so their checks join: a new task may run next
        // (tokio's multi-threaded scheduler runs it in its spawner's place), before them.
        tokio::task::yield_now().await;
        let queued =
            std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        let mut calls: Vec<Vec<Pending>> = Vec::new();
        let cluster = matches!(self.connector, Connector::Cluster(_));
        for pending in queued {
            let joins = calls.iter_mut().rev().find(|call| {
                call.len() < MAX_BATCH && (!cluster || call[0].key.meta.id == pending.key.meta.id)
            });
            match joins {
                Some(call) => call.push(pending),
                None => calls.push(vec![pending]),
            }
        }
        let last = calls.pop();
        for call in calls {
            tokio::spawn(Arc::clone(&self).call(call));
        }
        if let Some(call) = last {
            self.call(call).await;
        }
    }

    /// One script call for `batch`; answers every check in it.
    async fn call(self: Arc<Self>, batch: Vec<Pending>) {
        let Some(mut conn) = self.usable() else {
            for pending in batch {
                let _ = pending.reply.send(self.on_error(&pending.key, None));
            }
            return;
        };
        let cmd = self.evalsha(&batch);
        let failed = |error: &dyn std::fmt::Display, reconnect: bool, batch: Vec<Pending>| {
            for pending in batch {
                let decision = self.on_error(&pending.key, Some((error, reconnect)));
                let _ = pending.reply.send(decision);
            }
        };
        let reply = match tokio::time::timeout(COMMAND_TIMEOUT, self.run(&cmd, &mut conn)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => return failed(&e, self.connector.reconnect_after(&e), batch),
            Err(_) => {
                let reconnect = !matches!(self.connector, Connector::Cluster(_));
                return failed(&"timed out", reconnect, batch);
            }
        };
        let Some(parts) = split_reply(&reply, batch.len()) else {
            return failed(&"unexpected script reply", false, batch);
        };
        self.recovered();
        for (pending, part) in batch.into_iter().zip(parts) {
            let decision = match decode(&pending.key.meta, pending.user.is_some(), part) {
                Some(decision) => decision,
                None => self.on_error(&pending.key, Some((&"unexpected script reply", false))),
            };
            let _ = pending.reply.send(decision);
        }
    }

    /// One `EVALSHA` for `batch`, built straight into one buffer (the users' key names
    /// included, with no `String` of their own).
    fn evalsha(&self, batch: &[Pending]) -> Cmd {
        let users = batch.iter().filter(|p| p.user.is_some()).count();
        let len = 64
            + batch
                .iter()
                .map(|p| {
                    let user = p
                        .user
                        .map_or(0, |_| p.key.user_prefix.len() + 20 + PARAMS_LEN);
                    32 + p.key.state_key.len() + p.key.params.len() + user
                })
                .sum::<usize>();
        let mut cmd = Cmd::with_capacity(3 + 3 * batch.len() + users, len);
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(batch.len() + users);
        for p in batch {
            cmd.arg(&p.key.state_key);
            if let Some(user) = p.user {
                cmd.write_arg_fmt(format_args!("{}{user}", p.key.user_prefix));
            }
        }
        for p in batch {
            cmd.arg(&p.key.params[..]);
            match p.user.and(p.key.user_params.as_ref()) {
                Some(params) => cmd.arg(&params[..]),
                None => cmd.arg(&b""[..]),
            };
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

    /// Whether requests may use Redis now: there is a connection and no recent failure
    /// pauses its use.
    fn ready(&self) -> bool {
        self.now_ms() >= self.paused_until.load(Ordering::Relaxed) && self.conn.load().is_some()
    }

    /// The connection (a clone sharing its socket), unless there is none yet or a recent
    /// failure pauses its use.
    fn usable(&self) -> Option<Conn> {
        if !self.ready() {
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
