//! Least privilege beyond dialogs, through the gateway against the sandbox: account-owner powers
//! (`create_users`, `mint_tokens`, `manage_users`), the acting user's own account, the old
//! password, and the `token` parameter. Every allowed case reaches the sandbox and takes effect;
//! every refused one gets its status and reason and nothing is forwarded; the `user` parameters in
//! a JSON body, a form body and the query.
//!
//! # The least-privilege rule table, row by row, and the tests that cover it
//! Each row: the allowed case (reaches the sandbox and takes effect) and every refused case
//! (status, reason, nothing forwarded but lookups), with the parameters in a JSON body, a form
//! body and the query where the row reads parameters ("no parameters": the path decides).
//!
//! | row | allowed | refused | encodings |
//! |---|---|---|---|
//! | outside the catalog: 403 `route_unknown`; `unchecked_routes` forwards | `catalog::unchecked_routes_are_forwarded_unjudged_and_counted` | `catalog::routes_outside_the_catalog_are_route_unknown`, `routes_still_narrows` | no parameters |
//! | `token` parameter on an API key: 400 `token_param` | (not a top-level `token`: forwarded) `a_token_parameter_on_an_api_key_is_400_wherever_the_gateway_reads` | same; `the_token_parameter_is_refused_in_report_mode_too`; `address_book::an_upload_without_a_user_or_for_someone_else_is_refused_and_not_forwarded`; `address_book::a_token_in_an_unjudged_json_write_is_refused` (blobs, subscriptions, address book); `blobs::bad_ids_tokens_and_application_keys_are_refused_without_a_lookup` | JSON, form, query |
//! | application key: reads pass, writes that need a user 403 `need_user` | `catalog::an_application_key_reads_the_catalog` | `catalog::an_application_key_needs_a_user_for_every_write_that_needs_one` (every such row) | JSON, form, query |
//! | application key: the dialog table's application rows | `dialog_rules::matrix_json_bodies`, `matrix_form_bodies` (`Who::App`) | same | JSON, form; query in `dialog_rules::bypasses_*` |
//! | powers only with `powers`: 403 `power_required` | the tests of each power below | the same | as below |
//! | `POST /users/{id}/tokens`: `mint_tokens` | `minting_a_token_needs_mint_tokens_for_any_user_and_any_key` | same | no parameters (path spellings) |
//! | `POST /session`, `/login`, `GET`/`DELETE /session`: `route_unknown` | (QB-Token traffic) `catalog::qb_token_requests_are_not_subject_to_the_catalog` | `catalog::routes_outside_the_catalog_are_route_unknown` | no parameters |
//! | `GET /users...`: pass | `catalog::an_application_key_reads_the_catalog`; `other_writes_under_users_are_outside_the_catalog` (a user's key) | none | query |
//! | `POST /users.json`: `create_users` | `creating_a_user_needs_create_users` | same | JSON, form, query |
//! | `PUT /users/{id}`: own or `manage_users`; `password` needs `old_password` (422) | `a_user_updates_his_own_account_and_only_manage_users_reaches_others`, `an_own_password_change_needs_the_old_password` | same; `a_user_id_that_is_not_a_positive_decimal_is_400` | JSON, form, query |
//! | `DELETE /users/{id}`, `DELETE /users/external/{ext}`: own / `manage_users` | `deleting_a_user_is_his_own_or_needs_manage_users` | same | no parameters |
//! | `POST /chat/Message` with `chat_dialog_id` (member, public) / `recipient_id`; both, neither, QuickBlox's fields: 422 | `messages::a_message_to_a_dialog_needs_a_member_unless_the_dialog_is_public` | same; `messages::a_message_names_one_target_and_no_field_quickblox_sets` | JSON, form, query |
//! | `GET /chat/Message`: `chat_dialog_id`, a member; `GET /chat/Message/unread`: pass | `messages::a_message_list_needs_the_dialog_and_a_member` | same | query |
//! | `PUT /chat/Message/{id}`: member; fields; text edit by the sender | `messages::a_message_update_marks_for_members_and_edits_for_the_sender`; `messages::messages_seen_in_answers_need_no_lookup` | same | JSON, form, query |
//! | `DELETE /chat/Message/{ids}` without / with `force` | `messages::a_force_delete_needs_the_dialog_owner_and_his_own_messages` | same | JSON, form, query |
//! | `GET`/`PUT /chat/Dialog/{id}/notifications` | `messages::notifications_are_a_members_own_setting` | same | JSON, form, query |
//! | message rows for an application key | `messages::an_application_key_reads_but_does_not_write` | same | JSON, form, query |
//! | `POST /events`: push, now, named users (at most 50) | `push::a_push_now_to_named_users_is_sent` | `push::an_event_that_is_not_a_push_now_to_named_users_is_refused` | JSON, form, query |
//! | `GET /events`, `GET`/`POST /subscriptions`: pass | `push::lists_pass`; `push::a_user_deletes_only_his_own_subscriptions` (create) | none (need_user above) | JSON, form, query (create) |
//! | `GET`/`PUT`/`DELETE /events/{id}`: own | `push::a_user_reads_changes_and_deletes_only_his_own_events` | same | JSON, form, query |
//! | `DELETE /subscriptions/{id}`: own | `push::a_user_deletes_only_his_own_subscriptions` | same | no parameters |
//! | `POST /blobs`, `GET /blobs...`: pass | `blobs::a_blob_created_through_the_gateway_is_known_at_once`, `blobs::blob_rows_in_the_query_and_a_form_create`; `catalog::an_application_key_reads_the_catalog` | none (need_user above) | JSON, form, query |
//! | `PUT /blobs/{id}`, `PUT /blobs/{id}/complete`, `DELETE /blobs/{id}`: own | `blobs::an_owner_changes_completes_and_deletes_his_blob`, `blobs::blob_rows_in_the_query_and_a_form_create` | `blobs::another_users_blob_is_refused`, `blobs::blob_rows_in_the_query_and_a_form_create` | JSON, form, query |
//! | `POST /blobs/{id}/upload`: pass | forwarded (`catalog::an_application_key_needs_a_user_for_every_write_that_needs_one`, a user's key; the sandbox has no upload) | need_user | form, JSON, query |
//! | `POST`/`GET /address_book`, `GET /address_book/registered_users`: U's own | `address_book::a_user_uploads_reads_and_matches_his_own_book_in_every_encoding` | `address_book::an_upload_without_a_user_or_for_someone_else_is_refused_and_not_forwarded` | JSON, form, query |
//! | any row, any key: nothing forwarded changes what U does not own; no key acts outside its list | `ownership::no_forwarded_request_lets_a_user_change_what_he_does_not_own` (property) | same | JSON, form |

