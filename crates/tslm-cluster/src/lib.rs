//! Cluster mode: the channel log lives in Redis and several gateways share it.
//!
//! [`Cluster`] implements the hub's [`Broker`] seam. Every write goes to Redis first, in one Lua
//! script (see [`scripts`]): a publish is acknowledged only once Redis assigned its offset.
//! Messages reach every node's subscribers through Redis PUB/SUB, the publishing node's
//! included (one delivery path, one order). Each node keeps a *mirror* of the channels its
//! clients read ([`tslm_hub::Hub::mirror_open`]), which takes a message only at exactly the
//! next offset; a hole (PUB/SUB is at-most-once) is healed from the Redis stream, or announced
//! as a `gap` when Redis no longer has the messages. See ARCHITECTURE.md "Cluster mode".
//!
//! Channels are spread over several Redis servers (shards) by a jump consistent hash of their
//! name; a channel's keys live on one shard and share a hash tag.
//!
//! **Redis Cluster** (`redis_cluster` seeds) is one shard whose connections route each command
//! to the master of its key's slot; a channel's keys and its PUB/SUB channel share the slot of
//! `{<channel>}`, so its scripts run on one master. The differences from one Redis:
//!
//! - the fence is read by the scripts themselves (`INFO server` on the master that runs them):
//!   a failover or restart of one master rotates the epochs of its channels only, even when
//!   the cluster client followed the new master without telling (`MOVED`, retries);
//! - messages use sharded PUB/SUB (`SPUBLISH` from the scripts, `SSUBSCRIBE` per channel on a
//!   RESP3 cluster connection); replies to another node go on `<prefix>:node:{<n>}` (sharded);
//! - the registry `<prefix>:channels` is in another slot: a create checks the channel limit
//!   (`ZCARD`) before its script and adds the name after it (also when the channel existed, which
//!   repairs a lost entry); a delete removes the name after its script. Not atomic: gateways
//!   creating at once may pass `max_channels` by a few, and a gateway stopped in between leaves
//!   a channel unlisted until it is created again, or a deleted name listed by nobody (listings
//!   skip names without a channel) until it is deleted again;
//! - commands on several channels (listings, heads, counts) go one per channel, a few at once,
//!   since a pipeline must stay in one slot;
//! - the follower makes its whole connection again, subscribes every mirror and heals them all
//!   on any disconnection of any master, a subscription Redis ended (slot moved) or an
//!   unanswered ping to the masters (see [`follow::follow_cluster`]).

mod codec;
mod follow;
mod scripts;
mod shard;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tslm_hub::broker::{BrokerFuture, Head, Visible};
use tslm_hub::{
    Broker, ChannelSettings, ConnId, Created, History, Hub, HubError, HubLimits, MirrorEntry,
    PublishOptions, Published, ReplyError,
};
use tslm_protocol::{ChannelInfo, ChannelName, Epoch, Offset, Payload, Start};

use crate::shard::{Shard, StoreError};

/// What `[cluster]` configures (validated by the server's configuration). Its `Debug` never
/// shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Redis URLs (`redis://`, `rediss://`); several: channels are spread over them. Empty
    /// with [`ClusterConfig::sentinel`].
    pub redis: Vec<String>,
    /// Redis Sentinel instead of fixed URLs: the master is asked of the sentinels on every
    /// (re)connection, so a failover is followed.
    pub sentinel: Option<SentinelConfig>,
    /// A Redis Cluster instead: the URLs of some of its nodes (seeds; the others are found
    /// from them). Empty unless in that mode. See "Redis Cluster" in the crate's docs.
    pub redis_cluster: Vec<String>,
    /// A PEM file of the certificate authorities that sign the Redis servers' certificates
    /// (`rediss://`); `None`: the system's.
    pub tls_ca: Option<Vec<u8>>,
    /// The prefix of every key and PUB/SUB channel.
    pub prefix: String,
    /// How the gateway notices a Redis that lost writes (restart from a snapshot, failover).
    pub fence: Fence,
    /// How long a Redis command may take before the operation answers `unavailable`.
    pub command_timeout: Duration,
    /// How often mirrors are compared with Redis (catches a message lost on an idle channel).
    pub sync_interval: Duration,
    /// How often the PUB/SUB connection is checked with a ping (a Redis that stopped answering
    /// is noticed within about twice this).
    pub probe_interval: Duration,
    /// An ACL user and password (the password read from a file by the configuration).
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &self.redis)
            .field("sentinel", &self.sentinel)
            .field("tls_ca", &self.tls_ca.as_ref().map(|c| c.len()))
            .field("prefix", &self.prefix)
            .field("fence", &self.fence)
            .field("command_timeout", &self.command_timeout)
            .field("sync_interval", &self.sync_interval)
            .field("probe_interval", &self.probe_interval)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Redis Sentinel: the sentinels' URLs and the name of the master they watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelConfig {
    pub sentinels: Vec<String>,
    pub master: String,
}

