//! Subscriber access tokens (`tslm_oidc::Verifier::verify`, JWT per RFC 8725) against two issuers
//! with shared secrets (`KeySource::Secret`: no key fetching, no I/O), in one current-thread Tokio
//! runtime made once. The token module's parsing functions are private to `tslm_oidc`, so the whole
//! validation path is fuzzed through `verify`.
//!
//! The first input byte picks how the rest becomes a token (`byte % 3`):
//! - `0`: the rest is the token (lossy UTF-8): arbitrary text;
//! - `1`: the second byte holds flags, the rest is `HEADER 0xFF PAYLOAD` (or only a payload, with
//!   a default header): arbitrary JSON, signed here (with the right or a wrong secret, the header's
//!   or another algorithm, and optionally a damaged signature);
//! - `2`: flags, then bytes that choose the claims (issuer, audience, `exp`, `nbf` around now and
//!   the leeway, subject, channel claims and scopes built from the remaining bytes) and the
//!   header: well-formed tokens that reach claim validation and the channel mapping.
//!
//! Properties, beyond "does not panic":
//! - `Ok` only for a token correctly signed with the issuer's secret: the grant names a configured
//!   issuer, and the token's signature equals the HMAC (computed here, independently of the
//!   verifier's backend, `tslm_fuzz::jwt::hmac`) of its signing input under that issuer's secret
//!   with the header's `alg`, which is one of the issuer's algorithms; the token fits the issuer's
//!   `max_token_bytes`; `iss`, `aud`, `exp`, `nbf` hold (with the leeway); the grant's subject,
//!   expiry and channels are exactly what the claims say (channels: the `channels_claim` entries
//!   and the scopes after `scope_prefix`, deduplicated, none empty, at least one);
//! - a token signed with a wrong secret, with an algorithm other than its header's, or with a
//!   damaged signature is refused;
//! - an error's `Display` is one of the documented texts (`access token …`, the `Display` of a
//!   variant with this setup's values: so it never depends on the token), never contains the
//!   token when it is longer than 16 bytes (unless the token is a piece of a documented text),
//!   nor an issuer's name, URL or secret; `TooLarge` only for a token longer than the limit it
//!   names.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use tokio::runtime::Runtime;
use tslm_fuzz::jwt::{self, ISSUER_A, ISSUER_B, SECRET_A, SECRET_B, WRONG_SECRET};
use tslm_oidc::{Grant, Issuer, KeySource, TokenError, Verifier};

struct Setup {
    runtime: Runtime,
    verifier: Verifier,
    issuers: Vec<Issuer>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
        let issuers = jwt::issuers();
        Setup {
            runtime,
            verifier: Verifier::new(issuers.clone()),
            issuers,
        }
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How a generated token was signed, to know when it must be refused.
struct Signed {
    token: String,
    /// Signed with the secret of the issuer its `iss` names, with its header's algorithm, and
    /// left intact.
    genuine: bool,
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let signed = match mode % 3 {
        0 => Signed {
            token: String::from_utf8_lossy(rest).into_owned(),
            genuine: true,
        },
        1 => from_json(rest),
        _ => from_template(rest),
    };
    let s = setup();
    let before = now_secs();
    let result = s.runtime.block_on(s.verifier.verify(&signed.token));
    let after = now_secs();
    match result {
        Ok(grant) => {
            assert!(
                signed.genuine,
                "accepted a token signed with a wrong key or algorithm, or damaged: {:?}",
                signed.token
            );
            check_grant(s, &signed.token, &grant, before, after);
        }
        Err(e) => check_error(&signed.token, &e),
    }
});

/// Every text an error may show here: the `Display` of each variant with the values this setup
/// can produce. None depends on the token.
fn documented_texts() -> &'static [String] {
    static TEXTS: OnceLock<Vec<String>> = OnceLock::new();
    TEXTS.get_or_init(|| {
        [
            TokenError::TooLarge {
                max: jwt::MAX_TOKEN_A,
            },
            TokenError::TooLarge {
                max: jwt::MAX_TOKEN_B,
            },
            TokenError::Malformed,
            TokenError::UnknownIssuer,
            TokenError::AlgorithmNotAllowed,
            TokenError::KeyMismatch,
            TokenError::UnknownKey,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::NotYetValid,
            TokenError::WrongAudience,
            TokenError::InvalidClaim { claim: "exp" },
            TokenError::InvalidClaim { claim: "nbf" },
            TokenError::NoChannels,
            TokenError::KeysUnavailable,
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    })
}

