//! The paced replay of the backlog to a subscription that starts in the past (`catch_up`).

use tslm_protocol::{ChannelName, Offset};

use crate::backlog::BACKLOG_WIRE;
use crate::channel::State;
use crate::counters::{Counters, add};
use crate::outbox::PushError;
use crate::types::{CatchUp, ConnId};

/// The outcome of one replay step.
pub(crate) enum Step {
    /// [`CatchUp`] as the caller sees it.
    Answer(CatchUp),
    /// The subscription's outbox closed: the subscription was removed.
    Ended,
}

impl State {
    /// Pushes the next part of `conn`'s replay into its outbox: at most `max_frames` frames and
    /// about `max_bytes` (at least one frame). When the replay reaches the head the subscription
    /// turns live (the caller updates the channel's mirrors). Messages that left the backlog
    /// while the replay was under way are announced with a `gap` event (on wires that have one) and skipped.
    pub(crate) fn replay(
        &mut self,
        name: &ChannelName,
        conn: ConnId,
        max_frames: usize,
        max_bytes: usize,
        counters: &Counters,
    ) -> Step {
        if self.deleted {
            return Step::Answer(CatchUp::Gone);
        }
        let Some(i) = self.fanout.catching.iter().position(|c| c.sub.conn == conn) else {
            let live = self.fanout.is_live(conn);
            return Step::Answer(if live { CatchUp::Done } else { CatchUp::Gone });
        };
        let log = &self.log;
        let first = log.first_kept();
        let last = log.last_offset;
        let (mut frames, mut bytes, mut delivered) = (0usize, 0usize, 0usize);
        let c = &mut self.fanout.catching[i];
        // Replay frames only take the room the outbox leaves replays (half of it), and never
        // count against live pushes: a replay never overflows the outbox nor makes a live
        // delivery overflow it, so it never costs a subscriber that reads its connection or its
        // policy's drops; what does not fit waits for the next drain.
        while c.next <= last && frames < max_frames && (frames == 0 || bytes < max_bytes) {
            let (frame, next, delivery) = match log.backlog.get(c.next) {
                Some(m) if c.wire == BACKLOG_WIRE => (m.frame.clone(), c.next + 1, true),
                Some(m) => (
                    c.wire.delivery(name, Offset(m.offset), &m.payload).bytes,
                    c.next + 1,
                    true,
                ),
                None => {
                    // These messages left the backlog while the replay was under way.
                    let resume = if c.next < first { first } else { last + 1 };
                    match c.wire.gap(name, Offset(c.next), Offset(resume - 1)) {
                        Some(gap) => (gap, resume, false),
                        None => {
                            // The wire has no way to say so.
                            c.next = resume;
                            continue;
                        }
                    }
                }
            };
            let len = frame.len();
            match c.sub.outbox.push_replay(frame) {
                Ok(()) => {
                    frames += 1;
                    bytes += len;
                    delivered += usize::from(delivery);
                    c.next = next;
                }
                Err(PushError::Full) => break,
                Err(_) => {
                    add(&counters.deliveries, delivered);
                    self.fanout.catching.swap_remove(i);
                    return Step::Ended;
                }
            }
        }
        add(&counters.deliveries, delivered);
        if c.next <= last {
            return Step::Answer(CatchUp::More);
        }
        self.fanout.go_live(i);
        Step::Answer(CatchUp::Done)
    }
}
