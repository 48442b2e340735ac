//! The access log: one line per request, formatted by hand into a per-thread buffer that a
//! background task writes to stdout every 50 ms (or at once past 64 KiB). Each buffer's lock is
//! taken by its own thread and, once per flush, by the flusher: no lock shared by requests.
//!
//! Going through `tracing`'s JSON formatter and a writer thread cost about 26 µs of CPU per
//! request in the benchmark (a thread wake-up per line on a one-CPU sidecar); a batched write costs
//! one syscall per flush. `QBGATE_LOG` still decides: the line is written only when the
//! `qbgate::access` target is enabled at `info`. Without [`install`] (the library inside tests) the
//! line goes through `tracing` as any other event.
//!
//! The line is written when the answer's body is done (sent whole, or dropped on a broken
//! connection), so that it can say how many body bytes went out and how long the whole exchange
//! took. Other lines written while a request is served (rule refusals, lookup failures,
//! report-mode verdicts, warnings) go through `tracing`; [`scope`] makes the request's id (and
//! trace id) known to the task, and [`WithRequest`] adds them to every such line.

use std::cell::{Cell, OnceCell};
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

/// Flush at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Flush at once past this many buffered bytes.
const FLUSH_AT: usize = 64 * 1024;
/// Room past [`FLUSH_AT`] for the line that crosses it, so that the buffer is not reallocated
/// (and copied) once per flush.
const BUFFER_CAPACITY: usize = FLUSH_AT + 16 * 1024;

static SINK: OnceLock<Sink> = OnceLock::new();

struct Sink {
    json: bool,
    /// Every thread's buffer, registered on the thread's first line.
    buffers: Mutex<Vec<Arc<Mutex<Buffer>>>>,
    /// Whether `qbgate::access` is enabled at `info`, asked once: the binary's filter is set
    /// once, before the first request (asking `tracing` per line cost about 75 instructions).
    enabled: OnceLock<bool>,
}

thread_local! {
    static LOCAL: OnceCell<Arc<Mutex<Buffer>>> = const { OnceCell::new() };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lines waiting for the next flush, and the current second's timestamp text (formatting a date
/// once a second instead of once a line).
struct Buffer {
    lines: Vec<u8>,
    second: u64,
    stamp: String,
}

/// Longest user agent written, in bytes; the rest is cut.
const USER_AGENT_MAX: usize = 200;

/// What one access line says.
pub struct Line<'a> {
    /// When the line's request ended, on the wall clock.
    pub time: SystemTime,
    pub request_id: &'a str,
    /// The W3C trace id (32 lowercase hex digits, written as they are) when tracing propagates.
    pub trace_id: Option<&'a [u8]>,
    pub key: &'a str,
    /// Which of the key's digests matched: its first 8 hex digits (`-` without a key).
    pub digest: &'a str,
    pub user: Option<u64>,
    pub method: &'a str,
    /// The matched pattern (an endpoint catalog row such as `/chat/Dialog/{id}`, or an
    /// `unchecked_routes` entry), never the path itself: ids stay out of the log.
    pub route: &'a str,
    pub status: u16,
    /// Why the gateway answered itself; in report mode, why it would have. A reason code of the
    /// gateway's own (written unescaped).
    pub reason: &'a str,
    /// `reason` is what report mode would have refused with: the request was forwarded.
    pub report_only: bool,
    /// `HTTP/1.1`, `HTTP/2`, ... (written unescaped).
    pub protocol: &'a str,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes handed to the client's connection.
    pub bytes_out: u64,
    /// The raw `User-Agent` (any bytes; escaped and cut when written).
    pub user_agent: &'a [u8],
    pub upstream_status: Option<u16>,
    pub total: Duration,
    pub upstream: Option<Duration>,
}

/// Route access lines to the batched stdout writer (`json` or text lines).
pub fn install(json: bool) {
    let _ = SINK.set(Sink {
        json,
        buffers: Mutex::new(Vec::new()),
        enabled: OnceLock::new(),
    });
}

