//! PUBLISH at QoS 0, 1 and 2 in both directions (section 4.3), ordering (4.6), retransmission on
//! reconnect (4.4), the in-flight window and the Receive Maximum of both sides (4.9).

mod common;

use common::*;
use tern_broker::BrokerConfig;
use tern_codec::{Ack, Packet, QoS, ReasonCode};

const ALL_QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

#[test]
fn delivered_qos_is_the_minimum_of_published_and_granted_mqtt_3_8_4_6() {
    let net = Net::new();
    let mut publisher = net.connected(V311, "min-pub");
    for granted in ALL_QOS {
        let id = format!("min-sub-{}", granted.as_u8());
        let mut subscriber = net.connected(V311, &id);
        let topic = format!("min/{}", granted.as_u8());
        let suback = subscriber.subscribe(&topic, granted);
        assert_eq!(
            suback.reason_codes,
            [ReasonCode::from_u8(granted.as_u8()).unwrap()]
        );
        for published in ALL_QOS {
            let payload = format!("{}-{}", published.as_u8(), granted.as_u8());
            publisher.publish(&topic, published, payload.as_bytes());
            let received = subscriber.publish_received();
            assert_eq!(received.payload, payload.as_bytes());
            assert_eq!(received.qos, published.min(granted), "{payload}");
            assert!(!received.dup);
            assert!(!received.retain);
            subscriber.ack(&received);
            if received.qos == QoS::ExactlyOnce {
                assert_eq!(
                    subscriber.received(),
                    [ack(Packet::PubRel, received.packet_id)]
                );
                subscriber.send(ack(Packet::PubComp, received.packet_id));
            }
            subscriber.nothing();
            publisher.received();
        }
        assert_eq!(net.session(&id).unwrap().inflight_len(), 0);
    }
}

#[test]
fn qos1_inbound_is_acknowledged_with_puback_mqtt_4_3_2_4() {
    let net = Net::new();
    let mut client = net.connected(V311, "q1-in");
    let mut publish = publish_packet("q1/in", QoS::AtLeastOnce, b"x");
    publish.packet_id = 17;
    client.send(Packet::Publish(publish));
    assert_eq!(client.received(), [ack(Packet::PubAck, 17)]);
}

#[test]
fn qos2_inbound_resent_publish_is_not_forwarded_twice_mqtt_4_3_3_9() {
    let net = Net::new();
    let mut subscriber = net.connected(V311, "q2-sub");
    subscriber.subscribe("q2/in", QoS::ExactlyOnce);
    let mut publisher = net.connected(V311, "q2-pub");

    let mut publish = publish_packet("q2/in", QoS::ExactlyOnce, b"once");
    publish.packet_id = 7;
    publisher.send(Packet::Publish(publish.clone()));
    assert_eq!(publisher.received(), [ack(Packet::PubRec, 7)]);
    // The PUBREC was lost, so the client sends the PUBLISH again with DUP set.
    let mut again = publish.clone();
    again.dup = true;
    publisher.send(Packet::Publish(again));
    assert_eq!(publisher.received(), [ack(Packet::PubRec, 7)]);
    publisher.send(ack(Packet::PubRel, 7));
    assert_eq!(publisher.received(), [ack(Packet::PubComp, 7)]);

    assert_eq!(subscriber.payloads(), ["once"], "forwarded once");

    // After PUBCOMP the identifier is free: the same id is a new message [MQTT-4.3.3-11].
    let mut next = publish;
    next.payload = bytes::Bytes::from_static(b"second");
    publisher.send(Packet::Publish(next));
    assert_eq!(publisher.received(), [ack(Packet::PubRec, 7)]);
    assert_eq!(subscriber.payloads(), ["second"]);
}

#[test]
fn qos2_outbound_runs_publish_pubrec_pubrel_pubcomp_mqtt_4_3_3() {
    let net = Net::new();
    let mut subscriber = net.connected(V311, "q2-out");
    subscriber.subscribe("q2/out", QoS::ExactlyOnce);
    let mut publisher = net.connected(V311, "q2-out-pub");
    publisher.publish("q2/out", QoS::ExactlyOnce, b"exactly");
    let publish = subscriber.publish_received();
    assert_eq!(publish.qos, QoS::ExactlyOnce);
    assert_ne!(publish.packet_id, 0);
    subscriber.send(ack(Packet::PubRec, publish.packet_id));
    assert_eq!(
        subscriber.received(),
        [ack(Packet::PubRel, publish.packet_id)]
    );
    assert_eq!(net.session("q2-out").unwrap().inflight_len(), 1);
    subscriber.send(ack(Packet::PubComp, publish.packet_id));
    subscriber.nothing();
    assert_eq!(net.session("q2-out").unwrap().inflight_len(), 0);
}