use qbgate::sandbox::seed::{self, GROUP_TOKEN, OUTSIDER, OWNER, RECIPE_USER};
use serde_json::json;

use crate::support::Encoded;
use crate::support::{digest, Gate, Reply, KEY_ANY, KEY_APP};

/// Acts for [`RECIPE_USER`] only, no power.
const KEY_ME: &str = "lp-key-me";
/// The application, `mint_tokens`.
const KEY_MINTER: &str = "lp-key-minter";
/// The application, `create_users`.
const KEY_CREATOR: &str = "lp-key-creator";
/// Acts for [`RECIPE_USER`], `manage_users`.
const KEY_MANAGER: &str = "lp-key-manager";
/// The application, every power.
const KEY_OWNER: &str = "lp-key-owner";

const ME: u64 = RECIPE_USER;

async fn gate() -> Gate {
    let keys = format!(
        "- {{ id: me, sha256: {}, on_behalf_of: [{ME}] }}\n\
         - {{ id: minter, sha256: {}, on_behalf_of: none, powers: [mint_tokens] }}\n\
         - {{ id: creator, sha256: {}, on_behalf_of: none, powers: [create_users] }}\n\
         - {{ id: manager, sha256: {}, on_behalf_of: [{ME}], powers: [manage_users] }}\n\
         - {{ id: owner, sha256: {}, on_behalf_of: none, powers: [create_users, mint_tokens, manage_users] }}\n",
        digest(KEY_ME),
        digest(KEY_MINTER),
        digest(KEY_CREATOR),
        digest(KEY_MANAGER),
        digest(KEY_OWNER),
    );
    Gate::start_with_keys("", &keys).await
}

