//! The WebSocket transport: one task per connection drives a [`Connection`] over its socket:
//! reads frames and hands them to the connection, writes its replies and the deliveries queued
//! in its outbox (vectored, in batches), pings, deadlines and close codes. No lock held across an
//! `.await`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tracing::Instrument;
use tslm_hub::CloseReason;
use tslm_protocol::{Dialect, ProtoError, WsFrame, close, legacy, v1};

use crate::connection::{Connection, PerSecond};
use crate::context::{ConnSlot, ListenerCtx};
use crate::errors::rate_limited;
use crate::identity::Identity;

type Ws = WebSocketStream<Io>;
type Io = LazyRead<TokioIo<Upgraded>>;

/// Bytes tungstenite reads at a time from [`LazyRead`] (its own buffer, held for the life of the
/// connection, starts at this size).
const FRAME_READ_BYTES: usize = 256;

/// How long a close handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many batches are written in a row before the session reads again.
const MAX_BATCHES_PER_WAKE: usize = 8;
/// At most this many received frames run before their replies are written out.
const MAX_FRAMES_PER_BURST: usize = 64;
/// Bytes of received frames a grouped burst (cluster mode) reads before running them.
const MAX_BURST_BYTES: usize = 64 << 10;

/// Why a session ends.
#[derive(Debug)]
enum End {
    /// The peer closed or the socket failed: nothing more to send.
    Gone,
    /// We close with this code and reason.
    Close(u16, &'static str),
    /// The server shuts down: 1001 with a reason that says when to come back (see `drain`).
    Shutdown(String),
}

pub(crate) async fn run(
    ctx: Arc<ListenerCtx>,
    conn: Arc<ConnSlot>,
    on_upgrade: OnUpgrade,
    dialect: Dialect,
    identity: Identity,
    credential: Option<Arc<str>>,
) {
    // The upgrade wait and the stream's set-up are boxed, and gone once the session starts:
    // their futures (the stream being built is as large as the stream) are no part of this
    // task's, which every idle connection holds for its whole life. The session itself is not
    // boxed: one allocation per connection fewer, and no second copy of its state.
    let Some((session, ws, span)) =
        Box::pin(open(ctx, conn, on_upgrade, dialect, identity, credential)).await
    else {
        return;
    };
    session.serve(ws).instrument(span).await
}

/// Waits for the upgrade and sets the session up.
async fn open(
    ctx: Arc<ListenerCtx>,
    conn: Arc<ConnSlot>,
    on_upgrade: OnUpgrade,
    dialect: Dialect,
    identity: Identity,
    credential: Option<Arc<str>>,
) -> Option<(Session, Ws, tracing::Span)> {
    let upgraded = match tokio::time::timeout(ctx.cfg.handshake_timeout, on_upgrade).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "websocket upgrade failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "websocket upgrade timed out");
            return None;
        }
    };
    let cfg = &ctx.cfg;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(FRAME_READ_BYTES)
        .write_buffer_size(cfg.write_buffer_bytes)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(cfg.max_message_bytes))
        .max_frame_size(Some(cfg.max_frame_bytes));
    let ws = WebSocketStream::from_raw_socket(
        LazyRead::new(TokioIo::new(upgraded), cfg.read_buffer_bytes),
        Role::Server,
        Some(ws_config),
    )
    .await;
    let mut connection = Connection::new(Arc::clone(&ctx), conn, dialect, identity);
    connection.credential = credential;
    let span = tracing::debug_span!("session", listener = %cfg.name, conn = %connection.id, peer = %connection.conn.peer, ?dialect);
    let session = Session {
        connection,
        _gauge: ctx.stats.session(dialect),
        batch: VecDeque::new(),
        defer_flush: false,
        raw_replies: false,
        control_frames: PerSecond::new(cfg.abuse.max_control_frames_per_second),
    };
    span.in_scope(|| tracing::debug!("session started"));
    Some((session, ws, span))
}

