//! File structs -> [`Policy`], collecting every error with its place.
//!
//! Serde stops at the first structural error (unknown field, wrong type, duplicate key), so such an
//! error is reported alone; every value-level error after that is collected and reported at once.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::file::{self, At};
use super::{
    parse_route, split_url, unreachable_default, ClientLimits, DialogRules, DigestPrefix, Key,
    KeyDigest, OnBehalfOf, Policy, Power, Powers, QbTokenMode, Quota, RateLimitStore,
    RedisPassword, RedisServers, RedisStore, RuleMode, ShutdownTiming, Tracing, Upstream,
};

/// One thing wrong with a policy, with its place when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Dotted path such as `keys[2].rate_limit.burst`.
    pub path: String,
    pub message: String,
    pub place: Option<(u64, u64)>,
}

/// Every error found in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some((line, column)) = self.place {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

/// Read and compile the policy file at `path`, its secrets read.
pub fn load(path: &Path) -> Result<Policy, PolicyErrors> {
    load_with(path, Secrets::Resolve)
}

/// Read and compile the policy file at `path`, reading its secrets or not: `run` and
/// `qbgate check --resolve-secrets` read them, `qbgate check` only checks their references.
/// One compiler for both, so `check` refuses everything `run` would. A directory is read as a
/// policy directory: every `*.yaml` in it, `keys` spread across files.
pub fn load_with(path: &Path, secrets: Secrets) -> Result<Policy, PolicyErrors> {
    if path.is_dir() {
        return super::dir::load(path, &|name| std::env::var(name).ok(), secrets);
    }
    let text = read_file(path)?;
    compile_secrets(&text, &|name| std::env::var(name).ok(), secrets)
}

/// [`load`], unless what `path` holds is byte for byte the policy whose digest is `unless`:
/// then `None`, and no compile. A file is read and hashed once for both (a reload's check).
pub fn load_unless(path: &Path, unless: Option<&str>) -> Option<Result<Policy, PolicyErrors>> {
    if path.is_dir() {
        if unless.is_some() && super::source_digest(path).as_deref() == unless {
            return None;
        }
        return Some(load(path));
    }
    let text = match read_file(path) {
        Ok(text) => text,
        Err(errors) => return Some(Err(errors)),
    };
    let digest = short_digest(text.as_bytes());
    if unless == Some(digest.as_str()) {
        return None;
    }
    let env = |name: &str| std::env::var(name).ok();
    Some(compile_digested(&text, digest, &env, Secrets::Resolve))
}

fn read_file(path: &Path) -> Result<String, PolicyErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        PolicyErrors(vec![PolicyError {
            path: path.display().to_string(),
            message: format!("cannot read the policy file: {e}"),
            place: None,
        }])
    })
}

/// The digest a policy compiled from `source` carries: short hex SHA-256.
fn short_digest(source: &[u8]) -> String {
    let mut digest = crate::policy::digest_hex(source);
    digest.truncate(12);
    digest
}

/// Compile policy text. Secret references (`{env: ..}`, `{file: ..}`) are resolved here.
pub fn compile(text: &str) -> Result<Policy, PolicyErrors> {
    compile_with_env(text, &|name| std::env::var(name).ok())
}

/// [`compile`] with `{env: NAME}` looked up through `env` (the demo and tests supply their own).
///
/// A policy written as one JSON object (JSON is YAML too) is first parsed by serde_json, ten
/// times faster than the YAML parser: what makes a 10,000-key policy start and reload in
/// milliseconds. Only a clean result is taken from that path; any parse or compile error comes
/// from the YAML parse of the same text, which knows lines and columns.
pub fn compile_with_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Policy, PolicyErrors> {
    compile_secrets(text, env, Secrets::Resolve)
}

