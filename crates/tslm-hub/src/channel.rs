//! One channel: its *log* (epoch, offsets, backlog, `msg_id`s, reply routes) and its *fan-out*
//! on this node (subscribers per wire, the catching list), both under one short std mutex so
//! that a publish is one critical section.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use tslm_protocol::{ChannelName, Epoch, Lost, Offset, Recovery, Start, Wire};

use crate::backlog::Backlog;
use crate::dedupe::Dedupe;
use crate::fanout::Fanout;
use crate::replies::ReplyRoutes;
use crate::settings::ChannelSettings;
use crate::types::HubError;

/// Keys of channels, unique for the life of the process (0 is never one): what a connection's
/// outbox notes beside each queued delivery to find a subscription's frames.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Channel {
    pub(crate) name: ChannelName,
    pub(crate) key: u64,
    pub(crate) epoch: Epoch,
    pub(crate) settings: ChannelSettings,
    state: Mutex<State>,
    /// Mirrors of `State` read without the lock, to encode frames before taking it.
    last_offset: AtomicU64,
    /// Live subscribers by [`Wire::index`].
    live: [AtomicUsize; Wire::COUNT],
}

/// What a channel has published: dense offsets from 1 and what it keeps of them.
#[derive(Default)]
pub(crate) struct Log {
    pub(crate) last_offset: u64,
    pub(crate) backlog: Backlog,
    pub(crate) dedupe: Dedupe,
    pub(crate) routes: ReplyRoutes,
}

impl Log {
    /// The oldest offset the backlog holds (`last + 1` when empty).
    pub(crate) fn first_kept(&self) -> u64 {
        self.backlog.first().unwrap_or(self.last_offset + 1)
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) deleted: bool,
    pub(crate) log: Log,
    pub(crate) fanout: Fanout,
}

impl State {
    /// Gives back the spare capacity of tables that emptied (expired messages and `msg_id`s,
    /// departed subscribers). The sweep calls it every second.
    pub(crate) fn shrink(&mut self) {
        self.log.backlog.shrink();
        self.log.routes.shrink();
        self.log.dedupe.shrink();
        self.fanout.shrink();
    }
}

impl Channel {
    pub(crate) fn new(name: ChannelName, settings: ChannelSettings) -> Self {
        Self::with_epoch(name, settings, Epoch(rand::random()))
    }

    /// A channel whose epoch was chosen elsewhere (a mirror of a shared store's channel).
    pub(crate) fn with_epoch(name: ChannelName, settings: ChannelSettings, epoch: Epoch) -> Self {
        Self {
            name,
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            epoch,
            settings,
            state: Mutex::new(State::default()),
            last_offset: AtomicU64::new(0),
            live: Default::default(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every update of `State` keeps it consistent step by step (pushes, removals, counters
        // adjusted next to them), so a poisoned lock still holds a usable state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last offset, read without the lock.
    pub(crate) fn last_offset(&self) -> u64 {
        self.last_offset.load(Ordering::Relaxed)
    }

    /// Live subscribers of `wire`, read without the lock.
    pub(crate) fn live(&self, wire: Wire) -> usize {
        self.live[wire.index()].load(Ordering::Relaxed)
    }

    /// Updates the mirrors read without the lock.
    pub(crate) fn mirror(&self, st: &State) {
        self.last_offset
            .store(st.log.last_offset, Ordering::Relaxed);
        for wire in Wire::ALL {
            self.live[wire.index()].store(st.fanout.live(wire), Ordering::Relaxed);
        }
    }

    /// Where a subscription or history read starting at `start` begins: the first offset to
    /// send, and the recovery outcome of a resume.
    pub(crate) fn start_at(
        &self,
        log: &Log,
        start: Start,
    ) -> Result<(u64, Option<Recovery>), HubError> {
        let last = log.last_offset;
        let first = log.first_kept();
        Ok(match start {
            Start::New => (last + 1, None),
            Start::Oldest => (first, None),
            Start::Last(n) => (first.max((last + 1).saturating_sub(n)), None),
            Start::After { epoch, .. } if epoch != self.epoch => {
                (first, Some(Recovery::Incomplete(Lost::EpochChanged)))
            }
            Start::After { offset, .. } if offset.0 > last => {
                return Err(HubError::FutureOffset {
                    channel: self.name.clone(),
                    offset,
                    last: Offset(last),
                });
            }
            Start::After { offset, .. } if offset.0 + 1 >= first => {
                (offset.0 + 1, Some(Recovery::Complete))
            }
            Start::After { offset, .. } => (
                first,
                Some(Recovery::Incomplete(Lost::Expired {
                    from: Offset(offset.0 + 1),
                    to: Offset(first - 1),
                })),
            ),
        })
    }
}
