//! Configuration parser (`tslm_server::Config::from_toml_str`) on arbitrary UTF-8 text.
//!
//! Properties, beyond "does not panic":
//! - an error is always `ConfigError::Invalid` naming the origin;
//! - an accepted configuration satisfies the documented invariants (docs/configuration.md): at
//!   least one listener, valid names, at least one address each, no address used twice, every
//!   limit within its documented range.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
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
    let mut addresses = Vec::new();
    for l in &config.listeners {
        assert!(!l.name.is_empty());
        assert!(
            l.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{:?}",
            l.name
        );
        assert!(!l.bind.is_empty());
        for a in &l.bind {
            if a.port() != 0 {
                assert!(!addresses.contains(a), "{a} bound twice");
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
        for d in [l.handshake_timeout, l.ping_interval, l.pong_timeout] {
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
    }
}
