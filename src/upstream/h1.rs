//! The client side of an HTTP/1.1 upstream connection, driven inside the request's own task.
//!
//! hyper's HTTP/1.1 client runs each connection as a task of its own: a request crosses a channel
//! to it, the response head crosses back through a oneshot and the body through another channel,
//! and every crossing is a wake-up and a task switch. Here the request's task writes the request
//! and reads the answer itself, and a response that arrived whole with its head (most API
//! answers) is handed over as bytes, its connection already back in the pool.
//!
//! What it speaks (RFC 9112): requests framed by `Content-Length`, or chunked when the client's
//! body has no known length; responses framed by `Content-Length`, chunked, or the connection's
//! close; 1xx interim answers skipped; no body after HEAD, 204 or 304; HTTP/1.0 answers taken,
//! their connection not reused. A connection is kept only when both sides finished their
//! messages cleanly and the upstream did not ask to close it.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::{BoxError, ProxyBody};

/// A connection as the connector returns it, seen through tokio's I/O traits.
pub type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// A response head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
/// Response headers accepted at most (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Bytes read at a time.
const READ_SIZE: usize = 16 * 1024;
/// Body bytes up to this size are copied behind the request head: one write instead of two.
const COALESCE: usize = 8 * 1024;
/// Fields the gateway adds to an answer at most (`X-Request-Id`, `RateLimit`, `RateLimit-Policy`,
/// `X-QBGate-Would-Reject`).
const ADDED_FIELDS: usize = 4;
/// A chunk-size line or trailer section longer than this is refused.
const MAX_LINE: usize = 4 * 1024;

/// An upstream answer this client cannot accept.
#[derive(Debug)]
pub struct ProtocolError(&'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream HTTP/1.1: {}", self.0)
    }
}

impl StdError for ProtocolError {}

fn protocol(what: &'static str) -> BoxError {
    Box::new(ProtocolError(what))
}

fn closed() -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream closed the connection",
    ))
}

/// Why an exchange failed.
#[derive(Debug)]
pub enum SendError {
    /// Not one byte of the request was written, and its body was not touched: the request can
    /// go out on another connection.
    Unsent(io::Error),
    /// The request may have been written in part or whole.
    Failed(BoxError),
}

/// One HTTP/1.1 connection to the upstream. Boxed: a TLS stream is large, and a connection
/// moves in and out of the pool and through every request's future.
pub struct Conn(Box<State>);

struct State {
    io: Io,
    /// Bytes read and not yet consumed.
    read: BytesMut,
    /// The bytes being written: a request head (and a small body), or a chunk's framing.
    write: Vec<u8>,
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the upstream closes.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data remain.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Expecting trailer lines, or the empty line that ends the message.
    Trailers,
}

/// The answer to a request: its head, and its body, whole or still to read.
pub enum Answer {
    /// The body was read with the head; the connection is free again (`None` if it cannot be
    /// reused).
    Whole(Response<Bytes>, Option<Conn>),
    /// The body is still on the connection.
    Streaming(Response<Reader>),
}

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn(Box::new(State {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
        }))
    }

    /// Whether an idle connection can take a request: not closed by the upstream, and nothing
    /// unasked-for arrived on it. Costs no system call while the socket has nothing to read.
    pub fn is_open(&mut self) -> bool {
        if !self.0.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.tcp().poll_read_ready(&mut cx) {
            Poll::Pending => return true,
            Poll::Ready(Err(_)) => return false,
            Poll::Ready(Ok(())) => {}
        }
        // Readable: an end of stream, stray bytes, a TLS record with nothing for us (a session
        // ticket), or readiness left over from the last response.
        self.0.read.reserve(READ_SIZE);
        matches!(
            tokio_util::io::poll_read_buf(Pin::new(&mut self.0.io), &mut cx, &mut self.0.read),
            Poll::Pending
        ) && self.0.read.is_empty()
    }

    fn tcp(&self) -> &TcpStream {
        match self.0.io.inner() {
            MaybeHttpsStream::Http(tcp) => tcp.inner(),
            MaybeHttpsStream::Https(tls) => tls.inner().get_ref().0.inner().inner(),
        }
    }

    /// Send `request` (URI in origin form) and read the answer's head. The request's body is
    /// left untouched when the error is [`SendError::Unsent`].
    pub async fn send(
        mut self,
        request: &mut Request<ProxyBody>,
        host: &HeaderValue,
    ) -> Result<Answer, SendError> {
        let mut out = Outgoing::new(&mut self.0.write, request, host);
        let head = std::future::poll_fn(|cx| {
            exchange(
                &mut self.0.io,
                &mut self.0.read,
                &mut self.0.write,
                &mut out,
                request.body_mut(),
                cx,
            )
        })
        .await?;
        let Head {
            mut parts,
            framing,
            reusable,
        } = head;
        // The upstream answered before taking the whole request: the connection is in an
        // unknown state.
        let reusable = reusable && out.done;
        parts.version = Version::HTTP_11;
        let whole = match framing {
            Framing::Length(n) => usize::try_from(n).ok().filter(|&n| n <= self.0.read.len()),
            _ => None,
        };
        match whole {
            Some(n) => {
                let bytes = self.0.read.split_to(n).freeze();
                let conn = (reusable && self.0.read.is_empty()).then_some(self);
                Ok(Answer::Whole(Response::from_parts(parts, bytes), conn))
            }
            None => Ok(Answer::Streaming(Response::from_parts(
                parts,
                Reader {
                    conn: self,
                    framing,
                    reusable,
                },
            ))),
        }
    }
}

