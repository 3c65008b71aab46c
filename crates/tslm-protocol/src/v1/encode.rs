//! Encoding replies (`{"id":…,"ok":…}`) and events (`{"event":…}`), server side.
//!
//! Everything is written by hand in a fixed field order: channel names need no escaping (their
//! alphabet has no JSON-special character), payloads are copied as the publisher wrote them, and
//! the few free-form strings (error messages, a reply's sender, a close reason) are escaped.

use bytes::Bytes;

use super::{Id, push_epoch, push_json_str, push_u64};
use crate::{ChannelInfo, ChannelName, Lost, Offset, Payload, ProtoError, Recovery, Subscription};

/// Extra fields of a successful reply. Borrows the messages or channels it lists, so a reply is
/// built from the hub's answer without copying payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Success<'a> {
    /// Nothing beyond `ok: true`.
    Empty,
    /// The answer to `create`: `"created":…,"epoch":…` (`created` is false when the channel
    /// already existed).
    Created { created: bool, epoch: crate::Epoch },
    /// The answer to `publish`: `"epoch":…,"offset":…`, and `"duplicate":true` when the
    /// `msg_id` had been published before (`offset` is then the earlier message's).
    Published {
        epoch: crate::Epoch,
        offset: Offset,
        duplicate: bool,
    },
    /// The answer to `subscribe`: `"epoch":…,"offset":…,"from":…` and, for a resume,
    /// `"recovered":…` (and `"lost":…`).
    Subscribed(Subscription),
    /// The answer to `history`: the subscription-like position (`from` is the first offset
    /// returned, or `offset + 1`), then `"messages":[{"offset":…,"data":…},…],"more":…`.
    History {
        sub: Subscription,
        messages: &'a [(Offset, Payload)],
        /// Whether more messages follow the last one returned.
        more: bool,
    },
    /// The answer to `channels`: `"channels":[…],"more":…`.
    Channels {
        channels: &'a [ChannelInfo],
        /// Whether more channels follow the last one listed.
        more: bool,
    },
    /// The answer to `delete`: `"deleted":true`.
    Deleted,
    /// The answer to `challenge`: `"challenge":"<base64>"`.
    Challenge(&'a str),
    /// The answer to `auth` and `refresh`: `"publisher":…` for a publisher, or
    /// `"subject":…,"expires_at":…` (Unix seconds) for a subscriber's token.
    Authenticated {
        publisher: Option<&'a str>,
        subject: Option<&'a str>,
        expires_at: Option<u64>,
    },
}

impl Success<'_> {
    /// Bytes the fields are likely to take, to size the output once.
    fn size_hint(&self) -> usize {
        match self {
            Success::History { messages, .. } => {
                96 + messages.iter().map(|(_, p)| 32 + p.len()).sum::<usize>()
            }
            Success::Channels { channels, .. } => {
                32 + channels
                    .iter()
                    .map(|c| 160 + c.channel.len())
                    .sum::<usize>()
            }
            _ => 96,
        }
    }
}

fn start_reply(out: &mut String, id: Option<&Id>) {
    out.push_str("{\"id\":");
    out.push_str(id.map_or("null", Id::as_json));
}

/// `{"id":…,"ok":true,…}`
pub fn encode_ok(id: Option<&Id>, ok: Success<'_>) -> String {
    let mut out = String::with_capacity(24 + id.map_or(4, |i| i.as_json().len()) + ok.size_hint());
    start_reply(&mut out, id);
    out.push_str(",\"ok\":true");
    push_success(&mut out, ok);
    out
}

/// `{"ok":true,…}`: the HTTP API's success body (HTTP has no request ids).
pub fn encode_http_ok(ok: Success<'_>) -> String {
    let mut out = String::with_capacity(16 + ok.size_hint());
    out.push_str("{\"ok\":true");
    push_success(&mut out, ok);
    out
}

fn push_bool(out: &mut String, key: &str, value: bool) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str(if value { "\":true" } else { "\":false" });
}

fn push_num(out: &mut String, key: &str, value: u64) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    push_u64(out, value);
}

/// `,"epoch":…,"offset":…,"from":…[,"recovered":…[,"lost":…]]`
fn push_subscription(out: &mut String, sub: &Subscription) {
    out.push_str(",\"epoch\":");
    push_epoch(out, sub.epoch);
    push_num(out, "offset", sub.offset.0);
    push_num(out, "from", sub.from.0);
    match sub.recovery {
        None => {}
        Some(Recovery::Complete) => push_bool(out, "recovered", true),
        Some(Recovery::Incomplete(Lost::EpochChanged)) => {
            out.push_str(",\"recovered\":false,\"lost\":{\"reason\":\"epoch_changed\"}");
        }
        Some(Recovery::Incomplete(Lost::Expired { from, to })) => {
            out.push_str(",\"recovered\":false,\"lost\":{\"reason\":\"expired\"");
            push_num(out, "from", from.0);
            push_num(out, "to", to.0);
            out.push('}');
        }
    }
}

