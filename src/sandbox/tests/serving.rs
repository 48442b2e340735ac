//! Serving and recording: unknown routes, what is recorded, both protocols on one connection,
//! shutdown, and QuickBlox's timestamps.

use super::*;

#[tokio::test]
async fn unknown_routes_are_json_404() {
    let (_sandbox, addr) = start().await;
    for (method, path) in [
        ("GET", "/users.json"),
        ("GET", "/chat/Dialog/5d75393ba28f9a17e1cb0f9e.json"),
        ("POST", "/chat/Messages.json"),
        ("GET", "/chat/Dialog/5d75393ba28f9a17e1cb0f9e/notes.json"),
        ("PATCH", "/chat/Dialog/5d75393ba28f9a17e1cb0f9e.json"),
        ("PUT", "/chat/Dialog/a/b.json"),
        // Another letter case routes (see the reader's tests); these do not.
        ("GET", "/chat/%44ialog.json"),
        ("GET", "/chat/Dia1og.json"),
        ("GET", "/chat/Dialog.json.xml"),
        ("PUT", "/chat/Dialog/.json"),
        ("GET", "/chat"),
        ("GET", "/"),
    ] {
        let answer = call(addr, method, path, APP, "").await;
        assert_eq!(
            (answer.status, base(&answer)),
            (StatusCode::NOT_FOUND, "Not found"),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn records_every_request_as_received() {
    let (sandbox, addr) = start().await;
    let headers = with(&with(USER_123, JSON), ("x-custom", "kept"));
    let uri = format!("/chat/Dialog/{GROUP_ID}.json?_id%5Bin%5D=a%2Cb");
    call(addr, "PUT", &uri, &headers, r#"{"name":"x"}"#).await;
    call(addr, "GET", "/nowhere", &[], "").await;

    let received = sandbox.received();
    assert_eq!(received.len(), 2);
    let put = &received[0];
    assert_eq!(put.method, Method::PUT);
    assert_eq!(put.uri.to_string(), uri);
    assert_eq!(put.version, Version::HTTP_11);
    assert_eq!(put.headers["x-custom"], "kept");
    assert_eq!(put.headers["on-behalf-of"], "123");
    assert_eq!(&put.body[..], br#"{"name":"x"}"#);
    assert!(put.complete);
    assert_eq!(put.peer.map(|p| p.ip()), Some([127, 0, 0, 1].into()));
    assert_eq!(received[1].uri, "/nowhere");

    assert_eq!(sandbox.take_received().len(), 2);
    assert!(sandbox.received().is_empty());
}

#[tokio::test]
async fn records_a_request_whose_body_was_cut_short() {
    use tokio::io::AsyncWriteExt;
    let (sandbox, addr) = start().await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /chat/Dialog/{GROUP_ID}.json HTTP/1.1\r\nhost: sandbox\r\n\
         authorization: ApiKey {KEY}\r\ncontent-length: 100\r\n\r\n{{\"name\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stream);
    let mut received = Vec::new();
    for _ in 0..100 {
        received = sandbox.received();
        if !received.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(received.len(), 1);
    assert!(!received[0].complete);
    assert_eq!(&received[0].body[..], br#"{"name""#);
    assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "Party planning");
}

#[tokio::test]
async fn serve_connection_speaks_what_the_client_speaks() {
    let sandbox = Sandbox::new(None);
    for http2 in [false, true] {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let server_side = sandbox.clone();
        tokio::spawn(async move { server_side.serve_connection(server, None).await });
        let req = request(
            "GET",
            "http://sandbox/chat/Dialog.json",
            &[("authorization", "ApiKey k")],
            "",
        );
        let response = if http2 {
            let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                .await
                .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        } else {
            let (mut sender, conn) = http1::handshake(TokioIo::new(client)).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        };
        assert_eq!(read(response).await.json["total_entries"], 3);
    }
    let received = sandbox.received();
    assert_eq!(
        received
            .iter()
            .map(|r| (r.version, r.peer))
            .collect::<Vec<_>>(),
        [(Version::HTTP_11, None), (Version::HTTP_2, None)]
    );
}

#[tokio::test]
async fn serve_returns_on_shutdown_and_stops_accepting() {
    let sandbox = Sandbox::new(None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = sandbox.clone();
    let serving = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    assert_eq!(
        call(
            addr,
            "GET",
            "/chat/Dialog.json",
            &[("authorization", "ApiKey k")],
            ""
        )
        .await
        .status,
        StatusCode::OK
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), serving)
        .await
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

#[test]
fn timestamps_are_rfc3339_utc() {
    let at = |secs| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
    assert_eq!(at(0), "1970-01-01T00:00:00Z");
    assert_eq!(at(1_567_971_414), "2019-09-08T19:36:54Z");
    assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
}
