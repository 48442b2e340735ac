//! Typed dialog documents read from request parameters, and the checks on each field that need
//! no upstream state: which fields an operation takes, and what each value may look like.
//!
//! Values are read strictly, so the document judged is the one the upstream acts on: an id is a
//! JSON integer or a decimal string without sign, spaces or leading zeros (Ruby's `Integer()`
//! reads `"010"` as octal 8), and a list of ids is a JSON array of those or a comma-separated
//! string (`"1,2"`, or `"1, 2"` as the JS SDK sends it).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::{DialogRequest, DialogRoute, DialogType, Rejection, RuleOptions};

/// QuickBlox's limit on a dialog name, in characters (Unicode scalar values, as Ruby counts).
pub const MAX_NAME_CHARS: usize = 200;

const UPDATE_FIELDS: &[&str] = &["name", "photo", "push_all", "pull_all", "data", "user_id"];
const CREATE_FIELDS: &[&str] = &["type", "name", "occupants_ids", "photo", "data"];
const DELETE_FIELDS: &[&str] = &["force"];
const ID_CHANGE_FIELDS: &[&str] = &["occupants_ids", "admin_ids"];

/// `PUT /chat/Dialog/<id>`: the fields present, each already checked for shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateDoc {
    pub name: Option<String>,
    pub photo: Option<String>,
    pub data: Option<CustomData>,
    /// `user_id`: the new owner.
    pub owner: Option<u64>,
    pub push_all: Option<IdChanges>,
    pub pull_all: Option<IdChanges>,
    /// Present fields named by `allow_fields`, passed through unchecked.
    pub extra: Vec<String>,
}

/// `push_all` / `pull_all`: at least one list is present, and a present list is not empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdChanges {
    pub occupants_ids: Option<Vec<u64>>,
    pub admin_ids: Option<Vec<u64>>,
}

/// `data`: custom-object fields; only `class_name` is read, the rest pass as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomData {
    pub class_name: String,
}

/// `POST /chat/Dialog`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateDoc {
    /// `type`.
    pub kind: DialogType,
    pub name: Option<String>,
    pub photo: Option<String>,
    /// May be empty (a public group has no occupants).
    pub occupants_ids: Option<Vec<u64>>,
    pub data: Option<CustomData>,
    pub extra: Vec<String>,
}

/// Reads the merged request parameters as the request `route` names.
///
/// Fields are checked in a fixed order (unknown fields first), and the first failure is the one
/// reported. [`DialogRoute::Unsupported`] is refused here with a 400, so a caller that reads
/// every classified route cannot forward one unjudged.
///
/// Delete takes only `force`. It is judged as a force delete whenever it is present with a value
/// a reader could take as a flag (`1`, `0`, `true`, `false`, as JSON or strings): an upstream that
/// tests for presence would force-delete on `force=0`, so only an absent `force` is a plain
/// delete. Any other value is a 422.
pub fn read(
    route: &DialogRoute,
    params: &Map<String, Value>,
    opts: &RuleOptions,
) -> Result<DialogRequest, Rejection> {
    match route {
        DialogRoute::Update { .. } => read_update(params, opts).map(DialogRequest::Update),
        DialogRoute::Create => read_create(params, opts).map(DialogRequest::Create),
        DialogRoute::Delete { ids } => {
            check_fields(params, DELETE_FIELDS, &[])?;
            let force = match params.get("force") {
                None => false,
                Some(v) => {
                    force_flag(v)?;
                    true
                }
            };
            Ok(DialogRequest::Delete {
                ids: ids.clone(),
                force,
            })
        }
        DialogRoute::Unsupported => Err(Rejection {
            status: 400,
            reason: "dialog_route_unsupported",
            field: None,
            message: "This method and path cannot be checked by the gateway".into(),
        }),
    }
}

fn read_update(params: &Map<String, Value>, opts: &RuleOptions) -> Result<UpdateDoc, Rejection> {
    let extra = check_fields(params, UPDATE_FIELDS, &opts.allow_fields)?;
    Ok(UpdateDoc {
        name: params.get("name").map(name).transpose()?,
        photo: params.get("photo").map(photo).transpose()?,
        data: params.get("data").map(custom_data).transpose()?,
        owner: params
            .get("user_id")
            .map(|v| positive_id(v).ok_or_else(|| invalid("user_id", "must be a positive integer")))
            .transpose()?,
        push_all: params
            .get("push_all")
            .map(|v| id_changes(v, "push_all"))
            .transpose()?,
        pull_all: params
            .get("pull_all")
            .map(|v| id_changes(v, "pull_all"))
            .transpose()?,
        extra,
    })
}

