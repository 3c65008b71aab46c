//! One WebSocket connection: reads commands, runs them against the hub, writes replies and the
//! deliveries queued in its outbox. One task per connection, no lock held across an `.await`.

use std::collections::{HashSet, VecDeque};
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
use tslm_hub::{CatchUp, CloseReason, ConnId, Outbox};
use tslm_protocol::{
    ChannelName, Dialect, ErrorCode, ProtoError, Start, Wire, WsFrame, close, legacy, v1,
};

use crate::config::ListenerConfig;
use crate::identity::{self, Identity, SubscriberGrant};
use crate::listener::{ConnSlot, ListenerCtx};
use crate::ops::{self, ReadVia};
use tslm_auth::keys::Challenge;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// How long a close handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this many batches are written in a row before the session reads again.
const MAX_BATCHES_PER_WAKE: usize = 8;

/// Counts events in one-second windows; says when a window's count goes over `max`.
#[derive(Debug)]
struct PerSecond {
    max: u32,
    window_start: Instant,
    count: u32,
}

impl PerSecond {
    fn new(max: u32) -> Self {
        Self {
            max,
            window_start: Instant::now(),
            count: 0,
        }
    }

    /// Records one event; `true` when this window now holds more than `max`.
    fn hit(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count > self.max
    }
}

/// Why a session ends.
#[derive(Debug)]
enum End {
    /// The peer closed or the socket failed: nothing more to send.
    Gone,
    /// We close with this code and reason.
    Close(u16, &'static str),
}

pub(crate) fn rate_limited(cfg: &ListenerConfig) -> ProtoError {
    let rate = cfg.rate_limit_per_second.map_or(0, |r| r.get());
    ProtoError::new(
        ErrorCode::RateLimited,
        format!("rate limit exceeded: this listener allows {rate} commands per second"),
    )
}

pub(crate) async fn run(
    ctx: Arc<ListenerCtx>,
    conn: Arc<ConnSlot>,
    on_upgrade: OnUpgrade,
    dialect: Dialect,
    identity: Identity,
) {
    let upgraded = match tokio::time::timeout(ctx.cfg.handshake_timeout, on_upgrade).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "websocket upgrade failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "websocket upgrade timed out");
            return;
        }
    };
    let cfg = &ctx.cfg;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(cfg.read_buffer_bytes)
        .write_buffer_size(cfg.write_buffer_bytes)
        .max_write_buffer_size(usize::MAX)
        .max_message_size(Some(cfg.max_message_bytes))
        .max_frame_size(Some(cfg.max_frame_bytes));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
            .await;
    let id = ctx.hub.next_conn_id();
    let span = tracing::debug_span!("session", listener = %cfg.name, conn = %id, peer = %conn.peer, ?dialect);
    // Whatever the handshake presented, only an identity the listener requires lifts the
    // deadline (a publisher's token on a subscribers' listener does not).
    let auth_deadline = (!identity.meets(cfg)).then(|| Instant::now() + cfg.auth_timeout);
    let session = Session {
        identity,
        challenge: None,
        auth_deadline,
        outbox: Arc::new(Outbox::new(cfg.outbox)),
        _gauge: ctx.stats.session(),
        ctx: Arc::clone(&ctx),
        conn,
        id,
        dialect,
        subscriptions: HashSet::new(),
        catching: Vec::new(),
        replies: PerSecond::new(0),
        batch: VecDeque::new(),
        rejections: PerSecond::new(cfg.abuse.max_rejected_commands_per_second),
        control_frames: PerSecond::new(cfg.abuse.max_control_frames_per_second),
        abusive: None,
    };
    // Boxed so that this task's future is not as large as the upgrade wait plus the session
    // (measured: 12 KB per connection before, 2.3 KB after, with the close buffer on the heap).
    Box::pin(session.serve(ws).instrument(span)).await
}

/// An `auth` or `refresh` request, answered asynchronously.
struct PendingAuth {
    id: Option<v1::Id>,
    op: v1::Op,
}

