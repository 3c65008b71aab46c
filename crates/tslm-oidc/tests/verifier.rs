//! The verifier against a real (loopback) key server: valid tokens, the RFC 8725 negative suite,
//! key rotation, provider outages and fetch hardening.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{
    AUDIENCE, RSA_A_PUBLIC_DER, RSA_A_PUBLIC_PEM, Route, Server, TestKey, claims, issuer, now,
};
use tslm_oidc::{Grant, JwtAlgorithm, KeySource, TokenError, Verifier};

const JWKS: &str = "/jwks";
const DISCOVERY: &str = "/.well-known/openid-configuration";

/// A server serving `keys` at `/jwks`, and a verifier for one issuer (`iss` = the server's base
/// URL) reading it, after `tweak`.
async fn setup(
    keys: &[&TestKey],
    tweak: impl FnOnce(&mut tslm_oidc::Issuer),
) -> (Server, Verifier, String) {
    let server = Server::start().await;
    server.set_keys(JWKS, keys);
    let iss = server.url("");
    let mut config = issuer("corp", &iss, KeySource::JwksUrl(server.url(JWKS)));
    tweak(&mut config);
    (server, Verifier::new(vec![config]), iss)
}

fn code(r: Result<Grant, TokenError>) -> &'static str {
    match r {
        Ok(g) => panic!("token accepted: {g:?}"),
        Err(e) => e.code(),
    }
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

#[test]
fn verifier_and_grant_are_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Verifier>();
    check::<Grant>();
    check::<TokenError>();
}

#[tokio::test]
async fn valid_rs256_token_grants_channels_from_both_mappings() {
    let key = TestKey::rsa_a();
    let (server, verifier, iss) = setup(&[&key], |_| {}).await;
    let mut c = claims(&iss);
    let exp = now() + 600;
    c["exp"] = json!(exp);
    let grant = verifier.verify(&key.sign(&c)).await.unwrap();
    assert_eq!(
        grant,
        Grant {
            issuer: "corp".to_owned(),
            subject: Some("alice".to_owned()),
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
            channels: vec!["prices.*".to_owned(), "news.eu".to_owned()],
        }
    );
    // The second token is verified from the cache.
    verifier.verify(&key.sign(&c)).await.unwrap();
    assert_eq!(server.hits(JWKS), 1);
}

#[tokio::test]
async fn es256_and_eddsa_tokens_verify() {
    let (ec, ed, rsa) = (TestKey::ec(), TestKey::ed(), TestKey::rsa_a());
    let (_server, verifier, iss) = setup(&[&rsa, &ec, &ed], |_| {}).await;
    for key in [&ec, &ed] {
        let grant = verifier.verify(&key.sign(&claims(&iss))).await.unwrap();
        assert_eq!(grant.channels, ["prices.*", "news.eu"]);
    }
}

#[tokio::test]
async fn audience_may_be_a_list_containing_one_of_ours() {
    let key = TestKey::rsa_a();
    let (_server, verifier, iss) = setup(&[&key], |_| {}).await;
    let mut c = claims(&iss);
    c["aud"] = json!(["someone-else", AUDIENCE]);
    verifier.verify(&key.sign(&c)).await.unwrap();
}

