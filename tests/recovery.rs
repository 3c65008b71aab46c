//! Backlog, gap-free recovery, slow-subscriber policies, msg_id de-duplication, replies and
//! deletion, over real sockets with real WebSocket clients.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::VecDeque;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The usual two listeners plus channel classes / server keys.
fn config(listener_extra: &str, tail: &str) -> String {
    format!("{}\n{tail}\n", two_listeners(listener_extra))
}

/// A v1 subscriber that keeps the events it read while waiting for replies.
struct Sub {
    ws: Ws,
    events: VecDeque<Value>,
}

impl Sub {
    async fn new(url: &str) -> Self {
        Self {
            ws: v1(url).await,
            events: VecDeque::new(),
        }
    }

    /// Sends `req` and returns its reply; events read before it are kept for `event`.
    async fn call(&mut self, req: &str) -> Value {
        send(&mut self.ws, req).await;
        loop {
            let v = recv_json(&mut self.ws).await;
            if v.get("event").is_some() {
                self.events.push_back(v);
            } else {
                return v;
            }
        }
    }

    async fn event(&mut self) -> Value {
        match self.events.pop_front() {
            Some(v) => v,
            None => recv_json(&mut self.ws).await,
        }
    }

    /// Reads events until a message with offset `last`; returns everything read.
    async fn until(&mut self, last: u64) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let v = self.event().await;
            let done = v["event"] == "message" && v["offset"] == last;
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

fn offsets(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            assert_eq!(e["event"], "message", "{e}");
            e["offset"].as_u64().unwrap()
        })
        .collect()
}

