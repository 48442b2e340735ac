//! Tests of `headers`.

use super::*;
use http::HeaderValue;

fn map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

fn names(headers: &HeaderMap) -> Vec<&str> {
    let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    left.sort_unstable();
    left
}

#[test]
fn hop_by_hop_headers_are_removed_before_any_decision() {
    let mut headers = map(&[
        ("host", "gate"),
        ("content-type", "application/json"),
        ("content-length", "2"),
        ("connection", "close, TE"),
        ("connection", "upgrade"),
        ("keep-alive", "timeout=5"),
        ("transfer-encoding", "chunked"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAA"),
        ("proxy-authorization", "Basic x"),
        ("on-behalf-of", "101"),
        ("x-kept", "3"),
    ]);
    canonical(&mut headers).unwrap();
    // Host and Content-Length stay for the upstream client to skip: it writes its own.
    assert_eq!(
        names(&headers),
        [
            "content-length",
            "content-type",
            "host",
            "on-behalf-of",
            "x-kept"
        ]
    );
}

#[test]
fn connection_may_name_only_hop_by_hop_tokens() {
    for named in [
        "On-Behalf-Of",
        "close, On-Behalf-Of",
        "content-type",
        "Authorization",
        "QB-Token",
        "Host",
        "Content-Length",
        "x-request-id",
        "x-anything",
        "close,,accept",
    ] {
        let mut headers = map(&[("connection", named), ("on-behalf-of", "101")]);
        assert_eq!(
            canonical(&mut headers),
            Err(GateError::ConnectionHeader),
            "{named}"
        );
    }
    let mut fine = map(&[(
        "connection",
        "Keep-Alive, close , te,Upgrade, HTTP2-Settings",
    )]);
    assert!(canonical(&mut fine).is_ok());
}

#[test]
fn names_with_underscores_and_override_headers_are_refused() {
    for pairs in [
        &[("on_behalf_of", "999"), ("on-behalf-of", "101")][..],
        &[("x_http_method_override", "PUT")],
        &[("content_type", "text/plain")],
        &[("x-any_thing", "1")],
        &[("on.behalf.of", "999"), ("on-behalf-of", "101")],
        &[("x~y", "1")],
    ] {
        assert_eq!(
            canonical(&mut map(pairs)),
            Err(GateError::BadHeaderName),
            "{pairs:?}"
        );
    }
    for name in [
        "x-http-method-override",
        "X-HTTP-Method",
        "x-method-override",
    ] {
        assert_eq!(
            canonical(&mut map(&[(name, "DELETE")])),
            Err(GateError::MethodOverride),
            "{name}"
        );
    }
}

#[test]
fn a_header_a_decision_reads_comes_once() {
    for name in [
        "authorization",
        "qb-token",
        "on-behalf-of",
        "content-type",
        "content-encoding",
    ] {
        let mut headers = map(&[(name, "a"), (name, "a")]);
        assert!(
            matches!(canonical(&mut headers), Err(GateError::RepeatedHeader(_))),
            "{name}"
        );
    }
    // Other headers may repeat, and go on as they came.
    let mut headers = map(&[("accept", "a"), ("accept", "b")]);
    canonical(&mut headers).unwrap();
    assert_eq!(headers.get_all("accept").iter().count(), 2);
}

#[test]
fn only_chunked_transfer_coding_is_taken() {
    for coding in ["gzip, chunked", "identity", "chunked, chunked"] {
        let mut headers = map(&[("transfer-encoding", coding)]);
        assert!(canonical(&mut headers).is_err(), "{coding}");
    }
}

#[test]
fn the_quick_name_test_agrees_with_the_list() {
    for name in [
        "te",
        "trailer",
        "upgrade",
        "connection",
        "keep-alive",
        "http2-settings",
        "proxy-connection",
        "transfer-encoding",
        "proxy-authenticate",
        "proxy-authorization",
    ] {
        assert_eq!(kind(name), Kind::Dropped, "{name}");
    }
    for name in [
        "x-request-id",
        "t",
        "tex",
        "connections",
        "host",
        "content-length",
        "accept",
    ] {
        assert_eq!(kind(name), Kind::Plain, "{name}");
    }
    let mut bits = 0u8;
    for name in [
        "qb-token",
        "on-behalf-of",
        "content-type",
        "authorization",
        "content-encoding",
    ] {
        let Kind::Deciding(bit) = kind(name) else {
            panic!("{name} is not deciding");
        };
        assert_eq!(bits & bit, 0, "{name} shares a bit");
        assert!(repeated(bit).eq_ignore_ascii_case(name));
        bits |= bit;
    }
}
