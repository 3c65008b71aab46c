//! Hostile input: reply amplification. Every operation, in both dialects and over HTTP, is sent
//! the request that makes its reply largest; a reply may be a little larger than its request, but
//! never more than the connection's outbound bound (`outbound_queue_bytes`) plus one message,
//! however small the request. A client that sends large requests and never reads holds at most
//! one such reply on the server (the server's own accounting, `pending_reply_bytes`).
//! The RSS reading of the same attack is in `hostile_amplification_rss.rs`, alone in its binary.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use tslm_protocol::{ChannelName, Payload};

/// The outbound bound of both listeners in these tests.
const QUEUE: usize = 64 * 1024;
/// The `data` of each message of the large channel, in bytes of JSON (a string with its quotes).
const MESSAGE: usize = 20_002;
/// Messages in the large channel's backlog: unbounded, one history reply would be 20 MB.
const MESSAGES: usize = 1000;
/// What a reply may add to its request (ids, channel names and error messages we wrote).
const SLACK: usize = 512;

fn config() -> String {
    let extra = format!(
        "outbound_queue_bytes = {QUEUE}\nrate_limit_per_second = 100000\nmax_message_size = 65536"
    );
    format!(
        "{}\n[channel.\"big.*\"]\nbacklog_messages = {MESSAGES}\n\
         [channel.\"rpc.*\"]\nreplies = true\nmax_reply_bytes = 4096\n\
         [channel.\"auto.*\"]\nauto_create = true\n",
        two_listeners(&extra)
    )
}

