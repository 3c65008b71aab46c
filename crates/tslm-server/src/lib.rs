//! The TSLM server: listeners, the HTTP API, WebSocket sessions and shutdown, over the hub.
//!
//! [`Server::bind`] binds every configured address (or fails, binding nothing that stays open);
//! [`Server::run`] serves until the shutdown future resolves, then drains (readiness false while
//! still serving for `drain_delay`), stops accepting, closes the WebSocket sessions with 1001 one
//! after another over the grace period and waits for connections to finish within it.

mod admin;
mod admission;
pub mod audit;
pub mod auth_config;
pub mod classes;
pub mod config;
mod connection;
mod context;
mod cross_site;
pub mod drain;
mod errors;
pub mod health;
mod http;
mod http2;
mod identity;
mod iplimit;
mod listener;
mod metrics;
mod node;
mod ops;
mod pacer;
mod poll;
mod ratelimit;
mod registry;
mod reload;
mod session;
mod sse;
mod stats;
mod ticket;
mod tls;
mod upgrade;
mod write_deadline;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tslm_hub::{Broker, Hub, HubLimits, MemoryBroker};

pub use config::{Config, ConfigError, Http2Config, ListenerConfig, Permission, Permissions};
pub use health::{Health, NotReady};
pub use reload::{ReloadError, ReloadReport, Reloader};
pub use stats::ServerStats;
pub use tls::{RELOAD_INTERVAL as TLS_RELOAD_INTERVAL, TlsError};

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener `{listener}`: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A listener's TLS certificate, key or client CA file does not load; the message names
    /// the listener, the configuration key and the file.
    #[error("listener `{listener}`: {source}")]
    Tls { listener: String, source: TlsError },
    /// The audit log cannot be opened, or its last line cannot be continued.
    #[error(transparent)]
    Audit(#[from] audit::OpenError),
    /// `[cluster]` names a Redis URL that does not parse.
    #[error("[cluster]: {0}")]
    Cluster(#[from] tslm_cluster::ClusterError),
}

/// A bound, not yet serving, gateway.
pub struct Server {
    config: Config,
    listeners: Vec<listener::Bound>,
    hub: Hub,
    /// The channel log's store: the hub's own, in memory (a cluster's would be shared).
    broker: Arc<dyn Broker>,
    /// Cluster mode: the Redis broker, followed while the server runs.
    cluster: Option<tslm_cluster::Cluster>,
    verifier: Option<tslm_oidc::Verifier>,
    stats: Arc<stats::Stats>,
    tls_reload_interval: Duration,
    /// New configurations from [`Reloader`]s, applied by [`Server::run`].
    reloads: (
        tokio::sync::mpsc::Sender<reload::Request>,
        tokio::sync::mpsc::Receiver<reload::Request>,
    ),
    audit: Option<audit::AuditLog>,
    health: Arc<Health>,
    closing: Arc<drain::CloseSchedule>,
}

/// Where one listener address ended up bound (port 0 resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundAddr {
    pub listener: String,
    pub addr: SocketAddr,
}

