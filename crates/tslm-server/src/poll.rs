//! Long-polling, the last-resort transport for clients whose network breaks both WebSocket and
//! streaming responses: `GET /v1/poll?channel=A[@START]&channel=B…[&cursor=C][&wait=S][&limit=N]`
//! answers `{"events":[…],"cursor":"…","more":…}` as soon as there is something to say, or after
//! waiting up to `wait` seconds for a publish.
//!
//! Stateless: the cursor (`tslm_protocol::cursor`) names every channel's epoch and last offset,
//! so a poll is a read of the channel log from those positions (any gateway of a cluster can
//! answer it) and nothing is kept between polls. Messages come from the backlog: each `message`
//! event is the JSON the publish encoded once, shared with the backlog and with every other
//! poller (no message is encoded again). A position the backlog no longer holds is reported
//! with a `subscribed` event whose `lost` says what was missed, as a v1 resume would; a poller
//! therefore gets every message of its channels in order, exactly once, or is told what it lost.
//!
//! While it waits, a poll holds a temporary subscription of each channel (against the hub's
//! `max_subscriptions`), dropped when the poll answers or its client goes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tslm_hub::{ConnId, Outbox, OutboxLimits};
use tslm_protocol::cursor::{self, Position};
use tslm_protocol::{ChannelName, Offset, ProtoError, Start, Wire, v1};

use crate::context::ListenerCtx;
use crate::identity::Identity;
use crate::ops;

/// Channels one poll may read.
pub(crate) const MAX_CHANNELS: usize = 16;
/// The longest wait a poll may ask for, and the default.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_WAIT: Duration = Duration::from_secs(25);
/// Messages per answer by default (`limit` may ask for 1..=1000).
pub(crate) const DEFAULT_LIMIT: usize = 100;

/// A validated poll request (its `Debug` leaves the ticket out: it is a credential).
pub(crate) struct Poll {
    pub(crate) channels: Vec<(ChannelName, Start)>,
    pub(crate) cursor: Option<String>,
    /// A ticket (`POST /v1/tickets`) instead of an `Authorization` header.
    pub(crate) ticket: Option<String>,
    pub(crate) wait: Duration,
    pub(crate) limit: usize,
}

impl std::fmt::Debug for Poll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poll")
            .field("channels", &self.channels)
            .field("cursor", &self.cursor)
            .field("ticket", &self.ticket.as_ref().map(|_| "<redacted>"))
            .field("wait", &self.wait)
            .field("limit", &self.limit)
            .finish()
    }
}

