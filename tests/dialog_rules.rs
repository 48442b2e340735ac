//! Dialog rules through the gateway against the sandbox: the rule matrix (JSON and form bodies),
//! field checks, bypass attempts, modes, lookup failures and the dialog cache.

use futures_util::future::join_all;
use qbgate::sandbox::seed::{
    ADDED, GROUP_ID, NEW_OWNER, OCCUPANT, OTHER_OCCUPANT, OUTSIDER, OWNER, PRIVATE_ID, PUBLIC_ID,
    RECIPE_USER,
};
use qbgate::sandbox::{Fault, Recorded};
use serde_json::json;

use crate::support::{Gate, Reply, KEY_ANY, KEY_APP};

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// The dialog changes the sandbox received since the last call (lookups and sessions left out).
fn changes(gate: &Gate) -> Vec<Recorded> {
    gate.sandbox
        .take_received()
        .into_iter()
        .filter(|r| r.method != http::Method::GET)
        .collect()
}

/// `send` as `user` through KEY_ANY with a body of `content_type`.
async fn put_as(
    gate: &Gate,
    user: u64,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> Reply {
    let user = user.to_string();
    let auth = format!("ApiKey {KEY_ANY}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("on-behalf-of", user.as_str()),
    ];
    if !content_type.is_empty() {
        headers.push(("content-type", content_type));
    }
    gate.send(method, path, &headers, body).await
}

fn upd(id: &str) -> String {
    format!("/chat/Dialog/{id}.json")
}

/// A gateway error, and nothing reached the sandbox.
#[track_caller]
fn assert_blocked(gate: &Gate, reply: &Reply, status: u16, reason: &str, key: &str) {
    reply.assert_gate_error(status, reason, key);
    let got = changes(gate);
    assert!(
        got.is_empty(),
        "forwarded: {:?}",
        got.iter().map(|r| r.uri.clone()).collect::<Vec<_>>()
    );
}

/// Forwarded exactly once, answered 200 by the sandbox, no gateway reason.
#[track_caller]
fn assert_forwarded(gate: &Gate, reply: &Reply) -> Recorded {
    assert_eq!(
        reply.status,
        200,
        "body: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.reason(), None);
    let mut got = changes(gate);
    assert_eq!(got.len(), 1, "expected one forwarded change");
    got.remove(0)
}

// ---------------------------------------------------------------------------------------------
// 1. The matrix.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Public,
    Group,
    Private,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Owner,
    Occupant,
    Outsider,
    App,
    /// A QB-Token whose session user is the occupant of the dialog.
    Token,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Name,
    Photo,
    Data,
    Add,
    RemoveSelf,
    RemoveOther,
    OwnerChange,
    AdminAdd,
    AdminRemove,
    ForceDelete,
    Create,
}

const KINDS: [Kind; 3] = [Kind::Public, Kind::Group, Kind::Private];
const WHOS: [Who; 5] = [
    Who::Owner,
    Who::Occupant,
    Who::Outsider,
    Who::App,
    Who::Token,
];
const OPS: [Op; 11] = [
    Op::Name,
    Op::Photo,
    Op::Data,
    Op::Add,
    Op::RemoveSelf,
    Op::RemoveOther,
    Op::OwnerChange,
    Op::AdminAdd,
    Op::AdminRemove,
    Op::ForceDelete,
    Op::Create,
];

#[derive(Debug, PartialEq, Eq)]
enum Expect {
    Forward,
    Reject(u16, &'static str, &'static str),
}

fn dialog_id(kind: Kind) -> &'static str {
    match kind {
        Kind::Public => PUBLIC_ID,
        Kind::Group => GROUP_ID,
        Kind::Private => PRIVATE_ID,
    }
}

