//! Least privilege as a property: random users of a scoped key (no powers) send random requests
//! over the judged endpoints of the catalog (dialogs, users, messages, push events and
//! subscriptions, blobs), through the gateway, to the sandbox. After each one,
//! the sandbox's state is compared with the state before it: whatever changed, the acting user
//! must have been allowed to change it (by QuickBlox's rules as the gateway enforces them). A
//! request the gateway forwarded that let U change what U does not own fails the property.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use qbgate::sandbox::seed::{
    BLOB_BY_OCCUPANT, BLOB_BY_RECIPE, EVENT_BY_OCCUPANT, EVENT_BY_RECIPE, GROUP_ID,
    GROUP_MESSAGE_BY_OCCUPANT, GROUP_MESSAGE_BY_RECIPE, NEW_OWNER, OCCUPANT, OTHER_OCCUPANT,
    OUTSIDER, OWNER, PRIVATE_ID, PRIVATE_MESSAGE_BY_OCCUPANT, PRIVATE_MESSAGE_BY_RECIPE, PUBLIC_ID,
    RECIPE_USER, SUBSCRIPTION_BY_OCCUPANT, SUBSCRIPTION_BY_RECIPE,
};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::{Gate, KEY_ANY};

const USERS: [u64; 6] = [
    RECIPE_USER,
    OWNER,
    OCCUPANT,
    OTHER_OCCUPANT,
    NEW_OWNER,
    OUTSIDER,
];
const DIALOGS: [&str; 3] = [GROUP_ID, PRIVATE_ID, PUBLIC_ID];
const MESSAGES: [&str; 4] = [
    GROUP_MESSAGE_BY_RECIPE,
    GROUP_MESSAGE_BY_OCCUPANT,
    PRIVATE_MESSAGE_BY_OCCUPANT,
    PRIVATE_MESSAGE_BY_RECIPE,
];

const EVENTS: [u64; 2] = [EVENT_BY_RECIPE, EVENT_BY_OCCUPANT];
const SUBSCRIPTIONS: [u64; 2] = [SUBSCRIPTION_BY_RECIPE, SUBSCRIPTION_BY_OCCUPANT];
const BLOBS: [u64; 2] = [BLOB_BY_RECIPE, BLOB_BY_OCCUPANT];

/// One request of a random sequence, by index into the tables above.
#[derive(Debug, Clone)]
enum Op {
    RenameDialog { dialog: usize },
    RemoveOccupant { dialog: usize, whom: usize },
    UpdateUser { whom: usize },
    DeleteUser { whom: usize },
    EditMessage { message: usize },
    ForceDeleteMessage { message: usize },
    DeleteEvent { event: usize },
    DeleteSubscription { subscription: usize },
    RenameBlob { blob: usize },
    DeleteBlob { blob: usize },
}

fn ops() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..DIALOGS.len()).prop_map(|dialog| Op::RenameDialog { dialog }),
        (0..DIALOGS.len(), 0..USERS.len())
            .prop_map(|(dialog, whom)| Op::RemoveOccupant { dialog, whom }),
        (0..USERS.len()).prop_map(|whom| Op::UpdateUser { whom }),
        (0..USERS.len()).prop_map(|whom| Op::DeleteUser { whom }),
        (0..MESSAGES.len()).prop_map(|message| Op::EditMessage { message }),
        (0..MESSAGES.len()).prop_map(|message| Op::ForceDeleteMessage { message }),
        (0..EVENTS.len()).prop_map(|event| Op::DeleteEvent { event }),
        (0..SUBSCRIPTIONS.len()).prop_map(|subscription| Op::DeleteSubscription { subscription }),
        (0..BLOBS.len()).prop_map(|blob| Op::RenameBlob { blob }),
        (0..BLOBS.len()).prop_map(|blob| Op::DeleteBlob { blob }),
    ]
}

