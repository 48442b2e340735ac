//! Connections to the one upstream origin: idle HTTP/1.1 connections in a lock-free queue, or one
//! shared HTTP/2 connection when ALPN chose h2.
//!
//! hyper-util's legacy client did this job before. Per request it hashed a pool key, took the
//! pool's lock, and spawned a task that waited for the connection to become ready again. Here the
//! pool serves a single origin, and an HTTP/1.1 connection comes back when its response has been
//! read to the end: at once when the body came whole with the head, else when [`UpstreamBody`]
//! ends. No hashing, no lock, no task per request; HTTP/1.1 connections have no task at all
//! (`h1.rs` runs them in the request's task). HTTP/2 stays with hyper's client.
//!
//! Idle connections are dropped when a checkout finds them closed or idle for longer than
//! `IDLE_TIMEOUT`, or when the queue is full. A request that comes back unsent from a reused
//! connection (it went stale while idle) is tried on another; one that may have been written
//! never is here (see `upstream::send` for the GET retry).

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::header::{self, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_service::Service;

use super::h1;
use super::{BoxError, ProxyBody};

/// How long an HTTP/1.1 connection may wait in the pool; shorter than common server keep-alive
/// timeouts (nginx 75 s, cloud load balancers 60 s), so the upstream rarely closes one under us.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle HTTP/1.1 connections kept at most.
const MAX_IDLE: usize = 256;

/// Why a request got no response.
#[derive(Debug)]
pub enum Error {
    /// TCP connect, TLS or the HTTP/2 handshake failed: nothing was sent.
    Connect(BoxError),
    /// The request failed on an established connection.
    Send(BoxError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(e) => write!(f, "connect: {e}"),
            Error::Send(e) => write!(f, "send: {e}"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Connect(e) => Some(&**e),
            Error::Send(e) => Some(&**e),
        }
    }
}

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: what the connector dials.
    target: Uri,
    scheme: Scheme,
    authority: Authority,
    /// The `Host` header of HTTP/1.1 requests.
    host: HeaderValue,
    idle: ArrayQueue<Idle>,
    h2: ArcSwapOption<http2::SendRequest<ProxyBody>>,
}

struct Idle {
    conn: h1::Conn,
    since: Instant,
}

enum Conn {
    H1(h1::Conn),
    H2(Arc<http2::SendRequest<ProxyBody>>),
}

