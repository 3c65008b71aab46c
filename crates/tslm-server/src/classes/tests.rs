use std::sync::Arc;

use super::*;
use crate::config::Config;

const LISTENERS: &str =
    "[listener.public]\nbind=['127.0.0.1:0']\n[listener.private]\nbind=['127.0.0.1:0']\n";

fn classes(channels: &str) -> Arc<ChannelClasses> {
    match Config::from_toml_str(&format!("{LISTENERS}{channels}"), "t.toml") {
        Ok(c) => c.channels,
        Err(e) => panic!("{e}"),
    }
}

fn err(channels: &str) -> String {
    Config::from_toml_str(&format!("{LISTENERS}{channels}"), "t.toml")
        .unwrap_err()
        .to_string()
}

fn pattern_of<'a>(c: &'a ChannelClasses, name: &str) -> &'a str {
    &c.class_for(&ChannelName::new(name).unwrap()).pattern
}

#[test]
fn glob_matching() {
    let g = |p: &str, n: &str| Glob::new(p).matches(n);
    assert!(g("prices.*", "prices."));
    assert!(g("prices.*", "prices.eu.fx"));
    assert!(!g("prices.*", "prices"));
    assert!(!g("prices.*", "xprices.eu"));
    assert!(g("*.eu", "orders.eu"));
    assert!(g("*.eu", "a.b.eu"));
    assert!(!g("*.eu", "orders.eux"));
    assert!(g("a*b*c", "abc"));
    assert!(g("a*b*c", "a.x.b.y.c"));
    assert!(!g("a*b*c", "acb"));
    // Prefix and suffix may not share characters.
    assert!(!g("ab*ba", "aba"));
    assert!(g("ab*ba", "abba"));
    assert!(g("a**b", "ab"));
    assert!(g("*x*", "x"));
    assert!(!g("*x*", "y"));
}

#[test]
fn exact_name_beats_patterns() {
    let c = classes(
        "[channel.\"orders.eu\"]\n[channel.\"orders.*\"]\n[channel.\"orders.eu*\"]\n[channel.\"*.eu\"]\n",
    );
    assert_eq!(pattern_of(&c, "orders.eu"), "orders.eu");
    assert_eq!(pattern_of(&c, "orders.eux"), "orders.eu*");
    assert_eq!(pattern_of(&c, "orders.us"), "orders.*");
    assert_eq!(pattern_of(&c, "fx.eu"), "*.eu");
}

#[test]
fn most_literal_characters_win() {
    let c = classes(
        "[channel.\"p*\"]\n[channel.\"prices.*\"]\n[channel.\"prices.*.fx\"]\n[channel.\"*fx\"]\n",
    );
    assert_eq!(pattern_of(&c, "prices.eu.fx"), "prices.*.fx");
    assert_eq!(pattern_of(&c, "prices.eu"), "prices.*");
    assert_eq!(pattern_of(&c, "pfx"), "*fx");
    assert_eq!(pattern_of(&c, "px"), "p*");
}

#[test]
fn documented_precedence_example() {
    // docs/configuration.md, "Which class a channel gets".
    let c = classes(
        "[channel.\"*\"]\n[channel.\"prices.*\"]\n[channel.\"prices.*.fx\"]\n[channel.\"*.fx\"]\n[channel.\"prices.eu\"]\n",
    );
    for (name, class) in [
        ("prices.eu", "prices.eu"),
        ("prices.us", "prices.*"),
        ("prices.us.fx", "prices.*.fx"),
        ("rates.fx", "*.fx"),
        ("news", "*"),
    ] {
        assert_eq!(pattern_of(&c, name), class, "{name}");
    }
}

#[test]
fn equal_literal_counts_go_to_the_smaller_pattern() {
    // "a.*" and "*.b" both have two literal characters; "*.b" sorts first ('*' < 'a').
    let c = classes("[channel.\"a.*\"]\n[channel.\"*.b\"]\n[channel.\"a*\"]\n[channel.\"*b\"]\n");
    assert_eq!(pattern_of(&c, "a.b"), "*.b");
    assert_eq!(pattern_of(&c, "a.c"), "a.*");
    // "*b" < "a*".
    assert_eq!(pattern_of(&c, "ab"), "*b");
    let c = classes("[channel.\"x*\"]\n[channel.\"*y\"]\n");
    assert_eq!(pattern_of(&c, "xy"), "*y");
}

