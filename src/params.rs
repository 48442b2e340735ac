//! Request parameters as the upstream (a Rails application) would read them: the query string
//! merged with a JSON or form-urlencoded body into one document, the one the dialog rules judge.
//!
//! The gateway forwards the caller's original bytes, so the document judged here must be the
//! document the upstream acts on. Wherever Rails (or one Rack version against another) could read
//! the bytes differently from us, or silently pick one of two values, parsing fails instead: the
//! caller answers 400 or 415 and nothing is forwarded.
//!
//! What is refused, and why:
//! - duplicate keys at any depth (JSON objects, repeated form scalars, a key used as both a
//!   scalar and a hash or array, a top-level key in both query and body): Rails keeps one of the
//!   values, so a check could read the other;
//! - a top-level `_method` key: `Rack::MethodOverride` turns a POST into a PUT or DELETE with it;
//! - a raw `;` in form text: Rack 2 splits query strings on it, Rack 3 does not;
//! - a raw space right after `&`: Rack's separator swallows it, so `& user_id` is `user_id` there;
//! - a bad `%` escape or a key or value that is not UTF-8 once decoded (no lossy decoding);
//! - keys with malformed brackets (`a[b`, `a]`, `[a]`, `a[b]c`), which Rack repairs by guessing,
//!   and arrays of hashes (`a[][b]`), whose Rack merge rules no dialog field needs;
//! - nesting deeper than [`MAX_DEPTH`];
//! - a charset other than UTF-8, and any non-empty body that is neither JSON nor form-urlencoded.
//!
//! Form and query values are strings; a form key without `=` has the value `null`, as Rack gives
//! `nil`. JSON values keep their types.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use http::StatusCode;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::error::GateError;

/// Deepest nesting accepted, in containers: `{"a":{"b":1}}` and `a[b]=1` are depth 2.
pub const MAX_DEPTH: usize = 32;

/// Why a request's parameters could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamsError {
    /// Not parseable, or parseable in more than one way (400).
    Malformed(String),
    /// A key given twice; names the key in bracket form, e.g. `push_all[occupants_ids]` (400).
    Duplicate(String),
    /// A non-empty body of a type the gateway cannot judge; names the type (415).
    UnsupportedMediaType(String),
    /// A `_method` parameter, which Rails would use to change the request method (400).
    MethodOverride,
}

impl ParamsError {
    /// The HTTP status the gateway answers with.
    pub fn status(&self) -> u16 {
        match self {
            ParamsError::Malformed(_) | ParamsError::Duplicate(_) | ParamsError::MethodOverride => {
                400
            }
            ParamsError::UnsupportedMediaType(_) => 415,
        }
    }

    /// The stable `X-Qbgate-Reason` code.
    pub fn reason(&self) -> &'static str {
        match self {
            ParamsError::Malformed(_) => "params_malformed",
            ParamsError::Duplicate(_) => "params_duplicate",
            ParamsError::UnsupportedMediaType(_) => "params_unsupported_media_type",
            ParamsError::MethodOverride => "params_method_override",
        }
    }
}

impl From<ParamsError> for GateError {
    fn from(e: ParamsError) -> Self {
        GateError::Rejected {
            status: StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            reason: e.reason(),
            field: None,
            message: Cow::Owned(e.to_string()),
        }
    }
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamsError::Malformed(why) => write!(f, "Malformed parameters: {why}"),
            ParamsError::Duplicate(key) => write!(f, "Parameter {key} is given more than once"),
            ParamsError::UnsupportedMediaType(ty) => {
                write!(f, "Unsupported Content-Type {ty:?}: send application/json or application/x-www-form-urlencoded")
            }
            ParamsError::MethodOverride => write!(f, "The _method parameter is not allowed"),
        }
    }
}

impl std::error::Error for ParamsError {}

