use std::sync::atomic::{AtomicUsize, Ordering};

use tslm_protocol::ErrorCode;

/// A latency distribution (seconds), for the metrics endpoint: buckets from 10 µs to about 2.6 s,
/// each four times the last. Observed once per operation (never per delivery).
#[derive(Debug, Clone)]
pub(crate) struct Latency(prometheus_client::metrics::histogram::Histogram);

impl Default for Latency {
    fn default() -> Self {
        Self(prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1e-5, 4.0, 10),
        ))
    }
}

impl Latency {
    pub(crate) fn observe(&self, d: std::time::Duration) {
        self.0.observe(d.as_secs_f64());
    }

    /// The histogram, for encoding.
    pub(crate) fn histogram(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.0
    }
}

/// Refusals the admin page lists (a bounded ring: a flood costs no more).
pub(crate) const RECENT_REFUSALS: usize = 20;

/// Live counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Open WebSocket connections authenticated as each publisher (by name; bounded by the
    /// configured publishers), for the admin page.
    publishers: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    /// The last [`RECENT_REFUSALS`] refusals, newest last, for the admin page.
    recent: std::sync::Mutex<std::collections::VecDeque<(std::time::SystemTime, &'static str)>>,
    /// Each accepted publish, from its admission to its offset assigned and the message queued
    /// for every subscriber (the fan-out).
    pub(crate) publish_seconds: Latency,
    connections: AtomicUsize,
    sessions: AtomicUsize,
    /// Server-Sent Events streams open (each takes a turn of the shutdown's close schedule).
    streams: AtomicUsize,
    connections_accepted: AtomicUsize,
    sessions_opened_v1: AtomicUsize,
    sessions_opened_legacy: AtomicUsize,
    slow_consumer_closes: AtomicUsize,
    ping_timeout_closes: AtomicUsize,
    too_big_closes: AtomicUsize,
    over_capacity_rejections: AtomicUsize,
    ip_refusals: AtomicUsize,
    policy_closes: AtomicUsize,
    overload_closes: AtomicUsize,
    pending_reply_bytes: AtomicUsize,
    /// Socket writes of queued WebSocket frames (deliveries and events), and the frames they
    /// carried: their ratio is what write coalescing buys.
    frame_writes: AtomicUsize,
    frames_written: AtomicUsize,
    going_away_closes: AtomicUsize,
    protocol_error_closes: AtomicUsize,
    invalid_payload_closes: AtomicUsize,
    auth_timeout_closes: AtomicUsize,
    token_expired_closes: AtomicUsize,
    credential_revoked_closes: AtomicUsize,
    auth_refusals_http: AtomicUsize,
    auth_refusals_handshake: AtomicUsize,
    auth_refusals_command: AtomicUsize,
    auth_budget_refusals: AtomicUsize,
    /// By the position of the code in [`ErrorCode::ALL`].
    publish_refusals: [AtomicUsize; ErrorCode::ALL.len()],
}

/// Where an authentication was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthRefusalKind {
    /// A 401 answered to an HTTP API request.
    Http,
    /// A 401 answered to a WebSocket handshake.
    Handshake,
    /// An `auth` or `refresh` command refused on a WebSocket session.
    Command,
    /// A 429 answered because the connection's or the address's budget of failed
    /// authentications is spent.
    OverBudget,
}

