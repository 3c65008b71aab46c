//! Protocol v1: `{"op": ..., "id": ..., "channel": ..., "data": ...}` requests, one reply per
//! request, and `{"event": "message", ...}` deliveries. See docs/protocol.md.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::payload::subslice_range;
use crate::{ChannelName, ErrorCode, Offset, Payload, ProtoError};

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

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: Option<Id>,
    pub op: Op,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create { channel: ChannelName },
    Publish { channel: ChannelName, data: Payload },
    Subscribe { channel: ChannelName },
    Unsubscribe { channel: ChannelName },
    Ping,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Publish { .. } => "publish",
            Op::Subscribe { .. } => "subscribe",
            Op::Unsubscribe { .. } => "unsubscribe",
            Op::Ping => "ping",
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
#[derive(Default)]
enum Field<'a> {
    #[default]
    Absent,
    Present(&'a RawValue),
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
}

#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

const SHAPE: &str = "a request is a JSON object with a string `op`, an optional `id` (number or \
string), a `channel` string and, for publish, `data`; no other fields";
const OPS: &str = "unknown op; expected one of create, publish, subscribe, unsubscribe, ping";

/// Decodes one request from a text frame. `frame` is the frame's bytes, so that a publish's `data`
/// is kept as a zero-copy slice of it.
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
    let fail = |error: ProtoError| RequestError {
        id: id.clone(),
        error,
    };
    let Some(op) = raw.op else {
        return Err(fail(ProtoError::bad_request("missing `op`")));
    };
    let needs_channel = |op: &str| -> Result<ChannelName, RequestError> {
        let Some(name) = raw.channel.as_deref() else {
            return Err(fail(ProtoError::bad_request(format!(
                "`{op}` needs a `channel`"
            ))));
        };
        ChannelName::new(name).map_err(|e| fail(ProtoError::bad_request(e.to_string())))
    };
    let no_data = |op: &str| -> Result<(), RequestError> {
        match raw.data {
            Field::Absent => Ok(()),
            Field::Present(_) => Err(fail(ProtoError::bad_request(format!(
                "`data` is not allowed with `{op}`"
            )))),
        }
    };
    let op = match &*op {
        "create" => {
            no_data("create")?;
            Op::Create {
                channel: needs_channel("create")?,
            }
        }
        "subscribe" => {
            no_data("subscribe")?;
            Op::Subscribe {
                channel: needs_channel("subscribe")?,
            }
        }
        "unsubscribe" => {
            no_data("unsubscribe")?;
            Op::Unsubscribe {
                channel: needs_channel("unsubscribe")?,
            }
        }
        "publish" => {
            let channel = needs_channel("publish")?;
            let Field::Present(data) = raw.data else {
                return Err(fail(ProtoError::bad_request("`publish` needs `data`")));
            };
            let range = subslice_range(frame, data.get().as_bytes());
            Op::Publish {
                channel,
                data: Payload::from_validated(frame.slice(range), None),
            }
        }
        "ping" => {
            no_data("ping")?;
            if raw.channel.is_some() {
                return Err(fail(ProtoError::bad_request(
                    "`channel` is not allowed with `ping`",
                )));
            }
            Op::Ping
        }
        _ => return Err(fail(ProtoError::new(ErrorCode::UnknownOp, OPS))),
    };
    Ok(Request { id, op })
}

fn no_id(error: ProtoError) -> RequestError {
    RequestError { id: None, error }
}

/// Extra fields of a successful reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Success {
    /// Nothing beyond `ok: true`.
    Empty,
    /// The answer to `create`.
    Created(bool),
    /// The answer to `publish`.
    Published(Offset),
}

fn start_reply(out: &mut String, id: Option<&Id>) {
    out.push_str("{\"id\":");
    out.push_str(id.map_or("null", Id::as_json));
}

/// `{"id":…,"ok":true,…}`
pub fn encode_ok(id: Option<&Id>, ok: Success) -> String {
    let mut out = String::with_capacity(48);
    start_reply(&mut out, id);
    out.push_str(",\"ok\":true");
    push_success(&mut out, ok);
    out
}

/// `{"ok":true,…}`: the HTTP API's success body (HTTP has no request ids).
pub fn encode_http_ok(ok: Success) -> String {
    let mut out = String::from("{\"ok\":true");
    push_success(&mut out, ok);
    out
}

