//! Protocol v1 request decoder (`tslm_protocol::v1::decode_request`) on arbitrary frames, and the
//! v1 reply and event encoders fed with what it decodes.
//!
//! Properties, beyond "does not panic":
//! - only a JSON text can decode (and only an object), and a non-UTF-8 frame is refused as such;
//! - the `data` of a publish or a reply is one JSON value, without surrounding whitespace, sliced
//!   out of the frame (zero copy), labelled `Text` exactly when it is a string; it parses as a
//!   `serde_json::Value` (unless it exceeds serde_json's representation limits, see `tslm_fuzz`),
//!   and the delivery frame (publish) and reply event (reply) built from it are valid JSON whose
//!   `data` is that same value;
//! - every field is within its documented range (`msg_id` 1..=128 bytes, `limit` 1..=1000,
//!   `prefix` at most 255 bytes, a reply's `offset` at least 1, `start` `last` at least 1,
//!   credentials 1..=16 KiB);
//! - `Credentials`' `Debug` (and so a decoded `auth` request's) never shows the token or the
//!   signature;
//! - every reply that applies to the op (`encode_ok` with each matching `Success` variant, and
//!   `encode_http_ok` of it) is valid JSON echoing the id and carrying exactly the fields given,
//!   free-form strings (challenge, publisher, subject, close reason, error message) escaped so that
//!   they read back unchanged; `encode_error` with every error code likewise;
//! - every decode error is `bad_request` or `unknown_op`, with a bounded message that names no
//!   parser internals;
//! - re-encoding a decoded request canonically (using `start_json` and `options_json` for the
//!   structured fields) decodes to the same request.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use tslm_fuzz::{is_json_text, is_json_value, is_within, trim_json_ws, value_if_representable};
use tslm_protocol::v1::{self, Credentials, Id, Op, Request, Success};
use tslm_protocol::{
    ChannelInfo, ChannelName, Epoch, ErrorCode, Lost, Offset, Payload, PayloadKind, ProtoError,
    Recovery, Start, Subscription,
};

/// Words that would mean a parser's or a type's message reached the client.
const LEAKS: [&str; 15] = [
    "serde",
    "line ",
    "column",
    "RawRequest",
    "RawStart",
    "RawOptions",
    "IdOnly",
    "Field",
    "invalid type",
    "unknown field",
    "struct",
    "expected u64",
    "RawValue",
    "Cow",
    "Box<",
];

/// Decode error messages are fixed texts (plus a static field or op name): they never echo the
/// frame, so they stay short whatever the frame.
const MAX_ERROR_MESSAGE_BYTES: usize = 512;

fuzz_target!(|data: &[u8]| {
    let frame = Bytes::copy_from_slice(data);
    let seed = fnv1a(data);
    // A free-form string to put where replies carry one (challenge, subject, close reason, error
    // message): its escaping must read back unchanged.
    let text = String::from_utf8_lossy(data);
    let id = match v1::decode_request(&frame) {
        Ok(request) => {
            assert!(is_json_text(data), "decoded a frame that is not JSON");
            assert_eq!(
                trim_json_ws(data).first(),
                Some(&b'{'),
                "decoded a frame that is not an object"
            );
            check_id(request.id.as_ref());
            check_op(&frame, &request, &text);
            check_replies(&request, seed, &text);
            round_trip(&request);
            request.id
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
            assert!(
                e.error.message.len() <= MAX_ERROR_MESSAGE_BYTES,
                "error message of {} bytes: {}",
                e.error.message.len(),
                e.error.message
            );
            if std::str::from_utf8(data).is_err() {
                assert_eq!(e.error.message, "request is not UTF-8");
                assert_eq!(e.id, None);
            }
            check_id(e.id.as_ref());
            check_error_reply(e.id.as_ref(), &e.error);
            e.id
        }
    };
    // Any error the server may answer a request with, with a free-form message.
    let code = ErrorCode::ALL[(seed % ErrorCode::ALL.len() as u64) as usize];
    check_error_reply(id.as_ref(), &ProtoError::new(code, text.into_owned()));
});

/// FNV-1a: a deterministic source of numbers for the replies' fields.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

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

/// The id as the reply's `id` should read: `null` without one.
fn expected_id(id: Option<&Id>) -> Value {
    id.map_or(Value::Null, |id| {
        serde_json::from_str(id.as_json()).expect("id of a representable reply")
    })
}

fn id_unrepresentable(id: Option<&Id>) -> bool {
    id.is_some_and(|id| value_if_representable(id.as_json().as_bytes()).is_none())
}

