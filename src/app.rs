//! The gateway process: the current policy generation ([`Gateway`]), the proxy listener (accept,
//! HTTP/1.1 or HTTP/2 by the first bytes, each connection under [`crate::conn`]'s deadlines), the
//! admin listener, and the drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::proxy::Runtime;
use crate::{access_log, admin, conn, metrics, proxy, request};

/// State shared by every connection: the current generation and the drain flags.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    ids: proxy::RequestIds,
    /// `/readyz`: 503 once draining (SIGTERM received).
    readiness: Arc<admin::Readiness>,
    /// Shown every request about to be forwarded (tests).
    observer: std::sync::OnceLock<request::Observer>,
}

impl Gateway {
    pub fn new(runtime: Runtime) -> Arc<Gateway> {
        metrics::handle();
        metrics::policy_info(&runtime.policy.digest, &runtime.policy.digest);
        metrics::digest_not_after([], runtime.policy.digest_deadlines());
        Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            ids: proxy::RequestIds::new(),
            readiness: Arc::default(),
            observer: std::sync::OnceLock::new(),
        })
    }

    /// The current generation.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Swap in a new generation; in-flight requests finish on the one they started with.
    pub fn swap(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    pub fn is_draining(&self) -> bool {
        self.readiness.is_draining()
    }

    pub fn set_draining(&self) {
        self.readiness.drain();
    }

    /// Show `observer` what was judged of every request before it is forwarded (the
    /// differential test compares it with what the upstream read). Set once; later calls are
    /// ignored.
    pub fn observe(&self, observer: request::Observer) {
        let _ = self.observer.set(observer);
    }
}

/// The protocol a client speaks, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (the connection preface).
    Http2,
}

