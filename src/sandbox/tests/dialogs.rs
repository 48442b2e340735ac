//! The dialog endpoints and who may see what: authentication, sessions, listing, creating,
//! updating and deleting, each as QuickBlox answers.

use super::*;

#[tokio::test]
async fn authentication_outcomes() {
    let (_sandbox, addr) = start().await;
    let path = "/chat/Dialog.json";
    let none = call(addr, "GET", path, &[], "").await;
    assert_eq!(
        (none.status, base(&none)),
        (StatusCode::UNAUTHORIZED, "Token is required")
    );
    let wrong = call(addr, "GET", path, &[("authorization", "ApiKey nope")], "").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let bearer = call(
        addr,
        "GET",
        path,
        &[("authorization", "Bearer upstream-key")],
        "",
    )
    .await;
    assert_eq!(bearer.status, StatusCode::UNAUTHORIZED);
    let both = with(APP, ("qb-token", GROUP_TOKEN));
    let both = call(addr, "GET", path, &both, "").await;
    assert_eq!(
        (both.status, base(&both)),
        (
            StatusCode::BAD_REQUEST,
            "must be used either QB-Token or Authorization"
        )
    );
    let unknown = call(addr, "GET", path, &[("qb-token", "nope")], "").await;
    assert_eq!(
        (unknown.status, base(&unknown)),
        (StatusCode::UNAUTHORIZED, "Required session does not exist")
    );
    for bad in ["undefined", "0", "-1", "+5", "1e3", ""] {
        let headers = with(APP, ("on-behalf-of", bad));
        let answer = call(addr, "GET", path, &headers, "").await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "On-Behalf-Of {bad:?}"
        );
    }
    let twice = with(USER_123, ("on-behalf-of", "123"));
    assert_eq!(
        call(addr, "GET", path, &twice, "").await.status,
        StatusCode::BAD_REQUEST
    );

    // Without a configured key, any ApiKey is the application.
    let (_open, open_addr) = start_with(Sandbox::new(None)).await;
    let any = call(
        open_addr,
        "GET",
        path,
        &[("authorization", "ApiKey whatever")],
        "",
    )
    .await;
    assert_eq!(any.status, StatusCode::OK);
    assert_eq!(any.json["total_entries"], 3);
}

