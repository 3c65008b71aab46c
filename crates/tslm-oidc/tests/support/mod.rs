//! Test helpers: a tiny HTTP/1.1 server on 127.0.0.1:0 that serves discovery and JWKS documents
//! the test can change, take down and bring back, and that counts requests per path; test keys
//! and token signing.

#![allow(dead_code, clippy::unwrap_used)] // test support: each test uses a part; panics are test failures

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tslm_oidc::{ClaimMapping, Issuer, JwtAlgorithm, KeySource};

/// What the server answers on a path.
#[derive(Debug, Clone)]
pub enum Route {
    Json(Value),
    Redirect(String),
    Raw {
        status: u16,
        content_type: String,
        body: Vec<u8>,
        /// Omit `Content-Length` (the body then ends when the connection closes).
        content_length: bool,
    },
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Route>,
    hits: HashMap<String, usize>,
}

pub struct Server {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Server {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let task = tokio::spawn(serve(listener, state.clone()));
        Self {
            addr,
            state,
            task: Mutex::new(Some(task)),
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, path: &str, route: Route) {
        self.state
            .lock()
            .unwrap()
            .routes
            .insert(path.to_owned(), route);
    }

    pub fn set_keys(&self, path: &str, keys: &[&TestKey]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        self.set(path, Route::Json(json!({ "keys": keys })));
    }

    pub fn hits(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_hits(&self) -> usize {
        self.state.lock().unwrap().hits.values().sum()
    }

    /// Stops listening (connections are refused until [`Server::restart`]).
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        *self.task.lock().unwrap() = Some(tokio::spawn(serve(listener, self.state.clone())));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(answer(stream, state.clone()));
    }
}

async fn answer(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    let route = {
        let mut state = state.lock().unwrap();
        *state.hits.entry(path.clone()).or_default() += 1;
        state.routes.get(&path).cloned()
    };
    let (status, content_type, body, content_length, location) = match route {
        Some(Route::Json(v)) => (
            200,
            "application/json".to_owned(),
            serde_json::to_vec(&v).unwrap(),
            true,
            None,
        ),
        Some(Route::Redirect(to)) => (302, "text/plain".to_owned(), Vec::new(), true, Some(to)),
        Some(Route::Raw {
            status,
            content_type,
            body,
            content_length,
        }) => (status, content_type, body, content_length, None),
        None => (
            404,
            "text/plain".to_owned(),
            b"not found".to_vec(),
            true,
            None,
        ),
    };
    let mut response =
        format!("HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nConnection: close\r\n");
    if content_length {
        response.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if let Some(to) = location {
        response.push_str(&format!("Location: {to}\r\n"));
    }
    response.push_str("\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// A signing key and its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl TestKey {
    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey) -> Self {
        let mut jwk =
            serde_json::to_value(Jwk::from_encoding_key(&encoding, alg).unwrap()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["use"] = json!("sig");
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
        }
    }

    pub fn rsa_a() -> Self {
        let pem = include_bytes!("../keys/test-only-rsa-a.pem");
        Self::new(
            "rsa-a",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem).unwrap(),
        )
    }

    pub fn rsa_b() -> Self {
        let pem = include_bytes!("../keys/test-only-rsa-b.pem");
        Self::new(
            "rsa-b",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(pem).unwrap(),
        )
    }

    pub fn ec() -> Self {
        let pem = include_bytes!("../keys/test-only-ec-p256.pem");
        Self::new(
            "ec-1",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(pem).unwrap(),
        )
    }

    pub fn ed() -> Self {
        let pem = include_bytes!("../keys/test-only-ed25519.pem");
        Self::new(
            "ed-1",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(pem).unwrap(),
        )
    }

    /// A token signed by this key, with `kid` set.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        self.sign_with(header, claims)
    }

    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// The RSA public key A as SPKI PEM and DER: what an attacker may use as an HMAC "secret".
pub const RSA_A_PUBLIC_PEM: &[u8] = include_bytes!("../keys/test-only-rsa-a.pub.pem");
pub const RSA_A_PUBLIC_DER: &[u8] = include_bytes!("../keys/test-only-rsa-a.pub.der");

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub const AUDIENCE: &str = "tslm-gateway";

/// Claims that the default issuer accepts: `prices.*` via `tslm_channels`, `news.eu` via scope.
pub fn claims(iss: &str) -> Value {
    json!({
        "iss": iss,
        "sub": "alice",
        "aud": AUDIENCE,
        "iat": now(),
        "exp": now() + 600,
        "tslm_channels": ["prices.*"],
        "scope": "openid tslm:news.eu profile",
    })
}

/// An issuer with test-friendly defaults: RS256/ES256/EdDSA, leeway 30 s, cooldown 60 s, keys
/// valid 1 h.
pub fn issuer(name: &str, iss: &str, keys: KeySource) -> Issuer {
    Issuer {
        name: name.to_owned(),
        issuer: iss.to_owned(),
        keys,
        audiences: vec!["other-api".to_owned(), AUDIENCE.to_owned()],
        algorithms: vec![
            JwtAlgorithm::RS256,
            JwtAlgorithm::ES256,
            JwtAlgorithm::EdDSA,
        ],
        leeway: Duration::from_secs(30),
        claims: ClaimMapping {
            channels_claim: Some("tslm_channels".to_owned()),
            scope_prefix: Some("tslm:".to_owned()),
        },
        refresh_cooldown: Duration::from_secs(60),
        key_max_age: Duration::from_secs(3600),
        fetch_timeout: Duration::from_secs(2),
        max_document_bytes: 64 * 1024,
        max_token_bytes: 8 * 1024,
    }
}
