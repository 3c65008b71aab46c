//! Shared helpers for the integration tests: a real server on port 0 and real WebSocket/TCP
//! clients.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tslm_hub::Hub;
use tslm_server::{Config, Reloader, Server, ServerStats, StatsHandle};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const T: Duration = Duration::from_secs(10);

/// Per-address limits raised out of the way, for tests that open connections by the thousand
/// from one address to measure something else.
pub const NO_IP_LIMITS: &str =
    "handshakes_per_ip_per_second = 1000000\nmax_connections_per_ip = 1000000";

/// The usual two listeners, on port 0, plus `extra` TOML appended to each listener.
pub fn two_listeners(extra: &str) -> String {
    format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n{extra}\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n{extra}\n"
    )
}

pub struct TestServer {
    pub addrs: HashMap<String, SocketAddr>,
    pub hub: Hub,
    pub stats: StatsHandle,
    /// Applies a new configuration to the running server.
    pub reloader: Reloader,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(toml: &str) -> Self {
        let config = Config::from_toml_str(toml, "test").expect("test config");
        let server = Server::bind(config).await.expect("bind");
        let addrs = server
            .local_addrs()
            .into_iter()
            .map(|b| (b.listener, b.addr))
            .collect();
        let hub = server.hub();
        let stats = server.stats_handle();
        let reloader = server.reloader();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Self {
            addrs,
            hub,
            stats,
            reloader,
            stop: Some(tx),
            done: Some(done),
        }
    }

    pub async fn default() -> Self {
        Self::start(&two_listeners("")).await
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    pub fn url(&self, name: &str) -> String {
        format!("ws://{}/", self.addr(name))
    }

    pub fn stats(&self) -> ServerStats {
        self.stats.get()
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(30), done)
                .await
                .expect("shutdown in time")
                .unwrap();
        }
    }

    /// Waits until `f` holds for the server's counters (they settle asynchronously).
    pub async fn wait_for(&self, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + T;
        while !f(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {:?} {:?}",
                self.stats(),
                self.hub.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn connect_with(url: &str, protocol: Option<&str>) -> (Ws, Option<String>) {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    let (ws, resp) =
        tokio_tungstenite::connect_async_with_config(req, Some(WebSocketConfig::default()), false)
            .await
            .expect("websocket connect");
    let proto = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, proto)
}

/// A protocol v1 connection.
pub async fn v1(url: &str) -> Ws {
    let (ws, proto) = connect_with(url, Some("tslm.v1")).await;
    assert_eq!(
        proto.as_deref(),
        Some("tslm.v1"),
        "server must echo the subprotocol"
    );
    ws
}

/// An original-protocol connection (no subprotocol).
pub async fn legacy(url: &str) -> Ws {
    let (ws, proto) = connect_with(url, None).await;
    assert_eq!(proto, None);
    ws
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(Utf8Bytes::from(text)))
        .await
        .expect("send");
}

/// The next text frame (pings are answered by tungstenite and skipped).
pub async fn recv(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("websocket error");
        match msg {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

pub async fn recv_json(ws: &mut Ws) -> Value {
    let text = recv(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Sends `req` and returns the next frame as JSON.
pub async fn call(ws: &mut Ws, req: &str) -> Value {
    send(ws, req).await;
    recv_json(ws).await
}

/// Reads until the server closes; returns the close code and reason (None on a bare TCP close).
pub async fn recv_close(ws: &mut Ws) -> Option<(u16, String)> {
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("timed out waiting for close")
        {
            Some(Ok(Message::Close(f))) => {
                return f.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Asserts nothing arrives for a short while.
pub async fn assert_silent(ws: &mut Ws) {
    if let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(200), ws.next()).await
        && !matches!(m, Message::Ping(_) | Message::Pong(_))
    {
        panic!("unexpected frame {m:?}");
    }
}

/// A raw HTTP/1.1 exchange: sends `request` verbatim, returns (status, headers, body).
pub async fn http_raw(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut buf))
        .await
        .expect("http response in time");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, head.to_owned(), body.to_owned())
}

/// An HTTP request with `Connection: close`; returns (status, headers, body as JSON).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, Value) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let (status, head, body) = http_raw(addr, &req).await;
    let json =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("body not JSON ({e}): {body:?}"));
    (status, head, json)
}

/// Removes `epoch` from a reply and checks its form (16 lowercase hex digits); returns it.
#[allow(dead_code)]
pub fn take_epoch(v: &mut Value) -> String {
    let e = v
        .as_object_mut()
        .and_then(|o| o.remove("epoch"))
        .unwrap_or_else(|| panic!("no epoch in {v}"));
    let e = e.as_str().unwrap().to_owned();
    assert!(
        e.len() == 16
            && e.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "bad epoch {e}"
    );
    e
}

/// Creates `channel` over the HTTP API of the server's `private` listener (201, or 200 when it
/// existed).
pub async fn http_create(s: &TestServer, channel: &str) {
    let (status, _, body) = http(
        s.addr("private"),
        "PUT",
        &format!("/v1/channels/{channel}"),
        &[],
        "",
    )
    .await;
    assert!(status == 201 || status == 200, "{body}");
}

/// Publishes `data` (JSON text) to `channel` over the HTTP API of the `private` listener;
/// returns its offset.
pub async fn http_publish(s: &TestServer, channel: &str, data: &str) -> u64 {
    let (status, _, body) = http(
        s.addr("private"),
        "POST",
        &format!("/v1/channels/{channel}/messages"),
        &[],
        data,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["offset"].as_u64().expect("an offset")
}
