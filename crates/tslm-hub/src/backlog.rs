//! A channel's backlog: the messages it keeps for resumes and history, bounded by the channel's
//! count and age and, together with every other backlog, by the hub's memory budget.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tslm_protocol::{Delivery, Offset, Payload, Wire};

use crate::budget::{Bound, shrink};

/// The wire whose delivery a backlog keeps (the payload is a slice of it): a replay to a
/// subscriber of this wire hands it these very bytes; other wires encode from the payload.
pub(crate) const BACKLOG_WIRE: Wire = Wire::V1Ws;

/// Bytes counted per backlog entry beyond its frame (the entry itself and its queue slot).
const STORED_OVERHEAD: usize = 64;

/// A kept message: its delivery on [`BACKLOG_WIRE`] (the payload is a slice of it).
pub(crate) struct Stored {
    pub(crate) offset: u64,
    at: Instant,
    pub(crate) frame: Bytes,
    pub(crate) payload: Payload,
    /// Where the v1 `message` event's JSON starts in `frame` (after the WebSocket header).
    pub(crate) body: u8,
}

impl Stored {
    /// The v1 `message` event of this message, as JSON text: a slice of the kept frame.
    pub(crate) fn event(&self) -> Bytes {
        self.frame
            .slice(usize::from(self.body).min(self.frame.len())..)
    }
}

impl Stored {
    fn cost(&self) -> usize {
        self.frame.len() + STORED_OVERHEAD
    }
}

/// Dense offsets in order, oldest first; `bytes` is this backlog's share of the hub's budget.
#[derive(Default)]
pub(crate) struct Backlog {
    entries: VecDeque<Stored>,
    bytes: usize,
}

impl Backlog {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes counted against the hub's budget.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The oldest offset kept.
    pub(crate) fn first(&self) -> Option<u64> {
        self.entries.front().map(|m| m.offset)
    }

    pub(crate) fn get(&self, offset: u64) -> Option<&Stored> {
        let first = self.first()?;
        self.entries
            .get(usize::try_from(offset.checked_sub(first)?).ok()?)
    }

    /// Drops messages older than `age`; returns how many it dropped.
    pub(crate) fn expire(&mut self, now: Instant, age: Duration, budget: &Bound) -> usize {
        let mut freed = 0;
        let before = self.entries.len();
        while let Some(m) = self.entries.front() {
            if now.duration_since(m.at) < age {
                break;
            }
            freed += m.cost();
            self.entries.pop_front();
        }
        self.bytes -= freed;
        budget.give_back(freed);
        before - self.entries.len()
    }

    /// Keeps a just-published message within `max_messages` and the hub's memory budget: over
    /// the budget, this backlog gives up its own oldest messages first (never another
    /// channel's); a message that still does not fit is not kept (a later resume is told it was
    /// lost).
    pub(crate) fn keep(
        &mut self,
        offset: Offset,
        now: Instant,
        delivery: Delivery,
        data: &Payload,
        max_messages: usize,
        budget: &Bound,
    ) -> usize {
        // The payload is re-based onto the delivery (the encoder says where it lies) so that the
        // backlog holds one allocation per message and nothing of the publisher's request buffer.
        let payload = data.rebased(delivery.payload_bytes());
        let m = Stored {
            offset: offset.0,
            at: now,
            body: u8::try_from(delivery.body).unwrap_or(0),
            frame: delivery.bytes,
            payload,
        };
        let cost = m.cost();
        let mut freed = 0;
        let before = self.entries.len();
        while self.entries.len() >= max_messages {
            match self.entries.pop_front() {
                Some(old) => freed += old.cost(),
                None => break,
            }
        }
        let limit = budget.max();
        let mut total = budget.add(cost) + cost - freed;
        while total > limit {
            match self.entries.pop_front() {
                Some(old) => {
                    freed += old.cost();
                    total -= old.cost();
                }
                None => break,
            }
        }
        self.bytes -= freed;
        if total > limit {
            // Not even an empty backlog makes room: the message is not kept. The backlog is
            // empty now, so the first kept offset is past this one and resumes see the loss.
            budget.give_back(cost + freed);
            return before + 1;
        }
        budget.give_back(freed);
        self.bytes += cost;
        self.entries.push_back(m);
        before + 1 - self.entries.len()
    }

    /// Frees everything (the channel was deleted).
    pub(crate) fn clear(&mut self, budget: &Bound) {
        budget.give_back(self.bytes);
        self.entries = VecDeque::new();
        self.bytes = 0;
    }

    pub(crate) fn shrink(&mut self) {
        shrink!(self.entries);
    }

    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.entries.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(data: &Payload) -> Delivery {
        let mut f = b"{\"data\":".to_vec();
        f.extend_from_slice(data.json());
        f.push(b'}');
        Delivery {
            payload: 8..f.len() - 1,
            bytes: Bytes::from(f),
            body: 0,
        }
    }

    #[test]
    fn keeps_within_count_and_budget_and_gives_back_what_it_frees() {
        let budget = Bound::new(3 * (STORED_OVERHEAD + 12));
        let mut b = Backlog::default();
        let now = Instant::now();
        for i in 1..=5u64 {
            let data = Payload::text("x");
            b.keep(Offset(i), now, frame_of(&data), &data, 4, &budget);
        }
        assert_eq!(b.len(), 3, "the budget holds three");
        assert_eq!(b.first(), Some(3));
        assert_eq!(budget.used(), b.bytes());
        assert_eq!(&b.get(5).unwrap().payload.json()[..], b"\"x\"");
        assert!(b.get(2).is_none() && b.get(6).is_none());
        b.expire(
            now + Duration::from_secs(2),
            Duration::from_secs(1),
            &budget,
        );
        assert_eq!((b.len(), budget.used()), (0, 0));
    }

    #[test]
    fn a_message_larger_than_the_budget_is_not_kept() {
        let budget = Bound::new(STORED_OVERHEAD);
        let mut b = Backlog::default();
        let data = Payload::text("too big");
        b.keep(
            Offset(1),
            Instant::now(),
            frame_of(&data),
            &data,
            10,
            &budget,
        );
        assert_eq!((b.len(), b.bytes(), budget.used()), (0, 0, 0));
    }
}
