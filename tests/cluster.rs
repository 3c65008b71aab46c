//! Cluster mode against a real `redis-server` (started by each test on a free loopback port)
//! and several gateways sharing it: one channel space, offsets assigned once, replies and
//! resumes across nodes, and the delivery guarantee through Redis faults.

mod common;
#[path = "support/redis.rs"]
mod redis;

use std::collections::{BTreeMap, HashMap};
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
