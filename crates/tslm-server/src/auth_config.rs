//! Identities in the configuration: whitelisted publishers (`[publisher.NAME]`) and the identity
//! providers whose tokens subscribers present (`[issuer.NAME]`). Raw TOML forms (unknown keys
//! refused) validated into typed values before anything binds. See docs/security.md.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;

use crate::classes::Glob;
pub use tslm_oidc::{ClaimMapping, Issuer, JwtAlgorithm, KeySource};

/// What a publisher may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublisherOps {
    pub create: bool,
    pub publish: bool,
    pub delete: bool,
}

/// A whitelisted publisher: how it proves who it is, and what it may do where.
#[derive(Debug, Clone)]
pub struct Publisher {
    pub name: String,
    /// Ed25519 public keys (32 bytes each).
    pub keys: Vec<[u8; 32]>,
    /// SHA-256 hashes of its bearer tokens.
    pub token_hashes: Vec<[u8; 32]>,
    /// Names (subject CN or DNS SAN) of its mutual-TLS client certificates.
    pub certificates: Vec<String>,
    pub ops: PublisherOps,
    /// Channel patterns it may use (`*` wildcards, as in channel classes).
    pub channels: Vec<Glob>,
}

impl Publisher {
    /// Whether it may use `channel` at all (the operation is checked separately).
    pub fn may_use(&self, channel: &str) -> bool {
        self.channels.iter().any(|g| g.matches(channel))
    }
}

