//! How the bytes of a node-to-node link travel: plain TCP, or mutual TLS (`[cluster] tls`).
//!
//! The link code ([`crate::peer`] dialling, [`crate::serve`] accepting) reads and writes the
//! boxed halves a [`Transport`] gives it and does not know which one it has. With TLS, both
//! sides present a certificate chained to the cluster's CA: the accepting node refuses a peer
//! without one, the dialling node checks the accepting node's certificate against the name in
//! the address it dials (an IP address or a DNS name). A node with TLS never speaks plain TCP
//! and a node without it never speaks TLS, so a mixed pair fails its handshake (logged, the
//! link dialled again later) and never exchanges a frame.
//!
//! The certificates are built by the server (from the files `[cluster] tls` names), which may
//! replace them while the node runs ([`ClusterTls::replace`]): links set up from then on use
//! the new material, links already up keep theirs.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The half of a link that is read.
pub type LinkReader = Box<dyn AsyncRead + Send + Unpin>;
/// The half of a link that is written (flushed after each batch of frames).
pub type LinkWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// The TLS material of a node: what it accepts links with and what it dials them with.
/// Clones share it: a [`ClusterTls::replace`] reaches every clone.
#[derive(Clone)]
pub struct ClusterTls {
    sides: Arc<RwLock<Sides>>,
}

#[derive(Clone)]
struct Sides {
    acceptor: tokio_rustls::TlsAcceptor,
    connector: tokio_rustls::TlsConnector,
}

