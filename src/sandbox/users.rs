//! The users: their state, the seed, and the QuickBlox user endpoints the gateway's user rules
//! are about: create, update, delete (by id or external id) and minting a session token.
//!
//! | request | answer |
//! |---|---|
//! | `POST /users.json` | 201 `{"user":{..}}`; `user[login]` or `user[email]` and `user[password]` required, the login unique |
//! | `PUT` (or `PATCH`) `/users/<id>.json` | `{"user":{..}}`: `login`, `email`, `full_name`, `external_user_id`, `password` (an `old_password` given must match) |
//! | `DELETE /users/<id>.json` | 200 `{}` |
//! | `DELETE /users/external/<id>.json` | 200 `{}` |
//! | `POST /users/<id>/tokens.json` (API key only) | 201 `{"token":"..","expires_at":".."}`, the token a session of that user |
//!
//! Like the dialogs, it applies what it is sent: who may change which account is the gateway's
//! job. An unknown user is a 404.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::dialogs::user_id_text;
use super::reply::{base_error, field_error, rfc3339, Reply};
use super::sessions::Auth;
use super::{lock, seed, Sandbox};

/// One user as QuickBlox stores it.
pub(super) struct User {
    pub id: u64,
    login: Option<String>,
    email: Option<String>,
    full_name: Option<String>,
    external_user_id: Option<u64>,
    password: String,
}

impl User {
    fn to_json(&self) -> Value {
        json!({"user": {
            "id": self.id,
            "login": self.login,
            "email": self.email,
            "full_name": self.full_name,
            "external_user_id": self.external_user_id,
        }})
    }
}

/// Every seeded user (see the module doc of [`super`]), with login `user<id>`, password
/// [`seed::password`] and external id [`seed::external_id`].
pub(super) fn seed_users() -> Vec<User> {
    let mut ids = vec![
        seed::RECIPE_USER,
        seed::OWNER,
        seed::OCCUPANT,
        seed::OTHER_OCCUPANT,
        seed::NEW_OWNER,
    ];
    ids.extend(seed::ADDED);
    ids.push(seed::OUTSIDER);
    ids.into_iter()
        .map(|id| User {
            id,
            login: Some(format!("user{id}")),
            email: None,
            full_name: None,
            external_user_id: Some(seed::external_id(id)),
            password: seed::password(id),
        })
        .collect()
}

/// The `user` hash of the parameters; absent is empty.
fn user_params(params: &Map<String, Value>) -> Result<Map<String, Value>, Reply> {
    match params.get("user") {
        None => Ok(Map::new()),
        Some(Value::Object(user)) => Ok(user.clone()),
        Some(_) => Err(field_error("user", "is invalid")),
    }
}

/// A string field; a number is read as its text, as Rails casts it.
fn text(user: &Map<String, Value>, field: &str) -> Option<String> {
    match user.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Sandbox {
    /// The user as QuickBlox shows it (`{"user":{..}}`).
    pub fn user(&self, id: u64) -> Option<Value> {
        lock(&self.inner.state)
            .users
            .iter()
            .find(|u| u.id == id)
            .map(User::to_json)
    }

    /// The user's current password (to see an update take effect).
    pub fn user_password(&self, id: u64) -> Option<String> {
        lock(&self.inner.state)
            .users
            .iter()
            .find(|u| u.id == id)
            .map(|u| u.password.clone())
    }

    /// The user a `QB-Token` session acts as.
    pub fn session_user(&self, token: &str) -> Option<u64> {
        lock(&self.inner.state).sessions.get(token).copied()
    }

    pub(super) fn create_user(&self, params: &Map<String, Value>) -> Reply {
        let user = match user_params(params) {
            Ok(user) => user,
            Err(reply) => return reply,
        };
        let (login, email) = (text(&user, "login"), text(&user, "email"));
        if login.is_none() && email.is_none() {
            return base_error(StatusCode::UNPROCESSABLE_ENTITY, "login or email required");
        }
        let Some(password) = text(&user, "password").filter(|p| !p.is_empty()) else {
            return field_error("password", "can't be blank");
        };
        let mut state = lock(&self.inner.state);
        if login.is_some() && state.users.iter().any(|u| u.login == login) {
            return field_error("login", "has already been taken");
        }
        let id = 200_000_000 + self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let created = User {
            id,
            login,
            email,
            full_name: text(&user, "full_name"),
            external_user_id: text(&user, "external_user_id").and_then(|t| user_id_text(&t)),
            password,
        };
        let answer = created.to_json();
        state.users.push(created);
        (StatusCode::CREATED, answer)
    }

    pub(super) fn update_user(&self, id: &str, params: &Map<String, Value>) -> Reply {
        let changes = match user_params(params) {
            Ok(user) => user,
            Err(reply) => return reply,
        };
        let mut state = lock(&self.inner.state);
        let Some(user) =
            user_id_text(id).and_then(|id| state.users.iter_mut().find(|u| u.id == id))
        else {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        };
        if let Some(password) = text(&changes, "password") {
            if let Some(old) = text(&changes, "old_password") {
                if old != user.password {
                    return field_error("old_password", "is invalid");
                }
            }
            user.password = password;
        }
        if let Some(login) = text(&changes, "login") {
            user.login = Some(login);
        }
        if let Some(email) = text(&changes, "email") {
            user.email = Some(email);
        }
        if let Some(full_name) = text(&changes, "full_name") {
            user.full_name = Some(full_name);
        }
        if let Some(external) = text(&changes, "external_user_id") {
            user.external_user_id = user_id_text(&external);
        }
        (StatusCode::OK, user.to_json())
    }

    pub(super) fn delete_user(&self, id: &str) -> Reply {
        let id = user_id_text(id);
        self.remove_user(|u| Some(u.id) == id)
    }

    pub(super) fn delete_external_user(&self, external: &str) -> Reply {
        let external = user_id_text(external);
        self.remove_user(|u| u.external_user_id.is_some() && u.external_user_id == external)
    }

    fn remove_user(&self, which: impl Fn(&User) -> bool) -> Reply {
        let mut state = lock(&self.inner.state);
        let Some(at) = state.users.iter().position(which) else {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        };
        state.users.remove(at);
        (StatusCode::OK, json!({}))
    }

    /// A session of user `id`, made with the application's key.
    pub(super) fn mint_token(&self, auth: &Auth, id: &str) -> Reply {
        if auth.token.is_some() {
            return base_error(
                StatusCode::FORBIDDEN,
                "You don't have appropriate permissions to perform this operation",
            );
        }
        let mut state = lock(&self.inner.state);
        let Some(id) = user_id_text(id).filter(|&id| state.users.iter().any(|u| u.id == id)) else {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        };
        let n = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let token = format!("{:040x}", (u128::from(id) << 64) | u128::from(n));
        state.sessions.insert(token.clone(), id);
        let expires_at = rfc3339(SystemTime::now() + Duration::from_secs(2 * 3600));
        (
            StatusCode::CREATED,
            json!({"token": token, "expires_at": expires_at}),
        )
    }
}
