//! Least privilege as a property: random keys (acting for any user, for a list of users, or as
//! the application, each with a random set of account-owner powers) used by random callers (a
//! user the key may act for, one it may not, or none) send random requests over the judged
//! endpoints of the catalog (dialogs, users, messages, push events and subscriptions, blobs, the
//! address book), through the gateway, to the sandbox. After each one, the sandbox's state is
//! compared with the state before it: whatever changed, the acting user (or the application,
//! for a key with `on_behalf_of: none`) must have been allowed to change it, by QuickBlox's rules
//! as the gateway enforces them and the key's powers. A key never acts outside its user list:
//! a caller it may not act for gets nothing forwarded, and every request the sandbox receives
//! names (in `On-Behalf-Of`) only the user the key acted for.

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

use crate::support::{digest, Gate};

/// The random key of a sequence.
const KEY_PROP: &str = "ownership-key-prop";

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

/// Who a random key acts for: `on_behalf_of: any`, a list (indexes into [`USERS`]) or `none`.
#[derive(Debug, Clone)]
enum Acting {
    Any,
    List(Vec<usize>),
    App,
}

/// A random key: whom it acts for and its account-owner powers.
#[derive(Debug, Clone)]
struct KeySpec {
    acting: Acting,
    powers: Vec<&'static str>,
}

impl KeySpec {
    /// The key's line in the policy's `keys`.
    fn yaml(&self) -> String {
        let acting = match &self.acting {
            Acting::Any => "any".to_owned(),
            Acting::App => "none".to_owned(),
            Acting::List(users) => format!(
                "[{}]",
                users
                    .iter()
                    .map(|&u| USERS[u].to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "- {{ id: prop, sha256: {}, on_behalf_of: {acting}, powers: [{}] }}\n",
            digest(KEY_PROP),
            self.powers.join(", ")
        )
    }

    /// May the key act with this `On-Behalf-Of` (`None`: no header)?
    fn may_act(&self, header: Option<u64>) -> bool {
        match (&self.acting, header) {
            (Acting::Any, Some(_)) => true,
            (Acting::List(users), Some(user)) => users.iter().any(|&u| USERS[u] == user),
            (Acting::App, None) => true,
            _ => false,
        }
    }

    /// The `On-Behalf-Of` of a step: a user the key may act for when `fits`, else `user` as it
    /// was drawn (which may be outside the list, or a header on an application key).
    fn header(&self, user: Option<usize>, fits: bool) -> Option<u64> {
        if !fits {
            return user.map(|u| USERS[u]);
        }
        match &self.acting {
            Acting::Any => Some(USERS[user.unwrap_or(0)]),
            Acting::List(users) => Some(USERS[users[user.unwrap_or(0) % users.len()]]),
            Acting::App => None,
        }
    }
}

fn keys() -> impl Strategy<Value = KeySpec> {
    let acting = prop_oneof![
        Just(Acting::Any),
        prop::sample::subsequence((0..USERS.len()).collect::<Vec<_>>(), 1..4)
            .prop_map(Acting::List),
        Just(Acting::App),
    ];
    let powers =
        prop::sample::subsequence(vec!["create_users", "mint_tokens", "manage_users"], 0..=3);
    (acting, powers).prop_map(|(acting, powers)| KeySpec { acting, powers })
}

/// How one request was sent and who it acted as.
struct Caller<'a> {
    key: &'a KeySpec,
    /// The `On-Behalf-Of` sent.
    header: Option<u64>,
}

impl Caller<'_> {
    /// The key may act so: what it changes is judged as `actor()`'s doing; otherwise nothing
    /// may change.
    fn may_act(&self) -> bool {
        self.key.may_act(self.header)
    }

    /// The user acted for (`None`: the application, or a refused caller).
    fn actor(&self) -> Option<u64> {
        self.header.filter(|_| self.may_act())
    }

    fn is_app(&self) -> bool {
        self.may_act() && self.header.is_none()
    }

    fn manages_users(&self) -> bool {
        self.key.powers.contains(&"manage_users")
    }

    /// Is `value` (an owner or sender id) the acting user?
    fn is(&self, value: &Value) -> bool {
        self.actor().is_some_and(|a| *value == json!(a))
    }

    async fn send(&self, gate: &Gate, method: &str, path: &str, json: Option<&str>) {
        gate.as_user(KEY_PROP, self.header, method, path, json)
            .await;
    }
}

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
    UploadBook,
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
        Just(Op::UploadBook),
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

/// Requests that a key could not act for: the property that they forward nothing is not
/// vacuous only if some were sent.
static OUTSIDE: AtomicUsize = AtomicUsize::new(0);

