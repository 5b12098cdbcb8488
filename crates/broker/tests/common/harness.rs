//! A network of `Connection`s around one `Broker`, with a fake clock, so the protocol rules are
//! tested as packets in and packets out, in microseconds and without sleeps.
//!
//! `Net` owns the broker and the clock; each `Client` is one connection speaking decoded packets.
//! `Net::advance` moves the clock deadline by deadline, calling `handle_timeout` of the broker and
//! of every connection at each deadline that falls in the step, as the server's timers would.
//! A `Client` dropped without DISCONNECT ends as a lost transport, as a closed socket does.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tern_broker::persist::Persistence;
use tern_broker::{
    Broker, BrokerConfig, CloseReason, Connection, Hooks, Session, TransportIdentity, Wakeup,
};
use tern_codec::{
    Ack, ConnAck, Connect, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, SubAck, Subscribe, Subscription, SubscriptionOptions,
};

use super::{Quiet, text};

pub const V31: ProtocolVersion = ProtocolVersion::V31;
pub const V311: ProtocolVersion = ProtocolVersion::V311;
pub const V5: ProtocolVersion = ProtocolVersion::V5;

/// One broker, its connections and the time they all share.
pub struct Net {
    pub broker: Arc<Broker>,
    clock: Rc<Cell<Instant>>,
    connections: RefCell<Vec<Weak<RefCell<Connection>>>>,
}

impl Default for Net {
    fn default() -> Net {
        Net::new()
    }
}

impl Net {
    pub fn new() -> Net {
        Net::with_config(BrokerConfig::default())
    }

    pub fn with_config(config: BrokerConfig) -> Net {
        Net::with_hooks(config, Hooks::default())
    }

    pub fn with_hooks(config: BrokerConfig, hooks: Hooks) -> Net {
        Net::with_persistence(config, hooks, None)
    }

    /// A broker whose changes go to `persistence` (a recording double, say).
    pub fn with_persistence(
        config: BrokerConfig,
        hooks: Hooks,
        persistence: Option<Arc<dyn Persistence>>,
    ) -> Net {
        Net {
            broker: Broker::with_persistence(config, hooks, persistence),
            clock: Rc::new(Cell::new(Instant::now())),
            connections: RefCell::default(),
        }
    }

    pub fn now(&self) -> Instant {
        self.clock.get()
    }

    /// Moves the clock `ms` milliseconds on, firing every deadline on the way at its own time.
    pub fn advance(&self, ms: u64) {
        let target = self.now() + Duration::from_millis(ms);
        // A deadline that does not move after its timeout is a bug; fail instead of spinning.
        for _ in 0..100_000 {
            let Some(at) = self.next_deadline().filter(|&at| at <= target) else {
                self.clock.set(target);
                return;
            };
            let at = at.max(self.now());
            self.clock.set(at);
            self.broker.handle_timeout(at);
            for connection in self.live_connections() {
                connection.borrow_mut().handle_timeout(at);
            }
        }
        panic!("a deadline never passes");
    }

    fn live_connections(&self) -> Vec<Rc<RefCell<Connection>>> {
        let mut connections = self.connections.borrow_mut();
        connections.retain(|weak| weak.strong_count() > 0);
        connections.iter().filter_map(Weak::upgrade).collect()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let connections = self.live_connections();
        let deadlines = connections
            .iter()
            .filter_map(|connection| connection.borrow().poll_timeout());
        deadlines.chain(self.broker.poll_timeout()).min()
    }

    /// A new network connection that has sent nothing yet; it speaks `version`.
    pub fn open(&self, version: ProtocolVersion) -> Client {
        self.open_with_transport(version, None)
    }

    /// A new connection whose transport vouches for `identity` (listener, client certificate).
    pub fn open_with_transport(
        &self,
        version: ProtocolVersion,
        identity: Option<TransportIdentity>,
    ) -> Client {
        self.open_with(version, identity, Arc::new(Quiet))
    }

