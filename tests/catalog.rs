//! The endpoint catalog through the gateway: default deny (`route_unknown`) for custom objects,
//! sessions with an API key and made-up paths in every spelling that normalizes to them;
//! `unchecked_routes` forwarding, logged and counted; `routes` still narrowing; `need_user` for an
//! application key on every write that needs a user; an application key's reads passing; and
//! `QB-Token` requests outside the catalog.

use qbgate::rules::catalog::{Entry, Rule, CATALOG};
use qbgate::sandbox::seed::{GROUP_TOKEN, OWNER};

use crate::support::{digest, Gate, Reply, KEY_ANY, KEY_APP};

/// Acts for any user; lists routes outside the catalog, and a session route (still refused).
const KEY_LOOSE: &str = "catalog-key-loose";
/// Acts for any user; `routes` narrows its `unchecked_routes`.
const KEY_NARROW: &str = "catalog-key-narrow";

async fn gate() -> Gate {
    let keys = format!(
        "- {{ id: catalog-loose, sha256: {}, on_behalf_of: any, unchecked_routes: [GET /data/*, POST /custom/thing.json, POST /session] }}\n\
         - {{ id: catalog-narrow, sha256: {}, on_behalf_of: any, routes: [GET /data/Car, GET /chat/Dialog], unchecked_routes: [GET /data/*] }}\n",
        digest(KEY_LOOSE),
        digest(KEY_NARROW),
    );
    Gate::start_with_keys("", &keys).await
}

