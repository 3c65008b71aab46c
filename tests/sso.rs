//! Subscribers with access tokens from a real OpenID Connect provider (the `oidc-provider` npm
//! package, started on loopback by `tests/support/oidc.rs`): tokens map to channels, keys rotate
//! at the provider, an outage is survived on cached keys and then fails closed, tokens expire and
//! are refreshed, and nothing in a token, a channel name or a payload makes the gateway connect
//! anywhere.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;
#[path = "support/oidc.rs"]
mod oidc;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use oidc::Provider;
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A gateway whose `secure.*` channels need a token from `issuer`, and `open.*` do not.
fn gateway_config(issuer: &str, extra_issuer_keys: &str) -> String {
    format!(
        "{}\n[issuer.corp]\nissuer = '{issuer}'\naudiences = ['{aud}']\nchannels_claim = 'tslm_channels'\n\
         refresh_cooldown_seconds = 1\nleeway_seconds = 0\n{extra_issuer_keys}\n\
         [channel.\"secure.*\"]\nsubscribers = 'authenticated'\n",
        two_listeners(""),
        aud = oidc::AUDIENCE,
    )
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn create(srv: &TestServer, channels: &[&str]) {
    let mut admin = v1(&srv.url("private")).await;
    for c in channels {
        let r = call(&mut admin, &format!(r#"{{"op":"create","channel":"{c}"}}"#)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
}

async fn auth(ws: &mut Ws, token: &str) -> Value {
    call(ws, &format!(r#"{{"op":"auth","token":"{token}"}}"#)).await
}

async fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    call(
        ws,
        &format!(r#"{{"op":"subscribe","channel":"{channel}"}}"#),
    )
    .await
}

#[tokio::test]
async fn a_real_providers_token_grants_exactly_its_channels() {
    let provider = Provider::start(0, "k1").await;
    let srv = TestServer::start(&gateway_config(&provider.issuer, "")).await;
    create(&srv, &["secure.prices.eu", "secure.news", "open.x"]).await;
    let token = provider.token_for_channels(&["secure.prices.*"]).await;

    // Anonymous: open channels only.
    let mut anon = v1(&srv.url("public")).await;
    assert_eq!(subscribe(&mut anon, "open.x").await["ok"], true);
    let r = subscribe(&mut anon, "secure.prices.eu").await;
    assert_eq!(code(&r), "unauthorized", "{r}");

    // With the token in the first message.
    let mut sub = v1(&srv.url("public")).await;
    let r = auth(&mut sub, &token).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["subject"], "tslm-test");
    assert!(r["expires_at"].as_u64().unwrap() > 0);
    assert_eq!(subscribe(&mut sub, "secure.prices.eu").await["ok"], true);
    let r = subscribe(&mut sub, "secure.news").await;
    assert_eq!(code(&r), "forbidden", "not granted: {r}");
    // History follows the same rule.
    let r = call(&mut sub, r#"{"op":"history","channel":"secure.news"}"#).await;
    assert_eq!(code(&r), "forbidden");

    // A message reaches it.
    let mut publisher = v1(&srv.url("private")).await;
    call(
        &mut publisher,
        r#"{"op":"publish","channel":"secure.prices.eu","data":7}"#,
    )
    .await;
    assert_eq!(recv_json(&mut sub).await["data"], 7);

    // The token in a header, for clients that can set one.
    let mut req = srv.url("public").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tslm.v1"),
    );
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let (mut with_header, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        subscribe(&mut with_header, "secure.prices.eu").await["ok"],
        true
    );
    // A bad token in a header is refused before the upgrade.
    let mut req = srv.url("public").into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}x")).unwrap(),
    );
    let e = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    provider.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_and_say_why_without_echoing_them() {
    let provider = Provider::start(0, "k1").await;
    let srv = TestServer::start(&gateway_config(&provider.issuer, "max_token_bytes = 4096")).await;
    let good = provider.token_for_channels(&["secure.*"]).await;
    let (header, payload) = oidc::decode_jwt(&good);
    let b64 = |v: &Value| b64url(v.to_string().as_bytes());
    let parts: Vec<&str> = good.split('.').collect();

    let mut none_header = header.clone();
    none_header["alg"] = "none".into();
    let mut other_iss = payload.clone();
    other_iss["iss"] = "http://127.0.0.1:1".into();
    let mut more_channels = payload.clone();
    more_channels["tslm_channels"] = serde_json::json!(["*"]);
    let cases = [
        ("alg none", format!("{}.{}.", b64(&none_header), parts[1])),
        (
            "payload changed",
            format!("{}.{}.{}", parts[0], b64(&more_channels), parts[2]),
        ),
        (
            "other issuer",
            format!("{}.{}.{}", parts[0], b64(&other_iss), parts[2]),
        ),
        (
            "wrong audience",
            provider
                .token_for_audience("someone-else", &["tslm:secure.*"])
                .await,
        ),
        ("oversized", format!("{good}{}", "A".repeat(5000))),
        ("not a jwt", "hello".to_owned()),
    ];
    for (what, token) in cases {
        let mut ws = v1(&srv.url("public")).await;
        let r = auth(&mut ws, &token).await;
        assert_eq!(code(&r), "unauthorized", "{what}: {r}");
        let message = r["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains(&token[..20.min(token.len())]),
            "{what} echoed: {message}"
        );
        let r = subscribe(&mut ws, "secure.a").await;
        assert_eq!(code(&r), "unauthorized", "{what}: still anonymous");
    }
    provider.stop().await;
}

#[tokio::test]
async fn keys_rotated_at_the_provider_are_followed_and_an_outage_is_survived_then_fails_closed() {
    let provider = Provider::start(0, "k1").await;
    let srv = TestServer::start(&gateway_config(&provider.issuer, "key_max_age_seconds = 3")).await;
    create(&srv, &["secure.a"]).await;
    let t1 = provider.token_for_channels(&["secure.*"]).await;
    let mut ws = v1(&srv.url("public")).await;
    assert_eq!(auth(&mut ws, &t1).await["ok"], true);

    // Rotation: the provider now signs with k2 only.
    let provider = provider.rotate("k2", false).await;
    let t2 = provider.token_for_channels(&["secure.*"]).await;
    assert_eq!(oidc::decode_jwt(&t2).0["kid"], "k2");
    tokio::time::sleep(Duration::from_millis(1100)).await; // past the refresh cooldown
    let mut ws = v1(&srv.url("public")).await;
    let r = auth(&mut ws, &t2).await;
    assert_eq!(r["ok"], true, "the new kid triggers a refresh: {r}");

    // Outage: the keys in cache still serve...
    provider.stop().await;
    let mut ws = v1(&srv.url("public")).await;
    assert_eq!(auth(&mut ws, &t2).await["ok"], true, "cached keys serve");
    // ...until their max age (3 s since the last fetch); then the gateway fails closed.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let mut ws = v1(&srv.url("public")).await;
    let r = auth(&mut ws, &t2).await;
    assert_eq!(code(&r), "unauthorized", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unavailable")
            || r["error"]["message"].as_str().unwrap().contains("keys"),
        "{r}"
    );
}

#[tokio::test]
async fn an_expiring_token_closes_the_connection_unless_refreshed() {
    let provider = Provider::start_with_ttl(0, "k1", 3).await;
    let srv = TestServer::start(&gateway_config(&provider.issuer, "")).await;
    create(&srv, &["secure.a"]).await;

    let mut lapsing = v1(&srv.url("public")).await;
    let short = provider.token_for_channels(&["secure.*"]).await;
    assert_eq!(auth(&mut lapsing, &short).await["ok"], true);
    assert_eq!(subscribe(&mut lapsing, "secure.a").await["ok"], true);

    let mut refreshed = v1(&srv.url("public")).await;
    assert_eq!(auth(&mut refreshed, &short).await["ok"], true);
    // A fresh token, 1.5 s later: it lasts 1.5 s longer than the first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let next = provider.token_for_channels(&["secure.*"]).await;
    let r = call(
        &mut refreshed,
        &format!(r#"{{"op":"refresh","token":"{next}"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["expires_at"].as_u64() > Some(0));

    // The first closes at its token's expiry, with 4003.
    assert_eq!(
        recv_close(&mut lapsing).await,
        Some((4003, "token expired".into()))
    );
    // The refreshed one is still open.
    assert_eq!(call(&mut refreshed, r#"{"op":"ping"}"#).await["ok"], true);
    // A refresh must name the same subject; and only a subscriber can refresh.
    let mut anon = v1(&srv.url("public")).await;
    let r = call(
        &mut anon,
        &format!(r#"{{"op":"refresh","token":"{next}"}}"#),
    )
    .await;
    assert_eq!(code(&r), "bad_request");
    provider.stop().await;
}

/// A TCP listener that counts the connections it receives.
async fn counting_listener() -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
        }
    });
    (url, count)
}

#[tokio::test]
async fn nothing_in_a_token_a_channel_or_a_payload_makes_the_gateway_connect_anywhere() {
    let provider = Provider::start(0, "k1").await;
    let srv = TestServer::start(&gateway_config(&provider.issuer, "")).await;
    let (trap, connections) = counting_listener().await;
    let good = provider.token_for_channels(&["secure.*"]).await;
    let (header, _) = oidc::decode_jwt(&good);
    let parts: Vec<&str> = good.split('.').collect();
    for field in ["jku", "x5u"] {
        let mut h = header.clone();
        h[field] = trap.clone().into();
        h["kid"] = "not-in-the-key-set".into();
        let forged = format!(
            "{}.{}.{}",
            b64url(h.to_string().as_bytes()),
            parts[1],
            parts[2]
        );
        let mut ws = v1(&srv.url("public")).await;
        assert_eq!(code(&auth(&mut ws, &forged).await), "unauthorized");
    }
    // URLs in payloads and channel names are data, never fetched.
    let mut admin = v1(&srv.url("private")).await;
    let port = trap.trim_end_matches('/').rsplit(':').next().unwrap();
    let channel = format!("open.127.0.0.1:{port}");
    call(
        &mut admin,
        &format!(r#"{{"op":"create","channel":"{channel}"}}"#),
    )
    .await;
    let mut sub = v1(&srv.url("public")).await;
    subscribe(&mut sub, &channel).await;
    call(
        &mut admin,
        &format!(
            r#"{{"op":"publish","channel":"{channel}","data":{{"url":"{trap}","jku":"{trap}"}}}}"#
        ),
    )
    .await;
    assert_eq!(recv_json(&mut sub).await["data"]["url"], trap.as_str());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the gateway dialled the trap"
    );
    provider.stop().await;
}

#[tokio::test]
async fn several_issuers_at_once_each_with_its_own_keys() {
    let corp = Provider::start(0, "corp-key").await;
    let partner = Provider::start(0, "partner-key").await;
    let cfg = format!(
        "{}\n[issuer.partner]\nissuer = '{}'\naudiences = ['{}']\nscope_prefix = 'tslm:'\n",
        gateway_config(&corp.issuer, ""),
        partner.issuer,
        oidc::AUDIENCE
    );
    let srv = TestServer::start(&cfg).await;
    create(&srv, &["secure.a"]).await;
    for (p, what) in [(&corp, "corp"), (&partner, "partner")] {
        let token = p.token_for_channels(&["secure.a"]).await;
        let mut ws = v1(&srv.url("public")).await;
        let r = auth(&mut ws, &token).await;
        assert_eq!(r["ok"], true, "{what}: {r}");
        assert_eq!(subscribe(&mut ws, "secure.a").await["ok"], true, "{what}");
    }
    // A token signed by one provider's key but claiming the other's issuer is refused.
    let token = partner.token_for_channels(&["secure.a"]).await;
    let (header, mut payload) = oidc::decode_jwt(&token);
    payload["iss"] = corp.issuer.clone().into();
    let sig = token.rsplit('.').next().unwrap();
    let forged = format!(
        "{}.{}.{sig}",
        b64url(header.to_string().as_bytes()),
        b64url(payload.to_string().as_bytes())
    );
    let mut ws = v1(&srv.url("public")).await;
    assert_eq!(code(&auth(&mut ws, &forged).await), "unauthorized");
    corp.stop().await;
    partner.stop().await;
}

#[tokio::test]
async fn a_listener_that_requires_tokens_closes_connections_that_bring_none() {
    let provider = Provider::start(0, "k1").await;
    let cfg = format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         subscriber_auth = true\nauth_timeout_seconds = 1\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n\
         [issuer.corp]\nissuer = '{}'\naudiences = ['{}']\nchannels_claim = 'tslm_channels'\n",
        provider.issuer,
        oidc::AUDIENCE
    );
    let srv = TestServer::start(&cfg).await;
    create(&srv, &["open.x", "open.y"]).await;
    let mut anon = v1(&srv.url("public")).await;
    let r = subscribe(&mut anon, "open.x").await;
    assert_eq!(
        code(&r),
        "unauthorized",
        "every channel needs a token here: {r}"
    );
    assert_eq!(
        recv_close(&mut anon).await,
        Some((4002, "authentication required".into()))
    );
    let mut ws = v1(&srv.url("public")).await;
    let token = provider.token_for_channels(&["open.x"]).await;
    assert_eq!(auth(&mut ws, &token).await["ok"], true);
    assert_eq!(subscribe(&mut ws, "open.x").await["ok"], true);
    assert_eq!(code(&subscribe(&mut ws, "open.y").await), "forbidden");
    // Authenticated: the deadline no longer applies.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(call(&mut ws, r#"{"op":"ping"}"#).await["ok"], true);
    provider.stop().await;
}

#[tokio::test]
async fn a_refresh_that_grants_less_ends_the_subscriptions_it_no_longer_covers() {
    let provider = Provider::start(0, "k1").await;
    let srv = TestServer::start(&gateway_config(&provider.issuer, "")).await;
    create(&srv, &["secure.a", "secure.b", "open.x"]).await;
    let mut ws = v1(&srv.url("public")).await;
    let both = provider.token_for_channels(&["secure.a", "secure.b"]).await;
    auth(&mut ws, &both).await;
    for c in ["secure.a", "secure.b", "open.x"] {
        assert_eq!(subscribe(&mut ws, c).await["ok"], true, "{c}");
    }
    let only_b = provider.token_for_channels(&["secure.b"]).await;
    send(
        &mut ws,
        &format!(r#"{{"op":"refresh","token":"{only_b}"}}"#),
    )
    .await;
    // The `closed` event is queued as the refresh takes effect, so it comes first.
    assert_eq!(
        recv_json(&mut ws).await,
        serde_json::json!({"event":"closed","channel":"secure.a","reason":"unauthorized"})
    );
    let r = recv_json(&mut ws).await;
    assert_eq!(r["ok"], true, "{r}");
    let mut publisher = v1(&srv.url("private")).await;
    for c in ["secure.a", "secure.b", "open.x"] {
        call(
            &mut publisher,
            &format!(r#"{{"op":"publish","channel":"{c}","data":"{c}"}}"#),
        )
        .await;
    }
    assert_eq!(recv_json(&mut ws).await["channel"], "secure.b");
    assert_eq!(recv_json(&mut ws).await["channel"], "open.x");
    assert_silent(&mut ws).await;
    provider.stop().await;
}

#[tokio::test]
async fn a_publishers_listener_takes_no_access_token_and_says_nothing_of_the_provider() {
    let provider = Provider::start(0, "k1").await;
    let cfg = format!(
        "{}[publisher.svc]\ntoken_hashes = ['{}']\nchannels = ['*']\n",
        gateway_config(&provider.issuer, "").replace(
            "default_endpoint_permissions=['CreateChannel','NotifyChannel']\n",
            "default_endpoint_permissions=['CreateChannel','NotifyChannel']\npublisher_auth = true\nauth_timeout_seconds = 1\n",
        ),
        tslm_auth::token::hash_line("svc-token")
    );
    let srv = TestServer::start(&cfg).await;
    let token = provider.token_for_channels(&["*"]).await;
    let mut ws = v1(&srv.url("private")).await;
    let r = auth(&mut ws, &token).await;
    assert_eq!(code(&r), "unauthorized");
    assert_eq!(
        r["error"]["message"], "token refused",
        "no hint of an identity provider"
    );
    // Nor does a header carrying one get past the handshake.
    let mut req = srv.url("private").into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    let e = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    // And the deadline still closes the first connection.
    assert_eq!(
        recv_close(&mut ws).await,
        Some((4002, "authentication required".into()))
    );
    provider.stop().await;
}

#[tokio::test]
async fn a_real_providers_token_valid_for_ages_is_accepted_and_the_session_stays_up() {
    // The largest lifetime the provider takes (2^53 - 1 s): `exp` is about 9e15, far past
    // 9999-12-31, where the gateway clamps it.
    let provider = Provider::start_with_ttl(0, "k1", 9_007_199_254_740_991).await;
    let srv = TestServer::start(&gateway_config(&provider.issuer, "")).await;
    create(&srv, &["secure.prices.eu"]).await;
    let token = provider.token_for_channels(&["secure.*"]).await;
    let (_, payload) = oidc::decode_jwt(&token);
    assert!(
        payload["exp"].as_u64().unwrap() > 253_402_300_799,
        "{payload}"
    );

    let mut sub = v1(&srv.url("public")).await;
    let r = auth(&mut sub, &token).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["expires_at"], 253_402_300_799_u64, "{r}");
    assert_eq!(subscribe(&mut sub, "secure.prices.eu").await["ok"], true);
    let r = call(
        &mut sub,
        &format!(r#"{{"op":"refresh","token":"{token}"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let mut publisher = v1(&srv.url("private")).await;
    call(
        &mut publisher,
        r#"{"op":"publish","channel":"secure.prices.eu","data":7}"#,
    )
    .await;
    assert_eq!(recv_json(&mut sub).await["data"], 7);
    // And a second connection afterwards.
    let mut again = v1(&srv.url("public")).await;
    assert_eq!(auth(&mut again, &token).await["ok"], true);
    provider.stop().await;
}
