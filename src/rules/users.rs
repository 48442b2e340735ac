//! User-account rules: what a key may do to QuickBlox user accounts, and the `token` parameter.
//!
//! QuickBlox lets an API key do anything to any account; the gateway narrows it to what the
//! key's acting user may do to his own account, plus the account-owner [`Power`]s the policy
//! grants the key (`powers:`). Always enforced: these are not dialog rules, and
//! `dialog_rules.mode` does not apply to them.
//!
//! | request | allowed when | else |
//! |---|---|---|
//! | `POST /users` | `create_users` | 403 `power_required` |
//! | `POST /users/{id}/tokens` | `mint_tokens`, whatever the id (the acting user's own too) and whatever `on_behalf_of` | 403 `power_required` |
//! | `PUT`/`PATCH`/`DELETE /users/{id}` | `id` is the acting user, or `manage_users` | 403 `power_required` |
//! | `PUT`/`PATCH /users/{id}` changing the acting user's own `password` | `old_password` given, not blank, beside it | 422 `old_password_required` |
//! | `DELETE /users/external/{ext}` | `manage_users` | 403 `power_required` |
//! | any other write under `/users` | `manage_users` | 403 `power_required` |
//! | an id that is not a positive decimal (no sign, no leading zero, no extension but `.json`) | never | 400 `user_id_invalid` |
//!
//! Routes are read from the request's route key: decoded, lowercased, a trailing `.json`
//! removed; any other extension on the last segment is dropped where a word is expected
//! (`tokens.xml` is `tokens`: Rails reads it as the response format) and refused in an id.
//!
//! The password check reads the parameter document [`crate::params::parse`] builds (body and
//! query merged): `user[password]` needs a non-blank `user[old_password]`; a top-level
//! `password` (which Rails' parameter wrapping may move into `user`) needs a top-level
//! `old_password`.

use http::Method;
use serde_json::{Map, Value};

use super::Rejection;
use crate::policy::stem;
use crate::policy::{Power, Powers};

/// A write under `/users`, as the rules tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsersRoute {
    /// `POST /users`.
    Create,
    /// `PUT` or `PATCH /users/{id}`.
    Update { id: u64 },
    /// `DELETE /users/{id}`.
    Delete { id: u64 },
    /// `DELETE /users/external/{ext}`.
    DeleteExternal,
    /// `POST /users/{id}/tokens`: a session token for that user.
    MintToken,
    /// Any other write under `/users`.
    Other,
}

/// Who asks: the key's acting user (`None`: the application) and the key's powers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user: Option<u64>,
    pub powers: Powers,
}

/// Classifies a request by its method and route key segments. `Ok(None)`: not a write under
/// `/users` (GET, HEAD and OPTIONS never are). An id that is not a positive decimal is a 400.
pub fn classify<'a>(
    method: &Method,
    mut route: impl Iterator<Item = &'a str>,
) -> Result<Option<UsersRoute>, Rejection> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(None);
    }
    if route.next().map(stem) != Some("users") {
        return Ok(None);
    }
    let rest: Vec<&str> = route.collect();
    let (put, delete, post) = (
        *method == Method::PUT || *method == Method::PATCH,
        *method == Method::DELETE,
        *method == Method::POST,
    );
    let route = match rest.as_slice() {
        [] if post => UsersRoute::Create,
        [external, _] if delete && stem(external) == "external" => UsersRoute::DeleteExternal,
        [id] if put => UsersRoute::Update { id: user_id(id)? },
        [id] if delete => UsersRoute::Delete { id: user_id(id)? },
        [_, tokens] if post && stem(tokens) == "tokens" => UsersRoute::MintToken,
        _ => UsersRoute::Other,
    };
    Ok(Some(route))
}

