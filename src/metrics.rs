//! Prometheus metrics, rendered on the admin listener. Labels are bounded: `key` is a key id from
//! the policy, `route` a template from [`crate::request::CanonicalPath::route_label`], never a raw path.
//!
//! Histograms have real buckets (summaries do not add up across replicas). The recorder is
//! process-global, installed once. Every family has HELP and TYPE lines (`describe`), names in
//! base units (`_seconds`, `_bytes`, `_total` on counters): the exposition passes
//! `promtool check metrics`. Beside qbgate's own families: `qbgate_build_info{version,revision}`
//! and the standard `process_*` families (from `metrics-process`, refreshed on each scrape).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};

use metrics::{Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The `process_*` families (CPU, memory, file descriptors, threads, start time).
static PROCESS: LazyLock<metrics_process::Collector> =
    LazyLock::new(metrics_process::Collector::default);

/// The crate's version, for `qbgate_build_info{version}`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision the binary was built from (`build.rs`; "unknown" without git), for
/// `qbgate_build_info{revision}`.
pub const REVISION: &str = env!("QBGATE_REVISION");

/// Seconds: 0.5 ms to 15 s, covering a local check and a slow upstream.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
];

/// Install the recorder (once); `None` if another recorder is already installed.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
                .inspect(|_| {
                    describe();
                    LOOKUP_CACHE.get_or_init(lookup_cache_counters);
                    metrics::gauge!("qbgate_build_info", "version" => VERSION, "revision" => REVISION)
                        .set(1.0);
                })
        })
        .as_ref()
}

/// HELP (and so TYPE) for every family, including those not yet seen: without a description the
/// exposition has no HELP line, which `promtool check metrics` reports.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        "qbgate_build_info",
        "Always 1; the version and git revision of the running binary."
    );
    describe_counter!(
        "qbgate_requests_total",
        "Requests answered, by key id, route template, status and the gateway's reason."
    );
    describe_histogram!(
        "qbgate_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to the end of its answer's body (the access line's total_ms), by route template."
    );
    describe_histogram!(
        "qbgate_upstream_duration_seconds",
        Unit::Seconds,
        "Time the upstream took to answer a forwarded request."
    );
    describe_counter!(
        "qbgate_upstream_errors_total",
        "Forwarded requests that got no answer from the upstream, by kind."
    );
    describe_counter!(
        "qbgate_rate_limited_total",
        "Requests refused with 429 by a rate limit, by key id."
    );
    describe_counter!(
        "qbgate_ratelimit_store_errors_total",
        "Rate-limit checks that could not use Redis and took on_error instead, by on_error (allow or deny)."
    );
    describe_counter!(
        "qbgate_unchecked_requests_total",
        "Requests outside the endpoint catalog forwarded unjudged because the key lists them in unchecked_routes, by key id."
    );
    describe_counter!(
        "qbgate_rule_violations_total",
        "Dialog updates that broke a dialog rule, by rule and mode (enforce refuses, report counts)."
    );
    describe_counter!(
        "qbgate_dialog_cache_requests_total",
        "Dialog lookups for the rules, by result (hit or miss)."
    );
    describe_counter!(
        "qbgate_lookup_cache_total",
        "Lookups of upstream state for the rules, by cache (dialog, message, event, subscriptions, blobs) and result (hit: answered from the cache, miss: asked the upstream)."
    );
    describe_counter!(
        "qbgate_policy_reloads_total",
        "Policy reloads, by result (success or failure; a failure keeps the last good policy)."
    );
    describe_counter!(
        "qbgate_key_digest_requests_total",
        "Authenticated requests on a key's digest that has a not_after (one being rotated out), by key and digest (its first 8 hex digits)."
    );
    describe_gauge!(
        "qbgate_key_digest_not_after_seconds",
        "A key digest's not_after as Unix seconds, by key and digest (first 8 hex digits); NaN once the policy no longer sets it."
    );
    describe_gauge!(
        "qbgate_policy_info",
        "1 for the serving policy's digest, 0 for the one it replaced."
    );
    describe_counter!(
        "qbgate_trace_spans_exported_total",
        "Request spans the OTLP collector accepted."
    );
    describe_counter!(
        "qbgate_trace_spans_dropped_total",
        "Request spans not exported, by reason (queue_full: the export queue was full; export_failed: the collector refused them or could not be reached)."
    );
    PROCESS.describe();
}

