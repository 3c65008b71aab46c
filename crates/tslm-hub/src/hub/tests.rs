use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use super::*;
use bytes::Bytes;
use tslm_protocol::{Lost, Recovery, Wire};

use crate::{CloseReason, OutboxLimits, SlowPolicy};

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn outbox(max_messages: usize) -> Arc<Outbox> {
    Arc::new(Outbox::new(OutboxLimits {
        max_bytes: 1 << 20,
        max_messages,
    }))
}

/// The JSON texts of the queued frames.
fn drain(ob: &Outbox) -> Vec<String> {
    let mut q: VecDeque<Bytes> = VecDeque::new();
    ob.take(&mut q);
    q.into_iter()
        .map(|b| {
            assert_eq!(b[0], 0x81, "a final, unmasked text frame");
            let header = match b[1] {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            String::from_utf8(b[header..].to_vec()).unwrap()
        })
        .collect()
}

/// Offsets of the deliveries queued, and `gap` events as negative ranges.
fn offsets(ob: &Outbox) -> Vec<String> {
    drain(ob)
        .iter()
        .map(|t| {
            let v: serde_json::Value = serde_json::from_str(t).unwrap();
            match v["event"].as_str().unwrap() {
                "message" => v["offset"].to_string(),
                "gap" => format!("gap {}-{}", v["from"], v["to"]),
                other => other.to_string(),
            }
        })
        .collect()
}

fn publish_n(hub: &Hub, c: &str, n: usize) {
    for i in 0..n {
        hub.publish(&ch(c), &Payload::text(&i.to_string())).unwrap();
    }
}

fn settings(backlog: usize) -> ChannelSettings {
    ChannelSettings {
        backlog_messages: backlog,
        ..ChannelSettings::default()
    }
}

fn catch_up_all(hub: &Hub, c: &str, conn: ConnId) {
    while hub.catch_up(&ch(c), conn, 3, 1 << 20) == CatchUp::More {}
}

#[test]
fn create_is_idempotent_and_publish_needs_a_channel() {
    let hub = Hub::new();
    let p = Payload::text("x");
    assert_eq!(hub.publish(&ch("a"), &p), Err(HubError::NotFound(ch("a"))));
    assert!(hub.create(&ch("a")));
    let epoch = hub.epoch(&ch("a")).unwrap();
    assert!(!hub.create(&ch("a")));
    assert_eq!(hub.epoch(&ch("a")).unwrap(), epoch);
    assert_eq!(hub.publish(&ch("a"), &p), Ok(Offset(1)));
    assert_eq!(hub.publish(&ch("a"), &p), Ok(Offset(2)));
    let stats = hub.stats();
    assert_eq!((stats.channels, stats.subscriptions), (1, 0));
    assert!(stats.backlog_bytes > 0);
}

#[test]
fn fans_out_per_dialect_once_and_in_order() {
    let hub = Hub::new();
    hub.create(&ch("news"));
    let (a, b) = (outbox(100), outbox(100));
    let (ca, cb) = (hub.next_conn_id(), hub.next_conn_id());
    let s = hub
        .subscribe(&ch("news"), ca, Wire::V1Ws, &a, Start::New)
        .unwrap();
    assert!(!s.already && !s.catching_up);
    assert_eq!(
        (s.subscription.offset, s.subscription.from),
        (Offset(0), Offset(1))
    );
    assert!(
        hub.subscribe(&ch("news"), ca, Wire::V1Ws, &a, Start::New)
            .unwrap()
            .already
    );
    hub.subscribe(&ch("news"), cb, Wire::LegacyWs, &b, Start::New)
        .unwrap();
    assert_eq!(hub.stats().subscriptions, 2);
    hub.publish(&ch("news"), &Payload::text("hello")).unwrap();
    hub.publish(
        &ch("news"),
        &Payload::from_json_bytes(Bytes::from_static(b"{\"k\":1}")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        drain(&a),
        [
            r#"{"event":"message","channel":"news","offset":1,"data":"hello"}"#,
            r#"{"event":"message","channel":"news","offset":2,"data":{"k":1}}"#
        ]
    );
    assert_eq!(
        drain(&b),
        [
            r#"{"ChannelMessage":["news",{"Text":"hello"}]}"#,
            r#"{"ChannelMessage":["news",{"Json":{"k":1}}]}"#
        ]
    );
    assert!(hub.unsubscribe(&ch("news"), ca));
    assert!(!hub.unsubscribe(&ch("news"), ca));
    assert_eq!(hub.stats().subscriptions, 1);
}

#[test]
fn a_slow_subscriber_is_dropped_and_others_keep_everything() {
    let hub = Hub::new();
    hub.create(&ch("c"));
    let (slow, fast) = (outbox(3), outbox(1000));
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &slow, Start::New)
        .unwrap();
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &fast, Start::New)
        .unwrap();
    publish_n(&hub, "c", 10);
    let mut q = VecDeque::new();
    assert_eq!(slow.take(&mut q), Some(CloseReason::SlowConsumer));
    assert_eq!(drain(&fast).len(), 10);
    assert_eq!(hub.stats().subscriptions, 1);
    assert_eq!(hub.subscriber_count(&ch("c")), Ok(1));
}

