//! Event streams served outside hyper: the first request head of every HTTP/1.1 connection is
//! read here, and a `GET /v1/events` (not a WebSocket handshake) is answered and streamed on the
//! socket itself, as WebSocket sessions are after their handshake.
//!
//! Why: hyper holds a read and a write buffer of 8 KiB each for every HTTP/1 connection for its
//! whole life (its `INIT_BUFFER_SIZE`; `max_buf_size` cannot go below it), twice what an idle
//! event stream costs otherwise. Here an idle stream holds no buffer at all: a few bytes read at
//! a time to notice the client going, and a chunk's framing only while it is written.
//!
//! The request goes through the same [`Route`] as every request hyper reads (cross-site check,
//! the failed-authentication budget, admission, identity, cursor and limits: the one route
//! handler), and its answer is written as hyper writes it (see [`response_head`]). Everything
//! else goes to hyper with the bytes already read in front of the socket ([`Rewind`]): other
//! requests, WebSocket handshakes, heads that are malformed or too large (hyper's 400 and 431),
//! HTTP/1.0, requests with a body, and a stream's connection once the stream has ended (the next
//! request on it).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use http_body::Body as _;
use http_body_util::BodyExt;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{MAX_HTTP_HEAD_BYTES, Route};
use crate::context::ListenerCtx;

/// The request line this module serves: `GET /v1/events`, then ` ` or `?`.
const EVENTS_LINE: &[u8] = b"GET /v1/events";

/// The first read of a connection: room for a browser's `EventSource` request. A head that has
/// not ended grows the buffer (doubling) up to [`MAX_HTTP_HEAD_BYTES`], hyper's bound.
const HEAD_READ_BYTES: usize = 1024;

/// The most header lines a head read here may have: hyper's own bound (more is its 431).
const MAX_HEADERS: usize = 100;

/// Chunks a stream has queued that go out in one write (the stream queues two at most,
/// `sse::QUEUE`; the bound keeps a write's slices few whatever the body).
const MAX_CHUNKS_PER_WRITE: usize = 8;

/// Bytes a running stream reads at a time, to notice its client closing (0 bytes) or sending
/// another request (any byte, which ends the stream). In the task's state: no buffer to free.
const WATCH_READ_BYTES: usize = 8;

/// What the first request of a connection is.
#[derive(Debug)]
pub(super) enum First {
    /// A `GET /v1/events` to serve here.
    Events(Box<Request<Body>>),
    /// Anything else: hyper serves the connection, these bytes first.
    Hyper(Bytes),
    /// The client went before sending anything.
    Closed,
}

/// How a connection served here goes on.
pub(super) enum Next<I> {
    /// With hyper, for its next requests: these bytes first (read and not yet served).
    Hyper(I, Bytes),
    /// Closed.
    Done,
}

/// Why writing an answer or a stream stopped.
#[derive(Debug, Error)]
enum WriteError {
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    #[error("the answer's body failed")]
    Body,
    #[error("the client closed the connection")]
    Gone,
}

/// Reads the first request head of a connection, deciding as soon as its first bytes allow
/// whether it is [`First::Events`]. Bounded by [`MAX_HTTP_HEAD_BYTES`]; the caller bounds the
/// time (hyper's header deadline).
pub(super) async fn read_first<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<First> {
    let mut buf = vec![0u8; HEAD_READ_BYTES];
    let mut len = 0;
    loop {
        let n = io.read(&mut buf[len..]).await?;
        if n == 0 {
            buf.truncate(len);
            return Ok(if len == 0 {
                First::Closed
            } else {
                First::Hyper(Bytes::from(buf))
            });
        }
        len += n;
        // A head can only end, or gain a header line, where a line ends: a head sent a few bytes
        // at a time is parsed once per line, not once per read.
        let line_ended = buf[len - n..len].contains(&b'\n');
        match parse(&buf[..len], line_ended) {
            Parsed::Partial if len == buf.len() && len < MAX_HTTP_HEAD_BYTES => {
                buf.resize((len * 2).min(MAX_HTTP_HEAD_BYTES), 0);
            }
            Parsed::Partial if len < buf.len() => {}
            Parsed::Events(req) => return Ok(First::Events(req)),
            // Not for us, or hyper's error answer (431 when the bound is reached).
            Parsed::Partial | Parsed::Hyper => {
                buf.truncate(len);
                return Ok(First::Hyper(Bytes::from(buf)));
            }
        }
    }
}