fn check_error(token: &str, e: &TokenError) {
    let text = e.to_string();
    assert!(text.starts_with("access token "), "{text}");
    let documented = documented_texts();
    assert!(
        documented.contains(&text),
        "an undocumented error text: {text}"
    );
    // A token that is itself a piece of a documented text (the fuzzer builds such tokens from
    // the texts it sees compared, e.g. `ccess token is malformed`) is "contained" trivially.
    if token.len() > 16 && !documented.iter().any(|d| d.contains(token)) {
        assert!(!text.contains(token), "the error shows the token: {text}");
    }
    for secret in [SECRET_A, SECRET_B] {
        assert!(!text.contains(&*String::from_utf8_lossy(secret)));
        assert!(!text.contains(&STANDARD.encode(secret)));
    }
    for leak in [jwt::NAME_A, jwt::NAME_B, ISSUER_A, "http", "second"] {
        assert!(!text.contains(leak), "the error names {leak:?}: {text}");
    }
    let code = e.code();
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "{code}"
    );
    if let TokenError::TooLarge { max } = e {
        assert!(
            token.len() > *max,
            "TooLarge for {} <= {max} bytes",
            token.len()
        );
        assert!([jwt::MAX_TOKEN_A, jwt::MAX_TOKEN_B].contains(max));
    }
}

fn decode_json(part: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .expect("an accepted token's parts are base64url");
    serde_json::from_slice(&bytes).expect("an accepted token's header and payload are JSON")
}

/// A JSON number as Unix seconds (jsonwebtoken rounds fractions; the grant keeps them).
fn seconds(v: &Value) -> Option<f64> {
    v.as_u64().map(|n| n as f64).or_else(|| v.as_f64())
}

/// Re-validates an accepted token independently of the verifier.
fn check_grant(s: &Setup, token: &str, grant: &Grant, before: u64, after: u64) {
    let issuer = s
        .issuers
        .iter()
        .find(|i| i.name == grant.issuer)
        .unwrap_or_else(|| panic!("the grant names no configured issuer: {}", grant.issuer));
    assert!(token.len() <= issuer.max_token_bytes);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "accepted a token of {} parts", parts.len());

    // The signature: the issuer's secret, the header's algorithm, one of the issuer's.
    let header = decode_json(parts[0]);
    assert!(header.get("crit").is_none(), "accepted a token with `crit`");
    let alg = header["alg"]
        .as_str()
        .expect("an accepted token's alg is a string");
    assert!(
        issuer.algorithms.iter().any(|a| a.name() == alg),
        "accepted alg {alg:?} for issuer {}",
        issuer.name
    );
    let KeySource::Secret(secret) = &issuer.keys else {
        panic!("the fuzz issuers have shared secrets");
    };
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    let mac = jwt::hmac(alg, secret, signing_input.as_bytes()).expect("an HMAC algorithm");
    let signature = URL_SAFE_NO_PAD
        .decode(parts[2])
        .expect("an accepted signature is base64url");
    assert!(
        signature == mac,
        "accepted a token whose signature is not the issuer's HMAC: {token:?}"
    );

    // The registered claims.
    let claims = decode_json(parts[1]);
    let claims: &Map<String, Value> = claims.as_object().expect("the claims are an object");
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(issuer.issuer.as_str())
    );
    let audience_ok = |a: &Value| {
        a.as_str()
            .is_some_and(|a| issuer.audiences.iter().any(|x| x == a))
    };
    match claims.get("aud") {
        Some(Value::Array(auds)) => assert!(auds.iter().any(audience_ok), "aud {auds:?}"),
        Some(aud) => assert!(audience_ok(aud), "aud {aud:?}"),
        None => panic!("accepted a token without aud"),
    }
    let leeway = issuer.leeway.as_secs() as f64;
    let exp = claims
        .get("exp")
        .and_then(seconds)
        .expect("an accepted token has a numeric exp");
    assert!(
        exp.round() + leeway >= before as f64,
        "accepted an expired token: exp {exp}, now {before}"
    );
    // `exp`, or the documented latest expiry (9999-12-31T23:59:59Z) when it is later.
    let exp_value = &claims["exp"];
    let latest = Duration::from_secs(tslm_oidc::MAX_EXPIRY_UNIX);
    let expires = match exp_value.as_u64() {
        Some(n) => Duration::from_secs(n),
        None => Duration::try_from_secs_f64(exp).unwrap_or(latest),
    };
    assert_eq!(
        UNIX_EPOCH.checked_add(expires.min(latest)),
        Some(grant.expires_at),
        "the grant's expiry is not exp ({exp_value})"
    );
    if let Some(nbf) = claims.get("nbf") {
        let nbf = seconds(nbf).expect("an accepted nbf is numeric");
        assert!(
            nbf.round() <= after as f64 + leeway,
            "accepted a token not yet valid: nbf {nbf}, now {after}"
        );
    }
    assert_eq!(
        grant.subject.as_deref(),
        claims.get("sub").and_then(Value::as_str)
    );

    // The channels: exactly the claimed patterns and prefixed scopes.
    let mut want: Vec<String> = Vec::new();
    let mut add = |p: &str| {
        if !p.is_empty() && !want.iter().any(|w| w == p) {
            want.push(p.to_owned());
        }
    };
    if let Some(name) = &issuer.claims.channels_claim {
        match claims.get(name) {
            Some(Value::String(s)) => s.split_whitespace().for_each(&mut add),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .for_each(|p| add(p.trim())),
            _ => {}
        }
    }
    if let Some(prefix) = &issuer.claims.scope_prefix {
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
            for s in scopes {
                if let Some(p) = s.strip_prefix(prefix.as_str()) {
                    add(p);
                }
            }
        }
    }
    assert!(!grant.channels.is_empty(), "a grant without channels");
    assert_eq!(
        grant.channels, want,
        "the grant's channels are not the claims'"
    );
}