/// The acting user (None: the application).
fn user_of(kind: Kind, who: Who) -> Option<u64> {
    match (who, kind) {
        (Who::Owner, Kind::Public) => Some(OWNER),
        (Who::Owner, Kind::Group) => Some(RECIPE_USER),
        (Who::Owner, Kind::Private) => Some(OCCUPANT),
        // PUBLIC_GROUP has no occupants: "occupant" is a user who is not the owner.
        (Who::Occupant | Who::Token, Kind::Public) => Some(OCCUPANT),
        (Who::Occupant | Who::Token, Kind::Group) => Some(OWNER),
        (Who::Occupant | Who::Token, Kind::Private) => Some(RECIPE_USER),
        (Who::Outsider, _) => Some(OUTSIDER),
        (Who::App, _) => None,
    }
}

/// Someone other than the actor to remove.
fn other_of(kind: Kind, me: Option<u64>) -> u64 {
    match kind {
        Kind::Private if me == Some(OCCUPANT) => RECIPE_USER,
        Kind::Private => OCCUPANT,
        _ => OTHER_OCCUPANT,
    }
}

/// FACTS.md "Rules for an update" and the create/delete notes.
fn expect(kind: Kind, who: Who, op: Op) -> Expect {
    use Expect::*;
    let role = if who == Who::Token {
        Who::Occupant
    } else {
        who
    };
    match op {
        Op::Create => {
            if kind == Kind::Private && role == Who::App {
                Reject(422, "dialog_private_occupants", "occupants_ids")
            } else {
                Forward
            }
        }
        Op::ForceDelete => match role {
            Who::Owner | Who::App => Forward,
            _ => Reject(403, "dialog_force_delete_not_owner", "base"),
        },
        _ => {
            if role != Who::App {
                match kind {
                    Kind::Public if role != Who::Owner => {
                        return Reject(403, "dialog_public_owner_only", "base")
                    }
                    Kind::Group | Kind::Private if role == Who::Outsider => {
                        return Reject(403, "dialog_not_occupant", "base")
                    }
                    _ => {}
                }
            }
            if kind == Kind::Private {
                return match op {
                    Op::Name => Reject(422, "dialog_name_on_private", "name"),
                    Op::Photo => Reject(422, "dialog_private_field", "photo"),
                    Op::Data => Forward,
                    Op::Add | Op::AdminAdd => Reject(422, "dialog_private_field", "push_all"),
                    Op::OwnerChange => Reject(422, "dialog_private_field", "user_id"),
                    _ => Reject(422, "dialog_private_field", "pull_all"),
                };
            }
            if kind == Kind::Group && role == Who::Occupant {
                match op {
                    Op::RemoveOther => return Reject(403, "dialog_remove_others", "base"),
                    Op::OwnerChange | Op::AdminAdd | Op::AdminRemove => {
                        return Reject(403, "dialog_owner_only", "base")
                    }
                    _ => {}
                }
            }
            Forward
        }
    }
}

