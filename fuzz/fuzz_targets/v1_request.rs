//! Protocol v1 request decoder (`tslm_protocol::v1::decode_request`) on arbitrary frames.
//!
//! Properties, beyond "does not panic":
//! - only a JSON text can decode, and a non-UTF-8 frame is refused as such;
//! - a publish's `data` is one JSON value, without surrounding whitespace, sliced out of the frame
//!   (zero copy), labelled `Text` exactly when it is a string; it parses as a `serde_json::Value`
//!   (unless it exceeds serde_json's representation limits, see `tslm_fuzz`), and the delivery
//!   frame built from it is valid JSON whose `data` is that same value;
//! - the reply to a request (`encode_ok` / `encode_error`) is valid JSON echoing the request id;
//! - every error is `bad_request` or `unknown_op`, with a message that names no parser internals;
//! - re-encoding a decoded request canonically decodes to the same request.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tslm_fuzz::{is_json_text, is_json_value, is_within, value_if_representable};
use tslm_protocol::v1::{self, Id, Op, Request, Success};
use tslm_protocol::{ErrorCode, Offset, PayloadKind};

/// Words that would mean a parser's or a type's message reached the client.
const LEAKS: [&str; 9] = [
    "serde",
    "line ",
    "column",
    "RawRequest",
    "IdOnly",
    "Field",
    "invalid type",
    "unknown field",
    "struct",
];

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    match v1::decode_request(&frame) {
        Ok(request) => {
            assert!(is_json_text(data), "decoded a frame that is not JSON");
            check_id(request.id.as_ref());
            check_reply(request.id.as_ref(), None);
            if let Op::Publish {
                channel,
                data: payload,
            } = &request.op
            {
                let json = payload.json();
                assert!(is_json_value(json), "publish data is not one JSON value");
                assert!(
                    is_within(&frame, json),
                    "publish data is not a slice of the frame"
                );
                assert_eq!(
                    payload.kind() == PayloadKind::Text,
                    json.first() == Some(&b'"')
                );
                let delivery = v1::encode_delivery(channel, Offset(u64::MAX), payload);
                assert!(is_json_text(&delivery), "delivery frame is not JSON");
                // The frame nests `data` one level deeper, so it can exceed serde_json's depth
                // limit when the payload alone does not.
                if let (Some(value), Some(frame)) = (
                    value_if_representable(json),
                    value_if_representable(&delivery),
                ) {
                    assert_eq!(frame["data"], value);
                    assert_eq!(frame["event"], "message");
                    assert_eq!(frame["channel"], channel.as_str());
                    assert_eq!(frame["offset"], u64::MAX);
                }
            }
            round_trip(&request);
        }
        Err(e) => {
            assert!(
                matches!(e.error.code, ErrorCode::BadRequest | ErrorCode::UnknownOp),
                "unexpected code {:?}",
                e.error.code
            );
            for leak in LEAKS {
                assert!(
                    !e.error.message.contains(leak),
                    "error message leaks {leak:?}: {}",
                    e.error.message
                );
            }
            if std::str::from_utf8(data).is_err() {
                assert_eq!(e.error.message, "request is not UTF-8");
                assert_eq!(e.id, None);
            }
            check_id(e.id.as_ref());
            check_reply(e.id.as_ref(), Some(&e.error));
        }
    }
});

/// A decoded id is the JSON text of a number or a string, at most `MAX_ID_BYTES` long.
fn check_id(id: Option<&Id>) {
    let Some(id) = id else { return };
    let text = id.as_json().as_bytes();
    assert!(
        is_json_value(text),
        "id is not one JSON value: {:?}",
        id.as_json()
    );
    assert!(text.len() <= v1::MAX_ID_BYTES);
    assert!(matches!(text[0], b'"' | b'-' | b'0'..=b'9'));
    assert_ne!(id.as_json(), "null");
}

/// The reply to the request is valid JSON and echoes the id.
fn check_reply(id: Option<&Id>, error: Option<&tslm_protocol::ProtoError>) {
    let reply = match error {
        None => v1::encode_ok(id, Success::Published(Offset(1))),
        Some(e) => v1::encode_error(id, e),
    };
    assert!(is_json_text(reply.as_bytes()), "reply is not JSON: {reply}");
    let Some(v) = value_if_representable(reply.as_bytes()) else {
        // Only the echoed id can be beyond serde_json's limits (e.g. `1e400`).
        let id = id.expect("a reply without id must be representable");
        assert!(value_if_representable(id.as_json().as_bytes()).is_none());
        return;
    };
    let expected_id = id.map_or(Value::Null, |id| {
        serde_json::from_str(id.as_json()).expect("id of a representable reply")
    });
    assert_eq!(v["id"], expected_id);
    match error {
        None => assert_eq!(v["ok"], true),
        Some(e) => {
            assert_eq!(v["ok"], false);
            assert_eq!(v["error"]["code"], e.code.as_str());
            assert_eq!(v["error"]["message"], &*e.message);
        }
    }
}

/// Re-encodes a decoded request in canonical form; it must decode to the same request.
fn round_trip(request: &Request) {
    let mut text = format!("{{\"op\":\"{}\"", request.op.name());
    if let Some(id) = &request.id {
        text.push_str(",\"id\":");
        text.push_str(id.as_json());
    }
    let mut frame = text.into_bytes();
    match &request.op {
        Op::Create { channel } | Op::Subscribe { channel } | Op::Unsubscribe { channel } => {
            frame.extend_from_slice(format!(",\"channel\":\"{channel}\"").as_bytes());
        }
        Op::Publish { channel, data } => {
            frame.extend_from_slice(format!(",\"channel\":\"{channel}\",\"data\":").as_bytes());
            frame.extend_from_slice(data.json());
        }
        Op::Ping => {}
    }
    frame.push(b'}');
    let again = v1::decode_request(&Bytes::from(frame)).expect("canonical re-encoding decodes");
    assert_eq!(&again, request);
}
