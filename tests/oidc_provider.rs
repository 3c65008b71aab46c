//! Self-check of the OpenID Connect test provider (`tests/support/oidc.rs`,
//! `tests/oidc/provider.mjs`): discovery, JWKS, the JWT access tokens and their claims, and key
//! rotation by restarting on the same port.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "support/oidc.rs"]
mod oidc;

use std::time::{SystemTime, UNIX_EPOCH};

use oidc::*;
use serde_json::{Value, json};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The kids the provider's JWKS endpoint publishes; checks that no private parts leak.
async fn published_kids(p: &Provider) -> Vec<String> {
    let jwks = get_json_url(&p.jwks_url()).await;
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["kty"], "RSA", "{k}");
            assert_eq!(k["alg"], "RS256", "{k}");
            assert_eq!(k["use"], "sig", "{k}");
            assert!(k["n"].is_string() && k["e"].is_string(), "{k}");
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(k.get(private).is_none(), "JWKS leaks {private}: {k}");
            }
            k["kid"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn discovery_jwks_and_a_client_credentials_jwt_access_token() {
    let p = Provider::start(0, "kid-one").await;
    assert_ne!(p.port, 0);
    assert_eq!(p.issuer, format!("http://127.0.0.1:{}", p.port));

    let discovery = get_json_url(&p.discovery_url()).await;
    assert_eq!(discovery["issuer"], p.issuer.as_str());
    assert_eq!(discovery["jwks_uri"], p.jwks_url().as_str());
    assert_eq!(discovery["token_endpoint"], p.token_url().as_str());
    assert!(
        discovery["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("client_credentials")),
        "{discovery}"
    );
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap();
    let kids = {
        let jwks = get_json_url(jwks_uri).await;
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1, "{jwks}");
        published_kids(&p).await
    };
    assert_eq!(kids, ["kid-one"]);

    let before = now();
    let token = p.token(&["tslm:prices.*", "tslm:news"]).await;
    let (header, claims) = decode_jwt(&token);
    assert_eq!(header["alg"], "RS256", "{header}");
    assert_eq!(header["typ"], "at+jwt", "{header}");
    let kid = header["kid"].as_str().expect("kid in the header");
    assert!(kids.iter().any(|k| k == kid), "{kid} not in {kids:?}");
    assert_eq!(kid, p.kid);

    assert_eq!(claims["iss"], p.issuer.as_str(), "{claims}");
    assert_eq!(claims["aud"], AUDIENCE, "{claims}");
    assert_eq!(claims["aud"], "tslm-gateway");
    let exp = claims["exp"].as_u64().unwrap();
    let iat = claims["iat"].as_u64().unwrap();
    assert!(exp > now(), "{claims}");
    assert!(iat + 1 >= before && iat <= now(), "{claims}");
    assert_eq!(exp - iat, DEFAULT_TTL_SECS, "{claims}");
    assert_eq!(
        claims["tslm_channels"],
        json!(["prices.*", "news"]),
        "{claims}"
    );
    assert_eq!(claims["scope"], "tslm:prices.* tslm:news", "{claims}");
    assert_eq!(claims["client_id"], CLIENT_ID, "{claims}");
    assert_eq!(claims["sub"], CLIENT_ID, "{claims}");
    assert!(claims["jti"].is_string(), "{claims}");

    // The same by channel pattern; other scopes pass through without granting channels.
    let (_, claims) = decode_jwt(&p.token_for_channels(&["orders.eu", "a:b~c_d-*"]).await);
    assert_eq!(claims["tslm_channels"], json!(["orders.eu", "a:b~c_d-*"]));
    let (_, claims) = decode_jwt(&p.token(&["openid", "other", "tslm:x"]).await);
    assert_eq!(claims["tslm_channels"], json!(["x"]));
    assert_eq!(claims["scope"], "openid other tslm:x");
    // Channels by the claim only, and by a scope only (under another prefix).
    let (_, claims) = decode_jwt(&p.token(&["tslm-claim:a.*", "chan:b", "tslm:c"]).await);
    assert_eq!(claims["tslm_channels"], json!(["a.*", "c"]));
    assert_eq!(claims["scope"], "tslm-claim:a.* chan:b tslm:c");
    let (_, claims) = decode_jwt(&p.token(&[]).await);
    assert_eq!(claims["tslm_channels"], json!([]));
    assert!(claims.get("scope").is_none(), "{claims}");

    // Another audience, for tests of tokens not meant for the gateway.
    let (_, claims) = decode_jwt(&p.token_for_audience("someone-else", &["tslm:x"]).await);
    assert_eq!(claims["aud"], "someone-else");
    assert_eq!(claims["iss"], p.issuer.as_str());

    p.stop().await;
}

#[tokio::test]
async fn the_token_endpoint_refuses_bad_requests() {
    let p = Provider::start(0, "kid-refusals").await;
    let (status, body) = p.token_request("grant_type=password").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = p
        .token_request("grant_type=client_credentials&resource=https%3A%2F%2Fexample.com%2F")
        .await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_target")));

    // Wrong secret, via client_secret_post.
    let (status, raw) = http_request(
        p.port,
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"grant_type=client_credentials&client_id=tslm-test-post&client_secret=nope",
    )
    .await;
    let body: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!((status, &body["error"]), (401, &json!("invalid_client")));
    // The right one.
    let (status, raw) = http_request(
        p.port,
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"grant_type=client_credentials&client_id=tslm-test-post&client_secret=tslm-test-secret",
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    p.stop().await;
}

#[tokio::test]
async fn a_short_ttl() {
    let p = Provider::start_with_ttl(0, "kid-short", 2).await;
    let (_, claims) = decode_jwt(&p.token(&["tslm:x"]).await);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        2
    );
    p.stop().await;
}

#[tokio::test]
async fn keys_rotate_by_restarting_on_the_same_port() {
    let p = Provider::start(0, "kid-old").await;
    let (port, issuer) = (p.port, p.issuer.clone());
    assert_eq!(published_kids(&p).await, ["kid-old"]);
    let old_token = p.token(&["tslm:prices.*"]).await;
    assert_eq!(decode_jwt(&old_token).0["kid"], "kid-old");
    p.stop().await;

    // A fresh provider on the same port: same issuer, only the new key.
    let p = Provider::start(port, "kid-new").await;
    assert_eq!((p.port, p.issuer.as_str()), (port, issuer.as_str()));
    assert_eq!(published_kids(&p).await, ["kid-new"]);
    let (header, claims) = decode_jwt(&p.token(&["tslm:prices.*"]).await);
    assert_eq!(header["kid"], "kid-new");
    assert_eq!(claims["iss"], issuer.as_str());

    // Rotation with overlap: the new key signs, the previous one stays published.
    let p = p.rotate("kid-newer", true).await;
    assert_eq!(p.port, port);
    assert_eq!(published_kids(&p).await, ["kid-newer", "kid-new"]);
    assert_eq!(decode_jwt(&p.token(&[]).await).0["kid"], "kid-newer");

    // And without: only the newest key.
    let p = p.rotate("kid-newest", false).await;
    assert_eq!(published_kids(&p).await, ["kid-newest"]);
    assert_eq!(decode_jwt(&p.token(&[]).await).0["kid"], "kid-newest");
    p.stop().await;

    // Stopped means gone.
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
}

#[test]
fn the_inline_codecs() {
    assert_eq!(base64_encode(b""), "");
    assert_eq!(base64_encode(b"f"), "Zg==");
    assert_eq!(base64_encode(b"fo"), "Zm8=");
    assert_eq!(base64_encode(b"foo"), "Zm9v");
    assert_eq!(
        base64_encode(b"tslm-test:tslm-test-secret"),
        "dHNsbS10ZXN0OnRzbG0tdGVzdC1zZWNyZXQ="
    );
    assert_eq!(base64url_decode("Zm9vYg"), b"foob");
    assert_eq!(base64url_decode("_-8"), [0xff, 0xef]);
    assert_eq!(form_encode("tslm:prices.* a~b"), "tslm%3Aprices.%2A%20a~b");
}
