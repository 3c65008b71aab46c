use std::sync::atomic::{AtomicUsize, Ordering};

/// Live counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    connections: AtomicUsize,
    sessions: AtomicUsize,
}

/// A snapshot of the live counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Open TCP connections on all listeners (HTTP, in handshake, or WebSocket).
    pub connections: usize,
    /// Established WebSocket sessions.
    pub sessions: usize,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> ServerStats {
        ServerStats {
            connections: self.connections.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn connection(self: &std::sync::Arc<Self>) -> Gauge {
        Gauge::new(self.clone(), Kind::Connection)
    }

    pub(crate) fn session(self: &std::sync::Arc<Self>) -> Gauge {
        Gauge::new(self.clone(), Kind::Session)
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Connection,
    Session,
}

/// Counts one live thing while it exists.
#[derive(Debug)]
pub(crate) struct Gauge {
    stats: std::sync::Arc<Stats>,
    kind: Kind,
}

impl Gauge {
    fn new(stats: std::sync::Arc<Stats>, kind: Kind) -> Self {
        stats.counter(kind).fetch_add(1, Ordering::Relaxed);
        Self { stats, kind }
    }
}

impl Stats {
    fn counter(&self, kind: Kind) -> &AtomicUsize {
        match kind {
            Kind::Connection => &self.connections,
            Kind::Session => &self.sessions,
        }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.stats
            .counter(self.kind)
            .fetch_sub(1, Ordering::Relaxed);
    }
}
