//! Request integrity: the upstream reads exactly the request the gateway judged.
//!
//! Every way found to make the two differ is refused here with its reason code, and nothing
//! reaches the upstream; what is forwarded is the canonical request (the matched path, the judged
//! headers). Refusals keep a keep-alive connection honest: a client whose body arrives after the
//! answer can send its next request, or was told `Connection: close`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use qbgate::sandbox::seed::{GROUP_ID, OUTSIDER, PRIVATE_ID, RECIPE_USER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const LIST: &str = "/chat/Dialog.json";

fn update_path() -> String {
    format!("/chat/Dialog/{GROUP_ID}.json")
}

#[track_caller]
fn assert_nothing_received(gate: &Gate) {
    let received = gate.sandbox.take_received();
    assert!(
        received.is_empty(),
        "the upstream received {:?}",
        received
            .iter()
            .map(|r| format!("{} {}", r.method, r.uri))
            .collect::<Vec<_>>()
    );
}

/// One keep-alive HTTP/1.1 connection driven byte by byte.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One answer read off a [`Conn`].
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    #[track_caller]
    fn assert_gate_error(&self, status: u16, reason: &str) {
        assert_eq!(
            (self.status, self.header("x-qbgate-reason")),
            (status, Some(reason)),
            "{self:?} body {:?}",
            String::from_utf8_lossy(&self.body)
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        assert!(json["errors"]["base"][0].is_string(), "{json}");
    }
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Write bytes; a write the gateway refused by closing is not an error here.
    async fn write(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Read one answer (Content-Length framed, as the gateway and the sandbox send them).
    async fn answer(&mut self) -> Answer {
        let read = async {
            loop {
                if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                    let mut lines = head.split("\r\n");
                    let status = lines.next().unwrap()[9..12].parse().unwrap();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let length: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .map_or(0, |(_, v)| v.parse().unwrap());
                    while self.buf.len() < end + 4 + length {
                        self.fill().await;
                    }
                    let body = self.buf[end + 4..end + 4 + length].to_vec();
                    self.buf.drain(..end + 4 + length);
                    return Answer {
                        status,
                        headers,
                        body,
                    };
                }
                self.fill().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("no answer within 5 s")
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await.unwrap_or(0);
        assert!(n > 0, "connection closed; read so far: {:?}", self.text());
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Does the gateway close the connection within `wait` (EOF or reset)?
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        matches!(
            tokio::time::timeout(wait, self.stream.read(&mut chunk)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}

/// Send one whole request on a fresh connection and read its answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut conn = Conn::open(addr).await;
    conn.write(request).await;
    conn.answer().await
}

fn head(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: gate\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// An HTTP/2 (prior knowledge) request to the gateway.
async fn h2(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, http::HeaderMap) {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let _ = body.collect().await;
    (parts.status.as_u16(), parts.headers)
}

// ---------------------------------------------------------------------------------------------
// 1. Headers nominated by Connection
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn connection_may_name_no_end_to_end_header() {
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_ANY}");
    let user = RECIPE_USER.to_string();
    for named in [
        "On-Behalf-Of",
        "close, On-Behalf-Of",
        "keep-alive, Content-Type",
        "Authorization",
        "QB-Token",
        "Host",
        "Content-Length",
        "X-Request-Id",
        "Accept",
        "X-Anything",
    ] {
        let body = r#"{"name":"renamed"}"#;
        let request = head(
            "PUT",
            &update_path(),
            &[
                ("Authorization", &auth),
                ("On-Behalf-Of", &user),
                ("Content-Type", "application/json"),
                ("Connection", named),
            ],
            body,
        );
        exchange(gate.addr, &request)
            .await
            .assert_gate_error(400, "connection_header");
        assert_nothing_received(&gate);
    }
    // The hop-by-hop tokens themselves are fine, and nothing of them is forwarded.
    let request = head(
        "GET",
        LIST,
        &[
            ("Authorization", &auth),
            ("On-Behalf-Of", &user),
            ("Connection", "keep-alive, TE"),
            ("TE", "trailers"),
        ],
        "",
    );
    assert_eq!(exchange(gate.addr, &request).await.status, 200);
    let received = gate.sandbox.take_received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].headers["on-behalf-of"], user.as_str());
    assert!(!received[0].headers.contains_key("te"));
    assert!(!received[0].headers.contains_key("connection"));
}

// ---------------------------------------------------------------------------------------------
// 2. Header-name aliases
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn header_names_other_than_letters_digits_and_dashes_are_refused() {
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_ANY}");
    let user = RECIPE_USER.to_string();
    for (name, value) in [
        ("On_Behalf_Of", "999"),
        ("on_behalf_of", "123"),
        ("X_HTTP_METHOD_OVERRIDE", "DELETE"),
        ("Content_Type", "application/x-www-form-urlencoded"),
        ("Authorization_", "ApiKey x"),
        ("X_Anything", "1"),
        ("On.Behalf.Of", "999"),
        ("On~Behalf~Of", "999"),
    ] {
        let request = head(
            "GET",
            LIST,
            &[
                ("Authorization", &auth),
                ("On-Behalf-Of", &user),
                (name, value),
            ],
            "",
        );
        exchange(gate.addr, &request)
            .await
            .assert_gate_error(400, "header_name");
        let (status, headers) = h2(
            gate.addr,
            "GET",
            LIST,
            &[
                ("authorization", &auth),
                ("on-behalf-of", &user),
                (&name.to_ascii_lowercase(), value),
            ],
            "",
        )
        .await;
        assert_eq!(
            (
                status,
                headers.get("x-qbgate-reason").and_then(|v| v.to_str().ok())
            ),
            (400, Some("header_name"))
        );
        assert_nothing_received(&gate);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Methods and method overrides
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn methods_outside_the_list_are_405_with_allow() {
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_APP}");
    for method in ["TRACE", "PROPFIND", "MOVE", "get", "Put", "BREW"] {
        let answer = exchange(
            gate.addr,
            &head(method, LIST, &[("Authorization", &auth)], ""),
        )
        .await;
        answer.assert_gate_error(405, "method_not_allowed");
        assert_eq!(
            answer.header("allow"),
            Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
        );
        // A TRACE echo would have handed the upstream key to the caller.
        assert!(!String::from_utf8_lossy(&answer.body).contains(UPSTREAM_KEY));
        assert_nothing_received(&gate);
    }
    let answer = exchange(
        gate.addr,
        format!("CONNECT gate:443 HTTP/1.1\r\nHost: gate:443\r\nAuthorization: {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 405, "{answer:?}");
    let (status, headers) = h2(gate.addr, "TRACE", LIST, &[("authorization", &auth)], "").await;
    assert_eq!(
        (
            status,
            headers.get("x-qbgate-reason").and_then(|v| v.to_str().ok())
        ),
        (405, Some("method_not_allowed"))
    );
    assert_nothing_received(&gate);
}

#[tokio::test]
async fn method_overrides_are_refused_in_every_form_rack_honours() {
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_ANY}");
    let user = RECIPE_USER.to_string();
    let base = [
        ("Authorization", auth.as_str()),
        ("On-Behalf-Of", user.as_str()),
    ];
    let form = "application/x-www-form-urlencoded";
    let multipart = "multipart/form-data; boundary=XyZ";
    let part = |disposition: &str| {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; {disposition}\r\n\r\nDELETE\r\n--XyZ--\r\n"
        )
    };
    // (method, path, headers, body)
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, String);
    let mut cases: Vec<Case> = Vec::new();
    // One path per family of rules, and ones a family hands back unjudged: every one reads
    // the form.
    for path in [
        "/chat/Dialog.json",
        "/chat/Message.json",
        "/users.json",
        "/subscriptions.json",
        "/events.json",
        "/blobs.json",
        "/address_book.json",
    ] {
        for header in [
            "X-HTTP-Method-Override",
            "X-Http-Method",
            "X-Method-Override",
        ] {
            cases.push((
                "POST",
                path.into(),
                vec![(header, "DELETE".into()), ("Content-Type", form.into())],
                "type=2".into(),
            ));
        }
        for body in [
            "_method=DELETE",
            "type=2&_method=delete",
            "%5Fmethod=DELETE",
            "[_method]=DELETE",
            "_method]=DELETE",
            "_method[]=DELETE",
            "+_method=DELETE",
            "type=2;_method=DELETE",
        ] {
            cases.push((
                "POST",
                path.into(),
                vec![("Content-Type", form.into())],
                body.into(),
            ));
            cases.push((
                "POST",
                format!("{path}?{body}"),
                vec![("Content-Type", form.into())],
                "type=2".into(),
            ));
        }
        for disposition in [
            "name=\"_method\"",
            "name=_method",
            "NAME=\"_METHOD\"",
            "name=\"[_method]\"",
        ] {
            cases.push((
                "POST",
                path.into(),
                vec![("Content-Type", multipart.into())],
                part(disposition),
            ));
        }
    }
    for (method, path, headers, body) in cases {
        let mut all: Vec<(&str, &str)> = base.to_vec();
        all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
        let answer = exchange(gate.addr, &head(method, &path, &all, &body)).await;
        answer.assert_gate_error(400, "method_override");
        assert_nothing_received(&gate);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Paths
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn paths_that_could_route_otherwise_upstream_are_refused_on_both_protocols() {
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_ANY}");
    let user = RECIPE_USER.to_string();
    let body = r#"{"name":"renamed"}"#;
    let headers = [
        ("authorization", auth.as_str()),
        ("on-behalf-of", user.as_str()),
        ("content-type", "application/json"),
    ];
    for path in [
        format!("/chat/d%C4%B1alog/{GROUP_ID}.json"),
        format!("/chat/D%C4%B0ALOG/{GROUP_ID}"),
        format!("/chat/dialog/{GROUP_ID}%C4%B1.json"),
        format!("/chat/Dialog/{GROUP_ID};x=1.json"),
        format!("/chat/Dialog/{GROUP_ID}.json;x=1"),
        format!("/chat/Dialog/{GROUP_ID}%3B.json"),
        format!("/chat/Dialog/{GROUP_ID}%2Fx.json"),
        format!("/chat//Dialog/{GROUP_ID}.json"),
        format!("/chat/./Dialog/{GROUP_ID}.json"),
    ] {
        let answer = exchange(gate.addr, &head("PUT", &path, &headers, body)).await;
        answer.assert_gate_error(400, "bad_path");
        let (status, got) = h2(gate.addr, "PUT", &path, &headers, body).await;
        assert_eq!(
            (
                status,
                got.get("x-qbgate-reason").and_then(|v| v.to_str().ok())
            ),
            (400, Some("bad_path")),
            "{path}"
        );
        assert_nothing_received(&gate);
    }
    // Raw bytes outside ASCII: refused by the gateway or by the HTTP layer, never forwarded.
    let mut request = b"PUT /chat/d".to_vec();
    request.extend_from_slice("ı".as_bytes());
    request.extend_from_slice(
        format!(
            "alog/{GROUP_ID}.json HTTP/1.1\r\nHost: gate\r\nAuthorization: {auth}\r\n\
             On-Behalf-Of: {user}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let mut conn = Conn::open(gate.addr).await;
    conn.write(&request).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    assert_nothing_received(&gate);
}

#[tokio::test]
async fn the_path_that_was_matched_is_the_path_forwarded() {
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_ANY}");
    let user = RECIPE_USER.to_string();
    let headers = [
        ("Authorization", auth.as_str()),
        ("On-Behalf-Of", user.as_str()),
        ("Content-Type", "application/json"),
    ];
    // Judged as the dialog update it is, and sent as the path the rules read.
    let answer = exchange(
        gate.addr,
        &head(
            "PUT",
            &format!("/chat/%44ialog/{GROUP_ID}.json"),
            &headers,
            r#"{"name":"renamed"}"#,
        ),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let sent: Vec<String> = gate
        .sandbox
        .take_received()
        .iter()
        .filter(|r| r.method == http::Method::PUT)
        .map(|r| r.uri.to_string())
        .collect();
    assert_eq!(sent, [format!("/chat/Dialog/{GROUP_ID}.json")]);
    let answer = exchange(
        gate.addr,
        &head("GET", "/chat/%44ialog.json?_id%5Bin%5D=a%2Cb", &headers, ""),
    )
    .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let received = gate.sandbox.take_received();
    assert_eq!(received[0].uri, "/chat/Dialog.json?_id%5Bin%5D=a%2Cb");
    // A plain path goes out byte for byte (whatever the sandbox's router makes of it).
    exchange(
        gate.addr,
        &head("GET", "/CHAT/Dialog.JSON?limit=1", &headers, ""),
    )
    .await;
    let received = gate.sandbox.take_received();
    assert_eq!(received[0].uri, "/CHAT/Dialog.JSON?limit=1");
}

// ---------------------------------------------------------------------------------------------
// 5. Body media types
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_write_body_without_a_media_type_is_415() {
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_ANY}");
    let user = RECIPE_USER.to_string();
    let base = [
        ("Authorization", auth.as_str()),
        ("On-Behalf-Of", user.as_str()),
    ];
    for (method, path, body) in [
        (
            "POST",
            "/chat/Dialog.json".to_string(),
            "type=2&name=x&occupants_ids=1",
        ),
        ("POST", "/chat/Message.json".to_string(), "_method=DELETE"),
        ("PUT", update_path(), r#"{"name":"x"}"#),
        ("DELETE", update_path(), "force=1"),
        ("PATCH", "/users/1.json".to_string(), "user[login]=x"),
    ] {
        exchange(gate.addr, &head(method, &path, &base, body))
            .await
            .assert_gate_error(415, "untyped_body");
        let mut empty_type = base.to_vec();
        empty_type.push(("Content-Type", ""));
        exchange(gate.addr, &head(method, &path, &empty_type, body))
            .await
            .assert_gate_error(415, "untyped_body");
        assert_nothing_received(&gate);
    }
    // Two media types in one header: the upstream reads the first, so none is trusted.
    let mut two = base.to_vec();
    two.push((
        "Content-Type",
        "application/x-www-form-urlencoded, application/json",
    ));
    exchange(
        gate.addr,
        &head("PUT", &update_path(), &two, r#"{"name":"x"}"#),
    )
    .await
    .assert_gate_error(400, "bad_header");
    // A body the upstream cannot read as anything on a checked route: 415, as before.
    let mut other = base.to_vec();
    other.push(("Content-Type", "text/x-json"));
    let answer = exchange(
        gate.addr,
        &head("PUT", &update_path(), &other, r#"{"name":"x"}"#),
    )
    .await;
    assert_eq!(answer.status, 415, "{answer:?}");
    assert_nothing_received(&gate);
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    let gate = Gate::start("").await;
    let auth = format!("ApiKey {KEY_APP}");
    let request = format!(
        "POST /chat/Message.json HTTP/1.1\r\nHost: gate\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    );
    let mut conn = Conn::open(gate.addr).await;
    conn.write(request.as_bytes()).await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    assert_nothing_received(&gate);
}

// ---------------------------------------------------------------------------------------------
// 6. Refusals keep the connection honest
// ---------------------------------------------------------------------------------------------

/// A refusal of every kind the gateway makes, with the body in a second segment (as Python's
/// `http.client` sends it): the client either gets its next request answered on the same
/// connection, or is told `Connection: close` and the connection then closes.
#[tokio::test]
async fn no_refusal_leaves_a_keep_alive_client_writing_into_a_closed_connection() {
    let limited = "RATE-LIMITED-KEY-0001";
    let gate = Gate::start_with_keys(
        "max_body_bytes: 4096\n",
        &format!(
            "- {{ id: limited, sha256: {}, on_behalf_of: any, rate_limit: {{ per_minute: 1 }} }}\n",
            digest(limited)
        ),
    )
    .await;
    let any = format!("ApiKey {KEY_ANY}");
    let list = format!("ApiKey {KEY_LIST}");
    let limited_auth = format!("ApiKey {limited}");
    let user = RECIPE_USER.to_string();
    let outsider = OUTSIDER.to_string();
    let json = "application/json";
    // Spend the limited key's one request.
    let spent = exchange(
        gate.addr,
        &head(
            "GET",
            LIST,
            &[("Authorization", &limited_auth), ("On-Behalf-Of", &user)],
            "",
        ),
    )
    .await;
    assert_eq!(spent.status, 200);
    let name = r#"{"name":"renamed by someone"}"#;
    let big = "x".repeat(5000);
    let private = format!("/chat/Dialog/{PRIVATE_ID}.json");
    let missing = "/chat/Dialog/000000000000000000000000.json";
    let cases: Vec<(u16, &str, Vec<u8>, &str)> = vec![
        (
            401,
            "unknown_key",
            head_only(
                "PUT",
                &update_path(),
                &[("Authorization", "ApiKey nope"), ("Content-Type", json)],
                name.len(),
            ),
            name,
        ),
        (
            401,
            "missing_credentials",
            head_only(
                "POST",
                "/chat/Message.json",
                &[("Content-Type", json)],
                name.len(),
            ),
            name,
        ),
        (
            403,
            "user_not_allowed",
            head_only(
                "PUT",
                &update_path(),
                &[
                    ("Authorization", &list),
                    ("On-Behalf-Of", &outsider),
                    ("Content-Type", json),
                ],
                name.len(),
            ),
            name,
        ),
        (
            429,
            "rate_limited",
            head_only(
                "PUT",
                &update_path(),
                &[
                    ("Authorization", &limited_auth),
                    ("On-Behalf-Of", &user),
                    ("Content-Type", json),
                ],
                name.len(),
            ),
            name,
        ),
        (
            405,
            "method_not_allowed",
            head_only(
                "PROPFIND",
                LIST,
                &[("Authorization", &any), ("Content-Type", json)],
                name.len(),
            ),
            name,
        ),
        (
            400,
            "connection_header",
            head_only(
                "PUT",
                &update_path(),
                &[
                    ("Authorization", &any),
                    ("On-Behalf-Of", &user),
                    ("Content-Type", json),
                    ("Connection", "X-Other"),
                ],
                name.len(),
            ),
            name,
        ),
        (
            400,
            "header_name",
            head_only(
                "PUT",
                &update_path(),
                &[
                    ("Authorization", &any),
                    ("On_Behalf_Of", &user),
                    ("Content-Type", json),
                ],
                name.len(),
            ),
            name,
        ),
        (
            415,
            "untyped_body",
            head_only(
                "PUT",
                &update_path(),
                &[("Authorization", &any), ("On-Behalf-Of", &user)],
                name.len(),
            ),
            name,
        ),
        (
            413,
            "body_too_large",
            head_only(
                "PUT",
                &update_path(),
                &[
                    ("Authorization", &any),
                    ("On-Behalf-Of", &user),
                    ("Content-Type", json),
                ],
                big.len(),
            ),
            &big,
        ),
        (
            422,
            "dialog_name_on_private",
            head_only(
                "PUT",
                &private,
                &[
                    ("Authorization", &any),
                    ("On-Behalf-Of", &user),
                    ("Content-Type", json),
                ],
                name.len(),
            ),
            name,
        ),
        (
            404,
            "dialog_not_found",
            head_only(
                "PUT",
                missing,
                &[
                    ("Authorization", &any),
                    ("On-Behalf-Of", &user),
                    ("Content-Type", json),
                ],
                name.len(),
            ),
            name,
        ),
        (
            400,
            "method_override",
            head_only(
                "POST",
                "/chat/Message.json",
                &[
                    ("Authorization", &any),
                    ("On-Behalf-Of", &user),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ],
                14,
            ),
            "_method=DELETE",
        ),
    ];
    let next = head(
        "GET",
        LIST,
        &[("Authorization", &any), ("On-Behalf-Of", &user)],
        "",
    );
    for (status, reason, request_head, body) in cases {
        let mut conn = Conn::open(gate.addr).await;
        conn.write(&request_head).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        conn.write(body.as_bytes()).await;
        let answer = conn.answer().await;
        assert_eq!(
            (answer.status, answer.header("x-qbgate-reason")),
            (status, Some(reason)),
            "{answer:?}"
        );
        if answer.closes() {
            assert!(
                conn.closed_within(Duration::from_secs(3)).await,
                "{reason}: said close, stayed open"
            );
        } else {
            conn.write(&next).await;
            let again = conn.answer().await;
            assert_eq!(
                again.status, 200,
                "{reason}: the next request got {again:?}"
            );
        }
        // Only what a rule looked up reached the upstream.
        for r in gate.sandbox.take_received() {
            assert!(
                r.method == http::Method::GET,
                "{reason}: the upstream received {} {}",
                r.method,
                r.uri
            );
        }
    }
}

/// A refused request that asked for `100-continue` sends no body until told to: the gateway
/// neither waits for it nor keeps the connection (its next bytes would be that body), and says
/// so. Without the `Expect`, the same refusal keeps the connection (the test above).
#[tokio::test]
async fn a_refused_request_expecting_100_continue_is_told_the_connection_closes() {
    let gate = Gate::start("").await;
    for expect in ["100-continue", "100-Continue"] {
        let mut conn = Conn::open(gate.addr).await;
        conn.write(&head_only(
            "PUT",
            &update_path(),
            &[
                ("User-Agent", "expecting"),
                ("Authorization", "ApiKey nope"),
                ("Content-Type", "application/json"),
                ("Expect", expect),
            ],
            20,
        ))
        .await;
        let answer = conn.answer().await;
        answer.assert_gate_error(401, "unknown_key");
        assert!(answer.closes(), "{expect}: {answer:?}");
        assert!(
            conn.closed_within(Duration::from_secs(3)).await,
            "{expect}: said close, stayed open"
        );
    }
}

/// A request head announcing a body of `length` bytes, sent on its own.
fn head_only(method: &str, path: &str, headers: &[(&str, &str)], length: usize) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: gate\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {length}\r\n\r\n"));
    out.into_bytes()
}

/// The same, as the issue found it: Python's `http.client` (which writes a file body in a send
/// of its own, after the head) sends a refused PUT, then its next requests on the same connection. Each must
/// be answered; none may meet a connection the gateway closed without saying so.
#[tokio::test]
async fn python_http_client_keeps_writing_after_refusals() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        // The machine image CI runs on has CPython; say so rather than pass silently elsewhere.
        panic!("python3 is needed by this test");
    }
    let gate = Gate::start("").await;
    let script = format!(
        r#"
import http.client, io, json, sys, time

class Late(io.BytesIO):
    """A body that is late by 50 ms, as from a client still producing it."""
    def read(self, *args):
        time.sleep(0.05)
        return super().read(*args)

conn = http.client.HTTPConnection("127.0.0.1", {port}, timeout=5)
body = json.dumps({{"name": "renamed"}}).encode()
statuses = []
for key in ["nope", "{key_app}", "nope", "{key_app}"]:
    headers = {{"Authorization": "ApiKey " + key, "Content-Type": "application/json",
               "Content-Length": str(len(body))}}
    # A file body is written after the head, in a send of its own: a second segment.
    conn.request("PUT", "/chat/Dialog/{group}.json", body=Late(body), headers=headers)
    response = conn.getresponse()
    response.read()
    statuses.append(response.status)
conn.request("GET", "/chat/Dialog.json", headers={{"Authorization": "ApiKey {key_app}"}})
response = conn.getresponse()
response.read()
statuses.append(response.status)
print(json.dumps(statuses))
"#,
        port = gate.addr.port(),
        key_app = KEY_APP,
        group = GROUP_ID,
    );
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python failed: {stderr}");
    let statuses: Vec<u16> = serde_json::from_slice(&output.stdout).unwrap();
    // 401 for the unknown key; the application key may not rename a group it does not own
    // (a rule refusal after the body was read), and its GET passes.
    assert_eq!(statuses.len(), 5, "{statuses:?} {stderr}");
    assert_eq!(statuses[0], 401);
    assert_eq!(statuses[2], 401);
    assert_eq!(statuses[4], 200);
}
