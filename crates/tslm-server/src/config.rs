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
}

/// A listener's permission set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions {
    pub subscribe: bool,
    pub create: bool,
    pub publish: bool,
}

impl Permissions {
    pub fn allows(&self, p: Permission) -> bool {
        match p {
            Permission::Subscribe => self.subscribe,
            Permission::CreateChannel => self.create,
            Permission::NotifyChannel => self.publish,
        }
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.subscribe, "Subscribe"),
            (self.create, "CreateChannel"),
            (self.publish, "NotifyChannel"),
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    listener: BTreeMap<String, RawListener>,
    #[serde(default)]
    publisher: BTreeMap<String, crate::auth_config::RawPublisher>,
    #[serde(default)]
    issuer: BTreeMap<String, crate::auth_config::RawIssuer>,
    #[serde(default)]
    channel: BTreeMap<String, RawChannelClass>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    shutdown_grace_seconds: Option<u64>,
    backlog_memory_bytes: Option<u64>,
    max_pending_connections: Option<u64>,
    max_channels: Option<u64>,
    max_msg_ids: Option<u64>,
    max_reply_routes: Option<u64>,
    max_subscriptions: Option<u64>,
    max_remembered_signatures: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    ip: Option<IpAddr>,
    port: Option<u16>,
    bind: Option<Vec<String>>,
    default_endpoint_permissions: Option<Vec<Permission>>,
    auth_tokens: Option<Vec<String>>,
    max_message_size: Option<u64>,
    max_frame_size: Option<u64>,
    max_publish_bytes: Option<u64>,
    max_connections: Option<u64>,
    rate_limit_per_second: Option<u64>,
    channel_buffer_size: Option<u64>,
    outbound_queue_bytes: Option<u64>,
    handshake_timeout_seconds: Option<u64>,
    ping_interval_seconds: Option<u64>,
    pong_timeout_seconds: Option<u64>,
    read_buffer_bytes: Option<u64>,
    write_buffer_bytes: Option<u64>,
    echo: Option<bool>,
    max_connections_per_ip: Option<u64>,
    handshakes_per_ip_per_second: Option<u64>,
    max_subscriptions_per_connection: Option<u64>,
    max_rejected_commands_per_second: Option<u64>,
    max_control_frames_per_second: Option<u64>,
    failed_auths_per_ip_per_minute: Option<u64>,
    publisher_auth: Option<bool>,
    subscriber_auth: Option<bool>,
    auth_timeout_seconds: Option<u64>,
    allowed_origins: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
}

/// Defaults, documented in docs/configuration.md.
pub mod defaults {
    pub const SHUTDOWN_GRACE_SECONDS: u64 = 10;
    /// Signed HTTP requests remembered at once (each for up to 60 s), the whole process.
    pub const MAX_REMEMBERED_SIGNATURES: u64 = 100_000;
    pub const MAX_MESSAGE_SIZE: u64 = 64 * 1024;
    pub const MAX_FRAME_SIZE: u64 = 16 * 1024 * 1024;
    pub const MAX_PUBLISH_BYTES: u64 = 1024 * 1024;
    pub const MAX_CONNECTIONS: u64 = 100_000;
    pub const CHANNEL_BUFFER_SIZE: u64 = 4096;
    pub const OUTBOUND_QUEUE_BYTES: u64 = 1024 * 1024;
    pub const HANDSHAKE_TIMEOUT_SECONDS: u64 = 10;
    pub const PING_INTERVAL_SECONDS: u64 = 25;
    pub const PONG_TIMEOUT_SECONDS: u64 = 20;
    pub const READ_BUFFER_BYTES: u64 = 2048;
    pub const WRITE_BUFFER_BYTES: u64 = 16 * 1024;
    /// Commands per second per connection on listeners that only allow subscribing; listeners
    /// that can create or publish (the intranet side) are unlimited unless configured.
    pub const SUBSCRIBER_RATE_LIMIT_PER_SECOND: u64 = 100;
    pub const MAX_CONNECTIONS_PER_IP: u64 = 1000;
    pub const HANDSHAKES_PER_IP_PER_SECOND: u64 = 200;
    pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: u64 = 1000;
    pub const MAX_REJECTED_COMMANDS_PER_SECOND: u64 = 10;
    pub const MAX_CONTROL_FRAMES_PER_SECOND: u64 = 10;
    pub const FAILED_AUTHS_PER_IP_PER_MINUTE: u64 = 30;
    pub const AUTH_TIMEOUT_SECONDS: u64 = 10;
    /// `[server] max_pending_connections`: refusals in progress, all listeners together.
    pub const MAX_PENDING_CONNECTIONS: u64 = 1024;
}

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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            origin: origin.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        raw.validate().map_err(|message| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
        })
    }
}

