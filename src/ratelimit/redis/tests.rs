//! Tests of `redis`.

use super::*;
use crate::ratelimit::{Limiters, Quota};
use std::num::NonZeroU32;
use std::process::Command;

use crate::policy::RedisStore;
use crate::ratelimit::test_server::Server;
use ::redis::Client;

fn nz(n: u32) -> Option<NonZeroU32> {
    NonZeroU32::new(n)
}

fn keys(list: &[(&str, Quota)]) -> Vec<(Arc<str>, Option<Quota>)> {
    list.iter()
        .map(|(id, q)| (Arc::from(*id), Some(q.clone())))
        .collect()
}

/// One server at `url`, no password.
pub(crate) fn single(url: &str, on_error: OnError) -> RedisStore {
    RedisStore::single(url, on_error == OnError::Allow)
}

async fn count(l: &Limiters, key: u32, user: Option<u64>, n: usize) -> usize {
    let mut allowed = 0;
    for _ in 0..n {
        if matches!(l.check(key, user).await, Decision::Allowed(_)) {
            allowed += 1;
        }
    }
    allowed
}

#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn two_limiters_share_one_limit() {
    let server = Server::start("two_limiters_share_one_limit");
    let q = Quota {
        per_hour: nz(20),
        per_user_per_second: nz(3),
        ..Quota::default()
    };
    let k = keys(&[("billing", q)]);
    let a = Limiters::redis(&single(&server.url(), OnError::Deny), &k)
        .await
        .expect("a");
    let b = Limiters::redis(&single(&server.url(), OnError::Deny), &k)
        .await
        .expect("b");
    let mut allowed = 0;
    for i in 0..100 {
        let l = if i % 2 == 0 { &a } else { &b };
        if matches!(l.check(0, None).await, Decision::Allowed(_)) {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 20);
    // One user's bucket is shared too.
    let q = Quota {
        per_second: nz(1000),
        per_user_per_second: nz(3),
        ..Quota::default()
    };
    let k = keys(&[("users", q)]);
    let a = a.rebuild(&k);
    let b = b.rebuild(&k);
    let both = count(&a, 0, Some(42), 5).await + count(&b, 0, Some(42), 5).await;
    assert_eq!(both, 3);
    assert_eq!(count(&b, 0, Some(43), 5).await, 3, "users independent");
    assert_eq!(a.redis_errors() + b.redis_errors(), 0);
}

#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn all_or_nothing_and_headers() {
    let server = Server::start("all_or_nothing_and_headers");
    let q = Quota {
        per_second: nz(10),
        per_minute: nz(2),
        per_user_per_second: nz(5),
        ..Quota::default()
    };
    let l = Limiters::redis(&single(&server.url(), OnError::Deny), &keys(&[("k", q)]))
        .await
        .expect("limiters");
    match l.check(0, Some(1)).await {
        Decision::Allowed(info) => {
            assert_eq!(
                info.policy_header(),
                "\"1s\";q=10;w=1, \"1m\";q=2;w=60, \"user-1s\";q=5;w=1"
            );
            assert_eq!(info.ratelimit_header(), "\"1m\";r=1;t=30");
        }
        other => panic!("allowed expected, got {other:?}"),
    }
    assert_eq!(count(&l, 0, Some(1), 19).await, 1);
    match l.check(0, Some(1)).await {
        Decision::Limited { info, retry_after } => {
            assert_eq!(info.window(), "1m");
            // 2 per minute: one every 30 s.
            assert!(retry_after > Duration::from_secs(29), "{retry_after:?}");
            assert_eq!(info.ratelimit_header(), "\"1m\";r=0;t=60");
        }
        other => panic!("limited expected, got {other:?}"),
    }
    // The 20 refusals spent nothing from "1s" (10/s) or the user's bucket (5/s): check
    // the stored state directly.
    let client = Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let mut names: Vec<String> = ::redis::cmd("KEYS")
        .arg("qbgate:*")
        .query_async(&mut conn)
        .await
        .expect("keys");
    names.sort();
    assert_eq!(
        names,
        [
            "qbgate:{k}:v2:10:0:2:0:0:5",
            "qbgate:{k}:v2:10:0:2:0:0:5:u:1"
        ]
    );
    // The key's windows in order, each (arrival time, fraction) as little-endian doubles.
    let state: Vec<u8> = ::redis::cmd("GET")
        .arg(&names[0])
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(state.len(), 2 * 16, "two windows");
    let at = |i: usize| {
        let bytes: [u8; 8] = state[i * 8..][..8].try_into().expect("8 bytes");
        f64::from_le_bytes(bytes) as i64
    };
    let (sec, min) = (at(0), at(2));
    // Two admitted: "1s" is 2 × 100 ms ahead of the first request, "1m" 2 × 30 s.
    assert_eq!(min - sec, 60_000_000 - 200_000);
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(&names[1])
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(
        (1..=401).contains(&ttl),
        "user bucket expires when full: {ttl}"
    );
}

