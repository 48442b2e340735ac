//! Tracing: the W3C trace context of each request ([`Context`]) and the optional export of one
//! span per request over OTLP/HTTP ([`Exporter`]).
//!
//! Propagation costs one header read and one header written per request: a valid incoming
//! `traceparent` keeps its trace id and becomes the gateway span's parent; a missing or malformed
//! one starts a new trace (and an incoming `tracestate` is then dropped, as W3C asks). The
//! upstream request carries `traceparent` with the gateway's own span id.
//!
//! Export is off unless the policy's `tracing.otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) names a collector. Spans go into a bounded queue that
//! the request path never waits on (a full queue drops the span and counts it); a background task
//! sends them in batches as OTLP protobuf (`opentelemetry-proto`'s messages) over the gateway's
//! own hyper client. The OpenTelemetry SDK's batch processor was not used: it cannot report what it
//! drops, and its HTTP exporters need either a blocking reqwest client with a runtime of its own,
//! or an async-runtime feature; one span per request, made at the request's end, needs neither.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;
use tokio::sync::mpsc;

use crate::policy;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Every byte's two lowercase hex digits, made at compile time: a byte is written as one lookup
/// and one two-byte copy (a digit at a time costs twice as many instructions).
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    pairs
};

/// `00-` + 32 + `-` + 16 + `-` + 2.
const HEADER_LEN: usize = 55;

/// One request's place in a trace: the `traceparent` it sends upstream (its trace id, the
/// gateway's span id, the flags), and the caller's span when there was one.
#[derive(Clone, Copy)]
pub struct Context {
    header: [u8; HEADER_LEN],
    /// The caller's span id (16 hex digits), from a valid incoming `traceparent`.
    parent: Option<[u8; 16]>,
}

impl Context {
    /// Read the incoming trace context from `headers` and write the outgoing one in its place:
    /// `traceparent` always (the same trace, or a new one), `tracestate` kept only beside a
    /// valid `traceparent`. A new trace is marked sampled when `sample_new` (spans are exported).
    pub fn start(headers: &mut HeaderMap, sample_new: bool) -> Context {
        let mut seen = Seen::default();
        for (name, value) in headers.iter() {
            seen.note(name, value);
        }
        let incoming = seen.read();
        Context::write(headers, incoming, sample_new)
    }

    /// [`Context::start`] for a request whose fields were already looked at ([`Seen`], in the
    /// caller's own pass over them): the incoming context as read there, the outgoing written.
    pub fn write(headers: &mut HeaderMap, incoming: Incoming, sample_new: bool) -> Context {
        let mut header = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let parent = match incoming.parsed {
            Some(parsed) => {
                header[3..35].copy_from_slice(&parsed.trace_id);
                header[53] = b'0';
                header[54] = if parsed.sampled { b'1' } else { b'0' };
                Some(parsed.parent)
            }
            None => {
                hex_into(&mut header[3..19], nonzero_random());
                hex_into(&mut header[19..35], fastrand::u64(..));
                header[54] = if sample_new { b'1' } else { b'0' };
                None
            }
        };
        hex_into(&mut header[36..52], nonzero_random());
        // Hex digits and dashes only: always a valid header value. An insert replaces every
        // copy the caller sent.
        if let Ok(value) = HeaderValue::from_bytes(&header) {
            headers.insert(TRACEPARENT.clone(), value);
        }
        // Looked up only when there is one to drop: most requests carry none.
        if parent.is_none() && incoming.tracestate {
            headers.remove(&TRACESTATE);
        }
        Context { header, parent }
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> [u8; 32] {
        let mut id = [0u8; 32];
        id.copy_from_slice(&self.header[3..35]);
        id
    }

    /// The gateway's span id, 16 hex digits.
    pub fn span_id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.header[36..52]);
        id
    }

    /// Is the trace sampled (the flag the upstream is sent)?
    pub fn sampled(&self) -> bool {
        self.header[54] == b'1'
    }

    /// The caller's span id, when the request came with a valid `traceparent`.
    pub fn parent(&self) -> Option<[u8; 16]> {
        self.parent
    }
}

