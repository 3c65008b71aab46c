//! Subscriber authentication: access tokens (JWT) issued by OAuth2/OpenID Connect providers,
//! validated per RFC 8725 against each provider's cached key set.

mod config;

pub use config::{ClaimMapping, Issuer, JwtAlgorithm, KeySource};
