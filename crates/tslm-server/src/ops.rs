//! The channel operations shared by WebSocket sessions (v1 and the original protocol) and the
//! HTTP API: permission checks against the listener and the channel's class, then the hub, with
//! hub errors mapped to the documented error codes.

use std::sync::Arc;

use tslm_hub::{ConnId, HubError, Outbox, PublishOptions, Published, ReplyError};
use tslm_protocol::{ChannelName, ChannelOptions, ErrorCode, Payload, ProtoError, Start, v1};

use crate::audit::Actor;
use crate::classes::ChannelClass;
use crate::context::ListenerCtx;
use crate::identity::{Identity, unauthorized};

pub(crate) fn forbidden_listener(op: &str) -> ProtoError {
    ProtoError::new(
        ErrorCode::Forbidden,
        format!("this listener does not allow {op}"),
    )
}

fn forbidden_class(op: &str, class: &ChannelClass, channel: &ChannelName) -> ProtoError {
    ProtoError::new(
        ErrorCode::Forbidden,
        format!(
            "channel `{channel}` (class \"{}\") does not allow {op} from this listener",
            class.pattern
        ),
    )
}

pub(crate) fn not_found(channel: &ChannelName) -> ProtoError {
    ProtoError::new(
        ErrorCode::NotFound,
        format!("channel `{channel}` does not exist"),
    )
}

pub(crate) fn hub_error(e: HubError) -> ProtoError {
    match e {
        HubError::NotFound(c) => not_found(&c),
        e @ HubError::Full { .. } => ProtoError::new(ErrorCode::LimitExceeded, e.to_string()),
        e @ HubError::FutureOffset { .. } => ProtoError::bad_request(e.to_string()),
        e @ HubError::TooLarge { .. } => ProtoError::new(ErrorCode::TooLarge, e.to_string()),
        e @ (HubError::TooManyChannels { .. }
        | HubError::TooManyMsgIds { .. }
        | HubError::TooManySubscriptions { .. }) => {
            ProtoError::new(ErrorCode::LimitExceeded, e.to_string())
        }
        e @ HubError::Unavailable(_) => ProtoError::new(ErrorCode::Unavailable, e.to_string()),
    }
}

/// What a request does with a channel, for permission checks. Reads are not here: every read
/// goes through [`admit_read`], whatever its entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// publish: `NotifyChannel`, `publish_from`, and the publisher's `publish` operation and
    /// channel patterns where it authenticated (required on `publisher_auth` listeners).
    Publish,
    /// create: `CreateChannel`, `publish_from`, the publisher's `create` operation.
    Create,
    /// delete: `CreateChannel`, `publish_from`, the publisher's `delete` operation.
    Delete,
    /// listing channels (operators): `CreateChannel`, any publisher operation.
    Operate,
}

/// Which entry point a read comes through: it decides only which listener permission serves
/// it; what may be read is the same for all (see [`admit_read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadVia {
    /// WebSocket `subscribe`, `history` and `reply` (both dialects): listener permission
    /// `Subscribe`.
    Subscriber,
    /// HTTP `GET /v1/channels/{name}/messages` and channel listings (operators): listener
    /// permission `CreateChannel`.
    Operator,
}

/// Checks `access` (a write) to `channel` by `who` on `ctx`'s listener; returns the channel's
/// class.
pub(crate) fn admit<'a>(
    ctx: &'a ListenerCtx,
    who: &Identity,
    op: &str,
    channel: &ChannelName,
    access: Access,
) -> Result<&'a ChannelClass, ProtoError> {
    let perms = ctx.cfg.permissions;
    let class = ctx.channels.class_for(channel);
    let allowed = match access {
        Access::Publish => perms.publish,
        Access::Create | Access::Delete | Access::Operate => perms.create,
    };
    if !allowed {
        return Err(forbidden_listener(op));
    }
    if !class.may_publish_from(&ctx.cfg.name) {
        return Err(forbidden_class(op, class, channel));
    }
    publisher_may(ctx, who, op, Some(channel), access)?;
    Ok(class)
}

