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

impl Identity {
    /// Whether this identity authenticates a connection for what `cfg` requires: a publisher on
    /// a `publisher_auth` listener, a subscriber token on a `subscriber_auth` one, anything where
    /// neither is set. This alone lifts the authentication deadline: a credential that is valid
    /// but of the wrong kind for the listener (a publisher's token on a subscribers' listener)
    /// authenticates nothing there, wherever it was presented (handshake header or `auth`).
    pub(crate) fn meets(&self, cfg: &crate::config::ListenerConfig) -> bool {
        match self {
            Identity::Anonymous => !cfg.publisher_auth && !cfg.subscriber_auth,
            Identity::Publisher(_) => cfg.publisher_auth || !cfg.subscriber_auth,
            Identity::Subscriber(_) => cfg.subscriber_auth || !cfg.publisher_auth,
        }
    }
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
            // `expires_at` is at most year 9999 and `leeway` at most 300 s, so this never fails;
            // if it did, the grant would end at `exp` itself (never later).
            expires_at: g.expires_at.checked_add(leeway).unwrap_or(g.expires_at),
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

    /// When a session timer started at `now` should fire for this grant's expiry: at the expiry,
    /// or [`EXPIRY_TIMER_HORIZON`] from now if the expiry is later (a token valid for centuries
    /// is "not within any timer we wait for"; the session re-arms its timer every loop turn, at
    /// least once per ping interval, long before the horizon).
    pub(crate) fn expiry_deadline(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        expiry_deadline(now, self.remaining())
    }

