//! The channel registry and the public operations: each looks a channel up in the sharded map
//! and does its work on that channel's state under the channel's lock.

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tslm_protocol::{
    ChannelInfo, ChannelName, Delivery, Epoch, Offset, Payload, Start, Subscription, Wire,
};

use crate::backlog::BACKLOG_WIRE;
use crate::budget::Bound;
use crate::channel::Channel;
use crate::channel::State;
use crate::counters::{Counters, add, get};
use crate::fanout::{Catching, Pushed, Sub};
use crate::outbox::{Outbox, PushError};
use crate::replay::Step;
use crate::replies::Publishers;
use crate::settings::{ChannelSettings, SlowPolicy};
use crate::types::{
    CHANNEL_INFO_BYTES, CatchUp, ConnId, Created, HISTORY_ENTRY_BYTES, History, HubError,
    HubLimits, HubStats, PublishOptions, Published, ReplyError, Subscribed,
};

mod mirror;
pub use mirror::{Appended, MirrorEntry};

/// The channel registry and fan-out engine. Cloning is cheap and shares the hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::with_limits(HubLimits::default())
    }
}

struct Inner {
    channels: DashMap<ChannelName, Arc<Channel>>,
    /// Channels in `channels`, counted against `max_channels` as they are inserted.
    channel_count: Bound,
    /// `msg_id`s in every channel's `Dedupe`, against `max_msg_ids`.
    msg_ids: Bound,
    /// Entries of every channel's `ReplyRoutes`, against `max_reply_routes`.
    routes: Bound,
    subscriptions: Bound,
    /// Bytes of every channel's `Backlog`, against `backlog_memory_bytes`.
    backlog_bytes: Bound,
    next_conn: AtomicU64,
    /// This node's number in the top bits of every connection id it hands out (0 on a single
    /// node), so that an id names its node across a cluster.
    node: u16,
    /// Connections that published on channels with replies, to route replies to.
    publishers: Publishers,
    counters: Counters,
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limits(limits: HubLimits) -> Self {
        Self::on_node(limits, 0)
    }

    /// A hub whose connection ids name `node` ([`ConnId::node`]).
    pub fn on_node(limits: HubLimits, node: u16) -> Self {
        Self {
            inner: Arc::new(Inner {
                channels: DashMap::new(),
                channel_count: Bound::new(limits.max_channels),
                msg_ids: Bound::new(limits.max_msg_ids),
                routes: Bound::new(limits.max_reply_routes),
                subscriptions: Bound::new(limits.max_subscriptions),
                backlog_bytes: Bound::new(limits.backlog_memory_bytes),
                next_conn: AtomicU64::new(0),
                node,
                publishers: Publishers::default(),
                counters: Counters::default(),
            }),
        }
    }

    /// A fresh connection id, qualified by this hub's node.
    pub fn next_conn_id(&self) -> ConnId {
        let n = self.inner.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        ConnId::on_node(self.inner.node, n)
    }

    pub(crate) fn channel(&self, name: &ChannelName) -> Result<Arc<Channel>, HubError> {
        self.inner
            .channels
            .get(name)
            .map(|c| Arc::clone(c.value()))
            .ok_or_else(|| HubError::NotFound(name.clone()))
    }

    /// Creates `name` with the default settings; returns `false` when it already existed, or
    /// when the hub holds [`HubLimits::max_channels`] (for tests and embedders; see
    /// [`Hub::create_with`]).
    pub fn create(&self, name: &ChannelName) -> bool {
        self.create_with(name, ChannelSettings::default())
            .is_ok_and(|c| c.created)
    }

    /// Creates `name` with `settings` (creation is idempotent: an existing channel keeps its
    /// settings and epoch). Refused with [`HubError::TooManyChannels`] when the hub already holds
    /// [`HubLimits::max_channels`].
    pub fn create_with(
        &self,
        name: &ChannelName,
        settings: ChannelSettings,
    ) -> Result<Created, HubError> {
        match self.inner.channels.entry(name.clone()) {
            Entry::Occupied(e) => Ok(Created {
                created: false,
                epoch: e.get().epoch,
            }),
            Entry::Vacant(e) => {
                if !self.inner.channel_count.take_one() {
                    return Err(HubError::TooManyChannels {
                        max: self.inner.channel_count.max(),
                    });
                }
                let ch = Arc::new(Channel::new(name.clone(), settings));
                let epoch = ch.epoch;
                e.insert(ch);
                Ok(Created {
                    created: true,
                    epoch,
                })
            }
        }
    }