/// `data` of a publish or a reply: one JSON value sliced out of the frame.
fn check_payload(frame: &Bytes, payload: &Payload) {
    let json = payload.json();
    assert!(is_json_value(json), "data is not one JSON value");
    assert!(is_within(frame, json), "data is not a slice of the frame");
    assert_eq!(
        payload.kind() == PayloadKind::Text,
        json.first() == Some(&b'"')
    );
    assert_eq!(payload.len(), json.len());
}

/// Field ranges, payload slices, delivery frames and the secrecy of credentials.
fn check_op(frame: &Bytes, request: &Request, text: &str) {
    match &request.op {
        Op::Publish {
            channel,
            data: payload,
            msg_id,
        } => {
            check_payload(frame, payload);
            if let Some(m) = msg_id {
                assert!((1..=v1::MAX_MSG_ID_BYTES).contains(&m.len()), "{m:?}");
            }
            let json = payload.json();
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
                assert_eq!(frame.as_object().map(|o| o.len()), Some(4));
            }
        }
        Op::Reply {
            channel,
            offset,
            data: payload,
        } => {
            check_payload(frame, payload);
            assert!(offset.0 >= 1);
            // `from` names the replier: any text, escaped.
            let event = v1::encode_reply_event(channel, *offset, text, payload);
            assert!(is_json_text(&event), "reply event is not JSON");
            if let (Some(value), Some(ev)) = (
                value_if_representable(payload.json()),
                value_if_representable(&event),
            ) {
                assert_eq!(ev["event"], "reply");
                assert_eq!(ev["channel"], channel.as_str());
                assert_eq!(ev["offset"], offset.0);
                assert_eq!(ev["from"], text);
                assert_eq!(ev["data"], value);
                assert_eq!(ev.as_object().map(|o| o.len()), Some(5));
            }
        }
        Op::Subscribe { start, .. } | Op::History { start, .. } => {
            if let Start::Last(n) = start {
                assert!(*n >= 1);
            }
            if let Op::History { limit, .. } = &request.op {
                assert!((1..=v1::MAX_LIMIT).contains(limit));
            }
        }
        Op::Channels { prefix, limit, .. } => {
            assert!((1..=v1::MAX_LIMIT).contains(limit));
            if let Some(p) = prefix {
                assert!(p.len() <= v1::MAX_PREFIX_BYTES);
            }
        }
        Op::Auth(credentials) => {
            let shown = format!("{credentials:?}");
            let secret = match credentials {
                Credentials::Token(token) => {
                    assert_eq!(shown, "Token(..)");
                    token
                }
                Credentials::Signature {
                    publisher,
                    signature,
                } => {
                    assert!((1..=v1::MAX_CREDENTIAL_BYTES).contains(&publisher.len()));
                    assert_eq!(
                        shown,
                        format!("Signature {{ publisher: {publisher:?}, .. }}")
                    );
                    signature
                }
            };
            assert!((1..=v1::MAX_CREDENTIAL_BYTES).contains(&secret.len()));
            // The whole request shows nothing more than its id and the credentials' Debug.
            assert_eq!(
                format!("{request:?}"),
                format!("Request {{ id: {:?}, op: Auth({shown}) }}", request.id)
            );
        }
        Op::Refresh { token } => {
            assert!((1..=v1::MAX_CREDENTIAL_BYTES).contains(&token.len()));
        }
        Op::Create { .. }
        | Op::Delete { .. }
        | Op::Unsubscribe { .. }
        | Op::Ping
        | Op::Challenge => {}
    }
    // Events on the channel the request names: valid JSON, the close reason read back unchanged.
    if let Some(channel) = channel_of(&request.op) {
        let gap = v1::encode_gap(channel, Offset(1), Offset(u64::MAX));
        let gap = value_if_representable(&gap).expect("gap event is representable JSON");
        assert_eq!(
            gap,
            json!({"event": "gap", "channel": channel.as_str(), "from": 1, "to": u64::MAX})
        );
        let closed = v1::encode_closed(channel, text);
        let closed = value_if_representable(&closed).expect("closed event is representable JSON");
        assert_eq!(
            closed,
            json!({"event": "closed", "channel": channel.as_str(), "reason": text})
        );
    }
}

fn channel_of(op: &Op) -> Option<&ChannelName> {
    match op {
        Op::Create { channel, .. }
        | Op::Delete { channel }
        | Op::Publish { channel, .. }
        | Op::Subscribe { channel, .. }
        | Op::Unsubscribe { channel }
        | Op::History { channel, .. }
        | Op::Reply { channel, .. } => Some(channel),
        Op::Channels { .. } | Op::Ping | Op::Challenge | Op::Auth(_) | Op::Refresh { .. } => None,
    }
}