#[test]
fn concurrent_publishers_keep_offsets_dense_and_frames_ordered() {
    let hub = Hub::new();
    hub.create(&ch("c"));
    let sub = outbox(1_000_000);
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &sub, Start::New)
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                (0..2000)
                    .map(|_| hub.publish(&ch("c"), &Payload::text("m")).unwrap().0)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut offsets: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=8000).collect::<Vec<_>>());
    for (i, frame) in drain(&sub).iter().enumerate() {
        let want = format!(r#""offset":{},"#, i + 1);
        assert!(frame.contains(&want), "frame {i}: {frame}");
    }
}

#[test]
fn resume_inside_the_window_replays_then_joins_live_without_gap_or_duplicate() {
    let hub = Hub::new();
    hub.create_with(&ch("c"), settings(50)).unwrap();
    publish_n(&hub, "c", 20);
    let epoch = hub.epoch(&ch("c")).unwrap();
    let ob = outbox(1000);
    let conn = hub.next_conn_id();
    let s = hub
        .subscribe(
            &ch("c"),
            conn,
            Wire::V1Ws,
            &ob,
            Start::After {
                epoch,
                offset: Offset(12),
            },
        )
        .unwrap();
    assert!(s.catching_up);
    assert_eq!(s.subscription.recovery, Some(Recovery::Complete));
    assert_eq!(
        (s.subscription.offset, s.subscription.from),
        (Offset(20), Offset(13))
    );
    assert!(ob.queued_frames() == 0, "the replay waits for catch_up");
    // Publishes race the replay: each step of the replay is followed by two more messages.
    let mut steps = 0;
    while hub.catch_up(&ch("c"), conn, 3, 1 << 20) == CatchUp::More {
        publish_n(&hub, "c", 2);
        steps += 1;
        assert!(steps < 100);
    }
    publish_n(&hub, "c", 3);
    let got = offsets(&ob);
    let last = hub.last_offset(&ch("c")).unwrap().0;
    let want: Vec<String> = (13..=last).map(|o| o.to_string()).collect();
    assert_eq!(got, want);
}

#[test]
fn a_replay_never_makes_a_live_delivery_overflow_a_subscriber_that_reads() {
    // The churn soak's failure: a 64-frame queue filled to its limit by a replay, then one
    // live message of another `disconnect` channel arrived before the writer took the queue,
    // and the client was closed as a slow consumer although it read everything.
    let hub = Hub::new();
    hub.create_with(&ch("backlog"), settings(1000)).unwrap();
    hub.create(&ch("live"));
    publish_n(&hub, "backlog", 1000);
    let ob = outbox(64);
    let conn = hub.next_conn_id();
    hub.subscribe(&ch("live"), conn, Wire::V1Ws, &ob, Start::New)
        .unwrap();
    let s = hub
        .subscribe(&ch("backlog"), conn, Wire::V1Ws, &ob, Start::Oldest)
        .unwrap();
    assert!(s.catching_up);
    let (mut replayed, mut live) = (Vec::new(), Vec::new());
    let mut steps = 0;
    loop {
        // The session's pump: as much as the outbox leaves replays.
        let (frames, bytes) = ob.replay_room();
        let progress = hub.catch_up(&ch("backlog"), conn, frames, bytes);
        // Then, before the writer wakes, as many live messages as the queue holds: a client
        // that reads keeps up with this much without any replay.
        publish_n(&hub, "live", 64);
        assert!(!ob.is_closed(), "closed by its own replay at step {steps}");
        for t in drain(&ob) {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            let o = v["offset"].as_u64().unwrap();
            match v["channel"].as_str().unwrap() {
                "backlog" => replayed.push(o),
                _ => live.push(o),
            }
        }
        steps += 1;
        if progress == CatchUp::Done {
            break;
        }
        assert!(steps < 1000, "the replay makes progress");
    }
    assert_eq!(replayed, (1..=1000).collect::<Vec<_>>());
    assert_eq!(live, (1..=64 * steps).collect::<Vec<_>>());
}

#[test]
fn replay_frames_go_first_and_fill_half_the_queue() {
    let hub = Hub::new();
    hub.create_with(&ch("r"), settings(100)).unwrap();
    publish_n(&hub, "r", 100);
    let ob = outbox(10);
    let conn = hub.next_conn_id();
    hub.subscribe(&ch("r"), conn, Wire::V1Ws, &ob, Start::Oldest)
        .unwrap();
    assert_eq!(ob.replay_room().0, 5);
    assert_eq!(hub.catch_up(&ch("r"), conn, 100, 1 << 30), CatchUp::More);
    assert_eq!(ob.queued_frames(), 5, "a replay fills half of the queue");
    assert_eq!(ob.replay_room().0, 0);
    // A live frame queued meanwhile is written after the replayed ones.
    ob.push(Bytes::from_static(b"\x81\x02{}")).unwrap();
    let got = drain(&ob);
    assert_eq!(got.len(), 6);
    assert_eq!(got[5], "{}");
}