fn push_success(out: &mut String, ok: Success<'_>) {
    match ok {
        Success::Empty => {}
        Success::Created { created, epoch } => {
            push_bool(out, "created", created);
            out.push_str(",\"epoch\":");
            push_epoch(out, epoch);
        }
        Success::Published {
            epoch,
            offset,
            duplicate,
        } => {
            out.push_str(",\"epoch\":");
            push_epoch(out, epoch);
            push_num(out, "offset", offset.0);
            if duplicate {
                push_bool(out, "duplicate", true);
            }
        }
        Success::Subscribed(sub) => push_subscription(out, &sub),
        Success::History {
            sub,
            messages,
            more,
        } => {
            push_subscription(out, &sub);
            out.push_str(",\"messages\":[");
            for (i, (offset, data)) in messages.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"offset\":");
                push_u64(out, offset.0);
                out.push_str(",\"data\":");
                // A payload is validated JSON, so UTF-8: this borrows, it does not copy.
                out.push_str(&String::from_utf8_lossy(data.json()));
                out.push('}');
            }
            out.push(']');
            push_bool(out, "more", more);
        }
        Success::Channels { channels, more } => {
            out.push_str(",\"channels\":[");
            for (i, c) in channels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_channel_info(out, c);
            }
            out.push(']');
            push_bool(out, "more", more);
        }
        Success::Deleted => push_bool(out, "deleted", true),
        Success::Challenge(c) => {
            out.push_str(",\"challenge\":");
            push_json_str(out, c);
        }
        Success::Authenticated {
            publisher,
            subject,
            expires_at,
        } => {
            if let Some(p) = publisher {
                out.push_str(",\"publisher\":");
                push_json_str(out, p);
            }
            if let Some(s) = subject {
                out.push_str(",\"subject\":");
                push_json_str(out, s);
            }
            if let Some(e) = expires_at {
                push_num(out, "expires_at", e);
            }
        }
    }
    out.push('}');
}

/// `{"channel":…,"epoch":…,"offset":…,"subscribers":…,"backlog":{"messages":…,"bytes":…,
/// "first_offset":…}}`
fn push_channel_info(out: &mut String, c: &ChannelInfo) {
    out.push_str("{\"channel\":\"");
    out.push_str(c.channel.as_str());
    out.push_str("\",\"epoch\":");
    push_epoch(out, c.epoch);
    push_num(out, "offset", c.offset.0);
    push_num(out, "subscribers", c.subscribers as u64);
    out.push_str(",\"backlog\":{\"messages\":");
    push_u64(out, c.backlog_messages as u64);
    push_num(out, "bytes", c.backlog_bytes as u64);
    push_num(out, "first_offset", c.first_offset.0);
    out.push_str("}}");
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
    push_json_str(out, &error.message);
    out.push('}');
}

