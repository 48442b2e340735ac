//! The address book: every user's own contacts, one book per device (`udid`) plus one without a
//! device, and QuickBlox's endpoints for it.
//!
//! | request | answer |
//! |---|---|
//! | `POST /address_book.json` | `{"deleted":N,"rejected":{..},"created":N,"updated":N}`: `contacts` (an array, or Rails' `contacts[][name]`/`contacts[0][name]` forms) of `{name, phone, destroy}` merged into the book by phone (`destroy=1` removes one); `force=1` replaces the book; `udid` picks the device's book; a contact without a phone is rejected by its index |
//! | `GET /address_book.json` | `[{"name","phone"},..]`, the book of `udid` |
//! | `GET /address_book/registered_users.json` | `{"items":[{"user":{"id","phone"}},..]}`: the users whose phone ([`seed::phone`]) is in the book of `udid` (`compact=1` or not, the same fields) |
//!
//! As everywhere in the sandbox, what is sent is applied; a book is the acting user's own, so
//! there is nothing to judge. The application, having no book, gets 403 "Forbidden. Need user.".

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::reply::{base_error, Reply};
use super::sessions::Actor;
use super::{lock, seed, Sandbox};

/// One contact as the book keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Contact {
    name: String,
    phone: String,
}

/// Whose book and which device's (`""`: no device).
pub(super) type BookKey = (u64, String);

fn need_user() -> Reply {
    base_error(StatusCode::FORBIDDEN, "Forbidden. Need user.")
}

/// A scalar parameter as text (`"1"`, `1`, `true` alike).
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(u8::from(*b).to_string()),
        _ => None,
    }
}

fn is_one(value: Option<&Value>) -> bool {
    matches!(text(value).as_deref(), Some("1" | "true"))
}

fn udid(params: &Map<String, Value>) -> String {
    text(params.get("udid")).unwrap_or_default()
}

/// The `contacts` parameter as a list: an array, or a hash keyed by index as a Rails form
/// `contacts[0][name]` builds it (in index order).
fn contacts(params: &Map<String, Value>) -> Vec<&Value> {
    match params.get("contacts") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Object(by_index)) => {
            let mut items: Vec<(u64, &Value)> = by_index
                .iter()
                .map(|(k, v)| (k.parse().unwrap_or(u64::MAX), v))
                .collect();
            items.sort_by_key(|(k, _)| *k);
            items.into_iter().map(|(_, v)| v).collect()
        }
        _ => Vec::new(),
    }
}

impl Sandbox {
    /// `user`'s book for `udid` (`""`: no device), as `GET /address_book.json` shows it.
    pub fn address_book(&self, user: u64, udid: &str) -> Vec<Value> {
        let state = lock(&self.inner.state);
        state
            .address_books
            .get(&(user, udid.to_owned()))
            .map(|book| book.iter().map(contact_json).collect())
            .unwrap_or_default()
    }

    /// `POST /address_book`: merges (or with `force=1` replaces) the acting user's book.
    pub(super) fn upload_address_book(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let Actor::User(me) = actor else {
            return need_user();
        };
        let mut state = lock(&self.inner.state);
        let book = state.address_books.entry((me, udid(params))).or_default();
        let (mut created, mut updated, mut deleted) = (0u64, 0u64, 0u64);
        if is_one(params.get("force")) {
            deleted += book.len() as u64;
            book.clear();
        }
        let mut rejected = Map::new();
        for (index, contact) in contacts(params).into_iter().enumerate() {
            let field = |name| text(contact.get(name)).filter(|s| !s.is_empty());
            let Some(phone) = field("phone") else {
                rejected.insert(index.to_string(), json!(["phone can't be blank"]));
                continue;
            };
            let existing = book.iter().position(|c| c.phone == phone);
            match (existing, is_one(contact.get("destroy"))) {
                (Some(at), true) => {
                    book.remove(at);
                    deleted += 1;
                }
                (None, true) => {
                    rejected.insert(index.to_string(), json!(["contact not found"]));
                }
                (Some(at), false) => {
                    book[at].name = field("name").unwrap_or_default();
                    updated += 1;
                }
                (None, false) => {
                    book.push(Contact {
                        name: field("name").unwrap_or_default(),
                        phone,
                    });
                    created += 1;
                }
            }
        }
        (
            StatusCode::OK,
            json!({"deleted": deleted, "rejected": rejected, "created": created, "updated": updated}),
        )
    }