/// (method, path, content type, body) for one cell.
fn request(
    kind: Kind,
    op: Op,
    me: Option<u64>,
    form: bool,
) -> (&'static str, String, &'static str, String) {
    let id = dialog_id(kind);
    let ct = if form { FORM } else { JSON };
    let selfid = me.unwrap_or(NEW_OWNER);
    let other = other_of(kind, me);
    let added = ADDED[0];
    let (j, f): (serde_json::Value, String) = match op {
        Op::Name => (json!({"name":"Renamed"}), "name=Renamed".into()),
        Op::Photo => (json!({"photo":"68124"}), "photo=68124".into()),
        Op::Data => (
            json!({"data":{"class_name":"CoolDialog","category":"work"}}),
            "data[class_name]=CoolDialog&data[category]=work".into(),
        ),
        Op::Add => (
            json!({"push_all":{"occupants_ids":[added]}}),
            format!("push_all[occupants_ids][]={added}"),
        ),
        Op::RemoveSelf => (
            json!({"pull_all":{"occupants_ids":[selfid]}}),
            format!("pull_all[occupants_ids][]={selfid}"),
        ),
        Op::RemoveOther => (
            json!({"pull_all":{"occupants_ids":[other]}}),
            format!("pull_all[occupants_ids][]={other}"),
        ),
        Op::OwnerChange => (json!({"user_id":NEW_OWNER}), format!("user_id={NEW_OWNER}")),
        Op::AdminAdd => (
            json!({"push_all":{"admin_ids":[NEW_OWNER]}}),
            format!("push_all[admin_ids][]={NEW_OWNER}"),
        ),
        Op::AdminRemove => (
            json!({"pull_all":{"admin_ids":[NEW_OWNER]}}),
            format!("pull_all[admin_ids][]={NEW_OWNER}"),
        ),
        Op::ForceDelete => (json!({"force":1}), "force=1".into()),
        Op::Create => {
            let t = match kind {
                Kind::Public => 1,
                Kind::Group => 2,
                Kind::Private => 3,
            };
            if kind == Kind::Private {
                (
                    json!({"type":t,"occupants_ids":[added]}),
                    format!("type={t}&occupants_ids={added}"),
                )
            } else {
                (
                    json!({"type":t,"name":"New","occupants_ids":[added]}),
                    format!("type={t}&name=New&occupants_ids={added}"),
                )
            }
        }
    };
    let body = if form { f } else { j.to_string() };
    let (method, path) = match op {
        Op::ForceDelete => ("DELETE", upd(id)),
        Op::Create => ("POST", "/chat/Dialog.json".to_string()),
        _ => ("PUT", upd(id)),
    };
    (method, path, ct, body)
}

/// Runs one cell on a fresh gate; `Err` describes a mismatch.
async fn run_cell(kind: Kind, who: Who, op: Op, form: bool) -> Result<(), String> {
    let gate = Gate::start("").await;
    let me = user_of(kind, who);
    let (method, path, ct, body) = request(kind, op, me, form);
    let auth;
    let user;
    let token = format!("matrix-token-{}", me.unwrap_or(0));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", ct)];
    match who {
        Who::App => {
            auth = format!("ApiKey {KEY_APP}");
            headers.push(("authorization", &auth));
        }
        Who::Token => {
            gate.sandbox.add_session(&token, me.unwrap());
            headers.push(("qb-token", &token));
        }
        _ => {
            auth = format!("ApiKey {KEY_ANY}");
            user = me.unwrap().to_string();
            headers.push(("authorization", &auth));
            headers.push(("on-behalf-of", &user));
        }
    }
    let reply = gate.send(method, &path, &headers, &body).await;
    let got = changes(&gate);
    let want = expect(kind, who, op);
    let label = format!(
        "{kind:?} {who:?} {op:?} {}: {method} {path} {body:?}",
        if form { "form" } else { "json" }
    );
    let text = String::from_utf8_lossy(&reply.body).to_string();
    match want {
        Expect::Forward => {
            if reply.status != 200 || reply.reason().is_some() || got.len() != 1 {
                return Err(format!(
                    "{label}: want forwarded 200, got {} {:?} {text} (forwarded {})",
                    reply.status,
                    reply.reason(),
                    got.len()
                ));
            }
            if got[0].body != body.as_bytes() || got[0].method.as_str() != method {
                return Err(format!("{label}: forwarded something else: {:?}", got[0]));
            }
        }
        Expect::Reject(status, reason, key) => {
            let shape_ok = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| {
                    v["errors"][key]
                        .as_array()
                        .map(|a| a.len() == 1 && a[0].is_string())
                })
                == Some(true);
            if reply.status != status
                || reply.reason() != Some(reason)
                || !shape_ok
                || !got.is_empty()
            {
                return Err(format!(
                    "{label}: want {status} {reason} [{key}], got {} {:?} {text} (forwarded {})",
                    reply.status,
                    reply.reason(),
                    got.len()
                ));
            }
            if reply
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                != Some("application/json; charset=utf-8")
            {
                return Err(format!(
                    "{label}: content-type {:?}",
                    reply.headers.get("content-type")
                ));
            }
        }
    }
    Ok(())
}