/// The trace context fields of a request, noted during a pass over its headers (one name
/// comparison each, where a lookup per name would hash it).
#[derive(Default, Clone, Copy)]
pub struct Seen<'a> {
    /// The first `traceparent`.
    traceparent: Option<&'a HeaderValue>,
    /// `traceparent` came more than once: no way to tell which is meant.
    repeated: bool,
    tracestate: bool,
}

impl<'a> Seen<'a> {
    /// Note one header field (any other than the trace context's is passed over).
    pub fn note(&mut self, name: &HeaderName, value: &'a HeaderValue) {
        if *name == TRACEPARENT {
            self.repeated = self.traceparent.is_some();
            self.traceparent.get_or_insert(value);
        } else if *name == TRACESTATE {
            self.tracestate = true;
        }
    }

    /// The incoming context, read: it no longer borrows the headers, which
    /// [`Context::write`] then changes.
    pub fn read(self) -> Incoming {
        Incoming {
            parsed: match self.traceparent {
                Some(one) if !self.repeated => parse(one.as_bytes()),
                _ => None,
            },
            tracestate: self.tracestate,
        }
    }
}

/// The caller's trace context, as [`Seen::read`] found it.
pub struct Incoming {
    /// A single valid `traceparent`.
    parsed: Option<Parsed>,
    /// A `tracestate` came (dropped unless beside a valid `traceparent`).
    tracestate: bool,
}

/// What a valid `traceparent` says.
struct Parsed {
    trace_id: [u8; 32],
    parent: [u8; 16],
    sampled: bool,
}

/// Parse a `traceparent` as W3C Trace Context level 1 reads it: `version-traceid-parentid-flags`,
/// lowercase hex; version `ff`, an all-zero trace or parent id are invalid; version `00` is
/// exactly 55 characters; a later version may append `-...`, which is ignored.
fn parse(value: &[u8]) -> Option<Parsed> {
    let lower_hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    if value.len() < HEADER_LEN
        || value[2] != b'-'
        || value[35] != b'-'
        || value[52] != b'-'
        || !lower_hex(&value[..2])
        || !lower_hex(&value[3..35])
        || !lower_hex(&value[36..52])
        || !lower_hex(&value[53..55])
    {
        return None;
    }
    match &value[..2] {
        b"ff" => return None,
        b"00" if value.len() != HEADER_LEN => return None,
        _ if value.len() > HEADER_LEN && value[HEADER_LEN] != b'-' => return None,
        _ => {}
    }
    let zero = |b: &[u8]| b.iter().all(|&c| c == b'0');
    if zero(&value[3..35]) || zero(&value[36..52]) {
        return None;
    }
    let mut trace_id = [0u8; 32];
    trace_id.copy_from_slice(&value[3..35]);
    let mut parent = [0u8; 16];
    parent.copy_from_slice(&value[36..52]);
    let flags = unhex(&value[53..55]).unwrap_or(0);
    Some(Parsed {
        trace_id,
        parent,
        sampled: flags & 1 == 1,
    })
}

/// A random id that is not zero (zero means "invalid" in W3C).
fn nonzero_random() -> u64 {
    // Not `u64(1..)`: a range draws by rejection, the full range is one step.
    fastrand::u64(..).max(1)
}

/// `n` as 16 lowercase hex digits into `out` (its 16 bytes).
fn hex_into(out: &mut [u8], n: u64) {
    hex_bytes(out, &n.to_be_bytes());
}

/// `bytes` as lowercase hex into `out` (twice as long), a byte's two digits at a time; also the
/// digits of the gateway's request ids.
pub fn hex_bytes(out: &mut [u8], bytes: &[u8]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
    }
}

fn unhex(b: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    b.iter().try_fold(0u8, |n, &c| Some((n << 4) | digit(c)?))
}

fn bytes_of_hex<const N: usize>(hex: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = hex.get(2 * i..2 * i + 2).and_then(unhex).unwrap_or(0);
    }
    out
}

/// One finished request, as its span says it.
pub struct Finished<'a> {
    pub context: Context,
    pub start: SystemTime,
    pub duration: Duration,
    pub method: &'a Method,
    pub route: &'a str,
    pub status: u16,
    pub key: Option<&'a str>,
    pub reason: &'a str,
    pub report_only: bool,
    pub protocol: &'a str,
    pub upstream_status: Option<u16>,
}

/// Tracing as a policy generation runs it: propagate or not, export or not.
#[derive(Clone)]
pub struct Tracer {
    pub propagate: bool,
    exporter: Option<Exporter>,
    /// Which spans to export.
    sampler: Sampler,
}