/// A WebSocket session: drives one [`Connection`] over its socket (frames in, replies and
/// queued deliveries out, pings, close codes).
struct Session {
    connection: Connection,
    batch: VecDeque<Bytes>,
    /// While a burst of received frames runs ([`Session::on_burst`]): replies are queued, and
    /// written out once at its end.
    defer_flush: bool,
    /// Replies go to the socket as frames of ours, not through tungstenite: after a grouped
    /// burst read the end of the input (or the peer's close) ahead of running its frames,
    /// tungstenite refuses to send, but the frames read before it still get their answers.
    raw_replies: bool,
    /// Ping and pong frames received in the current second.
    control_frames: PerSecond,
    _gauge: crate::stats::Gauge,
}

impl Session {
    /// Not an `async fn`: the block uses the session and the stream where they were captured,
    /// where an `async fn` would keep its arguments and a moved copy of them (632 bytes more
    /// in every idle session, measured by `tests::an_idle_session_future_stays_small`).
    #[allow(clippy::manual_async_fn)]
    fn serve(mut self, mut ws: Ws) -> impl std::future::Future<Output = ()> + Send {
        async move {
            let end = self.main_loop(&mut ws).await;
            // Stop deliveries before the (possibly slow) close handshake.
            self.connection.unsubscribe_all();
            match end {
                End::Gone => tracing::debug!("session ended by peer"),
                End::Close(code, reason) => {
                    self.connection.ctx.stats.count_close(code);
                    if matches!(
                        code,
                        close::SLOW_CONSUMER
                            | close::PING_TIMEOUT
                            | close::MESSAGE_TOO_BIG
                            | close::POLICY_VIOLATION
                            | close::CREDENTIAL_REVOKED
                    ) {
                        tracing::info!(listener = %self.connection.ctx.cfg.name, conn = %self.connection.id, peer = %self.connection.conn.peer, code, reason, "closing session");
                    } else {
                        tracing::debug!(code, reason, "closing session");
                    }
                    Box::pin(close_gracefully(ws, code, reason)).await;
                }
                End::Shutdown(reason) => {
                    self.connection.ctx.stats.count_close(close::GOING_AWAY);
                    tracing::debug!(code = close::GOING_AWAY, reason, "closing session");
                    Box::pin(close_gracefully(ws, close::GOING_AWAY, &reason)).await;
                }
            }
        }
    }

    /// After the context's generation ended: moves to the listener's new context (a reload),
    /// or ends with 1001 (shutdown, listener removed), or with what `rebind` refuses.
    fn follow_reload(&mut self) -> Result<(), End> {
        match self.connection.ctx.successor() {
            None => Err(End::Close(close::GOING_AWAY, "going away")),
            Some((next, _)) => self
                .connection
                .rebind(next)
                .map_err(|(code, reason)| End::Close(code, reason)),
        }
    }

