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

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, Version};
use http_body::Body;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use super::{BoxError, ProxyBody};

mod answer;

pub use answer::decode;
use answer::*;

/// A connection as the connector returns it, seen through tokio's I/O traits.
pub type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// Bytes read at a time.
const READ_SIZE: usize = 16 * 1024;
/// Body bytes up to this size are copied behind the request head: one write instead of two.
const COALESCE: usize = 8 * 1024;

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
    /// The field names of the last answer (see [`answer::Names`]).
    names: answer::Names,
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
            names: answer::Names::default(),
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
                (&mut self.0.read, &mut self.0.names),
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
    (read, names): (&mut BytesMut, &mut Names),
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
    match ready!(poll_head(io, read, names, out.head_only, cx)) {
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
    names: &mut Names,
    head_only: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, BoxError>> {
    loop {
        if !read.is_empty() {
            if let Some(head) = parse_head(read, head_only, names)? {
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

#[cfg(test)]
mod tests;