fn compile_secrets(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> Result<Policy, PolicyErrors> {
    compile_digested(text, short_digest(text.as_bytes()), env, secrets)
}

/// [`compile_secrets`] of text whose digest is known.
fn compile_digested(
    text: &str,
    digest: String,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> Result<Policy, PolicyErrors> {
    if let Some(raw) = parse_fast(text) {
        if let Ok(policy) = compile_parts(raw, &[], digest.clone(), env, secrets) {
            return Ok(policy);
        }
    }
    compile_parts(parse(text)?, &[], digest, env, secrets)
}

/// A policy written as one JSON object, parsed by serde_json, or in plain block YAML, read by
/// [`super::yaml`] (no places either way). `None` for any other text or any error: the YAML parse
/// of the same text then says what is wrong, and where.
pub(super) fn parse_fast(text: &str) -> Option<file::PolicyFile> {
    if !text.trim_start().starts_with('{') {
        return file::without_spans(|| super::yaml::read::<file::PolicyFile>(text));
    }
    file::without_spans(|| serde_json::from_str::<file::PolicyFile>(text)).ok()
}

/// Parse policy text as YAML, every value with its place; a structural error is reported alone.
pub(super) fn parse(text: &str) -> Result<file::PolicyFile, PolicyErrors> {
    serde_saphyr::from_str(text).map_err(|e| {
        let place = e.location().map(|l| (l.line(), l.column()));
        let message = e.without_snippet().to_string();
        // serde-saphyr prefixes "error: line L column C: "; the place is printed our way.
        let message = message
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string();
        let message = match message.split_once(": ") {
            Some((head, rest)) if head.starts_with("line ") => rest.to_string(),
            _ => message,
        };
        let message = plain_words(&message);
        let mut path = place.and_then(|(line, column)| path_at(text, line, column));
        // A missing field is placed at its mapping's last entry: the path is the mapping's.
        if message.ends_with(" is required") {
            path = path.and_then(|p| {
                p.rfind(['.', '['])
                    .filter(|&at| p.as_bytes()[at] == b'.')
                    .map(|at| p[..at].to_string())
            });
        }
        let path = path.unwrap_or_else(|| "policy".into());
        PolicyErrors(vec![PolicyError {
            path,
            message,
            place,
        }])
    })
}

/// The policy path of the value at `line`, `column` (1-based) of a YAML policy, such as
/// `keys[0].rate_limit.per_second`, so a parser's error names its field as the compiler's do.
/// Block collections are followed by indentation, a one-line flow collection (`{ a: 1 }`,
/// `[1, 2]`) by its brackets. `None` where the text up to there is not that plain (block
/// scalars, a flow collection over several lines, tabs): the error then says `policy`.
fn path_at(text: &str, line: u64, column: u64) -> Option<String> {
    let (line, column) = (usize::try_from(line).ok()?, usize::try_from(column).ok()?);
    let mut path: Vec<(usize, Seg)> = Vec::new();
    for (n, raw) in text.lines().enumerate().take(line) {
        let last = n + 1 == line;
        if raw.contains('\t') {
            return None;
        }
        let content = raw.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') || content.starts_with("---") {
            if last {
                return None;
            }
            continue;
        }
        let mut indent = raw.len() - content.len();
        let mut content = content;
        while let Some(rest) = content
            .strip_prefix('-')
            .filter(|r| r.is_empty() || r.starts_with(' '))
        {
            path.retain(|(i, _)| *i <= indent);
            match path.last_mut() {
                Some((i, Seg::Index(k))) if *i == indent => *k += 1,
                _ => path.push((indent, Seg::Index(0))),
            }
            let trimmed = rest.trim_start_matches(' ');
            indent += 1 + rest.len() - trimmed.len();
            content = trimmed;
        }
        let at = column.saturating_sub(1).clamp(indent, raw.len());
        let flow = match plain_key(content) {
            Some((key, value)) => {
                path.retain(|(i, _)| *i < indent);
                path.push((indent, Seg::Key(key)));
                if value.starts_with('|') || value.starts_with('>') {
                    return None;
                }
                value
            }
            None => content,
        };
        let flow_at = raw.len() - flow.len();
        if !flow.starts_with(['[', '{']) {
            if last {
                break;
            }
            continue;
        }
        let inner = flow_path(flow, at.saturating_sub(flow_at))?;
        if last {
            path.extend(inner.into_iter().map(|seg| (usize::MAX, seg)));
        }
    }
    if path.is_empty() {
        return None;
    }
    let mut text = String::new();
    for (_, seg) in &path {
        match seg {
            Seg::Key(key) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(key);
            }
            Seg::Index(i) => {
                text.push('[');
                text.push_str(&i.to_string());
                text.push(']');
            }
        }
    }
    Some(text)
}

/// One step of a policy path.
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// `key: value` with a plain or quoted key of letters, digits and `_`: the key and the value.
fn plain_key(content: &str) -> Option<(&str, &str)> {
    let (key, value) = content.split_once(':')?;
    if !(value.is_empty() || value.starts_with(' ')) {
        return None;
    }
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    let plain = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    plain.then_some((key, value.trim()))
}

/// The path inside the one-line flow collection `flow` to byte `at`; `None` if `flow` does not
/// close on its line.
fn flow_path(flow: &str, at: usize) -> Option<Vec<Seg<'_>>> {
    // Per open bracket: is it a mapping, where its current entry starts, the entry's index.
    let mut levels: Vec<(bool, usize, usize)> = Vec::new();
    let mut quote = None;
    let mut inner = None;
    for (i, c) in flow.char_indices() {
        if i == at && inner.is_none() {
            inner = Some(levels.clone());
        }
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '{') => levels.push((true, i + 1, 0)),
            (None, '[') => levels.push((false, i + 1, 0)),
            (None, '}' | ']') => {
                levels.pop();
                if levels.is_empty() {
                    let levels = inner.unwrap_or_default();
                    return Some(
                        levels
                            .into_iter()
                            .filter_map(|(map, start, index)| match map {
                                true => plain_key(&flow[start..]).map(|(key, _)| Seg::Key(key)),
                                false => Some(Seg::Index(index)),
                            })
                            .collect(),
                    );
                }
            }
            (None, ',') => {
                if let Some(level) = levels.last_mut() {
                    level.1 = i + 1;
                    level.2 += 1;
                }
            }
            _ => {}
        }
    }
    None
}

