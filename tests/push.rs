//! The push rules through the gateway against the sandbox: every row of the rule table
//! (`rules::push`), allowed (it reaches the sandbox and takes effect) and refused (status, reason,
//! nothing forwarded but the lookups), with the parameters in a JSON body, a form body and the
//! query; an event's owner looked up without `On-Behalf-Of`, a user's subscriptions as the user;
//! `on_lookup_error`.

use qbgate::sandbox::seed::{
    EVENT_BY_OCCUPANT, EVENT_BY_RECIPE, OCCUPANT, OUTSIDER, RECIPE_USER, SUBSCRIPTION_BY_OCCUPANT,
    SUBSCRIPTION_BY_RECIPE,
};
use qbgate::sandbox::Fault;
use serde_json::{json, Map, Value};

use crate::support::{Gate, Reply, KEY_ANY, KEY_APP};

/// One way to send parameters: a query to append, a content type and a body.
struct Encoded {
    name: &'static str,
    query: String,
    content_type: &'static str,
    body: String,
}

/// `name[a][b]=value` pairs as a nested JSON body, a form body and the query. A value that
/// starts with `[` is a JSON array in the JSON body (and a comma-separated string elsewhere).
fn encodings(fields: &[(&str, &str)]) -> Vec<Encoded> {
    let mut doc = Map::new();
    for (key, value) in fields {
        let names: Vec<&str> = key.split(['[', ']']).filter(|s| !s.is_empty()).collect();
        let mut at = &mut doc;
        for name in &names[..names.len() - 1] {
            at = at
                .entry(*name)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap();
        }
        let value = match value.strip_prefix('[') {
            Some(_) => serde_json::from_str(value).unwrap(),
            None => json!(value),
        };
        at.insert(names[names.len() - 1].to_owned(), value);
    }
    let flat = |v: &str| v.trim_matches(['[', ']']).replace('"', "");
    let pairs = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", flat(v)))
        .collect::<Vec<_>>()
        .join("&");
    vec![
        Encoded {
            name: "json",
            query: String::new(),
            content_type: "application/json",
            body: Value::Object(doc).to_string(),
        },
        Encoded {
            name: "form",
            query: String::new(),
            content_type: "application/x-www-form-urlencoded",
            body: pairs.clone(),
        },
        Encoded {
            name: "query",
            query: format!("?{pairs}"),
            content_type: "",
            body: String::new(),
        },
    ]
}

/// No parameters.
fn nothing() -> Encoded {
    Encoded {
        name: "none",
        query: String::new(),
        content_type: "",
        body: String::new(),
    }
}

/// `method path` with the `any` key acting for `user`, or the application key for `None`.
async fn send(gate: &Gate, user: Option<u64>, method: &str, path: &str, enc: &Encoded) -> Reply {
    let auth = format!("ApiKey {}", if user.is_some() { KEY_ANY } else { KEY_APP });
    let user = user.map(|u| u.to_string());
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(user) = &user {
        headers.push(("on-behalf-of", user.as_str()));
    }
    if !enc.content_type.is_empty() {
        headers.push(("content-type", enc.content_type));
    }
    gate.send(method, &format!("{path}{}", enc.query), &headers, &enc.body)
        .await
}

/// A lookup: an event fetched without `On-Behalf-Of`, or a user's subscriptions fetched as him.
fn is_lookup(r: &qbgate::sandbox::Recorded) -> bool {
    let path = r.uri.path();
    let as_user = r.headers.contains_key("on-behalf-of");
    r.method == "GET"
        && ((path.starts_with("/events/") && !as_user)
            || (path == "/subscriptions.json" && as_user))
}

/// A gateway error with its status, reason and shape; the sandbox received lookups at most.
#[track_caller]
fn assert_refused(gate: &Gate, reply: &Reply, status: u16, reason: &str, key: &str, what: &str) {
    crate::support::assert_refused_after_lookups(
        gate,
        reply,
        (status, reason, key),
        is_lookup,
        what,
    );
}

/// The sandbox answered `status` to the request sent (the last it received; the others
/// lookups). Returns the answer's JSON.
#[track_caller]
fn assert_forwarded(gate: &Gate, reply: &Reply, status: u16, what: &str) -> Value {
    assert_eq!(
        reply.status,
        status,
        "{what}: {:?} {}",
        reply.reason(),
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.reason(), None, "{what}");
    let received = gate.sandbox.take_received();
    let (last, lookups) = received.split_last().expect("nothing forwarded");
    assert!(
        !is_lookup(last) || last.method != "GET",
        "{what}: only lookups were sent"
    );
    assert!(lookups.iter().all(is_lookup), "{what}");
    reply.json()
}