impl Server {
    /// Loads every listener's TLS files and binds every address of every listener. Fails on the
    /// first TLS file that does not load or address that cannot be bound; sockets bound so far
    /// are closed again, so a failed start leaves nothing listening.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let audit = config
            .audit
            .as_ref()
            .map(audit::AuditLog::open)
            .transpose()?;
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let cfg = Arc::new(l.clone());
            let tls = match &l.tls {
                None => None,
                Some(files) => {
                    let state =
                        tls::TlsState::load(&l.name, files).map_err(|source| ServerError::Tls {
                            listener: l.name.clone(),
                            source,
                        })?;
                    let state = Arc::new(state);
                    Some(state)
                }
            };
            for addr in &l.bind {
                let tcp = listener::bind(*addr).map_err(|source| ServerError::Bind {
                    listener: l.name.clone(),
                    addr: *addr,
                    source,
                })?;
                listeners.push(listener::Bound {
                    cfg: Arc::clone(&cfg),
                    tcp,
                    tls: tls.clone(),
                });
            }
        }
        let limits = HubLimits {
            backlog_memory_bytes: config.backlog_memory_bytes,
            max_channels: config.max_channels,
            max_msg_ids: config.max_msg_ids,
            max_reply_routes: config.max_reply_routes,
            max_subscriptions: config.max_subscriptions,
        };
        let (hub, broker, cluster): (Hub, Arc<dyn Broker>, _) = match &config.cluster {
            None => {
                let hub = Hub::with_limits(limits);
                (hub.clone(), Arc::new(MemoryBroker::new(hub)), None)
            }
            Some(c) => {
                let (cluster, hub) = tslm_cluster::Cluster::connect(c.clone(), limits).await?;
                (hub, Arc::new(cluster.clone()), Some(cluster))
            }
        };
        let verifier = (!config.issuers.is_empty())
            .then(|| tslm_oidc::Verifier::new(config.issuers.as_ref().clone()));
        Ok(Self {
            verifier,
            config,
            listeners,
            broker,
            cluster,
            hub,
            stats: Arc::default(),
            tls_reload_interval: TLS_RELOAD_INTERVAL,
            reloads: tokio::sync::mpsc::channel(4),
            audit,
            health: Arc::default(),
            closing: Arc::default(),
        })
    }

    /// How often TLS listeners check their files for changes (default [`TLS_RELOAD_INTERVAL`],
    /// 2 s). For tests and embedders; takes effect when [`Server::run`] starts.
    pub fn set_tls_reload_interval(&mut self, every: Duration) {
        self.tls_reload_interval = every.max(Duration::from_millis(1));
    }

    /// The bound addresses, ordered by listener name, then by the listener's own address order.
    pub fn local_addrs(&self) -> Vec<BoundAddr> {
        self.listeners
            .iter()
            .filter_map(|b| {
                Some(BoundAddr {
                    listener: b.cfg.name.clone(),
                    addr: b.tcp.local_addr().ok()?,
                })
            })
            .collect()
    }

    /// The hub this server serves (for embedding and tests).
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// A handle that applies new configurations to this server while it runs (SIGHUP).
    pub fn reloader(&self) -> Reloader {
        Reloader(self.reloads.0.clone())
    }

    /// The server's liveness and readiness (what `/healthz` and `/readyz` answer): not ready
    /// ([`NotReady::Starting`]) until [`Server::run`] accepts on every listener. Embedders may
    /// raise and clear reasons of their own.
    pub fn health(&self) -> Arc<Health> {
        Arc::clone(&self.health)
    }

    /// A handle on live connection counters.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(Arc::clone(&self.stats))
    }

    /// Every listener with its bound addresses, for the admin page.
    fn listener_infos(&self) -> Vec<node::ListenerInfo> {
        let mut infos: Vec<node::ListenerInfo> = Vec::new();
        for b in &self.listeners {
            let addr = b.tcp.local_addr().ok();
            if let Some(i) = infos.iter_mut().find(|i| i.name == b.cfg.name) {
                i.addrs.extend(addr);
                continue;
            }
            infos.push(node::ListenerInfo {
                name: b.cfg.name.clone(),
                addrs: addr.into_iter().collect(),
                permissions: b.cfg.permissions,
                tls: match &b.tls {
                    None => "none",
                    Some(t) if t.requires_client_cert() => "mutual",
                    Some(_) => "server",
                },
                tokens: !b.cfg.auth_tokens.is_empty(),
            });
        }
        infos
    }

    /// Sizes the server-wide descriptor budgets for the process's descriptor limit, and says
    /// when the listeners' `max_connections` promise more than it allows.
    fn admission(&self) -> admission::Admission {
        let budget = admission::Budget::new(
            self.config.max_pending_connections,
            admission::descriptor_limit(),
        );
        let promised: usize = self
            .listeners
            .iter()
            .map(|b| b.cfg.max_connections)
            .fold(0, usize::saturating_add);
        tracing::info!(
            descriptors = budget
                .descriptors
                .map_or_else(|| "unlimited".to_owned(), |d| d.to_string()),
            connections = budget.open,
            pending = budget.pending,
            "descriptor budget"
        );
        if promised > budget.open {
            tracing::warn!(
                descriptors = budget.descriptors.unwrap_or(0),
                connections = budget.open,
                max_connections = promised,
                "the descriptor limit allows fewer connections than the listeners' max_connections: past it, connections are answered 503; raise the limit (LimitNOFILE) to serve more"
            );
        }
        admission::Admission::new(budget)
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_staged(shutdown, std::future::pending()).await;
    }

    /// [`Server::run`], and when `hurry` resolves during the drain delay (the binary: a second
    /// SIGINT or SIGTERM), the rest of the delay is skipped.
    pub async fn run_staged(
        mut self,
        shutdown: impl Future<Output = ()>,
        hurry: impl Future<Output = ()>,
    ) {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        if let Some(v) = &self.verifier {
            // The identity providers' keys, fetched before the first token needs them (a
            // failure is logged and retried on demand: it does not stop the gateway).
            let (v, token) = (v.clone(), token.clone());
            tracker.spawn(async move {
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = v.prefetch() => {}
                }
            });
        }
        let replay = Arc::new(std::sync::Mutex::new(identity::replay_guard(
            &self.config.publishers,
            self.config.max_remembered_signatures,
        )));
        let admission = Arc::new(self.admission());
        let audit = match &self.audit {
            None => audit::Audit::off(),
            Some(log) => {
                log.start().await;
                if let Some(ticker) = log.ticker(token.clone()) {
                    tracker.spawn(ticker);
                }
                log.handle()
            }
        };
        // The process and its listeners as they start, for the operator's routes.
        let node = Arc::new(node::Node::starting(self.listener_infos()));
        let shared = reload::Shared {
            hub: self.hub.clone(),
            broker: Arc::clone(&self.broker),
            token: token.clone(),
            tracker: tracker.clone(),
            stats: Arc::clone(&self.stats),
            admission,
            tls_reload_interval: self.tls_reload_interval,
            audit,
            health: Arc::clone(&self.health),
            closing: Arc::clone(&self.closing),
            node: Arc::clone(&node),
        };
        let policy = |config: &Config, verifier: &Option<tslm_oidc::Verifier>| context::Policy {
            channels: Arc::clone(&config.channels),
            publishers: Arc::clone(&config.publishers),
            verifier: verifier.clone(),
            replay: Arc::clone(&replay),
            issuers: Arc::clone(&config.issuers),
        };
        if let Some(cluster) = &self.cluster {
            // Not ready until every shard is followed; the cluster says when that changes.
            self.health.raise(NotReady::ClusterStore);
            let health = Arc::clone(&self.health);
            cluster.run(
                token.clone(),
                Arc::new(move |up| {
                    if up {
                        health.clear(NotReady::ClusterStore);
                    } else {
                        health.raise(NotReady::ClusterStore);
                    }
                }),
            );
        }
        let mut running = std::collections::BTreeMap::new();
        // Every listener is bound (`bind` is all or nothing) and is about to accept: ready before
        // the first connection can be answered, so no probe sees `starting` once accepting.
        self.health.clear(NotReady::Starting);
        // One listener's addresses are consecutive in `listeners` (see `bind`).
        let mut listeners = std::mem::take(&mut self.listeners).into_iter().peekable();
        while let Some(first) = listeners.next() {
            let (cfg, tls) = (Arc::clone(&first.cfg), first.tls.clone());
            let mut sockets = vec![first.tcp];
            while let Some(b) = listeners.next_if(|b| Arc::ptr_eq(&b.cfg, &cfg)) {
                sockets.push(b.tcp);
            }
            log_listening(&cfg, &sockets, tls.as_deref());
            let r = reload::start(
                &shared,
                &policy(&self.config, &self.verifier),
                Arc::clone(&cfg),
                sockets,
                tls,
            );
            running.insert(cfg.name.clone(), r);
        }
        node.set_slots(running.values().flat_map(reload::Running::slots).collect());
        node.set_tls(running.values().filter_map(reload::Running::tls).collect());
        // Age limits hold for idle channels too: expired backlog entries are swept every second.
        let sweeper = {
            let (hub, token) = (self.hub.clone(), token.clone());
            tracker.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tick.tick() => hub.sweep(),
                    }
                }
            })
        };
        // The runtime's heartbeat, for `/healthz`.
        let watchdog = {
            let (health, token) = (Arc::clone(&self.health), token.clone());
            tracker.spawn(async move {
                let mut tick = tokio::time::interval(health::WATCHDOG_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tick.tick() => health.tick(),
                    }
                }
            })
        };
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    for r in running.values() {
                        r.clear();
                    }
                    break;
                }
                Some(req) = self.reloads.1.recv() => {
                    let new = req.config;
                    // Issuers unchanged: the verifier and its cached keys stay.
                    let verifier = if new.issuers == self.config.issuers {
                        self.verifier.clone()
                    } else {
                        (!new.issuers.is_empty())
                            .then(|| tslm_oidc::Verifier::new(new.issuers.as_ref().clone()))
                    };
                    let result = reload::apply(&shared, &mut running, &self.config, &new, &policy(&new, &verifier));
                    match &result {
                        Ok(report) => {
                            tracing::info!(added = ?report.added, removed = ?report.removed, updated = ?report.updated, "configuration reloaded");
                            self.config = new;
                            self.verifier = verifier;
                            node.set_tls(running.values().filter_map(reload::Running::tls).collect());
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reload refused: the running configuration stays");
                        }
                    }
                    let _ = req.done.send(result);
                }
            }
        }
        // Staged: readiness turns false at once while everything is still served, so load
        // balancers stop sending clients here; then accepting stops and sessions are closed one
        // after another over the grace period (see `drain`), not all at once.
        self.health.raise(NotReady::Draining);
        let drain_delay = self.config.drain_delay;
        tracing::info!(
            drain_delay_seconds = drain_delay.as_secs(),
            "draining: /readyz answers 503, still serving until the drain delay ends"
        );
        tokio::select! {
            _ = tokio::time::sleep(drain_delay) => {}
            _ = hurry => tracing::info!("asked again: drain delay cut short"),
        }
        drop((sweeper, watchdog));
        // WebSocket sessions and event streams alike take turns (`drain`).
        let sessions = self.stats.closing_turns();
        self.closing.begin(sessions, self.config.shutdown_grace);
        tracing::info!(
            grace_seconds = self.config.shutdown_grace.as_secs(),
            connections = self.stats.snapshot().connections,
            sessions,
            spread_ms = drain::spread(self.config.shutdown_grace).as_millis() as u64,
            "shutting down: no longer accepting; closing sessions and event streams spread over the grace period"
        );
        token.cancel();
        tracker.close();
        if tokio::time::timeout(self.config.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = tracker.len(),
                "grace period over: dropping connections still open"
            );
        } else {
            tracing::info!("shutdown complete");
        }
        // Last: the `stop` record goes behind every record of the connections just closed.
        if let Some(log) = self.audit {
            log.stop().await;
        }
    }
}

