//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer that forwards TCP
//! connections sends the client's address first. It is read only on listeners that expect it,
//! and believed only from the configured trusted proxies.
//!
//! [`parse`] is the protocol without I/O (bytes in, a header or "need more" out, strict, never
//! panics); [`read_header`] drives it on a socket, reading exactly the header's bytes so the
//! first MQTT byte stays in the socket for the connection loop.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::listener_config::{IpNet, is_trusted};

/// The longest v1 header, CRLF included (the specification's bound).
pub(crate) const V1_MAX_LEN: usize = 107;
/// The shortest header of either version ("PROXY UNKNOWN\r\n"): reading this many bytes first
/// never takes a byte past the header.
const MIN_HEADER_LEN: usize = 15;
/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version and command, family, length.
const V2_FIXED_LEN: usize = 16;
/// The largest v2 address block (addresses and TLVs) accepted. The protocol allows 65 535
/// bytes; real proxies send the addresses and a few TLVs (ALPN, authority, a unique id), so a
/// bound this size refuses only abuse and keeps what a connecting socket holds small.
pub(crate) const V2_MAX_PAYLOAD: usize = 2048;

/// A header, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyHeader {
    pub(crate) version: ProxyVersion,
    /// The client (source) and proxy-side (destination) addresses of the proxied connection;
    /// `None` when the header carries none: v1 `UNKNOWN`, v2 `LOCAL` (health checks), and the
    /// UNSPEC and UNIX families. The connection then keeps the socket's own peer address.
    pub(crate) addresses: Option<ProxiedAddresses>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyVersion {
    V1,
    V2,
}

/// The endpoints of the connection the proxy accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxiedAddresses {
    pub(crate) source: SocketAddr,
    pub(crate) destination: SocketAddr,
}

/// What `parse` makes of the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole header in the first `len` bytes.
    Header { header: ProxyHeader, len: usize },
    /// A valid beginning: more bytes are needed.
    Incomplete,
}

/// Why a header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("v1 header longer than {V1_MAX_LEN} bytes")]
    V1TooLong,
    #[error("malformed v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("v2 version {0:#x} (only 2 exists)")]
    V2Version(u8),
    #[error("v2 command {0:#x} (only LOCAL and PROXY exist)")]
    V2Command(u8),
    #[error("v2 address family and protocol {0:#04x} not supported")]
    V2Family(u8),
    #[error("v2 address block of {0} bytes is longer than {V2_MAX_PAYLOAD}")]
    V2TooLong(usize),
    #[error("v2 address block of {len} bytes is too short for its family (needs {needed})")]
    V2ShortAddresses { len: usize, needed: usize },
    #[error("malformed v2 TLV")]
    V2Tlv,
}

/// Parses a PROXY header at the start of `buf` (v1 or v2, told apart by the first byte).
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::NotProxy),
    }
}

