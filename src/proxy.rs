//! The request path: named phases, in order. [`handle`] never returns an error: every failure
//! becomes the contract's JSON response, logged once in the access log.
//!
//! Phases: request id -> trace context ([`crate::trace`]: `traceparent` kept or started, the
//! upstream's written) -> normalize (the [`Canonical`] request: hop-by-hop headers removed,
//! anything that could be read two ways refused) -> authenticate -> route allowlist -> endpoint
//! catalog (API keys: `route_unknown`, `need_user`; `proxy/catalog.rs`) -> rate
//! limit -> the query's `token` check (API keys) -> body (streamed, or read whole when a rule or
//! the `_method` check needs it) -> rules (dialog changes; writes under `/users` on an API key;
//! chat messages on an API key; push events and subscriptions on an API key; writes to one blob on an API key)
//! -> forward (the [`Canonical`] written as it was judged) -> response -> access log (and the
//! request's span), when the answer's body is done ([`Logged`]).
//! Ordering constraints: normalization precedes every decision, so no phase sees a path that could
//! be read two ways; authentication precedes the allowlist and the limiter, which are per key; the
//! rate limit precedes the rules, so a flood of checked requests cannot turn into a flood of
//! dialog lookups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::auth::{self, Principal};
use crate::error::GateError;
use crate::policy::RuleMode;
use crate::ratelimit::Decision;
use crate::request::{self, Canonical, Judged, Observer};
use crate::upstream::{self, UpstreamBody};

mod access;
mod catalog;
mod clock;
mod judge;
pub mod lookup;
mod runtime;

pub use access::Logged;
pub use runtime::Runtime;

use access::Access;
use judge::Checked;

// Header names made once: a lookup or insert by `&str` parses and hashes the name every time.
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static WOULD_REJECT: HeaderName = HeaderName::from_static("x-qbgate-would-reject");

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

    /// `{prefix:08x}{counter:012x}`, hex-encoded by hand (no `fmt` per request): the prefix's
    /// 4 bytes and the counter's low 6, a byte's two digits at a time.
    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 10];
        bytes[..4].copy_from_slice(&self.prefix.to_be_bytes());
        bytes[4..].copy_from_slice(&n.to_be_bytes()[2..]);
        let mut id = [0u8; 20];
        crate::trace::hex_bytes(&mut id, &bytes);
        HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0"))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// The fields [`handle`] reads of the request as it came, found in one pass over its headers:
/// a name comparison per field, where a lookup per name would hash it (five names, and most
/// requests carry none of them).
struct Seen<'a> {
    /// The first `User-Agent`, as `HeaderMap::get` would answer.
    user_agent: Option<&'a HeaderValue>,
    expect: bool,
    /// The first `X-Request-Id`.
    request_id: Option<&'a HeaderValue>,
    trace: crate::trace::Seen<'a>,
}

impl<'a> Seen<'a> {
    fn of(headers: &'a http::HeaderMap) -> Self {
        let mut seen = Seen {
            user_agent: None,
            expect: false,
            request_id: None,
            trace: crate::trace::Seen::default(),
        };
        // Every field, repeated names included; a name's first value comes first.
        for (name, value) in headers {
            if *name == header::USER_AGENT {
                seen.user_agent.get_or_insert(value);
            } else if *name == header::EXPECT {
                seen.expect = true;
            } else if *name == X_REQUEST_ID {
                seen.request_id.get_or_insert(value);
            } else {
                seen.trace.note(name, value);
            }
        }
        seen
    }
}

