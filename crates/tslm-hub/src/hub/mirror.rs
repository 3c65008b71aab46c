//! Mirrors: this node's copy of channels whose log lives in a shared store (cluster mode).
//!
//! A mirror is an ordinary hub channel (same fan-out, backlog, replay and resume) whose epoch and
//! offsets are chosen by the store. It accepts a message only at exactly the next offset
//! ([`Hub::mirror_append`] answers [`Appended::Ahead`] otherwise, and the caller heals the hole
//! from the store), and it is told explicitly when messages are gone from the store
//! ([`Hub::mirror_skip`]: a `gap` event to every live subscriber) or when the store's log
//! restarted ([`Hub::mirror_close`] with reason `epoch_changed`). The hub itself never decides
//! an offset of a mirror.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tslm_protocol::{ChannelName, Delivery, Epoch, Offset, Payload, Wire};

use super::Hub;
use crate::backlog::BACKLOG_WIRE;
use crate::channel::Channel;
use crate::counters::add;
use crate::outbox::{Outbox, PushError};
use crate::settings::ChannelSettings;
use crate::types::{ConnId, HubError, ReplyError};

/// One message of a shared log, as a mirror takes it.
#[derive(Debug, Clone)]
pub struct MirrorEntry {
    pub offset: Offset,
    pub data: Payload,
    /// How long ago it was published (for the backlog's age limit).
    pub age: Duration,
    /// The connection that published it, for replies (`None`: nobody to reply to).
    pub route: Option<ConnId>,
}

/// What [`Hub::mirror_append`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Delivered and kept: it was the next offset.
    Applied,
    /// Already there (an offset at or before the mirror's last): ignored.
    Stale,
    /// Past the next offset: messages are missing before it; nothing was done.
    Ahead { expected: Offset },
    /// The mirror has another epoch: the store's log restarted.
    OtherEpoch { mirror: Epoch },
    /// No mirror of that channel on this node.
    Missing,
}

impl Hub {
    /// Opens a mirror of `name` at `epoch` whose newest offset is `last`, holding `entries` (the
    /// newest messages of the store's backlog, oldest first). Returns `false` when a mirror
    /// already exists (it is left as it is); refused like a create at `max_channels`.
    pub fn mirror_open(
        &self,
        name: &ChannelName,
        settings: ChannelSettings,
        epoch: Epoch,
        last: Offset,
        entries: Vec<MirrorEntry>,
    ) -> Result<bool, HubError> {
        use dashmap::mapref::entry::Entry;
        let ch = match self.inner.channels.entry(name.clone()) {
            Entry::Occupied(_) => return Ok(false),
            Entry::Vacant(e) => {
                if !self.inner.channel_count.take_one() {
                    return Err(HubError::TooManyChannels {
                        max: self.inner.channel_count.max(),
                    });
                }
                let ch = Arc::new(Channel::with_epoch(name.clone(), settings, epoch));
                e.insert(Arc::clone(&ch));
                ch
            }
        };
        let mut guard = ch.lock();
        let st = &mut *guard;
        let first = entries.first().map_or(last.0 + 1, |e| e.offset.0);
        st.log.last_offset = first.saturating_sub(1);
        let now = Instant::now();
        for e in entries {
            if e.offset.0 != st.log.last_offset + 1 || e.offset > last {
                continue;
            }
            st.log.last_offset = e.offset.0;
            let mut deliveries: [Option<Delivery>; Wire::COUNT] = Default::default();
            if ch.settings.backlog_messages > 0 {
                deliveries[BACKLOG_WIRE.index()] =
                    Some(BACKLOG_WIRE.delivery(name, e.offset, &e.data));
            }
            let at = now.checked_sub(e.age).unwrap_or(now);
            self.append_locked(
                &ch,
                st,
                e.offset,
                e.offset,
                &e.data,
                &mut deliveries,
                Some(at),
                e.route,
            );
        }
        st.log.last_offset = last.0;
        ch.mirror(st);
        Ok(true)
    }

