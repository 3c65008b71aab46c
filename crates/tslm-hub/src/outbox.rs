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

/// The offsets a queued v1 frame of `channel` covers: a delivery's offset, or a `gap` event's
/// range; `None` for any other frame.
///
/// Queues hold many frames, so nothing is stored beside them: a subscription is identified by
/// its channel (one per connection), and the offsets a lossy policy needs are read back from the
/// frames, on the rare overflow path only.
fn covered(frame: &[u8], channel: &ChannelName) -> Option<(u64, u64)> {
    let header = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    let json = frame.get(header..)?;
    let of_channel = |rest: &[u8]| {
        rest.strip_prefix(b",\"channel\":\"")
            .and_then(|r| r.strip_prefix(channel.as_bytes()))
            .is_some_and(|r| r.first() == Some(&b'"'))
    };
    // Channel names contain no `"`, and `data` comes last: the first match is the field.
    let number = |key: &[u8]| -> Option<u64> {
        let at = json.windows(key.len()).position(|w| w == key)? + key.len();
        let digits = json[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&json[at..at + digits])
            .ok()?
            .parse()
            .ok()
    };
    if let Some(rest) = json.strip_prefix(b"{\"event\":\"message\"") {
        of_channel(rest).then_some(())?;
        let o = number(b"\"offset\":")?;
        Some((o, o))
    } else if let Some(rest) = json.strip_prefix(b"{\"event\":\"gap\"") {
        of_channel(rest).then_some(())?;
        Some((number(b"\"from\":")?, number(b"\"to\":")?))
    } else {
        None
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
    /// Live frames (deliveries, events, replies): what the limits and the overflow policies
    /// measure.
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// Frames of backlog replays ([`Outbox::push_replay`]): written before `queue`, and never
    /// counted against a live push, so a replay cannot make a live delivery overflow.
    replay: VecDeque<Bytes>,
    replay_bytes: usize,
    closed: Option<CloseReason>,
}

impl State {
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.replay.is_empty()
    }

    fn clear(&mut self) {
        self.queue = VecDeque::new();
        self.bytes = 0;
        self.replay = VecDeque::new();
        self.replay_bytes = 0;
    }
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

    fn over(&self, st: &State, len: usize) -> bool {
        !st.queue.is_empty()
            && (st.bytes + len > self.limits.max_bytes
                || st.queue.len() >= self.limits.max_messages)
    }

    /// What replays may fill: half of each limit ([`Outbox::push_replay`]).
    fn replay_limits(&self) -> (usize, usize) {
        (
            (self.limits.max_messages / 2).max(1),
            self.limits.max_bytes / 2,
        )
    }

    /// Room left for replay frames: (frames, bytes). Replays fill at most half of each limit,
    /// counting every queued frame, live or replayed.
    pub fn replay_room(&self) -> (usize, usize) {
        let st = self.lock();
        let (frames, bytes) = self.replay_limits();
        (
            frames.saturating_sub(st.queue.len() + st.replay.len()),
            bytes.saturating_sub(st.bytes + st.replay_bytes),
        )
    }

    fn append(&self, mut st: std::sync::MutexGuard<'_, State>, frame: Bytes) {
        let was_empty = st.is_empty();
        st.bytes += frame.len();
        st.queue.push_back(frame);
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
    }

    fn overflow(&self, mut st: std::sync::MutexGuard<'_, State>) -> PushError {
        st.closed = Some(CloseReason::SlowConsumer);
        st.clear();
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
        self.append(st, frame);
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
        self.append(st, frame);
        Ok(())
    }

    /// Queues `frame` of a backlog replay, unless replays already fill half of the limits
    /// ([`PushError::Full`], nothing changes; a frame always fits when no replay frame is queued).
    ///
    /// Replay frames are kept apart: they are written before the live frames queued beside them
    /// (a subscription turns live only once its replay is queued whole, so each channel's order
    /// holds; callers start each replay step on an emptied outbox, as the session does, so no
    /// frame of an earlier subscription to the same channel waits behind them), and a live push
    /// is measured against the live frames alone. A replay therefore
    /// never makes a live delivery overflow, so it never costs a client that reads its
    /// connection; while one is under way the outbox may hold up to one and a half times its
    /// limits.
    pub fn push_replay(&self, frame: Bytes) -> Result<(), PushError> {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Err(PushError::Closed);
        }
        let (max_frames, max_bytes) = self.replay_limits();
        if !st.replay.is_empty()
            && (st.bytes + st.replay_bytes + frame.len() > max_bytes
                || st.queue.len() + st.replay.len() >= max_frames)
        {
            return Err(PushError::Full);
        }
        let was_empty = st.is_empty();
        st.replay_bytes += frame.len();
        st.replay.push_back(frame);
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Queues the v1 delivery `frame` of message `offset` of `channel` (this connection's
    /// subscription to it), applying `policy` when the queue is full:
    /// - `Disconnect`: the outbox closes as a slow consumer;
    /// - `DropOldest`: the subscription's queued deliveries are dropped and replaced by one `gap`
    ///   event naming the offsets dropped (merged with an earlier one still queued); the new
    ///   delivery follows it if it now fits, else it joins the gap;
    /// - `Latest`: the subscription's queued deliveries are replaced by this one.
    ///
    /// The lossy policies may exceed the limits by one frame per subscription, never more.
    pub fn push_delivery(
        &self,
        frame: Bytes,
        offset: Offset,
        channel: &ChannelName,
        policy: SlowPolicy,
    ) -> Result<(), PushError> {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Err(PushError::Closed);
        }
        let message = frame;
        if !self.over(&st, message.len()) {
            self.append(st, message);
            return Ok(());
        }
        if policy == SlowPolicy::Disconnect {
            return Err(self.overflow(st));
        }
        // Take the subscription's frames out, noting the range of offsets they covered.
        let mut dropped: Option<(u64, u64)> = None;
        let mut freed = 0;
        st.queue.retain(|f| {
            let Some((a, b)) = covered(f, channel) else {
                return true;
            };
            dropped = Some(dropped.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
            freed += f.len();
            false
        });
        st.bytes -= freed;
        if policy == SlowPolicy::Latest {
            let was_empty = st.is_empty();
            st.bytes += message.len();
            st.queue.push_back(message);
            drop(st);
            if was_empty {
                self.ready.notify_one();
            }
            return Ok(());
        }
        let Some((from, mut to)) = dropped else {
            // The queue is full of other subscriptions' frames: this message is the gap.
            let gap = gap_frame(channel, offset.0, offset.0);
            st.bytes += gap.len();
            st.queue.push_back(gap);
            return Ok(());
        };
        let fits = {
            let gap_len = 64 + channel.len();
            st.queue.is_empty()
                || (st.bytes + gap_len + message.len() <= self.limits.max_bytes
                    && st.queue.len() + 2 <= self.limits.max_messages)
        };
        if !fits {
            to = offset.0;
        }
        let gap = gap_frame(channel, from, to);
        st.bytes += gap.len();
        st.queue.push_back(gap);
        if fits {
            st.bytes += message.len();
            st.queue.push_back(message);
        }
        Ok(())
    }

    /// Moves every queued frame into `out` (which should be empty; its allocation is reused),
    /// replayed frames first, and returns why the outbox is closed, if it is.
    pub fn take(&self, out: &mut VecDeque<Bytes>) -> Option<CloseReason> {
        let mut st = self.lock();
        if !st.replay.is_empty() {
            std::mem::swap(&mut st.replay, out);
            st.replay_bytes = 0;
            out.extend(st.queue.drain(..));
            st.bytes = 0;
        } else if !st.queue.is_empty() {
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
        st.clear();
        drop(st);
        self.ready.notify_one();
        self.closed.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Bytes currently queued (live and replayed).
    pub fn queued_bytes(&self) -> usize {
        let st = self.lock();
        st.bytes + st.replay_bytes
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

    /// Frames currently queued (live and replayed).
    pub fn queued_frames(&self) -> usize {
        let st = self.lock();
        st.queue.len() + st.replay.len()
    }

    /// Resolves when frames were queued or the outbox closed since the last `take`. Cancel-safe.
    pub async fn ready(&self) {
        self.ready.notified().await
    }
}

/// The `gap` event frame for `from..=to` of `channel`.
fn gap_frame(channel: &ChannelName, from: u64, to: u64) -> Bytes {
    let json = v1::encode_gap(channel, Offset(from), Offset(to));
    WsFrame::text(&json).bytes().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn offsets_are_read_back_from_queued_frames() {
        use tslm_protocol::{Offset, Payload};
        let ch = ChannelName::new("c.1").unwrap();
        for len in [3, 200, 70_000] {
            let data = Payload::text(&"o".repeat(len));
            let json = v1::encode_delivery(&ch, Offset(987_654_321), &data);
            let frame = WsFrame::text(&json).bytes().clone();
            assert_eq!(covered(&frame, &ch), Some((987_654_321, 987_654_321)));
            let other = ChannelName::new("c.10").unwrap();
            assert_eq!(covered(&frame, &other), None, "another channel's frame");
        }
        let gap = WsFrame::text(&v1::encode_gap(&ch, Offset(5), Offset(90)))
            .bytes()
            .clone();
        assert_eq!(covered(&gap, &ch), Some((5, 90)));
        let closed = WsFrame::text(&v1::encode_closed(&ch, "deleted"))
            .bytes()
            .clone();
        assert_eq!(covered(&closed, &ch), None);
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
        assert_eq!(out, [Bytes::from_static(b"1"), Bytes::from_static(b"2")]);
        ob.close();
        ob.ready().await;
        out.clear();
        assert_eq!(ob.take(&mut out), Some(CloseReason::Closed));
    }
}