#[test]
fn star_class_is_the_fallback() {
    let c = classes("[channel.\"*\"]\nbacklog_messages = 7\n[channel.\"prices.*\"]\n");
    let other = c.class_for(&ChannelName::new("news").unwrap());
    assert_eq!(other.pattern, "*");
    assert_eq!(other.settings.backlog_messages, 7);
    assert_eq!(c.default_class(), other);
}

#[test]
fn built_in_class_without_star() {
    let c = classes("[channel.\"prices.*\"]\nbacklog_messages = 7\n");
    let other = c.class_for(&ChannelName::new("news").unwrap());
    assert_eq!(other, &ChannelClass::default());
    assert_eq!(other.settings, ChannelSettings::default());
    assert!(!other.auto_create);
    assert_eq!(other.replies_per_second, defaults::REPLIES_PER_SECOND);
    assert!(other.may_subscribe_from("anything") && other.may_publish_from("anything"));
    // No [channel] tables at all: the built-in class for every name.
    let c = classes("");
    assert_eq!(
        c.class_for(&ChannelName::new("x").unwrap()),
        &ChannelClass::default()
    );
    assert_eq!(c.iter().count(), 1);
    let d = ChannelClasses::default();
    assert_eq!(d.class_for_str("x"), &ChannelClass::default());
}

#[test]
fn classes_inherit_from_star() {
    let c = classes(
        r#"
[channel."*"]
backlog_messages = 10
slow_subscriber = "latest"
subscribe_from = ["public"]
replies = true
replies_per_second = 3
dedupe_seconds = 0
[channel."prices.*"]
backlog_messages = 1000
backlog_seconds = 60
max_message_bytes = 65536
max_subscribers = 10000
slow_subscriber = "drop_oldest"
auto_create = true
publish_from = ["private"]
reply_window = 5
max_reply_bytes = 100
dedupe_max_ids = 50
legacy_replay = 20
[channel."orders.eu"]
"#,
    );
    let p = c.class_for(&ChannelName::new("prices.eu").unwrap());
    assert_eq!(
        p,
        &ChannelClass {
            pattern: "prices.*".into(),
            settings: ChannelSettings {
                backlog_messages: 1000,
                backlog_age: Duration::from_secs(60),
                max_message_bytes: 65536,
                max_subscribers: Some(10000),
                slow_policy: SlowPolicy::DropOldest,
                replies: true,
                reply_window: 5,
                max_reply_bytes: 100,
                dedupe_window: Duration::ZERO,
                dedupe_max_ids: 50,
                legacy_replay: 20,
            },
            auto_create: true,
            subscribe_from: Some(vec!["public".into()]),
            publish_from: Some(vec!["private".into()]),
            replies_per_second: 3,
            authenticated_subscribers: false,
        }
    );
    let o = c.class_for(&ChannelName::new("orders.eu").unwrap());
    assert_eq!(o.pattern, "orders.eu");
    assert_eq!(o.settings.backlog_messages, 10);
    assert_eq!(o.settings.slow_policy, SlowPolicy::Latest);
    assert_eq!(
        o.settings.backlog_age,
        Duration::from_secs(defaults::BACKLOG_SECONDS)
    );
    assert_eq!(o.replies_per_second, 3);
    assert!(o.may_subscribe_from("public") && !o.may_subscribe_from("private"));
    assert!(o.may_publish_from("public") && o.may_publish_from("private"));
    assert!(!p.may_publish_from("public") && p.may_publish_from("private"));
    let patterns: Vec<&str> = c.iter().map(|c| c.pattern.as_str()).collect();
    assert_eq!(patterns, ["orders.eu", "prices.*", "*"]);
}