#[tokio::test]
async fn discovery_leads_to_the_jwks_uri() {
    let key = TestKey::rsa_a();
    let server = Server::start().await;
    let iss = server.url("");
    server.set(
        DISCOVERY,
        Route::Json(json!({"issuer": iss, "jwks_uri": server.url("/keys"), "token_endpoint": "x"})),
    );
    server.set_keys("/keys", &[&key]);
    let verifier = Verifier::new(vec![issuer("corp", &iss, KeySource::Discovery)]);
    verifier.verify(&key.sign(&claims(&iss))).await.unwrap();
    assert_eq!((server.hits(DISCOVERY), server.hits("/keys")), (1, 1));
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused() {
    let key = TestKey::rsa_a();
    let server = Server::start().await;
    let iss = server.url("");
    server.set(
        DISCOVERY,
        Route::Json(json!({"issuer": "https://evil.example", "jwks_uri": server.url("/keys")})),
    );
    server.set_keys("/keys", &[&key]);
    let verifier = Verifier::new(vec![issuer("corp", &iss, KeySource::Discovery)]);
    assert_eq!(
        code(verifier.verify(&key.sign(&claims(&iss))).await),
        "keys_unavailable"
    );
    assert_eq!(server.hits(DISCOVERY), 1);
    assert_eq!(server.hits("/keys"), 0);
}

#[tokio::test]
async fn alg_none_is_refused() {
    let key = TestKey::rsa_a();
    let (server, verifier, iss) = setup(&[&key], |_| {}).await;
    let payload = b64(&claims(&iss));
    for alg in ["none", "None", "NONE"] {
        let header = b64(&json!({"alg": alg, "typ": "JWT"}));
        assert_eq!(
            code(verifier.verify(&format!("{header}.{payload}.")).await),
            "algorithm_not_allowed"
        );
        // Even with a signature part copied from a valid token.
        let valid = key.sign(&claims(&iss));
        let sig = valid.rsplit('.').next().unwrap();
        assert_eq!(
            code(verifier.verify(&format!("{header}.{payload}.{sig}")).await),
            "algorithm_not_allowed"
        );
    }
    assert_eq!(server.total_hits(), 0);
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let key = TestKey::rsa_a();
    for secret in [RSA_A_PUBLIC_PEM, RSA_A_PUBLIC_DER] {
        let forger = EncodingKey::from_secret(secret);
        // The usual configuration: HS256 is simply not allowed.
        let (_server, verifier, iss) = setup(&[&key], |_| {}).await;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        let forged = jsonwebtoken::encode(&header, &claims(&iss), &forger).unwrap();
        assert_eq!(
            code(verifier.verify(&forged).await),
            "algorithm_not_allowed"
        );

        // Even if HS256 were allowed next to RS256, an RSA key is never an HMAC secret.
        let (_server, verifier, iss) =
            setup(&[&key], |i| i.algorithms.push(JwtAlgorithm::HS256)).await;
        let forged = jsonwebtoken::encode(&header, &claims(&iss), &forger).unwrap();
        assert_eq!(code(verifier.verify(&forged).await), "key_mismatch");
        let forged =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims(&iss), &forger).unwrap();
        assert_eq!(code(verifier.verify(&forged).await), "key_mismatch");
    }
}

#[tokio::test]
async fn wrong_issuer_and_wrong_signer_are_refused() {
    let (a, b) = (TestKey::rsa_a(), TestKey::rsa_b());
    let (_server, verifier, iss) = setup(&[&a], |_| {}).await;
    for other in [
        "https://other.example",
        &format!("{iss}/"),
        &iss.to_uppercase(),
    ] {
        let c = claims(other);
        assert_eq!(code(verifier.verify(&a.sign(&c)).await), "unknown_issuer");
    }
    let mut c = claims(&iss);
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(code(verifier.verify(&a.sign(&c)).await), "unknown_issuer");
    c["iss"] = json!([iss]);
    assert_eq!(code(verifier.verify(&a.sign(&c)).await), "unknown_issuer");

    // Key B claiming to be key A.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(a.kid.clone());
    let forged = b.sign_with(header, &claims(&iss));
    assert_eq!(code(verifier.verify(&forged).await), "bad_signature");

    // A valid token with one payload byte changed.
    let valid = a.sign(&claims(&iss));
    let mut parts: Vec<&str> = valid.split('.').collect();
    let mut payload = claims(&iss);
    payload["tslm_channels"] = json!(["*"]);
    let tampered_payload = b64(&payload);
    parts[1] = &tampered_payload;
    assert_eq!(
        code(verifier.verify(&parts.join(".")).await),
        "bad_signature"
    );
}

#[tokio::test]
async fn wrong_or_missing_audience_is_refused() {
    let key = TestKey::rsa_a();
    let (_server, verifier, iss) = setup(&[&key], |_| {}).await;
    let mut c = claims(&iss);
    c["aud"] = json!("someone-else");
    assert_eq!(code(verifier.verify(&key.sign(&c)).await), "wrong_audience");
    c["aud"] = json!(["a", "b"]);
    assert_eq!(code(verifier.verify(&key.sign(&c)).await), "wrong_audience");
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(code(verifier.verify(&key.sign(&c)).await), "wrong_audience");
}

