#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

//! The channel management side of the HTTP API over real sockets: create options, delete,
//! `Idempotency-Key`, history reads and resumes, the channel list, channel classes and the
//! total backlog memory bound.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{Value, json};

/// The error code of an error body (and checks its shape: `ok:false`, a non-empty message).
fn code(v: &Value) -> &str {
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v["error"]["code"].as_str().unwrap()
}

/// The error message of an error body.
fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap()
}

/// `PUT /v1/channels/{name}` with `body` as the options (empty: none).
async fn put(addr: SocketAddr, name: &str, body: &str) -> (u16, Value) {
    let (status, _, json) = http(addr, "PUT", &format!("/v1/channels/{name}"), &[], body).await;
    (status, json)
}

/// Creates `name` (which must not exist yet) and returns its epoch.
async fn create(addr: SocketAddr, name: &str, options: &str) -> String {
    let (status, mut body) = put(addr, name, options).await;
    let epoch = take_epoch(&mut body);
    assert_eq!(
        (status, body),
        (201, json!({"ok":true,"created":true})),
        "PUT {name} {options}"
    );
    epoch
}

async fn delete(addr: SocketAddr, name: &str) -> (u16, Value) {
    let (status, _, json) = http(addr, "DELETE", &format!("/v1/channels/{name}"), &[], "").await;
    (status, json)
}

/// `POST /v1/channels/{name}/messages`, with an `Idempotency-Key` when `key` is given.
async fn post_with(addr: SocketAddr, name: &str, key: Option<&str>, data: &str) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    let path = format!("/v1/channels/{name}/messages");
    let (status, _, json) = http(addr, "POST", &path, &headers, data).await;
    (status, json)
}

async fn post(addr: SocketAddr, name: &str, data: &str) -> (u16, Value) {
    post_with(addr, name, None, data).await
}

/// Publishes `data` and checks the reply: 200, `epoch`, offset `offset`, not a duplicate.
async fn publish(addr: SocketAddr, name: &str, data: &str, epoch: &str, offset: u64) {
    let (status, body) = post(addr, name, data).await;
    assert_eq!(
        (status, body),
        (200, json!({"ok":true,"epoch":epoch,"offset":offset})),
        "POST {name} {data}"
    );
}

/// A GET returning the raw body text, for byte-exact comparisons (payloads are served as
/// published, whitespace and number spelling included).
async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    (status, body)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, json) = http(addr, "GET", path, &[], "").await;
    (status, json)
}

