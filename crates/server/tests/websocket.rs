//! MQTT over WebSockets (`kind = "ws"`), proven with clients we did not write: rumqttc with its
//! `websocket` feature for MQTT sessions, tokio-tungstenite as a WebSocket client with rumqttc's
//! `mqttbytes` encoder for frame-level cases, and raw sockets only for what no well-behaved
//! client would send (oversized headers, a 2 GB frame header, a stalled upgrade).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{Client, WAIT};
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4 as mqtt;
use rumqttc::{MqttOptions, QoS, Transport};
use tern_server::broker::{AllowAll, AuthDecision, Authenticator, Broker, Credentials, Hooks};
use tern_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A server with the plain TCP listener of the test configuration and the `[[listeners]]` given.
struct WsServer {
    tcp: SocketAddr,
    server_listeners: HashMap<String, SocketAddr>,
    broker: Arc<Broker>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl WsServer {
    async fn start(listeners: &str) -> WsServer {
        WsServer::start_with(listeners, |_| {}, Hooks::default()).await
    }

    async fn start_with(
        listeners: &str,
        tune: impl FnOnce(&mut ServerConfig),
        hooks: Hooks,
    ) -> WsServer {
        let mut config = common::config();
        config.listeners = ServerConfig::from_toml(listeners)
            .expect("listeners parse")
            .listeners;
        tune(&mut config);
        let names: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let server = Server::bind_with_hooks(config, hooks).await.expect("bind");
        let tcp = server.local_addrs()[0];
        let server_listeners = names
            .into_iter()
            .map(|name| {
                let addr = server.listener_addr(&name).expect("listener bound");
                (name, addr)
            })
            .collect();
        let broker = server.broker().clone();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            if let Err(error) = server.run(stopped, Duration::from_secs(4)).await {
                panic!("server failed: {error}");
            }
        });
        WsServer {
            tcp,
            server_listeners,
            broker,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.server_listeners[name]
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

const WS: &str = r#"
[[listeners]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
"#;

/// rumqttc options for MQTT over WebSockets at `url`.
fn ws_options(id: &str, url: String, port: u16) -> MqttOptions {
    let mut options = MqttOptions::new(id, url, port);
    options.set_transport(Transport::Ws);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(1 << 20, 1 << 20);
    options
}

fn ws_url(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}")
}

/// A WebSocket client (tokio-tungstenite) speaking MQTT 3.1.1 bytes encoded by rumqttc.
struct WsClient {
    ws: WebSocketStream<TcpStream>,
    buf: BytesMut,
}

impl WsClient {
    async fn open(addr: SocketAddr) -> WsClient {
        let mut request = ws_url(addr, "/mqtt").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
        let stream = TcpStream::connect(addr).await.unwrap();
        let (ws, response) =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
                .await
                .expect("upgrade in time")
                .expect("upgrade");
        assert_eq!(response.status(), 101);
        assert_eq!(response.headers()["sec-websocket-protocol"], "mqtt");
        WsClient {
            ws,
            buf: BytesMut::new(),
        }
    }

    /// Opens and completes CONNECT / CONNACK, the CONNECT split over two frames.
    async fn connected(addr: SocketAddr, id: &str) -> WsClient {
        let mut client = WsClient::open(addr).await;
        let connect = encode(&[mqtt::Packet::Connect(mqtt::Connect::new(id))]);
        client.send(&connect[..3]).await;
        client.send(&connect[3..]).await;
        match client.recv_packet().await {
            Some(mqtt::Packet::ConnAck(connack)) => {
                assert_eq!(connack.code, mqtt::ConnectReturnCode::Success)
            }
            other => panic!("expected CONNACK, got {other:?}"),
        }
        client
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.ws
            .send(Message::Binary(bytes.to_vec().into()))
            .await
            .expect("send a frame");
    }

    /// The next message, `None` at the end of the stream or on an error. Panics after `WAIT`.
    async fn next_message(&mut self) -> Option<Message> {
        match tokio::time::timeout(WAIT, self.ws.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(message)) => Some(message),
            _ => None,
        }
    }

    /// The next MQTT packet from binary frames; `None` if the connection ends first.
    async fn recv_packet(&mut self) -> Option<mqtt::Packet> {
        loop {
            match mqtt::Packet::read(&mut self.buf, 1 << 20) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(error) => panic!("the broker sent an invalid packet: {error}"),
            }
            match self.next_message().await? {
                Message::Binary(data) => self.buf.extend_from_slice(&data),
                Message::Close(_) => return None,
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("the broker sent {other:?}"),
            }
        }
    }

