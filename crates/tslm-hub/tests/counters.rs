//! The hub's event counters ([`tslm_hub::HubStats`]), each counted where it happens.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tslm_hub::{CatchUp, ChannelSettings, Hub, Outbox, OutboxLimits, PublishOptions, SlowPolicy};
use tslm_protocol::{ChannelName, Epoch, Offset, Payload, Start, Wire};

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn outbox(max_messages: usize) -> Arc<Outbox> {
    Arc::new(Outbox::new(OutboxLimits {
        max_bytes: 1 << 20,
        max_messages,
    }))
}

fn publish_n(hub: &Hub, c: &str, n: usize) {
    for i in 0..n {
        hub.publish(&ch(c), &Payload::text(&i.to_string())).unwrap();
    }
}

fn with_policy(hub: &Hub, c: &str, slow_policy: SlowPolicy, backlog_messages: usize) {
    hub.create_with(
        &ch(c),
        ChannelSettings {
            slow_policy,
            backlog_messages,
            ..ChannelSettings::default()
        },
    )
    .unwrap();
}

#[test]
fn publishes_and_live_deliveries_are_counted() {
    let hub = Hub::new();
    assert!(hub.create(&ch("c")));
    let (a, b) = (outbox(100), outbox(100));
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &a, Start::New)
        .unwrap();
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::LegacyWs, &b, Start::New)
        .unwrap();
    publish_n(&hub, "c", 3);
    let s = hub.stats();
    assert_eq!((s.publishes, s.deliveries), (3, 6));
}

#[test]
fn drop_oldest_drops_are_counted() {
    let hub = Hub::new();
    with_policy(&hub, "c", SlowPolicy::DropOldest, 100);
    let (slow, fast) = (outbox(4), outbox(1000));
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &slow, Start::New)
        .unwrap();
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &fast, Start::New)
        .unwrap();
    publish_n(&hub, "c", 10);
    // 1-4 queued; 5 overflows: 1-4 dropped (a gap), 5 follows; 6, 7 queued; 8 overflows: 5-7
    // dropped (the gap grows), 8 follows; 9, 10 queued.
    let s = hub.stats();
    assert_eq!((s.dropped_oldest, s.dropped_latest), (7, 0));
    assert_eq!(
        s.deliveries, 20,
        "every message was queued for both at first"
    );
}

#[test]
fn a_message_that_becomes_a_gap_is_a_drop_not_a_delivery() {
    let hub = Hub::new();
    with_policy(&hub, "o", SlowPolicy::Disconnect, 0);
    with_policy(&hub, "c", SlowPolicy::DropOldest, 0);
    let slow = outbox(1);
    let conn = hub.next_conn_id();
    for c in ["o", "c"] {
        hub.subscribe(&ch(c), conn, Wire::V1Ws, &slow, Start::New)
            .unwrap();
    }
    publish_n(&hub, "o", 1);
    publish_n(&hub, "c", 1);
    // The queue is full of another channel's message: this one is announced as a gap.
    let s = hub.stats();
    assert_eq!((s.deliveries, s.dropped_oldest), (1, 1));
}

#[test]
fn latest_drops_are_counted() {
    let hub = Hub::new();
    with_policy(&hub, "c", SlowPolicy::Latest, 0);
    let slow = outbox(2);
    hub.subscribe(&ch("c"), hub.next_conn_id(), Wire::V1Ws, &slow, Start::New)
        .unwrap();
    publish_n(&hub, "c", 10);
    // Each overflow (at 3, 5, 7 and 9) replaces the two queued messages.
    let s = hub.stats();
    assert_eq!((s.dropped_latest, s.dropped_oldest), (8, 0));
}

#[test]
fn deduplication_hits_are_counted() {
    let hub = Hub::new();
    assert!(hub.create(&ch("c")));
    let opts = PublishOptions {
        msg_id: Some("m-1"),
        publisher: None,
    };
    let p = Payload::text("x");
    assert!(!hub.publish_with(&ch("c"), &p, opts).unwrap().duplicate);
    assert!(hub.publish_with(&ch("c"), &p, opts).unwrap().duplicate);
    let s = hub.stats();
    assert_eq!((s.publishes, s.dedupe_hits), (1, 1));
}

#[test]
fn resume_outcomes_and_replayed_deliveries_are_counted() {
    let hub = Hub::new();
    with_policy(&hub, "c", SlowPolicy::Disconnect, 2);
    publish_n(&hub, "c", 5);
    let epoch = hub.epoch(&ch("c")).unwrap();
    let after = |epoch, offset| Start::After {
        epoch,
        offset: Offset(offset),
    };
    let ob = outbox(100);
    let conn = hub.next_conn_id();
    // 4 and 5 are kept: a resume after 3 recovers them.
    let s = hub
        .subscribe(&ch("c"), conn, Wire::V1Ws, &ob, after(epoch, 3))
        .unwrap();
    assert!(s.catching_up);
    assert_eq!(hub.catch_up(&ch("c"), conn, 10, 1 << 20), CatchUp::Done);
    for (start, _) in [
        (after(epoch, 1), "expired: 2 and 3 are gone"),
        (after(Epoch(epoch.0 ^ 1), 1), "another epoch"),
        (Start::New, "not a resume"),
    ] {
        let conn = hub.next_conn_id();
        hub.subscribe(&ch("c"), conn, Wire::V1Ws, &outbox(100), start)
            .unwrap();
    }
    let s = hub.stats();
    assert_eq!(
        (
            s.resumes_recovered,
            s.resumes_expired,
            s.resumes_epoch_changed
        ),
        (1, 1, 1)
    );
    assert_eq!(s.deliveries, 2, "the two replayed messages");
}
