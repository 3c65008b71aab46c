//! Why a token was refused.

/// Why [`Verifier::verify`](crate::Verifier::verify) refused a token.
///
/// The `Display` text is safe to send to the client that presented the token: it never contains
/// the token, a signature, a key, a secret, a URL or the name of a configured issuer. Use
/// [`TokenError::code`] for metrics and machine-readable replies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Longer than the issuer's (or, before the issuer is known, the largest) `max_token_bytes`.
    #[error("access token is larger than {max} bytes")]
    TooLarge { max: usize },
    /// Not a compact JWS (three base64url parts, a JSON header and a JSON object payload), or a
    /// header this verifier does not understand (`crit`).
    #[error("access token is malformed")]
    Malformed,
    /// The `iss` claim is missing or names no configured issuer.
    #[error("access token issuer is not accepted")]
    UnknownIssuer,
    /// The header's `alg` is not one of the issuer's configured algorithms (`none` never is).
    #[error("access token algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// The key the token names exists but is of another type than `alg` needs (an RSA key is never
    /// an HMAC secret), or its own `alg` differs.
    #[error("access token algorithm does not match its key")]
    KeyMismatch,
    /// No key of the issuer's key set matches the token's `kid`, even after a refresh.
    #[error("access token signing key is unknown")]
    UnknownKey,
    #[error("access token signature is invalid")]
    BadSignature,
    #[error("access token has expired")]
    Expired,
    #[error("access token is not yet valid")]
    NotYetValid,
    /// `aud` is missing or contains none of the issuer's audiences.
    #[error("access token audience is not accepted")]
    WrongAudience,
    /// A registered claim is missing (`exp`) or has the wrong type.
    #[error("access token claim {claim} is missing or invalid")]
    InvalidClaim { claim: &'static str },
    /// The token is valid but its claims grant no channel.
    #[error("access token grants no channels")]
    NoChannels,
    /// The issuer's keys could not be fetched, or were last fetched more than `key_max_age` ago:
    /// the verifier fails closed until a fetch succeeds.
    #[error("access token issuer keys are unavailable")]
    KeysUnavailable,
}

impl TokenError {
    /// A stable snake_case reason, for metrics, logs and error replies.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Malformed => "malformed",
            Self::UnknownIssuer => "unknown_issuer",
            Self::AlgorithmNotAllowed => "algorithm_not_allowed",
            Self::KeyMismatch => "key_mismatch",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongAudience => "wrong_audience",
            Self::InvalidClaim { .. } => "invalid_claim",
            Self::NoChannels => "no_channels",
            Self::KeysUnavailable => "keys_unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_and_distinct() {
        let all = [
            TokenError::TooLarge { max: 1 },
            TokenError::Malformed,
            TokenError::UnknownIssuer,
            TokenError::AlgorithmNotAllowed,
            TokenError::KeyMismatch,
            TokenError::UnknownKey,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongAudience,
            TokenError::InvalidClaim { claim: "exp" },
            TokenError::NoChannels,
            TokenError::KeysUnavailable,
        ];
        let mut codes: Vec<_> = all.iter().map(TokenError::code).collect();
        for c in &codes {
            assert!(
                c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{c}"
            );
        }
        for e in &all {
            let text = e.to_string();
            assert!(text.starts_with("access token"), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
