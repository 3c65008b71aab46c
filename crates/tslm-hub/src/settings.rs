//! Per-channel settings: what a channel keeps and how it treats slow subscribers. The server
//! resolves them from the channel classes of its configuration (and `create` options) and hands
//! them to [`crate::Hub::create`]; the hub knows nothing of patterns or listeners.

use std::time::Duration;

/// What happens to a subscriber whose connection's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlowPolicy {
    /// Close the connection (4000 "slow consumer"); the client reconnects and recovers from the
    /// backlog. The default.
    #[default]
    Disconnect,
    /// Keep the connection, drop this subscription's queued messages and queue one `gap` event
    /// naming the offsets dropped, so the client can read them from the backlog.
    DropOldest,
    /// Conflation: keep the connection and replace this subscription's queued messages with the
    /// newest one. Offsets skip; no event is sent.
    Latest,
}

impl SlowPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SlowPolicy::Disconnect => "disconnect",
            SlowPolicy::DropOldest => "drop_oldest",
            SlowPolicy::Latest => "latest",
        }
    }
}

/// The settings of one channel, fixed when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSettings {
    /// Messages kept for recovery and history (0: none).
    pub backlog_messages: usize,
    /// Messages older than this are dropped from the backlog.
    pub backlog_age: Duration,
    /// Largest `data` accepted by a publish, in bytes of its JSON text.
    pub max_message_bytes: usize,
    /// Subscribers at once (`None`: unlimited).
    pub max_subscribers: Option<usize>,
    pub slow_policy: SlowPolicy,
    /// Whether subscribers may send `reply` to a message's publisher.
    pub replies: bool,
    /// How many of the latest messages can still be replied to.
    pub reply_window: usize,
    /// Largest reply body, in bytes of its JSON text.
    pub max_reply_bytes: usize,
    /// How long a publish's `msg_id` is remembered for de-duplication.
    pub dedupe_window: Duration,
    /// Most `msg_id`s remembered per channel (the oldest are forgotten first).
    pub dedupe_max_ids: usize,
    /// Messages from the backlog replayed to a new original-protocol subscriber.
    pub legacy_replay: usize,
}

/// Defaults of the built-in channel class (documented in docs/configuration.md).
pub mod defaults {
    pub const BACKLOG_MESSAGES: usize = 100;
    pub const BACKLOG_SECONDS: u64 = 300;
    pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
    pub const REPLY_WINDOW: usize = 1024;
    pub const MAX_REPLY_BYTES: usize = 4096;
    pub const REPLIES_PER_SECOND: u32 = 10;
    pub const DEDUPE_SECONDS: u64 = 120;
    pub const DEDUPE_MAX_IDS: usize = 1000;
    pub const LEGACY_REPLAY: usize = 0;
    /// Total memory of all backlogs together.
    pub const BACKLOG_MEMORY_BYTES: usize = 256 * 1024 * 1024;
    /// Channels at once (about 700 bytes each when idle: 70 MB).
    pub const MAX_CHANNELS: usize = 100_000;
    /// `msg_id`s remembered by all channels together (about 250 bytes each: 60 MB); room for
    /// 2,000 publishes with a `msg_id` per second over the default 120-second window.
    pub const MAX_MSG_IDS: usize = 250_000;
    /// Reply routes kept by all channels together (24 bytes each: 24 MB); the default
    /// `reply_window` of 1024 on about 1,000 busy reply channels.
    pub const MAX_REPLY_ROUTES: usize = 1_000_000;
    /// Subscriptions of all connections together (about 50 bytes each with the connection's own
    /// record of it: 100 MB); 20 per connection for 100,000 connections.
    pub const MAX_SUBSCRIPTIONS: usize = 2_000_000;
}

impl Default for ChannelSettings {
    fn default() -> Self {
        Self {
            backlog_messages: defaults::BACKLOG_MESSAGES,
            backlog_age: Duration::from_secs(defaults::BACKLOG_SECONDS),
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            max_subscribers: None,
            slow_policy: SlowPolicy::Disconnect,
            replies: false,
            reply_window: defaults::REPLY_WINDOW,
            max_reply_bytes: defaults::MAX_REPLY_BYTES,
            dedupe_window: Duration::from_secs(defaults::DEDUPE_SECONDS),
            dedupe_max_ids: defaults::DEDUPE_MAX_IDS,
            legacy_replay: defaults::LEGACY_REPLAY,
        }
    }
}
