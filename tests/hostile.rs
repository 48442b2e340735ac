//! Hostile clients: smuggling, oversized and broken heads, slow clients, bodies over the limit,
//! bad bytes in headers and bodies, hostile JSON, HTTP/2 floods. Each case asserts what came
//! back (the gateway's JSON error, or the HTTP layer's bare 400/414/431 and a closed connection,
//! which CONTRACT.md allows) and that the upstream received nothing it should not have.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use qbgate::sandbox::seed::{GROUP_ID, OWNER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const LIST: &str = "/chat/Dialog.json";
const SLOW: &str = "client: { header_timeout: 500ms, body_timeout: 500ms }";

fn put_path() -> String {
    format!("/chat/Dialog/{GROUP_ID}.json")
}

/// What came back on one raw connection.
struct Raw {
    bytes: Vec<u8>,
    /// The gateway closed the connection (EOF or reset) before the wait ran out.
    closed: bool,
    elapsed: Duration,
}

/// One parsed response off a raw connection.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Every response on the connection, in order (Content-Length framed, as the gateway sends).
    fn responses(&self) -> Vec<RawResponse> {
        let mut out = Vec::new();
        let mut rest = &self.bytes[..];
        while let Some(end) = find(rest, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&rest[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let Some(status) = status_line
                .strip_prefix("HTTP/1.1 ")
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
            else {
                break;
            };
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            let len = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
                .unwrap_or(0);
            let body_start = end + 4;
            let body_end = (body_start + len).min(rest.len());
            out.push(RawResponse {
                status,
                headers,
                body: rest[body_start..body_end].to_vec(),
            });
            rest = &rest[body_end..];
        }
        out
    }
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Send `request` on a fresh connection and read until the gateway closes it or `wait` passes.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> Raw {
    raw_parts(addr, &[request], Duration::ZERO, wait).await
}

/// Send `parts` with `pause` between them (and keep the connection open), reading what comes back
/// until the gateway closes the connection or `wait` has passed since the start.
async fn raw_parts(addr: SocketAddr, parts: &[&[u8]], pause: Duration, wait: Duration) -> Raw {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
    let writer = tokio::spawn(async move {
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            if write.write_all(part).await.is_err() {
                break;
            }
        }
        // Keep the write half open: a half-close would look like a client that went away.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(write);
    });
    let mut bytes = Vec::new();
    let mut closed = false;
    let deadline = started + wait;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, read.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    writer.abort();
    Raw {
        bytes,
        closed,
        elapsed: started.elapsed(),
    }
}

/// The HTTP layer refused the request: nothing but bare `allowed` statuses came back (possibly
/// nothing at all, when the close raced the response) and the connection is closed.
#[track_caller]
fn assert_http_layer_refused(raw: &Raw, allowed: &[u16]) {
    assert!(raw.closed, "connection left open: {:?}", raw.text());
    for r in raw.responses() {
        assert!(
            allowed.contains(&r.status),
            "expected one of {allowed:?}, got: {:?}",
            raw.text()
        );
        assert!(r.header("x-qbgate-reason").is_none() || r.status == 400);
    }
}

/// Exactly one response, the gateway's own JSON error with `status` and `reason`.
#[track_caller]
fn assert_raw_gate_error(raw: &Raw, status: u16, reason: &str) {
    let responses = raw.responses();
    assert_eq!(responses.len(), 1, "{:?}", raw.text());
    let r = &responses[0];
    assert_eq!(r.status, status, "{:?}", raw.text());
    assert_eq!(
        r.header("x-qbgate-reason"),
        Some(reason),
        "{:?}",
        raw.text()
    );
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(json["errors"]["base"][0].is_string(), "{json}");
}

/// Either the HTTP layer refused (bare 400 and closed) or the gateway answered 400 `reason`.
#[track_caller]
fn assert_refused_400(raw: &Raw, reasons: &[&str]) {
    let responses = raw.responses();
    match responses.first().and_then(|r| r.header("x-qbgate-reason")) {
        Some(reason) => {
            assert!(reasons.contains(&reason), "{:?}", raw.text());
            assert_eq!(responses[0].status, 400, "{:?}", raw.text());
            assert_eq!(responses.len(), 1, "{:?}", raw.text());
        }
        None => assert_http_layer_refused(raw, &[400]),
    }
}

#[track_caller]
fn assert_nothing_received(gate: &Gate) {
    let received = gate.sandbox.received();
    assert!(
        received.is_empty(),
        "the upstream received {:?}",
        received
            .iter()
            .map(|r| format!("{} {} complete={}", r.method, r.uri, r.complete))
            .collect::<Vec<_>>()
    );
}

/// No request other than dialog lookups (`GET /chat/Dialog.json?_id=..`) reached the upstream.
#[track_caller]
fn assert_only_lookups_received(gate: &Gate) {
    for r in gate.sandbox.received() {
        assert!(
            r.method == http::Method::GET && r.uri.path() == LIST,
            "the upstream received {} {}",
            r.method,
            r.uri
        );
    }
}

