use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tslm_protocol::{
    ChannelInfo, ChannelName, Dialect, Epoch, Lost, Offset, Payload, Recovery, Start, Subscription,
    WsFrame, legacy, v1,
};

use crate::outbox::{Outbox, PushError};
use crate::settings::{ChannelSettings, SlowPolicy};

/// A connection's id, unique for the life of the process (never 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Errors of hub operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("channel `{0}` does not exist")]
    NotFound(ChannelName),
    #[error("channel `{channel}` has {max} subscribers, the most it allows")]
    Full { channel: ChannelName, max: usize },
    #[error("offset {offset} is past the last offset of channel `{channel}` ({last})")]
    FutureOffset {
        channel: ChannelName,
        offset: Offset,
        last: Offset,
    },
    #[error("data is {len} bytes; channel `{channel}` allows at most {max}")]
    TooLarge {
        channel: ChannelName,
        len: usize,
        max: usize,
    },
    #[error("the gateway serves {max} subscriptions, the most it allows")]
    TooManySubscriptions { max: usize },
    #[error("the gateway holds {max} channels, the most it allows")]
    TooManyChannels { max: usize },
    #[error(
        "the gateway remembers {max} msg_ids, the most it allows; publish without one, or retry once older ones expire"
    )]
    TooManyMsgIds { max: usize },
}

/// Why a reply could not be handed over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("channel `{0}` does not exist")]
    NotFound(ChannelName),
    #[error("channel `{0}` does not allow replies")]
    NotAllowed(ChannelName),
    #[error(
        "offset {offset} of channel `{channel}` is not among the messages that can be replied to"
    )]
    NoSuchMessage {
        channel: ChannelName,
        offset: Offset,
    },
    #[error(
        "the publisher of offset {offset} of channel `{channel}` has no connection to reply over (it disconnected, or published over HTTP or the original protocol)"
    )]
    Gone {
        channel: ChannelName,
        offset: Offset,
    },
    #[error("the publisher of offset {offset} of channel `{channel}` is not keeping up; try again")]
    Busy {
        channel: ChannelName,
        offset: Offset,
    },
    #[error("the reply is {len} bytes; channel `{channel}` allows at most {max}")]
    TooLarge {
        channel: ChannelName,
        len: usize,
        max: usize,
    },
}

/// The outcome of a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The connection was already subscribed (subscribing is idempotent per connection; the start
    /// position of a repeated subscribe is ignored).
    pub already: bool,
    pub subscription: Subscription,
    /// Messages from the backlog are due: the connection must call [`Hub::catch_up`] until it
    /// answers [`CatchUp::Done`].
    pub catching_up: bool,
}

/// Progress of a replay, see [`Hub::catch_up`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// The subscription is live: nothing more to replay.
    Done,
    /// More to replay once the outbox has room.
    More,
    /// The subscription ended (channel deleted, outbox closed).
    Gone,
}

/// A history read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// `from` is the offset of the first message returned (`offset + 1` when none).
    pub subscription: Subscription,
    pub messages: Vec<(Offset, Payload)>,
    /// More messages follow the last one returned.
    pub more: bool,
}

/// The outcome of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub epoch: Epoch,
    pub offset: Offset,
    /// The `msg_id` was seen within the de-duplication window: `offset` is the original
    /// message's, and nothing was delivered again.
    pub duplicate: bool,
}

/// The outcome of a create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    /// `false` when the channel already existed (its settings are unchanged).
    pub created: bool,
    pub epoch: Epoch,
}

/// Who publishes, for `msg_id` de-duplication and replies.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishOptions<'a> {
    pub msg_id: Option<&'a str>,
    /// The publishing connection and its outbox, to route replies to (`None` over HTTP).
    pub publisher: Option<(ConnId, &'a Arc<Outbox>)>,
}

/// Counters for operations and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubStats {
    pub channels: usize,
    pub subscriptions: usize,
    /// Bytes held by all backlogs together (bounded by the hub's backlog memory limit).
    pub backlog_bytes: usize,
    /// `msg_id`s remembered by all channels together (bounded by [`HubLimits::max_msg_ids`]).
    pub msg_ids: usize,
    /// Reply routes kept by all channels together (bounded by [`HubLimits::max_reply_routes`]).
    pub reply_routes: usize,
}

/// Hub-wide limits: every table the hub keeps is bounded, per channel by its settings and
/// together by these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubLimits {
    /// Bytes all backlogs may hold together.
    pub backlog_memory_bytes: usize,
    /// Channels at once; a create (or auto-create) beyond is refused.
    pub max_channels: usize,
    /// `msg_id`s remembered by all channels together; a publish with a new one beyond is
    /// refused (de-duplication is never silently shortened).
    pub max_msg_ids: usize,
    /// Reply routes (the publisher of each recent message, on channels with replies) kept by
    /// all channels together; beyond, a channel gives up its own oldest route for a new one, and
    /// a message of a channel that has none cannot be replied to.
    pub max_reply_routes: usize,
    /// Subscriptions of all connections to all channels together; a subscribe beyond is refused.
    pub max_subscriptions: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        use crate::settings::defaults;
        Self {
            backlog_memory_bytes: defaults::BACKLOG_MEMORY_BYTES,
            max_channels: defaults::MAX_CHANNELS,
            max_msg_ids: defaults::MAX_MSG_IDS,
            max_reply_routes: defaults::MAX_REPLY_ROUTES,
            max_subscriptions: defaults::MAX_SUBSCRIPTIONS,
        }
    }
}

/// Bytes counted per message of a history read beyond its `data`: `{"offset":N,"data":}` and a
/// comma, with the longest offset.
pub const HISTORY_ENTRY_BYTES: usize = 40;

/// Bytes counted per channel of a listing beyond its name: the longest description.
pub const CHANNEL_INFO_BYTES: usize = 240;

/// Takes one from `counter` unless it is at `max`.
fn take_one(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// Bytes counted per backlog entry beyond its frame (the entry itself and its queue slot).
const STORED_OVERHEAD: usize = 64;

/// The channel registry and fan-out engine. Cloning is cheap and shares the hub.
#[derive(Clone, Default)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    channels: DashMap<ChannelName, Arc<Channel>>,
    /// Channels in `channels`, counted against `limits.max_channels` as they are inserted.
    channel_count: AtomicUsize,
    /// `msg_id`s in every channel's `Dedupe`, against `limits.max_msg_ids`.
    msg_ids: AtomicUsize,
    /// Entries of every channel's `routes`, against `limits.max_reply_routes`.
    routes: AtomicUsize,
    subscriptions: AtomicUsize,
    next_conn: AtomicU64,
    backlog_bytes: AtomicUsize,
    limits: HubLimits,
    /// Connections that published on channels with replies, to route replies to.
    publishers: DashMap<ConnId, Weak<Outbox>>,
}

struct Channel {
    name: ChannelName,
    epoch: Epoch,
    settings: ChannelSettings,
    state: Mutex<State>,
    /// Mirrors of `State` read without the lock, to encode frames before taking it.
    last_offset: AtomicU64,
    v1_subs: AtomicUsize,
    legacy_subs: AtomicUsize,
}

#[derive(Default)]
struct State {
    last_offset: u64,
    deleted: bool,
    v1: Vec<Sub>,
    legacy: Vec<Sub>,
    /// Subscriptions still replaying the backlog: live publishes skip them (the backlog holds
    /// what they need), [`Hub::catch_up`] moves them to `v1`/`legacy` once they reach the head.
    catching: Vec<Catching>,
    backlog: VecDeque<Stored>,
    backlog_bytes: usize,
    /// The publisher of each recent offset (replies only); `None` for HTTP publishes.
    routes: VecDeque<(u64, Option<ConnId>)>,
    dedupe: Dedupe,
}

impl State {
    /// Gives back the spare capacity of tables that emptied (expired messages and `msg_id`s,
    /// departed subscribers): each keeps at most a few times what it holds, so a channel that
    /// was once full does not hold its peak for ever. The sweep calls it every second.
    fn shrink(&mut self) {
        macro_rules! shrink {
            ($($t:expr),*) => {$(
                if $t.capacity() > 16 && $t.capacity() / 4 > $t.len() {
                    $t.shrink_to($t.len() * 2);
                }
            )*};
        }
        shrink!(
            self.backlog,
            self.routes,
            self.dedupe.ids,
            self.dedupe.order,
            self.v1,
            self.legacy,
            self.catching
        );
    }
}

