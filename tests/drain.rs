//! Health probes and staged shutdown of the real binary: `/healthz` and `/readyz` on every
//! listener, readiness false from the first moment of a shutdown while sessions are still served
//! for `drain_delay_seconds`, then sessions closed with 1001 one after another over the grace
//! period, each told when to come back.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tslm_protocol::close::parse_shutdown_reason;
use tslm_server::drain::{RETRY_AFTER_JITTER_MS, RETRY_AFTER_MIN_MS};

const BIN: &str = env!("CARGO_BIN_EXE_tslm");

/// A gateway process started with `--ready-file`, and its listeners' addresses.
struct Gateway {
    child: Child,
    public: SocketAddr,
    private: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(server_table: &str) -> Self {
        Self::start_with(server_table, "").await
    }

    /// `listener_extra` is appended to both listeners' tables.
    async fn start_with(server_table: &str, listener_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("tslm.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\n{server_table}\n{}",
                two_listeners(&format!("{NO_IP_LIMITS}\n{listener_extra}"))
            ),
        )
        .unwrap();
        let ready = dir.path().join("ready.json");
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let doc: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break serde_json::from_str(&text).unwrap();
            }
            assert!(Instant::now() < deadline, "no ready file in 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr = |name: &str| doc["listeners"][name][0].as_str().unwrap().parse().unwrap();
        Self {
            public: addr("public"),
            private: addr("private"),
            child,
            _dir: dir,
        }
    }

    fn sigterm(&self) {
        let pid = self.child.id().unwrap().to_string();
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(st.success());
    }

    async fn exit_status(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits in time")
            .unwrap()
    }
}

/// `GET path` on `addr`: (status, headers, JSON body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String, Value) {
    http(addr, "GET", path, &[], "").await
}

/// Asserts a shutdown close: 1001 and `shutdown; retry_after_ms=N` with N in its documented range.
fn assert_shutdown_close(close: Option<(u16, String)>) {
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1001, "{reason:?}");
    let ms = parse_shutdown_reason(&reason).unwrap_or_else(|| panic!("reason {reason:?}"));
    assert!(
        (RETRY_AFTER_MIN_MS..RETRY_AFTER_MIN_MS + RETRY_AFTER_JITTER_MS).contains(&ms),
        "{reason:?}"
    );
}