/// Compile parsed file structs; `source` is what the policy's digest is taken of.
#[cfg(test)]
pub(super) fn compile_raw(
    raw: file::PolicyFile,
    source: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> Result<Policy, PolicyErrors> {
    compile_parts(raw, &[], short_digest(source), env, secrets)
}

/// [`compile_raw`] with `more_keys` after the file's own `keys` (a policy directory's keys, read
/// where they are parsed rather than copied), and the digest of the source given.
pub(super) fn compile_parts(
    raw: file::PolicyFile,
    more_keys: &[&file::Key],
    digest: String,
    env: &dyn Fn(&str) -> Option<String>,
    secrets: Secrets,
) -> Result<Policy, PolicyErrors> {
    let mut c = Compiler {
        errors: Vec::new(),
        env,
        secrets,
    };
    let policy = c.policy(raw, more_keys, digest);
    if c.errors.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyErrors(c.errors))
    }
}

struct Compiler<'e> {
    errors: Vec<PolicyError>,
    env: &'e dyn Fn(&str) -> Option<String>,
    /// Read the secrets the policy refers to (`run`), or only check that each reference is well
    /// formed (`qbgate check` without `--resolve-secrets`).
    secrets: Secrets,
}

/// The policy's digest table ([`Policy`]'s `by_digest`): digest -> (key index, which digest).
type DigestTable = HashMap<[u8; 32], (u32, u32), foldhash::fast::RandomState>;

/// `keys[i]`, the start of a key's paths in errors: formatted only when one is reported.
#[derive(Clone, Copy)]
struct KeyPath(usize);

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "keys[{}]", self.0)
    }
}

/// Whether compiling reads the secrets a policy refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read each `{env: ..}` and `{file: ..}`: a missing one is an error.
    Resolve,
    /// Check each reference's form only; the compiled policy holds a placeholder instead.
    /// For checking a policy where its secrets are not (a CI job that validates a ConfigMap).
    Offline,
}

/// What an unresolved secret stands as in a policy compiled [`Secrets::Offline`].
const UNRESOLVED: &str = "unresolved-secret";

