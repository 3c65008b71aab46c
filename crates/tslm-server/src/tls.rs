//! TLS on listeners: loading PEM files into a rustls [`ServerConfig`], reloading them when they
//! change on disk, and the names a client certificate vouches for (mutual TLS).
//!
//! Crypto comes from rustls' `ring` provider, passed explicitly to every builder: nothing here
//! reads or installs rustls' process-wide default provider.
//!
//! A [`TlsState`] holds the listener's current config behind a lock that is only held to clone
//! an `Arc` (never across an `.await`). [`TlsState::watch`] polls the files' modification times
//! and sizes every [`RELOAD_INTERVAL`]; a change loads the files again and, when they load, swaps
//! the new config in for connections accepted from then on. Connections already open keep the
//! config they were accepted with. Files that fail to load leave the last good config serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{InconsistentKeys, RootCertStore, ServerConfig, ServerConnection};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// How often a TLS listener checks whether its certificate, key or client CA files changed
/// (modification time and size). Embedders and tests may change it with
/// [`crate::Server::set_tls_reload_interval`].
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The application protocols offered in ALPN: HTTP/2 where the listener serves it (preferred,
/// so a browser that speaks it picks it), and HTTP/1.1 always (WebSocket handshakes, and every
/// client without HTTP/2).
pub(crate) const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Which of a listener's TLS files an error is about (displayed as its configuration key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsFile {
    Cert,
    Key,
    ClientCa,
}

impl std::fmt::Display for TlsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cert => "tls_cert",
            Self::Key => "tls_key",
            Self::ClientCa => "tls_client_ca",
        })
    }
}

/// A TLS file that could not be loaded: which key of the listener, its path and why, as in
/// ``tls_cert `/etc/tslm/cert.pem`: no certificate found``. Never contains key material.
#[derive(Debug, thiserror::Error)]
#[error("{file} `{}`: {reason}", path.display())]
pub struct TlsError {
    file: TlsFile,
    path: PathBuf,
    reason: String,
}

impl TlsError {
    fn new(file: TlsFile, path: &Path, reason: impl Into<String>) -> Self {
        Self {
            file,
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// One listener's TLS: its files and the config new connections are accepted with.
pub(crate) struct TlsState {
    listener: String,
    files: TlsConfig,
    current: RwLock<Configs>,
    /// The files' stamps as they were just before the current config was read.
    loaded: Stamps,
    /// When the current certificate expires (Unix seconds; `i64::MIN` when it could not be read).
    not_after: std::sync::atomic::AtomicI64,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads `files` for the listener `listener`; the error names the file at fault.
    pub(crate) fn load(listener: &str, files: &TlsConfig) -> Result<Self, TlsError> {
        // Stamps first: a file changed while it is read is seen as changed by the next poll.
        let loaded = Stamps::of(files);
        let (config, not_after) = build_config(files)?;
        Ok(Self {
            listener: listener.to_owned(),
            files: files.clone(),
            current: RwLock::new(Configs::of(config)),
            loaded,
            not_after: std::sync::atomic::AtomicI64::new(not_after.unwrap_or(i64::MIN)),
        })
    }

    /// When the certificate served now expires, in Unix seconds (for the metrics endpoint).
    pub(crate) fn not_after_unix(&self) -> Option<i64> {
        Some(self.not_after.load(std::sync::atomic::Ordering::Relaxed)).filter(|t| *t != i64::MIN)
    }

    /// The listener's HTTP/2 settings, when it offers HTTP/2 in ALPN.
    pub(crate) fn http2(&self) -> Option<crate::config::Http2Config> {
        self.files.http2
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub(crate) fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the current config, for one new connection.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let configs = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(Arc::clone(&configs.serving))
    }

    /// An acceptor for a connection refused before its request: HTTP/1.1 only in ALPN, since
    /// the refusal is an HTTP/1.1 answer written at once (a browser that offered `h2` reads it).
    pub(crate) fn refusal_acceptor(&self) -> TlsAcceptor {
        let configs = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(Arc::clone(&configs.refusing))
    }

    /// Polls the files every `every` and reloads them when they change, until `shutdown`.
    pub(crate) async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut seen = self.loaded.clone();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate; the files were just loaded
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            // File system calls block: off the runtime's worker threads.
            let (state, before) = (Arc::clone(&self), seen.clone());
            match tokio::task::spawn_blocking(move || state.reload_if_changed(&before)).await {
                Ok(Some(now)) => seen = now,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(listener = %self.listener, error = %e, "tls: reload check failed");
                }
            }
        }
    }

