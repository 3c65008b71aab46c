//! Abuse limits: per-address connections and handshake rate, subscriptions per connection,
//! sustained command abuse, control-frame floods.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// A v1 connection from source address `from` (any 127.0.0.0/8 address works on loopback).
async fn v1_from(from: &str, to: SocketAddr) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let stream = sock.connect(to).await.unwrap();
    let mut req = format!("ws://{to}/").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tslm.v1"),
    );
    let (ws, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Ok(ws)
}

fn http_status(e: tokio_tungstenite::tungstenite::Error) -> u16 {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => resp.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test]
async fn connections_per_address_are_capped_and_other_addresses_unaffected() {
    let srv = TestServer::start(&two_listeners("max_connections_per_ip = 3")).await;
    let to = srv.addr("public");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(v1_from("127.0.0.1", to).await.unwrap());
    }
    assert_eq!(
        http_status(v1_from("127.0.0.1", to).await.unwrap_err()),
        429
    );
    let mut other = v1_from("127.0.0.2", to).await.unwrap();
    assert_eq!(
        call(&mut other, r#"{"op":"ping","id":1}"#).await["ok"],
        true
    );
    assert_eq!(srv.stats().ip_refusals, 1);
    drop(held.pop());
    srv.wait_for("slot freed", |s| s.stats().sessions == 3)
        .await;
    assert!(v1_from("127.0.0.1", to).await.is_ok());
}

#[tokio::test]
async fn the_handshake_rate_per_address_is_limited() {
    let srv = TestServer::start(&two_listeners("handshakes_per_ip_per_second = 5")).await;
    let to = srv.addr("public");
    let mut refused = 0;
    let mut ok = Vec::new();
    for _ in 0..10 {
        match v1_from("127.0.0.3", to).await {
            Ok(ws) => ok.push(ws),
            Err(e) => {
                assert_eq!(http_status(e), 429);
                refused += 1;
            }
        }
    }
    assert!(
        ok.len() <= 6 && refused >= 4,
        "{} admitted, {refused} refused",
        ok.len()
    );
    // Another address is not affected, and the budget refills.
    assert!(v1_from("127.0.0.4", to).await.is_ok());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(v1_from("127.0.0.3", to).await.is_ok());
}

#[tokio::test]
async fn subscriptions_per_connection_are_capped_in_both_dialects() {
    let srv = TestServer::start(&two_listeners("max_subscriptions_per_connection = 2")).await;
    let mut p = v1(&srv.url("private")).await;
    for c in ["a", "b", "c"] {
        call(&mut p, &format!(r#"{{"op":"create","channel":"{c}"}}"#)).await;
    }
    let mut s = v1(&srv.url("public")).await;
    call(&mut s, r#"{"op":"subscribe","channel":"a"}"#).await;
    call(&mut s, r#"{"op":"subscribe","channel":"b"}"#).await;
    assert_eq!(
        call(&mut s, r#"{"op":"subscribe","channel":"a"}"#).await["ok"],
        true,
        "re-subscribing is free"
    );
    let r = call(&mut s, r#"{"op":"subscribe","id":9,"channel":"c"}"#).await;
    assert_eq!(
        (r["id"].as_i64(), r["error"]["code"].as_str()),
        (Some(9), Some("limit_exceeded"))
    );
    call(&mut s, r#"{"op":"unsubscribe","channel":"a"}"#).await;
    assert_eq!(
        call(&mut s, r#"{"op":"subscribe","channel":"c"}"#).await["ok"],
        true
    );

    let mut old = legacy(&srv.url("public")).await;
    for c in ["a", "b"] {
        send(&mut old, &format!(r#"{{"Subscribe":"{c}"}}"#)).await;
        recv(&mut old).await;
    }
    send(&mut old, r#"{"Subscribe":"c"}"#).await;
    assert_eq!(
        recv(&mut old).await,
        r#"{"Error":"Subscription limit exceeded"}"#
    );
}

#[tokio::test]
async fn sustained_command_abuse_is_closed_and_costs_bounded_output() {
    let srv = TestServer::start(&two_listeners(
        "rate_limit_per_second = 5\nmax_rejected_commands_per_second = 3",
    ))
    .await;
    let ws = v1(&srv.url("public")).await;
    let (mut tx, mut rx) = ws.split();
    let flood = tokio::spawn(async move {
        for i in 0..10_000 {
            if tx
                .send(Message::Text(format!(r#"{{"op":"ping","id":{i}}}"#).into()))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let (mut replies, mut limited) = (0, 0);
    let close = loop {
        match tokio::time::timeout(T, rx.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Text(t))) => {
                replies += 1;
                if t.contains("rate_limited") {
                    limited += 1;
                }
            }
            Some(Ok(Message::Close(f))) => {
                break f.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    flood.abort();
    assert_eq!(close, Some((1008, "rate limit exceeded".into())));
    // 5 served, then at most 4 rejections (the 4th goes over the budget of 3) before the close.
    assert!(
        replies <= 9 && limited <= 4,
        "{replies} replies, {limited} rate_limited"
    );
    assert_eq!(srv.stats().policy_closes, 1);
}

#[tokio::test]
async fn a_ping_flood_is_closed() {
    let srv = TestServer::start(&two_listeners("max_control_frames_per_second = 5")).await;
    let mut ws = v1(&srv.url("public")).await;
    for _ in 0..50 {
        if ws.send(Message::Ping(vec![0; 100].into())).await.is_err() {
            break;
        }
    }
    assert_eq!(
        recv_close(&mut ws).await,
        Some((1008, "too many control frames".into()))
    );
}

#[tokio::test]
async fn a_subscriber_only_listener_rate_limits_by_default() {
    let srv = TestServer::default().await;
    let mut s = v1(&srv.url("public")).await;
    let mut p = v1(&srv.url("private")).await;
    // 150 commands at once: the public listener's default (100/s) refuses some, the private
    // listener (unlimited by default) none.
    for i in 0..150 {
        send(&mut s, &format!(r#"{{"op":"ping","id":{i}}}"#)).await;
        send(&mut p, &format!(r#"{{"op":"ping","id":{i}}}"#)).await;
    }
    let mut limited = 0;
    for _ in 0..150 {
        if recv_json(&mut p).await["ok"] != true {
            panic!("the private listener is not rate limited by default");
        }
    }
    loop {
        match tokio::time::timeout(T, s.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.contains("rate_limited") => limited += 1,
            Some(Ok(Message::Text(_))) => {}
            _ => break,
        }
        if limited > 0 {
            break;
        }
    }
    assert!(limited > 0);
}
