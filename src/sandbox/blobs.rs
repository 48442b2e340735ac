//! Content (blobs): their owners, the seed, and QuickBlox's blob endpoints (create, list own
//! paged, update, complete, delete).
//!
//! As everywhere in the sandbox, what is sent is applied: who may change which blob is the
//! gateway's job. Creating and listing need a user (the application gets 403 "Forbidden. Need
//! user."); a list shows the acting user's own blobs only.

use http::StatusCode;
use serde_json::{json, Map, Value};

use super::dialogs;
use super::reply::{base_error, Reply};
use super::sessions::Actor;
use super::{lock, seed, Sandbox};

/// One blob as QuickBlox stores it.
pub(super) struct Blob {
    id: u64,
    owner: u64,
    name: String,
    content_type: String,
    size: Option<u64>,
    completed: bool,
}

impl Blob {
    fn new(id: u64, owner: u64, name: String, content_type: String) -> Blob {
        Blob {
            id,
            owner,
            name,
            content_type,
            size: None,
            completed: false,
        }
    }

    fn to_json(&self) -> Value {
        json!({"blob": {
            "id": self.id,
            "uid": format!("{:032x}", self.id),
            "owner_id": self.owner,
            "name": self.name,
            "content_type": self.content_type,
            "size": self.size,
            "set_completed_at": self.completed.then_some("2019-09-01T00:00:00Z"),
        }})
    }
}

/// The seeded blobs (see [`seed`] for their ids and owners).
pub(super) fn seed_blobs() -> Vec<Blob> {
    use seed::*;
    let blob =
        |id: u64, owner: u64| Blob::new(id, owner, format!("seeded{id}.png"), "image/png".into());
    let mut blobs = vec![
        blob(BLOB_BY_RECIPE, RECIPE_USER),
        blob(BLOB_BY_OCCUPANT, OCCUPANT),
    ];
    blobs.extend((0..OWNER_BLOBS).map(|n| blob(OWNER_FIRST_BLOB + n, OWNER)));
    blobs.extend((0..HOARDER_BLOBS).map(|n| blob(HOARDER_FIRST_BLOB + n, OTHER_OCCUPANT)));
    blobs
}

fn need_user() -> Reply {
    base_error(StatusCode::FORBIDDEN, "Forbidden. Need user.")
}

fn not_found() -> Reply {
    base_error(StatusCode::NOT_FOUND, "Not found")
}

/// `blob[field]` as a string, from a nested or a flat document.
fn blob_field<'p>(params: &'p Map<String, Value>, field: &str) -> Option<&'p Value> {
    params.get("blob").and_then(|b| b.get(field))
}

impl Sandbox {
    /// The blob as the sandbox stores it (`{"blob":{..}}` with its `owner_id`).
    pub fn blob(&self, id: u64) -> Option<Value> {
        let state = lock(&self.inner.state);
        state.blobs.iter().find(|b| b.id == id).map(Blob::to_json)
    }