/// Reads the query string and body into the one document Rails would build from them.
///
/// `content_type` is the raw `Content-Type` value (`None` when absent; a caller that sees the
/// header more than once must refuse the request itself), `query` the raw, still percent-encoded
/// query string, `body` the whole body. An empty body contributes nothing, whatever its type.
pub fn parse(
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, ParamsError> {
    let mut params = if body.is_empty() {
        Map::new()
    } else {
        match body_kind(content_type)? {
            BodyKind::Json => parse_json(body)?,
            BodyKind::Form => {
                let text = std::str::from_utf8(body)
                    .map_err(|_| ParamsError::Malformed("body is not UTF-8".into()))?;
                parse_form(text)?
            }
        }
    };
    let query = match query {
        Some(q) => parse_form(q)?,
        None => Map::new(),
    };
    if params.contains_key("_method") || query.contains_key("_method") {
        return Err(ParamsError::MethodOverride);
    }
    // Rails merges the two, body winning; a key in both is ambiguous, so it is refused.
    for (key, value) in query {
        if params.contains_key(&key) {
            return Err(ParamsError::Duplicate(key));
        }
        params.insert(key, value);
    }
    Ok(params)
}

enum BodyKind {
    Json,
    Form,
}

fn body_kind(content_type: Option<&str>) -> Result<BodyKind, ParamsError> {
    let Some(raw) = content_type else {
        return Err(ParamsError::UnsupportedMediaType("(none)".into()));
    };
    let unsupported = || ParamsError::UnsupportedMediaType(raw.to_string());
    let mut parts = raw.split(';');
    let media = parts.next().unwrap_or_default().trim();
    let kind = if media.eq_ignore_ascii_case("application/json") {
        BodyKind::Json
    } else if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        BodyKind::Form
    } else {
        return Err(unsupported());
    };
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            // The bytes are read as UTF-8; a client that says otherwise may mean other text.
            if !(value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")) {
                return Err(unsupported());
            }
        }
    }
    Ok(kind)
}

fn parse_json(body: &[u8]) -> Result<Map<String, Value>, ParamsError> {
    let fault = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = StrictValue {
        depth: 0,
        path: Path::Root,
        fault: &fault,
    };
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ParamsError::Malformed("JSON body is not an object".into())),
        Err(err) => Err(fault
            .into_inner()
            .unwrap_or_else(|| ParamsError::Malformed(format!("invalid JSON: {err}")))),
    }
}

/// Deserializes any JSON value like `serde_json::Value` does, but refuses duplicate object keys
/// (serde_json keeps the last one silently) and nesting deeper than [`MAX_DEPTH`]. The typed
/// error goes through `fault`, since serde's error type only carries text.
struct StrictValue<'f, 'p> {
    /// Containers already entered above this value.
    depth: usize,
    /// Where this value sits, to name a duplicate key; spelled out only then.
    path: Path<'p>,
    fault: &'f RefCell<Option<ParamsError>>,
}

/// Where a JSON value sits: the keys and array levels above it.
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Key(&'p Path<'p>, &'p str),
    Item(&'p Path<'p>),
}

impl Path<'_> {
    /// In bracket form, as a form key would spell it: `a[b][]`.
    fn spell(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Key(Path::Root, key) => (*key).to_string(),
            Path::Key(parent, key) => format!("{}[{key}]", parent.spell()),
            Path::Item(parent) => format!("{}[]", parent.spell()),
        }
    }
}

