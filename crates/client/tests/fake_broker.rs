//! tern-client against a scripted broker (a `TcpListener` driven packet by packet), for what a
//! real broker cannot be made to do on cue: a DISCONNECT in the same read as messages, a
//! connection dropped with a message in flight, a PINGREQ left unanswered, a bad topic alias.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tern_client::{
    Backoff, Client, ClientError, ClientOptions, Endpoint, Event, Events, Message, ProtocolVersion,
    QoS, ReasonCode,
};
use tern_codec::{Ack, ConnAck, Disconnect, MqttStr, Packet, Properties, Publish};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

struct Fake {
    listener: TcpListener,
    version: ProtocolVersion,
}

struct Conn {
    stream: TcpStream,
    read: BytesMut,
    version: ProtocolVersion,
}

impl Fake {
    async fn bind(version: ProtocolVersion) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Fake { listener, version }
    }

    fn options(&self, id: &str) -> ClientOptions {
        let port = self.listener.local_addr().expect("addr").port();
        let mut options = ClientOptions::new(Endpoint::tcp("127.0.0.1", port), id);
        options.version = self.version;
        options
    }

    /// Accepts a connection, reads its CONNECT and answers CONNACK.
    async fn accept(&self, session_present: bool) -> (Conn, tern_codec::Connect) {
        let (stream, _) = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("a connection in time")
            .expect("accept");
        let mut conn = Conn {
            stream,
            read: BytesMut::new(),
            version: self.version,
        };
        let Packet::Connect(connect) = conn.recv().await.expect("CONNECT") else {
            panic!("not CONNECT")
        };
        conn.send(&[Packet::ConnAck(ConnAck {
            session_present,
            reason_code: ReasonCode::Success,
            properties: Properties::default(),
        })])
        .await;
        (conn, *connect)
    }
}

impl Conn {
    /// The next packet; `None` when the client closed the stream.
    async fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(packet) =
                Packet::decode(&mut self.read, self.version, 1 << 20).expect("well-formed")
            {
                return Some(packet);
            }
            let read = tokio::time::timeout(WAIT, self.stream.read_buf(&mut self.read))
                .await
                .expect("a packet in time")
                .unwrap_or(0);
            if read == 0 {
                return None;
            }
        }
    }

    /// Writes the packets in one `write_all`, so they are likely to arrive in one read.
    async fn send(&mut self, packets: &[Packet]) {
        let mut buf = BytesMut::new();
        for packet in packets {
            packet.encode(self.version, &mut buf).expect("encode");
        }
        self.stream.write_all(&buf).await.expect("write");
    }
}

fn publish(topic: &str, id: u16, qos: QoS, payload: &str) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttStr::try_from(topic).expect("topic"),
        packet_id: id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

async fn next(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("client alive")
}

fn quick_reconnect() -> Option<Backoff> {
    Some(Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        ..Backoff::default()
    })
}

/// Review 13 MUST #1, MQTT 4.3.2 / 4.3.3 (at least once, exactly once): messages read in the
/// same read as the broker's DISCONNECT (a kick, 0x98) reach the application before
/// `Disconnected`, also when the event queue is full (capacity 1, five messages). Their
/// acknowledgements may be gone already, so the broker would not send them again.
#[tokio::test]
async fn messages_read_with_a_disconnect_reach_the_application_first() {
    for (capacity, count) in [(256, 1u16), (1, 5)] {
        let fake = Fake::bind(ProtocolVersion::V5).await;
        let mut options = fake.options("kicked");
        options.event_capacity = capacity;
        let (client, mut events) = Client::start(options).expect("start");
        let (mut conn, _) = fake.accept(false).await;
        assert!(matches!(next(&mut events).await, Event::Connected(_)));
        let mut packets: Vec<Packet> = (1..=count)
            .map(|id| {
                let qos = if id % 2 == 0 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                Packet::Publish(publish("k/t", id, qos, &format!("m{id}")))
            })
            .collect();
        packets.push(Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::AdministrativeAction,
            properties: Properties::default(),
        }));
        conn.send(&packets).await;
        for id in 1..=count {
            match next(&mut events).await {
                Event::Message(message) => {
                    assert_eq!(message.packet_id, id, "capacity {capacity}");
                    assert_eq!(&message.payload[..], format!("m{id}").as_bytes());
                }
                other => panic!("capacity {capacity}: message {id} lost, got {other:?}"),
            }
        }
        match next(&mut events).await {
            Event::Disconnected(ClientError::Disconnected { reason_code, .. }) => {
                assert_eq!(reason_code, ReasonCode::AdministrativeAction);
            }
            other => panic!("{other:?}"),
        }
        assert!(next_or_end(&mut events).await.is_none(), "no reconnection");
        drop(client);
    }
}

