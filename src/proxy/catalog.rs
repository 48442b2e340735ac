//! The catalog phase, right after the route allowlist: an API-key request is found in the
//! endpoint catalog ([`crate::rules::catalog`]) with one match on its route key, or refused (403
//! `route_unknown`) unless the key lists it in `unchecked_routes`, then forwarded unjudged, logged
//! and counted. A write that needs a user, on a key that acts as the application, is 403
//! `need_user`. `QB-Token` requests carry the user's own session: not subject to the catalog.

use crate::auth::Principal;
use crate::error::GateError;
use crate::policy::{RoutePattern, Segment};
use crate::request::Canonical;
use crate::rules::catalog::{self, Entry, Rule};

use super::{Access, Runtime};

/// Catalog phase; short-circuits with 403 `route_unknown` or `need_user`. `entry` is the
/// request's catalog row ([`catalog::find`], found once for the log's route too); an
/// `unchecked_routes` entry that lets the request through becomes the log's route. The row an
/// API-key request matched is handed on: its rule picks the request's judge
/// ([`super::judge::family`]).
pub(super) fn admit(
    runtime: &Runtime,
    principal: &Principal,
    request: &Canonical,
    entry: Option<&'static Entry>,
    access: &mut Access,
) -> Result<Option<&'static Entry>, GateError> {
    let Some(index) = principal.key else {
        return Ok(None);
    };
    let Some(key) = runtime.policy.keys.get(index as usize) else {
        return Err(GateError::UnknownKey);
    };
    match entry {
        Some(entry) if entry.rule == Rule::Refused => Err(catalog::route_unknown().into()),
        Some(entry) if entry.needs_user && principal.user.is_none() => {
            Err(catalog::need_user().into())
        }
        Some(entry) => Ok(Some(entry)),
        None => {
            let Some(pattern) = key
                .unchecked_routes
                .iter()
                .find(|r| r.matches(request.method(), request.path().route()))
            else {
                return Err(catalog::route_unknown().into());
            };
            // Rare (a route outside the catalog): the pattern's text is made here.
            let route = pattern_text(pattern);
            tracing::info!(
                key = %principal.key_id,
                method = %request.method(),
                route = route.as_str(),
                "unchecked route forwarded unjudged (unchecked_routes)"
            );
            access.pattern = Some(route.into());
            crate::metrics::unchecked(&principal.key_id);
            Ok(None)
        }
    }
}

/// An allowlist pattern's path as the policy reads it: `/custom/thing/*` (segments lowercased,
/// `.json` removed, `*` for one segment). Never a request's own path: no id reaches the log.
fn pattern_text(pattern: &RoutePattern) -> String {
    let mut text = String::new();
    for segment in &pattern.segments {
        text.push('/');
        match segment {
            Segment::Literal(literal) => text.push_str(literal),
            Segment::Any => text.push('*'),
        }
    }
    if text.is_empty() {
        text.push('/');
    }
    text
}
