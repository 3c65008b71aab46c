//! The audit log's writer thread: takes records off the queue in batches, numbers and chains
//! them, appends them to the file in one write, and syncs as `[audit] sync` says. It is the only
//! owner of the file and of the chain state, so no lock is held anywhere for its I/O.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

use super::chain::{self, Tail};
use super::{Event, Msg, SyncPolicy};

/// The most bytes gathered into one write.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// How long the writer waits before retrying a write that failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where the bytes go: a file, or in tests, a store that fails on demand.
pub(crate) trait Store: Send + 'static {
    /// Appends all of `bytes`, or nothing at all (a failed write is undone).
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    fn sync(&mut self) -> std::io::Result<()>;
}

/// A file opened for appending, with its length, so a write cut short can be undone.
pub(crate) struct FileStore {
    file: std::fs::File,
    len: u64,
}

impl FileStore {
    pub(crate) fn new(file: std::fs::File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }
}

impl Store for FileStore {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Part of the batch may be in the file: cut it back to the last whole line, so
                // that the retry (or the next start) finds the chain intact.
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    ts: &'a str,
    prev: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

pub(crate) struct Writer<S: Store> {
    store: S,
    tail: Tail,
    sync: SyncPolicy,
    dropped: Arc<AtomicU64>,
    /// Lines numbered and chained, not yet written.
    buf: Vec<u8>,
    /// Written since the last sync.
    unsynced: bool,
    last_sync: Instant,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
    /// How long to wait before retrying a failed write ([`RETRY_AFTER`]).
    retry_after: Duration,
    /// Set when shutdown begins: a write that keeps failing is given up, so that the `Stop`
    /// message behind it is reached.
    stopping: Arc<AtomicBool>,
}

/// `2026-12-07T01:02:03.456789Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

impl Writer<FileStore> {
    pub(crate) fn new(
        file: std::fs::File,
        tail: Tail,
        sync: SyncPolicy,
        dropped: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        Ok(Writer::with_store(
            FileStore::new(file)?,
            tail,
            sync,
            dropped,
        ))
    }
}

impl<S: Store> Writer<S> {
    pub(crate) fn with_store(
        store: S,
        tail: Tail,
        sync: SyncPolicy,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        Self {
            store,
            tail,
            sync,
            dropped,
            buf: Vec::with_capacity(64 * 1024),
            unsynced: false,
            last_sync: Instant::now(),
            failing: false,
            retry_after: RETRY_AFTER,
            stopping: Arc::default(),
        }
    }

    /// The flag that tells this writer shutdown has begun.
    pub(crate) fn stopping(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stopping)
    }

    /// Retries failed writes after `every` instead of [`RETRY_AFTER`] (tests).
    #[cfg(test)]
    pub(crate) fn retrying_every(mut self, every: Duration) -> Self {
        self.retry_after = every;
        self
    }

    /// Numbers, chains and buffers one record.
    fn push(&mut self, ts: SystemTime, event: &Event) {
        let ts = rfc3339(ts);
        let line = Line {
            seq: self.tail.next_seq,
            ts: &ts,
            prev: &self.tail.prev,
            event,
        };
        let start = self.buf.len();
        if serde_json::to_writer(&mut self.buf, &line).is_err() {
            // Our own types always serialise; should one not, nothing half-written stays.
            self.buf.truncate(start);
            tracing::error!("an audit record could not be encoded");
            return;
        }
        self.tail.prev = chain::hex(&chain::line_hash(&self.buf[start..]));
        self.tail.next_seq += 1;
        self.buf.push(b'\n');
    }

    /// Adds a `dropped` record when authentication records were refused by a full queue.
    fn push_dropped(&mut self) {
        let count = self.dropped.swap(0, Ordering::Relaxed);
        if count > 0 {
            self.push(SystemTime::now(), &Event::Dropped { count });
        }
    }

    /// Writes the buffered lines, retrying until it works or `give_up` says so; then syncs as
    /// the policy says (always when `force_sync`).
    fn flush(&mut self, force_sync: bool, give_up: impl Fn() -> bool) -> bool {
        while !self.buf.is_empty() {
            match self.store.append(&self.buf) {
                Ok(()) => {
                    if self.failing {
                        tracing::warn!("the audit log is written again");
                        self.failing = false;
                    }
                    self.buf.clear();
                    self.unsynced = true;
                }
                Err(e) => {
                    if !self.failing {
                        tracing::error!(error = %e, "cannot write the audit log: writes are refused once its queue is full; retrying every second");
                        self.failing = true;
                    }
                    if give_up() {
                        return false;
                    }
                    std::thread::sleep(self.retry_after);
                }
            }
        }
        let due = match self.sync {
            SyncPolicy::Every => true,
            SyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
            SyncPolicy::None => false,
        };
        if self.unsynced && (due || force_sync) {
            if let Err(e) = self.store.sync() {
                tracing::error!(error = %e, "cannot sync the audit log");
                return false;
            }
            self.unsynced = false;
            self.last_sync = Instant::now();
        }
        true
    }