impl Poll {
    /// Reads the query string (`bad_request` naming what is wrong). A stream (`stream`: Server-Sent
    /// Events) takes no `wait`.
    pub(crate) fn parse(query: &str, stream: bool) -> Result<Self, ProtoError> {
        let mut poll = Poll {
            channels: Vec::new(),
            cursor: None,
            ticket: None,
            wait: DEFAULT_WAIT,
            limit: DEFAULT_LIMIT,
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "channel" => {
                    if poll.channels.len() == MAX_CHANNELS {
                        return Err(ProtoError::bad_request(format!(
                            "a poll reads at most {MAX_CHANNELS} channels"
                        )));
                    }
                    let (name, start) = cursor::parse_channel(&v)?;
                    if poll.channels.iter().any(|(n, _)| *n == name) {
                        return Err(ProtoError::bad_request(format!(
                            "`channel` {name} is named twice"
                        )));
                    }
                    poll.channels.push((name, start));
                }
                "cursor" if poll.cursor.is_none() => poll.cursor = Some(v.into_owned()),
                "ticket" if poll.ticket.is_none() => poll.ticket = Some(v.into_owned()),
                "wait" if !stream => {
                    poll.wait = v
                        .parse::<u64>()
                        .ok()
                        .map(Duration::from_secs)
                        .filter(|w| *w <= MAX_WAIT)
                        .ok_or_else(|| {
                            ProtoError::bad_request(format!(
                                "`wait` must be whole seconds from 0 to {}",
                                MAX_WAIT.as_secs()
                            ))
                        })?;
                }
                "limit" => {
                    poll.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|l| (1..=ops::MAX_HISTORY).contains(l))
                        .ok_or_else(|| {
                            ProtoError::bad_request(format!(
                                "`limit` must be an integer from 1 to {}",
                                ops::MAX_HISTORY
                            ))
                        })?;
                }
                other => {
                    return Err(ProtoError::bad_request(format!(
                        "unknown or repeated query parameter `{}`",
                        other.chars().take(64).collect::<String>()
                    )));
                }
            }
        }
        if poll.channels.is_empty() {
            return Err(ProtoError::bad_request(
                "name at least one `channel` (NAME or NAME@START)",
            ));
        }
        Ok(poll)
    }

    pub(crate) fn names(&self) -> Vec<ChannelName> {
        self.channels.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// An answer: its JSON as chunks (shared slices of the backlog between small literal parts).
pub(crate) struct Answer {
    pub(crate) chunks: Vec<Bytes>,
}

/// One event of a read: its JSON (shared with the backlog for a message), its kind, and where
/// its channel (by index in the request) stands once the client has it.
pub(crate) struct Event {
    pub(crate) channel: usize,
    pub(crate) kind: &'static str,
    pub(crate) position: Position,
    pub(crate) json: Bytes,
}

/// Where one channel of a read starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReadFrom {
    /// Read from `start`; `announce`: with a `subscribed` event even when nothing was lost.
    Read { start: Start, announce: bool },
    /// Not read (nothing was published there since it was last read): it stays where it is.
    Keep(Position),
}

impl ReadFrom {
    /// Every channel read from `positions`, none announced.
    pub(crate) fn all(positions: &[Position]) -> Vec<ReadFrom> {
        positions
            .iter()
            .map(|p| ReadFrom::Read {
                start: p.start(),
                announce: false,
            })
            .collect()
    }

    /// The channels flagged in `read` read from their positions, the others kept.
    pub(crate) fn only(positions: &[Position], read: &[bool]) -> Vec<ReadFrom> {
        positions
            .iter()
            .zip(read)
            .map(|(p, &r)| {
                if r {
                    ReadFrom::Read {
                        start: p.start(),
                        announce: false,
                    }
                } else {
                    ReadFrom::Keep(*p)
                }
            })
            .collect()
    }
}

/// One read of the channels (the new position of every channel; `pending`: the channels with
/// more to read now, `more`: any of them).
pub(crate) struct Read {
    pub(crate) events: Vec<Event>,
    pub(crate) positions: Vec<Position>,
    pub(crate) pending: Vec<bool>,
    pub(crate) more: bool,
}

/// Reads the channels of `poll` from `from` (one each; a kept channel is not read).
pub(crate) async fn read(
    ctx: &ListenerCtx,
    who: &Identity,
    poll: &Poll,
    from: &[ReadFrom],
) -> Result<Read, ProtoError> {
    let mut budget = ctx.cfg.outbox.max_bytes;
    let mut left = poll.limit;
    let mut out = Read {
        events: Vec::new(),
        positions: Vec::with_capacity(from.len()),
        pending: Vec::with_capacity(from.len()),
        more: false,
    };
    for (i, ((channel, _), from)) in poll.channels.iter().zip(from).enumerate() {
        let (start, announce) = match *from {
            ReadFrom::Read { start, announce } => (start, announce),
            ReadFrom::Keep(p) => {
                out.positions.push(p);
                out.pending.push(false);
                continue;
            }
        };
        // Every channel is read, with at least one message when one follows (so that no channel
        // can be starved by the others); the rest of the answer's bounds are shared.
        let h = ops::read(ctx, who, channel, start, left.max(1), budget.max(1)).await?;
        let lost = matches!(
            h.subscription.recovery,
            Some(tslm_protocol::Recovery::Incomplete(_))
        );
        let sub = &h.subscription;
        if announce || lost {
            out.events.push(Event {
                channel: i,
                kind: "subscribed",
                position: Position {
                    epoch: sub.epoch,
                    offset: Offset(sub.from.0.saturating_sub(1)),
                },
                json: v1::encode_subscribed(channel, sub),
            });
        }
        let last = h
            .messages
            .last()
            .map_or(Offset(h.subscription.from.0.saturating_sub(1)), |m| m.0);
        out.positions.push(Position {
            epoch: h.subscription.epoch,
            offset: last,
        });
        left = left.saturating_sub(h.events.len());
        budget = budget.saturating_sub(h.events.iter().map(Bytes::len).sum());
        out.more |= h.more;
        out.pending.push(h.more);
        for (json, (offset, _)) in h.events.into_iter().zip(&h.messages) {
            out.events.push(Event {
                channel: i,
                kind: "message",
                position: Position {
                    epoch: sub.epoch,
                    offset: *offset,
                },
                json,
            });
        }
    }
    Ok(out)
}

