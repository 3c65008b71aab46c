//! A subscriber's stateless HTTP calls beside SSE and long-polling, over real sockets:
//! `GET /v1/channels/{name}/history` and `POST /v1/channels/{name}/messages/{offset}/reply`,
//! held to the rules of their WebSocket equivalents (listener permission, the class's
//! `subscribe_from`, access tokens and tickets, origins and CORS, the reply rules and limits,
//! the failed-authentication budget), and the replies reaching the publishing connection.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;

use base64::Engine;
use common::*;
use common::{http_create as create, http_publish as publish_http};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"subscriber-http-secret-of-32-bytes-or-more";
const ORIGIN: &str = "https://app.example";

fn config(extra: &str) -> String {
    format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\nallowed_origins = ['{ORIGIN}']\n{extra}\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n\
         [issuer.shared]\nissuer = 'sh'\naudiences = ['tslm']\nchannels_claim = 'c'\nsecret = '{}'\nleeway_seconds = 0\n\
         [channel.\"secure.*\"]\nsubscribers = 'authenticated'\n\
         [channel.\"rpc.*\"]\nreplies = true\nmax_reply_bytes = 64\nreplies_per_second = 2\n\
         [channel.\"inside.*\"]\nsubscribe_from = ['private']\nreplies = true\n\
         [channel.\"srpc.*\"]\nsubscribers = 'authenticated'\nreplies = true\n",
        base64::engine::general_purpose::STANDARD.encode(SECRET)
    )
}

