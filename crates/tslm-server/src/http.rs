//! The HTTP side of a listener: the publishing API (`/v1/channels/...`) and the fallback that
//! hands WebSocket handshakes on any other path to [`crate::upgrade`].

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{any, get, put};
use bytes::Bytes;
use serde::Deserialize;
use tslm_protocol::{
    ChannelName, ChannelOptions, Epoch, ErrorCode, Offset, Payload, ProtoError, Start, v1,
};

use crate::audit::{Actor, Outcome, Transport, Via};
use crate::context::{ConnSlot, ListenerCtx};
use crate::errors::{
    ADDRESS_OVER_BUDGET, AuthRefusal, error_response, json_response, over_budget, rate_limited,
};
use crate::health::{HEALTHZ, READYZ};
use crate::identity::{self, Identity};
use crate::iplimit::Overspent;
use crate::ops::{self, ReadVia};
use crate::stats::AuthRefusalKind;

mod longpoll;
mod sse;
mod subscriber;
mod tickets;

type Ctx = State<Arc<ListenerCtx>>;

pub(crate) fn router(ctx: Arc<ListenerCtx>) -> Router {
    Router::new()
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .route("/v1/channels", get(list_channels))
        .route(
            "/v1/channels/{name}",
            put(create_channel).delete(delete_channel),
        )
        .route(
            "/v1/channels/{name}/messages",
            get(read_history).post(publish),
        )
        // The subscriber's calls beside the one-way transports (listeners with `Subscribe`).
        .route(
            "/v1/channels/{name}/history",
            get(subscriber::history).options(subscriber::history_preflight),
        )
        .route(
            "/v1/channels/{name}/messages/{offset}/reply",
            axum::routing::post(subscriber::reply).options(subscriber::reply_preflight),
        )
        // The operator's routes (404 on listeners without the `Admin` permission).
        .route("/metrics", any(crate::admin::metrics))
        .route("/admin", any(crate::admin::page))
        .route("/v1/poll", get(longpoll::poll).options(longpoll::preflight))
        .route("/v1/events", get(sse::events).options(longpoll::preflight))
        .route(
            "/v1/tickets",
            axum::routing::post(tickets::issue).options(tickets::preflight),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&ctx),
            auth_budget,
        ))
        .with_state(ctx)
}

