//! What a client connection is, whatever carries it: its identity and grants, its pending
//! challenge and authentication deadline, its subscriptions and the replays under way, its
//! budgets (commands, rejections, replies), and how a request is executed into a reply. No
//! socket here: a transport (today [`crate::session`], the WebSocket driver) hands it decoded
//! frames and writes what it returns and what its outbox queues.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tslm_auth::keys::Challenge;
use tslm_hub::{CatchUp, ConnId, Outbox};
use tslm_protocol::{
    ChannelName, Dialect, ErrorCode, Payload, ProtoError, Start, Wire, legacy, v1,
};

use crate::audit::{self, Actor, Outcome, Transport, Via};
use crate::context::{ConnSlot, ListenerCtx};
use crate::errors::rate_limited;
use crate::identity::{self, Identity, SubscriberGrant};
use crate::ops::{self, ReadVia};
use crate::stats::AuthRefusalKind;

/// Counts events in one-second windows; says when a window's count goes over `max`.
#[derive(Debug)]
pub(crate) struct PerSecond {
    max: u32,
    window_start: Instant,
    count: u32,
}

impl PerSecond {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            window_start: Instant::now(),
            count: 0,
        }
    }

    /// Records one event; `true` when this window now holds more than `max`.
    pub(crate) fn hit(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count > self.max
    }
}

/// An `auth` or `refresh` request, answered asynchronously.
pub(crate) struct PendingAuth {
    id: Option<v1::Id>,
    op: v1::Op,
}

/// A publish waiting in a group of [`Connection::on_texts`].
struct Publish {
    id: Option<v1::Id>,
    channel: ChannelName,
    data: Payload,
    msg_id: Option<Box<str>>,
}

/// One client connection's state and its command execution.
pub(crate) struct Connection {
    /// Who the connection has proved to be.
    pub(crate) identity: Identity,
    /// The last challenge handed out (`challenge` op); consumed by the next signature `auth`.
    /// Boxed: most connections never ask for one.
    challenge: Option<Box<Challenge>>,
    /// When an unauthenticated connection is closed (listeners that require authentication).
    pub(crate) auth_deadline: Option<Instant>,
    pub(crate) ctx: Arc<ListenerCtx>,
    pub(crate) conn: Arc<ConnSlot>,
    pub(crate) id: ConnId,
    pub(crate) dialect: Dialect,
    pub(crate) outbox: Arc<Outbox>,
    subscriptions: HashSet<ChannelName>,
    /// Subscriptions still replaying their backlog (see [`Connection::pump_replays`]).
    pub(crate) catching: Vec<ChannelName>,
    /// Replies sent in the current second (limited per channel class).
    replies: PerSecond,
    /// Rate-limited commands in the current second.
    rejections: PerSecond,
    /// Set when rejections went over their budget: the transport closes after this reply.
    pub(crate) abusive: Option<&'static str>,
    /// The publisher credential the connection authenticated with, for the audit log (only
    /// kept when there is one).
    pub(crate) credential: Option<Arc<str>>,
}

impl Drop for Connection {
    /// Runs however the connection ends (return, error, task abort): its subscriptions go at
    /// once.
    fn drop(&mut self) {
        self.unsubscribe_all();
        self.ctx.hub.forget_publisher(self.id);
        self.count_publisher(false);
    }
}

impl Connection {
    /// A new connection of listener `ctx` over `conn`, speaking `dialect`, with what its
    /// handshake proved; its authentication deadline starts now.
    pub(crate) fn new(
        ctx: Arc<ListenerCtx>,
        conn: Arc<ConnSlot>,
        dialect: Dialect,
        identity: Identity,
    ) -> Self {
        let cfg = &ctx.cfg;
        // Whatever the handshake presented, only an identity the listener requires lifts the
        // deadline (a publisher's token on a subscribers' listener does not).
        let auth_deadline = (!identity.meets(cfg)).then(|| Instant::now() + cfg.auth_timeout);
        let connection = Self {
            identity,
            challenge: None,
            auth_deadline,
            outbox: Arc::new(Outbox::new(cfg.outbox)),
            id: ctx.hub.next_conn_id(),
            conn,
            dialect,
            subscriptions: HashSet::new(),
            catching: Vec::new(),
            replies: PerSecond::new(0),
            rejections: PerSecond::new(cfg.abuse.max_rejected_commands_per_second),
            abusive: None,
            credential: None,
            ctx,
        };
        connection.count_publisher(true);
        connection
    }

