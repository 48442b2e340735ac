//! Client connections: the request-head deadline (`client.header_timeout`) and graceful shutdown,
//! kept off the request path.
//!
//! hyper can do both itself, at a price paid on every request: its header timer
//! (`http1::Builder::header_read_timeout`) boxes a new timer-wheel entry for each request head and
//! drops it when the head is in, and hyper-util's graceful watcher checks a channel on every poll
//! of the connection. Together that was about 1,500 instructions of a proxied GET's 33,000.
//!
//! Here each connection counts the requests it started and finished in two atomics, and one
//! [`Connections::sweep`] for the whole process, run every quarter of the head timeout, reads them:
//! a connection with no request in progress that has gone a whole timeout without starting one is
//! cut. Its wait is timed from the sweep that first saw it idle, so a client is cut between 1x and
//! 1.25x the timeout after its last response (or its connection) began the wait, where hyper's
//! timer would cut it at 1x. A cut closes the socket without an answer, as hyper's timer did.
//!
//! HTTP/2 is held to the same deadline: a request is "started" when hyper hands a stream to the
//! service, which it does once the stream's header block is complete (CONTINUATION included). A
//! connection that sends the preface and nothing more, a SETTINGS or PING flood with no request,
//! or a header block that never ends is cut like a silent HTTP/1.1 connection. An HTTP/2
//! connection that has served requests and gone idle is first asked to close ([`OnIdle::GoAway`]:
//! GOAWAY, which lets a request already on the wire finish); if it is still open and idle a whole
//! timeout after that, it is cut, so an idle connection ends 2x-2.5x the timeout after its last
//! response at worst.
//!
//! Graceful shutdown: [`Connections::drain`] flags every connection and wakes it;
//! [`Guarded`] then calls the connection's own `graceful_shutdown` (HTTP/1.1: finish the request
//! in progress, then close; HTTP/2: GOAWAY).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;

const CUT: u8 = 1;
const DRAIN: u8 = 2;
/// Idle a whole timeout after serving requests: close as [`OnIdle`] says.
const IDLE: u8 = 4;

/// What one connection shares with the sweep.
#[derive(Default)]
pub struct Shared {
    /// Requests handed to the service; `started - finished` are in progress.
    started: AtomicU64,
    /// Requests whose response body is gone (written out, or dropped with the connection).
    finished: AtomicU64,
    /// `CUT`, `IDLE` or `DRAIN`, set by the sweep or the drain.
    signal: AtomicU8,
    waker: AtomicWaker,
    /// The upstream deadline of the request in progress (HTTP/1.1), read by the sweep.
    upstream: crate::upstream::Watch,
}

impl Shared {
    /// A request reached the service. The token counts it finished when dropped, which the
    /// caller arranges to happen with the response body ([`Tracked`]).
    pub fn request(self: &Arc<Self>) -> RequestToken {
        self.started.fetch_add(1, Ordering::Relaxed);
        RequestToken(self.clone())
    }

    fn raise(&self, signal: u8) {
        self.signal.fetch_or(signal, Ordering::Release);
        self.waker.wake();
    }
}

/// One request in progress on a connection; see [`Shared::request`].
pub struct RequestToken(Arc<Shared>);

impl RequestToken {
    /// The connection's upstream deadline, for a request that runs in the connection's task
    /// (HTTP/1.1; `upstream/deadline.rs`).
    pub fn watch(&self) -> &crate::upstream::Watch {
        &self.0.upstream
    }
}

impl Drop for RequestToken {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// The sweep's view of one connection.
struct Entry {
    conn: Weak<Shared>,
    /// `finished` when the connection was last seen idle, and since when it has been idle.
    finished: u64,
    idle_since: Option<Instant>,
    /// Raised `IDLE` already: the next whole idle timeout cuts it.
    asked_to_close: bool,
}

/// Every open client connection of the proxy listener.
#[derive(Default)]
pub struct Connections {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    list: Vec<Entry>,
    /// Length at which [`Connections::add`] forgets ended connections itself, so that many short
    /// connections between two sweeps do not pile up (each holds its `Shared` until forgotten).
    prune_at: usize,
}

impl Connections {
    /// Register a connection accepted at `accepted`; it is idle (waiting for its first head) from
    /// then on.
    pub fn add(&self, accepted: Instant) -> Arc<Shared> {
        let shared = Arc::new(Shared::default());
        let mut entries = self.lock();
        if entries.list.len() >= entries.prune_at {
            entries.list.retain(|e| e.conn.strong_count() > 0);
            entries.prune_at = (2 * entries.list.len()).max(64);
        }
        entries.list.push(Entry {
            conn: Arc::downgrade(&shared),
            finished: 0,
            idle_since: Some(accepted),
            asked_to_close: false,
        });
        shared
    }

