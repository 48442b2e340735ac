//! One error type for every answer the gateway makes itself, mapped in one place to a status, an
//! `X-Qbgate-Reason` code and a QuickBlox-shaped JSON body. Internals never reach the client.
//!
//! Also [`retry_after_secs`]: the whole seconds a wait is reported in. A leaf: it imports no
//! phase; phases convert their own refusals into [`GateError`] next to their types.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// The methods the gateway forwards, as the `Allow` header of its 405 lists them.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Why the gateway answered a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateError {
    BadPath(&'static str),
    BadQuery,
    MethodOverride,
    /// A method the gateway does not forward (405, with `Allow`).
    MethodNotAllowed,
    /// A header name with a byte other than a letter, a digit or `-` (`_` above all, which the
    /// upstream folds into `-`).
    BadHeaderName,
    /// A second copy of a header a decision reads; names it.
    RepeatedHeader(&'static str),
    /// `Connection` names something other than a hop-by-hop token.
    ConnectionHeader,
    /// A write with a body and no `Content-Type`.
    UntypedBody,
    /// A header the gateway reads is malformed or repeated.
    BadHeader(&'static str),
    BadOnBehalfOf,
    BothCredentials,
    MissingCredentials,
    UnknownKey,
    KeyDisabled,
    KeyExpired,
    TokenRejected,
    UserRequired,
    UserRefused,
    UserNotAllowed,
    RouteNotAllowed,
    RateLimited {
        retry_after: Duration,
    },
    BodyTooLarge,
    BodyTimeout,
    BadBody,
    /// A dialog-rule or parameter decision: status, reason and message come from the rules.
    Rejected {
        status: StatusCode,
        reason: &'static str,
        /// `Some(field)`: a field-keyed body (422); `None`: a `base` body.
        field: Option<String>,
        message: Cow<'static, str>,
    },
    DialogNotFound,
    LookupFailed,
    UpstreamUnreachable,
    UpstreamFailed,
    UpstreamTimeout,
}

impl GateError {
    /// Status, stable reason code and client-facing message.
    pub fn parts(&self) -> (StatusCode, &'static str, Cow<'static, str>) {
        use GateError::*;
        let s = |m: &'static str| Cow::Borrowed(m);
        match self {
            BadPath(m) => (StatusCode::BAD_REQUEST, "bad_path", s(m)),
            BadQuery => (
                StatusCode::BAD_REQUEST,
                "bad_query",
                s("the query string is malformed"),
            ),
            MethodOverride => (
                StatusCode::BAD_REQUEST,
                "method_override",
                s("method overrides (_method, X-HTTP-Method-Override) are not allowed"),
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                s("this method is not forwarded"),
            ),
            BadHeaderName => (
                StatusCode::BAD_REQUEST,
                "header_name",
                s("header names may hold only letters, digits and -: the upstream reads _ and - as one"),
            ),
            RepeatedHeader(name) => (
                StatusCode::BAD_REQUEST,
                "header_repeated",
                Cow::Owned(format!("the {name} header is repeated")),
            ),
            ConnectionHeader => (
                StatusCode::BAD_REQUEST,
                "connection_header",
                s("Connection may name only close, keep-alive, upgrade, te and http2-settings"),
            ),
            UntypedBody => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "untyped_body",
                s("a request body needs a Content-Type"),
            ),
            BadHeader(m) => (StatusCode::BAD_REQUEST, "bad_header", s(m)),
            BadOnBehalfOf => (
                StatusCode::BAD_REQUEST,
                "bad_on_behalf_of",
                s("On-Behalf-Of must be a positive decimal user id"),
            ),
            BothCredentials => (
                StatusCode::BAD_REQUEST,
                "both_credentials",
                s("must be used either QB-Token or Authorization"),
            ),
            MissingCredentials => (
                StatusCode::UNAUTHORIZED,
                "missing_credentials",
                s("Authorization: ApiKey <key> or QB-Token is required"),
            ),
            UnknownKey => (
                StatusCode::UNAUTHORIZED,
                "unknown_key",
                s("the API key is not valid"),
            ),
            KeyDisabled => (
                StatusCode::UNAUTHORIZED,
                "key_disabled",
                s("the API key is disabled"),
            ),
            KeyExpired => (
                StatusCode::UNAUTHORIZED,
                "key_expired",
                s("the API key has expired"),
            ),
            TokenRejected => (
                StatusCode::UNAUTHORIZED,
                "qb_token_rejected",
                s("QB-Token is not accepted here: use Authorization: ApiKey <key>"),
            ),
            UserRequired => (
                StatusCode::FORBIDDEN,
                "on_behalf_of_required",
                s("this key must act on behalf of a user: On-Behalf-Of is required"),
            ),
            UserRefused => (
                StatusCode::FORBIDDEN,
                "on_behalf_of_refused",
                s("this key acts as the application: On-Behalf-Of is not allowed"),
            ),
            UserNotAllowed => (
                StatusCode::FORBIDDEN,
                "user_not_allowed",
                s("this key may not act on behalf of this user"),
            ),
            RouteNotAllowed => (
                StatusCode::FORBIDDEN,
                "route_not_allowed",
                s("this key may not use this route"),
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                s("Rate limit for your current plan is exceeded"),
            ),
            BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                s("the request body is too large"),
            ),
            BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                s("the request body did not arrive in time"),
            ),
            BadBody => (
                StatusCode::BAD_REQUEST,
                "bad_body",
                s("the request body could not be read"),
            ),
            Rejected {
                status,
                reason,
                message,
                ..
            } => (*status, reason, message.clone()),
            DialogNotFound => (StatusCode::NOT_FOUND, "dialog_not_found", s("Not found")),
            LookupFailed => (
                StatusCode::SERVICE_UNAVAILABLE,
                "lookup_failed",
                s("the dialog could not be checked: try again"),
            ),
            UpstreamUnreachable => (
                StatusCode::BAD_GATEWAY,
                "upstream_unreachable",
                s("the upstream could not be reached"),
            ),
            UpstreamFailed => (
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                s("the upstream connection failed"),
            ),
            UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                s("the upstream did not answer in time"),
            ),
        }
    }

    /// The reason code alone.
    pub fn reason(&self) -> &'static str {
        self.parts().1
    }

    /// The JSON response, in QuickBlox's shapes, with `X-Qbgate-Reason` (and `Retry-After`).
    pub fn to_response<B: From<Bytes>>(&self) -> Response<B> {
        let (status, reason, message) = self.parts();
        let key = match self {
            GateError::Rejected { field: Some(f), .. } => f.as_str(),
            _ => "base",
        };
        let body = serde_json::json!({ "errors": { key: [message] } }).to_string();
        let mut response = Response::new(B::from(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert("x-qbgate-reason", HeaderValue::from_static(reason));
        if *self == GateError::MethodNotAllowed {
            headers.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        }
        if let GateError::RateLimited { retry_after } = self {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(*retry_after)),
            );
        }
        response
    }
}

