//! What every task of a listener shares, and what one accepted connection holds: the state the
//! accept loop, the HTTP API, the handshake and the WebSocket session all read. Kept out of the
//! accept-loop file so that every layer can depend on it without depending on the others.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tslm_hub::{Broker, Hub};

use crate::admission::{Admission, Open};
use crate::config::ListenerConfig;
use crate::drain::CloseSchedule;
use crate::health::Health;
use crate::iplimit::{IpGuard, IpLimits};
use crate::ratelimit::TokenBucket;
use crate::stats::{Gauge, Stats};
use crate::tls::TlsState;

/// What every task of one listener shares.
pub(crate) struct ListenerCtx {
    pub cfg: Arc<ListenerConfig>,
    pub channels: Arc<crate::classes::ChannelClasses>,
    pub publishers: Arc<Vec<crate::auth_config::Publisher>>,
    /// Validates subscribers' access tokens (`None` without `[issuer.NAME]`).
    pub verifier: Option<tslm_oidc::Verifier>,
    /// Signatures of HTTP requests seen recently, shared by every listener of the server, so a
    /// signed request is accepted once in all (never twice, on no address).
    pub replay: Arc<std::sync::Mutex<tslm_auth::http_sig::ReplayGuard>>,
    /// The identity providers' settings (leeway of token expiry).
    pub issuers: Arc<Vec<crate::auth_config::Issuer>>,
    /// This node's fan-out: subscribers, their outboxes and replays.
    pub hub: Hub,
    /// The channel log: offsets, backlogs, channel options and reply routes (see
    /// [`tslm_hub::broker`]). Only the channel-operations layer (`ops`) calls it.
    pub broker: Arc<dyn Broker>,
    /// Cancelled when the server shuts down or this listener is removed by a reload.
    pub shutdown: CancellationToken,
    /// This context's generation: a child of `shutdown`, also cancelled when a reload replaces
    /// the context. Accept loops and sessions then move to [`ListenerCtx::successor`].
    pub generation: CancellationToken,
    /// Where the listener's current context is kept (`None`: this context is never replaced).
    pub(crate) live: Option<Arc<Live>>,
    pub tracker: TaskTracker,
    pub stats: Arc<Stats>,
    /// `None`: plain TCP.
    pub(crate) tls: Option<Arc<TlsState>>,
    pub(crate) conn_limit: Arc<Semaphore>,
    /// Slots a reload took away from `conn_limit` that were in use: taken back as connections
    /// close (see [`ListenerCtx::carrying`]).
    pub(crate) conn_shortfall: Arc<AtomicUsize>,
    pub(crate) ip_limits: Arc<IpLimits>,
    /// The server-wide descriptor budgets (see [`crate::admission`]).
    pub(crate) admission: Arc<Admission>,
    /// The audit log (a no-op handle without `[audit]`).
    pub(crate) audit: crate::audit::Audit,
    /// Liveness and readiness, shared by every listener (`/healthz`, `/readyz`).
    pub(crate) health: Arc<Health>,
    /// Each session's turn to close at shutdown, shared by every listener.
    pub(crate) closing: Arc<CloseSchedule>,
    /// The process and its listeners, for the operator's routes ([`crate::admin`]).
    pub(crate) node: Arc<crate::node::Node>,
    /// Write coalescing's shared tick (`None`: `write_coalesce_ms` is 0).
    pub(crate) pacer: Option<Arc<crate::pacer::Pacer>>,
}

/// What every listener shares about channels and identities.
#[derive(Clone)]
pub(crate) struct Policy {
    pub channels: Arc<crate::classes::ChannelClasses>,
    pub publishers: Arc<Vec<crate::auth_config::Publisher>>,
    pub verifier: Option<tslm_oidc::Verifier>,
    pub replay: Arc<std::sync::Mutex<tslm_auth::http_sig::ReplayGuard>>,
    pub issuers: Arc<Vec<crate::auth_config::Issuer>>,
}

