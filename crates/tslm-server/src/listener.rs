//! Accept loops and per-connection HTTP serving, over plain TCP or TLS.
//!
//! Each accepted connection gets its own task: the TLS handshake (on TLS listeners) runs there,
//! under `handshake_timeout`, so a slow client never holds up the accept loop. HTTP serving is
//! generic over the stream, so plain connections are served on the `TcpStream` itself, with no
//! wrapper or indirection. HTTP/1.1 everywhere; HTTP/2 on TLS connections that chose it in ALPN
//! (its settings and per-stream places in [`crate::http2`]); no HTTP/2 over plain TCP (h2c).
//! The first request head of an HTTP/1.1 connection is read here (`native`): an event stream
//! (`GET /v1/events`) is served outside hyper, which would hold 16 KiB of buffers for its whole
//! life; anything else goes to hyper with the bytes already read in front of the socket.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use futures_util::TryFutureExt;
use futures_util::future::Either;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tslm_protocol::ProtoError;

use crate::admission::{Pending, REFUSAL_DEADLINE};
use crate::config::{Http2Config, ListenerConfig};
use crate::context::{Admitted, ConnSlot, ListenerCtx};
use crate::errors;
use crate::iplimit::RefusalGuard;
use crate::tls::TlsState;

mod native;

/// How often addresses that went quiet are forgotten by the per-address limits.
const IP_TABLE_SWEEP: Duration = Duration::from_secs(10);

/// The largest HTTP request head (request line and headers) a listener reads.
const MAX_HTTP_HEAD_BYTES: usize = 16 * 1024;

/// A bound, not yet accepting, listener socket.
pub(crate) struct Bound {
    pub cfg: Arc<ListenerConfig>,
    pub tcp: TcpListener,
    /// The listener's TLS (shared by all its addresses); `None` for plain TCP.
    pub tls: Option<Arc<TlsState>>,
}

pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections on `tcp` until shutdown, serving each admitted one with `router` (the
/// HTTP side, [`crate::http::router`], handed in so that this loop depends on no transport).
pub(crate) async fn accept_loop(mut ctx: Arc<ListenerCtx>, tcp: TcpListener, mut router: Router) {
    let mut backoff = Duration::from_millis(5);
    let mut sweep = tokio::time::interval(IP_TABLE_SWEEP);
    loop {
        let accepted = tokio::select! {
            // A reload replaced the context: accept with the new one; or the listener closes.
            _ = ctx.generation.cancelled() => match ctx.successor() {
                Some((next, next_router)) => {
                    (ctx, router) = (next, next_router);
                    continue;
                }
                None => return,
            },
            _ = sweep.tick() => {
                ctx.ip_limits.sweep();
                continue;
            }
            r = tcp.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                // Decided here, synchronously, before anything is spawned: a flood of queued
                // connections is sorted as fast as it is accepted.
                match admit(&ctx, peer) {
                    Ok(admitted) => {
                        ctx.tracker.spawn(serve_connection(
                            Arc::clone(&ctx),
                            router.clone(),
                            stream,
                            peer,
                            admitted,
                        ));
                    }
                    Err(error) => match refusal_places(&ctx, peer) {
                        Some(places) => {
                            ctx.tracker
                                .spawn(refuse(Arc::clone(&ctx), stream, error, places));
                        }
                        // A flood: closed at once, so refusals never take the descriptors
                        // others need.
                        None => drop(stream),
                    },
                }
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: keep the listener, back off, retry.
                tracing::warn!(listener = %ctx.cfg.name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn http_builder(ctx: &ListenerCtx) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(ctx.cfg.handshake_timeout)
        .max_buf_size(MAX_HTTP_HEAD_BYTES.max(8192));
    b
}

/// Admits a connection from `peer`, or says with which error to refuse it (429 over a
/// per-address limit, 503 over `max_connections` or the descriptor budget).
fn admit(ctx: &ListenerCtx, peer: SocketAddr) -> Result<Admitted, ProtoError> {
    let ip = ctx.ip_limits.admit(peer.ip()).map_err(|why| {
        ctx.stats.count_ip_refusal();
        tracing::debug!(listener = %ctx.cfg.name, %peer, ?why, "per-address limit: answering 429");
        errors::address_refused(why)
    })?;
    let Ok(permit) = Arc::clone(&ctx.conn_limit).try_acquire_owned() else {
        ctx.stats.count_over_capacity();
        tracing::debug!(listener = %ctx.cfg.name, %peer, "over max_connections: answering 503");
        return Err(errors::listener_full());
    };
    let Some(open) = ctx.admission.open() else {
        ctx.stats.count_over_capacity();
        tracing::debug!(listener = %ctx.cfg.name, %peer, "descriptor budget spent: answering 503");
        return Err(errors::gateway_full());
    };
    Ok(Admitted {
        ip,
        permit,
        open,
        gauge: ctx.stats.admitted(),
    })
}

/// The places a refusal holds: one of its address's few (so one address cannot take them all)
/// and one of the server's `max_pending_connections`. `None`: close the connection at once.
fn refusal_places(ctx: &ListenerCtx, peer: SocketAddr) -> Option<(RefusalGuard, Pending)> {
    let Some(of_address) = ctx.ip_limits.refusing(peer.ip()) else {
        ctx.stats.count_overload_close();
        tracing::debug!(listener = %ctx.cfg.name, %peer, "too many refusals in progress for this address: closed at once");
        return None;
    };
    let Some(pending) = ctx.admission.pending() else {
        ctx.stats.count_overload_close();
        tracing::debug!(listener = %ctx.cfg.name, %peer, "too many connections being refused: closed at once");
        return None;
    };
    Some((of_address, pending))
}

async fn serve_connection(
    ctx: Arc<ListenerCtx>,
    router: Router,
    stream: TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
) {
    // The handshake runs holding the connection's slot, so handshakes in progress count
    // against `max_connections` and the per-address limits.
    let slot = |peer_cert_names| Arc::new(ConnSlot::new(&ctx.cfg, peer, peer_cert_names, admitted));
    match &ctx.tls {
        None => serve_http(&ctx, router, stream, slot(Vec::new()), Version::Http1).await,
        // Boxed, so that the TLS session state (kilobytes) is no part of the task of every
        // plain connection: the plain path stays as it was.
        Some(tls) => Box::pin(serve_tls(&ctx, tls, router, stream, peer, slot)).await,
    }
}

/// Serves a connection on a TLS listener: handshake, then HTTP over the TLS stream. `slot`
/// makes the connection's slot from the client certificate's names.
async fn serve_tls(
    ctx: &ListenerCtx,
    tls: &TlsState,
    router: Router,
    stream: TcpStream,
    peer: SocketAddr,
    slot: impl FnOnce(Vec<String>) -> Arc<ConnSlot>,
) {
    let Some(stream) = tls_handshake(ctx, tls, stream, peer).await else {
        return;
    };
    let slot = slot(crate::tls::peer_cert_names(stream.get_ref().1));
    let version = negotiated(tls, &stream);
    serve_http(ctx, router, stream, slot, version).await;
}

/// Runs the server side of the TLS handshake under `handshake_timeout`; `None` (logged at
/// debug: peers cause these) when it fails, times out or the server shuts down first.
async fn tls_handshake(
    ctx: &ListenerCtx,
    tls: &TlsState,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let accept = tls.acceptor().accept(stream);
    let result = tokio::select! {
        r = tokio::time::timeout(ctx.cfg.handshake_timeout, accept) => r,
        _ = ctx.shutdown.cancelled() => return None,
    };
    match result {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(
                listener = %ctx.cfg.name,
                %peer,
                mtls = tls.requires_client_cert(),
                error = %e,
                "tls handshake failed"
            );
            None
        }
        Err(_) => {
            tracing::debug!(listener = %ctx.cfg.name, %peer, "tls handshake timed out");
            None
        }
    }
}

/// The HTTP version a connection speaks: HTTP/2 when TLS negotiated `h2` (ALPN), else HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Http1,
    Http2(Http2Config),
}

/// The version of a TLS connection: HTTP/2 only when the listener offers it and the client
/// chose it in ALPN.
fn negotiated(tls: &TlsState, stream: &TlsStream<TcpStream>) -> Version {
    match (tls.http2(), stream.get_ref().1.alpn_protocol()) {
        (Some(cfg), Some(crate::tls::ALPN_H2)) => Version::Http2(cfg),
        _ => Version::Http1,
    }
}

/// Serves HTTP on `io` until the client goes or the server shuts down: HTTP/1.1 (and upgrades
/// to WebSocket), or HTTP/2 on a TLS connection that negotiated it. Generic so that plain TCP
/// is served on the socket itself.
async fn serve_http<I>(
    ctx: &ListenerCtx,
    router: Router,
    io: I,
    slot: Arc<ConnSlot>,
    version: Version,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A client that stops reading its answers ends its connection (see `write_deadline`), on
    // either version.
    let io = crate::write_deadline::WriteDeadline::for_listener(io, &ctx.cfg);
    let route = Route {
        cfg: Arc::clone(&ctx.cfg),
        router,
        slot,
    };
    match version {
        Version::Http1 => {
            // The first request head is read here: an event stream is served outside hyper
            // (`native`), anything else goes to hyper with the bytes read so far.
            let (io, prefix) = match first_request(ctx, &route, io).await {
                Some(next) => next,
                None => return,
            };
            // Boxed, so that hyper's connection state is no part of the task of a connection
            // that carries an event stream.
            Box::pin(serve_http1(ctx, route, native::Rewind::new(prefix, io))).await;
        }
        // Boxed, so that the HTTP/2 connection's state is no part of the task of every HTTP/1.1
        // connection.
        Version::Http2(h2) => Box::pin(serve_http2(ctx, route, io, h2)).await,
    }
}

/// Reads the first request head of an HTTP/1.1 connection (within the header deadline, as
/// hyper does) and serves it when it is an event stream. `None`: the connection is done;
/// otherwise hyper serves it, the returned bytes (read here, not served) first.
async fn first_request<I>(ctx: &ListenerCtx, route: &Route, mut io: I) -> Option<(I, Bytes)>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let peer = route.slot.peer;
    // The header deadline starts now, after any TLS handshake; a head that does not come in time
    // closes the connection, as hyper does.
    let first = tokio::select! {
        r = tokio::time::timeout(ctx.cfg.handshake_timeout, Box::pin(native::read_first(&mut io))) => match r {
            Ok(Ok(first)) => first,
            Ok(Err(e)) => {
                tracing::debug!(listener = %ctx.cfg.name, %peer, error = %e, "http connection ended with an error");
                return None;
            }
            Err(_) => {
                tracing::debug!(listener = %ctx.cfg.name, %peer, "no request head in time");
                return None;
            }
        },
        _ = ctx.generation.cancelled() => return None,
    };
    let req = match first {
        native::First::Closed => return None,
        native::First::Hyper(prefix) => return Some((io, prefix)),
        native::First::Events(req) => req,
    };
    // Like `drive`: at shutdown or reload the stream ends on its own (its `end` event), within
    // the connection's time to finish.
    let mut served = std::pin::pin!(native::serve(ctx, route, io, req));
    let next = tokio::select! {
        next = served.as_mut() => next,
        _ = ctx.generation.cancelled() => {
            tokio::time::timeout(finish_time(ctx), served).await.ok()?
        }
    };
    match next {
        native::Next::Hyper(io, prefix) => Some((io, prefix)),
        native::Next::Done => None,
    }
}

/// Serves HTTP/1.1 (and upgrades to WebSocket) on `io` with hyper.
async fn serve_http1<I>(ctx: &ListenerCtx, route: Route, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = route.slot.peer;
    let svc = service_fn(move |req| route.call(req));
    let conn = http_builder(ctx)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    drive(ctx, peer, conn, |c| c.graceful_shutdown(), None).await;
}

/// Serves HTTP/2 on `io`: each stream takes its place before it is routed, and holds it until
/// its answer ends (see [`crate::http2`]).
async fn serve_http2<I>(ctx: &ListenerCtx, route: Route, io: I, h2: Http2Config)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = route.slot.peer;
    let streams = Arc::new(crate::http2::Streams::new(ctx, Arc::clone(&route.slot)));
    let goaway = streams.goaway();
    let svc = service_fn(move |req| {
        let place = match streams.admit() {
            Ok(place) => place,
            Err(e) => return Either::Left(std::future::ready(Ok(errors::error_response(&e)))),
        };
        let (streams, unanswered) = (Arc::clone(&streams), streams.unanswered());
        Either::Right(route.call(req).map_ok(move |resp| {
            unanswered.answered();
            streams.respond(resp, place)
        }))
    });
    let conn = crate::http2::builder(ctx, h2).serve_connection(TokioIo::new(io), svc);
    drive(ctx, peer, conn, |c| c.graceful_shutdown(), Some(goaway)).await;
}