enum Parsed {
    Partial,
    Events(Box<Request<Body>>),
    Hyper,
}

/// Parses what has arrived of a head: [`Parsed::Events`] only for a complete, well-formed
/// HTTP/1.1 `GET /v1/events` with no body, no WebSocket handshake and nothing after it.
/// `line_ended`: whether the last bytes read ended a line (else only the request line's start is
/// checked).
fn parse(buf: &[u8], line_ended: bool) -> Parsed {
    let k = buf.len().min(EVENTS_LINE.len());
    if buf[..k] != EVENTS_LINE[..k] {
        return Parsed::Hyper;
    }
    if buf.len() > k && !matches!(buf[k], b' ' | b'?') {
        return Parsed::Hyper;
    }
    if !line_ended {
        return Parsed::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let end = match head.parse(buf) {
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(end)) => end,
        Err(_) => return Parsed::Hyper,
    };
    // Pipelined bytes with the head: hyper serves the connection as it always did.
    if end != buf.len() || end > MAX_HTTP_HEAD_BYTES || head.version != Some(1) {
        return Parsed::Hyper;
    }
    let Some(Ok(uri)) = head.path.map(Uri::try_from) else {
        return Parsed::Hyper;
    };
    let mut map = HeaderMap::with_capacity(head.headers.len());
    for h in head.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Hyper;
        };
        map.append(name, value);
    }
    let body = [
        axum::http::header::CONTENT_LENGTH,
        axum::http::header::TRANSFER_ENCODING,
        axum::http::header::EXPECT,
    ];
    if body.iter().any(|h| map.contains_key(h)) || crate::upgrade::is_upgrade_request(&map) {
        return Parsed::Hyper;
    }
    let mut req = Request::new(Body::empty());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = map;
    Parsed::Events(Box::new(req))
}

/// Whether the request asks to close the connection after its answer.
fn asks_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::CONNECTION)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
        })
}

/// Serves `req` (from [`read_first`]) on `io`: routes it, writes the answer, streams its body,
/// and says how the connection goes on.
///
/// What an idle stream's connection task holds is this future's state while it streams: the
/// routing, the answer's head and an error's answer are boxed, and gone once done.
pub(super) async fn serve<I>(
    ctx: &ListenerCtx,
    route: &Route,
    mut io: I,
    req: Box<Request<Body>>,
) -> Next<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let keep_alive = !asks_close(req.headers());
    let Ok(resp) = Box::pin(route.call(*req)).await;
    let close = asks_close(resp.headers()) || !keep_alive;
    let (parts, body) = resp.into_parts();
    let served = match body.size_hint().exact() {
        Some(_) => Box::pin(answer(&mut io, parts, body))
            .await
            .map(|()| Bytes::new()),
        None => {
            let head = response_head(&parts, None);
            drop(parts);
            stream(&mut io, head, body).await
        }
    };
    match served {
        Ok(next) if !close && !ctx.generation.is_cancelled() => Next::Hyper(io, next),
        Ok(_) => {
            let _ = io.shutdown().await;
            Next::Done
        }
        Err(e) => {
            tracing::debug!(listener = %ctx.cfg.name, peer = %route.slot.peer, error = %e, "event stream connection ended");
            Next::Done
        }
    }
}

/// Writes an answer with a body of known length (an error, before any stream started).
async fn answer<I: AsyncWrite + Unpin>(
    io: &mut I,
    parts: axum::http::response::Parts,
    body: Body,
) -> Result<(), WriteError> {
    let body = body
        .collect()
        .await
        .map_err(|_| WriteError::Body)?
        .to_bytes();
    let head = response_head(&parts, Some(body.len() as u64));
    drop(parts);
    io.write_all_buf(&mut Buf::chain(head.as_slice(), body))
        .await?;
    io.flush().await?;
    Ok(())
}