impl ListenerCtx {
    pub(crate) fn new(
        cfg: Arc<ListenerConfig>,
        policy: Policy,
        (hub, broker): (Hub, Arc<dyn Broker>),
        shutdown: CancellationToken,
        tracker: TaskTracker,
        stats: Arc<Stats>,
        admission: Arc<Admission>,
    ) -> Self {
        let conn_limit = Arc::new(Semaphore::new(cfg.max_connections));
        let ip_limits = Arc::new(IpLimits::new(cfg.abuse, cfg.max_connections));
        let pacer =
            (!cfg.write_coalesce.is_zero()).then(|| crate::pacer::Pacer::new(cfg.write_coalesce));
        Self {
            pacer,
            ip_limits,
            cfg,
            channels: policy.channels,
            publishers: policy.publishers,
            verifier: policy.verifier,
            replay: policy.replay,
            issuers: policy.issuers,
            hub,
            broker,
            generation: shutdown.child_token(),
            live: None,
            shutdown,
            tracker,
            stats,
            tls: None,
            conn_limit,
            conn_shortfall: Arc::default(),
            admission,
            audit: crate::audit::Audit::off(),
            health: Arc::default(),
            closing: Arc::default(),
            node: Arc::new(crate::node::Node::starting(Vec::new())),
        }
    }

    /// A reload's new context for the same addresses as `old`: the connection slots and the
    /// per-address tables carry over (connections already open still count; spent budgets stay
    /// spent). A higher `max_connections` adds slots at once; a lower one takes away the free
    /// slots at once and the rest as connections close (a task takes them back; a later raise
    /// cancels what it has not yet taken).
    pub(crate) fn carrying(mut self, old: &ListenerCtx) -> Self {
        let (was, now) = (old.cfg.max_connections, self.cfg.max_connections);
        self.conn_limit = Arc::clone(&old.conn_limit);
        self.conn_shortfall = Arc::clone(&old.conn_shortfall);
        self.ip_limits = Arc::clone(&old.ip_limits);
        self.ip_limits.reconfigure(self.cfg.abuse, now);
        if now > was {
            let up = now - was;
            let cancelled = take_up_to(&self.conn_shortfall, up);
            self.conn_limit.add_permits(up - cancelled);
        } else if was > now {
            let down = was - now;
            let missing = down - self.conn_limit.forget_permits(down);
            if missing > 0 {
                self.conn_shortfall.fetch_add(missing, Ordering::Relaxed);
                let (sem, shortfall) = (
                    Arc::clone(&self.conn_limit),
                    Arc::clone(&self.conn_shortfall),
                );
                let token = self.shutdown.clone();
                self.tracker.spawn(async move {
                    while shortfall.load(Ordering::Relaxed) > 0 {
                        let permit = tokio::select! {
                            _ = token.cancelled() => return,
                            p = Arc::clone(&sem).acquire_owned() => p,
                        };
                        let Ok(permit) = permit else { return };
                        if take_up_to(&shortfall, 1) == 1 {
                            permit.forget();
                        }
                    }
                });
            }
        }
        self
    }

    /// Keeps this context replaceable by reloads through `live`.
    pub(crate) fn with_live(mut self, live: Arc<Live>) -> Self {
        self.live = Some(live);
        self
    }

    /// After this context's generation ended: the listener's current context, unless the
    /// listener itself is closing (shutdown, or removed by a reload).
    pub(crate) fn successor(&self) -> Option<(Arc<ListenerCtx>, axum::Router)> {
        if self.shutdown.is_cancelled() {
            return None;
        }
        self.live.as_ref()?.current()
    }

    /// Records this listener's writes and publisher authentications in the audit log.
    pub(crate) fn with_audit(mut self, audit: crate::audit::Audit) -> Self {
        self.audit = audit;
        self
    }

    /// Shares the server's health and close schedule with this listener.
    pub(crate) fn with_lifecycle(
        mut self,
        health: Arc<Health>,
        closing: Arc<CloseSchedule>,
    ) -> Self {
        self.health = health;
        self.closing = closing;
        self
    }

    /// The node this listener is part of (default: one starting now with no listeners known).
    pub(crate) fn with_node(mut self, node: Arc<crate::node::Node>) -> Self {
        self.node = node;
        self
    }