#[tokio::test]
async fn exp_and_nbf_are_checked_with_leeway() {
    let key = TestKey::rsa_a();
    // Leeway 30 s.
    let (_server, verifier, iss) = setup(&[&key], |_| {}).await;
    let with = |field: &str, value: Value| {
        let mut c = claims(&iss);
        c[field] = value;
        key.sign(&c)
    };
    assert_eq!(
        code(verifier.verify(&with("exp", json!(now() - 120))).await),
        "expired"
    );
    // Just expired, within the leeway.
    let grant = verifier
        .verify(&with("exp", json!(now() - 10)))
        .await
        .unwrap();
    assert!(grant.expires_at < std::time::SystemTime::now());
    assert_eq!(
        code(verifier.verify(&with("nbf", json!(now() + 120))).await),
        "not_yet_valid"
    );
    verifier
        .verify(&with("nbf", json!(now() + 10)))
        .await
        .unwrap();
    verifier
        .verify(&with("nbf", json!(now() - 10)))
        .await
        .unwrap();
    // `exp` is required and must be a number; `iat` is not required.
    let mut c = claims(&iss);
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(code(verifier.verify(&key.sign(&c)).await), "invalid_claim");
    assert_eq!(
        code(verifier.verify(&with("exp", json!("tomorrow"))).await),
        "invalid_claim"
    );
    let mut c = claims(&iss);
    c.as_object_mut().unwrap().remove("iat");
    verifier.verify(&key.sign(&c)).await.unwrap();
}

#[tokio::test]
async fn unknown_kid_refreshes_at_most_once_per_cooldown() {
    let (a, b) = (TestKey::rsa_a(), TestKey::rsa_b());
    // Cooldown 60 s.
    let (server, verifier, iss) = setup(&[&a], |_| {}).await;
    verifier.verify(&a.sign(&claims(&iss))).await.unwrap();
    assert_eq!(server.hits(JWKS), 1);

    // Within the cooldown of the first fetch: no request, `unknown_key`.
    assert_eq!(
        code(verifier.verify(&b.sign(&claims(&iss))).await),
        "unknown_key"
    );
    assert_eq!(server.hits(JWKS), 1);
    // A token without `kid` while the set has one key uses that key.
    let no_kid = a.sign_with(Header::new(Algorithm::RS256), &claims(&iss));
    verifier.verify(&no_kid).await.unwrap();
    assert_eq!(server.hits(JWKS), 1);
}

#[tokio::test]
async fn unknown_kid_triggers_one_refresh_then_none_within_the_cooldown() {
    let (a, b) = (TestKey::rsa_a(), TestKey::rsa_b());
    let (server, verifier, iss) = setup(&[&a], |i| {
        i.refresh_cooldown = Duration::from_millis(200);
    })
    .await;
    // Signed up front: RSA signing is slow in debug builds and would eat into the cooldown.
    let token_b = b.sign(&claims(&iss));
    let no_kid = a.sign_with(Header::new(Algorithm::RS256), &claims(&iss));
    verifier.prefetch().await;
    assert_eq!(server.hits(JWKS), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;

    // One refresh (the server still does not have B) ...
    assert_eq!(code(verifier.verify(&token_b).await), "unknown_key");
    assert_eq!(server.hits(JWKS), 2);
    // ... and none within the cooldown, however many unknown kids come.
    for _ in 0..5 {
        assert_eq!(code(verifier.verify(&token_b).await), "unknown_key");
    }
    assert_eq!(server.hits(JWKS), 2);

    // A token without `kid` while the set has several keys is "unknown" too.
    server.set_keys(JWKS, &[&a, &b]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    verifier.verify(&token_b).await.unwrap();
    assert_eq!(server.hits(JWKS), 3);
    assert_eq!(code(verifier.verify(&no_kid).await), "unknown_key");
    assert_eq!(server.hits(JWKS), 3);
}

#[tokio::test]
async fn concurrent_verifies_share_one_fetch() {
    let key = TestKey::rsa_a();
    let (server, verifier, iss) = setup(&[&key], |_| {}).await;
    let token = key.sign(&claims(&iss));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (verifier, token) = (verifier.clone(), token.clone());
            tokio::spawn(async move { verifier.verify(&token).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(server.hits(JWKS), 1);
}

#[tokio::test]
async fn header_key_urls_and_embedded_keys_are_never_used() {
    // A listener that counts the connections it accepts.
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}/jwks", trap.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let trap_task = tokio::spawn(async move {
        while trap.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });

    let (a, attacker) = (TestKey::rsa_a(), TestKey::rsa_b());
    let (server, verifier, iss) = setup(&[&a], |_| {}).await;
    // The attacker's key, offered every way a header can offer one.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("attacker".to_owned());
    header.jku = Some(trap_url.clone());
    header.x5u = Some(trap_url.clone());
    header.jwk = Some(serde_json::from_value(attacker.jwk.clone()).unwrap());
    let token = attacker.sign_with(header.clone(), &claims(&iss));
    assert_eq!(code(verifier.verify(&token).await), "unknown_key");
    // Same with the attacker's key claiming the real key's kid.
    header.kid = Some(a.kid.clone());
    let token = attacker.sign_with(header, &claims(&iss));
    assert_eq!(code(verifier.verify(&token).await), "bad_signature");
    // A valid token carrying a jku: verified with the configured key, the jku ignored.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(a.kid.clone());
    header.jku = Some(trap_url);
    verifier
        .verify(&a.sign_with(header, &claims(&iss)))
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "a header URL was fetched"
    );
    assert_eq!(server.hits(JWKS), 1);
    trap_task.abort();
}

