//! Start a gateway in front of a sandbox on loopback, and talk to it.

#![allow(dead_code)]

#[path = "../src/ratelimit/test_server.rs"]
pub mod redis_server;

#[path = "../src/ratelimit/redis/deployments.rs"]
pub mod redis_deployments;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use qbgate::sandbox::Sandbox;
use qbgate::{Gateway, Runtime};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::rustls;

/// The real QuickBlox key the gateway holds (the sandbox accepts only this one).
pub const UPSTREAM_KEY: &str = "upstream-secret-key-0001";
pub const KEY_ANY: &str = "test-key-any";
pub const KEY_LIST: &str = "test-key-list";
pub const KEY_APP: &str = "test-key-app";
pub const KEY_OFF: &str = "test-key-off";
pub const KEY_OLD: &str = "test-key-old";
pub const KEY_ROUTES: &str = "test-key-routes";

pub fn digest(key: &str) -> String {
    qbgate::policy::digest_hex(key.as_bytes())
}

/// The test policy: `sections` (top-level YAML) plus the standard test keys and `extra_keys`.
pub fn policy_text(upstream: &str, sections: &str, extra_keys: &str) -> String {
    use qbgate::sandbox::seed::{OCCUPANT, OWNER, RECIPE_USER};
    format!(
        "version: 1\n\
         listen: 127.0.0.1:0\n\
         admin_listen: 127.0.0.1:0\n\
         upstream:\n  url: {upstream}\n  api_key: {{ env: QB_API_KEY }}\n  timeout: 2s\n  connect_timeout: 1s\n\
         {sections}\n\
         keys:\n\
         - {{ id: any, sha256: {}, on_behalf_of: any }}\n\
         - {{ id: list, sha256: {}, on_behalf_of: [{OWNER}, {OCCUPANT}, {RECIPE_USER}] }}\n\
         - {{ id: app, sha256: {}, on_behalf_of: none }}\n\
         - {{ id: off, sha256: {}, disabled: true }}\n\
         - {{ id: old, sha256: {}, expires_at: 2020-01-01T00:00:00Z }}\n\
         - {{ id: routes, sha256: {}, routes: [GET /chat/Dialog.json, PUT /chat/Dialog/*] }}\n\
         {extra_keys}",
        digest(KEY_ANY),
        digest(KEY_LIST),
        digest(KEY_APP),
        digest(KEY_OFF),
        digest(KEY_OLD),
        digest(KEY_ROUTES),
    )
}

pub fn compile(text: &str) -> qbgate::policy::Policy {
    let env = |name: &str| (name == "QB_API_KEY").then(|| UPSTREAM_KEY.to_string());
    match qbgate::policy::compile_with_env(text, &env) {
        Ok(p) => p,
        Err(e) => panic!("test policy does not compile:\n{e}\n---\n{text}"),
    }
}

