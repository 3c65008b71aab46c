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

fn no_id(error: ProtoError) -> RequestError {
    RequestError { id: None, error }
}

/// The first byte of a raw value: `"` for strings, `{` for objects (serde would also read a
/// struct from an array, so shapes are checked before deserialising).
fn first_byte(v: &RawValue) -> Option<u8> {
    v.get().as_bytes().first().copied()
}

fn parse_string(v: &RawValue) -> Option<String> {
    if first_byte(v) != Some(b'"') {
        return None;
    }
    serde_json::from_str(v.get()).ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStart<'a> {
    #[serde(default)]
    last: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<u64>,
}

fn parse_start(v: Option<&RawValue>, default: Start) -> Result<Start, ProtoError> {
    let Some(v) = v else {
        return Ok(default);
    };
    let start = match first_byte(v) {
        Some(b'"') => match parse_string(v).as_deref() {
            Some("new") => Some(Start::New),
            Some("oldest") => Some(Start::Oldest),
            _ => None,
        },
        Some(b'{') => match serde_json::from_str::<RawStart<'_>>(v.get()) {
            Ok(RawStart {
                last: Some(n),
                epoch: None,
                offset: None,
            }) if n >= 1 => Some(Start::Last(n)),
            Ok(RawStart {
                last: None,
                epoch: Some(epoch),
                offset: Some(offset),
            }) => Epoch::parse(&epoch).map(|epoch| Start::After {
                epoch,
                offset: Offset(offset),
            }),
            _ => None,
        },
        _ => None,
    };
    start.ok_or_else(|| ProtoError::bad_request(START_FORMS))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptions<'a> {
    // Kept as their JSON text, so that a key given with `null` is seen (and refused, not read as
    // "not given") and numbers are read exactly, never through a float.
    #[serde(default, borrow, deserialize_with = "present")]
    backlog_messages: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    backlog_seconds: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    max_message_bytes: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    max_subscribers: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    replies: Option<&'a RawValue>,
}

/// An option that is present, with its JSON text (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The value of a JSON number that is a non-negative integer as JSON Schema counts them: an
/// integral number in any notation (`5`, `5.0`, `5e0`, `50e-1`), at most `u64::MAX`. Read from
/// the text exactly (a float would round `2111599191287955.0` off). `None` for anything else:
/// fractions, negative numbers, numbers past `u64::MAX`, non-numbers.
pub(crate) fn integral(text: &str) -> Option<u64> {
    let (mantissa, exp) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (text, None),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0); // zero, whatever its sign and exponent
    }
    if negative {
        return None;
    }
    let exp: i64 = match exp {
        None => 0,
        Some(e) => e.strip_prefix('+').unwrap_or(e).parse().ok()?,
    };
    let significant = digits.trim_end_matches('0');
    let zeros = i64::try_from(digits.len().saturating_sub(significant.len())).ok()?;
    let frac_len = i64::try_from(frac.len()).ok()?;
    let scale = exp.checked_add(zeros)?.checked_sub(frac_len)?;
    if scale < 0 || i64::try_from(significant.len()).ok()?.checked_add(scale)? > 20 {
        return None;
    }
    let mut n: u64 = significant.parse().ok()?;
    for _ in 0..scale {
        n = n.checked_mul(10)?;
    }
    Some(n)
}

/// Decodes channel options on their own (the JSON body of `PUT /v1/channels/{name}`).
pub fn decode_options(json: &[u8]) -> Result<ChannelOptions, ProtoError> {
    let text =
        std::str::from_utf8(json).map_err(|_| ProtoError::bad_request("the body is not UTF-8"))?;
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|_| ProtoError::bad_request("the body is not one valid JSON value"))?;
    parse_options(Some(raw))
}

fn parse_options(v: Option<&RawValue>) -> Result<ChannelOptions, ProtoError> {
    let Some(v) = v else {
        return Ok(ChannelOptions::default());
    };
    if first_byte(v) != Some(b'{') {
        return Err(ProtoError::bad_request(OPTIONS_FORM));
    }
    let o: RawOptions =
        serde_json::from_str(v.get()).map_err(|_| ProtoError::bad_request(OPTIONS_FORM))?;
    let bad = || ProtoError::bad_request(OPTIONS_FORM);
    let n = |v: Option<&RawValue>| v.map(|v| integral(v.get()).ok_or_else(bad)).transpose();
    let replies = match o.replies.map(RawValue::get) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(bad()),
    };
    Ok(ChannelOptions {
        backlog_messages: n(o.backlog_messages)?,
        backlog_seconds: n(o.backlog_seconds)?,
        max_message_bytes: n(o.max_message_bytes)?,
        max_subscribers: n(o.max_subscribers)?,
        replies,
    })
}