#[tokio::test]
async fn oversized_tokens_are_refused_before_parsing() {
    let key = TestKey::rsa_a();
    let server = Server::start().await;
    server.set_keys(JWKS, &[&key]);
    let (big_iss, small_iss) = (server.url("/big"), server.url("/small"));
    let mut small = issuer("small", &small_iss, KeySource::JwksUrl(server.url(JWKS)));
    small.max_token_bytes = 1024;
    let verifier = Verifier::new(vec![
        issuer("big", &big_iss, KeySource::JwksUrl(server.url(JWKS))),
        small,
    ]);
    // Larger than every issuer allows: refused before any parsing (this is not even a JWT).
    assert_eq!(
        verifier
            .verify(&"x".repeat(8 * 1024 + 1))
            .await
            .unwrap_err(),
        TokenError::TooLarge { max: 8 * 1024 }
    );
    // Within the largest limit but above this issuer's.
    let mut c = claims(&small_iss);
    c["padding"] = json!("p".repeat(1500));
    assert_eq!(
        verifier.verify(&key.sign(&c)).await.unwrap_err(),
        TokenError::TooLarge { max: 1024 }
    );
    let mut c = claims(&big_iss);
    c["padding"] = json!("p".repeat(1500));
    verifier.verify(&key.sign(&c)).await.unwrap();
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let key = TestKey::rsa_a();
    let (server, verifier, iss) = setup(&[&key], |_| {}).await;
    let valid = key.sign(&claims(&iss));
    let parts: Vec<&str> = valid.split('.').collect();
    let not_json = URL_SAFE_NO_PAD.encode(b"{not json");
    let cases = [
        String::new(),
        "abc".to_owned(),
        format!("{}.{}", parts[0], parts[1]),
        format!("{valid}.extra"),
        format!("{}.{}.{}", "%%%", parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], "%%%", parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], "%%%"),
        format!("{}.{}.{}", not_json, parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], not_json, parts[2]),
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(b"\"a string\""),
            parts[2]
        ),
    ];
    for token in cases {
        assert_eq!(
            code(verifier.verify(&token).await),
            "malformed",
            "{token:?}"
        );
    }
    assert_eq!(server.total_hits(), 0);
}

#[tokio::test]
async fn a_token_granting_no_channel_is_refused() {
    let key = TestKey::rsa_a();
    let (_server, verifier, iss) = setup(&[&key], |_| {}).await;
    let mut c = claims(&iss);
    c["tslm_channels"] = json!([]);
    c["scope"] = json!("openid profile");
    assert_eq!(code(verifier.verify(&key.sign(&c)).await), "no_channels");
}

