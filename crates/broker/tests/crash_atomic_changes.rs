//! Changes that a crash must not split reach the store together. The store commits atomically
//! and in order, so what survives a kill is a prefix of the changes cut between two commits; a
//! change sequence is crash-safe when no cut the store may make falls inside it. A recording
//! `Persistence` checks where the core allows cuts:
//! - an inbound QoS 2 PUBLISH: its stored packet identifier and the routing of the message are
//!   in one atomic group (a cut between them left an identifier without its message, and the
//!   client's resent PUBLISH was then dropped as a duplicate [MQTT-4.3.3-9]);
//! - a queued delivery that goes in flight is one change, never `Inflight` then `Unqueued`.

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use common::{Event, Recorder, connect, recorded_broker, text, transmit};
use tern_broker::persist::Persistence;
use tern_broker::{Broker, Connection};
use tern_codec::{Ack, Packet, Properties, ProtocolVersion, Publish, QoS};

/// The kinds submitted while a group was open, and those submitted outside any group.
fn grouped(events: &[Event]) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut open = 0usize;
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for event in events {
        match event {
            Event::Begin(_) => open += 1,
            Event::End(_) => open -= 1,
            Event::Submit(_, kind) if open > 0 => inside.push(*kind),
            Event::Submit(_, kind) => outside.push(*kind),
        }
    }
    assert_eq!(open, 0, "every group closes: {events:?}");
    (inside, outside)
}

fn setup() -> (Arc<Recorder>, Arc<Broker>, Connection, Connection, Instant) {
    recorded_broker("plant/#", QoS::ExactlyOnce, false)
}

fn publish(packet_id: u16, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain,
        topic: text("plant/boiler/alarm"),
        packet_id,
        properties: Properties::default(),
        payload: Bytes::from_static(b"overheat"),
    })
}

#[test]
fn an_inbound_qos2_identifier_and_its_routing_are_one_atomic_group() {
    let (recorder, _broker, mut publisher, _subscriber, now) = setup();
    publisher.handle_packet(publish(7, true), now);
    let (inside, outside) = grouped(&recorder.take());
    for kind in ["InboundQos2", "Retained", "Message", "Queued"] {
        assert!(inside.contains(&kind), "{kind} in the group: {inside:?}");
    }
    assert!(
        outside.is_empty(),
        "nothing of the publish outside it: {outside:?}"
    );
    assert!(matches!(
        transmit(&mut publisher, now).as_slice(),
        [Packet::PubRec(ack)] if ack.packet_id == 7
    ));
}

#[test]
fn a_queued_delivery_goes_in_flight_in_one_change() {
    let (recorder, _broker, mut publisher, mut subscriber, now) = setup();
    publisher.handle_packet(publish(8, false), now);
    transmit(&mut publisher, now);
    recorder.take();
    let sent = transmit(&mut subscriber, now);
    let Some(Packet::Publish(delivered)) = sent.first() else {
        panic!("the subscriber got the message: {sent:?}");
    };
    let kinds = recorder.take_kinds();
    assert_eq!(kinds, ["Dispatched"]);

    // The rest of the flow: PUBREC moves it to awaiting PUBCOMP, PUBCOMP ends it.
    subscriber.handle_packet(Packet::PubRec(Ack::new(delivered.packet_id)), now);
    assert!(matches!(
        transmit(&mut subscriber, now).as_slice(),
        [Packet::PubRel(_)]
    ));
    subscriber.handle_packet(Packet::PubComp(Ack::new(delivered.packet_id)), now);
    let kinds: Vec<Event> = recorder.take();
    assert!(
        matches!(
            kinds.as_slice(),
            [
                Event::Submit(_, "Inflight"),
                Event::Submit(_, "InflightDone")
            ]
        ),
        "{kinds:?}"
    );
}

#[test]
fn a_resent_qos2_publish_is_acknowledged_once_the_first_is_durable() {
    let (recorder, broker, mut publisher, _subscriber, now) = setup();
    recorder.set_durable(recorder.submitted());
    publisher.handle_packet(publish(9, false), now);
    let routed = recorder.submitted();
    assert!(
        transmit(&mut publisher, now).is_empty(),
        "no PUBREC before the message is durable"
    );
    // The client loses its connection before the PUBREC and resends on a new one, while the
    // store has still not committed the first copy [MQTT-4.4.0-1].
    publisher.handle_transport_closed(now);
    let mut again = connect(&broker, "publisher", false, now);
    recorder.take();
    let Packet::Publish(mut resent) = publish(9, false) else {
        unreachable!()
    };
    resent.dup = true;
    again.handle_packet(Packet::Publish(resent), now);
    assert!(
        !recorder
            .take()
            .iter()
            .any(|event| matches!(event, Event::Submit(_, "Message" | "Queued"))),
        "a duplicate is not routed again [MQTT-4.3.3-10]"
    );
    assert!(
        transmit(&mut again, now).is_empty(),
        "the resent PUBLISH's PUBREC waits for the first copy too"
    );
    recorder.set_durable(routed.max(recorder.submitted()));
    assert!(matches!(
        transmit(&mut again, now).as_slice(),
        [Packet::ConnAck(_), Packet::PubRec(ack)] if ack.packet_id == 9
    ));
}

#[test]
fn a_stored_session_ended_by_a_takeover_and_its_delayed_will_are_one_atomic_group() {
    let (recorder, broker, _publisher, _subscriber, now) = setup();
    // MQTT 5, session expiry 300 s, will delayed 60 s: the connection goes, the will waits.
    let will_properties = Properties {
        will_delay_interval: Some(60),
        ..Default::default()
    };
    let properties = Properties {
        session_expiry_interval: Some(300),
        ..Default::default()
    };
    let connect = |clean_start: bool| {
        Packet::Connect(Box::new(tern_codec::Connect {
            protocol: ProtocolVersion::V5,
            clean_start,
            keep_alive: 60,
            properties: properties.clone(),
            client_id: text("device"),
            will: Some(tern_codec::Will {
                topic: text("plant/device/gone"),
                payload: Bytes::from_static(b"offline"),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: will_properties.clone(),
            }),
            username: None,
            password: None,
        }))
    };
    let mut device = Connection::new(broker.clone(), Arc::new(common::Quiet), None, now);
    device.handle_packet(connect(false), now);
    device.poll_transmit(&mut BytesMut::new(), usize::MAX, now);
    device.handle_transport_closed(now);
    recorder.take();

    // A clean start ends the stored session, and its will is due [MQTT-3.1.3-9]: the session's
    // end (which forgets the stored will) and the will's routing must survive a crash together.
    let mut again = Connection::new(broker.clone(), Arc::new(common::Quiet), None, now);
    again.handle_packet(connect(true), now);
    let (inside, _outside) = grouped(&recorder.take());
    for kind in ["SessionEnded", "Message", "Queued"] {
        assert!(inside.contains(&kind), "{kind} in the group: {inside:?}");
    }
}
