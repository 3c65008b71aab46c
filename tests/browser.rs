//! A real browser against the gateway: Debian's Chromium, headless, driven by playwright-core
//! (`tests/browser/run.mjs`), loading pages served on loopback by the test itself.
//!
//! Cross-site requests to private listeners: a web page the operator happens to open (any
//! origin) must not be able to create or publish through a listener on the operator's machine
//! or network. Browsers always send `Origin`; services do not. A listener that allows creating
//! or publishing refuses requests that carry an `Origin` its `allowed_origins` does not name.
//! The positive control (the same page, its origin allowed) proves the browser really ran the
//! attack, so the refusal is not silence for the wrong reason.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tslm_protocol::ChannelName;

/// The attacker's page: a WebSocket publish and a no-preflight `fetch` POST to the private
/// listener `target` (host:port), reporting what happened.
fn evil_page(target: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>a page</title><script>
const target = "{target}";
function tryWs() {{
  return new Promise((resolve) => {{
    let ws;
    try {{ ws = new WebSocket("ws://" + target + "/", "tslm.v1"); }}
    catch (e) {{ resolve("throw: " + e); return; }}
    ws.onopen = () => ws.send(JSON.stringify({{op: "publish", id: 1, channel: "victim", data: {{from: "evil ws"}}}}));
    ws.onmessage = (m) => {{ resolve("reply: " + m.data); ws.close(); }};
    ws.onclose = (e) => resolve("closed: " + e.code);
    setTimeout(() => resolve("timeout"), 5000);
  }});
}}
async function tryFetch() {{
  try {{
    // A Blob without a type sends no Content-Type: a "simple" request, no CORS preflight.
    const r = await fetch("http://" + target + "/v1/channels/victim/messages",
      {{method: "POST", mode: "no-cors", body: new Blob(['{{"from":"evil fetch"}}'])}});
    return "sent: " + r.type;
  }} catch (e) {{ return "error: " + e; }}
}}
(async () => {{
  const ws = await tryWs();
  const fetched = await tryFetch();
  window.__result = {{ws, fetched}};
  window.__done = true;
}})();
</script>"#
    )
}

/// Serves `html` to every request on `listener` (a tiny HTTP/1.1 server: one response per
/// connection), until the test ends.
fn serve_page(listener: TcpListener, html: String) {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                    html.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

/// Loads `url` in headless Chromium and returns what the page reported.
async fn browse(url: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/run.mjs");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(&script)
            .arg(url)
            .arg("20000")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser run ends in time")
    .expect("node runs (the test command installs Node.js, Chromium and tests/browser)");
    assert!(
        out.status.success(),
        "browser run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "page result not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn messages_in_victim(srv: &TestServer) -> u64 {
    let victim = ChannelName::new("victim").unwrap();
    srv.hub.last_offset(&victim).unwrap().0
}

#[tokio::test]
async fn a_web_page_cannot_publish_through_a_private_listener_unless_its_origin_is_allowed() {
    let page_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());

    // The embedded default's shape: a private listener for creating and publishing.
    let srv = TestServer::start(&two_listeners("")).await;
    let private = srv.addr("private").to_string();
    assert!(srv.hub.create(&ChannelName::new("victim").unwrap()));
    serve_page(page_listener, evil_page(&private));

    let r = browse(&format!("{page_origin}/")).await;
    let ws = r["ws"].as_str().unwrap_or_default();
    assert!(
        !ws.starts_with("reply"),
        "a cross-site page published over WebSocket: {r}"
    );
    // Whatever the page saw, nothing reached the channel: a positive barrier (a publish of
    // our own) shows the channel works and nothing else got in before it.
    let (status, _, _) = http(
        srv.addr("private"),
        "POST",
        "/v1/channels/victim/messages",
        &[],
        "\"ours\"",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        messages_in_victim(&srv).await,
        1,
        "the page's WebSocket or fetch publish got through: {r}"
    );
    srv.shutdown().await;

    // Positive control: the same page, its origin allowed on the private listener, publishes.
    let page_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    let srv = TestServer::start(&two_listeners(&format!(
        "allowed_origins = ['{page_origin}']"
    )))
    .await;
    let private = srv.addr("private").to_string();
    assert!(srv.hub.create(&ChannelName::new("victim").unwrap()));
    serve_page(page_listener, evil_page(&private));
    let r = browse(&format!("{page_origin}/")).await;
    let ws = r["ws"].as_str().unwrap_or_default();
    assert!(
        ws.starts_with("reply") && ws.contains("\"ok\":true"),
        "an allowed origin must publish: {r}"
    );
    srv.shutdown().await;
}
