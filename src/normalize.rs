//! Request normalization, done once before any decision.
//!
//! The path is percent-decoded exactly once and refused when it could be read two ways: dot
//! segments, empty segments, an encoded `/`, `\` or NUL, control characters, invalid UTF-8. Method
//! overrides (headers or a `_method` query parameter) are refused, since the upstream (Rails) may
//! honour them and the gateway would then judge a different method than the one executed.
//! The result carries the *route key*: lowercase segments with a trailing `.json` removed, which is
//! what route allowlists and dialog rules match, so `/CHAT/dialog/ID` cannot slip past a rule
//! written for `/chat/Dialog/ID.json`.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName};
use smallvec::SmallVec;

use crate::error::GateError;

/// Headers that ask a framework to treat the request as another method.
static OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// A request path that passed every check. Borrowed from the path where it can be: a plain,
/// lowercase path costs no allocation, and any other one string per form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    /// The decoded segments joined by `/` (a decoded segment never holds one), case kept.
    decoded: Cow<'a, str>,
    /// The route key: `decoded` lowercased, `.json` removed from the last segment.
    route: Cow<'a, str>,
    /// Where each segment ends in `decoded`; the same in `route` but for the last segment,
    /// which ends where `route` does.
    ends: SmallVec<[u32; 6]>,
}

impl Normalized<'_> {
    /// Decoded segments, as written (case kept).
    pub fn segments(&self) -> impl Iterator<Item = &str> + Clone {
        (0..self.len()).filter_map(|i| self.decoded.get(self.start(i)..*self.ends.get(i)? as usize))
    }

    /// Decoded segments lowercased, `.json` removed from the last: what routes match.
    pub fn route(&self) -> impl Iterator<Item = &str> + Clone {
        (0..self.len()).filter_map(|i| self.route_segment(i))
    }

    /// Segment `i` of the route key; `None` past the last.
    pub fn route_segment(&self, i: usize) -> Option<&str> {
        let end = if i + 1 == self.len() {
            self.route.len()
        } else {
            *self.ends.get(i)? as usize
        };
        self.route.get(self.start(i)..end)
    }

    /// The route key's segments joined by `/` (`""` for `/`).
    pub fn route_key(&self) -> &str {
        &self.route
    }

    /// How many segments the path has.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Is the path `/`?
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Where segment `i` starts (one past the `/` that ends the one before).
    fn start(&self, i: usize) -> usize {
        i.checked_sub(1)
            .and_then(|before| self.ends.get(before))
            .map_or(0, |&end| end as usize + 1)
    }
}

