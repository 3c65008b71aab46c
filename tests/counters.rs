//! The server's counters of refused authentications (by kind) and of closes (by code), read
//! through the stats handle after the refusals and closes that should move them.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;

const ISSUER: &str = "[issuer.corp]\nissuer='corp'\naudiences=['t']\nchannels_claim='c'\n\
     secret='c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NQ=='\n";

fn config() -> String {
    format!(
        "[listener.open]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         [listener.guarded]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         auth_tokens = ['listener-token']\n\
         [listener.subs]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         subscriber_auth = true\nauth_timeout_seconds = 1\n{ISSUER}"
    )
}

#[tokio::test]
async fn refused_authentications_are_counted_by_kind() {
    let srv = TestServer::start(&config()).await;
    let before = srv.stats();
    assert_eq!(
        (
            before.auth_refusals_http,
            before.auth_refusals_handshake,
            before.auth_refusals_command
        ),
        (0, 0, 0)
    );
    // An API request without the listener's token.
    let (status, _, _) = http(srv.addr("guarded"), "GET", "/v1/channels", &[], "").await;
    assert_eq!(status, 401);
    // A WebSocket handshake without it.
    let to = srv.addr("guarded");
    let (status, _, _) = http_raw(
        to,
        &format!(
            "GET / HTTP/1.1\r\nHost: {to}\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 401);
    // An `auth` command with a token nobody issued.
    let mut ws = v1(&srv.url("open")).await;
    let r = call(
        &mut ws,
        r#"{"op":"auth","token":"nobody-issued-this","id":1}"#,
    )
    .await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    let s = srv.stats();
    assert_eq!(
        (
            s.auth_refusals_http,
            s.auth_refusals_handshake,
            s.auth_refusals_command,
            s.auth_budget_refusals
        ),
        (1, 1, 1, 0)
    );
}

#[tokio::test]
async fn closes_are_counted_by_code() {
    let srv = TestServer::start(&config()).await;
    let mut ws = v1(&srv.url("subs")).await;
    let close = tokio::time::timeout(Duration::from_secs(5), recv_close(&mut ws))
        .await
        .expect("closed by the auth deadline");
    assert_eq!(close, Some((4002, "authentication required".into())));
    let s = srv.stats();
    assert_eq!(s.auth_timeout_closes, 1);
    assert_eq!(
        (s.slow_consumer_closes, s.policy_closes, s.going_away_closes),
        (0, 0, 0)
    );
}