#[test]
fn the_channel_table_is_bounded() {
    let hub = Hub::with_limits(HubLimits {
        max_channels: 3,
        ..HubLimits::default()
    });
    for c in ["a", "b", "c"] {
        assert!(hub.create_with(&ch(c), settings(1)).unwrap().created);
    }
    assert_eq!(
        hub.create_with(&ch("d"), settings(1)),
        Err(HubError::TooManyChannels { max: 3 })
    );
    assert!(!hub.exists(&ch("d")));
    // An existing channel is still "created" idempotently at the limit.
    assert!(!hub.create_with(&ch("a"), settings(1)).unwrap().created);
    assert_eq!(hub.stats().channels, 3);
    hub.delete(&ch("b")).unwrap();
    assert!(hub.create_with(&ch("d"), settings(1)).unwrap().created);
    assert_eq!(hub.stats().channels, 3);
}

#[test]
fn the_msg_id_table_is_bounded_for_the_whole_hub() {
    let hub = Hub::with_limits(HubLimits {
        max_msg_ids: 5,
        ..HubLimits::default()
    });
    hub.create(&ch("a"));
    hub.create(&ch("b"));
    hub.create_with(
        &ch("small"),
        ChannelSettings {
            dedupe_max_ids: 1,
            ..settings(0)
        },
    )
    .unwrap();
    let p = Payload::text("x");
    let with = |id| PublishOptions {
        msg_id: Some(id),
        publisher: None,
    };
    for id in ["a1", "a2", "a3"] {
        hub.publish_with(&ch("a"), &p, with(id)).unwrap();
    }
    hub.publish_with(&ch("b"), &p, with("b1")).unwrap();
    hub.publish_with(&ch("small"), &p, with("s1")).unwrap();
    assert_eq!(hub.stats().msg_ids, 5);
    // Full: a new id is refused and publishes nothing.
    assert_eq!(
        hub.publish_with(&ch("a"), &p, with("a4")),
        Err(HubError::TooManyMsgIds { max: 5 })
    );
    assert_eq!(hub.last_offset(&ch("a")), Ok(Offset(3)));
    // Repeats are still recognised, and publishes without an id go through.
    assert!(
        hub.publish_with(&ch("a"), &p, with("a2"))
            .unwrap()
            .duplicate
    );
    assert_eq!(hub.publish(&ch("a"), &p), Ok(Offset(4)));
    // A channel at its own count forgets its own oldest id, as documented: no growth.
    hub.publish_with(&ch("small"), &p, with("s2")).unwrap();
    assert_eq!(hub.stats().msg_ids, 5);
    // Deleting a channel gives its ids back.
    hub.delete(&ch("a")).unwrap();
    assert_eq!(hub.stats().msg_ids, 2);
    hub.publish_with(&ch("b"), &p, with("b2")).unwrap();
    assert_eq!(hub.stats().msg_ids, 3);
}

#[test]
fn reply_routes_are_bounded_for_the_whole_hub() {
    let hub = Hub::with_limits(HubLimits {
        max_reply_routes: 4,
        ..HubLimits::default()
    });
    let rpc = |window| ChannelSettings {
        replies: true,
        reply_window: window,
        ..settings(0)
    };
    hub.create_with(&ch("a"), rpc(3)).unwrap();
    hub.create_with(&ch("b"), rpc(10)).unwrap();
    let publisher = outbox(100);
    let pc = hub.next_conn_id();
    let by = PublishOptions {
        msg_id: None,
        publisher: Some((pc, &publisher)),
    };
    let p = Payload::text("q");
    for _ in 0..5 {
        hub.publish_with(&ch("a"), &p, by).unwrap();
    }
    // `a` keeps its window of 3 (offsets 3..=5).
    assert_eq!(hub.stats().reply_routes, 3);
    hub.publish_with(&ch("b"), &p, by).unwrap();
    assert_eq!(hub.stats().reply_routes, 4);
    // The hub is full: `b` gives up its own oldest route for each new one.
    for _ in 0..3 {
        hub.publish_with(&ch("b"), &p, by).unwrap();
    }
    assert_eq!(hub.stats().reply_routes, 4);
    let body = Payload::text("a");
    assert!(matches!(
        hub.reply(&ch("b"), Offset(3), ConnId(9), &body),
        Err(ReplyError::NoSuchMessage { .. })
    ));
    hub.reply(&ch("b"), Offset(4), ConnId(9), &body).unwrap();
    hub.reply(&ch("a"), Offset(5), ConnId(9), &body).unwrap();
    hub.reply(&ch("a"), Offset(3), ConnId(9), &body).unwrap();
    // A channel with no route to give up keeps none, and stays consistent.
    hub.create_with(&ch("c"), rpc(10)).unwrap();
    hub.publish_with(&ch("c"), &p, by).unwrap();
    assert!(matches!(
        hub.reply(&ch("c"), Offset(1), ConnId(9), &body),
        Err(ReplyError::NoSuchMessage { .. })
    ));
    hub.delete(&ch("a")).unwrap();
    assert_eq!(hub.stats().reply_routes, 1);
    hub.publish_with(&ch("c"), &p, by).unwrap();
    hub.reply(&ch("c"), Offset(2), ConnId(9), &body).unwrap();
    assert!(matches!(
        hub.reply(&ch("c"), Offset(1), ConnId(9), &body),
        Err(ReplyError::NoSuchMessage { .. })
    ));
}

