//! The rules phase: a dialog change read whole, parsed as the upstream would read it, and
//! judged against QuickBlox's rule table, with the dialogs it needs looked up through the proxy's
//! caches; after the upstream answered, what the answer teaches the cache. Writes under `/users`
//! on an API key are read whole too and judged against the key's powers ([`rules::users`]), and
//! a `token` parameter on an API key is refused wherever the gateway reads parameters. API-key
//! requests under `/chat/Message` and to a dialog's notification setting are judged against the
//! acting user ([`messages_phase`], [`rules::messages`]). API-key writes to one blob are judged
//! against the acting user's blobs ([`blobs_phase`], [`rules::blobs`]).

use http::header;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::lookup::LookupError;
use super::{read_body, Access, ResponseBody, Runtime};
use crate::auth::Principal;
use crate::error::GateError;
use crate::params;
use crate::policy::stem;
use crate::policy::RuleMode;
use crate::request::{self, Canonical, CanonicalPath, Media};
use crate::rules::catalog::{self, Entry, Rule};
use crate::rules::messages::{self, MessageFacts, MessageRoute};
use crate::rules::users::{self, Caller};
use crate::rules::{self, Actor, DialogRequest, DialogRoute};
use crate::upstream::{ProxyBody, UpstreamBody};

/// What the rules phase hands on: what it judged.
pub(super) struct Checked {
    /// The dialog route, when the request was judged.
    pub(super) route: Option<DialogRoute>,
    /// `report` mode: the rejection that `enforce` would have made.
    pub(super) would_reject: Option<&'static str>,
    /// The parameter document judged, kept only for an observer.
    pub(super) params: Option<serde_json::Map<String, serde_json::Value>>,
    /// A message list or a message create: the answer's messages (sender, dialog) are learned
    /// into the message cache ([`learn_messages`]).
    pub(super) learn_messages: Option<messages::Answer>,
    /// A dialog update's: the cached dialog it was judged against.
    pub(super) against: Option<Against>,
}

/// The dialog a judged update was checked against, and whether the update can change what the
/// dialog cache holds of it (owner, occupants, admins, type: what the rules read).
pub(super) struct Against {
    dialog: std::sync::Arc<rules::Dialog>,
    /// Only fields the rules do not read (name, photo, custom data): the cached dialog stays
    /// right whatever the upstream answers, so its answer need not be read.
    neutral: bool,
}

impl Checked {
    /// A request sent on without a judgment.
    pub(super) fn unjudged() -> Self {
        Checked {
            route: None,
            would_reject: None,
            params: None,
            learn_messages: None,
            against: None,
        }
    }
}

/// Is this a state-changing request under `/chat/Dialog` (cheap test on the route key; the rules
/// module's `classify` decides exactly)?
pub(super) fn is_dialog_change(method: &Method, path: &CanonicalPath) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && path.route_segment(0).map(stem) == Some("chat")
        && path.route_segment(1).map(stem) == Some("dialog")
}

/// Is this a state-changing request under `/users` (one look at the route key's first segment;
/// [`users::classify`] decides exactly)?
pub(super) fn is_users_change(method: &Method, path: &CanonicalPath) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
        && path.route_segment(0).map(stem) == Some("users")
}

/// An API-key request whose query names `token`: 400 `token_param` (QuickBlox would read it as a
/// session). Checked for every API-key request; the body only where the gateway reads it.
pub(super) fn check_query_token(
    principal: &Principal,
    request: &Canonical,
) -> Result<(), GateError> {
    if principal.key.is_some() && request.query_names_token() {
        return Err(token_param());
    }
    Ok(())
}

/// 400 `token_param`, counted.
pub(super) fn token_param() -> GateError {
    refused(users::token_param())
}

/// A rejection of the always-enforced rules, counted.
fn refused(rejection: rules::Rejection) -> GateError {
    crate::metrics::rule_violation(rejection.reason, "enforce");
    rejection.into()
}

