//! The verifier: per-issuer key caches with on-demand refresh, and token validation.
//!
//! Token claims (`exp`, `nbf`, `iat`) and the configured durations meet here: no arithmetic may
//! overflow (the crate lints `arithmetic_side_effects`). `jsonwebtoken` compares `exp`/`nbf` with
//! the clock plus or minus the leeway, which [`MAX_LEEWAY`] keeps far from overflow; `iat` is
//! never read.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::de::IgnoredAny;

use crate::config::{Issuer, JwtAlgorithm, KeySource};
use crate::error::TokenError;
use crate::fetch::Http;
use crate::jwks::{KeySet, Selection, VerifyKey};
use crate::token;

/// Leeway above this is clamped (it only guards the arithmetic: no sane configuration comes near).
const MAX_LEEWAY: Duration = Duration::from_secs(24 * 60 * 60);

/// What a valid access token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The configuration name (`[issuer.NAME]`) of the issuer that signed it.
    pub issuer: String,
    /// `sub`, when present and a string.
    pub subject: Option<String>,
    /// `exp` (without leeway), clamped to [`MAX_EXPIRY_UNIX`](crate::MAX_EXPIRY_UNIX): adding a
    /// leeway of up to a day to it, or counting down to it, never overflows.
    pub expires_at: SystemTime,
    /// Channel patterns as granted by the claims (deduplicated, not validated as patterns).
    pub channels: Vec<String>,
}

/// Verifies access tokens against the configured issuers. Cheap to clone (shares one state).
///
/// `verify` and `prefetch` must run inside a Tokio runtime with the I/O and time drivers enabled
/// whenever an issuer's keys are fetched (issuers with a shared secret never fetch).
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: Vec<IssuerState>,
    /// Exact `iss` → index into `issuers`.
    by_iss: HashMap<String, usize>,
    /// The largest `max_token_bytes`: tokens longer than this are refused before parsing.
    max_token_bytes: usize,
    http: Option<Http>,
}

struct IssuerState {
    config: Issuer,
    /// The current keys; replaced whole on refresh. Held only to clone the `Arc`.
    cache: RwLock<Arc<Cache>>,
    /// Serialises refreshes: held across the fetch, so concurrent verifies that need one share it.
    refresh: tokio::sync::Mutex<RefreshState>,
}

#[derive(Default)]
struct Cache {
    keys: KeySet,
    /// When the keys were last fetched successfully; `None` before the first success. Issuers with
    /// a shared secret never age.
    fetched_at: Option<Instant>,
    /// Bumped on every successful fetch.
    generation: u64,
    is_static: bool,
}

impl Cache {
    fn age(&self, now: Instant) -> Option<Duration> {
        self.fetched_at.map(|t| now.saturating_duration_since(t))
    }

