//! Channel options (`tslm_protocol::v1::decode_options`, the JSON body of
//! `PUT /v1/channels/{name}`, and the `options` of a v1 `create`) on arbitrary bodies, and what the
//! server makes of them (`tslm_server::classes::ChannelClass::settings_with`).
//!
//! Properties, beyond "does not panic":
//! - a body is accepted only when it is one JSON object (UTF-8, RFC 8259; differential against
//!   the recogniser in `tslm_fuzz`) whose members are the documented options with values of the
//!   documented types (integers >= 0 as JSON Schema counts them, `5` and `5.0` alike; `replies` a
//!   boolean; never `null`), each number being exactly the integer decoded (checked by comparing
//!   canonical decimal forms of the member's text and of the integer, a round trip);
//! - a refusal is `bad_request` with one of three fixed messages, chosen by what is wrong: not
//!   UTF-8, not one JSON value, not an options object;
//! - the same text as the `options` of a v1 `create` request decodes to the same options, or is
//!   refused the same way (except `null`, which a request reads as "no options");
//! - `options_json` of the options decodes back to them;
//! - `settings_with` on two classes (the built-in default, and a configured one with replies, a
//!   subscriber limit and legacy replay) accepts exactly the options that only lower the class's
//!   limits (or turn replies off), gives exactly the settings they ask for, keeps `legacy_replay`
//!   within the backlog, and otherwise names an offending option.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use serde_json::value::RawValue;
use tslm_fuzz::{is_json_text, trim_json_ws, value_if_representable};
use tslm_protocol::v1::{self, Op};
use tslm_protocol::{ChannelOptions, ErrorCode};
use tslm_server::Config;
use tslm_server::classes::ChannelClass;

const NOT_UTF8: &str = "the body is not UTF-8";
const NOT_JSON: &str = "the body is not one valid JSON value";
const OPTIONS_FORM_START: &str = "`options` must be an object with any of `backlog_messages`";

/// The options and their JSON keys.
const KEYS: [&str; 5] = [
    "backlog_messages",
    "backlog_seconds",
    "max_message_bytes",
    "max_subscribers",
    "replies",
];

fn classes() -> &'static [ChannelClass; 2] {
    static CLASSES: OnceLock<[ChannelClass; 2]> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let config = Config::from_toml_str(
            "[listener.a]\nbind = ['127.0.0.1:0']\n\
             [channel.\"rpc.*\"]\nreplies = true\nmax_subscribers = 50\nbacklog_messages = 10\n\
             legacy_replay = 5\nbacklog_seconds = 60\nmax_message_bytes = 4096\n",
            "fuzz",
        )
        .expect("the fuzz target's configuration is valid");
        let rpc = config.channels.class_for_str("rpc.x").clone();
        assert_eq!(rpc.pattern, "rpc.*");
        [ChannelClass::default(), rpc]
    })
}

fuzz_target!(|data: &[u8]| {
    let decoded = v1::decode_options(data);
    let utf8 = std::str::from_utf8(data).is_ok();
    let json = is_json_text(data);
    let trimmed = trim_json_ws(data);
    match &decoded {
        Ok(options) => {
            assert!(json, "accepted a body that is not one JSON text");
            assert_eq!(trimmed.first(), Some(&b'{'), "accepted a non-object");
            if let Some(v) = value_if_representable(data) {
                check_against_value(options, &v);
                let members: BTreeMap<String, &RawValue> =
                    serde_json::from_slice(data).expect("an accepted body is an object");
                check_numbers(options, &members);
            }
            let canonical = v1::options_json(options);
            assert!(is_json_text(canonical.as_bytes()), "{canonical}");
            assert_eq!(
                v1::decode_options(canonical.as_bytes()).as_ref(),
                Ok(options),
                "options_json does not decode back: {canonical}"
            );
            for class in classes() {
                check_settings(class, options);
            }
        }
        Err(e) => {
            assert_eq!(e.code, ErrorCode::BadRequest);
            if !utf8 {
                assert_eq!(e.message, NOT_UTF8);
            } else if !json {
                assert_eq!(e.message, NOT_JSON);
            } else {
                assert!(e.message.starts_with(OPTIONS_FORM_START), "{}", e.message);
            }
        }
    }
    // The same text as the `options` of a `create`.
    if json {
        let mut frame = b"{\"op\":\"create\",\"channel\":\"c\",\"options\":".to_vec();
        frame.extend_from_slice(data);
        frame.push(b'}');
        let request = v1::decode_request(&Bytes::from(frame));
        match (&decoded, request) {
            (
                Ok(options),
                Ok(v1::Request {
                    op: Op::Create { options: o, .. },
                    ..
                }),
            ) => assert_eq!(*options, o),
            (
                Err(_),
                Ok(v1::Request {
                    op: Op::Create { options: o, .. },
                    ..
                }),
            ) => {
                assert_eq!(
                    trimmed, b"null",
                    "the request accepted options the body refused"
                );
                assert_eq!(o, ChannelOptions::default());
            }
            (Err(a), Err(b)) => assert_eq!(*a, b.error),
            (Ok(options), Err(e)) => {
                panic!("the body gave {options:?}, the request {e:?}")
            }
            (_, Ok(other)) => panic!("a create decoded as {other:?}"),
        }
    }
});