/// Defaults of `[issuer.NAME]` (documented in docs/configuration.md).
pub mod defaults {
    pub const LEEWAY_SECONDS: u64 = 30;
    pub const REFRESH_COOLDOWN_SECONDS: u64 = 30;
    pub const KEY_MAX_AGE_SECONDS: u64 = 86_400;
    pub const FETCH_TIMEOUT_SECONDS: u64 = 5;
    pub const MAX_DOCUMENT_BYTES: u64 = 256 * 1024;
    pub const MAX_TOKEN_BYTES: u64 = 8 * 1024;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPublisher {
    keys: Option<Vec<String>>,
    token_hashes: Option<Vec<String>>,
    certificates: Option<Vec<String>>,
    operations: Option<Vec<String>>,
    channels: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIssuer {
    issuer: Option<String>,
    jwks_url: Option<String>,
    secret: Option<String>,
    audiences: Option<Vec<String>>,
    algorithms: Option<Vec<JwtAlgorithm>>,
    leeway_seconds: Option<u64>,
    channels_claim: Option<String>,
    scope_prefix: Option<String>,
    refresh_cooldown_seconds: Option<u64>,
    key_max_age_seconds: Option<u64>,
    fetch_timeout_seconds: Option<u64>,
    max_document_bytes: Option<u64>,
    max_token_bytes: Option<u64>,
}

/// `ed25519:<base64 of the 32-byte public key>` (standard or URL-safe alphabet).
pub fn parse_public_key(s: &str) -> Option<[u8; 32]> {
    let b64 = s.strip_prefix("ed25519:")?;
    let bytes = STANDARD
        .decode(b64)
        .or_else(|_| URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')))
        .ok()?;
    bytes.try_into().ok()
}

/// `sha256:<64 hex digits>`.
pub fn parse_token_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    // `from_str_radix` would also take a sign: only the 64 hex digits of the format pass.
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

pub(crate) fn publishers(raw: BTreeMap<String, RawPublisher>) -> Result<Vec<Publisher>, String> {
    let mut out = Vec::new();
    for (name, r) in raw {
        let at = |key: &str, m: String| format!("publisher `{name}`, key `{key}`: {m}");
        if !name_ok(&name) {
            return Err(format!(
                "publisher `{name}`: a publisher name may only contain A-Z a-z 0-9 _ - . (at most 64)"
            ));
        }
        let keys = r
            .keys
            .unwrap_or_default()
            .iter()
            .map(|k| {
                parse_public_key(k).ok_or_else(|| {
                    at(
                        "keys",
                        format!("{k:?} is not \"ed25519:<base64 of 32 bytes>\" (make one with `tslm keygen`)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token_hashes = r
            .token_hashes
            .unwrap_or_default()
            .iter()
            .map(|t| {
                parse_token_hash(t).ok_or_else(|| {
                    at(
                        "token_hashes",
                        "an entry is not \"sha256:<64 hex digits>\" (make one with `tslm hash-token`; the config never holds a token itself)".into(),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let certificates = r.certificates.unwrap_or_default();
        if certificates.iter().any(|c| c.is_empty()) {
            return Err(at("certificates", "names may not be empty".into()));
        }
        if keys.is_empty() && token_hashes.is_empty() && certificates.is_empty() {
            return Err(format!(
                "publisher `{name}`: no credential: give `keys`, `token_hashes` or `certificates`"
            ));
        }
        let mut ops = PublisherOps::default();
        for op in r.operations.unwrap_or_else(|| vec!["publish".into()]) {
            match op.as_str() {
                "create" => ops.create = true,
                "publish" => ops.publish = true,
                "delete" => ops.delete = true,
                other => {
                    return Err(at(
                        "operations",
                        format!("{other:?} is not one of \"create\", \"publish\", \"delete\""),
                    ));
                }
            }
        }
        let channels = r.channels.unwrap_or_default();
        if channels.is_empty() {
            return Err(at(
                "channels",
                "missing or empty: list the channel patterns this publisher may use, e.g. [\"orders.*\"]".into(),
            ));
        }
        let channels = channels
            .iter()
            .map(|p| Glob::parse(p).map_err(|m| at("channels", m)))
            .collect::<Result<Vec<_>, _>>()?;
        for other in &out {
            let other: &Publisher = other;
            if token_hashes.iter().any(|h| other.token_hashes.contains(h)) {
                return Err(at(
                    "token_hashes",
                    format!(
                        "a token hash is also publisher `{}`'s: each token names one publisher",
                        other.name
                    ),
                ));
            }
            if certificates.iter().any(|c| other.certificates.contains(c)) {
                return Err(at(
                    "certificates",
                    format!(
                        "a certificate name is also publisher `{}`'s: each name maps to one publisher",
                        other.name
                    ),
                ));
            }
        }
        out.push(Publisher {
            name,
            keys,
            token_hashes,
            certificates,
            ops,
            channels,
        });
    }
    Ok(out)
}

fn valid_url(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() > "http://".len()
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub(crate) fn issuers(raw: BTreeMap<String, RawIssuer>) -> Result<Vec<Issuer>, String> {
    let mut out = Vec::new();
    for (name, r) in raw {
        let at = |key: &str, m: &str| format!("issuer `{name}`, key `{key}`: {m}");
        if !name_ok(&name) {
            return Err(format!(
                "issuer `{name}`: an issuer name may only contain A-Z a-z 0-9 _ - . (at most 64)"
            ));
        }
        let Some(issuer) = r.issuer else {
            return Err(at(
                "issuer",
                "missing: the exact `iss` of its tokens (for discovery, its base URL)",
            ));
        };
        let keys = match (r.jwks_url, r.secret) {
            (Some(_), Some(_)) => {
                return Err(at("secret", "give `jwks_url` or `secret`, not both"));
            }
            (Some(u), None) => {
                if !valid_url(&u) {
                    return Err(at("jwks_url", "must be an http:// or https:// URL"));
                }
                // The check every key fetch makes, by the same URL parser.
                tslm_oidc::check_fetch_url(&u).map_err(|e| at("jwks_url", &e))?;
                KeySource::JwksUrl(u)
            }
            (None, Some(s)) => {
                let bytes = STANDARD
                    .decode(&s)
                    .map_err(|_| at("secret", "must be base64"))?;
                if bytes.len() < 32 {
                    return Err(at(
                        "secret",
                        "must hold at least 32 bytes (256 bits) once decoded",
                    ));
                }
                KeySource::Secret(bytes)
            }
            (None, None) => {
                if !valid_url(&issuer) {
                    return Err(at(
                        "issuer",
                        "discovery needs the issuer to be an http:// or https:// URL (or give `jwks_url` or `secret`)",
                    ));
                }
                tslm_oidc::check_fetch_url(&issuer).map_err(|e| at("issuer", &e))?;
                KeySource::Discovery
            }
        };
        let audiences = r.audiences.unwrap_or_default();
        if audiences.is_empty() || audiences.iter().any(String::is_empty) {
            return Err(at(
                "audiences",
                "missing or empty: tokens must be meant for this gateway (`aud`)",
            ));
        }
        let hmac = matches!(keys, KeySource::Secret(_));
        let algorithms = r.algorithms.unwrap_or_else(|| {
            vec![if hmac {
                JwtAlgorithm::HS256
            } else {
                JwtAlgorithm::RS256
            }]
        });
        if algorithms.is_empty() {
            return Err(at("algorithms", "may not be empty"));
        }
        if algorithms.iter().any(|a| a.is_hmac() != hmac) {
            return Err(at(
                "algorithms",
                "HMAC algorithms (HS*) go with `secret` only, and a `secret` allows HS* only",
            ));
        }
        if r.channels_claim.as_deref() == Some("") {
            return Err(at("channels_claim", "may not be empty"));
        }
        if r.scope_prefix.as_deref() == Some("") {
            return Err(at(
                "scope_prefix",
                "may not be empty: every scope would grant a channel",
            ));
        }
        if out.iter().any(|i: &Issuer| i.issuer == issuer) {
            return Err(at(
                "issuer",
                "another [issuer] has the same `issuer`: tokens could not be told apart",
            ));
        }
        if r.channels_claim.is_none() && r.scope_prefix.is_none() {
            return Err(at(
                "channels_claim",
                "tokens must grant channels: give `channels_claim` (a claim listing channel patterns) or `scope_prefix` (scopes like \"tslm:prices.*\")",
            ));
        }
        let secs = |key: &str, v: Option<u64>, default: u64, min: u64, max: u64| {
            let v = v.unwrap_or(default);
            if v < min || v > max {
                Err(at(key, &format!("{v} is out of range {min}..={max}")))
            } else {
                Ok(v)
            }
        };
        let leeway = secs(
            "leeway_seconds",
            r.leeway_seconds,
            defaults::LEEWAY_SECONDS,
            0,
            300,
        )?;
        let cooldown = secs(
            "refresh_cooldown_seconds",
            r.refresh_cooldown_seconds,
            defaults::REFRESH_COOLDOWN_SECONDS,
            1,
            86_400,
        )?;
        let max_age = secs(
            "key_max_age_seconds",
            r.key_max_age_seconds,
            defaults::KEY_MAX_AGE_SECONDS,
            1,
            30 * 86_400,
        )?;
        let timeout = secs(
            "fetch_timeout_seconds",
            r.fetch_timeout_seconds,
            defaults::FETCH_TIMEOUT_SECONDS,
            1,
            60,
        )?;
        let max_doc = secs(
            "max_document_bytes",
            r.max_document_bytes,
            defaults::MAX_DOCUMENT_BYTES,
            1024,
            16 << 20,
        )?;
        let max_token = secs(
            "max_token_bytes",
            r.max_token_bytes,
            defaults::MAX_TOKEN_BYTES,
            256,
            tslm_protocol::v1::MAX_CREDENTIAL_BYTES as u64,
        )?;
        out.push(Issuer {
            name: name.clone(),
            issuer,
            keys,
            audiences,
            algorithms,
            leeway: Duration::from_secs(leeway),
            claims: ClaimMapping {
                channels_claim: r.channels_claim,
                scope_prefix: r.scope_prefix,
            },
            refresh_cooldown: Duration::from_secs(cooldown),
            key_max_age: Duration::from_secs(max_age),
            fetch_timeout: Duration::from_secs(timeout),
            max_document_bytes: usize::try_from(max_doc).unwrap_or(usize::MAX),
            max_token_bytes: usize::try_from(max_token).unwrap_or(usize::MAX),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