/// The one rule for reading a channel (subscribe, history over WebSocket or HTTP, reply, and
/// which channels a listing shows), whatever the entry point:
///
/// 1. the listener serves reads of this kind (`via`: `Subscribe` or `CreateChannel`);
/// 2. the channel's class lists the listener in `subscribe_from` (when it has the list);
/// 3. the reader's identity may read the channel ([`reader_may`]).
///
/// Returns the channel's class.
pub(crate) fn admit_read<'a>(
    ctx: &'a ListenerCtx,
    who: &Identity,
    op: &str,
    channel: &ChannelName,
    via: ReadVia,
) -> Result<&'a ChannelClass, ProtoError> {
    let perms = ctx.cfg.permissions;
    let allowed = match via {
        ReadVia::Subscriber => perms.subscribe,
        ReadVia::Operator => perms.create,
    };
    if !allowed {
        return Err(forbidden_listener(op));
    }
    let class = ctx.channels.class_for(channel);
    if !class.may_subscribe_from(&ctx.cfg.name) {
        return Err(forbidden_class(op, class, channel));
    }
    reader_may(ctx, who, op, channel, class)?;
    Ok(class)
}

/// Steps 2 and 3 of [`admit_read`] for a channel listing: whether `who` may read `channel`
/// (no error built: a listing asks this of every channel).
fn may_read(ctx: &ListenerCtx, who: &Identity, channel: &ChannelName) -> bool {
    let class = ctx.channels.class_for(channel);
    class.may_subscribe_from(&ctx.cfg.name) && read_refusal(ctx, who, channel, class).is_none()
}

/// Why a reader may not read a channel ([`read_refusal`]).
enum ReadRefusal {
    /// The publisher's patterns do not cover the channel.
    PublisherChannel(usize),
    /// A `publisher_auth` listener, and no publisher identity.
    PublishersOnly,
    TokenExpired,
    NotGranted,
    TokenNeeded,
}

/// Step 3 of [`admit_read`], who may read a channel:
///
/// - a publisher (wherever it authenticated) only the channels its patterns cover: a
///   publisher held to `prices.*` reads nothing else, on no listener and through no entry
///   point. Its identity counts as authenticated where the class or the listener require
///   authenticated subscribers;
/// - on a `publisher_auth` listener, nobody else;
/// - where the class has `subscribers = "authenticated"` or the listener `subscriber_auth`, a
///   subscriber whose unexpired access token grants the channel;
/// - otherwise anyone.
fn read_refusal(
    ctx: &ListenerCtx,
    who: &Identity,
    channel: &ChannelName,
    class: &ChannelClass,
) -> Option<ReadRefusal> {
    match who {
        Identity::Publisher(i) => (!ctx.publishers[*i].may_use(channel.as_str()))
            .then_some(ReadRefusal::PublisherChannel(*i)),
        // Deny by default: nothing but the auth handshake for anyone else.
        _ if ctx.cfg.publisher_auth => Some(ReadRefusal::PublishersOnly),
        _ if !(class.authenticated_subscribers || ctx.cfg.subscriber_auth) => None,
        Identity::Subscriber(g) if g.expired() => Some(ReadRefusal::TokenExpired),
        Identity::Subscriber(g) if g.allows(channel) => None,
        Identity::Subscriber(_) => Some(ReadRefusal::NotGranted),
        Identity::Anonymous => Some(ReadRefusal::TokenNeeded),
    }
}

/// [`read_refusal`] as the error the reader gets.
fn reader_may(
    ctx: &ListenerCtx,
    who: &Identity,
    op: &str,
    channel: &ChannelName,
    class: &ChannelClass,
) -> Result<(), ProtoError> {
    let Some(refusal) = read_refusal(ctx, who, channel, class) else {
        return Ok(());
    };
    Err(match refusal {
        ReadRefusal::PublisherChannel(i) => ProtoError::new(
            ErrorCode::Forbidden,
            format!(
                "publisher `{}` may not use channel `{channel}` ({op})",
                ctx.publishers[i].name
            ),
        ),
        ReadRefusal::PublishersOnly => unauthorized(
            "this listener serves authenticated publishers only: authenticate first (a token, a key signature or a client certificate)",
        ),
        ReadRefusal::TokenExpired => {
            unauthorized("the access token has expired: send `refresh` with a new one")
        }
        ReadRefusal::NotGranted => ProtoError::new(
            ErrorCode::Forbidden,
            format!("the access token does not grant channel `{channel}`"),
        ),
        ReadRefusal::TokenNeeded => unauthorized(format!(
            "channel `{channel}` needs an access token: send {{\"op\":\"auth\",\"token\":\"<access token>\"}} first"
        )),
    })
}

