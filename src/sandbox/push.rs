//! Push events and subscriptions: their state, the seed and QuickBlox's endpoints for them.
//!
//! As everywhere in the sandbox, what is sent is applied: who may do what is the gateway's job.
//! An event's `user_id` is the acting user; a user lists only his own events and subscriptions
//! (the application lists every event). Creating needs a user (the application gets QuickBlox's
//! 422 "Forbidden. Need user." for a subscription, 403 for an event).

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::reply::{base_error, field_error, Reply};
use super::sessions::Actor;
use super::{lock, seed, Sandbox};

/// One event or one subscription: its id, its owner and the fields it was sent.
pub(super) struct Item {
    id: u64,
    user_id: u64,
    fields: Map<String, Value>,
}

impl Item {
    fn to_json(&self) -> Value {
        let mut body = self.fields.clone();
        body.insert("id".to_owned(), json!(self.id));
        body.insert("user_id".to_owned(), json!(self.user_id));
        Value::Object(body)
    }
}

/// The seeded events and subscriptions (see [`seed`] for their ids).
pub(super) fn seed_push() -> (Vec<Item>, Vec<Item>) {
    use seed::*;
    let event = |id, user_id| Item {
        id,
        user_id,
        fields: json!({"notification_type": "push", "event_type": "one_shot",
            "message": "c2VlZGVk", "user": {"ids": OUTSIDER.to_string()}})
        .as_object()
        .cloned()
        .unwrap_or_default(),
    };
    let subscription = |id, user_id| Item {
        id,
        user_id,
        fields: json!({"notification_channel": {"name": "apns"},
            "device": {"platform": {"name": "ios"}, "udid": format!("udid-{id}")}})
        .as_object()
        .cloned()
        .unwrap_or_default(),
    };
    (
        vec![
            event(EVENT_BY_RECIPE, RECIPE_USER),
            event(EVENT_BY_OCCUPANT, OCCUPANT),
        ],
        vec![
            subscription(SUBSCRIPTION_BY_RECIPE, RECIPE_USER),
            subscription(SUBSCRIPTION_BY_OCCUPANT, OCCUPANT),
        ],
    )
}

/// The object under `key` in `params` (`event`, `subscription`...), or an empty one.
fn section(params: &Map<String, Value>, key: &str) -> Map<String, Value> {
    params
        .get(key)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

fn parse_id(id: &str) -> Option<u64> {
    super::dialogs::user_id_text(id)
}

impl Sandbox {
    /// Every event, as `GET /events/{id}` would show it.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.inner.state)
            .events
            .iter()
            .map(Item::to_json)
            .collect()
    }

    /// Every subscription, with its owner.
    pub fn subscriptions(&self) -> Vec<Value> {
        lock(&self.inner.state)
            .subscriptions
            .iter()
            .map(Item::to_json)
            .collect()
    }

    fn next_push_id(&self) -> u64 {
        10_000
            + self
                .inner
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    /// `POST /events`: 201 `{"event":{..}}`; `event[notification_type]` and a recipient required.
    pub(super) fn create_event(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let Actor::User(me) = actor else {
            return base_error(StatusCode::FORBIDDEN, "Forbidden. Need user.");
        };
        let mut fields = section(params, "event");
        if !fields.contains_key("notification_type") {
            return field_error("notification_type", "can't be blank");
        }
        fields.remove("id");
        fields.remove("user_id");
        let item = Item {
            id: self.next_push_id(),
            user_id: me,
            fields,
        };
        let body = json!({ "event": item.to_json() });
        lock(&self.inner.state).events.push(item);
        (StatusCode::CREATED, body)
    }

    /// `GET /events`: the acting user's events (the application: all).
    pub(super) fn list_events(&self, actor: Actor) -> Reply {
        let state = lock(&self.inner.state);
        let items: Vec<Value> = state
            .events
            .iter()
            .filter(|e| actor == Actor::Application || actor == Actor::User(e.user_id))
            .map(|e| json!({ "event": e.to_json() }))
            .collect();
        (
            StatusCode::OK,
            json!({"current_page": 1, "per_page": 10, "total_entries": items.len(), "items": items}),
        )
    }

    /// `GET`, `PUT` (fields of `event` merged) or `DELETE /events/{id}`.
    pub(super) fn event(&self, id: &str, change: Option<Option<&Map<String, Value>>>) -> Reply {
        let mut state = lock(&self.inner.state);
        let Some(at) = parse_id(id).and_then(|id| state.events.iter().position(|e| e.id == id))
        else {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        };
        match change {
            None => (
                StatusCode::OK,
                json!({ "event": state.events[at].to_json() }),
            ),
            Some(Some(params)) => {
                let event = &mut state.events[at];
                for (k, v) in section(params, "event") {
                    if k != "id" && k != "user_id" {
                        event.fields.insert(k, v);
                    }
                }
                (StatusCode::OK, json!({ "event": event.to_json() }))
            }
            Some(None) => {
                state.events.remove(at);
                (StatusCode::OK, json!({}))
            }
        }
    }

    /// `POST /subscriptions`: 201 `[{"subscription":{..}}]`.
    pub(super) fn create_subscription(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let Actor::User(me) = actor else {
            return base_error(StatusCode::UNPROCESSABLE_ENTITY, "Forbidden. Need user.");
        };
        let mut fields = Map::new();
        for key in ["notification_channel", "push_token", "device"] {
            if let Some(v) = params.get(key) {
                fields.insert(key.to_owned(), v.clone());
            }
        }
        let item = Item {
            id: self.next_push_id(),
            user_id: me,
            fields,
        };
        let body = json!([{ "subscription": item.to_json() }]);
        lock(&self.inner.state).subscriptions.push(item);
        (StatusCode::CREATED, body)
    }

    /// `GET /subscriptions`: the acting user's, `[{"subscription":{..}},..]`; 404 when none.
    pub(super) fn list_subscriptions(&self, actor: Actor) -> Reply {
        let Actor::User(me) = actor else {
            return base_error(StatusCode::FORBIDDEN, "Forbidden. Need user.");
        };
        let state = lock(&self.inner.state);
        let items: Vec<Value> = state
            .subscriptions
            .iter()
            .filter(|s| s.user_id == me)
            .map(|s| json!({ "subscription": s.to_json() }))
            .collect();
        if items.is_empty() {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        }
        (StatusCode::OK, Value::Array(items))
    }

    /// `DELETE /subscriptions/{id}`.
    pub(super) fn delete_subscription(&self, id: &str) -> Reply {
        let mut state = lock(&self.inner.state);
        let Some(at) =
            parse_id(id).and_then(|id| state.subscriptions.iter().position(|s| s.id == id))
        else {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        };
        state.subscriptions.remove(at);
        (StatusCode::OK, json!({}))
    }
}
