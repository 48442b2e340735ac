//! Rate limiting through the gateway: 429s and their fields, per-user buckets, reloads, and the
//! Redis store against a real `redis-server` on a free loopback port.
//!
//! Quotas are `per_hour` (or a one-second user bucket checked only for independence) so that no
//! result depends on how fast the machine is; loops are bounded.

use std::time::{Duration, Instant};

use qbgate::sandbox::seed::{OCCUPANT, OWNER};
use qbgate::Runtime;

use crate::support::*;

const LIST: &str = "/chat/Dialog.json";
const KEY_RL: &str = "test-key-rate-limited";
const KEY_RL2: &str = "test-key-rate-limited-2";
const KEY_RL3: &str = "test-key-rate-limited-3";

/// A YAML key entry for `extra_keys`.
fn key_entry(id: &str, key: &str, rate_limit: &str) -> String {
    format!(
        "- {{ id: {id}, sha256: {}, on_behalf_of: any, rate_limit: {{ {rate_limit} }} }}\n",
        digest(key)
    )
}

/// `(RateLimit-Policy, RateLimit)` of a reply, when both are present.
fn fields(reply: &Reply) -> (Option<String>, Option<String>) {
    let get = |name: &str| {
        reply
            .headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII field").to_string())
    };
    (get("ratelimit-policy"), get("ratelimit"))
}

/// The `r` parameter of a `RateLimit` field such as `"1h";r=2;t=1200`.
fn remaining(field: &str) -> u64 {
    field
        .split(';')
        .find_map(|p| p.trim().strip_prefix("r="))
        .unwrap_or_else(|| panic!("no r= in {field:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad r= in {field:?}: {e}"))
}

fn retry_after(reply: &Reply) -> u64 {
    reply
        .headers
        .get("retry-after")
        .expect("Retry-After on a 429")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in whole seconds")
}

/// Sends `n` GETs with `key` (as `user`) and returns how many were not 429.
async fn count_allowed(gate: &Gate, key: &str, user: Option<u64>, n: usize) -> usize {
    let mut allowed = 0;
    for _ in 0..n {
        let reply = gate.as_user(key, user, "GET", LIST, None).await;
        if reply.status == 429 {
            reply.assert_gate_error(429, "rate_limited", "base");
        } else {
            assert_eq!(
                reply.status,
                200,
                "{key} as {user:?}: {}",
                String::from_utf8_lossy(&reply.body)
            );
            allowed += 1;
        }
    }
    allowed
}

#[tokio::test]
async fn limited_requests_get_429_with_retry_after_and_are_not_forwarded() {
    let gate = Gate::start_with_keys("", &key_entry("rl", KEY_RL, "per_hour: 3")).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let reply = gate.as_user(KEY_RL, Some(OWNER), "GET", LIST, None).await;
        if reply.status == 429 {
            reply.assert_gate_error(429, "rate_limited", "base");
            let secs = retry_after(&reply);
            // One request every 20 minutes: the wait is long, whatever the timing.
            assert!(
                (1..=1200).contains(&secs) && secs > 60,
                "Retry-After {secs}"
            );
        } else {
            assert_ne!(reply.reason(), Some("rate_limited"));
        }
        statuses.push(reply.status);
    }
    let allowed = statuses.iter().filter(|s| **s != 429).count();
    assert_eq!(allowed, 3, "statuses {statuses:?}");
    assert!(
        statuses[..3].iter().all(|s| *s != 429) && statuses[3..].iter().all(|s| *s == 429),
        "statuses {statuses:?}"
    );
    // Only the three allowed requests reached the upstream.
    assert_eq!(gate.sandbox.received().len(), 3);

    // Another key is not affected.
    assert_ne!(
        gate.as_user(KEY_ANY, Some(OWNER), "GET", LIST, None)
            .await
            .status,
        429
    );
}