fn event_ids(gate: &Gate) -> Vec<u64> {
    gate.sandbox
        .events()
        .iter()
        .filter_map(|e| e["id"].as_u64())
        .collect()
}

fn subscription_ids(gate: &Gate) -> Vec<u64> {
    gate.sandbox
        .subscriptions()
        .iter()
        .filter_map(|s| s["id"].as_u64())
        .collect()
}

#[tokio::test]
async fn a_push_now_to_named_users_is_sent() {
    let gate = Gate::start("").await;
    let to = format!("{OUTSIDER},{OCCUPANT}");
    let cases: [&[(&str, &str)]; 3] = [
        &[
            ("event[notification_type]", "push"),
            ("event[user][ids]", &to),
            ("event[message]", "aGVsbG8="),
        ],
        &[
            ("event[notification_type]", "push"),
            ("event[event_type]", "one_shot"),
            ("event[external_user][ids]", "[\"7000000123\"]"),
        ],
        &[
            ("event[notification_type]", "push"),
            ("event[user][ids]", "[\"55500001\"]"),
            ("event[external_user][ids]", "7000000123"),
        ],
    ];
    for fields in cases {
        for enc in encodings(fields) {
            let what = format!("{fields:?}, {}", enc.name);
            let reply = send(&gate, Some(RECIPE_USER), "POST", "/events.json", &enc).await;
            let body = assert_forwarded(&gate, &reply, 201, &what);
            assert_eq!(body["event"]["user_id"], json!(RECIPE_USER), "{what}");
            let id = body["event"]["id"].as_u64().unwrap();
            assert!(event_ids(&gate).contains(&id), "{what}");
        }
    }
}

/// Fields sent, and the status, reason and error key expected.
type Refusal<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str, &'a str);

#[tokio::test]
async fn an_event_that_is_not_a_push_now_to_named_users_is_refused() {
    let gate = Gate::start("").await;
    let many: Vec<String> = (1..=51).map(|n| n.to_string()).collect();
    let many = many.join(",");
    let fifty: Vec<String> = (1..=50).map(|n| n.to_string()).collect();
    let fifty = fifty.join(",");
    let push = ("event[notification_type]", "push");
    let to = ("event[user][ids]", "55500001");
    let cases: Vec<Refusal> = vec![
        (
            vec![("event[notification_type]", "email"), to],
            403,
            "push_type",
            "base",
        ),
        (vec![to], 403, "push_type", "base"),
        (
            vec![push, ("event[event_type]", "fixed_date"), to],
            403,
            "push_schedule",
            "base",
        ),
        (
            vec![push, ("event[event_type]", "period_date"), to],
            403,
            "push_schedule",
            "base",
        ),
        (
            vec![push, ("event[user][tags][any]", "vip")],
            403,
            "push_recipients",
            "base",
        ),
        (
            vec![push, to, ("event[user][tags][exclude]", "x")],
            403,
            "push_recipients",
            "base",
        ),
        (vec![push], 422, "push_recipients", "event"),
        (
            vec![push, ("event[user][ids]", &many)],
            422,
            "push_recipients",
            "event",
        ),
        (
            vec![
                push,
                ("event[user][ids]", &fifty),
                ("event[external_user][ids]", "9"),
            ],
            422,
            "push_recipients",
            "event",
        ),
        (
            vec![push, ("event[user][ids]", "1,abc")],
            422,
            "push_recipients",
            "event",
        ),
        (
            vec![push, to, ("event[user_id]", "96754523")],
            403,
            "push_fields",
            "base",
        ),
    ];
    for (fields, status, reason, key) in &cases {
        for enc in encodings(fields) {
            let what = format!("{fields:?}, {}", enc.name);
            let before = event_ids(&gate).len();
            let reply = send(&gate, Some(RECIPE_USER), "POST", "/events.json", &enc).await;
            assert_refused(&gate, &reply, *status, reason, key, &what);
            assert_eq!(event_ids(&gate).len(), before, "{what}");
        }
    }
    // Fifty recipients are allowed.
    let enc = &encodings(&[push, ("event[user][ids]", &fifty)])[0];
    let reply = send(&gate, Some(RECIPE_USER), "POST", "/events.json", enc).await;
    assert_forwarded(&gate, &reply, 201, "fifty");
    // An application key: the catalog's need_user.
    let enc = &encodings(&[push, to])[0];
    let reply = send(&gate, None, "POST", "/events.json", enc).await;
    assert_refused(&gate, &reply, 403, "need_user", "base", "app key");
}