/// Whether [`install`] was called (the binary), so a flusher is needed.
pub fn installed() -> bool {
    SINK.get().is_some()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Write one line (or hand it to `tracing` when not installed).
pub fn record(line: &Line<'_>) {
    let Some(sink) = SINK.get() else {
        tracing::info!(
            target: "qbgate::access",
            request_id = line.request_id,
            trace_id = line.trace_id.and_then(|t| std::str::from_utf8(t).ok()),
            key = line.key,
            digest = line.digest,
            user = line.user,
            method = line.method,
            route = line.route,
            status = line.status,
            reason = line.reason,
            report_only = line.report_only,
            protocol = line.protocol,
            bytes_in = line.bytes_in,
            bytes_out = line.bytes_out,
            user_agent = %String::from_utf8_lossy(cut(line.user_agent)),
            upstream_status = line.upstream_status,
            total_ms = millis(line.total),
            upstream_ms = line.upstream.map(millis),
        );
        return;
    };
    let enabled = sink
        .enabled
        .get_or_init(|| tracing::enabled!(target: "qbgate::access", tracing::Level::INFO));
    if !enabled {
        return;
    }
    let now = line
        .time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let full = LOCAL.with(|local| {
        let buffer = local.get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Buffer {
                lines: Vec::with_capacity(BUFFER_CAPACITY),
                second: u64::MAX,
                stamp: String::new(),
            }));
            lock(&sink.buffers).push(buffer.clone());
            buffer
        });
        let mut buf = lock(buffer);
        let Buffer {
            lines,
            second,
            stamp,
        } = &mut *buf;
        if *second != now.as_secs() {
            *second = now.as_secs();
            let text = humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + now).to_string();
            // `2026-11-26T16:42:56Z` without the `Z`: the micros and the `Z` follow per line.
            *stamp = text.trim_end_matches('Z').to_owned();
        }
        let out = Out(lines);
        if sink.json {
            json_line(out, stamp, now.subsec_micros(), line);
        } else {
            text_line(out, stamp, now.subsec_micros(), line);
        }
        lines.len() >= FLUSH_AT
    });
    if full {
        flush();
    }
}

/// Appends to the line buffer; numbers through `itoa`, no `fmt` machinery per line.
struct Out<'a>(&'a mut Vec<u8>);

impl Out<'_> {
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(s.as_bytes());
        self
    }

    /// Bytes known to need no escaping (hex digits).
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    fn int(&mut self, n: impl itoa::Integer) -> &mut Self {
        self.str(itoa::Buffer::new().format(n))
    }

    /// A JSON string's contents: `"`, `\` and control characters escaped.
    fn escaped(&mut self, s: &str) -> &mut Self {
        escape(self.0, s);
        self
    }

    /// Untrusted bytes as a JSON string's contents: cut to [`USER_AGENT_MAX`], and every byte
    /// outside printable ASCII escaped (a header may hold any byte; a line must stay valid JSON
    /// and one line).
    fn escaped_bytes(&mut self, b: &[u8]) -> &mut Self {
        escape_bytes(self.0, cut(b));
        self
    }

    /// `2026-11-26T16:42:56.123456Z`.
    fn stamp(&mut self, seconds: &str, micros: u32) -> &mut Self {
        let mut tail = *b".000000Z";
        let mut n = micros.min(999_999);
        for digit in tail[1..7].iter_mut().rev() {
            *digit = b'0' + (n % 10) as u8;
            n /= 10;
        }
        self.str(seconds).bytes(&tail)
    }

    /// Milliseconds with three decimals, from whole microseconds.
    fn ms(&mut self, d: Duration) -> &mut Self {
        let micros = d
            .as_secs()
            .saturating_mul(1_000_000)
            .saturating_add(u64::from(d.subsec_micros()));
        let frac = micros % 1000;
        let digit = |n: u64| b'0' + (n % 10) as u8;
        self.int(micros / 1000);
        self.0
            .extend_from_slice(&[b'.', digit(frac / 100), digit(frac / 10), digit(frac)]);
        self
    }
}

