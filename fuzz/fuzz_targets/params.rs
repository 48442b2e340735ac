//! `content-type \n query \n body` -> `qbgate::params::parse`, then
//! `qbgate::rules::document::read` for every dialog route kind.
//! A content-type or query line that is exactly `-` means "absent".
#![no_main]

use libfuzzer_sys::fuzz_target;
use qbgate::rules::{DialogRoute, RuleOptions};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let (ct, rest) = common::line(data);
    let (query, body) = common::line(rest);
    let (Ok(ct), Ok(query)) = (std::str::from_utf8(ct), std::str::from_utf8(query)) else {
        return;
    };
    let ct = (ct != "-").then_some(ct);
    let query = (query != "-").then_some(query);
    let Ok(params) = qbgate::params::parse(ct, query, body) else {
        return;
    };
    assert!(!params.contains_key("_method"));
    let routes = [
        DialogRoute::Update {
            id: "5d75393ba28f9a17e1cb0f9e".into(),
        },
        DialogRoute::Create,
        DialogRoute::Delete {
            ids: vec!["a1".into(), "b2".into()],
        },
        DialogRoute::Unsupported,
    ];
    let opts = [
        RuleOptions::default(),
        RuleOptions {
            allow_fields: vec!["custom".into(), "name".into()],
        },
    ];
    for route in &routes {
        for o in &opts {
            let _ = qbgate::rules::document::read(route, &params, o);
        }
    }
});
