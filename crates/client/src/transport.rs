//! What carries MQTT to the broker: TCP, TLS (tokio-rustls, ring), WebSockets
//! (tokio-tungstenite) and WebSockets over TLS. A [`Connector`] opens a byte stream; code that
//! wants one compiled copy per transport (the bench's hot loops) is generic over it, and
//! [`Dialer`] picks one at run time for the [`Client`](crate::Client).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

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
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a stream to the broker could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("{what} with {addr} timed out")]
    Timeout {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("too many open files (EMFILE): raise the limit with `ulimit -n`")]
    TooManyFiles,
    #[error("out of local ports (EADDRNOTAVAIL) connecting to {0}")]
    OutOfPorts(SocketAddr),
    #[error("Connection refused")]
    Refused(SocketAddr),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// The client side of TLS cannot be set up (files, keys, names).
    #[error("TLS: {0}")]
    TlsConfig(String),
    #[error("TLS handshake with {addr}: {source}")]
    Handshake { addr: SocketAddr, source: io::Error },
    #[error("WebSocket upgrade at {url}: {source}")]
    WebSocket {
        url: String,
        source: Box<tungstenite::Error>,
    },
}

/// What carries MQTT to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(name: &str) -> Result<Transport, String> {
        Ok(match name {
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            other => return Err(format!("{other:?}: expected tcp, tls, ws or wss")),
        })
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

/// A byte stream to the broker that can be read and written from one task at once.
pub trait SplitStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether written bytes may wait in the transport (TLS records, WebSocket frames) until
    /// flushed. Plain TCP's do not, and loops over it need no flush step at all.
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

impl SplitStream for TcpStream {
    const BUFFERS_WRITES: bool = false;
    type Reader<'a> = tokio::net::tcp::ReadHalf<'a>;
    type Writer<'a> = tokio::net::tcp::WriteHalf<'a>;

    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        TcpStream::split(self)
    }
}

impl SplitStream for TlsStream<TcpStream> {
    const BUFFERS_WRITES: bool = true;
    type Reader<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Writer<'a> = tokio::io::WriteHalf<&'a mut Self>;

    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        tokio::io::split(self)
    }
}

impl<S: SplitStream> SplitStream for WsStream<S> {
    const BUFFERS_WRITES: bool = true;
    type Reader<'a> = tokio::io::ReadHalf<&'a mut Self>;
    type Writer<'a> = tokio::io::WriteHalf<&'a mut Self>;

    fn split(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        tokio::io::split(self)
    }
}

/// Opens streams to the broker.
pub trait Connector: Clone + Send + Sync + 'static {
    type Stream: SplitStream;
    fn connect(
        &self,
        addr: SocketAddr,
    ) -> impl Future<Output = Result<Self::Stream, TransportError>> + Send;
}

/// Plain TCP.
#[derive(Debug, Clone, Copy)]
pub struct Tcp;

impl Connector for Tcp {
    type Stream = TcpStream;

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, TransportError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| TransportError::Timeout {
                what: "TCP connect",
                addr,
            })?
            .map_err(|error| connect_error(error, addr))?;
        // Small packets (acknowledgements, pings) go out at once.
        stream
            .set_nodelay(true)
            .map_err(|source| TransportError::Connect { addr, source })?;
        Ok(stream)
    }
}

fn connect_error(error: io::Error, addr: SocketAddr) -> TransportError {
    match error.raw_os_error() {
        Some(23 | 24) => TransportError::TooManyFiles,
        Some(99) => TransportError::OutOfPorts(addr),
        _ if error.kind() == io::ErrorKind::ConnectionRefused => TransportError::Refused(addr),
        _ => TransportError::Connect {
            addr,
            source: error,
        },
    }
}

/// TLS over TCP. Every connection makes a full handshake (no session resumption), so a bench's
/// connection rate measures handshakes.
#[derive(Clone)]
pub struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

fn tls_config(what: &str, path: &std::path::Path, error: impl std::fmt::Display) -> TransportError {
    TransportError::TlsConfig(format!("{what} {}: {error}", path.display()))
}

