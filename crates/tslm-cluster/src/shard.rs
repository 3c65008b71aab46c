//! One Redis server of the cluster: its command connection (with the fence read from it), its
//! PUB/SUB sink, and the operations on the channels it owns. No lock is held across `.await`:
//! connections are cloned out of their slot.
//!
//! A Redis Cluster is one `Shard` too: its connections are redis-rs cluster connections that
//! route each command to the master of its key's slot. What changes there: the fence is read
//! inside the scripts (`*`), messages use sharded PUB/SUB (`SPUBLISH`/`SSUBSCRIBE`), commands on
//! several channels go per channel (a pipeline must stay in one slot), and the channel registry
//! is updated beside the create and delete scripts rather than inside them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use tslm_hub::{ChannelSettings, ConnId, Created, HubError, MirrorEntry, Published};
use tslm_protocol::{ChannelInfo, ChannelName, Epoch, Offset, Payload};

use crate::{ClusterConfig, ClusterError, Fence, now_ms, scripts};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// Redis did not answer (down, unreachable, too slow): `unavailable`.
    #[error("{0}")]
    Unavailable(String),
    /// A script refused: its error code and the rest of the message.
    #[error("{0} {1}")]
    Refused(String, String),
}

impl StoreError {
    /// The hub's error, with a message for clients: Redis's own text (script names, lines,
    /// addresses) stays in this node's log.
    pub(crate) fn into_hub(self) -> HubError {
        match self {
            StoreError::Unavailable(m) => {
                tracing::debug!(error = %m, "cluster: Redis unavailable");
                HubError::Unavailable("Redis did not answer".into())
            }
            StoreError::Refused(c, d) => {
                tracing::warn!(code = %c, detail = %d, "cluster: Redis refused an operation");
                HubError::Unavailable("Redis refused the operation".into())
            }
        }
    }

    /// `NOTFOUND` as the hub's not-found error, anything else as [`StoreError::into_hub`].
    pub(crate) fn or_not_found(self, name: &ChannelName) -> HubError {
        match self {
            StoreError::Refused(c, _) if c == "NOTFOUND" => HubError::NotFound(name.clone()),
            e => e.into_hub(),
        }
    }
}

#[derive(Clone)]
struct Link {
    conn: Conn,
    /// The instance's `run_id` (empty without a fence; `*` in a Redis Cluster: read by the
    /// scripts on the master that runs them).
    fence: Arc<str>,
}

/// A command connection: to one Redis, or to a Redis Cluster (routed by key slot).
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where a shard's messages are subscribed: a PUB/SUB connection, or (Redis Cluster) a RESP3
/// cluster connection whose pushes feed the follower (`SSUBSCRIBE`, routed by slot).
#[derive(Clone)]
pub(crate) enum Sink {
    Single(PubSubSink),
    Cluster(ClusterConnection),
}

struct Scripts {
    create: Script,
    publish: Script,
    publish_many: Script,
    meta: Script,
    delete: Script,
    info: Script,
}

/// Where a shard's Redis is.
enum Target {
    Direct(Client),
    /// The master of `master`, asked of the sentinels at every (re)connection.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        node: SentinelNodeConnectionInfo,
    },
    /// A Redis Cluster, found from its seed nodes.
    Cluster(Box<ClusterClient>),
}

pub(crate) struct Shard {
    target: Target,
    link: Mutex<Option<Link>>,
    sink: Mutex<Option<Sink>>,
    up: AtomicBool,
    /// Bumped each time the PUB/SUB connection is made and subscribed (see `follow`).
    generation: AtomicU64,
    timeout: Duration,
    fence: Fence,
    scripts: Scripts,
}

/// A channel's place in the log.
pub(crate) struct Meta {
    pub(crate) epoch: Epoch,
    pub(crate) head: u64,
    pub(crate) settings: String,
}

/// How long a node's number is leased without a renewal.
pub(crate) const NODE_LEASE: Duration = Duration::from_secs(60);

/// Stream entries read per command.
const PAGE: usize = 100;

pub(crate) fn keys(prefix: &str, name: &ChannelName) -> [String; 5] {
    let base = format!("{prefix}:{{{name}}}");
    [
        format!("{base}:m"),
        format!("{base}:s"),
        format!("{base}:d"),
        format!("{base}:dz"),
        format!("{base}:n"),
    ]
}

pub(crate) fn topic(prefix: &str, name: &ChannelName) -> String {
    format!("{prefix}:{{{name}}}")
}

