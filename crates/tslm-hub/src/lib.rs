//! The hub: channels, subscriptions and fan-out. It knows nothing of sockets: sessions hand it
//! values (names, payloads, an [`Outbox`] per connection) and it hands back offsets and errors.
//!
//! Concurrency: channels live in a sharded map (no global lock); each channel has its own short
//! std mutex, held only to assign an offset and push already-encoded frames into subscribers'
//! bounded outboxes (no I/O, no `.await`, no serialisation in the common case; see
//! [`Hub::publish`]).
//!
//! Files follow the types: `hub` (the registry and public operations), `channel` (one channel's
//! state under its lock: its log and its fan-out), `backlog`, `dedupe`, `replies` (the parts of
//! the log), `fanout` (subscribers on this node), `replay` (`catch_up`), `budget` (hub-wide
//! bounds), `broker` (the seam a shared store takes over), `counters`, `outbox` (one connection's queue), `types` (public values).

mod backlog;
pub mod broker;
mod budget;
mod channel;
mod counters;
mod dedupe;
mod fanout;
mod hub;
mod outbox;
mod replay;
mod replies;
pub mod settings;
mod types;

pub use broker::{Broker, BrokerFuture, Head, MemoryBroker};
pub use hub::{Appended, Hub, MirrorEntry};
pub use outbox::{CloseReason, Outbox, OutboxLimits, PushError};
pub use settings::{ChannelSettings, SlowPolicy};
pub use types::{
    CHANNEL_INFO_BYTES, CatchUp, ConnId, Created, History, HubError, HubLimits, HubStats,
    PublishOptions, Published, ReplyError, Subscribed,
};
