//! The QuickBlox-like upstream behind `qbgate demo` and every integration test.
//!
//! It serves QuickBlox's dialog API from memory, with QuickBlox's response shapes, and records
//! every request it receives so a test can assert what the gateway forwarded. It *applies* what it
//! is sent: judging who may change what is the gateway's job, so the only requests it refuses are
//! unauthenticated or malformed ones and the validations QuickBlox itself makes (a name over 200
//! characters, a private dialog with more than two occupants). It can also misbehave on demand
//! ([`Fault`]): fail, stall, reset, send GOAWAY or stream a large body.
//!
//! # Endpoints
//! | request | answer |
//! |---|---|
//! | `GET /session.json` (QB-Token) | `{"session":{"user_id":N,"token":"..",..}}` |
//! | `GET /chat/Dialog.json` | `{"total_entries","skip","limit","items"}`; filters `_id`, `_id[in]`, `type`, `limit`, `skip` |
//! | `POST /chat/Dialog.json` | the new dialog |
//! | `PUT /chat/Dialog/<id>.json` | the updated dialog: `name`, `photo`, `push_all`/`pull_all` of `occupants_ids`/`admin_ids`, `data` (merged), `user_id` |
//! | `DELETE /chat/Dialog/<id>[,<id>..].json` | `{"SuccessfullyDeleted":{"ids":[..]},"NotFound":{"ids":[..]},"WrongPermissions":{"ids":[]}}`, 404 when no id exists |
//!
//! `.json` is optional. Parameters are read like Rails reads them: a JSON object or a form body
//! merged with the query string, by the gateway's own [`crate::params::parse`] so both sides read
//! one document; what it refuses (duplicate keys, `_method`, a body type it cannot read) gets its
//! 400 or 415. Every response is JSON with `Content-Type: application/json; charset=utf-8` and
//! Rails' `X-Runtime` header; anything unrouted is a JSON 404.
//!
//! # Who is acting
//! `Authorization: ApiKey <key>` acts as the application, or as the `On-Behalf-Of` user when that
//! header is present; `QB-Token` acts as the session's user (`On-Behalf-Of` is then ignored). Both
//! credentials at once is a 400. The application sees every dialog; a user sees the dialogs he
//! occupies or owns, plus every PUBLIC_GROUP dialog. `DELETE` without `force=1` removes the acting
//! user from the occupants (the application, having no user, gets 403 "Forbidden. Need user.");
//! with `force=1` it deletes the dialogs for everyone.
//!
//! # Seed
//! Chosen so that every recipe of QuickBlox's "Update dialog" reference, replayed with
//! `On-Behalf-Of: 123` or with the recipe's own `QB-Token`, reaches the documented result under
//! the permission rules of `FACTS.md`: user 123 owns the GROUP dialog (so he may rename it, add
//! and remove others, and hand it over to 96753877, already an occupant) and occupies the PRIVATE
//! dialog (so he may set its custom data).
//!
//! | dialog | `_id` | type | owner (`user_id`) | `occupants_ids` | `data` |
//! |---|---|---|---|---|---|
//! | [`seed::PUBLIC_ID`] | `5d75393ba28f9a17e1cb0f01` | 1 PUBLIC_GROUP | [`seed::OWNER`] 96753878 | none | none |
//! | [`seed::GROUP_ID`] | `5d75393ba28f9a17e1cb0f9e` | 2 GROUP | [`seed::RECIPE_USER`] 123 | 123, 96753878, 96754523, 96830631, 96753877 | none |
//! | [`seed::PRIVATE_ID`] | `5cc748eca0eb470d452adaaa` | 3 PRIVATE | [`seed::OCCUPANT`] 96754523 | 96754523, 123 | `class_name: CoolDialog, category: family` |
//!
//! | user | role |
//! |---|---|
//! | [`seed::RECIPE_USER`] 123 | owner of GROUP, occupant (not owner) of PRIVATE; the recipes' `On-Behalf-Of` |
//! | [`seed::OWNER`] 96753878 | owner of PUBLIC_GROUP, occupant (not owner) of GROUP |
//! | [`seed::OCCUPANT`] 96754523 | occupant of GROUP, owner and occupant of PRIVATE |
//! | [`seed::OTHER_OCCUPANT`] 96830631 | occupant of GROUP only (an outsider to PRIVATE) |
//! | [`seed::NEW_OWNER`] 96753877 | occupant of GROUP; the owner-change recipe's new owner |
//! | [`seed::ADDED`] 91375295, 96705448 | nowhere; the recipes add and remove them |
//! | [`seed::OUTSIDER`] 55500001 | nowhere |
//!
//! Sessions: [`seed::GROUP_TOKEN`] (the group recipes' token) is user 123;
//! [`seed::DATA_TOKEN`] (the data recipe's token) is user 96754523.
//!
//! # Faults
//! A fault set with [`Sandbox::set_fault`] applies to every request received afterwards, session
//! and dialog lookups included, until `Fault::None`. The request is recorded (and counted as a
//! lookup) before the fault acts.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// The seeded dialogs, users and sessions (see the module doc for who is what).
pub mod seed {
    /// PUBLIC_GROUP dialog, owned by [`OWNER`].
    pub const PUBLIC_ID: &str = "5d75393ba28f9a17e1cb0f01";
    /// GROUP dialog of the reference's recipes, owned by [`RECIPE_USER`].
    pub const GROUP_ID: &str = "5d75393ba28f9a17e1cb0f9e";
    /// PRIVATE dialog of the reference's custom-data recipe: [`OCCUPANT`] (owner) and [`RECIPE_USER`].
    pub const PRIVATE_ID: &str = "5cc748eca0eb470d452adaaa";
    /// The recipes' `On-Behalf-Of` user: owner of GROUP, occupant of PRIVATE.
    pub const RECIPE_USER: u64 = 123;
    /// Owner of PUBLIC_GROUP; a plain occupant of GROUP.
    pub const OWNER: u64 = 96_753_878;
    /// Occupant of GROUP; owner and occupant of PRIVATE.
    pub const OCCUPANT: u64 = 96_754_523;
    /// Occupant of GROUP only.
    pub const OTHER_OCCUPANT: u64 = 96_830_631;
    /// Occupant of GROUP; the new owner in the owner-change recipe.
    pub const NEW_OWNER: u64 = 96_753_877;
    /// The users the recipes add to and remove from GROUP; in no dialog at the start.
    pub const ADDED: [u64; 2] = [91_375_295, 96_705_448];
    /// A user in no dialog.
    pub const OUTSIDER: u64 = 55_500_001;
    /// Session token of the reference's GROUP recipes: user [`RECIPE_USER`].
    pub const GROUP_TOKEN: &str = "1319b4991186601ccf4df2d0fa89565f68012bba";
    /// Session token of the reference's custom-data recipe: user [`OCCUPANT`].
    pub const DATA_TOKEN: &str = "8be2595b87f403f3c39e38fb39942cf481012bba";
    /// QuickBlox application id, as it appears in `xmpp_room_jid`.
    pub const APPLICATION_ID: u64 = 76730;
}

/// One request as the sandbox received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    /// Path and query exactly as received (percent-encoding untouched).
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// As much of the body as arrived.
    pub body: Bytes,
    /// `false` when the body was cut short (the client aborted the upload): such a request is
    /// recorded all the same, since its head did reach the upstream.
    pub complete: bool,
    /// The client's address; `None` for connections handed to [`Sandbox::serve_connection`].
    pub peer: Option<SocketAddr>,
}

/// Misbehaviour to inject into every subsequent response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Behave.
    #[default]
    None,
    /// Answer with this status and a QuickBlox-shaped JSON error; nothing is applied. Codes
    /// outside 200..=599 become 500.
    Status(u16),
    /// Stall this long, then handle the request normally (applied only if the client is still
    /// connected by then).
    Delay(Duration),
    /// Close the connection (h2: reset the stream) without any response; nothing is applied.
    ResetBeforeResponse,
    /// Apply the request, send the head (with the full `Content-Length`) and half the body, then
    /// close the connection (h2: reset the stream).
    ResetMidBody,
    /// Handle the request, but first start a graceful shutdown of its connection: h2 sends GOAWAY
    /// while the request is in flight (requests already in flight still complete); h1 closes the
    /// connection after this response.
    GoAway,
    /// Answer 200 with a body of this many bytes (`a` repeated, not JSON), streamed in 64 KiB
    /// chunks as the client reads them; nothing is applied.
    BigBody(usize),
}

