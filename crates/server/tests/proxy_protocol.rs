//! The PROXY protocol on a listener (issue 11: "v1 and v2 per listener, accepted only from
//! configured trusted source addresses; the client address it carries is the one logged,
//! limited and passed to authentication"). Headers are written on raw sockets; rumqttc, which
//! cannot send one, goes through a relay in the test that writes the header and then copies
//! bytes both ways, as HAProxy does. What the broker believes the client's address is, is
//! observed through the authentication hook (`Credentials::peer`).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tern_codec::{Packet, ProtocolVersion};
use tern_server::broker::{AllowAll, AuthDecision, Authenticator, Credentials, Hooks};
use tern_server::{IpNet, ListenerConfig, ListenerKind, Server, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const CONNECT_TIMEOUT_SECS: u64 = 1;

/// Records the address each CONNECT is authenticated with.
#[derive(Default)]
struct SeenPeers(Mutex<Vec<(String, Option<SocketAddr>)>>);

impl Authenticator for SeenPeers {
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision {
        if let Ok(mut seen) = self.0.lock() {
            seen.push((credentials.client_id.to_owned(), credentials.peer));
        }
        AllowAll.authenticate(credentials)
    }
}

impl SeenPeers {
    fn peer_of(&self, client_id: &str) -> Option<SocketAddr> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .find(|(id, _)| id == client_id)
            .and_then(|(_, peer)| *peer)
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn proxy_listener(trusted: &[&str]) -> ListenerConfig {
    ListenerConfig {
        name: "behind-haproxy".to_owned(),
        kind: ListenerKind::Mqtt,
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        max_connections: None,
        proxy_protocol: true,
        trusted_proxies: trusted
            .iter()
            .map(|net| net.parse::<IpNet>().unwrap())
            .collect(),
        tls: None,
        path: "/mqtt".to_owned(),
        allowed_origins: Vec::new(),
        // Behind a proxy the clients are other hosts': anonymous ones only when said so.
        auth: Some(tern_server::AuthConfig {
            allow_anonymous: Some(true),
            ..Default::default()
        }),
    }
}

/// A broker whose only listener expects PROXY headers from `trusted`.
async fn start_proxied(trusted: &[&str]) -> (TestBroker, Arc<SeenPeers>) {
    let seen = Arc::new(SeenPeers::default());
    let mut config = config();
    config.listen = Vec::new();
    config.listeners = vec![proxy_listener(trusted)];
    config.limits.connect_timeout = CONNECT_TIMEOUT_SECS;
    let hooks = Hooks {
        authenticator: seen.clone(),
        ..Hooks::default()
    };
    (start_with_hooks(config, hooks).await, seen)
}

fn v1_tcp4(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bytes.push(0x20 | command);
    bytes.push(family);
    bytes.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// A v2 PROXY header for TCP over IPv6, with an ALPN TLV to skip.
fn v2_tcp6(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let octets = |addr: SocketAddr| match addr.ip() {
        IpAddr::V6(ip) => ip.octets(),
        IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
    };
    let mut payload = octets(source).to_vec();
    payload.extend_from_slice(&octets(destination));
    payload.extend_from_slice(&source.port().to_be_bytes());
    payload.extend_from_slice(&destination.port().to_be_bytes());
    payload.extend_from_slice(&[0x01, 0x00, 0x04, b'm', b'q', b't', b't']);
    v2(1, 0x21, &payload)
}

fn encoded_connect(client_id: &str) -> Vec<u8> {
    let connect = connect_packet(ProtocolVersion::V311, client_id, true, 30);
    let mut out = bytes::BytesMut::new();
    Packet::Connect(Box::new(connect))
        .encode(ProtocolVersion::V311, &mut out)
        .unwrap();
    out.to_vec()
}

/// Opens a raw connection, writes `first` (a header, maybe followed by MQTT) and returns it.
async fn raw_with(addr: SocketAddr, first: &[u8]) -> Raw {
    let mut raw = Raw::open(addr, ProtocolVersion::V311).await;
    raw.send_bytes(first).await;
    raw
}

/// A one-connection proxy for a client we did not write: accepts on its own port, connects to
/// the broker, writes `header` and then relays bytes both ways until either side closes.
async fn relay(broker: SocketAddr, header: Vec<u8>) -> SocketAddr {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut client, _)) = front.accept().await else {
            return;
        };
        let Ok(mut upstream) = TcpStream::connect(broker).await else {
            return;
        };
        if upstream.write_all(&header).await.is_err() {
            return;
        }
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    addr
}

/// rumqttc through the relay: the header, then the client's own bytes; round trip.
async fn rumqttc_through(broker: &TestBroker, header: Vec<u8>, id: &str) {
    let front = relay(broker.addr, header).await;
    let mut client = Client::simple(front, id).await;
    client
        .subscribe(&format!("{id}/t"), rumqttc::QoS::AtLeastOnce)
        .await;
    client
        .publish(
            &format!("{id}/t"),
            rumqttc::QoS::AtLeastOnce,
            false,
            "via proxy",
        )
        .await;
    assert_eq!(&client.recv().await.payload[..], b"via proxy");
    client.disconnect().await;
}

/// Issue 11: a v1 header's client address is the one authentication sees; the CONNECT that
/// follows in the same segment is not swallowed with the header (read exactly its bytes).
#[tokio::test]
async fn v1_header_then_connect_in_one_write() {
    let (broker, seen) = start_proxied(&["127.0.0.1"]).await;
    let client: SocketAddr = "203.0.113.7:40001".parse().unwrap();
    let mut first = v1_tcp4(client, broker.addr);
    first.extend_from_slice(&encoded_connect("v1-raw"));
    let mut raw = raw_with(broker.addr, &first).await;
    assert!(matches!(raw.recv().await, Some(Packet::ConnAck(_))));
    assert_eq!(seen.peer_of("v1-raw"), Some(client));
}

/// Issue 11: v1 (TCP4) in front of rumqttc, a client we did not write.
#[tokio::test]
async fn v1_header_before_rumqttc() {
    let (broker, seen) = start_proxied(&["127.0.0.0/8"]).await;
    let client: SocketAddr = "198.51.100.20:51000".parse().unwrap();
    rumqttc_through(&broker, v1_tcp4(client, broker.addr), "v1-rumqttc").await;
    assert_eq!(seen.peer_of("v1-rumqttc"), Some(client));
}

/// Issue 11: v2 (TCP over IPv6, with a TLV to skip) in front of rumqttc.
#[tokio::test]
async fn v2_header_before_rumqttc() {
    let (broker, seen) = start_proxied(&["127.0.0.1"]).await;
    let client: SocketAddr = "[2001:db8::42]:61000".parse().unwrap();
    rumqttc_through(&broker, v2_tcp6(client, broker.addr), "v2-rumqttc").await;
    assert_eq!(seen.peer_of("v2-rumqttc"), Some(client));
}

/// A proxy that sends its header in pieces (slow network) is waited for: the header is read
/// across several segments, then MQTT.
#[tokio::test]
async fn header_in_pieces() {
    let (broker, seen) = start_proxied(&["127.0.0.1"]).await;
    let client: SocketAddr = "192.0.2.99:1234".parse().unwrap();
    let header = v1_tcp4(client, broker.addr);
    let mut raw = Raw::open(broker.addr, ProtocolVersion::V311).await;
    for piece in header.chunks(5) {
        raw.send_bytes(piece).await;
        raw.stream.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    raw.send_bytes(&encoded_connect("pieces")).await;
    assert!(matches!(raw.recv().await, Some(Packet::ConnAck(_))));
    assert_eq!(seen.peer_of("pieces"), Some(client));
}

/// PROXY protocol v2 LOCAL (a proxy's health check): accepted, and the connection keeps the
/// socket's own address (the proxy's).
#[tokio::test]
async fn v2_local_keeps_the_proxy_address() {
    let (broker, seen) = start_proxied(&["127.0.0.1"]).await;
    let mut first = v2(0, 0x00, &[]);
    first.extend_from_slice(&encoded_connect("health"));
    let mut raw = raw_with(broker.addr, &first).await;
    assert!(matches!(raw.recv().await, Some(Packet::ConnAck(_))));
    let local = raw.stream.local_addr().unwrap();
    assert_eq!(seen.peer_of("health"), Some(local));
}

/// Issue 11: headers are "accepted only from configured trusted source addresses": a
/// connection from elsewhere is closed, even with a valid header, and never reaches MQTT.
#[tokio::test]
async fn untrusted_source_is_closed() {
    let (broker, seen) = start_proxied(&["192.0.2.0/24", "2001:db8::/32"]).await;
    let mut first = v1_tcp4("203.0.113.7:40001".parse().unwrap(), broker.addr);
    first.extend_from_slice(&encoded_connect("untrusted"));
    let mut raw = raw_with(broker.addr, &first).await;
    assert_eq!(raw.until_closed().await, vec![]);
    assert_eq!(seen.count(), 0);
}

/// A connection without a valid header is closed at once (not left to the timeout): plain
/// MQTT, a malformed v1 line, a v2 header of an unknown version.
#[tokio::test]
async fn missing_or_malformed_header_is_closed() {
    let (broker, seen) = start_proxied(&["127.0.0.1"]).await;
    let mut bad_v2 = v2(1, 0x11, &[192, 0, 2, 1, 192, 0, 2, 2, 0, 1, 0, 2]);
    bad_v2[12] = 0x31;
    for first in [
        encoded_connect("no-header"),
        b"PROXY TCP4 192.0.2.1 192.0.2.2 99999 1883\r\n".to_vec(),
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n".to_vec(),
        bad_v2,
        vec![b'x'; 200],
    ] {
        let started = Instant::now();
        let mut raw = raw_with(broker.addr, &first).await;
        raw.send_bytes(&encoded_connect("after-bad")).await;
        assert_eq!(raw.until_closed().await, vec![]);
        assert!(
            started.elapsed() < Duration::from_secs(CONNECT_TIMEOUT_SECS),
            "{:?} closed only after {:?}",
            String::from_utf8_lossy(&first),
            started.elapsed()
        );
    }
    assert_eq!(seen.count(), 0);
}

/// Issue 11, the steps before MQTT run under the connect timeout: a header that stops half
/// way (v1 and v2) is closed when it runs out, and a client through the proxy meanwhile is
/// served.
#[tokio::test]
async fn stalled_header_closed_within_connect_timeout() {
    let (broker, seen) = start_proxied(&["127.0.0.1"]).await;
    let started = Instant::now();
    let mut half_v1 = raw_with(broker.addr, b"PROXY TCP4 192.0.2.1 ").await;
    let v2_header = v2_tcp6("[2001:db8::1]:1".parse().unwrap(), broker.addr);
    let mut half_v2 = raw_with(broker.addr, &v2_header[..20]).await;
    let mut first = v1_tcp4("192.0.2.5:5".parse().unwrap(), broker.addr);
    first.extend_from_slice(&encoded_connect("meanwhile"));
    let mut healthy = raw_with(broker.addr, &first).await;
    assert!(matches!(healthy.recv().await, Some(Packet::ConnAck(_))));
    for raw in [&mut half_v1, &mut half_v2] {
        assert_eq!(raw.until_closed().await, vec![]);
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(CONNECT_TIMEOUT_SECS * 1000 - 100));
    assert!(
        elapsed < Duration::from_secs(CONNECT_TIMEOUT_SECS + 2),
        "{elapsed:?}"
    );
    assert_eq!(seen.count(), 1);
}

/// Issue 11 (configuration): `proxy_protocol = true` without `trusted_proxies` is refused at
/// start, naming the listener.
#[tokio::test]
async fn proxy_protocol_without_trusted_proxies_is_refused() {
    let mut config = ServerConfig {
        durability: tern_server::Durability::Memory,
        ..ServerConfig::default()
    };
    config.listen = Vec::new();
    config.listeners = vec![proxy_listener(&[])];
    let error = match Server::bind_with_hooks(config, Hooks::default()).await {
        Ok(_) => panic!("a PROXY listener without trusted proxies was accepted"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("behind-haproxy"), "{error}");
    assert!(error.contains("trusted_proxies"), "{error}");
}

/// Issue 11, one connect timeout (review finding 3): the budget counts from the accept and
/// covers the PROXY header and the CONNECT together. A proxy that takes most of it to send its
/// header, after which the client sends nothing, is closed at the original deadline (2 s after
/// the accept), not a fresh timeout after the header (3.5 s).
#[tokio::test]
async fn connect_timeout_counts_from_the_accept_not_from_the_header() {
    let mut config = config();
    config.listen = Vec::new();
    config.listeners = vec![proxy_listener(&["127.0.0.1"])];
    config.limits.connect_timeout = 2;
    let broker = start_with(config).await;
    let started = Instant::now();
    let mut raw = Raw::open(broker.addr, ProtocolVersion::V311).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    raw.send_bytes(&v1_tcp4("192.0.2.8:8".parse().unwrap(), broker.addr))
        .await;
    assert_eq!(raw.until_closed().await, vec![]);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_millis(3000),
        "closed {elapsed:?} after the accept"
    );
}
