//! Tests of `document`.

use super::*;
use crate::params;
use proptest::prelude::*;
use serde_json::json;

const FORM: Option<&str> = Some("application/x-www-form-urlencoded; charset=UTF-8");
const JSON: Option<&str> = Some("application/json; charset=utf-8");

fn update_route() -> DialogRoute {
    DialogRoute::Update { id: "5d75".into() }
}

fn map(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn read_update_json(v: Value) -> Result<UpdateDoc, Rejection> {
    read_update(&map(v), &RuleOptions::default())
}

fn read_create_json(v: Value) -> Result<CreateDoc, Rejection> {
    read_create(&map(v), &RuleOptions::default())
}

fn fails(r: Result<impl std::fmt::Debug, Rejection>, reason: &str, field: &str) {
    match r {
        Err(rej) => {
            assert_eq!(rej.status, 422);
            assert_eq!((rej.reason, rej.field.as_deref()), (reason, Some(field)));
        }
        Ok(v) => panic!("accepted {v:?}, wanted {reason} on {field}"),
    }
}

fn via(ct: Option<&str>, body: &str, route: &DialogRoute) -> Result<DialogRequest, Rejection> {
    let params = params::parse(ct, None, body.as_bytes()).unwrap();
    read(route, &params, &RuleOptions::default())
}

#[test]
fn sdk_update_bodies() {
    let r = update_route();
    assert_eq!(
        via(JSON, r#"{"name":"New Year 2020 party"}"#, &r).unwrap(),
        DialogRequest::Update(UpdateDoc {
            name: Some("New Year 2020 party".into()),
            ..Default::default()
        })
    );
    assert_eq!(
        via(JSON, r#"{"push_all":{"occupants_ids":[91375295,96705448]},"pull_all":{"occupants_ids":[3]}}"#, &r).unwrap(),
        DialogRequest::Update(UpdateDoc {
            push_all: Some(IdChanges { occupants_ids: Some(vec![91375295, 96705448]), admin_ids: None }),
            pull_all: Some(IdChanges { occupants_ids: Some(vec![3]), admin_ids: None }),
            ..Default::default()
        })
    );
    assert_eq!(
        via(JSON, r#"{"photo":"68123","user_id":96754523,"data":{"class_name":"CoolDialog","beer":"Guinness","bar":"Irish"}}"#, &r).unwrap(),
        DialogRequest::Update(UpdateDoc {
            photo: Some("68123".into()),
            owner: Some(96754523),
            data: Some(CustomData { class_name: "CoolDialog".into() }),
            ..Default::default()
        })
    );
}

#[test]
fn sdk_create_and_delete_bodies() {
    let got = via(
        FORM,
        "data[beer]=x&data[class_name]=CoolDialog&name=Group&occupants_ids=91375295%2C%2096705448&type=2",
        &DialogRoute::Create,
    )
    .unwrap();
    assert_eq!(
        got,
        DialogRequest::Create(CreateDoc {
            kind: DialogType::Group,
            name: Some("Group".into()),
            photo: None,
            occupants_ids: Some(vec![91375295, 96705448]),
            data: Some(CustomData {
                class_name: "CoolDialog".into()
            }),
            extra: vec![],
        })
    );
    let ids = vec![
        "5d75393ba28f9a17e1cb0f9e".to_string(),
        "5e261c72a28f9a4f779f10bb".to_string(),
    ];
    let del = DialogRoute::Delete { ids: ids.clone() };
    assert_eq!(
        via(FORM, "force=1", &del).unwrap(),
        DialogRequest::Delete {
            ids: ids.clone(),
            force: true
        }
    );
    assert_eq!(
        via(FORM, "", &del).unwrap(),
        DialogRequest::Delete { ids, force: false }
    );
}

#[test]
fn update_form_encodings() {
    let r = update_route();
    let got = via(FORM, "push_all[occupants_ids][]=5&push_all[occupants_ids][]=6&pull_all[admin_ids]=7%2C%208&user_id=9", &r).unwrap();
    assert_eq!(
        got,
        DialogRequest::Update(UpdateDoc {
            push_all: Some(IdChanges {
                occupants_ids: Some(vec![5, 6]),
                admin_ids: None
            }),
            pull_all: Some(IdChanges {
                occupants_ids: None,
                admin_ids: Some(vec![7, 8])
            }),
            owner: Some(9),
            ..Default::default()
        })
    );
}

#[test]
fn unknown_fields() {
    fails(
        read_update_json(json!({"type": 3})),
        "unknown_field",
        "type",
    );
    fails(
        read_update_json(json!({"is_join_required": 1})),
        "unknown_field",
        "is_join_required",
    );
    fails(
        read_update_json(json!({"occupants_ids": [1]})),
        "unknown_field",
        "occupants_ids",
    );
    fails(
        read_update_json(json!({"push_all": {"occupants": [1]}})),
        "unknown_field",
        "push_all[occupants]",
    );
    fails(
        read_update_json(json!({"pull_all": {"admin_ids": [1], "x": 1}})),
        "unknown_field",
        "pull_all[x]",
    );
    fails(
        read_create_json(json!({"type": 2, "user_id": 5})),
        "unknown_field",
        "user_id",
    );
    fails(
        read_create_json(json!({"type": 2, "admin_ids": [5]})),
        "unknown_field",
        "admin_ids",
    );
    let del = DialogRoute::Delete {
        ids: vec!["a".into()],
    };
    fails(
        read(
            &del,
            &map(json!({"force": 1, "x": 1})),
            &RuleOptions::default(),
        ),
        "unknown_field",
        "x",
    );
}

#[test]
fn allow_fields_pass_unchecked_but_never_unlock_known_checks() {
    let opts = RuleOptions {
        allow_fields: vec!["color".into(), "name".into()],
    };
    let doc = read_update(&map(json!({"color": {"any": [1]}, "name": "x"})), &opts).unwrap();
    assert_eq!(doc.extra, vec!["color".to_string()]);
    assert_eq!(doc.name.as_deref(), Some("x"));
    fails(
        read_update(&map(json!({"name": 5})), &opts),
        "invalid_field",
        "name",
    );
    let doc = read_create(&map(json!({"type": 1, "color": "red"})), &opts).unwrap();
    assert_eq!(doc.extra, vec!["color".to_string()]);
    // Delete takes only force, whatever the policy allows.
    let del = DialogRoute::Delete {
        ids: vec!["a".into()],
    };
    fails(
        read(&del, &map(json!({"color": 1})), &opts),
        "unknown_field",
        "color",
    );
}

#[test]
fn name_checks() {
    let ok = "é".repeat(MAX_NAME_CHARS);
    assert_eq!(
        read_update_json(json!({ "name": ok })).unwrap().name,
        Some(ok)
    );
    let long = read_update_json(json!({ "name": "x".repeat(MAX_NAME_CHARS + 1) })).unwrap_err();
    assert_eq!(
        long.body(),
        json!({"errors":{"name":["is too long (maximum is 200 characters)"]}})
    );
    assert_eq!(long.reason, "dialog_name_too_long");
    fails(
        read_create_json(json!({"type": 2, "name": "😀".repeat(201)})),
        "dialog_name_too_long",
        "name",
    );
    for bad in [
        json!(5),
        json!(null),
        json!(["x"]),
        json!({"a": "x"}),
        json!(true),
    ] {
        fails(
            read_update_json(json!({ "name": bad })),
            "invalid_field",
            "name",
        );
    }
    assert!(read_update_json(json!({"name": ""})).is_ok());
}

#[test]
fn photo_checks() {
    assert_eq!(
        read_update_json(json!({"photo": "68123"}))
            .unwrap()
            .photo
            .as_deref(),
        Some("68123")
    );
    for bad in [json!(68123), json!(null), json!([])] {
        fails(
            read_update_json(json!({ "photo": bad })),
            "invalid_field",
            "photo",
        );
    }
}

#[test]
fn user_id_checks() {
    for (good, want) in [
        (json!(1), 1),
        (json!("123"), 123),
        (json!(u64::MAX), u64::MAX),
        (json!(u64::MAX.to_string()), u64::MAX),
    ] {
        assert_eq!(
            read_update_json(json!({ "user_id": good })).unwrap().owner,
            Some(want)
        );
    }
    for bad in [
        json!(0),
        json!(-1),
        json!("0"),
        json!("-1"),
        json!("+1"),
        json!("1e3"),
        json!(1e3),
        json!(1.0),
        json!(1.5),
        json!("0x10"),
        json!(" 1"),
        json!("1 "),
        json!("01"),
        json!("1.0"),
        json!(""),
        json!("18446744073709551616"),
        json!(18446744073709551616.0),
        json!(null),
        json!(true),
        json!([1]),
        json!({"a": 1}),
        json!("١٢"),
    ] {
        fails(
            read_update_json(json!({ "user_id": bad })),
            "invalid_field",
            "user_id",
        );
    }
}

#[test]
fn id_list_checks() {
    let push = |v: Value| read_update_json(json!({"push_all": {"occupants_ids": v}}));
    for (good, want) in [
        (json!([1, 2]), vec![1, 2]),
        (json!(["1", 2]), vec![1, 2]),
        (json!("1,2"), vec![1, 2]),
        (json!("1, 2"), vec![1, 2]),
        (json!(" 1 , 2 "), vec![1, 2]),
        (json!("7"), vec![7]),
        (json!([3, 3]), vec![3, 3]),
    ] {
        let doc = push(good).unwrap();
        assert_eq!(doc.push_all.unwrap().occupants_ids, Some(want));
    }
    for bad in [
        json!([0]),
        json!([-1]),
        json!([1.5]),
        json!(["1,2"]),
        json!([null]),
        json!([[1]]),
        json!("1,,2"),
        json!("1,2,"),
        json!(",1"),
        json!("1;2"),
        json!("1\t,2"),
        json!("a"),
        json!(5),
        json!(null),
        json!({"0": 1}),
        json!("01,2"),
    ] {
        fails(push(bad), "invalid_field", "push_all[occupants_ids]");
    }
    // Empty changes are refused on update.
    fails(push(json!([])), "invalid_field", "push_all[occupants_ids]");
    fails(push(json!("")), "invalid_field", "push_all[occupants_ids]");
    fails(
        read_update_json(json!({"pull_all": {"admin_ids": []}})),
        "invalid_field",
        "pull_all[admin_ids]",
    );
    fails(
        read_update_json(json!({"push_all": {}})),
        "invalid_field",
        "push_all",
    );
    fails(
        read_update_json(json!({"push_all": "1,2"})),
        "invalid_field",
        "push_all",
    );
    fails(
        read_update_json(json!({"pull_all": null})),
        "invalid_field",
        "pull_all",
    );
    // ... but an empty occupant list is a valid create.
    assert_eq!(
        read_create_json(json!({"type": 1, "occupants_ids": []}))
            .unwrap()
            .occupants_ids,
        Some(vec![])
    );
    assert_eq!(
        read_create_json(json!({"type": 1, "occupants_ids": ""}))
            .unwrap()
            .occupants_ids,
        Some(vec![])
    );
    fails(
        read_create_json(json!({"type": 1, "occupants_ids": "1,x"})),
        "invalid_field",
        "occupants_ids",
    );
}

#[test]
fn data_checks() {
    let doc = via(
        FORM,
        "data[class_name]=CoolDialog&data[beer]=x",
        &update_route(),
    )
    .unwrap();
    let DialogRequest::Update(doc) = doc else {
        panic!("not an update")
    };
    assert_eq!(
        doc.data,
        Some(CustomData {
            class_name: "CoolDialog".into()
        })
    );
    for bad in [
        json!({"beer": "x"}),
        json!({"class_name": ""}),
        json!({"class_name": 5}),
        json!({"class_name": null}),
    ] {
        fails(
            read_update_json(json!({ "data": bad })),
            "invalid_field",
            "data[class_name]",
        );
    }
    for bad in [json!("CoolDialog"), json!(null), json!([])] {
        fails(
            read_update_json(json!({ "data": bad })),
            "invalid_field",
            "data",
        );
    }
    fails(
        read_create_json(json!({"type": 2, "data": {}})),
        "invalid_field",
        "data[class_name]",
    );
}

#[test]
fn create_type_checks() {
    for (good, want) in [
        (json!(1), DialogType::PublicGroup),
        (json!("2"), DialogType::Group),
        (json!(3), DialogType::Private),
    ] {
        assert_eq!(
            read_create_json(json!({ "type": good })).unwrap().kind,
            want
        );
    }
    fails(read_create_json(json!({})), "dialog_create_type", "type");
    for bad in [
        json!(0),
        json!(4),
        json!("4"),
        json!(2.0),
        json!("02"),
        json!(" 2"),
        json!(null),
        json!("group"),
        json!([2]),
    ] {
        fails(
            read_create_json(json!({ "type": bad })),
            "dialog_create_type",
            "type",
        );
    }
}

#[test]
fn delete_force_values() {
    let del = DialogRoute::Delete {
        ids: vec!["a".into()],
    };
    let force = |v: Value| read(&del, &map(json!({ "force": v })), &RuleOptions::default());
    for flag in [
        json!(1),
        json!("1"),
        json!(true),
        json!("true"),
        json!(0),
        json!("0"),
        json!(false),
        json!("false"),
    ] {
        assert_eq!(
            force(flag).unwrap(),
            DialogRequest::Delete {
                ids: vec!["a".into()],
                force: true
            }
        );
    }
    for bad in [
        json!(2),
        json!("yes"),
        json!(""),
        json!(null),
        json!("01"),
        json!(1.0),
        json!([1]),
        json!({}),
    ] {
        fails(force(bad), "invalid_field", "force");
    }
    // Force in the query string counts the same as in the body.
    let params = params::parse(FORM, Some("force=1"), b"").unwrap();
    assert!(matches!(
        read(&del, &params, &RuleOptions::default()),
        Ok(DialogRequest::Delete { force: true, .. })
    ));
}

#[test]
fn unsupported_route_is_400() {
    let rej = read(
        &DialogRoute::Unsupported,
        &Map::new(),
        &RuleOptions::default(),
    )
    .unwrap_err();
    assert_eq!(
        (rej.status, rej.reason, rej.field),
        (400, "dialog_route_unsupported", None)
    );
}

/// Update documents for property tests, the one strategy of both rule test files: ids drawn from
/// `ids`, text fields from the regexes, `extra` (fields the policy lets through) when asked, and
/// `push_all`/`pull_all` with neither list only when `empty_changes` allows it.
pub(crate) fn update_docs_with(
    ids: std::ops::RangeInclusive<u64>,
    [names, photos, classes]: [&'static str; 3],
    extra: bool,
    empty_changes: bool,
) -> impl Strategy<Value = UpdateDoc> {
    let owners = ids.clone();
    let list = move || prop::option::of(prop::collection::vec(ids.clone(), 1..4));
    let changes = move || {
        (list(), list()).prop_filter_map("one list", move |(o, a)| {
            (empty_changes || o.is_some() || a.is_some()).then_some(IdChanges {
                occupants_ids: o,
                admin_ids: a,
            })
        })
    };
    let extra = if extra {
        prop::option::of(Just(vec!["color".to_string()])).boxed()
    } else {
        Just(None).boxed()
    };
    (
        prop::option::of(names),
        prop::option::of(photos),
        prop::option::of(classes.prop_map(|c| CustomData { class_name: c })),
        prop::option::of(owners),
        prop::option::of(changes()),
        prop::option::of(changes()),
        extra,
    )
        .prop_map(
            |(name, photo, data, owner, push_all, pull_all, extra)| UpdateDoc {
                name,
                photo,
                data,
                owner,
                push_all,
                pull_all,
                extra: extra.unwrap_or_default(),
            },
        )
}

/// An update document as the JSON and form texts must spell it.
fn update_docs() -> impl Strategy<Value = UpdateDoc> {
    update_docs_with(
        1..=u64::MAX,
        ["\\PC{0,200}", "[ -~]{0,10}", "[A-Za-z]{1,10}"],
        false,
        false,
    )
}

fn to_json(doc: &UpdateDoc) -> Value {
    let mut m = Map::new();
    let changes = |c: &IdChanges| {
        let mut m = Map::new();
        if let Some(o) = &c.occupants_ids {
            m.insert("occupants_ids".into(), json!(o));
        }
        if let Some(a) = &c.admin_ids {
            m.insert("admin_ids".into(), json!(a));
        }
        Value::Object(m)
    };
    if let Some(n) = &doc.name {
        m.insert("name".into(), json!(n));
    }
    if let Some(p) = &doc.photo {
        m.insert("photo".into(), json!(p));
    }
    if let Some(d) = &doc.data {
        m.insert(
            "data".into(),
            json!({"class_name": d.class_name, "extra": [1, {"x": null}]}),
        );
    }
    if let Some(o) = doc.owner {
        m.insert("user_id".into(), json!(o));
    }
    if let Some(c) = &doc.push_all {
        m.insert("push_all".into(), changes(c));
    }
    if let Some(c) = &doc.pull_all {
        m.insert("pull_all".into(), changes(c));
    }
    Value::Object(m)
}

fn to_form(doc: &UpdateDoc) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    let list = |ids: &[u64]| {
        ids.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(n) = &doc.name {
        out.append_pair("name", n);
    }
    if let Some(p) = &doc.photo {
        out.append_pair("photo", p);
    }
    if let Some(d) = &doc.data {
        out.append_pair("data[class_name]", &d.class_name);
        out.append_pair("data[beer]", "x");
    }
    if let Some(o) = doc.owner {
        out.append_pair("user_id", &o.to_string());
    }
    for (key, c) in [("push_all", &doc.push_all), ("pull_all", &doc.pull_all)] {
        let Some(c) = c else { continue };
        if let Some(o) = &c.occupants_ids {
            out.append_pair(&format!("{key}[occupants_ids]"), &list(o));
        }
        if let Some(a) = &c.admin_ids {
            for id in a {
                out.append_pair(&format!("{key}[admin_ids][]"), &id.to_string());
            }
        }
    }
    out.finish()
}

proptest! {
    #[test]
    fn update_docs_read_back_from_json_and_form(doc in update_docs()) {
        let r = update_route();
        let json_text = to_json(&doc).to_string();
        prop_assert_eq!(via(JSON, &json_text, &r).unwrap(), DialogRequest::Update(doc.clone()));
        prop_assert_eq!(via(FORM, &to_form(&doc), &r).unwrap(), DialogRequest::Update(doc));
    }

    #[test]
    fn decimal_is_exactly_canonical_positive_u64(s in "[-+0-9a-x .]{0,22}") {
        let canonical = s.parse::<u64>().ok().filter(|n| *n > 0 && n.to_string() == s);
        prop_assert_eq!(decimal(&s), canonical);
    }

    #[test]
    fn read_never_panics(v in any::<u32>().prop_map(|x| x as usize), body in "[a-z_\\[\\]=&0-9,%]{0,60}") {
        let routes = [update_route(), DialogRoute::Create, DialogRoute::Delete { ids: vec!["a".into()] }, DialogRoute::Unsupported];
        if let Ok(params) = params::parse(FORM, None, body.as_bytes()) {
            let _ = read(&routes[v % routes.len()], &params, &RuleOptions::default());
        }
    }
}
