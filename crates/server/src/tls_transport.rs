//! MQTT over TLS on rustls's unbuffered API (`UnbufferedServerConnection`): the TLS records
//! read, the plaintext decrypted and the records to send are buffers of ours, each held only
//! while it has bytes in it. An idle connection therefore holds no buffer at all, where
//! rustls's buffered connection (and tokio-rustls on it) keeps a 4 KiB read buffer per
//! connection for good after its first read (docs/architecture.md, "Transports: TLS").
//!
//! rustls drives the protocol: [`TlsTransport::process`] hands it the received records and
//! acts on the state it returns (encode a handshake record, take decrypted data, encrypt ours);
//! the socket is only read when it is readable, like `TcpTransport`.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::transport::{READ_CHUNK, Transport};

/// Most plaintext encrypted per write (the connection loop writes at most 64 KiB at a time).
const MAX_WRITE: usize = 64 * 1024;
/// Most received bytes held before rustls has taken a whole message: a handshake flight (rustls
/// allows handshake messages up to 64 KiB) or one record (16 KiB and its overhead).
const MAX_INCOMING: usize = 80 * 1024;

/// What one step of rustls's state machine came to.
enum Step {
    /// rustls did something (encoded a record, gave data); ask again.
    Again,
    /// Nothing to do until more bytes come (in the handshake), or the handshake is done and
    /// nothing is pending (`established`).
    NeedInput { established: bool },
    /// The plaintext given was encrypted: this many bytes of it.
    Encrypted(usize),
    /// The peer sent close_notify.
    PeerClosed,
    /// Both sides have sent close_notify.
    Closed,
}

/// One TLS connection over TCP: the handshake, then a [`Transport`].
pub(crate) struct TlsTransport {
    stream: TcpStream,
    /// Boxed: a kilobyte, moved from the handshake to the connection's task.
    conn: Box<UnbufferedServerConnection>,
    /// TLS bytes received and not yet taken by rustls.
    incoming: BytesMut,
    /// TLS bytes to send.
    outgoing: BytesMut,
    /// Decrypted bytes not yet handed to the reader.
    plaintext: BytesMut,
    /// The peer ended its side (close_notify or end of stream).
    read_closed: bool,
    close_notify_sent: bool,
}

impl TlsTransport {
    /// Runs the server side of the handshake (the caller bounds it with the connect timeout).
    /// A client that fails it gets rustls's alert before the error is returned.
    pub(crate) async fn accept(
        config: Arc<ServerConfig>,
        stream: TcpStream,
    ) -> io::Result<TlsTransport> {
        let conn = Box::new(UnbufferedServerConnection::new(config).map_err(io::Error::other)?);
        let mut tls = TlsTransport {
            stream,
            conn,
            incoming: BytesMut::new(),
            outgoing: BytesMut::new(),
            plaintext: BytesMut::new(),
            read_closed: false,
            close_notify_sent: false,
        };
        loop {
            match tls.process(None) {
                Ok(Step::Again) => {}
                Ok(Step::NeedInput { established: true }) => {
                    poll_fn(|cx| tls.poll_send(cx)).await?;
                    return Ok(tls);
                }
                Ok(Step::NeedInput { established: false }) => {
                    poll_fn(|cx| tls.poll_send(cx)).await?;
                    if poll_fn(|cx| tls.poll_receive(cx)).await? == 0 {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Ok(Step::PeerClosed | Step::Closed | Step::Encrypted(_)) => {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Err(error) => {
                    // The alert rustls queued says why; sent as far as the socket takes it.
                    while let Ok(Step::Again) = tls.process(None) {}
                    let _ = poll_fn(|cx| tls.poll_send(cx)).await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, error));
                }
            }
        }
    }

    /// The certificates the client presented (verified by the handshake), its own first.
    pub(crate) fn peer_certificates(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// One step of rustls over the bytes received so far, with `data` to encrypt if it may be.
    fn process(&mut self, data: Option<&[u8]>) -> Result<Step, rustls::Error> {
        let UnbufferedStatus { mut discard, state } =
            self.conn.process_tls_records(&mut self.incoming[..]);
        let step = match state {
            Err(error) => Err(error),
            Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                let mut result = Ok(Step::Again);
                while let Some(record) = traffic.next_record() {
                    match record {
                        Ok(record) => {
                            discard += record.discard;
                            self.plaintext.extend_from_slice(record.payload);
                        }
                        Err(error) => {
                            result = Err(error);
                            break;
                        }
                    }
                }
                result
            }
            Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                encode_into(&mut self.outgoing, |out| match encode.encode(out) {
                    Ok(n) => Ok(n),
                    Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                        Err(Some(required_size))
                    }
                    Err(_) => Err(None),
                })
                .map(|()| Step::Again)
            }
            // Sent before anything is read or written next (see `poll_send`).
            Ok(ConnectionState::TransmitTlsData(transmit)) => {
                transmit.done();
                Ok(Step::Again)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Step::NeedInput { established: false }),
            Ok(ConnectionState::WriteTraffic(mut traffic)) => match data {
                None => Ok(Step::NeedInput { established: true }),
                Some(data) => {
                    encode_into(&mut self.outgoing, |out| match traffic.encrypt(data, out) {
                        Ok(n) => Ok(n),
                        Err(EncryptError::InsufficientSize(InsufficientSizeError {
                            required_size,
                        })) => Err(Some(required_size)),
                        Err(_) => Err(None),
                    })
                    .map(|()| Step::Encrypted(data.len()))
                }
            },
            Ok(ConnectionState::PeerClosed) => Ok(Step::PeerClosed),
            Ok(ConnectionState::Closed) => Ok(Step::Closed),
            Ok(_) => Err(rustls::Error::General("unexpected TLS state".to_owned())),
        };
        self.incoming.advance(discard);
        if self.incoming.is_empty() {
            // Not `capacity() > 0`: a buffer advanced to its end reports no capacity but keeps
            // its allocation. A new empty one allocates nothing.
            self.incoming = BytesMut::new();
        }
        step
    }

    /// Sends what is in `outgoing`; ready once all of it has gone.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.outgoing))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.advance(n);
        }
        // Freed even when it reports no capacity (advanced to its end, it keeps its allocation).
        self.outgoing = BytesMut::new();
        Poll::Ready(Ok(()))
    }

    /// Reads what the socket has into `incoming` (reserved only once it is readable); the
    /// number of bytes, 0 at the end of the stream.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS message too large",
            )));
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            if self.incoming.capacity() - self.incoming.len() < READ_CHUNK / 2 {
                self.incoming.reserve(READ_CHUNK);
            }
            match self.stream.try_read_buf(&mut self.incoming) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    /// Moves the decrypted bytes to `buf`.
    fn take_plaintext(&mut self, buf: &mut BytesMut) -> usize {
        let n = self.plaintext.len();
        if buf.is_empty() {
            std::mem::swap(buf, &mut self.plaintext);
        } else {
            buf.extend_from_slice(&self.plaintext);
        }
        self.plaintext = BytesMut::new();
        n
    }
}

