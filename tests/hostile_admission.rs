//! Hostile clients at admission: refused connections that would hold descriptors, a flood that
//! would exhaust the descriptor limit (against the real binary, under a low `RLIMIT_NOFILE`),
//! single frames announcing more than a message may hold, credentials of the wrong kind, and
//! cross-site requests from browsers to private listeners.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const BIN: &str = env!("CARGO_BIN_EXE_tslm");

/// A TCP connection from source address `from` (any 127.0.0.0/8 address works on loopback).
async fn tcp_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{from}:0").parse().unwrap())?;
    timeout(Duration::from_secs(5), sock.connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))?
}

/// A v1 WebSocket from `from`, with extra handshake headers.
async fn ws_from(
    from: &str,
    to: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let stream = tcp_from(from, to).await?;
    let mut req = format!("ws://{to}/").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tslm.v1"),
    );
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let (ws, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    Ok(ws)
}

/// Sends a raw HTTP request from `from` and reads the answer until the server closes, within
/// `within`; `None` when no complete answer arrived in time.
async fn raw_from(from: &str, to: SocketAddr, request: &str, within: Duration) -> Option<String> {
    let exchange = async {
        let mut s = tcp_from(from, to).await.ok()?;
        s.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    timeout(within, exchange)
        .await
        .ok()
        .flatten()
        .filter(|t| t.starts_with("HTTP/1.1 "))
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// The real binary in a child process, optionally under a descriptor limit (`prlimit`), killed
/// on drop.
struct Gateway {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(toml: &str, nofile: Option<u32>) -> (Self, SocketAddr) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("tslm.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = cmd
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tslm");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                sink.lock().unwrap().push(l);
            }
        });
        let gw = Self {
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + T;
        loop {
            let addr = gw
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(" listening "))
                .map(|l| field(l, "addr"));
            if let Some(a) = addr {
                return (gw, a.parse().unwrap());
            }
            assert!(Instant::now() < deadline, "no start: {}", gw.text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The child's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

fn field(line: &str, key: &str) -> String {
    let pat = format!("{key}=");
    let start = line.find(&pat).unwrap() + pat.len();
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

// ---------------------------------------------------------------------------------------------
// Item 2: refusals cost nothing lasting; a flood does not take the descriptors others need.

#[tokio::test]
async fn refusals_are_answered_at_once_without_waiting_for_a_request() {
    let srv = TestServer::start(&two_listeners(
        "max_connections_per_ip = 1\nhandshake_timeout_seconds = 30",
    ))
    .await;
    let to = srv.addr("public");
    let _held = tcp_from("127.0.0.1", to).await.unwrap();
    srv.wait_for("the first admitted", |s| s.stats().connections == 1)
        .await;
    // The refused client sends nothing at all: the 429 still arrives at once, then the close.
    let started = Instant::now();
    let mut refused = tcp_from("127.0.0.1", to).await.unwrap();
    let mut buf = Vec::new();
    timeout(Duration::from_secs(3), refused.read_to_end(&mut buf))
        .await
        .expect("answered and closed long before the handshake timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(status_of(&text), 429, "{text}");
    assert!(text.contains("\"rate_limited\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // A client that sends its request and never closes is let go after the short linger.
    let mut lingering = tcp_from("127.0.0.1", to).await.unwrap();
    lingering.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    timeout(Duration::from_secs(3), lingering.read_to_end(&mut buf))
        .await
        .expect("closed by the server")
        .unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buf)), 429);
    srv.wait_for("refusals gone", |s| s.stats().connections == 1)
        .await;
}

/// The docs' promise: with `max_connections` below the descriptor limit, TSLM keeps answering
/// (503 over the limit), and a flood of idle connections from one address does not keep other
/// addresses out. The real binary, under `RLIMIT_NOFILE` 160.
#[tokio::test]
async fn a_flood_of_idle_connections_leaves_descriptors_for_other_addresses() {
    let toml = "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
                max_connections = 60\nmax_connections_per_ip = 40\nhandshakes_per_ip_per_second = 1000000\n\
                handshake_timeout_seconds = 30\n";
    let (gw, to) = Gateway::start(toml, Some(160)).await;
    // One address: 40 idle admitted connections, then 300 more that are refused (429) and
    // stay open without reading.
    let mut flood = Vec::new();
    for _ in 0..340 {
        if let Ok(s) = tcp_from("127.0.0.1", to).await {
            flood.push(s);
        }
    }
    // Another address is served at once: a WebSocket session, a command, a reply.
    let mut ws = timeout(Duration::from_secs(5), ws_from("127.0.0.2", to, &[]))
        .await
        .unwrap_or_else(|_| panic!("127.0.0.2 not served during the flood: {}", gw.text()))
        .unwrap_or_else(|e| panic!("127.0.0.2 refused during the flood ({e}): {}", gw.text()));
    assert_eq!(call(&mut ws, r#"{"op":"ping","id":1}"#).await["ok"], true);
    // A third address fills the listener to `max_connections` (40 + 1 + 19)...
    let mut fill = Vec::new();
    for _ in 0..19 {
        let s = tcp_from("127.0.0.3", to).await.unwrap();
        fill.push(s);
    }
    // ... while the first floods again; a fourth is still answered, with 503.
    for _ in 0..300 {
        if let Ok(s) = tcp_from("127.0.0.1", to).await {
            flood.push(s);
        }
    }
    let answer = raw_from("127.0.0.4", to, UPGRADE, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("127.0.0.4 got no answer: {}", gw.text()));
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("\"unavailable\""), "{answer}");
    assert_eq!(call(&mut ws, r#"{"op":"ping","id":2}"#).await["ok"], true);
    assert!(
        !gw.text().contains("Too many open files"),
        "accept ran out of descriptors: {}",
        gw.text()
    );
}

// ---------------------------------------------------------------------------------------------
// Item 4: a frame larger than a message is refused at its header.

/// A masked client frame header announcing a binary frame of `len` bytes.
fn frame_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[1, 2, 3, 4]);
    h
}

#[tokio::test]
async fn a_frame_larger_than_a_message_is_refused_at_its_header() {
    let srv = TestServer::default().await;
    let mut ws = v1(&srv.url("public")).await;
    // 15 MiB announced (under the 16 MiB frame limit, far over the 64 KiB message limit), a few
    // bytes sent: the close arrives without the rest.
    let mut bytes = frame_header(15 << 20);
    bytes.extend_from_slice(&[0u8; 16]);
    ws.get_mut().write_all(&bytes).await.unwrap();
    let close = timeout(Duration::from_secs(5), recv_close(&mut ws))
        .await
        .expect("closed at the header, not after 15 MiB");
    assert_eq!(close.map(|c| c.0), Some(1009));
    srv.wait_for("counted", |s| s.stats().too_big_closes == 1)
        .await;
}

#[tokio::test]
async fn forty_oversized_frames_do_not_grow_the_gateway() {
    let toml = format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n{NO_IP_LIMITS}\n"
    );
    let (gw, to) = Gateway::start(&toml, None).await;
    let url = format!("ws://{to}/");
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(v1(&url).await);
    }
    let mut ws = v1(&url).await;
    assert_eq!(call(&mut ws, r#"{"op":"ping","id":1}"#).await["ok"], true);
    let before = gw.rss_kib();
    // Each announces 15 MiB and sends 2 MiB of it (80 MiB in all) without waiting.
    let chunk = Arc::new(vec![0u8; 2 << 20]);
    let sends = conns.into_iter().map(|mut c| {
        let chunk = Arc::clone(&chunk);
        tokio::spawn(async move {
            let io = c.get_mut();
            let _ = io.write_all(&frame_header(15 << 20)).await;
            let _ = timeout(Duration::from_secs(5), io.write_all(&chunk)).await;
            let code = timeout(Duration::from_secs(3), recv_close(&mut c))
                .await
                .ok()
                .flatten()
                .map(|c| c.0);
            // Kept open until memory is measured.
            (code, c)
        })
    });
    let mut closed = 0;
    let mut open = Vec::new();
    for s in sends.collect::<Vec<_>>() {
        let (code, c) = s.await.unwrap();
        closed += usize::from(code == Some(1009));
        open.push(c);
    }
    let grown = gw.rss_kib().saturating_sub(before);
    eprintln!("GROWN {grown} KiB before {before}");
    assert!(grown < 8 * 1024, "the gateway grew by {grown} KiB");
    assert_eq!(closed, 40, "every oversized frame is closed with 1009");
    assert_eq!(call(&mut ws, r#"{"op":"ping","id":2}"#).await["ok"], true);
}

// ---------------------------------------------------------------------------------------------
// Item 10: a credential that does not authenticate the connection for what the listener
// requires does not lift the authentication deadline.

const ISSUER: &str = "[issuer.corp]\nissuer='corp'\naudiences=['t']\nchannels_claim='c'\n\
     secret='c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldC0xMjM0NQ=='\n";

fn subscriber_listener(extra: &str) -> String {
    format!(
        "[listener.subs]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         subscriber_auth = true\nauth_timeout_seconds = 1\n{extra}\n{ISSUER}\
         [publisher.svc]\ntoken_hashes = ['{}']\nchannels = ['*']\n",
        tslm_auth::token::hash_line("svc-token")
    )
}

#[tokio::test]
async fn a_publishers_token_does_not_lift_a_subscriber_listeners_deadline() {
    let srv = TestServer::start(&subscriber_listener("")).await;
    let to = srv.addr("subs");
    // A valid publisher token in the handshake header: a credential, but not one this listener
    // requires. The deadline still closes the connection.
    let mut ws = ws_from("127.0.0.1", to, &[("Authorization", "Bearer svc-token")])
        .await
        .unwrap();
    assert_eq!(call(&mut ws, r#"{"op":"ping","id":1}"#).await["ok"], true);
    let close = timeout(Duration::from_secs(5), recv_close(&mut ws))
        .await
        .expect("closed by the auth deadline");
    assert_eq!(close, Some((4002, "authentication required".into())));
    // The same token with the `auth` op: the deadline holds too.
    let mut ws = ws_from("127.0.0.1", to, &[]).await.unwrap();
    let r = call(&mut ws, r#"{"op":"auth","token":"svc-token"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let close = timeout(Duration::from_secs(5), recv_close(&mut ws))
        .await
        .expect("closed by the auth deadline");
    assert_eq!(close, Some((4002, "authentication required".into())));
}

#[tokio::test]
async fn a_listener_token_does_not_lift_a_subscriber_listeners_deadline() {
    let srv = TestServer::start(&subscriber_listener("auth_tokens = ['listener-token']")).await;
    let to = srv.addr("subs");
    for headers in [
        [("Authorization", "Bearer listener-token")],
        [("Sec-WebSocket-Protocol", "tslm.v1, listener-token")],
    ] {
        let mut ws = ws_from("127.0.0.1", to, &headers).await.unwrap();
        let close = timeout(Duration::from_secs(5), recv_close(&mut ws))
            .await
            .expect("closed by the auth deadline");
        assert_eq!(close, Some((4002, "authentication required".into())));
    }
}

// ---------------------------------------------------------------------------------------------
// Item 12: cross-site requests from browsers to listeners that may create or publish.

const EVIL: &str = "https://evil.example";

fn upgrade_with(host: &str, origin: Option<&str>) -> String {
    let origin = origin.map_or_else(String::new, |o| format!("Origin: {o}\r\n"));
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: Upgrade\r\nConnection: close\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

#[tokio::test]
async fn cross_site_upgrades_to_a_private_listener_are_refused_before_the_upgrade() {
    let srv = TestServer::default().await;
    let private = srv.addr("private");
    let host = private.to_string();
    for origin in [EVIL, "null", "http://127.0.0.1:8080"] {
        let (status, _, body) = http_raw(private, &upgrade_with(&host, Some(origin))).await;
        assert_eq!(status, 403, "{origin}: {body}");
        assert!(body.contains("\"forbidden\""), "{body}");
    }
    let e = ws_from("127.0.0.1", private, &[("Origin", EVIL)])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    // Services send no `Origin`: served as before.
    let mut ws = ws_from("127.0.0.1", private, &[]).await.unwrap();
    let r = call(&mut ws, r#"{"op":"create","channel":"c"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    // The subscribers' listener keeps serving every origin.
    let mut sub = ws_from("127.0.0.1", srv.addr("public"), &[("Origin", EVIL)])
        .await
        .unwrap();
    let r = call(&mut sub, r#"{"op":"subscribe","channel":"c"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
}

#[tokio::test]
async fn an_allowed_origin_may_use_a_private_listener() {
    let srv = TestServer::start(&two_listeners(
        "allowed_origins = ['https://ops.example', 'http://localhost:3000']",
    ))
    .await;
    let private = srv.addr("private");
    let mut ws = ws_from(
        "127.0.0.1",
        private,
        &[("Origin", "https://OPS.example:443")],
    )
    .await
    .unwrap();
    assert_eq!(call(&mut ws, r#"{"op":"ping","id":1}"#).await["ok"], true);
    let (status, _, body) = http(
        private,
        "PUT",
        "/v1/channels/c",
        &[("Origin", "http://localhost:3000")],
        "",
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for origin in [
        EVIL,
        "https://ops.example.evil.example",
        "http://ops.example",
    ] {
        let e = ws_from("127.0.0.1", private, &[("Origin", origin)])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("403"), "{origin}: {e}");
    }
    // With a list, the subscribers' listener serves only those origins too.
    let e = ws_from("127.0.0.1", srv.addr("public"), &[("Origin", EVIL)])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
}

#[tokio::test]
async fn cross_site_api_requests_to_a_private_listener_are_refused_on_every_route() {
    let srv = TestServer::default().await;
    let private = srv.addr("private");
    let (status, _, body) = http(private, "PUT", "/v1/channels/c", &[], "").await;
    assert_eq!(status, 201, "{body}");
    // What a page's `fetch` can send without a preflight: no `Content-Type` (a typeless body).
    let origin = [("Origin", EVIL)];
    for (method, path, body) in [
        ("POST", "/v1/channels/c/messages", "{\"x\":1}"),
        ("PUT", "/v1/channels/d", ""),
        ("DELETE", "/v1/channels/c", ""),
        ("GET", "/v1/channels", ""),
        ("GET", "/v1/channels/c/messages", ""),
        ("OPTIONS", "/v1/channels/c/messages", ""),
        ("GET", "/v1/nothing-here", ""),
        ("POST", "/", ""),
    ] {
        let (status, _, v) = http(private, method, path, &origin, body).await;
        assert_eq!(status, 403, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "forbidden", "{method} {path}: {v}");
    }
    // Nothing was published, created or deleted.
    let (status, _, v) = http(private, "GET", "/v1/channels/c/messages", &[], "").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(0), "{v}");
    let (_, _, v) = http(private, "GET", "/v1/channels", &[], "").await;
    assert_eq!(v["channels"].as_array().map(Vec::len), Some(1), "{v}");
}

#[tokio::test]
async fn allowed_hosts_refuse_other_host_names() {
    let srv = TestServer::start(&two_listeners(
        "allowed_hosts = ['gateway.intranet', '127.0.0.1']",
    ))
    .await;
    let private = srv.addr("private");
    let port = private.port();
    let get = |host: String| {
        format!("GET /v1/channels HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    for host in [format!("127.0.0.1:{port}"), "Gateway.Intranet".to_owned()] {
        let (status, _, body) = http_raw(private, &get(host.clone())).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    for host in [
        format!("rebound.evil.example:{port}"),
        "gateway.intranet.evil.example".to_owned(),
        format!("localhost:{port}"),
    ] {
        let (status, _, body) = http_raw(private, &get(host.clone())).await;
        assert_eq!(status, 403, "{host}: {body}");
        assert!(body.contains("\"forbidden\""), "{body}");
    }
    let (status, _, _) = http_raw(
        private,
        "GET /v1/channels HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status == 400 || status == 403, "no Host: {status}");
    let e = ws_from(
        "127.0.0.1",
        srv.addr("public"),
        &[("Host", "rebound.evil.example")],
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    let mut ws = ws_from("127.0.0.1", srv.addr("public"), &[]).await.unwrap();
    assert_eq!(call(&mut ws, r#"{"op":"ping","id":1}"#).await["ok"], true);
}

/// On a TLS listener a refusal needs a TLS handshake (so the client can read the 503), but a
/// client that never completes it holds the descriptor a second, not the handshake timeout.
#[tokio::test]
async fn a_refusal_on_a_tls_listener_is_cut_off_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let srv = TestServer::start(&format!(
        "[listener.tls]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         max_connections = 1\nhandshake_timeout_seconds = 30\ntls_cert = '{}'\ntls_key = '{}'\n",
        cert.display(),
        key.display()
    ))
    .await;
    let to = srv.addr("tls");
    let _held = tcp_from("127.0.0.1", to).await.unwrap();
    srv.wait_for("the first admitted", |s| s.stats().connections == 1)
        .await;
    let started = Instant::now();
    let mut refused = tcp_from("127.0.0.1", to).await.unwrap();
    let mut buf = Vec::new();
    timeout(Duration::from_secs(3), refused.read_to_end(&mut buf))
        .await
        .expect("closed long before the handshake timeout")
        .ok();
    assert!(started.elapsed() < Duration::from_secs(3));
    srv.wait_for("refusal gone", |s| s.stats().connections == 1)
        .await;
    assert_eq!(srv.stats().over_capacity_rejections, 1);
}
