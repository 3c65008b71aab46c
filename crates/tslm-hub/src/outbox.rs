use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;
use tslm_protocol::{ChannelName, Offset, Wire};

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

/// A live delivery for [`Outbox::push_delivery`]: message `offset` of a channel, known by its
/// key (unique for the life of the process) and name, on `wire`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tagged<'a> {
    pub(crate) key: u64,
    pub(crate) channel: &'a ChannelName,
    pub(crate) wire: Wire,
    pub(crate) offset: Offset,
}

/// What a lossy policy dropped to queue a delivery.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    /// Deliveries of the subscription that were queued before.
    pub(crate) earlier: usize,
    /// The delivery itself (it joined a `gap` event instead).
    pub(crate) this: bool,
}

/// Deliveries of one subscription for [`Outbox::push_deliveries`]: of the channel `key`
/// (`channel`), on `wire`; `tagged`: kept with their offsets for the lossy policies (else queued
/// as plain frames, as under `disconnect`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batch<'a> {
    pub(crate) key: u64,
    pub(crate) channel: &'a ChannelName,
    pub(crate) wire: Wire,
    pub(crate) tagged: bool,
}

/// What lossy policies dropped to queue several deliveries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DroppedMany {
    /// Deliveries that were queued before one of these and dropped for it.
    pub(crate) earlier: usize,
    /// These deliveries that joined a `gap` event instead of being queued.
    pub(crate) these: usize,
}

/// Marks the key of a queued `gap` event (channel keys never come near it).
const GAP: u64 = 1 << 63;

/// A live frame and, beside it, what the lossy policies need: which channel's offsets it
/// carries (a delivery, or a `gap` event's range). Nothing is ever read back out of the bytes.
#[derive(Debug)]
struct Entry {
    bytes: Bytes,
    /// The channel's key (with [`GAP`] for a `gap` event), 0 for any other frame (replies,
    /// `closed` events, and deliveries of channels whose policy is `disconnect`).
    key: u64,
    from: u64,
    to: u64,
}

/// What is kept of a tagged [`Entry`] beside its bytes, in a sparse queue of its own: only the
/// frames of lossy-policy subscriptions (deliveries and `gap` events) have one, so that the bytes
/// stay a plain queue of `Bytes` (32 bytes a frame) that the writer takes in one swap, and a
/// subscriber under the default `disconnect` policy pays nothing for the lossy policies.
#[derive(Debug, Clone, Copy)]
struct Tag {
    /// The frame's position: `State::head` counts the frames ever popped from the queue front.
    seq: u64,
    key: u64,
    from: u64,
    to: u64,
}

impl Entry {
    fn untagged(bytes: Bytes) -> Self {
        Self {
            bytes,
            key: 0,
            from: 0,
            to: 0,
        }
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
    /// What the tagged frames of `queue` carry, in the same order, each naming its position.
    tags: VecDeque<Tag>,
    /// The position of the front of `queue` (reset whenever `queue` is emptied whole).
    head: u64,
    bytes: usize,
    /// Frames of backlog replays ([`Outbox::push_replay`]): written before `queue`, and never
    /// counted against a live push, so a replay cannot make a live delivery overflow.
    replay: VecDeque<Bytes>,
    replay_bytes: usize,
    closed: Option<CloseReason>,
    /// Write coalescing ([`Outbox::hold`]): frames queued meanwhile do not wake the consumer;
    /// [`Outbox::release`] does, once, for all of them, or a queue half full does at once.
    held: bool,
    /// Held since the last [`Outbox::release`] (so already on the releaser's list, even if the
    /// hold ended early): a new hold must not put it there again.
    listed: bool,
}

impl State {
    fn push_live(&mut self, e: Entry) {
        self.bytes += e.bytes.len();
        if e.key != 0 {
            let seq = self.head.wrapping_add(self.queue.len() as u64);
            self.tags.push_back(Tag {
                seq,
                key: e.key,
                from: e.from,
                to: e.to,
            });
        }
        self.queue.push_back(e.bytes);
    }

    /// The oldest live frame (its bytes stay counted in `bytes`).
    fn pop_live(&mut self) -> Option<Entry> {
        let bytes = self.queue.pop_front()?;
        let seq = self.head;
        self.head = self.head.wrapping_add(1);
        match self.tags.front() {
            Some(t) if t.seq == seq => {
                let t = *t;
                self.tags.pop_front();
                Some(Entry {
                    bytes,
                    key: t.key,
                    from: t.from,
                    to: t.to,
                })
            }
            _ => Some(Entry::untagged(bytes)),
        }
    }

