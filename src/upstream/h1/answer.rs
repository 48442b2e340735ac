//! Reading an HTTP/1.1 answer off the bytes of a connection: the head (status, fields, how the
//! body is framed, whether the connection may be reused) and the chunked decoder. Everything here
//! reads bytes the upstream chose, so it is fuzzed (`fuzz/fuzz_targets/h1_answer.rs`, through
//! [`decode`]).

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::super::BoxError;

/// A response head larger than this is refused.
pub(super) const MAX_HEAD: usize = 64 * 1024;

/// Response headers accepted at most (hyper's default too).
pub(super) const MAX_HEADERS: usize = 100;

/// A chunk-size line or trailer section longer than this is refused.
pub(super) const MAX_LINE: usize = 4 * 1024;

/// Fields the gateway adds to an answer at most (`X-Request-Id`, `RateLimit`, `RateLimit-Policy`,
/// `X-QBGate-Would-Reject`).
pub(super) const ADDED_FIELDS: usize = 4;

/// An upstream answer this client cannot accept.
#[derive(Debug)]
pub struct ProtocolError(&'static str);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream HTTP/1.1: {}", self.0)
    }
}

impl StdError for ProtocolError {}

pub(super) fn protocol(what: &'static str) -> BoxError {
    Box::new(ProtocolError(what))
}

pub(super) fn closed() -> BoxError {
    Box::new(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "upstream closed the connection",
    ))
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the upstream closes.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data remain.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Expecting trailer lines, or the empty line that ends the message.
    Trailers,
}

/// What a head's framing fields said.
#[derive(Debug)]
struct Fields {
    /// `Connection: close`.
    close: bool,
    /// `Transfer-Encoding` was present, and whether its last coding is chunked.
    chunked_last: Option<bool>,
    /// `Content-Length` was present.
    has_length: bool,
    /// Its value, when all its values agree and parse.
    length: Result<Option<u64>, &'static str>,
}

/// The field names of a connection's last answer, by position, with the bytes each was read
/// from. An upstream sends the same fields in the same order answer after answer, so a name is
/// usually taken from here (a compare of a few bytes and a reference count) rather than parsed
/// and, for a name outside the standard table, allocated again.
#[derive(Default)]
pub(super) struct Names(Vec<(Raw, HeaderName)>);

/// Positions remembered; fields past them are parsed every time.
const NAMES_KEPT: usize = 16;

/// Names longer than this are not remembered.
const NAME_KEPT_LEN: usize = 32;

/// A name's bytes exactly as they came (the case included).
struct Raw {
    len: u8,
    bytes: [u8; NAME_KEPT_LEN],
}

impl Names {
    /// The name of the `i`th kept field, whose bytes are `raw`.
    fn name(&mut self, i: usize, raw: &[u8]) -> Result<HeaderName, BoxError> {
        if let Some((kept, name)) = self.0.get(i) {
            if &kept.bytes[..usize::from(kept.len)] == raw {
                return Ok(name.clone());
            }
        }
        let name = HeaderName::from_bytes(raw).map_err(|_| protocol("bad header name"))?;
        if i <= self.0.len() && i < NAMES_KEPT && raw.len() <= NAME_KEPT_LEN {
            let mut bytes = [0; NAME_KEPT_LEN];
            bytes[..raw.len()].copy_from_slice(raw);
            let entry = (
                Raw {
                    len: raw.len() as u8,
                    bytes,
                },
                name.clone(),
            );
            match self.0.get_mut(i) {
                Some(slot) => *slot = entry,
                None => self.0.push(entry),
            }
        }
        Ok(name)
    }
}

/// How [`parse_head`] treats a field, by its name (any case).
enum Field {
    Connection,
    TransferEncoding,
    ContentLength,
    /// Describes this hop only (RFC 9110 section 7.6.1): not forwarded.
    HopByHop,
    Other,
}

fn field(name: &[u8]) -> Field {
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    match name.len() {
        10 if is("connection") => Field::Connection,
        17 if is("transfer-encoding") => Field::TransferEncoding,
        14 if is("content-length") => Field::ContentLength,
        2 if is("te") => Field::HopByHop,
        7 if is("trailer") || is("upgrade") => Field::HopByHop,
        10 if is("keep-alive") => Field::HopByHop,
        16 if is("proxy-connection") => Field::HopByHop,
        18 if is("proxy-authenticate") => Field::HopByHop,
        19 if is("proxy-authorization") => Field::HopByHop,
        _ => Field::Other,
    }
}

