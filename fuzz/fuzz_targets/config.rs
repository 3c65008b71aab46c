//! Configuration parser (`tslm_server::Config::from_toml_str`) on arbitrary UTF-8 text.
//!
//! Properties, beyond "does not panic":
//! - an error is always `ConfigError::Invalid` naming the origin;
//! - an accepted configuration satisfies the documented invariants (docs/configuration.md):
//!   - listeners: at least one, valid names, at least one address each, no two non-zero-port
//!     addresses that would collide when bound (same port and address, or a wildcard covering the
//!     other), every limit within its documented range, browser origins canonical, `publisher_auth`
//!     only with a publisher and `subscriber_auth` only with an issuer;
//!   - channel classes (`[channel."pattern"]`): valid patterns, the `"*"` class last, every setting
//!     within its range, `legacy_replay` within the backlog, listener lists naming configured
//!     listeners, `subscribers = "authenticated"` only with an issuer; and `class_for` picks, for
//!     names built from every pattern, the class an independent glob matcher and the documented
//!     precedence pick (an exact name, else the matching pattern with the most literal
//!     characters, ties to the pattern that sorts first, else `"*"`);
//!   - publishers (`[publisher.NAME]`): valid names, at least one credential, at least one channel
//!     pattern, no token hash or certificate name shared by two publishers;
//!   - issuers (`[issuer.NAME]`): valid names, distinct `issuer`s, audiences, algorithms that fit
//!     the key source (HMAC exactly with a shared secret of at least 32 bytes), URLs where keys are
//!     fetched, a claim mapping, every duration and size within range.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tslm_server::auth_config::KeySource;
use tslm_server::classes::ChannelClass;
use tslm_server::config::normalize_origin;
use tslm_server::{Config, ConfigError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text, "fuzz") {
        Ok(config) => check(&config),
        Err(e) => {
            assert!(
                matches!(&e, ConfigError::Invalid { origin, .. } if origin == "fuzz"),
                "{e:?}"
            );
            assert!(e.to_string().starts_with("fuzz: "));
        }
    }
});

fn check(config: &Config) {
    assert!(!config.listeners.is_empty());
    assert!(config.shutdown_grace <= Duration::from_secs(3600));
    assert!(config.backlog_memory_bytes >= 1);
    check_listeners(config);
    check_classes(config);
    check_publishers(config);
    check_issuers(config);
}

fn name_ok(name: &str, max: usize, dot: bool) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (dot && b == b'.'))
}

/// The address a socket binds: an IPv4-mapped IPv6 address binds the IPv4 one.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a wildcard `w` takes `other` too: `[::]` takes everything (dual stack), `0.0.0.0`
/// every IPv4 address.
fn covers(w: IpAddr, other: IpAddr) -> bool {
    match w {
        IpAddr::V6(v6) => v6.is_unspecified(),
        IpAddr::V4(v4) => v4.is_unspecified() && other.is_ipv4(),
    }
}

fn collide(a: &SocketAddr, b: &SocketAddr) -> bool {
    let (x, y) = (canonical(a.ip()), canonical(b.ip()));
    a.port() == b.port() && (x == y || covers(x, y) || covers(y, x))
}