/// Drain histogram samples into their buckets. The recorder does this only on `render` unless
/// told: without a scrape, samples would pile up (about 35 bytes per request).
pub fn upkeep() {
    if let Some(handle) = handle() {
        handle.run_upkeep();
    }
}

/// The Prometheus text exposition, with the `process_*` families read now.
pub fn render() -> String {
    let Some(handle) = handle() else {
        return String::new();
    };
    PROCESS.collect();
    handle.render()
}

/// Status codes as shared label values, made once: no string is formatted per request.
static STATUS: LazyLock<Vec<Arc<str>>> = LazyLock::new(|| {
    (0..600u16)
        .map(|code| Arc::from(code.to_string()))
        .collect()
});

/// Labels of one `qbgate_requests_total` series.
struct RequestLabels<'a> {
    key: Option<&'a Arc<str>>,
    route: &'static str,
    status: u16,
    reason: &'static str,
}

/// A `qbgate_requests_total` series found by where its label strings live, not by their text:
/// hashing four integers instead of four strings. The strings are static (route, reason) or
/// held by the entry itself (the key id's `Arc`, in [`Resolved::key`]), so an address cannot be
/// reused for other text while its entry exists. The same text at two addresses (a key id after
/// a reload) only makes two entries for one series: the handles resolve to the same counter.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Identity {
    key: (usize, usize),
    route: (usize, usize),
    status: u16,
    reason: (usize, usize),
}

impl Identity {
    fn of(labels: &RequestLabels<'_>) -> Self {
        let at = |s: &str| (s.as_ptr() as usize, s.len());
        Identity {
            key: labels.key.map_or((0, 0), |k| at(k)),
            route: at(labels.route),
            status: labels.status,
            reason: at(labels.reason),
        }
    }
}

/// The handles one request updates, resolved once per series.
struct Resolved {
    requests: Counter,
    duration: Histogram,
    /// Keeps the key id's address (part of the [`Identity`]) from being reused.
    _key: Option<Arc<str>>,
}

/// Metric handles already resolved on this thread. Resolving a labelled handle through the
/// `metrics` macros builds, hashes and compares a `Key` per call, a tenth of the gateway's own
/// work per request; a handle found here is an atomic add. Entries are few (the series that
/// exist) and the map is cleared past [`HANDLES_MAX`], so a long-lived process with many
/// reloads cannot grow it without bound.
#[derive(Default)]
struct Handles {
    requests: HashMap<Identity, Resolved, foldhash::fast::RandomState>,
    upstream: Option<Histogram>,
    /// `qbgate_dialog_cache_requests_total` by `result`: counted on every judged request.
    dialog_cache: HashMap<&'static str, Counter, foldhash::fast::RandomState>,
}

const HANDLES_MAX: usize = 10_000;

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::default();
}

/// Run `f` on this thread's handles once the recorder is installed (a handle resolved before
/// would be a no-op forever); `None` before.
fn with_handles<R>(f: impl FnOnce(&mut Handles) -> R) -> Option<R> {
    HANDLE.get()?.as_ref()?;
    HANDLES.with(|handles| {
        let mut handles = handles.borrow_mut();
        if handles.requests.len() > HANDLES_MAX {
            handles.requests.clear();
        }
        Some(f(&mut handles))
    })
}

