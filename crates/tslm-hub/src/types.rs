//! The hub's public values: ids, errors, outcomes of operations, limits and counters.

use std::sync::Arc;

use tslm_protocol::{ChannelName, Epoch, Offset, Payload, Subscription};

use crate::outbox::Outbox;

/// A connection's id, unique for the life of the process (never 0). Its top 16 bits name the
/// node that holds the connection ([`ConnId::node`]; 0 on a single node), so that a reply route
/// kept in a shared log names the node to forward the reply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    const NODE_SHIFT: u32 = 48;

    /// The `n`th connection of `node` (`n` wraps within the low 48 bits).
    pub fn on_node(node: u16, n: u64) -> Self {
        ConnId((u64::from(node) << Self::NODE_SHIFT) | (n & ((1 << Self::NODE_SHIFT) - 1)))
    }

    /// The node that holds the connection.
    pub fn node(self) -> u16 {
        u16::try_from(self.0 >> Self::NODE_SHIFT).unwrap_or(u16::MAX)
    }
}

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
    /// The shared store (cluster mode) did not answer: nothing was done; retry later.
    #[error("the cluster's store is unavailable ({0}); retry later")]
    Unavailable(String),
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
    /// The shared store (cluster mode) did not answer.
    #[error("the cluster's store is unavailable ({0}); retry later")]
    Unavailable(String),
}

/// The outcome of a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The connection was already subscribed (subscribing is idempotent per connection; the start
    /// position of a repeated subscribe is ignored).
    pub already: bool,
    pub subscription: Subscription,
    /// Messages from the backlog are due: the connection must call [`Hub::catch_up`](crate::Hub::catch_up) until it
    /// answers [`CatchUp::Done`].
    pub catching_up: bool,
}

/// Progress of a replay, see [`Hub::catch_up`](crate::Hub::catch_up).
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
    /// The v1 `message` event of each message of `messages`, as JSON text shared with the
    /// backlog (no message is encoded again to be read).
    pub events: Vec<bytes::Bytes>,
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
    /// Messages published (each new offset; a repeated `msg_id` is not one).
    pub publishes: u64,
    /// Messages queued for subscribers: one per subscriber and message, live or replayed.
    pub deliveries: u64,
    /// Publishes answered with the offset of an earlier one with the same `msg_id`.
    pub dedupe_hits: u64,
    /// Messages dropped from subscribers' queues by the `drop_oldest` policy (each announced
    /// by a `gap` event).
    pub dropped_oldest: u64,
    /// Messages dropped from subscribers' queues by the `latest` policy.
    pub dropped_latest: u64,
    /// Resumes (subscribes after an epoch and offset) that recovered every message.
    pub resumes_recovered: u64,
    /// Resumes that found messages gone from the backlog (`lost` reason `expired`).
    pub resumes_expired: u64,
    /// Resumes across a change of epoch (`lost` reason `epoch_changed`).
    pub resumes_epoch_changed: u64,
    /// Offsets that resumes reported lost (the sum of their `expired` ranges).
    pub resume_lost_messages: u64,
    /// Subscribes answered (every start position; resumes among them).
    pub subscribes: u64,
    /// Reads of a channel's log: history requests, and each channel a long-poll or an event
    /// stream reads (an event stream reads only the channels that got a message).
    pub log_reads: u64,
    /// Replies handed to a publisher's connection.
    pub replies: u64,
    /// Messages removed from backlogs (by their channel's count or age limit, or the memory
    /// bound), or never kept for lack of memory.
    pub backlog_evicted: u64,
    /// Messages held by all backlogs together (counted when read).
    pub backlog_messages: usize,
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

#[cfg(test)]
mod tests {
    use super::ConnId;

    #[test]
    fn a_connection_id_names_its_node() {
        assert_eq!(ConnId::on_node(0, 7), ConnId(7));
        assert_eq!(ConnId::on_node(0, 7).node(), 0);
        let id = ConnId::on_node(3, 7);
        assert_eq!(id.node(), 3);
        assert_ne!(id, ConnId(7));
        assert_eq!(ConnId::on_node(u16::MAX, u64::MAX).node(), u16::MAX);
    }
}
