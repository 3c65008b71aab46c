//! One rule for reading a channel, whatever the entry point (WebSocket `subscribe` and `history`
//! in protocol v1, `subscribe` in the original protocol, HTTP history, channel listings): the
//! listener's permission, the class's `subscribe_from`, the class's `subscribers` rule (an
//! access token granting the channel) and a publisher's channel patterns. Real sockets, real
//! signed access tokens (an `[issuer]` with an HMAC `secret`).

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use serde_json::{Value, json};
use tslm_auth::token;

const SECRET: &[u8] = b"read-rule-test-secret-of-32-bytes-or-more";

/// Listeners: `public` (Subscribe), `private` (CreateChannel, NotifyChannel: the operators'
/// HTTP history and listings), `mixed` (all three). Publisher `prices` is held to `prices.*`.
/// Classes: `secure.*` and `prices.*` need authenticated subscribers; `inner.*` may be read from
/// `public` only.
fn config(prices_token: &str) -> String {
    format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n\
         [listener.mixed]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel','Subscribe']\n\
         [publisher.prices]\ntoken_hashes = ['{}']\nchannels = ['prices.*']\n\
         [issuer.corp]\nissuer = 'corp'\naudiences = ['tslm']\nchannels_claim = 'channels'\nsecret = '{}'\n\
         [channel.\"secure.*\"]\nsubscribers = 'authenticated'\n\
         [channel.\"prices.*\"]\nsubscribers = 'authenticated'\n\
         [channel.\"inner.*\"]\nsubscribe_from = ['public']\n",
        token::hash_line(prices_token),
        base64::engine::general_purpose::STANDARD.encode(SECRET),
    )
}

/// An access token of issuer `corp` granting `channels`, valid for a minute.
fn access_token(channels: &[&str]) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(60);
    let claims = json!({"iss": "corp", "aud": "tslm", "sub": "reader", "exp": exp.as_secs(),
                        "channels": channels});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or("")
}

const CHANNELS: [&str; 5] = ["open.x", "secure.x", "inner.x", "prices.eu", "orders.x"];

/// A server with every channel of [`CHANNELS`] created, each holding one message.
async fn server(prices_token: &str) -> TestServer {
    let srv = TestServer::start(&config(prices_token)).await;
    fill(&srv);
    srv
}

/// Creates every channel of [`CHANNELS`] with one message.
fn fill(srv: &TestServer) {
    for c in CHANNELS {
        let name = c.parse().unwrap();
        assert!(srv.hub.create(&name));
        srv.hub
            .publish(
                &name,
                &tslm_protocol::Payload::from_json_bytes(bytes::Bytes::from_static(b"1")).unwrap(),
            )
            .unwrap();
    }
}

async fn history_http(addr: SocketAddr, channel: &str, bearer: Option<&str>) -> (u16, Value) {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let (status, _, body) = http(
        addr,
        "GET",
        &format!("/v1/channels/{channel}/messages"),
        &headers,
        "",
    )
    .await;
    (status, body)
}

async fn listed_http(addr: SocketAddr, bearer: Option<&str>) -> Vec<String> {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let (status, _, body) = http(addr, "GET", "/v1/channels", &headers, "").await;
    assert_eq!(status, 200, "{body}");
    names(&body)
}

