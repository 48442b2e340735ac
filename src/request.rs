//! The canonical request: read once, into one value, from which every phase after normalize
//! decides and which the upstream phase writes verbatim.
//!
//! [`normalize`] takes hyper's request head and either refuses it (a request the upstream could
//! read otherwise than the gateway does) or makes a [`Canonical`]. Later phases see only that
//! value; the upstream client takes only a [`Forward`], which only [`Canonical::forward`] makes,
//! and which changes exactly two things, visibly: the caller's credential is swapped for the
//! upstream key, and `X-Request-Id` is set.
//!
//! # Lifecycle of a `Canonical`
//! | field | made by | read by | changed by |
//! |---|---|---|---|
//! | `method` | [`normalize`]: one of GET HEAD POST PUT PATCH DELETE OPTIONS, else 405 | allowlist, rules, forward | nobody |
//! | `path` | [`path::CanonicalPath::parse`]: decoded once; ambiguity, non-ASCII and `;` refused | allowlist, rules, metrics, forward (the matched path is the one sent) | nobody |
//! | query | kept raw in `path`; a `_method` key refused, a `token` key noted ([`Canonical::query_names_token`]) | rules (parameters), forward (as received) | nobody |
//! | `headers` | [`headers::canonical`]: hop-by-hop and `Connection`-named fields removed (`Host` and `Content-Length` are left for the upstream client, which writes its own); names other than `[a-z0-9-]`, repeated deciding headers, override headers refused | authenticate, rules, lookups (credentials), forward | [`Canonical::forward`]: `Authorization` swapped, `X-Request-Id` set |
//! | `media` | [`body::Media::read`]: the one `Content-Type`, read as the upstream reads it | body phase, rules | nobody |
//! | `body` | the body phase: streamed with its limits, or read whole (rules, `_method` check) | rules, forward | nobody once set |

pub mod body;
pub mod headers;
pub mod path;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Uri};

use crate::error::GateError;

pub use body::{Media, MediaKind, ProxyBody};
pub use path::CanonicalPath;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The one request every phase after normalize reads.
pub struct Canonical {
    method: Method,
    path: CanonicalPath,
    headers: HeaderMap,
    media: Option<Media>,
    body: ProxyBody,
    /// The query names a top-level `token` parameter in some spelling Rack reads.
    query_token: bool,
}

/// Check a request head and build its canonical form; `body_empty` tells whether the request
/// carries no body (an untyped write with a body is refused).
///
/// Short-circuits with 400 (ambiguous path, query or headers, method override), 405 (a method
/// the gateway does not forward) or 415 (a write body with no media type).
pub fn normalize(
    parts: &mut http::request::Parts,
    body_empty: bool,
) -> Result<Canonical, GateError> {
    let method = match parts.method {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::PATCH
        | Method::DELETE
        | Method::OPTIONS => parts.method.clone(),
        _ => return Err(GateError::MethodNotAllowed),
    };
    let raw = parts
        .uri
        .path_and_query()
        .ok_or(GateError::BadPath("the request has no path"))?;
    let path = CanonicalPath::parse(raw)?;
    let query_token = match path.query() {
        Some(query) => query_keys(query)?,
        None => false,
    };
    let mut headers = std::mem::take(&mut parts.headers);
    let seen = headers::canonical(&mut headers)?;
    let media = if seen.content_type {
        Media::read(&headers)?
    } else {
        None
    };
    if media.is_none() && !body_empty && body::is_write(&method) {
        return Err(GateError::UntypedBody);
    }
    Ok(Canonical {
        method,
        path,
        headers,
        media,
        body: ProxyBody::empty(),
        query_token,
    })
}

/// Method and route only: the headers carry credentials, which no log or panic may show.
impl std::fmt::Debug for Canonical {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canonical")
            .field("method", &self.method)
            .field("route", &self.path.route_key())
            .finish_non_exhaustive()
    }
}

/// Refuse a query whose key could name `_method` (Rack splits on `&` and `;`); tell whether one
/// could name `token`, in the same pass.
fn query_keys(query: &str) -> Result<bool, GateError> {
    let mut token = false;
    for pair in query.split(['&', ';']) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        let key = body::unescape(key.as_bytes())?;
        if body::names_method(&key) {
            return Err(GateError::MethodOverride);
        }
        token = token || body::names_key(&key, b"token");
    }
    Ok(token)
}

impl Canonical {
    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn path(&self) -> &CanonicalPath {
        &self.path
    }

    /// The query as received, still percent-encoded.
    pub fn query(&self) -> Option<&str> {
        self.path.query()
    }