#[tokio::test]
async fn probes_answer_on_every_listener_and_ignore_host_and_origin_checks() {
    let gw = Gateway::start_with("", "allowed_hosts = ['gw.example']").await;
    // The API refuses a Host the listener does not serve; the probes answer all the same.
    let (status, _, _) = get(gw.private, "/v1/channels").await;
    assert_eq!(status, 403);
    for addr in [gw.public, gw.private] {
        let (status, head, body) = get(addr, "/healthz").await;
        assert_eq!((status, &body), (200, &json!({"live": true})), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("cache-control: no-store"),
            "{head}"
        );
        assert!(head.contains("application/json"), "{head}");
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status, body), (200, json!({"ready": true})));
        // A foreign Origin (refused on the private listener for the API) does not matter.
        let (status, _, _) = http(
            addr,
            "GET",
            "/readyz",
            &[("Origin", "https://elsewhere.example")],
            "",
        )
        .await;
        assert_eq!(status, 200);
    }
    // Only GET (and HEAD): anything else is refused like on any route.
    for path in ["/readyz", "/healthz"] {
        let (status, head, body) = http(gw.private, "POST", path, &[], "").await;
        assert_eq!(status, 405);
        assert!(head.contains("allow: GET,HEAD"), "{head}");
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/readyz")
        );
    }
    let (status, head, _) = http_raw(
        gw.public,
        &format!(
            "HEAD /readyz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.public
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
}

#[tokio::test]
async fn sigterm_turns_readiness_false_at_once_and_serves_sessions_through_the_drain_delay() {
    let mut gw = Gateway::start("drain_delay_seconds = 3\nshutdown_grace_seconds = 2").await;
    let mut publisher = v1(&format!("ws://{}/", gw.private)).await;
    let mut sub = v1(&format!("ws://{}/", gw.public)).await;
    // A WebSocket handshake on a probe's path is a WebSocket handshake, as on any path.
    let mut old_sub = legacy(&format!("ws://{}/healthz", gw.public)).await;
    call(&mut publisher, r#"{"op":"create","channel":"news"}"#).await;
    assert_eq!(
        call(&mut sub, r#"{"op":"subscribe","id":1,"channel":"news"}"#).await["ok"],
        true
    );
    send(&mut old_sub, r#"{"Subscribe":"news"}"#).await;
    recv(&mut old_sub).await;
    assert_eq!(get(gw.public, "/readyz").await.0, 200);

    gw.sigterm();
    let signalled = Instant::now();
    // Not ready from the first moment of the shutdown (polled: the signal is asynchronous).
    let body = loop {
        let (status, _, body) = get(gw.public, "/readyz").await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200);
        assert!(signalled.elapsed() < Duration::from_secs(2), "still ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(body, json!({"ready": false, "reason": "draining"}));
    // Alive all the same, and on the other listener too.
    assert_eq!(get(gw.private, "/healthz").await.0, 200);
    assert_eq!(get(gw.private, "/readyz").await.0, 503);
    // Still accepting: a new subscriber joins during the drain (load balancers that have not
    // noticed yet are still served).
    let mut late = v1(&format!("ws://{}/", gw.public)).await;
    assert_eq!(
        call(&mut late, r#"{"op":"subscribe","id":1,"channel":"news"}"#).await["ok"],
        true
    );
    // Existing sessions are still served: a publish is delivered to both dialects.
    assert_eq!(
        call(
            &mut publisher,
            r#"{"op":"publish","id":2,"channel":"news","data":"during the drain"}"#
        )
        .await["ok"],
        true
    );
    assert_eq!(
        recv_json(&mut sub).await,
        json!({"event":"message","channel":"news","offset":1,"data":"during the drain"})
    );
    assert_eq!(
        recv(&mut old_sub).await,
        r#"{"ChannelMessage":["news",{"Text":"during the drain"}]}"#
    );
    assert_eq!(
        recv_json(&mut late).await["data"],
        json!("during the drain")
    );
    // Then every session is closed with 1001 and told when to come back, legacy ones too.
    for ws in [&mut sub, &mut old_sub, &mut publisher, &mut late] {
        assert_shutdown_close(recv_close(ws).await);
    }
    let status = gw.exit_status().await;
    assert!(status.success(), "{status}");
    assert!(tokio::net::TcpStream::connect(gw.public).await.is_err());
}

#[tokio::test]
async fn sessions_are_closed_one_after_another_over_the_grace_period() {
    const CLIENTS: usize = 20;
    let mut gw = Gateway::start("shutdown_grace_seconds = 2").await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut ws = v1(&format!("ws://{}/", gw.public)).await;
        assert_eq!(call(&mut ws, r#"{"op":"ping","id":1}"#).await["ok"], true);
        clients.push(ws);
    }
    gw.sigterm();
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let close = recv_close(&mut ws).await;
                (Instant::now(), close)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut reasons = std::collections::BTreeSet::new();
    for c in closes {
        let (at, close) = c.await.unwrap();
        reasons.insert(close.as_ref().map(|(_, r)| r.clone()));
        assert_shutdown_close(close);
        times.push(at);
    }
    // Planned over 1.5 s (three quarters of the grace): far from all at once. Only a lower bound
    // is asserted; a slow machine spreads them further.
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    assert!(
        last - first >= Duration::from_millis(500),
        "closes within {:?} of each other",
        last - first
    );
    // The 20 reasons are jittered, not one value for all.
    assert!(reasons.len() > 1, "{reasons:?}");
    let status = gw.exit_status().await;
    assert!(status.success(), "{status}");
}

/// Opens `GET /v1/events?channel=NAME` and reads until its `end` event; returns when that event
/// arrived and the `retry:` it asked for.
async fn event_stream_until_end(
    addr: SocketAddr,
    channel: &str,
    opened: tokio::sync::mpsc::Sender<()>,
) -> (Instant, u64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /v1/events?channel={channel} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut announced = false;
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed without an end event: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if !announced && text.contains("event: subscribed") {
            announced = true;
            opened.send(()).await.unwrap();
        }
        // The end event is one chunk: `retry: N\nevent: end\ndata: {...}\n\n`.
        if let Some(at) = text.find("event: end\n") {
            let before = &text[..at];
            let retry = before.rsplit("retry: ").next().unwrap();
            let retry: u64 = retry.split('\n').next().unwrap().parse().unwrap();
            assert!(text[at..].contains("shutdown; retry_after_ms="), "{text}");
            return (Instant::now(), retry);
        }
    }
}

#[tokio::test]
async fn event_streams_are_ended_one_after_another_like_sessions() {
    // Only event streams (no WebSocket session): they are what the close schedule is sized by.
    const STREAMS: usize = 20;
    let mut gw = Gateway::start("shutdown_grace_seconds = 2").await;
    let (status, _, body) = http(gw.private, "PUT", "/v1/channels/drain.sse", &[], "").await;
    assert!(status == 201 || status == 200, "{body}");
    let (opened_tx, mut opened) = tokio::sync::mpsc::channel(STREAMS);
    let ends: Vec<_> = (0..STREAMS)
        .map(|_| {
            tokio::spawn(event_stream_until_end(
                gw.public,
                "drain.sse",
                opened_tx.clone(),
            ))
        })
        .collect();
    for _ in 0..STREAMS {
        opened.recv().await.unwrap();
    }
    gw.sigterm();
    let mut times = Vec::new();
    let mut retries = std::collections::BTreeSet::new();
    for e in ends {
        let (at, retry) = e.await.unwrap();
        assert!(
            (RETRY_AFTER_MIN_MS..RETRY_AFTER_MIN_MS + RETRY_AFTER_JITTER_MS).contains(&retry),
            "{retry}"
        );
        retries.insert(retry);
        times.push(at);
    }
    // Planned over 1.5 s, as the sessions' closes; only a lower bound is asserted. Before event
    // streams were counted in the schedule, they all ended at once.
    let first = *times.iter().min().unwrap();
    let last = *times.iter().max().unwrap();
    assert!(
        last - first >= Duration::from_millis(500),
        "ends within {:?} of each other",
        last - first
    );
    assert!(retries.len() > 1, "{retries:?}");
    let status = gw.exit_status().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_second_signal_cuts_the_drain_delay_short() {
    // A drain delay far longer than the 30 s this test waits for the exit.
    let mut gw = Gateway::start("drain_delay_seconds = 300\nshutdown_grace_seconds = 1").await;
    let mut sub = v1(&format!("ws://{}/", gw.public)).await;
    assert_eq!(call(&mut sub, r#"{"op":"ping","id":1}"#).await["ok"], true);
    gw.sigterm();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(gw.public, "/readyz").await.0 != 503 {
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Still draining: the session is served.
    assert_eq!(call(&mut sub, r#"{"op":"ping","id":2}"#).await["ok"], true);
    gw.sigterm();
    assert_shutdown_close(recv_close(&mut sub).await);
    let status = gw.exit_status().await;
    assert!(status.success(), "{status}");
}