async fn next_or_end(events: &mut Events) -> Option<Event> {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("the events end in time")
}

/// Review 13 SHOULD #12, MQTT-4.4.0-1: a QoS 1 PUBLISH unacknowledged when the connection
/// drops is sent again on the resumed session (clean start 0, session present 1) with DUP=1
/// and the same packet id; its PUBACK then settles the caller.
#[tokio::test]
async fn unacknowledged_qos1_is_resent_with_dup_after_reconnect_mqtt_4_4_0_1() {
    let fake = Fake::bind(ProtocolVersion::V311).await;
    let mut options = fake.options("resender");
    options.clean_start = false;
    options.reconnect = quick_reconnect();
    let (client, mut events) = Client::start(options).expect("start");
    let (mut conn, _) = fake.accept(false).await;
    let pending = client
        .publish(Message::new("r/t", "once", QoS::AtLeastOnce))
        .await
        .expect("queued");
    let Some(Packet::Publish(first)) = conn.recv().await else {
        panic!("PUBLISH")
    };
    assert!(!first.dup);
    drop(conn);
    let (mut conn, connect) = fake.accept(true).await;
    assert!(!connect.clean_start, "the session is resumed");
    let Some(Packet::Publish(again)) = conn.recv().await else {
        panic!("PUBLISH again")
    };
    assert!(again.dup, "DUP=1 on the resend [MQTT-3.3.1-1]");
    assert_eq!(again.packet_id, first.packet_id);
    assert_eq!(again.payload, first.payload);
    conn.send(&[Packet::PubAck(Ack::new(again.packet_id))])
        .await;
    let outcome = tokio::time::timeout(WAIT, pending)
        .await
        .expect("settled in time")
        .expect("PUBACK");
    assert_eq!(outcome.reason_code, ReasonCode::Success);
    let mut saw = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(10), events.recv()).await
    {
        saw.push(format!("{event:?}"));
    }
    assert!(saw.iter().any(|e| e.starts_with("Reconnecting")), "{saw:?}");
    client.disconnect().await.expect("disconnect");
}

/// Review 13 SHOULD #12, MQTT-4.4.0-1 and 4.3.3: a QoS 2 PUBLISH whose PUBREC came and whose
/// PUBREL was sent but not completed: on the resumed session the client sends PUBREL again
/// (same id, no new PUBLISH), and PUBCOMP settles the caller.
#[tokio::test]
async fn pubrel_is_resent_after_reconnect_mqtt_4_4_0_1() {
    let fake = Fake::bind(ProtocolVersion::V5).await;
    let mut options = fake.options("releaser");
    options.clean_start = false;
    options.properties.session_expiry_interval = Some(60);
    options.reconnect = quick_reconnect();
    let (client, _events) = Client::start(options).expect("start");
    let (mut conn, _) = fake.accept(false).await;
    let pending = client
        .publish(Message::new("r/t", "exactly", QoS::ExactlyOnce))
        .await
        .expect("queued");
    let Some(Packet::Publish(first)) = conn.recv().await else {
        panic!("PUBLISH")
    };
    conn.send(&[Packet::PubRec(Ack::new(first.packet_id))])
        .await;
    let Some(Packet::PubRel(rel)) = conn.recv().await else {
        panic!("PUBREL")
    };
    assert_eq!(rel.packet_id, first.packet_id);
    drop(conn);
    let (mut conn, _) = fake.accept(true).await;
    match conn.recv().await {
        Some(Packet::PubRel(again)) => assert_eq!(again.packet_id, first.packet_id),
        other => panic!("PUBREL again, got {other:?}"),
    }
    conn.send(&[Packet::PubComp(Ack::new(first.packet_id))])
        .await;
    let outcome = tokio::time::timeout(WAIT, pending)
        .await
        .expect("settled in time")
        .expect("PUBCOMP");
    assert_eq!(outcome.reason_code, ReasonCode::Success);
    client.disconnect().await.expect("disconnect");
}

