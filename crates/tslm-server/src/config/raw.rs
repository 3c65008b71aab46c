//! The raw configuration as deserialised from TOML (unknown keys refused), its server-wide
//! validation, and the helpers that name the key at fault in every error.

use super::listener::RawListener;
use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
    audit: Option<super::audit::RawAudit>,
    cluster: Option<super::cluster::RawCluster>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    shutdown_grace_seconds: Option<u64>,
    drain_delay_seconds: Option<u64>,
    backlog_memory_bytes: Option<u64>,
    max_pending_connections: Option<u64>,
    max_channels: Option<u64>,
    max_msg_ids: Option<u64>,
    max_reply_routes: Option<u64>,
    max_subscriptions: Option<u64>,
    max_remembered_signatures: Option<u64>,
}

/// Turns a TOML/serde error into "listener `public`, key `port` (line 7): <problem>".
pub(super) fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
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

pub(super) fn secs(
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

pub(super) fn ranged(
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

pub(super) fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl RawConfig {
    pub(super) fn validate(self) -> Result<Config, String> {
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
        let drain_delay = self
            .server
            .drain_delay_seconds
            .unwrap_or(defaults::DRAIN_DELAY_SECONDS);
        if drain_delay > 300 {
            return Err(format!(
                "table [server], key `drain_delay_seconds`: {drain_delay} is out of range 0..=300"
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
        let audit = self
            .audit
            .map(super::audit::RawAudit::validate)
            .transpose()?;
        let cluster = self
            .cluster
            .map(super::cluster::RawCluster::validate)
            .transpose()?;
        Ok(Config {
            audit,
            cluster,
            listeners,
            shutdown_grace: Duration::from_secs(grace),
            drain_delay: Duration::from_secs(drain_delay),
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
pub(super) fn overlaps(a: &SocketAddr, b: &SocketAddr) -> bool {
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
