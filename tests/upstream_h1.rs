//! The gateway's own HTTP/1.1 client (`src/upstream/h1.rs`) against an upstream written by hand,
//! byte by byte: every way RFC 9112 frames an answer, uploads framed for the upstream's hop, an
//! answer that comes before the upload ends, and answers the client must refuse.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const LIST: &str = "/chat/Dialog.json";

/// A request as the hand-written upstream read it.
#[derive(Debug, Clone)]
struct Seen {
    /// Which accepted connection it came on (0, 1, ...).
    conn: usize,
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the upstream does with a request.
struct Answer {
    wire: Vec<u8>,
    /// Close the connection after the answer.
    close: bool,
    /// Answer as soon as the head is in, leaving the body unread on an open connection (or, with
    /// `close`, closing it unread).
    early: bool,
}

fn answer(wire: impl Into<Vec<u8>>) -> Answer {
    Answer {
        wire: wire.into(),
        close: false,
        early: false,
    }
}

type Script = Arc<dyn Fn(&Seen) -> Answer + Send + Sync>;

struct Upstream {
    gate: Gate,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// A gateway in front of an upstream that answers every request with `script`.
    async fn start(script: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> Upstream {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let conns = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let conn = conns.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, conn, script.clone(), record.clone()));
            }
        });
        let text = policy_text(&format!("http://{addr}"), "", "");
        let gate = Gate::start_policy(qbgate::sandbox::Sandbox::new(None), addr, &text).await;
        Upstream { gate, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The connection each request came on, in order.
    fn conns(&self) -> Vec<usize> {
        self.seen().iter().map(|s| s.conn).collect()
    }

    async fn get(&self, path: &str) -> Reply {
        self.gate.as_user(KEY_ANY, Some(1), "GET", path, None).await
    }
}

async fn serve(socket: TcpStream, conn: usize, script: Script, record: Arc<Mutex<Vec<Seen>>>) {
    let mut socket = BufReader::new(socket);
    loop {
        let mut line = String::new();
        if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            socket.read_line(&mut header).await.unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut seen = Seen {
            conn,
            line: line.trim_end().to_string(),
            headers,
            body: Vec::new(),
        };
        let early = script(&seen);
        if early.early {
            socket.get_mut().write_all(&early.wire).await.unwrap();
            record.lock().unwrap().push(seen);
            if early.close {
                // Closed with the body unread: the kernel answers what follows with a reset.
                return;
            }
            // Hold the connection, the body unread, until the gateway lets it go.
            let mut sink = [0u8; 1024];
            while socket.read(&mut sink).await.unwrap_or(0) > 0 {}
            return;
        }
        if seen.header("transfer-encoding") == Some("chunked") {
            loop {
                let mut size = String::new();
                socket.read_line(&mut size).await.unwrap();
                let n = usize::from_str_radix(size.trim_end(), 16).unwrap();
                let mut data = vec![0u8; n + 2];
                if n == 0 {
                    // No trailers from the gateway: the final CRLF.
                    data.truncate(2);
                }
                socket.read_exact(&mut data).await.unwrap();
                assert_eq!(&data[n..], b"\r\n");
                if n == 0 {
                    break;
                }
                seen.body.extend_from_slice(&data[..n]);
            }
        } else if let Some(length) = seen.header("content-length") {
            let mut body = vec![0u8; length.parse().unwrap()];
            socket.read_exact(&mut body).await.unwrap();
            seen.body = body;
        }
        let answer = script(&seen);
        record.lock().unwrap().push(seen);
        socket.get_mut().write_all(&answer.wire).await.unwrap();
        if answer.close {
            return;
        }
    }
}

fn chunked(pieces: &[&[u8]]) -> Vec<u8> {
    let mut wire =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for piece in pieces {
        wire.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\nx-trailer: t\r\n\r\n");
    wire
}

#[tokio::test]
async fn chunked_answers_arrive_whole_and_keep_their_connection() {
    let big = vec![b'x'; 40_000];
    let pieces: Vec<Vec<u8>> = vec![b"{\"items\":\"".to_vec(), big, b"\"}".to_vec()];
    let wire = chunked(&pieces.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let up = Upstream::start(move |_| answer(wire.clone())).await;
    for _ in 0..3 {
        let reply = up.get(LIST).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, pieces.concat());
        assert!(reply.headers.get("x-trailer").is_none());
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.conn == 0), "{seen:?}");
}

