//! The three systems the benchmark speaks to: TSLM (protocol v1), nats-server (its WebSocket
//! listener, NATS text protocol), nginx + nchan (WebSocket subscribers, HTTP publishing).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::sse;
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

/// How subscribers connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    /// Server-Sent Events: TSLM's `GET /v1/events`, nchan's EventSource subscriber location
    /// (nats-server has none).
    Sse,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::WebSocket => "ws",
            Transport::Sse => "sse",
        })
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ws" | "websocket" => Ok(Transport::WebSocket),
            "sse" => Ok(Transport::Sse),
            _ => Err(format!("unknown transport {s:?}: ws or sse")),
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

/// One subscriber, over the transport asked for.
pub(crate) enum Subscriber {
    Ws(WsSubscriber),
    Sse(SseSubscriber),
}

impl Subscriber {
    pub(crate) async fn connect(
        cfg: &BenchConfig,
        addr: SocketAddr,
        source: Option<IpAddr>,
        channel: usize,
    ) -> io::Result<Self> {
        Ok(match cfg.transport {
            Transport::WebSocket => {
                Self::Ws(WsSubscriber::connect(cfg, addr, source, channel).await?)
            }
            Transport::Sse => Self::Sse(SseSubscriber::connect(cfg, addr, source, channel).await?),
        })
    }

    pub(crate) async fn run(self, st: SubState, shared: &Arc<Shared>) -> io::Result<()> {
        match self {
            Self::Ws(s) => s.run(st, shared).await,
            Self::Sse(s) => s.run(st, shared).await,
        }
    }
}

/// An event stream: TSLM's `/v1/events?channel=NAME` (ready once its `subscribed` event came:
/// from then on every publish reaches it) or nchan's `/ev/NAME` (ready at its response head, as
/// its WebSocket subscribers are at theirs).
pub(crate) struct SseSubscriber {
    stream: TcpStream,
    reader: sse::Reader,
}

impl SseSubscriber {
    async fn connect(
        cfg: &BenchConfig,
        addr: SocketAddr,
        source: Option<IpAddr>,
        channel: usize,
    ) -> io::Result<Self> {
        let name = channel_name(channel);
        let path = match cfg.target {
            Target::Tslm => format!("/v1/events?channel={name}"),
            Target::Nchan => format!("/ev/{name}"),
            Target::Nats => return Err(other("nats-server has no Server-Sent Events")),
        };
        let (mut stream, mut reader) = sse::connect(addr, source, &path).await?;
        if cfg.target == Target::Tslm {
            let mut subscribed = false;
            let mut refused = None;
            reader.events(|e| subscribed |= e.kind == b"subscribed");
            while !subscribed {
                let open = reader
                    .read_events(&mut stream, |e| match e.kind {
                        b"subscribed" => subscribed = true,
                        b"end" => refused = Some(String::from_utf8_lossy(&e.data).into_owned()),
                        _ => {}
                    })
                    .await?;
                if let Some(r) = refused.take() {
                    return Err(other(format!("event stream ended: {r}")));
                }
                if !open {
                    return Err(other("event stream closed during setup"));
                }
            }
        }
        Ok(Self { stream, reader })
    }

    async fn run(mut self, mut st: SubState, shared: &Arc<Shared>) -> io::Result<()> {
        // Anything that followed the setup in the same read.
        fn on_event(e: sse::Event<'_>, st: &mut SubState, shared: &Shared, ended: &mut bool) {
            match e.kind {
                b"message" => st.on_payload(shared, &e.data),
                b"end" => *ended = true,
                _ => {}
            }
        }
        let mut ended = false;
        self.reader
            .events(|e| on_event(e, &mut st, shared, &mut ended));
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let open = self
                .reader
                .read_events(&mut self.stream, |e| {
                    on_event(e, &mut st, shared, &mut ended)
                })
                .await?;
            if !open || ended {
                return if shared.stop.load(Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err(other("event stream ended by the server"))
                };
            }
        }
    }
}

pub(crate) struct WsSubscriber {
    target: Target,
    stream: TcpStream,
    reader: ws::Reader,
}

