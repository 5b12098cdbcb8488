//! Test harness: a broker on an ephemeral loopback port, rumqttc clients driven in the
//! background, and a raw socket client that speaks bytes for misbehaviour tests.
//! Every wait is bounded, so a broken broker fails a test instead of hanging it.
#![allow(dead_code)]

pub mod ca;
pub mod cluster;
pub mod v5;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::{
    AsyncClient, ConnectionError, Event, MqttOptions, Packet as RPacket, Publish as RPublish,
};
use tern_codec::{
    ConnAck, Connect, MqttStr, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    Subscription, SubscriptionOptions,
};
use tern_server::broker::Broker;
use tern_server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long any single expectation may wait.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running broker; stops when dropped.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub broker: Arc<Broker>,
    pub store: Option<Arc<tern_server::store::Store>>,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<()>>,
}

impl TestBroker {
    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(6), task)
                .await
                .expect("server stops within its grace period")
                .expect("server task");
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A configuration for tests: an ephemeral loopback port, state in memory.
pub fn config() -> ServerConfig {
    ServerConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        durability: tern_server::Durability::Memory,
        ..ServerConfig::default()
    }
}

pub async fn start() -> TestBroker {
    start_with(config()).await
}

pub async fn start_with(config: ServerConfig) -> TestBroker {
    start_with_hooks(config, tern_server::broker::Hooks::default()).await
}

pub async fn start_with_hooks(
    config: ServerConfig,
    hooks: tern_server::broker::Hooks,
) -> TestBroker {
    let server = Server::bind_with_hooks(config, hooks).await.expect("bind");
    let addr = server.local_addrs()[0];
    let broker = server.broker().clone();
    let store = server.store().cloned();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let stopped = async {
            let _ = stopped.await;
        };
        if let Err(error) = server.run(stopped, Duration::from_secs(4)).await {
            panic!("server failed: {error}");
        }
    });
    TestBroker {
        addr,
        broker,
        store,
        stop: Some(stop),
        task: Some(task),
    }
}

/// A rumqttc (MQTT 3.1.1) client whose event loop runs in a task until its first error.
pub struct Client {
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    task: JoinHandle<()>,
}

pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

impl Client {
    /// Connects and waits for the CONNACK.
    pub async fn connect(options: MqttOptions) -> (Client, rumqttc::ConnAck) {
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    return;
                }
            }
        });
        let mut client = Client {
            client,
            events,
            task,
        };
        let connack = client
            .next_matching(|event| match event {
                Event::Incoming(RPacket::ConnAck(connack)) => Some(connack.clone()),
                _ => None,
            })
            .await
            .expect("CONNACK");
        (client, connack)
    }

    pub async fn simple(addr: SocketAddr, id: &str) -> Client {
        Client::connect(options(addr, id)).await.0
    }

    /// Waits for an event `pick` accepts; `Err` with the connection error if the connection ends.
    pub async fn next_matching<T>(
        &mut self,
        pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, String> {
        self.next_matching_within(WAIT, pick).await
    }

    /// [`Client::next_matching`], waiting at most `wait`.
    pub async fn next_matching_within<T>(
        &mut self,
        wait: Duration,
        mut pick: impl FnMut(&Event) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .map_err(|_| "timed out".to_owned())?
                .ok_or_else(|| "event loop ended".to_owned())?;
            match event {
                Ok(event) => {
                    if let Some(found) = pick(&event) {
                        return Ok(found);
                    }
                }
                Err(error) => return Err(format!("connection error: {error}")),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) -> rumqttc::SubAck {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe request");
        self.next_matching(|event| match event {
            Event::Incoming(RPacket::SubAck(suback)) => Some(suback.clone()),
            _ => None,
        })
        .await
        .expect("SUBACK")
    }

    pub async fn publish(
        &self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("publish request");
    }

    /// The next PUBLISH received.
    pub async fn recv(&mut self) -> RPublish {
        self.next_matching(|event| match event {
            Event::Incoming(RPacket::Publish(publish)) => Some(publish.clone()),
            _ => None,
        })
        .await
        .expect("a PUBLISH")
    }

    /// Waits until the connection ends (the broker closed it); returns the error.
    pub async fn closed(&mut self) -> String {
        match self.next_matching(|_| None::<()>).await {
            Err(error) => error,
            Ok(()) => unreachable!(),
        }
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection after it.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        let _ = self
            .next_matching(|event| {
                matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)).then_some(())
            })
            .await;
        self.closed().await;
    }

    /// Drops the connection without DISCONNECT.
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Waits until `condition` holds, looking every 2 ms, for a state change no event announces
/// (the server noticing a closed socket); panics after `WAIT`.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the server has let go of `client_id`'s session (its connection has ended).
pub async fn offline(broker: &TestBroker, client_id: &str) {
    wait_until(&format!("{client_id} is offline"), || {
        broker
            .broker
            .session(client_id)
            .is_none_or(|session| !session.is_online())
    })
    .await;
}

/// A client speaking raw bytes, with tern-codec to build and read packets.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    pub version: ProtocolVersion,
}

pub fn text(value: &str) -> MqttStr {
    MqttStr::try_from(value).expect("valid string")
}

pub fn connect_packet(
    version: ProtocolVersion,
    client_id: &str,
    clean_start: bool,
    keep_alive: u16,
) -> Connect {
    Connect {
        protocol: version,
        clean_start,
        keep_alive,
        properties: Properties::default(),
        client_id: text(client_id),
        will: None,
        username: None,
        password: None,
    }
}

pub fn publish_packet(topic: &str, qos: QoS, packet_id: u16, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: text(topic),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(payload),
    }
}

pub fn subscribe_packet(packet_id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::default(),
        subscriptions: filters
            .iter()
            .map(|(filter, qos)| Subscription {
                filter: text(filter),
                options: SubscriptionOptions {
                    qos: *qos,
                    ..Default::default()
                },
            })
            .collect(),
    })
}

impl Raw {
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Raw {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Raw {
            stream,
            buf: BytesMut::new(),
            version,
        }
    }

    /// Opens a connection from `source` (a loopback address such as 127.0.0.2).
    pub async fn open_from(addr: SocketAddr, version: ProtocolVersion, source: IpAddr) -> Raw {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .expect("bind the source address");
        let stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Raw {
            stream,
            buf: BytesMut::new(),
            version,
        }
    }

    /// Opens a connection and completes CONNECT / CONNACK.
    pub async fn connected(
        addr: SocketAddr,
        version: ProtocolVersion,
        connect: Connect,
    ) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr, version).await;
        raw.send(&Packet::Connect(Box::new(connect))).await;
        match raw.recv().await {
            Some(Packet::ConnAck(connack)) => (raw, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out).expect("encode");
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next packet, or `None` when the broker closed the connection. Panics after `WAIT`.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT)
            .await
            .expect("a packet or the close in time")
    }

    /// `Err(())` when nothing came within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Result<Option<Packet>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(packet) = Packet::decode(&mut self.buf, self.version, u32::MAX)
                .expect("broker sends valid packets")
            {
                return Ok(Some(packet));
            }
            self.buf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Err(()),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Reads until the broker closes the connection; returns the packets it sent first.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = self.recv().await {
            packets.push(packet);
        }
        packets
    }
}