/// `encode_ok(id, ok)` and `encode_http_ok(ok)`: valid JSON, identical but for the id, echoing the
/// id, `ok: true`; `fields` checks the rest. `nests_payload`: the reply copies a payload, which
/// can take it beyond serde_json's limits.
fn check_ok(id: Option<&Id>, ok: Success<'_>, nests_payload: bool, fields: impl FnOnce(&Value)) {
    let reply = v1::encode_ok(id, ok);
    let http = v1::encode_http_ok(ok);
    assert!(is_json_text(reply.as_bytes()), "reply is not JSON: {reply}");
    assert!(
        is_json_text(http.as_bytes()),
        "HTTP reply is not JSON: {http}"
    );
    assert_eq!(
        reply,
        format!("{{\"id\":{},{}", id.map_or("null", Id::as_json), &http[1..]),
        "the WebSocket and HTTP replies differ beyond the id"
    );
    let Some(v) = value_if_representable(reply.as_bytes()) else {
        assert!(
            nests_payload || id_unrepresentable(id),
            "a reply without payload or odd id must be representable: {reply}"
        );
        return;
    };
    assert_eq!(v["id"], expected_id(id));
    assert_eq!(v["ok"], true);
    fields(&v);
    let mut without_id = v.clone();
    without_id.as_object_mut().map(|o| o.remove("id"));
    if let Some(h) = value_if_representable(http.as_bytes()) {
        assert_eq!(h, without_id);
    }
}

/// The object's keys, sorted (`serde_json::Map` sorts them; the byte-level layout is checked by
/// comparing the WebSocket and HTTP forms).
fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn sorted<const N: usize>(mut keys: [&str; N]) -> Vec<&str> {
    keys.sort_unstable();
    keys.to_vec()
}

fn subscription(start: Start, seed: u64, epoch: Epoch) -> Subscription {
    let (epoch, recovery) = match start {
        Start::After { epoch, offset } => {
            let r = match seed % 3 {
                0 => Recovery::Complete,
                1 => Recovery::Incomplete(Lost::EpochChanged),
                _ => Recovery::Incomplete(Lost::Expired {
                    from: Offset(offset.0.saturating_add(1)),
                    to: Offset(seed >> 7),
                }),
            };
            (epoch, Some(r))
        }
        _ => (epoch, None),
    };
    Subscription {
        epoch,
        offset: Offset(seed >> 3),
        from: Offset((seed >> 3).wrapping_add(1)),
        recovery,
    }
}

fn check_subscription(v: &Value, sub: &Subscription) {
    assert_eq!(v["epoch"], sub.epoch.to_string());
    assert_eq!(v["offset"], sub.offset.0);
    assert_eq!(v["from"], sub.from.0);
    match sub.recovery {
        None => {
            assert!(v.get("recovered").is_none() && v.get("lost").is_none());
        }
        Some(Recovery::Complete) => {
            assert_eq!(v["recovered"], true);
            assert!(v.get("lost").is_none());
        }
        Some(Recovery::Incomplete(Lost::EpochChanged)) => {
            assert_eq!(v["recovered"], false);
            assert_eq!(v["lost"], json!({"reason": "epoch_changed"}));
        }
        Some(Recovery::Incomplete(Lost::Expired { from, to })) => {
            assert_eq!(v["recovered"], false);
            assert_eq!(
                v["lost"],
                json!({"reason": "expired", "from": from.0, "to": to.0})
            );
        }
    }
}

/// A `history` reply listing `messages`, checked field by field.
fn check_history(id: Option<&Id>, sub: Subscription, messages: &[(Offset, Payload)], more: bool) {
    check_ok(
        id,
        Success::History {
            sub,
            messages,
            more,
        },
        !messages.is_empty(),
        |v| {
            check_subscription(v, &sub);
            assert_eq!(v["more"], more);
            let listed = v["messages"].as_array().expect("`messages` is an array");
            assert_eq!(listed.len(), messages.len());
            for (m, (offset, payload)) in listed.iter().zip(messages) {
                assert_eq!(m["offset"], offset.0);
                let value = value_if_representable(payload.json())
                    .expect("a payload inside a representable reply is representable");
                assert_eq!(m["data"], value);
                assert_eq!(keys(m), sorted(["offset", "data"]));
            }
        },
    );
}

