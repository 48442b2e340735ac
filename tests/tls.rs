//! A TLS upstream: a test CA made in the test, trusted through `upstream.extra_ca_file`, the
//! sandbox behind rustls, over HTTP/1.1 and HTTP/2 chosen by ALPN.

use crate::support::*;

#[tokio::test]
async fn tls_upstream_over_http1_with_the_key_swapped() {
    let gate = gate_over_tls("localhost", "localhost", &[b"http/1.1"]).await;
    let reply = gate
        .as_user(
            KEY_ANY,
            Some(qbgate::sandbox::seed::OWNER),
            "GET",
            "/chat/Dialog.json",
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let received = gate.sandbox.take_received();
    assert_eq!(received[0].version, http::Version::HTTP_11);
    assert_eq!(
        received[0].headers["authorization"],
        format!("ApiKey {UPSTREAM_KEY}").as_str()
    );
}

#[tokio::test]
async fn tls_upstream_over_http2_by_alpn() {
    let gate = gate_over_tls("localhost", "localhost", &[b"h2", b"http/1.1"]).await;
    for _ in 0..3 {
        let reply = gate
            .as_user(KEY_APP, None, "GET", "/chat/Dialog.json", None)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    let received = gate.sandbox.take_received();
    assert!(received.iter().all(|r| r.version == http::Version::HTTP_2));
    // The upstream is named by `:authority`; the client's `Host` (the gateway) is not passed on.
    for r in &received {
        assert!(!r.headers.contains_key("host"), "{:?}", r.headers);
    }
}

#[tokio::test]
async fn a_certificate_for_another_host_is_502_and_nothing_is_sent() {
    let gate = gate_over_tls("localhost", "other.example", &[b"http/1.1"]).await;
    let reply = gate
        .as_user(KEY_APP, None, "GET", "/chat/Dialog.json", None)
        .await;
    reply.assert_gate_error(502, "upstream_unreachable", "base");
    assert!(gate.sandbox.received().is_empty());
}
