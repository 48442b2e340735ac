//! HTTP/2 client connections on equal terms with HTTP/1.1: the head deadline from the connection
//! preface to each complete header block, the idle timeout (GOAWAY, then a cut if the client does
//! not close), and the known floods (rapid reset, CONTINUATION, SETTINGS, PING). The attacker
//! side is a raw TCP socket writing frames by hand; nothing here trusts an h2 client library to
//! misbehave on request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use qbgate::sandbox::Fault;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::hostile::h2raw::*;
use crate::support::*;

const LIST: &str = "/chat/Dialog.json";
/// `client.header_timeout` of every gateway here; the sweep runs every quarter of it.
const T: Duration = Duration::from_millis(300);
const SECTIONS: &str = "client: { header_timeout: 300ms }";
/// A connection the sweep cuts is cut between 1x and 1.25x the timeout; the bound leaves room
/// for a loaded test machine.
const CUT_BY: Duration = Duration::from_millis(1500);
/// An idle connection that served requests: GOAWAY after 1x-1.25x, and cut after another
/// 1x-1.25x if the client does not close it.
const IDLE_CUT_BY: Duration = Duration::from_millis(2400);

const NO_ERROR: u32 = 0;
const CANCEL: u32 = 8;
const ENHANCE_YOUR_CALM: u32 = 11;

/// One frame off the wire.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

enum Got {
    Frame(Frame),
    /// EOF or reset.
    Closed,
    /// Nothing more before the deadline.
    Quiet,
}

/// What a connection showed while watched; times are since the watch's reference instant.
#[derive(Debug, Default)]
struct Seen {
    /// (when, last stream id, error code) of each GOAWAY.
    goaways: Vec<(Duration, u32, u32)>,
    closed: Option<Duration>,
    /// Stream -> (when it ended, first byte of its response header block; 0x88 = `:status 200`).
    ended: HashMap<u32, (Duration, u8)>,
    resets: HashMap<u32, u32>,
    pongs: usize,
    settings_acks: usize,
}

impl Seen {
    fn first_goaway(&self) -> Option<(Duration, u32, u32)> {
        self.goaways.first().copied()
    }
}

/// A raw client connection.
struct Conn {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buf: Vec<u8>,
    /// First header block byte per stream, until the stream ends.
    first_byte: HashMap<u32, u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let (read, write) = TcpStream::connect(addr).await.unwrap().into_split();
        Conn {
            read,
            write,
            buf: Vec::new(),
            first_byte: HashMap::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await
    }

