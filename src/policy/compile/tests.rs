//! The policy compiler's tests: defaults, every error with its place, JSON and YAML alike.

use super::*;
use crate::policy::Segment;

const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn errors(text: &str) -> Vec<String> {
    match compile(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_policy_gets_the_contract_defaults() {
    let p = compile(&format!(
        "version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n"
    ))
    .unwrap();
    assert_eq!(p.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(p.admin_listen.to_string(), "0.0.0.0:9090");
    assert_eq!(p.upstream.origin.as_str(), "api.quickblox.com");
    assert_eq!(p.upstream.timeout, Duration::from_secs(15));
    assert_eq!(p.upstream.connect_timeout, Duration::from_secs(2));
    assert_eq!(p.client.header_timeout, Duration::from_secs(10));
    assert_eq!(p.client.body_timeout, Duration::from_secs(30));
    assert_eq!(p.shutdown.drain_delay, Duration::from_secs(5));
    assert_eq!(p.max_body_bytes, 1_048_576);
    assert_eq!(p.qb_token, QbTokenMode::Forward);
    assert_eq!(p.rate_limit, RateLimitStore::Memory);
    assert_eq!(p.dialog_rules.mode, RuleMode::Enforce);
    assert!(!p.dialog_rules.forward_on_lookup_error);
    assert!(p.upstream.authorization.is_none());
    assert_eq!(p.keys[0].on_behalf_of, OnBehalfOf::Any);
    let mut d = [0u8; 32];
    hex::decode_to_slice(DIGEST, &mut d).unwrap();
    assert_eq!(p.key_by_digest(&d).unwrap().1.id.as_ref(), "a");
}

/// What a policy compiles to, minus the digest of its text.
fn summary(p: &Policy) -> String {
    format!(
        "{} {} {:?} {:?} {:?} {} {:?} {:?} {:?}",
        p.listen,
        p.admin_listen,
        p.upstream,
        p.client,
        p.shutdown,
        p.max_body_bytes,
        p.rate_limit,
        p.dialog_rules,
        p.keys
    )
}

#[test]
fn a_policy_in_json_form_compiles_as_its_yaml_form_does() {
    let yaml = format!(
        "version: 1\nlisten: 127.0.0.1:8181\nupstream:\n  url: https://api.example.com/v1\n  timeout: 3s\n\
         dialog_rules:\n  mode: report\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    on_behalf_of: [5, 6]\n\
         \x20   routes: [GET /chat/Dialog.json]\n    rate_limit: {{ per_second: 5, burst: 10 }}\n"
    );
    let json = format!(
        r#" {{"version": 1, "listen": "127.0.0.1:8181",
                "upstream": {{"url": "https://api.example.com/v1", "timeout": "3s"}},
                "dialog_rules": {{"mode": "report"}},
                "keys": [{{"id": "a", "sha256": "{DIGEST}", "on_behalf_of": [5, 6],
                          "routes": ["GET /chat/Dialog.json"],
                          "rate_limit": {{"per_second": 5, "burst": 10}}}}]}}"#
    );
    let (from_yaml, from_json) = (compile(&yaml).unwrap(), compile(&json).unwrap());
    assert_eq!(summary(&from_json), summary(&from_yaml));
    // YAML's flow style also starts with `{` but is not JSON: the YAML parse takes it.
    let flow = format!("{{version: 1, keys: [{{id: a, sha256: {DIGEST}}}]}}");
    assert_eq!(compile(&flow).unwrap().keys[0].id.as_ref(), "a");
}

#[test]
fn errors_in_a_json_policy_still_say_where() {
    let json = format!(
        "{{\n  \"version\": 1,\n  \"keys\": [\n    {{\"id\": \"a\", \"sha256\": \"{DIGEST}\",\n     \"rate_limit\": {{\"per_second\": 5, \"burst\": 0}}}}\n  ]\n}}\n"
    );
    assert_eq!(
        errors(&json),
        ["keys[0].rate_limit.burst: must be at least 1 (line 5, column 47)"]
    );
    let unknown = format!(
        "{{\"version\": 1, \"keys\": [{{\"id\": \"a\", \"sha256\": \"{DIGEST}\", \"rout\": []}}]}}"
    );
    let errs = errors(&unknown);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("rout") && errs[0].contains("line 1"),
        "{errs:?}"
    );
}

