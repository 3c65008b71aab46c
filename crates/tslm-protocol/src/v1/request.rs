//! Requests: decoding them from a text frame (server side), and the wire forms of the structured
//! request fields `start` and `options` (client side).
//!
//! A request is one JSON object. Besides `op` and `id`, each op takes its own fields; a field of
//! another op is refused by name. An optional field given as `null` counts as absent (as `id` and
//! `channel` always have), except `data`, where `null` is the value published.

// Numbers decoded from the wire (offsets, limits, `last`, epochs, lengths) meet arithmetic here:
// none may overflow (checked or saturating operations only).
#![warn(clippy::arithmetic_side_effects)]

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::Id;
use crate::payload::subslice_range;
use crate::{
    ChannelName, ChannelOptions, Epoch, ErrorCode, MAX_CHANNEL_NAME_BYTES, Offset, Payload,
    ProtoError, Start,
};

/// The longest `msg_id` of a publish, in bytes of the decoded string.
pub const MAX_MSG_ID_BYTES: usize = 128;
/// The page size of `history` and `channels` when the request gives no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` of `history` and `channels`.
pub const MAX_LIMIT: usize = 1000;
/// The longest `prefix` of `channels`, in bytes (no channel name is longer).
pub const MAX_PREFIX_BYTES: usize = MAX_CHANNEL_NAME_BYTES;

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: Option<Id>,
    pub op: Op,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create a channel (a no-op if it exists), optionally lowering its class's limits.
    Create {
        channel: ChannelName,
        options: ChannelOptions,
    },
    /// Delete a channel: its subscribers get a `closed` event and its backlog is dropped.
    Delete {
        channel: ChannelName,
    },
    /// Publish one JSON value. With `msg_id`, a publish repeating a recent `msg_id` on the channel
    /// is answered as a duplicate instead of being published again.
    Publish {
        channel: ChannelName,
        /// A zero-copy slice of the request frame.
        data: Payload,
        /// 1 to [`MAX_MSG_ID_BYTES`] bytes.
        msg_id: Option<Box<str>>,
    },
    /// Subscribe, from `start` ([`Start::New`] when the request has none).
    Subscribe {
        channel: ChannelName,
        start: Start,
    },
    Unsubscribe {
        channel: ChannelName,
    },
    /// Read up to `limit` backlog messages from `start` ([`Start::Oldest`] when the request has
    /// none) without subscribing.
    History {
        channel: ChannelName,
        start: Start,
        /// 1 to [`MAX_LIMIT`].
        limit: usize,
    },
    /// Send `data` to the publisher of message `offset` of the channel.
    Reply {
        channel: ChannelName,
        /// At least 1.
        offset: Offset,
        /// A zero-copy slice of the request frame.
        data: Payload,
    },
    /// List channels in name order: those starting with `prefix`, named strictly after `after`,
    /// at most `limit` of them.
    Channels {
        /// At most [`MAX_PREFIX_BYTES`] bytes; may be empty.
        prefix: Option<String>,
        after: Option<ChannelName>,
        /// 1 to [`MAX_LIMIT`].
        limit: usize,
    },
    Ping,
    /// Ask for a fresh random challenge to sign (Ed25519 publisher keys).
    Challenge,
    /// Authenticate the connection: with a bearer `token` (a publisher's token, or a
    /// subscriber's access token from an identity provider), or as `publisher` with a
    /// `signature` of this connection's last challenge.
    Auth(Credentials),
    /// Replace the connection's subscriber access token with a fresh one before it expires.
    Refresh {
        token: Secret,
    },
}

/// A credential's text (a token, a signature): usable as a `&str`, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<Box<str>> for Secret {
    fn from(s: Box<str>) -> Self {
        Self(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How an `auth` request proves an identity.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Token(Secret),
    Signature {
        publisher: Box<str>,
        /// Standard base64 of the 64-byte Ed25519 signature.
        signature: Secret,
    },
}

impl std::fmt::Debug for Credentials {
    /// Never prints a token or a signature.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Token(_) => f.write_str("Token(..)"),
            Credentials::Signature { publisher, .. } => {
                write!(f, "Signature {{ publisher: {publisher:?}, .. }}")
            }
        }
    }
}

/// The longest token or signature field accepted, in bytes.
pub const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

impl Op {
    /// The op's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Delete { .. } => "delete",
            Op::Publish { .. } => "publish",
            Op::Subscribe { .. } => "subscribe",
            Op::Unsubscribe { .. } => "unsubscribe",
            Op::History { .. } => "history",
            Op::Reply { .. } => "reply",
            Op::Channels { .. } => "channels",
            Op::Ping => "ping",
            Op::Challenge => "challenge",
            Op::Auth(_) => "auth",
            Op::Refresh { .. } => "refresh",
        }
    }
}

/// A request that could not be decoded: the error to answer with, and the request's id when it
/// could still be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub id: Option<Id>,
    pub error: ProtoError,
}

/// A field that distinguishes "absent" from "present and null".
#[derive(Default, Clone, Copy)]
enum Field<'a> {
    #[default]
    Absent,
    Present(&'a RawValue),
}