/// The user a key acts for, if any.
fn acting(key: &str) -> Option<u64> {
    match key {
        KEY_ME | KEY_MANAGER => Some(ME),
        KEY_ANY => Some(OWNER),
        _ => None,
    }
}

/// `user[field]=value` pairs in a JSON body, a form body and the query.
fn encodings(fields: &[(&str, &str)]) -> Vec<Encoded> {
    crate::support::encodings(Some("user"), fields)
}

/// `method path` with `key` (and its user as `On-Behalf-Of`), the parameters as `encoded`.
async fn send(gate: &Gate, key: &str, method: &str, path: &str, encoded: &Encoded) -> Reply {
    let auth = format!("ApiKey {key}");
    let user = acting(key).map(|u| u.to_string());
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(user) = &user {
        headers.push(("on-behalf-of", user.as_str()));
    }
    if !encoded.content_type.is_empty() {
        headers.push(("content-type", encoded.content_type));
    }
    let path = format!("{path}{}", encoded.query);
    gate.send(method, &path, &headers, &encoded.body).await
}

/// No parameters at all.
fn bare() -> Encoded {
    Encoded {
        name: "bare",
        query: String::new(),
        content_type: "",
        body: String::new(),
    }
}

/// A gateway error with its status, reason and shape, and nothing reached the sandbox.
#[track_caller]
fn assert_refused(gate: &Gate, reply: &Reply, status: u16, reason: &str, key: &str) {
    reply.assert_gate_error(status, reason, key);
    let received = gate.sandbox.take_received();
    assert!(
        received.is_empty(),
        "forwarded: {:?}",
        received
            .iter()
            .map(|r| format!("{} {}", r.method, r.uri))
            .collect::<Vec<_>>()
    );
}

/// The sandbox answered `status`, having received exactly one request.
#[track_caller]
fn assert_forwarded(gate: &Gate, reply: &Reply, status: u16) {
    assert_eq!(
        reply.status,
        status,
        "{:?} {}",
        reply.reason(),
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.reason(), None);
    assert_eq!(gate.sandbox.take_received().len(), 1);
}

#[tokio::test]
async fn minting_a_token_needs_mint_tokens_for_any_user_and_any_key() {
    let gate = gate().await;
    let spellings = [
        format!("/users/{ME}/tokens.json"),
        format!("/users/{ME}/tokens"),
        format!("/USERS/{ME}/Tokens.JSON"),
        "/users/%31%32%33/tokens.json".to_owned(),
        format!("/users/{ME}/tokens.xml"),
        format!("/users/{OWNER}/tokens.json"),
        "/users/not-a-number/tokens.json".to_owned(),
    ];
    // The key's own user too, and the application; with `manage_users` and `create_users` too.
    for key in [KEY_ME, KEY_ANY, KEY_APP, KEY_MANAGER, KEY_CREATOR] {
        for path in &spellings {
            let reply = send(&gate, key, "POST", path, &bare()).await;
            assert_refused(&gate, &reply, 403, "power_required", "base");
        }
    }
    for key in [KEY_MINTER, KEY_OWNER] {
        for (path, user) in [
            (format!("/users/{OWNER}/tokens.json"), OWNER),
            ("/Users/%31%32%33/TOKENS".to_owned(), ME),
        ] {
            let reply = send(&gate, key, "POST", &path, &bare()).await;
            assert_forwarded(&gate, &reply, 201);
            let token = reply.json()["token"].as_str().unwrap().to_owned();
            assert!(reply.json()["expires_at"].is_string());
            assert_eq!(gate.sandbox.session_user(&token), Some(user));
        }
    }
}

