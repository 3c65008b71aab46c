//! `GET /metrics`: the Prometheus text exposition (version 0.0.4) of the counters the gateway
//! already keeps as plain atomics ([`crate::stats`], the hub's [`HubStats`]). Nothing here runs on
//! the hot path: a scrape takes one snapshot of each and encodes it through a
//! `prometheus-client` [`Collector`], so no metrics library reaches the hub or the sessions.
//!
//! Names carry the `tslm_` prefix and their unit (`_bytes`, `_seconds`; counters end in
//! `_total`). Labels take values from small fixed sets only (a refusal reason, a close code, an
//! authentication kind, a drop policy, a resume outcome): never a channel, an identity or an
//! address. docs/operations.md ("Metrics") lists every metric.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tslm_hub::HubStats;
use tslm_protocol::close;

use crate::node::{Node, VERSION};
use crate::stats::ServerStats;

/// The `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One scrape's figures.
#[derive(Debug)]
struct Scrape {
    server: ServerStats,
    hub: HubStats,
    start_time_seconds: f64,
    listeners: Vec<crate::node::Occupancy>,
    publish_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Seconds since each issuer's keys were fetched (by issuer name; never fetched: absent).
    key_ages: Vec<(String, f64)>,
    /// Each TLS listener's certificate expiry (Unix seconds).
    certificates: Vec<(String, i64)>,
}

/// What a scrape reads besides the counters.
pub(crate) struct Sources<'a> {
    pub(crate) node: &'a Node,
    pub(crate) publish_seconds: &'a crate::stats::Latency,
    pub(crate) verifier: Option<&'a tslm_oidc::Verifier>,
}

/// Encodes the exposition of one snapshot.
pub(crate) fn render(server: ServerStats, hub: HubStats, from: &Sources<'_>) -> String {
    let mut registry = Registry::with_prefix("tslm");
    let key_ages = from
        .verifier
        .map(|v| {
            v.key_ages()
                .into_iter()
                .filter_map(|(name, age)| Some((name, age?.as_secs_f64())))
                .collect()
        })
        .unwrap_or_default();
    registry.register_collector(Box::new(Scrape {
        server,
        hub,
        start_time_seconds: from.node.start_time_seconds(),
        listeners: from.node.occupancy(),
        publish_seconds: from.publish_seconds.histogram().clone(),
        key_ages,
        certificates: from.node.certificate_expiry(),
    }));
    let mut out = String::new();
    // Writing to a `String` cannot fail, and every name and label here is fixed.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot encode the metrics");
    }
    out
}

/// A `u64` of a `usize` counter (saturating, for 128-bit targets).
fn n(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// A metric with one series per label value.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    series: &[(&str, M)],
) -> Result<(), std::fmt::Error> {
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (value, m) in series {
        m.encode(metric.encode_family(&[(label, *value)])?)?;
    }
    Ok(())
}