/// See [`ClusterConfig::fence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The Redis instance's `run_id`: any restart or failover starts new epochs.
    RunId,
    /// No fence: only for a Redis without persistence and without replicas.
    None,
}

/// Errors of starting cluster mode.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis URL `{url}`: {source}")]
    Url {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("[cluster] needs at least one redis URL")]
    NoRedis,
}

/// Told whether every shard is followed (readiness).
pub type ReadyFn = Arc<dyn Fn(bool) + Send + Sync>;

/// Messages a mirror reads from Redis per heal round.
const READ_BATCH: usize = 1000;

/// Bytes of messages one open or heal round reads from Redis at most (at least one message):
/// what a 64-byte subscribe can make a node read.
const READ_BYTES: usize = 4 << 20;

/// Bytes of messages kept for a channel while its mirror opens (past it, the open heals them
/// from the stream instead).
const OPENING_BYTES: usize = 1 << 20;

/// Opens and heals running at once on a node.
const OPENS_AT_ONCE: usize = 8;
const HEALS_AT_ONCE: usize = 8;

/// A channel whose mirror is being opened.
#[derive(Default)]
pub(crate) struct Opening {
    pub(crate) buffer: Vec<(Epoch, MirrorEntry)>,
    pub(crate) bytes: usize,
    /// Messages were left out of `buffer` (over [`OPENING_BYTES`]).
    pub(crate) overflowed: bool,
    /// Woken when the open ends, whatever its outcome.
    pub(crate) done: Arc<tokio::sync::Notify>,
}

/// How long a node's subscriber counts stay valid in Redis without a refresh.
const COUNT_TTL: Duration = Duration::from_secs(15);

/// How often counts are written and idle mirrors dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// The cluster's broker. Cloning shares it.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) cfg: ClusterConfig,
    pub(crate) hub: Hub,
    pub(crate) shards: Vec<Shard>,
    pub(crate) max_channels: usize,
    /// Channels whose mirror is being opened: one open at a time per channel (others wait for
    /// it), and the messages that arrived meanwhile, applied once it is open.
    pub(crate) opening: Mutex<HashMap<ChannelName, Opening>>,
    /// Opens running at once on this node (each reads a backlog from Redis).
    opens: tokio::sync::Semaphore,
    /// Channels being healed (`true`: heal again when done: more arrived meanwhile).
    pub(crate) healing: Mutex<HashMap<ChannelName, bool>>,
    /// Heals running at once.
    pub(crate) heals: tokio::sync::Semaphore,
    /// Mirrors seen without subscribers at the last housekeeping (dropped at the next).
    pub(crate) idle: Mutex<std::collections::HashSet<ChannelName>>,
    /// This node's lease on its number (see `Shard::claim_node`).
    pub(crate) node_token: String,
    /// Told `true` when every shard's PUB/SUB connection is up, `false` when one is not.
    ready: Mutex<Option<ReadyFn>>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Jump consistent hash (Lamping and Veach) of a channel name's FNV-1a hash: the shard of a
/// channel, stable as long as the list of Redis URLs is.
fn shard_of(name: &str, shards: usize) -> usize {
    let mut key = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let (mut b, mut j) = (-1i64, 0i64);
    let n = i64::try_from(shards).unwrap_or(i64::MAX);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let r = ((key >> 33) + 1) as f64;
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / r)) as i64;
    }
    usize::try_from(b).unwrap_or(0)
}

