//! PUBLISH at QoS 0, 1 and 2 in both directions (section 4.3), ordering (4.6), retransmission on
//! reconnect (4.4) and the in-flight window.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS as R;
use tern_codec::{Ack, Packet, ProtocolVersion, QoS, ReasonCode};

fn as_rumqttc(qos: QoS) -> R {
    match qos {
        QoS::AtMostOnce => R::AtMostOnce,
        QoS::AtLeastOnce => R::AtLeastOnce,
        QoS::ExactlyOnce => R::ExactlyOnce,
    }
}

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_published_and_granted_mqtt_3_8_4_6() {
    let broker = start().await;
    let qos_all = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    let mut publisher = Client::simple(broker.addr, "min-pub").await;
    for granted in qos_all {
        let mut subscriber =
            Client::simple(broker.addr, &format!("min-sub-{}", granted.as_u8())).await;
        let topic = format!("min/{}", granted.as_u8());
        let suback = subscriber.subscribe(&topic, as_rumqttc(granted)).await;
        assert_eq!(
            suback.return_codes,
            vec![rumqttc::SubscribeReasonCode::Success(as_rumqttc(granted))]
        );
        for published in qos_all {
            let payload = format!("{}-{}", published.as_u8(), granted.as_u8());
            publisher
                .publish(&topic, as_rumqttc(published), false, payload.clone())
                .await;
            let received = subscriber.recv().await;
            assert_eq!(received.payload, payload.as_bytes());
            assert_eq!(
                received.qos,
                as_rumqttc(published.min(granted)),
                "{payload}"
            );
            assert!(!received.dup);
        }
        subscriber.disconnect().await;
    }
    publisher.expect_silence(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn qos1_inbound_is_acknowledged_with_puback_mqtt_4_3_2_4() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "q1-in", true, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    raw.send(&Packet::Publish(publish_packet(
        "q1/in",
        QoS::AtLeastOnce,
        17,
        b"x",
    )))
    .await;
    assert_eq!(raw.recv().await, Some(Packet::PubAck(Ack::new(17))));
}

#[tokio::test]
async fn qos2_inbound_resent_publish_is_not_forwarded_twice_mqtt_4_3_3_9() {
    let broker = start().await;
    let mut subscriber = Client::simple(broker.addr, "q2-sub").await;
    subscriber.subscribe("q2/in", R::ExactlyOnce).await;
    let connect = connect_packet(ProtocolVersion::V311, "q2-pub", true, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;

    let publish = publish_packet("q2/in", QoS::ExactlyOnce, 7, b"once");
    raw.send(&Packet::Publish(publish.clone())).await;
    assert_eq!(raw.recv().await, Some(Packet::PubRec(Ack::new(7))));
    // The PUBREC was lost, so the client sends the PUBLISH again with DUP set.
    let mut again = publish.clone();
    again.dup = true;
    raw.send(&Packet::Publish(again)).await;
    assert_eq!(raw.recv().await, Some(Packet::PubRec(Ack::new(7))));
    raw.send(&Packet::PubRel(Ack::new(7))).await;
    assert_eq!(raw.recv().await, Some(Packet::PubComp(Ack::new(7))));

    assert_eq!(&subscriber.recv().await.payload[..], b"once");
    subscriber.expect_silence(Duration::from_millis(300)).await;

    // After PUBCOMP the identifier is free: the same id is a new message [MQTT-4.3.3-11].
    let mut next = publish;
    next.payload = bytes::Bytes::from_static(b"second");
    raw.send(&Packet::Publish(next)).await;
    assert_eq!(raw.recv().await, Some(Packet::PubRec(Ack::new(7))));
    assert_eq!(&subscriber.recv().await.payload[..], b"second");
}

#[tokio::test]
async fn qos2_outbound_runs_publish_pubrec_pubrel_pubcomp_mqtt_4_3_3() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "q2-out", true, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    raw.send(&subscribe_packet(1, &[("q2/out", QoS::ExactlyOnce)]))
        .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));

    let publisher = Client::simple(broker.addr, "q2-out-pub").await;
    publisher
        .publish("q2/out", R::ExactlyOnce, false, "exactly")
        .await;
    let Some(Packet::Publish(publish)) = raw.recv().await else {
        panic!("expected PUBLISH");
    };
    assert_eq!(publish.qos, QoS::ExactlyOnce);
    assert_ne!(publish.packet_id, 0);
    raw.send(&Packet::PubRec(Ack::new(publish.packet_id))).await;
    assert_eq!(
        raw.recv().await,
        Some(Packet::PubRel(Ack::new(publish.packet_id)))
    );
    raw.send(&Packet::PubComp(Ack::new(publish.packet_id)))
        .await;
    assert!(
        raw.recv_within(Duration::from_millis(300)).await.is_err(),
        "nothing more"
    );
    assert_eq!(broker.broker.session("q2-out").unwrap().inflight_len(), 0);
}

