//! Push rules: what a key acting for user U may do with push events and subscriptions.
//! QuickBlox lets any user push to any user and reads an API key's `On-Behalf-Of` as nothing
//! narrower than the application, so the gateway keeps U to what U's own session could do, and
//! to plain, immediate pushes to named users. Always enforced (`dialog_rules.mode` does not apply);
//! a failed lookup follows `dialog_rules.on_lookup_error`. Application keys' writes are refused
//! by the catalog (`need_user`); their reads and `QB-Token` requests are not judged here.
//!
//! | request | allowed when | else |
//! |---|---|---|
//! | `POST /events` | `event[notification_type]` is `push` | 403 `push_type` |
//! | `POST /events` | `event[event_type]` absent or `one_shot` | 403 `push_schedule` |
//! | `POST /events` | recipients only in `event[user][ids]` / `event[external_user][ids]` (comma-separated or an array of positive integers) | 403 `push_recipients` (tags or any other targeting) |
//! | `POST /events` | 1 to [`MAX_RECIPIENTS`] recipients, well formed | 422 `push_recipients` |
//! | `POST /events` | no `event[user_id]` | 403 `push_fields` |
//! | `GET /events`, `POST`/`GET /subscriptions` | always | |
//! | `GET`/`PUT`/`DELETE /events/{id}` | the event's `user_id` is U (looked up) | 404 `event_not_owner` |
//! | `PUT /events/{id}` | the fields given obey the `POST /events` rules | as above |
//! | `DELETE /subscriptions/{id}` | `id` is one of U's subscriptions (looked up as U) | 403 `subscription_not_owner` |
//!
//! An event that does not exist, or an id that is not a positive integer, is the same 404 as
//! another user's event: the answer does not tell the two apart. The flow: [`classify`] the
//! route, [`check_event`] the parameters, then [`check_event_owner`] /
//! [`check_subscription_owner`] the facts looked up.

use http::Method;
use serde_json::{Map, Value};

use super::Rejection;
use crate::policy::stem;

/// Most recipients one event may name (user ids and external ids together).
pub const MAX_RECIPIENTS: usize = 50;

/// A judged push request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRoute {
    /// `POST /events`.
    Create,
    /// `GET /events/{id}`.
    EventGet { id: u64 },
    /// `PUT` or `PATCH /events/{id}`.
    EventUpdate { id: u64 },
    /// `DELETE /events/{id}`.
    EventDelete { id: u64 },
    /// An event id that is not a positive integer (no event has it).
    EventMissing,
    /// `DELETE /subscriptions/{id}`; `None`: not a positive integer (no subscription has it).
    SubscriptionDelete { id: Option<u64> },
}

impl PushRoute {
    /// Is this a read (no body to read)?
    pub fn is_read(&self) -> bool {
        matches!(self, PushRoute::EventGet { .. })
    }
}

/// Classifies a request by method and decoded path segments (words in any ASCII case, the last
/// segment's extension dropped). `None`: not judged here (passes, or not a push route).
pub fn classify(method: &Method, segments: &[&str]) -> Option<PushRoute> {
    let segs: Vec<&str> = segments.iter().copied().filter(|s| !s.is_empty()).collect();
    let word = |s: &str, w: &str| stem(s).eq_ignore_ascii_case(w);
    let first = segs.first()?;
    let id = || segs.get(1).and_then(|s| parse_id(stem(s)));
    let (get, put) = (
        *method == Method::GET || *method == Method::HEAD,
        *method == Method::PUT || *method == Method::PATCH,
    );
    if word(first, "events") {
        return match segs.len() {
            1 if *method == Method::POST => Some(PushRoute::Create),
            2 if get || put || *method == Method::DELETE => Some(match id() {
                None => PushRoute::EventMissing,
                Some(id) if get => PushRoute::EventGet { id },
                Some(id) if put => PushRoute::EventUpdate { id },
                Some(id) => PushRoute::EventDelete { id },
            }),
            _ => None,
        };
    }
    if word(first, "subscriptions") && segs.len() == 2 && *method == Method::DELETE {
        return Some(PushRoute::SubscriptionDelete { id: id() });
    }
    None
}

