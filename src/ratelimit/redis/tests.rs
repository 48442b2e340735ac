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
            "qbgate:{k}:v1:10:0:2:0:0:5",
            "qbgate:{k}:v1:10:0:2:0:0:5:u:1"
        ]
    );
    let (sec, min): (i64, i64) = ::redis::cmd("HMGET")
        .arg(&names[0])
        .arg("a1")
        .arg("a2")
        .query_async(&mut conn)
        .await
        .expect("hmget");
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
    let l = Limiters::redis(&single(&format!("redis://127.0.0.1:{port}/"), OnError::Allow),
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
