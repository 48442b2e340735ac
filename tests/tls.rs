//! A TLS upstream: a test CA made in the test, trusted through `upstream.extra_ca_file`, the
//! sandbox behind rustls, over HTTP/1.1 and HTTP/2 chosen by ALPN.

use std::net::SocketAddr;
use std::sync::Arc;

use qbgate::sandbox::Sandbox;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

use crate::support::*;

struct TestCa {
    pem_path: std::path::PathBuf,
    server: rustls::ServerConfig,
}

/// A CA, and a server certificate for `host` signed by it.
fn test_ca(host: &str, alpn: &[&[u8]]) -> TestCa {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![host.to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "qbgate-tls-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let pem_path = dir.join("ca.pem");
    std::fs::write(&pem_path, ca_cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TestCa { pem_path, server }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The sandbox behind TLS on a loopback port.
async fn tls_sandbox(server: rustls::ServerConfig) -> (Sandbox, SocketAddr) {
    let sandbox = Sandbox::new(Some(UPSTREAM_KEY.to_string()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let sb = sandbox.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let sb = sb.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    sb.serve_connection(tls).await;
                }
            });
        }
    });
    (sandbox, addr)
}

async fn gate_over_tls(host: &str, cert_host: &str, alpn: &[&[u8]]) -> Gate {
    let ca = test_ca(cert_host, alpn);
    let (sandbox, addr) = tls_sandbox(ca.server).await;
    let text = policy_text(
        &format!(
            "https://{host}:{}\n  extra_ca_file: {}",
            addr.port(),
            ca.pem_path.display()
        ),
        "",
        "",
    );
    Gate::start_policy(sandbox, addr, &text).await
}

#[tokio::test]
async fn tls_upstream_over_http1_with_the_key_swapped() {
    let gate = gate_over_tls("localhost", "localhost", &[b"http/1.1"]).await;
    let reply = gate
        .as_user(
            KEY_ANY,
            Some(qbgate::sandbox::seed::OWNER),
            "GET",
            "/chat/Dialog.json",
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let received = gate.sandbox.take_received();
    assert_eq!(received[0].version, http::Version::HTTP_11);
    assert_eq!(
        received[0].headers["authorization"],
        format!("ApiKey {UPSTREAM_KEY}").as_str()
    );
}

#[tokio::test]
async fn tls_upstream_over_http2_by_alpn() {
    let gate = gate_over_tls("localhost", "localhost", &[b"h2", b"http/1.1"]).await;
    for _ in 0..3 {
        let reply = gate
            .as_user(KEY_APP, None, "GET", "/chat/Dialog.json", None)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    let received = gate.sandbox.take_received();
    assert!(received.iter().all(|r| r.version == http::Version::HTTP_2));
}

#[tokio::test]
async fn a_certificate_for_another_host_is_502_and_nothing_is_sent() {
    let gate = gate_over_tls("localhost", "other.example", &[b"http/1.1"]).await;
    let reply = gate
        .as_user(KEY_APP, None, "GET", "/chat/Dialog.json", None)
        .await;
    reply.assert_gate_error(502, "upstream_unreachable", "base");
    assert!(gate.sandbox.received().is_empty());
}
