//! The chat-message rules through the gateway against the sandbox: every row of the rule table
//! (`rules::messages`), allowed (it reaches the sandbox and takes effect) and refused (status,
//! reason, nothing forwarded but the lookups), with the parameters in a JSON body, a form body
//! and the query; the lookups made without `On-Behalf-Of`; `on_lookup_error`.

use qbgate::sandbox::seed::{
    GROUP_ID, GROUP_MESSAGE_BY_OCCUPANT, GROUP_MESSAGE_BY_RECIPE, GROUP_MESSAGE_BY_RECIPE_2,
    OCCUPANT, OTHER_OCCUPANT, OUTSIDER, PRIVATE_ID, PRIVATE_MESSAGE_BY_OCCUPANT,
    PRIVATE_MESSAGE_BY_RECIPE, PUBLIC_ID, RECIPE_USER,
};
use qbgate::sandbox::Fault;
use serde_json::json;

use crate::support::Encoded;
use crate::support::{Gate, Reply, KEY_ANY, KEY_APP};

/// Top-level `field=value` pairs as a JSON body, a form body and the query.
fn encodings(fields: &[(&str, &str)]) -> Vec<Encoded> {
    crate::support::encodings(None, fields)
}

/// The query alone (for GETs).
fn query(fields: &[(&str, &str)]) -> Encoded {
    encodings(fields).pop().unwrap()
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

/// A lookup: a GET of a dialog or of messages, without `On-Behalf-Of`.
fn is_lookup(r: &qbgate::sandbox::Recorded) -> bool {
    let path = r.uri.path();
    r.method == "GET"
        && (path == "/chat/Dialog.json" || path == "/chat/Message.json")
        && !r.headers.contains_key("on-behalf-of")
        && r.uri
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("_id")))
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

/// The sandbox answered `status`; the last request it received was the one sent, the others
/// lookups. Returns the answer's JSON.
#[track_caller]
fn assert_forwarded(gate: &Gate, reply: &Reply, status: u16, what: &str) -> serde_json::Value {
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
    assert!(!is_lookup(last), "{what}: only lookups were sent");
    assert!(lookups.iter().all(is_lookup), "{what}");
    reply.json()
}