impl Cluster {
    /// Connects to the shards and takes a node number (from Redis when it answers, at random
    /// otherwise); returns the broker and the hub (its mirrors) that serves this node.
    pub async fn connect(
        cfg: ClusterConfig,
        limits: HubLimits,
    ) -> Result<(Cluster, Hub), ClusterError> {
        // rustls needs a process-wide provider for the Redis client's TLS: the one the
        // listeners use (an error only says one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shards = match &cfg.sentinel {
            Some(s) => vec![Shard::sentinel(s, &cfg)?],
            None if !cfg.redis_cluster.is_empty() => {
                vec![Shard::cluster(&cfg.redis_cluster, &cfg)?]
            }
            None => cfg
                .redis
                .iter()
                .map(|url| Shard::open(url, &cfg))
                .collect::<Result<Vec<_>, _>>()?,
        };
        if shards.is_empty() {
            return Err(ClusterError::NoRedis);
        }
        let node_token = format!("{:032x}", rand::random::<u128>());
        let node = match shards[0].claim_node(&cfg.prefix, &node_token).await {
            Ok(n) => n,
            Err(e) => {
                // Claimed (or found taken, and moved) by the housekeeping's renewal later.
                let n = rand::random::<u16>().max(1);
                tracing::warn!(error = %e, node = n, "cluster: no node number from Redis; using a random one");
                n
            }
        };
        let hub = Hub::on_node(limits, node);
        tracing::info!(node, shards = shards.len(), "cluster mode");
        let cluster = Cluster {
            inner: Arc::new(Inner {
                cfg,
                hub: hub.clone(),
                shards,
                max_channels: limits.max_channels,
                opening: Mutex::default(),
                opens: tokio::sync::Semaphore::new(OPENS_AT_ONCE),
                healing: Mutex::default(),
                heals: tokio::sync::Semaphore::new(HEALS_AT_ONCE),
                idle: Mutex::default(),
                node_token,
                ready: Mutex::default(),
            }),
        };
        Ok((cluster, hub))
    }

    /// Starts following the shards (PUB/SUB, probes, periodic sync) until `stop`; `ready` is told
    /// whether every shard is followed.
    pub fn run(&self, stop: CancellationToken, ready: ReadyFn) {
        *self.inner.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(ready);
        if self.inner.shards[0].is_cluster() {
            tokio::spawn(follow::follow_cluster(
                Arc::clone(&self.inner),
                stop.clone(),
            ));
            tokio::spawn(follow::housekeeping(Arc::clone(&self.inner), stop));
            return;
        }
        for i in 0..self.inner.shards.len() {
            tokio::spawn(follow::follow(Arc::clone(&self.inner), i, stop.clone()));
        }
        tokio::spawn(follow::housekeeping(Arc::clone(&self.inner), stop));
    }

    /// This node's number (the top bits of its connection ids).
    pub fn node(&self) -> u16 {
        self.inner.hub.node()
    }
}

impl Inner {
    pub(crate) fn shard(&self, name: &ChannelName) -> &Shard {
        &self.shards[shard_of(name.as_str(), self.shards.len())]
    }

    pub(crate) fn shard_index(&self, name: &ChannelName) -> usize {
        shard_of(name.as_str(), self.shards.len())
    }

    pub(crate) fn tell_ready(&self) {
        let up = self.shards.iter().all(Shard::is_up);
        let cb = self.ready.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(cb) = cb {
            cb(up);
        }
    }

    /// Makes this node's mirror of `name` ready for a read from `start`: opened from Redis when
    /// there is none, healed when `start` names a position it does not have yet.
    pub(crate) async fn ensure_mirror(
        self: &Arc<Self>,
        name: &ChannelName,
        start: Start,
    ) -> Result<(), HubError> {
        let shard = self.shard(name);
        if !shard.is_up() {
            return Err(HubError::Unavailable(
                "not following the channel's Redis".into(),
            ));
        }
        if let Some((epoch, last)) = self.hub.mirror_head(name) {
            let current = match start {
                Start::After { epoch: e, offset } => e == epoch && offset <= last,
                _ => true,
            };
            if !current {
                follow::heal(self, name).await;
            }
            if self.hub.mirror_head(name).is_some() {
                return Ok(());
            }
        }
        self.open(name).await
    }

