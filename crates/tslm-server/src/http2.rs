//! HTTP/2 on TLS listeners (chosen by ALPN, see [`crate::tls`]): the server's settings, each
//! limit set here rather than left to a library default, and what every stream of a connection
//! holds while it runs. docs/security.md explains each limit and what an attacker gets past it.
//!
//! One HTTP/2 connection carries many requests at once, where an HTTP/1.1 connection carries
//! one. So a stream counts as a connection would: besides the connection's own place, each
//! stream beyond the first running on it takes a place under the address's
//! `max_connections_per_ip` and the listener's `max_connections`, held until its response ends
//! (an event stream: until it closes). Six event streams cost the same places on one HTTP/2
//! connection as on six HTTP/1.1 connections, and the per-address and per-listener caps hold
//! whatever the transport.
//!
//! Two more rules keep HTTP/1.1's guarantees: a request the client cancels before its answer
//! spends a per-connection budget (rapid reset of streams already accepted, which the `h2` crate
//! does not count), and an answer that would close an HTTP/1.1 connection (`Connection: close`)
//! ends the HTTP/2 connection with GOAWAY. Both end the connection gracefully: running streams
//! finish, within the 5 seconds the listener gives a closing connection.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use hyper::server::conn::http2;
use hyper_util::rt::TokioTimer;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tslm_protocol::ProtoError;

use crate::config::Http2Config;
use crate::context::{ConnSlot, ListenerCtx};
use crate::errors;
use crate::iplimit::IpPlace;
use crate::ratelimit::TokenBucket;
use crate::stats::Stats;

/// The largest header block a client may send (SETTINGS_MAX_HEADER_LIST_SIZE), the bound of an
/// HTTP/1.1 request head too. It also bounds CONTINUATION frames: a header block in more frames
/// than it needs (a flood of empty ones) ends the connection with `ENHANCE_YOUR_CALM`.
pub(crate) const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// The HPACK table the client's encoder may use (the protocol's default).
const HEADER_TABLE_BYTES: u32 = 4096;
/// The largest frame a client may send (the protocol's least, and default).
const MAX_FRAME_BYTES: u32 = 16 * 1024;
/// What a client may send on one stream before we read it (request bodies: publishes).
const STREAM_WINDOW_BYTES: u32 = 64 * 1024;
/// What a client may send on the whole connection before we read it: the most a connection's
/// unread request data can cost us.
const CONNECTION_WINDOW_BYTES: u32 = 256 * 1024;
/// Response data one stream may have queued for a client whose flow-control window is closed
/// (a client that does not read); past it the stream waits, as on a full socket.
const MAX_SEND_BUF_BYTES: usize = 64 * 1024;
/// Streams the client opened and reset before we accepted them (the rapid-reset attack,
/// CVE-2023-44487); past it the connection ends with GOAWAY `ENHANCE_YOUR_CALM`.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Requests a client may cancel (RST_STREAM) before they are answered, per second (bursts of as
/// many): the rapid reset of streams we had already accepted, each of which cost us the start of
/// its request. Past it the connection ends with GOAWAY. A browser cancels a request when a page
/// goes away or a script aborts it: a few, not dozens a second.
const MAX_CANCELLED_REQUESTS_PER_SECOND: u32 = 20;
/// Streams we reset because the client misbehaved on them (among them the streams refused over
/// the concurrency limit); past it the connection ends with GOAWAY `ENHANCE_YOUR_CALM`.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 64;

