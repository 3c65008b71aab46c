//! The pure parts of token handling: splitting a compact JWS, reading its header and (unverified)
//! payload, and mapping verified claims to channel grants. No I/O, no keys.
//!
//! Numbers here come from tokens (attacker-chosen until the signature is checked, issuer-chosen
//! after): no arithmetic on them may overflow (the crate lints `arithmetic_side_effects`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use crate::config::ClaimMapping;
use crate::error::TokenError;

/// The header fields the verifier reads. `jku`, `x5u`, `jwk` and `x5c` are deliberately not read:
/// keys only ever come from the issuer's configuration.
#[derive(Debug, Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

/// A compact JWS split and decoded, signature not yet checked.
#[derive(Debug)]
pub(crate) struct Unverified {
    pub alg: String,
    pub kid: Option<String>,
    /// The payload; trusted only after the signature is verified (before that, only `iss` is read
    /// to pick the issuer).
    pub claims: Map<String, Value>,
}

impl Unverified {
    /// The unverified `iss`, used only to choose which issuer's configuration applies.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
}

/// Splits and decodes a compact JWS (`header.payload.signature`).
pub(crate) fn parse(token: &str) -> Result<Unverified, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    // An empty signature is left to the algorithm check: it only fits `alg: none`, which is
    // never allowed.
    if header.is_empty() || payload.is_empty() {
        return Err(TokenError::Malformed);
    }
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| TokenError::Malformed)
    };
    decode(signature)?;
    let header: RawHeader =
        serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; none are.
    if header.crit.is_some() {
        return Err(TokenError::Malformed);
    }
    let claims: Map<String, Value> =
        serde_json::from_slice(&decode(payload)?).map_err(|_| TokenError::Malformed)?;
    Ok(Unverified {
        alg: header.alg,
        kid: header.kid,
        claims,
    })
}

/// The latest expiry a grant carries: 9999-12-31T23:59:59Z (the last second RFC 3339 can
/// write). A token expiring later is no different in practice, and every time computed from a
/// grant's expiry (plus leeway, minus now, as a timer deadline) stays far from any overflow.
pub const MAX_EXPIRY_UNIX: u64 = 253_402_300_799;

/// `exp` as a time (a JSON number of seconds since the epoch, possibly fractional), clamped to
/// [`MAX_EXPIRY_UNIX`].
pub(crate) fn expires_at(claims: &Map<String, Value>) -> Result<SystemTime, TokenError> {
    const INVALID: TokenError = TokenError::InvalidClaim { claim: "exp" };
    const MAX: Duration = Duration::from_secs(MAX_EXPIRY_UNIX);
    let exp = claims.get("exp").ok_or(INVALID)?;
    let since_epoch = if let Some(secs) = exp.as_u64() {
        Duration::from_secs(secs)
    } else {
        // Finite and non-negative; any size (`try_from_secs_f64` refuses what a `Duration`
        // cannot hold, which is past the clamp anyway).
        let secs = exp
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or(INVALID)?;
        Duration::try_from_secs_f64(secs).unwrap_or(MAX)
    };
    UNIX_EPOCH.checked_add(since_epoch.min(MAX)).ok_or(INVALID)
}

/// The channel patterns a (verified) token's claims grant, deduplicated, in claim order.
pub(crate) fn channels(claims: &Map<String, Value>, mapping: &ClaimMapping) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |pattern: &str| {
        if !pattern.is_empty() && !out.iter().any(|p| p == pattern) {
            out.push(pattern.to_owned());
        }
    };
    if let Some(name) = &mapping.channels_claim {
        match claims.get(name) {
            Some(Value::String(s)) => s.split_whitespace().for_each(&mut push),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .for_each(|p| push(p.trim())),
            _ => {}
        }
    }
    if let Some(prefix) = &mapping.scope_prefix {
        // `scope` (RFC 8693 / RFC 9068: space-separated string); `scp` (a list at some providers,
        // a space-separated string at others).
        for claim in ["scope", "scp"] {
            let scopes: Vec<&str> = match claims.get(claim) {
                Some(Value::String(s)) => s.split_whitespace().collect(),
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .flat_map(str::split_whitespace)
                    .collect(),
                _ => Vec::new(),
            };
            scopes
                .into_iter()
                .filter_map(|s| s.strip_prefix(prefix.as_str()))
                .for_each(&mut push);
        }
    }
    out
}

