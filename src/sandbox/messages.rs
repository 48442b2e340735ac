//! Chat messages: their state, the seed, QuickBlox's message endpoints (create, list, unread
//! count, update, delete with and without `force`) and a dialog's notification setting.
//!
//! As everywhere in the sandbox, what is sent is applied: who may do what is the gateway's job.
//! A user is needed to send, mark, count or delete for oneself (the application gets 403
//! "Forbidden. Need user."); a list returned to a user marks its messages read for him.

use std::time::SystemTime;

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::dialogs::{self, Dialog};
use super::reply::{base_error, field_error, unix_seconds, Reply};
use super::sessions::Actor;
use super::{lock, seed, Sandbox};

/// One message as QuickBlox stores it.
pub(super) struct Message {
    pub id: String,
    dialog: String,
    sender: u64,
    recipient: Option<u64>,
    text: String,
    date_sent: u64,
    read_ids: Vec<u64>,
    delivered_ids: Vec<u64>,
    /// Users who deleted it for themselves (`DELETE` without `force`).
    deleted_for: Vec<u64>,
    custom: Map<String, Value>,
}

impl Message {
    pub(super) fn to_json(&self) -> Value {
        let mut body = self.custom.clone();
        let fixed = json!({
            "_id": self.id,
            "chat_dialog_id": self.dialog,
            "sender_id": self.sender,
            "recipient_id": self.recipient,
            "message": self.text,
            "date_sent": self.date_sent,
            "read_ids": self.read_ids,
            "delivered_ids": self.delivered_ids,
            "attachments": [],
        });
        if let Value::Object(fixed) = fixed {
            body.extend(fixed);
        }
        Value::Object(body)
    }
}

/// The seeded messages (see [`seed`] for their ids).
pub(super) fn seed_messages() -> Vec<Message> {
    use seed::*;
    let message = |id: &str, dialog: &str, sender: u64, n: u64| Message {
        id: id.to_owned(),
        dialog: dialog.to_owned(),
        sender,
        recipient: None,
        text: format!("seeded message {n}"),
        date_sent: 1_568_000_000 + n,
        read_ids: vec![sender],
        delivered_ids: vec![sender],
        deleted_for: Vec::new(),
        custom: Map::new(),
    };
    vec![
        message(GROUP_MESSAGE_BY_RECIPE, GROUP_ID, RECIPE_USER, 1),
        message(GROUP_MESSAGE_BY_OCCUPANT, GROUP_ID, OCCUPANT, 2),
        message(PRIVATE_MESSAGE_BY_OCCUPANT, PRIVATE_ID, OCCUPANT, 3),
        message(PRIVATE_MESSAGE_BY_RECIPE, PRIVATE_ID, RECIPE_USER, 4),
        message(PUBLIC_MESSAGE, PUBLIC_ID, OWNER, 5),
        message(GROUP_MESSAGE_BY_RECIPE_2, GROUP_ID, RECIPE_USER, 6),
    ]
}

/// The fields a create stores as themselves; the rest are custom fields.
const CREATE_FIELDS: [&str; 5] = [
    "chat_dialog_id",
    "recipient_id",
    "message",
    "send_to_chat",
    "markable",
];

fn need_user() -> Reply {
    base_error(StatusCode::FORBIDDEN, "Forbidden. Need user.")
}

impl Sandbox {
    /// The message as the sandbox stores it (`deleted_for` beside QuickBlox's fields).
    pub fn message(&self, id: &str) -> Option<Value> {
        let state = lock(&self.inner.state);
        let message = state.messages.iter().find(|m| m.id == id)?;
        let mut body = message.to_json();
        body["deleted_for"] = json!(message.deleted_for);
        Some(body)
    }

    /// Every message of a dialog, in the order sent.
    pub fn dialog_messages(&self, dialog: &str) -> Vec<Value> {
        let state = lock(&self.inner.state);
        state
            .messages
            .iter()
            .filter(|m| m.dialog == dialog)
            .map(Message::to_json)
            .collect()
    }

    /// Whether `user` gets push notifications of `dialog` (on until turned off).
    pub fn notifications_enabled(&self, dialog: &str, user: u64) -> bool {
        !lock(&self.inner.state)
            .notifications_off
            .contains(&(dialog.to_owned(), user))
    }

    pub(super) fn create_message(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let Actor::User(me) = actor else {
            return need_user();
        };
        let text = params
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let recipient = params.get("recipient_id").and_then(dialogs::user_id);
        let custom: Map<String, Value> = params
            .iter()
            .filter(|(k, _)| !CREATE_FIELDS.contains(&k.as_str()) && *k != "format")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let id = self.new_id();
        let mut state = lock(&self.inner.state);
        let dialog = match (params.get("chat_dialog_id"), recipient) {
            (Some(Value::String(dialog)), _) => {
                if !state.dialogs.iter().any(|d| &d.id == dialog) {
                    return base_error(StatusCode::NOT_FOUND, "Not found");
                }
                dialog.clone()
            }
            (None, Some(other)) => {
                match state.dialogs.iter().find(|d| d.is_private_of(me, other)) {
                    Some(dialog) => dialog.id.clone(),
                    None => {
                        let dialog = Dialog::private(format!("{id}d"), me, other);
                        let dialog_id = dialog.id.clone();
                        state.dialogs.push(dialog);
                        dialog_id
                    }
                }
            }
            _ => return field_error("chat_dialog_id", "can't be blank"),
        };
        let message = Message {
            id,
            dialog,
            sender: me,
            recipient,
            text,
            date_sent: unix_seconds(SystemTime::now()),
            read_ids: vec![me],
            delivered_ids: vec![me],
            deleted_for: Vec::new(),
            custom,
        };
        let body = message.to_json();
        state.messages.push(message);
        (StatusCode::OK, body)
    }

