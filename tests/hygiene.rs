//! Connection hygiene: size limits, timeouts, pings, connection limits, bad handshakes, shutdown.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn an_oversized_message_closes_with_1009_in_both_dialects() {
    let srv = TestServer::start(&two_listeners("max_message_size = 4096")).await;
    let mut a = v1(&srv.url("private")).await;
    send(
        &mut a,
        &format!(r#"{{"op":"ping","id":"{}"}}"#, "x".repeat(5000)),
    )
    .await;
    assert_eq!(
        recv_close(&mut a).await,
        Some((1009, "message too big".into()))
    );

    let mut b = legacy(&srv.url("private")).await;
    send(&mut b, &"y".repeat(70_000)).await;
    assert_eq!(
        recv_close(&mut b).await,
        Some((1009, "message too big".into()))
    );
    // Other connections are unaffected.
    let mut c = v1(&srv.url("private")).await;
    assert_eq!(call(&mut c, r#"{"op":"ping","id":1}"#).await["ok"], true);
    srv.wait_for("counted", |s| s.stats().too_big_closes == 2)
        .await;
}

#[tokio::test]
async fn a_client_dribbling_headers_is_closed_at_the_handshake_deadline() {
    let srv = TestServer::start(&two_listeners("handshake_timeout_seconds = 1")).await;
    let mut slow = TcpStream::connect(srv.addr("public")).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A normal client connects meanwhile.
    let mut ok = v1(&srv.url("public")).await;
    assert_eq!(call(&mut ok, r#"{"op":"ping","id":1}"#).await["ok"], true);
    let mut buf = Vec::new();
    let read = tokio::time::timeout(T, slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the dribbling client was not closed");
    srv.wait_for("dribbler gone", |s| s.stats().connections == 1)
        .await;
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed() {
    let srv = TestServer::start(&two_listeners(
        "ping_interval_seconds = 1\npong_timeout_seconds = 1",
    ))
    .await;
    let mut deaf = v1(&srv.url("public")).await;
    let mut alive = v1(&srv.url("public")).await;
    // `alive` keeps reading, so tungstenite answers the server's pings; `deaf` reads nothing.
    let keep_alive = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(3500);
        while tokio::time::Instant::now() < deadline {
            assert_silent(&mut alive).await;
        }
        alive
    });
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(
        recv_close(&mut deaf).await,
        Some((4001, "ping timeout".into()))
    );
    let mut alive = keep_alive.await.unwrap();
    assert_eq!(
        call(&mut alive, r#"{"op":"ping","id":2}"#).await["ok"],
        true
    );
}

#[tokio::test]
async fn over_max_connections_gets_a_503_not_a_reset() {
    let srv = TestServer::start(&two_listeners("max_connections = 2")).await;
    let a = v1(&srv.url("public")).await;
    let _b = v1(&srv.url("public")).await;
    let (status, head, body) = http_raw(srv.addr("public"), "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await;
    assert_eq!(status, 503, "{head}");
    assert!(body.contains("\"unavailable\""), "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after"));
    assert_eq!(srv.stats().over_capacity_rejections, 1);
    drop(a);
    srv.wait_for("slot freed", |s| s.stats().connections == 1)
        .await;
    let mut c = v1(&srv.url("public")).await;
    assert_eq!(call(&mut c, r#"{"op":"ping","id":1}"#).await["ok"], true);
}

#[tokio::test]
async fn malformed_handshakes_get_http_errors() {
    let srv = TestServer::default().await;
    let addr = srv.addr("public");
    let base = "Host: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nConnection: close\r\n";
    let (s, head, _) = http_raw(addr, &format!("GET / HTTP/1.1\r\n{base}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")).await;
    assert_eq!(s, 426);
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13")
    );
    let (s, _, body) = http_raw(
        addr,
        &format!("GET / HTTP/1.1\r\n{base}Sec-WebSocket-Version: 13\r\n\r\n"),
    )
    .await;
    assert_eq!(s, 400);
    assert!(body.contains("bad_request"));
    let (s, _, _) = http_raw(addr, &format!("POST / HTTP/1.1\r\n{base}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n")).await;
    assert_eq!(s, 400);
    let (s, _, _) = http_raw(addr, "GARBAGE\r\n\r\n").await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn shutdown_closes_every_session_with_1001() {
    let srv = TestServer::default().await;
    let mut publisher = v1(&srv.url("private")).await;
    let mut a = v1(&srv.url("public")).await;
    let mut b = legacy(&srv.url("public")).await;
    call(&mut publisher, r#"{"op":"create","channel":"c"}"#).await;
    call(&mut a, r#"{"op":"subscribe","channel":"c"}"#).await;
    srv.wait_for("sessions", |s| s.stats().sessions == 3).await;
    let shutdown = tokio::spawn(srv.shutdown());
    for ws in [&mut publisher, &mut a, &mut b] {
        let (code, reason) = recv_close(ws).await.unwrap();
        assert_eq!(code, 1001);
        let retry = tslm_protocol::close::parse_shutdown_reason(&reason);
        assert!(retry.is_some_and(|ms| ms >= 1000), "{reason:?}");
    }
    tokio::time::timeout(T, shutdown)
        .await
        .expect("run returns after shutdown")
        .unwrap();
}

#[tokio::test]
async fn websocket_pings_do_not_count_against_the_command_rate() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let srv = TestServer::start(&two_listeners(
        "rate_limit_per_second = 2\nmax_control_frames_per_second = 100",
    ))
    .await;
    let mut c = v1(&srv.url("private")).await;
    for _ in 0..20 {
        c.send(Message::Ping(vec![1].into())).await.unwrap();
    }
    // The original counted pings, so a command after them was refused; here both pass.
    assert_eq!(call(&mut c, r#"{"op":"ping","id":1}"#).await["ok"], true);
    assert_eq!(call(&mut c, r#"{"op":"ping","id":2}"#).await["ok"], true);
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let srv = TestServer::default().await;
    let mut c = legacy(&srv.url("private")).await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(recv_close(&mut c).await.map(|(code, _)| code), Some(1007));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_closed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let srv = TestServer::start(&two_listeners(
        "ping_interval_seconds = 1\npong_timeout_seconds = 1",
    ))
    .await;
    let c = v1(&srv.url("private")).await;
    srv.wait_for("session", |s| s.stats().sessions == 1).await;
    let (mut tx, rx) = c.split();
    // Requests with 120-byte ids, never reading a reply: the replies fill the socket buffers and
    // the server's writes stall. Bounded: stops at the first send error or after 200,000.
    let id = format!("\"{}\"", "i".repeat(120));
    let flood = tokio::spawn(async move {
        for _ in 0..200_000 {
            let req = format!(r#"{{"op":"ping","id":{id}}}"#);
            if tx.send(Message::Text(req.into())).await.is_err() {
                break;
            }
        }
    });
    srv.wait_for("the stalled session closed", |s| s.stats().sessions == 0)
        .await;
    assert_eq!(srv.stats().slow_consumer_closes, 1);
    drop(rx);
    flood.abort();
}