#[test]
fn every_value_error_is_reported_with_its_place() {
    let text = format!(
        "version: 1\nqb_token: maybe\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    rate_limit:\n      per_second: 5\n      burst: 0\n  - id: a\n    sha256: xyz\n    on_behalf_of: [0]\n"
    );
    let errs = errors(&text);
    assert_eq!(
        errs,
        vec![
            "qb_token: must be `forward` or `reject` (line 2, column 11)".to_string(),
            "keys[0].rate_limit.burst: must be at least 1 (line 8, column 14)".to_string(),
            "keys[1].id: duplicate key id `a` (line 9, column 9)".to_string(),
            "keys[1].sha256: must be 64 hex characters: the SHA-256 of the key (`qbgate hash-key`) (line 10, column 13)".to_string(),
            "keys[1].on_behalf_of[0]: user ids must be positive (line 11, column 19)".to_string(),
        ]
    );
}

#[test]
fn unknown_fields_are_errors_with_a_place() {
    let errs = errors(&format!(
        "version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    rout: []\n"
    ));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("unknown field `rout`"), "{errs:?}");
    assert!(errs[0].ends_with("(line 5, column 5)"), "{errs:?}");
}

#[test]
fn missing_secret_names_the_reference_not_a_value() {
    let errs = errors(&format!(
        "version: 1\nupstream:\n  api_key: {{ env: QBGATE_TEST_SURELY_UNSET }}\nkeys:\n  - id: a\n    sha256: {DIGEST}\n"
    ));
    assert_eq!(
        errs,
        vec!["upstream.api_key: environment variable QBGATE_TEST_SURELY_UNSET is not set (line 3, column 12)"]
    );
}

