//! The subscriber's stateless HTTP calls, beside the one-way transports (`/v1/events`,
//! `/v1/poll`) for what a stream cannot carry: `GET /v1/channels/{name}/history` (the v1
//! `history` op) and `POST /v1/channels/{name}/messages/{offset}/reply` (the v1 `reply` op), with
//! their CORS preflights. Same rules as over WebSocket: listener permission `Subscribe`, the
//! class's `subscribe_from`, the subscriber's token (or ticket) and its grants, the one read
//! rule ([`crate::ops::admit_read`]), the class's reply rules, and the same error codes.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use tslm_protocol::{ChannelName, ErrorCode, Offset, ProtoError, v1};

use super::longpoll::{cors, subscriber_identity};
use super::{Ctx, HistoryQuery, admit, ok_response, page_limit, payload_of, query_error, slot};
use crate::context::{ConnSlot, ListenerCtx};
use crate::errors::error_response;
use crate::identity::{self, Identity};
use crate::ops::{self, ReadVia};

/// Query of `GET /v1/channels/{name}/history`: the start forms and `limit` of the operators'
/// history route, and a `ticket` (`POST /v1/tickets`) for clients that cannot send headers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubscriberHistoryQuery {
    start: Option<String>,
    last: Option<u64>,
    epoch: Option<String>,
    offset: Option<u64>,
    limit: Option<usize>,
    ticket: Option<String>,
}

/// Query of `POST /v1/channels/{name}/messages/{offset}/reply`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplyQuery {
    ticket: Option<String>,
}

/// Answers `result` as JSON with `status`, never cached, readable by an allowed origin's page.
fn answer(
    result: Result<(StatusCode, v1::Success<'_>), ProtoError>,
    origin: Option<HeaderValue>,
) -> Response {
    let mut resp = match result {
        Ok((status, s)) => ok_response(status, s),
        Err(e) => error_response(&e),
    };
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    cors(h, origin);
    resp
}

/// Admission (listener token, `Subscribe`, command rate, channel name), then the query (the
/// `ticket` it names, or why it is refused), then who asks: a ticket's grant or what the headers
/// prove, which the listener must accept. Returns the request whole again (it cannot be held
/// by reference across an `.await`).
async fn subscriber(
    ctx: &ListenerCtx,
    req: Request,
    what: &str,
    name: Result<Path<String>, PathRejection>,
    ticket: Result<Option<&str>, ProtoError>,
) -> Result<(ChannelName, Identity, Arc<ConnSlot>, Request), ProtoError> {
    let channel = admit(ctx, &req, ctx.cfg.permissions.subscribe, what, Some(name))?
        .ok_or_else(|| ProtoError::bad_request("missing channel name"))?;
    let ticket = ticket?;
    let conn = slot(req.extensions())
        .ok_or_else(|| ProtoError::new(ErrorCode::Internal, "internal error"))?;
    let (parts, body) = req.into_parts();
    let who = subscriber_identity(ctx, &conn, &parts.headers, ticket).await?;
    if !who.meets(&ctx.cfg) {
        return Err(identity::unauthorized(
            "this listener requires an access token: send `Authorization: Bearer <token>`",
        ));
    }
    Ok((channel, who, conn, Request::from_parts(parts, body)))
}

/// `GET /v1/channels/{name}/history` on listeners that may subscribe: the v1 `history` op.
pub(super) async fn history(
    State(ctx): Ctx,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<SubscriberHistoryQuery>, QueryRejection>,
    req: Request,
) -> Response {
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let result = async {
        let query = query.map(|Query(q)| q).map_err(query_error);
        let ticket = query
            .as_ref()
            .map(|q| q.ticket.as_deref())
            .map_err(Clone::clone);
        let (channel, who, _, _) = subscriber(&ctx, req, "history", name, ticket).await?;
        let q = query?;
        let limit = page_limit(q.limit)?;
        let start = HistoryQuery {
            start: q.start,
            last: q.last,
            epoch: q.epoch,
            offset: q.offset,
            limit: None,
            nonce: None,
        }
        .start()?;
        ops::history(&ctx, &who, &channel, start, limit, ReadVia::Subscriber).await
    };
    match result.await {
        Ok(h) => answer(
            Ok((
                StatusCode::OK,
                v1::Success::History {
                    sub: h.subscription,
                    messages: &h.messages,
                    more: h.more,
                },
            )),
            origin,
        ),
        Err(e) => answer(Err(e), origin),
    }
}

/// `POST /v1/channels/{name}/messages/{offset}/reply` on listeners that may subscribe: the v1
/// `reply` op, the body its `data`. No subscription is needed (a request has none): the read
/// rule a subscription would need is checked instead. The class's `replies_per_second` counts
/// per TCP connection; the publisher sees a `from` of its own for each request.
pub(super) async fn reply(
    State(ctx): Ctx,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<ReplyQuery>, QueryRejection>,
    req: Request,
) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let result = async {
        let Path((name, offset)) =
            path.map_err(|_| ProtoError::bad_request("bad channel name or offset in path"))?;
        let query = query.map(|Query(q)| q).map_err(|_| {
            ProtoError::bad_request("bad query: the only parameter allowed is `ticket`")
        });
        let ticket = query
            .as_ref()
            .map(|q| q.ticket.as_deref())
            .map_err(Clone::clone);
        let (channel, who, conn, req) =
            subscriber(&ctx, req, "reply", Ok(Path(name)), ticket).await?;
        let offset = offset
            .parse::<u64>()
            .ok()
            .filter(|o| *o >= 1)
            .map(Offset)
            .ok_or_else(|| ProtoError::bad_request("the offset must be an integer >= 1"))?;
        let class = ops::admit_read(&ctx, &who, "reply", &channel, ReadVia::Subscriber)?;
        if conn.reply_over(class.replies_per_second) {
            return Err(ProtoError::new(
                ErrorCode::RateLimited,
                format!(
                    "reply rate exceeded: channel class \"{}\" allows {} replies per second",
                    class.pattern, class.replies_per_second
                ),
            ));
        }
        let data = payload_of(super::read_body(&ctx, req).await?)?;
        let replier = ctx.hub.next_conn_id();
        ops::reply(&ctx, &channel, offset, replier, &data).await
    };
    let result = result.await;
    answer(
        result.map(|()| (StatusCode::OK, v1::Success::Empty)),
        origin,
    )
}

/// `OPTIONS` of the history route: the CORS preflight of a `GET` with an `Authorization` header.
pub(super) async fn history_preflight(req: Request) -> Response {
    super::longpoll::preflight_for("GET", &req)
}

/// `OPTIONS` of the reply route: the CORS preflight of a `POST` of JSON with an
/// `Authorization` header.
pub(super) async fn reply_preflight(req: Request) -> Response {
    let mut resp = super::longpoll::preflight_for("POST", &req);
    resp.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    resp
}
