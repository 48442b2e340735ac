//! CONTRACT.md's response table, row by row, and what the upstream actually received.

use std::time::Duration;

use qbgate::sandbox::seed::{GROUP_ID, OCCUPANT, OUTSIDER, OWNER};
use qbgate::sandbox::Fault;

use crate::support::*;

const LIST: &str = "/chat/Dialog.json";

#[tokio::test]
async fn forwarded_request_has_the_key_replaced_and_hop_by_hop_headers_dropped() {
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_ANY}");
    let owner = OWNER.to_string();
    let reply = gate
        .send(
            "GET",
            &format!("/chat/Dialog.json?_id={GROUP_ID}"),
            &[
                ("authorization", &auth),
                ("on-behalf-of", &owner),
                ("connection", "keep-alive, te"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("qb-sdk", "JS 2.23.0 - Client"),
            ],
            "",
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.json()["items"][0]["_id"], GROUP_ID);
    assert!(
        reply.reason().is_none(),
        "upstream answers carry no X-Qbgate-Reason"
    );
    let request_id = reply.headers["x-request-id"].to_str().unwrap().to_string();
    let received = gate.sandbox.take_received();
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(
        r.headers["authorization"],
        format!("ApiKey {UPSTREAM_KEY}").as_str()
    );
    assert_eq!(r.headers["on-behalf-of"], owner.as_str());
    assert_eq!(r.headers["qb-sdk"], "JS 2.23.0 - Client");
    assert_eq!(r.headers["x-request-id"], request_id.as_str());
    assert_eq!(r.headers["host"], gate.sandbox_addr.to_string().as_str());
    for gone in [
        "connection",
        "keep-alive",
        "te",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
        "via",
    ] {
        assert!(!r.headers.contains_key(gone), "{gone} reached the upstream");
    }
    assert_eq!(
        r.uri.path_and_query().unwrap().as_str(),
        format!("/chat/Dialog.json?_id={GROUP_ID}")
    );
}

#[tokio::test]
async fn request_id_is_kept_when_the_client_sends_one() {
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_APP}");
    let reply = gate
        .send(
            "GET",
            LIST,
            &[("authorization", &auth), ("x-request-id", "abc-123")],
            "",
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-request-id"], "abc-123");
    assert_eq!(
        gate.sandbox.take_received()[0].headers["x-request-id"],
        "abc-123"
    );
}

#[tokio::test]
async fn credential_errors_are_401_and_reach_nothing() {
    let gate = Gate::start("").await;
    type Case = (Vec<(&'static str, String)>, u16, &'static str);
    let cases: Vec<Case> = vec![
        (vec![], 401, "missing_credentials"),
        (
            vec![("authorization", "ApiKey wrong".into())],
            401,
            "unknown_key",
        ),
        (
            vec![
                ("authorization", format!("ApiKey {KEY_OFF}")),
                ("on-behalf-of", "1".into()),
            ],
            401,
            "key_disabled",
        ),
        (
            vec![
                ("authorization", format!("ApiKey {KEY_OLD}")),
                ("on-behalf-of", "1".into()),
            ],
            401,
            "key_expired",
        ),
        (
            vec![
                ("authorization", format!("ApiKey {KEY_ANY}")),
                ("qb-token", "t".into()),
            ],
            400,
            "both_credentials",
        ),
        (
            vec![
                ("authorization", format!("ApiKey {KEY_ANY}")),
                ("on-behalf-of", "undefined".into()),
            ],
            400,
            "bad_on_behalf_of",
        ),
        (
            vec![
                ("authorization", format!("ApiKey {KEY_ANY}")),
                ("on-behalf-of", "1 2".into()),
            ],
            400,
            "bad_on_behalf_of",
        ),
        (
            vec![
                ("authorization", format!("ApiKey {KEY_ANY}")),
                ("on-behalf-of", "0x10".into()),
            ],
            400,
            "bad_on_behalf_of",
        ),
        (
            vec![("authorization", format!("ApiKey {KEY_ANY}"))],
            403,
            "on_behalf_of_required",
        ),
        (
            vec![
                ("authorization", format!("ApiKey {KEY_APP}")),
                ("on-behalf-of", "5".into()),
            ],
            403,
            "on_behalf_of_refused",
        ),
        (
            vec![
                ("authorization", format!("ApiKey {KEY_LIST}")),
                ("on-behalf-of", OUTSIDER.to_string()),
            ],
            403,
            "user_not_allowed",
        ),
    ];
    for (headers, status, reason) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = gate.send("GET", LIST, &h, "").await;
        reply.assert_gate_error(status, reason, "base");
    }
    assert!(
        gate.sandbox.received().is_empty(),
        "a refused request reached the upstream"
    );
}

