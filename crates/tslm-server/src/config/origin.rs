//! Browser origins and `Host` values in their canonical forms (for `allowed_origins`,
//! `allowed_hosts` and the cross-site check).

/// The canonical form of a browser origin (`scheme://host[:port]`, lowercase, default port
/// omitted, as browsers send it), or `None` when `o` is not one.
pub fn normalize_origin(o: &str) -> Option<String> {
    let (scheme, rest) = o.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    if rest.is_empty()
        || rest.contains(['/', '?', '#', '@'])
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal without a port ends with `]`.
        Some((h, p)) if !p.ends_with(']') => (h, Some(p)),
        _ => (rest, None),
    };
    if host.is_empty() {
        return None;
    }
    if let Some(p) = port
        && (p.is_empty() || p.parse::<u16>().is_err())
    {
        return None;
    }
    let host = host.to_ascii_lowercase();
    Some(match port {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// `host[:port]` into its host and port (an IPv6 literal keeps its brackets).
pub(crate) fn split_port(s: &str) -> (&str, Option<&str>) {
    match s.rsplit_once(':') {
        Some((h, p))
            if !p.ends_with(']') && !h.is_empty() && (!h.contains(':') || h.ends_with(']')) =>
        {
            (h, Some(p))
        }
        _ => (s, None),
    }
}

/// The canonical form of an `allowed_hosts` entry (a host name, an IPv4 address or a bracketed
/// IPv6 address, with an optional port; lowercase), or `None` when `h` is not one.
pub(crate) fn normalize_host(h: &str) -> Option<String> {
    let h = h.trim().to_ascii_lowercase();
    let h = h.strip_suffix('.').unwrap_or(&h).to_owned();
    let (host, port) = split_port(&h);
    if host.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return None;
    }
    let valid = if let Some(v6) = host.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    valid.then_some(h)
}