struct Sub {
    conn: ConnId,
    outbox: Arc<Outbox>,
}

struct Catching {
    sub: Sub,
    dialect: Dialect,
    /// The next offset to send.
    next: u64,
}

/// A kept message: its v1 delivery frame (the payload is a slice of it).
struct Stored {
    offset: u64,
    at: Instant,
    frame: Bytes,
    payload: Payload,
}

impl Stored {
    fn cost(&self) -> usize {
        self.frame.len() + STORED_OVERHEAD
    }
}

#[derive(Default)]
struct Dedupe {
    ids: HashMap<Arc<str>, u64>,
    order: VecDeque<(Instant, Arc<str>)>,
}

impl Dedupe {
    /// Forgets ids past the channel's window or count, and gives them back to the hub's count.
    fn expire(&mut self, now: Instant, settings: &ChannelSettings, global: &AtomicUsize) {
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
        if forgotten > 0 {
            global.fetch_sub(forgotten, Ordering::Relaxed);
        }
    }

    /// Remembers a new `id` for `offset` within the channel's count and the hub's: a channel at
    /// its own count forgets its oldest id first (its documented window); at the hub's count the
    /// id is refused.
    fn remember(
        &mut self,
        id: &str,
        offset: u64,
        now: Instant,
        settings: &ChannelSettings,
        inner: &Inner,
    ) -> Result<(), HubError> {
        if self.order.len() >= settings.dedupe_max_ids
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
            inner.msg_ids.fetch_sub(1, Ordering::Relaxed);
        }
        let max = inner.limits.max_msg_ids;
        if !take_one(&inner.msg_ids, max) {
            return Err(HubError::TooManyMsgIds { max });
        }
        let id: Arc<str> = Arc::from(id);
        self.ids.insert(Arc::clone(&id), offset);
        self.order.push_back((now, id));
        self.expire(now, settings, &inner.msg_ids);
        Ok(())
    }
}

