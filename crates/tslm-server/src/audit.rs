//! The audit log (`[audit]`, docs/operations.md "Audit log"): one JSON line per publisher
//! authentication (accepted or refused), channel create, delete and publish, and per start and
//! stop of the gateway, chained by SHA-256 (see [`chain`]).
//!
//! The hot path never writes: it reserves a place in a bounded queue, does its work, and hands
//! the record over; a dedicated thread ([`writer`]) numbers, chains, writes and syncs. When the
//! queue is full, writes (create, delete, publish) are refused with `unavailable` before they
//! happen, so nothing is done that is not recorded; authentication records are counted instead
//! and the count written as a `dropped` record in the chain. Without `[audit]` every hook is one
//! branch on `None`.

pub mod chain;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;
use tslm_protocol::{ChannelName, Epoch, ErrorCode, ProtoError};

pub use crate::config::{AuditConfig, SyncPolicy};
pub use chain::{GENESIS, TailError, VerifyError, VerifyReport, verify};

use crate::identity::Identity;

/// Why the audit log cannot be opened at startup.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("audit log {path}: cannot open it: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("audit log {path}: {source}")]
    Tail { path: String, source: TailError },
    #[error("audit log {path}: cannot start its writer thread: {source}")]
    Thread {
        path: String,
        source: std::io::Error,
    },
}

/// Which transport a request came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    Websocket,
    Http,
}

/// Who did something, as far as the audit log is concerned: where from and with which credential
/// (a token's hash prefix, a key's id, a certificate's name: never a secret).
#[derive(Debug, Clone)]
pub(crate) struct Actor {
    pub transport: Transport,
    pub peer: Option<SocketAddr>,
    pub credential: Option<Arc<str>>,
}

impl Actor {
    pub(crate) fn new(transport: Transport, peer: Option<SocketAddr>) -> Self {
        Self {
            transport,
            peer,
            credential: None,
        }
    }
}

/// The credential of a publisher token: `token:sha256:` and the first 12 hex digits of its hash
/// (the start of its `token_hashes` entry).
pub(crate) fn token_credential(token: &str) -> Arc<str> {
    let hash = tslm_auth::token::hash_token(token);
    format!("token:sha256:{}", chain::hex(&hash[..6])).into()
}

/// The credential of a publisher key: `key:sha256:` and the first 12 hex digits of the SHA-256 of
/// the raw 32-byte Ed25519 public key.
pub(crate) fn key_credential(key: &[u8; 32]) -> Arc<str> {
    format!("key:sha256:{}", chain::hex(&chain::line_hash(key)[..6])).into()
}

/// The credential of a client certificate: `certificate:` and the name that matched (at most
/// [`MAX_CLAIM_BYTES`] of it).
pub(crate) fn certificate_credential(name: &str) -> Arc<str> {
    format!("certificate:{}", clip(name)).into()
}

/// The most bytes of a name a client chose (a publisher name a refused signature claims, a
/// certificate's names), or of a refusal's reason (which may quote a token's claims), that go
/// into a record: a line stays far below what the gateway reads
/// back ([`chain::MAX_LINE_BYTES`]), whatever a client sends.
pub(crate) const MAX_CLAIM_BYTES: usize = 256;

/// `s`, cut to at most [`MAX_CLAIM_BYTES`] on a character boundary.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(MAX_CLAIM_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// How an authentication ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    Accepted,
    Refused,
}

/// Where the credential was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Via {
    /// The WebSocket handshake (`Authorization` header or client certificate).
    Handshake,
    /// The WebSocket `auth` op.
    Auth,
    /// An HTTP API request (each one authenticates).
    Request,
}

/// The subject of a record: the fields every actor record carries.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Subject {
    listener: Arc<str>,
    transport: Transport,
    peer: Option<SocketAddr>,
    /// `anonymous`, `publisher` or `subscriber`.
    identity: &'static str,
    publisher: Option<String>,
    credential: Option<Arc<str>>,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn hex32<S: serde::Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&chain::hex(v))
}