    pub(super) fn create_blob(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let Actor::User(me) = actor else {
            return need_user();
        };
        let text = |field| {
            blob_field(params, field)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mut state = lock(&self.inner.state);
        let id = state.blobs.iter().map(|b| b.id).max().unwrap_or(0) + 1;
        let blob = Blob::new(id, me, text("name"), text("content_type"));
        let mut body = blob.to_json();
        body["blob"]["blob_object_access"] = json!({
            "id": id,
            "blob_id": id,
            "object_access_type": "Write",
            "params": format!("https://api.quickblox.com/blobs/{id}/upload/?Content-Type={}", blob.content_type),
        });
        state.blobs.push(blob);
        (StatusCode::CREATED, body)
    }

    /// The acting user's blobs, `page` (from 1) of `per_page` (10, at most 100).
    pub(super) fn list_blobs(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let Actor::User(me) = actor else {
            return need_user();
        };
        let number = |name| {
            params
                .get(name)
                .and_then(dialogs::user_id)
                .filter(|n| *n > 0)
        };
        let page = number("page").unwrap_or(1);
        let per_page = number("per_page").unwrap_or(10).min(100);
        let state = lock(&self.inner.state);
        let own: Vec<&Blob> = state.blobs.iter().filter(|b| b.owner == me).collect();
        let skip = usize::try_from((page - 1).saturating_mul(per_page)).unwrap_or(usize::MAX);
        let items: Vec<Value> = own
            .iter()
            .skip(skip)
            .take(per_page as usize)
            .map(|b| b.to_json())
            .collect();
        (
            StatusCode::OK,
            json!({
                "current_page": page,
                "per_page": per_page,
                "total_entries": own.len(),
                "items": items,
            }),
        )
    }

    /// `PUT /blobs/<id>`: `blob[name]`, `blob[content_type]` replace the blob's.
    pub(super) fn update_blob(&self, id: &str, params: &Map<String, Value>) -> Reply {
        let mut state = lock(&self.inner.state);
        let Some(blob) = find(&mut state.blobs, id) else {
            return not_found();
        };
        if let Some(name) = blob_field(params, "name").and_then(Value::as_str) {
            blob.name = name.to_owned();
        }
        if let Some(kind) = blob_field(params, "content_type").and_then(Value::as_str) {
            blob.content_type = kind.to_owned();
        }
        (StatusCode::OK, blob.to_json())
    }

    /// `PUT /blobs/<id>/complete`: `blob[size]` declares the upload done.
    pub(super) fn complete_blob(&self, id: &str, params: &Map<String, Value>) -> Reply {
        let mut state = lock(&self.inner.state);
        let Some(blob) = find(&mut state.blobs, id) else {
            return not_found();
        };
        blob.size = blob_field(params, "size").and_then(dialogs::user_id);
        blob.completed = true;
        (StatusCode::OK, json!({}))
    }

    pub(super) fn delete_blob(&self, id: &str) -> Reply {
        let mut state = lock(&self.inner.state);
        let before = state.blobs.len();
        let id: Option<u64> = id.parse().ok();
        state.blobs.retain(|b| Some(b.id) != id);
        if state.blobs.len() == before {
            return not_found();
        }
        (StatusCode::OK, json!({}))
    }
}

fn find<'b>(blobs: &'b mut [Blob], id: &str) -> Option<&'b mut Blob> {
    let id: u64 = id.parse().ok()?;
    blobs.iter_mut().find(|b| b.id == id)
}

#[cfg(test)]
mod tests {
    use super::super::routing::{route, Route};
    use super::*;

    #[test]
    fn blob_routes() {
        assert_eq!(route("/blobs.json").route, Route::Blobs);
        assert_eq!(route("/blobs/5.json").route, Route::Blob("5".into()));
        assert_eq!(
            route("/Blobs/5/complete.json").route,
            Route::BlobComplete("5".into())
        );
        assert_eq!(route("/blobs/5.json/complete").route, Route::Unknown);
        assert_eq!(route("/blobs/5/upload").route, Route::Unknown);
    }

    #[test]
    fn a_list_is_the_users_own_paged() {
        let sandbox = Sandbox::new(None);
        let page = |n: &str| {
            let params: Map<String, Value> = [
                ("page".to_owned(), json!(n)),
                ("per_page".to_owned(), json!("100")),
            ]
            .into_iter()
            .collect();
            sandbox.list_blobs(Actor::User(seed::OWNER), &params).1
        };
        let (first, second) = (page("1"), page("2"));
        assert_eq!(first["total_entries"], seed::OWNER_BLOBS);
        assert_eq!(first["items"].as_array().unwrap().len(), 100);
        assert_eq!(second["items"].as_array().unwrap().len(), 50);
        assert_eq!(
            second["items"][0]["blob"]["id"],
            seed::OWNER_FIRST_BLOB + 100
        );
        let app = sandbox.list_blobs(Actor::Application, &Map::new());
        assert_eq!(app.0, StatusCode::FORBIDDEN);
    }
}