/// What a running stream waits for.
enum Event {
    Chunk(Bytes),
    Skip,
    End,
    Failed,
    /// The client closed (or the socket failed).
    Gone,
    /// The client sent more: the stream ends and the bytes go to hyper.
    More(Bytes),
}

/// Writes a streamed answer (`head`, then the body chunked), reading the socket meanwhile;
/// returns the bytes the client sent after its request, if any (which ended the stream).
async fn stream<I>(io: &mut I, head: Vec<u8>, mut body: Body) -> Result<Bytes, WriteError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(&head).await?;
    io.flush().await?;
    drop(head);
    let mut watch = [0u8; WATCH_READ_BYTES];
    let more = loop {
        let event = tokio::select! {
            f = body.frame() => match f {
                // Trailers (none are sent) are skipped.
                Some(Ok(f)) => f.into_data().map_or(Event::Skip, Event::Chunk),
                Some(Err(_)) => Event::Failed,
                None => Event::End,
            },
            r = io.read(&mut watch) => match r {
                Ok(0) | Err(_) => Event::Gone,
                Ok(n) => Event::More(Bytes::copy_from_slice(&watch[..n])),
            },
        };
        match event {
            Event::Chunk(data) => {
                // What else the stream has queued goes out in the same system call.
                let mut chunks = vec![data];
                let mut ended = false;
                while chunks.len() < MAX_CHUNKS_PER_WRITE {
                    match body.frame().now_or_never() {
                        Some(Some(Ok(f))) => chunks.extend(f.into_data().ok()),
                        Some(Some(Err(_))) => return Err(WriteError::Body),
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        None => break,
                    }
                }
                write_chunks(io, &chunks).await?;
                if ended {
                    break Bytes::new();
                }
            }
            Event::Skip => {}
            Event::End => break Bytes::new(),
            Event::More(more) => break more,
            Event::Failed => return Err(WriteError::Body),
            Event::Gone => return Err(WriteError::Gone),
        }
    };
    // The stream's task sees its receiver gone and ends.
    drop(body);
    io.write_all(b"0\r\n\r\n").await?;
    io.flush().await?;
    Ok(more)
}

/// Writes chunks of a chunked body (sizes in hexadecimal, as hyper writes them) with vectored
/// writes: one system call where the socket takes them all. The framing lives only while it is
/// written.
async fn write_chunks<I: AsyncWrite + Unpin>(io: &mut I, chunks: &[Bytes]) -> io::Result<()> {
    let sizes: Vec<([u8; 18], usize)> = chunks
        .iter()
        .map(|c| {
            let mut size = [0u8; 18];
            let n = chunk_size(&mut size, c.len());
            (size, n)
        })
        .collect();
    let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(chunks.len() * 3);
    // An empty chunk would end the body: none is written.
    for (c, (size, n)) in chunks.iter().zip(&sizes).filter(|(c, _)| !c.is_empty()) {
        slices.push(io::IoSlice::new(&size[..*n]));
        slices.push(io::IoSlice::new(c));
        slices.push(io::IoSlice::new(b"\r\n"));
    }
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = io.write_vectored(rest).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut rest, n);
    }
    io.flush().await
}