/// A final response head, parsed: its parts without hop-by-hop fields, how its body is framed,
/// and whether the connection may carry another request after it.
pub(super) struct Head {
    pub(super) parts: http::response::Parts,
    pub(super) framing: Framing,
    pub(super) reusable: bool,
}

/// Parse a complete head at the front of `read` and take it off; skip 1xx heads. `None` when the
/// head is not complete yet. Header values share the head's bytes; the framing fields are read
/// from the raw bytes and not kept, nor is any other hop-by-hop field. `names`: the
/// connection's names of its last answer.
pub(super) fn parse_head(
    read: &mut BytesMut,
    head_only: bool,
    names: &mut Names,
) -> Result<Option<Head>, BoxError> {
    loop {
        let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            read,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Complete(_)) => return Err(protocol("response head too large")),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(protocol("too many headers")),
            Err(_) => return Err(protocol("malformed response head")),
        };
        let code = response.code.unwrap_or(0);
        if (100..200).contains(&code) && code != 101 {
            read.advance(len);
            continue;
        }
        let status = StatusCode::from_u16(code).map_err(|_| protocol("bad status code"))?;
        let mut fields = Fields {
            // An HTTP/1.0 answer (an old proxy's error page, say) is taken, but its connection
            // is not trusted with another request.
            close: response.version != Some(1),
            chunked_last: None,
            has_length: false,
            length: Ok(None),
        };
        // Names listed in `Connection` besides close and keep-alive: hop-by-hop too (rare).
        let mut listed: Vec<HeaderName> = Vec::new();
        // Where each kept name and value sits in the head (under MAX_HEAD, so u32 holds it).
        let base = read.as_ptr() as usize;
        let at = |bytes: &[u8]| (bytes.as_ptr() as usize - base) as u32;
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let mut count = 0;
        for h in response.headers.iter() {
            match field(h.name.as_bytes()) {
                Field::Connection => {
                    for token in h.value.split(|&b| b == b',').map(trim) {
                        if token.eq_ignore_ascii_case(b"close") {
                            fields.close = true;
                        } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                            if let Ok(name) = HeaderName::from_bytes(token) {
                                listed.push(name);
                            }
                        }
                    }
                    continue;
                }
                Field::TransferEncoding => {
                    fields.chunked_last = Some(last_token_is_chunked(h.value));
                    continue;
                }
                Field::HopByHop => continue,
                Field::ContentLength => {
                    fields.has_length = true;
                    fields.length = content_length(h.value, fields.length);
                }
                Field::Other => {}
            }
            spans[count] = (
                at(h.name.as_bytes()),
                h.name.len() as u32,
                at(h.value),
                h.value.len() as u32,
            );
            count += 1;
        }
        let head = read.split_to(len).freeze();
        // Room for what the gateway adds to every answer (request id, rate-limit fields), so
        // those inserts do not grow the map.
        let mut map = HeaderMap::with_capacity(count + ADDED_FIELDS);
        for (i, &(name_at, name_len, value_at, value_len)) in spans[..count].iter().enumerate() {
            let (name_at, value_at) = (name_at as usize, value_at as usize);
            let name = names.name(i, &head[name_at..name_at + name_len as usize])?;
            let value = head.slice(value_at..value_at + value_len as usize);
            // SAFETY: httparse (strict, `ParserConfig::default()`) accepts in a value only HTAB
            // and the bytes from SP up except DEL, exactly what `HeaderValue` allows; debug
            // builds check it again.
            let value = unsafe { HeaderValue::from_maybe_shared_unchecked(value) };
            map.append(name, value);
        }
        for name in listed {
            map.remove(name);
        }
        let (framing, reusable) = framing(status, &fields, head_only)?;
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.headers = map;
        return Ok(Some(Head {
            parts,
            framing,
            reusable,
        }));
    }
}

/// Fold one `Content-Length` value (a list is allowed if its items agree) into what came before.
fn content_length(
    value: &[u8],
    before: Result<Option<u64>, &'static str>,
) -> Result<Option<u64>, &'static str> {
    let mut length = before?;
    for item in value.split(|&b| b == b',') {
        let n = parse_decimal(trim(item)).ok_or("bad content-length")?;
        if length.is_some_and(|l| l != n) {
            return Err("conflicting content-length");
        }
        length = Some(n);
    }
    Ok(length)
}

