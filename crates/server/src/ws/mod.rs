//! MQTT over WebSockets (RFC 6455; MQTT 5.0 section 6): [`accept`] runs the HTTP/1.1 upgrade
//! (`upgrade.rs`: read with a bounded buffer, parsed with httparse, one HTTP status per cause of
//! refusal) and hands the stream to [`WsTransport`], which carries the MQTT byte stream in binary
//! frames with our own streaming frame layer (`frame.rs`). Both are generic over the stream, so
//! `wss` is the same upgrade run over a TLS stream.
//!
//! Why our own framing: MQTT is a byte stream and never needs a whole frame, while a WebSocket
//! library reads whole frames (or messages) into a buffer reserved at the announced length (up
//! to the limit) and kept. Here a frame's payload is unmasked straight into the connection's
//! read buffer as its bytes come: a client announcing a large frame and stalling costs nothing,
//! and no frame is allocated. tungstenite is still used for the accept key of the upgrade.

mod frame;
mod upgrade;

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::listener_config::ListenerConfig;
use crate::transport::{READ_CHUNK, Transport};
use frame::{Control, FrameError, FrameReader, MAX_SERVER_HEADER, Opcode, encode_header};
use upgrade::{Refusal, check_request, read_request_head, refuse};

/// Most bytes sent in one frame: with its 4-byte header, one full TLS record (16 KiB) over wss.
const MAX_FRAME_OUT: usize = 16 * 1024 - 4;
/// A frame may be this much over the maximum packet size, for a client that puts a full packet
/// and a few small ones in one frame.
const FRAME_SLACK: usize = 64 * 1024;
/// Reading waits while more than this is queued to send (the rest of a frame, answers to pings
/// a client does not read): what a connection queues stays under this and one read's answers.
const OUT_LIMIT: usize = MAX_FRAME_OUT + MAX_SERVER_HEADER;
/// Close codes (RFC 6455 section 7.4.1).
const CLOSE_NORMAL: u16 = 1000;

/// Why a connection did not become a WebSocket.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("WebSocket upgrade refused with {status}: {0}", status = .0.status().0)]
    Refused(Refusal),
    #[error("the connection closed during the WebSocket upgrade")]
    Closed,
    #[error("WebSocket upgrade: {0}")]
    Io(#[from] io::Error),
}

