//! The request path, read once: percent-decoded exactly once, refused when it could be read two
//! ways, and kept in the forms every later phase needs (segments as written, the route key) and
//! the one form that is forwarded.
//!
//! Refused (400 `bad_path`): dot segments, empty segments (`//`, a trailing `/`), an encoded `/`,
//! `\` or NUL, control characters, malformed percent-encodings, any byte outside ASCII (raw or
//! percent-encoded: the upstream matches routes case-insensitively, and a match that folds
//! Unicode reads `ı` as `i`), and `;` (raw or encoded: Rails reads what follows as part of the
//! format or a path parameter).
//!
//! The *route key* is the decoded segments lowercased, with a trailing `.json` removed: what
//! route allowlists and rules match, so `/CHAT/dialog/ID` cannot slip past a rule written for
//! `/chat/Dialog/ID.json`. The *forwarded path* is the decoded segments as written, re-encoded
//! where a byte is not a plain path character: the upstream's router reads the very words qbgate
//! matched (`/chat/%44ialog` goes out as `/chat/Dialog`), never a spelling it decodes otherwise.

use std::borrow::Cow;

use http::uri::PathAndQuery;
use smallvec::SmallVec;

use crate::error::GateError;
use crate::policy::strip_json;

/// A request path that passed every check. A plain path (nothing to decode) costs no allocation:
/// every form borrows the request's own bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    /// The request's path and query as received (shared bytes).
    raw: PathAndQuery,
    /// The decoded segments joined by `/`, case kept, when decoding changed anything; `None`: the
    /// raw path without its leading `/` is the decoded form.
    decoded: Option<Box<str>>,
    /// The route key, when it differs from a prefix of the decoded form (upper case somewhere).
    route: Option<Box<str>>,
    /// Length of the route key (the decoded form less a trailing `.json`).
    route_len: u32,
    /// Where each segment ends in the decoded form; the same in the route key but for the last
    /// segment, which ends where the route key does.
    ends: SmallVec<[u32; 6]>,
}

impl CanonicalPath {
    /// Check `raw`'s path and build its forms.
    pub fn parse(raw: &PathAndQuery) -> Result<CanonicalPath, GateError> {
        let (decoded, ends) = decode_path(raw.path())?;
        let last_start = match ends.len() {
            0 | 1 => 0,
            n => ends[n - 2] as usize + 1,
        };
        let last = decoded.get(last_start..).unwrap_or_default();
        let kept = last_start + strip_json(last).len();
        let route = decoded[..kept]
            .bytes()
            .any(|b| b.is_ascii_uppercase())
            .then(|| decoded[..kept].to_ascii_lowercase().into_boxed_str());
        Ok(CanonicalPath {
            raw: raw.clone(),
            decoded: match decoded {
                Cow::Borrowed(_) => None,
                Cow::Owned(s) => Some(s.into_boxed_str()),
            },
            route,
            route_len: kept as u32,
            ends,
        })
    }

    /// The decoded segments joined by `/` (`""` for `/`), case kept.
    fn decoded(&self) -> &str {
        match &self.decoded {
            Some(decoded) => decoded,
            None => self.raw.path().get(1..).unwrap_or_default(),
        }
    }

    /// Decoded segments, as written (case kept).
    pub fn segments(&self) -> impl Iterator<Item = &str> + Clone {
        let decoded = self.decoded();
        (0..self.len()).filter_map(move |i| decoded.get(self.start(i)..*self.ends.get(i)? as usize))
    }

    /// Decoded segments lowercased, `.json` removed from the last: what routes match.
    pub fn route(&self) -> impl ExactSizeIterator<Item = &str> + Clone {
        // Every index below `len` has a segment.
        (0..self.len()).map(|i| self.route_segment(i).unwrap_or_default())
    }

    /// Segment `i` of the route key; `None` past the last.
    pub fn route_segment(&self, i: usize) -> Option<&str> {
        let end = if i + 1 == self.len() {
            self.route_len as usize
        } else {
            *self.ends.get(i)? as usize
        };
        self.route_key().get(self.start(i)..end)
    }

    /// The route key's segments joined by `/` (`""` for `/`).
    pub fn route_key(&self) -> &str {
        match &self.route {
            Some(route) => route,
            None => self
                .decoded()
                .get(..self.route_len as usize)
                .unwrap_or_default(),
        }
    }

