//! Ed25519 proof of possession. The gateway sends a random [`Challenge`]; the publisher signs
//! [`challenge_message`] (bound to this purpose, its name and that challenge) with its
//! [`SecretKey`]; the gateway checks the signature with [`verify`] against each whitelisted
//! `ed25519:<base64>` public key.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use zeroize::{Zeroize, Zeroizing};

/// Length of a [`Challenge`] in bytes.
pub const CHALLENGE_BYTES: usize = 32;

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_BYTES: usize = 64;

/// Domain separator at the start of every [`challenge_message`].
const CHALLENGE_DOMAIN: &[u8] = b"tslm-auth-v1\0";

/// Prefix of a secret key in its text form ([`SecretKey::to_text`]).
pub const SECRET_KEY_PREFIX: &str = "ed25519-secret:";

/// Prefix of a public key in its text form ([`SecretKey::public_text`]), as in the configuration.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// A random challenge of [`CHALLENGE_BYTES`] bytes, sent by the gateway and signed by the
/// publisher. Use each one for a single attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge([u8; CHALLENGE_BYTES]);

impl Challenge {
    /// A fresh challenge from `rand`'s thread-local CSPRNG (seeded by the operating system).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// A challenge with the given bytes (for clients that received one, and for tests).
    pub fn from_bytes(bytes: [u8; CHALLENGE_BYTES]) -> Self {
        Self(bytes)
    }

    /// The challenge's bytes.
    pub fn as_bytes(&self) -> &[u8; CHALLENGE_BYTES] {
        &self.0
    }

    /// Standard (padded) base64 of the challenge, as sent on the wire.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parses standard (padded) base64 of exactly [`CHALLENGE_BYTES`] bytes.
    pub fn from_base64(b64: &str) -> Option<Self> {
        let bytes = STANDARD.decode(b64).ok()?;
        Some(Self(bytes.try_into().ok()?))
    }
}

/// The bytes a publisher signs to answer `challenge`:
/// `b"tslm-auth-v1\0" ‖ publisher ‖ b"\0" ‖ challenge`.
///
/// The domain prefix binds the signature to this purpose (it cannot be replayed as a signature
/// over anything else, such as a signed HTTP request), the name binds it to this publisher, and the
/// challenge to this attempt. The challenge has a fixed length at the end, so the encoding is
/// unambiguous whatever the name holds.
pub fn challenge_message(publisher: &str, challenge: &Challenge) -> Vec<u8> {
    let mut message = Vec::with_capacity(
        CHALLENGE_DOMAIN
            .len()
            .saturating_add(publisher.len())
            .saturating_add(CHALLENGE_BYTES)
            .saturating_add(1),
    );
    message.extend_from_slice(CHALLENGE_DOMAIN);
    message.extend_from_slice(publisher.as_bytes());
    message.push(0);
    message.extend_from_slice(&challenge.0);
    message
}

/// Whether `signature` is a valid Ed25519 signature of `message` by `public_key`.
///
/// False when the signature is not exactly [`SIGNATURE_BYTES`] bytes, when the public key is not
/// the encoding of a curve point, and on any failure of `VerifyingKey::verify_strict`, which also
/// refuses a non-canonical `S` (so signatures are not malleable), and small-order public keys
/// and `R` values (weak keys under which one signature verifies for many messages).
pub fn verify(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = <&[u8; SIGNATURE_BYTES]>::try_from(signature) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    key.verify_strict(message, &Signature::from_bytes(signature))
        .is_ok()
}