/// Check the path and query of a request and build its route key.
pub fn normalize<'a>(
    path: &'a str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Normalized<'a>, GateError> {
    if OVERRIDE_HEADERS.iter().any(|h| headers.contains_key(h)) {
        return Err(GateError::MethodOverride);
    }
    if let Some(query) = query {
        if query_has_method_override(query)? {
            return Err(GateError::MethodOverride);
        }
    }
    let (decoded, ends) = decode_path(path)?;
    let last_start = match ends.len() {
        0 | 1 => 0,
        n => ends[n - 2] as usize + 1,
    };
    let last = decoded.get(last_start..).unwrap_or_default();
    let kept = last_start + strip_json(last).len();
    let route = match &decoded {
        Cow::Borrowed(plain) if !plain.bytes().any(|b| b.is_ascii_uppercase()) => {
            Cow::Borrowed(&plain[..kept])
        }
        _ => Cow::Owned(decoded[..kept].to_ascii_lowercase()),
    };
    Ok(Normalized {
        decoded,
        route,
        ends,
    })
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

/// The decoded segments joined by `/`, and where each ends. Borrowed when no segment needed
/// decoding.
fn decode_path(path: &str) -> Result<(Cow<'_, str>, SmallVec<[u32; 6]>), GateError> {
    let rest = path
        .strip_prefix('/')
        .ok_or(GateError::BadPath("the path must start with /"))?;
    let mut ends = SmallVec::new();
    if rest.is_empty() {
        return Ok((Cow::Borrowed(""), ends));
    }
    // A path longer than this never reaches here (the URI parser's limit); refused all the same
    // rather than have an offset wrap.
    if u32::try_from(rest.len()).is_err() {
        return Err(GateError::BadPath("the path is too long"));
    }
    // Where the current raw segment starts in `rest`.
    let mut start = 0;
    let mut decoded: Option<String> = None;
    for raw in rest.split('/') {
        match (&mut decoded, decode_segment(raw)?) {
            // Every segment so far is as written: `rest` up to here is the decoded form.
            (None, Cow::Borrowed(_)) => ends.push((start + raw.len()) as u32),
            (None, Cow::Owned(segment)) => {
                let mut out = String::with_capacity(rest.len());
                out.push_str(&rest[..start]);
                out.push_str(&segment);
                ends.push(out.len() as u32);
                decoded = Some(out);
            }
            (Some(out), segment) => {
                out.push('/');
                out.push_str(&segment);
                ends.push(out.len() as u32);
            }
        }
        start += raw.len() + 1;
    }
    Ok((decoded.map_or(Cow::Borrowed(rest), Cow::Owned), ends))
}

fn decode_segment(raw: &str) -> Result<Cow<'_, str>, GateError> {
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
        return Ok(Cow::Borrowed(raw));
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
    Ok(Cow::Owned(segment))
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

    fn n(path: &str) -> Result<Normalized<'_>, GateError> {
        normalize(path, None, &HeaderMap::new())
    }

    fn route<'a>(n: &'a Normalized<'_>) -> Vec<&'a str> {
        n.route().collect()
    }

    fn segments<'a>(n: &'a Normalized<'_>) -> Vec<&'a str> {
        n.segments().collect()
    }

    #[test]
    fn case_and_json_suffix_do_not_change_the_route() {
        let a = n("/chat/Dialog/5d75.json").unwrap();
        let b = n("/CHAT/dialog/5D75").unwrap();
        let c = n("/chat/%44ialog/5d75.JSON").unwrap();
        assert_eq!(route(&a), ["chat", "dialog", "5d75"]);
        assert_eq!(route(&b), route(&a));
        assert_eq!(route(&c), route(&a));
        assert_eq!(a.route_key(), "chat/dialog/5d75");
        assert_eq!(segments(&a), ["chat", "Dialog", "5d75.json"]);
        assert_eq!(segments(&b), ["CHAT", "dialog", "5D75"]);
        assert_eq!(segments(&c), ["chat", "Dialog", "5d75.JSON"]);
        assert_eq!(a.len(), 3);
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
        let root = n("/").unwrap();
        assert!(root.is_empty());
        assert_eq!(route(&root), Vec::<&str>::new());
        assert_eq!(segments(&root), Vec::<&str>::new());
        // Decoding happens once: %252e is the three characters "%2e", not a dot segment.
        assert_eq!(segments(&n("/a/%252e").unwrap()), ["a", "%2e"]);
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

    #[test]
    fn only_a_path_that_needs_no_change_is_borrowed() {
        let plain = n("/chat/dialog/5d75").unwrap();
        assert!(matches!(plain.decoded, Cow::Borrowed(_)));
        assert!(matches!(plain.route, Cow::Borrowed("chat/dialog/5d75")));
        assert_eq!(plain.route_segment(2), Some("5d75"));
        assert_eq!(plain.route_segment(3), None);
        let json = n("/chat/dialog.json").unwrap();
        assert!(matches!(json.route, Cow::Borrowed("chat/dialog")));
        let upper = n("/chat/Dialog.json").unwrap();
        assert!(matches!(upper.decoded, Cow::Borrowed("chat/Dialog.json")));
        assert_eq!(upper.route_key(), "chat/dialog");
        // A decoded segment in the middle: the plain ones around it are copied in order.
        let mixed = n("/a/b%43/d/%65").unwrap();
        assert_eq!(segments(&mixed), ["a", "bC", "d", "e"]);
        assert_eq!(mixed.route_key(), "a/bc/d/e");
    }

    /// The segments as the path splits them, each decoded on its own: what [`Normalized`] must
    /// give back, joined or not.
    fn reference(path: &str) -> Option<Vec<String>> {
        let rest = path.strip_prefix('/')?;
        if rest.is_empty() {
            return Some(Vec::new());
        }
        rest.split('/')
            .map(|raw| decode_segment(raw).ok().map(Cow::into_owned))
            .collect()
    }

    proptest! {
        #[test]
        fn never_panics_and_accepted_routes_are_clean(path in "/[ -~]{0,40}") {
            if let Ok(norm) = n(&path) {
                for s in norm.segments() {
                    prop_assert!(!s.is_empty() && s != "." && s != "..");
                    prop_assert!(!s.contains('/') && !s.contains('\\'));
                }
            }
        }

        #[test]
        fn segments_and_route_are_the_segments_decoded_one_by_one(
            path in "(/([a-zA-Z.]|%[0-9a-fA-F]{2}){1,6}){0,5}(\\.json|\\.JSON)?",
        ) {
            let expected = reference(&path);
            match n(&path) {
                Ok(norm) => {
                    let expected = expected.expect("accepted, so every segment decodes");
                    prop_assert_eq!(norm.len(), expected.len());
                    prop_assert_eq!(segments(&norm), expected.iter().map(String::as_str).collect::<Vec<_>>());
                    let mut lower: Vec<String> = expected.iter().map(|s| s.to_ascii_lowercase()).collect();
                    if let Some(last) = lower.last_mut() {
                        let kept = strip_json(last).len();
                        last.truncate(kept);
                    }
                    prop_assert_eq!(route(&norm), lower.iter().map(String::as_str).collect::<Vec<_>>());
                }
                Err(_) => prop_assert!(expected.is_none() || path.is_empty()),
            }
        }
    }
}
