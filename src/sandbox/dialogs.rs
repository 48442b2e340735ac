//! The dialogs: their state, the seed, and QuickBlox's dialog endpoints (list, create, update,
//! delete) with the value spellings clients send (`"1,2"`, `["1","2"]`, `[1,2]`).

use std::time::SystemTime;

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::reply::{base_error, field_error, rfc3339, Reply};
use super::sessions::Actor;
use super::{lock, seed, Sandbox};

/// One dialog as QuickBlox stores it.
pub(super) struct Dialog {
    pub id: String,
    kind: u8,
    name: Option<String>,
    photo: Option<String>,
    owner: u64,
    occupants: Vec<u64>,
    admins: Vec<u64>,
    data: Option<Map<String, Value>>,
    created_at: String,
    updated_at: String,
    last_message: Option<LastMessage>,
}

struct LastMessage {
    text: &'static str,
    date_sent: u64,
    id: &'static str,
    user_id: u64,
}
impl Sandbox {
    pub(super) fn list(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        // `_id=x` arrives as a string, `_id[in]=a,b` as {"in": "a,b"}; other operators are ignored.
        let ids: Option<Vec<String>> = match params.get("_id") {
            Some(Value::String(id)) => Some(vec![id.clone()]),
            Some(Value::Object(ops)) => ops.get("in").map(strings),
            _ => None,
        };
        let kind = params.get("type").and_then(number);
        let limit = params.get("limit").and_then(number).unwrap_or(100).min(100);
        let skip = params.get("skip").and_then(number).unwrap_or(0);

        let state = lock(&self.inner.state);
        let matching: Vec<&Dialog> = state
            .dialogs
            .iter()
            .filter(|d| d.visible_to(actor))
            .filter(|d| ids.as_ref().is_none_or(|ids| ids.contains(&d.id)))
            .filter(|d| kind.is_none_or(|k| k == u64::from(d.kind)))
            .collect();
        let items: Vec<Value> = matching
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|d| d.to_json())
            .collect();
        let body = json!({
            "total_entries": matching.len(),
            "skip": skip,
            "limit": limit,
            "items": items,
        });
        (StatusCode::OK, body)
    }

    pub(super) fn create(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let kind = match params.get("type") {
            None => return field_error("type", "can't be blank"),
            Some(v) => match number(v) {
                Some(k @ 1..=3) => k as u8,
                _ => return field_error("type", "is invalid"),
            },
        };
        let mut occupants = match params.get("occupants_ids").map(user_ids) {
            None => Vec::new(),
            Some(Some(ids)) => dedup(ids),
            Some(None) => return field_error("occupants_ids", "is invalid"),
        };
        let name = match optional_name(params) {
            Ok(name) => name,
            Err(reply) => return reply,
        };
        let data = match params.get("data") {
            None => None,
            Some(Value::Object(data)) => Some(data.clone()),
            Some(_) => return field_error("data", "is invalid"),
        };
        let owner = match actor {
            Actor::User(user) => user,
            Actor::Application => occupants.first().copied().unwrap_or(0),
        };
        match kind {
            // A public group is open to all: QuickBlox keeps no occupants for it.
            1 => occupants.clear(),
            _ if owner != 0 && !occupants.contains(&owner) => occupants.insert(0, owner),
            _ => {}
        }
        if kind == 3 && occupants.len() > 2 {
            return base_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Too many occupants for Private Dialog.",
            );
        }
        let now = rfc3339(SystemTime::now());
        let dialog = Dialog {
            id: self.new_id(),
            kind,
            name,
            photo: params.get("photo").and_then(text),
            owner,
            occupants,
            admins: Vec::new(),
            data,
            created_at: now.clone(),
            updated_at: now,
            last_message: None,
        };
        let body = dialog.to_json();
        lock(&self.inner.state).dialogs.push(dialog);
        (StatusCode::OK, body)
    }

    pub(super) fn update(&self, id: &str, params: &Map<String, Value>) -> Reply {
        // Validate everything before changing anything, as one database update would.
        let name = match optional_name(params) {
            Ok(name) => name,
            Err(reply) => return reply,
        };
        let mut push = IdChanges::default();
        let mut pull = IdChanges::default();
        for (op, changes) in [("push_all", &mut push), ("pull_all", &mut pull)] {
            match params.get(op) {
                None => {}
                Some(Value::Object(fields)) => {
                    for (field, slot) in [
                        ("occupants_ids", &mut changes.occupants),
                        ("admin_ids", &mut changes.admins),
                    ] {
                        match fields.get(field).map(user_ids) {
                            None => {}
                            Some(Some(ids)) => *slot = ids,
                            Some(None) => return field_error(field, "is invalid"),
                        }
                    }
                }
                Some(_) => return field_error(op, "is invalid"),
            }
        }
        let data = match params.get("data") {
            None => None,
            Some(Value::Object(data)) => Some(data),
            Some(_) => return field_error("data", "is invalid"),
        };
        let new_owner = match params.get("user_id") {
            None => None,
            Some(v) => match user_id(v) {
                Some(user) => Some(user),
                None => return field_error("user_id", "is invalid"),
            },
        };

        let mut state = lock(&self.inner.state);
        let Some(dialog) = state.dialogs.iter_mut().find(|d| d.id == id) else {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        };
        if let Some(name) = name {
            dialog.name = Some(name);
        }
        if let Some(photo) = params.get("photo") {
            dialog.photo = text(photo);
        }
        push_all(&mut dialog.occupants, &push.occupants);
        push_all(&mut dialog.admins, &push.admins);
        dialog.occupants.retain(|u| !pull.occupants.contains(u));
        dialog.admins.retain(|u| !pull.admins.contains(u));
        if let Some(data) = data {
            let stored = dialog.data.get_or_insert_with(Map::new);
            for (key, value) in data {
                stored.insert(key.clone(), value.clone());
            }
        }
        if let Some(owner) = new_owner {
            dialog.owner = owner;
        }
        dialog.updated_at = rfc3339(SystemTime::now());
        (StatusCode::OK, dialog.to_json())
    }

    pub(super) fn delete(&self, actor: Actor, ids: &str, params: &Map<String, Value>) -> Reply {
        let force = params.get("force").is_some_and(truthy);
        let user = match (actor, force) {
            (Actor::User(user), _) => Some(user),
            (Actor::Application, true) => None,
            (Actor::Application, false) => {
                return base_error(StatusCode::FORBIDDEN, "Forbidden. Need user.")
            }
        };
        let mut deleted = Vec::new();
        let mut not_found = Vec::new();
        let mut state = lock(&self.inner.state);
        for id in ids.split(',').map(str::trim).filter(|id| !id.is_empty()) {
            let Some(pos) = state.dialogs.iter().position(|d| d.id == id) else {
                not_found.push(id.to_owned());
                continue;
            };
            match (force, user) {
                (false, Some(user)) => {
                    let dialog = &mut state.dialogs[pos];
                    dialog.occupants.retain(|u| *u != user);
                    dialog.updated_at = rfc3339(SystemTime::now());
                }
                _ => {
                    state.dialogs.remove(pos);
                }
            }
            deleted.push(id.to_owned());
        }
        if deleted.is_empty() {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        }
        let body = json!({
            "SuccessfullyDeleted": {"ids": deleted},
            "NotFound": {"ids": not_found},
            "WrongPermissions": {"ids": []},
        });
        (StatusCode::OK, body)
    }
}