#[test]
fn secret_from_file_is_trimmed_and_sensitive() {
    let dir = std::env::temp_dir().join(format!("qbgate-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, "s3cret\n").unwrap();
    let p = compile(&format!(
        "version: 1\nupstream:\n  api_key: {{ file: {} }}\nkeys:\n  - id: a\n    sha256: {DIGEST}\n",
        file.display()
    ))
    .unwrap();
    let auth = p.upstream.authorization.unwrap();
    assert_eq!(auth, "ApiKey s3cret");
    assert!(auth.is_sensitive());
}

#[test]
fn routes_are_case_and_suffix_insensitive() {
    let r = parse_route("PUT /chat/Dialog/*.json").unwrap();
    assert_eq!(
        r.segments,
        vec![
            Segment::Literal("chat".into()),
            Segment::Literal("dialog".into()),
            Segment::Any
        ]
    );
    assert!(parse_route("put /x").is_err());
    assert!(parse_route("GET chat").is_err());
    assert!(parse_route("GET /a//b").is_err());
}

#[test]
fn keyword_fields_list_their_words_and_map_each_word() {
    let text = format!(
        "version: 1\nrate_limit:\n  store: disk\n  redis:\n    on_error: maybe\ndialog_rules:\n  mode: on\n  on_lookup_error: retry\nkeys:\n  - id: a\n    sha256: {DIGEST}\n"
    );
    assert_eq!(
        errors(&text),
        vec![
            "rate_limit.redis.on_error: must be `allow` or `deny` (line 5, column 15)",
            "rate_limit.store: must be `memory` or `redis` (line 3, column 10)",
            "dialog_rules.mode: must be `enforce`, `report` or `off` (line 7, column 9)",
            "dialog_rules.on_lookup_error: must be `reject` or `forward` (line 8, column 20)",
        ]
    );
    let p = compile(&format!(
        "version: 1\nqb_token: reject\nrate_limit:\n  store: redis\n  redis:\n    on_error: deny\ndialog_rules:\n  mode: off\n  on_lookup_error: forward\nkeys:\n  - id: a\n    sha256: {DIGEST}\n"
    ))
    .unwrap();
    assert_eq!(p.qb_token, QbTokenMode::Reject);
    assert_eq!(
        p.rate_limit,
        RateLimitStore::Redis(RedisStore::single("redis://127.0.0.1:6379", false))
    );
    assert_eq!(p.dialog_rules.mode, RuleMode::Off);
    assert!(p.dialog_rules.forward_on_lookup_error);
    let p = compile(&format!(
        "version: 1\nqb_token: forward\nrate_limit:\n  store: memory\n  redis:\n    on_error: allow\ndialog_rules:\n  mode: report\n  on_lookup_error: reject\nkeys:\n  - id: a\n    sha256: {DIGEST}\n"
    ))
    .unwrap();
    assert_eq!(p.qb_token, QbTokenMode::Forward);
    assert_eq!(p.rate_limit, RateLimitStore::Memory);
    assert_eq!(p.dialog_rules.mode, RuleMode::Report);
    assert!(!p.dialog_rules.forward_on_lookup_error);
}

#[test]
fn powers_default_to_none_and_an_unknown_word_is_an_error_with_its_place() {
    let text = format!(
        "version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    powers: [mint_tokens, create_users]\n  - id: b\n    sha256: {}\n",
        "0".repeat(64)
    );
    let policy = compile(&text).unwrap();
    let a = policy.keys[0].powers;
    assert!(a.contains(Power::MintTokens) && a.contains(Power::CreateUsers));
    assert!(!a.contains(Power::ManageUsers));
    assert_eq!(policy.keys[1].powers, Powers::NONE);
    let errs = errors(&format!(
        "version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    powers: [manage_users, mint_token]\n"
    ));
    assert_eq!(
        errs,
        vec!["keys[0].powers[1]: must be `create_users`, `mint_tokens` or `manage_users` (line 5, column 28)".to_string()]
    );
}

#[test]
fn structure_errors_are_in_plain_words_with_their_place() {
    let cases = [
        (
            "version: 1\nupstream:\n  timeoutt: 5s\nkeys: []\n",
            "upstream.timeoutt: unknown field `timeoutt`: the fields here are url, api_key, connect_timeout, timeout, extra_ca_file (line 3, column 3)",
        ),
        (
            format!("version: 1\nkeys:\n  - id: a\n    id: b\n    sha256: {DIGEST}\n").leak(),
            "keys[0].id: `id` is given twice (line 4, column 5)",
        ),
        (
            format!("version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    rate_limit: {{ per_second: many }}\n").leak(),
            "keys[0].rate_limit.per_second: wrong type: expected a whole number (line 5, column 31)",
        ),
        ("version: 1\n", "policy: `keys` is required"),
        // The path of the value the parser stopped at, as the compiler's errors name theirs.
        (
            format!("version: 1\nkeys:\n- id: a\n  sha256: {DIGEST}\n- id: b\n  sha256: {DIGEST}\n  disabled: maybe\n").leak(),
            "keys[1].disabled: wrong type: expected true or false (line 7, column 13)",
        ),
        (
            format!("version: 1\nkeys:\n  - sha256: {DIGEST}\n    on_behalf_of: any\n").leak(),
            "keys[0]: `id` is required (line 4, column 5)",
        ),
        (
            format!("version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    on_behalf_of: [1, x]\n").leak(),
            "keys[0].on_behalf_of: must be `any`, `none` or a list of user ids (line 5, column 19)",
        ),
        (
            format!("version: 1\nkeys:\n  - {{ id: a, sha256: '{DIGEST}', rate_limit: {{ burst: 'x' }} }}\n").leak(),
            "keys[0].rate_limit.burst: wrong type: expected a whole number (line 3, column 111)",
        ),
        (
            format!("version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    routes: [GET /a, {{x: 1}}]\n").leak(),
            "keys[0].routes[1]: wrong type: expected a string (line 5, column 22)",
        ),
        (
            "version: 1\nrate_limit:\n  redis: { sentinel: { master_name: m, nodes: 5 } }\nkeys: []\n",
            "rate_limit.redis.sentinel.nodes: wrong type: expected a list (line 3, column 47)",
        ),
    ];
    for (text, expected) in cases {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        // The place may be printed or not for a missing field; the words must be ours.
        assert!(
            errs[0] == expected || errs[0].starts_with(&format!("{expected} (")),
            "{text}\n got: {}\nwant: {expected}",
            errs[0]
        );
        for internal in ["DuplicateKeyPolicy", "u32", "struct ", " at line "] {
            assert!(!errs[0].contains(internal), "{}", errs[0]);
        }
    }
}

#[test]
fn offline_compiling_checks_secret_references_without_reading_them() {
    let text = |api_key: &str| {
        format!(
            "version: 1\nupstream:\n  api_key: {api_key}\nkeys:\n  - id: a\n    sha256: {DIGEST}\n"
        )
    };
    let offline = |t: &str| compile_secrets(t, &|_| None, Secrets::Offline);
    let online = |t: &str| compile_secrets(t, &|_| None, Secrets::Resolve);
    // Neither the variable nor the file exists: fine offline, an error when resolved.
    for reference in [
        "{ env: QB_API_KEY }",
        "{ file: /nonexistent/qbgate/api-key }",
    ] {
        assert!(offline(&text(reference)).is_ok(), "{reference}");
        assert!(online(&text(reference)).is_err(), "{reference}");
    }
    // A malformed reference is an error either way.
    for reference in [
        "{ env: 9LIVES }",
        "{ env: QB-KEY }",
        "{ file: '' }",
        "{ env: A, file: /b }",
        "{}",
    ] {
        let errs = offline(&text(reference)).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{reference}");
        assert!(
            errs[0].path == "upstream.api_key",
            "{reference}: {}",
            errs[0]
        );
    }
}

#[test]
fn what_run_cannot_connect_to_is_refused_by_check_too() {
    let text = |url: &str| {
        format!("version: 1\nrate_limit:\n  store: redis\n  redis:\n    url: {url}\nkeys:\n  - id: a\n    sha256: {DIGEST}\n")
    };
    assert!(compile(&text("redis://127.0.0.1:6379/0")).is_ok());
    assert!(compile(&text("rediss://cache:6380")).is_ok());
    for url in ["http://cache:6379", "redis://cache:notaport"] {
        let errs = errors(&text(url));
        assert_eq!(errs.len(), 1, "{url}: {errs:?}");
        assert!(
            errs[0].starts_with("rate_limit.redis.url: "),
            "{url}: {errs:?}"
        );
    }
}

#[test]
fn unchecked_routes_default_to_none_and_each_error_has_its_place() {
    let text = format!(
        "version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    unchecked_routes: [GET /data/*, '* /Class.json']\n  - id: b\n    sha256: {}\n",
        "0".repeat(64)
    );
    let policy = compile(&text).unwrap();
    let a = &policy.keys[0].unchecked_routes;
    assert_eq!(a.len(), 2);
    assert_eq!(
        a[0].segments,
        [Segment::Literal("data".into()), Segment::Any]
    );
    assert_eq!(a[1].method, None);
    assert_eq!(a[1].segments, [Segment::Literal("class".into())]);
    assert!(policy.keys[1].unchecked_routes.is_empty());
    let errs = errors(&format!(
        "version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    unchecked_routes: [GET /data/*, get /x, GET data]\n"
    ));
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("keys[0].unchecked_routes[1]: method `get`")
            && errs[0].ends_with("(line 5, column 37)"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("keys[0].unchecked_routes[2]: path `data`"),
        "{errs:?}"
    );
}

const DIGEST_B: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

#[test]
fn a_key_in_rotation_has_several_digests_each_with_its_not_after() {
    let p = compile(&format!(
        "version: 1\nkeys:\n  - id: a\n    digests:\n      - sha256: {DIGEST_B}\n        not_after: 2026-12-31T00:00:00Z\n      - sha256: {DIGEST}\n"
    ))
    .unwrap();
    let mut old = [0u8; 32];
    hex::decode_to_slice(DIGEST_B, &mut old).unwrap();
    let mut new = [0u8; 32];
    hex::decode_to_slice(DIGEST, &mut new).unwrap();
    let (i, key, digest) = p.key_and_digest(&old).unwrap();
    assert_eq!((i, key.id.as_ref()), (0, "a"));
    assert_eq!(digest.prefix.as_str(), "60303ae2");
    assert_eq!(
        digest.not_after,
        Some(humantime::parse_rfc3339("2026-12-31T00:00:00Z").unwrap())
    );
    let (i, _, digest) = p.key_and_digest(&new).unwrap();
    assert_eq!(
        (i, digest.prefix.as_str(), digest.not_after),
        (0, "9f86d081", None)
    );
    assert_eq!(p.keys[0].digests.len(), 2);
}

#[test]
fn a_key_has_sha256_or_digests_and_each_digest_once() {
    let both = errors(&format!(
        "version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n    digests:\n      - sha256: {DIGEST_B}\n"
    ));
    assert_eq!(both.len(), 1, "{both:?}");
    assert!(
        both[0].contains("keys[0].sha256") && both[0].contains("not both"),
        "{both:?}"
    );
    assert!(
        both[0].ends_with("(line 4, column 13)"),
        "a place: {both:?}"
    );
    let neither = errors("version: 1\nkeys:\n  - id: a\n");
    assert!(
        neither[0].contains("keys[0].id") && neither[0].contains("needs `sha256`"),
        "{neither:?}"
    );
    let empty = errors("version: 1\nkeys:\n  - id: a\n    digests: []\n");
    assert!(
        empty[0].contains("keys[0].digests") && empty[0].contains("at least one"),
        "{empty:?}"
    );
    let twice = errors(&format!(
        "version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n  - id: b\n    digests:\n      - sha256: {DIGEST_B}\n      - sha256: {DIGEST}\n"
    ));
    assert_eq!(twice.len(), 1, "{twice:?}");
    assert!(
        twice[0].contains("keys[1].digests[1].sha256") && twice[0].contains("already used"),
        "{twice:?}"
    );
    assert!(twice[0].contains("(line 8,"), "a place: {twice:?}");
    let bad = errors(&format!(
        "version: 1\nkeys:\n  - id: a\n    digests:\n      - sha256: {DIGEST}\n        not_after: soon\n      - sha256: nothex\n"
    ));
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].contains("keys[0].digests[0].not_after") && bad[0].contains("RFC 3339"),
        "{bad:?}"
    );
    assert!(
        bad[1].contains("keys[0].digests[1].sha256") && bad[1].contains("64 hex"),
        "{bad:?}"
    );
    let unknown = errors(&format!(
        "version: 1\nkeys:\n  - id: a\n    digests:\n      - sha256: {DIGEST}\n        expires: 2027-01-01T00:00:00Z\n"
    ));
    assert!(unknown[0].contains("expires"), "{unknown:?}");
}