/// A snapshot of the live counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Open TCP connections on all listeners (HTTP, in handshake, or WebSocket).
    pub connections: usize,
    /// Established WebSocket sessions.
    pub sessions: usize,
    /// TCP connections admitted (past the listener's and the address's limits) since start.
    pub connections_accepted: usize,
    /// WebSocket sessions established since start speaking protocol v1.
    pub sessions_opened_v1: usize,
    /// WebSocket sessions established since start speaking the original protocol.
    pub sessions_opened_legacy: usize,
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
    /// Batches of queued WebSocket frames (deliveries, events) handed to a socket (since start).
    pub frame_writes: usize,
    /// Frames in those batches (since start).
    pub frames_written: usize,
    /// Sessions closed with 1001 because the server shut down (since start).
    pub going_away_closes: usize,
    /// Sessions closed with 1002 for a WebSocket protocol violation (since start).
    pub protocol_error_closes: usize,
    /// Sessions closed with 1007 for a text frame that is not UTF-8 (since start).
    pub invalid_payload_closes: usize,
    /// Sessions closed with 4002 because they did not authenticate in time (since start).
    pub auth_timeout_closes: usize,
    /// Sessions closed with 4003 because their access token expired (since start).
    pub token_expired_closes: usize,
    /// Sessions closed because a reload revoked their credential (4006).
    pub credential_revoked_closes: usize,
    /// HTTP API requests answered 401 (since start).
    pub auth_refusals_http: usize,
    /// WebSocket handshakes answered 401 (since start).
    pub auth_refusals_handshake: usize,
    /// `auth` and `refresh` commands refused with `unauthorized` (since start).
    pub auth_refusals_command: usize,
    /// Requests and handshakes answered 429 because a failed-authentication budget (the
    /// connection's or its address's) was spent (since start).
    pub auth_budget_refusals: usize,
    /// Publishes refused (since start), by the code answered, in the order of
    /// [`ErrorCode::ALL`]: HTTP publish requests after routing, and v1 `publish` and original
    /// `NotifyChannel` commands once decoded (see [`ServerStats::publish_refusals_by_code`]).
    pub publish_refusals: [usize; ErrorCode::ALL.len()],
}

impl ServerStats {
    /// [`ServerStats::publish_refusals`] with their codes.
    pub fn publish_refusals_by_code(&self) -> impl Iterator<Item = (ErrorCode, usize)> + '_ {
        ErrorCode::ALL.into_iter().zip(self.publish_refusals)
    }
}

