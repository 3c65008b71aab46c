//! A real OpenID Connect provider for integration tests: `tests/oidc/provider.mjs`, the certified
//! `oidc-provider` npm package run with Node.js on 127.0.0.1. See `tests/oidc/README.md`.
//!
//! Include with `#[path = "support/oidc.rs"] mod oidc;`. Needs `node` on PATH and
//! `tests/oidc/node_modules` (`npm ci --prefix tests/oidc`; `scripts/test.sh` does both).
//!
//! Tokens are RFC 9068 JWT access tokens, RS256, `typ: at+jwt`, with `iss` = [`Provider::issuer`],
//! `aud` = [`AUDIENCE`], and `tslm_channels` = the channel patterns asked for as `tslm:PATTERN`
//! scopes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The confidential client the provider knows (`client_secret_basic`).
pub const CLIENT_ID: &str = "tslm-test";
/// The same secret also works for `tslm-test-post`, a `client_secret_post` client.
pub const CLIENT_SECRET: &str = "tslm-test-secret";
/// `aud` of every token asked for without a `resource`.
pub const AUDIENCE: &str = "tslm-gateway";
/// The resource indicator (RFC 8707) that is the gateway; the default one.
pub const GATEWAY_RESOURCE: &str = "urn:tslm:gateway";
/// Scopes `tslm:PATTERN` put PATTERN in the `tslm_channels` claim (and stay in `scope`).
pub const CHANNEL_SCOPE_PREFIX: &str = "tslm:";
/// Scopes `tslm-claim:PATTERN` put PATTERN in `tslm_channels` too, but no `tslm:` scope in
/// `scope`: a token that grants channels by the claim only.
pub const CLAIM_ONLY_SCOPE_PREFIX: &str = "tslm-claim:";
/// Access token lifetime unless a test asks for another.
pub const DEFAULT_TTL_SECS: u64 = 300;

const STARTUP: Duration = Duration::from_secs(30);
const REQUEST: Duration = Duration::from_secs(10);

/// A running provider. Killed (SIGKILL) if dropped without [`Provider::stop`].
pub struct Provider {
    pub port: u16,
    /// `http://127.0.0.1:PORT`, no trailing slash: the exact `iss` of its tokens.
    pub issuer: String,
    /// The kid of the key that signs (the first key of the set).
    pub kid: String,
    pub ttl_secs: u64,
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// Holds `jwks.json`, the private key set; kept across [`Provider::rotate`].
    dir: tempfile::TempDir,
}

impl Provider {
    /// Generates a fresh RSA key `kid` into a new private key set and starts the provider on
    /// `port` (0: a free port) with access tokens valid for [`DEFAULT_TTL_SECS`].
    pub async fn start(port: u16, kid: &str) -> Provider {
        Self::start_with_ttl(port, kid, DEFAULT_TTL_SECS).await
    }

    /// [`Provider::start`] with access tokens valid for `ttl_secs`.
    pub async fn start_with_ttl(port: u16, kid: &str, ttl_secs: u64) -> Provider {
        let dir = tempfile::tempdir().expect("temp dir for the provider's keys");
        Self::spawn(port, kid, ttl_secs, dir).await
    }