#[tokio::test]
async fn creating_a_user_needs_create_users() {
    let gate = gate().await;
    for (n, encoded) in encodings(&[("login", "newbie"), ("password", "12345678")])
        .iter()
        .enumerate()
    {
        for key in [KEY_ME, KEY_ANY, KEY_APP, KEY_MINTER, KEY_MANAGER] {
            for path in ["/users.json", "/users", "/USERS.json", "/users.xml"] {
                let reply = send(&gate, key, "POST", path, encoded).await;
                assert_refused(&gate, &reply, 403, "power_required", "base");
            }
        }
        for (key, path) in [(KEY_CREATOR, "/users.json"), (KEY_OWNER, "/Users")] {
            let login = format!("newbie-{}-{n}-{key}", encoded.name);
            let encoded = encodings(&[("login", &login), ("password", "12345678")]).remove(n);
            let reply = send(&gate, key, "POST", path, &encoded).await;
            assert_forwarded(&gate, &reply, 201);
            let id = reply.json()["user"]["id"].as_u64().unwrap();
            assert_eq!(
                gate.sandbox.user(id).unwrap()["user"]["login"],
                json!(login),
                "{}",
                encoded.name
            );
        }
    }
}

#[tokio::test]
async fn a_user_updates_his_own_account_and_only_manage_users_reaches_others() {
    let gate = gate().await;
    for encoded in encodings(&[("full_name", "Renamed")]) {
        // Another user, or the application with no user at all.
        for (key, id) in [
            (KEY_ME, OUTSIDER),
            (KEY_ANY, ME),
            (KEY_APP, ME),
            (KEY_MINTER, ME),
            (KEY_CREATOR, OUTSIDER),
        ] {
            for method in ["PUT", "PATCH"] {
                let reply = send(&gate, key, method, &format!("/users/{id}.json"), &encoded).await;
                assert_refused(&gate, &reply, 403, "power_required", "base");
            }
        }
        for (key, id) in [(KEY_ME, ME), (KEY_MANAGER, OUTSIDER), (KEY_OWNER, OWNER)] {
            let name = format!("{}-{key}", encoded.name);
            let encoded = encodings(&[("full_name", &name)])
                .into_iter()
                .find(|e| e.name == encoded.name)
                .unwrap();
            let reply = send(&gate, key, "PUT", &format!("/Users/{id}"), &encoded).await;
            assert_forwarded(&gate, &reply, 200);
            assert_eq!(
                gate.sandbox.user(id).unwrap()["user"]["full_name"],
                json!(name)
            );
        }
    }
}

#[tokio::test]
async fn a_user_id_that_is_not_a_positive_decimal_is_400() {
    let gate = gate().await;
    for path in [
        "/users/abc.json",
        "/users/0123.json",
        "/users/0.json",
        "/users/-5.json",
        &format!("/users/{ME}.xml"),
        &format!("/users/{ME}abc"),
        "/users/99999999999999999999999.json",
    ] {
        for (key, method) in [
            (KEY_ME, "PUT"),
            (KEY_OWNER, "PATCH"),
            (KEY_MANAGER, "DELETE"),
        ] {
            let reply = send(&gate, key, method, path, &bare()).await;
            assert_refused(&gate, &reply, 400, "user_id_invalid", "base");
        }
    }
}

#[tokio::test]
async fn an_own_password_change_needs_the_old_password() {
    let gate = gate().await;
    for encoded in encodings(&[("password", "brand-new-1")]) {
        // With manage_users too: one's own password always needs the old one.
        for key in [KEY_ME, KEY_MANAGER] {
            let reply = send(&gate, key, "PUT", &format!("/users/{ME}.json"), &encoded).await;
            assert_refused(&gate, &reply, 422, "old_password_required", "old_password");
            assert_eq!(
                reply.json(),
                json!({"errors": {"old_password": ["can't be blank"]}})
            );
        }
        assert_eq!(gate.sandbox.user_password(ME), Some(seed::password(ME)));
    }
    for encoded in encodings(&[("password", "brand-new-1"), ("old_password", "")]) {
        let reply = send(&gate, KEY_ME, "PUT", &format!("/users/{ME}.json"), &encoded).await;
        assert_refused(&gate, &reply, 422, "old_password_required", "old_password");
    }
    // The old password given: the change takes effect, in every encoding.
    let mut current = seed::password(ME);
    for n in 0..3 {
        let new = format!("changed-{n}");
        let encoded = encodings(&[("password", &new), ("old_password", &current)]).remove(n);
        let reply = send(&gate, KEY_ME, "PUT", &format!("/users/{ME}.json"), &encoded).await;
        assert_forwarded(&gate, &reply, 200);
        assert_eq!(
            gate.sandbox.user_password(ME).as_deref(),
            Some(new.as_str())
        );
        current = new;
    }
    // Another user's password, with manage_users: no old password needed.
    for encoded in encodings(&[("password", "reset-by-admin")]) {
        let reply = send(
            &gate,
            KEY_MANAGER,
            "PUT",
            &format!("/users/{OUTSIDER}"),
            &encoded,
        )
        .await;
        assert_forwarded(&gate, &reply, 200);
        assert_eq!(
            gate.sandbox.user_password(OUTSIDER).as_deref(),
            Some("reset-by-admin")
        );
    }
}

