//! The golden fixtures of protocol v1 (`fixtures/v1/`) against the codec: requests decode to
//! their op, invalid requests to their error and id, the encoders produce exactly each reply,
//! event and error, and the client decoder reads them all. The same files serve clients in other
//! languages (see `fixtures/v1/README.md`).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use serde_json::Value;
use tslm_protocol::v1::{self, Id, Success};
use tslm_protocol::{
    ChannelInfo, ChannelName, Epoch, ErrorCode, Lost, Offset, Payload, ProtoError, Recovery,
    Subscription,
};

fn load(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/v1")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let all: Vec<Value> = serde_json::from_str(&text).unwrap();
    let names: BTreeSet<&str> = all.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), all.len(), "{file}: names must be unique");
    all
}

fn find<'a>(all: &'a [Value], name: &str) -> &'a Value {
    all.iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn epoch(hex: &str) -> Epoch {
    Epoch::parse(hex).unwrap()
}

fn payload(json: &str) -> Payload {
    Payload::from_json_bytes(Bytes::copy_from_slice(json.as_bytes())).unwrap()
}

fn id(json: &str) -> Id {
    Id::from_json(json).unwrap()
}

/// Compares encoder output with a fixture as JSON values.
fn same(encoded: &[u8], fixture: &Value, name: &str) {
    let got: Value = serde_json::from_slice(encoded)
        .unwrap_or_else(|e| panic!("{name}: the encoder wrote invalid JSON ({e})"));
    assert_eq!(&got, fixture, "{name}");
}

#[test]
fn every_request_fixture_decodes_to_its_op_and_every_op_has_one() {
    let all = load("requests.json");
    let mut ops = BTreeSet::new();
    for f in &all {
        let frame = Bytes::from(serde_json::to_vec(&f["frame"]).unwrap());
        let req = v1::decode_request(&frame)
            .unwrap_or_else(|e| panic!("{}: refused: {:?}", f["name"], e.error));
        assert_eq!(req.op.name(), f["op"].as_str().unwrap(), "{}", f["name"]);
        match f["frame"].get("id") {
            None => assert!(req.id.is_none(), "{}", f["name"]),
            Some(i) => assert_eq!(
                req.id.as_ref().map(|i| i.as_json().to_owned()),
                Some(i.to_string()),
                "{}",
                f["name"]
            ),
        }
        ops.insert(req.op.name());
    }
    let every: BTreeSet<&str> = [
        "create",
        "delete",
        "publish",
        "subscribe",
        "unsubscribe",
        "history",
        "reply",
        "channels",
        "ping",
        "challenge",
        "auth",
        "refresh",
    ]
    .into();
    assert_eq!(ops, every, "every op has a request fixture");
}

#[test]
fn every_invalid_request_fixture_is_refused_with_its_code_and_id() {
    for f in load("invalid_requests.json") {
        let frame = Bytes::from(f["frame"].as_str().unwrap().to_owned());
        let e = v1::decode_request(&frame)
            .err()
            .unwrap_or_else(|| panic!("{}: accepted", f["name"]));
        assert_eq!(
            e.error.code.as_str(),
            f["code"].as_str().unwrap(),
            "{}: {}",
            f["name"],
            e.error.message
        );
        let want_id = match &f["id"] {
            Value::Null => None,
            v => Some(v.to_string()),
        };
        assert_eq!(
            e.id.as_ref().map(|i| i.as_json().to_owned()),
            want_id,
            "{}",
            f["name"]
        );
        // The error reply the server sends for it parses as a reply carrying the code.
        let reply = v1::encode_error(e.id.as_ref(), &e.error);
        let v: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(v["error"]["code"], f["code"], "{}", f["name"]);
    }
}

