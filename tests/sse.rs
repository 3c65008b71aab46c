//! Server-Sent Events (`GET /v1/events`) over real sockets: several channels on one stream, ids
//! that resume every channel with `Last-Event-ID` while publishes race the reconnect, loss
//! reports, bad ids, headers, payloads with line breaks, token expiry and shutdown.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use common::{http_create as create, http_publish as publish};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One event as a client sees it: its `event`, `id` and `data` (lines joined by `\n`).
#[derive(Debug, Clone)]
struct Ev {
    event: String,
    id: String,
    data: String,
    retry: Option<u64>,
}

impl Ev {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// A raw SSE client: the response head, then events as they come (the body's chunked encoding
/// decoded as it arrives).
struct Stream {
    tcp: TcpStream,
    /// Bytes read and not yet decoded.
    raw: Vec<u8>,
    /// The decoded body not yet consumed.
    body: Vec<u8>,
    head: String,
}

impl Stream {
    async fn open(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Stream, (u16, String)> {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "GET /v1/events?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut s = Stream {
            tcp,
            raw: Vec::new(),
            body: Vec::new(),
            head: String::new(),
        };
        while !s.raw.windows(4).any(|w| w == b"\r\n\r\n") {
            s.read_more().await;
        }
        let i = s.raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head: Vec<u8> = s.raw.drain(..i + 4).collect();
        let head = String::from_utf8(head).unwrap();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        if status != 200 {
            return Err((status, head));
        }
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        s.head = head;
        Ok(s)
    }

    async fn read_more(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(T, self.tcp.read(&mut chunk))
            .await
            .expect("stream data in time")
            .unwrap();
        assert!(
            n > 0,
            "stream ended; undecoded: {:?}",
            String::from_utf8_lossy(&self.raw)
        );
        self.raw.extend_from_slice(&chunk[..n]);
    }

    /// Moves every complete chunk of `raw` into `body`.
    fn decode(&mut self) {
        loop {
            let Some(i) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.raw[..i]).unwrap().trim(), 16)
                    .expect("a chunk size");
            if self.raw.len() < i + 2 + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[i + 2..i + 2 + size]);
            self.raw.drain(..i + 2 + size + 2);
        }
    }

    /// Body text up to and including `end`.
    async fn until(&mut self, end: &[u8]) -> String {
        loop {
            self.decode();
            if let Some(i) = self.body.windows(end.len()).position(|w| w == end) {
                let out: Vec<u8> = self.body.drain(..i + end.len()).collect();
                return String::from_utf8(out).unwrap();
            }
            self.read_more().await;
        }
    }

    /// The next event (comments and the first `retry:` block skipped).
    async fn next(&mut self) -> Ev {
        loop {
            let block = self.until(b"\n\n").await;
            let mut ev = Ev {
                event: String::new(),
                id: String::new(),
                data: String::new(),
                retry: None,
            };
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    ev.event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    ev.id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push(v);
                } else if let Some(v) = line.strip_prefix("retry: ") {
                    ev.retry = v.parse().ok();
                }
            }
            ev.data = data.join("\n");
            if !ev.event.is_empty() {
                return ev;
            }
        }
    }
}

