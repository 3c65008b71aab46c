//! Publisher authentication primitives, with no I/O: token hashes compared in constant time,
//! Ed25519 challenge signatures verified strictly, and signed HTTP requests with a replay guard.
//!
//! - [`token`]: bearer tokens, whitelisted by their SHA-256 hash (`sha256:<hex>` in the config).
//! - [`keys`]: Ed25519 key pairs (`ed25519:<base64>` public keys in the config), challenges and
//!   strict signature verification.
//! - [`http_sig`]: signed HTTP requests (`TSLM-Publisher`, `TSLM-Timestamp`, `TSLM-Signature`)
//!   and the bounded [`http_sig::ReplayGuard`].
//!
//! Nothing here reads a socket, a file or the clock: callers pass `now` in. Nothing here logs, and
//! no error message carries a token, a signature or key material.

// Timestamps, windows and lengths here come from requests: no arithmetic may overflow
// (checked, saturating or `abs_diff` only; CI runs clippy with `-D warnings`).
#![warn(clippy::arithmetic_side_effects)]

pub mod http_sig;
pub mod keys;
pub mod token;

/// Lowercase hexadecimal of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len().saturating_mul(2));
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_hex;

    #[test]
    fn hex_is_lowercase_and_two_digits_per_byte() {
        assert_eq!(to_hex(&[]), "");
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
