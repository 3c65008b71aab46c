//! Tickets: short-lived credentials for the browser's `EventSource`, which cannot send an
//! `Authorization` header. A page that holds an access token asks for a ticket with
//! `POST /v1/tickets` (the token in the header) and opens `GET /v1/events?ticket=…`: the identity
//! provider's token never travels in a URL, where proxies and servers log it.
//!
//! A ticket is stateless: the grant it carries (issuer, subject, channel patterns), the listener
//! it was issued for and its expiry, signed with HMAC-SHA-256 under a key the process draws at
//! random when it starts. It expires a minute after it was issued, or with its token if that is
//! sooner; it can be used again until then (the browser reconnects with the same URL), only on
//! the listener that issued it, and only for what its token granted. A gateway restart makes
//! every ticket invalid (the page asks for a new one). Tickets are never logged.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tslm_protocol::ProtoError;

use crate::classes::Glob;
use crate::identity::{SubscriberGrant, unauthorized};

/// How long a ticket lasts at most.
pub(crate) const LIFETIME: Duration = Duration::from_secs(60);
/// The longest ticket read (a grant is bounded by the token it came from).
pub(crate) const MAX_BYTES: usize = 8192;

#[derive(Serialize, Deserialize)]
struct Claims {
    /// The listener it was issued on.
    l: String,
    /// The issuer, the subject and the channel patterns of the token it came from.
    i: String,
    s: Option<String>,
    c: Vec<String>,
    /// Until when it may be redeemed (opening a stream or a poll), Unix seconds: a minute.
    e: u64,
    /// When the token's grant ends, Unix seconds: what a stream opened with the ticket lasts.
    x: u64,
}

/// The process's key: drawn once, at random.
fn key() -> &'static [u8; 64] {
    static KEY: OnceLock<[u8; 64]> = OnceLock::new();
    KEY.get_or_init(rand::random)
}