/// The budget of failed authentications, for every request of the listener (API calls and
/// WebSocket handshakes alike): each 401 answer counts against the connection's budget (as a
/// WebSocket session's, `max_rejected_commands_per_second` within one second) and its source
/// address's (`failed_auths_per_ip_per_minute`). Over either, the answer is 429 `rate_limited`
/// with `Retry-After` and `Connection: close`; while the address's budget is spent, every
/// request from it gets that answer before its credentials are looked at. Failures are logged
/// at most once per `AUTH_LOG_INTERVAL` per listener, with a count.
async fn auth_budget(State(ctx): Ctx, req: Request, next: axum::middleware::Next) -> Response {
    let Some(conn) = slot(req.extensions()) else {
        return next.run(req).await;
    };
    if let Some(wait) = conn.ip.auth_blocked() {
        tracing::debug!(listener = %ctx.cfg.name, peer = %conn.peer, "address over its failed-authentication budget: answering 429");
        ctx.stats.count_auth_refusal(AuthRefusalKind::OverBudget);
        return over_budget(wait, ADDRESS_OVER_BUDGET);
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let handshake = crate::upgrade::is_upgrade_request(req.headers());
    let resp = next.run(req).await;
    if resp.status() != StatusCode::UNAUTHORIZED {
        return resp;
    }
    ctx.stats.count_auth_refusal(if handshake {
        AuthRefusalKind::Handshake
    } else {
        AuthRefusalKind::Http
    });
    let verdict = conn.ip.auth_failed();
    if let Some(failures) = conn.ip.limits().log_failure() {
        let reason = resp
            .extensions()
            .get::<AuthRefusal>()
            .map_or("", |r| r.0.as_str());
        tracing::info!(listener = %ctx.cfg.name, peer = %conn.peer, %method, path, reason, failures, "request authentication refused (one line per 10 s at most: `failures` counts the refusals since the last line)");
    }
    match verdict {
        Ok(()) => resp,
        Err(Overspent::Connection) => {
            ctx.stats.count_auth_refusal(AuthRefusalKind::OverBudget);
            over_budget(
                std::time::Duration::from_secs(1),
                "too many failed authentications on this connection",
            )
        }
        Err(Overspent::Address(wait)) => {
            ctx.stats.count_auth_refusal(AuthRefusalKind::OverBudget);
            over_budget(wait, ADDRESS_OVER_BUDGET)
        }
    }
}

/// A probe's answer: JSON, never cached.
fn probe_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = json_response(status, body.to_string());
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /healthz`: 200 `{"live":true}` while the runtime is responsive (its watchdog ticked
/// within 10 s), else 503 `{"live":false,"reason":"stalled"}`. Checks no dependency. A WebSocket
/// handshake on the path is served as on any other path.
async fn healthz(State(ctx): Ctx, req: Request) -> Response {
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    if ctx.health.live() {
        probe_response(StatusCode::OK, serde_json::json!({ "live": true }))
    } else {
        probe_response(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "live": false, "reason": "stalled" }),
        )
    }
}

/// `GET /readyz`: 200 `{"ready":true}`, or 503 `{"ready":false,"reason":R}` with R a
/// [`crate::health::NotReady`] name (`starting`, `draining`).
async fn readyz(State(ctx): Ctx, req: Request) -> Response {
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    match ctx.health.readiness() {
        Ok(()) => probe_response(StatusCode::OK, serde_json::json!({ "ready": true })),
        Err(why) => probe_response(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ready": false, "reason": why.as_str() }),
        ),
    }
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
    name: Option<Result<Path<String>, PathRejection>>,
) -> Result<Option<ChannelName>, ProtoError> {
    let conn = slot(req.extensions());
    if !crate::upgrade::authorized(&ctx.cfg, req.headers(), false) {
        return Err(ProtoError::new(
            ErrorCode::Unauthorized,
            "this listener requires a token: send `Authorization: Bearer <token>`",
        ));
    }
    if !allowed {
        return Err(ops::forbidden_listener(what));
    }
    if conn.is_some_and(|c| !c.allow_command()) {
        return Err(rate_limited(&ctx.cfg));
    }
    let Some(name) = name else {
        return Ok(None);
    };
    let Path(name) = name.map_err(|_| ProtoError::bad_request("bad channel name in path"))?;
    ChannelName::new(&name)
        .map(Some)
        .map_err(|e| ProtoError::bad_request(e.to_string()))
}

/// `admit` for the routes that name a channel.
fn admit_channel(
    ctx: &ListenerCtx,
    req: &Request,
    allowed: bool,
    what: &str,
    name: Result<Path<String>, PathRejection>,
) -> Result<ChannelName, ProtoError> {
    admit(ctx, req, allowed, what, Some(name))?
        .ok_or_else(|| ProtoError::bad_request("missing channel name"))
}

/// Who makes an HTTP request: a client certificate's publisher, a signed request
/// (`TSLM-Publisher`, `TSLM-Timestamp`, `TSLM-Signature` over method, path, timestamp and the
/// body's hash, within a short window and never twice), or a publisher's bearer token. On
/// listeners with `auth_tokens` the bearer header carries the listener's shared token instead.
///
/// Returns the identity and, for the audit log, who acts (transport, peer, credential); every
/// publisher authentication, accepted or refused, is recorded there.
fn http_identity(
    ctx: &ListenerCtx,
    conn: Option<&ConnSlot>,
    head: &RequestHead,
    body: &[u8],
) -> Result<(Identity, Actor), ProtoError> {
    let who = identify_request(ctx, conn, head, body);
    let mut actor = Actor::new(Transport::Http, conn.map(|c| c.peer));
    // Refusals are logged by `auth_budget`, at a bounded rate.
    match &who {
        Ok((w @ Identity::Publisher(i), credential)) => {
            let peer = conn.map(|c| c.peer.to_string()).unwrap_or_default();
            tracing::debug!(listener = %ctx.cfg.name, peer, publisher = %ctx.publishers[*i].name, method = %head.method, path = %head.path_and_query, "publisher request");
            actor.credential = credential.clone();
            ctx.audit.auth(
                Outcome::Accepted,
                Via::Request,
                &actor,
                w,
                None,
                &ctx.publishers,
                None,
            );
        }
        Err(e) if e.code == ErrorCode::Unauthorized && ctx.audit.is_on() => {
            let get = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok());
            let claimed = get(tslm_auth::http_sig::PUBLISHER_HEADER);
            let credential = match (claimed, identity::bearer(&head.headers)) {
                (Some(_), _) => Arc::from("signature"),
                (None, Some(t)) => crate::audit::token_credential(t),
                (None, None) => crate::audit::certificate_credential(
                    &conn
                        .map(|c| c.peer_cert_names.join(","))
                        .unwrap_or_default(),
                ),
            };
            let refused = Actor {
                credential: Some(credential),
                ..actor.clone()
            };
            ctx.audit.auth(
                Outcome::Refused,
                Via::Request,
                &refused,
                &Identity::Anonymous,
                claimed,
                &ctx.publishers,
                Some(&e.message),
            );
        }
        _ => {}
    }
    who.map(|(w, _)| (w, actor))
}

fn identify_request(
    ctx: &ListenerCtx,
    conn: Option<&ConnSlot>,
    head: &RequestHead,
    body: &[u8],
) -> Result<(Identity, Option<Arc<str>>), ProtoError> {
    use tslm_auth::http_sig;
    let on = ctx.audit.is_on();
    if let Some(c) = conn
        && let Some(i) = identity::publisher_by_certificate(&ctx.publishers, &c.peer_cert_names)?
    {
        let credential = on
            .then(|| {
                c.peer_cert_names
                    .iter()
                    .find(|n| ctx.publishers[i].certificates.contains(n))
                    .map(|n| crate::audit::certificate_credential(n))
            })
            .flatten();
        return Ok((Identity::Publisher(i), credential));
    }
    let get = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(name) = get(http_sig::PUBLISHER_HEADER) {
        let refused = || identity::unauthorized("request signature refused");
        let timestamp: i64 = get(http_sig::TIMESTAMP_HEADER)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| {
                identity::unauthorized(format!(
                    "a signed request needs `{}` (Unix seconds) and `{}`",
                    http_sig::TIMESTAMP_HEADER,
                    http_sig::SIGNATURE_HEADER
                ))
            })?;
        let signature = get(http_sig::SIGNATURE_HEADER)
            .and_then(http_sig::parse_signature)
            .ok_or_else(refused)?;
        let (i, p) = ctx
            .publishers
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
            .ok_or_else(refused)?;
        let message =
            http_sig::canonical_request(name, &head.method, &head.path_and_query, timestamp, body);
        let Some(k) = p
            .keys
            .iter()
            .position(|k| tslm_auth::keys::verify(k, &message, &signature))
        else {
            return Err(refused());
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let checked = ctx
            .replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(now, i, timestamp, &signature);
        return match checked {
            Ok(()) => Ok((
                Identity::Publisher(i),
                on.then(|| crate::audit::key_credential(&p.keys[k])),
            )),
            Err(http_sig::SigError::Busy) => Err(ProtoError::new(
                ErrorCode::Unavailable,
                "too many signed requests at once; try again",
            )),
            // Only this publisher is over its share of the replay memory.
            Err(http_sig::SigError::PublisherBusy) => Err(ProtoError::new(
                ErrorCode::RateLimited,
                format!(
                    "publisher `{name}` has used its share of the memory of signed requests; retry shortly"
                ),
            )),
            Err(e) => Err(identity::unauthorized(format!(
                "request signature refused: {e}"
            ))),
        };
    }
    if ctx.cfg.auth_tokens.is_empty()
        && let Some(token) = identity::bearer(&head.headers)
    {
        if let Some(i) = identity::publisher_by_token(&ctx.publishers, token) {
            let credential = on.then(|| crate::audit::token_credential(token));
            return Ok((Identity::Publisher(i), credential));
        }
        if ctx.cfg.publisher_auth {
            return Err(identity::unauthorized("token refused"));
        }
    }
    Ok((Identity::Anonymous, None))
}

/// What identifying a request needs from it, kept before its body is read.
struct RequestHead {
    method: String,
    path_and_query: String,
    headers: axum::http::HeaderMap,
}

impl RequestHead {
    fn of(req: &Request) -> Self {
        Self {
            method: req.method().as_str().to_owned(),
            path_and_query: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned()),
            headers: req.headers().clone(),
        }
    }
}

fn ok_response(status: StatusCode, s: v1::Success<'_>) -> Response {
    json_response(status, v1::encode_http_ok(s))
}

async fn create_channel(
    State(ctx): Ctx,
    name: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let allowed = ctx.cfg.permissions.create;
    let result = async {
        let channel = admit_channel(&ctx, &req, allowed, "create", name)?;
        let (head, conn) = (RequestHead::of(&req), slot(req.extensions()));
        let body = read_body(&ctx, req).await?;
        let (who, actor) = http_identity(&ctx, conn.as_deref(), &head, &body)?;
        let options = if body.iter().all(u8::is_ascii_whitespace) {
            ChannelOptions::default()
        } else {
            v1::decode_options(&body)?
        };
        ops::create(&ctx, &who, &actor, &channel, &options, "http").await
    };
    match result.await {
        Err(e) => error_response(&e),
        Ok(c) => {
            let status = if c.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            ok_response(
                status,
                v1::Success::Created {
                    created: c.created,
                    epoch: c.epoch,
                },
            )
        }
    }
}

async fn delete_channel(
    State(ctx): Ctx,
    name: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let allowed = ctx.cfg.permissions.create;
    let result = async move {
        let channel = admit_channel(&ctx, &req, allowed, "delete", name)?;
        let (who, actor) = http_identity(
            &ctx,
            slot(req.extensions()).as_deref(),
            &RequestHead::of(&req),
            b"",
        )?;
        ops::delete(&ctx, &who, &actor, &channel).await
    };
    match result.await {
        Err(e) => error_response(&e),
        Ok(()) => ok_response(StatusCode::OK, v1::Success::Deleted),
    }
}

/// The longest `Idempotency-Key` (the HTTP form of `msg_id`).
const MAX_MSG_ID_BYTES: usize = 128;

async fn publish(
    State(ctx): Ctx,
    name: Result<Path<String>, PathRejection>,
    req: Request,
) -> Response {
    let allowed = ctx.cfg.permissions.publish;
    let result = async {
        let channel = admit_channel(&ctx, &req, allowed, "publish", name)?;
        let msg_id = match req.headers().get("idempotency-key") {
            None => None,
            Some(v) => {
                // Printable ASCII and spaces only (`to_str` would also let tabs through); HTTP
                // itself strips spaces around a header value.
                let v = std::str::from_utf8(v.as_bytes())
                    .ok()
                    .filter(|v| v.bytes().all(|b| (0x20..=0x7e).contains(&b)))
                    .ok_or_else(|| {
                        ProtoError::bad_request("`Idempotency-Key` must be visible ASCII")
                    })?;
                if v.is_empty() || v.len() > MAX_MSG_ID_BYTES {
                    return Err(ProtoError::bad_request(format!(
                        "`Idempotency-Key` must be 1 to {MAX_MSG_ID_BYTES} bytes"
                    )));
                }
                Some(v.to_owned())
            }
        };
        let (head, conn) = (RequestHead::of(&req), slot(req.extensions()));
        let body = read_body(&ctx, req).await?;
        let (who, actor) = http_identity(&ctx, conn.as_deref(), &head, &body)?;
        let data = payload_of(body)?;
        ops::publish(&ctx, &who, &actor, &channel, &data, msg_id.as_deref(), None).await
    };
    match result.await {
        Ok(p) => ok_response(StatusCode::OK, ops::published(p)),
        Err(e) => {
            ctx.stats.count_publish_refusal(e.code);
            error_response(&e)
        }
    }
}

/// Query of `GET /v1/channels/{name}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    start: Option<String>,
    last: Option<u64>,
    epoch: Option<String>,
    offset: Option<u64>,
    limit: Option<usize>,
    /// Ignored: lets a signed request differ from an identical one in the same second.
    #[allow(dead_code)]
    nonce: Option<String>,
}