/// The temporary subscriptions that wake a waiting poll or an event stream when one of its
/// channels gets a message: one small wake-up queue per channel, so that a publish wakes only
/// the waiters of its channel and tells them which of their channels to read. What is queued
/// is only counted (refcounts of the frames each publish encoded once) and forgotten: the
/// waiter reads the log. Unsubscribed however the waiter ends.
pub(crate) struct Wake<'a> {
    ctx: &'a ListenerCtx,
    id: ConnId,
    /// The channels subscribed, in the request's order, each with its queue.
    channels: Vec<(ChannelName, Arc<Outbox>)>,
    max_messages: usize,
    scratch: VecDeque<Bytes>,
}

impl<'a> Wake<'a> {
    /// Subscribes `channels` (new messages only). `max_messages`: wake-ups a queue holds before
    /// it overflows (which flags its channel too, and makes its subscription again).
    pub(crate) fn new(
        ctx: &'a ListenerCtx,
        channels: &[ChannelName],
        max_messages: usize,
    ) -> Result<Self, ProtoError> {
        let mut wake = Wake {
            ctx,
            id: ctx.hub.next_conn_id(),
            channels: Vec::with_capacity(channels.len()),
            max_messages,
            scratch: VecDeque::new(),
        };
        for c in channels {
            let outbox = wake.subscribe(c)?;
            wake.channels.push((c.clone(), outbox));
        }
        Ok(wake)
    }

    fn subscribe(&self, channel: &ChannelName) -> Result<Arc<Outbox>, ProtoError> {
        let outbox = Arc::new(Outbox::new(OutboxLimits {
            max_bytes: usize::MAX,
            max_messages: self.max_messages,
        }));
        self.ctx
            .hub
            .subscribe(channel, self.id, Wire::V1Ws, &outbox, Start::New)
            .map_err(ops::hub_error)?;
        Ok(outbox)
    }

    /// Flags in `changed` each channel that got a message since the last call (or whose queue
    /// overflowed, after subscribing it again); `true` when any did. Does not wait.
    pub(crate) fn changed(&mut self, changed: &mut [bool]) -> Result<bool, ProtoError> {
        let mut any = false;
        for (i, (channel, outbox)) in self.channels.iter_mut().enumerate() {
            let closed = outbox.take(&mut self.scratch).is_some();
            if closed || !self.scratch.is_empty() {
                self.scratch.clear();
                changed[i] = true;
                any = true;
            }
            if closed {
                self.ctx.hub.unsubscribe(channel, self.id);
                let fresh = Arc::new(Outbox::new(OutboxLimits {
                    max_bytes: usize::MAX,
                    max_messages: self.max_messages,
                }));
                // Subscribed before the channel is read again, so nothing is missed.
                self.ctx
                    .hub
                    .subscribe(channel, self.id, Wire::V1Ws, &fresh, Start::New)
                    .map_err(ops::hub_error)?;
                *outbox = fresh;
            }
        }
        Ok(any)
    }