fn redis_policy(block: &str) -> String {
    format!("version: 1\nrate_limit:\n  store: redis\n  redis:\n{block}keys:\n  - id: a\n    sha256: {DIGEST}\n")
}

#[test]
fn redis_modes_compile_to_their_servers() {
    let env = |name: &str| (name == "REDIS_PW").then(|| "s3cret\n".to_string());
    let p = compile_with_env(
        &redis_policy(
            "    url: rediss://limiter@cache:6380/2\n    password: { env: REDIS_PW }\n    on_error: deny\n",
        ),
        &env,
    )
    .expect("tls + acl");
    let RateLimitStore::Redis(store) = &p.rate_limit else {
        panic!("redis expected")
    };
    assert_eq!(
        store.servers,
        RedisServers::Single {
            url: "rediss://limiter@cache:6380/2".into()
        }
    );
    assert_eq!(store.password, Some(RedisPassword("s3cret".into())));
    assert!(!format!("{store:?}").contains("s3cret"), "Debug hides it");
    assert!(!store.on_error_allow);

    let p = compile(&redis_policy(
        "    sentinel: { master_name: mymaster, nodes: ['s1:26379', 'redis://s2:26379'] }\n",
    ))
    .expect("sentinel");
    assert_eq!(
        p.rate_limit,
        RateLimitStore::Redis(RedisStore {
            servers: RedisServers::Sentinel {
                master_name: "mymaster".into(),
                nodes: vec!["redis://s1:26379".into(), "redis://s2:26379".into()],
            },
            password: None,
            ca_file: None,
            on_error_allow: true,
        })
    );
    // Beside `sentinel` or `cluster`, `url` lends its scheme and user to bare `host:port` nodes.
    let p = compile(&redis_policy(
        "    url: rediss://limiter@ignored:6380/2\n    sentinel: { master_name: m, nodes: ['s1:26379', 'rediss://limiter@s2:26379'] }\n",
    ))
    .expect("sentinel with url");
    let RateLimitStore::Redis(store) = &p.rate_limit else {
        panic!("redis expected")
    };
    assert_eq!(
        store.servers,
        RedisServers::Sentinel {
            master_name: "m".into(),
            nodes: vec![
                "rediss://limiter@s1:26379".into(),
                "rediss://limiter@s2:26379".into()
            ],
        }
    );
    let errs = errors(&redis_policy(
        "    url: rediss://limiter@x:1\n    cluster: { nodes: ['a:1', 'redis://b:2'] }\n",
    ));
    assert!(
        errs.iter().any(|e| e
            .starts_with("rate_limit.redis.cluster.nodes[1]: every node must use the same scheme")),
        "{errs:?}"
    );
    let p = compile(&redis_policy(
        "    cluster:\n      nodes: ['[::1]:7000', 10.0.0.2:7001]\n",
    ))
    .expect("cluster");
    let RateLimitStore::Redis(store) = &p.rate_limit else {
        panic!("redis expected")
    };
    assert_eq!(
        store.servers,
        RedisServers::Cluster {
            nodes: vec!["redis://[::1]:7000".into(), "redis://10.0.0.2:7001".into()]
        }
    );
}