fn parse_msg_id(v: Option<&RawValue>) -> Result<Option<Box<str>>, ProtoError> {
    let Some(v) = v else {
        return Ok(None);
    };
    match parse_string(v) {
        Some(s) if (1..=MAX_MSG_ID_BYTES).contains(&s.len()) => Ok(Some(s.into_boxed_str())),
        _ => Err(ProtoError::bad_request(format!(
            "`msg_id` must be a string of 1 to {MAX_MSG_ID_BYTES} bytes"
        ))),
    }
}

fn parse_limit(v: Option<&RawValue>) -> Result<usize, ProtoError> {
    let Some(v) = v else {
        return Ok(DEFAULT_LIMIT);
    };
    serde_json::from_str::<u64>(v.get())
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            ProtoError::bad_request(format!("`limit` must be an integer from 1 to {MAX_LIMIT}"))
        })
}

fn parse_reply_offset(v: Option<&RawValue>) -> Result<Offset, ProtoError> {
    let Some(v) = v else {
        return Err(ProtoError::bad_request("`reply` needs an `offset`"));
    };
    serde_json::from_str::<u64>(v.get())
        .ok()
        .filter(|&n| n >= 1)
        .map(Offset)
        .ok_or_else(|| ProtoError::bad_request("`offset` must be an integer >= 1"))
}

fn parse_prefix(v: Option<&RawValue>) -> Result<Option<String>, ProtoError> {
    let Some(v) = v else {
        return Ok(None);
    };
    match parse_string(v) {
        Some(s) if s.len() <= MAX_PREFIX_BYTES => Ok(Some(s)),
        _ => Err(ProtoError::bad_request(format!(
            "`prefix` must be a string of at most {MAX_PREFIX_BYTES} bytes"
        ))),
    }
}

fn parse_after(v: Option<&RawValue>) -> Result<Option<ChannelName>, ProtoError> {
    let Some(v) = v else {
        return Ok(None);
    };
    let Some(s) = parse_string(v) else {
        return Err(ProtoError::bad_request("`after` must be a channel name"));
    };
    ChannelName::new(&s)
        .map(Some)
        .map_err(|e| ProtoError::bad_request(format!("`after` must be a channel name: {e}")))
}

/// The JSON text of a `start` field (client side): `"new"`, `"oldest"`, `{"last":N}` or
/// `{"epoch":"…","offset":N}`.
pub fn start_json(start: Start) -> String {
    match start {
        Start::New => "\"new\"".to_owned(),
        Start::Oldest => "\"oldest\"".to_owned(),
        Start::Last(n) => {
            let mut out = String::from("{\"last\":");
            super::push_u64(&mut out, n);
            out.push('}');
            out
        }
        Start::After { epoch, offset } => {
            let mut out = String::from("{\"epoch\":");
            super::push_epoch(&mut out, epoch);
            out.push_str(",\"offset\":");
            super::push_u64(&mut out, offset.0);
            out.push('}');
            out
        }
    }
}

