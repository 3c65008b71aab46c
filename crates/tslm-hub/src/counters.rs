//! The hub's event counters: plain atomics bumped where things happen (once per operation, not
//! per subscriber), read by [`crate::Hub::stats`]. No metrics library: a server exports them.

use std::sync::atomic::{AtomicU64, Ordering};

use tslm_protocol::{Lost, Recovery};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) publishes: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) dedupe_hits: AtomicU64,
    pub(crate) dropped_oldest: AtomicU64,
    pub(crate) dropped_latest: AtomicU64,
    pub(crate) resumes_recovered: AtomicU64,
    pub(crate) resumes_expired: AtomicU64,
    pub(crate) resumes_epoch_changed: AtomicU64,
    /// Offsets resumes reported lost (`expired` ranges).
    pub(crate) resume_lost_messages: AtomicU64,
    pub(crate) subscribes: AtomicU64,
    /// Reads of a channel's log ([`crate::Hub::history`]).
    pub(crate) log_reads: AtomicU64,
    pub(crate) replies: AtomicU64,
    /// Messages that left backlogs early (count, age or memory bound) or were never kept.
    pub(crate) backlog_evicted: AtomicU64,
}

/// Adds `n` (nothing when 0, to spare the shared cache line).
pub(crate) fn add(counter: &AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Counters {
    /// Counts the outcome of a resume.
    pub(crate) fn resume(&self, recovery: Option<Recovery>) {
        let counter = match recovery {
            None => return,
            Some(Recovery::Complete) => &self.resumes_recovered,
            Some(Recovery::Incomplete(Lost::Expired { from, to })) => {
                let lost = to.0.saturating_sub(from.0).saturating_add(1);
                self.resume_lost_messages.fetch_add(lost, Ordering::Relaxed);
                &self.resumes_expired
            }
            Some(Recovery::Incomplete(Lost::EpochChanged)) => &self.resumes_epoch_changed,
        };
        add(counter, 1);
    }
}