    /// Act on the connections idle for `timeout` or more at `now`: cut the ones that never
    /// started a request or were asked to close a timeout ago; ask the others to close (`IDLE`),
    /// and time a new wait. Wake the ones whose request is past its upstream deadline. Forget
    /// the ones that ended. Returns how many were signalled.
    pub fn sweep(&self, now: Instant, timeout: Duration) -> usize {
        let mut signalled = 0;
        self.lock().list.retain_mut(|entry| {
            let Some(conn) = entry.conn.upgrade() else {
                return false;
            };
            // `finished` first: a request counted in it was counted in `started` before.
            let finished = conn.finished.load(Ordering::Relaxed);
            let started = conn.started.load(Ordering::Relaxed);
            if started != finished {
                // A request past its upstream deadline is woken, to answer 504.
                if conn.upstream.expire(now) {
                    conn.waker.wake();
                    signalled += 1;
                }
                entry.idle_since = None;
                return true;
            }
            match entry.idle_since {
                Some(since) if entry.finished == finished => {
                    if now.saturating_duration_since(since) >= timeout {
                        signalled += 1;
                        if started == 0 || entry.asked_to_close {
                            conn.raise(CUT);
                            return false;
                        }
                        conn.raise(IDLE);
                        entry.asked_to_close = true;
                        entry.idle_since = Some(now);
                    }
                }
                // Went idle after the last sweep that looked: time the wait from now.
                _ => {
                    entry.finished = finished;
                    entry.idle_since = Some(now);
                }
            }
            true
        });
        signalled
    }

    /// Ask every connection to finish what it is doing and close.
    pub fn drain(&self) {
        for entry in self.lock().list.iter() {
            if let Some(conn) = entry.conn.upgrade() {
                conn.raise(DRAIN);
            }
        }
    }

    /// Connections registered and not yet ended or cut.
    pub fn len(&self) -> usize {
        self.lock()
            .list
            .iter()
            .filter(|e| e.conn.strong_count() > 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The lock guards plain bookkeeping that a panic cannot leave half-written.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How often to sweep for a timeout (the head timeout, or the upstream one when shorter): a
/// quarter of it, and not more than every 10 ms.
pub fn sweep_interval(timeout: Duration) -> Duration {
    (timeout / 4).max(Duration::from_millis(10))
}

/// What a connection that served requests does when it has been idle for the head timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnIdle {
    /// Close the socket (HTTP/1.1: an idle keep-alive connection has nothing to announce).
    Cut,
    /// Shut down gracefully (HTTP/2: GOAWAY, so the client knows not to send on it); the sweep
    /// cuts the connection if it is still idle a timeout later.
    GoAway,
}

pin_project_lite::pin_project! {
    /// A hyper connection that obeys its [`Shared`]'s signals: dropped (socket closed) when cut,
    /// shut down gracefully when drained, and either when idle ([`OnIdle`]).
    pub struct Guarded<C> {
        #[pin]
        conn: C,
        shared: Arc<Shared>,
        on_idle: OnIdle,
        closing: bool,
    }
}

impl<C> Guarded<C> {
    pub fn new(conn: C, shared: Arc<Shared>, on_idle: OnIdle) -> Self {
        Guarded {
            conn,
            shared,
            on_idle,
            closing: false,
        }
    }
}

/// How a guarded connection ended.
#[derive(Debug)]
pub enum Ended<E> {
    /// The connection's own end: closed by either side, or an error.
    Closed(Result<(), E>),
    /// Cut by the sweep: no request head within `client.header_timeout`.
    HeadTimeout,
}

impl<C: GracefulConnection> Future for Guarded<C> {
    type Output = Ended<C::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // Registered before the signal is read, so a signal raised after the read wakes us.
        this.shared.waker.register(cx.waker());
        let signal = this.shared.signal.load(Ordering::Acquire);
        if signal & CUT != 0 || (signal & IDLE != 0 && *this.on_idle == OnIdle::Cut) {
            return Poll::Ready(Ended::HeadTimeout);
        }
        if signal & (DRAIN | IDLE) != 0 && !*this.closing {
            *this.closing = true;
            this.conn.as_mut().graceful_shutdown();
        }
        this.conn.poll(cx).map(Ended::Closed)
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`RequestToken`] until hyper is done with it.
    pub struct Tracked<B> {
        #[pin]
        body: B,
        token: RequestToken,
    }
}

impl<B> Tracked<B> {
    pub fn new(body: B, token: RequestToken) -> Self {
        Tracked { body, token }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