    /// Waits until a channel got a message; flags it (and any other that did) in `changed`.
    /// Cancel-safe: nothing is taken until the wait is over.
    pub(crate) async fn wait(&mut self, changed: &mut [bool]) -> Result<(), ProtoError> {
        while !self.changed(changed)? {
            match self.channels.as_slice() {
                [(_, one)] => one.ready().await,
                many => {
                    futures_util::future::select_all(many.iter().map(|(_, o)| Box::pin(o.ready())))
                        .await;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        for (channel, outbox) in &self.channels {
            outbox.close();
            self.ctx.hub.unsubscribe(channel, self.id);
        }
    }
}

/// Runs `poll` for `who` (the caller admitted the request).
pub(crate) async fn run(
    ctx: &ListenerCtx,
    who: &Identity,
    poll: &Poll,
) -> Result<Answer, ProtoError> {
    let names = poll.names();
    // Each channel's start, and whether its answer announces it (`subscribed`): every channel on
    // a first poll; on later ones only a channel whose position could not be resumed.
    let from: Vec<ReadFrom> = match &poll.cursor {
        Some(c) => ReadFrom::all(&cursor::decode(&names, c)?),
        None => poll
            .channels
            .iter()
            .map(|(_, s)| ReadFrom::Read {
                start: *s,
                announce: true,
            })
            .collect(),
    };
    let mut got = read(ctx, who, poll, &from).await?;
    if got.events.is_empty() && !poll.wait.is_zero() {
        // Nothing yet: wait for a publish on any of the channels. The subscriptions are made
        // before reading again, so a message published in between is not missed.
        let mut wake = Wake::new(ctx, &names, 1)?;
        let here = got.positions;
        got = read(ctx, who, poll, &ReadFrom::all(&here)).await?;
        if got.events.is_empty() {
            let mut changed = vec![false; names.len()];
            tokio::select! {
                r = wake.wait(&mut changed) => r?,
                _ = tokio::time::sleep(poll.wait) => {}
                // Shutdown, or a reload: answer now; the next poll is judged by the new
                // configuration.
                _ = ctx.generation.cancelled() => {}
            }
            // Only the channels that got a message are read again.
            wake.changed(&mut changed)?;
            drop(wake);
            got = read(ctx, who, poll, &ReadFrom::only(&here, &changed)).await?;
        }
    }
    let cursor = cursor::encode(&names, &got.positions);
    let mut chunks = Vec::with_capacity(got.events.len() * 2 + 2);
    chunks.push(Bytes::from_static(b"{\"events\":["));
    for (i, e) in got.events.into_iter().enumerate() {
        if i > 0 {
            chunks.push(Bytes::from_static(b","));
        }
        chunks.push(e.json);
    }
    chunks.push(Bytes::from(format!(
        "],\"cursor\":\"{cursor}\",\"more\":{}}}",
        got.more
    )));
    Ok(Answer { chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_strictly() {
        let p = Poll::parse(
            "channel=a&channel=b%40oldest&wait=0&limit=5&cursor=x",
            false,
        )
        .unwrap();
        assert!(
            Poll::parse("channel=a&wait=0", true).is_err(),
            "a stream does not wait"
        );
        assert!(Poll::parse("channel=a&limit=5", true).is_ok());
        assert_eq!(p.channels.len(), 2);
        assert_eq!(p.channels[1].1, Start::Oldest);
        assert_eq!(
            (p.wait, p.limit, p.cursor.as_deref()),
            (Duration::ZERO, 5, Some("x"))
        );
        let many = (0..=MAX_CHANNELS)
            .map(|i| format!("channel=c{i}"))
            .collect::<Vec<_>>()
            .join("&");
        for bad in [
            "",
            "wait=1",
            "channel=a&channel=a",
            "channel=a&wait=31",
            "channel=a&wait=-1",
            "channel=a&limit=0",
            "channel=a&limit=1001",
            "channel=a&cursor=x&cursor=y",
            "channel=a&other=1",
            "channel=%20",
            many.as_str(),
        ] {
            assert!(Poll::parse(bad, false).is_err(), "{bad:?}");
        }
    }
}