    pub fn exists(&self, name: &ChannelName) -> bool {
        self.inner.channels.contains_key(name)
    }

    /// The settings `name` was created with.
    pub fn settings(&self, name: &ChannelName) -> Result<ChannelSettings, HubError> {
        Ok(self.channel(name)?.settings.clone())
    }

    /// Deletes `name`: its subscribers get a `closed` event (original-protocol subscribers a
    /// "Channel not found" error) and lose their subscription, its backlog is freed, and a
    /// channel created later under the same name starts a new epoch.
    pub fn delete(&self, name: &ChannelName) -> Result<(), HubError> {
        let (_, ch) = self
            .inner
            .channels
            .remove(name)
            .ok_or_else(|| HubError::NotFound(name.clone()))?;
        self.retire(&ch, "deleted");
        Ok(())
    }

    /// Frees a channel taken out of the registry: its subscribers get a `closed` event with
    /// `reason` and lose their subscription.
    pub(crate) fn retire(&self, ch: &Channel, reason: &str) -> usize {
        self.inner.channel_count.give_back(1);
        let name = &ch.name;
        let closed = Wire::ALL.map(|w| w.closed(name, reason));
        let mut guard = ch.lock();
        let st = &mut *guard;
        st.deleted = true;
        st.log.backlog.clear(&self.inner.backlog_bytes);
        st.log.routes.clear(&self.inner.routes);
        st.log.dedupe.clear(&self.inner.msg_ids);
        let subs = st.fanout.close_all(&closed);
        ch.mirror(st);
        drop(guard);
        self.inner.subscriptions.give_back(subs);
        tracing::debug!(channel = %name, subscribers = subs, reason, "channel ended");
        subs
    }

    /// Subscribes connection `conn` to `name`, starting at `start`: from then on every message
    /// of the channel is pushed into `outbox`, encoded for `wire` (the bytes that connection
    /// writes as they are). When the start lies in the backlog the answer says `catching_up`, and the
    /// connection pulls the replay with [`Hub::catch_up`]; live messages join seamlessly after
    /// it (no duplicate, no gap: the subscription turns live under the channel lock, exactly at
    /// the head).
    pub fn subscribe(
        &self,
        name: &ChannelName,
        conn: ConnId,
        wire: Wire,
        outbox: &Arc<Outbox>,
        start: Start,
    ) -> Result<Subscribed, HubError> {
        let ch = self.channel(name)?;
        let mut guard = ch.lock();
        let st = &mut *guard;
        if st.deleted {
            return Err(HubError::NotFound(name.clone()));
        }
        let evicted = st.log.backlog.expire(
            Instant::now(),
            ch.settings.backlog_age,
            &self.inner.backlog_bytes,
        );
        add(&self.inner.counters.backlog_evicted, evicted);
        let last = st.log.last_offset;
        let subscribed = |from: u64, recovery, catching_up, already| Subscribed {
            already,
            subscription: Subscription {
                epoch: ch.epoch,
                offset: Offset(last),
                from: Offset(from),
                recovery,
            },
            catching_up,
        };
        if st.fanout.contains(conn) {
            return Ok(subscribed(last + 1, None, false, true));
        }
        if let Some(max) = ch.settings.max_subscribers
            && st.fanout.count() >= max
        {
            return Err(HubError::Full {
                channel: name.clone(),
                max,
            });
        }
        let (from, recovery) = ch.start_at(&st.log, start)?;
        if !self.inner.subscriptions.take_one() {
            return Err(HubError::TooManySubscriptions {
                max: self.inner.subscriptions.max(),
            });
        }
        let sub = Sub {
            conn,
            outbox: Arc::clone(outbox),
        };
        let catching_up = from <= last;
        if catching_up {
            st.fanout.catching.push(Catching {
                sub,
                wire,
                next: from,
            });
        } else {
            st.fanout.add_live(sub, wire);
            ch.mirror(st);
        }
        drop(guard);
        self.inner.counters.resume(recovery);
        add(&self.inner.counters.subscribes, 1);
        Ok(subscribed(from, recovery, catching_up, false))
    }

