//! A client that reads is never cut off by its own replay. A churn soak found connections
//! replaying a backlog closed with 4000 "slow consumer" while another of their `disconnect`
//! channels received live messages: the replay filled the outbound queue to its limit, and the
//! next live message overflowed it before the writer woke. Here the live messages are the
//! client's own publishes, pipelined while it replays and reads everything, so each one lands
//! right after a replay step, when the queue is fullest.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tslm_protocol::{ChannelName, Payload};

const BACKLOG: u64 = 20_000;
const LIVE: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_is_never_closed_by_its_own_replay() {
    // The soak's queue: 64 messages; one listener where the client may subscribe and publish.
    let toml = format!(
        "[listener.both]\nip='127.0.0.1'\nport=0\n\
         default_endpoint_permissions=['Subscribe','CreateChannel','NotifyChannel']\n\
         channel_buffer_size = 64\n\
         [channel.\"r\"]\nbacklog_messages = {BACKLOG}\n"
    );
    let srv = TestServer::start(&toml).await;
    let mut ws = v1(&srv.url("both")).await;
    for c in ["r", "l"] {
        let r = call(&mut ws, &format!(r#"{{"op":"create","channel":"{c}"}}"#)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let r: ChannelName = "r".parse().unwrap();
    for i in 1..=BACKLOG {
        srv.hub.publish(&r, &Payload::text(&i.to_string())).unwrap();
    }
    let live = call(&mut ws, r#"{"op":"subscribe","channel":"l"}"#).await;
    assert_eq!(live["ok"], true, "{live}");
    let (mut tx, mut rx) = ws.split();
    // The publishes follow the subscribe back to back, so that they wait to be read while the
    // replay runs.
    let writer = tokio::spawn(async move {
        let sub = r#"{"op":"subscribe","id":0,"channel":"r","start":"oldest"}"#;
        tx.send(Message::Text(Utf8Bytes::from(sub))).await.unwrap();
        for i in 1..=LIVE {
            let req = format!(r#"{{"op":"publish","id":{i},"channel":"l","data":{i}}}"#);
            tx.send(Message::Text(Utf8Bytes::from(req))).await.unwrap();
        }
    });
    let (mut replayed, mut delivered, mut replies) = (0u64, 0u64, 0u64);
    while replayed < BACKLOG || delivered < LIVE || replies < LIVE + 1 {
        let msg = tokio::time::timeout(T, rx.next())
            .await
            .expect("the stream stalled")
            .expect("the stream ended")
            .expect("websocket error");
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(f) => {
                panic!("closed after {replayed} replayed and {delivered} live messages: {f:?}")
            }
            _ => continue,
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        match (v["event"].as_str(), v["channel"].as_str()) {
            (Some("message"), Some("r")) => {
                replayed += 1;
                assert_eq!(v["offset"].as_u64(), Some(replayed), "replay in order");
            }
            (Some("message"), Some("l")) => {
                delivered += 1;
                assert_eq!(v["offset"].as_u64(), Some(delivered), "live in order");
            }
            (None, _) => {
                assert_eq!(v["ok"], true, "{v}");
                replies += 1;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    writer.await.unwrap();
    assert_eq!(srv.stats().slow_consumer_closes, 0);
    srv.shutdown().await;
}
