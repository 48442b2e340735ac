//! `/healthz`, `/readyz` and `/metrics` on their own listener, apart from the proxy port.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::proxy::{text, ResponseBody};
use crate::Gateway;

/// Serve the admin endpoints until the process ends.
pub async fn serve(gateway: Arc<Gateway>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let gw = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let gw = gw.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&gw, &request)) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(gateway: &Gateway, request: &Request<Incoming>) -> Response<ResponseBody> {
    const JSON: &str = "application/json";
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, JSON, r#"{"status":"ok"}"#),
        "/readyz" if gateway.is_draining() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            r#"{"status":"draining"}"#,
        ),
        "/readyz" => text(StatusCode::OK, JSON, r#"{"status":"ready"}"#),
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            JSON,
            r#"{"errors":{"base":["Not found"]}}"#,
        ),
    }
}
