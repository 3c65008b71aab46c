use std::borrow::Cow;

/// Stable, documented error codes shared by every entry point (WebSocket v1 replies, HTTP API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, wrong shape, bad field value or bad channel name.
    BadRequest,
    /// The `op` is not one this server knows.
    UnknownOp,
    /// Credentials are missing or wrong (listeners with `auth_tokens`).
    Unauthorized,
    /// This listener (or identity) may not do that.
    Forbidden,
    /// The channel does not exist.
    NotFound,
    /// The publisher of the message replied to is no longer connected (or published over HTTP),
    /// so the reply has nobody to go to.
    Gone,
    /// The message or payload is larger than allowed.
    TooLarge,
    /// The connection sent commands faster than its listener allows, or its address opened
    /// connections faster or more often than allowed.
    RateLimited,
    /// A per-connection limit was reached (e.g. subscriptions per connection).
    LimitExceeded,
    /// The HTTP method is not supported on this path.
    MethodNotAllowed,
    /// A plain HTTP request reached a path that only serves WebSocket connections.
    UpgradeRequired,
    /// The listener is at `max_connections`.
    Unavailable,
    /// Something failed inside the gateway; never caused by the request.
    Internal,
}

impl ErrorCode {
    /// The snake_case wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::UnknownOp => "unknown_op",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Gone => "gone",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::LimitExceeded => "limit_exceeded",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UpgradeRequired => "upgrade_required",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status the HTTP API answers with for this code.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::BadRequest | Self::UnknownOp => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Gone => 410,
            Self::TooLarge => 413,
            Self::UpgradeRequired => 426,
            Self::RateLimited | Self::LimitExceeded => 429,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }

    /// Every code, for docs and exhaustive tests.
    pub const ALL: [ErrorCode; 13] = [
        Self::BadRequest,
        Self::UnknownOp,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::Gone,
        Self::TooLarge,
        Self::RateLimited,
        Self::LimitExceeded,
        Self::MethodNotAllowed,
        Self::UpgradeRequired,
        Self::Unavailable,
        Self::Internal,
    ];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as a client sees it: a code and a human-readable message written by us, never a
/// parser's or a type's internals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_distinct_wire_name_and_a_status() {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
        for c in ErrorCode::ALL {
            assert!(
                c.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert!((400..600).contains(&c.http_status()), "{c}");
        }
        assert_eq!(
            (ErrorCode::Gone.as_str(), ErrorCode::Gone.http_status()),
            ("gone", 410)
        );
    }
}
