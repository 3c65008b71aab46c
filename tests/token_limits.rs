//! Access tokens at the edges of what they can say, over real sockets: `exp`, `nbf` and `iat` at
//! the extremes of their number types (the gateway answers and stays up), and discovery documents
//! whose `jwks_uri` tries to send the gateway's key fetches to another origin (it never connects).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const SECRET: &[u8] = b"token-limits-test-secret-of-32-bytes-or-more";
const ISSUER: &str = "shared-issuer";
const AUDIENCE: &str = "tslm-gateway";

/// A gateway with a shared-secret issuer (leeway 30 s) whose tokens `secure.*` channels need.
fn gateway_config() -> String {
    format!(
        "{}\n[issuer.shared]\nissuer = '{ISSUER}'\naudiences = ['{AUDIENCE}']\n\
         channels_claim = 'tslm_channels'\nsecret = '{}'\nleeway_seconds = 30\n\
         [channel.\"secure.*\"]\nsubscribers = 'authenticated'\n",
        two_listeners(NO_IP_LIMITS),
        STANDARD.encode(SECRET),
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `alice` granting `secure.*`, with `extra` claims set over the defaults.
fn token(extra: &[(&str, Value)]) -> String {
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
        "exp": now() + 600, "iat": now(), "tslm_channels": ["secure.*"],
    });
    for (k, v) in extra {
        claims[*k] = v.clone();
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn error(v: &Value) -> (&str, &str) {
    (
        v["error"]["code"].as_str().unwrap_or(""),
        v["error"]["message"].as_str().unwrap_or(""),
    )
}

async fn op(ws: &mut Ws, op: &str, token: &str) -> Value {
    call(ws, &format!(r#"{{"op":"{op}","token":"{token}"}}"#)).await
}

/// The connection still works: a subscription that a token grants, and a message through it.
async fn still_serves(srv: &TestServer, ws: &mut Ws, channel: &str) {
    let mut publisher = v1(&srv.url("private")).await;
    let r = call(
        &mut publisher,
        &format!(r#"{{"op":"create","channel":"{channel}"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(
        ws,
        &format!(r#"{{"op":"subscribe","channel":"{channel}"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(
        &mut publisher,
        &format!(r#"{{"op":"publish","channel":"{channel}","data":"still here"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(recv_json(ws).await["data"], "still here");
}

#[tokio::test]
async fn tokens_expiring_at_the_end_of_time_are_accepted_and_the_gateway_stays_up() {
    let srv = TestServer::start(&gateway_config()).await;
    let far = [
        json!(i64::MAX),
        json!(i64::MAX - 1),
        json!(u64::MAX),
        json!(1e19),
    ];
    for (n, exp) in far.iter().enumerate() {
        let extreme = token(&[("exp", exp.clone())]);
        // `auth`, then the session's expiry timer is armed on the next loop turn.
        let mut ws = v1(&srv.url("public")).await;
        let r = op(&mut ws, "auth", &extreme).await;
        assert_eq!(r["ok"], true, "exp {exp}: {r}");
        // Clamped to 9999-12-31T23:59:59Z (the reply may add the 30 s leeway).
        let at = r["expires_at"].as_u64().unwrap();
        assert!(
            (253_402_300_799..=253_402_300_799 + 30).contains(&at),
            "exp {exp}: {r}"
        );
        still_serves(&srv, &mut ws, &format!("secure.a{n}")).await;

        // `refresh` from an ordinary token to the extreme one, and from the extreme one again.
        let mut ws = v1(&srv.url("public")).await;
        assert_eq!(op(&mut ws, "auth", &token(&[])).await["ok"], true);
        for _ in 0..2 {
            let r = op(&mut ws, "refresh", &extreme).await;
            assert_eq!(r["ok"], true, "refresh, exp {exp}: {r}");
        }
        still_serves(&srv, &mut ws, &format!("secure.r{n}")).await;

        // In the handshake's `Authorization` header.
        let mut req = srv.url("public").into_client_request().unwrap();
        let headers = req.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("tslm.v1"),
        );
        headers.insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {extreme}")).unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        still_serves(&srv, &mut ws, &format!("secure.h{n}")).await;
    }

    // A fresh connection afterwards, with an ordinary token.
    let mut ws = v1(&srv.url("public")).await;
    assert_eq!(op(&mut ws, "auth", &token(&[])).await["ok"], true);
    still_serves(&srv, &mut ws, "secure.after").await;
    srv.shutdown().await;
}

#[tokio::test]
async fn extreme_nbf_iat_and_exp_are_answered_with_documented_reasons() {
    let srv = TestServer::start(&gateway_config()).await;
    let cases: [(&str, Value, Result<(), &str>); 11] = [
        ("nbf", json!(i64::MAX), Err("access token is not yet valid")),
        ("nbf", json!(u64::MAX), Err("access token is not yet valid")),
        (
            "nbf",
            json!(-1),
            Err("access token claim nbf is missing or invalid"),
        ),
        (
            "nbf",
            json!(i64::MIN),
            Err("access token claim nbf is missing or invalid"),
        ),
        (
            "nbf",
            json!(1e300),
            Err("access token claim nbf is missing or invalid"),
        ),
        (
            "exp",
            json!(-1),
            Err("access token claim exp is missing or invalid"),
        ),
        (
            "exp",
            json!(i64::MIN),
            Err("access token claim exp is missing or invalid"),
        ),
        ("exp", json!(0), Err("access token has expired")),
        ("iat", json!(i64::MAX), Ok(())),
        ("iat", json!(u64::MAX), Ok(())),
        ("iat", json!(i64::MIN), Ok(())),
    ];
    // `refresh` on one subscriber, `auth` on a fresh connection each time.
    let mut ws = v1(&srv.url("public")).await;
    assert_eq!(op(&mut ws, "auth", &token(&[])).await["ok"], true);
    for (claim, value, expected) in &cases {
        let t = token(&[(claim, value.clone())]);
        let mut fresh = v1(&srv.url("public")).await;
        for (what, ws) in [("refresh", &mut ws), ("auth", &mut fresh)] {
            let r = op(ws, what, &t).await;
            match expected {
                Ok(()) => assert_eq!(r["ok"], true, "{what} {claim} {value}: {r}"),
                Err(reason) => assert_eq!(
                    error(&r),
                    ("unauthorized", &*format!("access token refused: {reason}")),
                    "{what} {claim} {value}: {r}"
                ),
            }
        }
    }
    still_serves(&srv, &mut ws, "secure.nbf").await;
    let mut ws = v1(&srv.url("public")).await;
    assert_eq!(op(&mut ws, "auth", &token(&[])).await["ok"], true);
    still_serves(&srv, &mut ws, "secure.after").await;
    srv.shutdown().await;
}

/// A listener that counts the connections it accepts.
async fn canary() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, count)
}

/// A one-route HTTP server: `GET /.well-known/openid-configuration` answers the document in
/// `doc`; everything else 404. Returns its port and the number of discovery requests.
async fn discovery_server(doc: Arc<Mutex<Value>>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (doc, hits) = (Arc::clone(&doc), Arc::clone(&h));
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let discovery = head.starts_with(b"GET /.well-known/openid-configuration ");
                let (status, body) = if discovery {
                    hits.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", doc.lock().unwrap().to_string())
                } else {
                    ("404 Not Found", "{}".to_owned())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (port, hits)
}

#[tokio::test]
async fn a_discovery_document_cannot_send_the_gateways_key_fetches_elsewhere() {
    let (canary_port, reached) = canary().await;
    let doc = Arc::new(Mutex::new(Value::Null));
    let (port, discoveries) = discovery_server(Arc::clone(&doc)).await;
    let (own, c) = (format!("127.0.0.1:{port}"), canary_port);
    let issuer = format!("http://{own}");
    // Each reads as the issuer's own host to a comparison of the text after the first `://`;
    // each is the canary to the HTTP client.
    let hostile = [
        format!(r"http:\\127.0.0.1:{c}\x://{own}/keys"),
        format!("http:/127.0.0.1:{c}/x://{own}/keys"),
        format!("http:/\t/127.0.0.1:{c}/x://{own}/keys"),
        format!(r"http:\\[::ffff:127.0.0.1]:{c}\x://{own}/keys"),
    ];
    *doc.lock().unwrap() = json!({"issuer": issuer, "jwks_uri": hostile[0]});
    let srv = TestServer::start(&format!(
        "{}\n[issuer.corp]\nissuer = '{issuer}'\naudiences = ['{AUDIENCE}']\n\
         channels_claim = 'tslm_channels'\nrefresh_cooldown_seconds = 1\n",
        two_listeners(""),
    ))
    .await;
    // Unsigned tokens naming keys nobody has: each asks for a key set refresh (once per
    // cooldown); a signature is never checked without a key.
    let unknown = |n: usize| {
        let header = json!({"alg": "RS256", "kid": format!("unknown-{n}")});
        let claims = json!({"iss": issuer, "aud": AUDIENCE, "exp": now() + 600});
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", b64(&header), b64(&claims))
    };
    let mut ws = v1(&srv.url("public")).await;
    for (round, jwks_uri) in hostile.iter().enumerate() {
        *doc.lock().unwrap() = json!({"issuer": issuer, "jwks_uri": jwks_uri});
        let before = discoveries.load(Ordering::SeqCst);
        // Past the cooldown of the previous round's fetch.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for n in 0..3 {
            let r = op(&mut ws, "auth", &unknown(round * 10 + n)).await;
            assert_eq!(
                error(&r),
                (
                    "unauthorized",
                    "access token refused: access token issuer keys are unavailable"
                ),
                "{jwks_uri:?}: {r}"
            );
        }
        assert!(
            discoveries.load(Ordering::SeqCst) > before,
            "{jwks_uri:?}: no fetch was attempted"
        );
    }
    // A barrier: one connection of ours reaches the canary and is counted; nothing else did.
    tokio::net::TcpStream::connect(("127.0.0.1", canary_port))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + T;
    while reached.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        1,
        "the gateway connected where a discovery document said"
    );
    srv.shutdown().await;
}
