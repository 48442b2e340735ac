//! The catalog phase, right after the route allowlist: an API-key request is found in the
//! endpoint catalog ([`crate::rules::catalog`]) with one match on its route key, or refused (403
//! `route_unknown`) unless the key lists it in `unchecked_routes`, then forwarded unjudged, logged
//! and counted. A write that needs a user, on a key that acts as the application, is 403
//! `need_user`. `QB-Token` requests carry the user's own session: not subject to the catalog.

use crate::auth::Principal;
use crate::error::GateError;
use crate::request::Canonical;
use crate::rules::catalog::{self, Entry, Rule};

use super::Runtime;

/// Catalog phase; short-circuits with 403 `route_unknown` or `need_user`. The row an API-key
/// request matched is handed on: its rule picks the request's judge ([`super::judge::family`]).
pub(super) fn admit(
    runtime: &Runtime,
    principal: &Principal,
    request: &Canonical,
) -> Result<Option<&'static Entry>, GateError> {
    let Some(index) = principal.key else {
        return Ok(None);
    };
    let Some(key) = runtime.policy.keys.get(index as usize) else {
        return Err(GateError::UnknownKey);
    };
    match catalog::find(request.method(), request.path()) {
        Some(entry) if entry.rule == Rule::Refused => Err(catalog::route_unknown().into()),
        Some(entry) if entry.needs_user && principal.user.is_none() => {
            Err(catalog::need_user().into())
        }
        Some(entry) => Ok(Some(entry)),
        None if key
            .unchecked_routes
            .iter()
            .any(|r| r.matches(request.method(), request.path().route())) =>
        {
            tracing::info!(
                key = %principal.key_id,
                method = %request.method(),
                route = request.path().route_key(),
                "unchecked route forwarded unjudged (unchecked_routes)"
            );
            crate::metrics::unchecked(&principal.key_id);
            Ok(None)
        }
        None => Err(catalog::route_unknown().into()),
    }
}