/// The publisher checks of a write or operator access: on `publisher_auth` listeners a publisher
/// identity is required; a publisher (wherever it authenticated) is held to its operations and
/// channel patterns.
pub(crate) fn publisher_may(
    ctx: &ListenerCtx,
    who: &Identity,
    op: &str,
    channel: Option<&ChannelName>,
    access: Access,
) -> Result<(), ProtoError> {
    let p = match who {
        Identity::Publisher(i) => &ctx.publishers[*i],
        _ if ctx.cfg.publisher_auth => {
            return Err(unauthorized(
                "this listener serves authenticated publishers only: authenticate first (a token, a key signature or a client certificate)",
            ));
        }
        _ => return Ok(()),
    };
    let op_allowed = match access {
        Access::Publish => p.ops.publish,
        Access::Create => p.ops.create,
        Access::Delete => p.ops.delete,
        Access::Operate => true,
    };
    if !op_allowed {
        return Err(ProtoError::new(
            ErrorCode::Forbidden,
            format!("publisher `{}` may not {op}", p.name),
        ));
    }
    if let Some(c) = channel
        && !p.may_use(c.as_str())
    {
        return Err(ProtoError::new(
            ErrorCode::Forbidden,
            format!("publisher `{}` may not use channel `{c}` ({op})", p.name),
        ));
    }
    Ok(())
}

/// Creates `channel` with `options` within its class.
pub(crate) async fn create(
    ctx: &ListenerCtx,
    who: &Identity,
    actor: &Actor,
    channel: &ChannelName,
    options: &ChannelOptions,
    via: &'static str,
) -> Result<tslm_hub::Created, ProtoError> {
    let class = admit(ctx, who, "create", channel, Access::Create)?;
    let settings = class
        .settings_with(options)
        .map_err(|m| ProtoError::new(ErrorCode::Forbidden, m))?;
    // The record's place first: with the audit log behind, nothing is done.
    let slot = ctx.audit.reserve()?;
    let created = ctx
        .broker
        .create(channel, settings)
        .await
        .map_err(hub_error)?;
    if let Some(slot) = slot {
        slot.create(actor, who, &ctx.publishers, channel, &created);
    }
    if created.created {
        tracing::info!(listener = %ctx.cfg.name, channel = %channel, epoch = %created.epoch, via, "channel created");
    }
    Ok(created)
}

pub(crate) async fn delete(
    ctx: &ListenerCtx,
    who: &Identity,
    actor: &Actor,
    channel: &ChannelName,
) -> Result<(), ProtoError> {
    admit(ctx, who, "delete", channel, Access::Delete)?;
    let slot = ctx.audit.reserve()?;
    ctx.broker.delete(channel).await.map_err(hub_error)?;
    if let Some(slot) = slot {
        slot.delete(actor, who, &ctx.publishers, channel);
    }
    tracing::info!(listener = %ctx.cfg.name, channel = %channel, "channel deleted");
    Ok(())
}

/// Publishes after the checks every entry point shares; creates the channel first when its class
/// says so.
pub(crate) async fn publish(
    ctx: &ListenerCtx,
    who: &Identity,
    actor: &Actor,
    channel: &ChannelName,
    data: &Payload,
    msg_id: Option<&str>,
    publisher: Option<(ConnId, &Arc<Outbox>)>,
) -> Result<Published, ProtoError> {
    let started = std::time::Instant::now();
    let class = admit(ctx, who, "publish", channel, Access::Publish)?;
    if data.len() > ctx.cfg.max_publish_bytes {
        return Err(ProtoError::new(
            ErrorCode::TooLarge,
            format!(
                "data is {} bytes; this listener allows at most {}",
                data.len(),
                ctx.cfg.max_publish_bytes
            ),
        ));
    }
    let opts = PublishOptions { msg_id, publisher };
    // The record's place first: with the audit log behind, the message is refused unpublished.
    let slot = ctx.audit.reserve()?;
    let published = match ctx.broker.publish(channel, data, opts).await {
        Err(HubError::NotFound(_)) if class.auto_create => {
            // A message the new channel would refuse must not create it.
            let max = class.settings.max_message_bytes;
            if data.len() > max {
                return Err(hub_error(HubError::TooLarge {
                    channel: channel.clone(),
                    len: data.len(),
                    max,
                }));
            }
            let create_slot = ctx.audit.reserve()?;
            let created = ctx
                .broker
                .create(channel, class.settings.clone())
                .await
                .map_err(hub_error)?;
            if let Some(s) = create_slot {
                s.create(actor, who, &ctx.publishers, channel, &created);
            }
            if created.created {
                tracing::info!(listener = %ctx.cfg.name, channel = %channel, epoch = %created.epoch, via = "publish", "channel created");
            }
            ctx.broker
                .publish(channel, data, opts)
                .await
                .map_err(hub_error)
        }
        r => r.map_err(hub_error),
    }?;
    if let Some(slot) = slot {
        slot.publish(
            actor,
            who,
            &ctx.publishers,
            channel,
            &published,
            msg_id,
            data.json(),
        );
    }
    ctx.stats.publish_seconds.observe(started.elapsed());
    Ok(published)
}