    /// Pushes the next part of `conn`'s replay of `name` into its outbox: at most `max_frames`
    /// frames and about `max_bytes` (at least one frame). When the replay reaches the channel's
    /// head the subscription turns live. Messages that left the backlog while the replay was
    /// under way are announced with a `gap` event (on wires that have one) and skipped.
    pub fn catch_up(
        &self,
        name: &ChannelName,
        conn: ConnId,
        max_frames: usize,
        max_bytes: usize,
    ) -> CatchUp {
        let Ok(ch) = self.channel(name) else {
            return CatchUp::Gone;
        };
        let mut guard = ch.lock();
        match guard.replay(name, conn, max_frames, max_bytes, &self.inner.counters) {
            Step::Answer(CatchUp::Done) => {
                ch.mirror(&guard);
                CatchUp::Done
            }
            Step::Answer(other) => other,
            Step::Ended => {
                drop(guard);
                self.inner.subscriptions.give_back(1);
                CatchUp::Gone
            }
        }
    }

    /// Removes `conn`'s subscription to `name`; returns whether there was one.
    pub fn unsubscribe(&self, name: &ChannelName, conn: ConnId) -> bool {
        let Ok(ch) = self.channel(name) else {
            return false;
        };
        let mut guard = ch.lock();
        let removed = guard.fanout.remove(conn);
        ch.mirror(&guard);
        drop(guard);
        if removed {
            self.inner.subscriptions.give_back(1);
        }
        removed
    }

    /// Whether `conn` is subscribed to `name` (live or replaying).
    pub fn is_subscribed(&self, name: &ChannelName, conn: ConnId) -> bool {
        self.channel(name)
            .is_ok_and(|ch| ch.lock().fanout.contains(conn))
    }

    /// Publishes `data` to `name` and returns its offset (no `msg_id`, no reply route).
    pub fn publish(&self, name: &ChannelName, data: &Payload) -> Result<Offset, HubError> {
        self.publish_with(name, data, PublishOptions::default())
            .map(|p| p.offset)
    }

    /// Publishes `data` to `name`.
    ///
    /// The delivery for each wire that needs one (a wire with live subscribers, and the
    /// backlog's) is encoded once, outside the channel lock, for the offset the message will
    /// most likely get; under the lock the offset is assigned, the message kept in the backlog
    /// and the shared bytes pushed into every live subscriber's outbox (a refcount each). Only
    /// when another publisher to the same channel won the race for that offset are the
    /// deliveries that name their offset re-encoded under the lock. Subscribers whose outbox
    /// closed are dropped from the channel here.
    pub fn publish_with(
        &self,
        name: &ChannelName,
        data: &Payload,
        opts: PublishOptions<'_>,
    ) -> Result<Published, HubError> {
        let ch = self.channel(name)?;
        let settings = &ch.settings;
        if data.len() > settings.max_message_bytes {
            return Err(HubError::TooLarge {
                channel: name.clone(),
                len: data.len(),
                max: settings.max_message_bytes,
            });
        }
        let keeps = settings.backlog_messages > 0;
        let guess = Offset(ch.last_offset() + 1);
        let needs = |wire: Wire, live: usize| live > 0 || (keeps && wire == BACKLOG_WIRE);
        let mut deliveries: [Option<Delivery>; Wire::COUNT] = Default::default();
        for wire in Wire::ALL {
            if needs(wire, ch.live(wire)) {
                deliveries[wire.index()] = Some(wire.delivery(name, guess, data));
            }
        }
        let dedupe = opts
            .msg_id
            .filter(|_| !settings.dedupe_window.is_zero() && settings.dedupe_max_ids > 0);
        let now = (keeps || dedupe.is_some()).then(Instant::now);

        let mut guard = ch.lock();
        let st = &mut *guard;
        if st.deleted {
            return Err(HubError::NotFound(name.clone()));
        }
        let log = &mut st.log;
        if let (Some(id), Some(now)) = (dedupe, now) {
            log.dedupe.expire(now, settings, &self.inner.msg_ids);
            if let Some(offset) = log.dedupe.get(id) {
                add(&self.inner.counters.dedupe_hits, 1);
                return Ok(Published {
                    epoch: ch.epoch,
                    offset: Offset(offset),
                    duplicate: true,
                });
            }
            // Remembered before the offset is taken: a refused id publishes nothing.
            if !log
                .dedupe
                .remember(id, log.last_offset + 1, now, settings, &self.inner.msg_ids)
            {
                return Err(HubError::TooManyMsgIds {
                    max: self.inner.msg_ids.max(),
                });
            }
        }
        log.last_offset += 1;
        let offset = Offset(log.last_offset);
        let route = opts.publisher.map(|(c, _)| c);
        let pushed = self.append_locked(&ch, st, offset, guess, data, &mut deliveries, now, route);
        ch.mirror(st);
        drop(guard);
        self.count_append(settings, pushed);
        if let Some((conn, outbox)) = opts.publisher.filter(|_| settings.replies) {
            self.inner.publishers.register(conn, outbox);
        }
        Ok(Published {
            epoch: ch.epoch,
            offset,
            duplicate: false,
        })
    }