#[derive(Default)]
struct IdChanges {
    occupants: Vec<u64>,
    admins: Vec<u64>,
}

impl Dialog {
    /// A new PRIVATE dialog of `owner` and `other`, as a message to `other` creates it.
    pub(super) fn private(id: String, owner: u64, other: u64) -> Dialog {
        let now = rfc3339(SystemTime::now());
        Dialog {
            id,
            kind: 3,
            name: None,
            photo: None,
            owner,
            occupants: vec![owner, other],
            admins: Vec::new(),
            data: None,
            created_at: now.clone(),
            updated_at: now,
            last_message: None,
        }
    }

    /// A PRIVATE dialog of exactly these two users.
    pub(super) fn is_private_of(&self, a: u64, b: u64) -> bool {
        self.kind == 3
            && self.occupants.len() == 2
            && self.occupants.contains(&a)
            && self.occupants.contains(&b)
    }

    /// The owner or an occupant.
    pub(super) fn has_member(&self, user: u64) -> bool {
        self.owner == user || self.occupants.contains(&user)
    }

    fn visible_to(&self, actor: Actor) -> bool {
        match actor {
            Actor::Application => true,
            Actor::User(user) => {
                self.kind == 1 || self.owner == user || self.occupants.contains(&user)
            }
        }
    }

