//! Tests of `path`.

use super::*;
use proptest::prelude::*;

fn n(path: &str) -> Result<CanonicalPath, GateError> {
    let raw = PathAndQuery::try_from(path).map_err(|_| GateError::BadPath("unparsable"))?;
    CanonicalPath::parse(&raw)
}

fn route(n: &CanonicalPath) -> Vec<&str> {
    n.route().collect()
}

fn segments(n: &CanonicalPath) -> Vec<&str> {
    n.segments().collect()
}

#[test]
fn case_and_json_suffix_do_not_change_the_route() {
    let a = n("/chat/Dialog/5d75.json").unwrap();
    let b = n("/CHAT/dialog/5D75").unwrap();
    let c = n("/chat/%44ialog/5d75.JSON").unwrap();
    assert_eq!(route(&a), ["chat", "dialog", "5d75"]);
    assert_eq!(route(&b), route(&a));
    assert_eq!(route(&c), route(&a));
    assert_eq!(a.route_key(), "chat/dialog/5d75");
    assert_eq!(segments(&a), ["chat", "Dialog", "5d75.json"]);
    assert_eq!(segments(&b), ["CHAT", "dialog", "5D75"]);
    assert_eq!(segments(&c), ["chat", "Dialog", "5d75.JSON"]);
    assert_eq!(a.len(), 3);
}

#[test]
fn ambiguous_paths_are_refused() {
    for bad in [
        "/chat/../Dialog",
        "/chat/./Dialog",
        "/chat//Dialog",
        "/chat/Dialog/",
        "/chat%2FDialog",
        "/chat%2fDialog",
        "/chat/%2e%2e/x",
        "/chat/%2E",
        "/a%5Cb",
        "/a\\b",
        "/a%00b",
        "/a%0d%0ab",
        "/a%ff",
        "/a%zz",
        "/a%4",
        "chat",
        "/a%7f",
        // Outside ASCII: `ı` folds to `i` in a Unicode-aware case-insensitive match.
        "/chat/d%C4%B1alog/5d75.json",
        "/chat/D%C4%B0ALOG/5d75",
        "/chat/d%c4%b1alog",
        // Path parameters, raw or encoded.
        "/chat/Dialog/5d75;x=1.json",
        "/chat/Dialog/5d75.json;x=1",
        "/chat/Dialog/5d75%3B.json",
        "/chat;/Dialog",
    ] {
        assert!(n(bad).is_err(), "{bad} was accepted");
    }
    let root = n("/").unwrap();
    assert!(root.is_empty());
    assert_eq!(route(&root), Vec::<&str>::new());
    assert_eq!(segments(&root), Vec::<&str>::new());
    // Decoding happens once: %252e is the three characters "%2e", not a dot segment.
    assert_eq!(segments(&n("/a/%252e").unwrap()), ["a", "%2e"]);
}

#[test]
fn raw_bytes_outside_ascii_are_refused() {
    for bad in ["/chat/d\u{131}alog/5d75.json", "/caf\u{e9}"] {
        let raw = PathAndQuery::from_maybe_shared(bytes::Bytes::copy_from_slice(bad.as_bytes()));
        if let Ok(raw) = raw {
            assert!(CanonicalPath::parse(&raw).is_err(), "{bad} was accepted");
        }
    }
}

#[test]
fn only_a_path_that_needs_no_change_is_borrowed() {
    let plain = n("/chat/dialog/5d75").unwrap();
    assert!(plain.decoded.is_none() && plain.route.is_none());
    assert_eq!(plain.route_key(), "chat/dialog/5d75");
    assert_eq!(plain.route_segment(2), Some("5d75"));
    assert_eq!(plain.route_segment(3), None);
    let json = n("/chat/dialog.json").unwrap();
    assert!(json.route.is_none());
    assert_eq!(json.route_key(), "chat/dialog");
    let upper = n("/chat/Dialog.json").unwrap();
    assert!(upper.decoded.is_none());
    assert_eq!(upper.route_key(), "chat/dialog");
    // A decoded segment in the middle: the plain ones around it are copied in order.
    let mixed = n("/a/b%43/d/%65").unwrap();
    assert_eq!(segments(&mixed), ["a", "bC", "d", "e"]);
    assert_eq!(mixed.route_key(), "a/bc/d/e");
}