#[tokio::test]
async fn ratelimit_fields_on_allowed_and_limited_responses() {
    let gate = Gate::start_with_keys("", &key_entry("rl", KEY_RL, "per_hour: 3")).await;
    for i in 0..5u64 {
        let reply = gate.as_user(KEY_RL, Some(OWNER), "GET", LIST, None).await;
        let (policy, rate) = fields(&reply);
        assert_eq!(
            policy.as_deref(),
            Some("\"1h\";q=3;w=3600"),
            "RateLimit-Policy on response {i} (status {})",
            reply.status
        );
        let rate = rate.unwrap_or_else(|| {
            panic!(
                "RateLimit missing on response {i} (status {})",
                reply.status
            )
        });
        assert!(rate.starts_with("\"1h\";"), "RateLimit {rate:?}");
        let t = rate
            .split(';')
            .find_map(|p| p.strip_prefix("t="))
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no t= in {rate:?}"));
        assert!((1..=3600).contains(&t), "RateLimit {rate:?}");
        if i < 3 {
            assert_ne!(reply.status, 429);
            assert_eq!(remaining(&rate), 2 - i, "RateLimit {rate:?}");
        } else {
            reply.assert_gate_error(429, "rate_limited", "base");
            assert_eq!(remaining(&rate), 0, "RateLimit {rate:?}");
            assert!(retry_after(&reply) >= 1);
        }
    }
    // A key without quota gets no fields.
    let reply = gate.as_user(KEY_ANY, Some(OWNER), "GET", LIST, None).await;
    assert_eq!(fields(&reply), (None, None));
}

#[tokio::test]
async fn per_user_buckets_are_independent() {
    let gate = Gate::start_with_keys(
        "",
        &key_entry("rl", KEY_RL, "per_hour: 100, per_user_per_second: 1"),
    )
    .await;
    // Exhaust user A's one-per-second bucket (bounded: a slow machine refills it at most a few
    // times).
    let mut a_allowed = 0;
    let mut a_limited = None;
    for _ in 0..20 {
        let reply = gate.as_user(KEY_RL, Some(OWNER), "GET", LIST, None).await;
        if reply.status == 429 {
            a_limited = Some(reply);
            break;
        }
        a_allowed += 1;
    }
    let a_limited = a_limited.expect("user A is limited");
    assert!(a_allowed >= 1);
    a_limited.assert_gate_error(429, "rate_limited", "base");
    assert!(retry_after(&a_limited) >= 1);

    // User B, same key, right after: its own full bucket.
    let b = gate
        .as_user(KEY_RL, Some(OCCUPANT), "GET", LIST, None)
        .await;
    assert_ne!(b.status, 429, "user B limited by user A's bucket");
    // The refused request of A spent nothing of the key: A's 429 was not forwarded either.
    assert_eq!(gate.sandbox.received().len(), a_allowed + 1);
}

#[tokio::test]
async fn per_user_refusals_do_not_spend_the_key_quota() {
    // per_hour 3 for the key; user A is refused by its own bucket many times; B and C still
    // get the key's remaining allowance.
    let gate = Gate::start_with_keys(
        "",
        &key_entry("rl", KEY_RL, "per_hour: 3, per_user_per_second: 1"),
    )
    .await;
    let mut a_allowed = 0;
    let mut a_refused = 0;
    for _ in 0..10 {
        if gate
            .as_user(KEY_RL, Some(OWNER), "GET", LIST, None)
            .await
            .status
            == 429
        {
            a_refused += 1;
        } else {
            a_allowed += 1;
        }
    }
    assert!(a_refused >= 1, "user A never limited");
    assert!(a_allowed <= 3);
    let left = 3 - a_allowed;
    let others = count_allowed(&gate, KEY_RL, Some(OCCUPANT), 1).await
        + count_allowed(&gate, KEY_RL, Some(123), 1).await
        + count_allowed(&gate, KEY_RL, Some(7), 1).await;
    assert_eq!(others, left, "key allowance after A's refusals");
}

#[tokio::test]
async fn reload_keeps_unchanged_keys_resets_changed_ones_and_drops_removed() {
    let before = format!(
        "{}{}{}",
        key_entry("one", KEY_RL, "per_hour: 2"),
        key_entry("two", KEY_RL2, "per_hour: 2"),
        key_entry("three", KEY_RL3, "per_hour: 2"),
    );
    let gate = Gate::start_with_keys("", &before).await;
    for key in [KEY_RL, KEY_RL2, KEY_RL3] {
        assert_eq!(count_allowed(&gate, key, Some(OWNER), 4).await, 2, "{key}");
    }

    // Key "two" first now (the limiter indexes change), "one" unchanged, "two" changed,
    // "three" removed.
    let after = format!(
        "{}{}",
        key_entry("two", KEY_RL2, "per_hour: 5"),
        key_entry("one", KEY_RL, "per_hour: 2"),
    );
    let text = policy_text(&format!("http://{}", gate.sandbox_addr), "", &after);
    let runtime = Runtime::new(compile(&text), Some(&gate.gateway.runtime()))
        .await
        .expect("reload");
    gate.gateway.swap(runtime);

    assert_eq!(
        count_allowed(&gate, KEY_RL, Some(OWNER), 3).await,
        0,
        "unchanged key must keep its spent bucket"
    );
    assert_eq!(
        count_allowed(&gate, KEY_RL2, Some(OWNER), 8).await,
        5,
        "changed key starts fresh with the new quota"
    );
    let removed = gate.as_user(KEY_RL3, Some(OWNER), "GET", LIST, None).await;
    assert_eq!(removed.status, 401, "removed key: {:?}", removed.body);

    // A reload with the same policy keeps everything.
    let runtime = Runtime::new(compile(&text), Some(&gate.gateway.runtime()))
        .await
        .expect("reload");
    gate.gateway.swap(runtime);
    assert_eq!(count_allowed(&gate, KEY_RL, Some(OWNER), 2).await, 0);
    assert_eq!(count_allowed(&gate, KEY_RL2, Some(OWNER), 2).await, 0);
}

