//! Requests from browsers: which `Origin` and `Host` a listener's requests may carry. Checked
//! once per request, for every route and for WebSocket handshakes alike, before the request is
//! routed (`listener::serve_http`), so no handler can forget it.
//!
//! - **Origin.** Browsers send `Origin` on every WebSocket handshake and on every request that is
//!   not a plain `GET` or `HEAD`; services do not. A listener with `allowed_origins` serves only
//!   those origins. A listener without it that may create channels or publish (an intranet
//!   listener) serves no origin at all: a web page the operator opens must not be able to publish
//!   through it (a cross-site WebSocket, or a `POST` that needs no preflight). Listeners that only
//!   allow subscribing serve every origin unless they list some. Requests without `Origin` pass:
//!   they do not come from a browser's cross-site request.
//! - **Host.** A listener with `allowed_hosts` serves only requests naming one of those hosts, so
//!   a web page cannot reach it through a DNS name it controls and points at the gateway (DNS
//!   rebinding: such requests are same-origin to the browser, and a `GET` carries no `Origin`).

use axum::http::{HeaderMap, Uri, header};
use tslm_protocol::{ErrorCode, ProtoError};

use crate::config::{ListenerConfig, split_port};

/// Refuses (403 `forbidden`) a request whose `Origin` or `Host` this listener does not serve.
pub(crate) fn check(
    cfg: &ListenerConfig,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(), ProtoError> {
    host_allowed(cfg, headers, uri)?;
    origin_allowed(cfg, headers)
}

fn origin_allowed(cfg: &ListenerConfig, headers: &HeaderMap) -> Result<(), ProtoError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let p = cfg.permissions;
    if cfg.allowed_origins.is_empty() && !p.create && !p.publish && !p.admin {
        return Ok(());
    }
    // Exact comparison after normalising as browsers do: `null` and look-alike hosts are other
    // origins.
    let allowed = origin
        .to_str()
        .ok()
        .and_then(crate::config::normalize_origin)
        .is_some_and(|o| cfg.allowed_origins.contains(&o));
    if allowed {
        Ok(())
    } else {
        Err(ProtoError::new(
            ErrorCode::Forbidden,
            "this origin may not connect to this listener",
        ))
    }
}

fn host_allowed(cfg: &ListenerConfig, headers: &HeaderMap, uri: &Uri) -> Result<(), ProtoError> {
    if cfg.allowed_hosts.is_empty() {
        return Ok(());
    }
    // An absolute-form request target names the host; otherwise the `Host` header does.
    let host = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    if host.is_some_and(|h| cfg.allowed_hosts.iter().any(|a| host_matches(a, &h))) {
        Ok(())
    } else {
        Err(ProtoError::new(
            ErrorCode::Forbidden,
            "this host name is not served by this listener",
        ))
    }
}

/// Whether a request's `host[:port]` matches an `allowed_hosts` entry (lowercase, validated): an
/// entry with a port matches that port only, an entry without one any port.
fn host_matches(allowed: &str, requested: &str) -> bool {
    let requested = requested.trim().to_ascii_lowercase();
    let requested = requested.strip_suffix('.').unwrap_or(&requested);
    if requested == allowed {
        return true;
    }
    if split_port(allowed).1.is_some() {
        return false;
    }
    split_port(requested).0 == allowed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::normalize_host;

    #[test]
    fn hosts_match_with_or_without_a_port() {
        assert_eq!(
            normalize_host("Gateway.Intranet.").as_deref(),
            Some("gateway.intranet")
        );
        assert_eq!(normalize_host("[::1]:8081").as_deref(), Some("[::1]:8081"));
        for bad in ["", "http://x", "a/b", "x:port", "[zz]", "a b", ":80"] {
            assert_eq!(normalize_host(bad), None, "{bad:?}");
        }
        assert!(host_matches("localhost", "LOCALHOST:8081"));
        assert!(host_matches("localhost", "localhost"));
        assert!(host_matches("127.0.0.1:8081", "127.0.0.1:8081"));
        assert!(!host_matches("127.0.0.1:8081", "127.0.0.1:8080"));
        assert!(host_matches("[::1]", "[::1]:8081"));
        assert!(!host_matches("localhost", "localhost.evil.example"));
        assert!(!host_matches("localhost", "evil.example:8081"));
    }
}
