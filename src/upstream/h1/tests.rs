//! The HTTP/1.1 client: answers decoded, requests encoded.

use super::*;

fn decode(wire: &[u8]) -> Result<Vec<u8>, BoxError> {
    let mut read = BytesMut::from(wire);
    let mut state = Chunk::Size;
    let mut body = Vec::new();
    loop {
        match chunk_step(&mut read, state)? {
            Step::Data(bytes, next) => {
                body.extend_from_slice(&bytes);
                state = next;
            }
            Step::Next(next) => state = next,
            Step::End => return Ok(body),
            Step::More => return Err(protocol("incomplete")),
        }
    }
}

#[test]
fn chunked_bodies_decode_with_extensions_and_trailers() {
    let body = decode(
        b"4\r\nWiki\r\n6;name=x\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nx-t: 1\r\n\r\n",
    )
    .unwrap();
    assert_eq!(body, b"Wikipedia in \r\n\r\nchunks.");
    assert_eq!(decode(b"0\r\n\r\n").unwrap(), b"");
}

#[test]
fn malformed_chunked_bodies_are_refused() {
    for wire in [
        &b"x\r\nabc\r\n0\r\n\r\n"[..],
        b"3\r\nabcX\r\n0\r\n\r\n",
        b"3\nabc\r\n0\r\n\r\n",
        b"ffffffffffffffff1\r\n",
        b"\r\n",
    ] {
        assert!(decode(wire).is_err(), "{:?}", String::from_utf8_lossy(wire));
    }
}

#[test]
fn hex_sizes() {
    let mut buf = [0u8; 16];
    assert_eq!(hex(0, &mut buf), b"0");
    assert_eq!(hex(255, &mut buf), b"ff");
    assert_eq!(hex(u64::MAX, &mut buf), b"ffffffffffffffff");
}

fn framing(head: &str, head_only: bool) -> Result<(Framing, bool), ()> {
    let mut read = BytesMut::from(head.as_bytes());
    let head = parse_head(&mut read, head_only, &mut Names::default())
        .map_err(|_| ())?
        .ok_or(())?;
    Ok((head.framing, head.reusable))
}

#[test]
fn response_framing_follows_rfc_9112() {
    let cases = [
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
            false,
            Ok((Framing::Length(12), true)),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n",
            true,
            Ok((Framing::Length(0), true)),
        ),
        (
            "HTTP/1.1 204 No Content\r\n\r\n",
            false,
            Ok((Framing::Length(0), true)),
        ),
        (
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
            false,
            Ok((Framing::Length(0), true)),
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
            Ok((Framing::Chunked(Chunk::Size), true)),
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
            false,
            Ok((Framing::Chunked(Chunk::Size), false)),
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
            false,
            Ok((Framing::Close, false)),
        ),
        (
            "HTTP/1.1 200 OK\r\n\r\n",
            false,
            Ok((Framing::Close, false)),
        ),
        (
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 1\r\n\r\n",
            false,
            Ok((Framing::Length(1), false)),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\ncontent-length: 5\r\n\r\n",
            false,
            Ok((Framing::Length(5), true)),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            false,
            Err(()),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            false,
            Err(()),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            false,
            Err(()),
        ),
        ("HTTP/1.1 101 Switching Protocols\r\n\r\n", false, Err(())),
        (
            "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
            false,
            Ok((Framing::Length(1), false)),
        ),
        ("HTTP/1.1 2000 OK\r\n\r\n", false, Err(())),
        ("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false, Err(())),
    ];
    for (head, head_only, expected) in cases {
        assert_eq!(
            framing(head, head_only),
            expected,
            "{head:?} head_only={head_only}"
        );
    }
}

#[test]
fn interim_answers_are_skipped_and_a_partial_head_waits() {
    let mut read = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n{}"[..],
    );
    let parts = parse_head(&mut read, false, &mut Names::default())
        .unwrap()
        .unwrap()
        .parts;
    assert_eq!(parts.status, 201);
    assert_eq!(parts.headers["x-a"], "1");
    assert_eq!(&read[..], b"{}");

    let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-le"[..]);
    assert!(parse_head(&mut partial, false, &mut Names::default())
        .unwrap()
        .is_none());
    assert_eq!(partial.len(), 27);
}