    /// Reads until the broker's close frame; its code.
    async fn close_code(&mut self) -> Option<CloseCode> {
        loop {
            match self.next_message().await {
                Some(Message::Close(frame)) => return frame.map(|f| f.code),
                Some(_) => {}
                None => panic!("the stream ended without a close frame"),
            }
        }
    }
}

fn encode(packets: &[mqtt::Packet]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for packet in packets {
        packet.write(&mut out, 1 << 20).expect("encode");
    }
    out.to_vec()
}

/// Issue 11: MQTT over WebSockets with a real client (rumqttc): connect, subscribe and publish
/// at QoS 0/1/2 between a WebSocket client and a TCP client, both ways.
#[tokio::test]
async fn connect_publish_subscribe_over_ws() {
    let server = WsServer::start(WS).await;
    let ws = server.addr("ws");
    let (mut over_ws, connack) =
        Client::connect(ws_options("ws-sub", ws_url(ws, "/mqtt"), ws.port())).await;
    assert!(!connack.session_present);
    over_ws.subscribe("ws/in/#", QoS::ExactlyOnce).await;
    let mut tcp_options = common::options(server.tcp, "tcp-sub");
    tcp_options.set_max_packet_size(1 << 20, 1 << 20);
    let (mut over_tcp, _) = Client::connect(tcp_options).await;
    over_tcp.subscribe("ws/out/#", QoS::ExactlyOnce).await;

    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let payload = vec![i as u8; 100 + i * 40_000];
        over_tcp
            .publish(&format!("ws/in/{i}"), qos, false, payload.clone())
            .await;
        let got = over_ws.recv().await;
        assert_eq!((got.qos, &got.payload[..]), (qos, &payload[..]));

        over_ws
            .publish(&format!("ws/out/{i}"), qos, false, payload.clone())
            .await;
        let got = over_tcp.recv().await;
        assert_eq!((got.qos, &got.payload[..]), (qos, &payload[..]));
    }
    over_ws.disconnect().await;
}

/// Issue 11 / [MQTT-6.0.0-2]: an MQTT packet may span frames (the CONNECT of
/// `WsClient::connected`, and a PUBLISH here byte by byte) and a frame may hold several
/// packets (SUBSCRIBE, PUBLISH and PINGREQ in one).
#[tokio::test]
async fn packets_span_frames_and_frames_hold_packets_mqtt_6_0_0_2() {
    let server = WsServer::start(WS).await;
    let mut client = WsClient::connected(server.addr("ws"), "frames").await;
    let mut subscribe = mqtt::Subscribe::new("f/#", QoS::AtLeastOnce);
    subscribe.pkid = 1;
    let batch = encode(&[
        mqtt::Packet::Subscribe(subscribe),
        mqtt::Packet::Publish(mqtt::Publish::new("f/1", QoS::AtMostOnce, "one")),
        mqtt::Packet::PingReq,
    ]);
    client.send(&batch).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(client.recv_packet().await.expect("a packet"));
    }
    assert!(matches!(seen[0], mqtt::Packet::SubAck(_)), "{seen:?}");
    assert!(seen.contains(&mqtt::Packet::PingResp), "{seen:?}");
    assert!(
        seen.iter()
            .any(|p| matches!(p, mqtt::Packet::Publish(p) if &p.payload[..] == b"one")),
        "{seen:?}"
    );

    let mut publish = mqtt::Publish::new("f/2", QoS::AtLeastOnce, "two");
    publish.pkid = 7;
    for byte in encode(&[mqtt::Packet::Publish(publish)]) {
        client.send(&[byte]).await;
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(client.recv_packet().await.expect("a packet"));
    }
    assert!(
        seen.iter()
            .any(|p| matches!(p, mqtt::Packet::PubAck(ack) if ack.pkid == 7)),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|p| matches!(p, mqtt::Packet::Publish(p) if &p.payload[..] == b"two")),
        "{seen:?}"
    );
}

