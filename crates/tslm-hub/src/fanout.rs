//! A channel's fan-out on this node: live subscribers per dialect, and the subscriptions still
//! replaying the backlog (the *catching* list, which live publishes skip).

use std::sync::Arc;

use bytes::Bytes;
use tslm_protocol::{ChannelName, Dialect, Offset, Payload, WsFrame, legacy, v1};

use crate::budget::shrink;
use crate::outbox::Outbox;
use crate::settings::SlowPolicy;
use crate::types::ConnId;

pub(crate) struct Sub {
    pub(crate) conn: ConnId,
    pub(crate) outbox: Arc<Outbox>,
}

pub(crate) struct Catching {
    pub(crate) sub: Sub,
    pub(crate) dialect: Dialect,
    /// The next offset to send.
    pub(crate) next: u64,
}

#[derive(Default)]
pub(crate) struct Fanout {
    v1: Vec<Sub>,
    legacy: Vec<Sub>,
    /// Subscriptions still replaying the backlog: live publishes skip them (the backlog holds
    /// what they need); the replay moves them to the live lists once they reach the head.
    pub(crate) catching: Vec<Catching>,
}

impl Fanout {
    fn live_mut(&mut self, dialect: Dialect) -> &mut Vec<Sub> {
        match dialect {
            Dialect::V1 => &mut self.v1,
            Dialect::Legacy => &mut self.legacy,
        }
    }

    /// Live subscribers of `dialect`.
    pub(crate) fn live(&self, dialect: Dialect) -> usize {
        match dialect {
            Dialect::V1 => self.v1.len(),
            Dialect::Legacy => self.legacy.len(),
        }
    }

    /// Subscribers, live or replaying.
    pub(crate) fn count(&self) -> usize {
        self.v1.len() + self.legacy.len() + self.catching.len()
    }

    pub(crate) fn is_live(&self, conn: ConnId) -> bool {
        self.v1.iter().chain(&self.legacy).any(|s| s.conn == conn)
    }

    pub(crate) fn contains(&self, conn: ConnId) -> bool {
        self.is_live(conn) || self.catching.iter().any(|c| c.sub.conn == conn)
    }

    /// Adds a live subscriber.
    pub(crate) fn add_live(&mut self, sub: Sub, dialect: Dialect) {
        self.live_mut(dialect).push(sub);
    }

    /// Moves the replaying subscription `i` to the live list.
    pub(crate) fn go_live(&mut self, i: usize) {
        let c = self.catching.swap_remove(i);
        self.add_live(c.sub, c.dialect);
    }

    /// Removes `conn`'s subscription; returns whether there was one.
    pub(crate) fn remove(&mut self, conn: ConnId) -> bool {
        let mut removed = false;
        for list in [&mut self.v1, &mut self.legacy] {
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

    /// Pushes `frame` (message `offset`, encoded for `dialect`) to every live subscriber of that
    /// dialect, removing those whose outbox closed; returns how many were removed.
    pub(crate) fn deliver(
        &mut self,
        dialect: Dialect,
        frame: &Bytes,
        offset: Offset,
        name: &ChannelName,
        policy: SlowPolicy,
    ) -> usize {
        let subs = self.live_mut(dialect);
        let before = subs.len();
        if policy == SlowPolicy::Disconnect {
            subs.retain(|s| s.outbox.push(frame.clone()).is_ok());
        } else {
            subs.retain(|s| {
                s.outbox
                    .push_delivery(frame.clone(), offset, name, policy)
                    .is_ok()
            });
        }
        before - subs.len()
    }

    /// Ends every subscription with the `closed` frame of its dialect; returns how many ended.
    pub(crate) fn close_all(&mut self, closed_v1: &Bytes, closed_legacy: &Bytes) -> usize {
        let n = self.count();
        let frame = |d: Dialect| match d {
            Dialect::V1 => closed_v1.clone(),
            Dialect::Legacy => closed_legacy.clone(),
        };
        for s in self.v1.drain(..) {
            let _ = s.outbox.push(frame(Dialect::V1));
        }
        for s in self.legacy.drain(..) {
            let _ = s.outbox.push(frame(Dialect::Legacy));
        }
        for c in self.catching.drain(..) {
            let _ = c.sub.outbox.push(frame(c.dialect));
        }
        n
    }

    pub(crate) fn shrink(&mut self) {
        shrink!(self.v1, self.legacy, self.catching);
    }
}

/// The v1 delivery of a message as a complete WebSocket frame.
pub(crate) fn encode_v1_frame(name: &ChannelName, offset: Offset, data: &Payload) -> Bytes {
    WsFrame::text(&v1::encode_delivery(name, offset, data))
        .bytes()
        .clone()
}

/// The original-protocol delivery of a message as a complete WebSocket frame.
pub(crate) fn encode_legacy_frame(name: &ChannelName, data: &Payload) -> Bytes {
    WsFrame::text(&legacy::encode_delivery(name, data))
        .bytes()
        .clone()
}
