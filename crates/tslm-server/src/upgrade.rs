//! The WebSocket handshake (RFC 6455 §4.2) on top of hyper's upgrade mechanism.
//!
//! Written here rather than through `axum::extract::ws` because that extractor spawns the session
//! on a task of its own, out of reach of our shutdown tracking, and hides tungstenite's error kinds
//! (needed to close with 1009); the handshake itself is a few header checks and
//! `tungstenite::handshake::derive_accept_key`.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tslm_protocol::{Dialect, ErrorCode, ProtoError, SUBPROTOCOL_V1};

use crate::config::ListenerConfig;
use crate::context::{ConnSlot, ListenerCtx};
use crate::errors::error_response;
use crate::identity::{self, Identity};

/// Whether `name` lists `token` (comma-separated, case-insensitive), as `Connection: upgrade`.
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Whether the request asks for a WebSocket upgrade.
pub(crate) fn is_upgrade_request(headers: &HeaderMap) -> bool {
    header_has_token(headers, header::CONNECTION, "upgrade")
        && header_has_token(headers, header::UPGRADE, "websocket")
}

/// The subprotocols the client offered, in its order.
fn offered_protocols(headers: &HeaderMap) -> Vec<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn token_matches(cfg: &ListenerConfig, presented: &str) -> bool {
    // Compare against every configured token, in constant time per comparison, without an
    // early exit, so timing tells nothing about which token or prefix matched. An entry
    // `sha256:<hex>` is compared by hash, so the config need not hold the token itself.
    let hashed = tslm_auth::token::hash_token(presented);
    let mut ok = subtle::Choice::from(0);
    for t in &cfg.auth_tokens {
        ok |= match crate::auth_config::parse_token_hash(t) {
            Some(h) => h.ct_eq(&hashed),
            None => t.as_bytes().ct_eq(presented.as_bytes()),
        };
    }
    bool::from(ok)
}

/// Whether the request carries a valid token, when the listener requires one: an
/// `Authorization: Bearer` header or, for WebSocket clients that cannot set headers (browsers),
/// one entry of `Sec-WebSocket-Protocol` (the original TSLM's documented way).
pub(crate) fn authorized(
    cfg: &ListenerConfig,
    headers: &HeaderMap,
    allow_subprotocol: bool,
) -> bool {
    if cfg.auth_tokens.is_empty() {
        return true;
    }
    // The one parse of `Authorization: Bearer` (listener tokens and identities alike).
    if identity::bearer(headers).is_some_and(|t| token_matches(cfg, t)) {
        return true;
    }
    allow_subprotocol && token_subprotocol(cfg, headers).is_some()
}

/// The offered subprotocol entry that is a valid token, if any.
fn token_subprotocol<'h>(cfg: &ListenerConfig, headers: &'h HeaderMap) -> Option<&'h str> {
    if cfg.auth_tokens.is_empty() {
        return None;
    }
    offered_protocols(headers)
        .into_iter()
        .find(|p| token_matches(cfg, p))
}

/// What the handshake proves: a client certificate or an `Authorization: Bearer` token (a
/// publisher's token, or a subscriber's access token). A token that is presented must be
/// valid: the handshake is refused (401) otherwise. On listeners with `auth_tokens` the header
/// carries the listener's shared token instead, and identities come with the `auth` op.
///
/// With a publisher identity comes its credential for the audit log (when there is one).
pub(crate) async fn initial_identity(
    ctx: &ListenerCtx,
    conn: &ConnSlot,
    headers: &HeaderMap,
) -> Result<(Identity, Option<Arc<str>>), ProtoError> {
    let on = ctx.audit.is_on();
    if let Some(i) = identity::publisher_by_certificate(&ctx.publishers, &conn.peer_cert_names)? {
        let credential = on
            .then(|| {
                let p = &ctx.publishers[i];
                conn.peer_cert_names
                    .iter()
                    .find(|n| p.certificates.contains(n))
                    .map(|n| crate::audit::certificate_credential(n))
            })
            .flatten();
        return Ok((Identity::Publisher(i), credential));
    }
    if !ctx.cfg.auth_tokens.is_empty() {
        return Ok((Identity::Anonymous, None));
    }
    let Some(token) = identity::bearer(headers) else {
        return Ok((Identity::Anonymous, None));
    };
    if let Some(i) = identity::publisher_by_token(&ctx.publishers, token) {
        let credential = on.then(|| crate::audit::token_credential(token));
        return Ok((Identity::Publisher(i), credential));
    }
    if let Some(v) = ctx.verifier.as_ref().filter(|_| !ctx.cfg.publisher_auth) {
        let grant = v
            .verify(token)
            .await
            .map_err(|e| identity::token_refused(&e))?;
        return Ok((
            Identity::Subscriber(Arc::new(identity::SubscriberGrant::from_grant(
                grant,
                &ctx.issuers,
            ))),
            None,
        ));
    }
    if ctx.cfg.publisher_auth {
        return Err(identity::unauthorized("token refused"));
    }
    // Nothing here validates tokens: the header is not for us.
    Ok((Identity::Anonymous, None))
}

