//! Rack 2.2's multipart parser (`Rack::Multipart::Parser`), run over a body already in memory:
//! its states (fast-forward to the first boundary, part head, part body, boundary token) and its
//! `Content-Disposition` reading, so that a part means here what it means to Rack.

use serde_json::{Map, Value};

use super::{normalize_params, FormError, Hash, DEPTH_LIMIT, DISPOSITION_MAX_BYTES};
use super::{DISPOSITION_MAX_PARAMS, P};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Boundary,
    End,
}

/// The parameters of a multipart body whose boundary is `boundary`.
pub(super) fn parse(body: &[u8], boundary: &[u8]) -> Result<Hash, FormError> {
    let dash = [b"--", boundary].concat();
    let end = [&dash[..], b"--"].concat();
    let mut pos = 0;
    if consume_boundary(body, &mut pos, &dash, &end).is_none() {
        return Err(FormError::Eof);
    }
    let mut params = Hash::new();
    loop {
        let rest = &body[pos..];
        let at = find(rest, b"\r\n\r\n").ok_or(FormError::Eof)?;
        let head = &rest[..at + 2];
        pos += at + 4;
        let rest = &body[pos..];
        let len = body_end(rest, &dash).ok_or(FormError::Eof)?;
        if let Some((name, data)) = part(head, &rest[..len]) {
            normalize_params(&mut params, &name, data, DEPTH_LIMIT).map_err(FormError::Invalid)?;
        }
        // Rack skips the body and two bytes, assuming the CRLF before the boundary.
        pos += len + 2;
        let token = consume_boundary(body, &mut pos, &dash, &end);
        if token == Some(Token::End) || (pos >= body.len() && token != Some(Token::Boundary)) {
            return Ok(params);
        }
    }
}