/// A normal request still goes through.
async fn assert_still_serving(gate: &Gate) {
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

/// The smuggled request every smuggling case hides after the first one: authorized, so that it
/// would reach the upstream if the gateway ever parsed it as a request of its own.
fn smuggled() -> String {
    format!(
        "GET /chat/Dialog.json?smuggled=1 HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_APP}\r\n\r\n"
    )
}

const WAIT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Request smuggling
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn content_length_and_transfer_encoding_together_smuggle_nothing() {
    let gate = Gate::start("").await;
    // Unauthenticated outer request: at most its 401 comes back, nothing reaches the upstream.
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 50\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let request = format!(
            "POST /blobs.json HTTP/1.1\r\nHost: x\r\n{framing}\r\n0\r\n\r\n{}",
            smuggled()
        );
        let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
        let responses = raw.responses();
        assert!(responses.len() <= 1, "{framing:?}: {:?}", raw.text());
        assert!(raw.closed, "{framing:?}: connection kept open");
        if let Some(r) = responses.first() {
            // 415: a write body with no Content-Type is refused before the key is looked at.
            assert!(
                matches!(r.status, 400 | 401 | 415),
                "{framing:?}: {:?}",
                raw.text()
            );
        }
        assert_nothing_received(&gate);
    }
}

#[tokio::test]
async fn content_length_and_transfer_encoding_forward_one_consistent_request() {
    let gate = Gate::start("").await;
    // Authorized outer request: the upstream gets exactly it, framed one way, never the smuggled one.
    let request = format!(
        "POST /blobs.json HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_ANY}\r\nOn-Behalf-Of: {OWNER}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\n\r\n{}",
        smuggled()
    );
    let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
    assert!(raw.responses().len() <= 1, "{:?}", raw.text());
    assert!(raw.closed);
    let received = gate.sandbox.received();
    assert!(received.len() <= 1, "{received:?}");
    for r in &received {
        assert_eq!(r.uri, "/blobs.json");
        assert!(r.complete, "{r:?}");
        assert_eq!(&r.body[..], b"hello");
        if let Some(cl) = r.headers.get("content-length") {
            assert_eq!(cl, "5");
        }
    }
}

#[tokio::test]
async fn two_different_content_lengths_are_refused() {
    let gate = Gate::start("").await;
    let auth = format!("Authorization: ApiKey {KEY_APP}\r\n");
    for framing in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -5\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: 99999999999999999999999\r\n",
    ] {
        let request = format!(
            "PUT {} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n{framing}\r\n{{\"name\":\"x\"}}{}",
            put_path(),
            smuggled()
        );
        let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
        assert_refused_400(&raw, &["bad_header"]);
        assert!(raw.responses().len() <= 1, "{framing:?}: {:?}", raw.text());
        assert_nothing_received(&gate);
    }
}

#[tokio::test]
async fn obsolete_line_folding_is_refused() {
    let gate = Gate::start("").await;
    for folded in [
        format!("Authorization: ApiKey\r\n {KEY_APP}\r\n"),
        format!("Authorization: ApiKey {KEY_APP}\r\nOn-Behalf-Of: 1\r\n\t{OWNER}\r\n"),
        format!("Authorization: ApiKey {KEY_APP}\r\nX-Note: a\r\n Transfer-Encoding: chunked\r\n"),
    ] {
        let request = format!("GET {LIST} HTTP/1.1\r\nHost: x\r\n{folded}\r\n");
        let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
        assert_http_layer_refused(&raw, &[400]);
        assert_nothing_received(&gate);
    }
}

fn chunked_put(chunks: &str) -> String {
    format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_APP}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}",
        put_path()
    )
}

const BAD_CHUNKS: [&str; 7] = [
    "zz\r\n{\"name\":\"x\"}\r\n0\r\n\r\n",
    "-c\r\n{\"name\":\"x\"}\r\n0\r\n\r\n",
    "0x0c\r\n{\"name\":\"x\"}\r\n0\r\n\r\n",
    "\r\n{\"name\":\"x\"}\r\n0\r\n\r\n",
    "2\r\n{\"name\":\"x\"}\r\n0\r\n\r\n",
    "c\r\n{\"name\":\"x\"}XX0\r\n\r\n",
    "c {\r\n{\"name\":\"x\"}\r\n0\r\n\r\n",
];

#[tokio::test]
async fn invalid_chunk_sizes_on_a_checked_route_reach_nothing() {
    let gate = Gate::start("").await;
    for chunks in BAD_CHUNKS {
        let raw = raw(gate.addr, chunked_put(chunks).as_bytes(), WAIT).await;
        assert_refused_400(&raw, &["bad_body"]);
        assert!(raw.closed, "{chunks:?}: connection kept open");
        assert_nothing_received(&gate);
    }
    assert_still_serving(&gate).await;
}

#[tokio::test]
async fn invalid_chunk_sizes_on_a_streamed_route_never_complete_upstream() {
    let gate = Gate::start("").await;
    for chunks in BAD_CHUNKS {
        let request = format!(
            "POST /blobs.json HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_ANY}\r\nOn-Behalf-Of: {OWNER}\r\n\
             Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"
        );
        let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
        assert_refused_400(&raw, &["bad_body"]);
        for r in gate.sandbox.received() {
            assert!(
                !r.complete,
                "{chunks:?}: the upstream got a complete request: {r:?}"
            );
        }
    }
}

