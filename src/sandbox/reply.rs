//! What the sandbox answers with: QuickBlox-shaped JSON replies and errors, the response bodies
//! the faults need (whole, lazily generated, cut short), and QuickBlox's timestamps.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Response, StatusCode};
use hyper::body::{Frame, SizeHint};
use serde_json::{json, Value};

/// A status and its JSON body.
pub(super) type Reply = (StatusCode, Value);

/// Response bodies: whole JSON, a lazily generated large body, or one cut short.
pub(super) struct ReplyBody(BodyKind);

enum BodyKind {
    Full(Option<Bytes>),
    Big {
        remaining: usize,
    },
    Truncated {
        part: Option<Bytes>,
        /// Lets the part reach the wire before the connection dies: hyper flushes while the body
        /// is pending, but may drop buffered bytes when the body fails right away.
        stall: Pin<Box<tokio::time::Sleep>>,
    },
}

/// What `BigBody` sends, shared so that a large body costs no allocation.
pub(super) static CHUNK: [u8; 64 * 1024] = [b'a'; 64 * 1024];

impl hyper::body::Body for ReplyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().0 {
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Big { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(CHUNK.len());
                *remaining -= n;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
            }
            BodyKind::Truncated { part, stall } => {
                if let Some(part) = part.take() {
                    return Poll::Ready(Some(Ok(Frame::data(part))));
                }
                ready!(stall.as_mut().poll(cx));
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "sandbox: injected reset mid-body",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.0,
            BodyKind::Full(None) | BodyKind::Big { remaining: 0 }
        )
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            // Unknown length on purpose: streamed with chunked encoding, as a proxy must.
            BodyKind::Big { .. } | BodyKind::Truncated { .. } => SizeHint::default(),
        }
    }
}

pub(super) fn base_error(status: StatusCode, message: &str) -> Reply {
    (status, json!({"errors": {"base": [message]}}))
}

pub(super) fn field_error(field: &str, message: &str) -> Reply {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"errors": {field: [message]}}),
    )
}

pub(super) fn fault_reply(code: u16) -> Reply {
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match status.as_u16() {
        401 => "Required session does not exist",
        403 => "You don't have appropriate permissions to perform this operation",
        404 => "Not found",
        429 => "Rate limit for your current plan is exceeded",
        500 => "Internal server error",
        503 => "Service unavailable",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    base_error(status, message)
}

pub(super) fn json_response((status, value): Reply, started: Instant) -> Response<ReplyBody> {
    let body = Bytes::from(value.to_string());
    respond_with(status, ReplyBody(BodyKind::Full(Some(body))), started)
}

pub(super) fn truncated_response((status, value): Reply, started: Instant) -> Response<ReplyBody> {
    let full = value.to_string().into_bytes();
    let half = (full.len() / 2).max(1);
    let body = ReplyBody(BodyKind::Truncated {
        part: Some(Bytes::copy_from_slice(&full[..half])),
        stall: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
    });
    let mut response = respond_with(status, body, started);
    // The full length, so the client can tell the body was cut short even over HTTP/1.1.
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(full.len()));
    response
}

pub(super) fn big_response(len: usize, started: Instant) -> Response<ReplyBody> {
    respond_with(
        StatusCode::OK,
        ReplyBody(BodyKind::Big { remaining: len }),
        started,
    )
}

fn respond_with(status: StatusCode, body: ReplyBody, started: Instant) -> Response<ReplyBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let runtime = format!("{:.6}", started.elapsed().as_secs_f64());
    if let Ok(runtime) = HeaderValue::from_str(&runtime) {
        headers.insert("x-runtime", runtime);
    }
    response
}

pub(super) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2019-09-08T19:36:54Z`, QuickBlox's timestamp format, without a date crate for one format.
pub(super) fn rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