fn ids(value: &Value, field: &str) -> Vec<u64> {
    value[field]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// Changes that went through (allowed ones): the property is not vacuous only if some did.
static CHANGES: AtomicUsize = AtomicUsize::new(0);

fn changed() {
    CHANGES.fetch_add(1, Ordering::Relaxed);
}

/// What U may do, read from the state before the request.
fn member(dialog: &Value, user: u64) -> bool {
    dialog["user_id"] == json!(user) || ids(dialog, "occupants_ids").contains(&user)
}

/// Run one request as `actor`; check that whatever it changed, `actor` could change.
async fn run(gate: &Gate, actor: u64, op: &Op, n: usize) -> Result<(), String> {
    let me = Some(actor);
    match *op {
        Op::RenameDialog { dialog } => {
            let id = DIALOGS[dialog];
            let before = gate.sandbox.dialog(id).ok_or("no dialog")?;
            let name = format!("renamed-{n}");
            let body = json!({ "name": name }).to_string();
            let path = format!("/chat/Dialog/{id}.json");
            gate.as_user(KEY_ANY, me, "PUT", &path, Some(&body)).await;
            let after = gate.sandbox.dialog(id).ok_or("no dialog")?;
            if after["name"] == json!(name) {
                changed();
                let allowed = match before["type"].as_u64() {
                    Some(1) => before["user_id"] == json!(actor),
                    Some(2) => member(&before, actor),
                    _ => false,
                };
                if !allowed {
                    return Err(format!("user {actor} renamed dialog {id}: {before}"));
                }
            }
        }
        Op::RemoveOccupant { dialog, whom } => {
            let id = DIALOGS[dialog];
            let victim = USERS[whom];
            let before = gate.sandbox.dialog(id).ok_or("no dialog")?;
            let body = json!({ "pull_all": { "occupants_ids": [victim] } }).to_string();
            let path = format!("/chat/Dialog/{id}.json");
            gate.as_user(KEY_ANY, me, "PUT", &path, Some(&body)).await;
            let after = gate.sandbox.dialog(id).ok_or("no dialog")?;
            let removed = ids(&before, "occupants_ids").contains(&victim)
                && !ids(&after, "occupants_ids").contains(&victim);
            if removed {
                changed();
            }
            if removed && victim != actor && before["user_id"] != json!(actor) {
                return Err(format!(
                    "user {actor} removed {victim} from dialog {id}: {before}"
                ));
            }
            if removed && victim == actor && before["type"] == json!(1) {
                return Err(format!("user {actor} left public dialog {id} by an update"));
            }
        }
        Op::UpdateUser { whom } => {
            let target = USERS[whom];
            let before = gate.sandbox.user(target);
            let name = format!("Full Name {n}");
            let body = json!({ "user": { "full_name": name } }).to_string();
            let path = format!("/users/{target}.json");
            gate.as_user(KEY_ANY, me, "PUT", &path, Some(&body)).await;
            let after = gate.sandbox.user(target);
            let updated = after.as_ref().map(|u| &u["full_name"]) == Some(&json!(name));
            if updated {
                changed();
            }
            if updated && target != actor {
                return Err(format!("user {actor} updated user {target}: {before:?}"));
            }
        }
        Op::DeleteUser { whom } => {
            let target = USERS[whom];
            let existed = gate.sandbox.user(target).is_some();
            let path = format!("/users/{target}.json");
            gate.as_user(KEY_ANY, me, "DELETE", &path, None).await;
            let deleted = existed && gate.sandbox.user(target).is_none();
            if deleted {
                changed();
            }
            if deleted && target != actor {
                return Err(format!("user {actor} deleted user {target}"));
            }
        }
        Op::EditMessage { message } => {
            let id = MESSAGES[message];
            let Some(before) = gate.sandbox.message(id) else {
                return Ok(());
            };
            let dialog = before["chat_dialog_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let text = format!("edited-{n}");
            let body = json!({ "chat_dialog_id": dialog, "message": text }).to_string();
            let path = format!("/chat/Message/{id}.json");
            gate.as_user(KEY_ANY, me, "PUT", &path, Some(&body)).await;
            let after = gate.sandbox.message(id);
            let edited = after.as_ref().map(|m| &m["message"]) == Some(&json!(text));
            if edited {
                changed();
            }
            if edited && before["sender_id"] != json!(actor) {
                return Err(format!("user {actor} edited message {id}: {before}"));
            }
        }
        Op::ForceDeleteMessage { message } => {
            let id = MESSAGES[message];
            let Some(before) = gate.sandbox.message(id) else {
                return Ok(());
            };
            let dialog_id = before["chat_dialog_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let dialog = gate.sandbox.dialog(&dialog_id).unwrap_or_default();
            let path = format!("/chat/Message/{id}.json");
            let auth = format!("ApiKey {KEY_ANY}");
            let user = actor.to_string();
            let body = format!("force=1&chat_dialog_id={dialog_id}");
            gate.send(
                "DELETE",
                &path,
                &[
                    ("authorization", &auth),
                    ("on-behalf-of", &user),
                    ("content-type", "application/x-www-form-urlencoded"),
                ],
                &body,
            )
            .await;
            let deleted = gate.sandbox.message(id).is_none();
            if deleted {
                changed();
            }
            if deleted
                && !(before["sender_id"] == json!(actor) && dialog["user_id"] == json!(actor))
            {
                return Err(format!(
                    "user {actor} force-deleted message {id} (dialog {dialog})"
                ));
            }
        }
        Op::DeleteEvent { event } => {
            let id = EVENTS[event];
            let owner = |sandbox: &qbgate::sandbox::Sandbox| {
                sandbox
                    .events()
                    .into_iter()
                    .find(|e| e["id"] == json!(id))
                    .map(|e| e["user_id"].clone())
            };
            let Some(before) = owner(&gate.sandbox) else {
                return Ok(());
            };
            let path = format!("/events/{id}.json");
            gate.as_user(KEY_ANY, me, "DELETE", &path, None).await;
            if owner(&gate.sandbox).is_none() {
                changed();
                if before != json!(actor) {
                    return Err(format!("user {actor} deleted event {id} of {before}"));
                }
            }
        }
        Op::DeleteSubscription { subscription } => {
            let id = SUBSCRIPTIONS[subscription];
            let owner = |sandbox: &qbgate::sandbox::Sandbox| {
                sandbox
                    .subscriptions()
                    .into_iter()
                    .find(|e| e["id"] == json!(id))
                    .map(|e| e["user_id"].clone())
            };
            let Some(before) = owner(&gate.sandbox) else {
                return Ok(());
            };
            let path = format!("/subscriptions/{id}.json");
            gate.as_user(KEY_ANY, me, "DELETE", &path, None).await;
            if owner(&gate.sandbox).is_none() {
                changed();
                if before != json!(actor) {
                    return Err(format!(
                        "user {actor} deleted subscription {id} of {before}"
                    ));
                }
            }
        }
        Op::RenameBlob { blob } => {
            let id = BLOBS[blob];
            let Some(before) = gate.sandbox.blob(id) else {
                return Ok(());
            };
            let name = format!("file-{n}.txt");
            let body = json!({ "blob": { "name": name } }).to_string();
            let path = format!("/blobs/{id}.json");
            gate.as_user(KEY_ANY, me, "PUT", &path, Some(&body)).await;
            let after = gate.sandbox.blob(id);
            if after.as_ref().map(|b| &b["blob"]["name"]) == Some(&json!(name)) {
                changed();
                if before["blob"]["owner_id"] != json!(actor) {
                    return Err(format!("user {actor} renamed blob {id}: {before}"));
                }
            }
        }
        Op::DeleteBlob { blob } => {
            let id = BLOBS[blob];
            let Some(before) = gate.sandbox.blob(id) else {
                return Ok(());
            };
            let path = format!("/blobs/{id}.json");
            gate.as_user(KEY_ANY, me, "DELETE", &path, None).await;
            if gate.sandbox.blob(id).is_none() {
                changed();
                if before["blob"]["owner_id"] != json!(actor) {
                    return Err(format!("user {actor} deleted blob {id}: {before}"));
                }
            }
        }
    }
    Ok(())
}

/// Random sequences of up to eight requests by random users, each sequence against a fresh
/// gateway and sandbox, so earlier changes (a removed occupant, a deleted user) shape later
/// decisions as they would in production.
#[test]
fn no_forwarded_request_lets_a_user_change_what_he_does_not_own() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let sequences = prop::collection::vec((0..USERS.len(), ops()), 1..8);
    runner
        .run(&sequences, |sequence| {
            let outcome = rt.block_on(async {
                let gate = Gate::start("").await;
                for (n, (actor, op)) in sequence.iter().enumerate() {
                    run(&gate, USERS[*actor], op, n).await?;
                }
                Ok::<(), String>(())
            });
            prop_assert!(outcome.is_ok(), "{}", outcome.unwrap_err());
            Ok(())
        })
        .unwrap();
    // The property holds for changes that happened: enough must have (allowed renames, own
    // profile updates, own message edits, ...), or the sequences tested nothing.
    let changes = CHANGES.load(Ordering::Relaxed);
    assert!(changes >= 10, "only {changes} requests changed anything");
}
