//! The three systems the benchmark speaks to: TSLM (protocol v1), nats-server (its WebSocket
//! listener, NATS text protocol), nginx + nchan (WebSocket subscribers, HTTP publishing).

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::ws::{self, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use crate::{BenchConfig, Shared, SubState, channel_name, payload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Tslm,
    Nats,
    Nchan,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Tslm => "tslm",
            Target::Nats => "nats",
            Target::Nchan => "nchan",
        })
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tslm" => Ok(Target::Tslm),
            "nats" => Ok(Target::Nats),
            "nchan" => Ok(Target::Nchan),
            _ => Err(format!("unknown target {s:?}: tslm, nats or nchan")),
        }
    }
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Reads whole frames until `done(payload_so_far)` says the awaited answer arrived.
pub(crate) async fn await_text(
    stream: &mut TcpStream,
    reader: &mut ws::Reader,
    mut done: impl FnMut(&[u8]) -> bool,
) -> io::Result<()> {
    let mut found = false;
    while !found {
        let open = reader
            .read_frames(stream, |op, _, p| {
                if matches!(op, OP_TEXT | OP_BINARY | OP_CONT) && done(p) {
                    found = true;
                }
            })
            .await?;
        if !open {
            return Err(other("connection closed during setup"));
        }
    }
    Ok(())
}

/// CONNECT (plus `extra` commands), then PING, and waits for the PONG that says the server
/// processed everything before it.
async fn nats_handshake(
    stream: &mut TcpStream,
    reader: &mut ws::Reader,
    extra: &str,
) -> io::Result<()> {
    let cmd = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\n{extra}PING\r\n"
    );
    let mut out = Vec::new();
    ws::encode(OP_BINARY, cmd.as_bytes(), &mut out);
    stream.write_all(&out).await?;
    let mut seen = Vec::new();
    await_text(stream, reader, |p| {
        seen.extend_from_slice(p);
        seen.windows(6).any(|w| w == b"PONG\r\n")
    })
    .await
}

pub(crate) struct Subscriber {
    target: Target,
    stream: TcpStream,
    reader: ws::Reader,
}

impl Subscriber {
    pub(crate) async fn connect(
        cfg: &BenchConfig,
        source: Option<IpAddr>,
        channel: usize,
    ) -> io::Result<Self> {
        let name = channel_name(channel);
        let (path, proto) = match cfg.target {
            Target::Tslm => ("/".to_string(), Some("tslm.v1")),
            Target::Nats => ("/".to_string(), None),
            Target::Nchan => (format!("/sub/{name}"), None),
        };
        let (mut stream, leftover) = ws::connect(cfg.sub_addr, source, &path, proto).await?;
        let mut reader = ws::Reader::new(leftover, 4096);
        let mut out = Vec::new();
        match cfg.target {
            Target::Tslm => {
                ws::encode(
                    OP_TEXT,
                    format!(r#"{{"op":"subscribe","id":1,"channel":"{name}"}}"#).as_bytes(),
                    &mut out,
                );
                stream.write_all(&out).await?;
                let mut err = None;
                await_text(&mut stream, &mut reader, |p| {
                    if p.starts_with(b"{\"id\":1,") {
                        if !p.starts_with(b"{\"id\":1,\"ok\":true") {
                            err = Some(String::from_utf8_lossy(p).to_string());
                        }
                        return true;
                    }
                    false
                })
                .await?;
                if let Some(e) = err {
                    return Err(other(format!("subscribe refused: {e}")));
                }
            }
            Target::Nats => {
                nats_handshake(&mut stream, &mut reader, &format!("SUB {name} 1\r\n")).await?
            }
            Target::Nchan => {}
        }
        Ok(Self {
            target: cfg.target,
            stream,
            reader,
        })
    }

    pub(crate) async fn run(mut self, mut st: SubState, shared: &Arc<Shared>) -> io::Result<()> {
        let mut nats = NatsParser::default();
        let mut message = Vec::new();
        let mut pongs = Vec::new();
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut closed = false;
            let target = self.target;
            let open = self
                .reader
                .read_frames(&mut self.stream, |op, fin, p| match (target, op) {
                    (_, OP_CLOSE) => closed = true,
                    (_, OP_PING) => ws::encode(OP_PONG, p, &mut pongs),
                    (_, OP_PONG) => {}
                    (Target::Nats, _) => {
                        nats.feed(p, |payload| st.on_payload(shared, payload), &mut pongs)
                    }
                    (_, _) => {
                        if fin && message.is_empty() {
                            st.on_payload(shared, p);
                        } else {
                            message.extend_from_slice(p);
                            if fin {
                                st.on_payload(shared, &message);
                                message.clear();
                            }
                        }
                    }
                })
                .await?;
            if !pongs.is_empty() {
                self.stream.write_all(&pongs).await?;
                pongs.clear();
            }
            if !open || closed {
                return if shared.stop.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err(other("closed by the server"))
                };
            }
        }
    }
}