#[tokio::test]
async fn chunk_size_overflow_is_refused() {
    let gate = Gate::start(SLOW).await;
    for chunks in [
        "ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "10000000000000000\r\nabc\r\n0\r\n\r\n",
        "ffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        "7fffffffffffffff\r\nabc",
    ] {
        let raw = raw(gate.addr, chunked_put(chunks).as_bytes(), WAIT).await;
        let responses = raw.responses();
        match responses.first().and_then(|r| r.header("x-qbgate-reason")) {
            // A size that parses is caught by the limit or the body deadline.
            Some(_) => {
                let r = &responses[0];
                assert!(
                    matches!(
                        (r.status, r.header("x-qbgate-reason").unwrap()),
                        (400, "bad_body") | (413, "body_too_large") | (408, "body_timeout")
                    ),
                    "{chunks:?}: {:?}",
                    raw.text()
                );
            }
            None => assert_http_layer_refused(&raw, &[400]),
        }
        assert_nothing_received(&gate);
    }
}

// ---------------------------------------------------------------------------------------------
// Oversized heads
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_oversized_header_block_is_refused() {
    let gate = Gate::start("").await;
    let auth = format!("Authorization: ApiKey {KEY_APP}\r\n");
    let one_big = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
    let many_medium: String = (0..90)
        .map(|i| format!("X-Medium-{i}: {}\r\n", "b".repeat(1000)))
        .collect();
    for extra in [one_big, many_medium] {
        let request = format!("GET {LIST} HTTP/1.1\r\nHost: x\r\n{auth}{extra}\r\n");
        let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
        assert_http_layer_refused(&raw, &[400, 431]);
        assert_nothing_received(&gate);
    }
    assert_still_serving(&gate).await;
}

#[tokio::test]
async fn an_oversized_uri_is_refused() {
    let gate = Gate::start("").await;
    for len in [70 * 1024, 1024 * 1024] {
        let request = format!(
            "GET /chat/Dialog.json?q={} HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_APP}\r\n\r\n",
            "a".repeat(len)
        );
        let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
        assert_http_layer_refused(&raw, &[400, 414, 431]);
        assert_nothing_received(&gate);
    }
    assert_still_serving(&gate).await;
}

#[tokio::test]
async fn many_headers_are_refused() {
    let gate = Gate::start("").await;
    let headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!(
        "GET {LIST} HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_APP}\r\n{headers}\r\n"
    );
    let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
    assert_http_layer_refused(&raw, &[400, 431]);
    assert_nothing_received(&gate);
    assert_still_serving(&gate).await;
}

// ---------------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_trickling_its_head_is_cut_off() {
    let gate = Gate::start(SLOW).await;
    let head = format!("GET {LIST} HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_APP}\r\n");
    let mut parts: Vec<Vec<u8>> = vec![head.into_bytes()];
    for i in 0..40 {
        parts.push(format!("X-Slow-{i}: y\r\n").into_bytes());
    }
    parts.push(b"\r\n".to_vec());
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let raw = raw_parts(gate.addr, &parts, Duration::from_millis(100), WAIT).await;
    assert!(raw.closed, "still open after {:?}", raw.elapsed);
    assert!(
        raw.elapsed < Duration::from_millis(2500),
        "{:?}",
        raw.elapsed
    );
    for r in raw.responses() {
        assert!(matches!(r.status, 400 | 408), "{:?}", raw.text());
    }
    assert_nothing_received(&gate);
}

#[tokio::test]

async fn a_client_that_sends_nothing_is_cut_off() {
    let gate = Gate::start(SLOW).await;
    let raw = raw_parts(gate.addr, &[b""], Duration::ZERO, WAIT).await;
    assert!(
        raw.closed,
        "idle connection still open after {:?}",
        raw.elapsed
    );
}

#[tokio::test]

async fn a_client_that_stops_inside_the_h2_preface_is_cut_off() {
    let gate = Gate::start(SLOW).await;
    let raw = raw_parts(gate.addr, &[b"PRI * HTTP/2.0\r\n"], Duration::ZERO, WAIT).await;
    assert!(raw.closed, "connection still open after {:?}", raw.elapsed);
}

#[tokio::test]
async fn a_client_trickling_a_checked_body_gets_408() {
    let gate = Gate::start(SLOW).await;
    let head = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_APP}\r\n\
         Content-Type: application/json\r\nContent-Length: 40\r\n\r\n",
        put_path()
    );
    let body = br#"{"name":"slowly but surely, the body  "}"#;
    assert_eq!(body.len(), 40);
    let mut parts: Vec<&[u8]> = vec![head.as_bytes()];
    parts.extend(body.chunks(2));
    let raw = raw_parts(gate.addr, &parts, Duration::from_millis(100), WAIT).await;
    assert_raw_gate_error(&raw, 408, "body_timeout");
    assert!(
        raw.elapsed < Duration::from_millis(2500),
        "{:?}",
        raw.elapsed
    );
    assert_nothing_received(&gate);
}

