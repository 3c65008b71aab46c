//! Hostile HTTP clients: credential guessing on one keep-alive connection and across new
//! connections from one address (the failed-authentication budgets), and one busy signing
//! publisher against the process-wide replay memory. Real sockets on loopback; "another
//! address" is 127.0.0.2, which Linux routes to the loopback interface.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tslm_auth::keys::SecretKey;
use tslm_auth::{http_sig, token};
use tslm_server::{Config, Server};

/// One keep-alive HTTP/1.1 connection, read one response at a time.
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One response: status, head (lowercase), body as JSON.
struct Resp {
    status: u16,
    head: String,
    body: Value,
}

impl Resp {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then_some(v.trim())
        })
    }
}

impl KeepAlive {
    async fn connect(addr: SocketAddr) -> Self {
        Self::connect_from("127.0.0.1", addr).await
    }

    /// Connects from the local address `ip` (any of 127.0.0.0/8).
    async fn connect_from(ip: &str, addr: SocketAddr) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("{ip}:0").parse().unwrap())
            .expect("bind a loopback source address");
        Self {
            stream: socket.connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes()).await.unwrap();
        self.response().await
    }

    async fn response(&mut self) -> Resp {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            self.fill().await;
        };
        let head = String::from_utf8(self.buf[..end].to_vec())
            .unwrap()
            .to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while self.buf.len() < end + 4 + len {
            self.fill().await;
        }
        let body: Vec<u8> = self.buf.drain(..end + 4 + len).skip(end + 4).collect();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Resp { status, head, body }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(T, self.stream.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a complete response");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Whether the server closed the connection (EOF within the test timeout).
    async fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(T, self.stream.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Item 9: wrong listener tokens on one keep-alive connection. With the default budget
/// (`max_rejected_commands_per_second` = 10), the first ten are answered 401, the eleventh
/// 429 `rate_limited` with `Retry-After` and `Connection: close`, and the connection is closed.
#[tokio::test]
async fn guessing_tokens_on_one_keep_alive_connection_closes_it_after_the_budget() {
    let srv = TestServer::start(&format!(
        "{}auth_tokens = ['the-right-token']\n",
        two_listeners("")
    ))
    .await;
    let private = srv.addr("private");
    let mut conn = KeepAlive::connect(private).await;
    for i in 0..10 {
        let r = conn
            .request(
                "GET",
                "/v1/channels",
                &[("Authorization", &format!("Bearer guess-{i}"))],
            )
            .await;
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "guess {i}");
    }
    let r = conn
        .request(
            "GET",
            "/v1/channels",
            &[("Authorization", "Bearer guess-10")],
        )
        .await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{}", r.body);
    assert_eq!(
        r.body["error"]["message"],
        "too many failed authentications on this connection"
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(conn.closed_by_server().await, "closed after the 429");

    // The right token still works on a new connection from the same address (its budget of
    // 30 per minute is not spent by these 11).
    let mut conn = KeepAlive::connect(private).await;
    let r = conn
        .request(
            "GET",
            "/v1/channels",
            &[("Authorization", "Bearer the-right-token")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Item 9: guessing across new connections from one address. With the default budget
/// (`failed_auths_per_ip_per_minute` = 30), after 30 refused publisher tokens every request
/// from the address, right token and WebSocket handshakes included, is answered 429 with
/// `Retry-After` and the connection closed; another address is not affected.
#[tokio::test]
async fn guessing_from_new_connections_spends_the_address_budget_only() {
    let right = token::generate_token();
    let srv = TestServer::start(&format!(
        "{}publisher_auth = true\n[publisher.ops]\ntoken_hashes = ['{}']\nchannels = ['*']\n",
        two_listeners(""),
        token::hash_line(&right)
    ))
    .await;
    let private = srv.addr("private");
    let list = |t: &str| format!("Bearer {t}");
    // 15 connections, 2 wrong tokens each: within every connection's budget.
    for c in 0..15 {
        let mut conn = KeepAlive::connect(private).await;
        for g in 0..2 {
            let r = conn
                .request(
                    "GET",
                    "/v1/channels",
                    &[("Authorization", &list(&format!("g{c}-{g}")))],
                )
                .await;
            assert_eq!(
                (r.status, r.code()),
                (401, "unauthorized"),
                "{c}/{g}: {}",
                r.body
            );
        }
    }
    // The address's budget is spent: even the right token is refused, on a new connection.
    let mut conn = KeepAlive::connect(private).await;
    let r = conn
        .request("GET", "/v1/channels", &[("Authorization", &list(&right))])
        .await;
    assert_eq!((r.status, r.code()), (429, "rate_limited"), "{}", r.body);
    assert_eq!(
        r.body["error"]["message"],
        "too many failed authentications from your address; retry later"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(
        (1..=2).contains(&retry),
        "a token is back within 2 s: {retry}"
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert!(conn.closed_by_server().await);
    // WebSocket handshakes from the address too.
    let (status, _, _) = http_raw(
        private,
        "GET / HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(status, 429);

    // Another address: the right token works, a wrong one gets a plain 401.
    let mut other = KeepAlive::connect_from("127.0.0.2", private).await;
    let r = other
        .request("GET", "/v1/channels", &[("Authorization", &list(&right))])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = other
        .request("GET", "/v1/channels", &[("Authorization", "Bearer wrong")])
        .await;
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// A signed `POST` of `data` to `channel` as `publisher`, `nonce` making it unique.
async fn signed_post(
    addr: SocketAddr,
    key: &SecretKey,
    publisher: &str,
    channel: &str,
    nonce: u32,
) -> Resp {
    let path = format!("/v1/channels/{channel}/messages?nonce={nonce}");
    signed_post_path(addr, key, publisher, &path, unix_now()).await
}

async fn signed_post_path(
    addr: SocketAddr,
    key: &SecretKey,
    publisher: &str,
    path: &str,
    ts: i64,
) -> Resp {
    let sig = http_sig::sign_request(key, publisher, "POST", path, ts, b"1");
    let (status, head, body) = http(
        addr,
        "POST",
        path,
        &[
            ("TSLM-Publisher", publisher),
            ("TSLM-Timestamp", &ts.to_string()),
            ("TSLM-Signature", &sig),
            ("Content-Type", "application/json"),
        ],
        "1",
    )
    .await;
    Resp {
        status,
        head: head.to_ascii_lowercase(),
        body,
    }
}

/// Item 13: the replay memory is one for the whole process (a request accepted on one address
/// of a listener is refused on its other address and on another listener), and each publisher
/// with keys has its own share of it: one busy publisher filling its share is refused (429
/// `rate_limited`), the other publisher is not.
#[tokio::test]
async fn one_busy_publisher_fills_only_its_share_of_the_process_wide_replay_memory() {
    let (busy, calm) = (SecretKey::generate(), SecretKey::generate());
    let toml = format!(
        "[server]\nmax_remembered_signatures = 4\n\
         [listener.private]\nbind=['127.0.0.1:0','127.0.0.2:0']\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\npublisher_auth = true\n\
         [listener.other]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\npublisher_auth = true\n\
         [publisher.busy]\nkeys = ['{}']\nchannels = ['busy']\n\
         [publisher.calm]\nkeys = ['{}']\nchannels = ['calm']\n\
         [channel.\"*\"]\nauto_create = true\n",
        busy.public_text(),
        calm.public_text()
    );
    let server = Server::bind(Config::from_toml_str(&toml, "test").unwrap())
        .await
        .unwrap();
    let addrs: Vec<(String, SocketAddr)> = server
        .local_addrs()
        .into_iter()
        .map(|b| (b.listener, b.addr))
        .collect();
    let addr_of = |name: &str, ip: &str| {
        addrs
            .iter()
            .find(|(l, a)| l == name && a.ip().to_string() == ip)
            .unwrap()
            .1
    };
    let (a1, a2, other) = (
        addr_of("private", "127.0.0.1"),
        addr_of("private", "127.0.0.2"),
        addr_of("other", "127.0.0.1"),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    // One request, then its replay to the listener's other address and to another listener.
    let path = "/v1/channels/busy/messages?nonce=replayed";
    let ts = unix_now();
    let r = signed_post_path(a1, &busy, "busy", path, ts).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for addr in [a2, other] {
        let r = signed_post_path(addr, &busy, "busy", path, ts).await;
        assert_eq!((r.status, r.code()), (401, "unauthorized"), "{addr}");
        assert_eq!(
            r.body["error"]["message"],
            "request signature refused: request signature already used"
        );
    }

    // Capacity 4, two signing publishers: 2 each. `busy` has used 1; one more, then refused.
    let r = signed_post(a2, &busy, "busy", "busy", 1).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for n in 2..5 {
        let r = signed_post(a1, &busy, "busy", "busy", n).await;
        assert_eq!((r.status, r.code()), (429, "rate_limited"), "{}", r.body);
        assert_eq!(
            r.body["error"]["message"],
            "publisher `busy` has used its share of the memory of signed requests; retry shortly"
        );
    }
    // `calm` keeps its whole share, on every address.
    for (n, addr) in [(1, a1), (2, other)] {
        let r = signed_post(addr, &calm, "calm", "calm", n).await;
        assert_eq!(r.status, 200, "calm request {n}: {}", r.body);
    }

    let _ = stop.send(());
    done.await.unwrap();
}

/// Item 9, WebSocket side: refused `auth` credentials spend the same per-address budget, so
/// reconnecting buys no more guesses: the session whose refusal finds the budget spent is
/// closed with 1008, and the address's next handshake is answered 429.
#[tokio::test]
async fn websocket_guesses_spend_the_address_budget_too() {
    let srv = TestServer::start(&format!(
        "{}max_rejected_commands_per_second = 100\nfailed_auths_per_ip_per_minute = 3\n\
         [publisher.p]\ntoken_hashes = ['{}']\nchannels = ['*']\n",
        two_listeners(""),
        token::hash_line(&token::generate_token())
    ))
    .await;
    let mut ws = v1(&srv.url("private")).await;
    for i in 0..3 {
        let r = call(&mut ws, &format!(r#"{{"op":"auth","token":"guess-{i}"}}"#)).await;
        assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    }
    let r = call(&mut ws, r#"{"op":"auth","token":"guess-3"}"#).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    assert_eq!(
        recv_close(&mut ws).await,
        Some((1008, "too many failed authentications".to_owned()))
    );
    let (status, _, body) = http_raw(
        srv.addr("private"),
        "GET / HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("too many failed authentications from your address"),
        "{body}"
    );
}