/// RFC 6455 section 5.5.2: a ping is answered with a pong carrying its payload, on a connection
/// that is otherwise idle.
#[tokio::test]
async fn ping_answered_with_pong_while_idle() {
    let server = WsServer::start(WS).await;
    let mut client = WsClient::connected(server.addr("ws"), "pinger").await;
    for round in 0..3u8 {
        client
            .ws
            .send(Message::Ping(vec![round, 42].into()))
            .await
            .unwrap();
        match client.next_message().await {
            Some(Message::Pong(data)) => assert_eq!(&data[..], &[round, 42]),
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

/// Issue 11: close frames both ways. A client's close frame is answered with a close frame and
/// ends the connection (the broker lets the session go); the broker closing the connection
/// (after DISCONNECT) sends a close frame (1000) first.
#[tokio::test]
async fn close_frames_both_ways() {
    let server = WsServer::start(WS).await;
    let mut client = WsClient::connected(server.addr("ws"), "closer").await;
    client
        .ws
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    assert_eq!(client.close_code().await, Some(CloseCode::Normal));
    assert!(client.next_message().await.is_none(), "the stream ends");
    common::wait_until("closer is offline", || {
        server
            .broker
            .session("closer")
            .is_none_or(|session| !session.is_online())
    })
    .await;

    let mut client = WsClient::connected(server.addr("ws"), "leaver").await;
    client.send(&encode(&[mqtt::Packet::Disconnect])).await;
    assert_eq!(client.close_code().await, Some(CloseCode::Normal));
    assert!(client.next_message().await.is_none(), "the stream ends");
}

/// [MQTT-6.0.0-1]: a text frame closes the network connection (close code 1003).
#[tokio::test]
async fn text_frame_closes_the_connection_mqtt_6_0_0_1() {
    let server = WsServer::start(WS).await;
    let mut client = WsClient::connected(server.addr("ws"), "texter").await;
    client.ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(client.close_code().await, Some(CloseCode::Unsupported));
    assert!(client.next_message().await.is_none(), "the stream ends");
}

/// An HTTP request by hand; the response head (status line and headers) and whether the server
/// closed the connection after it, within `WAIT`.
async fn http_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
            if response.starts_with(b"HTTP/1.1 101")
                && response.windows(4).any(|w| w == b"\r\n\r\n")
            {
                return false;
            }
        }
    })
    .await
    .expect("an answer in time");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text, closed)
}

fn upgrade_request(path: &str, headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
}

/// Issue 11: an upgrade on another path (404), without the `mqtt` subprotocol (400), with a
/// wrong version (426), a wrong Origin (403), not a GET (405), and with 64 KiB of headers or
/// too many of them (431) gets its HTTP error and is closed; `mqttv3.1` alone is echoed.
#[tokio::test]
async fn refused_upgrades_get_their_http_error() {
    let server = WsServer::start(
        r#"
[[listeners]]
name = "ws"
kind = "ws"
bind = "127.0.0.1:0"
path = "/custom/mqtt"
allowed_origins = ["https://app.example"]
"#,
    )
    .await;
    let addr = server.addr("ws");
    let proto = "Sec-WebSocket-Protocol: mqtt\r\n";
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (upgrade_request("/mqtt", proto).into_bytes(), 404),
        (upgrade_request("/custom/mqtt", "").into_bytes(), 400),
        (
            upgrade_request(
                "/custom/mqtt",
                "Sec-WebSocket-Protocol: chat, superchat\r\n",
            )
            .into_bytes(),
            400,
        ),
        (
            upgrade_request("/custom/mqtt", proto)
                .replace("Version: 13", "Version: 8")
                .into_bytes(),
            426,
        ),
        (
            upgrade_request(
                "/custom/mqtt",
                "Sec-WebSocket-Protocol: mqtt\r\nOrigin: https://evil.example\r\n",
            )
            .into_bytes(),
            403,
        ),
        (
            upgrade_request("/custom/mqtt", proto)
                .replace("GET", "POST")
                .into_bytes(),
            405,
        ),
        (
            upgrade_request(
                "/custom/mqtt",
                &format!("{proto}X-Big: {}\r\n", "a".repeat(65 * 1024)),
            )
            .into_bytes(),
            431,
        ),
        (
            upgrade_request(
                "/custom/mqtt",
                &(0..100)
                    .map(|i| format!("X-{i}: y\r\n"))
                    .collect::<String>(),
            )
            .into_bytes(),
            431,
        ),
        (
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            400,
        ),
    ];
    for (request, expected) in cases {
        let (status, response, closed) = http_exchange(addr, &request).await;
        assert_eq!(status, expected, "{response}");
        assert!(closed, "closed after {expected}");
        if expected == 426 {
            assert!(response.contains("Sec-WebSocket-Version: 13"), "{response}");
        }
    }
    // The server is still fine, and echoes mqttv3.1 when that is all the client offers.
    let (status, response, closed) = http_exchange(
        addr,
        upgrade_request(
            "/custom/mqtt?client=1",
            "Sec-WebSocket-Protocol: mqttv3.1\r\nOrigin: https://app.example\r\n",
        )
        .as_bytes(),
    )
    .await;
    assert_eq!((status, closed), (101, false), "{response}");
    assert!(
        response.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"),
        "{response}"
    );
    assert!(
        response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{response}"
    );
}