/// Whether the broker publishes several messages in one call ([`publish_many`] pays): the
/// cluster does (one Redis round trip for a group), the in-memory hub does not.
pub(crate) fn publishes_together(ctx: &ListenerCtx) -> bool {
    ctx.broker.publishes_together()
}

/// Publishes several messages from one publisher to one channel, in order, each after the
/// checks [`publish`] makes: those that pass go to the broker together (in cluster mode, one
/// Redis round trip for all), and each answer is what [`publish`] would have answered, in its
/// place. A channel that does not exist yet (and whose class creates it on publish) falls back
/// to [`publish`] one message at a time.
pub(crate) async fn publish_many(
    ctx: &ListenerCtx,
    who: &Identity,
    actor: &Actor,
    channel: &ChannelName,
    items: &[(Payload, Option<Box<str>>)],
    publisher: Option<(ConnId, &Arc<Outbox>)>,
) -> Vec<Result<Published, ProtoError>> {
    let started = std::time::Instant::now();
    let mut out: Vec<Option<Result<Published, ProtoError>>> = Vec::with_capacity(items.len());
    // The messages that passed the checks: their place and their audit slot.
    let mut passed = Vec::with_capacity(items.len());
    let mut slots = Vec::with_capacity(items.len());
    let mut auto_create = false;
    for (i, (data, _)) in items.iter().enumerate() {
        let checked = admit(ctx, who, "publish", channel, Access::Publish).and_then(|class| {
            auto_create = class.auto_create;
            if data.len() > ctx.cfg.max_publish_bytes {
                return Err(ProtoError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "data is {} bytes; this listener allows at most {}",
                        data.len(),
                        ctx.cfg.max_publish_bytes
                    ),
                ));
            }
            ctx.audit.reserve()
        });
        match checked {
            Ok(slot) => {
                out.push(None);
                passed.push(i);
                slots.push(slot);
            }
            Err(e) => out.push(Some(Err(e))),
        }
    }
    let batch: Vec<(&Payload, Option<&str>)> = passed
        .iter()
        .map(|&i| (&items[i].0, items[i].1.as_deref()))
        .collect();
    let answers = if batch.is_empty() {
        Vec::new()
    } else {
        ctx.broker.publish_many(channel, &batch, publisher).await
    };
    let missing = answers
        .iter()
        .all(|a| matches!(a, Err(HubError::NotFound(_))));
    if auto_create && !answers.is_empty() && missing {
        // Created by the first publish, as one at a time would.
        drop(slots);
        for &i in &passed {
            let (data, msg_id) = &items[i];
            out[i] =
                Some(publish(ctx, who, actor, channel, data, msg_id.as_deref(), publisher).await);
        }
    } else {
        for ((&i, answer), slot) in passed.iter().zip(answers).zip(slots) {
            let (data, msg_id) = &items[i];
            let answer = answer.map_err(hub_error);
            if let (Ok(published), Some(slot)) = (&answer, slot) {
                slot.publish(
                    actor,
                    who,
                    &ctx.publishers,
                    channel,
                    published,
                    msg_id.as_deref(),
                    data.json(),
                );
            }
            if answer.is_ok() {
                ctx.stats.publish_seconds.observe(started.elapsed());
            }
            out[i] = Some(answer);
        }
    }
    out.into_iter()
        .map(|a| a.unwrap_or_else(|| Err(ProtoError::new(ErrorCode::Internal, "internal error"))))
        .collect()
}

/// The most messages one history read returns.
pub(crate) const MAX_HISTORY: usize = 1000;

