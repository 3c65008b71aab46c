//! The original TSLM protocol over real sockets, replaying the original's observed transcript,
//! and cross-dialect delivery.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn the_original_transcript() {
    let srv = TestServer::default().await;
    let mut publisher = legacy(&srv.url("private")).await;
    let mut sub = legacy(&srv.url("public")).await;
    let mut sub2 = legacy(&srv.url("public")).await;

    let steps: &[(&str, &str)] = &[
        ("sub", r#"{"Subscribe": "news"}"#),
        ("pub", r#"{"CreateChannel": "news"}"#),
        ("pub", r#"{"CreateChannel": "news"}"#),
        ("sub", r#"{"CreateChannel": "evil"}"#),
        ("sub", r#"{"Subscribe": "news"}"#),
        ("sub", r#"{"Subscribe": "news"}"#),
        ("sub2", r#"{"Subscribe": "news"}"#),
    ];
    let expected = [
        r#"{"Error":"Channel not found: news"}"#,
        r#"{"Success":"Command executed: CreateChannel(\"news\")"}"#,
        r#"{"Error":"Channel 'news' is already registered"}"#,
        r#"{"Error":"Permission denied: CreateChannel"}"#,
        r#"{"Success":"Command executed: Subscribe(\"news\")"}"#,
        r#"{"Success":"Command executed: Subscribe(\"news\")"}"#,
        r#"{"Success":"Command executed: Subscribe(\"news\")"}"#,
    ];
    for ((who, req), want) in steps.iter().zip(expected) {
        let ws = match *who {
            "pub" => &mut publisher,
            "sub" => &mut sub,
            _ => &mut sub2,
        };
        send(ws, req).await;
        assert_eq!(recv(ws).await, want, "{who} -> {req}");
    }

    send(
        &mut publisher,
        r#"{"NotifyChannel": ["news", {"Text": "hello"}]}"#,
    )
    .await;
    assert_eq!(
        recv(&mut publisher).await,
        r#"{"Success":"Command executed: NotifyChannel(\"news\")"}"#,
        "no payload echo"
    );
    assert_eq!(
        recv(&mut sub).await,
        r#"{"ChannelMessage":["news",{"Text":"hello"}]}"#
    );
    assert_silent(&mut sub).await; // once, despite two Subscribes
    assert_eq!(
        recv(&mut sub2).await,
        r#"{"ChannelMessage":["news",{"Text":"hello"}]}"#
    );

    send(
        &mut publisher,
        r#"{"NotifyChannel":["news",{"Json":{"price":101.5,"sym":"BTC","tags":["a","b"]}}]}"#,
    )
    .await;
    recv(&mut publisher).await;
    assert_eq!(
        recv(&mut sub).await,
        r#"{"ChannelMessage":["news",{"Json":{"price":101.5,"sym":"BTC","tags":["a","b"]}}]}"#
    );
    assert_eq!(
        recv(&mut sub2).await,
        r#"{"ChannelMessage":["news",{"Json":{"price":101.5,"sym":"BTC","tags":["a","b"]}}]}"#
    );

    let more: &[(&str, &str, &str)] = &[
        (
            "sub",
            r#"{"NotifyChannel": ["news", {"Text": "spoof"}]}"#,
            r#"{"Error":"Permission denied: NotifyChannel"}"#,
        ),
        (
            "pub",
            r#"{"Subscribe": "news"}"#,
            r#"{"Error":"Permission denied: Subscribe"}"#,
        ),
        (
            "pub",
            r#"{"NotifyChannel": ["nope", {"Text": "x"}]}"#,
            r#"{"Error":"Channel not found: nope"}"#,
        ),
        (
            "pub",
            "hello",
            r#"{"Error":"Invalid message format: expected value at line 1 column 1"}"#,
        ),
        (
            "pub",
            r#"{"Subscribe":"#,
            r#"{"Error":"Invalid message format: EOF while parsing a value at line 1 column 13"}"#,
        ),
    ];
    for (who, req, want) in more {
        let ws = if *who == "pub" {
            &mut publisher
        } else {
            &mut sub
        };
        send(ws, req).await;
        assert_eq!(recv(ws).await, *want, "{who} -> {req}");
    }
    assert_silent(&mut sub2).await; // the spoof reached nobody

    for shape in [
        r#"{"subscribe":"news"}"#,
        r#"{"Subscribe":["news"]}"#,
        r#"{"NotifyChannel":["news","hello"]}"#,
        r#"{"Unsubscribe":"news"}"#,
        r#"{"NotifyChannel":["news",{"Text":5}]}"#,
        r#"{"CreateChannel":""}"#,
    ] {
        send(&mut publisher, shape).await;
        let r = recv_json(&mut publisher).await;
        let e = r["Error"]
            .as_str()
            .unwrap_or_else(|| panic!("{shape} -> {r}"));
        assert!(e.starts_with("Invalid message format: "), "{shape} -> {e}");
        assert!(
            !e.contains("Raw") && !e.contains("::"),
            "no type names: {e}"
        );
    }

    publisher
        .send(Message::Binary(
            br#"{"CreateChannel":"bin"}"#.to_vec().into(),
        ))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut publisher).await,
        r#"{"Error":"Binary messages not supported"}"#
    );
    // Still open after every error.
    send(&mut publisher, r#"{"CreateChannel":"still-open"}"#).await;
    assert_eq!(
        recv(&mut publisher).await,
        r#"{"Success":"Command executed: CreateChannel(\"still-open\")"}"#
    );
}

#[tokio::test]
async fn message_too_large_and_rate_limit_texts() {
    let srv = TestServer::start(&two_listeners(
        "max_publish_bytes = 50\nrate_limit_per_second = 3",
    ))
    .await;
    let mut publisher = legacy(&srv.url("private")).await;
    send(&mut publisher, r#"{"CreateChannel":"c"}"#).await;
    recv(&mut publisher).await;
    send(
        &mut publisher,
        &format!(
            r#"{{"NotifyChannel":["c",{{"Text":"{}"}}]}}"#,
            "x".repeat(100)
        ),
    )
    .await;
    assert_eq!(
        recv(&mut publisher).await,
        r#"{"Error":"Message too large"}"#
    );
    for _ in 0..5 {
        send(&mut publisher, r#"{"CreateChannel":"c"}"#).await;
    }
    let mut texts = Vec::new();
    for _ in 0..5 {
        texts.push(recv(&mut publisher).await);
    }
    assert!(
        texts
            .iter()
            .any(|t| t == r#"{"Error":"Rate limit exceeded"}"#),
        "{texts:?}"
    );
}

#[tokio::test]
async fn both_dialects_share_one_channel_space() {
    let srv = TestServer::default().await;
    let mut v1_pub = v1(&srv.url("private")).await;
    let mut old_pub = legacy(&srv.url("private")).await;
    let mut v1_sub = v1(&srv.url("public")).await;
    let mut old_sub = legacy(&srv.url("public")).await;

    // Created by an original client, subscribed from both dialects.
    send(&mut old_pub, r#"{"CreateChannel":"shared"}"#).await;
    recv(&mut old_pub).await;
    call(&mut v1_sub, r#"{"op":"subscribe","channel":"shared"}"#).await;
    send(&mut old_sub, r#"{"Subscribe":"shared"}"#).await;
    recv(&mut old_sub).await;

    // v1 publishes: a JSON string is Text, anything else is Json.
    assert_eq!(
        call(
            &mut v1_pub,
            r#"{"op":"publish","channel":"shared","data":"hello"}"#
        )
        .await["offset"],
        1
    );
    assert_eq!(
        call(
            &mut v1_pub,
            r#"{"op":"publish","channel":"shared","data":{"a":[1,2]}}"#
        )
        .await["offset"],
        2
    );
    assert_eq!(
        recv(&mut old_sub).await,
        r#"{"ChannelMessage":["shared",{"Text":"hello"}]}"#
    );
    assert_eq!(
        recv(&mut old_sub).await,
        r#"{"ChannelMessage":["shared",{"Json":{"a":[1,2]}}]}"#
    );
    assert_eq!(
        recv_json(&mut v1_sub).await,
        json!({"event":"message","channel":"shared","offset":1,"data":"hello"})
    );
    assert_eq!(
        recv_json(&mut v1_sub).await,
        json!({"event":"message","channel":"shared","offset":2,"data":{"a":[1,2]}})
    );

    // And back: original publishes reach v1 subscribers with the next offsets.
    send(
        &mut old_pub,
        r#"{"NotifyChannel":["shared",{"Text":"from old"}]}"#,
    )
    .await;
    recv(&mut old_pub).await;
    send(
        &mut old_pub,
        r#"{"NotifyChannel":["shared",{"Json":[true,null]}]}"#,
    )
    .await;
    recv(&mut old_pub).await;
    assert_eq!(
        recv_json(&mut v1_sub).await,
        json!({"event":"message","channel":"shared","offset":3,"data":"from old"})
    );
    assert_eq!(
        recv_json(&mut v1_sub).await,
        json!({"event":"message","channel":"shared","offset":4,"data":[true,null]})
    );
    assert_eq!(
        recv(&mut old_sub).await,
        r#"{"ChannelMessage":["shared",{"Text":"from old"}]}"#
    );
    assert_eq!(
        recv(&mut old_sub).await,
        r#"{"ChannelMessage":["shared",{"Json":[true,null]}]}"#
    );

    // A v1 create of a channel the original client made is idempotent; the original's is not.
    assert_eq!(
        call(&mut v1_pub, r#"{"op":"create","channel":"shared"}"#).await["created"],
        false
    );
    send(&mut old_pub, r#"{"CreateChannel":"shared"}"#).await;
    assert_eq!(
        recv(&mut old_pub).await,
        r#"{"Error":"Channel 'shared' is already registered"}"#
    );
}

#[tokio::test]
async fn any_path_is_accepted_and_unknown_subprotocols_fall_back_to_the_original() {
    let srv = TestServer::default().await;
    let mut a = legacy(&format!("ws://{}/some/path?token=abc", srv.addr("private"))).await;
    send(&mut a, r#"{"CreateChannel":"p"}"#).await;
    assert_eq!(
        recv(&mut a).await,
        r#"{"Success":"Command executed: CreateChannel(\"p\")"}"#
    );
    // Including the HTTP API's paths, in both dialects.
    for path in ["/v1/channels/p", "/v1/channels/p/messages"] {
        let mut b = legacy(&format!("ws://{}{path}", srv.addr("public"))).await;
        send(&mut b, r#"{"Subscribe":"p"}"#).await;
        assert_eq!(
            recv(&mut b).await,
            r#"{"Success":"Command executed: Subscribe(\"p\")"}"#
        );
        let mut c = v1(&format!("ws://{}{path}", srv.addr("public"))).await;
        assert_eq!(call(&mut c, r#"{"op":"ping","id":1}"#).await["ok"], true);
    }
}