fn push_success(out: &mut String, ok: Success) {
    match ok {
        Success::Empty => {}
        Success::Created(c) => out.push_str(if c {
            ",\"created\":true"
        } else {
            ",\"created\":false"
        }),
        Success::Published(offset) => {
            out.push_str(",\"offset\":");
            out.push_str(itoa::Buffer::new().format(offset.0));
        }
    }
    out.push('}');
}

/// `{"id":…,"ok":false,"error":{"code":…,"message":…}}`
pub fn encode_error(id: Option<&Id>, error: &ProtoError) -> String {
    let mut out = String::with_capacity(96 + error.message.len());
    start_reply(&mut out, id);
    out.push_str(",\"ok\":false,\"error\":");
    push_error_object(&mut out, error);
    out.push('}');
    out
}

/// `{"code":…,"message":…}`, as used by v1 replies and the HTTP API.
pub fn push_error_object(out: &mut String, error: &ProtoError) {
    out.push_str("{\"code\":\"");
    out.push_str(error.code.as_str());
    out.push_str("\",\"message\":");
    out.push_str(&serde_json::Value::String(error.message.to_string()).to_string());
    out.push('}');
}

/// The delivery frame `{"event":"message","channel":…,"offset":…,"data":…}`, built once per
/// published message and shared by every v1 subscriber.
pub fn encode_delivery(channel: &ChannelName, offset: Offset, data: &Payload) -> Bytes {
    const A: &[u8] = b"{\"event\":\"message\",\"channel\":\"";
    const B: &[u8] = b"\",\"offset\":";
    const C: &[u8] = b",\"data\":";
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(offset.0).as_bytes();
    let json = data.json();
    let mut out = Vec::with_capacity(
        A.len() + channel.len() + B.len() + digits.len() + C.len() + json.len() + 1,
    );
    out.extend_from_slice(A);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(B);
    out.extend_from_slice(digits);
    out.extend_from_slice(C);
    out.extend_from_slice(json);
    out.push(b'}');
    Bytes::from(out)
}

/// A message from the server, as a v1 client sees it (used by the client library and tests).
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    Reply(Reply),
    Message {
        channel: String,
        offset: u64,
        /// The published JSON value, as its text.
        data: String,
    },
}

/// A reply to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub id: Option<serde_json::Value>,
    pub result: Result<ReplyOk, WireError>,
}

/// The fields a successful reply may carry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ReplyOk {
    #[serde(default)]
    pub created: Option<bool>,
    #[serde(default)]
    pub offset: Option<u64>,
}

/// An error as carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: String,
    pub message: String,
}