/// What every request of a connection goes through before the router: the cross-site check
/// (once for every route and every WebSocket handshake, but the probes, which reveal nothing),
/// then the connection's slot in the request's extensions.
struct Route {
    cfg: Arc<ListenerConfig>,
    router: Router,
    slot: Arc<ConnSlot>,
}

type Routed<B> = Either<
    std::future::Ready<Result<axum::response::Response, std::convert::Infallible>>,
    tower::util::Oneshot<Router, hyper::Request<B>>,
>;

impl Route {
    /// Routes a request read by hyper ([`hyper::body::Incoming`] body) or by [`native`] (no body).
    fn call<B>(&self, mut req: hyper::Request<B>) -> Routed<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let (cfg, peer) = (&self.cfg, self.slot.peer);
        let probe = crate::health::is_probe(req.uri().path())
            && !crate::upgrade::is_upgrade_request(req.headers());
        if !probe && let Err(e) = crate::cross_site::check(cfg, req.headers(), req.uri()) {
            tracing::debug!(listener = %cfg.name, %peer, origin = ?req.headers().get(hyper::header::ORIGIN), host = ?req.headers().get(hyper::header::HOST), "cross-site request refused");
            return Either::Left(std::future::ready(Ok(errors::error_response(&e))));
        }
        req.extensions_mut().insert(Arc::clone(&self.slot));
        Either::Right(self.router.clone().oneshot(req))
    }
}

