//! Blob ownership through the gateway against the sandbox (`rules::blobs`): a user changes,
//! completes and deletes his own blobs (reaching the sandbox, taking effect), never another's
//! (status, reason, nothing forwarded but the lookups), with JSON and form bodies; the lookup of
//! a user's blobs made as him and paged, capped; `on_lookup_error`.

use qbgate::sandbox::seed::{
    BLOB_BY_OCCUPANT, BLOB_BY_RECIPE, HOARDER_FIRST_BLOB, OCCUPANT, OTHER_OCCUPANT, OWNER,
    OWNER_BLOBS, OWNER_FIRST_BLOB, RECIPE_USER,
};
use qbgate::sandbox::{Fault, Recorded};

use crate::support::{Gate, Reply, KEY_ANY, KEY_APP};

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// `method path` with the `any` key acting for `user`, or the application key for `None`.
async fn send(
    gate: &Gate,
    user: Option<u64>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Reply {
    let auth = format!("ApiKey {}", if user.is_some() { KEY_ANY } else { KEY_APP });
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

/// A lookup of a user's blobs: `GET /blobs.json`, paged by 100, as that user.
fn is_lookup(r: &Recorded) -> bool {
    r.method == "GET"
        && r.uri.path() == "/blobs.json"
        && r.headers.contains_key("on-behalf-of")
        && r.uri.query().is_some_and(|q| q.contains("per_page=100"))
}

/// A gateway error with its status and reason; the sandbox received lookups at most.
/// A gateway error with its status, reason and shape; the sandbox received lookups at most.
#[track_caller]
fn assert_refused(gate: &Gate, reply: &Reply, status: u16, reason: &str, what: &str) {
    crate::support::assert_refused_after_lookups(
        gate,
        reply,
        (status, reason, "base"),
        is_lookup,
        what,
    );
}

/// The sandbox answered `status` to the request sent (the last it received); the others were
/// lookups, returned.
#[track_caller]
fn assert_forwarded(gate: &Gate, reply: &Reply, status: u16, what: &str) -> Vec<Recorded> {
    assert_eq!(
        reply.status,
        status,
        "{what}: {:?} {}",
        reply.reason(),
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.reason(), None, "{what}");
    let mut received = gate.sandbox.take_received();
    let last = received.pop().expect("nothing forwarded");
    assert!(!is_lookup(&last), "{what}: only lookups were sent");
    assert!(received.iter().all(is_lookup), "{what}");
    received
}

fn name_of(gate: &Gate, id: u64) -> String {
    let blob = gate.sandbox.blob(id).expect("the blob exists");
    blob["blob"]["name"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn an_owner_changes_completes_and_deletes_his_blob() {
    let gate = Gate::start("").await;
    let path = format!("/blobs/{BLOB_BY_RECIPE}.json");
    let reply = send(
        &gate,
        Some(RECIPE_USER),
        "PUT",
        &path,
        JSON,
        r#"{"blob":{"name":"a.png"}}"#,
    )
    .await;
    let lookups = assert_forwarded(&gate, &reply, 200, "json update");
    assert_eq!(lookups.len(), 1);
    assert_eq!(
        lookups[0].headers["on-behalf-of"],
        RECIPE_USER.to_string().as_str()
    );
    assert_eq!(name_of(&gate, BLOB_BY_RECIPE), "a.png");

    // The list is cached: the next write needs no lookup.
    let reply = send(
        &gate,
        Some(RECIPE_USER),
        "PUT",
        &path,
        FORM,
        "blob%5Bname%5D=b.png",
    )
    .await;
    assert!(assert_forwarded(&gate, &reply, 200, "form update").is_empty());
    assert_eq!(name_of(&gate, BLOB_BY_RECIPE), "b.png");

    let complete = format!("/blobs/{BLOB_BY_RECIPE}/complete.json");
    let reply = send(
        &gate,
        Some(RECIPE_USER),
        "PUT",
        &complete,
        FORM,
        "blob[size]=42",
    )
    .await;
    assert_forwarded(&gate, &reply, 200, "complete");
    assert_eq!(
        gate.sandbox.blob(BLOB_BY_RECIPE).unwrap()["blob"]["size"],
        42
    );

    let reply = send(&gate, Some(RECIPE_USER), "DELETE", &path, "", "").await;
    assert_forwarded(&gate, &reply, 200, "delete");
    assert!(gate.sandbox.blob(BLOB_BY_RECIPE).is_none());
    // The delete forgot the list: the blob is no longer his.
    let reply = send(&gate, Some(RECIPE_USER), "DELETE", &path, "", "").await;
    assert_refused(&gate, &reply, 403, "blob_not_owner", "deleted");
}

#[tokio::test]
async fn another_users_blob_is_refused() {
    let gate = Gate::start("").await;
    let path = format!("/blobs/{BLOB_BY_RECIPE}.json");
    let complete = format!("/blobs/{BLOB_BY_RECIPE}/complete.json");
    for (method, path, content_type, body) in [
        ("PUT", path.as_str(), JSON, r#"{"blob":{"name":"x.png"}}"#),
        ("PUT", path.as_str(), FORM, "blob[name]=x.png"),
        ("PATCH", path.as_str(), JSON, r#"{"blob":{"name":"x.png"}}"#),
        ("PUT", complete.as_str(), FORM, "blob[size]=1"),
        ("DELETE", path.as_str(), "", ""),
        ("PUT", "/blobs/999999.json", JSON, "{}"),
    ] {
        let reply = send(&gate, Some(OCCUPANT), method, path, content_type, body).await;
        assert_refused(
            &gate,
            &reply,
            403,
            "blob_not_owner",
            &format!("{method} {path}"),
        );
    }
    assert_eq!(
        name_of(&gate, BLOB_BY_RECIPE),
        format!("seeded{BLOB_BY_RECIPE}.png")
    );
    // His own passes.
    let own = format!("/blobs/{BLOB_BY_OCCUPANT}.json");
    let reply = send(
        &gate,
        Some(OCCUPANT),
        "PUT",
        &own,
        JSON,
        r#"{"blob":{"name":"o.png"}}"#,
    )
    .await;
    assert_forwarded(&gate, &reply, 200, "own");
}

#[tokio::test]
async fn bad_ids_tokens_and_application_keys_are_refused_without_a_lookup() {
    let gate = Gate::start("").await;
    for path in [
        "/blobs/abc.json",
        "/blobs/0.json",
        "/blobs/-3",
        "/blobs/1.json/complete",
    ] {
        let reply = send(&gate, Some(RECIPE_USER), "PUT", path, JSON, "{}").await;
        assert_refused(&gate, &reply, 400, "blob_id", path);
        assert_eq!(gate.sandbox.take_received().len(), 0);
    }
    let path = format!("/blobs/{BLOB_BY_RECIPE}.json");
    let reply = send(&gate, Some(RECIPE_USER), "PUT", &path, FORM, "token=abc").await;
    assert_refused(&gate, &reply, 400, "token_param", "token");
    let reply = send(&gate, None, "DELETE", &path, "", "").await;
    assert_refused(&gate, &reply, 403, "need_user", "application key");
}

#[tokio::test]
async fn an_owners_blobs_are_read_page_by_page() {
    let gate = Gate::start("").await;
    let last = OWNER_FIRST_BLOB + OWNER_BLOBS - 1;
    let reply = send(
        &gate,
        Some(OWNER),
        "DELETE",
        &format!("/blobs/{last}.json"),
        "",
        "",
    )
    .await;
    let lookups = assert_forwarded(&gate, &reply, 200, "second page");
    let pages: Vec<String> = lookups.iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(
        pages,
        [
            "/blobs.json?page=1&per_page=100",
            "/blobs.json?page=2&per_page=100"
        ]
    );
}

#[tokio::test]
async fn a_blob_created_through_the_gateway_is_known_at_once() {
    let gate = Gate::start("").await;
    // The list is cached first...
    let own = format!("/blobs/{BLOB_BY_OCCUPANT}.json");
    let reply = send(&gate, Some(OCCUPANT), "PUT", &own, JSON, "{}").await;
    assert_forwarded(&gate, &reply, 200, "own");
    // ...then a blob is created (a plain pass row)...
    let body = r#"{"blob":{"name":"new.png","content_type":"image/png"}}"#;
    let reply = send(&gate, Some(OCCUPANT), "POST", "/blobs.json", JSON, body).await;
    assert_eq!(reply.status, 201);
    let id = reply.json()["blob"]["id"].as_u64().unwrap();
    gate.sandbox.take_received();
    // ...and completing it asks the list again.
    let path = format!("/blobs/{id}/complete.json");
    let reply = send(
        &gate,
        Some(OCCUPANT),
        "PUT",
        &path,
        JSON,
        r#"{"blob":{"size":7}}"#,
    )
    .await;
    assert_eq!(
        assert_forwarded(&gate, &reply, 200, "complete new").len(),
        1
    );
}

#[tokio::test]
async fn a_failed_lookup_follows_on_lookup_error() {
    let path = format!("/blobs/{BLOB_BY_RECIPE}.json");
    for sections in ["", "dialog_rules:\n  on_lookup_error: reject"] {
        let gate = Gate::start(sections).await;
        gate.sandbox.set_fault(Fault::Status(500));
        let reply = send(&gate, Some(RECIPE_USER), "DELETE", &path, "", "").await;
        assert_refused(&gate, &reply, 503, "lookup_failed", sections);
        // More blobs than the pages read: not known, so a failed lookup too.
        gate.sandbox.set_fault(Fault::None);
        let hoarded = format!("/blobs/{HOARDER_FIRST_BLOB}.json");
        let reply = send(&gate, Some(OTHER_OCCUPANT), "PUT", &hoarded, JSON, "{}").await;
        assert_refused(&gate, &reply, 503, "lookup_failed", "page cap");
    }
    let gate = Gate::start("dialog_rules:\n  on_lookup_error: forward").await;
    gate.sandbox.set_fault(Fault::Status(500));
    let reply = send(&gate, Some(OCCUPANT), "DELETE", &path, "", "").await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.reason(), None);
    let received = gate.sandbox.take_received();
    assert_eq!(received.last().map(|r| r.method.as_str()), Some("DELETE"));
    gate.sandbox.set_fault(Fault::None);
    let hoarded = format!("/blobs/{HOARDER_FIRST_BLOB}.json");
    let reply = send(&gate, Some(OTHER_OCCUPANT), "PUT", &hoarded, JSON, "{}").await;
    assert_forwarded(&gate, &reply, 200, "page cap, forwarded");
    // A lookup that answers still decides.
    let reply = send(&gate, Some(OCCUPANT), "DELETE", &path, "", "").await;
    assert_refused(&gate, &reply, 403, "blob_not_owner", "answered lookup");
}

#[tokio::test]
async fn blob_rows_in_the_query_and_a_form_create() {
    let gate = Gate::start("").await;
    // Parameters in the query: one's own blob takes the name, another's is refused.
    let own = format!("/blobs/{BLOB_BY_OCCUPANT}.json?blob%5Bname%5D=q.png");
    let reply = send(&gate, Some(OCCUPANT), "PUT", &own, "", "").await;
    assert_forwarded(&gate, &reply, 200, "own, query");
    assert_eq!(name_of(&gate, BLOB_BY_OCCUPANT), "q.png");
    let complete = format!("/blobs/{BLOB_BY_OCCUPANT}/complete.json?blob%5Bsize%5D=9");
    let reply = send(&gate, Some(OCCUPANT), "PUT", &complete, "", "").await;
    assert_forwarded(&gate, &reply, 200, "complete, query");
    assert_eq!(
        gate.sandbox.blob(BLOB_BY_OCCUPANT).unwrap()["blob"]["size"],
        9
    );
    for (method, path) in [
        (
            "PUT",
            format!("/blobs/{BLOB_BY_RECIPE}.json?blob%5Bname%5D=q.png"),
        ),
        (
            "PUT",
            format!("/blobs/{BLOB_BY_RECIPE}/complete.json?blob%5Bsize%5D=1"),
        ),
        ("DELETE", format!("/blobs/{BLOB_BY_RECIPE}.json?force=1")),
    ] {
        let reply = send(&gate, Some(OCCUPANT), method, &path, "", "").await;
        assert_refused(&gate, &reply, 403, "blob_not_owner", &path);
    }
    assert_eq!(
        name_of(&gate, BLOB_BY_RECIPE),
        format!("seeded{BLOB_BY_RECIPE}.png")
    );
    // A create (a pass row) in a form and in the query: the blob is the acting user's.
    for (path, content_type, body) in [
        (
            "/blobs.json",
            FORM,
            "blob[name]=f.png&blob[content_type]=image/png",
        ),
        ("/blobs.json?blob%5Bname%5D=g.png", "", ""),
    ] {
        let reply = send(&gate, Some(RECIPE_USER), "POST", path, content_type, body).await;
        assert_eq!(reply.status, 201, "{path}");
        let id = reply.json()["blob"]["id"].as_u64().unwrap();
        assert_eq!(
            gate.sandbox.blob(id).unwrap()["blob"]["owner_id"],
            RECIPE_USER
        );
        assert_eq!(gate.sandbox.take_received().len(), 1);
    }
}