/// A positive decimal id, as QuickBlox numbers events and subscriptions.
fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n > 0)
}

/// Checks an event's parameters (`event[...]`): a create needs every rule met, an update
/// (`partial`) only the fields it gives.
pub fn check_event(params: &Map<String, Value>, partial: bool) -> Result<(), Rejection> {
    let empty = Map::new();
    let event = match params.get("event") {
        Some(Value::Object(event)) => event,
        None if partial => &empty,
        _ => {
            return Err(Rejection::invalid(
                "push_recipients",
                "event",
                "event[user][ids] or event[external_user][ids] is required",
            ))
        }
    };
    if event.contains_key("user_id") {
        return Err(Rejection::forbidden(
            "push_fields",
            "an event's user_id is the acting user's",
        ));
    }
    match event.get("notification_type") {
        Some(Value::String(t)) if t == "push" => {}
        None if partial => {}
        _ => {
            return Err(Rejection::forbidden(
                "push_type",
                "only event[notification_type]=push may be sent for a user",
            ))
        }
    }
    match event.get("event_type") {
        None => {}
        Some(Value::String(t)) if t == "one_shot" => {}
        _ => {
            return Err(Rejection::forbidden(
                "push_schedule",
                "only immediate events (event_type one_shot) may be sent for a user",
            ))
        }
    }
    let mut recipients: Vec<u64> = Vec::new();
    let mut named = false;
    for target in ["user", "external_user"] {
        let Some(value) = event.get(target) else {
            continue;
        };
        named = true;
        let Value::Object(target_doc) = value else {
            return Err(not_named());
        };
        if target_doc.keys().any(|k| k != "ids") {
            return Err(not_named());
        }
        let ids = read_ids(target_doc.get("ids")).ok_or_else(|| {
            Rejection::invalid(
                "push_recipients",
                "event",
                format!("event[{target}][ids]: positive integers, comma-separated"),
            )
        })?;
        // An external id and a user id may be the same number and still two users.
        recipients.extend(ids);
    }
    if partial && !named {
        return Ok(());
    }
    if recipients.is_empty() {
        return Err(Rejection::invalid(
            "push_recipients",
            "event",
            "event[user][ids] or event[external_user][ids] is required",
        ));
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(Rejection::invalid(
            "push_recipients",
            "event",
            format!("at most {MAX_RECIPIENTS} recipients per event"),
        ));
    }
    Ok(())
}

/// 403 `push_recipients`: targeting other than by explicit ids.
fn not_named() -> Rejection {
    Rejection::forbidden(
        "push_recipients",
        "recipients may only be named by event[user][ids] or event[external_user][ids]",
    )
}

/// `ids` as a comma-separated string or an array (of strings or numbers), each a positive
/// integer; duplicates kept (they count against the bound as sent).
fn read_ids(ids: Option<&Value>) -> Option<Vec<u64>> {
    let one = |v: &Value| match v {
        Value::String(s) => parse_id(s.trim()),
        Value::Number(n) => n.as_u64().filter(|&n| n > 0),
        _ => None,
    };
    match ids? {
        Value::String(s) => s.split(',').map(|s| parse_id(s.trim())).collect(),
        Value::Number(_) => one(ids?).map(|id| vec![id]),
        Value::Array(items) => items.iter().map(one).collect(),
        _ => None,
    }
}

/// The event's owner (`None`: no such event) against the acting user: 404 `event_not_owner`.
pub fn check_event_owner(owner: Option<u64>, user: u64) -> Result<(), Rejection> {
    if owner == Some(user) {
        return Ok(());
    }
    Err(Rejection {
        status: 404,
        reason: "event_not_owner",
        field: None,
        message: "Event not found".into(),
    })
}