/// Judges a write under `/users` (see the module doc's table).
pub fn check(
    route: UsersRoute,
    params: &Map<String, Value>,
    caller: Caller,
) -> Result<(), Rejection> {
    let own = |id: u64| caller.user == Some(id);
    let needs = |power: Power| {
        if caller.powers.contains(power) {
            Ok(())
        } else {
            Err(power_required(power))
        }
    };
    match route {
        UsersRoute::Create => needs(Power::CreateUsers),
        UsersRoute::MintToken => needs(Power::MintTokens),
        UsersRoute::Update { id } if own(id) => check_own_password(params),
        UsersRoute::Delete { id } if own(id) => Ok(()),
        UsersRoute::Update { .. }
        | UsersRoute::Delete { .. }
        | UsersRoute::DeleteExternal
        | UsersRoute::Other => needs(Power::ManageUsers),
    }
}

/// A password change of one's own account needs the old password beside the new one.
fn check_own_password(params: &Map<String, Value>) -> Result<(), Rejection> {
    let places = [params.get("user").and_then(Value::as_object), Some(params)];
    for place in places.into_iter().flatten() {
        if place.contains_key("password") && is_blank(place.get("old_password")) {
            return Err(Rejection::invalid(
                "old_password_required",
                "old_password",
                "can't be blank",
            ));
        }
    }
    Ok(())
}

/// Refuses a top-level `token` parameter in any spelling Rack reads: with an API key, QuickBlox
/// would read it as a session.
pub fn check_token_param(params: &Map<String, Value>) -> Result<(), Rejection> {
    if params.keys().any(|k| names_token(k.as_bytes())) {
        return Err(token_param());
    }
    Ok(())
}

/// The 400 for a `token` parameter on an API-key request.
pub fn token_param() -> Rejection {
    Rejection {
        status: 400,
        reason: "token_param",
        field: None,
        message: "The token parameter is not accepted with an API key".into(),
    }
}

/// Does a key name `token` at its top level, as Rack reads key names (leading brackets
/// skipped, the name ends at the next bracket; case and surrounding space ignored)?
fn names_token(key: &[u8]) -> bool {
    crate::request::body::names_key(key, b"token")
}

/// Rails' `blank?`: absent, null, an empty or all-space string, an empty list or hash.
fn is_blank(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::Bool(b)) => !b,
        Some(Value::Number(_)) => false,
    }
}

fn power_required(power: Power) -> Rejection {
    Rejection::forbidden(
        "power_required",
        format!(
            "This key needs the `{}` power for this request",
            power.word()
        ),
    )
}

