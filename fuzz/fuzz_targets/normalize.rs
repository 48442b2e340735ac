//! `path \n query \n header lines` -> `qbgate::normalize::normalize`, then the dialog
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
    if let Ok(n) = qbgate::normalize::normalize(path, query, &headers) {
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
        }
        let segs: Vec<&str> = n.segments().collect();
        for m in &METHODS {
            let _ = qbgate::rules::classify(m, &segs);
        }
    }
});
