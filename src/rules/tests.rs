//! Tests of `rules`.

use super::*;

fn route(method: Method, path: &str) -> Option<DialogRoute> {
    let segs: Vec<&str> = path.split('/').collect();
    classify(&method, &segs)
}

fn update(id: &str) -> Option<DialogRoute> {
    Some(DialogRoute::Update { id: id.into() })
}

#[test]
fn classify_updates() {
    let id = "5d75393ba28f9a17e1cb0f9e";
    assert_eq!(
        classify(
            &Method::PUT,
            &["chat", "Dialog", "5d75393ba28f9a17e1cb0f9e.json"]
        ),
        update(id)
    );
    for path in [
        "/chat/Dialog/5d75393ba28f9a17e1cb0f9e.json",
        "/chat/Dialog/5d75393ba28f9a17e1cb0f9e",
        "/CHAT/dialog/5d75393ba28f9a17e1cb0f9e.JSON",
        "/chat/Dialog/5d75393ba28f9a17e1cb0f9e.xml",
        "//chat//Dialog/5d75393ba28f9a17e1cb0f9e/",
        "chat/Dialog/5d75393ba28f9a17e1cb0f9e.json.json",
    ] {
        assert_eq!(route(Method::PUT, path), update(id), "{path}");
        assert_eq!(route(Method::PATCH, path), update(id), "{path}");
    }
}

#[test]
fn classify_create_and_delete() {
    for path in [
        "/chat/Dialog.json",
        "/chat/Dialog",
        "/Chat/DIALOG.Json",
        "/chat/Dialog/",
    ] {
        assert_eq!(
            route(Method::POST, path),
            Some(DialogRoute::Create),
            "{path}"
        );
    }
    assert_eq!(
        route(
            Method::DELETE,
            "/chat/Dialog/5d75393ba28f9a17e1cb0f9e,5e261c72a28f9a4f779f10bb.json"
        ),
        Some(DialogRoute::Delete {
            ids: vec![
                "5d75393ba28f9a17e1cb0f9e".into(),
                "5e261c72a28f9a4f779f10bb".into()
            ]
        })
    );
    assert_eq!(
        route(Method::DELETE, "/chat/Dialog/a,b,a"),
        Some(DialogRoute::Delete {
            ids: vec!["a".into(), "b".into()]
        })
    );
}

#[test]
fn classify_refuses_what_it_cannot_judge() {
    for (method, path) in [
        (Method::POST, "/chat/Dialog/5d75.json"),
        (Method::POST, "/chat/Dialog/5d75/x"),
        (Method::PUT, "/chat/Dialog"),
        (Method::PUT, "/chat/Dialog.json"),
        (Method::PATCH, "/chat/Dialog"),
        (Method::DELETE, "/chat/Dialog.json"),
        (Method::PUT, "/chat/Dialog/notifications/5d75"),
        (Method::PUT, "/chat/Dialog/a,b.json"),
        (Method::PUT, "/chat/Dialog/.json"),
        (Method::PUT, "/chat/Dialog/a b"),
        (Method::PUT, "/chat/Dialog/a?b"),
        (Method::DELETE, "/chat/Dialog/a,,b"),
        (Method::DELETE, "/chat/Dialog/a,"),
        (Method::DELETE, "/chat/Dialog/,a"),
        (Method::PUT, "/chat/Dialog.json/5d75"),
        (Method::PUT, "/chat.json/Dialog/5d75"),
        (Method::TRACE, "/chat/Dialog/5d75"),
        (Method::from_bytes(b"PURGE").unwrap(), "/chat/Dialog/5d75"),
    ] {
        assert_eq!(
            route(method.clone(), path),
            Some(DialogRoute::Unsupported),
            "{method} {path}"
        );
    }
}

#[test]
fn classify_ignores_reads_and_other_paths() {
    for (method, path) in [
        (Method::GET, "/chat/Dialog.json"),
        (Method::GET, "/chat/Dialog/5d75.json"),
        (Method::HEAD, "/chat/Dialog/5d75"),
        (Method::OPTIONS, "/chat/Dialog"),
        (Method::POST, "/chat/Message.json"),
        (Method::PUT, "/chat/Dialogs/5d75"),
        (Method::PUT, "/users/5.json"),
        (Method::POST, "/chat"),
        (Method::POST, "/"),
        (Method::POST, ""),
        (Method::PUT, "/api/chat/Dialog/5d75"),
    ] {
        assert_eq!(route(method.clone(), path), None, "{method} {path}");
    }
}

