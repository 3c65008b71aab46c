//! Backlog and recovery invariants against a simple model, under random interleavings of
//! publishes, subscribes at every kind of start position, partial replays and reads.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::Arc;

use proptest::prelude::*;
use tslm_hub::{CatchUp, ChannelSettings, ConnId, Hub, Outbox, OutboxLimits};
use tslm_protocol::{ChannelName, Lost, Offset, Payload, Recovery, Start, Wire};

#[derive(Debug, Clone)]
enum Op {
    Publish(u8),
    Subscribe(usize, StartKind),
    CatchUp(usize, usize),
    Drain(usize),
    Unsubscribe(usize),
}

#[derive(Debug, Clone)]
enum StartKind {
    New,
    Oldest,
    Last(u64),
    /// Resume after `last - back` (clamped at 0).
    Back(u64),
    OtherEpoch,
}

fn op() -> impl Strategy<Value = Op> {
    let start = prop_oneof![
        Just(StartKind::New),
        Just(StartKind::Oldest),
        (1u64..30).prop_map(StartKind::Last),
        (0u64..40).prop_map(StartKind::Back),
        Just(StartKind::OtherEpoch),
    ];
    prop_oneof![
        3 => (1u8..6).prop_map(Op::Publish),
        2 => (0usize..4, start).prop_map(|(s, k)| Op::Subscribe(s, k)),
        3 => (0usize..4, 1usize..5).prop_map(|(s, b)| Op::CatchUp(s, b)),
        2 => (0usize..4).prop_map(Op::Drain),
        1 => (0usize..4).prop_map(Op::Unsubscribe),
    ]
}

/// What a subscriber saw: deliveries (offset, payload) and gap events.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Message(u64, String),
    Gap(u64, u64),
}

struct Subscriber {
    conn: ConnId,
    outbox: Arc<Outbox>,
    /// `from` of the current subscription, and what was seen since.
    current: Option<(u64, Vec<Seen>)>,
}

