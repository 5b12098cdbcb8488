//! MQTT over WebSockets (RFC 6455; MQTT 5.0 section 6): [`accept`] runs the HTTP/1.1 upgrade
//! (`upgrade.rs`: read with a bounded buffer, parsed with httparse, one HTTP status per cause of
//! refusal) and hands the stream to [`WsTransport`], which carries the MQTT byte stream in binary
//! frames through tokio-tungstenite. Both are generic over the stream, so `wss` is the same
//! upgrade run over a TLS stream.

mod upgrade;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::listener_config::ListenerConfig;
use crate::transport::Transport;
use upgrade::{Refusal, check_request, read_request_head, refuse};

/// tungstenite's read buffer: allocated for the life of the connection, and the most read from
/// the socket at once. The idle cost of a connection against the number of reads for a large
/// packet (docs/architecture.md, "Transports: WebSockets").
const READ_BUFFER: usize = 1024;
/// Most bytes sent in one frame: tungstenite keeps its write buffer at the size of the largest
/// frame, so this bounds what a connection keeps after a burst.
const MAX_FRAME_OUT: usize = 16 * 1024;
/// A frame (or a fragmented message) may be this much over the maximum packet size, for a
/// client that puts a full packet and a few small ones in one frame.
const FRAME_SLACK: usize = 64 * 1024;

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
    // out, so that tungstenite's buffer is not the request's (up to 64 KiB) for good.
    let after_request = buf[head_len..].to_vec();
    drop(buf);
    let ws = WebSocketStream::from_partially_read(
        stream,
        after_request,
        Role::Server,
        Some(frame_config(max_packet_size)),
    )
    .await;
    Ok((WsTransport::new(ws), upgrade.client))
}

/// Frames and messages up to the broker's maximum packet size (and a little); small buffers,
/// frames written at once (`write_buffer_size` 0: the connection loop batches already).
fn frame_config(max_packet_size: u32) -> WebSocketConfig {
    let max = usize::try_from(max_packet_size)
        .unwrap_or(usize::MAX)
        .saturating_add(FRAME_SLACK);
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_frame_size(Some(max))
        .max_message_size(Some(max))
}

/// MQTT over an upgraded WebSocket: the payloads of binary frames are the MQTT byte stream (a
/// packet may span frames, a frame may hold several packets); what the connection writes goes
/// out in binary frames. Pings are answered by tungstenite as it reads (the pong is written at
/// once, also on an otherwise idle connection); a close frame from the client ends the stream;
/// a text frame is an error [MQTT-6.0.0-1]. Shutting down sends a close frame, then ends the
/// stream under it (FIN, or TLS close_notify then FIN).
pub(crate) struct WsTransport<S> {
    /// Boxed: the connection's task stays small, and so does the future of every listener that
    /// could produce one.
    ws: Box<WebSocketStream<S>>,
    /// The code of the close frame sent at shutdown: why the connection ends, if the transport
    /// knows (a text frame, an oversized frame, a protocol error).
    close_code: CloseCode,
    /// The close frame is queued (shutdown has begun).
    close_queued: bool,
}

impl<S> WsTransport<S> {
    fn new(ws: WebSocketStream<S>) -> WsTransport<S> {
        WsTransport {
            ws: Box::new(ws),
            close_code: CloseCode::Normal,
            close_queued: false,
        }
    }
}

/// The close code for an error reading frames.
fn close_code_for(error: &WsError) -> CloseCode {
    match error {
        WsError::Capacity(_) => CloseCode::Size,
        WsError::Protocol(_) => CloseCode::Protocol,
        WsError::Utf8(_) => CloseCode::Invalid,
        _ => CloseCode::Normal,
    }
}

fn io_error(error: WsError) -> io::Error {
    match error {
        WsError::Io(error) => error,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::NotConnected, error)
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S> Transport for WsTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        loop {
            let message = match ready!(self.ws.poll_next_unpin(cx)) {
                // The close handshake is over (or the stream ended after an error).
                None => return Poll::Ready(Ok(0)),
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    self.close_code = close_code_for(&error);
                    return Poll::Ready(Err(io_error(error)));
                }
            };
            match message {
                Message::Binary(data) if !data.is_empty() => {
                    buf.extend_from_slice(&data);
                    return Poll::Ready(Ok(data.len()));
                }
                Message::Text(_) => {
                    // [MQTT-6.0.0-1]: any other type of data frame closes the connection.
                    self.close_code = CloseCode::Unsupported;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame: MQTT travels in binary frames [MQTT-6.0.0-1]",
                    )));
                }
                // A ping's pong, and the reply to a close frame, are queued by tungstenite and
                // written by its next read, which the loop makes now: the reply goes out even
                // if nothing else is happening. After a close, the next read ends the stream.
                Message::Binary(_)
                | Message::Ping(_)
                | Message::Pong(_)
                | Message::Close(_)
                | Message::Frame(_) => continue,
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // Ready once the previous frame is written: at most one frame waits in tungstenite.
        ready!(self.ws.poll_ready_unpin(cx)).map_err(io_error)?;
        let n = buf.len().min(MAX_FRAME_OUT);
        let frame = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
        self.ws.start_send_unpin(frame).map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_flush_unpin(cx).map_err(io_error)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_queued {
            // Errors here mean the WebSocket is closed already: nothing more to say in it.
            if ready!(self.ws.poll_ready_unpin(cx)).is_ok() {
                let frame = CloseFrame {
                    code: self.close_code,
                    reason: "".into(),
                };
                let _ = self.ws.start_send_unpin(Message::Close(Some(frame)));
            }
            self.close_queued = true;
        }
        // Writes the close frame (and a reply the client's close still waits for).
        match ready!(self.ws.poll_close_unpin(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {}
            Err(error) => return Poll::Ready(Err(io_error(error))),
        }
        Pin::new(self.ws.get_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod size_probe {
    #[test]
    fn sizes() {
        eprintln!(
            "WebSocketStream<TcpStream> {}",
            std::mem::size_of::<super::WebSocketStream<tokio::net::TcpStream>>()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    use super::*;

    /// `accept` and `WsTransport` work over any stream (here an in-memory one, for `wss` a TLS
    /// stream): the upgrade, a frame each way, and the close frame at shutdown.
    #[tokio::test]
    async fn upgrade_and_frames_over_any_stream() {
        let (server_side, client_side) = tokio::io::duplex(64 * 1024);
        let config: ListenerConfig =
            toml::from_str("name = \"w\"\nkind = \"wss\"\nbind = \"127.0.0.1:0\"\n").unwrap();
        let peer: SocketAddr = "192.0.2.1:4711".parse().unwrap();
        let server =
            tokio::spawn(async move { accept(server_side, peer, &config, 1024 * 1024).await });
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

        poll_fn(|cx| transport.poll_shutdown(cx)).await.unwrap();
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}
