//! Cluster mode at the boundary: a gateway dials nothing but the Redis its configuration names,
//! talks TLS to it when told, and survives Redis dropping its PUB/SUB connection for an output
//! buffer overrun with nothing lost.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;
#[path = "support/redis.rs"]
mod redis;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use redis::Redis;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_tslm");

fn config(url: &str, extra: &str) -> String {
    format!(
        "{}\n[channel.\"*\"]\nbacklog_messages = 1000\n\n[cluster]\nredis = [{url:?}]\ncommand_timeout_ms = 1000\nprobe_interval_ms = 200\n{extra}\n",
        two_listeners("")
    )
}

async fn wait_ready(addr: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let ok = tokio::time::timeout(
            Duration::from_secs(2),
            http_raw(
                addr,
                "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            ),
        )
        .await
        .is_ok_and(|(s, _, _)| s == 200);
        if ok {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The TCP sockets of process `pid`: (state, local port, remote port), read from /proc.
fn sockets(pid: u32) -> Vec<(String, u16, u16)> {
    let mut inodes = HashSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().to_string();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(i.to_owned());
            }
        }
    }
    let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap(), 16).unwrap();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                out.push((f[3].to_owned(), port(f[1]), port(f[2])));
            }
        }
    }
    out
}

/// A `tslm serve` process on `config`; returns it and its two listeners' addresses (in log
/// order) once both are ready.
async fn spawn_gateway(
    dir: &std::path::Path,
    config: &str,
) -> (tokio::process::Child, HashMap<String, std::net::SocketAddr>) {
    let file = dir.join(format!("tslm-{}.toml", rand_suffix()));
    std::fs::write(&file, config).unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--config", file.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            sink.lock().unwrap().push(l);
        }
    });
    let deadline = tokio::time::Instant::now() + T;
    let field = |l: &str, key: &str| -> Option<String> {
        let at = l.find(&format!("{key}="))? + key.len() + 1;
        Some(
            l[at..]
                .split_whitespace()
                .next()?
                .trim_matches('"')
                .to_owned(),
        )
    };
    let addrs: HashMap<String, std::net::SocketAddr> = loop {
        let found: HashMap<String, std::net::SocketAddr> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" listening "))
            .filter_map(|l| Some((field(l, "listener")?, field(l, "addr")?.parse().ok()?)))
            .collect();
        if found.len() >= 2 {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not started: {:?}",
            log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for a in addrs.values() {
        wait_ready(*a).await;
    }
    (child, addrs)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn the_only_connections_a_gateway_opens_go_to_the_redis_it_names() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addrs) = spawn_gateway(dir.path(), &config(&redis.url(), "")).await;
    let pid = child.id().unwrap();
    let listener_ports: HashSet<u16> = addrs.values().map(|a| a.port()).collect();
    // Traffic of every kind: a publisher, subscribers, a history read, a listing.
    let mut p = v1(&format!("ws://{}/", addrs["private"])).await;
    let mut s = v1(&format!("ws://{}/", addrs["public"])).await;
    let created = call(&mut p, r#"{"op":"create","channel":"feed"}"#).await;
    assert_eq!(created["ok"], true, "{created}");
    assert_eq!(
        call(&mut s, r#"{"op":"subscribe","channel":"feed"}"#).await["ok"],
        true
    );
    for n in 0..20 {
        let r = call(
            &mut p,
            &format!(r#"{{"op":"publish","channel":"feed","data":{n}}}"#),
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    assert_eq!(call(&mut p, r#"{"op":"channels"}"#).await["ok"], true);
    let socks = sockets(pid);
    let mut to_redis = 0;
    for (state, local, remote) in &socks {
        if state == "0A" {
            assert!(
                listener_ports.contains(local),
                "listening on an unexpected port {local}"
            );
            continue;
        }
        if listener_ports.contains(local) {
            continue; // accepted from a client
        }
        assert_eq!(
            *remote, redis.port,
            "an outbound connection to port {remote}: {socks:?}"
        );
        to_redis += 1;
    }
    assert!(to_redis >= 2, "commands and PUB/SUB go to Redis: {socks:?}");
    child.kill().await.unwrap();
}

#[tokio::test]
async fn redis_dropping_the_pubsub_connection_for_its_output_buffer_loses_nothing() {
    let redis = Redis::start().await;
    // The subscriber's own queue holds the whole burst: a heal delivers it at once, and this
    // test is about Redis's buffer, not the subscriber's.
    let cfg = config(&redis.url(), "").replace(
        "default_endpoint_permissions=['Subscribe']\n",
        "default_endpoint_permissions=['Subscribe']\noutbound_queue_bytes = 67108864\nchannel_buffer_size = 100000\n",
    );
    let a = TestServer::start(&cfg).await;
    wait_ready(a.addr("public")).await;
    let b = TestServer::start(&cfg).await;
    wait_ready(b.addr("public")).await;
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"feed"}"#).await["ok"],
        true
    );
    let mut s = v1(&b.url("public")).await;
    assert_eq!(
        call(&mut s, r#"{"op":"subscribe","channel":"feed"}"#).await["ok"],
        true
    );
    // A PUB/SUB client may hold 16 KB of output beyond Redis's 16 KB reply buffer: every
    // message below is larger, so Redis drops the gateway's PUB/SUB connection.
    let set = redis
        .cmd(&[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 16kb 8kb 1",
        ])
        .await;
    assert!(set.starts_with("+OK"), "{set}");
    let before = connections(&redis).await;
    let pad = "x".repeat(40_000);
    let total = 40u64;
    // The subscriber reads as it goes (its own queue is not what this test is about).
    let reader = tokio::spawn(async move {
        let mut next = 1u64;
        while next <= total {
            let v = recv_json(&mut s).await;
            match v["event"].as_str() {
                Some("message") => {
                    assert_eq!(v["offset"].as_u64(), Some(next), "in order, once");
                    next += 1;
                }
                other => panic!("unexpected {other:?}: {v}"),
            }
        }
    });
    let mut publishers = Vec::new();
    for k in 0..4u64 {
        let url = a.url("private");
        let pad = pad.clone();
        publishers.push(tokio::spawn(async move {
            let mut ws = v1(&url).await;
            for n in 0..total / 4 {
                let r = call(
                    &mut ws,
                    &format!(r#"{{"op":"publish","channel":"feed","data":{{"k":{k},"n":{n},"pad":"{pad}"}}}}"#),
                )
                .await;
                assert_eq!(r["ok"], true, "{r}");
            }
        }));
    }
    for t in publishers {
        t.await.unwrap();
    }
    // Redis did drop the gateway's PUB/SUB connection (it connected again); the count read
    // here includes the connection that reads it.
    let after = connections(&redis).await;
    assert!(
        after > before + 1,
        "the burst never overran the buffer ({before} -> {after})"
    );
    reader.await.unwrap();
}

/// Connections Redis has accepted so far.
async fn connections(redis: &Redis) -> u64 {
    let info = redis.text(&["INFO", "stats"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no connection count in {info}"))
}

#[tokio::test]
async fn a_gateway_talks_tls_to_redis_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "test redis CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &*ca).unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.path().join("ca.pem"),
        dir.path().join("redis.pem"),
        dir.path().join("redis.key"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let redis = Redis::start_tls(&cert_file, &key_file, &ca_file).await;
    let url = format!("rediss://127.0.0.1:{}", redis.tls_port());
    let cfg = config(
        &url,
        &format!("tls_ca_file = {:?}", ca_file.to_str().unwrap()),
    );
    let a = TestServer::start(&cfg).await;
    wait_ready(a.addr("public")).await;
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"feed"}"#).await["ok"],
        true
    );
    let mut s = v1(&a.url("public")).await;
    assert_eq!(
        call(&mut s, r#"{"op":"subscribe","channel":"feed"}"#).await["ok"],
        true
    );
    let r = call(&mut p, r#"{"op":"publish","channel":"feed","data":1}"#).await;
    assert_eq!(r["offset"], 1, "{r}");
    let v = recv_json(&mut s).await;
    assert_eq!(
        (v["event"].as_str(), v["offset"].as_u64()),
        (Some("message"), Some(1)),
        "{v}"
    );
    // Without the CA the server's certificate is refused: nothing is written, `unavailable`.
    let untrusting = TestServer::start(&config(&url, "")).await;
    let mut q = v1(&untrusting.url("private")).await;
    let r = call(&mut q, r#"{"op":"publish","channel":"feed","data":2}"#).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
}

#[tokio::test]
async fn the_cluster_table_cannot_change_on_a_reload() {
    let redis = Redis::start().await;
    let a = TestServer::start(&config(&redis.url(), "")).await;
    wait_ready(a.addr("public")).await;
    let other = config(&redis.url(), "prefix = \"other\"");
    let e = a
        .reloader
        .reload(tslm_server::Config::from_toml_str(&other, "test").unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("[cluster] cannot change"), "{e}");
    // The same table reloads fine.
    let same = config(&redis.url(), "");
    a.reloader
        .reload(tslm_server::Config::from_toml_str(&same, "test").unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_gateway_authenticates_as_a_redis_acl_user_limited_to_its_prefix() {
    let redis = Redis::start().await;
    let set = redis
        .cmd(&[
            "ACL",
            "SETUSER",
            "gw",
            "on",
            ">pa55word",
            "~tslm:*",
            "&tslm:*",
            "+@read",
            "+@write",
            "+@pubsub",
            "+@scripting",
            "+info",
            "+ping",
            "+time",
        ])
        .await;
    assert!(set.starts_with("+OK"), "{set}");
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pa55word\n").unwrap();
    let auth = format!(
        "username = \"gw\"\npassword_file = {:?}",
        pw.to_str().unwrap()
    );
    let a = TestServer::start(&config(&redis.url(), &auth)).await;
    wait_ready(a.addr("public")).await;
    let b = TestServer::start(&config(&redis.url(), &auth)).await;
    wait_ready(b.addr("public")).await;
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"feed"}"#).await["ok"],
        true
    );
    let mut s = v1(&b.url("public")).await;
    assert_eq!(
        call(&mut s, r#"{"op":"subscribe","channel":"feed"}"#).await["ok"],
        true
    );
    let r = call(
        &mut p,
        r#"{"op":"publish","channel":"feed","data":1,"msg_id":"x"}"#,
    )
    .await;
    assert_eq!(r["offset"], 1, "{r}");
    assert_eq!(recv_json(&mut s).await["offset"], 1);
    let l = call(&mut p, r#"{"op":"channels"}"#).await;
    assert_eq!(l["channels"][0]["channel"], "feed", "{l}");
    assert_eq!(
        call(&mut p, r#"{"op":"delete","channel":"feed"}"#).await["ok"],
        true
    );
    // A wrong password: nothing is accepted, and nothing is acknowledged.
    std::fs::write(&pw, "wrong\n").unwrap();
    let c = TestServer::start(&config(&redis.url(), &auth)).await;
    let mut q = v1(&c.url("private")).await;
    let r = call(&mut q, r#"{"op":"create","channel":"other"}"#).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        !r.to_string().contains("wrong"),
        "the password reached a client: {r}"
    );
}

#[tokio::test]
async fn clients_of_a_killed_gateway_resume_on_another_with_recovered_true() {
    let redis = Redis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, a_addrs) = spawn_gateway(dir.path(), &config(&redis.url(), "")).await;
    let b = TestServer::start(&config(&redis.url(), "")).await;
    wait_ready(b.addr("public")).await;
    let mut p = v1(&b.url("private")).await;
    let created = call(&mut p, r#"{"op":"create","channel":"feed"}"#).await;
    let epoch = created["epoch"].as_str().unwrap().to_owned();
    let mut s = v1(&format!("ws://{}/", a_addrs["public"])).await;
    assert_eq!(
        call(&mut s, r#"{"op":"subscribe","channel":"feed"}"#).await["ok"],
        true
    );
    for n in 1..=10 {
        let r = call(
            &mut p,
            &format!(r#"{{"op":"publish","channel":"feed","data":{n}}}"#),
        )
        .await;
        assert_eq!(r["offset"], n, "{r}");
    }
    let mut last = 0;
    while last < 10 {
        let v = recv_json(&mut s).await;
        assert_eq!(v["offset"].as_u64(), Some(last + 1), "{v}");
        last += 1;
    }
    // SIGKILL: no goodbye, no drain.
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    for n in 11..=25 {
        let r = call(
            &mut p,
            &format!(r#"{{"op":"publish","channel":"feed","data":{n}}}"#),
        )
        .await;
        assert_eq!(r["offset"], n, "{r}");
    }
    let mut s = v1(&b.url("public")).await;
    let r = call(
        &mut s,
        &format!(
            r#"{{"op":"subscribe","channel":"feed","start":{{"epoch":"{epoch}","offset":{last}}}}}"#
        ),
    )
    .await;
    assert_eq!(
        (r["ok"].as_bool(), r["recovered"].as_bool()),
        (Some(true), Some(true)),
        "{r}"
    );
    for n in 11..=25u64 {
        let v = recv_json(&mut s).await;
        assert_eq!(
            (v["offset"].as_u64(), v["data"].as_u64()),
            (Some(n), Some(n)),
            "{v}"
        );
    }
}

#[tokio::test]
async fn an_original_protocol_subscriber_of_another_node_gets_the_messages() {
    let redis = Redis::start().await;
    let a = TestServer::start(&config(&redis.url(), "")).await;
    wait_ready(a.addr("public")).await;
    let b = TestServer::start(&config(&redis.url(), "")).await;
    wait_ready(b.addr("public")).await;
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"leg.a"}"#).await["ok"],
        true
    );
    // B has never seen the channel: the original protocol's subscribe opens it there too.
    let mut s = legacy(&b.url("public")).await;
    send(&mut s, r#"{"Subscribe":"leg.a"}"#).await;
    let r = recv(&mut s).await;
    assert!(r.contains("Success"), "{r}");
    let r = call(
        &mut p,
        r#"{"op":"publish","channel":"leg.a","data":"hello"}"#,
    )
    .await;
    assert_eq!(r["offset"], 1, "{r}");
    let m = recv(&mut s).await;
    assert!(m.contains("hello"), "{m}");
    send(&mut s, r#"{"Subscribe":"leg.nowhere"}"#).await;
    assert_eq!(
        recv(&mut s).await,
        r#"{"Error":"Channel not found: leg.nowhere"}"#
    );
}

/// A counter of `INFO` section `section` (e.g. `cmdstat_xrevrange` `calls`), 0 when absent.
async fn stat(redis: &Redis, section: &str, line: &str, field: &str) -> u64 {
    let info = redis.text(&["INFO", section]).await;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{line}:")))
        .and_then(|rest| {
            rest.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or(("", kv));
                (k == field || field.is_empty()).then(|| v.trim().parse().ok())?
            })
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn an_idle_node_keeps_its_pubsub_connection_across_probes() {
    let redis = Redis::start().await;
    let a = TestServer::start(&config(&redis.url(), "")).await;
    wait_ready(a.addr("public")).await;
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"feed"}"#).await["ok"],
        true
    );
    let mut s = v1(&a.url("public")).await;
    assert_eq!(
        call(&mut s, r#"{"op":"subscribe","channel":"feed"}"#).await["ok"],
        true
    );
    let before = connections(&redis).await;
    // Ten probes (every 200 ms) on a subscribed connection.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let after = connections(&redis).await;
    assert_eq!(
        after,
        before + 1,
        "the node reconnected (only this count's own connection is new)"
    );
}

#[tokio::test]
async fn concurrent_first_subscribes_open_a_channel_once_with_bounded_reads() {
    let redis = Redis::start().await;
    let cfg = config(&redis.url(), "").replace("backlog_messages = 1000", "backlog_messages = 300");
    let a = TestServer::start(&cfg).await;
    wait_ready(a.addr("public")).await;
    let b = TestServer::start(&cfg).await;
    wait_ready(b.addr("public")).await;
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"big"}"#).await["ok"],
        true
    );
    let pad = "x".repeat(1000);
    for n in 1..=300 {
        let r = call(
            &mut p,
            &format!(r#"{{"op":"publish","channel":"big","data":"{pad}{n}"}}"#),
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let reads_before = stat(&redis, "commandstats", "cmdstat_xrevrange", "calls").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = b.url("public");
        tasks.push(tokio::spawn(async move {
            let mut s = v1(&url).await;
            call(
                &mut s,
                r#"{"op":"subscribe","channel":"big","start":"oldest"}"#,
            )
            .await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(
            (r["ok"].as_bool(), r["from"].as_u64()),
            (Some(true), Some(1)),
            "{r}"
        );
    }
    // One open: the 300 newest messages in pages of 100.
    let reads = stat(&redis, "commandstats", "cmdstat_xrevrange", "calls").await - reads_before;
    assert!(
        (1..=4).contains(&reads),
        "{reads} XREVRANGE calls for one channel"
    );
}

#[tokio::test]
async fn a_failed_open_leaves_no_subscription_behind() {
    let redis = Redis::start().await;
    let a = TestServer::start(&config(&redis.url(), "")).await;
    wait_ready(a.addr("public")).await;
    let mut s = v1(&a.url("public")).await;
    for i in 0..5 {
        let r = call(
            &mut s,
            &format!(r#"{{"op":"subscribe","channel":"nothing.{i}"}}"#),
        )
        .await;
        assert_eq!(r["error"]["code"], "not_found", "{r}");
    }
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let n = stat(&redis, "stats", "pubsub_channels", "").await;
        // The node's own reply channel stays.
        if n == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} PUB/SUB channels left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn nodes_lease_distinct_numbers() {
    let redis = Redis::start().await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let n = TestServer::start(&config(&redis.url(), "")).await;
        wait_ready(n.addr("public")).await;
        nodes.push(n);
    }
    let mut ids = HashSet::new();
    for n in &nodes {
        let mut ws = v1(&n.url("private")).await;
        assert_eq!(
            call(&mut ws, r#"{"op":"create","channel":"r"}"#).await["ok"],
            true
        );
        // A connection id's top 16 bits are its node: a reply names it.
        ids.insert(n.hub.next_conn_id().node());
    }
    assert_eq!(ids.len(), 3, "{ids:?}");
    let leases = redis.text(&["INFO", "keyspace"]).await;
    assert!(leases.contains("keys="), "{leases}");
}

#[tokio::test]
async fn a_publish_that_fails_in_redis_takes_no_offset() {
    let redis = Redis::start().await;
    let set = redis
        .cmd(&[
            "ACL", "SETUSER", "noxadd", "on", ">pw", "~tslm:*", "&tslm:*", "+@all", "-xadd",
        ])
        .await;
    assert!(set.starts_with("+OK"), "{set}");
    let a = TestServer::start(&config(&redis.url(), "")).await;
    wait_ready(a.addr("public")).await;
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"feed"}"#).await["ok"],
        true
    );
    assert_eq!(
        call(&mut p, r#"{"op":"publish","channel":"feed","data":1}"#).await["offset"],
        1
    );
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pw").unwrap();
    let b = TestServer::start(&config(
        &redis.url(),
        &format!(
            "username = \"noxadd\"\npassword_file = {:?}",
            pw.to_str().unwrap()
        ),
    ))
    .await;
    wait_ready(b.addr("public")).await;
    let mut q = v1(&b.url("private")).await;
    let r = call(&mut q, r#"{"op":"publish","channel":"feed","data":2}"#).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        !r.to_string().contains("user_script"),
        "Redis internals reached a client: {r}"
    );
    // The next publish that works gets offset 2: nothing was taken by the failed one.
    assert_eq!(
        call(&mut p, r#"{"op":"publish","channel":"feed","data":3}"#).await["offset"],
        2
    );
}

#[tokio::test]
async fn a_history_read_on_another_node_sees_every_acknowledged_publish() {
    let redis = Redis::start().await;
    let a = TestServer::start(&config(&redis.url(), "")).await;
    wait_ready(a.addr("public")).await;
    let b = TestServer::start(&config(&redis.url(), "")).await;
    wait_ready(b.addr("public")).await;
    let mut p = v1(&a.url("private")).await;
    assert_eq!(
        call(&mut p, r#"{"op":"create","channel":"feed"}"#).await["ok"],
        true
    );
    let mut reader = v1(&b.url("public")).await;
    for n in 1..=100u64 {
        let r = call(
            &mut p,
            &format!(r#"{{"op":"publish","channel":"feed","data":{n}}}"#),
        )
        .await;
        assert_eq!(r["offset"], n, "{r}");
        // At once, on the other node: the message the publisher was just told about is there.
        let h = call(
            &mut reader,
            r#"{"op":"history","channel":"feed","start":{"last":1}}"#,
        )
        .await;
        assert_eq!(h["messages"][0]["offset"], n, "{h}");
    }
}