#[test]
fn redis_block_errors_are_in_plain_words_with_their_place() {
    let cases: &[(&str, &str)] = &[
        (
            "    sentinel: { master_name: m, nodes: [a:1] }\n    cluster: { nodes: [b:2] }\n",
            "rate_limit.redis: give `sentinel` or `cluster`, not both (line 5, column 15)",
        ),
        (
            "    cluster: { nodes: [] }\n",
            "rate_limit.redis.cluster.nodes: needs at least one address (host:port) (line 5, column 14)",
        ),
        (
            "    sentinel: { nodes: [a:1] }\n",
            "rate_limit.redis.sentinel: `master_name` is missing: the name the sentinels know the primary by (line 5, column 15)",
        ),
        (
            "    sentinel: { master_name: '', nodes: [a:1] }\n",
            "rate_limit.redis.sentinel.master_name: must not be empty (line 5, column 30)",
        ),
        (
            "    cluster: { nodes: ['a:1', 'b:70000'] }\n",
            "rate_limit.redis.cluster.nodes[1]: must be host:port (a port from 1 to 65535) or a redis:// or rediss:// URL (line 5, column 31)",
        ),
        (
            "    cluster: { nodes: ['a:1', 'rediss://b:2'] }\n",
            "rate_limit.redis.cluster.nodes[1]: every node must use the same scheme (redis:// or rediss://) and user name (line 5, column 31)",
        ),
        (
            "    url: redis://user:hunter2@cache:6379\n",
            "rate_limit.redis.url: holds a password: give it under `rate_limit.redis.password` as { env: NAME } or { file: PATH }, never in the url (line 5, column 10)",
        ),
        (
            "    url: redis://cache:6379\n    ca_file: /nonexistent.pem\n",
            "rate_limit.redis.ca_file: is only used over TLS: write the address as rediss:// (line 6, column 14)",
        ),
        (
            "    url: rediss://cache:6379\n    ca_file: /nonexistent/ca.pem\n",
            "rate_limit.redis.ca_file: cannot read /nonexistent/ca.pem (line 6, column 14)",
        ),
        (
            "    password: { env: NOT_SET_ANYWHERE_QBGATE }\n",
            "rate_limit.redis.password: environment variable NOT_SET_ANYWHERE_QBGATE is not set (line 5, column 15)",
        ),
    ];
    for (block, want) in cases {
        let errs = errors(&redis_policy(block));
        assert_eq!(errs, [*want], "{block}");
        assert!(!errs[0].contains("hunter2"), "no password in errors");
    }
}