#[tokio::test]
async fn reload_with_the_same_policy_hands_out_no_fresh_burst() {
    let before = key_entry("one", KEY_RL, "per_hour: 50");
    let gate = Gate::start_with_keys("", &before).await;
    assert_eq!(count_allowed(&gate, KEY_RL, Some(OWNER), 3).await, 3);
    let text = policy_text(&format!("http://{}", gate.sandbox_addr), "", &before);
    let runtime = Runtime::new(compile(&text), Some(&gate.gateway.runtime()))
        .await
        .expect("reload");
    gate.gateway.swap(runtime);
    let reply = gate.as_user(KEY_RL, Some(OWNER), "GET", LIST, None).await;
    assert_ne!(reply.status, 429);
    // 50 - 4 left: the reload handed no fresh burst.
    assert_eq!(count_allowed(&gate, KEY_RL, Some(OWNER), 60).await, 46);
}

// ---------------------------------------------------------------------------------------------
// Redis store

use crate::support::redis_server::Server;

fn redis_section(port: u16, on_error: &str) -> String {
    format!(
        "rate_limit:\n  store: redis\n  redis:\n    url: redis://127.0.0.1:{port}\n    on_error: {on_error}\n"
    )
}

fn errors(gate: &Gate) -> u64 {
    gate.gateway.runtime().limiters.redis_errors()
}