async fn run_matrix(form: bool) -> usize {
    let mut cells = Vec::new();
    for kind in KINDS {
        for who in WHOS {
            for op in OPS {
                // The application has no "self" to remove.
                if who == Who::App && op == Op::RemoveSelf {
                    continue;
                }
                cells.push((kind, who, op));
            }
        }
    }
    let n = cells.len();
    let results = join_all(
        cells
            .into_iter()
            .map(|(kind, who, op)| run_cell(kind, who, op, form)),
    )
    .await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failures.is_empty(),
        "{} of {n} cells failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    n
}

/// `None` when the gateway itself refused with `status`, `reason` and a one-message
/// `{"errors":{key:[..]}}` body, and nothing was forwarded; otherwise what happened instead.
fn refused_here(
    reply: &Reply,
    forwarded: usize,
    status: u16,
    reason: &str,
    key: &str,
) -> Option<String> {
    let shape = serde_json::from_slice::<serde_json::Value>(&reply.body)
        .ok()
        .and_then(|v| v["errors"][key].as_array().map(|a| a.len() == 1));
    let ok = reply.status == status
        && reply.reason() == Some(reason)
        && shape == Some(true)
        && forwarded == 0;
    (!ok).then(|| {
        format!(
            "want {status} {reason}, got {} {:?} {} (forwarded {forwarded})",
            reply.status,
            reply.reason(),
            String::from_utf8_lossy(&reply.body)
        )
    })
}

#[tokio::test]
async fn matrix_json_bodies() {
    assert_eq!(run_matrix(false).await, 3 * 5 * 11 - 3);
}

#[tokio::test]
async fn matrix_form_bodies() {
    assert_eq!(run_matrix(true).await, 3 * 5 * 11 - 3);
}

// ---------------------------------------------------------------------------------------------
// 2. Field checks.

#[tokio::test]
async fn name_length_counts_characters() {
    let gate = Gate::start("").await;
    let long = json!({ "name": "a".repeat(201) }).to_string();
    let reply = put_as(&gate, RECIPE_USER, "PUT", &upd(GROUP_ID), JSON, &long).await;
    assert_blocked(&gate, &reply, 422, "dialog_name_too_long", "name");
    assert_eq!(
        reply.json(),
        json!({"errors":{"name":["is too long (maximum is 200 characters)"]}})
    );

    let long_mb = json!({ "name": "é".repeat(201) }).to_string();
    let reply = put_as(&gate, RECIPE_USER, "PUT", &upd(GROUP_ID), JSON, &long_mb).await;
    assert_blocked(&gate, &reply, 422, "dialog_name_too_long", "name");

    let ok = json!({ "name": "é".repeat(200) }).to_string();
    let reply = put_as(&gate, RECIPE_USER, "PUT", &upd(GROUP_ID), JSON, &ok).await;
    assert_forwarded(&gate, &reply);
    assert_eq!(
        gate.sandbox.dialog(GROUP_ID).unwrap()["name"],
        "é".repeat(200)
    );

    let form = format!("name={}", "%C3%A9".repeat(200));
    let reply = put_as(&gate, RECIPE_USER, "PUT", &upd(GROUP_ID), FORM, &form).await;
    assert_forwarded(&gate, &reply);
    let form = format!("name={}", "%C3%A9".repeat(201));
    let reply = put_as(&gate, RECIPE_USER, "PUT", &upd(GROUP_ID), FORM, &form).await;
    assert_blocked(&gate, &reply, 422, "dialog_name_too_long", "name");
}