    async fn main_loop(&mut self, ws: &mut Ws) -> End {
        let ping_interval = self.connection.ctx.cfg.ping_interval;
        let mut next_ping = Instant::now() + ping_interval;
        let mut pong_deadline: Option<Instant> = None;
        // "Never": read once, not once per turn of the loop (the clock is read on every wake-up
        // otherwise, up to four times).
        let never = Instant::now() + Duration::from_secs(86_400 * 365 * 100);
        let far = || never;
        // At shutdown, this session's turn to close (it is served until then).
        let mut closing: Option<crate::drain::Turn> = None;
        loop {
            let dead_at = pong_deadline.unwrap_or_else(far);
            // Authentication deadline, or the expiry of the subscriber's access token.
            let auth_at = match (&self.connection.auth_deadline, &self.connection.identity) {
                (Some(at), _) => *at,
                (None, Identity::Subscriber(g)) => g.expiry_deadline(Instant::now()),
                _ => far(),
            };
            // A reload that happened while the last step ran is taken before the next request,
            // so that nothing received after it runs under a revoked credential.
            if self.connection.ctx.generation.is_cancelled()
                && !self.connection.ctx.shutdown.is_cancelled()
                && let Err(end) = self.follow_reload()
            {
                return end;
            }
            let close_at = closing.as_ref().map_or_else(far, |t| t.at);
            let deadline = dead_at.min(auth_at).min(close_at);
            // The select only says what woke the session; its futures are dropped before the
            // work is done, so they and the work's futures share the same bytes of this
            // (every idle session's) future.
            let wake = tokio::select! {
                _ = self.connection.ctx.generation.cancelled(), if closing.is_none() => Wake::Generation,
                msg = ws.next() => Wake::Read(msg),
                _ = self.connection.outbox.ready() => Wake::Outbox,
                // One timer for the next ping and every deadline: every timer in this loop is
                // part of every idle session's memory.
                _ = sleep_until(next_ping.min(deadline)) => Wake::Timer,
            };
            let step = match wake {
                // Shutdown (or this listener removed): this session takes its turn to close. A
                // reload: the connection moves to the new context, or closes when the reload
                // revoked its credential.
                Wake::Generation => {
                    if self.connection.ctx.shutdown.is_cancelled() {
                        closing = Some(self.connection.ctx.closing.take_turn());
                        Ok(())
                    } else {
                        self.follow_reload()
                    }
                }
                Wake::Read(msg) => {
                    pong_deadline = None;
                    next_ping = Instant::now() + ping_interval;
                    match msg {
                        None => Err(End::Gone),
                        Some(Err(e)) => Err(classify(&e)),
                        // Boxed: a burst's state (a command, its reply's write) must not weigh
                        // on every idle session's future; one allocation per burst of input.
                        Some(Ok(m)) => Box::pin(self.on_burst(ws, m)).await,
                    }
                }
                // With write coalescing, the outbox was held after the last write: this is the
                // listener's tick releasing it (crate::pacer).
                Wake::Outbox => self.write_out(ws, None).await,
                Wake::Timer if deadline <= Instant::now() => {
                    Err(if close_at <= dead_at.min(auth_at) {
                        End::Shutdown(closing.take().map(|t| t.reason).unwrap_or_default())
                    } else if dead_at <= auth_at {
                        End::Close(close::PING_TIMEOUT, "ping timeout")
                    } else if self.connection.auth_deadline.is_some() {
                        End::Close(close::AUTH_TIMEOUT, "authentication required")
                    } else {
                        End::Close(close::TOKEN_EXPIRED, "token expired")
                    })
                }
                Wake::Timer => {
                    next_ping = Instant::now() + ping_interval;
                    if pong_deadline.is_none() {
                        pong_deadline = Some(Instant::now() + self.connection.ctx.cfg.pong_timeout);
                    }
                    self.write_out(ws, Some(Message::Ping(Bytes::new()).into()))
                        .await
                }
            };
            if let Err(end) = step {
                return end;
            }
            if !self.connection.catching.is_empty() && self.connection.outbox.queued_frames() == 0 {
                self.connection.pump_replays();
                // A replay step goes out at once, not at the coalescing tick: holding would slow
                // a catch-up to a step per tick, and a subscriber that could keep up would fall
                // behind the backlog.
                if self.connection.ctx.pacer.is_some() {
                    self.connection.outbox.unhold();
                }
            }
        }
    }

    /// Runs `first` and every further frame already received (up to [`MAX_FRAMES_PER_BURST`]),
    /// then writes their replies out together: a publisher that sends a batch of publishes gets
    /// its acknowledgements in one system call instead of one each. Replies wait in
    /// tungstenite's write buffer meanwhile (written out whenever it passes
    /// `write_buffer_bytes`), so the bound on what a connection holds is unchanged.
    ///
    /// With a broker that publishes several at once (cluster mode), the frames already received
    /// are read first and a run of text frames of a v1 connection goes to
    /// [`Session::on_texts`], which sends consecutive publishes to one channel to the broker
    /// together (one Redis round trip for the run instead of one per publish; the replies keep
    /// their order).
    async fn on_burst(&mut self, ws: &mut Ws, first: Message) -> Result<(), End> {
        self.defer_flush = true;
        // Only where grouping pays (the in-memory broker publishes one by one either way).
        let ctx = &self.connection.ctx;
        let groups = self.connection.dialect == Dialect::V1
            && !ctx.cfg.echo
            && ctx.cfg.permissions.publish
            && crate::ops::publishes_together(ctx);
        let step = if groups {
            self.run_burst_grouped(ws, first).await
        } else {
            self.run_burst(ws, first).await
        };
        self.defer_flush = false;
        // Flushes the replies (and writes any deliveries queued meanwhile first), also when the
        // burst ended in an error: the frames that ran were carried out, and a client that
        // closed its sending side after a batch still reads their answers.
        let flushed = self.write_out(ws, None).await;
        step?;
        flushed
    }

