//! Every curl recipe of QuickBlox's "Update dialog" reference (tests/data, copied from
//! shared/quickblox), replayed through the gateway: host replaced, the ApiKey replaced by a test
//! key; each reaches the sandbox and has the documented effect.

use std::collections::BTreeSet;

use qbgate::sandbox::seed;

use crate::support::*;

/// One recipe: headers, JSON body, dialog id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Recipe {
    headers: Vec<(String, String)>,
    body: String,
    dialog: String,
}

fn recipes() -> BTreeSet<Recipe> {
    let text = std::fs::read_to_string("tests/data/update-dialog-reference.txt").unwrap();
    let mut out = BTreeSet::new();
    for chunk in text.split("curl -X PUT").skip(1) {
        let Some(end) = chunk.find(".json") else {
            continue;
        };
        let chunk = &chunk[..end + 5];
        let mut headers = Vec::new();
        for part in chunk.split("-H ").skip(1) {
            let quote = part.chars().next().unwrap();
            let value = &part[1..part[1..].find(quote).unwrap() + 1];
            let (k, v) = value.split_once(": ").unwrap();
            headers.push((k.to_ascii_lowercase(), v.to_string()));
        }
        let body_start = chunk.find("-d '").unwrap() + 4;
        let body = &chunk[body_start..body_start + chunk[body_start..].find('\'').unwrap()];
        let dialog = chunk
            .rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".json")
            .to_string();
        out.insert(Recipe {
            headers,
            body: body.to_string(),
            dialog,
        });
    }
    out
}

#[tokio::test]
async fn every_reference_recipe_reaches_the_sandbox_with_its_documented_effect() {
    let all = recipes();
    assert_eq!(all.len(), 9, "distinct recipes: {all:#?}");
    for recipe in all {
        let gate = Gate::start("").await;
        let mut headers: Vec<(String, String)> = Vec::new();
        for (k, v) in &recipe.headers {
            match k.as_str() {
                // The reference's key stands for a real QuickBlox key; callers get a scoped one.
                "authorization" => headers.push((k.clone(), format!("ApiKey {KEY_ANY}"))),
                "qb-token" => {
                    let user = if v == seed::DATA_TOKEN {
                        seed::OCCUPANT
                    } else {
                        seed::RECIPE_USER
                    };
                    gate.sandbox.add_session(v, user);
                    headers.push((k.clone(), v.clone()));
                }
                _ => headers.push((k.clone(), v.clone())),
            }
        }
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let reply = gate
            .send(
                "PUT",
                &format!("/chat/Dialog/{}.json", recipe.dialog),
                &h,
                &recipe.body,
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "{recipe:?}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        let sent: serde_json::Value = serde_json::from_str(&recipe.body).unwrap();
        let dialog = gate.sandbox.dialog(&recipe.dialog).unwrap();
        if let Some(name) = sent.get("name") {
            assert_eq!(&dialog["name"], name);
        }
        if let Some(ids) = sent.pointer("/push_all/occupants_ids") {
            for id in ids.as_array().unwrap() {
                assert!(
                    dialog["occupants_ids"].as_array().unwrap().contains(id),
                    "{recipe:?}"
                );
            }
        }
        if let Some(ids) = sent.pointer("/pull_all/occupants_ids") {
            for id in ids.as_array().unwrap() {
                assert!(
                    !dialog["occupants_ids"].as_array().unwrap().contains(id),
                    "{recipe:?}"
                );
            }
        }
        if let Some(data) = sent.get("data") {
            assert_eq!(dialog["data"]["category"], data["category"]);
        }
        if let Some(owner) = sent.get("user_id") {
            assert_eq!(&dialog["user_id"], owner);
        }
        let forwarded = gate.sandbox.take_received();
        let put = forwarded
            .iter()
            .find(|r| r.method == "PUT")
            .expect("the PUT was forwarded");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&put.body).unwrap(),
            sent
        );
    }
}