/// A duration in whole seconds, rounded up: how the rate-limit fields count seconds.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `Retry-After` for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    async fn body(e: GateError) -> (StatusCode, String, serde_json::Value) {
        let r: Response<Full<Bytes>> = e.to_response();
        let reason = r.headers()["x-qbgate-reason"].to_str().unwrap().to_string();
        let status = r.status();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, reason, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn base_and_field_shapes() {
        let (status, reason, json) = body(GateError::UnknownKey).await;
        assert_eq!(status, 401);
        assert_eq!(reason, "unknown_key");
        assert_eq!(
            json,
            serde_json::json!({"errors":{"base":["the API key is not valid"]}})
        );
        let (status, reason, json) = body(GateError::Rejected {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            reason: "dialog_name_too_long",
            field: Some("name".into()),
            message: "is too long (maximum is 200 characters)".into(),
        })
        .await;
        assert_eq!(
            (status.as_u16(), reason.as_str()),
            (422, "dialog_name_too_long")
        );
        assert_eq!(
            json,
            serde_json::json!({"errors":{"name":["is too long (maximum is 200 characters)"]}})
        );
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let r: Response<Full<Bytes>> = GateError::RateLimited {
            retry_after: Duration::from_millis(1200),
        }
        .to_response();
        assert_eq!(r.headers()["retry-after"], "2");
    }

    #[test]
    fn retry_after_secs_rounds_up_to_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3600)), 3600);
    }
}