    /// Runs `first` and each further frame already received, one by one.
    async fn run_burst(&mut self, ws: &mut Ws, first: Message) -> Result<(), End> {
        let mut step = self.on_message(ws, first).await;
        for _ in 1..MAX_FRAMES_PER_BURST {
            // A reload (or shutdown) meanwhile: the main loop takes it before the next frame,
            // so that nothing received after it runs under a revoked credential.
            if step.is_err() || self.connection.ctx.generation.is_cancelled() {
                break;
            }
            // Only what is already here: `Pending` ends the burst (and the waker it registered
            // is the one the main loop's read registers again).
            step = match futures_util::poll!(ws.next()) {
                std::task::Poll::Pending => break,
                std::task::Poll::Ready(None) => Err(End::Gone),
                std::task::Poll::Ready(Some(Err(e))) => Err(classify(&e)),
                std::task::Poll::Ready(Some(Ok(m))) => self.on_message(ws, m).await,
            };
        }
        step
    }

    /// Reads the frames already received first, then runs them: a run of text frames goes to
    /// [`Session::on_texts`] (publishes grouped), anything else one by one.
    async fn run_burst_grouped(&mut self, ws: &mut Ws, first: Message) -> Result<(), End> {
        let mut bytes = first.len();
        let mut burst = VecDeque::from([first]);
        let mut ended = Ok(());
        // Held at once: at most MAX_FRAMES_PER_BURST frames and about MAX_BURST_BYTES (the
        // frame that passes it is the last), so a burst of large frames costs no more memory
        // than a few of them.
        while burst.len() < MAX_FRAMES_PER_BURST
            && bytes < MAX_BURST_BYTES
            && !matches!(burst.back(), Some(Message::Close(_)))
            && !self.connection.ctx.generation.is_cancelled()
        {
            match futures_util::poll!(ws.next()) {
                std::task::Poll::Pending => break,
                std::task::Poll::Ready(None) => {
                    ended = Err(End::Gone);
                    break;
                }
                std::task::Poll::Ready(Some(Err(e))) => {
                    ended = Err(classify(&e));
                    break;
                }
                std::task::Poll::Ready(Some(Ok(m))) => {
                    bytes += m.len();
                    burst.push_back(m);
                }
            }
        }
        // Read past the input's end or the peer's close: tungstenite no longer sends, so this
        // burst's answers are written as frames of ours (before the close answer it holds).
        self.raw_replies = ended.is_err() || matches!(burst.back(), Some(Message::Close(_)));
        while let Some(m) = burst.pop_front() {
            // A reload while an earlier group waited on the broker: taken before the next one.
            let ctx = &self.connection.ctx;
            if ctx.generation.is_cancelled() && !ctx.shutdown.is_cancelled() {
                self.follow_reload()?;
            }
            let step = match m {
                Message::Text(text) if matches!(burst.front(), Some(Message::Text(_))) => {
                    let mut texts = VecDeque::from([Bytes::from(text)]);
                    while let Some(Message::Text(_)) = burst.front() {
                        if let Some(Message::Text(t)) = burst.pop_front() {
                            texts.push_back(Bytes::from(t));
                        }
                    }
                    self.on_texts(ws, texts).await
                }
                m => self.on_message(ws, m).await,
            };
            step?;
        }
        ended
    }