/// Every success reply that applies to the op, with fields derived from the request and `seed`.
fn check_replies(request: &Request, seed: u64, text: &str) {
    let id = request.id.as_ref();
    let epoch = Epoch(seed.rotate_left(17));
    check_ok(id, Success::Empty, false, |v| {
        assert_eq!(keys(v), sorted(["id", "ok"]));
    });
    match &request.op {
        Op::Create { .. } => {
            let created = seed & 1 == 0;
            check_ok(id, Success::Created { created, epoch }, false, |v| {
                assert_eq!(keys(v), sorted(["id", "ok", "created", "epoch"]));
                assert_eq!(v["created"], created);
                assert_eq!(v["epoch"], epoch.to_string());
            });
        }
        Op::Delete { .. } => {
            check_ok(id, Success::Deleted, false, |v| {
                assert_eq!(keys(v), sorted(["id", "ok", "deleted"]));
                assert_eq!(v["deleted"], true);
            });
        }
        Op::Publish { data, .. } | Op::Reply { data, .. } => {
            // A publish with a `msg_id` may be answered as a duplicate.
            let duplicate = matches!(
                &request.op,
                Op::Publish {
                    msg_id: Some(_),
                    ..
                }
            );
            let offset = Offset(seed >> 1);
            check_ok(
                id,
                Success::Published {
                    epoch,
                    offset,
                    duplicate,
                },
                false,
                |v| {
                    assert_eq!(v["epoch"], epoch.to_string());
                    assert_eq!(v["offset"], offset.0);
                    if duplicate {
                        assert_eq!(
                            keys(v),
                            sorted(["id", "ok", "epoch", "offset", "duplicate"])
                        );
                        assert_eq!(v["duplicate"], true);
                    } else {
                        assert_eq!(keys(v), sorted(["id", "ok", "epoch", "offset"]));
                    }
                },
            );
            // The data as a backlog message of a history reply.
            let sub = subscription(Start::Oldest, seed, epoch);
            check_history(id, sub, &[(offset, data.clone())], seed & 2 == 0);
        }
        Op::Subscribe { start, .. } => {
            let sub = subscription(*start, seed, epoch);
            check_ok(id, Success::Subscribed(sub), false, |v| {
                check_subscription(v, &sub);
            });
        }
        Op::History { start, limit, .. } => {
            let sub = subscription(*start, seed, epoch);
            let messages = [
                (sub.from, Payload::text(text)),
                (
                    Offset(sub.from.0.wrapping_add(1)),
                    Payload::from_json_bytes(Bytes::from_static(b"[1, {\"a\": null}]"))
                        .expect("a JSON payload"),
                ),
            ];
            let n = (*limit).min(messages.len());
            check_history(id, sub, &messages[..n], *limit < messages.len());
        }
        Op::Channels { prefix, after, .. } => {
            let mut names: Vec<ChannelName> = after.iter().cloned().collect();
            if let Some(p) = prefix.as_deref().and_then(|p| ChannelName::new(p).ok()) {
                names.push(p);
            }
            let infos: Vec<ChannelInfo> = names
                .into_iter()
                .enumerate()
                .map(|(i, channel)| ChannelInfo {
                    channel,
                    epoch: Epoch(epoch.0 ^ i as u64),
                    offset: Offset(seed >> 2),
                    subscribers: (seed % 1_000_003) as usize,
                    backlog_messages: (seed % 1001) as usize,
                    backlog_bytes: (seed >> 40) as usize,
                    first_offset: Offset((seed >> 2).wrapping_sub(i as u64)),
                })
                .collect();
            let more = seed & 4 == 0;
            check_ok(
                id,
                Success::Channels {
                    channels: &infos,
                    more,
                },
                false,
                |v| {
                    assert_eq!(keys(v), sorted(["id", "ok", "channels", "more"]));
                    assert_eq!(v["more"], more);
                    let listed = v["channels"].as_array().expect("`channels` is an array");
                    assert_eq!(listed.len(), infos.len());
                    for (l, c) in listed.iter().zip(&infos) {
                        assert_eq!(
                            *l,
                            json!({
                                "channel": c.channel.as_str(),
                                "epoch": c.epoch.to_string(),
                                "offset": c.offset.0,
                                "subscribers": c.subscribers,
                                "backlog": {
                                    "messages": c.backlog_messages,
                                    "bytes": c.backlog_bytes,
                                    "first_offset": c.first_offset.0,
                                },
                            })
                        );
                    }
                },
            );
        }
        Op::Challenge => {
            check_ok(id, Success::Challenge(text), false, |v| {
                assert_eq!(keys(v), sorted(["id", "ok", "challenge"]));
                assert_eq!(v["challenge"], text);
            });
        }
        Op::Auth(Credentials::Signature { publisher, .. }) => {
            let ok = Success::Authenticated {
                publisher: Some(publisher),
                subject: None,
                expires_at: None,
            };
            check_ok(id, ok, false, |v| {
                assert_eq!(keys(v), sorted(["id", "ok", "publisher"]));
                assert_eq!(v["publisher"], **publisher);
            });
        }
        Op::Auth(Credentials::Token(_)) | Op::Refresh { .. } => {
            // A subscriber's token: its subject (any text) and expiry.
            let expires_at = (seed & 1 == 0).then_some(seed >> 1);
            let ok = Success::Authenticated {
                publisher: None,
                subject: Some(text),
                expires_at,
            };
            check_ok(id, ok, false, |v| {
                assert_eq!(v["subject"], text);
                match expires_at {
                    Some(e) => {
                        assert_eq!(keys(v), sorted(["id", "ok", "subject", "expires_at"]));
                        assert_eq!(v["expires_at"], e);
                    }
                    None => assert_eq!(keys(v), sorted(["id", "ok", "subject"])),
                }
            });
        }
        Op::Unsubscribe { .. } | Op::Ping => {}
    }
}

