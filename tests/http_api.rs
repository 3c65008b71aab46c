//! The HTTP publishing API over real sockets.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn create_and_publish_over_http_reach_websocket_subscribers() {
    let srv = TestServer::default().await;
    let private = srv.addr("private");
    let (status, head, mut body) = http(private, "PUT", "/v1/channels/orders", &[], "").await;
    let epoch = take_epoch(&mut body);
    assert_eq!((status, body), (201, json!({"ok":true,"created":true})));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    let (status, _, mut body) = http(private, "PUT", "/v1/channels/orders", &[], "").await;
    assert_eq!(take_epoch(&mut body), epoch, "creation is idempotent");
    assert_eq!((status, body), (200, json!({"ok":true,"created":false})));

    let mut v1_sub = v1(&srv.url("public")).await;
    let mut old_sub = legacy(&srv.url("public")).await;
    call(&mut v1_sub, r#"{"op":"subscribe","channel":"orders"}"#).await;
    send(&mut old_sub, r#"{"Subscribe":"orders"}"#).await;
    recv(&mut old_sub).await;

    let (status, _, mut body) = http(
        private,
        "POST",
        "/v1/channels/orders/messages",
        &[("Content-Type", "application/json")],
        r#" {"qty": 3} "#,
    )
    .await;
    assert_eq!(take_epoch(&mut body), epoch);
    assert_eq!((status, body), (200, json!({"ok":true,"offset":1})));
    let (status, _, mut body) = http(
        private,
        "POST",
        "/v1/channels/orders/messages",
        &[],
        r#""text""#,
    )
    .await;
    assert_eq!(take_epoch(&mut body), epoch);
    assert_eq!((status, body), (200, json!({"ok":true,"offset":2})));
    assert_eq!(
        recv(&mut v1_sub).await,
        r#"{"event":"message","channel":"orders","offset":1,"data":{"qty": 3}}"#
    );
    assert_eq!(
        recv(&mut old_sub).await,
        r#"{"ChannelMessage":["orders",{"Json":{"qty": 3}}]}"#
    );
    assert_eq!(
        recv(&mut old_sub).await,
        r#"{"ChannelMessage":["orders",{"Text":"text"}]}"#
    );
}

/// (listener, method, path, headers, body, expected status, expected code)
type Case<'a> = (
    std::net::SocketAddr,
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    String,
    u16,
    &'a str,
);