/// A gateway and its sandbox, both on loopback; stopped on drop.
pub struct Gate {
    pub addr: SocketAddr,
    pub sandbox: Sandbox,
    pub sandbox_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Gate {
    /// Gateway with the test policy plus `sections`, in front of a fresh sandbox.
    pub async fn start(sections: &str) -> Gate {
        Self::start_with_keys(sections, "").await
    }

    pub async fn start_with_keys(sections: &str, extra_keys: &str) -> Gate {
        let sandbox = Sandbox::new(Some(UPSTREAM_KEY.to_string()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sandbox_addr = listener.local_addr().unwrap();
        let sb = sandbox.clone();
        tokio::spawn(async move { sb.serve(listener, std::future::pending()).await });
        let text = policy_text(&format!("http://{sandbox_addr}"), sections, extra_keys);
        Self::start_policy(sandbox, sandbox_addr, &text).await
    }

    pub async fn start_policy(sandbox: Sandbox, sandbox_addr: SocketAddr, text: &str) -> Gate {
        let policy = compile(text);
        let runtime = Runtime::new(policy, None).await.unwrap();
        let gateway = Gateway::new(runtime);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let gw = gateway.clone();
        tokio::spawn(async move {
            qbgate::serve(gw, listener, None, async {
                let _ = stopped.await;
            })
            .await
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Gate {
            addr,
            sandbox,
            sandbox_addr,
            gateway,
            stop: Some(stop),
            client,
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(format!("http://{}{}", self.addr, path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers: parts.headers,
            body,
        }
    }

    /// `send` with `Authorization: ApiKey key` and, when given, `On-Behalf-Of`.
    pub async fn as_user(
        &self,
        key: &str,
        user: Option<u64>,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> Reply {
        let auth = format!("ApiKey {key}");
        let user = user.map(|u| u.to_string());
        let mut headers: Vec<(&str, &str)> = vec![("authorization", &auth)];
        if let Some(u) = &user {
            headers.push(("on-behalf-of", u));
        }
        if json.is_some() {
            headers.push(("content-type", "application/json"));
        }
        self.send(method, path, &headers, json.unwrap_or("")).await
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn reason(&self) -> Option<&str> {
        self.headers
            .get("x-qbgate-reason")
            .and_then(|v| v.to_str().ok())
    }

    /// Assert a gateway-made error: status, reason code, QuickBlox shape with `key`.
    #[track_caller]
    pub fn assert_gate_error(&self, status: u16, reason: &str, key: &str) {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.reason(), Some(reason));
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json; charset=utf-8")
        );
        let json = self.json();
        let messages = &json["errors"][key];
        assert!(
            messages
                .as_array()
                .is_some_and(|m| m.len() == 1 && m[0].is_string()),
            "expected {{\"errors\":{{\"{key}\":[\"..\"]}}}}, got {json}"
        );
    }
}

// TLS upstreams: a CA made in the test, the sandbox behind rustls.

/// A test CA's certificate file and a server config whose certificate it signed.
pub struct TestCa {
    pub pem_path: std::path::PathBuf,
    pub server: rustls::ServerConfig,
}

/// A CA, and a server certificate for `host` signed by it.
pub fn test_ca(host: &str, alpn: &[&[u8]]) -> TestCa {
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
pub async fn tls_sandbox(server: rustls::ServerConfig) -> (Sandbox, SocketAddr) {
    let sandbox = Sandbox::new(Some(UPSTREAM_KEY.to_string()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let sb = sandbox.clone();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let sb = sb.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    sb.serve_connection(tls, Some(peer)).await;
                }
            });
        }
    });
    (sandbox, addr)
}

pub async fn gate_over_tls(host: &str, cert_host: &str, alpn: &[&[u8]]) -> Gate {
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

/// One way to send parameters: a name, a query to append, a content type and a body.
pub struct Encoded {
    pub name: &'static str,
    pub query: String,
    pub content_type: &'static str,
    pub body: String,
}

/// `field=value` pairs as a JSON body, a form body and the query, the three ways the upstream
/// reads parameters; under `wrap` (`user[field]`, `{"user":{..}}`) when given.
pub fn encodings(wrap: Option<&str>, fields: &[(&str, &str)]) -> Vec<Encoded> {
    let doc: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
        .collect();
    let json = match wrap {
        Some(outer) => serde_json::json!({ outer: doc }),
        None => serde_json::Value::Object(doc),
    };
    let pairs = |open: &str, close: &str| {
        fields
            .iter()
            .map(|(k, v)| match wrap {
                Some(outer) => format!("{outer}{open}{k}{close}={v}"),
                None => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join("&")
    };
    vec![
        Encoded {
            name: "json",
            query: String::new(),
            content_type: "application/json",
            body: json.to_string(),
        },
        Encoded {
            name: "form",
            query: String::new(),
            content_type: "application/x-www-form-urlencoded",
            body: pairs("[", "]"),
        },
        Encoded {
            name: "query",
            query: format!("?{}", pairs("%5B", "%5D")),
            content_type: "",
            body: String::new(),
        },
    ]
}

/// A gateway error with its status, reason and shape (`key`: the error shape's name, see
/// [`Reply::assert_gate_error`]); the sandbox received nothing but what `is_lookup` accepts.
#[track_caller]
pub fn assert_refused_after_lookups(
    gate: &Gate,
    reply: &Reply,
    (status, reason, key): (u16, &str, &str),
    is_lookup: fn(&qbgate::sandbox::Recorded) -> bool,
    what: &str,
) {
    assert_eq!(
        reply.reason(),
        Some(reason),
        "{what}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    reply.assert_gate_error(status, reason, key);
    let received = gate.sandbox.take_received();
    assert!(
        received.iter().all(is_lookup),
        "{what}: forwarded {:?}",
        received
            .iter()
            .map(|r| format!("{} {}", r.method, r.uri))
            .collect::<Vec<_>>()
    );
}
