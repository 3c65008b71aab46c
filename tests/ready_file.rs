//! `tslm serve --ready-file`: the machine-readable ready signal of the real binary.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tslm");

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls for `path` to exist (it appears whole: written aside and renamed).
fn wait_for_file(path: &std::path::Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
        assert!(Instant::now() < deadline, "no ready file in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_ready_file_names_every_bound_address_once_listening() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tslm.toml");
    std::fs::write(
        &config,
        "[listener.public]\nip = '127.0.0.1'\nport = 0\ndefault_endpoint_permissions = ['Subscribe']\n\
         [listener.private]\nip = '127.0.0.1'\nport = 0\nbind = ['127.0.0.1:0']\ndefault_endpoint_permissions = ['CreateChannel', 'NotifyChannel']\n",
    )
    .unwrap();
    let ready = dir.path().join("ready.json");
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let gw = Gateway(child);
    let doc: Value = serde_json::from_str(&wait_for_file(&ready)).unwrap();
    assert_eq!(doc["pid"], gw.0.id());
    let public = doc["listeners"]["public"].as_array().unwrap();
    let private = doc["listeners"]["private"].as_array().unwrap();
    assert_eq!(public.len(), 1, "{doc}");
    assert_eq!(private.len(), 2, "{doc}");
    // Real ports, and something answers on each: an HTTP request gets an HTTP answer.
    for addr in public.iter().chain(private) {
        let addr: std::net::SocketAddr = addr.as_str().unwrap().parse().unwrap();
        assert_ne!(addr.port(), 0);
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /v1/channels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 "), "{addr}: {answer:?}");
    }
    // No temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|n| n.ends_with(".tmp")), "{left:?}");
}

#[test]
fn an_unwritable_ready_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tslm.toml");
    std::fs::write(
        &config,
        "[listener.public]\nip = '127.0.0.1'\nport = 0\ndefault_endpoint_permissions = ['Subscribe']\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--ready-file")
        .arg(dir.path().join("no/such/dir/ready.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ready-file"), "{err}");
}
