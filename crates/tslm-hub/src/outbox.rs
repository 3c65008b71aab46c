use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;
use tslm_protocol::{ChannelName, Offset, WsFrame, v1};

use crate::settings::SlowPolicy;

/// Limits of one connection's outbound queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Bytes of frames queued and not yet taken by the connection's writer.
    pub max_bytes: usize,
    /// Number of frames queued (the original `channel_buffer_size`).
    pub max_messages: usize,
}

/// Why an outbox stopped accepting frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// It overflowed: its connection did not write frames out as fast as they arrived.
    SlowConsumer,
    /// Its connection is gone or closing.
    Closed,
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("subscriber is too slow: its outbound queue is full")]
    Overflow,
    #[error("subscriber is closed")]
    Closed,
    /// Only from [`Outbox::try_push`]: the queue is full and was left as it was.
    #[error("outbound queue is full")]
    Full,
}

/// A subscription's lane in its connection's outbox: lets a lossy slow-subscriber policy drop
/// that subscription's queued frames and no other. Lane 0 is the shared lane of everything that
/// is never dropped selectively.
pub type Lane = u32;

/// One queued frame.
#[derive(Debug, Clone)]
pub struct Entry {
    frame: Bytes,
    lane: Lane,
    kind: EntryKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Other,
    /// A delivery of this offset.
    Message(u64),
    /// A `gap` event for offsets `.0..=.1` (merged when more of the lane is dropped).
    Gap(u64, u64),
}

impl Entry {
    /// The complete WebSocket frame to write.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

/// A connection's bounded outbound queue of encoded frames.
///
/// Producers (the hub, on publish) never wait: a push that would exceed the limits closes the
/// outbox with [`CloseReason::SlowConsumer`] and drops what it held, so a slow subscriber costs
/// at most its limit and never slows a publisher or other subscribers. The single consumer (the
/// connection's session task) waits on [`Outbox::ready`] and takes everything queued at once, so
/// it can write a batch with one system call.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the consumer when frames arrive in an empty queue or the outbox closes.
    ready: Notify,
    /// Wakes everyone waiting in [`Outbox::closed`].
    closed: Notify,
    limits: OutboxLimits,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Entry>,
    bytes: usize,
    closed: Option<CloseReason>,
    next_lane: Lane,
}

impl Outbox {
    pub fn new(limits: OutboxLimits) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            closed: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave `State` inconsistent (every update is a
        // single push/swap), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lane of its own for a new subscription (never 0).
    pub fn new_lane(&self) -> Lane {
        let mut st = self.lock();
        st.next_lane = st.next_lane.wrapping_add(1).max(1);
        st.next_lane
    }

    fn over(&self, st: &State, len: usize) -> bool {
        !st.queue.is_empty()
            && (st.bytes + len > self.limits.max_bytes
                || st.queue.len() >= self.limits.max_messages)
    }

    /// Room left before the limits: (frames, bytes).
    pub fn room(&self) -> (usize, usize) {
        let st = self.lock();
        (
            self.limits.max_messages.saturating_sub(st.queue.len()),
            self.limits.max_bytes.saturating_sub(st.bytes),
        )
    }

    fn append(&self, mut st: std::sync::MutexGuard<'_, State>, entry: Entry) {
        let was_empty = st.queue.is_empty();
        st.bytes += entry.frame.len();
        st.queue.push_back(entry);
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
    }

    fn overflow(&self, mut st: std::sync::MutexGuard<'_, State>) -> PushError {
        st.closed = Some(CloseReason::SlowConsumer);
        st.queue = VecDeque::new();
        st.bytes = 0;
        drop(st);
        self.ready.notify_one();
        self.closed.notify_waiters();
        PushError::Overflow
    }

    /// Queues `frame`; on overflow the outbox closes ([`SlowPolicy::Disconnect`]). A frame always
    /// fits into an empty queue, whatever its size.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let st = self.lock();
        if st.closed.is_some() {
            return Err(PushError::Closed);
        }
        if self.over(&st, frame.len()) {
            return Err(self.overflow(st));
        }
        self.append(
            st,
            Entry {
                frame,
                lane: 0,
                kind: EntryKind::Other,
            },
        );
        Ok(())
    }

