//! The log lines of the real binary (JSON on stdout), field by field: the access line's route
//! (the matched pattern, no id), protocol, bytes in and out, user agent, times; the request id
//! shared by a request's rule lines and its access line; report mode's would-be reason.

use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use qbgate::sandbox::seed::{OCCUPANT, OWNER, PRIVATE_ID, RECIPE_USER};
use qbgate::sandbox::{Fault, Sandbox};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::{digest, KEY_ANY, UPSTREAM_KEY};

pub fn free_port() -> SocketAddr {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The `qbgate` binary serving a policy, its stdout and stderr read on threads of their own.
pub struct Binary {
    child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
    dir: std::path::PathBuf,
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

impl Binary {
    /// Serve `sections` (top-level YAML after `upstream`) and `keys` in front of `upstream`,
    /// logging JSON at `info`, with `env` set.
    pub fn start(upstream: SocketAddr, sections: &str, keys: &str, env: &[(&str, &str)]) -> Self {
        let (listen, admin) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!(
            "qbgate-logs-{}-{}",
            std::process::id(),
            listen.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let policy = format!(
            "version: 1\nlisten: {listen}\nadmin_listen: {admin}\n\
             upstream:\n  url: http://{upstream}\n  api_key: {{ env: QB_API_KEY }}\n  timeout: 5s\n\
             {sections}\nkeys:\n{keys}"
        );
        let path = dir.join("policy.yaml");
        std::fs::write(&path, policy).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_qbgate"));
        command
            .args(["run", "--policy"])
            .arg(&path)
            .env("QB_API_KEY", UPSTREAM_KEY)
            .env("QBGATE_LOG", "info")
            .env("QBGATE_LOG_FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("OTEL_")) {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap();
        let stdout = drain(child.stdout.take().unwrap());
        let stderr = drain(child.stderr.take().unwrap());
        let mut binary = Binary {
            child,
            listen,
            admin,
            stdout: Some(stdout),
            stderr: Some(stderr),
            dir,
        };
        binary.wait_port(listen);
        binary.wait_port(admin);
        binary
    }

    fn wait_port(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                let stderr = self.stderr.take().unwrap().join().unwrap();
                panic!(
                    "qbgate exited before listening on {addr}: {status}\n{}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            assert!(Instant::now() < deadline, "qbgate did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, wait for the exit, and every stdout line parsed as JSON.
    pub fn finish(mut self) -> Vec<Value> {
        let kill = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("qbgate did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        let stdout = String::from_utf8(stdout).expect("stdout is UTF-8");
        assert!(
            status.success(),
            "exit {status}; stderr:\n{}",
            String::from_utf8_lossy(&stderr)
        );
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A reply read whole.
pub struct Got {
    pub status: u16,
    pub request_id: String,
    pub body: Bytes,
}

/// One request over HTTP/1.1 or cleartext HTTP/2.
pub async fn send(
    h2: bool,
    method: &str,
    url: String,
    headers: &[(&str, HeaderValue)],
    body: Vec<u8>,
) -> Got {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(&url);
    for (k, v) in headers {
        request = request.header(*k, v.clone());
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: timed out"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    // Empty for the admin listener's answers, which carry none.
    let request_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Got {
        status,
        request_id,
        body,
    }
}

pub async fn sandbox() -> (Sandbox, SocketAddr) {
    let sandbox = Sandbox::new(Some(UPSTREAM_KEY.to_string()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sb = sandbox.clone();
    tokio::spawn(async move { sb.serve(listener, std::future::pending()).await });
    (sandbox, addr)
}

/// The access line of `request_id`, exactly one.
#[track_caller]
pub fn access_line<'a>(lines: &'a [Value], request_id: &str) -> &'a Value {
    let found: Vec<&Value> = lines
        .iter()
        .filter(|l| l["target"] == "qbgate::access" && l["request_id"] == request_id)
        .collect();
    assert_eq!(found.len(), 1, "access lines of {request_id}: {found:#?}");
    found[0]
}

fn h(v: &str) -> HeaderValue {
    HeaderValue::from_str(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_carry_every_field_and_rule_lines_their_request_id() {
    let (sandbox, upstream) = sandbox().await;
    let keys = format!(
        "- {{ id: any, sha256: {}, on_behalf_of: any, unchecked_routes: [POST /custom/*] }}\n",
        digest(KEY_ANY)
    );
    let gate = Binary::start(upstream, "dialog_rules:\n  mode: report\n", &keys, &[]);
    let base = format!("http://{}", gate.listen);
    let auth = h(&format!("ApiKey {KEY_ANY}"));
    let as_user = |user: u64| {
        vec![
            ("authorization", auth.clone()),
            ("on-behalf-of", h(&user.to_string())),
        ]
    };

    // An id-bearing path, with a hostile user agent (a quote, a non-ASCII byte, 300 bytes).
    let mut agent = b"probe \"quoted\" \xff ".to_vec();
    agent.resize(300, b'x');
    let mut headers = as_user(RECIPE_USER);
    headers.push(("user-agent", HeaderValue::from_bytes(&agent).unwrap()));
    let user_get = send(
        false,
        "GET",
        format!("{base}/users/{OWNER}.json"),
        &headers,
        vec![],
    )
    .await;

    // A large answer over HTTP/2.
    sandbox.set_fault(Fault::BigBody(300_000));
    let big = send(
        true,
        "GET",
        format!("{base}/chat/Dialog.json"),
        &as_user(RECIPE_USER),
        vec![],
    )
    .await;
    sandbox.set_fault(Fault::None);
    assert_eq!((big.status, big.body.len()), (200, 300_000));

    // A body streamed through (JSON on an unchecked route) and one read whole (a form POST).
    let mut json = as_user(RECIPE_USER);
    json.push(("content-type", h("application/json")));
    let streamed_body = format!(r#"{{"pad":"{}"}}"#, "p".repeat(5_000)).into_bytes();
    let streamed = send(
        false,
        "POST",
        format!("{base}/custom/5d75393ba28f9a17e1cb0f01"),
        &json,
        streamed_body.clone(),
    )
    .await;
    let mut form = as_user(RECIPE_USER);
    form.push(("content-type", h("application/x-www-form-urlencoded")));
    let read = send(
        false,
        "POST",
        format!("{base}/custom/5d75393ba28f9a17e1cb0f01"),
        &form,
        b"a=1&b=22".to_vec(),
    )
    .await;

    // A rule refusal (the user rules are always enforced) and a report-mode verdict.
    let mut put = as_user(RECIPE_USER);
    put.push(("content-type", h("application/json")));
    let refused = send(
        false,
        "PUT",
        format!("{base}/users/{OWNER}.json"),
        &put,
        br#"{"user":{"full_name":"x"}}"#.to_vec(),
    )
    .await;
    assert_eq!(refused.status, 403);
    let mut form_put = as_user(OCCUPANT);
    form_put.push(("content-type", h("application/x-www-form-urlencoded")));
    let reported = send(
        false,
        "PUT",
        format!("{base}/chat/Dialog/{PRIVATE_ID}.json"),
        &form_put,
        b"name=x".to_vec(),
    )
    .await;
    assert_eq!(reported.status, 200, "{:?}", reported.body);

    let lines = gate.finish();

    let line = access_line(&lines, &user_get.request_id);
    assert_eq!(line["method"], "GET");
    assert_eq!(line["route"], "/users/{id}");
    assert!(
        !line.to_string().contains(&OWNER.to_string()),
        "the id reached the line: {line}"
    );
    assert_eq!(line["status"], user_get.status);
    assert_eq!(line["key"], "any");
    assert_eq!(line["user"], RECIPE_USER);
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["bytes_in"], 0);
    assert_eq!(line["bytes_out"], user_get.body.len());
    let logged_agent = line["user_agent"].as_str().unwrap();
    assert!(
        logged_agent.starts_with("probe \"quoted\" \u{ff} xxx"),
        "{logged_agent:?}"
    );
    assert_eq!(logged_agent.chars().count(), 200, "cut to 200 bytes");
    assert!(line["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["total_ms"].as_f64().unwrap() >= line["upstream_ms"].as_f64().unwrap());
    assert_eq!(line["reason"], "");
    assert!(line.get("report_only").is_none());

    let line = access_line(&lines, &big.request_id);
    assert_eq!(line["protocol"], "HTTP/2");
    assert_eq!(line["route"], "/chat/dialog", "the catalog row");
    assert_eq!(line["bytes_out"], 300_000);
    assert_eq!(line["upstream_status"], 200);

    let line = access_line(&lines, &streamed.request_id);
    assert_eq!(line["method"], "POST");
    assert_eq!(line["route"], "/custom/*", "the unchecked_routes pattern");
    assert_eq!(line["bytes_in"], streamed_body.len());
    assert_eq!(line["bytes_out"], streamed.body.len());
    let line = access_line(&lines, &read.request_id);
    assert_eq!(line["bytes_in"], 8);
    // The unchecked route's own line names the pattern, and its request.
    let unchecked: Vec<&Value> = lines
        .iter()
        .filter(|l| l["request_id"] == streamed.request_id && l["target"] != "qbgate::access")
        .collect();
    assert_eq!(unchecked.len(), 1, "{unchecked:#?}");
    assert_eq!(unchecked[0]["route"], "/custom/*");

    // The rule's line and the access line share the request id.
    let line = access_line(&lines, &refused.request_id);
    assert_eq!(
        (line["status"].clone(), line["reason"].clone()),
        (403.into(), "power_required".into())
    );
    let rule: Vec<&Value> = lines
        .iter()
        .filter(|l| l["request_id"] == refused.request_id && l["target"] != "qbgate::access")
        .collect();
    assert_eq!(rule.len(), 1, "{lines:#?}");
    assert_eq!(rule[0]["level"], "INFO");
    assert_eq!(rule[0]["rule"], line["reason"]);
    assert!(line["bytes_in"].as_u64().unwrap() > 0);

    // Report mode: forwarded, and the line says why enforce would have refused.
    let line = access_line(&lines, &reported.request_id);
    assert_eq!(line["status"], 200);
    assert_eq!(line["reason"], "dialog_name_on_private");
    assert_eq!(line["report_only"], true);
    let warned: Vec<&Value> = lines
        .iter()
        .filter(|l| l["request_id"] == reported.request_id && l["target"] != "qbgate::access")
        .collect();
    assert_eq!(warned.len(), 1, "{lines:#?}");
    assert_eq!(warned[0]["level"], "WARN");
    assert_eq!(warned[0]["rule"], "dialog_name_on_private");

    // Lines outside a request carry no request id.
    assert!(lines.iter().any(|l| l["fields"].is_null()
        && l["message"] == "qbgate serving"
        && l["request_id"].is_null()));
}