/// A client frame by hand (masked, as RFC 6455 section 5.3 requires), for frames no client
/// library sends.
fn masked_frame_header(opcode: u8, len: u64) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= u64::from(u16::MAX) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&len.to_be_bytes());
    }
    frame.extend_from_slice(&[0, 0, 0, 0]); // the zero mask leaves the payload as it is
    frame
}

/// Reads the response head of an upgrade sent by hand; returns what came after it.
async fn read_switching_protocols(stream: &mut TcpStream) -> Vec<u8> {
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed during the upgrade");
        response.extend_from_slice(&chunk[..n]);
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(response.starts_with(b"HTTP/1.1 101 "));
            return response.split_off(end + 4);
        }
    }
}

/// Issue 11: the bytes a client sends right behind its upgrade request (its CONNECT, in the same
/// write) are not lost; then a frame announcing 2 GB is refused without waiting for it (close
/// 1009, and the connection ends).
#[tokio::test]
async fn first_frame_behind_the_request_kept_and_2gb_frame_refused() {
    let server = WsServer::start(WS).await;
    let mut stream = TcpStream::connect(server.addr("ws")).await.unwrap();
    let connect = encode(&[mqtt::Packet::Connect(mqtt::Connect::new("huge"))]);
    let mut bytes = upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").into_bytes();
    bytes.extend(masked_frame_header(0x2, connect.len() as u64));
    bytes.extend(&connect);
    stream.write_all(&bytes).await.unwrap();
    let mut after = read_switching_protocols(&mut stream).await;
    // The CONNACK, in a binary frame: 0x82, length 4, then 0x20 0x02 0x00 0x00.
    while after.len() < 6 {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        after.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(&after[..6], &[0x82, 4, 0x20, 2, 0, 0]);

    let mut huge = masked_frame_header(0x2, 2 << 30);
    huge.extend_from_slice(&[0u8; 512]);
    stream.write_all(&huge).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    // A close frame with 1009 (message too big), then the end of the stream.
    assert_eq!(&rest[..4], &[0x88, 2, 0x03, 0xF1], "{rest:?}");
}

/// Reads from `stream` until `buf` holds at least `n` bytes (within `WAIT`).
async fn read_at_least(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    while buf.len() < n {
        let mut chunk = [0u8; 256];
        let got = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("bytes in time")
            .unwrap();
        assert!(got > 0, "closed early: {buf:?}");
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// RFC 6455 section 5.4 and [MQTT-6.0.0-2]: a CONNECT in a fragmented message (a binary frame
/// and two continuation frames) with a ping between the fragments: the pong comes at once, the
/// CONNACK once the packet is whole.
#[tokio::test]
async fn fragmented_message_with_a_ping_between_fragments() {
    let server = WsServer::start(WS).await;
    let mut stream = TcpStream::connect(server.addr("ws")).await.unwrap();
    let connect = encode(&[mqtt::Packet::Connect(mqtt::Connect::new("fragments"))]);
    let frame = |fin: bool, opcode: u8, payload: &[u8]| {
        let mut frame = masked_frame_header(opcode, payload.len() as u64);
        if !fin {
            frame[0] &= 0x7F;
        }
        frame.extend_from_slice(payload);
        frame
    };
    let mut bytes = upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").into_bytes();
    bytes.extend(frame(false, 0x2, &connect[..2]));
    stream.write_all(&bytes).await.unwrap();
    let mut got = read_switching_protocols(&mut stream).await;
    stream.write_all(&frame(true, 0x9, b"hi")).await.unwrap();
    read_at_least(&mut stream, &mut got, 4).await;
    assert_eq!(&got[..], &[0x8A, 2, b'h', b'i'], "the pong");
    got.clear();
    stream
        .write_all(&frame(false, 0x0, &connect[2..5]))
        .await
        .unwrap();
    stream
        .write_all(&frame(true, 0x0, &connect[5..]))
        .await
        .unwrap();
    read_at_least(&mut stream, &mut got, 6).await;
    assert_eq!(&got[..6], &[0x82, 4, 0x20, 2, 0, 0], "the CONNACK");
}

/// Upgrades, sends a frame header announcing 2 GB (and only a little of it), and returns all
/// the broker sent after the 101 until it closed the connection.
async fn announce_2gb_frame(addr: SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut bytes = upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").into_bytes();
    bytes.extend(masked_frame_header(0x2, 2 << 30));
    bytes.extend_from_slice(&[0u8; 512]);
    stream.write_all(&bytes).await.unwrap();
    let mut rest = read_switching_protocols(&mut stream).await;
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("closed in time");
    rest
}

/// Issue 11, bad input: upgrades that stall (half a request) are closed within the connect
/// timeout; upgrades with the wrong path or subprotocol, 64 KiB of headers and a frame
/// announcing 2 GB are refused at once, over and over; meanwhile a client on the plain TCP
/// listener of the same server keeps its latency.
#[tokio::test]
async fn bad_upgrades_closed_within_connect_timeout_tcp_client_keeps_latency() {
    let server = WsServer::start_with(
        WS,
        |config| config.limits.connect_timeout = 1,
        Hooks::default(),
    )
    .await;
    let ws = server.addr("ws");
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(ws).await.unwrap();
        stream
            .write_all(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: webs")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let opened = Instant::now();
    let bad_input = tokio::spawn(async move {
        let proto = "Sec-WebSocket-Protocol: mqtt\r\n";
        let big_headers = format!("{proto}X-Big: {}\r\n", "a".repeat(64 * 1024));
        for _ in 0..5 {
            for (request, expected) in [
                (upgrade_request("/other", proto), 404),
                (upgrade_request("/mqtt", ""), 400),
                (upgrade_request("/mqtt", &big_headers), 431),
            ] {
                let (status, response, closed) = http_exchange(ws, request.as_bytes()).await;
                assert_eq!((status, closed), (expected, true), "{response}");
            }
            let rest = announce_2gb_frame(ws).await;
            assert_eq!(&rest[..4], &[0x88, 2, 0x03, 0xF1], "{rest:?}");
        }
    });

    let mut client = Client::simple(server.tcp, "steady").await;
    client.subscribe("steady/t", QoS::AtMostOnce).await;
    let mut worst = Duration::ZERO;
    for i in 0..20u8 {
        let sent = Instant::now();
        client
            .publish("steady/t", QoS::AtMostOnce, false, vec![i])
            .await;
        let got = client.recv().await;
        assert_eq!(&got.payload[..], &[i]);
        worst = worst.max(sent.elapsed());
    }
    assert!(worst < Duration::from_secs(1), "worst round trip {worst:?}");
    bad_input.await.expect("every bad upgrade refused");

    for mut stream in stalled {
        let mut rest = Vec::new();
        // The end of the stream (or a reset): nothing but the close.
        let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
            .await
            .expect("closed by the server");
        assert!(rest.is_empty(), "{rest:?}");
    }
    let took = opened.elapsed();
    assert!(took < Duration::from_millis(2500), "closed after {took:?}");
}

/// Records the peer address each client's CONNECT is authenticated with.
#[derive(Default)]
struct PeerRecorder(Mutex<HashMap<String, Option<SocketAddr>>>);

impl Authenticator for PeerRecorder {
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision {
        self.0
            .lock()
            .unwrap()
            .insert(credentials.client_id.to_owned(), credentials.peer);
        AllowAll.authenticate(credentials)
    }
}

/// Issue 11: X-Forwarded-For is believed only from a trusted proxy: through a listener that
/// trusts 127.0.0.1 the broker authenticates (and logs and limits) the forwarded address; through
/// one that does not, the TCP peer's.
#[tokio::test]
async fn x_forwarded_for_believed_only_from_trusted_proxies() {
    let recorder = Arc::new(PeerRecorder::default());
    let hooks = Hooks {
        authenticator: recorder.clone(),
        ..Hooks::default()
    };
    let server = WsServer::start_with(
        r#"
[[listeners]]
name = "behind-proxy"
kind = "ws"
bind = "127.0.0.1:0"
trusted_proxies = ["127.0.0.0/8"]
auth = { allow_anonymous = true }

[[listeners]]
name = "open"
kind = "ws"
bind = "127.0.0.1:0"
trusted_proxies = ["10.0.0.0/8"]
auth = { allow_anonymous = true }
"#,
        |_| {},
        hooks,
    )
    .await;
    for (listener, id) in [("behind-proxy", "proxied"), ("open", "direct")] {
        let addr = server.addr(listener);
        let mut options = ws_options(id, ws_url(addr, "/mqtt"), addr.port());
        options.set_request_modifier(|mut request| async move {
            request.headers_mut().insert(
                "X-Forwarded-For",
                "198.51.100.1, 203.0.113.7".parse().unwrap(),
            );
            request
        });
        let (client, _) = Client::connect(options).await;
        client.disconnect().await;
    }
    let peers = recorder.0.lock().unwrap().clone();
    assert_eq!(peers["proxied"], Some("203.0.113.7:0".parse().unwrap()));
    let direct = peers["direct"].expect("a peer");
    assert_eq!(
        direct.ip(),
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_ne!(direct.port(), 0);
}
