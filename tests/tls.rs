//! TLS listeners over real sockets: wss and HTTPS, refusal of plain TCP, certificate reload,
//! mutual TLS and startup failures. Certificates are made here with rcgen, under a test CA.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::T;
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tslm_server::{Config, Server};

/// How often the servers started here check their TLS files (the default is 2 s).
const RELOAD: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Certificates and files

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, both PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `cn` and the DNS names `sans`, with serial number `serial`.
    fn leaf(&self, cn: &str, sans: &[&str], serial: u64) -> Leaf {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A fresh directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tslm-tls-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// TOML for a listener named `name` on 127.0.0.1:0 with TLS from `cert`/`key` (and a client CA).
fn tls_listener(name: &str, cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut toml = format!(
        "[listener.{name}]\nip='127.0.0.1'\nport=0\n\
         default_endpoint_permissions=['Subscribe','CreateChannel','NotifyChannel']\n\
         tls_cert='{}'\ntls_key='{}'\n",
        cert.display(),
        key.display()
    );
    if let Some(ca) = client_ca {
        toml.push_str(&format!("tls_client_ca='{}'\n", ca.display()));
    }
    toml
}

// ---------------------------------------------------------------------------------------------
// Server

/// A server started with a short TLS reload interval; stopped on drop.
struct TlsServer {
    addrs: HashMap<String, SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl TlsServer {
    async fn start(toml: &str) -> Self {
        let config = Config::from_toml_str(toml, "test").expect("test config");
        let mut server = Server::bind(config).await.expect("bind");
        server.set_tls_reload_interval(RELOAD);
        let addrs = server
            .local_addrs()
            .into_iter()
            .map(|b| (b.listener, b.addr))
            .collect();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Self {
            addrs,
            stop: Some(tx),
            done: Some(done),
        }
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(30), done)
                .await
                .expect("shutdown in time")
                .unwrap();
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

/// A client config trusting `ca_pem`, presenting `client` when given. The ring provider is
/// passed explicitly, as the server does.
fn client_config(ca_pem: &str, client: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.der.clone()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    Arc::new(config)
}

/// A TLS connection to `addr` for the name `localhost`.
async fn tls_connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(T, TlsConnector::from(Arc::clone(config)).connect(name, tcp))
        .await
        .expect("tls handshake in time")
}

/// The end-entity certificate the server presented on `tls`.
fn server_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Reads until the peer closes or errors; returns what was read.
async fn read_all<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(T, s.read(&mut chunk))
            .await
            .expect("read in time")
        {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One HTTP/1.1 request with `Connection: close` on `io`; returns the status and the body.
async fn https<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    method: &str,
    path: &str,
) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    io.write_all(req.as_bytes()).await.unwrap();
    io.flush().await.unwrap();
    let text = String::from_utf8_lossy(&read_all(io).await).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    (status, body.to_owned())
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A `tslm.v1` WebSocket session over TLS.
async fn wss(addr: SocketAddr, config: &Arc<ClientConfig>) -> Wss {
    let tls = tls_connect(addr, config).await.expect("tls connect");
    let mut req = "wss://localhost/".into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tslm.v1"),
    );
    let (ws, resp) = tokio::time::timeout(T, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("websocket handshake in time")
        .expect("websocket handshake");
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap()),
        Some("tslm.v1")
    );
    ws
}

