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

/// What `[cluster]` configures (validated by the server's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Messages a mirror reads from Redis at once when it heals or opens.
const READ_BATCH: usize = 1000;

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
    /// Messages that arrived for channels whose mirror is being opened, applied once it is.
    pub(crate) opening: Mutex<HashMap<ChannelName, Vec<(Epoch, MirrorEntry)>>>,
    /// Mirrors seen without subscribers at the last housekeeping (dropped at the next).
    idle: Mutex<Vec<ChannelName>>,
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
        let node = match shards[0].next_node(&cfg.prefix).await {
            Ok(n) => n,
            Err(e) => {
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
                idle: Mutex::default(),
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
        &self,
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

    /// Opens the mirror of `name`: subscribes to its PUB/SUB channel first, then reads the
    /// newest backlog, then applies what arrived meanwhile (anything missing is healed).
    async fn open(&self, name: &ChannelName) -> Result<(), HubError> {
        let shard = self.shard(name);
        self.opening
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.clone())
            .or_default();
        let done = |inner: &Inner| {
            inner
                .opening
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(name)
                .unwrap_or_default()
        };
        if let Err(e) = shard.subscribe(&self.cfg.prefix, name).await {
            done(self);
            return Err(e.into_hub());
        }
        let read = shard
            .read(&self.cfg, name, None, 0)
            .await
            .map_err(|e| e.or_not_found(name));
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                done(self);
                return Err(e);
            }
        };
        let settings = codec::decode_settings(&read.settings);
        let opened =
            self.hub
                .mirror_open(name, settings, read.epoch, Offset(read.head), read.entries);
        let buffered = done(self);
        opened?;
        for (epoch, entry) in buffered {
            follow::apply(self, name, epoch, entry).await;
        }
        Ok(())
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

    fn history<'a>(
        &'a self,
        name: &'a ChannelName,
        start: Start,
        limit: usize,
        max_bytes: usize,
    ) -> BrokerFuture<'a, Result<History, HubError>> {
        Box::pin(async move {
            self.inner.ensure_mirror(name, start).await?;
            self.inner.hub.history(name, start, limit, max_bytes)
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
        // Each shard's next `limit` visible names; merged, the first `limit` are the answer.
        for shard in &inner.shards {
            let mut cursor = after.map(|a| a.as_str().to_owned());
            let mut found = 0;
            for _ in 0..16 {
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
        let more = names.len() > limit;
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