/// The audit record of an authentication by headers ([`initial_identity`]): accepted for a
/// publisher, refused for any credential refused. `transport` and `via` say where: a WebSocket
/// handshake, or an HTTP request of a subscriber's route (`/v1/poll`, `/v1/events`, history,
/// reply), which authenticates the same way.
pub(crate) fn audit_login(
    ctx: &ListenerCtx,
    conn: &ConnSlot,
    headers: &HeaderMap,
    result: &Result<(Identity, Option<Arc<str>>), ProtoError>,
    (transport, via): (crate::audit::Transport, crate::audit::Via),
) {
    if !ctx.audit.is_on() {
        return;
    }
    let mut actor = crate::audit::Actor::new(transport, Some(conn.peer));
    match result {
        Ok((who @ Identity::Publisher(_), credential)) => {
            actor.credential = credential.clone();
            ctx.audit.auth(
                crate::audit::Outcome::Accepted,
                via,
                &actor,
                who,
                None,
                &ctx.publishers,
                None,
            );
        }
        Ok(_) => {}
        Err(e) => {
            actor.credential = match identity::bearer(headers) {
                Some(t) if ctx.cfg.auth_tokens.is_empty() => {
                    Some(crate::audit::token_credential(t))
                }
                _ => Some(crate::audit::certificate_credential(
                    &conn.peer_cert_names.join(","),
                )),
            };
            ctx.audit.auth(
                crate::audit::Outcome::Refused,
                via,
                &actor,
                &Identity::Anonymous,
                None,
                &ctx.publishers,
                Some(&e.message),
            );
        }
    }
}

fn bad(message: &'static str) -> Response {
    error_response(&ProtoError::bad_request(message))
}

/// Answers a WebSocket handshake: validates it, starts the session task (tracked for shutdown)
/// and returns the 101 response. The session owns nothing until the upgrade completes, so a
/// handshake that is abandoned leaves nothing behind.
pub(crate) async fn websocket(ctx: Arc<ListenerCtx>, mut req: Request) -> Response {
    if req.method() != Method::GET {
        return bad("a WebSocket handshake must use GET");
    }
    if req.version() != Version::HTTP_11 {
        return bad("a WebSocket handshake must use HTTP/1.1");
    }
    let headers = req.headers();
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        let mut resp = error_response(&ProtoError::new(
            ErrorCode::UpgradeRequired,
            "unsupported WebSocket version: this server speaks version 13",
        ));
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return resp;
    }
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| k.len() == 24)
        .map(|k| k.as_bytes().to_vec())
    else {
        return bad("missing or malformed Sec-WebSocket-Key");
    };
    if !authorized(&ctx.cfg, headers, true) {
        return error_response(&ProtoError::new(
            ErrorCode::Unauthorized,
            "this listener requires a token: send `Authorization: Bearer <token>` or offer it as a WebSocket subprotocol",
        ));
    }
    // `Origin` and `Host` were checked before routing (`cross_site`), as for every request.
    let token = token_subprotocol(&ctx.cfg, headers).map(str::to_owned);
    let dialect = if offered_protocols(headers).contains(&SUBPROTOCOL_V1) {
        Dialect::V1
    } else {
        Dialect::Legacy
    };
    let Some(conn) = req.extensions().get::<Arc<ConnSlot>>().cloned() else {
        return error_response(&ProtoError::new(ErrorCode::Internal, "internal error"));
    };
    let result = Box::pin(initial_identity(&ctx, &conn, req.headers())).await;
    audit_login(
        &ctx,
        &conn,
        req.headers(),
        &result,
        (
            crate::audit::Transport::Websocket,
            crate::audit::Via::Handshake,
        ),
    );
    let (identity, credential) = match result {
        Ok(i) => i,
        Err(e) => {
            // 401s are counted and logged (at a bounded rate) by `http::auth_budget`.
            if e.code != ErrorCode::Unauthorized {
                tracing::info!(listener = %ctx.cfg.name, peer = %conn.peer, reason = %e.message, "authentication refused at the handshake");
            }
            return error_response(&e);
        }
    };
    match &identity {
        Identity::Publisher(i) => {
            tracing::info!(listener = %ctx.cfg.name, peer = %conn.peer, publisher = %ctx.publishers[*i].name, "publisher authenticated at the handshake");
        }
        Identity::Subscriber(g) => {
            tracing::debug!(listener = %ctx.cfg.name, peer = %conn.peer, issuer = %g.issuer, subject = g.subject.as_deref().unwrap_or(""), "subscriber authenticated at the handshake");
        }
        Identity::Anonymous => {}
    }
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return bad("this connection cannot be upgraded");
    };
    let session_ctx = Arc::clone(&ctx);
    ctx.tracker.spawn(crate::session::run(
        session_ctx,
        conn,
        on_upgrade,
        dialect,
        identity,
        credential,
    ));

    let mut resp = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
        ],
    )
        .into_response();
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(&key)) {
        resp.headers_mut()
            .insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    // Echo one offered subprotocol, as browsers require when they offered any: `tslm.v1` when
    // offered; otherwise the token entry a browser used to authenticate (the original's way),
    // which only goes back to the client that sent it.
    let echo = if dialect == Dialect::V1 {
        Some(HeaderValue::from_static(SUBPROTOCOL_V1))
    } else {
        token.and_then(|t| HeaderValue::from_str(&t).ok())
    };
    if let Some(p) = echo {
        resp.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    resp
}