#[test]
fn order_is_kept_per_topic_and_publisher_mqtt_4_6_0_5() {
    let net = Net::new();
    let mut subscriber = net.connected(V311, "order-sub");
    subscriber.subscribe("order/#", QoS::ExactlyOnce);
    let mut publisher = net.connected(V311, "order-pub");
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut received = Vec::new();
        for n in 0..200u32 {
            publisher.publish("order/t", qos, &n.to_be_bytes());
            // Acknowledged as they come, so the in-flight window never holds them back.
            for publish in subscriber.publishes() {
                subscriber.ack(&publish);
                if qos == QoS::ExactlyOnce {
                    subscriber.received();
                    subscriber.send(ack(Packet::PubComp, publish.packet_id));
                }
                received.push(u32::from_be_bytes(publish.payload[..].try_into().unwrap()));
            }
        }
        assert_eq!(received, (0..200).collect::<Vec<_>>(), "{qos:?}");
    }
}

#[test]
fn order_is_kept_when_the_window_holds_messages_back_mqtt_4_6_0_5() {
    let net = Net::with_config(BrokerConfig {
        max_inflight: 3,
        ..BrokerConfig::default()
    });
    let mut subscriber = net.connected(V311, "order-held");
    subscriber.subscribe("held/t", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "order-held-pub");
    for n in 0..20u8 {
        publisher.publish("held/t", QoS::AtLeastOnce, &[n]);
    }
    let mut received = Vec::new();
    while received.len() < 20 {
        let publishes = subscriber.publishes();
        assert!(!publishes.is_empty() && publishes.len() <= 3);
        for publish in publishes {
            subscriber.ack(&publish);
            received.push(publish.payload[0]);
        }
    }
    assert_eq!(received, (0..20).collect::<Vec<u8>>());
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_on_reconnect_mqtt_4_4_0_1() {
    let net = Net::new();
    let mut subscriber = net.accepted(persistent(V311, "resend"));
    subscriber.send(subscribe_packet(
        1,
        &[
            ("resend/1", QoS::AtLeastOnce),
            ("resend/2", QoS::ExactlyOnce),
        ],
    ));
    assert!(matches!(subscriber.received()[..], [Packet::SubAck(_)]));

    let mut publisher = net.connected(V311, "resend-pub");
    publisher.publish("resend/1", QoS::AtLeastOnce, b"one");
    publisher.publish("resend/2", QoS::ExactlyOnce, b"two");
    publisher.publish("resend/2", QoS::ExactlyOnce, b"three");
    let first = subscriber.publishes();
    assert_eq!(first.len(), 3);
    // Acknowledge nothing but the PUBREC of "three": it waits for PUBCOMP after our PUBREL.
    subscriber.send(ack(Packet::PubRec, first[2].packet_id));
    assert_eq!(
        subscriber.received(),
        [ack(Packet::PubRel, first[2].packet_id)]
    );
    drop(subscriber);

    let (mut subscriber, connack) = net.connect(persistent(V311, "resend"));
    assert!(connack.session_present);
    let packets = subscriber.received();
    assert_eq!(packets.len(), 3, "{packets:?}");
    for (again, original) in packets.iter().zip(&first[..2]) {
        let Packet::Publish(again) = again else {
            panic!("expected the PUBLISH again, got {again:?}");
        };
        assert!(again.dup, "DUP set on a resent PUBLISH [MQTT-3.3.1-1]");
        assert_eq!(
            again.packet_id, original.packet_id,
            "same packet identifier"
        );
        assert_eq!(again.payload, original.payload);
        assert_eq!(again.qos, original.qos);
    }
    // The PUBREL is resent for the message that had got its PUBREC.
    assert_eq!(packets[2], ack(Packet::PubRel, first[2].packet_id));
    subscriber.send(ack(Packet::PubAck, first[0].packet_id));
    subscriber.send(ack(Packet::PubRec, first[1].packet_id));
    assert_eq!(
        subscriber.received(),
        [ack(Packet::PubRel, first[1].packet_id)]
    );
    subscriber.send(ack(Packet::PubComp, first[1].packet_id));
    subscriber.send(ack(Packet::PubComp, first[2].packet_id));
    subscriber.nothing();
    assert_eq!(net.session("resend").unwrap().inflight_len(), 0);
}

#[test]
fn inflight_window_is_bounded_and_packet_ids_do_not_collide_mqtt_2_2_1_2() {
    let net = Net::with_config(BrokerConfig {
        max_inflight: 5,
        ..BrokerConfig::default()
    });
    let mut subscriber = net.connected(V311, "window");
    subscriber.subscribe("window/t", QoS::AtLeastOnce);
    let mut publisher = net.connected(V311, "window-pub");
    for n in 0..8u8 {
        publisher.publish("window/t", QoS::AtLeastOnce, &[n]);
    }
    let publishes = subscriber.publishes();
    let payloads: Vec<u8> = publishes.iter().map(|p| p.payload[0]).collect();
    assert_eq!(payloads, [0, 1, 2, 3, 4], "the window is full at five");
    let ids: Vec<u16> = publishes.iter().map(|p| p.packet_id).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5, "distinct packet ids in flight: {ids:?}");
    assert_eq!(net.session("window").unwrap().queued_len(), 3);
    // Each PUBACK frees one place; the rest follow in order, never reusing an id in flight.
    let mut in_flight = ids;
    for n in 0..3u8 {
        let acked = in_flight.remove(0);
        subscriber.send(ack(Packet::PubAck, acked));
        let publish = subscriber.publish_received();
        assert_eq!(publish.payload[..], [5 + n]);
        assert!(
            !in_flight.contains(&publish.packet_id),
            "id {} is still in flight",
            publish.packet_id
        );
        in_flight.push(publish.packet_id);
    }
    subscriber.nothing();
}