    /// Opens the mirror of `name` (once at a time per channel: a second caller waits for the
    /// first): subscribes to its PUB/SUB channel first, then reads its place in the log and the
    /// newest part of its backlog (bounded in bytes), then applies what arrived meanwhile
    /// (anything missing is healed from the stream).
    async fn open(self: &Arc<Self>, name: &ChannelName) -> Result<(), HubError> {
        let waiting = {
            let mut opening = self.opening.lock().unwrap_or_else(|p| p.into_inner());
            match opening.get(name) {
                Some(o) => Some(Arc::clone(&o.done)),
                None => {
                    opening.insert(name.clone(), Opening::default());
                    None
                }
            }
        };
        if let Some(done) = waiting {
            // Another request opens it: wait for that (bounded), then see.
            let _ = tokio::time::timeout(self.cfg.command_timeout * 2, done.notified()).await;
            return match self.hub.mirror_head(name) {
                Some(_) => Ok(()),
                None => Err(HubError::Unavailable("the channel is being opened".into())),
            };
        }
        let guard = OpenGuard {
            inner: Arc::clone(self),
            name: name.clone(),
        };
        let Ok(_permit) =
            tokio::time::timeout(self.cfg.command_timeout, self.opens.acquire()).await
        else {
            return Err(HubError::Unavailable("too many channels opening".into()));
        };
        let shard = self.shard(name);
        let generation = shard.generation();
        shard
            .subscribe(&self.cfg.prefix, name)
            .await
            .map_err(StoreError::into_hub)?;
        let meta = shard
            .meta(&self.cfg, name)
            .await
            .map_err(|e| e.or_not_found(name))?;
        let settings = codec::decode_settings(&meta.settings);
        let entries = if meta.head == 0 || settings.backlog_messages == 0 {
            Vec::new()
        } else {
            shard
                .newest_entries(
                    &self.cfg.prefix,
                    name,
                    settings.backlog_messages,
                    READ_BYTES,
                )
                .await
                .map_err(StoreError::into_hub)?
        };
        self.hub
            .mirror_open(name, settings, meta.epoch, Offset(meta.head), entries)?;
        if shard.generation() != generation {
            // The PUB/SUB connection was made again while this opened: its subscriptions may
            // not include this channel yet.
            let _ = shard.subscribe(&self.cfg.prefix, name).await;
            follow::spawn_heal(self, name);
        }
        let opened = guard.finish();
        if opened.overflowed {
            follow::spawn_heal(self, name);
        }
        for (epoch, entry) in opened.buffer {
            follow::apply(self, name, epoch, entry);
        }
        Ok(())
    }
}

/// Ends an open whatever happens to it (an error, or the request dropped): waiters are woken,
/// and a channel left without a mirror is unsubscribed again.
struct OpenGuard {
    inner: Arc<Inner>,
    name: ChannelName,
}

impl OpenGuard {
    /// The open succeeded: what arrived meanwhile.
    fn finish(self) -> Opening {
        let o = self.take();
        std::mem::forget(self);
        o
    }

    fn take(&self) -> Opening {
        let o = self
            .inner
            .opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name)
            .unwrap_or_default();
        o.done.notify_waiters();
        o
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.take();
        if self.inner.hub.mirror_head(&self.name).is_none() {
            let (inner, name) = (Arc::clone(&self.inner), self.name.clone());
            tokio::spawn(async move {
                follow::unsubscribe_unless_used(&inner, &name).await;
            });
        }
    }
}