impl Tls {
    pub fn new(options: &TlsOptions, host: &str) -> Result<Tls, TransportError> {
        // ring: the provider the workspace builds without a C toolchain. rustls 0.23.48
        // deprecates it for lacking post-quantum key exchange.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| TransportError::TlsConfig(error.to_string()))?;
        let builder = match (&options.cafile, options.insecure) {
            (_, true) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
            (Some(cafile), false) => {
                let mut roots = RootCertStore::empty();
                let certificates = CertificateDer::pem_file_iter(cafile)
                    .map_err(|error| tls_config("--cafile", cafile, error))?;
                for certificate in certificates {
                    let certificate =
                        certificate.map_err(|error| tls_config("--cafile", cafile, error))?;
                    roots
                        .add(certificate)
                        .map_err(|error| tls_config("--cafile", cafile, error))?;
                }
                if roots.is_empty() {
                    return Err(tls_config("--cafile", cafile, "no certificate in it"));
                }
                builder.with_root_certificates(roots)
            }
            (None, false) => {
                return Err(TransportError::TlsConfig(
                    "needs --cafile (the CA of the broker's certificate) or --insecure (accept \
                     any)"
                        .into(),
                ));
            }
        };
        let mut config = match (&options.cert, &options.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|error| tls_config("--cert", cert, error))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|error| tls_config("--key", key, error))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| TransportError::TlsConfig(error.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(TransportError::TlsConfig(
                    "--cert and --key go together".into(),
                ));
            }
        };
        config.resumption = rustls::client::Resumption::disabled();
        let name = options.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
            TransportError::TlsConfig(format!("{name:?} is not a valid TLS server name"))
        })?;
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

impl Connector for Tls {
    type Stream = TlsStream<TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> Result<Self::Stream, TransportError> {
        let tcp = Tcp.connect(addr).await?;
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .map_err(|_| TransportError::Timeout {
            what: "TLS handshake",
            addr,
        })?
        .map_err(|source| TransportError::Handshake { addr, source })
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
pub struct Ws<C> {
    inner: C,
    /// `ws://host:port/path` (the scheme is only for the request's form; TLS, if any, is
    /// the inner connector's).
    url: String,
    config: WebSocketConfig,
}

impl<C: Connector> Ws<C> {
    /// `read_buffer` is what tungstenite allocates per connection for reading: small for
    /// many idle connections, larger for throughput.
    pub fn new(inner: C, host: &str, port: u16, path: &str, read_buffer: usize) -> Ws<C> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        // Frames are written out as they are made: callers batch MQTT packets into one write.
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

impl<C: Connector> Ws<C> {
    /// Bounds the WebSocket messages and frames read to `bytes` (tungstenite's defaults are
    /// 64 MiB and 16 MiB, whatever the MQTT packets may be).
    pub fn max_message_size(mut self, bytes: usize) -> Ws<C> {
        self.config = self
            .config
            .max_message_size(Some(bytes))
            .max_frame_size(Some(bytes));
        self
    }
}

impl<C: Connector> Connector for Ws<C> {
    type Stream = WsStream<C::Stream>;

    async fn connect(&self, addr: SocketAddr) -> Result<Self::Stream, TransportError> {
        let stream = self.inner.connect(addr).await?;
        let ws_error = |source| TransportError::WebSocket {
            url: self.url.clone(),
            source: Box::new(source),
        };
        let mut request = self.url.as_str().into_client_request().map_err(ws_error)?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let (socket, _response) = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::client_async_with_config(request, stream, Some(self.config)),
        )
        .await
        .map_err(|_| TransportError::Timeout {
            what: "WebSocket upgrade",
            addr,
        })?
        .map_err(ws_error)?;
        Ok(WsStream {
            socket,
            unread: Bytes::new(),
        })
    }
}

/// A WebSocket connection as a byte stream: reads yield the payloads of binary frames in
/// order (an MQTT packet may span frames, a frame may hold several), each write is one binary
/// frame.
pub struct WsStream<S> {
    socket: WebSocketStream<S>,
    /// What is left of the last frame read.
    unread: Bytes,
}

fn ws_io_error(error: tungstenite::Error) -> io::Error {
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
                Some(Err(error)) => return Poll::Ready(Err(ws_io_error(error))),
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
        ready!(Pin::new(&mut *socket).poll_ready(cx)).map_err(ws_io_error)?;
        Pin::new(socket)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket)
            .poll_flush(cx)
            .map_err(ws_io_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.socket).poll_close(cx)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(ws_io_error(error))),
        }
    }
}