/// Users phase, for writes under `/users` on an API key: the body read whole (within the same
/// bounds as a dialog change), parsed as the upstream would read it, its `token` parameter
/// refused, and the write judged against the key's acting user and powers. Short-circuits with
/// 400/403/413/415/422; never in report mode.
pub(super) async fn users_phase(
    runtime: &Runtime,
    principal: &Principal,
    request: &mut Canonical,
    body: &mut Option<Incoming>,
    access: &mut Access,
) -> Result<Checked, GateError> {
    let policy = &runtime.policy;
    let (limit, timeout) = (policy.max_body_bytes, policy.client.body_timeout);
    let Some(key) = principal.key.and_then(|i| policy.keys.get(i as usize)) else {
        return Err(GateError::UnknownKey);
    };
    let route = users::classify(request.method(), request.path().route()).map_err(refused)?;
    let params = judged_request(
        request,
        body,
        (limit, timeout),
        access,
        true,
        "a user change",
    )
    .await?;
    if let Some(route) = route {
        let caller = Caller {
            user: principal.user,
            powers: key.powers,
        };
        users::check(route, &params, caller).map_err(|rejection| {
            tracing::info!(key = %principal.key_id, rule = rejection.reason, "user rule rejected a request");
            refused(rejection)
        })?;
    }
    Ok(Checked {
        params: Some(params),
        ..Checked::unjudged()
    })
}

/// Rules phase, for state-changing requests under `/chat/Dialog` while the rules are on: dialog
/// changes are read whole, parsed as the upstream would read them, and judged against the rule
/// table. Short-circuits with 400/403/404/413/415/422/503 in `enforce` mode; `report` forwards and
/// marks the response. A request `classify` does not take for a dialog change streams through.
pub(super) async fn rules_phase(
    runtime: &Runtime,
    principal: &Principal,
    request: &mut Canonical,
    body: &mut Option<Incoming>,
    access: &mut Access,
) -> Result<Checked, GateError> {
    let policy = &runtime.policy;
    let (limit, timeout) = (policy.max_body_bytes, policy.client.body_timeout);
    let mode = policy.dialog_rules.mode;
    let segments: Vec<&str> = request.path().segments().collect();
    let Some(route) = rules::classify(request.method(), &segments) else {
        return unjudged(principal, request, body, (limit, timeout), access).await;
    };
    // Reading the body is never skipped, not even in report mode: what is forwarded is exactly
    // what was read.
    read_judged_body(request, body, (limit, timeout), access).await?;
    let (mut params, mut against) = (None, None);
    let verdict = judge(
        runtime,
        principal,
        request,
        &route,
        &mut params,
        &mut against,
    )
    .await;
    let would_reject = match verdict {
        Ok(()) => None,
        // Not a dialog rule: refused in every mode.
        Err(error) if error.reason() == "token_param" => return Err(error),
        Err(GateError::LookupFailed) if policy.dialog_rules.forward_on_lookup_error => {
            tracing::warn!(key = %principal.key_id, "dialog lookup failed: forwarding unchecked (on_lookup_error: forward)");
            None
        }
        Err(error) if mode == RuleMode::Report => {
            crate::metrics::rule_violation(error.reason(), "report");
            tracing::warn!(key = %principal.key_id, rule = error.reason(), "dialog rule would reject (report mode)");
            Some(error.reason())
        }
        Err(error) => {
            crate::metrics::rule_violation(error.reason(), "enforce");
            tracing::info!(key = %principal.key_id, rule = error.reason(), "dialog rule rejected a request");
            return Err(error);
        }
    };
    Ok(Checked {
        route: Some(route),
        would_reject,
        params,
        learn_messages: None,
        against,
    })
}

