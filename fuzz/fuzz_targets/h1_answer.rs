//! An upstream's answer, raw bytes (the first byte picks GET or HEAD) ->
//! `qbgate::upstream::decode_h1_answer`, the head parser and body decoder of the gateway's own
//! HTTP/1.1 client. Checks that no hop-by-hop field survives into the head, that no 1xx head is
//! taken as the answer, that a HEAD, 204 or 304 answer has no body, and that a decoded body
//! re-sent chunked decodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "transfer-encoding",
];

fuzz_target!(|data: &[u8]| {
    let Some((&first, wire)) = data.split_first() else {
        return;
    };
    let head_only = first & 1 == 1;
    let Ok((parts, body, _reusable)) = qbgate::upstream::decode_h1_answer(wire, head_only) else {
        return;
    };
    for name in HOP_BY_HOP {
        assert!(!parts.headers.contains_key(name), "{name} kept");
    }
    assert!(!parts.status.is_informational(), "{} taken as the answer", parts.status);
    if head_only || parts.status == 204 || parts.status == 304 {
        assert!(body.is_empty());
    }
    // The same body, chunked in pieces of the first byte's size, decodes to itself.
    let piece = usize::from(first).max(1);
    let mut again = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(piece) {
        again.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        again.extend_from_slice(chunk);
        again.extend_from_slice(b"\r\n");
    }
    again.extend_from_slice(b"0\r\n\r\n");
    let (_, decoded, reusable) =
        qbgate::upstream::decode_h1_answer(&again, false).expect("a chunked re-encoding decodes");
    assert_eq!(decoded, body);
    assert!(reusable);
});
