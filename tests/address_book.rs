//! The address book through the gateway against the sandbox's per-user books: a key acting for U
//! uploads, reads and matches U's own book (reaching the sandbox, changing U's book and no one
//! else's), in a JSON body, a Rails form and the query; an application key's upload is 403
//! `need_user`, a user outside the key's list 403 `user_not_allowed`, a `token` parameter 400
//! `token_param`, each with nothing forwarded.

use qbgate::sandbox::seed::{self, OCCUPANT, OUTSIDER, OWNER, RECIPE_USER};
use serde_json::{json, Value};

use crate::support::{Gate, Reply, KEY_ANY, KEY_APP, KEY_LIST};

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// One upload of `contacts` (name, phone) to the book of `udid`, three ways: a JSON body, a Rails
/// form (`contacts[][name]`) and the query; `(name, query, content type, body)`.
fn uploads(
    contacts: &[(&str, &str)],
    udid: &str,
) -> Vec<(&'static str, String, &'static str, String)> {
    let list: Vec<Value> = contacts
        .iter()
        .map(|(name, phone)| json!({"name": name, "phone": phone}))
        .collect();
    let json = json!({"udid": udid, "contacts": list}).to_string();
    let pairs = |open: &str, close: &str| {
        let mut pairs = vec![format!("udid={udid}")];
        for (name, phone) in contacts {
            let phone = phone.replace('+', "%2B");
            pairs.push(format!("contacts{open}{close}{open}name{close}={name}"));
            pairs.push(format!("contacts{open}{close}{open}phone{close}={phone}"));
        }
        pairs.join("&")
    };
    vec![
        ("json", String::new(), JSON, json),
        ("form", String::new(), FORM, pairs("[", "]")),
        (
            "query",
            format!("?{}", pairs("%5B", "%5D")),
            "",
            String::new(),
        ),
    ]
}

