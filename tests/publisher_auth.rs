//! Boundary security for publishers and browsers: whitelisted Ed25519 keys (challenge
//! signatures), token hashes, signed HTTP requests, per-publisher channel patterns, the
//! authentication deadline, origin allowlists and hashed listener tokens. Real sockets.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tslm_auth::keys::{self, Challenge, SecretKey};
use tslm_auth::{http_sig, token};

struct Keys {
    orders: SecretKey,
    stranger: SecretKey,
    orders_token: String,
    prices_token: String,
}

fn keys() -> Keys {
    Keys {
        orders: SecretKey::generate(),
        stranger: SecretKey::generate(),
        orders_token: token::generate_token(),
        prices_token: token::generate_token(),
    }
}

fn config(k: &Keys) -> String {
    format!(
        "{}[listener.private2]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel','Subscribe']\npublisher_auth = true\n",
        base_config(k)
    )
}

fn base_config(k: &Keys) -> String {
    format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         allowed_origins = ['https://app.example.com', 'http://localhost:3000']\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n\
         publisher_auth = true\nauth_timeout_seconds = 1\n\
         [publisher.orders]\nkeys = ['{}']\ntoken_hashes = ['{}']\noperations = ['create', 'publish', 'delete']\nchannels = ['orders.*']\n\
         [publisher.prices]\ntoken_hashes = ['{}']\nchannels = ['prices']\n\
         [channel.prices]\nauto_create = true\n",
        k.orders.public_text(),
        token::hash_line(&k.orders_token),
        token::hash_line(&k.prices_token),
    )
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Asks for a challenge and signs it as `publisher` with `key`; returns the `auth` reply.
async fn sign_in(ws: &mut Ws, publisher: &str, key: &SecretKey) -> Value {
    let c = call(ws, r#"{"op":"challenge"}"#).await;
    let challenge = Challenge::from_base64(c["challenge"].as_str().unwrap()).unwrap();
    let sig = STANDARD.encode(key.sign(&keys::challenge_message(publisher, &challenge)));
    call(
        ws,
        &format!(r#"{{"op":"auth","publisher":"{publisher}","signature":"{sig}"}}"#),
    )
    .await
}

#[tokio::test]
async fn an_unauthenticated_publisher_connection_gets_only_the_auth_handshake_then_is_closed() {
    let k = keys();
    let srv = TestServer::start(&config(&k)).await;
    let mut ws = v1(&srv.url("private")).await;
    assert_eq!(call(&mut ws, r#"{"op":"ping","id":1}"#).await["ok"], true);
    for req in [
        r#"{"op":"create","channel":"orders.a"}"#,
        r#"{"op":"publish","channel":"orders.a","data":1}"#,
        r#"{"op":"delete","channel":"orders.a"}"#,
        r#"{"op":"channels"}"#,
    ] {
        let r = call(&mut ws, req).await;
        assert_eq!(code(&r), "unauthorized", "{req}: {r}");
    }
    assert!(srv.hub.stats().channels == 0, "nothing was created");
    // The deadline (1 s here) closes it.
    assert_eq!(
        recv_close(&mut ws).await,
        Some((4002, "authentication required".into()))
    );
}

#[tokio::test]
async fn a_key_signature_authenticates_and_nothing_can_be_replayed_or_forged() {
    let k = keys();
    let srv = TestServer::start(&config(&k)).await;
    let mut ws = v1(&srv.url("private")).await;
    let r = sign_in(&mut ws, "orders", &k.orders).await;
    assert_eq!(r, json!({"id":null,"ok":true,"publisher":"orders"}));
    assert_eq!(
        call(&mut ws, r#"{"op":"create","channel":"orders.eu"}"#).await["ok"],
        true
    );
    assert_eq!(
        call(
            &mut ws,
            r#"{"op":"publish","channel":"orders.eu","data":1}"#
        )
        .await["ok"],
        true
    );

    // A key not on the list, and an unknown publisher name.
    let mut other = v1(&srv.url("private")).await;
    assert_eq!(
        code(&sign_in(&mut other, "orders", &k.stranger).await),
        "unauthorized"
    );
    let mut other = v1(&srv.url("private")).await;
    assert_eq!(
        code(&sign_in(&mut other, "nobody", &k.orders).await),
        "unauthorized"
    );

    // A signature of one connection's challenge replayed on another: the challenge there is
    // different, and a challenge serves one attempt only.
    let mut first = v1(&srv.url("private")).await;
    let c = call(&mut first, r#"{"op":"challenge"}"#).await;
    let challenge = Challenge::from_base64(c["challenge"].as_str().unwrap()).unwrap();
    let sig = STANDARD.encode(
        k.orders
            .sign(&keys::challenge_message("orders", &challenge)),
    );
    let auth = format!(r#"{{"op":"auth","publisher":"orders","signature":"{sig}"}}"#);
    let mut second = v1(&srv.url("private")).await;
    let r = call(&mut second, &auth).await;
    assert_eq!(code(&r), "bad_request", "no challenge yet: {r}");
    call(&mut second, r#"{"op":"challenge"}"#).await;
    assert_eq!(code(&call(&mut second, &auth).await), "unauthorized");
    assert_eq!(call(&mut first, &auth).await["publisher"], "orders");
    // Used: the same signature again on the first connection is refused.
    let again = call(&mut first, &auth).await;
    assert_eq!(
        code(&again),
        "bad_request",
        "already authenticated: {again}"
    );

    // A flipped bit in a signature.
    let mut third = v1(&srv.url("private")).await;
    let c = call(&mut third, r#"{"op":"challenge"}"#).await;
    let challenge = Challenge::from_base64(c["challenge"].as_str().unwrap()).unwrap();
    let mut raw = k
        .orders
        .sign(&keys::challenge_message("orders", &challenge));
    raw[10] ^= 1;
    let r = call(
        &mut third,
        &format!(
            r#"{{"op":"auth","publisher":"orders","signature":"{}"}}"#,
            STANDARD.encode(raw)
        ),
    )
    .await;
    assert_eq!(code(&r), "unauthorized");
}

#[tokio::test]
async fn tokens_are_checked_by_hash_and_a_publisher_keeps_to_its_channels() {
    let k = keys();
    let srv = TestServer::start(&config(&k)).await;
    // In the auth op.
    let mut ws = v1(&srv.url("private")).await;
    let r = call(
        &mut ws,
        &format!(r#"{{"op":"auth","token":"{}"}}"#, k.orders_token),
    )
    .await;
    assert_eq!(r["publisher"], "orders");
    call(&mut ws, r#"{"op":"create","channel":"orders.1"}"#).await;
    let r = call(&mut ws, r#"{"op":"publish","channel":"prices","data":1}"#).await;
    assert_eq!(
        code(&r),
        "forbidden",
        "orders may not publish to prices: {r}"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("publisher `orders`")
    );

    // Off by one byte, every way.
    let t = &k.orders_token;
    let mut changed = t.clone().into_bytes();
    let last = changed.len() - 1;
    changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
    for bad in [
        String::from_utf8(changed).unwrap(),
        t[..t.len() - 1].to_owned(),
        format!("{t}x"),
    ] {
        let mut ws = v1(&srv.url("private")).await;
        let r = call(&mut ws, &format!(r#"{{"op":"auth","token":"{bad}"}}"#)).await;
        assert_eq!(code(&r), "unauthorized");
        // And in a header: refused before the upgrade.
        let mut req = srv.url("private").into_client_request().unwrap();
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {bad}")).unwrap(),
        );
        let e = tokio_tungstenite::connect_async(req).await.unwrap_err();
        assert!(e.to_string().contains("401"), "{e}");
    }

    // In a header: authenticated from the first frame.
    let mut req = srv.url("private").into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {}", k.prices_token)).unwrap(),
    );
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tslm.v1"),
    );
    let (mut prices, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let r = call(
        &mut prices,
        r#"{"op":"publish","channel":"prices","data":2}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "auto-created by its class: {r}");
    let r = call(&mut prices, r#"{"op":"create","channel":"prices"}"#).await;
    assert_eq!(code(&r), "forbidden", "prices may only publish: {r}");
    let r = call(
        &mut prices,
        r#"{"op":"publish","channel":"orders.1","data":2}"#,
    )
    .await;
    assert_eq!(code(&r), "forbidden");
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn http_publishing_authenticates_each_request() {
    let k = keys();
    let srv = TestServer::start(&config(&k)).await;
    let private = srv.addr("private");
    let bearer = format!("Bearer {}", k.orders_token);
    let (status, _, body) = http(private, "PUT", "/v1/channels/orders.h", &[], "").await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    let (status, _, _) = http(
        private,
        "PUT",
        "/v1/channels/orders.h",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(status, 201);

    let signed = |method: &str, path: &str, ts: i64, body: &str| {
        http_sig::sign_request(&k.orders, "orders", method, path, ts, body.as_bytes())
    };
    let path = "/v1/channels/orders.h/messages";
    let now = unix_now();
    let ts = now.to_string();
    let sig = signed("POST", path, now, "{\"n\":1}");
    let headers = |sig: &str, ts: &str| {
        vec![
            ("TSLM-Publisher", "orders".to_owned()),
            ("TSLM-Timestamp", ts.to_owned()),
            ("TSLM-Signature", sig.to_owned()),
        ]
    };
    let as_refs = |h: &Vec<(&'static str, String)>| -> Vec<(&'static str, String)> { h.clone() };
    let send = |h: Vec<(&'static str, String)>, path: String, body: &'static str| async move {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(private, "POST", &path, &h, body).await
    };
    let h = headers(&sig, &ts);
    let (status, _, body) = send(as_refs(&h), path.into(), "{\"n\":1}").await;
    assert_eq!((status, body["offset"].as_u64()), (200, Some(1)), "{body}");
    // The same request again: a replay.
    let (status, _, body) = send(as_refs(&h), path.into(), "{\"n\":1}").await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    // Another body, path or publisher under that signature.
    let sig2 = signed("POST", path, now + 1, "{\"n\":2}");
    let h2 = headers(&sig2, &(now + 1).to_string());
    let (status, _, _) = send(as_refs(&h2), path.into(), "{\"n\":3}").await;
    assert_eq!(status, 401, "body changed");
    let (status, _, _) = send(
        as_refs(&h2),
        "/v1/channels/orders.other/messages".into(),
        "{\"n\":2}",
    )
    .await;
    assert_eq!(status, 401, "path changed");
    // Stale and future timestamps.
    for ts in [now - 120, now + 120] {
        let sig = signed("POST", path, ts, "1");
        let (status, _, body) = send(headers(&sig, &ts.to_string()), path.into(), "1").await;
        assert_eq!((status, code(&body)), (401, "unauthorized"), "{ts}: {body}");
    }
    // A stranger's key under the orders name.
    let sig = http_sig::sign_request(&k.stranger, "orders", "POST", path, now, b"5");
    let (status, _, _) = send(headers(&sig, &ts), path.into(), "5").await;
    assert_eq!(status, 401);
    // The prices publisher may not publish to orders.*, whatever it signs with.
    let (status, _, body) = http(
        private,
        "POST",
        path,
        &[("Authorization", &format!("Bearer {}", k.prices_token))],
        "1",
    )
    .await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    // Another listener of the same gateway refuses the replay too.
    let (status, _, _) = http(
        srv.addr("private2"),
        "POST",
        path,
        &h.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
        "{\"n\":1}",
    )
    .await;
    assert_eq!(status, 401, "replayed on another listener");
    // Identical requests in the same second differ by a nonce in the query.
    for nonce in ["a", "b"] {
        let p = format!("{path}?nonce={nonce}");
        let sig = signed("POST", &p, now, "7");
        let (status, _, body) = send(headers(&sig, &ts), p.clone(), "7").await;
        assert_eq!(status, 200, "{nonce}: {body}");
    }
    assert_eq!(
        srv.hub
            .last_offset(&tslm_protocol::ChannelName::new("orders.h").unwrap())
            .unwrap()
            .0,
        3
    );
}

#[tokio::test]
async fn a_publishers_listener_serves_nobody_else_and_lists_only_a_publishers_channels() {
    let k = keys();
    let srv = TestServer::start(&config(&k)).await;
    // private2 also allows Subscribe: still nothing for anonymous connections.
    let mut admin = v1(&srv.url("private2")).await;
    sign_in(&mut admin, "orders", &k.orders).await;
    for c in ["orders.a", "orders.b"] {
        call(&mut admin, &format!(r#"{{"op":"create","channel":"{c}"}}"#)).await;
    }
    let mut prices = v1(&srv.url("private2")).await;
    call(
        &mut prices,
        &format!(r#"{{"op":"auth","token":"{}"}}"#, k.prices_token),
    )
    .await;
    call(
        &mut prices,
        r#"{"op":"publish","channel":"prices","data":1}"#,
    )
    .await;
    let mut anon = v1(&srv.url("private2")).await;
    let r = call(&mut anon, r#"{"op":"subscribe","channel":"orders.a"}"#).await;
    assert_eq!(code(&r), "unauthorized", "{r}");
    // Each publisher lists only what its patterns cover.
    let names = |v: &Value| -> Vec<String> {
        v["channels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["channel"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = call(&mut admin, r#"{"op":"channels"}"#).await;
    assert_eq!(names(&r), ["orders.a", "orders.b"]);
    let r = call(&mut prices, r#"{"op":"channels"}"#).await;
    assert_eq!(names(&r), ["prices"]);
    // Original-protocol clients without credentials get their protocol's refusal.
    let mut old = legacy(&srv.url("private2")).await;
    send(&mut old, r#"{"NotifyChannel":["orders.a",{"Text":"x"}]}"#).await;
    let reply = recv(&mut old).await;
    assert!(reply.contains("Permission denied"), "{reply}");
}

/// Offers `origin` on a WebSocket handshake to `url`; returns the HTTP status.
async fn handshake_status(url: &str, origin: Option<&str>) -> u16 {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(o).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, resp)) => {
            let _ = ws.close(None).await;
            let _ = ws.next().await;
            resp.status().as_u16()
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn browsers_connect_only_from_allowed_origins() {
    let k = keys();
    let srv = TestServer::start(&config(&k)).await;
    let url = srv.url("public");
    for (origin, status) in [
        (Some("https://app.example.com"), 101),
        (Some("https://APP.example.com:443"), 101),
        (Some("http://localhost:3000"), 101),
        (None, 101),
        (Some("https://evil.example.com"), 403),
        (Some("null"), 403),
        (Some("https://app.example.com.evil.net"), 403),
        (Some("https://app-example.com"), 403),
        (Some("http://app.example.com"), 403),
        (Some("https://app.example.com:8443"), 403),
        (Some("http://localhost:3001"), 403),
    ] {
        assert_eq!(handshake_status(&url, origin).await, status, "{origin:?}");
    }
    // The private listener has no allowlist: it may publish, so it serves no browser origin.
    assert_eq!(
        handshake_status(&srv.url("private"), Some("https://evil.example.com")).await,
        403
    );
    assert_eq!(handshake_status(&srv.url("private"), None).await, 101);
}

#[tokio::test]
async fn listener_tokens_may_be_given_as_hashes() {
    let cfg = two_listeners(&format!(
        "auth_tokens = ['{}', 'clear-token']",
        token::hash_line("hashed-secret")
    ));
    let srv = TestServer::start(&cfg).await;
    let private = srv.addr("private");
    for (tok, status) in [
        ("hashed-secret", 201),
        ("clear-token", 200),
        ("hashed-secreT", 401),
        // The hash itself is not the token.
        (&*token::hash_line("hashed-secret"), 401),
    ] {
        let (s, _, _) = http(
            private,
            "PUT",
            "/v1/channels/t",
            &[("Authorization", &format!("Bearer {tok}"))],
            "",
        )
        .await;
        assert_eq!(s, status, "{tok}");
    }
}

#[tokio::test]
async fn guessing_credentials_costs_the_connection() {
    let k = keys();
    let cfg = config(&k).replace(
        "publisher_auth = true\nauth_timeout_seconds = 1\n",
        "publisher_auth = true\nauth_timeout_seconds = 10\nmax_rejected_commands_per_second = 2\n",
    );
    let srv = TestServer::start(&cfg).await;
    let mut ws = v1(&srv.url("private")).await;
    for i in 0..3 {
        send(&mut ws, &format!(r#"{{"op":"auth","token":"guess-{i}"}}"#)).await;
        let r = recv_json(&mut ws).await;
        assert_eq!(code(&r), "unauthorized", "{r}");
    }
    assert_eq!(
        recv_close(&mut ws).await,
        Some((1008, "too many failed authentications".into()))
    );
}