/// An in-memory QuickBlox. Clones share one sandbox.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` accepts any ApiKey.
    api_key: Option<String>,
    state: Mutex<State>,
    received: Mutex<Vec<Recorded>>,
    fault: Mutex<Fault>,
    lookups: AtomicUsize,
    /// Makes created dialog ids unique within this sandbox.
    next_id: AtomicU64,
}

struct State {
    /// In creation order, which is also the listing order.
    dialogs: Vec<Dialog>,
    sessions: HashMap<String, u64>,
}

struct Dialog {
    id: String,
    kind: u8,
    name: Option<String>,
    photo: Option<String>,
    owner: u64,
    occupants: Vec<u64>,
    admins: Vec<u64>,
    data: Option<Map<String, Value>>,
    created_at: String,
    updated_at: String,
    last_message: Option<LastMessage>,
}

struct LastMessage {
    text: &'static str,
    date_sent: u64,
    id: &'static str,
    user_id: u64,
}

/// Who a request acts as, once authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Actor {
    Application,
    User(u64),
}

struct Auth {
    actor: Actor,
    /// The session token, for `GET /session.json`.
    token: Option<String>,
}

enum Route {
    Session,
    Dialogs,
    /// One id or a comma-separated list, percent-decoded.
    Dialog(String),
    Unknown,
}

/// A status and its JSON body.
type Reply = (StatusCode, Value);

/// Response bodies: whole JSON, a lazily generated large body, or one cut short.
struct ReplyBody(BodyKind);

enum BodyKind {
    Full(Option<Bytes>),
    Big {
        remaining: usize,
    },
    Truncated {
        part: Option<Bytes>,
        /// Lets the part reach the wire before the connection dies: hyper flushes while the body
        /// is pending, but may drop buffered bytes when the body fails right away.
        stall: Pin<Box<tokio::time::Sleep>>,
    },
}

/// What `BigBody` sends, shared so that a large body costs no allocation.
static CHUNK: [u8; 64 * 1024] = [b'a'; 64 * 1024];