#[tokio::test]
async fn order_is_kept_per_topic_and_publisher_mqtt_4_6_0_5() {
    let broker = start().await;
    let mut subscriber = Client::simple(broker.addr, "order-sub").await;
    subscriber.subscribe("order/#", R::ExactlyOnce).await;
    let publisher = Client::simple(broker.addr, "order-pub").await;
    for qos in [R::AtLeastOnce, R::ExactlyOnce] {
        for n in 0..200u32 {
            publisher
                .publish("order/t", qos, false, n.to_be_bytes().to_vec())
                .await;
        }
        for n in 0..200u32 {
            let publish = subscriber.recv().await;
            assert_eq!(publish.payload[..], n.to_be_bytes(), "{qos:?}");
        }
    }
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_on_reconnect_mqtt_4_4_0_1() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "resend", false, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect.clone()).await;
    raw.send(&subscribe_packet(
        1,
        &[
            ("resend/1", QoS::AtLeastOnce),
            ("resend/2", QoS::ExactlyOnce),
        ],
    ))
    .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));

    let publisher = Client::simple(broker.addr, "resend-pub").await;
    publisher
        .publish("resend/1", R::AtLeastOnce, false, "one")
        .await;
    publisher
        .publish("resend/2", R::ExactlyOnce, false, "two")
        .await;
    publisher
        .publish("resend/2", R::ExactlyOnce, false, "three")
        .await;
    let mut first = Vec::new();
    for _ in 0..3 {
        let Some(Packet::Publish(publish)) = raw.recv().await else {
            panic!("expected PUBLISH");
        };
        first.push(publish);
    }
    // Acknowledge nothing but the PUBREC of "three": it waits for PUBCOMP after our PUBREL.
    raw.send(&Packet::PubRec(Ack::new(first[2].packet_id)))
        .await;
    assert_eq!(
        raw.recv().await,
        Some(Packet::PubRel(Ack::new(first[2].packet_id)))
    );
    drop(raw);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (mut raw, connack) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    assert!(connack.session_present);
    for original in &first[..2] {
        let Some(Packet::Publish(again)) = raw.recv().await else {
            panic!("expected the PUBLISH again");
        };
        assert!(again.dup, "DUP set on a resent PUBLISH [MQTT-3.3.1-1]");
        assert_eq!(
            again.packet_id, original.packet_id,
            "same packet identifier"
        );
        assert_eq!(again.payload, original.payload);
    }
    // The PUBREL is resent for the message that had got its PUBREC.
    assert_eq!(
        raw.recv().await,
        Some(Packet::PubRel(Ack::new(first[2].packet_id)))
    );
    raw.send(&Packet::PubAck(Ack::new(first[0].packet_id)))
        .await;
    raw.send(&Packet::PubRec(Ack::new(first[1].packet_id)))
        .await;
    assert_eq!(
        raw.recv().await,
        Some(Packet::PubRel(Ack::new(first[1].packet_id)))
    );
    raw.send(&Packet::PubComp(Ack::new(first[1].packet_id)))
        .await;
    raw.send(&Packet::PubComp(Ack::new(first[2].packet_id)))
        .await;
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    assert_eq!(broker.broker.session("resend").unwrap().inflight_len(), 0);
}