#[tokio::test]
async fn an_answer_framed_by_the_close_arrives_whole_and_its_connection_is_not_reused() {
    let body = vec![b'y'; 100_000];
    let mut wire = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n".to_vec();
    wire.extend_from_slice(&body);
    let up = Upstream::start(move |_| Answer {
        close: true,
        ..answer(wire.clone())
    })
    .await;
    for _ in 0..2 {
        let reply = up.get(LIST).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), body.len());
        assert!(reply.body.iter().all(|&b| b == b'y'));
    }
    assert_eq!(up.conns(), [0, 1]);
}

#[tokio::test]
async fn an_http_1_0_answer_is_forwarded_and_its_connection_not_reused() {
    let up = Upstream::start(|_| answer("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}")).await;
    for _ in 0..2 {
        let reply = up.get(LIST).await;
        assert_eq!(reply.status, 200);
        assert_eq!(&reply.body[..], b"{}");
    }
    assert_eq!(up.conns(), [0, 1]);
}

#[tokio::test]
async fn interim_answers_are_skipped_and_connection_close_is_honoured() {
    let up = Upstream::start(|_| Answer {
        close: true,
        ..answer(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n\
             HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
        )
    })
    .await;
    for _ in 0..2 {
        let reply = up.get(LIST).await;
        assert_eq!(reply.status, 200);
        assert_eq!(&reply.body[..], b"{}");
        assert!(reply.headers.get("link").is_none());
    }
    assert_eq!(up.conns(), [0, 1]);
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body_and_keep_the_connection() {
    let up = Upstream::start(|seen| {
        answer(if seen.line.starts_with("HEAD ") {
            "HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n"
        } else if seen.line.contains("empty") {
            "HTTP/1.1 204 No Content\r\n\r\n"
        } else if seen.line.contains("same") {
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 42\r\n\r\n"
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
        })
    })
    .await;
    let reply = up.gate.as_user(KEY_ANY, Some(1), "HEAD", LIST, None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-length"], "42");
    assert!(reply.body.is_empty());
    let reply = up.get("/chat/Dialog.json?empty=1").await;
    assert_eq!(reply.status, 204);
    assert!(reply.body.is_empty());
    let reply = up.get("/chat/Dialog.json?same=1").await;
    assert_eq!(reply.status, 304);
    assert!(reply.body.is_empty());
    let reply = up.get(LIST).await;
    assert_eq!(&reply.body[..], b"{}");
    let seen = up.seen();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|s| s.conn == 0), "{seen:?}");
}

/// A client connection to the gateway, written by hand: for uploads hyper's client would frame
/// its own way.
async fn raw_client(gate: &Gate, head: &str) -> TcpStream {
    let mut client = TcpStream::connect(gate.addr).await.unwrap();
    client.write_all(head.as_bytes()).await.unwrap();
    client
}

/// Read one response from a raw client connection: status and body (framed by content-length).
async fn read_reply(client: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut reader = BufReader::new(client);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let status = line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).await.unwrap();
        let header = header.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(value) = header.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.unwrap();
    (status, body)
}

/// Uploads stream: a body the upstream does not read as parameters (JSON, forms and multipart are
/// read whole and checked for a `token` parameter on an API key) goes out while it arrives.
const UPLOAD_TYPE: &str = "application/octet-stream";
const UPLOAD_HEAD: &str = "POST /blobs.json HTTP/1.1\r\nhost: gate\r\n\
                           authorization: ApiKey test-key-any\r\non-behalf-of: 1\r\ncontent-type: application/octet-stream\r\n";

/// POST `body` to `/blobs.json` as user 1 with the streamed upload's media type.
async fn upload(gate: &Gate, body: &str) -> Reply {
    let headers = [
        ("authorization", "ApiKey test-key-any"),
        ("on-behalf-of", "1"),
        ("content-type", UPLOAD_TYPE),
    ];
    gate.send("POST", "/blobs.json", &headers, body).await
}