#[test]
fn every_value_is_checked_naming_class_and_key() {
    for (key, value, expected) in [
        (
            "backlog_messages",
            "1000001",
            "1000001 is out of range 0..=1000000",
        ),
        ("backlog_seconds", "0", "0 is out of range 1..=31536000"),
        ("backlog_seconds", "31536001", "out of range 1..=31536000"),
        ("max_message_bytes", "0", "0 is out of range 1..=16777216"),
        ("max_message_bytes", "16777217", "out of range 1..=16777216"),
        ("max_subscribers", "0", "0 is out of range 1.."),
        ("replies_per_second", "0", "0 is out of range 1.."),
        ("reply_window", "0", "0 is out of range 1..=1000000"),
        ("reply_window", "1000001", "out of range 1..=1000000"),
        ("max_reply_bytes", "0", "0 is out of range 1..=1048576"),
        ("max_reply_bytes", "1048577", "out of range 1..=1048576"),
        ("dedupe_seconds", "86401", "86401 is out of range 0..=86400"),
        ("dedupe_max_ids", "1000001", "out of range 0..=1000000"),
        (
            "legacy_replay",
            "101",
            "101 is more than the class's `backlog_messages` (100)",
        ),
        ("subscribe_from", "[]", "an empty list"),
        ("publish_from", "[]", "an empty list"),
        (
            "subscribe_from",
            "['public', 'nobody']",
            "there is no listener `nobody` (listeners: `private`, `public`)",
        ),
        (
            "publish_from",
            "['nobody']",
            "there is no listener `nobody`",
        ),
    ] {
        let e = err(&format!("[channel.\"prices.*\"]\n{key} = {value}\n"));
        let want = format!("t.toml: channel class \"prices.*\", key `{key}`: ");
        assert!(
            e.starts_with(&want) && e.contains(expected),
            "{key} = {value}: {e}"
        );
    }
    // Keys with no upper bound say so.
    let e = err("[channel.\"prices.*\"]\nmax_subscribers = 0\n");
    assert!(e.ends_with("0 is out of range 1.."), "{e}");
    let c = classes("[channel.\"prices.*\"]\nreplies_per_second = 99999999999\n");
    assert_eq!(c.class_for_str("prices.x").replies_per_second, u32::MAX);
    // The default class is checked the same way.
    let e = err("[channel.\"*\"]\nbacklog_seconds = 0\n");
    assert!(
        e.contains("channel class \"*\", key `backlog_seconds`"),
        "{e}"
    );
    // Limits that are allowed.
    for (key, value) in [
        ("backlog_messages", "0"),
        ("backlog_messages", "1000000"),
        ("backlog_seconds", "31536000"),
        ("max_message_bytes", "16777216"),
        ("dedupe_seconds", "0"),
        ("dedupe_max_ids", "0"),
        ("legacy_replay", "100"),
    ] {
        classes(&format!("[channel.\"prices.*\"]\n{key} = {value}\n"));
    }
}

#[test]
fn legacy_replay_is_checked_against_the_resolved_backlog() {
    let e = err("[channel.\"*\"]\nlegacy_replay = 50\n[channel.\"a.*\"]\nbacklog_messages = 10\n");
    assert!(
            e.contains("channel class \"a.*\", key `legacy_replay`: 50 is more than the class's `backlog_messages` (10)")
                && e.contains("comes from channel class \"*\""),
            "{e}"
        );
    let e = err("[channel.\"*\"]\nbacklog_messages = 10\n[channel.\"a.*\"]\nlegacy_replay = 11\n");
    assert!(
        e.contains("channel class \"a.*\", key `legacy_replay`: 11"),
        "{e}"
    );
    let c = classes(
        "[channel.\"*\"]\nlegacy_replay = 50\n[channel.\"a.*\"]\nbacklog_messages = 10\nlegacy_replay = 10\n",
    );
    assert_eq!(c.class_for_str("a.b").settings.legacy_replay, 10);
    assert_eq!(c.class_for_str("b").settings.legacy_replay, 50);
}

#[test]
fn unknown_keys_and_bad_values_are_refused() {
    let e = err("[channel.\"prices.*\"]\nbacklog_mesages = 1\n");
    assert!(
        e.contains("channel class \"prices.*\", key `backlog_mesages` (line 6)")
            && e.contains("unknown field `backlog_mesages`"),
        "{e}"
    );
    let e = err("[channel.'prices.*']\nslow_subscriber = \"drop\"\n");
    assert!(
        e.contains("channel class \"prices.*\", key `slow_subscriber`")
            && e.contains("`disconnect`, `drop_oldest`, `latest`"),
        "{e}"
    );
    let e = err("[channel.news]\nauto_create = 1\n");
    assert!(
        e.contains("channel class \"news\", key `auto_create`"),
        "{e}"
    );
    let e = err("[channel.orders.eu]\nreplies = true\n");
    assert!(e.contains("quote a pattern"), "{e}");
    let e = err("[channel]\nbacklog_messages = 1\n");
    assert!(e.contains("backlog_messages"), "{e}");
}