    async fn on_message(&mut self, ws: &mut Ws, msg: Message) -> Result<(), End> {
        if self.connection.ctx.cfg.echo && matches!(msg, Message::Text(_) | Message::Binary(_)) {
            return self.write_out(ws, Some(msg.into())).await;
        }
        let reply = match msg {
            // Boxed: a command's future (it may wait on the broker) must not weigh on every
            // idle session's; one allocation per command, none per delivery.
            Message::Text(text) => match Box::pin(self.connection.on_text(Bytes::from(text))).await
            {
                Ok(reply) => reply,
                // Boxed: token validation may fetch keys, and its future must not weigh on
                // every idle session's.
                Err(pending) => Box::pin(self.connection.run_auth(pending)).await,
            },
            Message::Binary(_) => {
                // Refused frames take a token like any other, so they cannot flood replies.
                let allowed = self.connection.allow_command();
                match (self.connection.dialect, allowed) {
                    (Dialect::Legacy, false) => legacy::encode_error(&legacy::Error::RateLimited),
                    (Dialect::Legacy, true) => legacy::encode_error(&legacy::Error::Binary),
                    (Dialect::V1, false) => {
                        v1::encode_error(None, &rate_limited(&self.connection.ctx.cfg))
                    }
                    (Dialect::V1, true) => v1::encode_error(
                        None,
                        &ProtoError::bad_request(
                            "binary frames are not supported: send JSON in text frames",
                        ),
                    ),
                }
            }
            // tungstenite answers pings itself (the next read flushes the pong); a flood of them
            // would make us write as much as the peer sends, so it is bounded.
            Message::Ping(_) | Message::Pong(_) => {
                if self.control_frames.hit() {
                    return Err(End::Close(
                        close::POLICY_VIOLATION,
                        "too many control frames",
                    ));
                }
                return Ok(());
            }
            Message::Close(_) | Message::Frame(_) => return Ok(()),
        };
        self.write_reply(ws, reply).await
    }

    /// Runs `texts` (v1 text frames read together) with [`Connection::on_texts`], writing each
    /// reply as [`Session::on_message`] does.
    async fn on_texts(&mut self, ws: &mut Ws, mut texts: VecDeque<Bytes>) -> Result<(), End> {
        while !texts.is_empty() {
            // A reload while an earlier group waited on the broker: taken before the rest.
            let ctx = &self.connection.ctx;
            if ctx.generation.is_cancelled() && !ctx.shutdown.is_cancelled() {
                self.follow_reload()?;
            }
            // Boxed, as a single command's future is.
            // Every reply of the frames run goes out, up to the one that made the connection
            // abusive (the run stopped there), as one by one.
            let (replies, pending) = Box::pin(self.connection.on_texts(&mut texts)).await;
            for reply in replies {
                self.send_reply(ws, reply).await?;
            }
            self.unless_abusive()?;
            if let Some(pending) = pending {
                let reply = Box::pin(self.connection.run_auth(pending)).await;
                self.write_reply(ws, reply).await?;
            }
        }
        Ok(())
    }

    /// Writes the reply to a command (after the deliveries queued), and closes the connection
    /// when it turned abusive.
    async fn write_reply(&mut self, ws: &mut Ws, reply: String) -> Result<(), End> {
        self.send_reply(ws, reply).await?;
        self.unless_abusive()
    }

    /// Rejections must not cost more output than the abuse: after its budget of refused
    /// commands in one second, the connection is closed.
    fn unless_abusive(&self) -> Result<(), End> {
        match self.connection.abusive {
            Some(reason) => Err(End::Close(close::POLICY_VIOLATION, reason)),
            None => Ok(()),
        }
    }

    /// Writes the reply to a command, after the deliveries queued.
    async fn send_reply(&mut self, ws: &mut Ws, reply: String) -> Result<(), End> {
        // A large reply (a history page, a channel list: at most the outbound bound) goes out as
        // one frame of ours, like deliveries: tungstenite would copy it into its write buffer and
        // keep that buffer's capacity for the life of the connection.
        let ctx = Arc::clone(&self.connection.ctx);
        let _pending = ctx.stats.pending_reply(reply.len());
        let reply = if reply.len() > self.connection.ctx.cfg.write_buffer_bytes || self.raw_replies
        {
            Outgoing::Frame(WsFrame::text(reply.as_bytes()).bytes().clone())
        } else {
            Outgoing::Message(Message::Text(Utf8Bytes::from(reply)))
        };
        // The session reads nothing while a reply is being written: one reply in flight at most.
        self.write_out(ws, Some(reply)).await
    }

