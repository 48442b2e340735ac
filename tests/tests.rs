//! qbgate's integration suite: one binary, real TCP on loopback, the in-process QuickBlox
//! sandbox as the upstream.
//!
//! - `support`: starts a gateway and a recording sandbox on `127.0.0.1:0`, sends requests.
//! - `contract`: the rows of CONTRACT.md's response table, and what the upstream received.
//! - `tls`: a TLS upstream (test CA made with rcgen) over HTTP/1.1 and HTTP/2.
//! - `recipes`: every curl recipe of the "Update dialog" reference replayed through the gateway.
//! - `config_files`: the example policies load.
//! - `dialog_rules`: the rule matrix, bypass attempts and the dialog cache, through the gateway.
//! - `operations`: hot reload under load, the directory watch, graceful drain, metrics.
//! - `hostile`: smuggling, oversized or broken heads, slow clients, hostile bodies and JSON, h2 floods.
//! - `pool`: upstream connections reused over HTTP/1.1, shared over h2, stale ones skipped.
//! - `upstream_h1`: the own HTTP/1.1 client against a hand-written upstream: framing, uploads, refusals.
//! - `faults`: upstream refused, reset, stalled, 5xx and h2 GOAWAY: JSON errors, no double sends.
//! - `rate_limit`: 429s and their headers, per-user buckets, reloads, the Redis store.
//! - `regressions`: inputs the fuzzers, the soak and the sandbox's reader found; `#[ignore]`d while their bug is open.
//! - `secrets`: the real binary at trace level leaks no key, token or upstream key anywhere.

mod config_files;
mod contract;
mod dialog_rules;
mod faults;
mod hostile;
mod operations;
mod pool;
mod rate_limit;
mod recipes;
mod regressions;
mod secrets;
mod support;
mod tls;
mod upstream_h1;
