//! The policy file exactly as it is written: serde structs, unknown fields refused, no logic.
//!
//! Values that compile-time checks need to point at carry their place (`Spanned`), so an error
//! can say `keys[2].rate_limit.burst: must be at least 1 (line 31, column 14)`.

use std::borrow::Cow;
use std::cell::Cell;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer};

/// A value with its place in the file (1-based line and column).
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub line: u64,
    pub column: u64,
}

thread_local! {
    /// Off while [`without_spans`] runs a parser that has no places to give (serde_json).
    static SPANS: Cell<bool> = const { Cell::new(true) };
}

/// Run `parse` with every [`At`] read as its bare value, at line 0, column 0. Only for a parse
/// whose errors are never shown: a failure is reported from a YAML parse of the same text.
pub fn without_spans<R>(parse: impl FnOnce() -> R) -> R {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            SPANS.set(true);
        }
    }
    SPANS.set(false);
    let _restore = Restore;
    parse()
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if !SPANS.get() {
            return Ok(At {
                value: T::deserialize(deserializer)?,
                line: 0,
                column: 0,
            });
        }
        let spanned = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        Ok(At {
            value: spanned.value,
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
        })
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
/// qbgate policy, version 1 (see config/policy.example.yaml).
#[schemars(title = "qbgate policy")]
pub struct PolicyFile {
    /// Always 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: At<u32>,
    /// Where the application talks to the sidecar (IP:port). Default 127.0.0.1:8080.
    pub listen: Option<At<String>>,
    /// /healthz /readyz /metrics (IP:port). Default 0.0.0.0:9090.
    pub admin_listen: Option<At<String>>,
    pub upstream: Option<Upstream>,
    pub client: Option<Client>,
    pub shutdown: Option<Shutdown>,
    /// Larger requests get 413. Default 1048576.
    #[schemars(range(min = 1))]
    pub max_body_bytes: Option<At<u64>>,
    /// `forward` (default) or `reject`: requests that carry QB-Token instead of ApiKey.
    #[schemars(regex(pattern = r"^(forward|reject)$"))]
    pub qb_token: Option<At<String>>,
    pub rate_limit: Option<RateLimitStore>,
    pub tracing: Option<Tracing>,
    pub dialog_rules: Option<DialogRules>,
    /// The API keys. Required; in a policy directory each file may hold some of them, or none.
    // Boxed: a list of 10,000 keys grows by pointers, not by copies of whole keys, and leaves no
    // outgrown multi-megabyte buffers behind.
    #[schemars(required)]
    pub keys: Option<Vec<Box<Key>>>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// W3C `traceparent`/`tracestate`: kept, or a new trace started. Default true.
    pub propagate: Option<bool>,
    /// OTLP/HTTP collector (`http://otel-collector:4318`): one span per request is exported
    /// there. Optional; `OTEL_EXPORTER_OTLP_ENDPOINT` also names one.
    pub otlp_endpoint: Option<At<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub url: Option<At<String>>,
    pub api_key: Option<At<SecretRef>>,
    pub connect_timeout: Option<At<String>>,
    pub timeout: Option<At<String>>,
    pub extra_ca_file: Option<At<String>>,
}

/// `{ env: NAME }` or `{ file: PATH }`: where a secret comes from, never the secret itself.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub env: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub header_timeout: Option<At<String>>,
    pub body_timeout: Option<At<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    pub drain_delay: Option<At<String>>,
    pub timeout: Option<At<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitStore {
    /// `memory` (default) or `redis`.
    #[schemars(regex(pattern = r"^(memory|redis)$"))]
    pub store: Option<At<String>>,
    pub redis: Option<Redis>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// `redis://` or `rediss://` (TLS), a user name may stand in it; no password.
    pub url: Option<At<String>>,
    /// `{ env: NAME }` or `{ file: PATH }`.
    pub password: Option<At<SecretRef>>,
    /// PEM file of CAs trusted besides the built-in roots (rediss only).
    pub ca_file: Option<At<String>>,
    pub sentinel: Option<At<RedisSentinel>>,
    pub cluster: Option<At<RedisCluster>>,
    /// `allow` (default) or `deny`: what to do while Redis is unreachable.
    #[schemars(regex(pattern = r"^(allow|deny)$"))]
    pub on_error: Option<At<String>>,
}

