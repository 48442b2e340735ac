//! The sandbox's request reader: how QuickBlox's stack (Puma 5.6, Rack 2.2, Rails) turns a
//! request's method, headers, query string and body into the method the router sees and the
//! `params` a controller reads. It shares nothing with the gateway's parser (`crate::params`),
//! so that the integration tests compare the gateway with an independent reading.
//!
//! What it implements:
//! - Headers as Puma hands them to Rack: a name folds `-` and `_` together and letter case away
//!   (`X_HTTP_METHOD_OVERRIDE` is `X-HTTP-Method-Override`); repeated headers join with `, `.
//! - `Rack::MethodOverride`: only on POST, the `_method` of the form body (`req.POST`) or else the
//!   `X-HTTP-Method-Override` header, upcased (Unicode, as Ruby's `upcase`), applied when it is one
//!   of GET HEAD PUT POST DELETE OPTIONS PATCH LINK UNLINK. A body Rack cannot read gives no
//!   `_method` (Rack rescues the error) and the header is consulted. The query's `_method` is not.
//! - `req.POST`: a form body for `application/x-www-form-urlencoded`, `multipart/form-data`,
//!   `multipart/mixed`, `multipart/related`, or no (or an empty) Content-Type on a request that
//!   was a POST before the override. The media type is the Content-Type up to its first `;` or
//!   `,`, downcased. Multipart needs a `boundary=` and a non-empty body, else the body is read as
//!   url-encoded, as Rack falls back; a url-encoded body loses one trailing NUL (Safari).
//! - Rails' `request_parameters`: JSON for `application/json`, `text/x-json` and
//!   `application/jsonrequest` (the Content-Type up to `;` or `,`, trimmed, downcased) with a
//!   non-empty body (a non-object becomes `{"_json": value}`, a parse error is a 400); otherwise
//!   `req.POST`; any other body is ignored. The body's length stands for `CONTENT_LENGTH`, which
//!   Puma sets for a chunked body too.
//! - `parse_nested_query`: the query splits on `&` and `;`, a form body on `&` (spaces after a
//!   separator are dropped); `+` and `%XX` unescaped, a `%` without two hex digits is a 400
//!   ("invalid %-encoding"); `normalize_params` as Rack 2.2 writes it (`[x]`, `x]`, `]x` all name
//!   `x`; `a[]` arrays; `a[b]` hashes; `a[][b]` arrays of hashes; the last scalar wins; a name
//!   used both as a scalar and as an array or hash is a 400; nesting past 100 levels is a 400).
//! - Multipart as Rack 2.2's parser reads it: preamble skipped up to the first boundary line, part
//!   heads up to a blank line, bodies up to the next `(CRLF)?--boundary`, done at the closing
//!   boundary; the part's name from `Content-Disposition` (quoted with `\` escapes, or unquoted up
//!   to `;`, as the scanner Rack 2.2 has had since 2.2.6.1 reads it; older 2.2 releases cut an
//!   unquoted name at `[`), else `Content-ID`, else its filename or `<content type>[]`. A part without a
//!   filename is a string; one with a filename is an upload, here an object of `filename`, `type`
//!   and `name` (its content is not kept); an empty filename drops the part. A body that ends
//!   before the closing boundary is Rack's `EOFError`, which Rails answers by ignoring the body.
//! - Rails' merge: `request_parameters.merge(query_parameters)`, shallow, the query winning, then
//!   the path parameters `id` and `format`. Arrays lose their `nil`s (Rails' deep munge); a
//!   value that is not UTF-8 is Rails' 400 "Invalid encoding for parameter".
//!
//! What it deliberately leaves out: Rack's key-space limit (the gateway bounds bodies), the
//! `multipart_part_limit` on uploads, `filename*` charsets, a text part's declared charset, the
//! JSON extensions of Ruby's parser (comments, `NaN`; big JSON numbers are `f64` here), the
//! `controller` and `action` path parameters, and Rails routing HEAD as GET (a HEAD is a 404).
//! A nesting deeper than Rack's limit is a 400 here (Rack 2.2 raises a `RangeError`).

use std::collections::BTreeMap;

use http::{HeaderMap, Method, Uri};
use serde_json::{Map, Value};

use super::routing::{self, Route};

/// How deep `normalize_params` may recurse (Rack's `param_depth_limit`).
const DEPTH_LIMIT: usize = 100;
/// Rack's limits on a part's `Content-Disposition`: longer ones are ignored, extra params dropped.
const DISPOSITION_MAX_BYTES: usize = 1536;
const DISPOSITION_MAX_PARAMS: usize = 16;
const OVERRIDE_METHODS: [&str; 9] = [
    "GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "LINK", "UNLINK",
];
const JSON_TYPES: [&str; 3] = ["application/json", "text/x-json", "application/jsonrequest"];

