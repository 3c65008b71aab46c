//! Protocol v1: `{"op": ..., "id": ..., "channel": ..., ...}` requests, one reply per request,
//! and `{"event": ..., "channel": ..., ...}` events (deliveries, gaps, closed subscriptions and
//! replies to a publisher's message). See docs/protocol.md.
//!
//! - [`request`]: decoding requests (server side) and the wire forms of request fields (client
//!   side);
//! - [`encode`]: encoding replies and events (server side);
//! - [`server_message`]: decoding replies and events (client side).
//!
//! Everything is re-exported here, so callers write `v1::decode_request`, `v1::Success`, …

pub mod encode;
pub mod request;
pub mod server_message;

pub use encode::{
    Success, encode_closed, encode_delivery, encode_error, encode_gap, encode_http_ok, encode_ok,
    encode_reply_event, encode_subscribed, push_error_object,
};
pub use request::{
    Credentials, DEFAULT_LIMIT, MAX_CREDENTIAL_BYTES, MAX_LIMIT, MAX_MSG_ID_BYTES,
    MAX_PREFIX_BYTES, Op, Request, RequestError, Secret, decode_options, decode_request,
    options_json, start_json,
};
pub use server_message::{
    BacklogWire, ChannelInfoWire, HistoryMessage, LostWire, Reply, ReplyOk, ServerMessage,
    WireError, decode_server_message,
};

use crate::{Epoch, ProtoError};

/// The longest request id, in bytes of its JSON text.
pub const MAX_ID_BYTES: usize = 128;

/// A client-chosen request id (a JSON number or string), kept as its JSON text and echoed verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Id(Box<str>);

impl Id {
    /// Validates the JSON text of an id.
    pub fn from_json(raw: &str) -> Result<Self, ProtoError> {
        let first = raw.as_bytes().first().copied();
        let is_number = matches!(first, Some(b'-' | b'0'..=b'9'));
        let is_string = first == Some(b'"');
        if !(is_number || is_string) {
            return Err(ProtoError::bad_request("`id` must be a number or a string"));
        }
        if raw.len() > MAX_ID_BYTES {
            return Err(ProtoError::bad_request(format!(
                "`id` is longer than {MAX_ID_BYTES} bytes"
            )));
        }
        // A number beyond a double's range (`1e400`) is valid JSON, but echoing it would make a
        // reply that common JSON parsers refuse or read as infinity: no client could match it.
        if is_number && !raw.parse::<f64>().is_ok_and(f64::is_finite) {
            return Err(ProtoError::bad_request(
                "`id` is a number beyond the range of a double",
            ));
        }
        Ok(Self(raw.into()))
    }

    /// A numeric id.
    pub fn number(n: u64) -> Self {
        Self(n.to_string().into())
    }

    /// The id's JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `s` as a JSON string literal, escaped exactly as serde_json escapes it.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut plain_from = 0;
    for (i, b) in s.bytes().enumerate() {
        let short = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `b` is ASCII, so both `plain_from` and `i` are character boundaries.
        out.push_str(&s[plain_from..i]);
        if short.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(short);
        }
        plain_from = i + 1;
    }
    out.push_str(&s[plain_from..]);
    out.push('"');
}

/// Appends a decimal number.
pub(crate) fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Appends an epoch's wire form: a JSON string of 16 lowercase hex digits.
pub(crate) fn push_epoch(out: &mut String, epoch: Epoch) {
    out.push('"');
    for shift in (0..16).rev() {
        out.push(char::from(HEX[((epoch.0 >> (shift * 4)) & 0xf) as usize]));
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_strings_like_serde_json() {
        for s in [
            "",
            "plain",
            "a\"b\\c",
            "\n\r\t\u{8}\u{c}",
            "\u{0}\u{1f}\u{7f}",
            "é ✓ 𝄞",
            "end\\",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn numeric_ids_stay_within_a_doubles_range() {
        for ok in [
            "1",
            "-3",
            "1.50",
            "1e308",
            "-1.7976931348623157e308",
            "0.1e-400",
        ] {
            assert_eq!(
                Id::from_json(ok).map(|i| i.as_json().to_owned()),
                Ok(ok.to_owned())
            );
        }
        for bad in ["1e400", "-61e400", "1e309"] {
            assert!(Id::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn epochs_are_sixteen_lowercase_hex_digits() {
        for e in [0, 1, 0xab, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut out = String::new();
            push_epoch(&mut out, Epoch(e));
            assert_eq!(out, format!("\"{}\"", Epoch(e)));
            assert_eq!(Epoch::parse(&out[1..17]), Some(Epoch(e)));
        }
    }
}