    pub(super) fn to_json(&self) -> Value {
        let last = self.last_message.as_ref();
        let jid = match self.kind {
            3 => Value::Null,
            _ => Value::String(format!(
                "{}_{}@muc.chat.quickblox.com",
                seed::APPLICATION_ID,
                self.id
            )),
        };
        let mut body = json!({
            "_id": self.id,
            "created_at": self.created_at,
            "last_message": last.map(|m| m.text),
            "last_message_date_sent": last.map(|m| m.date_sent),
            "last_message_id": last.map(|m| m.id),
            "last_message_user_id": last.map(|m| m.user_id),
            "name": self.name,
            "occupants_ids": self.occupants,
            "admin_ids": self.admins,
            "photo": self.photo,
            "type": self.kind,
            "updated_at": self.updated_at,
            "user_id": self.owner,
            "xmpp_room_jid": jid,
            "unread_messages_count": 0,
        });
        if let (Some(data), Value::Object(fields)) = (&self.data, &mut body) {
            fields.insert("data".to_owned(), Value::Object(data.clone()));
        }
        body
    }
}
pub(super) fn seed_dialogs() -> Vec<Dialog> {
    use seed::*;
    vec![
        Dialog {
            id: PUBLIC_ID.to_owned(),
            kind: 1,
            name: Some("Town square".to_owned()),
            photo: None,
            owner: OWNER,
            occupants: Vec::new(),
            admins: Vec::new(),
            data: None,
            created_at: "2019-09-08T17:20:00Z".to_owned(),
            updated_at: "2019-09-08T17:20:00Z".to_owned(),
            last_message: None,
        },
        Dialog {
            id: GROUP_ID.to_owned(),
            kind: 2,
            name: Some("Party planning".to_owned()),
            photo: Some("68123".to_owned()),
            owner: RECIPE_USER,
            occupants: vec![RECIPE_USER, OWNER, OCCUPANT, OTHER_OCCUPANT, NEW_OWNER],
            admins: Vec::new(),
            data: None,
            created_at: "2019-09-08T17:24:11Z".to_owned(),
            updated_at: "2019-09-08T19:36:54Z".to_owned(),
            // As in the reference's sample response.
            last_message: Some(LastMessage {
                text: "sure, I can wait",
                date_sent: 1_567_971_414,
                id: "5d755856a0eb47411e0b72a9",
                user_id: OWNER,
            }),
        },
        Dialog {
            id: PRIVATE_ID.to_owned(),
            kind: 3,
            name: None,
            photo: None,
            owner: OCCUPANT,
            occupants: vec![OCCUPANT, RECIPE_USER],
            admins: Vec::new(),
            data: Some(Map::from_iter([
                ("class_name".to_owned(), json!("CoolDialog")),
                ("category".to_owned(), json!("family")),
            ])),
            created_at: "2019-04-29T17:00:28Z".to_owned(),
            updated_at: "2019-04-29T17:00:28Z".to_owned(),
            last_message: None,
        },
    ]
}

fn optional_name(params: &Map<String, Value>) -> Result<Option<String>, Reply> {
    match params.get("name") {
        None => Ok(None),
        Some(Value::String(name)) if name.chars().count() > 200 => Err(field_error(
            "name",
            "is too long (maximum is 200 characters)",
        )),
        Some(Value::String(name)) => Ok(Some(name.clone())),
        Some(_) => Err(field_error("name", "is invalid")),
    }
}

/// User ids as clients send them: `[1, 2]`, `["1", "2"]`, `"1,2"` or `"1, 2"`.
pub(super) fn user_ids(value: &Value) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    match value {
        Value::Array(items) => {
            for item in items {
                out.extend(scalar_user_ids(item)?);
            }
        }
        other => out.extend(scalar_user_ids(other)?),
    }
    Some(out)
}

fn scalar_user_ids(value: &Value) -> Option<Vec<u64>> {
    match value {
        Value::Number(n) => n.as_u64().map(|n| vec![n]),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(user_id_text)
            .collect(),
        _ => None,
    }
}

pub(super) fn user_id(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => user_id_text(s.trim()),
        _ => None,
    }
}

/// Only plain decimal digits: `u64::from_str` would also take a leading `+`.
pub(super) fn user_id_text(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A non-negative integer from a JSON number or a form string.
fn number(value: &Value) -> Option<u64> {
    user_id(value)
}

pub(super) fn strings(value: &Value) -> Vec<String> {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match value {
        Value::String(s) => split(s),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(split)
            .collect(),
        _ => Vec::new(),
    }
}

/// A string field as QuickBlox stores it; a number (`"photo": 68123`) becomes its digits.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(super) fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_u64() == Some(1),
        Value::String(s) => matches!(s.as_str(), "1" | "true"),
        _ => false,
    }
}

fn dedup(ids: Vec<u64>) -> Vec<u64> {
    let mut out = Vec::with_capacity(ids.len());
    push_all(&mut out, &ids);
    out
}

/// QuickBlox adds to a set: an id already present is not added twice.
fn push_all(set: &mut Vec<u64>, ids: &[u64]) {
    for id in ids {
        if !set.contains(id) {
            set.push(*id);
        }
    }
}