pub(crate) fn node_topic(prefix: &str, node: u16) -> String {
    format!("{prefix}:node:{node}")
}

/// The node reply channel in a Redis Cluster: sharded, its own hash tag (the node number).
pub(crate) fn cluster_node_topic(prefix: &str, node: u16) -> String {
    format!("{prefix}:node:{{{node}}}")
}

fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

impl Shard {
    pub(crate) fn open(url: &str, cfg: &ClusterConfig) -> Result<Self, ClusterError> {
        let bad = |source| ClusterError::Url {
            url: redact(url),
            source,
        };
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(bad)?;
        let settings = credentials(info.redis_settings().clone(), cfg);
        let info = info.set_redis_settings(settings);
        let client = match &cfg.tls_ca {
            Some(ca) => Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => Client::open(info),
        }
        .map_err(bad)?;
        Ok(Self::with_target(Target::Direct(client), cfg))
    }

    /// A Redis Cluster found from `seeds` (any of its nodes).
    pub(crate) fn cluster(seeds: &[String], cfg: &ClusterConfig) -> Result<Self, ClusterError> {
        let client = Self::cluster_builder(seeds, cfg)
            .build()
            .map_err(|source| ClusterError::Url {
                url: seeds
                    .iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>()
                    .join(", "),
                source,
            })?;
        Ok(Self::with_target(Target::Cluster(Box::new(client)), cfg))
    }

