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
//! | `POST /users.json` | 201 `{"user":{..}}` |
//! | `PUT` or `PATCH /users/<id>.json` | `{"user":{..}}` (an `old_password` given must match) |
//! | `DELETE /users/<id>.json`, `DELETE /users/external/<id>.json` | `{}` |
//! | `POST /users/<id>/tokens.json` (API key) | 201 `{"token":"..","expires_at":".."}`: a session of that user |
//! | `POST /chat/Message.json` | the new message; `chat_dialog_id`, or `recipient_id` (the PRIVATE dialog of the two, created if need be); other fields kept as custom fields |
//! | `GET /chat/Message.json` | `{"skip","limit","items"}`; `chat_dialog_id` required, filters `_id`, `_id[in]`, `limit`, `skip`; marks the listed messages read for a user |
//! | `GET /chat/Message/unread.json` | `{"total":N,"<dialog id>":n,..}` for the acting user |
//! | `PUT /chat/Message/<id>.json` | `{}`: `read=1`, `delivered=1` add the user to `read_ids`/`delivered_ids`; `message` replaces the text; `chat_dialog_id` required |
//! | `DELETE /chat/Message/<id>[,<id>..].json` | as for dialogs; without `force=1` hidden for the acting user only, with it deleted |
//! | `GET`/`PUT /chat/Dialog/<id>/notifications.json` | `{"notifications":{"enabled":1}}`; `enabled` 0 or 1 |
//! | `POST /events.json` | 201 `{"event":{..}}`, `user_id` the acting user; `event[notification_type]` required |
//! | `GET /events.json` | `{"current_page","per_page","total_entries","items":[{"event":{..}}]}`: the acting user's |
//! | `GET`/`PUT`/`DELETE /events/<id>.json` | `{"event":{..}}` (PUT merges `event[..]`), `{}` |
//! | `POST /subscriptions.json` | 201 `[{"subscription":{..}}]`, the acting user's |
//! | `GET /subscriptions.json` | `[{"subscription":{..}},..]`, the acting user's; 404 when none |
//! | `DELETE /subscriptions/<id>.json` | `{}` |
//! | `POST /blobs.json` | 201 `{"blob":{..,"blob_object_access":{..}}}`, owned by the acting user (a user needed) |
//! | `GET /blobs.json` | `{"current_page","per_page","total_entries","items":[{"blob":{..}}]}`: the acting user's own, `page`, `per_page` (10, at most 100) |
//! | `PUT /blobs/<id>.json` | `{"blob":{..}}`: `blob[name]`, `blob[content_type]` replaced |
//! | `PUT /blobs/<id>/complete.json` | `{}`: `blob[size]` set, marked complete |
//! | `DELETE /blobs/<id>.json` | `{}` |
//! | `POST /address_book.json` | `{"deleted","rejected","created","updated"}`: `contacts` merged into the acting user's book (`force=1` replaces it, `udid` picks a device's) |
//! | `GET /address_book.json`, `GET /address_book/registered_users.json` | the acting user's book; the users whose phone is in it |
//!
//! The path and the parameters are read as QuickBlox's Rails reads them, by the sandbox's own
//! reader (`sandbox/rack.rs`, `sandbox/routing.rs`), which shares nothing with the gateway's
//! parser: the path's words in any letter case (Unicode-folded), any extension (`.json` or none),
//! the id percent-decoded; `params` is the body (a form, multipart, an untyped POST, or JSON)
//! merged with the query string, the query winning, as `parse_nested_query` and Rails build them
//! (a repeated key: the last wins); `Rack::MethodOverride` turns a POST with `_method` in its form
//! body or an `X-HTTP-Method-Override` header into that method before routing; a body of any
//! other type is ignored. What Rails refuses (`%` not starting an escape, a key both scalar and
//! nested, malformed JSON, a value that is not UTF-8) is a 400. Every response is JSON with
//! `Content-Type: application/json; charset=utf-8` and Rails' `X-Runtime` header; anything
//! unrouted is a JSON 404.
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
//! Every seeded user is also an account (`sandbox/users.rs`): login `user<id>`, password
//! [`seed::password`], `external_user_id` [`seed::external_id`].
//!
//! Sessions: [`seed::GROUP_TOKEN`] (the group recipes' token) is user 123;
//! [`seed::DATA_TOKEN`] (the data recipe's token) is user 96754523.
//!
//! # Layout
//! This file serves connections, records requests and injects faults. `sandbox/rack.rs` (with
//! `rack/multipart.rs`) reads a request as Rack and Rails do, `sandbox/routing.rs` picks its
//! route, `sandbox/sessions.rs` finds who is acting and answers `GET /session.json`,
//! `sandbox/dialogs.rs` holds the dialogs and their endpoints, `sandbox/messages.rs` the chat
//! messages and notification settings, `sandbox/push.rs` push events and subscriptions,
//! `sandbox/users.rs` the user accounts and theirs, `sandbox/blobs.rs` the blobs and their
//! owners, `sandbox/address_book.rs` every user's address books, `sandbox/reply.rs` shapes the
//! answers (faulty bodies included); the tests are in `sandbox/tests.rs` and `sandbox/tests/`.
//!
//! # Faults
//! A fault set with [`Sandbox::set_fault`] applies to every request received afterwards, session
//! and dialog lookups included, until `Fault::None`. The request is recorded (and counted as a
//! lookup) before the fault acts.

