//! Upstream state the rules need, fetched by the proxy (rules judge, they never fetch): dialogs (`GET /chat/Dialog.json?_id=<id>`), messages' dialog and sender
//! (`GET /chat/Message.json?chat_dialog_id=<d>&_id=<id>`, or `_id[in]=<a>,<b>`) and the user
//! behind a QB-Token (`GET /session.json`), each in a bounded TTL cache.
//!
//! moka's `try_get_with` makes concurrent requests for one dialog share one lookup; failures are
//! not cached. Dialogs are looked up with the gateway's upstream key and no `On-Behalf-Of`, acting
//! as the application: a user's own lookup would come back empty for a dialog he is not in, which
//! would turn the rule table's 403 into a 404 and make one cache entry depend on who asked first.
//! Without an upstream key the caller's own credentials are used. Messages are looked up the same
//! way, without `On-Behalf-Of`, for one more reason: a list fetched as U marks its messages read
//! for U.
//!
//! U's blobs are the exception: QuickBlox lists only the caller's own (`GET /blobs.json`, paged),
//! so they are looked up as U (`On-Behalf-Of: U`), at most [`BLOB_PAGES`] pages, cached per user
//! for at most [`BLOB_TTL`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use moka::future::Cache;

use crate::metrics::{lookup_cache, lookup_cache_n, LookupCache};
use crate::policy::Policy;
use crate::rules::messages::MessageFacts;
use crate::rules::Dialog;
use crate::upstream::{HttpClient, ProxyBody};

/// Largest lookup answer read: a dialog list of one.
const MAX_LOOKUP_BYTES: usize = 256 * 1024;
/// Bound on cached dialogs and sessions: enough for a busy sidecar, a few MiB at most.
const MAX_ENTRIES: u64 = 50_000;

/// Blob list pages read for one user, of [`BLOB_PER_PAGE`]; more blobs than that: a failed
/// lookup.
pub const BLOB_PAGES: u64 = 10;
/// Blobs per list page asked for (QuickBlox's largest).
pub const BLOB_PER_PAGE: u64 = 100;
/// Longest a user's blob list is kept.
pub const BLOB_TTL: Duration = Duration::from_secs(30);

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The upstream says there is no such dialog (or session).
    NotFound,
    /// Unreachable, timed out, or an answer the gateway could not read.
    Failed,
}

/// The dialog and session caches, shared across policy generations with the same TTL.
#[derive(Clone)]
pub struct Lookups {
    ttl: Duration,
    dialogs: Cache<String, Arc<Dialog>>,
    sessions: Cache<[u8; 32], Option<u64>>,
    /// Message id -> its dialog and sender; a message's sender and dialog never change.
    messages: Cache<String, Arc<MessageFacts>>,
    /// User -> the ids of his blobs.
    blobs: Cache<u64, Arc<HashSet<u64>>>,
    /// Push: event id -> its owner, and a user's subscription ids ([`PushLookups`]).
    push: PushLookups,
}

impl Lookups {
    pub fn new(ttl: Duration) -> Self {
        Lookups {
            ttl,
            dialogs: cache(MAX_ENTRIES, ttl),
            sessions: cache(MAX_ENTRIES, ttl),
            messages: cache(MAX_ENTRIES, ttl),
            blobs: cache(MAX_ENTRIES / 10, ttl.min(BLOB_TTL)),
            push: PushLookups::new(ttl),
        }
    }