#[tokio::test]
async fn keys_rotate_without_restart() {
    let (a, b) = (TestKey::rsa_a(), TestKey::rsa_b());
    let (server, verifier, iss) = setup(&[&a], |i| {
        i.refresh_cooldown = Duration::from_millis(300);
    })
    .await;
    let token_a = a.sign(&claims(&iss));
    let token_b = b.sign(&claims(&iss));
    verifier.verify(&token_a).await.unwrap();

    // The provider rotates: B only.
    server.set_keys(JWKS, &[&b]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    verifier.verify(&token_b).await.unwrap();
    assert_eq!(server.hits(JWKS), 2);
    // A was removed by that refresh; the cooldown allows no other one yet.
    assert_eq!(code(verifier.verify(&token_a).await), "unknown_key");
    assert_eq!(server.hits(JWKS), 2);
}

#[tokio::test]
async fn cached_keys_serve_through_an_outage_until_key_max_age() {
    let key = TestKey::rsa_a();
    let (server, verifier, iss) = setup(&[&key], |i| {
        i.key_max_age = Duration::from_secs(1);
        i.refresh_cooldown = Duration::from_millis(100);
    })
    .await;
    let token = key.sign(&claims(&iss));
    let start = Instant::now();
    verifier.verify(&token).await.unwrap();

    server.stop().await;
    verifier.verify(&token).await.unwrap();
    // Past half the max age: a refresh is tried (and fails); the cache still serves.
    tokio::time::sleep(Duration::from_millis(600).saturating_sub(start.elapsed())).await;
    verifier.verify(&token).await.unwrap();

    // Past the max age: fail closed.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(start.elapsed())).await;
    assert_eq!(code(verifier.verify(&token).await), "keys_unavailable");
    assert_eq!(code(verifier.verify(&token).await), "keys_unavailable");

    // The provider is back: the next refresh (after the cooldown) restores service.
    server.restart().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    verifier.verify(&token).await.unwrap();
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let key = TestKey::rsa_a();
    let (server, verifier, iss) = setup(&[], |_| {}).await;
    server.set(JWKS, Route::Redirect(server.url("/elsewhere")));
    server.set_keys("/elsewhere", &[&key]);
    assert_eq!(
        code(verifier.verify(&key.sign(&claims(&iss))).await),
        "keys_unavailable"
    );
    assert_eq!(server.hits(JWKS), 1);
    assert_eq!(server.hits("/elsewhere"), 0);
}

#[tokio::test]
async fn oversized_key_sets_are_refused() {
    let key = TestKey::rsa_a();
    for content_length in [true, false] {
        let (server, verifier, iss) = setup(&[], |i| i.max_document_bytes = 4096).await;
        // A valid key set, padded past the cap.
        let mut body = serde_json::to_vec(&json!({"keys": [key.jwk]})).unwrap();
        body.extend(std::iter::repeat_n(b' ', 8192));
        server.set(
            JWKS,
            Route::Raw {
                status: 200,
                content_type: "application/json".to_owned(),
                body,
                content_length,
            },
        );
        assert_eq!(
            code(verifier.verify(&key.sign(&claims(&iss))).await),
            "keys_unavailable"
        );
        assert_eq!(server.hits(JWKS), 1);
    }
}

#[tokio::test]
async fn non_json_or_non_200_key_sets_are_refused() {
    let key = TestKey::rsa_a();
    let jwks = serde_json::to_vec(&json!({"keys": [key.jwk]})).unwrap();
    for (status, content_type) in [
        (200, "text/html"),
        (500, "application/json"),
        (204, "application/json"),
    ] {
        let (server, verifier, iss) = setup(&[], |_| {}).await;
        server.set(
            JWKS,
            Route::Raw {
                status,
                content_type: content_type.to_owned(),
                body: if status == 204 {
                    Vec::new()
                } else {
                    jwks.clone()
                },
                content_length: true,
            },
        );
        assert_eq!(
            code(verifier.verify(&key.sign(&claims(&iss))).await),
            "keys_unavailable"
        );
    }
}

#[tokio::test]
async fn shared_secret_issuer_accepts_hs256_and_refuses_rs256() {
    let secret = b"a shared secret of at least 32 bytes!!".to_vec();
    let mut config = issuer(
        "hmac",
        "https://hmac.example",
        KeySource::Secret(secret.clone()),
    );
    config.algorithms = vec![JwtAlgorithm::HS256];
    let mut lax = issuer(
        "lax",
        "https://lax.example",
        KeySource::Secret(secret.clone()),
    );
    lax.algorithms = vec![JwtAlgorithm::HS256, JwtAlgorithm::RS256];
    let verifier = Verifier::new(vec![config, lax]);
    let hs = |iss: &str, secret: &[u8]| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(iss),
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };

    let grant = verifier
        .verify(&hs("https://hmac.example", &secret))
        .await
        .unwrap();
    assert_eq!(grant.issuer, "hmac");
    // A `kid` does not matter: the secret is the only key.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("whatever".to_owned());
    let token = jsonwebtoken::encode(
        &header,
        &claims("https://hmac.example"),
        &EncodingKey::from_secret(&secret),
    )
    .unwrap();
    verifier.verify(&token).await.unwrap();

    assert_eq!(
        code(
            verifier
                .verify(&hs(
                    "https://hmac.example",
                    b"another secret of 32 bytes or more"
                ))
                .await
        ),
        "bad_signature"
    );
    let rsa = TestKey::rsa_a();
    assert_eq!(
        code(
            verifier
                .verify(&rsa.sign(&claims("https://hmac.example")))
                .await
        ),
        "algorithm_not_allowed"
    );
    assert_eq!(
        code(
            verifier
                .verify(&rsa.sign(&claims("https://lax.example")))
                .await
        ),
        "key_mismatch"
    );
}

