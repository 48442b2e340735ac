//! Microbenchmarks of the per-request pieces (issue 6): key lookup, path normalization,
//! update-document parsing and rule evaluation, the in-memory limiter check, and the metrics
//! recorded for every request. Short runs: `cargo bench --bench hot_path`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Method};

use qbgate::policy::{self, Policy};
use qbgate::ratelimit::{Decision, Limiters};
use qbgate::rules::{self, Actor, Dialog, DialogRequest, DialogRoute, DialogType, RuleOptions};

const KEYS: usize = 1000;

fn key(i: usize) -> String {
    format!("bench-key-{i:05}")
}

/// A policy like the one `bench/run` serves: 1,000 keys, `on_behalf_of: any`, generous limits.
fn bench_policy() -> Policy {
    let mut text = String::from(
        "version: 1\nupstream:\n  url: http://127.0.0.1:9\ndialog_rules:\n  mode: enforce\n  cache_ttl: 1h\nkeys:\n",
    );
    for i in 0..KEYS {
        text.push_str(&format!(
            "  - id: k{i:05}\n    sha256: {}\n    on_behalf_of: any\n    rate_limit: {{ per_second: 100000, burst: 100000, per_user_per_second: 100000 }}\n",
            policy::digest_hex(key(i).as_bytes())
        ));
    }
    policy::compile(&text).expect("bench policy compiles")
}

fn headers(key: &str, user: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("ApiKey {key}")).unwrap(),
    );
    h.insert("on-behalf-of", HeaderValue::from_str(user).unwrap());
    h.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    h.insert("user-agent", HeaderValue::from_static("bench"));
    h
}

fn fast() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

fn auth(c: &mut Criterion) {
    let policy = bench_policy();
    let now = SystemTime::now();
    let known: Vec<HeaderMap> = (0..KEYS)
        .step_by(97)
        .map(|i| headers(&key(i), "1001"))
        .collect();
    let unknown = headers("not-a-key-of-this-policy", "1001");
    let mut i = 0;
    c.bench_function("auth/authenticate (1,000 keys, hit)", |b| {
        b.iter(|| {
            i = (i + 1) % known.len();
            black_box(qbgate::auth::authenticate(&policy, black_box(&known[i]), now).is_ok())
        })
    });
    c.bench_function("auth/authenticate (unknown key)", |b| {
        b.iter(|| black_box(qbgate::auth::authenticate(&policy, black_box(&unknown), now).is_err()))
    });
}

fn normalize(c: &mut Criterion) {
    let h = headers(&key(1), "1001");
    let head = |uri: &'static str| {
        let mut parts = http::Request::get(uri).body(()).unwrap().into_parts().0;
        parts.headers = h.clone();
        parts
    };
    for (name, uri) in [
        (
            "normalize/GET /chat/Dialog.json",
            "/chat/Dialog.json?limit=100&skip=0",
        ),
        (
            "normalize/PUT /chat/Dialog/<id>.json",
            "/chat/Dialog/5f1c0e7a9b8c4d0012345678.json",
        ),
        (
            "normalize/percent-encoded, mixed case",
            "/CHAT/%44ialog/5f1c0e7a9b8c4d0012345678.JSON",
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter_batched(
                || head(uri),
                |mut parts| black_box(qbgate::request::normalize(&mut parts, true).is_ok()),
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

fn rules_update(c: &mut Criterion) {
    let dialog = Dialog {
        id: "5f1c0e7a9b8c4d0012345678".into(),
        kind: DialogType::Group,
        owner: 1001,
        occupants: vec![1001, 1002, 1003, 1004, 1005, 2001, 2002, 2003],
        admins: vec![],
    };
    let route = DialogRoute::Update {
        id: dialog.id.clone(),
    };
    let opts = RuleOptions::default();
    let segments = ["chat", "Dialog", "5f1c0e7a9b8c4d0012345678.json"];
    let judge = |content_type: &str, body: &[u8]| {
        let params = qbgate::params::parse(Some(content_type), None, body).expect("parses");
        let Ok(DialogRequest::Update(doc)) = rules::read(&route, &params, &opts) else {
            panic!("an update")
        };
        rules::check_update(&doc, &dialog, Actor::User(1002)).is_ok()
    };
    c.bench_function("rules/classify PUT /chat/Dialog/<id>", |b| {
        b.iter(|| black_box(rules::classify(&Method::PUT, black_box(&segments))))
    });
    let small = br#"{"name":"x"}"#;
    c.bench_function("rules/parse+read+check_update {\"name\":\"x\"}", |b| {
        b.iter(|| black_box(judge("application/json", black_box(small))))
    });
    let bigger = br#"{"name":"Team standup","photo":"https://example.com/p.png","data":{"class_name":"Meta","team":"core"},"push_all":{"occupants_ids":[1002]},"pull_all":{"occupants_ids":[1002]}}"#;
    c.bench_function("rules/parse+read+check_update (5 fields, JSON)", |b| {
        b.iter(|| black_box(judge("application/json", black_box(bigger))))
    });
    let form = b"name=Team+standup&push_all[occupants_ids][]=1002&push_all[occupants_ids][]=1003";
    c.bench_function("rules/parse+read+check_update (form)", |b| {
        b.iter(|| black_box(judge("application/x-www-form-urlencoded", black_box(form))))
    });
    let update: serde_json::Value = serde_json::json!({
        "_id": dialog.id, "type": 2, "user_id": 1001,
        "occupants_ids": dialog.occupants, "admin_ids": [], "name": "bench group",
        "last_message": "hello", "unread_messages_count": 0
    });
    let answer = serde_json::to_vec(&update).unwrap();
    c.bench_function("rules/learn: parse the PUT answer into a Dialog", |b| {
        b.iter(|| black_box(Dialog::from_slice(black_box(&answer))))
    });
    // The path `learn` took before: a whole `Value` tree, then the five fields.
    c.bench_function("rules/learn via a serde_json::Value (before)", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_slice(black_box(&answer)).unwrap();
            black_box(Dialog::from_json(&v))
        })
    });
}

