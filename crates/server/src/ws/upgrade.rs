//! The HTTP/1.1 upgrade of a WebSocket connection (RFC 6455 section 4.2): the request head read
//! into one buffer bounded at [`MAX_REQUEST_HEAD`], parsed with httparse, checked against the
//! listener's path, allowed origins and trusted proxies, and either accepted or refused with the
//! one HTTP status of its cause ([`Refusal`]). The caller bounds the time (the connect timeout).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::UpgradeError;
use crate::listener_config::{IpNet, ListenerConfig, is_trusted};

/// Most bytes of the upgrade request's head (request line and headers): past it, 431.
pub(crate) const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Most header lines in the upgrade request: past it, 431. Browsers send about 15.
const MAX_HEADERS: usize = 64;
/// Up to this size the request head is parsed after every read (then only once more, and when
/// it has ended).
const SHORT_HEAD: usize = 1024;
/// After a refusal, how long and how much of what the client still sends is read and dropped,
/// so that the close is not a reset that loses the response.
const REFUSAL_DRAIN_TIME: Duration = Duration::from_secs(1);
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// Why an upgrade request is refused; each cause has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("the request is not HTTP: {0}")]
    Malformed(httparse::Error),
    #[error("the request head is over {MAX_REQUEST_HEAD} bytes")]
    HeadTooLarge,
    #[error("the request has over {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("the upgrade must be a GET")]
    NotGet,
    #[error("the upgrade needs HTTP/1.1")]
    NotHttp11,
    #[error("no WebSocket endpoint at this path")]
    WrongPath,
    #[error("not a WebSocket upgrade (Upgrade: websocket and Connection: Upgrade are needed)")]
    NotUpgrade,
    #[error("Sec-WebSocket-Key is missing or not 16 bytes in base64")]
    BadKey,
    #[error("only WebSocket version 13 is supported")]
    Version,
    #[error("the Origin is not allowed")]
    Origin,
    #[error("the WebSocket subprotocol mqtt (or mqttv3.1) is required")]
    NoSubprotocol,
}

impl Refusal {
    /// The HTTP status and its reason phrase.
    pub(crate) fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::HeadTooLarge | Refusal::TooManyHeaders => {
                (431, "Request Header Fields Too Large")
            }
            Refusal::NotGet => (405, "Method Not Allowed"),
            Refusal::WrongPath => (404, "Not Found"),
            Refusal::Version => (426, "Upgrade Required"),
            Refusal::Origin => (403, "Forbidden"),
            Refusal::Malformed(_)
            | Refusal::NotHttp11
            | Refusal::NotUpgrade
            | Refusal::BadKey
            | Refusal::NoSubprotocol => (400, "Bad Request"),
        }
    }

    /// A header the status calls for (RFC 6455 section 4.4, RFC 9110 section 15.5.6).
    fn extra_header(self) -> &'static str {
        match self {
            Refusal::Version => "Sec-WebSocket-Version: 13\r\n",
            Refusal::NotGet => "Allow: GET\r\n",
            _ => "",
        }
    }
}

/// What an accepted upgrade request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Upgrade {
    pub(super) accept_key: String,
    pub(super) subprotocol: &'static str,
    pub(super) client: SocketAddr,
}

/// Reads until the end of the request head is in `buf`: `Ok(Ok(head length))`, or the refusal
/// of a head that is too large or not HTTP. Bytes after the head stay in `buf`. Parsing is run
/// while the buffer is short (up to 1 KiB), once when it first grows past that (so that bytes
/// that are not HTTP, like a TLS ClientHello of 2 KiB in one read, get their 400 at once), and
/// when an empty line has come, so a client sending a byte at a time costs a bounded amount of
/// work.
pub(super) async fn read_request_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Result<usize, Refusal>, UpgradeError> {
    loop {
        if buf.len() > MAX_REQUEST_HEAD {
            return Ok(Err(Refusal::HeadTooLarge));
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(2048);
        }
        let before = buf.len();
        let searched = before.saturating_sub(3);
        if stream.read_buf(buf).await? == 0 {
            return Err(UpgradeError::Closed);
        }
        let ended = buf[searched..].windows(2).any(|w| w == b"\n\n")
            || buf[searched..].windows(3).any(|w| w == b"\n\r\n");
        let crossed = before <= SHORT_HEAD && buf.len() > SHORT_HEAD;
        if !ended && !crossed && buf.len() > SHORT_HEAD {
            continue;
        }
        match parse_head(buf) {
            Ok(Some(len)) if len > MAX_REQUEST_HEAD => return Ok(Err(Refusal::HeadTooLarge)),
            Ok(Some(len)) => return Ok(Ok(len)),
            Ok(None) => {}
            Err(refusal) => return Ok(Err(refusal)),
        }
    }
}