/// Serve one request through every phase. `observer` (tests) sees what was judged for every
/// request that is forwarded. `watch`: the client connection's upstream deadline, when the
/// connection's sweep times the upstream wait (HTTP/1.1; `upstream/deadline.rs`).
///
/// Clock reads: one when the request starts (the wall clock for the key's expiry is derived
/// from it, `proxy/clock.rs`), one before and one after the upstream (its deadline and the
/// pool's idle times come from the first; the memory rate limiter reads the start), one when
/// the answer's body is done (its access line, the line's timestamp and the duration metrics).
pub async fn handle(
    runtime: Arc<Runtime>,
    ids: &RequestIds,
    observer: Option<&Observer>,
    watch: Option<&upstream::Watch>,
    request: Request<Incoming>,
) -> Response<Logged<ResponseBody>> {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let method = parts.method.clone();
    let version = parts.version;
    let seen = Seen::of(&parts.headers);
    // A clone shares the header's bytes with the request head.
    let user_agent = seen.user_agent.cloned();
    let expects_continue = seen.expect;
    let request_id = match seen.request_id {
        Some(id) if upstream::valid_request_id(id) => id.clone(),
        _ => ids.next(),
    };
    let incoming_trace = seen.trace.read();
    // Trace context: read the caller's, write the upstream's, before normalization copies the
    // headers into the canonical request.
    let tracer = &runtime.tracer;
    let trace = tracer.propagate.then(|| {
        crate::trace::Context::write(&mut parts.headers, incoming_trace, tracer.exporting())
    });
    let export = trace
        .as_ref()
        .and_then(|t| tracer.exporter_for(t))
        .map(|exporter| (exporter.clone(), clock::wall(started)));
    let mut access = Access::new(body.is_end_stream());
    let mut body = Some(body);
    let phases = phases(
        &runtime,
        parts,
        &mut body,
        (&request_id, started, watch),
        observer,
        &mut access,
    );
    let log = crate::access_log::Request {
        request_id: request_id.clone(),
        trace_id: trace.as_ref().map(crate::trace::Context::trace_id),
    };
    let mut response = match crate::access_log::scope(log, phases).await {
        Ok(response) => response,
        Err(error) => {
            access.reason = error.reason();
            error.to_response()
        }
    };
    if !access.body_done && version < http::Version::HTTP_2 {
        // The request's body was not read to its end: hyper cannot keep a connection whose
        // next request would start somewhere inside it. Read the rest on the side when it is
        // small and announced, or say that the connection closes, so that no client writes its
        // next request into a socket about to be closed.
        match body.take() {
            Some(rest) if !expects_continue && access.reason != "body_too_large" => {
                let policy = &runtime.policy;
                if !discard(rest, policy.max_body_bytes, policy.client.body_timeout) {
                    close_after(&mut response);
                }
            }
            _ => close_after(&mut response),
        }
    }
    let headers = response.headers_mut();
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some(info) = &access.rate {
        headers.insert(RATELIMIT_POLICY.clone(), info.policy_header());
        headers.insert(RATELIMIT.clone(), info.ratelimit_header());
    }
    let status = response.status().as_u16();
    response.map(|body| {
        Logged::new(
            body,
            access::Entry {
                started,
                request_id,
                trace,
                export,
                method,
                version,
                user_agent,
                status,
                access,
            },
        )
    })
}

/// Read and drop the rest of a refused request's body on the side, when its length is announced
/// and within `limit`; the connection is kept if it all arrives within `timeout` (as nginx
/// discards a body). `false`: not taken on, the caller closes the connection instead.
fn discard(body: Incoming, limit: u64, timeout: std::time::Duration) -> bool {
    if body.size_hint().exact().is_none_or(|n| n > limit) {
        return false;
    }
    tokio::spawn(async move {
        let drain = async {
            let mut body = body;
            while let Some(Ok(_)) = body.frame().await {}
        };
        // Past the deadline the body is dropped, and hyper closes the connection.
        let _ = tokio::time::timeout(timeout, drain).await;
    });
    true
}

/// Mark an answer as the connection's last.
fn close_after(response: &mut Response<ResponseBody>) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

