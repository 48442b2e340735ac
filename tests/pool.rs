//! The upstream connection pool, seen from the upstream: which connections requests arrive on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

const LIST: &str = "/chat/Dialog.json";

/// The distinct client addresses the upstream saw (one per connection).
fn connections(gate: &Gate) -> HashSet<std::net::SocketAddr> {
    let received = gate.sandbox.take_received();
    assert!(!received.is_empty());
    received
        .iter()
        .map(|r| r.peer.expect("the sandbox records the peer"))
        .collect()
}

/// A blob POST by a user: judged by no rule, so its body streams through unread.
async fn post_blob(gate: &Gate, i: usize) -> Reply {
    let body = format!(r#"{{"blob":{{"name":"m{i}"}}}}"#);
    gate.as_user(KEY_ANY, Some(1), "POST", "/blobs.json", Some(&body))
        .await
}

/// `n` GETs at once through the gateway; each must succeed.
async fn concurrent_gets(gate: &Arc<Gate>, n: usize) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let gate = gate.clone();
            tokio::spawn(async move { gate.as_user(KEY_APP, None, "GET", LIST, None).await })
        })
        .collect();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let gate = Gate::start("").await;
    for i in 0..10 {
        let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        let reply = post_blob(&gate, i).await;
        assert!(reply.status < 500, "{} {:?}", reply.status, reply.body);
    }
    assert_eq!(connections(&gate).len(), 1);
}

#[tokio::test]
async fn concurrent_requests_open_no_more_connections_than_they_need() {
    let gate = Arc::new(Gate::start("").await);
    for _ in 0..5 {
        concurrent_gets(&gate, 8).await;
    }
    let used = connections(&gate).len();
    assert!(
        (1..=8).contains(&used),
        "{used} connections for 8 at a time"
    );
}

#[tokio::test]
async fn requests_over_h2_share_one_connection() {
    let gate = Arc::new(gate_over_tls("localhost", "localhost", &[b"h2"]).await);
    // The first request makes the connection; the rest multiplex on it.
    let reply = gate.as_user(KEY_APP, None, "GET", LIST, None).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    concurrent_gets(&gate, 20).await;
    let received = gate.sandbox.received();
    assert_eq!(received.len(), 21);
    assert!(received.iter().all(|r| r.version == http::Version::HTTP_2));
    assert_eq!(connections(&gate).len(), 1);
}

/// An upstream that answers one request per connection and then closes it without saying so
/// (no `Connection: close`), as a server does when its keep-alive timeout passes. Records each
/// request line.
async fn closing_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                socket.read_exact(&mut body).await.unwrap();
                record
                    .lock()
                    .unwrap()
                    .push(head.lines().next().unwrap_or_default().to_string());
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                              content-length: 2\r\n\r\n{}";
                socket.write_all(answer.as_bytes()).await.unwrap();
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_used_and_nothing_is_sent_twice() {
    let (addr, seen) = closing_upstream().await;
    let text = policy_text(&format!("http://{addr}"), "", "");
    let gate = Gate::start_policy(qbgate::sandbox::Sandbox::new(None), addr, &text).await;
    for i in 0..5 {
        let reply = post_blob(&gate, i).await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        // Time for the pool's connection to see the close before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(seen
        .iter()
        .all(|line| line.starts_with("POST /blobs.json ")));
}