/// The length of the request head if it is complete.
fn parse_head(buf: &[u8]) -> Result<Option<usize>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(Refusal::TooManyHeaders),
        Err(error) => Err(Refusal::Malformed(error)),
    }
}

/// Checks a complete request head against RFC 6455 section 4.2.1, MQTT section 6 and the
/// listener's settings.
pub(super) fn check_request(
    head: &[u8],
    config: &ListenerConfig,
    peer: SocketAddr,
) -> Result<Upgrade, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Refusal::Malformed(httparse::Error::Token)),
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders),
        Err(error) => return Err(Refusal::Malformed(error)),
    }
    if request.method != Some("GET") {
        return Err(Refusal::NotGet);
    }
    if request.version != Some(1) {
        return Err(Refusal::NotHttp11);
    }
    let target = request.path.unwrap_or("");
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != config.path {
        return Err(Refusal::WrongPath);
    }
    let headers = request.headers;
    if !has_token(headers, "upgrade", "websocket") || !has_token(headers, "connection", "upgrade") {
        return Err(Refusal::NotUpgrade);
    }
    if header(headers, "sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(Refusal::Version);
    }
    let key = header(headers, "sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .filter(|key| is_websocket_key(key))
        .ok_or(Refusal::BadKey)?;
    if !config.allowed_origins.is_empty() {
        let allowed = |origin: &[u8]| {
            config
                .allowed_origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.trim_ascii()))
        };
        // No Origin is let through: only browsers send one, and the allow-list is what keeps
        // other sites' pages out; a program can send any Origin it likes anyway.
        if !headers_named(headers, "origin").all(allowed) {
            return Err(Refusal::Origin);
        }
    }
    let subprotocol = choose_subprotocol(headers).ok_or(Refusal::NoSubprotocol)?;
    Ok(Upgrade {
        accept_key: derive_accept_key(key),
        subprotocol,
        client: forwarded_client(headers, peer, &config.trusted_proxies),
    })
}

/// The values of the headers called `name`, in order.
fn headers_named<'h>(
    headers: &'h [httparse::Header<'h>],
    name: &'static str,
) -> impl DoubleEndedIterator<Item = &'h [u8]> + 'h {
    headers
        .iter()
        .filter(move |header| header.name.eq_ignore_ascii_case(name))
        .map(|header| header.value)
}

fn header<'h>(headers: &'h [httparse::Header<'h>], name: &'static str) -> Option<&'h [u8]> {
    headers_named(headers, name).next()
}