/// Turns a TOML/serde error into "listener `public`, key `port` (line 7): <problem>".
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_owned();
    let Some(span) = e.span() else {
        return message;
    };
    let start = span.start.min(text.len());
    let line_no = text[..start].matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let line = lines.get(line_no - 1).copied().unwrap_or("").trim();
    let mut table = None;
    for l in lines.iter().take(line_no).rev() {
        let l = l.trim();
        if l.starts_with('[') {
            table = Some(l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
            break;
        }
    }
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned());
    let mut place = Vec::new();
    let mut hint = "";
    match table.as_deref() {
        Some(t) if t.starts_with("listener.") => {
            let name = &t["listener.".len()..];
            place.push(format!("listener `{}`", name.trim_matches('"')));
        }
        Some(t) if t.starts_with("channel.") => {
            let pattern = &t["channel.".len()..];
            let quoted = |q: char| {
                pattern.len() >= 2
                    && pattern.starts_with(q)
                    && pattern.ends_with(q)
                    && !pattern[1..pattern.len() - 1].contains(q)
            };
            if quoted('"') || quoted('\'') {
                place.push(format!(
                    "channel class \"{}\"",
                    &pattern[1..pattern.len() - 1]
                ));
            } else if pattern.contains('.') {
                // `[channel.orders.eu]` is the class "orders" with a table `eu` in it.
                place.push(format!("table [{t}]"));
                hint = " (quote a pattern that has dots or `*`: [channel.\"orders.eu\"])";
            } else {
                place.push(format!("channel class \"{pattern}\""));
            }
        }
        Some(t) => place.push(format!("table [{t}]")),
        None => {}
    }
    if let Some(k) = key {
        place.push(format!("key `{k}`"));
    }
    if place.is_empty() {
        format!("line {line_no}: {message}{hint}")
    } else {
        format!("{} (line {line_no}): {message}{hint}", place.join(", "))
    }
}