/// Whether `buf` is a prefix of `expected` or begins with it.
fn agrees_with(buf: &[u8], expected: &[u8]) -> bool {
    let n = buf.len().min(expected.len());
    buf[..n] == expected[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if !agrees_with(buf, b"PROXY ") {
        return Err(ProxyError::NotProxy);
    }
    let Some(end) = buf.windows(2).position(|pair| pair == b"\r\n") else {
        // A CR or LF other than the final pair, or too long without one, can never become valid.
        let body = buf.strip_suffix(b"\r").unwrap_or(buf);
        if body.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(ProxyError::V1Malformed("stray CR or LF"));
        }
        if buf.len() >= V1_MAX_LEN {
            return Err(ProxyError::V1TooLong);
        }
        return Ok(Parsed::Incomplete);
    };
    let len = end + 2;
    if len > V1_MAX_LEN {
        return Err(ProxyError::V1TooLong);
    }
    let line = &buf[..end];
    if line.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(ProxyError::V1Malformed("stray CR or LF"));
    }
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let rest = line
        .strip_prefix("PROXY ")
        .ok_or(ProxyError::V1Malformed("no PROXY signature"))?;
    let addresses = if rest == "UNKNOWN" || rest.starts_with("UNKNOWN ") {
        // The sender may put anything after UNKNOWN; the receiver ignores it.
        None
    } else {
        let mut fields = rest.split(' ');
        let protocol = fields.next().unwrap_or("");
        let (Some(source), Some(destination), Some(source_port), Some(destination_port), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(ProxyError::V1Malformed("wrong number of fields"));
        };
        let parse_ip = |text: &str| -> Result<IpAddr, ProxyError> {
            match protocol {
                "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
                "TCP6" => text.parse::<Ipv6Addr>().map(IpAddr::V6),
                _ => {
                    return Err(ProxyError::V1Malformed(
                        "protocol is not TCP4, TCP6 or UNKNOWN",
                    ));
                }
            }
            .map_err(|_| ProxyError::V1Malformed("address does not match the protocol"))
        };
        Some(ProxiedAddresses {
            source: SocketAddr::new(parse_ip(source)?, parse_port(source_port)?),
            destination: SocketAddr::new(parse_ip(destination)?, parse_port(destination_port)?),
        })
    };
    Ok(Parsed::Header {
        header: ProxyHeader {
            version: ProxyVersion::V1,
            addresses,
        },
        len,
    })
}

/// A v1 port: decimal digits, no sign, no leading zero, at most 65535.
fn parse_port(text: &str) -> Result<u16, ProxyError> {
    let bad = ProxyError::V1Malformed("bad port");
    if text.is_empty()
        || text.len() > 5
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return Err(bad);
    }
    text.parse().map_err(|_| bad)
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if !agrees_with(buf, &V2_SIGNATURE) {
        return Err(ProxyError::NotProxy);
    }
    let Some(fixed) = buf.get(..V2_FIXED_LEN) else {
        return Ok(Parsed::Incomplete);
    };
    let version = fixed[12] >> 4;
    let command = fixed[12] & 0x0f;
    let family = fixed[13];
    let payload_len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if version != 2 {
        return Err(ProxyError::V2Version(version));
    }
    if command > 1 {
        return Err(ProxyError::V2Command(command));
    }
    if payload_len > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong(payload_len));
    }
    let len = V2_FIXED_LEN + payload_len;
    let Some(payload) = buf.get(V2_FIXED_LEN..len) else {
        return Ok(Parsed::Incomplete);
    };
    let header = |addresses| Parsed::Header {
        header: ProxyHeader {
            version: ProxyVersion::V2,
            addresses,
        },
        len,
    };
    // LOCAL: the proxy speaks for itself (a health check); the address block is ignored.
    if command == 0 {
        return Ok(header(None));
    }
    let needed = match family {
        0x00 => 0,          // UNSPEC (its block is ignored below)
        0x11 => 12,         // TCP over IPv4
        0x21 => 36,         // TCP over IPv6
        0x31 | 0x32 => 216, // UNIX stream, datagram
        // UDP, and values the specification does not define.
        _ => return Err(ProxyError::V2Family(family)),
    };
    // UNSPEC: the specification says the receiver must ignore the address block, whatever
    // the proxy put there (no addresses, no TLVs to check).
    if family == 0x00 {
        return Ok(header(None));
    }
    let addresses = payload.get(..needed).ok_or(ProxyError::V2ShortAddresses {
        len: payload_len,
        needed,
    })?;
    check_tlvs(&payload[needed..])?;
    let addresses = match family {
        0x11 => {
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    addresses[at],
                    addresses[at + 1],
                    addresses[at + 2],
                    addresses[at + 3],
                ))
            };
            let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
            Some(ProxiedAddresses {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        0x21 => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&addresses[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |at: usize| u16::from_be_bytes([addresses[at], addresses[at + 1]]);
            Some(ProxiedAddresses {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // UNSPEC and UNIX carry no IP address: the socket's own is kept.
        _ => None,
    };
    Ok(header(addresses))
}

/// The TLVs after the addresses: each a type, a 16-bit length and that many bytes, filling
/// the block exactly. Their contents are not used.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let [_kind, high, low, ..] = *tlvs else {
            return Err(ProxyError::V2Tlv);
        };
        let end = 3 + usize::from(u16::from_be_bytes([high, low]));
        tlvs = tlvs.get(end..).ok_or(ProxyError::V2Tlv)?;
    }
    Ok(())
}