/// Find the primary through Redis Sentinel.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSentinel {
    pub master_name: Option<At<String>>,
    /// Sentinel addresses, `host:port` or `redis[s]://[user@]host:port`.
    pub nodes: Option<Vec<At<String>>>,
}

/// Redis Cluster.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisCluster {
    /// Seed nodes, `host:port` or `redis[s]://[user@]host:port`.
    pub nodes: Option<Vec<At<String>>>,
}

#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DialogRules {
    /// `enforce` (default), `report` or `off`.
    #[schemars(regex(pattern = r"^(enforce|report|off)$"))]
    pub mode: Option<At<String>>,
    pub cache_ttl: Option<At<String>>,
    /// `reject` (503, default) or `forward`.
    #[schemars(regex(pattern = r"^(reject|forward)$"))]
    pub on_lookup_error: Option<At<String>>,
    pub allow_fields: Option<Vec<At<String>>>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Key {
    /// Appears in logs and metrics; the key itself never does.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,64}$"))]
    pub id: At<String>,
    /// Lowercase hex SHA-256 of the key (`qbgate hash-key`). A key has this or `digests`.
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: Option<At<String>>,
    /// During a rotation: several live digests instead of `sha256`, each with an optional
    /// `not_after` (`qbgate gen-key --rotate`).
    pub digests: Option<Vec<KeyDigest>>,
    pub on_behalf_of: Option<At<OnBehalfOf>>,
    /// Optional allowlist of "METHOD /path" entries; `*` matches one segment.
    pub routes: Option<Vec<At<String>>>,
    pub rate_limit: Option<KeyRateLimit>,
    /// RFC 3339 time after which the key is refused.
    pub expires_at: Option<At<String>>,
    pub disabled: Option<bool>,
    /// Account-owner powers beyond the key's users: `create_users` (`POST /users`),
    /// `mint_tokens` (`POST /users/{id}/tokens`), `manage_users` (update or delete a user other
    /// than the acting one). Default none.
    pub powers: Option<Vec<At<Power>>>,
    /// "METHOD /path" entries outside qbgate's endpoint catalog that this key may send,
    /// forwarded unjudged (logged and counted); `*` matches one segment. Default none: a route
    /// outside the catalog is refused (403 `route_unknown`).
    pub unchecked_routes: Option<Vec<At<String>>>,
}

/// One of a key's digests during a rotation.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyDigest {
    /// Lowercase hex SHA-256 of the key (`qbgate hash-key`).
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub sha256: At<String>,
    /// RFC 3339 time after which this digest is refused (401 `key_expired`); the key's other
    /// digests keep working.
    pub not_after: Option<At<String>>,
}

/// One account-owner power, as written.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Power(
    #[schemars(regex(pattern = r"^(create_users|mint_tokens|manage_users)$"))] pub String,
);

impl<T: JsonSchema> JsonSchema for At<T> {
    // The place is ours, not the file's: the schema is the value's.
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

impl JsonSchema for OnBehalfOf {
    fn schema_name() -> Cow<'static, str> {
        "OnBehalfOf".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "Which users the key may act for: `any` (On-Behalf-Of required, every user), `none` (acts as the application, On-Behalf-Of refused), or a list of user ids (On-Behalf-Of required, one of these).",
            "anyOf": [
                { "enum": ["any", "none"] },
                { "type": "array", "items": { "type": "integer", "minimum": 1 }, "minItems": 1 }
            ]
        })
    }
}

/// `any`, `none`, or a list of user ids.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OnBehalfOf {
    Word(String),
    Users(Vec<i64>),
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRateLimit {
    #[schemars(range(min = 1))]
    pub per_second: Option<At<i64>>,
    #[schemars(range(min = 1))]
    pub burst: Option<At<i64>>,
    #[schemars(range(min = 1))]
    pub per_minute: Option<At<i64>>,
    #[schemars(range(min = 1))]
    pub per_hour: Option<At<i64>>,
    #[schemars(range(min = 1))]
    pub per_day: Option<At<i64>>,
    #[schemars(range(min = 1))]
    pub per_user_per_second: Option<At<i64>>,
}
