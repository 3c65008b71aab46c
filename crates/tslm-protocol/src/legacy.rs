//! The original TSLM protocol: serde's externally tagged JSON commands and replies, kept for the
//! clients that already speak it. See docs/protocol.md, "The original protocol".

// Numbers decoded from the wire (offsets, limits, `last`, epochs, lengths) meet arithmetic here:
// none may overflow (checked or saturating operations only).
#![warn(clippy::arithmetic_side_effects)]

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::payload::subslice_range;
use crate::{ChannelName, Payload, PayloadKind};

/// The original permission names, which are also the command names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    CreateChannel,
    Subscribe,
    NotifyChannel,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::CreateChannel => "CreateChannel",
            Command::Subscribe => "Subscribe",
            Command::NotifyChannel => "NotifyChannel",
        }
    }
}

/// A decoded original-protocol command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    CreateChannel(ChannelName),
    Subscribe(ChannelName),
    NotifyChannel(ChannelName, Payload),
}

impl Request {
    pub fn command(&self) -> Command {
        match self {
            Request::CreateChannel(_) => Command::CreateChannel,
            Request::Subscribe(_) => Command::Subscribe,
            Request::NotifyChannel(..) => Command::NotifyChannel,
        }
    }

    pub fn channel(&self) -> &ChannelName {
        match self {
            Request::CreateChannel(c) | Request::Subscribe(c) | Request::NotifyChannel(c, _) => c,
        }
    }
}

/// Every error the original protocol can answer with; `Display` is the exact original text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("Invalid message format: {0}")]
    InvalidFormat(Cow<'static, str>),
    #[error("Binary messages not supported")]
    Binary,
    #[error("Message too large")]
    TooLarge,
    #[error("Rate limit exceeded")]
    RateLimited,
    /// Not in the original, which had no such limit.
    #[error("Subscription limit exceeded")]
    SubscriptionLimit,
    #[error("Channel not found: {0}")]
    ChannelNotFound(ChannelName),
    #[error("Channel '{0}' is already registered")]
    AlreadyRegistered(ChannelName),
    #[error("Permission denied: {}", .0.as_str())]
    PermissionDenied(Command),
}

#[derive(Deserialize)]
enum RawCommand<'a> {
    CreateChannel(#[serde(borrow)] Cow<'a, str>),
    Subscribe(#[serde(borrow)] Cow<'a, str>),
    NotifyChannel(
        #[serde(borrow)] Cow<'a, str>,
        #[serde(borrow)] RawPayload<'a>,
    ),
}

#[derive(Deserialize)]
enum RawPayload<'a> {
    Text(#[serde(borrow)] &'a RawValue),
    Json(#[serde(borrow)] &'a RawValue),
}

const SHAPE: &str = "expected {\"CreateChannel\":name}, {\"Subscribe\":name} or \
{\"NotifyChannel\":[name,{\"Text\":string}]} / {\"NotifyChannel\":[name,{\"Json\":value}]}";

/// Decodes one command from a text frame (`frame` must be the frame's bytes; a published payload
/// is kept as a zero-copy slice of it).
pub fn decode_request(frame: &Bytes) -> Result<Request, Error> {
    let text = std::str::from_utf8(frame)
        .map_err(|_| Error::InvalidFormat("message is not UTF-8".into()))?;
    let raw: RawCommand<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            // serde_json's syntax messages ("expected value at line 1 column 1") name no types,
            // and original clients may match on them.
            Error::InvalidFormat(e.to_string().into())
        } else {
            Error::InvalidFormat(SHAPE.into())
        }
    })?;
    let name =
        |n: &str| ChannelName::new(n).map_err(|e| Error::InvalidFormat(e.to_string().into()));
    Ok(match raw {
        RawCommand::CreateChannel(n) => Request::CreateChannel(name(&n)?),
        RawCommand::Subscribe(n) => Request::Subscribe(name(&n)?),
        RawCommand::NotifyChannel(n, payload) => {
            let (raw, kind) = match payload {
                RawPayload::Text(r) => {
                    if !r.get().starts_with('"') {
                        return Err(Error::InvalidFormat(
                            "a Text payload must be a string".into(),
                        ));
                    }
                    (r, PayloadKind::Text)
                }
                RawPayload::Json(r) => (r, PayloadKind::Json),
            };
            let range = subslice_range(frame, raw.get().as_bytes());
            Request::NotifyChannel(
                name(&n)?,
                Payload::from_validated(frame.slice(range), Some(kind)),
            )
        }
    })
}

/// `{"Success":"Command executed: CreateChannel(\"news\")"}`. Unlike the original, a publish's
/// payload is not echoed back: `NotifyChannel("news")`.
pub fn encode_success(command: Command, channel: &ChannelName) -> String {
    // Channel names need no escaping in JSON or in Rust's Debug syntax (see ChannelName).
    format!(
        "{{\"Success\":\"Command executed: {}(\\\"{}\\\")\"}}",
        command.as_str(),
        channel
    )
}

/// `{"Error":"…"}`
pub fn encode_error(error: &Error) -> String {
    let text = serde_json::Value::String(error.to_string()).to_string();
    format!("{{\"Error\":{text}}}")
}