/// Is `id` one of the acting user's subscriptions? Else 403 `subscription_not_owner`.
pub fn check_subscription_owner(owned: bool) -> Result<(), Rejection> {
    if owned {
        return Ok(());
    }
    Err(Rejection::forbidden(
        "subscription_not_owner",
        "this subscription is not the acting user's",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn reason(v: Value, partial: bool) -> Option<&'static str> {
        check_event(&doc(v), partial).err().map(|r| r.reason)
    }

    #[test]
    fn classify_takes_only_the_judged_rows() {
        let c = |m: Method, p: &[&str]| classify(&m, p);
        assert_eq!(c(Method::POST, &["events.json"]), Some(PushRoute::Create));
        assert_eq!(c(Method::GET, &["events.json"]), None);
        assert_eq!(
            c(Method::GET, &["Events", "12.json"]),
            Some(PushRoute::EventGet { id: 12 })
        );
        assert_eq!(
            c(Method::PATCH, &["events", "12"]),
            Some(PushRoute::EventUpdate { id: 12 })
        );
        assert_eq!(
            c(Method::DELETE, &["events", "x1"]),
            Some(PushRoute::EventMissing)
        );
        assert_eq!(c(Method::GET, &["subscriptions.json"]), None);
        assert_eq!(c(Method::POST, &["subscriptions.json"]), None);
        assert_eq!(
            c(Method::DELETE, &["subscriptions", "7.json"]),
            Some(PushRoute::SubscriptionDelete { id: Some(7) })
        );
        assert_eq!(c(Method::GET, &["blobs"]), None);
    }

    #[test]
    fn an_event_is_a_push_now_to_named_users() {
        let ok = json!({"event": {"notification_type": "push", "user": {"ids": "1,2"}}});
        assert_eq!(reason(ok, false), None);
        let arr = json!({"event": {"notification_type": "push", "event_type": "one_shot",
            "external_user": {"ids": [5, "6"]}}});
        assert_eq!(reason(arr, false), None);
        let email = json!({"event": {"notification_type": "email", "user": {"ids": "1"}}});
        assert_eq!(reason(email, false), Some("push_type"));
        let none = json!({"event": {"user": {"ids": "1"}}});
        assert_eq!(reason(none, false), Some("push_type"));
        let fixed = json!({"event": {"notification_type": "push", "event_type": "fixed_date",
            "user": {"ids": "1"}}});
        assert_eq!(reason(fixed, false), Some("push_schedule"));
        let tags = json!({"event": {"notification_type": "push", "user": {"tags": {"any": "a"}}}});
        assert_eq!(reason(tags, false), Some("push_recipients"));
        let nobody = json!({"event": {"notification_type": "push"}});
        assert_eq!(reason(nobody, false), Some("push_recipients"));
        let many: Vec<String> = (1..=51).map(|n| n.to_string()).collect();
        let many = json!({"event": {"notification_type": "push", "user": {"ids": many.join(",")}}});
        assert_eq!(reason(many, false), Some("push_recipients"));
        let bad = json!({"event": {"notification_type": "push", "user": {"ids": "1,-2"}}});
        assert_eq!(reason(bad, false), Some("push_recipients"));
        let owner = json!({"event": {"notification_type": "push", "user_id": 9,
            "user": {"ids": "1"}}});
        assert_eq!(reason(owner, false), Some("push_fields"));
    }

    #[test]
    fn an_update_is_judged_on_the_fields_it_gives() {
        assert_eq!(reason(json!({"event": {"message": "aGk="}}), true), None);
        assert_eq!(reason(json!({}), true), None);
        let period = json!({"event": {"event_type": "period_date"}});
        assert_eq!(reason(period, true), Some("push_schedule"));
        let tags = json!({"event": {"user": {"tags": {"all": "x"}}}});
        assert_eq!(reason(tags, true), Some("push_recipients"));
    }

    #[test]
    fn owners() {
        assert!(check_event_owner(Some(3), 3).is_ok());
        assert_eq!(check_event_owner(Some(4), 3).unwrap_err().status, 404);
        assert_eq!(
            check_event_owner(None, 3).unwrap_err().reason,
            "event_not_owner"
        );
        assert_eq!(
            check_subscription_owner(false).unwrap_err().reason,
            "subscription_not_owner"
        );
    }
}
