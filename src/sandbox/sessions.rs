//! Who a request acts as: the `QB-Token` sessions and `Authorization: ApiKey` with
//! `On-Behalf-Of` (see the module doc of [`super`]), and `GET /session.json`.

use std::time::SystemTime;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::json;

use super::dialogs::user_id_text;
use super::reply::{base_error, rfc3339, unix_seconds, Reply};
use super::{lock, seed, Sandbox};

/// Who a request acts as, once authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Actor {
    Application,
    User(u64),
}

pub(super) struct Auth {
    pub actor: Actor,
    /// The session token, for `GET /session.json`; `None` for an API key.
    pub token: Option<String>,
}

impl Sandbox {
    pub(super) fn authenticate(&self, headers: &HeaderMap) -> Result<Auth, Reply> {
        let token = single(headers, "qb-token")?;
        let authorization = single(headers, AUTHORIZATION.as_str())?;
        match (token, authorization) {
            (Some(_), Some(_)) => Err(base_error(
                StatusCode::BAD_REQUEST,
                "must be used either QB-Token or Authorization",
            )),
            (Some(token), None) => {
                let user = token
                    .to_str()
                    .ok()
                    .and_then(|t| lock(&self.inner.state).sessions.get(t).copied());
                match (user, token.to_str()) {
                    (Some(user), Ok(token)) => Ok(Auth {
                        actor: Actor::User(user),
                        token: Some(token.to_owned()),
                    }),
                    _ => Err(base_error(
                        StatusCode::UNAUTHORIZED,
                        "Required session does not exist",
                    )),
                }
            }
            (None, Some(authorization)) => {
                let key = authorization
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("ApiKey "))
                    .map(str::trim)
                    .filter(|k| !k.is_empty());
                let accepted = match (key, &self.inner.api_key) {
                    (Some(key), Some(expected)) => key == expected,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if !accepted {
                    return Err(base_error(StatusCode::UNAUTHORIZED, "Invalid API key"));
                }
                let actor = match single(headers, "on-behalf-of")? {
                    None => Actor::Application,
                    Some(value) => match value.to_str().ok().and_then(user_id_text) {
                        Some(user) if user > 0 => Actor::User(user),
                        _ => {
                            return Err(base_error(
                                StatusCode::BAD_REQUEST,
                                "On-Behalf-Of must be a user id",
                            ))
                        }
                    },
                };
                Ok(Auth { actor, token: None })
            }
            (None, None) => Err(base_error(StatusCode::UNAUTHORIZED, "Token is required")),
        }
    }

    pub(super) fn session(&self, auth: &Auth) -> Reply {
        let (Actor::User(user), Some(token)) = (auth.actor, &auth.token) else {
            return base_error(StatusCode::UNAUTHORIZED, "Required session does not exist");
        };
        let now = SystemTime::now();
        let stamp = rfc3339(now);
        let body = json!({"session": {
            "_id": self.new_id(),
            "application_id": seed::APPLICATION_ID,
            "created_at": stamp,
            "device_id": 0,
            "id": user,
            "nonce": 0,
            "token": token,
            "ts": unix_seconds(now),
            "updated_at": stamp,
            "user_id": user,
        }});
        (StatusCode::OK, body)
    }
}

/// The header's only value; two of them is a 400, as ambiguity must not pick one silently.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h HeaderValue>, Reply> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(base_error(
            StatusCode::BAD_REQUEST,
            &format!("{name} given more than once"),
        ));
    }
    Ok(first)
}