/// An access token for `channels`, expiring `lifetime` seconds from now (negative: expired).
fn token(channels: &[&str], lifetime: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss":"sh","aud":"tslm","sub":"alice","exp":now+lifetime,"iat":now-60,"c":channels}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

async fn history(
    addr: SocketAddr,
    channel: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Value) {
    http(
        addr,
        "GET",
        &format!("/v1/channels/{channel}/history?{query}"),
        headers,
        "",
    )
    .await
}

async fn reply(
    addr: SocketAddr,
    channel: &str,
    offset: &str,
    headers: &[(&str, &str)],
    data: &str,
) -> (u16, String, Value) {
    http(
        addr,
        "POST",
        &format!("/v1/channels/{channel}/messages/{offset}/reply"),
        headers,
        data,
    )
    .await
}

/// One request on an open keep-alive connection; returns (status, JSON body).
async fn exchange(tcp: &mut TcpStream, request: &str) -> (u16, Value) {
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..i]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if raw.len() >= i + 4 + len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                let body = serde_json::from_slice(&raw[i + 4..i + 4 + len]).unwrap();
                return (status, body);
            }
        }
        let n = tokio::time::timeout(T, tcp.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn history_over_http_is_the_v1_history_reply() {
    let s = TestServer::start(&config("")).await;
    create(&s, "news").await;
    for i in 1..=3 {
        publish_http(&s, "news", &format!("{{\"n\":{i}}}")).await;
    }
    let (status, head, page) = history(s.addr("public"), "news", "start=oldest&limit=2", &[]).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store")
    );
    // The same read over WebSocket: the same fields and values, but the request id.
    let mut ws = v1(&s.url("public")).await;
    let mut over_ws = call(
        &mut ws,
        r#"{"op":"history","id":1,"channel":"news","start":"oldest","limit":2}"#,
    )
    .await;
    over_ws.as_object_mut().unwrap().remove("id");
    assert_eq!(page, over_ws);
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2], "{page}");
    assert_eq!(page["more"], true);
    assert_eq!(page["messages"][0]["data"]["n"], 1);
    // Resuming after a position: recovered; from another epoch: lost, and said so.
    let epoch = page["epoch"].as_str().unwrap();
    let (_, _, next) = history(
        s.addr("public"),
        "news",
        &format!("epoch={epoch}&offset=2"),
        &[],
    )
    .await;
    assert_eq!(next["recovered"], true, "{next}");
    assert_eq!(next["messages"][0]["offset"], 3, "{next}");
    let (_, _, lost) = history(
        s.addr("public"),
        "news",
        "epoch=0123456789abcdef&offset=2",
        &[],
    )
    .await;
    assert_eq!(lost["recovered"], false, "{lost}");
    assert_eq!(lost["lost"]["reason"], "epoch_changed", "{lost}");
    // `last=N`, and the malformed.
    let (_, _, last) = history(s.addr("public"), "news", "last=1", &[]).await;
    assert_eq!(last["messages"][0]["offset"], 3, "{last}");
    for bad in [
        "limit=0",
        "start=sideways",
        "last=0",
        "epoch=xyz&offset=1",
        "foo=1",
    ] {
        let (status, _, body) = history(s.addr("public"), "news", bad, &[]).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}: {body}");
    }
    let (status, _, body) = history(s.addr("public"), "nope", "", &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // A subscriber's call: the private listener (no `Subscribe`) refuses it.
    let (status, _, body) = history(s.addr("private"), "news", "", &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn tokens_tickets_and_classes_decide_as_over_websocket() {
    let s = TestServer::start(&config("")).await;
    create(&s, "secure.a").await;
    create(&s, "inside.x").await;
    publish_http(&s, "secure.a", "1").await;
    let pub_ = s.addr("public");
    // No token where the class needs one; a token that does not grant the channel; an expired
    // token; a token that is not one.
    let (status, head, body) = history(pub_, "secure.a", "", &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    let other = format!("Bearer {}", token(&["secure.b"], 300));
    let (status, _, body) = history(pub_, "secure.a", "", &[("Authorization", &other)]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let expired = format!("Bearer {}", token(&["secure.*"], -10));
    let (status, _, body) = history(pub_, "secure.a", "", &[("Authorization", &expired)]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, _, body) = reply(pub_, "secure.a", "1", &[("Authorization", &expired)], "1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    // A good token, then a ticket made from it.
    let good = format!("Bearer {}", token(&["secure.*"], 300));
    let (status, _, body) = history(pub_, "secure.a", "", &[("Authorization", &good)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"][0]["data"], 1);
    let (status, _, t) = http(pub_, "POST", "/v1/tickets", &[("Authorization", &good)], "").await;
    assert_eq!(status, 200, "{t}");
    let ticket = t["ticket"].as_str().unwrap();
    let (status, _, body) = history(pub_, "secure.a", &format!("ticket={ticket}"), &[]).await;
    assert_eq!(status, 200, "{body}");
    // A tampered ticket, and a ticket with a token.
    let (status, _, _) = history(pub_, "secure.a", &format!("ticket={ticket}x"), &[]).await;
    assert_eq!(status, 401);
    let (status, _, _) = history(
        pub_,
        "secure.a",
        &format!("ticket={ticket}"),
        &[("Authorization", &good)],
    )
    .await;
    assert_eq!(status, 400);
    // A class that the public listener may not read: refused whatever the token.
    let (status, _, body) = history(pub_, "inside.x", "", &[("Authorization", &good)]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _, body) = reply(pub_, "inside.x", "1", &[], "1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_reply_over_http_reaches_the_publishing_connection_under_the_class_rules() {
    let s = TestServer::start(&config("")).await;
    let mut svc = v1(&s.url("private")).await;
    assert_eq!(
        call(&mut svc, r#"{"op":"create","id":1,"channel":"rpc.q"}"#).await["ok"],
        true
    );
    let p = call(
        &mut svc,
        r#"{"op":"publish","id":2,"channel":"rpc.q","data":{"quote":1}}"#,
    )
    .await;
    assert_eq!(p["offset"], 1, "{p}");
    let pub_ = s.addr("public");
    let (status, head, body) = reply(pub_, "rpc.q", "1", &[], r#"{"accept":true}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"ok": true}));
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store")
    );
    let ev = recv_json(&mut svc).await;
    assert_eq!(ev["event"], "reply", "{ev}");
    assert_eq!(ev["channel"], "rpc.q");
    assert_eq!(ev["offset"], 1);
    assert_eq!(ev["data"], json!({"accept": true}));
    assert!(ev["from"].is_string(), "{ev}");
    // Oversized (the class allows 64 bytes), not JSON, bad offsets, unknown message.
    let big = format!("\"{}\"", "x".repeat(70));
    let (status, _, body) = reply(pub_, "rpc.q", "1", &[], &big).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    let (status, _, body) = reply(pub_, "rpc.q", "1", &[], "{nope").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    for offset in ["0", "x", "-1"] {
        let (status, _, body) = reply(pub_, "rpc.q", offset, &[], "1").await;
        assert_eq!(status, 400, "{offset}: {body}");
    }
    let (status, _, body) = reply(pub_, "rpc.q", "9", &[], "1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, _, body) = reply(pub_, "rpc.none", "1", &[], "1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    // Published over HTTP: nobody to reply to.
    let o = publish_http(&s, "rpc.q", "2").await;
    let (status, _, body) = reply(pub_, "rpc.q", &o.to_string(), &[], "1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (410, Some("gone")),
        "{body}"
    );
    // A class without replies.
    create(&s, "plain").await;
    publish_http(&s, "plain", "1").await;
    let (status, _, body) = reply(pub_, "plain", "1", &[], "1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not allow replies"),
        "{body}"
    );
    // The class's `replies_per_second` (2) counts per connection: the third in a second is
    // refused on a kept-alive connection.
    let mut tcp = TcpStream::connect(pub_).await.unwrap();
    let req = format!(
        "POST /v1/channels/rpc.q/messages/1/reply HTTP/1.1\r\nHost: {pub_}\r\nContent-Type: application/json\r\nContent-Length: 1\r\n\r\n7"
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(exchange(&mut tcp, &req).await.0);
    }
    // Answers within one window: 2 accepted then 429, or (a window boundary between) fewer 429s.
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 2,
        "{statuses:?}"
    );
    let mut refused = None;
    for _ in 0..10 {
        let (status, body) = exchange(&mut tcp, &req).await;
        if status == 429 {
            refused = Some(body);
            break;
        }
    }
    let refused = refused.expect("the reply rate is enforced");
    assert_eq!(refused["error"]["code"], "rate_limited", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("replies per second")
    );
    // Every accepted reply reached the publisher.
    for _ in statuses.iter().filter(|s| **s == 200) {
        assert_eq!(recv_json(&mut svc).await["data"], 7);
    }
    s.shutdown().await;
}

#[tokio::test]
async fn origins_are_checked_and_cors_answered() {
    let s = TestServer::start(&config("")).await;
    create(&s, "rpc.o").await;
    let pub_ = s.addr("public");
    let (status, _, body) = history(pub_, "rpc.o", "", &[("Origin", "https://evil.example")]).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = reply(
        pub_,
        "rpc.o",
        "1",
        &[("Origin", "https://evil.example")],
        "1",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, head, body) = history(pub_, "rpc.o", "", &[("Origin", ORIGIN)]).await;
    assert_eq!(status, 200, "{body}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains(&format!("access-control-allow-origin: {ORIGIN}")),
        "{head}"
    );
    // Errors are readable by the page too.
    let (status, head, _) = reply(pub_, "rpc.o", "5", &[("Origin", ORIGIN)], "1").await;
    assert_eq!(status, 404);
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{head}"
    );
    // Preflights: GET with `Authorization`; POST of JSON with `Authorization`.
    let preflight = |path: String, method: &'static str| async move {
        http_raw(
            pub_,
            &format!(
                "OPTIONS {path} HTTP/1.1\r\nHost: {pub_}\r\nConnection: close\r\nOrigin: {ORIGIN}\r\nAccess-Control-Request-Method: {method}\r\n\r\n"
            ),
        )
        .await
    };
    let (status, head, _) = preflight("/v1/channels/rpc.o/history".into(), "GET").await;
    let head = head.to_ascii_lowercase();
    assert_eq!(status, 204, "{head}");
    assert!(head.contains("access-control-allow-methods: get"), "{head}");
    assert!(
        head.contains("access-control-allow-headers: authorization"),
        "{head}"
    );
    assert!(
        head.contains(&format!("access-control-allow-origin: {ORIGIN}")),
        "{head}"
    );
    let (status, head, _) = preflight("/v1/channels/rpc.o/messages/1/reply".into(), "POST").await;
    let head = head.to_ascii_lowercase();
    assert_eq!(status, 204, "{head}");
    assert!(
        head.contains("access-control-allow-methods: post"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-headers: authorization, content-type"),
        "{head}"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn refused_tokens_count_against_the_failed_authentication_budget() {
    let s = TestServer::start(&config("failed_auths_per_ip_per_minute = 2")).await;
    create(&s, "secure.a").await;
    let bad = "Bearer not-a-token";
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, _, _) =
            history(s.addr("public"), "secure.a", "", &[("Authorization", bad)]).await;
        statuses.push(status);
    }
    assert_eq!(statuses[..2], [401, 401], "{statuses:?}");
    assert_eq!(statuses[3], 429, "{statuses:?}");
    // The address is over its budget for every route now, a good token included.
    let good = format!("Bearer {}", token(&["secure.*"], 300));
    let (status, _, body) = reply(
        s.addr("public"),
        "secure.a",
        "1",
        &[("Authorization", &good)],
        "1",
    )
    .await;
    assert_eq!(status, 429, "{body}");
    s.shutdown().await;
}

/// Sends `request` and returns the answer's head (for streams, which do not end).
async fn head_of(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 1024];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(T, tcp.read(&mut chunk))
            .await
            .expect("a head in time")
            .unwrap();
        assert!(n > 0, "closed before the head");
        raw.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The audit log's records of type `auth` in `file`, once there are `n` of them.
async fn auth_records(file: &std::path::Path, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let recs: Vec<Value> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["type"] == "auth")
            .collect();
        if recs.len() >= n {
            return recs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} auth records of {n}: {recs:?}",
            recs.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn publisher_logins_on_the_subscriber_routes_are_audited() {
    use tslm_auth::token as tk;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let secret = tk::generate_token();
    let s = TestServer::start(&format!(
        "{}[publisher.ops]\ntoken_hashes = ['{}']\noperations = ['publish']\nchannels = ['orders.*']\n\
         [audit]\nfile = '{}'\nsync = 'every'\n",
        config(""),
        tk::hash_line(&secret),
        log.display()
    ))
    .await;
    create(&s, "orders.1").await;
    let pub_ = s.addr("public");
    let bearer = format!("Bearer {secret}");
    let auth = [("Authorization", bearer.as_str())];
    let (status, _, body) = http(pub_, "GET", "/v1/poll?channel=orders.1&wait=0", &auth, "").await;
    assert_eq!(status, 200, "{body}");
    // An event stream: its head is enough (the login is recorded before the stream starts).
    let head = head_of(
        pub_,
        &format!(
            "GET /v1/events?channel=orders.1 HTTP/1.1\r\nHost: {pub_}\r\nAuthorization: {bearer}\r\n\r\n"
        ),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (status, _, body) = history(pub_, "orders.1", "", &auth).await;
    assert_eq!(status, 200, "{body}");
    // A refused token on the poll route.
    let (status, _, _) = http(
        pub_,
        "GET",
        "/v1/poll?channel=orders.1&wait=0",
        &[("Authorization", "Bearer not-a-token")],
        "",
    )
    .await;
    assert_eq!(status, 401);
    let recs = auth_records(&log, 4).await;
    let credential = format!("token:{}", &tk::hash_line(&secret)[..19]);
    for r in &recs[..3] {
        assert_eq!(r["outcome"], "accepted", "{r}");
        assert_eq!(r["via"], "request", "{r}");
        assert_eq!(r["transport"], "http", "{r}");
        assert_eq!(r["listener"], "public", "{r}");
        assert_eq!(r["publisher"], "ops", "{r}");
        assert_eq!(r["credential"], credential.as_str(), "{r}");
    }
    assert_eq!(recs[3]["outcome"], "refused", "{}", recs[3]);
    assert_eq!(recs[3]["transport"], "http", "{}", recs[3]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&secret), "a token reached the audit log");
    s.shutdown().await;
}

#[tokio::test]
async fn a_reply_to_an_authenticated_channel_takes_the_token_or_its_ticket() {
    let s = TestServer::start(&config("")).await;
    let mut svc = v1(&s.url("private")).await;
    call(&mut svc, r#"{"op":"create","id":1,"channel":"srpc.a"}"#).await;
    let p = call(
        &mut svc,
        r#"{"op":"publish","id":2,"channel":"srpc.a","data":"q"}"#,
    )
    .await;
    assert_eq!(p["offset"], 1, "{p}");
    let pub_ = s.addr("public");
    let (status, _, body) = reply(pub_, "srpc.a", "1", &[], "0").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let other = format!("Bearer {}", token(&["srpc.b"], 300));
    let (status, _, body) = reply(pub_, "srpc.a", "1", &[("Authorization", &other)], "0").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let good = format!("Bearer {}", token(&["srpc.*"], 300));
    let (status, _, body) = reply(pub_, "srpc.a", "1", &[("Authorization", &good)], "1").await;
    assert_eq!(status, 200, "{body}");
    let (_, _, t) = http(pub_, "POST", "/v1/tickets", &[("Authorization", &good)], "").await;
    let ticket = t["ticket"].as_str().unwrap();
    let (status, _, body) = http(
        pub_,
        "POST",
        &format!("/v1/channels/srpc.a/messages/1/reply?ticket={ticket}"),
        &[],
        "2",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for want in [1, 2] {
        let ev = recv_json(&mut svc).await;
        assert_eq!(
            (ev["event"].as_str(), ev["data"].as_u64()),
            (Some("reply"), Some(want)),
            "{ev}"
        );
    }
    s.shutdown().await;
}
