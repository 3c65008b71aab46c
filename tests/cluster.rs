//! Cluster mode against a real `redis-server` (started by each test on a free loopback port)
//! and several gateways sharing it: one channel space, offsets assigned once, replies and
//! resumes across nodes, and the delivery guarantee through Redis faults.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "support/redis.rs"]
mod redis;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use redis::Redis;
use serde_json::Value;

fn cluster_config(redis: &[String], extra_server: &str) -> String {
    let urls = redis
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{}\n[channel.\"*\"]\nbacklog_messages = 1000\n{extra_server}\n\
         [cluster]\nredis = [{urls}]\ncommand_timeout_ms = 500\nprobe_interval_ms = 200\nsync_interval_seconds = 1\n",
        two_listeners("")
    )
}

async fn node(redis: &[String]) -> TestServer {
    let srv = TestServer::start(&cluster_config(redis, "")).await;
    wait_ready(&srv).await;
    srv
}

/// Until `/readyz` answers 200 (the node follows every shard).
async fn wait_ready(srv: &TestServer) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (status, _, _) = http_raw(
            srv.addr("public"),
            "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if status == 200 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "node never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn readyz(srv: &TestServer) -> u16 {
    http_raw(
        srv.addr("public"),
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .0
}

/// A v1 subscriber that records everything it is sent, per channel.
struct Sub {
    ws: Ws,
    log: Vec<Value>,
}

impl Sub {
    async fn new(url: &str) -> Self {
        Sub {
            ws: v1(url).await,
            log: Vec::new(),
        }
    }

    /// Sends a request; returns its reply, keeping events that come before it.
    async fn call(&mut self, req: &str) -> Value {
        send(&mut self.ws, req).await;
        loop {
            let v = recv_json(&mut self.ws).await;
            if v.get("event").is_some() {
                self.log.push(v);
            } else {
                return v;
            }
        }
    }

    async fn subscribe(&mut self, channel: &str, start: &str) -> Value {
        let r = self
            .call(&format!(
                r#"{{"op":"subscribe","channel":"{channel}","start":{start}}}"#
            ))
            .await;
        assert_eq!(r["ok"], true, "{r}");
        r
    }

    /// Reads events until one of `channel` reaches `offset` (or a `closed`).
    async fn until(&mut self, channel: &str, offset: u64) {
        if self.reached(channel, offset) {
            return;
        }
        loop {
            let v = recv_json(&mut self.ws).await;
            self.log.push(v);
            if self.reached(channel, offset) {
                return;
            }
        }
    }

    fn reached(&self, channel: &str, offset: u64) -> bool {
        self.log.iter().any(|v| {
            v["channel"] == channel
                && ((v["event"] == "message" && v["offset"].as_u64() >= Some(offset))
                    || (v["event"] == "gap" && v["to"].as_u64() >= Some(offset))
                    || v["event"] == "closed")
        })
    }

    fn offsets(&self, channel: &str) -> Vec<u64> {
        self.log
            .iter()
            .filter(|v| v["channel"] == channel && v["event"] == "message")
            .map(|v| v["offset"].as_u64().unwrap())
            .collect()
    }
}

/// The guarantee, per subscriber of `channel` that started at `from`: every offset up to `to`
/// arrived exactly once and in order, or inside a `gap` it was told of; and across all
/// subscribers, an offset names one payload.
fn check_no_hole_no_repeat(subs: &[&Sub], channel: &str, from: u64, to: u64) {
    let mut payloads: HashMap<u64, String> = HashMap::new();
    for (i, s) in subs.iter().enumerate() {
        let mut next = from;
        for v in s.log.iter().filter(|v| v["channel"] == channel) {
            match v["event"].as_str() {
                Some("message") => {
                    let o = v["offset"].as_u64().unwrap();
                    assert_eq!(o, next, "subscriber {i}: offset {o} where {next} was due");
                    let data = v["data"].to_string();
                    let seen = payloads.entry(o).or_insert_with(|| data.clone());
                    assert_eq!(*seen, data, "offset {o} names two payloads");
                    next += 1;
                }
                Some("gap") => {
                    assert_eq!(v["from"].as_u64(), Some(next), "subscriber {i}: {v}");
                    next = v["to"].as_u64().unwrap() + 1;
                }
                _ => {}
            }
        }
        assert!(
            next > to,
            "subscriber {i} stopped at {next}, {to} was published"
        );
    }
}

async fn publish(ws: &mut Ws, channel: &str, n: u64) -> Value {
    call(
        ws,
        &format!(r#"{{"op":"publish","channel":"{channel}","data":{{"n":{n}}}}}"#),
    )
    .await
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_every_nodes_subscribers_once_in_order() {
    let redis = Redis::start().await;
    let urls = [redis.url()];
    let (a, b, c) = (node(&urls).await, node(&urls).await, node(&urls).await);
    let mut p = v1(&a.url("private")).await;
    let r = call(&mut p, r#"{"op":"create","channel":"feed"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    // Created on A, it exists on C.
    let mut p_c = v1(&c.url("private")).await;
    let r = call(&mut p_c, r#"{"op":"create","channel":"feed"}"#).await;
    assert_eq!(
        (r["created"].as_bool(), r["epoch"].as_str()),
        (Some(false), Some(&*epoch)),
        "{r}"
    );
    let mut subs = Vec::new();
    for n in [&a, &b, &c] {
        let mut s = Sub::new(&n.url("public")).await;
        s.subscribe("feed", r#""new""#).await;
        subs.push(s);
    }
    // Publishes from two nodes interleave: offsets come from Redis, once for the cluster.
    for n in 1..=100u64 {
        let via = if n % 2 == 0 { &mut p } else { &mut p_c };
        let r = publish(via, "feed", n).await;
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["offset"], n, "{r}");
        assert_eq!(r["epoch"], epoch.as_str());
    }
    for s in &mut subs {
        s.until("feed", 100).await;
        assert_eq!(s.offsets("feed"), (1..=100).collect::<Vec<_>>());
    }
    check_no_hole_no_repeat(&subs.iter().collect::<Vec<_>>(), "feed", 1, 100);

    // msg_id de-duplication is cluster-wide.
    let first = call(
        &mut p,
        r#"{"op":"publish","channel":"feed","data":1,"msg_id":"m-1"}"#,
    )
    .await;
    let again = call(
        &mut p_c,
        r#"{"op":"publish","channel":"feed","data":1,"msg_id":"m-1"}"#,
    )
    .await;
    assert_eq!(first["offset"], 101, "{first}");
    assert_eq!(
        (again["offset"].as_u64(), again["duplicate"].as_bool()),
        (Some(101), Some(true)),
        "{again}"
    );

    // History and resume through another node than the one that published.
    let mut late = Sub::new(&b.url("public")).await;
    let h = late
        .call(&format!(
            r#"{{"op":"history","channel":"feed","start":{{"epoch":"{epoch}","offset":95}},"limit":10}}"#
        ))
        .await;
    assert_eq!(h["ok"], true, "{h}");
    let offs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, (96..=101).collect::<Vec<_>>(), "{h}");
    let r = late
        .subscribe("feed", &format!(r#"{{"epoch":"{epoch}","offset":90}}"#))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    late.until("feed", 101).await;
    assert_eq!(late.offsets("feed"), (91..=101).collect::<Vec<_>>());

    // Listing and subscriber counts are the cluster's (counts are written every few seconds).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let l = call(&mut p_c, r#"{"op":"channels"}"#).await;
        assert_eq!(l["ok"], true, "{l}");
        let feed = &l["channels"][0];
        assert_eq!(feed["channel"], "feed", "{l}");
        assert_eq!(feed["offset"], 101, "{l}");
        if feed["subscribers"] == 4 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriber count never 4: {l}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Deleting on B closes the subscriptions on every node.
    let mut p_b = v1(&b.url("private")).await;
    let r = call(&mut p_b, r#"{"op":"delete","channel":"feed"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    for s in subs.iter_mut().chain(std::iter::once(&mut late)) {
        s.until("feed", u64::MAX).await;
        let closed = s
            .log
            .iter()
            .find(|v| v["event"] == "closed")
            .expect("closed");
        assert_eq!(closed["reason"], "deleted", "{closed}");
    }
    let r = publish(&mut p, "feed", 1).await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
}

/// Publishes sent back to back (one write, answers read after) reach the follower as bursts of
/// PUB/SUB messages of two channels interleaved, which it applies in runs: every subscriber on
/// every node still gets each channel's messages once, in order, with no gap.
#[tokio::test]
async fn a_burst_of_publishes_reaches_every_nodes_subscribers_once_in_order() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let redis = Redis::start().await;
    let urls = [redis.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let mut p = v1(&a.url("private")).await;
    for c in ["burst.a", "burst.b"] {
        let r = call(&mut p, &format!(r#"{{"op":"create","channel":"{c}"}}"#)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut subs = Vec::new();
    for n in [&a, &b, &a, &b] {
        let mut s = Sub::new(&n.url("public")).await;
        s.subscribe("burst.a", r#""new""#).await;
        s.subscribe("burst.b", r#""new""#).await;
        subs.push(s);
    }
    // Mostly runs of one channel, broken now and then by the other's messages.
    const EACH: u64 = 300;
    let mut sent = Vec::new();
    let (mut na, mut nb) = (0, 0);
    for i in 0..2 * EACH {
        let c = if (i / 7) % 2 == 0 && na < EACH || nb == EACH {
            na += 1;
            "burst.a"
        } else {
            nb += 1;
            "burst.b"
        };
        sent.push(c);
        let req = format!(r#"{{"op":"publish","id":{i},"channel":"{c}","data":{{"i":{i}}}}}"#);
        p.feed(Message::Text(req.into())).await.unwrap();
    }
    p.flush().await.unwrap();
    let mut next = HashMap::from([("burst.a", 1u64), ("burst.b", 1u64)]);
    for (i, c) in sent.iter().enumerate() {
        let r = recv_json(&mut p).await;
        assert_eq!(r["id"], i, "answers come in order: {r}");
        assert_eq!(r["ok"], true, "{r}");
        let due = next.get_mut(c).unwrap();
        assert_eq!(r["offset"], *due, "{r}");
        *due += 1;
    }
    for s in &mut subs {
        s.until("burst.a", EACH).await;
        s.until("burst.b", EACH).await;
    }
    for c in ["burst.a", "burst.b"] {
        for s in &subs {
            assert_eq!(s.offsets(c), (1..=EACH).collect::<Vec<_>>());
            assert!(
                !s.log.iter().any(|v| v["event"] == "gap"),
                "no gap: {:?}",
                s.log.iter().find(|v| v["event"] == "gap")
            );
        }
        check_no_hole_no_repeat(&subs.iter().collect::<Vec<_>>(), c, 1, EACH);
    }

    // In one burst, each answer is the one a publish alone would get, in its place: a message
    // too large for the channel is refused without taking an offset, a msg_id repeated within
    // the burst is a duplicate of the first.
    let r = call(
        &mut p,
        r#"{"op":"create","channel":"burst.c","options":{"max_message_bytes":50}}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let mut s = Sub::new(&b.url("public")).await;
    s.subscribe("burst.c", r#""new""#).await;
    let big = "x".repeat(100);
    let burst = [
        r#"{"op":"publish","id":1,"channel":"burst.c","data":1,"msg_id":"k-1"}"#.to_owned(),
        format!(r#"{{"op":"publish","id":2,"channel":"burst.c","data":"{big}"}}"#),
        r#"{"op":"publish","id":3,"channel":"burst.c","data":3}"#.to_owned(),
        r#"{"op":"publish","id":4,"channel":"burst.c","data":4,"msg_id":"k-1"}"#.to_owned(),
        r#"{"op":"publish","id":5,"channel":"burst.c","data":5}"#.to_owned(),
    ];
    for req in burst {
        p.feed(Message::Text(req.into())).await.unwrap();
    }
    p.flush().await.unwrap();
    let answers: Vec<Value> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(recv_json(&mut p).await);
        }
        v
    };
    let ids: Vec<u64> = answers.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5], "{answers:?}");
    assert_eq!(answers[0]["offset"], 1, "{answers:?}");
    assert_eq!(answers[1]["error"]["code"], "too_large", "{answers:?}");
    assert_eq!(answers[2]["offset"], 2, "{answers:?}");
    assert_eq!(
        (
            answers[3]["offset"].as_u64(),
            answers[3]["duplicate"].as_bool()
        ),
        (Some(1), Some(true)),
        "{answers:?}"
    );
    assert_eq!(answers[4]["offset"], 3, "{answers:?}");
    s.until("burst.c", 3).await;
    assert_eq!(s.offsets("burst.c"), [1, 2, 3]);
}

/// In cluster mode a burst of commands runs grouped (`Connection::on_texts`): a connection that
/// goes over its rate limit still gets every reply up to the one that made it abusive, the
/// `rate_limited` ones included, before it is closed.
#[tokio::test]
async fn a_rate_limited_burst_is_answered_up_to_the_close() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let redis = Redis::start().await;
    let a = node(&[redis.url()]).await;
    let mut s = v1(&a.url("public")).await;
    for i in 0..150 {
        let req = format!(r#"{{"op":"ping","id":{i}}}"#);
        s.feed(Message::Text(req.into())).await.unwrap();
    }
    s.flush().await.unwrap();
    let (mut ok, mut limited) = (0, 0);
    loop {
        match tokio::time::timeout(T, s.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.contains("rate_limited") => limited += 1,
            Some(Ok(Message::Text(_))) => ok += 1,
            _ => break,
        }
    }
    assert!(
        ok > 0 && limited > 0,
        "{ok} answered, {limited} rate limited"
    );
}

/// Publishes `count` messages `{"n": i}` with msg_id `m-<i>` through `url`, retrying an
/// `unavailable` answer with the same msg_id (at most `deadline`); returns each message's
/// acknowledged (epoch, offset).
async fn publish_through(
    url: String,
    channel: &'static str,
    count: u64,
    pace: Duration,
) -> Vec<(String, u64)> {
    let mut ws = v1(&url).await;
    let mut acked = Vec::new();
    for n in 1..=count {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = call(
                &mut ws,
                &format!(r#"{{"op":"publish","channel":"{channel}","data":{{"n":{n}}},"msg_id":"m-{n}"}}"#),
            )
            .await;
            if r["ok"] == true {
                acked.push((
                    r["epoch"].as_str().unwrap().to_owned(),
                    r["offset"].as_u64().unwrap(),
                ));
                break;
            }
            assert!(
                r["error"]["code"] == "unavailable" || r["error"]["code"] == "not_found",
                "{r}"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "never published {n}: {r}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(pace).await;
    }
    acked
}

fn auto_create(redis: &[String]) -> String {
    cluster_config(redis, "").replace(
        "[channel.\"*\"]\nbacklog_messages = 1000",
        "[channel.\"*\"]\nbacklog_messages = 1000\nauto_create = true",
    )
}

#[tokio::test]
async fn a_killed_pubsub_connection_is_healed_from_the_stream_with_nothing_lost() {
    let redis = Redis::start().await;
    let urls = [redis.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"feed"}"#).await["ok"],
        true
    );
    let mut subs = Vec::new();
    for n in [&a, &b] {
        let mut s = Sub::new(&n.url("public")).await;
        s.subscribe("feed", r#""new""#).await;
        subs.push(s);
    }
    let publisher = tokio::spawn(publish_through(
        a.url("private"),
        "feed",
        300,
        Duration::from_millis(2),
    ));
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let killed = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        assert!(killed.starts_with(':'), "{killed}");
    }
    let acked = publisher.await.unwrap();
    let last = acked.last().unwrap().1;
    assert_eq!(last, 300, "every publish acknowledged once");
    for s in &mut subs {
        s.until("feed", last).await;
        assert_eq!(
            s.offsets("feed"),
            (1..=last).collect::<Vec<_>>(),
            "healed, not lost"
        );
    }
    check_no_hole_no_repeat(&subs.iter().collect::<Vec<_>>(), "feed", 1, last);
}

#[tokio::test]
async fn a_stopped_redis_makes_writes_unavailable_and_not_ready_then_everything_resumes() {
    let redis = Redis::start().await;
    let urls = [redis.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"feed"}"#).await["ok"],
        true
    );
    let mut s = Sub::new(&b.url("public")).await;
    s.subscribe("feed", r#""new""#).await;
    for n in 1..=10 {
        assert_eq!(publish(&mut p, "feed", n).await["ok"], true);
    }
    redis.signal("STOP");
    // A publish is refused within the command timeout: never a hang, never acknowledged.
    let late = r#"{"op":"publish","channel":"feed","data":{"n":11},"msg_id":"late"}"#;
    let r = call(&mut p, late).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    // Over HTTP: 503 with Retry-After.
    let (status, head, body) = http(
        a.addr("private"),
        "POST",
        "/v1/channels/feed/messages",
        &[("Content-Type", "application/json")],
        r#"{"data":{"n":11},"msg_id":"late"}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    assert_eq!(body["error"]["code"], "unavailable");
    // Readiness turns false once the PUB/SUB ping goes unanswered.
    let deadline = tokio::time::Instant::now() + T;
    while readyz(&b).await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready with Redis stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.signal("CONT");
    wait_ready(&a).await;
    wait_ready(&b).await;
    // A refused publish may still be applied once Redis resumes (it had the command): retried
    // with its msg_id it is published exactly once either way.
    let r = call(&mut p, late).await;
    assert_eq!(
        (r["ok"].as_bool(), r["offset"].as_u64()),
        (Some(true), Some(11)),
        "{r}"
    );
    for n in 12..=15 {
        assert_eq!(publish(&mut p, "feed", n).await["offset"], n);
    }
    s.until("feed", 15).await;
    assert_eq!(s.offsets("feed"), (1..=15).collect::<Vec<_>>());
    check_no_hole_no_repeat(&[&s], "feed", 1, 15);
}

#[tokio::test]
async fn redis_restarted_empty_ends_subscriptions_explicitly_and_offsets_start_a_new_epoch() {
    let mut redis = Redis::start().await;
    let urls = [redis.url()];
    let a = TestServer::start(&auto_create(&urls)).await;
    wait_ready(&a).await;
    let b = TestServer::start(&auto_create(&urls)).await;
    wait_ready(&b).await;
    let mut p = v1(&a.url("private")).await;
    let first = publish(&mut p, "feed", 1).await;
    assert_eq!(first["ok"], true, "{first}");
    let old_epoch = first["epoch"].as_str().unwrap().to_owned();
    let mut s = Sub::new(&b.url("public")).await;
    s.subscribe("feed", r#""oldest""#).await;
    s.until("feed", 1).await;
    redis.kill();
    let r = publish(&mut p, "feed", 2).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    redis.restart().await;
    wait_ready(&b).await;
    // The channel is gone with Redis's memory: its subscribers are told, not left waiting.
    s.until("feed", u64::MAX).await;
    assert!(s.log.iter().any(|v| v["event"] == "closed"), "{:?}", s.log);
    let again = publish_through(a.url("private"), "feed", 1, Duration::ZERO).await;
    assert_ne!(again[0].0, old_epoch, "a new log is a new epoch");
    assert_eq!(again[0].1, 1);
    let r = s
        .call(&format!(
            r#"{{"op":"subscribe","channel":"feed","start":{{"epoch":"{old_epoch}","offset":1}}}}"#
        ))
        .await;
    assert_eq!(
        (r["recovered"].as_bool(), r["lost"]["reason"].as_str()),
        (Some(false), Some("epoch_changed")),
        "{r}"
    );
}

#[tokio::test]
async fn redis_restarted_from_an_older_snapshot_never_reuses_an_offset() {
    let mut redis = Redis::start_with(true).await;
    let urls = [redis.url()];
    let a = node(&urls).await;
    let mut p = v1(&a.url("private")).await;
    let r = call(&mut p, r#"{"op":"create","channel":"feed"}"#).await;
    let old_epoch = r["epoch"].as_str().unwrap().to_owned();
    let mut s = Sub::new(&a.url("public")).await;
    s.subscribe("feed", r#""new""#).await;
    for n in 1..=5 {
        publish(&mut p, "feed", n).await;
    }
    assert!(redis.cmd(&["SAVE"]).await.starts_with("+OK"));
    for n in 6..=8 {
        publish(&mut p, "feed", n).await;
    }
    s.until("feed", 8).await;
    // Redis comes back with offsets 1..5 only, and a new run_id.
    redis.restart().await;
    wait_ready(&a).await;
    let acked = publish_through(a.url("private"), "feed", 1, Duration::ZERO).await;
    let (epoch, offset) = acked[0].clone();
    assert_ne!(
        epoch, old_epoch,
        "offset {offset} would otherwise name a second message"
    );
    assert_eq!(offset, 1);
    // The subscriber that saw 1..8 of the old epoch is told its log restarted.
    s.until("feed", u64::MAX).await;
    let closed = s
        .log
        .iter()
        .find(|v| v["event"] == "closed")
        .expect("closed");
    assert_eq!(closed["reason"], "epoch_changed", "{closed}");
    check_no_hole_no_repeat(&[&s], "feed", 1, 8);
}

#[tokio::test]
async fn clients_of_a_node_that_stopped_resume_on_another_with_nothing_missed() {
    let redis = Redis::start().await;
    let urls = [redis.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let mut p = v1(&b.url("private")).await;
    let epoch = call(&mut p, r#"{"op":"create","channel":"feed"}"#).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut s = Sub::new(&a.url("public")).await;
    s.subscribe("feed", r#""new""#).await;
    for n in 1..=20 {
        publish(&mut p, "feed", n).await;
    }
    s.until("feed", 20).await;
    drop(s);
    a.shutdown().await;
    for n in 21..=40 {
        publish(&mut p, "feed", n).await;
    }
    let mut s = Sub::new(&b.url("public")).await;
    let r = s
        .subscribe("feed", &format!(r#"{{"epoch":"{epoch}","offset":20}}"#))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    s.until("feed", 40).await;
    assert_eq!(s.offsets("feed"), (21..=40).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_reply_from_a_subscriber_on_one_node_reaches_the_publisher_on_another() {
    let redis = Redis::start().await;
    let urls = [redis.url()];
    let cfg = cluster_config(&urls, "").replace(
        "[channel.\"*\"]\nbacklog_messages = 1000",
        "[channel.\"*\"]\nbacklog_messages = 1000\nreplies = true",
    );
    let a = TestServer::start(&cfg).await;
    wait_ready(&a).await;
    let b = TestServer::start(&cfg).await;
    wait_ready(&b).await;
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"ask"}"#).await["ok"],
        true
    );
    let mut s = Sub::new(&b.url("public")).await;
    s.subscribe("ask", r#""new""#).await;
    let r = publish(&mut p, "ask", 1).await;
    let offset = r["offset"].as_u64().unwrap();
    s.until("ask", offset).await;
    let r = s
        .call(&format!(
            r#"{{"op":"reply","channel":"ask","offset":{offset},"data":{{"answer":42}}}}"#
        ))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let event = recv_json(&mut p).await;
    assert_eq!(event["event"], "reply", "{event}");
    assert_eq!(event["offset"], offset);
    assert_eq!(event["data"]["answer"], 42);
    // A reply to a message that is not there is refused on the replier's node.
    let r = s
        .call(r#"{"op":"reply","channel":"ask","offset":99,"data":1}"#)
        .await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
}

#[tokio::test]
async fn channels_spread_over_two_redis_shards_and_are_listed_together() {
    let (r1, r2) = (Redis::start().await, Redis::start().await);
    let urls = [r1.url(), r2.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let mut p = v1(&a.url("private")).await;
    let names: Vec<String> = (0..12).map(|i| format!("room.{i:02}")).collect();
    for n in &names {
        assert_eq!(
            call(&mut p, &format!(r#"{{"op":"create","channel":"{n}"}}"#)).await["ok"],
            true
        );
        assert_eq!(publish(&mut p, n, 1).await["offset"], 1);
    }
    let on = |line: String| line.trim_start_matches(':').trim().parse::<u64>().unwrap();
    let c1 = on(r1.cmd(&["ZCARD", "tslm:channels"]).await);
    let c2 = on(r2.cmd(&["ZCARD", "tslm:channels"]).await);
    assert_eq!(c1 + c2, 12);
    assert!(c1 > 0 && c2 > 0, "both shards hold channels: {c1} and {c2}");
    let mut p_b = v1(&b.url("private")).await;
    let l = call(
        &mut p_b,
        r#"{"op":"channels","prefix":"room.","limit":100}"#,
    )
    .await;
    let listed: Vec<&str> = l["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        names.iter().map(String::as_str).collect::<Vec<_>>(),
        "{l}"
    );
    // Paging across shards keeps byte order.
    let l = call(&mut p_b, r#"{"op":"channels","prefix":"room.","limit":5}"#).await;
    assert_eq!(l["more"], true, "{l}");
    assert_eq!(l["channels"][4]["channel"], "room.04");
    // Fan-out works for channels of both shards.
    let mut s = Sub::new(&b.url("public")).await;
    for n in &names {
        s.subscribe(n, r#""oldest""#).await;
    }
    for n in &names {
        s.until(n, 1).await;
        assert_eq!(s.offsets(n), vec![1]);
    }
}

/// Reads an SSE response from `tcp` until its body holds `needle`; returns what was read.
async fn sse_until(tcp: &mut tokio::net::TcpStream, seen: &mut String, needle: &str) {
    use tokio::io::AsyncReadExt;
    while !seen.contains(needle) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(T, tcp.read(&mut buf))
            .await
            .expect("SSE data in time")
            .unwrap();
        assert!(n > 0, "stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

#[tokio::test]
async fn sse_and_long_poll_subscribers_of_another_node_get_the_messages() {
    use tokio::io::AsyncWriteExt;
    let redis = Redis::start().await;
    let urls = [redis.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"feed"}"#).await["ok"],
        true
    );
    assert_eq!(publish(&mut p, "feed", 1).await["offset"], 1);
    // A stream on B of a channel B has never seen: opened from Redis, then live.
    let addr = b.addr("public");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET /v1/events?channel=feed@oldest HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut seen = String::new();
    sse_until(&mut tcp, &mut seen, "\"offset\":1").await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert_eq!(publish(&mut p, "feed", 2).await["offset"], 2);
    sse_until(&mut tcp, &mut seen, "\"offset\":2").await;
    // Long-polling on B reads the same log.
    let (status, _, body) = http(
        b.addr("public"),
        "GET",
        "/v1/poll?channel=feed@oldest",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let offsets: Vec<u64> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| e["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, vec![1, 2], "{body}");
    // A channel that exists nowhere is refused as on a single node.
    let (status, _, body) =
        http(b.addr("public"), "GET", "/v1/poll?channel=nowhere", &[], "").await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_sentinel_failover_is_followed_and_never_reuses_an_offset() {
    let mut master = Redis::start().await;
    let replica = Redis::replica_of(&master).await;
    let sentinel = redis::Sentinel::start(&master).await;
    let cfg = cluster_config(&[], "").replace(
        "redis = []",
        &format!(
            "sentinels = [{:?}]\nsentinel_master = \"mymaster\"",
            sentinel.url()
        ),
    );
    let a = TestServer::start(&cfg).await;
    wait_ready(&a).await;
    let mut p = v1(&a.url("private")).await;
    let r = call(&mut p, r#"{"op":"create","channel":"feed"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let old_epoch = r["epoch"].as_str().unwrap().to_owned();
    let mut s = Sub::new(&a.url("public")).await;
    s.subscribe("feed", r#""new""#).await;
    for n in 1..=10 {
        assert_eq!(publish(&mut p, "feed", n).await["offset"], n);
    }
    s.until("feed", 10).await;
    // The replica has everything the master acknowledged (replication is asynchronous: without
    // this the fence would still hold, with fewer messages behind it).
    let deadline = tokio::time::Instant::now() + T;
    while replica.text(&["HGET", "tslm:{feed}:m", "s"]).await != "10" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replica.wait_caught_up(&master).await;
    sentinel.wait_knows_replica().await;
    master.kill();
    // Publishes are refused until the sentinel promotes the replica, then accepted there.
    let acked = publish_through(a.url("private"), "feed", 3, Duration::ZERO).await;
    assert_eq!(
        sentinel.master_port().await,
        Some(replica.port),
        "failed over"
    );
    let (epoch, first) = acked[0].clone();
    // The promoted replica is another instance: a new epoch, never offset 11 of the old one
    // twice (what it had may lag behind what the master acknowledged).
    assert_ne!(epoch, old_epoch);
    assert_eq!(first, 1);
    s.until("feed", u64::MAX).await;
    let closed = s
        .log
        .iter()
        .find(|v| v["event"] == "closed")
        .expect("closed");
    assert_eq!(closed["reason"], "epoch_changed", "{closed}");
    check_no_hole_no_repeat(&[&s], "feed", 1, 10);
}

/// A gateway configuration on the Redis Cluster of `seeds` (channels accept replies).
fn redis_cluster_config(seeds: &[String]) -> String {
    cluster_config(seeds, "")
        .replace("\nredis = [", "\nredis_cluster = [")
        .replace(
            "[channel.\"*\"]\nbacklog_messages = 1000",
            "[channel.\"*\"]\nbacklog_messages = 1000\nreplies = true",
        )
}

async fn cluster_node(seeds: &[String]) -> TestServer {
    let srv = TestServer::start(&redis_cluster_config(seeds)).await;
    wait_ready(&srv).await;
    srv
}

#[tokio::test]
async fn redis_cluster_configuration_is_validated() {
    let base = |cluster: &str| format!("{}\n[cluster]\n{cluster}\n", two_listeners(""));
    let err = |cluster: &str| {
        tslm_server::Config::from_toml_str(&base(cluster), "test")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = err("redis_cluster = [\"redis://127.0.0.1:7001\"]\nredis = \"redis://127.0.0.1:6379\"");
    assert!(
        e.contains("redis_cluster") && e.contains("not several"),
        "{e}"
    );
    let e = err(
        "redis_cluster = [\"redis://127.0.0.1:7001\"]\nsentinels = [\"redis://127.0.0.1:26379\"]\nsentinel_master = \"m\"",
    );
    assert!(e.contains("not several"), "{e}");
    let e = err("redis_cluster = []");
    assert!(e.contains("redis_cluster") && e.contains("empty"), "{e}");
    let e = err("redis_cluster = [\"http://127.0.0.1:7001\"]");
    assert!(e.contains("redis://"), "{e}");
    let e = err("redis_cluster = [\"redis://u:p@127.0.0.1:7001\"]");
    assert!(e.contains("password_file"), "{e}");
    let e = err("redis_cluster = [\"redis://127.0.0.1:7001\", \"redis://127.0.0.1:7001\"]");
    assert!(e.contains("twice"), "{e}");
    let ok = tslm_server::Config::from_toml_str(
        &base("redis_cluster = [\"redis://127.0.0.1:7001\", \"redis://127.0.0.1:7002\"]"),
        "test",
    );
    assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
}

/// Channel names whose slots are owned by each of the three masters (four each): those of the
/// first master, then the second's, then the third's.
async fn names_on_every_master(cluster: &redis::RedisCluster) -> Vec<String> {
    let mut per: [Vec<String>; 3] = Default::default();
    for i in 0..200 {
        let name = format!("room.{i:03}");
        let owner = cluster.owner_of(&format!("tslm:{{{name}}}:m")).await;
        if per[owner].len() < 4 {
            per[owner].push(name);
        }
        if per.iter().all(|n| n.len() == 4) {
            return per.concat();
        }
    }
    panic!("names not spread over the masters: {per:?}");
}

#[tokio::test]
async fn a_redis_cluster_spreads_channels_over_its_masters_and_every_node_serves_them() {
    let cluster = redis::RedisCluster::start().await;
    let seeds = cluster.urls();
    let (a, b) = (cluster_node(&seeds).await, cluster_node(&seeds).await);
    let names = names_on_every_master(&cluster).await;
    let mut p = v1(&a.url("private")).await;
    let mut epochs = HashMap::new();
    for n in &names {
        let r = call(&mut p, &format!(r#"{{"op":"create","channel":"{n}"}}"#)).await;
        assert_eq!(r["ok"], true, "{r}");
        epochs.insert(n.clone(), r["epoch"].as_str().unwrap().to_owned());
    }
    // Each channel's keys are on the master that owns its slot, on no other.
    for n in &names {
        let key = format!("tslm:{{{n}}}:m");
        let owner = cluster.owner_of(&key).await;
        for (i, node) in cluster.nodes.iter().enumerate() {
            let exists = node.cmd(&["EXISTS", &key]).await;
            let want = if i == owner { ":1" } else { "-MOVED" };
            assert!(exists.starts_with(want), "{n} on node {i}: {exists}");
        }
    }
    // Created on A, it exists for B with the same epoch.
    let mut p_b = v1(&b.url("private")).await;
    let r = call(
        &mut p_b,
        &format!(r#"{{"op":"create","channel":"{}"}}"#, names[0]),
    )
    .await;
    assert_eq!(
        (r["created"].as_bool(), r["epoch"].as_str()),
        (Some(false), Some(epochs[&names[0]].as_str())),
        "{r}"
    );
    // Subscribers on both nodes; publishes from both nodes, interleaved over every master.
    let mut subs = Vec::new();
    for n in [&a, &b] {
        let mut s = Sub::new(&n.url("public")).await;
        for name in &names {
            s.subscribe(name, r#""new""#).await;
        }
        subs.push(s);
    }
    for i in 1..=10u64 {
        for name in &names {
            let via = if i % 2 == 0 { &mut p } else { &mut p_b };
            let r = publish(via, name, i).await;
            assert_eq!(r["ok"], true, "{r}");
            assert_eq!(r["offset"], i, "{r}");
            assert_eq!(r["epoch"], epochs[name].as_str(), "{r}");
        }
    }
    for s in &mut subs {
        for name in &names {
            s.until(name, 10).await;
            assert_eq!(s.offsets(name), (1..=10).collect::<Vec<_>>(), "{name}");
        }
    }
    for name in &names {
        check_no_hole_no_repeat(&subs.iter().collect::<Vec<_>>(), name, 1, 10);
    }

    // msg_id de-duplication across nodes.
    let feed = names[5].as_str();
    let m = format!(r#"{{"op":"publish","channel":"{feed}","data":1,"msg_id":"m-1"}}"#);
    let first = call(&mut p, &m).await;
    let again = call(&mut p_b, &m).await;
    assert_eq!(first["offset"], 11, "{first}");
    assert_eq!(
        (again["offset"].as_u64(), again["duplicate"].as_bool()),
        (Some(11), Some(true)),
        "{again}"
    );

    // History and resume through B.
    let epoch = &epochs[feed];
    let mut late = Sub::new(&b.url("public")).await;
    let h = late
        .call(&format!(
            r#"{{"op":"history","channel":"{feed}","start":{{"epoch":"{epoch}","offset":7}},"limit":10}}"#
        ))
        .await;
    let offs: Vec<u64> = h["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{h}"))
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offs, (8..=11).collect::<Vec<_>>(), "{h}");
    let r = late
        .subscribe(feed, &format!(r#"{{"epoch":"{epoch}","offset":3}}"#))
        .await;
    assert_eq!(r["recovered"], true, "{r}");
    late.until(feed, 11).await;
    assert_eq!(late.offsets(feed), (4..=11).collect::<Vec<_>>());

    // Listing (the registry is one key on one master) and paging.
    let l = call(
        &mut p_b,
        r#"{"op":"channels","prefix":"room.","limit":100}"#,
    )
    .await;
    let listed: Vec<&str> = l["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("{l}"))
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        listed,
        sorted.iter().map(String::as_str).collect::<Vec<_>>(),
        "{l}"
    );
    let l = call(&mut p_b, r#"{"op":"channels","prefix":"room.","limit":5}"#).await;
    assert_eq!(l["more"], true, "{l}");
    assert_eq!(l["channels"][4]["channel"], sorted[4].as_str(), "{l}");
    assert_eq!(l["channels"].as_array().map(Vec::len), Some(5), "{l}");

    // A reply from a subscriber on B reaches the publisher on A (a sharded node channel).
    let ask = names[9].as_str();
    let mut asker = v1(&a.url("private")).await;
    let r = publish(&mut asker, ask, 100).await;
    let offset = r["offset"].as_u64().unwrap();
    let replier = &mut subs[1];
    replier.until(ask, offset).await;
    let r = replier
        .call(&format!(
            r#"{{"op":"reply","channel":"{ask}","offset":{offset},"data":{{"answer":42}}}}"#
        ))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let event = recv_json(&mut asker).await;
    assert_eq!(event["event"], "reply", "{event}");
    assert_eq!(event["data"]["answer"], 42, "{event}");

    // Deleting on B closes the subscriptions on both nodes and unlists the channel.
    let gone = names[2].as_str();
    let r = call(
        &mut p_b,
        &format!(r#"{{"op":"delete","channel":"{gone}"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    for s in &mut subs {
        s.until(gone, u64::MAX).await;
        let closed = s
            .log
            .iter()
            .find(|v| v["event"] == "closed" && v["channel"] == gone)
            .expect("closed");
        assert_eq!(closed["reason"], "deleted", "{closed}");
    }
    let r = publish(&mut p, gone, 1).await;
    assert_eq!(r["error"]["code"], "not_found", "{r}");
    let l = call(&mut p, r#"{"op":"channels","prefix":"room.","limit":100}"#).await;
    assert_eq!(
        l["channels"].as_array().map(Vec::len),
        Some(names.len() - 1),
        "{l}"
    );
}

#[tokio::test]
async fn redis_cluster_pubsub_connections_killed_on_every_master_are_healed_with_nothing_lost() {
    let cluster = redis::RedisCluster::start().await;
    let seeds = cluster.urls();
    let (a, b) = (cluster_node(&seeds).await, cluster_node(&seeds).await);
    let names = names_on_every_master(&cluster).await;
    // One channel on each master.
    let chosen: Vec<&'static str> = [0, 4, 8]
        .iter()
        .map(|i| &*Box::leak(names[*i].clone().into_boxed_str()))
        .collect();
    let mut p = v1(&a.url("private")).await;
    for n in &chosen {
        let r = call(&mut p, &format!(r#"{{"op":"create","channel":"{n}"}}"#)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut subs = Vec::new();
    for n in [&a, &b] {
        let mut s = Sub::new(&n.url("public")).await;
        for c in &chosen {
            s.subscribe(c, r#""new""#).await;
        }
        subs.push(s);
    }
    let publishers: Vec<_> = chosen
        .iter()
        .map(|c| {
            tokio::spawn(publish_through(
                a.url("private"),
                c,
                300,
                Duration::from_millis(2),
            ))
        })
        .collect();
    for round in 0..3 {
        // Both gateways follow every master again (each holds one of the channels) ...
        for node in &cluster.nodes {
            let deadline = tokio::time::Instant::now() + T;
            loop {
                let list = node.bulk(&["CLIENT", "LIST"]).await.unwrap();
                if list.lines().filter(|l| l.contains("flags=P")).count() >= 2 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "not followed again: {list}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // ... and lose their PUB/SUB connections on every master, a different one first each
        // round (a gateway drops its other connections itself when it notices one is gone).
        for i in 0..3 {
            let node = &cluster.nodes[(round + i) % 3];
            let n = node.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
            let killed = n.trim().trim_start_matches(':').parse::<u64>().unwrap();
            if i == 0 {
                assert_eq!(killed, 2, "both gateways' connections killed");
            }
        }
    }
    for (c, publisher) in chosen.iter().zip(publishers) {
        let acked = publisher.await.unwrap();
        assert_eq!(
            acked.last().unwrap().1,
            300,
            "{c}: every publish acknowledged once"
        );
    }
    for s in &mut subs {
        for c in &chosen {
            s.until(c, 300).await;
            assert_eq!(
                s.offsets(c),
                (1..=300).collect::<Vec<_>>(),
                "{c}: healed, not lost"
            );
        }
    }
    for c in &chosen {
        check_no_hole_no_repeat(&subs.iter().collect::<Vec<_>>(), c, 1, 300);
    }
    wait_ready(&a).await;
    wait_ready(&b).await;
}

#[tokio::test]
async fn a_redis_cluster_failover_rotates_the_epochs_of_that_masters_channels_only() {
    let mut cluster = redis::RedisCluster::start().await;
    let replica = cluster.add_replica(0).await;
    let seeds = cluster.urls();
    let (a, b) = (cluster_node(&seeds).await, cluster_node(&seeds).await);
    let names = names_on_every_master(&cluster).await;
    // `lost` is on the master that fails, `kept` on another.
    let (lost, kept) = (names[0].as_str(), names[4].as_str());
    let mut p = v1(&a.url("private")).await;
    let mut epochs = HashMap::new();
    for n in [lost, kept] {
        let r = call(&mut p, &format!(r#"{{"op":"create","channel":"{n}"}}"#)).await;
        assert_eq!(r["ok"], true, "{r}");
        epochs.insert(n, r["epoch"].as_str().unwrap().to_owned());
    }
    let mut s = Sub::new(&b.url("public")).await;
    for n in [lost, kept] {
        s.subscribe(n, r#""new""#).await;
        for i in 1..=10 {
            assert_eq!(publish(&mut p, n, i).await["offset"], i);
        }
        s.until(n, 10).await;
    }
    // The replica has everything the master acknowledged (as in the Sentinel test).
    replica.wait_caught_up(&cluster.nodes[0]).await;
    cluster.nodes[0].kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let role = replica.bulk(&["INFO", "replication"]).await.unwrap();
        if role.contains("role:master") {
            break;
        }
        let nodes = replica.bulk(&["CLUSTER", "NODES"]).await.unwrap();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failover: {role}\n{nodes}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Refused until the replica is promoted, then accepted by it: a new epoch, offset 1.
    let lost_name: &'static str = Box::leak(lost.to_owned().into_boxed_str());
    let acked = publish_through(a.url("private"), lost_name, 3, Duration::ZERO).await;
    let role = replica.bulk(&["INFO", "replication"]).await.unwrap();
    assert!(role.contains("role:master"), "promoted: {role}");
    assert_ne!(
        acked[0].0, epochs[lost],
        "a promoted replica starts a new epoch"
    );
    assert_eq!(acked[0].1, 1);
    s.until(lost, u64::MAX).await;
    let closed = s
        .log
        .iter()
        .find(|v| v["event"] == "closed" && v["channel"] == lost)
        .expect("closed");
    assert_eq!(closed["reason"], "epoch_changed", "{closed}");
    check_no_hole_no_repeat(&[&s], lost, 1, 10);
    // A channel of another master keeps its epoch and its offsets (once the cluster client
    // settled: `unavailable` until then, retried with the same msg_id).
    let deadline = tokio::time::Instant::now() + T;
    let next =
        format!(r#"{{"op":"publish","channel":"{kept}","data":{{"n":11}},"msg_id":"k-11"}}"#);
    let r = loop {
        let r = call(&mut p, &next).await;
        if r["ok"] == true {
            break r;
        }
        assert_eq!(r["error"]["code"], "unavailable", "{r}");
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (r["offset"].as_u64(), r["epoch"].as_str()),
        (Some(11), Some(epochs[kept].as_str())),
        "{r}"
    );
    s.until(kept, 11).await;
    assert_eq!(s.offsets(kept), (1..=11).collect::<Vec<_>>());
    wait_ready(&b).await;
}

#[tokio::test]
async fn a_stopped_redis_cluster_master_makes_nodes_unready_then_resumes_and_the_limit_holds() {
    let cluster = redis::RedisCluster::start().await;
    let seeds = cluster.urls();
    let cfg = format!(
        "[server]\nmax_channels = 3\n{}",
        redis_cluster_config(&seeds)
    );
    let a = TestServer::start(&cfg).await;
    wait_ready(&a).await;
    let b = TestServer::start(&cfg).await;
    wait_ready(&b).await;
    let names = names_on_every_master(&cluster).await;
    let mut p = v1(&a.url("private")).await;
    // The limit counts the cluster's channels (the registry), checked before a create.
    for n in [&names[0], &names[4], &names[8]] {
        let r = call(&mut p, &format!(r#"{{"op":"create","channel":"{n}"}}"#)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let r = call(
        &mut p,
        &format!(r#"{{"op":"create","channel":"{}"}}"#, names[1]),
    )
    .await;
    assert_eq!(r["error"]["code"], "limit_exceeded", "{r}");
    let mut p_b = v1(&b.url("private")).await;
    let r = call(
        &mut p_b,
        &format!(r#"{{"op":"delete","channel":"{}"}}"#, names[8]),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(
        &mut p,
        &format!(r#"{{"op":"create","channel":"{}"}}"#, names[1]),
    )
    .await;
    assert_eq!(r["ok"], true, "a deleted channel leaves the registry: {r}");

    // The master of names[4] stops answering.
    let feed = names[4].as_str();
    let mut s = Sub::new(&b.url("public")).await;
    s.subscribe(feed, r#""new""#).await;
    for n in 1..=5 {
        assert_eq!(publish(&mut p, feed, n).await["offset"], n);
    }
    cluster.nodes[1].signal("STOP");
    let late = format!(r#"{{"op":"publish","channel":"{feed}","data":{{"n":6}},"msg_id":"late"}}"#);
    let r = call(&mut p, &late).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    let deadline = tokio::time::Instant::now() + T;
    while readyz(&b).await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still ready with a master stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.nodes[1].signal("CONT");
    cluster.wait_ok().await;
    wait_ready(&a).await;
    wait_ready(&b).await;
    // Retried with its msg_id, the refused publish is published once either way.
    let deadline = tokio::time::Instant::now() + T;
    let r = loop {
        let r = call(&mut p, &late).await;
        if r["ok"] == true {
            break r;
        }
        assert_eq!(r["error"]["code"], "unavailable", "{r}");
        assert!(tokio::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(r["offset"], 6, "{r}");
    for n in 7..=10 {
        assert_eq!(publish(&mut p, feed, n).await["offset"], n);
    }
    s.until(feed, 10).await;
    assert_eq!(s.offsets(feed), (1..=10).collect::<Vec<_>>());
    check_no_hole_no_repeat(&[&s], feed, 1, 10);
}

/// A publisher that sends a burst of publishes to two channels and then ends its input (a close
/// frame, or a TCP half-close) gets every acknowledgement, in order, before the close: in
/// cluster mode the burst is read ahead before it runs (to group publishes), so the end of the
/// input is seen first, and its answers must still go out. Every publish is carried out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_ended_by_a_close_or_a_half_close_gets_every_acknowledgement() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::MaybeTlsStream;
    use tokio_tungstenite::tungstenite::Message;

    let redis = Redis::start().await;
    let urls = [redis.url()];
    let a = node(&urls).await;
    let mut setup = v1(&a.url("private")).await;
    for c in ["end.a", "end.b"] {
        let r = call(&mut setup, &format!(r#"{{"op":"create","channel":"{c}"}}"#)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    const EACH: u64 = 10;
    let mut published = 0;
    for (round, close) in [(0, true), (1, false), (2, true), (3, false)] {
        let mut p = v1(&a.url("private")).await;
        for i in 0..2 * EACH {
            // Runs of five to one channel, then five to the other.
            let c = if (i / 5) % 2 == 0 { "end.a" } else { "end.b" };
            let req = format!(
                r#"{{"op":"publish","id":{i},"channel":"{c}","msg_id":"e{round}-{i}","data":{i}}}"#
            );
            p.feed(Message::text(req)).await.unwrap();
        }
        if close {
            p.feed(Message::Close(None)).await.unwrap();
            p.flush().await.unwrap();
        } else {
            p.flush().await.unwrap();
            match p.get_mut() {
                MaybeTlsStream::Plain(tcp) => tcp.shutdown().await.unwrap(),
                _ => unreachable!("a plain listener"),
            }
        }
        let mut acked = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(T, p.next()).await {
            match m {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(v["ok"], true, "{v}");
                    acked.push(v["id"].as_u64().unwrap());
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        assert_eq!(
            acked,
            (0..2 * EACH).collect::<Vec<_>>(),
            "round {round} (close frame: {close}): every publish answered, in order"
        );
        published += EACH;
    }
    // Every publish was carried out: the next one on each channel takes the next offset.
    for c in ["end.a", "end.b"] {
        let r = call(
            &mut setup,
            &format!(r#"{{"op":"publish","channel":"{c}","data":0}}"#),
        )
        .await;
        assert_eq!(r["offset"], published + 1, "{c}: {r}");
    }
}

/// A reload that takes a listener's right to publish away while a publisher's burst waits on
/// Redis applies before the burst's next group: the group read with the burst but run after the
/// reload is refused, not published under the revoked right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_grouped_burst_applies_before_its_next_group() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let redis = Redis::start().await;
    let urls = [redis.url()];
    let a = node(&urls).await;
    let mut setup = v1(&a.url("private")).await;
    for c in ["rl.a", "rl.b"] {
        let r = call(&mut setup, &format!(r#"{{"op":"create","channel":"{c}"}}"#)).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut sub = v1(&a.url("public")).await;
    let r = call(&mut sub, r#"{"op":"subscribe","id":1,"channel":"rl.b"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let mut p = v1(&a.url("private")).await;
    // Redis stopped: the burst's first group (rl.a) waits on it.
    redis.signal("STOP");
    for i in 0..10 {
        let c = if i < 5 { "rl.a" } else { "rl.b" };
        let req = format!(r#"{{"op":"publish","id":{i},"channel":"{c}","data":{i}}}"#);
        p.feed(Message::text(req)).await.unwrap();
    }
    p.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The private listener may create, no longer publish.
    let revoked = cluster_config(&urls, "").replace(
        "default_endpoint_permissions=['CreateChannel','NotifyChannel']",
        "default_endpoint_permissions=['CreateChannel']",
    );
    assert_ne!(revoked, cluster_config(&urls, ""));
    a.reloader
        .reload(tslm_server::Config::from_toml_str(&revoked, "test").unwrap())
        .await
        .unwrap();
    redis.signal("CONT");
    let mut answers = Vec::new();
    while answers.len() < 10 {
        match tokio::time::timeout(T, p.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                answers.push(serde_json::from_str::<Value>(&t).unwrap())
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => break,
            Ok(Some(Ok(_))) => {}
            other => panic!("no answer: {other:?}"),
        }
    }
    // The second group ran after the reload: refused, one answer each, in order.
    let b: Vec<&Value> = answers
        .iter()
        .filter(|v| v["id"].as_u64() >= Some(5))
        .collect();
    assert_eq!(b.len(), 5, "{answers:?}");
    for (k, v) in b.iter().enumerate() {
        assert_eq!(v["id"], 5 + k as u64, "{v}");
        assert_eq!(v["ok"], false, "refused after the reload: {v}");
    }
    // And nothing reached rl.b's subscriber.
    assert_silent(&mut sub).await;
    redis.signal("CONT");
}