#[tokio::test]
async fn a_client_trickling_a_streamed_body_never_completes_upstream() {
    let gate = Gate::start(SLOW).await;
    let head = format!(
        "POST /blobs.json HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_ANY}\r\nOn-Behalf-Of: {OWNER}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 40\r\n\r\n"
    );
    let body = [b'z'; 40];
    let mut parts: Vec<&[u8]> = vec![head.as_bytes()];
    parts.extend(body.chunks(2));
    let raw = raw_parts(gate.addr, &parts, Duration::from_millis(100), WAIT).await;
    assert_raw_gate_error(&raw, 408, "body_timeout");
    // The head may have gone on while the body streamed; the request never completed upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for r in gate.sandbox.received() {
        assert!(!r.complete, "{r:?}");
        assert!(r.body.len() < 40);
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies over the limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn bodies_over_the_limit_are_413_in_one_piece_and_chunked() {
    let gate = Gate::start("max_body_bytes: 1000").await;
    let name = "n".repeat(2000);
    let json = format!(r#"{{"name":"{name}"}}"#);
    let one_piece = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_APP}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        put_path(),
        json.len()
    );
    let raw1 = raw(gate.addr, one_piece.as_bytes(), WAIT).await;
    assert_raw_gate_error(&raw1, 413, "body_too_large");
    // Chunked, in pieces each under the limit.
    let chunks: String = json
        .as_bytes()
        .chunks(300)
        .map(|c| format!("{:x}\r\n{}\r\n", c.len(), String::from_utf8_lossy(c)))
        .collect::<String>()
        + "0\r\n\r\n";
    let raw2 = raw(gate.addr, chunked_put(&chunks).as_bytes(), WAIT).await;
    assert_raw_gate_error(&raw2, 413, "body_too_large");
    // Chunked on a streamed route.
    let streamed = format!(
        "POST /blobs.json HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_ANY}\r\nOn-Behalf-Of: {OWNER}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"
    );
    let raw3 = raw(gate.addr, streamed.as_bytes(), WAIT).await;
    assert_raw_gate_error(&raw3, 413, "body_too_large");
    for r in gate.sandbox.received() {
        assert!(!r.complete && r.body.len() <= 1000, "{r:?}");
        assert_ne!(r.method, http::Method::PUT);
    }
}

// ---------------------------------------------------------------------------------------------
// Bad bytes in headers and bodies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_utf8_and_control_characters_in_headers_are_refused() {
    let gate = Gate::start("").await;
    let get = |header: &[u8]| {
        let mut r = format!("GET {LIST} HTTP/1.1\r\nHost: x\r\n").into_bytes();
        r.extend_from_slice(header);
        r.extend_from_slice(b"\r\n");
        r
    };
    let key_any = format!("Authorization: ApiKey {KEY_ANY}\r\n");
    let key_app = format!("Authorization: ApiKey {KEY_APP}\r\n");
    // Obsolete text (0x80-0xff) is legal HTTP; the gateway must refuse it where it reads it.
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            [key_any.as_bytes(), b"On-Behalf-Of: \xff\r\n"].concat(),
            400,
            "bad_on_behalf_of",
        ),
        (
            [key_any.as_bytes(), b"On-Behalf-Of: 9\xc3\xa9\r\n"].concat(),
            400,
            "bad_on_behalf_of",
        ),
        (
            [
                key_any.as_bytes(),
                "On-Behalf-Of: \u{0661}\u{0662}\r\n".as_bytes(),
            ]
            .concat(),
            400,
            "bad_on_behalf_of",
        ),
        (
            b"Authorization: ApiKey \xff\xfe\r\n".to_vec(),
            401,
            "unknown_key",
        ),
        (
            [
                b"Authorization: ApiKey ".as_slice(),
                KEY_APP.as_bytes(),
                b"\xa0\r\n",
            ]
            .concat(),
            401,
            "unknown_key",
        ),
    ];
    for (header, status, reason) in cases {
        let raw = raw(gate.addr, &get(&header), WAIT).await;
        let responses = raw.responses();
        assert_eq!(responses.len(), 1, "{:?}", raw.text());
        assert_eq!(responses[0].status, status, "{:?}", raw.text());
        assert_eq!(responses[0].header("x-qbgate-reason"), Some(reason));
        assert_nothing_received(&gate);
    }
    // Control characters are not legal in a field value: the HTTP layer refuses them, or the
    // gateway does where it reads the header.
    for header in [
        [key_any.as_bytes(), b"On-Behalf-Of: 1\x00\r\n"].concat(),
        [key_any.as_bytes(), b"On-Behalf-Of: 1\x01\r\n"].concat(),
        [key_any.as_bytes(), b"On-Behalf-Of: \x7f1\r\n"].concat(),
        [key_any.as_bytes(), b"On-Behalf-Of: 1\x1b[0m\r\n"].concat(),
        [b"Authorization: ApiKey test-key\x00-app\r\n".as_slice()].concat(),
        [key_app.as_bytes(), b"X-Request-Id: a\x00b\r\n"].concat(),
        [key_app.as_bytes(), b"X-Note: \x08\x08\x08\r\n"].concat(),
    ] {
        let raw = raw(gate.addr, &get(&header), WAIT).await;
        assert_refused_400(&raw, &["bad_on_behalf_of", "bad_header"]);
        assert_nothing_received(&gate);
    }
}