    /// Queues `frame` unless the queue is full, in which case nothing changes ([`PushError::Full`]).
    /// For traffic the connection did not ask for (replies to a publisher), so that it can be
    /// refused at its source instead of costing the connection.
    pub fn try_push(&self, frame: Bytes) -> Result<(), PushError> {
        let st = self.lock();
        if st.closed.is_some() {
            return Err(PushError::Closed);
        }
        if self.over(&st, frame.len()) {
            return Err(PushError::Full);
        }
        self.append(
            st,
            Entry {
                frame,
                lane: 0,
                kind: EntryKind::Other,
            },
        );
        Ok(())
    }

    /// Queues the delivery `frame` of message `offset` of `channel` for the subscription on
    /// `lane`, applying `policy` when the queue is full:
    /// - `Disconnect`: the outbox closes as a slow consumer;
    /// - `DropOldest`: the lane's queued deliveries are dropped and replaced by one `gap` event
    ///   naming the offsets dropped (merged with an earlier one still queued); the new delivery
    ///   follows it if it now fits, else it joins the gap;
    /// - `Latest`: the lane's queued deliveries are replaced by this one.
    ///
    /// The lossy policies may exceed the limits by one entry per lane, never more.
    pub fn push_delivery(
        &self,
        frame: Bytes,
        lane: Lane,
        offset: Offset,
        channel: &ChannelName,
        policy: SlowPolicy,
    ) -> Result<(), PushError> {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Err(PushError::Closed);
        }
        let message = Entry {
            frame,
            lane,
            kind: EntryKind::Message(offset.0),
        };
        if !self.over(&st, message.frame.len()) {
            self.append(st, message);
            return Ok(());
        }
        if policy == SlowPolicy::Disconnect {
            return Err(self.overflow(st));
        }
        // Take the lane's entries out, noting the range of offsets they covered.
        let mut dropped: Option<(u64, u64)> = None;
        let mut freed = 0;
        st.queue.retain(|e| {
            if e.lane != lane {
                return true;
            }
            let (a, b) = match e.kind {
                EntryKind::Message(o) => (o, o),
                EntryKind::Gap(a, b) => (a, b),
                EntryKind::Other => return true,
            };
            dropped = Some(dropped.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
            freed += e.frame.len();
            false
        });
        st.bytes -= freed;
        if policy == SlowPolicy::Latest {
            let was_empty = st.queue.is_empty();
            st.bytes += message.frame.len();
            st.queue.push_back(message);
            drop(st);
            if was_empty {
                self.ready.notify_one();
            }
            return Ok(());
        }
        let Some((from, mut to)) = dropped else {
            // The queue is full of other subscriptions' frames: this message is the gap.
            let gap = gap_entry(channel, lane, offset.0, offset.0);
            st.bytes += gap.frame.len();
            st.queue.push_back(gap);
            return Ok(());
        };
        let fits = {
            let gap_len = 64 + channel.len();
            st.queue.is_empty()
                || (st.bytes + gap_len + message.frame.len() <= self.limits.max_bytes
                    && st.queue.len() + 2 <= self.limits.max_messages)
        };
        if !fits {
            to = offset.0;
        }
        let gap = gap_entry(channel, lane, from, to);
        st.bytes += gap.frame.len();
        st.queue.push_back(gap);
        if fits {
            st.bytes += message.frame.len();
            st.queue.push_back(message);
        }
        Ok(())
    }

