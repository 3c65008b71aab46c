//! Connections that outlive one HTTP request. A long-polling client's connection (its identity,
//! subscriptions, outbox and budgets: a [`crate::connection::Connection`]) is parked here between
//! polls under an unguessable key, checked out by the request that continues it, and parked again
//! when that request ends. One that is not continued within the idle timeout is ended by
//! [`Registry::sweep`], which drops it (its subscriptions go, as when a WebSocket closes), so a
//! connection never depends on a client coming back to be cleaned up.
//!
//! Bounded: at most `max` connections are parked; past that, [`Registry::park`] refuses (the
//! `full` policy: the new long-poll is answered 503 by its transport, parked ones are kept).
//!
//! The long-polling transport is its first user; until it lands only tests drive it (unit tests
//! here, and `connection/tests.rs`, which parks a real `Connection` and sweeps it).
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A parked connection's key: 128 random bits, so that a client can only continue its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key(u128);

impl Key {
    fn random() -> Self {
        Key(rand::random())
    }

    /// The key as a client sends it back (32 lowercase hex digits).
    pub(crate) fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }

    /// A key a client sent; `None` when it is not 32 hex digits.
    pub(crate) fn from_hex(s: &str) -> Option<Self> {
        (s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u128::from_str_radix(s, 16).ok().map(Key))
            .flatten()
    }
}

/// Why a connection could not be parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegistryError {
    #[error("the gateway holds {max} parked connections, the most it allows")]
    Full { max: usize },
}

/// Why a key did not check a connection out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CheckoutError {
    /// Unknown, or ended after its idle timeout.
    #[error("no such connection (it ended, or was never opened)")]
    Unknown,
    /// Another request holds it (two polls at once on one connection).
    #[error("the connection is in use by another request")]
    Busy,
}

enum Slot<T> {
    Parked {
        item: T,
        since: Instant,
    },
    /// Checked out since `since`; the request holding it parks it again or ends it.
    Out {
        since: Instant,
    },
}

/// Parked connections by key (see the module documentation).
pub(crate) struct Registry<T> {
    slots: Mutex<HashMap<Key, Slot<T>>>,
    max: usize,
    idle: Duration,
}