/// The delivery frame `{"ChannelMessage":["news",{"Text":"hello"}]}` (or `{"Json":…}`), built once
/// per published message and shared by every original-protocol subscriber.
pub fn encode_delivery(channel: &ChannelName, data: &Payload) -> Bytes {
    const A: &[u8] = b"{\"ChannelMessage\":[\"";
    let kind: &[u8] = match data.kind() {
        PayloadKind::Text => b"\",{\"Text\":",
        PayloadKind::Json => b"\",{\"Json\":",
    };
    let json = data.json();
    let len = [A.len(), channel.len(), kind.len(), json.len(), 3]
        .into_iter()
        .fold(0usize, usize::saturating_add);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(A);
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(json);
    out.extend_from_slice(b"}]}");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<Request, Error> {
        decode_request(&Bytes::copy_from_slice(s.as_bytes()))
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    #[test]
    fn decodes_the_original_commands() {
        assert_eq!(
            dec(r#"{"CreateChannel":"news"}"#),
            Ok(Request::CreateChannel(ch("news")))
        );
        assert_eq!(
            dec(r#"{"Subscribe": "news"}"#),
            Ok(Request::Subscribe(ch("news")))
        );
        match dec(r#"{"NotifyChannel": ["news", {"Text": "hello"}]}"#).unwrap() {
            Request::NotifyChannel(c, p) => {
                assert_eq!(c, ch("news"));
                assert_eq!(&p.json()[..], b"\"hello\"");
                assert_eq!(p.kind(), PayloadKind::Text);
            }
            other => panic!("{other:?}"),
        }
        match dec(r#"{"NotifyChannel":["news",{"Json":{"price":101.5,"tags":["a","b"]}}]}"#)
            .unwrap()
        {
            Request::NotifyChannel(_, p) => {
                assert_eq!(&p.json()[..], br#"{"price":101.5,"tags":["a","b"]}"#);
                assert_eq!(p.kind(), PayloadKind::Json);
            }
            other => panic!("{other:?}"),
        }
        // A Json payload that is a string stays Json for original-protocol subscribers.
        match dec(r#"{"NotifyChannel":["news",{"Json":"s"}]}"#).unwrap() {
            Request::NotifyChannel(_, p) => assert_eq!(p.kind(), PayloadKind::Json),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn original_error_texts() {
        assert_eq!(
            dec("hello").unwrap_err().to_string(),
            "Invalid message format: expected value at line 1 column 1"
        );
        assert_eq!(
            dec(r#"{"Subscribe":"#).unwrap_err().to_string(),
            "Invalid message format: EOF while parsing a value at line 1 column 13"
        );
        for shape in [
            r#"{"subscribe":"news"}"#,
            r#"{"Subscribe":["news"]}"#,
            r#"{"NotifyChannel":["news","hello"]}"#,
            r#"{"NotifyChannel":["news",{"Raw":"x"}]}"#,
            r#"{"NotifyChannel":{"a":1}}"#,
            r#""Subscribe""#,
            r#"{"Unsubscribe":"news"}"#,
        ] {
            let msg = dec(shape).unwrap_err().to_string();
            assert!(msg.starts_with("Invalid message format: "), "{msg}");
            assert!(
                !msg.contains("RawCommand") && !msg.contains("RawPayload"),
                "{msg}"
            );
        }
        assert!(dec(r#"{"NotifyChannel":["news",{"Text":1}]}"#).is_err());
        assert!(
            dec(r#"{"Subscribe":""}"#)
                .unwrap_err()
                .to_string()
                .starts_with("Invalid message format: channel name")
        );
        assert_eq!(Error::Binary.to_string(), "Binary messages not supported");
        assert_eq!(Error::TooLarge.to_string(), "Message too large");
        assert_eq!(Error::RateLimited.to_string(), "Rate limit exceeded");
        assert_eq!(
            Error::ChannelNotFound(ch("news")).to_string(),
            "Channel not found: news"
        );
        assert_eq!(
            Error::AlreadyRegistered(ch("news")).to_string(),
            "Channel 'news' is already registered"
        );
        assert_eq!(
            Error::PermissionDenied(Command::Subscribe).to_string(),
            "Permission denied: Subscribe"
        );
    }

    #[test]
    fn encodes_original_replies() {
        assert_eq!(
            encode_success(Command::CreateChannel, &ch("news")),
            r#"{"Success":"Command executed: CreateChannel(\"news\")"}"#
        );
        assert_eq!(
            encode_success(Command::NotifyChannel, &ch("news")),
            r#"{"Success":"Command executed: NotifyChannel(\"news\")"}"#
        );
        assert_eq!(
            encode_error(&Error::ChannelNotFound(ch("news"))),
            r#"{"Error":"Channel not found: news"}"#
        );
        let parsed: serde_json::Value =
            serde_json::from_str(&encode_success(Command::Subscribe, &ch("a.b"))).unwrap();
        assert_eq!(parsed["Success"], "Command executed: Subscribe(\"a.b\")");
    }

    #[test]
    fn encodes_deliveries() {
        assert_eq!(
            &encode_delivery(&ch("news"), &Payload::text("hello"))[..],
            br#"{"ChannelMessage":["news",{"Text":"hello"}]}"#
        );
        let p = Payload::from_json_bytes(Bytes::from_static(br#"{"a":1}"#)).unwrap();
        assert_eq!(
            &encode_delivery(&ch("news"), &p)[..],
            br#"{"ChannelMessage":["news",{"Json":{"a":1}}]}"#
        );
    }
}