/// One record, before the writer numbers and chains it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum Event {
    Start {
        version: &'static str,
        pid: u32,
        /// Whether the file already held records (the chain goes on from its last line).
        resumed: bool,
    },
    Stop,
    Auth {
        outcome: Outcome,
        via: Via,
        #[serde(flatten)]
        subject: Subject,
        /// Why it was refused (our words, never the credential).
        reason: Option<String>,
    },
    Create {
        #[serde(flatten)]
        subject: Subject,
        #[serde(serialize_with = "display")]
        channel: ChannelName,
        /// `false`: the channel existed already (the create was idempotent).
        created: bool,
        #[serde(serialize_with = "display")]
        epoch: Epoch,
    },
    Delete {
        #[serde(flatten)]
        subject: Subject,
        #[serde(serialize_with = "display")]
        channel: ChannelName,
    },
    Publish {
        #[serde(flatten)]
        subject: Subject,
        #[serde(serialize_with = "display")]
        channel: ChannelName,
        #[serde(serialize_with = "display")]
        epoch: Epoch,
        offset: u64,
        /// The `msg_id` was seen before: nothing was delivered again, `offset` is the original's.
        duplicate: bool,
        msg_id: Option<String>,
        /// Bytes of the payload (its JSON text).
        size: usize,
        #[serde(serialize_with = "hex32")]
        sha256: [u8; 32],
    },
    /// Authentication records that did not fit in the queue since the last `dropped` record.
    Dropped {
        count: u64,
    },
}

/// What goes down the queue to the writer thread. Not boxed: nearly every message is an
/// `Event`, and a box would cost an allocation per record (a full default queue holds about
/// 16 MiB of them, plus their strings).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Msg {
    Event(SystemTime, Event),
    /// Time to sync, for `sync = "interval"` (sent by a timer task).
    Tick,
    /// Write a `stop` record, sync, answer, and end.
    Stop(std::sync::mpsc::SyncSender<()>),
}

struct Shared {
    tx: mpsc::Sender<Msg>,
    /// Authentication records refused by a full queue since the writer last wrote their count.
    dropped: Arc<AtomicU64>,
}

/// A listener's handle on the audit log: cheap to clone, a no-op without `[audit]`.
#[derive(Clone)]
pub(crate) struct Audit {
    shared: Option<Arc<Shared>>,
    listener: Arc<str>,
}

/// A place reserved in the queue for the record of a write that is about to happen.
pub(crate) struct Slot<'a> {
    permit: mpsc::Permit<'a, Msg>,
    audit: &'a Audit,
}

fn behind() -> ProtoError {
    ProtoError::new(
        ErrorCode::Unavailable,
        "the audit log is behind: nothing was done; retry shortly",
    )
}

fn subject_of(
    listener: &Arc<str>,
    actor: &Actor,
    who: &Identity,
    publishers: &[crate::auth_config::Publisher],
) -> Subject {
    let (identity, publisher) = match who {
        Identity::Anonymous => ("anonymous", None),
        Identity::Publisher(i) => ("publisher", publishers.get(*i).map(|p| p.name.clone())),
        Identity::Subscriber(_) => ("subscriber", None),
    };
    Subject {
        listener: Arc::clone(listener),
        transport: actor.transport,
        peer: actor.peer,
        identity,
        publisher,
        credential: actor.credential.clone(),
    }
}

impl Slot<'_> {
    fn send(self, event: Event) {
        self.permit.send(Msg::Event(SystemTime::now(), event));
    }

    pub(crate) fn create(
        self,
        actor: &Actor,
        who: &Identity,
        publishers: &[crate::auth_config::Publisher],
        channel: &ChannelName,
        created: &tslm_hub::Created,
    ) {
        let subject = subject_of(&self.audit.listener, actor, who, publishers);
        self.send(Event::Create {
            subject,
            channel: channel.clone(),
            created: created.created,
            epoch: created.epoch,
        });
    }

    pub(crate) fn delete(
        self,
        actor: &Actor,
        who: &Identity,
        publishers: &[crate::auth_config::Publisher],
        channel: &ChannelName,
    ) {
        let subject = subject_of(&self.audit.listener, actor, who, publishers);
        self.send(Event::Delete {
            subject,
            channel: channel.clone(),
        });
    }

    /// Records a publish. The payload's hash is computed here, on the caller's task, after the
    /// hub has taken the message: no lock is held.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn publish(
        self,
        actor: &Actor,
        who: &Identity,
        publishers: &[crate::auth_config::Publisher],
        channel: &ChannelName,
        published: &tslm_hub::Published,
        msg_id: Option<&str>,
        payload: &[u8],
    ) {
        let subject = subject_of(&self.audit.listener, actor, who, publishers);
        self.send(Event::Publish {
            subject,
            channel: channel.clone(),
            epoch: published.epoch,
            offset: published.offset.0,
            duplicate: published.duplicate,
            msg_id: msg_id.map(str::to_owned),
            size: payload.len(),
            sha256: chain::line_hash(payload),
        });
    }
}