#[tokio::test]
async fn deleting_a_user_is_his_own_or_needs_manage_users() {
    let gate = gate().await;
    for (key, id) in [
        (KEY_ME, OUTSIDER),
        (KEY_ANY, ME),
        (KEY_APP, ME),
        (KEY_MINTER, OUTSIDER),
        (KEY_CREATOR, OUTSIDER),
    ] {
        let reply = send(&gate, key, "DELETE", &format!("/users/{id}.json"), &bare()).await;
        assert_refused(&gate, &reply, 403, "power_required", "base");
    }
    let external = format!("/users/external/{}.json", seed::external_id(OWNER));
    for key in [KEY_ME, KEY_ANY, KEY_APP, KEY_MINTER, KEY_CREATOR] {
        let reply = send(&gate, key, "DELETE", &external, &bare()).await;
        assert_refused(&gate, &reply, 403, "power_required", "base");
    }
    assert!(gate.sandbox.user(OUTSIDER).is_some() && gate.sandbox.user(OWNER).is_some());

    let reply = send(&gate, KEY_MANAGER, "DELETE", &external, &bare()).await;
    assert_forwarded(&gate, &reply, 200);
    assert!(gate.sandbox.user(OWNER).is_none());
    let reply = send(
        &gate,
        KEY_MANAGER,
        "DELETE",
        &format!("/users/{OUTSIDER}"),
        &bare(),
    )
    .await;
    assert_forwarded(&gate, &reply, 200);
    assert!(gate.sandbox.user(OUTSIDER).is_none());
    let reply = send(
        &gate,
        KEY_ME,
        "DELETE",
        &format!("/USERS/{ME}.json"),
        &bare(),
    )
    .await;
    assert_forwarded(&gate, &reply, 200);
    assert!(gate.sandbox.user(ME).is_none());
}

#[tokio::test]
async fn other_writes_under_users_are_outside_the_catalog() {
    let gate = gate().await;
    // Outside the endpoint catalog now: refused before the users rules read them (which would
    // still ask for manage_users, should a key list one in `unchecked_routes`).
    for (method, path) in [
        ("POST", format!("/users/{ME}.json")),
        ("PUT", "/users.json".to_owned()),
        (
            "PUT",
            format!("/users/external/{}.json", seed::external_id(ME)),
        ),
        ("DELETE", format!("/users/{ME}/tokens.json")),
    ] {
        let reply = send(&gate, KEY_ME, method, &path, &bare()).await;
        assert_refused(&gate, &reply, 403, "route_unknown", "base");
    }
    // Reads are not judged.
    let reply = send(
        &gate,
        KEY_ME,
        "GET",
        &format!("/users/{OUTSIDER}.json"),
        &bare(),
    )
    .await;
    assert_eq!(reply.reason(), None);
    gate.sandbox.take_received();
}

