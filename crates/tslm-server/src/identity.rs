//! Who a connection or request is: anonymous, a whitelisted publisher (bearer token hash,
//! Ed25519 challenge signature, signed HTTP request or mutual-TLS certificate), or a subscriber
//! holding an access token from a configured identity provider. And what that allows.
//!
//! Credentials (tokens, signatures, keys) never reach a log line, an error message or a metric:
//! only publisher names, issuer names and subjects do.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, header};
use tslm_auth::keys::{self, Challenge};
use tslm_protocol::{ChannelName, ErrorCode, ProtoError};

use crate::auth_config::Publisher;
use crate::classes::Glob;

/// How far a signed HTTP request's timestamp may be from the gateway's clock, either way.
pub(crate) const SIGNATURE_WINDOW: Duration = Duration::from_secs(30);
/// The process-wide guard against replayed signed requests (`[server]`
/// `max_remembered_signatures` at once): a request accepted on one address is refused as a replay
/// on every other. Each of the N publishers with keys may have `capacity / N` signatures
/// remembered at once; beyond its share only that publisher is refused (429), so one busy
/// publisher never makes the others' requests fail.
pub(crate) fn replay_guard(
    publishers: &[Publisher],
    capacity: usize,
) -> tslm_auth::http_sig::ReplayGuard {
    let signers = publishers.iter().filter(|p| !p.keys.is_empty()).count();
    tslm_auth::http_sig::ReplayGuard::new(SIGNATURE_WINDOW, capacity)
        .with_publisher_quota((capacity / signers.max(1)).max(1))
}

/// What a connection (or one HTTP request) has proved.
#[derive(Debug, Clone, Default)]
pub(crate) enum Identity {
    #[default]
    Anonymous,
    /// Index into the configured publishers.
    Publisher(usize),
    Subscriber(Arc<SubscriberGrant>),
}

/// A validated access token: who it names and which channels it grants, until when.
#[derive(Debug)]
pub(crate) struct SubscriberGrant {
    /// The `[issuer.NAME]` that issued it.
    pub issuer: String,
    pub subject: Option<String>,
    pub expires_at: SystemTime,
    pub channels: Vec<Glob>,
}

impl SubscriberGrant {
    /// A validated token's grant. It lasts until the token's `exp` plus its issuer's leeway:
    /// the same instant validation stops accepting it.
    pub(crate) fn from_grant(g: tslm_oidc::Grant, issuers: &[crate::auth_config::Issuer]) -> Self {
        let leeway = issuers
            .iter()
            .find(|i| i.name == g.issuer)
            .map_or(Duration::ZERO, |i| i.leeway);
        Self {
            issuer: g.issuer,
            subject: g.subject,
            expires_at: g.expires_at + leeway,
            // Patterns that are not channel patterns grant nothing.
            channels: g
                .channels
                .iter()
                .filter_map(|p| Glob::parse(p).ok())
                .collect(),
        }
    }

    pub(crate) fn allows(&self, channel: &ChannelName) -> bool {
        self.channels.iter().any(|g| g.matches(channel.as_str()))
    }

    pub(crate) fn expired(&self) -> bool {
        SystemTime::now() >= self.expires_at
    }

    /// Time left before it expires (zero when it has).
    pub(crate) fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    pub(crate) fn expires_unix(&self) -> u64 {
        self.expires_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The publisher whose token hash matches `token`. Every hash of every publisher is compared (in
/// constant time each), so timing tells nothing about which publisher or how much matched.
pub(crate) fn publisher_by_token(publishers: &[Publisher], token: &str) -> Option<usize> {
    let mut found = None;
    for (i, p) in publishers.iter().enumerate() {
        if tslm_auth::token::find_token(&p.token_hashes, token).is_some() && found.is_none() {
            found = Some(i);
        }
    }
    found
}

/// The publisher `name` if `signature` (standard base64) is its signature of `challenge`.
pub(crate) fn publisher_by_signature(
    publishers: &[Publisher],
    name: &str,
    challenge: &Challenge,
    signature: &str,
) -> Option<usize> {
    use base64::Engine;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(signature)
        .ok()?;
    let (i, p) = publishers
        .iter()
        .enumerate()
        .find(|(_, p)| p.name == name)?;
    let message = keys::challenge_message(name, challenge);
    p.keys
        .iter()
        .any(|k| keys::verify(k, &message, &sig))
        .then_some(i)
}

/// The publisher one of whose `certificates` names is among the client certificate's names.
pub(crate) fn publisher_by_certificate(
    publishers: &[Publisher],
    names: &[String],
) -> Option<usize> {
    if names.is_empty() {
        return None;
    }
    publishers
        .iter()
        .position(|p| p.certificates.iter().any(|c| names.contains(c)))
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
}

pub(crate) fn unauthorized(message: impl Into<String>) -> ProtoError {
    ProtoError::new(ErrorCode::Unauthorized, message.into())
}

/// The error for a token the verifier refused: its stable reason, never the token.
pub(crate) fn token_refused(e: &tslm_oidc::TokenError) -> ProtoError {
    unauthorized(format!("access token refused: {e}"))
}