impl<'a> Field<'a> {
    fn is_present(self) -> bool {
        matches!(self, Field::Present(_))
    }

    /// The value of an optional field, `null` counting as absent.
    fn value(self) -> Option<&'a RawValue> {
        match self {
            Field::Present(v) if v.get() != "null" => Some(v),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(Field::Present)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Field<'a>,
    #[serde(borrow, default)]
    options: Field<'a>,
    #[serde(borrow, default)]
    msg_id: Field<'a>,
    #[serde(borrow, default)]
    start: Field<'a>,
    #[serde(borrow, default)]
    limit: Field<'a>,
    #[serde(borrow, default)]
    offset: Field<'a>,
    #[serde(borrow, default)]
    prefix: Field<'a>,
    #[serde(borrow, default)]
    after: Field<'a>,
    #[serde(borrow, default)]
    token: Field<'a>,
    #[serde(borrow, default)]
    publisher: Field<'a>,
    #[serde(borrow, default)]
    signature: Field<'a>,
}

impl RawRequest<'_> {
    /// Every op-specific field and whether the request has it.
    fn fields(&self) -> [(&'static str, bool); 12] {
        [
            ("channel", self.channel.is_some()),
            ("data", self.data.is_present()),
            ("options", self.options.value().is_some()),
            ("msg_id", self.msg_id.value().is_some()),
            ("start", self.start.value().is_some()),
            ("limit", self.limit.value().is_some()),
            ("offset", self.offset.value().is_some()),
            ("prefix", self.prefix.value().is_some()),
            ("after", self.after.value().is_some()),
            ("token", self.token.value().is_some()),
            ("publisher", self.publisher.value().is_some()),
            ("signature", self.signature.value().is_some()),
        ]
    }
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// The ops, before their fields are read.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Create,
    Delete,
    Publish,
    Subscribe,
    Unsubscribe,
    History,
    Reply,
    Channels,
    Ping,
    Challenge,
    Auth,
    Refresh,
}

impl Kind {
    fn parse(op: &str) -> Option<Self> {
        Some(match op {
            "create" => Self::Create,
            "delete" => Self::Delete,
            "publish" => Self::Publish,
            "subscribe" => Self::Subscribe,
            "unsubscribe" => Self::Unsubscribe,
            "history" => Self::History,
            "reply" => Self::Reply,
            "channels" => Self::Channels,
            "ping" => Self::Ping,
            "challenge" => Self::Challenge,
            "auth" => Self::Auth,
            "refresh" => Self::Refresh,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Delete => "delete",
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::History => "history",
            Self::Reply => "reply",
            Self::Channels => "channels",
            Self::Ping => "ping",
            Self::Challenge => "challenge",
            Self::Auth => "auth",
            Self::Refresh => "refresh",
        }
    }

    /// The fields (besides `op` and `id`) the op accepts.
    fn allowed(self) -> &'static [&'static str] {
        match self {
            Self::Create => &["channel", "options"],
            Self::Delete | Self::Unsubscribe => &["channel"],
            Self::Publish => &["channel", "data", "msg_id"],
            Self::Subscribe => &["channel", "start"],
            Self::History => &["channel", "start", "limit"],
            Self::Reply => &["channel", "offset", "data"],
            Self::Channels => &["prefix", "after", "limit"],
            Self::Ping | Self::Challenge => &[],
            Self::Auth => &["token", "publisher", "signature"],
            Self::Refresh => &["token"],
        }
    }
}

const SHAPE: &str = "a request is a JSON object with a string `op`, an optional `id` (number or \
string) and the fields of its op (`channel`, `data`, `options`, `msg_id`, `start`, `limit`, \
`offset`, `prefix`, `after`, `token`, `publisher`, `signature`); no other fields";
const OPS: &str = "unknown op; expected one of create, delete, publish, subscribe, unsubscribe, \
history, reply, channels, ping, challenge, auth, refresh";
const AUTH_FORMS: &str = "`auth` takes either `token` (a string), or `publisher` and \
`signature` (strings: a publisher name and the base64 signature of this connection's challenge)";
const START_FORMS: &str = "`start` must be \"new\", \"oldest\", {\"last\": N} with N >= 1, or \
{\"epoch\": \"<16 hex digits>\", \"offset\": N}";
const OPTIONS_FORM: &str = "`options` must be an object with any of `backlog_messages`, \
`backlog_seconds`, `max_message_bytes`, `max_subscribers` (integers >= 0) and `replies` (true or \
false)";

/// Decodes one request from a text frame. `frame` is the frame's bytes, so that the `data` of a
/// publish or a reply is kept as a zero-copy slice of it.
pub fn decode_request(frame: &Bytes) -> Result<Request, RequestError> {
    let text = match std::str::from_utf8(frame) {
        Ok(t) => t,
        Err(_) => return Err(no_id(ProtoError::bad_request("request is not UTF-8"))),
    };
    // serde would also read a struct from a JSON array by position; requests are objects only.
    if !text.trim_start().starts_with('{') {
        let message = if serde_json::from_str::<&RawValue>(text).is_ok() {
            SHAPE
        } else {
            "request is not valid JSON"
        };
        return Err(no_id(ProtoError::bad_request(message)));
    }
    let raw: RawRequest<'_> = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly<'_>>(text)
                .ok()
                .and_then(|r| r.id)
                .and_then(|raw| Id::from_json(raw.get()).ok());
            let message = if e.is_syntax() || e.is_eof() {
                "request is not valid JSON"
            } else {
                SHAPE
            };
            return Err(RequestError {
                id,
                error: ProtoError::bad_request(message),
            });
        }
    };
    let id = match raw.id {
        Some(r) if r.get() != "null" => match Id::from_json(r.get()) {
            Ok(id) => Some(id),
            Err(error) => return Err(no_id(error)),
        },
        _ => None,
    };
    match decode_op(frame, &raw) {
        Ok(op) => Ok(Request { id, op }),
        Err(error) => Err(RequestError { id, error }),
    }
}