    /// The epoch and newest offset of this node's mirror of `name`.
    pub fn mirror_head(&self, name: &ChannelName) -> Option<(Epoch, Offset)> {
        let ch = self.channel(name).ok()?;
        let st = ch.lock();
        (!st.deleted).then_some((ch.epoch, Offset(st.log.last_offset)))
    }

    /// Takes message `entry` of the store's log of `name` at `epoch`: delivered to this node's
    /// subscribers and kept only when it is exactly the next offset.
    pub fn mirror_append(&self, name: &ChannelName, epoch: Epoch, entry: &MirrorEntry) -> Appended {
        let Ok(ch) = self.channel(name) else {
            return Appended::Missing;
        };
        if ch.epoch != epoch {
            return Appended::OtherEpoch { mirror: ch.epoch };
        }
        let settings = &ch.settings;
        let keeps = settings.backlog_messages > 0;
        let mut deliveries: [Option<Delivery>; Wire::COUNT] = Default::default();
        for wire in Wire::ALL {
            if ch.live(wire) > 0 || (keeps && wire == BACKLOG_WIRE) {
                deliveries[wire.index()] = Some(wire.delivery(name, entry.offset, &entry.data));
            }
        }
        let now = Instant::now();
        let at = now.checked_sub(entry.age).unwrap_or(now);
        let mut guard = ch.lock();
        let st = &mut *guard;
        if st.deleted {
            return Appended::Missing;
        }
        let expected = st.log.last_offset + 1;
        if entry.offset.0 < expected {
            return Appended::Stale;
        }
        if entry.offset.0 > expected {
            return Appended::Ahead {
                expected: Offset(expected),
            };
        }
        st.log.last_offset = entry.offset.0;
        let pushed = self.append_locked(
            &ch,
            st,
            entry.offset,
            entry.offset,
            &entry.data,
            &mut deliveries,
            Some(at),
            entry.route,
        );
        ch.mirror(st);
        drop(guard);
        self.count_append(settings, pushed);
        Appended::Applied
    }