#[tokio::test]
async fn header_values_with_cr_or_lf_inject_nothing() {
    let gate = Gate::start("").await;
    let key_any = format!("Authorization: ApiKey {KEY_ANY}\r\n");
    // A bare CR inside a value: refused by the HTTP layer.
    for header in [
        format!("{key_any}On-Behalf-Of: {OWNER}\rX-Injected: 1\r\n"),
        format!("Authorization: ApiKey {KEY_APP}\rOn-Behalf-Of: {OWNER}\r\n"),
        format!("Authorization: ApiKey {KEY_APP}\r\nX-Request-Id: a\rb\r\n"),
    ] {
        let request = format!("GET {LIST} HTTP/1.1\r\nHost: x\r\n{header}\r\n");
        let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
        assert_refused_400(&raw, &["bad_on_behalf_of", "bad_header"]);
        assert_nothing_received(&gate);
    }
    // A bare LF ends a line for the HTTP layer: the gateway then judges two headers, and the
    // upstream must receive those same two headers, never a value holding CR or LF.
    let request = format!(
        "GET {LIST} HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_APP}\r\nX-Note: a\nX-Injected: 1\r\n\r\n"
    );
    let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
    let responses = raw.responses();
    if responses.first().is_some_and(|r| r.status == 200) {
        for r in gate.sandbox.take_received() {
            for (name, value) in &r.headers {
                assert!(
                    !value.as_bytes().iter().any(|b| *b == b'\r' || *b == b'\n'),
                    "{name}: {value:?}"
                );
            }
        }
    } else {
        assert_refused_400(&raw, &["bad_header"]);
        assert_nothing_received(&gate);
    }
    // Percent-encoded CR/LF in the target are forwarded encoded, never decoded into the head.
    let reply = gate
        .as_user(
            KEY_APP,
            None,
            "GET",
            "/chat/Dialog.json?x=%0d%0aX-Injected:%201",
            None,
        )
        .await;
    assert!(reply.status < 500, "{reply:?}");
    for r in gate.sandbox.take_received() {
        assert!(!r.headers.contains_key("x-injected"), "{r:?}");
    }
}

#[tokio::test]
async fn duplicate_authorization_or_on_behalf_of_is_400() {
    let gate = Gate::start("").await;
    let app = format!("ApiKey {KEY_APP}");
    let any = format!("ApiKey {KEY_ANY}");
    let owner = OWNER.to_string();
    let two_users = format!("{owner}, 1");
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("authorization", &app), ("authorization", &app)],
            "header_repeated",
        ),
        (
            &[("authorization", &any), ("authorization", "ApiKey nope")],
            "header_repeated",
        ),
        (
            &[
                ("authorization", &any),
                ("on-behalf-of", &owner),
                ("on-behalf-of", &owner),
            ],
            "header_repeated",
        ),
        (
            &[("authorization", &any), ("on-behalf-of", &two_users)],
            "bad_on_behalf_of",
        ),
    ];
    for (headers, reason) in cases {
        let reply = gate.send("GET", LIST, headers, "").await;
        reply.assert_gate_error(400, reason, "base");
    }
    // Differently cased duplicates over raw TCP are the same header.
    let request = format!(
        "GET {LIST} HTTP/1.1\r\nHost: x\r\nauthorization: ApiKey {KEY_APP}\r\nAUTHORIZATION: ApiKey {KEY_APP}\r\n\r\n"
    );
    let raw = raw(gate.addr, request.as_bytes(), WAIT).await;
    assert_raw_gate_error(&raw, 400, "header_repeated");
    assert_nothing_received(&gate);
}

async fn put_body(gate: &Gate, content_type: &str, body: Vec<u8>) -> Raw {
    let mut request = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_APP}\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        put_path(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    raw(gate.addr, &request, Duration::from_secs(10)).await
}

