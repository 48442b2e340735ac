//! The sandbox's own tests: helpers to start one and talk to it over HTTP/1.1 and HTTP/2, and
//! the tests by subject: the dialog endpoints, the request reader (Rack and Rails semantics),
//! the faults, serving and recording, and the user endpoints.

mod dialogs;
mod faults;
mod rack;
mod serving;
mod users;

use super::seed::*;
use super::*;

use std::time::{Instant, UNIX_EPOCH};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use serde_json::json;

use super::dialogs::user_ids;
use super::reply::{rfc3339, CHUNK};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const KEY: &str = "upstream-key";
const APP: &[(&str, &str)] = &[("authorization", "ApiKey upstream-key")];
const USER_123: &[(&str, &str)] = &[
    ("authorization", "ApiKey upstream-key"),
    ("on-behalf-of", "123"),
];
const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");
const FORM: (&str, &str) = (
    "content-type",
    "application/x-www-form-urlencoded; charset=UTF-8",
);
const MISSING_ID: &str = "5e261c72a28f9a4f779f10bb";

type Headers = &'static [(&'static str, &'static str)];

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn start() -> (Sandbox, SocketAddr) {
    start_with(Sandbox::new(Some(KEY.to_owned()))).await
}

async fn start_with(sandbox: Sandbox) -> (Sandbox, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = sandbox.clone();
    tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
    (sandbox, addr)
}

fn request(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn with<'a>(headers: &[(&'a str, &'a str)], extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut all = headers.to_vec();
    all.push(extra);
    all
}

async fn h1(
    addr: SocketAddr,
) -> (
    http1::SendRequest<Full<Bytes>>,
    JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    (sender, tokio::spawn(conn))
}

async fn h2(
    addr: SocketAddr,
) -> (
    http2::SendRequest<Full<Bytes>>,
    JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

async fn read(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Answer {
        status: parts.status,
        headers: parts.headers,
        json,
    }
}

async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
    let (mut sender, _conn) = h1(addr).await;
    let answer = read(sender.send_request(req).await.unwrap()).await;
    assert_eq!(
        answer.headers[CONTENT_TYPE],
        "application/json; charset=utf-8"
    );
    assert!(answer.headers.contains_key("x-runtime"));
    answer
}

async fn call(
    addr: SocketAddr,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    send(addr, request(method, uri, headers, body)).await
}

fn base(answer: &Answer) -> &str {
    answer.json["errors"]["base"][0]
        .as_str()
        .unwrap_or_default()
}

fn item_ids(answer: &Answer) -> Vec<&str> {
    answer.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["_id"].as_str().unwrap())
        .collect()
}

fn occupants(dialog: &Value) -> Vec<u64> {
    dialog["occupants_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}