/// Reads the PROXY header that must open a connection from a trusted proxy; returns the
/// client's address it carries (or `peer` for a header that carries none, such as a health
/// check's `LOCAL`). A connection from an untrusted address, or without a valid header, is an
/// error (the caller closes it). Reads exactly the header's bytes: what follows is MQTT.
///
/// Not bounded in time here: the caller runs it under the connect timeout.
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
    trusted: &[IpNet],
) -> io::Result<SocketAddr> {
    if !is_trusted(trusted, peer.ip()) {
        log_untrusted(peer);
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("PROXY protocol from {peer}, which is not in trusted_proxies"),
        ));
    }
    let invalid = |error: ProxyError| io::Error::new(io::ErrorKind::InvalidData, error);
    let mut buf = Vec::with_capacity(MIN_HEADER_LEN);
    loop {
        match parse(&buf).map_err(invalid)? {
            Parsed::Header { header, len } if len == buf.len() => {
                return Ok(match header.addresses {
                    Some(addresses) => {
                        tracing::debug!(proxy = %peer, client = %addresses.source, version = ?header.version, "PROXY header");
                        addresses.source
                    }
                    None => peer,
                });
            }
            Parsed::Header { .. } => {
                // `next_read` never asks for a byte past the header; this is not reached.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "read past the PROXY header",
                ));
            }
            Parsed::Incomplete => {}
        }
        let have = buf.len();
        if have < MIN_HEADER_LEN {
            // Every header is at least this long, so these bytes are all header; read what
            // comes, so that a client that is not a proxy is refused at its first bytes.
            buf.resize(MIN_HEADER_LEN, 0);
            let n = stream.read(&mut buf[have..]).await?;
            buf.truncate(have + n);
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        } else {
            let wanted = next_read(&buf, stream).await?;
            buf.resize(have + wanted, 0);
            stream.read_exact(&mut buf[have..]).await?;
        }
    }
}

/// How many more bytes are certainly part of the header begun in `buf` (at least 1).
async fn next_read(buf: &[u8], stream: &mut TcpStream) -> io::Result<usize> {
    if buf.first() == Some(&b'\r') {
        // v2: the fixed part, then the length it announces (bounded by `parse`).
        if buf.len() < V2_FIXED_LEN {
            return Ok(V2_FIXED_LEN - buf.len());
        }
        let payload_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        return Ok(V2_FIXED_LEN + payload_len - buf.len());
    }
    // v1 ends at the first CRLF. Look at what has arrived without taking it: the bytes up to
    // the CRLF (or all of them, when there is none yet) are the header's.
    let mut peeked = [0u8; V1_MAX_LEN];
    let room = V1_MAX_LEN - buf.len();
    let n = stream.peek(&mut peeked[..room]).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let peeked = &peeked[..n];
    let ends_with_cr = buf.last() == Some(&b'\r');
    if ends_with_cr && peeked[0] == b'\n' {
        return Ok(1);
    }
    Ok(match peeked.windows(2).position(|pair| pair == b"\r\n") {
        Some(cr) => cr + 2,
        None => n,
    })
}

