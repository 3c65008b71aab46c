//! Hot reload: a running server takes a new configuration (`Server::reloader`, and SIGHUP on the
//! real binary) while subscribers stay connected and receive every message.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tslm_auth::token;
use tslm_protocol::close;
use tslm_server::{Config, ReloadError};

struct Tokens {
    a: String,
    b: String,
}

fn tokens() -> Tokens {
    Tokens {
        a: token::generate_token(),
        b: token::generate_token(),
    }
}

/// A public listener, a private one that requires publishers, and `publishers` (TOML tables).
fn config(publishers: &str, extra: &str) -> String {
    format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n\
         publisher_auth = true\n\
         {publishers}\n{extra}\n"
    )
}

fn publisher(name: &str, tok: &str) -> String {
    format!(
        "[publisher.{name}]\ntoken_hashes = ['{}']\noperations = ['create', 'publish']\nchannels = ['orders.*']\n",
        token::hash_line(tok)
    )
}

fn parse(toml: &str) -> Config {
    Config::from_toml_str(toml, "test").unwrap()
}

async fn http_publish(s: &TestServer, tok: &str, channel: &str, data: &str) -> (u16, Value) {
    let auth = format!("Bearer {tok}");
    let (status, _, body) = http(
        s.addr("private"),
        "POST",
        &format!("/v1/channels/{channel}/messages"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        data,
    )
    .await;
    (status, body)
}

/// Reads deliveries of `channel` until `last`; asserts offsets 1..=last arrive once, in order.
async fn expect_offsets(ws: &mut Ws, channel: &str, last: u64) {
    let mut next = 1;
    while next <= last {
        let m = recv_json(ws).await;
        if m["event"] == "message" && m["channel"] == channel {
            assert_eq!(m["offset"], next, "{m}");
            next += 1;
        }
    }
}

#[tokio::test]
async fn a_publisher_key_added_and_removed_while_a_subscriber_receives_every_message() {
    let t = tokens();
    let s = TestServer::start(&config(&publisher("a", &t.a), "")).await;
    let mut sub = v1(&s.url("public")).await;
    let mut pa = v1(&s.url("private")).await;
    let r = call(&mut pa, &format!(r#"{{"op":"auth","token":"{}"}}"#, t.a)).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(&mut pa, r#"{"op":"create","channel":"orders.1"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(&mut sub, r#"{"op":"subscribe","channel":"orders.1"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    for i in 1..=3 {
        let r = call(
            &mut pa,
            &format!(r#"{{"op":"publish","channel":"orders.1","data":{i}}}"#),
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    // `b` cannot publish yet.
    assert_eq!(http_publish(&s, &t.b, "orders.1", "4").await.0, 401);

    // Reload: `a` removed, `b` added.
    let report = s
        .reloader
        .reload(parse(&config(&publisher("b", &t.b), "")))
        .await
        .unwrap();
    assert_eq!(report.updated, ["private", "public"]);
    assert!(report.added.is_empty() && report.removed.is_empty());

    // The connection authenticated as `a` is closed: its credential is gone.
    assert_eq!(
        recv_close(&mut pa).await,
        Some((close::CREDENTIAL_REVOKED, "credential revoked".into()))
    );
    assert_eq!(http_publish(&s, &t.a, "orders.1", "4").await.0, 401);
    let (status, body) = http_publish(&s, &t.b, "orders.1", "4").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offset"], 4);
    // The subscriber stayed connected and got every message once, in order.
    expect_offsets(&mut sub, "orders.1", 4).await;
    assert_eq!(s.stats().credential_revoked_closes, 1);
    s.shutdown().await;
}

#[tokio::test]
async fn an_unchanged_publisher_keeps_its_connection_and_a_changed_class_applies_at_once() {
    let t = tokens();
    let classes = |max: usize| format!("[channel.\"orders.*\"]\nmax_message_bytes = {max}\n");
    let s = TestServer::start(&config(&publisher("a", &t.a), &classes(1000))).await;
    let mut pa = v1(&s.url("private")).await;
    let r = call(&mut pa, &format!(r#"{{"op":"auth","token":"{}"}}"#, t.a)).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(&mut pa, r#"{"op":"create","channel":"orders.2"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let big = format!(
        r#"{{"op":"publish","channel":"orders.3","data":"{}"}}"#,
        "x".repeat(200)
    );
    s.reloader
        .reload(parse(&config(&publisher("a", &t.a), &classes(100))))
        .await
        .unwrap();
    // Same connection, still authenticated; a new channel of the class takes the new limit.
    let r = call(&mut pa, r#"{"op":"create","channel":"orders.3"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(&mut pa, &big).await;
    assert_eq!(r["error"]["code"], "too_large", "{r}");
    let r = call(&mut pa, r#"{"op":"publish","channel":"orders.3","data":1}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    s.shutdown().await;
}

#[tokio::test]
async fn listeners_are_added_and_removed_and_their_sessions_closed() {
    let t = tokens();
    let extra =
        "[listener.extra]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n";
    let s = TestServer::start(&config(&publisher("a", &t.a), "")).await;
    let mut sub = v1(&s.url("public")).await;
    let report = s
        .reloader
        .reload(parse(&config(&publisher("a", &t.a), extra)))
        .await
        .unwrap();
    assert_eq!(report.added, ["extra"]);
    let at = report
        .addrs
        .iter()
        .find(|b| b.listener == "extra")
        .unwrap()
        .addr;
    let mut on_extra = v1(&format!("ws://{at}/")).await;
    assert_eq!(call(&mut on_extra, r#"{"op":"ping"}"#).await["ok"], true);

    let report = s
        .reloader
        .reload(parse(&config(&publisher("a", &t.a), "")))
        .await
        .unwrap();
    assert_eq!(report.removed, ["extra"]);
    assert_eq!(
        recv_close(&mut on_extra).await.map(|c| c.0),
        Some(close::GOING_AWAY)
    );
    // Its address is closed; the other listeners' sessions go on.
    let refused = tokio::net::TcpStream::connect(at).await;
    assert!(refused.is_err(), "{at} still accepts");
    assert_eq!(call(&mut sub, r#"{"op":"ping"}"#).await["ok"], true);
    s.shutdown().await;
}

#[tokio::test]
async fn a_reload_that_cannot_apply_changes_nothing() {
    let t = tokens();
    let s = TestServer::start(&config(&publisher("a", &t.a), "")).await;
    // A table sized at startup.
    let e = s
        .reloader
        .reload(parse(&config(
            &publisher("b", &t.b),
            "[server]\nmax_channels = 7\n",
        )))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ReloadError::NeedsRestart("max_channels")),
        "{e}"
    );
    assert!(e.to_string().contains("`max_channels`"), "{e}");
    // An address that cannot be bound (taken by the public listener itself).
    let taken = s.addr("public");
    let clash = format!(
        "[listener.extra]\nip='{}'\nport={}\ndefault_endpoint_permissions=['Subscribe']\n",
        taken.ip(),
        taken.port()
    );
    let e = s
        .reloader
        .reload(parse(&config(&publisher("b", &t.b), &clash)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot bind"), "{e}");
    // Still the first configuration: `a` publishes, `b` does not.
    let mut pa = v1(&s.url("private")).await;
    let r = call(&mut pa, &format!(r#"{{"op":"auth","token":"{}"}}"#, t.a)).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(http_publish(&s, &t.b, "orders.9", "1").await.0, 401);
    s.shutdown().await;
}

#[tokio::test]
async fn a_subscription_the_new_configuration_forbids_ends_with_a_closed_event() {
    let t = tokens();
    let open = "[channel.\"news.*\"]\nauto_create = true\n";
    let closed = "[channel.\"news.*\"]\nauto_create = true\nsubscribe_from = ['private']\n";
    let s = TestServer::start(&config(&publisher("a", &t.a), open)).await;
    let mut sub = v1(&s.url("public")).await;
    s.hub
        .create(&tslm_protocol::ChannelName::new("news.1").unwrap());
    let r = call(&mut sub, r#"{"op":"subscribe","channel":"news.1"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let reloaded = s
        .reloader
        .reload(parse(&config(&publisher("a", &t.a), closed)))
        .await;
    reloaded.unwrap();
    let ev = recv_json(&mut sub).await;
    assert_eq!(ev["event"], "closed", "{ev}");
    assert_eq!(ev["channel"], "news.1");
    assert_eq!(ev["reason"], "forbidden");
    // The connection itself stays.
    assert_eq!(call(&mut sub, r#"{"op":"ping"}"#).await["ok"], true);
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.shutdown().await;
}

/// The real binary: SIGHUP loads the file again. A listener added by it is named in the ready
/// file; a file that does not validate is refused with the message a start would print, and the
/// running configuration goes on serving.
#[tokio::test]
async fn sighup_reloads_the_file_and_refuses_a_bad_one() {
    const BIN: &str = env!("CARGO_BIN_EXE_tslm");
    let dir = tempfile::tempdir().unwrap();
    let (file, ready, log) = (
        dir.path().join("tslm.toml"),
        dir.path().join("ready.json"),
        dir.path().join("log.txt"),
    );
    let base = "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
                [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n";
    std::fs::write(&file, base).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let read_ready = |want: &str| {
        let deadline = std::time::Instant::now() + T;
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && text.contains(want)
            {
                return serde_json::from_str::<Value>(&text).unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ready file never named {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let doc = read_ready("private");
    let addr = |doc: &Value, name: &str| -> std::net::SocketAddr {
        doc["listeners"][name][0].as_str().unwrap().parse().unwrap()
    };
    let (public, private) = (addr(&doc, "public"), addr(&doc, "private"));
    let mut sub = v1(&format!("ws://{public}/")).await;
    let (status, _, _) = http(private, "PUT", "/v1/channels/c", &[], "").await;
    assert_eq!(status, 201);
    assert_eq!(
        call(&mut sub, r#"{"op":"subscribe","channel":"c"}"#).await["ok"],
        true
    );
    let hup = || {
        let st = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(st.success());
    };

    // A listener added by SIGHUP.
    std::fs::write(
        &file,
        format!("{base}[listener.extra]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n"),
    )
    .unwrap();
    hup();
    let doc = read_ready("extra");
    let mut on_extra = v1(&format!("ws://{}/", addr(&doc, "extra"))).await;
    assert_eq!(call(&mut on_extra, r#"{"op":"ping"}"#).await["ok"], true);

    // A file that does not validate: refused, the message names the key, nothing changes.
    std::fs::write(&file, format!("{base}[server]\nno_such_key = 1\n")).unwrap();
    hup();
    let deadline = std::time::Instant::now() + T;
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("reload refused") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refusal logged: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(text.contains("no_such_key"), "{text}");
    assert_eq!(call(&mut on_extra, r#"{"op":"ping"}"#).await["ok"], true);
    let (status, _, _) = http(private, "POST", "/v1/channels/c/messages", &[], "1").await;
    assert_eq!(status, 200);
    let m = recv_json(&mut sub).await;
    assert_eq!(
        (m["event"].as_str(), m["offset"].as_u64()),
        (Some("message"), Some(1)),
        "{m}"
    );

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

const SECRET_A: &[u8] = b"reload-test-secret-a-of-32-bytes-or-more";
const SECRET_B: &[u8] = b"reload-test-secret-b-of-32-bytes-or-more";

/// A shared-secret issuer whose tokens `secure.*` channels need.
fn issuer_config(secret: &[u8]) -> String {
    use base64::Engine;
    config(
        &publisher("a", "unused-publisher-token"),
        &format!(
            "[issuer.shared]\nissuer = 'reload-issuer'\naudiences = ['tslm']\n\
             channels_claim = 'tslm_channels'\nsecret = '{}'\n\
             [channel.\"secure.*\"]\nsubscribers = 'authenticated'\n",
            base64::engine::general_purpose::STANDARD.encode(secret)
        ),
    )
}

fn hs256(secret: &[u8]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": "reload-issuer", "aud": "tslm", "sub": "alice",
        "exp": now + 600, "iat": now, "tslm_channels": ["secure.*"],
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// Rotating an issuer's secret (same name, same length) takes effect: sessions authenticated
/// with the old secret's tokens are closed with 4006 and the old tokens are refused; new ones
/// are accepted.
#[tokio::test]
async fn a_rotated_issuer_secret_revokes_its_sessions_and_tokens() {
    let s = TestServer::start(&issuer_config(SECRET_A)).await;
    let mut sub = v1(&s.url("public")).await;
    let r = call(
        &mut sub,
        &format!(r#"{{"op":"auth","token":"{}"}}"#, hs256(SECRET_A)),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    s.reloader
        .reload(parse(&issuer_config(SECRET_B)))
        .await
        .unwrap();
    assert_eq!(
        recv_close(&mut sub).await,
        Some((close::CREDENTIAL_REVOKED, "credential revoked".into()))
    );
    let mut old = v1(&s.url("public")).await;
    let r = call(
        &mut old,
        &format!(r#"{{"op":"auth","token":"{}"}}"#, hs256(SECRET_A)),
    )
    .await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    let mut new = v1(&s.url("public")).await;
    let r = call(
        &mut new,
        &format!(r#"{{"op":"auth","token":"{}"}}"#, hs256(SECRET_B)),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    // An unchanged issuer keeps its sessions.
    s.reloader
        .reload(parse(&issuer_config(SECRET_B)))
        .await
        .unwrap();
    assert_eq!(call(&mut new, r#"{"op":"ping"}"#).await["ok"], true);
    s.shutdown().await;
}

/// A keep-alive HTTP connection opened before a reload is closed after its current request, so
/// the client's next request is judged by the new configuration.
#[tokio::test]
async fn keep_alive_http_connections_close_on_reload() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = tokens();
    let s = TestServer::start(&config(&publisher("a", &t.a), "")).await;
    let mut conn = tokio::net::TcpStream::connect(s.addr("private"))
        .await
        .unwrap();
    let req = format!(
        "PUT /v1/channels/orders.k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
        t.a
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(T, conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 201"));
    s.reloader
        .reload(parse(&config(&publisher("b", &t.b), "")))
        .await
        .unwrap();
    // The server closes the idle keep-alive connection: the next read sees the end.
    let n = tokio::time::timeout(T, conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n]));
    s.shutdown().await;
}

/// `max_connections` lowered below the connections open, then raised: the open ones are not
/// closed, new ones are refused (503) until the count is under the new limit, and the limit
/// never ends above what the configuration says.
#[tokio::test]
async fn max_connections_follows_the_configuration_both_ways() {
    let t = tokens();
    let with = |max: usize| {
        config(
            &publisher("a", &t.a),
            &format!(
                "[listener.extra]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\nmax_connections = {max}\n{NO_IP_LIMITS}\n"
            ),
        )
    };
    let s = TestServer::start(&with(4)).await;
    let report = s.reloader.reload(parse(&with(4))).await.unwrap();
    let at = report
        .addrs
        .iter()
        .find(|b| b.listener == "extra")
        .unwrap()
        .addr;
    let url = format!("ws://{at}/");
    let status = |addr| async move {
        http_raw(
            addr,
            "GET /v1/channels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
        .0
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(v1(&url).await);
    }
    // Lowered to 1 with 3 open: nothing is closed, and nothing new gets in.
    s.reloader.reload(parse(&with(1))).await.unwrap();
    for ws in &mut open {
        assert_eq!(call(ws, r#"{"op":"ping"}"#).await["ok"], true);
    }
    assert_eq!(status(at).await, 503);
    // Two close: still at the limit (1 open), so still refused.
    for mut ws in open.drain(1..) {
        ws.close(None).await.unwrap();
        let _ = recv_close(&mut ws).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(at).await, 503);
    // Raised to 3: two more fit next to the one open, the third is refused.
    s.reloader.reload(parse(&with(3))).await.unwrap();
    open.push(v1(&url).await);
    open.push(v1(&url).await);
    assert_eq!(status(at).await, 503);
    s.shutdown().await;
}
