//! Server-Sent Events: `GET /v1/events?channel=A[@START]&channel=B…` streams the events of up to
//! 16 channels on one response, for browsers whose network breaks WebSockets but passes a
//! streaming HTTP response (the browser's `EventSource`, or `fetch` with a reader).
//!
//! Each event carries an `id:` that is a cursor ([`tslm_protocol::cursor`]) naming the position
//! of **every** channel of the stream once the client has that event, so the browser's own
//! reconnect (`Last-Event-ID`) resumes all of them with no gap and no duplicate. A stream is a
//! sequence of log reads (the long-poll's, [`crate::poll::read`]): woken by a publish on one of
//! its channels, it reads from its positions, writes what it read, and waits again. Messages are
//! the JSON each publish encoded once, shared with the backlog (split into `data:` lines where a
//! payload has line breaks); a position the backlog no longer holds is reported by a
//! `subscribed` event with `lost`, as a v1 resume reports it.
//!
//! A stream ends with an `end` event: `token_expired` when the subscriber's token expires, the
//! shutdown reason (with its `retry:`) when the gateway stops, `reload` when the configuration
//! was reloaded (the client reconnects and is checked again), or an error.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tslm_protocol::cursor::{self, Position};

use crate::context::ListenerCtx;
use crate::identity::Identity;
use crate::poll::{self, Poll, ReadFrom, Wake};

/// A comment line this often when nothing else was sent, so that proxies keep the stream open.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(15);
/// The reconnect delay the stream asks of `EventSource` (`retry:`), in milliseconds.
pub(crate) const RETRY_MS: u64 = 3000;
/// Chunks waiting for the client's socket; past it, the stream waits (the client reads slowly)
/// and reads nothing more, so a slow reader costs no more than this. A chunk is one read's events
/// (at most `outbound_queue_bytes` of messages, and `limit` of them), so a slow reader holds at
/// most two reads here, about what a WebSocket session's outbox may hold.
pub(crate) const QUEUE: usize = 2;

/// Appends the lines of one event to `out`: `event:`, `id:` and the JSON as `data:` lines (a
/// line break in the JSON, which can only be whitespace between its tokens, starts a new `data:`
/// line; the client joins them with `\n`).
///
/// The JSON is the one each publish encoded (shared with the backlog); it is copied here into the
/// stream's batch, never encoded again. A batch goes to the client as one HTTP chunk (written by
/// `listener::native` over HTTP/1.1, by hyper over HTTP/2): hyper writes a response body's
/// chunks with at most 16 buffers per system call, so handing it the shared slices (three per
/// event) cost a system call per two or three events, where copying a few hundred bytes costs
/// far less (docs/performance.md, "Server-Sent Events").
pub(crate) fn event(out: &mut BytesMut, kind: &str, id: &str, json: &[u8]) {
    out.reserve(kind.len() + id.len() + json.len() + 24);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\nid: ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let mut start = 0;
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\n' || json[i] == b'\r' {
            out.extend_from_slice(&json[start..i]);
            out.extend_from_slice(b"\ndata: ");
            // `\r\n` is one line break.
            if json[i] == b'\r' && json.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&json[start..]);
    out.extend_from_slice(b"\n\n");
}

/// The last event of a stream: `reason`, and the reconnect delay to ask for.
fn end(reason: &str, retry_ms: u64) -> Bytes {
    let json = serde_json::json!({ "event": "end", "reason": reason }).to_string();
    Bytes::from(format!("retry: {retry_ms}\nevent: end\ndata: {json}\n\n"))
}

/// Wake-ups a stream's queue per channel holds before it overflows: a few, so that a burst
/// between two reads does not overflow it; when it does, it is made again (nothing is lost: the
/// stream reads the log).
const WAKE_QUEUE: usize = 64;

/// How long a client may leave the stream's queue full (not reading) before the stream ends:
/// like a WebSocket session's write deadline, so a reader that stops costs its slot and its
/// subscriptions for a bounded time only.
pub(crate) const STALL: Duration = Duration::from_secs(30);

/// Sends `chunks`; `false` when the client is gone or has not read for [`STALL`].
async fn send(tx: &mpsc::Sender<Bytes>, chunks: Vec<Bytes>) -> bool {
    for c in chunks {
        match tokio::time::timeout(STALL, tx.send(c)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return false,
        }
    }
    true
}

