use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use dashmap::DashMap;
use tslm_protocol::{ChannelName, Dialect, Offset, Payload, WsFrame, legacy, v1};

use crate::outbox::Outbox;

/// A connection's id, unique for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Errors of hub operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("channel not found: {0}")]
    NotFound(ChannelName),
}

/// The outcome of a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The connection was already subscribed (subscribing is idempotent per connection).
    pub already: bool,
}

/// Counters for operations and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubStats {
    pub channels: usize,
    pub subscriptions: usize,
}

/// The channel registry and fan-out engine. Cloning is cheap and shares the hub.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    channels: DashMap<ChannelName, Arc<Channel>>,
    subscriptions: AtomicUsize,
    next_conn: AtomicU64,
}

struct Channel {
    name: ChannelName,
    state: Mutex<State>,
    /// Mirrors of `State` read without the lock, to encode frames before taking it.
    last_offset: AtomicU64,
    v1_subs: AtomicUsize,
    legacy_subs: AtomicUsize,
}

#[derive(Default)]
struct State {
    last_offset: u64,
    v1: Vec<Sub>,
    legacy: Vec<Sub>,
}

struct Sub {
    conn: ConnId,
    outbox: Arc<Outbox>,
}

impl Channel {
    fn new(name: ChannelName) -> Self {
        Self {
            name,
            state: Mutex::new(State::default()),
            last_offset: AtomicU64::new(0),
            v1_subs: AtomicUsize::new(0),
            legacy_subs: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of `State` is a single push/remove/increment, so a poisoned lock still
        // holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_counts(&self, st: &State) {
        self.v1_subs.store(st.v1.len(), Ordering::Relaxed);
        self.legacy_subs.store(st.legacy.len(), Ordering::Relaxed);
    }
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn channel(&self, name: &ChannelName) -> Result<Arc<Channel>, HubError> {
        self.inner
            .channels
            .get(name)
            .map(|c| Arc::clone(c.value()))
            .ok_or_else(|| HubError::NotFound(name.clone()))
    }

    /// Creates `name`; returns `false` when it already existed (creation is idempotent).
    pub fn create(&self, name: &ChannelName) -> bool {
        let mut created = false;
        self.inner.channels.entry(name.clone()).or_insert_with(|| {
            created = true;
            Arc::new(Channel::new(name.clone()))
        });
        created
    }

    pub fn exists(&self, name: &ChannelName) -> bool {
        self.inner.channels.contains_key(name)
    }

    /// Subscribes connection `conn` to `name`: from now on every message published to the channel
    /// is pushed into `outbox`, encoded for `dialect` as a complete WebSocket text frame.
    pub fn subscribe(
        &self,
        name: &ChannelName,
        conn: ConnId,
        dialect: Dialect,
        outbox: &Arc<Outbox>,
    ) -> Result<Subscribed, HubError> {
        let ch = self.channel(name)?;
        let mut st = ch.lock();
        if st.v1.iter().chain(&st.legacy).any(|s| s.conn == conn) {
            return Ok(Subscribed { already: true });
        }
        let sub = Sub {
            conn,
            outbox: Arc::clone(outbox),
        };
        match dialect {
            Dialect::V1 => st.v1.push(sub),
            Dialect::Legacy => st.legacy.push(sub),
        }
        ch.publish_counts(&st);
        drop(st);
        self.inner.subscriptions.fetch_add(1, Ordering::Relaxed);
        Ok(Subscribed { already: false })
    }

    /// Removes `conn`'s subscription to `name`; returns whether there was one.
    pub fn unsubscribe(&self, name: &ChannelName, conn: ConnId) -> bool {
        let Ok(ch) = self.channel(name) else {
            return false;
        };
        let mut guard = ch.lock();
        let st = &mut *guard;
        let mut removed = false;
        for list in [&mut st.v1, &mut st.legacy] {
            if let Some(i) = list.iter().position(|s| s.conn == conn) {
                list.swap_remove(i);
                removed = true;
            }
        }
        ch.publish_counts(st);
        drop(guard);
        if removed {
            self.inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Publishes `data` to `name` and returns its offset.
    ///
    /// The frame for each dialect that has subscribers is encoded once, outside the channel lock,
    /// for the offset the message will most likely get; under the lock the offset is assigned and
    /// the shared frame pushed into every subscriber's outbox (a refcount each). Only when another
    /// publisher to the same channel won the race for that offset is the v1 frame re-encoded under
    /// the lock. Subscribers whose outbox overflowed or closed are dropped from the channel here.
    pub fn publish(&self, name: &ChannelName, data: &Payload) -> Result<Offset, HubError> {
        let ch = self.channel(name)?;
        let guess = Offset(ch.last_offset.load(Ordering::Relaxed) + 1);
        let mut v1_frame =
            (ch.v1_subs.load(Ordering::Relaxed) > 0).then(|| encode_v1_frame(name, guess, data));
        let mut legacy_frame =
            (ch.legacy_subs.load(Ordering::Relaxed) > 0).then(|| encode_legacy_frame(name, data));

        let mut st = ch.lock();
        st.last_offset += 1;
        let offset = Offset(st.last_offset);
        ch.last_offset.store(offset.0, Ordering::Relaxed);
        let mut dropped = 0;
        if !st.v1.is_empty() {
            if offset != guess || v1_frame.is_none() {
                v1_frame = Some(encode_v1_frame(&ch.name, offset, data));
            }
            if let Some(frame) = &v1_frame {
                dropped += fan_out(&mut st.v1, frame);
            }
        }
        if !st.legacy.is_empty() {
            let frame = legacy_frame.get_or_insert_with(|| encode_legacy_frame(&ch.name, data));
            dropped += fan_out(&mut st.legacy, frame);
        }
        if dropped > 0 {
            ch.publish_counts(&st);
        }
        drop(st);
        if dropped > 0 {
            self.inner
                .subscriptions
                .fetch_sub(dropped, Ordering::Relaxed);
        }
        Ok(offset)
    }

    /// The last offset published to `name` (0 before the first message).
    pub fn last_offset(&self, name: &ChannelName) -> Result<Offset, HubError> {
        Ok(Offset(
            self.channel(name)?.last_offset.load(Ordering::Relaxed),
        ))
    }

    /// Number of subscribers of `name`.
    pub fn subscriber_count(&self, name: &ChannelName) -> Result<usize, HubError> {
        let ch = self.channel(name)?;
        Ok(ch.v1_subs.load(Ordering::Relaxed) + ch.legacy_subs.load(Ordering::Relaxed))
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            channels: self.inner.channels.len(),
            subscriptions: self.inner.subscriptions.load(Ordering::Relaxed),
        }
    }
}

/// The v1 delivery of a message as a complete WebSocket frame.
fn encode_v1_frame(name: &ChannelName, offset: Offset, data: &Payload) -> Bytes {
    WsFrame::text(&v1::encode_delivery(name, offset, data))
        .bytes()
        .clone()
}

/// The original-protocol delivery of a message as a complete WebSocket frame.
fn encode_legacy_frame(name: &ChannelName, data: &Payload) -> Bytes {
    WsFrame::text(&legacy::encode_delivery(name, data))
        .bytes()
        .clone()
}

/// Pushes `frame` to every subscriber, removing those that can take no more; returns how many
/// were removed.
fn fan_out(subs: &mut Vec<Sub>, frame: &Bytes) -> usize {
    let before = subs.len();
    subs.retain(|s| s.outbox.push(frame.clone()).is_ok());
    before - subs.len()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::{CloseReason, OutboxLimits};

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn outbox(max_messages: usize) -> Arc<Outbox> {
        Arc::new(Outbox::new(OutboxLimits {
            max_bytes: 1 << 20,
            max_messages,
        }))
    }

    /// The payloads of the queued frames.
    fn drain(ob: &Outbox) -> Vec<String> {
        let mut q = VecDeque::new();
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

    #[test]
    fn create_is_idempotent_and_publish_needs_a_channel() {
        let hub = Hub::new();
        let p = Payload::text("x");
        assert_eq!(hub.publish(&ch("a"), &p), Err(HubError::NotFound(ch("a"))));
        assert!(hub.create(&ch("a")));
        assert!(!hub.create(&ch("a")));
        assert_eq!(hub.publish(&ch("a"), &p), Ok(Offset(1)));
        assert_eq!(hub.publish(&ch("a"), &p), Ok(Offset(2)));
        assert_eq!(
            hub.stats(),
            HubStats {
                channels: 1,
                subscriptions: 0
            }
        );
    }

    #[test]
    fn fans_out_per_dialect_once_and_in_order() {
        let hub = Hub::new();
        hub.create(&ch("news"));
        let (a, b) = (outbox(100), outbox(100));
        let (ca, cb) = (hub.next_conn_id(), hub.next_conn_id());
        assert!(
            !hub.subscribe(&ch("news"), ca, Dialect::V1, &a)
                .unwrap()
                .already
        );
        assert!(
            hub.subscribe(&ch("news"), ca, Dialect::V1, &a)
                .unwrap()
                .already
        );
        hub.subscribe(&ch("news"), cb, Dialect::Legacy, &b).unwrap();
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
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &slow)
            .unwrap();
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &fast)
            .unwrap();
        for i in 0..10 {
            hub.publish(&ch("c"), &Payload::text(&i.to_string()))
                .unwrap();
        }
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
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &sub)
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
}
