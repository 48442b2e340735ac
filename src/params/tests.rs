//! The parameter parser's tests: what Rails would read, and every ambiguity refused.

use super::*;
use proptest::prelude::*;
use serde_json::json;

const FORM: Option<&str> = Some("application/x-www-form-urlencoded; charset=UTF-8");
const JSON: Option<&str> = Some("application/json; charset=utf-8");

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn form(body: &str) -> Result<Map<String, Value>, ParamsError> {
    parse(FORM, None, body.as_bytes())
}

fn json_body(body: &str) -> Result<Map<String, Value>, ParamsError> {
    parse(JSON, None, body.as_bytes())
}

fn malformed<T: fmt::Debug>(r: Result<T, ParamsError>) -> bool {
    matches!(r, Err(ParamsError::Malformed(_)))
}

// --- SDK vectors (sdk-requests/*.log) ---

#[test]
fn sdk_json_update_bodies() {
    assert_eq!(
        json_body(r#"{"name":"New Year 2020 party"}"#).unwrap(),
        obj(json!({"name": "New Year 2020 party"}))
    );
    assert_eq!(
        json_body(
            r#"{"push_all":{"occupants_ids":[91375295,96705448]},"pull_all":{"occupants_ids":[3]}}"#
        )
        .unwrap(),
        obj(json!({"push_all": {"occupants_ids": [91375295, 96705448]},
                   "pull_all": {"occupants_ids": [3]}}))
    );
    assert_eq!(
        json_body(r#"{"photo":"68123","user_id":96754523,"data":{"class_name":"CoolDialog","beer":"Guinness","bar":"Irish"}}"#)
            .unwrap(),
        obj(json!({"photo": "68123", "user_id": 96754523,
                   "data": {"class_name": "CoolDialog", "beer": "Guinness", "bar": "Irish"}}))
    );
}

#[test]
fn sdk_form_create_body() {
    let got = form(
        "data[beer]=x&data[class_name]=CoolDialog&name=Group&occupants_ids=91375295%2C%2096705448&type=2",
    )
    .unwrap();
    assert_eq!(
        got,
        obj(
            json!({"data": {"beer": "x", "class_name": "CoolDialog"}, "name": "Group",
                   "occupants_ids": "91375295, 96705448", "type": "2"})
        )
    );
    let brief =
        form("data[class_name]=CoolDialog&name=Group&occupants_ids=91375295%2C%2096705448&type=2")
            .unwrap();
    assert_eq!(brief["data"], json!({"class_name": "CoolDialog"}));
}

#[test]
fn sdk_force_delete_body() {
    assert_eq!(form("force=1").unwrap(), obj(json!({"force": "1"})));
}

#[test]
fn sdk_queries_encoded_and_raw() {
    let encoded = parse(
        FORM,
        Some("_id%5Bin%5D=a1%2Cb2&limit=50&skip=0&sort_desc=updated_at"),
        b"",
    )
    .unwrap();
    assert_eq!(
        encoded,
        obj(json!({"_id": {"in": "a1,b2"}, "limit": "50", "skip": "0", "sort_desc": "updated_at"}))
    );
    let raw = parse(FORM, Some("_id[in]=a1%2Cb2&type=2"), b"").unwrap();
    assert_eq!(raw, obj(json!({"_id": {"in": "a1,b2"}, "type": "2"})));
    let plain = parse(FORM, Some("_id=5d75393ba28f9a17e1cb0f9e"), b"").unwrap();
    assert_eq!(plain, obj(json!({"_id": "5d75393ba28f9a17e1cb0f9e"})));
}

// --- bodies and content types ---

#[test]
fn empty_body_has_no_params_whatever_its_type() {
    for ct in [
        None,
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        JSON,
        FORM,
    ] {
        assert_eq!(parse(ct, None, b"").unwrap(), Map::new(), "{ct:?}");
    }
    assert_eq!(
        parse(None, Some("a=1"), b"").unwrap(),
        obj(json!({"a": "1"}))
    );
}

#[test]
fn media_type_is_case_insensitive_and_takes_parameters() {
    for ct in [
        "application/json",
        "Application/JSON",
        " application/json ; charset=UTF-8",
        "application/json;charset=\"utf-8\"",
        "application/json; foo=bar",
    ] {
        assert_eq!(
            parse(Some(ct), None, b"{\"a\":1}").unwrap(),
            obj(json!({"a": 1})),
            "{ct}"
        );
    }
    for ct in [
        "application/x-www-form-urlencoded",
        "APPLICATION/X-WWW-FORM-URLENCODED;charset=utf8",
    ] {
        assert_eq!(
            parse(Some(ct), None, b"a=1").unwrap(),
            obj(json!({"a": "1"})),
            "{ct}"
        );
    }
}

#[test]
fn other_body_types_are_unsupported() {
    for ct in [
        None,
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        Some("text/x-json"),
        Some("application/json, text/plain"),
        Some("application/json; charset=latin1"),
        Some("application/x-www-form-urlencoded; charset=utf-16"),
        Some(""),
    ] {
        assert!(
            matches!(
                parse(ct, None, b"a=1"),
                Err(ParamsError::UnsupportedMediaType(_))
            ),
            "{ct:?}"
        );
    }
    assert_eq!(ParamsError::UnsupportedMediaType("x".into()).status(), 415);
}

// --- JSON ---

#[test]
fn json_keeps_types() {
    let got =
        json_body(r#"{"a":1,"b":-2,"c":1.5,"d":true,"e":null,"f":[1,"x"],"g":{"h":"i"}}"#).unwrap();
    assert_eq!(
        got,
        obj(json!({"a":1,"b":-2,"c":1.5,"d":true,"e":null,"f":[1,"x"],"g":{"h":"i"}}))
    );
}

#[test]
fn json_duplicates_at_any_depth() {
    assert_eq!(
        json_body(r#"{"name":"a","name":"b"}"#),
        Err(ParamsError::Duplicate("name".into()))
    );
    assert_eq!(
        json_body(r#"{"pull_all":{"occupants_ids":[3],"occupants_ids":[4]}}"#),
        Err(ParamsError::Duplicate("pull_all[occupants_ids]".into()))
    );
    assert_eq!(
        json_body(r#"{"a":[{"b":1,"b":2}]}"#),
        Err(ParamsError::Duplicate("a[][b]".into()))
    );
    // Same key in sibling objects is not a duplicate.
    assert!(json_body(r#"{"a":{"x":1},"b":{"x":1}}"#).is_ok());
}

#[test]
fn json_must_be_an_object() {
    for body in ["[]", "1", "\"x\"", "null", "true"] {
        assert!(malformed(json_body(body)), "{body}");
    }
}

#[test]
fn json_syntax_and_encoding_errors_are_malformed() {
    assert!(malformed(json_body("{")));
    assert!(malformed(json_body("{\"a\":1} x")));
    assert!(malformed(json_body("{\"a\":1}{}")));
    assert!(malformed(json_body("\u{feff}{}")));
    assert!(malformed(json_body(r#"{"a":"\ud800"}"#)));
    assert!(malformed(parse(JSON, None, b"{\"a\":\"\xff\"}")));
    assert!(malformed(parse(JSON, None, b"{\"\xc3\x28\":1}")));
    assert!(malformed(json_body("{\"a\":1e999}")));
}

#[test]
fn json_depth_limit() {
    let nest = |n: usize| format!("{}{}", "{\"a\":".repeat(n - 1) + "{}", "}".repeat(n - 1));
    assert!(json_body(&nest(MAX_DEPTH)).is_ok());
    assert!(malformed(json_body(&nest(MAX_DEPTH + 1))));
    let arrays = format!(
        "{{\"a\":{}{}}}",
        "[".repeat(MAX_DEPTH - 1),
        "]".repeat(MAX_DEPTH - 1)
    );
    assert!(json_body(&arrays).is_ok());
    let arrays = format!(
        "{{\"a\":{}{}}}",
        "[".repeat(MAX_DEPTH),
        "]".repeat(MAX_DEPTH)
    );
    assert!(malformed(json_body(&arrays)));
    // Far past serde_json's own recursion limit: still our error, no stack overflow.
    assert!(malformed(json_body(&"[".repeat(100_000))));
}

// --- forms ---

#[test]
fn form_nesting() {
    assert_eq!(form("a[b]=1").unwrap(), obj(json!({"a": {"b": "1"}})));
    assert_eq!(
        form("a[b][]=1&a[b][]=2").unwrap(),
        obj(json!({"a": {"b": ["1", "2"]}}))
    );
    assert_eq!(form("a[]=x").unwrap(), obj(json!({"a": ["x"]})));
    assert_eq!(form("a[]=x&a[]=x").unwrap(), obj(json!({"a": ["x", "x"]})));
    assert_eq!(
        form("a[b]=1&a[c]=2").unwrap(),
        obj(json!({"a": {"b": "1", "c": "2"}}))
    );
    assert_eq!(
        form("a[b][c]=1").unwrap(),
        obj(json!({"a": {"b": {"c": "1"}}}))
    );
}

#[test]
fn form_decoding() {
    assert_eq!(form("a=x+y%20z").unwrap(), obj(json!({"a": "x y z"})));
    assert_eq!(
        form("a%5Bb%5D=%E2%82%AC").unwrap(),
        obj(json!({"a": {"b": "€"}}))
    );
    assert_eq!(form("a=1=2").unwrap(), obj(json!({"a": "1=2"})));
    assert_eq!(form("a=").unwrap(), obj(json!({"a": ""})));
    assert_eq!(form("a").unwrap(), obj(json!({"a": null})));
    assert_eq!(form("a=1&&b=2&").unwrap(), obj(json!({"a": "1", "b": "2"})));
    assert_eq!(form("a=%3B").unwrap(), obj(json!({"a": ";"})));
    assert_eq!(form("a=%26").unwrap(), obj(json!({"a": "&"})));
}

#[test]
fn form_strict_decoding() {
    for body in [
        "a=%",
        "a=%2",
        "a=%zz",
        "a%=1",
        "a=%FF",
        "a=%C3%28",
        "%FF=1",
        "a=%ED%A0%80",
    ] {
        assert!(malformed(form(body)), "{body}");
    }
    assert!(malformed(parse(FORM, None, b"a=\xff")));
}

#[test]
fn form_ambiguous_separators() {
    assert!(malformed(form("name=a;user_id=5")));
    assert!(malformed(parse(FORM, Some("a=1;b=2"), b"")));
    assert!(malformed(form("name=x& user_id=5")));
    assert_eq!(
        form("name=New Year").unwrap(),
        obj(json!({"name": "New Year"}))
    );
}

#[test]
fn form_malformed_brackets() {
    for body in [
        "a[b=1", "a]=1", "[a]=1", "[]=1", "a[b]c=1", "a[b]]=1", "a[[b]]=1", "a[b][=1", "=1",
        "a][=1", "a[][b]=1", "a[][]=1",
    ] {
        assert!(malformed(form(body)), "{body}");
    }
}

#[test]
fn form_depth_limit() {
    let key = |n: usize| format!("a{}=1", "[b]".repeat(n - 1));
    assert!(form(&key(MAX_DEPTH)).is_ok());
    assert!(malformed(form(&key(MAX_DEPTH + 1))));
}

#[test]
fn form_duplicates() {
    let dup = |body: &str| form(body).err();
    assert_eq!(
        dup("name=a&name=b"),
        Some(ParamsError::Duplicate("name".into()))
    );
    assert_eq!(
        dup("name=a&name=a"),
        Some(ParamsError::Duplicate("name".into()))
    );
    assert_eq!(dup("a=1&a[b]=2"), Some(ParamsError::Duplicate("a".into())));
    assert_eq!(dup("a[b]=2&a=1"), Some(ParamsError::Duplicate("a".into())));
    assert_eq!(dup("a=1&a[]=2"), Some(ParamsError::Duplicate("a".into())));
    assert_eq!(dup("a[]=1&a=2"), Some(ParamsError::Duplicate("a".into())));
    assert_eq!(
        dup("a[]=1&a[b]=2"),
        Some(ParamsError::Duplicate("a".into()))
    );
    assert_eq!(
        dup("a[b]=1&a[]=2"),
        Some(ParamsError::Duplicate("a".into()))
    );
    assert_eq!(
        dup("a[b]=1&a[b]=2"),
        Some(ParamsError::Duplicate("a[b]".into()))
    );
    assert_eq!(
        dup("a[b]=1&a[b][]=2"),
        Some(ParamsError::Duplicate("a[b]".into()))
    );
    assert_eq!(dup("a&a"), Some(ParamsError::Duplicate("a".into())));
    assert_eq!(
        dup("push_all[occupants_ids]=1&push_all%5Boccupants_ids%5D=2"),
        Some(ParamsError::Duplicate("push_all[occupants_ids]".into()))
    );
}

// --- query merge and _method ---

#[test]
fn query_merges_into_body() {
    let got = parse(JSON, Some("b=2&c[d]=3"), br#"{"a":1}"#).unwrap();
    assert_eq!(got, obj(json!({"a": 1, "b": "2", "c": {"d": "3"}})));
    let got = parse(FORM, Some("force=1"), b"").unwrap();
    assert_eq!(got, obj(json!({"force": "1"})));
}

#[test]
fn key_in_query_and_body_is_duplicate() {
    assert_eq!(
        parse(JSON, Some("name=b"), br#"{"name":"a"}"#),
        Err(ParamsError::Duplicate("name".into()))
    );
    // Even where Rails would merge the hashes: the top-level key is in both.
    assert_eq!(
        parse(
            FORM,
            Some("push_all[admin_ids]=1"),
            b"push_all[occupants_ids]=2"
        ),
        Err(ParamsError::Duplicate("push_all".into()))
    );
    assert_eq!(
        parse(FORM, Some("user_id=5"), b"user_id=6"),
        Err(ParamsError::Duplicate("user_id".into()))
    );
    assert_eq!(
        parse(FORM, Some("a=1&a=2"), b""),
        Err(ParamsError::Duplicate("a".into()))
    );
}

#[test]
fn method_override_is_refused() {
    let refused = |ct, q, b: &str| parse(ct, q, b.as_bytes()) == Err(ParamsError::MethodOverride);
    assert!(refused(FORM, None, "_method=PUT"));
    assert!(refused(FORM, None, "%5Fmethod=PUT"));
    assert!(refused(FORM, None, "_method[x]=PUT"));
    assert!(refused(FORM, Some("_method=DELETE"), ""));
    assert!(refused(JSON, None, r#"{"_method":"PUT"}"#));
    assert!(refused(JSON, Some("_method=PUT"), r#"{"name":"x"}"#));
    // Only the top level counts.
    assert!(form("a[_method]=PUT").is_ok());
    assert_eq!(ParamsError::MethodOverride.status(), 400);
}

// --- properties ---

fn content_types() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_string())),
        Just(Some(
            "application/x-www-form-urlencoded; charset=UTF-8".to_string()
        )),
        ".{0,40}".prop_map(Some),
    ]
}

/// A tree of form parameters and the form text that spells it.
fn form_tree() -> impl Strategy<Value = Map<String, Value>> {
    let leaf = prop_oneof![
        "[ -~é€]{0,8}".prop_map(Value::String),
        prop::collection::vec("[ -~é€]{0,8}".prop_map(Value::String), 1..4).prop_map(Value::Array),
    ];
    let tree = leaf.prop_recursive(4, 32, 4, |inner| {
        prop::collection::btree_map("[a-z_]{1,6}", inner, 1..4)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    });
    prop::collection::btree_map("[a-z_]{1,6}", tree, 0..5).prop_map(|m| {
        let mut m: Map<String, Value> = m.into_iter().collect();
        m.remove("_method");
        m
    })
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn spell(prefix: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(format!("{}={}", encode(prefix), encode(s))),
        Value::Array(items) => {
            for item in items {
                spell(&format!("{prefix}[]"), item, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                spell(&format!("{prefix}[{k}]"), v, out);
            }
        }
        _ => unreachable!(),
    }
}

proptest! {
    #[test]
    fn never_panics(ct in content_types(), query in proptest::option::of(".{0,60}"), body in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse(ct.as_deref(), query.as_deref(), &body);
    }

    #[test]
    fn never_panics_on_formish_text(body in "[a-z\\[\\]%=&+;_ 0-9A-F]{0,80}") {
        let _ = parse(FORM, Some(&body), body.as_bytes());
    }

    #[test]
    fn never_panics_on_jsonish_text(body in "[{}\\[\\]\",:a-z0-9 ]{0,80}") {
        let _ = parse(JSON, None, body.as_bytes());
    }

    #[test]
    fn form_round_trip(tree in form_tree()) {
        let mut pairs = Vec::new();
        for (k, v) in &tree {
            spell(k, v, &mut pairs);
        }
        let text = pairs.join("&");
        prop_assert_eq!(parse(FORM, None, text.as_bytes()).unwrap(), tree.clone());
        prop_assert_eq!(parse(None, Some(&text), b"").unwrap(), tree);
    }

    #[test]
    fn json_round_trip(tree in form_tree()) {
        let text = serde_json::to_string(&tree).unwrap();
        prop_assert_eq!(parse(JSON, None, text.as_bytes()).unwrap(), tree);
    }
}