fn texts(gate: &Gate, dialog: &str) -> Vec<String> {
    gate.sandbox
        .dialog_messages(dialog)
        .iter()
        .map(|m| m["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_message_to_a_dialog_needs_a_member_unless_the_dialog_is_public() {
    let gate = Gate::start("").await;
    for enc in encodings(&[("chat_dialog_id", GROUP_ID), ("message", "hello-group")]) {
        let what = format!("member, {}", enc.name);
        let reply = send(
            &gate,
            Some(OTHER_OCCUPANT),
            "POST",
            "/chat/Message.json",
            &enc,
        )
        .await;
        let sent = assert_forwarded(&gate, &reply, 200, &what);
        assert_eq!(sent["sender_id"], json!(OTHER_OCCUPANT), "{what}");
        assert_eq!(sent["chat_dialog_id"], json!(GROUP_ID), "{what}");
        let reply = send(&gate, Some(OUTSIDER), "POST", "/chat/Message.json", &enc).await;
        assert_refused(&gate, &reply, 403, "message_not_occupant", "base", enc.name);
    }
    assert_eq!(
        texts(&gate, GROUP_ID)
            .iter()
            .filter(|t| *t == "hello-group")
            .count(),
        3
    );
    // PRIVATE: the other occupant of GROUP is an outsider here.
    for enc in encodings(&[("chat_dialog_id", PRIVATE_ID), ("message", "psst")]) {
        let reply = send(
            &gate,
            Some(OTHER_OCCUPANT),
            "POST",
            "/chat/Message.json",
            &enc,
        )
        .await;
        assert_refused(&gate, &reply, 403, "message_not_occupant", "base", enc.name);
        let reply = send(&gate, Some(RECIPE_USER), "POST", "/chat/Message.json", &enc).await;
        assert_forwarded(&gate, &reply, 200, enc.name);
    }
    assert!(!texts(&gate, PRIVATE_ID).is_empty());
    // PUBLIC_GROUP: anyone.
    for enc in encodings(&[("chat_dialog_id", PUBLIC_ID), ("message", "hi-all")]) {
        let reply = send(&gate, Some(OUTSIDER), "POST", "/chat/Message.json", &enc).await;
        assert_forwarded(&gate, &reply, 200, enc.name);
    }
    // A dialog that does not exist.
    let enc = &encodings(&[("chat_dialog_id", "5d75393ba28f9a17e1cbffff")])[0];
    let reply = send(&gate, Some(RECIPE_USER), "POST", "/chat/Message.json", enc).await;
    assert_refused(
        &gate,
        &reply,
        404,
        "dialog_not_found",
        "base",
        "missing dialog",
    );
}

#[tokio::test]
async fn a_message_names_one_target_and_no_field_quickblox_sets() {
    let gate = Gate::start("").await;
    let me = RECIPE_USER.to_string();
    let outsider = OUTSIDER.to_string();
    for field in ["sender_id", "read_ids", "delivered_ids", "_id"] {
        for enc in encodings(&[("chat_dialog_id", GROUP_ID), (field, &outsider)]) {
            let what = format!("{field}, {}", enc.name);
            let reply = send(&gate, Some(RECIPE_USER), "POST", "/chat/Message.json", &enc).await;
            assert_refused(&gate, &reply, 422, "message_fields", field, &what);
        }
    }
    for (fields, key) in [
        (vec![("message", "nowhere")], "chat_dialog_id"),
        (
            vec![
                ("chat_dialog_id", GROUP_ID),
                ("recipient_id", outsider.as_str()),
            ],
            "chat_dialog_id",
        ),
        (vec![("recipient_id", me.as_str())], "recipient_id"),
        (vec![("recipient_id", "0")], "recipient_id"),
        (vec![("recipient_id", "abc")], "recipient_id"),
    ] {
        for enc in encodings(&fields) {
            let what = format!("{fields:?}, {}", enc.name);
            let reply = send(&gate, Some(RECIPE_USER), "POST", "/chat/Message.json", &enc).await;
            assert_refused(&gate, &reply, 422, "message_target", key, &what);
        }
    }
    // To another user: no lookup, the private dialog of the two made by the sandbox.
    for enc in encodings(&[("recipient_id", &outsider), ("message", "hi-stranger")]) {
        let reply = send(&gate, Some(RECIPE_USER), "POST", "/chat/Message.json", &enc).await;
        let received_before = gate.sandbox.received().len();
        assert_eq!(received_before, 1, "{}: a lookup was made", enc.name);
        let sent = assert_forwarded(&gate, &reply, 200, enc.name);
        assert_eq!(sent["recipient_id"], json!(OUTSIDER));
    }
}

#[tokio::test]
async fn an_application_key_reads_but_does_not_write() {
    let gate = Gate::start("").await;
    let id = GROUP_MESSAGE_BY_RECIPE;
    let writes = [
        (
            "POST",
            "/chat/Message.json".to_owned(),
            vec![("chat_dialog_id", GROUP_ID), ("message", "x")],
        ),
        (
            "PUT",
            format!("/chat/Message/{id}.json"),
            vec![("chat_dialog_id", GROUP_ID), ("read", "1")],
        ),
        (
            "DELETE",
            format!("/chat/Message/{id}.json"),
            vec![("force", "1"), ("chat_dialog_id", GROUP_ID)],
        ),
        ("DELETE", format!("/chat/Message/{id}.json"), vec![]),
        (
            "PUT",
            format!("/chat/Dialog/{GROUP_ID}/notifications.json"),
            vec![("enabled", "0")],
        ),
    ];
    for (method, path, fields) in &writes {
        for enc in encodings(fields) {
            let what = format!("{method} {path} {}", enc.name);
            let reply = send(&gate, None, method, path, &enc).await;
            assert_refused(&gate, &reply, 403, "need_user", "base", &what);
        }
    }
    assert!(gate.sandbox.message(id).is_some());
    let reply = send(
        &gate,
        None,
        "GET",
        "/chat/Message.json",
        &query(&[("chat_dialog_id", GROUP_ID)]),
    )
    .await;
    let list = assert_forwarded(&gate, &reply, 200, "app list");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3));
    let reply = send(
        &gate,
        None,
        "GET",
        &format!("/chat/Dialog/{GROUP_ID}/notifications.json"),
        &query(&[]),
    )
    .await;
    // The sandbox, like QuickBlox, wants a user for notifications: what matters is that it got the request.
    assert_eq!(reply.reason(), None);
    gate.sandbox.take_received();
}