    pub(crate) fn expires_unix(&self) -> u64 {
        self.expires_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The longest a session's expiry timer is armed for (a year; ping intervals are at most an hour).
pub(crate) const EXPIRY_TIMER_HORIZON: Duration = Duration::from_secs(365 * 86_400);

/// `now + remaining`, clamped to `now + EXPIRY_TIMER_HORIZON`; `now` itself (expire at once:
/// fail closed) should even that not be representable.
pub(crate) fn expiry_deadline(
    now: tokio::time::Instant,
    remaining: Duration,
) -> tokio::time::Instant {
    now.checked_add(remaining.min(EXPIRY_TIMER_HORIZON))
        .unwrap_or(now)
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

/// The publisher `name` and which of its keys, if `signature` (standard base64) is its signature
/// of `challenge`.
pub(crate) fn publisher_by_signature(
    publishers: &[Publisher],
    name: &str,
    challenge: &Challenge,
    signature: &str,
) -> Option<(usize, usize)> {
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
        .position(|k| keys::verify(k, &message, &sig))
        .map(|k| (i, k))
}

/// The publisher a client certificate names: the one whose `certificates` list holds one of the
/// certificate's `names` (its subject common name and DNS subject alternative names). A
/// certificate whose names map to two or more publishers (say a CN naming one and a SAN naming
/// another) is ambiguous and refused, as the config refuses two publishers claiming one name:
/// picking one by order would hand the holder whichever identity sorts first.
pub(crate) fn publisher_by_certificate(
    publishers: &[Publisher],
    names: &[String],
) -> Result<Option<usize>, ProtoError> {
    let mut matching = publishers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.certificates.iter().any(|c| names.contains(c)));
    let Some((first, _)) = matching.next() else {
        return Ok(None);
    };
    if matching.next().is_some() {
        let all: Vec<&str> = publishers
            .iter()
            .filter(|p| p.certificates.iter().any(|c| names.contains(c)))
            .map(|p| p.name.as_str())
            .collect();
        tracing::warn!(publishers = ?all, "client certificate names several publishers: refused");
        return Err(unauthorized(format!(
            "the client certificate names several publishers ({}); it authenticates none",
            all.join(", ")
        )));
    }
    Ok(Some(first))
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

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::auth_config::PublisherOps;

    fn publisher(name: &str, certificates: &[&str]) -> Publisher {
        Publisher {
            name: name.to_owned(),
            keys: Vec::new(),
            token_hashes: Vec::new(),
            certificates: certificates.iter().map(|c| (*c).to_owned()).collect(),
            ops: PublisherOps::default(),
            channels: Vec::new(),
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_certificate_maps_to_at_most_one_publisher() {
        let ps = [
            publisher("audit", &["audit.intranet"]),
            publisher("billing", &["billing.intranet", "billing-2.intranet"]),
        ];
        let one = |n: &[&str]| publisher_by_certificate(&ps, &names(n)).map_err(|e| e.code);
        assert_eq!(one(&[]), Ok(None));
        assert_eq!(one(&["someone.intranet"]), Ok(None));
        assert_eq!(one(&["billing", "billing.intranet"]), Ok(Some(1)));
        // Two names of the same publisher are not ambiguous.
        assert_eq!(
            one(&["billing.intranet", "billing-2.intranet"]),
            Ok(Some(1))
        );
        // A CN naming one publisher and a SAN naming another: refused, whatever the order.
        assert_eq!(
            one(&["billing.intranet", "audit.intranet"]),
            Err(ErrorCode::Unauthorized)
        );
        assert_eq!(
            one(&["audit.intranet", "billing.intranet"]),
            Err(ErrorCode::Unauthorized)
        );
    }

    fn issuer(leeway: Duration) -> crate::auth_config::Issuer {
        tslm_oidc::Issuer {
            name: "corp".to_owned(),
            issuer: "corp".to_owned(),
            keys: tslm_oidc::KeySource::Secret(vec![0; 32]),
            audiences: vec!["a".to_owned()],
            algorithms: vec![tslm_oidc::JwtAlgorithm::HS256],
            leeway,
            claims: tslm_oidc::ClaimMapping {
                channels_claim: Some("c".to_owned()),
                scope_prefix: None,
            },
            refresh_cooldown: Duration::from_secs(1),
            key_max_age: Duration::from_secs(1),
            fetch_timeout: Duration::from_secs(1),
            max_document_bytes: 1024,
            max_token_bytes: 1024,
        }
    }

    fn grant(expires_at: SystemTime) -> tslm_oidc::Grant {
        tslm_oidc::Grant {
            issuer: "corp".to_owned(),
            subject: None,
            expires_at,
            channels: vec!["x".to_owned()],
        }
    }

    #[test]
    fn an_expiry_at_the_end_of_time_never_overflows() {
        // Later than any grant the verifier makes (it clamps to year 9999), as a `Grant` built by
        // hand could be: the leeway is dropped rather than overflow.
        let mut last = UNIX_EPOCH;
        for secs in [i64::MAX as u64, u64::MAX / 2, tslm_oidc::MAX_EXPIRY_UNIX] {
            if let Some(t) = UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
                last = t;
            }
            let g = SubscriberGrant::from_grant(grant(last), &[issuer(Duration::from_secs(300))]);
            assert!(g.expires_at >= last);
            assert!(!g.expired());
            assert!(g.expires_unix() >= tslm_oidc::MAX_EXPIRY_UNIX);
            let now = tokio::time::Instant::now();
            assert_eq!(g.expiry_deadline(now), now + EXPIRY_TIMER_HORIZON);
        }
    }

    #[test]
    fn expiry_deadlines_are_clamped_to_the_horizon() {
        let now = tokio::time::Instant::now();
        let d = Duration::from_secs(5);
        assert_eq!(expiry_deadline(now, d), now + d);
        assert_eq!(expiry_deadline(now, Duration::ZERO), now);
        for far in [
            EXPIRY_TIMER_HORIZON,
            Duration::MAX,
            Duration::from_secs(i64::MAX as u64),
        ] {
            assert_eq!(expiry_deadline(now, far), now + EXPIRY_TIMER_HORIZON);
        }
        // An expired grant's deadline is now.
        let g = SubscriberGrant::from_grant(grant(UNIX_EPOCH), &[issuer(Duration::ZERO)]);
        assert!(g.expired());
        assert_eq!(g.expiry_deadline(now), now);
    }
}