/// A request as the controller sees it.
#[derive(Debug)]
pub(super) struct Env {
    /// The method after `Rack::MethodOverride`.
    pub method: Method,
    pub route: Route,
    /// Rails' `params`, or the message of its 400.
    pub params: Result<Map<String, Value>, String>,
}

pub(super) fn read(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Env {
    let routed = routing::route(uri.path());
    let content_type = cgi(headers, "CONTENT_TYPE").filter(|t| !t.is_empty());
    let form = rack_post(method, content_type.as_deref(), body);
    let method = method_override(method, headers, &form).unwrap_or_else(|| method.clone());
    let params = rails_params(content_type.as_deref(), uri.query(), body, form).map(|mut p| {
        if let Route::Dialog(id)
        | Route::User(id)
        | Route::UserTokens(id)
        | Route::UserExternal(id) = &routed.route
        {
            p.insert("id".to_owned(), Value::String(id.clone()));
        }
        if let Some(format) = routed.format {
            p.insert("format".to_owned(), Value::String(format));
        }
        p
    });
    Env {
        method,
        route: routed.route,
        params,
    }
}

/// A header as the CGI variable `name` (`CONTENT_TYPE`, `HTTP_X_HTTP_METHOD_OVERRIDE`) Puma makes
/// of it: every header whose name folds to it, values joined with `, `.
pub(super) fn cgi(headers: &HeaderMap, name: &str) -> Option<String> {
    let wanted = name.strip_prefix("HTTP_").unwrap_or(name);
    let mut joined: Option<String> = None;
    for (key, value) in headers {
        let folded = key.as_str().bytes().map(|b| match b {
            b'-' => b'_',
            b => b.to_ascii_uppercase(),
        });
        if !folded.eq(wanted.bytes()) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        match &mut joined {
            None => joined = Some(value.into_owned()),
            Some(all) => {
                all.push_str(", ");
                all.push_str(&value);
            }
        }
    }
    joined
}

/// Rack's `media_type`: up to the first `;` or `,` (and the spaces before it), downcased.
fn media_type(content_type: &str) -> String {
    let end = content_type.find([';', ',']).unwrap_or(content_type.len());
    let mut media = content_type[..end].to_ascii_lowercase();
    if end < content_type.len() {
        media.truncate(media.trim_end().len());
    }
    media
}

/// Why Rack could not read a form body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum FormError {
    /// `EOFError`: a multipart body cut short.
    Eof,
    /// `InvalidParameterError` or `ParameterTypeError`, with Rack's message.
    Invalid(String),
}

/// Rack's `req.POST`.
pub(super) fn rack_post(
    method: &Method,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, FormError> {
    let media = content_type.map(media_type);
    let readable = match media.as_deref() {
        None => method == Method::POST,
        Some(m) => matches!(
            m,
            "application/x-www-form-urlencoded"
                | "multipart/form-data"
                | "multipart/mixed"
                | "multipart/related"
        ),
    };
    if !readable {
        return Ok(Map::new());
    }
    if let (Some(boundary), false) = (content_type.and_then(boundary), body.is_empty()) {
        let params = multipart::parse(body, boundary.as_bytes())?;
        return finish(params).map_err(FormError::Invalid);
    }
    let body = body.strip_suffix(b"\0").unwrap_or(body);
    let params = parse_nested_query(body, b"&").map_err(FormError::Invalid)?;
    finish(params).map_err(FormError::Invalid)
}

fn method_override(
    method: &Method,
    headers: &HeaderMap,
    form: &Result<Map<String, Value>, FormError>,
) -> Option<Method> {
    if method != Method::POST {
        return None;
    }
    // Ruby: `req.POST["_method"] || env["HTTP_X_HTTP_METHOD_OVERRIDE"]`; only nil falls through.
    let wanted = match form.as_ref().ok().and_then(|f| f.get("_method")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => cgi(headers, "HTTP_X_HTTP_METHOD_OVERRIDE")?,
        Some(_) => return None,
    };
    let wanted = wanted.to_uppercase();
    OVERRIDE_METHODS
        .contains(&wanted.as_str())
        .then(|| Method::from_bytes(wanted.as_bytes()).ok())
        .flatten()
}

/// Rails' `params` before the path parameters: `request_parameters.merge(query_parameters)`.
fn rails_params(
    content_type: Option<&str>,
    query: Option<&str>,
    body: &[u8],
    form: Result<Map<String, Value>, FormError>,
) -> Result<Map<String, Value>, String> {
    let mime = content_type.map(|t| {
        let end = t.find([';', ',']).unwrap_or(t.len());
        t[..end].trim().to_ascii_lowercase()
    });
    let json = mime.as_deref().is_some_and(|m| JSON_TYPES.contains(&m));
    let mut params = if json && !body.is_empty() {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(object)) => munge_map(object),
            Ok(other) => Map::from_iter([("_json".to_owned(), munge(other))]),
            Err(_) => return Err("Error occurred while parsing request parameters".to_owned()),
        }
    } else {
        match form {
            Ok(form) => form,
            // Rails' `parameters` rescues EOFError: the query alone.
            Err(FormError::Eof) => Map::new(),
            Err(FormError::Invalid(e)) => return Err(format!("Invalid request parameters: {e}")),
        }
    };
    let query = parse_nested_query(query.unwrap_or("").as_bytes(), b"&;")
        .and_then(finish)
        .map_err(|e| format!("Invalid query parameters: {e}"))?;
    params.extend(query);
    Ok(params)
}

