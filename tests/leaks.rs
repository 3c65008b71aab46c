//! Memory: aborted handshakes and dropped sessions leave nothing behind. Alone in its own test
//! binary, so the process's RSS belongs to this test only. The original TSLM grew ~2.8 KB per
//! aborted handshake (28 MB per 10,000); the bound here is a small fraction of that.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

async fn churn(srv: &TestServer, n: usize) {
    let addr = srv.addr("public");
    let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        match i % 4 {
            0 => {}
            1 => s.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap(),
            2 => s.write_all(upgrade.as_bytes()).await.unwrap(),
            _ => {
                // A full session that subscribes and vanishes without a close frame.
                drop(s);
                let mut ws = v1(&srv.url("public")).await;
                call(&mut ws, r#"{"op":"subscribe","channel":"leak"}"#).await;
                continue;
            }
        }
        drop(s);
    }
    srv.wait_for("connections drained", |s| {
        s.stats().connections == 0 && s.stats().sessions == 0 && s.hub.stats().subscriptions == 0
    })
    .await;
}

#[tokio::test]
async fn ten_thousand_aborted_connections_leave_no_memory_behind() {
    let srv = TestServer::start(&two_listeners(NO_IP_LIMITS)).await;
    srv.hub.create(&"leak".parse().unwrap());
    churn(&srv, 2_000).await; // warm up allocator pools
    let before = rss_kib();
    churn(&srv, 10_000).await;
    let after = rss_kib();
    let growth = after.saturating_sub(before);
    eprintln!(
        "rss before {before} KiB, after {after} KiB, growth {growth} KiB for 10,000 connections"
    );
    assert!(
        growth < 4 * 1024,
        "RSS grew {growth} KiB over 10,000 aborted connections"
    );
}
