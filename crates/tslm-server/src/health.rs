//! Liveness and readiness: what `/healthz` and `/readyz` answer, as a small shared state with no
//! I/O.
//!
//! Readiness is a set of named [`NotReady`] reasons; the gateway is ready when the set is empty.
//! A reason is raised and cleared by whoever owns it (the server while it starts and drains; a
//! future cluster mode for "redis down past its grace period"), so adding a reason is adding a
//! variant, never touching the others. Liveness is a watchdog: a task ticks every
//! [`WATCHDOG_TICK`], and the process is live while the last tick is recent. It depends on no
//! dependency (no Redis, no identity provider): an outage elsewhere must never make an
//! orchestrator restart every gateway.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The liveness probe's path.
pub const HEALTHZ: &str = "/healthz";
/// The readiness probe's path.
pub const READYZ: &str = "/readyz";

/// Whether `path` is one of the probes, which answer whatever the request's `Host` and `Origin`
/// (they reveal nothing, and probes come from addresses no configuration names).
pub fn is_probe(path: &str) -> bool {
    path == HEALTHZ || path == READYZ
}

/// How often the watchdog ticks.
pub const WATCHDOG_TICK: Duration = Duration::from_secs(1);
/// How long without a tick before `/healthz` answers 503: the runtime is stuck.
pub const WATCHDOG_STALE: Duration = Duration::from_secs(10);

/// Why the gateway is not ready. The wire name ([`NotReady::as_str`]) is stable: load balancers
/// and operators read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NotReady {
    /// Not every listener is bound and accepting yet: from `Server::bind` until `Server::run`
    /// starts accepting (an embedder sees it; an HTTP probe cannot, as nothing is answered
    /// before accepting starts).
    Starting,
    /// Shutdown has begun: readiness turns false first so load balancers stop sending new
    /// clients while existing sessions are still served (see `drain_delay_seconds`).
    Draining,
    /// Cluster mode: this node is not following every Redis shard (PUB/SUB down or not
    /// answering its pings); publishes may still fail with `unavailable`.
    ClusterStore,
}

impl NotReady {
    /// Every reason, in the order `/readyz` reports the first one present.
    pub const ALL: [NotReady; 3] = [
        NotReady::Draining,
        NotReady::Starting,
        NotReady::ClusterStore,
    ];

    /// The reason's name in `/readyz` bodies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::Starting => "starting",
            NotReady::Draining => "draining",
            NotReady::ClusterStore => "cluster_store",
        }
    }

    fn bit(self) -> u32 {
        match self {
            NotReady::Starting => 1,
            NotReady::Draining => 2,
            NotReady::ClusterStore => 4,
        }
    }
}

/// The process's health: readiness reasons and the watchdog's last tick. Shared by every
/// listener; reading it takes two atomic loads, so probes cost nothing.
#[derive(Debug)]
pub struct Health {
    reasons: AtomicU32,
    origin: Instant,
    /// Milliseconds from `origin` to the watchdog's last tick.
    last_tick_ms: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A gateway that is starting (not ready) and has just ticked.
    pub fn new() -> Self {
        Self {
            reasons: AtomicU32::new(NotReady::Starting.bit()),
            origin: Instant::now(),
            last_tick_ms: AtomicU64::new(0),
        }
    }

    /// Adds `reason`: not ready until it is cleared.
    pub fn raise(&self, reason: NotReady) {
        self.reasons.fetch_or(reason.bit(), Ordering::SeqCst);
    }

    /// Removes `reason`.
    pub fn clear(&self, reason: NotReady) {
        self.reasons.fetch_and(!reason.bit(), Ordering::SeqCst);
    }

    /// `Ok(())` when ready, else the first reason of [`NotReady::ALL`] that holds.
    pub fn readiness(&self) -> Result<(), NotReady> {
        let bits = self.reasons.load(Ordering::SeqCst);
        match NotReady::ALL.into_iter().find(|r| bits & r.bit() != 0) {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }

    /// Records a watchdog tick now.
    pub fn tick(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_tick_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the watchdog last ticked.
    pub fn since_tick(&self) -> Duration {
        let last = Duration::from_millis(self.last_tick_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Whether the runtime is responsive: the watchdog ticked within [`WATCHDOG_STALE`].
    pub fn live(&self) -> bool {
        self.since_tick() < WATCHDOG_STALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_gateway_is_starting_until_cleared() {
        let h = Health::new();
        assert_eq!(h.readiness(), Err(NotReady::Starting));
        h.clear(NotReady::Starting);
        assert_eq!(h.readiness(), Ok(()));
    }

    #[test]
    fn draining_is_reported_before_starting_and_reasons_are_independent() {
        let h = Health::new();
        h.raise(NotReady::Draining);
        assert_eq!(h.readiness(), Err(NotReady::Draining));
        h.clear(NotReady::Draining);
        assert_eq!(h.readiness(), Err(NotReady::Starting));
        h.clear(NotReady::Starting);
        h.raise(NotReady::Draining);
        h.raise(NotReady::Draining);
        assert_eq!(h.readiness(), Err(NotReady::Draining));
    }

    #[test]
    fn reason_names_are_stable() {
        assert_eq!(NotReady::Starting.as_str(), "starting");
        assert_eq!(NotReady::Draining.as_str(), "draining");
    }

    #[tokio::test(start_paused = true)]
    async fn the_process_is_live_while_the_watchdog_ticks() {
        let h = Health::new();
        assert!(h.live());
        tokio::time::advance(WATCHDOG_STALE - Duration::from_millis(1)).await;
        assert!(h.live());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!h.live(), "no tick for {:?}", h.since_tick());
        h.tick();
        assert!(h.live());
    }
}