/// The write side of one exchange.
struct Outgoing {
    /// How far into the write buffer has gone out.
    written: usize,
    /// Whether any byte went out.
    wrote_any: bool,
    /// The body was copied behind the head: nothing to poll.
    body_in_head: bool,
    /// The body still has frames to give.
    body_open: bool,
    chunked: bool,
    /// A chunk's data went out and its CRLF has not.
    chunk_open: bool,
    /// The current body frame, when it is too big to copy.
    data: Bytes,
    /// The whole request, flushed.
    done: bool,
    /// Writing failed after some of the request went out; the answer may still come.
    broken: Option<BoxError>,
    /// A HEAD request: its answer has no body.
    head_only: bool,
}

impl Outgoing {
    /// Encode the request head into `buf`, with the body behind it when it is small and known.
    fn new(buf: &mut Vec<u8>, request: &Request<ProxyBody>, host: &HeaderValue) -> Outgoing {
        buf.clear();
        buf.extend_from_slice(request.method().as_str().as_bytes());
        buf.push(b' ');
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        buf.extend_from_slice(target.as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        buf.extend_from_slice(host.as_bytes());
        buf.extend_from_slice(b"\r\n");
        for (name, value) in request.headers() {
            // Framing is this hop's business, and the host is the upstream's.
            if name == header::HOST
                || name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
            {
                continue;
            }
            buf.extend_from_slice(name.as_str().as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        let body = request.body();
        let length = body.size_hint().exact();
        let mut out = Outgoing {
            written: 0,
            wrote_any: false,
            body_in_head: false,
            body_open: !body.is_end_stream(),
            chunked: false,
            chunk_open: false,
            data: Bytes::new(),
            done: false,
            broken: None,
            head_only: request.method() == Method::HEAD,
        };
        match length {
            Some(0) if !out.body_open => {
                // A method that carries content says it has none; others say nothing.
                if matches!(
                    *request.method(),
                    Method::POST | Method::PUT | Method::PATCH
                ) || request.headers().contains_key(header::CONTENT_LENGTH)
                {
                    buf.extend_from_slice(b"content-length: 0\r\n");
                }
            }
            Some(n) => {
                buf.extend_from_slice(b"content-length: ");
                buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                buf.extend_from_slice(b"\r\n");
            }
            None => {
                buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                out.chunked = true;
            }
        }
        buf.extend_from_slice(b"\r\n");
        if let Some(bytes) = body.full_bytes().filter(|b| b.len() <= COALESCE) {
            buf.extend_from_slice(bytes);
            out.body_in_head = true;
            out.body_open = false;
        }
        out
    }

    /// Queue the next piece of the body. `Ready(false)` when the body has ended.
    fn next_frame(
        &mut self,
        buf: &mut Vec<u8>,
        body: &mut ProxyBody,
        cx: &mut Context<'_>,
    ) -> Poll<Result<bool, BoxError>> {
        buf.clear();
        self.written = 0;
        if self.chunk_open {
            buf.extend_from_slice(b"\r\n");
            self.chunk_open = false;
        }
        let frame = match Pin::new(body).poll_frame(cx) {
            Poll::Pending if buf.is_empty() => return Poll::Pending,
            // The pending CRLF goes out while the body waits.
            Poll::Pending => return Poll::Ready(Ok(true)),
            Poll::Ready(frame) => frame,
        };
        match frame {
            Some(Err(e)) => Poll::Ready(Err(e)),
            Some(Ok(frame)) => {
                // Trailers are not forwarded.
                let Ok(data) = frame.into_data() else {
                    return Poll::Ready(Ok(true));
                };
                if data.is_empty() {
                    return Poll::Ready(Ok(true));
                }
                if self.chunked {
                    let mut size = [0u8; 16];
                    buf.extend_from_slice(hex(data.len() as u64, &mut size));
                    buf.extend_from_slice(b"\r\n");
                    self.chunk_open = true;
                }
                if data.len() <= COALESCE {
                    buf.extend_from_slice(&data);
                } else {
                    self.data = data;
                }
                Poll::Ready(Ok(true))
            }
            None => {
                self.body_open = false;
                if self.chunked {
                    buf.extend_from_slice(b"0\r\n\r\n");
                }
                Poll::Ready(Ok(false))
            }
        }
    }
}

fn hex(mut n: u64, out: &mut [u8; 16]) -> &[u8] {
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            return &out[at..];
        }
    }
}

/// Write the request and read the answer's head, both as far as the sockets allow: an upstream
/// may answer (413, say) before it has read the whole body.
fn exchange(
    io: &mut Io,
    read: &mut BytesMut,
    write: &mut Vec<u8>,
    out: &mut Outgoing,
    body: &mut ProxyBody,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, SendError>> {
    while !out.done && out.broken.is_none() {
        match write_some(io, write, out, body, cx) {
            Poll::Ready(Ok(())) => {}
            // An upstream that answers (a 413, say) and closes before taking the whole request
            // breaks the pipe under the rest. Its answer may be on the way: wait for it, and
            // give the write's error only if none comes.
            Poll::Ready(Err(SendError::Failed(e))) if e.is::<io::Error>() => out.broken = Some(e),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => break,
        }
    }
    if !out.wrote_any {
        return Poll::Pending;
    }
    match ready!(poll_head(io, read, out.head_only, cx)) {
        Ok(head) => Poll::Ready(Ok(head)),
        Err(e) => Poll::Ready(Err(SendError::Failed(out.broken.take().unwrap_or(e)))),
    }
}

/// One step of the write side.
fn write_some(
    io: &mut Io,
    write: &mut Vec<u8>,
    out: &mut Outgoing,
    body: &mut ProxyBody,
    cx: &mut Context<'_>,
) -> Poll<Result<(), SendError>> {
    let failed = |out: &Outgoing, e: io::Error| {
        if out.wrote_any {
            SendError::Failed(e.into())
        } else {
            SendError::Unsent(e)
        }
    };
    if out.written < write.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &write[out.written..]))
            .and_then(nonzero)
            .map_err(|e| failed(out, e))?;
        out.written += n;
        out.wrote_any = true;
    } else if !out.data.is_empty() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &out.data))
            .and_then(nonzero)
            .map_err(|e| failed(out, e))?;
        out.data.advance(n);
    } else if out.body_open {
        ready!(out.next_frame(write, body, cx)).map_err(SendError::Failed)?;
    } else {
        ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(|e| failed(out, e))?;
        out.done = true;
    }
    Poll::Ready(Ok(()))
}