/// Runs one stream until its client goes or it ends (see the module documentation). `resume`:
/// the cursor to start from (`Last-Event-ID`, or the `cursor` parameter).
pub(crate) async fn run(
    ctx: Arc<ListenerCtx>,
    who: Identity,
    poll: Poll,
    resume: Option<Vec<Position>>,
    tx: mpsc::Sender<Bytes>,
) {
    let names = poll.names();
    let (mut from, mut positions): (Vec<ReadFrom>, Vec<Position>) = match resume {
        Some(p) => (ReadFrom::all(&p), p),
        None => (
            poll.channels
                .iter()
                .map(|(_, s)| ReadFrom::Read {
                    start: *s,
                    announce: true,
                })
                .collect(),
            // Set by each channel's `subscribed` event, which comes first.
            Vec::new(),
        ),
    };
    if !send(&tx, vec![Bytes::from(format!("retry: {RETRY_MS}\n\n"))]).await {
        return;
    }
    // Subscribed before the first read, so that nothing published meanwhile is missed.
    let mut wake = match Wake::new(&ctx, &names, WAKE_QUEUE) {
        Ok(w) => w,
        Err(e) => {
            let _ = send(&tx, vec![end(e.code.as_str(), RETRY_MS)]).await;
            return;
        }
    };
    let expires = match &who {
        Identity::Subscriber(g) => Some(g.expiry_deadline(Instant::now())),
        _ => None,
    };
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let mut changed = vec![false; names.len()];
    loop {
        let got = match poll::read(&ctx, &who, &poll, &from).await {
            Ok(got) => got,
            Err(e) => {
                let _ = send(&tx, vec![end(e.code.as_str(), RETRY_MS)]).await;
                return;
            }
        };
        if positions.is_empty() {
            positions = got.positions.clone();
        }
        // `subscribed` events first, so that every message's id names a known position for
        // every channel.
        let (announced, messages): (Vec<_>, Vec<_>) =
            got.events.into_iter().partition(|e| e.kind == "subscribed");
        // The read's events go out as one batch (bounded like the read: `limit` messages and the
        // outbox's bytes).
        let mut batch = BytesMut::new();
        for e in announced.into_iter().chain(messages) {
            positions[e.channel] = e.position;
            let id = cursor::encode(&names, &positions);
            event(&mut batch, e.kind, &id, &e.json);
        }
        if !batch.is_empty() && !send(&tx, vec![batch.freeze()]).await {
            return;
        }
        positions = got.positions;
        if got.more {
            // Only the channels with more to read now; the others wake the stream when they
            // get a message.
            from = ReadFrom::only(&positions, &got.pending);
            continue;
        }
        // Nothing more now: wait for a publish, keeping the stream alive meanwhile; then read
        // only the channels that got one.
        changed.fill(false);
        loop {
            tokio::select! {
                r = wake.wait(&mut changed) => {
                    if let Err(e) = r {
                        let _ = send(&tx, vec![end(e.code.as_str(), RETRY_MS)]).await;
                        return;
                    }
                    break;
                }
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if !send(&tx, vec![Bytes::from_static(b": keep-alive\n\n")]).await {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(expires.unwrap_or(far)) => {
                    let _ = send(&tx, vec![end("token_expired", RETRY_MS)]).await;
                    return;
                }
                _ = ctx.generation.cancelled() => {
                    if ctx.shutdown.is_cancelled() {
                        // This stream's turn to close, spread like the sessions'.
                        let turn = ctx.closing.take_turn();
                        tokio::time::sleep_until(turn.at).await;
                        let retry = tslm_protocol::close::parse_shutdown_reason(&turn.reason)
                            .unwrap_or(RETRY_MS);
                        let _ = send(&tx, vec![end(&turn.reason, retry)]).await;
                    } else {
                        let _ = send(&tx, vec![end("reload", 1000)]).await;
                    }
                    return;
                }
                _ = tx.closed() => return,
            }
        }
        from = ReadFrom::only(&positions, &changed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: &str, id: &str, json: &[u8]) -> String {
        let mut out = BytesMut::new();
        event(&mut out, kind, id, json);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn an_event_splits_line_breaks_into_data_lines() {
        assert_eq!(
            text("message", "x.1:2", b"{\"a\":\n1,\r\n\"b\":\r2}"),
            "event: message\nid: x.1:2\ndata: {\"a\":\ndata: 1,\ndata: \"b\":\ndata: 2}\n\n"
        );
        assert_eq!(
            text("message", "i", b"{}"),
            "event: message\nid: i\ndata: {}\n\n"
        );
    }

    /// Every idle stream holds this task's future (docs/performance.md, "Event streams outside
    /// hyper"); printed with `--nocapture`, bounded with some slack for compiler versions.
    #[test]
    fn an_idle_stream_task_stays_small() {
        fn size<F, Fut>(_: &F) -> usize
        where
            F: FnOnce(
                Arc<ListenerCtx>,
                Identity,
                Poll,
                Option<Vec<Position>>,
                mpsc::Sender<Bytes>,
            ) -> Fut,
        {
            std::mem::size_of::<Fut>()
        }
        let task = size(&run);
        println!("stream task future {task} bytes");
        assert!(task <= 1600, "stream task future: {task} bytes");
    }

    #[test]
    fn the_end_event_names_its_reason_and_retry() {
        let e = end("token_expired", 3000);
        assert_eq!(
            std::str::from_utf8(&e).unwrap(),
            "retry: 3000\nevent: end\ndata: {\"event\":\"end\",\"reason\":\"token_expired\"}\n\n"
        );
    }
}