fn limiter(c: &mut Criterion) {
    let policy = bench_policy();
    let keys: Vec<(Arc<str>, Option<qbgate::policy::Quota>)> = policy
        .keys
        .iter()
        .map(|k| (k.id.clone(), k.quota.clone()))
        .collect();
    let limiters = Limiters::memory(&keys);
    let mut i: u32 = 0;
    let check = |key: u32, user: Option<u64>| match limiters.check(key, user).now_or_never() {
        Some(Decision::Allowed(_)) | Some(Decision::Unlimited) => true,
        Some(Decision::Limited { .. }) => false,
        None => unreachable!("the memory store never awaits"),
    };
    c.bench_function("ratelimit/memory check (key + user bucket)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(check(i % KEYS as u32, Some(1001 + u64::from(i % 5))))
        })
    });
    let no_user: Vec<_> = keys
        .iter()
        .map(|(id, q)| {
            let mut q = q.clone();
            if let Some(q) = q.as_mut() {
                q.per_user_per_second = None;
            }
            (id.clone(), q)
        })
        .collect();
    let key_only = Limiters::memory(&no_user);
    c.bench_function("ratelimit/memory check (key windows only)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            black_box(
                key_only
                    .check(i % KEYS as u32, None)
                    .now_or_never()
                    .is_some(),
            )
        })
    });
    if let Some(Decision::Allowed(info)) = limiters.check(0, Some(1001)).now_or_never() {
        c.bench_function("ratelimit/RateLimit + RateLimit-Policy headers", |b| {
            b.iter(|| black_box((info.policy_header(), info.ratelimit_header())))
        });
    }
}

fn per_request_overheads(c: &mut Criterion) {
    // The recorder bench/run's qbgate has installed; every request records one counter and one
    // histogram with labels (src/metrics.rs `request`).
    let _ = qbgate::metrics::handle();
    let key: Arc<str> = Arc::from("k00042");
    c.bench_function("metrics/request counter+histogram", |b| {
        b.iter(|| {
            qbgate::metrics::request(
                black_box(Some(&key)),
                "/chat/Dialog",
                black_box(200),
                "",
                black_box(0.000_8),
            )
        })
    });
    let route = qbgate::request::CanonicalPath::parse(&http::uri::PathAndQuery::from_static(
        "/chat/Dialog.json",
    ))
    .unwrap();
    c.bench_function("metrics/route_label", |b| {
        b.iter(|| black_box(black_box(&route).route_label()))
    });
}

criterion_group! {
    name = hot_path;
    config = fast();
    targets = auth, normalize, rules_update, limiter, per_request_overheads
}
criterion_main!(hot_path);
