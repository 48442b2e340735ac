//! The request reader against the Rack 2.2 / Rails facts it stands for: the query's separators,
//! key names, the last value winning, the query winning over the body, untyped POST bodies,
//! multipart, JSON, `Rack::MethodOverride`, and QuickBlox's case-folded routes.

use super::*;

use http::header::{HeaderName, HeaderValue};

use crate::sandbox::rack::{finish, parse_nested_query, read, Env};
use crate::sandbox::routing::{fold, route, Route, Routed};

const BOUNDARY: &str = "----qbgate7MA4YWxkTrZu0gW";

/// What the reader makes of a request.
fn env(method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Env {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    read(&method, &uri.parse().unwrap(), &map, body)
}

fn params(env: &Env) -> Value {
    Value::Object(env.params.clone().unwrap_or_else(|e| panic!("400: {e}")))
}

/// A query string as Rack reads one (`&` and `;`), or a form body (`&` alone).
fn query(qs: &str) -> Result<Value, String> {
    nested(qs, b"&;")
}

fn nested(qs: &str, separators: &[u8]) -> Result<Value, String> {
    parse_nested_query(qs.as_bytes(), separators)
        .and_then(finish)
        .map(Value::Object)
}

/// A multipart/form-data body of `(head, content)` parts.
fn multipart(parts: &[(&str, &str)]) -> String {
    let mut body = String::from("preamble, skipped\r\n");
    for (head, content) in parts {
        body.push_str(&format!("--{BOUNDARY}\r\n{head}\r\n\r\n{content}\r\n"));
    }
    body.push_str(&format!("--{BOUNDARY}--\r\n"));
    body
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

#[test]
fn query_splits_on_ampersand_and_semicolon_a_form_on_ampersand_only() {
    assert_eq!(
        query("a=1;b=2&c=3"),
        Ok(json!({"a": "1", "b": "2", "c": "3"}))
    );
    // The separator takes the spaces after it.
    assert_eq!(
        query("a=1;  b=2& c"),
        Ok(json!({"a": "1", "b": "2", "c": null}))
    );
    assert_eq!(
        nested("a=1;b=2&c=3", b"&"),
        Ok(json!({"a": "1;b=2", "c": "3"}))
    );
    let form = env(
        "PUT",
        "/chat/Dialog?q=1;r=2",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"a=1;b=2",
    );
    assert_eq!(params(&form), json!({"q": "1", "r": "2", "a": "1;b=2"}));
}

#[test]
fn key_names_and_nesting_follow_normalize_params() {
    for key in ["x", "[x]", "x]", "]x", "[[x]]", "x]]"] {
        assert_eq!(query(&format!("{key}=1")), Ok(json!({"x": "1"})), "{key}");
    }
    // Empty names are skipped; `x[` keeps its name whole.
    assert_eq!(query("=1&[]=2&[=3&x[=4"), Ok(json!({"x[": "4"})));
    assert_eq!(
        query("a[b]=1&a[c][d]=2&e[]=3&e[]=4&f[][g]=5&f[][h]=6&f[][g]=7"),
        Ok(json!({"a": {"b": "1", "c": {"d": "2"}}, "e": ["3", "4"],
            "f": [{"g": "5", "h": "6"}, {"g": "7"}]}))
    );
    // `x]y` names the key `y` inside `x`.
    assert_eq!(query("x]y=1"), Ok(json!({"x": {"y": "1"}})));
    // A name without `=` has a nil value; Rails then drops the nils of arrays.
    assert_eq!(query("a&b[]&b[]=1"), Ok(json!({"a": null, "b": ["1"]})));
}

#[test]
fn the_last_scalar_wins_and_a_clash_of_types_is_refused() {
    assert_eq!(query("a=1&a=2&a=3"), Ok(json!({"a": "3"})));
    assert_eq!(query("a[b]=1&a[b]=2"), Ok(json!({"a": {"b": "2"}})));
    // A scalar overwrites an array or a hash...
    assert_eq!(query("a[]=1&a=2"), Ok(json!({"a": "2"})));
    // ...but an array or a hash cannot extend a scalar.
    assert_eq!(
        query("a=1&a[]=2"),
        Err("expected Array (got String) for param `a'".to_owned())
    );
    assert_eq!(
        query("a=1&a[b]=2"),
        Err("expected Hash (got String) for param `a'".to_owned())
    );
    // A nil value is no scalar: `||=` replaces it.
    assert_eq!(query("a&a[]=1"), Ok(json!({"a": ["1"]})));
    let body = env(
        "PUT",
        "/chat/Dialog",
        &[("content-type", "application/x-www-form-urlencoded")],
        b"name=a&name=b",
    );
    assert_eq!(params(&body), json!({"name": "b"}));
}

#[test]
fn unescaping_is_rack_s() {
    assert_eq!(
        query("a+b=c+d%2B%26&%5Bx%5D=%C3%A9"),
        Ok(json!({"a b": "c d+&", "x": "é"}))
    );
    for bad in ["a=%", "a=%zz", "a=%4", "%=1"] {
        let err = query(bad).unwrap_err();
        assert!(err.starts_with("invalid %-encoding ("), "{bad}: {err}");
    }
    let refused = env("GET", "/chat/Dialog?name=%E9", &[], b"");
    assert_eq!(
        refused.params.unwrap_err(),
        "Invalid query parameters: Invalid encoding for parameter: \u{FFFD}"
    );
    let refused = env("GET", "/chat/Dialog?name=%zz", &[], b"");
    assert_eq!(
        refused.params.unwrap_err(),
        "Invalid query parameters: invalid %-encoding (%zz)"
    );
    let body = env("POST", "/chat/Dialog", &[], b"a=%zz");
    assert_eq!(
        body.params.unwrap_err(),
        "Invalid request parameters: invalid %-encoding (%zz)"
    );
}

#[test]
fn the_query_wins_over_the_body_key_by_key() {
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let merged = env(
        "PUT",
        "/chat/Dialog?name=Query&data[b]=2",
        &form,
        b"name=Body&photo=1&data[a]=1",
    );
    // Rails merges shallowly: the query's `data` replaces the body's whole.
    assert_eq!(
        params(&merged),
        json!({"name": "Query", "photo": "1", "data": {"b": "2"}})
    );
    let json_body = env(
        "PUT",
        "/chat/Dialog?name=Query",
        &[("content-type", "application/json")],
        br#"{"name":"Body","type":2}"#,
    );
    assert_eq!(params(&json_body), json!({"name": "Query", "type": 2}));
    // Then the path parameters.
    let path = env("PUT", "/chat/Dialog/abc%2Cdef.json?id=q&format=q", &[], b"");
    assert_eq!(params(&path), json!({"id": "abc,def", "format": "json"}));
}

#[test]
fn an_untyped_post_body_is_a_form_and_other_untyped_bodies_are_ignored() {
    let post = env("POST", "/chat/Dialog", &[], b"type=2&name=x\0");
    // The trailing NUL goes, as Rack drops Safari's.
    assert_eq!(params(&post), json!({"type": "2", "name": "x"}));
    let empty_type = env("POST", "/chat/Dialog", &[("content-type", "")], b"type=2");
    assert_eq!(params(&empty_type), json!({"type": "2"}));
    for method in ["PUT", "DELETE", "GET", "PATCH"] {
        let other = env(method, "/chat/Dialog", &[], b"type=2");
        assert_eq!(params(&other), json!({}), "{method}");
    }
    for ignored in [
        "text/plain",
        "application/xml",
        "application/octet-stream",
        ";a=b",
    ] {
        let typed = env(
            "POST",
            "/chat/Dialog",
            &[("content-type", ignored)],
            b"type=2",
        );
        assert_eq!(params(&typed), json!({}), "{ignored}");
    }
    // The media type ends at `;` or `,`, in any letter case; a repeated header joins with `, `.
    for form in [
        "Application/X-WWW-Form-Urlencoded ; charset=UTF-8",
        "application/x-www-form-urlencoded, text/plain",
    ] {
        let typed = env("PUT", "/chat/Dialog", &[("content-type", form)], b"type=2");
        assert_eq!(params(&typed), json!({"type": "2"}), "{form}");
    }
    let twice = env(
        "PUT",
        "/chat/Dialog",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-type", "application/json"),
        ],
        b"type=2",
    );
    assert_eq!(params(&twice), json!({"type": "2"}));
}

#[test]
fn multipart_parts_with_quoted_and_unquoted_names() {
    let body = multipart(&[
        (r#"Content-Disposition: form-data; name="name""#, "Quoted"),
        ("Content-Disposition: form-data; name=type", "2"),
        (
            "content-disposition: form-data; name=occupants_ids[]\r\nContent-Type: text/plain",
            "5",
        ),
        (r#"Content-Disposition: form-data; name="occupants_ids[]""#, "6"),
        (r#"Content-Disposition: form-data; name="data[a\"b]""#, "esc"),
        ("Content-ID: <plain>", "by id"),
        (
            "Content-Disposition: form-data; name=\"photo\"; filename=\"C:\\\\dir\\\\cat.png\"\r\nContent-Type: image/png",
            "\u{89}PNG",
        ),
        (r#"Content-Disposition: form-data; name="empty"; filename="""#, "x"),
        ("Content-Disposition: form-data", "unnamed"),
    ]);
    let parsed = env(
        "PUT",
        "/chat/Dialog",
        &[("content-type", &multipart_type())],
        body.as_bytes(),
    );
    let read = params(&parsed);
    assert_eq!(read["name"], "Quoted");
    assert_eq!(read["type"], "2");
    assert_eq!(read["occupants_ids"], json!(["5", "6"]));
    assert_eq!(read["data"], json!({"a\"b": "esc"}));
    assert_eq!(read["<plain>"], "by id");
    assert_eq!(read["photo"]["filename"], "cat.png");
    assert_eq!(read["photo"]["type"], "image/png");
    assert_eq!(read["text/plain"], json!(["unnamed"]));
    assert!(read.get("empty").is_none());

    // multipart/mixed and multipart/related read the same; a body cut short is ignored (Rails
    // rescues Rack's EOFError and keeps the query); no boundary reads the body as a form.
    let mixed = format!("multipart/mixed; boundary=\"{BOUNDARY}\"");
    let read_mixed = env(
        "PUT",
        "/chat/Dialog",
        &[("content-type", &mixed)],
        body.as_bytes(),
    );
    assert_eq!(read_mixed.params, parsed.params);
    let cut = &body[..body.len() - 12];
    let short = env(
        "PUT",
        "/chat/Dialog?q=1",
        &[("content-type", &multipart_type())],
        cut.as_bytes(),
    );
    assert_eq!(params(&short), json!({"q": "1"}));
    let no_boundary = env(
        "PUT",
        "/chat/Dialog",
        &[("content-type", "multipart/form-data")],
        b"name=plain",
    );
    assert_eq!(params(&no_boundary), json!({"name": "plain"}));
}

#[test]
fn method_override_applies_to_post_only_from_the_form_or_the_header() {
    let form = ("content-type", "application/x-www-form-urlencoded");
    let method = |m: &str, uri: &str, headers: &[(&str, &str)], body: &str| {
        env(m, uri, headers, body.as_bytes()).method
    };
    assert_eq!(
        method("POST", "/chat/Dialog", &[form], "_method=put"),
        Method::PUT
    );
    // Untyped POST bodies are forms, so their `_method` counts.
    assert_eq!(
        method("POST", "/chat/Dialog", &[], "_method=delete"),
        Method::DELETE
    );
    let multipart_body =
        multipart(&[(r#"Content-Disposition: form-data; name="_method""#, "PATCH")]);
    let multipart_type = multipart_type();
    assert_eq!(
        method(
            "POST",
            "/chat/Dialog",
            &[("content-type", &multipart_type)],
            &multipart_body
        ),
        Method::PATCH
    );
    // The header in both spellings Puma folds to HTTP_X_HTTP_METHOD_OVERRIDE.
    for name in [
        "X-HTTP-Method-Override",
        "x_http_method_override",
        "X-Http_Method-OVERRIDE",
    ] {
        assert_eq!(
            method("POST", "/chat/Dialog", &[(name, "put")], ""),
            Method::PUT,
            "{name}"
        );
        for other in ["GET", "PUT", "DELETE"] {
            assert_eq!(
                method(
                    other,
                    "/chat/Dialog",
                    &[(name, "PATCH"), form],
                    "_method=POST"
                ),
                other,
                "{name} on {other}"
            );
        }
    }
    // Upcased as Ruby upcases, Unicode included: `ı` is `I`.
    assert_eq!(
        method("POST", "/chat/Dialog", &[form], "_method=l%C4%B1nk"),
        "LINK"
    );
    assert_eq!(
        method("POST", "/chat/Dialog", &[form], "_method=unlink"),
        "UNLINK"
    );
    // The body's `_method` wins over the header; only a nil one lets the header speak.
    let header = ("x-http-method-override", "DELETE");
    assert_eq!(
        method("POST", "/chat/Dialog", &[form, header], "_method=PUT"),
        Method::PUT
    );
    assert_eq!(
        method("POST", "/chat/Dialog", &[form, header], "_method"),
        Method::DELETE
    );
    assert_eq!(
        method("POST", "/chat/Dialog", &[form, header], "_method="),
        Method::POST
    );
    // An unreadable body gives no `_method`: the header speaks.
    assert_eq!(
        method("POST", "/chat/Dialog", &[form, header], "a=%zz"),
        Method::DELETE
    );
    // Not honoured: the query's `_method`, a JSON body's, an unknown method, two headers.
    assert_eq!(
        method("POST", "/chat/Dialog?_method=PUT", &[form], ""),
        Method::POST
    );
    let json_type = ("content-type", "application/json");
    assert_eq!(
        method("POST", "/chat/Dialog", &[json_type], r#"{"_method":"PUT"}"#),
        Method::POST
    );
    for value in ["TRACE", "CONNECT", "FOO", "PUT "] {
        assert_eq!(
            method(
                "POST",
                "/chat/Dialog",
                &[("x-http-method-override", value)],
                ""
            ),
            Method::POST
        );
    }
    assert_eq!(
        method("POST", "/chat/Dialog", &[form], "_method[]=PUT"),
        Method::POST
    );
    let both = [
        ("x-http-method-override", "PUT"),
        ("x_http_method_override", "PUT"),
    ];
    assert_eq!(method("POST", "/chat/Dialog", &both, ""), Method::POST);
}

#[test]
fn json_for_the_three_json_types_only() {
    for json_type in [
        "application/json",
        "text/x-json",
        "application/jsonrequest",
        "Application/JSON; charset=utf-8",
    ] {
        let parsed = env(
            "PUT",
            "/chat/Dialog",
            &[("content-type", json_type)],
            br#"{"name":"x","ids":[1,null,2]}"#,
        );
        // Rails' deep munge drops the nils of arrays.
        assert_eq!(
            params(&parsed),
            json!({"name": "x", "ids": [1, 2]}),
            "{json_type}"
        );
    }
    for other in [
        "application/vnd+json",
        "application/vnd.api+json",
        "application/json-patch+json",
        "text/json",
    ] {
        let ignored = env(
            "PUT",
            "/chat/Dialog",
            &[("content-type", other)],
            br#"{"name":"x"}"#,
        );
        assert_eq!(params(&ignored), json!({}), "{other}");
    }
    let json_type = [("content-type", "application/json")];
    let wrapped = env("PUT", "/chat/Dialog", &json_type, b"[1,2]");
    assert_eq!(params(&wrapped), json!({"_json": [1, 2]}));
    let scalar = env("PUT", "/chat/Dialog", &json_type, b"\"x\"");
    assert_eq!(params(&scalar), json!({"_json": "x"}));
    // An empty body is no JSON document: Rack's (empty) reading stands.
    let empty = env("POST", "/chat/Dialog", &json_type, b"");
    assert_eq!(params(&empty), json!({}));
    let malformed = env("PUT", "/chat/Dialog", &json_type, b"{");
    assert_eq!(
        malformed.params.unwrap_err(),
        "Error occurred while parsing request parameters"
    );
    // Duplicate keys: the last wins, as in Ruby's parser.
    let twice = env(
        "PUT",
        "/chat/Dialog",
        &json_type,
        br#"{"name":"a","name":"b"}"#,
    );
    assert_eq!(params(&twice), json!({"name": "b"}));
}

#[test]
fn routes_fold_case_and_decode_only_the_id() {
    let routed = |path: &str| route(path);
    let dialog = |id: &str, format: Option<&str>| Routed {
        route: Route::Dialog(id.to_owned()),
        format: format.map(str::to_owned),
    };
    assert_eq!(
        routed("/chat/d%C4%B1alog/abc.json"),
        dialog("abc", Some("json"))
    );
    assert_eq!(routed("/CHAT/D%C4%B0ALOG/abc"), dialog("abc", None));
    assert_eq!(
        routed("/chat/Dialog/a%2Cb%2c%E2%82%AC.xml"),
        dialog("a,b,€", Some("xml"))
    );
    // Journey decodes `%XX` alone: a stray `%` and `+` stay.
    assert_eq!(routed("/chat/Dialog/a%zz+b"), dialog("a%zz+b", None));
    assert_eq!(routed("//chat//Dialog/x/"), dialog("x", None));
    assert_eq!(
        routed("/chat/Dialog/%FF.json").route,
        Route::BadPath(
            "Invalid path parameters: Invalid encoding for parameter: \u{FFFD}".to_owned()
        )
    );
    for session in [
        "/session.json",
        "/SESSION",
        "/%C5%BFession.json",
        "/Session.XML",
    ] {
        assert_eq!(routed(session).route, Route::Session, "{session}");
    }
    // The fold table, and what is not in it.
    for (c, folded) in [
        ('\u{0131}', 'i'),
        ('\u{0130}', 'i'),
        ('\u{017F}', 's'),
        ('\u{212A}', 'k'),
        ('D', 'd'),
    ] {
        assert_eq!(fold(c), folded, "{c}");
    }
    for c in ['\u{212B}', 'é', 'ß'] {
        assert_eq!(fold(c), c);
    }
    for unknown in [
        "/chat/%44ialog.json",
        "/chat/%64ialog",
        "/chat/dialog%2Ejson",
        "/chat/Dialog.json.xml",
        "/chat/Dialog/a.b.json",
        "/chat/Dialog/.json",
        "/chat/Dialog.",
        "/chat/Dialogs",
        "/chat/di%C3%A5log",
        "/chat/Messages.json",
        "/chat/Message/a.b.json",
        "/sessions.json",
        "/",
    ] {
        assert_eq!(routed(unknown).route, Route::Unknown, "{unknown}");
    }
}

#[tokio::test]
async fn the_unicode_folded_dialog_route_reaches_the_update() {
    let (sandbox, addr) = start().await;
    let headers = with(USER_123, JSON);
    let path = format!("/chat/d%C4%B1alog/{GROUP_ID}.json");
    let answer = call(addr, "PUT", &path, &headers, r#"{"name":"Folded"}"#).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.json);
    assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "Folded");
    let listed = call(addr, "GET", "/CHAT/D%C4%B0ALOG.json", USER_123, "").await;
    assert_eq!(listed.json["total_entries"], 3);
    assert_eq!(sandbox.lookups(), 1);
}

#[tokio::test]
async fn an_overridden_post_is_routed_as_its_override() {
    let (sandbox, addr) = start().await;
    let path = format!("/chat/Dialog/{GROUP_ID}.json");
    let form = with(USER_123, FORM);
    let put = call(addr, "POST", &path, &form, "_method=PUT&name=Overridden").await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.json);
    assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "Overridden");
    // Recorded as sent; counted as the lookup it became.
    assert_eq!(sandbox.received()[0].method, Method::POST);
    let header = with(USER_123, ("x_http_method_override", "GET"));
    let list = call(addr, "POST", "/chat/Dialog.json", &header, "").await;
    assert_eq!(list.json["total_entries"], 3);
    assert_eq!(sandbox.lookups(), 1);
    let deleted = call(
        addr,
        "POST",
        &path,
        &with(&form, ("x-http-method-override", "DELETE")),
        "force=1",
    )
    .await;
    assert_eq!(
        deleted.json["SuccessfullyDeleted"]["ids"],
        json!([GROUP_ID])
    );
    assert_eq!(sandbox.dialog(GROUP_ID), None);
}

#[tokio::test]
async fn a_multipart_post_creates_a_dialog() {
    let (sandbox, addr) = start().await;
    let body = multipart(&[
        ("Content-Disposition: form-data; name=type", "2"),
        (r#"Content-Disposition: form-data; name="name""#, "Uploaded"),
        (
            r#"Content-Disposition: form-data; name="occupants_ids""#,
            "7,8",
        ),
        (
            r#"Content-Disposition: form-data; name="data[kind]""#,
            "multipart",
        ),
    ]);
    let content_type = multipart_type();
    let headers = with(USER_123, ("content-type", &content_type));
    let created = call(addr, "POST", "/chat/Dialog.json", &headers, &body).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.json);
    assert_eq!(created.json["name"], "Uploaded");
    assert_eq!(occupants(&created.json), [RECIPE_USER, 7, 8]);
    assert_eq!(created.json["data"], json!({"kind": "multipart"}));
    let id = created.json["_id"].as_str().unwrap();
    assert_eq!(sandbox.dialog(id).unwrap()["name"], "Uploaded");
}
