//! Hostile-input suite, corpus replay: every network entry point fed the fuzz inputs over real
//! sockets. The fuzz targets exercise each decoder in isolation; this replays the same inputs
//! (the committed seeds `fuzz/seeds/TARGET`, the minimised corpora kept from fuzzing runs in
//! `fuzz/kept/TARGET`, the crash regressions `fuzz/regressions`, and cheap deterministic
//! mutations of each) through the real accept path, handshake, session and HTTP API, and checks
//! what the issue asks of every entry point: each input gets a documented answer (an `ok`
//! reply, an error whose code is one of `ErrorCode::ALL` with its documented HTTP status, or a
//! close with a documented close code), never a panic, a hang or a silent drop, and the gateway
//! still serves other clients afterwards.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tslm_protocol::{ErrorCode, close};

/// The most inputs replayed per entry point (seeds and kept corpora are small; this bounds the
/// test's time if a kept corpus grows).
const MAX_INPUTS: usize = 600;

/// A token known to the `billing` publisher (its hash is in the config).
const BILLING_TOKEN: &str = "hostile-corpus-known-publisher-token";
/// The shared secret of the `corp` issuer (32 bytes, base64).
const ISSUER_SECRET: &str = "aG9zdGlsZS1jb3JwdXMtaXNzdWVyLXNlY3JldC0zMmI=";

/// Close codes the protocol documents (docs/protocol.md, "Close codes").
const DOCUMENTED_CLOSES: [u16; 10] = [
    close::NORMAL,
    close::GOING_AWAY,
    close::PROTOCOL_ERROR,
    close::INVALID_PAYLOAD,
    close::POLICY_VIOLATION,
    close::MESSAGE_TOO_BIG,
    close::SLOW_CONSUMER,
    close::PING_TIMEOUT,
    close::AUTH_TIMEOUT,
    close::TOKEN_EXPIRED,
];

/// The per-address budgets out of the way too (`tests/hostile_http.rs` tests them): this suite
/// checks what each input is answered, not when an address is cut off for guessing.
const NO_LIMITS: &str = "handshakes_per_ip_per_second = 1000000\nmax_connections_per_ip = 1000000\nfailed_auths_per_ip_per_minute = 1000000";

fn config() -> String {
    let hash = tslm_auth::token::hash_line(BILLING_TOKEN);
    format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n{NO_LIMITS}\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel','Subscribe']\n{NO_LIMITS}\n\
         [listener.pubauth]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel','Subscribe']\npublisher_auth=true\n{NO_LIMITS}\n\
         [listener.subauth]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\nsubscriber_auth=true\n{NO_LIMITS}\n\
         [channel.\"*\"]\nauto_create=true\nbacklog_messages=16\nreplies=true\n\
         [publisher.billing]\ntoken_hashes=['{hash}']\noperations=['create','publish','delete']\nchannels=['bills.*']\n\
         [issuer.corp]\nissuer='corp'\nsecret='{ISSUER_SECRET}'\naudiences=['tslm']\nchannels_claim='tslm_channels'\n"
    )
}

/// The inputs of fuzz target `target`: seeds, kept corpus, and for each a truncated and a
/// byte-flipped copy (deterministic), at most `MAX_INPUTS`.
fn inputs(target: &str) -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    for dir in [
        root.join("seeds").join(target),
        root.join("kept").join(target),
    ] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if let Ok(bytes) = std::fs::read(e.path()) {
                    files.insert(e.path(), bytes);
                }
            }
        }
    }
    let mut out = Vec::new();
    for bytes in files.into_values() {
        let half = bytes.len() / 2;
        let mut flipped = bytes.clone();
        if let Some(b) = flipped.get_mut(half) {
            *b ^= 0x20;
        }
        out.push(bytes[..half].to_vec());
        out.push(flipped);
        out.push(bytes);
    }
    out.truncate(MAX_INPUTS);
    assert!(
        !out.is_empty(),
        "no inputs for {target}: fuzz/seeds/{target} is missing"
    );
    out
}

/// Checks that one JSON message from the server is a documented answer.
fn check_v1_message(text: &str, input: &[u8]) {
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("server sent non-JSON ({e}) {text:?} for input {input:?}"));
    if v.get("event").is_some() {
        return;
    }
    match v.get("ok") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            let code = v["error"]["code"].as_str().unwrap_or_default();
            assert!(
                ErrorCode::ALL.iter().any(|c| c.as_str() == code),
                "undocumented error code in {text} for input {input:?}"
            );
            assert!(
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "an error without a message: {text}"
            );
        }
        _ => panic!("neither a reply nor an event: {text} for input {input:?}"),
    }
}

/// A connection that replays inputs, reconnecting whenever the server closes it (after
/// checking the close code).
struct Replayer {
    url: String,
    protocol: Option<&'static str>,
    ws: Option<Ws>,
    barrier: u64,
    closes: BTreeMap<u16, usize>,
}

impl Replayer {
    fn new(url: String, protocol: Option<&'static str>) -> Self {
        Self {
            url,
            protocol,
            ws: None,
            barrier: 0,
            closes: BTreeMap::new(),
        }
    }