    /// Moves the connection to `next`, its listener's context after a reload. The identity is
    /// checked again: a publisher whose credentials changed or went, a subscriber whose token's
    /// issuer went, or a connection of a listener whose tokens were removed (or that now
    /// requires one) gets `Err` (close [`close::CREDENTIAL_REVOKED`]). Subscriptions the
    /// identity may no longer read end with a `closed` event (`forbidden`); an identity the
    /// listener no longer accepts gets an authentication deadline again. Everything else (classes,
    /// limits, patterns) applies from the next request on.
    pub(crate) fn rebind(&mut self, next: Arc<ListenerCtx>) -> Result<(), (u16, &'static str)> {
        use tslm_protocol::close;
        const REVOKED: (u16, &str) = (close::CREDENTIAL_REVOKED, "credential revoked");
        let (old, new) = (&self.ctx.cfg, &next.cfg);
        // What was checked once, at the connection's start: its TLS (and client certificate's
        // issuer) and its origin. A change of either closes it so that it is checked again.
        if old.tls != new.tls
            || old.allowed_origins != new.allowed_origins
            || old.allowed_hosts != new.allowed_hosts
        {
            return Err((close::GOING_AWAY, "listener settings changed; reconnect"));
        }
        let (old_tokens, new_tokens) = (&old.auth_tokens, &new.auth_tokens);
        if !new_tokens.is_empty()
            && (old_tokens.is_empty() || old_tokens.iter().any(|t| !new_tokens.contains(t)))
        {
            return Err(REVOKED);
        }
        let identity = match &self.identity {
            Identity::Anonymous => Identity::Anonymous,
            Identity::Publisher(i) => {
                let old = self.ctx.publishers.get(*i).ok_or(REVOKED)?;
                let same = |p: &&crate::auth_config::Publisher| {
                    p.name == old.name
                        && p.keys == old.keys
                        && p.token_hashes == old.token_hashes
                        && p.certificates == old.certificates
                };
                let j = next
                    .publishers
                    .iter()
                    .position(|p| same(&p))
                    .ok_or(REVOKED)?;
                Identity::Publisher(j)
            }
            Identity::Subscriber(g) => {
                // The issuer must be there and unchanged (keys, secret, audiences, claims).
                let named = |issuers: &[crate::auth_config::Issuer]| {
                    issuers.iter().find(|i| i.name == g.issuer).cloned()
                };
                match (named(&self.ctx.issuers), named(&next.issuers)) {
                    (Some(was), Some(is)) if was == is => Identity::Subscriber(Arc::clone(g)),
                    _ => return Err(REVOKED),
                }
            }
        };
        let lost: Vec<ChannelName> = self
            .subscriptions
            .iter()
            .filter(|c| {
                ops::admit_read(&next, &identity, "subscribe", c, ReadVia::Subscriber).is_err()
            })
            .cloned()
            .collect();
        let wire = Wire::websocket(self.dialect);
        for channel in lost {
            self.subscriptions.remove(&channel);
            self.catching.retain(|c| *c != channel);
            if self.ctx.hub.unsubscribe(&channel, self.id) {
                let _ = self.outbox.push(wire.closed(&channel, "forbidden"));
            }
        }
        if self.auth_deadline.is_none() && !identity.meets(&next.cfg) {
            self.auth_deadline = Some(Instant::now() + next.cfg.auth_timeout);
        }
        self.identity = identity;
        self.ctx = next;
        Ok(())
    }

    /// Counts this connection for its publisher on the admin page (`connected`), or stops.
    fn count_publisher(&self, connected: bool) {
        if let Identity::Publisher(i) = self.identity
            && let Some(p) = self.ctx.publishers.get(i)
        {
            self.ctx.stats.publisher_connection(&p.name, connected);
        }
    }

    /// Replaces the identity (an `auth` or `refresh`), keeping the publisher counts right.
    fn set_identity(&mut self, identity: Identity) {
        self.count_publisher(false);
        self.identity = identity;
        self.count_publisher(true);
    }

