//! The user endpoints: create, update, delete by id and by external id, and minting a session
//! token, each taking effect; the words in any case, the ids decoded.

use super::*;

#[tokio::test]
async fn users_are_created_updated_deleted_and_get_tokens() {
    let (sandbox, addr) = start().await;
    let form = with(APP, FORM);
    let created = call(
        addr,
        "POST",
        "/users.json",
        &form,
        "user[login]=neo&user[password]=12345678",
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.json);
    let id = created.json["user"]["id"].as_u64().unwrap();
    assert_eq!(sandbox.user(id).unwrap()["user"]["login"], "neo");
    let taken = call(
        addr,
        "POST",
        "/users.json",
        &form,
        "user[login]=neo&user[password]=x",
    )
    .await;
    assert_eq!(taken.status, StatusCode::UNPROCESSABLE_ENTITY);

    let json = with(APP, JSON);
    let path = format!("/USERS/{}.json", seed::OUTSIDER);
    let wrong = call(
        addr,
        "PUT",
        &path,
        &json,
        r#"{"user":{"password":"new","old_password":"bad"}}"#,
    )
    .await;
    assert_eq!(
        wrong.json,
        serde_json::json!({"errors": {"old_password": ["is invalid"]}})
    );
    let body = format!(
        r#"{{"user":{{"password":"new","old_password":"{}","full_name":"Out Sider"}}}}"#,
        seed::password(seed::OUTSIDER)
    );
    let updated = call(addr, "PUT", &path, &json, &body).await;
    assert_eq!(updated.status, StatusCode::OK, "{}", updated.json);
    assert_eq!(updated.json["user"]["full_name"], "Out Sider");
    assert_eq!(
        sandbox.user_password(seed::OUTSIDER).as_deref(),
        Some("new")
    );

    let minted = call(
        addr,
        "POST",
        &format!("/users/{}/Tokens", seed::OWNER),
        APP,
        "",
    )
    .await;
    assert_eq!(minted.status, StatusCode::CREATED, "{}", minted.json);
    let token = minted.json["token"].as_str().unwrap();
    assert!(minted.json["expires_at"].is_string());
    assert_eq!(sandbox.session_user(token), Some(seed::OWNER));
    let by_token = [("qb-token", seed::GROUP_TOKEN)];
    let refused = call(
        addr,
        "POST",
        &format!("/users/{}/tokens.json", seed::OWNER),
        &by_token,
        "",
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let gone = call(addr, "DELETE", &path, APP, "").await;
    assert_eq!(gone.status, StatusCode::OK);
    assert!(sandbox.user(seed::OUTSIDER).is_none());
    assert_eq!(
        call(addr, "DELETE", &path, APP, "").await.status,
        StatusCode::NOT_FOUND
    );
    let external = format!("/users/external/{}.json", seed::external_id(seed::OWNER));
    assert_eq!(
        call(addr, "DELETE", &external, APP, "").await.status,
        StatusCode::OK
    );
    assert!(sandbox.user(seed::OWNER).is_none());
}
