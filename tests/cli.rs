//! The `tslm` binary: startup, config errors, signals, and the command-line client.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_tslm");

/// A gateway process and the lines it logged so far.
struct Gateway {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    fn spawn(args: &[&str], cwd: &std::path::Path) -> Self {
        Self::spawn_logging(args, cwd, "info")
    }

    fn spawn_logging(args: &[&str], cwd: &std::path::Path, level: &str) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", level)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tslm");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = Arc::clone(&log);
        let reader = tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                sink.lock().unwrap().push(l);
            }
        });
        Self {
            child,
            log,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits for `n` "listening" lines and returns (listener, addr) pairs.
    async fn listening(&self, n: usize) -> Vec<(String, String)> {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let found: Vec<(String, String)> = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(" listening "))
                .map(|l| (field(l, "listener"), field(l, "addr")))
                .collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gateway did not start: {}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let st = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the process to exit and for everything it logged to be read.
    async fn wait(&mut self) -> std::process::ExitStatus {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(T, reader).await;
        }
        status
    }
}

fn field(line: &str, key: &str) -> String {
    let pat = format!("{key}=");
    let start = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + pat.len();
    line[start..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
        .to_owned()
}

fn write_config(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn sigint_and_sigterm_close_sessions_with_1001_and_exit_cleanly() {
    for sig in ["-INT", "-TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), "t.toml", &two_listeners(""));
        let mut gw = Gateway::spawn(&["serve", "--config", cfg.to_str().unwrap()], dir.path());
        let addrs = gw.listening(2).await;
        let public = &addrs.iter().find(|(n, _)| n == "public").unwrap().1;
        let mut client = v1(&format!("ws://{public}/")).await;
        assert_eq!(
            call(&mut client, r#"{"op":"ping","id":1}"#).await["ok"],
            true
        );
        gw.signal(sig);
        let (code, reason) = recv_close(&mut client).await.unwrap();
        assert_eq!(code, 1001, "{sig}");
        assert!(
            reason.starts_with("shutdown; retry_after_ms="),
            "{sig}: {reason:?}"
        );
        let status = gw.wait().await;
        assert!(status.success(), "{sig}: {status} {}", gw.text());
        assert!(gw.text().contains("shutdown complete"), "{}", gw.text());
    }
}

#[tokio::test]
async fn shutdown_ends_within_the_grace_period_even_with_a_stalled_client() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "t.toml",
        &format!(
            "[server]\nshutdown_grace_seconds = 1\n{}",
            two_listeners("outbound_queue_bytes = 268435456\nchannel_buffer_size = 1000000")
        ),
    );
    let mut gw = Gateway::spawn(&["serve", "--config", cfg.to_str().unwrap()], dir.path());
    let addrs = gw.listening(2).await;
    let addr = |n: &str| addrs.iter().find(|(l, _)| l == n).unwrap().1.clone();
    let mut publisher = v1(&format!("ws://{}/", addr("private"))).await;
    let mut stalled = v1(&format!("ws://{}/", addr("public"))).await;
    call(&mut publisher, r#"{"op":"create","channel":"c"}"#).await;
    call(&mut stalled, r#"{"op":"subscribe","channel":"c"}"#).await;
    // 16 MB the stalled subscriber never reads: the socket buffers fill and its close frame
    // cannot be written.
    let data = format!("\"{}\"", "z".repeat(16 * 1024));
    for _ in 0..1024 {
        call(
            &mut publisher,
            &format!(r#"{{"op":"publish","channel":"c","data":{data}}}"#),
        )
        .await;
    }
    gw.signal("-TERM");
    let status = gw.wait().await;
    assert!(status.success(), "{status}: {}", gw.text());
    assert!(gw.text().contains("grace period over"), "{}", gw.text());
    drop(stalled);
}

#[tokio::test]
async fn the_startup_log_says_what_listens_where_with_which_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "t.toml",
        "[listener.both]\nbind=['127.0.0.1:0','[::1]:0']\ndefault_endpoint_permissions=['Subscribe','NotifyChannel']\n",
    );
    let gw = Gateway::spawn(&["--config", cfg.to_str().unwrap()], dir.path());
    let addrs = gw.listening(2).await;
    assert!(
        addrs.iter().any(|(_, a)| a.starts_with("[::1]:")),
        "IPv6 bind: {addrs:?}"
    );
    let text = gw.text();
    assert!(
        text.contains("permissions=Subscribe,NotifyChannel"),
        "{text}"
    );
    // Both addresses serve.
    for (_, a) in &addrs {
        let mut c = v1(&format!("ws://{a}/")).await;
        assert_eq!(call(&mut c, r#"{"op":"ping","id":1}"#).await["ok"], true);
    }
}

#[tokio::test]
async fn a_failed_bind_stops_startup_with_a_message_naming_the_listener() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "t.toml",
        &format!(
            "[listener.aaa]\nip='127.0.0.1'\nport=0\n[listener.busy]\nip='127.0.0.1'\nport={port}\n"
        ),
    );
    let mut gw = Gateway::spawn(&["serve", "--config", cfg.to_str().unwrap()], dir.path());
    let status = gw.wait().await;
    assert!(!status.success());
    let text = gw.text();
    assert!(
        text.contains("listener `busy`") && text.contains("cannot bind"),
        "{text}"
    );
    assert!(
        !text.contains(" listening "),
        "nothing may start serving: {text}"
    );
}

#[tokio::test]
async fn bad_configs_stop_startup_and_check_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_config(
        dir.path(),
        "good.toml",
        "[listener.public]\nip='127.0.0.1'\nport=8080\ndefault_endpoint_permissions=['Subscribe']\n",
    );
    let bad = write_config(
        dir.path(),
        "bad.toml",
        "[listener.public]\nip='127.0.0.1'\nport=8080\nmax_conections=5\n",
    );
    let worse = write_config(
        dir.path(),
        "worse.toml",
        "[listener.private]\nip='127.0.0.1'\nport=8081\nchannel_buffer_size=0\n",
    );

    let out = Command::new(BIN)
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("listener public: 127.0.0.1:8080 permissions=Subscribe"),
        "{stdout}"
    );

    for (file, listener, key) in [
        (&bad, "public", "max_conections"),
        (&worse, "private", "channel_buffer_size"),
    ] {
        let out = Command::new(BIN)
            .args(["check-config", file.to_str().unwrap()])
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("listener `{listener}`")) && err.contains(key),
            "{err}"
        );
        // And `serve` refuses it the same way, without starting anything.
        let mut gw = Gateway::spawn(&["serve", "--config", file.to_str().unwrap()], dir.path());
        assert!(!gw.wait().await.success());
        assert!(
            gw.text().contains(key) && !gw.text().contains(" listening "),
            "{}",
            gw.text()
        );
    }
    let out = Command::new(BIN)
        .args(["check-config", "/nonexistent/tslm.toml"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[tokio::test]
async fn config_dir_reads_tslm_toml_as_the_original_did() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    write_config(
        &conf,
        "tslm.toml",
        "[listener.from_dir]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Subscribe']\n",
    );
    let gw = Gateway::spawn(&["-c", conf.to_str().unwrap()], dir.path());
    let addrs = gw.listening(1).await;
    assert_eq!(addrs[0].0, "from_dir");
    // The original's default location, ./config/tslm.toml, is used when no flag is given.
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir2.path().join("config")).unwrap();
    write_config(
        &dir2.path().join("config"),
        "tslm.toml",
        "[listener.legacy_default]\nip='127.0.0.1'\nport=0\n",
    );
    let gw2 = Gateway::spawn(&[], dir2.path());
    assert_eq!(gw2.listening(1).await[0].0, "legacy_default");
    // An original YAML config is not silently replaced by the embedded default.
    let dir3 = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir3.path().join("config")).unwrap();
    write_config(&dir3.path().join("config"), "tslm.yaml", "listener: {}\n");
    let mut gw3 = Gateway::spawn(&[], dir3.path());
    assert!(!gw3.wait().await.success());
    assert!(gw3.text().contains("only TOML"), "{}", gw3.text());
}

