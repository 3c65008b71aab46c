use super::*;

fn err(text: &str) -> String {
    Config::from_toml_str(text, "t.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::embedded_default();
    assert_eq!(c.listeners.len(), 2);
    let public = c.listeners.iter().find(|l| l.name == "public").unwrap();
    assert_eq!(public.bind, ["127.0.0.1:8080".parse().unwrap()]);
    assert_eq!(
        public.permissions,
        Permissions {
            subscribe: true,
            create: false,
            publish: false,
            admin: false
        }
    );
    let private = c.listeners.iter().find(|l| l.name == "private").unwrap();
    assert_eq!(private.bind, ["127.0.0.1:8081".parse().unwrap()]);
    assert_eq!(
        private.permissions,
        Permissions {
            subscribe: false,
            create: true,
            publish: true,
            admin: false
        }
    );
}

#[test]
fn admin_is_a_permission_of_its_own() {
    let c = Config::from_toml_str(
        "[listener.ops]\nip='127.0.0.1'\nport=0\nauth_tokens=['t']\ndefault_endpoint_permissions=['Admin']\n",
        "test",
    )
    .unwrap();
    let p = c.listeners[0].permissions;
    assert!(p.admin && p.allows(Permission::Admin));
    assert!(!p.subscribe && !p.create && !p.publish);
    assert_eq!(p.to_string(), "Admin");
    // Not implied by the others, nor on by default.
    let c = Config::embedded_default();
    assert!(c.listeners.iter().all(|l| !l.permissions.admin));
    let e = Config::from_toml_str(
        "[listener.ops]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['admin']\n",
        "test",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("admin"), "{e}");
}

#[test]
fn original_config_keeps_working() {
    let c = Config::from_toml_str(
        r#"
# the original sample, unchanged
[listener.public]
ip = "0.0.0.0"
port = 8080
default_endpoint_permissions = ['Subscribe']
max_message_size = 65536
max_frame_size = 16777216
max_connections = 1000
rate_limit_per_second = 100
channel_buffer_size = 100
auth_tokens = ['public-token-1']

[listener.private]
ip = '127.0.0.1'
port = 8081
default_endpoint_permissions = ['CreateChannel', 'NotifyChannel']
"#,
        "t",
    )
    .unwrap();
    let p = &c.listeners[1];
    assert_eq!(p.name, "public");
    assert_eq!(p.max_connections, 1000);
    assert_eq!(p.rate_limit_per_second.map(|r| r.get()), Some(100));
    assert_eq!(p.outbox.max_messages, 100);
    assert_eq!(p.auth_tokens, ["public-token-1"]);
}

#[test]
fn bind_lists_and_ipv6() {
    let c = Config::from_toml_str(
        "[listener.a]\nip='127.0.0.1'\nport=1\nbind=['[::1]:2','127.0.0.2:3']\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.listeners[0].bind.len(), 3);
    assert!(c.listeners[0].bind[1].is_ipv6());
}

#[test]
fn errors_name_the_listener_and_key() {
    let e = err("[listener.public]\nip='127.0.0.1'\nport=1\nmax_conections = 1\n");
    assert!(
        e.contains("listener `public`") && e.contains("max_conections"),
        "{e}"
    );
    let e = err("[listener.public]\nip='127.0.0.1'\nport=1\nmax_connections = 'x'\n");
    assert!(
        e.contains("listener `public`") && e.contains("key `max_connections`"),
        "{e}"
    );
    let e = err(
        "[listener.public]\nip='127.0.0.1'\nport=1\ndefault_endpoint_permissions=['Publish']\n",
    );
    assert!(
        e.contains("default_endpoint_permissions") && e.contains("Publish"),
        "{e}"
    );
    let e = err("[listener.p]\nip='127.0.0.1'\nport=1\nmax_connections = 0\n");
    assert!(e.contains("listener `p`, key `max_connections`"), "{e}");
    let e = err("[listener.p]\nip='127.0.0.1'\nport=1\nchannel_buffer_size = 0\n");
    assert!(
        e.contains("key `channel_buffer_size`") && e.contains("unbounded"),
        "{e}"
    );
    let e = err("[listener.p]\nip='127.0.0.1'\nport=99999\n");
    assert!(
        e.contains("listener `p`") && e.contains("key `port`"),
        "{e}"
    );
    let e = err("[listener.p]\nip='127.0.0.1'\n");
    assert!(e.contains("listener `p`, key `port`"), "{e}");
    let e = err("[listener.p]\nbind=['localhost:80']\n");
    assert!(e.contains("listener `p`, key `bind`"), "{e}");
    let e = err("[listener.p]\nip='127.0.0.1'\nport=1\n[listener.q]\nbind=['127.0.0.1:1']\n");
    assert!(e.contains("overlaps 127.0.0.1:1 of listener `p`"), "{e}");
    let e = err("[listener.p]\nip='0.0.0.0'\nport=1\n[listener.q]\nbind=['127.0.0.1:1']\n");
    assert!(e.contains("overlaps 0.0.0.0:1"), "{e}");
    let e = err("[listener.p]\nbind=['[::]:1', '127.0.0.1:1']\n");
    assert!(e.contains("listener `p`, key `bind`"), "{e}");
    assert!(
        Config::from_toml_str(
            "[listener.p]\nbind=['127.0.0.1:1','127.0.0.2:1','[::1]:1']\n",
            "t"
        )
        .is_ok()
    );
    assert!(
        Config::from_toml_str("[listener.p]\nbind=['127.0.0.1:0','127.0.0.1:0']\n", "t").is_ok()
    );
    let e = err("[listner.p]\nip='127.0.0.1'\nport=1\n");
    assert!(e.contains("listner"), "{e}");
    assert!(err("").contains("no listener"));
    let e = err("[listener.p]\nip='127.0.0.1'\nport=1\nauth_tokens=['']\n");
    assert!(e.contains("key `auth_tokens`"), "{e}");
}

#[test]
fn max_channels_and_msg_ids() {
    let l = "[listener.p]\nip='127.0.0.1'\nport=1\n";
    let c = Config::from_toml_str(l, "t").unwrap();
    assert_eq!((c.max_channels, c.max_msg_ids), (100_000, 250_000));
    assert_eq!(
        (c.max_reply_routes, c.max_subscriptions),
        (1_000_000, 2_000_000)
    );
    let c = Config::from_toml_str(
        &format!("[server]\nmax_channels = 5\nmax_msg_ids = 7\n{l}"),
        "t",
    )
    .unwrap();
    assert_eq!((c.max_channels, c.max_msg_ids), (5, 7));
    for key in [
        "max_channels",
        "max_msg_ids",
        "max_reply_routes",
        "max_subscriptions",
    ] {
        let e = err(&format!("[server]\n{key} = 0\n{l}"));
        assert!(
            e.contains(&format!("table [server], key `{key}`: 0 is out of range")),
            "{e}"
        );
    }
}

#[test]
fn backlog_memory_bytes() {
    let l = "[listener.p]\nbind=['127.0.0.1:0']\n";
    let c = Config::from_toml_str(l, "t").unwrap();
    assert_eq!(
        c.backlog_memory_bytes,
        tslm_hub::settings::defaults::BACKLOG_MEMORY_BYTES
    );
    assert_eq!(c.backlog_memory_bytes, 256 * 1024 * 1024);
    let c =
        Config::from_toml_str(&format!("[server]\nbacklog_memory_bytes = 1\n{l}"), "t").unwrap();
    assert_eq!(c.backlog_memory_bytes, 1);
    let c = Config::from_toml_str(
        &format!("[server]\nbacklog_memory_bytes = 4_294_967_296\n{l}"),
        "t",
    )
    .unwrap();
    assert_eq!(c.backlog_memory_bytes, 1 << 32);
    let e = err(&format!("[server]\nbacklog_memory_bytes = 0\n{l}"));
    assert!(
        e.contains("table [server], key `backlog_memory_bytes`: 0 is not allowed"),
        "{e}"
    );
    let e = err(&format!("[server]\nbacklog_memory_bytes = '1GiB'\n{l}"));
    assert!(
        e.contains("table [server], key `backlog_memory_bytes` (line 2)"),
        "{e}"
    );
}

#[test]
fn no_channel_tables_means_the_built_in_class() {
    for c in [
        Config::embedded_default(),
        Config::from_toml_str("[listener.p]\nbind=['127.0.0.1:0']\n", "t").unwrap(),
    ] {
        assert_eq!(c.channels.iter().count(), 1);
        assert_eq!(
            c.channels.class_for_str("anything"),
            &crate::classes::ChannelClass::default()
        );
    }
}

#[test]
fn the_audit_table_is_typed_with_defaults_and_precise_errors() {
    let base = "[listener.a]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n";
    let ok = |extra: &str| Config::from_toml_str(&format!("{base}{extra}"), "t").unwrap();
    assert_eq!(ok("").audit, None);
    let a = ok("[audit]\nfile = 'audit.jsonl'\n").audit.unwrap();
    assert_eq!(a.file, std::path::PathBuf::from("audit.jsonl"));
    assert_eq!(a.sync, SyncPolicy::Interval(Duration::from_secs(1)));
    assert_eq!(a.queue_records.get(), 65_536);
    let a =
        ok("[audit]\nfile = 'x'\nsync = 'interval'\nsync_interval_ms = 250\nqueue_records = 16\n")
            .audit
            .unwrap();
    assert_eq!(a.sync, SyncPolicy::Interval(Duration::from_millis(250)));
    assert_eq!(a.queue_records.get(), 16);
    assert_eq!(
        ok("[audit]\nfile = 'x'\nsync = 'every'\n")
            .audit
            .unwrap()
            .sync,
        SyncPolicy::Every
    );
    assert_eq!(
        ok("[audit]\nfile = 'x'\nsync = 'none'\n")
            .audit
            .unwrap()
            .sync,
        SyncPolicy::None
    );

    for (extra, expected) in [
        ("[audit]\n", "table [audit], key `file`: missing"),
        (
            "[audit]\nfile = ''\n",
            "table [audit], key `file`: must not be empty",
        ),
        (
            "[audit]\nfile = 'x'\nsync = 'sometimes'\n",
            "table [audit], key `sync` (line 7): unknown variant `sometimes`",
        ),
        (
            "[audit]\nfile = 'x'\nsync_interval_ms = 5\n",
            "key `sync_interval_ms`: 5 is out of range 10..=60000",
        ),
        (
            "[audit]\nfile = 'x'\nsync = 'every'\nsync_interval_ms = 100\n",
            "key `sync_interval_ms`: only applies with sync = \"interval\"",
        ),
        (
            "[audit]\nfile = 'x'\nqueue_records = 15\n",
            "key `queue_records`: 15 is out of range 16..=16777216",
        ),
        (
            "[audit]\nfile = 'x'\nqueue_records = 16777217\n",
            "16777217 is out of range",
        ),
        (
            "[audit]\nfile = 'x'\nfsync = true\n",
            "unknown field `fsync`",
        ),
    ] {
        let e = err(&format!("{base}{extra}"));
        assert!(e.contains(expected), "{extra}: {e}");
    }
}

#[test]
fn drain_delay_seconds() {
    let listener = "[listener.a]\nip = '127.0.0.1'\nport = 0\n";
    let c = Config::from_toml_str(listener, "t.toml").unwrap();
    assert_eq!(c.drain_delay, Duration::ZERO, "default");
    let c = Config::from_toml_str(
        &format!("[server]\ndrain_delay_seconds = 5\n{listener}"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.drain_delay, Duration::from_secs(5));
    let e = err(&format!("[server]\ndrain_delay_seconds = 301\n{listener}"));
    assert!(
        e.contains("table [server], key `drain_delay_seconds`: 301 is out of range 0..=300"),
        "{e}"
    );
    let e = err(&format!("[server]\ndrain_delay_seconds = -1\n{listener}"));
    assert!(e.contains("drain_delay_seconds"), "{e}");
}

const ONE_LISTENER: &str = "[listener.a]\nip='127.0.0.1'\nport=0\n";

#[test]
fn cluster_table_is_validated_before_anything_binds() {
    let with = |t: &str| format!("{ONE_LISTENER}[cluster]\n{t}\n");
    let c = Config::from_toml_str(&with("redis = 'redis://127.0.0.1:6379'"), "t.toml").unwrap();
    let cluster = c.cluster.unwrap();
    assert_eq!(cluster.redis, ["redis://127.0.0.1:6379"]);
    assert_eq!(cluster.prefix, "tslm");
    assert_eq!(cluster.fence, tslm_cluster::Fence::RunId);
    assert!(
        Config::from_toml_str(ONE_LISTENER, "t.toml")
            .unwrap()
            .cluster
            .is_none()
    );
    let cases = [
        ("", "key `redis`: missing"),
        ("redis = []", "the list is empty"),
        ("redis = ['http://x']", "each URL starts with redis://"),
        (
            "redis = ['redis://u:secret@h:1']",
            "no credentials in a URL",
        ),
        ("redis = ['redis://a:1', 'redis://a:1']", "listed twice"),
        (
            "redis = ['redis://a:1']\nsentinels = ['redis://b:1']\nsentinel_master = 'm'",
            "not both",
        ),
        (
            "sentinels = ['redis://b:1']",
            "key `sentinel_master`: missing",
        ),
        ("sentinel_master = 'm'", "key `sentinels`: missing"),
        ("redis = ['redis://a:1']\nfence = 'maybe'", "key `fence`"),
        ("redis = ['redis://a:1']\nprefix = 'a b'", "key `prefix`"),
        (
            "redis = ['redis://a:1']\ncommand_timeout_ms = 1",
            "out of range 50..=60000",
        ),
        (
            "redis = ['redis://a:1']\nprobe_interval_ms = 0",
            "out of range 100..=60000",
        ),
        (
            "redis = ['redis://a:1']\npassword_file = '/nonexistent/pw'",
            "key `password_file`",
        ),
        (
            "redis = ['redis://a:1']\ntls_ca_file = '/nonexistent/ca.pem'",
            "key `tls_ca_file`",
        ),
        (
            "redis = ['redis://a:1']\nshards = 2",
            "unknown field `shards`",
        ),
    ];
    for (table, want) in cases {
        let e = err(&with(table));
        assert!(e.contains(want), "{table:?}: {e}");
        assert!(!e.contains("secret"), "a password reached a message: {e}");
    }
}

#[test]
fn the_redis_password_comes_from_a_file_and_never_reaches_a_debug_print() {
    let dir = std::env::temp_dir().join(format!("tslm-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pw");
    std::fs::write(&file, "s3cret-pass\n").unwrap();
    let c = Config::from_toml_str(
        &format!(
            "{ONE_LISTENER}[cluster]\nredis = 'redis://127.0.0.1:6379'\nusername = 'gw'\npassword_file = {:?}\n",
            file.to_str().unwrap()
        ),
        "t.toml",
    )
    .unwrap();
    let cluster = c.cluster.as_ref().unwrap();
    assert_eq!(cluster.password.as_deref(), Some("s3cret-pass"));
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "Debug shows the password"
    );
    std::fs::write(&file, "\n").unwrap();
    let e = err(&format!(
        "{ONE_LISTENER}[cluster]\nredis = 'redis://127.0.0.1:6379'\npassword_file = {:?}\n",
        file.to_str().unwrap()
    ));
    assert!(e.contains("is empty"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn http2_is_on_for_tls_listeners_and_refused_on_plain_ones() {
    let tls = "[listener.a]\nip='127.0.0.1'\nport=1\ntls_cert='c.pem'\ntls_key='k.pem'\n";
    let http2 = |extra: &str| {
        let c = Config::from_toml_str(&format!("{tls}{extra}"), "t.toml").unwrap();
        c.listeners[0].tls.as_ref().unwrap().http2
    };
    assert_eq!(
        http2(""),
        Some(Http2Config {
            max_concurrent_streams: 100
        })
    );
    assert_eq!(
        http2("http2_max_concurrent_streams = 8"),
        Some(Http2Config {
            max_concurrent_streams: 8
        })
    );
    assert_eq!(http2("http2 = false"), None);
    let e = err(&format!(
        "{tls}http2 = false\nhttp2_max_concurrent_streams = 8"
    ));
    assert!(
        e.contains("`http2_max_concurrent_streams`: set, but `http2 = false`"),
        "{e}"
    );
    let e = err(&format!("{tls}http2_max_concurrent_streams = 0"));
    assert!(e.contains("out of range 1..=10000"), "{e}");
    // Plain TCP: HTTP/1.1 only (no h2c); asking for HTTP/2 there is an error, not ignored.
    let plain = "[listener.a]\nip='127.0.0.1'\nport=1\n";
    let e = err(&format!("{plain}http2 = true"));
    assert!(
        e.contains("listener `a`, key `http2`: HTTP/2 is served on TLS listeners only"),
        "{e}"
    );
    let e = err(&format!("{plain}http2_max_concurrent_streams = 8"));
    assert!(e.contains("key `http2_max_concurrent_streams`"), "{e}");
    assert!(Config::from_toml_str(&format!("{plain}http2 = false"), "t.toml").is_ok());
}