/// Sends requests until one is answered by Redis again (the error counter stops moving);
/// returns that reply. Bounded by a deadline.
async fn until_reconnected(gate: &Gate, key: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = errors(gate);
        let reply = gate.as_user(key, Some(OWNER), "GET", LIST, None).await;
        if errors(gate) == before {
            return reply;
        }
        assert!(Instant::now() < deadline, "the gateway never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn redis_two_gateways_share_one_limit() {
    let server = Server::start("redis_two_gateways_share_one_limit");
    let section = redis_section(server.port, "deny");
    let keys = key_entry("rl", KEY_RL, "per_hour: 10");
    let a = Gate::start_with_keys(&section, &keys).await;
    let b = Gate::start_with_keys(&section, &keys).await;
    let mut allowed = 0;
    for i in 0..30 {
        let gate = if i % 2 == 0 { &a } else { &b };
        let reply = gate.as_user(KEY_RL, Some(OWNER), "GET", LIST, None).await;
        if reply.status == 429 {
            reply.assert_gate_error(429, "rate_limited", "base");
            assert!(retry_after(&reply) >= 1);
        } else {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "one limit across both gateways");
    assert_eq!(
        a.sandbox.received().len() + b.sandbox.received().len(),
        10,
        "only the allowed requests were forwarded"
    );
    assert_eq!(errors(&a) + errors(&b), 0, "no Redis errors");
    // Per-user buckets are shared too; another key has its own state.
    let keys2 = format!(
        "{keys}{}",
        key_entry("u", KEY_RL2, "per_hour: 100, per_user_per_second: 1")
    );
    let c = Gate::start_with_keys(&section, &keys2).await;
    let d = Gate::start_with_keys(&section, &keys2).await;
    assert_eq!(count_allowed(&c, KEY_RL, Some(OWNER), 3).await, 0);
    // User A: at most a handful allowed across both, and B is unaffected.
    let mut refused = false;
    for i in 0..20 {
        let gate = if i % 2 == 0 { &c } else { &d };
        if gate
            .as_user(KEY_RL2, Some(OWNER), "GET", LIST, None)
            .await
            .status
            == 429
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "user bucket shared across gateways never refused");
    assert_eq!(count_allowed(&d, KEY_RL2, Some(OCCUPANT), 1).await, 1);
}

#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn redis_down_on_error_allow_then_back() {
    let server = Server::start("redis_down_on_error_allow_then_back");
    let keys = key_entry("rl", KEY_RL, "per_hour: 3");
    let gate = Gate::start_with_keys(&redis_section(server.port, "allow"), &keys).await;
    assert_eq!(count_allowed(&gate, KEY_RL, Some(OWNER), 5).await, 3);
    assert_eq!(errors(&gate), 0);

    let port = server.stop();
    // Redis unreachable: everything passes, and is forwarded.
    let forwarded = gate.sandbox.received().len();
    assert_eq!(count_allowed(&gate, KEY_RL, Some(OWNER), 10).await, 10);
    assert_eq!(gate.sandbox.received().len(), forwarded + 10);
    assert_eq!(errors(&gate), 10);
    // And /metrics says so, for the alert on it (deploy/prometheus).
    assert!(
        qbgate::metrics::render()
            .contains("qbgate_ratelimit_store_errors_total{on_error=\"allow\"}"),
        "no store-error series in /metrics"
    );

    // Restarted (empty) on the same port: limiting resumes with the same gateway.
    let _server = Server::on(port);
    let first = until_reconnected(&gate, KEY_RL).await;
    assert_ne!(
        first.status, 429,
        "fresh Redis: the first request is allowed"
    );
    assert_eq!(
        count_allowed(&gate, KEY_RL, Some(OWNER), 10).await,
        2,
        "limit enforced again after the restart"
    );
}

#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn redis_down_on_error_deny_then_back() {
    let server = Server::start("redis_down_on_error_deny_then_back");
    let keys = key_entry("rl", KEY_RL, "per_hour: 3");
    let gate = Gate::start_with_keys(&redis_section(server.port, "deny"), &keys).await;
    assert_eq!(count_allowed(&gate, KEY_RL, Some(OWNER), 1).await, 1);

    let port = server.stop();
    let forwarded = gate.sandbox.received().len();
    for _ in 0..10 {
        let started = Instant::now();
        let reply = gate.as_user(KEY_RL, Some(OWNER), "GET", LIST, None).await;
        reply.assert_gate_error(429, "rate_limited", "base");
        assert_eq!(retry_after(&reply), 1);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a down Redis must not hang requests"
        );
    }
    assert_eq!(
        gate.sandbox.received().len(),
        forwarded,
        "nothing forwarded"
    );
    assert_eq!(errors(&gate), 10);
    // A key without quota never asks Redis.
    assert_ne!(
        gate.as_user(KEY_ANY, Some(OWNER), "GET", LIST, None)
            .await
            .status,
        429
    );

    let _server = Server::on(port);
    let first = until_reconnected(&gate, KEY_RL).await;
    assert_ne!(
        first.status, 429,
        "fresh Redis: the first request is allowed"
    );
    assert_eq!(count_allowed(&gate, KEY_RL, Some(OWNER), 5).await, 2);
}

#[tokio::test]
#[ignore = "needs redis-server (Debian); .ci/run installs it and runs it"]
async fn redis_reload_keeps_state_and_resets_changed_keys() {
    let server = Server::start("redis_reload_keeps_state_and_resets_changed_keys");
    let section = redis_section(server.port, "deny");
    let before = format!(
        "{}{}",
        key_entry("one", KEY_RL, "per_hour: 2"),
        key_entry("two", KEY_RL2, "per_hour: 2"),
    );
    let gate = Gate::start_with_keys(&section, &before).await;
    assert_eq!(count_allowed(&gate, KEY_RL, Some(OWNER), 3).await, 2);
    assert_eq!(count_allowed(&gate, KEY_RL2, Some(OWNER), 3).await, 2);
    let after = format!(
        "{}{}",
        key_entry("two", KEY_RL2, "per_hour: 4"),
        key_entry("one", KEY_RL, "per_hour: 2"),
    );
    let text = policy_text(&format!("http://{}", gate.sandbox_addr), &section, &after);
    let runtime = Runtime::new(compile(&text), Some(&gate.gateway.runtime()))
        .await
        .expect("reload");
    gate.gateway.swap(runtime);
    assert_eq!(count_allowed(&gate, KEY_RL, Some(OWNER), 3).await, 0);
    assert_eq!(count_allowed(&gate, KEY_RL2, Some(OWNER), 6).await, 4);
    assert_eq!(errors(&gate), 0);
}