impl Tracer {
    /// Off: headers pass through untouched, nothing exported.
    pub fn off() -> Self {
        Tracer {
            propagate: false,
            exporter: None,
            sampler: Sampler::ParentBasedAlwaysOn,
        }
    }

    /// From the policy's `tracing` section and the `OTEL_*` variables (`env`). Must run inside
    /// the tokio runtime when spans are exported (the sending task is spawned here).
    pub fn new(tracing: &policy::Tracing, env: &dyn Fn(&str) -> Option<String>) -> Self {
        if !tracing.propagate {
            return Self::off();
        }
        let settings = Settings::read(tracing, env);
        for warning in &settings.warnings {
            tracing::warn!("tracing: {warning}");
        }
        let exporter = settings.endpoint.clone().map(|endpoint| {
            tracing::info!(endpoint = %endpoint, "tracing: exporting one span per request over OTLP/HTTP");
            Exporter::spawn(endpoint, settings.clone())
        });
        Tracer {
            propagate: true,
            exporter,
            sampler: settings.sampler,
        }
    }

    /// Whether spans are exported (a new trace is then started sampled).
    pub fn exporting(&self) -> bool {
        self.exporter.is_some() && self.sampler != Sampler::AlwaysOff
    }

    /// The exporter, when this request's span is to be exported.
    pub fn exporter_for(&self, context: &Context) -> Option<&Exporter> {
        let exporter = self.exporter.as_ref()?;
        let export = match self.sampler {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::ParentBasedAlwaysOn => context.parent.is_none() || context.sampled(),
            Sampler::ParentBasedAlwaysOff => context.parent.is_some() && context.sampled(),
        };
        export.then_some(exporter)
    }
}

/// `OTEL_TRACES_SAMPLER`, the values that need no argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sampler {
    AlwaysOn,
    AlwaysOff,
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
}

/// What the export runs with, read from the policy and the environment.
#[derive(Debug, Clone)]
struct Settings {
    /// The full URL spans are POSTed to (`.../v1/traces`).
    endpoint: Option<Uri>,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    resource: Vec<(String, String)>,
    sampler: Sampler,
    queue: usize,
    batch: usize,
    delay: Duration,
    /// Settings that were ignored, and why (logged once).
    warnings: Vec<String>,
}