/// Judge one dialog change against the rule table. The parameter document it read is left in
/// `read`; an update that passed leaves the dialog it was judged against in `against`.
async fn judge(
    runtime: &Runtime,
    principal: &Principal,
    request: &Canonical,
    route: &DialogRoute,
    read: &mut Option<serde_json::Map<String, serde_json::Value>>,
    against: &mut Option<Against>,
) -> Result<(), GateError> {
    let headers = request.headers();
    let params = judged_params(request, "a dialog change")?;
    if principal.key.is_some() {
        if let Err(rejection) = users::check_token_param(&params) {
            *read = Some(params);
            return Err(refused(rejection));
        }
    }
    let parsed = rules::read(route, &params, &runtime.rule_options);
    *read = Some(params);
    let request = parsed?;
    let actor = actor(runtime, principal, headers).await?;
    let lookups = &runtime.lookups;
    let dialog = |id: String| async move {
        lookups
            .dialog(&runtime.client, &runtime.policy, headers, &id)
            .await
            .map_err(|e| match e {
                LookupError::NotFound => GateError::DialogNotFound,
                LookupError::Failed => GateError::LookupFailed,
            })
    };
    match request {
        DialogRequest::Create(doc) => rules::check_create(&doc, actor)?,
        DialogRequest::Update(doc) => {
            let DialogRoute::Update { id } = route else {
                return Err(GateError::BadPath("not an update route"));
            };
            let found = dialog(id.clone()).await?;
            rules::check_update(&doc, &found, actor)?;
            // Fields named by `allow_fields` are not read by the rules: whatever they are, they
            // count as a change.
            let neutral = doc.owner.is_none()
                && doc.push_all.is_none()
                && doc.pull_all.is_none()
                && doc.extra.is_empty();
            *against = Some(Against {
                dialog: found,
                neutral,
            });
        }
        DialogRequest::Delete { ids, force } => {
            if force {
                let mut found = Vec::with_capacity(ids.len());
                for id in ids {
                    found.push((*dialog(id).await?).clone());
                }
                rules::check_delete(true, &found, actor)?;
            }
        }
    }
    Ok(())
}

/// The acting user: `On-Behalf-Of`, the application, or the user behind a QB-Token.
async fn actor(
    runtime: &Runtime,
    principal: &Principal,
    headers: &http::HeaderMap,
) -> Result<Actor, GateError> {
    if let Some(digest) = principal.token {
        return match runtime
            .lookups
            .session_user(&runtime.client, &runtime.policy, headers, digest)
            .await
        {
            Ok(Some(user)) => Ok(Actor::User(user)),
            Ok(None) => Ok(Actor::Application),
            Err(LookupError::NotFound) => Err(GateError::Rejected {
                status: StatusCode::UNAUTHORIZED,
                reason: "qb_token_invalid",
                field: None,
                message: "Required session does not exist".into(),
            }),
            Err(LookupError::Failed) => Err(GateError::LookupFailed),
        };
    }
    Ok(principal.user.map_or(Actor::Application, Actor::User))
}

/// Evict the dialogs a judged request named: its outcome is unknown or changed them.
pub(super) async fn forget(runtime: &Runtime, route: &DialogRoute) {
    match route {
        DialogRoute::Update { id } => runtime.lookups.evict(std::slice::from_ref(id)).await,
        DialogRoute::Delete { ids } => runtime.lookups.evict(ids).await,
        _ => {}
    }
}

/// After the upstream answered a judged request: a successful update's dialog replaces the cached
/// one; a refusal or a force delete evicts what the cache knew. The answer to a successful update
/// is read whole either way (one cut short is answered 502, and forgotten); one that changed no
/// field the rules read (`against`, neutral) is not parsed: the cached dialog is still right
/// about everything the rules read.
pub(super) async fn learn(
    runtime: &Runtime,
    route: &DialogRoute,
    against: Option<&Against>,
    status: StatusCode,
    body: UpstreamBody,
) -> Result<ResponseBody, GateError> {
    match route {
        DialogRoute::Update { id } if status == StatusCode::OK => {
            let bytes = match http_body_util::Limited::new(body, 1 << 20).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    // Applied or not, we cannot tell: forget the dialog.
                    forget(runtime, route).await;
                    return Err(GateError::UpstreamFailed);
                }
            };
            if against.is_some_and(|a| a.neutral) {
                return Ok(UpstreamBody::from(bytes));
            }
            match rules::Dialog::from_slice(&bytes) {
                // The answer is what the update was judged against: nothing to learn.
                Some(dialog) if against.is_some_and(|a| *a.dialog == dialog) => {}
                Some(dialog) if &dialog.id == id => match against {
                    Some(_) => runtime.lookups.insert(dialog).await,
                    None => runtime.lookups.replace(dialog).await,
                },
                _ => runtime.lookups.evict(std::slice::from_ref(id)).await,
            }
            Ok(UpstreamBody::from(bytes))
        }
        DialogRoute::Update { id } => {
            runtime.lookups.evict(std::slice::from_ref(id)).await;
            Ok(body)
        }
        DialogRoute::Delete { ids } => {
            runtime.lookups.evict(ids).await;
            Ok(body)
        }
        _ => Ok(body),
    }
}

