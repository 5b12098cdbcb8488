//! The byte stream under a connection, whatever carries it: TCP, TLS, WebSockets. The
//! connection loop (`connection.rs`) and the broker core are the same for every transport; a
//! transport only reads into the connection's buffer, writes, flushes and shuts down.
//!
//! Reads reserve buffer space only once bytes are there, so an idle connection holds no read
//! buffer (plain TCP waits for readiness first; the others do what they can to match).

use std::io;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// Bytes reserved for each read.
pub(crate) const READ_CHUNK: usize = 4 * 1024;

/// What the connection loop needs from a transport. Every method is polled from the
/// connection's own task only (reads and writes never run concurrently).
pub(crate) trait Transport: Send + Unpin {
    /// Reads what is available, appending it to `buf`; `Ready(Ok(0))` at the end of the
    /// stream.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>>;

    /// Writes some of `buf`; the number of bytes taken.
    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;

    /// Sends what the transport buffered itself (TLS records, WebSocket frames). Plain TCP has
    /// nothing to flush.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ends the sending side (after flushing): TCP FIN, TLS close_notify, WebSocket close.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Makes room for a read at the end of `buf` (at least half a chunk).
pub(crate) fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
}

/// MQTT over TCP.
pub(crate) struct TcpTransport {
    stream: TcpStream,
}

impl TcpTransport {
    pub(crate) fn new(stream: TcpStream) -> TcpTransport {
        TcpTransport { stream }
    }
}

impl Transport for TcpTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        loop {
            // Readiness first: the buffer is reserved only when there is something to read.
            ready!(self.stream.poll_read_ready(cx))?;
            reserve_for_read(buf);
            match self.stream.try_read_buf(buf) {
                // A spurious readiness: `try_read_buf` cleared it, so the next poll waits.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