    fn is_fresh(&self, now: Instant, max_age: Duration) -> bool {
        self.is_static || self.age(now).is_some_and(|age| age <= max_age)
    }
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "issuers",
                &self
                    .inner
                    .issuers
                    .iter()
                    .map(|i| i.config.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Verifier {
    /// A verifier for these issuers. Fetches nothing (see [`Verifier::prefetch`]); needs no
    /// runtime. If two issuers share an `issuer` string, the first wins.
    pub fn new(issuers: Vec<Issuer>) -> Self {
        let max_token_bytes = issuers.iter().map(|i| i.max_token_bytes).max().unwrap_or(0);
        let needs_http = issuers
            .iter()
            .any(|i| !matches!(i.keys, KeySource::Secret(_)));
        let mut by_iss = HashMap::new();
        let issuers: Vec<IssuerState> = issuers
            .into_iter()
            .enumerate()
            .map(|(index, config)| {
                if by_iss.contains_key(&config.issuer) {
                    tracing::warn!(issuer = %config.name, "duplicate issuer url; this issuer is never used");
                } else {
                    by_iss.insert(config.issuer.clone(), index);
                }
                let cache = match &config.keys {
                    KeySource::Secret(secret) => Cache {
                        keys: KeySet::single(VerifyKey::secret(secret)),
                        is_static: true,
                        ..Cache::default()
                    },
                    _ => Cache::default(),
                };
                IssuerState {
                    config,
                    cache: RwLock::new(Arc::new(cache)),
                    refresh: tokio::sync::Mutex::default(),
                }
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                issuers,
                by_iss,
                max_token_bytes,
                http: needs_http.then(Http::new),
            }),
        }
    }

    /// How long ago each issuer's keys were fetched (by issuer name): `None` before the first
    /// successful fetch. Issuers with a shared secret (nothing to fetch) are left out.
    pub fn key_ages(&self) -> Vec<(String, Option<Duration>)> {
        let now = Instant::now();
        self.inner
            .issuers
            .iter()
            .filter_map(|i| {
                let cache = i.snapshot();
                (!cache.is_static).then(|| (i.config.name.clone(), cache.age(now)))
            })
            .collect()
    }

    /// Fetches every issuer's keys once, concurrently. Failures are logged (`warn`), not fatal:
    /// keys are fetched again on demand.
    pub async fn prefetch(&self) {
        let Some(http) = &self.inner.http else {
            return;
        };
        let fetches = self
            .inner
            .issuers
            .iter()
            .filter(|i| !matches!(i.config.keys, KeySource::Secret(_)))
            .map(|i| async move {
                let mut state = i.refresh.lock().await;
                i.fetch_locked(http, &mut state).await;
            });
        futures_util::future::join_all(fetches).await;
    }

    /// Verifies an access token (RFC 8725): size, issuer, allowed algorithm, key, signature,
    /// `iss`, `aud`, `exp` and `nbf` (with the issuer's leeway); then maps its claims to channels.
    pub async fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let inner = &*self.inner;
        if token.len() > inner.max_token_bytes {
            return Err(TokenError::TooLarge {
                max: inner.max_token_bytes,
            });
        }
        let unverified = token::parse(token)?;
        let state = unverified
            .issuer()
            .and_then(|iss| inner.by_iss.get(iss))
            .map(|&index| &inner.issuers[index])
            .ok_or(TokenError::UnknownIssuer)?;
        let config = &state.config;
        if token.len() > config.max_token_bytes {
            return Err(TokenError::TooLarge {
                max: config.max_token_bytes,
            });
        }
        let alg = JwtAlgorithm::from_name(&unverified.alg)
            .filter(|alg| config.algorithms.contains(alg))
            .ok_or(TokenError::AlgorithmNotAllowed)?;
        let key = state
            .key_for(inner.http.as_ref(), unverified.kid.as_deref(), alg)
            .await?;
        check(token, &key, alg, config)?;

        let claims = unverified.claims;
        let channels = token::channels(&claims, &config.claims);
        if channels.is_empty() {
            return Err(TokenError::NoChannels);
        }
        Ok(Grant {
            issuer: config.name.clone(),
            subject: token::subject(&claims),
            expires_at: token::expires_at(&claims)?,
            channels,
        })
    }
}

/// Signature and registered claims, by `jsonwebtoken`, with exactly one algorithm allowed.
fn check(
    token: &str,
    key: &VerifyKey,
    alg: JwtAlgorithm,
    config: &Issuer,
) -> Result<(), TokenError> {
    let mut validation = Validation::new(jwt_algorithm(alg));
    validation.leeway = config.leeway.min(MAX_LEEWAY).as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(&[config.issuer.as_str()]);
    validation.set_audience(&config.audiences);
    jsonwebtoken::decode::<IgnoredAny>(token, &key.key, &validation)
        .map(drop)
        .map_err(|e| match e.into_kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::WrongAudience,
            ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenError::UnknownIssuer,
            ErrorKind::MissingRequiredClaim(_) => TokenError::InvalidClaim { claim: "exp" },
            ErrorKind::InvalidClaimFormat(claim) => TokenError::InvalidClaim {
                claim: if claim == "nbf" { "nbf" } else { "exp" },
            },
            ErrorKind::InvalidAlgorithm => TokenError::KeyMismatch,
            // A key the crypto backend cannot use (e.g. an EC point not on the curve) verifies
            // nothing.
            ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::Provider(_) => TokenError::BadSignature,
            _ => TokenError::Malformed,
        })
}

