//! Hostile input: the history amplification attack measured in memory. Anonymous clients on a
//! subscribe-only listener each send small `history` requests with the largest `limit` for a
//! channel of 1,000 messages of 30 KB, and never read. Before replies were bounded, each held a
//! 30 MB reply (20 such clients took the gateway from 78 MiB to 1.2 GiB); now each holds at most
//! one reply within `outbound_queue_bytes` (1 MiB by default). Alone in its own test binary, so
//! the process's RSS (server and clients) belongs to this test only.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use tslm_protocol::{ChannelName, Payload};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

const ATTACKERS: usize = 16;
const MESSAGE: usize = 30_000;
/// The default `outbound_queue_bytes`.
const QUEUE: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_history_replies_cannot_grow_the_gateway() {
    let toml = format!(
        "{}\n[channel.\"big.*\"]\nbacklog_messages = 1000\n",
        two_listeners("rate_limit_per_second = 100000")
    );
    let srv = TestServer::start(&toml).await;
    let mut p = v1(&srv.url("private")).await;
    let r = call(&mut p, r#"{"op":"create","channel":"big.a"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let big: ChannelName = "big.a".parse().unwrap();
    let data = Payload::text(&"x".repeat(MESSAGE));
    for _ in 0..1000 {
        srv.hub.publish(&big, &data).unwrap();
    }
    // Warm up: a client that reads replies of 600 KB.
    let mut reader = v1(&srv.url("public")).await;
    for _ in 0..3 {
        let r = call(
            &mut reader,
            r#"{"op":"history","channel":"big.a","limit":20}"#,
        )
        .await;
        assert_eq!(r["messages"].as_array().unwrap().len(), 20);
    }
    let request = r#"{"op":"history","channel":"big.a","limit":1000}"#;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kib();

    let mut held = Vec::new();
    for _ in 0..ATTACKERS {
        let mut ws = v1(&srv.url("public")).await;
        for _ in 0..50 {
            send(&mut ws, request).await;
        }
        held.push(ws);
    }
    let one_reply = QUEUE - MESSAGE;
    let deadline = tokio::time::Instant::now() + T;
    let mut peak = before;
    while srv.stats().pending_reply_bytes < ATTACKERS * one_reply {
        peak = peak.max(rss_kib());
        assert!(
            tokio::time::Instant::now() < deadline,
            "the attackers' replies never got pending: {:?}",
            srv.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the sessions settle on their blocked writes, then read the peak.
    for _ in 0..25 {
        peak = peak.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let growth = peak.saturating_sub(before);
    let pending = srv.stats().pending_reply_bytes;
    eprintln!(
        "rss before {before} KiB, peak {peak} KiB, growth {growth} KiB for {ATTACKERS} clients \
         that never read; {pending} bytes of replies pending"
    );
    // One reply of at most 1 MiB per client, plus the copy made to frame it.
    assert!(
        growth < 64 * 1024,
        "RSS grew {growth} KiB for {ATTACKERS} clients that never read"
    );
    drop(held);
    srv.wait_for("replies freed", |s| s.stats().pending_reply_bytes == 0)
        .await;
    srv.shutdown().await;
}
