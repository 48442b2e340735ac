//! The compiled, immutable policy that the request path reads.
//!
//! A [`Policy`] is built once from the file by [`compile()`] (every error collected with its
//! place), then shared behind an `ArcSwap` and never mutated: a reload builds a new one. The
//! command-line [`Overrides`] are applied to it before it serves, on start-up and on every reload.

pub mod compile;
mod dir;
pub mod file;
mod yaml;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};

pub use compile::{compile, compile_with_env, load, load_with, PolicyErrors, Secrets};
pub use dir::source_digest;

/// Everything the gateway needs to serve requests, resolved and validated.
#[derive(Debug)]
pub struct Policy {
    /// Short hex SHA-256 of the policy file's bytes: shows which policy a replica runs.
    pub digest: String,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: Upstream,
    pub client: ClientLimits,
    pub shutdown: ShutdownTiming,
    pub max_body_bytes: u64,
    pub qb_token: QbTokenMode,
    pub rate_limit: RateLimitStore,
    pub tracing: Tracing,
    pub dialog_rules: DialogRules,
    pub keys: Vec<Key>,
    /// SHA-256 digest of a key -> index into `keys` and into that key's `digests`.
    /// foldhash: the table holds only the policy's own digests, so a presented key can only
    /// probe it, never grow a chain.
    by_digest: HashMap<[u8; 32], (u32, u32), foldhash::fast::RandomState>,
}

#[derive(Debug)]
pub struct Upstream {
    /// `scheme://authority`, no trailing slash.
    pub origin: http::uri::Authority,
    pub scheme: http::uri::Scheme,
    /// Path prefix of the upstream URL ("" for none), without a trailing slash.
    pub base_path: String,
    /// `ApiKey <key>` ready to send, marked sensitive; `None` forwards the caller's own key.
    pub authorization: Option<HeaderValue>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub extra_ca_file: Option<PathBuf>,
}

/// The `tracing` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracing {
    /// Keep or start a W3C trace and pass it upstream.
    pub propagate: bool,
    /// Where spans go (OTLP/HTTP), as written in the policy; the `OTEL_*` environment variables
    /// are read when the gateway starts serving the policy.
    pub otlp_endpoint: Option<http::Uri>,
}

#[derive(Debug, Clone, Copy)]
pub struct ClientLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct ShutdownTiming {
    pub drain_delay: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QbTokenMode {
    Forward,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitStore {
    Memory,
    Redis(RedisStore),
}

/// `rate_limit.redis`: where the shared limits live and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisStore {
    pub servers: RedisServers,
    /// `password`, resolved from its `{env}` or `{file}` reference (never from the url).
    pub password: Option<RedisPassword>,
    /// `ca_file`: trusted besides the built-in roots on `rediss://` connections.
    pub ca_file: Option<PathBuf>,
    pub on_error_allow: bool,
}

/// How the Redis servers are found. Every address is a `redis://` or `rediss://` URL without a
/// password; a user name may stand in it (Redis ACL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisServers {
    /// `url`: one server (or a proxy in front of several).
    Single { url: String },
    /// `sentinel`: the sentinels tell which server is the primary of `master_name`.
    Sentinel {
        master_name: String,
        nodes: Vec<String>,
    },
    /// `cluster`: the seed nodes of a Redis Cluster.
    Cluster { nodes: Vec<String> },
}

/// The Redis password. Its `Debug` never shows it, so a logged policy cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisPassword(pub String);

impl std::fmt::Debug for RedisPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPassword(<redacted>)")
    }
}

impl RedisStore {
    /// One server at `url`, no password: what the defaults and most tests use.
    pub fn single(url: impl Into<String>, on_error_allow: bool) -> RedisStore {
        RedisStore {
            servers: RedisServers::Single { url: url.into() },
            password: None,
            ca_file: None,
            on_error_allow,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleMode {
    Enforce,
    Report,
    Off,
}

#[derive(Debug, Clone)]
pub struct DialogRules {
    pub mode: RuleMode,
    pub cache_ttl: Duration,
    /// `true`: forward when a lookup fails; `false`: answer 503.
    pub forward_on_lookup_error: bool,
    pub allow_fields: Vec<String>,
}

/// Which users a key may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnBehalfOf {
    /// The header is required; every user is allowed.
    Any,
    /// The key acts as the application; the header is refused.
    None,
    /// The header is required and must name one of these users (sorted).
    Users(Vec<u64>),
}

#[derive(Debug)]
pub struct Key {
    /// Appears in logs and metrics; the key itself never does.
    pub id: Arc<str>,
    pub on_behalf_of: OnBehalfOf,
    /// `None`: every route is allowed.
    pub routes: Option<Vec<RoutePattern>>,
    pub quota: Option<Quota>,
    pub expires_at: Option<SystemTime>,
    pub disabled: bool,
    /// The key's live digests: one for `sha256`, several during a rotation (`digests`), in
    /// policy order.
    pub digests: Vec<KeyDigest>,
    /// Account-owner powers (`powers`); empty by default.
    pub powers: Powers,
    /// Routes outside the endpoint catalog forwarded unjudged (`unchecked_routes`); empty by
    /// default: such a route is refused.
    pub unchecked_routes: Vec<RoutePattern>,
}

/// One digest of a key, as logs and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest {
    /// The first 8 hex digits of the digest: enough to tell a key's digests apart, never the key.
    pub prefix: DigestPrefix,
    /// Past this time the digest is refused (401 `key_expired`); the key's other digests are not.
    pub not_after: Option<SystemTime>,
}

/// The first 8 lowercase hex digits of a key's SHA-256, held inline (no allocation per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestPrefix([u8; 8]);

impl DigestPrefix {
    /// The prefix of `digest`.
    pub fn of(digest: &[u8; 32]) -> Self {
        let mut hex = [0u8; 8];
        // Four bytes are eight hex digits; the buffer is exactly their size.
        let _ = hex::encode_to_slice(&digest[..4], &mut hex);
        Self(hex)
    }