/// Sends `req` and returns the next text frame as JSON.
async fn call(ws: &mut Wss, req: &str) -> Value {
    ws.send(Message::Text(Utf8Bytes::from(req))).await.unwrap();
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("reply in time")
            .expect("stream open")
            .expect("websocket ok");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

async fn ping(ws: &mut Wss, id: u64) {
    let reply = call(ws, &format!(r#"{{"op":"ping","id":{id}}}"#)).await;
    assert_eq!(reply, json!({"id": id, "ok": true}));
}

/// Asserts the server refuses the TLS session: either the handshake fails or (TLS 1.3 verifies
/// the client's certificate after the client finished) the first request gets no answer.
async fn assert_refused(addr: SocketAddr, config: &Arc<ClientConfig>) {
    let Ok(mut tls) = tls_connect(addr, config).await else {
        return;
    };
    let req = "GET /v1/channels HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let _ = tls.write_all(req.as_bytes()).await;
    let _ = tls.flush().await;
    let answer = read_all(&mut tls).await;
    assert!(
        answer.is_empty(),
        "expected a refused session, got {:?}",
        String::from_utf8_lossy(&answer)
    );
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn a_tls_listener_serves_websocket_and_http() {
    let dir = TempDir::new("serve");
    let ca = Ca::new("test ca");
    let leaf = ca.leaf("gateway", &["localhost"], 1);
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let key = dir.write("key.pem", &leaf.key_pem);
    let toml = format!(
        "{}[listener.plain]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['CreateChannel']\n",
        tls_listener("private", &cert, &key, None)
    );
    let srv = TlsServer::start(&toml).await;
    let client = client_config(&ca.pem(), None);

    let mut ws = wss(srv.addr("private"), &client).await;
    ping(&mut ws, 1).await;

    let mut tls = tls_connect(srv.addr("private"), &client).await.unwrap();
    assert_eq!(server_cert(&tls), leaf.der);
    let (status, body) = https(&mut tls, "PUT", "/v1/channels/x").await;
    assert_eq!(status, 201, "{body}");

    // The WebSocket sees what HTTP did.
    let reply = call(&mut ws, r#"{"op":"subscribe","channel":"x","id":2}"#).await;
    assert_eq!(reply["ok"], json!(true), "{reply}");

    // A plain listener next to it still speaks plain HTTP.
    let (status, _, _) = common::http(srv.addr("plain"), "PUT", "/v1/channels/y", &[], "").await;
    assert_eq!(status, 201);

    drop(ws);
    srv.shutdown().await;
}

#[tokio::test]
async fn plain_tcp_on_a_tls_port_gets_no_http_and_the_server_stays_healthy() {
    let dir = TempDir::new("plain");
    let ca = Ca::new("test ca");
    let leaf = ca.leaf("gateway", &["localhost"], 1);
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let key = dir.write("key.pem", &leaf.key_pem);
    let srv = TlsServer::start(&tls_listener("private", &cert, &key, None)).await;

    let mut tcp = TcpStream::connect(srv.addr("private")).await.unwrap();
    tcp.write_all(b"GET /v1/channels HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut tcp).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plain client must get no HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // A client that never says hello is not waited for by the next one.
    let _silent = TcpStream::connect(srv.addr("private")).await.unwrap();

    let mut ws = wss(srv.addr("private"), &client_config(&ca.pem(), None)).await;
    ping(&mut ws, 1).await;
    drop(ws);
    srv.shutdown().await;
}

#[tokio::test]
async fn refusals_over_capacity_are_answered_inside_tls() {
    let dir = TempDir::new("refuse");
    let ca = Ca::new("test ca");
    let leaf = ca.leaf("gateway", &["localhost"], 1);
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let key = dir.write("key.pem", &leaf.key_pem);
    let toml = format!(
        "{}max_connections = 1\n",
        tls_listener("private", &cert, &key, None)
    );
    let srv = TlsServer::start(&toml).await;
    let client = client_config(&ca.pem(), None);
    let mut ws = wss(srv.addr("private"), &client).await;
    ping(&mut ws, 1).await;

    let mut tls = tls_connect(srv.addr("private"), &client).await.unwrap();
    let (status, body) = https(&mut tls, "GET", "/v1/channels").await;
    assert_eq!(status, 503, "{body}");

    drop(ws);
    srv.shutdown().await;
}

#[tokio::test]
async fn changed_files_are_reloaded_for_new_connections_and_broken_ones_ignored() {
    let dir = TempDir::new("reload");
    let ca = Ca::new("test ca");
    let first = ca.leaf("gateway-1", &["localhost"], 1);
    let cert = dir.write("cert.pem", &first.cert_pem);
    let key = dir.write("key.pem", &first.key_pem);
    let srv = TlsServer::start(&tls_listener("private", &cert, &key, None)).await;
    let addr = srv.addr("private");
    let client = client_config(&ca.pem(), None);

    let mut open = wss(addr, &client).await;
    ping(&mut open, 1).await;
    let tls = tls_connect(addr, &client).await.unwrap();
    assert_eq!(server_cert(&tls), first.der);
    drop(tls);

    // New certificate and key, written one after the other (the reloader may see the pair
    // half-written: it keeps the old one until both load).
    let second = ca.leaf("gateway-2", &["localhost"], 2);
    dir.write("key.pem", &second.key_pem);
    dir.write("cert.pem", &second.cert_pem);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let tls = tls_connect(addr, &client).await.unwrap();
        if server_cert(&tls) == second.der {
            break;
        }
        assert_eq!(server_cert(&tls), first.der);
        assert!(
            tokio::time::Instant::now() < deadline,
            "certificate not reloaded"
        );
        tokio::time::sleep(RELOAD).await;
    }
    // The session opened under the first certificate is still there.
    ping(&mut open, 2).await;

    // A broken certificate file: the last good one keeps serving.
    dir.write(
        "cert.pem",
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    tokio::time::sleep(RELOAD * 10).await;
    let mut tls = tls_connect(addr, &client).await.unwrap();
    assert_eq!(server_cert(&tls), second.der);
    let (status, body) = https(&mut tls, "PUT", "/v1/channels/after-broken").await;
    assert_eq!(status, 201, "{body}");
    ping(&mut open, 3).await;

    drop(open);
    srv.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_certificate_from_the_client_ca() {
    let dir = TempDir::new("mtls");
    let server_ca = Ca::new("server ca");
    let clients_ca = Ca::new("clients ca");
    let other_ca = Ca::new("other ca");
    let leaf = server_ca.leaf("gateway", &["localhost"], 1);
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let key = dir.write("key.pem", &leaf.key_pem);
    let ca = dir.write("clients-ca.pem", &clients_ca.pem());
    let srv = TlsServer::start(&tls_listener("private", &cert, &key, Some(&ca))).await;
    let addr = srv.addr("private");

    // No client certificate.
    assert_refused(addr, &client_config(&server_ca.pem(), None)).await;
    // A certificate from another CA.
    let stranger = other_ca.leaf("billing", &["billing.intranet"], 7);
    assert_refused(addr, &client_config(&server_ca.pem(), Some(&stranger))).await;

    // A certificate from the client CA.
    let billing = clients_ca.leaf("billing", &["billing.intranet"], 8);
    let client = client_config(&server_ca.pem(), Some(&billing));
    let mut tls = tls_connect(addr, &client).await.unwrap();
    let (status, body) = https(&mut tls, "PUT", "/v1/channels/invoices").await;
    assert_eq!(status, 201, "{body}");
    let mut ws = wss(addr, &client).await;
    ping(&mut ws, 1).await;

    // The server stayed healthy through the refusals.
    assert_refused(addr, &client_config(&server_ca.pem(), None)).await;
    ping(&mut ws, 2).await;
    drop(ws);
    srv.shutdown().await;
}

#[tokio::test]
async fn an_admin_listener_behind_mutual_tls_serves_certificate_holders_only() {
    let dir = TempDir::new("mtls-admin");
    let server_ca = Ca::new("server ca");
    let operators_ca = Ca::new("operators ca");
    let leaf = server_ca.leaf("gateway", &["localhost"], 1);
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let key = dir.write("key.pem", &leaf.key_pem);
    let ca = dir.write("operators-ca.pem", &operators_ca.pem());
    let srv = TlsServer::start(&format!(
        "[listener.ops]\nip='127.0.0.1'\nport=0\ndefault_endpoint_permissions=['Admin']\n\
         tls_cert='{}'\ntls_key='{}'\ntls_client_ca='{}'\n",
        cert.display(),
        key.display(),
        ca.display()
    ))
    .await;
    let addr = srv.addr("ops");
    // Without a certificate from the operators' CA, no TLS session: nothing is answered.
    assert_refused(addr, &client_config(&server_ca.pem(), None)).await;
    // With one, the metrics and the page, no token needed.
    let operator = operators_ca.leaf("operator", &["operator.intranet"], 2);
    let client = client_config(&server_ca.pem(), Some(&operator));
    let mut tls = tls_connect(addr, &client).await.unwrap();
    let (status, body) = https(&mut tls, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("tslm_build_info{version="), "{body}");
    let mut tls = tls_connect(addr, &client).await.unwrap();
    let (status, body) = https(&mut tls, "GET", "/admin").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<td>ops</td>") && body.contains("<td>mutual</td>"),
        "{body}"
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn files_that_do_not_load_fail_startup_naming_listener_and_file() {
    let dir = TempDir::new("startup");
    let ca = Ca::new("test ca");
    let leaf = ca.leaf("gateway", &["localhost"], 1);
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let missing_key = dir.path("missing-key.pem");
    let bind = |toml: String| async move {
        let config = Config::from_toml_str(&toml, "test").expect("valid config");
        match Server::bind(config).await {
            Ok(_) => panic!("bind must fail"),
            Err(e) => e.to_string(),
        }
    };

    let e = bind(tls_listener("private", &cert, &missing_key, None)).await;
    assert!(e.contains("listener `private`"), "{e}");
    assert!(
        e.contains(&format!("tls_key `{}`", missing_key.display())),
        "{e}"
    );

    let empty = dir.write("empty.pem", "");
    let key = dir.write("key.pem", &leaf.key_pem);
    let e = bind(tls_listener("edge", &empty, &key, None)).await;
    assert_eq!(
        e,
        format!(
            "listener `edge`: tls_cert `{}`: no certificate found",
            empty.display()
        )
    );

    let e = bind(tls_listener("edge", &cert, &key, Some(&empty))).await;
    assert!(
        e.starts_with("listener `edge`: tls_client_ca `") && e.ends_with("no certificate found"),
        "{e}"
    );
}

/// A gateway with one mutual-TLS listener `private` (`publisher_auth`) and `publishers` (TOML
/// tables), its server CA and the CA of its clients' certificates.
async fn mtls_gateway(dir: &TempDir, publishers: &str) -> (TlsServer, Ca, Ca) {
    let server_ca = Ca::new("server ca");
    let clients_ca = Ca::new("clients ca");
    let leaf = server_ca.leaf("gateway", &["localhost"], 1);
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let key = dir.write("key.pem", &leaf.key_pem);
    let ca = dir.write("clients-ca.pem", &clients_ca.pem());
    let toml = format!(
        "{}publisher_auth = true\n{publishers}",
        tls_listener("private", &cert, &key, Some(&ca))
    );
    (TlsServer::start(&toml).await, server_ca, clients_ca)
}

#[tokio::test]
async fn a_client_certificate_maps_to_a_publisher_and_its_channels() {
    let dir = TempDir::new("mtls-publisher");
    let (srv, server_ca, clients_ca) = mtls_gateway(
        &dir,
        "[publisher.billing]\ncertificates = ['billing.intranet']\noperations = ['create', 'publish']\nchannels = ['bills.*']\n",
    )
    .await;
    let addr = srv.addr("private");

    // The certificate's DNS name is a whitelisted publisher: no token needed.
    let billing = clients_ca.leaf("billing", &["billing.intranet"], 8);
    let client = client_config(&server_ca.pem(), Some(&billing));
    let mut tls = tls_connect(addr, &client).await.unwrap();
    let (status, body) = https(&mut tls, "PUT", "/v1/channels/bills.march").await;
    assert_eq!(status, 201, "{body}");
    let mut tls = tls_connect(addr, &client).await.unwrap();
    let (status, body) = https(&mut tls, "PUT", "/v1/channels/prices").await;
    assert_eq!(status, 403, "outside its patterns: {body}");
    let mut ws = wss(addr, &client).await;
    let r = call(
        &mut ws,
        r#"{"op":"publish","channel":"bills.march","data":1}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");

    // A certificate of the right CA that names no publisher authenticates nobody.
    let other = clients_ca.leaf("someone", &["someone.intranet"], 9);
    let client = client_config(&server_ca.pem(), Some(&other));
    let mut tls = tls_connect(addr, &client).await.unwrap();
    let (status, body) = https(&mut tls, "PUT", "/v1/channels/bills.april").await;
    assert_eq!(status, 401, "{body}");
    drop(ws);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_client_certificate_naming_two_publishers_authenticates_neither() {
    let dir = TempDir::new("mtls-ambiguous");
    // `audit` sorts before `billing`: the old lookup picked it for a certificate naming both.
    let (srv, server_ca, clients_ca) = mtls_gateway(
        &dir,
        "[publisher.audit]\ncertificates = ['audit.intranet']\noperations = ['create', 'publish', 'delete']\nchannels = ['*']\n\
         [publisher.billing]\ncertificates = ['billing.intranet']\noperations = ['create', 'publish']\nchannels = ['bills.*']\n",
    )
    .await;
    let addr = srv.addr("private");

    // CN names billing, a DNS SAN names audit: refused over HTTP and at the WebSocket handshake.
    let both = clients_ca.leaf("billing.intranet", &["audit.intranet"], 10);
    let client = client_config(&server_ca.pem(), Some(&both));
    let mut tls = tls_connect(addr, &client).await.unwrap();
    let (status, body) = https(&mut tls, "PUT", "/v1/channels/bills.march").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("several publishers"), "{body}");
    let tls = tls_connect(addr, &client).await.unwrap();
    let mut req = "wss://localhost/".into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("tslm.v1"),
    );
    match tokio::time::timeout(T, tokio_tungstenite::client_async(req, tls))
        .await
        .expect("an answer in time")
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401)
        }
        other => panic!("the handshake must be refused with 401: {other:?}"),
    }

    // Each name alone still maps to its publisher.
    let billing = clients_ca.leaf("billing", &["billing.intranet"], 11);
    let client = client_config(&server_ca.pem(), Some(&billing));
    let mut tls = tls_connect(addr, &client).await.unwrap();
    let (status, body) = https(&mut tls, "PUT", "/v1/channels/bills.march").await;
    assert_eq!(status, 201, "{body}");
    srv.shutdown().await;
}

#[tokio::test]
async fn the_cli_connects_over_wss_with_a_private_ca_and_a_client_certificate() {
    let dir = TempDir::new("cli-wss");
    let server_ca = Ca::new("server ca");
    let clients_ca = Ca::new("clients ca");
    let leaf = server_ca.leaf("gateway", &["localhost"], 1);
    let cert = dir.write("cert.pem", &leaf.cert_pem);
    let key = dir.write("key.pem", &leaf.key_pem);
    let ca = dir.write("clients-ca.pem", &clients_ca.pem());
    let trust = dir.write("server-ca.pem", &server_ca.pem());
    let billing = clients_ca.leaf("billing", &["billing.intranet"], 8);
    let client_cert = dir.write("billing.pem", &billing.cert_pem);
    let client_key = dir.write("billing-key.pem", &billing.key_pem);
    let toml = format!(
        "{}publisher_auth = true\n\
         [publisher.billing]\ncertificates = ['billing.intranet']\noperations = ['create', 'publish']\nchannels = ['bills.*']\n",
        tls_listener("private", &cert, &key, Some(&ca))
    );
    let srv = TlsServer::start(&toml).await;
    let url = format!("wss://localhost:{}/", srv.addr("private").port());
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tslm"))
            .args(&args)
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let p = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let with_cert = vec![
        "--ca".to_owned(),
        p(&trust),
        "--cert".to_owned(),
        p(&client_cert),
        "--cert-key".to_owned(),
        p(&client_key),
    ];
    let mut args = vec!["create".to_owned(), url.clone(), "bills.q1".to_owned()];
    args.extend(with_cert.clone());
    let (code, out, err) = run(args).await;
    assert_eq!(
        (code, out.as_str()),
        (Some(0), "created bills.q1\n"),
        "{err}"
    );
    let mut args = vec![
        "pub".to_owned(),
        url.clone(),
        "bills.q1".to_owned(),
        "5".to_owned(),
    ];
    args.extend(with_cert);
    let (code, out, err) = run(args).await;
    assert_eq!((code, out.as_str()), (Some(0), "1\n"), "{err}");
    // Without the private CA the server is not trusted; without a certificate it refuses.
    let (code, _, err) = run(vec!["create".into(), url.clone(), "bills.q2".into()]).await;
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = run(vec![
        "create".into(),
        url.clone(),
        "bills.q2".into(),
        "--ca".into(),
        p(&trust),
    ])
    .await;
    assert_eq!(code, Some(1), "{err}");
    srv.shutdown().await;
}

#[tokio::test]
async fn client_certificates_are_named_in_the_audit_log() {
    let dir = TempDir::new("mtls-audit");
    let log = dir.path("audit.jsonl");
    let (srv, server_ca, clients_ca) = mtls_gateway(
        &dir,
        &format!(
            "[publisher.audit]\ncertificates = ['audit.intranet']\nchannels = ['*']\n\
             [publisher.billing]\ncertificates = ['billing.intranet']\noperations = ['create', 'publish']\nchannels = ['bills.*']\n\
             [audit]\nfile = {:?}\n",
            log.display().to_string()
        ),
    )
    .await;
    let addr = srv.addr("private");
    let billing = clients_ca.leaf("billing", &["billing.intranet"], 12);
    let client = client_config(&server_ca.pem(), Some(&billing));
    let mut tls = tls_connect(addr, &client).await.unwrap();
    let (status, body) = https(&mut tls, "PUT", "/v1/channels/bills.may").await;
    assert_eq!(status, 201, "{body}");
    let mut ws = wss(addr, &client).await;
    let r = call(
        &mut ws,
        r#"{"op":"publish","channel":"bills.may","data":1}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    // A certificate naming two publishers: refused, with the names it carried.
    let both = clients_ca.leaf("billing.intranet", &["audit.intranet"], 13);
    let client = client_config(&server_ca.pem(), Some(&both));
    let mut tls = tls_connect(addr, &client).await.unwrap();
    let (status, _) = https(&mut tls, "PUT", "/v1/channels/bills.june").await;
    assert_eq!(status, 401);
    drop(ws);
    srv.shutdown().await;

    let text = std::fs::read_to_string(&log).unwrap();
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<String> = recs
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["type"].as_str().unwrap(),
                r["via"].as_str().unwrap_or("-"),
                r["outcome"].as_str().unwrap_or("-"),
                r["credential"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        seen[..6],
        [
            "start - - -",
            "auth request accepted certificate:billing.intranet",
            "create - - certificate:billing.intranet",
            "auth handshake accepted certificate:billing.intranet",
            "publish - - certificate:billing.intranet",
            "auth request refused certificate:billing.intranet,audit.intranet",
        ],
        "{text}"
    );
    assert_eq!(recs[4]["transport"], "websocket");
    assert_eq!(recs.last().unwrap()["type"], "stop");
    let report = tslm_server::audit::verify(text.as_bytes()).unwrap();
    assert_eq!(report.records, recs.len() as u64);
}