#[tokio::test]
async fn a_message_list_needs_the_dialog_and_a_member() {
    let gate = Gate::start("").await;
    let group = [("chat_dialog_id", GROUP_ID)];
    let reply = send(
        &gate,
        Some(OTHER_OCCUPANT),
        "GET",
        "/chat/Message.json",
        &query(&group),
    )
    .await;
    let list = assert_forwarded(&gate, &reply, 200, "member");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(3));
    // The list marked them read for him (the lookup, made as the application, marked nothing).
    let read = gate.sandbox.message(GROUP_MESSAGE_BY_RECIPE).unwrap()["read_ids"].clone();
    assert_eq!(read, json!([RECIPE_USER, OTHER_OCCUPANT]));
    let reply = send(
        &gate,
        Some(OUTSIDER),
        "GET",
        "/chat/Message.json",
        &query(&group),
    )
    .await;
    assert_refused(
        &gate,
        &reply,
        403,
        "message_not_occupant",
        "base",
        "outsider",
    );
    let reply = send(
        &gate,
        Some(OUTSIDER),
        "GET",
        "/chat/Message.json",
        &query(&[]),
    )
    .await;
    assert_refused(
        &gate,
        &reply,
        422,
        "message_target",
        "chat_dialog_id",
        "no dialog",
    );
    let reply = send(
        &gate,
        Some(OUTSIDER),
        "GET",
        "/chat/Message.json",
        &query(&[("chat_dialog_id", PUBLIC_ID)]),
    )
    .await;
    assert_forwarded(&gate, &reply, 200, "public");
    // A body on a GET is read too: Rails would merge it.
    let reply = gate
        .send(
            "GET",
            &format!("/chat/Message.json?chat_dialog_id={PUBLIC_ID}"),
            &[
                ("authorization", &format!("ApiKey {KEY_ANY}")),
                ("on-behalf-of", &OUTSIDER.to_string()),
                ("content-type", "application/json"),
            ],
            &format!(r#"{{"limit":1,"_id":"{GROUP_MESSAGE_BY_RECIPE}"}}"#),
        )
        .await;
    assert_forwarded(&gate, &reply, 200, "public, body");
    let reply = send(
        &gate,
        Some(OUTSIDER),
        "GET",
        "/chat/Message/unread.json",
        &query(&[]),
    )
    .await;
    assert_forwarded(&gate, &reply, 200, "unread");
}