impl Settings {
    fn read(tracing: &policy::Tracing, env: &dyn Fn(&str) -> Option<String>) -> Settings {
        let mut warnings = Vec::new();
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        // The policy's endpoint first (configuration over environment, as OpenTelemetry orders
        // them), then the signal-specific variable (a full URL), then the general one (a base).
        let endpoint = if disabled {
            None
        } else if let Some(uri) = &tracing.otlp_endpoint {
            Some(signal_url(uri))
        } else if let Some(text) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            url(&text, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &mut warnings)
        } else if let Some(text) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            url(&text, "OTEL_EXPORTER_OTLP_ENDPOINT", &mut warnings).map(|u| signal_url(&u))
        } else {
            None
        };
        if let Some(protocol) = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .filter(|p| p != "http/protobuf")
        {
            warnings.push(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; spans go as http/protobuf"
            ));
        }
        let mut headers = Vec::new();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            if let Some(list) = var(name) {
                for (key, value) in pairs(&list) {
                    match (
                        HeaderName::from_bytes(key.as_bytes()),
                        HeaderValue::from_str(&value),
                    ) {
                        (Ok(key), Ok(mut value)) => {
                            // Often a collector's credentials: never shown.
                            value.set_sensitive(true);
                            headers.retain(|(k, _)| k != key);
                            headers.push((key, value));
                        }
                        // The value is not repeated: it may be a secret.
                        _ => warnings
                            .push(format!("{name}: `{key}` is not a valid header; left out")),
                    }
                }
            }
        }
        let millis = |name: &str, default: u64, warnings: &mut Vec<String>| match var(name) {
            None => Duration::from_millis(default),
            Some(v) => v.parse().map(Duration::from_millis).unwrap_or_else(|_| {
                warnings.push(format!(
                    "{name}={v} is not a number of milliseconds; {default} used"
                ));
                Duration::from_millis(default)
            }),
        };
        let timeout = match var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") {
            Some(_) => millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 10_000, &mut warnings),
            None => millis("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000, &mut warnings),
        };
        let delay = millis("OTEL_BSP_SCHEDULE_DELAY", 5_000, &mut warnings);
        let count = |name: &str, default: usize, warnings: &mut Vec<String>| match var(name) {
            None => default,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => {
                    warnings.push(format!(
                        "{name}={v} is not a positive number; {default} used"
                    ));
                    default
                }
            },
        };
        let queue = count("OTEL_BSP_MAX_QUEUE_SIZE", 2048, &mut warnings);
        let batch = count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, &mut warnings).min(queue);
        let sampler = match var("OTEL_TRACES_SAMPLER").as_deref() {
            None | Some("parentbased_always_on") => Sampler::ParentBasedAlwaysOn,
            Some("always_on") => Sampler::AlwaysOn,
            Some("always_off") => Sampler::AlwaysOff,
            Some("parentbased_always_off") => Sampler::ParentBasedAlwaysOff,
            Some(other) => {
                warnings.push(format!(
                    "OTEL_TRACES_SAMPLER={other} is not supported; parentbased_always_on used"
                ));
                Sampler::ParentBasedAlwaysOn
            }
        };
        let mut resource: Vec<(String, String)> = var("OTEL_RESOURCE_ATTRIBUTES")
            .map(|list| pairs(&list))
            .unwrap_or_default();
        let service = var("OTEL_SERVICE_NAME")
            .or_else(|| {
                resource
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| "qbgate".to_string());
        resource.retain(|(k, _)| k != "service.name");
        resource.insert(0, ("service.name".to_string(), service));
        resource.push(("telemetry.sdk.name".to_string(), "qbgate".to_string()));
        Settings {
            endpoint,
            headers,
            timeout,
            resource,
            sampler,
            queue,
            batch,
            delay,
            warnings,
        }
    }
}

/// An `OTEL_*` URL: http or https, with a host.
fn url(text: &str, name: &str, warnings: &mut Vec<String>) -> Option<Uri> {
    match policy::split_url(text).and_then(|_| text.parse::<Uri>().map_err(|_| "")) {
        Ok(uri) => Some(uri),
        Err(_) => {
            warnings.push(format!(
                "{name}={text} is not an http:// or https:// URL; no span is exported"
            ));
            None
        }
    }
}

/// A collector's base URL with the traces path appended (`http://c:4318` ->
/// `http://c:4318/v1/traces`); a URL that already names a path other than `/` is kept.
fn signal_url(base: &Uri) -> Uri {
    let path = base.path();
    if path != "/" && !path.is_empty() {
        return base.clone();
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/traces"));
    Uri::from_parts(parts).unwrap_or_else(|_| base.clone())
}

/// `k1=v1,k2=v2` with percent-encoded values (W3C Baggage form, as `OTEL_*` lists are written).
fn pairs(list: &str) -> Vec<(String, String)> {
    list.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            let v = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
            (!k.is_empty()).then(|| (k.to_string(), v.into_owned()))
        })
        .collect()
}

/// One span waiting in the queue: what [`Finished`] said, owned.
struct Record {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    sampled: bool,
    start: u64,
    end: u64,
    name: String,
    attributes: Vec<KeyValue>,
    error: bool,
}

/// The sending side of the span queue; cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    queue: mpsc::Sender<Record>,
}

impl Exporter {
    fn spawn(endpoint: Uri, settings: Settings) -> Exporter {
        let (queue, spans) = mpsc::channel(settings.queue);
        tokio::spawn(send_batches(spans, endpoint, settings));
        Exporter { queue }
    }