fn read_create(params: &Map<String, Value>, opts: &RuleOptions) -> Result<CreateDoc, Rejection> {
    let extra = check_fields(params, CREATE_FIELDS, &opts.allow_fields)?;
    let kind = match params.get("type") {
        None => {
            return Err(Rejection::invalid(
                "dialog_create_type",
                "type",
                "can't be blank",
            ))
        }
        Some(v) => positive_id(v)
            .and_then(DialogType::from_code)
            .ok_or_else(|| {
                Rejection::invalid(
                    "dialog_create_type",
                    "type",
                    "must be 1 (public group), 2 (group) or 3 (private)",
                )
            })?,
    };
    Ok(CreateDoc {
        kind,
        name: params.get("name").map(name).transpose()?,
        photo: params.get("photo").map(photo).transpose()?,
        occupants_ids: params
            .get("occupants_ids")
            .map(|v| id_list(v, "occupants_ids"))
            .transpose()?,
        data: params.get("data").map(custom_data).transpose()?,
        extra,
    })
}

/// Refuses any key that is neither `known` nor `allowed`; returns the allowed ones present.
fn check_fields(
    params: &Map<String, Value>,
    known: &[&str],
    allowed: &[String],
) -> Result<Vec<String>, Rejection> {
    let mut extra = Vec::new();
    for key in params.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        if !allowed.contains(key) {
            return Err(unknown(key));
        }
        extra.push(key.clone());
    }
    Ok(extra)
}

fn unknown(field: &str) -> Rejection {
    Rejection::invalid("unknown_field", field, "is not a permitted parameter")
}

fn invalid(field: &str, message: &str) -> Rejection {
    Rejection::invalid("invalid_field", field, message)
}

fn name(v: &Value) -> Result<String, Rejection> {
    let s = v
        .as_str()
        .ok_or_else(|| invalid("name", "must be a string"))?;
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(Rejection::invalid(
            "dialog_name_too_long",
            "name",
            format!("is too long (maximum is {MAX_NAME_CHARS} characters)"),
        ));
    }
    Ok(s.to_owned())
}

fn photo(v: &Value) -> Result<String, Rejection> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| invalid("photo", "must be a string"))
}

fn custom_data(v: &Value) -> Result<CustomData, Rejection> {
    let object = v
        .as_object()
        .ok_or_else(|| invalid("data", "must be an object with a class_name"))?;
    match object.get("class_name").and_then(Value::as_str) {
        Some(class) if !class.is_empty() => Ok(CustomData {
            class_name: class.to_owned(),
        }),
        _ => Err(invalid(
            "data[class_name]",
            "can't be blank (a non-empty string)",
        )),
    }
}

fn id_changes(v: &Value, field: &str) -> Result<IdChanges, Rejection> {
    let object = v.as_object().filter(|o| !o.is_empty()).ok_or_else(|| {
        invalid(
            field,
            "must be an object with occupants_ids and/or admin_ids",
        )
    })?;
    if let Some(key) = object
        .keys()
        .find(|k| !ID_CHANGE_FIELDS.contains(&k.as_str()))
    {
        return Err(unknown(&format!("{field}[{key}]")));
    }
    let list = |key: &str| -> Result<Option<Vec<u64>>, Rejection> {
        let Some(v) = object.get(key) else {
            return Ok(None);
        };
        let path = format!("{field}[{key}]");
        let ids = id_list(v, &path)?;
        // An empty change does nothing at best; at worst the upstream reads it otherwise.
        if ids.is_empty() {
            return Err(invalid(&path, "can't be blank"));
        }
        Ok(Some(ids))
    };
    Ok(IdChanges {
        occupants_ids: list("occupants_ids")?,
        admin_ids: list("admin_ids")?,
    })
}

/// A list of user ids: a JSON array of ids, or a comma-separated string of them with optional
/// spaces around each (`"1, 2"`). An empty string or array is an empty list.
fn id_list(v: &Value, field: &str) -> Result<Vec<u64>, Rejection> {
    let bad = || invalid(field, "must be a list of positive integers");
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| positive_id(i).ok_or_else(bad))
            .collect(),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => s
            .split(',')
            .map(|piece| decimal(piece.trim_matches(' ')).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// A positive id: a JSON integer, or a decimal string.
fn positive_id(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().filter(|&n| n > 0),
        Value::String(s) => decimal(s),
        _ => None,
    }
}

/// `[1-9][0-9]*` within u64: no sign, space, exponent, radix prefix or leading zero.
fn decimal(s: &str) -> Option<u64> {
    let digits = s.as_bytes();
    match digits.first() {
        Some(b'1'..=b'9') if digits.iter().all(u8::is_ascii_digit) => s.parse().ok(),
        _ => None,
    }
}

/// `force`: a value any reader takes as a flag; which way does not matter (see [`read`]).
fn force_flag(v: &Value) -> Result<(), Rejection> {
    let flag = match v {
        Value::Number(n) => matches!(n.as_u64(), Some(0 | 1)),
        Value::Bool(_) => true,
        Value::String(s) => matches!(s.as_str(), "0" | "1" | "true" | "false"),
        _ => false,
    };
    if flag {
        Ok(())
    } else {
        Err(invalid("force", "must be 1 or 0"))
    }
}

/// The distinct ids of a list, for the private-dialog occupant count.
pub(crate) fn distinct(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

#[cfg(test)]
pub(crate) mod tests;