/// Reads whole lines until one, stripped, is the boundary or the closing boundary.
fn consume_boundary(body: &[u8], pos: &mut usize, dash: &[u8], end: &[u8]) -> Option<Token> {
    while *pos < body.len() {
        let rest = &body[*pos..];
        let len = rest
            .iter()
            .position(|b| *b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = strip(&rest[..len]);
        *pos += len;
        if line == dash {
            return Some(Token::Boundary);
        }
        if line == end {
            return Some(Token::End);
        }
    }
    None
}

/// Ruby's `strip`.
fn strip(line: &[u8]) -> &[u8] {
    let space = |b: &u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    let start = line.iter().take_while(|b| space(b)).count();
    let line = &line[start..];
    let kept = line.len()
        - line
            .iter()
            .rev()
            .take_while(|b| space(b) || **b == 0)
            .count();
    &line[..kept]
}

/// Where `/(.*?)(\r\n)?--boundary(\r\n|--)/m` ends the part's body.
fn body_end(rest: &[u8], dash: &[u8]) -> Option<usize> {
    let closes = |at: &[u8]| {
        at.strip_prefix(dash)
            .is_some_and(|after| after.starts_with(b"\r\n") || after.starts_with(b"--"))
    };
    (0..rest.len()).find(|&j| {
        let at = &rest[j..];
        at.strip_prefix(b"\r\n").is_some_and(closes) || closes(at)
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The part's name and value, or `None` when Rack drops it (an empty filename).
fn part(head: &[u8], body: &[u8]) -> Option<(String, P)> {
    let content_type = header_line(head, b"content-type: ", true);
    let mut name = None;
    let mut filename = None;
    let mut filename_star = None;
    match header_line(head, b"content-disposition:", false) {
        Some(disposition) if disposition.len() <= DISPOSITION_MAX_BYTES => {
            for (param, value) in disposition_params(&disposition) {
                match param.as_slice() {
                    b"name" => name = Some(value),
                    b"filename" => filename = Some(value),
                    b"filename*" => filename_star = Some(value),
                    _ => {}
                }
            }
        }
        _ => {
            name = content_id(head);
        }
    }
    let filename = match (filename_star, filename) {
        (Some(star), _) => {
            let value = star.splitn(3, |b| *b == b'\'').nth(2).unwrap_or_default();
            Some(normalize_filename(value))
        }
        (None, Some(plain)) => Some(normalize_filename(&plain)),
        (None, None) => None,
    };
    let content_type = content_type.map(|t| String::from_utf8_lossy(&t).into_owned());
    let name = match name.filter(|n| !n.is_empty()) {
        Some(name) => String::from_utf8_lossy(&name).into_owned(),
        None => match &filename {
            Some(f) => f.clone(),
            None => format!("{}[]", content_type.as_deref().unwrap_or("text/plain")),
        },
    };
    let data = match filename {
        Some(f) if f.is_empty() => return None,
        Some(f) => {
            let base = f
                .rsplit(['/', '\\'])
                .find(|s| !s.is_empty())
                .unwrap_or_default();
            let mut file = Map::new();
            file.insert("filename".to_owned(), Value::String(base.to_owned()));
            file.insert(
                "type".to_owned(),
                content_type.map_or(Value::Null, Value::String),
            );
            file.insert("name".to_owned(), Value::String(name.clone()));
            file.insert(
                "head".to_owned(),
                Value::String(String::from_utf8_lossy(head).into_owned()),
            );
            P::File(file)
        }
        None => P::Str(body.to_vec()),
    };
    Some((name, data))
}

/// The rest of the head's line after the first (case-insensitive) `label`; with `needs_cr`, as
/// `/label(.*)\r\n/` (the line must end in CRLF), else as `/label([^\r\n]*)/`.
fn header_line(head: &[u8], label: &[u8], needs_cr: bool) -> Option<Vec<u8>> {
    let lower = head.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = find(&lower[from..], label) {
        let start = from + at + label.len();
        let rest = &head[start..];
        if needs_cr {
            if let Some(nl) = rest.iter().position(|b| *b == b'\n') {
                if nl > 0 && rest[nl - 1] == b'\r' {
                    return Some(rest[..nl - 1].to_vec());
                }
            }
            from = from + at + 1;
            continue;
        }
        let len = rest
            .iter()
            .position(|b| matches!(b, b'\r' | b'\n'))
            .unwrap_or(rest.len());
        return Some(rest[..len].to_vec());
    }
    None
}

/// `/Content-ID:\s*([^\r\n]*)/i`.
fn content_id(head: &[u8]) -> Option<Vec<u8>> {
    let lower = head.to_ascii_lowercase();
    let at = find(&lower, b"content-id:")? + b"content-id:".len();
    let rest = &head[at..];
    let rest = &rest[rest.iter().take_while(|b| b.is_ascii_whitespace()).count()..];
    let len = rest
        .iter()
        .position(|b| matches!(b, b'\r' | b'\n'))
        .unwrap_or(rest.len());
    Some(rest[..len].to_vec())
}

/// The `param=value` pairs after the disposition type, as Rack 2.2 scans them: a quoted value
/// ends at its closing quote (`\` escapes the next character, but in `filename` only a quote),
/// an unquoted one at `;` (or the end of the line, trimmed).
fn disposition_params(disposition: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    // Without a `;` Rack fails (`nil + 1`, a 500); here the part simply has no parameters.
    let Some(semi) = disposition.iter().position(|b| *b == b';') else {
        return out;
    };
    let mut d = &disposition[semi + 1..];
    while let Some(eq) = d.iter().position(|b| *b == b'=') {
        if out.len() == DISPOSITION_MAX_PARAMS {
            break;
        }
        let param = d[..eq].trim_ascii_start().to_vec();
        d = &d[eq + 1..];
        let mut value = Vec::new();
        if let Some(quoted) = d.strip_prefix(b"\"") {
            d = quoted;
            while let Some(j) = d.iter().position(|b| matches!(b, b'"' | b'\\')) {
                let c = d[j];
                value.extend_from_slice(&d[..j]);
                d = &d[j + 1..];
                if c == b'"' {
                    break;
                }
                let Some((&escaped, rest)) = d.split_first() else {
                    break;
                };
                d = rest;
                if param == b"filename" && escaped != b'"' {
                    value.push(b'\\');
                }
                value.push(escaped);
            }
        } else if let Some(semi) = d.iter().position(|b| *b == b';') {
            value.extend_from_slice(&d[..semi]);
            d = &d[semi..];
        } else {
            value.extend_from_slice(d.trim_ascii());
            d = &[];
        }
        out.push((param, value));
        if let Some(semi) = d.iter().position(|b| *b == b';') {
            d = &d[semi + 1..];
        }
    }
    out
}

/// Rack's `normalize_filename`: unescaped when every `%` starts an escape, then its last path
/// component.
fn normalize_filename(raw: &[u8]) -> String {
    let all_escapes = raw
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(i, _)| super::routing::escaped(raw, i).is_some());
    let bytes = if all_escapes {
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            match super::routing::escaped(raw, i) {
                Some(b) => {
                    out.push(b);
                    i += 3;
                }
                None => {
                    out.push(raw[i]);
                    i += 1;
                }
            }
        }
        out
    } else {
        raw.to_vec()
    };
    let name = String::from_utf8_lossy(&bytes);
    name.rsplit(['/', '\\'])
        .find(|s| !s.is_empty())
        .unwrap_or_default()
        .to_owned()
}