impl Audit {
    /// No audit log.
    pub(crate) fn off() -> Self {
        Self {
            shared: None,
            listener: Arc::from(""),
        }
    }

    /// A log whose writer never runs, with a queue of `n` records: for tests of the overflow
    /// policy (the receiver shows what was queued).
    #[cfg(test)]
    pub(crate) fn queue_for_tests(n: usize) -> (Self, mpsc::Receiver<Msg>) {
        let (tx, rx) = mpsc::channel(n);
        let shared = Arc::new(Shared {
            tx,
            dropped: Arc::default(),
        });
        let audit = Self {
            shared: Some(shared),
            listener: Arc::from("test"),
        };
        (audit, rx)
    }

    pub(crate) fn is_on(&self) -> bool {
        self.shared.is_some()
    }

    /// The same log, for records of listener `name`.
    pub(crate) fn for_listener(&self, name: &str) -> Self {
        Self {
            shared: self.shared.clone(),
            listener: Arc::from(name),
        }
    }

    /// Reserves the place of a write's record, before the write: `None` without an audit log;
    /// `unavailable` when the queue is full (or the writer has stopped), and then the write must
    /// not happen.
    pub(crate) fn reserve(&self) -> Result<Option<Slot<'_>>, ProtoError> {
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        match shared.tx.try_reserve() {
            Ok(permit) => Ok(Some(Slot {
                permit,
                audit: self,
            })),
            Err(_) => Err(behind()),
        }
    }

    /// Records a publisher authentication (or a refused one). Never waits: with the queue full the
    /// record is counted, and the writer writes the count as a `dropped` record.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn auth(
        &self,
        outcome: Outcome,
        via: Via,
        actor: &Actor,
        who: &Identity,
        claimed: Option<&str>,
        publishers: &[crate::auth_config::Publisher],
        reason: Option<&str>,
    ) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut subject = subject_of(&self.listener, actor, who, publishers);
        if subject.publisher.is_none() {
            subject.publisher = claimed.map(|c| clip(c).to_owned());
        }
        let event = Event::Auth {
            outcome,
            via,
            subject,
            reason: reason.map(|r| clip(r).to_owned()),
        };
        if let Err(mpsc::error::TrySendError::Full(_)) =
            shared.tx.try_send(Msg::Event(SystemTime::now(), event))
        {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The server's side of the audit log: its configuration, the queue and the writer thread.
pub(crate) struct AuditLog {
    cfg: AuditConfig,
    shared: Arc<Shared>,
    resumed: bool,
    /// The `seq` the `start` record gets.
    first_seq: u64,
    /// Tells the writer that shutdown has begun (see [`AuditLog::stop`]).
    stopping: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long shutdown waits for the writer to write its last records.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

impl AuditLog {
    /// Opens (or creates) the file, reads where its chain ends and starts the writer thread.
    pub(crate) fn open(cfg: &AuditConfig) -> Result<Self, OpenError> {
        let path = cfg.file.display().to_string();
        let mut options = std::fs::OpenOptions::new();
        options.read(true).append(true).create(true);
        // Created readable by the gateway's account and its group only: the records name
        // publishers, credentials' ids and client addresses.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
        let mut file = options.open(&cfg.file).map_err(|source| OpenError::Open {
            path: path.clone(),
            source,
        })?;
        let tail = chain::read_tail(&mut file).map_err(|source| OpenError::Tail {
            path: path.clone(),
            source,
        })?;
        let resumed = tail.is_some();
        let first_seq = tail.as_ref().map_or(0, |t| t.next_seq);
        let (tx, rx) = mpsc::channel(cfg.queue_records.get());
        let dropped = Arc::new(AtomicU64::new(0));
        let w = writer::Writer::new(
            file,
            tail.unwrap_or_else(chain::Tail::genesis),
            cfg.sync,
            Arc::clone(&dropped),
        )
        .map_err(|source| OpenError::Open {
            path: path.clone(),
            source,
        })?;
        let stopping = w.stopping();
        let thread = std::thread::Builder::new()
            .name("tslm-audit".into())
            .spawn(move || w.run(rx))
            .map_err(|source| OpenError::Thread { path, source })?;
        Ok(Self {
            cfg: cfg.clone(),
            shared: Arc::new(Shared { tx, dropped }),
            resumed,
            first_seq,
            stopping,
            thread: Some(thread),
        })
    }

    /// A log over `writer`, whatever it writes to (tests).
    #[cfg(test)]
    fn over<S: writer::Store>(
        cfg: AuditConfig,
        writer: writer::Writer<S>,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(cfg.queue_records.get());
        let stopping = writer.stopping();
        let thread = std::thread::spawn(move || writer.run(rx));
        Self {
            cfg,
            shared: Arc::new(Shared { tx, dropped }),
            resumed: false,
            first_seq: 0,
            stopping,
            thread: Some(thread),
        }
    }

    /// The handle listeners record through.
    pub(crate) fn handle(&self) -> Audit {
        Audit {
            shared: Some(Arc::clone(&self.shared)),
            listener: Arc::from(""),
        }
    }

    /// Writes the `start` record (waiting for room: nothing else is queued yet).
    pub(crate) async fn start(&self) {
        tracing::info!(
            file = %self.cfg.file.display(),
            seq = self.first_seq,
            resumed = self.resumed,
            queue_records = self.cfg.queue_records.get(),
            sync = ?self.cfg.sync,
            "audit log"
        );
        let event = Event::Start {
            version: env!("CARGO_PKG_VERSION"),
            pid: std::process::id(),
            resumed: self.resumed,
        };
        let _ = self
            .shared
            .tx
            .send(Msg::Event(SystemTime::now(), event))
            .await;
    }

    /// For `sync = "interval"`: wakes the writer every interval until `token` is cancelled.
    pub(crate) fn ticker(
        &self,
        token: tokio_util::sync::CancellationToken,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let SyncPolicy::Interval(every) = self.cfg.sync else {
            return None;
        };
        let tx = self.shared.tx.clone();
        Some(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => { let _ = tx.try_send(Msg::Tick); }
                }
            }
        })
    }

    /// Queues the `stop` record behind every record queued so far, and waits (at most
    /// [`STOP_TIMEOUT`]) until the writer has written and synced them all. A writer that cannot
    /// write gives up after a few retries instead of holding shutdown up.
    pub(crate) async fn stop(mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        let sent = tokio::time::timeout(STOP_TIMEOUT, self.shared.tx.send(Msg::Stop(ack_tx))).await;
        let thread = self.thread.take();
        let done = tokio::task::spawn_blocking(move || {
            let acked = ack_rx.recv_timeout(STOP_TIMEOUT).is_ok();
            if acked && let Some(t) = thread {
                let _ = t.join();
            }
            acked
        })
        .await
        .unwrap_or(false);
        if !matches!(sent, Ok(Ok(()))) || !done {
            tracing::error!(
                file = %self.cfg.file.display(),
                "the audit log writer did not finish in time: its last records may be missing"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn with_queue(n: usize) -> (Audit, mpsc::Receiver<Msg>, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::channel(n);
        let dropped = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            tx,
            dropped: Arc::clone(&dropped),
        });
        let audit = Audit {
            shared: Some(shared),
            listener: Arc::from("private"),
        };
        (audit, rx, dropped)
    }

    fn actor() -> Actor {
        Actor::new(Transport::Http, Some("127.0.0.1:9".parse().unwrap()))
    }

    #[test]
    fn a_full_queue_refuses_writes_and_counts_authentications() {
        let off = Audit::off();
        assert!(!off.is_on());
        assert!(off.reserve().unwrap().is_none());
        off.auth(
            Outcome::Accepted,
            Via::Auth,
            &actor(),
            &Identity::Anonymous,
            None,
            &[],
            None,
        );

        let (audit, mut rx, dropped) = with_queue(1);
        let channel = ChannelName::new("a").unwrap();
        let slot = audit.reserve().unwrap().unwrap();
        // The place is held while the write happens: a second write is refused meanwhile.
        let e = audit.reserve().err().unwrap();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("audit log is behind"), "{}", e.message);
        slot.delete(&actor(), &Identity::Anonymous, &[], &channel);
        assert_eq!(audit.reserve().err().unwrap().code, ErrorCode::Unavailable);
        // Authentications are never refused for it: they are counted.
        for _ in 0..3 {
            audit.auth(
                Outcome::Refused,
                Via::Request,
                &actor(),
                &Identity::Anonymous,
                Some("x"),
                &[],
                Some("token refused"),
            );
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        // The record queued is the delete, with its subject.
        let Some(Msg::Event(
            _,
            Event::Delete {
                subject,
                channel: c,
            },
        )) = rx.try_recv().ok()
        else {
            panic!("no delete record");
        };
        assert_eq!(c.as_str(), "a");
        assert_eq!(&*subject.listener, "private");
        assert_eq!(subject.identity, "anonymous");
        // Room again: writes go through.
        assert!(audit.reserve().unwrap().is_some());
        // A stopped writer refuses writes too.
        drop(rx);
        assert_eq!(audit.reserve().err().unwrap().code, ErrorCode::Unavailable);
    }

    #[test]
    fn credentials_name_no_secret() {
        let t = token_credential("tslm_secret");
        assert!(t.starts_with("token:sha256:") && t.len() == "token:sha256:".len() + 12);
        assert!(!t.contains("secret"));
        let line = tslm_auth::token::hash_line("tslm_secret");
        assert_eq!(&t["token:".len()..], &line[..19]);
        let k = key_credential(&[7; 32]);
        assert!(k.starts_with("key:sha256:") && k.len() == "key:sha256:".len() + 12);
        assert_eq!(
            &*certificate_credential("a.example"),
            "certificate:a.example"
        );
        // Names a client chose are cut, on a character boundary.
        let long = "é".repeat(MAX_CLAIM_BYTES);
        let c = certificate_credential(&long);
        assert_eq!(c.len(), "certificate:".len() + MAX_CLAIM_BYTES);
        let (audit, mut rx, _) = with_queue(4);
        audit.auth(
            Outcome::Refused,
            Via::Auth,
            &actor(),
            &Identity::Anonymous,
            Some(&format!("x{long}")),
            &[],
            None,
        );
        let Some(Msg::Event(_, Event::Auth { subject, .. })) = rx.try_recv().ok() else {
            panic!("no auth record");
        };
        let claimed = subject.publisher.unwrap();
        assert_eq!(claimed.len(), MAX_CLAIM_BYTES - 1);
        assert!(claimed.starts_with("xé"));
    }

    /// A store where every write fails, as on a full disk.
    struct Full;

    impl writer::Store for Full {
        fn append(&mut self, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("no space left on device"))
        }
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_writer_that_cannot_write_does_not_hold_up_shutdown_and_refuses_writes_meanwhile() {
        let cfg = AuditConfig {
            file: "unused".into(),
            sync: SyncPolicy::Every,
            queue_records: std::num::NonZeroUsize::new(16).unwrap(),
        };
        let dropped = Arc::new(AtomicU64::new(0));
        let w = writer::Writer::with_store(
            Full,
            chain::Tail::genesis(),
            cfg.sync,
            Arc::clone(&dropped),
        )
        .retrying_every(Duration::from_millis(1));
        let log = AuditLog::over(cfg, w, dropped);
        log.start().await;
        let audit = log.handle();
        // The writer is stuck on its first batch: the queue fills, then writes are refused.
        let mut refused = false;
        for _ in 0..100 {
            match audit.reserve() {
                Ok(Some(slot)) => slot.delete(
                    &actor(),
                    &Identity::Anonymous,
                    &[],
                    &ChannelName::new("a").unwrap(),
                ),
                Ok(None) => panic!("the log is on"),
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::Unavailable);
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "a stuck writer must fill the queue");
        // Shutdown gives up on it (it retries a few times) and returns.
        tokio::time::timeout(Duration::from_secs(30), log.stop())
            .await
            .expect("stop returns although nothing could be written");
    }
}