struct Session {
    /// Who the connection has proved to be.
    identity: Identity,
    /// The last challenge handed out (`challenge` op); consumed by the next signature `auth`.
    /// Boxed: most connections never ask for one.
    challenge: Option<Box<Challenge>>,
    /// When an unauthenticated connection is closed (listeners that require authentication).
    auth_deadline: Option<Instant>,
    ctx: Arc<ListenerCtx>,
    conn: Arc<ConnSlot>,
    id: ConnId,
    dialect: Dialect,
    outbox: Arc<Outbox>,
    subscriptions: HashSet<ChannelName>,
    /// Subscriptions still replaying their backlog (see [`Session::pump_replays`]).
    catching: Vec<ChannelName>,
    /// Replies sent in the current second (limited per channel class).
    replies: PerSecond,
    batch: VecDeque<Bytes>,
    /// Rate-limited commands in the current second.
    rejections: PerSecond,
    /// Ping and pong frames received in the current second.
    control_frames: PerSecond,
    /// Set when rejections went over their budget: the session closes after this reply.
    abusive: Option<&'static str>,
    _gauge: crate::stats::Gauge,
}

impl Drop for Session {
    /// Runs however the session ends (return, error, task abort): its subscriptions go at once.
    fn drop(&mut self) {
        self.outbox.close();
        for channel in self.subscriptions.drain() {
            self.ctx.hub.unsubscribe(&channel, self.id);
        }
        self.ctx.hub.forget_publisher(self.id);
    }
}

impl Session {
    async fn serve(mut self, mut ws: Ws) {
        tracing::debug!("session started");
        let end = self.main_loop(&mut ws).await;
        // Stop deliveries before the (possibly slow) close handshake.
        self.outbox.close();
        for channel in self.subscriptions.drain() {
            self.ctx.hub.unsubscribe(&channel, self.id);
        }
        match end {
            End::Gone => tracing::debug!("session ended by peer"),
            End::Close(code, reason) => {
                self.ctx.stats.count_close(code);
                if matches!(
                    code,
                    close::SLOW_CONSUMER
                        | close::PING_TIMEOUT
                        | close::MESSAGE_TOO_BIG
                        | close::POLICY_VIOLATION
                ) {
                    tracing::info!(listener = %self.ctx.cfg.name, conn = %self.id, peer = %self.conn.peer, code, reason, "closing session");
                } else {
                    tracing::debug!(code, reason, "closing session");
                }
                close_gracefully(ws, code, reason).await;
            }
        }
    }

