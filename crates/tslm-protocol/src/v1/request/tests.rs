use super::*;
use crate::PayloadKind;

fn dec(s: &str) -> Result<Request, RequestError> {
    decode_request(&Bytes::copy_from_slice(s.as_bytes()))
}

fn op(s: &str) -> Op {
    match dec(s) {
        Ok(r) => r.op,
        Err(e) => panic!("{s} -> {e:?}"),
    }
}

fn ch(s: &str) -> ChannelName {
    ChannelName::new(s).unwrap()
}

fn err(s: &str) -> RequestError {
    dec(s).unwrap_err()
}

/// Asserts `s` is refused with bad_request and a message containing `needle`.
fn refused(s: &str, needle: &str) {
    let e = err(s);
    assert_eq!(e.error.code, ErrorCode::BadRequest, "{s}");
    assert!(
        e.error.message.contains(needle),
        "{s} -> {:?}, expected {needle:?}",
        e.error.message
    );
}

#[test]
fn decodes_every_op() {
    let r = dec(r#"{"op":"create","id":1,"channel":"news"}"#).unwrap();
    assert_eq!(r.id, Some(Id::number(1)));
    assert_eq!(
        r.op,
        Op::Create {
            channel: ch("news"),
            options: ChannelOptions::default()
        }
    );
    let r = dec(r#"{"op":"subscribe","id":"a-b","channel":"news"}"#).unwrap();
    assert_eq!(r.id.unwrap().as_json(), "\"a-b\"");
    assert_eq!(
        r.op,
        Op::Subscribe {
            channel: ch("news"),
            start: Start::New
        }
    );
    let r = dec(r#"{"op":"unsubscribe","channel":"news"}"#).unwrap();
    assert_eq!(r.id, None);
    assert_eq!(
        r.op,
        Op::Unsubscribe {
            channel: ch("news")
        }
    );
    assert_eq!(op(r#"{"op":"ping","id":null}"#), Op::Ping);
    match op(r#"{"op":"publish","channel":"p","data": {"x" : [1, 2.5e3]} }"#) {
        Op::Publish {
            channel,
            data,
            msg_id,
        } => {
            assert_eq!(channel, ch("p"));
            assert_eq!(&data.json()[..], br#"{"x" : [1, 2.5e3]}"#);
            assert_eq!(data.kind(), PayloadKind::Json);
            assert_eq!(msg_id, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        op(r#"{"op":"delete","id":2,"channel":"news"}"#),
        Op::Delete {
            channel: ch("news")
        }
    );
    assert_eq!(
        op(r#"{"op":"history","channel":"news"}"#),
        Op::History {
            channel: ch("news"),
            start: Start::Oldest,
            limit: DEFAULT_LIMIT
        }
    );
    assert_eq!(
        op(r#"{"op":"channels"}"#),
        Op::Channels {
            prefix: None,
            after: None,
            limit: DEFAULT_LIMIT
        }
    );
}

#[test]
fn op_names_are_the_wire_names() {
    for (req, name) in [
        (r#"{"op":"create","channel":"c"}"#, "create"),
        (r#"{"op":"delete","channel":"c"}"#, "delete"),
        (r#"{"op":"publish","channel":"c","data":1}"#, "publish"),
        (r#"{"op":"subscribe","channel":"c"}"#, "subscribe"),
        (r#"{"op":"unsubscribe","channel":"c"}"#, "unsubscribe"),
        (r#"{"op":"history","channel":"c"}"#, "history"),
        (
            r#"{"op":"reply","channel":"c","offset":1,"data":1}"#,
            "reply",
        ),
        (r#"{"op":"channels"}"#, "channels"),
        (r#"{"op":"ping"}"#, "ping"),
    ] {
        assert_eq!(op(req).name(), name);
    }
}

#[test]
fn publish_null_and_string_data() {
    match op(r#"{"op":"publish","channel":"p","data":null}"#) {
        Op::Publish { data, .. } => assert_eq!(&data.json()[..], b"null"),
        other => panic!("{other:?}"),
    }
    match op(r#"{"op":"publish","channel":"p","data":"hi \"x\""}"#) {
        Op::Publish { data, .. } => {
            assert_eq!(&data.json()[..], br#""hi \"x\"""#);
            assert_eq!(data.kind(), PayloadKind::Text);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn publish_data_is_a_slice_of_the_frame() {
    let frame = Bytes::from_static(br#"{"op":"publish","channel":"p","data":[1,2]}"#);
    match decode_request(&frame).unwrap().op {
        Op::Publish { data, .. } => {
            let start = frame.as_ptr() as usize;
            let at = data.json().as_ptr() as usize;
            assert!(at >= start && at + data.len() <= start + frame.len());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn create_options() {
    assert_eq!(
        op(r#"{"op":"create","channel":"c","options":{}}"#),
        Op::Create {
            channel: ch("c"),
            options: ChannelOptions::default()
        }
    );
    assert_eq!(
        op(r#"{"op":"create","channel":"c","options":null}"#),
        Op::Create {
            channel: ch("c"),
            options: ChannelOptions::default()
        }
    );
    let all = r#"{"op":"create","channel":"c","options":{"backlog_messages":10,
        "backlog_seconds":0,"max_message_bytes":4096,"max_subscribers":18446744073709551615,
        "replies":false}}"#;
    assert_eq!(
        op(all),
        Op::Create {
            channel: ch("c"),
            options: ChannelOptions {
                backlog_messages: Some(10),
                backlog_seconds: Some(0),
                max_message_bytes: Some(4096),
                max_subscribers: Some(u64::MAX),
                replies: Some(false),
            }
        }
    );
    // Integers as JSON Schema counts them: an integral number in any notation.
    assert_eq!(
        op(
            r#"{"op":"create","channel":"c","options":{"max_subscribers":86961.0,
            "backlog_messages":1e3,"backlog_seconds":-0.0,"max_message_bytes":9.007199254740992e15}}"#
        ),
        Op::Create {
            channel: ch("c"),
            options: ChannelOptions {
                max_subscribers: Some(86961),
                backlog_messages: Some(1000),
                backlog_seconds: Some(0),
                max_message_bytes: Some(9_007_199_254_740_992),
                replies: None,
            }
        }
    );
    assert_eq!(
        op(r#"{"op":"create","channel":"c","options":{"replies":true}}"#),
        Op::Create {
            channel: ch("c"),
            options: ChannelOptions {
                replies: Some(true),
                ..ChannelOptions::default()
            }
        }
    );
}

#[test]
fn integral_reads_json_schema_integers_exactly() {
    for (text, want) in [
        ("0", Some(0)),
        ("-0", Some(0)),
        ("-0.0e-5", Some(0)),
        ("0e99999999999999999999", Some(0)),
        ("5", Some(5)),
        ("5.0", Some(5)),
        ("5e0", Some(5)),
        ("50e-1", Some(5)),
        ("1E+3", Some(1000)),
        ("1.5e1", Some(15)),
        ("86961.0", Some(86961)),
        ("2111599191287955.0", Some(2_111_599_191_287_955)),
        ("18446744073709551615", Some(u64::MAX)),
        ("18446744073709551615.000", Some(u64::MAX)),
        ("1.8446744073709551615e19", Some(u64::MAX)),
        ("18446744073709551616", None),
        ("1e20", None),
        ("1e99999999999999999999", None),
        ("5.5", None),
        ("51e-1", None),
        ("-1", None),
        ("-1.0", None),
        ("null", None),
        ("true", None),
        ("\"5\"", None),
    ] {
        assert_eq!(integral(text), want, "{text}");
    }
}

#[test]
fn create_refusals() {
    for options in [
        r#"{"backlog":1}"#,
        r#"{"backlog_messages":-1}"#,
        r#"{"backlog_messages":1.5}"#,
        r#"{"backlog_messages":"1"}"#,
        r#"{"backlog_messages":1.8446744073709552e19}"#,
        r#"{"backlog_messages":18446744073709551616}"#,
        r#"{"backlog_messages":-1.0}"#,
        r#"{"replies":1}"#,
        // A key given holds a value: `null` is not "not given".
        r#"{"replies":null}"#,
        r#"{"backlog_messages":null}"#,
        r#"{"max_subscribers":null,"replies":false}"#,
        r#"{"replies":true,"replies":false}"#,
        r#"[1]"#,
        r#"[]"#,
        r#""x""#,
        "7",
        "true",
    ] {
        refused(
            &format!(r#"{{"op":"create","channel":"c","options":{options}}}"#),
            "`options` must be an object with any of `backlog_messages`, `backlog_seconds`, \
             `max_message_bytes`, `max_subscribers`",
        );
    }
    refused(
        r#"{"op":"create","options":{}}"#,
        "`create` needs a `channel`",
    );
    refused(
        r#"{"op":"create","channel":"c","data":1}"#,
        "`data` is not allowed with `create`",
    );
    refused(
        r#"{"op":"create","channel":"c","start":"new"}"#,
        "`start` is not allowed with `create`",
    );
}

#[test]
fn delete_and_its_refusals() {
    refused(r#"{"op":"delete"}"#, "`delete` needs a `channel`");
    refused(r#"{"op":"delete","channel":"a b"}"#, "channel name");
    for field in [
        r#""data":1"#,
        r#""options":{}"#,
        r#""limit":5"#,
        r#""after":"x""#,
    ] {
        let name = field.split('"').nth(1).unwrap();
        refused(
            &format!(r#"{{"op":"delete","channel":"c",{field}}}"#),
            &format!("`{name}` is not allowed with `delete`"),
        );
    }
}

#[test]
fn publish_msg_id() {
    let id_of = |s: &str| match op(s) {
        Op::Publish { msg_id, .. } => msg_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        id_of(r#"{"op":"publish","channel":"c","data":1,"msg_id":"abc"}"#).as_deref(),
        Some("abc")
    );
    assert_eq!(
        id_of(r#"{"op":"publish","channel":"c","data":1,"msg_id":"\u00e9\n\"x"}"#).as_deref(),
        Some("é\n\"x")
    );
    assert_eq!(
        id_of(r#"{"op":"publish","channel":"c","data":1,"msg_id":null}"#),
        None
    );
    // 128 bytes of decoded UTF-8 (64 two-byte characters) is the most allowed.
    let max = "é".repeat(64);
    assert_eq!(
        id_of(&format!(
            r#"{{"op":"publish","channel":"c","data":1,"msg_id":"{max}"}}"#
        ))
        .as_deref(),
        Some(max.as_str())
    );
    // Escapes count as the bytes they decode to.
    let escaped = "\\u0041".repeat(128);
    assert_eq!(
        id_of(&format!(
            r#"{{"op":"publish","channel":"c","data":1,"msg_id":"{escaped}"}}"#
        ))
        .as_deref(),
        Some("A".repeat(128).as_str())
    );
    let too_long = format!("{max}x");
    for msg_id in [
        r#""""#.to_owned(),
        format!(r#""{too_long}""#),
        "7".to_owned(),
        "[\"a\"]".to_owned(),
        "{}".to_owned(),
        "true".to_owned(),
        r#""\ud800""#.to_owned(),
    ] {
        refused(
            &format!(r#"{{"op":"publish","channel":"c","data":1,"msg_id":{msg_id}}}"#),
            "`msg_id` must be a string of 1 to 128 bytes",
        );
    }
    refused(
        r#"{"op":"subscribe","channel":"c","msg_id":"a"}"#,
        "`msg_id` is not allowed with `subscribe`",
    );
    refused(
        r#"{"op":"publish","channel":"c","data":1,"start":"new"}"#,
        "`start` is not allowed with `publish`",
    );
    refused(
        r#"{"op":"publish","channel":"c","msg_id":"a"}"#,
        "`publish` needs `data`",
    );
}

fn start_of(s: &str) -> Start {
    match op(s) {
        Op::Subscribe { start, .. } | Op::History { start, .. } => start,
        other => panic!("{other:?}"),
    }
}

#[test]
fn subscribe_start_forms() {
    let sub = |start: &str| {
        start_of(&format!(
            r#"{{"op":"subscribe","channel":"c","start":{start}}}"#
        ))
    };
    assert_eq!(sub(r#""new""#), Start::New);
    assert_eq!(sub("null"), Start::New);
    assert_eq!(sub(r#""oldest""#), Start::Oldest);
    assert_eq!(sub(r#""\u006fldest""#), Start::Oldest);
    assert_eq!(sub(r#"{"last":1}"#), Start::Last(1));
    assert_eq!(
        sub(r#"{"last":18446744073709551615}"#),
        Start::Last(u64::MAX)
    );
    assert_eq!(
        sub(r#"{"epoch":"00000000000000ab","offset":0}"#),
        Start::After {
            epoch: Epoch(0xab),
            offset: Offset(0)
        }
    );
    assert_eq!(
        sub(r#"{ "offset" : 42, "epoch" : "FFFFFFFFFFFFFFFF" }"#),
        Start::After {
            epoch: Epoch(u64::MAX),
            offset: Offset(42)
        }
    );
}

#[test]
fn subscribe_start_refusals() {
    for start in [
        r#""""#,
        r#""newest""#,
        r#""New""#,
        r#""last""#,
        "1",
        "true",
        "[]",
        r#"["new"]"#,
        r#"[5]"#,
        "{}",
        r#"{"last":0}"#,
        r#"{"last":-1}"#,
        r#"{"last":1.5}"#,
        r#"{"last":"3"}"#,
        r#"{"last":3,"offset":1}"#,
        r#"{"last":3,"epoch":"00000000000000ab","offset":1}"#,
        r#"{"last":3,"x":1}"#,
        r#"{"epoch":"00000000000000ab"}"#,
        r#"{"offset":3}"#,
        r#"{"epoch":"abc","offset":3}"#,
        r#"{"epoch":"00000000000000ag","offset":3}"#,
        r#"{"epoch":"000000000000000ab","offset":3}"#,
        r#"{"epoch":"+0000000000000ab","offset":3}"#,
        r#"{"epoch":171,"offset":3}"#,
        r#"{"epoch":"00000000000000ab","offset":-1}"#,
        r#"{"epoch":"00000000000000ab","offset":3,"last":1}"#,
        r#"{"epoch":"00000000000000ab","offset":3,"extra":1}"#,
    ] {
        refused(
            &format!(r#"{{"op":"subscribe","channel":"c","start":{start}}}"#),
            r#"`start` must be "new", "oldest", {"last": N} with N >= 1, or {"epoch": "<16 hex digits>", "offset": N}"#,
        );
    }
    refused(
        r#"{"op":"subscribe","channel":"c","limit":5}"#,
        "`limit` is not allowed with `subscribe`",
    );
    refused(
        r#"{"op":"subscribe","channel":"c","data":null}"#,
        "`data` is not allowed with `subscribe`",
    );
    refused(r#"{"op":"subscribe","start":"new"}"#, "needs a `channel`");
}

#[test]
fn unsubscribe_takes_only_a_channel() {
    refused(
        r#"{"op":"unsubscribe","channel":"c","start":"new"}"#,
        "`start` is not allowed with `unsubscribe`",
    );
    refused(
        r#"{"op":"unsubscribe","channel":"c","msg_id":"x"}"#,
        "`msg_id` is not allowed with `unsubscribe`",
    );
}

#[test]
fn history_and_its_refusals() {
    assert_eq!(
        op(r#"{"op":"history","channel":"c","start":"new","limit":1}"#),
        Op::History {
            channel: ch("c"),
            start: Start::New,
            limit: 1
        }
    );
    assert_eq!(
        op(r#"{"op":"history","channel":"c","start":{"last":5},"limit":1000}"#),
        Op::History {
            channel: ch("c"),
            start: Start::Last(5),
            limit: 1000
        }
    );
    assert_eq!(
        start_of(
            r#"{"op":"history","channel":"c","start":{"epoch":"0123456789abcdef","offset":9}}"#
        ),
        Start::After {
            epoch: Epoch(0x0123_4567_89ab_cdef),
            offset: Offset(9)
        }
    );
    assert_eq!(
        start_of(r#"{"op":"history","channel":"c","start":null,"limit":null}"#),
        Start::Oldest
    );
    for limit in [
        "0",
        "1001",
        "-1",
        "1.0",
        "1e2",
        r#""5""#,
        "[5]",
        "18446744073709551616",
    ] {
        refused(
            &format!(r#"{{"op":"history","channel":"c","limit":{limit}}}"#),
            "`limit` must be an integer from 1 to 1000",
        );
    }
    refused(
        r#"{"op":"history","channel":"c","start":"latest"}"#,
        "`start` must be",
    );
    refused(
        r#"{"op":"history","limit":3}"#,
        "`history` needs a `channel`",
    );
    refused(
        r#"{"op":"history","channel":"c","offset":3}"#,
        "`offset` is not allowed with `history`",
    );
    refused(
        r#"{"op":"history","channel":"c","prefix":"a"}"#,
        "`prefix` is not allowed with `history`",
    );
}

#[test]
fn reply_and_its_refusals() {
    let frame = Bytes::from_static(
        br#"{"op":"reply","id":3,"channel":"rpc","offset":7,"data":{"ok" : true}}"#,
    );
    let r = decode_request(&frame).unwrap();
    assert_eq!(r.id, Some(Id::number(3)));
    match r.op {
        Op::Reply {
            channel,
            offset,
            data,
        } => {
            assert_eq!((channel, offset), (ch("rpc"), Offset(7)));
            assert_eq!(&data.json()[..], br#"{"ok" : true}"#);
            let start = frame.as_ptr() as usize;
            let at = data.json().as_ptr() as usize;
            assert!(at >= start && at + data.len() <= start + frame.len());
        }
        other => panic!("{other:?}"),
    }
    match op(r#"{"op":"reply","channel":"rpc","offset":1,"data":null}"#) {
        Op::Reply { data, offset, .. } => {
            assert_eq!((&data.json()[..], offset), (&b"null"[..], Offset(1)));
        }
        other => panic!("{other:?}"),
    }
    refused(
        r#"{"op":"reply","channel":"rpc","data":1}"#,
        "`reply` needs an `offset`",
    );
    refused(
        r#"{"op":"reply","channel":"rpc","offset":null,"data":1}"#,
        "`reply` needs an `offset`",
    );
    for offset in ["0", "-1", "1.5", r#""1""#, "[1]", "{}"] {
        refused(
            &format!(r#"{{"op":"reply","channel":"rpc","offset":{offset},"data":1}}"#),
            "`offset` must be an integer >= 1",
        );
    }
    refused(
        r#"{"op":"reply","channel":"rpc","offset":1}"#,
        "`reply` needs `data`",
    );
    refused(
        r#"{"op":"reply","offset":1,"data":1}"#,
        "`reply` needs a `channel`",
    );
    refused(
        r#"{"op":"reply","channel":"rpc","offset":1,"data":1,"msg_id":"m"}"#,
        "`msg_id` is not allowed with `reply`",
    );
    refused(
        r#"{"op":"publish","channel":"rpc","offset":1,"data":1}"#,
        "`offset` is not allowed with `publish`",
    );
}

#[test]
fn channels_and_its_refusals() {
    assert_eq!(
        op(r#"{"op":"channels","prefix":"","after":"news.a","limit":1000}"#),
        Op::Channels {
            prefix: Some(String::new()),
            after: Some(ch("news.a")),
            limit: 1000
        }
    );
    let max = "p".repeat(255);
    assert_eq!(
        op(&format!(r#"{{"op":"channels","prefix":"{max}"}}"#)),
        Op::Channels {
            prefix: Some(max.clone()),
            after: None,
            limit: DEFAULT_LIMIT
        }
    );
    // A prefix is only matched against names; it need not be a valid name itself.
    assert_eq!(
        op(r#"{"op":"channels","prefix":"a b"}"#),
        Op::Channels {
            prefix: Some("a b".into()),
            after: None,
            limit: DEFAULT_LIMIT
        }
    );
    for prefix in [format!(r#""{max}p""#), "1".into(), "[]".into(), "{}".into()] {
        refused(
            &format!(r#"{{"op":"channels","prefix":{prefix}}}"#),
            "`prefix` must be a string of at most 255 bytes",
        );
    }
    for after in [r#""""#, r#""a b""#, r#"".""#, "5", "[\"a\"]"] {
        refused(
            &format!(r#"{{"op":"channels","after":{after}}}"#),
            "`after` must be a channel name",
        );
    }
    refused(
        r#"{"op":"channels","limit":0}"#,
        "`limit` must be an integer from 1 to 1000",
    );
    refused(
        r#"{"op":"channels","channel":"c"}"#,
        "`channel` is not allowed with `channels`",
    );
    refused(
        r#"{"op":"channels","start":"new"}"#,
        "`start` is not allowed with `channels`",
    );
    refused(
        r#"{"op":"channels","data":1}"#,
        "`data` is not allowed with `channels`",
    );
}

#[test]
fn ping_takes_no_fields() {
    refused(
        r#"{"op":"ping","channel":"x"}"#,
        "`channel` is not allowed with `ping`",
    );
    refused(
        r#"{"op":"ping","limit":1}"#,
        "`limit` is not allowed with `ping`",
    );
}

#[test]
fn auth_challenge_and_refresh() {
    assert_eq!(
        dec(r#"{"op":"challenge","id":1}"#).unwrap().op,
        Op::Challenge
    );
    assert_eq!(
        dec(r#"{"op":"auth","token":"abc"}"#).unwrap().op,
        Op::Auth(Credentials::Token("abc".into()))
    );
    assert_eq!(
        dec(r#"{"op":"auth","publisher":"billing","signature":"c2ln"}"#)
            .unwrap()
            .op,
        Op::Auth(Credentials::Signature {
            publisher: "billing".into(),
            signature: "c2ln".into()
        })
    );
    assert_eq!(
        dec(r#"{"op":"refresh","token":"t"}"#).unwrap().op,
        Op::Refresh { token: "t".into() }
    );
    for bad in [
        r#"{"op":"auth"}"#,
        r#"{"op":"auth","token":""}"#,
        r#"{"op":"auth","token":5}"#,
        r#"{"op":"auth","token":"a","publisher":"p","signature":"s"}"#,
        r#"{"op":"auth","publisher":"p"}"#,
        r#"{"op":"auth","signature":"s"}"#,
        r#"{"op":"refresh"}"#,
        r#"{"op":"refresh","token":""}"#,
        r#"{"op":"challenge","token":"x"}"#,
        r#"{"op":"auth","token":"x","channel":"c"}"#,
    ] {
        assert_eq!(err(bad).error.code, ErrorCode::BadRequest, "{bad}");
    }
    let long = format!(
        r#"{{"op":"auth","token":"{}"}}"#,
        "t".repeat(MAX_CREDENTIAL_BYTES + 1)
    );
    assert_eq!(err(&long).error.code, ErrorCode::BadRequest);
    // Credentials never show in debug output.
    for req in [
        r#"{"op":"auth","token":"secret-xyz"}"#,
        r#"{"op":"refresh","token":"secret-xyz"}"#,
        r#"{"op":"auth","publisher":"p","signature":"secret-xyz"}"#,
    ] {
        let shown = format!("{:?}", dec(req).unwrap());
        assert!(!shown.contains("secret-xyz"), "{shown}");
    }
}

#[test]
fn unknown_op_lists_every_op() {
    let e = err(r#"{"op":"jump","id":8,"channel":"news","start":"bogus"}"#);
    assert_eq!(e.error.code, ErrorCode::UnknownOp);
    assert_eq!(e.id, Some(Id::number(8)));
    assert_eq!(
        e.error.message,
        "unknown op; expected one of create, delete, publish, subscribe, unsubscribe, \
         history, reply, channels, ping, challenge, auth, refresh"
    );
}

#[test]
fn every_decode_error_has_a_code_and_keeps_the_id() {
    let e = err("not json");
    assert_eq!(e.error.code, ErrorCode::BadRequest);
    assert_eq!(e.id, None);
    let e = err(r#"{"op":"subscribe","id":7,"channel":"news","extra":1}"#);
    assert_eq!(e.error.code, ErrorCode::BadRequest);
    assert_eq!(e.id, Some(Id::number(7)));
    let e = err(r#"{"op":"subscribe","id":9,"channel":"bad name"}"#);
    assert_eq!(e.error.code, ErrorCode::BadRequest);
    assert_eq!(e.id, Some(Id::number(9)));
    for s in [
        r#"{"op":"subscribe","id":10,"channel":"c","start":"x"}"#,
        r#"{"op":"history","id":10,"channel":"c","limit":0}"#,
        r#"{"op":"create","id":10,"channel":"c","options":{"x":1}}"#,
        r#"{"op":"publish","id":10,"channel":"c","data":1,"msg_id":""}"#,
        r#"{"op":"reply","id":10,"channel":"c","offset":0,"data":1}"#,
        r#"{"op":"channels","id":10,"after":""}"#,
        r#"{"op":"channels","id":10,"channel":"c"}"#,
    ] {
        let e = err(s);
        assert_eq!(
            (e.error.code, e.id),
            (ErrorCode::BadRequest, Some(Id::number(10))),
            "{s}"
        );
    }
    for s in [
        r#"{"op":"subscribe"}"#,
        r#"{"op":"publish","channel":"x"}"#,
        r#"{"op":"create","channel":"x","data":1}"#,
        r#"{"op":"ping","channel":"x"}"#,
        r#"{"id":1}"#,
        r#"{"op":1}"#,
        r#"[]"#,
        r#"["publish", 7, "arr", {"x":1}]"#,
        r#"["ping"]"#,
        r#""ping""#,
        r#"{"op":"subscribe","channel":5}"#,
        r#"{"op":"subscribe","channel":"a","channel":"b"}"#,
        r#"{"op":"subscribe","channel":"a","start":"new","start":"new"}"#,
        r#"{"op":"ping","id":{"a":1}}"#,
        r#"{"op":"ping","id":true}"#,
    ] {
        assert_eq!(err(s).error.code, ErrorCode::BadRequest, "{s}");
    }
    let long = format!(r#"{{"op":"ping","id":"{}"}}"#, "x".repeat(200));
    assert_eq!(err(&long).error.code, ErrorCode::BadRequest);
    assert_eq!(
        decode_request(&Bytes::from_static(b"\xff\xfe"))
            .unwrap_err()
            .error
            .code,
        ErrorCode::BadRequest
    );
}

#[test]
fn errors_do_not_leak_internals() {
    for s in [
        r#"{"op":1}"#,
        r#"{"x":1}"#,
        "{",
        r#"{"op":"publish","channel":["a"]}"#,
        r#"{"op":"subscribe","channel":"c","start":{"last":"x"}}"#,
        r#"{"op":"subscribe","channel":"c","start":{"bogus":1}}"#,
        r#"{"op":"create","channel":"c","options":{"bogus":1}}"#,
        r#"{"op":"create","channel":"c","options":{"replies":"yes"}}"#,
        r#"{"op":"history","channel":"c","limit":"x"}"#,
        r#"{"op":"publish","channel":"c","data":1,"msg_id":5}"#,
        r#"{"op":"channels","after":"a/b"}"#,
    ] {
        let msg = err(s).error.message;
        for leak in [
            "RawRequest",
            "RawStart",
            "RawOptions",
            "Field",
            "line ",
            "column",
            "serde",
            "invalid type",
            "unknown field",
            "expected u64",
        ] {
            assert!(!msg.contains(leak), "{s} -> {msg}");
        }
    }
}

#[test]
fn client_side_field_encoders_round_trip() {
    for start in [
        Start::New,
        Start::Oldest,
        Start::Last(1),
        Start::Last(u64::MAX),
        Start::After {
            epoch: Epoch(0xab),
            offset: Offset(0),
        },
    ] {
        let req = format!(
            r#"{{"op":"subscribe","channel":"c","start":{}}}"#,
            start_json(start)
        );
        assert_eq!(start_of(&req), start);
    }
    assert_eq!(
        start_json(Start::After {
            epoch: Epoch(0xab),
            offset: Offset(3)
        }),
        r#"{"epoch":"00000000000000ab","offset":3}"#
    );
    assert_eq!(options_json(&ChannelOptions::default()), "{}");
    let all = ChannelOptions {
        backlog_messages: Some(1),
        backlog_seconds: Some(2),
        max_message_bytes: Some(3),
        max_subscribers: Some(4),
        replies: Some(true),
    };
    assert_eq!(
        options_json(&all),
        r#"{"backlog_messages":1,"backlog_seconds":2,"max_message_bytes":3,"max_subscribers":4,"replies":true}"#
    );
    let some = ChannelOptions {
        max_subscribers: Some(9),
        replies: Some(false),
        ..ChannelOptions::default()
    };
    assert_eq!(
        options_json(&some),
        r#"{"max_subscribers":9,"replies":false}"#
    );
    for options in [ChannelOptions::default(), all, some] {
        let req = format!(
            r#"{{"op":"create","channel":"c","options":{}}}"#,
            options_json(&options)
        );
        assert_eq!(
            op(&req),
            Op::Create {
                channel: ch("c"),
                options
            }
        );
    }
}