#[test]
fn bad_patterns_are_refused() {
    for (pattern, expected) in [
        ("", "channel class \"\": a pattern may not be empty"),
        ("a b", "channel class \"a b\": a pattern may only contain"),
        ("a/*", "a pattern may only contain"),
        ("**", "write it \"*\""),
        (
            "..",
            "not a channel name: channel name may not consist of dots only",
        ),
    ] {
        let e = err(&format!("[channel.\"{pattern}\"]\n"));
        assert!(e.contains(expected), "{pattern:?}: {e}");
    }
    let long = "a".repeat(256);
    let e = err(&format!("[channel.\"{long}\"]\n"));
    assert!(e.contains("at most 255 bytes"), "{e}");
    classes(&format!(
        "[channel.\"{}\"]\n[channel.\"{}*\"]\n",
        "a".repeat(255),
        "a".repeat(254)
    ));
    classes("[channel.\"A-z_0.9:~*\"]\n[channel.\".*\"]\n");
}

#[test]
fn create_options_may_only_lower() {
    let c = classes(
        "[channel.\"prices.*\"]\nbacklog_messages = 1000\nbacklog_seconds = 60\nmax_message_bytes = 65536\nmax_subscribers = 10\nreplies = true\nlegacy_replay = 500\n",
    );
    let p = c.class_for_str("prices.eu");
    assert_eq!(
        p.settings_with(&ChannelOptions::default()).unwrap(),
        p.settings
    );
    let s = p
        .settings_with(&ChannelOptions {
            backlog_messages: Some(0),
            backlog_seconds: Some(1),
            max_message_bytes: Some(1),
            max_subscribers: Some(10),
            replies: Some(false),
        })
        .unwrap();
    assert_eq!(s.backlog_messages, 0);
    assert_eq!(s.legacy_replay, 0);
    assert_eq!(s.backlog_age, Duration::from_secs(1));
    assert_eq!(s.max_message_bytes, 1);
    assert_eq!(s.max_subscribers, Some(10));
    assert!(!s.replies);
    let s = p
        .settings_with(&ChannelOptions {
            backlog_messages: Some(1000),
            replies: Some(true),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        (s.backlog_messages, s.legacy_replay, s.replies),
        (1000, 500, true)
    );

    let refused = |o: ChannelOptions| p.settings_with(&o).unwrap_err();
    assert_eq!(
        refused(ChannelOptions {
            backlog_messages: Some(5000),
            ..Default::default()
        }),
        "option `backlog_messages` = 5000 is more than channel class \"prices.*\" allows (1000)"
    );
    assert_eq!(
        refused(ChannelOptions {
            backlog_seconds: Some(61),
            ..Default::default()
        }),
        "option `backlog_seconds` = 61 is more than channel class \"prices.*\" allows (60)"
    );
    assert_eq!(
        refused(ChannelOptions {
            max_message_bytes: Some(65537),
            ..Default::default()
        }),
        "option `max_message_bytes` = 65537 is more than channel class \"prices.*\" allows (65536)"
    );
    assert_eq!(
        refused(ChannelOptions {
            max_subscribers: Some(11),
            ..Default::default()
        }),
        "option `max_subscribers` = 11 is more than channel class \"prices.*\" allows (10)"
    );
    for (o, name) in [
        (
            ChannelOptions {
                backlog_seconds: Some(0),
                ..Default::default()
            },
            "backlog_seconds",
        ),
        (
            ChannelOptions {
                max_message_bytes: Some(0),
                ..Default::default()
            },
            "max_message_bytes",
        ),
        (
            ChannelOptions {
                max_subscribers: Some(0),
                ..Default::default()
            },
            "max_subscribers",
        ),
    ] {
        assert_eq!(
            refused(o),
            format!("option `{name}` = 0 is less than 1, the least allowed")
        );
    }

    // Replies cannot be turned on where the class has them off; unlimited subscribers may be
    // limited to any number.
    let d = ChannelClass::default();
    assert_eq!(
        d.settings_with(&ChannelOptions {
            replies: Some(true),
            ..Default::default()
        })
        .unwrap_err(),
        "option `replies` = true is more than channel class \"*\" allows (replies are off)"
    );
    let s = d
        .settings_with(&ChannelOptions {
            max_subscribers: Some(1_000_000_000),
            replies: Some(false),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(s.max_subscribers, Some(1_000_000_000));
}
