//! The fan-out core: slow subscribers, many subscribers, and nothing left behind.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn offset_of(frame: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap();
    assert_eq!(v["event"], "message", "{frame}");
    v["offset"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_disconnected_while_a_fast_one_gets_everything_in_order() {
    const N: u64 = 20_000;
    // The slow subscriber's listener queues 64 KiB; the fast one's has room for the whole burst,
    // so whether it keeps up does not depend on how fast this (debug-built) test reads.
    let srv = TestServer::start(&format!(
        "{}[listener.roomy]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\noutbound_queue_bytes=67108864\nchannel_buffer_size=100000\n",
        two_listeners("outbound_queue_bytes = 65536")
    ))
    .await;
    let mut publisher = v1(&srv.url("private")).await;
    call(&mut publisher, r#"{"op":"create","channel":"firehose"}"#).await;
    let mut slow = v1(&srv.url("public")).await;
    let mut fast = v1(&srv.url("roomy")).await;
    call(&mut slow, r#"{"op":"subscribe","channel":"firehose"}"#).await;
    call(&mut fast, r#"{"op":"subscribe","channel":"firehose"}"#).await;

    let fast_reader = tokio::spawn(async move {
        let mut next = 1;
        while next <= N {
            let f = recv(&mut fast).await;
            assert_eq!(
                offset_of(&f),
                next,
                "fast subscriber: in order, no gap, no duplicate"
            );
            next += 1;
        }
        fast
    });
    // ~1 KiB messages, 20 MB in all: far more than the socket buffers and the 64 KiB queue.
    let payload = format!("\"{}\"", "p".repeat(1000));
    let (mut tx, mut rx) = publisher.split();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let req =
                format!(r#"{{"op":"publish","id":{i},"channel":"firehose","data":{payload}}}"#);
            futures_util::SinkExt::send(&mut tx, Message::Text(req.into()))
                .await
                .unwrap();
        }
        tx
    });
    let mut acked = 0;
    while acked < N {
        match tokio::time::timeout(T, rx.next())
            .await
            .expect("publisher replies")
            .unwrap()
            .unwrap()
        {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                assert_eq!(v["ok"], true, "the publisher is never refused: {v}");
                acked += 1;
            }
            _ => continue,
        }
    }
    let _tx = writer.await.unwrap();
    let _fast = tokio::time::timeout(Duration::from_secs(60), fast_reader)
        .await
        .expect("fast subscriber done")
        .unwrap();
    srv.wait_for("slow subscriber dropped", |s| {
        s.hub.stats().subscriptions == 1
    })
    .await;

    // The slow subscriber now reads: an in-order prefix, then the close that says why.
    let mut last = 0;
    let close = loop {
        match tokio::time::timeout(T, slow.next())
            .await
            .expect("slow reads")
            .expect("close frame")
        {
            Ok(Message::Text(t)) => {
                let o = offset_of(&t);
                assert_eq!(o, last + 1, "slow subscriber: in-order prefix");
                last = o;
            }
            Ok(Message::Close(f)) => break f.map(|f| (u16::from(f.code), f.reason.to_string())),
            Ok(_) => {}
            Err(e) => panic!("slow subscriber got no close frame: {e}"),
        }
    };
    assert_eq!(close, Some((4000, "slow consumer".into())));
    assert_eq!(srv.stats().slow_consumer_closes, 1);
    assert!(
        last < N,
        "the slow subscriber cannot have received everything"
    );
}

#[tokio::test]
async fn many_subscribers_receive_every_message_in_order() {
    let srv = TestServer::default().await;
    let mut publisher = v1(&srv.url("private")).await;
    call(&mut publisher, r#"{"op":"create","channel":"wide"}"#).await;
    let mut subs = Vec::new();
    for i in 0..100 {
        let mut s = if i % 2 == 0 {
            v1(&srv.url("public")).await
        } else {
            legacy(&srv.url("public")).await
        };
        if i % 2 == 0 {
            call(&mut s, r#"{"op":"subscribe","channel":"wide"}"#).await;
        } else {
            send(&mut s, r#"{"Subscribe":"wide"}"#).await;
            recv(&mut s).await;
        }
        subs.push(s);
    }
    for i in 0..200 {
        call(
            &mut publisher,
            &format!(r#"{{"op":"publish","channel":"wide","data":{i}}}"#),
        )
        .await;
    }
    for (n, s) in subs.iter_mut().enumerate() {
        for i in 0..200u64 {
            let f = recv(s).await;
            if n % 2 == 0 {
                assert_eq!(
                    f,
                    format!(
                        r#"{{"event":"message","channel":"wide","offset":{},"data":{i}}}"#,
                        i + 1
                    )
                );
            } else {
                assert_eq!(
                    f,
                    format!(r#"{{"ChannelMessage":["wide",{{"Json":{i}}}]}}"#)
                );
            }
        }
    }
}

#[tokio::test]
async fn a_disconnect_removes_its_subscriptions_at_once() {
    let srv = TestServer::default().await;
    let mut publisher = v1(&srv.url("private")).await;
    for c in ["a", "b", "c"] {
        call(
            &mut publisher,
            &format!(r#"{{"op":"create","channel":"{c}"}}"#),
        )
        .await;
    }
    let mut subs = Vec::new();
    for _ in 0..50 {
        let mut s = v1(&srv.url("public")).await;
        for c in ["a", "b", "c"] {
            call(&mut s, &format!(r#"{{"op":"subscribe","channel":"{c}"}}"#)).await;
        }
        subs.push(s);
    }
    assert_eq!(srv.hub.stats().subscriptions, 150);
    // Half close politely, half just vanish (TCP close, no close frame). No publish happens.
    for (i, mut s) in subs.into_iter().enumerate() {
        if i % 2 == 0 {
            let _ = s.close(None).await;
        } else {
            drop(s);
        }
    }
    srv.wait_for("subscriptions gone", |s| {
        s.hub.stats().subscriptions == 0 && s.stats().sessions == 1
    })
    .await;
    assert_eq!(srv.hub.subscriber_count(&"a".parse().unwrap()).unwrap(), 0);
}

#[tokio::test]
async fn aborted_handshakes_leave_nothing_behind() {
    let srv = TestServer::start(&two_listeners(NO_IP_LIMITS)).await;
    let addr = srv.addr("public");
    let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: tslm.v1\r\n\r\n";
    for i in 0..600 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        match i % 3 {
            0 => {} // connect, close (a TCP probe)
            1 => s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap(), // half a request
            _ => s.write_all(upgrade.as_bytes()).await.unwrap(), // a full upgrade, then gone
        }
        drop(s);
    }
    srv.wait_for("all connections gone", |s| {
        let st = s.stats();
        st.connections == 0 && st.sessions == 0
    })
    .await;
    assert_eq!(srv.hub.stats().subscriptions, 0);
    // The server still works.
    let mut ok = v1(&srv.url("public")).await;
    assert_eq!(call(&mut ok, r#"{"op":"ping","id":1}"#).await["ok"], true);
}

/// `write_coalesce_ms`: a session writes its queued deliveries at most once per interval, so a
/// stream of messages spaced closer than the interval shares system calls; nothing is lost or
/// reordered. (That a quiet session is not held, and that a release wakes it once, is
/// unit-tested in `pacer.rs` and `tslm-hub`'s `outbox.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_coalescing_writes_a_busy_session_at_most_once_per_interval_and_loses_nothing() {
    const N: u64 = 20;
    let srv = TestServer::start(&two_listeners("write_coalesce_ms = 100")).await;
    let mut publisher = v1(&srv.url("private")).await;
    call(&mut publisher, r#"{"op":"create","channel":"paced"}"#).await;
    let mut sub = v1(&srv.url("public")).await;
    call(&mut sub, r#"{"op":"subscribe","channel":"paced"}"#).await;
    let before = srv.stats();
    let started = std::time::Instant::now();
    for i in 0..N {
        let r = call(
            &mut publisher,
            &format!(r#"{{"op":"publish","id":{i},"channel":"paced","data":{i}}}"#),
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for next in 1..=N {
        assert_eq!(
            offset_of(&recv(&mut sub).await),
            next,
            "in order, each once"
        );
    }
    let elapsed = started.elapsed();
    let after = srv.stats();
    let writes = after.frame_writes - before.frame_writes;
    assert_eq!(after.frames_written - before.frames_written, N as usize);
    // Every write after the first came at least 100 ms after the one before it, and all of
    // them within `elapsed`.
    let bound = elapsed.as_millis() as usize / 100 + 1;
    assert!(
        writes <= bound && writes < N as usize,
        "{writes} writes for {N} messages in {elapsed:?}"
    );
}

/// `write_coalesce_ms`: a session holding its queue between writes is written at once when the
/// queue reaches half of its bound, so coalescing never turns a subscriber that keeps up into a
/// slow consumer. Here the bound is 8 frames and 40 messages, each published once the one before
/// was acknowledged, arrive well within one 100 ms interval: without the early write the queue
/// overflows and the subscriber is closed. (A batch published at once would overflow a queue of 8
/// with or without coalescing: the subscriber would not run before the burst ended.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_coalescing_writes_a_held_queue_at_half_its_bound_and_loses_nothing() {
    const N: u64 = 40;
    let srv = TestServer::start(&two_listeners(
        "write_coalesce_ms = 100\nchannel_buffer_size = 8",
    ))
    .await;
    let mut publisher = v1(&srv.url("private")).await;
    call(&mut publisher, r#"{"op":"create","channel":"burst"}"#).await;
    let mut sub = v1(&srv.url("public")).await;
    call(&mut sub, r#"{"op":"subscribe","channel":"burst"}"#).await;
    // One message first: the subscriber's write of it holds its queue.
    call(
        &mut publisher,
        r#"{"op":"publish","id":"first","channel":"burst","data":0}"#,
    )
    .await;
    assert_eq!(offset_of(&recv(&mut sub).await), 1);
    let before = srv.stats();
    for i in 1..N {
        let r = call(
            &mut publisher,
            &format!(r#"{{"op":"publish","id":{i},"channel":"burst","data":{i}}}"#),
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    for next in 2..=N {
        assert_eq!(
            offset_of(&recv(&mut sub).await),
            next,
            "in order, each once"
        );
    }
    let after = srv.stats();
    assert_eq!(after.frames_written - before.frames_written, N as usize - 1);
    assert!(
        after.frame_writes - before.frame_writes < N as usize - 1,
        "not coalesced"
    );
    assert_eq!(after.slow_consumer_closes, before.slow_consumer_closes);
}

/// `write_coalesce_ms` does not slow a backlog replay: each replay step (here byte-bound, a
/// few 300-byte messages, far from half the queue's frame bound) is written at once, not at the
/// next tick. Held until the tick, 1,000 messages would take about 170 ticks of 100 ms; the
/// bound below is a third of that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_coalescing_does_not_hold_a_backlog_replay() {
    const N: u64 = 1_000;
    let srv = TestServer::start(&format!(
        "{}[channel.\"replayed\"]\nbacklog_messages = {N}\n",
        two_listeners("write_coalesce_ms = 100\noutbound_queue_bytes = 4096")
    ))
    .await;
    let mut publisher = v1(&srv.url("private")).await;
    call(&mut publisher, r#"{"op":"create","channel":"replayed"}"#).await;
    let channel: tslm_protocol::ChannelName = "replayed".parse().unwrap();
    let body = "x".repeat(250);
    for _ in 0..N {
        srv.hub
            .publish(&channel, &tslm_protocol::Payload::text(&body))
            .unwrap();
    }
    let mut sub = v1(&srv.url("public")).await;
    let r = call(
        &mut sub,
        r#"{"op":"subscribe","channel":"replayed","start":"oldest"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    tokio::time::timeout(Duration::from_secs(6), async {
        for next in 1..=N {
            assert_eq!(
                offset_of(&recv(&mut sub).await),
                next,
                "in order, each once"
            );
        }
    })
    .await
    .expect("the replay was held to a step per coalescing tick");
}

/// Without `write_coalesce_ms`, messages spaced apart are written as they come (the counters
/// the coalescing test reads count every write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_coalescing_messages_spaced_apart_are_written_one_by_one() {
    const N: u64 = 5;
    let srv = TestServer::start(&two_listeners("")).await;
    let mut publisher = v1(&srv.url("private")).await;
    call(&mut publisher, r#"{"op":"create","channel":"spaced"}"#).await;
    let mut sub = v1(&srv.url("public")).await;
    call(&mut sub, r#"{"op":"subscribe","channel":"spaced"}"#).await;
    let before = srv.stats();
    for i in 0..N {
        call(
            &mut publisher,
            &format!(r#"{{"op":"publish","id":{i},"channel":"spaced","data":{i}}}"#),
        )
        .await;
        // Each message is received before the next is published: nothing to gather.
        assert_eq!(offset_of(&recv(&mut sub).await), i + 1);
    }
    let after = srv.stats();
    assert_eq!(after.frame_writes - before.frame_writes, N as usize);
    assert_eq!(after.frames_written - before.frames_written, N as usize);
}