#[test]
fn subscriptions_are_bounded_for_the_whole_hub() {
    let hub = Hub::with_limits(HubLimits {
        max_subscriptions: 3,
        ..HubLimits::default()
    });
    hub.create(&ch("a"));
    hub.create(&ch("b"));
    let ob = outbox(10);
    let (c1, c2) = (hub.next_conn_id(), hub.next_conn_id());
    for (c, conn) in [("a", c1), ("b", c1), ("a", c2)] {
        hub.subscribe(&ch(c), conn, Wire::V1Ws, &ob, Start::New)
            .unwrap();
    }
    assert_eq!(
        hub.subscribe(&ch("b"), c2, Wire::V1Ws, &ob, Start::New),
        Err(HubError::TooManySubscriptions { max: 3 })
    );
    // Subscribing again is not a new subscription.
    assert!(
        hub.subscribe(&ch("a"), c2, Wire::V1Ws, &ob, Start::New)
            .unwrap()
            .already
    );
    assert!(hub.unsubscribe(&ch("a"), c1));
    hub.subscribe(&ch("b"), c2, Wire::V1Ws, &ob, Start::New)
        .unwrap();
    hub.delete(&ch("b")).unwrap();
    assert_eq!(hub.stats().subscriptions, 1);
}

#[test]
fn expired_msg_ids_leave_the_hub_count() {
    let hub = Hub::new();
    hub.create_with(
        &ch("c"),
        ChannelSettings {
            dedupe_window: Duration::from_millis(30),
            ..settings(0)
        },
    )
    .unwrap();
    let opts = PublishOptions {
        msg_id: Some("k"),
        publisher: None,
    };
    hub.publish_with(&ch("c"), &Payload::text("x"), opts)
        .unwrap();
    assert_eq!(hub.stats().msg_ids, 1);
    std::thread::sleep(Duration::from_millis(50));
    hub.sweep();
    assert_eq!(hub.stats().msg_ids, 0);
}

#[test]
fn the_sweep_gives_back_the_capacity_of_emptied_tables() {
    let hub = Hub::new();
    hub.create_with(
        &ch("c"),
        ChannelSettings {
            dedupe_window: Duration::from_millis(30),
            backlog_age: Duration::from_millis(30),
            ..settings(1000)
        },
    )
    .unwrap();
    for i in 0..1000 {
        let opts = PublishOptions {
            msg_id: Some(&i.to_string()),
            publisher: None,
        };
        hub.publish_with(&ch("c"), &Payload::text("x"), opts)
            .unwrap();
    }
    let c = hub.channel(&ch("c")).unwrap();
    assert!(c.lock().log.dedupe.len_and_capacities().1 >= 1000);
    assert!(c.lock().log.backlog.capacity() >= 1000);
    std::thread::sleep(Duration::from_millis(50));
    hub.sweep();
    let st = c.lock();
    let (ids, ids_capacity, order_capacity) = st.log.dedupe.len_and_capacities();
    assert_eq!((ids, st.log.backlog.len()), (0, 0));
    assert!(ids_capacity < 64, "{ids_capacity}");
    assert!(order_capacity < 64);
    assert!(st.log.backlog.capacity() < 64);
}

#[test]
fn history_replies_are_bounded_in_bytes_and_page_through_anything() {
    let hub = Hub::new();
    hub.create_with(&ch("c"), settings(100)).unwrap();
    let data = Payload::text(&"x".repeat(100)); // 102 bytes of JSON
    for _ in 0..10 {
        hub.publish(&ch("c"), &data).unwrap();
    }
    let entry = 102 + HISTORY_ENTRY_BYTES;
    let h = hub
        .history(&ch("c"), Start::Oldest, 1000, 3 * entry)
        .unwrap();
    assert_eq!(h.messages.len(), 3);
    assert!(h.more);
    let h = hub
        .history(&ch("c"), Start::Oldest, 1000, 3 * entry - 1)
        .unwrap();
    assert_eq!(h.messages.len(), 2);
    // Even a budget smaller than one message returns one, so a reader can page on.
    let mut next = Start::Oldest;
    let epoch = hub.epoch(&ch("c")).unwrap();
    let mut read = Vec::new();
    for _ in 0..20 {
        let h = hub.history(&ch("c"), next, 1000, 1).unwrap();
        assert_eq!(h.messages.len(), 1);
        let last = h.messages[0].0;
        read.push(last.0);
        if !h.more {
            break;
        }
        next = Start::After {
            epoch,
            offset: last,
        };
    }
    assert_eq!(read, (1..=10).collect::<Vec<_>>());
}

#[test]
fn channel_lists_are_bounded_in_bytes() {
    let hub = Hub::new();
    for i in 0..50 {
        hub.create(&ch(&format!("c{i:02}")));
    }
    let (page, more) = hub.list(None, None, 1000, 10 * (3 + CHANNEL_INFO_BYTES));
    assert_eq!(page.len(), 10);
    assert!(more);
    assert_eq!(page[9].channel, ch("c09"));
    let (page, more) = hub.list(None, Some(&ch("c45")), 1000, 0);
    assert_eq!(page.len(), 1, "at least one");
    assert_eq!(page[0].channel, ch("c46"));
    assert!(more);
    let (page, more) = hub.list(None, Some(&ch("c45")), 4, usize::MAX);
    assert_eq!(page.len(), 4);
    assert!(!more);
    let (page, more) = hub.list(None, Some(&ch("c45")), 3, usize::MAX);
    assert_eq!(page.len(), 3);
    assert!(more);
}