/// Any of the streams above, chosen at run time.
pub trait AnyStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AnyStream for T {}

/// Where the broker is and how to reach it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
    /// WebSockets: the HTTP path of the upgrade.
    pub ws_path: String,
    pub tls: TlsOptions,
}

impl Endpoint {
    /// MQTT over TCP to `host:port`.
    pub fn tcp(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            transport: Transport::Tcp,
            host: host.into(),
            port,
            ws_path: "/mqtt".into(),
            tls: TlsOptions::default(),
        }
    }
}

/// The connector of an [`Endpoint`], built once (TLS configuration read and checked) and used
/// for every connection attempt.
#[derive(Clone)]
pub enum Dialer {
    Tcp(Tcp),
    Tls(Tls),
    Ws(Ws<Tcp>),
    Wss(Ws<Tls>),
}

/// tungstenite's read buffer for a client connection.
const WS_READ_BUFFER: usize = 16 * 1024;
/// Room in a WebSocket message beyond the largest MQTT packet, for packets batched with it.
pub const WS_BATCH_SLACK: usize = 1024 * 1024;

impl Dialer {
    pub fn new(endpoint: &Endpoint) -> Result<Dialer, TransportError> {
        let (host, port, path) = (&endpoint.host, endpoint.port, &endpoint.ws_path);
        Ok(match endpoint.transport {
            Transport::Tcp => Dialer::Tcp(Tcp),
            Transport::Tls => Dialer::Tls(Tls::new(&endpoint.tls, host)?),
            Transport::Ws => Dialer::Ws(Ws::new(Tcp, host, port, path, WS_READ_BUFFER)),
            Transport::Wss => Dialer::Wss(Ws::new(
                Tls::new(&endpoint.tls, host)?,
                host,
                port,
                path,
                WS_READ_BUFFER,
            )),
        })
    }

    /// For a client that takes MQTT packets of up to `max_packet_size` bytes: a WebSocket
    /// message may carry several packets (a peer batches its writes), so the bound on a
    /// message is that plus [`WS_BATCH_SLACK`].
    pub fn for_packets_up_to(self, max_packet_size: u32) -> Dialer {
        let bytes = usize::try_from(max_packet_size)
            .unwrap_or(usize::MAX)
            .saturating_add(WS_BATCH_SLACK);
        match self {
            Dialer::Ws(ws) => Dialer::Ws(ws.max_message_size(bytes)),
            Dialer::Wss(ws) => Dialer::Wss(ws.max_message_size(bytes)),
            other => other,
        }
    }

    /// Resolves `host` and opens a stream to its first address.
    pub async fn dial(&self, host: &str, port: u16) -> Result<Box<dyn AnyStream>, TransportError> {
        let addr = resolve(host, port).await?;
        Ok(match self {
            Dialer::Tcp(c) => Box::new(c.connect(addr).await?),
            Dialer::Tls(c) => Box::new(c.connect(addr).await?),
            Dialer::Ws(c) => Box::new(c.connect(addr).await?),
            Dialer::Wss(c) => Box::new(c.connect(addr).await?),
        })
    }
}

/// The first address of `host`.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, TransportError> {
    tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| TransportError::Resolve {
            host: host.to_owned(),
            source,
        })?
        .next()
        .ok_or_else(|| TransportError::NoAddress {
            host: host.to_owned(),
        })
}
