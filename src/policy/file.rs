//! The policy file exactly as it is written: serde structs, unknown fields refused, no logic.
//!
//! Values that compile-time checks need to point at carry their place (`Spanned`), so an error
//! can say `keys[2].rate_limit.burst: must be at least 1 (line 31, column 14)`.

use serde::{Deserialize, Deserializer};

/// A value with its place in the file (1-based line and column).
#[derive(Debug, Clone)]
pub struct At<T> {
    pub value: T,
    pub line: u64,
    pub column: u64,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for At<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = serde_saphyr::Spanned::<T>::deserialize(deserializer)?;
        Ok(At {
            value: spanned.value,
            line: spanned.referenced.line(),
            column: spanned.referenced.column(),
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub version: At<u32>,
    pub listen: Option<At<String>>,
    pub admin_listen: Option<At<String>>,
    pub upstream: Option<Upstream>,
    pub client: Option<Client>,
    pub shutdown: Option<Shutdown>,
    pub max_body_bytes: Option<At<u64>>,
    pub qb_token: Option<At<String>>,
    pub rate_limit: Option<RateLimitStore>,
    pub dialog_rules: Option<DialogRules>,
    pub keys: Vec<Key>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub url: Option<At<String>>,
    pub api_key: Option<At<SecretRef>>,
    pub connect_timeout: Option<At<String>>,
    pub timeout: Option<At<String>>,
    pub extra_ca_file: Option<At<String>>,
}

/// `{ env: NAME }` or `{ file: PATH }`: where a secret comes from, never the secret itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub env: Option<String>,
    pub file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub header_timeout: Option<At<String>>,
    pub body_timeout: Option<At<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    pub drain_delay: Option<At<String>>,
    pub timeout: Option<At<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitStore {
    pub store: Option<At<String>>,
    pub redis: Option<Redis>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    pub url: Option<At<String>>,
    pub on_error: Option<At<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialogRules {
    pub mode: Option<At<String>>,
    pub cache_ttl: Option<At<String>>,
    pub on_lookup_error: Option<At<String>>,
    pub allow_fields: Option<Vec<At<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub id: At<String>,
    pub sha256: At<String>,
    pub on_behalf_of: Option<At<OnBehalfOf>>,
    pub routes: Option<Vec<At<String>>>,
    pub rate_limit: Option<KeyRateLimit>,
    pub expires_at: Option<At<String>>,
    pub disabled: Option<bool>,
}

/// `any`, `none`, or a list of user ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OnBehalfOf {
    Word(String),
    Users(Vec<i64>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRateLimit {
    pub per_second: Option<At<i64>>,
    pub burst: Option<At<i64>>,
    pub per_minute: Option<At<i64>>,
    pub per_hour: Option<At<i64>>,
    pub per_day: Option<At<i64>>,
    pub per_user_per_second: Option<At<i64>>,
}
