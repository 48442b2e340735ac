//! The access log: one line per request, formatted by hand into a shared buffer that a background
//! task writes to stdout every 50 ms (or at once past 64 KiB).
//!
//! Going through `tracing`'s JSON formatter and a writer thread cost about 26 µs of CPU per
//! request in the benchmark (a thread wake-up per line on a one-CPU sidecar); a batched write costs
//! one syscall per flush. `QBGATE_LOG` still decides: the line is written only when the
//! `qbgate::access` target is enabled at `info`. Without [`install`] (the library inside tests) the
//! line goes through `tracing` as any other event.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// Flush at least this often.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Flush at once past this many buffered bytes.
const FLUSH_AT: usize = 64 * 1024;

static SINK: OnceLock<Sink> = OnceLock::new();

struct Sink {
    json: bool,
    buf: Mutex<Vec<u8>>,
}

/// What one access line says.
pub struct Line<'a> {
    pub request_id: &'a str,
    pub key: &'a str,
    pub user: Option<u64>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub reason: &'a str,
    pub upstream_status: Option<u16>,
    pub total_ms: f64,
    pub upstream_ms: Option<f64>,
}

/// Route access lines to the batched stdout writer (`json` or text lines).
pub fn install(json: bool) {
    let _ = SINK.set(Sink {
        json,
        buf: Mutex::new(Vec::with_capacity(FLUSH_AT)),
    });
}

/// Whether [`install`] was called (the binary), so a flusher is needed.
pub fn installed() -> bool {
    SINK.get().is_some()
}

/// Write one line (or hand it to `tracing` when not installed).
pub fn record(line: &Line<'_>) {
    let Some(sink) = SINK.get() else {
        tracing::info!(
            target: "qbgate::access",
            request_id = line.request_id,
            key = line.key,
            user = line.user,
            method = line.method,
            path = line.path,
            status = line.status,
            reason = line.reason,
            upstream_status = line.upstream_status,
            total_ms = line.total_ms,
            upstream_ms = line.upstream_ms,
        );
        return;
    };
    if !tracing::enabled!(target: "qbgate::access", tracing::Level::INFO) {
        return;
    }
    let mut text = String::with_capacity(256);
    let now = humantime::format_rfc3339_micros(SystemTime::now());
    // `write!` into a String cannot fail.
    if sink.json {
        let _ = write!(
            text,
            r#"{{"timestamp":"{now}","level":"INFO","target":"qbgate::access","request_id":""#
        );
        escape(&mut text, line.request_id);
        let _ = write!(text, r#"","key":"{}","#, line.key);
        if let Some(user) = line.user {
            let _ = write!(text, r#""user":{user},"#);
        }
        let _ = write!(text, r#""method":"{}","path":""#, line.method);
        escape(&mut text, line.path);
        let _ = write!(
            text,
            r#"","status":{},"reason":"{}","#,
            line.status, line.reason
        );
        if let Some(upstream) = line.upstream_status {
            let _ = write!(text, r#""upstream_status":{upstream},"#);
        }
        if let Some(ms) = line.upstream_ms {
            let _ = write!(text, r#""upstream_ms":{ms:.3},"#);
        }
        let _ = writeln!(text, r#""total_ms":{:.3}}}"#, line.total_ms);
    } else {
        let _ = write!(text, "{now}  INFO qbgate::access: request_id=");
        escape(&mut text, line.request_id);
        let _ = write!(text, " key={} user=", line.key);
        match line.user {
            Some(user) => {
                let _ = write!(text, "{user}");
            }
            None => text.push('-'),
        }
        let _ = write!(text, " method={} path=", line.method);
        escape(&mut text, line.path);
        let _ = write!(
            text,
            " status={} reason={} upstream_status=",
            line.status, line.reason
        );
        match line.upstream_status {
            Some(s) => {
                let _ = write!(text, "{s}");
            }
            None => text.push('-'),
        }
        let _ = writeln!(
            text,
            " total_ms={:.3} upstream_ms={:.3}",
            line.total_ms,
            line.upstream_ms.unwrap_or(0.0)
        );
    }
    let full = {
        let mut buf = sink
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        buf.extend_from_slice(text.as_bytes());
        buf.len() >= FLUSH_AT
    };
    if full {
        flush();
    }
}

/// Write what is buffered to stdout.
pub fn flush() {
    let Some(sink) = SINK.get() else {
        return;
    };
    let pending = {
        let mut buf = sink
            .buf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buf.is_empty() {
            return;
        }
        std::mem::replace(&mut *buf, Vec::with_capacity(FLUSH_AT))
    };
    let mut out = std::io::stdout().lock();
    // A closed stdout loses log lines, never requests.
    let _ = out.write_all(&pending);
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

/// JSON-string escaping of `"`, `\` and control characters (paths and request ids are ASCII).
fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_a_line_valid_json() {
        let mut s = String::new();
        escape(&mut s, "a\"b\\c\u{1}");
        assert_eq!(s, "a\\\"b\\\\c\\u0001");
        let json: serde_json::Value = serde_json::from_str(&format!("{{\"p\":\"{s}\"}}")).unwrap();
        assert_eq!(json["p"], "a\"b\\c\u{1}");
    }
}
