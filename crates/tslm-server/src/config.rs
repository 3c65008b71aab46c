//! Configuration: a raw form deserialised from TOML (unknown keys refused), then validated into a
//! typed [`Config`] before anything binds. See docs/configuration.md.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tslm_hub::OutboxLimits;

use crate::classes::{ChannelClasses, RawChannelClass};

/// The configuration used when no file is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// A configuration problem, naming the file, the listener and the key where it can.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Which commands a listener's connections may use (the original permission names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, PartialOrd, Ord)]
pub enum Permission {
    Subscribe,
    CreateChannel,
    NotifyChannel,
    /// The operator's routes: `GET /metrics` and `GET /admin` (docs/operations.md). Never on a
    /// public listener: give it to a listener with `auth_tokens` or mutual TLS.
    Admin,
}

/// A listener's permission set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions {
    pub subscribe: bool,
    pub create: bool,
    pub publish: bool,
    /// `GET /metrics` and `GET /admin` (elsewhere they answer 404).
    pub admin: bool,
}

impl Permissions {
    pub fn allows(&self, p: Permission) -> bool {
        match p {
            Permission::Subscribe => self.subscribe,
            Permission::CreateChannel => self.create,
            Permission::NotifyChannel => self.publish,
            Permission::Admin => self.admin,
        }
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.subscribe, "Subscribe"),
            (self.create, "CreateChannel"),
            (self.publish, "NotifyChannel"),
            (self.admin, "Admin"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    /// How long shutdown waits for connections to close before exiting anyway.
    pub shutdown_grace: Duration,
    /// How long, after a shutdown signal, the gateway keeps serving with `/readyz` answering 503
    /// `draining` before it stops accepting, so load balancers stop sending it clients first.
    pub drain_delay: Duration,
    /// Bytes all channel backlogs may hold together.
    pub backlog_memory_bytes: usize,
    /// Connections being refused (429, 503) at once, all listeners together; over it, new
    /// connections are closed at once. Lowered at startup to fit the descriptor limit.
    pub max_pending_connections: usize,
    /// Channels the gateway holds at once (creates beyond are refused with `limit_exceeded`).
    pub max_channels: usize,
    /// `msg_id`s remembered by all channels together (publishes with a new one beyond are
    /// refused with `limit_exceeded`).
    pub max_msg_ids: usize,
    /// Reply routes kept by all channels together (beyond, channels give up their oldest).
    pub max_reply_routes: usize,
    /// Subscriptions of all connections together (subscribes beyond are refused).
    pub max_subscriptions: usize,
    /// Signed HTTP requests remembered at once against replays, whole process; each publisher
    /// with keys has an equal share.
    pub max_remembered_signatures: usize,
    /// The channel classes (`[channel.PATTERN]` tables), resolved.
    pub channels: Arc<ChannelClasses>,
    /// Whitelisted publishers (`[publisher.NAME]`).
    pub publishers: Arc<Vec<crate::auth_config::Publisher>>,
    /// Identity providers of subscribers' tokens (`[issuer.NAME]`).
    pub issuers: Arc<Vec<crate::auth_config::Issuer>>,
    /// The audit log (`[audit]`); `None`: no audit log.
    pub audit: Option<AuditConfig>,
    /// Cluster mode (`[cluster]`): the channel log in Redis; `None`: the in-memory single node.
    pub cluster: Option<tslm_cluster::ClusterConfig>,
}

/// Per-listener limits against abusive clients (docs/configuration.md, "Abuse limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbuseLimits {
    /// Open connections from one source address (IPv6: one /64).
    pub max_connections_per_ip: u32,
    /// New connections per second from one source address (bursts of the same size).
    pub handshakes_per_ip_per_second: NonZeroU32,
    /// Channels one connection may be subscribed to at once.
    pub max_subscriptions_per_connection: usize,
    /// Rate-limited commands tolerated per second before the connection is closed (1008).
    pub max_rejected_commands_per_second: u32,
    /// Ping and pong frames a client may send per second before it is closed (1008).
    pub max_control_frames_per_second: u32,
    /// Failed authentications per minute from one source address (burst of the same size);
    /// over it, the address's HTTP requests are answered 429 until the budget refills.
    pub failed_auths_per_ip_per_minute: NonZeroU32,
}

