//! Property tests of the codecs: no input panics a decoder, valid requests survive a round trip,
//! every encoder writes valid JSON that decodes back to what was encoded, and channel-name
//! validation matches its one-line specification.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use proptest::prelude::*;
use tslm_protocol::{
    ChannelInfo, ChannelName, Epoch, ErrorCode, Lost, Offset, Payload, Recovery, Start,
    Subscription, legacy, v1,
};

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

fn start_strategy() -> impl Strategy<Value = Start> {
    prop_oneof![
        Just(Start::New),
        Just(Start::Oldest),
        (1..=u64::MAX).prop_map(Start::Last),
        (any::<u64>(), any::<u64>()).prop_map(|(e, o)| Start::After {
            epoch: Epoch(e),
            offset: Offset(o),
        }),
    ]
}

fn recovery_strategy() -> impl Strategy<Value = Option<Recovery>> {
    prop_oneof![
        Just(None),
        Just(Some(Recovery::Complete)),
        Just(Some(Recovery::Incomplete(Lost::EpochChanged))),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Some(Recovery::Incomplete(Lost::Expired {
            from: Offset(a),
            to: Offset(b),
        }))),
    ]
}

fn subscription_strategy() -> impl Strategy<Value = Subscription> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        recovery_strategy(),
    )
        .prop_map(|(e, offset, from, recovery)| Subscription {
            epoch: Epoch(e),
            offset: Offset(offset),
            from: Offset(from),
            recovery,
        })
}

fn payload_of(data: &serde_json::Value) -> Payload {
    Payload::from_json_bytes(Bytes::from(data.to_string())).unwrap()
}

fn parse(text: &[u8]) -> serde_json::Value {
    serde_json::from_slice(text).unwrap()
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
            v1::Op::Publish { channel, data: payload, msg_id: None } => {
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

    #[test]
    fn any_start_round_trips_through_subscribe_and_history(name in name_strategy(), start in start_strategy()) {
        let start_text = v1::start_json(start);
        let sub = format!(r#"{{"op":"subscribe","channel":"{name}","start":{start_text}}}"#);
        match v1::decode_request(&Bytes::from(sub)).unwrap().op {
            v1::Op::Subscribe { channel, start: back } => {
                prop_assert_eq!(channel.as_str(), name.as_str());
                prop_assert_eq!(back, start);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        let history = format!(r#"{{"op":"history","channel":"{name}","start":{start_text},"limit":7}}"#);
        match v1::decode_request(&Bytes::from(history)).unwrap().op {
            v1::Op::History { start: back, limit, .. } => {
                prop_assert_eq!(back, start);
                prop_assert_eq!(limit, 7);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn event_encoders_write_valid_json(
        name in name_strategy(),
        offset in any::<u64>(),
        to in any::<u64>(),
        data in json_strategy(),
        from in ".{0,40}",
        reason in ".{0,20}",
    ) {
        let channel = ChannelName::new(&name).unwrap();
        let payload = payload_of(&data);

        let gap = v1::encode_gap(&channel, Offset(offset), Offset(to));
        prop_assert_eq!(parse(&gap), serde_json::json!({"event":"gap","channel":name,"from":offset,"to":to}));
        let closed = v1::encode_closed(&channel, &reason);
        prop_assert_eq!(parse(&closed), serde_json::json!({"event":"closed","channel":name,"reason":reason}));
        let reply = v1::encode_reply_event(&channel, Offset(offset), &from, &payload);
        prop_assert_eq!(
            parse(&reply),
            serde_json::json!({"event":"reply","channel":name,"offset":offset,"from":from,"data":data})
        );
        match v1::decode_server_message(std::str::from_utf8(&reply).unwrap()).unwrap() {
            v1::ServerMessage::ReplyEvent { channel: c, offset: o, from: f, data: d } => {
                prop_assert_eq!((c, o, f), (name.clone(), offset, from.clone()));
                prop_assert_eq!(d, data.to_string());
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn reply_encoders_write_valid_json(
        names in prop::collection::vec(name_strategy(), 0..4),
        datas in prop::collection::vec(json_strategy(), 0..4),
        sub in subscription_strategy(),
        epoch in any::<u64>(),
        offset in any::<u64>(),
        flag in any::<bool>(),
        counts in (any::<u32>(), any::<u32>(), any::<u32>()),
        id in any::<u32>(),
    ) {
        let id = v1::Id::number(u64::from(id));
        let messages: Vec<(Offset, Payload)> = datas
            .iter()
            .enumerate()
            .map(|(i, d)| (Offset(offset.saturating_add(i as u64)), payload_of(d)))
            .collect();
        let channels: Vec<ChannelInfo> = names
            .iter()
            .map(|n| ChannelInfo {
                channel: ChannelName::new(n).unwrap(),
                epoch: Epoch(epoch),
                offset: Offset(offset),
                subscribers: counts.0 as usize,
                backlog_messages: counts.1 as usize,
                backlog_bytes: counts.2 as usize,
                first_offset: Offset(offset),
            })
            .collect();
        let all = [
            v1::Success::Empty,
            v1::Success::Created { created: flag, epoch: Epoch(epoch) },
            v1::Success::Published { epoch: Epoch(epoch), offset: Offset(offset), duplicate: flag },
            v1::Success::Subscribed(sub),
            v1::Success::History { sub, messages: &messages, more: flag },
            v1::Success::Channels { channels: &channels, more: flag },
            v1::Success::Deleted,
        ];
        for ok in all {
            for text in [v1::encode_ok(Some(&id), ok), v1::encode_http_ok(ok)] {
                let value = parse(text.as_bytes());
                prop_assert_eq!(&value["ok"], &serde_json::Value::Bool(true));
                let decoded = match v1::decode_server_message(&text).unwrap() {
                    v1::ServerMessage::Reply(v1::Reply { result: Ok(r), .. }) => r,
                    other => return Err(TestCaseError::fail(format!("{other:?}"))),
                };
                match ok {
                    v1::Success::Subscribed(s) | v1::Success::History { sub: s, .. } => {
                        prop_assert_eq!(decoded.epoch, Some(s.epoch.to_string()));
                        prop_assert_eq!((decoded.offset, decoded.from), (Some(s.offset.0), Some(s.from.0)));
                        prop_assert_eq!(decoded.recovered, s.recovery.map(|r| r == Recovery::Complete));
                    }
                    _ => {}
                }
                if let v1::Success::History { .. } = ok {
                    let back = decoded.messages.unwrap();
                    prop_assert_eq!(back.len(), datas.len());
                    for ((m, d), (o, _)) in back.iter().zip(&datas).zip(&messages) {
                        prop_assert_eq!(m.offset, o.0);
                        prop_assert_eq!(&serde_json::from_str::<serde_json::Value>(&m.data).unwrap(), d);
                    }
                }
                if let v1::Success::Channels { .. } = ok {
                    let back = decoded.channels.unwrap();
                    let back_names: Vec<&str> = back.iter().map(|c| c.channel.as_str()).collect();
                    let expected: Vec<&str> = names.iter().map(String::as_str).collect();
                    prop_assert_eq!(back_names, expected);
                    for c in &back {
                        prop_assert_eq!(
                            (c.subscribers, c.backlog.messages, c.backlog.bytes),
                            (u64::from(counts.0), u64::from(counts.1), u64::from(counts.2))
                        );
                    }
                }
            }
        }
    }
}