#[test]
fn resume_past_the_window_or_across_epochs_says_what_was_lost() {
    let hub = Hub::new();
    hub.create_with(&ch("c"), settings(5)).unwrap();
    publish_n(&hub, "c", 20);
    let epoch = hub.epoch(&ch("c")).unwrap();
    let conn = hub.next_conn_id();
    let ob = outbox(1000);
    let after = |offset| Start::After {
        epoch,
        offset: Offset(offset),
    };
    let s = hub
        .subscribe(&ch("c"), conn, Wire::V1Ws, &ob, after(3))
        .unwrap();
    assert_eq!(
        s.subscription.recovery,
        Some(Recovery::Incomplete(Lost::Expired {
            from: Offset(4),
            to: Offset(15)
        }))
    );
    assert_eq!(s.subscription.from, Offset(16));
    catch_up_all(&hub, "c", conn);
    assert_eq!(offsets(&ob), ["16", "17", "18", "19", "20"]);
    hub.unsubscribe(&ch("c"), conn);

    let s = hub
        .subscribe(
            &ch("c"),
            conn,
            Wire::V1Ws,
            &ob,
            Start::After {
                epoch: Epoch(epoch.0 ^ 1),
                offset: Offset(19),
            },
        )
        .unwrap();
    assert_eq!(
        s.subscription.recovery,
        Some(Recovery::Incomplete(Lost::EpochChanged))
    );
    assert_eq!(s.subscription.from, Offset(16));
    hub.unsubscribe(&ch("c"), conn);

    assert!(matches!(
        hub.subscribe(&ch("c"), conn, Wire::V1Ws, &ob, after(21)),
        Err(HubError::FutureOffset { .. })
    ));
    let s = hub
        .subscribe(&ch("c"), conn, Wire::V1Ws, &ob, after(20))
        .unwrap();
    assert_eq!(s.subscription.recovery, Some(Recovery::Complete));
    assert!(!s.catching_up);
}

#[test]
fn last_n_and_oldest() {
    let hub = Hub::new();
    hub.create_with(&ch("c"), settings(10)).unwrap();
    publish_n(&hub, "c", 25);
    let ob = outbox(1000);
    let conn = hub.next_conn_id();
    let s = hub
        .subscribe(&ch("c"), conn, Wire::V1Ws, &ob, Start::Last(3))
        .unwrap();
    assert_eq!(s.subscription.from, Offset(23));
    catch_up_all(&hub, "c", conn);
    assert_eq!(offsets(&ob), ["23", "24", "25"]);
    hub.unsubscribe(&ch("c"), conn);
    let s = hub
        .subscribe(&ch("c"), conn, Wire::V1Ws, &ob, Start::Last(1000))
        .unwrap();
    assert_eq!(s.subscription.from, Offset(16));
    hub.unsubscribe(&ch("c"), conn);
    let h = hub.history(&ch("c"), Start::Oldest, 4, usize::MAX).unwrap();
    assert_eq!(
        h.messages.iter().map(|m| m.0.0).collect::<Vec<_>>(),
        [16, 17, 18, 19]
    );
    assert!(h.more);
    assert_eq!(&h.messages[0].1.json()[..], b"\"15\"");
    let h = hub.history(&ch("c"), Start::New, 4, usize::MAX).unwrap();
    assert!(h.messages.is_empty() && !h.more);
    assert_eq!(h.subscription.from, Offset(26));
}

#[test]
fn the_memory_bound_holds_and_keeps_the_newest() {
    let limit = 20_000;
    let hub = Hub::with_limits(HubLimits {
        backlog_memory_bytes: limit,
        ..HubLimits::default()
    });
    for c in ["a", "b", "c"] {
        hub.create_with(&ch(c), settings(100_000)).unwrap();
    }
    let data = Payload::text(&"x".repeat(200));
    for _ in 0..2000 {
        for c in ["a", "b", "c"] {
            hub.publish(&ch(c), &data).unwrap();
            assert!(hub.stats().backlog_bytes <= limit);
        }
    }
    let h = hub
        .history(&ch("c"), Start::Oldest, 1000, usize::MAX)
        .unwrap();
    assert!(!h.messages.is_empty());
    let last = h.messages.last().unwrap().0;
    assert_eq!(last, Offset(2000), "the newest message is kept");
    let total: usize = hub
        .list(None, None, 10, usize::MAX)
        .0
        .iter()
        .map(|i| i.backlog_bytes)
        .sum();
    assert_eq!(total, hub.stats().backlog_bytes);
    for c in ["a", "b", "c"] {
        hub.delete(&ch(c)).unwrap();
    }
    assert_eq!(hub.stats().backlog_bytes, 0, "deletion frees the backlog");
}