#[tokio::test]
async fn uploads_reach_the_upstream_framed_for_its_hop() {
    let up =
        Upstream::start(|_| answer("HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}")).await;

    // A known length, larger than what goes out behind the head: sent with content-length.
    let big = format!(r#"{{"blob":{{"name":"{}"}}}}"#, "m".repeat(100_000));
    let reply = upload(&up.gate, &big).await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);

    // An unknown length: the client's chunks arrive re-chunked, and whole.
    let mut client = raw_client(
        &up.gate,
        &format!("{UPLOAD_HEAD}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    client
        .write_all(b"6;x=y\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_reply(&mut client).await;
    assert_eq!((status, &body[..]), (201, &b"{}"[..]));

    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, big.as_bytes());
    assert_eq!(
        seen[0].header("content-length"),
        Some(&*big.len().to_string())
    );
    assert_eq!(seen[0].header("transfer-encoding"), None);
    assert_eq!(seen[1].body, b"hello world");
    assert_eq!(seen[1].header("transfer-encoding"), Some("chunked"));
    assert_eq!(seen[1].header("content-length"), None);
    for s in &seen {
        assert_eq!(
            s.header("authorization"),
            Some(&*format!("ApiKey {UPSTREAM_KEY}"))
        );
    }
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    let up = Upstream::start(|_| Answer {
        early: true,
        ..answer(
            "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n\
             content-length: 22\r\n\r\n{\"errors\":[\"too big\"]}",
        )
    })
    .await;
    // The client sends one chunk and then waits: the answer must not wait for the rest.
    let mut client = raw_client(
        &up.gate,
        &format!("{UPLOAD_HEAD}transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"),
    )
    .await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), read_reply(&mut client))
        .await
        .expect("the early answer was held back");
    assert_eq!(status, 413);
    assert_eq!(body, br#"{"errors":["too big"]}"#);
    // The next request cannot use the connection the unfinished upload left behind.
    let reply = up.get(LIST).await;
    assert_eq!(reply.status, 413);
    assert_eq!(up.conns(), [0, 1]);
}

#[tokio::test]
async fn an_answer_before_an_upload_the_upstream_then_drops_reaches_the_client() {
    let up = Upstream::start(|_| Answer {
        early: true,
        close: true,
        ..answer(
            "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n\
             content-length: 22\r\nconnection: close\r\n\r\n{\"errors\":[\"too big\"]}",
        )
    })
    .await;
    // Larger than the socket buffers take at once, so the gateway is still writing when the
    // upstream's reset comes back.
    let big = format!(r#"{{"blob":{{"name":"{}"}}}}"#, "m".repeat(1_000_000));
    for _ in 0..3 {
        let reply = upload(&up.gate, &big).await;
        assert_eq!(reply.status, 413, "{:?}", reply.body);
        assert_eq!(&reply.body[..], br#"{"errors":["too big"]}"#);
    }
}

#[tokio::test]
async fn answers_the_client_cannot_trust_are_502_in_json() {
    let huge = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\n{{}}",
        "h".repeat(70_000)
    );
    let wires = [
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}".to_string(),
        "HTTP/1.1 200 OK\r\ncontent-length: two\r\n\r\n{}".to_string(),
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n".to_string(),
        "I am not HTTP\r\n\r\n".to_string(),
        huge,
    ];
    for wire in wires {
        let sent = wire.clone();
        let up = Upstream::start(move |_| Answer {
            close: true,
            ..answer(sent.clone())
        })
        .await;
        let reply = up.get(LIST).await;
        reply.assert_gate_error(502, "upstream_failed", "base");
        // A GET is tried once more, on a new connection; then the gateway gives up.
        assert_eq!(up.conns(), [0, 1], "{}", &wire[..wire.len().min(60)]);
    }
}

#[tokio::test]
async fn hop_by_hop_fields_of_an_answer_stay_on_the_upstream_hop() {
    let up = Upstream::start(|_| {
        answer(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n\
             X-Private: secret\r\nTrailer: x-t\r\nProxy-Authenticate: Basic\r\nX-Kept: 1\r\n\
             content-length: 2\r\n\r\n{}",
        )
    })
    .await;
    for _ in 0..2 {
        let reply = up.get(LIST).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["x-kept"], "1");
        for name in ["x-private", "keep-alive", "trailer", "proxy-authenticate"] {
            assert!(reply.headers.get(name).is_none(), "{name} was forwarded");
        }
    }
    // `Connection: keep-alive` with other names does not stop the connection's reuse.
    assert_eq!(up.conns(), [0, 0]);
}
