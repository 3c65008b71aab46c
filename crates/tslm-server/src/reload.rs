//! Hot reload: a running server takes a new, already validated configuration.
//!
//! - Listeners that keep their name and addresses get a new context (classes, publishers,
//!   issuers, origins, limits, TLS files); their sockets stay bound. The old context's
//!   generation ends: accept loops and WebSocket sessions move to the new one
//!   (`ListenerCtx::successor`), keep-alive HTTP connections close gracefully so the client's
//!   next request gets the new configuration, and a session whose credential the new
//!   configuration removed is closed with 4006 (`Connection::rebind`).
//! - Listeners that are new (or whose addresses changed) are bound first; if any address cannot
//!   be bound, or a TLS file does not load, nothing changes and the reload is refused.
//! - Listeners that are gone stop accepting and close their sessions with 1001.
//! - Server-wide tables sized at startup (`[server]` limits of the hub and the admission
//!   budgets) cannot change while running: a reload that changes them is refused, naming the key.
//!
//! The replay guard of signed HTTP requests is kept, so no signature is accepted twice across a
//! reload. Per-connection state (outbox limits, rate buckets) of existing connections keeps the
//! values it was created with.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tslm_hub::{Broker, Hub};

use crate::admission::Admission;
use crate::config::{Config, ListenerConfig};
use crate::context::{ListenerCtx, Live, Policy};
use crate::stats::Stats;
use crate::tls::TlsState;
use crate::{ServerError, http, listener};

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
    /// Every address the server listens on after the reload.
    pub addrs: Vec<crate::BoundAddr>,
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("table [server], key `{0}` cannot change while the gateway runs; restart to apply it")]
    NeedsRestart(&'static str),
    #[error("table [{0}] cannot change while the gateway runs; restart to apply it")]
    NeedsRestartTable(&'static str),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

pub(crate) struct Request {
    pub(crate) config: Config,
    pub(crate) done: oneshot::Sender<Result<ReloadReport, ReloadError>>,
}

/// Hands new configurations to a running [`crate::Server`] (from [`crate::Server::reloader`]).
#[derive(Clone)]
pub struct Reloader(pub(crate) mpsc::Sender<Request>);

impl Reloader {
    /// Applies `config` (validated by [`Config::load`] or [`Config::from_toml`]), or says why not.
    pub async fn reload(&self, config: Config) -> Result<ReloadReport, ReloadError> {
        let (done, answer) = oneshot::channel();
        self.0
            .send(Request { config, done })
            .await
            .map_err(|_| ReloadError::ShuttingDown)?;
        answer.await.map_err(|_| ReloadError::ShuttingDown)?
    }
}

/// What every listener of the server shares, for starting listeners at startup and on reload.
pub(crate) struct Shared {
    pub(crate) hub: Hub,
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) token: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) stats: Arc<Stats>,
    pub(crate) admission: Arc<Admission>,
    pub(crate) tls_reload_interval: Duration,
    /// The audit log (off without `[audit]`), one handle per listener.
    pub(crate) audit: crate::audit::Audit,
    /// The server's health and its close schedule at shutdown.
    pub(crate) health: Arc<crate::health::Health>,
    pub(crate) closing: Arc<crate::drain::CloseSchedule>,
    /// The process and its listeners as they started (the admin page and `/metrics`).
    pub(crate) node: Arc<crate::node::Node>,
}

/// A running listener: its configuration, its token (cancelled when it is removed or the server
/// stops), and the live context of each of its addresses.
pub(crate) struct Running {
    cfg: Arc<ListenerConfig>,
    token: CancellationToken,
    tls: Option<Arc<TlsState>>,
    /// Stops the watcher of `tls`'s files (when a reload replaces them).
    tls_watch: Option<CancellationToken>,
    lives: Vec<Arc<Live>>,
    addrs: Vec<std::net::SocketAddr>,
}

impl Running {
    /// Its name and TLS, when it has TLS (for the node's certificate expiry figures).
    pub(crate) fn tls(&self) -> Option<(String, Arc<TlsState>)> {
        self.tls
            .as_ref()
            .map(|t| (self.cfg.name.clone(), Arc::clone(t)))
    }