impl Sandbox {
    /// A sandbox seeded as the module doc describes. `api_key`: the key it accepts in
    /// `Authorization: ApiKey <key>`; `None` accepts any.
    pub fn new(api_key: Option<String>) -> Sandbox {
        let mut sessions = HashMap::new();
        sessions.insert(seed::GROUP_TOKEN.to_owned(), seed::RECIPE_USER);
        sessions.insert(seed::DATA_TOKEN.to_owned(), seed::OCCUPANT);
        let state = State {
            dialogs: seed_dialogs(),
            sessions,
        };
        Sandbox {
            inner: Arc::new(Inner {
                api_key,
                state: Mutex::new(state),
                received: Mutex::new(Vec::new()),
                fault: Mutex::new(Fault::None),
                lookups: AtomicUsize::new(0),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Registers a `QB-Token` session acting as `user_id`.
    pub fn add_session(&self, token: &str, user_id: u64) {
        lock(&self.inner.state)
            .sessions
            .insert(token.to_owned(), user_id);
    }

    /// Serves HTTP/1.1 and cleartext HTTP/2 on `listener` until `shutdown` completes. Then it stops
    /// accepting and asks open connections to finish (h2 GOAWAY, h1 close when idle) without
    /// waiting for them, so a stalled request cannot hold a test up.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Small JSON answers should not wait for Nagle.
                        let _ = stream.set_nodelay(true);
                        let sandbox = self.clone();
                        let stop = stop_rx.clone();
                        tokio::spawn(async move {
                            sandbox.run_connection(stream, Some(peer), Some(stop)).await;
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "sandbox: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        let _ = stop_tx.send(true);
    }

    /// Serves one connection over any transport (a TLS stream in tests), speaking HTTP/1.1 or
    /// HTTP/2 as the client does. Returns when the connection ends.
    pub async fn serve_connection<IO>(&self, io: IO, peer: Option<SocketAddr>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.run_connection(io, peer, None).await;
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Recorded> {
        lock(&self.inner.received).clone()
    }

    /// Every request received so far, in order, forgetting them.
    pub fn take_received(&self) -> Vec<Recorded> {
        std::mem::take(&mut *lock(&self.inner.received))
    }

    /// Injects `fault` into every request received from now on, until `Fault::None`.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.inner.fault) = fault;
    }

    /// The dialog as `GET /chat/Dialog.json` would show it.
    pub fn dialog(&self, id: &str) -> Option<Value> {
        lock(&self.inner.state)
            .dialogs
            .iter()
            .find(|d| d.id == id)
            .map(Dialog::to_json)
    }

    /// How many `GET /chat/Dialog.json` requests arrived, failed ones included.
    pub fn lookups(&self) -> usize {
        self.inner.lookups.load(Ordering::SeqCst)
    }

    async fn run_connection<IO>(
        &self,
        io: IO,
        peer: Option<SocketAddr>,
        mut stop: Option<watch::Receiver<bool>>,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Raised by a request under `Fault::GoAway`; the connection task owns the connection, so
        // only it can start the shutdown.
        let go_away = Arc::new(Notify::new());
        let service = {
            let sandbox = self.clone();
            let go_away = Arc::clone(&go_away);
            service_fn(move |req| {
                let sandbox = sandbox.clone();
                let go_away = Arc::clone(&go_away);
                async move { sandbox.handle(req, peer, &go_away).await }
            })
        };
        let builder = auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "sandbox: connection ended with an error");
                    }
                    break;
                }
                () = go_away.notified(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = stopped(&mut stop), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }

    async fn handle(
        &self,
        req: Request<Incoming>,
        peer: Option<SocketAddr>,
        go_away: &Notify,
    ) -> Result<Response<ReplyBody>, io::Error> {
        let started = Instant::now();
        let (parts, mut incoming) = req.into_parts();
        // Frame by frame rather than `collect`, to keep what arrived of an aborted body.
        let mut body = BytesMut::new();
        let mut complete = true;
        while let Some(frame) = incoming.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        body.extend_from_slice(data);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "sandbox: request body cut short");
                    complete = false;
                    break;
                }
            }
        }
        let body = body.freeze();
        let route = route(parts.uri.path());
        if parts.method == Method::GET && matches!(route, Route::Dialogs) {
            self.inner.lookups.fetch_add(1, Ordering::SeqCst);
        }
        let uri = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.clone(), |pq| Uri::from(pq.clone()));
        lock(&self.inner.received).push(Recorded {
            method: parts.method.clone(),
            uri,
            version: parts.version,
            headers: parts.headers.clone(),
            body: body.clone(),
            complete,
            peer,
        });
        if !complete {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "sandbox: request body cut short",
            ));
        }

        let fault = lock(&self.inner.fault).clone();
        tracing::debug!(method = %parts.method, path = parts.uri.path(), ?fault, "sandbox: request");
        match fault {
            Fault::None => {}
            Fault::Status(code) => return Ok(json_response(fault_reply(code), started)),
            Fault::Delay(stall) => tokio::time::sleep(stall).await,
            Fault::ResetBeforeResponse => {
                // hyper answers a service error by closing an h1 connection without a response
                // and by resetting an h2 stream.
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "sandbox: injected reset before response",
                ));
            }
            Fault::ResetMidBody => {
                let reply = self.respond(&parts, route, &body);
                return Ok(truncated_response(reply, started));
            }
            Fault::GoAway => {
                go_away.notify_one();
                // Let the connection task send GOAWAY before this response goes out.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Fault::BigBody(len) => return Ok(big_response(len, started)),
        }
        let reply = self.respond(&parts, route, &body);
        Ok(json_response(reply, started))
    }

    fn respond(&self, parts: &http::request::Parts, route: Route, body: &[u8]) -> Reply {
        if matches!(route, Route::Unknown) {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        }
        let auth = match self.authenticate(&parts.headers) {
            Ok(auth) => auth,
            Err(reply) => return reply,
        };
        let content_type = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let params = match crate::params::parse(content_type, parts.uri.query(), body) {
            Ok(params) => params,
            Err(e) => {
                let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
                return base_error(status, &e.to_string());
            }
        };
        match (&parts.method, route) {
            (&Method::GET, Route::Session) => self.session(&auth),
            (&Method::GET, Route::Dialogs) => self.list(auth.actor, &params),
            (&Method::POST, Route::Dialogs) => self.create(auth.actor, &params),
            (&Method::PUT, Route::Dialog(id)) => self.update(&id, &params),
            (&Method::DELETE, Route::Dialog(ids)) => self.delete(auth.actor, &ids, &params),
            _ => base_error(StatusCode::NOT_FOUND, "Not found"),
        }
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<Auth, Reply> {
        let token = single(headers, "qb-token")?;
        let authorization = single(headers, AUTHORIZATION.as_str())?;
        match (token, authorization) {
            (Some(_), Some(_)) => Err(base_error(
                StatusCode::BAD_REQUEST,
                "must be used either QB-Token or Authorization",
            )),
            (Some(token), None) => {
                let user = token
                    .to_str()
                    .ok()
                    .and_then(|t| lock(&self.inner.state).sessions.get(t).copied());
                match (user, token.to_str()) {
                    (Some(user), Ok(token)) => Ok(Auth {
                        actor: Actor::User(user),
                        token: Some(token.to_owned()),
                    }),
                    _ => Err(base_error(
                        StatusCode::UNAUTHORIZED,
                        "Required session does not exist",
                    )),
                }
            }
            (None, Some(authorization)) => {
                let key = authorization
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("ApiKey "))
                    .map(str::trim)
                    .filter(|k| !k.is_empty());
                let accepted = match (key, &self.inner.api_key) {
                    (Some(key), Some(expected)) => key == expected,
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if !accepted {
                    return Err(base_error(StatusCode::UNAUTHORIZED, "Invalid API key"));
                }
                let actor = match single(headers, "on-behalf-of")? {
                    None => Actor::Application,
                    Some(value) => match value.to_str().ok().and_then(user_id_text) {
                        Some(user) if user > 0 => Actor::User(user),
                        _ => {
                            return Err(base_error(
                                StatusCode::BAD_REQUEST,
                                "On-Behalf-Of must be a user id",
                            ))
                        }
                    },
                };
                Ok(Auth { actor, token: None })
            }
            (None, None) => Err(base_error(StatusCode::UNAUTHORIZED, "Token is required")),
        }
    }

    fn session(&self, auth: &Auth) -> Reply {
        let (Actor::User(user), Some(token)) = (auth.actor, &auth.token) else {
            return base_error(StatusCode::UNAUTHORIZED, "Required session does not exist");
        };
        let now = SystemTime::now();
        let stamp = rfc3339(now);
        let body = json!({"session": {
            "_id": self.new_id(),
            "application_id": seed::APPLICATION_ID,
            "created_at": stamp,
            "device_id": 0,
            "id": user,
            "nonce": 0,
            "token": token,
            "ts": unix_seconds(now),
            "updated_at": stamp,
            "user_id": user,
        }});
        (StatusCode::OK, body)
    }

    fn list(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        // `_id=x` arrives as a string, `_id[in]=a,b` as {"in": "a,b"}; other operators are ignored.
        let ids: Option<Vec<String>> = match params.get("_id") {
            Some(Value::String(id)) => Some(vec![id.clone()]),
            Some(Value::Object(ops)) => ops.get("in").map(strings),
            _ => None,
        };
        let kind = params.get("type").and_then(number);
        let limit = params.get("limit").and_then(number).unwrap_or(100).min(100);
        let skip = params.get("skip").and_then(number).unwrap_or(0);

        let state = lock(&self.inner.state);
        let matching: Vec<&Dialog> = state
            .dialogs
            .iter()
            .filter(|d| d.visible_to(actor))
            .filter(|d| ids.as_ref().is_none_or(|ids| ids.contains(&d.id)))
            .filter(|d| kind.is_none_or(|k| k == u64::from(d.kind)))
            .collect();
        let items: Vec<Value> = matching
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|d| d.to_json())
            .collect();
        let body = json!({
            "total_entries": matching.len(),
            "skip": skip,
            "limit": limit,
            "items": items,
        });
        (StatusCode::OK, body)
    }

    fn create(&self, actor: Actor, params: &Map<String, Value>) -> Reply {
        let kind = match params.get("type") {
            None => return field_error("type", "can't be blank"),
            Some(v) => match number(v) {
                Some(k @ 1..=3) => k as u8,
                _ => return field_error("type", "is invalid"),
            },
        };
        let mut occupants = match params.get("occupants_ids").map(user_ids) {
            None => Vec::new(),
            Some(Some(ids)) => dedup(ids),
            Some(None) => return field_error("occupants_ids", "is invalid"),
        };
        let name = match optional_name(params) {
            Ok(name) => name,
            Err(reply) => return reply,
        };
        let data = match params.get("data") {
            None => None,
            Some(Value::Object(data)) => Some(data.clone()),
            Some(_) => return field_error("data", "is invalid"),
        };
        let owner = match actor {
            Actor::User(user) => user,
            Actor::Application => occupants.first().copied().unwrap_or(0),
        };
        match kind {
            // A public group is open to all: QuickBlox keeps no occupants for it.
            1 => occupants.clear(),
            _ if owner != 0 && !occupants.contains(&owner) => occupants.insert(0, owner),
            _ => {}
        }
        if kind == 3 && occupants.len() > 2 {
            return base_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Too many occupants for Private Dialog.",
            );
        }
        let now = rfc3339(SystemTime::now());
        let dialog = Dialog {
            id: self.new_id(),
            kind,
            name,
            photo: params.get("photo").and_then(text),
            owner,
            occupants,
            admins: Vec::new(),
            data,
            created_at: now.clone(),
            updated_at: now,
            last_message: None,
        };
        let body = dialog.to_json();
        lock(&self.inner.state).dialogs.push(dialog);
        (StatusCode::OK, body)
    }

    fn update(&self, id: &str, params: &Map<String, Value>) -> Reply {
        // Validate everything before changing anything, as one database update would.
        let name = match optional_name(params) {
            Ok(name) => name,
            Err(reply) => return reply,
        };
        let mut push = IdChanges::default();
        let mut pull = IdChanges::default();
        for (op, changes) in [("push_all", &mut push), ("pull_all", &mut pull)] {
            match params.get(op) {
                None => {}
                Some(Value::Object(fields)) => {
                    for (field, slot) in [
                        ("occupants_ids", &mut changes.occupants),
                        ("admin_ids", &mut changes.admins),
                    ] {
                        match fields.get(field).map(user_ids) {
                            None => {}
                            Some(Some(ids)) => *slot = ids,
                            Some(None) => return field_error(field, "is invalid"),
                        }
                    }
                }
                Some(_) => return field_error(op, "is invalid"),
            }
        }
        let data = match params.get("data") {
            None => None,
            Some(Value::Object(data)) => Some(data),
            Some(_) => return field_error("data", "is invalid"),
        };
        let new_owner = match params.get("user_id") {
            None => None,
            Some(v) => match user_id(v) {
                Some(user) => Some(user),
                None => return field_error("user_id", "is invalid"),
            },
        };

        let mut state = lock(&self.inner.state);
        let Some(dialog) = state.dialogs.iter_mut().find(|d| d.id == id) else {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        };
        if let Some(name) = name {
            dialog.name = Some(name);
        }
        if let Some(photo) = params.get("photo") {
            dialog.photo = text(photo);
        }
        push_all(&mut dialog.occupants, &push.occupants);
        push_all(&mut dialog.admins, &push.admins);
        dialog.occupants.retain(|u| !pull.occupants.contains(u));
        dialog.admins.retain(|u| !pull.admins.contains(u));
        if let Some(data) = data {
            let stored = dialog.data.get_or_insert_with(Map::new);
            for (key, value) in data {
                stored.insert(key.clone(), value.clone());
            }
        }
        if let Some(owner) = new_owner {
            dialog.owner = owner;
        }
        dialog.updated_at = rfc3339(SystemTime::now());
        (StatusCode::OK, dialog.to_json())
    }

    fn delete(&self, actor: Actor, ids: &str, params: &Map<String, Value>) -> Reply {
        let force = params.get("force").is_some_and(truthy);
        let user = match (actor, force) {
            (Actor::User(user), _) => Some(user),
            (Actor::Application, true) => None,
            (Actor::Application, false) => {
                return base_error(StatusCode::FORBIDDEN, "Forbidden. Need user.")
            }
        };
        let mut deleted = Vec::new();
        let mut not_found = Vec::new();
        let mut state = lock(&self.inner.state);
        for id in ids.split(',').map(str::trim).filter(|id| !id.is_empty()) {
            let Some(pos) = state.dialogs.iter().position(|d| d.id == id) else {
                not_found.push(id.to_owned());
                continue;
            };
            match (force, user) {
                (false, Some(user)) => {
                    let dialog = &mut state.dialogs[pos];
                    dialog.occupants.retain(|u| *u != user);
                    dialog.updated_at = rfc3339(SystemTime::now());
                }
                _ => {
                    state.dialogs.remove(pos);
                }
            }
            deleted.push(id.to_owned());
        }
        if deleted.is_empty() {
            return base_error(StatusCode::NOT_FOUND, "Not found");
        }
        let body = json!({
            "SuccessfullyDeleted": {"ids": deleted},
            "NotFound": {"ids": not_found},
            "WrongPermissions": {"ids": []},
        });
        (StatusCode::OK, body)
    }

    /// A fresh 24-hex-digit id shaped like a MongoDB ObjectId: seconds, then a counter.
    fn new_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let secs = unix_seconds(SystemTime::now()) & 0xffff_ffff;
        format!("{secs:08x}{n:016x}")
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("fault", &*lock(&self.inner.fault))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct IdChanges {
    occupants: Vec<u64>,
    admins: Vec<u64>,
}