#[tokio::test]
async fn a_message_update_marks_for_members_and_edits_for_the_sender() {
    let gate = Gate::start("").await;
    let path = format!("/chat/Message/{GROUP_MESSAGE_BY_RECIPE}.json");
    for enc in encodings(&[
        ("chat_dialog_id", GROUP_ID),
        ("read", "1"),
        ("delivered", "1"),
    ]) {
        let reply = send(&gate, Some(OTHER_OCCUPANT), "PUT", &path, &enc).await;
        assert_forwarded(&gate, &reply, 200, enc.name);
        let reply = send(&gate, Some(OUTSIDER), "PUT", &path, &enc).await;
        assert_refused(&gate, &reply, 403, "message_not_occupant", "base", enc.name);
    }
    let message = gate.sandbox.message(GROUP_MESSAGE_BY_RECIPE).unwrap();
    assert_eq!(
        message["delivered_ids"],
        json!([RECIPE_USER, OTHER_OCCUPANT])
    );
    for enc in encodings(&[("chat_dialog_id", GROUP_ID), ("sender_id", "1")]) {
        let reply = send(&gate, Some(RECIPE_USER), "PUT", &path, &enc).await;
        assert_refused(&gate, &reply, 422, "message_fields", "sender_id", enc.name);
    }
    for enc in encodings(&[("read", "1")]) {
        let reply = send(&gate, Some(RECIPE_USER), "PUT", &path, &enc).await;
        assert_refused(
            &gate,
            &reply,
            422,
            "message_target",
            "chat_dialog_id",
            enc.name,
        );
    }
    // A text edit: the sender only; the message looked up without On-Behalf-Of.
    for (n, enc) in encodings(&[("chat_dialog_id", GROUP_ID), ("message", "edited")])
        .into_iter()
        .enumerate()
    {
        let reply = send(&gate, Some(OTHER_OCCUPANT), "PUT", &path, &enc).await;
        let lookups = gate.sandbox.received();
        if n == 0 {
            assert!(
                lookups.iter().any(|r| r.uri.path() == "/chat/Message.json"
                    && r.uri
                        .query()
                        .is_some_and(|q| q.contains(&format!("_id={GROUP_MESSAGE_BY_RECIPE}")))
                    && !r.headers.contains_key("on-behalf-of")),
                "{lookups:?}"
            );
        }
        assert_refused(&gate, &reply, 403, "message_not_sender", "base", enc.name);
        let reply = send(&gate, Some(RECIPE_USER), "PUT", &path, &enc).await;
        assert_forwarded(&gate, &reply, 200, enc.name);
    }
    let message = gate.sandbox.message(GROUP_MESSAGE_BY_RECIPE).unwrap();
    assert_eq!(message["message"], json!("edited"));
    // Another dialog's id with the message: the message is not in it.
    let enc = &encodings(&[("chat_dialog_id", PRIVATE_ID), ("message", "moved")])[0];
    let reply = send(&gate, Some(RECIPE_USER), "PUT", &path, enc).await;
    assert_refused(
        &gate,
        &reply,
        403,
        "message_not_sender",
        "base",
        "other dialog",
    );
}

#[tokio::test]
async fn a_force_delete_needs_the_dialog_owner_and_his_own_messages() {
    let gate = Gate::start("").await;
    // Without force: anyone, for himself.
    let path = format!("/chat/Message/{GROUP_MESSAGE_BY_OCCUPANT}.json");
    let reply = send(&gate, Some(OUTSIDER), "DELETE", &path, &query(&[])).await;
    assert_forwarded(&gate, &reply, 200, "no force");
    assert_eq!(
        gate.sandbox.message(GROUP_MESSAGE_BY_OCCUPANT).unwrap()["deleted_for"],
        json!([OUTSIDER])
    );
    // With force: refused as a whole when one message is not his.
    let both = format!("/chat/Message/{GROUP_MESSAGE_BY_RECIPE},{GROUP_MESSAGE_BY_OCCUPANT}.json");
    for enc in encodings(&[("force", "1"), ("chat_dialog_id", GROUP_ID)]) {
        let reply = send(&gate, Some(RECIPE_USER), "DELETE", &both, &enc).await;
        assert_refused(
            &gate,
            &reply,
            403,
            "message_force_not_owner",
            "base",
            enc.name,
        );
        // His own message in a dialog he does not own.
        let reply = send(
            &gate,
            Some(RECIPE_USER),
            "DELETE",
            &format!("/chat/Message/{PRIVATE_MESSAGE_BY_RECIPE}.json"),
            &encodings(&[("force", "1"), ("chat_dialog_id", PRIVATE_ID)])[0],
        )
        .await;
        assert_refused(
            &gate,
            &reply,
            403,
            "message_force_not_owner",
            "base",
            enc.name,
        );
    }
    let enc = &encodings(&[("force", "1")])[1];
    let reply = send(&gate, Some(RECIPE_USER), "DELETE", &both, enc).await;
    assert_refused(
        &gate,
        &reply,
        422,
        "message_target",
        "chat_dialog_id",
        "no dialog",
    );
    assert!(gate.sandbox.message(GROUP_MESSAGE_BY_RECIPE).is_some());
    // Both his, in his dialog: deleted; looked up with `_id[in]`.
    let mine = format!("/chat/Message/{GROUP_MESSAGE_BY_RECIPE},{GROUP_MESSAGE_BY_RECIPE_2}.json");
    let enc = &encodings(&[("force", "1"), ("chat_dialog_id", GROUP_ID)])[1];
    let reply = send(&gate, Some(RECIPE_USER), "DELETE", &mine, enc).await;
    assert_forwarded(&gate, &reply, 200, "own");
    assert!(gate.sandbox.message(GROUP_MESSAGE_BY_RECIPE).is_none());
    assert!(gate.sandbox.message(GROUP_MESSAGE_BY_RECIPE_2).is_none());
    // The owner of PRIVATE, his own message there, force in the query.
    let enc = query(&[("force", "1"), ("chat_dialog_id", PRIVATE_ID)]);
    let path = format!("/chat/Message/{PRIVATE_MESSAGE_BY_OCCUPANT}.json");
    let reply = send(&gate, Some(OCCUPANT), "DELETE", &path, &enc).await;
    assert_forwarded(&gate, &reply, 200, "private owner");
    assert!(gate.sandbox.message(PRIVATE_MESSAGE_BY_OCCUPANT).is_none());
    // Gone, and evicted: a second try is refused (the lookup finds nothing).
    let reply = send(&gate, Some(OCCUPANT), "DELETE", &path, &enc).await;
    assert_refused(
        &gate,
        &reply,
        403,
        "message_force_not_owner",
        "base",
        "gone",
    );
}