fn code(v: &serde_json::Value) -> &str {
    assert_eq!(v["ok"], false, "{v}");
    v["error"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn every_http_error() {
    let srv = TestServer::start(&two_listeners(
        "max_message_size = 1024\nmax_publish_bytes = 100",
    ))
    .await;
    let (private, public) = (srv.addr("private"), srv.addr("public"));
    http(private, "PUT", "/v1/channels/c", &[], "").await;

    let cases: Vec<Case> = vec![
        (
            public,
            "PUT",
            "/v1/channels/c".into(),
            vec![],
            String::new(),
            403,
            "forbidden",
        ),
        (
            public,
            "POST",
            "/v1/channels/c/messages".into(),
            vec![],
            "1".into(),
            403,
            "forbidden",
        ),
        (
            private,
            "PUT",
            "/v1/channels/bad%20name".into(),
            vec![],
            String::new(),
            400,
            "bad_request",
        ),
        (
            private,
            "PUT",
            "/v1/channels/..".into(),
            vec![],
            String::new(),
            400,
            "bad_request",
        ),
        (
            private,
            "POST",
            "/v1/channels/missing/messages".into(),
            vec![],
            "1".into(),
            404,
            "not_found",
        ),
        (
            private,
            "POST",
            "/v1/channels/c/messages".into(),
            vec![],
            "{not json".into(),
            400,
            "bad_request",
        ),
        (
            private,
            "POST",
            "/v1/channels/c/messages".into(),
            vec![],
            "1 2".into(),
            400,
            "bad_request",
        ),
        (
            private,
            "POST",
            "/v1/channels/c/messages".into(),
            vec![],
            String::new(),
            400,
            "bad_request",
        ),
        (
            private,
            "POST",
            "/v1/channels/c/messages".into(),
            vec![("Content-Type", "text/plain")],
            "1".into(),
            400,
            "bad_request",
        ),
        (
            private,
            "POST",
            "/v1/channels/c/messages".into(),
            vec![],
            format!("\"{}\"", "x".repeat(200)),
            413,
            "too_large",
        ),
        (
            private,
            "POST",
            "/v1/channels/c/messages".into(),
            vec![],
            format!("\"{}\"", "x".repeat(2000)),
            413,
            "too_large",
        ),
        (
            private,
            "PATCH",
            "/v1/channels/c/messages".into(),
            vec![],
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            private,
            "POST",
            "/v1/channels/c".into(),
            vec![],
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            private,
            "GET",
            "/v1/nothing-here".into(),
            vec![],
            String::new(),
            404,
            "not_found",
        ),
        (
            public,
            "GET",
            "/".into(),
            vec![],
            String::new(),
            426,
            "upgrade_required",
        ),
        (
            public,
            "POST",
            "/anything".into(),
            vec![],
            "x".into(),
            426,
            "upgrade_required",
        ),
    ];
    for (addr, method, path, headers, body, want_status, want_code) in cases {
        let (status, _, json) = http(addr, method, &path, &headers, &body).await;
        assert_eq!(
            (status, code(&json)),
            (want_status, want_code),
            "{method} {path} {body:.20}"
        );
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (_, head, _) = http(public, "GET", "/", &[], "").await;
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "426 names the protocol: {head}"
    );
    // Nothing was published by any of that.
    assert_eq!(srv.hub.last_offset(&"c".parse().unwrap()).unwrap().0, 0);
}

#[tokio::test]
async fn chunked_bodies_over_the_limit_are_refused() {
    let srv = TestServer::start(&two_listeners("max_message_size = 1024")).await;
    let private = srv.addr("private");
    http(private, "PUT", "/v1/channels/c", &[], "").await;
    let chunk = "x".repeat(1500);
    let req = format!(
        "POST /v1/channels/c/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n\"{chunk}\"\r\n0\r\n\r\n",
        chunk.len() + 2
    );
    let (status, _, body) = http_raw(private, &req).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too_large"));
}

#[tokio::test]
async fn tokens_guard_http_and_websocket_when_configured() {
    let srv = TestServer::start(&two_listeners(
        "auth_tokens = ['s3cret-token-1', 'other-token-2']",
    ))
    .await;
    let private = srv.addr("private");
    let (status, head, body) = http(private, "PUT", "/v1/channels/c", &[], "").await;
    assert_eq!((status, code(&body)), (401, "unauthorized"));
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    let (status, _, _) = http(
        private,
        "PUT",
        "/v1/channels/c",
        &[("Authorization", "Bearer s3cret-token-")],
        "",
    )
    .await;
    assert_eq!(status, 401, "a token off by one byte is refused");
    let (status, _, _) = http(
        private,
        "PUT",
        "/v1/channels/c",
        &[("Authorization", "Bearer s3cret-token-1")],
        "",
    )
    .await;
    assert_eq!(status, 201);
    let (status, _, _) = http(
        private,
        "POST",
        "/v1/channels/c/messages",
        &[("Authorization", "Bearer other-token-2")],
        "1",
    )
    .await;
    assert_eq!(status, 200);

    // WebSocket: no token -> 401 before the upgrade; a token as subprotocol (browsers) or header works.
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let upgrade = |extra: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{extra}\r\n"
        )
    };
    let (status, _, _) = http_raw(srv.addr("public"), &upgrade("Connection: close\r\n")).await;
    assert_eq!(status, 401);
    let mut s = tokio::net::TcpStream::connect(srv.addr("public"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        upgrade("Sec-WebSocket-Protocol: tslm.v1, s3cret-token-1\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-protocol: tslm.v1"),
        "the token is never echoed: {head}"
    );
    assert!(!head.contains("s3cret"), "{head}");

    // A browser offering only the token gets it echoed (browsers fail the handshake otherwise),
    // and is served the original protocol.
    let mut s = tokio::net::TcpStream::connect(srv.addr("public"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        upgrade("Sec-WebSocket-Protocol: s3cret-token-1\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf)
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-protocol: s3cret-token-1"),
        "{head}"
    );
    // The bearer scheme is case-insensitive; a wrong token as a subprotocol is refused.
    let (status, _, _) = http(
        private,
        "PUT",
        "/v1/channels/d",
        &[("Authorization", "BEARER s3cret-token-1")],
        "",
    )
    .await;
    assert_eq!(status, 201);
    let (status, _, _) = http_raw(
        srv.addr("public"),
        &upgrade("Sec-WebSocket-Protocol: tslm.v1, s3cret-token-2\r\nConnection: close\r\n"),
    )
    .await;
    assert_eq!(status, 401);
}