/// Largest message answer read to learn from: a list of 100 messages with text to spare. A
/// longer one, or one of unknown length, streams through untaught.
const MAX_LEARN_BYTES: u64 = 256 * 1024;

/// After the upstream answered a message list or a message create: the messages' dialog and
/// sender go into the message cache, so a later edit or force delete of them needs no lookup. Only
/// a successful JSON answer of known, bounded length is read (whole, as it is then sent on);
/// only the three fields are parsed. Anything else streams through untouched.
pub(super) async fn learn_messages(
    runtime: &Runtime,
    kind: messages::Answer,
    parts: &http::response::Parts,
    body: UpstreamBody,
) -> Result<ResponseBody, GateError> {
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !parts.status.is_success() || length.is_none_or(|n| n > MAX_LEARN_BYTES) {
        return Ok(body);
    }
    // The head is already taken from the upstream: an answer cut short is a failed upstream.
    let limit = usize::try_from(MAX_LEARN_BYTES).unwrap_or(usize::MAX);
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(GateError::UpstreamFailed),
    };
    let learned = messages::learned_from(kind, &bytes);
    if !learned.is_empty() {
        runtime.lookups.learn_messages(learned).await;
    }
    Ok(UpstreamBody::from(bytes))
}

/// Is this a request under `/chat/Message` or to `/chat/Dialog/{id}/notifications` (a look at
/// the route key's segments; [`messages::classify`] decides exactly)?
pub(super) fn is_message_route(path: &CanonicalPath) -> bool {
    if path.route_segment(0).map(stem) != Some("chat") {
        return false;
    }
    match path.route_segment(1).map(stem) {
        Some("message") => true,
        Some("dialog") => {
            path.len() == 4 && path.route_segment(3).map(stem) == Some("notifications")
        }
        _ => false,
    }
}

/// Messages phase, for API-key requests under `/chat/Message` and to a dialog's notification
/// setting: a GET is judged on its query alone (a body, rare on a GET, is read too, since Rails
/// would merge it); a write's body is read whole within the usual bounds. The parameters are
/// judged against the acting user ([`messages`]), with the dialog and messages looked up.
/// Always enforced; a failed lookup follows `dialog_rules.on_lookup_error`. A force delete
/// evicts its messages from the cache.
pub(super) async fn messages_phase(
    runtime: &Runtime,
    principal: &Principal,
    request: &mut Canonical,
    body: &mut Option<Incoming>,
    access: &mut Access,
) -> Result<Checked, GateError> {
    let policy = &runtime.policy;
    let (limit, timeout) = (policy.max_body_bytes, policy.client.body_timeout);
    let segments: Vec<&str> = request.path().segments().collect();
    let Some(route) = messages::classify(request.method(), &segments) else {
        return unjudged(principal, request, body, (limit, timeout), access).await;
    };
    let write = !route.is_read();
    let params = judged_request(
        request,
        body,
        (limit, timeout),
        access,
        write,
        "a message request",
    )
    .await?;
    let user = principal.user;
    let refuse = |rejection: rules::Rejection| {
        tracing::info!(key = %principal.key_id, rule = rejection.reason, "message rule rejected a request");
        refused(rejection)
    };
    let plan = messages::plan(&route, &params, user).map_err(refuse)?;
    let looked_up = match &plan.dialog {
        None => Ok(None),
        Some(id) => look_up(runtime, request.headers(), id, &plan.messages)
            .await
            .map(Some),
    };
    match looked_up {
        Ok(None) => {}
        Ok(Some((dialog, found))) => {
            let found: Vec<MessageFacts> = found.iter().map(|m| (**m).clone()).collect();
            messages::check(&route, &plan, Some(&dialog), &found, user).map_err(refuse)?;
        }
        Err(GateError::LookupFailed) if policy.dialog_rules.forward_on_lookup_error => {
            tracing::warn!(key = %principal.key_id, "message lookup failed: forwarding unchecked (on_lookup_error: forward)");
        }
        Err(error) => return Err(error),
    }
    if let MessageRoute::Delete { ids } = &route {
        if !plan.messages.is_empty() {
            runtime.lookups.evict_messages(ids).await;
        }
    }
    Ok(Checked {
        params: Some(params),
        learn_messages: match route {
            MessageRoute::List => Some(messages::Answer::List),
            MessageRoute::Create => Some(messages::Answer::One),
            _ => None,
        }
        .filter(|_| runtime.lookups.learns_messages()),
        ..Checked::unjudged()
    })
}