    /// The connection slots of each of its addresses (for the node's occupancy figures).
    pub(crate) fn slots(&self) -> Vec<crate::node::Slots> {
        self.lives
            .iter()
            .filter_map(|l| l.current())
            .map(|(ctx, _)| crate::node::Slots {
                listener: ctx.cfg.name.clone(),
                limit: Arc::clone(&ctx.conn_limit),
                max: ctx.cfg.max_connections,
            })
            .collect()
    }

    /// Forgets the live contexts (breaking each context's reference to itself through its slot).
    pub(crate) fn clear(&self) {
        for live in &self.lives {
            live.clear();
        }
    }
}

/// Watches `tls`'s files until `token` (a child of `listener`) is cancelled; returns it.
fn watch_tls(
    shared: &Shared,
    tls: &Arc<TlsState>,
    listener: &CancellationToken,
) -> CancellationToken {
    let token = listener.child_token();
    shared
        .tracker
        .spawn(Arc::clone(tls).watch(shared.tls_reload_interval, token.clone()));
    token
}

/// Loads `cfg`'s TLS files (`None` without TLS).
pub(crate) fn load_tls(cfg: &ListenerConfig) -> Result<Option<Arc<TlsState>>, ServerError> {
    cfg.tls
        .as_ref()
        .map(|files| {
            TlsState::load(&cfg.name, files)
                .map(Arc::new)
                .map_err(|source| ServerError::Tls {
                    listener: cfg.name.clone(),
                    source,
                })
        })
        .transpose()
}

/// Binds every address of `cfg` (all or none).
pub(crate) fn bind_all(cfg: &ListenerConfig) -> Result<Vec<TcpListener>, ServerError> {
    cfg.bind
        .iter()
        .map(|addr| {
            listener::bind(*addr).map_err(|source| ServerError::Bind {
                listener: cfg.name.clone(),
                addr: *addr,
                source,
            })
        })
        .collect()
}

/// Starts accepting on `sockets` for listener `cfg`.
pub(crate) fn start(
    shared: &Shared,
    policy: &Policy,
    cfg: Arc<ListenerConfig>,
    sockets: Vec<TcpListener>,
    tls: Option<Arc<TlsState>>,
) -> Running {
    let token = shared.token.child_token();
    let tls_watch = tls.as_ref().map(|t| watch_tls(shared, t, &token));
    let mut lives = Vec::new();
    let addrs = sockets.iter().filter_map(|t| t.local_addr().ok()).collect();
    for tcp in sockets {
        let live = Arc::new(Live::default());
        let ctx = Arc::new(context(shared, policy, &cfg, &token, tls.clone(), &live));
        let router = http::router(Arc::clone(&ctx));
        live.replace(Arc::clone(&ctx), router.clone());
        shared
            .tracker
            .spawn(listener::accept_loop(ctx, tcp, router));
        lives.push(live);
    }
    Running {
        cfg,
        token,
        tls,
        tls_watch,
        lives,
        addrs,
    }
}

fn context(
    shared: &Shared,
    policy: &Policy,
    cfg: &Arc<ListenerConfig>,
    token: &CancellationToken,
    tls: Option<Arc<TlsState>>,
    live: &Arc<Live>,
) -> ListenerCtx {
    ListenerCtx::new(
        Arc::clone(cfg),
        policy.clone(),
        (shared.hub.clone(), Arc::clone(&shared.broker)),
        token.clone(),
        shared.tracker.clone(),
        Arc::clone(&shared.stats),
        Arc::clone(&shared.admission),
    )
    .with_tls(tls)
    .with_audit(shared.audit.for_listener(&cfg.name))
    .with_lifecycle(Arc::clone(&shared.health), Arc::clone(&shared.closing))
    .with_node(Arc::clone(&shared.node))
    .with_live(Arc::clone(live))
}