/// The options are the object's members, as `serde_json::Value` reads them.
fn check_against_value(options: &ChannelOptions, v: &Value) {
    let object = v.as_object().expect("an accepted body is an object");
    for key in object.keys() {
        assert!(
            KEYS.contains(&key.as_str()),
            "accepted an unknown key {key:?}"
        );
    }
    for (key, value) in object {
        assert!(!value.is_null(), "accepted `null` for {key:?}");
    }
    let present = |key: &str| {
        object.get(key).map(|n| {
            assert!(n.is_number(), "accepted a non-number {key:?}: {n}");
        })
    };
    assert_eq!(
        options.backlog_messages.map(|_| ()),
        present("backlog_messages")
    );
    assert_eq!(
        options.backlog_seconds.map(|_| ()),
        present("backlog_seconds")
    );
    assert_eq!(
        options.max_message_bytes.map(|_| ()),
        present("max_message_bytes")
    );
    assert_eq!(
        options.max_subscribers.map(|_| ()),
        present("max_subscribers")
    );
    let replies = object
        .get("replies")
        .map(|b| b.as_bool().expect("an accepted `replies` is a boolean"));
    assert_eq!(options.replies, replies);
}

/// Each accepted number is exactly the integer decoded: the member's text and the integer's
/// decimal digits have the same canonical form.
fn check_numbers(options: &ChannelOptions, members: &BTreeMap<String, &RawValue>) {
    for (key, got) in [
        ("backlog_messages", options.backlog_messages),
        ("backlog_seconds", options.backlog_seconds),
        ("max_message_bytes", options.max_message_bytes),
        ("max_subscribers", options.max_subscribers),
    ] {
        if let (Some(n), Some(text)) = (got, members.get(key)) {
            assert_eq!(
                canonical(text.get()),
                canonical(&n.to_string()),
                "{key}: {} read as {n}",
                text.get()
            );
        }
    }
}

/// A JSON number as (negative, significant digits without leading or trailing zeros, the power
/// of ten of the last one); zero is (false, "", 0) whatever its sign and notation.
fn canonical(text: &str) -> (bool, String, i128) {
    let (mantissa, exp) = text.split_once(['e', 'E']).map_or((text, 0), |(m, e)| {
        (m, e.parse::<i128>().unwrap_or(i128::MAX / 2))
    });
    let (negative, mantissa) = mantissa
        .strip_prefix('-')
        .map_or((false, mantissa), |m| (true, m));
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{int}{frac}");
    let significant = all.trim_start_matches('0').trim_end_matches('0');
    if significant.is_empty() {
        return (false, String::new(), 0);
    }
    let trailing = all.len() - all.trim_end_matches('0').len();
    let power = exp - frac.len() as i128 + trailing as i128;
    (negative, significant.to_owned(), power)
}

/// `settings_with` against an independent reading of "each option may only lower the class's
/// value (or turn replies off)".
fn check_settings(class: &ChannelClass, options: &ChannelOptions) {
    let base = &class.settings;
    let mut want = base.clone();
    let mut bad: Vec<&str> = Vec::new();
    let mut lower = |key: &'static str, v: Option<u64>, min: u64, limit: u64| -> Option<u64> {
        let v = v?;
        if v < min || v > limit {
            bad.push(key);
            None
        } else {
            Some(v)
        }
    };
    let as_usize = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    if let Some(v) = lower(
        "backlog_messages",
        options.backlog_messages,
        0,
        base.backlog_messages as u64,
    ) {
        want.backlog_messages = as_usize(v);
        want.legacy_replay = base.legacy_replay.min(want.backlog_messages);
    }
    if let Some(v) = lower(
        "backlog_seconds",
        options.backlog_seconds,
        1,
        base.backlog_age.as_secs(),
    ) {
        want.backlog_age = Duration::from_secs(v);
    }
    if let Some(v) = lower(
        "max_message_bytes",
        options.max_message_bytes,
        1,
        base.max_message_bytes as u64,
    ) {
        want.max_message_bytes = as_usize(v);
    }
    if let Some(v) = lower(
        "max_subscribers",
        options.max_subscribers,
        1,
        base.max_subscribers.map_or(u64::MAX, |m| m as u64),
    ) {
        want.max_subscribers = Some(as_usize(v));
    }
    match options.replies {
        Some(true) if !base.replies => bad.push("replies"),
        Some(r) => want.replies = r,
        None => {}
    }
    match class.settings_with(options) {
        Ok(got) => {
            assert!(
                bad.is_empty(),
                "accepted {options:?} for {:?}",
                class.pattern
            );
            assert_eq!(got, want);
            assert!(got.legacy_replay <= got.backlog_messages);
        }
        Err(message) => {
            assert!(
                !bad.is_empty(),
                "refused {options:?} for {:?}: {message}",
                class.pattern
            );
            assert!(
                bad.iter()
                    .any(|key| message.contains(&format!("option `{key}`"))),
                "{message:?} names none of {bad:?}"
            );
        }
    }
}
