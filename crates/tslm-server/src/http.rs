//! The HTTP side of a listener: the publishing API (`/v1/channels/...`) and the fallback that
//! hands WebSocket handshakes on any other path to [`crate::upgrade`].

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use bytes::Bytes;
use tslm_protocol::{ChannelName, ErrorCode, Payload, ProtoError, v1};

use crate::listener::{ConnSlot, ListenerCtx};

use crate::session;

type Ctx = State<Arc<ListenerCtx>>;

pub(crate) fn router(ctx: Arc<ListenerCtx>) -> Router {
    Router::new()
        .route("/v1/channels/{name}", put(create_channel))
        .route("/v1/channels/{name}/messages", post(publish))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(fallback)
        .with_state(ctx)
}

/// `{"ok":false,"error":{"code":…,"message":…}}` with the code's HTTP status.
pub(crate) fn error_response(e: &ProtoError) -> Response {
    let mut body = String::from("{\"ok\":false,\"error\":");
    v1::push_error_object(&mut body, e);
    body.push('}');
    let status =
        StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(status, body);
    if e.code == ErrorCode::Unauthorized {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn slot(req_ext: &axum::http::Extensions) -> Option<Arc<ConnSlot>> {
    req_ext.get::<Arc<ConnSlot>>().cloned()
}

/// Checks credentials, rate and channel name shared by both API routes.
fn admit(
    ctx: &ListenerCtx,
    req: &Request,
    allowed: bool,
    what: &str,
    name: Result<Path<String>, PathRejection>,
) -> Result<ChannelName, ProtoError> {
    let conn = slot(req.extensions());
    if !crate::upgrade::authorized(&ctx.cfg, req.headers(), false) {
        return Err(ProtoError::new(
            ErrorCode::Unauthorized,
            "this listener requires a token: send `Authorization: Bearer <token>`",
        ));
    }
    if !allowed {
        return Err(ProtoError::new(
            ErrorCode::Forbidden,
            format!("this listener does not allow {what}"),
        ));
    }
    if conn.is_some_and(|c| !c.allow_command()) {
        return Err(session::rate_limited(&ctx.cfg));
    }
    let Path(name) = name.map_err(|_| ProtoError::bad_request("bad channel name in path"))?;
    ChannelName::new(&name).map_err(|e| ProtoError::bad_request(e.to_string()))
}

async fn create_channel(
    State(ctx): Ctx,
    name: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let allowed = ctx.cfg.permissions.create;
    let channel = match admit(&ctx, &req, allowed, "create", name) {
        Ok(c) => c,
        Err(e) => return error_response(&e),
    };
    let created = ctx.hub.create(&channel);
    if created {
        tracing::info!(listener = %ctx.cfg.name, channel = %channel, via = "http", "channel created");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json_response(status, v1::encode_http_ok(v1::Success::Created(created)))
}

async fn publish(
    State(ctx): Ctx,
    name: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let allowed = ctx.cfg.permissions.publish;
    let channel = match admit(&ctx, &req, allowed, "publish", name) {
        Ok(c) => c,
        Err(e) => return error_response(&e),
    };
    match read_payload(&ctx, req).await {
        Err(e) => error_response(&e),
        Ok(data) => match session::publish(&ctx, &channel, &data) {
            Ok(offset) => json_response(
                StatusCode::OK,
                v1::encode_http_ok(v1::Success::Published(offset)),
            ),
            Err(e) => error_response(&e),
        },
    }
}

async fn read_payload(ctx: &ListenerCtx, req: Request) -> Result<Payload, ProtoError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ProtoError::bad_request(
                "the body must be JSON: send `Content-Type: application/json`",
            ));
        }
    }
    let limit = ctx.cfg.max_message_bytes;
    let too_large = || {
        ProtoError::new(
            ErrorCode::TooLarge,
            format!("the body is larger than this listener's limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body: Body = req.into_body();
    let read = tokio::time::timeout(ctx.cfg.handshake_timeout, axum::body::to_bytes(body, limit));
    let bytes: Bytes = match read.await {
        Err(_) => return Err(ProtoError::bad_request("the body did not arrive in time")),
        Ok(Err(e)) => {
            let is_limit = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            return Err(if is_limit {
                too_large()
            } else {
                ProtoError::bad_request("the body could not be read")
            });
        }
        Ok(Ok(b)) => b,
    };
    Payload::from_json_bytes(bytes)
        .map_err(|_| ProtoError::bad_request("the body is not one valid JSON value"))
}

async fn method_not_allowed(State(ctx): Ctx, req: Request) -> Response {
    // WebSocket clients may connect on any path, these two included.
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    error_response(&ProtoError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed: PUT /v1/channels/{name} creates, POST /v1/channels/{name}/messages publishes",
    ))
}

async fn fallback(State(ctx): Ctx, req: Request) -> Response {
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    if req.uri().path().starts_with("/v1/") {
        return error_response(&ProtoError::new(ErrorCode::NotFound, "no such endpoint"));
    }
    let mut resp = error_response(&ProtoError::new(
        ErrorCode::UpgradeRequired,
        "this path serves WebSocket connections: send a WebSocket handshake",
    ));
    // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    resp
}