    /// The eight hex digits.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("-")
    }
}

impl std::fmt::Display for DigestPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One account-owner power: what a key may do to user accounts beyond acting as its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// `create_users`: `POST /users`.
    CreateUsers = 1,
    /// `mint_tokens`: `POST /users/{id}/tokens`, a session token for any user.
    MintTokens = 2,
    /// `manage_users`: update or delete a user other than the acting one.
    ManageUsers = 4,
}

impl Power {
    /// The word the policy file uses.
    pub fn word(self) -> &'static str {
        match self {
            Power::CreateUsers => "create_users",
            Power::MintTokens => "mint_tokens",
            Power::ManageUsers => "manage_users",
        }
    }
}

/// A set of [`Power`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Powers(u8);

impl Powers {
    /// No power at all: the default.
    pub const NONE: Powers = Powers(0);

    /// This set with `power` added.
    pub fn with(self, power: Power) -> Powers {
        Powers(self.0 | power as u8)
    }

    pub fn contains(self, power: Power) -> bool {
        self.0 & power as u8 != 0
    }
}

/// The limits of one key, as compiled from the policy's `rate_limit` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Quota {
    pub per_second: Option<NonZeroU32>,
    /// Bucket size of `per_second`; defaults to `per_second`. Ignored without `per_second`.
    pub burst: Option<NonZeroU32>,
    pub per_minute: Option<NonZeroU32>,
    pub per_hour: Option<NonZeroU32>,
    pub per_day: Option<NonZeroU32>,
    pub per_user_per_second: Option<NonZeroU32>,
}

/// One `METHOD PATH` allowlist entry. Segments are lowercase, a trailing `.json` removed, so that
/// `/CHAT/dialog/ID` and `/chat/Dialog/ID.json` match the same entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    /// `None` matches any method (`*`).
    pub method: Option<Method>,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Any,
}

impl Policy {
    /// The key whose digest is `digest`, with its index.
    pub fn key_by_digest(&self, digest: &[u8; 32]) -> Option<(u32, &Key)> {
        self.key_and_digest(digest)
            .map(|(index, key, _)| (index, key))
    }

    /// The full digests of the key at `index`, in policy order (for `gen-key --rotate`; a scan
    /// of the whole table, not for the request path).
    pub fn key_digests(&self, index: u32) -> Vec<[u8; 32]> {
        let mut found: Vec<(u32, [u8; 32])> = self
            .by_digest
            .iter()
            .filter(|(_, (i, _))| *i == index)
            .map(|(digest, (_, which))| (*which, *digest))
            .collect();
        found.sort_unstable();
        found.into_iter().map(|(_, digest)| digest).collect()
    }

    /// Every `(key id, digest prefix, not_after as Unix seconds)` of digests that have a
    /// `not_after`, for `qbgate_key_digest_not_after_seconds`.
    pub fn digest_deadlines(&self) -> impl Iterator<Item = (&Arc<str>, &str, f64)> {
        self.keys.iter().flat_map(|key| {
            key.digests.iter().filter_map(move |d| {
                let at = d.not_after?;
                let seconds = match at.duration_since(SystemTime::UNIX_EPOCH) {
                    Ok(after) => after.as_secs_f64(),
                    Err(before) => -before.duration().as_secs_f64(),
                };
                Some((&key.id, d.prefix.as_str(), seconds))
            })
        })
    }

    /// The key whose digest is `digest`, with its index and which of its digests matched.
    pub fn key_and_digest(&self, digest: &[u8; 32]) -> Option<(u32, &Key, &KeyDigest)> {
        let (index, which) = *self.by_digest.get(digest)?;
        let key = self.keys.get(index as usize)?;
        Some((index, key, key.digests.get(which as usize)?))
    }
}

