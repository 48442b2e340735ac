//! Chat-message rules: what a key acting for user U may do under `/chat/Message` and to a
//! dialog's notification setting. QuickBlox does not narrow an API key by `On-Behalf-Of`, so
//! the gateway lets U do only what U's own session could. Always enforced (not dialog rules:
//! `dialog_rules.mode` does not apply to them); a failed lookup follows
//! `dialog_rules.on_lookup_error`.
//!
//! | request | allowed when | else |
//! |---|---|---|
//! | any write here with an application key (`on_behalf_of: none`) | never: a message needs a sender | 403 `need_user` |
//! | `POST /chat/Message` | exactly one of `chat_dialog_id` (a plain id) and `recipient_id` (a positive integer other than U) | 422 `message_target` |
//! | `POST /chat/Message` | no `sender_id`, `read_ids`, `delivered_ids`, `_id` | 422 `message_fields` |
//! | `POST /chat/Message` with `chat_dialog_id=D` | D public, or U a member of D | 403 `message_not_occupant` |
//! | `GET /chat/Message` (U) | `chat_dialog_id=D` given, D public or U a member | 422 `message_target`, 403 `message_not_occupant` |
//! | `GET /chat/Message/unread` | always | |
//! | `PUT`/`PATCH /chat/Message/{id}` | `chat_dialog_id=D`, U a member of D; only `read`, `delivered`, `message`, `chat_dialog_id` | 422 `message_target`, 403 `message_not_occupant`, 422 `message_fields` |
//! | ... with `message` (a text edit) | the message is in D and U sent it | 403 `message_not_sender` |
//! | `DELETE /chat/Message/{ids}` without `force` | always (removes them for U only) | |
//! | `DELETE /chat/Message/{ids}` with `force` | `chat_dialog_id=D`, U owns D, every id a message of D sent by U | 422 `message_target`, 403 `message_force_not_owner` |
//! | `GET /chat/Dialog/{id}/notifications` (U) | D public, or U a member | 403 `message_not_occupant` |
//! | `PUT /chat/Dialog/{id}/notifications` | U a member (D public: passes); only `enabled`, 0 or 1 | 403 `message_not_occupant`, 422 `notifications_fields` |
//! | any other shape under `/chat/Message` (a deeper path, an id that is not a plain token) | never | 400 `message_route_unsupported` |
//!
//! "Member": the owner or an occupant ([`Dialog::is_member`]). `force` counts whatever its
//! value, as for dialogs: Rails' `present?` would take `force=0` too. GETs by an application key
//! pass unjudged. The flow: [`classify`] the route, [`plan`] the parameters (what to look up),
//! then [`check`] the facts looked up.

use http::Method;
use serde_json::{Map, Value};

use super::{Dialog, DialogType, Rejection, NO_PERMISSION};
use crate::policy::stem;

/// A request under `/chat/Message` or `/chat/Dialog/{id}/notifications`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageRoute {
    /// `POST /chat/Message`.
    Create,
    /// `GET /chat/Message`.
    List,
    /// `GET /chat/Message/unread`.
    Unread,
    /// `PUT` or `PATCH /chat/Message/{id}`.
    Update { id: String },
    /// `DELETE /chat/Message/{id1},{id2}`; ids deduplicated, in path order.
    Delete { ids: Vec<String> },
    /// `GET /chat/Dialog/{id}/notifications`.
    NotificationsGet { dialog: String },
    /// `PUT /chat/Dialog/{id}/notifications`.
    NotificationsPut { dialog: String },
    /// Anything else under `/chat/Message` or `/chat/Dialog/{id}/notifications`: refused.
    Unsupported,
}

impl MessageRoute {
    /// Is this a read (no body read, no need of a user)?
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            MessageRoute::List | MessageRoute::Unread | MessageRoute::NotificationsGet { .. }
        )
    }
}

/// What a message lookup tells: the message's dialog and sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFacts {
    pub id: String,
    pub chat_dialog_id: String,
    pub sender_id: u64,
}