    /// A client connected with `connect_packet(version, id)` whose connection runs on worker
    /// `worker` (see the core's `worker_post`).
    pub fn connected_on_worker(&self, version: ProtocolVersion, id: &str, worker: u16) -> Client {
        let mut client = self.open_with(version, None, Arc::new(OnWorker(worker)));
        client.send(Packet::Connect(Box::new(connect_packet(version, id))));
        match client.next() {
            Some(Packet::ConnAck(connack)) if connack.reason_code == ReasonCode::Success => client,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn open_with(
        &self,
        version: ProtocolVersion,
        identity: Option<TransportIdentity>,
        wakeup: Arc<dyn Wakeup>,
    ) -> Client {
        let connection = Connection::with_transport(
            self.broker.clone(),
            wakeup,
            None,
            identity.map(Arc::new),
            self.now(),
        );
        let connection = Rc::new(RefCell::new(connection));
        self.connections
            .borrow_mut()
            .push(Rc::downgrade(&connection));
        Client {
            connection,
            clock: self.clock.clone(),
            version,
            next_packet_id: 1,
            pending: VecDeque::new(),
        }
    }

    /// Sends `connect` on a new connection; returns the client and the CONNACK.
    pub fn connect(&self, connect: Connect) -> (Client, ConnAck) {
        let mut client = self.open(connect.protocol);
        client.send(Packet::Connect(Box::new(connect)));
        match client.next() {
            Some(Packet::ConnAck(connack)) => (client, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// A client connected with `connect_packet(version, id)`: clean start, no keep-alive.
    pub fn connected(&self, version: ProtocolVersion, id: &str) -> Client {
        self.accepted(connect_packet(version, id))
    }

    /// Sends `connect` and checks it is accepted.
    pub fn accepted(&self, connect: Connect) -> Client {
        let (client, connack) = self.connect(connect);
        assert_eq!(connack.reason_code, ReasonCode::Success, "{connack:?}");
        client
    }

    pub fn session(&self, client_id: &str) -> Option<Arc<Session>> {
        self.broker.session(client_id)
    }
}

/// The wakeup of a connection on a worker of the server: it says which.
struct OnWorker(u16);

impl Wakeup for OnWorker {
    fn wake(&self) {}

    fn worker(&self) -> Option<u16> {
        Some(self.0)
    }
}

/// One connection, seen from the client's side: packets it sends, packets the broker sent it.
pub struct Client {
    connection: Rc<RefCell<Connection>>,
    clock: Rc<Cell<Instant>>,
    /// The version the client reads the broker's bytes with.
    version: ProtocolVersion,
    next_packet_id: u16,
    /// Packets read but not yet looked at (what followed a SUBACK, say).
    pending: VecDeque<Packet>,
}

impl Drop for Client {
    fn drop(&mut self) {
        // As the server does when the socket goes.
        if let Ok(mut connection) = self.connection.try_borrow_mut() {
            connection.handle_transport_closed(self.clock.get());
        }
    }
}

impl Client {
    /// The packet arrives at the broker now.
    pub fn send(&mut self, packet: Packet) {
        self.connection
            .borrow_mut()
            .handle_packet(packet, self.clock.get());
    }

    /// Raw bytes arrive at the broker now, decoded as the server decodes them: with the
    /// connection's protocol version and maximum packet size.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        let now = self.clock.get();
        let mut connection = self.connection.borrow_mut();
        let mut buf = BytesMut::from(bytes);
        while !connection.is_closed() {
            let version = connection.protocol_version();
            match Packet::decode(&mut buf, version, connection.max_packet_size()) {
                Ok(Some(packet)) => connection.handle_packet(packet, now),
                Ok(None) => return,
                Err(error) => return connection.handle_decode_error(&error, now),
            }
        }
    }

    /// The deferred authentication the connection waits on, once (what the server takes).
    pub fn take_auth_request(&mut self) -> Option<tern_broker::AuthRequest> {
        self.connection.borrow_mut().take_auth_request()
    }

    /// The server's answer to a deferred authentication arrives now.
    pub fn auth_result(
        &mut self,
        id: tern_broker::AuthRequestId,
        result: Result<tern_broker::Principal, ReasonCode>,
    ) {
        let now = self.clock.get();
        self.connection
            .borrow_mut()
            .handle_auth_result(id, result, now);
    }

    /// The bytes the broker has ready for this client now.
    pub fn received_bytes(&mut self) -> BytesMut {
        let mut out = BytesMut::new();
        self.connection
            .borrow_mut()
            .poll_transmit(&mut out, usize::MAX, self.clock.get());
        out
    }

    /// What the broker sends in one round of the server's loop, which asks for at most
    /// `budget` bytes at a time, decoded.
    pub fn received_within(&mut self, budget: usize) -> Vec<Packet> {
        let mut bytes = BytesMut::new();
        self.connection
            .borrow_mut()
            .poll_transmit(&mut bytes, budget, self.clock.get());
        let mut packets = Vec::new();
        while let Some(packet) = Packet::decode(&mut bytes, self.version, u32::MAX)
            .expect("the broker sends valid packets")
        {
            packets.push(packet);
        }
        packets
    }

    /// Every packet the broker has for this client now, decoded, in order.
    pub fn received(&mut self) -> Vec<Packet> {
        let mut bytes = self.received_bytes();
        while let Some(packet) = Packet::decode(&mut bytes, self.version, u32::MAX)
            .expect("the broker sends valid packets")
        {
            self.pending.push_back(packet);
        }
        assert!(bytes.is_empty(), "a partial packet: {bytes:?}");
        self.pending.drain(..).collect()
    }

    /// The next packet, keeping the ones after it for later.
    pub fn next(&mut self) -> Option<Packet> {
        let mut packets: VecDeque<Packet> = self.received().into();
        let first = packets.pop_front();
        self.pending = packets;
        first
    }

    /// Asserts that the broker has nothing for this client.
    pub fn nothing(&mut self) {
        let packets = self.received();
        assert!(packets.is_empty(), "expected nothing, got {packets:?}");
    }

    /// The PUBLISH packets received; anything else fails the test.
    pub fn publishes(&mut self) -> Vec<Publish> {
        self.received()
            .into_iter()
            .map(|packet| match packet {
                Packet::Publish(publish) => publish,
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect()
    }

    /// Exactly one PUBLISH received.
    pub fn publish_received(&mut self) -> Publish {
        match <[Publish; 1]>::try_from(self.publishes()) {
            Ok([publish]) => publish,
            Err(publishes) => panic!("expected one PUBLISH, got {publishes:?}"),
        }
    }

    /// The payloads of the PUBLISH packets received.
    pub fn payloads(&mut self) -> Vec<Bytes> {
        self.publishes()
            .into_iter()
            .map(|publish| publish.payload)
            .collect()
    }

    /// The broker closed the connection, sending nothing first (3.x, or before CONNACK).
    pub fn closed_silently(&mut self) {
        assert_eq!(self.received(), vec![], "nothing before the close");
        assert!(self.is_closed(), "closed");
    }

    /// The broker closed the connection with DISCONNECT (MQTT 5); returns its reason code.
    pub fn disconnect_reason(&mut self) -> ReasonCode {
        let packets = self.received();
        assert!(self.is_closed(), "closed after {packets:?}");
        match packets.last() {
            Some(Packet::Disconnect(disconnect)) => disconnect.reason_code,
            _ => panic!("expected DISCONNECT last, got {packets:?}"),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.connection.borrow().is_closed()
    }

    /// Whether the server would read more from this client now.
    pub fn wants_input(&self) -> bool {
        self.connection.borrow_mut().wants_input()
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.connection.borrow().close_reason().cloned()
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Subscribes to one filter; returns the SUBACK (what came after it stays to be received).
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> SubAck {
        self.subscribe_with(
            filter,
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            },
            Properties::default(),
        )
    }

    pub fn subscribe_with(
        &mut self,
        filter: &str,
        options: SubscriptionOptions,
        properties: Properties,
    ) -> SubAck {
        let packet_id = self.packet_id();
        self.send(Packet::Subscribe(Subscribe {
            packet_id,
            properties,
            subscriptions: vec![Subscription {
                filter: text(filter),
                options,
            }],
        }));
        match self.next() {
            Some(Packet::SubAck(suback)) if suback.packet_id == packet_id => suback,
            other => panic!("expected SUBACK {packet_id}, got {other:?}"),
        }
    }

    /// Publishes with the next packet identifier (QoS 1 and 2); returns it.
    pub fn publish(&mut self, topic: &str, qos: QoS, payload: &[u8]) -> u16 {
        self.publish_with(publish_packet(topic, qos, payload))
    }

    /// Sends `publish` with the next packet identifier (QoS 1 and 2); returns it.
    pub fn publish_with(&mut self, mut publish: Publish) -> u16 {
        if publish.qos != QoS::AtMostOnce {
            publish.packet_id = self.packet_id();
        }
        let packet_id = publish.packet_id;
        self.send(Packet::Publish(publish));
        packet_id
    }

    /// Answers a received PUBLISH as its QoS asks: PUBACK for QoS 1, PUBREC for QoS 2 (the
    /// PUBCOMP after the broker's PUBREL is left to the test).
    pub fn ack(&mut self, publish: &Publish) {
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(Packet::PubAck(Ack::new(publish.packet_id))),
            QoS::ExactlyOnce => self.send(Packet::PubRec(Ack::new(publish.packet_id))),
        }
    }

    pub fn disconnect(&mut self) {
        self.send(Packet::Disconnect(Disconnect::default()));
    }
}

/// CONNECT with clean start, no keep-alive and nothing else.
pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: text(client_id),
        will: None,
        username: None,
        password: None,
    }
}

/// CONNECT of a session that outlives the connection: clean start 0 and, in MQTT 5, a Session
/// Expiry Interval that never ends.
pub fn persistent(version: ProtocolVersion, client_id: &str) -> Connect {
    let mut connect = connect_packet(version, client_id);
    connect.clean_start = false;
    if version == V5 {
        connect.properties.session_expiry_interval = Some(u32::MAX);
    }
    connect
}

/// PUBLISH without properties; the packet identifier is set when it is sent.
pub fn publish_packet(topic: &str, qos: QoS, payload: &[u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: text(topic),
        packet_id: 0,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A retained PUBLISH.
pub fn retained(topic: &str, qos: QoS, payload: &[u8]) -> Publish {
    Publish {
        retain: true,
        ..publish_packet(topic, qos, payload)
    }
}

/// SUBSCRIBE to several filters at once.
pub fn subscribe_packet(packet_id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        properties: Properties::default(),
        subscriptions: filters
            .iter()
            .map(|&(filter, qos)| Subscription {
                filter: text(filter),
                options: SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            })
            .collect(),
    })
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP as the broker sends it when all is well.
pub fn ack(packet: fn(Ack) -> Packet, packet_id: u16) -> Packet {
    packet(Ack::new(packet_id))
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP with a reason code (MQTT 5) and no properties.
pub fn ack_with(packet: fn(Ack) -> Packet, packet_id: u16, reason_code: ReasonCode) -> Packet {
    packet(Ack {
        reason_code,
        ..Ack::new(packet_id)
    })
}