async fn send(
    gate: &Gate,
    key: &str,
    user: Option<u64>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Reply {
    let auth = format!("ApiKey {key}");
    let user = user.map(|u| u.to_string());
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(user) = &user {
        headers.push(("on-behalf-of", user.as_str()));
    }
    if !content_type.is_empty() {
        headers.push(("content-type", content_type));
    }
    gate.send(method, path, &headers, body).await
}

/// A gateway error with its status and reason; nothing reached the sandbox.
#[track_caller]
fn assert_refused(gate: &Gate, reply: &Reply, status: u16, reason: &str, what: &str) {
    assert_eq!(reply.reason(), Some(reason), "{what}");
    reply.assert_gate_error(status, reason, "base");
    assert!(gate.sandbox.take_received().is_empty(), "{what}: forwarded");
}

/// The sandbox answered 200 to the one request it received.
#[track_caller]
fn assert_forwarded(gate: &Gate, reply: &Reply, what: &str) -> Value {
    assert_eq!(
        reply.status,
        200,
        "{what}: {:?} {}",
        reply.reason(),
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.reason(), None, "{what}");
    assert_eq!(gate.sandbox.take_received().len(), 1, "{what}");
    reply.json()
}

#[tokio::test]
async fn a_user_uploads_reads_and_matches_his_own_book_in_every_encoding() {
    let gate = Gate::start("").await;
    let occupant_phone = seed::phone(OCCUPANT);
    for encoding in 0..3 {
        // Each encoding uploads to a device of its own.
        let udid = format!("device-{encoding}");
        let (name, query, content_type, body) =
            uploads(&[("Occupant", &occupant_phone)], &udid).swap_remove(encoding);
        let path = format!("/address_book.json{query}");
        let reply = send(
            &gate,
            KEY_ANY,
            Some(RECIPE_USER),
            "POST",
            &path,
            content_type,
            &body,
        )
        .await;
        let answer = assert_forwarded(&gate, &reply, name);
        assert_eq!(answer["created"], 1, "{name}: {answer}");
        // U's book changed, for that device only; no one else's did.
        assert_eq!(
            gate.sandbox.address_book(RECIPE_USER, &udid),
            vec![json!({"name": "Occupant", "phone": occupant_phone})],
            "{name}"
        );
        assert!(gate.sandbox.address_book(RECIPE_USER, "").is_empty());
        assert!(gate.sandbox.address_book(OWNER, &udid).is_empty());

        // Read back as U, and the registered users it matches.
        let reply = send(
            &gate,
            KEY_LIST,
            Some(RECIPE_USER),
            "GET",
            &format!("/address_book.json?udid={udid}"),
            "",
            "",
        )
        .await;
        let book = assert_forwarded(&gate, &reply, name);
        assert_eq!(book[0]["phone"], occupant_phone.as_str(), "{name}");
        let reply = send(
            &gate,
            KEY_ANY,
            Some(RECIPE_USER),
            "GET",
            &format!("/Address_Book/registered_users.json?compact=1&udid={udid}"),
            "",
            "",
        )
        .await;
        let registered = assert_forwarded(&gate, &reply, name);
        assert_eq!(registered["items"][0]["user"]["id"], OCCUPANT, "{name}");
        // Another user reads his own (empty) book, not U's.
        let reply = send(
            &gate,
            KEY_ANY,
            Some(OWNER),
            "GET",
            &format!("/address_book?udid={udid}"),
            "",
            "",
        )
        .await;
        assert_eq!(assert_forwarded(&gate, &reply, name), json!([]));
    }

    // `force=1` replaces U's book of the device: the form way.
    let reply = send(
        &gate,
        KEY_ANY,
        Some(RECIPE_USER),
        "POST",
        "/address_book.json",
        FORM,
        "udid=device-1&force=1&contacts[][name]=New&contacts[][phone]=%2B42",
    )
    .await;
    let answer = assert_forwarded(&gate, &reply, "force");
    assert_eq!(
        (answer["deleted"].clone(), answer["created"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        gate.sandbox.address_book(RECIPE_USER, "device-1"),
        vec![json!({"name": "New", "phone": "+42"})]
    );
}

#[tokio::test]
async fn an_upload_without_a_user_or_for_someone_else_is_refused_and_not_forwarded() {
    let gate = Gate::start("").await;
    for (name, query, content_type, body) in uploads(&[("Someone", "+100")], "device") {
        let path = format!("/address_book.json{query}");
        let what = format!("application {name}");
        let reply = send(&gate, KEY_APP, None, "POST", &path, content_type, &body).await;
        assert_refused(&gate, &reply, 403, "need_user", &what);
        // The route spelled otherwise is the same row.
        let reply = send(
            &gate,
            KEY_APP,
            None,
            "POST",
            &format!("/ADDRESS_BOOK{query}"),
            content_type,
            &body,
        )
        .await;
        assert_refused(&gate, &reply, 403, "need_user", &what);
        // The list key does not act for an outsider: not even his own book.
        let reply = send(
            &gate,
            KEY_LIST,
            Some(OUTSIDER),
            "POST",
            &path,
            content_type,
            &body,
        )
        .await;
        assert_refused(
            &gate,
            &reply,
            403,
            "user_not_allowed",
            &format!("list {name}"),
        );
        // A `token` parameter beside the contacts is a credential.
        let (path, body) = if query.is_empty() {
            let body = if content_type == JSON {
                body.replacen('{', r#"{"token":"abc","#, 1)
            } else {
                format!("{body}&token=abc")
            };
            (path, body)
        } else {
            (format!("{path}&token=abc"), body)
        };
        let reply = send(
            &gate,
            KEY_ANY,
            Some(RECIPE_USER),
            "POST",
            &path,
            content_type,
            &body,
        )
        .await;
        assert_refused(&gate, &reply, 400, "token_param", &format!("token {name}"));
    }
    for user in [RECIPE_USER, OUTSIDER] {
        assert!(gate.sandbox.address_book(user, "device").is_empty());
    }
    // An application key's reads pass (the sandbox, as QuickBlox, wants a user for a book).
    let reply = send(&gate, KEY_APP, None, "GET", "/address_book.json", "", "").await;
    assert_eq!(reply.reason(), None);
    assert_eq!(gate.sandbox.take_received().len(), 1);
}

/// A `token` in the JSON body of any API-key write the rules do not otherwise judge is a
/// credential QuickBlox would honour: 400 `token_param`, nothing forwarded. Nested, it is data.
#[tokio::test]
async fn a_token_in_an_unjudged_json_write_is_refused() {
    let gate = Gate::start("").await;
    let writes = [
        ("/blobs.json", r#"{"blob":{"name":"a"},"token":"abc"}"#),
        (
            "/subscriptions.json",
            r#"{"token":"abc","notification_channel":"apns"}"#,
        ),
        (
            "/address_book.json",
            r#"{"contacts":[],"\u0074oken":"abc"}"#,
        ),
    ];
    for (path, body) in writes {
        let reply = send(&gate, KEY_ANY, Some(RECIPE_USER), "POST", path, JSON, body).await;
        assert_refused(&gate, &reply, 400, "token_param", path);
    }
    let nested = r#"{"blob":{"name":"a","token":"data"}}"#;
    let reply = send(
        &gate,
        KEY_ANY,
        Some(RECIPE_USER),
        "POST",
        "/blobs.json",
        JSON,
        nested,
    )
    .await;
    assert_eq!(reply.reason(), None, "{:?}", reply.body);
    assert_eq!(gate.sandbox.take_received().len(), 1);
}