impl HistoryQuery {
    fn start(&self) -> Result<Start, ProtoError> {
        let forms = "give `start=oldest`, `start=new`, `last=N` (N >= 1), or `epoch=E&offset=N`";
        match (&self.start, self.last, &self.epoch, self.offset) {
            (None, None, None, None) => Ok(Start::Oldest),
            (Some(s), None, None, None) if s == "oldest" => Ok(Start::Oldest),
            (Some(s), None, None, None) if s == "new" => Ok(Start::New),
            (None, Some(n), None, None) if n >= 1 => Ok(Start::Last(n)),
            (None, None, Some(e), Some(o)) => {
                let epoch = Epoch::parse(e).ok_or_else(|| {
                    ProtoError::bad_request("`epoch` must be 16 hexadecimal digits")
                })?;
                Ok(Start::After {
                    epoch,
                    offset: Offset(o),
                })
            }
            _ => Err(ProtoError::bad_request(forms)),
        }
    }
}

fn query_error(_: QueryRejection) -> ProtoError {
    ProtoError::bad_request(
        "bad query: allowed parameters are start, last, epoch, offset, limit (history) or prefix, after, limit (channel list), with numbers where numbers are expected",
    )
}

/// The `limit` of a page of history messages or channels: 1 to [`ops::MAX_HISTORY`].
fn page_limit(limit: Option<usize>) -> Result<usize, ProtoError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if (1..=ops::MAX_HISTORY).contains(&limit) {
        Ok(limit)
    } else {
        Err(ProtoError::bad_request(format!(
            "`limit` must be 1 to {}",
            ops::MAX_HISTORY
        )))
    }
}

