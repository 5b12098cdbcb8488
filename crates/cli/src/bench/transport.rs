//! The bench's transports are tern-client's: MQTT over TCP, TLS, WebSockets and WebSockets over
//! TLS. The client loops (`client.rs`) are generic over a [`Connector`], so each transport gets
//! its own compiled copy of the publisher and subscriber loops, and plain TCP runs code with no
//! trace of the others (its stream split is TCP's own, its writes need no flush).
//!
//! [`SourceTcp`] is plain TCP from a range of local addresses (`--source-addrs`): one source
//! address has one ephemeral port range (28 000 to 64 000 ports), so a million connections to
//! one broker address need about 16 to 36 of them (127.0.0.0/8 is all loopback on Linux).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpSocket, TcpStream};

pub use tern_client::transport::{
    Connector, SplitStream as BenchStream, Tcp, Tls, TlsOptions, Transport, TransportError, Ws,
};

/// Longest TCP connect, as tern-client's own connector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Plain TCP whose connections bind their local address in turn from a list (each with an
/// ephemeral port).
#[derive(Debug, Clone)]
pub struct SourceTcp {
    sources: Arc<[IpAddr]>,
    next: Arc<AtomicUsize>,
}

impl SourceTcp {
    pub fn new(sources: Vec<IpAddr>) -> SourceTcp {
        SourceTcp {
            sources: sources.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = match source {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Connector for SourceTcp {
    type Stream = TcpStream;

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, TransportError> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let source = self.sources[turn % self.sources.len()];
        match tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_from(source, addr)).await {
            Err(_) => Err(TransportError::Timeout {
                what: "TCP connect",
                addr,
            }),
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(match error.raw_os_error() {
                Some(23 | 24) => TransportError::TooManyFiles,
                Some(98 | 99) => TransportError::OutOfPorts(addr),
                _ if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                    TransportError::Refused(addr)
                }
                _ => TransportError::Connect {
                    addr,
                    source: error,
                },
            }),
        }
    }
}

/// Parses `--source-addrs`: addresses separated by commas, each an address or an IPv4 range
/// `A-B` (both ends included, at most 65 536 addresses).
pub fn parse_source_addrs(text: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut addrs = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            None => addrs.push(
                part.parse::<IpAddr>()
                    .with_context(|| format!("--source-addrs: {part:?} is not an address"))?,
            ),
            Some((first, last)) => {
                let first: std::net::Ipv4Addr = first
                    .trim()
                    .parse()
                    .with_context(|| format!("--source-addrs: {first:?} is not an IPv4 address"))?;
                let last: std::net::Ipv4Addr = last
                    .trim()
                    .parse()
                    .with_context(|| format!("--source-addrs: {last:?} is not an IPv4 address"))?;
                let (first, last) = (u32::from(first), u32::from(last));
                if last < first || last - first >= 65_536 {
                    bail!("--source-addrs: the range {part} is empty or longer than 65 536");
                }
                addrs.extend((first..=last).map(|n| IpAddr::V4(n.into())));
            }
        }
    }
    if addrs.is_empty() {
        bail!("--source-addrs names no address");
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14 (a million connections): a range gives every address from one end to the
    /// other, a list keeps its order, and an empty or reversed range is refused.
    #[test]
    fn source_addrs_ranges_and_lists() {
        let addrs = parse_source_addrs("127.0.0.2-127.0.0.4,::1").unwrap();
        let expected: Vec<IpAddr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(addrs, expected);
        assert!(parse_source_addrs("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_source_addrs("").is_err());
        assert!(parse_source_addrs("localhost").is_err());
    }

    /// Issue 14 (a million connections): each connection binds the next source address in
    /// turn, so the broker sees them spread over the list.
    #[tokio::test]
    async fn connections_come_from_the_source_addresses_in_turn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sources = parse_source_addrs("127.0.0.2-127.0.0.3").unwrap();
        let connector = SourceTcp::new(sources.clone());
        let mut seen = Vec::new();
        for _ in 0..4 {
            let _stream = connector.connect(addr).await.unwrap();
            let (_, peer) = listener.accept().await.unwrap();
            seen.push(peer.ip());
        }
        assert_eq!(seen, [sources[0], sources[1], sources[0], sources[1]]);
    }
}