/// The JSON text of an `options` object (client side), with only the options that are set.
pub fn options_json(options: &ChannelOptions) -> String {
    let mut out = String::from("{");
    let numbers = [
        ("backlog_messages", options.backlog_messages),
        ("backlog_seconds", options.backlog_seconds),
        ("max_message_bytes", options.max_message_bytes),
        ("max_subscribers", options.max_subscribers),
    ];
    for (key, value) in numbers {
        if let Some(n) = value {
            if out.len() > 1 {
                out.push(',');
            }
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            super::push_u64(&mut out, n);
        }
    }
    if let Some(r) = options.replies {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(if r {
            "\"replies\":true"
        } else {
            "\"replies\":false"
        });
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PayloadKind;

    fn dec(s: &str) -> Result<Request, RequestError> {
        decode_request(&Bytes::copy_from_slice(s.as_bytes()))
    }

    fn op(s: &str) -> Op {
        match dec(s) {
            Ok(r) => r.op,
            Err(e) => panic!("{s} -> {e:?}"),
        }
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn err(s: &str) -> RequestError {
        dec(s).unwrap_err()
    }

    /// Asserts `s` is refused with bad_request and a message containing `needle`.
    fn refused(s: &str, needle: &str) {
        let e = err(s);
        assert_eq!(e.error.code, ErrorCode::BadRequest, "{s}");
        assert!(
            e.error.message.contains(needle),
            "{s} -> {:?}, expected {needle:?}",
            e.error.message
        );
    }

    #[test]
    fn decodes_every_op() {
        let r = dec(r#"{"op":"create","id":1,"channel":"news"}"#).unwrap();
        assert_eq!(r.id, Some(Id::number(1)));
        assert_eq!(
            r.op,
            Op::Create {
                channel: ch("news"),
                options: ChannelOptions::default()
            }
        );
        let r = dec(r#"{"op":"subscribe","id":"a-b","channel":"news"}"#).unwrap();
        assert_eq!(r.id.unwrap().as_json(), "\"a-b\"");
        assert_eq!(
            r.op,
            Op::Subscribe {
                channel: ch("news"),
                start: Start::New
            }
        );
        let r = dec(r#"{"op":"unsubscribe","channel":"news"}"#).unwrap();
        assert_eq!(r.id, None);
        assert_eq!(
            r.op,
            Op::Unsubscribe {
                channel: ch("news")
            }
        );
        assert_eq!(op(r#"{"op":"ping","id":null}"#), Op::Ping);
        match op(r#"{"op":"publish","channel":"p","data": {"x" : [1, 2.5e3]} }"#) {
            Op::Publish {
                channel,
                data,
                msg_id,
            } => {
                assert_eq!(channel, ch("p"));
                assert_eq!(&data.json()[..], br#"{"x" : [1, 2.5e3]}"#);
                assert_eq!(data.kind(), PayloadKind::Json);
                assert_eq!(msg_id, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            op(r#"{"op":"delete","id":2,"channel":"news"}"#),
            Op::Delete {
                channel: ch("news")
            }
        );
        assert_eq!(
            op(r#"{"op":"history","channel":"news"}"#),
            Op::History {
                channel: ch("news"),
                start: Start::Oldest,
                limit: DEFAULT_LIMIT
            }
        );
        assert_eq!(
            op(r#"{"op":"channels"}"#),
            Op::Channels {
                prefix: None,
                after: None,
                limit: DEFAULT_LIMIT
            }
        );
    }

    #[test]
    fn op_names_are_the_wire_names() {
        for (req, name) in [
            (r#"{"op":"create","channel":"c"}"#, "create"),
            (r#"{"op":"delete","channel":"c"}"#, "delete"),
            (r#"{"op":"publish","channel":"c","data":1}"#, "publish"),
            (r#"{"op":"subscribe","channel":"c"}"#, "subscribe"),
            (r#"{"op":"unsubscribe","channel":"c"}"#, "unsubscribe"),
            (r#"{"op":"history","channel":"c"}"#, "history"),
            (
                r#"{"op":"reply","channel":"c","offset":1,"data":1}"#,
                "reply",
            ),
            (r#"{"op":"channels"}"#, "channels"),
            (r#"{"op":"ping"}"#, "ping"),
        ] {
            assert_eq!(op(req).name(), name);
        }
    }

    #[test]
    fn publish_null_and_string_data() {
        match op(r#"{"op":"publish","channel":"p","data":null}"#) {
            Op::Publish { data, .. } => assert_eq!(&data.json()[..], b"null"),
            other => panic!("{other:?}"),
        }
        match op(r#"{"op":"publish","channel":"p","data":"hi \"x\""}"#) {
            Op::Publish { data, .. } => {
                assert_eq!(&data.json()[..], br#""hi \"x\"""#);
                assert_eq!(data.kind(), PayloadKind::Text);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publish_data_is_a_slice_of_the_frame() {
        let frame = Bytes::from_static(br#"{"op":"publish","channel":"p","data":[1,2]}"#);
        match decode_request(&frame).unwrap().op {
            Op::Publish { data, .. } => {
                let start = frame.as_ptr() as usize;
                let at = data.json().as_ptr() as usize;
                assert!(at >= start && at + data.len() <= start + frame.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_options() {
        assert_eq!(
            op(r#"{"op":"create","channel":"c","options":{}}"#),
            Op::Create {
                channel: ch("c"),
                options: ChannelOptions::default()
            }
        );
        assert_eq!(
            op(r#"{"op":"create","channel":"c","options":null}"#),
            Op::Create {
                channel: ch("c"),
                options: ChannelOptions::default()
            }
        );
        let all = r#"{"op":"create","channel":"c","options":{"backlog_messages":10,
            "backlog_seconds":0,"max_message_bytes":4096,"max_subscribers":18446744073709551615,
            "replies":false}}"#;
        assert_eq!(
            op(all),
            Op::Create {
                channel: ch("c"),
                options: ChannelOptions {
                    backlog_messages: Some(10),
                    backlog_seconds: Some(0),
                    max_message_bytes: Some(4096),
                    max_subscribers: Some(u64::MAX),
                    replies: Some(false),
                }
            }
        );
        // Integers as JSON Schema counts them: an integral number in any notation.
        assert_eq!(
            op(
                r#"{"op":"create","channel":"c","options":{"max_subscribers":86961.0,
                "backlog_messages":1e3,"backlog_seconds":-0.0,"max_message_bytes":9.007199254740992e15}}"#
            ),
            Op::Create {
                channel: ch("c"),
                options: ChannelOptions {
                    max_subscribers: Some(86961),
                    backlog_messages: Some(1000),
                    backlog_seconds: Some(0),
                    max_message_bytes: Some(9_007_199_254_740_992),
                    replies: None,
                }
            }
        );
        assert_eq!(
            op(r#"{"op":"create","channel":"c","options":{"replies":true}}"#),
            Op::Create {
                channel: ch("c"),
                options: ChannelOptions {
                    replies: Some(true),
                    ..ChannelOptions::default()
                }
            }
        );
    }

    #[test]
    fn integral_reads_json_schema_integers_exactly() {
        for (text, want) in [
            ("0", Some(0)),
            ("-0", Some(0)),
            ("-0.0e-5", Some(0)),
            ("0e99999999999999999999", Some(0)),
            ("5", Some(5)),
            ("5.0", Some(5)),
            ("5e0", Some(5)),
            ("50e-1", Some(5)),
            ("1E+3", Some(1000)),
            ("1.5e1", Some(15)),
            ("86961.0", Some(86961)),
            ("2111599191287955.0", Some(2_111_599_191_287_955)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551615.000", Some(u64::MAX)),
            ("1.8446744073709551615e19", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("1e20", None),
            ("1e99999999999999999999", None),
            ("5.5", None),
            ("51e-1", None),
            ("-1", None),
            ("-1.0", None),
            ("null", None),
            ("true", None),
            ("\"5\"", None),
        ] {
            assert_eq!(integral(text), want, "{text}");
        }
    }

    #[test]
    fn create_refusals() {
        for options in [
            r#"{"backlog":1}"#,
            r#"{"backlog_messages":-1}"#,
            r#"{"backlog_messages":1.5}"#,
            r#"{"backlog_messages":"1"}"#,
            r#"{"backlog_messages":1.8446744073709552e19}"#,
            r#"{"backlog_messages":18446744073709551616}"#,
            r#"{"backlog_messages":-1.0}"#,
            r#"{"replies":1}"#,
            // A key given holds a value: `null` is not "not given".
            r#"{"replies":null}"#,
            r#"{"backlog_messages":null}"#,
            r#"{"max_subscribers":null,"replies":false}"#,
            r#"{"replies":true,"replies":false}"#,
            r#"[1]"#,
            r#"[]"#,
            r#""x""#,
            "7",
            "true",
        ] {
            refused(
                &format!(r#"{{"op":"create","channel":"c","options":{options}}}"#),
                "`options` must be an object with any of `backlog_messages`, `backlog_seconds`, \
                 `max_message_bytes`, `max_subscribers`",
            );
        }
        refused(
            r#"{"op":"create","options":{}}"#,
            "`create` needs a `channel`",
        );
        refused(
            r#"{"op":"create","channel":"c","data":1}"#,
            "`data` is not allowed with `create`",
        );
        refused(
            r#"{"op":"create","channel":"c","start":"new"}"#,
            "`start` is not allowed with `create`",
        );
    }

    #[test]
    fn delete_and_its_refusals() {
        refused(r#"{"op":"delete"}"#, "`delete` needs a `channel`");
        refused(r#"{"op":"delete","channel":"a b"}"#, "channel name");
        for field in [
            r#""data":1"#,
            r#""options":{}"#,
            r#""limit":5"#,
            r#""after":"x""#,
        ] {
            let name = field.split('"').nth(1).unwrap();
            refused(
                &format!(r#"{{"op":"delete","channel":"c",{field}}}"#),
                &format!("`{name}` is not allowed with `delete`"),
            );
        }
    }

    #[test]
    fn publish_msg_id() {
        let id_of = |s: &str| match op(s) {
            Op::Publish { msg_id, .. } => msg_id,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            id_of(r#"{"op":"publish","channel":"c","data":1,"msg_id":"abc"}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(
            id_of(r#"{"op":"publish","channel":"c","data":1,"msg_id":"\u00e9\n\"x"}"#).as_deref(),
            Some("é\n\"x")
        );
        assert_eq!(
            id_of(r#"{"op":"publish","channel":"c","data":1,"msg_id":null}"#),
            None
        );
        // 128 bytes of decoded UTF-8 (64 two-byte characters) is the most allowed.
        let max = "é".repeat(64);
        assert_eq!(
            id_of(&format!(
                r#"{{"op":"publish","channel":"c","data":1,"msg_id":"{max}"}}"#
            ))
            .as_deref(),
            Some(max.as_str())
        );
        // Escapes count as the bytes they decode to.
        let escaped = "\\u0041".repeat(128);
        assert_eq!(
            id_of(&format!(
                r#"{{"op":"publish","channel":"c","data":1,"msg_id":"{escaped}"}}"#
            ))
            .as_deref(),
            Some("A".repeat(128).as_str())
        );
        let too_long = format!("{max}x");
        for msg_id in [
            r#""""#.to_owned(),
            format!(r#""{too_long}""#),
            "7".to_owned(),
            "[\"a\"]".to_owned(),
            "{}".to_owned(),
            "true".to_owned(),
            r#""\ud800""#.to_owned(),
        ] {
            refused(
                &format!(r#"{{"op":"publish","channel":"c","data":1,"msg_id":{msg_id}}}"#),
                "`msg_id` must be a string of 1 to 128 bytes",
            );
        }
        refused(
            r#"{"op":"subscribe","channel":"c","msg_id":"a"}"#,
            "`msg_id` is not allowed with `subscribe`",
        );
        refused(
            r#"{"op":"publish","channel":"c","data":1,"start":"new"}"#,
            "`start` is not allowed with `publish`",
        );
        refused(
            r#"{"op":"publish","channel":"c","msg_id":"a"}"#,
            "`publish` needs `data`",
        );
    }

    fn start_of(s: &str) -> Start {
        match op(s) {
            Op::Subscribe { start, .. } | Op::History { start, .. } => start,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn subscribe_start_forms() {
        let sub = |start: &str| {
            start_of(&format!(
                r#"{{"op":"subscribe","channel":"c","start":{start}}}"#
            ))
        };
        assert_eq!(sub(r#""new""#), Start::New);
        assert_eq!(sub("null"), Start::New);
        assert_eq!(sub(r#""oldest""#), Start::Oldest);
        assert_eq!(sub(r#""\u006fldest""#), Start::Oldest);
        assert_eq!(sub(r#"{"last":1}"#), Start::Last(1));
        assert_eq!(
            sub(r#"{"last":18446744073709551615}"#),
            Start::Last(u64::MAX)
        );
        assert_eq!(
            sub(r#"{"epoch":"00000000000000ab","offset":0}"#),
            Start::After {
                epoch: Epoch(0xab),
                offset: Offset(0)
            }
        );
        assert_eq!(
            sub(r#"{ "offset" : 42, "epoch" : "FFFFFFFFFFFFFFFF" }"#),
            Start::After {
                epoch: Epoch(u64::MAX),
                offset: Offset(42)
            }
        );
    }

    #[test]
    fn subscribe_start_refusals() {
        for start in [
            r#""""#,
            r#""newest""#,
            r#""New""#,
            r#""last""#,
            "1",
            "true",
            "[]",
            r#"["new"]"#,
            r#"[5]"#,
            "{}",
            r#"{"last":0}"#,
            r#"{"last":-1}"#,
            r#"{"last":1.5}"#,
            r#"{"last":"3"}"#,
            r#"{"last":3,"offset":1}"#,
            r#"{"last":3,"epoch":"00000000000000ab","offset":1}"#,
            r#"{"last":3,"x":1}"#,
            r#"{"epoch":"00000000000000ab"}"#,
            r#"{"offset":3}"#,
            r#"{"epoch":"abc","offset":3}"#,
            r#"{"epoch":"00000000000000ag","offset":3}"#,
            r#"{"epoch":"000000000000000ab","offset":3}"#,
            r#"{"epoch":"+0000000000000ab","offset":3}"#,
            r#"{"epoch":171,"offset":3}"#,
            r#"{"epoch":"00000000000000ab","offset":-1}"#,
            r#"{"epoch":"00000000000000ab","offset":3,"last":1}"#,
            r#"{"epoch":"00000000000000ab","offset":3,"extra":1}"#,
        ] {
            refused(
                &format!(r#"{{"op":"subscribe","channel":"c","start":{start}}}"#),
                r#"`start` must be "new", "oldest", {"last": N} with N >= 1, or {"epoch": "<16 hex digits>", "offset": N}"#,
            );
        }
        refused(
            r#"{"op":"subscribe","channel":"c","limit":5}"#,
            "`limit` is not allowed with `subscribe`",
        );
        refused(
            r#"{"op":"subscribe","channel":"c","data":null}"#,
            "`data` is not allowed with `subscribe`",
        );
        refused(r#"{"op":"subscribe","start":"new"}"#, "needs a `channel`");
    }

    #[test]
    fn unsubscribe_takes_only_a_channel() {
        refused(
            r#"{"op":"unsubscribe","channel":"c","start":"new"}"#,
            "`start` is not allowed with `unsubscribe`",
        );
        refused(
            r#"{"op":"unsubscribe","channel":"c","msg_id":"x"}"#,
            "`msg_id` is not allowed with `unsubscribe`",
        );
    }

    #[test]
    fn history_and_its_refusals() {
        assert_eq!(
            op(r#"{"op":"history","channel":"c","start":"new","limit":1}"#),
            Op::History {
                channel: ch("c"),
                start: Start::New,
                limit: 1
            }
        );
        assert_eq!(
            op(r#"{"op":"history","channel":"c","start":{"last":5},"limit":1000}"#),
            Op::History {
                channel: ch("c"),
                start: Start::Last(5),
                limit: 1000
            }
        );
        assert_eq!(
            start_of(
                r#"{"op":"history","channel":"c","start":{"epoch":"0123456789abcdef","offset":9}}"#
            ),
            Start::After {
                epoch: Epoch(0x0123_4567_89ab_cdef),
                offset: Offset(9)
            }
        );
        assert_eq!(
            start_of(r#"{"op":"history","channel":"c","start":null,"limit":null}"#),
            Start::Oldest
        );
        for limit in [
            "0",
            "1001",
            "-1",
            "1.0",
            "1e2",
            r#""5""#,
            "[5]",
            "18446744073709551616",
        ] {
            refused(
                &format!(r#"{{"op":"history","channel":"c","limit":{limit}}}"#),
                "`limit` must be an integer from 1 to 1000",
            );
        }
        refused(
            r#"{"op":"history","channel":"c","start":"latest"}"#,
            "`start` must be",
        );
        refused(
            r#"{"op":"history","limit":3}"#,
            "`history` needs a `channel`",
        );
        refused(
            r#"{"op":"history","channel":"c","offset":3}"#,
            "`offset` is not allowed with `history`",
        );
        refused(
            r#"{"op":"history","channel":"c","prefix":"a"}"#,
            "`prefix` is not allowed with `history`",
        );
    }

    #[test]
    fn reply_and_its_refusals() {
        let frame = Bytes::from_static(
            br#"{"op":"reply","id":3,"channel":"rpc","offset":7,"data":{"ok" : true}}"#,
        );
        let r = decode_request(&frame).unwrap();
        assert_eq!(r.id, Some(Id::number(3)));
        match r.op {
            Op::Reply {
                channel,
                offset,
                data,
            } => {
                assert_eq!((channel, offset), (ch("rpc"), Offset(7)));
                assert_eq!(&data.json()[..], br#"{"ok" : true}"#);
                let start = frame.as_ptr() as usize;
                let at = data.json().as_ptr() as usize;
                assert!(at >= start && at + data.len() <= start + frame.len());
            }
            other => panic!("{other:?}"),
        }
        match op(r#"{"op":"reply","channel":"rpc","offset":1,"data":null}"#) {
            Op::Reply { data, offset, .. } => {
                assert_eq!((&data.json()[..], offset), (&b"null"[..], Offset(1)));
            }
            other => panic!("{other:?}"),
        }
        refused(
            r#"{"op":"reply","channel":"rpc","data":1}"#,
            "`reply` needs an `offset`",
        );
        refused(
            r#"{"op":"reply","channel":"rpc","offset":null,"data":1}"#,
            "`reply` needs an `offset`",
        );
        for offset in ["0", "-1", "1.5", r#""1""#, "[1]", "{}"] {
            refused(
                &format!(r#"{{"op":"reply","channel":"rpc","offset":{offset},"data":1}}"#),
                "`offset` must be an integer >= 1",
            );
        }
        refused(
            r#"{"op":"reply","channel":"rpc","offset":1}"#,
            "`reply` needs `data`",
        );
        refused(
            r#"{"op":"reply","offset":1,"data":1}"#,
            "`reply` needs a `channel`",
        );
        refused(
            r#"{"op":"reply","channel":"rpc","offset":1,"data":1,"msg_id":"m"}"#,
            "`msg_id` is not allowed with `reply`",
        );
        refused(
            r#"{"op":"publish","channel":"rpc","offset":1,"data":1}"#,
            "`offset` is not allowed with `publish`",
        );
    }

    #[test]
    fn channels_and_its_refusals() {
        assert_eq!(
            op(r#"{"op":"channels","prefix":"","after":"news.a","limit":1000}"#),
            Op::Channels {
                prefix: Some(String::new()),
                after: Some(ch("news.a")),
                limit: 1000
            }
        );
        let max = "p".repeat(255);
        assert_eq!(
            op(&format!(r#"{{"op":"channels","prefix":"{max}"}}"#)),
            Op::Channels {
                prefix: Some(max.clone()),
                after: None,
                limit: DEFAULT_LIMIT
            }
        );
        // A prefix is only matched against names; it need not be a valid name itself.
        assert_eq!(
            op(r#"{"op":"channels","prefix":"a b"}"#),
            Op::Channels {
                prefix: Some("a b".into()),
                after: None,
                limit: DEFAULT_LIMIT
            }
        );
        for prefix in [format!(r#""{max}p""#), "1".into(), "[]".into(), "{}".into()] {
            refused(
                &format!(r#"{{"op":"channels","prefix":{prefix}}}"#),
                "`prefix` must be a string of at most 255 bytes",
            );
        }
        for after in [r#""""#, r#""a b""#, r#"".""#, "5", "[\"a\"]"] {
            refused(
                &format!(r#"{{"op":"channels","after":{after}}}"#),
                "`after` must be a channel name",
            );
        }
        refused(
            r#"{"op":"channels","limit":0}"#,
            "`limit` must be an integer from 1 to 1000",
        );
        refused(
            r#"{"op":"channels","channel":"c"}"#,
            "`channel` is not allowed with `channels`",
        );
        refused(
            r#"{"op":"channels","start":"new"}"#,
            "`start` is not allowed with `channels`",
        );
        refused(
            r#"{"op":"channels","data":1}"#,
            "`data` is not allowed with `channels`",
        );
    }

    #[test]
    fn ping_takes_no_fields() {
        refused(
            r#"{"op":"ping","channel":"x"}"#,
            "`channel` is not allowed with `ping`",
        );
        refused(
            r#"{"op":"ping","limit":1}"#,
            "`limit` is not allowed with `ping`",
        );
    }

    #[test]
    fn auth_challenge_and_refresh() {
        assert_eq!(
            dec(r#"{"op":"challenge","id":1}"#).unwrap().op,
            Op::Challenge
        );
        assert_eq!(
            dec(r#"{"op":"auth","token":"abc"}"#).unwrap().op,
            Op::Auth(Credentials::Token("abc".into()))
        );
        assert_eq!(
            dec(r#"{"op":"auth","publisher":"billing","signature":"c2ln"}"#)
                .unwrap()
                .op,
            Op::Auth(Credentials::Signature {
                publisher: "billing".into(),
                signature: "c2ln".into()
            })
        );
        assert_eq!(
            dec(r#"{"op":"refresh","token":"t"}"#).unwrap().op,
            Op::Refresh { token: "t".into() }
        );
        for bad in [
            r#"{"op":"auth"}"#,
            r#"{"op":"auth","token":""}"#,
            r#"{"op":"auth","token":5}"#,
            r#"{"op":"auth","token":"a","publisher":"p","signature":"s"}"#,
            r#"{"op":"auth","publisher":"p"}"#,
            r#"{"op":"auth","signature":"s"}"#,
            r#"{"op":"refresh"}"#,
            r#"{"op":"refresh","token":""}"#,
            r#"{"op":"challenge","token":"x"}"#,
            r#"{"op":"auth","token":"x","channel":"c"}"#,
        ] {
            assert_eq!(err(bad).error.code, ErrorCode::BadRequest, "{bad}");
        }
        let long = format!(
            r#"{{"op":"auth","token":"{}"}}"#,
            "t".repeat(MAX_CREDENTIAL_BYTES + 1)
        );
        assert_eq!(err(&long).error.code, ErrorCode::BadRequest);
        // Credentials never show in debug output.
        for req in [
            r#"{"op":"auth","token":"secret-xyz"}"#,
            r#"{"op":"refresh","token":"secret-xyz"}"#,
            r#"{"op":"auth","publisher":"p","signature":"secret-xyz"}"#,
        ] {
            let shown = format!("{:?}", dec(req).unwrap());
            assert!(!shown.contains("secret-xyz"), "{shown}");
        }
    }

    #[test]
    fn unknown_op_lists_every_op() {
        let e = err(r#"{"op":"jump","id":8,"channel":"news","start":"bogus"}"#);
        assert_eq!(e.error.code, ErrorCode::UnknownOp);
        assert_eq!(e.id, Some(Id::number(8)));
        assert_eq!(
            e.error.message,
            "unknown op; expected one of create, delete, publish, subscribe, unsubscribe, \
             history, reply, channels, ping, challenge, auth, refresh"
        );
    }

    #[test]
    fn every_decode_error_has_a_code_and_keeps_the_id() {
        let e = err("not json");
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert_eq!(e.id, None);
        let e = err(r#"{"op":"subscribe","id":7,"channel":"news","extra":1}"#);
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert_eq!(e.id, Some(Id::number(7)));
        let e = err(r#"{"op":"subscribe","id":9,"channel":"bad name"}"#);
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert_eq!(e.id, Some(Id::number(9)));
        for s in [
            r#"{"op":"subscribe","id":10,"channel":"c","start":"x"}"#,
            r#"{"op":"history","id":10,"channel":"c","limit":0}"#,
            r#"{"op":"create","id":10,"channel":"c","options":{"x":1}}"#,
            r#"{"op":"publish","id":10,"channel":"c","data":1,"msg_id":""}"#,
            r#"{"op":"reply","id":10,"channel":"c","offset":0,"data":1}"#,
            r#"{"op":"channels","id":10,"after":""}"#,
            r#"{"op":"channels","id":10,"channel":"c"}"#,
        ] {
            let e = err(s);
            assert_eq!(
                (e.error.code, e.id),
                (ErrorCode::BadRequest, Some(Id::number(10))),
                "{s}"
            );
        }
        for s in [
            r#"{"op":"subscribe"}"#,
            r#"{"op":"publish","channel":"x"}"#,
            r#"{"op":"create","channel":"x","data":1}"#,
            r#"{"op":"ping","channel":"x"}"#,
            r#"{"id":1}"#,
            r#"{"op":1}"#,
            r#"[]"#,
            r#"["publish", 7, "arr", {"x":1}]"#,
            r#"["ping"]"#,
            r#""ping""#,
            r#"{"op":"subscribe","channel":5}"#,
            r#"{"op":"subscribe","channel":"a","channel":"b"}"#,
            r#"{"op":"subscribe","channel":"a","start":"new","start":"new"}"#,
            r#"{"op":"ping","id":{"a":1}}"#,
            r#"{"op":"ping","id":true}"#,
        ] {
            assert_eq!(err(s).error.code, ErrorCode::BadRequest, "{s}");
        }
        let long = format!(r#"{{"op":"ping","id":"{}"}}"#, "x".repeat(200));
        assert_eq!(err(&long).error.code, ErrorCode::BadRequest);
        assert_eq!(
            decode_request(&Bytes::from_static(b"\xff\xfe"))
                .unwrap_err()
                .error
                .code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn errors_do_not_leak_internals() {
        for s in [
            r#"{"op":1}"#,
            r#"{"x":1}"#,
            "{",
            r#"{"op":"publish","channel":["a"]}"#,
            r#"{"op":"subscribe","channel":"c","start":{"last":"x"}}"#,
            r#"{"op":"subscribe","channel":"c","start":{"bogus":1}}"#,
            r#"{"op":"create","channel":"c","options":{"bogus":1}}"#,
            r#"{"op":"create","channel":"c","options":{"replies":"yes"}}"#,
            r#"{"op":"history","channel":"c","limit":"x"}"#,
            r#"{"op":"publish","channel":"c","data":1,"msg_id":5}"#,
            r#"{"op":"channels","after":"a/b"}"#,
        ] {
            let msg = err(s).error.message;
            for leak in [
                "RawRequest",
                "RawStart",
                "RawOptions",
                "Field",
                "line ",
                "column",
                "serde",
                "invalid type",
                "unknown field",
                "expected u64",
            ] {
                assert!(!msg.contains(leak), "{s} -> {msg}");
            }
        }
    }

    #[test]
    fn client_side_field_encoders_round_trip() {
        for start in [
            Start::New,
            Start::Oldest,
            Start::Last(1),
            Start::Last(u64::MAX),
            Start::After {
                epoch: Epoch(0xab),
                offset: Offset(0),
            },
        ] {
            let req = format!(
                r#"{{"op":"subscribe","channel":"c","start":{}}}"#,
                start_json(start)
            );
            assert_eq!(start_of(&req), start);
        }
        assert_eq!(
            start_json(Start::After {
                epoch: Epoch(0xab),
                offset: Offset(3)
            }),
            r#"{"epoch":"00000000000000ab","offset":3}"#
        );
        assert_eq!(options_json(&ChannelOptions::default()), "{}");
        let all = ChannelOptions {
            backlog_messages: Some(1),
            backlog_seconds: Some(2),
            max_message_bytes: Some(3),
            max_subscribers: Some(4),
            replies: Some(true),
        };
        assert_eq!(
            options_json(&all),
            r#"{"backlog_messages":1,"backlog_seconds":2,"max_message_bytes":3,"max_subscribers":4,"replies":true}"#
        );
        let some = ChannelOptions {
            max_subscribers: Some(9),
            replies: Some(false),
            ..ChannelOptions::default()
        };
        assert_eq!(
            options_json(&some),
            r#"{"max_subscribers":9,"replies":false}"#
        );
        for options in [ChannelOptions::default(), all, some] {
            let req = format!(
                r#"{{"op":"create","channel":"c","options":{}}}"#,
                options_json(&options)
            );
            assert_eq!(
                op(&req),
                Op::Create {
                    channel: ch("c"),
                    options
                }
            );
        }
    }
}