#[derive(Deserialize)]
struct RawServerMessage {
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    error: Option<WireError>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    created: Option<bool>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

/// Decodes a server-to-client v1 message.
pub fn decode_server_message(text: &str) -> Result<ServerMessage, serde_json::Error> {
    use serde::de::Error;
    let raw: RawServerMessage = serde_json::from_str(text)?;
    if let Some(event) = raw.event {
        return match (event.as_str(), raw.channel, raw.offset, raw.data) {
            ("message", Some(channel), Some(offset), Some(data)) => Ok(ServerMessage::Message {
                channel,
                offset,
                data: data.get().to_owned(),
            }),
            _ => Err(serde_json::Error::custom(format!("unknown event {event}"))),
        };
    }
    let result = match (raw.ok, raw.error) {
        (Some(true), _) => Ok(ReplyOk {
            created: raw.created,
            offset: raw.offset,
        }),
        (Some(false), Some(e)) => Err(e),
        _ => return Err(serde_json::Error::custom("not a reply")),
    };
    Ok(ServerMessage::Reply(Reply { id: raw.id, result }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PayloadKind;

    fn dec(s: &str) -> Result<Request, RequestError> {
        decode_request(&Bytes::copy_from_slice(s.as_bytes()))
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn decodes_every_op() {
        let r = dec(r#"{"op":"create","id":1,"channel":"news"}"#).unwrap();
        assert_eq!(r.id, Some(Id::number(1)));
        assert_eq!(
            r.op,
            Op::Create {
                channel: ch("news")
            }
        );
        let r = dec(r#"{"op":"subscribe","id":"a-b","channel":"news"}"#).unwrap();
        assert_eq!(r.id.unwrap().as_json(), "\"a-b\"");
        assert_eq!(
            r.op,
            Op::Subscribe {
                channel: ch("news")
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
        assert_eq!(dec(r#"{"op":"ping","id":null}"#).unwrap().op, Op::Ping);
        let r = dec(r#"{"op":"publish","channel":"p","data": {"x" : [1, 2.5e3]} }"#).unwrap();
        match r.op {
            Op::Publish { channel, data } => {
                assert_eq!(channel, ch("p"));
                assert_eq!(&data.json()[..], br#"{"x" : [1, 2.5e3]}"#);
                assert_eq!(data.kind(), PayloadKind::Json);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publish_null_and_string_data() {
        match dec(r#"{"op":"publish","channel":"p","data":null}"#)
            .unwrap()
            .op
        {
            Op::Publish { data, .. } => assert_eq!(&data.json()[..], b"null"),
            other => panic!("{other:?}"),
        }
        match dec(r#"{"op":"publish","channel":"p","data":"hi \"x\""}"#)
            .unwrap()
            .op
        {
            Op::Publish { data, .. } => {
                assert_eq!(&data.json()[..], br#""hi \"x\"""#);
                assert_eq!(data.kind(), PayloadKind::Text);
            }
            other => panic!("{other:?}"),
        }
    }

    fn err(s: &str) -> RequestError {
        dec(s).unwrap_err()
    }

    #[test]
    fn every_decode_error_has_a_code_and_keeps_the_id() {
        let e = err("not json");
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert_eq!(e.id, None);
        let e = err(r#"{"op":"subscribe","id":7,"channel":"news","extra":1}"#);
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert_eq!(e.id, Some(Id::number(7)));
        let e = err(r#"{"op":"jump","id":8,"channel":"news"}"#);
        assert_eq!(e.error.code, ErrorCode::UnknownOp);
        assert_eq!(e.id, Some(Id::number(8)));
        let e = err(r#"{"op":"subscribe","id":9,"channel":"bad name"}"#);
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert_eq!(e.id, Some(Id::number(9)));
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
        ] {
            let msg = err(s).error.message;
            for leak in [
                "RawRequest",
                "Field",
                "line ",
                "column",
                "serde",
                "invalid type",
            ] {
                assert!(!msg.contains(leak), "{s} -> {msg}");
            }
        }
    }

    #[test]
    fn encodes_replies_exactly() {
        let id = Id::number(4);
        assert_eq!(
            encode_ok(Some(&id), Success::Empty),
            r#"{"id":4,"ok":true}"#
        );
        assert_eq!(
            encode_ok(None, Success::Created(true)),
            r#"{"id":null,"ok":true,"created":true}"#
        );
        assert_eq!(
            encode_ok(
                Some(&Id::from_json("\"q\"").unwrap()),
                Success::Published(Offset(17))
            ),
            r#"{"id":"q","ok":true,"offset":17}"#
        );
        assert_eq!(
            encode_http_ok(Success::Published(Offset(3))),
            r#"{"ok":true,"offset":3}"#
        );
        assert_eq!(
            encode_http_ok(Success::Created(false)),
            r#"{"ok":true,"created":false}"#
        );
        assert_eq!(
            encode_error(
                Some(&id),
                &ProtoError::new(ErrorCode::Forbidden, "no \"way\"")
            ),
            r#"{"id":4,"ok":false,"error":{"code":"forbidden","message":"no \"way\""}}"#
        );
    }

    #[test]
    fn encodes_delivery_with_the_publishers_bytes() {
        let p = Payload::from_json_bytes(Bytes::from_static(b"{\"a\": 1}")).unwrap();
        let f = encode_delivery(&ch("prices"), Offset(17), &p);
        assert_eq!(
            &f[..],
            br#"{"event":"message","channel":"prices","offset":17,"data":{"a": 1}}"#
        );
        match decode_server_message(std::str::from_utf8(&f).unwrap()).unwrap() {
            ServerMessage::Message {
                channel,
                offset,
                data,
            } => {
                assert_eq!(
                    (channel.as_str(), offset, data.as_str()),
                    ("prices", 17, "{\"a\": 1}")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_replies() {
        let m = decode_server_message(r#"{"id":3,"ok":true,"offset":9}"#).unwrap();
        assert_eq!(
            m,
            ServerMessage::Reply(Reply {
                id: Some(serde_json::json!(3)),
                result: Ok(ReplyOk {
                    created: None,
                    offset: Some(9)
                })
            })
        );
        let m = decode_server_message(
            r#"{"id":null,"ok":false,"error":{"code":"not_found","message":"m"}}"#,
        )
        .unwrap();
        match m {
            ServerMessage::Reply(Reply { result: Err(e), .. }) => assert_eq!(e.code, "not_found"),
            other => panic!("{other:?}"),
        }
    }
}