#[test]
fn the_forwarded_path_is_the_one_matched() {
    let cases = [
        ("", "/chat/Dialog.json?limit=5", "/chat/Dialog.json?limit=5"),
        ("", "/chat/%44ialog/5d75.json", "/chat/Dialog/5d75.json"),
        (
            "",
            "/chat/%44ialog/5d75.json?a=%2F",
            "/chat/Dialog/5d75.json?a=%2F",
        ),
        ("", "/a/%252e/%20x", "/a/%252e/%20x"),
        ("", "/a/b%7e%41", "/a/b~A"),
        (
            "/v2",
            "/chat/Dialog.json?a=%2F",
            "/v2/chat/Dialog.json?a=%2F",
        ),
        ("/v2", "/", "/v2/"),
        ("/v2", "/%41", "/v2/A"),
        ("", "/", "/"),
    ];
    for (base, incoming, sent) in cases {
        let path = n(incoming).unwrap();
        assert_eq!(path.forwarded(base).as_str(), sent, "{base} {incoming}");
        // What goes out reads back as the same path.
        let again = CanonicalPath::parse(
            &PathAndQuery::try_from(sent.strip_prefix(base).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(segments(&again), segments(&path));
    }
}

#[test]
fn route_labels_are_templates_of_the_route_key() {
    for (path, label) in [
        ("/", "/"),
        ("/chat/Dialog.json", "/chat/Dialog"),
        ("/chat/dialog/5d75", "/chat/Dialog/:id"),
        ("/chat/Message.json", "/chat/Message"),
        ("/chat/Message/5d75.json", "/chat/Message/:id"),
        ("/chat/Dialog/5d75/x", "other"),
        ("/session.json", "/session"),
        ("/users.json", "/users"),
        ("/users/7.json", "/users/:id"),
        ("/blobs", "/blobs"),
        ("/blobs/1/complete", "/blobs/:id"),
        ("/users/7/x", "other"),
        ("/anything", "other"),
    ] {
        assert_eq!(n(path).unwrap().route_label(), label, "{path}");
    }
}

/// The segments as the path splits them, each decoded on its own: what [`CanonicalPath`]
/// must give back, joined or not.
fn reference(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.split('/')
        .map(|raw| decode_segment(raw).ok().map(Cow::into_owned))
        .collect()
}

proptest! {
    #[test]
    fn never_panics_and_accepted_routes_are_clean(path in "/[ -~]{0,40}") {
        if let Ok(norm) = n(&path) {
            for s in norm.segments() {
                prop_assert!(!s.is_empty() && s != "." && s != "..");
                prop_assert!(!s.contains('/') && !s.contains('\\') && !s.contains(';'));
                prop_assert!(s.is_ascii());
            }
            // The forwarded path reads back as the same segments.
            let sent = norm.forwarded("");
            let again = CanonicalPath::parse(&sent).unwrap();
            prop_assert_eq!(segments(&again), segments(&norm));
            prop_assert_eq!(again.route_key(), norm.route_key());
        }
    }

    #[test]
    fn segments_and_route_are_the_segments_decoded_one_by_one(
        path in "(/([a-zA-Z.]|%[0-9a-fA-F]{2}){1,6}){0,5}(\\.json|\\.JSON)?",
    ) {
        let expected = reference(&path);
        match n(&path) {
            Ok(norm) => {
                let expected = expected.expect("accepted, so every segment decodes");
                prop_assert_eq!(norm.len(), expected.len());
                prop_assert_eq!(segments(&norm), expected.iter().map(String::as_str).collect::<Vec<_>>());
                let mut lower: Vec<String> = expected.iter().map(|s| s.to_ascii_lowercase()).collect();
                if let Some(last) = lower.last_mut() {
                    let kept = strip_json(last).len();
                    last.truncate(kept);
                }
                prop_assert_eq!(route(&norm), lower.iter().map(String::as_str).collect::<Vec<_>>());
            }
            Err(_) => prop_assert!(expected.is_none() || path.is_empty()),
        }
    }
}
