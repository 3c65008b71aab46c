//! Shared oracles for the TSLM fuzz targets.
//!
//! The decoders validate JSON with serde_json's `RawValue`, which checks the JSON grammar but not
//! whether a value fits in a `serde_json::Value` (numbers beyond `f64`, nesting deeper than 128,
//! lone UTF-16 surrogate escapes are all valid JSON per RFC 8259). So the targets check every
//! "this is valid JSON" property twice:
//!
//! - against [`is_json_text`] / [`is_json_value`], a small RFC 8259 recogniser written here that
//!   shares no code with serde_json (a differential oracle), and
//! - against `serde_json::Value` through [`value_if_representable`], which returns `None` only
//!   when serde_json cannot represent a grammatically valid text (its number, depth and surrogate
//!   limits, or an object key equal to its private `RawValue` marker), and panics on any other
//!   refusal.

use serde_json::Value;

/// JSON's four whitespace bytes (RFC 8259, section 2).
pub fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// `bytes` without leading and trailing JSON whitespace.
pub fn trim_json_ws(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|&b| !is_json_ws(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_json_ws(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Whether `bytes` is a JSON text (RFC 8259): UTF-8, one value, optional whitespace around it.
pub fn is_json_text(bytes: &[u8]) -> bool {
    if std::str::from_utf8(bytes).is_err() {
        return false;
    }
    let mut p = Recogniser { b: bytes, i: 0 };
    p.ws();
    if !p.value() {
        return false;
    }
    p.ws();
    p.i == bytes.len()
}

/// Whether `bytes` is exactly one JSON value, with no whitespace around it.
pub fn is_json_value(bytes: &[u8]) -> bool {
    match (bytes.first(), bytes.last()) {
        (Some(&f), Some(&l)) if !is_json_ws(f) && !is_json_ws(l) => is_json_text(bytes),
        _ => false,
    }
}

struct Recogniser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Recogniser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(is_json_ws) {
            self.i += 1;
        }
    }

    fn literal(&mut self, s: &[u8]) -> bool {
        if self.b[self.i..].starts_with(s) {
            self.i += s.len();
            true
        } else {
            false
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> bool {
        self.eat(b'-');
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.eat(b'.') && self.digits() == 0 {
            return false;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }

    fn string(&mut self) -> bool {
        if !self.eat(b'"') {
            return false;
        }
        loop {
            match self.peek() {
                None => return false,
                Some(b'"') => {
                    self.i += 1;
                    return true;
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            for _ in 0..4 {
                                if !self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                                    return false;
                                }
                                self.i += 1;
                            }
                        }
                        _ => return false,
                    }
                }
                Some(c) if c < 0x20 => return false,
                Some(_) => self.i += 1,
            }
        }
    }

    /// `"key" ws : ws`, positioned at the key.
    fn member_key(&mut self) -> bool {
        if !self.string() {
            return false;
        }
        self.ws();
        if !self.eat(b':') {
            return false;
        }
        self.ws();
        true
    }

    /// One value at the current position (no leading whitespace). Iterative, so that deep nesting
    /// cannot overflow the stack.
    fn value(&mut self) -> bool {
        let mut open: Vec<u8> = Vec::new();
        'value: loop {
            match self.peek() {
                Some(b'{') => {
                    self.i += 1;
                    self.ws();
                    if !self.eat(b'}') {
                        open.push(b'}');
                        if !self.member_key() {
                            return false;
                        }
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    self.ws();
                    if !self.eat(b']') {
                        open.push(b']');
                        continue 'value;
                    }
                }
                Some(b'"') => {
                    if !self.string() {
                        return false;
                    }
                }
                Some(b't') => {
                    if !self.literal(b"true") {
                        return false;
                    }
                }
                Some(b'f') => {
                    if !self.literal(b"false") {
                        return false;
                    }
                }
                Some(b'n') => {
                    if !self.literal(b"null") {
                        return false;
                    }
                }
                Some(b'-' | b'0'..=b'9') => {
                    if !self.number() {
                        return false;
                    }
                }
                _ => return false,
            }
            // A value is complete: close containers or move on to the next element.
            loop {
                let Some(&close) = open.last() else {
                    return true;
                };
                self.ws();
                if self.eat(b',') {
                    self.ws();
                    if close == b'}' && !self.member_key() {
                        return false;
                    }
                    continue 'value;
                }
                if !self.eat(close) {
                    return false;
                }
                open.pop();
            }
        }
    }
}

/// serde_json's refusals of grammatically valid JSON: representation limits, not syntax errors.
const SERDE_JSON_LIMITS: [&str; 5] = [
    "number out of range",
    "recursion limit exceeded",
    "lone leading surrogate in hex escape",
    "unexpected end of hex escape",
    "invalid unicode code point",
];

/// The object key that `serde_json::Value` treats as a `RawValue` marker when serde_json's
/// `raw_value` feature is on (it is: tslm-protocol enables it). `Value` then reads the member's
/// string value as JSON text instead of building an object, or fails: such objects have no
/// faithful `Value`.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Whether a JSON value contains an object key equal (after unescaping) to [`RAW_VALUE_TOKEN`].
/// Deserialised with `deserialize_any` and plain visitors, so the marker has no effect on it.
struct HasRawValueToken(bool);

impl<'de> serde::Deserialize<'de> for HasRawValueToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TokenVisitor)
    }
}

