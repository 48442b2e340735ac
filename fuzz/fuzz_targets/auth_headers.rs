//! Arbitrary header lines (`name: value`) -> `qbgate::auth::authenticate` against a small
//! compiled policy. Checks that a success names a key of the policy (or a token) and that a key
//! only authenticates with the one real key string.
#![no_main]

use std::sync::LazyLock;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const KEYS: [(&str, &str); 5] = [
    ("any", "fuzz-key-any"),
    ("list", "fuzz-key-list"),
    ("app", "fuzz-key-app"),
    ("off", "fuzz-key-off"),
    ("old", "fuzz-key-old"),
];

static POLICY: LazyLock<qbgate::policy::Policy> = LazyLock::new(|| {
    let d = |k: &str| qbgate::policy::digest_hex(k.as_bytes());
    let text = format!(
        "version: 1\n\
         upstream:\n  url: http://127.0.0.1:9\n  api_key: {{ env: QB_API_KEY }}\n\
         qb_token: forward\n\
         keys:\n\
         - {{ id: any, sha256: {}, on_behalf_of: any }}\n\
         - {{ id: list, sha256: {}, on_behalf_of: [7, 42, 96753878] }}\n\
         - {{ id: app, sha256: {}, on_behalf_of: none }}\n\
         - {{ id: off, sha256: {}, disabled: true }}\n\
         - {{ id: old, sha256: {}, expires_at: 2020-01-01T00:00:00Z }}\n",
        d(KEYS[0].1),
        d(KEYS[1].1),
        d(KEYS[2].1),
        d(KEYS[3].1),
        d(KEYS[4].1),
    );
    let env = |name: &str| (name == "QB_API_KEY").then(|| "fuzz-upstream-key".to_string());
    qbgate::policy::compile_with_env(&text, &env).expect("fuzz policy compiles")
});

fuzz_target!(|data: &[u8]| {
    let headers = common::headers(data);
    let Ok(p) = qbgate::auth::authenticate(&POLICY, &headers, SystemTime::now()) else {
        return;
    };
    match p.key {
        None => {
            assert!(p.token.is_some());
            assert!(headers.get("authorization").is_none());
        }
        Some(i) => {
            let (id, key) = KEYS[i as usize];
            assert_eq!(&*p.key_id, id);
            assert!(
                id != "off" && id != "old",
                "disabled/expired key {id} accepted"
            );
            // The only authorization header must carry exactly that key.
            let auth = headers.get("authorization").unwrap().as_bytes();
            let presented = auth[7..].trim_ascii();
            assert_eq!(presented, key.as_bytes());
            if id == "list" {
                assert!(matches!(p.user, Some(7 | 42 | 96753878)));
            }
            if id == "app" {
                assert!(p.user.is_none());
            }
        }
    }
});