/// `sub`, when it is a string.
pub(crate) fn subject(claims: &Map<String, Value>) -> Option<String> {
    claims.get("sub").and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn token(header: &Value, payload: &Value) -> String {
        format!("{}.{}.c2ln", b64(header), b64(payload))
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parses_alg_kid_and_iss() {
        let t = token(
            &json!({"alg": "RS256", "kid": "k1", "typ": "JWT", "jku": "http://x"}),
            &json!({"iss": "https://idp", "sub": "u"}),
        );
        let u = parse(&t).unwrap();
        assert_eq!(u.alg, "RS256");
        assert_eq!(u.kid.as_deref(), Some("k1"));
        assert_eq!(u.issuer(), Some("https://idp"));
    }

    #[test]
    fn refuses_malformed_shapes() {
        let good_h = b64(&json!({"alg": "RS256"}));
        let good_p = b64(&json!({"iss": "i"}));
        let cases = [
            String::new(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            format!(".{good_p}.c2ln"),
            format!("{good_h}..c2ln"),
            format!("{good_h}.{good_p}.c2ln="),
            format!("{good_h}.{good_p}.***"),
            format!("{good_h}.!!!.c2ln"),
            format!("{}.{good_p}.c2ln", URL_SAFE_NO_PAD.encode(b"not json")),
            format!("{good_h}.{}.c2ln", URL_SAFE_NO_PAD.encode(b"[1,2]")),
            format!("{}.{good_p}.c2ln", b64(&json!({"kid": "no alg"}))),
            format!("{}.{good_p}.c2ln", b64(&json!({"alg": "RS256", "kid": 7}))),
            format!(
                "{}.{good_p}.c2ln",
                b64(&json!({"alg": "RS256", "crit": ["exp"]}))
            ),
        ];
        for t in cases {
            assert_eq!(parse(&t).unwrap_err(), TokenError::Malformed, "{t:?}");
        }
    }

    #[test]
    fn an_unsigned_token_parses_for_the_algorithm_check_to_refuse() {
        let t = format!(
            "{}.{}.",
            b64(&json!({"alg": "none"})),
            b64(&json!({"iss": "i"}))
        );
        assert_eq!(parse(&t).unwrap().alg, "none");
    }

    #[test]
    fn exp_as_integer_or_fraction() {
        let t = expires_at(&obj(json!({"exp": 1_700_000_000u64}))).unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let t = expires_at(&obj(json!({"exp": 10.5}))).unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_millis(10_500));
        for bad in [
            json!({}),
            json!({"exp": "10"}),
            json!({"exp": -1}),
            json!({"exp": -0.5}),
            json!({"exp": i64::MIN}),
        ] {
            assert_eq!(
                expires_at(&obj(bad)).unwrap_err(),
                TokenError::InvalidClaim { claim: "exp" }
            );
        }
    }

    #[test]
    fn far_future_exp_is_clamped_never_overflows() {
        let max = UNIX_EPOCH + Duration::from_secs(MAX_EXPIRY_UNIX);
        for far in [
            json!(MAX_EXPIRY_UNIX),
            json!(MAX_EXPIRY_UNIX + 1),
            json!(i64::MAX - 1),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1e300),
            json!(f64::MAX),
            json!(9.3e18),
        ] {
            let t = expires_at(&obj(json!({ "exp": far }))).unwrap();
            assert_eq!(t, max, "{far}");
            // What the server does with it: add a leeway, count down to it.
            assert!(t.checked_add(Duration::from_secs(300)).is_some());
        }
        let t = expires_at(&obj(json!({"exp": MAX_EXPIRY_UNIX - 1}))).unwrap();
        assert!(t < max);
    }

    #[test]
    fn channels_from_claim_list_or_string() {
        let m = ClaimMapping {
            channels_claim: Some("tslm_channels".into()),
            scope_prefix: None,
        };
        let c = channels(
            &obj(json!({"tslm_channels": ["prices.*", " news.eu ", 7, "", "prices.*"]})),
            &m,
        );
        assert_eq!(c, ["prices.*", "news.eu"]);
        let c = channels(&obj(json!({"tslm_channels": "a.b  c.*"})), &m);
        assert_eq!(c, ["a.b", "c.*"]);
        assert!(channels(&obj(json!({"tslm_channels": {"a": 1}})), &m).is_empty());
        assert!(channels(&obj(json!({})), &m).is_empty());
    }

    #[test]
    fn channels_from_scope_prefix() {
        let m = ClaimMapping {
            channels_claim: None,
            scope_prefix: Some("tslm:".into()),
        };
        let c = channels(
            &obj(json!({"scope": "openid tslm:prices.* profile tslm: tslm:news"})),
            &m,
        );
        assert_eq!(c, ["prices.*", "news"]);
        let c = channels(&obj(json!({"scp": ["tslm:a", "other", "tslm:b"]})), &m);
        assert_eq!(c, ["a", "b"]);
        let c = channels(&obj(json!({"scp": "tslm:a tslm:b"})), &m);
        assert_eq!(c, ["a", "b"]);
    }

    #[test]
    fn both_mappings_combine() {
        let m = ClaimMapping {
            channels_claim: Some("ch".into()),
            scope_prefix: Some("tslm:".into()),
        };
        let c = channels(&obj(json!({"ch": ["x"], "scope": "tslm:y tslm:x"})), &m);
        assert_eq!(c, ["x", "y"]);
    }
}
