//! Hub-wide bounds shared by every channel: each channel keeps its own share of a table (its
//! backlog bytes, its `msg_id`s, its reply routes) and counts it here, so that all channels
//! together stay within the hub's limit without a global lock.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A count shared by all channels, bounded by `max`.
#[derive(Debug, Default)]
pub(crate) struct Bound {
    used: AtomicUsize,
    max: usize,
}

impl Bound {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub(crate) fn max(&self) -> usize {
        self.max
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes one unless the count is at its bound.
    pub(crate) fn take_one(&self) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Adds `n` whatever the bound (the caller gives back what does not fit); returns the count
    /// before.
    pub(crate) fn add(&self, n: usize) -> usize {
        self.used.fetch_add(n, Ordering::Relaxed)
    }

    /// Gives back `n`.
    pub(crate) fn give_back(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// Gives back the spare capacity of tables that emptied: each keeps at most a few times what it
/// holds, so a channel that was once full does not hold its peak for ever.
macro_rules! shrink {
    ($($t:expr),*) => {$(
        if $t.capacity() > 16 && $t.capacity() / 4 > $t.len() {
            $t.shrink_to($t.len() * 2);
        }
    )*};
}
pub(crate) use shrink;