/// The `[server]` keys a running server cannot change.
fn fixed_keys(old: &Config, new: &Config) -> Result<(), ReloadError> {
    let checks: [(&'static str, bool); 7] = [
        (
            "backlog_memory_bytes",
            old.backlog_memory_bytes == new.backlog_memory_bytes,
        ),
        ("max_channels", old.max_channels == new.max_channels),
        ("max_msg_ids", old.max_msg_ids == new.max_msg_ids),
        (
            "max_reply_routes",
            old.max_reply_routes == new.max_reply_routes,
        ),
        (
            "max_subscriptions",
            old.max_subscriptions == new.max_subscriptions,
        ),
        (
            "max_pending_connections",
            old.max_pending_connections == new.max_pending_connections,
        ),
        (
            "max_remembered_signatures",
            old.max_remembered_signatures == new.max_remembered_signatures,
        ),
    ];
    if old.audit != new.audit {
        return Err(ReloadError::NeedsRestartTable("audit"));
    }
    if old.cluster != new.cluster {
        return Err(ReloadError::NeedsRestartTable("cluster"));
    }
    match checks.into_iter().find(|(_, same)| !same) {
        Some((key, _)) => Err(ReloadError::NeedsRestart(key)),
        None => Ok(()),
    }
}

/// Applies `new` to the running listeners (see the module documentation). On error nothing
/// changed.
pub(crate) fn apply(
    shared: &Shared,
    running: &mut BTreeMap<String, Running>,
    old: &Config,
    new: &Config,
    policy: &Policy,
) -> Result<ReloadReport, ReloadError> {
    fixed_keys(old, new)?;
    // Everything that can fail comes first: TLS files and new sockets.
    let mut staged = Vec::new();
    for l in &new.listeners {
        let same_addrs = running.get(&l.name).is_some_and(|r| r.cfg.bind == l.bind);
        let tls = match running.get(&l.name) {
            Some(r) if same_addrs && r.cfg.tls == l.tls => r.tls.clone(),
            _ => load_tls(l)?,
        };
        let sockets = if same_addrs { None } else { Some(bind_all(l)?) };
        staged.push((Arc::new(l.clone()), tls, sockets));
    }
    let mut report = ReloadReport::default();
    let keep: Vec<&str> = new.listeners.iter().map(|l| l.name.as_str()).collect();
    // Listeners gone, or moving to other addresses, close now. Their sockets close with them,
    // but only after the new addresses were bound above: an address cannot move from one
    // listener to another in one reload (remove it in one reload, add it in the next).
    let gone: Vec<String> = running
        .iter()
        .filter(|(name, r)| {
            !keep.contains(&name.as_str())
                || staged
                    .iter()
                    .any(|(c, _, s)| c.name == **name && s.is_some() && c.bind != r.cfg.bind)
        })
        .map(|(name, _)| name.clone())
        .collect();
    for name in &gone {
        if let Some(r) = running.remove(name) {
            r.token.cancel();
            r.clear();
            if !keep.contains(&name.as_str()) {
                report.removed.push(name.clone());
            }
        }
    }
    for (cfg, tls, sockets) in staged {
        match sockets {
            Some(sockets) => {
                let name = cfg.name.clone();
                let r = start(shared, policy, cfg, sockets, tls);
                if gone.contains(&name) {
                    report.updated.push(name.clone());
                } else {
                    report.added.push(name.clone());
                }
                running.insert(name, r);
            }
            None => {
                let Some(r) = running.get_mut(&cfg.name) else {
                    continue;
                };
                if r.tls.as_ref().map(Arc::as_ptr) != tls.as_ref().map(Arc::as_ptr) {
                    if let Some(old) = r.tls_watch.take() {
                        old.cancel();
                    }
                    r.tls_watch = tls.as_ref().map(|t| watch_tls(shared, t, &r.token));
                }
                for live in &r.lives {
                    let Some((old_ctx, _)) = live.current() else {
                        continue;
                    };
                    let ctx = context(shared, policy, &cfg, &r.token, tls.clone(), live);
                    let ctx = Arc::new(ctx.carrying(&old_ctx));
                    let router = http::router(Arc::clone(&ctx));
                    live.replace(ctx, router);
                }
                r.cfg = cfg;
                r.tls = tls;
                report.updated.push(r.cfg.name.clone());
            }
        }
    }
    report.addrs = running
        .values()
        .flat_map(|r| {
            r.addrs.iter().map(|a| crate::BoundAddr {
                listener: r.cfg.name.clone(),
                addr: *a,
            })
        })
        .collect();
    Ok(report)
}
