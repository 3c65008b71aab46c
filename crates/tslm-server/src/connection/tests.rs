//! A connection without a socket: requests in, replies out, state checked on the hub.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tslm_hub::Hub;

use super::*;
use crate::admission::{Admission, Budget};
use crate::config::Config;
use crate::context::{Admitted, ConnSlot, ListenerCtx, Policy};
use crate::stats::Stats;

fn listener(toml: &str) -> Arc<ListenerCtx> {
    listener_with_audit(toml, crate::audit::Audit::off())
}

fn listener_with_audit(toml: &str, audit: crate::audit::Audit) -> Arc<ListenerCtx> {
    let config = Config::from_toml_str(toml, "test").expect("valid config");
    let cfg = Arc::new(config.listeners[0].clone());
    let policy = Policy {
        channels: Arc::clone(&config.channels),
        publishers: Arc::clone(&config.publishers),
        verifier: None,
        replay: Arc::new(Mutex::new(crate::identity::replay_guard(
            &config.publishers,
            100,
        ))),
        issuers: Arc::clone(&config.issuers),
    };
    Arc::new(
        ListenerCtx::new(
            cfg,
            policy,
            Hub::new(),
            CancellationToken::new(),
            TaskTracker::new(),
            Arc::new(Stats::default()),
            Arc::new(Admission::new(Budget::new(16, None))),
        )
        .with_audit(audit),
    )
}

fn connection(ctx: &Arc<ListenerCtx>) -> Connection {
    let peer: SocketAddr = "192.0.2.1:5000".parse().expect("address");
    let admitted = Admitted {
        ip: ctx.ip_limits.admit(peer.ip()).expect("admitted"),
        permit: Arc::clone(&ctx.conn_limit)
            .try_acquire_owned()
            .expect("a permit"),
        open: ctx.admission.open().expect("a descriptor"),
        gauge: ctx.stats.connection(),
    };
    let slot = Arc::new(ConnSlot::new(&ctx.cfg, peer, Vec::new(), admitted));
    Connection::new(Arc::clone(ctx), slot, Dialect::V1, Identity::Anonymous)
}

/// The reply to one v1 request, as JSON.
fn run(c: &mut Connection, request: &str) -> serde_json::Value {
    let reply = match c.on_text(Bytes::copy_from_slice(request.as_bytes())) {
        Ok(reply) => reply,
        Err(_) => panic!("`{request}` waits for authentication"),
    };
    serde_json::from_str(&reply).expect("a JSON reply")
}

const OPEN: &str = "[listener.open]\nip='127.0.0.1'\nport=0\n\
    default_endpoint_permissions=['CreateChannel','NotifyChannel','Subscribe']\n";
const SUBSCRIBERS: &str =
    "[listener.subs]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n";