/// Starts the server with `big.a` holding `MESSAGES` messages of `MESSAGE` bytes and many
/// channels with long names.
async fn loaded() -> TestServer {
    let srv = TestServer::start(&config()).await;
    let mut p = v1(&srv.url("private")).await;
    for c in ["big.a", "rpc.q"] {
        let r = call(&mut p, &format!(r#"{{"op":"create","channel":"{c}"}}"#)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let big: ChannelName = "big.a".parse().unwrap();
    let data = Payload::text(&"x".repeat(MESSAGE - 2));
    for _ in 0..MESSAGES {
        srv.hub.publish(&big, &data).unwrap();
    }
    // 600 channels with 240-byte names: an unbounded list would be about 290 KB.
    for i in 0..600 {
        let name = format!("list.{}{i:04}", "n".repeat(230));
        assert!(srv.hub.create(&name.parse().unwrap()));
    }
    srv
}

/// Sends `request` on a new connection and returns the length of the reply frame.
async fn reply_len(srv: &TestServer, listener: &str, legacy_dialect: bool, request: &str) -> usize {
    let url = srv.url(listener);
    let mut ws = if legacy_dialect {
        legacy(&url).await
    } else {
        v1(&url).await
    };
    send(&mut ws, request).await;
    let reply = recv(&mut ws).await;
    assert!(
        !reply.contains("\"event\""),
        "a reply, not an event: {}",
        &reply[..reply.len().min(200)]
    );
    reply.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_operation_answers_a_small_request_with_more_than_the_outbound_bound() {
    let srv = loaded().await;
    let long_id = format!("\"{}\"", "i".repeat(100));
    let big_data = format!("\"{}\"", "d".repeat(60_000));
    // (operation, listener, original protocol?, request, may page up to the outbound bound?)
    let cases: Vec<(&str, &str, bool, String, bool)> = vec![
        (
            "ping",
            "public",
            false,
            format!(r#"{{"op":"ping","id":{long_id}}}"#),
            false,
        ),
        (
            "challenge",
            "private",
            false,
            r#"{"op":"challenge","id":1}"#.into(),
            false,
        ),
        (
            "subscribe",
            "public",
            false,
            r#"{"op":"subscribe","id":1,"channel":"big.a","start":"oldest"}"#.into(),
            false,
        ),
        (
            "unsubscribe",
            "public",
            false,
            r#"{"op":"unsubscribe","id":1,"channel":"big.a"}"#.into(),
            false,
        ),
        (
            "history",
            "public",
            false,
            r#"{"op":"history","id":1,"channel":"big.a","limit":1000}"#.into(),
            true,
        ),
        (
            "history last",
            "public",
            false,
            r#"{"op":"history","id":1,"channel":"big.a","start":{"last":1000},"limit":1000}"#
                .into(),
            true,
        ),
        (
            "publish",
            "private",
            false,
            format!(r#"{{"op":"publish","id":1,"channel":"auto.x","data":{big_data}}}"#),
            false,
        ),
        (
            "create",
            "private",
            false,
            r#"{"op":"create","id":1,"channel":"big.b","options":{"backlog_messages":1000}}"#
                .into(),
            false,
        ),
        (
            "delete",
            "private",
            false,
            r#"{"op":"delete","id":1,"channel":"big.b"}"#.into(),
            false,
        ),
        (
            "channels",
            "private",
            false,
            r#"{"op":"channels","id":1,"limit":1000}"#.into(),
            true,
        ),
        (
            "channels prefix",
            "private",
            false,
            r#"{"op":"channels","id":1,"prefix":"list.","limit":1000}"#.into(),
            true,
        ),
        (
            "reply",
            "public",
            false,
            r#"{"op":"reply","id":1,"channel":"rpc.q","offset":1,"data":1}"#.into(),
            false,
        ),
        (
            "unknown op",
            "public",
            false,
            format!(r#"{{"op":"{}","id":1}}"#, "o".repeat(1000)),
            false,
        ),
        (
            "malformed",
            "public",
            false,
            format!("{{\"op\":\"ping\",\"x\":\"{}", "y".repeat(60_000)),
            false,
        ),
        (
            "CreateChannel",
            "private",
            true,
            r#"{"CreateChannel":"legacy.a"}"#.into(),
            false,
        ),
        (
            "Subscribe",
            "public",
            true,
            r#"{"Subscribe":"big.a"}"#.into(),
            false,
        ),
        (
            "NotifyChannel",
            "private",
            true,
            format!(r#"{{"NotifyChannel":["auto.y",{{"Text":{big_data}}}]}}"#),
            false,
        ),
        (
            "legacy malformed",
            "public",
            true,
            format!("{{\"Subscribe\":\"{}", "z".repeat(60_000)),
            false,
        ),
    ];
    let mut worst = Vec::new();
    for (op, listener, legacy_dialect, request, pages) in &cases {
        let got = reply_len(&srv, listener, *legacy_dialect, request).await;
        let bound = if *pages {
            QUEUE + MESSAGE + SLACK
        } else {
            request.len() + SLACK
        };
        eprintln!(
            "{op:>16}: request {:>6} B, reply {got:>6} B, bound {bound:>6} B",
            request.len()
        );
        worst.push((op, got, bound));
    }
    // HTTP: the same bound per response.
    for (op, path) in [
        ("GET messages", "/v1/channels/big.a/messages?limit=1000"),
        ("GET channels", "/v1/channels?limit=1000"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, _, body) = http_raw(srv.addr("private"), &req).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["more"], true, "{op}: truncated, and says so");
        eprintln!(
            "{op:>16}: request {:>6} B, reply {:>6} B",
            req.len(),
            body.len()
        );
        worst.push((&"http", body.len(), QUEUE + MESSAGE + SLACK));
    }
    for (op, got, bound) in worst {
        assert!(got <= bound, "{op}: a {got}-byte reply, over {bound}");
    }
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_history_and_lists_page_through_everything() {
    let srv = loaded().await;
    let mut ws = v1(&srv.url("public")).await;
    let mut next = r#""oldest""#.to_owned();
    let mut seen = 0u64;
    for _ in 0..MESSAGES {
        let r = call(
            &mut ws,
            &format!(r#"{{"op":"history","channel":"big.a","start":{next},"limit":1000}}"#),
        )
        .await;
        let messages = r["messages"].as_array().unwrap();
        assert!(
            !messages.is_empty() && messages.len() < 10,
            "{}",
            messages.len()
        );
        for m in messages {
            seen += 1;
            assert_eq!(m["offset"].as_u64(), Some(seen));
        }
        if r["more"] == false {
            break;
        }
        next = format!(r#"{{"epoch":{},"offset":{seen}}}"#, r["epoch"]);
    }
    assert_eq!(seen, MESSAGES as u64);

    let mut p = v1(&srv.url("private")).await;
    let mut after = String::new();
    let mut listed = 0;
    loop {
        let r = call(
            &mut p,
            &format!(r#"{{"op":"channels","prefix":"list."{after},"limit":1000}}"#),
        )
        .await;
        let page = r["channels"].as_array().unwrap();
        assert!(!page.is_empty() && page.len() < 600);
        listed += page.len();
        if r["more"] == false {
            break;
        }
        let last = page.last().unwrap()["channel"].as_str().unwrap();
        after = format!(r#","after":"{last}""#);
    }
    assert_eq!(listed, 600);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_at_most_one_bounded_reply() {
    let srv = loaded().await;
    const ATTACKERS: usize = 8;
    let request = r#"{"op":"history","channel":"big.a","limit":1000}"#;
    let mut held = Vec::new();
    for _ in 0..ATTACKERS {
        let mut ws = v1(&srv.url("public")).await;
        // 64 bytes each: far more replies than the kernel's socket buffers absorb.
        for _ in 0..300 {
            send(&mut ws, request).await;
        }
        held.push(ws);
    }
    // Each session ends up blocked writing one reply that its client does not read.
    let one_reply = QUEUE - MESSAGE;
    srv.wait_for("every attacker holding a reply", |s| {
        s.stats().pending_reply_bytes >= ATTACKERS * one_reply
    })
    .await;
    let pending = srv.stats().pending_reply_bytes;
    eprintln!(
        "{ATTACKERS} clients that never read: {pending} bytes of replies pending on the server"
    );
    assert!(
        pending <= ATTACKERS * (QUEUE + MESSAGE + SLACK),
        "{pending} bytes of replies pending for {ATTACKERS} clients"
    );
    // The server still serves everyone else.
    let mut other = v1(&srv.url("public")).await;
    assert_eq!(call(&mut other, r#"{"op":"ping"}"#).await["ok"], true);
    drop(held);
    srv.wait_for("replies freed", |s| s.stats().pending_reply_bytes == 0)
        .await;
    srv.shutdown().await;
}