    /// Queue `finished`'s span; never waits: a full queue drops it (counted).
    pub fn record(&self, finished: &Finished<'_>) {
        let context = &finished.context;
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        };
        let start = nanos(finished.start);
        let end = start.saturating_add(u64::try_from(finished.duration.as_nanos()).unwrap_or(0));
        let text = |key: &str, value: &str| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_string())),
            }),
            ..Default::default()
        };
        let int = |key: &str, value: i64| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(value)),
            }),
            ..Default::default()
        };
        let mut attributes = vec![
            text("http.request.method", finished.method.as_str()),
            text("http.route", finished.route),
            int("http.response.status_code", i64::from(finished.status)),
            text(
                "network.protocol.version",
                finished.protocol.trim_start_matches("HTTP/"),
            ),
        ];
        if let Some(key) = finished.key {
            attributes.push(text("qbgate.key_id", key));
        }
        if !finished.reason.is_empty() {
            attributes.push(text("qbgate.reason", finished.reason));
        }
        if finished.report_only {
            attributes.push(KeyValue {
                key: "qbgate.report_only".to_string(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::BoolValue(true)),
                }),
                ..Default::default()
            });
        }
        if let Some(status) = finished.upstream_status {
            attributes.push(int("qbgate.upstream_status", i64::from(status)));
        }
        let trace_id = context.trace_id();
        let span_id = context.span_id();
        let record = Record {
            trace_id: bytes_of_hex(&trace_id),
            span_id: bytes_of_hex(&span_id),
            parent: context.parent().map(|p| bytes_of_hex(&p)),
            sampled: context.sampled(),
            start,
            end,
            name: format!("{} {}", finished.method, finished.route),
            attributes,
            error: finished.status >= 500,
        };
        if self.queue.try_send(record).is_err() {
            crate::metrics::trace_spans_dropped("queue_full", 1);
        }
    }
}