mod address_book;
mod blobs;
mod dialogs;
mod messages;
mod push;
mod rack;
mod reply;
mod routing;
mod sessions;
#[cfg(test)]
mod tests;
mod users;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use dialogs::Dialog;
use rack::Env;
use reply::{base_error, Reply, ReplyBody};
use routing::Route;

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
    /// Messages: in GROUP, two sent by [`RECIPE_USER`] (its owner) and one by [`OCCUPANT`];
    /// in PRIVATE, one by [`OCCUPANT`] (its owner) and one by [`RECIPE_USER`]; in PUBLIC_GROUP,
    /// one by [`OWNER`].
    pub const GROUP_MESSAGE_BY_RECIPE: &str = "5e1a0c0de000000000000001";
    /// In GROUP, sent by [`OCCUPANT`].
    pub const GROUP_MESSAGE_BY_OCCUPANT: &str = "5e1a0c0de000000000000002";
    /// In PRIVATE, sent by [`OCCUPANT`] (the dialog's owner).
    pub const PRIVATE_MESSAGE_BY_OCCUPANT: &str = "5e1a0c0de000000000000003";
    /// In PRIVATE, sent by [`RECIPE_USER`] (an occupant, not the owner).
    pub const PRIVATE_MESSAGE_BY_RECIPE: &str = "5e1a0c0de000000000000004";
    /// In PUBLIC_GROUP, sent by [`OWNER`].
    pub const PUBLIC_MESSAGE: &str = "5e1a0c0de000000000000005";
    /// In GROUP, the second sent by [`RECIPE_USER`].
    pub const GROUP_MESSAGE_BY_RECIPE_2: &str = "5e1a0c0de000000000000006";
    /// Push events: one created by [`RECIPE_USER`], one by [`OCCUPANT`].
    pub const EVENT_BY_RECIPE: u64 = 1001;
    /// A push event created by [`OCCUPANT`].
    pub const EVENT_BY_OCCUPANT: u64 = 1002;
    /// Push subscriptions: one of [`RECIPE_USER`], one of [`OCCUPANT`].
    pub const SUBSCRIPTION_BY_RECIPE: u64 = 2001;
    /// A push subscription of [`OCCUPANT`].
    pub const SUBSCRIPTION_BY_OCCUPANT: u64 = 2002;
    /// Blob of [`RECIPE_USER`].
    pub const BLOB_BY_RECIPE: u64 = 101;
    /// Blob of [`OCCUPANT`].
    pub const BLOB_BY_OCCUPANT: u64 = 201;
    /// [`OWNER`]'s blobs: [`OWNER_BLOBS`] of them from this id on, more than one list page.
    pub const OWNER_FIRST_BLOB: u64 = 1001;
    pub const OWNER_BLOBS: u64 = 150;
    /// [`OTHER_OCCUPANT`]'s blobs: more than the gateway's ten pages of 100 from this id on.
    pub const HOARDER_FIRST_BLOB: u64 = 5001;
    pub const HOARDER_BLOBS: u64 = 1001;
    /// QuickBlox application id, as it appears in `xmpp_room_jid`.
    pub const APPLICATION_ID: u64 = 76730;

    /// The seeded password of every seeded user.
    pub fn password(user: u64) -> String {
        format!("password-{user}")
    }

    /// The phone of every seeded user, which an address book matches on.
    pub fn phone(user: u64) -> String {
        format!("+1555{user:09}")
    }

    /// The seeded `external_user_id` of every seeded user.
    pub fn external_id(user: u64) -> u64 {
        7_000_000_000 + user
    }
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
    users: Vec<users::User>,
    /// In the order sent.
    messages: Vec<messages::Message>,
    /// Blobs, in creation order (ids ascending).
    blobs: Vec<blobs::Blob>,
    /// (dialog, user) pairs whose push notifications are off.
    notifications_off: std::collections::HashSet<(String, u64)>,
    /// Push events and subscriptions (`sandbox/push.rs`), in creation order.
    events: Vec<push::Item>,
    subscriptions: Vec<push::Item>,
    /// Every user's address books (`sandbox/address_book.rs`), by user and device.
    address_books: HashMap<address_book::BookKey, Vec<address_book::Contact>>,
}
impl Sandbox {
    /// A sandbox seeded as the module doc describes. `api_key`: the key it accepts in
    /// `Authorization: ApiKey <key>`; `None` accepts any.
    pub fn new(api_key: Option<String>) -> Sandbox {
        let mut sessions = HashMap::new();
        sessions.insert(seed::GROUP_TOKEN.to_owned(), seed::RECIPE_USER);
        sessions.insert(seed::DATA_TOKEN.to_owned(), seed::OCCUPANT);
        let (events, subscriptions) = push::seed_push();
        let state = State {
            dialogs: dialogs::seed_dialogs(),
            sessions,
            users: users::seed_users(),
            messages: messages::seed_messages(),
            notifications_off: std::collections::HashSet::new(),
            events,
            subscriptions,
            blobs: blobs::seed_blobs(),
            address_books: HashMap::new(),
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
        // Routed with the method Rack::MethodOverride leaves, as the upstream routes.
        let env = rack::read(&parts.method, &parts.uri, &parts.headers, &body);
        if env.method == Method::GET && env.route == Route::Dialogs {
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
        tracing::debug!(method = %env.method, path = parts.uri.path(), ?fault, "sandbox: request");
        match fault {
            Fault::None => {}
            Fault::Status(code) => {
                return Ok(reply::json_response(reply::fault_reply(code), started))
            }
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
                let reply = self.respond(&parts.headers, env);
                return Ok(reply::truncated_response(reply, started));
            }
            Fault::GoAway => {
                go_away.notify_one();
                // Let the connection task send GOAWAY before this response goes out.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Fault::BigBody(len) => return Ok(reply::big_response(len, started)),
        }
        let reply = self.respond(&parts.headers, env);
        Ok(reply::json_response(reply, started))
    }

    fn respond(&self, headers: &HeaderMap, env: Env) -> Reply {
        match &env.route {
            Route::Unknown => return base_error(StatusCode::NOT_FOUND, "Not found"),
            Route::BadPath(message) => return base_error(StatusCode::BAD_REQUEST, message),
            _ => {}
        }
        let auth = match self.authenticate(headers) {
            Ok(auth) => auth,
            Err(reply) => return reply,
        };
        let params = match env.params {
            Ok(params) => params,
            Err(message) => return base_error(StatusCode::BAD_REQUEST, &message),
        };
        match (env.method, env.route) {
            (Method::GET, Route::Session) => self.session(&auth),
            (Method::GET, Route::Dialogs) => self.list(auth.actor, &params),
            (Method::POST, Route::Dialogs) => self.create(auth.actor, &params),
            (Method::PUT, Route::Dialog(id)) => self.update(&id, &params),
            (Method::DELETE, Route::Dialog(ids)) => self.delete(auth.actor, &ids, &params),
            (Method::POST, Route::Messages) => self.create_message(auth.actor, &params),
            (Method::GET, Route::Messages) => self.list_messages(auth.actor, &params),
            (Method::GET, Route::MessagesUnread) => self.unread_messages(auth.actor),
            (Method::PUT | Method::PATCH, Route::Message(id)) => {
                self.update_message(auth.actor, &id, &params)
            }
            (Method::DELETE, Route::Message(ids)) => {
                self.delete_messages(auth.actor, &ids, &params)
            }
            (Method::GET, Route::DialogNotifications(id)) => {
                self.notifications(auth.actor, &id, None)
            }
            (Method::PUT, Route::DialogNotifications(id)) => {
                self.notifications(auth.actor, &id, Some(&params))
            }
            (Method::POST, Route::Events) => self.create_event(auth.actor, &params),
            (Method::GET, Route::Events) => self.list_events(auth.actor),
            (Method::GET, Route::Event(id)) => self.event(&id, None),
            (Method::PUT | Method::PATCH, Route::Event(id)) => self.event(&id, Some(Some(&params))),
            (Method::DELETE, Route::Event(id)) => self.event(&id, Some(None)),
            (Method::POST, Route::Subscriptions) => self.create_subscription(auth.actor, &params),
            (Method::GET, Route::Subscriptions) => self.list_subscriptions(auth.actor),
            (Method::DELETE, Route::Subscription(id)) => self.delete_subscription(&id),
            (Method::POST, Route::Users) => self.create_user(&params),
            (Method::PUT | Method::PATCH, Route::User(id)) => self.update_user(&id, &params),
            (Method::DELETE, Route::User(id)) => self.delete_user(&id),
            (Method::DELETE, Route::UserExternal(id)) => self.delete_external_user(&id),
            (Method::POST, Route::UserTokens(id)) => self.mint_token(&auth, &id),
            (Method::GET, Route::Blobs) => self.list_blobs(auth.actor, &params),
            (Method::POST, Route::Blobs) => self.create_blob(auth.actor, &params),
            (Method::PUT | Method::PATCH, Route::Blob(id)) => self.update_blob(&id, &params),
            (Method::DELETE, Route::Blob(id)) => self.delete_blob(&id),
            (Method::PUT, Route::BlobComplete(id)) => self.complete_blob(&id, &params),
            (Method::POST, Route::AddressBook) => self.upload_address_book(auth.actor, &params),
            (Method::GET, Route::AddressBook) => self.get_address_book(auth.actor, &params),
            (Method::GET, Route::AddressBookRegistered) => {
                self.registered_users(auth.actor, &params)
            }
            _ => base_error(StatusCode::NOT_FOUND, "Not found"),
        }
    }

    /// A fresh 24-hex-digit id shaped like a MongoDB ObjectId: seconds, then a counter.
    fn new_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::SeqCst);
        let secs = reply::unix_seconds(SystemTime::now()) & 0xffff_ffff;
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
