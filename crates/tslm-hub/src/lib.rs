//! The hub: channels, subscriptions and fan-out. It knows nothing of sockets: sessions hand it
//! values (names, payloads, an [`Outbox`] per connection) and it hands back offsets and errors.
//!
//! Concurrency: channels live in a sharded map (no global lock); each channel has its own short
//! std mutex, held only to assign an offset and push already-encoded frames into subscribers'
//! bounded outboxes (no I/O, no `.await`, no serialisation in the common case; see
//! [`Hub::publish`]).

mod hub;
mod outbox;
pub mod settings;

pub use hub::{
    CatchUp, ConnId, Created, History, Hub, HubError, HubLimits, HubStats, PublishOptions,
    Published, ReplyError, Subscribed,
};
pub use outbox::{CloseReason, Outbox, OutboxLimits, PushError};
pub use settings::{ChannelSettings, SlowPolicy};
