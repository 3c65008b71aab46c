//! The TSLM server: listeners, the HTTP API, WebSocket sessions and shutdown, over the hub.
//!
//! [`Server::bind`] binds every configured address (or fails, binding nothing that stays open);
//! [`Server::run`] serves until the shutdown future resolves, then closes every WebSocket session
//! with 1001 and waits for connections to finish within the configured grace period.

pub mod auth_config;
pub mod classes;
pub mod config;
mod http;
mod iplimit;
mod listener;
mod ops;
mod ratelimit;
mod session;
mod stats;
mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tslm_hub::{Hub, HubLimits};

pub use config::{Config, ConfigError, ListenerConfig, Permission, Permissions};
pub use stats::ServerStats;

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener `{listener}`: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound, not yet serving, gateway.
pub struct Server {
    config: Config,
    listeners: Vec<listener::Bound>,
    hub: Hub,
    stats: Arc<stats::Stats>,
}

/// Where one listener address ended up bound (port 0 resolved).
#[derive(Debug, Clone)]
pub struct BoundAddr {
    pub listener: String,
    pub addr: SocketAddr,
}

impl Server {
    /// Binds every address of every listener. Fails on the first address that cannot be bound;
    /// sockets bound so far are closed again, so a failed start leaves nothing listening.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let cfg = Arc::new(l.clone());
            for addr in &l.bind {
                let tcp = listener::bind(*addr).map_err(|source| ServerError::Bind {
                    listener: l.name.clone(),
                    addr: *addr,
                    source,
                })?;
                listeners.push(listener::Bound {
                    cfg: Arc::clone(&cfg),
                    tcp,
                });
            }
        }
        let hub = Hub::with_limits(HubLimits {
            backlog_memory_bytes: config.backlog_memory_bytes,
        });
        Ok(Self {
            config,
            listeners,
            hub,
            stats: Arc::default(),
        })
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

    /// A handle on live connection counters.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(Arc::clone(&self.stats))
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        for b in self.listeners {
            let addr = b.tcp.local_addr().ok();
            tracing::info!(
                listener = %b.cfg.name,
                addr = %addr.map_or_else(|| "?".to_string(), |a| a.to_string()),
                permissions = %b.cfg.permissions,
                auth = if b.cfg.auth_tokens.is_empty() { "none" } else { "tokens" },
                max_connections = b.cfg.max_connections,
                "listening"
            );
            if b.cfg.echo {
                tracing::warn!(listener = %b.cfg.name, "echo mode: messages are echoed, not run (conformance testing only)");
            }
            let ctx = Arc::new(listener::ListenerCtx::new(
                b.cfg,
                Arc::clone(&self.config.channels),
                self.hub.clone(),
                token.clone(),
                tracker.clone(),
                Arc::clone(&self.stats),
            ));
            tracker.spawn(listener::accept_loop(ctx, b.tcp));
        }
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
        shutdown.await;
        drop(sweeper);
        tracing::info!(
            grace_seconds = self.config.shutdown_grace.as_secs(),
            connections = self.stats.snapshot().connections,
            "shutting down: closing connections"
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