fn check_listeners(config: &Config) {
    let mut addresses: Vec<SocketAddr> = Vec::new();
    let mut names = Vec::new();
    for l in &config.listeners {
        assert!(name_ok(&l.name, usize::MAX, false), "{:?}", l.name);
        assert!(!names.contains(&&l.name), "listener {} twice", l.name);
        names.push(&l.name);
        assert!(!l.bind.is_empty());
        for a in &l.bind {
            if a.port() != 0 {
                if let Some(o) = addresses.iter().find(|o| collide(a, o)) {
                    panic!("{a} collides with {o}");
                }
                addresses.push(*a);
            }
        }
        for t in &l.auth_tokens {
            assert!(!t.is_empty());
            assert!(
                !t.chars()
                    .any(|c| c.is_whitespace() || c == ',' || c.is_control())
            );
        }
        assert!((64..=64 << 20).contains(&l.max_message_bytes));
        assert!((64..=64 << 20).contains(&l.max_frame_bytes));
        assert!((1..=64 << 20).contains(&l.max_publish_bytes));
        assert!((1..=10_000_000).contains(&l.max_connections));
        if let Some(r) = l.rate_limit_per_second {
            assert!(r.get() <= 1_000_000);
        }
        if !l.permissions.create && !l.permissions.publish {
            assert!(
                l.rate_limit_per_second.is_some(),
                "subscriber-only listener unlimited"
            );
        }
        assert!((1..=10_000_000).contains(&l.outbox.max_messages));
        assert!((1024..=1 << 30).contains(&l.outbox.max_bytes));
        for d in [
            l.handshake_timeout,
            l.ping_interval,
            l.pong_timeout,
            l.auth_timeout,
        ] {
            assert!((Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d));
        }
        assert!((512..=16 << 20).contains(&l.read_buffer_bytes));
        assert!(l.write_buffer_bytes <= 16 << 20);
        let a = &l.abuse;
        assert!((1..=10_000_000).contains(&a.max_connections_per_ip));
        assert!(a.handshakes_per_ip_per_second.get() <= 1_000_000);
        assert!((1..=1_000_000).contains(&a.max_subscriptions_per_connection));
        assert!(a.max_rejected_commands_per_second <= 1_000_000);
        assert!((1..=1_000_000).contains(&a.max_control_frames_per_second));
        if l.publisher_auth {
            assert!(
                !config.publishers.is_empty(),
                "publisher_auth without publishers"
            );
        }
        if l.subscriber_auth {
            assert!(
                !config.issuers.is_empty(),
                "subscriber_auth without issuers"
            );
        }
        for o in &l.allowed_origins {
            assert!(
                o.starts_with("http://") || o.starts_with("https://"),
                "{o:?}"
            );
            assert_eq!(
                normalize_origin(o).as_ref(),
                Some(o),
                "origin not canonical"
            );
            let rest = o.split_once("://").map_or("", |(_, r)| r);
            assert!(
                !rest.is_empty() && !rest.contains(['/', '?', '#', '@']),
                "{o:?}"
            );
            assert!(!o.chars().any(|c| c.is_whitespace() || c.is_control()));
            assert_eq!(o.to_ascii_lowercase(), *o);
        }
    }
}

/// `*` matches any run of characters (dots included); everything else matches itself.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    // Classic wildcard matching with one backtrack point.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

fn literal_len(pattern: &str) -> usize {
    pattern.bytes().filter(|&b| b != b'*').count()
}

/// The documented choice of class for `name`.
fn expected_class<'a>(classes: &[&'a ChannelClass], name: &str) -> &'a str {
    if let Some(c) = classes
        .iter()
        .find(|c| !c.pattern.contains('*') && c.pattern == name)
    {
        return &c.pattern;
    }
    classes
        .iter()
        .filter(|c| c.pattern != "*" && c.pattern.contains('*'))
        .filter(|c| glob(c.pattern.as_bytes(), name.as_bytes()))
        .max_by(|a, b| {
            literal_len(&a.pattern)
                .cmp(&literal_len(&b.pattern))
                .then_with(|| b.pattern.cmp(&a.pattern))
        })
        .map_or("*", |c| &c.pattern)
}