fn json_line(mut out: Out<'_>, seconds: &str, micros: u32, line: &Line<'_>) {
    out.str(r#"{"timestamp":""#)
        .stamp(seconds, micros)
        .str(r#"","level":"INFO","target":"qbgate::access","request_id":""#)
        .escaped(line.request_id)
        .str(r#"","#);
    if let Some(trace_id) = line.trace_id {
        out.str(r#""trace_id":""#).bytes(trace_id).str(r#"","#);
    }
    // The digest is hex digits and the method an HTTP token (the `http` crate refuses any
    // other byte): neither ever needs escaping.
    out.str(r#""key":""#)
        .escaped(line.key)
        .str(r#"","digest":""#)
        .str(line.digest)
        .str(r#"","#);
    if let Some(user) = line.user {
        out.str(r#""user":"#).int(user).str(",");
    }
    out.str(r#""method":""#)
        .str(line.method)
        .str(r#"","route":""#)
        .escaped(line.route)
        .str(r#"","status":"#)
        .int(line.status)
        .str(r#","reason":""#)
        .str(line.reason)
        .str(r#"","#);
    if line.report_only {
        out.str(r#""report_only":true,"#);
    }
    out.str(r#""protocol":""#)
        .str(line.protocol)
        .str(r#"","bytes_in":"#)
        .int(line.bytes_in)
        .str(r#","bytes_out":"#)
        .int(line.bytes_out)
        .str(r#","user_agent":""#)
        .escaped_bytes(line.user_agent)
        .str(r#"","#);
    if let Some(upstream) = line.upstream_status {
        out.str(r#""upstream_status":"#).int(upstream).str(",");
    }
    if let Some(d) = line.upstream {
        out.str(r#""upstream_ms":"#).ms(d).str(",");
    }
    out.str(r#""total_ms":"#).ms(line.total).str("}\n");
}

fn text_line(mut out: Out<'_>, seconds: &str, micros: u32, line: &Line<'_>) {
    out.stamp(seconds, micros)
        .str("  INFO qbgate::access: request_id=")
        .escaped(line.request_id)
        .str(" trace_id=")
        .bytes(line.trace_id.unwrap_or(b"-"))
        .str(" key=")
        .escaped(line.key)
        .str(" digest=")
        .str(line.digest)
        .str(" user=");
    match line.user {
        Some(user) => out.int(user),
        None => out.str("-"),
    };
    out.str(" method=")
        .str(line.method)
        .str(" route=")
        .escaped(line.route)
        .str(" status=")
        .int(line.status)
        .str(" reason=")
        .str(line.reason)
        .str(if line.report_only {
            " report_only=true"
        } else {
            ""
        })
        .str(" protocol=")
        .str(line.protocol)
        .str(" bytes_in=")
        .int(line.bytes_in)
        .str(" bytes_out=")
        .int(line.bytes_out)
        .str(" user_agent=\"")
        .escaped_bytes(line.user_agent)
        .str("\" upstream_status=");
    match line.upstream_status {
        Some(s) => out.int(s),
        None => out.str("-"),
    };
    out.str(" total_ms=")
        .ms(line.total)
        .str(" upstream_ms=")
        .ms(line.upstream.unwrap_or_default())
        .str("\n");
}

/// Write what is buffered to stdout.
pub fn flush() {
    let Some(sink) = SINK.get() else {
        return;
    };
    let buffers = lock(&sink.buffers).clone();
    let mut out = std::io::stdout().lock();
    for buffer in buffers {
        let pending = {
            let mut buf = lock(&buffer);
            if buf.lines.is_empty() {
                continue;
            }
            std::mem::replace(&mut buf.lines, Vec::with_capacity(BUFFER_CAPACITY))
        };
        // A closed stdout loses log lines, never requests.
        let _ = out.write_all(&pending);
    }
    let _ = out.flush();
}

/// Flush every [`FLUSH_EVERY`] until the process ends.
pub async fn run_flusher() {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tick.tick().await;
        flush();
    }
}

/// The first [`USER_AGENT_MAX`] bytes of `b`.
fn cut(b: &[u8]) -> &[u8] {
    b.get(..USER_AGENT_MAX).unwrap_or(b)
}

/// [`escape`] for bytes that need not be UTF-8: anything outside printable ASCII becomes
/// `\u00XX` (a byte read as Latin-1, as HTTP once defined header bytes).
fn escape_bytes(out: &mut Vec<u8>, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if !needs_escape(b, true) {
        out.extend_from_slice(b);
        return;
    }
    for &c in b {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(c),
            _ => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            }
        }
    }
}

/// Does `b` hold a byte that [`escape`] changes (`"`, `\\`, a C0 control, DEL), or with
/// `non_ascii` one that [`escape_bytes`] changes (those and any byte past DEL)? Eight bytes at a
/// time: the fields are short and nearly always plain, and a byte-by-byte test cost about as
/// much as the rest of the line.
fn needs_escape(b: &[u8], non_ascii: bool) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `v` that is below `n` (`n` <= 0x80), exact for every byte.
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH;
    let any_of = |v: u64, c: u8| below(v ^ (ONES * u64::from(c)), 1);
    let high = if non_ascii { HIGH } else { 0 };
    let mut chunks = b.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let v = u64::from_le_bytes(word);
        if below(v, 0x20) | any_of(v, b'"') | any_of(v, b'\\') | any_of(v, 0x7f) | (v & high) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&c| c < 0x20 || c == b'"' || c == b'\\' || c == 0x7f || (non_ascii && c > 0x7f))
}

/// JSON-string escaping of `"`, `\\` and control characters (paths and request ids are ASCII).
fn escape(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    if !needs_escape(s.as_bytes(), false) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            // DEL and the C0 controls; multi-byte UTF-8 is copied as it is (C1 controls included:
            // valid JSON, and a path never holds them after normalization).
            0..=0x1f | 0x7f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
}

/// Who a task is serving: known to every `tracing` line written inside [`scope`].
pub struct Request {
    pub request_id: http::HeaderValue,
    /// The W3C trace id, 32 lowercase hex digits, when tracing propagates.
    pub trace_id: Option<[u8; 32]>,
}

thread_local! {
    /// The request whose future is being polled on this thread, if any.
    static CURRENT: Cell<Option<Request>> = const { Cell::new(None) };
}

pin_project_lite::pin_project! {
    /// A future polled with its request made current ([`scope`]).
    pub struct Scoped<F> {
        // `None` while the future is being polled (the request is in `CURRENT` then).
        request: Option<Request>,
        #[pin]
        future: F,
    }
}

/// Run `future` (one request's phases) with `request` known to the lines it writes. Costs two moves of the request in and out of a
/// thread-local per poll (tokio's task-local did the same behind a `RefCell` and a key check,
/// about twice the instructions); nothing per line that is not written.
pub fn scope<F: Future>(request: Request, future: F) -> Scoped<F> {
    Scoped {
        request: Some(request),
        future,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        /// Puts the request back in its future, and the thread's previous one back in
        /// `CURRENT`, also when the poll unwinds.
        struct Restore<'a> {
            slot: &'a mut Option<Request>,
            outer: Option<Request>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                *self.slot = CURRENT.replace(self.outer.take());
            }
        }
        let this = self.project();
        let outer = CURRENT.replace(this.request.take());
        let _restore = Restore {
            slot: this.request,
            outer,
        };
        this.future.poll(cx)
    }
}

/// An event formatter that adds `request_id` (and `trace_id`) to every line written inside
/// [`scope`], in JSON (before the closing brace) or text (before the newline); lines outside a
/// request are written as `inner` writes them.
pub struct WithRequest<F> {
    inner: F,
    json: bool,
}

impl<F> WithRequest<F> {
    pub fn new(inner: F, json: bool) -> Self {
        WithRequest { inner, json }
    }
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithRequest<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use tracing_subscriber::fmt::format::Writer;
        // Taken out while the line is formatted, and put back.
        let Some(request) = CURRENT.try_with(Cell::take).ok().flatten() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut format = || {
            let mut text = String::new();
            self.inner
                .format_event(ctx, Writer::new(&mut text), event)?;
            let (body, tail) = match (self.json, text.rfind('}')) {
                (true, Some(end)) => text.split_at(end),
                _ => text.split_at(text.trim_end_matches('\n').len()),
            };
            let mut ids = Vec::with_capacity(96);
            let mut out = Out(&mut ids);
            let trace = request
                .trace_id
                .as_ref()
                .and_then(|t| std::str::from_utf8(t).ok());
            let request_id = std::str::from_utf8(request.request_id.as_bytes()).unwrap_or("-");
            if self.json {
                out.str(r#","request_id":""#).escaped(request_id).str("\"");
                if let Some(trace) = trace {
                    out.str(r#","trace_id":""#).str(trace).str("\"");
                }
            } else {
                out.str(" request_id=").escaped(request_id);
                if let Some(trace) = trace {
                    out.str(" trace_id=").str(trace);
                }
            }
            writer.write_str(body)?;
            writer.write_str(std::str::from_utf8(&ids).unwrap_or_default())?;
            writer.write_str(tail)
        };
        let written = format();
        let _ = CURRENT.try_with(|current| current.set(Some(request)));
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_a_line_valid_json() {
        let mut s = Vec::new();
        escape(&mut s, "a\"b\\c\u{1}\u{7f}é");
        let s = String::from_utf8(s).unwrap();
        assert_eq!(s, "a\\\"b\\\\c\\u0001\\u007fé");
        let json: serde_json::Value = serde_json::from_str(&format!("{{\"p\":\"{s}\"}}")).unwrap();
        assert_eq!(json["p"], "a\"b\\c\u{1}\u{7f}é");
    }

    #[test]
    fn the_word_at_a_time_test_finds_every_byte_that_is_escaped() {
        for c in 0..=255u8 {
            let json = c < 0x20 || c == b'"' || c == b'\\' || c == 0x7f;
            for len in [1, 7, 8, 9, 17] {
                for at in 0..len {
                    let mut b = vec![b'a'; len];
                    b[at] = c;
                    assert_eq!(
                        needs_escape(&b, false),
                        json,
                        "byte {c:#x} at {at} of {len}"
                    );
                    assert_eq!(needs_escape(&b, true), json || c > 0x7f, "byte {c:#x}");
                }
            }
        }
        assert!(!needs_escape(b"", true));
    }

    fn line(user: Option<u64>, upstream: Option<Duration>) -> Line<'static> {
        Line {
            time: SystemTime::now(),
            request_id: "0a1b2c3d000000000001",
            trace_id: upstream.map(|_| &b"4bf92f3577b34da6a3ce929d0e0e4736"[..]),
            key: "billing",
            digest: "60303ae2",
            user,
            method: "PUT",
            route: "/chat/Dialog/{\"x\"}",
            status: 422,
            reason: "rule_violation",
            report_only: upstream.is_some(),
            protocol: "HTTP/2",
            bytes_in: 17,
            bytes_out: 4096,
            user_agent: b"curl/8.5 \"quoted\" \x01\xff",
            upstream_status: upstream.map(|_| 200),
            total: Duration::from_micros(12_345_678),
            upstream,
        }
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let mut buf = Vec::new();
        json_line(
            Out(&mut buf),
            "2026-11-26T16:42:56",
            42,
            &line(Some(7), Some(Duration::from_micros(1_005))),
        );
        let text = String::from_utf8(buf).unwrap();
        assert!(text.ends_with("}\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["timestamp"], "2026-11-26T16:42:56.000042Z");
        assert_eq!(v["target"], "qbgate::access");
        assert_eq!(v["request_id"], "0a1b2c3d000000000001");
        assert_eq!(v["key"], "billing");
        assert_eq!(v["digest"], "60303ae2");
        assert_eq!(v["user"], 7);
        assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(v["method"], "PUT");
        assert_eq!(v["route"], "/chat/Dialog/{\"x\"}");
        assert_eq!(v["status"], 422);
        assert_eq!(v["reason"], "rule_violation");
        assert_eq!(v["report_only"], true);
        assert_eq!(v["protocol"], "HTTP/2");
        assert_eq!(v["bytes_in"], 17);
        assert_eq!(v["bytes_out"], 4096);
        assert_eq!(v["user_agent"], "curl/8.5 \"quoted\" \u{1}\u{ff}");
        assert_eq!(v["upstream_status"], 200);
        assert_eq!(v["upstream_ms"].to_string(), "1.005");
        assert_eq!(v["total_ms"].to_string(), "12345.678");

        let mut buf = Vec::new();
        json_line(
            Out(&mut buf),
            "2026-11-26T16:42:56",
            999_999,
            &line(None, None),
        );
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["timestamp"], "2026-11-26T16:42:56.999999Z");
        assert!(v.get("user").is_none() && v.get("upstream_ms").is_none());
        assert!(v.get("trace_id").is_none() && v.get("report_only").is_none());
    }

    #[test]
    fn text_lines_show_absent_fields_as_dashes() {
        let mut buf = Vec::new();
        text_line(Out(&mut buf), "2026-11-26T16:42:56", 5, &line(None, None));
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "2026-11-26T16:42:56.000005Z  INFO qbgate::access: request_id=0a1b2c3d000000000001 \
             trace_id=- key=billing digest=60303ae2 user=- method=PUT route=/chat/Dialog/{\\\"x\\\"} \
             status=422 reason=rule_violation protocol=HTTP/2 bytes_in=17 bytes_out=4096 \
             user_agent=\"curl/8.5 \\\"quoted\\\" \\u0001\\u00ff\" upstream_status=- total_ms=12345.678 \
             upstream_ms=0.000\n"
        );
    }

    #[test]
    fn a_long_user_agent_is_cut_and_stays_one_line() {
        let agent = [b'a'; 300]
            .iter()
            .copied()
            .chain(*b"\n{\"x\":1}")
            .collect::<Vec<u8>>();
        let mut buf = Vec::new();
        Out(&mut buf).escaped_bytes(&agent);
        assert_eq!(buf, vec![b'a'; USER_AGENT_MAX]);
        let mut buf = Vec::new();
        Out(&mut buf).escaped_bytes(b"x\ny\"\\");
        assert_eq!(buf, b"x\\u000ay\\\"\\\\");
    }

    #[test]
    fn milliseconds_keep_three_decimals() {
        for (micros, text) in [
            (0, "0.000"),
            (7, "0.007"),
            (70, "0.070"),
            (1_500, "1.500"),
            (999_999, "999.999"),
        ] {
            let mut buf = Vec::new();
            Out(&mut buf).ms(Duration::from_micros(micros));
            assert_eq!(String::from_utf8(buf).unwrap(), text);
        }
    }
}