/// Review 13 SHOULD #12, MQTT 3.1.2.10 (keep alive): a broker that does not answer PINGREQ
/// within the keep-alive ends the connection with `KeepAliveTimeout`, and the client
/// reconnects.
#[tokio::test]
async fn a_missing_pingresp_ends_the_link_and_the_client_reconnects() {
    let fake = Fake::bind(ProtocolVersion::V311).await;
    let mut options = fake.options("pinger");
    options.keep_alive = 1;
    options.reconnect = quick_reconnect();
    let (client, mut events) = Client::start(options).expect("start");
    let (mut conn, _) = fake.accept(false).await;
    assert!(matches!(next(&mut events).await, Event::Connected(_)));
    assert!(matches!(conn.recv().await, Some(Packet::PingReq)));
    // No PINGRESP.
    match next(&mut events).await {
        Event::Disconnected(ClientError::KeepAliveTimeout) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        next(&mut events).await,
        Event::Reconnecting { .. }
    ));
    let (_conn2, _) = fake.accept(false).await;
    assert!(matches!(next(&mut events).await, Event::Connected(_)));
    drop(conn);
    client.disconnect().await.expect("disconnect");
}

/// Review 13 MUST #2, MQTT-3.3.2-10 and 3.3.2.3.4: an alias the broker never set is a
/// protocol error (DISCONNECT 0x82 from the client), an alias above the client's Topic Alias
/// Maximum is 0x94 [MQTT-3.3.2-9]; a set alias resolves on this connection.
#[tokio::test]
async fn inbound_topic_aliases_resolve_and_bad_ones_end_the_connection() {
    for (alias, expected) in [
        (3u16, ReasonCode::ProtocolError),
        (11, ReasonCode::TopicAliasInvalid),
    ] {
        let fake = Fake::bind(ProtocolVersion::V5).await;
        let mut options = fake.options("aliased");
        options.properties.topic_alias_maximum = Some(10);
        let (_client, mut events) = Client::start(options).expect("start");
        let (mut conn, connect) = fake.accept(false).await;
        assert_eq!(connect.properties.topic_alias_maximum, Some(10));
        assert!(matches!(next(&mut events).await, Event::Connected(_)));
        let mut set = publish("a/long/topic", 0, QoS::AtMostOnce, "one");
        set.properties.topic_alias = Some(1);
        let mut used = publish("", 0, QoS::AtMostOnce, "two");
        used.properties.topic_alias = Some(1);
        let mut bad = publish("", 0, QoS::AtMostOnce, "three");
        bad.properties.topic_alias = Some(alias);
        conn.send(&[Packet::Publish(set), Packet::Publish(used)])
            .await;
        for payload in ["one", "two"] {
            match next(&mut events).await {
                Event::Message(message) => {
                    assert_eq!(message.topic, "a/long/topic");
                    assert_eq!(&message.payload[..], payload.as_bytes());
                }
                other => panic!("{other:?}"),
            }
        }
        conn.send(&[Packet::Publish(bad)]).await;
        match next(&mut events).await {
            Event::Disconnected(ClientError::ProtocolViolation { reason_code, .. }) => {
                assert_eq!(reason_code, expected);
            }
            other => panic!("{other:?}"),
        }
        match conn.recv().await {
            Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason_code, expected),
            other => panic!("DISCONNECT {expected:?}, got {other:?}"),
        }
    }
}