#[tokio::test]
async fn name_on_private_is_field_keyed() {
    let gate = Gate::start("").await;
    for (ct, body) in [(JSON, r#"{"name":"x"}"#), (FORM, "name=x")] {
        let reply = put_as(&gate, OCCUPANT, "PUT", &upd(PRIVATE_ID), ct, body).await;
        assert_blocked(&gate, &reply, 422, "dialog_name_on_private", "name");
        assert!(reply.json()["errors"].get("base").is_none());
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Bypass attempts: none reaches the sandbox.

#[tokio::test]
async fn bypasses_of_name_on_private() {
    let gate = Gate::start("").await;
    let name = r#"{"name":"x"}"#;
    let p = PRIVATE_ID;
    // (method, path, extra headers, content type, body, status, reason, key)
    type Case<'a> = (
        &'a str,
        String,
        Vec<(&'a str, &'a str)>,
        &'a str,
        &'a str,
        u16,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "PUT",
            format!("/chat/Dialog/{p}.json?name=x"),
            vec![],
            "",
            "",
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json?name=x"),
            vec![],
            JSON,
            "{}",
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json?data[class_name]=X&name=x"),
            vec![],
            FORM,
            "",
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json"),
            vec![],
            FORM,
            "name=x",
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json"),
            vec![],
            FORM,
            "data[class_name]=X&name=x",
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/CHAT/dialog/{p}"),
            vec![],
            JSON,
            name,
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/CHAT/dialog/{p}.JSON"),
            vec![],
            JSON,
            name,
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}"),
            vec![],
            JSON,
            name,
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.xml"),
            vec![],
            JSON,
            name,
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/chat/%44ialog/{p}.json"),
            vec![],
            JSON,
            name,
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/%63hat/Dialog/%35{}.json", &p[1..]),
            vec![],
            JSON,
            name,
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PATCH",
            format!("/chat/Dialog/{p}.json"),
            vec![],
            JSON,
            name,
            422,
            "dialog_name_on_private",
            "name",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json"),
            vec![],
            JSON,
            r#"{"name":"a","name":"b"}"#,
            400,
            "params_duplicate",
            "base",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json"),
            vec![],
            JSON,
            r#"{"data":{"class_name":"X"},"data":{"class_name":"Y"},"name":"a"}"#,
            400,
            "params_duplicate",
            "base",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json"),
            vec![],
            FORM,
            "name=a&name=b",
            400,
            "params_duplicate",
            "base",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json?name=a"),
            vec![],
            JSON,
            r#"{"name":"b"}"#,
            400,
            "params_duplicate",
            "base",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json?name=a"),
            vec![],
            FORM,
            "name=b",
            400,
            "params_duplicate",
            "base",
        ),
        (
            "POST",
            format!("/chat/Dialog/{p}.json?_method=PUT"),
            vec![],
            JSON,
            name,
            400,
            "method_override",
            "base",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json?_method=PATCH"),
            vec![],
            JSON,
            name,
            400,
            "method_override",
            "base",
        ),
        (
            "POST",
            format!("/chat/Dialog/{p}.json"),
            vec![("x-http-method-override", "PUT")],
            JSON,
            name,
            400,
            "method_override",
            "base",
        ),
        (
            "POST",
            "/chat/Dialog.json".to_string(),
            vec![("x-http-method-override", "PUT")],
            JSON,
            r#"{"type":2}"#,
            400,
            "method_override",
            "base",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json"),
            vec![("content-encoding", "gzip")],
            JSON,
            name,
            415,
            "content_encoding",
            "base",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json"),
            vec![],
            "text/plain",
            "name=x",
            415,
            "params_unsupported_media_type",
            "base",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{p}.json"),
            vec![],
            "application/json; charset=latin1",
            name,
            415,
            "params_unsupported_media_type",
            "base",
        ),
        (
            "POST",
            format!("/chat/Dialog/{p}.json"),
            vec![],
            JSON,
            name,
            // Not an endpoint of the catalog: refused before the dialog rules read it.
            403,
            "route_unknown",
            "base",
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, extra, ct, body, status, reason, key) in cases {
        let user = OCCUPANT.to_string();
        let auth = format!("ApiKey {KEY_ANY}");
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("on-behalf-of", user.as_str()),
        ];
        if !ct.is_empty() {
            headers.push(("content-type", ct));
        }
        headers.extend(extra.iter().copied());
        let reply = gate.send(method, &path, &headers, body).await;
        if let Some(got) = refused_here(&reply, changes(&gate).len(), status, reason, key) {
            failures.push(format!("{method} {path} {extra:?} {ct} {body:?}: {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(gate
        .sandbox
        .dialog(PRIVATE_ID)
        .unwrap()
        .get("name")
        .is_none_or(|n| n.is_null()));
}

#[tokio::test]
async fn bypasses_of_remove_others() {
    let gate = Gate::start("").await;
    let g = GROUP_ID;
    let (me, other) = (OWNER, OTHER_OCCUPANT);
    let pull_other = format!(r#"{{"pull_all":{{"occupants_ids":[{other}]}}}}"#);
    let pull_me = format!(r#"{{"pull_all":{{"occupants_ids":[{me}]}}}}"#);
    let cases: Vec<(&str, String, &str, String, u16, &str)> = vec![
        (
            "PUT",
            format!("/chat/Dialog/{g}.json"),
            JSON,
            pull_other.clone(),
            403,
            "dialog_remove_others",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json"),
            JSON,
            format!(r#"{{"pull_all":{{"occupants_ids":[{me},{other}]}}}}"#),
            403,
            "dialog_remove_others",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json"),
            JSON,
            format!(r#"{{"pull_all":{{"occupants_ids":"{other}"}}}}"#),
            403,
            "dialog_remove_others",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json?pull_all[occupants_ids][]={other}"),
            "",
            String::new(),
            403,
            "dialog_remove_others",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json?pull_all%5Boccupants_ids%5D%5B%5D={other}"),
            "",
            String::new(),
            403,
            "dialog_remove_others",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json"),
            FORM,
            format!("pull_all[occupants_ids][]={other}"),
            403,
            "dialog_remove_others",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json"),
            FORM,
            format!("pull_all[occupants_ids][]={me}&pull_all[occupants_ids][]={other}"),
            403,
            "dialog_remove_others",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json"),
            FORM,
            format!("pull_all%5Boccupants_ids%5D%5B%5D={other}"),
            403,
            "dialog_remove_others",
        ),
        (
            "PUT",
            format!("/CHAT/dialog/{g}"),
            JSON,
            pull_other.clone(),
            403,
            "dialog_remove_others",
        ),
        (
            "PUT",
            format!("/chat/%44ialog/{g}.json"),
            JSON,
            pull_other.clone(),
            403,
            "dialog_remove_others",
        ),
        (
            "PATCH",
            format!("/chat/Dialog/{g}.json"),
            JSON,
            pull_other.clone(),
            403,
            "dialog_remove_others",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json"),
            JSON,
            format!(
                r#"{{"pull_all":{{"occupants_ids":[{me}]}},"pull_all":{{"occupants_ids":[{other}]}}}}"#
            ),
            400,
            "params_duplicate",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json"),
            JSON,
            format!(r#"{{"pull_all":{{"occupants_ids":[{me}],"occupants_ids":[{other}]}}}}"#),
            400,
            "params_duplicate",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json?pull_all[occupants_ids][]={other}"),
            JSON,
            pull_me.clone(),
            400,
            "params_duplicate",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json?pull_all[occupants_ids][]={other}"),
            FORM,
            format!("pull_all[occupants_ids][]={me}"),
            400,
            "params_duplicate",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json"),
            FORM,
            format!("pull_all[occupants_ids][]={me}&_method=PUT"),
            400,
            "params_method_override",
        ),
        (
            "PUT",
            format!("/chat/Dialog/{g}.json"),
            "text/plain",
            pull_other.clone(),
            415,
            "params_unsupported_media_type",
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, ct, body, status, reason) in cases {
        let reply = put_as(&gate, me, method, &path, ct, &body).await;
        if let Some(got) = refused_here(&reply, changes(&gate).len(), status, reason, "base") {
            failures.push(format!("{method} {path} {ct} {body:?}: {got}"));
        }
    }
    // The occupant removing only himself still goes through.
    let reply = put_as(&gate, me, "PUT", &upd(g), JSON, &pull_me).await;
    if reply.status != 200 || changes(&gate).len() != 1 {
        failures.push(format!("self-removal not forwarded: {}", reply.status));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let occupants = gate.sandbox.dialog(g).unwrap()["occupants_ids"].clone();
    assert!(
        occupants.as_array().unwrap().contains(&json!(other)),
        "{occupants}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Modes.

#[tokio::test]
async fn report_mode_forwards_and_marks() {
    let gate = Gate::start("dialog_rules:\n  mode: report").await;
    let body = format!(r#"{{"pull_all":{{"occupants_ids":[{OTHER_OCCUPANT}]}}}}"#);
    let reply = put_as(&gate, OWNER, "PUT", &upd(GROUP_ID), JSON, &body).await;
    assert_forwarded(&gate, &reply);
    assert_eq!(
        reply
            .headers
            .get("x-qbgate-would-reject")
            .and_then(|v| v.to_str().ok()),
        Some("dialog_remove_others")
    );
    let occupants = gate.sandbox.dialog(GROUP_ID).unwrap()["occupants_ids"].clone();
    assert!(!occupants
        .as_array()
        .unwrap()
        .contains(&json!(OTHER_OCCUPANT)));

    let reply = put_as(&gate, OCCUPANT, "PUT", &upd(PRIVATE_ID), FORM, "name=x").await;
    assert_forwarded(&gate, &reply);
    assert_eq!(
        reply
            .headers
            .get("x-qbgate-would-reject")
            .and_then(|v| v.to_str().ok()),
        Some("dialog_name_on_private")
    );

    // An allowed change carries no mark.
    let reply = put_as(
        &gate,
        RECIPE_USER,
        "PUT",
        &upd(GROUP_ID),
        JSON,
        r#"{"name":"ok"}"#,
    )
    .await;
    assert_forwarded(&gate, &reply);
    assert!(reply.headers.get("x-qbgate-would-reject").is_none());
}

#[tokio::test]
async fn off_mode_forwards_unmarked() {
    let gate = Gate::start("dialog_rules:\n  mode: off").await;
    let body = format!(r#"{{"pull_all":{{"occupants_ids":[{OTHER_OCCUPANT}]}}}}"#);
    let reply = put_as(&gate, OWNER, "PUT", &upd(GROUP_ID), JSON, &body).await;
    assert_forwarded(&gate, &reply);
    assert!(reply.headers.get("x-qbgate-would-reject").is_none());
    let reply = put_as(
        &gate,
        OCCUPANT,
        "PUT",
        &upd(PRIVATE_ID),
        JSON,
        r#"{"name":"x"}"#,
    )
    .await;
    assert_forwarded(&gate, &reply);
    assert!(reply.headers.get("x-qbgate-would-reject").is_none());
    assert_eq!(gate.sandbox.dialog(PRIVATE_ID).unwrap()["name"], "x");
}

// ---------------------------------------------------------------------------------------------
// 5. Lookups.

#[tokio::test]
async fn lookup_failure_rejects_by_default() {
    for sections in ["", "dialog_rules:\n  on_lookup_error: reject"] {
        let gate = Gate::start(sections).await;
        gate.sandbox.set_fault(Fault::Status(500));
        let before = gate.sandbox.lookups();
        let reply = put_as(
            &gate,
            RECIPE_USER,
            "PUT",
            &upd(GROUP_ID),
            JSON,
            r#"{"name":"x"}"#,
        )
        .await;
        assert_blocked(&gate, &reply, 503, "lookup_failed", "base");
        assert!(gate.sandbox.lookups() > before);
        // Force delete needs a lookup too.
        let reply = put_as(
            &gate,
            RECIPE_USER,
            "DELETE",
            &upd(GROUP_ID),
            FORM,
            "force=1",
        )
        .await;
        assert_blocked(&gate, &reply, 503, "lookup_failed", "base");
    }
}

#[tokio::test]
async fn lookup_failure_forwards_when_configured() {
    let gate = Gate::start("dialog_rules:\n  on_lookup_error: forward").await;
    gate.sandbox.set_fault(Fault::Status(500));
    let reply = put_as(
        &gate,
        RECIPE_USER,
        "PUT",
        &upd(GROUP_ID),
        JSON,
        r#"{"name":"x"}"#,
    )
    .await;
    // Forwarded unchecked; the faulty sandbox answers it with its 500.
    assert_eq!(
        reply.status,
        500,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.reason(), None);
    let got = changes(&gate);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, http::Method::PUT);
    assert_eq!(&got[0].body[..], br#"{"name":"x"}"#);
}

#[tokio::test]
async fn unknown_dialog_is_404() {
    let gate = Gate::start("").await;
    let missing = "5d75393ba28f9a17e1cb0000";
    let reply = put_as(
        &gate,
        RECIPE_USER,
        "PUT",
        &upd(missing),
        JSON,
        r#"{"name":"x"}"#,
    )
    .await;
    assert_blocked(&gate, &reply, 404, "dialog_not_found", "base");
    let reply = put_as(&gate, RECIPE_USER, "DELETE", &upd(missing), FORM, "force=1").await;
    assert_blocked(&gate, &reply, 404, "dialog_not_found", "base");
    let path = format!("/chat/Dialog/{GROUP_ID},{missing}.json");
    let reply = put_as(&gate, RECIPE_USER, "DELETE", &path, FORM, "force=1").await;
    assert_blocked(&gate, &reply, 404, "dialog_not_found", "base");
}

// ---------------------------------------------------------------------------------------------
// 6. Cache.

#[tokio::test]
async fn concurrent_updates_share_one_lookup() {
    let gate = Gate::start("dialog_rules:\n  cache_ttl: 60s").await;
    let before = gate.sandbox.lookups();
    let bodies: Vec<String> = (0..20).map(|i| format!(r#"{{"name":"n{i}"}}"#)).collect();
    let path = upd(GROUP_ID);
    let replies = join_all(
        bodies
            .iter()
            .map(|b| put_as(&gate, RECIPE_USER, "PUT", &path, JSON, b)),
    )
    .await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(gate.sandbox.lookups() - before, 1);
    assert_eq!(changes(&gate).len(), 20);
}

#[tokio::test]
async fn owner_change_through_gateway_is_seen_at_once() {
    let gate = Gate::start("dialog_rules:\n  cache_ttl: 60s").await;
    let before = gate.sandbox.lookups();
    let admin = format!(r#"{{"push_all":{{"admin_ids":[{OTHER_OCCUPANT}]}}}}"#);
    // Warm the cache: the old owner's owner-only change is allowed.
    let reply = put_as(&gate, RECIPE_USER, "PUT", &upd(GROUP_ID), JSON, &admin).await;
    assert_forwarded(&gate, &reply);
    let reply = put_as(
        &gate,
        RECIPE_USER,
        "PUT",
        &upd(GROUP_ID),
        JSON,
        &format!(r#"{{"user_id":{NEW_OWNER}}}"#),
    )
    .await;
    assert_forwarded(&gate, &reply);
    assert_eq!(
        gate.sandbox.dialog(GROUP_ID).unwrap()["user_id"],
        json!(NEW_OWNER)
    );

    let remove = format!(r#"{{"pull_all":{{"admin_ids":[{OTHER_OCCUPANT}]}}}}"#);
    let reply = put_as(&gate, RECIPE_USER, "PUT", &upd(GROUP_ID), JSON, &remove).await;
    assert_blocked(&gate, &reply, 403, "dialog_owner_only", "base");
    let reply = put_as(
        &gate,
        RECIPE_USER,
        "DELETE",
        &upd(GROUP_ID),
        FORM,
        "force=1",
    )
    .await;
    assert_blocked(&gate, &reply, 403, "dialog_force_delete_not_owner", "base");
    let reply = put_as(&gate, NEW_OWNER, "PUT", &upd(GROUP_ID), JSON, &remove).await;
    assert_forwarded(&gate, &reply);
    // Everything above was judged from the one cached lookup, updated by the responses.
    assert_eq!(gate.sandbox.lookups() - before, 1);
}