/// Bytes of messages (or channel descriptions) one history or channel-list reply may carry: the
/// connection's outbound bound, so that a reply is bounded like a delivery (at least one entry
/// always fits; `more` says what was left out). The same bound holds over HTTP.
fn reply_budget(ctx: &ListenerCtx) -> usize {
    ctx.cfg.outbox.max_bytes
}

pub(crate) async fn history(
    ctx: &ListenerCtx,
    who: &Identity,
    channel: &ChannelName,
    start: Start,
    limit: usize,
    via: ReadVia,
) -> Result<tslm_hub::History, ProtoError> {
    admit_read(ctx, who, "history", channel, via)?;
    ctx.broker
        .history(
            channel,
            start,
            limit.clamp(1, MAX_HISTORY),
            reply_budget(ctx),
        )
        .await
        .map_err(hub_error)
}

/// A subscriber's read of `channel` from `start` for a transport that delivers by reading the
/// log (long-polling): the read rule of a subscribe, at most `limit` messages and about
/// `max_bytes` (at least one message when one follows `start`).
pub(crate) async fn read(
    ctx: &ListenerCtx,
    who: &Identity,
    channel: &ChannelName,
    start: Start,
    limit: usize,
    max_bytes: usize,
) -> Result<tslm_hub::History, ProtoError> {
    admit_read(ctx, who, "subscribe", channel, ReadVia::Subscriber)?;
    ctx.broker
        .history(channel, start, limit.clamp(1, MAX_HISTORY), max_bytes)
        .await
        .map_err(hub_error)
}

pub(crate) fn reply_error(e: ReplyError) -> ProtoError {
    let code = match &e {
        ReplyError::NotFound(_) | ReplyError::NoSuchMessage { .. } => ErrorCode::NotFound,
        ReplyError::NotAllowed(_) => ErrorCode::Forbidden,
        ReplyError::Gone { .. } => ErrorCode::Gone,
        ReplyError::Busy { .. } | ReplyError::Unavailable(_) => ErrorCode::Unavailable,
        ReplyError::TooLarge { .. } => ErrorCode::TooLarge,
    };
    ProtoError::new(code, e.to_string())
}

/// Lists channels (listeners that may create only: the operators' side).
pub(crate) async fn channels(
    ctx: &ListenerCtx,
    who: &Identity,
    prefix: Option<&str>,
    after: Option<&ChannelName>,
    limit: usize,
) -> Result<(Vec<tslm_protocol::ChannelInfo>, bool), ProtoError> {
    if !ctx.cfg.permissions.create {
        return Err(forbidden_listener("listing channels"));
    }
    publisher_may(ctx, who, "list channels", None, Access::Operate)?;
    let limit = limit.clamp(1, MAX_HISTORY);
    // Only the channels `who` may read (the rule of `admit_read`): a publisher sees those its
    // patterns cover, an anonymous operator none of an authenticated class.
    let budget = reply_budget(ctx);
    let visible = |c: &ChannelName| may_read(ctx, who, c);
    Ok(ctx
        .broker
        .list(prefix, after, limit, budget, &visible)
        .await)
}

/// The success reply of a publish.
pub(crate) fn published(p: Published) -> v1::Success<'static> {
    v1::Success::Published {
        epoch: p.epoch,
        offset: p.offset,
        duplicate: p.duplicate,
    }
}

/// Hands `replier`'s reply to message `offset` of `channel` to its publisher, wherever it is
/// connected (the caller checked the read rule, the subscription and the reply rate).
pub(crate) async fn reply(
    ctx: &ListenerCtx,
    channel: &ChannelName,
    offset: tslm_protocol::Offset,
    replier: ConnId,
    data: &Payload,
) -> Result<(), ProtoError> {
    ctx.broker
        .reply(channel, offset, replier, data)
        .await
        .map_err(reply_error)
}

/// Makes this node's log ready for a subscription of `channel` from `start` (the caller checked
/// the read rule); the fan-out then answers it.
pub(crate) async fn prepare_subscribe(
    ctx: &ListenerCtx,
    channel: &ChannelName,
    start: Start,
) -> Result<(), ProtoError> {
    ctx.broker
        .prepare_read(channel, start)
        .await
        .map_err(hub_error)
}

/// The original protocol's replay on subscribe: the channel's `legacy_replay` (0 when it does
/// not exist).
pub(crate) async fn legacy_replay(ctx: &ListenerCtx, channel: &ChannelName) -> usize {
    ctx.broker
        .settings(channel)
        .await
        .map_or(0, |s| s.legacy_replay)
}
