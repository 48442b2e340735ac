//! Blob (content) ownership: what a key acting for user U may change under `/blobs`. QuickBlox
//! does not narrow an API key by `On-Behalf-Of`, so the gateway lets U change only U's own
//! blobs. Always enforced (`dialog_rules.mode` does not apply); a failed lookup of U's blobs
//! follows `dialog_rules.on_lookup_error`.
//!
//! | request | allowed when | else |
//! |---|---|---|
//! | `POST /blobs`, `GET /blobs...`, `POST /blobs/{id}/upload` | always (not judged here) | |
//! | `PUT` (or `PATCH`) `/blobs/{id}`, `PUT /blobs/{id}/complete`, `DELETE /blobs/{id}` | `id` is one of U's blobs (`GET /blobs.json` as U) | 403 `blob_not_owner` |
//! | ... with an id that is not a positive integer, or a dot before the last segment | never | 400 `blob_id` |
//!
//! The flow: [`classify`] the route (the id read), then [`check`] it against U's blob ids as
//! the upstream lists them ([`read_page`] reads one page of that list).

use std::collections::HashSet;

use http::Method;
use serde_json::Value;

use super::{Rejection, NO_PERMISSION};
use crate::policy::stem;

/// A blob write judged for its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobRoute {
    /// `PUT /blobs/{id}`.
    Update { id: u64 },
    /// `PUT /blobs/{id}/complete`.
    Complete { id: u64 },
    /// `DELETE /blobs/{id}`.
    Delete { id: u64 },
}

impl BlobRoute {
    /// The blob the request names.
    pub fn id(self) -> u64 {
        match self {
            BlobRoute::Update { id } | BlobRoute::Complete { id } | BlobRoute::Delete { id } => id,
        }
    }
}

/// The blob write `method` and the decoded path `segments` make, if any: `None` for every
/// other request (they pass unjudged); `Err` (400 `blob_id`) for a write whose id is not a
/// positive integer.
pub fn classify(method: &Method, segments: &[&str]) -> Option<Result<BlobRoute, Rejection>> {
    let segs: Vec<&str> = segments.iter().copied().filter(|s| !s.is_empty()).collect();
    let word = |s: &str, w: &str| stem(s).eq_ignore_ascii_case(w);
    let put = *method == Method::PUT || *method == Method::PATCH;
    let delete = *method == Method::DELETE;
    if !(put || delete) || !segs.first().is_some_and(|s| word(s, "blobs")) {
        return None;
    }
    let (raw, make): (&str, fn(u64) -> BlobRoute) = match segs.as_slice() {
        [_, id] if put => (id, |id| BlobRoute::Update { id }),
        [_, id] => (id, |id| BlobRoute::Delete { id }),
        [_, id, last] if put && word(last, "complete") => (id, |id| BlobRoute::Complete { id }),
        _ => return None,
    };
    // Rails' segment constraint: no extension before the last segment.
    if segs[..segs.len() - 1].iter().any(|s| s.contains('.')) {
        return Some(Err(bad_id()));
    }
    Some(blob_id(stem(raw)).map(make).ok_or_else(bad_id))
}

/// A positive decimal integer, as QuickBlox numbers blobs.
fn blob_id(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|id| *id > 0)
}

fn bad_id() -> Rejection {
    Rejection {
        status: 400,
        reason: "blob_id",
        field: None,
        message: "a blob id is a positive integer".into(),
    }
}

/// Judges a blob write against the ids of U's blobs: 403 `blob_not_owner` when it is not one.
pub fn check(route: BlobRoute, owned: &HashSet<u64>) -> Result<(), Rejection> {
    if owned.contains(&route.id()) {
        Ok(())
    } else {
        Err(Rejection::forbidden("blob_not_owner", NO_PERMISSION))
    }
}

/// One page of `GET /blobs.json` as QuickBlox answers it: the blob ids on it and
/// `total_entries`. `None` when the answer is not of that shape (a failed lookup).
pub fn read_page(v: &Value) -> Option<(Vec<u64>, u64)> {
    let total = v.get("total_entries")?.as_u64()?;
    let items = v.get("items")?.as_array()?;
    let ids = items
        .iter()
        .map(|item| item.get("blob")?.get("id")?.as_u64().filter(|id| *id > 0))
        .collect::<Option<Vec<u64>>>()?;
    Some((ids, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(method: Method, path: &str) -> Option<Result<BlobRoute, Rejection>> {
        let segments: Vec<&str> = path.split('/').collect();
        classify(&method, &segments)
    }

    #[test]
    fn classifies_the_judged_writes_only() {
        assert_eq!(
            route(Method::PUT, "/blobs/12.json"),
            Some(Ok(BlobRoute::Update { id: 12 }))
        );
        assert_eq!(
            route(Method::PUT, "/Blobs/12/complete.json"),
            Some(Ok(BlobRoute::Complete { id: 12 }))
        );
        assert_eq!(
            route(Method::DELETE, "/blobs/7"),
            Some(Ok(BlobRoute::Delete { id: 7 }))
        );
        for (method, path) in [
            (Method::POST, "/blobs.json"),
            (Method::GET, "/blobs/12.json"),
            (Method::POST, "/blobs/12/upload"),
            (Method::DELETE, "/blobs/12/complete"),
            (Method::PUT, "/users/12.json"),
        ] {
            assert_eq!(route(method.clone(), path), None, "{method} {path}");
        }
        for path in [
            "/blobs/0.json",
            "/blobs/abc",
            "/blobs/-1",
            "/blobs/+1",
            "/blobs/1e3",
        ] {
            let got = route(Method::PUT, path).unwrap().unwrap_err();
            assert_eq!((got.status, got.reason), (400, "blob_id"), "{path}");
        }
        for path in [
            "/blobs/x/complete",
            "/blobs/1.json/complete",
            "/blobs.json/1",
        ] {
            let got = route(Method::PUT, path).unwrap().unwrap_err();
            assert_eq!(got.reason, "blob_id", "{path}");
        }
    }

    #[test]
    fn only_owned_ids_pass() {
        let owned: HashSet<u64> = [1, 2].into_iter().collect();
        assert!(check(BlobRoute::Delete { id: 2 }, &owned).is_ok());
        let refused = check(BlobRoute::Update { id: 3 }, &owned).unwrap_err();
        assert_eq!((refused.status, refused.reason), (403, "blob_not_owner"));
    }

    #[test]
    fn reads_a_list_page() {
        let page = json!({"current_page":1,"per_page":10,"total_entries":2,
            "items":[{"blob":{"id":5,"uid":"u"}},{"blob":{"id":9}}]});
        assert_eq!(read_page(&page), Some((vec![5, 9], 2)));
        assert_eq!(read_page(&json!({"items":[]})), None);
        assert_eq!(
            read_page(&json!({"total_entries":1,"items":[{"blob":{"id":"5"}}]})),
            None
        );
    }
}