    /// The push lookups (events' owners, users' subscriptions).
    pub fn push(&self) -> &PushLookups {
        &self.push
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The dialog `id`, from the cache or one shared upstream lookup.
    pub async fn dialog(
        &self,
        client: &HttpClient,
        policy: &Policy,
        caller: &HeaderMap,
        id: &str,
    ) -> Result<Arc<Dialog>, LookupError> {
        if self.ttl.is_zero() {
            crate::metrics::dialog_cache("miss");
            lookup_cache(LookupCache::Dialog, false);
            return fetch_dialog(client, policy, caller, id).await.map(Arc::new);
        }
        if let Some(dialog) = self.dialogs.get(id).await {
            crate::metrics::dialog_cache("hit");
            lookup_cache(LookupCache::Dialog, true);
            return Ok(dialog);
        }
        crate::metrics::dialog_cache("miss");
        lookup_cache(LookupCache::Dialog, false);
        self.dialogs
            .try_get_with(id.to_string(), async {
                fetch_dialog(client, policy, caller, id).await.map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// The user behind a QB-Token (`None`: an application session).
    pub async fn session_user(
        &self,
        client: &HttpClient,
        policy: &Policy,
        caller: &HeaderMap,
        digest: [u8; 32],
    ) -> Result<Option<u64>, LookupError> {
        self.sessions
            .try_get_with(digest, fetch_session(client, policy, caller))
            .await
            .map_err(|e| (*e).clone())
    }

    /// A successful update returned the dialog as it now is: later checks see it at once.
    pub async fn replace(&self, dialog: Dialog) {
        // An answer that changes nothing the rules read (a rename, a photo) leaves the entry as
        // it is: a cache insert costs more than the whole check. The entry then expires as
        // first fetched, which only makes the cache more cautious.
        if self
            .dialogs
            .get(&dialog.id)
            .await
            .is_some_and(|cached| *cached == dialog)
        {
            return;
        }
        self.dialogs
            .insert(dialog.id.clone(), Arc::new(dialog))
            .await;
    }

    /// A successful update returned the dialog as it now is, different from what it was judged
    /// against: later checks see it at once.
    pub async fn insert(&self, dialog: Dialog) {
        self.dialogs
            .insert(dialog.id.clone(), Arc::new(dialog))
            .await;
    }

    /// The messages `ids` of dialog `dialog` that exist (a missing one is left out), from the
    /// cache or the upstream: one id is one shared lookup, several uncached ones one
    /// `_id[in]` lookup. A cached message of another dialog is returned as it is (the rules
    /// refuse it).
    pub async fn messages(
        &self,
        client: &HttpClient,
        policy: &Policy,
        caller: &HeaderMap,
        dialog: &str,
        ids: &[String],
    ) -> Result<Vec<Arc<MessageFacts>>, LookupError> {
        let mut found = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match self.messages.get(id).await {
                Some(facts) if !self.ttl.is_zero() => found.push(facts),
                _ => missing.push(id.as_str()),
            }
        }
        lookup_cache_n(LookupCache::Message, true, found.len());
        lookup_cache_n(LookupCache::Message, false, missing.len());
        match missing.as_slice() {
            [] => {}
            [id] if !self.ttl.is_zero() => {
                let one = self
                    .messages
                    .try_get_with(id.to_string(), async {
                        fetch_messages(client, policy, caller, dialog, &[id])
                            .await?
                            .pop()
                            .map(Arc::new)
                            .ok_or(LookupError::NotFound)
                    })
                    .await
                    .map_err(|e| (*e).clone());
                match one {
                    Ok(facts) => found.push(facts),
                    Err(LookupError::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            _ => {
                for facts in fetch_messages(client, policy, caller, dialog, &missing).await? {
                    let facts = Arc::new(facts);
                    if !self.ttl.is_zero() {
                        self.messages.insert(facts.id.clone(), facts.clone()).await;
                    }
                    found.push(facts);
                }
            }
        }
        Ok(found)
    }

    /// Whether message answers are worth learning from: not when lookups are uncached.
    pub fn learns_messages(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Messages an answer through the gateway showed (a list, a create): their dialog and sender
    /// never change, so a later edit or force delete needs no lookup. One already cached is left
    /// as it is (an insert costs more than the check).
    pub async fn learn_messages(&self, learned: Vec<MessageFacts>) {
        for facts in learned {
            if !self.messages.contains_key(&facts.id) {
                self.messages
                    .insert(facts.id.clone(), Arc::new(facts))
                    .await;
            }
        }
    }

    /// These messages were deleted (or may have been): forget them.
    pub async fn evict_messages(&self, ids: &[String]) {
        for id in ids {
            self.messages.invalidate(id).await;
        }
    }

    /// The ids of `user`'s blobs, from the cache or one shared lookup; a cached list that lacks
    /// `id` is fetched again (the blob may have been created since), once.
    pub async fn blobs(
        &self,
        client: &HttpClient,
        policy: &Policy,
        caller: &HeaderMap,
        user: u64,
        id: u64,
    ) -> Result<Arc<HashSet<u64>>, LookupError> {
        if self.ttl.is_zero() {
            lookup_cache(LookupCache::Blobs, false);
            return fetch_blobs(client, policy, caller, user)
                .await
                .map(Arc::new);
        }
        if let Some(owned) = self.blobs.get(&user).await {
            if owned.contains(&id) {
                lookup_cache(LookupCache::Blobs, true);
                return Ok(owned);
            }
            self.blobs.invalidate(&user).await;
        }
        lookup_cache(LookupCache::Blobs, false);
        self.blobs
            .try_get_with(user, async {
                fetch_blobs(client, policy, caller, user)
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone())
    }

    /// `user` deleted (or may have deleted) a blob: forget his list.
    pub async fn evict_blobs(&self, user: u64) {
        self.blobs.invalidate(&user).await;
    }

    /// The upstream refused or deleted these dialogs: forget them.
    pub async fn evict(&self, ids: &[String]) {
        for id in ids {
            self.dialogs.invalidate(id).await;
        }
    }
}

async fn fetch_dialog(
    client: &HttpClient,
    policy: &Policy,
    caller: &HeaderMap,
    id: &str,
) -> Result<Dialog, LookupError> {
    // `id` passed `rules::classify`: letters, digits, `-` and `_`, nothing to escape.
    let (status, body) = get(
        client,
        policy,
        caller,
        &format!("/chat/Dialog.json?_id={id}"),
        false,
    )
    .await?;
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Err(LookupError::NotFound),
        _ => return Err(LookupError::Failed),
    }
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| LookupError::Failed)?;
    let items = json
        .get("items")
        .and_then(|i| i.as_array())
        .ok_or(LookupError::Failed)?;
    let item = items
        .iter()
        .find(|d| d.get("_id").and_then(|v| v.as_str()) == Some(id));
    match item {
        None => Err(LookupError::NotFound),
        Some(item) => Dialog::from_json(item).ok_or(LookupError::Failed),
    }
}

/// The messages `ids` of `dialog` that the upstream lists; ids come from `rules::messages`
/// (plain tokens, nothing to escape).
async fn fetch_messages(
    client: &HttpClient,
    policy: &Policy,
    caller: &HeaderMap,
    dialog: &str,
    ids: &[&str],
) -> Result<Vec<MessageFacts>, LookupError> {
    let filter = match ids {
        [id] => format!("_id={id}"),
        _ => format!("_id%5Bin%5D={}", ids.join(",")),
    };
    let path = format!(
        "/chat/Message.json?chat_dialog_id={dialog}&{filter}&limit={}",
        ids.len().max(1)
    );
    let (status, body) = get(client, policy, caller, &path, false).await?;
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(Vec::new()),
        _ => return Err(LookupError::Failed),
    }
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| LookupError::Failed)?;
    let items = json
        .get("items")
        .and_then(|i| i.as_array())
        .ok_or(LookupError::Failed)?;
    let mut found = Vec::with_capacity(ids.len());
    for item in items {
        let facts = MessageFacts::from_json(item).ok_or(LookupError::Failed)?;
        if ids.contains(&facts.id.as_str()) {
            found.push(facts);
        }
    }
    Ok(found)
}

/// The ids of `user`'s blobs: `GET /blobs.json` as `user`, page by page, at most
/// [`BLOB_PAGES`] pages; a list longer than that, or any page that is not a list, fails.
async fn fetch_blobs(
    client: &HttpClient,
    policy: &Policy,
    caller: &HeaderMap,
    user: u64,
) -> Result<HashSet<u64>, LookupError> {
    let mut owned = HashSet::new();
    for page in 1..=BLOB_PAGES {
        let path = format!("/blobs.json?page={page}&per_page={BLOB_PER_PAGE}");
        let (status, body) = get_as(client, policy, caller, &path, false, Some(user)).await?;
        if status != StatusCode::OK {
            return Err(LookupError::Failed);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| LookupError::Failed)?;
        let (ids, total) = crate::rules::blobs::read_page(&json).ok_or(LookupError::Failed)?;
        let last = (ids.len() as u64) < BLOB_PER_PAGE;
        owned.extend(ids);
        if last || owned.len() as u64 >= total || page * BLOB_PER_PAGE >= total {
            return Ok(owned);
        }
    }
    // More blobs than the pages read: which are his is not known.
    Err(LookupError::Failed)
}

async fn fetch_session(
    client: &HttpClient,
    policy: &Policy,
    caller: &HeaderMap,
) -> Result<Option<u64>, LookupError> {
    let (status, body) = get(client, policy, caller, "/session.json", true).await?;
    match status {
        StatusCode::OK => {}
        StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND => return Err(LookupError::NotFound),
        _ => return Err(LookupError::Failed),
    }
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| LookupError::Failed)?;
    let session = json.get("session").ok_or(LookupError::Failed)?;
    Ok(session
        .get("user_id")
        .and_then(|u| u.as_u64())
        .filter(|u| *u > 0))
}

/// One GET to the upstream with the right credentials; the answer read whole (bounded).
async fn get(
    client: &HttpClient,
    policy: &Policy,
    caller: &HeaderMap,
    path: &str,
    as_token: bool,
) -> Result<(StatusCode, Bytes), LookupError> {
    get_as(client, policy, caller, path, as_token, None).await
}

/// [`get`], with the upstream key acting for `user` (`On-Behalf-Of`) when it is given.
async fn get_as(
    client: &HttpClient,
    policy: &Policy,
    caller: &HeaderMap,
    path: &str,
    as_token: bool,
    user: Option<u64>,
) -> Result<(StatusCode, Bytes), LookupError> {
    let upstream = &policy.upstream;
    let uri = format!("{}{}", upstream.base_path, path);
    let mut request = Request::get(uri)
        .body(ProxyBody::empty())
        .map_err(|_| LookupError::Failed)?;
    let headers = request.headers_mut();
    headers.insert(
        header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    if as_token {
        if let Some(token) = caller.get("qb-token") {
            headers.insert("qb-token", token.clone());
        }
    } else if let Some(key) = &upstream.authorization {
        headers.insert(header::AUTHORIZATION, key.clone());
        if let Some(user) = user {
            headers.insert("on-behalf-of", http::HeaderValue::from(user));
        }
    } else {
        for name in [header::AUTHORIZATION.as_str(), "on-behalf-of", "qb-token"] {
            if let Some(value) = caller.get(name) {
                headers.insert(http::HeaderName::from_static(name), value.clone());
            }
        }
    }
    let response = tokio::time::timeout(
        upstream.timeout,
        client.send(&mut request, std::time::Instant::now()),
    )
    .await
    .map_err(|_| LookupError::Failed)?
    .map_err(|_| LookupError::Failed)?;
    let status = response.status();
    let body = tokio::time::timeout(
        upstream.timeout,
        http_body_util::Limited::new(response.into_body(), MAX_LOOKUP_BYTES).collect(),
    )
    .await
    .map_err(|_| LookupError::Failed)?
    .map_err(|_| LookupError::Failed)?
    .to_bytes();
    Ok((status, body))
}

// Push lookups: an event's owner (`GET /events/{id}.json` with the upstream key, no
// `On-Behalf-Of`: an event's owner never changes) and a user's subscription ids
// (`GET /subscriptions.json` as the user: QuickBlox lists only the session user's).

/// How long a user's subscription list is trusted: short, a device subscribes at any time.
const SUBSCRIPTIONS_TTL: Duration = Duration::from_secs(10);

/// The push caches.
#[derive(Clone)]
pub struct PushLookups {
    ttl: Duration,
    /// Event id -> its owner (`user_id`).
    events: Cache<u64, u64>,
    /// User -> his subscription ids.
    subscriptions: Cache<u64, Arc<Vec<u64>>>,
}

impl PushLookups {
    fn new(ttl: Duration) -> Self {
        PushLookups {
            ttl,
            events: cache(MAX_ENTRIES, ttl),
            subscriptions: cache(MAX_ENTRIES, ttl.min(SUBSCRIPTIONS_TTL)),
        }
    }

    /// The owner of event `id`, from the cache or one shared lookup; `NotFound`: no such event.
    pub async fn event_owner(
        &self,
        client: &HttpClient,
        policy: &Policy,
        caller: &HeaderMap,
        id: u64,
    ) -> Result<u64, LookupError> {
        if self.ttl.is_zero() {
            lookup_cache(LookupCache::Event, false);
            return fetch_event_owner(client, policy, caller, id).await;
        }
        // A request that shares another's lookup in flight counts as a hit: it made none.
        let mut fetched = false;
        let owner = self
            .events
            .try_get_with(id, async {
                fetched = true;
                fetch_event_owner(client, policy, caller, id).await
            })
            .await
            .map_err(|e| (*e).clone());
        lookup_cache(LookupCache::Event, !fetched);
        owner
    }

    /// Is `id` one of `user`'s subscriptions? A cached list without it is fetched again once (the
    /// subscription may be newer than the list).
    pub async fn owns_subscription(
        &self,
        client: &HttpClient,
        policy: &Policy,
        caller: &HeaderMap,
        user: u64,
        id: u64,
    ) -> Result<bool, LookupError> {
        if self.ttl.is_zero() {
            lookup_cache(LookupCache::Subscriptions, false);
            let ids = fetch_subscriptions(client, policy, caller, user).await?;
            return Ok(ids.contains(&id));
        }
        if let Some(ids) = self.subscriptions.get(&user).await {
            if ids.contains(&id) {
                lookup_cache(LookupCache::Subscriptions, true);
                return Ok(true);
            }
            self.subscriptions.invalidate(&user).await;
        }
        lookup_cache(LookupCache::Subscriptions, false);
        let ids = self
            .subscriptions
            .try_get_with(user, async {
                fetch_subscriptions(client, policy, caller, user)
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(|e| (*e).clone())?;
        Ok(ids.contains(&id))
    }

    /// Event `id` was deleted (or may have been): forget it.
    pub async fn evict_event(&self, id: u64) {
        self.events.invalidate(&id).await;
    }

    /// `user`'s subscriptions changed (or may have): forget them.
    pub async fn evict_subscriptions(&self, user: u64) {
        self.subscriptions.invalidate(&user).await;
    }
}

async fn fetch_event_owner(
    client: &HttpClient,
    policy: &Policy,
    caller: &HeaderMap,
    id: u64,
) -> Result<u64, LookupError> {
    let (status, body) = get(client, policy, caller, &format!("/events/{id}.json"), false).await?;
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Err(LookupError::NotFound),
        _ => return Err(LookupError::Failed),
    }
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| LookupError::Failed)?;
    json.get("event")
        .and_then(|e| e.get("user_id"))
        .and_then(|u| u.as_u64())
        .ok_or(LookupError::Failed)
}

/// `user`'s subscription ids: `GET /subscriptions.json` with `On-Behalf-Of: user` (QuickBlox lists
/// the acting user's); a 404 is no subscription.
async fn fetch_subscriptions(
    client: &HttpClient,
    policy: &Policy,
    caller: &HeaderMap,
    user: u64,
) -> Result<Vec<u64>, LookupError> {
    let (status, body) = get_as(
        client,
        policy,
        caller,
        "/subscriptions.json",
        false,
        Some(user),
    )
    .await?;
    match status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(Vec::new()),
        _ => return Err(LookupError::Failed),
    }
    let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| LookupError::Failed)?;
    let items = json.as_array().ok_or(LookupError::Failed)?;
    items
        .iter()
        .map(|item| {
            item.get("subscription")
                .and_then(|s| s.get("id"))
                .and_then(|id| id.as_u64())
                .ok_or(LookupError::Failed)
        })
        .collect()
}

/// A bounded TTL cache of `capacity` entries; a zero TTL (lookups uncached) still builds one,
/// which nothing reads.
fn cache<K, V>(capacity: u64, ttl: Duration) -> Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    Cache::builder()
        .max_capacity(capacity)
        .time_to_live(ttl.max(Duration::from_millis(1)))
        .build()
}