async fn phases(
    runtime: &Runtime,
    mut parts: http::request::Parts,
    body: &mut Option<Incoming>,
    (request_id, started, watch): (&HeaderValue, Instant, Option<&upstream::Watch>),
    observer: Option<&Observer>,
    access: &mut Access,
) -> Result<Response<ResponseBody>, GateError> {
    let policy = &runtime.policy;
    let body_empty = body.as_ref().is_none_or(Body::is_end_stream);
    let mut request = request::normalize(&mut parts, body_empty)?;
    access.route = request.path().route_label();
    let entry = crate::rules::catalog::find(request.method(), request.path());
    access.pattern = entry.map(|e| std::borrow::Cow::Borrowed(e.path));
    let principal = auth::authenticate(policy, request.headers(), clock::wall(started))?;
    access.key = Some(principal.key_id.clone());
    access.digest = principal.digest;
    access.user = principal.user;
    allow_route(runtime, &principal, &request)?;
    let row = catalog::admit(runtime, &principal, &request, entry, access)?;
    rate_limit(runtime, &principal, started, access).await?;
    judge::check_query_token(&principal, &request)?;

    let (limit, timeout) = (policy.max_body_bytes, policy.client.body_timeout);
    if let Some(incoming) = body.as_ref() {
        if incoming.size_hint().lower() > limit {
            return Err(GateError::BodyTooLarge);
        }
    }
    // Most requests stream through unread. Dialog changes and API-key writes under `/users` are
    // judged and form POSTs read whole (a `token` field refused on an API key), the judged ones
    // boxed: their state (body reading, dialog lookups) would otherwise make every
    // request's future kilobytes larger, copied on every request. An API-key request's judge
    // comes with its catalog row; the others' is told by the route.
    let dialog_rules = policy.dialog_rules.mode != RuleMode::Off;
    let family = match row {
        Some(row) => judge::family(row, dialog_rules),
        None => judge::family_by_route(
            principal.key.is_some(),
            dialog_rules,
            request.method(),
            request.path(),
        ),
    };
    let checked = if let Some(family) = family {
        Box::pin(judge::run(
            family,
            runtime,
            &principal,
            &mut request,
            body,
            access,
        ))
        .await?
    } else {
        judge::unjudged(&principal, &mut request, body, (limit, timeout), access).await?
    };

    access.streamed_in = request.body_counter();
    if let Some(observer) = observer {
        observer(&judged_view(
            &request,
            &principal,
            request_id,
            &policy.upstream,
            &checked,
        ));
    }
    let mut forward = request.forward(
        &policy.upstream.base_path,
        policy.upstream.authorization.as_ref(),
        request_id,
    );
    let sent = Instant::now();
    let timeout = policy.upstream.timeout;
    let response = upstream::send(&runtime.client, timeout, watch, sent, &mut forward).await;
    access.upstream = Some(sent.elapsed());
    // An upload the upstream answered before taking whole leaves the client's body unread.
    access.body_done = access.body_done || forward.request().body().is_end_stream();
    drop(forward);
    let response = match response {
        Ok(response) => response,
        Err(error) => {
            crate::metrics::upstream_error(error.reason());
            // The upstream may have applied a judged change without our hearing of it: the cached
            // dialog can no longer be trusted.
            if let Some(route) = &checked.route {
                Box::pin(judge::forget(runtime, route)).await;
            }
            return Err(error);
        }
    };
    access.upstream_status = Some(response.status().as_u16());
    // The pool hands the answer over without hop-by-hop fields.
    let (mut parts, body) = response.into_parts();
    if let Some(reason) = checked.would_reject {
        access.would_reject = Some(reason);
        parts
            .headers
            .insert(WOULD_REJECT.clone(), HeaderValue::from_static(reason));
    }
    let body = match &checked.route {
        Some(route) => {
            let against = checked.against.as_ref();
            Box::pin(judge::learn(runtime, route, against, parts.status, body)).await?
        }
        None => match checked.learn_messages {
            Some(kind) => Box::pin(judge::learn_messages(runtime, kind, &parts, body)).await?,
            None => body,
        },
    };
    Ok(Response::from_parts(parts, body))
}

/// What an observer is shown of a request about to be forwarded.
fn judged_view(
    request: &Canonical,
    principal: &Principal,
    request_id: &HeaderValue,
    upstream: &crate::policy::Upstream,
    checked: &Checked,
) -> Judged {
    let forwarded = request.path().forwarded(&upstream.base_path);
    Judged {
        request_id: request_id.to_str().unwrap_or_default().to_owned(),
        method: request.method().clone(),
        path: forwarded.path().to_owned(),
        query: forwarded.query().map(str::to_owned),
        route: request.path().route_key().to_owned(),
        user: principal.user,
        params: checked.params.clone(),
    }
}