impl MessageFacts {
    /// Reads a message object as QuickBlox returns it (one element of a list's `items`); any
    /// field missing or of the wrong type gives `None` (the caller's failed lookup).
    pub fn from_json(v: &Value) -> Option<MessageFacts> {
        Some(MessageFacts {
            id: v.get("_id")?.as_str().filter(|s| !s.is_empty())?.to_owned(),
            chat_dialog_id: v
                .get("chat_dialog_id")?
                .as_str()
                .filter(|s| !s.is_empty())?
                .to_owned(),
            sender_id: v.get("sender_id")?.as_u64().filter(|&u| u > 0)?,
        })
    }
}

/// Most messages learned from one answer: QuickBlox's largest list page.
pub const MAX_LEARNED: usize = 100;

/// Which answer of the upstream a message cache may learn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `GET /chat/Message.json`: `{"items":[..]}`.
    List,
    /// `POST /chat/Message.json`: the message object.
    One,
}

/// The messages an answer shows, for the message cache. Only `_id`, `chat_dialog_id` and
/// `sender_id` are parsed (the text and custom fields are skipped, not built); an item without
/// all three is left out; at most [`MAX_LEARNED`]. Not JSON, or another shape: none.
pub fn learned_from(kind: Answer, answer: &[u8]) -> Vec<MessageFacts> {
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(rename = "_id")]
        id: Option<String>,
        chat_dialog_id: Option<String>,
        sender_id: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct List {
        items: Vec<Item>,
    }
    let facts = |item: Item| {
        Some(MessageFacts {
            id: item.id.filter(|s| !s.is_empty())?,
            chat_dialog_id: item.chat_dialog_id.filter(|s| !s.is_empty())?,
            sender_id: item.sender_id.filter(|&u| u > 0)?,
        })
    };
    match kind {
        Answer::List => serde_json::from_slice::<List>(answer).map_or_else(
            |_| Vec::new(),
            |list| {
                list.items
                    .into_iter()
                    .take(MAX_LEARNED)
                    .filter_map(facts)
                    .collect()
            },
        ),
        Answer::One => serde_json::from_slice::<Item>(answer)
            .ok()
            .and_then(facts)
            .into_iter()
            .collect(),
    }
}

/// Classifies a request by method and decoded path segments (case kept; the words match in any
/// ASCII case, the last segment's extension is dropped). `None`: not a message route.
pub fn classify(method: &Method, segments: &[&str]) -> Option<MessageRoute> {
    let segs: Vec<&str> = segments.iter().copied().filter(|s| !s.is_empty()).collect();
    let word = |s: &str, w: &str| stem(s).eq_ignore_ascii_case(w);
    let (first, second) = (segs.first()?, segs.get(1)?);
    if !word(first, "chat") {
        return None;
    }
    let inner_dot = |n: usize| segs[..n].iter().any(|s| s.contains('.'));
    let (get, post, put, delete) = (
        *method == Method::GET || *method == Method::HEAD,
        *method == Method::POST,
        *method == Method::PUT || *method == Method::PATCH,
        *method == Method::DELETE,
    );
    if word(second, "dialog") {
        // Only `/chat/Dialog/{id}/notifications` is ours; the rest is the dialog rules'.
        let [_, _, id, last] = segs.as_slice() else {
            return None;
        };
        if !word(last, "notifications") {
            return None;
        }
        if inner_dot(3) || !is_plain_id(id) {
            return Some(MessageRoute::Unsupported);
        }
        let dialog = (*id).to_owned();
        return Some(match () {
            () if get => MessageRoute::NotificationsGet { dialog },
            () if put => MessageRoute::NotificationsPut { dialog },
            () if *method == Method::OPTIONS => return None,
            () => MessageRoute::Unsupported,
        });
    }
    if !word(second, "message") {
        return None;
    }
    if *method == Method::OPTIONS {
        return None;
    }
    if inner_dot(segs.len() - 1) {
        return Some(MessageRoute::Unsupported);
    }
    let route = match segs.len() {
        2 if post => MessageRoute::Create,
        2 if get => MessageRoute::List,
        3 if get && word(segs[2], "unread") => MessageRoute::Unread,
        3 if put || delete => {
            let last = stem(segs[2]);
            let mut ids: Vec<String> = Vec::new();
            for id in last.split(',') {
                if !is_plain_id(id) {
                    return Some(MessageRoute::Unsupported);
                }
                if !ids.iter().any(|seen| seen == id) {
                    ids.push(id.to_owned());
                }
            }
            match ids.len() {
                1 if put => MessageRoute::Update { id: ids.remove(0) },
                _ if delete => MessageRoute::Delete { ids },
                _ => MessageRoute::Unsupported,
            }
        }
        _ => MessageRoute::Unsupported,
    };
    Some(route)
}