#[tokio::test]
async fn invalid_utf8_and_control_characters_in_bodies_are_400() {
    let gate = Gate::start("").await;
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";
    for (content_type, body) in [
        (json, b"{\"name\":\"\xff\xfe\"}".to_vec()),
        (json, b"{\"name\":\"\xc3\"}".to_vec()),
        (json, b"{\"name\":\"\xed\xa0\x80\"}".to_vec()),
        (json, b"{\"na\xffme\":\"x\"}".to_vec()),
        (json, b"{\"name\":\"a\x00b\"}".to_vec()),
        (json, b"{\"name\":\"a\x01b\"}".to_vec()),
        (json, b"{\"name\":\"a\nb\"}".to_vec()),
        (json, b"\xef\xbb\xbf{\"name\":\"bom\"}".to_vec()),
        (json, br#"{"name":"\ud800"}"#.to_vec()),
        (form, b"name=\xff".to_vec()),
        (form, b"name=%ff".to_vec()),
        (form, b"name=%c3".to_vec()),
    ] {
        let raw = put_body(&gate, content_type, body.clone()).await;
        let responses = raw.responses();
        assert_eq!(responses.len(), 1, "{body:?}: {:?}", raw.text());
        assert_eq!(
            responses[0].status,
            400,
            "{:?}: {:?}",
            String::from_utf8_lossy(&body),
            raw.text()
        );
        assert_only_lookups_received(&gate);
    }
    assert_eq!(
        gate.sandbox.dialog(GROUP_ID).unwrap()["name"],
        "Party planning"
    );
}

#[tokio::test]
async fn deeply_nested_json_is_400_without_a_crash() {
    let gate = Gate::start("").await;
    let depth = 10_000;
    let objects = format!(
        "{{\"data\":{}{}}}",
        "{\"a\":".repeat(depth),
        "}".repeat(depth)
    );
    let arrays = format!("{{\"name\":{}1{}}}", "[".repeat(depth), "]".repeat(depth));
    let unclosed = format!("{{\"data\":{}", "[".repeat(100_000));
    for body in [objects, arrays, unclosed] {
        let raw = put_body(&gate, "application/json", body.into_bytes()).await;
        let responses = raw.responses();
        assert_eq!(responses.len(), 1, "{:?}", raw.text());
        assert_eq!(responses[0].status, 400);
        assert_eq!(
            responses[0].header("x-qbgate-reason"),
            Some("params_malformed")
        );
        assert_only_lookups_received(&gate);
    }
    let form = (0..10_000).map(|_| "[a]").collect::<String>();
    let raw = put_body(
        &gate,
        "application/x-www-form-urlencoded",
        format!("data{form}=1").into_bytes(),
    )
    .await;
    assert_eq!(raw.responses()[0].status, 400, "{:?}", raw.text());
    assert_only_lookups_received(&gate);
    assert_still_serving(&gate).await;
}

#[tokio::test]
async fn huge_json_is_judged_or_refused_whole() {
    let gate = Gate::start("").await;
    // Just under the 1 MiB default: read whole and judged.
    let name = "n".repeat(1_000_000);
    let raw = put_body(
        &gate,
        "application/json",
        format!(r#"{{"name":"{name}"}}"#).into_bytes(),
    )
    .await;
    let r = &raw.responses()[0];
    assert_eq!(
        r.status,
        422,
        "{:?}",
        &raw.text()[..200.min(raw.text().len())]
    );
    assert_eq!(r.header("x-qbgate-reason"), Some("dialog_name_too_long"));
    // Many keys.
    let keys: String = (0..50_000).map(|i| format!(",\"k{i}\":{i}")).collect();
    let raw = put_body(
        &gate,
        "application/json",
        format!(r#"{{"name":"x"{keys}}}"#).into_bytes(),
    )
    .await;
    let r = &raw.responses()[0];
    assert_eq!(r.status, 422);
    assert_eq!(r.header("x-qbgate-reason"), Some("unknown_field"));
    // Over the limit.
    let raw = put_body(
        &gate,
        "application/json",
        format!(r#"{{"name":"{name}{name}"}}"#).into_bytes(),
    )
    .await;
    assert_raw_gate_error(&raw, 413, "body_too_large");
    assert_only_lookups_received(&gate);
    assert_still_serving(&gate).await;
}

#[tokio::test]
async fn numbers_beyond_64_bits_are_422() {
    let gate = Gate::start("").await;
    for body in [
        r#"{"user_id": 123456789012345678901234567890}"#,
        r#"{"user_id": 18446744073709551616}"#,
        r#"{"user_id": 9.6753878e7}"#,
        r#"{"user_id": -96753878}"#,
        r#"{"push_all": {"occupants_ids": [18446744073709551617]}}"#,
        r#"{"pull_all": {"occupants_ids": [123456789012345678901234567890]}}"#,
        r#"{"push_all": {"admin_ids": [1.5]}}"#,
    ] {
        let reply = gate
            .as_user(KEY_APP, None, "PUT", &put_path(), Some(body))
            .await;
        assert_eq!(reply.status, 422, "{body}: {:?}", reply.body);
        assert_eq!(reply.reason(), Some("invalid_field"), "{body}");
        assert_only_lookups_received(&gate);
    }
    // Out of even f64's range: not JSON serde can read, refused as malformed.
    let reply = gate
        .as_user(
            KEY_APP,
            None,
            "PUT",
            &put_path(),
            Some(r#"{"user_id": 1e400}"#),
        )
        .await;
    reply.assert_gate_error(400, "params_malformed", "base");
    // The same in a form body.
    let auth = format!("ApiKey {KEY_APP}");
    let reply = gate
        .send(
            "PUT",
            &put_path(),
            &[
                ("authorization", &auth),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            "user_id=123456789012345678901234567890",
        )
        .await;
    assert_eq!(reply.status, 422, "{:?}", reply.body);
    assert_only_lookups_received(&gate);
}

// ---------------------------------------------------------------------------------------------
// HTTP/2
// ---------------------------------------------------------------------------------------------

/// Just enough HTTP/2 to misbehave on purpose.
pub(crate) mod h2raw {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0;
    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const PING: u8 = 6;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 1;
    pub const END_HEADERS: u8 = 4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut v: usize) {
        let max = (1usize << prefix_bits) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128 + 128) as u8);
            v /= 128;
        }
        out.push(v as u8);
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        int(out, 0, 7, s.len());
        out.extend_from_slice(s);
    }

    /// A GET's header block: `:method GET`, `:scheme http`, `:path`, `:authority`, then `extra`
    /// as literals without indexing.
    pub fn get_block(path: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = vec![0x82, 0x86];
        int(&mut b, 0, 4, 4);
        string(&mut b, path.as_bytes());
        int(&mut b, 0, 4, 1);
        string(&mut b, b"localhost");
        for (name, value) in extra {
            b.push(0);
            string(&mut b, name.as_bytes());
            string(&mut b, value);
        }
        b
    }

    /// Client setup: preface, SETTINGS (large stream window), a large connection window.
    pub fn setup() -> Vec<u8> {
        let mut out = PREFACE.to_vec();
        let mut settings = vec![0, 4];
        settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
        out.extend(frame(SETTINGS, 0, 0, &settings));
        out.extend(frame(
            WINDOW_UPDATE,
            0,
            0,
            &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
        ));
        out
    }
}

/// What the server did with each stream of a raw h2 connection.
#[derive(Debug, Default)]
struct H2Outcome {
    /// Streams that finished (END_STREAM), and whether the response was `:status 200`.
    finished: std::collections::HashMap<u32, bool>,
    /// First response header block byte, per stream (0x88 is an indexed `:status 200`).
    first_byte: std::collections::HashMap<u32, u8>,
    reset: std::collections::HashMap<u32, u32>,
    goaway: Option<(u32, u32)>,
    closed: bool,
}

impl H2Outcome {
    fn resolved(&self, stream: u32) -> bool {
        self.finished.contains_key(&stream)
            || self.reset.contains_key(&stream)
            || self.goaway.is_some_and(|(last, _)| stream > last)
    }
}

/// Write `blob` after the client setup, then read frames (acknowledging SETTINGS and PING) until
/// every stream of `streams` is resolved, the connection ends, or `wait` passes.
async fn h2_exchange(
    addr: SocketAddr,
    blob: Vec<u8>,
    streams: &[u32],
    wait: Duration,
) -> H2Outcome {
    use h2raw::*;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tx.send([setup(), blob].concat()).unwrap();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if write.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut outcome = H2Outcome::default();
    let deadline = Instant::now() + wait;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    'outer: loop {
        // Parse every whole frame in the buffer.
        while buf.len() >= 9 {
            let len =
                (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                SETTINGS if flags & 1 == 0 => {
                    let _ = tx.send(frame(SETTINGS, 1, 0, &[]));
                }
                PING if flags & 1 == 0 => {
                    let _ = tx.send(frame(PING, 1, 0, &payload));
                }
                HEADERS => {
                    if let Some(b) = payload.first() {
                        outcome.first_byte.entry(id).or_insert(*b);
                    }
                    if flags & END_STREAM != 0 {
                        let ok = outcome.first_byte.get(&id) == Some(&0x88);
                        outcome.finished.insert(id, ok);
                    }
                }
                DATA if flags & END_STREAM != 0 => {
                    let ok = outcome.first_byte.get(&id) == Some(&0x88);
                    outcome.finished.insert(id, ok);
                }
                RST_STREAM => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    outcome.reset.insert(id, code);
                }
                GOAWAY => {
                    let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    outcome.goaway = Some((last, code));
                }
                _ => {}
            }
        }
        if streams.iter().all(|s| outcome.resolved(*s)) {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, read.read(&mut chunk)).await {
            Err(_) => break 'outer,
            Ok(Ok(0)) | Ok(Err(_)) => {
                outcome.closed = true;
                break 'outer;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    writer.abort();
    outcome
}

#[tokio::test]
async fn an_h2_stream_flood_is_served_or_refused_without_a_crash() {
    use h2raw::*;
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_APP}");
    let block = get_block(LIST, &[("authorization", auth.as_bytes())]);
    let streams: Vec<u32> = (0..1000).map(|i| 1 + 2 * i).collect();
    let mut blob = Vec::new();
    for id in &streams {
        blob.extend(frame(HEADERS, END_STREAM | END_HEADERS, *id, &block));
    }
    let outcome = h2_exchange(gate.addr, blob, &streams, Duration::from_secs(60)).await;
    let unresolved: Vec<_> = streams.iter().filter(|s| !outcome.resolved(**s)).collect();
    assert!(
        unresolved.is_empty(),
        "{} streams neither answered nor refused (goaway {:?}, closed {})",
        unresolved.len(),
        outcome.goaway,
        outcome.closed
    );
    let ok = outcome.finished.values().filter(|ok| **ok).count();
    assert_eq!(
        ok,
        outcome.finished.len(),
        "a finished stream was not a 200"
    );
    // Every refusal is REFUSED_STREAM (7) or the stream falls after a GOAWAY.
    assert!(
        outcome.reset.values().all(|code| *code == 7 || *code == 8),
        "{:?}",
        outcome
            .reset
            .values()
            .collect::<std::collections::BTreeSet<_>>()
    );
    let received = gate.sandbox.received().len();
    assert!(
        received <= ok,
        "upstream got {received}, client saw {ok} answers"
    );
    assert!(ok > 0);
    assert_still_serving(&gate).await;
}

#[tokio::test]
async fn hyper_h2_client_with_1000_concurrent_streams_all_complete() {
    let gate = Gate::start("").await;
    let stream = TcpStream::connect(gate.addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
    tokio::spawn(conn);
    let auth = format!("ApiKey {KEY_APP}");
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let mut sender = sender.clone();
        let request = http::Request::builder()
            .uri(format!("http://{}{LIST}", gate.addr))
            .header("authorization", &auth)
            .body(http_body_util::Empty::new())
            .unwrap();
        tasks.push(tokio::spawn(async move {
            use http_body_util::BodyExt;
            let response = sender.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(status) => {
                assert_eq!(status, 200);
                ok += 1;
            }
            Err(e) => panic!("stream failed: {e}"),
        }
    }
    assert_eq!(ok, 1000);
    assert_eq!(gate.sandbox.received().len(), 1000);
    assert_still_serving(&gate).await;
}

#[tokio::test]
async fn an_oversized_h2_header_list_is_refused() {
    use h2raw::*;
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_APP}");
    let big = vec![b'a'; 100 * 1024];
    for extra in [
        vec![
            ("authorization", auth.as_bytes()),
            ("x-big", big.as_slice()),
        ],
        // Many small headers adding up.
        (0..2000)
            .map(|_| ("x-many", &big[..50]))
            .chain([("authorization", auth.as_bytes())])
            .collect(),
    ] {
        let block = get_block(LIST, &extra);
        let mut blob = Vec::new();
        let mut pieces = block.chunks(16_384).peekable();
        let first = pieces.next().unwrap();
        let first_flags = END_STREAM
            | if pieces.peek().is_none() {
                END_HEADERS
            } else {
                0
            };
        blob.extend(frame(HEADERS, first_flags, 1, first));
        while let Some(piece) = pieces.next() {
            let flags = if pieces.peek().is_none() {
                END_HEADERS
            } else {
                0
            };
            blob.extend(frame(CONTINUATION, flags, 1, piece));
        }
        let outcome = h2_exchange(gate.addr, blob, &[1], Duration::from_secs(10)).await;
        let refused = outcome.reset.contains_key(&1)
            || outcome.goaway.is_some()
            || outcome.closed
            || outcome.finished.get(&1) == Some(&false);
        assert!(refused, "{outcome:?}");
        assert!(outcome.finished.get(&1) != Some(&true), "{outcome:?}");
        assert_nothing_received(&gate);
    }
    assert_still_serving(&gate).await;
}

// ---------------------------------------------------------------------------------------------
// Bounded
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn after_a_barrage_a_normal_request_still_succeeds() {
    let gate = Gate::start(SLOW).await;
    let mut barrage = Vec::new();
    for i in 0..50 {
        let addr = gate.addr;
        barrage.push(tokio::spawn(async move {
            let request = match i % 5 {
                0 => format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000)),
                1 => format!(
                    "GET {LIST} HTTP/1.1\r\nHost: x\r\n{}\r\n",
                    (0..500).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
                ),
                2 => chunked_put("ffffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
                3 => "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                    .to_string(),
                _ => format!("GET {LIST} HTTP/1.1\r\nHost: x\r\nX-Slow: "),
            };
            raw(addr, request.as_bytes(), Duration::from_secs(3)).await
        }));
    }
    for b in barrage {
        let raw = b.await.unwrap();
        assert!(raw.closed, "{:?}", raw.text());
    }
    assert_nothing_received(&gate);
    assert_still_serving(&gate).await;
}

/// One keep-alive GET, answered 200, then nothing more from the client for `WAIT`.
async fn one_get_then_idle(addr: SocketAddr) -> Raw {
    let request =
        format!("GET {LIST} HTTP/1.1\r\nHost: x\r\nAuthorization: ApiKey {KEY_APP}\r\n\r\n");
    let raw = raw_parts(addr, &[request.as_bytes()], Duration::ZERO, WAIT).await;
    assert_eq!(raw.responses().len(), 1, "{:?}", raw.text());
    assert_eq!(raw.responses()[0].status, 200);
    raw
}

#[tokio::test]
async fn a_reloaded_header_timeout_applies_to_open_connections() {
    // 4 s at first (swept every second); 500 ms after the reload. On the first policy the idle
    // connection below could not be cut before 4 s.
    let gate = Gate::start("client: { header_timeout: 4s }").await;
    let gateway = gate.gateway.clone();
    let text = policy_text(&format!("http://{}", gate.sandbox_addr), SLOW, "");
    let reload = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let runtime = qbgate::Runtime::new(compile(&text), Some(&*gateway.runtime()))
            .await
            .unwrap();
        gateway.swap(runtime);
    });
    let raw = one_get_then_idle(gate.addr).await;
    reload.await.unwrap();
    assert!(
        raw.closed,
        "idle for {:?} under a reloaded 500 ms timeout and still open",
        raw.elapsed
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_cut_off() {
    let gate = Gate::start(SLOW).await;
    let raw = one_get_then_idle(gate.addr).await;
    assert!(
        raw.closed,
        "keep-alive connection idle for {:?} and still open",
        raw.elapsed
    );
}