    /// Stops this provider and starts it again on the same port with a fresh key `new_kid`
    /// that signs from now on. With `keep_old_keys`, the previous keys stay published in the
    /// JWKS (tokens they signed still verify); without, the JWKS holds only `new_kid`.
    pub async fn rotate(self, new_kid: &str, keep_old_keys: bool) -> Provider {
        let (port, ttl) = (self.port, self.ttl_secs);
        let dir = self.stop_keeping_keys().await;
        if !keep_old_keys {
            std::fs::remove_file(dir.path().join("jwks.json")).expect("remove the old key set");
        }
        Self::spawn(port, new_kid, ttl, dir).await
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// The JWKS endpoint (also the discovery document's `jwks_uri`).
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.issuer)
    }

    /// The private key set the provider signs with (JWK Set JSON; first key signs).
    pub fn keys_file(&self) -> PathBuf {
        self.dir.path().join("jwks.json")
    }

    /// What the provider logged (stderr) so far, for assertion messages.
    pub fn log(&self) -> String {
        self.stderr.lock().expect("log lock").clone()
    }

    /// A client_credentials access token for the gateway, granting exactly `scopes` (OAuth scope
    /// values, e.g. `["tslm:prices.*", "tslm:news"]`).
    pub async fn token(&self, scopes: &[&str]) -> String {
        self.token_for_resource(GATEWAY_RESOURCE, scopes).await
    }

    /// [`Provider::token`] for channel patterns: `["prices.*"]` asks for scope `tslm:prices.*`,
    /// so `tslm_channels` is `["prices.*"]`.
    pub async fn token_for_channels(&self, patterns: &[&str]) -> String {
        let scopes: Vec<String> = patterns
            .iter()
            .map(|p| format!("{CHANNEL_SCOPE_PREFIX}{p}"))
            .collect();
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        self.token(&scopes).await
    }

    /// A token signed by this provider but for another audience (`aud` = `audience`).
    pub async fn token_for_audience(&self, audience: &str, scopes: &[&str]) -> String {
        self.token_for_resource(&format!("urn:tslm:audience:{audience}"), scopes)
            .await
    }

    async fn token_for_resource(&self, resource: &str, scopes: &[&str]) -> String {
        let mut form = format!(
            "grant_type=client_credentials&resource={}",
            form_encode(resource)
        );
        if !scopes.is_empty() {
            form.push_str("&scope=");
            form.push_str(&form_encode(&scopes.join(" ")));
        }
        let (status, body) = self.token_request(&form).await;
        assert_eq!(
            status,
            200,
            "token request failed: {body}\nprovider log:\n{}",
            self.log()
        );
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token in {body}"))
            .to_owned()
    }

    /// POSTs `form` (already `application/x-www-form-urlencoded`) to the token endpoint as
    /// [`CLIENT_ID`] (HTTP Basic) and returns the status and JSON body, for negative cases.
    pub async fn token_request(&self, form: &str) -> (u16, Value) {
        let auth = base64_encode(format!("{CLIENT_ID}:{CLIENT_SECRET}").as_bytes());
        let (status, body) = http_request(
            self.port,
            "POST",
            "/token",
            &[
                ("Authorization", &format!("Basic {auth}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            form.as_bytes(),
        )
        .await;
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "token endpoint answered {status} with non-JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, json)
    }

    /// SIGTERM, then waits for the process to exit (SIGKILL after 10 s).
    pub async fn stop(self) {
        drop(self.stop_keeping_keys().await);
    }

    async fn stop_keeping_keys(mut self) -> tempfile::TempDir {
        let termed = match self.child.id() {
            Some(pid) => Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .is_ok_and(|s| s.success()),
            None => true, // already exited
        };
        if !termed
            || tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_err()
        {
            let _ = self.child.kill().await;
        }
        self.dir
    }

    async fn spawn(port: u16, kid: &str, ttl_secs: u64, dir: tempfile::TempDir) -> Provider {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
        assert!(
            root.join("node_modules/oidc-provider").is_dir(),
            "the OIDC test provider is not installed: run `npm ci --prefix tests/oidc` \
             (scripts/test.sh does it)"
        );
        let keys = dir.path().join("jwks.json");
        let mut child = Command::new("node")
            .arg(root.join("provider.mjs"))
            .arg("--port")
            .arg(port.to_string())
            .arg("--keys")
            .arg(&keys)
            .args(["--kid", kid, "--generate", "--ttl", &ttl_secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `node` ({e}): install Node.js (scripts/test.sh does it)")
            });

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let sink = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut s = sink.lock().expect("log lock");
                s.push_str(&line);
                s.push('\n');
            }
        });

        let mut out_lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let ready = tokio::time::timeout(STARTUP, out_lines.next_line()).await;
        let line = match ready {
            Ok(Ok(Some(line))) => line,
            other => {
                // Give the log reader a moment to collect why it died.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let log = stderr.lock().expect("log lock").clone();
                let what = match other {
                    Err(_) => "did not print READY within 30 s".to_owned(),
                    _ => format!("exited ({:?})", child.try_wait()),
                };
                panic!("OIDC provider on port {port} {what}; its log:\n{log}");
            }
        };
        let actual: u16 = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the provider: {line:?}"));
        if port != 0 {
            assert_eq!(actual, port, "provider listens on another port");
        }
        // Nothing more is expected on stdout; keep draining it anyway.
        tokio::spawn(async move { while let Ok(Some(_)) = out_lines.next_line().await {} });

        Provider {
            port: actual,
            issuer: format!("http://127.0.0.1:{actual}"),
            kid: kid.to_owned(),
            ttl_secs,
            child,
            stderr,
            dir,
        }
    }
}

/// GET `http://127.0.0.1:{port}{path}` and parse the body as JSON; panics unless 200.
pub async fn get_json(port: u16, path: &str) -> Value {
    let (status, body) = http_request(port, "GET", path, &[], b"").await;
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("JSON body")
}

/// GET an absolute `http://127.0.0.1:PORT/...` URL (e.g. a discovery `jwks_uri`) as JSON.
pub async fn get_json_url(url: &str) -> Value {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("not a loopback http URL: {url}"));
    let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    get_json(port.parse().expect("port in URL"), path).await
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`): status and body.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let exchange = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to the provider");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Accept: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.expect("write request");
        s.write_all(body).await.expect("write body");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        raw
    };
    let raw = tokio::time::timeout(REQUEST, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer in {REQUEST:?}"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of response head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[end + 4..];
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// The header and payload of a compact JWS, decoded without verifying anything.
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = |what: &str| -> Value {
        let p = parts
            .next()
            .unwrap_or_else(|| panic!("JWT without {what}: {token}"));
        serde_json::from_slice(&base64url_decode(p)).expect("JWT part is JSON")
    };
    let header = part("header");
    let payload = part("payload");
    (header, payload)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (for HTTP Basic).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64url without padding (JWT parts); also accepts padding and the standard alphabet.
pub fn base64url_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => panic!("not base64url: {s}"),
        };
        acc = ((acc << 6) | u32::from(v)) & 0xFFFF;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
