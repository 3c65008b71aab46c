//! The one mapping from our errors to what a client is answered: HTTP error responses (the API,
//! the handshake, cross-site refusals), the raw answers written to connections refused before
//! any request is read, and the error values shared by every transport (rate limits, admission
//! refusals). Transports call these; none builds an error answer of its own.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tslm_protocol::{ErrorCode, ProtoError, v1};

use crate::config::ListenerConfig;
use crate::iplimit::Refusal;

/// Why a request was answered 401, for the log (the message we wrote, never a credential):
/// carried in the response's extensions from [`error_response`] to the failed-authentication
/// budget that logs it.
#[derive(Clone)]
pub(crate) struct AuthRefusal(pub String);

/// `{"ok":false,"error":{"code":…,"message":…}}` with the code's HTTP status.
pub(crate) fn error_response(e: &ProtoError) -> Response {
    let mut body = String::from("{\"ok\":false,\"error\":");
    v1::push_error_object(&mut body, e);
    body.push('}');
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(status, body);
    if e.code == ErrorCode::Unauthorized {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        resp.extensions_mut()
            .insert(AuthRefusal(e.message.to_string()));
    }
    if e.code == ErrorCode::Unavailable {
        // Every `unavailable` is worth retrying soon (a busy publisher, a store that is down).
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

pub(crate) const ADDRESS_OVER_BUDGET: &str =
    "too many failed authentications from your address; retry later";

/// 429 `rate_limited` with `Retry-After` (whole seconds, at least 1) and `Connection: close`.
pub(crate) fn over_budget(wait: Duration, message: &'static str) -> Response {
    let mut resp = error_response(&ProtoError::new(ErrorCode::RateLimited, message));
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A command (WebSocket) or request (HTTP) over the connection's `rate_limit_per_second`.
pub(crate) fn rate_limited(cfg: &ListenerConfig) -> ProtoError {
    let rate = cfg.rate_limit_per_second.map_or(0, |r| r.get());
    ProtoError::new(
        ErrorCode::RateLimited,
        format!("rate limit exceeded: this listener allows {rate} commands per second"),
    )
}

/// 429: a connection refused over a per-address limit.
pub(crate) fn address_refused(why: Refusal) -> ProtoError {
    let message = match why {
        Refusal::TooManyConnections => "too many connections from your address; retry later",
        Refusal::TooFast => "too many new connections from your address; retry later",
        Refusal::TableFull => "too many addresses are connected; retry later",
    };
    ProtoError::new(ErrorCode::RateLimited, message)
}

/// 503: a connection refused over its listener's `max_connections`.
pub(crate) fn listener_full() -> ProtoError {
    ProtoError::new(
        ErrorCode::Unavailable,
        "this listener is at its connection limit; retry later",
    )
}

/// 503: a connection refused over the server's descriptor budget.
pub(crate) fn gateway_full() -> ProtoError {
    ProtoError::new(
        ErrorCode::Unavailable,
        "the gateway is at its connection limit; retry later",
    )
}

/// The complete HTTP response refusing a connection before its request is read.
pub(crate) fn refusal_bytes(error: &ProtoError) -> Vec<u8> {
    let mut body = String::from("{\"ok\":false,\"error\":");
    v1::push_error_object(&mut body, error);
    body.push('}');
    let status =
        StatusCode::from_u16(error.code.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
    )
    .into_bytes()
}