/// The HTTP/2 server of a listener: every limit explicit, and a keep-alive ping on the
/// WebSocket's schedule (`ping_interval_seconds`, answered within `pong_timeout_seconds` or the
/// connection is closed). Extended CONNECT (RFC 8441) is not enabled: browsers open WebSockets
/// over HTTP/1.1, on a connection of their own.
pub(crate) fn builder(ctx: &ListenerCtx, cfg: Http2Config) -> http2::Builder<Tracked> {
    let mut b = http2::Builder::new(Tracked(ctx.tracker.clone()));
    b.timer(TokioTimer::new())
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .header_table_size(HEADER_TABLE_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_send_buf_size(MAX_SEND_BUF_BYTES)
        .keep_alive_interval(ctx.cfg.ping_interval)
        .keep_alive_timeout(ctx.cfg.pong_timeout);
    b
}

/// Runs each stream's task on the listener's tracker, so shutdown waits for them like for
/// every other task of the listener.
#[derive(Clone)]
pub(crate) struct Tracked(TaskTracker);

impl<F> hyper::rt::Executor<F> for Tracked
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// One HTTP/2 connection's streams: the places they take, and the request to end the connection
/// (GOAWAY) that an answer with `Connection: close` makes.
pub(crate) struct Streams {
    listener: Arc<crate::config::ListenerConfig>,
    slot: Arc<ConnSlot>,
    conn_limit: Arc<Semaphore>,
    stats: Arc<Stats>,
    /// The connection's own place is free for one stream: `true` while no stream uses it.
    spare: Arc<AtomicBool>,
    /// Requests cancelled before their answer: [`MAX_CANCELLED_REQUESTS_PER_SECOND`].
    cancels: Mutex<TokenBucket>,
    goaway: CancellationToken,
}

impl Streams {
    pub(crate) fn new(ctx: &ListenerCtx, slot: Arc<ConnSlot>) -> Self {
        Self {
            listener: Arc::clone(&ctx.cfg),
            slot,
            conn_limit: Arc::clone(&ctx.conn_limit),
            stats: Arc::clone(&ctx.stats),
            spare: Arc::new(AtomicBool::new(true)),
            cancels: Mutex::new(TokenBucket::new(
                NonZeroU32::new(MAX_CANCELLED_REQUESTS_PER_SECOND).unwrap_or(NonZeroU32::MIN),
            )),
            goaway: CancellationToken::new(),
        }
    }

    /// Cancelled when the connection is to end (graceful: GOAWAY, running streams finish).
    pub(crate) fn goaway(&self) -> CancellationToken {
        self.goaway.clone()
    }

    /// A place for one new stream: the connection's own if no other stream uses it, else one
    /// more under the address's and the listener's caps (429 or 503 as for a connection).
    pub(crate) fn admit(&self) -> Result<StreamPlace, ProtoError> {
        if self.spare.swap(false, Ordering::AcqRel) {
            return Ok(StreamPlace::Spare(Arc::clone(&self.spare)));
        }
        let ip = self.slot.ip.another().map_err(|why| {
            self.stats.count_ip_refusal();
            tracing::debug!(listener = %self.listener.name, peer = %self.slot.peer, ?why, "http/2 stream over a per-address limit: answering 429");
            errors::address_refused(why)
        })?;
        let Ok(permit) = Arc::clone(&self.conn_limit).try_acquire_owned() else {
            self.stats.count_over_capacity();
            tracing::debug!(listener = %self.listener.name, peer = %self.slot.peer, "http/2 stream over max_connections: answering 503");
            return Err(errors::listener_full());
        };
        Ok(StreamPlace::Own {
            _ip: ip,
            _permit: permit,
        })
    }

    /// A watch on one request, to be [`Unanswered::answered`] when its answer is ready; dropped
    /// before that (the client reset the stream), it spends one of the connection's cancels.
    pub(crate) fn unanswered(self: &Arc<Self>) -> Unanswered {
        Unanswered(Some(Arc::clone(self)))
    }

    fn cancelled(&self) {
        let mut cancels = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        if !cancels.try_take() && !self.goaway.is_cancelled() {
            tracing::debug!(listener = %self.listener.name, peer = %self.slot.peer, "http/2 client cancels requests too fast (rapid reset): goaway");
            self.goaway.cancel();
        }
    }

    /// The response of a stream, holding its place until its body ends. `Connection: close`
    /// (an answer that ends the connection, such as over the failed-authentication budget) has
    /// no meaning in HTTP/2: it is removed and the connection ends with GOAWAY instead.
    pub(crate) fn respond(&self, resp: Response, place: StreamPlace) -> Response {
        let (mut parts, body) = resp.into_parts();
        if parts.headers.remove(header::CONNECTION).is_some() {
            tracing::debug!(listener = %self.listener.name, peer = %self.slot.peer, "answer ends the http/2 connection: goaway");
            self.goaway.cancel();
        }
        Response::from_parts(
            parts,
            Body::new(Held {
                body,
                _place: place,
            }),
        )
    }
}

/// A request not yet answered (see [`Streams::unanswered`]).
pub(crate) struct Unanswered(Option<Arc<Streams>>);

impl Unanswered {
    pub(crate) fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(streams) = self.0.take() {
            streams.cancelled();
        }
    }
}

/// What one running stream holds.
pub(crate) enum StreamPlace {
    /// The connection's own place, given back to the connection at the end.
    Spare(Arc<AtomicBool>),
    /// A place of its own, under the address's and the listener's caps.
    Own {
        _ip: IpPlace,
        _permit: OwnedSemaphorePermit,
    },
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        if let StreamPlace::Spare(spare) = self {
            spare.store(true, Ordering::Release);
        }
    }
}

/// A response body holding its stream's place until it ends or is dropped (stream reset).
struct Held {
    body: Body,
    _place: StreamPlace,
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