/// The `channels` array of a successful `GET /v1/channels…`, and its `more` flag.
async fn list(addr: SocketAddr, query: &str) -> (Vec<Value>, bool) {
    let (status, body) = get(addr, &format!("/v1/channels{query}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true, "{body}");
    let more = body["more"].as_bool().unwrap();
    (body["channels"].as_array().unwrap().clone(), more)
}

/// Subscribes a v1 connection to `channel` and checks the reply's `ok`.
async fn subscribe(ws: &mut Ws, channel: &str) -> Value {
    let reply = call(
        ws,
        &format!(r#"{{"op":"subscribe","channel":"{channel}"}}"#),
    )
    .await;
    assert_eq!(reply["ok"], true, "{reply}");
    reply
}

#[tokio::test]
async fn create_options_are_checked_against_the_class() {
    let srv = TestServer::start(&format!(
        "{}[channel.\"opt.*\"]\nbacklog_messages = 10\nbacklog_seconds = 60\nmax_message_bytes = 1000\nmax_subscribers = 5\n",
        two_listeners("")
    ))
    .await;
    let private = srv.addr("private");

    // Asking for more than the class allows: 403 naming the option and the class's limit.
    for (options, option, limit) in [
        (r#"{"backlog_messages":11}"#, "backlog_messages", "(10)"),
        (r#"{"backlog_seconds":61}"#, "backlog_seconds", "(60)"),
        (
            r#"{"max_message_bytes":1001}"#,
            "max_message_bytes",
            "(1000)",
        ),
        (r#"{"max_subscribers":6}"#, "max_subscribers", "(5)"),
        (r#"{"replies":true}"#, "replies", "(replies are off)"),
    ] {
        let (status, body) = put(private, "opt.a", options).await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{options}");
        let m = message(&body);
        assert!(
            m.contains(&format!("option `{option}`"))
                && m.contains("channel class \"opt.*\"")
                && m.ends_with(limit),
            "{options}: {m}"
        );
    }
    assert_eq!(
        message(&put(private, "opt.a", r#"{"backlog_messages":11}"#).await.1),
        "option `backlog_messages` = 11 is more than channel class \"opt.*\" allows (10)"
    );
    // Values below the least allowed are refused the same way.
    for option in ["backlog_seconds", "max_message_bytes", "max_subscribers"] {
        let (status, body) = put(private, "opt.a", &format!(r#"{{"{option}":0}}"#)).await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{option}");
        assert_eq!(
            message(&body),
            format!("option `{option}` = 0 is less than 1, the least allowed")
        );
    }
    // Bodies that are not an options object, and unknown options: 400.
    for bad in [
        "{not json",
        "[1]",
        "7",
        "null",
        r#"{"backlog_messages":"5"}"#,
        r#"{"backlog_messages":-1}"#,
        r#"{"backlog_messages":1.5}"#,
        r#"{"replies":1}"#,
        r#"{"backlog":5}"#,
        r#"{"backlog_messages":5,"slow_subscriber":"latest"}"#,
        r#"{"backlog_messages":5} {}"#,
    ] {
        let (status, body) = put(private, "opt.a", bad).await;
        assert_eq!((status, code(&body)), (400, "bad_request"), "{bad}");
    }
    let (status, _, body) = http(
        private,
        "PUT",
        "/v1/channels/opt.a",
        &[("Content-Type", "text/plain")],
        r#"{"backlog_messages":5}"#,
    )
    .await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    // None of the refused requests created the channel.
    let (status, body) = post(private, "opt.a", "1").await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    assert!(list(private, "").await.0.is_empty());

    // Exactly the class's values, lower ones, and 0 for backlog_messages are accepted.
    create(
        private,
        "opt.a",
        r#"{"backlog_messages":10,"backlog_seconds":60,"max_message_bytes":1000,"max_subscribers":5,"replies":false}"#,
    )
    .await;
    create(
        private,
        "opt.b",
        r#" {"backlog_messages":0,"backlog_seconds":1,"max_message_bytes":1,"max_subscribers":1} "#,
    )
    .await;
    create(private, "opt.c", "{}").await;
    create(private, "opt.d", " \r\n ").await;
    let (status, _, mut body) = http(
        private,
        "PUT",
        "/v1/channels/opt.e",
        &[("Content-Type", "application/json; charset=utf-8")],
        r#"{"max_subscribers":2}"#,
    )
    .await;
    take_epoch(&mut body);
    assert_eq!((status, body), (201, json!({"ok":true,"created":true})));
    // On a class without max_subscribers any number may be asked for.
    create(private, "plain", r#"{"max_subscribers":1000000000}"#).await;
    let names: Vec<Value> = list(private, "")
        .await
        .0
        .iter()
        .map(|c| c["channel"].clone())
        .collect();
    assert_eq!(
        names,
        [
            json!("opt.a"),
            json!("opt.b"),
            json!("opt.c"),
            json!("opt.d"),
            json!("opt.e"),
            json!("plain")
        ]
    );
}

#[tokio::test]
async fn create_options_take_effect() {
    let srv = TestServer::default().await;
    let (private, public) = (srv.addr("private"), srv.addr("public"));

    // max_message_bytes: the largest published JSON text.
    let small = create(private, "small", r#"{"max_message_bytes":10}"#).await;
    publish(private, "small", r#""12345678""#, &small, 1).await;
    publish(private, "small", " 1234567890 ", &small, 2).await;
    let (status, body) = post(private, "small", r#""123456789""#).await;
    assert_eq!((status, code(&body)), (413, "too_large"));
    assert_eq!(
        message(&body),
        "data is 11 bytes; channel `small` allows at most 10"
    );
    let (status, body) = post(private, "small", r#"{"a": [1, 2, 3]}"#).await;
    assert_eq!((status, code(&body)), (413, "too_large"));
    // Creating again keeps the settings the channel was created with.
    let (status, mut body) = put(private, "small", r#"{"max_message_bytes":1000}"#).await;
    assert_eq!(take_epoch(&mut body), small);
    assert_eq!((status, body), (200, json!({"ok":true,"created":false})));
    let (status, body) = post(private, "small", r#""123456789""#).await;
    assert_eq!((status, code(&body)), (413, "too_large"));
    publish(private, "small", "3", &small, 3).await;

    // max_subscribers: one more subscribe is refused with limit_exceeded.
    let one = create(private, "one", r#"{"max_subscribers":1}"#).await;
    let mut first = v1(&srv.url("public")).await;
    let mut second = v1(&srv.url("public")).await;
    assert_eq!(
        subscribe(&mut first, "one").await,
        json!({"id":null,"ok":true,"epoch":one,"offset":0,"from":1})
    );
    let refused = call(&mut second, r#"{"op":"subscribe","id":2,"channel":"one"}"#).await;
    assert_eq!(
        refused,
        json!({"id":2,"ok":false,"error":{"code":"limit_exceeded","message":"channel `one` has 1 subscribers, the most it allows"}})
    );
    // Subscribing again on the same connection is not one more subscriber.
    subscribe(&mut first, "one").await;
    assert_eq!(list(private, "?prefix=one").await.0[0]["subscribers"], 1);
    // The refused connection is still usable, and gets the place once it is free.
    assert_eq!(
        call(&mut first, r#"{"op":"unsubscribe","channel":"one"}"#).await,
        json!({"id":null,"ok":true})
    );
    subscribe(&mut second, "one").await;
    publish(private, "one", r#"{"to": "second"}"#, &one, 1).await;
    assert_eq!(
        recv(&mut second).await,
        r#"{"event":"message","channel":"one","offset":1,"data":{"to": "second"}}"#
    );
    assert_silent(&mut first).await;

    // backlog_messages: history keeps only the last N.
    let two = create(private, "two", r#"{"backlog_messages":2}"#).await;
    for i in 1..=5u64 {
        publish(private, "two", &format!(r#"{{"n": {i}}}"#), &two, i).await;
    }
    assert_eq!(
        get_text(private, "/v1/channels/two/messages").await,
        (
            200,
            format!(
                r#"{{"ok":true,"epoch":"{two}","offset":5,"from":4,"messages":[{{"offset":4,"data":{{"n": 4}}}},{{"offset":5,"data":{{"n": 5}}}}],"more":false}}"#
            )
        )
    );
    let info = &list(private, "?prefix=two").await.0[0];
    assert_eq!(info["offset"], 5);
    assert_eq!(info["backlog"]["messages"], 2);
    assert_eq!(info["backlog"]["first_offset"], 4);

    // backlog_messages = 0: nothing is kept, and a resume is told what was lost.
    let none = create(private, "none", r#"{"backlog_messages":0}"#).await;
    publish(private, "none", "1", &none, 1).await;
    publish(private, "none", "2", &none, 2).await;
    let (status, body) = get(
        private,
        &format!("/v1/channels/none/messages?epoch={none}&offset=0"),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ok":true,"epoch":none,"offset":2,"from":3,"recovered":false,
                   "lost":{"reason":"expired","from":1,"to":2},"messages":[],"more":false})
        )
    );
    let info = &list(private, "?prefix=none").await.0[0];
    assert_eq!(
        info["backlog"],
        json!({"messages":0,"bytes":0,"first_offset":3})
    );

    // Create options need the create permission like any create.
    let (status, body) = put(public, "other", r#"{"backlog_messages":1}"#).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
}

#[tokio::test]
async fn delete_ends_subscriptions_and_recreation_starts_a_new_epoch() {
    let srv = TestServer::default().await;
    let (private, public) = (srv.addr("private"), srv.addr("public"));
    let old = create(private, "del", "").await;
    create(private, "keep", "").await;
    let mut sub = v1(&srv.url("public")).await;
    let mut old_sub = legacy(&srv.url("public")).await;
    subscribe(&mut sub, "del").await;
    subscribe(&mut sub, "keep").await;
    send(&mut old_sub, r#"{"Subscribe":"del"}"#).await;
    recv(&mut old_sub).await;
    publish(private, "del", "1", &old, 1).await;
    publish(private, "del", "2", &old, 2).await;
    for i in 1..=2 {
        assert_eq!(
            recv(&mut sub).await,
            format!(r#"{{"event":"message","channel":"del","offset":{i},"data":{i}}}"#)
        );
        assert_eq!(
            recv(&mut old_sub).await,
            format!(r#"{{"ChannelMessage":["del",{{"Json":{i}}}]}}"#)
        );
    }

    // The public listener may not delete (it may not create).
    let (status, body) = delete(public, "del").await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    assert_eq!(message(&body), "this listener does not allow delete");
    assert_eq!(srv.hub.stats().subscriptions, 3);

    assert_eq!(
        delete(private, "del").await,
        (200, json!({"ok":true,"deleted":true}))
    );
    assert_eq!(
        recv(&mut sub).await,
        r#"{"event":"closed","channel":"del","reason":"deleted"}"#
    );
    assert_eq!(
        recv(&mut old_sub).await,
        r#"{"Error":"Channel not found: del"}"#
    );
    assert_eq!(srv.hub.stats().subscriptions, 1, "only `keep` is left");

    // Gone for every operation.
    let (status, body) = delete(private, "del").await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    assert_eq!(message(&body), "channel `del` does not exist");
    let (status, body) = delete(private, "never-created").await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = post(private, "del", "3").await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = get(private, "/v1/channels/del/messages").await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let names: Vec<Value> = list(private, "")
        .await
        .0
        .iter()
        .map(|c| c["channel"].clone())
        .collect();
    assert_eq!(names, [json!("keep")]);
    let (status, body) = delete(private, "bad%20name").await;
    assert_eq!((status, code(&body)), (400, "bad_request"));

    // Created again: a new epoch, offsets from 1, and the ended subscriptions stay ended.
    let new = create(private, "del", "").await;
    assert_ne!(new, old);
    publish(private, "del", r#"{"again": true}"#, &new, 1).await;
    assert_silent(&mut sub).await;
    assert_silent(&mut old_sub).await;
    // A resume from the old epoch is told so and gets the new epoch's messages.
    let (status, body) = get(
        private,
        &format!("/v1/channels/del/messages?epoch={old}&offset=2"),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ok":true,"epoch":new,"offset":1,"from":1,"recovered":false,
                   "lost":{"reason":"epoch_changed"},
                   "messages":[{"offset":1,"data":{"again":true}}],"more":false})
        )
    );
    // Subscribing again works, from the new epoch.
    assert_eq!(
        subscribe(&mut sub, "del").await,
        json!({"id":null,"ok":true,"epoch":new,"offset":1,"from":2})
    );
    publish(private, "del", "2", &new, 2).await;
    assert_eq!(
        recv(&mut sub).await,
        r#"{"event":"message","channel":"del","offset":2,"data":2}"#
    );
    // The other channel was not touched.
    publish(
        private,
        "keep",
        "1",
        &srv.hub.epoch(&"keep".parse().unwrap()).unwrap().to_string(),
        1,
    )
    .await;
    assert_eq!(
        recv(&mut sub).await,
        r#"{"event":"message","channel":"keep","offset":1,"data":1}"#
    );
}

#[tokio::test]
async fn idempotency_key_publishes_once() {
    let srv = TestServer::default().await;
    let private = srv.addr("private");
    let epoch = create(private, "idem", "").await;
    let mut sub = v1(&srv.url("public")).await;
    subscribe(&mut sub, "idem").await;

    assert_eq!(
        post_with(private, "idem", Some("k1"), r#"{"n": 1}"#).await,
        (200, json!({"ok":true,"epoch":epoch,"offset":1}))
    );
    // The retry, even with another body, is not published again.
    assert_eq!(
        post_with(private, "idem", Some("k1"), r#"{"n": "retry"}"#).await,
        (
            200,
            json!({"ok":true,"epoch":epoch,"offset":1,"duplicate":true})
        )
    );
    assert_eq!(
        post_with(private, "idem", Some("k1"), r#"{"n": 1}"#).await,
        (
            200,
            json!({"ok":true,"epoch":epoch,"offset":1,"duplicate":true})
        )
    );
    assert_eq!(
        post_with(private, "idem", Some("k2"), r#"{"n": 2}"#).await,
        (200, json!({"ok":true,"epoch":epoch,"offset":2}))
    );
    // Without a key nothing is de-duplicated.
    publish(private, "idem", r#"{"n": 2}"#, &epoch, 3).await;
    // The same key from a v1 publisher is the same message id.
    let mut publisher = v1(&srv.url("private")).await;
    assert_eq!(
        call(
            &mut publisher,
            r#"{"op":"publish","id":1,"channel":"idem","msg_id":"k2","data":0}"#
        )
        .await,
        json!({"id":1,"ok":true,"epoch":epoch,"offset":2,"duplicate":true})
    );
    // The subscriber received each message once, in order.
    for (offset, data) in [(1, r#"{"n": 1}"#), (2, r#"{"n": 2}"#), (3, r#"{"n": 2}"#)] {
        assert_eq!(
            recv(&mut sub).await,
            format!(r#"{{"event":"message","channel":"idem","offset":{offset},"data":{data}}}"#)
        );
    }
    assert_silent(&mut sub).await;
    let (_, history) = get(private, "/v1/channels/idem/messages").await;
    assert_eq!(
        history["messages"],
        json!([{"offset":1,"data":{"n":1}},{"offset":2,"data":{"n":2}},{"offset":3,"data":{"n":2}}])
    );

    // Keys are per channel.
    let other = create(private, "idem2", "").await;
    assert_eq!(
        post_with(private, "idem2", Some("k1"), "true").await,
        (200, json!({"ok":true,"epoch":other,"offset":1}))
    );

    // A key must be 1 to 128 bytes of visible ASCII; a refused request publishes nothing.
    let longest = "k".repeat(128);
    let too_long = "k".repeat(129);
    for key in ["", too_long.as_str()] {
        let (status, body) = post_with(private, "idem", Some(key), "9").await;
        assert_eq!((status, code(&body)), (400, "bad_request"), "{key:?}");
        assert_eq!(message(&body), "`Idempotency-Key` must be 1 to 128 bytes");
    }
    let (status, _, body) = http_raw(
        private,
        "POST /v1/channels/idem/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 1\r\nIdempotency-Key: caf\u{e9}\r\n\r\n9",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_request"), "{body}");
    assert_eq!(
        post_with(private, "idem", Some(&longest), "4").await,
        (200, json!({"ok":true,"epoch":epoch,"offset":4}))
    );
    assert_eq!(
        post_with(private, "idem", Some(&longest), "4").await,
        (
            200,
            json!({"ok":true,"epoch":epoch,"offset":4,"duplicate":true})
        )
    );
    assert_eq!(
        recv(&mut sub).await,
        r#"{"event":"message","channel":"idem","offset":4,"data":4}"#
    );
    assert_silent(&mut sub).await;
}

#[tokio::test]
async fn history_reads_from_every_start() {
    let srv = TestServer::default().await;
    let private = srv.addr("private");
    let e = create(private, "hist", "").await;
    let data = [
        r#"{"n" : 1, "s":"caf\u00e9"}"#,
        "[1, 2.50, -0, 1e3]",
        r#""text \"q\"""#,
        "null",
        r#"{"k" :true}"#,
    ];
    for (i, d) in data.iter().enumerate() {
        publish(private, "hist", &format!("  {d}\n"), &e, i as u64 + 1).await;
    }
    let msgs = |from: usize, to: usize| -> String {
        (from..=to)
            .map(|o| format!(r#"{{"offset":{o},"data":{}}}"#, data[o - 1]))
            .collect::<Vec<_>>()
            .join(",")
    };
    let ok = |extra: &str, from: u64, messages: String, more: bool| {
        format!(
            r#"{{"ok":true,"epoch":"{e}","offset":5,"from":{from}{extra},"messages":[{messages}],"more":{more}}}"#
        )
    };
    for (query, want) in [
        // Oldest first by default.
        ("", ok("", 1, msgs(1, 5), false)),
        ("?start=oldest", ok("", 1, msgs(1, 5), false)),
        ("?last=2", ok("", 4, msgs(4, 5), false)),
        ("?last=1", ok("", 5, msgs(5, 5), false)),
        ("?last=100", ok("", 1, msgs(1, 5), false)),
        ("?start=new", ok("", 6, String::new(), false)),
        // Pages.
        ("?limit=2", ok("", 1, msgs(1, 2), true)),
        ("?start=oldest&limit=5", ok("", 1, msgs(1, 5), false)),
        ("?last=4&limit=3", ok("", 2, msgs(2, 4), true)),
        ("?limit=1000", ok("", 1, msgs(1, 5), false)),
    ] {
        assert_eq!(
            get_text(private, &format!("/v1/channels/hist/messages{query}")).await,
            (200, want),
            "{query}"
        );
    }
    // Resumes in the current epoch: what follows the offset, all of it.
    for (offset, limit, from, to, more) in [
        (0, 100, 1, 5, false),
        (3, 100, 4, 5, false),
        (2, 2, 3, 4, true),
        (4, 2, 5, 5, false),
    ] {
        let query = format!("?epoch={e}&offset={offset}&limit={limit}");
        assert_eq!(
            get_text(private, &format!("/v1/channels/hist/messages{query}")).await,
            (
                200,
                ok(",\"recovered\":true", from, msgs(from as usize, to), more)
            ),
            "{query}"
        );
    }
    assert_eq!(
        get_text(
            private,
            &format!("/v1/channels/hist/messages?epoch={e}&offset=5")
        )
        .await,
        (200, ok(",\"recovered\":true", 6, String::new(), false))
    );
    // Another epoch: told so, served from the oldest kept.
    let other = if e == "0123456789abcdef" {
        "fedcba9876543210"
    } else {
        "0123456789abcdef"
    };
    assert_eq!(
        get_text(
            private,
            &format!("/v1/channels/hist/messages?epoch={other}&offset=3&limit=2")
        )
        .await,
        (
            200,
            ok(
                r#","recovered":false,"lost":{"reason":"epoch_changed"}"#,
                1,
                msgs(1, 2),
                true
            )
        )
    );
    // The epoch is read case-insensitively as hexadecimal.
    let (status, body) = get(
        private,
        &format!(
            "/v1/channels/hist/messages?epoch={}&offset=4",
            e.to_ascii_uppercase()
        ),
    )
    .await;
    assert_eq!((status, &body["recovered"]), (200, &json!(true)), "{body}");

    // Past the window: the lost offsets exactly.
    let short = create(private, "short", r#"{"backlog_messages":3}"#).await;
    for i in 1..=6u64 {
        publish(private, "short", &format!("{i}"), &short, i).await;
    }
    let kept = json!([{"offset":4,"data":4},{"offset":5,"data":5},{"offset":6,"data":6}]);
    for (offset, lost) in [(0, (1, 3)), (1, (2, 3)), (2, (3, 3))] {
        let (status, body) = get(
            private,
            &format!("/v1/channels/short/messages?epoch={short}&offset={offset}"),
        )
        .await;
        assert_eq!(
            (status, body),
            (
                200,
                json!({"ok":true,"epoch":short,"offset":6,"from":4,"recovered":false,
                       "lost":{"reason":"expired","from":lost.0,"to":lost.1},
                       "messages":kept,"more":false})
            ),
            "offset {offset}"
        );
    }
    let (status, body) = get(
        private,
        &format!("/v1/channels/short/messages?epoch={short}&offset=3"),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ok":true,"epoch":short,"offset":6,"from":4,"recovered":true,
                   "messages":kept,"more":false})
        )
    );
    let (status, body) = get(private, "/v1/channels/short/messages?last=5").await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ok":true,"epoch":short,"offset":6,"from":4,"messages":kept,"more":false})
        )
    );

    // An empty channel.
    let empty = create(private, "empty", "").await;
    let (status, body) = get(private, "/v1/channels/empty/messages").await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ok":true,"epoch":empty,"offset":0,"from":1,"messages":[],"more":false})
        )
    );
}

#[tokio::test]
async fn history_refuses_bad_queries_and_other_listeners() {
    let srv = TestServer::default().await;
    let (private, public) = (srv.addr("private"), srv.addr("public"));
    let e = create(private, "hist", "").await;
    for i in 1..=3u64 {
        publish(private, "hist", &i.to_string(), &e, i).await;
    }
    let past_head = format!("?epoch={e}&offset=4");
    let long_epoch = format!("?epoch={e}0&offset=1");
    let epoch_only = format!("?epoch={e}");
    for query in [
        "?last=0",
        "?last=-1",
        "?last=x",
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?epoch=zz&offset=1",
        "?epoch=zzzzzzzzzzzzzzzz&offset=1",
        long_epoch.as_str(),
        epoch_only.as_str(),
        "?offset=1",
        "?bogus=1",
        "?start=middle",
        "?start=",
        "?start=new&last=2",
        "?last=1&offset=1",
        past_head.as_str(),
    ] {
        let (status, body) = get(private, &format!("/v1/channels/hist/messages{query}")).await;
        assert_eq!((status, code(&body)), (400, "bad_request"), "{query}");
    }
    let (_, body) = get(private, &format!("/v1/channels/hist/messages{past_head}")).await;
    assert_eq!(
        message(&body),
        "offset 4 is past the last offset of channel `hist` (3)"
    );

    let (status, body) = get(private, "/v1/channels/nope/messages").await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    assert_eq!(message(&body), "channel `nope` does not exist");
    let (status, body) = get(private, "/v1/channels/bad%20name/messages").await;
    assert_eq!((status, code(&body)), (400, "bad_request"));

    // Reading history over HTTP is for the operators' side: the listeners that may create.
    for query in ["", "?last=1", "?bogus=1"] {
        let (status, body) = get(public, &format!("/v1/channels/hist/messages{query}")).await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{query}");
        assert_eq!(
            message(&body),
            "this listener does not allow reading history"
        );
    }
    let (status, body) = get(public, "/v1/channels/nope/messages").await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
}

#[tokio::test]
async fn channel_list_pages_in_name_order() {
    let srv = TestServer::default().await;
    let (private, public) = (srv.addr("private"), srv.addr("public"));
    let mut epochs = std::collections::HashMap::new();
    // Created out of order; listed in name order.
    for name in ["lst.c", "other", "lst.a", "lst.b", "lst.b.x"] {
        epochs.insert(name, create(private, name, "").await);
    }
    for i in 1..=3u64 {
        publish(
            private,
            "lst.a",
            &format!(r#"{{"i":{i}}}"#),
            &epochs["lst.a"],
            i,
        )
        .await;
    }
    publish(private, "lst.c", "1", &epochs["lst.c"], 1).await;
    let mut s1 = v1(&srv.url("public")).await;
    let mut s2 = legacy(&srv.url("public")).await;
    subscribe(&mut s1, "lst.a").await;
    subscribe(&mut s1, "lst.b").await;
    send(&mut s2, r#"{"Subscribe":"lst.a"}"#).await;
    recv(&mut s2).await;

    let (all, more) = list(private, "").await;
    assert!(!more);
    let names: Vec<&str> = all.iter().map(|c| c["channel"].as_str().unwrap()).collect();
    assert_eq!(names, ["lst.a", "lst.b", "lst.b.x", "lst.c", "other"]);
    let info = |name: &str| all.iter().find(|c| c["channel"] == name).unwrap().clone();
    let mut a = info("lst.a");
    assert_eq!(take_epoch(&mut a), epochs["lst.a"]);
    let a_bytes = a["backlog"]["bytes"].as_u64().unwrap();
    assert!(a_bytes > 0, "{a}");
    assert_eq!(
        a,
        json!({"channel":"lst.a","offset":3,"subscribers":2,
               "backlog":{"messages":3,"bytes":a_bytes,"first_offset":1}})
    );
    let mut b = info("lst.b");
    assert_eq!(take_epoch(&mut b), epochs["lst.b"]);
    assert_eq!(
        b,
        json!({"channel":"lst.b","offset":0,"subscribers":1,
               "backlog":{"messages":0,"bytes":0,"first_offset":1}})
    );
    let c = info("lst.c");
    assert_eq!((&c["offset"], &c["subscribers"]), (&json!(1), &json!(0)));
    assert_eq!(c["backlog"]["messages"], 1);
    // The per-channel byte counts add up to the hub's total.
    let total: u64 = all
        .iter()
        .map(|c| c["backlog"]["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(total, srv.hub.stats().backlog_bytes as u64);

    // prefix, after and limit.
    let names_of = |cs: &[Value]| -> Vec<String> {
        cs.iter()
            .map(|c| c["channel"].as_str().unwrap().to_owned())
            .collect()
    };
    let (page, more) = list(private, "?prefix=lst.&limit=2").await;
    assert_eq!(
        (names_of(&page), more),
        (vec!["lst.a".into(), "lst.b".into()], true)
    );
    let (page, more) = list(private, "?prefix=lst.&after=lst.b&limit=2").await;
    assert_eq!(
        (names_of(&page), more),
        (vec!["lst.b.x".into(), "lst.c".into()], false)
    );
    let (page, more) = list(private, "?prefix=lst.&after=lst.c&limit=2").await;
    assert_eq!((names_of(&page), more), (vec![], false));
    let (page, more) = list(private, "?after=lst.b.x").await;
    assert_eq!(
        (names_of(&page), more),
        (vec!["lst.c".into(), "other".into()], false)
    );
    // `after` need not be an existing channel.
    let (page, more) = list(private, "?after=lst.bb&limit=1").await;
    assert_eq!((names_of(&page), more), (vec!["lst.c".into()], true));
    let (page, more) = list(private, "?prefix=lst.b").await;
    assert_eq!(
        (names_of(&page), more),
        (vec!["lst.b".into(), "lst.b.x".into()], false)
    );
    let (page, more) = list(private, "?prefix=zzz").await;
    assert_eq!((names_of(&page), more), (vec![], false));
    let (page, more) = list(private, "?limit=5").await;
    assert_eq!((page.len(), more), (5, false));
    let (page, more) = list(private, "?limit=4").await;
    assert_eq!((page.len(), more), (4, true));

    // Walking the pages one at a time visits every channel once.
    let mut walked = Vec::new();
    let mut query = "?limit=1".to_owned();
    loop {
        let (page, more) = list(private, &query).await;
        let name = page[0]["channel"].as_str().unwrap().to_owned();
        query = format!("?limit=1&after={name}");
        walked.push(name);
        if !more {
            break;
        }
    }
    assert_eq!(walked, ["lst.a", "lst.b", "lst.b.x", "lst.c", "other"]);

    for bad in [
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?after=..",
        "?bogus=1",
    ] {
        let (status, body) = get(private, &format!("/v1/channels{bad}")).await;
        assert_eq!((status, code(&body)), (400, "bad_request"), "{bad}");
    }
    for query in ["", "?prefix=lst."] {
        let (status, body) = get(public, &format!("/v1/channels{query}")).await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{query}");
        assert_eq!(
            message(&body),
            "this listener does not allow listing channels"
        );
    }
    let (status, _, body) = http(private, "POST", "/v1/channels", &[], "1").await;
    assert_eq!((status, code(&body)), (405, "method_not_allowed"));
}

#[tokio::test]
async fn channel_classes_apply_over_http() {
    let srv = TestServer::start(&format!(
        "{}[channel.\"auto.*\"]\nauto_create = true\nbacklog_messages = 2\n\
         [channel.\"locked.*\"]\npublish_from = [\"public\"]\n\
         [channel.\"hidden.*\"]\nsubscribe_from = [\"private\"]\n",
        two_listeners("")
    ))
    .await;
    let (private, public) = (srv.addr("private"), srv.addr("public"));

    // auto_create: the first publish creates the channel with the class's settings.
    let (status, mut body) = post(private, "auto.x", r#"{"first": 1}"#).await;
    let epoch = take_epoch(&mut body);
    assert_eq!((status, body), (200, json!({"ok":true,"offset":1})));
    publish(private, "auto.x", "2", &epoch, 2).await;
    publish(private, "auto.x", "3", &epoch, 3).await;
    let (status, body) = get(private, "/v1/channels/auto.x/messages").await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ok":true,"epoch":epoch,"offset":3,"from":2,
                   "messages":[{"offset":2,"data":2},{"offset":3,"data":3}],"more":false})
        )
    );
    let (status, mut body) = put(private, "auto.x", "").await;
    assert_eq!(take_epoch(&mut body), epoch);
    assert_eq!((status, body), (200, json!({"ok":true,"created":false})));
    let (status, body) = put(private, "auto.y", r#"{"backlog_messages":3}"#).await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    assert_eq!(
        message(&body),
        "option `backlog_messages` = 3 is more than channel class \"auto.*\" allows (2)"
    );
    // Without auto_create a publish to a missing channel is refused and creates nothing.
    let (status, body) = post(private, "plain", "1").await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    assert_eq!(message(&body), "channel `plain` does not exist");
    let (status, body) = post(private, "auto", "1").await;
    assert_eq!(
        (status, code(&body)),
        (404, "not_found"),
        "`auto.*` needs the dot"
    );
    let names: Vec<Value> = list(private, "")
        .await
        .0
        .iter()
        .map(|c| c["channel"].clone())
        .collect();
    assert_eq!(names, [json!("auto.x")]);
    // auto_create does not widen the listener's permissions.
    let (status, body) = post(public, "auto.z", "1").await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    assert!(!srv.hub.exists(&"auto.z".parse().unwrap()));

    // publish_from: only `public` may create, publish and delete, and it has no permission to:
    // nobody may.
    for (method, path, body, op) in [
        ("PUT", "/v1/channels/locked.x", "", "create"),
        ("POST", "/v1/channels/locked.x/messages", "1", "publish"),
        ("DELETE", "/v1/channels/locked.x", "", "delete"),
    ] {
        let (status, _, reply) = http(private, method, path, &[], body).await;
        assert_eq!(
            (status, code(&reply)),
            (403, "forbidden"),
            "{method} {path}"
        );
        assert_eq!(
            message(&reply),
            format!(
                "channel `locked.x` (class \"locked.*\") does not allow {op} from this listener"
            )
        );
        let (status, _, reply) = http(public, method, path, &[], body).await;
        assert_eq!(
            (status, code(&reply)),
            (403, "forbidden"),
            "{method} {path}"
        );
        assert!(
            message(&reply).starts_with("this listener does not allow"),
            "{reply}"
        );
    }
    // Even once the channel exists (made here through the hub), it stays closed to `private`.
    let locked = "locked.x".parse().unwrap();
    assert!(srv.hub.create(&locked));
    let (status, body) = post(private, "locked.x", "1").await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (status, body) = delete(private, "locked.x").await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    assert_eq!(srv.hub.last_offset(&locked).unwrap().0, 0);
    assert!(srv.hub.exists(&locked));
    // Other channels are not affected by the class.
    create(private, "unlocked.x", "").await;

    // subscribe_from: `public` may not subscribe to the class's channels.
    let hidden = create(private, "hidden.x", "").await;
    let mut sub = v1(&srv.url("public")).await;
    let refused = call(
        &mut sub,
        r#"{"op":"subscribe","id":1,"channel":"hidden.x"}"#,
    )
    .await;
    assert_eq!(
        refused,
        json!({"id":1,"ok":false,"error":{"code":"forbidden",
               "message":"channel `hidden.x` (class \"hidden.*\") does not allow subscribe from this listener"}})
    );
    publish(private, "hidden.x", "1", &hidden, 1).await;
    assert_silent(&mut sub).await;
}

#[tokio::test]
async fn backlog_memory_is_bounded_across_channels() {
    const LIMIT: u64 = 20_000;
    let srv = TestServer::start(&format!(
        "{}[server]\nbacklog_memory_bytes = {LIMIT}\n[channel.\"*\"]\nbacklog_messages = 100000\n",
        two_listeners(NO_IP_LIMITS)
    ))
    .await;
    let private = srv.addr("private");
    let names = ["mem.a", "mem.b", "mem.c"];
    let mut epochs = Vec::new();
    for name in names {
        epochs.push(create(private, name, "").await);
    }
    let pad = "x".repeat(180);
    let data = |i: u64| format!(r#"{{"i":{i},"pad":"{pad}"}}"#);
    // 600 messages of about 200 bytes, in turn to the three channels: 120 kB against 20 kB.
    for round in 1..=200u64 {
        for (name, epoch) in names.iter().zip(&epochs) {
            publish(private, name, &data(round), epoch, round).await;
        }
    }

    let (channels, more) = list(private, "?prefix=mem.").await;
    assert!(!more);
    assert_eq!(channels.len(), 3);
    let total: u64 = channels
        .iter()
        .map(|c| c["backlog"]["bytes"].as_u64().unwrap())
        .sum();
    assert!(total <= LIMIT, "backlogs hold {total} bytes");
    assert_eq!(total, srv.hub.stats().backlog_bytes as u64);
    let mut firsts = Vec::new();
    for (c, epoch) in channels.iter().zip(&epochs) {
        let name = c["channel"].as_str().unwrap();
        assert_eq!(c["offset"], 200, "{c}");
        let first = c["backlog"]["first_offset"].as_u64().unwrap();
        let kept = c["backlog"]["messages"].as_u64().unwrap();
        assert!(first > 1, "old messages left the backlog: {c}");
        assert!(kept >= 1, "{c}");
        assert_eq!(
            first + kept - 1,
            200,
            "the backlog is the latest messages: {c}"
        );
        firsts.push(first);
        // The newest message is still readable.
        let (status, body) = get(private, &format!("/v1/channels/{name}/messages?last=1")).await;
        assert_eq!(
            (status, body),
            (
                200,
                json!({"ok":true,"epoch":epoch,"offset":200,"from":200,
                       "messages":[{"offset":200,"data":{"i":200,"pad":pad}}],"more":false})
            )
        );
        // Everything before the backlog is reported lost to a resume from the start.
        let (status, body) = get(
            private,
            &format!("/v1/channels/{name}/messages?epoch={epoch}&offset=0&limit=1"),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            (&body["recovered"], &body["lost"], &body["from"]),
            (
                &json!(false),
                &json!({"reason":"expired","from":1,"to":first - 1}),
                &json!(first)
            ),
            "{body}"
        );
        assert_eq!(
            body["messages"],
            json!([{"offset":first,"data":{"i":first,"pad":pad}}])
        );
        // And the history holds exactly the backlog.
        let (_, body) = get(private, &format!("/v1/channels/{name}/messages")).await;
        assert_eq!(body["messages"].as_array().unwrap().len() as u64, kept);
    }

    // A channel whose publish does not fit gives up its own messages only; with none to give
    // up, the message is published but not kept, and the others' backlogs are untouched.
    let big = create(private, "mem.d", "").await;
    let large = format!(r#""{}""#, "y".repeat(1000));
    publish(private, "mem.d", &large, &big, 1).await;
    let (channels, _) = list(private, "?prefix=mem.").await;
    let firsts_after: Vec<u64> = channels[..3]
        .iter()
        .map(|c| c["backlog"]["first_offset"].as_u64().unwrap())
        .collect();
    assert_eq!(firsts_after, firsts);
    assert_eq!(channels[3]["channel"], "mem.d");
    assert_eq!(channels[3]["offset"], 1);
    assert_eq!(
        channels[3]["backlog"],
        json!({"messages":0,"bytes":0,"first_offset":2})
    );
    let (status, body) = get(
        private,
        &format!("/v1/channels/mem.d/messages?epoch={big}&offset=0"),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ok":true,"epoch":big,"offset":1,"from":2,"recovered":false,
                   "lost":{"reason":"expired","from":1,"to":1},"messages":[],"more":false})
        )
    );
    assert!(srv.hub.stats().backlog_bytes as u64 <= LIMIT);

    // Deleting a channel frees its share: the next publish elsewhere is kept.
    let freed = channels[0]["backlog"]["bytes"].as_u64().unwrap();
    let before = srv.hub.stats().backlog_bytes as u64;
    assert_eq!(
        delete(private, "mem.a").await,
        (200, json!({"ok":true,"deleted":true}))
    );
    assert_eq!(srv.hub.stats().backlog_bytes as u64, before - freed);
    publish(private, "mem.d", &large, &big, 2).await;
    let (status, body) = get(private, "/v1/channels/mem.d/messages").await;
    assert_eq!(status, 200);
    assert_eq!(body["from"], 2, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 1);
}

/// A publish that is refused creates nothing, `auto_create` or not: the class's
/// `max_message_bytes` is checked like the listener's `max_publish_bytes`.
///
/// KNOWN SERVER BUG (reported, not fixed here): a publish refused for the class's
/// `max_message_bytes` still auto-creates the channel (`ops::publish` creates it, then the hub
/// refuses the message), so the last assertions fail.
#[tokio::test]
async fn auto_create_refused_publish_creates_nothing() {
    let srv = TestServer::start(&format!(
        "{}[channel.\"auto.*\"]\nauto_create = true\nmax_message_bytes = 5\n",
        two_listeners("max_publish_bytes = 100")
    ))
    .await;
    let private = srv.addr("private");
    // Over the listener's max_publish_bytes: refused, nothing created.
    let (status, body) = post(private, "auto.a", &format!(r#""{}""#, "x".repeat(200))).await;
    assert_eq!((status, code(&body)), (413, "too_large"));
    assert!(!srv.hub.exists(&"auto.a".parse().unwrap()));
    // Over the class's max_message_bytes: refused too...
    let (status, body) = post(private, "auto.b", r#""0123456789""#).await;
    assert_eq!((status, code(&body)), (413, "too_large"));
    assert_eq!(
        message(&body),
        "data is 12 bytes; channel `auto.b` allows at most 5"
    );
    // ...so nothing may have been created either.
    let (channels, _) = list(private, "").await;
    assert_eq!(
        channels,
        Vec::<Value>::new(),
        "a refused publish created a channel"
    );
    assert!(!srv.hub.exists(&"auto.b".parse().unwrap()));
}