/// Review 13 NIT #22: after DISCONNECT 0x8E (Session taken over) or 0x98 (Administrative
/// action) the client waits the longest delay of its backoff before coming back, so two
/// clients with one id do not take the session from each other in a loop, and a kicked
/// client is not back at once; after an ordinary loss it starts at the initial delay.
#[tokio::test]
async fn sent_away_backs_off_to_the_longest_delay() {
    let backoff = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_secs(20),
        factor: 2.0,
        jitter: 0.25,
    };
    for (reason, far) in [
        (Some(ReasonCode::SessionTakenOver), true),
        (Some(ReasonCode::AdministrativeAction), true),
        (Some(ReasonCode::ServerShuttingDown), false),
        (None, false),
    ] {
        let fake = Fake::bind(ProtocolVersion::V5).await;
        let mut options = fake.options("twin");
        options.reconnect = Some(backoff);
        let (client, mut events) = Client::start(options).expect("start");
        let (mut conn, _) = fake.accept(false).await;
        assert!(matches!(next(&mut events).await, Event::Connected(_)));
        match reason {
            Some(reason_code) => {
                conn.send(&[Packet::Disconnect(Disconnect {
                    reason_code,
                    properties: Properties::default(),
                })])
                .await
            }
            None => drop(conn),
        }
        assert!(matches!(next(&mut events).await, Event::Disconnected(_)));
        match next(&mut events).await {
            Event::Reconnecting { delay, .. } if far => {
                assert!(delay >= Duration::from_secs(15), "{reason:?}: {delay:?}")
            }
            Event::Reconnecting { delay, .. } => {
                assert!(delay <= Duration::from_millis(10), "{reason:?}: {delay:?}")
            }
            other => panic!("{other:?}"),
        }
        client.disconnect().await.expect("disconnect");
    }
}

/// Issue 15 (review 15 MUST 4): while the client hands out what was left of a lost connection
/// (the application has not read its events), it keeps taking commands: an application that
/// publishes more than the command channel holds before it reads events does not wait forever,
/// and the messages go out on the next connection.
#[tokio::test]
async fn commands_are_taken_while_events_wait_after_a_lost_connection() {
    let fake = Fake::bind(ProtocolVersion::V5).await;
    let mut options = fake.options("busy");
    options.event_capacity = 1;
    options.reconnect = quick_reconnect();
    let (client, mut events) = Client::start(options).expect("start");
    let (mut conn, _) = fake.accept(false).await;
    let packets: Vec<Packet> = (1..=4)
        .map(|id| Packet::Publish(publish("k/t", 0, QoS::AtMostOnce, &format!("m{id}"))))
        .collect();
    conn.send(&packets).await;
    drop(conn);
    // Events not read: Connected and the messages fill the channel and the link's queue.
    let count = 100;
    let mut pending = Vec::new();
    for i in 0..count {
        let publishing = client.publish(Message::new("o/t", format!("p{i}"), QoS::AtLeastOnce));
        let queued = tokio::time::timeout(WAIT, publishing)
            .await
            .unwrap_or_else(|_| panic!("publish {i} waits forever"))
            .expect("queued");
        pending.push(queued);
    }
    // Reading the events lets the client reconnect; the messages go out then.
    let reader = tokio::spawn(async move { while events.recv().await.is_some() {} });
    let (mut conn, _) = fake.accept(false).await;
    let mut got = 0;
    while got < count {
        match conn.recv().await.expect("the client stays") {
            Packet::Publish(p) => {
                got += 1;
                conn.send(&[Packet::PubAck(Ack::new(p.packet_id))]).await;
            }
            other => panic!("{other:?}"),
        }
    }
    for queued in pending {
        tokio::time::timeout(WAIT, queued)
            .await
            .expect("acknowledged in time")
            .expect("acknowledged");
    }
    drop(client);
    reader.abort();
}