/// A byte reader that yields zeros when the input runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    /// The text up to the next NUL (lossy UTF-8), at most `max` bytes.
    fn text(&mut self, max: usize) -> String {
        let end = self
            .0
            .iter()
            .take(max)
            .position(|&b| b == 0)
            .unwrap_or(self.0.len().min(max));
        let (t, rest) = self.0.split_at(end);
        self.0 = rest.strip_prefix(&[0]).unwrap_or(rest);
        String::from_utf8_lossy(t).into_owned()
    }
}

/// The secret of the issuer an `iss` names.
fn secret_for(payload: &[u8]) -> Option<&'static [u8]> {
    let claims: Value = serde_json::from_slice(payload).ok()?;
    match claims.get("iss")?.as_str()? {
        ISSUER_A => Some(SECRET_A),
        ISSUER_B => Some(SECRET_B),
        _ => None,
    }
}

/// Signs `header` and `payload` as the flags say.
fn sign(flags: u8, header: &[u8], payload: &[u8]) -> Signed {
    let header_alg = serde_json::from_slice::<Value>(header)
        .ok()
        .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_owned));
    let header_hmac = header_alg
        .as_deref()
        .filter(|a| ["HS256", "HS384", "HS512"].contains(a));
    let right = secret_for(payload);
    let key = match flags & 3 {
        0 => right.unwrap_or(WRONG_SECRET),
        1 => SECRET_A,
        2 => SECRET_B,
        _ => WRONG_SECRET,
    };
    let alg = match (flags >> 2) & 3 {
        0 => header_hmac.unwrap_or("HS256"),
        1 => "HS256",
        2 => "HS384",
        _ => "HS512",
    };
    let mut token = jwt::sign(header, payload, alg, key);
    let damage = (flags >> 4) & 3;
    match damage {
        0 => {}
        1 => {
            // Flip one bit of the signature.
            let dot = token.rfind('.').expect("three parts");
            let mut sig = URL_SAFE_NO_PAD
                .decode(&token[dot + 1..])
                .expect("base64url");
            let i = usize::from(flags >> 6) % sig.len();
            sig[i] ^= 1;
            token.truncate(dot + 1);
            URL_SAFE_NO_PAD.encode_string(sig, &mut token);
        }
        2 => {
            let dot = token.rfind('.').expect("three parts");
            token.truncate(dot + 1);
        }
        _ => token.push_str("=="),
    }
    let genuine = damage == 0 && right == Some(key) && header_hmac == Some(alg);
    Signed { token, genuine }
}