/// What [`check`] needs looked up: the dialog, and the messages (all in that dialog).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The dialog to look up.
    pub dialog: Option<String>,
    /// Message ids to look up in [`Plan::dialog`].
    pub messages: Vec<String>,
}

/// Reads the parameters of a message request for `user` (`None`: an application key): refuses
/// what needs no lookup, and says what to look up for [`check`].
pub fn plan(
    route: &MessageRoute,
    params: &Map<String, Value>,
    user: Option<u64>,
) -> Result<Plan, Rejection> {
    if *route == MessageRoute::Unsupported {
        return Err(Rejection {
            status: 400,
            reason: "message_route_unsupported",
            field: None,
            message: "this request under /chat/Message cannot be checked".into(),
        });
    }
    let Some(me) = user else {
        if route.is_read() {
            return Ok(Plan::default());
        }
        return Err(Rejection::forbidden("need_user", "Forbidden. Need user."));
    };
    let none = Plan::default();
    let in_dialog = |dialog: String| Plan {
        dialog: Some(dialog),
        messages: Vec::new(),
    };
    match route {
        MessageRoute::Unread => Ok(none),
        MessageRoute::Create => {
            for field in ["sender_id", "read_ids", "delivered_ids", "_id"] {
                if params.contains_key(field) {
                    return Err(Rejection::invalid(
                        "message_fields",
                        field,
                        "is set by QuickBlox, not by the sender",
                    ));
                }
            }
            match (params.get("chat_dialog_id"), params.get("recipient_id")) {
                (Some(dialog), None) => Ok(in_dialog(dialog_id(Some(dialog))?)),
                (None, Some(recipient)) => match user_id(recipient) {
                    Some(r) if r != me => Ok(none),
                    _ => Err(Rejection::invalid(
                        "message_target",
                        "recipient_id",
                        "must be another user's id",
                    )),
                },
                _ => Err(Rejection::invalid(
                    "message_target",
                    "chat_dialog_id",
                    "give either chat_dialog_id or recipient_id",
                )),
            }
        }
        MessageRoute::List => Ok(in_dialog(dialog_id(params.get("chat_dialog_id"))?)),
        MessageRoute::Update { id } => {
            if let Some(field) = params.keys().find(|k| {
                !matches!(
                    k.as_str(),
                    "read" | "delivered" | "message" | "chat_dialog_id"
                )
            }) {
                return Err(Rejection::invalid(
                    "message_fields",
                    field,
                    "is not a field a message update takes",
                ));
            }
            let dialog = dialog_id(params.get("chat_dialog_id"))?;
            let messages = if params.contains_key("message") {
                vec![id.clone()]
            } else {
                Vec::new()
            };
            Ok(Plan {
                dialog: Some(dialog),
                messages,
            })
        }
        MessageRoute::Delete { ids } => {
            if !params.contains_key("force") {
                return Ok(none);
            }
            Ok(Plan {
                dialog: Some(dialog_id(params.get("chat_dialog_id"))?),
                messages: ids.clone(),
            })
        }
        MessageRoute::NotificationsGet { dialog } => Ok(in_dialog(dialog.clone())),
        MessageRoute::NotificationsPut { dialog } => {
            let enabled_ok = params.len() == 1
                && matches!(
                    params.get("enabled"),
                    Some(Value::String(s)) if s == "0" || s == "1"
                )
                || params.len() == 1
                    && params
                        .get("enabled")
                        .and_then(Value::as_u64)
                        .is_some_and(|n| n <= 1);
            if !enabled_ok {
                return Err(Rejection::invalid(
                    "notifications_fields",
                    "enabled",
                    "must be 0 or 1, and the only field",
                ));
            }
            Ok(in_dialog(dialog.clone()))
        }
        MessageRoute::Unsupported => unreachable!("refused above"),
    }
}

