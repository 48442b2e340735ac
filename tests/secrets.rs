//! Secrets stay secret: the real binary, logging at trace level in JSON, is sent a valid key, an
//! invalid key, a QB-Token, an On-Behalf-Of, a rejected PUT, a 429 and an h2c request; then
//! everything it wrote (stdout, stderr), `/metrics` and every response (headers and body) is
//! searched for the keys, the token and the upstream key.

use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use qbgate::sandbox::seed::{GROUP_ID, OCCUPANT, PRIVATE_ID, RECIPE_USER};
use qbgate::sandbox::Sandbox;
use tokio::net::TcpListener;

use crate::support::digest;

/// Distinctive values, so a match can only be a leak.
const VALID_KEY: &str = "sekrit-valid-key-7f3a9c0e51";
const LIMITED_KEY: &str = "sekrit-limited-key-44d2a6b8";
const INVALID_KEY: &str = "sekrit-invalid-key-b81e0d27";
const TOKEN: &str = "sekrit-qb-token-55aa19c3e7d0";
const UPSTREAM_KEY: &str = "sekrit-upstream-key-c0ffee42";

fn free_port() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn wait_port(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("qbgate exited before listening on {addr}: {status}");
        }
        assert!(Instant::now() < deadline, "qbgate did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads a pipe to the end on a thread of its own (trace logs would fill a pipe's buffer).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

struct Exchange {
    what: &'static str,
    status: u16,
    text: String,
}

async fn send(
    h2: bool,
    what: &'static str,
    method: &str,
    url: String,
    headers: &[(&str, &str)],
    body: &str,
) -> Exchange {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let mut text = String::new();
    for (k, v) in &parts.headers {
        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&body));
    Exchange { what, status, text }
}

