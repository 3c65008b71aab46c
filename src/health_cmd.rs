//! `tslm health`: probes a gateway's `/readyz` (or `/healthz`) over plain HTTP and exits 0 on a
//! 2xx answer. The container image's HEALTHCHECK: the image has no shell and no HTTP client.

use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of an answer read: a probe's answer is tens of bytes.
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error("bad url {0:?}: expected http://HOST[:PORT][/PATH]")]
    BadUrl(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("not an http answer")]
    NotHttp,
    #[error("answered {status}: {body}")]
    Unhealthy { status: u16, body: String },
}

/// Host (as written, for the `Host` header and the connection), port and path of an `http://`
/// URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target {
    host: String,
    port: u16,
    path: String,
}

/// Parses `http://HOST[:PORT][/PATH]` (HOST a name, an IPv4 address or a bracketed IPv6 one).
pub(crate) fn parse_url(url: &str) -> Result<Target, ProbeError> {
    let bad = || ProbeError::BadUrl(url.to_owned());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (ip, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        (format!("[{ip}]"), port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => p.parse().map_err(|_| bad())?,
    };
    if host.is_empty() || host == "[]" || path.chars().any(|c| c.is_whitespace()) {
        return Err(bad());
    }
    Ok(Target { host, port, path })
}

/// GETs `target` and returns the body of a 2xx answer.
async fn probe(target: &Target) -> Result<String, ProbeError> {
    let addr = format!("{}:{}", target.host, target.port);
    let mut s = TcpStream::connect(&addr)
        .await
        .map_err(|source| ProbeError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: tslm-health\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        target.path
    );
    s.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    (&mut s)
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .await?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(ProbeError::NotHttp)?;
    let status: u16 = head
        .strip_prefix("HTTP/1.")
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or(ProbeError::NotHttp)?;
    let body = body.trim().to_owned();
    if (200..300).contains(&status) {
        Ok(body)
    } else {
        Err(ProbeError::Unhealthy { status, body })
    }
}

/// Probes `url` within `timeout`.
pub(crate) async fn check(url: &str, timeout: Duration) -> Result<String, ProbeError> {
    let target = parse_url(url)?;
    tokio::time::timeout(timeout, probe(&target))
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
}

/// `tslm health`: 0 when the URL answers 2xx within the timeout, 1 otherwise, 2 for a bad URL.
pub(crate) async fn health(url: &str, timeout: Duration) -> ExitCode {
    match check(url, timeout).await {
        Ok(body) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Err(e @ ProbeError::BadUrl(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, path: &str) -> Target {
        Target {
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn urls_parse_into_host_port_and_path() {
        let ok = |u: &str| parse_url(u).unwrap();
        assert_eq!(
            ok("http://127.0.0.1:8080/readyz"),
            t("127.0.0.1", 8080, "/readyz")
        );
        assert_eq!(ok("http://localhost"), t("localhost", 80, "/"));
        assert_eq!(ok("http://[::1]:9/healthz"), t("[::1]", 9, "/healthz"));
        assert_eq!(ok("http://[::1]"), t("[::1]", 80, "/"));
        assert_eq!(ok("http://h:1?x=1"), t("h", 1, "/?x=1"));
    }

    #[test]
    fn bad_urls_are_refused() {
        for u in [
            "https://127.0.0.1/readyz",
            "127.0.0.1:8080",
            "http://",
            "http://:80/",
            "http://h:99999/",
            "http://h:port/",
            "http://[::1/",
            "http://[::1]x/",
            "http://user@h/",
            "http://h/a b",
        ] {
            assert!(
                matches!(parse_url(u), Err(ProbeError::BadUrl(_))),
                "{u}: {:?}",
                parse_url(u)
            );
        }
    }
}
