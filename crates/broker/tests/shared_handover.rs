//! What happens to a shared subscription's messages when the member holding them loses its
//! connection (MQTT 5 section 4.8.2). Found while writing the core fuzz target
//! (`fuzz/fuzz_targets/core.rs`), whose in-flight invariant catches it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Quiet, connect, subscribe_packet, text, transmit};
use tern_broker::{Broker, BrokerConfig, Connection};
use tern_codec::{Ack, Connect, Packet, Properties, ProtocolVersion, Publish, QoS};

fn subscribe(conn: &mut Connection, filter: &str, qos: QoS, now: Instant) {
    conn.handle_packet(subscribe_packet(1, &[(filter, qos)]), now);
    transmit(conn, now);
}

fn publish(conn: &mut Connection, qos: QoS, packet_id: u16, payload: &'static [u8], now: Instant) {
    conn.handle_packet(
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: text("t"),
            packet_id,
            properties: Properties::default(),
            payload: Bytes::from_static(payload),
        }),
        now,
    );
    transmit(conn, now);
}

fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .collect()
}

/// Two persistent members of `$share/g/t` at `qos` and a publisher; one message published.
/// Returns the broker, the member that received it (with the PUBLISH) and the other member.
fn one_message_to_a_member(
    qos: QoS,
    now: Instant,
) -> (Arc<Broker>, (String, Connection, Publish), Connection) {
    members_with_one_message(qos, false, now)
}

/// [`one_message_to_a_member`], the members starting clean (their sessions end with their
/// connections) when `clean`.
fn members_with_one_message(
    qos: QoS,
    clean: bool,
    now: Instant,
) -> (Arc<Broker>, (String, Connection, Publish), Connection) {
    let broker = Broker::new(BrokerConfig::default());
    let mut a = connect(&broker, "a", clean, now);
    let mut b = connect(&broker, "b", clean, now);
    subscribe(&mut a, "$share/g/t", qos, now);
    subscribe(&mut b, "$share/g/t", qos, now);
    let mut publisher = connect(&broker, "p", true, now);
    publish(&mut publisher, qos, 1, b"once", now);
    let to_a = transmit(&mut a, now);
    let to_b = transmit(&mut b, now);
    let (holder, other, received) = match (&publishes(&to_a)[..], &publishes(&to_b)[..]) {
        ([publish], []) => (("a".to_owned(), a), b, (*publish).clone()),
        ([], [publish]) => (("b".to_owned(), b), a, (*publish).clone()),
        _ => panic!("one member gets the message: {to_a:?} {to_b:?}"),
    };
    (broker, (holder.0, holder.1, received), other)
}

/// [MQTT-4.8.2-4]: a QoS 2 message whose PUBLISH reached a member, when that member's
/// connection breaks, is completed to that member when it reconnects; it must not go to another
/// member (which would make two clients receive it, and the first one again after a later
/// hand-over under a new packet identifier).
#[test]
fn sent_qos2_message_stays_with_its_member_mqtt_4_8_2_4() {
    let now = Instant::now();
    let (broker, (holder_id, mut holder, received), mut other) =
        one_message_to_a_member(QoS::ExactlyOnce, now);
    holder.handle_transport_closed(now);
    assert!(
        publishes(&transmit(&mut other, now)).is_empty(),
        "the other member gets nothing"
    );
    let later = now + Duration::from_secs(1);
    let mut back = Connection::new(broker.clone(), Arc::new(Quiet), None, later);
    back.handle_packet(
        Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: false,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: text(&holder_id),
            will: None,
            username: None,
            password: None,
        })),
        later,
    );
    let resent = transmit(&mut back, later);
    let resent = publishes(&resent);
    assert_eq!(resent.len(), 1, "the message is sent again to its member");
    assert!(resent[0].dup);
    assert_eq!(resent[0].packet_id, received.packet_id);
    assert_eq!(resent[0].payload, received.payload);
    // The flow completes on the new connection.
    back.handle_packet(Packet::PubRec(Ack::new(received.packet_id)), later);
    assert!(matches!(
        transmit(&mut back, later)[..],
        [Packet::PubRel(_)]
    ));
    back.handle_packet(Packet::PubComp(Ack::new(received.packet_id)), later);
    assert_eq!(broker.session(&holder_id).unwrap().inflight_len(), 0);
}

/// A QoS 1 message sent to a member whose session ends with its connection goes to another
/// member (section 4.8.2: the session terminates, so it SHOULD).
#[test]
fn sent_qos1_message_of_an_ending_session_goes_to_another_member() {
    let now = Instant::now();
    let (_broker, (_, mut holder, received), mut other) =
        members_with_one_message(QoS::AtLeastOnce, true, now);
    holder.handle_transport_closed(now);
    let handed = transmit(&mut other, now);
    let handed = publishes(&handed);
    assert_eq!(handed.len(), 1, "the other member gets the message");
    assert_eq!(handed[0].payload, received.payload);
}

/// A QoS 1 message sent to a member whose session outlives the connection waits for that
/// member (section 4.8.2 allows it): given away, its packet identifier would be reused while
/// the client still holds it unacknowledged [MQTT-2.2.1-4] (found by the core fuzz target).
#[test]
fn sent_qos1_message_of_a_persistent_session_waits_for_its_member_mqtt_2_2_1_4() {
    let now = Instant::now();
    let (broker, (holder_id, mut holder, received), mut other) =
        one_message_to_a_member(QoS::AtLeastOnce, now);
    holder.handle_transport_closed(now);
    assert!(publishes(&transmit(&mut other, now)).is_empty());
    // Back (`connect` drops what the broker answered): the message is in flight to it again,
    // under the identifier the client holds.
    let _back = connect(&broker, &holder_id, false, now);
    let ids = broker.session(&holder_id).unwrap().inflight_packet_ids();
    assert_eq!(ids, [received.packet_id]);
}