/// Whether a comma-separated header `name` has `token` (case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &'static str, token: &str) -> bool {
    headers_named(headers, name).any(|value| {
        value
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// A Sec-WebSocket-Key is 16 bytes in base64: 22 characters and `==`.
fn is_websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// `mqtt` if the client offers it, else `mqttv3.1` (what MQTT 3.1 clients offer); `None` if it
/// offers neither.
fn choose_subprotocol(headers: &[httparse::Header<'_>]) -> Option<&'static str> {
    let offers = |name: &str| has_token(headers, "sec-websocket-protocol", name);
    if offers("mqtt") {
        Some("mqtt")
    } else if offers("mqttv3.1") {
        Some("mqttv3.1")
    } else {
        None
    }
}

/// The client's address: `peer`, unless `peer` is a trusted proxy and the request carries
/// `X-Forwarded-For`. Then the list (every such header, in order) is read from the right, the
/// end the proxies appended to: each entry is the address the hop before it saw, believed while
/// that hop is a trusted proxy. The first entry that is not a trusted proxy is the client; an
/// entry that is not an address stops the walk at the last address believed. (The left-most
/// entry is whatever the client wrote: taking it would let anyone choose their address.) A
/// forwarded address without a port gets port 0.
fn forwarded_client(
    headers: &[httparse::Header<'_>],
    peer: SocketAddr,
    trusted: &[IpNet],
) -> SocketAddr {
    if !is_trusted(trusted, peer.ip()) {
        return peer;
    }
    let entries = headers_named(headers, "x-forwarded-for")
        .rev()
        .flat_map(|value| value.rsplit(|&b| b == b','));
    let mut client = peer;
    for entry in entries {
        let Some(addr) = parse_forwarded_address(entry) else {
            break;
        };
        client = addr;
        if !is_trusted(trusted, addr.ip()) {
            break;
        }
    }
    client
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:4711`.
fn parse_forwarded_address(entry: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(addr) = SocketAddr::from_str(text) {
        return Some(addr);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(text);
    IpAddr::from_str(bare).ok().map(|ip| SocketAddr::new(ip, 0))
}

/// Answers with the refusal's HTTP error, closes the sending side, and reads and drops what the
/// client still sends for a moment, so that the close does not reset the connection before the
/// client has read the answer. `scratch` is the request buffer, reused.
pub(super) async fn refuse<S>(stream: &mut S, refusal: Refusal, scratch: &mut Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (code, reason) = refusal.status();
    let body = format!("{refusal}\n");
    let response = format!(
        "HTTP/1.1 {code} {reason}\r\nConnection: close\r\n{}Content-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        refusal.extra_header(),
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_err()
        || stream.flush().await.is_err()
        || stream.shutdown().await.is_err()
    {
        return;
    }
    let drain = async {
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            scratch.clear();
            scratch.reserve(4096);
            match stream.read_buf(scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_DRAIN_TIME, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(extra: &str) -> ListenerConfig {
        let text = format!("name = \"w\"\nkind = \"ws\"\nbind = \"127.0.0.1:0\"\n{extra}");
        toml::from_str(&text).unwrap()
    }

    fn request(extra: &str) -> String {
        format!(
            "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn check(extra_config: &str, extra_headers: &str, peer: &str) -> Result<Upgrade, Refusal> {
        check_request(
            request(extra_headers).as_bytes(),
            &listener(extra_config),
            peer.parse().unwrap(),
        )
    }

    /// RFC 6455 section 1.3: the accept key of the RFC's own example; `mqtt` chosen over
    /// `mqttv3.1` [MQTT-6.0.0-3].
    #[test]
    fn accepts_rfc_example_and_prefers_mqtt() {
        let up = check(
            "",
            "Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n",
            "192.0.2.1:5000",
        )
        .unwrap();
        assert_eq!(up.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(up.subprotocol, "mqtt");
        let up = check("", "Sec-WebSocket-Protocol: mqttv3.1\r\n", "192.0.2.1:5000").unwrap();
        assert_eq!(up.subprotocol, "mqttv3.1");
    }

    #[test]
    fn refusals_have_their_status() {
        let peer = "192.0.2.1:5000";
        assert_eq!(
            check("", "", peer).unwrap_err(),
            Refusal::NoSubprotocol,
            "no subprotocol"
        );
        assert_eq!(
            check(
                "allowed_origins = [\"https://a.example\"]",
                "Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://b.example\r\n",
                peer
            )
            .unwrap_err(),
            Refusal::Origin
        );
        assert!(
            check(
                "allowed_origins = [\"https://a.example\"]",
                "Sec-WebSocket-Protocol: mqtt\r\nOrigin: HTTPS://A.example\r\n",
                peer
            )
            .is_ok()
        );
        let config = listener("");
        let peer = peer.parse().unwrap();
        let wrong_path = request("Sec-WebSocket-Protocol: mqtt\r\n").replace("/mqtt", "/other");
        assert_eq!(
            check_request(wrong_path.as_bytes(), &config, peer),
            Err(Refusal::WrongPath)
        );
        let post = request("Sec-WebSocket-Protocol: mqtt\r\n").replace("GET", "POST");
        assert_eq!(
            check_request(post.as_bytes(), &config, peer),
            Err(Refusal::NotGet)
        );
        let v8 = request("Sec-WebSocket-Protocol: mqtt\r\n").replace("Version: 13", "Version: 8");
        assert_eq!(
            check_request(v8.as_bytes(), &config, peer),
            Err(Refusal::Version)
        );
        let plain =
            request("Sec-WebSocket-Protocol: mqtt\r\n").replace("Upgrade: websocket", "X: y");
        assert_eq!(
            check_request(plain.as_bytes(), &config, peer),
            Err(Refusal::NotUpgrade)
        );
        let key = request("Sec-WebSocket-Protocol: mqtt\r\n").replace("dGhl", "***");
        assert_eq!(
            check_request(key.as_bytes(), &config, peer),
            Err(Refusal::BadKey)
        );
        assert_eq!(Refusal::HeadTooLarge.status().0, 431);
    }

    /// X-Forwarded-For is read from the right and believed only through trusted proxies.
    #[test]
    fn forwarded_for_from_trusted_proxies_only() {
        let proxies = "trusted_proxies = [\"10.0.0.0/8\"]";
        let xff = "Sec-WebSocket-Protocol: mqtt\r\nX-Forwarded-For: 198.51.100.9, 203.0.113.5\r\n\
                   X-Forwarded-For: 10.1.1.1\r\n";
        let client = |config: &str, peer: &str| check(config, xff, peer).unwrap().client;
        // Untrusted peer: its own address.
        assert_eq!(
            client(proxies, "192.0.2.1:5000"),
            "192.0.2.1:5000".parse().unwrap()
        );
        // No proxies configured: likewise.
        assert_eq!(
            client("", "10.0.0.1:5000"),
            "10.0.0.1:5000".parse().unwrap()
        );
        // Trusted: 10.1.1.1 is a proxy too, 203.0.113.5 is the first address not a proxy (the
        // client's own 198.51.100.9 claim is not believed).
        assert_eq!(
            client(proxies, "10.0.0.1:5000"),
            "203.0.113.5:0".parse().unwrap()
        );
        let garbage = "Sec-WebSocket-Protocol: mqtt\r\nX-Forwarded-For: 203.0.113.5, unknown\r\n";
        assert_eq!(
            check(proxies, garbage, "10.0.0.1:5000").unwrap().client,
            "10.0.0.1:5000".parse().unwrap()
        );
        for (text, addr) in [
            ("192.0.2.1:4711", "192.0.2.1:4711"),
            ("2001:db8::1", "[2001:db8::1]:0"),
            ("[2001:db8::1]", "[2001:db8::1]:0"),
            ("[2001:db8::1]:4711", "[2001:db8::1]:4711"),
        ] {
            assert_eq!(
                parse_forwarded_address(text.as_bytes()),
                Some(addr.parse().unwrap())
            );
        }
    }

    /// Review finding 11: bytes that are not HTTP (here a TLS ClientHello of 1.8 KB, and
    /// garbage) arriving in one read over 1 KiB, with no empty line, are refused at once rather
    /// than read until 64 KiB or the timeout.
    #[tokio::test]
    async fn long_first_read_that_is_not_http_refused_at_once() {
        let mut hello = vec![0x16, 0x03, 0x01, 0x07, 0x00, 0x01];
        hello.resize(1800, 0xAB);
        for input in [hello, vec![0; 2000]] {
            let mut stream = &input[..];
            let mut buf = Vec::new();
            let result = read_request_head(&mut stream, &mut buf).await.unwrap();
            assert!(matches!(result, Err(Refusal::Malformed(_))), "{result:?}");
        }
        // A long request that is HTTP so far is still read to its end.
        let mut long = request("Sec-WebSocket-Protocol: mqtt\r\n");
        long.insert_str(20, &format!("X-Pad: {}\r\n", "p".repeat(1500)));
        let mut stream = long.as_bytes();
        let mut buf = Vec::new();
        let result = read_request_head(&mut stream, &mut buf).await.unwrap();
        assert_eq!(result, Ok(long.len()));
    }

    #[test]
    fn head_parsing_limits() {
        let mut many = String::from("GET /mqtt HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            many.push_str(&format!("X-{i}: y\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse_head(many.as_bytes()), Err(Refusal::TooManyHeaders));
        assert_eq!(parse_head(b"GET /mqtt HTTP/1.1\r\nHost"), Ok(None));
        assert!(matches!(
            parse_head(b"\x16\x03\x01\x02\x00"),
            Err(Refusal::Malformed(_))
        ));
    }
}
