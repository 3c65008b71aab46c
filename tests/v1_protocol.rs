//! Protocol v1 over real sockets: every op and every error code.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn every_op_succeeds_with_one_reply_carrying_the_id() {
    let srv = TestServer::default().await;
    let mut publisher = v1(&srv.url("private")).await;
    let mut sub = v1(&srv.url("public")).await;

    let mut created = call(
        &mut publisher,
        r#"{"op":"create","id":1,"channel":"prices"}"#,
    )
    .await;
    let epoch = take_epoch(&mut created);
    assert_eq!(created, json!({"id":1,"ok":true,"created":true}));
    let mut again = call(
        &mut publisher,
        r#"{"op":"create","id":"again","channel":"prices"}"#,
    )
    .await;
    assert_eq!(take_epoch(&mut again), epoch);
    assert_eq!(again, json!({"id":"again","ok":true,"created":false}));
    assert_eq!(
        call(&mut sub, r#"{"op":"subscribe","id":2,"channel":"prices"}"#).await,
        json!({"id":2,"ok":true,"epoch":epoch,"offset":0,"from":1})
    );
    assert_eq!(
        call(&mut sub, r#"{"op":"ping","id":3}"#).await,
        json!({"id":3,"ok":true})
    );
    assert_eq!(
        call(&mut publisher, r#"{"op":"ping"}"#).await,
        json!({"id":null,"ok":true})
    );

    for i in 1..=3u64 {
        let reply = call(
            &mut publisher,
            &format!(
                r#"{{"op":"publish","id":{},"channel":"prices","data":{{"n":{i}}}}}"#,
                10 + i
            ),
        )
        .await;
        assert_eq!(
            reply,
            json!({"id":10+i,"ok":true,"epoch":epoch,"offset":i}),
            "offsets are strictly +1"
        );
    }
    for i in 1..=3u64 {
        assert_eq!(
            recv_json(&mut sub).await,
            json!({"event":"message","channel":"prices","offset":i,"data":{"n":i}})
        );
    }
    assert_eq!(
        call(
            &mut sub,
            r#"{"op":"unsubscribe","id":4,"channel":"prices"}"#
        )
        .await,
        json!({"id":4,"ok":true})
    );
    srv.wait_for("unsubscribe", |s| s.hub.stats().subscriptions == 0)
        .await;
    call(
        &mut publisher,
        r#"{"op":"publish","id":5,"channel":"prices","data":1}"#,
    )
    .await;
    assert_silent(&mut sub).await;
    // Unsubscribing again is harmless.
    assert_eq!(
        call(
            &mut sub,
            r#"{"op":"unsubscribe","id":6,"channel":"prices"}"#
        )
        .await,
        json!({"id":6,"ok":true})
    );
}

#[tokio::test]
async fn data_is_forwarded_exactly_as_the_publisher_wrote_it() {
    let srv = TestServer::default().await;
    let mut publisher = v1(&srv.url("private")).await;
    let mut sub = v1(&srv.url("public")).await;
    call(&mut publisher, r#"{"op":"create","channel":"c"}"#).await;
    call(&mut sub, r#"{"op":"subscribe","channel":"c"}"#).await;
    let data = r#"{ "b" : 1.50,  "a":[1, 2e3, "é\u00e9"] }"#;
    call(
        &mut publisher,
        &format!(r#"{{"op":"publish","channel":"c","data":{data}}}"#),
    )
    .await;
    assert_eq!(
        recv(&mut sub).await,
        format!(r#"{{"event":"message","channel":"c","offset":1,"data":{data}}}"#)
    );
}

#[tokio::test]
async fn subscribing_twice_delivers_once() {
    let srv = TestServer::default().await;
    let mut publisher = v1(&srv.url("private")).await;
    let mut sub = v1(&srv.url("public")).await;
    call(&mut publisher, r#"{"op":"create","channel":"c"}"#).await;
    call(&mut sub, r#"{"op":"subscribe","channel":"c"}"#).await;
    call(&mut sub, r#"{"op":"subscribe","channel":"c"}"#).await;
    call(
        &mut publisher,
        r#"{"op":"publish","channel":"c","data":"x"}"#,
    )
    .await;
    assert_eq!(recv_json(&mut sub).await["offset"], 1);
    assert_silent(&mut sub).await;
}

fn code(v: &serde_json::Value) -> &str {
    assert_eq!(v["ok"], false, "{v}");
    v["error"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn every_error_code_and_the_connection_stays_open() {
    let srv = TestServer::start(&two_listeners(
        "max_publish_bytes = 100\nrate_limit_per_second = 1000",
    ))
    .await;
    let mut publisher = v1(&srv.url("private")).await;
    let mut sub = v1(&srv.url("public")).await;

    // bad_request: not JSON, wrong shape, bad channel name, missing fields, bad id.
    let r = call(&mut publisher, "this is not json").await;
    assert_eq!((code(&r), &r["id"]), ("bad_request", &json!(null)));
    let r = call(
        &mut publisher,
        r#"{"op":"create","id":7,"channel":"x","extra":true}"#,
    )
    .await;
    assert_eq!((code(&r), &r["id"]), ("bad_request", &json!(7)));
    let r = call(
        &mut publisher,
        r#"{"op":"create","id":8,"channel":"no spaces"}"#,
    )
    .await;
    assert_eq!((code(&r), &r["id"]), ("bad_request", &json!(8)));
    let r = call(
        &mut publisher,
        &format!(
            r#"{{"op":"create","id":9,"channel":"{}"}}"#,
            "x".repeat(256)
        ),
    )
    .await;
    assert_eq!(code(&r), "bad_request");
    let r = call(&mut publisher, r#"{"op":"publish","id":10,"channel":"x"}"#).await;
    assert_eq!(code(&r), "bad_request");
    let r = call(&mut publisher, r#"{"op":"ping","id":[1]}"#).await;
    assert_eq!(code(&r), "bad_request");
    // unknown_op
    let r = call(&mut publisher, r#"{"op":"teleport","id":11,"channel":"x"}"#).await;
    assert_eq!((code(&r), &r["id"]), ("unknown_op", &json!(11)));
    // not_found
    let r = call(
        &mut sub,
        r#"{"op":"subscribe","id":12,"channel":"missing"}"#,
    )
    .await;
    assert_eq!((code(&r), &r["id"]), ("not_found", &json!(12)));
    let r = call(
        &mut publisher,
        r#"{"op":"publish","id":13,"channel":"missing","data":1}"#,
    )
    .await;
    assert_eq!(code(&r), "not_found");
    // forbidden, both ways round
    let r = call(&mut sub, r#"{"op":"create","id":14,"channel":"evil"}"#).await;
    assert_eq!((code(&r), &r["id"]), ("forbidden", &json!(14)));
    let r = call(
        &mut sub,
        r#"{"op":"publish","id":15,"channel":"evil","data":"spoof"}"#,
    )
    .await;
    assert_eq!(code(&r), "forbidden");
    let r = call(
        &mut publisher,
        r#"{"op":"subscribe","id":16,"channel":"evil"}"#,
    )
    .await;
    assert_eq!(code(&r), "forbidden");
    assert!(
        !srv.hub.exists(&"evil".parse().unwrap()),
        "a forbidden create creates nothing"
    );
    // too_large (max_publish_bytes = 100)
    call(&mut publisher, r#"{"op":"create","channel":"big"}"#).await;
    let r = call(
        &mut publisher,
        &format!(
            r#"{{"op":"publish","id":17,"channel":"big","data":"{}"}}"#,
            "x".repeat(200)
        ),
    )
    .await;
    assert_eq!((code(&r), &r["id"]), ("too_large", &json!(17)));
    // binary frames
    publisher
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(code(&recv_json(&mut publisher).await), "bad_request");
    // after all that, both connections still work
    assert_eq!(
        call(
            &mut publisher,
            r#"{"op":"publish","id":18,"channel":"big","data":1}"#
        )
        .await["offset"],
        1
    );
    assert_eq!(call(&mut sub, r#"{"op":"ping","id":19}"#).await["ok"], true);
    // messages are ours: no parser or type internals
    for req in [
        "{",
        r#"{"op":5}"#,
        r#"{"op":"publish","channel":["a"],"data":1}"#,
    ] {
        let r = call(&mut publisher, req).await;
        let m = r["error"]["message"].as_str().unwrap();
        for leak in ["serde", "line ", "column", "Raw", "invalid type", "::"] {
            assert!(!m.contains(leak), "{req} -> {m}");
        }
    }
}

#[tokio::test]
async fn rate_limited_and_then_recovers() {
    let srv = TestServer::start(&two_listeners(
        "rate_limit_per_second = 5\nmax_rejected_commands_per_second = 1000",
    ))
    .await;
    let mut c = v1(&srv.url("private")).await;
    for i in 0..12 {
        send(&mut c, &format!(r#"{{"op":"ping","id":{i}}}"#)).await;
    }
    let mut limited = 0;
    for i in 0..12 {
        let r = recv_json(&mut c).await;
        assert_eq!(r["id"], i, "one reply per request, in order");
        if r["ok"] == false {
            assert_eq!(code(&r), "rate_limited");
            limited += 1;
        }
    }
    assert!(limited >= 6, "burst of 5 allowed, then limited: {limited}");
    // Malformed frames take tokens too: a flood of garbage is rate limited like commands are.
    for _ in 0..10 {
        send(&mut c, "garbage").await;
    }
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(code(&recv_json(&mut c).await).to_owned());
    }
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    // So do binary frames.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for _ in 0..10 {
        futures_util::SinkExt::send(&mut c, Message::Binary(vec![1].into()))
            .await
            .unwrap();
    }
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(code(&recv_json(&mut c).await).to_owned());
    }
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    assert!(codes.iter().any(|c| c == "bad_request"), "{codes:?}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        call(&mut c, r#"{"op":"ping","id":"later"}"#).await["ok"],
        true
    );
}

#[tokio::test]
async fn an_own_subscription_sees_the_message_before_the_publish_reply() {
    let srv = TestServer::start("[listener.all]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe','CreateChannel','NotifyChannel']\n").await;
    let mut c = v1(&srv.url("all")).await;
    call(&mut c, r#"{"op":"create","channel":"self"}"#).await;
    call(&mut c, r#"{"op":"subscribe","channel":"self"}"#).await;
    send(
        &mut c,
        r#"{"op":"publish","id":1,"channel":"self","data":true}"#,
    )
    .await;
    assert_eq!(recv_json(&mut c).await["event"], "message");
    let mut reply = recv_json(&mut c).await;
    take_epoch(&mut reply);
    assert_eq!(reply, json!({"id":1,"ok":true,"offset":1}));
}

/// A publisher that sends a batch of publishes and then closes its sending side (TCP half-close)
/// still gets an acknowledgement for every publish: the replies of a burst of frames are written
/// out even when the burst ends with the end of the input. Repeated, since the end of the input
/// arrives in the same burst only when the server reads after it came.
#[tokio::test]
async fn a_batch_of_publishes_followed_by_a_half_close_gets_every_acknowledgement() {
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::MaybeTlsStream;

    let srv = TestServer::default().await;
    http_create(&srv, "batch").await;
    for round in 0..20 {
        let mut publisher = v1(&srv.url("private")).await;
        for i in 0..40 {
            let req = format!(
                r#"{{"op":"publish","id":{i},"channel":"batch","msg_id":"r{round}-{i}","data":{i}}}"#
            );
            publisher.feed(Message::text(req)).await.unwrap();
        }
        publisher.flush().await.unwrap();
        match publisher.get_mut() {
            MaybeTlsStream::Plain(tcp) => tcp.shutdown().await.unwrap(),
            _ => unreachable!("a plain listener"),
        }
        let mut acked = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(T, publisher.next()).await {
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["ok"], json!(true), "{v}");
                acked.push(v["id"].as_u64().unwrap());
            }
        }
        assert_eq!(
            acked,
            (0..40).collect::<Vec<_>>(),
            "round {round}: every publish acknowledged, in order"
        );
    }
    // Every publish was carried out once: the next one takes offset 801.
    assert_eq!(http_publish(&srv, "batch", "1").await, 801);
}