/// What U may do, read from the state before the request.
fn member(dialog: &Value, caller: &Caller) -> bool {
    caller.is(&dialog["user_id"])
        || caller
            .actor()
            .is_some_and(|user| ids(dialog, "occupants_ids").contains(&user))
}

/// Run one request as `caller`; check that whatever it changed, `caller` could change, and that
/// the key acted for no one else.
async fn run(gate: &Gate, caller: &Caller<'_>, op: &Op, n: usize) -> Result<(), String> {
    gate.sandbox.take_received();
    change(gate, caller, op, n).await?;
    let received = gate.sandbox.take_received();
    if !caller.may_act() {
        OUTSIDE.fetch_add(1, Ordering::Relaxed);
        if !received.is_empty() {
            return Err(format!(
                "a key ({:?}) acted with On-Behalf-Of {:?}: {} forwarded",
                caller.key,
                caller.header,
                received.len()
            ));
        }
    }
    for r in &received {
        let named = r
            .headers
            .get("on-behalf-of")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if named.is_some() && named != caller.actor() {
            return Err(format!(
                "{} {} acted for {named:?}, the caller for {:?}",
                r.method,
                r.uri,
                caller.actor()
            ));
        }
    }
    Ok(())
}

/// Send `op` as `caller`; whatever it changed in the sandbox, `caller` must have been allowed to.
async fn change(gate: &Gate, caller: &Caller<'_>, op: &Op, n: usize) -> Result<(), String> {
    let actor = caller.actor();
    let app = caller.is_app();
    match *op {
        Op::RenameDialog { dialog } => {
            let id = DIALOGS[dialog];
            let before = gate.sandbox.dialog(id).ok_or("no dialog")?;
            let name = format!("renamed-{n}");
            let body = json!({ "name": name }).to_string();
            let path = format!("/chat/Dialog/{id}.json");
            caller.send(gate, "PUT", &path, Some(&body)).await;
            let after = gate.sandbox.dialog(id).ok_or("no dialog")?;
            if after["name"] == json!(name) {
                changed();
                // The application skips the who-may rows, never the field rows.
                let allowed = match before["type"].as_u64() {
                    Some(1) => app || caller.is(&before["user_id"]),
                    Some(2) => app || member(&before, caller),
                    _ => false,
                };
                if !allowed {
                    return Err(format!("{actor:?} renamed dialog {id}: {before}"));
                }
            }
        }
        Op::RemoveOccupant { dialog, whom } => {
            let id = DIALOGS[dialog];
            let victim = USERS[whom];
            let before = gate.sandbox.dialog(id).ok_or("no dialog")?;
            let body = json!({ "pull_all": { "occupants_ids": [victim] } }).to_string();
            let path = format!("/chat/Dialog/{id}.json");
            caller.send(gate, "PUT", &path, Some(&body)).await;
            let after = gate.sandbox.dialog(id).ok_or("no dialog")?;
            let removed = ids(&before, "occupants_ids").contains(&victim)
                && !ids(&after, "occupants_ids").contains(&victim);
            if removed {
                changed();
                let allowed = if app {
                    before["type"] == json!(2)
                } else {
                    caller.may_act()
                        && (actor == Some(victim) || caller.is(&before["user_id"]))
                        && before["type"] != json!(1)
                };
                if !allowed {
                    return Err(format!(
                        "{actor:?} removed {victim} from dialog {id}: {before}"
                    ));
                }
            }
        }
        Op::UpdateUser { whom } => {
            let target = USERS[whom];
            let before = gate.sandbox.user(target);
            let name = format!("Full Name {n}");
            let body = json!({ "user": { "full_name": name } }).to_string();
            let path = format!("/users/{target}.json");
            caller.send(gate, "PUT", &path, Some(&body)).await;
            let after = gate.sandbox.user(target);
            let updated = after.as_ref().map(|u| &u["full_name"]) == Some(&json!(name));
            if updated {
                changed();
            }
            let allowed = caller.may_act() && (caller.manages_users() || actor == Some(target));
            if updated && !allowed {
                return Err(format!("{actor:?} updated user {target}: {before:?}"));
            }
        }
        Op::DeleteUser { whom } => {
            let target = USERS[whom];
            let existed = gate.sandbox.user(target).is_some();
            let path = format!("/users/{target}.json");
            caller.send(gate, "DELETE", &path, None).await;
            let deleted = existed && gate.sandbox.user(target).is_none();
            if deleted {
                changed();
            }
            let allowed = caller.may_act() && (caller.manages_users() || actor == Some(target));
            if deleted && !allowed {
                return Err(format!("{actor:?} deleted user {target}"));
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
            caller.send(gate, "PUT", &path, Some(&body)).await;
            let after = gate.sandbox.message(id);
            let edited = after.as_ref().map(|m| &m["message"]) == Some(&json!(text));
            if edited {
                changed();
            }
            if edited && !caller.is(&before["sender_id"]) {
                return Err(format!("{actor:?} edited message {id}: {before}"));
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
            let auth = format!("ApiKey {KEY_PROP}");
            let user = caller.header.map(|u| u.to_string());
            let mut headers = vec![
                ("authorization", auth.as_str()),
                ("content-type", "application/x-www-form-urlencoded"),
            ];
            if let Some(user) = &user {
                headers.push(("on-behalf-of", user));
            }
            let body = format!("force=1&chat_dialog_id={dialog_id}");
            gate.send("DELETE", &path, &headers, &body).await;
            let deleted = gate.sandbox.message(id).is_none();
            if deleted {
                changed();
            }
            if deleted && !(caller.is(&before["sender_id"]) && caller.is(&dialog["user_id"])) {
                return Err(format!(
                    "{actor:?} force-deleted message {id} (dialog {dialog})"
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
            caller.send(gate, "DELETE", &path, None).await;
            if owner(&gate.sandbox).is_none() {
                changed();
                if !caller.is(&before) {
                    return Err(format!("{actor:?} deleted event {id} of {before}"));
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
            caller.send(gate, "DELETE", &path, None).await;
            if owner(&gate.sandbox).is_none() {
                changed();
                if !caller.is(&before) {
                    return Err(format!("{actor:?} deleted subscription {id} of {before}"));
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
            caller.send(gate, "PUT", &path, Some(&body)).await;
            let after = gate.sandbox.blob(id);
            if after.as_ref().map(|b| &b["blob"]["name"]) == Some(&json!(name)) {
                changed();
                if !caller.is(&before["blob"]["owner_id"]) {
                    return Err(format!("{actor:?} renamed blob {id}: {before}"));
                }
            }
        }
        Op::DeleteBlob { blob } => {
            let id = BLOBS[blob];
            let Some(before) = gate.sandbox.blob(id) else {
                return Ok(());
            };
            let path = format!("/blobs/{id}.json");
            caller.send(gate, "DELETE", &path, None).await;
            if gate.sandbox.blob(id).is_none() {
                changed();
                if !caller.is(&before["blob"]["owner_id"]) {
                    return Err(format!("{actor:?} deleted blob {id}: {before}"));
                }
            }
        }
        Op::UploadBook => {
            let books =
                |sandbox: &qbgate::sandbox::Sandbox| USERS.map(|u| sandbox.address_book(u, ""));
            let before = books(&gate.sandbox);
            let body = json!({"contacts": [{"name": format!("c{n}"), "phone": format!("+{n}")}]});
            caller
                .send(gate, "POST", "/address_book.json", Some(&body.to_string()))
                .await;
            let after = books(&gate.sandbox);
            for (i, user) in USERS.iter().enumerate() {
                if before[i] != after[i] {
                    changed();
                    if actor != Some(*user) {
                        return Err(format!("{actor:?} changed the address book of {user}"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Random keys, each used for a sequence of up to eight requests by random callers against a
/// fresh gateway and sandbox, so earlier changes (a removed occupant, a deleted user) shape later
/// decisions as they would in production. Most callers are ones the key may act for (`fits`);
/// the others test that a key never acts outside its list.
#[test]
fn no_forwarded_request_lets_a_user_change_what_he_does_not_own() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    let callers = (
        prop::option::weighted(0.9, 0..USERS.len()),
        prop::bool::weighted(0.8),
    );
    let sequences = (keys(), prop::collection::vec((callers, ops()), 1..8));
    runner
        .run(&sequences, |(key, sequence)| {
            let outcome = rt.block_on(async {
                let gate = Gate::start_with_keys("", &key.yaml()).await;
                for (n, ((user, fits), op)) in sequence.iter().enumerate() {
                    let caller = Caller {
                        key: &key,
                        header: key.header(*user, *fits),
                    };
                    run(&gate, &caller, op, n).await?;
                }
                Ok::<(), String>(())
            });
            prop_assert!(outcome.is_ok(), "{:?}: {}", key, outcome.unwrap_err());
            Ok(())
        })
        .unwrap();
    // The property holds for changes that happened: enough must have (allowed renames, own
    // profile updates, own message edits, ...), or the sequences tested nothing; and some
    // callers must have been ones the key may not act for.
    let changes = CHANGES.load(Ordering::Relaxed);
    assert!(changes >= 10, "only {changes} requests changed anything");
    let outside = OUTSIDE.load(Ordering::Relaxed);
    assert!(
        outside >= 5,
        "only {outside} requests by callers outside the keys"
    );
}
