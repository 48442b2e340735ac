//! The pooled rustls client, header rewriting and timeouts on the way to the upstream.
//!
//! Retries: the pool (`upstream/pool.rs`) re-sends a request whose pooled connection turned out
//! to be closed before the request was written. Beyond that, only bodiless GET, HEAD and OPTIONS
//! are retried once: a PUT, POST or DELETE may have reached the upstream, and the dialog rules
//! judged it against a dialog that the first attempt may already have changed.

mod deadline;
mod h1;
mod pool;

pub use deadline::{nanos as deadline_nanos, Watch};

#[doc(hidden)]
pub use h1::decode as decode_h1_answer;
pub use pool::UpstreamBody;

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use http_body::Body;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::error::GateError;
use crate::policy;
use crate::request::Forward;

pub use crate::request::body::{BodyError, BoxError, ProxyBody};

/// The pooled client to the upstream origin.
pub type HttpClient = Arc<pool::Pool>;

/// Build the client for an upstream: webpki roots plus the optional extra CA file, HTTP/1.1 and
/// HTTP/2 by ALPN, `connect_timeout` on the TCP connect.
pub fn client(upstream: &policy::Upstream) -> Result<HttpClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &upstream.extra_ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no certificate found", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(upstream.connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Arc::new(pool::Pool::new(
        https,
        upstream.scheme.clone(),
        upstream.origin.clone(),
    )?))
}

/// Whether `client` can serve `upstream` as it is (a reload keeps the pool when it can).
pub fn serves(client: &HttpClient, upstream: &policy::Upstream) -> bool {
    client.serves(&upstream.scheme, &upstream.origin)
}

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1), plus
/// `Transfer-Encoding`, which the next hop's framing decides.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

/// One of [`HOP_BY_HOP`]? Names arrive lower-case; the length rules out nearly every other name
/// before a byte is compared.
fn is_hop_by_hop(name: &str) -> bool {
    match name.len() {
        2 => name == "te",
        7 => name == "trailer" || name == "upgrade",
        10 => name == "connection" || name == "keep-alive",
        16 => name == "proxy-connection",
        17 => name == "transfer-encoding",
        18 => name == "proxy-authenticate",
        19 => name == "proxy-authorization",
        _ => false,
    }
}

/// Remove hop-by-hop headers and every header named in `Connection`.
///
/// One pass over the names finds what is there; only those are removed. Most requests carry
/// none; most responses carry only `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str()))
        .cloned()
        .collect();
    if doomed.is_empty() {
        return;
    }
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim) {
            // `keep-alive` and `close` are the usual tokens: nothing more to remove for them.
            if token.eq_ignore_ascii_case("close")
                || token.eq_ignore_ascii_case("keep-alive")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(token))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                doomed.push(name);
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Send a request as it was judged ([`Forward`]), with the upstream timeout on the response head,
/// one retry for bodiless idempotent requests, and errors mapped to 502/504 (413/408 for our own
/// body limits). The request is lent: afterwards its body tells how much of it went out.
///
/// `sent` is the caller's clock reading, taken just before: the timeout counts from it. With a
/// `watch` (a request on an HTTP/1.1 client connection) the timeout is the connection sweep's
/// (`upstream/deadline.rs`); without, a timer's.
pub async fn send(
    client: &HttpClient,
    timeout: Duration,
    watch: Option<&Watch>,
    sent: Instant,
    forward: &mut Forward,
) -> Result<Response<UpstreamBody>, GateError> {
    let request = forward.request_mut();
    // The request's version is the client's and is not looked at: the pool speaks whatever the
    // upstream connection speaks.
    let retry = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) && request.body().is_end_stream();
    match attempt(client, timeout, watch, sent, request).await {
        // The pool lends the request out, so the same one can go again.
        Err(e) if e != GateError::UpstreamTimeout && retry => {
            tracing::debug!(error = e.reason(), "retrying an idempotent request once");
            attempt(client, timeout, watch, Instant::now(), request).await
        }
        other => other,
    }
}

async fn attempt(
    client: &HttpClient,
    timeout: Duration,
    watch: Option<&Watch>,
    sent: Instant,
    request: &mut Request<ProxyBody>,
) -> Result<Response<UpstreamBody>, GateError> {
    let sending = client.send(request, sent);
    let answered = match watch {
        Some(watch) => watch.within(sent, timeout, sending).await,
        None => tokio::time::timeout(timeout, sending).await.ok(),
    };
    match answered {
        None => Err(GateError::UpstreamTimeout),
        Some(Ok(response)) => Ok(response),
        Some(Err(e)) => Err(classify(&e)),
    }
}

fn classify(error: &pool::Error) -> GateError {
    if let pool::Error::Connect(_) = error {
        return GateError::UpstreamUnreachable;
    }
    let mut source: Option<&(dyn StdError + 'static)> = error.source();
    while let Some(e) = source {
        if let Some(body) = e.downcast_ref::<BodyError>() {
            return match body {
                BodyError::TooLarge => GateError::BodyTooLarge,
                BodyError::Timeout => GateError::BodyTimeout,
                BodyError::Client => GateError::BadBody,
            };
        }
        source = e.source();
    }
    GateError::UpstreamFailed
}

/// Mark a header value as `X-Request-Id`-safe: visible ASCII, at most 128 bytes.
pub fn valid_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_removed() {
        let mut headers = map(&[
            ("content-type", "application/json"),
            ("connection", "close, X-Private"),
            ("connection", "x-other"),
            ("x-private", "1"),
            ("x-other", "2"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn the_quick_name_test_agrees_with_the_list() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name.as_str()), "{name}");
        }
        for name in [
            "host",
            "content-type",
            "x-request-id",
            "t",
            "tex",
            "connections",
        ] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn a_head_without_hop_by_hop_headers_is_left_as_it_is() {
        let pairs = [
            ("content-type", "application/json"),
            ("x-a", "1"),
            ("x-a", "2"),
        ];
        let mut headers = map(&pairs);
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers, map(&pairs));
    }
}
