//! Long-polling (`GET /v1/poll`) over real sockets: several channels in one poll, stateless
//! cursors that resume with no gap and no duplicate, every loss reported, waits woken by a
//! publish, bounds, bad requests, authentication, CORS and shutdown.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Polls `query` on `addr` with `headers`; returns (status, headers, JSON body).
async fn poll_with(
    addr: SocketAddr,
    query: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    http(addr, "GET", &format!("/v1/poll?{query}"), headers, "").await
}

async fn poll(addr: SocketAddr, query: &str) -> Value {
    let (status, _, body) = poll_with(addr, query, &[]).await;
    assert_eq!(status, 200, "{body}");
    body
}

fn cursor(v: &Value) -> String {
    v["cursor"].as_str().unwrap().to_owned()
}

/// The (channel, offset) of every `message` event, in order.
fn messages(v: &Value) -> Vec<(String, u64)> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| {
            (
                e["channel"].as_str().unwrap().to_owned(),
                e["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn several_channels_resume_from_a_stateless_cursor_with_no_gap_and_no_duplicate() {
    let s = TestServer::default().await;
    http_create(&s, "a").await;
    http_create(&s, "b").await;
    http_publish(&s, "a", "0").await;
    // First poll: where each channel starts (`new` for a, `oldest` for b), no wait needed.
    let first = poll(s.addr("public"), "channel=a&channel=b@oldest&wait=0").await;
    let subscribed: Vec<&str> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "subscribed")
        .map(|e| e["channel"].as_str().unwrap())
        .collect();
    assert_eq!(subscribed, ["a", "b"], "{first}");
    assert!(
        messages(&first).is_empty(),
        "a starts new, b is empty: {first}"
    );
    let c1 = cursor(&first);
    for i in 1..=3 {
        http_publish(&s, "a", &i.to_string()).await;
    }
    http_publish(&s, "b", "\"x\"").await;
    http_publish(&s, "b", "{\"k\":\n [1, 2]}").await;
    let second = poll(
        s.addr("public"),
        &format!("channel=a&channel=b@oldest&cursor={c1}"),
    )
    .await;
    assert_eq!(
        messages(&second),
        [
            ("a".into(), 2),
            ("a".into(), 3),
            ("a".into(), 4),
            ("b".into(), 1),
            ("b".into(), 2)
        ],
        "{second}"
    );
    // The payload is the publisher's JSON, newline included.
    let last = &second["events"].as_array().unwrap()[4];
    assert_eq!(last["data"]["k"][1], 2, "{second}");
    // The same cursor again (a lost answer, a retry): the same messages, nothing skipped.
    let again = poll(
        s.addr("public"),
        &format!("channel=a&channel=b@oldest&cursor={c1}"),
    )
    .await;
    assert_eq!(messages(&again), messages(&second));
    // The new cursor: nothing new, so the poll waits and a publish wakes it.
    let c2 = cursor(&second);
    let addr = s.addr("public");
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let v = poll(
            addr,
            &format!("channel=a&channel=b@oldest&cursor={c2}&wait=20"),
        )
        .await;
        (v, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    http_publish(&s, "b", "3").await;
    let (woken, took) = waiter.await.unwrap();
    assert_eq!(messages(&woken), [("b".into(), 3)], "{woken}");
    assert!(
        took < Duration::from_secs(15),
        "the publish woke the poll ({took:?})"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn every_loss_is_reported_with_what_was_missed() {
    let s = TestServer::start(&format!(
        "{}[channel.\"small.*\"]\nbacklog_messages = 2\n",
        two_listeners("")
    ))
    .await;
    http_create(&s, "small.1").await;
    let first = poll(s.addr("public"), "channel=small.1&wait=0").await;
    let c1 = cursor(&first);
    for i in 1..=5 {
        http_publish(&s, "small.1", &i.to_string()).await;
    }
    // Offsets 1..=3 left the backlog: the answer says so, then gives 4 and 5.
    let v = poll(
        s.addr("public"),
        &format!("channel=small.1&cursor={c1}&wait=0"),
    )
    .await;
    let ev = &v["events"].as_array().unwrap()[0];
    assert_eq!(ev["event"], "subscribed", "{v}");
    assert_eq!(ev["recovered"], false);
    assert_eq!(ev["lost"]["reason"], "expired");
    assert_eq!(
        (ev["lost"]["from"].as_u64(), ev["lost"]["to"].as_u64()),
        (Some(1), Some(3)),
        "{v}"
    );
    assert_eq!(messages(&v), [("small.1".into(), 4), ("small.1".into(), 5)]);
    // The channel deleted and made again: a new epoch, reported as such.
    let c2 = cursor(&v);
    let (status, _, _) = http(s.addr("private"), "DELETE", "/v1/channels/small.1", &[], "").await;
    assert_eq!(status, 200);
    http_create(&s, "small.1").await;
    http_publish(&s, "small.1", "1").await;
    let v = poll(
        s.addr("public"),
        &format!("channel=small.1&cursor={c2}&wait=0"),
    )
    .await;
    let ev = &v["events"].as_array().unwrap()[0];
    assert_eq!(ev["lost"]["reason"], "epoch_changed", "{v}");
    s.shutdown().await;
}

#[tokio::test]
async fn answers_are_bounded_and_say_when_more_follow() {
    let s = TestServer::default().await;
    http_create(&s, "a").await;
    let c = cursor(&poll(s.addr("public"), "channel=a&wait=0").await);
    for i in 1..=5 {
        http_publish(&s, "a", &i.to_string()).await;
    }
    let v = poll(s.addr("public"), &format!("channel=a&cursor={c}&limit=2")).await;
    assert_eq!(messages(&v), [("a".into(), 1), ("a".into(), 2)]);
    assert_eq!(v["more"], true);
    let v = poll(
        s.addr("public"),
        &format!("channel=a&cursor={}&limit=10", cursor(&v)),
    )
    .await;
    assert_eq!(messages(&v).len(), 3);
    assert_eq!(v["more"], false);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_clear_error() {
    let s = TestServer::default().await;
    http_create(&s, "a").await;
    http_create(&s, "b").await;
    let good = cursor(&poll(s.addr("public"), "channel=a&channel=b&wait=0").await);
    let many = (0..17)
        .map(|i| format!("channel=c{i}"))
        .collect::<Vec<_>>()
        .join("&");
    for (query, want) in [
        ("".to_string(), "channel"),
        ("channel=a&channel=a".into(), "twice"),
        ("channel=a&wait=99".into(), "wait"),
        ("channel=a&limit=0".into(), "limit"),
        ("channel=a&nonsense=1".into(), "nonsense"),
        ("channel=a@later".into(), "start"),
        (many, "at most 16"),
        ("channel=a&cursor=garbage".into(), "cursor"),
        // A cursor of another channel list (order swapped) is refused, not taken for "new".
        (
            format!("channel=b&channel=a&cursor={good}"),
            "other channels",
        ),
    ] {
        let (status, _, body) = poll_with(s.addr("public"), &query, &[]).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{query}: {body}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{query}: {msg}");
    }
    // More channels than a connection may subscribe to.
    let capped = TestServer::start(&two_listeners("max_subscriptions_per_connection = 2")).await;
    http_create(&capped, "a").await;
    let (status, _, body) = poll_with(
        capped.addr("public"),
        "channel=a&channel=b&channel=c&wait=0",
        &[],
    )
    .await;
    assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
    assert_ne!(status, 200);
    capped.shutdown().await;
    let (status, _, body) = poll_with(s.addr("public"), "channel=nope&wait=0", &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    // Only listeners that may subscribe serve polls.
    let (status, _, body) = poll_with(s.addr("private"), "channel=a&wait=0", &[]).await;
    assert_eq!(status, 403, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn channels_that_need_a_token_refuse_a_poll_without_one() {
    use base64::Engine;
    let secret = b"long-poll-test-secret-of-32-bytes-or-more";
    let s = TestServer::start(&format!(
        "{}[issuer.shared]\nissuer = 'lp'\naudiences = ['tslm']\nchannels_claim = 'tslm_channels'\nsecret = '{}'\n\
         [channel.\"secure.*\"]\nsubscribers = 'authenticated'\n",
        two_listeners(""),
        base64::engine::general_purpose::STANDARD.encode(secret)
    ))
    .await;
    http_create(&s, "secure.1").await;
    let (status, _, body) = poll_with(s.addr("public"), "channel=secure.1&wait=0", &[]).await;
    assert_eq!(status, 401, "{body}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |channels: &[&str]| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"iss":"lp","aud":"tslm","sub":"u","exp":now+600,"iat":now,"tslm_channels":channels}),
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let ok = format!("Bearer {}", token(&["secure.*"]));
    let (status, _, body) = poll_with(
        s.addr("public"),
        "channel=secure.1&wait=0",
        &[("Authorization", &ok)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let other = format!("Bearer {}", token(&["other.*"]));
    let (status, _, body) = poll_with(
        s.addr("public"),
        "channel=secure.1&wait=0",
        &[("Authorization", &other)],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn browsers_of_allowed_origins_can_read_answers() {
    let s = TestServer::start(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         allowed_origins = ['https://app.example.com']\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n",
    )
    .await;
    http_create(&s, "a").await;
    let origin = [("Origin", "https://app.example.com")];
    let (status, head, _) = poll_with(s.addr("public"), "channel=a&wait=0", &origin).await;
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-origin: https://app.example.com"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(
        head.contains("content-length:"),
        "an answer of known length: {head}"
    );
    let (status, head, _) = http_raw(
        s.addr("public"),
        "OPTIONS /v1/poll HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 204, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-headers: authorization"),
        "{head}"
    );
    // Another origin is refused before routing.
    let (status, _, _) = poll_with(
        s.addr("public"),
        "channel=a&wait=0",
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403);
    s.shutdown().await;
}

#[tokio::test]
async fn a_waiting_poll_answers_at_shutdown_and_leaves_no_subscription() {
    let s = TestServer::default().await;
    http_create(&s, "a").await;
    let c = cursor(&poll(s.addr("public"), "channel=a&wait=0").await);
    let addr = s.addr("public");
    let waiting = tokio::spawn(async move {
        poll_with(addr, &format!("channel=a&cursor={c}&wait=30"), &[]).await
    });
    s.wait_for("the poll to wait", |s| s.hub.stats().subscriptions == 1)
        .await;
    let hub = s.hub.clone();
    s.shutdown().await;
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("answered at shutdown")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(messages(&body).is_empty());
    assert_eq!(hub.stats().subscriptions, 0);
}

/// An answer its client never reads does not hold the connection: once the socket has taken
/// nothing for the write deadline (`ping_interval_seconds + pong_timeout_seconds` and 2 s), the
/// connection ends, its slot freed, the answer cut short.
#[tokio::test]
async fn an_answer_never_read_ends_its_connection_at_the_write_deadline() {
    let s = TestServer::start(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         ping_interval_seconds = 1\npong_timeout_seconds = 1\noutbound_queue_bytes = 67108864\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n",
    )
    .await;
    http_create(&s, "big").await;
    // About 6 MB of backlog: far more than the socket buffers of a reader that reads nothing.
    let blob = format!("\"{}\"", "x".repeat(60_000));
    for _ in 0..100 {
        http_publish(&s, "big", &blob).await;
    }
    let addr = s.addr("public");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(
        format!(
            "GET /v1/poll?channel=big@oldest&wait=0&limit=100 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s.wait_for("the poll's connection", |s| s.stats().connections == 1)
        .await;
    // The client reads nothing; the gateway gives the connection up.
    s.wait_for("the unread answer's connection to end", |s| {
        s.stats().connections == 0
    })
    .await;
    // What did arrive: less than the answer's announced length, then the end.
    let mut got = Vec::new();
    tokio::time::timeout(T, tcp.read_to_end(&mut got))
        .await
        .expect("the connection is closed")
        .ok();
    let text = String::from_utf8_lossy(&got[..got.len().min(4096)]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(length > 5_000_000, "{length}");
    assert!(got.len() < length, "{} of {length}", got.len());
    s.shutdown().await;
}

#[tokio::test]
async fn a_waiting_poll_woken_by_a_publish_reads_only_that_channel_again() {
    let s = TestServer::default().await;
    for c in ["a", "b", "c"] {
        http_create(&s, c).await;
    }
    let q = "channel=a&channel=b&channel=c";
    let first = poll(s.addr("public"), &format!("{q}&wait=0")).await;
    let here = cursor(&first);
    let addr = s.addr("public");
    let query = format!("{q}&cursor={here}&wait=20");
    let waiting = tokio::spawn(async move { poll(addr, &query).await });
    // The poll read its three channels, subscribed them, read them again, and waits.
    s.wait_for("the poll to wait on its channels", |s| {
        s.hub.stats().subscriptions == 3
    })
    .await;
    let reads = s.hub.stats().log_reads;
    http_publish(&s, "b", "7").await;
    let answer = waiting.await.unwrap();
    assert_eq!(messages(&answer), [("b".to_owned(), 1)], "{answer}");
    // Only `b` was read after the wake; the cursor still names all three channels.
    assert_eq!(s.hub.stats().log_reads - reads, 1);
    let next = poll(
        s.addr("public"),
        &format!("{q}&cursor={}&wait=0", cursor(&answer)),
    )
    .await;
    assert!(messages(&next).is_empty(), "{next}");
    http_publish(&s, "a", "8").await;
    http_publish(&s, "c", "9").await;
    let both = poll(
        s.addr("public"),
        &format!("{q}&cursor={}&wait=0", cursor(&answer)),
    )
    .await;
    assert_eq!(
        messages(&both),
        [("a".to_owned(), 1), ("c".to_owned(), 1)],
        "{both}"
    );
}
