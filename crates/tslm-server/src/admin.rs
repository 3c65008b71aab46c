//! The operator's routes, on listeners with the `Admin` permission: `GET /metrics` (the
//! Prometheus exposition, [`crate::metrics`]) and `GET /admin` (a server-rendered status page
//! that refreshes itself every 5 s; no script).
//!
//! On a listener without `Admin` both answer 404 `not_found`, as a path that does not exist
//! would on the API's side: a public listener does not reveal them. On an admin listener they
//! obey its `auth_tokens` (401 without one, counted against the failed-authentication budget
//! like the API's refusals) and its command rate (429), then accept `GET` and `HEAD` only (405).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tslm_protocol::{ChannelName, ErrorCode, ProtoError};

use crate::context::{ConnSlot, ListenerCtx};
use crate::errors::{error_response, rate_limited};

type Ctx = State<Arc<ListenerCtx>>;

/// Channels on one page of `/admin`.
pub(crate) const PAGE: usize = 50;

/// `GET /metrics`.
pub(crate) async fn metrics(State(ctx): Ctx, req: Request) -> Response {
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    if let Err(e) = admit(&ctx, &req) {
        return error_response(&e);
    }
    let body = crate::metrics::render(
        ctx.stats.snapshot(),
        ctx.hub.stats(),
        &crate::metrics::Sources {
            node: &ctx.node,
            publish_seconds: &ctx.stats.publish_seconds,
            verifier: ctx.verifier.as_ref(),
        },
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        body,
    )
        .into_response()
}

/// Query of `GET /admin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// Lists the channels after this name.
    after: Option<String>,
}

/// `GET /admin`.
pub(crate) async fn page(
    State(ctx): Ctx,
    query: Result<Query<PageQuery>, QueryRejection>,
    req: Request,
) -> Response {
    if crate::upgrade::is_upgrade_request(req.headers()) {
        return crate::upgrade::websocket(ctx, req).await;
    }
    let after = admit(&ctx, &req).and_then(|()| {
        let Query(q) = query.map_err(|_| {
            ProtoError::bad_request("bad query: the only parameter is `after` (a channel name)")
        })?;
        q.after
            .as_deref()
            .map(ChannelName::new)
            .transpose()
            .map_err(|e| ProtoError::bad_request(format!("`after`: {e}")))
    });
    match after {
        Err(e) => error_response(&e),
        Ok(after) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            render_page(&ctx, after.as_ref()),
        )
            .into_response(),
    }
}

/// The checks of both routes, in this order: the permission (404), the listener's token
/// (401), the method (405), the command rate (429).
fn admit(ctx: &ListenerCtx, req: &Request) -> Result<(), ProtoError> {
    if !ctx.cfg.permissions.admin {
        return Err(ProtoError::new(ErrorCode::NotFound, "no such endpoint"));
    }
    if !crate::upgrade::authorized(&ctx.cfg, req.headers(), false) {
        return Err(ProtoError::new(
            ErrorCode::Unauthorized,
            "this listener requires a token: send `Authorization: Bearer <token>`",
        ));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ProtoError::new(
            ErrorCode::MethodNotAllowed,
            "method not allowed: this route answers GET",
        ));
    }
    if req
        .extensions()
        .get::<Arc<ConnSlot>>()
        .is_some_and(|c| !c.allow_command())
    {
        return Err(rate_limited(&ctx.cfg));
    }
    Ok(())
}

