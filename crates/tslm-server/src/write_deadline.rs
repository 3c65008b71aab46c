//! A write deadline for a connection's socket: [`WriteDeadline`] fails a write (or flush) that
//! makes no progress for its deadline with `TimedOut`, which ends the connection.
//!
//! hyper has no write timeout, and it polls a response body only when its own write buffer has
//! room: once a client stops reading, the socket blocks, hyper waits on it for ever and nothing in
//! a handler or a body can end the wait. A long-poll answer (or any answer) that its client never
//! reads would hold the connection task, its slot under `max_connections` and the per-address
//! limits, and the answer's bytes. The deadline is measured on the socket itself, from the first
//! write that could not go through, and forgotten at each write that does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io` whose writes fail with `TimedOut` once none has progressed for `deadline`.
pub(crate) struct WriteDeadline<I> {
    io: I,
    deadline: Duration,
    /// Armed by a write that could not go through; disarmed by one that did. Boxed: a
    /// connection that is not blocked pays one pointer.
    blocked: Option<Pin<Box<Sleep>>>,
}

impl<I> WriteDeadline<I> {
    pub(crate) fn new(io: I, deadline: Duration) -> Self {
        Self {
            io,
            deadline,
            blocked: None,
        }
    }

    /// The write deadline of a listener's HTTP connections: its WebSocket write deadline
    /// (`ping_interval + pong_timeout`) and 2 s more, so that a WebSocket session's own deadline
    /// (close 4000, counted as a slow consumer) always comes first.
    pub(crate) fn for_listener(io: I, cfg: &crate::config::ListenerConfig) -> Self {
        Self::new(
            io,
            cfg.ping_interval + cfg.pong_timeout + Duration::from_secs(2),
        )
    }

    /// After a write operation: `Pending` arms the deadline (and fails once it passed),
    /// anything else disarms it.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.blocked = None;
            return r;
        }
        let deadline = self.deadline;
        let sleep = self
            .blocked
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer read nothing within the write deadline",
        )))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A peer that reads nothing: writes block, and after the deadline fail with `TimedOut`.
    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_for_the_deadline_fails() {
        let (a, _b) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(a, Duration::from_secs(5));
        w.write_all(&[0; 64]).await.unwrap();
        let e = w.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    /// A peer that reads, however slowly, keeps the connection: each write that goes through
    /// disarms the deadline.
    #[tokio::test(start_paused = true)]
    async fn progress_disarms_the_deadline() {
        let (a, mut b) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(a, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut total = 0;
            while total < 160 {
                // Each read comes 4 s after the previous one: within the deadline, never twice.
                tokio::time::sleep(Duration::from_secs(4)).await;
                total += b.read(&mut buf).await.unwrap();
            }
            total
        });
        w.write_all(&[1; 160]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 160);
    }
}