    /// Moves every queued frame into `out` (which should be empty; its allocation is reused) and
    /// returns why the outbox is closed, if it is.
    pub fn take(&self, out: &mut VecDeque<Entry>) -> Option<CloseReason> {
        let mut st = self.lock();
        if !st.queue.is_empty() {
            std::mem::swap(&mut st.queue, out);
            st.bytes = 0;
        }
        st.closed
    }

    /// Stops accepting frames (the connection is closing) and frees what was queued.
    pub fn close(&self) {
        let mut st = self.lock();
        if st.closed.is_none() {
            st.closed = Some(CloseReason::Closed);
        }
        st.queue = VecDeque::new();
        st.bytes = 0;
        drop(st);
        self.ready.notify_one();
        self.closed.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Resolves once the outbox is closed (overflowed or closed). Does not consume the wake-up
    /// [`Outbox::ready`] waits for, so a writer can race its I/O against it. Cancel-safe.
    pub async fn closed(&self) {
        loop {
            let mut notified = std::pin::pin!(self.closed.notified());
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Frames currently queued.
    pub fn queued_frames(&self) -> usize {
        self.lock().queue.len()
    }

    /// Resolves when frames were queued or the outbox closed since the last `take`. Cancel-safe.
    pub async fn ready(&self) {
        self.ready.notified().await
    }
}

/// A `gap` event entry for `from..=to` on `lane`.
fn gap_entry(channel: &ChannelName, lane: Lane, from: u64, to: u64) -> Entry {
    let json = v1::encode_gap(channel, Offset(from), Offset(to));
    Entry {
        frame: WsFrame::text(&json).bytes().clone(),
        lane,
        kind: EntryKind::Gap(from, to),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn bounded_by_bytes_and_count() {
        let ob = Outbox::new(OutboxLimits {
            max_bytes: 100,
            max_messages: 3,
        });
        ob.push(frame(40)).unwrap();
        ob.push(frame(40)).unwrap();
        assert_eq!(ob.queued_bytes(), 80);
        assert_eq!(ob.push(frame(40)), Err(PushError::Overflow));
        assert_eq!(
            ob.queued_bytes(),
            0,
            "an overflowed outbox frees its frames"
        );
        assert_eq!(ob.push(frame(1)), Err(PushError::Closed));
        let mut out = VecDeque::new();
        assert_eq!(ob.take(&mut out), Some(CloseReason::SlowConsumer));

        let ob = Outbox::new(OutboxLimits {
            max_bytes: 1000,
            max_messages: 2,
        });
        ob.push(frame(1)).unwrap();
        ob.push(frame(1)).unwrap();
        assert_eq!(ob.push(frame(1)), Err(PushError::Overflow));
    }

    #[test]
    fn an_empty_queue_takes_one_large_frame() {
        let ob = Outbox::new(OutboxLimits {
            max_bytes: 10,
            max_messages: 10,
        });
        ob.push(frame(50)).unwrap();
        let mut out = VecDeque::new();
        assert_eq!(ob.take(&mut out), None);
        assert_eq!(out.len(), 1);
        out.clear();
        ob.push(frame(50)).unwrap();
    }

    #[tokio::test]
    async fn take_drains_in_order_and_ready_wakes() {
        let ob = std::sync::Arc::new(Outbox::new(OutboxLimits {
            max_bytes: 1 << 20,
            max_messages: 100,
        }));
        let ob2 = ob.clone();
        let waiter = tokio::spawn(async move { ob2.ready().await });
        ob.push(Bytes::from_static(b"1")).unwrap();
        ob.push(Bytes::from_static(b"2")).unwrap();
        waiter.await.unwrap();
        let mut out = VecDeque::new();
        assert_eq!(ob.take(&mut out), None);
        let frames: Vec<&Bytes> = out.iter().map(Entry::frame).collect();
        assert_eq!(
            frames,
            [&Bytes::from_static(b"1"), &Bytes::from_static(b"2")]
        );
        ob.close();
        ob.ready().await;
        out.clear();
        assert_eq!(ob.take(&mut out), Some(CloseReason::Closed));
    }
}
