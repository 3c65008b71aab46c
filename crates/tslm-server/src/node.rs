//! What this gateway process is, for the operator's routes (`/metrics`, `/admin`): when it
//! started and which listeners it serves. Built once at [`crate::Server::run`], shared by every
//! listener; it holds no counters (those stay in [`crate::stats`] and the hub).

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

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
        }
    }

    /// Seconds since the Unix epoch at start (0 for a clock set before 1970).
    pub(crate) fn start_time_seconds(&self) -> f64 {
        self.started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }
}