/// Wait until the client has sent enough to choose the protocol: the 24-byte HTTP/2 preface, or
/// bytes that cannot start it. `None` when the client closed first. The bytes stay in the socket
/// (peeked), so the chosen codec reads them itself, with no rewind buffer in between.
async fn first_bytes(stream: &tokio::net::TcpStream) -> Option<Protocol> {
    const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; 24];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) if buf[..n] != PREFACE[..n] => return Some(Protocol::Http1),
            Ok(n) if n >= PREFACE.len() => return Some(Protocol::Http2),
            // A partial preface: rare (it fits one segment); poll again shortly.
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Serve the proxy on `listener` (and the admin endpoints on `admin`, when given) until
/// `shutdown` completes; then drain as the policy's `shutdown` section says.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    if let Some(admin) = admin {
        tokio::spawn(admin::serve(gateway.readiness.clone(), admin));
    }
    let flusher = access_log::installed().then(|| tokio::spawn(access_log::run_flusher()));
    let janitor = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            // Every 5 s: histogram upkeep; every 30 s: idle rate-limit buckets.
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            for round in 0u64.. {
                tick.tick().await;
                metrics::upkeep();
                if round % 6 == 5 {
                    gateway.runtime().limiters.evict_idle();
                }
            }
        }
    });
    // The head deadline and graceful shutdown are the sweep's (`conn`), not hyper's timers.
    let connections = Arc::new(conn::Connections::default());
    let sweeper = tokio::spawn({
        let gateway = gateway.clone();
        let connections = connections.clone();
        async move {
            let timeouts = || {
                let policy = &gateway.runtime().policy;
                (policy.client.header_timeout, policy.upstream.timeout)
            };
            let (mut head, mut upstream) = timeouts();
            loop {
                // Often enough for both: the sweep also ends HTTP/1.1 requests past their
                // upstream deadline (`upstream/deadline.rs`).
                tokio::time::sleep(conn::sweep_interval(head.min(upstream))).await;
                // Read each time: a reload may have changed them.
                (head, upstream) = timeouts();
                // Each cut connection logs its own end.
                connections.sweep(std::time::Instant::now(), head);
            }
        }
    });
    let mut h1 = http1::Builder::new();
    // max_buf_size alone is a soft bound on the head: one read can fill the buffer past it and
    // a head that arrived whole is then accepted. max_header_size is checked on every parse.
    h1.header_read_timeout(None)
        .max_buf_size(64 * 1024)
        .max_header_size(64 * 1024);
    // HTTP/2 gets the same head deadline and idle timeout as HTTP/1.1 from the sweep (`conn`).
    // The flood limits below are h2's defaults today, set here so that they stay what they are.
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(256)
        // A connection whose ping goes unanswered is closed (a dead peer holding streams).
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        // Rapid reset (CVE-2023-44487; the limit itself came with CVE-2023-26964): streams the
        // client resets before hyper took them off the accept queue do not count against
        // max_concurrent_streams; the 21st such stream is answered with GOAWAY ENHANCE_YOUR_CALM.
        .max_pending_accept_reset_streams(20)
        // Streams h2 itself must reset because the client broke the protocol on them (malformed
        // headers, flow-control errors; RUSTSEC-2024-0003, and the "MadeYouReset" variant of rapid
        // reset, CVE-2025-8671): past 1024 on one connection, GOAWAY ENHANCE_YOUR_CALM.
        .max_local_error_reset_streams(1024)
        // CONTINUATION flood (CVE-2024-27316): h2 decodes each header block as it arrives and
        // refuses a list over this size; it also bounds the CONTINUATION frames of one block by
        // it (64 KiB / 16 KiB frames + 25%, at least 5), then GOAWAY ENHANCE_YOUR_CALM. A block
        // that stops arriving is the head deadline's.
        .max_header_list_size(64 * 1024)
        .max_frame_size(16 * 1024);
    // SETTINGS and PING floods have no knob: h2 holds one received SETTINGS and one pending pong,
    // writes the ACK before it reads the next frame, and stops reading while its send buffer is
    // full; a client that does not read its ACKs stalls itself. With no request started, the head
    // deadline ends such a connection.
    let builders = Arc::new((h1, h2));
    // Every connection task holds a sender; the receiver sees the channel close when the last
    // one has ended.
    let (alive, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);

    tokio::pin!(shutdown);
    let mut drain: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let accept = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown, if drain.is_none() => {
                gateway.set_draining();
                let delay = gateway.runtime().policy.shutdown.drain_delay;
                tracing::info!(?delay, "shutdown requested: /readyz is 503, still accepting");
                drain = Some(Box::pin(tokio::time::sleep(delay)));
                continue;
            }
            () = async { if let Some(d) = drain.as_mut() { d.await } }, if drain.is_some() => break,
        };
        let (stream, _peer) = match accept {
            Ok(conn) => conn,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = connections.add(std::time::Instant::now());
        let gw = gateway.clone();
        let header_timeout = gw.runtime().policy.client.header_timeout;
        let builders = builders.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            // The protocol is chosen within the header timeout: a client that sends nothing
            // must not hold a connection forever (hyper-util's auto builder has no such timer).
            let Ok(Some(protocol)) =
                tokio::time::timeout(header_timeout, first_bytes(&stream)).await
            else {
                return;
            };
            let io = TokioIo::new(stream);
            let tracker = shared.clone();
            // HTTP/1.1 runs the request in this task: the sweep can time its upstream wait.
            let swept = protocol == Protocol::Http1;
            let service = service_fn(move |request| {
                let gw = gw.clone();
                // Counted in progress until hyper drops the response body.
                let token = tracker.request();
                async move {
                    let watch = swept.then(|| token.watch());
                    let response =
                        proxy::handle(gw.runtime(), &gw.ids, gw.observer.get(), watch, request)
                            .await;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|body| conn::Tracked::new(body, token)),
                    )
                }
            });
            let (h1, h2) = &*builders;
            let ended = match protocol {
                Protocol::Http1 => {
                    let conn = h1.serve_connection(io, service);
                    conn::Guarded::new(conn, shared, conn::OnIdle::Cut).await
                }
                Protocol::Http2 => {
                    let conn = h2.serve_connection(io, service);
                    conn::Guarded::new(conn, shared, conn::OnIdle::GoAway).await
                }
            };
            match ended {
                conn::Ended::Closed(Err(error)) => {
                    tracing::debug!(%error, "connection ended with an error");
                }
                conn::Ended::HeadTimeout => {
                    tracing::debug!("connection cut: no request head within the timeout");
                }
                conn::Ended::Closed(Ok(())) => {}
            }
        });
    }
    janitor.abort();
    let timeout = gateway.runtime().policy.shutdown.timeout;
    tracing::info!(
        ?timeout,
        "stopped accepting; waiting for in-flight requests"
    );
    connections.drain();
    drop(alive);
    if tokio::time::timeout(timeout, all_ended.recv())
        .await
        .is_err()
    {
        tracing::warn!("shutdown timeout reached with requests still in flight");
    }
    sweeper.abort();
    if let Some(flusher) = flusher {
        flusher.abort();
    }
    access_log::flush();
}
