//! Decoding what the server sends, as a v1 client sees it (used by the client library and
//! tests). Lenient where the server is strict: unknown fields are ignored, so a newer server's
//! extra fields do not break an older client.

// Numbers decoded from the wire (offsets, limits, `last`, epochs, lengths) meet arithmetic here:
// none may overflow (checked or saturating operations only).
#![warn(clippy::arithmetic_side_effects)]

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// A message from the server.
// A client decodes one message at a time and never stores them in bulk: boxing the reply
// would cost an allocation per message for no memory saved.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// The reply to a request.
    Reply(Reply),
    /// A message published on a subscribed channel.
    Message {
        channel: String,
        offset: u64,
        /// The published JSON value, as its text.
        data: String,
    },
    /// This subscriber missed offsets `from..=to` of the channel.
    Gap { channel: String, from: u64, to: u64 },
    /// The subscription ended (e.g. `reason` `deleted`); nothing more follows for it.
    Closed { channel: String, reason: String },
    /// A reply to message `offset` of the channel, which this connection published.
    ReplyEvent {
        channel: String,
        offset: u64,
        /// Who replied, as the server names it.
        from: String,
        /// The reply's JSON value, as its text.
        data: String,
    },
}

/// A reply to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub id: Option<serde_json::Value>,
    pub result: Result<ReplyOk, WireError>,
}

/// The fields a successful reply may carry; which ones depends on the op.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
pub struct ReplyOk {
    /// `create`: false when the channel already existed.
    #[serde(default)]
    pub created: Option<bool>,
    /// `create`, `publish`, `subscribe`, `history`: the channel's epoch (16 hex digits).
    #[serde(default)]
    pub epoch: Option<String>,
    /// `publish`: the message's offset; `subscribe`, `history`: the channel's last offset.
    #[serde(default)]
    pub offset: Option<u64>,
    /// `publish`: the `msg_id` had been published before.
    #[serde(default)]
    pub duplicate: Option<bool>,
    /// `subscribe`, `history`: the first offset that follows.
    #[serde(default)]
    pub from: Option<u64>,
    /// `subscribe`, `history` from an epoch and offset: whether everything missed follows.
    #[serde(default)]
    pub recovered: Option<bool>,
    /// With `"recovered":false`: what was lost.
    #[serde(default)]
    pub lost: Option<LostWire>,
    /// `history`: the messages read.
    #[serde(default)]
    pub messages: Option<Vec<HistoryMessage>>,
    /// `history`, `channels`: whether there is more to read.
    #[serde(default)]
    pub more: Option<bool>,
    /// `channels`: the channels listed.
    #[serde(default)]
    pub channels: Option<Vec<ChannelInfoWire>>,
    /// `delete`.
    #[serde(default)]
    pub deleted: Option<bool>,
    /// `challenge`: the base64 challenge to sign.
    #[serde(default)]
    pub challenge: Option<String>,
    /// `auth`: the publisher the connection authenticated as.
    #[serde(default)]
    pub publisher: Option<String>,
    /// `auth`/`refresh` with an access token: its subject.
    #[serde(default)]
    pub subject: Option<String>,
    /// `auth`/`refresh` with an access token: when it expires (Unix seconds).
    #[serde(default)]
    pub expires_at: Option<u64>,
}

/// The `lost` object of a resume that could not recover everything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LostWire {
    /// `epoch_changed` or `expired`.
    pub reason: String,
    /// With `expired`: the first offset lost.
    #[serde(default)]
    pub from: Option<u64>,
    /// With `expired`: the last offset lost.
    #[serde(default)]
    pub to: Option<u64>,
}

/// One message of a `history` reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HistoryMessage {
    pub offset: u64,
    /// The published JSON value, as its text.
    #[serde(deserialize_with = "json_text")]
    pub data: String,
}

/// One channel of a `channels` reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChannelInfoWire {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
    pub subscribers: u64,
    pub backlog: BacklogWire,
}

/// The backlog of a listed channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BacklogWire {
    pub messages: u64,
    pub bytes: u64,
    pub first_offset: u64,
}