/// Lets `encode` write into the end of `out`, growing it to the size it asks for.
fn encode_into(
    out: &mut BytesMut,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    let needed = match encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(Some(needed)) => needed,
        Err(None) => return Err(rustls::Error::General("TLS encoding failed".to_owned())),
    };
    out.resize(start + needed, 0);
    match encode(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(_) => {
            out.truncate(start);
            Err(rustls::Error::General("TLS encoding failed".to_owned()))
        }
    }
}

fn invalid(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl TlsTransport {
    /// After rustls failed on the connection: the alert it queued for the error is encoded and
    /// sent as far as the socket takes it now (never waited for), then the error is returned.
    fn fail(&mut self, cx: &mut Context<'_>, error: rustls::Error) -> io::Error {
        while let Ok(Step::Again) = self.process(None) {}
        let _ = self.poll_send(cx);
        invalid(error)
    }
}

impl Transport for TlsTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        loop {
            if !self.plaintext.is_empty() {
                return Poll::Ready(Ok(self.take_plaintext(buf)));
            }
            if self.read_closed {
                return Poll::Ready(Ok(0));
            }
            let step = match self.process(None) {
                Ok(step) => step,
                Err(error) => return Poll::Ready(Err(self.fail(cx, error))),
            };
            match step {
                Step::Again | Step::Encrypted(_) => {}
                Step::PeerClosed | Step::Closed => self.read_closed = true,
                Step::NeedInput { .. } => {
                    // What rustls answered by itself (a key update) goes out meanwhile; a
                    // client that makes it answer without reading is read no further until
                    // it does, so those answers stay bounded.
                    match self.poll_send(cx) {
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Pending if self.outgoing.len() > MAX_WRITE => return Poll::Pending,
                        _ => {}
                    }
                    if ready!(self.poll_receive(cx))? == 0 {
                        if !self.incoming.is_empty() {
                            // MQTT frames its own packets, so nothing is mistaken for whole;
                            // the connection ends as for any end of stream.
                            tracing::debug!(
                                bytes = self.incoming.len(),
                                "TLS peer ended the stream in the middle of a record, without close_notify"
                            );
                        }
                        self.read_closed = true;
                    }
                }
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // The records of the last write go first: what waits to be sent stays bounded.
        ready!(self.poll_send(cx))?;
        let data = &buf[..buf.len().min(MAX_WRITE)];
        let written = loop {
            let step = match self.process(Some(data)) {
                Ok(step) => step,
                Err(error) => return Poll::Ready(Err(self.fail(cx, error))),
            };
            match step {
                Step::Encrypted(n) => break n,
                Step::Again => {}
                Step::PeerClosed => self.read_closed = true,
                Step::Closed | Step::NeedInput { .. } => {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
            }
        };
        // Started now; whatever the socket does not take yet goes with the next flush.
        if let Poll::Ready(Err(error)) = self.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_send(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.close_notify_sent {
            self.close_notify_sent = true;
            loop {
                let UnbufferedStatus { mut discard, state } =
                    self.conn.process_tls_records(&mut self.incoming[..]);
                let done = match state {
                    Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                        let _ = encode_into(&mut self.outgoing, |out| {
                            traffic
                                .queue_close_notify(out)
                                .map_err(|error| match error {
                                    EncryptError::InsufficientSize(InsufficientSizeError {
                                        required_size,
                                    }) => Some(required_size),
                                    _ => None,
                                })
                        });
                        true
                    }
                    Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                        // Data the reader will no longer take: dropped, and its records
                        // discarded from `incoming` as in `process`.
                        while let Some(Ok(record)) = traffic.next_record() {
                            discard += record.discard;
                        }
                        false
                    }
                    Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                        let _ = encode_into(&mut self.outgoing, |out| {
                            encode.encode(out).map_err(|error| match error {
                                EncodeError::InsufficientSize(InsufficientSizeError {
                                    required_size,
                                }) => Some(required_size),
                                _ => None,
                            })
                        });
                        false
                    }
                    Ok(ConnectionState::TransmitTlsData(transmit)) => {
                        transmit.done();
                        false
                    }
                    Ok(ConnectionState::PeerClosed) => false,
                    // Closed already, failed, or anything else: no close_notify to send.
                    _ => true,
                };
                self.incoming.advance(discard);
                if done {
                    break;
                }
            }
        }
        ready!(self.poll_send(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The same connection as a byte stream, for what runs on top of TLS (the WebSocket layer of
/// `wss`). The decrypted bytes a read does not take wait in the transport.
impl AsyncRead for TlsTransport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.plaintext.is_empty() {
            let mut received = BytesMut::new();
            if ready!(Transport::poll_read(this, cx, &mut received))? == 0 {
                return Poll::Ready(Ok(()));
            }
            this.plaintext = received;
        }
        let n = buf.remaining().min(this.plaintext.len());
        buf.put_slice(&this.plaintext[..n]);
        this.plaintext.advance(n);
        if this.plaintext.is_empty() {
            this.plaintext = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TlsTransport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Transport::poll_write(self.get_mut(), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Transport::poll_shutdown(self.get_mut(), cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[allow(deprecated)] // the ring provider: see tls.rs
    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// The transport as a byte stream (what the WebSocket layer of `wss` reads and writes):
    /// a read smaller than what arrived keeps the rest, writes arrive whole, shutdown sends
    /// close_notify and the client sees a clean end; an idle transport holds no buffer.
    #[tokio::test]
    async fn async_read_and_write_over_the_unbuffered_connection() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_pem = certified.cert.pem();
        let key_pem = certified.signing_key.serialize_pem();
        let server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
            .unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client_config))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            tls.write_all(b"hello, server").await.unwrap();
            let mut echo = vec![0u8; 100_000];
            tls.read_exact(&mut echo).await.unwrap();
            assert!(echo.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = super::TlsTransport::accept(Arc::new(server_config), tcp)
            .await
            .unwrap();
        let mut first = [0u8; 5];
        tls.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"hello");
        let mut rest = [0u8; 8];
        tls.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b", server");
        assert_eq!(
            (tls.incoming.capacity(), tls.plaintext.capacity()),
            (0, 0),
            "an idle transport holds no buffer"
        );
        let big: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
        tls.write_all(&big).await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(tls.outgoing.capacity(), 0);
        tls.shutdown().await.unwrap();
        client.await.unwrap();
    }
}

/// What an idle TLS connection holds besides its buffers (all freed while idle): the transport
/// in the connection's task (152 bytes in a debug build) and rustls's connection in its box
/// (1 088 bytes; the buffered `ServerConnection` is 1 168 plus its 4 KiB read buffer).
#[cfg(test)]
mod size_probe {
    #[test]
    fn sizes() {
        eprintln!(
            "UnbufferedServerConnection {} TlsTransport {} ServerConnection {}",
            std::mem::size_of::<rustls::server::UnbufferedServerConnection>(),
            std::mem::size_of::<super::TlsTransport>(),
            std::mem::size_of::<rustls::ServerConnection>(),
        );
    }
}