/// A positive decimal: digits only, no sign, no leading zero, fits `u64`.
fn user_id(segment: &str) -> Result<u64, Rejection> {
    let valid = !segment.is_empty()
        && segment.len() <= 20
        && !segment.starts_with('0')
        && segment.bytes().all(|b| b.is_ascii_digit());
    valid
        .then(|| segment.parse().ok())
        .flatten()
        .ok_or_else(|| Rejection {
            status: 400,
            reason: "user_id_invalid",
            field: None,
            message: "The user id must be a positive decimal number".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(method: Method, path: &str) -> Result<Option<UsersRoute>, Rejection> {
        classify(&method, path.split('/'))
    }

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const ME: Caller = Caller {
        user: Some(101),
        powers: Powers::NONE,
    };

    #[test]
    fn routes_are_told_apart() {
        use UsersRoute::*;
        assert_eq!(route(Method::POST, "users"), Ok(Some(Create)));
        assert_eq!(route(Method::POST, "users.xml"), Ok(Some(Create)));
        assert_eq!(route(Method::PUT, "users/5"), Ok(Some(Update { id: 5 })));
        assert_eq!(route(Method::PATCH, "users/5"), Ok(Some(Update { id: 5 })));
        assert_eq!(route(Method::DELETE, "users/5"), Ok(Some(Delete { id: 5 })));
        assert_eq!(route(Method::POST, "users/5/tokens"), Ok(Some(MintToken)));
        assert_eq!(
            route(Method::POST, "users/x/tokens.xml"),
            Ok(Some(MintToken))
        );
        assert_eq!(
            route(Method::DELETE, "users/external/7"),
            Ok(Some(DeleteExternal))
        );
        assert_eq!(route(Method::POST, "users/5"), Ok(Some(Other)));
        assert_eq!(route(Method::PUT, "users"), Ok(Some(Other)));
        assert_eq!(route(Method::GET, "users/5"), Ok(None));
        assert_eq!(route(Method::POST, "chat/dialog"), Ok(None));
        for id in [
            "0",
            "05",
            "-5",
            "+5",
            "5.xml",
            "5x",
            "",
            "99999999999999999999999",
        ] {
            let path = format!("users/{id}");
            let refused = route(Method::PUT, &path).unwrap_err();
            assert_eq!((refused.status, refused.reason), (400, "user_id_invalid"));
        }
    }

    #[test]
    fn powers_are_required_by_route() {
        let empty = Map::new();
        let refused = |route, caller| check(route, &empty, caller).unwrap_err().reason;
        assert_eq!(refused(UsersRoute::Create, ME), "power_required");
        assert_eq!(refused(UsersRoute::MintToken, ME), "power_required");
        assert_eq!(refused(UsersRoute::Update { id: 7 }, ME), "power_required");
        assert_eq!(refused(UsersRoute::Delete { id: 7 }, ME), "power_required");
        assert_eq!(refused(UsersRoute::DeleteExternal, ME), "power_required");
        let app = Caller { user: None, ..ME };
        assert_eq!(
            refused(UsersRoute::Delete { id: 101 }, app),
            "power_required"
        );
        assert!(check(UsersRoute::Delete { id: 101 }, &empty, ME).is_ok());
        assert!(check(UsersRoute::Update { id: 101 }, &empty, ME).is_ok());
        let all = Caller {
            user: Some(101),
            powers: Powers::NONE
                .with(Power::CreateUsers)
                .with(Power::MintTokens)
                .with(Power::ManageUsers),
        };
        for route in [
            UsersRoute::Create,
            UsersRoute::MintToken,
            UsersRoute::Update { id: 7 },
            UsersRoute::Delete { id: 7 },
            UsersRoute::DeleteExternal,
            UsersRoute::Other,
        ] {
            assert!(check(route, &empty, all).is_ok(), "{route:?}");
        }
    }

    #[test]
    fn an_own_password_change_needs_the_old_password_beside_it() {
        let own = UsersRoute::Update { id: 101 };
        let manager = Caller {
            powers: Powers::NONE.with(Power::ManageUsers),
            ..ME
        };
        for caller in [ME, manager] {
            for params in [
                json!({"user": {"password": "new"}}),
                json!({"user": {"password": "new", "old_password": ""}}),
                json!({"user": {"password": "new", "old_password": null}}),
                json!({"user": {"password": "new"}, "old_password": "old"}),
                json!({"password": "new", "user": {"old_password": "old"}}),
            ] {
                let refused = check(own, &doc(params.clone()), caller).unwrap_err();
                assert_eq!(refused.status, 422, "{params}");
                assert_eq!(refused.reason, "old_password_required");
                assert_eq!(
                    refused.body(),
                    json!({"errors": {"old_password": ["can't be blank"]}})
                );
            }
        }
        let with_old = doc(json!({"user": {"password": "new", "old_password": "old"}}));
        assert!(check(own, &with_old, ME).is_ok());
        let other = doc(json!({"user": {"password": "new"}}));
        assert!(check(UsersRoute::Update { id: 7 }, &other, manager).is_ok());
    }

    #[test]
    fn a_token_parameter_is_refused_in_any_spelling() {
        for key in ["token", "TOKEN", " token", "token[]", "[token]", "token[x]"] {
            let mut params = Map::new();
            params.insert(key.to_owned(), json!("t"));
            let refused = check_token_param(&params).unwrap_err();
            assert_eq!((refused.status, refused.reason), (400, "token_param"));
        }
        assert!(check_token_param(&doc(json!({"tokens": 1, "user": {"token": 1}}))).is_ok());
    }
}