#[test]
fn offline_check_does_not_read_the_redis_password() {
    let text = redis_policy("    password: { file: /nonexistent/redis-password }\n");
    assert!(compile_secrets(&text, &|_| None, Secrets::Offline).is_ok());
    let errs = compile_secrets(&text, &|_| None, Secrets::Resolve)
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "rate_limit.redis.password");
}

#[test]
fn every_mistake_in_the_redis_block_is_reported_at_once() {
    let errs = errors(&redis_policy(
        "    url: rediss://u:hunter2@cache:6380\n    sentinel: { master_name: m, nodes: [a:1] }\n    cluster: { nodes: [bad] }\n",
    ));
    let paths: Vec<&str> = errs
        .iter()
        .map(|e| e.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        [
            "rate_limit.redis.url",
            "rate_limit.redis.cluster.nodes[0]",
            "rate_limit.redis",
        ],
        "{errs:?}"
    );
    assert!(errs.iter().all(|e| !e.contains("hunter2")), "{errs:?}");
}

proptest::proptest! {
    /// Whatever the text and the place a parser names, finding the path never panics, and a
    /// path it gives is made of names, indices and dots only.
    #[test]
    fn a_path_is_found_or_not_without_panicking(
        text in "[ a-z0-9_\n\t{}\\[\\]:,'\"#|>é-]{0,160}",
        line in 0u64..10,
        column in 0u64..60,
    ) {
        if let Some(path) = path_at(&text, line, column) {
            proptest::prop_assert!(
                path.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.[]".contains(&b)),
                "{path:?}"
            );
        }
    }
}