/// Route allowlist phase: short-circuits with 403 when the key lists routes and none matches.
fn allow_route(
    runtime: &Runtime,
    principal: &Principal,
    request: &Canonical,
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
    if routes
        .iter()
        .any(|r| r.matches(request.method(), request.path().route()))
    {
        Ok(())
    } else {
        Err(GateError::RouteNotAllowed)
    }
}

/// Rate-limit phase: short-circuits with 429 (and `Retry-After`) when any window of the key or
/// its user's bucket is empty. QB-Token requests are not limited: they carry no key.
async fn rate_limit(
    runtime: &Runtime,
    principal: &Principal,
    started: Instant,
    access: &mut Access,
) -> Result<(), GateError> {
    let Some(key) = principal.key else {
        return Ok(());
    };
    match runtime
        .limiters
        .check_at(key, principal.user, started)
        .await
    {
        Decision::Unlimited => Ok(()),
        Decision::Allowed(info) => {
            access.rate = Some(info);
            Ok(())
        }
        Decision::Limited { info, retry_after } => {
            crate::metrics::rate_limited(&principal.key_id);
            access.rate = Some(info);
            Err(GateError::RateLimited { retry_after })
        }
    }
}

/// Read the whole body within `limit` bytes and `timeout`; `access` learns that it was read
/// to its end.
async fn read_body(
    body: &mut Option<Incoming>,
    limit: u64,
    timeout: std::time::Duration,
    access: &mut Access,
) -> Result<Bytes, GateError> {
    let Some(body) = body.take() else {
        return Ok(Bytes::new());
    };
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let bytes = match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(GateError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(GateError::BodyTooLarge),
        Ok(Err(_)) => Err(GateError::BadBody),
    }?;
    access.body_done = true;
    access.bytes_in = bytes.len() as u64;
    Ok(bytes)
}

/// What the gateway answers with: the upstream's body streamed through, or its own bytes (an
/// error, or an answer it read whole); the upstream's body type already holds both.
pub type ResponseBody = UpstreamBody;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_the_prefix_then_a_counter_in_hex() {
        let ids = RequestIds {
            prefix: 0x0a1b_2c3d,
            next: AtomicU64::new(0xfe),
        };
        assert_eq!(ids.next(), "0a1b2c3d0000000000fe");
        assert_eq!(ids.next(), "0a1b2c3d0000000000ff");
        let random = RequestIds::new().next();
        assert_eq!(random.len(), 20);
        assert!(upstream::valid_request_id(&random));
    }

    /// Each name's first value, as a lookup would answer, wherever the field stands; the trace
    /// context's fields are noted for it.
    #[test]
    fn handle_reads_the_first_value_of_each_of_its_fields_in_one_pass() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("host", "gate"),
            ("x-request-id", "first-id"),
            ("user-agent", "first-agent"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-request-id", "second-id"),
            ("user-agent", "second-agent"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let seen = Seen::of(&headers);
        assert_eq!(seen.user_agent.unwrap(), "first-agent");
        assert_eq!(seen.request_id.unwrap(), "first-id");
        assert!(!seen.expect);
        let mut traced = headers.clone();
        let cx = crate::trace::Context::write(&mut traced, seen.trace.read(), false);
        assert_eq!(cx.parent(), Some(*b"00f067aa0ba902b7"));

        headers.append(header::EXPECT, HeaderValue::from_static("100-continue"));
        let seen = Seen::of(&headers);
        assert!(seen.expect);
        let empty = http::HeaderMap::new();
        let seen = Seen::of(&empty);
        assert!(seen.user_agent.is_none() && seen.request_id.is_none() && !seen.expect);
    }

    /// The size of an async fn's future, without making one.
    fn future_size<A, B, C, F, G: FnOnce(A, B, C) -> F>(_: G) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every request's future is moved into place whole, so its size is copied per request. The
    /// rare, deep paths (rules, lookups, Redis, connecting) are boxed to keep it small: it was
    /// 20 KB before they were. A tripwire with margin (debug builds are the larger).
    #[test]
    fn the_future_of_a_request_stays_small() {
        let size = future_size(
            |runtime: Arc<Runtime>, ids: &'static RequestIds, request: Request<Incoming>| {
                handle(runtime, ids, None, None, request)
            },
        );
        assert!(size <= 8 * 1024, "{size} bytes");
    }
}
