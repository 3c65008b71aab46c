//! Server-wide admission: the file descriptors every connection costs, bounded for the whole
//! process so that no flood of connections, on any listener, from any number of addresses, can
//! take the descriptors the gateway needs to answer everybody else.
//!
//! Two budgets, derived at startup from the process's descriptor limit (`RLIMIT_NOFILE`):
//!
//! - **pending**: connections accepted but not admitted, that is being refused (a 429 or 503 on
//!   its way out, after a TLS handshake on TLS listeners). Each costs at most [`REFUSAL_DEADLINE`].
//!   Over `[server] max_pending_connections` a new connection is closed at once, unanswered.
//! - **open**: admitted connections (HTTP, in handshake, WebSocket sessions), all listeners
//!   together. Over it a connection is refused with 503, as over a listener's `max_connections`.
//!
//! Both together stay [`RESERVED_DESCRIPTORS`] below the limit, so `accept` never fails for lack
//! of descriptors (EMFILE) and the accept loops keep answering every address.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept out of both budgets: listening sockets, the runtime's own (epoll, eventfd),
/// standard streams, TLS files being reloaded, identity-provider fetches, and the connection
/// accepted only to be closed when `pending` is full.
pub(crate) const RESERVED_DESCRIPTORS: u64 = 64;

/// The longest a refusal holds its descriptor: the TLS handshake (on TLS listeners), writing the
/// 429 or 503 and reading whatever the client sent until it closes. Far below the handshake
/// timeout: a refusal must cost nothing lasting.
pub(crate) const REFUSAL_DEADLINE: Duration = Duration::from_secs(1);

/// The budgets, as sized at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// The soft descriptor limit (`None`: unlimited or unknown).
    pub descriptors: Option<u64>,
    /// Connections being refused at once.
    pub pending: usize,
    /// Admitted connections, all listeners together.
    pub open: usize,
}

impl Budget {
    /// Sizes the budgets for `descriptors`: refusals get at most a quarter of what is left after
    /// the reserve, admitted connections the rest.
    pub(crate) fn new(max_pending: usize, descriptors: Option<u64>) -> Self {
        let cap = Semaphore::MAX_PERMITS;
        let Some(limit) = descriptors else {
            return Self {
                descriptors,
                pending: max_pending.min(cap),
                open: cap,
            };
        };
        let available = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS))
            .unwrap_or(usize::MAX)
            .min(cap);
        let pending = max_pending.min(available / 4).max(1);
        Self {
            descriptors,
            pending,
            open: available.saturating_sub(pending).max(1),
        }
    }
}

/// The process's soft limit on open descriptors, after raising it to the hard limit (which an
/// unprivileged process may do; systemd, for one, starts services with a soft limit of 1024 and a
/// far higher hard one). `None` when unlimited or unknown.
pub(crate) fn descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let l = getrlimit(Resource::Nofile);
        if l.current.is_some() && l.current != l.maximum {
            let raised = Rlimit {
                current: l.maximum,
                maximum: l.maximum,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                return getrlimit(Resource::Nofile).current;
            }
        }
        l.current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The two budgets, shared by every listener of the server.
#[derive(Debug)]
pub(crate) struct Admission {
    pending: Arc<Semaphore>,
    open: Arc<Semaphore>,
}

/// One connection being refused: its place under the pending budget.
#[derive(Debug)]
pub(crate) struct Pending {
    _permit: OwnedSemaphorePermit,
}

/// One admitted connection's descriptor.
#[derive(Debug)]
pub(crate) struct Open {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    pub(crate) fn new(budget: Budget) -> Self {
        Self {
            pending: Arc::new(Semaphore::new(budget.pending)),
            open: Arc::new(Semaphore::new(budget.open)),
        }
    }

    /// A place to refuse one more connection, or `None`: close it at once.
    pub(crate) fn pending(&self) -> Option<Pending> {
        Arc::clone(&self.pending)
            .try_acquire_owned()
            .ok()
            .map(|_permit| Pending { _permit })
    }

    /// A descriptor for one more admitted connection, or `None`: refuse it with 503.
    pub(crate) fn open(&self) -> Option<Open> {
        Arc::clone(&self.open)
            .try_acquire_owned()
            .ok()
            .map(|_permit| Open { _permit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_stay_below_the_descriptor_limit() {
        let b = Budget::new(1024, Some(1024));
        assert_eq!(b.pending, 240, "a quarter of 1024 - 64");
        assert_eq!(b.open, 720);
        assert!(b.pending as u64 + b.open as u64 + RESERVED_DESCRIPTORS <= 1024);
        let b = Budget::new(1024, Some(1 << 20));
        assert_eq!(
            b.pending, 1024,
            "the configured bound when descriptors are plenty"
        );
        assert_eq!(b.open as u64, (1 << 20) - 64 - 1024);
        let tiny = Budget::new(1024, Some(10));
        assert_eq!((tiny.pending, tiny.open), (1, 1), "never zero");
        let unlimited = Budget::new(16, None);
        assert_eq!(unlimited.pending, 16);
    }

    #[test]
    fn permits_are_bounded_and_given_back() {
        let b = Budget::new(1, Some(RESERVED_DESCRIPTORS + 8));
        assert_eq!((b.pending, b.open), (1, 7));
        let a = Admission::new(b);
        let p = a.pending().unwrap();
        assert!(a.pending().is_none());
        drop(p);
        assert!(a.pending().is_some());
        let open: Vec<_> = std::iter::from_fn(|| a.open()).take(100).collect();
        assert_eq!(open.len(), 7);
    }
}