#[tokio::test]
async fn notifications_are_a_members_own_setting() {
    let gate = Gate::start("").await;
    let path = format!("/chat/Dialog/{GROUP_ID}/notifications.json");
    let reply = send(&gate, Some(OTHER_OCCUPANT), "GET", &path, &query(&[])).await;
    let got = assert_forwarded(&gate, &reply, 200, "get");
    assert_eq!(got["notifications"]["enabled"], json!(1));
    let reply = send(&gate, Some(OUTSIDER), "GET", &path, &query(&[])).await;
    assert_refused(
        &gate,
        &reply,
        403,
        "message_not_occupant",
        "base",
        "outsider get",
    );
    for enc in encodings(&[("enabled", "0")]) {
        let reply = send(&gate, Some(OUTSIDER), "PUT", &path, &enc).await;
        assert_refused(&gate, &reply, 403, "message_not_occupant", "base", enc.name);
        let reply = send(&gate, Some(OTHER_OCCUPANT), "PUT", &path, &enc).await;
        assert_forwarded(&gate, &reply, 200, enc.name);
    }
    assert!(!gate.sandbox.notifications_enabled(GROUP_ID, OTHER_OCCUPANT));
    assert!(gate.sandbox.notifications_enabled(GROUP_ID, RECIPE_USER));
    for fields in [
        vec![("enabled", "2")],
        vec![("enabled", "1"), ("user_id", "5")],
        vec![],
    ] {
        for enc in encodings(&fields) {
            let what = format!("{fields:?} {}", enc.name);
            let reply = send(&gate, Some(OTHER_OCCUPANT), "PUT", &path, &enc).await;
            assert_refused(&gate, &reply, 422, "notifications_fields", "enabled", &what);
        }
    }
}

