//! qbgate's integration suite: one binary, real TCP on loopback, the in-process QuickBlox
//! sandbox as the upstream.
//!
//! - `support`: starts a gateway and a recording sandbox on `127.0.0.1:0`, sends requests.
//! - `contract`: the rows of CONTRACT.md's response table, and what the upstream received.
//! - `tls`: a TLS upstream (test CA made with rcgen) over HTTP/1.1 and HTTP/2.
//! - `recipes`: every curl recipe of the "Update dialog" reference replayed through the gateway.
//! - `config_files`: the example policies load.
//! - `dialog_rules`: the rule matrix, bypass attempts and the dialog cache, through the gateway.
//! - `catalog`: the endpoint catalog's default deny (`route_unknown`), `unchecked_routes`
//!   forwarding and its metric, `routes` still narrowing, `need_user` and an application key's reads.
//! - `least_privilege`: account-owner powers, the acting user's own account, the old password and
//!   the `token` parameter, through the gateway.
//! - `messages`: the chat-message rules (send, list, mark, edit, delete, notifications), the
//!   message lookups and `on_lookup_error`, through the gateway.
//! - `ownership`: random users of a scoped key over the judged endpoints: nothing forwarded changes what its user does not own.
//! - `push`: the push rules (events: push only, now, to named users, own ones; own
//!   subscriptions), their lookups and `on_lookup_error`, through the gateway.
//! - `blobs`: blob ownership (update, complete, delete only one's own), the paged lookup of a
//!   user's blobs as him, its page cap and `on_lookup_error`, through the gateway.
//! - `address_book`: every user's own address book (upload, read, registered users) in every
//!   encoding; `need_user`, `user_not_allowed` and `token_param` refusals, through the gateway.
//! - `operations`: hot reload under load, the directory watch, graceful drain, metrics.
//! - `policy_dir`: `--policy DIR` (keys across files, one file per section, errors naming the
//!   file), reloaded as one unit after a `..data` swap; a broken or half-written set keeps the last
//!   good policy.
//! - `layers`: the import graph of `src/` against the layers and the "never" list; no cycles.
//! - `integrity`: every way found to make the upstream read another request than the one judged.
//! - `hostile`: smuggling, oversized or broken heads, slow clients, hostile bodies and JSON, h2 floods.
//! - `h2_conn`: HTTP/2 connections under the head deadline and idle timeout; rapid reset,
//!   CONTINUATION, SETTINGS and PING floods, written frame by frame.
//! - `pool`: upstream connections reused over HTTP/1.1, shared over h2, stale ones skipped.
//! - `upstream_h1`: the own HTTP/1.1 client against a hand-written upstream: framing, uploads, refusals.
//! - `faults`: upstream refused, reset, stalled, 5xx and h2 GOAWAY: JSON errors, no double sends.
//! - `rate_limit`: 429s and their headers, per-user buckets, reloads, the Redis store.
//! - `regressions`: inputs the fuzzers, the soak and the sandbox's reader found; `#[ignore]`d while their bug is open.
//! - `differential`: Rack 2.2 under Puma (the upstream's real parser) behind the gateway: what
//!   Rack read equals what the gateway judged, or the gateway refused (needs ruby-rack, puma).
//! - `logs`: the real binary's JSON lines: every access-line field, the request id on a request's
//!   rule lines, report mode's would-be reason.
//! - `traces`: W3C trace context kept or started upstream, `trace_id` on a request's lines, one
//!   span per request exported to an OTLP/HTTP receiver the test runs; `OTEL_*` variables; a
//!   stalled collector; `qbgate check` on the `tracing` section.
//! - `secrets`: the real binary at trace level leaks no key, token or upstream key anywhere.

mod address_book;
mod blobs;
mod catalog;
mod config_files;
mod contract;
mod dialog_rules;
mod differential;
mod faults;
mod h2_conn;
mod hostile;
mod integrity;
mod layers;
mod least_privilege;
mod logs;
mod messages;
mod operations;
mod ownership;
mod policy_dir;
mod pool;
mod push;
mod rate_limit;
mod recipes;
mod regressions;
mod secrets;
mod support;
mod tls;
mod traces;
mod upstream_h1;
