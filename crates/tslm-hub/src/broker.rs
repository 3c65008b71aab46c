//! The broker seam: every operation on the channel *log* that a cluster would move to a shared
//! store (the next offset and the append, with `msg_id` de-duplication; reads from a start
//! position; channel existence, epoch, options, listing and counts; the route of a reply to the
//! connection that published a message). The server's channel-operations layer (`ops`) is its
//! only caller; the per-node fan-out (subscribers, outboxes, replays) stays with the [`Hub`].
//!
//! Its only implementation today is [`MemoryBroker`], the hub's own log. The methods return
//! futures because a remote store answers later; the in-memory one answers at once, and a
//! publish pays one small allocation for the boxed future (never one per subscriber).
//!
//! How a Redis broker fits (designed here, not built): `publish` runs one script that checks the
//! `msg_id`, takes the channel's next offset and appends to its stream, and only then answers,
//! so a publish is acknowledged only after the shared store assigned its offset; every node's
//! [`Hub`] channel is a mirror of the shared log that accepts only the next expected offset and
//! heals a hole from the stream before fanning out. `prepare_read` fills a node's mirror from the
//! stream before a resume is answered. Connection ids are node-qualified ([`ConnId::node`]), so
//! a reply route names the node that holds the publisher's connection and a remote reply is
//! forwarded to it.

use std::future::Future;
use std::pin::Pin;

use tslm_protocol::{ChannelInfo, ChannelName, Epoch, Offset, Payload, Start};

use crate::hub::Hub;
use crate::settings::ChannelSettings;
use crate::types::{ConnId, Created, History, HubError, PublishOptions, Published, ReplyError};

/// A broker's answer: a boxed future, so that `dyn Broker` works.
pub type BrokerFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Which channels a listing may show (the caller's read permissions).
pub type Visible<'a> = &'a (dyn Fn(&ChannelName) -> bool + Sync);

/// A channel's place in the log: its epoch, newest offset and subscribers (all nodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub epoch: Epoch,
    pub last_offset: Offset,
    pub subscribers: usize,
}

/// The channel log's store. See the module documentation for the contract a shared store keeps.
pub trait Broker: Send + Sync + 'static {
    /// Creates `name` with `settings`, or reports the channel that exists (`created: false`).
    fn create<'a>(
        &'a self,
        name: &'a ChannelName,
        settings: ChannelSettings,
    ) -> BrokerFuture<'a, Result<Created, HubError>>;

    /// Deletes `name`; its subscribers on every node get a `closed` event.
    fn delete<'a>(&'a self, name: &'a ChannelName) -> BrokerFuture<'a, Result<(), HubError>>;

    /// Assigns the next offset to `data` and appends it (or answers the offset a remembered
    /// `msg_id` got); resolves only once the offset is assigned.
    fn publish<'a>(
        &'a self,
        name: &'a ChannelName,
        data: &'a Payload,
        opts: PublishOptions<'a>,
    ) -> BrokerFuture<'a, Result<Published, HubError>>;

    /// Whether [`Broker::publish_many`] sends several publishes at once, so that a caller with
    /// a burst of publishes should group them (cluster mode: one Redis round trip per group).
    /// `false` (the default): they cost the same one by one.
    fn publishes_together(&self) -> bool {
        false
    }

    /// Publishes several messages to `name` from one publisher, in order: each answer is what
    /// [`Broker::publish`] would have answered, one after the other, in the same place. A
    /// store with round trips sends them together (cluster mode: one script, one round trip);
    /// the default publishes them one by one.
    fn publish_many<'a>(
        &'a self,
        name: &'a ChannelName,
        items: &'a [(&'a Payload, Option<&'a str>)],
        publisher: Option<(ConnId, &'a std::sync::Arc<crate::Outbox>)>,
    ) -> BrokerFuture<'a, Vec<Result<Published, HubError>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(items.len());
            for (data, msg_id) in items {
                let opts = PublishOptions {
                    msg_id: *msg_id,
                    publisher,
                };
                out.push(self.publish(name, data, opts).await);
            }
            out
        })
    }

    /// Reads from `start`: at most `limit` messages and about `max_bytes` (see [`Hub::history`]).
    fn history<'a>(
        &'a self,
        name: &'a ChannelName,
        start: Start,
        limit: usize,
        max_bytes: usize,
    ) -> BrokerFuture<'a, Result<History, HubError>>;

    /// Makes this node's mirror of `name` hold what a subscription from `start` needs, before the
    /// fan-out answers it (a resume). The in-memory log is its own mirror.
    fn prepare_read<'a>(
        &'a self,
        name: &'a ChannelName,
        start: Start,
    ) -> BrokerFuture<'a, Result<(), HubError>>;

    /// The channel's options.
    fn settings<'a>(
        &'a self,
        name: &'a ChannelName,
    ) -> BrokerFuture<'a, Result<ChannelSettings, HubError>>;

    /// The channel's epoch, newest offset and subscriber count.
    fn head<'a>(&'a self, name: &'a ChannelName) -> BrokerFuture<'a, Result<Head, HubError>>;

    /// Lists channels in name order (see [`Hub::list_where`]).
    fn list<'a>(
        &'a self,
        prefix: Option<&'a str>,
        after: Option<&'a ChannelName>,
        limit: usize,
        max_bytes: usize,
        visible: Visible<'a>,
    ) -> BrokerFuture<'a, (Vec<ChannelInfo>, bool)>;

    /// Hands `replier`'s reply to message `offset` of `name` to the connection that published
    /// it, on whichever node holds it.
    fn reply<'a>(
        &'a self,
        name: &'a ChannelName,
        offset: Offset,
        replier: ConnId,
        data: &'a Payload,
    ) -> BrokerFuture<'a, Result<(), ReplyError>>;
}

