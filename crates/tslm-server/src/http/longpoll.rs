//! The long-poll route (`GET /v1/poll`, and its CORS preflight): admission and identity as for
//! every route, then [`crate::poll::run`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use tslm_protocol::{ErrorCode, ProtoError};

use super::{Ctx, admit, slot};
use crate::context::ListenerCtx;
use crate::errors::error_response;
use crate::identity;

/// `GET /v1/poll` on listeners that may subscribe.
pub(super) async fn poll(State(ctx): Ctx, req: Request) -> Response {
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = match answer(ctx, req).await {
        Ok(body) => {
            let mut r = Response::new(body);
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => error_response(&e),
    };
    cors(resp.headers_mut(), origin);
    resp
}

async fn answer(ctx: Arc<ListenerCtx>, req: Request) -> Result<Body, ProtoError> {
    admit(
        &ctx,
        &req,
        ctx.cfg.permissions.subscribe,
        "long-polling",
        None,
    )?;
    let poll = crate::poll::Poll::parse(req.uri().query().unwrap_or(""), false)?;
    let conn = slot(req.extensions())
        .ok_or_else(|| ProtoError::new(ErrorCode::Internal, "internal error"))?;
    let headers = req.headers().clone();
    drop(req);
    let who = subscriber_identity(&ctx, &conn, &headers, poll.ticket.as_deref()).await?;
    if !who.meets(&ctx.cfg) {
        return Err(identity::unauthorized(
            "this listener requires an access token: send `Authorization: Bearer <token>`",
        ));
    }
    let answer = crate::poll::run(&ctx, &who, &poll).await?;
    // One buffer with its length (proxies and clients handle it best): the messages are copied
    // into it as they were encoded at publish, never encoded again.
    let len = answer.chunks.iter().map(bytes::Bytes::len).sum();
    let mut body = Vec::with_capacity(len);
    for c in &answer.chunks {
        body.extend_from_slice(c);
    }
    Ok(Body::from(body))
}

/// Who reads: the grant of a `ticket` (`POST /v1/tickets`), or the identity the headers prove,
/// as for a WebSocket handshake. A ticket and an access token together are refused (400).
pub(super) async fn subscriber_identity(
    ctx: &ListenerCtx,
    conn: &crate::context::ConnSlot,
    headers: &HeaderMap,
    ticket: Option<&str>,
) -> Result<identity::Identity, ProtoError> {
    match ticket {
        Some(t) => {
            if ctx.cfg.auth_tokens.is_empty() && headers.contains_key(header::AUTHORIZATION) {
                return Err(ProtoError::bad_request(
                    "send either a ticket or an `Authorization` header, not both",
                ));
            }
            let grant = crate::ticket::redeem(&ctx.cfg.name, t, std::time::SystemTime::now())?;
            Ok(identity::Identity::Subscriber(Arc::new(grant)))
        }
        None => Ok(crate::upgrade::initial_identity(ctx, conn, headers)
            .await?
            .0),
    }
}

/// `OPTIONS /v1/poll`: the CORS preflight of a browser's poll with an `Authorization` header
/// (the origin was checked before routing, as for every request).
pub(super) async fn preflight(req: Request) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    cors(h, req.headers().get(header::ORIGIN).cloned());
    resp
}

/// Lets the page of an allowed origin read the answer.
pub(super) fn cors(h: &mut HeaderMap, origin: Option<HeaderValue>) {
    if let Some(o) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}