#[test]
fn messages_expire_with_age() {
    let hub = Hub::new();
    hub.create_with(
        &ch("c"),
        ChannelSettings {
            backlog_age: Duration::from_millis(50),
            ..settings(10)
        },
    )
    .unwrap();
    publish_n(&hub, "c", 3);
    std::thread::sleep(Duration::from_millis(80));
    hub.sweep();
    assert_eq!(hub.stats().backlog_bytes, 0);
    let h = hub
        .history(&ch("c"), Start::Oldest, 10, usize::MAX)
        .unwrap();
    assert!(h.messages.is_empty());
    assert_eq!(h.subscription.from, Offset(4));
}

#[test]
fn drop_oldest_replaces_queued_messages_with_a_gap_event() {
    let hub = Hub::new();
    hub.create_with(
        &ch("c"),
        ChannelSettings {
            slow_policy: SlowPolicy::DropOldest,
            ..settings(100)
        },
    )
    .unwrap();
    let (slow, fast) = (outbox(4), outbox(1000));
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &slow, Start::New)
        .unwrap();
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &fast, Start::New)
        .unwrap();
    publish_n(&hub, "c", 10);
    // 1-4 queued; 5 overflows: 1-4 become a gap, 5 follows; 8 overflows again: the gap grows.
    assert_eq!(offsets(&slow), ["gap 1-7", "8", "9", "10"]);
    assert_eq!(offsets(&fast).len(), 10);
    publish_n(&hub, "c", 1);
    assert_eq!(offsets(&slow), ["11"]);
    assert_eq!(hub.subscriber_count(&ch("c")), Ok(2));
}

#[test]
fn latest_keeps_only_the_newest_queued_message() {
    let hub = Hub::new();
    hub.create_with(
        &ch("c"),
        ChannelSettings {
            slow_policy: SlowPolicy::Latest,
            ..settings(0)
        },
    )
    .unwrap();
    let slow = outbox(2);
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &slow, Start::New)
        .unwrap();
    publish_n(&hub, "c", 10);
    // Each overflow leaves only the newest message of the subscription queued.
    assert_eq!(offsets(&slow), ["9", "10"]);
}

#[test]
fn msg_ids_deduplicate_within_the_window() {
    let hub = Hub::new();
    hub.create(&ch("c"));
    let ob = outbox(100);
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &ob, Start::New)
        .unwrap();
    let p = Payload::text("x");
    let with = |id| PublishOptions {
        msg_id: Some(id),
        publisher: None,
    };
    let a = hub.publish_with(&ch("c"), &p, with("k1")).unwrap();
    let b = hub.publish_with(&ch("c"), &p, with("k2")).unwrap();
    let again = hub.publish_with(&ch("c"), &p, with("k1")).unwrap();
    assert_eq!((a.offset, a.duplicate), (Offset(1), false));
    assert_eq!((b.offset, b.duplicate), (Offset(2), false));
    assert_eq!((again.offset, again.duplicate), (Offset(1), true));
    assert_eq!(offsets(&ob), ["1", "2"], "a duplicate is not delivered");
}

