//! Readiness of an embedded server (`Server::run` with the caller's shutdown signal): not ready
//! until `run` accepts, reasons raised by the embedder reported on `/readyz`, and a zero grace
//! period closing every session at once, still with the shutdown close. Real sockets.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tslm_protocol::close::parse_shutdown_reason;
use tslm_server::{Config, NotReady, Server};

#[tokio::test]
async fn a_bound_server_is_starting_until_it_runs_and_draining_once_told_to_stop() {
    let config = Config::from_toml_str(&two_listeners(""), "test").unwrap();
    let server = Server::bind(config).await.unwrap();
    let health = server.health();
    assert_eq!(health.readiness(), Err(NotReady::Starting));
    let public = server
        .local_addrs()
        .into_iter()
        .find(|b| b.listener == "public")
        .unwrap()
        .addr;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let (status, _, body) = http(public, "GET", "/readyz", &[], "").await;
    assert_eq!((status, body), (200, json!({"ready": true})));
    assert_eq!(health.readiness(), Ok(()));

    // An embedder's own reason (as a cluster mode will raise "redis down") is reported the same
    // way, and cleared the same way.
    health.raise(NotReady::Starting);
    let (status, _, body) = http(public, "GET", "/readyz", &[], "").await;
    assert_eq!(
        (status, body),
        (503, json!({"ready": false, "reason": "starting"}))
    );
    health.clear(NotReady::Starting);
    assert_eq!(http(public, "GET", "/readyz", &[], "").await.0, 200);

    tx.send(()).unwrap();
    tokio::time::timeout(T, done).await.unwrap().unwrap();
    assert_eq!(health.readiness(), Err(NotReady::Draining));
}

#[tokio::test]
async fn with_no_grace_period_every_session_is_closed_at_once_with_the_shutdown_close() {
    let srv = TestServer::start(&format!(
        "[server]\nshutdown_grace_seconds = 0\n{}",
        two_listeners("")
    ))
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut ws = legacy(&srv.url("public")).await;
        send(&mut ws, r#"{"Subscribe":"c"}"#).await;
        recv(&mut ws).await;
        clients.push(ws);
    }
    srv.wait_for("sessions", |s| s.stats().sessions == 5).await;
    let shutdown = tokio::spawn(srv.shutdown());
    for ws in &mut clients {
        // The close frame was sent before `run` stopped waiting; it is read, or the connection
        // is simply gone (a reset): what matters is that no session waits for a turn.
        if let Some((code, reason)) = recv_close(ws).await {
            assert_eq!(code, 1001);
            assert!(parse_shutdown_reason(&reason).is_some(), "{reason:?}");
        }
    }
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("a zero grace period does not wait")
        .unwrap();
}