impl Broker for Cluster {
    fn create<'a>(
        &'a self,
        name: &'a ChannelName,
        settings: ChannelSettings,
    ) -> BrokerFuture<'a, Result<Created, HubError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner
                .shard(name)
                .create(&inner.cfg, name, &settings, inner.max_channels)
                .await
                .map_err(|e| match e {
                    StoreError::Refused(code, _) if code == "TOOMANY" => {
                        HubError::TooManyChannels {
                            max: inner.max_channels,
                        }
                    }
                    e => e.into_hub(),
                })
        })
    }

    fn delete<'a>(&'a self, name: &'a ChannelName) -> BrokerFuture<'a, Result<(), HubError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let existed = inner
                .shard(name)
                .delete(&inner.cfg.prefix, name)
                .await
                .map_err(StoreError::into_hub)?;
            // This node's subscribers learn it at once; the others through PUB/SUB.
            inner.hub.mirror_close(name, "deleted");
            if existed {
                Ok(())
            } else {
                Err(HubError::NotFound(name.clone()))
            }
        })
    }

    fn publish<'a>(
        &'a self,
        name: &'a ChannelName,
        data: &'a Payload,
        opts: PublishOptions<'a>,
    ) -> BrokerFuture<'a, Result<Published, HubError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let route = opts.publisher.map(|(c, _)| c);
            let p = inner
                .shard(name)
                .publish(&inner.cfg, name, data, opts.msg_id, route)
                .await
                .map_err(|e| match e {
                    StoreError::Refused(code, detail) if code == "TOOLARGE" => HubError::TooLarge {
                        channel: name.clone(),
                        len: data.len(),
                        max: detail.trim().parse().unwrap_or(0),
                    },
                    e => e.or_not_found(name),
                })?;
            if let Some((conn, outbox)) = opts.publisher {
                // Replies to this message come back to this connection (through this node).
                let replies = inner.hub.settings(name).map_or(true, |s| s.replies);
                if replies {
                    inner.hub.register_publisher(conn, outbox);
                }
            }
            Ok(p)
        })
    }

    fn publishes_together(&self) -> bool {
        true
    }

    fn publish_many<'a>(
        &'a self,
        name: &'a ChannelName,
        items: &'a [(&'a Payload, Option<&'a str>)],
        publisher: Option<(ConnId, &'a Arc<tslm_hub::Outbox>)>,
    ) -> BrokerFuture<'a, Vec<Result<Published, HubError>>> {
        Box::pin(async move {
            let inner = &self.inner;
            let route = publisher.map(|(c, _)| c);
            let answers = match inner
                .shard(name)
                .publish_many(&inner.cfg, name, items, route)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    // Nothing was published (or Redis did not answer): the same error for each.
                    let e = e.or_not_found(name);
                    return items.iter().map(|_| Err(e.clone())).collect();
                }
            };
            if let Some((conn, outbox)) = publisher {
                let replies = inner.hub.settings(name).map_or(true, |s| s.replies);
                if replies && answers.iter().any(Result::is_ok) {
                    inner.hub.register_publisher(conn, outbox);
                }
            }
            answers
                .into_iter()
                .zip(items)
                .map(|(a, (data, _))| {
                    a.map_err(|e| match e {
                        StoreError::Refused(code, detail) if code == "TOOLARGE" => {
                            HubError::TooLarge {
                                channel: name.clone(),
                                len: data.len(),
                                max: detail.trim().parse().unwrap_or(0),
                            }
                        }
                        e => e.or_not_found(name),
                    })
                })
                .collect()
        })
    }

    fn history<'a>(
        &'a self,
        name: &'a ChannelName,
        start: Start,
        limit: usize,
        max_bytes: usize,
    ) -> BrokerFuture<'a, Result<History, HubError>> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.ensure_mirror(name, start).await?;
            // A history read sees every message the cluster acknowledged before it, also one
            // still on its way to this node through PUB/SUB: one more round trip to compare
            // heads (a read answered by the mirror alone could miss it).
            let heads = inner
                .shard(name)
                .heads(&inner.cfg.prefix, std::slice::from_ref(name))
                .await
                .map_err(StoreError::into_hub)?;
            if let Some(Some(head)) = heads.into_iter().next()
                && inner.hub.mirror_head(name) != Some(head)
            {
                follow::heal(inner, name).await;
            }
            inner.hub.history(name, start, limit, max_bytes)
        })
    }

    fn prepare_read<'a>(
        &'a self,
        name: &'a ChannelName,
        start: Start,
    ) -> BrokerFuture<'a, Result<(), HubError>> {
        Box::pin(self.inner.ensure_mirror(name, start))
    }

    fn settings<'a>(
        &'a self,
        name: &'a ChannelName,
    ) -> BrokerFuture<'a, Result<ChannelSettings, HubError>> {
        Box::pin(async move {
            if let Ok(s) = self.inner.hub.settings(name) {
                return Ok(s);
            }
            let inner = &self.inner;
            let text = inner
                .shard(name)
                .settings(&inner.cfg.prefix, name)
                .await
                .map_err(StoreError::into_hub)?;
            text.map(|t| codec::decode_settings(&t))
                .ok_or_else(|| HubError::NotFound(name.clone()))
        })
    }

    fn head<'a>(&'a self, name: &'a ChannelName) -> BrokerFuture<'a, Result<Head, HubError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let info = inner
                .shard(name)
                .info(&inner.cfg.prefix, std::slice::from_ref(name))
                .await
                .map_err(StoreError::into_hub)?;
            match info.into_iter().next().flatten() {
                Some(i) => Ok(Head {
                    epoch: i.epoch,
                    last_offset: i.offset,
                    subscribers: i.subscribers,
                }),
                None => Err(HubError::NotFound(name.clone())),
            }
        })
    }

    fn list<'a>(
        &'a self,
        prefix: Option<&'a str>,
        after: Option<&'a ChannelName>,
        limit: usize,
        max_bytes: usize,
        visible: Visible<'a>,
    ) -> BrokerFuture<'a, (Vec<ChannelInfo>, bool)> {
        Box::pin(async move {
            match self
                .list_all(prefix, after, limit, max_bytes, visible)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: listing channels failed");
                    (Vec::new(), false)
                }
            }
        })
    }

    fn reply<'a>(
        &'a self,
        name: &'a ChannelName,
        offset: Offset,
        replier: ConnId,
        data: &'a Payload,
    ) -> BrokerFuture<'a, Result<(), ReplyError>> {
        Box::pin(async move {
            let inner = &self.inner;
            // An HTTP reply needs no subscription: the node may not mirror the channel yet.
            inner
                .ensure_mirror(name, Start::New)
                .await
                .map_err(|e| match e {
                    HubError::NotFound(c) => ReplyError::NotFound(c),
                    e => ReplyError::Unavailable(e.to_string()),
                })?;
            let conn = inner.hub.reply_route(name, offset, data.len())?;
            if conn.node() == inner.hub.node() {
                return inner.hub.deliver_reply(conn, name, offset, replier, data);
            }
            let frame = codec::encode_reply(conn, offset, replier, name.as_str(), data);
            let heard = inner.shards[0]
                .forward(&inner.cfg.prefix, conn.node(), frame)
                .await
                .map_err(|e| ReplyError::Unavailable(e.to_string()))?;
            if heard {
                Ok(())
            } else {
                Err(ReplyError::Gone {
                    channel: name.clone(),
                    offset,
                })
            }
        })
    }
}