/// A metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    m.encode(encoder.encode_descriptor(name, help, None, m.metric_type())?)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (s, h) = (&self.server, &self.hub);
        let c = |v: usize| ConstCounter::new(n(v));
        let g = |v: usize| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));

        family(
            &mut e,
            "build_info",
            "the gateway's version (value 1)",
            "version",
            &[(VERSION, ConstGauge::new(1i64))],
        )?;
        single(
            &mut e,
            "process_start_time_seconds",
            "when the gateway started, in seconds since the Unix epoch",
            &ConstGauge::new(self.start_time_seconds),
        )?;

        // Connections and sessions.
        single(
            &mut e,
            "connections",
            "open TCP connections on all listeners (HTTP, in handshake, WebSocket, or being refused)",
            &g(s.connections),
        )?;
        single(
            &mut e,
            "connections_accepted",
            "TCP connections admitted past the listeners' and the addresses' limits",
            &c(s.connections_accepted),
        )?;
        family(
            &mut e,
            "connections_refused",
            "connections refused before any request was served, by reason",
            "reason",
            &[
                ("over_capacity", c(s.over_capacity_rejections)),
                ("per_address_limit", c(s.ip_refusals)),
                ("overload", c(s.overload_closes)),
            ],
        )?;
        let open: Vec<(&str, _)> = self
            .listeners
            .iter()
            .map(|l| (l.listener.as_str(), g(l.open)))
            .collect();
        family(
            &mut e,
            "listener_connections",
            "connections admitted and open on each listener (all its addresses)",
            "listener",
            &open,
        )?;
        let max: Vec<(&str, _)> = self
            .listeners
            .iter()
            .map(|l| (l.listener.as_str(), g(l.max)))
            .collect();
        family(
            &mut e,
            "listener_max_connections",
            "each listener's max_connections (summed over its addresses: each has its own)",
            "listener",
            &max,
        )?;
        single(
            &mut e,
            "sessions",
            "established WebSocket sessions",
            &g(s.sessions),
        )?;
        family(
            &mut e,
            "sessions_opened",
            "WebSocket sessions established, by protocol: v1 (tslm.v1) or legacy (the original)",
            "dialect",
            &[
                ("v1", c(s.sessions_opened_v1)),
                ("legacy", c(s.sessions_opened_legacy)),
            ],
        )?;
        let closes: [(u16, usize); 9] = [
            (close::GOING_AWAY, s.going_away_closes),
            (close::PROTOCOL_ERROR, s.protocol_error_closes),
            (close::INVALID_PAYLOAD, s.invalid_payload_closes),
            (close::POLICY_VIOLATION, s.policy_closes),
            (close::MESSAGE_TOO_BIG, s.too_big_closes),
            (close::SLOW_CONSUMER, s.slow_consumer_closes),
            (close::PING_TIMEOUT, s.ping_timeout_closes),
            (close::AUTH_TIMEOUT, s.auth_timeout_closes),
            (close::TOKEN_EXPIRED, s.token_expired_closes),
        ];
        let codes: Vec<String> = closes.iter().map(|(code, _)| code.to_string()).collect();
        let series: Vec<(&str, ConstCounter<u64>)> = codes
            .iter()
            .zip(closes)
            .map(|(code, (_, v))| (code.as_str(), c(v)))
            .collect();
        family(
            &mut e,
            "sessions_closed_by_server",
            "WebSocket sessions the gateway closed, by close code",
            "code",
            &series,
        )?;
        family(
            &mut e,
            "auth_refusals",
            "authentications refused, by where: an HTTP request (401), a WebSocket handshake (401), an auth or refresh command, or a spent failed-authentication budget (429)",
            "kind",
            &[
                ("http", c(s.auth_refusals_http)),
                ("handshake", c(s.auth_refusals_handshake)),
                ("command", c(s.auth_refusals_command)),
                ("over_budget", c(s.auth_budget_refusals)),
            ],
        )?;
        single(
            &mut e,
            "pending_reply_bytes",
            "bytes of replies built and not yet handed whole to their sockets",
            &g(s.pending_reply_bytes),
        )?;
        single(
            &mut e,
            "frame_writes",
            "batches of queued WebSocket frames (deliveries and events) handed to a socket, each with one vectored write when the socket takes it whole",
            &c(s.frame_writes),
        )?;
        single(
            &mut e,
            "frames_written",
            "queued WebSocket frames in those batches (frames_written / frame_writes: frames per write, what write_coalesce_ms raises)",
            &c(s.frames_written),
        )?;

        let series: Vec<(&str, ConstCounter<u64>)> = s
            .publish_refusals_by_code()
            .map(|(code, v)| (code.as_str(), c(v)))
            .collect();
        family(
            &mut e,
            "publishes_refused",
            "publishes refused, by the error code answered",
            "code",
            &series,
        )?;

        // The hub's events.
        single(
            &mut e,
            "publishes",
            "messages published (each new offset; a repeated msg_id is not one)",
            &ConstCounter::new(h.publishes),
        )?;
        single(
            &mut e,
            "deliveries",
            "messages queued for subscribers: one per subscriber and message, live or replayed",
            &ConstCounter::new(h.deliveries),
        )?;
        single(
            &mut e,
            "dedupe_hits",
            "publishes answered with the offset of an earlier one with the same msg_id",
            &ConstCounter::new(h.dedupe_hits),
        )?;
        family(
            &mut e,
            "messages_dropped",
            "messages dropped from subscribers' queues, by the channel's slow-subscriber policy",
            "policy",
            &[
                ("drop_oldest", ConstCounter::new(h.dropped_oldest)),
                ("latest", ConstCounter::new(h.dropped_latest)),
            ],
        )?;
        family(
            &mut e,
            "resumes",
            "subscribes after an epoch and offset, by outcome",
            "outcome",
            &[
                ("recovered", ConstCounter::new(h.resumes_recovered)),
                ("expired", ConstCounter::new(h.resumes_expired)),
                ("epoch_changed", ConstCounter::new(h.resumes_epoch_changed)),
            ],
        )?;

        single(
            &mut e,
            "resume_lost_messages",
            "offsets that resumes reported lost (their expired ranges)",
            &ConstCounter::new(h.resume_lost_messages),
        )?;
        single(
            &mut e,
            "subscribes",
            "subscribes answered, at every start position",
            &ConstCounter::new(h.subscribes),
        )?;
        single(
            &mut e,
            "log_reads",
            "reads of a channel's log: history requests, and the channels long-polls and event streams read",
            &ConstCounter::new(h.log_reads),
        )?;
        single(
            &mut e,
            "replies",
            "replies handed to a publisher's connection",
            &ConstCounter::new(h.replies),
        )?;
        single(
            &mut e,
            "backlog_evictions",
            "messages removed from backlogs by a count, age or memory bound, or never kept",
            &ConstCounter::new(h.backlog_evicted),
        )?;
        single(
            &mut e,
            "publish_duration_seconds",
            "accepted publishes, from admission to the offset assigned and the message queued for every subscriber (the fan-out)",
            &self.publish_seconds,
        )?;
        let ages: Vec<(&str, ConstGauge<f64>)> = self
            .key_ages
            .iter()
            .map(|(name, age)| (name.as_str(), ConstGauge::new(*age)))
            .collect();
        family(
            &mut e,
            "identity_provider_key_age_seconds",
            "seconds since each identity provider's key set was fetched",
            "issuer",
            &ages,
        )?;
        let expiry: Vec<(&str, ConstGauge<i64>)> = self
            .certificates
            .iter()
            .map(|(name, at)| (name.as_str(), ConstGauge::new(*at)))
            .collect();
        family(
            &mut e,
            "tls_certificate_expiry_timestamp_seconds",
            "when each TLS listener's certificate expires, in seconds since the Unix epoch",
            "listener",
            &expiry,
        )?;

        // The hub's tables.
        single(&mut e, "channels", "channels held", &g(h.channels))?;
        single(
            &mut e,
            "backlog_messages",
            "messages held by all channel backlogs together",
            &g(h.backlog_messages),
        )?;
        single(
            &mut e,
            "subscriptions",
            "subscriptions of all connections together",
            &g(h.subscriptions),
        )?;
        single(
            &mut e,
            "backlog_bytes",
            "bytes held by all channel backlogs together",
            &g(h.backlog_bytes),
        )?;
        single(
            &mut e,
            "msg_ids",
            "msg_ids remembered by all channels together",
            &g(h.msg_ids),
        )?;
        single(
            &mut e,
            "reply_routes",
            "reply routes kept by all channels together",
            &g(h.reply_routes),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