fn decode_op(frame: &Bytes, raw: &RawRequest<'_>) -> Result<Op, ProtoError> {
    let Some(op) = raw.op.as_deref() else {
        return Err(ProtoError::bad_request("missing `op`"));
    };
    let Some(kind) = Kind::parse(op) else {
        return Err(ProtoError::new(ErrorCode::UnknownOp, OPS));
    };
    let name = kind.name();
    let allowed = kind.allowed();
    if let Some((field, _)) = raw
        .fields()
        .into_iter()
        .find(|&(field, present)| present && !allowed.contains(&field))
    {
        return Err(ProtoError::bad_request(format!(
            "`{field}` is not allowed with `{name}`"
        )));
    }
    let channel = || -> Result<ChannelName, ProtoError> {
        let Some(c) = raw.channel.as_deref() else {
            return Err(ProtoError::bad_request(format!(
                "`{name}` needs a `channel`"
            )));
        };
        ChannelName::new(c).map_err(|e| ProtoError::bad_request(e.to_string()))
    };
    let data = || -> Result<Payload, ProtoError> {
        let Field::Present(data) = raw.data else {
            return Err(ProtoError::bad_request(format!("`{name}` needs `data`")));
        };
        let range = subslice_range(frame, data.get().as_bytes());
        Ok(Payload::from_validated(frame.slice(range), None))
    };
    Ok(match kind {
        Kind::Create => Op::Create {
            channel: channel()?,
            options: parse_options(raw.options.value())?,
        },
        Kind::Delete => Op::Delete {
            channel: channel()?,
        },
        Kind::Publish => Op::Publish {
            channel: channel()?,
            data: data()?,
            msg_id: parse_msg_id(raw.msg_id.value())?,
        },
        Kind::Subscribe => Op::Subscribe {
            channel: channel()?,
            start: parse_start(raw.start.value(), Start::New)?,
        },
        Kind::Unsubscribe => Op::Unsubscribe {
            channel: channel()?,
        },
        Kind::History => Op::History {
            channel: channel()?,
            start: parse_start(raw.start.value(), Start::Oldest)?,
            limit: parse_limit(raw.limit.value())?,
        },
        Kind::Reply => Op::Reply {
            channel: channel()?,
            offset: parse_reply_offset(raw.offset.value())?,
            data: data()?,
        },
        Kind::Channels => Op::Channels {
            prefix: parse_prefix(raw.prefix.value())?,
            after: parse_after(raw.after.value())?,
            limit: parse_limit(raw.limit.value())?,
        },
        Kind::Ping => Op::Ping,
        Kind::Challenge => Op::Challenge,
        Kind::Auth => {
            let text = |f: Field<'_>, what: &str| -> Result<Option<Box<str>>, ProtoError> {
                let Some(v) = f.value() else {
                    return Ok(None);
                };
                match parse_string(v) {
                    Some(s) if !s.is_empty() && s.len() <= MAX_CREDENTIAL_BYTES => {
                        Ok(Some(s.into()))
                    }
                    _ => Err(ProtoError::bad_request(format!(
                        "`{what}` must be a non-empty string of at most {MAX_CREDENTIAL_BYTES} bytes"
                    ))),
                }
            };
            match (
                text(raw.token, "token")?,
                text(raw.publisher, "publisher")?,
                text(raw.signature, "signature")?,
            ) {
                (Some(token), None, None) => Op::Auth(Credentials::Token(token.into())),
                (None, Some(publisher), Some(signature)) => Op::Auth(Credentials::Signature {
                    publisher,
                    signature: signature.into(),
                }),
                _ => return Err(ProtoError::bad_request(AUTH_FORMS)),
            }
        }
        Kind::Refresh => match raw.token.value().and_then(parse_string) {
            Some(t) if !t.is_empty() && t.len() <= MAX_CREDENTIAL_BYTES => {
                Op::Refresh { token: t.into() }
            }
            _ => {
                return Err(ProtoError::bad_request(format!(
                    "`refresh` needs a `token`: a non-empty string of at most {MAX_CREDENTIAL_BYTES} bytes"
                )));
            }
        },
    })
}

mod fields;
use fields::*;
pub use fields::{decode_options, options_json, start_json};

#[cfg(test)]
mod tests;