/// The dialog `id` and the messages `ids` of it that exist, through the caches.
async fn look_up(
    runtime: &Runtime,
    headers: &http::HeaderMap,
    id: &str,
    ids: &[String],
) -> Result<
    (
        std::sync::Arc<rules::Dialog>,
        Vec<std::sync::Arc<MessageFacts>>,
    ),
    GateError,
> {
    let failed = |e| match e {
        LookupError::NotFound => GateError::DialogNotFound,
        LookupError::Failed => GateError::LookupFailed,
    };
    let lookups = &runtime.lookups;
    let dialog = lookups
        .dialog(&runtime.client, &runtime.policy, headers, id)
        .await
        .map_err(failed)?;
    let found = if ids.is_empty() {
        Vec::new()
    } else {
        lookups
            .messages(&runtime.client, &runtime.policy, headers, id, ids)
            .await
            .map_err(failed)?
    };
    Ok((dialog, found))
}

/// The parameter document of a request a rule judges, read as the upstream reads it: the body
/// read whole (see [`read_judged_body`]) for a `write`, or when a read carries one (Rails merges
/// it); a read without a body reads nothing. A `token` parameter is refused.
async fn judged_request(
    request: &mut Canonical,
    body: &mut Option<Incoming>,
    limits: (u64, std::time::Duration),
    access: &mut Access,
    write: bool,
    what: &'static str,
) -> Result<serde_json::Map<String, serde_json::Value>, GateError> {
    if write
        || body
            .as_ref()
            .is_some_and(|b| !http_body::Body::is_end_stream(b))
    {
        read_judged_body(request, body, limits, access).await?;
    }
    let params = judged_params(request, what)?;
    users::check_token_param(&params).map_err(refused)?;
    Ok(params)
}

/// Read a body a rule judges: whole, within the policy's bounds (`access` learns it was read to
/// its end); a `_method` field of a POST's form refused; kept as the body that is forwarded, so
/// the upstream receives exactly the bytes judged.
async fn read_judged_body(
    request: &mut Canonical,
    body: &mut Option<Incoming>,
    (limit, timeout): (u64, std::time::Duration),
    access: &mut Access,
) -> Result<(), GateError> {
    let bytes = read_body(body, limit, timeout, access).await?;
    if *request.method() == Method::POST {
        request::body::check_override(request.media(), &bytes)?;
    }
    request.set_body(ProxyBody::full(bytes));
    Ok(())
}

/// The parameter document a rule judges: the query merged with the body as Rails builds it. A
/// compressed body cannot be read as the upstream would: 415. `what` names the request in the
/// message.
fn judged_params(
    request: &Canonical,
    what: &'static str,
) -> Result<serde_json::Map<String, serde_json::Value>, GateError> {
    let body = request.body_bytes();
    if body.is_some() && request.headers().contains_key(header::CONTENT_ENCODING) {
        return Err(GateError::Rejected {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reason: "content_encoding",
            field: None,
            message: format!("a Content-Encoding on {what} cannot be checked").into(),
        });
    }
    let body = body.map_or(&[][..], |b| &b[..]);
    Ok(params::parse(
        request.media().map(Media::as_str),
        request.query(),
        body,
    )?)
}

