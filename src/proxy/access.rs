//! What the access line says about one request, gathered by the phases ([`Access`]) and written
//! when the answer's body is done ([`Logged`]): only then are the bytes sent and the whole time
//! known. A body the connection drops half sent is logged with what it sent.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Method, Version};
use http_body::{Body, Frame, SizeHint};

use crate::policy::DigestPrefix;
use crate::ratelimit;
use crate::trace;

/// What the access log line says about one request, filled in as the phases run.
pub(super) struct Access {
    pub(super) key: Option<Arc<str>>,
    pub(super) digest: Option<DigestPrefix>,
    pub(super) user: Option<u64>,
    pub(super) reason: &'static str,
    /// Report mode: the reason `enforce` would have refused with (the request was forwarded).
    pub(super) would_reject: Option<&'static str>,
    pub(super) upstream_status: Option<u16>,
    pub(super) upstream: Option<Duration>,
    /// Route template for metrics.
    pub(super) route: &'static str,
    /// The matched pattern for the log: a catalog row, or the `unchecked_routes` entry.
    pub(super) pattern: Option<Cow<'static, str>>,
    /// Rate-limit fields for the response, once the limiter ran.
    pub(super) rate: Option<ratelimit::Info>,
    /// The request's body was read to its end (or it had none).
    pub(super) body_done: bool,
    /// Request body bytes read whole by the gateway.
    pub(super) bytes_in: u64,
    /// Request body bytes streamed through, counted as they pass (only a streamed body has one).
    pub(super) streamed_in: Option<Arc<AtomicU64>>,
}

impl Access {
    pub(super) fn new(body_done: bool) -> Self {
        Access {
            key: None,
            digest: None,
            user: None,
            reason: "",
            would_reject: None,
            upstream_status: None,
            upstream: None,
            rate: None,
            route: "other",
            pattern: None,
            body_done,
            bytes_in: 0,
            streamed_in: None,
        }
    }
}

/// Everything the line needs once the answer is done, owned (moved from [`Access`] and the
/// request head; nothing copied but reference counts).
pub(super) struct Entry {
    pub(super) started: Instant,
    pub(super) request_id: HeaderValue,
    pub(super) trace: Option<trace::Context>,
    /// Where the request's span goes, and when the request started on the wall clock (read
    /// only when a span is exported).
    pub(super) export: Option<(trace::Exporter, SystemTime)>,
    pub(super) method: Method,
    pub(super) version: Version,
    pub(super) user_agent: Option<HeaderValue>,
    pub(super) status: u16,
    pub(super) access: Access,
}

/// The answer's body, counting the bytes it hands to the connection; writes the access line
/// when it ends or is dropped.
pub struct Logged<B> {
    body: B,
    bytes_out: u64,
    /// `None` once the line is written.
    entry: Option<Entry>,
}

impl<B> Logged<B> {
    pub(super) fn new(body: B, entry: Entry) -> Self {
        Logged {
            body,
            bytes_out: 0,
            entry: Some(entry),
        }
    }

    fn write(&mut self) {
        let Some(entry) = self.entry.take() else {
            return;
        };
        let Entry {
            started,
            request_id,
            trace,
            export,
            method,
            version,
            user_agent,
            status,
            access,
        } = entry;
        let bytes_in = access
            .streamed_in
            .as_ref()
            .map_or(access.bytes_in, |n| n.load(Ordering::Relaxed));
        let reason = access.would_reject.unwrap_or(access.reason);
        // One clock read for the duration, its metrics and the line's timestamp.
        let end = Instant::now();
        let total = end.saturating_duration_since(started);
        crate::metrics::request(
            access.key.as_ref(),
            access.route,
            status,
            access.reason,
            total.as_secs_f64(),
        );
        if let Some(upstream) = access.upstream {
            crate::metrics::upstream(upstream.as_secs_f64());
        }
        let route = access.pattern.as_deref().unwrap_or(access.route);
        if let (Some((exporter, start)), Some(context)) = (&export, trace) {
            exporter.record(&trace::Finished {
                context,
                start: *start,
                duration: total,
                method: &method,
                route,
                status,
                key: access.key.as_deref(),
                reason,
                report_only: access.would_reject.is_some(),
                protocol: protocol(version),
                upstream_status: access.upstream_status,
            });
        }
        let trace_id = trace.as_ref().map(trace::Context::trace_id);
        crate::access_log::record(&crate::access_log::Line {
            time: super::clock::wall(end),
            request_id: std::str::from_utf8(request_id.as_bytes()).unwrap_or_default(),
            trace_id: trace_id.as_ref().map(|t| &t[..]),
            key: access.key.as_deref().unwrap_or("-"),
            digest: access.digest.as_ref().map_or("-", |d| d.as_str()),
            user: access.user,
            method: method.as_str(),
            route,
            status,
            reason,
            report_only: access.would_reject.is_some(),
            protocol: protocol(version),
            bytes_in,
            bytes_out: self.bytes_out,
            user_agent: user_agent.as_ref().map_or(&[][..], HeaderValue::as_bytes),
            upstream_status: access.upstream_status,
            total,
            upstream: access.upstream,
        });
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        self.write();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
            }
            // The end, or a failure: no more bytes will go out.
            _ => this.write(),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
