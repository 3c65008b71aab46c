//! JSON Web Key Sets (RFC 7517): parsing a provider's public keys and choosing the key a token
//! names. Pure: no I/O.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde_json::Value;

use crate::config::JwtAlgorithm;

/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// What a key is, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
    /// The configured shared secret (never from a JWKS).
    Secret,
}

impl KeyKind {
    /// Whether a key of this kind may verify `alg`: RS*/PS* need RSA, ES256 P-256, ES384 P-384,
    /// EdDSA Ed25519, HS* the configured secret. This is what defeats "HS256 signed with the
    /// public key".
    pub fn accepts(self, alg: JwtAlgorithm) -> bool {
        use JwtAlgorithm as A;
        match self {
            Self::Rsa => matches!(
                alg,
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
            ),
            Self::EcP256 => alg == A::ES256,
            Self::EcP384 => alg == A::ES384,
            Self::Ed25519 => alg == A::EdDSA,
            Self::Secret => alg.is_hmac(),
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it has one: the key then verifies only that algorithm.
    pub alg: Option<JwtAlgorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    pub fn secret(secret: &[u8]) -> Self {
        Self {
            kid: None,
            kind: KeyKind::Secret,
            alg: None,
            key: DecodingKey::from_secret(secret),
        }
    }

    fn accepts(&self, alg: JwtAlgorithm) -> bool {
        self.kind.accepts(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

/// The outcome of looking a token's key up in a key set.
#[derive(Debug)]
pub(crate) enum Selection<'a> {
    Found(&'a Arc<VerifyKey>),
    /// A key with that `kid` exists, but none of its type/`alg` can verify the token's `alg`.
    Mismatch,
    NotFound,
}

/// An issuer's usable keys (shared: a verify clones an `Arc`, not a key).
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
}

/// Why a JWKS document gave no key set.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JwksError {
    #[error("key set is not a JSON object with a \"keys\" array")]
    NotAKeySet,
    #[error("key set has no usable signature key ({skipped} skipped)")]
    NoUsableKey { skipped: usize },
}

impl KeySet {
    pub fn single(key: VerifyKey) -> Self {
        Self {
            keys: vec![Arc::new(key)],
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Parses a JWKS document, keeping only the keys this verifier can use for signatures:
    /// RSA (2048 bits or more), EC P-256/P-384 and OKP Ed25519, whose `use` (if present) is `sig`,
    /// whose `key_ops` (if present) include `verify`, and whose `alg` (if present) suits the key
    /// type. Symmetric (`oct`) keys are never taken from a key set. A key without `kid` is kept
    /// only when it is the only usable key.
    pub fn parse(document: &[u8]) -> Result<Self, JwksError> {
        let doc: Value = serde_json::from_slice(document).map_err(|_| JwksError::NotAKeySet)?;
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return Err(JwksError::NotAKeySet);
        };
        let mut keys = Vec::with_capacity(entries.len());
        let mut skipped: usize = 0;
        for entry in entries {
            match parse_jwk(entry) {
                Ok(key) => keys.push(Arc::new(key)),
                Err(reason) => {
                    skipped = skipped.saturating_add(1);
                    let kid = entry.get("kid").and_then(Value::as_str).unwrap_or("");
                    tracing::debug!(kid, reason, "key set entry skipped");
                }
            }
        }
        if keys.len() > 1 {
            let before = keys.len();
            keys.retain(|k| k.kid.is_some());
            skipped = skipped.saturating_add(before.saturating_sub(keys.len()));
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey { skipped });
        }
        Ok(Self { keys })
    }

    /// The key for a token with this `kid` and `alg`. A token with a `kid` matches only keys with
    /// that exact `kid`; a token without one matches the set's only key.
    pub fn select(&self, kid: Option<&str>, alg: JwtAlgorithm) -> Selection<'_> {
        let mut candidates = match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect::<Vec<_>>(),
            None if self.keys.len() == 1 => self.keys.iter().collect(),
            None => Vec::new(),
        };
        if candidates.is_empty() {
            return Selection::NotFound;
        }
        candidates.retain(|k| k.accepts(alg));
        candidates
            .first()
            .map_or(Selection::Mismatch, |k| Selection::Found(k))
    }
}

fn b64(v: &Value, field: &'static str) -> Result<Vec<u8>, &'static str> {
    let s = v.get(field).and_then(Value::as_str).ok_or(field)?;
    URL_SAFE_NO_PAD.decode(s).map_err(|_| field)
}

fn parse_jwk(jwk: &Value) -> Result<VerifyKey, &'static str> {
    if !jwk.is_object() {
        return Err("not an object");
    }
    if let Some(usage) = jwk.get("use")
        && usage.as_str() != Some("sig")
    {
        return Err("use is not sig");
    }
    if let Some(ops) = jwk.get("key_ops")
        && !ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")))
    {
        return Err("key_ops lacks verify");
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("kid is not a string"),
    };
    let alg = match jwk.get("alg") {
        None => None,
        Some(alg) => Some(
            alg.as_str()
                .and_then(JwtAlgorithm::from_name)
                .ok_or("unsupported alg")?,
        ),
    };
    let crv = jwk.get("crv").and_then(Value::as_str);
    let (kind, key) = match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => {
            let n = b64(jwk, "n")?;
            let e = b64(jwk, "e")?;
            let n_len = n.iter().skip_while(|b| **b == 0).count();
            if n_len < MIN_RSA_MODULUS_BYTES {
                return Err("rsa modulus shorter than 2048 bits");
            }
            if e.is_empty() || e.len() > 8 || e.iter().all(|b| *b == 0) {
                return Err("rsa exponent invalid");
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        Some("EC") => {
            let (kind, len) = match crv {
                Some("P-256") => (KeyKind::EcP256, 32),
                Some("P-384") => (KeyKind::EcP384, 48),
                _ => return Err("unsupported curve"),
            };
            let x = b64(jwk, "x")?;
            let y = b64(jwk, "y")?;
            if x.len() != len || y.len() != len {
                return Err("ec coordinates of the wrong length");
            }
            // `len` is 32 or 48: the uncompressed point is 0x04, x, y.
            let mut point = Vec::with_capacity(len.saturating_mul(2).saturating_add(1));
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kind, DecodingKey::from_ec_der(&point))
        }
        Some("OKP") => {
            if crv != Some("Ed25519") {
                return Err("unsupported curve");
            }
            let x = b64(jwk, "x")?;
            if x.len() != 32 {
                return Err("ed25519 key of the wrong length");
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
        }
        Some("oct") => return Err("symmetric keys are never taken from a key set"),
        _ => return Err("unsupported kty"),
    };
    if let Some(alg) = alg
        && !kind.accepts(alg)
    {
        return Err("alg does not suit the key type");
    }
    Ok(VerifyKey {
        kid,
        kind,
        alg,
        key,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn b64s(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa(kid: &str) -> Value {
        let mut n = vec![0xC5u8; 256];
        n[255] = 0x01;
        json!({"kty": "RSA", "kid": kid, "n": b64s(&n), "e": "AQAB"})
    }

    fn set(keys: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }

    #[test]
    fn keeps_supported_signature_keys() {
        let doc = set(json!([
            rsa("r1"),
            {"kty": "EC", "crv": "P-256", "kid": "e1", "x": b64s(&[1; 32]), "y": b64s(&[2; 32])},
            {"kty": "EC", "crv": "P-384", "kid": "e2", "x": b64s(&[1; 48]), "y": b64s(&[2; 48]), "alg": "ES384"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "d1", "x": b64s(&[3; 32]), "use": "sig"},
        ]));
        let ks = KeySet::parse(&doc).unwrap();
        assert_eq!(ks.len(), 4);
        assert!(
            matches!(ks.select(Some("r1"), JwtAlgorithm::PS256), Selection::Found(k) if k.kind == KeyKind::Rsa)
        );
        assert!(matches!(
            ks.select(Some("e1"), JwtAlgorithm::ES256),
            Selection::Found(_)
        ));
        assert!(matches!(
            ks.select(Some("e2"), JwtAlgorithm::ES384),
            Selection::Found(_)
        ));
        assert!(matches!(
            ks.select(Some("d1"), JwtAlgorithm::EdDSA),
            Selection::Found(_)
        ));
        assert!(matches!(
            ks.select(Some("zz"), JwtAlgorithm::RS256),
            Selection::NotFound
        ));
        assert!(matches!(
            ks.select(None, JwtAlgorithm::RS256),
            Selection::NotFound
        ));
    }

    #[test]
    fn an_rsa_key_never_verifies_hmac_or_another_family() {
        let ks = KeySet::parse(&set(json!([rsa("r1")]))).unwrap();
        for alg in [
            JwtAlgorithm::HS256,
            JwtAlgorithm::HS384,
            JwtAlgorithm::HS512,
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA,
        ] {
            assert!(
                matches!(ks.select(Some("r1"), alg), Selection::Mismatch),
                "{alg}"
            );
        }
    }

    #[test]
    fn a_keys_own_alg_restricts_it() {
        let mut k = rsa("r1");
        k["alg"] = json!("RS256");
        let ks = KeySet::parse(&set(json!([k]))).unwrap();
        assert!(matches!(
            ks.select(Some("r1"), JwtAlgorithm::RS256),
            Selection::Found(_)
        ));
        assert!(matches!(
            ks.select(Some("r1"), JwtAlgorithm::PS256),
            Selection::Mismatch
        ));
    }

    #[test]
    fn skips_unusable_entries() {
        let mut enc = rsa("enc");
        enc["use"] = json!("enc");
        let mut ops = rsa("ops");
        ops["key_ops"] = json!(["encrypt"]);
        let mut conflicting = rsa("conflict");
        conflicting["alg"] = json!("ES256");
        let mut unknown_alg = rsa("unknown-alg");
        unknown_alg["alg"] = json!("RSA-OAEP");
        let small = json!({"kty": "RSA", "kid": "small", "n": b64s(&[0xC5; 128]), "e": "AQAB"});
        let doc = set(json!([
            enc,
            ops,
            conflicting,
            unknown_alg,
            small,
            {"kty": "oct", "kid": "sym", "k": b64s(b"secret")},
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": b64s(&[1; 66]), "y": b64s(&[2; 66])},
            {"kty": "EC", "crv": "P-256", "kid": "short", "x": b64s(&[1; 31]), "y": b64s(&[2; 32])},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": b64s(&[3; 32])},
            {"kty": "RSA", "kid": "nobits", "n": "!!", "e": "AQAB"},
            "not an object",
        ]));
        assert!(matches!(
            KeySet::parse(&doc),
            Err(JwksError::NoUsableKey { skipped: 11 })
        ));
        assert!(matches!(
            KeySet::parse(b"{\"nokeys\": []}"),
            Err(JwksError::NotAKeySet)
        ));
        assert!(matches!(
            KeySet::parse(b"<html>"),
            Err(JwksError::NotAKeySet)
        ));
    }

    #[test]
    fn a_key_without_kid_is_usable_only_alone() {
        let mut alone = rsa("x");
        alone.as_object_mut().unwrap().remove("kid");
        let ks = KeySet::parse(&set(json!([alone.clone()]))).unwrap();
        assert!(matches!(
            ks.select(None, JwtAlgorithm::RS256),
            Selection::Found(_)
        ));
        assert!(matches!(
            ks.select(Some("x"), JwtAlgorithm::RS256),
            Selection::NotFound
        ));

        let ks = KeySet::parse(&set(json!([alone, rsa("r1")]))).unwrap();
        assert_eq!(ks.len(), 1);
        assert!(matches!(
            ks.select(Some("r1"), JwtAlgorithm::RS256),
            Selection::Found(_)
        ));
    }
}