/// Writes `len` in uppercase hexadecimal and `\r\n` into `out`; returns the bytes written.
fn chunk_size(out: &mut [u8; 18], len: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut v = len;
    loop {
        i -= 1;
        digits[i] = HEX[v & 0xf];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    let d = digits.len() - i;
    out[..d].copy_from_slice(&digits[i..]);
    out[d..d + 2].copy_from_slice(b"\r\n");
    d + 2
}

/// A response head as hyper writes it for an HTTP/1.1 request: the status line, the headers in
/// their order (lowercase names), `content-length` (a body of known length) or
/// `transfer-encoding: chunked`, and `date`.
fn response_head(parts: &axum::http::response::Parts, length: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + parts.headers.len() * 32);
    if parts.status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(parts.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or("<none>")
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
    }
    let mut has_length = false;
    let mut has_date = false;
    for (name, value) in &parts.headers {
        use axum::http::header;
        has_length |= name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING;
        has_date |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_length {
        match length {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `io` with `prefix` (bytes already read from it) read first: how hyper gets a connection whose
/// first bytes were read here. The prefix is freed once read; it is boxed so that the wrapper
/// adds one pointer to the socket a WebSocket session keeps for its life (hyper boxes it again
/// at the upgrade).
pub(super) struct Rewind<I> {
    prefix: Option<Box<Bytes>>,
    io: I,
}

impl<I> Rewind<I> {
    pub(super) fn new(prefix: Bytes, io: I) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then(|| Box::new(prefix)),
            io,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(prefix) = self.prefix.as_mut() {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..n]);
            prefix.advance(n);
            if prefix.is_empty() {
                self.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::Response;

    fn events(head: &str) -> Option<Request<Body>> {
        match parse(head.as_bytes(), true) {
            Parsed::Events(req) => Some(*req),
            _ => None,
        }
    }

    fn is_hyper(head: &str) -> bool {
        matches!(parse(head.as_bytes(), true), Parsed::Hyper)
    }

    #[test]
    fn only_a_complete_plain_get_of_the_events_path_is_served_here() {
        let req = events(
            "GET /v1/events?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: c\r\nX: 1\r\nX: 2\r\n\r\n",
        )
        .unwrap();
        assert_eq!(req.uri().path(), "/v1/events");
        assert_eq!(req.uri().query(), Some("channel=a"));
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["last-event-id"], "c");
        assert_eq!(req.headers().get_all("x").iter().count(), 2);
        assert!(events("GET /v1/events HTTP/1.1\r\n\r\n").is_some());
        // Decided from the first bytes.
        for prefix in [
            "P",
            "GET /h",
            "GET /v1/eventsX",
            "OPTIONS /v1/events",
            "GET /v1/poll",
        ] {
            assert!(is_hyper(prefix), "{prefix}");
        }
        for partial in [
            "G",
            "GET /v1/ev",
            "GET /v1/events?channel=a HTTP/1.1\r\nHost:",
        ] {
            assert!(
                matches!(parse(partial.as_bytes(), true), Parsed::Partial),
                "{partial}"
            );
        }
        for other in [
            "GET /v1/events HTTP/1.0\r\n\r\n",
            "GET /v1/events HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /v1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/events HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/events HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "GET /v1/events HTTP/1.1\r\nno colon\r\n\r\n",
        ] {
            assert!(is_hyper(other), "{other:?}");
        }
        // Without a line's end, only the request line's start is looked at.
        assert!(matches!(
            parse(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r", false),
            Parsed::Partial
        ));
        assert!(matches!(parse(b"GET /x", false), Parsed::Hyper));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        assert!(is_hyper(&format!("GET /v1/events HTTP/1.1\r\n{many}\r\n")));
    }

    #[test]
    fn chunk_sizes_are_uppercase_hexadecimal() {
        let mut out = [0u8; 18];
        for (len, want) in [(1, "1\r\n"), (255, "FF\r\n"), (4096, "1000\r\n")] {
            let n = chunk_size(&mut out, len);
            assert_eq!(&out[..n], want.as_bytes());
        }
        let n = chunk_size(&mut out, usize::MAX);
        assert_eq!(n, 18);
    }

    #[test]
    fn response_heads_are_written_as_hyper_writes_them() {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NOT_FOUND;
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        let (parts, _) = resp.into_parts();
        let head = String::from_utf8(response_head(&parts, Some(12))).unwrap();
        let (start, date) = head.split_once("date: ").unwrap();
        assert_eq!(
            start,
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 12\r\n"
        );
        assert!(date.ends_with(" GMT\r\n\r\n"), "{date}");
        let (parts, _) = Response::new(Body::empty()).into_parts();
        let head = String::from_utf8(response_head(&parts, None)).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: "));
    }

    #[tokio::test]
    async fn rewind_reads_its_prefix_first_then_the_socket() {
        use tokio::io::AsyncReadExt;
        let (mut peer, io) = tokio::io::duplex(64);
        peer.write_all(b" world").await.unwrap();
        drop(peer);
        let mut r = Rewind::new(Bytes::from_static(b"hello"), io);
        let mut small = [0u8; 3];
        r.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"hel");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"lo world");
    }
}
