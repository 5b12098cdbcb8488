//! QoS 1 and 2 flows through a real client (rumqttc): hundreds of messages in both directions,
//! in order. The QoS rules themselves (each flow, retransmission with DUP, the in-flight window,
//! Receive Maximum) are tested on the core's harness in `crates/broker/tests/qos_flows.rs`.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS as R;
use tern_codec::{Ack, Packet, ProtocolVersion, QoS};

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
