//! Subscriber authentication: access tokens (JWT) issued by OAuth2/OpenID Connect providers,
//! validated per RFC 8725 against each provider's cached key set.
//!
//! - [`Verifier::verify`] checks a token and returns the [`Grant`] its claims give, or a
//!   [`TokenError`] whose [`code`](TokenError::code) is a stable reason.
//! - The algorithm comes from the issuer's configuration, never from the token: the header's `alg`
//!   must be one of the issuer's `algorithms` and suit the key's type. `jku`, `x5u`, `jwk` and
//!   `x5c` header fields are never used.
//! - Keys come only from configured URLs (OIDC discovery then `jwks_uri`, or `jwks_url`): every
//!   request is checked by the issuer's outbound policy (`fetch.rs`), which allows one origin
//!   (scheme, host, port) compared on parsed URLs, and the checked URL is the one dialled. They are
//!   cached per issuer, refreshed at most once per `refresh_cooldown` (an unknown `kid`, a stale
//!   set, or a set half-way to `key_max_age` triggers one), and stop serving `key_max_age` after
//!   the last successful fetch (fail closed).
//!
//! Code map: `token` (pure: compact JWS parsing, claims → channels), `jwks` (pure: key sets,
//! key selection), `fetch` (HTTP: discovery and JWKS documents), `verifier` (caches, refresh,
//! validation).

// Everything here handles numbers from tokens or identity providers' documents: no arithmetic
// may overflow (checked, saturating or explicit wrapping operations only).
#![warn(clippy::arithmetic_side_effects)]

mod config;
mod error;
mod fetch;
mod jwks;
mod token;
mod verifier;

pub use config::{ClaimMapping, Issuer, JwtAlgorithm, KeySource};
pub use error::TokenError;
pub use fetch::check_fetch_url;
pub use token::MAX_EXPIRY_UNIX;
pub use verifier::{Grant, Verifier};
