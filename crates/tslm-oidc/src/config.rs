//! The configuration of an identity provider (`[issuer.NAME]` in the gateway's TOML, validated by
//! the server crate).

use std::time::Duration;

use serde::Deserialize;

/// JWT signature algorithms an issuer may be configured with (never taken from a token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl JwtAlgorithm {
    /// Every algorithm, in declaration order.
    pub const ALL: [Self; 12] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
        Self::HS256,
        Self::HS384,
        Self::HS512,
    ];

    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }

    /// The JOSE name (`alg` header value, RFC 7518), e.g. `RS256`.
    pub fn name(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
            Self::HS256 => "HS256",
            Self::HS384 => "HS384",
            Self::HS512 => "HS512",
        }
    }

    /// The algorithm with this exact (case-sensitive) JOSE name; `none` and every name not listed
    /// in [`JwtAlgorithm::ALL`] give `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl std::fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an issuer's verification keys come from. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// OpenID Connect discovery: `{issuer}/.well-known/openid-configuration`, then its
    /// `jwks_uri`.
    Discovery,
    /// A JWKS document at this URL.
    JwksUrl(String),
    /// A shared secret (HMAC algorithms only).
    Secret(Vec<u8>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Discovery => f.write_str("Discovery"),
            Self::JwksUrl(u) => f.debug_tuple("JwksUrl").field(u).finish(),
            Self::Secret(s) => write!(f, "Secret({} bytes)", s.len()),
        }
    }
}

/// How token claims grant channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// A claim holding a list of channel patterns (or one pattern as a string).
    pub channels_claim: Option<String>,
    /// Scopes (`scope` claim, space-separated) starting with this prefix grant the pattern that
    /// follows it, e.g. `tslm:prices.*`.
    pub scope_prefix: Option<String>,
}

/// An identity provider whose access tokens subscribers present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    pub name: String,
    /// The exact `iss` tokens must carry.
    pub issuer: String,
    pub keys: KeySource,
    /// `aud` must contain one of these.
    pub audiences: Vec<String>,
    pub algorithms: Vec<JwtAlgorithm>,
    pub leeway: Duration,
    pub claims: ClaimMapping,
    /// At most one key-set refresh per this long (an unknown `kid` triggers one).
    pub refresh_cooldown: Duration,
    /// Cached keys serve this long after the last successful fetch; then the gateway fails
    /// closed until a fetch succeeds.
    pub key_max_age: Duration,
    pub fetch_timeout: Duration,
    pub max_document_bytes: usize,
    /// Largest token accepted, in bytes.
    pub max_token_bytes: usize,
}