fn nonzero(n: usize) -> io::Result<usize> {
    if n == 0 {
        Err(io::ErrorKind::WriteZero.into())
    } else {
        Ok(n)
    }
}

/// Read until a final (non-1xx) response head is in, and parse it.
fn poll_head(
    io: &mut Io,
    read: &mut BytesMut,
    head_only: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, BoxError>> {
    loop {
        if !read.is_empty() {
            if let Some(head) = parse_head(read, head_only)? {
                return Poll::Ready(Ok(head));
            }
            if read.len() > MAX_HEAD {
                return Poll::Ready(Err(protocol("response head too large")));
            }
        }
        if read.capacity() - read.len() < 1024 {
            read.reserve(READ_SIZE);
        }
        match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, read)) {
            Ok(0) => return Poll::Ready(Err(closed())),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
}

/// What a head's framing fields said.
#[derive(Debug)]
struct Fields {
    /// `Connection: close`.
    close: bool,
    /// `Transfer-Encoding` was present, and whether its last coding is chunked.
    chunked_last: Option<bool>,
    /// `Content-Length` was present.
    has_length: bool,
    /// Its value, when all its values agree and parse.
    length: Result<Option<u64>, &'static str>,
}

/// How [`parse_head`] treats a field, by its name (any case).
enum Field {
    Connection,
    TransferEncoding,
    ContentLength,
    /// Describes this hop only (RFC 9110 section 7.6.1): not forwarded.
    HopByHop,
    Other,
}

fn field(name: &[u8]) -> Field {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    match name.len() {
        10 if is("connection") => Field::Connection,
        17 if is("transfer-encoding") => Field::TransferEncoding,
        14 if is("content-length") => Field::ContentLength,
        2 if is("te") => Field::HopByHop,
        7 if is("trailer") || is("upgrade") => Field::HopByHop,
        10 if is("keep-alive") => Field::HopByHop,
        16 if is("proxy-connection") => Field::HopByHop,
        18 if is("proxy-authenticate") => Field::HopByHop,
        19 if is("proxy-authorization") => Field::HopByHop,
        _ => Field::Other,
    }
}

/// A final response head, parsed: its parts without hop-by-hop fields, how its body is framed,
/// and whether the connection may carry another request after it.
struct Head {
    parts: http::response::Parts,
    framing: Framing,
    reusable: bool,
}

/// Parse a complete head at the front of `read` and take it off; skip 1xx heads. `None` when the
/// head is not complete yet. Header values share the head's bytes; the framing fields are read
/// from the raw bytes and not kept, nor is any other hop-by-hop field.
fn parse_head(read: &mut BytesMut, head_only: bool) -> Result<Option<Head>, BoxError> {
    loop {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            read,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Complete(_)) => return Err(protocol("response head too large")),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(protocol("too many headers")),
            Err(_) => return Err(protocol("malformed response head")),
        };
        let code = response.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            read.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| protocol("bad status code"))?;
        let mut fields = Fields {
            // An HTTP/1.0 answer (an old proxy's error page, say) is taken, but its connection
            // is not trusted with another request.
            close: response.version != Some(1),
            chunked_last: None,
            has_length: false,
            length: Ok(None),
        };
        // Names listed in `Connection` besides close and keep-alive: hop-by-hop too (rare).
        let mut listed: Vec<HeaderName> = Vec::new();
        // Where each kept name and value sits in the head (under MAX_HEAD, so u32 holds it).
        let base = read.as_ptr() as usize;
        let at = |bytes: &[u8]| (bytes.as_ptr() as usize - base) as u32;
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let mut count = 0;
        for h in response.headers.iter() {
            match field(h.name.as_bytes()) {
                Field::Connection => {
                    for token in h.value.split(|&b| b == b',').map(trim) {
                        if token.eq_ignore_ascii_case(b"close") {
                            fields.close = true;
                        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                            if let Ok(name) = HeaderName::from_bytes(token) {
                                listed.push(name);
                            }
                        }
                    }
                    continue;
                }
                Field::TransferEncoding => {
                    fields.chunked_last = Some(last_token_is_chunked(h.value));
                    continue;
                }
                Field::HopByHop => continue,
                Field::ContentLength => {
                    fields.has_length = true;
                    fields.length = content_length(h.value, fields.length);
                }
                Field::Other => {}
            }
            spans[count] = (
                at(h.name.as_bytes()),
                h.name.len() as u32,
                at(h.value),
                h.value.len() as u32,
            );
            count += 1;
        }
        let head = read.split_to(len).freeze();
        // Room for what the gateway adds to every answer (request id, rate-limit fields), so
        // those inserts do not grow the map.
        let mut map = HeaderMap::with_capacity(count + ADDED_FIELDS);
        for &(name_at, name_len, value_at, value_len) in &spans[..count] {
            let (name_at, value_at) = (name_at as usize, value_at as usize);
            let name = HeaderName::from_bytes(&head[name_at..name_at + name_len as usize])
                .map_err(|_| protocol("bad header name"))?;
            let value =
                HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len as usize))
                    .map_err(|_| protocol("bad header value"))?;
            map.append(name, value);
        }
        for name in listed {
            map.remove(name);
        }
        let (framing, reusable) = framing(status, &fields, head_only)?;
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.headers = map;
        return Ok(Some(Head {
            parts,
            framing,
            reusable,
        }));
    }
}