#[tokio::test]
async fn a_token_parameter_on_an_api_key_is_400_wherever_the_gateway_reads() {
    let gate = gate().await;
    // The query, on any request.
    for query in [
        "token=abc",
        "TOKEN=abc",
        "%74oken=abc",
        "token%5B%5D=abc",
        "%5Btoken%5D=abc",
        "a=1&token",
        "a=1;token=x",
    ] {
        for (method, path) in [
            ("GET", "/chat/Dialog.json"),
            ("GET", "/blobs/1/download.json"),
            // An application key's message write is 403 need_user first: a read here.
            ("GET", "/chat/Message.json"),
            ("PUT", "/users/123.json"),
        ] {
            let reply = send(
                &gate,
                KEY_OWNER,
                method,
                &format!("{path}?{query}"),
                &bare(),
            )
            .await;
            assert_refused(&gate, &reply, 400, "token_param", "base");
        }
    }
    // A body the gateway reads: a user change, a dialog change, a form POST.
    let json = encodings(&[])[0].content_type;
    let form = encodings(&[])[1].content_type;
    for (method, path, content_type, body) in [
        (
            "PUT",
            format!("/users/{ME}.json"),
            json,
            r#"{"token":"abc"}"#,
        ),
        ("PUT", format!("/users/{ME}.json"), form, "token=abc"),
        ("POST", "/users.json".to_owned(), form, "Token=abc"),
        (
            "POST",
            "/chat/Dialog.json".to_owned(),
            json,
            r#"{"type":2,"token":"abc"}"#,
        ),
        (
            "POST",
            "/chat/Dialog.json".to_owned(),
            form,
            "type=2&token=abc",
        ),
        (
            "POST",
            "/chat/Message.json".to_owned(),
            form,
            "message=hi&token=abc",
        ),
    ] {
        let encoded = Encoded {
            name: "body",
            query: String::new(),
            content_type,
            body: body.to_owned(),
        };
        // A message write needs a user (an application key's is 403 need_user): a user's key.
        let key = if path.starts_with("/chat/Message") {
            KEY_ME
        } else {
            KEY_OWNER
        };
        let reply = send(&gate, key, method, &path, &encoded).await;
        assert_refused(&gate, &reply, 400, "token_param", "base");
    }
    // Not a top-level token: forwarded.
    let reply = send(
        &gate,
        KEY_OWNER,
        "GET",
        "/chat/Dialog.json?tokens=1&user%5Btoken%5D=2",
        &bare(),
    )
    .await;
    assert_forwarded(&gate, &reply, 200);
    // A QB-Token request is QuickBlox's to judge.
    let reply = gate
        .send(
            "GET",
            "/chat/Dialog.json?token=abc",
            &[("qb-token", GROUP_TOKEN)],
            "",
        )
        .await;
    assert_eq!(reply.reason(), None);
    assert!(!gate.sandbox.take_received().is_empty());
}

#[tokio::test]
async fn the_token_parameter_is_refused_in_report_mode_too() {
    let gate = Gate::start("dialog_rules:\n  mode: report\n").await;
    let auth = format!("ApiKey {KEY_APP}");
    let reply = gate
        .send(
            "POST",
            "/chat/Dialog.json",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            r#"{"type":2,"name":"x","token":"abc"}"#,
        )
        .await;
    assert_refused(&gate, &reply, 400, "token_param", "base");
}

#[test]
fn check_warns_about_a_key_for_any_user_that_mints_tokens() {
    let dir = std::env::temp_dir().join(format!("qbgate-lp-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |text: String| {
        let path = dir.join("policy.yaml");
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_qbgate"))
            .args(["check", "--policy"])
            .arg(&path)
            .env("QB_API_KEY", "k")
            .output()
            .unwrap()
    };
    let policy = |on_behalf_of: &str| {
        format!(
            "version: 1\nupstream:\n  api_key: {{ env: QB_API_KEY }}\nkeys:\n  - id: risky\n    sha256: {}\n    on_behalf_of: {on_behalf_of}\n    powers: [mint_tokens]\n",
            digest(KEY_ME)
        )
    };
    let out = run(policy("any"));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: key `risky`") && stderr.contains("mint_tokens"),
        "{stderr}"
    );
    for quiet in ["none", "[123]"] {
        let out = run(policy(quiet));
        assert!(out.status.success());
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