/// Runs a connection until it ends; at shutdown or reload (or when `goaway` is cancelled) ends
/// it gracefully with `shut` (HTTP/1.1: after the request in progress; HTTP/2: GOAWAY, then the
/// streams running finish), giving it 5 seconds.
async fn drive<C>(
    ctx: &ListenerCtx,
    peer: SocketAddr,
    conn: C,
    shut: impl FnOnce(Pin<&mut C>),
    goaway: Option<CancellationToken>,
) where
    C: Future<Output = hyper::Result<()>>,
{
    let mut conn = std::pin::pin!(conn);
    let goaway = async {
        match goaway {
            Some(token) => token.cancelled_owned().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(listener = %ctx.cfg.name, %peer, error = %e, "http connection ended with an error");
            }
            return;
        }
        // Shutdown, or a reload (the client's next connection gets the new configuration).
        _ = ctx.generation.cancelled() => {}
        _ = goaway => {}
    }
    shut(conn.as_mut());
    // What is running finishes: at least 5 s, and at shutdown until the last turn of the close
    // schedule (an event stream on this connection ends with its `end` event on its turn).
    let _ = tokio::time::timeout(finish_time(ctx), conn).await;
}

/// How long a connection asked to end gracefully has to finish: at least 5 s, and at shutdown
/// until the last turn of the close schedule and a second more.
fn finish_time(ctx: &ListenerCtx) -> Duration {
    ctx.closing.remaining().map_or(CONNECTION_FINISH, |r| {
        r.max(CONNECTION_FINISH) + Duration::from_secs(1)
    })
}

/// How long a connection asked to end gracefully may take to finish what it is doing.
const CONNECTION_FINISH: Duration = Duration::from_secs(5);

/// Refuses a connection with `error` (503 over `max_connections` or the descriptor budget, 429
/// over a per-address limit) at once, without waiting for its request: the answer is written as
/// soon as the connection is accepted (after the TLS handshake on a TLS listener, so a TLS client
/// reads it, not a protocol error), then the connection is half-closed and whatever the client
/// sends is read and dropped until it closes, so its request does not turn our close into a reset
/// that could destroy the answer before the client reads it. All of it within
/// [`REFUSAL_DEADLINE`], holding its `_places` (see [`refusal_places`]): a refusal costs nothing
/// lasting.
async fn refuse(
    ctx: Arc<ListenerCtx>,
    stream: TcpStream,
    error: ProtoError,
    _places: (RefusalGuard, Pending),
) {
    let _gauge = ctx.stats.connection();
    let answer = errors::refusal_bytes(&error);
    let refused = async {
        match &ctx.tls {
            None => answer_and_close(stream, &answer).await,
            Some(tls) => {
                let stream = tls.refusal_acceptor().accept(stream).await?;
                answer_and_close(stream, &answer).await
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(REFUSAL_DEADLINE, Box::pin(refused)) => {}
        _ = ctx.shutdown.cancelled() => {}
    }
}

async fn answer_and_close<I>(mut io: I, answer: &[u8]) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(answer).await?;
    io.shutdown().await?;
    let mut sink = [0u8; 1024];
    while io.read(&mut sink).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_size<F, Fut>(_: &F) -> usize
    where
        F: FnOnce(Arc<ListenerCtx>, Router, TcpStream, SocketAddr, Admitted) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// The size of the future `f` returns, without calling it.
    fn size<A, B, C, D, F, Fut>(_: &F) -> usize
    where
        F: FnOnce(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every event stream's connection holds its connection task's future for the stream's
    /// life: served outside hyper, it holds none of hyper's connection state (boxed, and only for
    /// the connections hyper serves) nor its buffers. Printed with `--nocapture`; the bound has
    /// some slack for compiler versions (docs/performance.md, "Event streams outside hyper").
    #[test]
    fn a_connection_task_stays_small() {
        type Io = crate::write_deadline::WriteDeadline<TcpStream>;
        let task = task_size(&serve_connection);
        let serve = size::<
            &'static ListenerCtx,
            &'static Route,
            Io,
            Box<hyper::Request<axum::body::Body>>,
            _,
            _,
        >(&native::serve::<Io>);
        let first = size::<&'static ListenerCtx, &'static Route, Io, (), _, _>(&|a, b, c, _| {
            first_request(a, b, c)
        });
        let http =
            size::<&'static ListenerCtx, Router, TcpStream, Arc<ConnSlot>, _, _>(&|a, b, c, d| {
                serve_http(a, b, c, d, Version::Http1)
            });
        println!(
            "connection task future {task} bytes; serve_http {http}, first_request {first}, native::serve {serve}"
        );
        assert!(task <= 2048, "connection task future: {task} bytes");
    }
}
