//! Tickets for the browser's `EventSource` (`POST /v1/tickets`, then `?ticket=` on `/v1/events`
//! and `/v1/poll`): issued only for an access token, bound to its grants and listener, expiring
//! within a minute (or with the token), refused when tampered with, and never logged.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use base64::Engine;
use common::http_create as create;
use common::*;
use serde_json::Value;

const SECRET: &[u8] = b"tickets-test-secret-of-32-bytes-or-more!";

fn config() -> String {
    format!(
        "{}[listener.second]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         [issuer.shared]\nissuer = 'tk'\naudiences = ['tslm']\nchannels_claim = 'c'\nsecret = '{}'\nleeway_seconds = 0\n\
         [channel.\"secure.*\"]\nsubscribers = 'authenticated'\n",
        two_listeners(""),
        base64::engine::general_purpose::STANDARD.encode(SECRET)
    )
}

fn token(channels: &[&str], lifetime: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"iss":"tk","aud":"tslm","sub":"alice","exp":now+lifetime,"iat":now,"c":channels}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

async fn ticket_for(addr: std::net::SocketAddr, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, _, body) = http(addr, "POST", "/v1/tickets", &headers, "").await;
    (status, body)
}

/// The status of a poll (no wait) with `query`.
async fn poll_status(
    addr: std::net::SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let (status, _, body) = http(
        addr,
        "GET",
        &format!("/v1/poll?{query}&wait=0"),
        headers,
        "",
    )
    .await;
    (status, body)
}

#[tokio::test]
async fn a_ticket_stands_for_its_token_on_its_listener_for_a_minute_at_most() {
    let s = TestServer::start(&config()).await;
    create(&s, "secure.1").await;
    create(&s, "secure.2").await;
    let public = s.addr("public");
    // A browser's preflight of the POST with its token.
    let (status, head, _) = http_raw(
        public,
        "OPTIONS /v1/tickets HTTP/1.1\r\nHost: x\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 204, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-methods: post"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-headers: authorization"),
        "{head}"
    );
    // Only for an access token.
    assert_eq!(ticket_for(public, None).await.0, 401);
    assert_eq!(ticket_for(public, Some("not-a-token")).await.0, 401);
    // Not on a listener that may not subscribe.
    assert_eq!(
        ticket_for(s.addr("private"), Some(&token(&["secure.*"], 600)))
            .await
            .0,
        403
    );
    let (status, body) = ticket_for(public, Some(&token(&["secure.1"], 600))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 60, "a minute at most");
    let t = body["ticket"].as_str().unwrap().to_owned();

    // Used for what its token grants (again and again, as EventSource reconnects).
    for _ in 0..2 {
        let (status, body) =
            poll_status(public, &format!("channel=secure.1&ticket={t}"), &[]).await;
        assert_eq!(status, 200, "{body}");
    }
    // An event stream opened with it (the browser's EventSource).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(public).await.unwrap();
        tcp.write_all(
            format!("GET /v1/events?channel=secure.1&ticket={t} HTTP/1.1\r\nHost: x\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("event: subscribed") {
            let mut buf = [0u8; 2048];
            let n = tokio::time::timeout(T, tcp.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{text}"
        );
    }
    // Beyond its grants: refused.
    let (status, body) = poll_status(public, &format!("channel=secure.2&ticket={t}"), &[]).await;
    assert_eq!(status, 403, "{body}");
    // On another listener: refused.
    let (status, body) = poll_status(
        s.addr("second"),
        &format!("channel=secure.1&ticket={t}"),
        &[],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // Tampered with: refused.
    let mut forged = t.clone().into_bytes();
    forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (status, _) = poll_status(public, &format!("channel=secure.1&ticket={forged}"), &[]).await;
    assert_eq!(status, 401);
    // With a token too: one or the other.
    let auth = format!("Bearer {}", token(&["secure.*"], 600));
    let (status, body) = poll_status(
        public,
        &format!("channel=secure.1&ticket={t}"),
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_ticket_expires_with_its_token() {
    let s = TestServer::start(&config()).await;
    create(&s, "secure.1").await;
    let (status, body) = ticket_for(s.addr("public"), Some(&token(&["secure.*"], 2))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_in"].as_u64().unwrap() <= 2, "{body}");
    let t = body["ticket"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = poll_status(
            s.addr("public"),
            &format!("channel=secure.1&ticket={t}"),
            &[],
        )
        .await;
        if status == 401 {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("expired"),
                "{body}"
            );
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "the ticket never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.shutdown().await;
}

/// The real binary at `debug` level: a stream opened with a ticket works, and neither the
/// ticket nor the token that bought it appears in the log.
#[test]
fn tickets_and_tokens_never_reach_the_log() {
    const BIN: &str = env!("CARGO_BIN_EXE_tslm");
    let dir = tempfile::tempdir().unwrap();
    let (file, ready, log) = (
        dir.path().join("tslm.toml"),
        dir.path().join("ready.json"),
        dir.path().join("log.txt"),
    );
    std::fs::write(&file, config()).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .arg("--ready-file")
        .arg(&ready)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    let doc: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break serde_json::from_str(&text).unwrap();
        }
        assert!(Instant::now() < deadline, "no ready file");
        std::thread::sleep(Duration::from_millis(20));
    };
    let addr = |name: &str| doc["listeners"][name][0].as_str().unwrap().to_owned();
    let exchange = |addr: &str, request: String| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let (public, private) = (addr("public"), addr("private"));
    let created = exchange(
        &private,
        format!(
            "PUT /v1/channels/secure.1 HTTP/1.1\r\nHost: {private}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let tok = token(&["secure.*"], 600);
    let issued = exchange(
        &public,
        format!(
            "POST /v1/tickets HTTP/1.1\r\nHost: {public}\r\nAuthorization: Bearer {tok}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    let body = issued.split("\r\n\r\n").nth(1).unwrap();
    let ticket = serde_json::from_str::<Value>(body).unwrap()["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    // A poll with the ticket, and one with a tampered ticket (refused, and a refusal is logged).
    let polled = exchange(
        &public,
        format!(
            "GET /v1/poll?channel=secure.1&wait=0&ticket={ticket} HTTP/1.1\r\nHost: {public}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(polled.starts_with("HTTP/1.1 200"), "{polled}");
    let bad = format!("{ticket}x");
    let refused = exchange(
        &public,
        format!(
            "GET /v1/poll?channel=secure.1&wait=0&ticket={bad} HTTP/1.1\r\nHost: {public}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("listening"), "the log was written: {text}");
    let (payload, _) = ticket.split_once('.').unwrap();
    assert!(!text.contains(payload), "the ticket is in the log");
    let (_, tok_tail) = tok.rsplit_once('.').unwrap();
    assert!(!text.contains(tok_tail), "the token is in the log");
}