#[tokio::test]
async fn qb_token_is_forwarded_or_rejected_per_policy() {
    let gate = Gate::start("qb_token: reject").await;
    let reply = gate
        .send(
            "GET",
            LIST,
            &[("qb-token", "1319b4991186601ccf4df2d0fa89565f68012bba")],
            "",
        )
        .await;
    reply.assert_gate_error(401, "qb_token_rejected", "base");
    assert!(gate.sandbox.received().is_empty());

    let gate = Gate::start("qb_token: forward").await;
    let token = qbgate::sandbox::seed::GROUP_TOKEN;
    let reply = gate.send("GET", LIST, &[("qb-token", token)], "").await;
    assert_eq!(reply.status, 200);
    let received = gate.sandbox.take_received();
    let forwarded = received
        .iter()
        .find(|r| r.uri.path() == LIST)
        .expect("list forwarded");
    assert_eq!(forwarded.headers["qb-token"], token);
    assert!(!forwarded.headers.contains_key("authorization"));
}

#[tokio::test]
async fn malformed_paths_and_method_overrides_are_400() {
    let gate = Gate::start("").await;
    let cases = [
        ("GET", "/chat/../Dialog.json", "bad_path"),
        ("GET", "/chat//Dialog.json", "bad_path"),
        ("GET", "/chat%2FDialog.json", "bad_path"),
        ("GET", "/chat/%2e%2e/Dialog.json", "bad_path"),
        ("GET", "/chat/Dialog%00.json", "bad_path"),
        ("GET", "/chat/Dialog%5c.json", "bad_path"),
        ("GET", "/chat/Dialog%ff.json", "bad_path"),
        ("GET", "/chat/Dialog.json?_method=DELETE", "method_override"),
        (
            "GET",
            "/chat/Dialog.json?%5Fmethod=DELETE",
            "method_override",
        ),
    ];
    for (method, path, reason) in cases {
        let reply = gate.as_user(KEY_ANY, Some(OWNER), method, path, None).await;
        reply.assert_gate_error(400, reason, "base");
    }
    let auth = format!("ApiKey {KEY_ANY}");
    let owner = OWNER.to_string();
    let reply = gate
        .send(
            "GET",
            LIST,
            &[
                ("authorization", &auth),
                ("on-behalf-of", &owner),
                ("x-http-method-override", "DELETE"),
            ],
            "",
        )
        .await;
    reply.assert_gate_error(400, "method_override", "base");
    let reply = gate
        .send(
            "POST",
            "/chat/Message.json",
            &[
                ("authorization", &auth),
                ("on-behalf-of", &owner),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "_method=DELETE&x=1",
        )
        .await;
    reply.assert_gate_error(400, "method_override", "base");
    assert!(gate.sandbox.received().is_empty());
}

#[tokio::test]
async fn route_allowlist_is_case_and_suffix_insensitive() {
    let gate = Gate::start("").await;
    let ok = gate
        .as_user(KEY_ROUTES, Some(OWNER), "GET", "/chat/Dialog", None)
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    // Another letter case matches the same entry (the sandbox, like Rails, then routes by case).
    let other_case = gate
        .as_user(KEY_ROUTES, Some(OWNER), "GET", "/CHAT/dialog.JSON", None)
        .await;
    assert_eq!(other_case.reason(), None, "{:?}", other_case.body);
    let refused = gate
        .as_user(KEY_ROUTES, Some(OWNER), "GET", "/chat/Message.json", None)
        .await;
    refused.assert_gate_error(403, "route_not_allowed", "base");
    let refused = gate
        .as_user(
            KEY_ROUTES,
            Some(OWNER),
            "DELETE",
            &format!("/chat/Dialog/{GROUP_ID}.json"),
            None,
        )
        .await;
    refused.assert_gate_error(403, "route_not_allowed", "base");
    assert_eq!(gate.sandbox.take_received().len(), 2);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_by_length_and_when_chunked() {
    let gate = Gate::start("max_body_bytes: 1000").await;
    let big = "x".repeat(2000);
    // A message write needs a user: the key acts for one.
    let auth = format!("ApiKey {KEY_ANY}");
    let user = OWNER.to_string();
    let reply = gate
        .send(
            "POST",
            "/chat/Message.json",
            &[
                ("authorization", &auth),
                ("on-behalf-of", &user),
                ("content-type", "application/json"),
            ],
            &big,
        )
        .await;
    reply.assert_gate_error(413, "body_too_large", "base");
    assert!(gate.sandbox.received().is_empty());

    // Chunked: no Content-Length, the limit applies as the body streams.
    use futures_util::stream;
    use http_body_util::StreamBody;
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>> = (0..20)
        .map(|_| {
            Ok(hyper::body::Frame::data(bytes::Bytes::from(vec![
                b'y';
                100
            ])))
        })
        .collect();
    let body = StreamBody::new(stream::iter(chunks));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/chat/Message.json", gate.addr))
        .header("authorization", &auth)
        .header("on-behalf-of", &user)
        .header("content-type", "application/octet-stream")
        .body(body)
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(response.headers()["x-qbgate-reason"], "body_too_large");
    assert!(gate.sandbox.received().iter().all(|r| r.body.len() <= 1000));
}

#[tokio::test]
async fn upstream_unreachable_is_502_and_timeout_is_504() {
    // Nothing listens on the upstream port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let sandbox = qbgate::sandbox::Sandbox::new(None);
    let text = policy_text(&format!("http://127.0.0.1:{port}"), "", "");
    let gate =
        Gate::start_policy(sandbox, format!("127.0.0.1:{port}").parse().unwrap(), &text).await;
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    reply.assert_gate_error(502, "upstream_unreachable", "base");

    let gate = Gate::start("").await;
    gate.sandbox.set_fault(Fault::Delay(Duration::from_secs(5)));
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    reply.assert_gate_error(504, "upstream_timeout", "base");
    gate.sandbox.set_fault(Fault::None);
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn upstream_errors_pass_through_unchanged() {
    let gate = Gate::start("").await;
    gate.sandbox.set_fault(Fault::Status(503));
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    assert_eq!(reply.status, 503);
    assert!(reply.reason().is_none());
    assert!(reply.json()["errors"].is_object() || reply.json()["errors"].is_array());
}

#[tokio::test]
async fn a_large_response_streams_through() {
    let gate = Gate::start("").await;
    let size = 8 * 1024 * 1024;
    gate.sandbox.set_fault(Fault::BigBody(size));
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), size);
}

#[tokio::test]
async fn a_closed_pooled_connection_does_not_fail_the_next_request() {
    let gate = Gate::start("").await;
    for round in 0..5 {
        // h1: the sandbox closes the connection after this response.
        gate.sandbox.set_fault(Fault::GoAway);
        let reply = gate
            .as_user(KEY_ANY, Some(OCCUPANT), "GET", LIST, None)
            .await;
        assert_eq!(reply.status, 200, "round {round}");
        gate.sandbox.set_fault(Fault::None);
        let reply = gate
            .as_user(KEY_ANY, Some(OCCUPANT), "GET", LIST, None)
            .await;
        assert_eq!(reply.status, 200, "round {round}");
    }
}

#[tokio::test]
async fn cleartext_http2_clients_are_served() {
    let gate = Gate::start("").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::builder()
        .uri(format!("http://{}{LIST}", gate.addr))
        .header("authorization", format!("ApiKey {KEY_APP}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
}