/// Logs a listener's start (every address) and warns about echo mode.
fn log_listening(
    cfg: &ListenerConfig,
    sockets: &[tokio::net::TcpListener],
    tls: Option<&tls::TlsState>,
) {
    for tcp in sockets {
        let addr = tcp.local_addr().ok();
        tracing::info!(
            listener = %cfg.name,
            addr = %addr.map_or_else(|| "?".to_string(), |a| a.to_string()),
            permissions = %cfg.permissions,
            auth = if cfg.auth_tokens.is_empty() { "none" } else { "tokens" },
            tls = match tls {
                None => "none",
                Some(t) if t.requires_client_cert() => "mutual",
                Some(_) => "server",
            },
            max_connections = cfg.max_connections,
            "listening"
        );
    }
    if cfg.echo {
        tracing::warn!(listener = %cfg.name, "echo mode: messages are echoed, not run (conformance testing only)");
    }
}

/// Live counters of a running server.
#[derive(Clone)]
pub struct StatsHandle(Arc<stats::Stats>);

impl StatsHandle {
    pub fn get(&self) -> ServerStats {
        self.0.snapshot()
    }
}

/// Binds and serves `config` until `shutdown` resolves: the single entry point.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let server = Server::bind(config).await?;
    server.run(shutdown).await;
    Ok(())
}