#[tokio::test]
async fn one_stream_carries_several_channels_with_ids_that_resume_them_all() {
    let s = TestServer::default().await;
    create(&s, "a").await;
    create(&s, "b").await;
    publish(&s, "b", "1").await;
    publish(&s, "b", "{\"k\":\n [1,\r\n 2]}").await;
    let mut st = Stream::open(s.addr("public"), "channel=a&channel=b@oldest", &[])
        .await
        .unwrap();
    let head = st.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(
        head.contains("cache-control: no-cache, no-transform"),
        "{head}"
    );
    assert!(head.contains("x-accel-buffering: no"), "{head}");
    assert!(!head.contains("content-encoding"), "{head}");
    let (e1, e2) = (st.next().await, st.next().await);
    assert_eq!(
        (e1.event.as_str(), e1.json()["channel"].as_str()),
        ("subscribed", Some("a"))
    );
    assert_eq!(
        (e2.event.as_str(), e2.json()["channel"].as_str()),
        ("subscribed", Some("b"))
    );
    let m1 = st.next().await;
    assert_eq!(
        (m1.json()["channel"].as_str(), m1.json()["offset"].as_u64()),
        (Some("b"), Some(1))
    );
    let m2 = st.next().await;
    // A payload with line breaks came as several `data:` lines; joined, it is the JSON.
    assert_eq!(m2.json()["data"]["k"][1], 2, "{m2:?}");
    // Live: a publish on `a` arrives on the same stream.
    publish(&s, "a", "\"live\"").await;
    let m3 = st.next().await;
    assert_eq!(
        (m3.json()["channel"].as_str(), m3.json()["data"].as_str()),
        (Some("a"), Some("live"))
    );
    // Its id names both channels' positions: resuming from it gives what follows, nothing else.
    let last_id = m3.id.clone();
    drop(st);
    publish(&s, "b", "3").await;
    publish(&s, "a", "\"after\"").await;
    let mut again = Stream::open(
        s.addr("public"),
        "channel=a&channel=b@oldest",
        &[("Last-Event-ID", &last_id)],
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let e = again.next().await;
        assert_eq!(e.event, "message", "{e:?}");
        got.push((
            e.json()["channel"].as_str().unwrap().to_owned(),
            e.json()["offset"].as_u64().unwrap(),
        ));
    }
    got.sort();
    assert_eq!(got, [("a".to_owned(), 2), ("b".to_owned(), 3)]);
    // A client that goes leaves no subscription behind.
    drop(again);
    s.wait_for("the stream's subscriptions to end", |s| {
        s.hub.stats().subscriptions == 0
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_reconnect_racing_publishes_gets_every_offset_exactly_once() {
    let s = TestServer::default().await;
    create(&s, "r").await;
    let mut seen = Vec::new();
    let mut id = String::new();
    let addr = s.addr("public");
    for round in 0..4 {
        let mut st = if id.is_empty() {
            Stream::open(addr, "channel=r", &[]).await.unwrap()
        } else {
            Stream::open(addr, "channel=r", &[("Last-Event-ID", &id)])
                .await
                .unwrap()
        };
        if round == 0 {
            assert_eq!(st.next().await.event, "subscribed");
        }
        // Publishes race the stream: some land before it reads, some after.
        for _ in 0..5 {
            publish(&s, "r", "1").await;
        }
        for _ in 0..3 {
            let e = st.next().await;
            assert_eq!(e.event, "message", "{e:?}");
            seen.push(e.json()["offset"].as_u64().unwrap());
            id = e.id.clone();
        }
        drop(st); // the network drops with messages in flight
    }
    let mut st = Stream::open(addr, "channel=r", &[("Last-Event-ID", &id)])
        .await
        .unwrap();
    while seen.len() < 20 {
        let e = st.next().await;
        seen.push(e.json()["offset"].as_u64().unwrap());
    }
    assert_eq!(seen, (1..=20).collect::<Vec<_>>());
    s.shutdown().await;
}

#[tokio::test]
async fn losses_are_reported_and_bad_ids_refused() {
    let s = TestServer::start(&format!(
        "{}[channel.\"small.*\"]\nbacklog_messages = 2\n",
        two_listeners("")
    ))
    .await;
    create(&s, "small.1").await;
    let mut st = Stream::open(s.addr("public"), "channel=small.1", &[])
        .await
        .unwrap();
    let first = st.next().await;
    drop(st);
    for i in 1..=5 {
        publish(&s, "small.1", &i.to_string()).await;
    }
    let mut st = Stream::open(
        s.addr("public"),
        "channel=small.1",
        &[("Last-Event-ID", &first.id)],
    )
    .await
    .unwrap();
    let lost = st.next().await;
    assert_eq!(lost.event, "subscribed");
    assert_eq!(lost.json()["lost"]["reason"], "expired", "{lost:?}");
    assert_eq!(
        (
            lost.json()["lost"]["from"].as_u64(),
            lost.json()["lost"]["to"].as_u64()
        ),
        (Some(1), Some(3))
    );
    assert_eq!(st.next().await.json()["offset"], 4);
    assert_eq!(st.next().await.json()["offset"], 5);
    drop(st);
    // Malformed, foreign (another channel list) and non-UTF-8-free ids: 400, never a fresh start.
    create(&s, "other").await;
    for id in ["nonsense", first.id.as_str()] {
        let q = if id == "nonsense" {
            "channel=small.1"
        } else {
            "channel=other"
        };
        let (status, head) = Stream::open(s.addr("public"), q, &[("Last-Event-ID", id)])
            .await
            .err()
            .unwrap();
        assert_eq!(status, 400, "{id}: {head}");
    }
    let (status, _) = Stream::open(s.addr("public"), "channel=nope", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 404);
    let (status, _) = Stream::open(s.addr("public"), "channel=small.1&wait=5", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = Stream::open(s.addr("private"), "channel=small.1", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 403);
    s.shutdown().await;
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    use base64::Engine;
    let secret = b"sse-test-secret-of-at-least-32-bytes!!";
    let s = TestServer::start(&format!(
        "{}[issuer.shared]\nissuer = 'sse'\naudiences = ['tslm']\nchannels_claim = 'c'\nsecret = '{}'\nleeway_seconds = 0\n\
         [channel.\"secure.*\"]\nsubscribers = 'authenticated'\n",
        two_listeners(""),
        base64::engine::general_purpose::STANDARD.encode(secret)
    ))
    .await;
    create(&s, "secure.1").await;
    let (status, _) = Stream::open(s.addr("public"), "channel=secure.1", &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"iss":"sse","aud":"tslm","sub":"u","exp":now+2,"iat":now,"c":["secure.*"]}),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    let auth = format!("Bearer {token}");
    let mut st = Stream::open(
        s.addr("public"),
        "channel=secure.1",
        &[("Authorization", &auth)],
    )
    .await
    .unwrap();
    assert_eq!(st.next().await.event, "subscribed");
    let end = st.next().await;
    assert_eq!(end.event, "end", "{end:?}");
    assert_eq!(end.json()["reason"], "token_expired");
    s.shutdown().await;
}

/// Token refresh on SSE: a stream carries one token, so a client with a new token opens a new
/// stream with it and the `Last-Event-ID` of the last event it had; every channel resumes from
/// there, with nothing lost and nothing twice, also for what was published in between.
#[tokio::test]
async fn a_new_token_resumes_the_stream_with_last_event_id_and_loses_nothing() {
    use base64::Engine;
    let secret = b"sse-test-secret-of-at-least-32-bytes!!";
    let s = TestServer::start(&format!(
        "{}[issuer.shared]\nissuer = 'sse'\naudiences = ['tslm']\nchannels_claim = 'c'\nsecret = '{}'\nleeway_seconds = 0\n\
         [channel.\"secure.*\"]\nsubscribers = 'authenticated'\n",
        two_listeners(""),
        base64::engine::general_purpose::STANDARD.encode(secret)
    ))
    .await;
    let token = |lifetime: u64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"iss":"sse","aud":"tslm","sub":"u","exp":now+lifetime,"iat":now,"c":["secure.*"]}),
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    create(&s, "secure.1").await;
    let first = format!("Bearer {}", token(2));
    let mut st = Stream::open(
        s.addr("public"),
        "channel=secure.1",
        &[("Authorization", &first)],
    )
    .await
    .unwrap();
    assert_eq!(st.next().await.event, "subscribed");
    publish(&s, "secure.1", "1").await;
    let m1 = st.next().await;
    assert_eq!(m1.json()["offset"], 1, "{m1:?}");
    // The token runs out; messages published meanwhile wait in the backlog.
    let end = st.next().await;
    assert_eq!(end.json()["reason"], "token_expired", "{end:?}");
    publish(&s, "secure.1", "2").await;
    publish(&s, "secure.1", "3").await;
    // The old token is refused; the new one with `Last-Event-ID` resumes after offset 1.
    let (status, _) = Stream::open(
        s.addr("public"),
        "channel=secure.1",
        &[("Authorization", &first), ("Last-Event-ID", &m1.id)],
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status, 401);
    let second = format!("Bearer {}", token(300));
    let mut st = Stream::open(
        s.addr("public"),
        "channel=secure.1",
        &[("Authorization", &second), ("Last-Event-ID", &m1.id)],
    )
    .await
    .unwrap();
    let a = st.next().await;
    let b = st.next().await;
    assert_eq!((a.event.as_str(), b.event.as_str()), ("message", "message"));
    assert_eq!(
        (a.json()["offset"].as_u64(), b.json()["offset"].as_u64()),
        (Some(2), Some(3))
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_stream_ends_at_shutdown_with_when_to_come_back() {
    let s = TestServer::default().await;
    create(&s, "a").await;
    let mut st = Stream::open(s.addr("public"), "channel=a", &[])
        .await
        .unwrap();
    assert_eq!(st.next().await.event, "subscribed");
    let stopping = tokio::spawn(s.shutdown());
    let end = st.next().await;
    assert_eq!(end.event, "end", "{end:?}");
    let reason = end.json()["reason"].as_str().unwrap().to_owned();
    let retry = tslm_protocol::close::parse_shutdown_reason(&reason).expect("a shutdown reason");
    assert_eq!(
        end.retry,
        Some(retry),
        "EventSource waits what the reason says"
    );
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn every_stream_gets_its_end_event_when_the_close_schedule_runs_past_five_seconds() {
    // The default grace (10 s) spreads closes over 7.5 s: streams whose turn comes late are
    // still on their connection then (it is not cut after a fixed 5 s).
    let s = TestServer::default().await;
    create(&s, "a").await;
    let mut streams = Vec::new();
    for _ in 0..12 {
        let mut st = Stream::open(s.addr("public"), "channel=a", &[])
            .await
            .unwrap();
        assert_eq!(st.next().await.event, "subscribed");
        streams.push(st);
    }
    let stopping = tokio::spawn(s.shutdown());
    let ends = streams.into_iter().map(|mut st| {
        tokio::spawn(async move {
            let end = st.next().await;
            assert_eq!(end.event, "end", "{end:?}");
        })
    });
    for e in ends.collect::<Vec<_>>() {
        e.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .unwrap()
        .unwrap();
}

/// The offset of each channel an event id names (the cursor after its checksum), in order.
fn offsets(id: &str) -> Vec<u64> {
    let (_, positions) = id.split_once('.').unwrap();
    positions
        .split(',')
        .map(|p| p.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_publish_makes_the_stream_read_only_its_channel_with_ids_for_all() {
    let s = TestServer::default().await;
    for c in ["a", "b", "c"] {
        create(&s, c).await;
    }
    let mut st = Stream::open(s.addr("public"), "channel=a&channel=b&channel=c", &[])
        .await
        .unwrap();
    for c in ["a", "b", "c"] {
        let e = st.next().await;
        assert_eq!(
            (e.event.as_str(), e.json()["channel"].as_str()),
            ("subscribed", Some(c))
        );
    }
    // Every channel was read once to start; from now on a publish reads its channel only.
    let reads = s.hub.stats().log_reads;
    let mut want = [0, 0, 0];
    for (n, (i, c)) in [(1, "b"), (1, "b"), (1, "b"), (0, "a"), (1, "b"), (2, "c")]
        .into_iter()
        .enumerate()
    {
        publish(&s, c, &n.to_string()).await;
        want[i] += 1;
        let e = st.next().await;
        assert_eq!(e.event, "message", "{e:?}");
        assert_eq!(
            (e.json()["channel"].as_str(), e.json()["offset"].as_u64()),
            (Some(c), Some(want[i])),
            "{e:?}"
        );
        // The id still names every channel's position, the ones not read included.
        assert_eq!(offsets(&e.id), want, "{e:?}");
        assert_eq!(
            s.hub.stats().log_reads - reads,
            n as u64 + 1,
            "one channel read per publish (every channel was read before)"
        );
    }
}

/// The listener of [`native_config`]: subscribers from [`PAGE`] only.
const PAGE: &str = "https://app.example";

fn native_config() -> String {
    format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\nallowed_origins = ['{PAGE}']\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n"
    )
}

/// Reads from `tcp` into `raw` until `pred` holds for what was read.
async fn read_until(tcp: &mut TcpStream, raw: &mut Vec<u8>, pred: impl Fn(&[u8]) -> bool) {
    let mut chunk = [0u8; 4096];
    while !pred(raw) {
        let n = tokio::time::timeout(T, tcp.read(&mut chunk))
            .await
            .expect("data in time")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(raw));
        raw.extend_from_slice(&chunk[..n]);
    }
}

fn has(raw: &[u8], s: &str) -> bool {
    raw.windows(s.len()).any(|w| w == s.as_bytes())
}

/// Event streams are served outside hyper (which reads nothing while it streams an answer): a
/// request pipelined after a stream's head ends the stream (its chunked body terminated), and
/// is answered on the same connection.
#[tokio::test]
async fn a_request_sent_on_a_streams_connection_ends_the_stream_and_is_answered() {
    let s = TestServer::default().await;
    create(&s, "a").await;
    let mut st = Stream::open(s.addr("public"), "channel=a", &[])
        .await
        .unwrap();
    assert_eq!(st.next().await.event, "subscribed");
    // Only the terminating chunk and the next answer follow.
    assert!(st.raw.is_empty(), "{:?}", st.raw);
    st.tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(T, st.tcp.read_to_end(&mut raw))
        .await
        .expect("closed in time");
    let text = String::from_utf8_lossy(&raw);
    let (end, next) = text.split_once("0\r\n\r\n").expect("the body's last chunk");
    assert!(
        end.is_empty() || end.ends_with("\r\n"),
        "whole chunks before the end: {text:?}"
    );
    assert!(next.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(next.ends_with("{\"live\":true}"), "{text:?}");
    // The stream's task is gone (it held the connection's slot).
    s.wait_for("the stream's connection to go", |s| {
        s.stats().connections == 0
    })
    .await;
    s.shutdown().await;
}

/// The answer of a stream, and of a refused stream, as hyper wrote it (`date`, the length or the
/// chunked encoding, CORS); after a refusal the connection serves its next request.
#[tokio::test]
async fn answers_keep_their_headers_and_the_connection_goes_on_after_a_refusal() {
    let s = TestServer::start(&native_config()).await;
    create(&s, "a").await;
    let st = Stream::open(s.addr("public"), "channel=a", &[("Origin", PAGE)])
        .await
        .unwrap();
    let head = st.head.to_ascii_lowercase();
    for h in [
        "http/1.1 200 ok\r\n",
        "content-type: text/event-stream\r\n",
        "cache-control: no-cache, no-transform\r\n",
        "x-accel-buffering: no\r\n",
        &format!("access-control-allow-origin: {PAGE}\r\n"),
        "vary: origin\r\n",
        "transfer-encoding: chunked\r\n",
        "date: ",
    ] {
        assert!(head.contains(h), "{h:?} in {head}");
    }
    // A refusal (no such channel), then a second request on the same connection.
    let mut tcp = TcpStream::connect(s.addr("public")).await.unwrap();
    tcp.write_all(b"GET /v1/events?channel=nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    read_until(&mut tcp, &mut raw, |r| has(r, "}")).await;
    let text = String::from_utf8_lossy(&raw).to_string();
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("content-length: {}\r\n", body.len())),
        "{text}"
    );
    assert!(head.contains("content-type: application/json"), "{text}");
    assert!(head.contains("\r\ndate: "), "{text}");
    tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(T, tcp.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    // A refused origin: 403, before anything else.
    let (status, _, _) = http_raw(
        s.addr("public"),
        "GET /v1/events?channel=a HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403);
    s.shutdown().await;
}

/// Heads hyper would refuse are refused as hyper refuses them: too large (431), malformed (400).
#[tokio::test]
async fn an_oversized_head_gets_431_and_a_malformed_one_400() {
    let s = TestServer::default().await;
    create(&s, "a").await;
    let big = "x".repeat(20 * 1024);
    let (status, _, _) = http_raw(
        s.addr("public"),
        &format!("GET /v1/events?channel=a HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431);
    // A head that fills the bound without ending, sent slowly.
    let mut tcp = TcpStream::connect(s.addr("public")).await.unwrap();
    tcp.write_all(b"GET /v1/events?channel=a HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for _ in 0..20 {
        let line = format!("X-Pad: {}\r\n", "y".repeat(1000));
        if tcp.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(T, tcp.read_to_end(&mut raw)).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    let (status, _, _) = http_raw(
        s.addr("public"),
        "GET /v1/events?channel=a HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = http_raw(
        s.addr("public"),
        "GET /v1/events?channel=a\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);
    s.shutdown().await;
}

/// The rest of the listener is served as before: probes, the long-poll, the CORS preflight, and
/// WebSocket handshakes (on the events path too).
#[tokio::test]
async fn other_requests_on_the_listener_are_served_as_before() {
    let s = TestServer::start(&native_config()).await;
    create(&s, "a").await;
    let addr = s.addr("public");
    let (status, _, _) = http_raw(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let (status, head, _) = http_raw(
        addr,
        &format!("OPTIONS /v1/events?channel=a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nOrigin: {PAGE}\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 204, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("access-control-allow-methods: get"), "{head}");
    assert!(
        head.contains("access-control-allow-headers: authorization"),
        "{head}"
    );
    assert!(
        head.contains(&format!("access-control-allow-origin: {PAGE}")),
        "{head}"
    );
    let (status, _, body) = http_raw(
        addr,
        "GET /v1/poll?channel=a@oldest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A WebSocket handshake on the events path, and on the usual one.
    for path in ["v1/events", ""] {
        let mut ws = v1(&format!("ws://{addr}/{path}")).await;
        let r = call(&mut ws, r#"{"op":"subscribe","channel":"a","id":1}"#).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    s.shutdown().await;
}