/// Mode 1: `FLAGS HEADER 0xFF PAYLOAD`, or `FLAGS PAYLOAD` with a default header.
fn from_json(rest: &[u8]) -> Signed {
    let Some((&flags, rest)) = rest.split_first() else {
        return Signed {
            token: String::new(),
            genuine: false,
        };
    };
    let (header, payload) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (rest[..i].to_vec(), &rest[i + 1..]),
        None => {
            let alg = ["HS256", "HS384", "HS512", "HS256"][usize::from(flags >> 6)];
            (
                format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}").into_bytes(),
                rest,
            )
        }
    };
    sign(flags, &header, payload)
}

/// Mode 2: well-formed claims chosen by the bytes, with `exp` and `nbf` around now.
fn from_template(rest: &[u8]) -> Signed {
    let mut b = Bytes(rest);
    let flags = b.byte();
    let now = now_secs();
    let near = |b: &mut Bytes<'_>| i64::from(b.byte() as i8) * 2;
    let at = |delta: i64| now.saturating_add_signed(delta);
    let mut claims = Map::new();
    match b.byte() % 6 {
        0 => claims.insert("iss".into(), json!(ISSUER_A)),
        1 => claims.insert("iss".into(), json!(ISSUER_B)),
        2 => claims.insert("iss".into(), json!("https://idp.example/")),
        3 => claims.insert("iss".into(), json!([ISSUER_A])),
        4 => claims.insert("iss".into(), json!(7)),
        _ => None,
    };
    match b.byte() % 6 {
        0 => claims.insert("aud".into(), json!("tslm")),
        1 => claims.insert("aud".into(), json!(["other", "tslm-gw"])),
        2 => claims.insert("aud".into(), json!("gw")),
        3 => claims.insert("aud".into(), json!([])),
        4 => claims.insert("aud".into(), json!("nobody")),
        _ => None,
    };
    let exp = b.byte();
    match exp % 8 {
        0 | 1 => claims.insert("exp".into(), json!(at(3600))),
        // Around now and the leeway (30 s for the first issuer, 0 for the second).
        2 | 3 => {
            let d = near(&mut b);
            claims.insert("exp".into(), json!(at(d)))
        }
        4 => {
            let d = near(&mut b);
            claims.insert("exp".into(), json!(at(d) as f64 + 0.5))
        }
        5 => claims.insert("exp".into(), json!(u64::MAX)),
        6 => claims.insert("exp".into(), json!(1e300)),
        _ => claims.insert("exp".into(), json!(format!("{}", at(3600)))),
    };
    match b.byte() % 5 {
        0 => {
            let d = near(&mut b);
            claims.insert("nbf".into(), json!(at(d)))
        }
        1 => claims.insert("nbf".into(), json!(-1)),
        2 => claims.insert("nbf".into(), json!("0")),
        _ => None,
    };
    match b.byte() % 3 {
        0 => claims.insert("sub".into(), json!(b.text(64))),
        1 => claims.insert("sub".into(), json!(42)),
        _ => None,
    };
    // Channels and scopes from the rest of the input.
    let kind = b.byte();
    for (claim, choice) in [
        ("tslm_channels", kind % 4),
        ("scope", (kind >> 2) % 4),
        ("scp", (kind >> 4) % 4),
    ] {
        match choice {
            0 => {}
            1 => {
                claims.insert(claim.into(), json!(b.text(200)));
            }
            2 => {
                let items: Vec<Value> = (0..(b.byte() % 5)).map(|_| json!(b.text(64))).collect();
                claims.insert(claim.into(), Value::Array(items));
            }
            _ => {
                claims.insert(claim.into(), json!([1, null, {"a": b.text(16)}]));
            }
        }
    }
    let mut header = Map::new();
    let alg = match b.byte() % 8 {
        0 | 1 => "HS256",
        2 => "HS384",
        3 | 4 => "HS512",
        5 => "RS256",
        6 => "none",
        _ => "hs256",
    };
    header.insert("alg".into(), json!(alg));
    let extra = b.byte();
    if extra & 1 != 0 {
        header.insert("typ".into(), json!("JWT"));
    }
    if extra & 2 != 0 {
        header.insert("kid".into(), json!(b.text(16)));
    }
    if extra & 4 != 0 {
        header.insert("crit".into(), json!(["exp"]));
    }
    if extra & 8 != 0 {
        header.insert("jku".into(), json!("https://attacker.example/jwks"));
    }
    let header = serde_json::to_vec(&Value::Object(header)).expect("JSON");
    let payload = serde_json::to_vec(&Value::Object(claims)).expect("JSON");
    sign(flags, &header, &payload)
}
