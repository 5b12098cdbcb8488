//! The client's Receive Maximum bounds the PUBLISH packets sent again when a session is resumed
//! too. Found while writing the core fuzz target (`fuzz/fuzz_targets/core.rs`), whose window
//! invariant catches it.

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::{Quiet, connect, text};
use tern_broker::{Broker, BrokerConfig, Connection};
use tern_codec::{
    Ack, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions,
};

/// A 5.0 connection of the persistent session "s" whose Receive Maximum is `receive_maximum`.
fn connect_v5(broker: &Arc<Broker>, receive_maximum: u16, now: Instant) -> Connection {
    let mut conn = Connection::new(broker.clone(), Arc::new(Quiet), None, now);
    conn.handle_packet(
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: false,
            keep_alive: 0,
            properties: Properties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(receive_maximum),
                ..Properties::default()
            },
            client_id: text("s"),
            will: None,
            username: None,
            password: None,
        })),
        now,
    );
    conn
}

/// Every packet the connection has to send now, decoded as 5.0.
fn transmit_v5(conn: &mut Connection, now: Instant) -> Vec<Packet> {
    let mut out = bytes::BytesMut::new();
    conn.poll_transmit(&mut out, usize::MAX, now);
    let mut packets = Vec::new();
    while let Some(packet) = Packet::decode(&mut out, ProtocolVersion::V5, u32::MAX).unwrap() {
        packets.push(packet);
    }
    packets
}

fn publish_ids(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish) => Some(publish.packet_id),
            _ => None,
        })
        .collect()
}

/// [MQTT-3.3.4-7]: a session resumed with a smaller Receive Maximum than the one its messages
/// were sent under gets no more PUBLISH packets unacknowledged than the new maximum; the others
/// follow, in order, as acknowledgements make room.
#[test]
fn resent_publishes_respect_the_new_receive_maximum_mqtt_3_3_4_7() {
    let now = Instant::now();
    let broker = Broker::new(BrokerConfig::default());
    let mut first = connect_v5(&broker, 3, now);
    first.handle_packet(
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            subscriptions: vec![Subscription {
                filter: text("t"),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
        }),
        now,
    );
    transmit_v5(&mut first, now);
    let mut publisher = connect(&broker, "p", true, now);
    for id in 1..=3 {
        publisher.handle_packet(
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: text("t"),
                packet_id: id,
                properties: Properties::default(),
                payload: Bytes::from_static(b"m"),
            }),
            now,
        );
    }
    let sent = publish_ids(&transmit_v5(&mut first, now));
    assert_eq!(sent.len(), 3);
    first.handle_transport_closed(now);

    let mut second = connect_v5(&broker, 1, now);
    let resent = publish_ids(&transmit_v5(&mut second, now));
    assert_eq!(
        resent,
        sent[..1],
        "one PUBLISH within a Receive Maximum of 1"
    );
    for (index, &id) in sent.iter().enumerate() {
        second.handle_packet(Packet::PubAck(Ack::new(id)), now);
        let next = publish_ids(&transmit_v5(&mut second, now));
        assert_eq!(
            next,
            sent[index + 1..]
                .iter()
                .take(1)
                .copied()
                .collect::<Vec<_>>()
        );
    }
}