fn shared(key: Option<&Arc<str>>) -> metrics::SharedString {
    match key {
        Some(k) => metrics::SharedString::from(k.clone()),
        None => metrics::SharedString::const_str("-"),
    }
}

fn status_label(status: u16) -> metrics::SharedString {
    match STATUS.get(usize::from(status)) {
        Some(s) => metrics::SharedString::from(s.clone()),
        None => metrics::SharedString::from(status.to_string()),
    }
}

fn request_counter(labels: &RequestLabels<'_>) -> Counter {
    metrics::counter!(
        "qbgate_requests_total",
        "key" => shared(labels.key),
        "route" => labels.route,
        "status" => status_label(labels.status),
        "reason" => labels.reason
    )
}

fn duration_histogram(route: &'static str) -> Histogram {
    metrics::histogram!("qbgate_request_duration_seconds", "route" => route)
}

fn upstream_histogram() -> Histogram {
    metrics::histogram!("qbgate_upstream_duration_seconds")
}

pub fn request(
    key: Option<&Arc<str>>,
    route: &'static str,
    status: u16,
    reason: &'static str,
    seconds: f64,
) {
    let labels = RequestLabels {
        key,
        route,
        status,
        reason,
    };
    let cached = with_handles(|handles| {
        let resolved = handles
            .requests
            .entry(Identity::of(&labels))
            .or_insert_with(|| Resolved {
                requests: request_counter(&labels),
                duration: duration_histogram(route),
                _key: key.cloned(),
            });
        resolved.requests.increment(1);
        resolved.duration.record(seconds);
    });
    if cached.is_none() {
        request_counter(&labels).increment(1);
        duration_histogram(route).record(seconds);
    }
}

pub fn upstream(seconds: f64) {
    let cached = with_handles(|handles| {
        handles
            .upstream
            .get_or_insert_with(upstream_histogram)
            .record(seconds);
    });
    if cached.is_none() {
        upstream_histogram().record(seconds);
    }
}

pub fn upstream_error(kind: &'static str) {
    metrics::counter!("qbgate_upstream_errors_total", "kind" => kind).increment(1);
}

pub fn rate_limited(key: &Arc<str>) {
    metrics::counter!("qbgate_rate_limited_total", "key" => metrics::SharedString::from(key.clone())).increment(1);
}

/// A rate-limit check that Redis could not answer: `on_error` (`allow` or `deny`) decided it.
pub fn store_error(on_error: &'static str) {
    metrics::counter!("qbgate_ratelimit_store_errors_total", "on_error" => on_error).increment(1);
}

/// A request outside the endpoint catalog, forwarded unjudged under the key's `unchecked_routes`.
pub fn unchecked(key: &Arc<str>) {
    metrics::counter!("qbgate_unchecked_requests_total", "key" => metrics::SharedString::from(key.clone())).increment(1);
}

pub fn rule_violation(rule: &'static str, mode: &'static str) {
    metrics::counter!("qbgate_rule_violations_total", "rule" => rule, "mode" => mode).increment(1);
}

fn dialog_cache_counter(result: &'static str) -> Counter {
    metrics::counter!("qbgate_dialog_cache_requests_total", "result" => result)
}

pub fn dialog_cache(result: &'static str) {
    let cached = with_handles(|handles| {
        handles
            .dialog_cache
            .entry(result)
            .or_insert_with(|| dialog_cache_counter(result))
            .increment(1);
    });
    if cached.is_none() {
        dialog_cache_counter(result).increment(1);
    }
}

/// The caches `qbgate_lookup_cache_total` counts, its `cache` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupCache {
    Dialog,
    Message,
    Event,
    Subscriptions,
    Blobs,
}

impl LookupCache {
    const ALL: [LookupCache; 5] = [
        LookupCache::Dialog,
        LookupCache::Message,
        LookupCache::Event,
        LookupCache::Subscriptions,
        LookupCache::Blobs,
    ];

