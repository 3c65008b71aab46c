//! A channel's fan-out on this node: live subscribers per wire, and the subscriptions still
//! replaying the backlog (the *catching* list, which live publishes skip).

use std::sync::Arc;

use bytes::Bytes;
use tslm_protocol::{ChannelName, Offset, Wire};

use crate::budget::shrink;
use crate::outbox::{Batch, Outbox, Tagged};
use crate::settings::SlowPolicy;
use crate::types::ConnId;

pub(crate) struct Sub {
    pub(crate) conn: ConnId,
    pub(crate) outbox: Arc<Outbox>,
}

pub(crate) struct Catching {
    pub(crate) sub: Sub,
    pub(crate) wire: Wire,
    /// The next offset to send.
    pub(crate) next: u64,
}

/// What one message's fan-out on one wire did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pushed {
    /// Subscribers removed: their outbox closed.
    pub(crate) removed: usize,
    /// Subscribers the message was queued for.
    pub(crate) delivered: usize,
    /// Messages the subscribers' lossy policies dropped to make room.
    pub(crate) dropped: usize,
}

#[derive(Default)]
pub(crate) struct Fanout {
    /// Live subscribers, by [`Wire::index`].
    live: [Vec<Sub>; Wire::COUNT],
    /// Subscriptions still replaying the backlog: live publishes skip them (the backlog holds
    /// what they need); the replay moves them to the live lists once they reach the head.
    pub(crate) catching: Vec<Catching>,
}

impl Fanout {
    /// Live subscribers of `wire`.
    pub(crate) fn live(&self, wire: Wire) -> usize {
        self.live[wire.index()].len()
    }

    /// Subscribers, live or replaying.
    pub(crate) fn count(&self) -> usize {
        self.live.iter().map(Vec::len).sum::<usize>() + self.catching.len()
    }

    pub(crate) fn is_live(&self, conn: ConnId) -> bool {
        self.live.iter().flatten().any(|s| s.conn == conn)
    }

    pub(crate) fn contains(&self, conn: ConnId) -> bool {
        self.is_live(conn) || self.catching.iter().any(|c| c.sub.conn == conn)
    }

    /// Adds a live subscriber.
    pub(crate) fn add_live(&mut self, sub: Sub, wire: Wire) {
        self.live[wire.index()].push(sub);
    }

    /// Moves the replaying subscription `i` to the live list.
    pub(crate) fn go_live(&mut self, i: usize) {
        let c = self.catching.swap_remove(i);
        self.add_live(c.sub, c.wire);
    }

    /// Removes `conn`'s subscription; returns whether there was one.
    pub(crate) fn remove(&mut self, conn: ConnId) -> bool {
        let mut removed = false;
        for list in &mut self.live {
            if let Some(i) = list.iter().position(|s| s.conn == conn) {
                list.swap_remove(i);
                removed = true;
            }
        }
        if let Some(i) = self.catching.iter().position(|c| c.sub.conn == conn) {
            self.catching.swap_remove(i);
            removed = true;
        }
        removed
    }

    /// Pushes `frame` (message `offset` of the channel `key`, encoded for `wire`) to every live
    /// subscriber of that wire, removing those whose outbox closed. A wire that cannot announce a
    /// gap only knows the `disconnect` policy.
    pub(crate) fn deliver(
        &mut self,
        wire: Wire,
        frame: &Bytes,
        offset: Offset,
        (key, name): (u64, &ChannelName),
        policy: SlowPolicy,
    ) -> Pushed {
        let subs = &mut self.live[wire.index()];
        let before = subs.len();
        let (mut dropped, mut not_queued) = (0, 0);
        if policy == SlowPolicy::Disconnect || !wire.has_offsets() {
            subs.retain(|s| s.outbox.push(frame.clone()).is_ok());
        } else {
            let tagged = Tagged {
                key,
                channel: name,
                wire,
                offset,
            };
            subs.retain(
                |s| match s.outbox.push_delivery(frame.clone(), &tagged, policy) {
                    Ok(d) => {
                        dropped += d.earlier + usize::from(d.this);
                        not_queued += usize::from(d.this);
                        true
                    }
                    Err(_) => false,
                },
            );
        }
        Pushed {
            removed: before - subs.len(),
            delivered: subs.len() - not_queued,
            dropped,
        }
    }

    /// Pushes `frames` (consecutive messages of the channel `key`, oldest first, each with its
    /// offset, encoded for `wire`) to every live subscriber of that wire, as [`Fanout::deliver`]
    /// would one by one, but all of a subscriber's at once: each subscriber is woken once for
    /// the whole run and writes it in one batch.
    pub(crate) fn deliver_many(
        &mut self,
        wire: Wire,
        frames: &[(Bytes, Offset)],
        (key, name): (u64, &ChannelName),
        policy: SlowPolicy,
    ) -> Pushed {
        let subs = &mut self.live[wire.index()];
        let before = subs.len();
        let (mut dropped, mut not_queued) = (0, 0);
        let batch = Batch {
            key,
            channel: name,
            wire,
            tagged: policy != SlowPolicy::Disconnect && wire.has_offsets(),
        };
        subs.retain(|s| match s.outbox.push_deliveries(frames, &batch, policy) {
            Ok(d) => {
                dropped += d.earlier + d.these;
                not_queued += d.these;
                true
            }
            Err(_) => false,
        });
        Pushed {
            removed: before - subs.len(),
            delivered: subs.len() * frames.len() - not_queued,
            dropped,
        }
    }

    /// Pushes `frame` (an event that is not a message, e.g. a `gap`) to every live subscriber of
    /// `wire`, removing those whose outbox closed; returns how many were removed.
    pub(crate) fn announce(&mut self, wire: Wire, frame: &Bytes) -> usize {
        let subs = &mut self.live[wire.index()];
        let before = subs.len();
        subs.retain(|s| s.outbox.push(frame.clone()).is_ok());
        before - subs.len()
    }

    /// Ends every subscription with the `closed` bytes of its wire (by [`Wire::index`]); returns
    /// how many ended.
    pub(crate) fn close_all(&mut self, closed: &[Bytes; Wire::COUNT]) -> usize {
        let n = self.count();
        for (list, frame) in self.live.iter_mut().zip(closed) {
            for s in list.drain(..) {
                let _ = s.outbox.push(frame.clone());
            }
        }
        for c in self.catching.drain(..) {
            let _ = c.sub.outbox.push(closed[c.wire.index()].clone());
        }
        n
    }

    pub(crate) fn shrink(&mut self) {
        for list in &mut self.live {
            shrink!(list);
        }
        shrink!(self.catching);
    }
}