/// A parameter value while Rack builds it: Ruby's String (still bytes), nil, Array, its own
/// `Params` hash, or the Hash describing an upload (which is no `Params`).
#[derive(Clone, Debug, PartialEq)]
pub(super) enum P {
    Nil,
    Str(Vec<u8>),
    Arr(Vec<P>),
    Hash(Hash),
    File(Map<String, Value>),
}

pub(super) type Hash = BTreeMap<String, P>;

impl P {
    fn ruby_class(&self) -> &'static str {
        match self {
            P::Nil => "NilClass",
            P::Str(_) => "String",
            P::Arr(_) => "Array",
            P::Hash(_) => "Rack::QueryParser::Params",
            P::File(_) => "Hash",
        }
    }
}

/// Rack's `parse_nested_query(qs, separators)`, before Rails' encoding check.
pub(super) fn parse_nested_query(qs: &[u8], separators: &[u8]) -> Result<Hash, String> {
    let mut params = Hash::new();
    let mut rest = qs;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|b| separators.contains(b))
            .unwrap_or(rest.len());
        let piece = &rest[..end];
        rest = &rest[end.min(rest.len())..];
        if !rest.is_empty() {
            // The separator, then the spaces `/[&;] */` also takes.
            rest = &rest[1..];
            let spaces = rest.iter().take_while(|b| **b == b' ').count();
            rest = &rest[spaces..];
        }
        if piece.is_empty() {
            continue;
        }
        let (key, value) = match piece.iter().position(|b| *b == b'=') {
            Some(i) => (&piece[..i], Some(&piece[i + 1..])),
            None => (piece, None),
        };
        let key = unescape(key)?;
        let value = match value {
            Some(v) => P::Str(unescape(v)?),
            None => P::Nil,
        };
        normalize_params(
            &mut params,
            &String::from_utf8_lossy(&key),
            value,
            DEPTH_LIMIT,
        )?;
    }
    Ok(params)
}

/// `URI.decode_www_form_component`: `+` is a space, `%XX` a byte, any other `%` an error.
pub(super) fn unescape(s: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let byte = routing::escaped(s, i).ok_or_else(|| {
                    format!("invalid %-encoding ({})", String::from_utf8_lossy(s))
                })?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// What `normalize_params` returns: the hash it was given, `Array(v)`, or nil.
enum Ret {
    Params,
    Array(Vec<P>),
    Nil,
}

impl Ret {
    fn into_value(self, params: Hash) -> P {
        match self {
            Ret::Params => P::Hash(params),
            Ret::Array(items) => P::Arr(items),
            Ret::Nil => P::Nil,
        }
    }
}

/// Rack 2.2's `normalize_params`, step for step.
fn normalize_params(params: &mut Hash, name: &str, v: P, depth: usize) -> Result<Ret, String> {
    if depth == 0 {
        return Err("parameters nested too deep".to_owned());
    }
    // name =~ %r(\A[\[\]]*([^\[\]]+)\]*)
    let bytes = name.as_bytes();
    let bracket = |b: &u8| *b == b'[' || *b == b']';
    let start = bytes.iter().take_while(|b| bracket(b)).count();
    let end = start + bytes[start..].iter().take_while(|b| !bracket(b)).count();
    if end == start {
        return Ok(if v != P::Nil && name == "[]" {
            Ret::Array(vec![v])
        } else {
            Ret::Nil
        });
    }
    let k = &name[start..end];
    let after = &name[end + bytes[end..].iter().take_while(|b| **b == b']').count()..];

    if after.is_empty() {
        params.insert(k.to_owned(), v);
    } else if after == "[" {
        params.insert(name.to_owned(), v);
    } else if after == "[]" {
        let items = array_at(params, k)?;
        items.push(v);
    } else if let Some(child) = array_child(after) {
        let items = array_at(params, k)?;
        match items.last_mut() {
            Some(P::Hash(last)) if !has_key(last, child) => {
                normalize_params(last, child, v, depth - 1)?;
            }
            _ => {
                let mut fresh = Hash::new();
                let ret = normalize_params(&mut fresh, child, v, depth - 1)?;
                items.push(ret.into_value(fresh));
            }
        }
    } else {
        let slot = params.entry(k.to_owned()).or_insert(P::Nil);
        if *slot == P::Nil {
            *slot = P::Hash(Hash::new());
        }
        let P::Hash(inner) = slot else {
            return Err(format!(
                "expected Hash (got {}) for param `{k}'",
                slot.ruby_class()
            ));
        };
        match normalize_params(inner, after, v, depth - 1)? {
            Ret::Params => {}
            Ret::Array(items) => *slot = P::Arr(items),
            Ret::Nil => *slot = P::Nil,
        }
    }
    Ok(Ret::Params)
}

/// `params[k] ||= []`, which must then be an Array.
fn array_at<'p>(params: &'p mut Hash, k: &str) -> Result<&'p mut Vec<P>, String> {
    let slot = params.entry(k.to_owned()).or_insert(P::Nil);
    if *slot == P::Nil {
        *slot = P::Arr(Vec::new());
    }
    match slot {
        P::Arr(items) => Ok(items),
        other => Err(format!(
            "expected Array (got {}) for param `{k}'",
            other.ruby_class()
        )),
    }
}

