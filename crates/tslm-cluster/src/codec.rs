//! What the cluster writes to Redis and reads back: channel settings (JSON in the meta hash)
//! and the PUB/SUB messages.

use std::time::Duration;

use serde_json::{Value, json};
use tslm_hub::{ChannelSettings, ConnId, SlowPolicy};
use tslm_protocol::{Epoch, Offset, Payload};

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The settings as JSON (fixed at creation; every node reads them back).
pub(crate) fn encode_settings(s: &ChannelSettings) -> String {
    json!({
        "backlog_messages": s.backlog_messages,
        "backlog_ms": ms(s.backlog_age),
        "max_message_bytes": s.max_message_bytes,
        "max_subscribers": s.max_subscribers,
        "slow_policy": s.slow_policy.as_str(),
        "replies": s.replies,
        "reply_window": s.reply_window,
        "max_reply_bytes": s.max_reply_bytes,
        "dedupe_ms": ms(s.dedupe_window),
        "dedupe_max_ids": s.dedupe_max_ids,
        "legacy_replay": s.legacy_replay,
    })
    .to_string()
}

/// Settings read back; a field that is missing or malformed takes its default (a newer or
/// older gateway may have written them).
pub(crate) fn decode_settings(text: &str) -> ChannelSettings {
    let d = ChannelSettings::default();
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return d;
    };
    let num = |k: &str| v.get(k).and_then(Value::as_u64);
    let size = |k: &str, dflt: usize| num(k).and_then(|n| usize::try_from(n).ok()).unwrap_or(dflt);
    ChannelSettings {
        backlog_messages: size("backlog_messages", d.backlog_messages),
        backlog_age: num("backlog_ms").map_or(d.backlog_age, Duration::from_millis),
        max_message_bytes: size("max_message_bytes", d.max_message_bytes),
        max_subscribers: num("max_subscribers").and_then(|n| usize::try_from(n).ok()),
        slow_policy: match v.get("slow_policy").and_then(Value::as_str) {
            Some("drop_oldest") => SlowPolicy::DropOldest,
            Some("latest") => SlowPolicy::Latest,
            _ => SlowPolicy::Disconnect,
        },
        replies: v.get("replies").and_then(Value::as_bool).unwrap_or(false),
        reply_window: size("reply_window", d.reply_window),
        max_reply_bytes: size("max_reply_bytes", d.max_reply_bytes),
        dedupe_window: num("dedupe_ms").map_or(d.dedupe_window, Duration::from_millis),
        dedupe_max_ids: size("dedupe_max_ids", d.dedupe_max_ids),
        legacy_replay: size("legacy_replay", d.legacy_replay),
    }
}

/// A message of a channel's PUB/SUB channel.
#[derive(Debug)]
pub(crate) enum Note {
    Message {
        epoch: Epoch,
        offset: Offset,
        at_ms: u64,
        route: Option<ConnId>,
        data: Payload,
    },
    Deleted,
}

/// Parses `M <epoch> <offset> <ms> <route> <data>` or `D`; `None` for anything else.
pub(crate) fn parse_note(bytes: &[u8]) -> Option<Note> {
    if bytes == b"D" {
        return Some(Note::Deleted);
    }
    let rest = bytes.strip_prefix(b"M ")?;
    let mut parts = rest.splitn(5, |b| *b == b' ');
    let epoch = Epoch::parse(text(parts.next())?)?;
    let offset = Offset(text(parts.next())?.parse().ok()?);
    let at_ms = text(parts.next())?.parse().ok()?;
    let route = text(parts.next())?.parse::<u64>().ok()?;
    let data = parts.next()?;
    let data = Payload::from_json_bytes(bytes::Bytes::copy_from_slice(data)).ok()?;
    Some(Note::Message {
        epoch,
        offset,
        at_ms,
        route: (route != 0).then_some(ConnId(route)),
        data,
    })
}

/// A reply forwarded to the node holding the publisher's connection:
/// `<conn> <offset> <replier> <channel> <data>` (channel names hold no spaces).
pub(crate) fn encode_reply(
    conn: ConnId,
    offset: Offset,
    replier: ConnId,
    channel: &str,
    data: &Payload,
) -> Vec<u8> {
    let mut v = format!("{} {} {} {} ", conn.0, offset.0, replier.0, channel).into_bytes();
    v.extend_from_slice(data.json());
    v
}

pub(crate) struct Reply {
    pub(crate) conn: ConnId,
    pub(crate) offset: Offset,
    pub(crate) replier: ConnId,
    pub(crate) channel: String,
    pub(crate) data: Payload,
}

pub(crate) fn parse_reply(bytes: &[u8]) -> Option<Reply> {
    let mut parts = bytes.splitn(5, |b| *b == b' ');
    let conn = ConnId(text(parts.next())?.parse().ok()?);
    let offset = Offset(text(parts.next())?.parse().ok()?);
    let replier = ConnId(text(parts.next())?.parse().ok()?);
    let channel = text(parts.next())?.to_owned();
    let data = Payload::from_json_bytes(bytes::Bytes::copy_from_slice(parts.next()?)).ok()?;
    Some(Reply {
        conn,
        offset,
        replier,
        channel,
        data,
    })
}

fn text(p: Option<&[u8]>) -> Option<&str> {
    p.and_then(|p| std::str::from_utf8(p).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_the_round_trip() {
        let s = ChannelSettings {
            backlog_messages: 7,
            backlog_age: Duration::from_millis(1500),
            max_subscribers: Some(3),
            slow_policy: SlowPolicy::DropOldest,
            replies: true,
            ..ChannelSettings::default()
        };
        assert_eq!(decode_settings(&encode_settings(&s)), s);
        assert_eq!(decode_settings("not json"), ChannelSettings::default());
    }

    #[test]
    fn notes_parse_and_refuse_garbage() {
        let n = parse_note(b"M 00000000000000ff 7 1000 0 {\"a\": 1}").expect("a note");
        match n {
            Note::Message {
                epoch,
                offset,
                route,
                data,
                ..
            } => {
                assert_eq!(epoch, Epoch(255));
                assert_eq!(offset, Offset(7));
                assert_eq!(route, None);
                assert_eq!(&data.json()[..], b"{\"a\": 1}");
            }
            Note::Deleted => panic!("not a deletion"),
        }
        assert!(matches!(parse_note(b"D"), Some(Note::Deleted)));
        for bad in [
            &b""[..],
            b"M",
            b"M zz 1 1 0 1",
            b"M 00000000000000ff x 1 0 1",
            b"M 00000000000000ff 1 1 0 {",
        ] {
            assert!(
                parse_note(bad).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let r = encode_reply(ConnId(5), Offset(2), ConnId(9), "a.b", &payload("[1, 2]"));
        let back = parse_reply(&r).expect("a reply");
        assert_eq!(
            (back.conn, back.offset, back.replier),
            (ConnId(5), Offset(2), ConnId(9))
        );
        assert_eq!(back.channel, "a.b");
        assert_eq!(&back.data.json()[..], b"[1, 2]");
        assert!(parse_reply(b"1 2 3").is_none());
    }

    fn payload(s: &str) -> Payload {
        Payload::from_json_bytes(bytes::Bytes::copy_from_slice(s.as_bytes())).expect("json")
    }
}