/// Fold one `Content-Length` value (a list is allowed if its items agree) into what came before.
fn content_length(
    value: &[u8],
    before: Result<Option<u64>, &'static str>,
) -> Result<Option<u64>, &'static str> {
    let mut length = before?;
    for item in value.split(|&b| b == b',') {
        let n = parse_decimal(trim(item)).ok_or("bad content-length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting content-length");
        }
        length = Some(n);
    }
    Ok(length)
}

/// How the body after a head is framed (RFC 9112 section 6.3), and whether the connection may
/// be reused after it.
fn framing(
    status: StatusCode,
    fields: &Fields,
    head_only: bool,
) -> Result<(Framing, bool), BoxError> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(protocol("unexpected protocol switch"));
    }
    let reusable = !fields.close;
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), reusable));
    }
    match (fields.chunked_last, fields.length) {
        // Chunked only as the last coding; anything else runs to the close. A Content-Length
        // beside it is ignored, and the connection not trusted after.
        (Some(true), _) => Ok((
            Framing::Chunked(Chunk::Size),
            reusable && !fields.has_length,
        )),
        (Some(false), _) => Ok((Framing::Close, false)),
        (None, Ok(Some(n))) => Ok((Framing::Length(n), reusable)),
        (None, Ok(None)) => Ok((Framing::Close, false)),
        (None, Err(what)) => Err(protocol(what)),
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &bytes[s..=e],
        _ => &[],
    }
}