/// One validated listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: Vec<SocketAddr>,
    pub permissions: Permissions,
    /// When non-empty, every connection must present one of these tokens.
    pub auth_tokens: Vec<String>,
    pub max_message_bytes: usize,
    /// The largest frame read: `max_frame_size`, but never more than `max_message_bytes`.
    pub max_frame_bytes: usize,
    pub max_publish_bytes: usize,
    pub max_connections: usize,
    pub rate_limit_per_second: Option<NonZeroU32>,
    pub outbox: OutboxLimits,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    /// Write coalescing (`write_coalesce_ms`, 0 = off): after a WebSocket session writes
    /// deliveries, what arrives next waits for the listener's next tick (every this long while
    /// some session is held, `crate::pacer`), so that a busy session writes about once per
    /// interval with one wake-up; a delivery to a session quiet since its last tick goes out at
    /// once. The cost: up to this much added latency while busy.
    pub write_coalesce: Duration,
    /// Conformance testing only: echo every WebSocket message instead of running commands.
    pub echo: bool,
    pub abuse: AbuseLimits,
    /// Every connection and HTTP request must authenticate as a configured publisher.
    pub publisher_auth: bool,
    /// Every WebSocket connection must present a subscriber access token (within
    /// `auth_timeout`), and every channel needs one, whatever its class says.
    pub subscriber_auth: bool,
    /// How long a WebSocket connection may take to authenticate (`auth` op) where it must.
    pub auth_timeout: Duration,
    /// Browser origins whose requests (WebSocket handshakes and HTTP API calls) this listener
    /// serves (exact `scheme://host[:port]`); empty: any origin on a subscribe-only listener, none
    /// on a listener that may create or publish. Requests without `Origin` always pass.
    pub allowed_origins: Vec<String>,
    /// Host names (`host` or `host:port`, lowercase) requests must name in `Host`; empty: any.
    pub allowed_hosts: Vec<String>,
    /// TLS on this listener.
    pub tls: Option<TlsConfig>,
}

/// A listener's TLS settings (files are PEM; reloaded when they change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// HTTP/2 (offered in ALPN beside HTTP/1.1) and its limits; `None`: HTTP/1.1 only.
    pub http2: Option<Http2Config>,
}

/// A TLS listener's HTTP/2 settings (`http2`, `http2_max_concurrent_streams`). The other limits
/// of an HTTP/2 connection are fixed (`crate::listener`'s HTTP/2 builder, docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Config {
    /// Streams a client may have open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// a stream beyond it is refused (`REFUSED_STREAM`).
    pub max_concurrent_streams: u32,
}

mod audit;
mod cluster;
mod listener;
mod origin;
mod raw;

pub use audit::{AuditConfig, SyncPolicy};

pub mod defaults;

pub use origin::normalize_origin;
pub(crate) use origin::{normalize_host, split_port};

impl Config {
    /// The embedded default: `public` on 127.0.0.1:8080 (Subscribe) and `private` on
    /// 127.0.0.1:8081 (CreateChannel, NotifyChannel).
    pub fn embedded_default() -> Self {
        match Self::from_toml_str(EMBEDDED_DEFAULT, "embedded default config") {
            Ok(c) => c,
            // The embedded file is covered by a unit test; this cannot happen in a released binary.
            Err(e) => panic!("embedded default config is invalid: {e}"),
        }
    }

    /// Reads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            origin: origin.to_owned(),
            message: raw::describe_toml_error(text, &e),
        })?;
        raw.validate().map_err(|message| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        })
    }
}

#[cfg(test)]
mod tests;