impl Dialog {
    fn visible_to(&self, actor: Actor) -> bool {
        match actor {
            Actor::Application => true,
            Actor::User(user) => {
                self.kind == 1 || self.owner == user || self.occupants.contains(&user)
            }
        }
    }

    fn to_json(&self) -> Value {
        let last = self.last_message.as_ref();
        let jid = match self.kind {
            3 => Value::Null,
            _ => Value::String(format!(
                "{}_{}@muc.chat.quickblox.com",
                seed::APPLICATION_ID,
                self.id
            )),
        };
        let mut body = json!({
            "_id": self.id,
            "created_at": self.created_at,
            "last_message": last.map(|m| m.text),
            "last_message_date_sent": last.map(|m| m.date_sent),
            "last_message_id": last.map(|m| m.id),
            "last_message_user_id": last.map(|m| m.user_id),
            "name": self.name,
            "occupants_ids": self.occupants,
            "admin_ids": self.admins,
            "photo": self.photo,
            "type": self.kind,
            "updated_at": self.updated_at,
            "user_id": self.owner,
            "xmpp_room_jid": jid,
            "unread_messages_count": 0,
        });
        if let (Some(data), Value::Object(fields)) = (&self.data, &mut body) {
            fields.insert("data".to_owned(), Value::Object(data.clone()));
        }
        body
    }
}

impl hyper::body::Body for ReplyBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().0 {
            BodyKind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Big { remaining } => {
                if *remaining == 0 {
                    return Poll::Ready(None);
                }
                let n = (*remaining).min(CHUNK.len());
                *remaining -= n;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
            }
            BodyKind::Truncated { part, stall } => {
                if let Some(part) = part.take() {
                    return Poll::Ready(Some(Ok(Frame::data(part))));
                }
                ready!(stall.as_mut().poll(cx));
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "sandbox: injected reset mid-body",
                ))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.0,
            BodyKind::Full(None) | BodyKind::Big { remaining: 0 }
        )
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            // Unknown length on purpose: streamed with chunked encoding, as a proxy must.
            BodyKind::Big { .. } | BodyKind::Truncated { .. } => SizeHint::default(),
        }
    }
}

fn seed_dialogs() -> Vec<Dialog> {
    use seed::*;
    vec![
        Dialog {
            id: PUBLIC_ID.to_owned(),
            kind: 1,
            name: Some("Town square".to_owned()),
            photo: None,
            owner: OWNER,
            occupants: Vec::new(),
            admins: Vec::new(),
            data: None,
            created_at: "2019-09-08T17:20:00Z".to_owned(),
            updated_at: "2019-09-08T17:20:00Z".to_owned(),
            last_message: None,
        },
        Dialog {
            id: GROUP_ID.to_owned(),
            kind: 2,
            name: Some("Party planning".to_owned()),
            photo: Some("68123".to_owned()),
            owner: RECIPE_USER,
            occupants: vec![RECIPE_USER, OWNER, OCCUPANT, OTHER_OCCUPANT, NEW_OWNER],
            admins: Vec::new(),
            data: None,
            created_at: "2019-09-08T17:24:11Z".to_owned(),
            updated_at: "2019-09-08T19:36:54Z".to_owned(),
            // As in the reference's sample response.
            last_message: Some(LastMessage {
                text: "sure, I can wait",
                date_sent: 1_567_971_414,
                id: "5d755856a0eb47411e0b72a9",
                user_id: OWNER,
            }),
        },
        Dialog {
            id: PRIVATE_ID.to_owned(),
            kind: 3,
            name: None,
            photo: None,
            owner: OCCUPANT,
            occupants: vec![OCCUPANT, RECIPE_USER],
            admins: Vec::new(),
            data: Some(Map::from_iter([
                ("class_name".to_owned(), json!("CoolDialog")),
                ("category".to_owned(), json!("family")),
            ])),
            created_at: "2019-04-29T17:00:28Z".to_owned(),
            updated_at: "2019-04-29T17:00:28Z".to_owned(),
            last_message: None,
        },
    ]
}

/// A poisoned lock only means a test panicked elsewhere; the data is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Resolves when `serve` shuts down; never for a connection handed to `serve_connection`.
async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        // An error means `serve` is gone, which is a stop too.
        Some(rx) => {
            let _ = rx.wait_for(|stop| *stop).await;
        }
        None => std::future::pending::<()>().await,
    }
}

fn route(path: &str) -> Route {
    let path = path.strip_suffix(".json").unwrap_or(path);
    match path {
        "/session" => Route::Session,
        "/chat/Dialog" => Route::Dialogs,
        _ => match path.strip_prefix("/chat/Dialog/") {
            Some(ids) if !ids.is_empty() && !ids.contains('/') => {
                percent_decode(ids).map_or(Route::Unknown, Route::Dialog)
            }
            _ => Route::Unknown,
        },
    }
}

/// Decodes `%XX` in a path segment (a client may encode the comma between ids).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The header's only value; two of them is a 400, as ambiguity must not pick one silently.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h HeaderValue>, Reply> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(base_error(
            StatusCode::BAD_REQUEST,
            &format!("{name} given more than once"),
        ));
    }
    Ok(first)
}

fn optional_name(params: &Map<String, Value>) -> Result<Option<String>, Reply> {
    match params.get("name") {
        None => Ok(None),
        Some(Value::String(name)) if name.chars().count() > 200 => Err(field_error(
            "name",
            "is too long (maximum is 200 characters)",
        )),
        Some(Value::String(name)) => Ok(Some(name.clone())),
        Some(_) => Err(field_error("name", "is invalid")),
    }
}

/// User ids as clients send them: `[1, 2]`, `["1", "2"]`, `"1,2"` or `"1, 2"`.
fn user_ids(value: &Value) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    match value {
        Value::Array(items) => {
            for item in items {
                out.extend(scalar_user_ids(item)?);
            }
        }
        other => out.extend(scalar_user_ids(other)?),
    }
    Some(out)
}

fn scalar_user_ids(value: &Value) -> Option<Vec<u64>> {
    match value {
        Value::Number(n) => n.as_u64().map(|n| vec![n]),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(user_id_text)
            .collect(),
        _ => None,
    }
}

fn user_id(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => user_id_text(s.trim()),
        _ => None,
    }
}

/// Only plain decimal digits: `u64::from_str` would also take a leading `+`.
fn user_id_text(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A non-negative integer from a JSON number or a form string.
fn number(value: &Value) -> Option<u64> {
    user_id(value)
}

fn strings(value: &Value) -> Vec<String> {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    match value {
        Value::String(s) => split(s),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(split)
            .collect(),
        _ => Vec::new(),
    }
}

/// A string field as QuickBlox stores it; a number (`"photo": 68123`) becomes its digits.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_u64() == Some(1),
        Value::String(s) => matches!(s.as_str(), "1" | "true"),
        _ => false,
    }
}

fn dedup(ids: Vec<u64>) -> Vec<u64> {
    let mut out = Vec::with_capacity(ids.len());
    push_all(&mut out, &ids);
    out
}

