//! Bearer tokens for publishers. The configuration holds only `sha256:<64 lowercase hex>` of each
//! token (made by `tslm hash-token`), never the token itself; a presented token is hashed and
//! compared with every whitelisted hash in constant time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroize;

/// Longest token [`find_token`] will hash, in bytes; longer ones are refused unhashed (a generated
/// token is 48 bytes, so this only stops a peer from making the gateway hash megabytes).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Prefix of the tokens made by [`generate_token`] (it makes them easy to spot in a secret scanner).
pub const TOKEN_PREFIX: &str = "tslm_";

/// SHA-256 of the token's UTF-8 bytes: the value whitelisted in the configuration.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The configuration line for a token: `sha256:<64 lowercase hex digits>`, the format the
/// server's `token_hashes` entries are parsed from.
pub fn hash_line(token: &str) -> String {
    format!("sha256:{}", crate::to_hex(&hash_token(token)))
}

/// A new random token: [`TOKEN_PREFIX`] followed by the unpadded URL-safe base64 of 32 random
/// bytes (256 bits from `rand`'s thread-local CSPRNG, seeded by the operating system), 48
/// characters in all.
pub fn generate_token() -> String {
    let mut bytes: [u8; 32] = rand::random();
    let mut token = String::with_capacity(TOKEN_PREFIX.len().saturating_add(43));
    token.push_str(TOKEN_PREFIX);
    URL_SAFE_NO_PAD.encode_string(bytes, &mut token);
    bytes.zeroize();
    token
}

/// Index in `hashes` of the hash of `token` (the first, if the list holds it twice), or `None`.
///
/// The token is hashed once and compared with **every** hash in constant time, without an early
/// exit, so the time taken reveals neither which entry matched nor whether one did (only the
/// length of the list). Tokens longer than [`MAX_TOKEN_BYTES`] are refused before hashing.
pub fn find_token(hashes: &[[u8; 32]], token: &str) -> Option<usize> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let hash = hash_token(token);
    let mut found = Choice::from(0);
    let mut index = 0u64;
    for (i, candidate) in hashes.iter().enumerate() {
        let equal = candidate.ct_eq(&hash);
        // Keep the first match: take `i` only when this one matches and none did before.
        index.conditional_assign(&(i as u64), equal & !found);
        found |= equal;
    }
    if bool::from(found) {
        usize::try_from(index).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// The server's `parse_token_hash` format, repeated here (that crate depends on this one).
    fn parse_hash_line(line: &str) -> Option<[u8; 32]> {
        let hex = line.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (b, pair) in out.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *b = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(out)
    }

    #[test]
    fn hash_line_is_sha256_prefix_and_lowercase_hex_of_known_vectors() {
        assert_eq!(hash_line("abc"), format!("sha256:{ABC_SHA256}"));
        assert_eq!(hash_line(""), format!("sha256:{EMPTY_SHA256}"));
        assert_eq!(crate::to_hex(&hash_token("abc")), ABC_SHA256);
    }

    #[test]
    fn hash_line_parses_back_to_hash_token() {
        let token = generate_token();
        let line = hash_line(&token);
        assert_eq!(line.len(), "sha256:".len() + 64);
        assert_eq!(parse_hash_line(&line), Some(hash_token(&token)));
    }

    #[test]
    fn find_token_returns_the_matching_index() {
        let tokens = ["alpha-token", "bravo-token", "charlie-token", "delta-token"];
        let hashes: Vec<[u8; 32]> = tokens.iter().map(|t| hash_token(t)).collect();
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(find_token(&hashes, t), Some(i), "token {i}");
        }
        assert_eq!(find_token(&hashes, "echo-token"), None);
        assert_eq!(find_token(&[], "alpha-token"), None);
    }

    #[test]
    fn find_token_returns_the_first_of_duplicate_hashes() {
        let hashes = [hash_token("x"), hash_token("dup"), hash_token("dup")];
        assert_eq!(find_token(&hashes, "dup"), Some(1));
    }

    #[test]
    fn find_token_refuses_a_token_off_by_one_byte() {
        let token = generate_token();
        let hashes = [hash_token("other"), hash_token(&token)];
        assert_eq!(find_token(&hashes, &token), Some(1));

        let mut changed_last = token.clone();
        let last = changed_last.pop().unwrap();
        changed_last.push(if last == 'A' { 'B' } else { 'A' });
        let changed_first = format!("u{}", &token[1..]);
        let truncated = &token[..token.len() - 1];
        let extended = format!("{token}A");
        let with_newline = format!("{token}\n");
        for bad in [
            changed_last.as_str(),
            changed_first.as_str(),
            truncated,
            extended.as_str(),
            with_newline.as_str(),
            "",
        ] {
            assert_eq!(find_token(&hashes, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn find_token_refuses_tokens_longer_than_the_limit_before_hashing() {
        let at_limit = "a".repeat(MAX_TOKEN_BYTES);
        let over_limit = "a".repeat(MAX_TOKEN_BYTES + 1);
        // Both hashes are whitelisted: only the length check can refuse the long one.
        let hashes = [hash_token(&at_limit), hash_token(&over_limit)];
        assert_eq!(find_token(&hashes, &at_limit), Some(0));
        assert_eq!(find_token(&hashes, &over_limit), None);
    }

    #[test]
    fn generated_tokens_are_256_bit_distinct_and_url_safe() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let token = generate_token();
            let body = token.strip_prefix(TOKEN_PREFIX).unwrap();
            assert_eq!(body.len(), 43, "{token}");
            assert!(
                body.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{token}"
            );
            let bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
            assert_eq!(bytes.len(), 32);
            assert!(seen.insert(bytes), "repeated token");
        }
    }
}