impl RoutePattern {
    /// Does this entry allow `method` on a path whose route key has these `segments` (decoded,
    /// lowercased, the last without `.json`: the request phase's reading)?
    pub fn matches<'a>(
        &self,
        method: &Method,
        segments: impl ExactSizeIterator<Item = &'a str>,
    ) -> bool {
        if let Some(m) = &self.method {
            if m != method {
                return false;
            }
        }
        self.segments.len() == segments.len()
            && self
                .segments
                .iter()
                .zip(segments)
                .all(|(pattern, segment)| match pattern {
                    Segment::Any => true,
                    Segment::Literal(literal) => literal == segment,
                })
    }
}

/// `name.json` -> `name` (any letter case); anything else unchanged: how a route key's last
/// segment reads, in a policy's `routes` and in a request's path alike.
pub fn strip_json(segment: &str) -> &str {
    let n = segment.len();
    if n > 5 && segment.is_char_boundary(n - 5) && segment[n - 5..].eq_ignore_ascii_case(".json") {
        &segment[..n - 5]
    } else {
        segment
    }
}

/// `https://host[:port][/prefix]` -> parts; no query, no user info.
pub(crate) fn split_url(
    url: &str,
) -> Result<(http::uri::Scheme, http::uri::Authority, String), &'static str> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| "must be a URL such as https://api.quickblox.com")?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or("must start with http:// or https://")?;
    if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
        return Err("must start with http:// or https://");
    }
    let authority = uri.authority().cloned().ok_or("must name a host")?;
    if authority.as_str().contains('@') {
        return Err("must not carry credentials");
    }
    if uri.query().is_some() {
        return Err("must not have a query string");
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority, base_path))
}

pub(crate) fn unreachable_default() -> (http::uri::Scheme, http::uri::Authority, String) {
    (
        http::uri::Scheme::HTTPS,
        http::uri::Authority::from_static("api.quickblox.com"),
        String::new(),
    )
}

/// `"PUT /chat/Dialog/*"` -> a [`RoutePattern`].
pub fn parse_route(text: &str) -> Result<RoutePattern, String> {
    let (method, path) = text
        .trim()
        .split_once(' ')
        .ok_or("must be `METHOD /path`, such as `GET /chat/Dialog.json`")?;
    let method = match method {
        "*" => None,
        m if m.bytes().all(|b| b.is_ascii_uppercase()) && !m.is_empty() => {
            Some(Method::from_bytes(m.as_bytes()).map_err(|_| format!("unknown method `{m}`"))?)
        }
        m => return Err(format!("method `{m}` must be uppercase letters or `*`")),
    };
    let path = path.trim();
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("path `{path}` must start with `/`"))?;
    let mut raw: Vec<&str> = rest.split('/').collect();
    if raw.iter().any(|s| s.is_empty()) {
        return Err(format!("path `{path}` has an empty segment"));
    }
    if let Some(last) = raw.last_mut() {
        *last = strip_json(last);
    }
    let segments = raw
        .iter()
        .map(|s| {
            if *s == "*" {
                Segment::Any
            } else {
                Segment::Literal(s.to_ascii_lowercase())
            }
        })
        .collect();
    Ok(RoutePattern { method, segments })
}

/// A route segment up to its first `.`: the word Rails routes by (`dialog.json` and `dialog.xml`
/// are `dialog`). A byte scan: route segments are short, and this runs on every request.
pub fn stem(segment: &str) -> &str {
    match segment.bytes().position(|b| b == b'.') {
        Some(dot) => &segment[..dot],
        None => segment,
    }
}

/// Command-line values that override the policy file, on start-up and on every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub upstream: Option<String>,
}

impl Overrides {
    /// Sets the overridden fields of a compiled `policy`; an `--upstream` that is not a valid
    /// upstream URL is the error.
    pub fn apply(&self, policy: &mut Policy) -> Result<(), String> {
        if let Some(listen) = self.listen {
            policy.listen = listen;
        }
        if let Some(admin) = self.admin_listen {
            policy.admin_listen = admin;
        }
        if let Some(url) = &self.upstream {
            let (scheme, origin, base_path) =
                split_url(url).map_err(|e| format!("--upstream {url}: {e}"))?;
            policy.upstream.scheme = scheme;
            policy.upstream.origin = origin;
            policy.upstream.base_path = base_path;
        }
        Ok(())
    }
}

/// The JSON Schema of the policy file, for editors (`qbgate schema`).
pub fn schema() -> String {
    let schema = schemars::schema_for!(file::PolicyFile);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Lowercase hex SHA-256 of a key's bytes: the form the policy stores.
pub fn digest_hex(key: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key))
}
