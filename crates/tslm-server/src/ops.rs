//! The channel operations shared by WebSocket sessions (v1 and the original protocol) and the
//! HTTP API: permission checks against the listener and the channel's class, then the hub, with
//! hub errors mapped to the documented error codes.

use std::sync::Arc;

use tslm_hub::{ConnId, HubError, Outbox, PublishOptions, Published, ReplyError};
use tslm_protocol::{ChannelName, ChannelOptions, ErrorCode, Payload, ProtoError, Start, v1};

use crate::classes::ChannelClass;
use crate::listener::ListenerCtx;

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
    }
}

/// What a connection may do with a channel: the listener's permission and the class's
/// listener list must both allow it.
pub(crate) enum Access {
    /// subscribe, unsubscribe, history, reply
    Read,
    /// create, publish, delete
    Write,
    /// create and delete: also needs the listener's create permission
    Manage,
}

/// Checks `access` to `channel` for a connection of `ctx`'s listener; returns the class.
pub(crate) fn admit<'a>(
    ctx: &'a ListenerCtx,
    op: &str,
    channel: &ChannelName,
    access: Access,
) -> Result<&'a ChannelClass, ProtoError> {
    let perms = ctx.cfg.permissions;
    let class = ctx.channels.class_for(channel);
    let allowed = match access {
        Access::Read => perms.subscribe,
        Access::Write => perms.publish,
        Access::Manage => perms.create,
    };
    if !allowed {
        return Err(forbidden_listener(op));
    }
    let class_allows = match access {
        Access::Read => class.may_subscribe_from(&ctx.cfg.name),
        Access::Write | Access::Manage => class.may_publish_from(&ctx.cfg.name),
    };
    if !class_allows {
        return Err(forbidden_class(op, class, channel));
    }
    Ok(class)
}

/// Creates `channel` with `options` within its class.
pub(crate) fn create(
    ctx: &ListenerCtx,
    channel: &ChannelName,
    options: &ChannelOptions,
    via: &'static str,
) -> Result<tslm_hub::Created, ProtoError> {
    let class = admit(ctx, "create", channel, Access::Manage)?;
    let settings = class
        .settings_with(options)
        .map_err(|m| ProtoError::new(ErrorCode::Forbidden, m))?;
    let created = ctx.hub.create_with(channel, settings);
    if created.created {
        tracing::info!(listener = %ctx.cfg.name, channel = %channel, epoch = %created.epoch, via, "channel created");
    }
    Ok(created)
}

pub(crate) fn delete(ctx: &ListenerCtx, channel: &ChannelName) -> Result<(), ProtoError> {
    admit(ctx, "delete", channel, Access::Manage)?;
    ctx.hub.delete(channel).map_err(hub_error)?;
    tracing::info!(listener = %ctx.cfg.name, channel = %channel, "channel deleted");
    Ok(())
}

/// Publishes after the checks every entry point shares; creates the channel first when its class
/// says so.
pub(crate) fn publish(
    ctx: &ListenerCtx,
    channel: &ChannelName,
    data: &Payload,
    msg_id: Option<&str>,
    publisher: Option<(ConnId, &Arc<Outbox>)>,
) -> Result<Published, ProtoError> {
    let class = admit(ctx, "publish", channel, Access::Write)?;
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
    match ctx.hub.publish_with(channel, data, opts) {
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
            let created = ctx.hub.create_with(channel, class.settings.clone());
            if created.created {
                tracing::info!(listener = %ctx.cfg.name, channel = %channel, epoch = %created.epoch, via = "publish", "channel created");
            }
            ctx.hub.publish_with(channel, data, opts).map_err(hub_error)
        }
        r => r.map_err(hub_error),
    }
}

/// The most messages one history read returns.
pub(crate) const MAX_HISTORY: usize = 1000;

pub(crate) fn history(
    ctx: &ListenerCtx,
    channel: &ChannelName,
    start: Start,
    limit: usize,
    access: Access,
) -> Result<tslm_hub::History, ProtoError> {
    admit(ctx, "history", channel, access)?;
    ctx.hub
        .history(channel, start, limit.clamp(1, MAX_HISTORY))
        .map_err(hub_error)
}

pub(crate) fn reply_error(e: ReplyError) -> ProtoError {
    let code = match &e {
        ReplyError::NotFound(_) | ReplyError::NoSuchMessage { .. } => ErrorCode::NotFound,
        ReplyError::NotAllowed(_) => ErrorCode::Forbidden,
        ReplyError::Gone { .. } => ErrorCode::Gone,
        ReplyError::Busy { .. } => ErrorCode::Unavailable,
        ReplyError::TooLarge { .. } => ErrorCode::TooLarge,
    };
    ProtoError::new(code, e.to_string())
}

/// Lists channels (listeners that may create only: the operators' side).
pub(crate) fn channels(
    ctx: &ListenerCtx,
    prefix: Option<&str>,
    after: Option<&ChannelName>,
    limit: usize,
) -> Result<(Vec<tslm_protocol::ChannelInfo>, bool), ProtoError> {
    if !ctx.cfg.permissions.create {
        return Err(forbidden_listener("listing channels"));
    }
    Ok(ctx.hub.list(prefix, after, limit.clamp(1, MAX_HISTORY)))
}

/// The success reply of a publish.
pub(crate) fn published(p: Published) -> v1::Success<'static> {
    v1::Success::Published {
        epoch: p.epoch,
        offset: p.offset,
        duplicate: p.duplicate,
    }
}
