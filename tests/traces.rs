//! Tracing through the real binary: the upstream request's `traceparent` (same trace, the
//! gateway's span as parent; a malformed one replaced, `tracestate` then dropped), `trace_id` on
//! the request's log lines, and the export of one span per request to an OTLP/HTTP receiver the
//! test runs (protobuf decoded with `opentelemetry-proto`): ids, attributes, resource, the
//! `OTEL_*` variables; a stalled collector never slows a request (spans dropped, counted).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use qbgate::sandbox::seed::{OWNER, RECIPE_USER};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::logs::{access_line, sandbox, send, Binary};
use crate::support::{digest, KEY_ANY};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// What the receiver was sent: each export's headers and decoded body.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(HeaderMap, ExportTraceServiceRequest, Bytes)>>>);

impl Received {
    fn spans(&self) -> Vec<(Span, Vec<KeyValue>)> {
        let mut all = Vec::new();
        for (_, export, _) in self.0.lock().unwrap().iter() {
            for resource in &export.resource_spans {
                let attrs = resource.resource.clone().unwrap_or_default().attributes;
                for scope in &resource.scope_spans {
                    for span in &scope.spans {
                        all.push((span.clone(), attrs.clone()));
                    }
                }
            }
        }
        all
    }

    /// The span of `trace_id` (hex), waiting up to 10 s for it.
    async fn span(&self, trace_id: &str) -> (Span, Vec<KeyValue>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = self
                .spans()
                .into_iter()
                .find(|(s, _)| hex(&s.trace_id) == trace_id)
            {
                return found;
            }
            assert!(Instant::now() < deadline, "no span of trace {trace_id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<Value> {
    let value = attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .clone()?
        .value?;
    Some(match value {
        any_value::Value::StringValue(s) => Value::from(s),
        any_value::Value::IntValue(n) => Value::from(n),
        any_value::Value::BoolValue(b) => Value::from(b),
        other => panic!("unexpected attribute value {other:?}"),
    })
}

/// An OTLP/HTTP receiver on loopback: decodes every POST to `/v1/traces`. `stall`: take the
/// request and never answer.
async fn receiver(stall: bool) -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        if stall {
                            std::future::pending::<()>().await;
                        }
                        assert_eq!(request.uri().path(), "/v1/traces");
                        assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let export = ExportTraceServiceRequest::decode(body.clone())
                            .expect("an ExportTraceServiceRequest");
                        seen.0.lock().unwrap().push((parts.headers, export, body));
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, received)
}

fn keys() -> String {
    format!(
        "- {{ id: any, sha256: {}, on_behalf_of: any }}\n",
        digest(KEY_ANY)
    )
}

fn h(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap()
}

async fn metrics(admin: SocketAddr) -> String {
    let got = send(false, "GET", format!("http://{admin}/metrics"), &[], vec![]).await;
    String::from_utf8(got.body.to_vec()).unwrap()
}

fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_continues_upstream_and_one_span_per_request_is_exported() {
    let (sandbox, upstream) = sandbox().await;
    let (collector, received) = receiver(false).await;
    let endpoint = format!("http://{collector}");
    let gate = Binary::start(
        upstream,
        "",
        &keys(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
            ("OTEL_SERVICE_NAME", "billing-gateway"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20collector-token",
            ),
        ],
    );
    let base = format!("http://{}", gate.listen);
    let auth = h(&format!("ApiKey {KEY_ANY}"));
    let user = h(&RECIPE_USER.to_string());

    // A caller in a trace: the upstream gets the same trace, with the gateway's span as parent.
    let traced = send(
        false,
        "GET",
        format!("{base}/chat/Dialog.json"),
        &[
            ("authorization", auth.clone()),
            ("on-behalf-of", user.clone()),
            ("traceparent", h(&format!("00-{TRACE}-{PARENT}-01"))),
            ("tracestate", h("vendor=opaque")),
        ],
        vec![],
    )
    .await;
    assert_eq!(traced.status, 200);
    let forwarded = sandbox.take_received();
    assert_eq!(forwarded.len(), 1);
    let sent = forwarded[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(sent.len(), 55, "{sent}");
    assert_eq!(&sent[..36], format!("00-{TRACE}-"));
    let gateway_span = sent[36..52].to_string();
    assert_ne!(gateway_span, PARENT);
    assert_eq!(&sent[52..], "-01");
    assert_eq!(forwarded[0].headers["tracestate"], "vendor=opaque");

    let (span, resource) = received.span(TRACE).await;
    assert_eq!(
        hex(&span.span_id),
        gateway_span,
        "the span the upstream was told"
    );
    assert_eq!(
        hex(&span.parent_span_id),
        PARENT,
        "the caller's span is the parent"
    );
    assert_eq!(span.name, "GET /chat/dialog");
    assert_eq!(
        attr(&span.attributes, "http.request.method"),
        Some("GET".into())
    );
    assert_eq!(
        attr(&span.attributes, "http.route"),
        Some("/chat/dialog".into())
    );
    assert_eq!(
        attr(&span.attributes, "http.response.status_code"),
        Some(200.into())
    );
    assert_eq!(attr(&span.attributes, "qbgate.key_id"), Some("any".into()));
    assert_eq!(attr(&span.attributes, "qbgate.reason"), None);
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    assert!(span.start_time_unix_nano > 1_600_000_000_000_000_000);
    assert_eq!(
        attr(&resource, "service.name"),
        Some("billing-gateway".into())
    );

    // A malformed traceparent: a new trace, tracestate dropped; the span has no parent.
    let malformed = send(
        true,
        "GET",
        format!("{base}/users/{OWNER}.json"),
        &[
            ("authorization", auth.clone()),
            ("on-behalf-of", user.clone()),
            (
                "traceparent",
                h(&format!("00-{}-{PARENT}-01", TRACE.to_uppercase())),
            ),
            ("tracestate", h("vendor=opaque")),
        ],
        vec![],
    )
    .await;
    let forwarded = sandbox.take_received();
    let sent = forwarded[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let new_trace = sent[3..35].to_string();
    assert_ne!(new_trace, TRACE);
    assert_ne!(new_trace.to_uppercase(), TRACE.to_uppercase());
    assert!(sent.starts_with("00-") && sent.ends_with("-01"), "{sent}");
    assert!(forwarded[0].headers.get("tracestate").is_none());
    let (span, _) = received.span(&new_trace).await;
    assert!(span.parent_span_id.is_empty());
    assert_eq!(hex(&span.span_id), &sent[36..52]);
    assert_eq!(
        attr(&span.attributes, "http.route"),
        Some("/users/{id}".into())
    );

    // A refusal is a span too, with its reason; and a rule's log line carries the trace id.
    let refused = send(
        false,
        "PUT",
        format!("{base}/users/{OWNER}.json"),
        &[
            ("authorization", auth.clone()),
            ("on-behalf-of", user.clone()),
            ("content-type", h("application/json")),
            (
                "traceparent",
                h(&format!("00-{}-{PARENT}-01", "1".repeat(32))),
            ),
        ],
        br#"{"user":{"full_name":"x"}}"#.to_vec(),
    )
    .await;
    assert_eq!(refused.status, 403);
    let (span, _) = received.span(&"1".repeat(32)).await;
    assert_eq!(
        attr(&span.attributes, "qbgate.reason"),
        Some("power_required".into())
    );
    assert_eq!(
        attr(&span.attributes, "http.response.status_code"),
        Some(403.into())
    );

    let scrape = metrics(gate.admin).await;
    assert!(
        counter(&scrape, "qbgate_trace_spans_exported_total") >= 3.0,
        "{scrape}"
    );
    // The collector's headers came from OTEL_EXPORTER_OTLP_HEADERS; no export carried the key.
    for (headers, _, body) in received.0.lock().unwrap().iter() {
        assert_eq!(headers["authorization"], "Bearer collector-token");
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains(KEY_ANY), "the key reached the collector");
    }

    let lines = gate.finish();
    let line = access_line(&lines, &traced.request_id);
    assert_eq!(line["trace_id"], TRACE);
    let line = access_line(&lines, &malformed.request_id);
    assert_eq!(line["trace_id"], new_trace.as_str());
    let rule: Vec<&Value> = lines
        .iter()
        .filter(|l| l["request_id"] == refused.request_id)
        .collect();
    assert_eq!(
        rule.len(),
        2,
        "the rule's line and the access line: {rule:#?}"
    );
    assert!(
        rule.iter().all(|l| l["trace_id"] == "1".repeat(32)),
        "{rule:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l["message"] == "qbgate serving" && l["trace_id"].is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_endpoint_exports_and_otel_sdk_disabled_turns_export_off() {
    let (sandbox, upstream) = sandbox().await;
    let (collector, received) = receiver(false).await;
    let section = format!("tracing:\n  otlp_endpoint: http://{collector}\n");
    // Disabled: nothing exported, the trace still propagated.
    let gate = Binary::start(
        upstream,
        &section,
        &keys(),
        &[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let got = send(
        false,
        "GET",
        format!("http://{}/chat/Dialog.json", gate.listen),
        &[
            ("authorization", h(&format!("ApiKey {KEY_ANY}"))),
            ("on-behalf-of", h("123")),
        ],
        vec![],
    )
    .await;
    assert_eq!(got.status, 200);
    let sent = sandbox.take_received()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    // A new trace, not sampled: nothing records it here.
    assert!(sent.ends_with("-00"), "{sent}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(gate.finish());
    assert!(
        received.spans().is_empty(),
        "OTEL_SDK_DISABLED=true exported spans"
    );

    // The policy's endpoint alone: exported.
    let gate = Binary::start(
        upstream,
        &section,
        &keys(),
        &[("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    let got = send(
        false,
        "GET",
        format!("http://{}/chat/Dialog.json", gate.listen),
        &[
            ("authorization", h(&format!("ApiKey {KEY_ANY}"))),
            ("on-behalf-of", h("123")),
        ],
        vec![],
    )
    .await;
    let sent = sandbox.take_received()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(sent.ends_with("-01"), "{sent}");
    let (span, resource) = received.span(&sent[3..35]).await;
    assert_eq!(hex(&span.span_id), &sent[36..52]);
    assert_eq!(attr(&resource, "service.name"), Some("qbgate".into()));
    let lines = gate.finish();
    assert_eq!(
        access_line(&lines, &got.request_id)["trace_id"],
        &sent[3..35]
    );

    // propagate: false: headers pass untouched, no trace id in the log.
    let gate = Binary::start(upstream, "tracing:\n  propagate: false\n", &keys(), &[]);
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let got = send(
        false,
        "GET",
        format!("http://{}/chat/Dialog.json", gate.listen),
        &[
            ("authorization", h(&format!("ApiKey {KEY_ANY}"))),
            ("on-behalf-of", h("123")),
            ("traceparent", h(&incoming)),
        ],
        vec![],
    )
    .await;
    assert_eq!(
        sandbox.take_received()[0].headers["traceparent"],
        incoming.as_str()
    );
    let lines = gate.finish();
    assert!(access_line(&lines, &got.request_id)
        .get("trace_id")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_never_slows_a_request() {
    let (_sandbox, upstream) = sandbox().await;
    let (collector, _) = receiver(true).await;
    let endpoint = format!("http://{collector}");
    let gate = Binary::start(
        upstream,
        "",
        &keys(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "10"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "2"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
        ],
    );
    let url = format!("http://{}/chat/Dialog.json", gate.listen);
    let headers = [
        ("authorization", h(&format!("ApiKey {KEY_ANY}"))),
        ("on-behalf-of", h("123")),
    ];
    let started = Instant::now();
    for _ in 0..40 {
        let one = Instant::now();
        assert_eq!(
            send(false, "GET", url.clone(), &headers, vec![])
                .await
                .status,
            200
        );
        assert!(
            one.elapsed() < Duration::from_secs(2),
            "a request waited for the collector"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    let scrape = metrics(gate.admin).await;
    let dropped = counter(
        &scrape,
        "qbgate_trace_spans_dropped_total{reason=\"queue_full\"}",
    );
    assert!(dropped >= 30.0, "dropped {dropped}:\n{scrape}");
    drop(gate.finish());
}

#[test]
fn check_names_a_bad_tracing_section_in_plain_words() {
    let dir = std::env::temp_dir().join(format!("qbgate-trace-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "tracing:\n  otlp_endpoint: collector:4318\n",
            "tracing.otlp_endpoint: must start with http:// or https:// (line 3, column 18)",
        ),
        (
            "tracing:\n  otlp_endpoint: http://user:pw@collector:4318\n",
            "tracing.otlp_endpoint: must not carry credentials (line 3, column 18)",
        ),
        (
            "tracing:\n  propagate: true\n  exporter: otlp\n",
            "unknown field `exporter`",
        ),
    ];
    // `qbgate check` on a policy with `section`.
    let check = |section: &str| {
        let path = dir.join("policy.yaml");
        let text = format!(
            "version: 1\n{section}keys:\n- {{ id: a, sha256: {} }}\n",
            digest("k")
        );
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_qbgate"))
            .args(["check", "--policy"])
            .arg(&path)
            .output()
            .unwrap()
    };
    for (section, expected) in cases {
        let out = check(section);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{section}: {stderr}");
        assert!(stderr.contains(expected), "{section}: {stderr}");
    }
    let out =
        check("tracing:\n  propagate: true\n  otlp_endpoint: https://collector.example:4318\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