#[test]
fn replies_reach_the_publisher_only_where_allowed() {
    let hub = Hub::new();
    hub.create_with(
        &ch("rpc"),
        ChannelSettings {
            replies: true,
            ..settings(10)
        },
    )
    .unwrap();
    hub.create(&ch("plain"));
    let (publisher, other) = (outbox(100), outbox(100));
    let (pc, oc) = (hub.next_conn_id(), hub.next_conn_id());
    let by = |conn, ob| PublishOptions {
        msg_id: None,
        publisher: Some((conn, ob)),
    };
    let p = Payload::text("q");
    hub.publish_with(&ch("rpc"), &p, by(pc, &publisher))
        .unwrap();
    hub.publish_with(&ch("rpc"), &p, by(oc, &other)).unwrap();
    hub.publish(&ch("rpc"), &p).unwrap();
    let body = Payload::from_json_bytes(Bytes::from_static(b"{\"a\":1}")).unwrap();
    let replier = ConnId(77);
    hub.reply(&ch("rpc"), Offset(1), replier, &body).unwrap();
    assert_eq!(
        drain(&publisher),
        [r#"{"event":"reply","channel":"rpc","offset":1,"from":"77","data":{"a":1}}"#]
    );
    assert!(drain(&other).is_empty());
    assert!(matches!(
        hub.reply(&ch("rpc"), Offset(3), replier, &body),
        Err(ReplyError::Gone { .. })
    ));
    assert!(matches!(
        hub.reply(&ch("rpc"), Offset(9), replier, &body),
        Err(ReplyError::NoSuchMessage { .. })
    ));
    hub.publish(&ch("plain"), &p).unwrap();
    assert!(matches!(
        hub.reply(&ch("plain"), Offset(1), replier, &body),
        Err(ReplyError::NotAllowed(_))
    ));
    hub.forget_publisher(pc);
    assert!(matches!(
        hub.reply(&ch("rpc"), Offset(1), replier, &body),
        Err(ReplyError::Gone { .. })
    ));
}

#[test]
fn a_reply_to_a_publisher_that_is_not_keeping_up_is_refused_without_closing_it() {
    let hub = Hub::new();
    hub.create_with(
        &ch("rpc"),
        ChannelSettings {
            replies: true,
            ..settings(10)
        },
    )
    .unwrap();
    let publisher = outbox(2);
    let pc = hub.next_conn_id();
    let by = PublishOptions {
        msg_id: None,
        publisher: Some((pc, &publisher)),
    };
    hub.publish_with(&ch("rpc"), &Payload::text("q"), by)
        .unwrap();
    let body = Payload::text("a");
    hub.reply(&ch("rpc"), Offset(1), ConnId(9), &body).unwrap();
    hub.reply(&ch("rpc"), Offset(1), ConnId(9), &body).unwrap();
    assert!(matches!(
        hub.reply(&ch("rpc"), Offset(1), ConnId(9), &body),
        Err(ReplyError::Busy { .. })
    ));
    assert!(
        !publisher.is_closed(),
        "replies never cost the publisher its connection"
    );
    assert_eq!(drain(&publisher).len(), 2);
    hub.reply(&ch("rpc"), Offset(1), ConnId(9), &body).unwrap();
}

#[test]
fn deletion_notifies_subscribers_and_a_new_channel_gets_a_new_epoch() {
    let hub = Hub::new();
    hub.create(&ch("c"));
    let epoch = hub.epoch(&ch("c")).unwrap();
    let (a, b) = (outbox(100), outbox(100));
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &a, Start::New)
        .unwrap();
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::LegacyWs, &b, Start::New)
        .unwrap();
    hub.delete(&ch("c")).unwrap();
    assert_eq!(
        drain(&a),
        [r#"{"event":"closed","channel":"c","reason":"deleted"}"#]
    );
    assert_eq!(drain(&b), [r#"{"Error":"Channel not found: c"}"#]);
    assert_eq!(hub.stats().subscriptions, 0);
    assert_eq!(hub.delete(&ch("c")), Err(HubError::NotFound(ch("c"))));
    hub.create(&ch("c"));
    assert_ne!(hub.epoch(&ch("c")).unwrap(), epoch);
    assert_eq!(hub.publish(&ch("c"), &Payload::text("x")), Ok(Offset(1)));
}

#[test]
fn lists_channels_in_order_with_backlog_state() {
    let hub = Hub::new();
    for c in ["b", "a.1", "a.2", "c"] {
        hub.create(&ch(c));
    }
    publish_n(&hub, "a.2", 3);
    let (all, more) = hub.list(None, None, 10, usize::MAX);
    assert!(!more);
    assert_eq!(
        all.iter().map(|i| i.channel.as_str()).collect::<Vec<_>>(),
        ["a.1", "a.2", "b", "c"]
    );
    assert_eq!(all[1].offset, Offset(3));
    assert_eq!(all[1].backlog_messages, 3);
    assert_eq!(all[1].first_offset, Offset(1));
    let (page, more) = hub.list(Some("a."), None, 1, usize::MAX);
    assert!(more);
    assert_eq!(page[0].channel, ch("a.1"));
    let (page, more) = hub.list(Some("a."), Some(&ch("a.1")), 1, usize::MAX);
    assert!(!more);
    assert_eq!(page[0].channel, ch("a.2"));
}

#[test]
fn max_subscribers_is_enforced() {
    let hub = Hub::new();
    hub.create_with(
        &ch("c"),
        ChannelSettings {
            max_subscribers: Some(1),
            ..ChannelSettings::default()
        },
    )
    .unwrap();
    let ob = outbox(10);
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &ob, Start::New)
        .unwrap();
    assert!(matches!(
        hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &ob, Start::New),
        Err(HubError::Full { max: 1, .. })
    ));
}

#[test]
fn legacy_subscribers_get_the_configured_replay() {
    let hub = Hub::new();
    hub.create_with(&ch("c"), settings(10)).unwrap();
    publish_n(&hub, "c", 5);
    let ob = outbox(100);
    let conn = hub.next_conn_id();
    let s = hub
        .subscribe(&ch("c"), conn, Wire::LegacyWs, &ob, Start::Last(2))
        .unwrap();
    assert!(s.catching_up);
    catch_up_all(&hub, "c", conn);
    publish_n(&hub, "c", 1);
    assert_eq!(
        drain(&ob),
        [
            r#"{"ChannelMessage":["c",{"Text":"3"}]}"#,
            r#"{"ChannelMessage":["c",{"Text":"4"}]}"#,
            r#"{"ChannelMessage":["c",{"Text":"0"}]}"#
        ]
    );
}

/// Messages 1..=n of a mirror's store, as the follower takes them.
fn mirror_entries(offsets: impl IntoIterator<Item = u64>) -> Vec<MirrorEntry> {
    offsets
        .into_iter()
        .map(|o| MirrorEntry {
            offset: Offset(o),
            data: Payload::text(&format!("m{o}")),
            age: Duration::ZERO,
            route: None,
        })
        .collect()
}

/// A waker that, when woken, takes everything queued in `ob` at that moment (as a session
/// woken at once, on another thread, would) and records how many frames it found.
struct Taker {
    ob: Arc<Outbox>,
    takes: std::sync::Mutex<Vec<usize>>,
}

impl std::task::Wake for Taker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut q = VecDeque::new();
        self.ob.take(&mut q);
        self.takes.lock().unwrap().push(q.len());
    }
}