    /// Writes every queued delivery, then `extra` (a reply or a ping), and flushes (at the end
    /// of the burst, while [`Session::on_burst`] defers it); the
    /// deliveries go first so that, as in the original, a publisher subscribed to its own channel
    /// sees the message before the publish's reply. Gives up when the outbox overflows meanwhile
    /// (the peer stopped reading) or the server shuts down.
    async fn write_out(&mut self, ws: &mut Ws, extra: Option<Outgoing>) -> Result<(), End> {
        let outbox = Arc::clone(&self.connection.outbox);
        let batch = &mut self.batch;
        let stats = &self.connection.ctx.stats;
        let defer_flush = self.defer_flush;
        let raw = self.raw_replies;
        let mut delivered = false;
        let io = async {
            let (mut extra, mut extra_frame) = match extra {
                Some(Outgoing::Message(m)) => (Some(m), None),
                Some(Outgoing::Frame(f)) => (None, Some(f)),
                None => (None, None),
            };
            for _ in 0..MAX_BATCHES_PER_WAKE {
                if outbox.take(batch) == Some(CloseReason::SlowConsumer) {
                    return Err(End::Close(close::SLOW_CONSUMER, "slow consumer"));
                }
                // After the deliveries taken with it, as a reply sent through tungstenite.
                if let Some(f) = extra_frame.take() {
                    batch.push_back(f);
                }
                if batch.is_empty() && extra.is_none() {
                    break;
                }
                if !batch.is_empty() {
                    // The queued deliveries are complete, shared WebSocket frames: after
                    // tungstenite has written anything it holds (a pong, an earlier reply), they
                    // go to the socket as they are, gathered into as few writes as possible
                    // (with raw replies, before the close answer tungstenite may hold).
                    if !raw {
                        ws.flush().await.map_err(|e| classify(&e))?;
                    }
                    write_frames(ws.get_mut(), batch)
                        .await
                        .map_err(|_| End::Gone)?;
                    stats.count_frame_write(batch.len());
                    delivered = true;
                    batch.clear();
                }
                if let Some(m) = extra.take() {
                    ws.feed(m).await.map_err(|e| classify(&e))?;
                }
            }
            if !defer_flush {
                ws.flush().await.map_err(|e| classify(&e))?;
            }
            Ok(())
        };
        let r = {
            // Fast path: the socket takes the whole batch at once, with no timer armed.
            let mut io = std::pin::pin!(io);
            match futures_util::poll!(io.as_mut()) {
                std::task::Poll::Ready(r) => r,
                // The write blocked: the rest is waited for with its timer and wake-ups on the
                // heap, so that they are no part of every idle session's future.
                std::task::Poll::Pending => Box::pin(finish_write(io, &self.connection)).await,
            }
        };
        // Write coalescing: what arrives until the listener's next tick waits for it and goes
        // out with one wake-up and one write (crate::pacer).
        if delivered && let Some(pacer) = &self.connection.ctx.pacer {
            pacer.hold(&self.connection.outbox);
        }
        r
    }
}

/// Waits for a blocked write `io` to finish. A peer that reads nothing for a whole ping cycle
/// is as dead as one that answers no ping; without this deadline a client that only sends
/// requests and never reads the replies would hold its connection forever.
async fn finish_write(
    io: std::pin::Pin<&mut impl std::future::Future<Output = Result<(), End>>>,
    connection: &Connection,
) -> Result<(), End> {
    let write_deadline = connection.ctx.cfg.ping_interval + connection.ctx.cfg.pong_timeout;
    tokio::select! {
        r = io => r,
        _ = tokio::time::sleep(write_deadline) => Err(End::Close(close::SLOW_CONSUMER, "slow consumer")),
        _ = connection.outbox.closed() => {
            let mut rest = VecDeque::new();
            match connection.outbox.take(&mut rest) {
                Some(CloseReason::SlowConsumer) => Err(End::Close(close::SLOW_CONSUMER, "slow consumer")),
                _ => Err(End::Gone),
            }
        }
        // A session whose writes block at shutdown does not wait for its turn.
        _ = connection.ctx.shutdown.cancelled() => Err(End::Shutdown(connection.ctx.closing.take_turn().reason)),
    }
}

/// What woke a session's loop.
enum Wake {
    /// The context's generation ended (a reload, or shutdown).
    Generation,
    Read(Option<Result<Message, tungstenite::Error>>),
    /// Frames were queued in the outbox (or it closed).
    Outbox,
    /// The next ping is due, or a deadline passed.
    Timer,
}