/// Judges a planned request against what was looked up: `dialog` is [`Plan::dialog`]'s,
/// `messages` those of [`Plan::messages`] that were found (in that dialog). `user` as for
/// [`plan`]; an application key's plan asks for nothing and passes.
pub fn check(
    route: &MessageRoute,
    plan: &Plan,
    dialog: Option<&Dialog>,
    messages: &[MessageFacts],
    user: Option<u64>,
) -> Result<(), Rejection> {
    let (Some(me), Some(dialog)) = (user, dialog) else {
        return Ok(());
    };
    let member = dialog.kind == DialogType::PublicGroup || dialog.is_member(me);
    match route {
        MessageRoute::Delete { .. } => {
            let sent_by_me = |id: &String| {
                messages
                    .iter()
                    .any(|m| &m.id == id && m.chat_dialog_id == dialog.id && m.sender_id == me)
            };
            if dialog.owner != me || !plan.messages.iter().all(sent_by_me) {
                return Err(Rejection::forbidden(
                    "message_force_not_owner",
                    "Only the owner of the dialog can delete his own messages for everyone",
                ));
            }
            Ok(())
        }
        MessageRoute::Update { .. } => {
            if !dialog.is_member(me) {
                return Err(not_occupant());
            }
            let sent_by_me = |id: &String| {
                messages
                    .iter()
                    .any(|m| &m.id == id && m.chat_dialog_id == dialog.id && m.sender_id == me)
            };
            if !plan.messages.iter().all(sent_by_me) {
                return Err(Rejection::forbidden(
                    "message_not_sender",
                    "Only the sender can edit a message's text",
                ));
            }
            Ok(())
        }
        _ if member => Ok(()),
        _ => Err(not_occupant()),
    }
}

fn not_occupant() -> Rejection {
    Rejection::forbidden("message_not_occupant", NO_PERMISSION)
}

/// `chat_dialog_id` as a plain id; absent or anything else: 422 `message_target`.
fn dialog_id(value: Option<&Value>) -> Result<String, Rejection> {
    match value {
        Some(Value::String(id)) if is_plain_id(id) => Ok(id.clone()),
        None => Err(Rejection::invalid(
            "message_target",
            "chat_dialog_id",
            "can't be blank",
        )),
        Some(_) => Err(Rejection::invalid(
            "message_target",
            "chat_dialog_id",
            "is invalid",
        )),
    }
}

/// A positive user id: a JSON integer or a decimal string (no sign, no leading zero).
fn user_id(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().filter(|&u| u > 0),
        Value::String(s) if !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok().filter(|&u| u > 0)
        }
        _ => None,
    }
}

