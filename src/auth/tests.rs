//! Tests of `auth`.

use super::*;
use crate::policy::compile;

const KEY_ANY: &str = "key-any";
const KEY_LIST: &str = "key-list";
const KEY_NONE: &str = "key-none";
const KEY_OFF: &str = "key-off";
const KEY_OLD: &str = "key-old";

fn policy(qb_token: &str) -> Policy {
    let d = |k: &str| crate::policy::digest_hex(k.as_bytes());
    compile(&format!(
        "version: 1\nqb_token: {qb_token}\nkeys:\n\
         - {{id: any, sha256: {}, on_behalf_of: any}}\n\
         - {{id: list, sha256: {}, on_behalf_of: [7, 9]}}\n\
         - {{id: none, sha256: {}, on_behalf_of: none}}\n\
         - {{id: off, sha256: {}, disabled: true}}\n\
         - {{id: old, sha256: {}, expires_at: 2020-01-01T00:00:00Z}}\n",
        d(KEY_ANY),
        d(KEY_LIST),
        d(KEY_NONE),
        d(KEY_OFF),
        d(KEY_OLD)
    ))
    .unwrap()
}

fn auth(p: &Policy, pairs: &[(&'static str, &str)]) -> Result<Principal, GateError> {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().unwrap());
    }
    authenticate(p, &h, SystemTime::now())
}

#[test]
fn on_behalf_of_syntax() {
    assert_eq!(parse_user(b"96753878"), Some(96753878));
    for bad in [
        "",
        "undefined",
        "-1",
        "0",
        "1e3",
        "0x10",
        " 1",
        "1 ",
        "+1",
        "01",
        "1.0",
        "99999999999999999999999",
    ] {
        assert_eq!(parse_user(bad.as_bytes()), None, "{bad:?}");
    }
}

#[test]
fn key_outcomes() {
    let p = policy("forward");
    let ok = auth(
        &p,
        &[
            ("authorization", &format!("ApiKey {KEY_ANY}")),
            ("on-behalf-of", "5"),
        ],
    )
    .unwrap();
    assert_eq!((ok.key_id.as_ref(), ok.user), ("any", Some(5)));
    let e = |pairs: &[(&'static str, &str)]| auth(&p, pairs).unwrap_err();
    let any = format!("ApiKey {KEY_ANY}");
    let list = format!("apikey {KEY_LIST}");
    let none = format!("ApiKey {KEY_NONE}");
    assert_eq!(e(&[]), GateError::MissingCredentials);
    assert_eq!(
        e(&[("authorization", "ApiKey nope")]),
        GateError::UnknownKey
    );
    assert_eq!(e(&[("authorization", "Bearer x")]), GateError::UnknownKey);
    assert_eq!(
        e(&[
            ("authorization", &format!("ApiKey {KEY_OFF}")),
            ("on-behalf-of", "1")
        ]),
        GateError::KeyDisabled
    );
    assert_eq!(
        e(&[
            ("authorization", &format!("ApiKey {KEY_OLD}")),
            ("on-behalf-of", "1")
        ]),
        GateError::KeyExpired
    );
    assert_eq!(e(&[("authorization", &any)]), GateError::UserRequired);
    assert_eq!(
        e(&[("authorization", &any), ("on-behalf-of", "undefined")]),
        GateError::BadOnBehalfOf
    );
    assert_eq!(
        e(&[
            ("authorization", &any),
            ("on-behalf-of", "5"),
            ("on-behalf-of", "5")
        ]),
        GateError::BadOnBehalfOf
    );
    assert_eq!(
        e(&[("authorization", &list), ("on-behalf-of", "8")]),
        GateError::UserNotAllowed
    );
    assert_eq!(
        auth(&p, &[("authorization", &list), ("on-behalf-of", "9")])
            .unwrap()
            .user,
        Some(9)
    );
    assert_eq!(
        e(&[("authorization", &none), ("on-behalf-of", "9")]),
        GateError::UserRefused
    );
    assert_eq!(auth(&p, &[("authorization", &none)]).unwrap().user, None);
    assert_eq!(
        e(&[("authorization", &any), ("qb-token", "t")]),
        GateError::BothCredentials
    );
    assert!(matches!(
        e(&[("authorization", &any), ("authorization", &any)]),
        GateError::BadHeader(_)
    ));
}

#[test]
fn qb_token_forward_or_reject() {
    let p = policy("forward");
    let t = auth(&p, &[("qb-token", "abc")]).unwrap();
    assert!(t.key.is_none() && t.token.is_some());
    let p = policy("reject");
    assert_eq!(
        auth(&p, &[("qb-token", "abc")]).unwrap_err(),
        GateError::TokenRejected
    );
}

#[test]
fn a_rotated_out_digest_works_until_its_not_after_and_the_new_one_keeps_working() {
    let d = |k: &str| crate::policy::digest_hex(k.as_bytes());
    let p = compile(&format!(
        "version: 1\nkeys:\n\
         - id: svc\n  digests:\n  - {{sha256: {}, not_after: 2026-12-31T00:00:00Z}}\n  - {{sha256: {}}}\n",
        d("old-key"),
        d("new-key"),
    ))
    .unwrap();
    let at = |key: &str, when: &str| {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("ApiKey {key}").parse().unwrap(),
        );
        h.insert(&ON_BEHALF_OF, "7".parse().unwrap());
        authenticate(&p, &h, humantime::parse_rfc3339(when).unwrap())
    };
    let before = "2026-12-30T23:59:59Z";
    let after = "2026-12-31T00:00:00Z";
    let old = at("old-key", before).unwrap();
    assert_eq!(old.key_id.as_ref(), "svc");
    assert_eq!(old.digest.unwrap().as_str(), &d("old-key")[..8]);
    assert!(matches!(at("old-key", after), Err(GateError::KeyExpired)));
    for when in [before, after, "2030-01-01T00:00:00Z"] {
        let new = at("new-key", when).unwrap();
        assert_eq!((new.key_id.as_ref(), new.key), ("svc", Some(0)));
        assert_eq!(new.digest.unwrap().as_str(), &d("new-key")[..8]);
    }
}

/// When several credential headers are bad at once, the refusal is the first of: a repeated
/// `Authorization`, a repeated `QB-Token`, a repeated `On-Behalf-Of`, an unreadable
/// `On-Behalf-Of`, then both credentials; wherever the fields stand in the request.
#[test]
fn several_bad_credential_headers_are_refused_in_one_order() {
    let p = policy("forward");
    let any = format!("ApiKey {KEY_ANY}");
    let e = |pairs: &[(&'static str, &str)]| auth(&p, pairs).unwrap_err();
    let repeated = GateError::BadHeader("a credential header is repeated");
    for pairs in [
        &[
            ("on-behalf-of", "1"),
            ("on-behalf-of", "x"),
            ("authorization", any.as_str()),
            ("authorization", any.as_str()),
        ][..],
        &[
            ("on-behalf-of", "x"),
            ("qb-token", "t"),
            ("authorization", any.as_str()),
            ("qb-token", "t"),
        ],
        &[("qb-token", "t"), ("qb-token", "t")],
    ] {
        assert_eq!(e(pairs), repeated, "{pairs:?}");
    }
    for pairs in [
        &[
            ("on-behalf-of", "1"),
            ("qb-token", "t"),
            ("on-behalf-of", "1"),
        ][..],
        &[("qb-token", "t"), ("on-behalf-of", "x")],
        &[("on-behalf-of", "x"), ("authorization", "Bearer nope")],
    ] {
        assert_eq!(e(pairs), GateError::BadOnBehalfOf, "{pairs:?}");
    }
    assert_eq!(
        e(&[
            ("qb-token", "t"),
            ("authorization", &any),
            ("on-behalf-of", "5")
        ]),
        GateError::BothCredentials
    );
}