/// What [`Session::write_out`] writes after the queued deliveries.
enum Outgoing {
    /// Through tungstenite (pings, small replies, echoes).
    Message(Message),
    /// A complete text frame of ours, written as it is (large replies).
    Frame(Bytes),
}

impl From<Message> for Outgoing {
    fn from(m: Message) -> Self {
        Outgoing::Message(m)
    }
}

/// Most buffers handed to one `writev`.
const MAX_IOVECS: usize = 512;

/// Writes `frames` whole, in order, with vectored writes (one system call per up to
/// `MAX_IOVECS` frames, however the kernel splits them).
async fn write_frames(io: &mut Io, frames: &VecDeque<Bytes>) -> std::io::Result<()> {
    // One frame (the usual case at moderate rates): a plain write, no list of buffers to build.
    if let [frame] = frames.as_slices().0
        && frames.len() == 1
    {
        return io.write_all(frame).await;
    }
    let (mut first, mut offset) = (0, 0);
    while first < frames.len() {
        let slices: Vec<std::io::IoSlice<'_>> = frames
            .range(first..)
            .take(MAX_IOVECS)
            .enumerate()
            .map(|(i, f)| std::io::IoSlice::new(if i == 0 { &f[offset..] } else { &f[..] }))
            .collect();
        let mut n = io.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let rest = frames[first].len() - offset;
            if n >= rest {
                n -= rest;
                first += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// The read buffers of [`LazyRead`]s not reading right now, a few per worker thread. Every wake-up
/// of a session polls its socket, and a poll that finds nothing gives the buffer back: without
/// the pool that was an allocation, a zeroing and a free per wake-up (and, under churn, a 2 KiB
/// hole between messages' allocations that the allocator kept as fragmentation).
mod read_buffers {
    use std::cell::RefCell;

    /// Bytes of buffers one thread keeps.
    const POOL_BYTES: usize = 256 << 10;
    /// Larger buffers are not kept.
    const LARGEST: usize = 64 << 10;

    thread_local! {
        static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// A buffer of `size` bytes: a pooled one, or a new one.
    pub(super) fn take(size: usize) -> Vec<u8> {
        POOL.with_borrow_mut(|p| {
            // Listeners may differ in size: a pooled buffer of another size is dropped.
            while let Some(b) = p.pop() {
                if b.len() == size {
                    return b;
                }
            }
            vec![0; size]
        })
    }

    /// Gives `buf` back (kept if the pool has room, else freed).
    pub(super) fn give(buf: Vec<u8>) {
        if buf.is_empty() || buf.len() > LARGEST {
            return;
        }
        POOL.with_borrow_mut(|p| {
            if (p.len() + 1) * buf.len() <= POOL_BYTES {
                p.push(buf);
            }
        });
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_buffer_given_back_is_taken_again_and_the_pool_is_bounded() {
            let b = super::take(2048);
            let at = b.as_ptr();
            super::give(b);
            let again = super::take(2048);
            assert_eq!(again.as_ptr(), at, "the same allocation");
            assert_eq!(again.len(), 2048);
            // Another size: a new buffer of that size.
            super::give(again);
            assert_eq!(super::take(4096).len(), 4096);
            // At most POOL_BYTES are kept; larger buffers never.
            for _ in 0..1000 {
                super::give(vec![0; 2048]);
            }
            let kept = super::POOL.with_borrow(|p| p.len());
            assert_eq!(kept, super::POOL_BYTES / 2048);
            super::give(vec![0; super::LARGEST + 1]);
            assert_eq!(super::POOL.with_borrow(|p| p.len()), kept);
        }
    }
}

/// The socket under tungstenite, with a read buffer of `read_buffer_bytes` that exists only
/// while a burst of input is being read: taken when the socket has bytes to read, given back
/// once it has none (`Pending`). tungstenite reads from it [`FRAME_READ_BYTES`] at a time (a
/// copy, not a system call), so an idle connection holds a 256-byte buffer instead of a full
/// read buffer, and a busy one reads the socket in chunks as large as before.
struct LazyRead<T> {
    io: T,
    /// Bytes read from the socket and not yet handed out: `buf[pos..end]`.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    size: usize,
}

impl<T> LazyRead<T> {
    fn new(io: T, size: usize) -> Self {
        Self {
            io,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            size,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LazyRead<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        if this.pos == this.end {
            if out.remaining() >= this.size {
                return std::pin::Pin::new(&mut this.io).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = read_buffers::take(this.size);
            }
            let mut rb = tokio::io::ReadBuf::new(&mut this.buf);
            match std::pin::Pin::new(&mut this.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    this.pos = 0;
                    this.end = rb.filled().len();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read for now: the buffer goes back to the thread's pool
                    // until there is.
                    read_buffers::give(std::mem::take(&mut this.buf));
                    return Poll::Pending;
                }
            }
        }
        // An end of stream (0 bytes read) hands out nothing, as the socket would.
        let n = out.remaining().min(this.end - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for LazyRead<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Maps a tungstenite error to how the session ends.
fn classify(e: &tungstenite::Error) -> End {
    use tungstenite::Error as E;
    match e {
        E::Capacity(_) => End::Close(close::MESSAGE_TOO_BIG, "message too big"),
        E::Utf8(_) => End::Close(close::INVALID_PAYLOAD, "invalid utf-8"),
        // The peer dropped the TCP connection without a close frame: nothing to answer.
        E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => End::Gone,
        E::Protocol(p) => {
            tracing::debug!(error = %p, "websocket protocol violation");
            End::Close(close::PROTOCOL_ERROR, "protocol error")
        }
        _ => End::Gone,
    }
}

/// Sends a close frame, then half-closes and drains the socket until the peer closes too (or a
/// short timeout), so the close frame is read rather than lost to a TCP reset.
async fn close_gracefully(mut ws: Ws, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from(reason.to_owned()),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.send(Message::Close(Some(frame)))).await;
    let mut io = ws.into_inner();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = io.shutdown().await;
        // On the heap, and only while closing: a buffer here would sit in every session's future.
        let mut buf = vec![0u8; 1024];
        while matches!(io.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, Fut>(_: &F) -> usize
    where
        F: FnOnce(Session, Ws) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    fn task_size<F, Fut>(_: &F) -> usize
    where
        F: FnOnce(
            Arc<ListenerCtx>,
            Arc<ConnSlot>,
            OnUpgrade,
            Dialect,
            Identity,
            Option<Arc<str>>,
        ) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every idle connection holds its session task's future: what it costs is measured here
    /// (printed with `--nocapture`) and kept from growing unnoticed. The bounds have some slack
    /// for compiler versions; docs/performance.md ("Idle memory") has the breakdown.
    /// Small reads are served from one socket read; the buffer goes once the socket has
    /// nothing more; the end of the stream reads as 0 bytes.
    #[tokio::test]
    async fn lazy_read_buffers_only_while_reading() {
        use tokio::io::AsyncWriteExt;
        let (mut peer, io) = tokio::io::duplex(4096);
        let mut lazy = LazyRead::new(io, 512);
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        peer.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 100];
        while got.len() < data.len() {
            let n = lazy.read(&mut chunk).await.unwrap();
            assert!(n > 0 && n <= 100);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        assert!(!lazy.buf.is_empty() || lazy.pos == lazy.end);
        // Nothing to read: the read waits and the buffer is given back.
        let pending = futures_util::poll!(std::pin::pin!(lazy.read(&mut chunk)));
        assert!(pending.is_pending());
        assert!(lazy.buf.is_empty());
        // A large read goes to the socket directly.
        peer.write_all(&data).await.unwrap();
        let mut big = vec![0u8; 2048];
        let n = lazy.read(&mut big).await.unwrap();
        assert_eq!(&big[..n], &data[..n]);
        assert!(lazy.buf.is_empty());
        drop(peer);
        let mut rest = Vec::new();
        lazy.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, data[n..]);
    }

    #[test]
    fn an_idle_session_future_stays_small() {
        let serve = future_size(&Session::serve);
        let task = task_size(&run);
        println!(
            "session future {serve} bytes, task future {task} bytes, Session {} bytes, Connection {} bytes, Ws {} bytes",
            std::mem::size_of::<Session>(),
            std::mem::size_of::<Connection>(),
            std::mem::size_of::<Ws>(),
        );
        assert!(serve <= 1700, "session future: {serve} bytes");
        assert!(task <= serve + 256, "task future: {task} bytes");
    }
}
