use std::sync::atomic::{AtomicUsize, Ordering};

/// Live counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    connections: AtomicUsize,
    sessions: AtomicUsize,
    slow_consumer_closes: AtomicUsize,
    ping_timeout_closes: AtomicUsize,
    too_big_closes: AtomicUsize,
    over_capacity_rejections: AtomicUsize,
    ip_refusals: AtomicUsize,
    policy_closes: AtomicUsize,
    overload_closes: AtomicUsize,
    pending_reply_bytes: AtomicUsize,
}

/// A snapshot of the live counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Open TCP connections on all listeners (HTTP, in handshake, or WebSocket).
    pub connections: usize,
    /// Established WebSocket sessions.
    pub sessions: usize,
    /// Sessions closed with 4000 because their outbound queue overflowed or their writes stalled
    /// for a whole ping cycle (since start).
    pub slow_consumer_closes: usize,
    /// Sessions closed with 4001 because the peer stopped answering pings (since start).
    pub ping_timeout_closes: usize,
    /// Sessions closed with 1009 because a message was over `max_message_size` (since start).
    pub too_big_closes: usize,
    /// Connections answered 503 because their listener was at `max_connections` (since start).
    pub over_capacity_rejections: usize,
    /// Connections answered 429 by a per-address limit (since start).
    pub ip_refusals: usize,
    /// Sessions closed with 1008 for sustained rate-limit abuse or a control-frame flood.
    pub policy_closes: usize,
    /// Connections closed at once, unanswered, because `[server] max_pending_connections`
    /// refusals were already in progress (since start).
    pub overload_closes: usize,
    /// Bytes of replies built and not yet handed whole to their sockets (each session has at
    /// most one, bounded by its listener's `outbound_queue_bytes` plus one message).
    pub pending_reply_bytes: usize,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> ServerStats {
        ServerStats {
            connections: self.connections.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            slow_consumer_closes: self.slow_consumer_closes.load(Ordering::Relaxed),
            ping_timeout_closes: self.ping_timeout_closes.load(Ordering::Relaxed),
            too_big_closes: self.too_big_closes.load(Ordering::Relaxed),
            over_capacity_rejections: self.over_capacity_rejections.load(Ordering::Relaxed),
            ip_refusals: self.ip_refusals.load(Ordering::Relaxed),
            policy_closes: self.policy_closes.load(Ordering::Relaxed),
            overload_closes: self.overload_closes.load(Ordering::Relaxed),
            pending_reply_bytes: self.pending_reply_bytes.load(Ordering::Relaxed),
        }
    }

    /// Counts a session closed by the server with `code`.
    pub(crate) fn count_close(&self, code: u16) {
        let counter = match code {
            tslm_protocol::close::SLOW_CONSUMER => &self.slow_consumer_closes,
            tslm_protocol::close::PING_TIMEOUT => &self.ping_timeout_closes,
            tslm_protocol::close::MESSAGE_TOO_BIG => &self.too_big_closes,
            tslm_protocol::close::POLICY_VIOLATION => &self.policy_closes,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_ip_refusal(&self) {
        self.ip_refusals.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_overload_close(&self) {
        self.overload_closes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_over_capacity(&self) {
        self.over_capacity_rejections
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `bytes` of a reply being written until the guard drops.
    pub(crate) fn pending_reply(&self, bytes: usize) -> PendingReply<'_> {
        self.pending_reply_bytes.fetch_add(bytes, Ordering::Relaxed);
        PendingReply { stats: self, bytes }
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

/// A reply being written, counted in [`ServerStats::pending_reply_bytes`].
pub(crate) struct PendingReply<'a> {
    stats: &'a Stats,
    bytes: usize,
}

impl Drop for PendingReply<'_> {
    fn drop(&mut self) {
        self.stats
            .pending_reply_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}