impl Compiler<'_> {
    fn error<T>(&mut self, path: impl Into<String>, at: &At<T>, message: impl Into<String>) {
        self.errors.push(PolicyError {
            path: path.into(),
            message: message.into(),
            place: Some((at.line, at.column)),
        });
    }

    /// A field that is one of a fixed set of words: the value paired with the word given, or
    /// `default` when the field is absent or names none of them (an error, listing the words in
    /// `choices` order).
    fn keyword<T, const N: usize>(
        &mut self,
        path: &str,
        raw: Option<&At<String>>,
        default: T,
        choices: [(&str, T); N],
    ) -> T {
        let Some(at) = raw else {
            return default;
        };
        let mut words = Vec::with_capacity(N);
        for (word, value) in choices {
            if word == at.value {
                return value;
            }
            words.push(format!("`{word}`"));
        }
        let message = match words.split_last() {
            Some((last, rest)) if !rest.is_empty() => {
                format!("must be {} or {last}", rest.join(", "))
            }
            _ => format!("must be {}", words.concat()),
        };
        self.error(path, at, message);
        default
    }

    fn policy(
        &mut self,
        raw: file::PolicyFile,
        more_keys: &[&file::Key],
        digest: String,
    ) -> Policy {
        if raw.version.value != 1 {
            self.error("version", &raw.version, "must be 1");
        }
        let listen = self.addr("listen", raw.listen.as_ref(), "127.0.0.1:8080");
        let admin_listen = self.addr("admin_listen", raw.admin_listen.as_ref(), "0.0.0.0:9090");
        let upstream = self.upstream(raw.upstream.unwrap_or_default());
        let client = raw.client.unwrap_or_default();
        let client = ClientLimits {
            header_timeout: self.duration(
                "client.header_timeout",
                client.header_timeout.as_ref(),
                10,
                false,
            ),
            body_timeout: self.duration(
                "client.body_timeout",
                client.body_timeout.as_ref(),
                30,
                false,
            ),
        };
        let shutdown = raw.shutdown.unwrap_or_default();
        let shutdown = ShutdownTiming {
            drain_delay: self.duration(
                "shutdown.drain_delay",
                shutdown.drain_delay.as_ref(),
                5,
                true,
            ),
            timeout: self.duration("shutdown.timeout", shutdown.timeout.as_ref(), 30, true),
        };
        let max_body_bytes = match &raw.max_body_bytes {
            None => 1_048_576,
            Some(at) if at.value == 0 => {
                self.error("max_body_bytes", at, "must be at least 1");
                1
            }
            Some(at) => at.value,
        };
        let qb_token = self.keyword(
            "qb_token",
            raw.qb_token.as_ref(),
            QbTokenMode::Forward,
            [
                ("forward", QbTokenMode::Forward),
                ("reject", QbTokenMode::Reject),
            ],
        );
        let rate_limit = self.store(raw.rate_limit.unwrap_or_default());
        let tracing = self.tracing(raw.tracing.unwrap_or_default());
        let dialog_rules = self.dialog_rules(raw.dialog_rules.unwrap_or_default());
        let mut by_digest = DigestTable::default();
        let keys = match raw.keys {
            Some(keys) => self.keys(
                keys.len() + more_keys.len(),
                keys.iter()
                    .map(|key| &**key)
                    .chain(more_keys.iter().copied()),
                &mut by_digest,
            ),
            None => {
                self.errors.push(PolicyError {
                    path: "policy".into(),
                    message: "`keys` is required".into(),
                    place: None,
                });
                Vec::new()
            }
        };
        Policy {
            digest,
            listen,
            admin_listen,
            upstream,
            client,
            shutdown,
            max_body_bytes,
            qb_token,
            rate_limit,
            tracing,
            dialog_rules,
            keys,
            by_digest,
        }
    }

    fn tracing(&mut self, raw: file::Tracing) -> Tracing {
        let otlp_endpoint = raw.otlp_endpoint.as_ref().and_then(|at| {
            let checked = split_url(&at.value).and_then(|_| {
                at.value
                    .parse::<http::Uri>()
                    .map_err(|_| "must be a URL such as http://otel-collector:4318")
            });
            match checked {
                Ok(uri) => Some(uri),
                Err(message) => {
                    let message =
                        message.replace("https://api.quickblox.com", "http://otel-collector:4318");
                    self.error("tracing.otlp_endpoint", at, message);
                    None
                }
            }
        });
        Tracing {
            propagate: raw.propagate.unwrap_or(true),
            otlp_endpoint,
        }
    }

    fn addr(&mut self, path: &str, at: Option<&At<String>>, default: &str) -> SocketAddr {
        let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
        match at {
            None => default.parse().unwrap_or(fallback),
            Some(at) => at.value.parse().unwrap_or_else(|_| {
                self.error(
                    path,
                    at,
                    "must be an IP address and port, such as 127.0.0.1:8080",
                );
                fallback
            }),
        }
    }

    fn duration(
        &mut self,
        path: &str,
        at: Option<&At<String>>,
        default_secs: u64,
        zero_ok: bool,
    ) -> Duration {
        let Some(at) = at else {
            return Duration::from_secs(default_secs);
        };
        match humantime::parse_duration(at.value.trim()) {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.error(path, at, "must be longer than 0");
                Duration::from_secs(default_secs)
            }
            Ok(d) => d,
            Err(_) => {
                self.error(path, at, "must be a duration such as `250ms`, `5s` or `1m`");
                Duration::from_secs(default_secs)
            }
        }
    }

    fn upstream(&mut self, raw: file::Upstream) -> Upstream {
        let default_url = "https://api.quickblox.com";
        let (scheme, origin, base_path) = match raw.url.as_ref() {
            None => split_url(default_url).unwrap_or_else(|_| unreachable_default()),
            Some(at) => match split_url(&at.value) {
                Ok(parts) => parts,
                Err(message) => {
                    self.error("upstream.url", at, message);
                    split_url(default_url).unwrap_or_else(|_| unreachable_default())
                }
            },
        };
        let authorization = raw.api_key.as_ref().and_then(|at| {
            let secret = self.secret("upstream.api_key", at)?;
            match HeaderValue::try_from(format!("ApiKey {secret}")) {
                Ok(mut value) => {
                    value.set_sensitive(true);
                    Some(value)
                }
                Err(_) => {
                    self.error(
                        "upstream.api_key",
                        at,
                        "the secret is not a valid header value (control characters?)",
                    );
                    None
                }
            }
        });
        let extra_ca_file = raw.extra_ca_file.as_ref().map(|at| {
            let path = PathBuf::from(&at.value);
            if !path.is_file() {
                self.error(
                    "upstream.extra_ca_file",
                    at,
                    format!("cannot read {}", at.value),
                );
            }
            path
        });
        Upstream {
            scheme,
            origin,
            base_path,
            authorization,
            connect_timeout: self.duration(
                "upstream.connect_timeout",
                raw.connect_timeout.as_ref(),
                2,
                false,
            ),
            timeout: self.duration("upstream.timeout", raw.timeout.as_ref(), 15, false),
            extra_ca_file,
        }
    }

    /// Resolve `{env: NAME}` / `{file: PATH}`. Errors name the reference, never a value.
    fn secret(&mut self, path: &str, at: &At<file::SecretRef>) -> Option<String> {
        if self.secrets == Secrets::Offline {
            match (&at.value.env, &at.value.file) {
                (Some(name), None) if is_env_name(name) => {}
                (Some(name), None) => {
                    self.error(
                        path,
                        at,
                        format!("`{name}` is not an environment variable name (letters, digits, _; not starting with a digit)"),
                    );
                    return None;
                }
                (None, Some(file)) if !file.trim().is_empty() => {}
                (None, Some(_)) => {
                    self.error(path, at, "the secret file's path is empty");
                    return None;
                }
                _ => {
                    self.error(
                        path,
                        at,
                        "must be exactly one of `{ env: NAME }` or `{ file: PATH }`",
                    );
                    return None;
                }
            }
            return Some(UNRESOLVED.to_string());
        }
        let value = match (&at.value.env, &at.value.file) {
            (Some(name), None) => match (self.env)(name) {
                Some(v) => v,
                None => {
                    self.error(path, at, format!("environment variable {name} is not set"));
                    return None;
                }
            },
            (None, Some(file)) => match std::fs::read_to_string(file) {
                Ok(v) => v,
                Err(e) => {
                    self.error(
                        path,
                        at,
                        format!("cannot read secret file {file}: {}", e.kind()),
                    );
                    return None;
                }
            },
            _ => {
                self.error(
                    path,
                    at,
                    "must be exactly one of `{ env: NAME }` or `{ file: PATH }`",
                );
                return None;
            }
        };
        let value = value.trim();
        if value.is_empty() {
            self.error(path, at, "the referenced secret is empty");
            return None;
        }
        Some(value.to_string())
    }

    fn store(&mut self, raw: file::RateLimitStore) -> RateLimitStore {
        let redis = self.redis(raw.redis.unwrap_or_default());
        self.keyword(
            "rate_limit.store",
            raw.store.as_ref(),
            RateLimitStore::Memory,
            [
                ("memory", RateLimitStore::Memory),
                ("redis", RateLimitStore::Redis(redis)),
            ],
        )
    }

    /// `rate_limit.redis`. Checked whether or not `store` is `redis`, so a block kept for later
    /// cannot hide a mistake. The password is resolved like `upstream.api_key`.
    fn redis(&mut self, raw: file::Redis) -> RedisStore {
        let on_error_allow = self.keyword(
            "rate_limit.redis.on_error",
            raw.on_error.as_ref(),
            true,
            [("allow", true), ("deny", false)],
        );
        // Each part is checked on its own, so every mistake is reported at once.
        let mut tls = Vec::new();
        let spread = raw.sentinel.is_some() || raw.cluster.is_some();
        // With `sentinel` or `cluster`, a `url` gives only its scheme and user to the nodes
        // written as bare `host:port`; its host is not used.
        let mut prefix = None;
        let single = raw.url.as_ref().and_then(|at| {
            let (url, is_tls, _) =
                self.redis_address("rate_limit.redis.url", at, true, "redis://")?;
            if spread {
                prefix = Some(scheme_and_user(&url).to_string());
                return None;
            }
            tls.push(is_tls);
            Some(RedisServers::Single { url })
        });
        let prefix = prefix.as_deref().unwrap_or("redis://");
        let sentinel = raw.sentinel.as_ref().map(|at| {
            let master_name = match &at.value.master_name {
                Some(name) if !name.value.trim().is_empty() => name.value.trim().to_string(),
                Some(name) => {
                    self.error(
                        "rate_limit.redis.sentinel.master_name",
                        name,
                        "must not be empty",
                    );
                    String::new()
                }
                None => {
                    self.error(
                        "rate_limit.redis.sentinel",
                        at,
                        "`master_name` is missing: the name the sentinels know the primary by",
                    );
                    String::new()
                }
            };
            let nodes = self.redis_nodes(
                "rate_limit.redis.sentinel",
                at,
                &at.value.nodes,
                prefix,
                &mut tls,
            );
            RedisServers::Sentinel { master_name, nodes }
        });
        let cluster = raw.cluster.as_ref().map(|at| {
            let nodes = self.redis_nodes(
                "rate_limit.redis.cluster",
                at,
                &at.value.nodes,
                prefix,
                &mut tls,
            );
            RedisServers::Cluster { nodes }
        });
        if let (Some(at), Some(_)) = (&raw.sentinel, &raw.cluster) {
            self.error(
                "rate_limit.redis",
                at,
                "give `sentinel` or `cluster`, not both",
            );
        }
        let servers = sentinel.or(cluster).or(single);
        let servers = servers.unwrap_or_else(|| RedisServers::Single {
            url: "redis://127.0.0.1:6379".to_string(),
        });
        let password = raw.password.as_ref().and_then(|at| {
            self.secret("rate_limit.redis.password", at)
                .map(RedisPassword)
        });
        let ca_file = raw.ca_file.as_ref().map(|at| {
            let path = PathBuf::from(&at.value);
            if !tls.iter().any(|&t| t) {
                self.error(
                    "rate_limit.redis.ca_file",
                    at,
                    "is only used over TLS: write the address as rediss://",
                );
            } else if !path.is_file() {
                self.error(
                    "rate_limit.redis.ca_file",
                    at,
                    format!("cannot read {}", at.value),
                );
            }
            path
        });
        RedisStore {
            servers,
            password,
            ca_file,
            on_error_allow,
        }
    }

    /// `sentinel.nodes` or `cluster.nodes`: at least one address, all with one scheme and user.
    fn redis_nodes<T>(
        &mut self,
        path: &str,
        block: &At<T>,
        nodes: &Option<Vec<At<String>>>,
        prefix: &str,
        tls: &mut Vec<bool>,
    ) -> Vec<String> {
        let nodes = match nodes {
            Some(nodes) if !nodes.is_empty() => nodes,
            _ => {
                self.error(
                    format!("{path}.nodes"),
                    block,
                    "needs at least one address (host:port)",
                );
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(nodes.len());
        let mut first: Option<(bool, Option<String>)> = None;
        for (i, at) in nodes.iter().enumerate() {
            let place = format!("{path}.nodes[{i}]");
            let Some((url, is_tls, user)) = self.redis_address(&place, at, false, prefix) else {
                continue;
            };
            match &first {
                None => first = Some((is_tls, user)),
                Some(seen) if *seen != (is_tls, user) => self.error(
                    place,
                    at,
                    "every node must use the same scheme (redis:// or rediss://) and user name",
                ),
                Some(_) => {}
            }
            tls.push(is_tls);
            out.push(url);
        }
        out
    }

    /// One Redis address: a `redis://` or `rediss://` URL, or (for nodes) a bare `host:port`,
    /// given `prefix` (a scheme and maybe a user). Returns the URL to connect to, whether it is
    /// TLS, and its ACL user name.
    fn redis_address(
        &mut self,
        path: &str,
        at: &At<String>,
        whole_url: bool,
        prefix: &str,
    ) -> Option<(String, bool, Option<String>)> {
        let text = at.value.trim();
        let url = if text.starts_with("redis://") || text.starts_with("rediss://") {
            text.to_string()
        } else if text.contains("://") || whole_url {
            self.error(path, at, "must start with redis:// or rediss:// (TLS)");
            return None;
        } else if is_host_port(text) {
            format!("{prefix}{text}")
        } else {
            self.error(
                path,
                at,
                "must be host:port (a port from 1 to 65535) or a redis:// or rediss:// URL",
            );
            return None;
        };
        // Never quote the value: it may hold a password.
        let Ok(info) = redis::IntoConnectionInfo::into_connection_info(url.as_str()) else {
            self.error(
                path,
                at,
                "is not a valid Redis URL (redis[s]://[user@]host[:port][/db])",
            );
            return None;
        };
        if info.redis.password.is_some() {
            self.error(
                path,
                at,
                "holds a password: give it under `rate_limit.redis.password` as { env: NAME } or { file: PATH }, never in the url",
            );
            return None;
        }
        let is_tls = matches!(info.addr, redis::ConnectionAddr::TcpTls { .. });
        Some((url, is_tls, info.redis.username))
    }

    fn dialog_rules(&mut self, raw: file::DialogRules) -> DialogRules {
        let mode = self.keyword(
            "dialog_rules.mode",
            raw.mode.as_ref(),
            RuleMode::Enforce,
            [
                ("enforce", RuleMode::Enforce),
                ("report", RuleMode::Report),
                ("off", RuleMode::Off),
            ],
        );
        let forward_on_lookup_error = self.keyword(
            "dialog_rules.on_lookup_error",
            raw.on_lookup_error.as_ref(),
            false,
            [("reject", false), ("forward", true)],
        );
        let mut allow_fields = Vec::new();
        for (i, at) in raw.allow_fields.unwrap_or_default().iter().enumerate() {
            let name = at.value.trim();
            if name.is_empty() {
                self.error(
                    format!("dialog_rules.allow_fields[{i}]"),
                    at,
                    "must not be empty",
                );
            } else {
                allow_fields.push(name.to_string());
            }
        }
        DialogRules {
            mode,
            cache_ttl: self.duration("dialog_rules.cache_ttl", raw.cache_ttl.as_ref(), 5, true),
            forward_on_lookup_error,
            allow_fields,
        }
    }

    /// A key's `sha256` or `digests` (exactly one of them), as the key holds them; each is
    /// entered in `table` as the key's (`index`) and which of its digests it is. A digest used
    /// twice anywhere in the policy is an error.
    fn key_digests(
        &mut self,
        p: KeyPath,
        key: &file::Key,
        table: &mut DigestTable,
    ) -> Vec<KeyDigest> {
        let mut list: &[file::KeyDigest] = &[];
        let mut single = None;
        match (&key.sha256, &key.digests) {
            (Some(sha), Some(_)) => self.error(
                format!("{p}.sha256"),
                sha,
                "a key has `sha256` or `digests`, not both",
            ),
            (Some(sha), None) => single = Some(sha),
            (None, None) => self.error(
                format!("{p}.id"),
                &key.id,
                "a key needs `sha256` (or `digests` during a rotation)",
            ),
            (None, Some(digests)) if digests.is_empty() => self.error(
                format!("{p}.digests"),
                &key.id,
                "must list at least one digest",
            ),
            (None, Some(digests)) => list = digests,
        }
        let raw = single
            .map(|sha| (None, sha))
            .into_iter()
            .chain(list.iter().enumerate().map(|(j, d)| (Some(j), &d.sha256)));
        // The path of a digest, formatted only for an error.
        let path = |j: Option<usize>| match j {
            None => format!("{p}.sha256"),
            Some(j) => format!("{p}.digests[{j}].sha256"),
        };
        let mut live = Vec::with_capacity(list.len().max(1));
        for (j, sha) in raw {
            let mut digest = [0u8; 32];
            let text = sha.value.trim();
            if text.len() != 64 || hex::decode_to_slice(text, &mut digest).is_err() {
                self.error(
                    path(j),
                    sha,
                    "must be 64 hex characters: the SHA-256 of the key (`qbgate hash-key`)",
                );
                continue;
            }
            match table.entry(digest) {
                Entry::Occupied(_) => {
                    self.error(
                        path(j),
                        sha,
                        "the same digest is already used by another key",
                    );
                    continue;
                }
                Entry::Vacant(slot) => {
                    slot.insert((p.0 as u32, live.len() as u32));
                }
            }
            let not_after = j.and_then(|j| {
                let at = list.get(j)?.not_after.as_ref()?;
                self.time(format_args!("{p}.digests[{j}].not_after"), at)
            });
            live.push(KeyDigest {
                prefix: DigestPrefix::of(&digest),
                not_after,
            });
        }
        live
    }

    /// An RFC 3339 time such as `expires_at`.
    fn time(&mut self, path: impl fmt::Display, at: &At<String>) -> Option<std::time::SystemTime> {
        match humantime::parse_rfc3339_weak(at.value.trim()) {
            Ok(t) => Some(t),
            Err(_) => {
                self.error(
                    path.to_string(),
                    at,
                    "must be an RFC 3339 time such as 2027-01-01T00:00:00Z",
                );
                None
            }
        }
    }

    /// `count` keys from `raw`, their digests entered in `table`.
    fn keys<'k>(
        &mut self,
        count: usize,
        raw: impl Iterator<Item = &'k file::Key>,
        table: &mut DigestTable,
    ) -> Vec<Key> {
        let mut ids =
            HashSet::with_capacity_and_hasher(count, foldhash::fast::RandomState::default());
        table.reserve(count);
        let mut keys = Vec::with_capacity(count);
        for (i, key) in raw.enumerate() {
            // Paths are formatted only for an error: a 10,000-key policy has none to show.
            let p = KeyPath(i);
            let id = key.id.value.trim();
            if id.is_empty()
                || id.len() > 64
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                self.error(
                    format!("{p}.id"),
                    &key.id,
                    "must be 1 to 64 characters of letters, digits, `-`, `_` or `.`",
                );
            } else if !ids.insert(id) {
                self.error(
                    format!("{p}.id"),
                    &key.id,
                    format!("duplicate key id `{id}`"),
                );
            }
            let digests = self.key_digests(p, key, table);
            let on_behalf_of = match key.on_behalf_of.as_ref() {
                None => OnBehalfOf::Any,
                Some(at) => self.on_behalf_of(format_args!("{p}.on_behalf_of"), at),
            };
            let routes = key
                .routes
                .as_ref()
                .map(|routes| self.routes(format_args!("{p}.routes"), routes));
            let unchecked_routes = key
                .unchecked_routes
                .as_ref()
                .map(|routes| self.routes(format_args!("{p}.unchecked_routes"), routes))
                .unwrap_or_default();
            let quota = key
                .rate_limit
                .as_ref()
                .and_then(|rl| self.quota(format_args!("{p}.rate_limit"), rl));
            let expires_at = key
                .expires_at
                .as_ref()
                .and_then(|at| self.time(format_args!("{p}.expires_at"), at));
            let mut powers = Powers::NONE;
            for (j, at) in key.powers.iter().flatten().enumerate() {
                let word = At {
                    value: at.value.0.clone(),
                    line: at.line,
                    column: at.column,
                };
                let power = self.keyword(
                    &format!("{p}.powers[{j}]"),
                    Some(&word),
                    None,
                    [
                        ("create_users", Some(Power::CreateUsers)),
                        ("mint_tokens", Some(Power::MintTokens)),
                        ("manage_users", Some(Power::ManageUsers)),
                    ],
                );
                if let Some(power) = power {
                    powers = powers.with(power);
                }
            }
            keys.push(Key {
                id: Arc::from(id),
                on_behalf_of,
                routes,
                quota,
                expires_at,
                disabled: key.disabled.unwrap_or(false),
                digests,
                powers,
                unchecked_routes,
            });
        }
        keys
    }

    /// `"METHOD /path"` entries, each error at its place.
    fn routes(
        &mut self,
        path: impl fmt::Display,
        raw: &[At<String>],
    ) -> Vec<crate::policy::RoutePattern> {
        raw.iter()
            .enumerate()
            .filter_map(|(j, at)| match parse_route(&at.value) {
                Ok(route) => Some(route),
                Err(message) => {
                    self.error(format!("{path}[{j}]"), at, message);
                    None
                }
            })
            .collect()
    }

    fn on_behalf_of(&mut self, path: impl fmt::Display, at: &At<file::OnBehalfOf>) -> OnBehalfOf {
        match &at.value {
            file::OnBehalfOf::Word(w) if w == "any" => OnBehalfOf::Any,
            file::OnBehalfOf::Word(w) if w == "none" => OnBehalfOf::None,
            file::OnBehalfOf::Word(_) => {
                self.error(
                    path.to_string(),
                    at,
                    "must be `any`, `none` or a list of user ids",
                );
                OnBehalfOf::None
            }
            file::OnBehalfOf::Users(users) => {
                if users.is_empty() {
                    self.error(
                        path.to_string(),
                        at,
                        "a list must name at least one user id",
                    );
                }
                let mut ids = Vec::with_capacity(users.len());
                for (i, &user) in users.iter().enumerate() {
                    match u64::try_from(user) {
                        Ok(id) if id > 0 => ids.push(id),
                        _ => self.error(format!("{path}[{i}]"), at, "user ids must be positive"),
                    }
                }
                ids.sort_unstable();
                ids.dedup();
                OnBehalfOf::Users(ids)
            }
        }
    }

    fn quota(&mut self, path: impl fmt::Display, raw: &file::KeyRateLimit) -> Option<Quota> {
        let mut field = |name: &str, at: &Option<At<i64>>| -> Option<NonZeroU32> {
            let at = at.as_ref()?;
            match u32::try_from(at.value).ok().and_then(NonZeroU32::new) {
                Some(v) => Some(v),
                None => {
                    self.error(format!("{path}.{name}"), at, "must be at least 1");
                    None
                }
            }
        };
        let quota = Quota {
            per_second: field("per_second", &raw.per_second),
            burst: field("burst", &raw.burst),
            per_minute: field("per_minute", &raw.per_minute),
            per_hour: field("per_hour", &raw.per_hour),
            per_day: field("per_day", &raw.per_day),
            per_user_per_second: field("per_user_per_second", &raw.per_user_per_second),
        };
        if let (Some(at), None) = (&raw.burst, &raw.per_second) {
            self.error(format!("{path}.burst"), at, "needs per_second");
        }
        let empty = quota.per_second.is_none()
            && quota.per_minute.is_none()
            && quota.per_hour.is_none()
            && quota.per_day.is_none()
            && quota.per_user_per_second.is_none();
        (!empty).then_some(quota)
    }
}