async fn publish(ws: &mut Ws, channel: &str, n: u64) -> Value {
    let r = call(
        ws,
        &format!(r#"{{"op":"publish","channel":"{channel}","data":{{"n":{n}}}}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    r
}

async fn create(ws: &mut Ws, channel: &str) -> String {
    let r = call(ws, &format!(r#"{{"op":"create","channel":"{channel}"}}"#)).await;
    assert_eq!(r["ok"], true, "{r}");
    r["epoch"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn resume_inside_the_window_replays_exactly_then_goes_live_while_publishes_race() {
    // A small outbound queue makes the replay come in many pieces, so live publishes land
    // between them.
    let srv = TestServer::start(&config(
        "channel_buffer_size = 16",
        "[channel.\"*\"]\nbacklog_messages = 10000",
    ))
    .await;
    let mut publisher = v1(&srv.url("private")).await;
    let epoch = create(&mut publisher, "feed").await;
    for n in 1..=300 {
        publish(&mut publisher, "feed", n).await;
    }
    let mut sub = Sub::new(&srv.url("public")).await;
    let racer = {
        let url = srv.url("private");
        tokio::spawn(async move {
            let mut p = v1(&url).await;
            for n in 301..=600 {
                let r = publish(&mut p, "feed", n).await;
                assert_eq!(r["offset"], n);
            }
        })
    };
    let reply = sub
        .call(&format!(
            r#"{{"op":"subscribe","id":1,"channel":"feed","start":{{"epoch":"{epoch}","offset":50}}}}"#
        ))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["from"], 51);
    assert_eq!(reply["epoch"], epoch);
    assert!(sub.events.is_empty(), "the reply comes before the replay");
    let head = reply["offset"].as_u64().unwrap();
    assert!(head >= 300);
    let got = sub.until(600).await;
    assert_eq!(offsets(&got), (51..=600).collect::<Vec<_>>());
    for e in &got {
        assert_eq!(
            e["data"]["n"], e["offset"],
            "each offset carries its own message"
        );
    }
    racer.await.unwrap();
    assert_silent(&mut sub.ws).await;
}

#[tokio::test]
async fn resume_past_the_window_and_across_a_restart_say_what_was_lost() {
    let toml = config("", "[channel.\"*\"]\nbacklog_messages = 10");
    let srv = TestServer::start(&toml).await;
    let mut publisher = v1(&srv.url("private")).await;
    let epoch = create(&mut publisher, "feed").await;
    for n in 1..=30 {
        publish(&mut publisher, "feed", n).await;
    }
    let mut sub = Sub::new(&srv.url("public")).await;
    let reply = sub
        .call(&format!(
            r#"{{"op":"subscribe","channel":"feed","start":{{"epoch":"{epoch}","offset":5}}}}"#
        ))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["lost"], json!({"reason":"expired","from":6,"to":20}));
    assert_eq!(reply["from"], 21);
    assert_eq!(offsets(&sub.until(30).await), (21..=30).collect::<Vec<_>>());
    srv.shutdown().await;

    // A restarted gateway has new epochs: a resume names the old one and is told.
    let srv = TestServer::start(&toml).await;
    let mut publisher = v1(&srv.url("private")).await;
    let new_epoch = create(&mut publisher, "feed").await;
    assert_ne!(new_epoch, epoch);
    for n in 1..=3 {
        publish(&mut publisher, "feed", n).await;
    }
    let mut sub = Sub::new(&srv.url("public")).await;
    let reply = sub
        .call(&format!(
            r#"{{"op":"subscribe","channel":"feed","start":{{"epoch":"{epoch}","offset":30}}}}"#
        ))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(reply["lost"], json!({"reason":"epoch_changed"}));
    assert_eq!(reply["epoch"], new_epoch);
    assert_eq!(reply["from"], 1, "it starts from what is there");
    assert_eq!(offsets(&sub.until(3).await), [1, 2, 3]);

    // An offset past the head of the current epoch cannot name a message.
    let mut other = Sub::new(&srv.url("public")).await;
    let reply = other
        .call(&format!(
            r#"{{"op":"subscribe","channel":"feed","start":{{"epoch":"{new_epoch}","offset":4}}}}"#
        ))
        .await;
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
}

#[tokio::test]
async fn last_n_oldest_and_history_reads() {
    let srv = TestServer::start(&config("", "[channel.\"*\"]\nbacklog_messages = 5")).await;
    let mut publisher = v1(&srv.url("private")).await;
    let epoch = create(&mut publisher, "feed").await;
    for n in 1..=8 {
        publish(&mut publisher, "feed", n).await;
    }
    let mut last = Sub::new(&srv.url("public")).await;
    let r = last
        .call(r#"{"op":"subscribe","channel":"feed","start":{"last":2}}"#)
        .await;
    assert_eq!(
        (r["offset"].as_u64(), r["from"].as_u64()),
        (Some(8), Some(7))
    );
    assert!(r.get("recovered").is_none());
    assert_eq!(offsets(&last.until(8).await), [7, 8]);

    let mut oldest = Sub::new(&srv.url("public")).await;
    let r = oldest
        .call(r#"{"op":"subscribe","channel":"feed","start":"oldest"}"#)
        .await;
    assert_eq!(r["from"], 4);
    assert_eq!(offsets(&oldest.until(8).await), [4, 5, 6, 7, 8]);

    // Both turn live after their replay.
    publish(&mut publisher, "feed", 9).await;
    assert_eq!(offsets(&last.until(9).await), [9]);
    assert_eq!(offsets(&oldest.until(9).await), [9]);

    // History without subscribing: from a position, bounded by `limit`.
    let mut reader = Sub::new(&srv.url("public")).await;
    let h = reader
        .call(&format!(
            r#"{{"op":"history","channel":"feed","start":{{"epoch":"{epoch}","offset":6}},"limit":2}}"#
        ))
        .await;
    assert_eq!(h["recovered"], true, "{h}");
    assert_eq!(
        h["messages"],
        json!([{"offset":7,"data":{"n":7}},{"offset":8,"data":{"n":8}}])
    );
    assert_eq!(h["more"], true);
    let h = reader.call(r#"{"op":"history","channel":"feed"}"#).await;
    assert_eq!(h["from"], 5);
    assert_eq!(h["messages"].as_array().unwrap().len(), 5);
    assert_eq!(h["more"], false);
    assert!(reader.events.is_empty(), "history does not subscribe");
    publish(&mut publisher, "feed", 10).await;
    assert_silent(&mut reader.ws).await;
}

/// A subscriber whose socket takes little: its TCP receive buffer is small.
async fn tight_subscriber(url: &str) -> Ws {
    let addr: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tslm.v1"),
    );
    let (ws, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    ws
}

/// Publishes `n` messages of about 1 KiB to `channel` as fast as the connection goes, reading
/// the replies concurrently; returns when every publish was acknowledged.
async fn flood(url: &str, channel: &str, n: u64) {
    let (mut tx, mut rx) = v1(url).await.split();
    let pad = "x".repeat(1000);
    let channel = channel.to_owned();
    let writer = tokio::spawn(async move {
        for i in 1..=n {
            let req = format!(
                r#"{{"op":"publish","channel":"{channel}","data":{{"n":{i},"pad":"{pad}"}}}}"#
            );
            tx.send(Message::Text(Utf8Bytes::from(req))).await.unwrap();
        }
        tx
    });
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(T, rx.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["ok"], true, "{v}");
                acked += 1;
            }
            _ => continue,
        }
    }
    drop(writer.await.unwrap());
}

fn slow_policy_config(policy: &str) -> String {
    format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         channel_buffer_size = 100000\noutbound_queue_bytes = 268435456\n\
         [listener.slow]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         channel_buffer_size = 32\noutbound_queue_bytes = 65536\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n\
         [channel.\"*\"]\nbacklog_messages = 100000\nslow_subscriber = \"{policy}\"\n"
    )
}

const FLOOD: u64 = 20_000;

/// Subscribes a fast and a stalled subscriber, floods the channel, and returns both after the
/// flood was acknowledged (the stalled one has read nothing yet).
async fn flood_with_a_stalled_subscriber(srv: &TestServer) -> (Sub, Ws, String) {
    let mut publisher = v1(&srv.url("private")).await;
    let epoch = create(&mut publisher, "feed").await;
    let mut fast = Sub::new(&srv.url("public")).await;
    assert_eq!(
        fast.call(r#"{"op":"subscribe","channel":"feed"}"#).await["ok"],
        true
    );
    let mut stalled = tight_subscriber(&srv.url("slow")).await;
    let r = call(&mut stalled, r#"{"op":"subscribe","channel":"feed"}"#).await;
    assert_eq!(r["ok"], true);
    let reader = tokio::spawn(async move {
        let got = fast.until(FLOOD).await;
        (fast, got)
    });
    flood(&srv.url("private"), "feed", FLOOD).await;
    let (fast, got) = reader.await.unwrap();
    assert_eq!(
        offsets(&got),
        (1..=FLOOD).collect::<Vec<_>>(),
        "the fast subscriber is unaffected"
    );
    (fast, stalled, epoch)
}

#[tokio::test]
async fn drop_oldest_keeps_the_connection_and_names_every_dropped_offset() {
    let srv = TestServer::start(&slow_policy_config("drop_oldest")).await;
    let (_fast, mut stalled, epoch) = flood_with_a_stalled_subscriber(&srv).await;
    // Now read: every offset arrives once in order or is named by a gap event.
    let mut next = 1;
    let mut gaps = Vec::new();
    while next <= FLOOD {
        let e = recv_json(&mut stalled).await;
        match e["event"].as_str().unwrap() {
            "message" => {
                assert_eq!(e["offset"], next, "no silent gap, no duplicate");
                next += 1;
            }
            "gap" => {
                assert_eq!(e["from"], next, "{e}");
                let to = e["to"].as_u64().unwrap();
                assert!(to >= next);
                gaps.push((next, to));
                next = to + 1;
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert!(
        !gaps.is_empty(),
        "the stalled subscriber had messages dropped"
    );
    // The connection is still there, and what was dropped is in the backlog.
    let (from, to) = gaps[0];
    let h = call(
        &mut stalled,
        &format!(
            r#"{{"op":"history","channel":"feed","start":{{"epoch":"{epoch}","offset":{}}},"limit":3}}"#,
            from - 1
        ),
    )
    .await;
    assert_eq!(h["recovered"], true, "{h}");
    assert_eq!(h["messages"][0]["offset"], from);
    assert!(to >= from);
}

#[tokio::test]
async fn latest_keeps_the_connection_and_delivers_the_newest() {
    let srv = TestServer::start(&slow_policy_config("latest")).await;
    let (_fast, mut stalled, _) = flood_with_a_stalled_subscriber(&srv).await;
    let mut last = 0;
    let mut count = 0;
    while last < FLOOD {
        let e = recv_json(&mut stalled).await;
        assert_eq!(e["event"], "message", "no other event: {e}");
        let o = e["offset"].as_u64().unwrap();
        assert!(o > last, "offsets only increase");
        last = o;
        count += 1;
    }
    assert!(count < FLOOD, "older messages were conflated away");
    assert_eq!(call(&mut stalled, r#"{"op":"ping"}"#).await["ok"], true);
}

#[tokio::test]
async fn a_disconnected_slow_subscriber_resumes_from_the_backlog_without_loss() {
    let srv = TestServer::start(&slow_policy_config("disconnect")).await;
    let (_fast, mut stalled, epoch) = flood_with_a_stalled_subscriber(&srv).await;
    // It reads what reached it, then the close.
    let mut seen = 0;
    let code = loop {
        match tokio::time::timeout(T, stalled.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["offset"], seen + 1);
                seen += 1;
            }
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break None,
        }
    };
    assert!(seen < FLOOD);
    assert!(
        matches!(code, Some(4000) | None),
        "slow consumer close: {code:?}"
    );
    // The client reconnects and resumes where it stopped: exactly the rest, in order.
    let mut again = Sub::new(&srv.url("public")).await;
    let r = again
        .call(&format!(
            r#"{{"op":"subscribe","channel":"feed","start":{{"epoch":"{epoch}","offset":{seen}}}}}"#
        ))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(
        offsets(&again.until(FLOOD).await),
        (seen + 1..=FLOOD).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_repeated_msg_id_is_acknowledged_with_the_original_offset_and_delivered_once() {
    let srv = TestServer::default().await;
    let mut publisher = v1(&srv.url("private")).await;
    create(&mut publisher, "orders").await;
    let mut sub = Sub::new(&srv.url("public")).await;
    sub.call(r#"{"op":"subscribe","channel":"orders"}"#).await;
    let req = r#"{"op":"publish","channel":"orders","msg_id":"order-17","data":{"qty":1}}"#;
    let first = call(&mut publisher, req).await;
    let retry = call(&mut publisher, req).await;
    assert_eq!(first["offset"], 1);
    assert!(first.get("duplicate").is_none());
    assert_eq!(
        (retry["offset"].as_u64(), &retry["duplicate"]),
        (Some(1), &json!(true))
    );
    publish(&mut publisher, "orders", 2).await;
    assert_eq!(offsets(&sub.until(2).await), [1, 2], "delivered once");
    let bad = call(
        &mut publisher,
        &format!(
            r#"{{"op":"publish","channel":"orders","msg_id":"{}","data":1}}"#,
            "k".repeat(129)
        ),
    )
    .await;
    assert_eq!(bad["error"]["code"], "bad_request");
}

fn replies_config() -> String {
    config(
        "",
        "[channel.\"rpc.*\"]\nreplies = true\nmax_reply_bytes = 64\nreplies_per_second = 3\nreply_window = 10",
    )
}

#[tokio::test]
async fn replies_travel_over_the_publishers_own_connection() {
    let srv = TestServer::start(&replies_config()).await;
    let mut service = v1(&srv.url("private")).await;
    let mut other_service = v1(&srv.url("private")).await;
    create(&mut service, "rpc.quotes").await;
    let mut client = Sub::new(&srv.url("public")).await;
    client
        .call(r#"{"op":"subscribe","channel":"rpc.quotes"}"#)
        .await;
    publish(&mut service, "rpc.quotes", 1).await;
    publish(&mut other_service, "rpc.quotes", 2).await;
    assert_eq!(offsets(&client.until(2).await), [1, 2]);

    let r = client
        .call(r#"{"op":"reply","id":7,"channel":"rpc.quotes","offset":1,"data":{"accept":true}}"#)
        .await;
    assert_eq!(r, json!({"id":7,"ok":true}));
    let ev = recv_json(&mut service).await;
    assert_eq!(ev["event"], "reply");
    assert_eq!(ev["channel"], "rpc.quotes");
    assert_eq!(ev["offset"], 1);
    assert_eq!(ev["data"], json!({"accept":true}));
    assert!(ev["from"].as_str().is_some_and(|f| !f.is_empty()));
    assert_eq!(
        ev.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["channel", "data", "event", "from", "offset"],
        "nothing outside the reply schema"
    );
    assert_silent(&mut other_service).await;

    // The second service gets the reply to its own message, naming the same replier.
    client
        .call(r#"{"op":"reply","channel":"rpc.quotes","offset":2,"data":"ok"}"#)
        .await;
    let ev2 = recv_json(&mut other_service).await;
    assert_eq!(
        (ev2["offset"].as_u64(), &ev2["from"]),
        (Some(2), &ev["from"])
    );
    assert_silent(&mut service).await;
}

#[tokio::test]
async fn replies_are_refused_where_not_allowed_or_when_the_publisher_is_gone() {
    let srv = TestServer::start(&replies_config()).await;
    let private = srv.addr("private");
    let mut service = v1(&srv.url("private")).await;
    create(&mut service, "rpc.q").await;
    create(&mut service, "plain").await;
    let mut client = Sub::new(&srv.url("public")).await;
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or("").to_owned();

    publish(&mut service, "rpc.q", 1).await;
    let r = client
        .call(r#"{"op":"reply","channel":"rpc.q","offset":1,"data":1}"#)
        .await;
    assert_eq!(code(&r), "forbidden", "not subscribed: {r}");
    client.call(r#"{"op":"subscribe","channel":"rpc.q"}"#).await;
    client.call(r#"{"op":"subscribe","channel":"plain"}"#).await;

    publish(&mut service, "plain", 1).await;
    let r = client
        .call(r#"{"op":"reply","channel":"plain","offset":1,"data":1}"#)
        .await;
    assert_eq!(code(&r), "forbidden", "replies are off by default: {r}");

    let big = format!(
        r#"{{"op":"reply","channel":"rpc.q","offset":1,"data":"{}"}}"#,
        "x".repeat(100)
    );
    assert_eq!(code(&client.call(&big).await), "too_large");
    let r = client
        .call(r#"{"op":"reply","channel":"rpc.q","offset":99,"data":1}"#)
        .await;
    assert_eq!(code(&r), "not_found", "{r}");

    // Attempts count against the reply rate (3 per second here): start a fresh second.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Published over HTTP: there is no connection to reply over.
    let (status, _, _) = http(private, "POST", "/v1/channels/rpc.q/messages", &[], "3").await;
    assert_eq!(status, 200);
    let r = client
        .call(r#"{"op":"reply","channel":"rpc.q","offset":2,"data":1}"#)
        .await;
    assert_eq!(code(&r), "gone", "{r}");

    // Rate: 3 per second per connection, one used above.
    let mut limited = false;
    for _ in 0..5 {
        let r = client
            .call(r#"{"op":"reply","channel":"rpc.q","offset":1,"data":1}"#)
            .await;
        if code(&r) == "rate_limited" {
            limited = true;
            break;
        }
    }
    assert!(limited, "the reply rate is limited");

    // The publisher leaves: its messages can no longer be answered.
    let _ = recv_json(&mut service).await; // a reply that got through
    drop(service);
    srv.wait_for("the publisher to go", |s| s.stats().sessions == 1)
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // a fresh rate window
    let r = client
        .call(r#"{"op":"reply","channel":"rpc.q","offset":1,"data":1}"#)
        .await;
    assert_eq!(code(&r), "gone", "{r}");
}

#[tokio::test]
async fn deleting_a_channel_tells_its_subscribers_and_starts_a_new_epoch() {
    let srv = TestServer::default().await;
    let mut admin = v1(&srv.url("private")).await;
    let epoch = create(&mut admin, "news").await;
    publish(&mut admin, "news", 1).await;
    let mut sub = Sub::new(&srv.url("public")).await;
    sub.call(r#"{"op":"subscribe","channel":"news"}"#).await;
    let mut old = legacy(&srv.url("public")).await;
    send(&mut old, r#"{"Subscribe":"news"}"#).await;
    recv(&mut old).await;

    let r = call(&mut admin, r#"{"op":"delete","id":1,"channel":"news"}"#).await;
    assert_eq!(r, json!({"id":1,"ok":true,"deleted":true}));
    assert_eq!(
        sub.event().await,
        json!({"event":"closed","channel":"news","reason":"deleted"})
    );
    assert_eq!(
        recv(&mut old).await,
        r#"{"Error":"Channel not found: news"}"#
    );
    let r = call(&mut admin, r#"{"op":"delete","channel":"news"}"#).await;
    assert_eq!(r["error"]["code"], "not_found");
    let r = sub.call(r#"{"op":"delete","channel":"news"}"#).await;
    assert_eq!(
        r["error"]["code"], "forbidden",
        "public listeners may not delete"
    );

    let new_epoch = create(&mut admin, "news").await;
    assert_ne!(new_epoch, epoch);
    assert_eq!(publish(&mut admin, "news", 1).await["offset"], 1);
    // The old subscription ended: nothing arrives until the client subscribes again, and a
    // resume naming the old epoch is told.
    assert_silent(&mut sub.ws).await;
    let r = sub
        .call(&format!(
            r#"{{"op":"subscribe","channel":"news","start":{{"epoch":"{epoch}","offset":1}}}}"#
        ))
        .await;
    assert_eq!(r["lost"], json!({"reason":"epoch_changed"}));
    assert_eq!(offsets(&sub.until(1).await), [1]);
}

#[tokio::test]
async fn operators_list_channels_on_private_listeners_only() {
    let srv = TestServer::default().await;
    let mut admin = v1(&srv.url("private")).await;
    for c in ["b.x", "a.y", "a.z"] {
        create(&mut admin, c).await;
    }
    publish(&mut admin, "a.z", 1).await;
    let mut sub = Sub::new(&srv.url("public")).await;
    sub.call(r#"{"op":"subscribe","channel":"a.z"}"#).await;
    let r = call(&mut admin, r#"{"op":"channels","prefix":"a."}"#).await;
    let list = r["channels"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["channel"], "a.y");
    assert_eq!(list[1]["channel"], "a.z");
    assert_eq!(list[1]["subscribers"], 1);
    assert_eq!(list[1]["offset"], 1);
    assert_eq!(list[1]["backlog"]["messages"], 1);
    assert_eq!(list[1]["backlog"]["first_offset"], 1);
    assert_eq!(r["more"], false);
    let r = sub.call(r#"{"op":"channels"}"#).await;
    assert_eq!(r["error"]["code"], "forbidden");
}

#[tokio::test]
async fn original_protocol_subscribers_get_the_class_replay_and_nothing_else_changes() {
    let srv = TestServer::start(&config("", "[channel.\"replayed.*\"]\nlegacy_replay = 2")).await;
    let mut admin = v1(&srv.url("private")).await;
    create(&mut admin, "replayed.a").await;
    create(&mut admin, "plain").await;
    for n in 1..=4 {
        publish(&mut admin, "replayed.a", n).await;
        publish(&mut admin, "plain", n).await;
    }
    let mut old = legacy(&srv.url("public")).await;
    send(&mut old, r#"{"Subscribe":"replayed.a"}"#).await;
    assert_eq!(
        recv(&mut old).await,
        r#"{"Success":"Command executed: Subscribe(\"replayed.a\")"}"#
    );
    assert_eq!(
        recv(&mut old).await,
        r#"{"ChannelMessage":["replayed.a",{"Json":{"n":3}}]}"#
    );
    assert_eq!(
        recv(&mut old).await,
        r#"{"ChannelMessage":["replayed.a",{"Json":{"n":4}}]}"#
    );
    send(&mut old, r#"{"Subscribe":"plain"}"#).await;
    assert_eq!(
        recv(&mut old).await,
        r#"{"Success":"Command executed: Subscribe(\"plain\")"}"#
    );
    assert_silent(&mut old).await;
}

#[tokio::test]
async fn a_replay_larger_than_the_outbound_queue_is_paced_not_punished() {
    // 1000 messages of 2 KB replayed through a 1 MiB queue, and 200 of 500 bytes through a
    // 1 KiB one: the replay waits for room instead of overflowing the queue.
    for (queue, n, size) in [(1024 * 1024, 1000u64, 2000usize), (1024, 200, 500)] {
        let srv = TestServer::start(&config(
            &format!("outbound_queue_bytes = {queue}"),
            "[channel.\"*\"]\nbacklog_messages = 10000\nslow_subscriber = \"disconnect\"",
        ))
        .await;
        let mut publisher = v1(&srv.url("private")).await;
        create(&mut publisher, "big").await;
        let pad = "y".repeat(size);
        for i in 1..=n {
            let r = call(
                &mut publisher,
                &format!(r#"{{"op":"publish","channel":"big","data":{{"n":{i},"pad":"{pad}"}}}}"#),
            )
            .await;
            assert_eq!(r["ok"], true, "{r}");
        }
        let mut sub = Sub::new(&srv.url("public")).await;
        let r = sub
            .call(r#"{"op":"subscribe","channel":"big","start":"oldest"}"#)
            .await;
        assert_eq!(r["from"], 1, "{r}");
        assert_eq!(
            offsets(&sub.until(n).await),
            (1..=n).collect::<Vec<_>>(),
            "queue {queue}"
        );
        assert_eq!(sub.call(r#"{"op":"ping"}"#).await["ok"], true);
    }
}
