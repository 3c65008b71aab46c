//! The Server-Sent Events route (`GET /v1/events`): admission and identity as for every route,
//! then a stream task ([`crate::sse::run`]) on the listener's tracker. The route is the same for
//! a request hyper read (HTTP/2, or an HTTP/1.1 connection's later requests) and for one read by
//! `listener::native`, which writes the answer and its chunks on the socket itself.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use tslm_protocol::{ErrorCode, ProtoError, cursor};

use super::longpoll::cors;
use super::{Ctx, admit, slot};
use crate::context::ListenerCtx;
use crate::errors::error_response;
use crate::identity;

/// `GET /v1/events` on listeners that may subscribe.
pub(super) async fn events(State(ctx): Ctx, req: Request) -> Response {
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = match start(ctx, req).await {
        Ok(body) => {
            let mut r = Response::new(body);
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            // Proxies must neither buffer nor transform (compress) the stream.
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, no-transform"),
            );
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            r
        }
        Err(e) => error_response(&e),
    };
    cors(resp.headers_mut(), origin);
    resp
}

async fn start(ctx: Arc<ListenerCtx>, req: Request) -> Result<Body, ProtoError> {
    admit(
        &ctx,
        &req,
        ctx.cfg.permissions.subscribe,
        "event streams",
        None,
    )?;
    let mut poll = crate::poll::Poll::parse(req.uri().query().unwrap_or(""), true)?;
    super::longpoll::within_subscription_limit(&ctx, &poll)?;
    // The browser's reconnect names where it stopped; it wins over a `cursor` in the URL (the
    // URL of the first connection, which the browser reuses).
    let last = req
        .headers()
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ProtoError::bad_request("`Last-Event-ID`: not a cursor"))
        })
        .transpose()?;
    if last.is_some() {
        poll.cursor = last;
    }
    let resume = match &poll.cursor {
        Some(c) => Some(cursor::decode(&poll.names(), c)?),
        None => None,
    };
    let conn = slot(req.extensions())
        .ok_or_else(|| ProtoError::new(ErrorCode::Internal, "internal error"))?;
    let headers = req.headers().clone();
    drop(req);
    let who =
        super::longpoll::subscriber_identity(&ctx, &conn, &headers, poll.ticket.as_deref()).await?;
    if !who.meets(&ctx.cfg) {
        return Err(identity::unauthorized(
            "this listener requires an access token: send `Authorization: Bearer <token>`",
        ));
    }
    // Every channel must be readable before the stream starts (the answer is still an error).
    for (c, _) in &poll.channels {
        crate::ops::admit_read(&ctx, &who, "subscribe", c, crate::ops::ReadVia::Subscriber)?;
        // Not found is an error too; in cluster mode this opens the node's mirror of it.
        crate::ops::prepare_subscribe(&ctx, c, tslm_protocol::Start::New).await?;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(crate::sse::QUEUE);
    let task_ctx = Arc::clone(&ctx);
    // The connection's slot lives as long as the stream; so does its count, which sizes the
    // shutdown's close schedule (`drain`).
    let gauge = ctx.stats.stream();
    ctx.tracker.spawn(async move {
        let _slot = conn;
        let _gauge = gauge;
        crate::sse::run(task_ctx, who, poll, resume, tx).await;
    });
    Ok(Body::from_stream(futures_util::stream::poll_fn(
        move |cx| rx.poll_recv(cx).map(|c| c.map(Ok::<_, Infallible>)),
    )))
}