    /// `GET /address_book`: the acting user's book for `udid`.
    pub(super) fn get_address_book(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let Actor::User(me) = actor else {
            return need_user();
        };
        (
            StatusCode::OK,
            Value::Array(self.address_book(me, &udid(params))),
        )
    }

    /// `GET /address_book/registered_users`: the users whose phone is in the book.
    pub(super) fn registered_users(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let Actor::User(me) = actor else {
            return need_user();
        };
        let state = lock(&self.inner.state);
        let book = state.address_books.get(&(me, udid(params)));
        let items: Vec<Value> = state
            .users
            .iter()
            .map(|u| (u.id, seed::phone(u.id)))
            .filter(|(_, phone)| book.is_some_and(|b| b.iter().any(|c| &c.phone == phone)))
            .map(|(id, phone)| json!({"user": {"id": id, "phone": phone}}))
            .collect();
        (StatusCode::OK, json!({ "items": items }))
    }
}

fn contact_json(contact: &Contact) -> Value {
    json!({"name": contact.name, "phone": contact.phone})
}

#[cfg(test)]
mod tests {
    use super::super::routing::{route, Route};
    use super::*;

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap()
    }

    #[test]
    fn address_book_routes() {
        assert_eq!(route("/address_book.json").route, Route::AddressBook);
        assert_eq!(route("/Address_Book").route, Route::AddressBook);
        assert_eq!(
            route("/address_book/registered_users.json").route,
            Route::AddressBookRegistered
        );
        assert_eq!(route("/address_book/other.json").route, Route::Unknown);
    }

    #[test]
    fn a_book_is_merged_replaced_and_per_user_and_device() {
        let sandbox = Sandbox::new(None);
        let me = Actor::User(seed::RECIPE_USER);
        let phone = seed::phone(seed::OCCUPANT);
        let first = params(json!({"contacts": [
            {"name": "Occupant", "phone": phone},
            {"name": "Nobody", "phone": "+100"},
            {"name": "No phone"},
        ]}));
        let (status, body) = sandbox.upload_address_book(me, &first);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["created"], 2);
        assert_eq!(body["rejected"]["2"][0], "phone can't be blank");
        assert_eq!(sandbox.address_book(seed::RECIPE_USER, "").len(), 2);
        assert!(sandbox.address_book(seed::OWNER, "").is_empty());

        // A form's `contacts[0][..]` hash, a destroy and an update.
        let second = params(json!({"contacts": {
            "1": {"phone": "+100", "destroy": "1"},
            "0": {"name": "Renamed", "phone": phone},
        }}));
        let (_, body) = sandbox.upload_address_book(me, &second);
        assert_eq!(
            (body["updated"].clone(), body["deleted"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(
            sandbox.address_book(seed::RECIPE_USER, ""),
            vec![json!({"name": "Renamed", "phone": phone})]
        );
        let (_, registered) = sandbox.registered_users(me, &Map::new());
        assert_eq!(registered["items"][0]["user"]["id"], seed::OCCUPANT);

        // Another device's book, then a forced replacement of the first.
        let device = params(json!({"udid": "phone-1", "contacts": [{"phone": "+200"}]}));
        sandbox.upload_address_book(me, &device);
        assert_eq!(sandbox.address_book(seed::RECIPE_USER, "phone-1").len(), 1);
        let force = params(json!({"force": 1, "contacts": [{"phone": "+300"}]}));
        let (_, body) = sandbox.upload_address_book(me, &force);
        assert_eq!(body["deleted"], 1);
        assert_eq!(
            sandbox.address_book(seed::RECIPE_USER, "")[0]["phone"],
            "+300"
        );
        assert_eq!(sandbox.address_book(seed::RECIPE_USER, "phone-1").len(), 1);

        let app = sandbox.upload_address_book(Actor::Application, &force);
        assert_eq!(app.0, StatusCode::FORBIDDEN);
    }
}