    async fn main_loop(&mut self, ws: &mut Ws) -> End {
        let ping_interval = self.ctx.cfg.ping_interval;
        let mut next_ping = Instant::now() + ping_interval;
        let mut pong_deadline: Option<Instant> = None;
        let far = || Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let ping_at = next_ping;
            let dead_at = pong_deadline.unwrap_or_else(far);
            // Authentication deadline, or the expiry of the subscriber's access token.
            let auth_at = match (&self.auth_deadline, &self.identity) {
                (Some(at), _) => *at,
                (None, Identity::Subscriber(g)) => g.expiry_deadline(Instant::now()),
                _ => far(),
            };
            let step = tokio::select! {
                _ = self.ctx.shutdown.cancelled() => Err(End::Close(close::GOING_AWAY, "going away")),
                msg = ws.next() => {
                    pong_deadline = None;
                    next_ping = Instant::now() + ping_interval;
                    match msg {
                        None => Err(End::Gone),
                        Some(Err(e)) => Err(classify(&e)),
                        Some(Ok(m)) => self.on_message(ws, m).await,
                    }
                }
                _ = self.outbox.ready() => self.write_out(ws, None).await,
                _ = sleep_until(ping_at) => {
                    next_ping = Instant::now() + ping_interval;
                    if pong_deadline.is_none() {
                        pong_deadline = Some(Instant::now() + self.ctx.cfg.pong_timeout);
                    }
                    self.write_out(ws, Some(Message::Ping(Bytes::new()).into())).await
                }
                // One timer for both deadlines: every timer in this loop is part of every idle
                // session's memory.
                _ = sleep_until(dead_at.min(auth_at)) => Err(if dead_at <= auth_at {
                    End::Close(close::PING_TIMEOUT, "ping timeout")
                } else if self.auth_deadline.is_some() {
                    End::Close(close::AUTH_TIMEOUT, "authentication required")
                } else {
                    End::Close(close::TOKEN_EXPIRED, "token expired")
                }),
            };
            if let Err(end) = step {
                return end;
            }
            if !self.catching.is_empty() && self.outbox.queued_frames() == 0 {
                self.pump_replays();
            }
        }
    }

    /// Moves the next part of every backlog replay under way into the outbox, as much as it has
    /// room for; the outbox wakes the writer, and the loop comes back here once it is drained.
    /// Replays are pulled, never pushed whole, so a long replay costs no more memory than the
    /// outbox limit and a slow reader slows only its own replay.
    fn pump_replays(&mut self) {
        let mut i = 0;
        while i < self.catching.len() {
            let (frames, bytes) = self.outbox.replay_room();
            if frames == 0 {
                return;
            }
            match self
                .ctx
                .hub
                .catch_up(&self.catching[i], self.id, frames, bytes)
            {
                CatchUp::More => i += 1,
                CatchUp::Done => {
                    self.catching.swap_remove(i);
                }
                CatchUp::Gone => {
                    let channel = self.catching.swap_remove(i);
                    self.subscriptions.remove(&channel);
                }
            }
        }
    }

    async fn on_message(&mut self, ws: &mut Ws, msg: Message) -> Result<(), End> {
        if self.ctx.cfg.echo && matches!(msg, Message::Text(_) | Message::Binary(_)) {
            return self.write_out(ws, Some(msg.into())).await;
        }
        let reply = match msg {
            Message::Text(text) => match self.on_text(Bytes::from(text)) {
                Ok(reply) => reply,
                // Boxed: token validation may fetch keys, and its future must not weigh on
                // every idle session's.
                Err(pending) => Box::pin(self.run_auth(pending)).await,
            },
            Message::Binary(_) => {
                // Refused frames take a token like any other, so they cannot flood replies.
                let allowed = self.allow_command();
                match (self.dialect, allowed) {
                    (Dialect::Legacy, false) => legacy::encode_error(&legacy::Error::RateLimited),
                    (Dialect::Legacy, true) => legacy::encode_error(&legacy::Error::Binary),
                    (Dialect::V1, false) => v1::encode_error(None, &rate_limited(&self.ctx.cfg)),
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
        // A large reply (a history page, a channel list: at most the outbound bound) goes out as
        // one frame of ours, like deliveries: tungstenite would copy it into its write buffer and
        // keep that buffer's capacity for the life of the connection.
        let ctx = Arc::clone(&self.ctx);
        let _pending = ctx.stats.pending_reply(reply.len());
        let reply = if reply.len() > self.ctx.cfg.write_buffer_bytes {
            Outgoing::Frame(WsFrame::text(reply.as_bytes()).bytes().clone())
        } else {
            Outgoing::Message(Message::Text(Utf8Bytes::from(reply)))
        };
        // The session reads nothing while a reply is being written: one reply in flight at most.
        self.write_out(ws, Some(reply)).await?;
        if let Some(reason) = self.abusive {
            // Rejections must not cost more output than the abuse: after its budget of
            // refused commands in one second, the connection is closed.
            return Err(End::Close(close::POLICY_VIOLATION, reason));
        }
        Ok(())
    }

    /// Runs one command; returns the reply.
    /// Runs one command; returns the reply, or the `auth`/`refresh` request that must wait.
    fn on_text(&mut self, frame: Bytes) -> Result<String, PendingAuth> {
        match self.dialect {
            Dialect::V1 => {
                // Every frame takes a token, malformed or not; the request is still decoded
                // so that the rate_limited reply can carry its id.
                let allowed = self.allow_command();
                Ok(match v1::decode_request(&frame) {
                    Err(e) if !allowed => {
                        v1::encode_error(e.id.as_ref(), &rate_limited(&self.ctx.cfg))
                    }
                    Err(e) => v1::encode_error(e.id.as_ref(), &e.error),
                    Ok(req) => {
                        if allowed && matches!(req.op, v1::Op::Auth(_) | v1::Op::Refresh { .. }) {
                            return Err(PendingAuth {
                                id: req.id,
                                op: req.op,
                            });
                        }
                        let result = if allowed {
                            self.run_v1(req.op, req.id.as_ref())
                        } else {
                            Err(rate_limited(&self.ctx.cfg))
                        };
                        self.finish_v1(req.id.as_ref(), result)
                    }
                })
            }
            Dialect::Legacy => {
                // As the original: the rate limit applies before parsing.
                let result = if self.allow_command() {
                    legacy::decode_request(&frame).and_then(|req| self.run_legacy(req))
                } else {
                    Err(legacy::Error::RateLimited)
                };
                Ok(match result {
                    Ok(s) => s,
                    Err(e) => legacy::encode_error(&e),
                })
            }
        }
    }

    /// Takes a token from the connection's rate limit, counting a refusal against the budget of
    /// rejections.
    fn allow_command(&mut self) -> bool {
        let allowed = self.conn.allow_command();
        if !allowed && self.rejections.hit() {
            self.abusive = Some("rate limit exceeded");
        }
        allowed
    }

    /// Runs one v1 request; returns the encoded reply.
    fn run_v1(&mut self, op: v1::Op, id: Option<&v1::Id>) -> Result<String, ProtoError> {
        let ctx = Arc::clone(&self.ctx);
        let who = self.identity.clone();
        let ok = |s: v1::Success<'_>| Ok(v1::encode_ok(id, s));
        match op {
            v1::Op::Ping => ok(v1::Success::Empty),
            v1::Op::Challenge => {
                let c = Challenge::random();
                let text = c.to_base64();
                self.challenge = Some(Box::new(c));
                ok(v1::Success::Challenge(&text))
            }
            // Answered by `authenticate` and `refresh` before this point.
            v1::Op::Auth(_) | v1::Op::Refresh { .. } => {
                Err(ProtoError::new(ErrorCode::Internal, "internal error"))
            }
            v1::Op::Create { channel, options } => {
                let c = ops::create(&ctx, &who, &channel, &options, "websocket")?;
                ok(v1::Success::Created {
                    created: c.created,
                    epoch: c.epoch,
                })
            }
            v1::Op::Delete { channel } => {
                ops::delete(&ctx, &who, &channel)?;
                ok(v1::Success::Deleted)
            }
            v1::Op::Publish {
                channel,
                data,
                msg_id,
            } => {
                let publisher = Some((self.id, &self.outbox));
                let p = ops::publish(&ctx, &who, &channel, &data, msg_id.as_deref(), publisher)?;
                ok(ops::published(p))
            }
            v1::Op::Subscribe { channel, start } => {
                ops::admit_read(&ctx, &who, "subscribe", &channel, ReadVia::Subscriber)?;
                let subscription = self.subscribe(channel, start)?;
                ok(v1::Success::Subscribed(subscription))
            }
            v1::Op::Unsubscribe { channel } => {
                // Always possible, even with an expired token.
                if !ctx.cfg.permissions.subscribe {
                    return Err(ops::forbidden_listener("unsubscribe"));
                }
                if self.subscriptions.remove(&channel) {
                    self.ctx.hub.unsubscribe(&channel, self.id);
                    self.catching.retain(|c| *c != channel);
                }
                ok(v1::Success::Empty)
            }
            v1::Op::History {
                channel,
                start,
                limit,
            } => {
                let h = ops::history(&ctx, &who, &channel, start, limit, ReadVia::Subscriber)?;
                ok(v1::Success::History {
                    sub: h.subscription,
                    messages: &h.messages,
                    more: h.more,
                })
            }
            v1::Op::Reply {
                channel,
                offset,
                data,
            } => {
                let class = ops::admit_read(&ctx, &who, "reply", &channel, ReadVia::Subscriber)?;
                if !self.ctx.hub.is_subscribed(&channel, self.id) {
                    return Err(ProtoError::new(
                        ErrorCode::Forbidden,
                        format!("subscribe to `{channel}` before replying to its messages"),
                    ));
                }
                self.replies.max = class.replies_per_second;
                if self.replies.hit() {
                    return Err(ProtoError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "reply rate exceeded: channel class \"{}\" allows {} replies per second",
                            class.pattern, class.replies_per_second
                        ),
                    ));
                }
                self.ctx
                    .hub
                    .reply(&channel, offset, self.id, &data)
                    .map_err(ops::reply_error)?;
                ok(v1::Success::Empty)
            }
            v1::Op::Channels {
                prefix,
                after,
                limit,
            } => {
                let (channels, more) =
                    ops::channels(&ctx, &who, prefix.as_deref(), after.as_ref(), limit)?;
                ok(v1::Success::Channels {
                    channels: &channels,
                    more,
                })
            }
        }
    }

    /// Encodes a v1 result; refused credentials count against the rejection budget, so guessing
    /// costs a connection quickly (1008).
    fn finish_v1(&mut self, id: Option<&v1::Id>, result: Result<String, ProtoError>) -> String {
        if let Err(e) = &result
            && e.code == ErrorCode::Unauthorized
            && self.rejections.hit()
        {
            self.abusive = Some("too many failed authentications");
        }
        match result {
            Ok(reply) => reply,
            Err(e) => v1::encode_error(id, &e),
        }
    }

    /// Runs an `auth` or `refresh` request.
    async fn run_auth(&mut self, pending: PendingAuth) -> String {
        let id = pending.id.as_ref();
        let result = match pending.op {
            v1::Op::Auth(credentials) => self.authenticate(credentials, id).await,
            v1::Op::Refresh { token } => self.refresh(&token, id).await,
            _ => Err(ProtoError::new(ErrorCode::Internal, "internal error")),
        };
        if let Err(e) = &result
            && e.code == ErrorCode::Unauthorized
            && matches!(
                self.conn.ip.auth_failed(),
                Err(crate::iplimit::Overspent::Address(_))
            )
        {
            // Refused credentials spend the address's budget too
            // (`failed_auths_per_ip_per_minute`): reconnecting buys no more guesses, and the
            // address's next handshakes are answered 429 until it refills.
            self.abusive = Some("too many failed authentications");
        }
        if let Err(e) = &result
            && let Some(failures) = self.conn.ip.limits().log_failure()
        {
            // Never the credentials: only what was refused and why, in our words; at most one
            // line per interval and listener, with the refusals since the last one.
            tracing::info!(listener = %self.ctx.cfg.name, conn = %self.id, peer = %self.conn.peer, code = e.code.as_str(), reason = %e.message, failures, "authentication refused");
        }
        self.finish_v1(id, result)
    }

    /// `auth`: a bearer token (a publisher's, else a subscriber's access token) or a publisher's
    /// signature of this connection's challenge. A connection authenticates once.
    async fn authenticate(
        &mut self,
        credentials: v1::Credentials,
        id: Option<&v1::Id>,
    ) -> Result<String, ProtoError> {
        if !matches!(self.identity, Identity::Anonymous) {
            return Err(ProtoError::bad_request(
                "this connection is already authenticated; `refresh` replaces an access token",
            ));
        }
        let ctx = Arc::clone(&self.ctx);
        match credentials {
            v1::Credentials::Signature {
                publisher,
                signature,
            } => {
                // A challenge serves one attempt, successful or not: it can never be replayed.
                let Some(challenge) = self.challenge.take() else {
                    return Err(ProtoError::bad_request(
                        "ask for a `challenge` first, then sign it",
                    ));
                };
                let i = identity::publisher_by_signature(
                    &ctx.publishers,
                    &publisher,
                    &challenge,
                    &signature,
                )
                .ok_or_else(|| identity::unauthorized("signature refused"))?;
                Ok(self.became_publisher(i, id))
            }
            v1::Credentials::Token(token) => {
                if let Some(i) = identity::publisher_by_token(&ctx.publishers, &token) {
                    return Ok(self.became_publisher(i, id));
                }
                // A publishers' listener takes publisher credentials only, and says nothing
                // about whether an identity provider is configured.
                let verifier = match &ctx.verifier {
                    Some(v) if !ctx.cfg.publisher_auth => v,
                    _ => return Err(identity::unauthorized("token refused")),
                };
                let grant = verifier
                    .verify(&token)
                    .await
                    .map_err(|e| identity::token_refused(&e))?;
                let grant = Arc::new(SubscriberGrant::from_grant(grant, &self.ctx.issuers));
                tracing::debug!(issuer = %grant.issuer, subject = grant.subject.as_deref().unwrap_or(""), "subscriber authenticated");
                let reply = v1::encode_ok(
                    id,
                    v1::Success::Authenticated {
                        publisher: None,
                        subject: grant.subject.as_deref(),
                        expires_at: Some(grant.expires_unix()),
                    },
                );
                self.identity = Identity::Subscriber(grant);
                self.deadline_met();
                Ok(reply)
            }
        }
    }

    /// Lifts the authentication deadline once the connection holds the kind of identity its
    /// listener requires (a publisher on `publisher_auth` listeners, a subscriber token on
    /// `subscriber_auth` ones).
    fn deadline_met(&mut self) {
        if self.identity.meets(&self.ctx.cfg) {
            self.auth_deadline = None;
        }
    }

    fn became_publisher(&mut self, i: usize, id: Option<&v1::Id>) -> String {
        let name = &self.ctx.publishers[i].name;
        tracing::info!(listener = %self.ctx.cfg.name, conn = %self.id, peer = %self.conn.peer, publisher = %name, "publisher authenticated");
        let reply = v1::encode_ok(
            id,
            v1::Success::Authenticated {
                publisher: Some(name),
                subject: None,
                expires_at: None,
            },
        );
        self.identity = Identity::Publisher(i);
        self.deadline_met();
        reply
    }

    /// `refresh`: a new access token for the same subject from the same issuer, before (or
    /// after) the current one expires; the connection's expiry moves to the new token's.
    async fn refresh(&mut self, token: &str, id: Option<&v1::Id>) -> Result<String, ProtoError> {
        let Identity::Subscriber(current) = &self.identity else {
            return Err(ProtoError::bad_request(
                "`refresh` replaces a subscriber's access token: authenticate with `auth` first",
            ));
        };
        let current = Arc::clone(current);
        let Some(verifier) = &self.ctx.verifier else {
            return Err(identity::unauthorized("token refused"));
        };
        let grant = verifier
            .verify(token)
            .await
            .map_err(|e| identity::token_refused(&e))?;
        let grant = SubscriberGrant::from_grant(grant, &self.ctx.issuers);
        if grant.issuer != current.issuer || grant.subject != current.subject {
            return Err(ProtoError::new(
                ErrorCode::Forbidden,
                "a refreshed token must name the same subject from the same issuer",
            ));
        }
        let reply = v1::encode_ok(
            id,
            v1::Success::Authenticated {
                publisher: None,
                subject: grant.subject.as_deref(),
                expires_at: Some(grant.expires_unix()),
            },
        );
        // Subscriptions the new token no longer grants end here, with a `closed` event.
        let needs_token = |c: &ChannelName| {
            self.ctx.cfg.subscriber_auth || self.ctx.channels.class_for(c).authenticated_subscribers
        };
        let revoked: Vec<ChannelName> = self
            .subscriptions
            .iter()
            .filter(|c| needs_token(c) && !grant.allows(c))
            .cloned()
            .collect();
        for c in revoked {
            self.subscriptions.remove(&c);
            self.catching.retain(|x| *x != c);
            if self.ctx.hub.unsubscribe(&c, self.id) {
                let closed = v1::encode_closed(&c, "unauthorized");
                let _ = self
                    .outbox
                    .push(tslm_protocol::WsFrame::text(&closed).bytes().clone());
            }
        }
        self.identity = Identity::Subscriber(Arc::new(grant));
        Ok(reply)
    }

    fn run_legacy(&mut self, req: legacy::Request) -> Result<String, legacy::Error> {
        let command = req.command();
        let denied = |e: ProtoError| {
            // The original protocol has no word for a limit: a create over `max_channels` is
            // refused like one the listener does not allow.
            if matches!(
                e.code,
                ErrorCode::Forbidden | ErrorCode::Unauthorized | ErrorCode::LimitExceeded
            ) {
                legacy::Error::PermissionDenied(command)
            } else {
                legacy::Error::ChannelNotFound(req.channel().clone())
            }
        };
        let ctx = Arc::clone(&self.ctx);
        match &req {
            legacy::Request::CreateChannel(c) => {
                let created =
                    ops::create(&ctx, &self.identity, c, &Default::default(), "websocket")
                        .map_err(denied)?;
                if !created.created {
                    return Err(legacy::Error::AlreadyRegistered(c.clone()));
                }
            }
            legacy::Request::Subscribe(c) => {
                ops::admit_read(&ctx, &self.identity, "subscribe", c, ReadVia::Subscriber)
                    .map_err(denied)?;
                let replay = ctx.hub.settings(c).map_or(0, |s| s.legacy_replay);
                let start = if replay > 0 {
                    Start::Last(replay as u64)
                } else {
                    Start::New
                };
                self.subscribe(c.clone(), start).map_err(|e| match e.code {
                    ErrorCode::LimitExceeded => legacy::Error::SubscriptionLimit,
                    _ => legacy::Error::ChannelNotFound(c.clone()),
                })?;
            }
            legacy::Request::NotifyChannel(c, data) => {
                ops::publish(&ctx, &self.identity, c, data, None, None).map_err(|e| {
                    match e.code {
                        ErrorCode::TooLarge => legacy::Error::TooLarge,
                        ErrorCode::Forbidden | ErrorCode::Unauthorized => {
                            legacy::Error::PermissionDenied(command)
                        }
                        _ => legacy::Error::ChannelNotFound(c.clone()),
                    }
                })?;
            }
        }
        Ok(legacy::encode_success(command, req.channel()))
    }

    /// Subscribes this connection, within its subscription limit; a replay from the backlog
    /// starts once the reply is written (see [`Session::pump_replays`]).
    fn subscribe(
        &mut self,
        channel: ChannelName,
        start: Start,
    ) -> Result<tslm_protocol::Subscription, ProtoError> {
        if !self.subscriptions.contains(&channel)
            && self.subscriptions.len() >= self.ctx.cfg.abuse.max_subscriptions_per_connection
        {
            // Subscriptions of deleted channels end without a word to the session: forget those
            // before refusing.
            let (hub, id) = (&self.ctx.hub, self.id);
            self.subscriptions.retain(|c| hub.is_subscribed(c, id));
            if self.subscriptions.len() >= self.ctx.cfg.abuse.max_subscriptions_per_connection {
                return Err(ProtoError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "this connection already has {} subscriptions, the most this listener allows",
                        self.subscriptions.len()
                    ),
                ));
            }
        }
        let s = self
            .ctx
            .hub
            .subscribe(
                &channel,
                self.id,
                Wire::websocket(self.dialect),
                &self.outbox,
                start,
            )
            .map_err(ops::hub_error)?;
        if s.catching_up && !self.catching.contains(&channel) {
            self.catching.push(channel.clone());
        }
        self.subscriptions.insert(channel);
        Ok(s.subscription)
    }

    /// Writes every queued delivery, then `extra` (a reply or a ping), and flushes; the
    /// deliveries go first so that, as in the original, a publisher subscribed to its own channel
    /// sees the message before the publish's reply. Gives up when the outbox overflows meanwhile
    /// (the peer stopped reading) or the server shuts down.
    async fn write_out(&mut self, ws: &mut Ws, extra: Option<Outgoing>) -> Result<(), End> {
        let outbox = Arc::clone(&self.outbox);
        let batch = &mut self.batch;
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
                    // go to the socket as they are, gathered into as few writes as possible.
                    ws.flush().await.map_err(|e| classify(&e))?;
                    write_frames(ws.get_mut(), batch)
                        .await
                        .map_err(|_| End::Gone)?;
                    batch.clear();
                }
                if let Some(m) = extra.take() {
                    ws.send(m).await.map_err(|e| classify(&e))?;
                }
            }
            Ok(())
        };
        // Fast path: the socket takes the whole batch at once, with no timer armed.
        let mut io = std::pin::pin!(io);
        if let std::task::Poll::Ready(r) = futures_util::poll!(io.as_mut()) {
            return r;
        }
        // The write blocked. A peer that reads nothing for a whole ping cycle is as dead as one
        // that answers no ping; without this deadline a client that only sends requests and
        // never reads the replies would hold its connection forever.
        let write_deadline = self.ctx.cfg.ping_interval + self.ctx.cfg.pong_timeout;
        tokio::select! {
            r = io => r,
            _ = tokio::time::sleep(write_deadline) => Err(End::Close(close::SLOW_CONSUMER, "slow consumer")),
            _ = self.outbox.closed() => {
                let mut rest = VecDeque::new();
                match self.outbox.take(&mut rest) {
                    Some(CloseReason::SlowConsumer) => Err(End::Close(close::SLOW_CONSUMER, "slow consumer")),
                    _ => Err(End::Gone),
                }
            }
            _ = self.ctx.shutdown.cancelled() => Err(End::Close(close::GOING_AWAY, "going away")),
        }
    }
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
async fn write_frames(io: &mut TokioIo<Upgraded>, frames: &VecDeque<Bytes>) -> std::io::Result<()> {
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
async fn close_gracefully(mut ws: Ws, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code: code.into(),
        reason: reason.into(),
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
