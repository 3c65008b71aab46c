//! Reply routes: which connection published each recent message of a channel with replies, and
//! the hub-wide table of those connections' outboxes.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use dashmap::DashMap;

use crate::budget::{Bound, shrink};
use crate::outbox::Outbox;
use crate::types::ConnId;

/// The publisher of each of a channel's last `reply_window` offsets (`None` for a publish over
/// HTTP), a contiguous run ending at the newest, so a reply finds its route by subtraction.
#[derive(Default)]
pub(crate) struct ReplyRoutes {
    routes: VecDeque<(u64, Option<ConnId>)>,
}

impl ReplyRoutes {
    /// Keeps the publisher of `offset`, within `window` and the hub's `max_reply_routes`: at the
    /// hub's bound the channel gives up its own oldest route; one that has none keeps no route
    /// (a reply to that message is refused as not found).
    pub(crate) fn keep(
        &mut self,
        offset: u64,
        publisher: Option<ConnId>,
        window: usize,
        global: &Bound,
    ) {
        if window == 0 {
            return;
        }
        // Room: the channel's own window gives up its oldest, else the hub's count takes one,
        // else (the hub is full) the channel gives up its own oldest. A gap in the routes would
        // misplace every later reply: with none to give up, the run restarts at the next message
        // with room.
        let room = (self.routes.len() >= window && self.routes.pop_front().is_some())
            || global.take_one()
            || self.routes.pop_front().is_some();
        if room {
            self.routes.push_back((offset, publisher));
        }
    }

    /// The route of `offset`: `None` when it is not kept, `Some(None)` when its publisher has no
    /// connection to reply over.
    pub(crate) fn route(&self, offset: u64) -> Option<Option<ConnId>> {
        let first = self.routes.front()?.0;
        let i = usize::try_from(offset.checked_sub(first)?).ok()?;
        self.routes.get(i).map(|r| r.1)
    }

    /// Forgets every route (the channel was deleted).
    pub(crate) fn clear(&mut self, global: &Bound) {
        global.give_back(std::mem::take(&mut self.routes).len());
    }

    pub(crate) fn shrink(&mut self) {
        shrink!(self.routes);
    }
}

/// Connections that published on channels with replies, to route replies to.
#[derive(Default)]
pub(crate) struct Publishers {
    outboxes: DashMap<ConnId, Weak<Outbox>>,
}

impl Publishers {
    pub(crate) fn register(&self, conn: ConnId, outbox: &Arc<Outbox>) {
        if !self.outboxes.contains_key(&conn) {
            self.outboxes.insert(conn, Arc::downgrade(outbox));
        }
    }

    pub(crate) fn forget(&self, conn: ConnId) {
        self.outboxes.remove(&conn);
    }

    /// The outbox of `conn`, while its connection lives.
    pub(crate) fn outbox(&self, conn: ConnId) -> Option<Arc<Outbox>> {
        self.outboxes.get(&conn).and_then(|w| w.upgrade())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_a_window_found_by_offset() {
        let global = Bound::new(10);
        let mut r = ReplyRoutes::default();
        for o in 1..=5 {
            r.keep(o, (o != 4).then_some(ConnId(o)), 3, &global);
        }
        assert_eq!(r.route(2), None, "left the window");
        assert_eq!(r.route(3), Some(Some(ConnId(3))));
        assert_eq!(r.route(4), Some(None), "published without a connection");
        assert_eq!(r.route(6), None);
        assert_eq!(global.used(), 3);
        r.clear(&global);
        assert_eq!(global.used(), 0);
    }
}
