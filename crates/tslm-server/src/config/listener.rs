//! A `[listener.NAME]` table as deserialised, and its validation into a [`ListenerConfig`].

use super::raw::{overlaps, ranged, secs, usize_of};
use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
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
    write_coalesce_ms: Option<u64>,
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
    http2: Option<bool>,
    http2_max_concurrent_streams: Option<u64>,
}

impl RawListener {
    pub(super) fn validate(self, name: &str) -> Result<ListenerConfig, String> {
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
                Permission::Admin => permissions.admin = true,
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
        let write_coalesce = Duration::from_millis(ranged(
            n,
            "write_coalesce_ms",
            self.write_coalesce_ms,
            0,
            0,
            100,
        )?);
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
            write_coalesce,
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
                (None, None, None) => {
                    plain_http(n, self.http2, self.http2_max_concurrent_streams)?;
                    None
                }
                (Some(cert), Some(key), client_ca) => Some(TlsConfig {
                    cert,
                    key,
                    client_ca,
                    http2: http2(n, self.http2, self.http2_max_concurrent_streams)?,
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

/// A TLS listener's HTTP/2: on unless `http2 = false`; its stream limit only where it is on.
fn http2(
    n: &str,
    on: Option<bool>,
    max_streams: Option<u64>,
) -> Result<Option<Http2Config>, String> {
    if on == Some(false) {
        if max_streams.is_some() {
            return Err(format!(
                "listener `{n}`, key `http2_max_concurrent_streams`: set, but `http2 = false`"
            ));
        }
        return Ok(None);
    }
    let max = ranged(
        n,
        "http2_max_concurrent_streams",
        max_streams,
        defaults::HTTP2_MAX_CONCURRENT_STREAMS,
        1,
        10_000,
    )?;
    Ok(Some(Http2Config {
        max_concurrent_streams: u32::try_from(max).unwrap_or(u32::MAX),
    }))
}

/// A plain-TCP listener serves HTTP/1.1 only: HTTP/2 without TLS (h2c) is not served, so asking
/// for it is an error rather than a setting silently ignored.
fn plain_http(n: &str, on: Option<bool>, max_streams: Option<u64>) -> Result<(), String> {
    if on == Some(true) {
        return Err(format!(
            "listener `{n}`, key `http2`: HTTP/2 is served on TLS listeners only (set `tls_cert` and `tls_key`); browsers speak HTTP/2 only over TLS"
        ));
    }
    if max_streams.is_some() {
        return Err(format!(
            "listener `{n}`, key `http2_max_concurrent_streams`: HTTP/2 is served on TLS listeners only"
        ));
    }
    Ok(())
}
