//! When each WebSocket session is closed at shutdown, and what its close frame tells the client.
//!
//! Closing every session at once makes every client reconnect at once (to the gateways left, or to
//! this one's replacement): a reconnect storm. So the sessions open when the gateway stops
//! accepting are closed one after another, evenly over [`spread`] of the grace period, and each
//! close reason carries a jittered `retry_after_ms` (format in docs/protocol.md, "Server
//! shutdown") that a client library waits before reconnecting. Pure arithmetic over tokio's
//! clock: tested without sockets.

use std::hash::BuildHasher;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tslm_protocol::close::shutdown_reason;

/// The least `retry_after_ms` a client is told.
pub const RETRY_AFTER_MIN_MS: u64 = 1_000;
/// `retry_after_ms` is [`RETRY_AFTER_MIN_MS`] plus a uniform jitter below this.
pub const RETRY_AFTER_JITTER_MS: u64 = 5_000;

/// The part of the grace period over which closes are spread: three quarters, so the last
/// sessions closed still have a quarter of it for their close handshake.
pub fn spread(grace: Duration) -> Duration {
    grace * 3 / 4
}

/// When, after closing starts, the session that takes turn `index` of `sessions` is closed:
/// evenly over `spread`, the first at once. Turns past `sessions` (sessions that were still
/// being upgraded when closing started) close with the last.
pub fn close_offset(index: usize, sessions: usize, spread: Duration) -> Duration {
    if sessions <= 1 {
        return Duration::ZERO;
    }
    let index = index.min(sessions - 1);
    let nanos = spread.as_nanos() * index as u128 / sessions as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A `retry_after_ms` in `RETRY_AFTER_MIN_MS..RETRY_AFTER_MIN_MS + RETRY_AFTER_JITTER_MS`,
/// picked at random (std's randomly keyed hasher: jitter, not secrets).
fn jittered_retry_after(turn: usize) -> u64 {
    let r = std::hash::RandomState::new().hash_one(turn);
    RETRY_AFTER_MIN_MS + r % RETRY_AFTER_JITTER_MS
}

/// The closing plan, fixed when the gateway stops accepting.
#[derive(Debug, Clone, Copy)]
struct Plan {
    start: Instant,
    sessions: usize,
    spread: Duration,
}

/// Hands each session its turn to close. Shared by every listener of a server.
#[derive(Debug, Default)]
pub(crate) struct CloseSchedule {
    plan: OnceLock<Plan>,
    next: AtomicUsize,
}

/// One session's close: when, and with what reason.
#[derive(Debug)]
pub(crate) struct Turn {
    pub at: Instant,
    pub reason: String,
}

impl CloseSchedule {
    /// Starts closing now: `sessions` sessions, spread over [`spread`]`(grace)`. Only the first
    /// call counts.
    pub(crate) fn begin(&self, sessions: usize, grace: Duration) {
        let _ = self.plan.set(Plan {
            start: Instant::now(),
            sessions,
            spread: spread(grace),
        });
    }

    /// How long until the last turn of a shutdown that has begun (`None` before it begins).
    pub(crate) fn remaining(&self) -> Option<Duration> {
        let p = self.plan.get()?;
        Some((p.start + p.spread).saturating_duration_since(Instant::now()))
    }

    /// The calling session's turn (each call takes the next one). Before [`Self::begin`], the
    /// turn is now.
    pub(crate) fn take_turn(&self) -> Turn {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let at = match self.plan.get() {
            Some(p) => p.start + close_offset(turn, p.sessions, p.spread),
            None => Instant::now(),
        };
        Turn {
            at,
            reason: shutdown_reason(jittered_retry_after(turn)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tslm_protocol::close::parse_shutdown_reason;

    #[test]
    fn closes_are_spread_evenly_the_first_at_once() {
        let spread = Duration::from_secs(2);
        let offsets: Vec<_> = (0..4).map(|i| close_offset(i, 4, spread)).collect();
        assert_eq!(
            offsets,
            [0, 500, 1000, 1500].map(Duration::from_millis).to_vec()
        );
        // Late sessions close with the last; one session or none close at once.
        assert_eq!(close_offset(9, 4, spread), Duration::from_millis(1500));
        assert_eq!(close_offset(0, 1, spread), Duration::ZERO);
        assert_eq!(close_offset(3, 0, spread), Duration::ZERO);
        assert_eq!(close_offset(5, 10, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_spread_leaves_a_quarter_of_the_grace_for_close_handshakes() {
        assert_eq!(spread(Duration::from_secs(10)), Duration::from_millis(7500));
        assert_eq!(spread(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_reason_round_trips_and_fits_a_close_frame() {
        let r = shutdown_reason(4321);
        assert_eq!(r, "shutdown; retry_after_ms=4321");
        assert_eq!(parse_shutdown_reason(&r), Some(4321));
        assert_eq!(
            parse_shutdown_reason("shutdown; retry_after_ms=1500; node=b"),
            Some(1500)
        );
        for other in [
            "going away",
            "shutdown; retry_after_ms=soon",
            "shutdown; retry_after_ms=",
            "shutdown; retry_after_ms=+5",
            "shutdown; retry_after_ms=5 ",
            "shutdown; retry_after_ms=99999999999999999999999",
        ] {
            assert_eq!(parse_shutdown_reason(other), None, "{other}");
        }
        // A close frame's reason holds at most 123 bytes.
        assert!(shutdown_reason(u64::MAX).len() <= 123);
    }

    #[test]
    fn retry_after_is_jittered_within_its_bounds() {
        let values: Vec<u64> = (0..200).map(jittered_retry_after).collect();
        let range = RETRY_AFTER_MIN_MS..RETRY_AFTER_MIN_MS + RETRY_AFTER_JITTER_MS;
        assert!(values.iter().all(|v| range.contains(v)), "{values:?}");
        let distinct: std::collections::BTreeSet<_> = values.iter().collect();
        assert!(distinct.len() > 100, "hardly jittered: {distinct:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn turns_follow_the_plan_fixed_at_begin() {
        let s = CloseSchedule::default();
        let before = s.take_turn();
        assert!(before.at <= Instant::now());
        let s = CloseSchedule::default();
        s.begin(3, Duration::from_secs(4));
        let start = Instant::now();
        s.begin(100, Duration::from_secs(400));
        let at: Vec<_> = (0..4).map(|_| s.take_turn().at - start).collect();
        assert_eq!(
            at,
            [0, 1000, 2000, 2000].map(Duration::from_millis).to_vec()
        );
    }
}
