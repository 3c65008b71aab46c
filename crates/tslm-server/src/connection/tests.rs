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
            {
                let hub = Hub::new();
                let broker: Arc<dyn tslm_hub::Broker> =
                    Arc::new(tslm_hub::MemoryBroker::new(hub.clone()));
                (hub, broker)
            },
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
async fn run(c: &mut Connection, request: &str) -> serde_json::Value {
    let reply = match c.on_text(Bytes::copy_from_slice(request.as_bytes())).await {
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
    assert_eq!(run(&mut c, r#"{"op":"ping","id":1}"#).await["ok"], true);
    let r = run(&mut c, r#"{"op":"create","channel":"a","id":2}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = run(&mut c, r#"{"op":"publish","channel":"a","data":1,"id":3}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = run(&mut c, r#"{"op":"nonsense","id":4}"#).await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["id"], 4, "{r}");
}

#[tokio::test]
async fn the_listener_decides_what_a_connection_may_do() {
    let ctx = listener(SUBSCRIBERS);
    let mut c = connection(&ctx);
    let r = run(&mut c, r#"{"op":"create","channel":"a","id":1}"#).await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    let r = run(&mut c, r#"{"op":"publish","channel":"a","data":1,"id":2}"#).await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
}

#[tokio::test]
async fn auth_requests_are_handed_back_to_run_asynchronously() {
    let ctx = listener(OPEN);
    let mut c = connection(&ctx);
    let pending = c
        .on_text(Bytes::from_static(br#"{"op":"auth","token":"x","id":1}"#))
        .await
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
        run(&mut c, r#"{"op":"create","channel":"a","id":1}"#).await["ok"],
        true
    );
    let r = run(&mut c, r#"{"op":"subscribe","channel":"a","id":2}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let (channel, id) = (ChannelName::new("a").expect("a name"), c.id);
    assert!(ctx.hub.is_subscribed(&channel, id));
    drop(c);
    assert!(!ctx.hub.is_subscribed(&channel, id));
}

/// A connection outlives the request that opened it: parked in the registry it keeps its
/// subscriptions and receives deliveries into its outbox; continued by its key it runs the next
/// request; left idle past the timeout it is swept and its subscriptions end.
#[tokio::test(start_paused = true)]
async fn a_parked_connection_keeps_its_subscriptions_until_its_idle_timeout() {
    use crate::registry::Registry;
    use std::time::Duration;
    let ctx = listener(OPEN);
    let registry: Registry<Connection> = Registry::new(4, Duration::from_secs(30));
    let key = registry.open().expect("room");
    let mut c = connection(&ctx);
    assert_eq!(
        run(&mut c, r#"{"op":"create","channel":"a","id":1}"#).await["ok"],
        true
    );
    let r = run(&mut c, r#"{"op":"subscribe","channel":"a","id":2}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let (channel, id, outbox) = (
        ChannelName::new("a").expect("a name"),
        c.id,
        c.outbox.clone(),
    );
    assert!(registry.park(key, c).is_none());

    // Parked: still subscribed, deliveries queue for the next poll.
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(registry.sweep(Duration::from_secs(60)).is_empty());
    let data = tslm_protocol::Payload::from_json_bytes(Bytes::from_static(b"7")).expect("json");
    ctx.hub.publish(&channel, &data).expect("published");
    assert!(ctx.hub.is_subscribed(&channel, id));
    assert_eq!(outbox.queued_frames(), 1);

    // Continued by its key: the same connection runs the next request.
    let mut c = registry.checkout(key).expect("parked");
    assert_eq!(c.id, id);
    let r = run(&mut c, r#"{"op":"ping","id":3}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(registry.park(key, c).is_none());

    // Idle past the timeout: swept, and dropping it ends its subscription.
    tokio::time::advance(Duration::from_secs(31)).await;
    let ended = registry.sweep(Duration::from_secs(60));
    assert_eq!(ended.len(), 1);
    assert!(
        ctx.hub.is_subscribed(&channel, id),
        "ended outside the lock"
    );
    drop(ended);
    assert!(!ctx.hub.is_subscribed(&channel, id));
    assert!(outbox.is_closed());
}

#[tokio::test]
async fn with_the_audit_queue_full_writes_are_refused_before_they_happen() {
    use crate::audit::{Audit, Event, Msg};
    let toml = format!("{OPEN}[channel.\"auto.*\"]\nauto_create = true\n");
    let (audit, mut rx) = Audit::queue_for_tests(3);
    let ctx = listener_with_audit(&toml, audit);
    let mut c = connection(&ctx);
    assert_eq!(
        run(&mut c, r#"{"op":"create","channel":"a"}"#).await["ok"],
        true
    );
    let r = run(
        &mut c,
        r#"{"op":"publish","channel":"a","data":{"k":1},"msg_id":"m"}"#,
    )
    .await;
    assert_eq!(r["offset"], 1, "{r}");
    // One place left: an auto-created channel needs two (its create and the publish).
    let r = run(&mut c, r#"{"op":"publish","channel":"auto.x","data":1}"#).await;
    assert_eq!(r["error"]["code"], "unavailable", "{r}");
    assert!(
        ctx.hub
            .settings(&ChannelName::new("auto.x").unwrap())
            .is_err()
    );
    assert_eq!(
        run(&mut c, r#"{"op":"publish","channel":"a","data":2}"#).await["offset"],
        2
    );
    // Full: refused, and nothing was published or deleted.
    for req in [
        r#"{"op":"publish","channel":"a","data":3}"#,
        r#"{"op":"delete","channel":"a"}"#,
        r#"{"op":"create","channel":"b"}"#,
    ] {
        let r = run(&mut c, req).await;
        assert_eq!(r["error"]["code"], "unavailable", "{req}: {r}");
    }
    let h = run(&mut c, r#"{"op":"history","channel":"a","start":"oldest"}"#).await;
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
        run(&mut c, r#"{"op":"publish","channel":"a","data":3}"#).await["offset"],
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
    async fn reply(c: &mut Connection, req: &str) -> String {
        match c.on_text(Bytes::copy_from_slice(req.as_bytes())).await {
            Ok(r) => r,
            Err(_) => panic!("the original protocol has no auth op"),
        }
    }
    let r = reply(&mut c, r#"{"CreateChannel":"news"}"#).await;
    assert!(r.contains("Success"), "{r}");
    let r = reply(&mut c, r#"{"NotifyChannel":["news",{"Text":"hello"}]}"#).await;
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
