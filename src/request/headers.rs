//! The header set a request is judged and forwarded with, made before any decision.
//!
//! Hop-by-hop headers, and those `Connection` names, describe one hop: they are removed here,
//! before authentication reads a credential, never after (a proxy that judges `On-Behalf-Of` and
//! then drops it because `Connection` named it sends the upstream a request with no user).
//! Refused instead of repaired, each a 400:
//! - a `Connection` token other than `close`, `keep-alive`, `upgrade`, `te`, `http2-settings`:
//!   naming an end-to-end header there asks the gateway to drop something it may have judged;
//! - a header name with `_`: the upstream's CGI-style environment folds `_` and `-` into one
//!   name (`On_Behalf_Of` and `On-Behalf-Of` are both `HTTP_ON_BEHALF_OF`), so which copy the
//!   application reads is the server's choice, not ours;
//! - a second copy of a header a decision reads (credentials, the user, the body's type and
//!   coding): the upstream joins copies with `, ` or picks one;
//! - a method-override header, in any spelling a framework honours: it would run another method
//!   than the one judged;
//! - a `Transfer-Encoding` other than `chunked`: a coding the gateway does not undo would reach
//!   the upstream as body bytes the gateway never read as such.

use http::header::{self, HeaderMap, HeaderName};
use smallvec::SmallVec;

use crate::error::GateError;

/// Headers that ask a framework to treat the request as another method.
static OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Headers some decision reads: at most one copy each.
static DECIDING: [HeaderName; 5] = [
    header::AUTHORIZATION,
    HeaderName::from_static("qb-token"),
    HeaderName::from_static("on-behalf-of"),
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
];

/// One of the hop-by-hop headers (RFC 9110 section 7.6.1, plus `proxy-connection` and HTTP/2's
/// `http2-settings`), or a framing or routing field that the next hop writes itself (`host`,
/// `content-length`, `transfer-encoding`)? Names arrive lower-case; the length rules out nearly
/// every other name before a byte is compared.
fn is_dropped(name: &str) -> bool {
    match name.len() {
        2 => name == "te",
        4 => name == "host",
        7 => name == "trailer" || name == "upgrade",
        10 => name == "connection" || name == "keep-alive",
        14 => name == "content-length" || name == "http2-settings",
        16 => name == "proxy-connection",
        17 => name == "transfer-encoding",
        18 => name == "proxy-authenticate",
        19 => name == "proxy-authorization",
        _ => false,
    }
}

/// Check the request's headers and remove the ones that end at this hop. One pass over the
/// names in the common case; a name with `_` is refused on the way.
pub fn canonical(headers: &mut HeaderMap) -> Result<(), GateError> {
    let mut dropped = 0usize;
    for name in headers.keys() {
        let name = name.as_str();
        if name.as_bytes().contains(&b'_') {
            return Err(GateError::HeaderUnderscore);
        }
        if is_dropped(name) {
            dropped += 1;
        }
    }
    if OVERRIDE_HEADERS.iter().any(|h| headers.contains_key(h)) {
        return Err(GateError::MethodOverride);
    }
    for name in &DECIDING {
        let mut values = headers.get_all(name).iter();
        if values.next().is_some() && values.next().is_some() {
            return Err(GateError::RepeatedHeader(name.as_str()));
        }
    }
    if dropped == 0 {
        return Ok(());
    }
    for value in headers.get_all(header::CONNECTION) {
        let value = value.to_str().map_err(|_| GateError::ConnectionHeader)?;
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !["close", "keep-alive", "upgrade", "te", "http2-settings"]
                .iter()
                .any(|allowed| token.eq_ignore_ascii_case(allowed))
            {
                return Err(GateError::ConnectionHeader);
            }
        }
    }
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        if !value.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(GateError::BadHeader(
                "Transfer-Encoding other than chunked is not accepted",
            ));
        }
    }
    // Standard names: cloned without allocating.
    let doomed: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| is_dropped(name.as_str()))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
    fn hop_by_hop_and_framing_headers_are_removed_before_any_decision() {
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
        assert_eq!(names(&headers), ["content-type", "on-behalf-of", "x-kept"]);
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
        ] {
            assert_eq!(
                canonical(&mut map(pairs)),
                Err(GateError::HeaderUnderscore),
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
            "host",
            "trailer",
            "upgrade",
            "connection",
            "keep-alive",
            "content-length",
            "http2-settings",
            "proxy-connection",
            "transfer-encoding",
            "proxy-authenticate",
            "proxy-authorization",
        ] {
            assert!(is_dropped(name), "{name}");
        }
        for name in [
            "content-type",
            "x-request-id",
            "t",
            "tex",
            "connections",
            "hosts",
        ] {
            assert!(!is_dropped(name), "{name}");
        }
    }
}
