//! The injected faults: status, delay, resets before and in the middle of a response, GOAWAY,
//! and large streamed bodies.

use super::*;

#[tokio::test]
async fn fault_status_answers_in_quickblox_shape_and_applies_nothing() {
    let (sandbox, addr) = start().await;
    sandbox.set_fault(Fault::Status(503));
    let lookup = call(
        addr,
        "GET",
        &format!("/chat/Dialog.json?_id={GROUP_ID}"),
        USER_123,
        "",
    )
    .await;
    assert_eq!(
        (lookup.status, base(&lookup)),
        (StatusCode::SERVICE_UNAVAILABLE, "Service unavailable")
    );
    assert_eq!(sandbox.lookups(), 1);
    let put = call(
        addr,
        "PUT",
        &format!("/chat/Dialog/{GROUP_ID}.json"),
        &with(USER_123, JSON),
        r#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(put.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "Party planning");
    sandbox.set_fault(Fault::Status(429));
    let limited = call(
        addr,
        "GET",
        "/session.json",
        &[("qb-token", GROUP_TOKEN)],
        "",
    )
    .await;
    assert_eq!(
        (limited.status, base(&limited)),
        (
            StatusCode::TOO_MANY_REQUESTS,
            "Rate limit for your current plan is exceeded"
        )
    );
    sandbox.set_fault(Fault::Status(42));
    assert_eq!(
        call(addr, "GET", "/", &[], "").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );

    sandbox.set_fault(Fault::None);
    assert_eq!(
        call(addr, "GET", "/chat/Dialog.json", USER_123, "")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(sandbox.received().len(), 5);
}

#[tokio::test]
async fn fault_delay_stalls_then_answers() {
    let (sandbox, addr) = start().await;
    sandbox.set_fault(Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    let answer = call(addr, "GET", "/chat/Dialog.json", USER_123, "").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(sandbox.lookups(), 1);
}

#[tokio::test]
async fn fault_reset_before_response() {
    let (sandbox, addr) = start().await;
    sandbox.set_fault(Fault::ResetBeforeResponse);
    let put = || {
        request(
            "PUT",
            &format!("http://{addr}/chat/Dialog/{GROUP_ID}.json"),
            &with(USER_123, JSON),
            r#"{"name":"reset"}"#,
        )
    };

    let (mut sender, conn) = h1(addr).await;
    assert!(sender.send_request(put()).await.is_err());
    // The connection is gone, not merely the request.
    assert!(tokio::time::timeout(Duration::from_secs(2), conn)
        .await
        .is_ok());

    let (mut sender, _conn) = h2(addr).await;
    assert!(sender.send_request(put()).await.is_err());

    assert_eq!(sandbox.received().len(), 2);
    assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "Party planning");
}

#[tokio::test]
async fn fault_reset_mid_body_sends_head_and_part() {
    let (sandbox, addr) = start().await;
    sandbox.set_fault(Fault::ResetMidBody);
    let put = || {
        request(
            "PUT",
            &format!("http://{addr}/chat/Dialog/{GROUP_ID}.json"),
            &with(USER_123, JSON),
            r#"{"name":"half"}"#,
        )
    };

    let (mut sender, _conn) = h1(addr).await;
    let response = sender.send_request(put()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let full_len: usize = response.headers()[CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(full_len > 100);
    assert!(response.into_body().collect().await.is_err());

    let (mut sender, _conn) = h2(addr).await;
    let response = sender.send_request(put()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());

    // The upstream did the work; only the answer was lost.
    assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "half");
}

#[tokio::test]
async fn fault_go_away_h1_closes_after_the_response() {
    let (sandbox, addr) = start().await;
    sandbox.set_fault(Fault::GoAway);
    let (mut sender, conn) = h1(addr).await;
    let response = sender
        .send_request(request("GET", "/chat/Dialog.json", USER_123, ""))
        .await
        .unwrap();
    assert_eq!(read(response).await.status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(2), conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

#[tokio::test]
async fn fault_go_away_h2_lets_in_flight_requests_finish() {
    let (sandbox, addr) = start().await;
    sandbox.set_fault(Fault::GoAway);
    let (sender, conn) = h2(addr).await;
    let uri = format!("http://{addr}/chat/Dialog.json");
    let mut first = sender.clone();
    let mut second = sender.clone();
    let (a, b) = tokio::join!(
        first.send_request(request("GET", &uri, USER_123, "")),
        second.send_request(request("GET", &uri, USER_123, "")),
    );
    assert_eq!(read(a.unwrap()).await.status, StatusCode::OK);
    assert_eq!(read(b.unwrap()).await.status, StatusCode::OK);
    let ended = tokio::time::timeout(Duration::from_secs(2), conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    let mut late = sender;
    assert!(late
        .send_request(request("GET", &uri, USER_123, ""))
        .await
        .is_err());
    assert_eq!(sandbox.received()[0].version, Version::HTTP_2);
    assert_eq!(sandbox.received()[0].uri, "/chat/Dialog.json");
}

#[tokio::test]
async fn fault_big_body_streams_in_chunks() {
    let (sandbox, addr) = start().await;
    let len = 3 * CHUNK.len() + 7;
    sandbox.set_fault(Fault::BigBody(len));
    let (mut sender, _conn) = h1(addr).await;
    let response = sender
        .send_request(request("GET", "/anything", &[], ""))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key(CONTENT_LENGTH));
    let mut body = response.into_body();
    let (mut frames, mut total) = (0, 0);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().all(|b| *b == b'a'));
            frames += 1;
            total += data.len();
        }
    }
    assert_eq!(total, len);
    assert!(frames > 1);

    let (mut sender, _conn) = h2(addr).await;
    let response = sender
        .send_request(request("GET", &format!("http://{addr}/x"), &[], ""))
        .await
        .unwrap();
    assert_eq!(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .len(),
        len
    );
}
