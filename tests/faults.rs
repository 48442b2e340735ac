//! Upstream faults injected by the sandbox: connection refused, resets before and in the middle
//! of the response, a stalled response, 5xx, an HTTP/2 GOAWAY with requests in flight (TLS + ALPN
//! h2). For each: the contract's JSON error, a PUT/POST/DELETE sent at most once, a GET at most
//! twice, and the pool recovers. (A certificate that does not match is in `tls`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full};
use qbgate::sandbox::seed::{ADDED, GROUP_ID, NEW_OWNER, OTHER_OCCUPANT, RECIPE_USER};
use qbgate::sandbox::{Fault, Sandbox};
use tokio::net::TcpListener;

use crate::support::*;

const LIST: &str = "/chat/Dialog.json";

fn group_path() -> String {
    format!("/chat/Dialog/{GROUP_ID}.json")
}

/// How many requests with this method and path the upstream received.
fn count(gate: &Gate, method: Method, path: &str) -> usize {
    gate.sandbox
        .received()
        .iter()
        .filter(|r| r.method == method && r.uri.path() == path)
        .count()
}

/// A response whose body may fail to arrive whole.
struct Outcome {
    status: u16,
    headers: HeaderMap,
    body: Result<Bytes, String>,
}

/// Send through the gateway with a fresh client, keeping a body error instead of panicking.
async fn send(
    gate: &Gate,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Outcome, String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{}", gate.addr, path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("{e:?}"));
    Ok(Outcome {
        status,
        headers: parts.headers,
        body,
    })
}

fn auth(key: &str) -> String {
    format!("ApiKey {key}")
}

/// `{"type":2,...}`: a group create the application may make, named so it can be counted.
fn create_body(name: &str) -> String {
    format!(
        r#"{{"type":2,"name":"{name}","occupants_ids":[{}]}}"#,
        ADDED[0]
    )
}

/// POSTs of a create named `name` the upstream received.
fn creates_named(gate: &Gate, name: &str) -> usize {
    gate.sandbox
        .received()
        .iter()
        .filter(|r| r.method == Method::POST && String::from_utf8_lossy(&r.body).contains(name))
        .count()
}

/// A successful rename by the application, which also leaves GROUP in the gateway's cache.
/// Cache the group dialog with one allowed rename, forget what the sandbox received so far (the
/// warm-up's PUT and lookup), then inject `fault`: what follows counts only what meets the fault.
async fn arm(gate: &Gate, fault: Fault) {
    warm_rename(gate, "warm").await;
    gate.sandbox.take_received();
    gate.sandbox.set_fault(fault);
}