/// An Ed25519 secret key (its 32-byte seed), for `tslm keygen` and for clients. The seed is
/// wiped from memory when the key is dropped, and `Debug` shows only the public half.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new key from a seed of 32 random bytes from `rand`'s thread-local CSPRNG (seeded by the
    /// operating system).
    pub fn generate() -> Self {
        let mut seed: [u8; 32] = rand::random();
        let key = SigningKey::from_bytes(&seed);
        seed.zeroize();
        Self(key)
    }

    /// Parses `ed25519-secret:<base64 of the 32-byte seed>` (standard alphabet, or URL-safe
    /// without padding), ignoring surrounding whitespace and newlines as in a key file.
    pub fn parse(text: &str) -> Option<Self> {
        let b64 = text.trim().strip_prefix(SECRET_KEY_PREFIX)?;
        let bytes = Zeroizing::new(
            STANDARD
                .decode(b64)
                .or_else(|_| URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')))
                .ok()?,
        );
        let mut seed: [u8; 32] = bytes.as_slice().try_into().ok()?;
        let key = SigningKey::from_bytes(&seed);
        seed.zeroize();
        Some(Self(key))
    }

    /// The secret in text form, `ed25519-secret:<standard base64 of the seed>`, as read by
    /// [`SecretKey::parse`]. Keep it out of logs and configuration; the gateway needs only
    /// [`SecretKey::public_text`].
    pub fn to_text(&self) -> String {
        let seed = Zeroizing::new(self.0.to_bytes());
        let mut text = String::with_capacity(SECRET_KEY_PREFIX.len().saturating_add(44));
        text.push_str(SECRET_KEY_PREFIX);
        STANDARD.encode_string(seed.as_slice(), &mut text);
        text
    }

    /// The public key in the configuration's form: `ed25519:<standard base64 of 32 bytes>`.
    pub fn public_text(&self) -> String {
        format!(
            "{PUBLIC_KEY_PREFIX}{}",
            STANDARD.encode(self.public_bytes())
        )
    }

    /// The 32-byte public key.
    pub fn public_bytes(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// The Ed25519 signature of `message` (deterministic, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        self.0.sign(message).to_bytes()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("public", &self.public_text())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    /// The group order L of Ed25519, little-endian.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10,
    ];

    fn hex32(hex: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (b, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *b = u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap();
        }
        out
    }

    fn signed(publisher: &str) -> (SecretKey, Challenge, [u8; 64]) {
        let key = SecretKey::generate();
        let challenge = Challenge::random();
        let signature = key.sign(&challenge_message(publisher, &challenge));
        (key, challenge, signature)
    }

    #[test]
    fn challenge_message_is_domain_publisher_nul_challenge() {
        let challenge = Challenge::from_bytes([7; 32]);
        let mut expected = b"tslm-auth-v1\0pub-1\0".to_vec();
        expected.extend_from_slice(&[7; 32]);
        assert_eq!(challenge_message("pub-1", &challenge), expected);
    }

    #[test]
    fn challenge_base64_round_trip_and_length_checked() {
        let challenge = Challenge::random();
        let b64 = challenge.to_base64();
        assert_eq!(b64.len(), 44);
        assert_eq!(Challenge::from_base64(&b64), Some(challenge.clone()));
        assert_eq!(Challenge::from_base64(&STANDARD.encode([1u8; 31])), None);
        assert_eq!(Challenge::from_base64(&STANDARD.encode([1u8; 33])), None);
        assert_eq!(Challenge::from_base64("not base64!"), None);
        assert_ne!(Challenge::random(), challenge);
    }

    #[test]
    fn sign_verify_round_trip() {
        let (key, challenge, signature) = signed("pub-1");
        let message = challenge_message("pub-1", &challenge);
        assert!(verify(&key.public_bytes(), &message, &signature));
    }

    #[test]
    fn signing_matches_rfc8032_test_1() {
        let seed = hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let key = SecretKey::parse(&format!("ed25519-secret:{}", STANDARD.encode(seed))).unwrap();
        let public = hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
        assert_eq!(key.public_bytes(), public);
        let signature = key.sign(b"");
        assert_eq!(
            crate::to_hex(&signature),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
        assert!(verify(&public, b"", &signature));
    }

    #[test]
    fn wrong_publisher_or_challenge_is_refused() {
        let (key, challenge, signature) = signed("pub-1");
        let public = key.public_bytes();
        assert!(!verify(
            &public,
            &challenge_message("pub-2", &challenge),
            &signature
        ));
        assert!(!verify(
            &public,
            &challenge_message("pub-", &challenge),
            &signature
        ));
        let mut other = *challenge.as_bytes();
        other[31] ^= 1;
        let other = Challenge::from_bytes(other);
        assert!(!verify(
            &public,
            &challenge_message("pub-1", &other),
            &signature
        ));
    }

    #[test]
    fn flipped_truncated_or_extended_signature_is_refused() {
        let (key, challenge, signature) = signed("pub-1");
        let public = key.public_bytes();
        let message = challenge_message("pub-1", &challenge);
        for byte in [0, 17, 31, 32, 50, 63] {
            for bit in [0, 7] {
                let mut bad = signature;
                bad[byte] ^= 1 << bit;
                assert!(!verify(&public, &message, &bad), "byte {byte} bit {bit}");
            }
        }
        assert!(!verify(&public, &message, &signature[..63]));
        assert!(!verify(&public, &message, &[]));
        let mut extended = signature.to_vec();
        extended.push(0);
        assert!(!verify(&public, &message, &extended));
    }

    #[test]
    fn other_key_is_refused() {
        let (_, challenge, signature) = signed("pub-1");
        let other = SecretKey::generate();
        assert!(!verify(
            &other.public_bytes(),
            &challenge_message("pub-1", &challenge),
            &signature
        ));
    }

    #[test]
    fn small_order_public_key_is_refused() {
        // The identity point as public key, with R = identity and S = 0: sB == R + kA holds for
        // every message, so lenient verification accepts this "signature" of anything.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let message = challenge_message("pub-1", &Challenge::random());
        let lenient = VerifyingKey::from_bytes(&identity).unwrap();
        assert!(
            lenient
                .verify(&message, &Signature::from_bytes(&forged))
                .is_ok(),
            "the forgery should fool lenient verification, or this test proves nothing"
        );
        assert!(!verify(&identity, &message, &forged));
    }

    #[test]
    fn non_canonical_s_is_refused() {
        let (key, challenge, signature) = signed("pub-1");
        let public = key.public_bytes();
        let message = challenge_message("pub-1", &challenge);
        assert!(verify(&public, &message, &signature));
        // S' = S + L is the same scalar mod L, encoded non-canonically.
        let mut malleated = signature;
        let mut carry = 0u16;
        for (s, l) in malleated[32..].iter_mut().zip(L) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "S + L fits in 32 bytes since S < L < 2^253");
        assert_ne!(malleated, signature);
        assert!(!verify(&public, &message, &malleated));
    }

    #[test]
    fn public_key_that_is_not_a_point_is_refused() {
        let (key, challenge, signature) = signed("pub-1");
        let message = challenge_message("pub-1", &challenge);
        let not_a_point = (2u8..=255)
            .map(|y| {
                let mut bytes = [0u8; 32];
                bytes[0] = y;
                bytes
            })
            .find(|bytes| VerifyingKey::from_bytes(bytes).is_err())
            .unwrap();
        assert!(!verify(&not_a_point, &message, &signature));
        assert!(verify(&key.public_bytes(), &message, &signature));
    }

    #[test]
    fn secret_key_text_round_trip() {
        let key = SecretKey::generate();
        let text = key.to_text();
        assert!(text.starts_with("ed25519-secret:"), "{text}");
        assert_eq!(
            STANDARD
                .decode(&text["ed25519-secret:".len()..])
                .unwrap()
                .len(),
            32
        );
        let parsed = SecretKey::parse(&format!("  {text}\n")).unwrap();
        assert_eq!(parsed.public_bytes(), key.public_bytes());
        assert_eq!(parsed.to_text(), text);
        assert_eq!(parsed.sign(b"m"), key.sign(b"m"));
        assert_ne!(SecretKey::generate().public_bytes(), key.public_bytes());
    }

    #[test]
    fn secret_key_parse_refuses_malformed_text() {
        let seed = STANDARD.encode([9u8; 32]);
        assert!(SecretKey::parse(&format!("ed25519-secret:{seed}")).is_some());
        assert!(SecretKey::parse(&format!("ed25519:{seed}")).is_none());
        assert!(SecretKey::parse(&seed).is_none());
        assert!(
            SecretKey::parse(&format!("ed25519-secret:{}", STANDARD.encode([9u8; 31]))).is_none()
        );
        assert!(
            SecretKey::parse(&format!("ed25519-secret:{}", STANDARD.encode([9u8; 33]))).is_none()
        );
        assert!(SecretKey::parse("ed25519-secret:not*base64").is_none());
        assert!(SecretKey::parse("").is_none());
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = SecretKey::generate();
        let text = key.to_text();
        let seed_b64 = text.strip_prefix("ed25519-secret:").unwrap();
        let seed_url = URL_SAFE_NO_PAD.encode(STANDARD.decode(seed_b64).unwrap());
        let seed_hex = crate::to_hex(&STANDARD.decode(seed_b64).unwrap());
        let debug = format!("{key:?} {key:#?}");
        assert!(debug.contains("SecretKey"), "{debug}");
        for secret in [
            seed_b64,
            seed_url.as_str(),
            seed_hex.as_str(),
            &seed_b64[..16],
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[test]
    fn public_text_is_ed25519_prefix_and_base64_of_32_bytes() {
        let key = SecretKey::generate();
        let text = key.public_text();
        let b64 = text.strip_prefix("ed25519:").unwrap();
        let bytes: [u8; 32] = STANDARD.decode(b64).unwrap().try_into().unwrap();
        assert_eq!(bytes, key.public_bytes());
        assert!(VerifyingKey::from_bytes(&bytes).is_ok());
    }
}