    async fn ws(&mut self) -> &mut Ws {
        if self.ws.is_none() {
            let mut req = self.url.as_str().into_client_request().unwrap();
            if let Some(p) = self.protocol {
                req.headers_mut()
                    .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
            }
            let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
                .await
                .expect("connect in time")
                .expect("connect");
            self.ws = Some(ws);
        }
        self.ws.as_mut().expect("connected")
    }

    /// Sends `input` as one frame (text when it is UTF-8, binary otherwise), then a barrier the
    /// server must answer; every frame before the barrier's answer must be documented.
    async fn feed(&mut self, input: &[u8]) {
        self.barrier += 1;
        let barrier = self.barrier;
        let legacy = self.protocol.is_none();
        let msg = match std::str::from_utf8(input) {
            Ok(t) => Message::Text(Utf8Bytes::from(t)),
            Err(_) => Message::Binary(Bytes::copy_from_slice(input)),
        };
        let barrier_req = if legacy {
            // A create of a fresh channel: answered with its name, whatever came before.
            format!("{{\"CreateChannel\":\"barrier-{barrier}\"}}")
        } else {
            format!("{{\"op\":\"ping\",\"id\":\"barrier-{barrier}\"}}")
        };
        let ws = self.ws().await;
        let sent = async {
            ws.send(msg).await?;
            ws.send(Message::Text(Utf8Bytes::from(barrier_req))).await
        }
        .await;
        let ended = loop {
            let next = tokio::time::timeout(T, ws.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("no answer within {T:?} to input {input:?} (a hang or a silent drop)")
                });
            match next {
                Some(Ok(Message::Text(t))) => {
                    let t = t.to_string();
                    if legacy {
                        if t.contains(&format!("barrier-{barrier}")) {
                            break None;
                        }
                        // The original protocol answers in its own texts; each must be JSON.
                        serde_json::from_str::<Value>(&t)
                            .unwrap_or_else(|e| panic!("non-JSON {t:?} ({e}) for {input:?}"));
                    } else {
                        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
                        if v["id"] == format!("barrier-{barrier}") {
                            break None;
                        }
                        check_v1_message(&t, input);
                    }
                }
                Some(Ok(Message::Close(f))) => break Some(f.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break Some(None),
            }
        };
        if let Some(code) = ended {
            let code = code.unwrap_or_else(|| {
                panic!("connection dropped without a close frame after {input:?} ({sent:?})")
            });
            assert!(
                DOCUMENTED_CLOSES.contains(&code),
                "undocumented close code {code} after {input:?}"
            );
            *self.closes.entry(code).or_default() += 1;
            self.ws = None;
        }
    }
}

/// An HTTP/1.1 request from `from` (a loopback source address); returns status and body.
async fn http_from(
    from: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s: TcpStream = socket.connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body);
    s.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(T, s.read_to_end(&mut buf))
        .await
        .expect("an HTTP answer in time")
        .expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, buf[split + 4..].to_vec())
}

/// Checks an HTTP answer: a 2xx, or an error body whose code is documented and whose status is
/// the code's documented status.
fn check_http(status: u16, body: &[u8], input: &[u8]) {
    if (200..300).contains(&status) {
        return;
    }
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "HTTP {status} with a non-JSON body ({e}) {:?} for input {input:?}",
            String::from_utf8_lossy(body)
        )
    });
    let code = v["error"]["code"].as_str().unwrap_or_default();
    let known = ErrorCode::ALL
        .iter()
        .find(|c| c.as_str() == code)
        .unwrap_or_else(|| panic!("undocumented error {v} (HTTP {status}) for input {input:?}"));
    assert_eq!(
        known.http_status(),
        status,
        "status of {code} for input {input:?}"
    );
}

