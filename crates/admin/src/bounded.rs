//! The admin listener's connections, bounded: at most `max_connections` at once (beyond it,
//! new ones wait in the kernel's backlog until one ends), and each closed after
//! `idle_timeout` without a byte in either direction, and each request bounded in time: it
//! must arrive whole within `request_timeout` of its first byte, and its answer be taken
//! within `request_timeout` of the answer's first byte (a peer that trickles one byte before
//! each idle timeout would otherwise keep its connection for ever). Without them, anyone who can reach the
//! port — no token needed to open a connection — could hold connections open until the
//! process runs out of descriptors, or keep the API's slots taken with silent connections.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// A listener whose connections hold a permit each and time out when idle.
pub(crate) struct BoundedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    request_timeout: Duration,
}

impl BoundedListener {
    pub(crate) fn new(
        inner: TcpListener,
        max_connections: usize,
        idle_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        BoundedListener {
            inner,
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            idle_timeout,
            request_timeout,
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (BoundedStream, std::net::SocketAddr) {
        loop {
            // Never closed, so acquiring fails never; if it did, waiting a little beats spinning.
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let stream =
                        BoundedStream::new(stream, permit, self.idle_timeout, self.request_timeout);
                    return (stream, addr);
                }
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was accepted: say
                    // so, and do not spin on it.
                    tracing::warn!(%error, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// Where a connection is in its request/answer cycle, for the request deadline. HTTP/1
/// without pipelining (hyper reads the next request once it has answered the last): the
/// first byte read after an answer starts a request, the first byte written after a
/// request starts its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing read yet, or an answer written: reads wait for a request (the idle timeout
    /// bounds them).
    Waiting,
    /// A request is arriving: it must be whole by the deadline.
    Reading,
    /// An answer is going out: the peer must take it by the deadline.
    Writing,
}

/// A connection of the admin listener: its permit is given back when it is dropped.
pub(crate) struct BoundedStream {
    stream: TcpStream,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    phase: Phase,
    deadline: Pin<Box<Sleep>>,
    request_timeout: Duration,
    _permit: OwnedSemaphorePermit,
}

impl BoundedStream {
    fn new(
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        idle_timeout: Duration,
        request_timeout: Duration,
    ) -> Self {
        BoundedStream {
            stream,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            phase: Phase::Waiting,
            deadline: Box::pin(tokio::time::sleep(request_timeout)),
            request_timeout,
            _permit: permit,
        }
    }

    fn active(&mut self) {
        self.idle.as_mut().reset(Instant::now() + self.idle_timeout);
    }

    /// Moves to `phase` (a request or an answer has started): its deadline starts now.
    fn enter(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.deadline
                .as_mut()
                .reset(Instant::now() + self.request_timeout);
        }
    }

    /// An error when `phase` is under way and has run past its deadline; else registers the
    /// waker with the deadline (when `phase` is under way), so a stalled peer is noticed.
    fn check_deadline(&mut self, phase: Phase, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.phase != phase {
            return None;
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Some(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin request or answer not complete in time",
            )),
            Poll::Pending => None,
        }
    }

    /// Called when an operation would wait: an error once the connection has been idle too long.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.idle.as_mut().poll(cx).map(|()| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "admin connection idle for too long",
            )
        })
    }
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.check_deadline(Phase::Reading, cx) {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.active();
                if result.is_ok() && buf.filled().len() > before {
                    this.enter(Phase::Reading);
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.check_deadline(Phase::Writing, cx) {
            return Poll::Ready(Err(error));
        }
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.active();
                if matches!(result, Ok(n) if n > 0) {
                    this.enter(Phase::Writing);
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.check_deadline(Phase::Writing, cx) {
            return Poll::Ready(Err(error));
        }
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                this.active();
                if matches!(result, Ok(n) if n > 0) {
                    this.enter(Phase::Writing);
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