#[tokio::test]
async fn a_failed_lookup_follows_on_lookup_error() {
    let enc = &encodings(&[("chat_dialog_id", GROUP_ID), ("message", "x")])[0];
    for sections in ["", "dialog_rules:\n  on_lookup_error: reject"] {
        let gate = Gate::start(sections).await;
        gate.sandbox.set_fault(Fault::Status(500));
        let reply = send(&gate, Some(OUTSIDER), "POST", "/chat/Message.json", enc).await;
        assert_refused(&gate, &reply, 503, "lookup_failed", "base", sections);
    }
    let gate = Gate::start("dialog_rules:\n  on_lookup_error: forward").await;
    gate.sandbox.set_fault(Fault::Status(500));
    let reply = send(&gate, Some(OUTSIDER), "POST", "/chat/Message.json", enc).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.reason(), None);
    let received = gate.sandbox.take_received();
    assert_eq!(received.last().map(|r| r.method.as_str()), Some("POST"));
    // Rules that need no lookup still hold.
    gate.sandbox.set_fault(Fault::None);
    let enc = &encodings(&[("chat_dialog_id", GROUP_ID), ("sender_id", "1")])[0];
    let reply = send(&gate, Some(OUTSIDER), "POST", "/chat/Message.json", enc).await;
    assert_refused(&gate, &reply, 422, "message_fields", "sender_id", "fields");
}

#[tokio::test]
async fn message_facts_are_cached() {
    let gate = Gate::start("").await;
    let path = format!("/chat/Message/{GROUP_MESSAGE_BY_RECIPE}.json");
    let enc = &encodings(&[("chat_dialog_id", GROUP_ID), ("message", "again")])[0];
    for _ in 0..3 {
        let reply = send(&gate, Some(OTHER_OCCUPANT), "PUT", &path, enc).await;
        assert_eq!(reply.reason(), Some("message_not_sender"));
    }
    let lookups = gate
        .sandbox
        .take_received()
        .iter()
        .filter(|r| r.uri.path() == "/chat/Message.json")
        .count();
    assert_eq!(lookups, 1);
}

/// Requests the sandbox received that were message lookups (`GET /chat/Message.json` naming `_id`).
fn message_lookups(received: &[qbgate::sandbox::Recorded]) -> usize {
    received
        .iter()
        .filter(|r| is_lookup(r) && r.uri.path() == "/chat/Message.json")
        .count()
}

#[tokio::test]
async fn messages_seen_in_answers_need_no_lookup() {
    let gate = Gate::start("").await;
    // A create through the gateway: its answer teaches the new message's sender and dialog.
    for enc in encodings(&[("chat_dialog_id", GROUP_ID), ("message", "learned")]) {
        let what = format!("create, {}", enc.name);
        let reply = send(&gate, Some(RECIPE_USER), "POST", "/chat/Message.json", &enc).await;
        let created = assert_forwarded(&gate, &reply, 200, &what);
        let id = created["_id"].as_str().unwrap().to_owned();
        let path = format!("/chat/Message/{id}.json");
        // Its sender edits it, another member may not: neither looks the message up.
        let edit = &encodings(&[("chat_dialog_id", GROUP_ID), ("message", "edited")])[1];
        let reply = send(&gate, Some(RECIPE_USER), "PUT", &path, edit).await;
        assert_eq!(reply.status, 200, "{what}");
        let reply = send(&gate, Some(OTHER_OCCUPANT), "PUT", &path, edit).await;
        assert_eq!(reply.reason(), Some("message_not_sender"), "{what}");
        let received = gate.sandbox.take_received();
        assert_eq!(message_lookups(&received), 0, "{what}: {received:?}");
        assert_eq!(
            gate.sandbox.message(&id).unwrap()["message"],
            "edited",
            "{what}"
        );
    }

    // A list through the gateway teaches every message it shows: the owner of PRIVATE then
    // force-deletes his own message there with no lookup at all (the dialog came with the list).
    let reply = send(
        &gate,
        Some(OCCUPANT),
        "GET",
        "/chat/Message.json",
        &query(&[("chat_dialog_id", PRIVATE_ID)]),
    )
    .await;
    assert_forwarded(&gate, &reply, 200, "list");
    let enc = &encodings(&[("force", "1"), ("chat_dialog_id", PRIVATE_ID)])[1];
    let path = format!("/chat/Message/{PRIVATE_MESSAGE_BY_OCCUPANT}.json");
    let reply = send(&gate, Some(OCCUPANT), "DELETE", &path, enc).await;
    assert_eq!(reply.status, 200);
    let received = gate.sandbox.take_received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(gate.sandbox.message(PRIVATE_MESSAGE_BY_OCCUPANT).is_none());
    // The other message of the list is his member's, not his: refused, still no lookup.
    let path = format!("/chat/Message/{PRIVATE_MESSAGE_BY_RECIPE}.json");
    let reply = send(&gate, Some(OCCUPANT), "DELETE", &path, enc).await;
    assert_refused(
        &gate,
        &reply,
        403,
        "message_force_not_owner",
        "base",
        "learned",
    );
    // A refusal answered by the upstream teaches nothing.
    let reply = send(
        &gate,
        Some(OUTSIDER),
        "GET",
        "/chat/Message.json",
        &query(&[("chat_dialog_id", PRIVATE_ID)]),
    )
    .await;
    assert_eq!(reply.reason(), Some("message_not_occupant"));
    gate.sandbox.take_received();
}