/// A reload's check and compile read the file once: `None` only for the very bytes the digest
/// names, and the policy compiled otherwise carries the digest `load` would give.
#[test]
fn load_unless_skips_only_the_bytes_it_was_told() {
    let path = std::env::temp_dir().join(format!("qbgate-load-unless-{}.yaml", std::process::id()));
    let text = format!("version: 1\nkeys:\n  - id: a\n    sha256: {DIGEST}\n");
    std::fs::write(&path, &text).unwrap();
    let digest = load(&path).unwrap().digest;
    assert_eq!(digest, crate::policy::source_digest(&path).unwrap());
    assert!(load_unless(&path, Some(&digest)).is_none());
    let compiled = load_unless(&path, None).unwrap().unwrap();
    assert_eq!(compiled.digest, digest);
    std::fs::write(&path, format!("{text}# changed\n")).unwrap();
    let changed = load_unless(&path, Some(&digest)).unwrap().unwrap();
    assert_ne!(changed.digest, digest);
    std::fs::write(&path, "version: 1\n").unwrap();
    let errors = load_unless(&path, Some(&digest)).unwrap().unwrap_err();
    assert_eq!(errors.0[0].message, "`keys` is required");
    std::fs::remove_file(&path).unwrap();
    let missing = load_unless(&path, Some(&digest)).unwrap().unwrap_err();
    assert!(missing.0[0]
        .message
        .starts_with("cannot read the policy file"));
}