#[test]
fn qos0_is_delivered_without_acknowledgement() {
    let net = Net::new();
    let mut subscriber = net.connected(V311, "q0-sub");
    subscriber.subscribe("q0/t", QoS::AtMostOnce);
    let mut publisher = net.connected(V311, "q0-pub");
    publisher.publish("q0/t", QoS::AtMostOnce, &[0, 1, 2, 255]);
    publisher.nothing();
    let publish = subscriber.publish_received();
    assert_eq!(publish.qos, QoS::AtMostOnce);
    assert_eq!(publish.packet_id, 0);
    assert_eq!(&publish.payload[..], &[0, 1, 2, 255]);
    assert_eq!(net.session("q0-sub").unwrap().inflight_len(), 0);
}

#[test]
fn puback_for_an_unknown_id_is_ignored_and_pubrel_for_unknown_id_completes() {
    let net = Net::new();
    let mut client = net.connected(V311, "unknown-ids");
    client.send(ack(Packet::PubAck, 99));
    client.nothing();
    assert!(!client.is_closed());
    client.send(ack(Packet::PubRel, 98));
    let Some(Packet::PubComp(Ack {
        packet_id,
        reason_code,
        ..
    })) = client.next()
    else {
        panic!("expected PUBCOMP");
    };
    assert_eq!((packet_id, reason_code), (98, ReasonCode::Success));
    client.send(Packet::PingReq);
    assert_eq!(client.received(), [Packet::PingResp]);
}

#[test]
fn client_receive_maximum_limits_messages_in_flight_mqtt_3_3_4_7() {
    let net = Net::new();
    let mut connect = connect_packet(V5, "rm-out");
    connect.properties.receive_maximum = Some(2);
    let mut subscriber = net.accepted(connect);
    subscriber.subscribe("rm/t", QoS::AtLeastOnce);
    let mut publisher = net.connected(V5, "rm-out-pub");
    for n in 0..4u8 {
        publisher.publish("rm/t", QoS::AtLeastOnce, &[n]);
    }
    let first = subscriber.publishes();
    let payloads: Vec<u8> = first.iter().map(|p| p.payload[0]).collect();
    assert_eq!(payloads, [0, 1], "no third before an ack");
    subscriber.send(ack(Packet::PubAck, first[0].packet_id));
    assert_eq!(subscriber.payloads(), [&[2u8][..]]);
}

#[test]
fn exceeding_the_receive_maximum_gets_0x93_mqtt_3_3_4_9() {
    let net = Net::with_config(BrokerConfig {
        receive_maximum: 2,
        ..BrokerConfig::default()
    });
    let (mut client, connack) = net.connect(connect_packet(V5, "rm-in"));
    assert_eq!(connack.properties.receive_maximum, Some(2));
    for _ in 0..2 {
        client.publish("rm/in", QoS::ExactlyOnce, b"x");
    }
    let unrouted = ReasonCode::NoMatchingSubscribers;
    assert_eq!(
        client.received(),
        [
            ack_with(Packet::PubRec, 1, unrouted),
            ack_with(Packet::PubRec, 2, unrouted)
        ],
        "two QoS 2 messages awaiting PUBREL are within the maximum"
    );
    client.publish("rm/in", QoS::ExactlyOnce, b"x");
    assert_eq!(
        client.disconnect_reason(),
        ReasonCode::ReceiveMaximumExceeded
    );
}

#[test]
fn suback_0x91_when_the_packet_identifier_is_in_use() {
    let net = Net::new();
    let mut client = net.connected(V5, "pid-in-use");
    let mut publish = publish_packet("pid/t", QoS::ExactlyOnce, b"x");
    publish.packet_id = 11;
    client.send(Packet::Publish(publish));
    assert_eq!(
        client.received(),
        [ack_with(
            Packet::PubRec,
            11,
            ReasonCode::NoMatchingSubscribers
        )]
    );
    // PUBREL not sent yet: identifier 11 is still in use.
    client.send(subscribe_packet(11, &[("pid/#", QoS::AtMostOnce)]));
    let Some(Packet::SubAck(suback)) = client.next() else {
        panic!()
    };
    assert_eq!(suback.reason_codes, [ReasonCode::PacketIdentifierInUse]);
    client.send(ack(Packet::PubRel, 11));
    assert_eq!(client.received(), [ack(Packet::PubComp, 11)]);
}
