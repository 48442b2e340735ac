//! `path \n query \n header lines` -> `qbgate::request::normalize`, then the dialog
//! classification of the accepted route for every method that reaches the rules.
//! A query line that is exactly `-` means "no query".
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const METHODS: [http::Method; 5] = [
    http::Method::GET,
    http::Method::PUT,
    http::Method::PATCH,
    http::Method::POST,
    http::Method::DELETE,
];

fuzz_target!(|data: &[u8]| {
    let (path, rest) = common::line(data);
    let (query, rest) = common::line(rest);
    let (Ok(path), Ok(query)) = (std::str::from_utf8(path), std::str::from_utf8(query)) else {
        return;
    };
    let query = (query != "-").then_some(query);
    let headers = common::headers(rest);
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let Ok(uri) = target.parse::<http::Uri>() else {
        return;
    };
    let mut parts = http::Request::get(uri).body(()).unwrap().into_parts().0;
    parts.headers = headers;
    if let Ok(request) = qbgate::request::normalize(&mut parts, true) {
        let n = request.path();
        // Invariants: the route key is the lowercased segments, same count.
        assert_eq!(n.route().count(), n.len());
        assert_eq!(n.segments().count(), n.len());
        for (r, s) in n.route().zip(n.segments()) {
            assert!(s.to_ascii_lowercase().starts_with(r));
            assert!(
                !s.is_empty() && s != "." && s != "..",
                "segment {s:?} accepted"
            );
            assert!(!s.contains('/'), "segment {s:?} contains a slash");
            assert!(s.is_ascii() && !s.contains(';'), "segment {s:?} accepted");
        }
        // No header a decision reads is left twice, none with `_`, none that is hop-by-hop.
        for name in request.headers().keys() {
            assert!(!name.as_str().contains('_'), "{name} kept");
            assert!(name != http::header::CONNECTION && name != http::header::TE, "{name} kept");
        }
        // The path that goes out reads back as the same one.
        let sent = n.forwarded("");
        let again = qbgate::request::CanonicalPath::parse(&sent).expect("forwarded path reads back");
        assert_eq!(again.route_key(), n.route_key());
        let segs: Vec<&str> = n.segments().collect();
        for m in &METHODS {
            let _ = qbgate::rules::classify(m, &segs);
        }
    }
});