/// How the body after a head is framed (RFC 9112 section 6.3), and whether the connection may
/// be reused after it.
fn framing(
    status: StatusCode,
    fields: &Fields,
    head_only: bool,
) -> Result<(Framing, bool), BoxError> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(protocol("unexpected protocol switch"));
    }
    let reusable = !fields.close;
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), reusable));
    }
    match (fields.chunked_last, fields.length) {
        // Chunked only as the last coding; anything else runs to the close. A Content-Length
        // beside it is ignored, and the connection not trusted after.
        (Some(true), _) => Ok((
            Framing::Chunked(Chunk::Size),
            reusable && !fields.has_length,
        )),
        (Some(false), _) => Ok((Framing::Close, false)),
        (None, Ok(Some(n))) => Ok((Framing::Length(n), reusable)),
        (None, Ok(None)) => Ok((Framing::Close, false)),
        (None, Err(what)) => Err(protocol(what)),
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = bytes.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &bytes[s..=e],
        _ => &[],
    }
}

fn last_token_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|t| trim(t).eq_ignore_ascii_case(b"chunked"))
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

pub(super) enum Step {
    /// Body bytes, and the state after them.
    Data(Bytes, Chunk),
    /// Framing consumed; go on in this state.
    Next(Chunk),
    /// The message ended.
    End,
    /// More bytes are needed.
    More,
}

/// One step of the chunked decoder over what has been read.
pub(super) fn chunk_step(read: &mut BytesMut, state: Chunk) -> Result<Step, BoxError> {
    match state {
        Chunk::Size => {
            let Some(line) = take_line(read)? else {
                return Ok(Step::More);
            };
            // chunk-size [ BWS ";" extensions ]: the extensions are ignored.
            let size = line[..]
                .split(|&b| b == b';')
                .next()
                .map(trim)
                .unwrap_or_default();
            if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
                return Err(protocol("bad chunk size"));
            }
            let n = size.iter().fold(0u64, |n, &d| {
                n * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
            });
            Ok(Step::Next(if n == 0 {
                Chunk::Trailers
            } else {
                Chunk::Data(n)
            }))
        }
        Chunk::Data(n) => {
            if read.is_empty() {
                return Ok(Step::More);
            }
            let take = read.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let rest = n - take as u64;
            let next = if rest == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(rest)
            };
            Ok(Step::Data(read.split_to(take).freeze(), next))
        }
        Chunk::DataEnd => {
            if read.len() < 2 {
                return Ok(Step::More);
            }
            if &read[..2] != b"\r\n" {
                return Err(protocol("chunk data not followed by CRLF"));
            }
            read.advance(2);
            Ok(Step::Next(Chunk::Size))
        }
        Chunk::Trailers => match take_line(read)? {
            None => Ok(Step::More),
            Some(line) if line.is_empty() => Ok(Step::End),
            // A trailer field: not forwarded.
            Some(_) => Ok(Step::Next(Chunk::Trailers)),
        },
    }
}

/// Take one CRLF-terminated line off the front of `read`, without its CRLF.
fn take_line(read: &mut BytesMut) -> Result<Option<BytesMut>, BoxError> {
    match read.iter().position(|&b| b == b'\n') {
        Some(at) => {
            if at == 0 || read[at - 1] != b'\r' {
                return Err(protocol("line not ended by CRLF"));
            }
            let mut line = read.split_to(at + 1);
            line.truncate(at - 1);
            Ok(Some(line))
        }
        None if read.len() > MAX_LINE => Err(protocol("chunk line too long")),
        None => Ok(None),
    }
}

/// Decode one answer held whole in memory, as the client reads it off a connection: its head
/// (hop-by-hop fields left out), its body, and whether the connection could be reused. For the
/// fuzzer (`fuzz/fuzz_targets/h1_answer.rs`); the client itself reads through [`Reader`].
#[doc(hidden)]
pub fn decode(
    wire: &[u8],
    head_only: bool,
) -> Result<(http::response::Parts, Vec<u8>, bool), BoxError> {
    let mut read = BytesMut::from(wire);
    let Some(head) = parse_head(&mut read, head_only, &mut Names::default())? else {
        return Err(closed());
    };
    let mut body = Vec::new();
    match head.framing {
        Framing::Length(n) => {
            let n = usize::try_from(n).map_err(|_| closed())?;
            body.extend_from_slice(read.get(..n).ok_or_else(closed)?);
        }
        Framing::Close => body.extend_from_slice(&read),
        Framing::Chunked(mut state) => loop {
            match chunk_step(&mut read, state)? {
                Step::Data(bytes, next) => {
                    body.extend_from_slice(&bytes);
                    state = next;
                }
                Step::Next(next) => state = next,
                Step::End => break,
                Step::More => return Err(closed()),
            }
        },
    }
    Ok((head.parts, body, head.reusable))
}