/// A counter's value in a Prometheus exposition (0 when absent).
fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn lookup_caches_count_hits_and_misses_on_metrics() {
    use qbgate::sandbox::seed::{BLOB_BY_RECIPE, EVENT_BY_RECIPE, SUBSCRIPTION_BY_RECIPE};
    let gate = Gate::start("").await;
    // The admin listener's /metrics, as Prometheus scrapes it.
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn(qbgate::serve(
        gate.gateway.clone(),
        proxy,
        Some(admin),
        std::future::pending(),
    ));
    let scrape = || async {
        let reply = get_text(&format!("http://{admin_addr}/metrics")).await;
        assert!(
            reply.contains("# HELP qbgate_lookup_cache_total"),
            "{reply}"
        );
        reply
    };
    let series = |cache: &str, result: &str| {
        format!("qbgate_lookup_cache_total{{cache=\"{cache}\",result=\"{result}\"}}")
    };
    let before = scrape().await;
    // Every series is there from the first scrape.
    for cache in ["dialog", "message", "event", "subscriptions", "blobs"] {
        for result in ["hit", "miss"] {
            assert!(before.contains(&series(cache, result)), "{cache} {result}");
        }
    }
    // Each lookup twice: a miss, then a hit.
    let json = |fields: &[(&str, &str)]| encodings(fields).swap_remove(0);
    let edit = json(&[("chat_dialog_id", GROUP_ID), ("read", "1")]);
    let event = json(&[]);
    let blob = json(&[]);
    for _ in 0..2 {
        let path = format!("/chat/Message/{GROUP_MESSAGE_BY_OCCUPANT}.json");
        send(&gate, Some(RECIPE_USER), "PUT", &path, &edit).await;
        let path = format!("/chat/Message/{GROUP_MESSAGE_BY_OCCUPANT}.json");
        let text = json(&[("chat_dialog_id", GROUP_ID), ("message", "x")]);
        send(&gate, Some(OTHER_OCCUPANT), "PUT", &path, &text).await;
        let path = format!("/events/{EVENT_BY_RECIPE}.json");
        send(&gate, Some(RECIPE_USER), "GET", &path, &event).await;
        let path = format!("/subscriptions/{}.json", SUBSCRIPTION_BY_RECIPE + 1_000_000);
        send(&gate, Some(RECIPE_USER), "DELETE", &path, &event).await;
        let path = format!("/blobs/{BLOB_BY_RECIPE}.json");
        send(&gate, Some(RECIPE_USER), "PUT", &path, &blob).await;
    }
    let after = scrape().await;
    // Other tests share the process's recorder: at least this test's own counts.
    for (cache, hits, misses) in [
        ("dialog", 3, 1),
        ("message", 1, 1),
        ("event", 1, 1),
        ("subscriptions", 0, 2),
        ("blobs", 1, 1),
    ] {
        let delta = |result| {
            counter(&after, &series(cache, result)) - counter(&before, &series(cache, result))
        };
        assert!(delta("hit") >= hits, "{cache} hits: {}", delta("hit"));
        assert!(delta("miss") >= misses, "{cache} misses: {}", delta("miss"));
    }
}

/// GET `uri`: the body as text, after asserting a 200.
async fn get_text(uri: &str) -> String {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::get(uri)
        .body(http_body_util::Full::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}