/// The export task: batches of at most `batch` spans, sent when full or `delay` after the
/// batch's first span; ends (after sending what it holds) when every [`Exporter`] is dropped.
async fn send_batches(mut spans: mpsc::Receiver<Record>, endpoint: Uri, settings: Settings) {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(Arc::new(rustls::crypto::ring::default_provider()));
    let connector = match https {
        Ok(builder) => builder.https_or_http().enable_http1().build(),
        Err(error) => {
            tracing::warn!(%error, "tracing: no TLS for the collector; no span is exported");
            return;
        }
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let resource = Resource {
        attributes: settings
            .resource
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.clone(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v.clone())),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let mut batch = Vec::with_capacity(settings.batch);
    loop {
        let Some(first) = spans.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + settings.delay;
        let mut open = true;
        while batch.len() < settings.batch {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) => {
                    open = false;
                    break;
                }
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = encode(&resource, batch.drain(..));
        match post(&client, &endpoint, &settings, body).await {
            Ok(()) => crate::metrics::trace_spans_exported(n),
            Err(error) => {
                tracing::warn!(error, spans = n, "tracing: export failed; spans dropped");
                crate::metrics::trace_spans_dropped("export_failed", n);
            }
        }
        if !open {
            return;
        }
    }
}

fn encode(resource: &Resource, records: impl Iterator<Item = Record>) -> Bytes {
    let spans = records
        .map(|r| Span {
            trace_id: r.trace_id.to_vec(),
            span_id: r.span_id.to_vec(),
            parent_span_id: r.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: u32::from(r.sampled) | 0x100 | (u32::from(r.parent.is_some()) << 9),
            name: r.name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: r.start,
            end_time_unix_nano: r.end,
            attributes: r.attributes,
            status: Some(Status {
                code: if r.error {
                    status::StatusCode::Error as i32
                } else {
                    status::StatusCode::Unset as i32
                },
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "qbgate".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Bytes::from(request.encode_to_vec())
}

async fn post(
    client: &Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    endpoint: &Uri,
    settings: &Settings,
    body: Bytes,
) -> Result<(), String> {
    let mut request = Request::post(endpoint.clone())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    for (name, value) in &settings.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        // Read to the end so the connection is reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("collector answered {status}"))
        }
    };
    tokio::time::timeout(settings.timeout, exchange)
        .await
        .map_err(|_| "collector timed out".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(pairs: &[(&str, &str)], sample_new: bool) -> (Context, HeaderMap) {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        (Context::start(&mut headers, sample_new), headers)
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn hex_digits_are_what_fmt_writes() {
        for byte in 0..=255u8 {
            let mut out = [0u8; 2];
            hex_bytes(&mut out, &[byte]);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{byte:02x}"));
        }
        for n in [0, 1, 0xa0f, u64::MAX, 0x0123_4567_89ab_cdef]
            .into_iter()
            .chain(std::iter::repeat_with(|| fastrand::u64(..)).take(1000))
        {
            let mut out = [0u8; 16];
            hex_into(&mut out, n);
            assert_eq!(std::str::from_utf8(&out).unwrap(), format!("{n:016x}"));
        }
    }

    #[test]
    fn a_valid_traceparent_is_kept_and_the_gateway_becomes_the_parent() {
        let (cx, headers) = start(&[("traceparent", VALID), ("tracestate", "a=1")], false);
        let sent = headers["traceparent"].to_str().unwrap();
        assert_eq!(&sent[..36], "00-4bf92f3577b34da6a3ce929d0e0e4736-");
        assert_ne!(&sent[36..52], "00f067aa0ba902b7");
        assert_eq!(&sent[52..], "-01");
        assert_eq!(&cx.trace_id(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(cx.parent(), Some(*b"00f067aa0ba902b7"));
        assert_eq!(headers["tracestate"], "a=1");
        assert!(parse(sent.as_bytes()).is_some());
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace_and_drops_tracestate() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            let (cx, headers) = start(&[("traceparent", bad), ("tracestate", "a=1")], true);
            assert!(cx.parent().is_none(), "{bad}");
            assert_ne!(&cx.trace_id(), b"4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(headers.get("tracestate").is_none(), "{bad}");
            let sent = headers["traceparent"].to_str().unwrap();
            assert!(parse(sent.as_bytes()).is_some(), "{sent}");
            assert!(
                sent.ends_with("-01"),
                "a new trace is sampled when exporting"
            );
        }
        // Two traceparent headers: no way to tell which is meant.
        let (cx, headers) = start(&[("traceparent", VALID), ("traceparent", VALID)], false);
        assert!(cx.parent().is_none());
        assert_eq!(headers.get_all("traceparent").iter().count(), 1);
        assert!(headers["traceparent"].to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-whatever";
        let (cx, headers) = start(&[("traceparent", later)], false);
        assert_eq!(cx.parent(), Some(*b"00f067aa0ba902b7"));
        // Sent on as version 00 with only the flags version 00 defines.
        assert!(headers["traceparent"]
            .to_str()
            .unwrap()
            .starts_with("00-4bf9"));
        assert!(cx.sampled());
        assert!(headers["traceparent"].to_str().unwrap().ends_with("-01"));
    }

    #[test]
    fn settings_follow_the_policy_then_the_otel_variables() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let off = policy::Tracing {
            propagate: true,
            otlp_endpoint: None,
        };
        let on = policy::Tracing {
            propagate: true,
            otlp_endpoint: Some("http://collector:4318".parse().unwrap()),
        };
        let read = |t: &policy::Tracing, vars| Settings::read(t, &env(vars));
        assert!(read(&off, &[]).endpoint.is_none());
        assert_eq!(
            read(&on, &[]).endpoint.unwrap().to_string(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            read(
                &off,
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c.example:4318/")]
            )
            .endpoint
            .unwrap()
            .to_string(),
            "https://c.example:4318/v1/traces"
        );
        assert_eq!(
            read(
                &off,
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4318/custom")
                ]
            )
            .endpoint
            .unwrap()
            .to_string(),
            "http://b:4318/custom"
        );
        assert!(read(&on, &[("OTEL_SDK_DISABLED", "true")])
            .endpoint
            .is_none());
        assert!(read(&on, &[("OTEL_TRACES_EXPORTER", "none")])
            .endpoint
            .is_none());
        let bad = read(&off, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]);
        assert!(bad.endpoint.is_none() && bad.warnings.len() == 1, "{bad:?}");

        let s = read(
            &on,
            &[
                ("OTEL_SERVICE_NAME", "billing-gw"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "service.name=x,deployment.environment=prod",
                ),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "authorization=Bearer%20s3cret,x-a=1",
                ),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-a=2"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "10"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "nope"),
            ],
        );
        assert_eq!(s.resource[0], ("service.name".into(), "billing-gw".into()));
        assert!(s
            .resource
            .contains(&("deployment.environment".into(), "prod".into())));
        let header = |n: &str| {
            s.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("authorization").unwrap(), "Bearer s3cret");
        assert!(header("authorization").unwrap().is_sensitive());
        assert_eq!(header("x-a").unwrap(), "2");
        assert_eq!((s.queue, s.batch), (10, 10));
        assert_eq!(s.delay, Duration::from_millis(100));
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(!format!("{:?}", s.warnings).contains("s3cret"));
    }
}