    /// Takes a run of messages of the store's log of `name` at `epoch` (as they came, oldest
    /// first) as [`Hub::mirror_append`] would one by one, under one lock of the channel: those
    /// at or before the mirror's newest offset are ignored, the next offset and those following
    /// it without a hole are delivered and kept, and the first one past a hole stops the run
    /// (it and the rest are left for the heal, as [`Appended::Ahead`]). Each live subscriber
    /// gets the delivered messages in one push: woken once for the run, it writes them in one
    /// batch.
    ///
    /// Returns how many were delivered and what stopped the run: [`Appended::Ahead`],
    /// [`Appended::OtherEpoch`] or [`Appended::Missing`] as for one message, otherwise
    /// [`Appended::Applied`] (at least one delivered) or [`Appended::Stale`] (none).
    pub fn mirror_append_batch(
        &self,
        name: &ChannelName,
        epoch: Epoch,
        entries: &[MirrorEntry],
    ) -> (usize, Appended) {
        let Ok(ch) = self.channel(name) else {
            return (0, Appended::Missing);
        };
        if ch.epoch != epoch {
            return (0, Appended::OtherEpoch { mirror: ch.epoch });
        }
        let settings = &ch.settings;
        let keeps = settings.backlog_messages > 0;
        let needs = |wire: Wire, live: usize| live > 0 || (keeps && wire == BACKLOG_WIRE);
        // Encoded outside the lock for the wires that have live subscribers now (a wire that
        // gains its first one meanwhile is encoded under the lock).
        let mut deliveries: [Vec<Delivery>; Wire::COUNT] = Default::default();
        for wire in Wire::ALL {
            if needs(wire, ch.live(wire)) {
                deliveries[wire.index()] = entries
                    .iter()
                    .map(|e| wire.delivery(name, e.offset, &e.data))
                    .collect();
            }
        }
        let now = Instant::now();
        let mut guard = ch.lock();
        let st = &mut *guard;
        if st.deleted {
            return (0, Appended::Missing);
        }
        // Which entries follow the mirror's newest offset without a hole.
        let mut next = st.log.last_offset + 1;
        let mut taken = Vec::with_capacity(entries.len());
        let mut stop = None;
        for (i, e) in entries.iter().enumerate() {
            if e.offset.0 < next {
                continue;
            }
            if e.offset.0 > next {
                stop = Some(Appended::Ahead {
                    expected: Offset(next),
                });
                break;
            }
            taken.push(i);
            next += 1;
        }
        let Some(&last) = taken.last() else {
            return (0, stop.unwrap_or(Appended::Stale));
        };
        st.log.last_offset = entries[last].offset.0;
        if settings.replies {
            for &i in &taken {
                let e = &entries[i];
                st.log.routes.keep(
                    e.offset.0,
                    e.route,
                    settings.reply_window,
                    &self.inner.routes,
                );
            }
        }
        let mut pushed = crate::fanout::Pushed::default();
        for wire in Wire::ALL {
            if st.fanout.live(wire) == 0 {
                continue;
            }
            let encoded = &deliveries[wire.index()];
            let frames: Vec<(bytes::Bytes, Offset)> = taken
                .iter()
                .map(|&i| {
                    let e = &entries[i];
                    let bytes = match encoded.get(i) {
                        Some(d) => d.bytes.clone(),
                        None => wire.delivery(name, e.offset, &e.data).bytes,
                    };
                    (bytes, e.offset)
                })
                .collect();
            let p = st
                .fanout
                .deliver_many(wire, &frames, (ch.key, name), settings.slow_policy);
            pushed.removed += p.removed;
            pushed.delivered += p.delivered;
            pushed.dropped += p.dropped;
        }
        if keeps {
            let budget = &self.inner.backlog_bytes;
            let mut kept: Vec<Option<Delivery>> =
                std::mem::take(&mut deliveries[BACKLOG_WIRE.index()])
                    .into_iter()
                    .map(Some)
                    .collect();
            let mut evicted = 0;
            for &i in &taken {
                let e = &entries[i];
                let d = kept
                    .get_mut(i)
                    .and_then(Option::take)
                    .unwrap_or_else(|| BACKLOG_WIRE.delivery(name, e.offset, &e.data));
                let at = now.checked_sub(e.age).unwrap_or(now);
                let backlog = &mut st.log.backlog;
                evicted += backlog.expire(Instant::now(), settings.backlog_age, budget)
                    + backlog.keep(e.offset, at, d, &e.data, settings.backlog_messages, budget);
            }
            add(&self.inner.counters.backlog_evicted, evicted);
        }
        ch.mirror(st);
        drop(guard);
        self.count_appends(settings, pushed, taken.len());
        (taken.len(), stop.unwrap_or(Appended::Applied))
    }

    /// Moves the mirror of `name` past messages the store no longer has, up to `to`: every live
    /// subscriber gets one `gap` event for them (on wires that can say so), and the backlog is
    /// emptied (what it held is older than anything the store still has). Returns whether the
    /// mirror moved.
    pub fn mirror_skip(&self, name: &ChannelName, epoch: Epoch, to: Offset) -> bool {
        let Ok(ch) = self.channel(name) else {
            return false;
        };
        if ch.epoch != epoch {
            return false;
        }
        let mut guard = ch.lock();
        let st = &mut *guard;
        if st.deleted || to.0 <= st.log.last_offset {
            return false;
        }
        let from = Offset(st.log.last_offset + 1);
        let mut removed = 0;
        for wire in Wire::ALL {
            if st.fanout.live(wire) == 0 {
                continue;
            }
            if let Some(gap) = wire.gap(name, from, to) {
                removed += st.fanout.announce(wire, &gap);
            }
        }
        st.log.backlog.clear(&self.inner.backlog_bytes);
        st.log.last_offset = to.0;
        ch.mirror(st);
        drop(guard);
        self.inner.subscriptions.give_back(removed);
        tracing::debug!(channel = %name, %from, %to, "mirror: messages gone from the store");
        true
    }