impl<T> Registry<T> {
    /// At most `max` connections; one not continued within `idle` is ended.
    pub(crate) fn new(max: usize, idle: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            max,
            idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot<T>>> {
        // Every update is a single insert or remove: a poisoned map is still consistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection, checked out by the request that opened it; returns its key.
    pub(crate) fn open(&self) -> Result<Key, RegistryError> {
        let mut slots = self.lock();
        if slots.len() >= self.max {
            return Err(RegistryError::Full { max: self.max });
        }
        let mut key = Key::random();
        while slots.contains_key(&key) {
            key = Key::random();
        }
        slots.insert(
            key,
            Slot::Out {
                since: Instant::now(),
            },
        );
        Ok(key)
    }

    /// Parks `item` under `key` (after the request that held it ends); its idle time starts now.
    /// A key that was forgotten meanwhile ends `item` (returned, so the caller drops it outside
    /// the lock).
    pub(crate) fn park(&self, key: Key, item: T) -> Option<T> {
        let mut slots = self.lock();
        match slots.get_mut(&key) {
            Some(slot @ Slot::Out { .. }) => {
                *slot = Slot::Parked {
                    item,
                    since: Instant::now(),
                };
                None
            }
            _ => Some(item),
        }
    }

    /// Takes the connection under `key` for a request.
    pub(crate) fn checkout(&self, key: Key) -> Result<T, CheckoutError> {
        let mut slots = self.lock();
        let slot = slots.get_mut(&key).ok_or(CheckoutError::Unknown)?;
        match std::mem::replace(
            slot,
            Slot::Out {
                since: Instant::now(),
            },
        ) {
            Slot::Parked { item, .. } => Ok(item),
            out @ Slot::Out { .. } => {
                *slot = out;
                Err(CheckoutError::Busy)
            }
        }
    }

    /// Forgets `key` (the client ended its connection, or its request failed for good).
    pub(crate) fn forget(&self, key: Key) -> Option<T> {
        match self.lock().remove(&key) {
            Some(Slot::Parked { item, .. }) => Some(item),
            _ => None,
        }
    }

    /// Ends the connections parked for longer than the idle timeout, and forgets keys checked
    /// out for longer than that plus `request_bound` (a request that never came back). Returns
    /// what ended, dropped by the caller outside the lock.
    pub(crate) fn sweep(&self, request_bound: Duration) -> Vec<T> {
        let now = Instant::now();
        let mut slots = self.lock();
        let expired: Vec<Key> = slots
            .iter()
            .filter(|(_, slot)| match slot {
                Slot::Parked { since, .. } => now.duration_since(*since) >= self.idle,
                Slot::Out { since } => now.duration_since(*since) >= self.idle + request_bound,
            })
            .map(|(k, _)| *k)
            .collect();
        let ended = expired
            .into_iter()
            .filter_map(|k| match slots.remove(&k) {
                Some(Slot::Parked { item, .. }) => Some(item),
                _ => None,
            })
            .collect();
        // The caller drops what ended (its clean-up unsubscribes) after the lock is released.
        drop(slots);
        ended
    }

    /// Connections registered (parked or checked out).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_as_hex_and_refuse_anything_else() {
        let k = Key::random();
        assert_eq!(Key::from_hex(&k.to_hex()), Some(k));
        assert_eq!(k.to_hex().len(), 32);
        for bad in [
            "",
            "abc",
            &"g".repeat(32),
            &"0".repeat(33),
            "+0000000000000000000000000000000",
        ] {
            assert_eq!(Key::from_hex(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_connection_is_continued_by_its_key_once_at_a_time() {
        let r: Registry<&str> = Registry::new(8, Duration::from_secs(30));
        let k = r.open().unwrap();
        assert_eq!(
            r.checkout(k),
            Err(CheckoutError::Busy),
            "the opening request holds it"
        );
        assert_eq!(r.park(k, "conn"), None);
        assert_eq!(r.checkout(k), Ok("conn"));
        assert_eq!(r.checkout(k), Err(CheckoutError::Busy));
        assert_eq!(r.park(k, "conn"), None);
        assert_eq!(r.checkout(Key::random()), Err(CheckoutError::Unknown));
        assert_eq!(r.forget(k), Some("conn"));
        assert_eq!(r.checkout(k), Err(CheckoutError::Unknown));
        assert_eq!(
            r.park(k, "late"),
            Some("late"),
            "a forgotten key ends what comes back"
        );
        assert_eq!(r.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_end_after_the_timeout_not_before() {
        let r: Registry<u32> = Registry::new(8, Duration::from_secs(30));
        let (a, b) = (r.open().unwrap(), r.open().unwrap());
        r.park(a, 1);
        tokio::time::advance(Duration::from_secs(20)).await;
        r.park(b, 2);
        assert!(r.sweep(Duration::from_secs(60)).is_empty());
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(r.sweep(Duration::from_secs(60)), vec![1], "idle 35 s");
        // Continuing a connection restarts its idle time.
        assert_eq!(r.checkout(b), Ok(2));
        r.park(b, 2);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(r.sweep(Duration::from_secs(60)).is_empty());
        assert_eq!(r.checkout(b), Ok(2));
        // A request that never parks it again is forgotten after idle + its bound.
        tokio::time::advance(Duration::from_secs(89)).await;
        assert!(r.sweep(Duration::from_secs(60)).is_empty());
        assert_eq!(r.len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(r.sweep(Duration::from_secs(60)).is_empty());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let r: Registry<u8> = Registry::new(2, Duration::from_secs(1));
        r.open().unwrap();
        r.open().unwrap();
        assert_eq!(r.open(), Err(RegistryError::Full { max: 2 }));
    }

    /// A parked connection ends like a dropped WebSocket session: its subscriptions go.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_cleaned_up_when_swept() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let r = Registry::new(4, Duration::from_secs(5));
        let k = r.open().unwrap();
        r.park(k, Guard(Arc::clone(&dropped)));
        tokio::time::advance(Duration::from_secs(6)).await;
        let ended = r.sweep(Duration::ZERO);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            0,
            "not dropped under the lock"
        );
        drop(ended);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}