#[tokio::test]
async fn requests_are_executed_into_replies() {
    let ctx = listener(OPEN);
    let mut c = connection(&ctx);
    assert_eq!(run(&mut c, r#"{"op":"ping","id":1}"#)["ok"], true);
    let r = run(&mut c, r#"{"op":"create","channel":"a","id":2}"#);
    assert_eq!(r["ok"], true, "{r}");
    let r = run(&mut c, r#"{"op":"publish","channel":"a","data":1,"id":3}"#);
    assert_eq!(r["ok"], true, "{r}");
    let r = run(&mut c, r#"{"op":"nonsense","id":4}"#);
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["id"], 4, "{r}");
}

#[tokio::test]
async fn the_listener_decides_what_a_connection_may_do() {
    let ctx = listener(SUBSCRIBERS);
    let mut c = connection(&ctx);
    let r = run(&mut c, r#"{"op":"create","channel":"a","id":1}"#);
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let r = run(&mut c, r#"{"op":"publish","channel":"a","data":1,"id":2}"#);
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
}

#[tokio::test]
async fn auth_requests_are_handed_back_to_run_asynchronously() {
    let ctx = listener(OPEN);
    let mut c = connection(&ctx);
    let pending = c
        .on_text(Bytes::from_static(br#"{"op":"auth","token":"x","id":1}"#))
        .expect_err("an `auth` request waits for run_auth");
    let r: serde_json::Value = serde_json::from_str(&c.run_auth(pending).await).expect("JSON");
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert_eq!(ctx.stats.snapshot().auth_refusals_command, 1);
}

#[tokio::test]
async fn a_dropped_connection_leaves_no_subscription() {
    let ctx = listener(OPEN);
    let mut c = connection(&ctx);
    assert_eq!(
        run(&mut c, r#"{"op":"create","channel":"a","id":1}"#)["ok"],
        true
    );
    let r = run(&mut c, r#"{"op":"subscribe","channel":"a","id":2}"#);
    assert_eq!(r["ok"], true, "{r}");
    let (channel, id) = (ChannelName::new("a").expect("a name"), c.id);
    assert!(ctx.hub.is_subscribed(&channel, id));
    drop(c);
    assert!(!ctx.hub.is_subscribed(&channel, id));
}

#[tokio::test]
async fn with_the_audit_queue_full_writes_are_refused_before_they_happen() {
    use crate::audit::{Audit, Event, Msg};
    let toml = format!("{OPEN}[channel.\"auto.*\"]\nauto_create = true\n");
    let (audit, mut rx) = Audit::queue_for_tests(3);
    let ctx = listener_with_audit(&toml, audit);
    let mut c = connection(&ctx);
    assert_eq!(run(&mut c, r#"{"op":"create","channel":"a"}"#)["ok"], true);
    let r = run(
        &mut c,
        r#"{"op":"publish","channel":"a","data":{"k":1},"msg_id":"m"}"#,
    );
    assert_eq!(r["offset"], 1, "{r}");
    // One place left: an auto-created channel needs two (its create and the publish).
    let r = run(&mut c, r#"{"op":"publish","channel":"auto.x","data":1}"#);
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        ctx.hub
            .settings(&ChannelName::new("auto.x").unwrap())
            .is_err()
    );
    assert_eq!(
        run(&mut c, r#"{"op":"publish","channel":"a","data":2}"#)["offset"],
        2
    );
    // Full: refused, and nothing was published or deleted.
    for req in [
        r#"{"op":"publish","channel":"a","data":3}"#,
        r#"{"op":"delete","channel":"a"}"#,
        r#"{"op":"create","channel":"b"}"#,
    ] {
        let r = run(&mut c, req);
        assert_eq!(r["error"]["code"], "unavailable", "{req}: {r}");
    }
    let h = run(&mut c, r#"{"op":"history","channel":"a","start":"oldest"}"#);
    assert_eq!(h["messages"].as_array().unwrap().len(), 2, "{h}");
    assert!(ctx.hub.settings(&ChannelName::new("b").unwrap()).is_err());
    // What was queued: the create and the two publishes, with their offsets and hashes.
    let mut kinds = Vec::new();
    while let Ok(Msg::Event(_, e)) = rx.try_recv() {
        if let Event::Publish {
            offset,
            sha256,
            size,
            msg_id,
            ..
        } = &e
        {
            kinds.push(format!("publish {offset} {size} {msg_id:?}"));
            if *offset == 1 {
                assert_eq!(*sha256, tslm_auth::token::hash_token(r#"{"k":1}"#));
            }
        } else {
            kinds.push(
                format!("{e:?}")
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned(),
            );
        }
    }
    assert_eq!(
        kinds,
        ["Create", "publish 1 7 Some(\"m\")", "publish 2 1 None"]
    );
    // Room again: writes go through.
    assert_eq!(
        run(&mut c, r#"{"op":"publish","channel":"a","data":3}"#)["offset"],
        3
    );
}

#[tokio::test]
async fn original_protocol_writes_are_recorded_too() {
    use crate::audit::{Audit, Event, Msg};
    let (audit, mut rx) = Audit::queue_for_tests(16);
    let ctx = listener_with_audit(OPEN, audit);
    let mut c = connection(&ctx);
    c.dialect = Dialect::Legacy;
    let reply =
        |c: &mut Connection, req: &str| match c.on_text(Bytes::copy_from_slice(req.as_bytes())) {
            Ok(r) => r,
            Err(_) => panic!("the original protocol has no auth op"),
        };
    let r = reply(&mut c, r#"{"CreateChannel":"news"}"#);
    assert!(r.contains("Success"), "{r}");
    let r = reply(&mut c, r#"{"NotifyChannel":["news",{"Text":"hello"}]}"#);
    assert!(r.contains("Success"), "{r}");
    let Ok(Msg::Event(
        _,
        Event::Create {
            channel, created, ..
        },
    )) = rx.try_recv()
    else {
        panic!("no create record");
    };
    assert_eq!((channel.as_str(), created), ("news", true));
    let Ok(Msg::Event(_, Event::Publish { offset, sha256, .. })) = rx.try_recv() else {
        panic!("no publish record");
    };
    assert_eq!(offset, 1);
    // The message as stored and delivered: the JSON string.
    assert_eq!(sha256, tslm_auth::token::hash_token(r#""hello""#));
}