// Push phase ([`crate::rules::push`]).

/// Is this a request under `/events` or `/subscriptions` ([`push::classify`] decides exactly)?
///
/// [`push::classify`]: crate::rules::push::classify
pub(super) fn is_push_route(path: &CanonicalPath) -> bool {
    matches!(
        path.route_segment(0).map(stem),
        Some("events" | "subscriptions")
    )
}

/// Push phase, for API-key requests acting for a user under `/events` and `/subscriptions`: an
/// event's fields judged, an event's owner and a user's subscriptions looked up. A GET reads no
/// body unless one is sent (Rails would merge it). Always enforced; a failed lookup follows
/// `dialog_rules.on_lookup_error`. A delete evicts what the caches knew of its target.
pub(super) async fn push_phase(
    runtime: &Runtime,
    principal: &Principal,
    request: &mut Canonical,
    body: &mut Option<Incoming>,
    access: &mut Access,
) -> Result<Checked, GateError> {
    use crate::rules::push::{self, PushRoute};
    let policy = &runtime.policy;
    let (limit, timeout) = (policy.max_body_bytes, policy.client.body_timeout);
    let segments: Vec<&str> = request.path().segments().collect();
    let (Some(route), Some(user)) = (push::classify(request.method(), &segments), principal.user)
    else {
        // Not judged here; an application key's writes were refused by the catalog.
        return unjudged(principal, request, body, (limit, timeout), access).await;
    };
    let write = !route.is_read();
    let params = judged_request(
        request,
        body,
        (limit, timeout),
        access,
        write,
        "a push request",
    )
    .await?;
    let refuse = |rejection: rules::Rejection| {
        tracing::info!(key = %principal.key_id, rule = rejection.reason, "push rule rejected a request");
        refused(rejection)
    };
    let lookups = runtime.lookups.push();
    let (client, headers) = (&runtime.client, request.headers());
    let looked_up = match &route {
        PushRoute::Create => push::check_event(&params, false).map_err(refuse),
        PushRoute::EventMissing => push::check_event_owner(None, user).map_err(refuse),
        PushRoute::EventGet { id }
        | PushRoute::EventUpdate { id }
        | PushRoute::EventDelete { id } => {
            if matches!(route, PushRoute::EventUpdate { .. }) {
                push::check_event(&params, true).map_err(refuse)?;
            }
            match lookups.event_owner(client, policy, headers, *id).await {
                Ok(owner) => push::check_event_owner(Some(owner), user).map_err(refuse),
                Err(LookupError::NotFound) => push::check_event_owner(None, user).map_err(refuse),
                Err(LookupError::Failed) => Err(GateError::LookupFailed),
            }
        }
        PushRoute::SubscriptionDelete { id: None } => {
            push::check_subscription_owner(false).map_err(refuse)
        }
        PushRoute::SubscriptionDelete { id: Some(id) } => {
            match lookups
                .owns_subscription(client, policy, headers, user, *id)
                .await
            {
                Ok(owned) => push::check_subscription_owner(owned).map_err(refuse),
                Err(_) => Err(GateError::LookupFailed),
            }
        }
    };
    match looked_up {
        Ok(()) => {}
        Err(GateError::LookupFailed) if policy.dialog_rules.forward_on_lookup_error => {
            tracing::warn!(key = %principal.key_id, "push lookup failed: forwarding unchecked (on_lookup_error: forward)");
        }
        Err(error) => return Err(error),
    }
    match route {
        PushRoute::EventDelete { id } => lookups.evict_event(id).await,
        PushRoute::SubscriptionDelete { .. } => lookups.evict_subscriptions(user).await,
        _ => {}
    }
    Ok(Checked {
        params: Some(params),
        ..Checked::unjudged()
    })
}

// ---- Blob ownership ----

