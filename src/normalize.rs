//! Request normalization, done once before any decision.
//!
//! The path is percent-decoded exactly once and refused when it could be read two ways: dot
//! segments, empty segments, an encoded `/`, `\` or NUL, control characters, invalid UTF-8. Method
//! overrides (headers or a `_method` query parameter) are refused, since the upstream (Rails) may
//! honour them and the gateway would then judge a different method than the one executed.
//! The result carries the *route key*: lowercase segments with a trailing `.json` removed, which is
//! what route allowlists and dialog rules match, so `/CHAT/dialog/ID` cannot slip past a rule
//! written for `/chat/Dialog/ID.json`.

use http::{HeaderMap, HeaderName};

use crate::error::GateError;

/// Headers that ask a framework to treat the request as another method.
static OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// A request path that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// Decoded segments, as written (case kept).
    pub segments: Vec<String>,
    /// Decoded segments lowercased, `.json` removed from the last: what routes match.
    pub route: Vec<String>,
}

/// Check the path and query of a request and build its route key.
pub fn normalize(
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Normalized, GateError> {
    if OVERRIDE_HEADERS.iter().any(|h| headers.contains_key(h)) {
        return Err(GateError::MethodOverride);
    }
    if let Some(query) = query {
        if query_has_method_override(query)? {
            return Err(GateError::MethodOverride);
        }
    }
    let segments = decode_path(path)?;
    let mut route: Vec<String> = segments.iter().map(|s| s.to_ascii_lowercase()).collect();
    if let Some(last) = route.last_mut() {
        let stripped = strip_json(last).len();
        last.truncate(stripped);
    }
    Ok(Normalized { segments, route })
}

/// `name.json` -> `name` (any letter case); anything else unchanged.
pub fn strip_json(segment: &str) -> &str {
    let n = segment.len();
    if n > 5 && segment.is_char_boundary(n - 5) && segment[n - 5..].eq_ignore_ascii_case(".json") {
        &segment[..n - 5]
    } else {
        segment
    }
}

fn decode_path(path: &str) -> Result<Vec<String>, GateError> {
    let rest = path
        .strip_prefix('/')
        .ok_or(GateError::BadPath("the path must start with /"))?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    rest.split('/').map(decode_segment).collect()
}

fn decode_segment(raw: &str) -> Result<String, GateError> {
    if raw.is_empty() {
        return Err(GateError::BadPath("the path has an empty segment"));
    }
    let bytes = raw.as_bytes();
    // Most segments are plain ASCII words: checked and copied in one pass, nothing to decode.
    if bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() && b != b'%' && b != b'\\')
    {
        if raw == "." || raw == ".." {
            return Err(GateError::BadPath("the path has a dot segment"));
        }
        return Ok(raw.to_owned());
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(GateError::BadPath(
                    "the path has a malformed percent-encoding",
                ));
            };
            let decoded = (hi * 16 + lo) as u8;
            if decoded == b'/' {
                return Err(GateError::BadPath("the path has an encoded /"));
            }
            out.push(decoded);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let segment =
        String::from_utf8(out).map_err(|_| GateError::BadPath("the path is not valid UTF-8"))?;
    if segment == "." || segment == ".." {
        return Err(GateError::BadPath("the path has a dot segment"));
    }
    if segment.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(GateError::BadPath(
            "the path has a backslash or a control character",
        ));
    }
    Ok(segment)
}

/// Does the query carry `_method` (raw or percent-encoded)? Malformed encodings are refused.
fn query_has_method_override(query: &str) -> Result<bool, GateError> {
    for pair in query.split('&') {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        let key = key.replace('+', " ");
        let decoded = percent_encoding::percent_decode_str(&key)
            .decode_utf8()
            .map_err(|_| GateError::BadQuery)?;
        let name = decoded.split('[').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("_method") {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(path: &str) -> Result<Normalized, GateError> {
        normalize(path, None, &HeaderMap::new())
    }

    #[test]
    fn case_and_json_suffix_do_not_change_the_route() {
        let a = n("/chat/Dialog/5d75.json").unwrap();
        let b = n("/CHAT/dialog/5D75").unwrap();
        let c = n("/chat/%44ialog/5d75.JSON").unwrap();
        assert_eq!(a.route, vec!["chat", "dialog", "5d75"]);
        assert_eq!(b.route, a.route);
        assert_eq!(c.route, a.route);
        assert_eq!(a.segments, vec!["chat", "Dialog", "5d75.json"]);
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for bad in [
            "/chat/../Dialog",
            "/chat/./Dialog",
            "/chat//Dialog",
            "/chat/Dialog/",
            "/chat%2FDialog",
            "/chat%2fDialog",
            "/chat/%2e%2e/x",
            "/chat/%2E",
            "/a%5Cb",
            "/a\\b",
            "/a%00b",
            "/a%0d%0ab",
            "/a%ff",
            "/a%zz",
            "/a%4",
            "chat",
            "/a%7f",
        ] {
            assert!(n(bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(n("/").unwrap().route, Vec::<String>::new());
        // Decoding happens once: %252e is the three characters "%2e", not a dot segment.
        assert_eq!(n("/a/%252e").unwrap().segments, vec!["a", "%2e"]);
    }

    #[test]
    fn method_overrides_are_refused() {
        let mut h = HeaderMap::new();
        h.insert("x-http-method-override", "PUT".parse().unwrap());
        assert!(matches!(
            normalize("/a", None, &h),
            Err(GateError::MethodOverride)
        ));
        for q in [
            "_method=PUT",
            "a=1&%5Fmethod=PUT",
            "_METHOD=put",
            "_method[x]=1",
        ] {
            assert!(
                matches!(
                    normalize("/a", Some(q), &HeaderMap::new()),
                    Err(GateError::MethodOverride)
                ),
                "{q}"
            );
        }
        assert!(normalize("/a", Some("method=1&x_method=2"), &HeaderMap::new()).is_ok());
    }

    proptest! {
        #[test]
        fn never_panics_and_accepted_routes_are_clean(path in "/[ -~]{0,40}") {
            if let Ok(norm) = n(&path) {
                for s in &norm.segments {
                    prop_assert!(!s.is_empty() && s != "." && s != "..");
                    prop_assert!(!s.contains('/') && !s.contains('\\'));
                }
            }
        }
    }
}