#[tokio::test]
async fn lists_pass() {
    let gate = Gate::start("").await;
    let reply = send(&gate, Some(RECIPE_USER), "GET", "/events.json", &nothing()).await;
    assert_eq!(reply.status, 200);
    let items = reply.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["event"]["id"], json!(EVENT_BY_RECIPE));
    let reply = send(
        &gate,
        Some(OCCUPANT),
        "GET",
        "/subscriptions.json",
        &nothing(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()[0]["subscription"]["id"],
        json!(SUBSCRIPTION_BY_OCCUPANT)
    );
    let received = gate.sandbox.take_received();
    assert_eq!(received.len(), 2, "no lookups for a list");
}

#[tokio::test]
async fn a_user_reads_changes_and_deletes_only_his_own_events() {
    let gate = Gate::start("").await;
    let own = format!("/events/{EVENT_BY_RECIPE}.json");
    let other = format!("/events/{EVENT_BY_OCCUPANT}.json");
    // Another user's event, or none: 404 whatever the method, nothing changed.
    for path in [other.as_str(), "/events/999999.json", "/events/abc.json"] {
        for method in ["GET", "PUT", "DELETE"] {
            // A change in a JSON body, a form body and the query.
            let encs = if method == "PUT" {
                encodings(&[("event[message]", "bWluZQ==")])
            } else {
                vec![nothing()]
            };
            for enc in &encs {
                let what = format!("{method} {path} {}", enc.name);
                let reply = send(&gate, Some(RECIPE_USER), method, path, enc).await;
                assert_refused(&gate, &reply, 404, "event_not_owner", "base", &what);
            }
        }
    }
    assert!(event_ids(&gate).contains(&EVENT_BY_OCCUPANT));
    let other_event = gate
        .sandbox
        .events()
        .into_iter()
        .find(|e| e["id"] == json!(EVENT_BY_OCCUPANT))
        .unwrap();
    assert_eq!(other_event["message"], json!("c2VlZGVk"));
    // The owner looked up without On-Behalf-Of.
    let reply = send(&gate, Some(RECIPE_USER), "GET", &own, &nothing()).await;
    let body = assert_forwarded(&gate, &reply, 200, "get own");
    assert_eq!(body["event"]["user_id"], json!(RECIPE_USER));
    for enc in encodings(&[("event[message]", "bmV3")]) {
        let what = format!("put own, {}", enc.name);
        let reply = send(&gate, Some(RECIPE_USER), "PUT", &own, &enc).await;
        let body = assert_forwarded(&gate, &reply, 200, &what);
        assert_eq!(body["event"]["message"], json!("bmV3"), "{what}");
    }
    // An update is held to the create rules for the fields it gives.
    for (fields, reason) in [
        (&[("event[event_type]", "period_date")][..], "push_schedule"),
        (&[("event[notification_type]", "email")][..], "push_type"),
        (&[("event[user][tags][any]", "vip")][..], "push_recipients"),
    ] {
        for enc in encodings(fields) {
            let what = format!("{fields:?}, {}", enc.name);
            let reply = send(&gate, Some(RECIPE_USER), "PUT", &own, &enc).await;
            assert_refused(&gate, &reply, 403, reason, "base", &what);
        }
    }
    let reply = send(&gate, Some(RECIPE_USER), "DELETE", &own, &nothing()).await;
    assert_forwarded(&gate, &reply, 200, "delete own");
    assert!(!event_ids(&gate).contains(&EVENT_BY_RECIPE));
    // Deleted: evicted, looked up again, and gone.
    let reply = send(&gate, Some(RECIPE_USER), "GET", &own, &nothing()).await;
    assert_refused(&gate, &reply, 404, "event_not_owner", "base", "deleted");
    // The owner reaches his own; an application key reads any (not judged).
    let reply = send(&gate, Some(OCCUPANT), "GET", &other, &nothing()).await;
    assert_forwarded(&gate, &reply, 200, "occupant's own");
    let reply = send(&gate, None, "GET", &other, &nothing()).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn a_user_deletes_only_his_own_subscriptions() {
    let gate = Gate::start("").await;
    for path in [
        format!("/subscriptions/{SUBSCRIPTION_BY_OCCUPANT}.json"),
        "/subscriptions/424242.json".to_owned(),
        "/subscriptions/x.json".to_owned(),
    ] {
        let reply = send(&gate, Some(RECIPE_USER), "DELETE", &path, &nothing()).await;
        assert_refused(&gate, &reply, 403, "subscription_not_owner", "base", &path);
    }
    assert!(subscription_ids(&gate).contains(&SUBSCRIPTION_BY_OCCUPANT));
    // Created through the gateway (passes), then deleted at once: the cached list is refreshed.
    let fields = [
        ("notification_channel", "apns"),
        ("device[platform]", "ios"),
        ("device[udid]", "new-phone"),
    ];
    let mut created = Vec::new();
    for enc in encodings(&fields) {
        let what = format!("create, {}", enc.name);
        let reply = send(
            &gate,
            Some(RECIPE_USER),
            "POST",
            "/subscriptions.json",
            &enc,
        )
        .await;
        let body = assert_forwarded(&gate, &reply, 201, &what);
        assert_eq!(body[0]["subscription"]["user_id"], json!(RECIPE_USER));
        created.push(body[0]["subscription"]["id"].as_u64().unwrap());
    }
    for id in created.iter().copied().chain([SUBSCRIPTION_BY_RECIPE]) {
        let what = format!("delete {id}");
        let path = format!("/subscriptions/{id}.json");
        let reply = send(&gate, Some(RECIPE_USER), "DELETE", &path, &nothing()).await;
        assert_forwarded(&gate, &reply, 200, &what);
        assert!(!subscription_ids(&gate).contains(&id), "{what}");
    }
    // Deleted: a second delete is refused.
    let path = format!("/subscriptions/{SUBSCRIPTION_BY_RECIPE}.json");
    let reply = send(&gate, Some(RECIPE_USER), "DELETE", &path, &nothing()).await;
    assert_refused(
        &gate,
        &reply,
        403,
        "subscription_not_owner",
        "base",
        "twice",
    );
    // An application key: the catalog's need_user.
    let reply = send(&gate, None, "DELETE", &path, &nothing()).await;
    assert_refused(&gate, &reply, 403, "need_user", "base", "app key");
}

#[tokio::test]
async fn a_failed_lookup_follows_on_lookup_error() {
    let path = format!("/events/{EVENT_BY_RECIPE}.json");
    let sub = format!("/subscriptions/{SUBSCRIPTION_BY_RECIPE}.json");
    for sections in ["", "dialog_rules:\n  on_lookup_error: reject"] {
        let gate = Gate::start(sections).await;
        gate.sandbox.set_fault(Fault::Status(500));
        let reply = send(&gate, Some(RECIPE_USER), "GET", &path, &nothing()).await;
        assert_refused(&gate, &reply, 503, "lookup_failed", "base", sections);
        let reply = send(&gate, Some(RECIPE_USER), "DELETE", &sub, &nothing()).await;
        assert_refused(&gate, &reply, 503, "lookup_failed", "base", sections);
    }
    let gate = Gate::start("dialog_rules:\n  on_lookup_error: forward").await;
    gate.sandbox.set_fault(Fault::Status(500));
    for (method, path) in [("GET", &path), ("DELETE", &sub)] {
        let reply = send(&gate, Some(RECIPE_USER), method, path, &nothing()).await;
        assert_eq!(reply.status, 500);
        assert_eq!(reply.reason(), None);
        let received = gate.sandbox.take_received();
        assert_eq!(received.last().map(|r| r.method.as_str()), Some(method));
        assert_eq!(received.len(), 2, "{method}: a lookup, then the request");
    }
    // Rules that need no lookup still hold.
    gate.sandbox.set_fault(Fault::None);
    let enc = &encodings(&[("event[notification_type]", "email")])[0];
    let reply = send(&gate, Some(RECIPE_USER), "POST", "/events.json", enc).await;
    assert_refused(&gate, &reply, 403, "push_type", "base", "email");
}