    /// Stops deliveries and ends every subscription (at the end of the connection, before a
    /// possibly slow close handshake).
    pub(crate) fn unsubscribe_all(&mut self) {
        self.outbox.close();
        for channel in self.subscriptions.drain() {
            self.ctx.hub.unsubscribe(&channel, self.id);
        }
    }

    /// Moves the next part of every backlog replay under way into the outbox, as much as it has
    /// room for; the outbox wakes the writer, and the loop comes back here once it is drained.
    /// Replays are pulled, never pushed whole, so a long replay costs no more memory than the
    /// outbox limit and a slow reader slows only its own replay.
    pub(crate) fn pump_replays(&mut self) {
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

    /// Runs one command; returns the reply.
    /// Runs one command; returns the reply, or the `auth`/`refresh` request that must wait.
    pub(crate) async fn on_text(&mut self, frame: Bytes) -> Result<String, PendingAuth> {
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
                            self.run_v1(req.op, req.id.as_ref()).await
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
                    match legacy::decode_request(&frame) {
                        Ok(req) => self.run_legacy(req).await,
                        Err(e) => Err(e),
                    }
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

    /// Runs v1 text frames read together (`frames`, taken from the front), in order, as
    /// [`Connection::on_text`] would one by one, except that consecutive publishes to one
    /// channel go to the broker together ([`ops::publish_many`]: in cluster mode one Redis
    /// round trip for all, instead of one each). Returns the replies of the frames run, in
    /// order, and stops after an `auth`/`refresh` (returned, to run before the frames left) or
    /// as soon as the connection turned abusive.
    pub(crate) async fn on_texts(
        &mut self,
        frames: &mut VecDeque<Bytes>,
    ) -> (Vec<String>, Option<PendingAuth>) {
        let mut replies = Vec::with_capacity(frames.len());
        let mut group: Vec<Publish> = Vec::new();
        while let Some(frame) = frames.pop_front() {
            let allowed = self.allow_command();
            match v1::decode_request(&frame) {
                Ok(v1::Request {
                    id,
                    op:
                        v1::Op::Publish {
                            channel,
                            data,
                            msg_id,
                        },
                }) if allowed => {
                    if group.first().is_some_and(|g| g.channel != channel) {
                        self.publish_group(&mut group, &mut replies).await;
                        if self.reloaded() {
                            // This frame and the rest run after the reload is taken.
                            frames.push_front(frame);
                            return (replies, None);
                        }
                    }
                    group.push(Publish {
                        id,
                        channel,
                        data,
                        msg_id,
                    });
                }
                decoded => {
                    if !group.is_empty() {
                        self.publish_group(&mut group, &mut replies).await;
                        if self.reloaded() {
                            frames.push_front(frame);
                            return (replies, None);
                        }
                    }
                    let reply = match decoded {
                        Err(e) if !allowed => {
                            v1::encode_error(e.id.as_ref(), &rate_limited(&self.ctx.cfg))
                        }
                        Err(e) => v1::encode_error(e.id.as_ref(), &e.error),
                        Ok(req) => {
                            if allowed && matches!(req.op, v1::Op::Auth(_) | v1::Op::Refresh { .. })
                            {
                                return (
                                    replies,
                                    Some(PendingAuth {
                                        id: req.id,
                                        op: req.op,
                                    }),
                                );
                            }
                            let result = if allowed {
                                self.run_v1(req.op, req.id.as_ref()).await
                            } else {
                                Err(rate_limited(&self.ctx.cfg))
                            };
                            self.finish_v1(req.id.as_ref(), result)
                        }
                    };
                    replies.push(reply);
                }
            }
            if self.abusive.is_some() || (group.is_empty() && self.reloaded()) {
                break;
            }
        }
        self.publish_group(&mut group, &mut replies).await;
        (replies, None)
    }

    /// A reload happened (not shutdown): the session takes it before running anything more, so
    /// that nothing received after it runs under a revoked credential.
    fn reloaded(&self) -> bool {
        self.ctx.generation.is_cancelled() && !self.ctx.shutdown.is_cancelled()
    }

    /// Publishes `group` (consecutive publishes to one channel) and appends their replies.
    async fn publish_group(&mut self, group: &mut Vec<Publish>, replies: &mut Vec<String>) {
        if group.len() <= 1 {
            if let Some(p) = group.pop() {
                let op = v1::Op::Publish {
                    channel: p.channel,
                    data: p.data,
                    msg_id: p.msg_id,
                };
                let result = self.run_v1(op, p.id.as_ref()).await;
                replies.push(self.finish_v1(p.id.as_ref(), result));
            }
            return;
        }
        let ctx = Arc::clone(&self.ctx);
        let who = self.identity.clone();
        let actor = self.actor();
        let items: Vec<(Payload, Option<Box<str>>)> = group
            .iter_mut()
            .map(|p| (p.data.clone(), p.msg_id.take()))
            .collect();
        let publisher = Some((self.id, &self.outbox));
        let answers =
            ops::publish_many(&ctx, &who, &actor, &group[0].channel, &items, publisher).await;
        for (p, answer) in group.drain(..).zip(answers) {
            let id = p.id.as_ref();
            let result = answer
                .inspect_err(|e| ctx.stats.count_publish_refusal(e.code))
                .map(|published| v1::encode_ok(id, ops::published(published)));
            replies.push(self.finish_v1(id, result));
        }
    }

    /// Takes a token from the connection's rate limit, counting a refusal against the budget of
    /// rejections.
    pub(crate) fn allow_command(&mut self) -> bool {
        let allowed = self.conn.allow_command();
        if !allowed && self.rejections.hit() {
            self.abusive = Some("rate limit exceeded");
        }
        allowed
    }

    /// Who acts, for the audit log.
    fn actor(&self) -> Actor {
        Actor {
            transport: Transport::Websocket,
            peer: Some(self.conn.peer),
            credential: self.credential.clone(),
        }
    }

    /// Runs one v1 request; returns the encoded reply.
    async fn run_v1(&mut self, op: v1::Op, id: Option<&v1::Id>) -> Result<String, ProtoError> {
        let ctx = Arc::clone(&self.ctx);
        let who = self.identity.clone();
        let actor = self.actor();
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
                let c = ops::create(&ctx, &who, &actor, &channel, &options, "websocket").await?;
                ok(v1::Success::Created {
                    created: c.created,
                    epoch: c.epoch,
                })
            }
            v1::Op::Delete { channel } => {
                ops::delete(&ctx, &who, &actor, &channel).await?;
                ok(v1::Success::Deleted)
            }
            v1::Op::Publish {
                channel,
                data,
                msg_id,
            } => {
                let publisher = Some((self.id, &self.outbox));
                let p = ops::publish(
                    &ctx,
                    &who,
                    &actor,
                    &channel,
                    &data,
                    msg_id.as_deref(),
                    publisher,
                )
                .await
                .inspect_err(|e| ctx.stats.count_publish_refusal(e.code))?;
                ok(ops::published(p))
            }
            v1::Op::Subscribe { channel, start } => {
                ops::admit_read(&ctx, &who, "subscribe", &channel, ReadVia::Subscriber)?;
                ops::prepare_subscribe(&ctx, &channel, start).await?;
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
                let h =
                    ops::history(&ctx, &who, &channel, start, limit, ReadVia::Subscriber).await?;
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
                ops::reply(&ctx, &channel, offset, self.id, &data).await?;
                ok(v1::Success::Empty)
            }
            v1::Op::Channels {
                prefix,
                after,
                limit,
            } => {
                let (channels, more) =
                    ops::channels(&ctx, &who, prefix.as_deref(), after.as_ref(), limit).await?;
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
    pub(crate) async fn run_auth(&mut self, pending: PendingAuth) -> String {
        let id = pending.id.as_ref();
        // What was presented, for the audit log: a token's hash prefix, or a signature and the
        // publisher it claims to be from.
        let presented = match &pending.op {
            v1::Op::Auth(c) if self.ctx.audit.is_on() => Some(match c {
                v1::Credentials::Token(t) => (audit::token_credential(t), None),
                v1::Credentials::Signature { publisher, .. } => {
                    (Arc::from("signature"), Some(publisher.to_string()))
                }
            }),
            _ => None,
        };
        let result = match pending.op {
            v1::Op::Auth(credentials) => self.authenticate(credentials, id).await,
            v1::Op::Refresh { token } => self.refresh(&token, id).await,
            _ => Err(ProtoError::new(ErrorCode::Internal, "internal error")),
        };
        if let Err(e) = &result
            && e.code == ErrorCode::Unauthorized
        {
            self.ctx.stats.count_auth_refusal(AuthRefusalKind::Command);
            if let Some((credential, claimed)) = presented {
                let actor = Actor {
                    credential: Some(credential),
                    ..self.actor()
                };
                self.ctx.audit.auth(
                    Outcome::Refused,
                    Via::Auth,
                    &actor,
                    &self.identity,
                    claimed.as_deref(),
                    &self.ctx.publishers,
                    Some(&e.message),
                );
            }
        }
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
                let (i, k) = identity::publisher_by_signature(
                    &ctx.publishers,
                    &publisher,
                    &challenge,
                    &signature,
                )
                .ok_or_else(|| identity::unauthorized("signature refused"))?;
                let credential = ctx
                    .audit
                    .is_on()
                    .then(|| audit::key_credential(&ctx.publishers[i].keys[k]));
                Ok(self.became_publisher(i, id, credential))
            }
            v1::Credentials::Token(token) => {
                if let Some(i) = identity::publisher_by_token(&ctx.publishers, &token) {
                    let credential = ctx.audit.is_on().then(|| audit::token_credential(&token));
                    return Ok(self.became_publisher(i, id, credential));
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
                self.set_identity(Identity::Subscriber(grant));
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

    fn became_publisher(
        &mut self,
        i: usize,
        id: Option<&v1::Id>,
        credential: Option<Arc<str>>,
    ) -> String {
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
        self.set_identity(Identity::Publisher(i));
        self.credential = credential;
        self.ctx.audit.auth(
            Outcome::Accepted,
            Via::Auth,
            &self.actor(),
            &self.identity,
            None,
            &self.ctx.publishers,
            None,
        );
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
        self.set_identity(Identity::Subscriber(Arc::new(grant)));
        Ok(reply)
    }

    async fn run_legacy(&mut self, req: legacy::Request) -> Result<String, legacy::Error> {
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
        let actor = self.actor();
        match &req {
            legacy::Request::CreateChannel(c) => {
                let created = ops::create(
                    &ctx,
                    &self.identity,
                    &actor,
                    c,
                    &Default::default(),
                    "websocket",
                )
                .await
                .map_err(denied)?;
                if !created.created {
                    return Err(legacy::Error::AlreadyRegistered(c.clone()));
                }
            }
            legacy::Request::Subscribe(c) => {
                ops::admit_read(&ctx, &self.identity, "subscribe", c, ReadVia::Subscriber)
                    .map_err(denied)?;
                let replay = ops::legacy_replay(&ctx, c).await;
                let start = if replay > 0 {
                    Start::Last(replay as u64)
                } else {
                    Start::New
                };
                // In cluster mode this opens the node's mirror of the channel.
                ops::prepare_subscribe(&ctx, c, start)
                    .await
                    .map_err(|e| match e.code {
                        ErrorCode::NotFound => legacy::Error::ChannelNotFound(c.clone()),
                        _ => denied(e),
                    })?;
                self.subscribe(c.clone(), start).map_err(|e| match e.code {
                    ErrorCode::LimitExceeded => legacy::Error::SubscriptionLimit,
                    _ => legacy::Error::ChannelNotFound(c.clone()),
                })?;
            }
            legacy::Request::NotifyChannel(c, data) => {
                let published = ops::publish(&ctx, &self.identity, &actor, c, data, None, None)
                    .await
                    .inspect_err(|e| ctx.stats.count_publish_refusal(e.code));
                published.map_err(|e| match e.code {
                    ErrorCode::TooLarge => legacy::Error::TooLarge,
                    ErrorCode::Forbidden | ErrorCode::Unauthorized => {
                        legacy::Error::PermissionDenied(command)
                    }
                    _ => legacy::Error::ChannelNotFound(c.clone()),
                })?;
            }
        }
        Ok(legacy::encode_success(command, req.channel()))
    }

    /// Subscribes this connection, within its subscription limit; a replay from the backlog
    /// starts once the reply is written (see [`Connection::pump_replays`]).
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
}

#[cfg(test)]
mod tests;