fn check_classes(config: &Config) {
    let classes: Vec<&ChannelClass> = config.channels.iter().collect();
    let listeners: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        classes.last().map(|c| c.pattern.as_str()),
        Some("*"),
        "the default class is not last"
    );
    assert_eq!(
        classes.iter().filter(|c| c.pattern == "*").count(),
        1,
        "not exactly one default class"
    );
    assert_eq!(config.channels.default_class().pattern, "*");
    for (i, c) in classes.iter().enumerate() {
        let p = &c.pattern;
        assert!((1..=255).contains(&p.len()), "{p:?}");
        assert!(
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-:~*".contains(&b)),
            "{p:?}"
        );
        assert!(
            p == "*" || !p.bytes().all(|b| b == b'*'),
            "a pattern of wildcards only: {p:?}"
        );
        if !p.contains('*') {
            assert!(!p.bytes().all(|b| b == b'.'), "{p:?}");
        }
        assert!(
            classes[..i].iter().all(|o| o.pattern != *p),
            "class {p:?} twice"
        );
        let s = &c.settings;
        assert!(s.backlog_messages <= 1_000_000);
        assert!((1..=31_536_000).contains(&s.backlog_age.as_secs()));
        assert!((1..=16 << 20).contains(&s.max_message_bytes));
        assert!(s.max_subscribers.is_none_or(|m| m >= 1));
        assert!((1..=1_000_000).contains(&s.reply_window));
        assert!((1..=1 << 20).contains(&s.max_reply_bytes));
        assert!(s.dedupe_window <= Duration::from_secs(86_400));
        assert!(s.dedupe_max_ids <= 1_000_000);
        assert!(
            s.legacy_replay <= s.backlog_messages,
            "class {p:?} replays more than it keeps"
        );
        assert!(c.replies_per_second >= 1);
        for list in [&c.subscribe_from, &c.publish_from].into_iter().flatten() {
            assert!(!list.is_empty(), "class {p:?}: an empty listener list");
            for l in list {
                assert!(listeners.contains(&l.as_str()), "class {p:?}: listener {l}");
            }
        }
        if c.authenticated_subscribers {
            assert!(!config.issuers.is_empty());
        }
    }
    // Lookups: names built from every pattern, and a few plain ones.
    let mut names: Vec<String> = vec!["a".into(), "news".into(), String::new()];
    for c in &classes {
        names.push(c.pattern.replace('*', ""));
        names.push(c.pattern.replace('*', "x.y"));
        names.push(c.pattern.clone());
    }
    for name in &names {
        let got = &config.channels.class_for_str(name).pattern;
        let want = expected_class(&classes, name);
        assert_eq!(got, want, "class of {name:?}");
    }
}

fn check_publishers(config: &Config) {
    let publishers = &config.publishers;
    for (i, p) in publishers.iter().enumerate() {
        assert!(name_ok(&p.name, 64, true), "{:?}", p.name);
        assert!(
            !(p.keys.is_empty() && p.token_hashes.is_empty() && p.certificates.is_empty()),
            "publisher {} without credentials",
            p.name
        );
        assert!(p.certificates.iter().all(|c| !c.is_empty()));
        assert!(
            !p.channels.is_empty(),
            "publisher {} without channels",
            p.name
        );
        for other in &publishers[..i] {
            assert_ne!(other.name, p.name);
            assert!(
                p.token_hashes
                    .iter()
                    .all(|h| !other.token_hashes.contains(h)),
                "a token hash shared by {} and {}",
                other.name,
                p.name
            );
            assert!(
                p.certificates
                    .iter()
                    .all(|c| !other.certificates.contains(c)),
                "a certificate name shared by {} and {}",
                other.name,
                p.name
            );
        }
    }
}

fn url_ok(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() > "http://".len()
        && !u.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn check_issuers(config: &Config) {
    let issuers = &config.issuers;
    for (i, is) in issuers.iter().enumerate() {
        assert!(name_ok(&is.name, 64, true), "{:?}", is.name);
        assert!(
            issuers[..i]
                .iter()
                .all(|o| o.issuer != is.issuer && o.name != is.name),
            "issuer {} twice",
            is.issuer
        );
        assert!(!is.audiences.is_empty() && is.audiences.iter().all(|a| !a.is_empty()));
        assert!(!is.algorithms.is_empty());
        match &is.keys {
            KeySource::Secret(secret) => {
                assert!(secret.len() >= 32, "a secret of {} bytes", secret.len());
                assert!(is.algorithms.iter().all(|a| a.is_hmac()));
            }
            KeySource::JwksUrl(u) => {
                assert!(url_ok(u), "{u:?}");
                assert!(is.algorithms.iter().all(|a| !a.is_hmac()));
            }
            KeySource::Discovery => {
                assert!(url_ok(&is.issuer), "{:?}", is.issuer);
                assert!(is.algorithms.iter().all(|a| !a.is_hmac()));
            }
        }
        let m = &is.claims;
        assert!(m.channels_claim.is_some() || m.scope_prefix.is_some());
        assert!(m.channels_claim.as_deref() != Some(""));
        assert!(m.scope_prefix.as_deref() != Some(""));
        assert!(is.leeway <= Duration::from_secs(300));
        assert!((1..=86_400).contains(&is.refresh_cooldown.as_secs()));
        assert!((1..=30 * 86_400).contains(&is.key_max_age.as_secs()));
        assert!((1..=60).contains(&is.fetch_timeout.as_secs()));
        assert!((1024..=16 << 20).contains(&is.max_document_bytes));
        assert!((256..=16 * 1024).contains(&is.max_token_bytes));
    }
}