    /// The part of a publish after the offset is taken (by this hub, or by a shared store for a
    /// mirror): the reply route, the fan-out of the shared bytes to live subscribers (re-encoded
    /// when `offset` is not the `guess` they were encoded for) and the backlog. Under the
    /// channel's lock; the caller updates the mirrors, unlocks and calls [`Hub::count_append`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn append_locked(
        &self,
        ch: &Channel,
        st: &mut State,
        offset: Offset,
        guess: Offset,
        data: &Payload,
        deliveries: &mut [Option<Delivery>; Wire::COUNT],
        now: Option<Instant>,
        route: Option<ConnId>,
    ) -> Pushed {
        let settings = &ch.settings;
        let keeps = settings.backlog_messages > 0;
        let needs = |wire: Wire, live: usize| live > 0 || (keeps && wire == BACKLOG_WIRE);
        if settings.replies {
            st.log
                .routes
                .keep(offset.0, route, settings.reply_window, &self.inner.routes);
        }
        let fanout = &mut st.fanout;
        let mut total = Pushed::default();
        for wire in Wire::ALL {
            if !needs(wire, fanout.live(wire)) {
                continue;
            }
            let slot = &mut deliveries[wire.index()];
            let stale = offset != guess && wire.has_offsets();
            let d = match slot {
                Some(d) if !stale => d,
                _ => slot.insert(wire.delivery(&ch.name, offset, data)),
            };
            let channel = (ch.key, &ch.name);
            let pushed = fanout.deliver(wire, &d.bytes, offset, channel, settings.slow_policy);
            total.removed += pushed.removed;
            total.delivered += pushed.delivered;
            total.dropped += pushed.dropped;
        }
        if let (Some(d), Some(now)) = (deliveries[BACKLOG_WIRE.index()].take(), now)
            && keeps
        {
            let budget = &self.inner.backlog_bytes;
            let backlog = &mut st.log.backlog;
            let evicted = backlog.expire(Instant::now(), settings.backlog_age, budget)
                + backlog.keep(offset, now, d, data, settings.backlog_messages, budget);
            add(&self.inner.counters.backlog_evicted, evicted);
        }
        total
    }

    /// The counters of an append, outside the channel's lock.
    pub(crate) fn count_append(&self, settings: &ChannelSettings, pushed: Pushed) {
        self.count_appends(settings, pushed, 1);
    }

    /// The counters of `messages` appends (one batch), outside the channel's lock.
    pub(crate) fn count_appends(
        &self,
        settings: &ChannelSettings,
        pushed: Pushed,
        messages: usize,
    ) {
        self.inner.subscriptions.give_back(pushed.removed);
        let counters = &self.inner.counters;
        add(&counters.publishes, messages);
        add(&counters.deliveries, pushed.delivered);
        match settings.slow_policy {
            SlowPolicy::DropOldest => add(&counters.dropped_oldest, pushed.dropped),
            SlowPolicy::Latest => add(&counters.dropped_latest, pushed.dropped),
            SlowPolicy::Disconnect => {}
        }
    }

    /// Reads the backlog of `name` from `start`: at most `limit` messages, and no more than
    /// `max_bytes` of them (each counted as its `data` plus [`HISTORY_ENTRY_BYTES`]), but always
    /// at least one when one follows `start`, so that a reader can page through any backlog;
    /// `more` says what was left out. A reply is bounded like a delivery: a small request cannot
    /// make the gateway build a large one.
    pub fn history(
        &self,
        name: &ChannelName,
        start: Start,
        limit: usize,
        max_bytes: usize,
    ) -> Result<History, HubError> {
        let ch = self.channel(name)?;
        add(&self.inner.counters.log_reads, 1);
        let mut st = ch.lock();
        if st.deleted {
            return Err(HubError::NotFound(name.clone()));
        }
        let log = &mut st.log;
        let evicted = log.backlog.expire(
            Instant::now(),
            ch.settings.backlog_age,
            &self.inner.backlog_bytes,
        );
        add(&self.inner.counters.backlog_evicted, evicted);
        let (from, recovery) = ch.start_at(log, start)?;
        let last = log.last_offset;
        let mut messages = Vec::new();
        let mut events = Vec::new();
        let mut next = from;
        let mut bytes = 0usize;
        while next <= last && messages.len() < limit {
            let Some(m) = log.backlog.get(next) else {
                break;
            };
            bytes += m.payload.len() + HISTORY_ENTRY_BYTES;
            if bytes > max_bytes && !messages.is_empty() {
                break;
            }
            messages.push((Offset(m.offset), m.payload.clone()));
            events.push(m.event());
            next += 1;
        }
        Ok(History {
            subscription: Subscription {
                epoch: ch.epoch,
                offset: Offset(last),
                from: Offset(messages.first().map_or(last + 1, |m| m.0.0)),
                recovery,
            },
            more: next <= last,
            messages,
            events,
        })
    }

    /// Hands a subscriber's reply to message `offset` of `name` to the connection that published
    /// it, as a `reply` event naming `replier`.
    pub fn reply(
        &self,
        name: &ChannelName,
        offset: Offset,
        replier: ConnId,
        data: &Payload,
    ) -> Result<(), ReplyError> {
        let ch = self
            .channel(name)
            .map_err(|_| ReplyError::NotFound(name.clone()))?;
        let settings = &ch.settings;
        if !settings.replies {
            return Err(ReplyError::NotAllowed(name.clone()));
        }
        if data.len() > settings.max_reply_bytes {
            return Err(ReplyError::TooLarge {
                channel: name.clone(),
                len: data.len(),
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
        let no_such = || ReplyError::NoSuchMessage {
            channel: name.clone(),
            offset,
        };
        let gone = || ReplyError::Gone {
            channel: name.clone(),
            offset,
        };
        let conn = route.ok_or_else(no_such)?.ok_or_else(gone)?;
        let outbox = self.inner.publishers.outbox(conn).ok_or_else(gone)?;
        // Replies are a v1 event: only v1 connections register as publishers to reply to.
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

    /// Forgets `conn` as a reply destination (its connection ended).
    pub fn forget_publisher(&self, conn: ConnId) {
        self.inner.publishers.forget(conn);
    }

    /// Lists channels in name order: those starting with `prefix`, after the name `after`, at
    /// most `limit`, and no more than `max_bytes` of descriptions (each counted as its name plus
    /// [`CHANNEL_INFO_BYTES`]; at least one); the flag says whether more follow.
    pub fn list(
        &self,
        prefix: Option<&str>,
        after: Option<&ChannelName>,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<ChannelInfo>, bool) {
        self.list_where(prefix, after, limit, max_bytes, |_| true)
    }

    /// [`Hub::list`] of the channels whose name `visible` accepts (a caller's permissions).
    /// Memory is proportional to `limit`, not to the number of channels: the first names are
    /// selected with a bounded heap.
    pub fn list_where(
        &self,
        prefix: Option<&str>,
        after: Option<&ChannelName>,
        limit: usize,
        max_bytes: usize,
        visible: impl Fn(&ChannelName) -> bool,
    ) -> (Vec<ChannelInfo>, bool) {
        let limit = limit.max(1);
        // The `limit + 1` smallest names: one more than a page says whether more follow.
        let mut first: BinaryHeap<ChannelName> = BinaryHeap::with_capacity(limit + 2);
        for e in self.inner.channels.iter() {
            let n = e.key();
            if prefix.is_some_and(|p| !n.as_str().starts_with(p))
                || after.is_some_and(|a| n <= a)
                || first.len() > limit && first.peek().is_some_and(|max| n >= max)
                || !visible(n)
            {
                continue;
            }
            first.push(n.clone());
            if first.len() > limit + 1 {
                first.pop();
            }
        }
        let names = first.into_sorted_vec();
        let mut more = names.len() > limit;
        let mut infos = Vec::new();
        let mut bytes = 0usize;
        for n in names.into_iter().take(limit) {
            bytes += n.len() + CHANNEL_INFO_BYTES;
            if bytes > max_bytes && !infos.is_empty() {
                more = true;
                break;
            }

            let Ok(ch) = self.channel(&n) else {
                continue;
            };
            let st = ch.lock();
            infos.push(ChannelInfo {
                channel: n,
                epoch: ch.epoch,
                offset: Offset(st.log.last_offset),
                subscribers: st.fanout.count(),
                backlog_messages: st.log.backlog.len(),
                backlog_bytes: st.log.backlog.bytes(),
                first_offset: Offset(st.log.first_kept()),
            });
        }
        (infos, more)
    }

    /// Drops messages past their channel's age limit from every backlog (and expired `msg_id`s);
    /// the server calls it periodically so that idle channels free their memory too.
    pub fn sweep(&self) {
        let now = Instant::now();
        let channels: Vec<Arc<Channel>> = self
            .inner
            .channels
            .iter()
            .map(|e| Arc::clone(e.value()))
            .collect();
        for ch in channels {
            let mut st = ch.lock();
            let evicted =
                st.log
                    .backlog
                    .expire(now, ch.settings.backlog_age, &self.inner.backlog_bytes);
            add(&self.inner.counters.backlog_evicted, evicted);
            st.log.dedupe.expire(now, &ch.settings, &self.inner.msg_ids);
            st.shrink();
        }
    }

    /// The last offset published to `name` (0 before the first message).
    pub fn last_offset(&self, name: &ChannelName) -> Result<Offset, HubError> {
        Ok(Offset(self.channel(name)?.last_offset()))
    }

    /// The epoch of `name`.
    pub fn epoch(&self, name: &ChannelName) -> Result<Epoch, HubError> {
        Ok(self.channel(name)?.epoch)
    }

    /// Number of subscribers of `name`.
    pub fn subscriber_count(&self, name: &ChannelName) -> Result<usize, HubError> {
        Ok(self.channel(name)?.lock().fanout.count())
    }

    /// Sizes of the hub's tables and its event counters.
    pub fn stats(&self) -> HubStats {
        let c = &self.inner.counters;
        HubStats {
            channels: self.inner.channel_count.used(),
            subscriptions: self.inner.subscriptions.used(),
            backlog_bytes: self.inner.backlog_bytes.used(),
            msg_ids: self.inner.msg_ids.used(),
            reply_routes: self.inner.routes.used(),
            publishes: get(&c.publishes),
            deliveries: get(&c.deliveries),
            dedupe_hits: get(&c.dedupe_hits),
            dropped_oldest: get(&c.dropped_oldest),
            dropped_latest: get(&c.dropped_latest),
            resumes_recovered: get(&c.resumes_recovered),
            resumes_expired: get(&c.resumes_expired),
            resumes_epoch_changed: get(&c.resumes_epoch_changed),
            resume_lost_messages: get(&c.resume_lost_messages),
            subscribes: get(&c.subscribes),
            log_reads: get(&c.log_reads),
            replies: get(&c.replies),
            backlog_evicted: get(&c.backlog_evicted),
            backlog_messages: self
                .inner
                .channels
                .iter()
                .map(|e| e.value().lock().log.backlog.len())
                .sum(),
        }
    }
}

#[cfg(test)]
mod tests;