fn jwt_algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
    }
}

fn select(
    cache: &Cache,
    kid: Option<&str>,
    alg: JwtAlgorithm,
) -> Result<Option<Arc<VerifyKey>>, TokenError> {
    match cache.keys.select(kid, alg) {
        Selection::Found(key) => Ok(Some(Arc::clone(key))),
        Selection::Mismatch => Err(TokenError::KeyMismatch),
        Selection::NotFound => Ok(None),
    }
}

impl IssuerState {
    fn snapshot(&self) -> Arc<Cache> {
        self.cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key that must verify a token with this `kid` and `alg`, refreshing the key set when it
    /// is stale, half-way to stale (best effort), or lacks the `kid`.
    async fn key_for(
        &self,
        http: Option<&Http>,
        kid: Option<&str>,
        alg: JwtAlgorithm,
    ) -> Result<Arc<VerifyKey>, TokenError> {
        let mut cache = self.snapshot();
        if cache.is_static {
            // The shared secret is the issuer's only key, whatever `kid` says.
            return select(&cache, None, alg)?.ok_or(TokenError::KeyMismatch);
        }
        let http = http.ok_or(TokenError::KeysUnavailable)?;
        let max_age = self.config.key_max_age;
        if !cache.is_fresh(Instant::now(), max_age) {
            cache = self.refresh(http, cache.generation).await;
            if !cache.is_fresh(Instant::now(), max_age) {
                return Err(TokenError::KeysUnavailable);
            }
        } else if cache
            .age(Instant::now())
            .is_some_and(|age| age >= max_age.checked_div(2).unwrap_or(max_age))
        {
            // Refresh ahead of expiry so a short provider outage costs nothing; unless another
            // verify is already refreshing (then carry on with the current keys).
            if let Ok(mut state) = self.refresh.try_lock()
                && self.snapshot().generation == cache.generation
                && self.cooled_down(&state)
            {
                cache = self.fetch_locked(http, &mut state).await;
            }
        }
        if let Some(key) = select(&cache, kid, alg)? {
            return Ok(key);
        }
        cache = self.refresh(http, cache.generation).await;
        if !cache.is_fresh(Instant::now(), max_age) {
            return Err(TokenError::KeysUnavailable);
        }
        select(&cache, kid, alg)?.ok_or(TokenError::UnknownKey)
    }

    fn cooled_down(&self, state: &RefreshState) -> bool {
        state
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.config.refresh_cooldown)
    }

    /// Refreshes the key set unless one succeeded since `seen_generation` (then that one is shared)
    /// or the last attempt is within `refresh_cooldown`; returns the keys to use.
    async fn refresh(&self, http: &Http, seen_generation: u64) -> Arc<Cache> {
        let mut state = self.refresh.lock().await;
        let current = self.snapshot();
        if current.generation != seen_generation || !self.cooled_down(&state) {
            return current;
        }
        self.fetch_locked(http, &mut state).await
    }

    /// Fetches now (the caller holds the refresh lock); on failure keeps the current keys.
    async fn fetch_locked(&self, http: &Http, state: &mut RefreshState) -> Arc<Cache> {
        state.last_attempt = Some(Instant::now());
        let name = self.config.name.as_str();
        match http.fetch_keys(&self.config).await {
            Ok(keys) => {
                tracing::info!(issuer = name, keys = keys.len(), "issuer key set fetched");
                let mut slot = self.cache.write().unwrap_or_else(PoisonError::into_inner);
                let next = Arc::new(Cache {
                    keys,
                    fetched_at: Some(Instant::now()),
                    // Only ever compared for equality: wrapping after 2^64 fetches is harmless.
                    generation: slot.generation.wrapping_add(1),
                    is_static: false,
                });
                *slot = next.clone();
                next
            }
            Err(error) => {
                let current = self.snapshot();
                let age = current.age(Instant::now()).map(|a| a.as_secs());
                tracing::warn!(issuer = name, %error, last_success_secs_ago = ?age, "issuer key set fetch failed");
                current
            }
        }
    }
}