struct TokenVisitor;

impl<'de> serde::de::Visitor<'de> for TokenVisitor {
    type Value = HasRawValueToken;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(HasRawValueToken(false))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(HasRawValueToken(false))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(HasRawValueToken(false))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(HasRawValueToken(false))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(HasRawValueToken(false))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(HasRawValueToken(false))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = false;
        while let Some(HasRawValueToken(f)) = seq.next_element()? {
            found |= f;
        }
        Ok(HasRawValueToken(found))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = false;
        while let Some((key, HasRawValueToken(f))) = map.next_entry::<String, HasRawValueToken>()? {
            found |= f || key == RAW_VALUE_TOKEN;
        }
        Ok(HasRawValueToken(found))
    }
}

/// Parses `bytes`, which must be a JSON text, as a `serde_json::Value`. `None` when serde_json
/// cannot represent it faithfully: one of its limits ([`SERDE_JSON_LIMITS`]) or the `RawValue`
/// marker key ([`RAW_VALUE_TOKEN`]). Any other refusal panics, since it means the two JSON
/// oracles disagree.
pub fn value_if_representable(bytes: &[u8]) -> Option<Value> {
    assert!(
        is_json_text(bytes),
        "not a JSON text: {:?}",
        String::from_utf8_lossy(bytes)
    );
    match serde_json::from_slice::<HasRawValueToken>(bytes) {
        Ok(HasRawValueToken(true)) => return None,
        Ok(HasRawValueToken(false)) => {}
        Err(e) => {
            let msg = e.to_string();
            assert!(
                SERDE_JSON_LIMITS.iter().any(|l| msg.starts_with(l)),
                "serde_json refused a valid JSON text: {msg}: {:?}",
                String::from_utf8_lossy(bytes)
            );
            return None;
        }
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) => Some(v),
        Err(e) => panic!(
            "serde_json::Value refused a valid JSON text: {e}: {:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// Whether `inner` lies within `outer`'s memory (a zero-copy slice of it).
pub fn is_within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

/// The issuers, secrets and HMAC oracle of the `access_token` target (here so that the seed test
/// can use them too).
pub mod jwt {
    use std::time::Duration;

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use sha2::{Digest, Sha256, Sha384, Sha512};
    use tslm_oidc::{ClaimMapping, Issuer, JwtAlgorithm, KeySource};

    /// The first issuer: every HMAC algorithm, two audiences, both claim mappings.
    pub const ISSUER_A: &str = "https://idp.example";
    pub const NAME_A: &str = "main-idp";
    pub const SECRET_A: &[u8] = b"fuzz-secret-A-0123456789abcdef-0123";
    pub const AUDIENCES_A: [&str; 2] = ["tslm", "tslm-gw"];
    pub const MAX_TOKEN_A: usize = 4096;
    /// The second issuer: HS512 only, no leeway, scopes only, a small token limit.
    pub const ISSUER_B: &str = "second";
    pub const NAME_B: &str = "second-idp";
    pub const SECRET_B: &[u8] = b"fuzz-secret-B-with-a-longer-key-0123456789abcdef-0123456789";
    pub const AUDIENCES_B: [&str; 1] = ["gw"];
    pub const MAX_TOKEN_B: usize = 600;
    /// A secret no issuer has.
    pub const WRONG_SECRET: &[u8] = b"fuzz-secret-W-0123456789abcdef-0123";

    pub fn issuers() -> Vec<Issuer> {
        let issuer = |name: &str, iss: &str, secret: &[u8]| Issuer {
            name: name.into(),
            issuer: iss.into(),
            keys: KeySource::Secret(secret.to_vec()),
            audiences: Vec::new(),
            algorithms: Vec::new(),
            leeway: Duration::ZERO,
            claims: ClaimMapping {
                channels_claim: None,
                scope_prefix: None,
            },
            refresh_cooldown: Duration::from_secs(30),
            key_max_age: Duration::from_secs(86_400),
            fetch_timeout: Duration::from_secs(5),
            max_document_bytes: 256 * 1024,
            max_token_bytes: 0,
        };
        let mut a = issuer(NAME_A, ISSUER_A, SECRET_A);
        a.audiences = AUDIENCES_A.map(String::from).to_vec();
        a.algorithms = vec![
            JwtAlgorithm::HS256,
            JwtAlgorithm::HS384,
            JwtAlgorithm::HS512,
        ];
        a.leeway = Duration::from_secs(30);
        a.claims = ClaimMapping {
            channels_claim: Some("tslm_channels".into()),
            scope_prefix: Some("tslm:".into()),
        };
        a.max_token_bytes = MAX_TOKEN_A;
        let mut b = issuer(NAME_B, ISSUER_B, SECRET_B);
        b.audiences = AUDIENCES_B.map(String::from).to_vec();
        b.algorithms = vec![JwtAlgorithm::HS512];
        b.claims = ClaimMapping {
            channels_claim: None,
            scope_prefix: Some("ch/".into()),
        };
        b.max_token_bytes = MAX_TOKEN_B;
        vec![a, b]
    }

    /// HMAC (RFC 2104) over a hash with a `block`-byte block, written here from the definition so
    /// that it shares no code with the verifier's crypto backend.
    fn hmac_with<D: Digest>(block: usize, key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut k = if key.len() > block {
            D::digest(key).to_vec()
        } else {
            key.to_vec()
        };
        k.resize(block, 0);
        let pad = |x: u8| k.iter().map(|b| b ^ x).collect::<Vec<u8>>();
        let inner = D::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        D::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .to_vec()
    }

    /// The HMAC of a JOSE HMAC algorithm (`HS256`, `HS384`, `HS512`); `None` for any other name.
    pub fn hmac(alg: &str, key: &[u8], message: &[u8]) -> Option<Vec<u8>> {
        Some(match alg {
            "HS256" => hmac_with::<Sha256>(64, key, message),
            "HS384" => hmac_with::<Sha384>(128, key, message),
            "HS512" => hmac_with::<Sha512>(128, key, message),
            _ => return None,
        })
    }

    /// A compact JWS of these header and payload bytes, signed with `alg` (an HMAC) and `key`.
    pub fn sign(header: &[u8], payload: &[u8], alg: &str, key: &[u8]) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mac = hmac(alg, key, signing_input.as_bytes()).expect("an HMAC algorithm");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recogniser_agrees_with_rfc_examples() {
        for ok in [
            "0",
            "-0",
            "1.5e+3",
            "-12.0E-7",
            "\"a\\u00e9\\n\"",
            "[]",
            " [1, [2, {}], {\"a\": [true, false, null]}] ",
            "{\"a\":{\"b\":{}}}",
            "1e400",
            "\"\\ud800\"",
        ] {
            assert!(is_json_text(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "[1,]",
            "{\"a\"}",
            "{,}",
            "[",
            "]",
            "tru",
            "nul",
            "\"\t\"",
            "\"\\x\"",
            "\"\\u12\"",
            "1 2",
            "{\"a\":1,}",
            "{1:2}",
            "'a'",
            "NaN",
            "\u{feff}1",
        ] {
            assert!(!is_json_text(bad.as_bytes()), "{bad:?}");
        }
        assert!(!is_json_text(b"\"\xff\""));
        assert!(is_json_value(b"[ 1 ]"));
        assert_eq!(
            value_if_representable(b" [1, {\"a\": null}] "),
            Some(serde_json::json!([1, {"a": null}]))
        );
        for unrepresentable in [
            "1e400",
            "\"\\ud800\"",
            "{\"$serde_json::private::RawValue\":\"[1\"}",
            "[{\"\\u0024serde_json::private::RawValue\":\"7\"}]",
        ] {
            assert_eq!(
                value_if_representable(unrepresentable.as_bytes()),
                None,
                "{unrepresentable}"
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(value_if_representable(deep.as_bytes()), None);
        assert!(!is_json_value(b" 1"));
        assert_eq!(trim_json_ws(b" \n x \r\t"), b"x");
        assert_eq!(trim_json_ws(b"  "), b"");
    }

    /// The committed seeds are valid inputs of their targets (see README.md).
    #[test]
    fn seeds_are_valid_inputs() {
        fn seeds(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("seeds")
                .join(target);
            let seeds: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| {
                    let path = e.unwrap().path();
                    let data = std::fs::read(&path).unwrap();
                    (path, data)
                })
                .collect();
            assert!(seeds.len() >= 4, "{}", dir.display());
            seeds
        }
        use bytes::Bytes;
        for (path, data) in seeds("v1_request") {
            let r = tslm_protocol::v1::decode_request(&Bytes::from(data));
            assert!(r.is_ok(), "{}: {r:?}", path.display());
        }
        for (path, data) in seeds("legacy_request") {
            let r = tslm_protocol::legacy::decode_request(&Bytes::from(data));
            assert!(r.is_ok(), "{}: {r:?}", path.display());
        }
        for (path, data) in seeds("http_body") {
            assert!(is_json_text(&data), "{}", path.display());
            let r = tslm_protocol::Payload::from_json_bytes(Bytes::from(data));
            assert!(r.is_ok(), "{}: {r:?}", path.display());
        }
        for (path, data) in seeds("config") {
            let text = String::from_utf8(data).unwrap();
            let r = tslm_server::Config::from_toml_str(&text, "seed");
            assert!(r.is_ok(), "{}: {r:?}", path.display());
        }
        // Each seed is accepted by at least one of the functions under test.
        for (path, data) in seeds("auth_inputs") {
            let text = String::from_utf8(data).unwrap();
            let accepted = tslm_auth::http_sig::parse_signature(&text).is_some()
                || tslm_auth::keys::Challenge::from_base64(&text).is_some()
                || tslm_auth::keys::SecretKey::parse(&text).is_some()
                || tslm_server::auth_config::parse_public_key(&text).is_some()
                || tslm_server::auth_config::parse_token_hash(&text).is_some()
                || text == "abc";
            assert!(accepted, "{}", path.display());
        }
        for (path, data) in seeds("channel_options") {
            let r = tslm_protocol::v1::decode_options(&data);
            assert!(r.is_ok(), "{}: {r:?}", path.display());
        }
        // Raw-token seeds (mode byte 0) are valid tokens, valid until 2100.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let verifier = tslm_oidc::Verifier::new(jwt::issuers());
        let mut raw = 0;
        for (path, data) in seeds("access_token") {
            if data.first() == Some(&b'0') {
                let token = std::str::from_utf8(&data[1..]).unwrap();
                let r = runtime.block_on(verifier.verify(token));
                assert!(r.is_ok(), "{}: {r:?}", path.display());
                raw += 1;
            }
        }
        assert!(raw >= 2);
    }

    /// RFC 4231 test cases 1 and 2.
    #[test]
    fn hmac_oracle_matches_rfc_4231() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let key = [0x0b; 20];
        assert_eq!(
            hex(&jwt::hmac("HS256", &key, b"Hi There").unwrap()),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&jwt::hmac("HS384", b"Jefe", b"what do ya want for nothing?").unwrap()),
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e\
             8e2240ca5e69e2c78b3239ecfab21649"
        );
        assert_eq!(
            hex(&jwt::hmac("HS512", b"Jefe", b"what do ya want for nothing?").unwrap()),
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
             9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
        assert_eq!(jwt::hmac("RS256", b"k", b"m"), None);
    }
}