    /// How many segments the path has.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Is the path `/`?
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The query as received (still percent-encoded), if any.
    pub fn query(&self) -> Option<&str> {
        self.raw.query()
    }

    /// The path and query the upstream is sent, under `base_path` (the upstream URL's path,
    /// without a trailing `/`). A plain path goes out as the bytes that came in.
    pub fn forwarded(&self, base_path: &str) -> PathAndQuery {
        if self.decoded.is_none() && base_path.is_empty() {
            return self.raw.clone();
        }
        let mut out = String::with_capacity(base_path.len() + self.raw.as_str().len() + 8);
        out.push_str(base_path);
        match &self.decoded {
            None => out.push_str(self.raw.path()),
            Some(_) if self.is_empty() => out.push('/'),
            Some(_) => {
                for segment in self.segments() {
                    out.push('/');
                    encode_segment(segment, &mut out);
                }
            }
        }
        if let Some(query) = self.raw.query() {
            out.push('?');
            out.push_str(query);
        }
        // Every byte written is a path character, `%XX`, or the query as the URI parser took it.
        PathAndQuery::try_from(out).unwrap_or_else(|_| self.raw.clone())
    }

    /// A bounded route template of the route key, for metrics and the access log: never the
    /// raw path, whose values are unbounded.
    pub fn route_label(&self) -> &'static str {
        let path = self;
        let stem = |i: usize| path.route_segment(i).map(crate::policy::stem);
        match (stem(0), stem(1), path.len()) {
            (None, _, _) => "/",
            (Some("chat"), Some("dialog"), 2) => "/chat/Dialog",
            (Some("chat"), Some("dialog"), 3) => "/chat/Dialog/:id",
            (Some("chat"), Some("message"), 2) => "/chat/Message",
            (Some("chat"), Some("message"), 3) => "/chat/Message/:id",
            (Some("session"), _, 1) => "/session",
            (Some("users"), _, 1) => "/users",
            (Some("users"), _, 2) => "/users/:id",
            (Some("blobs"), _, 1) => "/blobs",
            (Some("blobs"), _, _) => "/blobs/:id",
            _ => "other",
        }
    }

    /// Where segment `i` starts (one past the `/` that ends the one before).
    fn start(&self, i: usize) -> usize {
        i.checked_sub(1)
            .and_then(|before| self.ends.get(before))
            .map_or(0, |&end| end as usize + 1)
    }
}

/// Does `b` go out as itself in a path segment (RFC 3986 `pchar` less `;` and `%`)?
fn is_plain_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
        )
}

fn encode_segment(segment: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in segment.as_bytes() {
        if is_plain_path_byte(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        }
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
    // `rest.split('/')` by byte positions: `str`'s char searcher cost about 100 instructions a
    // segment here, a byte loop a few per byte.
    let bytes = rest.as_bytes();
    while start <= rest.len() {
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(rest.len(), |i| start + i);
        // `/` is ASCII: both ends are char boundaries.
        let raw = &rest[start..end];
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
    // Most segments are plain ASCII words: checked in one pass, nothing to decode.
    if bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() && b != b'%' && b != b'\\' && b != b';')
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
        let decoded = if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(GateError::BadPath(
                    "the path has a malformed percent-encoding",
                ));
            };
            i += 3;
            (hi * 16 + lo) as u8
        } else {
            i += 1;
            b
        };
        match decoded {
            b'/' => return Err(GateError::BadPath("the path has an encoded /")),
            b';' => return Err(GateError::BadPath("the path has a ; parameter")),
            b'\\' => return Err(GateError::BadPath("the path has a backslash")),
            0x80.. => return Err(GateError::BadPath("the path has a byte outside ASCII")),
            b if b.is_ascii_control() => {
                return Err(GateError::BadPath("the path has a control character"))
            }
            b => out.push(b),
        }
    }
    // ASCII only, checked byte by byte above.
    let segment =
        String::from_utf8(out).map_err(|_| GateError::BadPath("the path is not ASCII"))?;
    if segment == "." || segment == ".." {
        return Err(GateError::BadPath("the path has a dot segment"));
    }
    Ok(Cow::Owned(segment))
}

#[cfg(test)]
mod tests;
