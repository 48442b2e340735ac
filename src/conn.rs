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
    /// and time a new wait. Forget the ones that ended. Returns how many were signalled.
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

/// How often to sweep for a head timeout: a quarter of it, and not more than every 10 ms.
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
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    fn signal(conn: &Shared) -> u8 {
        conn.signal.load(Ordering::Acquire)
    }

    #[test]
    fn a_connection_that_never_sends_a_head_is_cut_after_the_timeout() {
        let all = Connections::default();
        let t0 = Instant::now();
        let conn = all.add(t0);
        assert_eq!(all.sweep(t0 + T - Duration::from_millis(1), T), 0);
        assert_eq!(signal(&conn), 0);
        assert_eq!(all.sweep(t0 + T, T), 1);
        assert_eq!(signal(&conn), CUT);
        // Cut connections leave the list: a second sweep does not cut them again.
        assert_eq!(all.sweep(t0 + 3 * T, T), 0);
        assert!(all.is_empty());
    }

    #[test]
    fn a_request_in_progress_is_never_cut() {
        let all = Connections::default();
        let t0 = Instant::now();
        let conn = all.add(t0);
        let token = conn.request();
        for i in 1..10 {
            assert_eq!(all.sweep(t0 + i * T, T), 0);
        }
        assert_eq!(signal(&conn), 0);
        drop(token);
        // Idle again from the first sweep that sees it so, and asked to close a whole timeout
        // after; it served a request, so it may say goodbye (HTTP/2 GOAWAY).
        let seen = t0 + 10 * T;
        assert_eq!(all.sweep(seen, T), 0);
        assert_eq!(all.sweep(seen + T - Duration::from_millis(1), T), 0);
        assert_eq!(all.sweep(seen + T, T), 1);
        assert_eq!(signal(&conn), IDLE);
        // Still there a timeout later: cut.
        assert_eq!(all.sweep(seen + 2 * T - Duration::from_millis(1), T), 0);
        assert_eq!(all.sweep(seen + 2 * T, T), 1);
        assert_eq!(signal(&conn), IDLE | CUT);
        assert!(all.is_empty());
    }

    #[test]
    fn a_request_finished_between_sweeps_restarts_the_wait() {
        let all = Connections::default();
        let t0 = Instant::now();
        let conn = all.add(t0);
        assert_eq!(all.sweep(t0 + T / 2, T), 0);
        // A whole request between two sweeps: neither sweep saw it in progress.
        drop(conn.request());
        assert_eq!(
            all.sweep(t0 + T, T),
            0,
            "the finished request restarts the wait"
        );
        assert_eq!(all.sweep(t0 + 2 * T - Duration::from_millis(1), T), 0);
        assert_eq!(all.sweep(t0 + 2 * T, T), 1);
        assert_eq!(signal(&conn), IDLE);
    }

    #[test]
    fn a_connection_asked_to_close_may_finish_a_request_and_is_then_cut() {
        let all = Connections::default();
        let t0 = Instant::now();
        let conn = all.add(t0);
        drop(conn.request());
        assert_eq!(all.sweep(t0, T), 0);
        assert_eq!(all.sweep(t0 + T, T), 1);
        assert_eq!(signal(&conn), IDLE);
        // A request that was on the wire when the GOAWAY went out: never cut while in progress.
        let token = conn.request();
        assert_eq!(all.sweep(t0 + 5 * T, T), 0);
        drop(token);
        // Then one whole timeout idle, and cut without being asked again.
        let seen = t0 + 6 * T;
        assert_eq!(all.sweep(seen, T), 0);
        assert_eq!(all.sweep(seen + T - Duration::from_millis(1), T), 0);
        assert_eq!(all.sweep(seen + T, T), 1);
        assert_eq!(signal(&conn), IDLE | CUT);
    }

    #[test]
    fn ended_connections_are_forgotten_and_drain_flags_the_rest() {
        let all = Connections::default();
        let t0 = Instant::now();
        let a = all.add(t0);
        let b = all.add(t0);
        drop(b);
        assert_eq!(all.len(), 1);
        all.drain();
        assert_eq!(signal(&a), DRAIN);
        all.sweep(t0, T);
        assert_eq!(all.entries.lock().unwrap().list.len(), 1);
    }

    #[test]
    fn short_connections_between_sweeps_do_not_pile_up() {
        let all = Connections::default();
        let t0 = Instant::now();
        let open: Vec<_> = (0..100).map(|_| all.add(t0)).collect();
        for _ in 0..100_000 {
            drop(all.add(t0));
        }
        let held = all.entries.lock().unwrap().list.len();
        assert!(
            held <= 2 * 100 + 64,
            "{held} entries for 100 open connections"
        );
        assert_eq!(all.len(), open.len());
    }

    #[test]
    fn the_sweep_interval_is_a_quarter_of_the_timeout_and_at_least_10ms() {
        assert_eq!(sweep_interval(T), Duration::from_millis(2500));
        assert_eq!(
            sweep_interval(Duration::from_millis(8)),
            Duration::from_millis(10)
        );
    }
}
