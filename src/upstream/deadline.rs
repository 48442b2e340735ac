//! The upstream timeout of a request served on an HTTP/1.1 client connection, without a timer.
//!
//! `tokio::time::timeout` registers an entry in the runtime's timer wheel when the request is
//! sent and removes it when the answer's head is in: two passes through the timer driver's lock
//! per request, plus a clock read for the deadline. On an HTTP/1.1 client connection the request
//! runs inside the connection's task, one at a time, so its deadline can instead sit in the
//! connection's [`Watch`] (one atomic store to arm, one to disarm), where the connection sweep
//! (`conn.rs`, at least four times per upstream timeout) reads it: past it, the sweep marks it
//! expired and wakes the connection's task, which polls the request, which answers 504 as the
//! timer would. The answer comes between 1x and 1.25x the timeout after the send (the timer: 1x).
//!
//! HTTP/2 client connections run each request in a task of its own, which a wake of the
//! connection would not reach: they keep the timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The origin of [`nanos`]: set on first use, which is before any request's clock reading.
static BASE: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `at` as nanoseconds on a process-wide monotonic scale, never 0 (the [`Watch`]'s "unarmed").
/// u64 nanoseconds last 584 years.
pub fn nanos(at: Instant) -> u64 {
    let since = at.saturating_duration_since(*BASE).as_nanos();
    u64::try_from(since).unwrap_or(u64::MAX - 1).max(1)
}

/// Nothing armed.
const UNARMED: u64 = 0;
/// The armed deadline passed, seen by a sweep.
const EXPIRED: u64 = u64::MAX;

/// One connection's upstream deadline (see the module's documentation).
#[derive(Debug, Default)]
pub struct Watch {
    /// [`UNARMED`], a deadline in [`nanos`], or [`EXPIRED`].
    deadline: AtomicU64,
}

impl Watch {
    /// For the sweep: has the armed deadline passed at `now`? `true` once, when it marks it
    /// expired; the caller then wakes the connection's task.
    pub fn expire(&self, now: Instant) -> bool {
        let deadline = self.deadline.load(Ordering::Acquire);
        if deadline == UNARMED || deadline == EXPIRED || deadline > nanos(now) {
            return false;
        }
        // Only the deadline that was read: a request armed since then keeps its own.
        self.deadline
            .compare_exchange(deadline, EXPIRED, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Run `future` until it is ready or `timeout` after `sent` has passed (`None`). Armed from
    /// now until the returned future is done or dropped.
    pub(super) fn within<F: Future>(
        &self,
        sent: Instant,
        timeout: Duration,
        future: F,
    ) -> Within<'_, F> {
        let timeout = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let deadline = nanos(sent).saturating_add(timeout).min(EXPIRED - 1);
        self.deadline.store(deadline, Ordering::Release);
        Within {
            future,
            armed: Armed(self),
        }
    }
}

pin_project_lite::pin_project! {
    /// See [`Watch::within`]. Written out rather than an `async fn`, which would hold the wrapped
    /// future twice in its state and copy it on the first poll.
    pub(super) struct Within<'a, F> {
        #[pin]
        future: F,
        armed: Armed<'a>,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Some(output));
        }
        // The sweep wakes this task after it marks the deadline expired.
        if this.armed.0.deadline.load(Ordering::Acquire) == EXPIRED {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// Disarms its watch when dropped: however the wait ends, the request's future included.
struct Armed<'a>(&'a Watch);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.deadline.store(UNARMED, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_is_seen_expired_by_the_sweep_once_and_ends_the_wait() {
        let watch = Watch::default();
        let sent = Instant::now();
        assert!(!watch.expire(sent), "nothing armed");
        let wait = watch.within(
            sent,
            Duration::from_millis(20),
            std::future::pending::<()>(),
        );
        let mut wait = std::pin::pin!(wait);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert!(!watch.expire(sent + Duration::from_millis(19)));
        assert!(watch.expire(sent + Duration::from_millis(21)));
        assert!(!watch.expire(sent + Duration::from_millis(22)), "once");
        assert_eq!(wait.await, None);
        assert!(
            !watch.expire(sent + Duration::from_secs(1)),
            "disarmed after the wait"
        );
    }

    #[tokio::test]
    async fn a_ready_answer_is_taken_and_disarms() {
        let watch = Watch::default();
        let sent = Instant::now();
        let got = watch
            .within(sent, Duration::from_millis(1), async { 7 })
            .await;
        assert_eq!(got, Some(7));
        assert!(!watch.expire(sent + Duration::from_secs(1)));
    }
}
