//! Operations: hot reload (file watch and explicit), graceful drain, admin endpoints, metrics.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qbgate::policy::Overrides;
use qbgate::sandbox::{Fault, Sandbox};
use qbgate::{Gateway, Runtime};
use tokio::net::TcpListener;

use crate::support::*;

/// A policy file in its own directory, with the upstream key in a secret file.
fn policy_dir(sandbox: std::net::SocketAddr, extra_keys: &str) -> (std::path::PathBuf, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "qbgate-ops-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("api-key"), UPSTREAM_KEY).unwrap();
    let text = policy_text(&format!("http://{sandbox}"), "", extra_keys).replace(
        "{ env: QB_API_KEY }",
        &format!("{{ file: {} }}", dir.join("api-key").display()),
    );
    let path = dir.join("policy.yaml");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

async fn sandbox() -> (Sandbox, std::net::SocketAddr) {
    let sandbox = Sandbox::new(Some(UPSTREAM_KEY.to_string()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sb = sandbox.clone();
    tokio::spawn(async move { sb.serve(listener, std::future::pending()).await });
    (sandbox, addr)
}

#[tokio::test]
async fn fifty_reloads_under_load_fail_no_request_and_a_bad_policy_keeps_the_last_good_one() {
    let (sandbox, addr) = sandbox().await;
    let (path, text) = policy_dir(addr, "");
    let gate = Gate::start_policy(sandbox, addr, &compile_friendly(&path, &text)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(gate);
    let mut load = Vec::new();
    for _ in 0..4 {
        let (gate, stop, failures, done) =
            (gate.clone(), stop.clone(), failures.clone(), done.clone());
        load.push(tokio::spawn(async move {
            // Bounded: stops when told, or after 5,000 requests.
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let reply = gate
                    .as_user(KEY_APP, None, "GET", "/chat/Dialog.json", None)
                    .await;
                if reply.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let overrides = Overrides::default();
    for i in 0..50 {
        // Alternate two valid policies, so each reload really swaps a generation.
        let body = if i % 2 == 0 {
            format!("{text}\n# reload {i}\n")
        } else {
            text.clone()
        };
        std::fs::write(&path, body).unwrap();
        assert!(
            qbgate::reload::reload(&gate.gateway, &path, &overrides, false).await,
            "reload {i}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = gate.gateway.runtime().policy.digest.clone();
    std::fs::write(&path, "version: 1\nkeys: [ { id: x } ]\n").unwrap();
    assert!(!qbgate::reload::reload(&gate.gateway, &path, &overrides, false).await);
    assert_eq!(
        gate.gateway.runtime().policy.digest,
        before,
        "a bad policy replaced the good one"
    );
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 50, "the load did not run");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    let metrics = qbgate::metrics::render();
    assert!(
        metrics.contains("qbgate_policy_reloads_total{result=\"failure\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_policy_replaced_by_rename_is_picked_up_by_the_directory_watch() {
    let (sandbox, addr) = sandbox().await;
    let (path, text) = policy_dir(addr, "");
    let gate = Gate::start_policy(sandbox, addr, &text).await;
    tokio::spawn(qbgate::reload::watch(
        gate.gateway.clone(),
        path.clone(),
        Overrides::default(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_key = "test-key-added-by-reload";
    let reply = gate
        .as_user(new_key, None, "GET", "/chat/Dialog.json", None)
        .await;
    reply.assert_gate_error(401, "unknown_key", "base");
    // As an editor or Kubernetes does: write elsewhere, rename over the file.
    let staged = path.with_file_name(".policy.yaml.tmp");
    std::fs::write(
        &staged,
        format!(
            "{text}- {{ id: added, sha256: {}, on_behalf_of: none }}\n",
            digest(new_key)
        ),
    )
    .unwrap();
    std::fs::rename(&staged, &path).unwrap();
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = gate
            .as_user(new_key, None, "GET", "/chat/Dialog.json", None)
            .await
            .status;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "the renamed policy was not reloaded");
}

#[tokio::test]
async fn shutdown_drains_readyz_first_and_finishes_a_slow_request() {
    let (sandbox, addr) = sandbox().await;
    let text = policy_text(
        &format!("http://{addr}"),
        "shutdown:\n  drain_delay: 300ms\n  timeout: 5s",
        "",
    );
    let policy = compile(&text);
    let gateway: Arc<Gateway> = Gateway::new(Runtime::new(policy, None).await.unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(qbgate::serve(
        gateway.clone(),
        listener,
        Some(admin),
        async {
            let _ = stopped.await;
        },
    ));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let get = |uri: String, auth: bool| {
        let client = client.clone();
        async move {
            let mut request = http::Request::get(uri);
            if auth {
                request = request.header("authorization", format!("ApiKey {KEY_APP}"));
            }
            client
                .request(
                    request
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                )
                .await
        }
    };
    assert_eq!(
        get(format!("http://{admin_addr}/readyz"), false)
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        get(format!("http://{admin_addr}/healthz"), false)
            .await
            .unwrap()
            .status(),
        200
    );
    sandbox.set_fault(Fault::Delay(Duration::from_millis(800)));
    let slow = tokio::spawn(get(format!("http://{proxy_addr}/chat/Dialog.json"), true));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(format!("http://{admin_addr}/readyz"), false)
            .await
            .unwrap()
            .status(),
        503
    );
    // Still accepting during the drain delay.
    sandbox.set_fault(Fault::None);
    let during = get(format!("http://{proxy_addr}/chat/Dialog.json"), true)
        .await
        .unwrap();
    assert_eq!(during.status(), 200);
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), 200, "the in-flight request did not complete");
    // Well inside `shutdown.timeout` (5 s): the client's idle keep-alive connections were closed
    // by the drain, not waited out.
    tokio::time::timeout(Duration::from_secs(2), server)
        .await
        .expect("serve returned before the shutdown timeout")
        .unwrap();
}

#[tokio::test]
async fn metrics_carry_key_ids_and_route_templates_never_keys() {
    let gate = Gate::start("").await;
    let reply = gate
        .as_user(
            KEY_ANY,
            Some(qbgate::sandbox::seed::OWNER),
            "GET",
            "/chat/Dialog.json",
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
    let _ = gate
        .as_user(
            "not-a-key",
            None,
            "GET",
            "/chat/Dialog/5d75393ba28f9a17e1cb0f9e.json",
            None,
        )
        .await;
    let text = qbgate::metrics::render();
    assert!(
        text.contains("qbgate_requests_total{key=\"any\",route=\"/chat/Dialog\",status=\"200\""),
        "{text}"
    );
    assert!(text.contains("route=\"/chat/Dialog/:id\""), "{text}");
    assert!(
        text.contains("qbgate_request_duration_seconds_bucket"),
        "histograms have buckets: {text}"
    );
    for secret in [
        KEY_ANY,
        UPSTREAM_KEY,
        "not-a-key",
        "5d75393ba28f9a17e1cb0f9e",
    ] {
        assert!(!text.contains(secret), "{secret} appears in /metrics");
    }
}

#[tokio::test]
async fn other_files_and_identical_rewrites_do_not_rebuild_the_generation() {
    let (sandbox, addr) = sandbox().await;
    let (path, text) = policy_dir(addr, "");
    let gate = Gate::start_policy(sandbox, addr, &text).await;
    // The gateway was started from a compiled text with the same bytes as the file.
    let before = gate.gateway.runtime();
    tokio::spawn(qbgate::reload::watch(
        gate.gateway.clone(),
        path.clone(),
        Overrides::default(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        std::fs::write(path.with_file_name("access.log"), format!("line {i}\n")).unwrap();
        std::fs::write(&path, &text).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        Arc::ptr_eq(&before, &gate.gateway.runtime()),
        "an unchanged policy was rebuilt"
    );
    std::fs::write(&path, format!("{text}# changed\n")).unwrap();
    let mut rebuilt = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !Arc::ptr_eq(&before, &gate.gateway.runtime()) {
            rebuilt = true;
            break;
        }
    }
    assert!(rebuilt, "a changed policy was not reloaded");
}

/// A reload compiles the policy off the serving thread: on a current-thread runtime (what a
/// one-CPU sidecar runs), requests are answered while a 20,000-key policy is still compiling.
#[tokio::test(flavor = "current_thread")]
async fn requests_are_answered_while_a_big_policy_compiles() {
    let (sandbox, addr) = sandbox().await;
    let extra: String = (0..20_000)
        .map(|i| {
            format!(
                "- {{ id: bulk{i}, sha256: {}, on_behalf_of: any }}\n",
                digest(&format!("bulk-{i}"))
            )
        })
        .collect();
    let (path, text) = policy_dir(addr, &extra);
    let gate = Gate::start_policy(sandbox, addr, &compile_friendly(&path, &text)).await;
    let gate = Arc::new(gate);
    let reload = tokio::spawn({
        let gate = gate.clone();
        let path = path.clone();
        async move { qbgate::reload::reload(&gate.gateway, &path, &Overrides::default(), false).await }
    });
    // Let the reload task start its compile, then ask.
    tokio::task::yield_now().await;
    let reply = gate
        .as_user(KEY_APP, None, "GET", "/chat/Dialog.json", None)
        .await;
    assert_eq!(reply.status, 200);
    assert!(
        !reload.is_finished(),
        "the request waited for the compile (or the compile of 20,000 keys beat one request)"
    );
    assert!(reload.await.unwrap(), "the reload failed");
}

/// The policy text with its upstream key read from the environment, as [`Gate`] compiles it.
fn compile_friendly(path: &std::path::Path, text: &str) -> String {
    text.replace(
        &format!("{{ file: {} }}", path.with_file_name("api-key").display()),
        "{ env: QB_API_KEY }",
    )
}

/// A gateway with an admin listener (and a key limited to one request an hour), in front of a
/// fresh sandbox: `(proxy, admin)` addresses. The gateway serves until the test's runtime ends.
async fn gate_with_admin() -> (std::net::SocketAddr, std::net::SocketAddr) {
    let (_sandbox, addr) = sandbox().await;
    let limited = format!(
        "- {{ id: limited, sha256: {}, on_behalf_of: none, rate_limit: {{ per_hour: 1 }} }}\n",
        digest("test-key-limited-metrics")
    );
    let policy = compile(&policy_text(&format!("http://{addr}"), "", &limited));
    let gateway: Arc<Gateway> = Gateway::new(Runtime::new(policy, None).await.unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    tokio::spawn(qbgate::serve(
        gateway,
        listener,
        Some(admin),
        std::future::pending(),
    ));
    (proxy_addr, admin_addr)
}

/// GET `uri` (with `Authorization: ApiKey key` when given): status and body.
async fn get(uri: String, key: Option<&str>) -> (u16, String) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut request = http::Request::get(uri);
    if let Some(key) = key {
        request = request.header("authorization", format!("ApiKey {key}"));
    }
    let response = client
        .request(request.body(http_body_util::Full::default()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// `/metrics` from the admin listener after one allowed, one refused (401) and one rate-limited
/// (429) request.
async fn scrape_after_traffic() -> String {
    let (proxy, admin) = gate_with_admin().await;
    let list = format!("http://{proxy}/chat/Dialog.json");
    assert_eq!(get(list.clone(), Some(KEY_APP)).await.0, 200);
    assert_eq!(get(list.clone(), Some("not-a-key")).await.0, 401);
    assert_eq!(
        get(list.clone(), Some("test-key-limited-metrics")).await.0,
        200
    );
    assert_eq!(get(list, Some("test-key-limited-metrics")).await.0, 429);
    let (status, text) = get(format!("http://{admin}/metrics"), None).await;
    assert_eq!(status, 200);
    text
}

#[tokio::test]
async fn metrics_have_help_build_info_and_process_families() {
    let text = scrape_after_traffic().await;
    let build_info = format!(
        "qbgate_build_info{{version=\"{}\",revision=\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&build_info), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("qbgate_build_info{") && l.ends_with("\"} 1")),
        "{text}"
    );
    for family in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "{family} missing: {text}"
        );
    }
    assert!(
        text.contains("qbgate_rate_limited_total{key=\"limited\"}"),
        "{text}"
    );
    // Every family has HELP and TYPE.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP: {text}"
        );
    }
}

/// Fail, naming the test, when `promtool` is not installed: the test is `#[ignore]`d where it may
/// be missing, so one that runs without it must not pass having checked nothing.
fn require_promtool(test: &str) {
    let installed = std::process::Command::new("promtool")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "{test}: promtool not found (apt-get install prometheus; .ci/run does)"
    );
}

#[tokio::test]
#[ignore = "needs promtool (Debian prometheus); .ci/run installs it and runs it"]
async fn metrics_pass_promtool_check_metrics() {
    use std::io::Write;
    require_promtool("metrics_pass_promtool_check_metrics");
    let text = scrape_after_traffic().await;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A key in rotation through the gateway: the old digest past its `not_after` is refused 401
/// `key_expired`, an old digest still in its window and the new digest are served as the key.
#[tokio::test]
async fn a_key_in_rotation_serves_its_live_digests_and_refuses_an_expired_one() {
    use qbgate::sandbox::seed::OWNER;
    const GONE: &str = "rotation-key-gone";
    const OLD: &str = "rotation-key-old";
    const NEW: &str = "rotation-key-new";
    let keys = format!(
        "- id: rotating\n  on_behalf_of: any\n  digests:\n  \
         - {{ sha256: {}, not_after: 2020-01-01T00:00:00Z }}\n  \
         - {{ sha256: {}, not_after: 2999-01-01T00:00:00Z }}\n  \
         - {{ sha256: {} }}\n",
        digest(GONE),
        digest(OLD),
        digest(NEW),
    );
    let gate = Gate::start_with_keys("", &keys).await;
    let list = "/chat/Dialog.json";
    gate.as_user(GONE, Some(OWNER), "GET", list, None)
        .await
        .assert_gate_error(401, "key_expired", "base");
    for key in [OLD, NEW] {
        let reply = gate.as_user(key, Some(OWNER), "GET", list, None).await;
        assert_eq!(reply.status, 200, "{key}: {:?}", reply.body);
    }
    assert_eq!(gate.sandbox.received().len(), 2);
    // The old digests' requests and not_after by digest prefix; the new one is not counted.
    let text = qbgate::metrics::render();
    let (gone, old, new) = (&digest(GONE)[..8], &digest(OLD)[..8], &digest(NEW)[..8]);
    for want in [
        format!("qbgate_key_digest_requests_total{{key=\"rotating\",digest=\"{old}\"}} 1\n"),
        format!("qbgate_key_digest_not_after_seconds{{key=\"rotating\",digest=\"{old}\"}} 32472144000\n"),
        format!("qbgate_key_digest_not_after_seconds{{key=\"rotating\",digest=\"{gone}\"}} 1577836800\n"),
    ] {
        assert!(text.contains(&want), "{want} not in:\n{text}");
    }
    assert!(!text.contains(&format!("digest=\"{new}\"")), "{text}");
    assert!(!text.contains(&format!(
        "qbgate_key_digest_requests_total{{key=\"rotating\",digest=\"{gone}\"}}"
    )));
    for key in [GONE, OLD, NEW] {
        assert!(!text.contains(key), "a key in /metrics");
    }
}