    /// Serves this listener over TLS (`None`: plain TCP, the default).
    pub(crate) fn with_tls(mut self, tls: Option<Arc<TlsState>>) -> Self {
        self.tls = tls;
        self
    }
}

/// One TCP connection: its slot under `max_connections`, its peer and its command-rate bucket.
/// Shared by the HTTP connection task and, after an upgrade, the WebSocket session; the slot is
/// freed when both are gone.
pub(crate) struct ConnSlot {
    pub peer: SocketAddr,
    /// On a mutual-TLS listener, the names the client's verified certificate vouches for: its
    /// subject common name, then its DNS subject alternative names, without duplicates (see
    /// `tls::cert_names`), for mapping the connection to a publisher. Empty otherwise.
    pub peer_cert_names: Vec<String>,
    pub bucket: Mutex<Option<TokenBucket>>,
    /// Replies sent over HTTP on this connection in the current one-second window (start,
    /// count): the class's `replies_per_second` holds per connection, as for a WebSocket one.
    replies: Mutex<(tokio::time::Instant, u32)>,
    /// The address's slot, and the budgets of failed authentications (connection, address).
    pub ip: IpGuard,
    _permit: OwnedSemaphorePermit,
    _open: Open,
    _gauge: Gauge,
}

/// What an admitted connection holds: its places under the per-address limits, its listener's
/// `max_connections` and the server's descriptor budget.
pub(crate) struct Admitted {
    pub ip: IpGuard,
    pub permit: OwnedSemaphorePermit,
    pub open: Open,
    pub gauge: Gauge,
}

impl ConnSlot {
    /// The slot of an admitted connection from `peer`, with its listener's command-rate bucket.
    pub(crate) fn new(
        cfg: &ListenerConfig,
        peer: SocketAddr,
        peer_cert_names: Vec<String>,
        admitted: Admitted,
    ) -> Self {
        let Admitted {
            ip,
            permit,
            open,
            gauge,
        } = admitted;
        Self {
            peer,
            peer_cert_names,
            bucket: Mutex::new(cfg.rate_limit_per_second.map(TokenBucket::new)),
            replies: Mutex::new((tokio::time::Instant::now(), 0)),
            ip,
            _permit: permit,
            _open: open,
            _gauge: gauge,
        }
    }

    /// Counts one HTTP reply in this connection's fixed one-second window; `true` when the
    /// window now holds more than `max` (the reply is refused).
    pub(crate) fn reply_over(&self, max: u32) -> bool {
        let mut w = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        if now.duration_since(w.0) >= std::time::Duration::from_secs(1) {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
        w.1 > max
    }

    /// Takes a token from this connection's rate limit; `true` when the command may run.
    pub(crate) fn allow_command(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.as_mut().is_none_or(TokenBucket::try_take)
    }
}

/// Takes up to `n` from `counter`; returns how much it took.
fn take_up_to(counter: &AtomicUsize, n: usize) -> usize {
    let mut cur = counter.load(Ordering::Relaxed);
    loop {
        let take = cur.min(n);
        match counter.compare_exchange(cur, cur - take, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return take,
            Err(actual) => cur = actual,
        }
    }
}

/// A listener's current context and router, replaced by a reload (the previous generation's
/// token is cancelled once its successor is in place, so whoever wakes finds it here).
#[derive(Default)]
pub(crate) struct Live {
    current: Mutex<Option<(Arc<ListenerCtx>, axum::Router)>>,
}

impl Live {
    pub(crate) fn current(&self) -> Option<(Arc<ListenerCtx>, axum::Router)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `ctx` and `router` in place and ends the generation they replace.
    pub(crate) fn replace(&self, ctx: Arc<ListenerCtx>, router: axum::Router) {
        let old = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace((ctx, router));
        if let Some((old, _)) = old {
            old.generation.cancel();
        }
    }

    /// Forgets the current context (the listener closed), breaking the context's reference to
    /// itself through this slot.
    pub(crate) fn clear(&self) {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}