/// Logs a connection from outside `trusted_proxies` at info (a misconfigured proxy, or someone
/// probing the port), at most once per interval with the count of those not logged.
fn log_untrusted(peer: SocketAddr) {
    const INTERVAL_SECS: u64 = 10;
    static START: OnceLock<Instant> = OnceLock::new();
    // Seconds since START of the last info line, plus one (0: never).
    static LAST: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
    let last = LAST.load(Ordering::Relaxed);
    if (last == 0 || now >= last + INTERVAL_SECS)
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::info!(%peer, suppressed, "connection closed: PROXY protocol from an address not in trusted_proxies");
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "connection closed: PROXY protocol from an address not in trusted_proxies");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn header(parsed: Result<Parsed, ProxyError>) -> (ProxyHeader, usize) {
        match parsed {
            Ok(Parsed::Header { header, len }) => (header, len),
            other => panic!("expected a header, got {other:?}"),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// Every proper prefix of a valid header is `Incomplete` (the reader asks for more, never
    /// closes a slow proxy early), and the whole is one header of exactly its length.
    fn check_prefixes(bytes: &[u8]) -> ProxyHeader {
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(Parsed::Incomplete), "prefix {cut}");
        }
        let mut with_mqtt = bytes.to_vec();
        with_mqtt.extend_from_slice(&[0x10, 0x0c]);
        let (parsed, len) = header(parse(&with_mqtt));
        assert_eq!(len, bytes.len());
        parsed
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = check_prefixes(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 1883\r\n");
        assert_eq!(h.version, ProxyVersion::V1);
        let a = h.addresses.unwrap();
        assert_eq!(a.source, addr("192.0.2.1:56324"));
        assert_eq!(a.destination, addr("198.51.100.2:1883"));
        let h = check_prefixes(b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n");
        assert_eq!(h.addresses.unwrap().source, addr("[2001:db8::1]:65535"));
        assert_eq!(check_prefixes(b"PROXY UNKNOWN\r\n").addresses, None);
        assert_eq!(
            check_prefixes(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n").addresses,
            None
        );
    }

    #[test]
    fn v1_longest_header_fits() {
        let tcp6 = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        check_prefixes(tcp6);
        // The specification's worst case, which gives the bound.
        let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), V1_MAX_LEN);
        check_prefixes(longest);
    }

    #[test]
    fn v1_malformed_refused() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 1883 9\r\n",
            b"PROXY TCP4 192.0.2.1  198.51.100.2 56324 1883\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 1883\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 0080 1883\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +80 1883\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 80 1883\r\n",
            b"PROXY tcp4 192.0.2.1 198.51.100.2 80 1883\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 80 1883\n",
            b"PROXY TCP4 192.0.2.1\r198.51.100.2 80 1883\r\n",
            b"PROXY\r\n",
            b"PROXY  UNKNOWN\r\n",
            b"PROXYTCP4 ",
            b"GET / HTTP/1.1\r\n",
            b"\x10\x0c\x00\x04MQTT",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX_LEN, b'x');
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
        long.truncate(V1_MAX_LEN - 1);
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
    }

    #[test]
    fn v2_tcp4_tcp6_with_tlvs() {
        let mut payload = vec![192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x07, 0x5b];
        payload.extend_from_slice(&[0x01, 0x00, 0x04, b'm', b'q', b't', b't']); // ALPN
        payload.extend_from_slice(&[0x04, 0x00, 0x00]); // NOOP, empty
        let h = check_prefixes(&v2(1, 0x11, &payload));
        assert_eq!(h.version, ProxyVersion::V2);
        let a = h.addresses.unwrap();
        assert_eq!(a.source, addr("192.0.2.1:56324"));
        assert_eq!(a.destination, addr("198.51.100.2:1883"));

        let mut payload = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)
            .octets()
            .to_vec();
        payload.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        payload.extend_from_slice(&[0x00, 0x50, 0x07, 0x5b]);
        let h = check_prefixes(&v2(1, 0x21, &payload));
        assert_eq!(h.addresses.unwrap().source, addr("[2001:db8::7]:80"));
    }

    #[test]
    fn v2_local_unspec_unix_keep_the_socket_address() {
        assert_eq!(check_prefixes(&v2(0, 0x00, &[])).addresses, None);
        // LOCAL ignores whatever address block comes with it.
        assert_eq!(check_prefixes(&v2(0, 0x11, &[1, 2, 3])).addresses, None);
        assert_eq!(check_prefixes(&v2(1, 0x00, &[])).addresses, None);
        assert_eq!(check_prefixes(&v2(1, 0x31, &[0; 216])).addresses, None);
    }

    /// PROXY protocol v2, section 2.2: with the UNSPEC family "the receiver MUST ignore" the
    /// address block: whatever a proxy puts there (bytes that are no TLVs) is skipped whole,
    /// not refused, and the socket's own address is kept.
    #[test]
    fn v2_unspec_ignores_whatever_its_address_block_holds() {
        let block = [0x01, 0x00, 0x05, b'x', 0xff];
        let (h, len) = header(parse(&v2(1, 0x00, &block)));
        assert_eq!(h.addresses, None);
        assert_eq!(len, 16 + block.len());
        assert_eq!(check_prefixes(&v2(1, 0x00, &block)).addresses, None);
    }

    #[test]
    fn v2_malformed_refused() {
        let tcp4 = [192, 0, 2, 1, 198, 51, 100, 2, 0, 1, 0, 2];
        let mut bad_version = v2(1, 0x11, &tcp4);
        bad_version[12] = 0x11;
        assert_eq!(parse(&bad_version), Err(ProxyError::V2Version(1)));
        assert_eq!(parse(&v2(2, 0x11, &tcp4)), Err(ProxyError::V2Command(2)));
        assert_eq!(parse(&v2(1, 0x12, &tcp4)), Err(ProxyError::V2Family(0x12)));
        assert_eq!(parse(&v2(1, 0x41, &tcp4)), Err(ProxyError::V2Family(0x41)));
        assert!(matches!(
            parse(&v2(1, 0x11, &tcp4[..11])),
            Err(ProxyError::V2ShortAddresses { .. })
        ));
        assert!(matches!(
            parse(&v2(1, 0x21, &tcp4)),
            Err(ProxyError::V2ShortAddresses { .. })
        ));
        let mut truncated_tlv = tcp4.to_vec();
        truncated_tlv.extend_from_slice(&[0x01, 0x00, 0x05, b'x']);
        assert_eq!(parse(&v2(1, 0x11, &truncated_tlv)), Err(ProxyError::V2Tlv));
        let mut too_long = v2(1, 0x11, &tcp4);
        too_long[14..16].copy_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
        assert!(matches!(parse(&too_long), Err(ProxyError::V2TooLong(_))));
        let mut bad_signature = v2(1, 0x11, &tcp4);
        bad_signature[8] = b'q';
        assert_eq!(parse(&bad_signature), Err(ProxyError::NotProxy));
    }

    proptest! {
        /// Arbitrary bytes never panic the parser, and a header it finds lies within them and
        /// is found again from exactly its own bytes.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Parsed::Header { header, len }) = parse(&bytes) {
                prop_assert!(len <= bytes.len());
                prop_assert_eq!(parse(&bytes[..len]), Ok(Parsed::Header { header, len }));
            }
        }

        /// The same for bytes that begin like a header, so the search reaches deep into both
        /// parsers.
        #[test]
        fn header_like_bytes_never_panic(
            v1 in any::<bool>(),
            tail in proptest::collection::vec(prop_oneof![
                any::<u8>(),
                Just(b' '), Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b':'), Just(b'1'),
            ], 0..200),
        ) {
            let mut bytes = if v1 { b"PROXY TCP4 ".to_vec() } else { V2_SIGNATURE.to_vec() };
            bytes.extend_from_slice(&tail);
            if let Ok(Parsed::Header { len, .. }) = parse(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }
    }
}
