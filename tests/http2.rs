//! HTTP/2 on a TLS listener over real sockets: ALPN, many event streams on one connection, the
//! limits an HTTP/2 server needs (concurrent streams, refused-stream and rapid-reset floods,
//! CONTINUATION floods, streams counted under the per-address cap), HTTP/1.1 and WebSocket
//! beside it, and GOAWAY at shutdown. Well-behaved clients use the `h2` crate (hyper's own
//! HTTP/2); hostile ones write raw frames, as an attacker would.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use common::*;
use common::{http_create as create, http_publish as publish};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

// ---------------------------------------------------------------------------------------------
// A TLS server and clients

/// A CA, a certificate for `localhost` it issued, and the files the server reads.
struct Pki {
    ca: CertificateDer<'static>,
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "test ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &*ca)
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "tslm-http2-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        Self {
            ca: ca.der().clone(),
            dir,
        }
    }

    /// A server with `public` (TLS, subscribe, `extra` TOML) and `private` (plain, publish).
    async fn server(&self, extra: &str) -> TestServer {
        TestServer::start(&format!(
            "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
             tls_cert='{}'\ntls_key='{}'\n{extra}\n\
             [listener.private]\nip='127.0.0.1'\nport=0\n\
             default_endpoint_permissions=['CreateChannel','NotifyChannel']\n",
            self.dir.join("cert.pem").display(),
            self.dir.join("key.pem").display(),
        ))
        .await
    }

    /// A TLS connection to `addr` offering `alpn` (none: no ALPN extension).
    async fn connect(&self, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// An HTTP/2 client (the `h2` crate) on a connection that negotiated `h2`.
    async fn h2(&self, addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
        let tls = self.connect(addr, &[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        send
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An event stream opened with the `h2` crate: its status and body.
async fn events(send: &mut h2::client::SendRequest<Bytes>, query: &str) -> (u16, h2::RecvStream) {
    let req = http::Request::get(format!("https://localhost/v1/events?{query}"))
        .body(())
        .unwrap();
    let ready = tokio::time::timeout(T, send.clone().ready())
        .await
        .expect("a stream slot in time")
        .unwrap();
    *send = ready;
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(T, resp)
        .await
        .expect("an answer in time")
        .unwrap();
    (resp.status().as_u16(), resp.into_body())
}

/// Reads `body` until its text contains `needle`; returns all the text read.
async fn read_until(body: &mut h2::RecvStream, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = tokio::time::timeout(T, body.data())
            .await
            .unwrap_or_else(|_| panic!("{needle:?} in time; got {text:?}"))
            .unwrap_or_else(|| panic!("stream ended before {needle:?}; got {text:?}"))
            .unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Raw frames, for the hostile clients

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const ACK: u8 = 1;
const REFUSED_STREAM: u32 = 7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK block for `GET https://localhost{path}` (static-table names, literal values).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
    for (index, value) in [(4u8, path), (1u8, "localhost")] {
        b.push(index); // literal without indexing, name from the static table (:path, :authority)
        assert!(value.len() < 127);
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// A frame as read: kind, flags, stream, payload.
type Frame = (u8, u8, u32, Vec<u8>);

struct Raw {
    tls: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Raw {
    /// Preface and empty SETTINGS sent; the server's SETTINGS read and acknowledged.
    async fn connect(pki: &Pki, addr: SocketAddr) -> (Raw, Vec<(u16, u32)>) {
        let tls = pki.connect(addr, &[b"h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut raw = Raw {
            tls,
            buf: Vec::new(),
        };
        raw.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        raw.send(&frame(SETTINGS, 0, 0, &[])).await;
        let (kind, flags, _, payload) = raw.next().await.expect("server settings");
        assert_eq!((kind, flags), (SETTINGS, 0));
        raw.send(&frame(SETTINGS, ACK, 0, &[])).await;
        let settings = payload
            .chunks(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect();
        (raw, settings)
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed (that is what some tests wait for).
        let _ = self.tls.write_all(bytes).await;
        let _ = self.tls.flush().await;
    }

    /// The next frame; `None` once the connection is closed.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff;
                    return Some((f[3], f[4], stream, f[9..].to_vec()));
                }
            }
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(T, self.tls.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until a GOAWAY; returns its error code (`None`: closed without one).
    ///
    /// A server that ends a connection while the client's flood is still unread in its socket
    /// closes it with a TCP reset, which may destroy the GOAWAY before the client reads it: the
    /// hostile tests accept that (the connection ended either way; without the limit under test
    /// it would stay open and the read would time out, failing the test).
    async fn goaway(&mut self) -> Option<u32> {
        while let Some((kind, _, _, payload)) = self.next().await {
            if kind == GOAWAY {
                return Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn alpn_picks_h2_and_one_connection_carries_more_than_six_event_streams() {
    let pki = Pki::new();
    let s = pki.server("").await;
    create(&s, "news").await;
    let mut send = pki.h2(s.addr("public")).await;
    let mut bodies = Vec::new();
    for _ in 0..10 {
        let (status, mut body) = events(&mut send, "channel=news").await;
        assert_eq!(status, 200);
        read_until(&mut body, "event: subscribed").await;
        bodies.push(body);
    }
    publish(&s, "news", "\"to all ten\"").await;
    for body in &mut bodies {
        let text = read_until(body, "to all ten").await;
        assert!(text.contains("event: message"), "{text}");
    }
    // The API is served on the same connection too.
    let req = http::Request::get("https://localhost/readyz")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    s.shutdown().await;
}

#[tokio::test]
async fn http11_clients_and_websockets_keep_working_on_the_tls_listener() {
    let pki = Pki::new();
    let s = pki.server("").await;
    let addr = s.addr("public");
    // A client offering only HTTP/1.1, and one offering nothing: HTTP/1.1 both.
    for alpn in [&[&b"http/1.1"[..]][..], &[]] {
        let mut tls = pki.connect(addr, alpn).await;
        let chosen = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(chosen, (!alpn.is_empty()).then(|| b"http/1.1".to_vec()));
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.unwrap_or_default();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    }
    // A WebSocket handshake over TLS (a browser opens WebSockets over HTTP/1.1: the server does
    // not offer extended CONNECT on its HTTP/2 connections).
    let tls = pki.connect(addr, &[b"http/1.1"]).await;
    let (mut ws, resp) = tokio_tungstenite::client_async(
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            "wss://localhost/",
        )
        .map(|mut r| {
            r.headers_mut()
                .insert("Sec-WebSocket-Protocol", "tslm.v1".parse().unwrap());
            r
        })
        .unwrap(),
        tls,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        r#"{"op":"ping","id":1}"#,
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(reply.to_text().unwrap().contains("\"id\":1"), "{reply:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn http2_can_be_turned_off_per_listener() {
    let pki = Pki::new();
    let s = pki.server("http2 = false").await;
    let tls = pki.connect(s.addr("public"), &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    s.shutdown().await;
}

#[tokio::test]
async fn the_stream_beyond_the_limit_is_refused_and_a_flood_of_them_ends_the_connection() {
    let pki = Pki::new();
    let s = pki.server("http2_max_concurrent_streams = 4").await;
    create(&s, "c").await;
    let (mut raw, settings) = Raw::connect(&pki, s.addr("public")).await;
    // SETTINGS_MAX_CONCURRENT_STREAMS (3) and SETTINGS_MAX_HEADER_LIST_SIZE (6) announced.
    assert!(settings.contains(&(3, 4)), "{settings:?}");
    assert!(settings.contains(&(6, 16 * 1024)), "{settings:?}");
    // No SETTINGS_ENABLE_CONNECT_PROTOCOL (8): browsers open WebSockets over HTTP/1.1.
    assert!(!settings.iter().any(|(id, _)| *id == 8), "{settings:?}");
    let block = get_block("/v1/events?channel=c");
    for id in [1u32, 3, 5, 7, 9] {
        raw.send(&frame(HEADERS, END_STREAM | END_HEADERS, id, &block))
            .await;
    }
    // Four streams answered, the fifth refused.
    let mut answered = Vec::new();
    let refused = loop {
        let (kind, _, stream, payload) = raw.next().await.expect("frames");
        match kind {
            HEADERS => answered.push(stream),
            RST_STREAM => break (stream, u32::from_be_bytes(payload[..4].try_into().unwrap())),
            _ => {}
        }
    };
    assert_eq!(refused, (9, REFUSED_STREAM));
    // A client that keeps opening streams past the limit (1000 of them) is told to go away
    // long before the end, and the connection closes.
    for i in 0..1000u32 {
        raw.send(&frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            11 + 2 * i,
            &block,
        ))
        .await;
    }
    let end = raw.goaway().await;
    assert!(matches!(end, Some(ENHANCE_YOUR_CALM) | None), "{end:?}");
    assert!(answered.len() <= 4, "{answered:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn a_rapid_reset_flood_ends_in_goaway_and_another_clients_stream_is_unharmed() {
    let pki = Pki::new();
    let s = pki.server("").await;
    create(&s, "c").await;
    let mut send = pki.h2(s.addr("public")).await;
    let (status, mut victim) = events(&mut send, "channel=c").await;
    assert_eq!(status, 200);
    read_until(&mut victim, "event: subscribed").await;

    let (mut raw, _) = Raw::connect(&pki, s.addr("public")).await;
    let block = get_block("/v1/events?channel=c");
    // Open and cancel streams in batches, as fast as the socket takes them (CVE-2023-44487).
    let mut burst = Vec::new();
    for i in 0..500u32 {
        let id = 1 + 2 * i;
        burst.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
    }
    raw.send(&burst).await;
    // Streams reset before we accepted them end it with ENHANCE_YOUR_CALM (the `h2` crate's
    // count); any the server accepted before their reset arrived spend the cancel budget, which
    // ends it with NO_ERROR.
    let end = raw.goaway().await;
    assert!(
        matches!(end, Some(ENHANCE_YOUR_CALM) | Some(0) | None),
        "{end:?}"
    );

    publish(&s, "c", "\"still here\"").await;
    read_until(&mut victim, "still here").await;
    s.shutdown().await;
}

#[tokio::test]
async fn cancelling_requests_already_accepted_too_fast_ends_in_goaway() {
    let pki = Pki::new();
    let s = pki.server("").await;
    create(&s, "c").await;
    // A cursor, so that a poll waits for a publish instead of answering at once.
    let mut send = pki.h2(s.addr("public")).await;
    let req = http::Request::get("https://localhost/v1/poll?channel=c")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        text.extend_from_slice(&chunk.unwrap());
    }
    let cursor = serde_json::from_slice::<serde_json::Value>(&text).unwrap()["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let block = get_block(&format!("/v1/poll?channel=c&cursor={cursor}"));
    // Polls accepted and waiting (a PING answered after them is the barrier), then cancelled:
    // the rapid reset the pending-accept count cannot see. 20 a second are allowed.
    let (mut raw, _) = Raw::connect(&pki, s.addr("public")).await;
    let batch = |ids: std::ops::Range<u32>| {
        let mut opened = Vec::new();
        let mut cancelled = Vec::new();
        for id in ids.map(|i| 1 + 2 * i) {
            opened.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
            cancelled.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        opened.extend(frame(PING, 0, 0, &[7; 8]));
        (opened, cancelled)
    };
    let mut goaway = None;
    for (round, ids) in [0..10, 10..60].into_iter().enumerate() {
        let (opened, cancelled) = batch(ids);
        raw.send(&opened).await;
        loop {
            match raw.next().await.expect("frames") {
                (PING, ACK, _, _) => break,
                (GOAWAY, ..) => panic!("GOAWAY before the streams were cancelled"),
                _ => {}
            }
        }
        raw.send(&cancelled).await;
        if round == 0 {
            // Ten cancels are within the budget: the connection still serves.
            raw.send(&frame(PING, 0, 0, &[8; 8])).await;
            loop {
                match raw.next().await.expect("frames") {
                    (PING, ACK, _, _) => break,
                    (GOAWAY, ..) => panic!("GOAWAY within the budget"),
                    _ => {}
                }
            }
        } else {
            goaway = raw.goaway().await;
        }
    }
    assert_eq!(goaway, Some(0), "GOAWAY with NO_ERROR");
    s.shutdown().await;
}
#[tokio::test]
async fn a_continuation_flood_ends_the_connection() {
    let pki = Pki::new();
    let s = pki.server("").await;
    let (mut raw, _) = Raw::connect(&pki, s.addr("public")).await;
    // A header block that never ends: empty CONTINUATION frames, each costing the attacker 9
    // bytes (CVE-2024-27316 and friends).
    let mut flood = frame(HEADERS, END_STREAM, 1, &get_block("/healthz"));
    for _ in 0..10_000 {
        flood.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    raw.send(&flood).await;
    let end = raw.goaway().await;
    assert!(matches!(end, Some(ENHANCE_YOUR_CALM) | None), "{end:?}");
    s.shutdown().await;
}

#[tokio::test]
async fn an_answer_that_closes_the_connection_sends_goaway_instead() {
    let pki = Pki::new();
    let s = pki.server("auth_tokens = ['secret']").await;
    let (mut raw, _) = Raw::connect(&pki, s.addr("public")).await;
    // Requests without the listener's token, one after another: each a 401 until the
    // connection's budget of failed authentications (10 a second) is spent; that answer closes
    // an HTTP/1.1 connection, and ends an HTTP/2 connection with GOAWAY.
    let block = get_block("/v1/events?channel=c");
    let mut id = 1;
    let goaway = loop {
        raw.send(&frame(HEADERS, END_STREAM | END_HEADERS, id, &block))
            .await;
        id += 2;
        let mut answered = false;
        let mut goaway = None;
        while !answered && goaway.is_none() {
            match raw.next().await.expect("frames") {
                (HEADERS, _, _, _) => answered = true,
                (GOAWAY, _, _, payload) => {
                    goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()))
                }
                _ => {}
            }
        }
        if let Some(code) = goaway {
            break code;
        }
        assert!(id < 100, "no GOAWAY after {} requests", id / 2);
    };
    assert_eq!(goaway, 0, "GOAWAY with NO_ERROR");
    assert!(
        id / 2 > 10,
        "GOAWAY after the budget only ({} requests)",
        id / 2
    );
    s.shutdown().await;
}

#[tokio::test]
async fn streams_count_against_the_per_address_connection_cap() {
    let pki = Pki::new();
    let s = pki
        .server("max_connections_per_ip = 3\nhandshakes_per_ip_per_second = 1000")
        .await;
    create(&s, "c").await;
    let mut send = pki.h2(s.addr("public")).await;
    // The connection's place carries one stream; each other stream takes a place of its own:
    // three streams fill the address's three places, as three HTTP/1.1 connections would.
    let mut open = Vec::new();
    for _ in 0..3 {
        let (status, mut body) = events(&mut send, "channel=c").await;
        assert_eq!(status, 200);
        read_until(&mut body, "event: subscribed").await;
        open.push(body);
    }
    let (status, mut body) = events(&mut send, "channel=c").await;
    assert_eq!(status, 429);
    let text = read_until(&mut body, "rate_limited").await;
    assert!(
        text.contains("too many connections from your address"),
        "{text}"
    );
    // Nor can the address open another connection meanwhile: refused with 429 at once, in
    // HTTP/1.1 even to a client offering h2 (the refusal's TLS offers only `http/1.1`, so a
    // browser reads the answer instead of failing on HTTP/1.1 bytes in an HTTP/2 connection).
    let mut tls = pki.connect(s.addr("public"), &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    // A stream that ends gives its place back.
    drop(open.pop());
    s.wait_for("the stream's place to be given back", |s| {
        s.hub.stats().subscriptions == 2
    })
    .await;
    let (status, mut body) = events(&mut send, "channel=c").await;
    assert_eq!(status, 200);
    read_until(&mut body, "event: subscribed").await;
    s.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_goaway_and_event_streams_end_as_over_http11() {
    let pki = Pki::new();
    let s = pki.server("").await;
    create(&s, "c").await;
    let (mut raw, _) = Raw::connect(&pki, s.addr("public")).await;
    raw.send(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &get_block("/v1/events?channel=c"),
    ))
    .await;
    let mut text = String::new();
    while !text.contains("event: subscribed") {
        let (kind, _, _, payload) = raw.next().await.expect("frames");
        if kind == DATA {
            text.push_str(&String::from_utf8_lossy(&payload));
        }
    }
    let stopping = tokio::spawn(s.shutdown());
    let (mut goaway, mut ended) = (None, false);
    while let Some((kind, flags, stream, payload)) = raw.next().await {
        match kind {
            GOAWAY if goaway.is_none() => {
                goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
            DATA if stream == 1 => {
                text.push_str(&String::from_utf8_lossy(&payload));
                if flags & END_STREAM != 0 {
                    ended = true;
                }
            }
            _ => {}
        }
    }
    assert_eq!(goaway, Some(0), "GOAWAY with NO_ERROR");
    assert!(ended, "the event stream ended cleanly: {text}");
    let end = text.split("event: end").nth(1).expect("an `end` event");
    assert!(end.contains("\"reason\""), "{text}");
    tokio::time::timeout(std::time::Duration::from_secs(30), stopping)
        .await
        .unwrap()
        .unwrap();
}

/// An event stream over HTTP/1.1 on a TLS listener is served outside hyper as over plain TCP:
/// its events arrive, and a request sent after its head ends it and is answered.
#[tokio::test]
async fn an_http11_event_stream_over_tls_streams_and_ends_at_the_next_request() {
    let pki = Pki::new();
    let s = pki.server("").await;
    create(&s, "c").await;
    let mut tls = pki.connect(s.addr("public"), &[b"http/1.1"]).await;
    tls.write_all(b"GET /v1/events?channel=c HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let has = |raw: &[u8], s: &str| raw.windows(s.len()).any(|w| w == s.as_bytes());
    while !has(&raw, "event: subscribed") {
        let n = tokio::time::timeout(T, tls.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    publish(&s, "c", "1").await;
    while !has(&raw, "event: message") {
        let n = tokio::time::timeout(T, tls.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        raw.extend_from_slice(&chunk[..n]);
    }
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(T, tls.read_to_end(&mut rest)).await;
    let rest = String::from_utf8_lossy(&rest);
    let (_, next) = rest
        .split_once("0\r\n\r\n")
        .expect("the stream's last chunk");
    assert!(next.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
    s.shutdown().await;
}