    /// Ends the mirror of `name`: its subscribers get a `closed` event with `reason`
    /// (`deleted`, or `epoch_changed` when the store's log restarted). Returns whether there
    /// was one.
    pub fn mirror_close(&self, name: &ChannelName, reason: &str) -> bool {
        match self.inner.channels.remove(name) {
            Some((_, ch)) => {
                self.retire(&ch, reason);
                true
            }
            None => false,
        }
    }

    /// Ends the mirror of `name` if nobody on this node subscribes to it; returns whether it
    /// ended.
    pub fn mirror_drop_idle(&self, name: &ChannelName) -> bool {
        let removed = self
            .inner
            .channels
            .remove_if(name, |_, ch| ch.lock().fanout.count() == 0);
        match removed {
            Some((_, ch)) => {
                self.retire(&ch, "deleted");
                true
            }
            None => false,
        }
    }

    /// The names of every channel this node holds (mirrors, in cluster mode).
    pub fn channel_names(&self) -> Vec<ChannelName> {
        self.inner
            .channels
            .iter()
            .map(|e| e.key().clone())
            .collect()
    }

    /// The connection that published message `offset` of `name`, after the checks of a reply
    /// (the channel allows replies, the reply fits, the message is within the reply window and
    /// its publisher had a connection to reply over).
    pub fn reply_route(
        &self,
        name: &ChannelName,
        offset: Offset,
        len: usize,
    ) -> Result<ConnId, ReplyError> {
        let ch = self
            .channel(name)
            .map_err(|_| ReplyError::NotFound(name.clone()))?;
        let settings = &ch.settings;
        if !settings.replies {
            return Err(ReplyError::NotAllowed(name.clone()));
        }
        if len > settings.max_reply_bytes {
            return Err(ReplyError::TooLarge {
                channel: name.clone(),
                len,
                max: settings.max_reply_bytes,
            });
        }
        let route = {
            let st = ch.lock();
            if st.deleted {
                return Err(ReplyError::NotFound(name.clone()));
            }
            st.log.routes.route(offset.0)
        };
        route
            .ok_or_else(|| ReplyError::NoSuchMessage {
                channel: name.clone(),
                offset,
            })?
            .ok_or_else(|| ReplyError::Gone {
                channel: name.clone(),
                offset,
            })
    }

    /// Hands a reply to message `offset` of `name` from `replier` to the local publisher
    /// connection `conn` (a reply that came from another node).
    pub fn deliver_reply(
        &self,
        conn: ConnId,
        name: &ChannelName,
        offset: Offset,
        replier: ConnId,
        data: &Payload,
    ) -> Result<(), ReplyError> {
        let gone = || ReplyError::Gone {
            channel: name.clone(),
            offset,
        };
        let outbox = self.inner.publishers.outbox(conn).ok_or_else(gone)?;
        let event = Wire::V1Ws
            .reply(name, offset, &replier.to_string(), data)
            .ok_or_else(gone)?;
        match outbox.try_push(event) {
            Ok(()) => {
                add(&self.inner.counters.replies, 1);
                Ok(())
            }
            Err(PushError::Full) => Err(ReplyError::Busy {
                channel: name.clone(),
                offset,
            }),
            Err(_) => Err(gone()),
        }
    }

    /// Remembers `conn` (and its outbox) as a connection replies may be handed to.
    pub fn register_publisher(&self, conn: ConnId, outbox: &Arc<Outbox>) {
        self.inner.publishers.register(conn, outbox);
    }

    /// This hub's node number.
    pub fn node(&self) -> u16 {
        self.inner.node
    }
}