/// The error reply is valid JSON, echoes the id and carries the code and the message unchanged.
fn check_error_reply(id: Option<&Id>, error: &ProtoError) {
    let reply = v1::encode_error(id, error);
    assert!(is_json_text(reply.as_bytes()), "reply is not JSON: {reply}");
    let Some(v) = value_if_representable(reply.as_bytes()) else {
        // Only the echoed id can be beyond serde_json's limits (e.g. `1e400`).
        assert!(
            id_unrepresentable(id),
            "a reply without odd id must be representable"
        );
        return;
    };
    assert_eq!(v["id"], expected_id(id));
    assert_eq!(v["ok"], false);
    assert_eq!(
        v["error"],
        json!({"code": error.code.as_str(), "message": &*error.message})
    );
    assert_eq!(keys(&v), sorted(["id", "ok", "error"]));
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// Re-encodes a decoded request in canonical form; it must decode to the same request.
fn round_trip(request: &Request) {
    let mut text = format!("{{\"op\":\"{}\"", request.op.name());
    if let Some(id) = &request.id {
        text.push_str(",\"id\":");
        text.push_str(id.as_json());
    }
    let mut frame = text.into_bytes();
    let mut field = |name: &str, json: &[u8]| {
        frame.extend_from_slice(format!(",\"{name}\":").as_bytes());
        frame.extend_from_slice(json);
    };
    let channel = |c: &ChannelName| json_str(c.as_str()).into_bytes();
    match &request.op {
        Op::Create {
            channel: c,
            options,
        } => {
            field("channel", &channel(c));
            field("options", v1::options_json(options).as_bytes());
        }
        Op::Delete { channel: c } | Op::Unsubscribe { channel: c } => {
            field("channel", &channel(c));
        }
        Op::Publish {
            channel: c,
            data,
            msg_id,
        } => {
            field("channel", &channel(c));
            field("data", data.json());
            if let Some(m) = msg_id {
                field("msg_id", json_str(m).as_bytes());
            }
        }
        Op::Subscribe { channel: c, start } => {
            field("channel", &channel(c));
            field("start", v1::start_json(*start).as_bytes());
        }
        Op::History {
            channel: c,
            start,
            limit,
        } => {
            field("channel", &channel(c));
            field("start", v1::start_json(*start).as_bytes());
            field("limit", limit.to_string().as_bytes());
        }
        Op::Reply {
            channel: c,
            offset,
            data,
        } => {
            field("channel", &channel(c));
            field("offset", offset.0.to_string().as_bytes());
            field("data", data.json());
        }
        Op::Channels {
            prefix,
            after,
            limit,
        } => {
            if let Some(p) = prefix {
                field("prefix", json_str(p).as_bytes());
            }
            if let Some(a) = after {
                field("after", &channel(a));
            }
            field("limit", limit.to_string().as_bytes());
        }
        Op::Ping | Op::Challenge => {}
        Op::Auth(Credentials::Token(t)) | Op::Refresh { token: t } => {
            field("token", json_str(t).as_bytes());
        }
        Op::Auth(Credentials::Signature {
            publisher,
            signature,
        }) => {
            field("publisher", json_str(publisher).as_bytes());
            field("signature", json_str(signature).as_bytes());
        }
    }
    frame.push(b'}');
    let again = v1::decode_request(&Bytes::from(frame.clone())).unwrap_or_else(|e| {
        panic!(
            "canonical re-encoding {:?} does not decode: {e:?}",
            String::from_utf8_lossy(&frame)
        )
    });
    assert_eq!(&again, request);
}