    pub(super) fn list_messages(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let Some(Value::String(dialog)) = params.get("chat_dialog_id") else {
            return field_error("chat_dialog_id", "can't be blank");
        };
        let ids: Option<Vec<String>> = match params.get("_id") {
            Some(Value::String(id)) => Some(vec![id.clone()]),
            Some(Value::Object(ops)) => ops.get("in").map(dialogs::strings),
            _ => None,
        };
        let limit = params
            .get("limit")
            .and_then(dialogs::user_id)
            .unwrap_or(100)
            .min(100);
        let skip = params.get("skip").and_then(dialogs::user_id).unwrap_or(0);
        let user = match actor {
            Actor::User(user) => Some(user),
            Actor::Application => None,
        };
        let mut state = lock(&self.inner.state);
        let mut items = Vec::new();
        for message in state
            .messages
            .iter_mut()
            .filter(|m| &m.dialog == dialog)
            .filter(|m| ids.as_ref().is_none_or(|ids| ids.contains(&m.id)))
            .filter(|m| user.is_none_or(|u| !m.deleted_for.contains(&u)))
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
        {
            if let Some(user) = user {
                if !message.read_ids.contains(&user) {
                    message.read_ids.push(user);
                }
            }
            items.push(message.to_json());
        }
        let body = json!({"skip": skip, "limit": limit, "items": items});
        (StatusCode::OK, body)
    }

    pub(super) fn unread_messages(&self, actor: Actor) -> Reply {
        let Actor::User(me) = actor else {
            return need_user();
        };
        let state = lock(&self.inner.state);
        let mut counts = Map::new();
        let mut total = 0u64;
        for dialog in state.dialogs.iter().filter(|d| d.has_member(me)) {
            let n = state
                .messages
                .iter()
                .filter(|m| m.dialog == dialog.id && m.sender != me)
                .filter(|m| !m.read_ids.contains(&me) && !m.deleted_for.contains(&me))
                .count() as u64;
            total += n;
            counts.insert(dialog.id.clone(), json!(n));
        }
        counts.insert("total".to_owned(), json!(total));
        (StatusCode::OK, Value::Object(counts))
    }

    pub(super) fn update_message(
        &self,
        actor: Actor,
        id: &str,
        params: &Map<String, Value>,
    ) -> Reply {
        let Some(Value::String(dialog)) = params.get("chat_dialog_id") else {
            return field_error("chat_dialog_id", "can't be blank");
        };
        let user = match actor {
            Actor::User(user) => Some(user),
            Actor::Application => None,
        };
        let marks = params.get("read").is_some_and(dialogs::truthy)
            || params.get("delivered").is_some_and(dialogs::truthy);
        if marks && user.is_none() {
            return need_user();
        }
        let mut state = lock(&self.inner.state);
        let Some(message) = state
            .messages
            .iter_mut()
            .find(|m| m.id == id && &m.dialog == dialog)
        else {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        };
        if let Some(user) = user {
            for (field, set) in [
                ("read", &mut message.read_ids),
                ("delivered", &mut message.delivered_ids),
            ] {
                if params.get(field).is_some_and(dialogs::truthy) && !set.contains(&user) {
                    set.push(user);
                }
            }
        }
        if let Some(text) = params.get("message").and_then(Value::as_str) {
            message.text = text.to_owned();
        }
        (StatusCode::OK, json!({}))
    }

    pub(super) fn delete_messages(
        &self,
        actor: Actor,
        ids: &str,
        params: &Map<String, Value>,
    ) -> Reply {
        let force = params.get("force").is_some_and(dialogs::truthy);
        let user = match (actor, force) {
            (Actor::User(user), _) => Some(user),
            (Actor::Application, true) => None,
            (Actor::Application, false) => return need_user(),
        };
        let mut deleted = Vec::new();
        let mut not_found = Vec::new();
        let mut state = lock(&self.inner.state);
        for id in ids.split(',').map(str::trim).filter(|id| !id.is_empty()) {
            let Some(pos) = state.messages.iter().position(|m| m.id == id) else {
                not_found.push(id.to_owned());
                continue;
            };
            match (force, user) {
                (false, Some(user)) => state.messages[pos].deleted_for.push(user),
                _ => {
                    state.messages.remove(pos);
                }
            }
            deleted.push(id.to_owned());
        }
        let body = json!({
            "SuccessfullyDeleted": {"ids": deleted},
            "NotFound": {"ids": not_found},
            "WrongPermissions": {"ids": []},
        });
        (StatusCode::OK, body)
    }

    pub(super) fn notifications(
        &self,
        actor: Actor,
        dialog: &str,
        set: Option<&Map<String, Value>>,
    ) -> Reply {
        let Actor::User(me) = actor else {
            return need_user();
        };
        let mut state = lock(&self.inner.state);
        if !state.dialogs.iter().any(|d| d.id == dialog) {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        }
        let key = (dialog.to_owned(), me);
        if let Some(params) = set {
            match params.get("enabled") {
                Some(v) if dialogs::truthy(v) => {
                    state.notifications_off.remove(&key);
                }
                Some(_) => {
                    state.notifications_off.insert(key.clone());
                }
                None => return field_error("enabled", "can't be blank"),
            }
        }
        let enabled = u8::from(!state.notifications_off.contains(&key));
        (
            StatusCode::OK,
            json!({"notifications": {"enabled": enabled}}),
        )
    }
}
