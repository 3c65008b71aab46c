//! Property tests of the codecs: no input panics a decoder, valid requests survive a round trip,
//! and channel-name validation matches its one-line specification.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use tslm_protocol::{ChannelName, ErrorCode, Payload, legacy, v1};

fn name_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:~-]{1,40}".prop_filter("not dots only", |s| !s.bytes().all(|b| b == b'.'))
}

fn json_strategy() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,20}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{0,5}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn decoders_never_panic_on_bytes(input in prop::collection::vec(any::<u8>(), 0..300)) {
        let b = Bytes::from(input);
        let _ = v1::decode_request(&b);
        let _ = legacy::decode_request(&b);
        let _ = Payload::from_json_bytes(b);
    }

    #[test]
    fn decoders_never_panic_on_json_like_text(input in r#"[{}\[\]",:a-z0-9 \\]{0,120}"#) {
        let b = Bytes::from(input);
        if let Err(e) = v1::decode_request(&b) {
            prop_assert!(matches!(e.error.code, ErrorCode::BadRequest | ErrorCode::UnknownOp));
        }
        let _ = legacy::decode_request(&b);
    }

    #[test]
    fn channel_names_match_their_specification(s in ".{0,300}") {
        let spec = !s.is_empty()
            && s.len() <= 255
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_:~".contains(&b))
            && !s.bytes().all(|b| b == b'.');
        prop_assert_eq!(ChannelName::new(&s).is_ok(), spec);
    }

    #[test]
    fn v1_publish_round_trips_the_exact_data(name in name_strategy(), data in json_strategy(), id in any::<u32>()) {
        let data_text = data.to_string();
        let req = format!(r#"{{"op":"publish","id":{id},"channel":"{name}","data":{data_text}}}"#);
        let decoded = v1::decode_request(&Bytes::from(req)).unwrap();
        prop_assert_eq!(decoded.id, Some(v1::Id::number(u64::from(id))));
        match decoded.op {
            v1::Op::Publish { channel, data: payload } => {
                prop_assert_eq!(channel.as_str(), name.as_str());
                prop_assert_eq!(&payload.json()[..], data_text.as_bytes());
                // The delivery frame carries the same bytes and parses back to the same value.
                let frame = v1::encode_delivery(&channel, tslm_protocol::Offset(7), &payload);
                let back: serde_json::Value = serde_json::from_slice(&frame).unwrap();
                prop_assert_eq!(&back["data"], &data);
                prop_assert_eq!(&back["channel"], name.as_str());
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn legacy_notify_round_trips_and_maps_to_v1(name in name_strategy(), data in json_strategy(), text in ".{0,40}") {
        let json_req = serde_json::json!({"NotifyChannel": [name, {"Json": data}]}).to_string();
        match legacy::decode_request(&Bytes::from(json_req)).unwrap() {
            legacy::Request::NotifyChannel(c, p) => {
                let frame = legacy::encode_delivery(&c, &p);
                let back: serde_json::Value = serde_json::from_slice(&frame).unwrap();
                prop_assert_eq!(back, serde_json::json!({"ChannelMessage": [name, {"Json": data}]}));
            }
            other => prop_assert!(false, "{:?}", other),
        }
        let text_req = serde_json::json!({"NotifyChannel": [name, {"Text": text}]}).to_string();
        match legacy::decode_request(&Bytes::from(text_req)).unwrap() {
            legacy::Request::NotifyChannel(c, p) => {
                let frame = v1::encode_delivery(&c, tslm_protocol::Offset(1), &p);
                let back: serde_json::Value = serde_json::from_slice(&frame).unwrap();
                prop_assert_eq!(&back["data"], &serde_json::Value::String(text.clone()));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