/// The start of every event on a channel: `{"event":"<event>","channel":"<channel>"`.
fn start_event(out: &mut String, event: &str, channel: &ChannelName) {
    out.push_str("{\"event\":\"");
    out.push_str(event);
    out.push_str("\",\"channel\":\"");
    out.push_str(channel.as_str());
    out.push('"');
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

/// `{"event":"gap","channel":…,"from":…,"to":…}`: this subscriber did not receive offsets
/// `from..=to` (its queue dropped them); they may still be in the backlog.
pub fn encode_gap(channel: &ChannelName, from: Offset, to: Offset) -> Bytes {
    let mut out = String::with_capacity(80 + channel.len());
    start_event(&mut out, "gap", channel);
    push_num(&mut out, "from", from.0);
    push_num(&mut out, "to", to.0);
    out.push('}');
    Bytes::from(out)
}

/// `{"event":"subscribed","channel":…,"epoch":…,"offset":…,"from":…[,"recovered":…,"lost":…]}`:
/// where a channel of an HTTP stream (long-poll, SSE) starts, with the same `recovered` / `lost`
/// answer a v1 `subscribe` reply gives, so a client that only reads events sees every loss.
pub fn encode_subscribed(channel: &ChannelName, sub: &Subscription) -> Bytes {
    let mut out = String::with_capacity(160 + channel.len());
    start_event(&mut out, "subscribed", channel);
    push_subscription(&mut out, sub);
    out.push('}');
    Bytes::from(out)
}

/// `{"event":"closed","channel":…,"reason":…}`: the subscription ended without an
/// `unsubscribe` (e.g. reason `deleted`); no more events for it follow.
pub fn encode_closed(channel: &ChannelName, reason: &str) -> Bytes {
    let mut out = String::with_capacity(64 + channel.len() + reason.len());
    start_event(&mut out, "closed", channel);
    out.push_str(",\"reason\":");
    push_json_str(&mut out, reason);
    out.push('}');
    Bytes::from(out)
}

/// `{"event":"reply","channel":…,"offset":…,"from":…,"data":…}`: a reply to message `offset`
/// of the channel, sent to its publisher. `from` names the replier; `data` is copied as the
/// replier wrote it.
pub fn encode_reply_event(
    channel: &ChannelName,
    offset: Offset,
    from: &str,
    data: &Payload,
) -> Bytes {
    let mut head = String::with_capacity(80 + channel.len() + from.len());
    start_event(&mut head, "reply", channel);
    push_num(&mut head, "offset", offset.0);
    head.push_str(",\"from\":");
    push_json_str(&mut head, from);
    head.push_str(",\"data\":");
    let json = data.json();
    let mut out = Vec::with_capacity(head.len() + json.len() + 1);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(json);
    out.push(b'}');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Epoch, ErrorCode};

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn json(s: &'static str) -> Payload {
        Payload::from_json_bytes(Bytes::from_static(s.as_bytes())).unwrap()
    }

    const E: Epoch = Epoch(0x00ab_0000_0000_00cd);

    fn sub(recovery: Option<Recovery>) -> Subscription {
        Subscription {
            epoch: E,
            offset: Offset(9),
            from: Offset(4),
            recovery,
        }
    }

    #[test]
    fn encodes_simple_replies_exactly() {
        let id = Id::number(4);
        assert_eq!(
            encode_ok(Some(&id), Success::Empty),
            r#"{"id":4,"ok":true}"#
        );
        assert_eq!(
            encode_ok(
                None,
                Success::Created {
                    created: true,
                    epoch: E
                }
            ),
            r#"{"id":null,"ok":true,"created":true,"epoch":"00ab0000000000cd"}"#
        );
        assert_eq!(
            encode_http_ok(Success::Created {
                created: false,
                epoch: Epoch(1)
            }),
            r#"{"ok":true,"created":false,"epoch":"0000000000000001"}"#
        );
        assert_eq!(
            encode_ok(
                Some(&Id::from_json("\"q\"").unwrap()),
                Success::Published {
                    epoch: E,
                    offset: Offset(17),
                    duplicate: false
                }
            ),
            r#"{"id":"q","ok":true,"epoch":"00ab0000000000cd","offset":17}"#
        );
        assert_eq!(
            encode_http_ok(Success::Published {
                epoch: Epoch(u64::MAX),
                offset: Offset(3),
                duplicate: true
            }),
            r#"{"ok":true,"epoch":"ffffffffffffffff","offset":3,"duplicate":true}"#
        );
        assert_eq!(
            encode_ok(Some(&id), Success::Deleted),
            r#"{"id":4,"ok":true,"deleted":true}"#
        );
        assert_eq!(
            encode_http_ok(Success::Deleted),
            r#"{"ok":true,"deleted":true}"#
        );
        assert_eq!(encode_http_ok(Success::Empty), r#"{"ok":true}"#);
        assert_eq!(
            encode_ok(Some(&id), Success::Challenge("q83v")),
            r#"{"id":4,"ok":true,"challenge":"q83v"}"#
        );
        assert_eq!(
            encode_ok(
                None,
                Success::Authenticated {
                    publisher: Some("billing"),
                    subject: None,
                    expires_at: None
                }
            ),
            r#"{"id":null,"ok":true,"publisher":"billing"}"#
        );
        assert_eq!(
            encode_ok(
                None,
                Success::Authenticated {
                    publisher: None,
                    subject: Some("u\"1"),
                    expires_at: Some(1_800_000_000)
                }
            ),
            r#"{"id":null,"ok":true,"subject":"u\"1","expires_at":1800000000}"#
        );
    }

    #[test]
    fn encodes_subscribed_with_every_recovery() {
        let id = Id::number(1);
        assert_eq!(
            encode_ok(Some(&id), Success::Subscribed(sub(None))),
            r#"{"id":1,"ok":true,"epoch":"00ab0000000000cd","offset":9,"from":4}"#
        );
        assert_eq!(
            encode_ok(
                Some(&id),
                Success::Subscribed(sub(Some(Recovery::Complete)))
            ),
            r#"{"id":1,"ok":true,"epoch":"00ab0000000000cd","offset":9,"from":4,"recovered":true}"#
        );
        assert_eq!(
            encode_ok(
                Some(&id),
                Success::Subscribed(sub(Some(Recovery::Incomplete(Lost::EpochChanged))))
            ),
            r#"{"id":1,"ok":true,"epoch":"00ab0000000000cd","offset":9,"from":4,"recovered":false,"lost":{"reason":"epoch_changed"}}"#
        );
        assert_eq!(
            encode_http_ok(Success::Subscribed(sub(Some(Recovery::Incomplete(
                Lost::Expired {
                    from: Offset(2),
                    to: Offset(3)
                }
            ))))),
            r#"{"ok":true,"epoch":"00ab0000000000cd","offset":9,"from":4,"recovered":false,"lost":{"reason":"expired","from":2,"to":3}}"#
        );
    }

    #[test]
    fn encodes_history_exactly() {
        let messages = [
            (Offset(4), json("{\"a\": 1}")),
            (Offset(5), Payload::text("x\"y")),
            (Offset(6), json("null")),
        ];
        assert_eq!(
            encode_ok(
                Some(&Id::number(2)),
                Success::History {
                    sub: sub(None),
                    messages: &messages,
                    more: true
                }
            ),
            r#"{"id":2,"ok":true,"epoch":"00ab0000000000cd","offset":9,"from":4,"messages":[{"offset":4,"data":{"a": 1}},{"offset":5,"data":"x\"y"},{"offset":6,"data":null}],"more":true}"#
        );
        let empty = Subscription {
            epoch: E,
            offset: Offset(9),
            from: Offset(10),
            recovery: Some(Recovery::Incomplete(Lost::Expired {
                from: Offset(1),
                to: Offset(9),
            })),
        };
        assert_eq!(
            encode_http_ok(Success::History {
                sub: empty,
                messages: &[],
                more: false
            }),
            r#"{"ok":true,"epoch":"00ab0000000000cd","offset":9,"from":10,"recovered":false,"lost":{"reason":"expired","from":1,"to":9},"messages":[],"more":false}"#
        );
    }

    #[test]
    fn encodes_channels_exactly() {
        let channels = [
            ChannelInfo {
                channel: ch("a"),
                epoch: E,
                offset: Offset(5),
                subscribers: 2,
                backlog_messages: 3,
                backlog_bytes: 512,
                first_offset: Offset(3),
            },
            ChannelInfo {
                channel: ch("b.c"),
                epoch: Epoch(0),
                offset: Offset(0),
                subscribers: 0,
                backlog_messages: 0,
                backlog_bytes: 0,
                first_offset: Offset(1),
            },
        ];
        assert_eq!(
            encode_ok(
                Some(&Id::number(3)),
                Success::Channels {
                    channels: &channels,
                    more: false
                }
            ),
            r#"{"id":3,"ok":true,"channels":[{"channel":"a","epoch":"00ab0000000000cd","offset":5,"subscribers":2,"backlog":{"messages":3,"bytes":512,"first_offset":3}},{"channel":"b.c","epoch":"0000000000000000","offset":0,"subscribers":0,"backlog":{"messages":0,"bytes":0,"first_offset":1}}],"more":false}"#
        );
        assert_eq!(
            encode_http_ok(Success::Channels {
                channels: &[],
                more: true
            }),
            r#"{"ok":true,"channels":[],"more":true}"#
        );
    }

    #[test]
    fn encodes_errors_exactly() {
        assert_eq!(
            encode_error(
                Some(&Id::number(4)),
                &ProtoError::new(ErrorCode::Forbidden, "no \"way\"")
            ),
            r#"{"id":4,"ok":false,"error":{"code":"forbidden","message":"no \"way\""}}"#
        );
        assert_eq!(
            encode_error(
                None,
                &ProtoError::new(ErrorCode::Gone, "the publisher is gone\n")
            ),
            r#"{"id":null,"ok":false,"error":{"code":"gone","message":"the publisher is gone\n"}}"#
        );
    }

    #[test]
    fn encodes_events_exactly() {
        let p = json("{\"a\": 1}");
        assert_eq!(
            &encode_delivery(&ch("prices"), Offset(17), &p)[..],
            br#"{"event":"message","channel":"prices","offset":17,"data":{"a": 1}}"#
        );
        assert_eq!(
            &encode_gap(&ch("prices"), Offset(3), Offset(u64::MAX))[..],
            br#"{"event":"gap","channel":"prices","from":3,"to":18446744073709551615}"#
        );
        assert_eq!(
            &encode_closed(&ch("prices"), "deleted")[..],
            br#"{"event":"closed","channel":"prices","reason":"deleted"}"#
        );
        assert_eq!(
            &encode_reply_event(&ch("rpc"), Offset(7), "conn-12", &p)[..],
            br#"{"event":"reply","channel":"rpc","offset":7,"from":"conn-12","data":{"a": 1}}"#
        );
        assert_eq!(
            &encode_reply_event(&ch("rpc"), Offset(1), "a\"b\\\n", &Payload::text("t"))[..],
            br#"{"event":"reply","channel":"rpc","offset":1,"from":"a\"b\\\n","data":"t"}"#
        );
    }
}