/// An error as carried on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    pub code: String,
    pub message: String,
}

/// Any JSON value (`null` included), kept as its text.
fn json_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    <Box<RawValue>>::deserialize(d).map(|raw| raw.get().to_owned())
}

/// Like [`json_text`], for a field that may be absent: `null` is a value, not absence.
fn some_json_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    json_text(d).map(Some)
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
    #[serde(default, deserialize_with = "some_json_text")]
    data: Option<String>,
    /// An offset in replies and gaps, the replier's name in reply events.
    #[serde(default)]
    from: Option<serde_json::Value>,
    #[serde(default)]
    to: Option<u64>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    created: Option<bool>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    duplicate: Option<bool>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    lost: Option<LostWire>,
    #[serde(default)]
    messages: Option<Vec<HistoryMessage>>,
    #[serde(default)]
    more: Option<bool>,
    #[serde(default)]
    channels: Option<Vec<ChannelInfoWire>>,
    #[serde(default)]
    deleted: Option<bool>,
    #[serde(default)]
    challenge: Option<String>,
    #[serde(default)]
    publisher: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    expires_at: Option<u64>,
}

/// Decodes a server-to-client v1 message: a reply or an event.
pub fn decode_server_message(text: &str) -> Result<ServerMessage, serde_json::Error> {
    use serde::de::Error;
    let raw: RawServerMessage = serde_json::from_str(text)?;
    if let Some(event) = raw.event {
        let malformed = || serde_json::Error::custom(format!("malformed {event} event"));
        let from_offset = raw.from.as_ref().and_then(serde_json::Value::as_u64);
        let from_name = match raw.from {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        };
        return match event.as_str() {
            "message" => match (raw.channel, raw.offset, raw.data) {
                (Some(channel), Some(offset), Some(data)) => Ok(ServerMessage::Message {
                    channel,
                    offset,
                    data,
                }),
                _ => Err(malformed()),
            },
            "gap" => match (raw.channel, from_offset, raw.to) {
                (Some(channel), Some(from), Some(to)) => {
                    Ok(ServerMessage::Gap { channel, from, to })
                }
                _ => Err(malformed()),
            },
            "closed" => match (raw.channel, raw.reason) {
                (Some(channel), Some(reason)) => Ok(ServerMessage::Closed { channel, reason }),
                _ => Err(malformed()),
            },
            "reply" => match (raw.channel, raw.offset, from_name, raw.data) {
                (Some(channel), Some(offset), Some(from), Some(data)) => {
                    Ok(ServerMessage::ReplyEvent {
                        channel,
                        offset,
                        from,
                        data,
                    })
                }
                _ => Err(malformed()),
            },
            _ => Err(serde_json::Error::custom(format!("unknown event {event}"))),
        };
    }
    let result = match (raw.ok, raw.error) {
        (Some(true), _) => {
            let from =
                match raw.from {
                    None => None,
                    Some(v) => Some(v.as_u64().ok_or_else(|| {
                        serde_json::Error::custom("reply `from` is not an offset")
                    })?),
                };
            Ok(ReplyOk {
                created: raw.created,
                epoch: raw.epoch,
                offset: raw.offset,
                duplicate: raw.duplicate,
                from,
                recovered: raw.recovered,
                lost: raw.lost,
                messages: raw.messages,
                more: raw.more,
                channels: raw.channels,
                deleted: raw.deleted,
                challenge: raw.challenge,
                publisher: raw.publisher,
                subject: raw.subject,
                expires_at: raw.expires_at,
            })
        }
        (Some(false), Some(e)) => Err(e),
        _ => return Err(serde_json::Error::custom("not a reply")),
    };
    Ok(ServerMessage::Reply(Reply { id: raw.id, result }))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::v1::{
        Id, Success, encode_closed, encode_delivery, encode_error, encode_gap, encode_http_ok,
        encode_ok, encode_reply_event,
    };
    use crate::{
        ChannelInfo, ChannelName, Epoch, ErrorCode, Lost, Offset, Payload, ProtoError, Recovery,
        Subscription,
    };

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn dec(b: &[u8]) -> ServerMessage {
        decode_server_message(std::str::from_utf8(b).unwrap()).unwrap()
    }

    fn ok_of(text: &str) -> (Option<serde_json::Value>, ReplyOk) {
        match dec(text.as_bytes()) {
            ServerMessage::Reply(Reply { id, result: Ok(ok) }) => (id, ok),
            other => panic!("{other:?}"),
        }
    }

    const E: Epoch = Epoch(0x1234_5678_9abc_def0);
    const E_TEXT: &str = "123456789abcdef0";

    fn sub(recovery: Option<Recovery>) -> Subscription {
        Subscription {
            epoch: E,
            offset: Offset(9),
            from: Offset(4),
            recovery,
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
                    offset: Some(9),
                    ..ReplyOk::default()
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

    #[test]
    fn simple_replies_round_trip() {
        let (id, ok) = ok_of(&encode_ok(Some(&Id::number(5)), Success::Empty));
        assert_eq!((id, ok), (Some(serde_json::json!(5)), ReplyOk::default()));
        let (id, ok) = ok_of(&encode_ok(
            None,
            Success::Created {
                created: true,
                epoch: E,
            },
        ));
        assert_eq!(id, None);
        assert_eq!(
            ok,
            ReplyOk {
                created: Some(true),
                epoch: Some(E_TEXT.into()),
                ..ReplyOk::default()
            }
        );
        for duplicate in [false, true] {
            let (_, ok) = ok_of(&encode_ok(
                Some(&Id::from_json("\"x\"").unwrap()),
                Success::Published {
                    epoch: E,
                    offset: Offset(7),
                    duplicate,
                },
            ));
            assert_eq!(
                ok,
                ReplyOk {
                    epoch: Some(E_TEXT.into()),
                    offset: Some(7),
                    duplicate: duplicate.then_some(true),
                    ..ReplyOk::default()
                }
            );
        }
        let (_, ok) = ok_of(&encode_http_ok(Success::Deleted));
        assert_eq!(
            ok,
            ReplyOk {
                deleted: Some(true),
                ..ReplyOk::default()
            }
        );
    }

    #[test]
    fn subscribed_round_trips() {
        let base = ReplyOk {
            epoch: Some(E_TEXT.into()),
            offset: Some(9),
            from: Some(4),
            ..ReplyOk::default()
        };
        let cases = [
            (None, base.clone()),
            (
                Some(Recovery::Complete),
                ReplyOk {
                    recovered: Some(true),
                    ..base.clone()
                },
            ),
            (
                Some(Recovery::Incomplete(Lost::EpochChanged)),
                ReplyOk {
                    recovered: Some(false),
                    lost: Some(LostWire {
                        reason: "epoch_changed".into(),
                        from: None,
                        to: None,
                    }),
                    ..base.clone()
                },
            ),
            (
                Some(Recovery::Incomplete(Lost::Expired {
                    from: Offset(1),
                    to: Offset(3),
                })),
                ReplyOk {
                    recovered: Some(false),
                    lost: Some(LostWire {
                        reason: "expired".into(),
                        from: Some(1),
                        to: Some(3),
                    }),
                    ..base.clone()
                },
            ),
        ];
        for (recovery, expected) in cases {
            let (_, ok) = ok_of(&encode_ok(
                Some(&Id::number(1)),
                Success::Subscribed(sub(recovery)),
            ));
            assert_eq!(ok, expected, "{recovery:?}");
        }
    }

    #[test]
    fn history_round_trips() {
        let messages = [
            (
                Offset(4),
                Payload::from_json_bytes(Bytes::from_static(b"{\"a\": [1, 2]}")).unwrap(),
            ),
            (Offset(5), Payload::text("hé\"")),
            (
                Offset(6),
                Payload::from_json_bytes(Bytes::from_static(b"null")).unwrap(),
            ),
        ];
        let (_, ok) = ok_of(&encode_http_ok(Success::History {
            sub: sub(Some(Recovery::Complete)),
            messages: &messages,
            more: true,
        }));
        assert_eq!(
            ok,
            ReplyOk {
                epoch: Some(E_TEXT.into()),
                offset: Some(9),
                from: Some(4),
                recovered: Some(true),
                messages: Some(vec![
                    HistoryMessage {
                        offset: 4,
                        data: "{\"a\": [1, 2]}".into()
                    },
                    HistoryMessage {
                        offset: 5,
                        data: "\"hé\\\"\"".into()
                    },
                    HistoryMessage {
                        offset: 6,
                        data: "null".into()
                    },
                ]),
                more: Some(true),
                ..ReplyOk::default()
            }
        );
    }

    #[test]
    fn channels_round_trip() {
        let channels = [ChannelInfo {
            channel: ch("news.a"),
            epoch: E,
            offset: Offset(5),
            subscribers: 2,
            backlog_messages: 3,
            backlog_bytes: 512,
            first_offset: Offset(3),
        }];
        let (_, ok) = ok_of(&encode_ok(
            Some(&Id::number(1)),
            Success::Channels {
                channels: &channels,
                more: false,
            },
        ));
        assert_eq!(
            ok,
            ReplyOk {
                channels: Some(vec![ChannelInfoWire {
                    channel: "news.a".into(),
                    epoch: E_TEXT.into(),
                    offset: 5,
                    subscribers: 2,
                    backlog: BacklogWire {
                        messages: 3,
                        bytes: 512,
                        first_offset: 3
                    }
                }]),
                more: Some(false),
                ..ReplyOk::default()
            }
        );
    }

    #[test]
    fn errors_round_trip() {
        for code in ErrorCode::ALL {
            let text = encode_error(
                Some(&Id::number(2)),
                &ProtoError::new(code, "a \"quoted\"\nmessage"),
            );
            match dec(text.as_bytes()) {
                ServerMessage::Reply(Reply { id, result: Err(e) }) => {
                    assert_eq!(id, Some(serde_json::json!(2)));
                    assert_eq!(e.code, code.as_str());
                    assert_eq!(e.message, "a \"quoted\"\nmessage");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn events_round_trip() {
        let p = Payload::from_json_bytes(Bytes::from_static(b"{\"a\": 1}")).unwrap();
        assert_eq!(
            dec(&encode_delivery(&ch("prices"), Offset(17), &p)),
            ServerMessage::Message {
                channel: "prices".into(),
                offset: 17,
                data: "{\"a\": 1}".into()
            }
        );
        let null = Payload::from_json_bytes(Bytes::from_static(b"null")).unwrap();
        assert_eq!(
            dec(&encode_delivery(&ch("prices"), Offset(1), &null)),
            ServerMessage::Message {
                channel: "prices".into(),
                offset: 1,
                data: "null".into()
            }
        );
        assert_eq!(
            dec(&encode_gap(&ch("prices"), Offset(3), Offset(8))),
            ServerMessage::Gap {
                channel: "prices".into(),
                from: 3,
                to: 8
            }
        );
        assert_eq!(
            dec(&encode_closed(&ch("prices"), "deleted")),
            ServerMessage::Closed {
                channel: "prices".into(),
                reason: "deleted".into()
            }
        );
        assert_eq!(
            dec(&encode_reply_event(
                &ch("rpc"),
                Offset(7),
                "peer \"1\"",
                &null
            )),
            ServerMessage::ReplyEvent {
                channel: "rpc".into(),
                offset: 7,
                from: "peer \"1\"".into(),
                data: "null".into()
            }
        );
    }

    #[test]
    fn refuses_unknown_and_malformed_messages() {
        for text in [
            r#"{"event":"jump","channel":"a"}"#,
            r#"{"event":"message","channel":"a","offset":1}"#,
            r#"{"event":"gap","channel":"a","from":"x","to":2}"#,
            r#"{"event":"closed","channel":"a"}"#,
            r#"{"event":"reply","channel":"a","offset":1,"from":3,"data":1}"#,
            r#"{"id":1,"ok":true,"from":"x"}"#,
            r#"{"id":1}"#,
            r#"{"id":1,"ok":false}"#,
            "[]",
        ] {
            assert!(decode_server_message(text).is_err(), "{text}");
        }
    }
}
