//! `GET /metrics` and `GET /admin` over real sockets: the figures after real traffic (a WebSocket
//! subscriber, publishes over HTTP, refused authentications), the exposition checked by
//! Prometheus's own parser (`promtool check metrics`, Debian's `prometheus` package, installed by
//! scripts/test.sh), and every refusal of the admin routes.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const OPS_TOKEN: &str = "ops-token-1";

fn config() -> String {
    format!(
        "[listener.public]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n{NO_IP_LIMITS}\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n{NO_IP_LIMITS}\n\
         [listener.guarded]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\nauth_tokens=['sub-token']\n{NO_IP_LIMITS}\n\
         [listener.ops]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Admin']\nauth_tokens=['{OPS_TOKEN}']\n{NO_IP_LIMITS}\n\
         [listener.ops-open]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Admin']\nrate_limit_per_second=1\n{NO_IP_LIMITS}\n"
    )
}

/// `GET path` with the ops token; returns (status, head, body).
async fn get(
    srv: &TestServer,
    listener: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    let addr = srv.addr(listener);
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n"),
    )
    .await
}

async fn scrape(srv: &TestServer) -> String {
    let (status, head, body) = get(srv, "ops", "/metrics", Some(OPS_TOKEN)).await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body
}

/// The value of the one series `series` (name and labels, as written) in an exposition.
fn value(text: &str, series: &str) -> f64 {
    let found: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(s, _)| *s == series)
        .map(|(_, v)| v.parse().unwrap())
        .collect();
    assert_eq!(found.len(), 1, "series `{series}` once in:\n{text}");
    found[0]
}