impl WsSubscriber {
    async fn connect(
        cfg: &BenchConfig,
        addr: SocketAddr,
        source: Option<IpAddr>,
        channel: usize,
    ) -> io::Result<Self> {
        let name = channel_name(channel);
        let (path, proto) = match cfg.target {
            Target::Tslm => ("/".to_string(), Some("tslm.v1")),
            Target::Nats => ("/".to_string(), None),
            Target::Nchan => (format!("/sub/{name}"), None),
        };
        let (mut stream, leftover) = ws::connect(addr, source, &path, proto).await?;
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

    async fn run(mut self, mut st: SubState, shared: &Arc<Shared>) -> io::Result<()> {
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
    /// TSLM: successful replies counted by the reply reader (one per publish).
    acked: Arc<AtomicU64>,
    /// Messages this publisher sent.
    sent: u64,
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
        let acked = Arc::new(AtomicU64::new(0));
        tokio::spawn(read_replies(
            target,
            read,
            inflight.clone(),
            Arc::clone(&errors),
            Arc::clone(&acked),
        ));
        Self {
            target,
            write,
            inflight,
            errors,
            acked,
            sent: 0,
        }
    }

    /// TSLM: waits until every publish sent was answered (or no answer came for `timeout`);
    /// returns how many were acknowledged and when the last answer was seen. `None` for the
    /// other targets (their publishes are not acknowledged one by one).
    pub(crate) async fn await_acks(
        &self,
        shared: &Shared,
        timeout: std::time::Duration,
    ) -> (Option<u64>, std::time::Instant) {
        if self.target != Target::Tslm {
            shared
                .publish_errors
                .fetch_add(self.errors.load(Ordering::Relaxed), Ordering::Relaxed);
            return (None, std::time::Instant::now());
        }
        let answered = || self.acked.load(Ordering::Relaxed) + self.errors.load(Ordering::Relaxed);
        let mut last = (std::time::Instant::now(), answered());
        while last.1 < self.sent {
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
            let n = answered();
            if n != last.1 {
                last = (std::time::Instant::now(), n);
            } else if last.0.elapsed() > timeout {
                break;
            }
        }
        shared
            .publish_errors
            .fetch_add(self.errors.load(Ordering::Relaxed), Ordering::Relaxed);
        (Some(self.acked.load(Ordering::Relaxed)), last.0)
    }

    /// Publishes messages `first`, `first + P`, … (P: the number of publishers).
    pub(crate) async fn publish_all(
        &mut self,
        cfg: &BenchConfig,
        shared: &Arc<Shared>,
        first: u64,
    ) -> io::Result<()> {
        let start = std::time::Instant::now();
        let mut out = Vec::with_capacity(64 * 1024);
        let step = cfg.publishers.max(1) as u64;
        let mut seq = first;
        // With no subscribers, the window counts this publisher's unanswered publishes.
        let by_acks = cfg.subscribers == 0;
        let answered =
            |p: &Self| p.acked.load(Ordering::Relaxed) + p.errors.load(Ordering::Relaxed);
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
            let acked = answered(self);
            let full = |seq: u64, sent: u64| {
                if by_acks {
                    sent >= acked + cfg.window
                } else {
                    seq >= slowest + cfg.window
                }
            };
            if full(seq, self.sent) {
                if !out.is_empty() {
                    self.write.write_all(&out).await?;
                    out.clear();
                }
                let since = *stalled_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > cfg.drain_timeout {
                    return Err(other(if by_acks {
                        format!(
                            "the server stopped answering: {acked} of {} answered",
                            self.sent
                        )
                    } else {
                        format!(
                            "subscribers stopped receiving: the slowest is at message {slowest} of {seq} published"
                        )
                    }));
                }
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                continue;
            }
            stalled_since = None;
            // Up to 64 messages per write.
            for _ in 0..64 {
                if seq >= cfg.messages || full(seq, self.sent) {
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
                seq += step;
                self.sent += 1;
            }
            self.write.write_all(&out).await?;
            out.clear();
        }
        Ok(())
    }
}

async fn read_replies(
    target: Target,
    mut read: OwnedReadHalf,
    sem: Option<Arc<tokio::sync::Semaphore>>,
    errors: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
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
                // Count replies without parsing frames exactly: their markers are unique (a
                // publishing connection subscribes to nothing, so it is sent replies only).
                let count = |marker: &[u8]| {
                    pending
                        .windows(marker.len())
                        .filter(|w| *w == marker)
                        .count() as u64
                };
                let len = if target == Target::Tslm {
                    errors.fetch_add(count(b"\"ok\":f"), Ordering::Relaxed);
                    acked.fetch_add(count(b"\"ok\":t"), Ordering::Relaxed);
                    6
                } else {
                    errors.fetch_add(count(b"-ERR"), Ordering::Relaxed);
                    4
                };
                // Keep a tail one byte too short to hold a marker: a marker cut by the read is
                // found next time, and none is counted twice.
                let keep = pending.len().min(len - 1);
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