/// One round trip per request through the whole gateway: each request with a user, refused or
/// admitted, is one `EVALSHA` and nothing else reaches Redis (what the script runs inside its
/// call is counted apart by Redis and allowed here).
#[tokio::test]
#[ignore = "needs redis-server and redis-cli (Debian); .ci/run installs them and runs it"]
async fn redis_one_script_call_per_request() {
    use crate::support::redis_deployments::cli;

    let server = Server::start("redis_one_script_call_per_request");
    let keys = key_entry(
        "rl",
        KEY_RL,
        "per_second: 1000, per_hour: 5, per_user_per_second: 1000",
    );
    let gate = Gate::start_with_keys(&redis_section(server.port, "deny"), &keys).await;
    // The first request loads the script; count from the second on.
    assert_eq!(count_allowed(&gate, KEY_RL, Some(OWNER), 1).await, 1);
    assert!(cli(server.port, &["CONFIG", "RESETSTAT"]).contains("OK"));
    const N: usize = 12;
    let mut allowed = 0;
    for i in 0..N {
        let user = [OWNER, OCCUPANT][i % 2];
        let reply = gate.as_user(KEY_RL, Some(user), "GET", LIST, None).await;
        allowed += usize::from(reply.status != 429);
    }
    assert_eq!(allowed, 4, "the hour's 5 minus the first");
    assert_eq!(errors(&gate), 0);
    let stats = cli(server.port, &["INFO", "commandstats"]);
    assert!(
        stats.contains(&format!("cmdstat_evalsha:calls={N},")),
        "one script call per request: {stats}"
    );
    let inside_the_script = ["time", "get", "mget", "set"];
    let others: Vec<&str> = stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_")?.split(':').next())
        .filter(|c| !["evalsha", "info", "config|resetstat"].contains(c))
        .filter(|c| !inside_the_script.contains(c))
        .collect();
    assert!(others.is_empty(), "nothing but EVALSHA: {others:?}");
}

// Redis as teams run it, through two gateways each: TLS with a private CA, an ACL user and a
// password from a file; Sentinel; Cluster.

use crate::support::redis_deployments::{ClusterRedis, SentinelRedis, TlsRedis};

/// Two gateways with `section` share one `per_hour: 10` limit, with no Redis error.
async fn two_gateways_share_ten(section: &str) {
    let keys = key_entry("rl", KEY_RL, "per_hour: 10, per_user_per_second: 1000");
    let a = Gate::start_with_keys(section, &keys).await;
    let b = Gate::start_with_keys(section, &keys).await;
    let mut allowed = 0;
    for i in 0..30 {
        let gate = if i % 2 == 0 { &a } else { &b };
        let reply = gate.as_user(KEY_RL, Some(OWNER), "GET", LIST, None).await;
        if reply.status == 429 {
            reply.assert_gate_error(429, "rate_limited", "base");
        } else {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "one limit across both gateways");
    assert_eq!(errors(&a) + errors(&b), 0, "no Redis errors");
}

#[tokio::test]
#[ignore = "needs redis-server (Debian, built with TLS); .ci/run installs it and runs it"]
async fn redis_tls_acl_password_file_shared_by_two_gateways() {
    let redis = TlsRedis::start(
        "redis_tls_acl_password_file_shared_by_two_gateways",
        "gw-pass",
    );
    let password = redis.ca_file.with_file_name("redis-password");
    std::fs::write(&password, "gw-pass\n").unwrap();
    let section = format!(
        "rate_limit:\n  store: redis\n  redis:\n    url: rediss://limiter@127.0.0.1:{}/\n    password: {{ file: {} }}\n    ca_file: {}\n    on_error: deny\n",
        redis.server.port,
        password.display(),
        redis.ca_file.display()
    );
    two_gateways_share_ten(&section).await;
}

#[tokio::test]
#[ignore = "needs redis-server (Debian; its --sentinel mode); .ci/run installs it and runs it"]
async fn redis_sentinel_shared_by_two_gateways() {
    let redis = SentinelRedis::start("redis_sentinel_shared_by_two_gateways");
    let section = format!(
        "rate_limit:\n  store: redis\n  redis:\n    sentinel: {{ master_name: {}, nodes: ['{}'] }}\n    on_error: deny\n",
        SentinelRedis::MASTER,
        redis.node()
    );
    two_gateways_share_ten(&section).await;
}

#[tokio::test]
#[ignore = "needs redis-server and redis-cli (Debian); .ci/run installs them and runs it"]
async fn redis_cluster_shared_by_two_gateways() {
    let redis = ClusterRedis::start("redis_cluster_shared_by_two_gateways");
    let section = format!(
        "rate_limit:\n  store: redis\n  redis:\n    cluster: {{ nodes: [{}] }}\n    on_error: deny\n",
        redis.node_list().join(", ")
    );
    two_gateways_share_ten(&section).await;
}
