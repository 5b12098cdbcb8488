//! The bench's transports: MQTT over TCP, TLS (tokio-rustls), WebSockets (tokio-tungstenite)
//! and WebSockets over TLS. A [`Connector`] opens a byte stream to the broker; the client
//! (`client.rs`) is generic over it, so each transport gets its own compiled copy of the
//! publisher and subscriber loops and plain TCP runs the very code it ran before transports
//! existed (its stream split is TCP's own, its writes need no flush).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// Time for the TCP connection, and then for the TLS handshake and the WebSocket upgrade each.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What carries MQTT to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Transport {
    /// MQTT over TCP.
    #[default]
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSockets.
    Ws,
    /// MQTT over WebSockets over TLS.
    Wss,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    pub fn uses_websockets(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

/// The client side of TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) the broker's certificate must chain to.
    pub cafile: Option<PathBuf>,
    /// Accept any certificate (the handshake's signatures are still checked).
    pub insecure: bool,
    /// A client certificate chain and its key (PEM), for brokers that ask for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the certificate must carry and SNI asks for; default: the host.
    pub server_name: Option<String>,
}

/// A byte stream to the broker, as the bench's client loops use it.
pub(crate) trait BenchStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether written bytes may wait in the transport (TLS records, WebSocket frames) until
    /// flushed. Plain TCP's do not, and its loops then have no flush step at all.
    const BUFFERS_WRITES: bool;
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    type Writer<'a>: AsyncWrite + Unpin + Send
    where
        Self: 'a;
    /// Halves for reading and writing from one task at once.
    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);
}

impl BenchStream for TcpStream {
    const BUFFERS_WRITES: bool = false;
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;

    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        TcpStream::split(self)
    }
}

impl BenchStream for TlsStream<TcpStream> {
    const BUFFERS_WRITES: bool = true;
    type Reader<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Writer<'a> = tokio::io::WriteHalf<&'a mut Self>;

    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        tokio::io::split(self)
    }
}

impl<S: BenchStream> BenchStream for WsStream<S> {
    const BUFFERS_WRITES: bool = true;
    type Reader<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Writer<'a> = tokio::io::WriteHalf<&'a mut Self>;

    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        tokio::io::split(self)
    }
}

/// Opens streams to the broker.
pub(crate) trait Connector: Clone + Send + Sync + 'static {
    type Stream: BenchStream;
    fn connect(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = anyhow::Result<Self::Stream>> + Send;
}

/// Plain TCP.
#[derive(Clone, Copy)]
pub(crate) struct Tcp;

impl Connector for Tcp {
    type Stream = TcpStream;

    async fn connect(&self, addr: SocketAddr) -> anyhow::Result<TcpStream> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow::anyhow!("TCP connect to {addr} timed out"))?
            .map_err(|error| connect_error(error, addr))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        Ok(stream)
    }
}

/// Turns connection errors into advice.
fn connect_error(error: io::Error, addr: SocketAddr) -> anyhow::Error {
    match error.raw_os_error() {
        Some(23 | 24) => anyhow::anyhow!(
            "too many open files (EMFILE): raise the limit with `ulimit -n` (hard limit: \
             `ulimit -Hn`)"
        ),
        Some(99) => anyhow::anyhow!("out of local ports (EADDRNOTAVAIL) connecting to {addr}"),
        _ if error.kind() == io::ErrorKind::ConnectionRefused => {
            anyhow::anyhow!("connection refused by {addr}: is the broker running?")
        }
        _ => anyhow::Error::new(error).context(format!("cannot connect to {addr}")),
    }
}

