//! What every task of a listener shares, and what one accepted connection holds: the state the
//! accept loop, the HTTP API, the handshake and the WebSocket session all read. Kept out of the
//! accept-loop file so that every layer can depend on it without depending on the others.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tslm_hub::{Broker, Hub};

use crate::admission::{Admission, Open};
use crate::config::ListenerConfig;
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
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    pub stats: Arc<Stats>,
    /// `None`: plain TCP.
    pub(crate) tls: Option<Arc<TlsState>>,
    pub(crate) conn_limit: Arc<Semaphore>,
    pub(crate) ip_limits: Arc<IpLimits>,
    /// The server-wide descriptor budgets (see [`crate::admission`]).
    pub(crate) admission: Arc<Admission>,
    /// The process and its listeners, for the operator's routes ([`crate::admin`]).
    pub(crate) node: Arc<crate::node::Node>,
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
        Self {
            ip_limits,
            cfg,
            channels: policy.channels,
            publishers: policy.publishers,
            verifier: policy.verifier,
            replay: policy.replay,
            issuers: policy.issuers,
            hub,
            broker,
            shutdown,
            tracker,
            stats,
            tls: None,
            conn_limit,
            admission,
            node: Arc::new(crate::node::Node::starting(Vec::new())),
        }
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
            ip,
            _permit: permit,
            _open: open,
            _gauge: gauge,
        }
    }

    /// Takes a token from this connection's rate limit; `true` when the command may run.
    pub(crate) fn allow_command(&self) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        b.as_mut().is_none_or(TokenBucket::try_take)
    }
}
