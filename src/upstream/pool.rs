//! Connections to the one upstream origin: idle HTTP/1.1 connections in a lock-free queue, or one
//! shared HTTP/2 connection when ALPN chose h2.
//!
//! hyper-util's legacy client did this job before. Per request it hashed a pool key, took the
//! pool's lock, and spawned a task that waited for the connection to become ready again. Here the
//! pool serves a single origin, and the response body hands its HTTP/1.1 connection back when it
//! ends ([`UpstreamBody`]): no hashing, no lock, no task per request.
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
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

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
    Send(hyper::Error),
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
            Error::Send(e) => Some(e),
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
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

enum Conn {
    H1(http1::SendRequest<ProxyBody>),
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

    /// Send a request whose URI is in origin form (`/path?query`). The response body returns an
    /// HTTP/1.1 connection to the pool when it has been read to its end.
    pub async fn send(
        self: &Arc<Self>,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, Error> {
        loop {
            let (conn, reused) = match self.checkout().await {
                Some(conn) => (conn, true),
                // Boxed: a TLS handshake's state is large, and most requests find a connection.
                None => (Box::pin(self.connect()).await?, false),
            };
            let failed = match conn {
                Conn::H1(mut sender) => {
                    request
                        .headers_mut()
                        .insert(header::HOST, self.host.clone());
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            let lease = Lease {
                                pool: Arc::clone(self),
                                sender,
                            };
                            return Ok(response.map(|body| UpstreamBody::new(body, Some(lease))));
                        }
                        Err(failed) => failed,
                    }
                }
                Conn::H2(shared) => {
                    self.absolute(&mut request);
                    let mut sender = (*shared).clone();
                    match sender.try_send_request(request).await {
                        Ok(response) => {
                            return Ok(response.map(|body| UpstreamBody::new(body, None)))
                        }
                        Err(failed) => {
                            // Whatever failed, the next request should not wait on this one.
                            self.h2.compare_and_swap(&Some(shared), None);
                            failed
                        }
                    }
                }
            };
            let (error, unsent) = split(failed);
            match unsent {
                // Never written, on a connection that went stale while idle: another connection
                // (the failed one is dropped, so this ends with a fresh connect at worst).
                Some(back) if reused => request = origin_form(back),
                _ => return Err(Error::Send(error)),
            }
        }
    }

    /// A live connection: the shared HTTP/2 one, or the oldest idle HTTP/1.1 one that is still
    /// open and fresh.
    async fn checkout(&self) -> Option<Conn> {
        if let Some(shared) = self.h2.load_full() {
            if !shared.is_closed() {
                return Some(Conn::H2(shared));
            }
            self.h2.compare_and_swap(&Some(shared), None);
        }
        while let Some(Idle { mut sender, since }) = self.idle.pop() {
            if sender.is_closed() || since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Normally ready already: the connection takes a new request as soon as it has read
            // the last response to its end, which is when it was put back.
            if sender.ready().await.is_ok() {
                return Some(Conn::H1(sender));
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
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|e| Error::Connect(e.into()))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended");
                }
            });
            Ok(Conn::H1(sender))
        }
    }

    /// HTTP/2 carries scheme and authority in the request's pseudo-headers, not in `Host`.
    fn absolute(&self, request: &mut Request<ProxyBody>) {
        request.headers_mut().remove(header::HOST);
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        // Scheme, authority and a path: always a valid URI.
        *request.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| self.target.clone());
    }

    fn put_back(&self, sender: http1::SendRequest<ProxyBody>) {
        if !sender.is_closed() {
            // A full queue drops the connection: enough are idle already.
            let _ = self.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// A request handed back unsent may carry the HTTP/2 form of its URI.
fn origin_form(mut request: Request<ProxyBody>) -> Request<ProxyBody> {
    if request.uri().authority().is_some() {
        if let Some(pq) = request.uri().path_and_query().cloned() {
            if let Ok(uri) = super::origin_form(pq) {
                *request.uri_mut() = uri;
            }
        }
    }
    request
}

fn split(
    mut failed: hyper::client::conn::TrySendError<Request<ProxyBody>>,
) -> (hyper::Error, Option<Request<ProxyBody>>) {
    let unsent = failed.take_message();
    (failed.into_error(), unsent)
}

/// An HTTP/1.1 connection lent to one response.
struct Lease {
    pool: Arc<Pool>,
    sender: http1::SendRequest<ProxyBody>,
}

/// A response body from the upstream. Read to its end, it puts its HTTP/1.1 connection back in
/// the pool; dropped before that, the connection is closed with it.
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Lease>,
}

impl UpstreamBody {
    fn new(body: Incoming, lease: Option<Lease>) -> Self {
        let mut body = UpstreamBody { body, lease };
        if body.body.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(Lease { pool, sender }) = self.lease.take() {
            pool.put_back(sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Err(_))) => this.lease = None,
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