    /// The next frame, unless the connection ends or `until` passes first.
    async fn next(&mut self, until: Instant) -> Got {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let b = &self.buf;
                    let frame = Frame {
                        kind: b[3],
                        flags: b[4],
                        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
                        payload: b[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Got::Frame(frame);
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Quiet;
            }
            match tokio::time::timeout(left, self.read.read(&mut chunk)).await {
                Err(_) => return Got::Quiet,
                Ok(Ok(0)) | Ok(Err(_)) => return Got::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Read frames until the connection ends, `stop` says enough, or `until` passes. With `ack`,
    /// SETTINGS and PINGs are acknowledged as a well-behaved client would.
    async fn watch(
        &mut self,
        since: Instant,
        until: Instant,
        ack: bool,
        stop: impl Fn(&Seen) -> bool,
    ) -> Seen {
        let mut seen = Seen::default();
        while !stop(&seen) {
            let got = match self.next(until).await {
                Got::Quiet => break,
                Got::Closed => {
                    seen.closed = Some(since.elapsed());
                    break;
                }
                Got::Frame(got) => got,
            };
            let ack_flag = got.flags & 1 != 0;
            match got.kind {
                SETTINGS if ack_flag => seen.settings_acks += 1,
                SETTINGS if ack => {
                    let _ = self.send(&frame(SETTINGS, 1, 0, &[])).await;
                }
                PING if ack_flag => seen.pongs += 1,
                PING if ack => {
                    let _ = self.send(&frame(PING, 1, 0, &got.payload)).await;
                }
                HEADERS | DATA => {
                    if got.kind == HEADERS {
                        if let Some(b) = got.payload.first() {
                            self.first_byte.entry(got.stream).or_insert(*b);
                        }
                    }
                    if got.flags & END_STREAM != 0 {
                        let first = self.first_byte.get(&got.stream).copied().unwrap_or(0);
                        seen.ended.insert(got.stream, (since.elapsed(), first));
                    }
                }
                RST_STREAM => {
                    let p = &got.payload;
                    seen.resets
                        .insert(got.stream, u32::from_be_bytes([p[0], p[1], p[2], p[3]]));
                }
                GOAWAY => {
                    let p = &got.payload;
                    let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
                    let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                    seen.goaways.push((since.elapsed(), last, code));
                }
                _ => {}
            }
        }
        seen
    }

    /// An authorized `GET /chat/Dialog.json` on `stream`, in one HEADERS frame.
    async fn send_get(&mut self, stream: u32) {
        let get = frame(HEADERS, END_STREAM | END_HEADERS, stream, &authorized_get());
        self.send(&get).await.unwrap();
    }

    /// Read (acknowledging SETTINGS and PINGs) until `stream` ends, for at most 5 s.
    async fn until_ended(&mut self, stream: u32) -> Seen {
        let t = Instant::now();
        self.watch(t, t + Duration::from_secs(5), true, |s| {
            s.ended.contains_key(&stream)
        })
        .await
    }

    /// Read (acknowledging nothing) until the connection ends or `until` passes.
    async fn until_closed(&mut self, since: Instant, until: Instant) -> Seen {
        self.watch(since, until, false, |_| false).await
    }
}

fn authorized_get() -> Vec<u8> {
    let auth = format!("ApiKey {KEY_APP}");
    get_block(LIST, &[("authorization", auth.as_bytes())])
}

/// One literal-without-indexing header field (name and value under 127 bytes).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// A connection that completed the client side of the setup (preface, SETTINGS, windows) and
/// acknowledged the server's SETTINGS.
async fn set_up(addr: SocketAddr) -> Conn {
    let mut conn = Conn::open(addr).await;
    conn.send(&setup()).await.unwrap();
    let t = Instant::now();
    let seen = conn
        .watch(t, t + Duration::from_secs(5), true, |s| s.settings_acks > 0)
        .await;
    assert_eq!(seen.settings_acks, 1, "no SETTINGS ack: {seen:?}");
    assert!(seen.closed.is_none(), "{seen:?}");
    conn
}

/// The connection stays open (no GOAWAY, no EOF) for half the timeout, the client sending nothing
/// more, not even ACKs; then it is cut by `CUT_BY` from `since`, and not before `T` (the gateway
/// times the wait from its accept, after `since`).
async fn assert_cut_by_head_deadline(conn: &mut Conn, since: Instant) -> Seen {
    let quiet = T / 2;
    let early = conn.until_closed(since, since + quiet).await;
    assert!(
        early.closed.is_none() && early.goaways.is_empty(),
        "ended before half the timeout: {early:?}"
    );
    let seen = conn.until_closed(since, since + CUT_BY).await;
    let closed = seen
        .closed
        .unwrap_or_else(|| panic!("still open {CUT_BY:?} later: {seen:?}"));
    assert!(closed >= T, "cut after {closed:?}, before the timeout");
    seen
}

/// A normal request on a fresh HTTP/1.1 connection still gets its 200.
async fn assert_still_serving(gate: &Gate) {
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

/// A normal request over a fresh h2 connection gets its 200.
async fn assert_still_serving_h2(gate: &Gate) {
    let mut conn = set_up(gate.addr).await;
    conn.send_get(1).await;
    let seen = conn.until_ended(1).await;
    assert_eq!(seen.ended.get(&1).map(|e| e.1), Some(0x88), "{seen:?}");
}

// ---------------------------------------------------------------------------------------------
// The head deadline: preface to a complete header block
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_that_sends_only_the_preface_is_cut() {
    let gate = Gate::start(SECTIONS).await;
    let since = Instant::now();
    let mut conn = Conn::open(gate.addr).await;
    conn.send(PREFACE).await.unwrap();
    assert_cut_by_head_deadline(&mut conn, since).await;
    assert!(gate.sandbox.received().is_empty());
}

#[tokio::test]
async fn a_client_that_sends_settings_and_then_nothing_is_cut() {
    let gate = Gate::start(SECTIONS).await;
    let since = Instant::now();
    let mut conn = set_up(gate.addr).await;
    assert_cut_by_head_deadline(&mut conn, since).await;
    assert!(gate.sandbox.received().is_empty());
}

#[tokio::test]
async fn a_header_block_left_open_is_cut() {
    let gate = Gate::start(SECTIONS).await;
    let since = Instant::now();
    let mut conn = set_up(gate.addr).await;
    // HEADERS without END_HEADERS, and no CONTINUATION ever.
    let block = authorized_get();
    conn.send(&frame(HEADERS, END_STREAM, 1, &block))
        .await
        .unwrap();
    assert_cut_by_head_deadline(&mut conn, since).await;
    assert!(gate.sandbox.received().is_empty());
}

#[tokio::test]
async fn continuation_frames_trickled_under_the_count_limit_are_cut_by_the_deadline() {
    let gate = Gate::start(SECTIONS).await;
    let since = Instant::now();
    let mut conn = set_up(gate.addr).await;
    conn.send(&frame(HEADERS, END_STREAM, 1, &authorized_get()))
        .await
        .unwrap();
    // Four CONTINUATION frames (never END_HEADERS), one every fifth of the timeout, then
    // silence: under h2's count limit (at least 5), so only the deadline can end this, and the
    // frames do not restart it.
    let sent = 4;
    for n in 1..=sent {
        conn.send(&frame(CONTINUATION, 0, 1, &literal("x-slow", "drip")))
            .await
            .unwrap();
        let early = conn.until_closed(since, Instant::now() + T / 5).await;
        assert!(early.closed.is_none(), "cut after {n} frames: {early:?}");
    }
    let seen = conn.until_closed(since, since + CUT_BY).await;
    let closed = seen
        .closed
        .unwrap_or_else(|| panic!("still open after {sent} CONTINUATION frames: {seen:?}"));
    assert!(closed >= T, "cut after {closed:?}, before the timeout");
    assert!(gate.sandbox.received().is_empty());
}

#[tokio::test]
async fn a_continuation_flood_is_refused_with_goaway() {
    // CVE-2024-27316: CONTINUATION frames that never end the block, as fast as the socket takes
    // them. The count limit (from max_header_list_size and the frame size) ends it.
    let gate = Gate::start(SECTIONS).await;
    let mut conn = set_up(gate.addr).await;
    let since = Instant::now();
    conn.send(&frame(HEADERS, END_STREAM, 1, &authorized_get()))
        .await
        .unwrap();
    let (mut read, mut write) = (conn.read, conn.write);
    let writer = tokio::spawn(async move {
        let piece = frame(CONTINUATION, 0, 1, &literal("x-flood", "0123456789abcdef"));
        let mut sent = 0u32;
        let deadline = Instant::now() + Duration::from_secs(2);
        while sent < 10_000 && Instant::now() < deadline {
            if write.write_all(&piece).await.is_err() {
                break;
            }
            sent += 1;
        }
        (sent, write)
    });
    // Read on the reader half alone (the writer owns the other one).
    let mut reader = ReadOnly {
        read: &mut read,
        buf: conn.buf,
    };
    let seen = reader.until_closed(since, since + CUT_BY).await;
    let (sent, _write) = writer.await.unwrap();
    let closed = seen
        .closed
        .unwrap_or_else(|| panic!("still open after {sent} CONTINUATION frames: {seen:?}"));
    assert!(closed < CUT_BY, "{closed:?}");
    // h2 answers the flood with GOAWAY ENHANCE_YOUR_CALM; the reset that may follow our writes
    // can swallow it, so it is checked only when it arrived.
    for (_, _, code) in &seen.goaways {
        assert_eq!(*code, ENHANCE_YOUR_CALM, "{seen:?}");
    }
    assert!(gate.sandbox.received().is_empty());
    assert_still_serving(&gate).await;
}

/// Frame reading on a bare read half (for tests whose writer runs in its own task).
struct ReadOnly<'a> {
    read: &'a mut OwnedReadHalf,
    buf: Vec<u8>,
}

impl ReadOnly<'_> {
    async fn until_closed(&mut self, since: Instant, until: Instant) -> Seen {
        let mut seen = Seen::default();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            while self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (self.buf[3], self.buf[4]);
                let p = &self.buf[9..9 + len];
                match kind {
                    GOAWAY => {
                        let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
                        let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                        seen.goaways.push((since.elapsed(), last, code));
                    }
                    PING if flags & 1 != 0 => seen.pongs += 1,
                    SETTINGS if flags & 1 != 0 => seen.settings_acks += 1,
                    _ => {}
                }
                self.buf.drain(..9 + len);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return seen;
            }
            match tokio::time::timeout(left, self.read.read(&mut chunk)).await {
                Err(_) => return seen,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    seen.closed = Some(since.elapsed());
                    return seen;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The idle timeout, and requests in progress
// ---------------------------------------------------------------------------------------------

/// Send one authorized GET on stream 1 and read its 200. Returns when it was sent and when its
/// response ended.
async fn one_get(conn: &mut Conn) -> (Instant, Instant) {
    let sent = Instant::now();
    conn.send_get(1).await;
    let seen = conn.until_ended(1).await;
    assert_eq!(seen.ended.get(&1).map(|e| e.1), Some(0x88), "{seen:?}");
    assert!(seen.goaways.is_empty() && seen.closed.is_none(), "{seen:?}");
    (sent, Instant::now())
}

#[tokio::test]
async fn an_idle_connection_gets_goaway_and_closes_after_the_timeout() {
    let gate = Gate::start(SECTIONS).await;
    let mut conn = set_up(gate.addr).await;
    let (sent, answered) = one_get(&mut conn).await;
    // A well-behaved client: acknowledges the PING that follows the first GOAWAY, and the
    // server then ends the connection itself.
    let seen = conn
        .watch(sent, answered + IDLE_CUT_BY, true, |_| false)
        .await;
    let (at, last, code) = seen
        .first_goaway()
        .unwrap_or_else(|| panic!("no GOAWAY: {seen:?}"));
    assert!(
        at >= T,
        "GOAWAY {at:?} after the request, before the timeout"
    );
    assert_eq!(code, NO_ERROR, "{seen:?}");
    // The graceful one: no stream refused yet.
    assert_eq!(last, 0x7fff_ffff, "{seen:?}");
    let closed = seen
        .closed
        .unwrap_or_else(|| panic!("GOAWAY but still open: {seen:?}"));
    assert!(closed >= at);
    // The final GOAWAY names stream 1 as the last one processed.
    assert!(
        seen.goaways
            .iter()
            .all(|(_, last, code)| *code == NO_ERROR && (*last == 1 || *last == 0x7fff_ffff)),
        "{seen:?}"
    );
    assert_eq!(gate.sandbox.received().len(), 1);
}

#[tokio::test]
async fn an_idle_client_that_ignores_goaway_is_cut() {
    let gate = Gate::start(SECTIONS).await;
    let mut conn = set_up(gate.addr).await;
    let (sent, answered) = one_get(&mut conn).await;
    // Acknowledges nothing from here on: the shutdown PING goes unanswered.
    let seen = conn.until_closed(sent, answered + IDLE_CUT_BY).await;
    let (at, _, code) = seen
        .first_goaway()
        .unwrap_or_else(|| panic!("no GOAWAY: {seen:?}"));
    assert!(
        at >= T,
        "GOAWAY {at:?} after the request, before the timeout"
    );
    assert_eq!(code, NO_ERROR);
    let closed = seen
        .closed
        .unwrap_or_else(|| panic!("still open {IDLE_CUT_BY:?} after the response: {seen:?}"));
    assert!(
        closed >= at + T / 2,
        "closed {closed:?}, GOAWAY {at:?}: the client had no time to finish"
    );
}

#[tokio::test]
async fn a_request_in_progress_longer_than_the_timeout_is_not_cut() {
    let gate = Gate::start(SECTIONS).await;
    let mut conn = set_up(gate.addr).await;
    let stall = Duration::from_millis(1000);
    assert!(stall >= 3 * T);
    gate.sandbox.set_fault(Fault::Delay(stall));
    let sent = Instant::now();
    conn.send_get(1).await;
    let seen = conn.until_ended(1).await;
    assert_eq!(seen.ended.get(&1).map(|e| e.1), Some(0x88), "{seen:?}");
    assert!(
        sent.elapsed() >= stall,
        "answered after {:?}",
        sent.elapsed()
    );
    assert!(seen.goaways.is_empty() && seen.closed.is_none(), "{seen:?}");
    gate.sandbox.set_fault(Fault::None);
    // Idle from the response on: GOAWAY a timeout later.
    let answered = Instant::now();
    let seen = conn
        .watch(answered, answered + IDLE_CUT_BY, true, |_| false)
        .await;
    let (at, _, _) = seen
        .first_goaway()
        .unwrap_or_else(|| panic!("no GOAWAY once idle: {seen:?}"));
    assert!(at + Duration::from_millis(100) >= T, "{at:?}");
    assert!(seen.closed.is_some(), "{seen:?}");
}

#[tokio::test]
async fn a_second_request_restarts_the_idle_wait() {
    let gate = Gate::start(SECTIONS).await;
    let mut conn = set_up(gate.addr).await;
    one_get(&mut conn).await;
    // Three requests, each a little over half the timeout apart: 1.5 timeouts in all, and never
    // a whole one idle.
    for stream in [3u32, 5, 7] {
        let pause = Instant::now() + T * 55 / 100;
        let quiet = conn.watch(Instant::now(), pause, true, |_| false).await;
        assert!(
            quiet.goaways.is_empty() && quiet.closed.is_none(),
            "{quiet:?}"
        );
        conn.send_get(stream).await;
        let seen = conn.until_ended(stream).await;
        assert_eq!(seen.ended.get(&stream).map(|e| e.1), Some(0x88), "{seen:?}");
        assert!(seen.goaways.is_empty() && seen.closed.is_none(), "{seen:?}");
    }
    assert_eq!(gate.sandbox.received().len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Floods
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rapid_reset_is_ended_with_goaway() {
    // CVE-2023-44487: open a stream and cancel it at once, over and over; the streams never count
    // against the concurrency limit.
    let gate = Gate::start(SECTIONS).await;
    let mut conn = set_up(gate.addr).await;
    let block = authorized_get();
    let pairs = 1000u32;
    let mut blob = Vec::new();
    for i in 0..pairs {
        let id = 1 + 2 * i;
        blob.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        blob.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let since = Instant::now();
    // The server may close while this is still being written.
    let _ = conn.send(&blob).await;
    let seen = conn
        .watch(since, since + Duration::from_secs(5), true, |_| false)
        .await;
    let closed = seen
        .closed
        .unwrap_or_else(|| panic!("{pairs} resets and still open: {seen:?}"));
    assert!(closed < Duration::from_secs(5));
    let (_, last, code) = seen
        .first_goaway()
        .unwrap_or_else(|| panic!("closed without GOAWAY: {seen:?}"));
    assert_eq!(code, ENHANCE_YOUR_CALM, "{seen:?}");
    assert!(last < 1 + 2 * pairs, "{seen:?}");
    let received = gate.sandbox.received().len();
    assert!(
        received < pairs as usize / 4,
        "{received} of {pairs} cancelled requests reached the upstream"
    );
    assert_still_serving(&gate).await;
}

/// Flood `unit` as fast as the socket takes it, for at most `count` frames or 2 s, reading what
/// comes back (or not, when `read_back` is false). Returns what was seen and how many went out.
async fn flood(gate: &Gate, unit: Vec<u8>, count: u32, read_back: bool) -> (Seen, u32) {
    // The gateway times the head deadline from its accept, after this.
    let since = Instant::now();
    let conn = set_up(gate.addr).await;
    let (mut read, mut write) = (conn.read, conn.write);
    let batch: Vec<u8> = unit.repeat(64);
    let writer = tokio::spawn(async move {
        let mut sent = 0u32;
        let deadline = Instant::now() + Duration::from_secs(2);
        while sent < count && Instant::now() < deadline {
            match tokio::time::timeout_at(deadline.into(), write.write_all(&batch)).await {
                Ok(Ok(())) => sent += 64,
                _ => break,
            }
        }
        (sent, write)
    });
    let seen = if read_back {
        let mut reader = ReadOnly {
            read: &mut read,
            buf: conn.buf,
        };
        reader.until_closed(since, since + CUT_BY).await
    } else {
        Seen::default()
    };
    let (sent, _write) = writer.await.unwrap();
    let seen = if read_back {
        seen
    } else {
        // Only now look: EOF or reset must be there already.
        let mut reader = ReadOnly {
            read: &mut read,
            buf: Vec::new(),
        };
        let mut seen = reader.until_closed(since, Instant::now() + CUT_BY).await;
        seen.closed = seen.closed.map(|_| since.elapsed());
        seen
    };
    (seen, sent)
}

#[tokio::test]
async fn a_settings_flood_is_answered_and_bounded_by_the_deadline() {
    let gate = Gate::start(SECTIONS).await;
    // Each SETTINGS re-announces the initial window; the server must ACK each before it reads on.
    let mut payload = vec![0, 4];
    payload.extend_from_slice(&65_535u32.to_be_bytes());
    let unit = frame(SETTINGS, 0, 0, &payload);
    let (seen, sent) = flood(&gate, unit, 2_000_000, true).await;
    assert!(seen.settings_acks > 0, "no SETTINGS answered: {seen:?}");
    // No request ever started: the head deadline ends it, however fast the frames come.
    let closed = seen
        .closed
        .unwrap_or_else(|| panic!("open after {sent} SETTINGS: {seen:?}"));
    assert!(closed >= T && closed < CUT_BY, "{closed:?}");
    for (_, _, code) in &seen.goaways {
        assert!(matches!(*code, NO_ERROR | ENHANCE_YOUR_CALM), "{seen:?}");
    }
    assert_still_serving(&gate).await;
    assert_still_serving_h2(&gate).await;
}

#[tokio::test]
async fn a_ping_flood_is_answered_and_bounded_by_the_deadline() {
    let gate = Gate::start(SECTIONS).await;
    let unit = frame(PING, 0, 0, b"flooding");
    let (seen, sent) = flood(&gate, unit, 2_000_000, true).await;
    assert!(seen.pongs > 0, "no PING answered: {seen:?}");
    let closed = seen
        .closed
        .unwrap_or_else(|| panic!("open after {sent} PINGs: {seen:?}"));
    assert!(closed >= T && closed < CUT_BY, "{closed:?}");
    assert_still_serving(&gate).await;
    assert_still_serving_h2(&gate).await;
}

#[tokio::test]
async fn a_ping_flood_that_never_reads_the_pongs_is_bounded() {
    // The pongs pile up in the socket, not in the gateway: h2 holds one pending pong and stops
    // reading until it is written. The writer stalls, and the deadline cuts the connection.
    let gate = Gate::start(SECTIONS).await;
    let unit = frame(PING, 0, 0, b"nobodyrd");
    let started = Instant::now();
    let (seen, sent) = flood(&gate, unit, 2_000_000, false).await;
    assert!(seen.closed.is_some(), "open after {sent} PINGs: {seen:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2) + CUT_BY,
        "{:?}",
        started.elapsed()
    );
    assert!(sent < 2_000_000, "all {sent} PINGs went in unhindered");
    assert_still_serving(&gate).await;
    assert_still_serving_h2(&gate).await;
}
