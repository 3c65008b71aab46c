//! What this gateway process is, for the operator's routes (`/metrics`, `/admin`): when it
//! started and which listeners it serves. Built once at [`crate::Server::run`], shared by every
//! listener; it holds no counters (those stay in [`crate::stats`] and the hub).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime};

use tokio::sync::Semaphore;

use crate::config::Permissions;

/// The gateway's version, as built.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The process as a whole.
#[derive(Debug)]
pub(crate) struct Node {
    /// When the server started serving (wall clock, for `process_start_time_seconds`).
    pub started: SystemTime,
    /// The same moment on the monotonic clock, for the uptime.
    pub started_at: Instant,
    /// Every listener, ordered by name.
    pub listeners: Vec<ListenerInfo>,
    /// Each bound address's connection slots (`max_connections`), set once the listeners'
    /// contexts exist.
    slots: OnceLock<Vec<Slots>>,
    /// The listeners' TLS, for their certificates' expiry (replaced after each reload).
    tls: std::sync::Mutex<Vec<(String, Arc<crate::tls::TlsState>)>>,
}

/// One bound address's connection slots: an admitted connection holds one permit.
#[derive(Debug)]
pub(crate) struct Slots {
    pub listener: String,
    pub limit: Arc<Semaphore>,
    pub max: usize,
}

/// A listener's admitted connections and their limit, all its addresses together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Occupancy {
    pub listener: String,
    pub open: usize,
    pub max: usize,
}

/// One listener as the admin page shows it (no tokens, no file paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerInfo {
    pub name: String,
    pub addrs: Vec<SocketAddr>,
    pub permissions: Permissions,
    /// `none`, `server` or `mutual`.
    pub tls: &'static str,
    /// Whether it requires one of its `auth_tokens`.
    pub tokens: bool,
}

impl Node {
    /// A node starting now with these listeners.
    pub(crate) fn starting(mut listeners: Vec<ListenerInfo>) -> Self {
        listeners.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            started: SystemTime::now(),
            started_at: Instant::now(),
            listeners,
            slots: OnceLock::new(),
            tls: std::sync::Mutex::default(),
        }
    }

    /// Records the TLS of the running listeners (at start and after each reload).
    pub(crate) fn set_tls(&self, tls: Vec<(String, Arc<crate::tls::TlsState>)>) {
        *self.tls.lock().unwrap_or_else(|p| p.into_inner()) = tls;
    }

    /// When each TLS listener's certificate expires (Unix seconds), by listener name.
    pub(crate) fn certificate_expiry(&self) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = self
            .tls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(name, t)| Some((name.clone(), t.not_after_unix()?)))
            .collect();
        out.sort();
        out
    }

    /// Records the listeners' connection slots (once; later calls are ignored).
    pub(crate) fn set_slots(&self, slots: Vec<Slots>) {
        let _ = self.slots.set(slots);
    }

    /// Admitted connections and `max_connections` per listener, in name order (empty before
    /// [`Node::set_slots`]).
    pub(crate) fn occupancy(&self) -> Vec<Occupancy> {
        let mut out: Vec<Occupancy> = Vec::new();
        for s in self.slots.get().map_or(&[][..], Vec::as_slice) {
            let open = s.max.saturating_sub(s.limit.available_permits());
            match out.iter_mut().find(|o| o.listener == s.listener) {
                Some(o) => {
                    o.open += open;
                    o.max += s.max;
                }
                None => out.push(Occupancy {
                    listener: s.listener.clone(),
                    open,
                    max: s.max,
                }),
            }
        }
        out.sort_by(|a, b| a.listener.cmp(&b.listener));
        out
    }

    /// Seconds since the Unix epoch at start (0 for a clock set before 1970).
    pub(crate) fn start_time_seconds(&self) -> f64 {
        self.started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_adds_up_a_listeners_addresses() {
        let node = Node::starting(Vec::new());
        assert!(node.occupancy().is_empty());
        let slots = |name: &str, max: usize, taken: u32| {
            let limit = Arc::new(Semaphore::new(max));
            std::mem::forget(limit.clone().try_acquire_many_owned(taken).unwrap());
            Slots {
                listener: name.to_owned(),
                limit,
                max,
            }
        };
        node.set_slots(vec![slots("b", 10, 2), slots("a", 5, 0), slots("b", 10, 3)]);
        let o = |l: &str, open, max| Occupancy {
            listener: l.to_owned(),
            open,
            max,
        };
        assert_eq!(node.occupancy(), [o("a", 0, 5), o("b", 5, 20)]);
    }
}