/// Is this a `PUT`, `PATCH` or `DELETE` under `/blobs` (one look at the route key's first
/// segment; [`rules::blobs::classify`] decides exactly)?
pub(super) fn is_blob_write(method: &Method, path: &CanonicalPath) -> bool {
    matches!(*method, Method::PUT | Method::PATCH | Method::DELETE)
        && path.route_segment(0).map(stem) == Some("blobs")
}

/// Blobs phase, for API-key writes to one blob (`PUT /blobs/{id}`, `PUT /blobs/{id}/complete`,
/// `DELETE /blobs/{id}`): the small body read whole, its `token` parameter refused, and the id
/// judged against the acting user's blobs, looked up as him ([`rules::blobs`]). Always
/// enforced; a failed lookup follows `dialog_rules.on_lookup_error`. A delete forgets the
/// user's cached list. Anything else under `/blobs` streams through.
pub(super) async fn blobs_phase(
    runtime: &Runtime,
    principal: &Principal,
    request: &mut Canonical,
    body: &mut Option<Incoming>,
    access: &mut Access,
) -> Result<Checked, GateError> {
    let policy = &runtime.policy;
    let (limit, timeout) = (policy.max_body_bytes, policy.client.body_timeout);
    let segments: Vec<&str> = request.path().segments().collect();
    let Some(route) = rules::blobs::classify(request.method(), &segments) else {
        return unjudged(principal, request, body, (limit, timeout), access).await;
    };
    let refuse = |rejection: rules::Rejection| {
        tracing::info!(key = %principal.key_id, rule = rejection.reason, "blob rule rejected a request");
        refused(rejection)
    };
    let route = route.map_err(refuse)?;
    let params = judged_request(
        request,
        body,
        (limit, timeout),
        access,
        true,
        "a blob change",
    )
    .await?;
    // An application key is refused by the catalog (`need_user`); this is a second fence.
    let Some(user) = principal.user else {
        return Err(rules::catalog::need_user().into());
    };
    let lookups = &runtime.lookups;
    let headers = request.headers();
    match lookups
        .blobs(&runtime.client, policy, headers, user, route.id())
        .await
    {
        Ok(owned) => rules::blobs::check(route, &owned).map_err(refuse)?,
        Err(_) if policy.dialog_rules.forward_on_lookup_error => {
            tracing::warn!(key = %principal.key_id, "blob lookup failed: forwarding unchecked (on_lookup_error: forward)");
        }
        Err(_) => return Err(GateError::LookupFailed),
    }
    if let rules::blobs::BlobRoute::Delete { .. } = route {
        runtime.lookups.evict_blobs(user).await;
    }
    Ok(Checked {
        params: Some(params),
        ..Checked::unjudged()
    })
}

/// A request no rule judges, or that a family's phase hands back: a body the upstream reads as
/// parameters is read whole and checked as on the judged routes, everything else streams.
/// - a form or multipart POST: its `_method` (Rack would change the method) is refused;
/// - on an API key, a form or JSON write: its `token` parameter (QuickBlox would read it as a
///   session) is 400 `token_param`.
///
/// Any other body (an upload) streams through under the policy's bounds.
pub(super) async fn unjudged(
    principal: &Principal,
    request: &mut Canonical,
    body: &mut Option<Incoming>,
    (limit, timeout): (u64, std::time::Duration),
    access: &mut Access,
) -> Result<Checked, GateError> {
    let kind = request.media().map(Media::kind);
    let write = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let reads_token = write
        && principal.key.is_some()
        && matches!(
            kind,
            Some(request::MediaKind::Json | request::MediaKind::Form)
        );
    if !reads_token && !request::body::may_override(request.method(), request.media()) {
        if let Some(incoming) = body.take() {
            request.set_body(ProxyBody::stream(incoming, limit, timeout));
        }
        return Ok(Checked::unjudged());
    }
    let bytes = read_body(body, limit, timeout, access).await?;
    request::body::check_override(request.media(), &bytes)?;
    let form_token = reads_token
        && kind == Some(request::MediaKind::Form)
        && request::body::form_names(&bytes, b"token")?;
    request.set_body(ProxyBody::full(bytes));
    if form_token {
        return Err(token_param());
    }
    if reads_token && kind == Some(request::MediaKind::Json) {
        let params = judged_params(request, "a request")?;
        users::check_token_param(&params).map_err(refused)?;
    }
    Ok(Checked::unjudged())
}

