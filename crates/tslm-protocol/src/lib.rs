//! The TSLM wire protocol: pure types and codecs, no I/O.
//!
//! Two dialects share one channel space:
//! - [`v1`]: the versioned JSON protocol selected with the `tslm.v1` WebSocket subprotocol;
//! - [`legacy`]: the original TSLM's externally tagged JSON commands (`{"Subscribe":"news"}`).
//!
//! Everything here is a function over `&str`/`Bytes`: the server, the hub and the client library all
//! build on it, and it is unit-tested and fuzzed without a runtime.

mod channel;
pub mod cursor;
mod error;
mod frame;
pub mod legacy;
mod payload;
mod stream;
pub mod v1;
mod wire;

pub use channel::{ChannelName, ChannelNameError, MAX_CHANNEL_NAME_BYTES};
pub use error::{ErrorCode, ProtoError};
pub use frame::WsFrame;
pub use payload::{Payload, PayloadKind};
pub use stream::{ChannelInfo, ChannelOptions, Epoch, Lost, Recovery, Start, Subscription};
pub use wire::{Delivery, Wire};

/// The WebSocket subprotocol that selects protocol v1.
pub const SUBPROTOCOL_V1: &str = "tslm.v1";

/// Which wire dialect a connection speaks; fixed at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Protocol v1 (`tslm.v1` subprotocol).
    V1,
    /// The original TSLM protocol (no subprotocol).
    Legacy,
}

/// A per-channel message sequence number: the first message of a channel is offset 1, and every
/// later message is exactly one more than the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub u64);

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// WebSocket close codes TSLM sends, in one place so that docs and code agree.
pub mod close {
    /// Normal closure (client asked for it).
    pub const NORMAL: u16 = 1000;
    /// The gateway is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// WebSocket-level protocol violation.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Sustained abuse: commands far over the rate limit, or a control-frame flood.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message larger than the listener's `max_message_size`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// An unexpected server-side failure.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The subscriber's outbound queue overflowed: it did not read fast enough.
    pub const SLOW_CONSUMER: u16 = 4000;
    /// The peer did not answer the server's pings in time.
    pub const PING_TIMEOUT: u16 = 4001;
    /// The connection did not authenticate within the listener's `auth_timeout_seconds`.
    pub const AUTH_TIMEOUT: u16 = 4002;
    /// The connection's access token expired and no fresh one came (`refresh`).
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// A reload removed or changed the credential the connection authenticated with (a
    /// publisher's key, token or certificate, the issuer of its access token, or a listener
    /// token): authenticate again with a current one.
    pub const CREDENTIAL_REVOKED: u16 = 4006;

    /// The start of the reason of a [`GOING_AWAY`] close at shutdown; the whole reason is
    /// `shutdown; retry_after_ms=N`, N a decimal number of milliseconds the client should wait
    /// before reconnecting (docs/protocol.md, "Server shutdown").
    pub const SHUTDOWN_REASON_PREFIX: &str = "shutdown; retry_after_ms=";

    /// The reason of a shutdown close that asks the client to wait `retry_after_ms`.
    pub fn shutdown_reason(retry_after_ms: u64) -> String {
        format!("{SHUTDOWN_REASON_PREFIX}{retry_after_ms}")
    }

    /// The `retry_after_ms` of a shutdown close reason; `None` for any other reason. Fields a
    /// later version may add after the number (`; key=value`) are ignored.
    pub fn parse_shutdown_reason(reason: &str) -> Option<u64> {
        let rest = reason.strip_prefix(SHUTDOWN_REASON_PREFIX)?;
        let digits = rest.split(';').next().unwrap_or_default();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}