impl From<UpgradeError> for io::Error {
    fn from(error: UpgradeError) -> io::Error {
        match error {
            UpgradeError::Io(error) => error,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}

/// Runs the upgrade on `stream` (TCP, or TLS for `wss`) as `config` (its path, allowed origins
/// and trusted proxies) says, and returns the WebSocket transport and the client's address:
/// `peer`, or the one `X-Forwarded-For` gives when `peer` is a trusted proxy. A request that is
/// refused is answered with its HTTP error and the stream closed. The caller bounds the time.
/// `max_packet_size` is the broker's, which bounds frames.
pub(crate) async fn accept<S>(
    mut stream: S,
    peer: SocketAddr,
    config: &ListenerConfig,
    max_packet_size: u32,
) -> Result<(WsTransport<S>, SocketAddr), UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = Vec::new();
    let checked = match read_request_head(&mut stream, &mut buf).await? {
        Ok(head_len) => check_request(&buf[..head_len], config, peer).map(|up| (up, head_len)),
        Err(refusal) => Err(refusal),
    };
    let (upgrade, head_len) = match checked {
        Ok(accepted) => accepted,
        Err(refusal) => {
            refuse(&mut stream, refusal, &mut buf).await;
            return Err(UpgradeError::Refused(refusal));
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
        upgrade.accept_key, upgrade.subprotocol
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await?;
    // What the client sent after the request (its first frames) is the WebSocket's: copied
    // out, so that the request's buffer (up to 64 KiB) is not kept.
    let early = buf[head_len..].to_vec();
    drop(buf);
    let max_frame = u64::from(max_packet_size).saturating_add(FRAME_SLACK as u64);
    Ok((WsTransport::new(stream, early, max_frame), upgrade.client))
}

/// MQTT over an upgraded WebSocket: the payloads of binary frames (and their continuations)
/// are the MQTT byte stream (a packet may span frames, a frame may hold several packets
/// [MQTT-6.0.0-2]); what the connection writes goes out in binary frames. A ping is answered
/// with a pong as it is read (sent at once, also on an otherwise idle connection: the loop
/// flushes the transport whenever it has nothing else to write); a close frame from the client
/// is answered with a close frame and ends the stream; a text frame [MQTT-6.0.0-1], an
/// oversized frame or a protocol error ends it too, and the close frame sent at shutdown says
/// why (1003, 1009, 1002). Shutting down sends a close frame (1000 otherwise), then ends the
/// stream under it (FIN, or TLS close_notify then FIN).
pub(crate) struct WsTransport<S> {
    /// Boxed: the connection's task stays small, and so does the future of every listener that
    /// could produce one.
    inner: Box<Inner<S>>,
}

struct Inner<S> {
    stream: S,
    reader: FrameReader,
    /// Bytes that came behind the upgrade request, read before the stream (then freed).
    early: Vec<u8>,
    /// Bytes to send: the rest of a frame the stream did not take whole, answers to control
    /// frames. Freed when empty.
    out: BytesMut,
    /// The frames read went wrong: returned once the data before it is taken.
    failed: Option<FrameError>,
    /// The code of the close frame sent at shutdown.
    close_code: u16,
    /// A close frame is queued or sent: no data frames after it.
    close_sent: bool,
    /// The client closed (a close frame, the end of the stream) or its frames were refused.
    read_closed: bool,
    /// The end (or the error) has been returned: reads now drop what the client still sends
    /// (the drain of the connection's close).
    discarding: bool,
}

impl<S> WsTransport<S> {
    fn new(stream: S, early: Vec<u8>, max_frame: u64) -> WsTransport<S> {
        WsTransport {
            inner: Box::new(Inner {
                stream,
                reader: FrameReader::new(max_frame),
                early,
                out: BytesMut::new(),
                failed: None,
                close_code: CLOSE_NORMAL,
                close_sent: false,
                read_closed: false,
                discarding: false,
            }),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Inner<S> {
    /// Queues a control frame (FIN set, unmasked) with `payload` (at most 125 bytes).
    fn queue_control(&mut self, opcode: Opcode, payload: &[u8]) {
        let mut header = [0u8; MAX_SERVER_HEADER];
        let len = encode_header(opcode, payload.len(), &mut header);
        self.out.extend_from_slice(&header[..len]);
        self.out.extend_from_slice(payload);
    }

    /// Queues our close frame with `code`, once.
    fn queue_close(&mut self, code: Option<u16>) {
        if !self.close_sent {
            self.close_sent = true;
            let payload = code.map(u16::to_be_bytes);
            self.queue_control(Opcode::Close, payload.as_ref().map_or(&[][..], |p| &p[..]));
        }
    }

    /// Runs the reader over all of `input`: data to the end of `buf` (the number of bytes
    /// returned), control frames answered (queued). A close frame or an error ends reading.
    fn absorb(&mut self, mut input: &[u8], buf: &mut BytesMut) -> usize {
        // Counted on the buffer: an error after whole frames still leaves their data there.
        let before = buf.len();
        while !input.is_empty() && !self.read_closed {
            match self.reader.read(input, buf) {
                Ok(progress) => {
                    input = &input[progress.consumed..];
                    match progress.control {
                        // Not after our close (RFC 6455 section 5.5.1: nothing follows it), and
                        // not while answers already wait unread: a Pong may answer only the
                        // latest Ping (section 5.5.3), so what is queued stays bounded.
                        Some(Control::Ping(payload))
                            if !self.close_sent && self.out.len() < OUT_LIMIT =>
                        {
                            self.queue_control(Opcode::Pong, &payload)
                        }
                        Some(Control::Ping(_)) => {}
                        Some(Control::Pong) | None => {}
                        Some(Control::Close(code)) => {
                            // The client's code echoed (RFC 6455 section 5.5.1).
                            self.queue_close(code);
                            self.read_closed = true;
                        }
                    }
                }
                Err(error) => {
                    self.close_code = error.close_code();
                    self.failed = Some(error);
                    self.read_closed = true;
                }
            }
        }
        buf.len() - before
    }

    /// Sends what is queued, then flushes the stream; ready once all of it has gone.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        // Freed even when it reports no capacity (advanced to its end, it keeps its allocation).
        self.out = BytesMut::new();
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Starts sending what is queued (answers to control frames) without waiting for it: what
    /// the stream does not take now goes with the next flush or write.
    fn start_send(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.poll_send(cx) {
            Poll::Ready(Err(error)) => Err(error),
            _ => Ok(()),
        }
    }
}

impl<S> Transport for WsTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        let this = &mut *self.inner;
        // Read into a buffer on the stack, so that nothing is held while the stream has nothing
        // to read; payloads are unmasked from it into `buf`.
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if this.discarding {
                let mut read = ReadBuf::new(&mut chunk);
                ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
                return Poll::Ready(Ok(read.filled().len()));
            }
            if let Some(error) = this.failed.take() {
                this.discarding = true;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
            }
            if this.read_closed {
                this.discarding = true;
                return Poll::Ready(Ok(0));
            }
            if !this.early.is_empty() {
                let early = std::mem::take(&mut this.early);
                let data = this.absorb(&early, buf);
                drop(early);
                this.start_send(cx)?;
                if data > 0 {
                    return Poll::Ready(Ok(data));
                }
                continue;
            }
            // A client that makes us answer without reading the answers is read no further
            // until it does: what waits to be sent stays bounded.
            if this.out.len() > OUT_LIMIT {
                ready!(this.poll_send(cx))?;
            }
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.read_closed = true;
                continue;
            }
            let data = this.absorb(read.filled(), buf);
            if !this.out.is_empty() {
                this.start_send(cx)?;
            }
            if data > 0 {
                return Poll::Ready(Ok(data));
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self.inner;
        // The rest of the last frame (and any answers) first: at most one frame waits.
        ready!(this.poll_send(cx))?;
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = buf.len().min(MAX_FRAME_OUT);
        let payload = &buf[..n];
        let mut header = [0u8; MAX_SERVER_HEADER];
        let header_len = encode_header(Opcode::Binary, n, &mut header);
        // Header and payload in one write where the stream takes several buffers (TCP); what it
        // does not take of the frame is queued. Otherwise (TLS) the frame is queued whole.
        let written = if this.stream.is_write_vectored() {
            let slices = [IoSlice::new(&header[..header_len]), IoSlice::new(payload)];
            match ready!(Pin::new(&mut this.stream).poll_write_vectored(cx, &slices))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                written => written,
            }
        } else {
            0
        };
        if written < header_len {
            this.out.extend_from_slice(&header[written..header_len]);
            this.out.extend_from_slice(payload);
        } else {
            this.out.extend_from_slice(&payload[written - header_len..]);
        }
        if !this.out.is_empty() {
            this.start_send(cx)?;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_send(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self.inner;
        let code = this.close_code;
        this.queue_close(Some(code));
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

/// What an idle WebSocket connection holds besides the stream (no buffer while idle): the
/// transport in the connection's task (one pointer) and its state in the box.
#[cfg(test)]
mod size_probe {
    #[test]
    fn sizes() {
        eprintln!(
            "WsTransport {} Inner<TcpStream> {} Inner<TlsTransport> {}",
            std::mem::size_of::<super::WsTransport<tokio::net::TcpStream>>(),
            std::mem::size_of::<super::Inner<tokio::net::TcpStream>>(),
            std::mem::size_of::<super::Inner<crate::tls_transport::TlsTransport>>(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::*;

    const MAX_PACKET: u32 = 1024 * 1024;

    fn config() -> ListenerConfig {
        toml::from_str("name = \"w\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\n").unwrap()
    }

    /// Upgrades by hand over an in-memory stream of `capacity` bytes each way, with `first`
    /// sent in the same write as the request.
    async fn upgraded(capacity: usize, first: &[u8]) -> (WsTransport<DuplexStream>, DuplexStream) {
        let (server_side, mut client) = tokio::io::duplex(capacity);
        let peer: SocketAddr = "192.0.2.1:4711".parse().unwrap();
        let server =
            tokio::spawn(async move { accept(server_side, peer, &config(), MAX_PACKET).await });
        let mut request = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
            .to_vec();
        request.extend_from_slice(first);
        client.write_all(&request).await.unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\n") {
            response.push(client.read_u8().await.unwrap());
        }
        assert!(response.starts_with(b"HTTP/1.1 101 "));
        let (transport, _) = server.await.unwrap().unwrap();
        (transport, client)
    }

    /// A masked client frame header (FIN set) announcing `len` bytes, with the key 1, 2, 3, 4.
    fn header(opcode: u8, len: u64) -> Vec<u8> {
        let mut frame = vec![0x80 | opcode, 0x80 | 127];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        frame
    }

    fn masked(payload: &[u8], phase: usize) -> Vec<u8> {
        let key = [1u8, 2, 3, 4];
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[(i + phase) % 4])
            .collect()
    }

    /// One poll of a read: `None` if it is pending.
    async fn read_now(
        transport: &mut WsTransport<DuplexStream>,
        buf: &mut BytesMut,
    ) -> Option<io::Result<usize>> {
        match poll_fn(|cx| Poll::Ready(transport.poll_read(cx, buf))).await {
            Poll::Ready(result) => Some(result),
            Poll::Pending => None,
        }
    }

    /// `accept` and `WsTransport` work over any stream (here an in-memory one, for `wss` a TLS
    /// stream) with a client we did not write (tokio-tungstenite): the upgrade, a frame each way,
    /// a ping answered, and the close frame at shutdown.
    #[tokio::test]
    async fn upgrade_and_frames_over_any_stream() {
        let (server_side, client_side) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = "192.0.2.1:4711".parse().unwrap();
        let server =
            tokio::spawn(async move { accept(server_side, peer, &config(), MAX_PACKET).await });
        let mut request = "ws://localhost/mqtt".into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let (mut client, _) = tokio_tungstenite::client_async(request, client_side)
            .await
            .unwrap();
        let (mut transport, client_addr) = server.await.unwrap().unwrap();
        assert_eq!(client_addr, peer);

        client
            .send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let n = poll_fn(|cx| transport.poll_read(cx, &mut buf))
            .await
            .unwrap();
        assert_eq!((n, &buf[..]), (3, &[1u8, 2, 3][..]));

        let n = poll_fn(|cx| transport.poll_write(cx, b"abc"))
            .await
            .unwrap();
        assert_eq!(n, 3);
        poll_fn(|cx| transport.poll_flush(cx)).await.unwrap();
        match client.next().await {
            Some(Ok(Message::Binary(data))) => assert_eq!(&data[..], b"abc"),
            other => panic!("expected a binary frame, got {other:?}"),
        }

        client.send(Message::Ping(vec![9, 8].into())).await.unwrap();
        client.send(Message::Binary(vec![4].into())).await.unwrap();
        let n = poll_fn(|cx| transport.poll_read(cx, &mut buf))
            .await
            .unwrap();
        assert_eq!((n, &buf[3..]), (1, &[4u8][..]));
        match client.next().await {
            Some(Ok(Message::Pong(data))) => assert_eq!(&data[..], &[9, 8]),
            other => panic!("expected a pong, got {other:?}"),
        }

        poll_fn(|cx| transport.poll_shutdown(cx)).await.unwrap();
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Review finding 1: a frame announced just under the limit, part of it sent, then a stall:
    /// the transport holds no buffer of the announced size (the payload that came is in the
    /// connection's buffer, as much as came; nothing else is held). The first part arrives in
    /// the same write as the upgrade request and is not lost.
    #[tokio::test]
    async fn stalled_large_frame_holds_no_buffer() {
        let limit = u64::from(MAX_PACKET) + FRAME_SLACK as u64;
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut first = header(0x2, limit - 1);
        first.extend(masked(&payload[..1000], 0));
        let (mut transport, mut client) = upgraded(64 * 1024, &first).await;
        let mut buf = BytesMut::new();
        assert_eq!(
            read_now(&mut transport, &mut buf).await.unwrap().unwrap(),
            1000
        );
        assert!(read_now(&mut transport, &mut buf).await.is_none(), "waits");
        client
            .write_all(&masked(&payload[1000..], 1000))
            .await
            .unwrap();
        while buf.len() < payload.len() {
            let n = poll_fn(|cx| transport.poll_read(cx, &mut buf))
                .await
                .unwrap();
            assert!(n > 0);
        }
        assert_eq!(&buf[..], &payload[..]);
        assert!(
            read_now(&mut transport, &mut buf).await.is_none(),
            "stalled"
        );
        let inner = &transport.inner;
        assert!(
            buf.capacity() < 64 * 1024,
            "the connection's buffer: {}",
            buf.capacity()
        );
        assert_eq!(
            (
                inner.out.capacity(),
                inner.early.capacity(),
                inner.reader.held()
            ),
            (0, 0, 0),
            "the transport holds nothing while the frame stalls"
        );
    }

    /// RFC 6455 section 5.1: an unmasked frame is a protocol error (close 1002); a text frame
    /// [MQTT-6.0.0-1] closes with 1003, a frame over the limit with 1009 before its payload;
    /// the data before the bad frame is delivered first.
    #[tokio::test]
    async fn bad_frames_close_with_their_code() {
        for (frame, code) in [
            (vec![0x82, 0x01, 0x00], 1002u16),
            (header(0x1, 1), 1003),
            (
                header(0x2, u64::from(MAX_PACKET) + FRAME_SLACK as u64 + 1),
                1009,
            ),
        ] {
            let mut first = header(0x2, 2);
            first.extend(masked(b"ok", 0));
            first.extend(&frame);
            let (mut transport, mut client) = upgraded(64 * 1024, &first).await;
            let mut buf = BytesMut::new();
            let n = poll_fn(|cx| transport.poll_read(cx, &mut buf))
                .await
                .unwrap();
            assert_eq!((n, &buf[..]), (2, &b"ok"[..]));
            assert!(
                poll_fn(|cx| transport.poll_read(cx, &mut buf))
                    .await
                    .is_err()
            );
            poll_fn(|cx| transport.poll_shutdown(cx)).await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            let mut expected = vec![0x88, 2];
            expected.extend_from_slice(&code.to_be_bytes());
            assert_eq!(rest, expected, "close code {code}");
        }
    }

    /// RFC 6455 section 5.5.1: a close frame is answered with a close frame echoing its code,
    /// then the stream ends (no second close at shutdown); what the client still sends is dropped.
    #[tokio::test]
    async fn close_answered_and_stream_ends() {
        let mut first = header(0x8, 2);
        first.extend(masked(&1001u16.to_be_bytes(), 0));
        let (mut transport, mut client) = upgraded(64 * 1024, &first).await;
        let mut buf = BytesMut::new();
        let n = poll_fn(|cx| transport.poll_read(cx, &mut buf))
            .await
            .unwrap();
        assert_eq!(n, 0);
        // What comes after is read and dropped (the drain of the connection's close).
        client.write_all(b"late").await.unwrap();
        let n = poll_fn(|cx| transport.poll_read(cx, &mut buf))
            .await
            .unwrap();
        assert_eq!((n, buf.len()), (4, 0));
        poll_fn(|cx| transport.poll_shutdown(cx)).await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, vec![0x88, 2, 0x03, 0xE9]);
    }

    /// Writes over a stream that takes little at a time: every byte reported written is sent
    /// in order, frames of at most 16 KiB, and what waits in the transport is at most one frame
    /// (freed once sent).
    #[tokio::test]
    async fn partial_writes_keep_frames_whole() {
        let (mut transport, mut client) = upgraded(100, &[]).await;
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        let reader = tokio::spawn(async move {
            let mut received = Vec::new();
            while received.len() < 100_000 {
                let b0 = client.read_u8().await.unwrap();
                assert_eq!(b0, 0x82, "a binary frame with FIN");
                let len = match client.read_u8().await.unwrap() {
                    126 => usize::from(client.read_u16().await.unwrap()),
                    127 => usize::try_from(client.read_u64().await.unwrap()).unwrap(),
                    short => usize::from(short),
                };
                assert!(len <= MAX_FRAME_OUT, "frame of {len}");
                let mut payload = vec![0u8; len];
                client.read_exact(&mut payload).await.unwrap();
                received.extend(payload);
            }
            received
        });
        let mut sent = 0;
        while sent < data.len() {
            let n = poll_fn(|cx| transport.poll_write(cx, &data[sent..]))
                .await
                .unwrap();
            assert!(transport.inner.out.len() <= MAX_FRAME_OUT + MAX_SERVER_HEADER);
            sent += n;
        }
        poll_fn(|cx| transport.poll_flush(cx)).await.unwrap();
        assert_eq!(transport.inner.out.capacity(), 0);
        assert_eq!(reader.await.unwrap(), data);
    }
}