fn last_token_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| trim(t).eq_ignore_ascii_case(b"chunked"))
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// A response body still on its connection.
pub struct Reader {
    conn: Conn,
    framing: Framing,
    reusable: bool,
}

impl Reader {
    /// Whether the body has been read to its end.
    pub fn is_end(&self) -> bool {
        matches!(self.framing, Framing::Length(0))
    }

    /// Exactly the bytes left, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.framing {
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }

    /// The connection, once the body has ended and the connection can be reused.
    pub fn into_conn(self) -> Option<Conn> {
        (self.is_end() && self.reusable && self.conn.0.read.is_empty()).then_some(self.conn)
    }

    /// The next piece of the body; `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BoxError>>> {
        loop {
            let read = &mut self.conn.0.read;
            match self.framing {
                Framing::Length(0) => return Poll::Ready(None),
                Framing::Length(n) => {
                    if !read.is_empty() {
                        let take = read.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                        self.framing = Framing::Length(n - take as u64);
                        return Poll::Ready(Some(Ok(read.split_to(take).freeze())));
                    }
                }
                Framing::Close => {
                    if !read.is_empty() {
                        return Poll::Ready(Some(Ok(read.split().freeze())));
                    }
                }
                Framing::Chunked(state) => match chunk_step(read, state) {
                    Ok(Step::Data(bytes, next)) => {
                        self.framing = Framing::Chunked(next);
                        return Poll::Ready(Some(Ok(bytes)));
                    }
                    Ok(Step::Next(next)) => {
                        self.framing = Framing::Chunked(next);
                        continue;
                    }
                    Ok(Step::End) => {
                        self.framing = Framing::Length(0);
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                },
            }
            if read.capacity() - read.len() < 1024 {
                read.reserve(READ_SIZE);
            }
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.conn.0.io),
                cx,
                read
            )) {
                Ok(0) if self.framing == Framing::Close => {
                    self.framing = Framing::Length(0);
                    self.reusable = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(closed()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}

enum Step {
    /// Body bytes, and the state after them.
    Data(Bytes, Chunk),
    /// Framing consumed; go on in this state.
    Next(Chunk),
    /// The message ended.
    End,
    /// More bytes are needed.
    More,
}

/// One step of the chunked decoder over what has been read.
fn chunk_step(read: &mut BytesMut, state: Chunk) -> Result<Step, BoxError> {
    match state {
        Chunk::Size => {
            let Some(line) = take_line(read)? else {
                return Ok(Step::More);
            };
            // chunk-size [ BWS ";" extensions ]: the extensions are ignored.
            let size = line[..]
                .split(|&b| b == b';')
                .next()
                .map(trim)
                .unwrap_or_default();
            if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
                return Err(protocol("bad chunk size"));
            }
            let n = size.iter().fold(0u64, |n, &d| {
                n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
            });
            Ok(Step::Next(if n == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(n)
            }))
        }
        Chunk::Data(n) => {
            if read.is_empty() {
                return Ok(Step::More);
            }
            let take = read.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let rest = n - take as u64;
            let next = if rest == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(rest)
            };
            Ok(Step::Data(read.split_to(take).freeze(), next))
        }
        Chunk::DataEnd => {
            if read.len() < 2 {
                return Ok(Step::More);
            }
            if &read[..2] != b"\r\n" {
                return Err(protocol("chunk data not followed by CRLF"));
            }
            read.advance(2);
            Ok(Step::Next(Chunk::Size))
        }
        Chunk::Trailers => match take_line(read)? {
            None => Ok(Step::More),
            Some(line) if line.is_empty() => Ok(Step::End),
            // A trailer field: not forwarded.
            Some(_) => Ok(Step::Next(Chunk::Trailers)),
        },
    }
}