#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn rate_over_real_time() {
    let server = Server::start("rate_over_real_time");
    let q = Quota {
        per_second: nz(20),
        burst: nz(5),
        ..Quota::default()
    };
    let l = Limiters::redis(&single(&server.url(), OnError::Deny), &keys(&[("k", q)]))
        .await
        .expect("limiters");
    let start = Instant::now();
    let mut allowed = 0u64;
    let mut first = None;
    let mut last = start;
    while start.elapsed() < Duration::from_millis(1500) {
        let before = Instant::now();
        if matches!(l.check(0, None).await, Decision::Allowed(_)) {
            allowed += 1;
            first.get_or_insert(before);
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let span = last - first.expect("some allowed");
    let expect = 5.0 + 20.0 * span.as_secs_f64();
    assert!(
        (allowed as f64 - expect).abs() <= 1.5,
        "allowed {allowed}, expected {expect:.1}"
    );
}

#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn redis_down_up_and_back() {
    let server = Server::start("redis_down_up_and_back");
    let q = Quota {
        per_hour: nz(3),
        ..Quota::default()
    };
    let k = keys(&[("k", q)]);
    let allow = Limiters::redis(&single(&server.url(), OnError::Allow), &k)
        .await
        .expect("allow");
    let deny = Limiters::redis(&single(&server.url(), OnError::Deny), &k)
        .await
        .expect("deny");
    assert!(matches!(allow.check(0, None).await, Decision::Allowed(_)));

    let url = server.url();
    let port = server.stop();
    for _ in 0..20 {
        let started = Instant::now();
        assert!(matches!(allow.check(0, None).await, Decision::Unlimited));
        match deny.check(0, None).await {
            Decision::Limited { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(1))
            }
            other => panic!("limited expected, got {other:?}"),
        }
        assert!(started.elapsed() < COMMAND_TIMEOUT * 3, "bounded wait");
    }
    assert_eq!(allow.redis_errors(), 20);
    assert_eq!(deny.redis_errors(), 20);
    // A rebuild keeps the shared counter.
    assert_eq!(allow.rebuild(&k).redis_errors(), 20);

    // Restarted (empty): limiting resumes through the same Limiters.
    let _server = Server::on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match allow.check(0, None).await {
            Decision::Allowed(_) => break,
            Decision::Unlimited => {
                assert!(Instant::now() < deadline, "no reconnect to {url}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(count(&allow, 0, None, 10).await, 2);
    // `deny` reconnects too, and then refuses because the limit is spent, not on error.
    loop {
        let errors = deny.redis_errors();
        let decision = deny.check(0, None).await;
        if deny.redis_errors() == errors {
            assert!(matches!(decision, Decision::Limited { info, .. } if info.window() == "1h"));
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect for deny");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn start_with_redis_down() {
    let server = Server::start("start_with_redis_down");
    let port = server.stop();
    let q = Quota {
        per_hour: nz(2),
        ..Quota::default()
    };
    let l = Limiters::redis(
        &single(&format!("redis://127.0.0.1:{port}/"), OnError::Allow),
        &keys(&[("k", q)]),
    )
    .await
    .expect("start-up does not need Redis");
    assert!(matches!(l.check(0, None).await, Decision::Unlimited));
    let _server = Server::on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(l.check(0, None).await, Decision::Allowed(_)) {
        assert!(Instant::now() < deadline, "background connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(&l, 0, None, 5).await, 1);
}

#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn stalled_redis_is_bounded_by_the_timeout() {
    let server = Server::start("stalled_redis_is_bounded_by_the_timeout");
    let q = Quota {
        per_hour: nz(100),
        ..Quota::default()
    };
    let l = Limiters::redis(&single(&server.url(), OnError::Allow), &keys(&[("k", q)]))
        .await
        .expect("limiters");
    assert!(matches!(l.check(0, None).await, Decision::Allowed(_)));
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &server.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    signal("-STOP");
    let started = Instant::now();
    assert!(matches!(l.check(0, None).await, Decision::Unlimited));
    let waited = started.elapsed();
    assert!(
        waited >= COMMAND_TIMEOUT && waited < COMMAND_TIMEOUT * 2,
        "{waited:?}"
    );
    // Paused: the next requests do not wait at all.
    let started = Instant::now();
    assert!(matches!(l.check(0, None).await, Decision::Unlimited));
    assert!(started.elapsed() < Duration::from_millis(50));
    signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(l.check(0, None).await, Decision::Allowed(_)) {
        assert!(Instant::now() < deadline, "resumes after the stall");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn check_future_is_send() {
    fn send<T: Send>(_: &T) {}
    let l = Limiters::memory(&[]);
    send(&l.check(0, None));
    fn sync<T: Send + Sync>() {}
    sync::<Limiters>();
}

#[tokio::test]
async fn bad_url_fails() {
    let err = Limiters::redis(&single("http://nope", OnError::Allow), &[])
        .await
        .expect_err("bad url");
    assert!(
        err.to_string().starts_with("rate_limit.redis.url: "),
        "{err}"
    );
}

// ---- Redis as teams run it: TLS + ACL, Sentinel, Cluster, and one pipelined round trip ----

use super::deployments::{cli, ClusterRedis, SentinelRedis, TlsRedis};
use crate::policy::{compile_with_env, RateLimitStore, RedisServers};

/// The key every accuracy run limits: 400 per second, bursts of 20, and a per-user bucket that
/// never binds but makes every other request a two-key script call (as a user's request is).
fn accuracy_quota() -> Quota {
    Quota {
        per_second: nz(400),
        burst: nz(20),
        per_user_per_second: nz(100_000),
        ..Quota::default()
    }
}

/// Two gateways (`a` and `b`, four callers each) offer about 15 times the rate for `span`.
/// Returns (admitted, burst + rate x elapsed), the count a perfect shared limit admits.
async fn offered_load(a: &Arc<Limiters>, b: &Arc<Limiters>, span: Duration) -> (u64, f64) {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let l = Arc::clone(if i % 2 == 0 { a } else { b });
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            let mut n = 0u64;
            while start.elapsed() < span && n < 20_000 {
                n += 1;
                let user = (n % 2 == 0).then_some(1 + n % 7);
                if matches!(l.check(0, user).await, Decision::Allowed(_)) {
                    admitted += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.expect("caller task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    (admitted, 20.0 + 400.0 * elapsed)
}

fn within_two_percent(what: &str, (admitted, expect): (u64, f64)) {
    let off = (admitted as f64 - expect) / expect;
    eprintln!(
        "{what}: admitted {admitted}, expected {expect:.1} ({:+.2}%)",
        off * 100.0
    );
    assert!(
        off.abs() <= 0.02,
        "{what}: admitted {admitted}, a shared limit admits {expect:.0} ({:+.2}%)",
        off * 100.0
    );
}

async fn two_gateways(store: &RedisStore) -> (Arc<Limiters>, Arc<Limiters>) {
    let k = keys(&[("billing", accuracy_quota())]);
    let a = Limiters::redis(store, &k).await.expect("gateway a");
    let b = Limiters::redis(store, &k).await.expect("gateway b");
    (Arc::new(a), Arc::new(b))
}

fn redis_store(policy_block: &str, env: &dyn Fn(&str) -> Option<String>) -> RedisStore {
    let text = format!(
        "version: 1\nrate_limit:\n  store: redis\n  redis:\n{policy_block}keys:\n  - id: a\n    sha256: {}\n",
        "0".repeat(64)
    );
    match compile_with_env(&text, env).expect("policy").rate_limit {
        RateLimitStore::Redis(store) => store,
        RateLimitStore::Memory => panic!("redis store expected"),
    }
}

/// Until a check is decided by Redis (not `on_error`), within 5 s.
async fn wait_until_connected(l: &Limiters) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let errors = l.redis_errors();
        let decision = l.check(0, None).await;
        if l.redis_errors() == errors && !matches!(decision, Decision::Unlimited) {
            return;
        }
        assert!(Instant::now() < deadline, "never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every check in `rounds` meets `on_error: deny` and is counted.
async fn only_on_error(what: &str, store: &RedisStore) {
    let l = Limiters::redis(store, &keys(&[("k", accuracy_quota())]))
        .await
        .expect(what);
    for _ in 0..3 {
        match l.check(0, None).await {
            Decision::Limited { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_secs(1), "{what}")
            }
            other => panic!("{what}: on_error deny expected, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(l.redis_errors(), 3, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (Debian, built with TLS); .ci/run installs it and runs it"]
async fn tls_with_ca_file_acl_user_and_password_from_env() {
    let redis = TlsRedis::start("tls_with_ca_file_acl_user_and_password_from_env", "pw-0k!");
    let port = redis.server.port;
    let block = |ca: &std::path::Path, env: &str| {
        format!(
            "    url: rediss://limiter@127.0.0.1:{port}/\n    password: {{ env: {env} }}\n    ca_file: {}\n    on_error: deny\n",
            ca.display()
        )
    };
    let env = |name: &str| match name {
        "QBGATE_TEST_REDIS_PASSWORD" => Some("pw-0k!\n".to_string()),
        "QBGATE_TEST_WRONG_PASSWORD" => Some("not-it".to_string()),
        _ => None,
    };
    let store = redis_store(&block(&redis.ca_file, "QBGATE_TEST_REDIS_PASSWORD"), &env);
    assert!(!format!("{store:?}").contains("pw-0k!"), "password hidden");
    let (a, b) = two_gateways(&store).await;
    within_two_percent(
        "TLS",
        offered_load(&a, &b, Duration::from_millis(1500)).await,
    );
    assert_eq!(a.redis_errors() + b.redis_errors(), 0);

    // What must not connect gets on_error, never a panic or a request that waits long.
    let wrong_ca = redis_store(
        &block(&redis.other_ca_file, "QBGATE_TEST_REDIS_PASSWORD"),
        &env,
    );
    only_on_error("a CA that did not sign the server", &wrong_ca).await;
    let wrong_password = redis_store(&block(&redis.ca_file, "QBGATE_TEST_WRONG_PASSWORD"), &env);
    only_on_error("a wrong password", &wrong_password).await;
    let mut no_ca = store.clone();
    no_ca.ca_file = None;
    only_on_error("the built-in roots only", &no_ca).await;
    let plain = RedisStore::single(format!("redis://127.0.0.1:{port}/"), false);
    only_on_error("plain TCP to a TLS port", &plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (Debian; its --sentinel mode); .ci/run installs it and runs it"]
async fn sentinel_follows_a_failover_under_load() {
    failover_under_load(
        "sentinel_follows_a_failover_under_load",
        Failover::KillPrimary,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (Debian; its --sentinel mode); .ci/run installs it and runs it"]
async fn sentinel_follows_a_manual_failover_under_load() {
    failover_under_load(
        "sentinel_follows_a_manual_failover_under_load",
        Failover::Command,
    )
    .await;
}

enum Failover {
    /// The primary dies: nothing answers until the sentinel promotes the replica.
    KillPrimary,
    /// `SENTINEL FAILOVER`: the old primary becomes a replica and refuses writes.
    Command,
}

async fn failover_under_load(test: &str, how: Failover) {
    let mut redis = SentinelRedis::start(test);
    let store = RedisStore {
        servers: RedisServers::Sentinel {
            master_name: SentinelRedis::MASTER.into(),
            nodes: vec![format!("redis://{}", redis.node())],
        },
        password: None,
        ca_file: None,
        on_error_allow: false,
    };
    let (a, b) = two_gateways(&store).await;
    within_two_percent(
        "Sentinel",
        offered_load(&a, &b, Duration::from_millis(1200)).await,
    );
    assert_eq!(a.redis_errors() + b.redis_errors(), 0);

    // Kill the primary while both gateways keep asking. `key 1`: 100 per second, bursts of 5.
    let q = Quota {
        per_second: nz(100),
        burst: nz(5),
        ..Quota::default()
    };
    let k = keys(&[("billing", accuracy_quota()), ("failover", q)]);
    let (a, b) = (Arc::new(a.rebuild(&k)), Arc::new(b.rebuild(&k)));
    let start = Instant::now();
    let load = |l: Arc<Limiters>| {
        tokio::spawn(async move {
            // (admitted, refused by on_error, admitted after an on_error refusal)
            let (mut admitted, mut after_outage) = (0u64, 0u64);
            let mut outage = false;
            while start.elapsed() < Duration::from_secs(8) {
                let errors = l.redis_errors();
                match l.check(1, None).await {
                    Decision::Allowed(_) => {
                        admitted += 1;
                        after_outage += u64::from(outage);
                    }
                    Decision::Limited { .. } if l.redis_errors() > errors => outage = true,
                    Decision::Limited { .. } => {}
                    Decision::Unlimited => panic!("deny never answers unlimited"),
                }
                if after_outage >= 100 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (admitted, after_outage)
        })
    };
    let tasks = [
        load(Arc::clone(&a)),
        load(Arc::clone(&b)),
        load(Arc::clone(&a)),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    match how {
        Failover::KillPrimary => redis.primary.kill(),
        Failover::Command => {
            let reply = cli(
                redis.sentinel.port,
                &["SENTINEL", "FAILOVER", SentinelRedis::MASTER],
            );
            assert!(reply.contains("OK"), "SENTINEL FAILOVER: {reply}");
        }
    }
    let mut admitted = 0;
    let mut after = 0;
    for t in tasks {
        let (n, m) = t.await.expect("no panic under failover");
        admitted += n;
        after += m;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Failover::KillPrimary = how {
        assert!(
            a.redis_errors() + b.redis_errors() > 0,
            "on_error applied while no primary answered"
        );
    }
    match how {
        Failover::KillPrimary => assert!(
            after >= 100,
            "the new primary serves: {after} admitted after the outage"
        ),
        // Effects replicate as writes, so script calls on the former replica came from us.
        Failover::Command => {
            let stats = cli(redis.replica.port, &["INFO", "commandstats"]);
            assert!(
                stats.contains("cmdstat_evalsha:"),
                "the limiter moved to the new primary: {stats}"
            );
        }
    }
    // What the old primary took after the promotion is lost, so the new one may grant one
    // more burst (its stored times lag, and a lagging bucket is simply full): never more.
    let most = (5.0 + 100.0 * elapsed) * 1.02 + 5.0;
    assert!(
        (admitted as f64) <= most,
        "limit held through the failover: {admitted} admitted, at most {most:.0}"
    );
    let master = cli(
        redis.sentinel.port,
        &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SentinelRedis::MASTER],
    );
    assert!(
        master.contains(&redis.replica.port.to_string()),
        "the replica was promoted: {master}"
    );
}

/// The store's settings for `redis`'s nodes, `on_error: deny`.
fn cluster_store(redis: &ClusterRedis) -> RedisStore {
    RedisStore {
        servers: RedisServers::Cluster {
            nodes: redis
                .node_list()
                .iter()
                .map(|n| format!("redis://{n}"))
                .collect(),
        },
        password: None,
        ca_file: None,
        on_error_allow: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli (Debian); .ci/run installs them and runs it"]
async fn cluster_keeps_a_key_and_its_users_in_one_slot() {
    let redis = ClusterRedis::start("cluster_keeps_a_key_and_its_users_in_one_slot");
    let store = cluster_store(&redis);
    let (a, b) = two_gateways(&store).await;
    within_two_percent(
        "Cluster",
        offered_load(&a, &b, Duration::from_millis(1500)).await,
    );
    // A script whose keys spanned two slots would fail (CROSSSLOT) and count here.
    assert_eq!(a.redis_errors() + b.redis_errors(), 0);
    let mut holders = Vec::new();
    let mut names = Vec::new();
    for node in &redis.nodes {
        let found = cli(node.port, &["KEYS", "qbgate:*"]);
        let found: Vec<String> = found
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if !found.is_empty() {
            holders.push(node.port);
        }
        names.extend(found);
    }
    // User buckets of this quota are full again within microseconds and expire at once, so
    // their slot is asked of the cluster by name.
    let key = RedisKey::new(&Arc::from("billing"), &accuracy_quota()).expect("windows");
    assert_eq!(
        names,
        std::slice::from_ref(&key.state_key),
        "the key's state"
    );
    assert_eq!(holders.len(), 1);
    let slot = |name: &str| cli(holders[0], &["CLUSTER", "KEYSLOT", name]);
    for user in [1, 6, 99_999_999] {
        assert_eq!(
            slot(&format!("{}{user}", key.user_prefix)),
            slot(&key.state_key),
            "a user's bucket shares its key's slot"
        );
    }
}

/// In a Cluster, a script call carries only one key's checks (a script's keys must share a
/// slot); concurrent checks of keys spread over the nodes all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server and redis-cli (Debian); .ci/run installs them and runs it"]
async fn cluster_calls_carry_one_key_s_checks() {
    let redis = ClusterRedis::start("cluster_calls_carry_one_key_s_checks");
    let store = cluster_store(&redis);
    let q = Quota {
        per_minute: nz(100_000),
        per_user_per_second: nz(100_000),
        ..Quota::default()
    };
    let ids: Vec<String> = (0..8).map(|i| format!("key{i}")).collect();
    let list: Vec<(&str, Quota)> = ids.iter().map(|id| (id.as_str(), q.clone())).collect();
    let l = Arc::new(
        Limiters::redis(&store, &keys(&list))
            .await
            .expect("limiters"),
    );
    wait_until_connected(&l).await;
    for _ in 0..5 {
        let tasks: Vec<_> = (0..64u32)
            .map(|i| {
                let l = Arc::clone(&l);
                tokio::spawn(async move { l.check(i % 8, Some(u64::from(i % 3))).await })
            })
            .collect();
        for t in tasks {
            let decision = t.await.expect("task");
            assert!(matches!(decision, Decision::Allowed(_)), "{decision:?}");
        }
    }
    // A call whose keys spanned two slots would fail (CROSSSLOT) and count here.
    assert_eq!(l.redis_errors(), 0);
    let called = redis
        .nodes
        .iter()
        .filter(|node| cli(node.port, &["INFO", "commandstats"]).contains("cmdstat_evalsha:"))
        .count();
    assert!(called > 1, "the keys are spread over the nodes: {called}");
}

/// Bytes the server side of loopback TCP connections to `port` has received and not read.
fn unread_bytes(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, rem_address, st (01: established), tx_queue:rx_queue
            (f.get(1)?.ends_with(&local) && *f.get(3)? == "01")
                .then(|| u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok())?
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn concurrent_requests_share_one_connection_and_script_calls() {
    let server = Server::start("concurrent_requests_share_one_connection_and_script_calls");
    let q = Quota {
        per_second: nz(100_000),
        per_user_per_second: nz(100_000),
        ..Quota::default()
    };
    let l = Arc::new(
        Limiters::redis(&single(&server.url(), OnError::Deny), &keys(&[("k", q)]))
            .await
            .expect("limiters"),
    );
    wait_until_connected(&l).await;
    assert!(cli(server.port, &["CONFIG", "RESETSTAT"]).contains("OK"));
    let signal = |sig: &str| {
        let status = Command::new("kill")
            .args([sig, &server.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    // Redis stopped: every request is written before any reply could come back.
    signal("-STOP");
    const N: usize = 64;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let l = Arc::clone(&l);
            tokio::spawn(async move { l.check(0, Some(1 + i as u64 % 2)).await })
        })
        .collect();
    // Until every call is on the socket (or a second), then let Redis run. The callers time
    // out after COMMAND_TIMEOUT, but what they wrote stays queued for Redis.
    let sent = Instant::now();
    let mut queued = unread_bytes(server.port);
    while queued < (N as u64) * 100 && sent.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        queued = unread_bytes(server.port);
    }
    signal("-CONT");
    let held = sent.elapsed();
    // An EVALSHA with two keys and two windows' parameters (48 bytes each) is over 100 bytes.
    assert!(
        queued >= (N as u64) * 100,
        "all {N} calls were in flight at once on the socket: {queued} bytes queued"
    );
    let mut decisions = Vec::new();
    for t in tasks {
        decisions.push(t.await.expect("task"));
    }
    // On a machine so loaded that Redis stayed stopped past the command timeout, the callers
    // gave up (on_error); Redis still ran every call it had received, counted below.
    let in_time = held < COMMAND_TIMEOUT - Duration::from_millis(50);
    if in_time {
        assert!(
            decisions.iter().all(|d| matches!(d, Decision::Allowed(_))),
            "{decisions:?}"
        );
        assert_eq!(l.redis_errors(), 0);
    }
    let stats = cli(server.port, &["INFO", "commandstats"]);
    let calls: usize = stats
        .split("cmdstat_evalsha:calls=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no EVALSHA: {stats}"));
    // Checks queued together share a call (2 for these 64 on an idle machine, at most 9 under
    // load); never more than one per request.
    assert!(
        calls <= N / 4,
        "{N} concurrent checks share script calls: {calls} calls"
    );
    let called: Vec<&str> = stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_"))
        // What the script runs inside its one call, and this test's own commands.
        .filter(|l| {
            !["time", "mget", "set", "info", "config|resetstat"]
                .iter()
                .any(|c| l.starts_with(&format!("cmdstat_{c}:")))
        })
        .collect();
    assert_eq!(called.len(), 1, "nothing but EVALSHA: {called:?}");
    let clients = cli(server.port, &["CLIENT", "LIST"]);
    if !in_time {
        return;
    }
    assert_eq!(
        clients
            .lines()
            .filter(|l| !l.contains("cmd=client"))
            .count(),
        1,
        "one connection: {clients}"
    );
}

/// Log lines written while the test runs (this thread's subscriber).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
#[ignore = "needs redis-server (Debian, built with TLS); .ci/run installs it and runs it"]
async fn tls_and_auth_failures_are_logged_without_the_password() {
    const PASSWORD: &str = "pw-never-logged-7f3a";
    let redis = TlsRedis::start(
        "tls_and_auth_failures_are_logged_without_the_password",
        PASSWORD,
    );
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let env = |_: &str| Some(PASSWORD.to_string());
    let url = format!("rediss://limiter@127.0.0.1:{}/", redis.server.port);
    let wrong_ca = redis_store(
        &format!(
            "    url: {url}\n    password: {{ env: P }}\n    ca_file: {}\n    on_error: deny\n",
            redis.other_ca_file.display()
        ),
        &env,
    );
    only_on_error("a CA that did not sign the server", &wrong_ca).await;
    let text = String::from_utf8_lossy(&log.0.lock().expect("log")).into_owned();
    assert!(
        text.contains("Redis unreachable") && text.to_lowercase().contains("certificate"),
        "the warning names the TLS failure: {text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    let wrong_user = redis_store(
        &format!(
            "    url: rediss://nobody@127.0.0.1:{}/\n    password: {{ env: P }}\n    ca_file: {}\n    on_error: deny\n",
            redis.server.port,
            redis.ca_file.display()
        ),
        &env,
    );
    only_on_error("an unknown ACL user", &wrong_user).await;
    let text = String::from_utf8_lossy(&log.0.lock().expect("log")).into_owned();
    assert!(!text.contains(PASSWORD), "{text}");
}

/// A SplitMix64 stream: the same cases on every run.
struct Cases(u64);

impl Cases {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn packed(values: &[u64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| (v as f64).to_le_bytes())
        .collect()
}

/// Windows' parameters as the script's arguments carry them.
fn params(ws: &[crate::ratelimit::gcra::Window]) -> Vec<u8> {
    packed(
        &ws.iter()
            .flat_map(|w| {
                [
                    w.rate,
                    w.period,
                    w.step_whole,
                    w.step_frac,
                    w.limit_whole,
                    w.limit_frac,
                ]
            })
            .collect::<Vec<_>>(),
    )
}

fn unpacked(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as u64)
        .collect()
}

/// The script on a clock the test sets: its last two arguments (seconds, microseconds), taken
/// off `ARGV` before the checks are read.
fn with_test_clock() -> String {
    let clock = "local clock = redis.call('TIME')";
    assert_eq!(
        SCRIPT.matches(clock).count(),
        1,
        "the script reads TIME once"
    );
    SCRIPT.replacen(
        clock,
        "local clock = { ARGV[#ARGV - 1], ARGV[#ARGV] }\nARGV[#ARGV] = nil\nARGV[#ARGV] = nil",
        1,
    )
}

/// A redis-server for `test`, the script on a test clock, and a connection to the server.
async fn on_test_clock(test: &str) -> (Server, Script, ::redis::aio::MultiplexedConnection) {
    let server = Server::start(test);
    let client = Client::open(server.url()).expect("client");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    (server, Script::new(&with_test_clock()), conn)
}

/// The script, run by a real redis-server on a clock the test sets, gives exactly what
/// `Window::check` gives: allowed, remaining, reset and wait per window, the state it stores
/// (nothing on a refusal) and an expiry at the moment the bucket is full again. Random windows
/// (1 to 4 of the key's, and the user's) from empty, drained, part-filled and refusing states.
#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn script_matches_window_check_exactly() {
    use crate::ratelimit::gcra::{Tat, Window};

    let (_server, script, mut conn) = on_test_clock("script_matches_window_check_exactly").await;
    let periods = [1_000_000, 60_000_000, 3_600_000_000, 86_400_000_000];
    let mut cases = Cases(21);
    let (mut admitted, mut refused) = (0, 0);
    for case in 0..1500 {
        let now = 1_764_000_000_000_000 + cases.below(1 << 40);
        let windows: Vec<Window> = (0..1 + cases.below(5))
            .map(|_| {
                let most = [3, 1000, 1_000_000][cases.below(3) as usize];
                let rate = 1 + cases.below(most) as u32;
                let burst = 1 + cases.below(u64::from(rate) * 2) as u32;
                let period = periods[cases.below(4) as usize];
                Window::new(
                    "w",
                    nz(rate).expect("rate"),
                    nz(burst).expect("burst"),
                    period,
                )
            })
            .collect();
        // The last window is the user's; the others the key's (possibly none).
        let tats: Vec<Option<Tat>> = windows
            .iter()
            .map(|w| {
                // Absent (a full bucket), drained (in the past), or in the future: part-filled,
                // or far enough ahead to refuse.
                let depth = w.limit_whole + 1;
                match cases.below(4) {
                    0 => None,
                    1 => Some(Tat {
                        a: now - cases.below(depth) - 1,
                        b: cases.below(w.rate) as u32,
                    }),
                    _ => Some(Tat {
                        a: now + cases.below(depth + depth / 4 + w.step_whole + 2),
                        b: cases.below(w.rate) as u32,
                    }),
                }
            })
            .collect();
        // The key's windows are stored together: all of them or none.
        let mut tats = tats;
        let k = tats.len() - 1;
        if tats[..k].contains(&None) {
            tats[..k].fill(None);
        }
        let (user, key) = windows.split_last().expect("one window");
        let (user_tat, key_tats) = tats.split_last().expect("one state");
        let names = [format!("case:{case}"), format!("case:{case}:u")];
        let state = |tats: &[Option<Tat>]| -> Option<Vec<u8>> {
            let tats: Option<Vec<Tat>> = tats.iter().copied().collect();
            tats.map(|t| {
                packed(
                    &t.iter()
                        .flat_map(|t| [t.a, u64::from(t.b)])
                        .collect::<Vec<_>>(),
                )
            })
        };
        let (key_state, user_state) = (state(key_tats), state(&[*user_tat]));
        for (name, value) in names.iter().zip([&key_state, &user_state]) {
            if let Some(value) = value {
                let () = ::redis::cmd("SET")
                    .arg(name)
                    .arg(value)
                    .query_async(&mut conn)
                    .await
                    .expect("set");
            }
        }
        let reply: String = script
            .key(&names[0])
            .key(&names[1])
            .arg(params(key))
            .arg(params(std::slice::from_ref(user)))
            .arg(now / 1_000_000)
            .arg(now % 1_000_000)
            .invoke_async(&mut conn)
            .await
            .expect("script");
        let reply: Vec<i64> = reply
            .split(' ')
            .map(|n| n.parse().expect("a decimal"))
            .collect();

        let outcomes: Vec<_> = windows
            .iter()
            .zip(&tats)
            .map(|(w, t)| w.check(t.unwrap_or_default(), now))
            .collect();
        let all = outcomes.iter().all(|o| o.allowed);
        let mut expect = vec![i64::from(all)];
        for o in &outcomes {
            expect.extend([o.remaining, o.reset, o.wait].map(|v| v as i64));
        }
        // The one documented inexactness: `remaining` of a window whose depth x rate passes
        // 2^53 (large day quotas) may be one off. Everything else is exact.
        let mut reply = reply;
        for (i, w) in windows.iter().enumerate() {
            let at = 1 + 3 * i;
            let inexact = u128::from(w.limit_whole) * u128::from(w.rate) >= 1 << 53;
            if inexact && reply.get(at).is_some_and(|r| r.abs_diff(expect[at]) <= 1) {
                reply[at] = expect[at];
            }
        }
        assert_eq!(
            reply, expect,
            "case {case}: {windows:?} from {tats:?} at {now}"
        );

        let (user_out, key_out) = outcomes.split_last().expect("one outcome");
        for (name, before, outs) in [
            (&names[0], &key_state, key_out),
            (&names[1], &user_state, std::slice::from_ref(user_out)),
        ] {
            let stored: Option<Vec<u8>> = ::redis::cmd("GET")
                .arg(name)
                .query_async(&mut conn)
                .await
                .expect("get");
            if !all || outs.is_empty() {
                assert_eq!(&stored, before, "case {case}: {name} untouched");
                continue;
            }
            let full_in = outs.iter().map(|o| o.reset).max().unwrap_or(0) / 1000 + 1;
            let Some(stored) = stored else {
                // Expired already: a bucket full again within milliseconds.
                assert!(full_in < 100, "case {case}: {name} not stored");
                continue;
            };
            let next: Vec<u64> = outs
                .iter()
                .flat_map(|o| [o.next.a, u64::from(o.next.b)])
                .collect();
            assert_eq!(unpacked(&stored), next, "case {case}: {name}");
            let ttl: i64 = ::redis::cmd("PTTL")
                .arg(name)
                .query_async(&mut conn)
                .await
                .expect("pttl");
            assert!(
                (full_in as i64 - 1000..=full_in as i64).contains(&ttl),
                "case {case}: {name} expires when full again: {ttl} ms, not {full_in}"
            );
        }
        if all {
            admitted += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        admitted > 300 && refused > 300,
        "{admitted} admitted, {refused} refused"
    );
}

/// A batch decides as its checks would one after another at the same instant: a later check of
/// a key or user sees what an earlier one in the same call admitted, a refusal changes nothing,
/// and each changed state is stored once, as the last check left it. Random batches (1 to 12
/// checks) over three keys (their own windows, a user window, or both) and three users, on a
/// clock that runs with real time (so a state Redis let expire is one the model sees full), held
/// against `Window::check` applied in order.
#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn a_batch_decides_as_its_checks_one_after_another() {
    use crate::ratelimit::gcra::{Tat, Window};
    use std::collections::HashMap;

    let (_server, script, mut conn) =
        on_test_clock("a_batch_decides_as_its_checks_one_after_another").await;
    let w = |rate: u32, burst: u32, period: u64| {
        Window::new(
            "w",
            nz(rate).expect("rate"),
            nz(burst).expect("burst"),
            period,
        )
    };
    // (key windows, user window)
    let keys: [(Vec<Window>, Option<Window>); 3] = [
        (vec![w(3, 4, 1_000_000)], Some(w(1, 2, 1_000_000))),
        (vec![w(5, 2, 1_000_000), w(20, 20, 60_000_000)], None),
        (vec![], Some(w(2, 3, 1_000_000))),
    ];
    let mut model: HashMap<String, Vec<Tat>> = HashMap::new();
    let mut cases = Cases(7);
    let start = Instant::now();
    let mut skip = 0;
    let (mut admitted, mut refused, mut repeats) = (0, 0, 0);
    for batch in 0..400 {
        skip += cases.below(400_000);
        let now = 1_764_000_000_000_000 + start.elapsed().as_micros() as u64 + skip;
        let checks: Vec<(usize, Option<u64>)> = (0..1 + cases.below(12))
            .map(|_| {
                let k = cases.below(3) as usize;
                (k, keys[k].1.as_ref().map(|_| cases.below(3)))
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        repeats += usize::from(checks.iter().any(|c| !seen.insert(c.0)));
        let key_name = |k: usize| format!("b:{{{k}}}");
        let user_name = |k: usize, u: u64| format!("b:{{{k}}}:u:{u}");

        let mut call = script.prepare_invoke();
        for &(k, user) in &checks {
            call.key(key_name(k));
            if let Some(u) = user {
                call.key(user_name(k, u));
            }
        }
        for &(k, user) in &checks {
            call.arg(params(&keys[k].0));
            match user {
                Some(_) => call.arg(params(keys[k].1.as_slice())),
                None => call.arg(Vec::<u8>::new()),
            };
        }
        let reply: String = call
            .arg(now / 1_000_000)
            .arg(now % 1_000_000)
            .invoke_async(&mut conn)
            .await
            .expect("script");

        let mut expect = Vec::new();
        // Per changed name: the expiry its last write set, in ms.
        let mut written: HashMap<String, u64> = HashMap::new();
        for &(k, user) in &checks {
            let (windows, user_window) = &keys[k];
            let mut states = vec![(key_name(k), windows.as_slice())];
            if let (Some(u), Some(uw)) = (user, user_window) {
                states.push((user_name(k, u), std::slice::from_ref(uw)));
            }
            let outcomes: Vec<Vec<_>> = states
                .iter()
                .map(|(name, ws)| {
                    let tats = model
                        .get(name)
                        .filter(|t| t.len() == ws.len())
                        .cloned()
                        .unwrap_or_else(|| vec![Tat::default(); ws.len()]);
                    ws.iter().zip(tats).map(|(w, t)| w.check(t, now)).collect()
                })
                .collect();
            let all = outcomes.iter().flatten().all(|o| o.allowed);
            let mut part = vec![u64::from(all).to_string()];
            for o in outcomes.iter().flatten() {
                part.extend([o.remaining, o.reset, o.wait].map(|v| v.to_string()));
            }
            expect.push(part.join(" "));
            if all {
                admitted += 1;
                for ((name, _), outs) in states.iter().zip(&outcomes) {
                    if outs.is_empty() {
                        continue;
                    }
                    model.insert(name.clone(), outs.iter().map(|o| o.next).collect());
                    let full_in = outs.iter().map(|o| o.reset).max().unwrap_or(0) / 1000 + 1;
                    written.insert(name.clone(), full_in);
                }
            } else {
                refused += 1;
            }
        }
        assert_eq!(
            reply,
            expect.join(","),
            "batch {batch}: {checks:?} at {now}"
        );
        for (name, full_in) in written {
            let stored: Option<Vec<u8>> = ::redis::cmd("GET")
                .arg(&name)
                .query_async(&mut conn)
                .await
                .expect("get");
            match stored {
                Some(stored) => {
                    let next: Vec<u64> = model[&name]
                        .iter()
                        .flat_map(|t| [t.a, u64::from(t.b)])
                        .collect();
                    assert_eq!(unpacked(&stored), next, "batch {batch}: {name}");
                }
                None => assert!(full_in < 100, "batch {batch}: {name} not stored"),
            }
        }
    }
    assert!(
        admitted > 300 && refused > 300 && repeats > 200,
        "{admitted} admitted, {refused} refused, {repeats} batches repeating a key"
    );
}

#[test]
fn the_script_s_reply_is_read_strictly() {
    let quota = Quota {
        per_second: nz(10),
        per_user_per_second: nz(3),
        ..Quota::default()
    };
    let key = RedisKey::new(&Arc::from("billing"), &quota).expect("a limited key");
    let read = |with_user: bool, text: &str| decode(&key.meta, with_user, text.as_bytes());
    // Allowed, the key's window then the user's: remaining, reset µs, wait µs.
    let Some(Decision::Allowed(info)) = read(true, "1 9 100000 0 2 333334 0") else {
        panic!("a well-formed admission");
    };
    assert_eq!(info.remaining(), 2, "the tightest window");
    assert!(matches!(
        read(true, "0 9 100000 0 0 666667 333333"),
        Some(Decision::Limited { .. })
    ));
    assert!(read(false, "1 9 100000 0").is_some(), "no user window");
    // A negative remaining (a bucket overdrawn elsewhere) reads as none left.
    assert!(read(false, "1 -1 100000 0").is_some());
    for bad in [
        "",
        "1",
        "1 9 100000",
        "1 9 100000 0 2 333334 0",    // a window too many without a user
        "2 9 100000 0",               // allowed is 1 or 0
        "1 9 100000 5",               // admitted, yet a window waits
        "0 9 100000 0",               // refused, yet no window waits
        "1 9  100000 0",              // an empty item
        "1 9 100000 0 ",              // a trailing space
        "1 9 1e5 0",                  // not a decimal
        "1 9 99999999999999999999 0", // past i64
        "1 - 0 0",
        "1 9 100000 0,1 9 100000 0", // two checks' parts as one
    ] {
        assert!(read(false, bad).is_none(), "{bad:?} was accepted");
    }
    // A batch's reply: exactly one part per check.
    let reply = Value::BulkString(b"1 9 100000 0,0 0 5 5,1 8 1 0".to_vec());
    let parts = split_reply(&reply, 3).expect("three parts");
    assert_eq!(parts[1], b"0 0 5 5");
    assert!(split_reply(&reply, 2).is_none());
    assert!(split_reply(&reply, 4).is_none());
    assert!(split_reply(&Value::Int(1), 1).is_none());
    let array = Value::Array(vec![
        Value::Int(1),
        Value::Int(9),
        Value::Int(1),
        Value::Int(0),
    ]);
    assert!(split_reply(&array, 1).is_none());
}
