//! The server side of what docs/openapi.yaml promises, where the contract test
//! (scripts/contract/run.sh, Schemathesis) found the two disagreeing: create options are
//! integers as JSON Schema counts them (`86961.0` is one) and never `null`; a history read takes
//! exactly one start form, and every other combination is refused with the documented 400;
//! `nonce` is accepted where the document lists it. Real sockets.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::Value;

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn put(addr: SocketAddr, name: &str, body: &str) -> (u16, Value) {
    let (status, _, json) = http(
        addr,
        "PUT",
        &format!("/v1/channels/{name}"),
        &[("Content-Type", "application/json")],
        body,
    )
    .await;
    (status, json)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, _, json) = http(addr, "GET", path, &[], "").await;
    (status, json)
}

const OPTIONS_FORM: &str = "`options` must be an object with any of `backlog_messages`, \
`backlog_seconds`, `max_message_bytes`, `max_subscribers` (integers >= 0) and `replies` (true or \
false)";

#[tokio::test]
async fn create_options_are_json_schema_integers_and_never_null() {
    let srv = TestServer::default().await;
    let private = srv.addr("private");

    // An integral number is an integer, whatever its notation.
    let (status, body) = put(
        private,
        "floats",
        r#"{"max_subscribers": 86961.0, "backlog_messages": 5e1, "max_message_bytes": 100.0}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let s = srv.hub.settings(&"floats".parse().unwrap()).unwrap();
    assert_eq!(
        (s.max_subscribers, s.backlog_messages, s.max_message_bytes),
        (Some(86961), 50, 100)
    );

    // A key given must hold a value of its type: `null`, fractions and numbers past u64 are
    // refused, and nothing is created.
    for (i, options) in [
        r#"{"replies": null}"#,
        r#"{"backlog_messages": null}"#,
        r#"{"max_subscribers": null, "replies": false}"#,
        r#"{"max_subscribers": 86961.5}"#,
        r#"{"backlog_messages": 18446744073709551616}"#,
        r#"{"backlog_messages": -1.0}"#,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("refused{i}");
        let (status, body) = put(private, &name, options).await;
        assert_eq!(
            (status, code(&body)),
            (400, "bad_request"),
            "{options}: {body}"
        );
        assert_eq!(body["error"]["message"], OPTIONS_FORM);
        assert!(!srv.hub.exists(&name.parse().unwrap()), "{options}");
    }

    // The same rules over WebSocket, which shares the decoder.
    let mut ws = v1(&srv.url("private")).await;
    let r = call(
        &mut ws,
        r#"{"op":"create","channel":"ws.floats","options":{"max_subscribers":3.0}}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(
        &mut ws,
        r#"{"op":"create","channel":"ws.null","options":{"replies":null}}"#,
    )
    .await;
    assert_eq!(code(&r), "bad_request", "{r}");
}

#[tokio::test]
async fn history_takes_exactly_one_start_form() {
    let srv = TestServer::default().await;
    let private = srv.addr("private");
    let (status, body) = put(private, "h", "").await;
    assert_eq!(status, 201, "{body}");
    let epoch = body["epoch"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        let (status, _, body) = http(
            private,
            "POST",
            "/v1/channels/h/messages",
            &[],
            &n.to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    // Every documented form, alone and with `limit` and `nonce`.
    for (query, first) in [
        ("", Some(1)),
        ("start=oldest", Some(1)),
        ("start=new", None),
        ("last=2", Some(2)),
        (&*format!("epoch={epoch}&offset=1"), Some(2)),
    ] {
        for extra in ["", "limit=5", "nonce=x", "limit=1&nonce=y"] {
            let q = [query, extra]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("&");
            let (status, body) = get(private, &format!("/v1/channels/h/messages?{q}")).await;
            assert_eq!(status, 200, "{q}: {body}");
            assert_eq!(body["messages"][0]["offset"].as_u64(), first, "{q}: {body}");
        }
    }

    // Every other combination: the documented 400.
    for query in [
        format!("last=1&epoch={epoch}&offset=2"),
        "start=oldest&last=1".to_owned(),
        "start=new&offset=1".to_owned(),
        format!("start=oldest&epoch={epoch}&offset=0"),
        format!("epoch={epoch}"),
        "offset=1".to_owned(),
        "last=0".to_owned(),
        "start=latest".to_owned(),
    ] {
        let (status, body) = get(private, &format!("/v1/channels/h/messages?{query}")).await;
        assert_eq!(
            (status, code(&body)),
            (400, "bad_request"),
            "{query}: {body}"
        );
        assert_eq!(
            body["error"]["message"],
            "give `start=oldest`, `start=new`, `last=N` (N >= 1), or `epoch=E&offset=N`",
            "{query}"
        );
    }

    // The channel list takes `nonce` too.
    let (status, body) = get(private, "/v1/channels?nonce=z&limit=1").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn idempotency_keys_are_visible_ascii_and_spaces_only() {
    let srv = TestServer::start(&format!(
        "{}[channel.\"*\"]\nauto_create = true\n",
        two_listeners("")
    ))
    .await;
    let private = srv.addr("private");
    // A tab inside the key: refused (it used to pass as "visible ASCII").
    let (status, _, body) = http_raw(
        private,
        "POST /v1/channels/k/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Length: 1\r\nIdempotency-Key: a\tb\r\n\r\n1",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("`Idempotency-Key` must be visible ASCII"),
        "{body}"
    );
    // Spaces inside are part of the key; around it, HTTP strips them.
    for key in ["a b", " a b "] {
        let (status, _, body) = http(
            private,
            "POST",
            "/v1/channels/k/messages",
            &[("Idempotency-Key", key)],
            "1",
        )
        .await;
        assert_eq!(status, 200, "{key:?}: {body}");
        assert_eq!(
            body["duplicate"].as_bool().is_some(),
            key != "a b",
            "{key:?}: {body}"
        );
    }
}