/// The child key of `[][x]` (`x`) or of `[]rest` (`rest`).
fn array_child(after: &str) -> Option<&str> {
    let rest = after.strip_prefix("[]")?;
    if let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if !inner.is_empty() && !inner.contains(['[', ']']) {
            return Some(inner);
        }
    }
    (!rest.is_empty()).then_some(rest)
}

/// Rack's `params_hash_has_key?`.
fn has_key(hash: &Hash, key: &str) -> bool {
    if key.contains("[]") {
        return false;
    }
    let mut current = hash;
    let mut parts = key.split(['[', ']']).filter(|p| !p.is_empty()).peekable();
    while let Some(part) = parts.next() {
        match current.get(part) {
            None => return false,
            Some(P::Hash(next)) => current = next,
            Some(_) if parts.peek().is_none() => return true,
            Some(_) => return false,
        }
    }
    true
}

/// Rails on a parsed hash: values must be UTF-8, arrays lose their nils.
pub(super) fn finish(params: Hash) -> Result<Map<String, Value>, String> {
    params
        .into_iter()
        .map(|(k, v)| Ok((k, to_value(v)?)))
        .collect()
}

fn to_value(p: P) -> Result<Value, String> {
    Ok(match p {
        P::Nil => Value::Null,
        P::Str(bytes) => match String::from_utf8(bytes) {
            Ok(s) => Value::String(s),
            Err(e) => {
                return Err(format!(
                    "Invalid encoding for parameter: {}",
                    String::from_utf8_lossy(e.as_bytes())
                ))
            }
        },
        P::Arr(items) => Value::Array(
            items
                .into_iter()
                .filter(|i| *i != P::Nil)
                .map(to_value)
                .collect::<Result<_, _>>()?,
        ),
        P::Hash(hash) => Value::Object(finish(hash)?),
        P::File(file) => Value::Object(file),
    })
}

/// Deep munge of a JSON document: arrays lose their nulls.
fn munge(value: Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .filter(|i| !i.is_null())
                .map(munge)
                .collect(),
        ),
        Value::Object(map) => Value::Object(munge_map(map)),
        other => other,
    }
}

fn munge_map(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter().map(|(k, v)| (k, munge(v))).collect()
}

/// The boundary of `%r|\Amultipart/.*boundary=\"?([^\";,]+)\"?|ni`: the last `boundary=` that
/// is followed by one.
pub(super) fn boundary(content_type: &str) -> Option<String> {
    let lower = content_type.to_ascii_lowercase();
    if !lower.starts_with("multipart/") {
        return None;
    }
    let head = "multipart/".len();
    let mut search_end = lower.len();
    while let Some(at) = lower[head..search_end].rfind("boundary=") {
        let at = head + at;
        let value = &content_type[at + "boundary=".len()..];
        let value = value.strip_prefix('"').unwrap_or(value);
        let len = value.find(['"', ';', ',']).unwrap_or(value.len());
        if len > 0 {
            return Some(value[..len].to_owned());
        }
        search_end = at;
    }
    None
}

mod multipart;