fn mac(payload: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as hmac::digest::KeyInit>::new(key().into());
    m.update(payload.as_bytes());
    m
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A ticket for `grant` on listener `listener`; returns it with its lifetime in seconds.
pub(crate) fn issue(listener: &str, grant: &SubscriberGrant, now: SystemTime) -> (String, u64) {
    let grant_ends = unix(grant.expires_at);
    let expires = grant_ends.min(unix(now) + LIFETIME.as_secs());
    let claims = Claims {
        l: listener.to_owned(),
        i: grant.issuer.clone(),
        s: grant.subject.clone(),
        c: grant.channels.iter().map(Glob::pattern).collect(),
        e: expires,
        x: grant_ends,
    };
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
    let tag = URL_SAFE_NO_PAD.encode(mac(&payload).finalize().into_bytes());
    (
        format!("{payload}.{tag}"),
        expires.saturating_sub(unix(now)),
    )
}

/// The grant of `ticket` on listener `listener` (issued by one of `issuers`, still configured),
/// or 401. The grant lasts as long as the token it came from.
pub(crate) fn redeem(
    listener: &str,
    issuers: &[crate::auth_config::Issuer],
    ticket: &str,
    now: SystemTime,
) -> Result<SubscriberGrant, ProtoError> {
    let refused = || unauthorized("ticket refused: ask for a new one (POST /v1/tickets)");
    if ticket.len() > MAX_BYTES {
        return Err(refused());
    }
    let (payload, tag) = ticket.split_once('.').ok_or_else(refused)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| refused())?;
    // The signature first: nothing of an unsigned ticket is parsed.
    mac(payload).verify_slice(&tag).map_err(|_| refused())?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| refused())?;
    let claims: Claims = serde_json::from_slice(&bytes).map_err(|_| refused())?;
    if claims.l != listener {
        return Err(unauthorized(
            "ticket refused: it was issued on another listener",
        ));
    }
    if claims.e <= unix(now) {
        return Err(unauthorized("ticket expired: ask for a new one"));
    }
    if !issuers.iter().any(|i| i.name == claims.i) {
        return Err(unauthorized(
            "ticket refused: its token's issuer is no longer configured",
        ));
    }
    Ok(SubscriberGrant {
        issuer: claims.i,
        subject: claims.s,
        expires_at: UNIX_EPOCH + Duration::from_secs(claims.x),
        channels: claims
            .c
            .iter()
            .filter_map(|p| Glob::parse(p).ok())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idp() -> Vec<crate::auth_config::Issuer> {
        let toml = "[listener.a]\nip='127.0.0.1'\nport=0\n[issuer.idp]\nissuer = 'x'\naudiences = ['a']\nchannels_claim = 'c'\nsecret = 'cmVsb2FkLXRlc3Qtc2VjcmV0LWEtb2YtMzItYnl0ZXMtb3ItbW9yZQ=='\n";
        crate::config::Config::from_toml_str(toml, "t")
            .unwrap()
            .issuers
            .as_ref()
            .clone()
    }

    fn grant(expires_in: u64, now: SystemTime) -> SubscriberGrant {
        SubscriberGrant {
            issuer: "idp".into(),
            subject: Some("alice".into()),
            expires_at: now + Duration::from_secs(expires_in),
            channels: vec![Glob::parse("news.*").unwrap(), Glob::parse("a").unwrap()],
        }
    }

    #[test]
    fn a_ticket_carries_its_grant_for_a_minute_at_most() {
        let now = SystemTime::now();
        let (t, ttl) = issue("public", &grant(3600, now), now);
        assert_eq!(ttl, 60);
        let g = redeem("public", &idp(), &t, now).unwrap();
        assert_eq!(
            (g.issuer.as_str(), g.subject.as_deref()),
            ("idp", Some("alice"))
        );
        let patterns: Vec<String> = g.channels.iter().map(Glob::pattern).collect();
        assert_eq!(patterns, ["news.*", "a"]);
        // A token that expires sooner: the ticket with it.
        let (t, ttl) = issue("public", &grant(5, now), now);
        assert_eq!(ttl, 5);
        assert!(redeem("public", &idp(), &t, now + Duration::from_secs(5)).is_err());
        assert!(redeem("public", &idp(), &t, now + Duration::from_secs(4)).is_ok());
    }

    #[test]
    fn a_stream_opened_with_a_ticket_lasts_as_long_as_the_token() {
        let now = SystemTime::now();
        let (t, _) = issue("public", &grant(3600, now), now);
        let g = redeem("public", &idp(), &t, now).unwrap();
        assert_eq!(
            unix(g.expires_at),
            unix(now) + 3600,
            "the token's expiry, not the ticket's"
        );
        assert!(
            redeem("public", &[], &t, now).is_err(),
            "its issuer was removed"
        );
    }

    #[test]
    fn tampered_foreign_and_malformed_tickets_are_refused() {
        let now = SystemTime::now();
        let (t, _) = issue("public", &grant(3600, now), now);
        assert!(
            redeem("other", &idp(), &t, now).is_err(),
            "another listener"
        );
        assert!(
            redeem("public", &idp(), &t, now + LIFETIME).is_err(),
            "expired"
        );
        // Any change to the payload breaks the signature.
        let (payload, tag) = t.split_once('.').unwrap();
        let forged_claims = Claims {
            l: "public".into(),
            i: "idp".into(),
            s: None,
            c: vec!["*".into()],
            e: unix(now) + 60,
            x: unix(now) + 60,
        };
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
        assert!(redeem("public", &idp(), &format!("{forged}.{tag}"), now).is_err());
        let mut flipped = payload.as_bytes().to_vec();
        flipped[3] ^= 1;
        let flipped = String::from_utf8(flipped).unwrap();
        assert!(redeem("public", &idp(), &format!("{flipped}.{tag}"), now).is_err());
        for bad in [
            "",
            ".",
            "x",
            "a.b",
            &"a".repeat(MAX_BYTES + 1),
            &format!("{payload}."),
        ] {
            let e = redeem("public", &idp(), bad, now).unwrap_err();
            assert_eq!(e.code, tslm_protocol::ErrorCode::Unauthorized, "{bad:?}");
        }
    }
}