/// The request path of a catalog row, its placeholders filled.
fn sample(entry: &Entry) -> String {
    entry
        .path
        .split('/')
        .map(|s| match s {
            "{ids}" => "5d75a,5d75b",
            "{ext}" => "9",
            s if s.starts_with('{') => "5d75",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
        + ".json"
}

#[track_caller]
fn assert_refused(gate: &Gate, reply: &Reply, status: u16, reason: &str) {
    reply.assert_gate_error(status, reason, "base");
    let received = gate.sandbox.take_received();
    assert!(
        received.is_empty(),
        "forwarded: {:?}",
        received
            .iter()
            .map(|r| r.uri.to_string())
            .collect::<Vec<_>>()
    );
}

/// Reached the sandbox, once, and the answer is the sandbox's (no gateway reason).
#[track_caller]
fn assert_forwarded(gate: &Gate, reply: &Reply, what: &str) {
    assert_eq!(
        reply.reason(),
        None,
        "{what}: {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(gate.sandbox.take_received().len(), 1, "{what}");
}

#[tokio::test]
async fn routes_outside_the_catalog_are_route_unknown() {
    let gate = gate().await;
    for (method, path) in [
        ("GET", "/data/Car.json"),
        ("POST", "/data/Car.json"),
        ("PUT", "/data/Car/5d75.json"),
        ("DELETE", "/data/Car/by_criteria.json"),
        ("POST", "/class.json"),
        ("GET", "/made/up/path"),
        ("GET", "/"),
        ("GET", "/chat/Dialog/5d75/extra.json"),
        ("OPTIONS", "/chat/Dialog.json"),
        // Odd spellings of the same routes: case, percent-encoding, `.json`.
        ("GET", "/DATA/car.JSON"),
        ("GET", "/%64ata/Car"),
        ("POST", "/Cl%61ss"),
        // Sessions: known, and refused with an API key.
        ("POST", "/session.json"),
        ("GET", "/session.json"),
        ("DELETE", "/Session"),
        ("POST", "/%73ession.json"),
        ("POST", "/login.json"),
        ("DELETE", "/LOGIN.json"),
    ] {
        for (key, user) in [(KEY_ANY, Some(OWNER)), (KEY_APP, None)] {
            let reply = gate.as_user(key, user, method, path, None).await;
            assert_refused(&gate, &reply, 403, "route_unknown");
        }
    }
}

#[tokio::test]
async fn unchecked_routes_are_forwarded_unjudged_and_counted() {
    qbgate::metrics::handle().expect("the recorder");
    let gate = gate().await;
    for path in ["/data/Car.json", "/DATA/Bike", "/data/%43ar.json"] {
        let reply = gate
            .as_user(KEY_LOOSE, Some(OWNER), "GET", path, None)
            .await;
        assert_forwarded(&gate, &reply, path);
    }
    let reply = gate
        .as_user(KEY_LOOSE, Some(OWNER), "POST", "/custom/thing", Some("{}"))
        .await;
    assert_forwarded(&gate, &reply, "POST /custom/thing");
    // Listed, but not these: another method, another shape.
    for (method, path) in [("POST", "/data/Car.json"), ("GET", "/data/Car/5d75.json")] {
        let reply = gate
            .as_user(KEY_LOOSE, Some(OWNER), method, path, None)
            .await;
        assert_refused(&gate, &reply, 403, "route_unknown");
    }
    // A session route is in the catalog, refused: `unchecked_routes` does not reopen it.
    let reply = gate
        .as_user(KEY_LOOSE, Some(OWNER), "POST", "/session.json", Some("{}"))
        .await;
    assert_refused(&gate, &reply, 403, "route_unknown");
    let text = qbgate::metrics::render();
    assert!(
        text.contains("qbgate_unchecked_requests_total{key=\"catalog-loose\"} 4"),
        "{}",
        text.lines()
            .filter(|l| l.contains("unchecked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(text.contains("# HELP qbgate_unchecked_requests_total"));
}

#[tokio::test]
async fn routes_still_narrows() {
    let gate = gate().await;
    let reply = gate
        .as_user(KEY_NARROW, Some(OWNER), "GET", "/data/Car.json", None)
        .await;
    assert_forwarded(&gate, &reply, "GET /data/Car");
    // In `unchecked_routes`, not in `routes`.
    let reply = gate
        .as_user(KEY_NARROW, Some(OWNER), "GET", "/data/Bike.json", None)
        .await;
    assert_refused(&gate, &reply, 403, "route_not_allowed");
    // In the catalog, not in `routes`.
    let reply = gate
        .as_user(KEY_NARROW, Some(OWNER), "GET", "/users.json", None)
        .await;
    assert_refused(&gate, &reply, 403, "route_not_allowed");
    let reply = gate
        .as_user(KEY_NARROW, Some(OWNER), "GET", "/chat/Dialog.json", None)
        .await;
    assert_forwarded(&gate, &reply, "GET /chat/Dialog");
}

#[tokio::test]
async fn an_application_key_needs_a_user_for_every_write_that_needs_one() {
    let gate = gate().await;
    let writes: Vec<&Entry> = CATALOG.iter().filter(|e| e.needs_user).collect();
    assert!(writes.len() >= 14, "{}", writes.len());
    for entry in writes {
        let path = sample(entry);
        let reply = gate
            .as_user(KEY_APP, None, entry.method, &path, Some("{}"))
            .await;
        assert_refused(&gate, &reply, 403, "need_user");
        // The same with a form body and with query parameters.
        let auth = format!("ApiKey {KEY_APP}");
        let form = [
            ("authorization", auth.as_str()),
            ("content-type", "application/x-www-form-urlencoded"),
        ];
        let reply = gate.send(entry.method, &path, &form, "a[b]=1&c=2").await;
        assert_refused(&gate, &reply, 403, "need_user");
        let query = format!("{path}?a%5Bb%5D=1&c=2");
        let reply = gate.send(entry.method, &query, &form[..1], "").await;
        assert_refused(&gate, &reply, 403, "need_user");
        // PATCH is routed as PUT: the same row.
        if entry.method == "PUT" {
            let reply = gate
                .as_user(KEY_APP, None, "PATCH", &path, Some("{}"))
                .await;
            assert_refused(&gate, &reply, 403, "need_user");
        }
        // A key acting for a user is not refused for it.
        let reply = gate
            .as_user(KEY_ANY, Some(OWNER), entry.method, &path, Some("{}"))
            .await;
        assert_ne!(reply.reason(), Some("need_user"), "{path}");
        assert_ne!(reply.reason(), Some("route_unknown"), "{path}");
        gate.sandbox.take_received();
    }
}

#[tokio::test]
async fn an_application_key_reads_the_catalog() {
    let gate = gate().await;
    for entry in CATALOG
        .iter()
        .filter(|e| e.method == "GET" && e.rule != Rule::Refused)
    {
        let path = sample(entry);
        let reply = gate.as_user(KEY_APP, None, "GET", &path, None).await;
        assert_forwarded(&gate, &reply, &path);
        let reply = gate.as_user(KEY_APP, None, "HEAD", &path, None).await;
        assert_forwarded(&gate, &reply, &path);
    }
}

#[tokio::test]
async fn qb_token_requests_are_not_subject_to_the_catalog() {
    let gate = gate().await;
    let reply = gate
        .send("GET", "/data/Car.json", &[("qb-token", GROUP_TOKEN)], "")
        .await;
    assert_forwarded(&gate, &reply, "QB-Token GET /data/Car");
}

#[test]
fn check_prints_what_each_key_reaches() {
    let dir = std::env::temp_dir().join(format!("qbgate-catalog-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.yaml");
    let text = format!(
        "version: 1\nkeys:\n  - {{ id: billing-service, sha256: {}, routes: ['* /chat/Dialog', GET /users/*] }}\n",
        digest(KEY_LOOSE)
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qbgate"))
        .args(["check", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "billing-service: users (read), dialogs (partly); refused: sessions, messages, push, blobs, address book, custom objects\n"
        ),
        "{stdout}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unchecked_routes entry that names a catalog endpoint does nothing there: a warning.
    let text = format!(
        "version: 1\nkeys:\n  - {{ id: loose, sha256: {}, unchecked_routes: ['* /session', GET /data/*] }}\n",
        digest(KEY_LOOSE)
    );
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_qbgate"))
        .args(["check", "--policy"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: key `loose`: an unchecked_routes entry names POST /session")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
