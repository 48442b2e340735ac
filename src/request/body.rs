//! The request's body: its media type, read once; the method overrides a body can carry; and
//! [`ProxyBody`], the body that is forwarded (nothing, the bytes that were judged, or the client's
//! stream under the size limit and the body deadline).
//!
//! The upstream's stack (Rack under Rails) decides how to read a body from the first media type
//! of `Content-Type` (it ends at `;` or `,`), lowercased; a POST with no type at all is read as a
//! form. `Rack::MethodOverride` turns a POST into another method through a `_method` field of a
//! form, multipart or untyped body. So:
//! - a `Content-Type` that is not ASCII or lists more than one type is refused (400);
//! - a write (POST, PUT, PATCH, DELETE) with a body and no type is refused (415): a form read
//!   from untyped bytes is a guess about the client that nothing needs;
//! - a form or multipart POST is read whole and refused (400) when a field could be `_method`
//!   as Rack names fields: `[_method]`, `_method]`, `%5Fmethod`, `_method[x]` all count.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::GateError;

/// What the one `Content-Type` of a request says, as the upstream will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// The whole value (parameters included), for the parameter parser's charset check.
    raw: HeaderValue,
    kind: MediaKind,
}

/// The media types the gateway tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Json,
    Form,
    Multipart,
    Other,
}

impl Media {
    /// Read the request's `Content-Type` (the header phase has refused a second copy).
    /// `Ok(None)`: no type, or an empty one, which the upstream reads as none.
    pub fn read(headers: &HeaderMap) -> Result<Option<Media>, GateError> {
        let Some(raw) = headers.get(http::header::CONTENT_TYPE) else {
            return Ok(None);
        };
        let text = raw
            .to_str()
            .map_err(|_| GateError::BadHeader("Content-Type is not ASCII"))?;
        if text.contains(',') {
            return Err(GateError::BadHeader(
                "Content-Type must name exactly one media type",
            ));
        }
        let essence = text.split(';').next().unwrap_or_default().trim();
        if essence.is_empty() {
            return Ok(None);
        }
        let is = |t: &str| essence.eq_ignore_ascii_case(t);
        let kind = if is("application/json") {
            MediaKind::Json
        } else if is("application/x-www-form-urlencoded") {
            MediaKind::Form
        } else if essence
            .get(..10)
            .is_some_and(|p| p.eq_ignore_ascii_case("multipart/"))
        {
            MediaKind::Multipart
        } else {
            MediaKind::Other
        };
        Ok(Some(Media {
            raw: raw.clone(),
            kind,
        }))
    }

    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// The header value as received.
    pub fn as_str(&self) -> &str {
        // Checked to be ASCII in `read`.
        self.raw.to_str().unwrap_or_default()
    }
}

/// Is this a method that carries content the upstream may act on?
pub fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Must this request's body be read whole to look for a `_method` field before it is forwarded?
pub fn may_override(method: &Method, media: Option<&Media>) -> bool {
    *method == Method::POST
        && media.is_some_and(|m| matches!(m.kind, MediaKind::Form | MediaKind::Multipart))
}