    /// Reloads the files if their stamps differ from `seen`; returns the new stamps when they
    /// did (whether or not the files loaded, so a broken file is reported once, not every poll).
    fn reload_if_changed(&self, seen: &Stamps) -> Option<Stamps> {
        let now = Stamps::of(&self.files);
        if now == *seen {
            return None;
        }
        match build_config(&self.files) {
            Ok((config, not_after)) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Configs::of(config);
                self.not_after.store(
                    not_after.unwrap_or(i64::MIN),
                    std::sync::atomic::Ordering::Relaxed,
                );
                tracing::info!(
                    listener = %self.listener,
                    cert = %self.files.cert.display(),
                    "tls: files changed, certificate reloaded for new connections"
                );
            }
            Err(e) => {
                tracing::warn!(
                    listener = %self.listener,
                    error = %e,
                    "tls: files changed but do not load; still serving the previous certificate"
                );
            }
        }
        Some(now)
    }
}

/// What a poll compares: for each file, its modification time and size (`None`: unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamps([Option<(Option<SystemTime>, u64)>; 3]);

impl Stamps {
    fn of(files: &TlsConfig) -> Self {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        Self([
            stamp(&files.cert),
            stamp(&files.key),
            files.client_ca.as_deref().and_then(stamp),
        ])
    }
}

/// The configs of one load of the files: the one connections are served with, and the same
/// offering only HTTP/1.1, for refusals.
struct Configs {
    serving: Arc<ServerConfig>,
    refusing: Arc<ServerConfig>,
}

impl Configs {
    fn of(serving: ServerConfig) -> Self {
        let mut refusing = serving.clone();
        refusing.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        Self {
            serving: Arc::new(serving),
            refusing: Arc::new(refusing),
        }
    }
}

/// The listener's rustls config from its files: the certificate chain and key and, with a
/// client CA, a verifier that requires a client certificate issued by one of those CAs.
/// The server config of `files`, and when its certificate expires (Unix seconds).
fn build_config(files: &TlsConfig) -> Result<(ServerConfig, Option<i64>), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(TlsFile::Cert, &files.cert)?;
    let not_after = chain.first().and_then(|der| {
        x509_parser::parse_x509_certificate(der)
            .ok()
            .map(|(_, c)| c.validity().not_after.timestamp())
    });
    let key = read_key(&files.key)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::new(TlsFile::Key, &files.key, format!("unusable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::new(
                TlsFile::Key,
                &files.key,
                format!(
                    "does not match the certificate in `{}`",
                    files.cert.display()
                ),
            ));
        }
        Err(e) => {
            return Err(TlsError::new(
                TlsFile::Cert,
                &files.cert,
                format!("invalid certificate: {e}"),
            ));
        }
    }
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(TlsFile::Cert, &files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(client_verifier(ca, &provider)?),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    config.alpn_protocols = match files.http2 {
        Some(_) => vec![ALPN_H2.to_vec(), ALPN_HTTP_1_1.to_vec()],
        None => vec![ALPN_HTTP_1_1.to_vec()],
    };
    Ok((config, not_after))
}

/// Every certificate in the PEM file at `path` (at least one).
fn read_certs(file: TlsFile, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(file, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(file, path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(file, path, "no certificate found"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(TlsFile::Key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        let reason = match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key found (PKCS#8, PKCS#1 or SEC1 PEM)".to_owned()
            }
            e => format!("invalid PEM: {e}"),
        };
        TlsError::new(TlsFile::Key, path, reason)
    })
}

fn read(file: TlsFile, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::new(file, path, format!("cannot read: {e}")))
}