fn secs(
    listener: &str,
    key: &str,
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, String> {
    Ok(Duration::from_secs(ranged(
        listener, key, v, default, min, max,
    )?))
}

fn ranged(
    listener: &str,
    key: &str,
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    let v = v.unwrap_or(default);
    if v < min || v > max {
        return Err(format!(
            "listener `{listener}`, key `{key}`: {v} is out of range {min}..={max}"
        ));
    }
    Ok(v)
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl RawConfig {
    fn validate(self) -> Result<Config, String> {
        if self.listener.is_empty() {
            return Err("no listener configured: add at least one [listener.NAME] table".into());
        }
        let grace = self
            .server
            .shutdown_grace_seconds
            .unwrap_or(defaults::SHUTDOWN_GRACE_SECONDS);
        if grace > 3600 {
            return Err(format!(
                "table [server], key `shutdown_grace_seconds`: {grace} is out of range 0..=3600"
            ));
        }
        let backlog_memory = self
            .server
            .backlog_memory_bytes
            .unwrap_or(tslm_hub::settings::defaults::BACKLOG_MEMORY_BYTES as u64);
        if backlog_memory == 0 {
            return Err(
                "table [server], key `backlog_memory_bytes`: 0 is not allowed: the least is 1"
                    .into(),
            );
        }
        let max_pending = self
            .server
            .max_pending_connections
            .unwrap_or(defaults::MAX_PENDING_CONNECTIONS);
        if !(1..=1_000_000).contains(&max_pending) {
            return Err(format!(
                "table [server], key `max_pending_connections`: {max_pending} is out of range 1..=1000000"
            ));
        }
        let server_limit = |key: &str, value: Option<u64>, default: usize| {
            let v = value.unwrap_or(default as u64);
            if (1..=1_000_000_000).contains(&v) {
                Ok(usize_of(v))
            } else {
                Err(format!(
                    "table [server], key `{key}`: {v} is out of range 1..=1000000000"
                ))
            }
        };
        let max_channels = server_limit(
            "max_channels",
            self.server.max_channels,
            tslm_hub::settings::defaults::MAX_CHANNELS,
        )?;
        let max_msg_ids = server_limit(
            "max_msg_ids",
            self.server.max_msg_ids,
            tslm_hub::settings::defaults::MAX_MSG_IDS,
        )?;
        let max_reply_routes = server_limit(
            "max_reply_routes",
            self.server.max_reply_routes,
            tslm_hub::settings::defaults::MAX_REPLY_ROUTES,
        )?;
        let max_subscriptions = server_limit(
            "max_subscriptions",
            self.server.max_subscriptions,
            tslm_hub::settings::defaults::MAX_SUBSCRIPTIONS,
        )?;
        let signatures = self
            .server
            .max_remembered_signatures
            .unwrap_or(defaults::MAX_REMEMBERED_SIGNATURES);
        if !(1..=10_000_000).contains(&signatures) {
            return Err(format!(
                "table [server], key `max_remembered_signatures`: {signatures} is out of range 1..=10000000"
            ));
        }
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        for (name, raw) in self.listener {
            let l = raw.validate(&name)?;
            // Port 0 asks the OS for a free port, so it never collides.
            for addr in l.bind.iter().filter(|a| a.port() != 0) {
                for other in &listeners {
                    if let Some(o) = other.bind.iter().find(|o| overlaps(addr, o)) {
                        return Err(format!(
                            "listener `{name}`, key `bind`: address {addr} overlaps {o} of listener `{}`",
                            other.name
                        ));
                    }
                }
            }
            listeners.push(l);
        }
        let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        let channels = ChannelClasses::from_raw(self.channel, &names)?;
        let publishers = crate::auth_config::publishers(self.publisher)?;
        let issuers = crate::auth_config::issuers(self.issuer)?;
        if let Some(l) = listeners
            .iter()
            .find(|l| l.publisher_auth && publishers.is_empty())
        {
            return Err(format!(
                "listener `{}`, key `publisher_auth`: no [publisher.NAME] is configured, so nobody could use this listener",
                l.name
            ));
        }
        if let Some(l) = listeners
            .iter()
            .find(|l| l.subscriber_auth && issuers.is_empty())
        {
            return Err(format!(
                "listener `{}`, key `subscriber_auth`: no [issuer.NAME] is configured, so no subscriber could authenticate",
                l.name
            ));
        }
        if let Some(c) = channels
            .iter()
            .find(|c| c.authenticated_subscribers && issuers.is_empty())
        {
            return Err(format!(
                "channel class {:?}, key `subscribers`: \"authenticated\" needs at least one [issuer.NAME] whose tokens subscribers present",
                c.pattern
            ));
        }
        Ok(Config {
            listeners,
            shutdown_grace: Duration::from_secs(grace),
            backlog_memory_bytes: usize_of(backlog_memory),
            max_pending_connections: usize_of(max_pending),
            max_channels,
            max_msg_ids,
            max_reply_routes,
            max_subscriptions,
            max_remembered_signatures: usize_of(signatures),
            channels: Arc::new(channels),
            publishers: Arc::new(publishers),
            issuers: Arc::new(issuers),
        })
    }
}

/// Whether binding both addresses would fail: same port and the same address, or a wildcard
/// address (`0.0.0.0`, or `[::]`, which on Linux also takes IPv4) covering the other.
fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
    if a.port() != b.port() {
        return false;
    }
    // An IPv4-mapped IPv6 address binds the IPv4 address.
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (x, y) = (canonical(a.ip()), canonical(b.ip()));
    x == y
        || (x.is_unspecified() && (x.is_ipv6() || y.is_ipv4()))
        || (y.is_unspecified() && (y.is_ipv6() || x.is_ipv4()))
}

impl RawListener {
    fn validate(self, name: &str) -> Result<ListenerConfig, String> {
        let n = name;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "listener `{name}`: a listener name may only contain A-Z a-z 0-9 _ -"
            ));
        }
        let mut bind = Vec::new();
        match (self.ip, self.port) {
            (Some(ip), Some(port)) => bind.push(SocketAddr::new(ip, port)),
            (Some(_), None) => {
                return Err(format!(
                    "listener `{n}`, key `port`: `ip` is set but `port` is missing"
                ));
            }
            (None, Some(_)) => {
                return Err(format!(
                    "listener `{n}`, key `ip`: `port` is set but `ip` is missing"
                ));
            }
            (None, None) => {}
        }
        for b in self.bind.unwrap_or_default() {
            let addr: SocketAddr = b.parse().map_err(|_| {
                format!("listener `{n}`, key `bind`: {b:?} is not an address like \"127.0.0.1:8080\" or \"[::1]:8080\"")
            })?;
            if let Some(o) = bind.iter().find(|o| addr.port() != 0 && overlaps(&addr, o)) {
                return Err(format!("listener `{n}`, key `bind`: {addr} overlaps {o}"));
            }
            bind.push(addr);
        }
        if bind.is_empty() {
            return Err(format!(
                "listener `{n}`: no address: set `ip` and `port`, or `bind = [\"ip:port\", ...]`"
            ));
        }
        let mut permissions = Permissions::default();
        for p in self.default_endpoint_permissions.unwrap_or_default() {
            match p {
                Permission::Subscribe => permissions.subscribe = true,
                Permission::CreateChannel => permissions.create = true,
                Permission::NotifyChannel => permissions.publish = true,
            }
        }
        let auth_tokens = self.auth_tokens.unwrap_or_default();
        if auth_tokens.iter().any(|t| {
            t.is_empty()
                || t.chars()
                    .any(|c| c.is_whitespace() || c == ',' || c.is_control())
        }) {
            return Err(format!(
                "listener `{n}`, key `auth_tokens`: tokens must be non-empty and contain no spaces, commas or control characters"
            ));
        }
        let max_message = ranged(
            n,
            "max_message_size",
            self.max_message_size,
            defaults::MAX_MESSAGE_SIZE,
            64,
            64 << 20,
        )?;
        let max_frame = ranged(
            n,
            "max_frame_size",
            self.max_frame_size,
            defaults::MAX_FRAME_SIZE,
            64,
            64 << 20,
        )?;
        let max_publish = ranged(
            n,
            "max_publish_bytes",
            self.max_publish_bytes,
            defaults::MAX_PUBLISH_BYTES,
            1,
            64 << 20,
        )?;
        let max_connections = ranged(
            n,
            "max_connections",
            self.max_connections,
            defaults::MAX_CONNECTIONS,
            1,
            10_000_000,
        )?;
        let subscribe_only = !permissions.create && !permissions.publish;
        let rate = match self.rate_limit_per_second {
            None if subscribe_only => {
                NonZeroU32::new(defaults::SUBSCRIBER_RATE_LIMIT_PER_SECOND as u32)
            }
            None => None,
            Some(r) => {
                let r = ranged(n, "rate_limit_per_second", Some(r), 0, 1, 1_000_000)?;
                NonZeroU32::new(u32::try_from(r).unwrap_or(u32::MAX))
            }
        };
        if self.channel_buffer_size == Some(0) {
            return Err(format!(
                "listener `{n}`, key `channel_buffer_size`: 0 (unbounded) is not supported: every subscriber queue is bounded; give a number of messages"
            ));
        }
        let max_messages = ranged(
            n,
            "channel_buffer_size",
            self.channel_buffer_size,
            defaults::CHANNEL_BUFFER_SIZE,
            1,
            10_000_000,
        )?;
        let queue_bytes = ranged(
            n,
            "outbound_queue_bytes",
            self.outbound_queue_bytes,
            defaults::OUTBOUND_QUEUE_BYTES,
            1024,
            1 << 30,
        )?;
        let handshake_timeout = secs(
            n,
            "handshake_timeout_seconds",
            self.handshake_timeout_seconds,
            defaults::HANDSHAKE_TIMEOUT_SECONDS,
            1,
            3600,
        )?;
        let ping_interval = secs(
            n,
            "ping_interval_seconds",
            self.ping_interval_seconds,
            defaults::PING_INTERVAL_SECONDS,
            1,
            3600,
        )?;
        let pong_timeout = secs(
            n,
            "pong_timeout_seconds",
            self.pong_timeout_seconds,
            defaults::PONG_TIMEOUT_SECONDS,
            1,
            3600,
        )?;
        let read_buffer = ranged(
            n,
            "read_buffer_bytes",
            self.read_buffer_bytes,
            defaults::READ_BUFFER_BYTES,
            512,
            16 << 20,
        )?;
        let write_buffer = ranged(
            n,
            "write_buffer_bytes",
            self.write_buffer_bytes,
            defaults::WRITE_BUFFER_BYTES,
            0,
            16 << 20,
        )?;
        let u32_of = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let abuse = AbuseLimits {
            max_connections_per_ip: u32_of(ranged(
                n,
                "max_connections_per_ip",
                self.max_connections_per_ip,
                defaults::MAX_CONNECTIONS_PER_IP,
                1,
                10_000_000,
            )?),
            handshakes_per_ip_per_second: NonZeroU32::new(u32_of(ranged(
                n,
                "handshakes_per_ip_per_second",
                self.handshakes_per_ip_per_second,
                defaults::HANDSHAKES_PER_IP_PER_SECOND,
                1,
                1_000_000,
            )?))
            .unwrap_or(NonZeroU32::MIN),
            max_subscriptions_per_connection: usize_of(ranged(
                n,
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection,
                defaults::MAX_SUBSCRIPTIONS_PER_CONNECTION,
                1,
                1_000_000,
            )?),
            max_rejected_commands_per_second: u32_of(ranged(
                n,
                "max_rejected_commands_per_second",
                self.max_rejected_commands_per_second,
                defaults::MAX_REJECTED_COMMANDS_PER_SECOND,
                0,
                1_000_000,
            )?),
            max_control_frames_per_second: u32_of(ranged(
                n,
                "max_control_frames_per_second",
                self.max_control_frames_per_second,
                defaults::MAX_CONTROL_FRAMES_PER_SECOND,
                1,
                1_000_000,
            )?),
            failed_auths_per_ip_per_minute: NonZeroU32::new(u32_of(ranged(
                n,
                "failed_auths_per_ip_per_minute",
                self.failed_auths_per_ip_per_minute,
                defaults::FAILED_AUTHS_PER_IP_PER_MINUTE,
                1,
                1_000_000,
            )?))
            .unwrap_or(NonZeroU32::MIN),
        };
        Ok(ListenerConfig {
            name: name.to_owned(),
            bind,
            permissions,
            auth_tokens,
            max_message_bytes: usize_of(max_message),
            // A frame larger than a message can never be accepted: refusing it at its header
            // (tungstenite checks a frame's announced length before reading its payload) means
            // the gateway never buffers more than `max_message_size` of it.
            max_frame_bytes: usize_of(max_frame.min(max_message)),
            max_publish_bytes: usize_of(max_publish),
            max_connections: usize_of(max_connections),
            rate_limit_per_second: rate,
            outbox: OutboxLimits {
                max_bytes: usize_of(queue_bytes),
                max_messages: usize_of(max_messages),
            },
            handshake_timeout,
            ping_interval,
            pong_timeout,
            read_buffer_bytes: usize_of(read_buffer),
            write_buffer_bytes: usize_of(write_buffer),
            echo: self.echo.unwrap_or(false),
            abuse,
            publisher_auth: self.publisher_auth.unwrap_or(false),
            subscriber_auth: self.subscriber_auth.unwrap_or(false),
            auth_timeout: secs(
                n,
                "auth_timeout_seconds",
                self.auth_timeout_seconds,
                defaults::AUTH_TIMEOUT_SECONDS,
                1,
                3600,
            )?,
            allowed_origins: self
                .allowed_origins
                .unwrap_or_default()
                .iter()
                .map(|o| {
                    normalize_origin(o).ok_or_else(|| {
                        format!(
                            "listener `{n}`, key `allowed_origins`: {o:?} is not an origin like \"https://app.example.com\" or \"http://localhost:3000\" (scheme, host and optional port; no path)"
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            allowed_hosts: self
                .allowed_hosts
                .unwrap_or_default()
                .iter()
                .map(|h| {
                    normalize_host(h).ok_or_else(|| {
                        format!(
                            "listener `{n}`, key `allowed_hosts`: {h:?} is not a host like \"gateway.intranet\", \"10.0.0.5:8081\" or \"[::1]\" (a name or address and optional port; no scheme or path)"
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            tls: match (self.tls_cert, self.tls_key, self.tls_client_ca) {
                (None, None, None) => None,
                (Some(cert), Some(key), client_ca) => Some(TlsConfig {
                    cert,
                    key,
                    client_ca,
                }),
                (None, _, _) => {
                    return Err(format!(
                        "listener `{n}`, key `tls_cert`: TLS needs both `tls_cert` and `tls_key`"
                    ));
                }
                (Some(_), None, _) => {
                    return Err(format!(
                        "listener `{n}`, key `tls_key`: TLS needs both `tls_cert` and `tls_key`"
                    ));
                }
            },
        })
    }
}

/// The canonical form of a browser origin (`scheme://host[:port]`, lowercase, default port
/// omitted, as browsers send it), or `None` when `o` is not one.
pub fn normalize_origin(o: &str) -> Option<String> {
    let (scheme, rest) = o.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@'])
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal without a port ends with `]`.
        Some((h, p)) if !p.ends_with(']') => (h, Some(p)),
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    if let Some(p) = port
        && (p.is_empty() || p.parse::<u16>().is_err())
    {
        return None;
    }
    let host = host.to_ascii_lowercase();
    Some(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// `host[:port]` into its host and port (an IPv6 literal keeps its brackets).
pub(crate) fn split_port(s: &str) -> (&str, Option<&str>) {
    match s.rsplit_once(':') {
        Some((h, p))
            if !p.ends_with(']') && !h.is_empty() && (!h.contains(':') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (s, None),
    }
}

/// The canonical form of an `allowed_hosts` entry (a host name, an IPv4 address or a bracketed
/// IPv6 address, with an optional port; lowercase), or `None` when `h` is not one.
pub(crate) fn normalize_host(h: &str) -> Option<String> {
    let h = h.trim().to_ascii_lowercase();
    let h = h.strip_suffix('.').unwrap_or(&h).to_owned();
    let (host, port) = split_port(&h);
    if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return None;
    }
    let valid = if let Some(v6) = host.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    valid.then_some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml_str(text, "t.toml")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert_eq!(c.listeners.len(), 2);
        let public = c.listeners.iter().find(|l| l.name == "public").unwrap();
        assert_eq!(public.bind, ["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(
            public.permissions,
            Permissions {
                subscribe: true,
                create: false,
                publish: false
            }
        );
        let private = c.listeners.iter().find(|l| l.name == "private").unwrap();
        assert_eq!(private.bind, ["127.0.0.1:8081".parse().unwrap()]);
        assert_eq!(
            private.permissions,
            Permissions {
                subscribe: false,
                create: true,
                publish: true
            }
        );
    }

    #[test]
    fn original_config_keeps_working() {
        let c = Config::from_toml_str(
            r#"
# the original sample, unchanged
[listener.public]
ip = "0.0.0.0"
port = 8080
default_endpoint_permissions = ['Subscribe']
max_message_size = 65536
max_frame_size = 16777216
max_connections = 1000
rate_limit_per_second = 100
channel_buffer_size = 100
auth_tokens = ['public-token-1']

[listener.private]
ip = '127.0.0.1'
port = 8081
default_endpoint_permissions = ['CreateChannel', 'NotifyChannel']
"#,
            "t",
        )
        .unwrap();
        let p = &c.listeners[1];
        assert_eq!(p.name, "public");
        assert_eq!(p.max_connections, 1000);
        assert_eq!(p.rate_limit_per_second.map(|r| r.get()), Some(100));
        assert_eq!(p.outbox.max_messages, 100);
        assert_eq!(p.auth_tokens, ["public-token-1"]);
    }

    #[test]
    fn bind_lists_and_ipv6() {
        let c = Config::from_toml_str(
            "[listener.a]\nip='127.0.0.1'\nport=1\nbind=['[::1]:2','127.0.0.2:3']\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.listeners[0].bind.len(), 3);
        assert!(c.listeners[0].bind[1].is_ipv6());
    }

    #[test]
    fn errors_name_the_listener_and_key() {
        let e = err("[listener.public]\nip='127.0.0.1'\nport=1\nmax_conections = 1\n");
        assert!(
            e.contains("listener `public`") && e.contains("max_conections"),
            "{e}"
        );
        let e = err("[listener.public]\nip='127.0.0.1'\nport=1\nmax_connections = 'x'\n");
        assert!(
            e.contains("listener `public`") && e.contains("key `max_connections`"),
            "{e}"
        );
        let e = err(
            "[listener.public]\nip='127.0.0.1'\nport=1\ndefault_endpoint_permissions=['Publish']\n",
        );
        assert!(
            e.contains("default_endpoint_permissions") && e.contains("Publish"),
            "{e}"
        );
        let e = err("[listener.p]\nip='127.0.0.1'\nport=1\nmax_connections = 0\n");
        assert!(e.contains("listener `p`, key `max_connections`"), "{e}");
        let e = err("[listener.p]\nip='127.0.0.1'\nport=1\nchannel_buffer_size = 0\n");
        assert!(
            e.contains("key `channel_buffer_size`") && e.contains("unbounded"),
            "{e}"
        );
        let e = err("[listener.p]\nip='127.0.0.1'\nport=99999\n");
        assert!(
            e.contains("listener `p`") && e.contains("key `port`"),
            "{e}"
        );
        let e = err("[listener.p]\nip='127.0.0.1'\n");
        assert!(e.contains("listener `p`, key `port`"), "{e}");
        let e = err("[listener.p]\nbind=['localhost:80']\n");
        assert!(e.contains("listener `p`, key `bind`"), "{e}");
        let e = err("[listener.p]\nip='127.0.0.1'\nport=1\n[listener.q]\nbind=['127.0.0.1:1']\n");
        assert!(e.contains("overlaps 127.0.0.1:1 of listener `p`"), "{e}");
        let e = err("[listener.p]\nip='0.0.0.0'\nport=1\n[listener.q]\nbind=['127.0.0.1:1']\n");
        assert!(e.contains("overlaps 0.0.0.0:1"), "{e}");
        let e = err("[listener.p]\nbind=['[::]:1', '127.0.0.1:1']\n");
        assert!(e.contains("listener `p`, key `bind`"), "{e}");
        assert!(
            Config::from_toml_str(
                "[listener.p]\nbind=['127.0.0.1:1','127.0.0.2:1','[::1]:1']\n",
                "t"
            )
            .is_ok()
        );
        assert!(
            Config::from_toml_str("[listener.p]\nbind=['127.0.0.1:0','127.0.0.1:0']\n", "t")
                .is_ok()
        );
        let e = err("[listner.p]\nip='127.0.0.1'\nport=1\n");
        assert!(e.contains("listner"), "{e}");
        assert!(err("").contains("no listener"));
        let e = err("[listener.p]\nip='127.0.0.1'\nport=1\nauth_tokens=['']\n");
        assert!(e.contains("key `auth_tokens`"), "{e}");
    }

    #[test]
    fn max_channels_and_msg_ids() {
        let l = "[listener.p]\nip='127.0.0.1'\nport=1\n";
        let c = Config::from_toml_str(l, "t").unwrap();
        assert_eq!((c.max_channels, c.max_msg_ids), (100_000, 250_000));
        assert_eq!(
            (c.max_reply_routes, c.max_subscriptions),
            (1_000_000, 2_000_000)
        );
        let c = Config::from_toml_str(
            &format!("[server]\nmax_channels = 5\nmax_msg_ids = 7\n{l}"),
            "t",
        )
        .unwrap();
        assert_eq!((c.max_channels, c.max_msg_ids), (5, 7));
        for key in [
            "max_channels",
            "max_msg_ids",
            "max_reply_routes",
            "max_subscriptions",
        ] {
            let e = err(&format!("[server]\n{key} = 0\n{l}"));
            assert!(
                e.contains(&format!("table [server], key `{key}`: 0 is out of range")),
                "{e}"
            );
        }
    }

    #[test]
    fn backlog_memory_bytes() {
        let l = "[listener.p]\nbind=['127.0.0.1:0']\n";
        let c = Config::from_toml_str(l, "t").unwrap();
        assert_eq!(
            c.backlog_memory_bytes,
            tslm_hub::settings::defaults::BACKLOG_MEMORY_BYTES
        );
        assert_eq!(c.backlog_memory_bytes, 256 * 1024 * 1024);
        let c = Config::from_toml_str(&format!("[server]\nbacklog_memory_bytes = 1\n{l}"), "t")
            .unwrap();
        assert_eq!(c.backlog_memory_bytes, 1);
        let c = Config::from_toml_str(
            &format!("[server]\nbacklog_memory_bytes = 4_294_967_296\n{l}"),
            "t",
        )
        .unwrap();
        assert_eq!(c.backlog_memory_bytes, 1 << 32);
        let e = err(&format!("[server]\nbacklog_memory_bytes = 0\n{l}"));
        assert!(
            e.contains("table [server], key `backlog_memory_bytes`: 0 is not allowed"),
            "{e}"
        );
        let e = err(&format!("[server]\nbacklog_memory_bytes = '1GiB'\n{l}"));
        assert!(
            e.contains("table [server], key `backlog_memory_bytes` (line 2)"),
            "{e}"
        );
    }

    #[test]
    fn no_channel_tables_means_the_built_in_class() {
        for c in [
            Config::embedded_default(),
            Config::from_toml_str("[listener.p]\nbind=['127.0.0.1:0']\n", "t").unwrap(),
        ] {
            assert_eq!(c.channels.iter().count(), 1);
            assert_eq!(
                c.channels.class_for_str("anything"),
                &crate::classes::ChannelClass::default()
            );
        }
    }
}