/// Refuse a form or multipart body that carries a `_method` field in any spelling Rack reads.
pub fn check_override(media: Option<&Media>, body: &[u8]) -> Result<(), GateError> {
    match media.map(Media::kind) {
        Some(MediaKind::Form) => {
            if form_names(body, b"_method")? {
                return Err(GateError::MethodOverride);
            }
            Ok(())
        }
        Some(MediaKind::Multipart) => {
            // A part's name may be quoted, unquoted or encoded; any `_method` in the body is
            // refused rather than parse every way a multipart reader could name a part.
            let lower = body.to_ascii_lowercase();
            let found = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
            if found(b"_method") || found(b"%5fmethod") {
                return Err(GateError::MethodOverride);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Does a form body name the top-level parameter `name` (see [`names_key`]) in any pair? A
/// malformed escape is refused.
pub fn form_names(body: &[u8], name: &[u8]) -> Result<bool, GateError> {
    // Rack splits a form body on `&`; `;` too, to be safe with any version.
    for pair in body.split(|&b| b == b'&' || b == b';') {
        let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
        if names_key(&unescape(key)?, name) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Does a decoded parameter key name `_method` at its top level (see [`names_key`])?
pub fn names_method(key: &[u8]) -> bool {
    names_key(key, b"_method")
}

/// Does a decoded parameter key name `name` at its top level, as Rack reads key names (leading
/// `[` and `]` skipped, the name ends at the next bracket)? Case and surrounding space are
/// ignored, to be safe.
pub fn names_key(key: &[u8], name: &[u8]) -> bool {
    let start = key
        .iter()
        .position(|&b| b != b'[' && b != b']')
        .unwrap_or(key.len());
    let rest = &key[start..];
    let end = rest
        .iter()
        .position(|&b| b == b'[' || b == b']')
        .unwrap_or(rest.len());
    rest[..end].trim_ascii().eq_ignore_ascii_case(name)
}

/// `+` as space and `%XX` decoded, as a form is read; a malformed escape is refused (Rack
/// answers it with an error of its own). Borrowed when there is nothing to decode (most keys).
pub fn unescape(raw: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, GateError> {
    if !raw.iter().any(|&b| b == b'+' || b == b'%') {
        return Ok(std::borrow::Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(raw.get(i + 1)), hex(raw.get(i + 2))) else {
                    return Err(GateError::BadQuery);
                };
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// A boxed error of any kind, as the body and the upstream client pass them on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a streamed request body was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Timeout,
    Client,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyError::TooLarge => "request body over the limit",
            BodyError::Timeout => "request body timeout",
            BodyError::Client => "request body read error",
        })
    }
}

impl std::error::Error for BodyError {}

/// The body sent upstream: nothing, bytes the gateway read (and checked), or the client's stream
/// passed through with the size limit and the body deadline enforced as it flows.
pub struct ProxyBody(Inner);

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Stream {
        body: Incoming,
        remaining: u64,
        deadline: Pin<Box<tokio::time::Sleep>>,
        /// Bytes passed so far, for the access log (which outlives the body on HTTP/2, where
        /// the upstream client takes it).
        passed: Arc<AtomicU64>,
    },
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody(Inner::Empty)
    }

    pub fn full(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Self::empty()
        } else {
            ProxyBody(Inner::Full(Some(bytes)))
        }
    }

    /// The bytes of a body the gateway holds whole.
    pub fn full_bytes(&self) -> Option<&Bytes> {
        match &self.0 {
            Inner::Full(bytes) => bytes.as_ref(),
            _ => None,
        }
    }

    /// Stream `body` through, failing once more than `limit` bytes pass or `timeout` elapses.
    pub fn stream(body: Incoming, limit: u64, timeout: Duration) -> Self {
        if body.is_end_stream() {
            return Self::empty();
        }
        ProxyBody(Inner::Stream {
            body,
            remaining: limit,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            passed: Arc::default(),
        })
    }

    /// A streamed body's count of bytes passed so far (read on by the access log).
    pub fn counter(&self) -> Option<Arc<AtomicU64>> {
        match &self.0 {
            Inner::Stream { passed, .. } => Some(Arc::clone(passed)),
            _ => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream {
                body,
                remaining,
                deadline,
                passed,
            } => {
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(BodyError::Timeout.into())));
                }
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers come last and are not forwarded: the upstream's stack
                        // ignores them, and nothing judged them.
                        let Some(data) = frame.data_ref() else {
                            return Poll::Ready(None);
                        };
                        let n = data.len() as u64;
                        if n > *remaining {
                            return Poll::Ready(Some(Err(BodyError::TooLarge.into())));
                        }
                        *remaining -= n;
                        passed.fetch_add(n, Ordering::Relaxed);
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(_))) => Poll::Ready(Some(Err(BodyError::Client.into()))),
                    other => other.map_err(Into::into),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Empty => true,
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Stream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Stream { body, .. } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(value: &str) -> Result<Option<Media>, GateError> {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
        Media::read(&headers)
    }

    #[test]
    fn the_media_type_is_read_as_rack_reads_it() {
        let kind = |v: &str| media(v).unwrap().map(|m| m.kind());
        assert_eq!(kind("application/json"), Some(MediaKind::Json));
        assert_eq!(
            kind("Application/JSON ; charset=utf-8"),
            Some(MediaKind::Json)
        );
        assert_eq!(
            kind("application/x-www-form-urlencoded; charset=UTF-8"),
            Some(MediaKind::Form)
        );
        assert_eq!(
            kind("multipart/form-data; boundary=x"),
            Some(MediaKind::Multipart)
        );
        assert_eq!(kind("Multipart/Mixed"), Some(MediaKind::Multipart));
        assert_eq!(kind("text/x-json"), Some(MediaKind::Other));
        assert_eq!(kind(""), None);
        assert_eq!(kind(" ; charset=utf-8"), None);
        assert!(media("application/x-www-form-urlencoded, application/json").is_err());
        assert!(media("application/json,").is_err());
    }

    #[test]
    fn form_fields_that_rack_reads_as_method_are_refused() {
        let form = media("application/x-www-form-urlencoded").unwrap();
        for body in [
            "_method=DELETE",
            "a=1&_method=PUT",
            "%5Fmethod=PUT",
            "%5fmethod=PUT",
            "[_method]=PUT",
            "_method]=PUT",
            "]]_method=PUT",
            "_method[x]=PUT",
            "_METHOD=put",
            "+_method+=PUT",
            "%20_method=PUT",
            "a=1;_method=PUT",
            "_method",
        ] {
            assert_eq!(
                check_override(form.as_ref(), body.as_bytes()),
                Err(GateError::MethodOverride),
                "{body}"
            );
        }
        for body in ["method=1&x_method=2", "a[_method]=1", "name=_method", ""] {
            assert!(
                check_override(form.as_ref(), body.as_bytes()).is_ok(),
                "{body}"
            );
        }
        assert!(check_override(form.as_ref(), b"%zz=1").is_err());
    }

    #[test]
    fn multipart_bodies_naming_method_anywhere_are_refused() {
        let multipart = media("multipart/form-data; boundary=b").unwrap();
        for body in [
            "--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nPUT\r\n--b--\r\n",
            "--b\r\nContent-Disposition: form-data; name=_method\r\n\r\nPUT\r\n--b--\r\n",
            "--b\r\nContent-Disposition: form-data; NAME=\"_METHOD\"\r\n\r\nPUT\r\n--b--\r\n",
            "--b\r\nContent-Disposition: form-data; name*=UTF-8''%5Fmethod\r\n\r\nPUT\r\n--b--\r\n",
        ] {
            assert_eq!(
                check_override(multipart.as_ref(), body.as_bytes()),
                Err(GateError::MethodOverride),
                "{body}"
            );
        }
        let fine = "--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx\r\n--b--\r\n";
        assert!(check_override(multipart.as_ref(), fine.as_bytes()).is_ok());
    }

    #[test]
    fn only_form_and_multipart_posts_are_read_for_overrides() {
        let form = media("application/x-www-form-urlencoded").unwrap();
        let json = media("application/json").unwrap();
        assert!(may_override(&Method::POST, form.as_ref()));
        assert!(!may_override(&Method::PUT, form.as_ref()));
        assert!(!may_override(&Method::POST, json.as_ref()));
        assert!(!may_override(&Method::POST, None));
    }
}