#[tokio::test]
async fn session_lookup_names_the_user() {
    let (sandbox, addr) = start().await;
    let answer = call(
        addr,
        "GET",
        "/session.json",
        &[("qb-token", GROUP_TOKEN)],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json["session"]["user_id"], RECIPE_USER);
    assert_eq!(answer.json["session"]["token"], GROUP_TOKEN);
    let data = call(
        addr,
        "GET",
        "/session.json",
        &[("qb-token", DATA_TOKEN)],
        "",
    )
    .await;
    assert_eq!(data.json["session"]["user_id"], OCCUPANT);

    sandbox.add_session("fresh", OUTSIDER);
    let fresh = call(addr, "GET", "/session", &[("qb-token", "fresh")], "").await;
    assert_eq!(fresh.json["session"]["user_id"], OUTSIDER);

    let keyed = call(addr, "GET", "/session.json", USER_123, "").await;
    assert_eq!(keyed.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn listing_shows_what_the_actor_may_see() {
    let (_sandbox, addr) = start().await;
    let path = "/chat/Dialog.json";
    let app = call(addr, "GET", path, APP, "").await;
    assert_eq!(item_ids(&app), [PUBLIC_ID, GROUP_ID, PRIVATE_ID]);
    assert_eq!(app.json["total_entries"], 3);
    assert_eq!(
        (app.json["skip"].clone(), app.json["limit"].clone()),
        (json!(0), json!(100))
    );

    let cases: [(u64, &[&str]); 5] = [
        (RECIPE_USER, &[PUBLIC_ID, GROUP_ID, PRIVATE_ID]),
        (OWNER, &[PUBLIC_ID, GROUP_ID]),
        (OCCUPANT, &[PUBLIC_ID, GROUP_ID, PRIVATE_ID]),
        (OTHER_OCCUPANT, &[PUBLIC_ID, GROUP_ID]),
        (OUTSIDER, &[PUBLIC_ID]),
    ];
    for (user, expected) in cases {
        let user_text = user.to_string();
        let headers = with(APP, ("on-behalf-of", &user_text));
        let answer = call(addr, "GET", path, &headers, "").await;
        assert_eq!(item_ids(&answer), expected, "user {user}");
    }
    let by_token = call(addr, "GET", path, &[("qb-token", GROUP_TOKEN)], "").await;
    assert_eq!(item_ids(&by_token), [PUBLIC_ID, GROUP_ID, PRIVATE_ID]);
}

#[tokio::test]
async fn listing_filters_as_the_sdk_sends_them() {
    let (sandbox, addr) = start().await;
    let get = async |uri: String| call(addr, "GET", &uri, USER_123, "").await;

    let one = get(format!("/chat/Dialog.json?_id={GROUP_ID}")).await;
    assert_eq!(item_ids(&one), [GROUP_ID]);
    let encoded = get(format!(
        "/chat/Dialog.json?_id%5Bin%5D={GROUP_ID}%2C{PRIVATE_ID}&limit=50&skip=0&sort_desc=updated_at"
    ))
    .await;
    assert_eq!(item_ids(&encoded), [GROUP_ID, PRIVATE_ID]);
    assert_eq!(encoded.json["limit"], 50);
    let raw = get(format!(
        "/chat/Dialog.json?_id[in]={GROUP_ID}%2C{PRIVATE_ID}&type=2"
    ))
    .await;
    assert_eq!(item_ids(&raw), [GROUP_ID]);
    let none = get("/chat/Dialog.json?_id[in]=a1%2Cb2&type=2".to_owned()).await;
    assert_eq!(
        (none.json["total_entries"].clone(), item_ids(&none).len()),
        (json!(0), 0)
    );
    let page = get("/chat/Dialog.json?limit=1&skip=1".to_owned()).await;
    assert_eq!(item_ids(&page), [GROUP_ID]);
    assert_eq!(page.json["total_entries"], 3);
    assert_eq!(page.json["skip"], 1);
    // Not a lookup: the create endpoint shares the path.
    call(
        addr,
        "POST",
        "/chat/Dialog.json",
        USER_123,
        r#"{"type":1,"name":"x"}"#,
    )
    .await;
    assert_eq!(sandbox.lookups(), 5);
}

#[tokio::test]
async fn create_from_sdk_form_and_from_json() {
    let (sandbox, addr) = start().await;
    let owner = with(APP, ("on-behalf-of", "96753878"));
    let form = with(&owner, FORM);
    let sdk_body = "data[beer]=x&data[class_name]=CoolDialog&name=Group&occupants_ids=91375295%2C%2096705448&type=2";
    let created = call(addr, "POST", "/chat/Dialog.json", &form, sdk_body).await;
    assert_eq!(created.status, StatusCode::OK);
    let d = &created.json;
    assert_eq!(d["type"], 2);
    assert_eq!(d["name"], "Group");
    assert_eq!(d["user_id"], OWNER);
    assert_eq!(occupants(d), [OWNER, 91_375_295, 96_705_448]);
    assert_eq!(d["data"], json!({"beer": "x", "class_name": "CoolDialog"}));
    let id = d["_id"].as_str().unwrap();
    assert_eq!(id.len(), 24);
    assert_eq!(sandbox.dialog(id).as_ref(), Some(d));

    let json_headers = with(USER_123, JSON);
    let private = call(
        addr,
        "POST",
        "/chat/Dialog.json",
        &json_headers,
        &format!(r#"{{"type":3,"occupants_ids":[{OUTSIDER}]}}"#),
    )
    .await;
    assert_eq!(occupants(&private.json), [RECIPE_USER, OUTSIDER]);
    assert_eq!(private.json["xmpp_room_jid"], Value::Null);
    let crowded = call(
        addr,
        "POST",
        "/chat/Dialog.json",
        &json_headers,
        r#"{"type":3,"occupants_ids":"5, 6"}"#,
    )
    .await;
    assert_eq!(
        (crowded.status, base(&crowded)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "Too many occupants for Private Dialog."
        )
    );
    let public = call(
        addr,
        "POST",
        "/chat/Dialog.json",
        &json_headers,
        r#"{"type":"1","name":"Lobby","occupants_ids":[5]}"#,
    )
    .await;
    assert_eq!(
        (public.json["type"].clone(), occupants(&public.json)),
        (json!(1), vec![])
    );
    assert_eq!(public.json["user_id"], RECIPE_USER);

    // The application acts for nobody: the first occupant becomes the owner.
    let by_app = call(
        addr,
        "POST",
        "/chat/Dialog.json",
        &with(APP, FORM),
        "type=2&name=App&occupants_ids=7,8",
    )
    .await;
    assert_eq!(
        (by_app.json["user_id"].clone(), occupants(&by_app.json)),
        (json!(7), vec![7, 8])
    );

    let blank = call(
        addr,
        "POST",
        "/chat/Dialog.json",
        &json_headers,
        r#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(blank.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(blank.json, json!({"errors": {"type": ["can't be blank"]}}));
    assert_eq!(sandbox.dialog("nope"), None);
}

/// Every distinct recipe of the "Update dialog" reference, in the reference's order, with
/// each of its two ways to authenticate: the documented result each time.
#[tokio::test]
async fn update_recipes_reach_the_documented_result() {
    let recipe_auth: [(Headers, Headers); 2] = [
        (&[("qb-token", GROUP_TOKEN)], &[("qb-token", DATA_TOKEN)]),
        (USER_123, USER_123),
    ];
    for (group_auth, data_auth) in recipe_auth {
        let (sandbox, addr) = start().await;
        let put = async |id: &str, auth: &[(&str, &str)], body: &str| {
            let headers = with(auth, ("content-type", "application/json"));
            let path = format!("/chat/Dialog/{id}.json");
            let answer = call(addr, "PUT", &path, &headers, body).await;
            assert_eq!(answer.status, StatusCode::OK, "{body}: {}", answer.json);
            answer.json
        };
        let named = put(GROUP_ID, group_auth, r#"{"name":"New Year 2020 party"}"#).await;
        assert_eq!(named["name"], "New Year 2020 party");
        assert_ne!(named["updated_at"], "2019-09-08T19:36:54Z");
        let added = put(
            GROUP_ID,
            group_auth,
            r#"{"push_all":{"occupants_ids":[91375295,96705448]}}"#,
        )
        .await;
        assert!(occupants(&added).ends_with(&ADDED));
        let data = put(PRIVATE_ID, data_auth, r#"{"data":{"class_name":"CoolDialog","category":"co-workers","floor":"5","is_intern":"true","average_kpi":"0.8"}}"#).await;
        assert_eq!(
            data["data"],
            json!({"class_name": "CoolDialog", "category": "co-workers",
            "floor": "5", "is_intern": "true", "average_kpi": "0.8"})
        );
        let removed = put(
            GROUP_ID,
            group_auth,
            r#"{"pull_all":{"occupants_ids":[91375295,96705448]}}"#,
        )
        .await;
        assert_eq!(
            occupants(&removed),
            [RECIPE_USER, OWNER, OCCUPANT, OTHER_OCCUPANT, NEW_OWNER]
        );
        let renamed = put(GROUP_ID, group_auth, r#"{"name":"New Year 2024 party"}"#).await;
        assert_eq!(renamed["name"], "New Year 2024 party");
        let handed = put(GROUP_ID, group_auth, r#"{"user_id": 96753877}"#).await;
        assert_eq!(handed["user_id"], NEW_OWNER);
        assert_eq!(sandbox.dialog(GROUP_ID).as_ref(), Some(&handed));
    }
}

#[tokio::test]
async fn update_reads_forms_and_the_query_string() {
    let (sandbox, addr) = start().await;
    let form = with(USER_123, FORM);
    let body =
        "push_all[occupants_ids][]=1&push_all[occupants_ids][]=2&pull_all[occupants_ids]=96830631\
                &push_all[admin_ids]=96754523&name=Form&photo=99&data[beer]=stout";
    let answer = call(
        addr,
        "PUT",
        &format!("/chat/Dialog/{GROUP_ID}"),
        &form,
        body,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        occupants(&answer.json),
        [RECIPE_USER, OWNER, OCCUPANT, NEW_OWNER, 1, 2]
    );
    assert_eq!(answer.json["admin_ids"], json!([OCCUPANT]));
    assert_eq!(
        (answer.json["name"].clone(), answer.json["photo"].clone()),
        (json!("Form"), json!("99"))
    );
    assert_eq!(answer.json["data"], json!({"beer": "stout"}));

    // Rails merges the query string into the parameters: so does the sandbox.
    let json_headers = with(USER_123, JSON);
    let query = call(
        addr,
        "PUT",
        &format!("/chat/Dialog/{GROUP_ID}.json?name=FromQuery"),
        &json_headers,
        r#"{"pull_all":{"admin_ids":[96754523]},"photo":68123}"#,
    )
    .await;
    assert_eq!(query.json["name"], "FromQuery");
    assert_eq!(query.json["admin_ids"], json!([]));
    assert_eq!(query.json["photo"], "68123");
    assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "FromQuery");
}

#[tokio::test]
async fn update_refusals() {
    let (sandbox, addr) = start().await;
    let headers = with(USER_123, JSON);
    let missing = call(
        addr,
        "PUT",
        &format!("/chat/Dialog/{MISSING_ID}.json"),
        &headers,
        r#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(
        (missing.status, base(&missing)),
        (StatusCode::NOT_FOUND, "Not found")
    );
    let long = format!(r#"{{"name":"{}"}}"#, "n".repeat(201));
    let too_long = call(
        addr,
        "PUT",
        &format!("/chat/Dialog/{GROUP_ID}.json"),
        &headers,
        &long,
    )
    .await;
    assert_eq!(too_long.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        too_long.json,
        json!({"errors": {"name": ["is too long (maximum is 200 characters)"]}})
    );
    let bad_ids = call(
        addr,
        "PUT",
        &format!("/chat/Dialog/{GROUP_ID}.json"),
        &headers,
        r#"{"name":"ok","push_all":{"occupants_ids":"1,x"}}"#,
    )
    .await;
    assert_eq!(
        bad_ids.json,
        json!({"errors": {"occupants_ids": ["is invalid"]}})
    );
    // A body of a type Rails does not read is not refused but ignored: nothing of it applies.
    let text = with(USER_123, ("content-type", "text/plain"));
    let path = format!("/chat/Dialog/{GROUP_ID}.json");
    let ignored = call(addr, "PUT", &path, &text, "name=x").await;
    assert_eq!(ignored.status, StatusCode::OK);
    assert_eq!(ignored.json["name"], "Party planning");
    let malformed = call(
        addr,
        "PUT",
        &format!("/chat/Dialog/{GROUP_ID}.json"),
        &headers,
        "{",
    )
    .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    // Nothing of a refused update is applied.
    assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "Party planning");
}

#[tokio::test]
async fn delete_for_self_and_for_everyone() {
    let (sandbox, addr) = start().await;
    let other = with(&with(APP, ("on-behalf-of", "96830631")), FORM);
    let left = call(
        addr,
        "DELETE",
        &format!("/chat/Dialog/{GROUP_ID}.json"),
        &other,
        "",
    )
    .await;
    assert_eq!(left.status, StatusCode::OK);
    assert_eq!(left.json["SuccessfullyDeleted"]["ids"], json!([GROUP_ID]));
    let group = sandbox.dialog(GROUP_ID).unwrap();
    assert!(!occupants(&group).contains(&OTHER_OCCUPANT));
    assert_eq!(occupants(&group).len(), 4);

    let app = call(
        addr,
        "DELETE",
        &format!("/chat/Dialog/{GROUP_ID}.json"),
        &with(APP, FORM),
        "",
    )
    .await;
    assert_eq!(
        (app.status, base(&app)),
        (StatusCode::FORBIDDEN, "Forbidden. Need user.")
    );

    let owner = with(USER_123, FORM);
    let forced = call(
        addr,
        "DELETE",
        &format!("/chat/Dialog/{GROUP_ID},{MISSING_ID}.json"),
        &owner,
        "force=1",
    )
    .await;
    assert_eq!(forced.status, StatusCode::OK);
    assert_eq!(
        forced.json,
        json!({"SuccessfullyDeleted": {"ids": [GROUP_ID]},
        "NotFound": {"ids": [MISSING_ID]}, "WrongPermissions": {"ids": []}})
    );
    assert_eq!(sandbox.dialog(GROUP_ID), None);

    let gone = call(
        addr,
        "DELETE",
        &format!("/chat/Dialog/{GROUP_ID}.json"),
        &owner,
        "force=1",
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    // A percent-encoded comma separates ids too; the application may force.
    let encoded = call(
        addr,
        "DELETE",
        &format!("/chat/Dialog/{PUBLIC_ID}%2C{PRIVATE_ID}"),
        &with(APP, FORM),
        "force=1",
    )
    .await;
    assert_eq!(
        encoded.json["SuccessfullyDeleted"]["ids"],
        json!([PUBLIC_ID, PRIVATE_ID])
    );
    let all = call(addr, "GET", "/chat/Dialog.json", APP, "").await;
    assert_eq!(all.json["total_entries"], 0);
}

#[test]
fn user_ids_in_every_client_spelling() {
    assert_eq!(user_ids(&json!([1, 2])), Some(vec![1, 2]));
    assert_eq!(user_ids(&json!(["1", "2"])), Some(vec![1, 2]));
    assert_eq!(
        user_ids(&json!("91375295, 96705448")),
        Some(vec![91_375_295, 96_705_448])
    );
    assert_eq!(user_ids(&json!("1,2")), Some(vec![1, 2]));
    assert_eq!(user_ids(&json!(7)), Some(vec![7]));
    assert_eq!(user_ids(&json!("")), Some(vec![]));
    for bad in [
        json!("1,x"),
        json!(-1),
        json!(1.5),
        json!([[1]]),
        json!({"a": 1}),
        json!("+1"),
    ] {
        assert_eq!(user_ids(&bad), None, "{bad}");
    }
}
