//! Shared input splitting: the inputs are plain text so seeds stay readable.
#![allow(dead_code)]

/// Split `data` at the first `\n`: (line, rest). No newline: (all, empty).
pub fn line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// `name: value` lines -> a HeaderMap (lines that are not a valid header are skipped; repeated
/// names are appended, so duplicates reach the code under test).
pub fn headers(mut data: &[u8]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    while !data.is_empty() {
        let (l, rest) = line(data);
        data = rest;
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&l[..colon], &l[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        let value = value.strip_suffix(b"\r").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}
