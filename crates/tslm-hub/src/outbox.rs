use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

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
    queue: VecDeque<Bytes>,
    bytes: usize,
    closed: Option<CloseReason>,
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

    /// Queues `frame`. A frame always fits into an empty queue, whatever its size.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut st = self.lock();
        if st.closed.is_some() {
            return Err(PushError::Closed);
        }
        let over = !st.queue.is_empty()
            && (st.bytes + frame.len() > self.limits.max_bytes
                || st.queue.len() >= self.limits.max_messages);
        if over {
            st.closed = Some(CloseReason::SlowConsumer);
            st.queue = VecDeque::new();
            st.bytes = 0;
            drop(st);
            self.ready.notify_one();
            self.closed.notify_waiters();
            return Err(PushError::Overflow);
        }
        let was_empty = st.queue.is_empty();
        st.bytes += frame.len();
        st.queue.push_back(frame);
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Moves every queued frame into `out` (which should be empty; its allocation is reused) and
    /// returns why the outbox is closed, if it is.
    pub fn take(&self, out: &mut VecDeque<Bytes>) -> Option<CloseReason> {
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