    /// Forgets the tags once `queue` was emptied whole.
    fn emptied(&mut self) {
        self.tags.clear();
        self.head = 0;
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.replay.is_empty()
    }

    fn clear(&mut self) {
        self.queue = VecDeque::new();
        self.tags = VecDeque::new();
        self.head = 0;
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

    /// Queues an untagged live frame (the common case: no tag to keep) and wakes the writer if
    /// the queue was empty.
    fn append(&self, mut st: std::sync::MutexGuard<'_, State>, frame: Bytes) {
        let was_empty = st.is_empty();
        st.bytes += frame.len();
        st.queue.push_back(frame);
        let wake = self.wake_after_push(&mut st, was_empty);
        drop(st);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Whether a push that left the queue as `st` is must wake the consumer: frames arrived in an
    /// empty queue, unless it is held; or a held queue reached half of either limit, which ends
    /// the hold at once, so that coalescing never lets a queue overflow that a prompt writer
    /// would have kept.
    fn wake_after_push(&self, st: &mut State, was_empty: bool) -> bool {
        if st.is_empty() {
            return false;
        }
        if !st.held {
            return was_empty;
        }
        let frames = st.queue.len() + st.replay.len();
        if frames >= self.limits.max_messages / 2
            || st.bytes + st.replay_bytes >= self.limits.max_bytes / 2
        {
            st.held = false;
            return true;
        }
        false
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
        let wake = self.wake_after_push(&mut st, was_empty);
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Queues `frame`, the delivery of `d` (this connection's subscription to its channel),
    /// applying `policy` when the queue is full:
    /// - `Disconnect`: the outbox closes as a slow consumer;
    /// - `DropOldest`: the subscription's queued deliveries are dropped and replaced by one `gap`
    ///   event naming the offsets dropped (merged with an earlier one still queued); the new
    ///   delivery follows it if it now fits, else it joins the gap;
    /// - `Latest`: the subscription's queued deliveries are replaced by this one.
    ///
    /// The lossy policies may exceed the limits by one frame per subscription, never more. The
    /// offsets each queued frame covers are kept beside it, so nothing is parsed back. Returns
    /// what was dropped, for the hub's counters.
    pub(crate) fn push_delivery(
        &self,
        frame: Bytes,
        d: &Tagged<'_>,
        policy: SlowPolicy,
    ) -> Result<Dropped, PushError> {
        let mut st = self.lock();
        let was_empty = st.is_empty();
        match self.deliver_locked(&mut st, frame, d, policy) {
            Ok(dropped) => {
                let wake = self.wake_after_push(&mut st, was_empty);
                drop(st);
                if wake {
                    self.ready.notify_one();
                }
                Ok(dropped)
            }
            Err(e) => {
                drop(st);
                if e == PushError::Overflow {
                    self.ready.notify_one();
                    self.closed.notify_waiters();
                }
                Err(e)
            }
        }
    }

    /// Queues several deliveries of one subscription, oldest first, each as
    /// [`Outbox::push_delivery`] would (untagged, as [`Outbox::push`], when `batch.tagged` is
    /// false), under one lock: the writer is woken once for all of them (if the queue was
    /// empty), so it takes them in one batch. Stops at the first refusal (the outbox closed or
    /// overflowed: the rest are not queued).
    pub(crate) fn push_deliveries(
        &self,
        frames: &[(Bytes, Offset)],
        batch: &Batch<'_>,
        policy: SlowPolicy,
    ) -> Result<DroppedMany, PushError> {
        let mut st = self.lock();
        let was_empty = st.is_empty();
        let mut total = DroppedMany::default();
        for (frame, offset) in frames {
            let d = Tagged {
                key: batch.key,
                channel: batch.channel,
                wire: batch.wire,
                offset: *offset,
            };
            let pushed = if batch.tagged {
                self.deliver_locked(&mut st, frame.clone(), &d, policy)
            } else {
                self.push_locked(&mut st, frame.clone())
                    .map(|()| Dropped::default())
            };
            match pushed {
                Ok(dropped) => {
                    total.earlier += dropped.earlier;
                    total.these += usize::from(dropped.this);
                }
                Err(e) => {
                    drop(st);
                    if e == PushError::Overflow {
                        self.ready.notify_one();
                        self.closed.notify_waiters();
                    }
                    return Err(e);
                }
            }
        }
        let wake = self.wake_after_push(&mut st, was_empty);
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        Ok(total)
    }

    /// [`Outbox::push`] under the lock; on overflow the outbox is closed here and the caller
    /// wakes its consumer and the `closed` waiters once unlocked.
    fn push_locked(&self, st: &mut State, frame: Bytes) -> Result<(), PushError> {
        if st.closed.is_some() {
            return Err(PushError::Closed);
        }
        if self.over(st, frame.len()) {
            st.closed = Some(CloseReason::SlowConsumer);
            st.clear();
            return Err(PushError::Overflow);
        }
        st.push_live(Entry::untagged(frame));
        Ok(())
    }

    /// One delivery of [`Outbox::push_delivery`] under the lock; an overflow is left to the
    /// caller to announce as in [`Outbox::push_locked`].
    fn deliver_locked(
        &self,
        st: &mut State,
        frame: Bytes,
        d: &Tagged<'_>,
        policy: SlowPolicy,
    ) -> Result<Dropped, PushError> {
        if st.closed.is_some() {
            return Err(PushError::Closed);
        }
        let offset = d.offset.0;
        let message = Entry {
            bytes: frame,
            key: d.key,
            from: offset,
            to: offset,
        };
        if !self.over(st, message.bytes.len()) {
            st.push_live(message);
            return Ok(Dropped::default());
        }
        if policy == SlowPolicy::Disconnect {
            st.closed = Some(CloseReason::SlowConsumer);
            st.clear();
            return Err(PushError::Overflow);
        }
        // Take the subscription's frames out, noting the range of offsets they covered.
        let mut dropped: Option<(u64, u64)> = None;
        let (mut freed, mut lost) = (0, 0);
        // One turn of the queue keeps the other frames in their order.
        for _ in 0..st.queue.len() {
            let Some(e) = st.pop_live() else {
                break;
            };
            if e.key & !GAP != d.key {
                st.bytes -= e.bytes.len();
                st.push_live(e);
                continue;
            }
            if e.key & GAP == 0 {
                lost += 1;
            }
            let (a, b) = (e.from, e.to);
            dropped = Some(dropped.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
            freed += e.bytes.len();
        }
        st.bytes -= freed;
        if policy == SlowPolicy::Latest {
            st.push_live(message);
            return Ok(Dropped {
                earlier: lost,
                this: false,
            });
        }
        let (from, mut to) = dropped.unwrap_or((offset, offset));
        let fits = dropped.is_some() && {
            let gap_len = 64 + d.channel.len();
            st.queue.is_empty()
                || (st.bytes + gap_len + message.bytes.len() <= self.limits.max_bytes
                    && st.queue.len() + 2 <= self.limits.max_messages)
        };
        if !fits {
            // Either the queue is full of other subscriptions' frames (this message is the gap),
            // or the message does not fit beside the gap: it joins it.
            to = offset;
        }
        let Some(gap) = d.wire.gap(d.channel, Offset(from), Offset(to)) else {
            // A wire that cannot say what was dropped only knows `disconnect`.
            st.closed = Some(CloseReason::SlowConsumer);
            st.clear();
            return Err(PushError::Overflow);
        };
        st.push_live(Entry {
            bytes: gap,
            key: d.key | GAP,
            from,
            to,
        });
        if fits {
            st.push_live(message);
        }
        Ok(Dropped {
            earlier: lost,
            this: !fits,
        })
    }

    /// Moves every queued frame into `out` (which should be empty; its allocation is reused),
    /// replayed frames first, and returns why the outbox is closed, if it is.
    pub fn take(&self, out: &mut VecDeque<Bytes>) -> Option<CloseReason> {
        let mut st = self.lock();
        if !st.replay.is_empty() {
            std::mem::swap(&mut st.replay, out);
            st.replay_bytes = 0;
            out.extend(st.queue.drain(..));
        } else if !st.queue.is_empty() {
            std::mem::swap(&mut st.queue, out);
        }
        st.emptied();
        st.bytes = 0;
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

    /// Write coalescing: from now until [`Outbox::release`], frames queued do not wake the
    /// consumer (an overflow or a close still does, at once). The consumer calls it after a write,
    /// so that what arrives in the next moment waits and goes out with one wake-up and one write.
    /// A queue that reaches half of a limit while held wakes the consumer at once.
    ///
    /// Returns true when the caller must arrange a [`Outbox::release`]: false when one is already
    /// due (held since the last release, even if that hold ended early) or the outbox is closed.
    /// So an outbox is on a releaser's list at most once.
    pub fn hold(&self) -> bool {
        let mut st = self.lock();
        if st.closed.is_some() {
            return false;
        }
        st.held = true;
        !std::mem::replace(&mut st.listed, true)
    }

    /// Ends a hold early (it stays listed, so its [`Outbox::release`] still comes): wakes the
    /// consumer if frames are queued.
    pub fn unhold(&self) {
        let mut st = self.lock();
        let wake = std::mem::take(&mut st.held) && !st.is_empty();
        drop(st);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Ends a [`Outbox::hold`]: wakes the consumer once if frames were queued meanwhile.
    pub fn release(&self) {
        let mut st = self.lock();
        st.listed = false;
        let wake = std::mem::take(&mut st.held) && !st.is_empty();
        drop(st);
        if wake {
            self.ready.notify_one();
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![b'x'; n])
    }

    #[test]
    fn a_queue_entry_stays_small() {
        // A queued frame is its `Bytes` (32 bytes), as when the offsets were read back out of
        // the frames. Only frames of lossy-policy subscriptions add a tag (position, channel key,
        // first and last offset: 32 bytes) in the sparse queue beside it.
        assert_eq!(std::mem::size_of::<Bytes>(), 32);
        assert_eq!(std::mem::size_of::<Tag>(), 32);
        let ob = Outbox::new(OutboxLimits {
            max_bytes: 1 << 20,
            max_messages: 100,
        });
        for _ in 0..10 {
            ob.push(frame(1)).unwrap();
        }
        let st = ob.lock();
        assert_eq!(st.queue.len(), 10);
        assert!(st.tags.is_empty(), "a `disconnect` delivery carries no tag");
    }

    #[test]
    fn tags_follow_their_frames_through_untagged_ones_and_takes() {
        let ob = Outbox::new(OutboxLimits {
            max_bytes: 1 << 20,
            max_messages: 4,
        });
        let a = ChannelName::new("a").unwrap();
        let tag = |offset| Tagged {
            key: 3,
            channel: &a,
            wire: Wire::V1Ws,
            offset: Offset(offset),
        };
        let mut out = VecDeque::new();
        // A take in the middle resets the positions; tags still match their frames after it.
        ob.push(frame(1)).unwrap();
        ob.push_delivery(frame(1), &tag(1), SlowPolicy::DropOldest)
            .unwrap();
        ob.take(&mut out);
        out.clear();
        ob.push(Bytes::from_static(b"r1")).unwrap();
        ob.push_delivery(frame(2), &tag(2), SlowPolicy::DropOldest)
            .unwrap();
        ob.push(Bytes::from_static(b"r2")).unwrap();
        ob.push_delivery(frame(3), &tag(3), SlowPolicy::DropOldest)
            .unwrap();
        // Full: offsets 2 and 3 become one gap; the untagged frames keep their order.
        let d = ob
            .push_delivery(frame(4), &tag(4), SlowPolicy::DropOldest)
            .unwrap();
        assert_eq!(d.earlier, 2);
        assert_eq!(ob.take(&mut out), None);
        assert_eq!(out[0], Bytes::from_static(b"r1"));
        assert_eq!(out[1], Bytes::from_static(b"r2"));
        let gap = std::str::from_utf8(&out[2][2..]).unwrap();
        assert_eq!(gap, r#"{"event":"gap","channel":"a","from":2,"to":3}"#);
        assert_eq!(out[3], frame(4));
    }

    #[test]
    fn drop_oldest_finds_the_subscription_by_key_not_by_bytes() {
        let ob = Outbox::new(OutboxLimits {
            max_bytes: 1 << 20,
            max_messages: 3,
        });
        let (a, b) = (
            ChannelName::new("c.1").unwrap(),
            ChannelName::new("c.10").unwrap(),
        );
        let tag = |key, channel, offset| Tagged {
            key,
            channel,
            wire: Wire::V1Ws,
            offset: Offset(offset),
        };
        ob.push_delivery(frame(1), &tag(7, &a, 4), SlowPolicy::DropOldest)
            .unwrap();
        ob.push_delivery(frame(1), &tag(8, &b, 1), SlowPolicy::DropOldest)
            .unwrap();
        ob.push_delivery(frame(1), &tag(7, &a, 5), SlowPolicy::DropOldest)
            .unwrap();
        ob.push_delivery(frame(2), &tag(7, &a, 6), SlowPolicy::DropOldest)
            .unwrap();
        let mut out = VecDeque::new();
        assert_eq!(ob.take(&mut out), None);
        assert_eq!(
            out.len(),
            3,
            "the other channel's frame, a gap, the new delivery"
        );
        assert_eq!(out[0], frame(1));
        let gap = std::str::from_utf8(&out[1][2..]).unwrap();
        assert_eq!(gap, r#"{"event":"gap","channel":"c.1","from":4,"to":5}"#);
        assert_eq!(out[2], frame(2));
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

    fn limited(max_bytes: usize, max_messages: usize) -> Outbox {
        Outbox::new(OutboxLimits {
            max_bytes,
            max_messages,
        })
    }

    /// Whether the consumer's wake-up is pending (a permit stored), without waiting for one.
    async fn woken(ob: &Outbox) -> bool {
        tokio::select! {
            biased;
            () = ob.ready() => true,
            () = std::future::ready(()) => false,
        }
    }

    #[tokio::test]
    async fn a_held_outbox_wakes_its_consumer_once_at_release() {
        let ob = limited(1 << 20, 100);
        assert!(ob.hold());
        assert!(!ob.hold(), "listed twice");
        ob.push(Bytes::from_static(b"1")).unwrap();
        ob.push_replay(Bytes::from_static(b"r")).unwrap();
        assert!(!woken(&ob).await, "a push woke a held consumer");
        ob.release();
        assert!(woken(&ob).await, "the release did not wake it");
        assert!(!woken(&ob).await, "woken twice");
        let mut out = VecDeque::new();
        ob.take(&mut out);
        assert_eq!(out.len(), 2);
        // Not held any more: the next frame wakes at once.
        ob.push(Bytes::from_static(b"2")).unwrap();
        assert!(woken(&ob).await);
        // A release with nothing queued wakes nobody.
        out.clear();
        ob.take(&mut out);
        assert!(ob.hold());
        ob.release();
        assert!(!woken(&ob).await);
    }

    #[tokio::test]
    async fn an_overflow_or_a_close_wakes_a_held_consumer_at_once() {
        let ob = limited(1 << 20, 4);
        assert!(ob.hold());
        ob.push(Bytes::from_static(b"1")).unwrap();
        assert!(!woken(&ob).await);
        ob.push(Bytes::from_static(b"2")).unwrap();
        assert!(woken(&ob).await, "half full");
        // The consumer does not take them; held again, the queue overflows.
        assert!(!ob.hold());
        ob.push(Bytes::from_static(b"3")).unwrap();
        assert!(
            woken(&ob).await,
            "a held queue past half full did not wake at once"
        );
        ob.push(Bytes::from_static(b"4")).unwrap();
        assert_eq!(ob.push(Bytes::from_static(b"5")), Err(PushError::Overflow));
        assert!(woken(&ob).await, "an overflow waited for the release");
        let mut out = VecDeque::new();
        assert_eq!(ob.take(&mut out), Some(CloseReason::SlowConsumer));
        // An overflow of a queue still held (below half its bound until the overflowing push).
        let bytes = limited(100, 100);
        assert!(bytes.hold());
        bytes.push(frame(10)).unwrap();
        assert!(!woken(&bytes).await);
        assert_eq!(bytes.push(frame(95)), Err(PushError::Overflow));
        assert!(woken(&bytes).await, "an overflow of a held queue waited");
        let closed = limited(1 << 20, 10);
        assert!(closed.hold());
        closed.close();
        assert!(woken(&closed).await, "a close waited for the release");
        assert!(!closed.hold(), "a closed outbox was held");
    }

    #[tokio::test]
    async fn a_held_queue_half_full_wakes_its_consumer_at_once_and_stays_listed_once() {
        let ob = limited(1 << 20, 4);
        assert!(ob.hold());
        ob.push(Bytes::from_static(b"1")).unwrap();
        assert!(!woken(&ob).await);
        ob.push(Bytes::from_static(b"2")).unwrap();
        assert!(
            woken(&ob).await,
            "half the frame limit did not end the hold"
        );
        let mut out = VecDeque::new();
        ob.take(&mut out);
        // Held again before the release came: not listed a second time, and held anew.
        assert!(!ob.hold(), "listed twice before its release");
        ob.push(Bytes::from_static(b"3")).unwrap();
        assert!(!woken(&ob).await, "the second hold did not hold");
        ob.release();
        assert!(woken(&ob).await);
        out.clear();
        ob.take(&mut out);
        assert!(ob.hold(), "after its release it can be listed again");
        // `unhold` ends the hold early (a replay step must go out at once) but keeps it listed.
        ob.push(Bytes::from_static(b"4")).unwrap();
        assert!(!woken(&ob).await);
        ob.unhold();
        assert!(woken(&ob).await, "unhold did not wake");
        assert!(!ob.hold(), "unhold took it off the list");
        // The byte limit too.
        let big = limited(100, 1000);
        assert!(big.hold());
        big.push(frame(49)).unwrap();
        assert!(!woken(&big).await);
        big.push(frame(1)).unwrap();
        assert!(
            woken(&big).await,
            "half the byte limit did not end the hold"
        );
    }
}