/// Default and largest page of history messages or channels over HTTP.
const DEFAULT_PAGE: usize = 100;

async fn read_history(
    State(ctx): Ctx,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
    req: Request,
) -> Response {
    // WebSocket clients may connect on any path, the API's GET routes included.
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    // Operators' side only: the listeners that may create channels.
    let allowed = ctx.cfg.permissions.create;
    let result = async move {
        let channel = admit_channel(&ctx, &req, allowed, "reading history", name)?;
        let Query(q) = query.map_err(query_error)?;
        let limit = page_limit(q.limit)?;
        let (who, _) = http_identity(
            &ctx,
            slot(req.extensions()).as_deref(),
            &RequestHead::of(&req),
            b"",
        )?;
        ops::history(&ctx, &who, &channel, q.start()?, limit, ReadVia::Operator).await
    };
    match result.await {
        Err(e) => error_response(&e),
        Ok(h) => ok_response(
            StatusCode::OK,
            v1::Success::History {
                sub: h.subscription,
                messages: &h.messages,
                more: h.more,
            },
        ),
    }
}

/// Query of `GET /v1/channels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    /// Ignored: lets a signed request differ from an identical one in the same second.
    #[allow(dead_code)]
    nonce: Option<String>,
}

async fn list_channels(
    State(ctx): Ctx,
    query: Result<Query<ListQuery>, QueryRejection>,
    req: Request,
) -> Response {
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    let allowed = ctx.cfg.permissions.create;
    let result = async move {
        admit(&ctx, &req, allowed, "listing channels", None)?;
        let Query(q) = query.map_err(query_error)?;
        let limit = page_limit(q.limit)?;
        let after = q
            .after
            .as_deref()
            .map(ChannelName::new)
            .transpose()
            .map_err(|e| ProtoError::bad_request(format!("`after`: {e}")))?;
        let (who, _) = http_identity(
            &ctx,
            slot(req.extensions()).as_deref(),
            &RequestHead::of(&req),
            b"",
        )?;
        ops::channels(&ctx, &who, q.prefix.as_deref(), after.as_ref(), limit).await
    };
    match result.await {
        Err(e) => error_response(&e),
        Ok((channels, more)) => ok_response(
            StatusCode::OK,
            v1::Success::Channels {
                channels: &channels,
                more,
            },
        ),
    }
}

fn payload_of(bytes: Bytes) -> Result<Payload, ProtoError> {
    Payload::from_json_bytes(bytes)
        .map_err(|_| ProtoError::bad_request("the body is not one valid JSON value"))
}

/// Reads a JSON request body within the listener's message size limit.
async fn read_body(ctx: &ListenerCtx, req: Request) -> Result<Bytes, ProtoError> {
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
    Ok(bytes)
}

async fn method_not_allowed(State(ctx): Ctx, req: Request) -> Response {
    // WebSocket clients may connect on any path, these two included.
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    if crate::health::is_probe(req.uri().path()) {
        return error_response(&ProtoError::new(
            ErrorCode::MethodNotAllowed,
            "method not allowed: /healthz and /readyz answer GET and HEAD",
        ));
    }
    error_response(&ProtoError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed: GET /v1/channels lists; PUT /v1/channels/{name} creates, DELETE deletes; POST /v1/channels/{name}/messages publishes, GET reads history; GET /v1/channels/{name}/history and POST /v1/channels/{name}/messages/{offset}/reply are a subscriber's",
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