impl Cluster {
    async fn list_all(
        &self,
        prefix: Option<&str>,
        after: Option<&ChannelName>,
        limit: usize,
        max_bytes: usize,
        visible: Visible<'_>,
    ) -> Result<(Vec<ChannelInfo>, bool), StoreError> {
        let inner = &self.inner;
        let mut names = Vec::new();
        let mut cut_short = false;
        // Each shard's next `limit` visible names; merged, the first `limit` are the answer.
        for shard in &inner.shards {
            let mut cursor = after.map(|a| a.as_str().to_owned());
            let mut found = 0;
            let mut pages = 0;
            loop {
                pages += 1;
                if pages > 16 {
                    // Bounded work per request: the caller pages on from the last name.
                    cut_short = true;
                    break;
                }
                let page = shard
                    .names(&inner.cfg.prefix, prefix, cursor.as_deref(), limit + 1)
                    .await?;
                let full = page.len() > limit;
                cursor = page.last().cloned();
                for n in page {
                    if let Ok(c) = ChannelName::new(&n)
                        && visible(&c)
                    {
                        names.push(c);
                        found += 1;
                    }
                }
                if !full || found > limit {
                    break;
                }
            }
        }
        names.sort();
        names.dedup();
        let more = names.len() > limit || cut_short;
        names.truncate(limit);
        let mut out = Vec::with_capacity(names.len());
        let mut bytes = 0;
        let mut cut = false;
        for (i, shard) in inner.shards.iter().enumerate() {
            let mine: Vec<ChannelName> = names
                .iter()
                .filter(|n| inner.shard_index(n) == i)
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            for info in shard
                .info(&inner.cfg.prefix, &mine)
                .await?
                .into_iter()
                .flatten()
            {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.channel.cmp(&b.channel));
        let mut kept = Vec::new();
        for info in out {
            bytes += info.channel.len() + tslm_hub::CHANNEL_INFO_BYTES;
            if bytes > max_bytes && !kept.is_empty() {
                cut = true;
                break;
            }
            kept.push(info);
        }
        Ok((kept, more || cut))
    }
}