/// QuickBlox adds to a set: an id already present is not added twice.
fn push_all(set: &mut Vec<u64>, ids: &[u64]) {
    for id in ids {
        if !set.contains(id) {
            set.push(*id);
        }
    }
}

fn base_error(status: StatusCode, message: &str) -> Reply {
    (status, json!({"errors": {"base": [message]}}))
}

fn field_error(field: &str, message: &str) -> Reply {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"errors": {field: [message]}}),
    )
}

fn fault_reply(code: u16) -> Reply {
    let status = StatusCode::from_u16(code)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match status.as_u16() {
        401 => "Required session does not exist",
        403 => "You don't have appropriate permissions to perform this operation",
        404 => "Not found",
        429 => "Rate limit for your current plan is exceeded",
        500 => "Internal server error",
        503 => "Service unavailable",
        _ => status.canonical_reason().unwrap_or("Error"),
    };
    base_error(status, message)
}

fn json_response((status, value): Reply, started: Instant) -> Response<ReplyBody> {
    let body = Bytes::from(value.to_string());
    respond_with(status, ReplyBody(BodyKind::Full(Some(body))), started)
}

fn truncated_response((status, value): Reply, started: Instant) -> Response<ReplyBody> {
    let full = value.to_string().into_bytes();
    let half = (full.len() / 2).max(1);
    let body = ReplyBody(BodyKind::Truncated {
        part: Some(Bytes::copy_from_slice(&full[..half])),
        stall: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
    });
    let mut response = respond_with(status, body, started);
    // The full length, so the client can tell the body was cut short even over HTTP/1.1.
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(full.len()));
    response
}

fn big_response(len: usize, started: Instant) -> Response<ReplyBody> {
    respond_with(
        StatusCode::OK,
        ReplyBody(BodyKind::Big { remaining: len }),
        started,
    )
}