/// Message and dialog ids are Mongo ObjectIds: a plain token, nothing to escape in a lookup.
fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn answers_teach_their_messages() {
        let list = json!({"skip": 0, "limit": 100, "items": [
            {"_id": "m1", "chat_dialog_id": "d", "sender_id": 7, "message": "hi", "x": {"y": 1}},
            {"_id": "m2", "chat_dialog_id": "d"},
        ]});
        let learned = learned_from(Answer::List, list.to_string().as_bytes());
        assert_eq!(
            learned,
            vec![MessageFacts {
                id: "m1".into(),
                chat_dialog_id: "d".into(),
                sender_id: 7
            }]
        );
        let one = json!({"_id": "m3", "chat_dialog_id": "d", "sender_id": 8, "read_ids": [8]});
        assert_eq!(
            learned_from(Answer::One, one.to_string().as_bytes())[0].id,
            "m3"
        );
        assert!(learned_from(Answer::List, b"not json").is_empty());
        assert!(learned_from(Answer::One, b"[1,2]").is_empty());
        assert!(learned_from(Answer::List, one.to_string().as_bytes()).is_empty());
        let many: Vec<_> = (0..150)
            .map(|n| json!({"_id": format!("m{n}"), "chat_dialog_id": "d", "sender_id": 1}))
            .collect();
        let many = json!({ "items": many }).to_string();
        assert_eq!(
            learned_from(Answer::List, many.as_bytes()).len(),
            MAX_LEARNED
        );
    }

    fn params(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn group() -> Dialog {
        Dialog {
            id: "d1".into(),
            kind: DialogType::Group,
            owner: 1,
            occupants: vec![1, 2],
            admins: vec![],
        }
    }

    #[test]
    fn classify_takes_the_message_routes_and_the_notifications_route() {
        let c = |m: Method, p: &str| {
            let segs: Vec<&str> = p.split('/').collect();
            classify(&m, &segs)
        };
        assert_eq!(
            c(Method::POST, "chat/Message.json"),
            Some(MessageRoute::Create)
        );
        assert_eq!(c(Method::GET, "CHAT/message"), Some(MessageRoute::List));
        assert_eq!(
            c(Method::GET, "chat/Message/unread.json"),
            Some(MessageRoute::Unread)
        );
        assert_eq!(
            c(Method::PUT, "chat/Message/m1.json"),
            Some(MessageRoute::Update { id: "m1".into() })
        );
        assert_eq!(
            c(Method::DELETE, "chat/Message/a,b,a.json"),
            Some(MessageRoute::Delete {
                ids: vec!["a".into(), "b".into()]
            })
        );
        assert_eq!(
            c(Method::PUT, "chat/Dialog/d1/notifications.json"),
            Some(MessageRoute::NotificationsPut {
                dialog: "d1".into()
            })
        );
        assert_eq!(c(Method::PUT, "chat/Dialog/d1.json"), None);
        assert_eq!(c(Method::GET, "chat/Dialog.json"), None);
        assert_eq!(
            c(Method::POST, "chat/Message/x/y.json"),
            Some(MessageRoute::Unsupported)
        );
        assert_eq!(
            c(Method::PUT, "chat/Message/a,b.json"),
            Some(MessageRoute::Unsupported)
        );
        assert_eq!(
            c(Method::DELETE, "chat/Message/a%2Fb.json"),
            Some(MessageRoute::Unsupported)
        );
    }

    #[test]
    fn a_create_names_one_target_and_no_server_field() {
        let p = |v| plan(&MessageRoute::Create, &params(v), Some(1));
        assert_eq!(p(json!({"recipient_id": "2"})), Ok(Plan::default()));
        assert_eq!(
            p(json!({"recipient_id": 1})).unwrap_err().reason,
            "message_target"
        );
        assert_eq!(
            p(json!({"recipient_id": "-2"})).unwrap_err().reason,
            "message_target"
        );
        assert_eq!(p(json!({})).unwrap_err().reason, "message_target");
        assert_eq!(
            p(json!({"recipient_id": 2, "chat_dialog_id": "d1"}))
                .unwrap_err()
                .reason,
            "message_target"
        );
        assert_eq!(
            p(json!({"chat_dialog_id": "d1", "sender_id": 3}))
                .unwrap_err()
                .reason,
            "message_fields"
        );
        assert_eq!(
            p(json!({"chat_dialog_id": "d1"}))
                .unwrap()
                .dialog
                .as_deref(),
            Some("d1")
        );
        let app = plan(&MessageRoute::Create, &params(json!({})), None);
        assert_eq!(app.unwrap_err().reason, "need_user");
        assert_eq!(
            plan(&MessageRoute::List, &Map::new(), None),
            Ok(Plan::default())
        );
    }

    #[test]
    fn members_senders_and_owners() {
        let d = group();
        let mine = MessageFacts {
            id: "m1".into(),
            chat_dialog_id: "d1".into(),
            sender_id: 1,
        };
        let route = MessageRoute::Create;
        let p = Plan {
            dialog: Some("d1".into()),
            messages: vec![],
        };
        assert!(check(&route, &p, Some(&d), &[], Some(2)).is_ok());
        assert_eq!(
            check(&route, &p, Some(&d), &[], Some(3))
                .unwrap_err()
                .reason,
            "message_not_occupant"
        );
        let edit = Plan {
            dialog: Some("d1".into()),
            messages: vec!["m1".into()],
        };
        let update = MessageRoute::Update { id: "m1".into() };
        assert!(check(
            &update,
            &edit,
            Some(&d),
            std::slice::from_ref(&mine),
            Some(1)
        )
        .is_ok());
        assert_eq!(
            check(
                &update,
                &edit,
                Some(&d),
                std::slice::from_ref(&mine),
                Some(2)
            )
            .unwrap_err()
            .reason,
            "message_not_sender"
        );
        let delete = MessageRoute::Delete {
            ids: vec!["m1".into()],
        };
        assert!(check(
            &delete,
            &edit,
            Some(&d),
            std::slice::from_ref(&mine),
            Some(1)
        )
        .is_ok());
        assert_eq!(
            check(&delete, &edit, Some(&d), &[], Some(1))
                .unwrap_err()
                .reason,
            "message_force_not_owner"
        );
    }
}