    /// Runs until a `Stop` message (or until every sender is gone).
    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            let Some(first) = rx.blocking_recv() else {
                self.push_dropped();
                self.flush(true, || true);
                return;
            };
            let mut next = Some(first);
            let mut stop = None;
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Event(ts, event) => self.push(ts, &event),
                    Msg::Tick => {}
                    Msg::Stop(ack) => {
                        stop = Some(ack);
                        break;
                    }
                }
                if self.buf.len() >= MAX_BATCH_BYTES {
                    break;
                }
                next = rx.try_recv().ok();
            }
            self.push_dropped();
            if let Some(ack) = stop {
                self.push(SystemTime::now(), &Event::Stop);
                // A few retries at most: shutdown does not wait forever.
                let tries = std::cell::Cell::new(0u32);
                let ok = self.flush(true, || {
                    tries.set(tries.get() + 1);
                    tries.get() > 5
                });
                if ok {
                    let _ = ack.send(());
                }
                return;
            }
            let stopping = Arc::clone(&self.stopping);
            self.flush(false, || stopping.load(Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |s: u64, us: u32| {
            rfc3339(
                SystemTime::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_micros(us.into()),
            )
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1_700_000_000, 42), "2023-11-14T22:13:20.000042Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
    }

    /// Bytes in memory; fails the next `fail` appends.
    #[derive(Clone, Default)]
    struct Memory {
        bytes: Arc<Mutex<Vec<u8>>>,
        fail: Arc<AtomicU64>,
        syncs: Arc<AtomicU64>,
    }

    impl Store for Memory {
        fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(std::io::Error::other("disk full"));
            }
            self.bytes.lock().unwrap().extend_from_slice(bytes);
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            self.syncs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn start_event() -> Event {
        Event::Start {
            version: "t",
            pid: 1,
            resumed: false,
        }
    }

    #[test]
    fn a_failed_write_is_retried_and_the_chain_stays_whole() {
        let mem = Memory::default();
        mem.fail.store(2, Ordering::SeqCst);
        let dropped = Arc::new(AtomicU64::new(3));
        let mut w = Writer::with_store(mem.clone(), Tail::genesis(), SyncPolicy::Every, dropped);
        w.retry_after = Duration::from_millis(1);
        let (tx, rx) = mpsc::channel(16);
        tx.try_send(Msg::Event(SystemTime::now(), start_event()))
            .unwrap();
        tx.try_send(Msg::Tick).unwrap();
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        tx.try_send(Msg::Stop(ack_tx)).unwrap();
        w.run(rx);
        ack_rx.try_recv().unwrap();
        let text = String::from_utf8(mem.bytes.lock().unwrap().clone()).unwrap();
        let report = chain::verify(text.as_bytes()).unwrap();
        // start, the dropped count, stop.
        assert_eq!(report.records, 3, "{text}");
        assert_eq!(report.dropped_total, 3);
        assert!(text.lines().last().unwrap().contains(r#""type":"stop""#));
        assert!(mem.syncs.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn a_store_that_never_recovers_gives_up_at_stop_without_an_ack() {
        let mem = Memory::default();
        mem.fail.store(u64::MAX, Ordering::SeqCst);
        let mut w = Writer::with_store(
            mem.clone(),
            Tail::genesis(),
            SyncPolicy::None,
            Arc::default(),
        );
        w.retry_after = Duration::from_millis(1);
        let (tx, rx) = mpsc::channel(16);
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        tx.try_send(Msg::Stop(ack_tx)).unwrap();
        w.run(rx);
        assert!(ack_rx.try_recv().is_err());
        assert!(mem.bytes.lock().unwrap().is_empty());
    }

    #[test]
    fn a_writer_whose_senders_are_gone_flushes_and_ends() {
        let mem = Memory::default();
        let w = Writer::with_store(
            mem.clone(),
            Tail {
                next_seq: 7,
                prev: "a".repeat(64),
            },
            SyncPolicy::Interval(Duration::from_secs(3600)),
            Arc::default(),
        );
        let (tx, rx) = mpsc::channel(16);
        tx.try_send(Msg::Event(SystemTime::now(), start_event()))
            .unwrap();
        drop(tx);
        w.run(rx);
        let text = String::from_utf8(mem.bytes.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["prev"], "a".repeat(64));
        assert_eq!(v["type"], "start");
        // Synced at the end although the interval had not passed.
        assert_eq!(mem.syncs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_interval_syncs_only_once_it_has_passed() {
        let mem = Memory::default();
        let every = Duration::from_millis(5);
        let w = Writer::with_store(
            mem.clone(),
            Tail::genesis(),
            SyncPolicy::Interval(every),
            Arc::default(),
        );
        let (tx, rx) = mpsc::channel(16);
        let thread = std::thread::spawn(move || w.run(rx));
        // Written at once; synced by a tick once the interval has passed (or by the batch itself
        // on a machine slow enough that it had already passed): one sync before any stop.
        tx.blocking_send(Msg::Event(SystemTime::now(), start_event()))
            .unwrap();
        std::thread::sleep(every * 2);
        tx.blocking_send(Msg::Tick).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while mem.syncs.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no sync after the interval");
            std::thread::sleep(Duration::from_millis(1));
        }
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        tx.blocking_send(Msg::Stop(ack_tx)).unwrap();
        ack_rx.recv().unwrap();
        thread.join().unwrap();
        // Then the stop record's forced one.
        assert_eq!(mem.syncs.load(Ordering::SeqCst), 2);
        assert_eq!(
            chain::verify(&mem.bytes.lock().unwrap()[..])
                .unwrap()
                .records,
            2
        );
    }

    #[test]
    fn with_sync_none_only_the_stop_syncs() {
        let mem = Memory::default();
        let w = Writer::with_store(
            mem.clone(),
            Tail::genesis(),
            SyncPolicy::None,
            Arc::default(),
        );
        let (tx, rx) = mpsc::channel(16);
        for _ in 0..3 {
            tx.try_send(Msg::Event(SystemTime::now(), start_event()))
                .unwrap();
            tx.try_send(Msg::Tick).unwrap();
        }
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        tx.try_send(Msg::Stop(ack_tx)).unwrap();
        w.run(rx);
        ack_rx.try_recv().unwrap();
        assert_eq!(mem.syncs.load(Ordering::SeqCst), 1);
        assert_eq!(
            chain::verify(&mem.bytes.lock().unwrap()[..])
                .unwrap()
                .records,
            4
        );
    }
}
