//! The audit log (`[audit]`) of the real binary: what real WebSocket and HTTP publishers leave in
//! it, its hash chain across restarts, and what `tslm audit verify` finds in a damaged file.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use serde_json::Value;
use tokio::process::{Child, Command};
use tslm_auth::keys::{self, Challenge, SecretKey};
use tslm_auth::token;

const BIN: &str = env!("CARGO_BIN_EXE_tslm");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// A publishers' listener, a publisher with a token and a key, and the audit log in `dir`.
struct Setup {
    dir: tempfile::TempDir,
    token: String,
    key: SecretKey,
    /// The `[audit]` lines after `file`.
    sync: &'static str,
}

impl Setup {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            token: token::generate_token(),
            key: SecretKey::generate(),
            sync: "sync = 'every'",
        }
    }

    /// With `sync` instead of `sync = 'every'`.
    fn with_sync(sync: &'static str) -> Self {
        Self {
            sync,
            ..Self::new()
        }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn config(&self) -> PathBuf {
        let p = self.dir.path().join("tslm.toml");
        std::fs::write(
            &p,
            format!(
                "[listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\npublisher_auth = true\n\
                 [publisher.orders]\nkeys = ['{}']\ntoken_hashes = ['{}']\noperations = ['create', 'publish', 'delete']\nchannels = ['orders.*']\n\
                 [audit]\nfile = 'audit.jsonl'\n{}\n",
                self.key.public_text(),
                token::hash_line(&self.token),
                self.sync,
            ),
        )
        .unwrap();
        p
    }

    /// The records of the audit log, parsed.
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The real binary, serving until `stop`.
struct Gateway {
    child: Child,
    addrs: HashMap<String, SocketAddr>,
}

impl Gateway {
    async fn start(s: &Setup) -> Self {
        let ready = s.dir.path().join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(s.config())
            .arg("--ready-file")
            .arg(&ready)
            .current_dir(s.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let doc: Value = loop {
            if let Ok(t) = std::fs::read_to_string(&ready) {
                break serde_json::from_str(&t).unwrap();
            }
            assert!(tokio::time::Instant::now() < deadline, "no ready file");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addrs = doc["listeners"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v[0].as_str().unwrap().parse().unwrap()))
            .collect();
        Self { child, addrs }
    }

    fn addr(&self) -> SocketAddr {
        self.addrs["private"]
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr())
    }

    /// SIGTERM (to this child, by its pid), and the exit must be clean.
    async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        let st = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(st.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        assert!(status.success(), "{status}");
    }
}

/// `tslm audit verify FILE`: (success, stdout, stderr).
fn verify(file: &Path) -> (bool, String, String) {
    let out = std::process::Command::new(BIN)
        .args(["audit", "verify"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn sign_in(ws: &mut Ws, publisher: &str, key: &SecretKey) -> Value {
    let c = call(ws, r#"{"op":"challenge"}"#).await;
    let challenge = Challenge::from_base64(c["challenge"].as_str().unwrap()).unwrap();
    let sig = STANDARD.encode(key.sign(&keys::challenge_message(publisher, &challenge)));
    call(
        ws,
        &format!(r#"{{"op":"auth","publisher":"{publisher}","signature":"{sig}"}}"#),
    )
    .await
}

/// The prefix of a token's config line (`sha256:` and 12 hex digits) the audit log names it by.
fn token_id(token: &str) -> String {
    format!("token:{}", &token::hash_line(token)[..19])
}

#[tokio::test]
async fn real_traffic_is_recorded_chained_and_verifies() {
    let s = Setup::new();
    let gw = Gateway::start(&s).await;
    let bearer = format!("Bearer {}", s.token);

    // WebSocket: a refused token, then the right one; create, two publishes with a msg_id (the
    // second a duplicate), one without.
    let mut ws = v1(&gw.url()).await;
    let r = call(&mut ws, r#"{"op":"auth","token":"tslm_not-a-token"}"#).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    let r = call(
        &mut ws,
        &format!(r#"{{"op":"auth","token":"{}"}}"#, s.token),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(&mut ws, r#"{"op":"create","channel":"orders.eu"}"#).await;
    assert_eq!(r["created"], true, "{r}");
    let p1 = call(
        &mut ws,
        r#"{"op":"publish","channel":"orders.eu","data":{"n":1},"msg_id":"m-1"}"#,
    )
    .await;
    let p1dup = call(
        &mut ws,
        r#"{"op":"publish","channel":"orders.eu","data":{"n":1},"msg_id":"m-1"}"#,
    )
    .await;
    assert_eq!(p1dup["duplicate"], true, "{p1dup}");
    let p2 = call(
        &mut ws,
        r#"{"op":"publish","channel":"orders.eu","data":[1,2,3]}"#,
    )
    .await;

    // HTTP: a publish with the token, and a refused token.
    let (status, _, p3) = http(
        gw.addr(),
        "POST",
        "/v1/channels/orders.eu/messages",
        &[("Authorization", &bearer)],
        r#""over http""#,
    )
    .await;
    assert_eq!(status, 200, "{p3}");
    let (status, _, _) = http(
        gw.addr(),
        "POST",
        "/v1/channels/orders.eu/messages",
        &[("Authorization", "Bearer wrong")],
        "1",
    )
    .await;
    assert_eq!(status, 401);

    // A key signature on a second connection, which deletes the channel.
    let mut ws2 = v1(&gw.url()).await;
    assert_eq!(sign_in(&mut ws2, "orders", &s.key).await["ok"], true);
    let r = call(&mut ws2, r#"{"op":"delete","channel":"orders.eu"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    drop((ws, ws2));
    gw.stop().await;

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(s.log()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "{mode:o}");
    }
    let text = std::fs::read_to_string(s.log()).unwrap();
    assert!(!text.contains(&s.token), "a token reached the audit log");
    assert!(
        !text.contains("over http"),
        "a payload reached the audit log"
    );
    let recs = s.records();
    let kinds: Vec<&str> = recs.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "start", "auth", "auth", "create", "publish", "publish", "publish", "auth", "publish",
            "auth", "auth", "delete", "stop"
        ],
        "{text}"
    );
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64);
        assert!(r["ts"].as_str().unwrap().ends_with('Z'), "{r}");
    }
    assert_eq!(recs[0]["prev"], tslm_server::audit::GENESIS);
    assert_eq!(recs[0]["resumed"], false);

    // The authentications: refused then accepted on the WebSocket, then over HTTP.
    let tok = token_id(&s.token);
    let (refused, accepted) = (&recs[1], &recs[2]);
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["via"], "auth");
    assert_eq!(refused["transport"], "websocket");
    assert_eq!(refused["identity"], "anonymous");
    assert_eq!(refused["credential"], token_id("tslm_not-a-token"));
    assert_eq!(refused["reason"], "token refused");
    assert_eq!(accepted["outcome"], "accepted");
    assert_eq!(accepted["publisher"], "orders");
    assert_eq!(accepted["identity"], "publisher");
    assert_eq!(accepted["credential"], tok);
    assert_eq!(accepted["listener"], "private");
    let peer: SocketAddr = accepted["peer"].as_str().unwrap().parse().unwrap();
    assert!(peer.ip().is_loopback());
    assert_eq!(recs[7]["via"], "request");
    assert_eq!(recs[7]["transport"], "http");
    assert_eq!(recs[7]["credential"], tok);
    assert_eq!(recs[9]["outcome"], "refused");
    assert_eq!(recs[9]["transport"], "http");
    assert_eq!(recs[9]["credential"], token_id("wrong"));
    let key_id = format!("key:sha256:{}", &sha256_hex(&s.key.public_bytes())[..12]);
    assert_eq!(recs[10]["credential"], key_id);
    assert_eq!(recs[10]["outcome"], "accepted");

    // Create, publishes with their offsets, sizes and hashes, delete.
    assert_eq!(recs[3]["channel"], "orders.eu");
    assert_eq!(recs[3]["created"], true);
    assert_eq!(recs[3]["credential"], tok);
    for (rec, reply, data, msg_id, dup) in [
        (&recs[4], &p1, r#"{"n":1}"#, Some("m-1"), false),
        (&recs[5], &p1dup, r#"{"n":1}"#, Some("m-1"), true),
        (&recs[6], &p2, "[1,2,3]", None, false),
        (&recs[8], &p3, r#""over http""#, None, false),
    ] {
        assert_eq!(rec["channel"], "orders.eu", "{rec}");
        assert_eq!(rec["offset"], reply["offset"], "{rec} {reply}");
        assert_eq!(rec["epoch"], reply["epoch"], "{rec} {reply}");
        assert_eq!(rec["duplicate"], dup, "{rec}");
        assert_eq!(rec["msg_id"].as_str(), msg_id, "{rec}");
        assert_eq!(rec["size"], data.len(), "{rec}");
        assert_eq!(rec["sha256"], sha256_hex(data.as_bytes()), "{rec}");
        assert_eq!(rec["publisher"], "orders", "{rec}");
    }
    assert_eq!(recs[4]["offset"], recs[5]["offset"]);
    assert_eq!(recs[8]["transport"], "http");
    assert_eq!(recs[11]["channel"], "orders.eu");
    assert_eq!(recs[11]["credential"], key_id);

    let (ok, out, err) = verify(&s.log());
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("ok: 13 records (seq 0..=12), 1 starts"),
        "{out}"
    );
    assert!(out.contains("ends with a clean stop"), "{out}");
}

/// Publishes `n` messages over a token-authenticated WebSocket connection.
async fn some_traffic(gw: &Gateway, s: &Setup, channel: &str, n: usize) {
    let mut ws = v1(&gw.url()).await;
    let r = call(
        &mut ws,
        &format!(r#"{{"op":"auth","token":"{}"}}"#, s.token),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let r = call(
        &mut ws,
        &format!(r#"{{"op":"create","channel":"{channel}"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    for i in 0..n {
        let r = call(
            &mut ws,
            &format!(r#"{{"op":"publish","channel":"{channel}","data":{i}}}"#),
        )
        .await;
        assert_eq!(r["offset"], i as u64 + 1, "{r}");
    }
}

#[tokio::test]
async fn a_restart_appends_and_the_chain_goes_on() {
    // The default sync policy (every second), then none: the last records are on disk at exit
    // either way.
    let mut s = Setup::with_sync("");
    let gw = Gateway::start(&s).await;
    some_traffic(&gw, &s, "orders.a", 2).await;
    gw.stop().await;
    let first = s.records();
    s.sync = "sync = 'none'";
    let gw = Gateway::start(&s).await;
    some_traffic(&gw, &s, "orders.b", 1).await;
    gw.stop().await;

    let recs = s.records();
    let n = first.len();
    assert_eq!(
        &recs[..n],
        &first[..],
        "the first run's records are untouched"
    );
    assert_eq!(first.last().unwrap()["type"], "stop");
    let restart = &recs[n];
    assert_eq!(restart["type"], "start");
    assert_eq!(restart["resumed"], true);
    assert_eq!(restart["seq"], n as u64);
    let text = std::fs::read_to_string(s.log()).unwrap();
    let last_line_of_first_run = text.lines().nth(n - 1).unwrap();
    assert_eq!(
        restart["prev"],
        sha256_hex(last_line_of_first_run.as_bytes())
    );
    let (ok, out, err) = verify(&s.log());
    assert!(ok, "{out}{err}");
    assert!(out.contains(", 2 starts,"), "{out}");
}

/// A verified log, and the lines of it, for damaging copies of it.
async fn a_good_log(s: &Setup) -> Vec<String> {
    let gw = Gateway::start(s).await;
    some_traffic(&gw, s, "orders.a", 3).await;
    gw.stop().await;
    let (ok, out, err) = verify(&s.log());
    assert!(ok, "{out}{err}");
    std::fs::read_to_string(s.log())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Writes `text` to a file beside the log and verifies it: the error output.
fn verify_damaged(s: &Setup, name: &str, text: &str) -> String {
    let p = s.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    let (ok, out, err) = verify(&p);
    assert!(!ok, "{name}: verify passed: {out}");
    assert!(out.is_empty(), "{out}");
    err
}

#[tokio::test]
async fn verify_finds_a_removed_line_an_edited_field_and_a_cut_last_line() {
    let s = Setup::new();
    let lines = a_good_log(&s).await;
    assert!(lines.len() >= 7, "{lines:?}");
    let join = |l: &[String]| l.iter().map(|l| format!("{l}\n")).collect::<String>();

    // A middle line removed.
    let mut l = lines.clone();
    l.remove(3);
    let e = verify_damaged(&s, "removed.jsonl", &join(&l));
    assert!(e.contains("line 4: `seq` is 4, expected 3"), "{e}");

    // A field of a line edited (a publish's offset), its JSON still valid: the next line's
    // `prev` gives it away.
    let i = lines
        .iter()
        .position(|l| l.contains(r#""type":"publish""#))
        .unwrap();
    let mut l = lines.clone();
    l[i] = l[i].replace(r#""offset":1"#, r#""offset":9"#);
    assert_ne!(l[i], lines[i]);
    let e = verify_damaged(&s, "edited.jsonl", &join(&l));
    assert!(
        e.contains(&format!("line {}: `prev` is", i + 2)) && e.contains(&format!("line {}", i + 1)),
        "{e}"
    );

    // The last line cut half-way.
    let full = join(&lines);
    let last = lines.last().unwrap();
    let cut = &full[..full.len() - 1 - last.len() / 2];
    let e = verify_damaged(&s, "cut.jsonl", cut);
    assert!(
        e.contains(&format!("line {}: incomplete", lines.len())),
        "{e}"
    );

    // Whole lines cut from the end leave a valid chain: only the missing `stop` says so.
    let p = s.dir.path().join("shorter.jsonl");
    std::fs::write(&p, join(&lines[..lines.len() - 2])).unwrap();
    let (ok, out, err) = verify(&p);
    assert!(ok, "{out}{err}");
    assert!(out.contains("ends with `publish`, not `stop`"), "{out}");

    // A missing file.
    let (ok, _, err) = verify(&s.dir.path().join("nothing-here.jsonl"));
    assert!(!ok);
    assert!(err.contains("cannot open it"), "{err}");
}

#[tokio::test]
async fn a_log_whose_last_line_is_cut_stops_the_start() {
    let s = Setup::new();
    let lines = a_good_log(&s).await;
    let full: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let cut = &full[..full.len() - 10];
    std::fs::write(s.log(), cut).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .current_dir(s.dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit log audit.jsonl: its last line is incomplete"),
        "{err}"
    );
    // Nothing was appended to it.
    assert_eq!(std::fs::read_to_string(s.log()).unwrap(), cut);

    // Nor does a last line that is no record start anything.
    std::fs::write(s.log(), format!("{full}not json\n")).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .current_dir(s.dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("its last line is not an audit record"),
        "{err}"
    );

    // An audit file that cannot be opened (a directory).
    std::fs::remove_file(s.log()).unwrap();
    std::fs::create_dir(s.log()).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(s.config())
        .current_dir(s.dir.path())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("audit log audit.jsonl: cannot open it"),
        "{err}"
    );
}

#[tokio::test]
async fn handshake_and_signature_authentications_are_recorded() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;

    let s = Setup::new();
    let gw = Gateway::start(&s).await;
    let handshake = |token: &str| {
        let mut req = gw.url().into_client_request().unwrap();
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("tslm.v1"),
        );
        req
    };
    // A token on the handshake: accepted, and the connection's publishes name it.
    let (mut ws, _) = tokio_tungstenite::connect_async(handshake(&s.token))
        .await
        .unwrap();
    assert_eq!(
        call(&mut ws, r#"{"op":"create","channel":"orders.h"}"#).await["ok"],
        true
    );
    // A wrong token on the handshake: 401, recorded.
    let e = tokio_tungstenite::connect_async(handshake("tslm_wrong"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    // A signature from a key the publisher does not have: refused, with the name it claimed.
    let mut ws2 = v1(&gw.url()).await;
    let r = sign_in(&mut ws2, "orders", &SecretKey::generate()).await;
    assert_eq!(r["error"]["code"], "unauthorized", "{r}");
    // A signed HTTP request: accepted, with the key's id.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let path = "/v1/channels/orders.h/messages";
    let sig = tslm_auth::http_sig::sign_request(&s.key, "orders", "POST", path, now, b"7");
    let ts = now.to_string();
    let headers = [
        ("TSLM-Publisher", "orders"),
        ("TSLM-Timestamp", ts.as_str()),
        ("TSLM-Signature", sig.as_str()),
    ];
    let (status, _, reply) = http(gw.addr(), "POST", path, &headers, "7").await;
    assert_eq!(status, 200, "{reply}");
    // The same request again is a replay: refused, with the name it claimed.
    assert_eq!(http(gw.addr(), "POST", path, &headers, "7").await.0, 401);
    drop((ws, ws2));
    gw.stop().await;

    let recs = s.records();
    let kinds: Vec<String> = recs
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r["type"].as_str().unwrap(),
                r["outcome"].as_str().unwrap_or("-"),
                r["via"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "start - -",
            "auth accepted handshake",
            "create - -",
            "auth refused handshake",
            "auth refused auth",
            "auth accepted request",
            "publish - -",
            "auth refused request",
            "stop - -"
        ]
    );
    let tok = token_id(&s.token);
    assert_eq!(recs[1]["credential"], tok);
    assert_eq!(recs[1]["publisher"], "orders");
    assert_eq!(recs[2]["credential"], tok);
    assert_eq!(recs[3]["credential"], token_id("tslm_wrong"));
    assert_eq!(recs[3]["reason"], "token refused");
    assert_eq!(recs[4]["credential"], "signature");
    assert_eq!(recs[4]["publisher"], "orders");
    assert_eq!(recs[4]["identity"], "anonymous");
    assert_eq!(recs[4]["reason"], "signature refused");
    let key_id = format!("key:sha256:{}", &sha256_hex(&s.key.public_bytes())[..12]);
    assert_eq!(recs[5]["credential"], key_id);
    assert_eq!(recs[6]["credential"], key_id);
    assert_eq!(recs[6]["sha256"], sha256_hex(b"7"));
    assert_eq!(recs[7]["credential"], "signature");
    assert_eq!(recs[7]["publisher"], "orders");
    assert!(
        recs[7]["reason"]
            .as_str()
            .unwrap()
            .starts_with("request signature refused"),
        "{}",
        recs[7]
    );
    let (ok, out, err) = verify(&s.log());
    assert!(ok, "{out}{err}");
}
