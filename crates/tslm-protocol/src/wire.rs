//! Wires: a dialect in a framing. Each wire has encoders for everything the hub sends to a
//! subscriber (a delivery, a `gap`, a `closed` event, a `reply` event), producing the complete
//! bytes a connection of that wire writes as they are, so that the hub encodes a message once per
//! wire and shares those bytes with every subscriber of the wire.
//!
//! Today both wires are WebSocket framings (the header is part of the bytes: a server's frames
//! are never masked, so the same bytes are right for every subscriber). A Server-Sent Events
//! framing or a long-poll JSON batch is one more variant with its own arm in each encoder.

use std::ops::Range;

use bytes::Bytes;

use crate::{ChannelName, Dialect, Offset, Payload, WsFrame, legacy, v1};

/// A dialect in a framing, fixed for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wire {
    /// Protocol v1 in WebSocket text frames.
    V1Ws,
    /// The original protocol in WebSocket text frames.
    LegacyWs,
}

/// The encoded delivery of one message on one wire: its bytes, and where the message's `data`
/// lies in them (so that a backlog can keep the payload as a slice of the same allocation
/// without parsing the bytes back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub bytes: Bytes,
    pub payload: Range<usize>,
    /// Where the event's own text (for the WebSocket wires, the frame's JSON without its
    /// header) starts: transports that frame events their own way (a long-poll batch) share
    /// `bytes[body..]` instead of encoding the message again.
    pub body: usize,
}

impl Delivery {
    /// The message's `data`, a slice of the delivery's bytes.
    pub fn payload_bytes(&self) -> Bytes {
        self.bytes.slice(self.payload.clone())
    }
}

impl Wire {
    /// Every wire, in [`Wire::index`] order.
    pub const ALL: [Wire; Wire::COUNT] = [Wire::V1Ws, Wire::LegacyWs];
    /// The number of wires.
    pub const COUNT: usize = 2;

    /// The WebSocket wire of `dialect`.
    pub fn websocket(dialect: Dialect) -> Self {
        match dialect {
            Dialect::V1 => Wire::V1Ws,
            Dialect::Legacy => Wire::LegacyWs,
        }
    }

    /// A dense index, for tables with one slot per wire.
    pub fn index(self) -> usize {
        match self {
            Wire::V1Ws => 0,
            Wire::LegacyWs => 1,
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Wire::V1Ws => Dialect::V1,
            Wire::LegacyWs => Dialect::Legacy,
        }
    }

    /// Whether a delivery names its offset (its bytes differ per offset), and the wire can say
    /// what a subscriber missed with a `gap` event. A wire without offsets has neither.
    pub fn has_offsets(self) -> bool {
        match self.dialect() {
            Dialect::V1 => true,
            Dialect::Legacy => false,
        }
    }

    /// The delivery of message `offset` of `channel`.
    pub fn delivery(self, channel: &ChannelName, offset: Offset, data: &Payload) -> Delivery {
        match self {
            Wire::V1Ws => {
                let frame = WsFrame::text(&v1::encode_delivery(channel, offset, data));
                // A v1 delivery ends with its `data` and the closing brace.
                let end = frame.len() - 1;
                Delivery {
                    body: frame.len() - frame.payload().len(),
                    bytes: frame.bytes().clone(),
                    payload: end - data.len()..end,
                }
            }
            Wire::LegacyWs => {
                let frame = WsFrame::text(&legacy::encode_delivery(channel, data));
                // An original-protocol delivery ends with its `data` and `}]}`.
                let end = frame.len() - 3;
                Delivery {
                    body: frame.len() - frame.payload().len(),
                    bytes: frame.bytes().clone(),
                    payload: end - data.len()..end,
                }
            }
        }
    }

    /// The `gap` event for `from..=to` of `channel`; `None` on a wire that cannot say so.
    pub fn gap(self, channel: &ChannelName, from: Offset, to: Offset) -> Option<Bytes> {
        match self {
            Wire::V1Ws => Some(ws(&v1::encode_gap(channel, from, to))),
            Wire::LegacyWs => None,
        }
    }

    /// The end of a subscription to `channel` for `reason` (the original protocol only knows a
    /// channel that is not found).
    pub fn closed(self, channel: &ChannelName, reason: &str) -> Bytes {
        match self {
            Wire::V1Ws => ws(&v1::encode_closed(channel, reason)),
            Wire::LegacyWs => ws(legacy::encode_error(&legacy::Error::ChannelNotFound(
                channel.clone(),
            ))
            .as_bytes()),
        }
    }

    /// The `reply` event to message `offset` of `channel`, from `replier`; `None` on a wire
    /// without replies.
    pub fn reply(
        self,
        channel: &ChannelName,
        offset: Offset,
        replier: &str,
        data: &Payload,
    ) -> Option<Bytes> {
        match self {
            Wire::V1Ws => Some(ws(&v1::encode_reply_event(channel, offset, replier, data))),
            Wire::LegacyWs => None,
        }
    }
}

/// `json` as a complete WebSocket text frame.
fn ws(json: &[u8]) -> Bytes {
    WsFrame::text(json).bytes().clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frame: &Bytes) -> &str {
        let header = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        std::str::from_utf8(&frame[header..]).unwrap()
    }

    #[test]
    fn every_wire_has_its_index() {
        for (i, w) in Wire::ALL.into_iter().enumerate() {
            assert_eq!(w.index(), i);
            assert_eq!(Wire::websocket(w.dialect()), w);
        }
    }

    #[test]
    fn deliveries_say_where_their_payload_lies() {
        let ch = ChannelName::new("c.1").unwrap();
        for len in [3, 200, 70_000] {
            for data in [
                Payload::text(&"o".repeat(len)),
                Payload::from_json_bytes(Bytes::from(format!("[\"{}\"]", "j".repeat(len))))
                    .unwrap(),
            ] {
                for wire in Wire::ALL {
                    let d = wire.delivery(&ch, Offset(987_654_321), &data);
                    assert_eq!(&d.payload_bytes(), data.json(), "{wire:?} {len}");
                    assert_eq!(d.bytes[0], 0x81, "a final, unmasked text frame");
                }
            }
        }
    }

    #[test]
    fn events_are_framed_per_wire() {
        let ch = ChannelName::new("c").unwrap();
        let gap = Wire::V1Ws.gap(&ch, Offset(5), Offset(90)).unwrap();
        assert_eq!(
            text(&gap),
            r#"{"event":"gap","channel":"c","from":5,"to":90}"#
        );
        assert_eq!(Wire::LegacyWs.gap(&ch, Offset(5), Offset(90)), None);
        assert_eq!(
            text(&Wire::V1Ws.closed(&ch, "deleted")),
            r#"{"event":"closed","channel":"c","reason":"deleted"}"#
        );
        assert!(text(&Wire::LegacyWs.closed(&ch, "deleted")).starts_with(r#"{"Error":"#));
        let reply = Wire::V1Ws
            .reply(&ch, Offset(3), "7", &Payload::text("r"))
            .unwrap();
        assert_eq!(
            text(&reply),
            r#"{"event":"reply","channel":"c","offset":3,"from":"7","data":"r"}"#
        );
        assert_eq!(
            Wire::LegacyWs.reply(&ch, Offset(3), "7", &Payload::text("r")),
            None
        );
    }
}