impl Channel {
    fn new(name: ChannelName, settings: ChannelSettings) -> Self {
        Self {
            name,
            epoch: Epoch(random_u64()),
            settings,
            state: Mutex::new(State::default()),
            last_offset: AtomicU64::new(0),
            v1_subs: AtomicUsize::new(0),
            legacy_subs: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of `State` keeps it consistent step by step (pushes, removals, counters
        // adjusted next to them), so a poisoned lock still holds a usable state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_counts(&self, st: &State) {
        self.v1_subs.store(st.v1.len(), Ordering::Relaxed);
        self.legacy_subs.store(st.legacy.len(), Ordering::Relaxed);
    }

    fn subscriber_count(st: &State) -> usize {
        st.v1.len() + st.legacy.len() + st.catching.len()
    }

    /// The oldest offset the backlog holds (`last + 1` when empty).
    fn first_kept(st: &State) -> u64 {
        st.backlog.front().map_or(st.last_offset + 1, |m| m.offset)
    }

    fn stored(backlog: &VecDeque<Stored>, offset: u64) -> Option<&Stored> {
        let first = backlog.front()?.offset;
        backlog.get(usize::try_from(offset.checked_sub(first)?).ok()?)
    }

    /// Where a subscription or history read starting at `start` begins: the first offset to
    /// send, and the recovery outcome of a resume.
    fn start_at(&self, st: &State, start: Start) -> Result<(u64, Option<Recovery>), HubError> {
        let last = st.last_offset;
        let first = Self::first_kept(st);
        Ok(match start {
            Start::New => (last + 1, None),
            Start::Oldest => (first, None),
            Start::Last(n) => (first.max((last + 1).saturating_sub(n)), None),
            Start::After { epoch, .. } if epoch != self.epoch => {
                (first, Some(Recovery::Incomplete(Lost::EpochChanged)))
            }
            Start::After { offset, .. } if offset.0 > last => {
                return Err(HubError::FutureOffset {
                    channel: self.name.clone(),
                    offset,
                    last: Offset(last),
                });
            }
            Start::After { offset, .. } if offset.0 + 1 >= first => {
                (offset.0 + 1, Some(Recovery::Complete))
            }
            Start::After { offset, .. } => (
                first,
                Some(Recovery::Incomplete(Lost::Expired {
                    from: Offset(offset.0 + 1),
                    to: Offset(first - 1),
                })),
            ),
        })
    }
}

impl Hub {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_limits(limits: HubLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                ..Inner::default()
            }),
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn channel(&self, name: &ChannelName) -> Result<Arc<Channel>, HubError> {
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
                let max = self.inner.limits.max_channels;
                if !take_one(&self.inner.channel_count, max) {
                    return Err(HubError::TooManyChannels { max });
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
        self.inner.channel_count.fetch_sub(1, Ordering::Relaxed);
        let mut st = ch.lock();
        st.deleted = true;
        let freed = st.backlog_bytes;
        st.backlog = VecDeque::new();
        st.backlog_bytes = 0;
        let routes = std::mem::take(&mut st.routes).len();
        self.inner.routes.fetch_sub(routes, Ordering::Relaxed);
        let ids = std::mem::take(&mut st.dedupe).order.len();
        self.inner.msg_ids.fetch_sub(ids, Ordering::Relaxed);
        let closed_v1 = WsFrame::text(&v1::encode_closed(name, "deleted"))
            .bytes()
            .clone();
        let closed_legacy = WsFrame::text(
            legacy::encode_error(&legacy::Error::ChannelNotFound(name.clone())).as_bytes(),
        )
        .bytes()
        .clone();
        let subs = Channel::subscriber_count(&st);
        for s in st.v1.drain(..) {
            let _ = s.outbox.push(closed_v1.clone());
        }
        for s in st.legacy.drain(..) {
            let _ = s.outbox.push(closed_legacy.clone());
        }
        for c in st.catching.drain(..) {
            let frame = match c.dialect {
                Dialect::V1 => &closed_v1,
                Dialect::Legacy => &closed_legacy,
            };
            let _ = c.sub.outbox.push(frame.clone());
        }
        ch.publish_counts(&st);
        drop(st);
        self.inner.backlog_bytes.fetch_sub(freed, Ordering::Relaxed);
        self.inner.subscriptions.fetch_sub(subs, Ordering::Relaxed);
        tracing::debug!(channel = %name, subscribers = subs, "channel deleted");
        Ok(())
    }

    /// Subscribes connection `conn` to `name`, starting at `start`: from then on every message
    /// of the channel is pushed into `outbox`, encoded for `dialect` as a complete WebSocket text
    /// frame. When the start lies in the backlog the answer says `catching_up`, and the
    /// connection pulls the replay with [`Hub::catch_up`]; live messages join seamlessly after
    /// it (no duplicate, no gap: the subscription turns live under the channel lock, exactly at
    /// the head).
    pub fn subscribe(
        &self,
        name: &ChannelName,
        conn: ConnId,
        dialect: Dialect,
        outbox: &Arc<Outbox>,
        start: Start,
    ) -> Result<Subscribed, HubError> {
        let ch = self.channel(name)?;
        let mut st = ch.lock();
        if st.deleted {
            return Err(HubError::NotFound(name.clone()));
        }
        expire(&ch, &mut st, &self.inner, Instant::now());
        let last = st.last_offset;
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
        let known = st.v1.iter().chain(&st.legacy).any(|s| s.conn == conn)
            || st.catching.iter().any(|c| c.sub.conn == conn);
        if known {
            return Ok(subscribed(last + 1, None, false, true));
        }
        if let Some(max) = ch.settings.max_subscribers
            && Channel::subscriber_count(&st) >= max
        {
            return Err(HubError::Full {
                channel: name.clone(),
                max,
            });
        }
        let (from, recovery) = ch.start_at(&st, start)?;
        let max = self.inner.limits.max_subscriptions;
        if !take_one(&self.inner.subscriptions, max) {
            return Err(HubError::TooManySubscriptions { max });
        }
        let sub = Sub {
            conn,
            outbox: Arc::clone(outbox),
        };
        let catching_up = from <= last;
        if catching_up {
            st.catching.push(Catching {
                sub,
                dialect,
                next: from,
            });
        } else {
            match dialect {
                Dialect::V1 => st.v1.push(sub),
                Dialect::Legacy => st.legacy.push(sub),
            }
            ch.publish_counts(&st);
        }
        drop(st);
        Ok(subscribed(from, recovery, catching_up, false))
    }

    /// Pushes the next part of `conn`'s replay of `name` into its outbox: at most `max_frames`
    /// frames and about `max_bytes` (at least one frame). When the replay reaches the channel's
    /// head the subscription turns live. Messages that left the backlog while the replay was
    /// under way are announced with a `gap` event (v1) and skipped.
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
        let st = &mut *guard;
        if st.deleted {
            return CatchUp::Gone;
        }
        let Some(i) = st.catching.iter().position(|c| c.sub.conn == conn) else {
            let live = st.v1.iter().chain(&st.legacy).any(|s| s.conn == conn);
            return if live { CatchUp::Done } else { CatchUp::Gone };
        };
        let first = Channel::first_kept(st);
        let last = st.last_offset;
        let (mut frames, mut bytes) = (0usize, 0usize);
        let mut failed = false;
        {
            let c = &mut st.catching[i];
            // Replay frames only take the room the outbox leaves replays (half of it), and never
            // count against live pushes: a replay never overflows the outbox nor makes a live
            // delivery overflow it, so it never costs a subscriber that reads its connection or
            // its policy's drops; what does not fit waits for the next drain.
            while c.next <= last && frames < max_frames && (frames == 0 || bytes < max_bytes) {
                let (frame, next) = match Channel::stored(&st.backlog, c.next) {
                    Some(m) => (
                        match c.dialect {
                            Dialect::V1 => m.frame.clone(),
                            Dialect::Legacy => encode_legacy_frame(name, &m.payload),
                        },
                        c.next + 1,
                    ),
                    None => {
                        // These messages left the backlog while the replay was under way.
                        let resume = if c.next < first { first } else { last + 1 };
                        if c.dialect == Dialect::Legacy {
                            // The original protocol has no way to say so.
                            c.next = resume;
                            continue;
                        }
                        let gap = v1::encode_gap(name, Offset(c.next), Offset(resume - 1));
                        (WsFrame::text(&gap).bytes().clone(), resume)
                    }
                };
                let len = frame.len();
                match c.sub.outbox.push_replay(frame) {
                    Ok(()) => {
                        frames += 1;
                        bytes += len;
                        c.next = next;
                    }
                    Err(PushError::Full) => break,
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
        }
        if failed {
            st.catching.swap_remove(i);
            drop(guard);
            self.inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
            return CatchUp::Gone;
        }
        if st.catching[i].next <= last {
            return CatchUp::More;
        }
        let c = st.catching.swap_remove(i);
        match c.dialect {
            Dialect::V1 => st.v1.push(c.sub),
            Dialect::Legacy => st.legacy.push(c.sub),
        }
        ch.publish_counts(st);
        CatchUp::Done
    }

    /// Removes `conn`'s subscription to `name`; returns whether there was one.
    pub fn unsubscribe(&self, name: &ChannelName, conn: ConnId) -> bool {
        let Ok(ch) = self.channel(name) else {
            return false;
        };
        let mut guard = ch.lock();
        let st = &mut *guard;
        let mut removed = false;
        for list in [&mut st.v1, &mut st.legacy] {
            if let Some(i) = list.iter().position(|s| s.conn == conn) {
                list.swap_remove(i);
                removed = true;
            }
        }
        if let Some(i) = st.catching.iter().position(|c| c.sub.conn == conn) {
            st.catching.swap_remove(i);
            removed = true;
        }
        ch.publish_counts(st);
        drop(guard);
        if removed {
            self.inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Whether `conn` is subscribed to `name` (live or replaying).
    pub fn is_subscribed(&self, name: &ChannelName, conn: ConnId) -> bool {
        let Ok(ch) = self.channel(name) else {
            return false;
        };
        let st = ch.lock();
        st.v1.iter().chain(&st.legacy).any(|s| s.conn == conn)
            || st.catching.iter().any(|c| c.sub.conn == conn)
    }

    /// Publishes `data` to `name` and returns its offset (no `msg_id`, no reply route).
    pub fn publish(&self, name: &ChannelName, data: &Payload) -> Result<Offset, HubError> {
        self.publish_with(name, data, PublishOptions::default())
            .map(|p| p.offset)
    }

    /// Publishes `data` to `name`.
    ///
    /// The frame for each dialect that needs one is encoded once, outside the channel lock, for
    /// the offset the message will most likely get; under the lock the offset is assigned, the
    /// message kept in the backlog and the shared frame pushed into every live subscriber's
    /// outbox (a refcount each). Only when another publisher to the same channel won the race
    /// for that offset is the v1 frame re-encoded under the lock. Subscribers whose outbox
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
        let guess = Offset(ch.last_offset.load(Ordering::Relaxed) + 1);
        let mut v1_frame = (keeps || ch.v1_subs.load(Ordering::Relaxed) > 0)
            .then(|| encode_v1_frame(name, guess, data));
        let mut legacy_frame =
            (ch.legacy_subs.load(Ordering::Relaxed) > 0).then(|| encode_legacy_frame(name, data));
        let dedupe = opts
            .msg_id
            .filter(|_| !settings.dedupe_window.is_zero() && settings.dedupe_max_ids > 0);
        let now = (keeps || dedupe.is_some()).then(Instant::now);

        let mut guard = ch.lock();
        let st = &mut *guard;
        if st.deleted {
            return Err(HubError::NotFound(name.clone()));
        }
        if let (Some(id), Some(now)) = (dedupe, now) {
            st.dedupe.expire(now, settings, &self.inner.msg_ids);
            if let Some(&offset) = st.dedupe.ids.get(id) {
                return Ok(Published {
                    epoch: ch.epoch,
                    offset: Offset(offset),
                    duplicate: true,
                });
            }
            // Remembered before the offset is taken: a refused id publishes nothing.
            st.dedupe
                .remember(id, st.last_offset + 1, now, settings, &self.inner)?;
        }
        st.last_offset += 1;
        let offset = Offset(st.last_offset);
        ch.last_offset.store(offset.0, Ordering::Relaxed);
        if settings.replies {
            keep_route(
                st,
                offset,
                opts.publisher.map(|(c, _)| c),
                settings,
                &self.inner,
            );
        }
        let mut dropped = 0;
        if !st.v1.is_empty() || keeps {
            if offset != guess || v1_frame.is_none() {
                v1_frame = Some(encode_v1_frame(&ch.name, offset, data));
            }
            if let Some(frame) = &v1_frame {
                dropped += fan_out(&mut st.v1, frame, offset, name, settings.slow_policy);
            }
        }
        if !st.legacy.is_empty() {
            let frame = legacy_frame.get_or_insert_with(|| encode_legacy_frame(&ch.name, data));
            dropped += fan_out(&mut st.legacy, frame, offset, name, SlowPolicy::Disconnect);
        }
        if dropped > 0 {
            ch.publish_counts(st);
        }
        if let (Some(frame), Some(now)) = (v1_frame.filter(|_| keeps), now) {
            expire(&ch, st, &self.inner, now);
            keep(&ch, st, &self.inner, offset, now, frame, data);
        }
        drop(guard);
        if dropped > 0 {
            self.inner
                .subscriptions
                .fetch_sub(dropped, Ordering::Relaxed);
        }
        if let Some((conn, outbox)) = opts.publisher.filter(|_| settings.replies)
            && !self.inner.publishers.contains_key(&conn)
        {
            self.inner.publishers.insert(conn, Arc::downgrade(outbox));
        }
        Ok(Published {
            epoch: ch.epoch,
            offset,
            duplicate: false,
        })
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
        let mut st = ch.lock();
        if st.deleted {
            return Err(HubError::NotFound(name.clone()));
        }
        expire(&ch, &mut st, &self.inner, Instant::now());
        let (from, recovery) = ch.start_at(&st, start)?;
        let last = st.last_offset;
        let mut messages = Vec::new();
        let mut next = from;
        let mut bytes = 0usize;
        while next <= last && messages.len() < limit {
            let Some(m) = Channel::stored(&st.backlog, next) else {
                break;
            };
            bytes += m.payload.len() + HISTORY_ENTRY_BYTES;
            if bytes > max_bytes && !messages.is_empty() {
                break;
            }
            messages.push((Offset(m.offset), m.payload.clone()));
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
            let first = st.routes.front().map_or(u64::MAX, |r| r.0);
            offset
                .0
                .checked_sub(first)
                .and_then(|i| st.routes.get(usize::try_from(i).ok()?))
                .map(|r| r.1)
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
        let outbox = self
            .inner
            .publishers
            .get(&conn)
            .and_then(|w| w.upgrade())
            .ok_or_else(gone)?;
        let json = v1::encode_reply_event(name, offset, &replier.to_string(), data);
        match outbox.try_push(WsFrame::text(&json).bytes().clone()) {
            Ok(()) => Ok(()),
            Err(PushError::Full) => Err(ReplyError::Busy {
                channel: name.clone(),
                offset,
            }),
            Err(_) => Err(gone()),
        }
    }

    /// Forgets `conn` as a reply destination (its connection ended).
    pub fn forget_publisher(&self, conn: ConnId) {
        self.inner.publishers.remove(&conn);
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
                offset: Offset(st.last_offset),
                subscribers: Channel::subscriber_count(&st),
                backlog_messages: st.backlog.len(),
                backlog_bytes: st.backlog_bytes,
                first_offset: Offset(Channel::first_kept(&st)),
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
            expire(&ch, &mut st, &self.inner, now);
            st.dedupe.expire(now, &ch.settings, &self.inner.msg_ids);
            st.shrink();
        }
    }

    /// The last offset published to `name` (0 before the first message).
    pub fn last_offset(&self, name: &ChannelName) -> Result<Offset, HubError> {
        Ok(Offset(
            self.channel(name)?.last_offset.load(Ordering::Relaxed),
        ))
    }

    /// The epoch of `name`.
    pub fn epoch(&self, name: &ChannelName) -> Result<Epoch, HubError> {
        Ok(self.channel(name)?.epoch)
    }

    /// Number of subscribers of `name`.
    pub fn subscriber_count(&self, name: &ChannelName) -> Result<usize, HubError> {
        let ch = self.channel(name)?;
        Ok(Channel::subscriber_count(&ch.lock()))
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            channels: self.inner.channel_count.load(Ordering::Relaxed),
            subscriptions: self.inner.subscriptions.load(Ordering::Relaxed),
            backlog_bytes: self.inner.backlog_bytes.load(Ordering::Relaxed),
            msg_ids: self.inner.msg_ids.load(Ordering::Relaxed),
            reply_routes: self.inner.routes.load(Ordering::Relaxed),
        }
    }
}

/// Keeps the publisher of `offset` for replies, within the channel's `reply_window` and the hub's
/// `max_reply_routes`: at the hub's bound the channel gives up its own oldest route; one that has
/// none keeps no route (a reply to that message is refused as not found). Routes stay a
/// contiguous run of offsets ending at the newest, so a reply finds its route by subtraction.
fn keep_route(
    st: &mut State,
    offset: Offset,
    publisher: Option<ConnId>,
    settings: &ChannelSettings,
    inner: &Inner,
) {
    if settings.reply_window == 0 {
        return;
    }
    // Room: the channel's own window gives up its oldest, else the hub's count takes one, else
    // (the hub is full) the channel gives up its own oldest. A gap in the routes would misplace
    // every later reply: with none to give up, the run restarts at the next message with room.
    let room = (st.routes.len() >= settings.reply_window && st.routes.pop_front().is_some())
        || take_one(&inner.routes, inner.limits.max_reply_routes)
        || st.routes.pop_front().is_some();
    if !room {
        return;
    }
    st.routes.push_back((offset.0, publisher));
}

/// Drops messages older than the channel's age limit.
fn expire(ch: &Channel, st: &mut State, inner: &Inner, now: Instant) {
    let mut freed = 0;
    while let Some(m) = st.backlog.front() {
        if now.duration_since(m.at) < ch.settings.backlog_age {
            break;
        }
        freed += m.cost();
        st.backlog.pop_front();
    }
    if freed > 0 {
        st.backlog_bytes -= freed;
        inner.backlog_bytes.fetch_sub(freed, Ordering::Relaxed);
    }
}

/// Keeps a just-published message in the backlog, within the channel's count limit and the
/// hub's memory bound: over the bound, the channel gives up its own oldest messages first; a
/// message that still does not fit is not kept (a later resume is told it was lost).
fn keep(
    ch: &Channel,
    st: &mut State,
    inner: &Inner,
    offset: Offset,
    now: Instant,
    frame: Bytes,
    data: &Payload,
) {
    // The payload is re-based onto the frame so that the backlog holds one allocation per
    // message and nothing of the publisher's request buffer.
    let end = frame.len() - 1;
    let payload = data.rebased(frame.slice(end - data.len()..end));
    let m = Stored {
        offset: offset.0,
        at: now,
        frame,
        payload,
    };
    let cost = m.cost();
    let mut freed = 0;
    while st.backlog.len() >= ch.settings.backlog_messages {
        match st.backlog.pop_front() {
            Some(old) => freed += old.cost(),
            None => break,
        }
    }
    let limit = inner.limits.backlog_memory_bytes;
    let mut total = inner.backlog_bytes.fetch_add(cost, Ordering::Relaxed) + cost - freed;
    while total > limit {
        match st.backlog.pop_front() {
            Some(old) => {
                freed += old.cost();
                total -= old.cost();
            }
            None => break,
        }
    }
    st.backlog_bytes -= freed;
    if total > limit {
        // Not even an empty backlog makes room: the message is not kept. The backlog is empty
        // now, so `first_kept` is past this offset and resumes see the loss.
        inner
            .backlog_bytes
            .fetch_sub(cost + freed, Ordering::Relaxed);
        return;
    }
    inner.backlog_bytes.fetch_sub(freed, Ordering::Relaxed);
    st.backlog_bytes += cost;
    st.backlog.push_back(m);
}

fn random_u64() -> u64 {
    rand::random()
}

/// The v1 delivery of a message as a complete WebSocket frame.
fn encode_v1_frame(name: &ChannelName, offset: Offset, data: &Payload) -> Bytes {
    WsFrame::text(&v1::encode_delivery(name, offset, data))
        .bytes()
        .clone()
}

/// The original-protocol delivery of a message as a complete WebSocket frame.
fn encode_legacy_frame(name: &ChannelName, data: &Payload) -> Bytes {
    WsFrame::text(&legacy::encode_delivery(name, data))
        .bytes()
        .clone()
}

/// Pushes `frame` (message `offset`) to every subscriber, removing those whose outbox closed;
/// returns how many were removed.
fn fan_out(
    subs: &mut Vec<Sub>,
    frame: &Bytes,
    offset: Offset,
    name: &ChannelName,
    policy: SlowPolicy,
) -> usize {
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use super::*;
    use crate::{CloseReason, OutboxLimits};

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn outbox(max_messages: usize) -> Arc<Outbox> {
        Arc::new(Outbox::new(OutboxLimits {
            max_bytes: 1 << 20,
            max_messages,
        }))
    }

    /// The JSON texts of the queued frames.
    fn drain(ob: &Outbox) -> Vec<String> {
        let mut q: VecDeque<Bytes> = VecDeque::new();
        ob.take(&mut q);
        q.into_iter()
            .map(|b| {
                assert_eq!(b[0], 0x81, "a final, unmasked text frame");
                let header = match b[1] {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                String::from_utf8(b[header..].to_vec()).unwrap()
            })
            .collect()
    }

    /// Offsets of the deliveries queued, and `gap` events as negative ranges.
    fn offsets(ob: &Outbox) -> Vec<String> {
        drain(ob)
            .iter()
            .map(|t| {
                let v: serde_json::Value = serde_json::from_str(t).unwrap();
                match v["event"].as_str().unwrap() {
                    "message" => v["offset"].to_string(),
                    "gap" => format!("gap {}-{}", v["from"], v["to"]),
                    other => other.to_string(),
                }
            })
            .collect()
    }

    fn publish_n(hub: &Hub, c: &str, n: usize) {
        for i in 0..n {
            hub.publish(&ch(c), &Payload::text(&i.to_string())).unwrap();
        }
    }

    fn settings(backlog: usize) -> ChannelSettings {
        ChannelSettings {
            backlog_messages: backlog,
            ..ChannelSettings::default()
        }
    }

    fn catch_up_all(hub: &Hub, c: &str, conn: ConnId) {
        while hub.catch_up(&ch(c), conn, 3, 1 << 20) == CatchUp::More {}
    }

    #[test]
    fn create_is_idempotent_and_publish_needs_a_channel() {
        let hub = Hub::new();
        let p = Payload::text("x");
        assert_eq!(hub.publish(&ch("a"), &p), Err(HubError::NotFound(ch("a"))));
        assert!(hub.create(&ch("a")));
        let epoch = hub.epoch(&ch("a")).unwrap();
        assert!(!hub.create(&ch("a")));
        assert_eq!(hub.epoch(&ch("a")).unwrap(), epoch);
        assert_eq!(hub.publish(&ch("a"), &p), Ok(Offset(1)));
        assert_eq!(hub.publish(&ch("a"), &p), Ok(Offset(2)));
        let stats = hub.stats();
        assert_eq!((stats.channels, stats.subscriptions), (1, 0));
        assert!(stats.backlog_bytes > 0);
    }

    #[test]
    fn fans_out_per_dialect_once_and_in_order() {
        let hub = Hub::new();
        hub.create(&ch("news"));
        let (a, b) = (outbox(100), outbox(100));
        let (ca, cb) = (hub.next_conn_id(), hub.next_conn_id());
        let s = hub
            .subscribe(&ch("news"), ca, Dialect::V1, &a, Start::New)
            .unwrap();
        assert!(!s.already && !s.catching_up);
        assert_eq!(
            (s.subscription.offset, s.subscription.from),
            (Offset(0), Offset(1))
        );
        assert!(
            hub.subscribe(&ch("news"), ca, Dialect::V1, &a, Start::New)
                .unwrap()
                .already
        );
        hub.subscribe(&ch("news"), cb, Dialect::Legacy, &b, Start::New)
            .unwrap();
        assert_eq!(hub.stats().subscriptions, 2);
        hub.publish(&ch("news"), &Payload::text("hello")).unwrap();
        hub.publish(
            &ch("news"),
            &Payload::from_json_bytes(Bytes::from_static(b"{\"k\":1}")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            drain(&a),
            [
                r#"{"event":"message","channel":"news","offset":1,"data":"hello"}"#,
                r#"{"event":"message","channel":"news","offset":2,"data":{"k":1}}"#
            ]
        );
        assert_eq!(
            drain(&b),
            [
                r#"{"ChannelMessage":["news",{"Text":"hello"}]}"#,
                r#"{"ChannelMessage":["news",{"Json":{"k":1}}]}"#
            ]
        );
        assert!(hub.unsubscribe(&ch("news"), ca));
        assert!(!hub.unsubscribe(&ch("news"), ca));
        assert_eq!(hub.stats().subscriptions, 1);
    }

    #[test]
    fn a_slow_subscriber_is_dropped_and_others_keep_everything() {
        let hub = Hub::new();
        hub.create(&ch("c"));
        let (slow, fast) = (outbox(3), outbox(1000));
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &slow, Start::New)
            .unwrap();
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &fast, Start::New)
            .unwrap();
        publish_n(&hub, "c", 10);
        let mut q = VecDeque::new();
        assert_eq!(slow.take(&mut q), Some(CloseReason::SlowConsumer));
        assert_eq!(drain(&fast).len(), 10);
        assert_eq!(hub.stats().subscriptions, 1);
        assert_eq!(hub.subscriber_count(&ch("c")), Ok(1));
    }

    #[test]
    fn concurrent_publishers_keep_offsets_dense_and_frames_ordered() {
        let hub = Hub::new();
        hub.create(&ch("c"));
        let sub = outbox(1_000_000);
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &sub, Start::New)
            .unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    (0..2000)
                        .map(|_| hub.publish(&ch("c"), &Payload::text("m")).unwrap().0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut offsets: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        offsets.sort_unstable();
        assert_eq!(offsets, (1..=8000).collect::<Vec<_>>());
        for (i, frame) in drain(&sub).iter().enumerate() {
            let want = format!(r#""offset":{},"#, i + 1);
            assert!(frame.contains(&want), "frame {i}: {frame}");
        }
    }

    #[test]
    fn resume_inside_the_window_replays_then_joins_live_without_gap_or_duplicate() {
        let hub = Hub::new();
        hub.create_with(&ch("c"), settings(50)).unwrap();
        publish_n(&hub, "c", 20);
        let epoch = hub.epoch(&ch("c")).unwrap();
        let ob = outbox(1000);
        let conn = hub.next_conn_id();
        let s = hub
            .subscribe(
                &ch("c"),
                conn,
                Dialect::V1,
                &ob,
                Start::After {
                    epoch,
                    offset: Offset(12),
                },
            )
            .unwrap();
        assert!(s.catching_up);
        assert_eq!(s.subscription.recovery, Some(Recovery::Complete));
        assert_eq!(
            (s.subscription.offset, s.subscription.from),
            (Offset(20), Offset(13))
        );
        assert!(ob.queued_frames() == 0, "the replay waits for catch_up");
        // Publishes race the replay: each step of the replay is followed by two more messages.
        let mut steps = 0;
        while hub.catch_up(&ch("c"), conn, 3, 1 << 20) == CatchUp::More {
            publish_n(&hub, "c", 2);
            steps += 1;
            assert!(steps < 100);
        }
        publish_n(&hub, "c", 3);
        let got = offsets(&ob);
        let last = hub.last_offset(&ch("c")).unwrap().0;
        let want: Vec<String> = (13..=last).map(|o| o.to_string()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_replay_never_makes_a_live_delivery_overflow_a_subscriber_that_reads() {
        // The churn soak's failure: a 64-frame queue filled to its limit by a replay, then one
        // live message of another `disconnect` channel arrived before the writer took the queue,
        // and the client was closed as a slow consumer although it read everything.
        let hub = Hub::new();
        hub.create_with(&ch("backlog"), settings(1000)).unwrap();
        hub.create(&ch("live"));
        publish_n(&hub, "backlog", 1000);
        let ob = outbox(64);
        let conn = hub.next_conn_id();
        hub.subscribe(&ch("live"), conn, Dialect::V1, &ob, Start::New)
            .unwrap();
        let s = hub
            .subscribe(&ch("backlog"), conn, Dialect::V1, &ob, Start::Oldest)
            .unwrap();
        assert!(s.catching_up);
        let (mut replayed, mut live) = (Vec::new(), Vec::new());
        let mut steps = 0;
        loop {
            // The session's pump: as much as the outbox leaves replays.
            let (frames, bytes) = ob.replay_room();
            let progress = hub.catch_up(&ch("backlog"), conn, frames, bytes);
            // Then, before the writer wakes, as many live messages as the queue holds: a client
            // that reads keeps up with this much without any replay.
            publish_n(&hub, "live", 64);
            assert!(!ob.is_closed(), "closed by its own replay at step {steps}");
            for t in drain(&ob) {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                let o = v["offset"].as_u64().unwrap();
                match v["channel"].as_str().unwrap() {
                    "backlog" => replayed.push(o),
                    _ => live.push(o),
                }
            }
            steps += 1;
            if progress == CatchUp::Done {
                break;
            }
            assert!(steps < 1000, "the replay makes progress");
        }
        assert_eq!(replayed, (1..=1000).collect::<Vec<_>>());
        assert_eq!(live, (1..=64 * steps).collect::<Vec<_>>());
    }

    #[test]
    fn replay_frames_go_first_and_fill_half_the_queue() {
        let hub = Hub::new();
        hub.create_with(&ch("r"), settings(100)).unwrap();
        publish_n(&hub, "r", 100);
        let ob = outbox(10);
        let conn = hub.next_conn_id();
        hub.subscribe(&ch("r"), conn, Dialect::V1, &ob, Start::Oldest)
            .unwrap();
        assert_eq!(ob.replay_room().0, 5);
        assert_eq!(hub.catch_up(&ch("r"), conn, 100, 1 << 30), CatchUp::More);
        assert_eq!(ob.queued_frames(), 5, "a replay fills half of the queue");
        assert_eq!(ob.replay_room().0, 0);
        // A live frame queued meanwhile is written after the replayed ones.
        ob.push(Bytes::from_static(b"\x81\x02{}")).unwrap();
        let got = drain(&ob);
        assert_eq!(got.len(), 6);
        assert_eq!(got[5], "{}");
    }

    #[test]
    fn the_channel_table_is_bounded() {
        let hub = Hub::with_limits(HubLimits {
            max_channels: 3,
            ..HubLimits::default()
        });
        for c in ["a", "b", "c"] {
            assert!(hub.create_with(&ch(c), settings(1)).unwrap().created);
        }
        assert_eq!(
            hub.create_with(&ch("d"), settings(1)),
            Err(HubError::TooManyChannels { max: 3 })
        );
        assert!(!hub.exists(&ch("d")));
        // An existing channel is still "created" idempotently at the limit.
        assert!(!hub.create_with(&ch("a"), settings(1)).unwrap().created);
        assert_eq!(hub.stats().channels, 3);
        hub.delete(&ch("b")).unwrap();
        assert!(hub.create_with(&ch("d"), settings(1)).unwrap().created);
        assert_eq!(hub.stats().channels, 3);
    }

    #[test]
    fn the_msg_id_table_is_bounded_for_the_whole_hub() {
        let hub = Hub::with_limits(HubLimits {
            max_msg_ids: 5,
            ..HubLimits::default()
        });
        hub.create(&ch("a"));
        hub.create(&ch("b"));
        hub.create_with(
            &ch("small"),
            ChannelSettings {
                dedupe_max_ids: 1,
                ..settings(0)
            },
        )
        .unwrap();
        let p = Payload::text("x");
        let with = |id| PublishOptions {
            msg_id: Some(id),
            publisher: None,
        };
        for id in ["a1", "a2", "a3"] {
            hub.publish_with(&ch("a"), &p, with(id)).unwrap();
        }
        hub.publish_with(&ch("b"), &p, with("b1")).unwrap();
        hub.publish_with(&ch("small"), &p, with("s1")).unwrap();
        assert_eq!(hub.stats().msg_ids, 5);
        // Full: a new id is refused and publishes nothing.
        assert_eq!(
            hub.publish_with(&ch("a"), &p, with("a4")),
            Err(HubError::TooManyMsgIds { max: 5 })
        );
        assert_eq!(hub.last_offset(&ch("a")), Ok(Offset(3)));
        // Repeats are still recognised, and publishes without an id go through.
        assert!(
            hub.publish_with(&ch("a"), &p, with("a2"))
                .unwrap()
                .duplicate
        );
        assert_eq!(hub.publish(&ch("a"), &p), Ok(Offset(4)));
        // A channel at its own count forgets its own oldest id, as documented: no growth.
        hub.publish_with(&ch("small"), &p, with("s2")).unwrap();
        assert_eq!(hub.stats().msg_ids, 5);
        // Deleting a channel gives its ids back.
        hub.delete(&ch("a")).unwrap();
        assert_eq!(hub.stats().msg_ids, 2);
        hub.publish_with(&ch("b"), &p, with("b2")).unwrap();
        assert_eq!(hub.stats().msg_ids, 3);
    }

    #[test]
    fn reply_routes_are_bounded_for_the_whole_hub() {
        let hub = Hub::with_limits(HubLimits {
            max_reply_routes: 4,
            ..HubLimits::default()
        });
        let rpc = |window| ChannelSettings {
            replies: true,
            reply_window: window,
            ..settings(0)
        };
        hub.create_with(&ch("a"), rpc(3)).unwrap();
        hub.create_with(&ch("b"), rpc(10)).unwrap();
        let publisher = outbox(100);
        let pc = hub.next_conn_id();
        let by = PublishOptions {
            msg_id: None,
            publisher: Some((pc, &publisher)),
        };
        let p = Payload::text("q");
        for _ in 0..5 {
            hub.publish_with(&ch("a"), &p, by).unwrap();
        }
        // `a` keeps its window of 3 (offsets 3..=5).
        assert_eq!(hub.stats().reply_routes, 3);
        hub.publish_with(&ch("b"), &p, by).unwrap();
        assert_eq!(hub.stats().reply_routes, 4);
        // The hub is full: `b` gives up its own oldest route for each new one.
        for _ in 0..3 {
            hub.publish_with(&ch("b"), &p, by).unwrap();
        }
        assert_eq!(hub.stats().reply_routes, 4);
        let body = Payload::text("a");
        assert!(matches!(
            hub.reply(&ch("b"), Offset(3), ConnId(9), &body),
            Err(ReplyError::NoSuchMessage { .. })
        ));
        hub.reply(&ch("b"), Offset(4), ConnId(9), &body).unwrap();
        hub.reply(&ch("a"), Offset(5), ConnId(9), &body).unwrap();
        hub.reply(&ch("a"), Offset(3), ConnId(9), &body).unwrap();
        // A channel with no route to give up keeps none, and stays consistent.
        hub.create_with(&ch("c"), rpc(10)).unwrap();
        hub.publish_with(&ch("c"), &p, by).unwrap();
        assert!(matches!(
            hub.reply(&ch("c"), Offset(1), ConnId(9), &body),
            Err(ReplyError::NoSuchMessage { .. })
        ));
        hub.delete(&ch("a")).unwrap();
        assert_eq!(hub.stats().reply_routes, 1);
        hub.publish_with(&ch("c"), &p, by).unwrap();
        hub.reply(&ch("c"), Offset(2), ConnId(9), &body).unwrap();
        assert!(matches!(
            hub.reply(&ch("c"), Offset(1), ConnId(9), &body),
            Err(ReplyError::NoSuchMessage { .. })
        ));
    }

    #[test]
    fn subscriptions_are_bounded_for_the_whole_hub() {
        let hub = Hub::with_limits(HubLimits {
            max_subscriptions: 3,
            ..HubLimits::default()
        });
        hub.create(&ch("a"));
        hub.create(&ch("b"));
        let ob = outbox(10);
        let (c1, c2) = (hub.next_conn_id(), hub.next_conn_id());
        for (c, conn) in [("a", c1), ("b", c1), ("a", c2)] {
            hub.subscribe(&ch(c), conn, Dialect::V1, &ob, Start::New)
                .unwrap();
        }
        assert_eq!(
            hub.subscribe(&ch("b"), c2, Dialect::V1, &ob, Start::New),
            Err(HubError::TooManySubscriptions { max: 3 })
        );
        // Subscribing again is not a new subscription.
        assert!(
            hub.subscribe(&ch("a"), c2, Dialect::V1, &ob, Start::New)
                .unwrap()
                .already
        );
        assert!(hub.unsubscribe(&ch("a"), c1));
        hub.subscribe(&ch("b"), c2, Dialect::V1, &ob, Start::New)
            .unwrap();
        hub.delete(&ch("b")).unwrap();
        assert_eq!(hub.stats().subscriptions, 1);
    }

    #[test]
    fn expired_msg_ids_leave_the_hub_count() {
        let hub = Hub::new();
        hub.create_with(
            &ch("c"),
            ChannelSettings {
                dedupe_window: Duration::from_millis(30),
                ..settings(0)
            },
        )
        .unwrap();
        let opts = PublishOptions {
            msg_id: Some("k"),
            publisher: None,
        };
        hub.publish_with(&ch("c"), &Payload::text("x"), opts)
            .unwrap();
        assert_eq!(hub.stats().msg_ids, 1);
        std::thread::sleep(Duration::from_millis(50));
        hub.sweep();
        assert_eq!(hub.stats().msg_ids, 0);
    }

    #[test]
    fn the_sweep_gives_back_the_capacity_of_emptied_tables() {
        let hub = Hub::new();
        hub.create_with(
            &ch("c"),
            ChannelSettings {
                dedupe_window: Duration::from_millis(30),
                backlog_age: Duration::from_millis(30),
                ..settings(1000)
            },
        )
        .unwrap();
        for i in 0..1000 {
            let opts = PublishOptions {
                msg_id: Some(&i.to_string()),
                publisher: None,
            };
            hub.publish_with(&ch("c"), &Payload::text("x"), opts)
                .unwrap();
        }
        let c = hub.channel(&ch("c")).unwrap();
        assert!(c.lock().dedupe.ids.capacity() >= 1000);
        assert!(c.lock().backlog.capacity() >= 1000);
        std::thread::sleep(Duration::from_millis(50));
        hub.sweep();
        let st = c.lock();
        assert_eq!((st.dedupe.ids.len(), st.backlog.len()), (0, 0));
        assert!(
            st.dedupe.ids.capacity() < 64,
            "{}",
            st.dedupe.ids.capacity()
        );
        assert!(st.dedupe.order.capacity() < 64);
        assert!(st.backlog.capacity() < 64);
    }

    #[test]
    fn history_replies_are_bounded_in_bytes_and_page_through_anything() {
        let hub = Hub::new();
        hub.create_with(&ch("c"), settings(100)).unwrap();
        let data = Payload::text(&"x".repeat(100)); // 102 bytes of JSON
        for _ in 0..10 {
            hub.publish(&ch("c"), &data).unwrap();
        }
        let entry = 102 + HISTORY_ENTRY_BYTES;
        let h = hub
            .history(&ch("c"), Start::Oldest, 1000, 3 * entry)
            .unwrap();
        assert_eq!(h.messages.len(), 3);
        assert!(h.more);
        let h = hub
            .history(&ch("c"), Start::Oldest, 1000, 3 * entry - 1)
            .unwrap();
        assert_eq!(h.messages.len(), 2);
        // Even a budget smaller than one message returns one, so a reader can page on.
        let mut next = Start::Oldest;
        let epoch = hub.epoch(&ch("c")).unwrap();
        let mut read = Vec::new();
        for _ in 0..20 {
            let h = hub.history(&ch("c"), next, 1000, 1).unwrap();
            assert_eq!(h.messages.len(), 1);
            let last = h.messages[0].0;
            read.push(last.0);
            if !h.more {
                break;
            }
            next = Start::After {
                epoch,
                offset: last,
            };
        }
        assert_eq!(read, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn channel_lists_are_bounded_in_bytes() {
        let hub = Hub::new();
        for i in 0..50 {
            hub.create(&ch(&format!("c{i:02}")));
        }
        let (page, more) = hub.list(None, None, 1000, 10 * (3 + CHANNEL_INFO_BYTES));
        assert_eq!(page.len(), 10);
        assert!(more);
        assert_eq!(page[9].channel, ch("c09"));
        let (page, more) = hub.list(None, Some(&ch("c45")), 1000, 0);
        assert_eq!(page.len(), 1, "at least one");
        assert_eq!(page[0].channel, ch("c46"));
        assert!(more);
        let (page, more) = hub.list(None, Some(&ch("c45")), 4, usize::MAX);
        assert_eq!(page.len(), 4);
        assert!(!more);
        let (page, more) = hub.list(None, Some(&ch("c45")), 3, usize::MAX);
        assert_eq!(page.len(), 3);
        assert!(more);
    }

    #[test]
    fn resume_past_the_window_or_across_epochs_says_what_was_lost() {
        let hub = Hub::new();
        hub.create_with(&ch("c"), settings(5)).unwrap();
        publish_n(&hub, "c", 20);
        let epoch = hub.epoch(&ch("c")).unwrap();
        let conn = hub.next_conn_id();
        let ob = outbox(1000);
        let after = |offset| Start::After {
            epoch,
            offset: Offset(offset),
        };
        let s = hub
            .subscribe(&ch("c"), conn, Dialect::V1, &ob, after(3))
            .unwrap();
        assert_eq!(
            s.subscription.recovery,
            Some(Recovery::Incomplete(Lost::Expired {
                from: Offset(4),
                to: Offset(15)
            }))
        );
        assert_eq!(s.subscription.from, Offset(16));
        catch_up_all(&hub, "c", conn);
        assert_eq!(offsets(&ob), ["16", "17", "18", "19", "20"]);
        hub.unsubscribe(&ch("c"), conn);

        let s = hub
            .subscribe(
                &ch("c"),
                conn,
                Dialect::V1,
                &ob,
                Start::After {
                    epoch: Epoch(epoch.0 ^ 1),
                    offset: Offset(19),
                },
            )
            .unwrap();
        assert_eq!(
            s.subscription.recovery,
            Some(Recovery::Incomplete(Lost::EpochChanged))
        );
        assert_eq!(s.subscription.from, Offset(16));
        hub.unsubscribe(&ch("c"), conn);

        assert!(matches!(
            hub.subscribe(&ch("c"), conn, Dialect::V1, &ob, after(21)),
            Err(HubError::FutureOffset { .. })
        ));
        let s = hub
            .subscribe(&ch("c"), conn, Dialect::V1, &ob, after(20))
            .unwrap();
        assert_eq!(s.subscription.recovery, Some(Recovery::Complete));
        assert!(!s.catching_up);
    }

    #[test]
    fn last_n_and_oldest() {
        let hub = Hub::new();
        hub.create_with(&ch("c"), settings(10)).unwrap();
        publish_n(&hub, "c", 25);
        let ob = outbox(1000);
        let conn = hub.next_conn_id();
        let s = hub
            .subscribe(&ch("c"), conn, Dialect::V1, &ob, Start::Last(3))
            .unwrap();
        assert_eq!(s.subscription.from, Offset(23));
        catch_up_all(&hub, "c", conn);
        assert_eq!(offsets(&ob), ["23", "24", "25"]);
        hub.unsubscribe(&ch("c"), conn);
        let s = hub
            .subscribe(&ch("c"), conn, Dialect::V1, &ob, Start::Last(1000))
            .unwrap();
        assert_eq!(s.subscription.from, Offset(16));
        hub.unsubscribe(&ch("c"), conn);
        let h = hub.history(&ch("c"), Start::Oldest, 4, usize::MAX).unwrap();
        assert_eq!(
            h.messages.iter().map(|m| m.0.0).collect::<Vec<_>>(),
            [16, 17, 18, 19]
        );
        assert!(h.more);
        assert_eq!(&h.messages[0].1.json()[..], b"\"15\"");
        let h = hub.history(&ch("c"), Start::New, 4, usize::MAX).unwrap();
        assert!(h.messages.is_empty() && !h.more);
        assert_eq!(h.subscription.from, Offset(26));
    }

    #[test]
    fn the_memory_bound_holds_and_keeps_the_newest() {
        let limit = 20_000;
        let hub = Hub::with_limits(HubLimits {
            backlog_memory_bytes: limit,
            ..HubLimits::default()
        });
        for c in ["a", "b", "c"] {
            hub.create_with(&ch(c), settings(100_000)).unwrap();
        }
        let data = Payload::text(&"x".repeat(200));
        for _ in 0..2000 {
            for c in ["a", "b", "c"] {
                hub.publish(&ch(c), &data).unwrap();
                assert!(hub.stats().backlog_bytes <= limit);
            }
        }
        let h = hub
            .history(&ch("c"), Start::Oldest, 1000, usize::MAX)
            .unwrap();
        assert!(!h.messages.is_empty());
        let last = h.messages.last().unwrap().0;
        assert_eq!(last, Offset(2000), "the newest message is kept");
        let total: usize = hub
            .list(None, None, 10, usize::MAX)
            .0
            .iter()
            .map(|i| i.backlog_bytes)
            .sum();
        assert_eq!(total, hub.stats().backlog_bytes);
        for c in ["a", "b", "c"] {
            hub.delete(&ch(c)).unwrap();
        }
        assert_eq!(hub.stats().backlog_bytes, 0, "deletion frees the backlog");
    }

    #[test]
    fn messages_expire_with_age() {
        let hub = Hub::new();
        hub.create_with(
            &ch("c"),
            ChannelSettings {
                backlog_age: Duration::from_millis(50),
                ..settings(10)
            },
        )
        .unwrap();
        publish_n(&hub, "c", 3);
        std::thread::sleep(Duration::from_millis(80));
        hub.sweep();
        assert_eq!(hub.stats().backlog_bytes, 0);
        let h = hub
            .history(&ch("c"), Start::Oldest, 10, usize::MAX)
            .unwrap();
        assert!(h.messages.is_empty());
        assert_eq!(h.subscription.from, Offset(4));
    }

    #[test]
    fn drop_oldest_replaces_queued_messages_with_a_gap_event() {
        let hub = Hub::new();
        hub.create_with(
            &ch("c"),
            ChannelSettings {
                slow_policy: SlowPolicy::DropOldest,
                ..settings(100)
            },
        )
        .unwrap();
        let (slow, fast) = (outbox(4), outbox(1000));
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &slow, Start::New)
            .unwrap();
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &fast, Start::New)
            .unwrap();
        publish_n(&hub, "c", 10);
        // 1-4 queued; 5 overflows: 1-4 become a gap, 5 follows; 8 overflows again: the gap grows.
        assert_eq!(offsets(&slow), ["gap 1-7", "8", "9", "10"]);
        assert_eq!(offsets(&fast).len(), 10);
        publish_n(&hub, "c", 1);
        assert_eq!(offsets(&slow), ["11"]);
        assert_eq!(hub.subscriber_count(&ch("c")), Ok(2));
    }

    #[test]
    fn latest_keeps_only_the_newest_queued_message() {
        let hub = Hub::new();
        hub.create_with(
            &ch("c"),
            ChannelSettings {
                slow_policy: SlowPolicy::Latest,
                ..settings(0)
            },
        )
        .unwrap();
        let slow = outbox(2);
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &slow, Start::New)
            .unwrap();
        publish_n(&hub, "c", 10);
        // Each overflow leaves only the newest message of the subscription queued.
        assert_eq!(offsets(&slow), ["9", "10"]);
    }

    #[test]
    fn msg_ids_deduplicate_within_the_window() {
        let hub = Hub::new();
        hub.create(&ch("c"));
        let ob = outbox(100);
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &ob, Start::New)
            .unwrap();
        let p = Payload::text("x");
        let with = |id| PublishOptions {
            msg_id: Some(id),
            publisher: None,
        };
        let a = hub.publish_with(&ch("c"), &p, with("k1")).unwrap();
        let b = hub.publish_with(&ch("c"), &p, with("k2")).unwrap();
        let again = hub.publish_with(&ch("c"), &p, with("k1")).unwrap();
        assert_eq!((a.offset, a.duplicate), (Offset(1), false));
        assert_eq!((b.offset, b.duplicate), (Offset(2), false));
        assert_eq!((again.offset, again.duplicate), (Offset(1), true));
        assert_eq!(offsets(&ob), ["1", "2"], "a duplicate is not delivered");
    }

    #[test]
    fn replies_reach_the_publisher_only_where_allowed() {
        let hub = Hub::new();
        hub.create_with(
            &ch("rpc"),
            ChannelSettings {
                replies: true,
                ..settings(10)
            },
        )
        .unwrap();
        hub.create(&ch("plain"));
        let (publisher, other) = (outbox(100), outbox(100));
        let (pc, oc) = (hub.next_conn_id(), hub.next_conn_id());
        let by = |conn, ob| PublishOptions {
            msg_id: None,
            publisher: Some((conn, ob)),
        };
        let p = Payload::text("q");
        hub.publish_with(&ch("rpc"), &p, by(pc, &publisher))
            .unwrap();
        hub.publish_with(&ch("rpc"), &p, by(oc, &other)).unwrap();
        hub.publish(&ch("rpc"), &p).unwrap();
        let body = Payload::from_json_bytes(Bytes::from_static(b"{\"a\":1}")).unwrap();
        let replier = ConnId(77);
        hub.reply(&ch("rpc"), Offset(1), replier, &body).unwrap();
        assert_eq!(
            drain(&publisher),
            [r#"{"event":"reply","channel":"rpc","offset":1,"from":"77","data":{"a":1}}"#]
        );
        assert!(drain(&other).is_empty());
        assert!(matches!(
            hub.reply(&ch("rpc"), Offset(3), replier, &body),
            Err(ReplyError::Gone { .. })
        ));
        assert!(matches!(
            hub.reply(&ch("rpc"), Offset(9), replier, &body),
            Err(ReplyError::NoSuchMessage { .. })
        ));
        hub.publish(&ch("plain"), &p).unwrap();
        assert!(matches!(
            hub.reply(&ch("plain"), Offset(1), replier, &body),
            Err(ReplyError::NotAllowed(_))
        ));
        hub.forget_publisher(pc);
        assert!(matches!(
            hub.reply(&ch("rpc"), Offset(1), replier, &body),
            Err(ReplyError::Gone { .. })
        ));
    }

    #[test]
    fn a_reply_to_a_publisher_that_is_not_keeping_up_is_refused_without_closing_it() {
        let hub = Hub::new();
        hub.create_with(
            &ch("rpc"),
            ChannelSettings {
                replies: true,
                ..settings(10)
            },
        )
        .unwrap();
        let publisher = outbox(2);
        let pc = hub.next_conn_id();
        let by = PublishOptions {
            msg_id: None,
            publisher: Some((pc, &publisher)),
        };
        hub.publish_with(&ch("rpc"), &Payload::text("q"), by)
            .unwrap();
        let body = Payload::text("a");
        hub.reply(&ch("rpc"), Offset(1), ConnId(9), &body).unwrap();
        hub.reply(&ch("rpc"), Offset(1), ConnId(9), &body).unwrap();
        assert!(matches!(
            hub.reply(&ch("rpc"), Offset(1), ConnId(9), &body),
            Err(ReplyError::Busy { .. })
        ));
        assert!(
            !publisher.is_closed(),
            "replies never cost the publisher its connection"
        );
        assert_eq!(drain(&publisher).len(), 2);
        hub.reply(&ch("rpc"), Offset(1), ConnId(9), &body).unwrap();
    }

    #[test]
    fn deletion_notifies_subscribers_and_a_new_channel_gets_a_new_epoch() {
        let hub = Hub::new();
        hub.create(&ch("c"));
        let epoch = hub.epoch(&ch("c")).unwrap();
        let (a, b) = (outbox(100), outbox(100));
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &a, Start::New)
            .unwrap();
        hub.subscribe(
            &ch("c"),
            hub.next_conn_id(),
            Dialect::Legacy,
            &b,
            Start::New,
        )
        .unwrap();
        hub.delete(&ch("c")).unwrap();
        assert_eq!(
            drain(&a),
            [r#"{"event":"closed","channel":"c","reason":"deleted"}"#]
        );
        assert_eq!(drain(&b), [r#"{"Error":"Channel not found: c"}"#]);
        assert_eq!(hub.stats().subscriptions, 0);
        assert_eq!(hub.delete(&ch("c")), Err(HubError::NotFound(ch("c"))));
        hub.create(&ch("c"));
        assert_ne!(hub.epoch(&ch("c")).unwrap(), epoch);
        assert_eq!(hub.publish(&ch("c"), &Payload::text("x")), Ok(Offset(1)));
    }

    #[test]
    fn lists_channels_in_order_with_backlog_state() {
        let hub = Hub::new();
        for c in ["b", "a.1", "a.2", "c"] {
            hub.create(&ch(c));
        }
        publish_n(&hub, "a.2", 3);
        let (all, more) = hub.list(None, None, 10, usize::MAX);
        assert!(!more);
        assert_eq!(
            all.iter().map(|i| i.channel.as_str()).collect::<Vec<_>>(),
            ["a.1", "a.2", "b", "c"]
        );
        assert_eq!(all[1].offset, Offset(3));
        assert_eq!(all[1].backlog_messages, 3);
        assert_eq!(all[1].first_offset, Offset(1));
        let (page, more) = hub.list(Some("a."), None, 1, usize::MAX);
        assert!(more);
        assert_eq!(page[0].channel, ch("a.1"));
        let (page, more) = hub.list(Some("a."), Some(&ch("a.1")), 1, usize::MAX);
        assert!(!more);
        assert_eq!(page[0].channel, ch("a.2"));
    }

    #[test]
    fn max_subscribers_is_enforced() {
        let hub = Hub::new();
        hub.create_with(
            &ch("c"),
            ChannelSettings {
                max_subscribers: Some(1),
                ..ChannelSettings::default()
            },
        )
        .unwrap();
        let ob = outbox(10);
        hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &ob, Start::New)
            .unwrap();
        assert!(matches!(
            hub.subscribe(&ch("c"), hub.next_conn_id(), Dialect::V1, &ob, Start::New),
            Err(HubError::Full { max: 1, .. })
        ));
    }

    #[test]
    fn legacy_subscribers_get_the_configured_replay() {
        let hub = Hub::new();
        hub.create_with(&ch("c"), settings(10)).unwrap();
        publish_n(&hub, "c", 5);
        let ob = outbox(100);
        let conn = hub.next_conn_id();
        let s = hub
            .subscribe(&ch("c"), conn, Dialect::Legacy, &ob, Start::Last(2))
            .unwrap();
        assert!(s.catching_up);
        catch_up_all(&hub, "c", conn);
        publish_n(&hub, "c", 1);
        assert_eq!(
            drain(&ob),
            [
                r#"{"ChannelMessage":["c",{"Text":"3"}]}"#,
                r#"{"ChannelMessage":["c",{"Text":"4"}]}"#,
                r#"{"ChannelMessage":["c",{"Text":"0"}]}"#
            ]
        );
    }
}