impl ClusterTls {
    /// `server` must require client certificates (the accepting side of mutual TLS) and
    /// `client` present this node's certificate; both check the peer against the cluster's CA.
    pub fn new(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> ClusterTls {
        ClusterTls {
            sides: Arc::new(RwLock::new(Sides::new(server, client))),
        }
    }

    /// Replaces the material (a certificate, key or CA file changed): the handshakes that
    /// start from now on use it; links already up keep what they were set up with.
    pub fn replace(&self, server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) {
        let sides = Sides::new(server, client);
        *self.sides.write().unwrap_or_else(|p| p.into_inner()) = sides;
    }

    /// The material for a handshake starting now.
    fn sides(&self) -> Sides {
        self.sides.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Sides {
    fn new(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> Sides {
        Sides {
            acceptor: tokio_rustls::TlsAcceptor::from(server),
            connector: tokio_rustls::TlsConnector::from(client),
        }
    }
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

/// Plain TCP (no `tls`) or mutual TLS over TCP.
#[derive(Clone, Debug, Default)]
pub struct Transport {
    tls: Option<ClusterTls>,
}

/// Why a link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the peer did not agree on the cluster's ALPN protocol")]
    Alpn,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
    #[error("{0:?} is not a name a TLS certificate can carry")]
    ServerName(String),
}

impl Transport {
    /// Plain TCP: anyone who reaches the port can speak as a node.
    pub fn plain() -> Transport {
        Transport { tls: None }
    }

    /// Mutual TLS with `tls`.
    pub fn tls(tls: ClusterTls) -> Transport {
        Transport { tls: Some(tls) }
    }

    /// Whether links are authenticated (TLS).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Dials `addr` (at most `timeout`, TLS handshake included). With TLS the peer's
    /// certificate must be valid for the host of `name_addr` (the node's advertised address;
    /// the same as `addr` unless a test relay sits between).
    pub async fn dial(
        &self,
        addr: &str,
        name_addr: &str,
        timeout: Duration,
    ) -> Result<(LinkReader, LinkWriter), TransportError> {
        let setup = async {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            match &self.tls {
                None => {
                    let (reader, writer) = stream.into_split();
                    Ok::<_, TransportError>((
                        Box::new(reader) as LinkReader,
                        Box::new(writer) as LinkWriter,
                    ))
                }
                Some(tls) => {
                    let name = server_name(name_addr)?;
                    let connector = tls.sides().connector;
                    let stream = connector.connect(name, stream).await.map_err(|error| {
                        handshake_failed("dialled", addr, &error);
                        TransportError::Handshake(error)
                    })?;
                    if stream.get_ref().1.alpn_protocol() != Some(ALPN) {
                        return Err(TransportError::Alpn);
                    }
                    let (reader, writer) = tokio::io::split(stream);
                    Ok((
                        Box::new(reader) as LinkReader,
                        Box::new(writer) as LinkWriter,
                    ))
                }
            }
        };
        tokio::time::timeout(timeout, setup)
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    /// Sets an accepted connection up (the TLS handshake, with the peer's certificate
    /// required and checked).
    pub async fn accept(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
    ) -> Result<(LinkReader, LinkWriter), TransportError> {
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => {
                let (reader, writer) = stream.into_split();
                Ok((Box::new(reader), Box::new(writer)))
            }
            Some(tls) => {
                let acceptor = tls.sides().acceptor;
                let stream = acceptor.accept(stream).await.map_err(|error| {
                    handshake_failed("accepted", &peer.to_string(), &error);
                    TransportError::Handshake(error)
                })?;
                // Both sides offer only the cluster's protocol; a client that offered none
                // (another TLS client holding a certificate of the CA) is not a node.
                if stream.get_ref().1.alpn_protocol() != Some(ALPN) {
                    return Err(TransportError::Alpn);
                }
                let (reader, writer) = tokio::io::split(stream);
                Ok((Box::new(reader), Box::new(writer)))
            }
        }
    }
}

/// The ALPN protocol of a cluster link: offered by the dialling node, required by the
/// accepting one (which offers nothing else), checked by both after the handshake.
pub const ALPN: &[u8] = b"tern-cluster";

/// The name a dialled node's certificate must carry: the host of its `HOST:PORT` address (an
/// IP address for an IP subject alternative name, else a DNS name).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, TransportError> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|host| host.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|_| TransportError::ServerName(host.to_owned()))
}

/// How often a failing handshake with one address is logged as a warning (a link is dialled
/// again every few hundred milliseconds; the rest go to debug).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Logs a failed handshake: a warning the first time for `addr` and then once per
/// [`WARN_EVERY`].
fn handshake_failed(side: &'static str, addr: &str, error: &io::Error) {
    if warn_now(side, addr) {
        tracing::warn!(side, %addr, %error, "cluster link: TLS handshake failed (is [cluster] tls the same on both nodes, and the certificate signed by the cluster's CA for this address?)");
    } else {
        tracing::debug!(side, %addr, %error, "cluster link: TLS handshake failed");
    }
}

/// Whether a warning about `addr` is due (the first, or [`WARN_EVERY`] after the last one).
fn warn_now(side: &'static str, addr: &str) -> bool {
    static LAST: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
    let key = match side {
        // An accepted connection comes from a new port each time: keyed by the host.
        "accepted" => addr.rsplit_once(':').map_or(addr, |(host, _)| host),
        _ => addr,
    };
    let key = format!("{side} {key}");
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let last = last.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match last.get(&key) {
        Some(at) if now.duration_since(*at) < WARN_EVERY => false,
        _ => {
            if last.len() > 1024 {
                last.retain(|_, at| now.duration_since(*at) < WARN_EVERY);
            }
            last.insert(key, now);
            true
        }
    }
}

/// Whether a frame length read from a plain link is the start of a TLS record (content type
/// 22, handshake, then version 3.x): a peer with `[cluster] tls` dialled this node without.
pub(crate) fn looks_like_tls(announced: usize) -> bool {
    announced >> 24 == 0x16 && (announced >> 16) & 0xff == 0x03
}

/// A peer began a TLS handshake on this node's plain cluster port: logged (a warning once
/// per [`WARN_EVERY`] per host), since `[cluster] tls` must be the same on every node.
pub(crate) fn tls_on_plain_port(peer: std::net::SocketAddr) {
    let addr = peer.to_string();
    if warn_now("plain", &addr) {
        tracing::warn!(%addr, "cluster link refused: the peer speaks TLS and this node has no [cluster] tls (it must be the same on every node)");
    } else {
        tracing::debug!(%addr, "cluster link refused: the peer speaks TLS");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_is_the_host_of_the_address() {
        assert_eq!(
            server_name("10.0.0.1:7883").unwrap(),
            ServerName::try_from("10.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[::1]:7883").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert_eq!(
            server_name("node-1.cluster.example:7883").unwrap(),
            ServerName::try_from("node-1.cluster.example").unwrap()
        );
        assert!(server_name("not a name:7883").is_err());
    }

    /// A TLS ClientHello read as a frame header: record type 22, version 3.1 (any length).
    #[test]
    fn a_tls_record_is_told_from_a_frame_length() {
        assert!(looks_like_tls(
            u32::from_be_bytes([0x16, 0x03, 0x01, 0x02]) as usize
        ));
        assert!(!looks_like_tls(10));
        assert!(!looks_like_tls(crate::wire::MAX_FRAME));
    }
}