/// Every line of `haystack` that contains `needle`, for the failure message.
fn lines_with<'a>(haystack: &'a str, needle: &str) -> Vec<&'a str> {
    haystack.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_token_or_upstream_key_in_logs_metrics_or_responses() {
    // The upstream: the in-process sandbox, holding the real key and a session for TOKEN.
    let sandbox = Sandbox::new(Some(UPSTREAM_KEY.to_string()));
    sandbox.add_session(TOKEN, RECIPE_USER);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sandbox_addr = listener.local_addr().unwrap();
    let sb = sandbox.clone();
    tokio::spawn(async move { sb.serve(listener, std::future::pending()).await });

    let dir = std::env::temp_dir().join(format!("qbgate-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("upstream-key");
    std::fs::write(&key_file, UPSTREAM_KEY).unwrap();
    let (listen, admin) = (free_port(), free_port());
    let policy = format!(
        "version: 1\n\
         listen: {listen}\n\
         admin_listen: {admin}\n\
         upstream:\n  url: http://{sandbox_addr}\n  api_key: {{ file: {} }}\n  timeout: 5s\n\
         keys:\n\
         - {{ id: valid, sha256: {}, on_behalf_of: any }}\n\
         - {{ id: limited, sha256: {}, on_behalf_of: none, rate_limit: {{ per_second: 1, burst: 1 }} }}\n",
        key_file.display(),
        digest(VALID_KEY),
        digest(LIMITED_KEY),
    );
    let policy_path = dir.join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_qbgate"))
        .args(["run", "--policy"])
        .arg(&policy_path)
        .env("QBGATE_LOG", "trace")
        .env("QBGATE_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    wait_port(listen, &mut child);
    wait_port(admin, &mut child);

    let base = format!("http://{listen}");
    let valid = format!("ApiKey {VALID_KEY}");
    let invalid = format!("ApiKey {INVALID_KEY}");
    let limited = format!("ApiKey {LIMITED_KEY}");
    let (recipe, occupant) = (RECIPE_USER.to_string(), OCCUPANT.to_string());
    let json = ("content-type", "application/json");
    let list = format!("{base}/chat/Dialog.json?_id={GROUP_ID}");
    let put_group = format!("{base}/chat/Dialog/{GROUP_ID}.json");
    let put_private = format!("{base}/chat/Dialog/{PRIVATE_ID}.json");
    let user = |key| vec![("authorization", key), ("on-behalf-of", recipe.as_str())];
    // (over h2c, what, method, url, headers, body), sent in this order.
    let cases = vec![
        (
            false,
            "GET, valid key + On-Behalf-Of",
            "GET",
            &list,
            user(&valid),
            "",
        ),
        (
            true,
            "GET over h2c, valid key + On-Behalf-Of",
            "GET",
            &list,
            user(&valid),
            "",
        ),
        (false, "GET, invalid key", "GET", &list, user(&invalid), ""),
        (
            true,
            "GET over h2c, invalid key",
            "GET",
            &list,
            user(&invalid),
            "",
        ),
        (
            false,
            "PUT with a QB-Token (session lookup)",
            "PUT",
            &put_group,
            vec![("qb-token", TOKEN), json],
            r#"{"name":"renamed by token"}"#,
        ),
        (
            false,
            "GET, QB-Token and ApiKey together",
            "GET",
            &list,
            vec![("qb-token", TOKEN), ("authorization", &valid)],
            "",
        ),
        (
            false,
            "PUT rejected by the rules (name on a private dialog)",
            "PUT",
            &put_private,
            vec![("authorization", &valid), ("on-behalf-of", &occupant), json],
            r#"{"name":"nope"}"#,
        ),
        (
            false,
            "GET, valid key, bad On-Behalf-Of",
            "GET",
            &list,
            vec![("authorization", &valid), ("on-behalf-of", "0x1")],
            "",
        ),
        (
            false,
            "limited key #1",
            "GET",
            &list,
            vec![("authorization", &limited)],
            "",
        ),
        (
            false,
            "limited key #2",
            "GET",
            &list,
            vec![("authorization", &limited)],
            "",
        ),
        (
            false,
            "limited key #3",
            "GET",
            &list,
            vec![("authorization", &limited)],
            "",
        ),
    ];
    let mut exchanges = Vec::new();
    for (h2, what, method, url, headers, body) in cases {
        exchanges.push(send(h2, what, method, url.to_string(), &headers, body).await);
    }
    let metrics = send(
        false,
        "GET /metrics",
        "GET",
        format!("http://{admin}/metrics"),
        &[],
        "",
    )
    .await;

    // The statuses prove each path was taken.
    let statuses: Vec<(&str, u16)> = exchanges.iter().map(|e| (e.what, e.status)).collect();
    assert_eq!(
        statuses.iter().map(|s| s.1).collect::<Vec<_>>(),
        vec![200, 200, 401, 401, 200, 400, 422, 400, 200, 429, 429],
        "{statuses:#?}"
    );
    assert_eq!(metrics.status, 200);

    // SIGTERM, then everything it wrote.
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("qbgate did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = String::from_utf8_lossy(&stdout.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    // QBGATE_SECRETS_DUMP=path keeps what the gateway wrote, to look at by hand.
    if let Ok(path) = std::env::var("QBGATE_SECRETS_DUMP") {
        std::fs::write(path, format!("{stdout}\n--- stderr\n{stderr}")).unwrap();
    }
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    // The run really logged at trace level, with an access line per request.
    assert!(
        stdout.contains(r#""level":"TRACE""#),
        "no trace lines: QBGATE_LOG=trace did not apply"
    );
    // One well-formed access line per request (lines of different threads may interleave).
    let access: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.contains(r#""target":"qbgate::access""#))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut logged: Vec<u64> = access
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    let mut sent: Vec<u64> = exchanges.iter().map(|e| u64::from(e.status)).collect();
    logged.sort_unstable();
    sent.sort_unstable();
    assert_eq!(logged, sent, "access lines vs requests");
    assert!(access.iter().all(
        |a| a["request_id"].as_str().is_some_and(|id| !id.is_empty())
            && a["total_ms"].as_f64().is_some()
    ));
    // Each line names the digest that matched by its first 8 hex digits (never the key).
    for a in &access {
        let want = match a["key"].as_str().unwrap() {
            "valid" => digest(VALID_KEY)[..8].to_string(),
            "limited" => digest(LIMITED_KEY)[..8].to_string(),
            _ => "-".to_string(),
        };
        assert_eq!(a["digest"].as_str(), Some(want.as_str()), "{a}");
    }
    assert!(
        access.iter().any(|a| a["key"] == "valid"),
        "no line for the valid key"
    );

    let mut outputs: Vec<(String, &str)> = vec![
        ("stdout (logs)".into(), &stdout),
        ("stderr".into(), &stderr),
        ("/metrics".into(), &metrics.text),
    ];
    for e in &exchanges {
        outputs.push((format!("response to {}", e.what), &e.text));
    }
    let secrets = [
        ("valid key", VALID_KEY),
        ("rate-limited key", LIMITED_KEY),
        ("invalid key", INVALID_KEY),
        ("QB-Token", TOKEN),
        ("upstream key", UPSTREAM_KEY),
    ];
    let mut leaks = Vec::new();
    for (secret, value) in secrets {
        for (place, text) in &outputs {
            for line in lines_with(text, value) {
                let line: String = line.chars().take(600).collect();
                leaks.push(format!("{secret} in {place}: {line}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leaked line(s):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}
