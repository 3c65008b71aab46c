//! `tslm health` (the container HEALTHCHECK) against a real gateway and against peers that fail
//! in every way a probe can fail, and `--log-format json` on a real run.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_tslm");

/// Runs `tslm health ARGS` to completion.
async fn health(args: &[&str]) -> Output {
    tokio::time::timeout(
        Duration::from_secs(30),
        Command::new(BIN).arg("health").args(args).output(),
    )
    .await
    .expect("tslm health ends")
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A gateway started with `--ready-file`; returns it and its public listener's address.
async fn gateway(dir: &std::path::Path, server: &str, extra_args: &[&str]) -> (Child, SocketAddr) {
    let config = dir.join("tslm.toml");
    std::fs::write(
        &config,
        format!("[server]\n{server}\n{}", two_listeners("")),
    )
    .unwrap();
    let ready = dir.join("ready.json");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .args(extra_args)
        .env("RUST_LOG", "info,tslm_server=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let doc: Value = loop {
        if let Ok(t) = std::fs::read_to_string(&ready) {
            break serde_json::from_str(&t).unwrap();
        }
        assert!(Instant::now() < deadline, "no ready file in 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let public = doc["listeners"]["public"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (child, public)
}

fn sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn health_exits_0_when_ready_and_1_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    let (mut gw, public) = gateway(dir.path(), "drain_delay_seconds = 5", &[]).await;
    let readyz = format!("http://{public}/readyz");
    let out = health(&["--url", &readyz]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"ready":true}"#);
    let out = health(&["--url", &format!("http://{public}/healthz")]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"live":true}"#);

    sigterm(&gw);
    let deadline = Instant::now() + Duration::from_secs(4);
    let out = loop {
        let out = health(&["--url", &readyz, "--timeout-seconds", "2"]).await;
        if !out.status.success() {
            break out;
        }
        assert!(Instant::now() < deadline, "still ready after SIGTERM");
    };
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("answered 503") && err.contains("draining"),
        "{err}"
    );
    // Alive all the same.
    let out = health(&["--url", &format!("http://{public}/healthz")]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = tokio::time::timeout(Duration::from_secs(30), gw.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn health_exits_1_when_nothing_listens() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let out = health(&["--url", &format!("http://127.0.0.1:{port}/readyz")]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn health_gives_up_after_its_timeout_when_the_peer_never_answers() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    // Accepts (the kernel does) and never answers.
    let started = Instant::now();
    let out = health(&[
        "--url",
        &format!("http://{addr}/readyz"),
        "--timeout-seconds",
        "0.5",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no answer within"),
        "{}",
        text(&out.stderr)
    );
    // Only an upper bound, and a loose one: it did not wait for the peer.
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(silent);
}

#[tokio::test]
async fn health_exits_1_on_an_answer_that_is_not_http() {
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = peer.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = peer.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        s.write_all(b"SSH-2.0-not-a-web-server\r\n").unwrap();
    });
    let out = health(&["--url", &format!("http://{addr}/readyz")]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not an http answer"),
        "{}",
        text(&out.stderr)
    );
    server.join().unwrap();
}

#[tokio::test]
async fn health_refuses_bad_urls_and_timeouts_with_status_2() {
    for url in [
        "https://127.0.0.1/readyz",
        "127.0.0.1:8080/readyz",
        "http://h:x/",
    ] {
        let out = health(&["--url", url]).await;
        assert_eq!(out.status.code(), Some(2), "{url}");
        assert!(text(&out.stderr).contains("bad url"), "{url}");
    }
    for t in ["0", "-1", "soon"] {
        let out = health(&["--timeout-seconds", t]).await;
        assert_eq!(out.status.code(), Some(2), "{t}");
    }
}

#[tokio::test]
async fn every_line_of_a_json_log_is_a_json_object_with_stable_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (mut gw, public) = gateway(dir.path(), "", &["--log-format", "json"]).await;
    let stderr = gw.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut all = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            all.push(l);
        }
        all
    });
    // A session (its span carries conn and peer) and its close at shutdown.
    let mut ws = v1(&format!("ws://{public}/")).await;
    assert_eq!(call(&mut ws, r#"{"op":"ping","id":1}"#).await["ok"], true);
    sigterm(&gw);
    recv_close(&mut ws).await;
    let status = tokio::time::timeout(Duration::from_secs(30), gw.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let lines = tokio::time::timeout(T, reader).await.unwrap().unwrap();
    assert!(lines.len() >= 5, "{lines:?}");
    let mut messages = Vec::new();
    for line in &lines {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        assert!(v["target"].is_string(), "{line}");
        messages.push((v["message"].as_str().unwrap().to_owned(), v));
    }
    let find = |m: &str| {
        messages
            .iter()
            .find(|(msg, _)| msg == m)
            .unwrap_or_else(|| panic!("no {m:?} in {lines:?}"))
            .1
            .clone()
    };
    // Event fields sit beside the message, under their own names.
    assert!(find("listening")["listener"].is_string());
    assert_eq!(find("shutdown requested")["signal"], "SIGTERM");
    // Span fields in `spans`.
    let closing = find("closing session");
    assert_eq!(closing["code"], 1001);
    assert_eq!(closing["spans"][0]["name"], "session");
    assert!(closing["spans"][0]["conn"].is_string() || closing["spans"][0]["conn"].is_number());
    find("shutdown complete");
}

#[tokio::test]
async fn a_startup_failure_in_a_json_log_is_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[server]\ndrain_delay_seconds = 301\n[listener.a]\nport = 0\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let line = err.lines().last().unwrap();
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(v["level"], "ERROR");
    assert_eq!(v["message"], "cannot start");
    assert!(
        v["error"].as_str().unwrap().contains("drain_delay_seconds"),
        "{line}"
    );
    // Every line, not only the last.
    for l in err.lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    }
    // An unknown format is refused by the argument parser.
    let out = Command::new(BIN)
        .args(["serve", "--log-format", "xml"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