impl StrictValue<'_, '_> {
    fn fail<E: de::Error>(&self, err: ParamsError) -> E {
        let msg = err.to_string();
        *self.fault.borrow_mut() = Some(err);
        E::custom(msg)
    }

    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(self.fail(ParamsError::Malformed(format!(
                "nested deeper than {MAX_DEPTH} levels"
            ))));
        }
        Ok(depth)
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_, '_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // JSON text cannot spell NaN or infinity; serde_json refuses overflowing literals itself.
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut items = Vec::new();
        loop {
            let child = StrictValue {
                depth,
                path: Path::Item(&self.path),
                fault: self.fault,
            };
            match seq.next_element_seed(child)? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = Path::Key(&self.path, &key);
            if object.contains_key(&key) {
                return Err(self.fail(ParamsError::Duplicate(path.spell())));
            }
            let child = StrictValue {
                depth,
                path,
                fault: self.fault,
            };
            let value = map.next_value_seed(child)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// One step below a top-level form key: `[name]` or a final `[]`.
enum Step {
    Key(String),
    Push,
}

/// Parses `application/x-www-form-urlencoded` text (a body or a query string) with Rails'
/// nested-key rules, strictly: see the module doc for what is refused.
fn parse_form(text: &str) -> Result<Map<String, Value>, ParamsError> {
    if text.contains(';') {
        return Err(ParamsError::Malformed(
            "a raw ';' separates parameters on some Rack versions only; encode it as %3B".into(),
        ));
    }
    let mut params = Map::new();
    for pair in text.split('&') {
        // Empty pairs (`a=1&&b=2`, a trailing `&`) are skipped, as Rack does.
        if pair.is_empty() {
            continue;
        }
        if pair.starts_with(' ') {
            return Err(ParamsError::Malformed(
                "a raw space after '&' is dropped by Rack; encode it as %20".into(),
            ));
        }
        let (raw_key, raw_value) = match pair.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (pair, None),
        };
        let key = decode(raw_key)?;
        let value = match raw_value {
            Some(v) => Value::String(decode(v)?),
            None => Value::Null,
        };
        let (base, steps) = split_key(&key)?;
        insert(&mut params, base, &steps, value)?;
    }
    Ok(params)
}

/// Percent-decodes one key or value: `+` is a space, every `%` must start a two-digit hex
/// escape, and the result must be UTF-8.
fn decode(raw: &str) -> Result<String, ParamsError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex(*b));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(ParamsError::Malformed(format!(
                        "bad percent escape in {raw:?}"
                    )));
                };
                out.push((hi << 4) | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| ParamsError::Malformed(format!("{raw:?} is not UTF-8 once decoded")))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits a decoded key such as `push_all[occupants_ids][]` into `push_all` and its steps.
fn split_key(key: &str) -> Result<(&str, Vec<Step>), ParamsError> {
    let malformed = || ParamsError::Malformed(format!("malformed parameter name {key:?}"));
    let (base, mut rest) = match key.find('[') {
        Some(at) => key.split_at(at),
        None => (key, ""),
    };
    if base.is_empty() || base.contains(']') {
        return Err(malformed());
    }
    let mut steps = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(malformed)?;
        let close = inner.find(']').ok_or_else(malformed)?;
        let name = &inner[..close];
        if name.contains('[') {
            return Err(malformed());
        }
        rest = &inner[close + 1..];
        if name.is_empty() {
            if !rest.is_empty() {
                return Err(ParamsError::Malformed(format!(
                    "arrays of hashes are not supported: {key:?}"
                )));
            }
            steps.push(Step::Push);
        } else {
            steps.push(Step::Key(name.to_owned()));
        }
    }
    if steps.len() + 1 > MAX_DEPTH {
        return Err(ParamsError::Malformed(format!(
            "nested deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok((base, steps))
}

/// Places `value` at `key` + `steps`, refusing any second write to a scalar and any key used
/// with two shapes (scalar, array, hash).
fn insert(
    map: &mut Map<String, Value>,
    key: &str,
    steps: &[Step],
    value: Value,
) -> Result<(), ParamsError> {
    let mut map = map;
    let mut key = key.to_owned();
    let mut path = key.clone();
    let mut steps = steps;
    loop {
        match steps {
            [] => {
                if map.contains_key(&key) {
                    return Err(ParamsError::Duplicate(path));
                }
                map.insert(key, value);
                return Ok(());
            }
            [Step::Push] => {
                let slot = map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(items) = slot else {
                    return Err(ParamsError::Duplicate(path));
                };
                items.push(value);
                return Ok(());
            }
            [Step::Key(child), rest @ ..] => {
                let slot = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(inner) = slot else {
                    return Err(ParamsError::Duplicate(path));
                };
                map = inner;
                key = child.clone();
                path = format!("{path}[{child}]");
                steps = rest;
            }
            // split_key only puts Push last.
            [Step::Push, ..] => {
                return Err(ParamsError::Malformed(format!(
                    "malformed parameter name {path:?}"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests;