    /// The header set that is judged and forwarded.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    pub fn media(&self) -> Option<&Media> {
        self.media.as_ref()
    }

    /// Set the body that will be forwarded: the stream with its limits, or the bytes that were
    /// read and judged.
    pub fn set_body(&mut self, body: ProxyBody) {
        self.body = body;
    }

    /// Does the query name a top-level `token` parameter, in any spelling Rack reads (the
    /// rules refuse it on an ApiKey request: QuickBlox reads it as a session)?
    pub fn query_names_token(&self) -> bool {
        self.query_token
    }

    /// A streamed body's count of bytes passed (for the access log).
    pub fn body_counter(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicU64>> {
        self.body.counter()
    }

    /// The body's bytes, when it was read whole.
    pub fn body_bytes(&self) -> Option<&Bytes> {
        self.body.full_bytes()
    }

    /// The request for the upstream: this one, with the caller's credential replaced by
    /// `authorization` (when the gateway holds the upstream key) and `X-Request-Id` set. The
    /// path is the canonical one, under the upstream URL's `base_path`.
    pub fn forward(
        self,
        base_path: &str,
        authorization: Option<&HeaderValue>,
        request_id: &HeaderValue,
    ) -> Forward {
        let Canonical {
            method,
            path,
            mut headers,
            body,
            ..
        } = self;
        if let Some(authorization) = authorization {
            // One lookup; the header phase let at most one through.
            if let header::Entry::Occupied(mut entry) = headers.entry(header::AUTHORIZATION) {
                entry.insert(authorization.clone());
            }
        }
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());
        let mut uri = http::uri::Parts::default();
        uri.path_and_query = Some(path.forwarded(base_path));
        let mut request = Request::new(body);
        *request.method_mut() = method;
        // A path and query alone always make a URI.
        *request.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
        *request.headers_mut() = headers;
        Forward(request)
    }
}

/// A request ready for the upstream, made only by [`Canonical::forward`]: the upstream client
/// takes nothing else.
pub struct Forward(Request<ProxyBody>);

impl Forward {
    /// The request, lent to the upstream client.
    pub fn request(&self) -> &Request<ProxyBody> {
        &self.0
    }

    /// The request, lent to the upstream client to send (and send again after a failure that
    /// left it unsent).
    pub(crate) fn request_mut(&mut self) -> &mut Request<ProxyBody> {
        &mut self.0
    }
}

/// What the gateway judged, for one request it forwards: handed to an observer installed with
/// [`crate::Gateway::observe`] (the differential test against the upstream's stack does so).
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The `X-Request-Id` the upstream receives.
    pub request_id: String,
    /// The method judged and written upstream.
    pub method: Method,
    /// The path written upstream (origin form, no query).
    pub path: String,
    /// The query written upstream.
    pub query: Option<String>,
    /// The route key the allowlist and rules matched.
    pub route: String,
    /// The `On-Behalf-Of` user the request was judged for.
    pub user: Option<u64>,
    /// The parameter document the rules judged (query merged with body), when they read one.
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Called with every [`Judged`] request before it is sent.
pub type Observer = std::sync::Arc<dyn Fn(&Judged) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_the_known_methods_pass() {
        for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            assert!(
                normalize(&mut head(method, "/a", &[]), true).is_ok(),
                "{method}"
            );
        }
        for method in ["TRACE", "CONNECT", "PROPFIND", "get", "MOVE"] {
            assert_eq!(
                normalize(&mut head(method, "/a", &[]), true).unwrap_err(),
                GateError::MethodNotAllowed,
                "{method}"
            );
        }
    }

    #[test]
    fn query_keys_naming_method_are_refused() {
        for q in [
            "_method=PUT",
            "a=1&%5Fmethod=PUT",
            "_METHOD=put",
            "_method[x]=1",
            "a=1;_method=PUT",
            "[_method]=1",
        ] {
            assert_eq!(
                normalize(&mut head("GET", &format!("/a?{q}"), &[]), true).unwrap_err(),
                GateError::MethodOverride,
                "{q}"
            );
        }
        assert!(normalize(&mut head("GET", "/a?method=1&x_method=2", &[]), true).is_ok());
    }

    #[test]
    fn a_write_body_needs_a_media_type() {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            assert_eq!(
                normalize(&mut head(method, "/a", &[]), false).unwrap_err(),
                GateError::UntypedBody,
                "{method}"
            );
            assert!(normalize(&mut head(method, "/a", &[]), true).is_ok());
            let typed = [("content-type", "application/json")];
            assert!(normalize(&mut head(method, "/a", &typed), false).is_ok());
        }
        assert!(normalize(&mut head("GET", "/a", &[]), false).is_ok());
    }

    #[test]
    fn forward_swaps_the_key_sets_the_id_and_sends_the_matched_path() {
        let mut parts = head(
            "PUT",
            "/chat/%44ialog/5d75.json?x=1",
            &[
                ("authorization", "ApiKey scoped"),
                ("on-behalf-of", "101"),
                ("connection", "keep-alive"),
                ("x-request-id", "theirs"),
            ],
        );
        let canonical = normalize(&mut parts, true).unwrap();
        let upstream_key = HeaderValue::from_static("ApiKey real");
        let forward = canonical.forward(
            "/v2",
            Some(&upstream_key),
            &HeaderValue::from_static("ours"),
        );
        let request = forward.request();
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri(), "/v2/chat/Dialog/5d75.json?x=1");
        let mut names: Vec<&str> = request.headers().keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["authorization", "on-behalf-of", "x-request-id"]);
        assert_eq!(request.headers()["authorization"], "ApiKey real");
        assert_eq!(request.headers()["x-request-id"], "ours");
        assert_eq!(request.headers()["on-behalf-of"], "101");
    }
}