/// An environment variable name as shells and Kubernetes write them.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A YAML or serde message about the file's structure, in our words: no parser type names, no
/// second copy of the place (printed our way beside it).
fn plain_words(message: &str) -> String {
    let message = match message.find(" at line ") {
        Some(at) => &message[..at],
        None => message,
    };
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return match rest.split_once(", expected one of ") {
            Some((field, known)) => format!("unknown field {field}: the fields here are {known}"),
            None => match rest.split_once(", expected ") {
                Some((field, known)) => format!("unknown field {field}: the field here is {known}"),
                None => format!("unknown field {rest}"),
            },
        };
    }
    if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
        let key = rest.split(", set ").next().unwrap_or(rest);
        return format!("`{key}` is given twice");
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("{rest} is required");
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "wrong type: found {found}, expected {}",
                expected_in_words(expected)
            );
        }
    }
    if let Some(kind) = message.strip_prefix("invalid ") {
        if matches!(
            kind,
            "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" | "f64" | "bool"
        ) {
            return format!("wrong type: expected {}", expected_in_words(kind));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "invalid value: found {found}, expected {}",
                expected_in_words(expected)
            );
        }
    }
    if message.starts_with("data did not match any variant of untagged enum") {
        // Only `on_behalf_of` is read so: `any`, `none` or a list of user ids.
        return "must be `any`, `none` or a list of user ids".to_string();
    }
    match message {
        "invalid boolean" => return "wrong type: expected true or false".to_string(),
        "expected string scalar" => return "wrong type: expected a string".to_string(),
        "expected sequence start" => return "wrong type: expected a list".to_string(),
        "expected mapping start" => {
            return "wrong type: expected a mapping (key: value lines)".to_string()
        }
        _ => {}
    }
    message.to_string()
}

/// Rust's type names in serde's "expected" part, said as a policy writer would.
fn expected_in_words(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a boolean" | "bool" => "true or false".to_string(),
        "a string" | "String" => "a string".to_string(),
        other if other.starts_with("struct ") || other.starts_with("a map") => {
            "a mapping (key: value lines)".to_string()
        }
        other if other.starts_with("a sequence") => "a list".to_string(),
        other => other.to_string(),
    }
}

/// `host:port` with a port from 1 to 65535; an IPv6 host in brackets.
/// A Redis URL's scheme and user: `rediss://qbgate@` of `rediss://qbgate@cache:6380/0`.
fn scheme_and_user(url: &str) -> &str {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let end = url[authority..]
        .find('/')
        .map_or(url.len(), |i| authority + i);
    match url[authority..end].rfind('@') {
        Some(at) => &url[..authority + at + 1],
        None => &url[..authority],
    }
}

fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0) && !port.starts_with('+')
}

#[cfg(test)]
mod tests;