#[test]
fn a_request_head_carries_the_host_and_its_own_framing() {
    let host = HeaderValue::from_static("api.example");
    let cases = [
        (
            "GET",
            ProxyBody::empty(),
            "GET /a?b=1 HTTP/1.1\r\nhost: api.example\r\nx-k: v\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "PUT",
            ProxyBody::empty(),
            "PUT /a?b=1 HTTP/1.1\r\nhost: api.example\r\nx-k: v\r\ncontent-length: 0\r\n\r\n",
        ),
        (
            "PUT",
            ProxyBody::full(Bytes::from_static(b"{}")),
            "PUT /a?b=1 HTTP/1.1\r\nhost: api.example\r\nx-k: v\r\ncontent-length: 2\r\n\r\n{}",
        ),
    ];
    for (method, body, wire) in cases {
        let mut request = Request::new(body);
        *request.method_mut() = method.parse().unwrap();
        *request.uri_mut() = "/a?b=1".parse().unwrap();
        let headers = request.headers_mut();
        headers.insert("x-k", HeaderValue::from_static("v"));
        headers.insert(header::HOST, HeaderValue::from_static("client"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        let mut buf = Vec::new();
        let out = Outgoing::new(&mut buf, &request, &host);
        assert_eq!(String::from_utf8(buf).unwrap(), wire);
        assert_eq!(out.body_in_head, method == "PUT" && wire.ends_with("{}"));
    }
}

/// The fields of `parts` in order, as (name, value).
fn fields(parts: &http::response::Parts) -> Vec<(String, Vec<u8>)> {
    parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

proptest::proptest! {
    /// Names remembered from a connection's earlier answers never change what a head reads as:
    /// runs of heads (names from a small pool, in any case and order, so that positions repeat,
    /// shift and differ, one name past the remembered length) read exactly as each head read
    /// afresh.
    #[test]
    fn remembered_names_read_as_fresh(
        heads in proptest::collection::vec(
            proptest::collection::vec((0..8usize, proptest::bool::ANY, "[ -~\té]{0,12}"), 0..20),
            1..6,
        )
    ) {
        const POOL: [&str; 8] = [
            "X-Token",
            "X-Tokez",
            "x-token",
            "Content-Type",
            "server",
            "QB-Token-ExpirationDate",
            "X-A-Field-Name-Longer-Than-Thirty-Two-Bytes",
            "Date",
        ];
        let mut names = Names::default();
        for head in heads {
            let mut wire = String::from("HTTP/1.1 200 OK\r\n");
            for (which, upper, value) in &head {
                let name = POOL[*which];
                let name = if *upper { name.to_ascii_uppercase() } else { name.to_string() };
                wire.push_str(&format!("{name}: {value}\r\n"));
            }
            wire.push_str("content-length: 0\r\n\r\n");
            let kept = parse_head(&mut BytesMut::from(wire.as_bytes()), false, &mut names)
                .expect("a good head")
                .expect("whole");
            let fresh = parse_head(&mut BytesMut::from(wire.as_bytes()), false, &mut Names::default())
                .expect("a good head")
                .expect("whole");
            proptest::prop_assert_eq!(fields(&kept.parts), fields(&fresh.parts));
            proptest::prop_assert_eq!(kept.parts.headers.len(), head.len() + 1);
        }
    }
}

#[test]
fn a_remembered_name_is_not_taken_for_another() {
    let mut names = Names::default();
    for (wire, expect) in [
        (
            &b"HTTP/1.1 200 OK\r\nX-A: 1\r\nServer: a\r\n\r\n"[..],
            ["x-a", "server"],
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-B: 2\r\nserver: b\r\n\r\n",
            ["x-b", "server"],
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-BB: 3\r\nx-b: c\r\n\r\n",
            ["x-bb", "x-b"],
        ),
    ] {
        let parts = parse_head(&mut BytesMut::from(wire), true, &mut names)
            .unwrap()
            .unwrap()
            .parts;
        let got: Vec<&str> = parts.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(got, expect);
    }
}
