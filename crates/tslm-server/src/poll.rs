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

/// One read of every channel: the events and the new positions (`more`: some channel has more
/// to read now).
pub(crate) struct Read {
    pub(crate) events: Vec<Event>,
    pub(crate) positions: Vec<Position>,
    pub(crate) more: bool,
}

/// Reads every channel of `poll` from `starts` (a start each, and whether to announce it with a
/// `subscribed` event even when nothing was lost).
pub(crate) async fn read(
    ctx: &ListenerCtx,
    who: &Identity,
    poll: &Poll,
    starts: &[(Start, bool)],
) -> Result<Read, ProtoError> {
    let mut budget = ctx.cfg.outbox.max_bytes;
    let mut left = poll.limit;
    let mut out = Read {
        events: Vec::new(),
        positions: Vec::with_capacity(starts.len()),
        more: false,
    };
    for (i, ((channel, _), (start, announce))) in poll.channels.iter().zip(starts).enumerate() {
        // Every channel is read, with at least one message when one follows (so that no channel
        // can be starved by the others); the rest of the answer's bounds are shared.
        let h = ops::read(ctx, who, channel, *start, left.max(1), budget.max(1)).await?;
        let lost = matches!(
            h.subscription.recovery,
            Some(tslm_protocol::Recovery::Incomplete(_))
        );
        let sub = &h.subscription;
        if *announce || lost {
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

/// Unsubscribes a waiting poll's temporary subscriptions however the poll ends.
struct Waiting<'a> {
    ctx: &'a ListenerCtx,
    id: ConnId,
    channels: Vec<ChannelName>,
    outbox: Arc<Outbox>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.outbox.close();
        for c in &self.channels {
            self.ctx.hub.unsubscribe(c, self.id);
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
    let starts: Vec<(Start, bool)> = match &poll.cursor {
        Some(c) => cursor::decode(&names, c)?
            .into_iter()
            .map(|p| (p.start(), false))
            .collect(),
        None => poll.channels.iter().map(|(_, s)| (*s, true)).collect(),
    };
    let mut got = read(ctx, who, poll, &starts).await?;
    if got.events.is_empty() && !poll.wait.is_zero() {
        // Nothing yet: wait for a publish on any of the channels. The subscriptions are made
        // before reading again, so a message published in between is not missed.
        let waiting = Waiting {
            ctx,
            id: ctx.hub.next_conn_id(),
            channels: Vec::new(),
            outbox: Arc::new(Outbox::new(OutboxLimits {
                max_bytes: 1,
                max_messages: 1,
            })),
        };
        let mut waiting = waiting;
        for c in &names {
            ctx.hub
                .subscribe(c, waiting.id, Wire::V1Ws, &waiting.outbox, Start::New)
                .map_err(ops::hub_error)?;
            waiting.channels.push(c.clone());
        }
        let here: Vec<(Start, bool)> = got.positions.iter().map(|p| (p.start(), false)).collect();
        got = read(ctx, who, poll, &here).await?;
        if got.events.is_empty() {
            tokio::select! {
                _ = waiting.outbox.ready() => {}
                _ = tokio::time::sleep(poll.wait) => {}
                // Shutdown, or a reload: answer now; the next poll is judged by the new
                // configuration.
                _ = ctx.generation.cancelled() => {}
            }
            drop(waiting);
            got = read(ctx, who, poll, &here).await?;
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
