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
    within_subscription_limit(&ctx, &poll)?;
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
    // The shared bytes as they are (no copy), with their exact length (proxies and clients
    // handle a `Content-Length` best).
    Ok(Body::new(Chunks::new(answer.chunks)))
}

/// A body of shared chunks with an exact length.
struct Chunks {
    chunks: std::collections::VecDeque<bytes::Bytes>,
    left: u64,
}

impl Chunks {
    fn new(chunks: Vec<bytes::Bytes>) -> Self {
        let left = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            chunks: chunks.into(),
            left,
        }
    }
}

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(c) = &next {
            self.left = self.left.saturating_sub(c.len() as u64);
        }
        std::task::Poll::Ready(next.map(|c| Ok(http_body::Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

/// The per-connection bound of subscriptions applies to the channels of one poll or stream.
pub(super) fn within_subscription_limit(
    ctx: &ListenerCtx,
    poll: &crate::poll::Poll,
) -> Result<(), ProtoError> {
    let max = ctx.cfg.abuse.max_subscriptions_per_connection;
    if poll.channels.len() > max {
        return Err(ProtoError::new(
            ErrorCode::LimitExceeded,
            format!("this listener allows at most {max} channels per connection"),
        ));
    }
    Ok(())
}

/// Who reads: the grant of a `ticket` (`POST /v1/tickets`), or the identity the headers prove,
/// as for a WebSocket handshake (publisher logins and refusals written to the audit log). A
/// ticket and an access token together are refused (400).
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
            let grant = crate::ticket::redeem(
                &ctx.cfg.name,
                &ctx.issuers,
                t,
                std::time::SystemTime::now(),
            )?;
            Ok(identity::Identity::Subscriber(Arc::new(grant)))
        }
        None => {
            let result = crate::upgrade::initial_identity(ctx, conn, headers).await;
            // Publisher logins (and refused credentials) are audited as on every other route.
            crate::upgrade::audit_login(
                ctx,
                conn,
                headers,
                &result,
                (crate::audit::Transport::Http, crate::audit::Via::Request),
            );
            Ok(result?.0)
        }
    }
}

/// `OPTIONS /v1/poll` and `/v1/events`: the CORS preflight of a browser's `GET` with an
/// `Authorization` header (the origin was checked before routing, as for every request).
pub(super) async fn preflight(req: Request) -> Response {
    preflight_for("GET", &req)
}

/// A CORS preflight answer allowing `method` with an `Authorization` header.
pub(super) fn preflight_for(method: &'static str, req: &Request) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(method),
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