/// The NATS text protocol as it arrives over WebSocket: a byte stream cut into frames anywhere.
#[derive(Default)]
struct NatsParser {
    buf: Vec<u8>,
}

impl NatsParser {
    fn feed(&mut self, bytes: &[u8], mut on_msg: impl FnMut(&[u8]), pongs: &mut Vec<u8>) {
        self.buf.extend_from_slice(bytes);
        let mut at = 0;
        loop {
            let rest = &self.buf[at..];
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = &rest[..eol];
            if line.starts_with(b"MSG ") {
                let len: usize = std::str::from_utf8(line)
                    .ok()
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if rest.len() < eol + 2 + len + 2 {
                    break;
                }
                on_msg(&rest[eol + 2..eol + 2 + len]);
                at += eol + 2 + len + 2;
            } else {
                if line == b"PING" {
                    ws::encode(OP_BINARY, b"PONG\r\n", pongs);
                }
                at += eol + 2;
            }
        }
        self.buf.drain(..at);
    }
}

pub(crate) struct Publisher {
    target: Target,
    write: OwnedWriteHalf,
    /// nchan: HTTP requests in flight on the pipelined connection.
    inflight: Option<Arc<tokio::sync::Semaphore>>,
    /// Error replies counted by the reply reader.
    errors: Arc<AtomicU64>,
}

impl Publisher {
    pub(crate) async fn connect(cfg: &BenchConfig) -> io::Result<Self> {
        match cfg.target {
            Target::Tslm => {
                let (mut stream, leftover) =
                    ws::connect(cfg.pub_addr, None, "/", Some("tslm.v1")).await?;
                let mut reader = ws::Reader::new(leftover, 4096);
                for c in 0..cfg.channels {
                    let mut out = Vec::new();
                    let req = format!(
                        r#"{{"op":"create","id":{c},"channel":"{}"}}"#,
                        channel_name(c)
                    );
                    ws::encode(OP_TEXT, req.as_bytes(), &mut out);
                    stream.write_all(&out).await?;
                    let want = format!("{{\"id\":{c},\"ok\":true");
                    await_text(&mut stream, &mut reader, |p| p.starts_with(want.as_bytes()))
                        .await?;
                }
                let (read, write) = stream.into_split();
                Ok(Self::start(Target::Tslm, read, write, None))
            }
            Target::Nats => {
                let (mut stream, leftover) = ws::connect(cfg.pub_addr, None, "/", None).await?;
                let mut reader = ws::Reader::new(leftover, 4096);
                nats_handshake(&mut stream, &mut reader, "").await?;
                let (read, write) = stream.into_split();
                Ok(Self::start(Target::Nats, read, write, None))
            }
            Target::Nchan => {
                let stream = TcpStream::connect(cfg.pub_addr).await?;
                stream.set_nodelay(true)?;
                let (read, write) = stream.into_split();
                // Up to 32 pipelined requests in flight on the keep-alive connection.
                let sem = Arc::new(tokio::sync::Semaphore::new(32));
                Ok(Self::start(Target::Nchan, read, write, Some(sem)))
            }
        }
    }

    /// Starts the task that reads replies (TSLM acks, NATS errors, nchan HTTP responses).
    fn start(
        target: Target,
        read: OwnedReadHalf,
        write: OwnedWriteHalf,
        inflight: Option<Arc<tokio::sync::Semaphore>>,
    ) -> Self {
        let errors = Arc::new(AtomicU64::new(0));
        tokio::spawn(read_replies(
            target,
            read,
            inflight.clone(),
            Arc::clone(&errors),
        ));
        Self {
            target,
            write,
            inflight,
            errors,
        }
    }

