//! Defaults, documented in docs/configuration.md.

pub const SHUTDOWN_GRACE_SECONDS: u64 = 10;
/// No drain delay: the right one depends on the load balancer's probe period, which the gateway
/// cannot know, and a delay on every stop would slow down every stop with no load balancer at all.
pub const DRAIN_DELAY_SECONDS: u64 = 0;
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
/// HTTP/2 streams open at once on one connection (TLS listeners with `http2`).
pub const HTTP2_MAX_CONCURRENT_STREAMS: u64 = 100;