#[tokio::test]
async fn prefetch_fills_the_cache_and_survives_a_down_provider() {
    let key = TestKey::rsa_a();
    let (server, verifier, iss) = setup(&[&key], |_| {}).await;
    verifier.prefetch().await;
    assert_eq!(server.hits(JWKS), 1);
    verifier.verify(&key.sign(&claims(&iss))).await.unwrap();
    assert_eq!(server.hits(JWKS), 1);

    let down = Server::start().await;
    let url = down.url(JWKS);
    down.stop().await;
    let verifier = Verifier::new(vec![issuer(
        "down",
        "https://down.example",
        KeySource::JwksUrl(url),
    )]);
    verifier.prefetch().await;
}

#[tokio::test]
async fn errors_never_show_the_token() {
    let key = TestKey::rsa_a();
    let (_server, verifier, iss) = setup(&[&key], |_| {}).await;
    let mut c = claims(&iss);
    c["exp"] = json!(now() - 3600);
    let token = key.sign(&c);
    let e = verifier.verify(&token).await.unwrap_err();
    let shown = format!("{e} {e:?}");
    for part in token.split('.') {
        assert!(!shown.contains(part), "{shown}");
    }
    assert!(!shown.contains(&iss));
}

/// A listener that counts the connections it accepts: `(port, count, task)`.
async fn canary() -> (u16, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the canary");
    let port = listener.local_addr().expect("canary address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, accepted, task)
}

#[tokio::test]
async fn a_discovery_document_cannot_send_key_fetches_to_another_origin() {
    let key = TestKey::rsa_a();
    let (canary_port, accepted, canary_task) = canary().await;
    let server = Server::start().await;
    let iss = server.url("");
    let own = iss.trim_start_matches("http://").to_owned();
    let c = canary_port;
    server.set_keys("/keys", &[&key]);
    // Each names the canary (or another origin) in a way a text comparison of what follows the
    // first `://` mistakes for the issuer's own host, or in a way a parser normalises.
    let hostile = [
        format!(r"http:\\127.0.0.1:{c}\x://{own}/keys"),
        format!(r"https:\\127.0.0.1:{c}\x://{own}/keys"),
        format!("http:/127.0.0.1:{c}/x://{own}/keys"),
        format!("http:127.0.0.1:{c}/x://{own}/keys"),
        format!("http:/\t/127.0.0.1:{c}/x://{own}/keys"),
        format!(r"http:\\[::ffff:127.0.0.1]:{c}\x://{own}/keys"),
        format!("http://[::ffff:127.0.0.1]:{c}/keys"),
        format!("http://{own}@127.0.0.1:{c}/keys"),
        format!("http://user:pw@{own}/keys"),
        format!("http://127.0.0.1:{c}/keys"),
        format!("https://127.0.0.1:{c}/keys"),
        format!("https://{own}/keys"),
        format!("ftp://{own}/keys"),
        format!("http://%31%32%37.0.0.1:{c}/keys"),
        format!("http:%2f%2f127.0.0.1:{c}/x://{own}/keys"),
        format!("http://127.0.0.1%3a{c}/keys"),
        format!("http://localhost:{c}/keys"),
    ];
    // Unknown kids, signed up front (RSA signing is slow in debug builds).
    let unknown: Vec<String> = (0..3)
        .map(|n| {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(format!("unknown-{n}"));
            key.sign_with(header, &claims(&iss))
        })
        .collect();
    let mut discoveries = 0;
    for jwks_uri in &hostile {
        server.set(
            DISCOVERY,
            Route::Json(json!({"issuer": iss, "jwks_uri": jwks_uri})),
        );
        let mut config = issuer("corp", &iss, KeySource::Discovery);
        config.refresh_cooldown = Duration::ZERO;
        let verifier = Verifier::new(vec![config]);
        // Unknown kids, again and again: each one asks for a refresh.
        for token in &unknown {
            assert_eq!(
                code(verifier.verify(token).await),
                "keys_unavailable",
                "{jwks_uri:?}"
            );
            discoveries += 1;
            assert_eq!(server.hits(DISCOVERY), discoveries, "{jwks_uri:?}");
        }
    }
    assert_eq!(server.hits("/keys"), 0);

    // The same issuer with an honest document works (the fetch path above was live) ...
    server.set(
        DISCOVERY,
        Route::Json(json!({"issuer": iss, "jwks_uri": server.url("/keys")})),
    );
    let verifier = Verifier::new(vec![issuer("corp", &iss, KeySource::Discovery)]);
    verifier.verify(&key.sign(&claims(&iss))).await.unwrap();
    assert_eq!(server.hits("/keys"), 1);
    // ... and the canary counts what reaches it: one connection of ours, then the count.
    tokio::net::TcpStream::connect(("127.0.0.1", canary_port))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while accepted.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "a key fetch reached another origin"
    );
    canary_task.abort();
}