/// Runs `promtool check metrics` on `text`; fails (never skips) when promtool is missing.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is needed (Debian package `prometheus`; scripts/test.sh installs it): {e}"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition ({}):\n{}{}\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn metrics_count_real_traffic_exactly_and_parse_with_promtool() {
    let srv = TestServer::start(&config()).await;
    let private = srv.addr("private");
    // 1: create a channel over HTTP.
    let (status, _, r) = http(private, "PUT", "/v1/channels/room.1", &[], "").await;
    assert_eq!(status, 201, "{r}");
    // 2: a WebSocket subscriber.
    let mut ws = v1(&srv.url("public")).await;
    let r = call(&mut ws, r#"{"op":"subscribe","channel":"room.1","id":1}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    // 3, 4, 5: two publishes, then the second again under the same Idempotency-Key (a dedupe hit).
    let ct = ("Content-Type", "application/json");
    for (body, key) in [
        ("{\"n\":1}", "k-1"),
        ("{\"n\":2}", "k-2"),
        ("{\"n\":2}", "k-2"),
    ] {
        let (status, _, r) = http(
            private,
            "POST",
            "/v1/channels/room.1/messages",
            &[ct, ("Idempotency-Key", key)],
            body,
        )
        .await;
        assert_eq!(status, 200, "{r}");
    }
    for n in 1..=2 {
        let e = recv_json(&mut ws).await;
        assert_eq!(e["offset"], n, "{e}");
    }
    assert_silent(&mut ws).await;
    // Two refused publishes: over HTTP to a channel that does not exist (404), and a v1
    // `publish` on the subscribe-only listener (forbidden).
    let (status, _, r) = http(private, "POST", "/v1/channels/nope/messages", &[ct], "1").await;
    assert_eq!(status, 404, "{r}");
    let r = call(
        &mut ws,
        r#"{"op":"publish","channel":"room.1","data":1,"id":2}"#,
    )
    .await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    // And an original-protocol `NotifyChannel` to a channel that does not exist.
    let mut old = legacy(&srv.url("private")).await;
    send(&mut old, r#"{"NotifyChannel": ["gone", {"Text": "x"}]}"#).await;
    assert_eq!(
        recv(&mut old).await,
        r#"{"Error":"Channel not found: gone"}"#
    );
    drop(old);
    // 6: a scrape without the token (401, an HTTP authentication refusal).
    let (status, _, body) = get(&srv, "ops", "/metrics", None).await;
    assert_eq!(status, 401, "{body}");
    // 7: a WebSocket handshake without its listener's token (401, a handshake refusal).
    let to = srv.addr("guarded");
    let (status, _, _) = http_raw(
        to,
        &format!(
            "GET / HTTP/1.1\r\nHost: {to}\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 401);

    // 8: the scrape.
    let text = scrape(&srv).await;
    promtool_check(&text);
    let version = env!("CARGO_PKG_VERSION");
    for (series, want) in [
        (format!("tslm_build_info{{version=\"{version}\"}}"), 1.0),
        ("tslm_publishes_total".into(), 2.0),
        ("tslm_dedupe_hits_total".into(), 1.0),
        ("tslm_deliveries_total".into(), 2.0),
        ("tslm_channels".into(), 1.0),
        ("tslm_subscriptions".into(), 1.0),
        ("tslm_sessions_opened_total{dialect=\"v1\"}".into(), 1.0),
        ("tslm_sessions_opened_total{dialect=\"legacy\"}".into(), 1.0),
        ("tslm_connections_accepted_total".into(), 10.0),
        (
            "tslm_publishes_refused_total{code=\"not_found\"}".into(),
            2.0,
        ),
        (
            "tslm_publishes_refused_total{code=\"forbidden\"}".into(),
            1.0,
        ),
        (
            "tslm_publishes_refused_total{code=\"too_large\"}".into(),
            0.0,
        ),
        ("tslm_auth_refusals_total{kind=\"http\"}".into(), 1.0),
        ("tslm_auth_refusals_total{kind=\"handshake\"}".into(), 1.0),
        ("tslm_auth_refusals_total{kind=\"command\"}".into(), 0.0),
        ("tslm_auth_refusals_total{kind=\"over_budget\"}".into(), 0.0),
        (
            "tslm_connections_refused_total{reason=\"over_capacity\"}".into(),
            0.0,
        ),
        (
            "tslm_messages_dropped_total{policy=\"drop_oldest\"}".into(),
            0.0,
        ),
        ("tslm_resumes_total{outcome=\"recovered\"}".into(), 0.0),
        (
            "tslm_sessions_closed_by_server_total{code=\"4000\"}".into(),
            0.0,
        ),
        ("tslm_msg_ids".into(), 2.0),
        // The subscriber is the public listener's only connection.
        ("tslm_listener_connections{listener=\"public\"}".into(), 1.0),
        (
            "tslm_listener_max_connections{listener=\"public\"}".into(),
            100000.0,
        ),
    ] {
        assert_eq!(value(&text, &series), want, "{series} in:\n{text}");
    }
    assert!(value(&text, "tslm_backlog_bytes") > 0.0, "{text}");
    assert!(
        value(&text, "tslm_process_start_time_seconds") > 1.6e9,
        "{text}"
    );
    // Never a channel name, an identity or an address in a label.
    assert!(
        !text.contains("room.1") && !text.contains("127.0.0.1"),
        "{text}"
    );
    // The figures move with the next publish, counted once.
    let (status, _, _) = http(private, "POST", "/v1/channels/room.1/messages", &[ct], "3").await;
    assert_eq!(status, 200);
    assert_eq!(recv_json(&mut ws).await["offset"], 3);
    let text = scrape(&srv).await;
    assert_eq!(value(&text, "tslm_publishes_total"), 3.0);
    assert_eq!(value(&text, "tslm_deliveries_total"), 3.0);
    // The subscriber leaves: its session closes normally (not a close by the server).
    drop(ws);
    srv.wait_for("the session to end", |s| s.stats().sessions == 0)
        .await;
    let text = scrape(&srv).await;
    assert_eq!(value(&text, "tslm_sessions"), 0.0);
    assert_eq!(
        value(&text, "tslm_sessions_opened_total{dialect=\"v1\"}"),
        1.0
    );
    promtool_check(&text);
}

#[tokio::test]
async fn admin_routes_are_not_found_on_listeners_without_admin() {
    let srv = TestServer::start(&config()).await;
    for listener in ["public", "private", "guarded"] {
        for path in ["/metrics", "/admin", "/admin?after=x"] {
            for token in [None, Some(OPS_TOKEN), Some("sub-token")] {
                let (status, _, body) = get(&srv, listener, path, token).await;
                assert_eq!(status, 404, "{listener} {path}: {body}");
                assert!(body.contains("not_found"), "{body}");
                assert!(!body.contains("tslm_"), "{body}");
            }
        }
        // Other methods too: nothing says the routes exist.
        let (status, _, r) = http(srv.addr(listener), "POST", "/metrics", &[], "").await;
        assert_eq!(status, 404, "{listener}: {r}");
    }
    // WebSocket clients may still connect on these paths (any path serves them).
    let mut ws = v1(&format!("ws://{}/metrics", srv.addr("public"))).await;
    assert_eq!(call(&mut ws, r#"{"op":"ping","id":1}"#).await["ok"], true);
}

#[tokio::test]
async fn admin_routes_need_the_listeners_token() {
    let srv = TestServer::start(&config()).await;
    for path in ["/metrics", "/admin"] {
        let (status, head, body) = get(&srv, "ops", path, None).await;
        assert_eq!(status, 401, "{body}");
        assert!(
            head.contains("www-authenticate: Bearer") || head.contains("WWW-Authenticate: Bearer"),
            "{head}"
        );
        assert!(body.contains("unauthorized"), "{body}");
        let (status, _, body) = get(&srv, "ops", path, Some("wrong-token")).await;
        assert_eq!(status, 401, "{body}");
        let (status, _, body) = get(&srv, "ops", path, Some(OPS_TOKEN)).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(srv.stats().auth_refusals_http, 4);
    // With the token, only GET (and HEAD) are answered.
    let (status, _, r) = http(
        srv.addr("ops"),
        "POST",
        "/metrics",
        &[("Authorization", &format!("Bearer {OPS_TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(status, 405, "{r}");
    assert_eq!(r["error"]["code"], "method_not_allowed", "{r}");
    // Without the token, a POST is refused first.
    let (status, _, _) = http(srv.addr("ops"), "POST", "/admin", &[], "").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn admin_page_refuses_a_bad_query() {
    let srv = TestServer::start(&config()).await;
    for path in ["/admin?after=bad%20name", "/admin?page=2", "/admin?after="] {
        let (status, _, body) = get(&srv, "ops", path, Some(OPS_TOKEN)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("bad_request"), "{path}: {body}");
    }
}

#[tokio::test]
async fn admin_routes_obey_the_listeners_command_rate() {
    let srv = TestServer::start(&config()).await;
    let addr = srv.addr("ops-open");
    // Five requests on one connection to a listener allowing one command per second (bursts
    // of one): the bucket cannot refill four tokens before they are all read.
    let one = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let last = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let (status, _, rest) = http_raw(addr, &format!("{}{last}", one.repeat(4))).await;
    assert_eq!(status, 200);
    assert!(rest.contains("HTTP/1.1 429"), "{rest}");
    assert!(rest.contains("rate_limited"), "{rest}");
}

#[tokio::test]
async fn admin_page_shows_the_node_its_listeners_and_channels_paged() {
    let srv = TestServer::start(&config()).await;
    let private = srv.addr("private");
    // 51 channels: one more than a page.
    for i in 0..51 {
        let (status, _, r) =
            http(private, "PUT", &format!("/v1/channels/ch.{i:02}"), &[], "").await;
        assert_eq!(status, 201, "{r}");
    }
    let (status, _, _) = http(
        private,
        "POST",
        "/v1/channels/ch.00/messages",
        &[("Content-Type", "application/json")],
        "\"hello\"",
    )
    .await;
    assert_eq!(status, 200);
    let mut ws = v1(&srv.url("public")).await;
    assert_eq!(
        call(&mut ws, r#"{"op":"subscribe","channel":"ch.00","id":1}"#).await["ok"],
        true
    );
    let (status, head, page) = get(&srv, "ops", "/admin", Some(OPS_TOKEN)).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(
        page.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
        "{page}"
    );
    assert!(!page.contains("<script"), "{page}");
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
    for l in ["public", "private", "guarded", "ops", "ops-open"] {
        assert!(page.contains(&format!("<td>{l}</td>")), "{l} in {page}");
        assert!(page.contains(&srv.addr(l).to_string()), "{l} in {page}");
    }
    assert!(page.contains("<td>Admin</td>"), "{page}");
    assert!(
        page.contains("<td>CreateChannel,NotifyChannel</td>"),
        "{page}"
    );
    // The first page: ch.00 (1 subscriber, head offset 1, 1 message) to ch.49, and a link on.
    assert!(
        page.contains(
            "<tr><td>ch.00</td><td class=\"n\">1</td><td class=\"n\">1</td><td class=\"n\">1</td>"
        ),
        "{page}"
    );
    assert!(page.contains("<td>ch.49</td>"), "{page}");
    assert!(!page.contains("<td>ch.50</td>"), "{page}");
    assert!(page.contains("href=\"/admin?after=ch.49\""), "{page}");
    assert!(
        page.contains("<tr><th>channels</th><td class=\"n\">51</td></tr>"),
        "{page}"
    );
    assert!(
        page.contains("<tr><th>WebSocket sessions</th><td class=\"n\">1</td></tr>"),
        "{page}"
    );
    // The second page: ch.50 alone, no link on.
    let (status, _, page) = get(&srv, "ops", "/admin?after=ch.49", Some(OPS_TOKEN)).await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("<td>ch.50</td>") && !page.contains("<td>ch.49</td>"),
        "{page}"
    );
    assert!(!page.contains("id=\"next\""), "{page}");
    assert!(page.contains("href=\"/admin\""), "{page}");
}

#[tokio::test]
async fn admin_listeners_refuse_cross_site_requests_and_answer_head() {
    let srv = TestServer::start(&config()).await;
    let addr = srv.addr("ops");
    let auth = format!("Authorization: Bearer {OPS_TOKEN}\r\n");
    // A web page's request (it carries `Origin`) is refused before the route: 403.
    for path in ["/metrics", "/admin"] {
        let (status, _, body) = http_raw(
            addr,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n{auth}Connection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.contains("forbidden") && !body.contains("tslm_"),
            "{body}"
        );
    }
    // HEAD is answered like GET, without a body.
    let (status, head, body) = http_raw(
        addr,
        &format!("HEAD /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(body.is_empty(), "{body}");
}

/// A v1 subscriber whose socket receives into a 4 KiB buffer: once that and the server's send
/// buffer are full, its outbound queue fills.
async fn tight_subscriber(addr: std::net::SocketAddr) -> Ws {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tslm.v1"),
    );
    let (ws, _) =
        tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    ws
}

/// Publishes `n` messages of about 1 KiB over WebSocket, as fast as the connection goes;
/// returns when every publish was acknowledged.
async fn flood(url: &str, channel: &str, n: u64) {
    let (mut tx, mut rx) = v1(url).await.split();
    let pad = "x".repeat(1000);
    let channel = channel.to_owned();
    let writer = tokio::spawn(async move {
        for i in 1..=n {
            let req = format!(
                r#"{{"op":"publish","channel":"{channel}","data":{{"n":{i},"pad":"{pad}"}}}}"#
            );
            tx.send(Message::Text(Utf8Bytes::from(req))).await.unwrap();
        }
        tx
    });
    let mut acked = 0;
    while acked < n {
        if let Message::Text(t) = tokio::time::timeout(T, rx.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["ok"], true, "{v}");
            acked += 1;
        }
    }
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn messages_dropped_under_drop_oldest_are_counted_as_the_subscriber_saw_them() {
    const FLOOD: u64 = 20_000;
    let srv = TestServer::start(&format!(
        "[listener.slow]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         channel_buffer_size = 32\noutbound_queue_bytes = 65536\n\
         [listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\n\
         [listener.ops]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Admin']\nauth_tokens=['{OPS_TOKEN}']\n\
         [channel.\"*\"]\nbacklog_messages = 100000\nslow_subscriber = \"drop_oldest\"\n"
    ))
    .await;
    let (status, _, r) = http(srv.addr("private"), "PUT", "/v1/channels/feed", &[], "").await;
    assert_eq!(status, 201, "{r}");
    let mut stalled = tight_subscriber(srv.addr("slow")).await;
    let r = call(
        &mut stalled,
        r#"{"op":"subscribe","channel":"feed","id":1}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    flood(&srv.url("private"), "feed", FLOOD).await;
    // Now read: every offset arrives once or is named by a gap event.
    let (mut next, mut received, mut dropped) = (1, 0u64, 0u64);
    while next <= FLOOD {
        let e = recv_json(&mut stalled).await;
        match e["event"].as_str().unwrap() {
            "message" => {
                assert_eq!(e["offset"], next, "{e}");
                received += 1;
                next += 1;
            }
            "gap" => {
                let to = e["to"].as_u64().unwrap();
                assert_eq!(e["from"], next, "{e}");
                dropped += to - next + 1;
                next = to + 1;
            }
            other => panic!("unexpected event {other}: {e}"),
        }
    }
    assert!(dropped > 0, "the stalled subscriber had messages dropped");
    assert_eq!(received + dropped, FLOOD);
    // The publisher's session has gone; the stalled subscriber's remains.
    srv.wait_for("the publisher's session to end", |s| {
        s.stats().sessions == 1
    })
    .await;
    let text = scrape(&srv).await;
    promtool_check(&text);
    assert_eq!(value(&text, "tslm_publishes_total"), FLOOD as f64);
    assert_eq!(
        value(&text, "tslm_messages_dropped_total{policy=\"drop_oldest\"}"),
        dropped as f64,
        "{text}"
    );
    assert_eq!(
        value(&text, "tslm_messages_dropped_total{policy=\"latest\"}"),
        0.0
    );
    // Dropped, not disconnected.
    assert_eq!(
        value(&text, "tslm_sessions_closed_by_server_total{code=\"4000\"}"),
        0.0
    );
    assert_eq!(value(&text, "tslm_sessions"), 1.0);
}

/// What the operations issue asks beyond the counters: subscribes, replies, lost offsets of
/// resumes, backlog messages and evictions, the publish duration histogram, the identity
/// providers' key age and the TLS certificates' expiry; and on the admin page, readiness and the
/// connected publishers by name.
#[tokio::test]
async fn latency_backlog_resume_key_age_and_certificate_metrics() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    // An identity provider's key set, served on loopback (one EC key).
    let jwks = {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"k1","alg":"ES256","use":"sig","x":"{}","y":"{}"}}]}}"#,
            URL_SAFE_NO_PAD.encode(&raw[1..33]),
            URL_SAFE_NO_PAD.encode(&raw[33..65])
        )
    };
    let idp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_addr = idp.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = idp.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
                jwks.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    let token = tslm_auth::token::generate_token();
    let srv = TestServer::start(&format!(
        "{}[listener.secure]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n\
         tls_cert = '{}'\ntls_key = '{}'\n\
         [publisher.feed]\ntoken_hashes = ['{}']\noperations = ['create', 'publish']\nchannels = ['*']\n\
         [channel.\"small.*\"]\nbacklog_messages = 2\nreplies = true\n\
         [issuer.shared]\nissuer = 'm'\naudiences = ['tslm']\nchannels_claim = 'c'\nsecret = '{}'\n\
         [issuer.remote]\nissuer = 'http://{idp_addr}'\njwks_url = 'http://{idp_addr}/jwks'\naudiences = ['tslm']\nchannels_claim = 'c'\n",
        config(),
        cert.display(),
        key.display(),
        tslm_auth::token::hash_line(&token),
        base64::engine::general_purpose::STANDARD.encode(b"metrics-test-secret-of-32-bytes-or-more"),
    ))
    .await;
    // A publisher connected by token, named on the admin page.
    let mut publisher = v1(&srv.url("private")).await;
    let r = call(
        &mut publisher,
        &format!(r#"{{"op":"auth","token":"{token}"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(&mut publisher, r#"{"op":"create","channel":"small.1"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let epoch = r["epoch"].as_str().unwrap().to_owned();
    for i in 1..=5 {
        let r = call(
            &mut publisher,
            &format!(r#"{{"op":"publish","channel":"small.1","data":{i}}}"#),
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    // A resume from offset 0: 1..=3 left the backlog of 2.
    let mut sub = v1(&srv.url("public")).await;
    let r = call(
        &mut sub,
        &format!(
            r#"{{"op":"subscribe","channel":"small.1","start":{{"epoch":"{epoch}","offset":0}}}}"#
        ),
    )
    .await;
    assert_eq!(r["lost"]["reason"], "expired", "{r}");
    // A reply from the subscriber reaches the publisher.
    send(
        &mut sub,
        r#"{"op":"reply","channel":"small.1","offset":5,"data":"ack","id":7}"#,
    )
    .await;
    let r = loop {
        let m = recv_json(&mut sub).await;
        if m["id"] == 7 {
            break m;
        }
        assert_eq!(m["event"], "message", "the replay before it: {m}");
    };
    assert_eq!(r["ok"], true, "{r}");

    let text = scrape(&srv).await;
    promtool_check(&text);
    assert_eq!(value(&text, "tslm_subscribes_total"), 1.0);
    assert_eq!(value(&text, "tslm_resume_lost_messages_total"), 3.0);
    assert_eq!(value(&text, "tslm_replies_total"), 1.0);
    assert_eq!(value(&text, "tslm_backlog_messages"), 2.0);
    assert_eq!(value(&text, "tslm_backlog_evictions_total"), 3.0);
    assert_eq!(value(&text, "tslm_publish_duration_seconds_count"), 5.0);
    assert!(value(&text, "tslm_publish_duration_seconds_sum") > 0.0);
    // The fetched key set's age; a shared-secret issuer fetches nothing and has none.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut text = text;
    while !text.contains("identity_provider_key_age_seconds{issuer=\"remote\"}") {
        assert!(std::time::Instant::now() < deadline, "no key age: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        text = scrape(&srv).await;
    }
    let age = value(
        &text,
        "tslm_identity_provider_key_age_seconds{issuer=\"remote\"}",
    );
    assert!((0.0..60.0).contains(&age), "{age}");
    assert!(
        !text.contains("identity_provider_key_age_seconds{issuer=\"shared\"}"),
        "{text}"
    );
    // The certificate's expiry, as rcgen made it (far in the future).
    let expiry = value(
        &text,
        "tslm_tls_certificate_expiry_timestamp_seconds{listener=\"secure\"}",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 86_400.0, "{expiry}");

    // A refusal, listed on the page among the recent ones.
    let (status, _, _) = get(&srv, "guarded", "/v1/channels", None).await;
    assert_eq!(status, 401);
    let (status, _, page) = get(&srv, "ops", "/admin", Some(OPS_TOKEN)).await;
    assert_eq!(status, 200);
    assert!(page.contains("<td id=\"ready\">yes</td>"), "{page}");
    let recent = page.split("<table id=\"recent\">").nth(1).unwrap();
    let recent = recent.split("</table>").next().unwrap();
    assert!(
        recent.contains("authentication refused (HTTP 401)"),
        "{recent}"
    );
    assert!(recent.contains("s ago</td>"), "{recent}");
    assert!(
        page.contains("<tr><td>feed</td><td class=\"n\">1</td></tr>"),
        "{page}"
    );
    drop(publisher);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, _, page) = get(&srv, "ops", "/admin", Some(OPS_TOKEN)).await;
        if !page.contains("<td>feed</td>") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the publisher stays listed: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    srv.shutdown().await;
}
