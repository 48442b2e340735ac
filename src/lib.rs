//! qbgate: an API-key gateway for the QuickBlox REST API.
//!
//! Each service gets its own scoped key (the policy stores only its SHA-256), limited to some
//! users, some routes and a rate; the real QuickBlox key stays in the gateway. Dialog updates that
//! would break QuickBlox's rules are rejected before they leave the pod, in QuickBlox's own JSON
//! error shapes.
//!
//! # Layout
//! A request's trip, phase by phase, and the file of each (the phases run in this order in
//! [`proxy::handle`]):
//!
//! | phase | file | what it does |
//! |---|---|---|
//! | accept | `app.rs`, `conn.rs` | HTTP/1.1 or HTTP/2 by the first bytes; head deadline, idle timeout, drain |
//! | request id | `proxy.rs` | `X-Request-Id` kept or made |
//! | trace context | `trace.rs` | W3C `traceparent` kept (the gateway's span its child) or a new trace started; `tracestate` kept only beside a valid one |
//! | normalize | `request.rs` + `request/{path,headers,body}.rs` | the one [`request::Canonical`]: hop-by-hop headers removed, anything the upstream could read otherwise refused |
//! | authenticate | `auth.rs` | `ApiKey` / `On-Behalf-Of` / `QB-Token` -> [`auth::Principal`] |
//! | route allowlist | `proxy.rs`, `policy.rs` | the key's `routes` |
//! | endpoint catalog | `proxy/catalog.rs`, `rules/catalog.rs` | API keys: every QuickBlox endpoint qbgate knows and its rule; outside it 403 `route_unknown` unless the key's `unchecked_routes` lists the route; a write that needs a user on an application key 403 `need_user` |
//! | rate limit | `ratelimit.rs` + `ratelimit/*` | per key and per user of a key; memory or Redis |
//! | body | `proxy.rs`, `request/body.rs` | streamed with its limits, or read whole for a rule or the `_method` check |
//! | rules | `proxy/judge.rs`, `rules.rs` + `rules/*`, `params.rs`, `proxy/lookup.rs` | the parameter document Rails would build, judged against QuickBlox's rule table (dialogs) and the key's powers (`rules/users.rs`: writes under `/users`, the `token` parameter), the acting user's chat messages (`rules/messages.rs`: `/chat/Message`, a dialog's notifications), push events and subscriptions (`rules/push.rs`), the acting user's blobs (`rules/blobs.rs`: writes to one blob); dialogs, messages, events' owners, users' subscriptions and blobs looked up by the proxy |
//! | forward | `request.rs` ([`request::Forward`]), `upstream.rs` + `upstream/{pool,h1}.rs` | the judged request written as judged: upstream key swapped, `X-Request-Id` set |
//! | respond, log | `proxy.rs` + `proxy/access.rs`, `error.rs`, `access_log.rs`, `metrics.rs`, `trace.rs` | the answer, or the gateway's own JSON error; one access line (and one exported span) when its body is done |
//!
//! Around the request path: `policy.rs` + `policy/{file,compile}.rs` (the YAML file compiled into an
//! immutable [`policy::Policy`]), `proxy/runtime.rs` (one policy generation and what is built from
//! it), `reload.rs` (directory watch, SIGHUP and periodic re-read -> compile -> swap), `admin.rs`
//! (`/healthz`, `/readyz`, `/metrics` on their own port), `cli.rs` and `main.rs` (the command line),
//! `sandbox.rs` (the QuickBlox-like upstream of `qbgate demo` and the tests).

pub mod access_log;
pub mod admin;
pub mod alloc;
pub mod app;
pub mod auth;
pub mod cli;
pub mod conn;
pub mod error;
pub mod metrics;
pub mod params;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod request;
pub mod rules;
pub mod sandbox;
pub mod trace;
pub mod upstream;

pub use app::{serve, Gateway};
pub use proxy::Runtime;