#[tokio::test]
async fn extreme_exp_nbf_and_iat_are_answered_never_overflow() {
    let key = TestKey::rsa_a();
    let (_server, verifier, iss) = setup(&[&key], |i| {
        i.leeway = Duration::from_secs(u64::MAX);
    })
    .await;
    let with = |pairs: &[(&str, Value)]| {
        let mut c = claims(&iss);
        for (field, value) in pairs {
            c[*field] = value.clone();
        }
        key.sign(&c)
    };
    let far = UNIX_EPOCH + Duration::from_secs(tslm_oidc::MAX_EXPIRY_UNIX);
    for exp in [
        json!(i64::MAX),
        json!(i64::MAX - 1),
        json!(u64::MAX),
        json!(1e19),
    ] {
        let grant = verifier.verify(&with(&[("exp", exp.clone())])).await;
        assert_eq!(grant.map(|g| g.expires_at), Ok(far), "exp {exp}");
    }
    for (nbf, expected) in [
        (json!(i64::MAX), "not_yet_valid"),
        (json!(u64::MAX), "not_yet_valid"),
        (json!(-1), "invalid_claim"),
        (json!(i64::MIN), "invalid_claim"),
        (json!(1e300), "invalid_claim"),
    ] {
        assert_eq!(
            code(verifier.verify(&with(&[("nbf", nbf.clone())])).await),
            expected,
            "nbf {nbf}"
        );
    }
    for exp in [json!(-1), json!(i64::MIN), json!(1e300), json!(0)] {
        let r = verifier.verify(&with(&[("exp", exp.clone())])).await;
        assert!(matches!(code(r), "invalid_claim" | "expired"), "exp {exp}");
    }
    // `iat` is not checked: any value, even absurd, changes nothing.
    for iat in [json!(i64::MAX), json!(u64::MAX), json!(-1), json!(i64::MIN)] {
        verifier
            .verify(&with(&[("iat", iat.clone()), ("exp", json!(i64::MAX))]))
            .await
            .unwrap_or_else(|e| panic!("iat {iat}: {e}"));
    }
}