#[tokio::test]
async fn inflight_window_is_bounded_and_packet_ids_do_not_collide_mqtt_2_2_1_2() {
    let mut config = config();
    config.limits.max_inflight = 5;
    let broker = start_with(config).await;
    let connect = connect_packet(ProtocolVersion::V311, "window", true, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    raw.send(&subscribe_packet(1, &[("window/t", QoS::AtLeastOnce)]))
        .await;
    assert!(matches!(raw.recv().await, Some(Packet::SubAck(_))));
    let publisher = Client::simple(broker.addr, "window-pub").await;
    for n in 0..8u8 {
        publisher
            .publish("window/t", R::AtLeastOnce, false, vec![n])
            .await;
    }
    let mut ids = Vec::new();
    for n in 0..5u8 {
        let Some(Packet::Publish(publish)) = raw.recv().await else {
            panic!("expected PUBLISH");
        };
        assert_eq!(publish.payload[..], [n]);
        ids.push(publish.packet_id);
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5, "distinct packet ids in flight: {ids:?}");
    assert!(
        raw.recv_within(Duration::from_millis(300)).await.is_err(),
        "window full"
    );
    // Each PUBACK frees one place; the rest follow in order, never reusing an id in flight.
    let mut in_flight = ids.clone();
    for n in 0..3u8 {
        let acked = in_flight.remove(0);
        raw.send(&Packet::PubAck(Ack::new(acked))).await;
        let Some(Packet::Publish(publish)) = raw.recv().await else {
            panic!("expected PUBLISH");
        };
        assert_eq!(publish.payload[..], [5 + n]);
        assert!(
            !in_flight.contains(&publish.packet_id),
            "id {} is still in flight",
            publish.packet_id
        );
        in_flight.push(publish.packet_id);
    }
}

#[tokio::test]
async fn qos0_is_delivered_without_acknowledgement() {
    let broker = start().await;
    let mut subscriber = Client::simple(broker.addr, "q0-sub").await;
    subscriber.subscribe("q0/t", R::AtMostOnce).await;
    let publisher = Client::simple(broker.addr, "q0-pub").await;
    publisher
        .publish("q0/t", R::AtMostOnce, false, vec![0u8, 1, 2, 255])
        .await;
    let publish = subscriber.recv().await;
    assert_eq!(publish.qos, R::AtMostOnce);
    assert_eq!(publish.pkid, 0);
    assert_eq!(&publish.payload[..], &[0, 1, 2, 255]);
}

#[tokio::test]
async fn clients_cannot_publish_to_dollar_topics() {
    let broker = start().await;
    let mut subscriber = Client::simple(broker.addr, "dollar-sub").await;
    subscriber.subscribe("$SYS/#", R::AtLeastOnce).await;
    let connect = connect_packet(ProtocolVersion::V311, "dollar-pub", true, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    raw.send(&Packet::Publish(publish_packet(
        "$SYS/fake",
        QoS::AtLeastOnce,
        3,
        b"x",
    )))
    .await;
    // 3.1.1 cannot refuse: the PUBLISH is acknowledged and dropped [MQTT-3.3.5-2].
    assert_eq!(raw.recv().await, Some(Packet::PubAck(Ack::new(3))));
    subscriber.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn puback_for_an_unknown_id_is_ignored_and_pubrel_for_unknown_id_completes() {
    let broker = start().await;
    let connect = connect_packet(ProtocolVersion::V311, "unknown-ids", true, 30);
    let (mut raw, _) = Raw::connected(broker.addr, ProtocolVersion::V311, connect).await;
    raw.send(&Packet::PubAck(Ack::new(99))).await;
    raw.send(&Packet::PubRel(Ack::new(98))).await;
    let Some(Packet::PubComp(ack)) = raw.recv().await else {
        panic!("expected PUBCOMP");
    };
    assert_eq!((ack.packet_id, ack.reason_code), (98, ReasonCode::Success));
    raw.send(&Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
}