#[test]
fn a_mirror_batch_wakes_each_subscriber_once_with_every_message_in_order() {
    let hub = Hub::new();
    let name = ch("m");
    let epoch = Epoch(7);
    assert!(
        hub.mirror_open(&name, settings(100), epoch, Offset(0), Vec::new())
            .unwrap()
    );
    let ob = outbox(100);
    hub.subscribe(&name, hub.next_conn_id(), Wire::V1Ws, &ob, Start::New)
        .unwrap();
    // The subscriber's writer waits: its wake-up takes what is queued right then.
    let taker = Arc::new(Taker {
        ob: Arc::clone(&ob),
        takes: std::sync::Mutex::new(Vec::new()),
    });
    let waker = std::task::Waker::from(Arc::clone(&taker));
    let mut ready = Box::pin(ob.ready());
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(ready.as_mut().poll(&mut cx).is_pending());

    let batch = mirror_entries(1..=5);
    assert_eq!(
        hub.mirror_append_batch(&name, epoch, &batch),
        (5, Appended::Applied)
    );
    // One wake-up, which found the five messages (one by one, it would have found only the
    // first and the others would wait for the next wake-up).
    assert_eq!(*taker.takes.lock().unwrap(), vec![5]);
    assert_eq!(hub.mirror_head(&name), Some((epoch, Offset(5))));
    let h = hub.history(&name, Start::Oldest, 100, 1 << 20).unwrap();
    let kept: Vec<u64> = h.messages.iter().map(|(o, _)| o.0).collect();
    assert_eq!(kept, vec![1, 2, 3, 4, 5]);
}

#[test]
fn a_mirror_batch_ignores_stale_messages_and_stops_at_a_hole() {
    let hub = Hub::new();
    let name = ch("m");
    let epoch = Epoch(7);
    assert!(
        hub.mirror_open(&name, settings(100), epoch, Offset(0), Vec::new())
            .unwrap()
    );
    let ob = outbox(100);
    hub.subscribe(&name, hub.next_conn_id(), Wire::V1Ws, &ob, Start::New)
        .unwrap();
    // 1, 2 taken; 4 is past a hole: it and what follows wait for the heal.
    assert_eq!(
        hub.mirror_append_batch(&name, epoch, &mirror_entries([1, 2, 4, 5])),
        (
            2,
            Appended::Ahead {
                expected: Offset(3)
            }
        )
    );
    assert_eq!(offsets(&ob), ["1", "2"]);
    // The heal's read: 2 is stale, 3..=5 follow.
    assert_eq!(
        hub.mirror_append_batch(&name, epoch, &mirror_entries(2..=5)),
        (3, Appended::Applied)
    );
    assert_eq!(offsets(&ob), ["3", "4", "5"]);
    // All stale: nothing happens.
    assert_eq!(
        hub.mirror_append_batch(&name, epoch, &mirror_entries(1..=5)),
        (0, Appended::Stale)
    );
    assert!(offsets(&ob).is_empty());
    // A hole first: nothing taken.
    assert_eq!(
        hub.mirror_append_batch(&name, epoch, &mirror_entries([7, 8])),
        (
            0,
            Appended::Ahead {
                expected: Offset(6)
            }
        )
    );
    // Another epoch, another channel: refused whole.
    assert_eq!(
        hub.mirror_append_batch(&name, Epoch(8), &mirror_entries([6])),
        (0, Appended::OtherEpoch { mirror: epoch })
    );
    assert_eq!(
        hub.mirror_append_batch(&ch("none"), epoch, &mirror_entries([1])),
        (0, Appended::Missing)
    );
    assert_eq!(hub.mirror_head(&name), Some((epoch, Offset(5))));
    // The same messages one at a time give the same result.
    assert_eq!(
        hub.mirror_append(&name, epoch, &mirror_entries([6])[0]),
        Appended::Applied
    );
    assert_eq!(offsets(&ob), ["6"]);
}

#[test]
fn a_mirror_batch_applies_the_slow_policy_frame_by_frame() {
    let hub = Hub::new();
    let name = ch("m");
    let epoch = Epoch(7);
    let lossy = ChannelSettings {
        slow_policy: SlowPolicy::DropOldest,
        ..settings(100)
    };
    assert!(
        hub.mirror_open(&name, lossy, epoch, Offset(0), Vec::new())
            .unwrap()
    );
    let slow = outbox(3);
    let fast = outbox(100);
    hub.subscribe(&name, hub.next_conn_id(), Wire::V1Ws, &slow, Start::New)
        .unwrap();
    hub.subscribe(&name, hub.next_conn_id(), Wire::V1Ws, &fast, Start::New)
        .unwrap();
    assert_eq!(
        hub.mirror_append_batch(&name, epoch, &mirror_entries(1..=5)),
        (5, Appended::Applied)
    );
    // As five appends one by one: 4 did not fit, 1..=3 became a gap, 4 and 5 followed it.
    assert_eq!(offsets(&slow), ["gap 1-3", "4", "5"]);
    assert_eq!(offsets(&fast), ["1", "2", "3", "4", "5"]);
    assert!(!slow.is_closed());
}