/// The single-node broker: the hub's own log, in memory.
#[derive(Clone)]
pub struct MemoryBroker {
    hub: Hub,
}

impl MemoryBroker {
    pub fn new(hub: Hub) -> Self {
        Self { hub }
    }
}

fn now<'a, T: Send + 'a>(v: T) -> BrokerFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl Broker for MemoryBroker {
    fn create<'a>(
        &'a self,
        name: &'a ChannelName,
        settings: ChannelSettings,
    ) -> BrokerFuture<'a, Result<Created, HubError>> {
        now(self.hub.create_with(name, settings))
    }

    fn delete<'a>(&'a self, name: &'a ChannelName) -> BrokerFuture<'a, Result<(), HubError>> {
        now(self.hub.delete(name))
    }

    fn publish<'a>(
        &'a self,
        name: &'a ChannelName,
        data: &'a Payload,
        opts: PublishOptions<'a>,
    ) -> BrokerFuture<'a, Result<Published, HubError>> {
        now(self.hub.publish_with(name, data, opts))
    }

    fn history<'a>(
        &'a self,
        name: &'a ChannelName,
        start: Start,
        limit: usize,
        max_bytes: usize,
    ) -> BrokerFuture<'a, Result<History, HubError>> {
        now(self.hub.history(name, start, limit, max_bytes))
    }

    fn prepare_read<'a>(
        &'a self,
        name: &'a ChannelName,
        _start: Start,
    ) -> BrokerFuture<'a, Result<(), HubError>> {
        now(self.hub.epoch(name).map(|_| ()))
    }

    fn settings<'a>(
        &'a self,
        name: &'a ChannelName,
    ) -> BrokerFuture<'a, Result<ChannelSettings, HubError>> {
        now(self.hub.settings(name))
    }

    fn head<'a>(&'a self, name: &'a ChannelName) -> BrokerFuture<'a, Result<Head, HubError>> {
        let head = (|| {
            Ok(Head {
                epoch: self.hub.epoch(name)?,
                last_offset: self.hub.last_offset(name)?,
                subscribers: self.hub.subscriber_count(name)?,
            })
        })();
        now(head)
    }

    fn list<'a>(
        &'a self,
        prefix: Option<&'a str>,
        after: Option<&'a ChannelName>,
        limit: usize,
        max_bytes: usize,
        visible: Visible<'a>,
    ) -> BrokerFuture<'a, (Vec<ChannelInfo>, bool)> {
        now(self
            .hub
            .list_where(prefix, after, limit, max_bytes, visible))
    }

    fn reply<'a>(
        &'a self,
        name: &'a ChannelName,
        offset: Offset,
        replier: ConnId,
        data: &'a Payload,
    ) -> BrokerFuture<'a, Result<(), ReplyError>> {
        now(self.hub.reply(name, offset, replier, data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    /// The in-memory broker answers every operation through the seam exactly as the hub does.
    #[tokio::test]
    async fn the_memory_broker_is_the_hubs_log() {
        let hub = Hub::new();
        let broker: std::sync::Arc<dyn Broker> =
            std::sync::Arc::new(MemoryBroker::new(hub.clone()));
        let c = name("a.b");
        let data = Payload::from_json_bytes(bytes::Bytes::from_static(b"\"x\"")).unwrap();
        assert_eq!(
            broker.publish(&c, &data, PublishOptions::default()).await,
            Err(HubError::NotFound(c.clone()))
        );
        assert_eq!(
            broker.prepare_read(&c, Start::New).await,
            Err(HubError::NotFound(c.clone()))
        );
        let created = broker.create(&c, ChannelSettings::default()).await.unwrap();
        assert!(created.created);
        let opts = PublishOptions {
            msg_id: Some("m1"),
            publisher: None,
        };
        let p = broker.publish(&c, &data, opts).await.unwrap();
        assert_eq!((p.offset, p.duplicate), (Offset(1), false));
        let again = broker.publish(&c, &data, opts).await.unwrap();
        assert_eq!((again.offset, again.duplicate), (Offset(1), true));
        broker.prepare_read(&c, Start::Oldest).await.unwrap();
        let head = broker.head(&c).await.unwrap();
        assert_eq!(head.last_offset, Offset(1));
        assert_eq!(head.epoch, created.epoch);
        assert_eq!(head.subscribers, 0);
        let h = broker
            .history(&c, Start::Oldest, 10, 1 << 20)
            .await
            .unwrap();
        assert_eq!(h.messages.len(), 1);
        let all = |_: &ChannelName| true;
        let (list, more) = broker.list(Some("a."), None, 10, 1 << 20, &all).await;
        assert_eq!((list.len(), more), (1, false));
        let none = |_: &ChannelName| false;
        assert!(
            broker
                .list(None, None, 10, 1 << 20, &none)
                .await
                .0
                .is_empty()
        );
        assert_eq!(
            broker.reply(&c, Offset(1), ConnId(9), &data).await,
            Err(ReplyError::NotAllowed(c.clone()))
        );
        broker.delete(&c).await.unwrap();
        assert_eq!(
            broker.settings(&c).await.err(),
            Some(HubError::NotFound(c.clone()))
        );
    }
}