impl Stats {
    /// A connection authenticated as publisher `name` (`true`) or stopped being one (`false`).
    pub(crate) fn publisher_connection(&self, name: &str, connected: bool) {
        let mut map = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
        if connected {
            *map.entry(name.to_owned()).or_default() += 1;
        } else if let Some(n) = map.get_mut(name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(name);
            }
        }
    }

    /// Connected publishers by name, with their open connections.
    pub(crate) fn publishers_connected(&self) -> Vec<(String, usize)> {
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    pub(crate) fn snapshot(&self) -> ServerStats {
        ServerStats {
            connections: self.connections.load(Ordering::Relaxed),
            sessions: self.sessions.load(Ordering::Relaxed),
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            sessions_opened_v1: self.sessions_opened_v1.load(Ordering::Relaxed),
            sessions_opened_legacy: self.sessions_opened_legacy.load(Ordering::Relaxed),
            slow_consumer_closes: self.slow_consumer_closes.load(Ordering::Relaxed),
            ping_timeout_closes: self.ping_timeout_closes.load(Ordering::Relaxed),
            too_big_closes: self.too_big_closes.load(Ordering::Relaxed),
            over_capacity_rejections: self.over_capacity_rejections.load(Ordering::Relaxed),
            ip_refusals: self.ip_refusals.load(Ordering::Relaxed),
            policy_closes: self.policy_closes.load(Ordering::Relaxed),
            overload_closes: self.overload_closes.load(Ordering::Relaxed),
            pending_reply_bytes: self.pending_reply_bytes.load(Ordering::Relaxed),
            frame_writes: self.frame_writes.load(Ordering::Relaxed),
            frames_written: self.frames_written.load(Ordering::Relaxed),
            going_away_closes: self.going_away_closes.load(Ordering::Relaxed),
            protocol_error_closes: self.protocol_error_closes.load(Ordering::Relaxed),
            invalid_payload_closes: self.invalid_payload_closes.load(Ordering::Relaxed),
            auth_timeout_closes: self.auth_timeout_closes.load(Ordering::Relaxed),
            token_expired_closes: self.token_expired_closes.load(Ordering::Relaxed),
            credential_revoked_closes: self.credential_revoked_closes.load(Ordering::Relaxed),
            auth_refusals_http: self.auth_refusals_http.load(Ordering::Relaxed),
            auth_refusals_handshake: self.auth_refusals_handshake.load(Ordering::Relaxed),
            auth_refusals_command: self.auth_refusals_command.load(Ordering::Relaxed),
            auth_budget_refusals: self.auth_budget_refusals.load(Ordering::Relaxed),
            publish_refusals: std::array::from_fn(|i| {
                self.publish_refusals[i].load(Ordering::Relaxed)
            }),
        }
    }

    /// Counts one batch of `frames` queued frames handed to a socket.
    pub(crate) fn count_frame_write(&self, frames: usize) {
        self.frame_writes.fetch_add(1, Ordering::Relaxed);
        self.frames_written.fetch_add(frames, Ordering::Relaxed);
    }

    /// Counts a session closed by the server with `code` (every code the server closes with
    /// has its counter).
    pub(crate) fn count_close(&self, code: u16) {
        use tslm_protocol::close;
        let counter = match code {
            close::SLOW_CONSUMER => &self.slow_consumer_closes,
            close::PING_TIMEOUT => &self.ping_timeout_closes,
            close::MESSAGE_TOO_BIG => &self.too_big_closes,
            close::POLICY_VIOLATION => &self.policy_closes,
            close::GOING_AWAY => &self.going_away_closes,
            close::PROTOCOL_ERROR => &self.protocol_error_closes,
            close::INVALID_PAYLOAD => &self.invalid_payload_closes,
            close::AUTH_TIMEOUT => &self.auth_timeout_closes,
            close::TOKEN_EXPIRED => &self.token_expired_closes,
            close::CREDENTIAL_REVOKED => &self.credential_revoked_closes,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers a refusal for the admin page (the oldest goes past [`RECENT_REFUSALS`]).
    fn remember(&self, what: &'static str) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_REFUSALS {
            recent.pop_front();
        }
        recent.push_back((std::time::SystemTime::now(), what));
    }

    /// The last refusals, newest first.
    pub(crate) fn recent_refusals(&self) -> Vec<(std::time::SystemTime, &'static str)> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().rev().copied().collect()
    }

    /// Counts one refused authentication.
    pub(crate) fn count_auth_refusal(&self, kind: AuthRefusalKind) {
        self.remember(match kind {
            AuthRefusalKind::Http => "authentication refused (HTTP 401)",
            AuthRefusalKind::Handshake => "authentication refused at a WebSocket handshake (401)",
            AuthRefusalKind::Command => "authentication refused (auth or refresh command)",
            AuthRefusalKind::OverBudget => "over a failed-authentication budget (429)",
        });
        let counter = match kind {
            AuthRefusalKind::Http => &self.auth_refusals_http,
            AuthRefusalKind::Handshake => &self.auth_refusals_handshake,
            AuthRefusalKind::Command => &self.auth_refusals_command,
            AuthRefusalKind::OverBudget => &self.auth_budget_refusals,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one refused publish under the code it was answered with.
    pub(crate) fn count_publish_refusal(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.publish_refusals[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_ip_refusal(&self) {
        self.remember("connection over a per-address limit (429)");
        self.ip_refusals.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_overload_close(&self) {
        self.remember("connection closed unanswered (overload)");
        self.overload_closes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_over_capacity(&self) {
        self.remember("connection over capacity (503)");
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

    /// [`Stats::connection`] of a connection admitted past every limit (refused ones, answered
    /// 429 or 503, are open connections too, but not accepted ones).
    pub(crate) fn admitted(self: &std::sync::Arc<Self>) -> Gauge {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connection()
    }

    /// Counts an established session speaking `dialect` while it exists (and once since start).
    pub(crate) fn session(self: &std::sync::Arc<Self>, dialect: tslm_protocol::Dialect) -> Gauge {
        let opened = match dialect {
            tslm_protocol::Dialect::V1 => &self.sessions_opened_v1,
            tslm_protocol::Dialect::Legacy => &self.sessions_opened_legacy,
        };
        opened.fetch_add(1, Ordering::Relaxed);
        Gauge::new(self.clone(), Kind::Session)
    }

    /// Counts an open Server-Sent Events stream while it exists.
    pub(crate) fn stream(self: &std::sync::Arc<Self>) -> Gauge {
        Gauge::new(self.clone(), Kind::Stream)
    }

    /// What closes in turns at shutdown: WebSocket sessions and event streams.
    pub(crate) fn closing_turns(&self) -> usize {
        self.sessions.load(Ordering::Relaxed) + self.streams.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Connection,
    Session,
    Stream,
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
            Kind::Stream => &self.streams,
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

#[cfg(test)]
mod tests {
    use tslm_protocol::close;

    use super::*;

    #[test]
    fn every_close_code_the_server_sends_is_counted_under_its_own_name() {
        let codes = [
            close::SLOW_CONSUMER,
            close::PING_TIMEOUT,
            close::MESSAGE_TOO_BIG,
            close::POLICY_VIOLATION,
            close::GOING_AWAY,
            close::PROTOCOL_ERROR,
            close::INVALID_PAYLOAD,
            close::AUTH_TIMEOUT,
            close::TOKEN_EXPIRED,
            close::CREDENTIAL_REVOKED,
        ];
        let stats = Stats::default();
        for (i, code) in codes.iter().enumerate() {
            // Code number i is counted i + 1 times, so a counter read under the wrong name shows.
            for _ in 0..=i {
                stats.count_close(*code);
            }
        }
        stats.count_close(close::NORMAL);
        let s = stats.snapshot();
        let counted = [
            s.slow_consumer_closes,
            s.ping_timeout_closes,
            s.too_big_closes,
            s.policy_closes,
            s.going_away_closes,
            s.protocol_error_closes,
            s.invalid_payload_closes,
            s.auth_timeout_closes,
            s.token_expired_closes,
            s.credential_revoked_closes,
        ];
        assert_eq!(counted, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    }

    #[test]
    fn publish_refusals_are_counted_under_their_own_code() {
        let stats = Stats::default();
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            for _ in 0..=i {
                stats.count_publish_refusal(*code);
            }
        }
        let s = stats.snapshot();
        for (i, (code, n)) in s.publish_refusals_by_code().enumerate() {
            assert_eq!(code, ErrorCode::ALL[i]);
            assert_eq!(n, i + 1, "{code:?}");
        }
    }

    #[test]
    fn auth_refusals_are_counted_by_kind() {
        let stats = Stats::default();
        let kinds = [
            AuthRefusalKind::Http,
            AuthRefusalKind::Handshake,
            AuthRefusalKind::Command,
            AuthRefusalKind::OverBudget,
        ];
        for (i, kind) in kinds.iter().enumerate() {
            for _ in 0..=i {
                stats.count_auth_refusal(*kind);
            }
        }
        let s = stats.snapshot();
        assert_eq!(
            [
                s.auth_refusals_http,
                s.auth_refusals_handshake,
                s.auth_refusals_command,
                s.auth_budget_refusals,
            ],
            [1, 2, 3, 4]
        );
    }

    #[test]
    fn recent_refusals_are_a_bounded_ring_newest_first() {
        let stats = Stats::default();
        for _ in 0..100 {
            stats.count_ip_refusal();
        }
        stats.count_over_capacity();
        let recent = stats.recent_refusals();
        assert_eq!(recent.len(), RECENT_REFUSALS);
        assert_eq!(recent[0].1, "connection over capacity (503)");
        assert!(recent[1..].iter().all(|r| r.1.contains("per-address")));
        assert_eq!(stats.snapshot().ip_refusals, 100);
    }
}
