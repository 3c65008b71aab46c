//! Types shared by the codecs, the hub and the server for channel streams: epochs, start
//! positions, recovery outcomes and channel descriptions. Pure data, no I/O.

// Numbers decoded from the wire (offsets, limits, `last`, epochs, lengths) meet arithmetic here:
// none may overflow (checked or saturating operations only).
#![warn(clippy::arithmetic_side_effects)]

use crate::{ChannelName, Offset};

/// Identifies one history of a channel. A channel gets a fresh random epoch whenever its history
/// starts over (gateway restart, deletion and re-creation), so an `(epoch, offset)` pair names
/// one message for ever. On the wire: a string of 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch(pub u64);

impl Epoch {
    /// Parses the wire form (exactly 16 hex digits, either case).
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(s, 16).ok().map(Self)
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a subscription (or a history read) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Only messages published from now on (the default for `subscribe`).
    #[default]
    New,
    /// The oldest message the backlog still holds (the default for `history`).
    Oldest,
    /// The last `n` messages the backlog holds (fewer if it holds fewer).
    Last(u64),
    /// Resume: the client last saw `offset` of `epoch`; start at the message after it.
    After { epoch: Epoch, offset: Offset },
}

/// Whether a resume (`Start::After`) got everything the client missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Every message after the client's offset follows, in order.
    Complete,
    /// Some messages are gone; the stream continues from the oldest one kept.
    Incomplete(Lost),
}

/// What a resume could not recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The epoch the client names is not the channel's: its history was lost (restart,
    /// deletion). What the client missed cannot be numbered.
    EpochChanged,
    /// Offsets `from..=to` fell out of the backlog (its size or age limit, or the memory bound).
    Expired { from: Offset, to: Offset },
}

/// The answer to a subscribe: where the stream stands and what follows the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub epoch: Epoch,
    /// The channel's last offset when the subscription started: deliveries with offsets up to it
    /// are replayed from the backlog, later ones are live.
    pub offset: Offset,
    /// The first offset this subscriber will receive (`offset + 1` when nothing is replayed).
    pub from: Offset,
    /// Present when the subscribe asked to resume (`Start::After`).
    pub recovery: Option<Recovery>,
}

/// A channel as listed for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    pub channel: ChannelName,
    pub epoch: Epoch,
    /// The last offset published (0 before the first message).
    pub offset: Offset,
    pub subscribers: usize,
    /// Messages held in the backlog.
    pub backlog_messages: usize,
    /// Bytes the backlog holds (as counted against the memory bound).
    pub backlog_bytes: usize,
    /// The oldest offset held (`offset + 1` when the backlog is empty).
    pub first_offset: Offset,
}

/// Options a `create` may carry (v1 `options` object, or the JSON body of
/// `PUT /v1/channels/{name}`). Each may only lower what the channel's class allows (or, for
/// `replies`, turn off what it allows); asking for more is refused with `forbidden`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChannelOptions {
    pub backlog_messages: Option<u64>,
    pub backlog_seconds: Option<u64>,
    pub max_message_bytes: Option<u64>,
    pub max_subscribers: Option<u64>,
    pub replies: Option<bool>,
}