fn names(list_reply: &Value) -> Vec<String> {
    list_reply["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("no channels in {list_reply}"))
        .iter()
        .map(|c| c["channel"].as_str().unwrap().to_owned())
        .collect()
}

/// `subscribe` and `history` of `channel` over protocol v1: (subscribe reply, history reply).
async fn read_ws(ws: &mut Ws, channel: &str) -> (Value, Value) {
    let sub = call(
        ws,
        &format!(r#"{{"op":"subscribe","channel":"{channel}","start":{{"last":1}}}}"#),
    )
    .await;
    if sub["ok"] == true {
        // The replayed message, then leave so the history below is a separate read.
        let _ = recv_json(ws).await;
        let r = call(
            ws,
            &format!(r#"{{"op":"unsubscribe","channel":"{channel}"}}"#),
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let hist = call(
        ws,
        &format!(r#"{{"op":"history","channel":"{channel}","start":"oldest"}}"#),
    )
    .await;
    (sub, hist)
}

/// Item 5: a publisher held to `prices.*` on a listener that also allows subscribing reads only
/// `prices.*`, through every read (subscribe, history, listing), and its identity counts as
/// authenticated for the `prices.*` class.
#[tokio::test]
async fn a_publisher_reads_only_within_its_patterns_over_websocket() {
    let prices = token::generate_token();
    let srv = server(&prices).await;
    let mut ws = v1(&srv.url("mixed")).await;
    let r = call(&mut ws, &format!(r#"{{"op":"auth","token":"{prices}"}}"#)).await;
    assert_eq!(r["ok"], true, "{r}");

    let (sub, hist) = read_ws(&mut ws, "prices.eu").await;
    assert_eq!(
        (sub["ok"].clone(), hist["ok"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(hist["messages"], json!([{"offset":1,"data":1}]));
    for channel in ["open.x", "secure.x", "orders.x"] {
        let (sub, hist) = read_ws(&mut ws, channel).await;
        for (reply, op) in [(&sub, "subscribe"), (&hist, "history")] {
            assert_eq!(code(reply), "forbidden", "{channel} {op}: {reply}");
            assert_eq!(
                message(reply),
                format!("publisher `prices` may not use channel `{channel}` ({op})")
            );
        }
    }
    let listed = call(&mut ws, r#"{"op":"channels"}"#).await;
    assert_eq!(names(&listed), ["prices.eu"]);
    // Its writes were already held to the patterns; a ping proves the connection is still fine.
    assert_eq!(call(&mut ws, r#"{"op":"ping"}"#).await["ok"], true);
}

/// Item 6: the operators' HTTP history follows the same rule: an anonymous request reads no
/// channel of an authenticated class and no channel whose class does not list the listener in
/// `subscribe_from`; a publisher reads its own channels, authenticated class included.
#[tokio::test]
async fn http_history_follows_the_read_rule() {
    let prices = token::generate_token();
    let srv = server(&prices).await;
    let private = srv.addr("private");

    let (status, body) = history_http(private, "open.x", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"], json!([{"offset":1,"data":1}]));

    for channel in ["secure.x", "prices.eu"] {
        let (status, body) = history_http(private, channel, None).await;
        assert_eq!(
            (status, code(&body)),
            (401, "unauthorized"),
            "{channel}: {body}"
        );
        assert_eq!(
            message(&body),
            format!(
                "channel `{channel}` needs an access token: send {{\"op\":\"auth\",\"token\":\"<access token>\"}} first"
            )
        );
    }
    let (status, body) = history_http(private, "inner.x", None).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    assert_eq!(
        message(&body),
        "channel `inner.x` (class \"inner.*\") does not allow history from this listener"
    );

    // The publisher: its own channel (authenticated class) yes, the others no.
    let (status, body) = history_http(private, "prices.eu", Some(&prices)).await;
    assert_eq!(status, 200, "{body}");
    for channel in ["open.x", "secure.x", "orders.x"] {
        let (status, body) = history_http(private, channel, Some(&prices)).await;
        assert_eq!(
            (status, code(&body)),
            (403, "forbidden"),
            "{channel}: {body}"
        );
    }
    let (status, body) = history_http(private, "inner.x", Some(&prices)).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
}

/// Listings show exactly the channels the same rule lets the caller read.
#[tokio::test]
async fn listings_show_only_what_the_caller_may_read() {
    let prices = token::generate_token();
    let srv = server(&prices).await;
    let private = srv.addr("private");
    assert_eq!(listed_http(private, None).await, ["open.x", "orders.x"]);
    assert_eq!(listed_http(private, Some(&prices)).await, ["prices.eu"]);
    // The mixed listener, anonymous over WebSocket: the same answer as over HTTP.
    let mut ws = v1(&srv.url("mixed")).await;
    let listed = call(&mut ws, r#"{"op":"channels"}"#).await;
    assert_eq!(names(&listed), ["open.x", "orders.x"]);
}

/// Subscribers over WebSocket, both dialects: the class's `subscribers` rule (a token granting
/// the channel) and `subscribe_from`, for subscribe and history alike.
#[tokio::test]
async fn subscribers_need_a_granting_token_and_a_listed_listener() {
    let prices = token::generate_token();
    let srv = server(&prices).await;

    let mut anon = v1(&srv.url("public")).await;
    let (sub, hist) = read_ws(&mut anon, "open.x").await;
    assert_eq!(
        (sub["ok"].clone(), hist["ok"].clone()),
        (json!(true), json!(true))
    );
    let (sub, hist) = read_ws(&mut anon, "inner.x").await;
    assert_eq!(
        (sub["ok"].clone(), hist["ok"].clone()),
        (json!(true), json!(true))
    );
    for channel in ["secure.x", "prices.eu"] {
        let (sub, hist) = read_ws(&mut anon, channel).await;
        assert_eq!(
            (code(&sub), code(&hist)),
            ("unauthorized", "unauthorized"),
            "{channel}"
        );
    }

    let mut sub_ws = v1(&srv.url("public")).await;
    let r = call(
        &mut sub_ws,
        &format!(
            r#"{{"op":"auth","token":"{}"}}"#,
            access_token(&["secure.*"])
        ),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let (sub, hist) = read_ws(&mut sub_ws, "secure.x").await;
    assert_eq!(
        (sub["ok"].clone(), hist["ok"].clone()),
        (json!(true), json!(true))
    );
    let (sub, hist) = read_ws(&mut sub_ws, "prices.eu").await;
    assert_eq!((code(&sub), code(&hist)), ("forbidden", "forbidden"));
    assert_eq!(
        message(&sub),
        "the access token does not grant channel `prices.eu`"
    );

    // `inner.*` may be read from `public` only: not from `mixed`, in either dialect.
    let mut mixed = v1(&srv.url("mixed")).await;
    let (sub, hist) = read_ws(&mut mixed, "inner.x").await;
    assert_eq!((code(&sub), code(&hist)), ("forbidden", "forbidden"));
    let mut old = legacy(&srv.url("mixed")).await;
    send(&mut old, r#"{"Subscribe": "inner.x"}"#).await;
    let refused = recv_json(&mut old).await;
    assert!(refused.get("Error").is_some(), "{refused}");
    let mut old = legacy(&srv.url("public")).await;
    send(&mut old, r#"{"Subscribe": "secure.x"}"#).await;
    let refused = recv_json(&mut old).await;
    assert!(refused.get("Error").is_some(), "{refused}");
}

/// Listeners that require identities: on a `publisher_auth` listener only publishers read, each
/// within its patterns; on a `subscriber_auth` listener a publisher's identity counts as
/// authenticated for its own channels, and a subscriber reads what its token grants.
#[tokio::test]
async fn listeners_that_require_identities_apply_the_same_rule() {
    let prices = token::generate_token();
    let toml = format!(
        "{}[listener.pubonly]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','Subscribe']\npublisher_auth = true\n\
         [listener.members]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\nsubscriber_auth = true\n",
        config(&prices)
    );
    let srv = TestServer::start(&toml).await;
    fill(&srv);

    // publisher_auth: nobody but publishers, over WebSocket and HTTP.
    let mut anon = v1(&srv.url("pubonly")).await;
    let r = call(&mut anon, r#"{"op":"subscribe","channel":"open.x"}"#).await;
    assert_eq!(code(&r), "unauthorized", "{r}");
    let (status, body) = history_http(srv.addr("pubonly"), "open.x", None).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "{body}");
    let mut publisher = v1(&srv.url("pubonly")).await;
    let r = call(
        &mut publisher,
        &format!(r#"{{"op":"auth","token":"{prices}"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let (sub, hist) = read_ws(&mut publisher, "prices.eu").await;
    assert_eq!(
        (sub["ok"].clone(), hist["ok"].clone()),
        (json!(true), json!(true))
    );
    let (sub, _) = read_ws(&mut publisher, "open.x").await;
    assert_eq!(code(&sub), "forbidden", "{sub}");
    let (status, body) = history_http(srv.addr("pubonly"), "orders.x", Some(&prices)).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");

    // subscriber_auth: every channel needs an identity that covers it.
    let mut publisher = v1(&srv.url("members")).await;
    let r = call(
        &mut publisher,
        &format!(r#"{{"op":"auth","token":"{prices}"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let (sub, _) = read_ws(&mut publisher, "prices.eu").await;
    assert_eq!(sub["ok"], true, "{sub}");
    let (sub, _) = read_ws(&mut publisher, "open.x").await;
    assert_eq!(code(&sub), "forbidden", "{sub}");
    let mut member = v1(&srv.url("members")).await;
    let r = call(
        &mut member,
        &format!(r#"{{"op":"auth","token":"{}"}}"#, access_token(&["open.*"])),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let (sub, _) = read_ws(&mut member, "open.x").await;
    assert_eq!(sub["ok"], true, "{sub}");
    let (sub, _) = read_ws(&mut member, "orders.x").await;
    assert_eq!(code(&sub), "forbidden", "{sub}");
    let mut anon = v1(&srv.url("members")).await;
    let r = call(&mut anon, r#"{"op":"subscribe","channel":"open.x"}"#).await;
    assert_eq!(code(&r), "unauthorized", "{r}");
}
