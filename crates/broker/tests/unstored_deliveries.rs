//! QoS 1 deliveries to connected persistent sessions start unstored: the publisher's PUBACK
//! waits until each is acknowledged by its subscriber (then nothing is ever written) or stored
//! and durable (after the grace period, or when the subscriber's connection goes). Whatever
//! the publisher got a PUBACK for is delivered or durable: "nothing acknowledged is lost".

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Recorder, connect, recorded_broker, text, transmit};
use tern_broker::persist::Persistence;
use tern_broker::{Broker, Connection};
use tern_codec::{Ack, Packet, Properties, Publish, QoS};

const DELIVERY_CHANGES: [&str; 6] = [
    "Message",
    "Queued",
    "Dispatched",
    "Inflight",
    "InflightDone",
    "Unqueued",
];

fn setup() -> (Arc<Recorder>, Arc<Broker>, Connection, Connection, Instant) {
    recorded_broker("meters/#", QoS::AtLeastOnce, true)
}

fn publish(packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: text("meters/7/energy"),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(b"1532 kWh"),
    })
}

fn delivered(packets: &[Packet]) -> u16 {
    match packets {
        [Packet::Publish(publish)] => publish.packet_id,
        other => panic!("one PUBLISH to the subscriber: {other:?}"),
    }
}

fn is_puback(packets: &[Packet], packet_id: u16) -> bool {
    matches!(packets, [Packet::PubAck(ack)] if ack.packet_id == packet_id)
}

#[test]
fn a_delivery_acknowledged_in_time_is_never_stored_and_the_puback_follows_it_mqtt_4_3_2() {
    let (recorder, _broker, mut publisher, mut subscriber, now) = setup();
    publisher.handle_packet(publish(5), now);
    assert!(
        transmit(&mut publisher, now).is_empty(),
        "no PUBACK while the only copy is unacknowledged and unstored"
    );
    let packet_id = delivered(&transmit(&mut subscriber, now));
    subscriber.handle_packet(Packet::PubAck(Ack::new(packet_id)), now);
    assert!(is_puback(&transmit(&mut publisher, now), 5));
    let kinds = recorder.take_kinds();
    assert!(
        kinds.iter().all(|kind| !DELIVERY_CHANGES.contains(kind)),
        "nothing of the delivery reached the store: {kinds:?}"
    );
}

#[test]
fn an_unacknowledged_delivery_is_stored_after_the_grace_and_the_puback_waits_for_it() {
    let (recorder, broker, mut publisher, mut subscriber, now) = setup();
    recorder.set_durable(recorder.submitted());
    publisher.handle_packet(publish(6), now);
    let packet_id = delivered(&transmit(&mut subscriber, now));

    // Within the grace period nothing is stored, and the PUBACK waits.
    broker.handle_timeout(now + Duration::from_millis(1));
    assert!(recorder.take_kinds().is_empty());
    assert!(transmit(&mut publisher, now).is_empty());
    assert!(
        broker.poll_timeout().is_some(),
        "the broker asks to be called for the sweep"
    );

    // Past it, the delivery is stored as in flight (body, entry, router's release) ...
    let later = now + Duration::from_millis(20);
    broker.handle_timeout(later);
    assert_eq!(
        recorder.take_kinds(),
        ["Message", "Inflight", "MessageRouted"]
    );
    assert!(
        transmit(&mut publisher, later).is_empty(),
        "the PUBACK waits for the stored delivery to be durable"
    );
    // ... and the PUBACK goes once that is durable [MQTT-4.3.2-2 with the store's promise].
    recorder.set_durable(recorder.submitted());
    assert!(is_puback(&transmit(&mut publisher, later), 6));

    // It is now an ordinary stored delivery: its PUBACK deletes it.
    subscriber.handle_packet(Packet::PubAck(Ack::new(packet_id)), later);
    assert_eq!(recorder.take_kinds(), ["InflightDone"]);
}

#[test]
fn a_subscriber_that_leaves_gets_its_unstored_deliveries_stored_at_once() {
    let (recorder, _broker, mut publisher, mut subscriber, now) = setup();
    recorder.set_durable(recorder.submitted());
    publisher.handle_packet(publish(7), now);
    publisher.handle_packet(publish(8), now);
    // One went out and waits for its PUBACK, the other is still queued, when the client goes.
    subscriber.poll_transmit(&mut bytes::BytesMut::new(), 1, now);
    subscriber.handle_transport_closed(now);
    let kinds = recorder.take_kinds();
    assert_eq!(
        kinds.iter().filter(|kind| **kind == "Message").count(),
        2,
        "both bodies: {kinds:?}"
    );
    assert!(
        kinds.contains(&"Inflight") && kinds.contains(&"Queued"),
        "{kinds:?}"
    );
    assert!(transmit(&mut publisher, now).is_empty());
    recorder.set_durable(recorder.submitted());
    let acks = transmit(&mut publisher, now);
    assert!(
        matches!(acks.as_slice(), [Packet::PubAck(a), Packet::PubAck(b)] if a.packet_id == 7 && b.packet_id == 8),
        "{acks:?}"
    );
}