    fn label(self) -> &'static str {
        match self {
            LookupCache::Dialog => "dialog",
            LookupCache::Message => "message",
            LookupCache::Event => "event",
            LookupCache::Subscriptions => "subscriptions",
            LookupCache::Blobs => "blobs",
        }
    }
}

/// Every `qbgate_lookup_cache_total` series, registered with the recorder (so each shows from
/// the first scrape, at 0): `[cache * 2 + miss]`. Counting one is an index and an atomic add.
static LOOKUP_CACHE: OnceLock<Vec<Counter>> = OnceLock::new();

fn lookup_cache_counters() -> Vec<Counter> {
    LookupCache::ALL
        .iter()
        .flat_map(|cache| {
            ["hit", "miss"].map(|result| {
                metrics::counter!("qbgate_lookup_cache_total", "cache" => cache.label(), "result" => result)
            })
        })
        .collect()
}

/// One lookup of `cache`, answered from it (`hit`) or not. Before the recorder: nothing.
pub fn lookup_cache(cache: LookupCache, hit: bool) {
    lookup_cache_n(cache, hit, 1);
}

/// `n` lookups of `cache` at once (the messages of one request).
pub fn lookup_cache_n(cache: LookupCache, hit: bool, n: usize) {
    if n == 0 {
        return;
    }
    if let Some(counter) = LOOKUP_CACHE
        .get()
        .and_then(|all| all.get(cache as usize * 2 + usize::from(!hit)))
    {
        counter.increment(n as u64);
    }
}

pub fn reload(result: &'static str) {
    metrics::counter!("qbgate_policy_reloads_total", "result" => result).increment(1);
}

/// `qbgate_policy_info{digest}` is 1 for the serving policy, 0 for the one it replaced.
pub fn policy_info(old: &str, new: &str) {
    if old != new {
        metrics::gauge!("qbgate_policy_info", "digest" => old.to_string()).set(0.0);
    }
    metrics::gauge!("qbgate_policy_info", "digest" => new.to_string()).set(1.0);
}

/// A request authenticated by a digest that has a `not_after` (a rotation's old digest). Only such
/// digests are counted, so a key outside a rotation pays nothing for this family.
pub fn rotating_digest(key: &Arc<str>, digest: &str) {
    metrics::counter!(
        "qbgate_key_digest_requests_total",
        "key" => metrics::SharedString::from(key.clone()),
        "digest" => digest.to_owned()
    )
    .increment(1);
}

/// `qbgate_key_digest_not_after_seconds{key,digest}` for a newly loaded policy: each of `new`'s
/// `(key, digest, not_after)` is set; one of `old`'s that `new` no longer has becomes NaN (which
/// compares false, so no alert fires on a digest that is gone).
pub fn digest_not_after<'a>(
    old: impl IntoIterator<Item = (&'a Arc<str>, &'a str, f64)>,
    new: impl IntoIterator<Item = (&'a Arc<str>, &'a str, f64)>,
) {
    let gauge = |key: &Arc<str>, digest: &str| {
        metrics::gauge!(
            "qbgate_key_digest_not_after_seconds",
            "key" => metrics::SharedString::from(key.clone()),
            "digest" => digest.to_owned()
        )
    };
    let new: Vec<_> = new.into_iter().collect();
    for (key, digest, _) in old {
        if !new.iter().any(|(k, d, _)| *k == key && *d == digest) {
            gauge(key, digest).set(f64::NAN);
        }
    }
    for (key, digest, seconds) in new {
        gauge(key, digest).set(seconds);
    }
}

/// Spans the collector took.
pub fn trace_spans_exported(n: u64) {
    metrics::counter!("qbgate_trace_spans_exported_total").increment(n);
}

/// Spans lost: `queue_full` or `export_failed`.
pub fn trace_spans_dropped(reason: &'static str, n: u64) {
    metrics::counter!("qbgate_trace_spans_dropped_total", "reason" => reason).increment(n);
}