#[test]
fn dialog_from_json() {
    let v = json!({"_id":"5d75393ba28f9a17e1cb0f9e","created_at":"2019-09-08T17:24:11Z",
        "last_message":"sure, I can wait","name":"New Year 2020 party",
        "occupants_ids":[96753878,96754523,96830631],"admin_ids":[],"photo":"68123",
        "type":2,"updated_at":"2019-09-08T19:36:54Z","user_id":96753878,
        "xmpp_room_jid":"76730_5d75393ba28f9a17e1cb0f9e@muc.chat.quickblox.com","unread_messages_count":0});
    assert_eq!(
        Dialog::from_json(&v),
        Some(Dialog {
            id: "5d75393ba28f9a17e1cb0f9e".into(),
            kind: DialogType::Group,
            owner: 96753878,
            occupants: vec![96753878, 96754523, 96830631],
            admins: vec![],
        })
    );
    let public = json!({"_id":"x","type":1,"user_id":7});
    let d = Dialog::from_json(&public).unwrap();
    assert_eq!(
        (d.kind, d.occupants.len(), d.admins.len()),
        (DialogType::PublicGroup, 0, 0)
    );
    assert!(d.is_member(7) && !d.is_member(8));
}

#[test]
fn dialog_from_json_refuses_bad_objects() {
    for v in [
        json!({"type":2,"user_id":7}),
        json!({"_id":"","type":2,"user_id":7}),
        json!({"_id":"x","type":4,"user_id":7}),
        json!({"_id":"x","type":"2","user_id":7}),
        json!({"_id":"x","type":2}),
        json!({"_id":"x","type":2,"user_id":0}),
        json!({"_id":"x","type":2,"user_id":"7"}),
        json!({"_id":"x","type":2,"user_id":7,"occupants_ids":"7,8"}),
        json!({"_id":"x","type":2,"user_id":7,"occupants_ids":[7,"8"]}),
        json!({"_id":"x","type":2,"user_id":7,"admin_ids":[-1]}),
        json!([]),
    ] {
        assert_eq!(Dialog::from_json(&v), None, "{v}");
    }
}

#[test]
fn dialog_from_slice_answers_as_from_json() {
    let cases = [
        json!({"_id":"5d75393ba28f9a17e1cb0f9e","name":"x","occupants_ids":[1,2,3],
            "admin_ids":[],"type":2,"user_id":1,"data":{"class_name":"C","n":[1,{"a":null}]}}),
        json!({"_id":"x","type":1,"user_id":7}),
        json!({"_id":"x","type":3,"user_id":7,"occupants_ids":null,"admin_ids":null}),
        json!({"_id":"xé\"","type":2,"user_id":7,"occupants_ids":[7,8]}),
        json!({"type":2,"user_id":7}),
        json!({"_id":"","type":2,"user_id":7}),
        json!({"_id":null,"type":2,"user_id":7}),
        json!({"_id":"x","type":4,"user_id":7}),
        json!({"_id":"x","type":"2","user_id":7}),
        json!({"_id":"x","type":2.0,"user_id":7}),
        json!({"_id":"x","type":2}),
        json!({"_id":"x","type":2,"user_id":0}),
        json!({"_id":"x","type":2,"user_id":null}),
        json!({"_id":"x","type":2,"user_id":"7"}),
        json!({"_id":"x","type":2,"user_id":7,"occupants_ids":"7,8"}),
        json!({"_id":"x","type":2,"user_id":7,"occupants_ids":[7,"8"]}),
        json!({"_id":"x","type":2,"user_id":7,"admin_ids":[-1]}),
        json!([]),
        json!(["x", 2, 7, [7], []]),
        json!("x"),
        json!(null),
    ];
    for v in cases {
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(Dialog::from_slice(&bytes), Dialog::from_json(&v), "{v}");
    }
    // Not JSON, or a repeated field (which `Value` would settle by the last): no dialog.
    assert_eq!(Dialog::from_slice(b"{\"_id\":"), None);
    assert_eq!(Dialog::from_slice(b""), None);
    assert_eq!(
        Dialog::from_slice(br#"{"_id":"x","type":2,"user_id":7,"user_id":8}"#),
        None
    );
    assert!(Dialog::from_slice(br#" {"_id":"x","type":2,"user_id":7}"#).is_some());
}

#[test]
fn rejection_bodies() {
    let r = Rejection::invalid(
        "dialog_name_too_long",
        "name",
        "is too long (maximum is 200 characters)",
    );
    assert_eq!(
        r.body(),
        json!({"errors":{"name":["is too long (maximum is 200 characters)"]}})
    );
    let r = Rejection::forbidden("dialog_not_occupant", NO_PERMISSION);
    assert_eq!(r.status, 403);
    assert_eq!(r.body(), json!({"errors":{"base":[NO_PERMISSION]}}));
}

#[test]
fn dialog_type_codes() {
    for t in [
        DialogType::PublicGroup,
        DialogType::Group,
        DialogType::Private,
    ] {
        assert_eq!(DialogType::from_code(u64::from(t.code())), Some(t));
    }
    assert_eq!(DialogType::from_code(0), None);
}