/// Take one CRLF-terminated line off the front of `read`, without its CRLF.
fn take_line(read: &mut BytesMut) -> Result<Option<BytesMut>, BoxError> {
    match read.iter().position(|&b| b == b'\n') {
        Some(at) => {
            if at == 0 || read[at - 1] != b'\r' {
                return Err(protocol("line not ended by CRLF"));
            }
            let mut line = read.split_to(at + 1);
            line.truncate(at - 1);
            Ok(Some(line))
        }
        None if read.len() > MAX_LINE => Err(protocol("chunk line too long")),
        None => Ok(None),
    }
}

/// Decode one answer held whole in memory, as the client reads it off a connection: its head
/// (hop-by-hop fields left out), its body, and whether the connection could be reused. For the
/// fuzzer (`fuzz/fuzz_targets/h1_answer.rs`); the client itself reads through [`Reader`].
#[doc(hidden)]
pub fn decode(
    wire: &[u8],
    head_only: bool,
) -> Result<(http::response::Parts, Vec<u8>, bool), BoxError> {
    let mut read = BytesMut::from(wire);
    let Some(head) = parse_head(&mut read, head_only)? else {
        return Err(closed());
    };
    let mut body = Vec::new();
    match head.framing {
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| closed())?;
            body.extend_from_slice(read.get(..n).ok_or_else(closed)?);
        }
        Framing::Close => body.extend_from_slice(&read),
        Framing::Chunked(mut state) => loop {
            match chunk_step(&mut read, state)? {
                Step::Data(bytes, next) => {
                    body.extend_from_slice(&bytes);
                    state = next;
                }
                Step::Next(next) => state = next,
                Step::End => break,
                Step::More => return Err(closed()),
            }
        },
    }
    Ok((head.parts, body, head.reusable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(wire: &[u8]) -> Result<Vec<u8>, BoxError> {
        let mut read = BytesMut::from(wire);
        let mut state = Chunk::Size;
        let mut body = Vec::new();
        loop {
            match chunk_step(&mut read, state)? {
                Step::Data(bytes, next) => {
                    body.extend_from_slice(&bytes);
                    state = next;
                }
                Step::Next(next) => state = next,
                Step::End => return Ok(body),
                Step::More => return Err(protocol("incomplete")),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let body = decode(
            b"4\r\nWiki\r\n6;name=x\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nx-t: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(body, b"Wikipedia in \r\n\r\nchunks.");
        assert_eq!(decode(b"0\r\n\r\n").unwrap(), b"");
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for wire in [
            &b"x\r\nabc\r\n0\r\n\r\n"[..],
            b"3\r\nabcX\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"ffffffffffffffff1\r\n",
            b"\r\n",
        ] {
            assert!(decode(wire).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }

    #[test]
    fn hex_sizes() {
        let mut buf = [0u8; 16];
        assert_eq!(hex(0, &mut buf), b"0");
        assert_eq!(hex(255, &mut buf), b"ff");
        assert_eq!(hex(u64::MAX, &mut buf), b"ffffffffffffffff");
    }

    fn framing(head: &str, head_only: bool) -> Result<(Framing, bool), ()> {
        let mut read = BytesMut::from(head.as_bytes());
        let head = parse_head(&mut read, head_only)
            .map_err(|_| ())?
            .ok_or(())?;
        Ok((head.framing, head.reusable))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
                false,
                Ok((Framing::Length(12), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
                true,
                Ok((Framing::Length(0), true)),
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                Ok((Framing::Length(0), true)),
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false,
                Ok((Framing::Length(0), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
                Ok((Framing::Chunked(Chunk::Size), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
                false,
                Ok((Framing::Chunked(Chunk::Size), false)),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                false,
                Ok((Framing::Close, false)),
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                false,
                Ok((Framing::Close, false)),
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 1\r\n\r\n",
                false,
                Ok((Framing::Length(1), false)),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n",
                false,
                Ok((Framing::Length(5), true)),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                false,
                Err(()),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                false,
                Err(()),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
                false,
                Err(()),
            ),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", false, Err(())),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                false,
                Ok((Framing::Length(1), false)),
            ),
            ("HTTP/1.1 2000 OK\r\n\r\n", false, Err(())),
            ("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false, Err(())),
        ];
        for (head, head_only, expected) in cases {
            assert_eq!(
                framing(head, head_only),
                expected,
                "{head:?} head_only={head_only}"
            );
        }
    }

    #[test]
    fn interim_answers_are_skipped_and_a_partial_head_waits() {
        let mut read = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n{}"[..],
        );
        let parts = parse_head(&mut read, false).unwrap().unwrap().parts;
        assert_eq!(parts.status, 201);
        assert_eq!(parts.headers["x-a"], "1");
        assert_eq!(&read[..], b"{}");

        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
        assert!(parse_head(&mut partial, false).unwrap().is_none());
        assert_eq!(partial.len(), 27);
    }

    #[test]
    fn a_request_head_carries_the_host_and_its_own_framing() {
        let host = HeaderValue::from_static("api.example");
        let cases = [
            (
                "GET",
                ProxyBody::empty(),
                "GET /a?b=1 HTTP/1.1\r\nhost: api.example\r\nx-k: v\r\ncontent-length: 0\r\n\r\n",
            ),
            (
                "PUT",
                ProxyBody::empty(),
                "PUT /a?b=1 HTTP/1.1\r\nhost: api.example\r\nx-k: v\r\ncontent-length: 0\r\n\r\n",
            ),
            (
                "PUT",
                ProxyBody::full(Bytes::from_static(b"{}")),
                "PUT /a?b=1 HTTP/1.1\r\nhost: api.example\r\nx-k: v\r\ncontent-length: 2\r\n\r\n{}",
            ),
        ];
        for (method, body, wire) in cases {
            let mut request = Request::new(body);
            *request.method_mut() = method.parse().unwrap();
            *request.uri_mut() = "/a?b=1".parse().unwrap();
            let headers = request.headers_mut();
            headers.insert("x-k", HeaderValue::from_static("v"));
            headers.insert(header::HOST, HeaderValue::from_static("client"));
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            let mut buf = Vec::new();
            let out = Outgoing::new(&mut buf, &request, &host);
            assert_eq!(String::from_utf8(buf).unwrap(), wire);
            assert_eq!(out.body_in_head, method == "PUT" && wire.ends_with("{}"));
        }
    }
}
