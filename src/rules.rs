//! Dialog rules: which dialog requests a key's acting user may make, judged before forwarding.
//!
//! The flow for a request, in order:
//! 1. [`classify`] the method and decoded path; `None` means the rules do not apply.
//! 2. Parse the parameters with [`crate::params::parse`] (400 / 415 on failure).
//! 3. [`read`] them into a typed [`DialogRequest`]: unknown fields and bad values are 422, and a
//!    [`DialogRoute::Unsupported`] route is 400 here, so no route can slip through unjudged.
//! 4. Judge it: [`check_create`] needs nothing else; [`check_update`] needs the dialog looked up
//!    by id; [`check_delete`] needs every listed dialog, but only when `force` is set.
//!
//! The table itself (FACTS.md "Rules for an update") lives in [`dialog`]; the typed documents and
//! the per-field checks in [`document`]. Every [`Rejection`] carries a stable reason code, listed
//! in REASONS.md.
//!
//! Beside the dialog rules, [`users`] judges writes to user accounts against the key's powers,
//! and the `token` parameter on API-key requests; [`messages`] judges chat messages and a
//! dialog's notification setting against the acting user; both always enforced. [`catalog`] is
//! the table of every endpoint qbgate knows and the rule that judges it: an API-key request
//! outside it is refused.

pub mod blobs;
pub mod catalog;
pub mod dialog;
pub mod document;
pub mod messages;
pub mod push;
pub mod users;

use std::borrow::Cow;
use std::fmt;

use http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::error::GateError;

pub use dialog::{check_create, check_delete, check_update};
pub use document::{read, CreateDoc, CustomData, IdChanges, UpdateDoc};

/// QuickBlox's dialog types, with their wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DialogType {
    PublicGroup = 1,
    Group = 2,
    Private = 3,
}

impl DialogType {
    /// The type for a wire code (`type` in a dialog object or a create request).
    pub fn from_code(code: u64) -> Option<DialogType> {
        match code {
            1 => Some(DialogType::PublicGroup),
            2 => Some(DialogType::Group),
            3 => Some(DialogType::Private),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The parts of a QuickBlox dialog object the rules read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub id: String,
    pub kind: DialogType,
    /// `user_id`: the owner.
    pub owner: u64,
    pub occupants: Vec<u64>,
    /// Read for completeness: the table gives admins no rights beyond an occupant's.
    pub admins: Vec<u64>,
}

impl Dialog {
    /// Reads a dialog object as QuickBlox returns it (one element of a list's `items`).
    ///
    /// `_id`, `type` and `user_id` are required; `occupants_ids` and `admin_ids` may be absent
    /// (a public group has no occupants) and then read as empty, which can only make the rules
    /// stricter. Anything of the wrong type gives `None`: the caller treats that as a failed
    /// lookup, never as a dialog with fewer restrictions.
    pub fn from_json(v: &Value) -> Option<Dialog> {
        let id = v.get("_id")?.as_str().filter(|s| !s.is_empty())?.to_owned();
        let kind = DialogType::from_code(v.get("type")?.as_u64()?)?;
        let owner = v.get("user_id")?.as_u64().filter(|&u| u > 0)?;
        let ids = |key: &str| -> Option<Vec<u64>> {
            match v.get(key) {
                None | Some(Value::Null) => Some(Vec::new()),
                Some(Value::Array(items)) => items.iter().map(Value::as_u64).collect(),
                Some(_) => None,
            }
        };
        Some(Dialog {
            id,
            kind,
            owner,
            occupants: ids("occupants_ids")?,
            admins: ids("admin_ids")?,
        })
    }

    /// [`Dialog::from_json`] straight from the bytes of one dialog object, with the same
    /// answers, without building a `Value` tree: the answer to every judged update is read
    /// this way, and the tree cost more than all the rules (callgrind, `bench/profile PUT`).
    /// Not an object, a field of the wrong type or a repeated field: `None`.
    pub fn from_slice(bytes: &[u8]) -> Option<Dialog> {
        #[derive(serde::Deserialize)]
        struct Wire {
            #[serde(rename = "_id")]
            id: Option<String>,
            #[serde(rename = "type")]
            kind: Option<u64>,
            user_id: Option<u64>,
            occupants_ids: Option<Vec<u64>>,
            admin_ids: Option<Vec<u64>>,
        }
        // A derived struct also reads a JSON array; a dialog is only ever an object.
        if bytes.trim_ascii_start().first() != Some(&b'{') {
            return None;
        }
        let wire: Wire = serde_json::from_slice(bytes).ok()?;
        Some(Dialog {
            id: wire.id.filter(|s| !s.is_empty())?,
            kind: DialogType::from_code(wire.kind?)?,
            owner: wire.user_id.filter(|&u| u > 0)?,
            occupants: wire.occupants_ids.unwrap_or_default(),
            admins: wire.admin_ids.unwrap_or_default(),
        })
    }

    /// The owner counts as a member whether or not `occupants_ids` lists him.
    pub fn is_member(&self, user: u64) -> bool {
        user == self.owner || self.occupants.contains(&user)
    }
}

/// Who a request acts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The `On-Behalf-Of` user.
    User(u64),
    /// A key with `on_behalf_of: none`: the application itself, with QuickBlox's full
    /// permissions. It skips the who-may checks, not the checks on fields and dialog types.
    Application,
}

/// A dialog request the rules judge, from its method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogRoute {
    /// `PUT` (or `PATCH`, which Rails routes to the same action) `/chat/Dialog/<id>`.
    Update { id: String },
    /// `POST /chat/Dialog`.
    Create,
    /// `DELETE /chat/Dialog/<id1>,<id2>`; ids deduplicated, in path order.
    Delete { ids: Vec<String> },
    /// Any other state-changing method or shape under `/chat/Dialog` (`POST /chat/Dialog/<id>`,
    /// `PUT /chat/Dialog`, a deeper path, an id that is not a plain token, an extension on a
    /// segment other than the last). The gateway cannot judge these, so it must not forward
    /// them: [`read`] answers them with a 400 `dialog_route_unsupported`.
    Unsupported,
}

