//! Authentication: `Authorization: ApiKey` / `On-Behalf-Of` / `QB-Token` -> [`Principal`].
//!
//! Keys are looked up by the SHA-256 of the presented key, so the policy never holds a key.
//! Least privilege first: a key with `on_behalf_of: any` or a list must name its user; a key with
//! `none` acts as the application and may not name one.

use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use http::header::{self, HeaderName, HeaderValue};
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::error::GateError;
use crate::policy::{DigestPrefix, OnBehalfOf, Policy, QbTokenMode};

/// Key id that stands for session-token traffic in logs and metrics.
static QB_TOKEN: HeaderName = HeaderName::from_static("qb-token");
static ON_BEHALF_OF: HeaderName = HeaderName::from_static("on-behalf-of");
static TOKEN_ID: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("qb-token"));

/// Who is calling, as later phases need it.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Index of the key in the policy; `None` for a QB-Token request.
    pub key: Option<u32>,
    /// Key id for logs and metrics (`qb-token` for session tokens).
    pub key_id: Arc<str>,
    /// The acting user from `On-Behalf-Of`; `None` for an application key or a token whose user
    /// is not known yet.
    pub user: Option<u64>,
    /// SHA-256 of the QB-Token, when the request carries one.
    pub token: Option<[u8; 32]>,
    /// Which of the key's digests matched (its first 8 hex digits), for the access log.
    pub digest: Option<DigestPrefix>,
}

/// Run the authentication phase. Short-circuits with 400 (malformed or ambiguous credentials),
/// 401 (missing, unknown, disabled, expired, rejected token) or 403 (user not allowed).
pub fn authenticate(
    policy: &Policy,
    headers: &HeaderMap,
    now: SystemTime,
) -> Result<Principal, GateError> {
    let found = Credentials::of(headers);
    // Refused in this order when several are bad.
    let repeated = || GateError::BadHeader("a credential header is repeated");
    let authorization = found.authorization.single(repeated)?;
    let token = found.token.single(repeated)?;
    let on_behalf_of = found
        .on_behalf_of
        .single(|| GateError::BadOnBehalfOf)?
        .map(|v| parse_user(v.as_bytes()).ok_or(GateError::BadOnBehalfOf))
        .transpose()?;
    match (authorization, token) {
        (Some(_), Some(_)) => Err(GateError::BothCredentials),
        (None, None) => Err(GateError::MissingCredentials),
        (None, Some(token)) => {
            if policy.qb_token == QbTokenMode::Reject {
                return Err(GateError::TokenRejected);
            }
            if token.as_bytes().is_empty() {
                return Err(GateError::BadHeader("QB-Token is empty"));
            }
            if on_behalf_of.is_some() {
                return Err(GateError::BadHeader(
                    "On-Behalf-Of goes with an ApiKey, not a QB-Token",
                ));
            }
            Ok(Principal {
                key: None,
                key_id: TOKEN_ID.clone(),
                user: None,
                token: Some(Sha256::digest(token.as_bytes()).into()),
                digest: None,
            })
        }
        (Some(authorization), None) => {
            let key = api_key(authorization.as_bytes()).ok_or(GateError::UnknownKey)?;
            let digest: [u8; 32] = Sha256::digest(key).into();
            let (index, entry, matched) = policy
                .key_and_digest(&digest)
                .ok_or(GateError::UnknownKey)?;
            if entry.disabled {
                return Err(GateError::KeyDisabled);
            }
            // A rotated-out digest past its `not_after` is refused like an expired key; the key's
            // other digests keep working.
            if entry.expires_at.is_some_and(|t| t <= now)
                || matched.not_after.is_some_and(|t| t <= now)
            {
                return Err(GateError::KeyExpired);
            }
            if matched.not_after.is_some() {
                crate::metrics::rotating_digest(&entry.id, matched.prefix.as_str());
            }
            let user = match (&entry.on_behalf_of, on_behalf_of) {
                (OnBehalfOf::None, Some(_)) => return Err(GateError::UserRefused),
                (OnBehalfOf::None, None) => None,
                (_, None) => return Err(GateError::UserRequired),
                (OnBehalfOf::Any, Some(user)) => Some(user),
                (OnBehalfOf::Users(users), Some(user)) => {
                    if users.binary_search(&user).is_err() {
                        return Err(GateError::UserNotAllowed);
                    }
                    Some(user)
                }
            };
            Ok(Principal {
                key: Some(index),
                key_id: entry.id.clone(),
                user,
                token: None,
                digest: Some(matched.prefix),
            })
        }
    }
}

/// The credential headers, found in one pass over the fields: a name comparison per field,
/// where a lookup per name would hash it.
#[derive(Default)]
struct Credentials<'a> {
    authorization: Field<'a>,
    token: Field<'a>,
    on_behalf_of: Field<'a>,
}

impl<'a> Credentials<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut found = Credentials::default();
        // Every field, repeated names included.
        for (name, value) in headers {
            let field = if *name == header::AUTHORIZATION {
                &mut found.authorization
            } else if *name == QB_TOKEN {
                &mut found.token
            } else if *name == ON_BEHALF_OF {
                &mut found.on_behalf_of
            } else {
                continue;
            };
            field.note(value);
        }
        found
    }
}

/// One header's first value, and whether it came again.
#[derive(Default)]
struct Field<'a> {
    first: Option<&'a HeaderValue>,
    repeated: bool,
}

impl<'a> Field<'a> {
    fn note(&mut self, value: &'a HeaderValue) {
        if self.first.is_some() {
            self.repeated = true;
        } else {
            self.first = Some(value);
        }
    }

    /// The header's only value; two values are ambiguous and refused with `repeated`'s error.
    fn single(
        self,
        repeated: impl FnOnce() -> GateError,
    ) -> Result<Option<&'a HeaderValue>, GateError> {
        if self.repeated {
            return Err(repeated());
        }
        Ok(self.first)
    }
}

/// `ApiKey <key>` (scheme in any case) -> the key bytes.
fn api_key(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"ApiKey ") {
        return None;
    }
    let key = rest.trim_ascii();
    (!key.is_empty() && key.iter().all(|b| b.is_ascii_graphic())).then_some(key)
}

/// A positive decimal integer: digits only, no sign, no leading zero, no spaces, fits u64.
pub fn parse_user(value: &[u8]) -> Option<u64> {
    if value.is_empty()
        || value.len() > 20
        || value[0] == b'0'
        || !value.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests;