/// TLS over TCP. Every connection makes a full handshake (no session resumption), so the
/// connection rate measures handshakes.
#[derive(Clone)]
pub(crate) struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl Tls {
    pub(crate) fn new(options: &TlsOptions, host: &str) -> anyhow::Result<Tls> {
        // ring: the provider the workspace builds without a C toolchain. rustls 0.23.48
        // deprecates it for lacking post-quantum key exchange, which a bench does not need.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?;
        let builder = match (&options.cafile, options.insecure) {
            (_, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
            (Some(cafile), false) => {
                let mut roots = RootCertStore::empty();
                let certificates = CertificateDer::pem_file_iter(cafile)
                    .with_context(|| format!("--cafile {}", cafile.display()))?;
                for certificate in certificates {
                    let certificate =
                        certificate.with_context(|| format!("--cafile {}", cafile.display()))?;
                    roots
                        .add(certificate)
                        .with_context(|| format!("--cafile {}", cafile.display()))?;
                }
                if roots.is_empty() {
                    bail!("--cafile {}: no certificate in it", cafile.display());
                }
                builder.with_root_certificates(roots)
            }
            (None, false) => bail!(
                "TLS needs --cafile (the CA of the broker's certificate) or --insecure (accept any)"
            ),
        };
        let mut config = match (&options.cert, &options.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .with_context(|| format!("--cert {}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("--key {}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("client certificate and key")?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => bail!("--cert and --key go together"),
        };
        config.resumption = rustls::client::Resumption::disabled();
        let name = options.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned())
            .with_context(|| format!("{name:?} is not a valid TLS server name"))?;
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

impl Connector for Tls {
    type Stream = TlsStream<TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> anyhow::Result<Self::Stream> {
        let tcp = Tcp.connect(addr).await?;
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| anyhow::anyhow!("TLS handshake with {addr} timed out"))?
        .with_context(|| format!("TLS handshake with {addr}"))
    }
}

/// `--insecure`: any certificate is accepted; the handshake's signatures are still verified
/// (so the cost of a handshake is the real one).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// WebSockets over the stream of `C` (TCP, or TLS for wss): the HTTP upgrade on `path` asking
/// for the `mqtt` subprotocol, then MQTT in binary frames.
#[derive(Clone)]
pub(crate) struct Ws<C> {
    inner: C,
    /// `ws://host:port/path` (the scheme is only for the request's form; TLS, if any, is
    /// the inner connector's).
    url: String,
    config: WebSocketConfig,
}

impl<C: Connector> Ws<C> {
    /// `read_buffer` is what tungstenite allocates per connection for reading: small for
    /// many idle connections, larger for throughput.
    pub(crate) fn new(inner: C, host: &str, port: u16, path: &str, read_buffer: usize) -> Ws<C> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        // Frames are written out as they are made: the client loops batch MQTT packets into
        // one write already.
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .write_buffer_size(0);
        Ws {
            inner,
            url: format!("ws://{host}:{port}{path}"),
            config,
        }
    }
}

impl<C: Connector> Connector for Ws<C> {
    type Stream = WsStream<C::Stream>;

    async fn connect(&self, addr: SocketAddr) -> anyhow::Result<Self::Stream> {
        let stream = self.inner.connect(addr).await?;
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .with_context(|| format!("WebSocket URL {}", self.url))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let (socket, _response) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::client_async_with_config(request, stream, Some(self.config)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("WebSocket upgrade with {addr} timed out"))?
        .with_context(|| format!("WebSocket upgrade at {}", self.url))?;
        Ok(WsStream {
            socket,
            unread: Bytes::new(),
        })
    }
}

/// A WebSocket connection as a byte stream: reads yield the payloads of binary frames in
/// order (an MQTT packet may span frames, a frame may hold several), each write is one binary
/// frame.
pub(crate) struct WsStream<S> {
    socket: WebSocketStream<S>,
    /// What is left of the last frame read.
    unread: Bytes,
}

fn ws_error(error: tungstenite::Error) -> io::Error {
    match error {
        tungstenite::Error::Io(error) => error,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread[..n]);
                this.unread.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.socket).poll_next(cx)) {
                // The end of the stream, or the broker's close frame.
                None | Some(Ok(Message::Close(_))) => return Poll::Ready(Ok(())),
                Some(Ok(Message::Binary(data))) => this.unread = data,
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the broker sent a text frame (MQTT goes in binary frames)",
                    )));
                }
                Some(Err(error)) => return Poll::Ready(Err(ws_error(error))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &mut self.socket;
        ready!(Pin::new(&mut *socket).poll_ready(cx)).map_err(ws_error)?;
        Pin::new(socket)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx).map_err(ws_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.socket).poll_close(cx)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(ws_error(error))),
        }
    }
}