    fn cluster_builder(seeds: &[String], cfg: &ClusterConfig) -> ClusterClientBuilder {
        let mut b = ClusterClientBuilder::new(seeds.to_vec())
            .connection_timeout(cfg.command_timeout)
            .response_timeout(cfg.command_timeout);
        if let Some(u) = &cfg.username {
            b = b.username(u);
        }
        if let Some(p) = &cfg.password {
            b = b.password(p);
        }
        if let Some(ca) = &cfg.tls_ca {
            b = b.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            });
        }
        b
    }

    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// The channel this node's replies are published on.
    pub(crate) fn node_topic(&self, prefix: &str, node: u16) -> String {
        if self.is_cluster() {
            cluster_node_topic(prefix, node)
        } else {
            node_topic(prefix, node)
        }
    }

    fn publish_cmd(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// A RESP3 cluster connection whose pushes (sharded messages, disconnections) go to `push`:
    /// what the follower of a Redis Cluster listens on.
    pub(crate) async fn cluster_pubsub(
        &self,
        seeds: &[String],
        cfg: &ClusterConfig,
        push: impl redis::aio::AsyncPushSender,
    ) -> Result<ClusterConnection, StoreError> {
        let client = Self::cluster_builder(seeds, cfg)
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(push)
            .build()
            .map_err(|e| StoreError::Unavailable(format!("redis cluster: {e}")))?;
        self.timed(client.get_async_connection()).await
    }

    pub(crate) fn sentinel(
        s: &crate::SentinelConfig,
        cfg: &ClusterConfig,
    ) -> Result<Self, ClusterError> {
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(credentials(redis::RedisConnectionInfo::default(), cfg));
        // Checked once here, so that a bad URL fails the start rather than every connection.
        SentinelClient::build(
            s.sentinels.clone(),
            s.master.clone(),
            Some(node.clone()),
            SentinelServerType::Master,
        )
        .map_err(|source| ClusterError::Url {
            url: s.sentinels.join(", "),
            source,
        })?;
        Ok(Self::with_target(
            Target::Sentinel {
                sentinels: s.sentinels.clone(),
                master: s.master.clone(),
                node,
            },
            cfg,
        ))
    }

    fn with_target(target: Target, cfg: &ClusterConfig) -> Self {
        Self {
            target,
            link: Mutex::new(None),
            sink: Mutex::new(None),
            up: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            timeout: cfg.command_timeout,
            fence: cfg.fence,
            scripts: Scripts {
                create: Script::new(&scripts::create()),
                publish: Script::new(&scripts::publish()),
                publish_many: Script::new(&scripts::publish_many()),
                meta: Script::new(&scripts::meta()),
                delete: Script::new(scripts::DELETE),
                info: Script::new(scripts::INFO),
            },
        }
    }

    /// A client of the shard's Redis: the fixed one, or the master the sentinels name now.
    pub(crate) async fn client(&self) -> Result<Client, StoreError> {
        match &self.target {
            Target::Direct(c) => Ok(c.clone()),
            Target::Cluster(_) => Err(StoreError::Unavailable(
                "a Redis Cluster has no single client".into(),
            )),
            Target::Sentinel {
                sentinels,
                master,
                node,
            } => {
                let mut s = SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    Some(node.clone()),
                    SentinelServerType::Master,
                )
                .map_err(|e| StoreError::Unavailable(format!("sentinel: {e}")))?;
                match tokio::time::timeout(self.timeout, s.async_get_client()).await {
                    Ok(Ok(c)) => Ok(c),
                    Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                        "no master `{master}` from the sentinels: {e}"
                    ))),
                    Err(_) => Err(StoreError::Unavailable(format!(
                        "the sentinels did not name master `{master}` in time"
                    ))),
                }
            }
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub(crate) fn set_up(&self, up: bool, sink: Option<Sink>) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
        if up {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        self.up.store(up, Ordering::SeqCst);
    }

    /// Which PUB/SUB connection is current (changes at every reconnection).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The command connection, made (and its fence read) when there is none.
    async fn link(&self) -> Result<Link, StoreError> {
        if let Some(l) = self.link.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(l);
        }
        if let Target::Cluster(client) = &self.target {
            let conn = self.timed(client.get_async_connection()).await?;
            let fence = match self.fence {
                Fence::None => "",
                Fence::RunId => "*",
            };
            let link = Link {
                conn: Conn::Cluster(conn),
                fence: Arc::from(fence),
            };
            *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.clone());
            return Ok(link);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let client = self.client().await?;
        let mut conn = self
            .timed(client.get_multiplexed_async_connection_with_config(&config))
            .await?;
        let fence: Arc<str> = match self.fence {
            Fence::None => Arc::from(""),
            Fence::RunId => {
                let info: String = self
                    .timed(redis::cmd("INFO").arg("server").query_async(&mut conn))
                    .await?;
                let id = info
                    .lines()
                    .find_map(|l| l.strip_prefix("run_id:"))
                    .map(str::trim)
                    .unwrap_or("");
                if id.is_empty() {
                    return Err(StoreError::Unavailable(
                        "Redis did not tell its run_id (INFO server)".into(),
                    ));
                }
                Arc::from(id)
            }
        };
        let link = Link {
            conn: Conn::Single(conn),
            fence,
        };
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.clone());
        Ok(link)
    }

    /// Runs `fut` within the command timeout; a connection error forgets the connection, so the
    /// next operation reconnects and reads the fence again (a restarted Redis has a new one).
    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.code().is_some() && !is_connection_error(&e) => {
                // A script's `error_reply('CODE detail')` may come back as `ERR CODE detail`.
                let (code, detail) = (e.code().unwrap_or(""), e.detail().unwrap_or(""));
                let (code, detail) = match code {
                    "ERR" => detail.split_once(' ').unwrap_or((detail, "")),
                    _ => (code, detail),
                };
                if matches!(
                    code,
                    "READONLY"
                        | "MASTERDOWN"
                        | "LOADING"
                        | "CLUSTERDOWN"
                        | "TRYAGAIN"
                        | "MOVED"
                        | "ASK"
                ) {
                    // A demoted master or one still loading: ask again (a Sentinel names the
                    // new master), and answer `unavailable` meanwhile. In a Redis Cluster: a
                    // slot without a master, or moving.
                    self.forget();
                    return Err(StoreError::Unavailable(format!("redis: {code} {detail}")));
                }
                Err(StoreError::Refused(code.to_owned(), detail.to_owned()))
            }
            Ok(Err(e)) => {
                self.forget();
                Err(StoreError::Unavailable(format!("redis: {e}")))
            }
            Err(_) => {
                self.forget();
                Err(StoreError::Unavailable(format!(
                    "redis did not answer within {} ms",
                    self.timeout.as_millis()
                )))
            }
        }
    }

    fn forget(&self) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Claims a node number for this gateway: a lease (`SET NX PX`) on `<prefix>:nodelease:<n>`
    /// that no other live gateway holds, renewed by [`Shard::renew_node`]; numbers are tried at
    /// random.
    pub(crate) async fn claim_node(&self, prefix: &str, token: &str) -> Result<u16, StoreError> {
        for _ in 0..64 {
            let n = rand::random::<u16>().max(1);
            if self.lease(prefix, n, token, "NX").await? {
                return Ok(n);
            }
        }
        Err(StoreError::Unavailable("no free node number".into()))
    }

    /// Renews this node's lease, or claims it again if it is gone (a Redis restarted empty).
    /// `false`: another gateway holds the number now.
    pub(crate) async fn renew_node(
        &self,
        prefix: &str,
        n: u16,
        token: &str,
    ) -> Result<bool, StoreError> {
        let mut l = self.link().await?;
        let held: Option<String> = self
            .timed(
                redis::cmd("GET")
                    .arg(format!("{prefix}:nodelease:{n}"))
                    .query_async(&mut l.conn),
            )
            .await?;
        match held {
            Some(t) if t == token => self.lease(prefix, n, token, "XX").await,
            Some(_) => Ok(false),
            None => self.lease(prefix, n, token, "NX").await,
        }
    }

    async fn lease(
        &self,
        prefix: &str,
        n: u16,
        token: &str,
        mode: &str,
    ) -> Result<bool, StoreError> {
        let mut l = self.link().await?;
        let set: Option<String> = self
            .timed(
                redis::cmd("SET")
                    .arg(format!("{prefix}:nodelease:{n}"))
                    .arg(token)
                    .arg(mode)
                    .arg("PX")
                    .arg(u64::try_from(NODE_LEASE.as_millis()).unwrap_or(u64::MAX))
                    .query_async(&mut l.conn),
            )
            .await?;
        Ok(set.is_some())
    }

    pub(crate) async fn create(
        &self,
        cfg: &ClusterConfig,
        name: &ChannelName,
        settings: &ChannelSettings,
        max_channels: usize,
    ) -> Result<Created, StoreError> {
        let mut l = self.link().await?;
        let k = keys(&cfg.prefix, name);
        let registry = format!("{}:channels", cfg.prefix);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let cluster = self.is_cluster();
        if cluster && max_channels > 0 {
            // The registry is in another slot: the limit is checked before the script, so
            // creates racing on several gateways may pass it by a few channels.
            let exists: bool = self
                .timed(redis::cmd("EXISTS").arg(&k[0]).query_async(&mut l.conn))
                .await?;
            let n: usize = self
                .timed(redis::cmd("ZCARD").arg(&registry).query_async(&mut l.conn))
                .await?;
            if !exists && n >= max_channels {
                return Err(StoreError::Refused("TOOMANY".into(), String::new()));
            }
        }
        let mut inv = self.scripts.create.prepare_invoke();
        inv.key(&k[0]).key(&k[1]).key(&k[2]).key(&k[3]);
        if !cluster {
            inv.key(&registry);
        }
        inv.arg(&*l.fence)
            .arg(Epoch(rand::random()).to_string())
            .arg(crate::codec::encode_settings(settings))
            .arg(now_ms())
            .arg(name.as_str())
            .arg(max_channels)
            .arg(settings.max_message_bytes)
            .arg(settings.backlog_messages)
            .arg(ms(settings.backlog_age).max(1))
            .arg(ms(settings.dedupe_window))
            .arg(settings.dedupe_max_ids);
        let (created, epoch): (u8, String) = self.timed(inv.invoke_async(&mut l.conn)).await?;
        if cluster {
            // Also when it existed: repairs a registry entry lost between a script and its
            // registry update (a gateway stopped in between).
            let _: () = self
                .timed(
                    redis::cmd("ZADD")
                        .arg(&registry)
                        .arg(0)
                        .arg(name.as_str())
                        .query_async(&mut l.conn),
                )
                .await?;
        }
        Ok(Created {
            created: created == 1,
            epoch: parse_epoch(&epoch)?,
        })
    }

    pub(crate) async fn publish(
        &self,
        cfg: &ClusterConfig,
        name: &ChannelName,
        data: &Payload,
        msg_id: Option<&str>,
        route: Option<ConnId>,
    ) -> Result<Published, StoreError> {
        let mut l = self.link().await?;
        let k = keys(&cfg.prefix, name);
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.key(&k[0])
            .key(&k[1])
            .key(&k[2])
            .key(&k[3])
            .arg(&*l.fence)
            .arg(Epoch(rand::random()).to_string())
            .arg(data.json().as_ref())
            .arg(now_ms())
            .arg(msg_id.unwrap_or(""))
            .arg(route.map_or(0, |c| c.0))
            .arg(topic(&cfg.prefix, name))
            .arg(data.len())
            .arg(self.publish_cmd());
        let (offset, epoch, duplicate): (u64, String, u8) =
            self.timed(inv.invoke_async(&mut l.conn)).await?;
        Ok(Published {
            epoch: parse_epoch(&epoch)?,
            offset: Offset(offset),
            duplicate: duplicate == 1,
        })
    }

    /// Publishes `items` (data and msg_id) to `name` in order, in one script and one round
    /// trip; each answer in its place: `Err(Refused("TOOLARGE", max))` for one too large.
    pub(crate) async fn publish_many(
        &self,
        cfg: &ClusterConfig,
        name: &ChannelName,
        items: &[(&Payload, Option<&str>)],
        route: Option<ConnId>,
    ) -> Result<Vec<Result<Published, StoreError>>, StoreError> {
        let mut l = self.link().await?;
        let k = keys(&cfg.prefix, name);
        let mut inv = self.scripts.publish_many.prepare_invoke();
        inv.key(&k[0])
            .key(&k[1])
            .key(&k[2])
            .key(&k[3])
            .arg(&*l.fence)
            .arg(Epoch(rand::random()).to_string())
            .arg(topic(&cfg.prefix, name))
            .arg(self.publish_cmd())
            .arg(items.len());
        let route = route.map_or(0, |c| c.0);
        for (data, msg_id) in items {
            inv.arg(data.json().as_ref())
                .arg(msg_id.unwrap_or(""))
                .arg(route)
                .arg(data.len());
        }
        let raw: Vec<Value> = self.timed(inv.invoke_async(&mut l.conn)).await?;
        let malformed = || StoreError::Unavailable("malformed publish reply".into());
        let mut it = raw.into_iter();
        let epoch: String = it
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(malformed)?;
        let epoch = parse_epoch(&epoch)?;
        let mut out = Vec::with_capacity(items.len());
        for _ in items {
            let (Some(a), Some(b)) = (it.next(), it.next()) else {
                return Err(malformed());
            };
            let (a, b): (u64, u64) = (
                redis::from_redis_value(a).map_err(|_| malformed())?,
                redis::from_redis_value(b).map_err(|_| malformed())?,
            );
            out.push(if a == 0 {
                Err(StoreError::Refused("TOOLARGE".into(), b.to_string()))
            } else {
                Ok(Published {
                    epoch,
                    offset: Offset(a),
                    duplicate: b == 1,
                })
            });
        }
        Ok(out)
    }

    /// The epoch, head and settings of `name` (after the fence check).
    pub(crate) async fn meta(
        &self,
        cfg: &ClusterConfig,
        name: &ChannelName,
    ) -> Result<Meta, StoreError> {
        let mut l = self.link().await?;
        let k = keys(&cfg.prefix, name);
        let mut inv = self.scripts.meta.prepare_invoke();
        inv.key(&k[0])
            .key(&k[1])
            .key(&k[2])
            .key(&k[3])
            .arg(&*l.fence)
            .arg(Epoch(rand::random()).to_string());
        let (epoch, head, settings): (String, u64, String) =
            self.timed(inv.invoke_async(&mut l.conn)).await?;
        Ok(Meta {
            epoch: parse_epoch(&epoch)?,
            head,
            settings,
        })
    }

    /// Entries of `name`'s stream after offset `after`, oldest first: at most `count`, and
    /// about `max_bytes` of data (at least one entry), read in pages.
    pub(crate) async fn entries_after(
        &self,
        prefix: &str,
        name: &ChannelName,
        after: Offset,
        count: usize,
        max_bytes: usize,
    ) -> Result<Vec<MirrorEntry>, StoreError> {
        let key = &keys(prefix, name)[1];
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut from = after.0;
        while out.len() < count && (out.is_empty() || bytes < max_bytes) {
            let mut l = self.link().await?;
            let page = PAGE.min(count - out.len());
            let raw: Value = self
                .timed(
                    redis::cmd("XRANGE")
                        .arg(key)
                        .arg(format!("({from}-0"))
                        .arg("+")
                        .arg("COUNT")
                        .arg(page)
                        .query_async(&mut l.conn),
                )
                .await?;
            let got = parse_entries(raw)?;
            let n = got.len();
            for e in got {
                bytes += e.data.len();
                from = e.offset.0;
                out.push(e);
            }
            if n < page {
                break;
            }
        }
        Ok(out)
    }

    /// The newest entries of `name`'s stream, oldest first: at most `count` and about
    /// `max_bytes` of data (at least one entry), read in pages from the newest.
    pub(crate) async fn newest_entries(
        &self,
        prefix: &str,
        name: &ChannelName,
        count: usize,
        max_bytes: usize,
    ) -> Result<Vec<MirrorEntry>, StoreError> {
        let key = &keys(prefix, name)[1];
        let mut out: Vec<MirrorEntry> = Vec::new();
        let mut bytes = 0;
        let mut before: Option<u64> = None;
        while out.len() < count && (out.is_empty() || bytes < max_bytes) {
            let mut l = self.link().await?;
            let page = PAGE.min(count - out.len());
            let top = before.map_or_else(|| "+".to_owned(), |b| format!("({b}-0"));
            let raw: Value = self
                .timed(
                    redis::cmd("XREVRANGE")
                        .arg(key)
                        .arg(top)
                        .arg("-")
                        .arg("COUNT")
                        .arg(page)
                        .query_async(&mut l.conn),
                )
                .await?;
            let got = parse_entries(raw)?;
            let n = got.len();
            for e in got {
                if !out.is_empty() && bytes + e.data.len() > max_bytes {
                    out.reverse();
                    return Ok(out);
                }
                bytes += e.data.len();
                before = Some(e.offset.0);
                out.push(e);
            }
            if n < page || before == Some(1) {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }

    pub(crate) async fn delete(
        &self,
        prefix: &str,
        name: &ChannelName,
    ) -> Result<bool, StoreError> {
        let mut l = self.link().await?;
        let k = keys(prefix, name);
        let mut inv = self.scripts.delete.prepare_invoke();
        for key in &k {
            inv.key(key);
        }
        let registry = format!("{prefix}:channels");
        if !self.is_cluster() {
            inv.key(&registry);
        }
        inv.arg(name.as_str())
            .arg(topic(prefix, name))
            .arg(self.publish_cmd());
        let n: u8 = self.timed(inv.invoke_async(&mut l.conn)).await?;
        if self.is_cluster() {
            // After the script (the registry is in another slot): a name left behind by a
            // gateway stopped in between is listed by nobody (listings skip names without a
            // channel) and removed by the next delete.
            let _: () = self
                .timed(
                    redis::cmd("ZREM")
                        .arg(&registry)
                        .arg(name.as_str())
                        .query_async(&mut l.conn),
                )
                .await?;
        }
        Ok(n == 1)
    }

    pub(crate) async fn settings(
        &self,
        prefix: &str,
        name: &ChannelName,
    ) -> Result<Option<String>, StoreError> {
        let mut l = self.link().await?;
        let k = keys(prefix, name);
        self.timed(
            redis::cmd("HGET")
                .arg(&k[0])
                .arg("o")
                .query_async(&mut l.conn),
        )
        .await
    }

    /// Descriptions of `names` (all on this shard), `None` for those that do not exist.
    pub(crate) async fn info(
        &self,
        prefix: &str,
        names: &[ChannelName],
    ) -> Result<Vec<Option<ChannelInfo>>, StoreError> {
        let mut l = self.link().await?;
        let now = now_ms();
        if self.is_cluster() {
            // One script per channel (each on its slot's master), all at once.
            let rows = per_channel(
                names
                    .iter()
                    .map(|name| {
                        let mut conn = l.conn.clone();
                        let k = keys(prefix, name);
                        async move {
                            let mut inv = self.scripts.info.key(&k[0]);
                            inv.key(&k[1]).key(&k[4]).arg(now);
                            self.timed(inv.invoke_async::<Option<InfoRow>>(&mut conn))
                                .await
                        }
                    })
                    .collect(),
            )
            .await?;
            return Ok(info_rows(names, rows));
        }
        let mut pipe = redis::pipe();
        for name in names {
            let k = keys(prefix, name);
            let mut inv = self.scripts.info.key(&k[0]);
            inv.key(&k[1]).key(&k[4]).arg(now);
            pipe.invoke_script(&inv);
        }
        // Loaded first: a pipeline cannot fall back from EVALSHA to EVAL.
        let _: () = self
            .timed(
                self.scripts
                    .info
                    .prepare_invoke()
                    .load_async(&mut l.conn)
                    .map_ok_unit(),
            )
            .await?;
        let rows: Vec<Option<InfoRow>> = self.timed(pipe.query_async(&mut l.conn)).await?;
        Ok(info_rows(names, rows))
    }

    /// Channel names of this shard in byte order: those starting with `prefix`, after `after`,
    /// at most `count`.
    pub(crate) async fn names(
        &self,
        key_prefix: &str,
        prefix: Option<&str>,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut l = self.link().await?;
        let min = match (after, prefix) {
            (Some(a), Some(p)) if a < p => format!("[{p}"),
            (Some(a), _) => format!("({a}"),
            (None, Some(p)) => format!("[{p}"),
            (None, None) => "-".to_owned(),
        };
        let max = prefix.map_or_else(|| "+".to_owned(), |p| format!("[{p}\u{7f}"));
        self.timed(
            redis::cmd("ZRANGEBYLEX")
                .arg(format!("{key_prefix}:channels"))
                .arg(min)
                .arg(max)
                .arg("LIMIT")
                .arg(0)
                .arg(count)
                .query_async(&mut l.conn),
        )
        .await
    }

    /// Writes this node's subscriber count of each channel (valid for `ttl`).
    pub(crate) async fn counts(
        &self,
        prefix: &str,
        node: u16,
        counts: &[(ChannelName, usize)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut l = self.link().await?;
        let until = now_ms() + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let add = |pipe: &mut Pipeline, name: &ChannelName, n: usize| {
            let k = keys(prefix, name);
            pipe.cmd("HSET")
                .arg(&k[4])
                .arg(node)
                .arg(format!("{n}:{until}"))
                .ignore()
                .cmd("PEXPIRE")
                .arg(&k[4])
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                .ignore();
        };
        if self.is_cluster() {
            // A pipeline per channel (one slot each), all at once.
            return per_channel(
                counts
                    .iter()
                    .map(|(name, n)| {
                        let mut conn = l.conn.clone();
                        let mut pipe = redis::pipe();
                        add(&mut pipe, name, *n);
                        async move { self.timed(pipe.query_async::<()>(&mut conn)).await }
                    })
                    .collect(),
            )
            .await
            .map(drop);
        }
        let mut pipe = redis::pipe();
        for (name, n) in counts {
            add(&mut pipe, name, *n);
        }
        self.timed(pipe.query_async::<()>(&mut l.conn)).await
    }

    /// The epoch and head of each of `names` in Redis (`None`: it does not exist).
    pub(crate) async fn heads(
        &self,
        prefix: &str,
        names: &[ChannelName],
    ) -> Result<Vec<Option<(Epoch, Offset)>>, StoreError> {
        let mut l = self.link().await?;
        let head = |name: &ChannelName| {
            let mut c = redis::cmd("HMGET");
            c.arg(&keys(prefix, name)[0]).arg("e").arg("s");
            c
        };
        let rows: Vec<(Option<String>, Option<u64>)> = if self.is_cluster() {
            per_channel(
                names
                    .iter()
                    .map(|name| {
                        let mut conn = l.conn.clone();
                        let c = head(name);
                        async move { self.timed(c.query_async(&mut conn)).await }
                    })
                    .collect(),
            )
            .await?
        } else {
            let mut pipe = redis::pipe();
            for name in names {
                pipe.add_command(head(name));
            }
            self.timed(pipe.query_async(&mut l.conn)).await?
        };
        Ok(rows
            .into_iter()
            .map(|(e, s)| Some((Epoch::parse(&e?)?, Offset(s?))))
            .collect())
    }

    /// Publishes a reply frame to node `node`; whether a node heard it.
    pub(crate) async fn forward(
        &self,
        prefix: &str,
        node: u16,
        frame: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let mut l = self.link().await?;
        let n: u64 = self
            .timed(
                redis::cmd(self.publish_cmd())
                    .arg(self.node_topic(prefix, node))
                    .arg(frame)
                    .query_async(&mut l.conn),
            )
            .await?;
        Ok(n > 0)
    }

    /// Subscribes this shard's PUB/SUB connection to `name`'s channel (confirmed by Redis).
    pub(crate) async fn subscribe(
        &self,
        prefix: &str,
        name: &ChannelName,
    ) -> Result<(), StoreError> {
        let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(mut sink) = sink else {
            return Err(StoreError::Unavailable(
                "not following the channel's Redis".into(),
            ));
        };
        match &mut sink {
            Sink::Single(s) => self.timed(s.subscribe(topic(prefix, name))).await,
            Sink::Cluster(c) => self.timed(c.ssubscribe(topic(prefix, name))).await,
        }
    }

    pub(crate) async fn unsubscribe(&self, prefix: &str, name: &ChannelName) {
        let sink = self.sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match sink {
            Some(Sink::Single(mut s)) => {
                let _ = self.timed(s.unsubscribe(topic(prefix, name))).await;
            }
            Some(Sink::Cluster(mut c)) => {
                let _ = self.timed(c.sunsubscribe(topic(prefix, name))).await;
            }
            None => {}
        }
    }
}

/// Commands on several channels in a Redis Cluster: one per channel (a pipeline must stay in
/// one slot), [`AT_ONCE`] in flight; answers in the order asked; the first error ends it.
const AT_ONCE: usize = 64;

async fn per_channel<T, F>(ops: Vec<F>) -> Result<Vec<T>, StoreError>
where
    F: Future<Output = Result<T, StoreError>>,
{
    futures_util::stream::iter(ops)
        .buffered(AT_ONCE)
        .try_collect()
        .await
}

trait MapOkUnit {
    type Out;
    fn map_ok_unit(self) -> Self::Out;
}

impl<F, T> MapOkUnit for F
where
    F: Future<Output = Result<T, RedisError>>,
{
    type Out = futures_util::future::MapOk<F, fn(T)>;
    fn map_ok_unit(self) -> Self::Out {
        futures_util::TryFutureExt::map_ok(self, drop as fn(T))
    }
}

/// Epoch, head, backlog messages, first kept offset, subscribers (see `scripts::INFO`).
type InfoRow = (String, u64, u64, u64, u64);

fn info_rows(names: &[ChannelName], rows: Vec<Option<InfoRow>>) -> Vec<Option<ChannelInfo>> {
    names
        .iter()
        .zip(rows)
        .map(|(name, row)| {
            let (e, head, len, first, subs) = row?;
            Some(ChannelInfo {
                channel: name.clone(),
                epoch: Epoch::parse(&e)?,
                offset: Offset(head),
                subscribers: usize::try_from(subs).unwrap_or(usize::MAX),
                backlog_messages: usize::try_from(len).unwrap_or(usize::MAX),
                backlog_bytes: 0,
                first_offset: Offset(first),
            })
        })
        .collect()
}

fn parse_epoch(s: &str) -> Result<Epoch, StoreError> {
    Epoch::parse(s).ok_or_else(|| StoreError::Unavailable(format!("malformed epoch `{s}`")))
}

/// A stream entry as Redis answers it: its id and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// An `XRANGE`/`XREVRANGE` answer as mirror entries.
fn parse_entries(v: Value) -> Result<Vec<MirrorEntry>, StoreError> {
    let bad = || StoreError::Unavailable("malformed stream entries".into());
    let rows: Vec<StreamEntry> = redis::from_redis_value(v).map_err(|_| bad())?;
    let now = now_ms();
    rows.into_iter()
        .map(|(id, fields)| {
            let offset = id
                .split('-')
                .next()
                .and_then(|o| o.parse().ok())
                .map(Offset)
                .ok_or_else(bad)?;
            let (mut data, mut t, mut route) = (None, now, 0u64);
            for (k, v) in fields {
                match k.as_str() {
                    "d" => data = Some(v),
                    "t" => {
                        t = std::str::from_utf8(&v)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(now)
                    }
                    "r" => {
                        route = std::str::from_utf8(&v)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0)
                    }
                    _ => {}
                }
            }
            let data = Payload::from_json_bytes(bytes::Bytes::from(data.ok_or_else(bad)?))
                .map_err(|_| bad())?;
            Ok(MirrorEntry {
                offset,
                data,
                age: Duration::from_millis(now.saturating_sub(t)),
                route: (route != 0).then_some(ConnId(route)),
            })
        })
        .collect()
}

/// `info` with the configured ACL user and password.
fn credentials(
    mut info: redis::RedisConnectionInfo,
    cfg: &ClusterConfig,
) -> redis::RedisConnectionInfo {
    if let Some(u) = &cfg.username {
        info = info.set_username(u.clone());
    }
    if let Some(p) = &cfg.password {
        info = info.set_password(p.clone());
    }
    info
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn a_channels_keys_share_its_hash_tag() {
        let n = ChannelName::new("a.b").expect("name");
        for k in keys("tslm", &n) {
            assert!(k.starts_with("tslm:{a.b}:"), "{k}");
        }
        assert_eq!(topic("tslm", &n), "tslm:{a.b}");
    }

    #[test]
    fn a_nodes_reply_channel_is_never_a_channels_topic() {
        // Sharded in a Redis Cluster: its own hash tag, the node number.
        assert_eq!(cluster_node_topic("tslm", 7), "tslm:node:{7}");
        assert_eq!(node_topic("tslm", 7), "tslm:node:7");
        let n = ChannelName::new("node:{7}").map(|n| topic("tslm", &n));
        assert_ne!(n.as_deref().ok(), Some("tslm:node:{7}"));
    }
}