#[tokio::test]
async fn without_a_config_the_embedded_default_serves_8080_and_8081() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::spawn(&[], dir.path());
    let addrs = gw.listening(2).await;
    assert!(
        gw.text().contains("config=embedded default"),
        "{}",
        gw.text()
    );
    assert!(
        addrs.contains(&("public".into(), "127.0.0.1:8080".into())),
        "{addrs:?}"
    );
    assert!(
        addrs.contains(&("private".into(), "127.0.0.1:8081".into())),
        "{addrs:?}"
    );
    let mut publisher = v1("ws://127.0.0.1:8081/").await;
    assert_eq!(
        call(&mut publisher, r#"{"op":"create","id":1,"channel":"x"}"#).await["ok"],
        true
    );
    let mut sub = v1("ws://127.0.0.1:8080/").await;
    assert_eq!(
        call(&mut sub, r#"{"op":"create","id":2,"channel":"y"}"#).await["error"]["code"],
        "forbidden"
    );
    assert_eq!(
        call(&mut sub, r#"{"op":"subscribe","id":3,"channel":"x"}"#).await["ok"],
        true
    );
    gw.signal("-INT");
    assert!(gw.wait().await.success());
}

async fn run_cli(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(T, child.wait_with_output())
        .await
        .expect("cli exits")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_creates_publishes_and_subscribes() {
    let srv = TestServer::default().await;
    let (public, private) = (srv.url("public"), srv.url("private"));
    assert_eq!(
        run_cli(&["create", &private, "cli"], None).await,
        (0, "created cli\n".into(), String::new())
    );
    assert_eq!(
        run_cli(&["create", &private, "cli"], None).await.1,
        "exists cli\n"
    );

    let sub = Command::new(BIN)
        .args(["sub", &public, "cli", "-n", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    srv.wait_for("cli subscriber", |s| s.hub.stats().subscriptions == 1)
        .await;
    let (code, out, err) = run_cli(&["pub", &private, "cli"], Some("{\"a\": 1}\n\n[1,2]\n")).await;
    assert_eq!((code, out.as_str()), (0, "1\n2\n"), "{err}");
    let (code, out, _) = run_cli(&["pub", &private, "cli", "hello world", "--text"], None).await;
    assert_eq!((code, out.as_str()), (0, "3\n"));
    let out = tokio::time::timeout(T, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"channel\":\"cli\",\"offset\":1,\"data\":{\"a\": 1}}\n{\"channel\":\"cli\",\"offset\":2,\"data\":[1,2]}\n{\"channel\":\"cli\",\"offset\":3,\"data\":\"hello world\"}\n"
    );
}

#[tokio::test]
async fn the_cli_resumes_reads_history_deduplicates_lists_and_deletes() {
    let srv = TestServer::default().await;
    let (public, private) = (srv.url("public"), srv.url("private"));
    run_cli(&["create", &private, "feed"], None).await;
    let (code, out, err) = run_cli(&["pub", &private, "feed"], Some("1\n2\n3\n")).await;
    assert_eq!((code, out.as_str()), (0, "1\n2\n3\n"), "{err}");
    // A message id published twice keeps its first offset.
    let (_, out, _) = run_cli(&["pub", &private, "feed", "4", "--msg-id", "k"], None).await;
    assert_eq!(out, "4\n");
    let (_, out, _) = run_cli(&["pub", &private, "feed", "5", "--msg-id", "k"], None).await;
    assert_eq!(out, "4\n");

    // History prints the backlog; stderr says where it stands.
    let (code, out, err) = run_cli(&["history", &public, "feed", "--start", "last:2"], None).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "{\"channel\":\"feed\",\"offset\":3,\"data\":3}\n{\"channel\":\"feed\",\"offset\":4,\"data\":4}\n"
    );
    let info: serde_json::Value = serde_json::from_str(err.lines().next().unwrap()).unwrap();
    let epoch = info["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch.len(), 16, "{err}");

    // A subscriber resumes after offset 2 of that epoch.
    let (code, out, err) = run_cli(
        &[
            "sub",
            &public,
            "feed",
            "--start",
            &format!("{epoch}:2"),
            "-n",
            "2",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("\"recovered\":true"), "{err}");
    assert_eq!(
        out,
        "{\"channel\":\"feed\",\"offset\":3,\"data\":3}\n{\"channel\":\"feed\",\"offset\":4,\"data\":4}\n"
    );
    let (code, _, err) = run_cli(&["sub", &public, "feed", "--start", "zz:1"], None).await;
    assert_eq!(code, 2, "a bad start is a usage error: {err}");

    let (code, out, _) = run_cli(&["channels", &private, "--prefix", "fe"], None).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("{\"channel\":\"feed\""), "{out}");
    assert!(out.contains("\"offset\":4,\"subscribers\":0"), "{out}");

    // A subscriber is told when the channel is deleted.
    let sub = Command::new(BIN)
        .args(["sub", &public, "feed", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    srv.wait_for("cli subscriber", |s| s.hub.stats().subscriptions == 1)
        .await;
    assert_eq!(
        run_cli(&["delete", &private, "feed"], None).await,
        (0, "deleted feed\n".into(), String::new())
    );
    let (code, _, err) = run_cli(&["delete", &private, "feed"], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("not_found"), "{err}");
    // With no subscription left it exits non-zero, saying why.
    let out = tokio::time::timeout(T, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"event\":\"closed\",\"channel\":\"feed\",\"reason\":\"deleted\"}\n"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no subscription left"));
}

#[tokio::test]
async fn the_cli_reports_failures_with_a_nonzero_exit() {
    let srv = TestServer::default().await;
    let (public, private) = (srv.url("public"), srv.url("private"));
    // No server at all: the original printed "Channel created" here.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, out, err) = run_cli(&["create", &format!("ws://{closed}/"), "x"], None).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("cannot connect"), "{err}");
    // Refused by the server.
    let (code, _, err) = run_cli(&["create", &public, "x"], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("forbidden"), "{err}");
    let (code, _, err) = run_cli(&["pub", &private, "missing", "1"], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("not_found"), "{err}");
    let (code, _, err) = run_cli(&["pub", &private, "x", "not json"], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("not JSON"), "{err}");
    let (code, _, err) = run_cli(&["sub", &public, "missing"], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("not_found"), "{err}");
    // A subscriber whose server goes away exits non-zero, saying so.
    run_cli(&["create", &private, "bye"], None).await;
    let sub = Command::new(BIN)
        .args(["sub", &public, "bye"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    srv.wait_for("cli subscriber", |s| s.hub.stats().subscriptions == 1)
        .await;
    srv.shutdown().await;
    let out = tokio::time::timeout(T, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1001"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_benchmark_counts_every_delivery_against_a_real_server() {
    let srv = TestServer::start(&two_listeners(NO_IP_LIMITS)).await;
    let (sub, publ) = (
        srv.addr("public").to_string(),
        srv.addr("private").to_string(),
    );
    let (code, out, err) = run_cli(
        &[
            "bench", "--sub", &sub, "--pub", &publ, "-s", "20", "-c", "3", "-m", "300", "-p",
            "200", "--json", "--quiet",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    // 300 messages round-robin over 3 channels, 20 subscribers spread over them: 2,000 deliveries.
    assert_eq!(r["expected_deliveries"], 2000);
    assert_eq!(r["deliveries"], 2000);
    assert_eq!(
        (r["lost"].as_u64(), r["duplicated_or_reordered"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r["publish_errors"], 0);
    assert!(r["latency_ms"]["max"].as_f64().unwrap() > 0.0);
    // A refused subscriber (the public listener cannot create) is an error, not a silent zero.
    let (code, _, err) = run_cli(
        &[
            "bench", "--sub", &publ, "--pub", &publ, "-s", "2", "-m", "10", "--quiet",
        ],
        None,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("subscribe refused"), "{err}");
}

#[tokio::test]
async fn the_benchmark_counts_every_delivery_over_server_sent_events() {
    let srv = TestServer::start(&two_listeners(NO_IP_LIMITS)).await;
    let (sub, publ) = (
        srv.addr("public").to_string(),
        srv.addr("private").to_string(),
    );
    // A window within the channels' default backlog (100), which streams read from.
    let (code, out, err) = run_cli(
        &[
            "bench",
            "--transport",
            "sse",
            "--sub",
            &sub,
            "--pub",
            &publ,
            "-s",
            "20",
            "-c",
            "3",
            "-m",
            "300",
            "-p",
            "200",
            "--window",
            "50",
            "--json",
            "--quiet",
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["transport"], "sse");
    assert_eq!(r["expected_deliveries"], 2000);
    assert_eq!(r["deliveries"], 2000);
    assert_eq!(
        (r["lost"].as_u64(), r["duplicated_or_reordered"].as_u64()),
        (Some(0), Some(0))
    );
    // A refused stream (the private listener serves no event streams) is an error.
    let (code, _, err) = run_cli(
        &[
            "bench",
            "--transport",
            "sse",
            "--sub",
            &publ,
            "--pub",
            &publ,
            "-s",
            "2",
            "-m",
            "10",
            "--quiet",
        ],
        None,
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("event stream refused"), "{err}");
}

#[tokio::test]
async fn keygen_and_hash_token_make_credentials_the_cli_can_publish_with() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("billing.key");
    let key_path = key_file.to_str().unwrap();
    let (code, out, err) = run_cli(&["keygen", "--out", key_path], None).await;
    assert_eq!(code, 0, "{err}");
    let public = out
        .trim()
        .strip_prefix("keys = [\"")
        .and_then(|s| s.strip_suffix("\"]"))
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    assert!(public.starts_with("ed25519:"), "{public}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the secret is readable by its owner only");
    }
    let (code, _, err) = run_cli(&["keygen", "--out", key_path], None).await;
    assert_eq!(code, 1, "never overwrites: {err}");

    let (code, out, _) = run_cli(&["hash-token"], None).await;
    assert_eq!(code, 0);
    let mut lines = out.lines();
    let token = lines.next().unwrap().to_owned();
    let hash_line = lines.next().unwrap().to_owned();
    assert!(token.starts_with("tslm_") && token.len() >= 40, "{token}");
    assert_eq!(
        hash_line,
        format!(
            "token_hashes = [\"{}\"]",
            tslm_auth::token::hash_line(&token)
        )
    );
    let (_, out, _) = run_cli(&["hash-token", "--stdin"], Some("my-token\n")).await;
    assert_eq!(
        out,
        format!(
            "token_hashes = [\"{}\"]\n",
            tslm_auth::token::hash_line("my-token")
        )
    );

    let cfg = format!(
        "[listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\npublisher_auth=true\n\
         [publisher.billing]\nkeys=['{public}']\n{hash_line}\noperations=['create','publish']\nchannels=['bills.*']\n"
    );
    let srv = TestServer::start(&cfg).await;
    let url = srv.url("private");
    let (code, out, err) = run_cli(
        &[
            "create",
            &url,
            "bills.q1",
            "--publisher",
            "billing",
            "--key",
            key_path,
        ],
        None,
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "created bills.q1\n"), "{err}");
    let (code, out, err) = run_cli(&["pub", &url, "bills.q1", "1", "--token", &token], None).await;
    assert_eq!((code, out.as_str()), (0, "1\n"), "{err}");
    let (code, _, err) = run_cli(&["pub", &url, "bills.q1", "2"], None).await;
    assert_eq!(code, 1);
    assert!(err.contains("unauthorized"), "{err}");
    let other = dir.path().join("other.key");
    run_cli(&["keygen", "--out", other.to_str().unwrap()], None).await;
    let (code, _, err) = run_cli(
        &[
            "pub",
            &url,
            "bills.q1",
            "3",
            "--publisher",
            "billing",
            "--key",
            other.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("signature refused"), "{err}");
}

#[tokio::test]
async fn credentials_never_reach_the_log_even_at_debug_level() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let key = tslm_auth::keys::SecretKey::generate();
    let token = tslm_auth::token::generate_token();
    let cfg = format!(
        "[listener.private]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel','NotifyChannel']\npublisher_auth=true\n\
         [publisher.billing]\nkeys=['{}']\ntoken_hashes=['{}']\noperations=['create','publish']\nchannels=['bills.*']\n",
        key.public_text(),
        tslm_auth::token::hash_line(&token)
    );
    let file = write_config(dir.path(), "tslm.toml", &cfg);
    let mut gw = Gateway::spawn_logging(
        &["serve", "--config", file.to_str().unwrap()],
        dir.path(),
        "debug",
    );
    let addr = gw.listening(1).await[0].1.clone();
    let url = format!("ws://{addr}/");
    let wrong = format!("{token}x");
    // Right and wrong tokens, in the auth op and in a header; a key signature.
    let (code, _, _) = run_cli(&["create", &url, "bills.a", "--token", &token], None).await;
    assert_eq!(code, 0);
    let (code, _, _) = run_cli(&["create", &url, "bills.b", "--token", &wrong], None).await;
    assert_eq!(code, 1);
    let key_file = dir.path().join("k");
    std::fs::write(&key_file, key.to_text()).unwrap();
    let (code, _, err) = run_cli(
        &[
            "pub",
            &url,
            "bills.a",
            "1",
            "--publisher",
            "billing",
            "--key",
            key_file.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // A signed HTTP request and a replay of it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let path = "/v1/channels/bills.a/messages";
    let sig = tslm_auth::http_sig::sign_request(&key, "billing", "POST", path, now, b"2");
    let ts = now.to_string();
    let headers = [
        ("TSLM-Publisher", "billing"),
        ("TSLM-Timestamp", ts.as_str()),
        ("TSLM-Signature", sig.as_str()),
    ];
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    assert_eq!(http(addr, "POST", path, &headers, "2").await.0, 200);
    assert_eq!(http(addr, "POST", path, &headers, "2").await.0, 401);
    gw.signal("-TERM");
    assert!(gw.wait().await.success());
    let log = gw.text();
    assert!(log.contains("publisher authenticated"), "{log}");
    let secret = key.to_text();
    let secret_b64 = secret.trim_start_matches("ed25519-secret:");
    let sig_raw = base64::engine::general_purpose::STANDARD
        .decode(&sig)
        .unwrap();
    for (what, needle) in [
        ("token", token.as_str()),
        ("token body", &token[5..]),
        ("wrong token", wrong.as_str()),
        ("request signature", sig.as_str()),
        ("secret key", secret_b64),
        ("signature bytes", &format!("{:?}", &sig_raw[..8])),
    ] {
        assert!(!log.contains(needle), "the log shows the {what}");
    }
}