impl Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        scheme: Scheme,
        authority: Authority,
    ) -> Result<Pool, String> {
        let target = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| e.to_string())?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        Ok(Pool {
            connector,
            target,
            scheme,
            authority,
            host,
            idle: ArrayQueue::new(MAX_IDLE),
            h2: ArcSwapOption::empty(),
        })
    }

    /// Whether this pool dials `scheme://authority`.
    pub fn serves(&self, scheme: &Scheme, authority: &Authority) -> bool {
        self.scheme == *scheme && self.authority == *authority
    }

    /// Send a request whose URI is in origin form (`/path?query`). An HTTP/1.1 connection comes
    /// back to the pool when its response has been read to the end.
    ///
    /// The request is lent, not given: after a failure its head is still there to send again,
    /// and so is its body unless some of it went out.
    ///
    /// `now` is the caller's clock reading from just before (no clock read of the pool's own):
    /// it times the idle connections, where a connection idle since the start of the request
    /// that gave it back only looks older than it is.
    pub async fn send(
        self: &Arc<Self>,
        request: &mut Request<ProxyBody>,
        now: Instant,
    ) -> Result<Response<UpstreamBody>, Error> {
        loop {
            let (conn, reused) = match self.checkout(now).await {
                Some(conn) => (conn, true),
                // Boxed: a TLS handshake's state is large, and most requests find a connection.
                None => (Box::pin(self.connect()).await?, false),
            };
            match conn {
                Conn::H1(conn) => match conn.send(request, &self.host).await {
                    Ok(h1::Answer::Whole(response, conn)) => {
                        if let Some(conn) = conn {
                            self.put_back(conn, now);
                        }
                        return Ok(response.map(UpstreamBody::whole));
                    }
                    Ok(h1::Answer::Streaming(response)) => {
                        return Ok(response
                            .map(|reader| UpstreamBody(Kind::H1(Some(reader), Arc::clone(self)))))
                    }
                    // Nothing written, on a connection that went bad while idle: another one
                    // (this ends with a fresh connect at worst).
                    Err(h1::SendError::Unsent(_)) if reused => {}
                    Err(h1::SendError::Unsent(e)) => return Err(Error::Send(e.into())),
                    Err(h1::SendError::Failed(e)) => return Err(Error::Send(e)),
                },
                Conn::H2(shared) => {
                    let mut sender = (*shared).clone();
                    match sender.try_send_request(self.h2_request(request)).await {
                        Ok(response) => {
                            let mut response = response.map(|b| UpstreamBody(Kind::H2(b)));
                            // The HTTP/1.1 client leaves these out as it parses; hyper's keeps
                            // them.
                            super::strip_hop_by_hop(response.headers_mut());
                            return Ok(response);
                        }
                        Err(mut failed) => {
                            // Whatever failed, the next request should not wait on this one.
                            self.h2.compare_and_swap(&Some(shared), None);
                            match failed.take_message() {
                                Some(back) if reused => *request.body_mut() = back.into_body(),
                                _ => return Err(Error::Send(failed.into_error().into())),
                            }
                        }
                    }
                }
            }
        }
    }

    /// A live connection: the shared HTTP/2 one, or the oldest idle HTTP/1.1 one that is still
    /// open and fresh.
    async fn checkout(&self, now: Instant) -> Option<Conn> {
        if let Some(shared) = self.h2.load_full() {
            if !shared.is_closed() {
                return Some(Conn::H2(shared));
            }
            self.h2.compare_and_swap(&Some(shared), None);
        }
        while let Some(Idle { mut conn, since }) = self.idle.pop() {
            if now.saturating_duration_since(since) <= IDLE_TIMEOUT && conn.is_open() {
                return Some(Conn::H1(conn));
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(Error::Connect)?;
        let io = connector
            .call(self.target.clone())
            .await
            .map_err(Error::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|e| Error::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            let shared = Arc::new(sender);
            self.h2.store(Some(Arc::clone(&shared)));
            Ok(Conn::H2(shared))
        } else {
            Ok(Conn::H1(h1::Conn::new(TokioIo::new(io))))
        }
    }

    /// The request as hyper's HTTP/2 client takes it: owned, with its body, and with scheme and
    /// authority in the URI (they travel as pseudo-headers, not in `Host`).
    fn h2_request(&self, request: &mut Request<ProxyBody>) -> Request<ProxyBody> {
        let mut owned = Request::new(std::mem::replace(request.body_mut(), ProxyBody::empty()));
        *owned.method_mut() = request.method().clone();
        *owned.headers_mut() = request.headers().clone();
        owned.headers_mut().remove(header::HOST);
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = request.uri().path_and_query().cloned();
        // Scheme, authority and a path: always a valid URI.
        *owned.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| self.target.clone());
        owned
    }

    /// Idle from `since` on (earlier than now makes it only look older, never fresher).
    fn put_back(&self, conn: h1::Conn, since: Instant) {
        // A full queue drops the connection: enough are idle already.
        let _ = self.idle.push(Idle { conn, since });
    }
}

/// A response body from the upstream. An HTTP/1.1 body still on its connection puts the
/// connection back in the pool when it has been read to its end; dropped before that, the
/// connection is closed with it.
pub struct UpstreamBody(Kind);

enum Kind {
    /// Read with the head.
    Whole(Option<Bytes>),
    /// `None` once ended.
    H1(Option<h1::Reader>, Arc<Pool>),
    H2(Incoming),
}

impl UpstreamBody {
    fn whole(bytes: Bytes) -> Self {
        UpstreamBody(Kind::Whole((!bytes.is_empty()).then_some(bytes)))
    }
}

/// Bytes the gateway holds whole: its own answers, or an upstream answer it read.
impl From<Bytes> for UpstreamBody {
    fn from(bytes: Bytes) -> Self {
        UpstreamBody::whole(bytes)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Kind::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::H1(slot, pool) => {
                let Some(reader) = slot else {
                    return Poll::Ready(None);
                };
                let polled = std::task::ready!(reader.poll_data(cx));
                match &polled {
                    Some(Ok(_)) if !reader.is_end() => {}
                    // Ended (or failed): a clean end gives the connection back.
                    _ => {
                        if let Some(conn) = slot.take().and_then(h1::Reader::into_conn) {
                            pool.put_back(conn, Instant::now());
                        }
                    }
                }
                Poll::Ready(polled.map(|r| r.map(Frame::data)))
            }
            Kind::H2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Whole(bytes) => bytes.is_none(),
            Kind::H1(reader, _) => reader.as_ref().is_none_or(h1::Reader::is_end),
            Kind::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::H1(reader, _) => match reader.as_ref().map_or(Some(0), h1::Reader::remaining) {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            Kind::H2(body) => body.size_hint(),
        }
    }
}