/// The families of judged requests, each with its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    Messages,
    Push,
    Dialogs,
    Users,
    Blobs,
}

/// The judge of an API-key request found in the catalog, from its row: the same family that
/// [`family_by_route`] picks for it (a test holds the two in agreement on every row), with no
/// second look at the route. The rows under `/events` and `/subscriptions` and the message rows
/// go to their phase whatever their rule (the phase streams what it does not judge).
pub(super) fn family(row: &Entry, dialog_rules: bool) -> Option<Family> {
    match (row.family, row.rule) {
        (catalog::Family::Messages, _) | (_, Rule::Messages) => Some(Family::Messages),
        (catalog::Family::Push, _) | (_, Rule::Push) => Some(Family::Push),
        (_, Rule::Dialogs) if dialog_rules => Some(Family::Dialogs),
        (_, Rule::Users) => Some(Family::Users),
        (_, Rule::Blobs) => Some(Family::Blobs),
        _ => None,
    }
}

/// The judge of a request that has no catalog row (`QB-Token` requests, and an API key's
/// `unchecked_routes`), told by its route: the first family that takes it. Messages come before
/// the dialog rules, which would take `PUT /chat/Dialog/{id}/notifications` for a dialog change.
pub(super) fn family_by_route(
    key: bool,
    dialog_rules: bool,
    method: &Method,
    path: &CanonicalPath,
) -> Option<Family> {
    if key && is_message_route(path) {
        Some(Family::Messages)
    } else if key && is_push_route(path) {
        Some(Family::Push)
    } else if dialog_rules && is_dialog_change(method, path) {
        Some(Family::Dialogs)
    } else if key && is_users_change(method, path) {
        Some(Family::Users)
    } else if key && is_blob_write(method, path) {
        Some(Family::Blobs)
    } else {
        None
    }
}

/// Run the phase of `family`.
pub(super) async fn run(
    family: Family,
    runtime: &Runtime,
    principal: &Principal,
    request: &mut Canonical,
    body: &mut Option<Incoming>,
    access: &mut Access,
) -> Result<Checked, GateError> {
    match family {
        Family::Messages => messages_phase(runtime, principal, request, body, access).await,
        Family::Push => push_phase(runtime, principal, request, body, access).await,
        Family::Dialogs => rules_phase(runtime, principal, request, body, access).await,
        Family::Users => users_phase(runtime, principal, request, body, access).await,
        Family::Blobs => blobs_phase(runtime, principal, request, body, access).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> CanonicalPath {
        let raw = http::uri::PathAndQuery::try_from(text).unwrap();
        CanonicalPath::parse(&raw).unwrap()
    }

    /// The row's judge is the one the route tests pick, for every row, every method that finds
    /// it, and both states of the dialog rules.
    #[test]
    fn a_catalog_row_picks_the_judge_its_route_would() {
        for row in catalog::CATALOG {
            let text: Vec<&str> = row
                .path
                .split('/')
                .map(|s| match s {
                    "{ids}" => "5d75a,5d75b",
                    "{ext}" => "ext-9",
                    s if s.starts_with('{') => "5d75",
                    s => s,
                })
                .collect();
            let mut methods = vec![Method::from_bytes(row.method.as_bytes()).unwrap()];
            match row.method {
                "GET" => methods.push(Method::HEAD),
                "PUT" => methods.push(Method::PATCH),
                _ => {}
            }
            for suffix in ["", ".json"] {
                let path = path(&format!("{}{suffix}", text.join("/")));
                for method in &methods {
                    assert_eq!(catalog::find(method, &path), Some(row));
                    for dialog_rules in [true, false] {
                        assert_eq!(
                            family(row, dialog_rules),
                            family_by_route(true, dialog_rules, method, &path),
                            "{method} {} (dialog rules {dialog_rules})",
                            row.path
                        );
                    }
                }
            }
        }
    }
}