/// `s` safe inside HTML text and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `3d 4h 5m 6s`, leading zero units left out.
pub(crate) fn uptime(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (v, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if v > 0 || !out.is_empty() {
            let _ = write!(out, "{v}{unit} ");
        }
    }
    let _ = write!(out, "{s}s");
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left}\
td.n{text-align:right;font-variant-numeric:tabular-nums}\
th{background:#eee}p.note{color:#555}";

fn render_page(ctx: &ListenerCtx, after: Option<&ChannelName>) -> String {
    let node = &ctx.node;
    let s = ctx.stats.snapshot();
    let h = ctx.hub.stats();
    let mut o = String::with_capacity(8 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <title>TSLM admin</title><style>{STYLE}</style></head><body>\
         <h1>TSLM gateway</h1>\
         <table id=\"node\"><tr><th>version</th><td>{}</td></tr>\
         <tr><th>uptime</th><td>{}</td></tr>\
         <tr><th>this page served by listener</th><td>{}</td></tr>\
         <tr><th>ready</th><td id=\"ready\">{}</td></tr></table>",
        escape(crate::node::VERSION),
        uptime(node.started_at.elapsed().as_secs()),
        escape(&ctx.cfg.name),
        match ctx.health.readiness() {
            Ok(()) => "yes".to_owned(),
            Err(why) => format!("no: {}", escape(why.as_str())),
        },
    );

    o.push_str(
        "<h2>Listeners</h2><table id=\"listeners\"><tr><th>name</th><th>addresses</th>\
         <th>permissions</th><th>TLS</th><th>tokens</th><th>connections</th></tr>",
    );
    let occupancy = node.occupancy();
    for l in &node.listeners {
        let addrs: Vec<String> = l.addrs.iter().map(ToString::to_string).collect();
        let connections = occupancy
            .iter()
            .find(|o| o.listener == l.name)
            .map_or_else(|| "?".to_owned(), |o| format!("{} / {}", o.open, o.max));
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            escape(&l.name),
            escape(&addrs.join(", ")),
            escape(&l.permissions.to_string()),
            escape(l.tls),
            if l.tokens { "required" } else { "none" },
            escape(&connections),
        );
    }
    o.push_str("</table>");

    o.push_str("<h2>Counts</h2><table id=\"counts\">");
    for (name, v) in [
        ("open connections", s.connections),
        ("WebSocket sessions", s.sessions),
        ("subscriptions", h.subscriptions),
        ("channels", h.channels),
        ("backlog bytes", h.backlog_bytes),
        ("pending reply bytes", s.pending_reply_bytes),
    ] {
        let _ = write!(o, "<tr><th>{name}</th><td class=\"n\">{v}</td></tr>");
    }
    for (name, v) in [
        ("publishes", h.publishes),
        ("deliveries", h.deliveries),
        ("messages dropped (drop_oldest)", h.dropped_oldest),
        ("messages dropped (latest)", h.dropped_latest),
    ] {
        let _ = write!(o, "<tr><th>{name}</th><td class=\"n\">{v}</td></tr>");
    }
    o.push_str("</table>");

    o.push_str(
        "<h2>Connected publishers</h2><table id=\"publishers\"><tr><th>publisher</th>\
         <th>open WebSocket connections</th></tr>",
    );
    let publishers = ctx.stats.publishers_connected();
    if publishers.is_empty() {
        o.push_str("<tr><td colspan=\"2\">none</td></tr>");
    }
    for (name, n) in publishers {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\">{n}</td></tr>",
            escape(&name)
        );
    }
    o.push_str("</table>");

    o.push_str("<h2>Recent refusals</h2><table id=\"recent\"><tr><th>when</th><th>what</th></tr>");
    let recent = ctx.stats.recent_refusals();
    if recent.is_empty() {
        o.push_str("<tr><td colspan=\"2\">none</td></tr>");
    }
    let now = std::time::SystemTime::now();
    for (at, what) in recent {
        let ago = now.duration_since(at).map_or(0, |d| d.as_secs());
        let _ = write!(
            o,
            "<tr><td>{} ago</td><td>{}</td></tr>",
            uptime(ago),
            escape(what)
        );
    }
    o.push_str("</table>");

    o.push_str(
        "<h2>Refusals since start</h2><p class=\"note\">Counts by reason; the last 20 are listed \
         above (the log has one line per 10 s at most for failed authentications).</p>\
         <table id=\"refusals\">",
    );
    for (name, v) in [
        (
            "connections over capacity (503)",
            s.over_capacity_rejections,
        ),
        ("connections over a per-address limit (429)", s.ip_refusals),
        (
            "connections closed unanswered (overload)",
            s.overload_closes,
        ),
        (
            "HTTP requests refused authentication (401)",
            s.auth_refusals_http,
        ),
        (
            "handshakes refused authentication (401)",
            s.auth_refusals_handshake,
        ),
        ("auth commands refused", s.auth_refusals_command),
        (
            "failed-authentication budget spent (429)",
            s.auth_budget_refusals,
        ),
        (
            "publishes refused (any code)",
            s.publish_refusals.iter().sum(),
        ),
        ("sessions closed as slow (4000)", s.slow_consumer_closes),
        ("sessions closed for abuse (1008)", s.policy_closes),
    ] {
        let _ = write!(o, "<tr><th>{name}</th><td class=\"n\">{v}</td></tr>");
    }
    o.push_str("</table>");

    let (channels, more) = ctx.hub.list(None, after, PAGE, usize::MAX);
    let _ = write!(
        o,
        "<h2>Channels</h2><p class=\"note\">On this node, in name order, {PAGE} a page{}.</p>\
         <table id=\"channels\"><tr><th>name</th><th>subscribers</th><th>head offset</th>\
         <th>backlog messages</th><th>backlog bytes</th></tr>",
        after.map_or_else(String::new, |a| format!(", after {}", escape(a.as_str()))),
    );
    for c in &channels {
        let _ = write!(
            o,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(c.channel.as_str()),
            c.subscribers,
            c.offset,
            c.backlog_messages,
            c.backlog_bytes,
        );
    }
    o.push_str("</table>");
    if after.is_some() {
        o.push_str("<a id=\"first\" href=\"/admin\">first page</a> ");
    }
    if let (true, Some(last)) = (more, channels.last()) {
        let _ = write!(
            o,
            "<a id=\"next\" href=\"/admin?after={}\">next page</a>",
            escape(last.channel.as_str())
        );
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_every_markup_character() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(escape("plain-name_1"), "plain-name_1");
        assert_eq!(escape(""), "");
        assert_eq!(escape("é<"), "é&lt;");
    }

    #[test]
    fn uptime_reads_in_units() {
        assert_eq!(uptime(0), "0s");
        assert_eq!(uptime(59), "59s");
        assert_eq!(uptime(60), "1m 0s");
        assert_eq!(uptime(3600 + 5), "1h 0m 5s");
        assert_eq!(uptime(2 * 86_400 + 3 * 3600 + 4 * 60 + 5), "2d 3h 4m 5s");
    }
}
