//! Original-protocol command decoder (`tslm_protocol::legacy::decode_request`) on arbitrary frames.
//!
//! Properties, beyond "does not panic":
//! - only a JSON text can decode;
//! - a NotifyChannel payload is one JSON value sliced out of the frame (zero copy); a `Text`
//!   payload is a JSON string; the original-protocol delivery (`encode_delivery`) and the v1
//!   delivery built from it are valid JSON carrying the same value;
//! - the success reply is valid JSON with the original text;
//! - every decode error is `Invalid message format: …`, and `encode_error` of it is valid JSON
//!   whose `Error` starts with that original prefix and names no internal types;
//! - re-encoding a decoded command canonically decodes to the same command.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tslm_fuzz::{is_json_text, is_json_value, is_within, value_if_representable};
use tslm_protocol::legacy::{self, Error, Request};
use tslm_protocol::{Offset, PayloadKind, v1};

/// Every `Display` prefix of `legacy::Error`, i.e. the original server's error texts.
const ORIGINAL_PREFIXES: [&str; 8] = [
    "Invalid message format: ",
    "Binary messages not supported",
    "Message too large",
    "Rate limit exceeded",
    "Subscription limit exceeded",
    "Channel not found: ",
    "Channel '",
    "Permission denied: ",
];

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    match legacy::decode_request(&frame) {
        Ok(request) => {
            assert!(is_json_text(data), "decoded a frame that is not JSON");
            let success = legacy::encode_success(request.command(), request.channel());
            let v: Value = serde_json::from_str(&success).expect("success reply is JSON");
            assert_eq!(
                v["Success"],
                format!(
                    "Command executed: {}(\"{}\")",
                    request.command().as_str(),
                    request.channel()
                )
            );
            if let Request::NotifyChannel(channel, payload) = &request {
                let json = payload.json();
                assert!(is_json_value(json), "payload is not one JSON value");
                assert!(
                    is_within(&frame, json),
                    "payload is not a slice of the frame"
                );
                if payload.kind() == PayloadKind::Text {
                    assert_eq!(json.first(), Some(&b'"'), "Text payload is not a string");
                }
                let delivery = legacy::encode_delivery(channel, payload);
                assert!(is_json_text(&delivery), "delivery frame is not JSON");
                let v1_delivery = v1::encode_delivery(channel, Offset(1), payload);
                assert!(is_json_text(&v1_delivery), "v1 delivery frame is not JSON");
                // The frames nest the payload deeper, so they can exceed serde_json's depth limit
                // when the payload alone does not.
                if let (Some(value), Some(d), Some(d1)) = (
                    value_if_representable(json),
                    value_if_representable(&delivery),
                    value_if_representable(&v1_delivery),
                ) {
                    let tag = match payload.kind() {
                        PayloadKind::Text => "Text",
                        PayloadKind::Json => "Json",
                    };
                    let expected =
                        serde_json::json!({ "ChannelMessage": [channel.as_str(), { tag: value }] });
                    assert_eq!(d, expected);
                    assert_eq!(d1["data"], value);
                }
            }
            round_trip(&request);
        }
        Err(e) => {
            assert!(
                matches!(e, Error::InvalidFormat(_)),
                "decode_request returned {e:?}"
            );
            let encoded = legacy::encode_error(&e);
            let v: Value = serde_json::from_str(&encoded).expect("error reply is JSON");
            let text = v["Error"].as_str().expect("`Error` is a string");
            assert_eq!(text, e.to_string());
            assert!(
                ORIGINAL_PREFIXES.iter().any(|p| text.starts_with(p)),
                "not an original error text: {text}"
            );
            assert!(text.starts_with("Invalid message format: "), "{text}");
            for leak in ["RawCommand", "RawPayload", "Cow", "serde"] {
                assert!(!text.contains(leak), "error text leaks {leak:?}: {text}");
            }
        }
    }
});

/// Re-encodes a decoded command in canonical form; it must decode to the same command.
fn round_trip(request: &Request) {
    let frame = match request {
        Request::CreateChannel(c) => format!("{{\"CreateChannel\":\"{c}\"}}").into_bytes(),
        Request::Subscribe(c) => format!("{{\"Subscribe\":\"{c}\"}}").into_bytes(),
        Request::NotifyChannel(c, p) => {
            let tag = match p.kind() {
                PayloadKind::Text => "Text",
                PayloadKind::Json => "Json",
            };
            let mut f = format!("{{\"NotifyChannel\":[\"{c}\",{{\"{tag}\":").into_bytes();
            f.extend_from_slice(p.json());
            f.extend_from_slice(b"}]}");
            f
        }
    };
    let again = legacy::decode_request(&Bytes::from(frame)).expect("canonical re-encoding decodes");
    assert_eq!(&again, request);
}
