//! Hostile input: the gateway's tables are bounded. A publisher on an auto-create class cannot
//! grow the channel table past `[server] max_channels`, nor the `msg_id` tables of all channels
//! past `[server] max_msg_ids`, over WebSocket (both dialects) or HTTP: what goes over is refused
//! with `limit_exceeded` (HTTP 429) and nothing of it is kept.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;

fn config(max_channels: usize, max_msg_ids: usize) -> String {
    format!(
        "[server]\nmax_channels = {max_channels}\nmax_msg_ids = {max_msg_ids}\n{}\n\
         [channel.\"auto.*\"]\nauto_create = true\n",
        two_listeners("")
    )
}

fn code(v: &serde_json::Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_cannot_grow_the_channel_table_past_max_channels() {
    let srv = TestServer::start(&config(50, 1000)).await;
    let mut p = v1(&srv.url("private")).await;
    // A publisher that creates a channel with every message.
    let mut refused = 0;
    for i in 0..200 {
        let r = call(
            &mut p,
            &format!(r#"{{"op":"publish","channel":"auto.{i}","data":{i}}}"#),
        )
        .await;
        if r["ok"] == false {
            assert_eq!(code(&r), "limit_exceeded", "{r}");
            assert_eq!(
                r["error"]["message"],
                "the gateway holds 50 channels, the most it allows"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 150);
    assert_eq!(srv.hub.stats().channels, 50);
    // Every way of creating is refused alike; existing channels still work.
    let r = call(&mut p, r#"{"op":"create","channel":"x"}"#).await;
    assert_eq!(code(&r), "limit_exceeded", "{r}");
    let r = call(&mut p, r#"{"op":"create","channel":"auto.3"}"#).await;
    assert_eq!(
        (r["ok"].clone(), r["created"].clone()),
        (true.into(), false.into())
    );
    let r = call(&mut p, r#"{"op":"publish","channel":"auto.3","data":1}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let (status, _, body) = http(srv.addr("private"), "PUT", "/v1/channels/y", &[], "").await;
    assert_eq!((status, code(&body)), (429, "limit_exceeded"), "{body}");
    let mut l = legacy(&srv.url("private")).await;
    send(&mut l, r#"{"CreateChannel":"z"}"#).await;
    assert_eq!(
        recv(&mut l).await,
        r#"{"Error":"Permission denied: CreateChannel"}"#
    );
    assert!(!srv.hub.exists(&"z".parse().unwrap()));
    // A deleted channel makes room.
    let r = call(&mut p, r#"{"op":"delete","channel":"auto.0"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(&mut p, r#"{"op":"create","channel":"x"}"#).await;
    assert_eq!(r["created"], true, "{r}");
    assert_eq!(srv.hub.stats().channels, 50);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msg_ids_cannot_grow_past_max_msg_ids_across_channels() {
    let srv = TestServer::start(&config(1000, 100)).await;
    let mut p = v1(&srv.url("private")).await;
    // Each channel remembers up to 1000 ids (its class's `dedupe_max_ids`), but the gateway only
    // 100 in all: a publisher spreading new ids over many channels is refused past them.
    let mut refused = 0;
    for i in 0..300 {
        let r = call(
            &mut p,
            &format!(
                r#"{{"op":"publish","channel":"auto.{}","msg_id":"k{i}","data":{i}}}"#,
                i % 30
            ),
        )
        .await;
        if r["ok"] == false {
            assert_eq!(code(&r), "limit_exceeded", "{r}");
            refused += 1;
        }
    }
    assert_eq!(refused, 200);
    assert_eq!(srv.hub.stats().msg_ids, 100);
    // A refused publish published nothing.
    let r = call(&mut p, r#"{"op":"channels","prefix":"auto.0"}"#).await;
    let offsets: u64 = r["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["offset"].as_u64().unwrap())
        .sum();
    assert_eq!(offsets, 4, "auto.0 got k0, k30, k60, k90 only: {r}");
    // Repeats are still recognised, publishes without a msg_id still go through.
    let r = call(
        &mut p,
        r#"{"op":"publish","channel":"auto.0","msg_id":"k30","data":0}"#,
    )
    .await;
    assert_eq!(
        (r["ok"].clone(), r["duplicate"].clone()),
        (true.into(), true.into())
    );
    let r = call(&mut p, r#"{"op":"publish","channel":"auto.0","data":0}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let (status, _, body) = http(
        srv.addr("private"),
        "POST",
        "/v1/channels/auto.0/messages",
        &[
            ("Idempotency-Key", "new"),
            ("Content-Type", "application/json"),
        ],
        "1",
    )
    .await;
    assert_eq!((status, code(&body)), (429, "limit_exceeded"), "{body}");
    // Deleting a channel gives its ids back.
    let r = call(&mut p, r#"{"op":"delete","channel":"auto.0"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(srv.hub.stats().msg_ids, 96);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_routes_cannot_grow_past_max_reply_routes_across_channels() {
    let toml = format!(
        "[server]\nmax_reply_routes = 100\n{}\n\
         [channel.\"rpc.*\"]\nauto_create = true\nreplies = true\n",
        two_listeners("")
    );
    let srv = TestServer::start(&toml).await;
    let mut p = v1(&srv.url("private")).await;
    // Each channel could keep 1024 routes (the default `reply_window`), 30 channels 30,720.
    for i in 0..600 {
        let r = call(
            &mut p,
            &format!(
                r#"{{"op":"publish","channel":"rpc.{}","data":{i}}}"#,
                i % 30
            ),
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    assert_eq!(srv.hub.stats().reply_routes, 100);
    // The newest message of a channel can still be replied to.
    let mut s = v1(&srv.url("public")).await;
    let r = call(&mut s, r#"{"op":"subscribe","channel":"rpc.29"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(
        &mut s,
        r#"{"op":"reply","channel":"rpc.29","offset":20,"data":1}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let event = recv_json(&mut p).await;
    assert_eq!(event["event"], "reply", "{event}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_cannot_grow_past_max_subscriptions_across_connections() {
    let toml = format!("[server]\nmax_subscriptions = 5\n{}", two_listeners(""));
    let srv = TestServer::start(&toml).await;
    for i in 0..4 {
        assert!(srv.hub.create(&format!("c{i}").parse().unwrap()));
    }
    // Within its own `max_subscriptions_per_connection`, each connection is refused past the
    // gateway's bound.
    let (mut a, mut b) = (v1(&srv.url("public")).await, v1(&srv.url("public")).await);
    let mut refused = 0;
    for ws in [&mut a, &mut b] {
        for i in 0..4 {
            let r = call(ws, &format!(r#"{{"op":"subscribe","channel":"c{i}"}}"#)).await;
            if r["ok"] == false {
                assert_eq!(code(&r), "limit_exceeded", "{r}");
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 3);
    assert_eq!(srv.hub.stats().subscriptions, 5);
    let mut l = legacy(&srv.url("public")).await;
    send(&mut l, r#"{"Subscribe":"c0"}"#).await;
    assert_eq!(
        recv(&mut l).await,
        r#"{"Error":"Subscription limit exceeded"}"#
    );
    // A connection that ends gives its subscriptions back.
    drop(a);
    srv.wait_for("subscriptions freed", |s| s.hub.stats().subscriptions == 1)
        .await;
    let r = call(&mut b, r#"{"op":"subscribe","channel":"c3"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    srv.shutdown().await;
}