/// Classifies a request for the dialog rules.
///
/// `segments` is the path already percent-decoded and split on `/`. Empty segments are ignored,
/// as Rails squeezes repeated slashes and drops a trailing one. `chat` and `Dialog` match in any
/// letter case. Any extension on the last segment (`.json`, `.xml`, any case) is stripped, since
/// Rails reads it as the response format and still runs the action. GET, HEAD and OPTIONS never
/// change a dialog and give `None`, as does any path outside `/chat/Dialog`.
pub fn classify(method: &Method, segments: &[&str]) -> Option<DialogRoute> {
    let segs: Vec<&str> = segments.iter().copied().filter(|s| !s.is_empty()).collect();
    let stem = |s: &str| s.split('.').next().unwrap_or_default().to_owned();
    let (first, second) = (segs.first()?, segs.get(1)?);
    if !stem(first).eq_ignore_ascii_case("chat") || !stem(second).eq_ignore_ascii_case("dialog") {
        return None;
    }
    if [Method::GET, Method::HEAD, Method::OPTIONS].contains(method) {
        return None;
    }
    let Some((last, inner)) = segs.split_last() else {
        return Some(DialogRoute::Unsupported);
    };
    if inner.iter().any(|s| s.contains('.')) {
        return Some(DialogRoute::Unsupported);
    }
    let last = stem(last);
    let route = match (method, segs.len()) {
        (m, 2) if m == Method::POST => DialogRoute::Create,
        (m, 3) if m == Method::PUT || m == Method::PATCH => {
            if !is_plain_id(&last) {
                return Some(DialogRoute::Unsupported);
            }
            DialogRoute::Update { id: last }
        }
        (m, 3) if m == Method::DELETE => {
            let mut ids: Vec<String> = Vec::new();
            for id in last.split(',') {
                if !is_plain_id(id) {
                    return Some(DialogRoute::Unsupported);
                }
                if !ids.iter().any(|seen| seen == id) {
                    ids.push(id.to_owned());
                }
            }
            DialogRoute::Delete { ids }
        }
        _ => DialogRoute::Unsupported,
    };
    Some(route)
}

/// Dialog ids are Mongo ObjectIds; anything but a plain token could mean something else to the
/// upstream's router or to the lookup query the gateway builds from it.
fn is_plain_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Policy knobs for the rules (`dialog_rules` in the policy file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleOptions {
    /// Extra top-level fields passed through unchecked on updates and creates. A name that is
    /// already a known field keeps its checks.
    pub allow_fields: Vec<String>,
}

/// A dialog request, typed and with its fields checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogRequest {
    Update(UpdateDoc),
    Create(CreateDoc),
    /// `force` is true for any `force` value but an absent one: see [`document::read`].
    Delete {
        ids: Vec<String>,
        force: bool,
    },
}

/// Why the gateway refuses a dialog request.
///
/// `field: Some(f)` gives the body `{"errors":{f:[message]}}` (422), `None` gives
/// `{"errors":{"base":[message]}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// Stable snake_case code for `X-Qbgate-Reason`; see REASONS.md.
    pub reason: &'static str,
    pub field: Option<String>,
    pub message: String,
}

/// QuickBlox's own text for a permission failure, which clients may match on.
pub(crate) const NO_PERMISSION: &str =
    "You don't have appropriate permissions to perform this operation";

impl Rejection {
    /// A 422 keyed by `field`.
    pub(crate) fn invalid(reason: &'static str, field: &str, message: impl Into<String>) -> Self {
        Rejection {
            status: 422,
            reason,
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    /// A 403 with a base message.
    pub(crate) fn forbidden(reason: &'static str, message: impl Into<String>) -> Self {
        Rejection {
            status: 403,
            reason,
            field: None,
            message: message.into(),
        }
    }

    /// The JSON body, in QuickBlox's field-keyed or base shape.
    pub fn body(&self) -> Value {
        let key = self.field.as_deref().unwrap_or("base");
        json!({ "errors": { key: [self.message] } })
    }
}

impl From<Rejection> for GateError {
    fn from(r: Rejection) -> Self {
        GateError::Rejected {
            status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN),
            reason: r.reason,
            field: r.field,
            message: Cow::Owned(r.message),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(
                f,
                "{} {}: {} {}",
                self.status, self.reason, field, self.message
            ),
            None => write!(f, "{} {}: {}", self.status, self.reason, self.message),
        }
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests;