#[test]
fn a_delivery_to_an_offline_session_is_stored_before_the_puback() {
    let (recorder, _broker, mut publisher, mut subscriber, now) = setup();
    subscriber.handle_transport_closed(now);
    recorder.take();
    recorder.set_durable(recorder.submitted());
    publisher.handle_packet(publish(9), now);
    assert_eq!(
        recorder.take_kinds(),
        ["Message", "Queued", "MessageRouted"]
    );
    assert!(transmit(&mut publisher, now).is_empty());
    recorder.set_durable(recorder.submitted());
    assert!(is_puback(&transmit(&mut publisher, now), 9));
}

#[test]
fn a_taken_over_connection_gets_no_puback_it_has_not_earned_mqtt_4_4_0_1() {
    let (recorder, broker, mut publisher, _subscriber, now) = setup();
    recorder.set_durable(recorder.submitted());
    publisher.handle_packet(publish(10), now);
    // The client reconnects before its subscriber acknowledged (and before anything was
    // stored): the old connection closes without the PUBACK; the client resends the PUBLISH on
    // the new one.
    let _again = connect(&broker, "publisher", true, now);
    let flushed = transmit(&mut publisher, now);
    assert!(
        !flushed
            .iter()
            .any(|packet| matches!(packet, Packet::PubAck(_))),
        "{flushed:?}"
    );
}

fn publish_qos2(packet_id: u16) -> Packet {
    let Packet::Publish(publish) = publish(packet_id) else {
        unreachable!()
    };
    Packet::Publish(Publish {
        qos: QoS::ExactlyOnce,
        ..publish
    })
}

fn sent_ids(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .filter_map(|packet| match packet {
            Packet::Publish(publish) => Some(publish.packet_id),
            _ => None,
        })
        .collect()
}

/// The store sends in-flight messages again after a restart in the order it got them, so
/// unstored ones reach it in the order they were sent [MQTT-4.6.0-1]: oldest first when swept,
/// and before a stored delivery sent after them.
#[test]
fn unstored_deliveries_reach_the_store_in_the_order_they_were_sent_mqtt_4_6_0_1() {
    let (recorder, broker, mut publisher, mut subscriber, now) = setup();
    for packet_id in 1..=3 {
        publisher.handle_packet(publish(packet_id), now);
    }
    let sent = sent_ids(&transmit(&mut subscriber, now));
    assert_eq!(sent.len(), 3);
    broker.handle_timeout(now + Duration::from_millis(20));
    assert_eq!(recorder.take_inflight(), sent, "swept oldest first");

    // Two more unstored in flight, then a QoS 2 message (stored at once) sent behind them.
    let later = now + Duration::from_millis(40);
    publisher.handle_packet(publish(4), later);
    publisher.handle_packet(publish(5), later);
    publisher.handle_packet(publish_qos2(6), later);
    let sent = sent_ids(&transmit(&mut subscriber, later));
    assert_eq!(sent.len(), 3);
    assert_eq!(
        recorder.take_inflight(),
        sent,
        "stored before the QoS 2 one"
    );
}

/// A session that stops being persistent (MQTT 5 reconnect with Session Expiry 0) keeps
/// nothing: its unstored deliveries are not written, and their publishers are acknowledged.
#[test]
fn a_session_that_stops_being_persistent_stores_nothing_and_releases_its_publishers() {
    let (recorder, broker, mut publisher, _subscriber, now) = setup();
    recorder.set_durable(recorder.submitted());
    publisher.handle_packet(publish(11), now);
    let mut again = Connection::new(broker.clone(), Arc::new(common::Quiet), None, now);
    again.handle_packet(
        Packet::Connect(Box::new(tern_codec::Connect {
            protocol: tern_codec::ProtocolVersion::V5,
            clean_start: false,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: text("subscriber"),
            will: None,
            username: None,
            password: None,
        })),
        now,
    );
    let kinds = recorder.take_kinds();
    assert!(kinds.contains(&"SessionEnded"), "{kinds:?}");
    assert!(
        kinds.iter().all(|kind| !DELIVERY_CHANGES.contains(kind)),
        "nothing of the delivery is written: {kinds:?}"
    );
    recorder.set_durable(recorder.submitted());
    assert!(is_puback(&transmit(&mut publisher, now), 11));
}
