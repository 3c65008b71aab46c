//! Write coalescing (`write_coalesce_ms`): one shared tick per listener instead of a timer per
//! session.
//!
//! After a WebSocket session writes deliveries, it *holds* its outbox ([`Outbox::hold`]): frames
//! queued in the next moment do not wake it. The listener's [`Pacer`] releases every outbox held
//! since its last tick at the next one, waking each session that got something meanwhile once, to
//! write it all with one system call. A session that got nothing is not woken at all, and one
//! that has been quiet since its last tick is not held: its next delivery goes out at once.
//!
//! What this saves, per busy session and tick: every wake-up but one and every write but one. A
//! timer per session (the first design, measured in docs/performance.md) saved writes but added
//! a wake-up and a timer-wheel entry per delayed write, and cost more CPU than it saved.
//!
//! Bounds: an outbox is in a held list at most once ([`Outbox::hold`] lists it again only after
//! its release), so the list holds at most one entry per session of the listener; one tick task
//! is pending per pacer, and only while some outbox is held (an idle listener has no timer at
//! all). A reload builds a new pacer; the old one's pending tick still releases what it holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tslm_hub::Outbox;

/// Outboxes a tick releases before it yields to other tasks, so that a listener with very many
/// busy sessions does not hold a worker thread for its whole list.
const RELEASE_CHUNK: usize = 512;

/// A pending tick. Whatever it has not released when dropped (its task dropped unpolled by a
/// runtime shutting down, or midway) it releases then: a pacer whose list stayed non-empty would
/// never arm a tick again, and its outboxes would stay held.
struct Tick {
    pacer: Arc<Pacer>,
    /// The list taken from the pacer, as far as it is not released yet.
    taken: Option<std::vec::IntoIter<Arc<Outbox>>>,
}

impl Tick {
    /// Waits for the interval, then releases the list held since the last tick, in chunks.
    async fn run(mut self) {
        tokio::time::sleep(self.pacer.interval).await;
        let rest = self.taken.insert(self.pacer.take().into_iter());
        loop {
            for outbox in rest.by_ref().take(RELEASE_CHUNK) {
                outbox.release();
            }
            if rest.len() == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for Tick {
    fn drop(&mut self) {
        match self.taken.take() {
            Some(rest) => rest.for_each(|outbox| outbox.release()),
            None => self.pacer.take().into_iter().for_each(|o| o.release()),
        }
    }
}

/// A listener's write-coalescing tick (see the module documentation).
pub(crate) struct Pacer {
    interval: Duration,
    /// Outboxes held since the last tick.
    held: Mutex<Vec<Arc<Outbox>>>,
}

impl Pacer {
    pub(crate) fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            interval,
            held: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Outbox>>> {
        // Every update is a single push or swap: a poisoned lock still holds a consistent list.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `outbox` (a session just wrote from it) until the next tick; arms the tick when it is
    /// the first outbox held since the last one.
    pub(crate) fn hold(self: &Arc<Self>, outbox: &Arc<Outbox>) {
        if !outbox.hold() {
            return;
        }
        let mut held = self.lock();
        let first = held.is_empty();
        held.push(Arc::clone(outbox));
        drop(held);
        if first {
            let tick = Tick {
                pacer: Arc::clone(self),
                taken: None,
            };
            tokio::spawn(tick.run());
        }
    }

    /// Takes the list of outboxes held since the last tick (each wakes its session at its
    /// release if anything was queued meanwhile); holds from now on arm the next tick.
    fn take(&self) -> Vec<Arc<Outbox>> {
        let mut list = self.lock();
        let capacity = list.len();
        std::mem::replace(&mut *list, Vec::with_capacity(capacity))
    }

    /// Outboxes currently held.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tslm_hub::OutboxLimits;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(OutboxLimits {
            max_bytes: 1 << 20,
            max_messages: 100,
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_releases_every_held_outbox_once_and_only_while_some_are_held() {
        let pacer = Pacer::new(Duration::from_millis(2));
        let (a, b) = (outbox(), outbox());
        pacer.hold(&a);
        pacer.hold(&a);
        pacer.hold(&b);
        assert_eq!(pacer.held(), 2, "an outbox was held twice");
        a.push(Bytes::from_static(b"x")).unwrap();
        let woke = tokio::time::timeout(Duration::from_millis(1), a.ready()).await;
        assert!(
            woke.is_err(),
            "a held outbox woke its consumer before the tick"
        );
        tokio::time::timeout(Duration::from_millis(5), a.ready())
            .await
            .expect("the tick released the outbox");
        assert_eq!(pacer.held(), 0);
        // Released: the next frame wakes at once.
        b.push(Bytes::from_static(b"y")).unwrap();
        tokio::time::timeout(Duration::ZERO, b.ready())
            .await
            .expect("a released outbox wakes at once");
        // Held again after the tick: a new tick is armed and releases it.
        let mut out = std::collections::VecDeque::new();
        a.take(&mut out);
        pacer.hold(&a);
        assert_eq!(pacer.held(), 1);
        a.push(Bytes::from_static(b"z")).unwrap();
        tokio::time::timeout(Duration::from_millis(5), a.ready())
            .await
            .expect("the second tick released the outbox");
        assert_eq!(pacer.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_releases_a_list_longer_than_a_chunk_whole() {
        let pacer = Pacer::new(Duration::from_millis(2));
        let all: Vec<_> = (0..RELEASE_CHUNK * 3 + 7).map(|_| outbox()).collect();
        for o in &all {
            pacer.hold(o);
            o.push(Bytes::from_static(b"x")).unwrap();
        }
        assert_eq!(pacer.held(), all.len());
        for o in &all {
            tokio::time::timeout(Duration::from_millis(5), o.ready())
                .await
                .expect("every held outbox released");
        }
        assert_eq!(pacer.held(), 0);
    }

    #[test]
    fn a_tick_dropped_before_it_ran_still_releases() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime")
        };
        let pacer = Pacer::new(Duration::from_secs(3600));
        let a = outbox();
        // The tick task's runtime is dropped with the task unpolled.
        let rt = runtime();
        {
            let _enter = rt.enter();
            pacer.hold(&a);
        }
        a.push(Bytes::from_static(b"x")).unwrap();
        assert_eq!(pacer.held(), 1);
        drop(rt);
        assert_eq!(pacer.held(), 0, "the dropped tick did not release");
        runtime()
            .block_on(async { tokio::time::timeout(Duration::ZERO, a.ready()).await })
            .expect("the release woke the consumer");
    }
}