fn drain(ob: &Outbox, into: &mut Vec<Seen>) {
    let mut q: VecDeque<bytes::Bytes> = VecDeque::new();
    ob.take(&mut q);
    for b in q {
        let header = match b[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        let v: serde_json::Value = serde_json::from_slice(&b[header..]).unwrap();
        match v["event"].as_str().unwrap() {
            "message" => into.push(Seen::Message(
                v["offset"].as_u64().unwrap(),
                v["data"].as_str().unwrap().to_owned(),
            )),
            "gap" => into.push(Seen::Gap(
                v["from"].as_u64().unwrap(),
                v["to"].as_u64().unwrap(),
            )),
            other => panic!("unexpected event {other}"),
        }
    }
}

/// Every offset from `from` to `last` exactly once, in order, each either delivered with its own
/// payload or covered by a gap event; never a silent gap, never a duplicate.
fn check_stream(from: u64, last: u64, seen: &[Seen]) -> Result<(), TestCaseError> {
    let mut next = from;
    for s in seen {
        match s {
            Seen::Message(o, data) => {
                prop_assert_eq!(*o, next, "delivery out of sequence in {:?}", seen);
                prop_assert_eq!(data, &format!("m{o}"));
                next += 1;
            }
            Seen::Gap(a, b) => {
                prop_assert_eq!(*a, next, "gap out of sequence in {:?}", seen);
                prop_assert!(b >= a);
                next = b + 1;
            }
        }
    }
    prop_assert_eq!(next, last + 1, "stream ends short of the head: {:?}", seen);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn recovery_is_gap_free_and_exact(backlog in 0usize..20, ops in prop::collection::vec(op(), 1..80)) {
        let hub = Hub::new();
        let name = ChannelName::new("p").unwrap();
        let settings = ChannelSettings { backlog_messages: backlog, ..ChannelSettings::default() };
        let epoch = hub.create_with(&name, settings).unwrap().epoch;
        let mut last = 0u64;
        let mut subs: Vec<Subscriber> = (0..4)
            .map(|_| Subscriber {
                conn: hub.next_conn_id(),
                outbox: Arc::new(Outbox::new(OutboxLimits { max_bytes: 1 << 30, max_messages: 1 << 20 })),
                current: None,
            })
            .collect();
        for op in ops {
            match op {
                Op::Publish(n) => {
                    for _ in 0..n {
                        last += 1;
                        let o = hub.publish(&name, &Payload::text(&format!("m{last}"))).unwrap();
                        prop_assert_eq!(o, Offset(last));
                    }
                }
                Op::Subscribe(i, kind) => {
                    let s = &mut subs[i];
                    if s.current.is_some() {
                        continue;
                    }
                    let kept_from = (last + 1).saturating_sub(backlog as u64).max(1);
                    let start = match kind {
                        StartKind::New => Start::New,
                        StartKind::Oldest => Start::Oldest,
                        StartKind::Last(n) => Start::Last(n),
                        StartKind::Back(b) => Start::After { epoch, offset: Offset(last.saturating_sub(b)) },
                        StartKind::OtherEpoch => Start::After { epoch: tslm_protocol::Epoch(epoch.0 ^ 0xff), offset: Offset(last) },
                    };
                    let got = hub.subscribe(&name, s.conn, Wire::V1Ws, &s.outbox, start).unwrap();
                    let sub = got.subscription;
                    prop_assert!(!got.already);
                    prop_assert_eq!(sub.epoch, epoch);
                    prop_assert_eq!(sub.offset, Offset(last));
                    // The model of where the stream starts and what a resume recovers.
                    let (want_from, want_recovery) = match kind {
                        StartKind::New => (last + 1, None),
                        StartKind::Oldest => (kept_from, None),
                        StartKind::Last(n) => (kept_from.max((last + 1).saturating_sub(n)), None),
                        StartKind::Back(b) => {
                            let seen = last.saturating_sub(b);
                            if seen + 1 >= kept_from {
                                (seen + 1, Some(Recovery::Complete))
                            } else {
                                (kept_from, Some(Recovery::Incomplete(Lost::Expired { from: Offset(seen + 1), to: Offset(kept_from - 1) })))
                            }
                        }
                        StartKind::OtherEpoch => (kept_from, Some(Recovery::Incomplete(Lost::EpochChanged))),
                    };
                    prop_assert_eq!(sub.from, Offset(want_from));
                    prop_assert_eq!(sub.recovery, want_recovery);
                    prop_assert_eq!(got.catching_up, want_from <= last);
                    s.current = Some((want_from, Vec::new()));
                }
                Op::CatchUp(i, budget) => {
                    let s = &subs[i];
                    if s.current.is_some() {
                        let r = hub.catch_up(&name, s.conn, budget, 1 << 30);
                        prop_assert_ne!(r, CatchUp::Gone);
                    }
                }
                Op::Drain(i) => {
                    let s = &mut subs[i];
                    if let Some((_, seen)) = &mut s.current {
                        drain(&s.outbox, seen);
                    }
                }
                Op::Unsubscribe(i) => {
                    let s = &mut subs[i];
                    if let Some((from, mut seen)) = s.current.take() {
                        // What it saw so far is a prefix of a correct stream.
                        drain(&s.outbox, &mut seen);
                        let upto = seen.iter().map(|x| match x { Seen::Message(o, _) => *o, Seen::Gap(_, b) => *b }).max().unwrap_or(from - 1);
                        check_stream(from, upto, &seen)?;
                        prop_assert!(hub.unsubscribe(&name, s.conn));
                    }
                }
            }
        }
        for s in &mut subs {
            if let Some((from, seen)) = &mut s.current {
                while hub.catch_up(&name, s.conn, 2, 1 << 30) == CatchUp::More {}
                drain(&s.outbox, seen);
                check_stream(*from, last, seen)?;
            }
        }
        // History reads the model's backlog exactly.
        let h = hub.history(&name, Start::Oldest, 1000, usize::MAX).unwrap();
        let kept_from = (last + 1).saturating_sub(backlog as u64).max(1);
        let offsets: Vec<u64> = h.messages.iter().map(|m| m.0.0).collect();
        prop_assert_eq!(offsets, (kept_from..=last).collect::<Vec<_>>());
        prop_assert!(!h.more);
    }
}

#[derive(Debug, Clone)]
enum ReadOp {
    /// Publish to the replayed channel.
    Backlog(u8),
    /// Publish to the live channel (within what the queue holds between two reads).
    Live(u8),
    /// The session's pump: as much of the replay as the outbox leaves replays.
    Pump,
    /// The writer takes the queue.
    Read,
}

fn read_op() -> impl Strategy<Value = ReadOp> {
    prop_oneof![
        2 => (1u8..6).prop_map(ReadOp::Backlog),
        3 => (1u8..10).prop_map(ReadOp::Live),
        3 => Just(ReadOp::Pump),
        2 => Just(ReadOp::Read),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A subscriber that reads is never cut off by its own replay: whatever the replay queued,
    /// live messages up to the queue's limit between two reads never overflow it (the soak
    /// found 4000 closes when a replay had filled the queue), and both streams stay exact.
    #[test]
    fn a_replay_never_costs_a_reader_its_connection(
        limit in 1usize..12,
        backlog in 1usize..40,
        ops in prop::collection::vec(read_op(), 1..120),
    ) {
        let hub = Hub::new();
        let (p, q) = (ChannelName::new("p").unwrap(), ChannelName::new("q").unwrap());
        hub.create_with(&p, ChannelSettings { backlog_messages: backlog, ..ChannelSettings::default() }).unwrap();
        hub.create_with(&q, ChannelSettings::default()).unwrap();
        let mut last_p = 0u64;
        for _ in 0..backlog {
            last_p += 1;
            hub.publish(&p, &Payload::text(&format!("m{last_p}"))).unwrap();
        }
        let ob = Arc::new(Outbox::new(OutboxLimits { max_bytes: 1 << 30, max_messages: limit }));
        let conn = hub.next_conn_id();
        hub.subscribe(&q, conn, Wire::V1Ws, &ob, Start::New).unwrap();
        let from = hub.subscribe(&p, conn, Wire::V1Ws, &ob, Start::Oldest).unwrap().subscription.from.0;
        let (mut seen_p, mut seen_q) = (Vec::new(), Vec::new());
        let (mut last_q, mut live_since_read, mut p_live) = (0u64, 0usize, false);
        let read = |ob: &Outbox, seen_p: &mut Vec<Seen>, seen_q: &mut Vec<Seen>| {
            let mut all = Vec::new();
            drain(ob, &mut all);
            // `drain` does not say the channel: payloads of `q` are `q…`.
            for s in all {
                match &s {
                    Seen::Message(_, d) if d.starts_with('q') => seen_q.push(s),
                    _ => seen_p.push(s),
                }
            }
        };
        for op in ops {
            match op {
                ReadOp::Backlog(n) => {
                    for _ in 0..n {
                        // Once its replay is done, `p` is live traffic too.
                        if p_live {
                            if live_since_read == limit {
                                break;
                            }
                            live_since_read += 1;
                        }
                        last_p += 1;
                        hub.publish(&p, &Payload::text(&format!("m{last_p}"))).unwrap();
                    }
                }
                ReadOp::Live(n) => {
                    for _ in 0..n {
                        if live_since_read == limit {
                            break;
                        }
                        last_q += 1;
                        live_since_read += 1;
                        hub.publish(&q, &Payload::text(&format!("q{last_q}"))).unwrap();
                    }
                }
                ReadOp::Pump => {
                    let (frames, bytes) = ob.replay_room();
                    let r = hub.catch_up(&p, conn, frames, bytes);
                    prop_assert_ne!(r, CatchUp::Gone);
                    p_live = r == CatchUp::Done;
                }
                ReadOp::Read => {
                    read(&ob, &mut seen_p, &mut seen_q);
                    live_since_read = 0;
                }
            }
            prop_assert!(!ob.is_closed(), "a reader was cut off by its replay");
        }
        read(&ob, &mut seen_p, &mut seen_q);
        while hub.catch_up(&p, conn, limit, 1 << 30) == CatchUp::More {
            read(&ob, &mut seen_p, &mut seen_q);
        }
        read(&ob, &mut seen_p, &mut seen_q);
        check_stream(from, last_p, &seen_p)?;
        let want: Vec<Seen> = (1..=last_q).map(|o| Seen::Message(o, format!("q{o}"))).collect();
        prop_assert_eq!(seen_q, want);
    }
}