fn respond_with(status: StatusCode, body: ReplyBody, started: Instant) -> Response<ReplyBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    let runtime = format!("{:.6}", started.elapsed().as_secs_f64());
    if let Ok(runtime) = HeaderValue::from_str(&runtime) {
        headers.insert("x-runtime", runtime);
    }
    response
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2019-09-08T19:36:54Z`, QuickBlox's timestamp format, without a date crate for one format.
fn rfc3339(t: SystemTime) -> String {
    let secs = unix_seconds(t);
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::seed::*;
    use super::*;
    use http_body_util::Full;
    use hyper::client::conn::{http1, http2};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    const KEY: &str = "upstream-key";
    const APP: &[(&str, &str)] = &[("authorization", "ApiKey upstream-key")];
    const USER_123: &[(&str, &str)] = &[
        ("authorization", "ApiKey upstream-key"),
        ("on-behalf-of", "123"),
    ];
    const JSON: (&str, &str) = ("content-type", "application/json; charset=utf-8");
    const FORM: (&str, &str) = (
        "content-type",
        "application/x-www-form-urlencoded; charset=UTF-8",
    );
    const MISSING_ID: &str = "5e261c72a28f9a4f779f10bb";

    type Headers = &'static [(&'static str, &'static str)];

    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        json: Value,
    }

    async fn start() -> (Sandbox, SocketAddr) {
        start_with(Sandbox::new(Some(KEY.to_owned()))).await
    }

    async fn start_with(sandbox: Sandbox) -> (Sandbox, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = sandbox.clone();
        tokio::spawn(async move { server.serve(listener, std::future::pending()).await });
        (sandbox, addr)
    }

    fn request(
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    fn with<'a>(
        headers: &[(&'a str, &'a str)],
        extra: (&'a str, &'a str),
    ) -> Vec<(&'a str, &'a str)> {
        let mut all = headers.to_vec();
        all.push(extra);
        all
    }

    async fn h1(
        addr: SocketAddr,
    ) -> (
        http1::SendRequest<Full<Bytes>>,
        JoinHandle<Result<(), hyper::Error>>,
    ) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        (sender, tokio::spawn(conn))
    }

    async fn h2(
        addr: SocketAddr,
    ) -> (
        http2::SendRequest<Full<Bytes>>,
        JoinHandle<Result<(), hyper::Error>>,
    ) {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        (sender, tokio::spawn(conn))
    }

    async fn read(response: Response<Incoming>) -> Answer {
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
        Answer {
            status: parts.status,
            headers: parts.headers,
            json,
        }
    }

    async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
        let (mut sender, _conn) = h1(addr).await;
        let answer = read(sender.send_request(req).await.unwrap()).await;
        assert_eq!(
            answer.headers[CONTENT_TYPE],
            "application/json; charset=utf-8"
        );
        assert!(answer.headers.contains_key("x-runtime"));
        answer
    }

    async fn call(
        addr: SocketAddr,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        send(addr, request(method, uri, headers, body)).await
    }

    fn base(answer: &Answer) -> &str {
        answer.json["errors"]["base"][0]
            .as_str()
            .unwrap_or_default()
    }

    fn item_ids(answer: &Answer) -> Vec<&str> {
        answer.json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["_id"].as_str().unwrap())
            .collect()
    }

    fn occupants(dialog: &Value) -> Vec<u64> {
        dialog["occupants_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn authentication_outcomes() {
        let (_sandbox, addr) = start().await;
        let path = "/chat/Dialog.json";
        let none = call(addr, "GET", path, &[], "").await;
        assert_eq!(
            (none.status, base(&none)),
            (StatusCode::UNAUTHORIZED, "Token is required")
        );
        let wrong = call(addr, "GET", path, &[("authorization", "ApiKey nope")], "").await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        let bearer = call(
            addr,
            "GET",
            path,
            &[("authorization", "Bearer upstream-key")],
            "",
        )
        .await;
        assert_eq!(bearer.status, StatusCode::UNAUTHORIZED);
        let both = with(APP, ("qb-token", GROUP_TOKEN));
        let both = call(addr, "GET", path, &both, "").await;
        assert_eq!(
            (both.status, base(&both)),
            (
                StatusCode::BAD_REQUEST,
                "must be used either QB-Token or Authorization"
            )
        );
        let unknown = call(addr, "GET", path, &[("qb-token", "nope")], "").await;
        assert_eq!(
            (unknown.status, base(&unknown)),
            (StatusCode::UNAUTHORIZED, "Required session does not exist")
        );
        for bad in ["undefined", "0", "-1", "+5", "1e3", ""] {
            let headers = with(APP, ("on-behalf-of", bad));
            let answer = call(addr, "GET", path, &headers, "").await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "On-Behalf-Of {bad:?}"
            );
        }
        let twice = with(USER_123, ("on-behalf-of", "123"));
        assert_eq!(
            call(addr, "GET", path, &twice, "").await.status,
            StatusCode::BAD_REQUEST
        );

        // Without a configured key, any ApiKey is the application.
        let (_open, open_addr) = start_with(Sandbox::new(None)).await;
        let any = call(
            open_addr,
            "GET",
            path,
            &[("authorization", "ApiKey whatever")],
            "",
        )
        .await;
        assert_eq!(any.status, StatusCode::OK);
        assert_eq!(any.json["total_entries"], 3);
    }

    #[tokio::test]
    async fn session_lookup_names_the_user() {
        let (sandbox, addr) = start().await;
        let answer = call(
            addr,
            "GET",
            "/session.json",
            &[("qb-token", GROUP_TOKEN)],
            "",
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json["session"]["user_id"], RECIPE_USER);
        assert_eq!(answer.json["session"]["token"], GROUP_TOKEN);
        let data = call(
            addr,
            "GET",
            "/session.json",
            &[("qb-token", DATA_TOKEN)],
            "",
        )
        .await;
        assert_eq!(data.json["session"]["user_id"], OCCUPANT);

        sandbox.add_session("fresh", OUTSIDER);
        let fresh = call(addr, "GET", "/session", &[("qb-token", "fresh")], "").await;
        assert_eq!(fresh.json["session"]["user_id"], OUTSIDER);

        let keyed = call(addr, "GET", "/session.json", USER_123, "").await;
        assert_eq!(keyed.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn listing_shows_what_the_actor_may_see() {
        let (_sandbox, addr) = start().await;
        let path = "/chat/Dialog.json";
        let app = call(addr, "GET", path, APP, "").await;
        assert_eq!(item_ids(&app), [PUBLIC_ID, GROUP_ID, PRIVATE_ID]);
        assert_eq!(app.json["total_entries"], 3);
        assert_eq!(
            (app.json["skip"].clone(), app.json["limit"].clone()),
            (json!(0), json!(100))
        );

        let cases: [(u64, &[&str]); 5] = [
            (RECIPE_USER, &[PUBLIC_ID, GROUP_ID, PRIVATE_ID]),
            (OWNER, &[PUBLIC_ID, GROUP_ID]),
            (OCCUPANT, &[PUBLIC_ID, GROUP_ID, PRIVATE_ID]),
            (OTHER_OCCUPANT, &[PUBLIC_ID, GROUP_ID]),
            (OUTSIDER, &[PUBLIC_ID]),
        ];
        for (user, expected) in cases {
            let user_text = user.to_string();
            let headers = with(APP, ("on-behalf-of", &user_text));
            let answer = call(addr, "GET", path, &headers, "").await;
            assert_eq!(item_ids(&answer), expected, "user {user}");
        }
        let by_token = call(addr, "GET", path, &[("qb-token", GROUP_TOKEN)], "").await;
        assert_eq!(item_ids(&by_token), [PUBLIC_ID, GROUP_ID, PRIVATE_ID]);
    }

    #[tokio::test]
    async fn listing_filters_as_the_sdk_sends_them() {
        let (sandbox, addr) = start().await;
        let get = async |uri: String| call(addr, "GET", &uri, USER_123, "").await;

        let one = get(format!("/chat/Dialog.json?_id={GROUP_ID}")).await;
        assert_eq!(item_ids(&one), [GROUP_ID]);
        let encoded = get(format!(
            "/chat/Dialog.json?_id%5Bin%5D={GROUP_ID}%2C{PRIVATE_ID}&limit=50&skip=0&sort_desc=updated_at"
        ))
        .await;
        assert_eq!(item_ids(&encoded), [GROUP_ID, PRIVATE_ID]);
        assert_eq!(encoded.json["limit"], 50);
        let raw = get(format!(
            "/chat/Dialog.json?_id[in]={GROUP_ID}%2C{PRIVATE_ID}&type=2"
        ))
        .await;
        assert_eq!(item_ids(&raw), [GROUP_ID]);
        let none = get("/chat/Dialog.json?_id[in]=a1%2Cb2&type=2".to_owned()).await;
        assert_eq!(
            (none.json["total_entries"].clone(), item_ids(&none).len()),
            (json!(0), 0)
        );
        let page = get("/chat/Dialog.json?limit=1&skip=1".to_owned()).await;
        assert_eq!(item_ids(&page), [GROUP_ID]);
        assert_eq!(page.json["total_entries"], 3);
        assert_eq!(page.json["skip"], 1);
        // Not a lookup: the create endpoint shares the path.
        call(
            addr,
            "POST",
            "/chat/Dialog.json",
            USER_123,
            r#"{"type":1,"name":"x"}"#,
        )
        .await;
        assert_eq!(sandbox.lookups(), 5);
    }

    #[tokio::test]
    async fn create_from_sdk_form_and_from_json() {
        let (sandbox, addr) = start().await;
        let owner = with(APP, ("on-behalf-of", "96753878"));
        let form = with(&owner, FORM);
        let sdk_body = "data[beer]=x&data[class_name]=CoolDialog&name=Group&occupants_ids=91375295%2C%2096705448&type=2";
        let created = call(addr, "POST", "/chat/Dialog.json", &form, sdk_body).await;
        assert_eq!(created.status, StatusCode::OK);
        let d = &created.json;
        assert_eq!(d["type"], 2);
        assert_eq!(d["name"], "Group");
        assert_eq!(d["user_id"], OWNER);
        assert_eq!(occupants(d), [OWNER, 91_375_295, 96_705_448]);
        assert_eq!(d["data"], json!({"beer": "x", "class_name": "CoolDialog"}));
        let id = d["_id"].as_str().unwrap();
        assert_eq!(id.len(), 24);
        assert_eq!(sandbox.dialog(id).as_ref(), Some(d));

        let json_headers = with(USER_123, JSON);
        let private = call(
            addr,
            "POST",
            "/chat/Dialog.json",
            &json_headers,
            &format!(r#"{{"type":3,"occupants_ids":[{OUTSIDER}]}}"#),
        )
        .await;
        assert_eq!(occupants(&private.json), [RECIPE_USER, OUTSIDER]);
        assert_eq!(private.json["xmpp_room_jid"], Value::Null);
        let crowded = call(
            addr,
            "POST",
            "/chat/Dialog.json",
            &json_headers,
            r#"{"type":3,"occupants_ids":"5, 6"}"#,
        )
        .await;
        assert_eq!(
            (crowded.status, base(&crowded)),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Too many occupants for Private Dialog."
            )
        );
        let public = call(
            addr,
            "POST",
            "/chat/Dialog.json",
            &json_headers,
            r#"{"type":"1","name":"Lobby","occupants_ids":[5]}"#,
        )
        .await;
        assert_eq!(
            (public.json["type"].clone(), occupants(&public.json)),
            (json!(1), vec![])
        );
        assert_eq!(public.json["user_id"], RECIPE_USER);

        // The application acts for nobody: the first occupant becomes the owner.
        let by_app = call(
            addr,
            "POST",
            "/chat/Dialog.json",
            &with(APP, FORM),
            "type=2&name=App&occupants_ids=7,8",
        )
        .await;
        assert_eq!(
            (by_app.json["user_id"].clone(), occupants(&by_app.json)),
            (json!(7), vec![7, 8])
        );

        let blank = call(
            addr,
            "POST",
            "/chat/Dialog.json",
            &json_headers,
            r#"{"name":"x"}"#,
        )
        .await;
        assert_eq!(blank.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(blank.json, json!({"errors": {"type": ["can't be blank"]}}));
        assert_eq!(sandbox.dialog("nope"), None);
    }

    /// Every distinct recipe of the "Update dialog" reference, in the reference's order, with
    /// each of its two ways to authenticate: the documented result each time.
    #[tokio::test]
    async fn update_recipes_reach_the_documented_result() {
        let recipe_auth: [(Headers, Headers); 2] = [
            (&[("qb-token", GROUP_TOKEN)], &[("qb-token", DATA_TOKEN)]),
            (USER_123, USER_123),
        ];
        for (group_auth, data_auth) in recipe_auth {
            let (sandbox, addr) = start().await;
            let put = async |id: &str, auth: &[(&str, &str)], body: &str| {
                let headers = with(auth, ("content-type", "application/json"));
                let path = format!("/chat/Dialog/{id}.json");
                let answer = call(addr, "PUT", &path, &headers, body).await;
                assert_eq!(answer.status, StatusCode::OK, "{body}: {}", answer.json);
                answer.json
            };
            let named = put(GROUP_ID, group_auth, r#"{"name":"New Year 2020 party"}"#).await;
            assert_eq!(named["name"], "New Year 2020 party");
            assert_ne!(named["updated_at"], "2019-09-08T19:36:54Z");
            let added = put(
                GROUP_ID,
                group_auth,
                r#"{"push_all":{"occupants_ids":[91375295,96705448]}}"#,
            )
            .await;
            assert!(occupants(&added).ends_with(&ADDED));
            let data = put(PRIVATE_ID, data_auth, r#"{"data":{"class_name":"CoolDialog","category":"co-workers","floor":"5","is_intern":"true","average_kpi":"0.8"}}"#).await;
            assert_eq!(
                data["data"],
                json!({"class_name": "CoolDialog", "category": "co-workers",
                "floor": "5", "is_intern": "true", "average_kpi": "0.8"})
            );
            let removed = put(
                GROUP_ID,
                group_auth,
                r#"{"pull_all":{"occupants_ids":[91375295,96705448]}}"#,
            )
            .await;
            assert_eq!(
                occupants(&removed),
                [RECIPE_USER, OWNER, OCCUPANT, OTHER_OCCUPANT, NEW_OWNER]
            );
            let renamed = put(GROUP_ID, group_auth, r#"{"name":"New Year 2024 party"}"#).await;
            assert_eq!(renamed["name"], "New Year 2024 party");
            let handed = put(GROUP_ID, group_auth, r#"{"user_id": 96753877}"#).await;
            assert_eq!(handed["user_id"], NEW_OWNER);
            assert_eq!(sandbox.dialog(GROUP_ID).as_ref(), Some(&handed));
        }
    }

    #[tokio::test]
    async fn update_reads_forms_and_the_query_string() {
        let (sandbox, addr) = start().await;
        let form = with(USER_123, FORM);
        let body = "push_all[occupants_ids][]=1&push_all[occupants_ids][]=2&pull_all[occupants_ids]=96830631\
                    &push_all[admin_ids]=96754523&name=Form&photo=99&data[beer]=stout";
        let answer = call(
            addr,
            "PUT",
            &format!("/chat/Dialog/{GROUP_ID}"),
            &form,
            body,
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            occupants(&answer.json),
            [RECIPE_USER, OWNER, OCCUPANT, NEW_OWNER, 1, 2]
        );
        assert_eq!(answer.json["admin_ids"], json!([OCCUPANT]));
        assert_eq!(
            (answer.json["name"].clone(), answer.json["photo"].clone()),
            (json!("Form"), json!("99"))
        );
        assert_eq!(answer.json["data"], json!({"beer": "stout"}));

        // Rails merges the query string into the parameters: so does the sandbox.
        let json_headers = with(USER_123, JSON);
        let query = call(
            addr,
            "PUT",
            &format!("/chat/Dialog/{GROUP_ID}.json?name=FromQuery"),
            &json_headers,
            r#"{"pull_all":{"admin_ids":[96754523]},"photo":68123}"#,
        )
        .await;
        assert_eq!(query.json["name"], "FromQuery");
        assert_eq!(query.json["admin_ids"], json!([]));
        assert_eq!(query.json["photo"], "68123");
        assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "FromQuery");
    }

    #[tokio::test]
    async fn update_refusals() {
        let (sandbox, addr) = start().await;
        let headers = with(USER_123, JSON);
        let missing = call(
            addr,
            "PUT",
            &format!("/chat/Dialog/{MISSING_ID}.json"),
            &headers,
            r#"{"name":"x"}"#,
        )
        .await;
        assert_eq!(
            (missing.status, base(&missing)),
            (StatusCode::NOT_FOUND, "Not found")
        );
        let long = format!(r#"{{"name":"{}"}}"#, "n".repeat(201));
        let too_long = call(
            addr,
            "PUT",
            &format!("/chat/Dialog/{GROUP_ID}.json"),
            &headers,
            &long,
        )
        .await;
        assert_eq!(too_long.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            too_long.json,
            json!({"errors": {"name": ["is too long (maximum is 200 characters)"]}})
        );
        let bad_ids = call(
            addr,
            "PUT",
            &format!("/chat/Dialog/{GROUP_ID}.json"),
            &headers,
            r#"{"name":"ok","push_all":{"occupants_ids":"1,x"}}"#,
        )
        .await;
        assert_eq!(
            bad_ids.json,
            json!({"errors": {"occupants_ids": ["is invalid"]}})
        );
        let text = with(USER_123, ("content-type", "text/plain"));
        let path = format!("/chat/Dialog/{GROUP_ID}.json");
        let unsupported = call(addr, "PUT", &path, &text, "name=x").await;
        assert_eq!(unsupported.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let malformed = call(
            addr,
            "PUT",
            &format!("/chat/Dialog/{GROUP_ID}.json"),
            &headers,
            "{",
        )
        .await;
        assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
        // Nothing of a refused update is applied.
        assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "Party planning");
    }

    #[tokio::test]
    async fn delete_for_self_and_for_everyone() {
        let (sandbox, addr) = start().await;
        let other = with(&with(APP, ("on-behalf-of", "96830631")), FORM);
        let left = call(
            addr,
            "DELETE",
            &format!("/chat/Dialog/{GROUP_ID}.json"),
            &other,
            "",
        )
        .await;
        assert_eq!(left.status, StatusCode::OK);
        assert_eq!(left.json["SuccessfullyDeleted"]["ids"], json!([GROUP_ID]));
        let group = sandbox.dialog(GROUP_ID).unwrap();
        assert!(!occupants(&group).contains(&OTHER_OCCUPANT));
        assert_eq!(occupants(&group).len(), 4);

        let app = call(
            addr,
            "DELETE",
            &format!("/chat/Dialog/{GROUP_ID}.json"),
            &with(APP, FORM),
            "",
        )
        .await;
        assert_eq!(
            (app.status, base(&app)),
            (StatusCode::FORBIDDEN, "Forbidden. Need user.")
        );

        let owner = with(USER_123, FORM);
        let forced = call(
            addr,
            "DELETE",
            &format!("/chat/Dialog/{GROUP_ID},{MISSING_ID}.json"),
            &owner,
            "force=1",
        )
        .await;
        assert_eq!(forced.status, StatusCode::OK);
        assert_eq!(
            forced.json,
            json!({"SuccessfullyDeleted": {"ids": [GROUP_ID]},
            "NotFound": {"ids": [MISSING_ID]}, "WrongPermissions": {"ids": []}})
        );
        assert_eq!(sandbox.dialog(GROUP_ID), None);

        let gone = call(
            addr,
            "DELETE",
            &format!("/chat/Dialog/{GROUP_ID}.json"),
            &owner,
            "force=1",
        )
        .await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        // A percent-encoded comma separates ids too; the application may force.
        let encoded = call(
            addr,
            "DELETE",
            &format!("/chat/Dialog/{PUBLIC_ID}%2C{PRIVATE_ID}"),
            &with(APP, FORM),
            "force=1",
        )
        .await;
        assert_eq!(
            encoded.json["SuccessfullyDeleted"]["ids"],
            json!([PUBLIC_ID, PRIVATE_ID])
        );
        let all = call(addr, "GET", "/chat/Dialog.json", APP, "").await;
        assert_eq!(all.json["total_entries"], 0);
    }

    #[tokio::test]
    async fn unknown_routes_are_json_404() {
        let (_sandbox, addr) = start().await;
        for (method, path) in [
            ("GET", "/users.json"),
            ("GET", "/chat/Dialog/5d75393ba28f9a17e1cb0f9e.json"),
            ("POST", "/chat/Message.json"),
            ("PATCH", "/chat/Dialog/5d75393ba28f9a17e1cb0f9e.json"),
            ("GET", "/chat/dialog.json"),
            ("PUT", "/chat/Dialog/a/b.json"),
        ] {
            let answer = call(addr, method, path, APP, "").await;
            assert_eq!(
                (answer.status, base(&answer)),
                (StatusCode::NOT_FOUND, "Not found"),
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn records_every_request_as_received() {
        let (sandbox, addr) = start().await;
        let headers = with(&with(USER_123, JSON), ("x-custom", "kept"));
        let uri = format!("/chat/Dialog/{GROUP_ID}.json?_id%5Bin%5D=a%2Cb");
        call(addr, "PUT", &uri, &headers, r#"{"name":"x"}"#).await;
        call(addr, "GET", "/nowhere", &[], "").await;

        let received = sandbox.received();
        assert_eq!(received.len(), 2);
        let put = &received[0];
        assert_eq!(put.method, Method::PUT);
        assert_eq!(put.uri.to_string(), uri);
        assert_eq!(put.version, Version::HTTP_11);
        assert_eq!(put.headers["x-custom"], "kept");
        assert_eq!(put.headers["on-behalf-of"], "123");
        assert_eq!(&put.body[..], br#"{"name":"x"}"#);
        assert!(put.complete);
        assert_eq!(put.peer.map(|p| p.ip()), Some([127, 0, 0, 1].into()));
        assert_eq!(received[1].uri, "/nowhere");

        assert_eq!(sandbox.take_received().len(), 2);
        assert!(sandbox.received().is_empty());
    }

    #[tokio::test]
    async fn records_a_request_whose_body_was_cut_short() {
        use tokio::io::AsyncWriteExt;
        let (sandbox, addr) = start().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT /chat/Dialog/{GROUP_ID}.json HTTP/1.1\r\nhost: sandbox\r\n\
             authorization: ApiKey {KEY}\r\ncontent-length: 100\r\n\r\n{{\"name\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(stream);
        let mut received = Vec::new();
        for _ in 0..100 {
            received = sandbox.received();
            if !received.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(received.len(), 1);
        assert!(!received[0].complete);
        assert_eq!(&received[0].body[..], br#"{"name""#);
        assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "Party planning");
    }

    #[tokio::test]
    async fn fault_status_answers_in_quickblox_shape_and_applies_nothing() {
        let (sandbox, addr) = start().await;
        sandbox.set_fault(Fault::Status(503));
        let lookup = call(
            addr,
            "GET",
            &format!("/chat/Dialog.json?_id={GROUP_ID}"),
            USER_123,
            "",
        )
        .await;
        assert_eq!(
            (lookup.status, base(&lookup)),
            (StatusCode::SERVICE_UNAVAILABLE, "Service unavailable")
        );
        assert_eq!(sandbox.lookups(), 1);
        let put = call(
            addr,
            "PUT",
            &format!("/chat/Dialog/{GROUP_ID}.json"),
            &with(USER_123, JSON),
            r#"{"name":"x"}"#,
        )
        .await;
        assert_eq!(put.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "Party planning");
        sandbox.set_fault(Fault::Status(429));
        let limited = call(
            addr,
            "GET",
            "/session.json",
            &[("qb-token", GROUP_TOKEN)],
            "",
        )
        .await;
        assert_eq!(
            (limited.status, base(&limited)),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit for your current plan is exceeded"
            )
        );
        sandbox.set_fault(Fault::Status(42));
        assert_eq!(
            call(addr, "GET", "/", &[], "").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );

        sandbox.set_fault(Fault::None);
        assert_eq!(
            call(addr, "GET", "/chat/Dialog.json", USER_123, "")
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(sandbox.received().len(), 5);
    }

    #[tokio::test]
    async fn fault_delay_stalls_then_answers() {
        let (sandbox, addr) = start().await;
        sandbox.set_fault(Fault::Delay(Duration::from_millis(300)));
        let started = Instant::now();
        let answer = call(addr, "GET", "/chat/Dialog.json", USER_123, "").await;
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(sandbox.lookups(), 1);
    }

    #[tokio::test]
    async fn fault_reset_before_response() {
        let (sandbox, addr) = start().await;
        sandbox.set_fault(Fault::ResetBeforeResponse);
        let put = || {
            request(
                "PUT",
                &format!("http://{addr}/chat/Dialog/{GROUP_ID}.json"),
                &with(USER_123, JSON),
                r#"{"name":"reset"}"#,
            )
        };

        let (mut sender, conn) = h1(addr).await;
        assert!(sender.send_request(put()).await.is_err());
        // The connection is gone, not merely the request.
        assert!(tokio::time::timeout(Duration::from_secs(2), conn)
            .await
            .is_ok());

        let (mut sender, _conn) = h2(addr).await;
        assert!(sender.send_request(put()).await.is_err());

        assert_eq!(sandbox.received().len(), 2);
        assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "Party planning");
    }

    #[tokio::test]
    async fn fault_reset_mid_body_sends_head_and_part() {
        let (sandbox, addr) = start().await;
        sandbox.set_fault(Fault::ResetMidBody);
        let put = || {
            request(
                "PUT",
                &format!("http://{addr}/chat/Dialog/{GROUP_ID}.json"),
                &with(USER_123, JSON),
                r#"{"name":"half"}"#,
            )
        };

        let (mut sender, _conn) = h1(addr).await;
        let response = sender.send_request(put()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let full_len: usize = response.headers()[CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(full_len > 100);
        assert!(response.into_body().collect().await.is_err());

        let (mut sender, _conn) = h2(addr).await;
        let response = sender.send_request(put()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.into_body().collect().await.is_err());

        // The upstream did the work; only the answer was lost.
        assert_eq!(sandbox.dialog(GROUP_ID).unwrap()["name"], "half");
    }

    #[tokio::test]
    async fn fault_go_away_h1_closes_after_the_response() {
        let (sandbox, addr) = start().await;
        sandbox.set_fault(Fault::GoAway);
        let (mut sender, conn) = h1(addr).await;
        let response = sender
            .send_request(request("GET", "/chat/Dialog.json", USER_123, ""))
            .await
            .unwrap();
        assert_eq!(read(response).await.status, StatusCode::OK);
        let ended = tokio::time::timeout(Duration::from_secs(2), conn).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    }

    #[tokio::test]
    async fn fault_go_away_h2_lets_in_flight_requests_finish() {
        let (sandbox, addr) = start().await;
        sandbox.set_fault(Fault::GoAway);
        let (sender, conn) = h2(addr).await;
        let uri = format!("http://{addr}/chat/Dialog.json");
        let mut first = sender.clone();
        let mut second = sender.clone();
        let (a, b) = tokio::join!(
            first.send_request(request("GET", &uri, USER_123, "")),
            second.send_request(request("GET", &uri, USER_123, "")),
        );
        assert_eq!(read(a.unwrap()).await.status, StatusCode::OK);
        assert_eq!(read(b.unwrap()).await.status, StatusCode::OK);
        let ended = tokio::time::timeout(Duration::from_secs(2), conn).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
        let mut late = sender;
        assert!(late
            .send_request(request("GET", &uri, USER_123, ""))
            .await
            .is_err());
        assert_eq!(sandbox.received()[0].version, Version::HTTP_2);
        assert_eq!(sandbox.received()[0].uri, "/chat/Dialog.json");
    }

    #[tokio::test]
    async fn fault_big_body_streams_in_chunks() {
        let (sandbox, addr) = start().await;
        let len = 3 * CHUNK.len() + 7;
        sandbox.set_fault(Fault::BigBody(len));
        let (mut sender, _conn) = h1(addr).await;
        let response = sender
            .send_request(request("GET", "/anything", &[], ""))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(!response.headers().contains_key(CONTENT_LENGTH));
        let mut body = response.into_body();
        let (mut frames, mut total) = (0, 0);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                assert!(data.iter().all(|b| *b == b'a'));
                frames += 1;
                total += data.len();
            }
        }
        assert_eq!(total, len);
        assert!(frames > 1);

        let (mut sender, _conn) = h2(addr).await;
        let response = sender
            .send_request(request("GET", &format!("http://{addr}/x"), &[], ""))
            .await
            .unwrap();
        assert_eq!(
            response
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .len(),
            len
        );
    }

    #[tokio::test]
    async fn serve_connection_speaks_what_the_client_speaks() {
        let sandbox = Sandbox::new(None);
        for http2 in [false, true] {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let server_side = sandbox.clone();
            tokio::spawn(async move { server_side.serve_connection(server, None).await });
            let req = request(
                "GET",
                "http://sandbox/chat/Dialog.json",
                &[("authorization", "ApiKey k")],
                "",
            );
            let response = if http2 {
                let (mut sender, conn) =
                    http2::handshake(TokioExecutor::new(), TokioIo::new(client))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                sender.send_request(req).await.unwrap()
            } else {
                let (mut sender, conn) = http1::handshake(TokioIo::new(client)).await.unwrap();
                tokio::spawn(conn);
                sender.send_request(req).await.unwrap()
            };
            assert_eq!(read(response).await.json["total_entries"], 3);
        }
        let received = sandbox.received();
        assert_eq!(
            received
                .iter()
                .map(|r| (r.version, r.peer))
                .collect::<Vec<_>>(),
            [(Version::HTTP_11, None), (Version::HTTP_2, None)]
        );
    }

    #[tokio::test]
    async fn serve_returns_on_shutdown_and_stops_accepting() {
        let sandbox = Sandbox::new(None);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = sandbox.clone();
        let serving = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        assert_eq!(
            call(
                addr,
                "GET",
                "/chat/Dialog.json",
                &[("authorization", "ApiKey k")],
                ""
            )
            .await
            .status,
            StatusCode::OK
        );
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(2), serving)
            .await
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(1_567_971_414), "2019-09-08T19:36:54Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn user_ids_in_every_client_spelling() {
        assert_eq!(user_ids(&json!([1, 2])), Some(vec![1, 2]));
        assert_eq!(user_ids(&json!(["1", "2"])), Some(vec![1, 2]));
        assert_eq!(
            user_ids(&json!("91375295, 96705448")),
            Some(vec![91_375_295, 96_705_448])
        );
        assert_eq!(user_ids(&json!("1,2")), Some(vec![1, 2]));
        assert_eq!(user_ids(&json!(7)), Some(vec![7]));
        assert_eq!(user_ids(&json!("")), Some(vec![]));
        for bad in [
            json!("1,x"),
            json!(-1),
            json!(1.5),
            json!([[1]]),
            json!({"a": 1}),
            json!("+1"),
        ] {
            assert_eq!(user_ids(&bad), None, "{bad}");
        }
    }
}