    pub(crate) async fn publish_all(
        &mut self,
        cfg: &BenchConfig,
        shared: &Arc<Shared>,
    ) -> io::Result<()> {
        let start = std::time::Instant::now();
        let mut out = Vec::with_capacity(64 * 1024);
        let mut seq = 0u64;
        // When the slowest subscriber makes no progress for this long, give up.
        let mut stalled_since: Option<std::time::Instant> = None;
        while seq < cfg.messages {
            // Pace: the rate's schedule, and never more than `window` ahead of the slowest.
            if let Some(rate) = cfg.rate {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                if seq >= due {
                    if !out.is_empty() {
                        self.write.write_all(&out).await?;
                        out.clear();
                    }
                    let next =
                        start + std::time::Duration::from_secs_f64((seq + 1) as f64 / rate as f64);
                    tokio::time::sleep_until(next.into()).await;
                    continue;
                }
            }
            let slowest = shared
                .progress
                .iter()
                .map(|p| p.load(Ordering::Relaxed))
                .min()
                .unwrap_or(0);
            if seq >= slowest + cfg.window {
                if !out.is_empty() {
                    self.write.write_all(&out).await?;
                    out.clear();
                }
                let since = *stalled_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > cfg.drain_timeout {
                    return Err(other(format!(
                        "subscribers stopped receiving: the slowest is at message {slowest} of {seq} published"
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                continue;
            }
            stalled_since = None;
            // Up to 64 messages per write.
            for _ in 0..64 {
                if seq >= cfg.messages || seq >= slowest + cfg.window {
                    break;
                }
                if cfg
                    .rate
                    .is_some_and(|rate| seq > (start.elapsed().as_secs_f64() * rate as f64) as u64)
                {
                    break;
                }
                let c = (seq % cfg.channels as u64) as usize;
                let body = payload(seq, shared.now_ns(), cfg.size);
                let name = channel_name(c);
                match self.target {
                    Target::Tslm => {
                        let mut req = Vec::with_capacity(body.len() + 64);
                        req.extend_from_slice(br#"{"op":"publish","channel":""#);
                        req.extend_from_slice(name.as_bytes());
                        req.extend_from_slice(br#"","data":"#);
                        req.extend_from_slice(&body);
                        req.push(b'}');
                        ws::encode(OP_TEXT, &req, &mut out);
                    }
                    Target::Nats => {
                        let mut req = format!("PUB {name} {}\r\n", body.len()).into_bytes();
                        req.extend_from_slice(&body);
                        req.extend_from_slice(b"\r\n");
                        ws::encode(OP_BINARY, &req, &mut out);
                    }
                    Target::Nchan => {
                        if let Some(sem) = &self.inflight {
                            // Requests still in `out` hold permits: send them before waiting for
                            // the responses that give permits back.
                            let permit = match sem.try_acquire() {
                                Ok(p) => p,
                                Err(_) => {
                                    self.write.write_all(&out).await?;
                                    out.clear();
                                    sem.acquire().await.map_err(|_| {
                                        other("the server closed the publishing connection")
                                    })?
                                }
                            };
                            permit.forget();
                        }
                        out.extend_from_slice(
                            format!(
                                "POST /pub/{name} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .as_bytes(),
                        );
                        out.extend_from_slice(&body);
                    }
                }
                seq += 1;
            }
            self.write.write_all(&out).await?;
            out.clear();
        }
        shared
            .publish_errors
            .store(self.errors.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(())
    }
}

async fn read_replies(
    target: Target,
    mut read: OwnedReadHalf,
    sem: Option<Arc<tokio::sync::Semaphore>>,
    errors: Arc<AtomicU64>,
) {
    match target {
        Target::Tslm | Target::Nats => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut pending: Vec<u8> = Vec::new();
            loop {
                let n = match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                pending.extend_from_slice(&buf[..n]);
                // Count error replies without parsing frames exactly: their markers are unique.
                let marker: &[u8] = if target == Target::Tslm {
                    b"\"ok\":false"
                } else {
                    b"-ERR"
                };
                let found = pending
                    .windows(marker.len())
                    .filter(|w| *w == marker)
                    .count();
                errors.fetch_add(found as u64, Ordering::Relaxed);
                let keep = pending.len().min(marker.len());
                pending.drain(..pending.len() - keep);
            }
        }
        Target::Nchan => {
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            let Some(sem) = sem else { return };
            loop {
                let n = match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        // Wake the publisher: no more responses will come.
                        sem.close();
                        return;
                    }
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                // Parse complete HTTP responses: head, then Content-Length bytes of body.
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        break;
                    }
                    if !(head.starts_with("http/1.1 2")) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    buf.drain(..end + 4 + len);
                    sem.add_permits(1);
                }
            }
        }
    }
}
