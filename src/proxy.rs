//! The request path: named phases, in order. [`handle`] never returns an error: every failure
//! becomes the contract's JSON response, logged once in the access log.
//!
//! Phases: request id -> normalize -> authenticate -> route allowlist -> rate limit -> rules ->
//! upstream request -> forward -> response -> access log.
//! Ordering constraints: normalization precedes every decision, so no phase sees a path that could
//! be read two ways; authentication precedes the allowlist and the limiter, which are per key; the
//! rate limit precedes the rules, so a flood of checked requests cannot turn into a flood of
//! dialog lookups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::auth::{self, Principal};
use crate::error::GateError;
use crate::normalize::{self, Normalized};
use crate::upstream::{self, ProxyBody};
use crate::Runtime;

/// `X-Request-Id` values: a per-process random prefix and a counter, unique and cheap.
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut seed = [0u8; 4];
        // A fixed prefix only makes ids of two processes collide: never a reason to fail.
        let _ = getrandom::fill(&mut seed);
        RequestIds {
            prefix: u32::from_le_bytes(seed),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:08x}{:012x}", self.prefix, n);
        HeaderValue::try_from(id).unwrap_or(HeaderValue::from_static("0"))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// What the access log line says about one request.
struct Access {
    key: Option<Arc<str>>,
    user: Option<u64>,
    reason: &'static str,
    upstream_status: Option<u16>,
    upstream_ms: Option<f64>,
}

/// Serve one request through every phase.
pub async fn handle(
    runtime: Arc<Runtime>,
    ids: &RequestIds,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let request_id = match request.headers().get("x-request-id") {
        Some(id) if upstream::valid_request_id(id) => id.clone(),
        _ => ids.next(),
    };
    let mut access = Access {
        key: None,
        user: None,
        reason: "",
        upstream_status: None,
        upstream_ms: None,
    };
    let mut response = match phases(&runtime, request, &request_id, &mut access).await {
        Ok(response) => response,
        Err(error) => {
            access.reason = error.reason();
            error.to_response()
        }
    };
    response
        .headers_mut()
        .insert("x-request-id", request_id.clone());
    tracing::info!(
        target: "qbgate::access",
        request_id = request_id.to_str().unwrap_or_default(),
        key = access.key.as_deref().unwrap_or("-"),
        user = access.user,
        method = method.as_str(),
        path = path.as_str(),
        status = response.status().as_u16(),
        reason = access.reason,
        upstream_status = access.upstream_status,
        total_ms = started.elapsed().as_secs_f64() * 1000.0,
        upstream_ms = access.upstream_ms,
    );
    response
}

async fn phases(
    runtime: &Runtime,
    request: Request<Incoming>,
    request_id: &HeaderValue,
    access: &mut Access,
) -> Result<Response<ResponseBody>, GateError> {
    let policy = &runtime.policy;
    let (mut parts, body) = request.into_parts();
    let normalized = normalize::normalize(parts.uri.path(), parts.uri.query(), &parts.headers)?;
    let principal = auth::authenticate(policy, &parts.headers, SystemTime::now())?;
    access.key = Some(principal.key_id.clone());
    access.user = principal.user;
    allow_route(runtime, &principal, &parts.method, &normalized)?;

    if let Some(length) = content_length(&parts.headers)? {
        if length > policy.max_body_bytes {
            return Err(GateError::BodyTooLarge);
        }
    }
    let body = if needs_inspection(&parts.method, &parts.headers) {
        let bytes = read_body(body, policy.max_body_bytes, policy.client.body_timeout).await?;
        check_method_override(&parts.headers, &bytes)?;
        ProxyBody::full(bytes)
    } else {
        ProxyBody::stream(body, policy.max_body_bytes, policy.client.body_timeout)
    };

    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = upstream::prepare(&policy.upstream, path_and_query, &mut parts.headers)?;
    parts.headers.insert("x-request-id", request_id.clone());
    let mut outgoing = Request::new(body);
    *outgoing.method_mut() = parts.method;
    *outgoing.uri_mut() = uri;
    *outgoing.headers_mut() = parts.headers;

    let sent = Instant::now();
    let response = upstream::send(&runtime.client, policy.upstream.timeout, outgoing).await;
    access.upstream_ms = Some(sent.elapsed().as_secs_f64() * 1000.0);
    let response = response?;
    access.upstream_status = Some(response.status().as_u16());
    let (mut parts, body) = response.into_parts();
    upstream::strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, ResponseBody::upstream(body)))
}

/// Route allowlist phase: short-circuits with 403 when the key lists routes and none matches.
fn allow_route(
    runtime: &Runtime,
    principal: &Principal,
    method: &Method,
    normalized: &Normalized,
) -> Result<(), GateError> {
    let Some(index) = principal.key else {
        return Ok(());
    };
    let Some(routes) = runtime
        .policy
        .keys
        .get(index as usize)
        .and_then(|k| k.routes.as_ref())
    else {
        return Ok(());
    };
    if routes.iter().any(|r| r.matches(method, &normalized.route)) {
        Ok(())
    } else {
        Err(GateError::RouteNotAllowed)
    }
}

/// A form POST is read whole: Rails honours `_method` in it, which would turn it into another
/// method after the gateway judged it.
fn needs_inspection(method: &Method, headers: &http::HeaderMap) -> bool {
    *method == Method::POST
        && media_type(headers).is_some_and(|t| {
            t.starts_with("application/x-www-form-urlencoded") || t.starts_with("multipart/")
        })
}

/// Lowercased media type of the request, without parameters.
pub fn media_type(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
    )
}

fn check_method_override(headers: &http::HeaderMap, body: &[u8]) -> Result<(), GateError> {
    let Some(media) = media_type(headers) else {
        return Ok(());
    };
    if media == "application/x-www-form-urlencoded" {
        for (key, _) in form_urlencoded::parse(body) {
            if key
                .split('[')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("_method")
            {
                return Err(GateError::MethodOverride);
            }
        }
    } else if media.starts_with("multipart/") {
        let lower = body.to_ascii_lowercase();
        if lower.windows(14).any(|w| w == b"name=\"_method\"") {
            return Err(GateError::MethodOverride);
        }
    }
    Ok(())
}

/// `Content-Length`, if present; a malformed one is refused.
fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, GateError> {
    let Some(value) = headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or(GateError::BadHeader("Content-Length is malformed"))
}

/// Read a whole body within `limit` bytes and `timeout`.
pub async fn read_body(
    body: Incoming,
    limit: u64,
    timeout: std::time::Duration,
) -> Result<Bytes, GateError> {
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(GateError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(GateError::BodyTooLarge),
        Ok(Err(_)) => Err(GateError::BadBody),
    }
}

/// What the gateway answers with: the upstream's body streamed through, or its own bytes.
pub struct ResponseBody(RespInner);

enum RespInner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn upstream(body: Incoming) -> Self {
        ResponseBody(RespInner::Upstream(body))
    }
}

impl From<Bytes> for ResponseBody {
    fn from(bytes: Bytes) -> Self {
        ResponseBody(RespInner::Full(Some(bytes)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            RespInner::Upstream(body) => std::pin::Pin::new(body).poll_frame(cx),
            RespInner::Full(bytes) => {
                std::task::Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            RespInner::Upstream(body) => body.is_end_stream(),
            RespInner::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            RespInner::Upstream(body) => body.size_hint(),
            RespInner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A response the gateway makes itself (admin endpoints, demo).
pub fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::from(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
