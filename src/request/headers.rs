//! The header set a request is judged and forwarded with, made before any decision.
//!
//! Hop-by-hop headers, and those `Connection` names, describe one hop: they are removed here,
//! before authentication reads a credential, never after (a proxy that judges `On-Behalf-Of` and
//! then drops it because `Connection` named it sends the upstream a request with no user).
//! Refused instead of repaired, each a 400:
//! - a `Connection` token other than `close`, `keep-alive`, `upgrade`, `te`, `http2-settings`:
//!   naming an end-to-end header there asks the gateway to drop something it may have judged;
//! - a header name with anything but letters, digits and `-`: the upstream's CGI-style
//!   environment folds `_` and `-` into one name (`On_Behalf_Of` and `On-Behalf-Of` are both
//!   `HTTP_ON_BEHALF_OF`), so which copy the application reads is the server's choice, not ours;
//!   other punctuation (`On.Behalf.Of`) makes variables no check of ours knows;
//! - a second copy of a header a decision reads (credentials, the user, the body's type and
//!   coding): the upstream joins copies with `, ` or picks one;
//! - a method-override header, in any spelling a framework honours (and the path-override
//!   headers `X-Original-URL`, `X-Rewrite-URL`): it would run another method, or route another
//!   path, than the one judged;
//! - a `Transfer-Encoding` other than `chunked`: a coding the gateway does not undo would reach
//!   the upstream as body bytes the gateway never read as such.

use http::header::{self, HeaderMap, HeaderName};
use smallvec::SmallVec;

use crate::error::GateError;

/// What a header name means to this phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Forwarded as it came.
    Plain,
    /// Ends at this hop: hop-by-hop (RFC 9110 section 7.6.1, plus `proxy-connection` and
    /// HTTP/2's `http2-settings`, and `transfer-encoding`, whose chunks were undone here).
    /// `Host` and `Content-Length` are left in the map for no decision to read: the upstream
    /// client writes its own (the upstream's host, the length of the body it sends), and
    /// removing them from every request would cost more than skipping them once.
    Dropped,
    /// Read by a decision: at most one copy. The bit marks it seen.
    Deciding(u8),
    /// Asks a framework to run another method, or to route another path, than the request's.
    Override,
}

/// Names arrive lower-case; the length rules out nearly every other name before a byte is
/// compared.
fn kind(name: &str) -> Kind {
    use Kind::*;
    let is = |s: &str| name == s;
    match name.len() {
        2 if is("te") => Dropped,
        7 if is("trailer") || is("upgrade") => Dropped,
        8 if is("qb-token") => Deciding(1),
        10 if is("connection") || is("keep-alive") => Dropped,
        12 if is("on-behalf-of") => Deciding(2),
        12 if is("content-type") => Deciding(4),
        13 if is("authorization") => Deciding(8),
        13 if is("x-http-method") || is("x-rewrite-url") => Override,
        14 if is("http2-settings") => Dropped,
        14 if is("x-original-url") => Override,
        16 if is("proxy-connection") => Dropped,
        16 if is("content-encoding") => Deciding(16),
        17 if is("transfer-encoding") => Dropped,
        17 if is("x-method-override") => Override,
        18 if is("proxy-authenticate") => Dropped,
        19 if is("proxy-authorization") => Dropped,
        22 if is("x-http-method-override") => Override,
        _ => Plain,
    }
}

/// What the header phase's pass saw, for the phases after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// A `Content-Type` came: without one there is nothing for `Media::read` to look up.
    pub content_type: bool,
}

/// Check the request's headers and remove the ones that end at this hop. One pass over the
/// fields decides everything; a second one runs only when something is to be removed.
pub fn canonical(headers: &mut HeaderMap) -> Result<Seen, GateError> {
    let mut seen = 0u8;
    let mut dropped = false;
    // Every field, repeated names included.
    for (name, _) in headers.iter() {
        // Names arrive lower-case.
        if !name
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(GateError::BadHeaderName);
        }
        match kind(name.as_str()) {
            Kind::Plain => {}
            Kind::Dropped => dropped = true,
            Kind::Deciding(bit) if seen & bit != 0 => {
                return Err(GateError::RepeatedHeader(repeated(bit)));
            }
            Kind::Deciding(bit) => seen |= bit,
            Kind::Override => return Err(GateError::MethodOverride),
        }
    }
    let found = Seen {
        content_type: seen & 4 != 0,
    };
    if !dropped {
        return Ok(found);
    }
    for value in headers.get_all(header::CONNECTION) {
        let value = value.to_str().map_err(|_| GateError::ConnectionHeader)?;
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !["close", "keep-alive", "upgrade", "te", "http2-settings"]
                .iter()
                .any(|allowed| token.eq_ignore_ascii_case(allowed))
            {
                return Err(GateError::ConnectionHeader);
            }
        }
    }
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        if !value.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(GateError::BadHeader(
                "Transfer-Encoding other than chunked is not accepted",
            ));
        }
    }
    // Standard names: cloned without allocating.
    let doomed: SmallVec<[HeaderName; 4]> = headers
        .keys()
        .filter(|name| kind(name.as_str()) == Kind::Dropped)
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
    Ok(found)
}

/// The name behind a [`Kind::Deciding`] bit.
fn repeated(bit: u8) -> &'static str {
    match bit {
        1 => "QB-Token",
        2 => "On-Behalf-Of",
        4 => "Content-Type",
        8 => "Authorization",
        _ => "Content-Encoding",
    }
}

#[cfg(test)]
mod tests;
