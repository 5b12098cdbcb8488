//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer that forwards TCP
//! connections sends the client's address first. It is read only on listeners that expect it,
//! and believed only from the configured trusted proxies.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::listener_config::IpNet;

/// Reads the PROXY header that must open a connection from a trusted proxy; returns the
/// client's address it carries (or `peer` for a header that carries none, such as a health
/// check's `LOCAL`). A connection from an untrusted address, or without a valid header, is an
/// error (the caller closes it).
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[IpNet],
) -> io::Result<SocketAddr> {
    let _ = (stream, trusted);
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("PROXY protocol from {peer}: not implemented yet"),
    ))
}