#[test]
fn the_encoders_write_every_reply_fixture() {
    let all = load("replies.json");
    let sub = |offset: u64, from: u64, recovery: Option<Recovery>| Subscription {
        epoch: epoch("a7a1fed282ffc3db"),
        offset: Offset(offset),
        from: Offset(from),
        recovery,
    };
    let history_a = [
        (Offset(8), payload(r#"{"px":1}"#)),
        (Offset(9), payload(r#""two""#)),
    ];
    let history_b = [(Offset(1), payload("1"))];
    let channels = [ChannelInfo {
        channel: ch("rpc.orders"),
        epoch: epoch("05b12ea54837f03c"),
        offset: Offset(3),
        subscribers: 2,
        backlog_messages: 3,
        backlog_bytes: 30,
        first_offset: Offset(1),
    }];
    let cases: Vec<(&str, Option<Id>, Success<'_>)> = vec![
        ("empty", Some(id("7")), Success::Empty),
        ("empty_without_id", None, Success::Empty),
        (
            "created",
            Some(id("1")),
            Success::Created {
                created: true,
                epoch: epoch("05b12ea54837f03c"),
            },
        ),
        (
            "already_existed",
            Some(id("2")),
            Success::Created {
                created: false,
                epoch: epoch("05b12ea54837f03c"),
            },
        ),
        (
            "published",
            Some(id("3")),
            Success::Published {
                epoch: epoch("a7a1fed282ffc3db"),
                offset: Offset(7),
                duplicate: false,
            },
        ),
        (
            "published_duplicate",
            Some(id("\"p-3\"")),
            Success::Published {
                epoch: epoch("a7a1fed282ffc3db"),
                offset: Offset(7),
                duplicate: true,
            },
        ),
        (
            "subscribed",
            Some(id("1")),
            Success::Subscribed(sub(9, 10, None)),
        ),
        (
            "subscribed_recovered",
            Some(id("1")),
            Success::Subscribed(sub(9, 5, Some(Recovery::Complete))),
        ),
        (
            "subscribed_expired",
            Some(id("1")),
            Success::Subscribed(sub(
                9,
                6,
                Some(Recovery::Incomplete(Lost::Expired {
                    from: Offset(3),
                    to: Offset(5),
                })),
            )),
        ),
        (
            "subscribed_epoch_changed",
            Some(id("1")),
            Success::Subscribed(Subscription {
                epoch: epoch("1111111111111111"),
                offset: Offset(2),
                from: Offset(1),
                recovery: Some(Recovery::Incomplete(Lost::EpochChanged)),
            }),
        ),
        (
            "history",
            Some(id("3")),
            Success::History {
                sub: sub(9, 8, None),
                messages: &history_a,
                more: false,
            },
        ),
        (
            "history_more",
            Some(id("4")),
            Success::History {
                sub: sub(9, 1, None),
                messages: &history_b,
                more: true,
            },
        ),
        (
            "channels",
            Some(id("40")),
            Success::Channels {
                channels: &channels,
                more: true,
            },
        ),
        ("deleted", Some(id("30")), Success::Deleted),
        (
            "challenge",
            Some(id("1")),
            Success::Challenge("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
        ),
        (
            "authenticated_publisher",
            Some(id("2")),
            Success::Authenticated {
                publisher: Some("billing"),
                subject: None,
                expires_at: None,
            },
        ),
        (
            "authenticated_subscriber",
            Some(id("2")),
            Success::Authenticated {
                publisher: None,
                subject: Some("alice"),
                expires_at: Some(1_893_456_000),
            },
        ),
    ];
    let covered: BTreeSet<&str> = cases.iter().map(|(n, ..)| *n).collect();
    let fixtures: BTreeSet<&str> = all.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(covered, fixtures, "every reply fixture is checked");
    for (name, rid, ok) in cases {
        let f = find(&all, name);
        same(v1::encode_ok(rid.as_ref(), ok).as_bytes(), &f["json"], name);
        // The HTTP API's body is the same without the id.
        let mut http = f["json"].clone();
        http.as_object_mut().unwrap().remove("id");
        same(v1::encode_http_ok(ok).as_bytes(), &http, name);
        let text = f["json"].to_string();
        match v1::decode_server_message(&text) {
            Ok(v1::ServerMessage::Reply(r)) => assert!(r.result.is_ok(), "{name}"),
            other => panic!("{name}: the client decoder read {other:?}"),
        }
    }
}

#[test]
fn the_encoders_write_every_event_fixture() {
    let all = load("events.json");
    let cases: Vec<(&str, Bytes)> = vec![
        (
            "message",
            v1::encode_delivery(
                &ch("prices"),
                Offset(4),
                &payload(r#"{"sym":"BTC","px":101.5}"#),
            ),
        ),
        (
            "message_string",
            v1::encode_delivery(&ch("news"), Offset(1), &payload(r#""caf\u00e9 \"q\"\n""#)),
        ),
        ("gap", v1::encode_gap(&ch("ticks"), Offset(3), Offset(5))),
        ("closed", v1::encode_closed(&ch("ticks"), "deleted")),
        (
            "reply",
            v1::encode_reply_event(
                &ch("rpc.quotes"),
                Offset(1),
                "conn-42",
                &payload(r#"{"accept":true}"#),
            ),
        ),
    ];
    let covered: BTreeSet<&str> = cases.iter().map(|(n, _)| *n).collect();
    let fixtures: BTreeSet<&str> = all.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(covered, fixtures, "every event fixture is checked");
    for (name, bytes) in cases {
        let f = find(&all, name);
        same(&bytes, &f["json"], name);
        let decoded = v1::decode_server_message(&f["json"].to_string())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !matches!(decoded, v1::ServerMessage::Reply(_)),
            "{name} decoded as a reply"
        );
    }
}

#[test]
fn every_error_code_has_a_fixture_with_its_status_and_reply() {
    let all = load("errors.json");
    let codes: BTreeSet<&str> = all.iter().map(|f| f["code"].as_str().unwrap()).collect();
    let every: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(codes, every, "every error code has a fixture");
    for f in &all {
        let code = *ErrorCode::ALL
            .iter()
            .find(|c| c.as_str() == f["code"])
            .unwrap();
        assert_eq!(
            u64::from(code.http_status()),
            f["http_status"],
            "{}",
            f["name"]
        );
        let e = ProtoError::new(
            code,
            f["json"]["error"]["message"].as_str().unwrap().to_owned(),
        );
        let rid = id(&f["json"]["id"].to_string());
        same(
            v1::encode_error(Some(&rid), &e).as_bytes(),
            &f["json"],
            f["name"].as_str().unwrap(),
        );
        match v1::decode_server_message(&f["json"].to_string()) {
            Ok(v1::ServerMessage::Reply(r)) => {
                let w = r.result.unwrap_err();
                assert_eq!(Some(w.code.as_str()), f["code"].as_str());
            }
            other => panic!("{}: the client decoder read {other:?}", f["name"]),
        }
    }
}