/// A verifier requiring a client certificate issued by one of the CAs in the file at `path`.
fn client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in read_certs(TlsFile::ClientCa, path)? {
        roots.add(ca).map_err(|e| {
            TlsError::new(
                TlsFile::ClientCa,
                path,
                format!("invalid CA certificate: {e}"),
            )
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|e| TlsError::new(TlsFile::ClientCa, path, e.to_string()))
}

/// The names the verified client certificate of `conn` vouches for (see [`cert_names`]);
/// empty when the client sent none (a listener without `tls_client_ca`).
pub(crate) fn peer_cert_names(conn: &ServerConnection) -> Vec<String> {
    conn.peer_certificates()
        .and_then(<[_]>::first)
        .map(|end_entity| cert_names(end_entity))
        .unwrap_or_default()
}

/// The names a DER certificate vouches for: its subject common names, then its DNS subject
/// alternative names, in certificate order, without duplicates. Empty if it does not parse
/// (which cannot happen for a chain rustls verified).
pub(crate) fn cert_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    let mut add = |name: &str| {
        if !name.is_empty() && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    };
    for cn in cert.subject().iter_common_name() {
        if let Ok(cn) = cn.as_str() {
            add(cn);
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                add(dns);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    #[test]
    fn names_are_the_common_name_then_dns_alternative_names() {
        let mut params =
            CertificateParams::new(vec!["billing.intranet".to_owned(), "billing".to_owned()])
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "billing");
        let cert = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
        assert_eq!(cert_names(cert.der()), ["billing", "billing.intranet"]);
    }

    #[test]
    fn names_of_garbage_are_empty() {
        assert!(cert_names(b"not a certificate").is_empty());
    }

    /// A fresh temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("tslm-tls-unit-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, contents).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn self_signed(name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &TempDir, cert: &str, key: &str) -> TlsConfig {
        TlsConfig {
            cert: dir.write("cert.pem", cert),
            key: dir.write("key.pem", key),
            client_ca: None,
            http2: None,
        }
    }

    #[test]
    fn errors_name_the_file_at_fault() {
        let dir = TempDir::new("errors");
        let (cert, key) = self_signed("localhost");
        let (_, other_key) = self_signed("other");

        let f = files(&dir, "", &key);
        let e = TlsState::load("l", &f).err().unwrap().to_string();
        assert!(
            e.starts_with("tls_cert `") && e.ends_with("cert.pem`: no certificate found"),
            "{e}"
        );

        let f = files(&dir, &cert, &cert);
        let e = TlsState::load("l", &f).err().unwrap().to_string();
        assert!(
            e.starts_with("tls_key `") && e.contains("no private key found"),
            "{e}"
        );

        let f = files(&dir, &cert, &other_key);
        let e = TlsState::load("l", &f).err().unwrap().to_string();
        assert!(
            e.starts_with("tls_key `") && e.contains("does not match"),
            "{e}"
        );

        let mut f = files(&dir, &cert, &key);
        f.client_ca = Some(dir.0.join("missing-ca.pem"));
        let e = TlsState::load("l", &f).err().unwrap().to_string();
        assert!(
            e.starts_with("tls_client_ca `") && e.contains("cannot read"),
            "{e}"
        );

        let f = files(&dir, &cert, &key);
        let state = TlsState::load("l", &f).unwrap();
        assert!(!state.requires_client_cert());
    }

    #[test]
    fn a_change_reloads_and_a_broken_file_keeps_the_last_good_config() {
        let dir = TempDir::new("reload");
        let (cert, key) = self_signed("one");
        let f = files(&dir, &cert, &key);
        let state = TlsState::load("l", &f).unwrap();
        let first = state.acceptor().config().clone();
        assert_eq!(
            state.reload_if_changed(&state.loaded),
            None,
            "nothing changed"
        );

        let (cert2, key2) = self_signed("two-and-longer");
        files(&dir, &cert2, &key2);
        let seen = state.reload_if_changed(&state.loaded).unwrap();
        let second = state.acceptor().config().clone();
        assert!(!Arc::ptr_eq(&first, &second), "swapped");

        dir.write("cert.pem", "-----BEGIN CERTIFICATE-----\nbroken\n");
        let seen = state.reload_if_changed(&seen).unwrap();
        assert!(Arc::ptr_eq(&second, state.acceptor().config()), "kept");
        assert_eq!(
            state.reload_if_changed(&seen),
            None,
            "a broken file is tried once"
        );
    }
}
