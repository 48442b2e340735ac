//! `/healthz`, `/readyz` and `/metrics` on their own listener, apart from the proxy port.
//!
//! The admin listener needs nothing from the proxy: readiness is a latch ([`Readiness`]) the
//! process flips when it starts draining, and the metrics are rendered from their registry.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// `/readyz`: ready while a policy is loaded (from the moment the gateway exists) and the process
/// is not draining; once draining, never ready again.
#[derive(Debug, Default)]
pub struct Readiness {
    draining: AtomicBool,
}

impl Readiness {
    /// SIGTERM received: `/readyz` answers 503 from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Serve the admin endpoints until the process ends.
pub async fn serve(readiness: Arc<Readiness>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let answer = route(&readiness, &request);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(readiness: &Readiness, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    const JSON: &str = "application/json";
    match request.uri().path() {
        "/healthz" => answer(StatusCode::OK, JSON, r#"{"status":"ok"}"#),
        "/readyz" if readiness.is_draining() => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            JSON,
            r#"{"status":"draining"}"#,
        ),
        "/readyz" => answer(StatusCode::OK, JSON, r#"{"status":"ready"}"#),
        "/metrics" => answer(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            crate::metrics::render(),
        ),
        _ => answer(
            StatusCode::NOT_FOUND,
            JSON,
            r#"{"errors":{"base":["Not found"]}}"#,
        ),
    }
}

fn answer(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_is_a_latch() {
        let readiness = Readiness::default();
        assert!(!readiness.is_draining());
        readiness.drain();
        assert!(readiness.is_draining());
        readiness.drain();
        assert!(readiness.is_draining());
    }
}
