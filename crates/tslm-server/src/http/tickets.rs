//! `POST /v1/tickets`: a short-lived ticket for the browser's `EventSource`, in exchange for an
//! access token in the `Authorization` header ([`crate::ticket`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use tslm_protocol::{ErrorCode, ProtoError};

use super::longpoll::cors;
use super::{Ctx, admit, slot};
use crate::context::ListenerCtx;
use crate::errors::error_response;
use crate::identity::{Identity, unauthorized};

/// `POST /v1/tickets` on listeners that may subscribe.
pub(super) async fn issue(State(ctx): Ctx, req: Request) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = match answer(ctx, req).await {
        Ok(json) => {
            let mut r = Response::new(Body::from(json));
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

async fn answer(ctx: Arc<ListenerCtx>, req: Request) -> Result<String, ProtoError> {
    admit(&ctx, &req, ctx.cfg.permissions.subscribe, "tickets", None)?;
    let conn = slot(req.extensions())
        .ok_or_else(|| ProtoError::new(ErrorCode::Internal, "internal error"))?;
    let headers = req.headers().clone();
    drop(req);
    let (who, _) = crate::upgrade::initial_identity(&ctx, &conn, &headers).await?;
    let Identity::Subscriber(grant) = who else {
        return Err(unauthorized(
            "a ticket is issued for an access token: send `Authorization: Bearer <token>`",
        ));
    };
    let (ticket, expires_in) =
        crate::ticket::issue(&ctx.cfg.name, &grant, std::time::SystemTime::now());
    Ok(serde_json::json!({"ok": true, "ticket": ticket, "expires_in": expires_in}).to_string())
}

/// `OPTIONS /v1/tickets`: the CORS preflight of a `POST` with an `Authorization` header.
pub(super) async fn preflight(req: Request) -> Response {
    super::longpoll::preflight_for("POST", &req)
}