/// Whether `v` may go in an HTTP header value (visible ASCII and spaces, no CR/LF).
fn header_safe(v: &[u8]) -> bool {
    !v.is_empty() && v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Proves the gateway still serves: from another loopback address, a subscriber on the public
/// listener receives what a publisher sends over HTTP on the private one.
async fn still_serves(srv: &TestServer) {
    let (status, body) = http_from(
        "127.0.0.2",
        srv.addr("private"),
        "PUT",
        "/v1/channels/after-the-storm",
        &[],
        b"",
    )
    .await;
    assert!(
        status == 201 || status == 200,
        "create after replay: {status} {:?}",
        String::from_utf8_lossy(&body)
    );
    let mut sub = v1(&srv.url("public")).await;
    let r = call(
        &mut sub,
        r#"{"op":"subscribe","id":1,"channel":"after-the-storm"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let (status, _) = http_from(
        "127.0.0.2",
        srv.addr("private"),
        "POST",
        "/v1/channels/after-the-storm/messages",
        &[],
        br#"{"still":"here"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let m = recv_json(&mut sub).await;
    assert_eq!(m["data"]["still"], "here", "{m}");
}

#[tokio::test]
async fn websocket_commands_from_the_corpora_get_documented_answers() {
    let srv = TestServer::start(&config()).await;
    // Protocol v1 on the open private listener and on the publisher-auth one (where most ops
    // are refused before authentication), the original protocol on the private listener.
    for (listener, protocol, target) in [
        ("private", Some("tslm.v1"), "v1_request"),
        ("pubauth", Some("tslm.v1"), "v1_request"),
        ("subauth", Some("tslm.v1"), "v1_request"),
        ("private", None, "legacy_request"),
    ] {
        let mut r = Replayer::new(srv.url(listener), protocol);
        let all = inputs(target);
        for input in &all {
            r.feed(input).await;
        }
        eprintln!(
            "{target} on {listener}: {} inputs, closes by code {:?}",
            all.len(),
            r.closes
        );
    }
    still_serves(&srv).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn http_bodies_and_channel_options_from_the_corpora_get_documented_answers() {
    let srv = TestServer::start(&config()).await;
    let private = srv.addr("private");
    let mut statuses: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for (i, input) in inputs("http_body").iter().enumerate() {
        let path = format!("/v1/channels/corpus-{}/messages", i % 7);
        let (status, body) = http_from("127.0.0.1", private, "POST", &path, &[], input).await;
        check_http(status, &body, input);
        *statuses.entry(("publish", status)).or_default() += 1;
    }
    for (i, input) in inputs("channel_options").iter().enumerate() {
        let path = format!("/v1/channels/options-{i}");
        let (status, body) = http_from("127.0.0.1", private, "PUT", &path, &[], input).await;
        check_http(status, &body, input);
        *statuses.entry(("create", status)).or_default() += 1;
    }
    eprintln!("HTTP answers by operation and status: {statuses:?}");
    still_serves(&srv).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn credentials_from_the_corpora_authenticate_nobody_and_get_documented_answers() {
    let srv = TestServer::start(&config()).await;
    let pubauth = srv.addr("pubauth");
    let subauth = srv.addr("subauth");
    let mut skipped = 0;
    let mut tokens = inputs("auth_inputs");
    tokens.extend(inputs("access_token"));
    for input in &tokens {
        if !header_safe(input) {
            skipped += 1;
            continue;
        }
        let mut bearer = b"Bearer ".to_vec();
        bearer.extend_from_slice(input);
        // As a publisher's bearer token over HTTP: never accepted.
        let (status, body) = http_from(
            "127.0.0.1",
            pubauth,
            "POST",
            "/v1/channels/bills.x/messages",
            &[("Authorization", &bearer)],
            b"1",
        )
        .await;
        check_http(status, &body, input);
        assert!(
            status == 401 || status == 429,
            "a corpus token must not publish: {status}"
        );
        // As a signature of a signed request.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let (status, body) = http_from(
            "127.0.0.1",
            pubauth,
            "POST",
            "/v1/channels/bills.x/messages",
            &[
                ("TSLM-Publisher", b"billing"),
                ("TSLM-Timestamp", now.as_bytes()),
                ("TSLM-Signature", input),
            ],
            b"1",
        )
        .await;
        check_http(status, &body, input);
        assert!(
            status == 401 || status == 429,
            "a corpus signature must not publish: {status}"
        );
        // As a subscriber's access token at the WebSocket handshake: refused before the upgrade.
        let mut req = format!("ws://{subauth}/").into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("tslm.v1"),
        );
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_bytes(&bearer).expect("header-safe"),
        );
        match tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
            .await
            .expect("a handshake answer in time")
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                check_http(status, &body, input);
                assert!(status == 401 || status == 429, "{status}");
            }
            // A header with nothing usable in it (blank after `Bearer`) is no credential: the
            // connection opens as anonymous and must authenticate before its deadline. It must
            // not be able to read anything.
            Ok((mut ws, _)) => {
                let r = call(&mut ws, r#"{"op":"subscribe","id":1,"channel":"bills.x"}"#).await;
                assert_eq!(
                    r["error"]["code"], "unauthorized",
                    "a corpus token {input:?} opened a connection that may read: {r}"
                );
            }
            Err(e) => panic!("handshake failed without an HTTP answer: {e} for {input:?}"),
        }
    }
    // The corpora hold non-header inputs too, but not only those.
    assert!(skipped < tokens.len(), "every credential input was skipped");
    eprintln!(
        "{} credential inputs, {skipped} not header-safe",
        tokens.len()
    );

    // The v1 `auth` op with the same inputs as a subscriber token: refused, documented.
    let mut r = Replayer::new(srv.url("subauth"), Some("tslm.v1"));
    for input in &tokens {
        let Ok(text) = std::str::from_utf8(input) else {
            continue;
        };
        let req = serde_json::json!({"op": "auth", "id": "t", "token": text}).to_string();
        r.feed(req.as_bytes()).await;
    }

    // The real publisher token still works, from another address.
    let (status, body) = http_from(
        "127.0.0.2",
        pubauth,
        "POST",
        "/v1/channels/bills.ok/messages",
        &[(
            "Authorization",
            format!("Bearer {BILLING_TOKEN}").as_bytes(),
        )],
        b"1",
    )
    .await;
    assert_eq!(status, 200, "{:?}", String::from_utf8_lossy(&body));
    still_serves(&srv).await;
    srv.shutdown().await;
}
