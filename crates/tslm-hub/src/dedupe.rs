//! A channel's `msg_id` table: ids seen within the channel's window, bounded by its count and age
//! and, with every other channel's, by the hub's `max_msg_ids`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::budget::{Bound, shrink};
use crate::settings::ChannelSettings;

#[derive(Default)]
pub(crate) struct Dedupe {
    ids: HashMap<Arc<str>, u64>,
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Dedupe {
    /// The offset of the message published with `id`, if it is remembered.
    pub(crate) fn get(&self, id: &str) -> Option<u64> {
        self.ids.get(id).copied()
    }

    /// Forgets ids past the channel's window or count, and gives them back to the hub's count.
    pub(crate) fn expire(&mut self, now: Instant, settings: &ChannelSettings, global: &Bound) {
        let mut forgotten = 0;
        while let Some((at, id)) = self.order.front() {
            let old = now.duration_since(*at) >= settings.dedupe_window;
            if !old && self.order.len() <= settings.dedupe_max_ids {
                break;
            }
            self.ids.remove(id);
            self.order.pop_front();
            forgotten += 1;
        }
        global.give_back(forgotten);
    }

    /// Remembers a new `id` for `offset` within the channel's count and the hub's: a channel at
    /// its own count forgets its oldest id first (its documented window); at the hub's count the
    /// id is refused (`false`).
    pub(crate) fn remember(
        &mut self,
        id: &str,
        offset: u64,
        now: Instant,
        settings: &ChannelSettings,
        global: &Bound,
    ) -> bool {
        if self.order.len() >= settings.dedupe_max_ids
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
            global.give_back(1);
        }
        if !global.take_one() {
            return false;
        }
        let id: Arc<str> = Arc::from(id);
        self.ids.insert(Arc::clone(&id), offset);
        self.order.push_back((now, id));
        self.expire(now, settings, global);
        true
    }

    /// Forgets every id (the channel was deleted).
    pub(crate) fn clear(&mut self, global: &Bound) {
        global.give_back(std::mem::take(self).order.len());
    }

    pub(crate) fn shrink(&mut self) {
        shrink!(self.ids, self.order);
    }

    #[cfg(test)]
    pub(crate) fn len_and_capacities(&self) -> (usize, usize, usize) {
        (self.ids.len(), self.ids.capacity(), self.order.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_channel_count_and_refuses_beyond_the_hub_count() {
        let settings = ChannelSettings {
            dedupe_max_ids: 2,
            ..ChannelSettings::default()
        };
        let global = Bound::new(3);
        let now = Instant::now();
        let mut a = Dedupe::default();
        assert!(a.remember("1", 1, now, &settings, &global));
        assert!(a.remember("2", 2, now, &settings, &global));
        assert!(a.remember("3", 3, now, &settings, &global));
        assert_eq!((a.get("1"), a.get("3")), (None, Some(3)), "the oldest goes");
        let mut b = Dedupe::default();
        assert!(b.remember("x", 1, now, &settings, &global));
        assert!(!b.remember("y", 2, now, &settings, &global), "hub full");
        assert_eq!(global.used(), 3);
        a.clear(&global);
        assert_eq!(global.used(), 1);
    }
}