async fn warm_rename(gate: &Gate, name: &str) {
    let reply = gate
        .as_user(
            KEY_APP,
            None,
            "PUT",
            &group_path(),
            Some(&format!(r#"{{"name":"{name}"}}"#)),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

async fn assert_recovers(gate: &Gate) {
    gate.sandbox.set_fault(Fault::None);
    for _ in 0..3 {
        let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    let name = format!("recovered-{}", unique());
    let reply = gate
        .as_user(KEY_APP, None, "POST", LIST, Some(&create_body(&name)))
        .await;
    assert!(
        reply.status == 200 || reply.status == 201,
        "{:?}",
        reply.body
    );
    assert_eq!(creates_named(gate, &name), 1);
    warm_rename(gate, &format!("recovered-{}", unique())).await;
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A create (POST) and a rename (PUT) of the group dialog each get `status`/`reason` and reach
/// the upstream exactly once: neither may be sent twice.
async fn post_and_put_sent_once(gate: &Gate, tag: &str, status: u16, reason: &str) {
    let name = format!("{tag}-{}", unique());
    let reply = gate
        .as_user(KEY_APP, None, "POST", LIST, Some(&create_body(&name)))
        .await;
    reply.assert_gate_error(status, reason, "base");
    assert_eq!(creates_named(gate, &name), 1);

    let body = format!(r#"{{"name":"{tag}"}}"#);
    let reply = gate
        .as_user(KEY_APP, None, "PUT", &group_path(), Some(&body))
        .await;
    reply.assert_gate_error(status, reason, "base");
    assert_eq!(count(gate, Method::PUT, &group_path()), 1);
}

#[tokio::test]
async fn connection_refused_is_502_and_the_next_request_succeeds_once_it_is_up() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let sandbox = Sandbox::new(Some(UPSTREAM_KEY.to_string()));
    let text = policy_text(&format!("http://{addr}"), "", "");
    let gate = Gate::start_policy(sandbox.clone(), addr, &text).await;

    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    reply.assert_gate_error(502, "upstream_unreachable", "base");
    let reply = gate
        .as_user(KEY_APP, None, "POST", LIST, Some(&create_body("refused")))
        .await;
    reply.assert_gate_error(502, "upstream_unreachable", "base");
    let reply = gate
        .as_user(KEY_ANY, Some(OTHER_OCCUPANT), "DELETE", &group_path(), None)
        .await;
    reply.assert_gate_error(502, "upstream_unreachable", "base");
    // A checked update needs its dialog first: the lookup fails.
    let reply = gate
        .as_user(KEY_APP, None, "PUT", &group_path(), Some(r#"{"name":"x"}"#))
        .await;
    reply.assert_gate_error(503, "lookup_failed", "base");

    // The upstream comes up on that port.
    let listener = TcpListener::bind(addr).await.unwrap();
    let sb = sandbox.clone();
    tokio::spawn(async move { sb.serve(listener, std::future::pending()).await });
    assert_recovers(&gate).await;
    assert_eq!(creates_named(&gate, "refused"), 0);
}

#[tokio::test]
async fn reset_before_response_is_502_and_nothing_non_idempotent_is_sent_twice() {
    let gate = Gate::start("").await;
    arm(&gate, Fault::ResetBeforeResponse).await;

    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    reply.assert_gate_error(502, "upstream_failed", "base");
    let gets = count(&gate, Method::GET, LIST);
    assert!((1..=2).contains(&gets), "GET sent {gets} times");

    // The dialog is cached from the warm-up: no lookup, the PUT itself meets the reset.
    post_and_put_sent_once(&gate, "reset", 502, "upstream_failed").await;

    let reply = gate
        .as_user(KEY_ANY, Some(OTHER_OCCUPANT), "DELETE", &group_path(), None)
        .await;
    reply.assert_gate_error(502, "upstream_failed", "base");
    assert_eq!(count(&gate, Method::DELETE, &group_path()), 1);

    assert_recovers(&gate).await;
}

#[tokio::test]
async fn reset_mid_body_is_never_a_silent_short_success() {
    let gate = Gate::start("").await;
    arm(&gate, Fault::ResetMidBody).await;
    let app = auth(KEY_APP);

    // A streamed GET: the head may already be on its way; the body must then fail.
    for _ in 0..3 {
        match send(&gate, "GET", LIST, &[("authorization", &app)], "").await {
            Err(_) => {}
            Ok(o) => match &o.body {
                Err(_) => assert_eq!(o.status, 200),
                Ok(body) => {
                    assert_eq!(o.status, 502, "short success: {} bytes", body.len());
                    assert_eq!(o.headers["x-qbgate-reason"], "upstream_failed");
                }
            },
        }
    }
    assert!(count(&gate, Method::GET, LIST) <= 6);

    // A streamed POST.
    let name = format!("midbody-{}", unique());
    let body = create_body(&name);
    match send(
        &gate,
        "POST",
        LIST,
        &[
            ("authorization", &app),
            ("content-type", "application/json"),
        ],
        &body,
    )
    .await
    {
        Err(_) => {}
        Ok(o) => match &o.body {
            Err(_) => {}
            Ok(body) => {
                assert_eq!(o.status, 502, "short success: {} bytes", body.len());
                assert_eq!(o.headers["x-qbgate-reason"], "upstream_failed");
            }
        },
    }
    assert_eq!(creates_named(&gate, &name), 1);

    // A judged PUT: the gateway reads the answer whole, so it can answer 502 itself.
    let reply = send(
        &gate,
        "PUT",
        &group_path(),
        &[
            ("authorization", &app),
            ("content-type", "application/json"),
        ],
        r#"{"name":"half"}"#,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["x-qbgate-reason"], "upstream_failed");
    let json: serde_json::Value = serde_json::from_slice(reply.body.as_ref().unwrap()).unwrap();
    assert!(json["errors"]["base"][0].is_string());
    assert_eq!(count(&gate, Method::PUT, &group_path()), 1);

    assert_recovers(&gate).await;
}

#[tokio::test]

async fn a_change_whose_answer_was_cut_does_not_leave_a_stale_dialog_cached() {
    let gate = Gate::start("").await;
    // RECIPE_USER owns GROUP; the cache learns it.
    let recipe = Some(RECIPE_USER);
    let reply = gate
        .as_user(
            KEY_ANY,
            recipe,
            "PUT",
            &group_path(),
            Some(r#"{"name":"mine"}"#),
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    // He hands GROUP over; the upstream applies it, but the answer is cut mid-body.
    gate.sandbox.set_fault(Fault::ResetMidBody);
    let handover = format!(r#"{{"user_id":{NEW_OWNER}}}"#);
    let reply = send(
        &gate,
        "PUT",
        &group_path(),
        &[
            ("authorization", &auth(KEY_ANY)),
            ("on-behalf-of", &RECIPE_USER.to_string()),
            ("content-type", "application/json"),
        ],
        &handover,
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(
        gate.sandbox.dialog(GROUP_ID).unwrap()["user_id"],
        NEW_OWNER,
        "the upstream applied the handover"
    );
    gate.sandbox.set_fault(Fault::None);
    // He is no longer the owner: an owner-only change must now be refused.
    let reply = gate
        .as_user(
            KEY_ANY,
            recipe,
            "PUT",
            &group_path(),
            Some(&format!(r#"{{"user_id":{RECIPE_USER}}}"#)),
        )
        .await;
    reply.assert_gate_error(403, "dialog_owner_only", "base");
    assert_eq!(gate.sandbox.dialog(GROUP_ID).unwrap()["user_id"], NEW_OWNER);
}

#[tokio::test]
async fn a_stalled_response_is_504_after_the_upstream_timeout() {
    let sandbox = Sandbox::new(Some(UPSTREAM_KEY.to_string()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sb = sandbox.clone();
    tokio::spawn(async move { sb.serve(listener, std::future::pending()).await });
    let text = policy_text(&format!("http://{addr}"), "", "")
        .replace("  timeout: 2s\n", "  timeout: 500ms\n");
    assert!(text.contains("timeout: 500ms"));
    let gate = Gate::start_policy(sandbox, addr, &text).await;
    arm(&gate, Fault::Delay(Duration::from_secs(5))).await;

    let started = Instant::now();
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    reply.assert_gate_error(504, "upstream_timeout", "base");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert!(count(&gate, Method::GET, LIST) <= 2);

    post_and_put_sent_once(&gate, "stalled", 504, "upstream_timeout").await;

    assert_recovers(&gate).await;
}

/// A gateway whose upstream times out after 500 ms, its fault armed.
async fn gate_with_short_upstream_timeout(fault: Fault) -> Gate {
    let sandbox = Sandbox::new(Some(UPSTREAM_KEY.to_string()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sb = sandbox.clone();
    tokio::spawn(async move { sb.serve(listener, std::future::pending()).await });
    let text = policy_text(&format!("http://{addr}"), "", "")
        .replace("  timeout: 2s\n", "  timeout: 500ms\n");
    assert!(text.contains("timeout: 500ms"));
    let gate = Gate::start_policy(sandbox, addr, &text).await;
    arm(&gate, fault).await;
    gate
}

/// One GET on `client`: its status and `X-Qbgate-Reason`, and how long it took.
async fn timed_get<C>(
    client: &hyper_util::client::legacy::Client<C, Full<Bytes>>,
    gate: &Gate,
) -> (u16, Option<String>, Duration)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let request = http::Request::builder()
        .uri(format!("http://{}{LIST}", gate.addr))
        .header("authorization", auth(KEY_APP))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let started = Instant::now();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let reason = response
        .headers()
        .get("x-qbgate-reason")
        .map(|v| v.to_str().unwrap().to_owned());
    response.into_body().collect().await.unwrap();
    (status, reason, started.elapsed())
}

/// On an HTTP/1.1 client connection the upstream timeout is the connection sweep's: a request
/// that follows a timed-out one on the same keep-alive connection gets its own whole timeout
/// (an upstream slower than half of it is still answered), and one that stalls again is 504 again.
#[tokio::test]
async fn each_request_on_a_keep_alive_connection_gets_its_own_upstream_timeout() {
    let gate = gate_with_short_upstream_timeout(Fault::Delay(Duration::from_secs(5))).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(1)
        .build_http::<Full<Bytes>>();
    let (status, reason, elapsed) = timed_get(&client, &gate).await;
    assert_eq!((status, reason.as_deref()), (504, Some("upstream_timeout")));
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    gate.sandbox
        .set_fault(Fault::Delay(Duration::from_millis(300)));
    for _ in 0..3 {
        let (status, reason, _) = timed_get(&client, &gate).await;
        assert_eq!((status, reason), (200, None));
    }
    gate.sandbox.set_fault(Fault::Delay(Duration::from_secs(5)));
    let (status, reason, elapsed) = timed_get(&client, &gate).await;
    assert_eq!((status, reason.as_deref()), (504, Some("upstream_timeout")));
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert_recovers(&gate).await;
}

/// HTTP/2 client connections keep a timer for the upstream timeout (their requests run in tasks
/// of their own, out of the connection sweep's reach): a stalled answer is 504 there too.
#[tokio::test]
async fn a_stalled_response_is_504_after_the_upstream_timeout_over_cleartext_http2() {
    let gate = gate_with_short_upstream_timeout(Fault::Delay(Duration::from_secs(5))).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let (status, reason, elapsed) = timed_get(&client, &gate).await;
    assert_eq!((status, reason.as_deref()), (504, Some("upstream_timeout")));
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    gate.sandbox.set_fault(Fault::None);
    let (status, _, _) = timed_get(&client, &gate).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn upstream_5xx_pass_through_unchanged_and_are_not_retried() {
    let gate = Gate::start("").await;
    warm_rename(&gate, "warm").await;
    for code in [500u16, 502, 503, 504] {
        gate.sandbox.take_received();
        gate.sandbox.set_fault(Fault::Status(code));
        let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
        assert_eq!(reply.status, code);
        assert!(reply.reason().is_none(), "{code}: {:?}", reply.headers);
        assert!(
            reply.headers.contains_key("x-runtime"),
            "not the upstream's answer"
        );
        assert!(reply.json()["errors"].is_object(), "{:?}", reply.body);
        assert_eq!(count(&gate, Method::GET, LIST), 1, "{code}: GET retried");

        let name = format!("fivexx-{}", unique());
        let reply = gate
            .as_user(KEY_APP, None, "POST", LIST, Some(&create_body(&name)))
            .await;
        assert_eq!(reply.status, code);
        assert!(reply.reason().is_none());
        assert_eq!(creates_named(&gate, &name), 1);

        let reply = gate
            .as_user(
                KEY_APP,
                None,
                "PUT",
                &group_path(),
                Some(r#"{"name":"5xx"}"#),
            )
            .await;
        // The first round's refusal evicted the cached dialog: later rounds look it up, and a
        // failed lookup is the gateway's own 503.
        if reply.reason() == Some("lookup_failed") {
            reply.assert_gate_error(503, "lookup_failed", "base");
            assert_eq!(count(&gate, Method::PUT, &group_path()), 0);
        } else {
            assert_eq!(reply.status, code);
            assert!(reply.reason().is_none());
            assert_eq!(count(&gate, Method::PUT, &group_path()), 1);
        }
    }
    assert_recovers(&gate).await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 GOAWAY behind TLS (helper pattern from `tls`)
// ---------------------------------------------------------------------------------------------

async fn h2_gate() -> Gate {
    gate_over_tls("localhost", "localhost", &[b"h2"]).await
}

#[tokio::test]
async fn an_h2_goaway_with_requests_in_flight_loses_nothing_and_sends_nothing_twice() {
    let gate = Arc::new(h2_gate().await);
    // One request first, so the pooled h2 connection exists when the GOAWAY comes.
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(gate.sandbox.received()[0].version, http::Version::HTTP_2);

    for round in 0..3 {
        gate.sandbox.set_fault(Fault::GoAway);
        let mut tasks = Vec::new();
        for i in 0..30 {
            let gate = gate.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("goaway-{round}-{i}");
                let app = auth(KEY_APP);
                let outcome = if i % 3 == 0 {
                    send(
                        &gate,
                        "POST",
                        LIST,
                        &[
                            ("authorization", &app),
                            ("content-type", "application/json"),
                            ("x-request-id", &id),
                        ],
                        &create_body(&id),
                    )
                    .await
                } else {
                    send(
                        &gate,
                        "GET",
                        LIST,
                        &[("authorization", &app), ("x-request-id", &id)],
                        "",
                    )
                    .await
                };
                (id, i % 3 == 0, outcome)
            }));
        }
        let mut failed = Vec::new();
        for task in tasks {
            let (id, is_post, outcome) = task.await.unwrap();
            let outcome = outcome.unwrap_or_else(|e| panic!("{id}: {e}"));
            let body = outcome
                .body
                .as_ref()
                .unwrap_or_else(|e| panic!("{id}: body cut: {e}"));
            if outcome.status != 200 && outcome.status != 201 {
                // Only the contract's 502 is acceptable, and only as a JSON error.
                assert_eq!(
                    outcome.status,
                    502,
                    "{id}: {:?}",
                    String::from_utf8_lossy(body)
                );
                assert!(outcome.headers.contains_key("x-qbgate-reason"));
                failed.push(id.clone());
            }
            let sent = gate
                .sandbox
                .received()
                .iter()
                .filter(|r| {
                    r.headers
                        .get("x-request-id")
                        .is_some_and(|v| v == id.as_str())
                })
                .count();
            if is_post {
                assert!(sent <= 1, "{id}: POST sent {sent} times");
                assert_eq!(sent.min(1), creates_named(&gate, &id).min(1));
            } else {
                assert!(sent <= 2, "{id}: GET sent {sent} times");
            }
        }
        assert!(
            failed.is_empty(),
            "round {round}: in-flight requests failed on GOAWAY: {failed:?}"
        );
        gate.sandbox.set_fault(Fault::None);
        for _ in 0..3 {
            let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
            assert_eq!(reply.status, 200, "round {round}: pool did not recover");
        }
    }
    assert_recovers(&gate).await;
}

#[tokio::test]
async fn h2_resets_are_502_and_sent_once() {
    let gate = h2_gate().await;
    arm(&gate, Fault::ResetBeforeResponse).await;
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    reply.assert_gate_error(502, "upstream_failed", "base");
    assert!(count(&gate, Method::GET, LIST) <= 2);
    let reply = gate
        .as_user(
            KEY_APP,
            None,
            "PUT",
            &group_path(),
            Some(r#"{"name":"h2reset"}"#),
        )
        .await;
    reply.assert_gate_error(502, "upstream_failed", "base");
    assert_eq!(count(&gate, Method::PUT, &group_path()), 1);

    gate.sandbox.set_fault(Fault::ResetMidBody);
    let app = auth(KEY_APP);
    if let Ok(o) = send(&gate, "GET", LIST, &[("authorization", &app)], "").await {
        if let Ok(body) = &o.body {
            assert_eq!(o.status, 502, "short success: {} bytes", body.len());
        }
    }
    assert_recovers(&gate).await;
}
